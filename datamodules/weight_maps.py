"""The U-Net weight map of Ronneberger et al. 2015 (sec. 3, eq. 2), computed from the labels at data loading.

The U-Net's energy (eq. 1) is a pixel-wise soft-max cross-entropy in which every pixel counts with a weight

    w(x) = w_c(x) + w0 * exp(-(d1(x) + d2(x))^2 / (2 sigma^2))          (eq. 2)

where ``w_c`` balances the class frequencies, ``d1`` / ``d2`` are the distances to the border of the
nearest and the second-nearest cell, and ``w0 = 10``, ``sigma = 5`` pixels. The map depends on the
ground-truth label only, so it is pre-computed once per label (:func:`unet_weight_map`,
:class:`WeightMapCache`) when the datamodule sets up, and moves with its crop through the augmentation.
The loss that applies it (eq. 1) is the segmentation family's ``WeightedPixelLoss``; this module is plain
numpy / scipy preprocessing and imports nothing of the model code.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Hashable, Sequence
from typing import Literal

import numpy as np
import torch
from scipy import ndimage

ClassWeights = Literal["balanced"] | Sequence[float] | None


def _cells(label: np.ndarray, instances: bool | None) -> np.ndarray:
    """Cell ids: a binary label's 4-connected foreground components, or an instance label as is."""
    values = np.unique(label)
    nonzero = values[values != 0]
    if instances is None:
        instances = len(nonzero) > 1
    if instances:
        return label.astype(np.int32, copy=False)
    cells, _ = ndimage.label(label != 0)
    return cells


def class_balance_weights(foreground: np.ndarray, class_weights: ClassWeights = "balanced") -> np.ndarray:
    """``w_c`` of eq. 2 (Ronneberger et al. 2015) for a background / foreground map: ``"balanced"`` gives
    every class the weight ``frequency(most frequent class) / frequency(class)`` (so the most frequent class
    has weight 1 and rarer classes more), a pair gives (background, foreground) weights, None gives 1."""
    if class_weights is None:
        return np.ones(foreground.shape, np.float32)
    if isinstance(class_weights, str):
        if class_weights != "balanced":
            raise ValueError(
                f"class_weights must be 'balanced', a (background, foreground) pair or None, got {class_weights!r}"
            )
        counts = np.bincount(foreground.ravel().astype(np.int64), minlength=2).astype(np.float64)
        present = counts > 0
        table = np.ones(2, np.float64)
        table[present] = counts[present].max() / counts[present]
    else:
        table = np.asarray(class_weights, np.float64)
        if table.shape != (2,):
            raise ValueError(f"class_weights must hold 2 values (background, foreground), got {list(table)}")
    return table.astype(np.float32)[foreground.astype(np.int64)]


def unet_weight_map(
    label: np.ndarray | torch.Tensor,
    w0: float = 10.0,
    sigma: float = 5.0,
    class_weights: ClassWeights = "balanced",
    instances: bool | None = None,
    tolerance: float = 1e-6,
) -> np.ndarray:
    """The U-Net weight map of eq. 2 (Ronneberger et al. 2015, sec. 3) for one label image.

    Args:
        label: ``(H, W)`` integers: a binary label (0 background, one non-zero value: the cells are its
            4-connected components; ISBI after mapping: 0 membrane, 1 cell interior) or an instance
            label (0 background, every cell its own id; DSB2018 masks).
        w0, sigma: the border weight and its width in pixels (10 and 5 in the paper).
        class_weights: ``w_c`` over background / cells, see :func:`class_balance_weights`.
        instances: whether ``label`` holds instance ids; None: yes when it holds more than one
            non-zero value.
        tolerance: the border term is exact up to ``w0 * tolerance`` (see below).

    Returns:
        float32 ``(H, W)``: ``w_c(x)`` everywhere plus, on background pixels (those that separate
        cells, as in the paper's fig. 3d), ``w0 * exp(-(d1 + d2)^2 / (2 sigma^2))`` where ``d1``,
        ``d2`` are the Euclidean distances to the nearest pixel of the nearest and of the
        second-nearest cell.

    Algorithm: the border term is below ``w0 * tolerance`` as soon as ``d2 > R = sigma *
    sqrt(2 ln(1 / tolerance))`` (26 px for the defaults), so only cells within ``R`` of a pixel can
    be its nearest two. Each cell's exact distance transform (``scipy.ndimage.distance_transform_edt``)
    is computed only inside its bounding box grown by ``R``, and a running (nearest, second-nearest)
    pair is updated there: O(sum of the grown boxes) instead of O(cells x image).
    """
    label = label.cpu().numpy() if isinstance(label, torch.Tensor) else np.asarray(label)
    if label.ndim != 2:
        raise ValueError(f"unet_weight_map takes one (H, W) label, got shape {label.shape}")
    if sigma <= 0 or not 0 < tolerance < 1:
        raise ValueError(f"sigma must be positive and tolerance in (0, 1), got {sigma} and {tolerance}")
    cells = _cells(label, instances)
    foreground = cells > 0
    weight = class_balance_weights(foreground, class_weights)
    if w0 == 0 or not foreground.any():
        return weight
    radius = int(math.ceil(sigma * math.sqrt(2.0 * math.log(1.0 / tolerance))))
    h, w = cells.shape
    d1 = np.full((h, w), np.inf, np.float32)
    d2 = np.full((h, w), np.inf, np.float32)
    for index, box in enumerate(ndimage.find_objects(cells), start=1):
        if box is None:
            continue
        window = (
            slice(max(box[0].start - radius, 0), min(box[0].stop + radius, h)),
            slice(max(box[1].start - radius, 0), min(box[1].stop + radius, w)),
        )
        # distance to the nearest pixel of this cell; exact inside the window, which holds the whole cell
        d = ndimage.distance_transform_edt(cells[window] != index).astype(np.float32)
        near, second = d1[window], d2[window]
        np.minimum(second, np.maximum(near, d), out=second)
        np.minimum(near, d, out=near)
    border = np.exp(-np.square(d1 + d2) / np.float32(2.0 * sigma**2)) * np.float32(w0)
    border[foreground] = 0.0
    return (weight + border).astype(np.float32)


class WeightMapCache:
    """Weight maps (eq. 2) computed once per label: ``cache(key, label)`` computes on the first call for a
    key and returns the stored map afterwards (the key defaults to a hash of the label's bytes)."""

    def __init__(self, w0: float = 10.0, sigma: float = 5.0, class_weights: ClassWeights = "balanced") -> None:
        self.w0, self.sigma, self.class_weights = w0, sigma, class_weights
        self._maps: dict[Hashable, np.ndarray] = {}
        self.computed = 0

    def __call__(self, label: np.ndarray, key: Hashable | None = None, instances: bool | None = None) -> np.ndarray:
        if key is None:
            key = hashlib.blake2b(
                np.ascontiguousarray(label).tobytes() + str(label.shape).encode(), digest_size=16
            ).hexdigest()
        cached = self._maps.get(key)
        if cached is None:
            cached = unet_weight_map(label, self.w0, self.sigma, self.class_weights, instances)
            self._maps[key] = cached
            self.computed += 1
        return cached

    def __len__(self) -> int:
        return len(self._maps)


__all__ = ["ClassWeights", "WeightMapCache", "class_balance_weights", "unet_weight_map"]
