"""Colours and pictures of class maps, shared by the segmenter (validation grid, predict outputs) and its
report (``zoo.evaluation.segmentation``, which draws the figures).

- :data:`PALETTE` / :data:`OVERLAY_COLOURS` and :func:`class_colours`: one colour per class (class 0 first);
- :func:`tint`: an image with the pixels of every class but 0 blended towards their class colour;
- :func:`write_prediction`: a class map as ``<name>_mask.png`` and, given the image, ``<name>_overlay.png``;
- :func:`validation_grid`: rows of image | ground truth | prediction | weight map, one tensor for TensorBoard.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

# class colours of masks and of the validation grid (class 0 first)
PALETTE = np.array(
    [[0, 0, 0], [255, 255, 255], [230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200], [245, 130, 48],
     [145, 30, 180], [70, 240, 240], [240, 50, 230], [210, 245, 60], [250, 190, 212]],
    dtype=np.uint8,
)
# class colours of overlays (class 0 is never tinted)
OVERLAY_COLOURS = np.array(
    [[0, 0, 0], [0, 200, 255], [255, 60, 60], [60, 220, 60], [255, 200, 0], [200, 80, 255]], dtype=np.uint8
)

# (image, mask, prediction, weight map or None) of one validation image, as the segmenter keeps them
GridSample = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]


def class_colours(num_classes: int, table: np.ndarray = PALETTE) -> np.ndarray:
    """``(num_classes, 3)`` uint8 colours (repeating the table when there are more classes)."""
    return table[np.arange(num_classes) % len(table)]


def tint(base: np.ndarray, classes: np.ndarray, colours: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """``base`` (H, W, 3), float, with every pixel of a class other than 0 blended towards its colour:
    ``(1 - alpha) * pixel + alpha * colours[class]`` (``colours`` on the scale of ``base``)."""
    out = np.array(base, dtype=np.result_type(base.dtype, np.float32), copy=True)
    on = classes > 0
    out[on] = (1 - alpha) * out[on] + alpha * colours[classes[on]]
    return out


def write_prediction(
    out_dir: Path,
    name: str,
    pred: np.ndarray,
    num_classes: int,
    image: np.ndarray | None = None,
    alpha: float = 0.45,
) -> Path:
    """Write a class map as ``<name>_mask.png`` and, given the image (H, W, C uint8), ``<name>_overlay.png``.

    Two classes: an 8-bit grayscale mask with 0 / 255 (class 0 / class 1); more: a palette PNG
    whose pixel values are the class indices. The overlay tints every class but 0 (:func:`tint`).
    """
    from PIL import Image

    pred = pred.astype(np.uint8)
    mask_path = out_dir / f"{name}_mask.png"
    if num_classes == 2:
        Image.fromarray(pred * 255).save(mask_path)  # uint8 (H, W): mode L
    else:
        palette_image = Image.fromarray(pred)
        palette_image.putpalette(class_colours(num_classes).ravel().tolist())
        palette_image.save(mask_path)
    if image is not None:
        base = image if image.shape[-1] == 3 else np.repeat(image[..., :1], 3, axis=-1)
        colours = class_colours(num_classes, OVERLAY_COLOURS).astype(np.float32)
        tinted = tint(base.astype(np.float32), pred, colours, alpha)
        Image.fromarray(tinted.round().clip(0, 255).astype(np.uint8)).save(out_dir / f"{name}_overlay.png")
    return mask_path


def validation_grid(samples: Sequence[GridSample], num_classes: int) -> torch.Tensor:
    """One ``(3, H, W)`` image in [0, 1]: a row per sample of image (min-max scaled) | ground truth |
    prediction (:data:`PALETTE` colours) | weight map (scaled by its maximum; black without one)."""
    from torchvision.utils import make_grid

    colours = torch.from_numpy(class_colours(num_classes)).float().div(255)
    tiles = []
    for image, mask, pred, weight in samples:
        shown = image[:3] if image.shape[0] >= 3 else image[:1].expand(3, -1, -1)
        shown = (shown - shown.min()) / (shown.max() - shown.min()).clamp_min(1e-6)
        weight_img = (
            (weight / weight.max().clamp_min(1e-6)) if weight is not None else torch.zeros_like(mask, dtype=torch.float)
        )
        tiles += [
            shown,
            colours[mask].permute(2, 0, 1),
            colours[pred].permute(2, 0, 1),
            weight_img[None].expand(3, -1, -1),
        ]
    width, height = max(t.shape[-1] for t in tiles), max(t.shape[-2] for t in tiles)
    tiles = [F.pad(t, (0, width - t.shape[-1], 0, height - t.shape[-2])) for t in tiles]
    return make_grid(tiles, nrow=4, padding=4, pad_value=0.5)


__all__ = ["OVERLAY_COLOURS", "PALETTE", "class_colours", "tint", "validation_grid", "write_prediction"]
