"""Instances as both instance routes output them (the detection family's Mask R-CNN, the segmentation family's
U-Net + post-processing): label images, outlines, and what ``predict`` writes.

- A **label image** is ``(H, W)`` integers, 0 background and k = instance k (1..K); saved as a 16-bit PNG
  (:func:`save_label_image`: up to 65,535 instances; more is an error, never a wrap-around).
- :func:`draw_outlines`: an RGB overlay of the instances' outlines (predicted in yellow, true ones in green when
  given), the figure people look at for touching nuclei.
- :class:`InstancePredictionWriter`: per image ``<stem>.png`` (the label image) and ``<stem>_outlines.png``, and one
  COCO results JSON for the set (RLE ``segmentation``, ``score``, ``bbox``, ``image_id``, ``file_name``), written by
  each process for its images (``predictions_rank<r>.json`` under DDP).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from torch import Tensor

from zoo.core.instance_metrics import encode_labels

PREDICTED_COLOUR = (255, 221, 0)
TRUE_COLOUR = (0, 200, 0)


def _numpy(value: Tensor | np.ndarray) -> np.ndarray:
    return value.detach().cpu().numpy() if isinstance(value, Tensor) else np.asarray(value)


def save_label_image(labels: Tensor | np.ndarray, path: str | Path) -> None:
    """Save a label image as a 16-bit grayscale PNG (0 background, k = instance k)."""
    from PIL import Image

    array = _numpy(labels)
    if array.size and int(array.max()) > 65535:
        raise ValueError(f"{path}: {int(array.max())} instances do not fit a 16-bit label PNG (at most 65,535)")
    Image.fromarray(array.astype(np.uint16)).save(path)


def _boundaries(labels: np.ndarray) -> np.ndarray:
    from skimage.segmentation import find_boundaries

    return find_boundaries(labels, mode="inner")


def draw_outlines(
    image: Tensor | np.ndarray, labels: Tensor | np.ndarray, true_labels: Tensor | np.ndarray | None = None
) -> np.ndarray:
    """``(H, W, 3)`` uint8: ``image`` (``(C, H, W)`` float in [0, 1], 1 or 3 channels) with the outlines of the
    predicted instances (yellow) and, when given, of the true ones (green; drawn first, so a perfect prediction
    shows yellow only)."""
    picture = _numpy(image).astype(np.float32)
    if picture.ndim == 3 and picture.shape[0] in (1, 3):
        picture = picture.transpose(1, 2, 0)
    if picture.ndim == 2 or picture.shape[2] == 1:
        picture = np.repeat(picture.reshape(picture.shape[0], picture.shape[1], 1), 3, axis=2)
    low, high = float(picture.min()), float(picture.max())
    out = ((picture - low) / (high - low + 1e-8) * 255).astype(np.uint8)
    if true_labels is not None:
        out[_boundaries(_numpy(true_labels))] = TRUE_COLOUR
    out[_boundaries(_numpy(labels))] = PREDICTED_COLOUR
    return out


class InstancePredictionWriter:
    """Writes each image's label PNG and outline overlay to ``folder`` and collects COCO results for
    :meth:`finish` (see the module docstring)."""

    def __init__(self, folder: str | Path, category_id: int = 1) -> None:
        self.folder = Path(folder)
        self.category_id = category_id
        self.results: list[dict[str, Any]] = []
        self.images = 0

    def add(
        self, image: Tensor, labels: Tensor | np.ndarray, scores: Tensor | np.ndarray, path: str, image_id: int
    ) -> None:
        """One image: its label image (instances 1..K) and the K instance scores."""
        from PIL import Image
        from pycocotools import mask as mask_utils

        self.folder.mkdir(parents=True, exist_ok=True)
        stem = Path(path).stem
        save_label_image(labels, self.folder / f"{stem}.png")
        Image.fromarray(draw_outlines(image, labels)).save(self.folder / f"{stem}_outlines.png")
        rles, ids = encode_labels(labels)
        score_list = [float(s) for s in _numpy(scores).reshape(-1)]
        for rle, k in zip(rles, ids, strict=True):
            self.results.append({
                "image_id": int(image_id), "file_name": str(path), "category_id": self.category_id,
                "segmentation": rle, "bbox": [round(v, 2) for v in mask_utils.toBbox(rle).tolist()],
                "score": round(score_list[k - 1] if k - 1 < len(score_list) else 1.0, 5),
            })  # fmt: skip
        self.images += 1

    def finish(self, rank: int = 0, world_size: int = 1) -> Path:
        """Write the COCO results JSON of every image added; returns its path."""
        self.folder.mkdir(parents=True, exist_ok=True)
        name = "predictions.json" if world_size == 1 else f"predictions_rank{rank}.json"
        path = self.folder / name
        path.write_text(json.dumps(self.results))
        self.results, self.images = [], 0
        return path


__all__ = [
    "InstancePredictionWriter",
    "draw_outlines",
    "save_label_image",
]
