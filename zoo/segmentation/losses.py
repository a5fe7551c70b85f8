"""Losses of the segmentation family: the U-Net weighted pixel loss and its weight map, Dice, and
segmentation-models-pytorch's losses by name.

Ronneberger et al. 2015, sec. 3, eq. 1-2: the energy is a pixel-wise soft-max cross-entropy in which
every pixel counts with a weight

    w(x) = w_c(x) + w0 * exp(-(d1(x) + d2(x))^2 / (2 sigma^2))

where ``w_c`` balances the class frequencies, ``d1`` / ``d2`` are the distances to the border of the
nearest and the second-nearest cell, and ``w0 = 10``, ``sigma = 5`` pixels. The weight map is
pre-computed once per ground-truth label (:func:`unet_weight_map`, :class:`WeightMapCache`) and
applied by :class:`WeightedPixelLoss`.

Everything here is called as ``loss(logits, target, weight=None)``: ``logits (N, C, H, W)``,
``target (N, H, W)`` integer classes, ``weight (N, H, W)`` the weight map (only the weighted
loss reads it).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Hashable, Sequence
from typing import Any, Literal

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from scipy import ndimage

ClassWeights = Literal["balanced"] | Sequence[float] | None


# -- weight map (eq. 2) ------------------------------------------------------------------------------
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
    """``w_c`` of eq. 2 for a background / foreground map: ``"balanced"`` gives every class the
    weight ``frequency(most frequent class) / frequency(class)`` (so the most frequent class has
    weight 1 and rarer classes more), a pair gives (background, foreground) weights, None gives 1."""
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
    """Weight maps computed once per label: ``cache(key, label)`` computes on the first call for a
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


# -- losses ------------------------------------------------------------------------------------------
class WeightedPixelLoss(nn.Module):
    """Eq. 1: soft-max cross-entropy with a per-pixel weight ``w(x)``, averaged over the pixels.

    With ``weight=None`` (or all weights 1) this is plain ``F.cross_entropy``. ``needs_weight_map``
    tells :class:`zoo.segmentation.SemanticSegmenter` that batches must carry weight maps.
    """

    needs_weight_map = True

    def __init__(self, ignore_index: int = -100) -> None:
        super().__init__()
        self.ignore_index = ignore_index

    def forward(self, logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
        if weight is None:
            return F.cross_entropy(logits, target, ignore_index=self.ignore_index)
        if weight.shape != target.shape:
            raise ValueError(f"weight map of shape {tuple(weight.shape)} for targets of shape {tuple(target.shape)}")
        per_pixel = F.cross_entropy(logits, target, ignore_index=self.ignore_index, reduction="none")
        valid = target != self.ignore_index
        return (per_pixel * weight).sum() / valid.sum().clamp_min(1)


class CrossEntropy(nn.Module):
    """Plain pixel-wise cross-entropy (weight maps, if any, are not used)."""

    needs_weight_map = False

    def __init__(
        self,
        ignore_index: int = -100,
        label_smoothing: float = 0.0,
        class_weights: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        self.ignore_index = ignore_index
        self.label_smoothing = label_smoothing
        self.register_buffer("class_weights", None if class_weights is None else torch.tensor(class_weights))

    def forward(self, logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
        return F.cross_entropy(
            logits,
            target,
            weight=self.class_weights,
            ignore_index=self.ignore_index,
            label_smoothing=self.label_smoothing,
        )


class SMPLoss(nn.Module):
    """A segmentation-models-pytorch loss in ``multiclass`` mode behind the common signature."""

    needs_weight_map = False

    def __init__(self, loss: nn.Module) -> None:
        super().__init__()
        self.loss = loss

    def forward(self, logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
        return self.loss(logits, target)


class SumOfLosses(nn.Module):
    """``loss_a + loss_b + ...`` (names joined by ``+``), optionally weighted."""

    def __init__(self, losses: dict[str, nn.Module], weights: Sequence[float] | None = None) -> None:
        super().__init__()
        self.losses = nn.ModuleDict(losses)
        self.weights = list(weights) if weights is not None else [1.0] * len(losses)
        if len(self.weights) != len(losses):
            raise ValueError(f"{len(self.weights)} weights for {len(losses)} losses")

    @property
    def needs_weight_map(self) -> bool:
        return any(getattr(m, "needs_weight_map", False) for m in self.losses.values())

    def forward(self, logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
        parts = zip(self.weights, self.losses.values(), strict=True)
        return sum(w * loss(logits, target, weight) for w, loss in parts)


def _smp(name: str) -> Any:
    import segmentation_models_pytorch.losses as L

    def build(**kwargs: Any) -> nn.Module:
        cls = getattr(L, name)
        if name in ("DiceLoss", "JaccardLoss", "FocalLoss", "LovaszLoss", "TverskyLoss"):
            kwargs.setdefault("mode", "multiclass")
        return SMPLoss(cls(**kwargs))

    return build


LOSSES: dict[str, Any] = {
    "ce": CrossEntropy,
    "weighted_ce": WeightedPixelLoss,
    "dice": _smp("DiceLoss"),
    "jaccard": _smp("JaccardLoss"),
    "focal": _smp("FocalLoss"),
    "lovasz": _smp("LovaszLoss"),
    "tversky": _smp("TverskyLoss"),
    "soft_ce": _smp("SoftCrossEntropyLoss"),
}


def build_loss(name: str, loss_kwargs: dict[str, Any] | None = None) -> nn.Module:
    """A loss by name: ``ce``, ``weighted_ce`` (the U-Net loss, eq. 1), ``dice``, ``jaccard``,
    ``focal``, ``lovasz``, ``tversky``, ``soft_ce`` (smp), or a sum such as ``weighted_ce+dice``.

    ``loss_kwargs`` are the loss's keyword arguments; for a sum, a dict per component name
    (``{"dice": {"smooth": 1.0}}``) plus an optional ``"weights": [1.0, 0.5]``.
    """
    kwargs = dict(loss_kwargs or {})
    parts = [p.strip() for p in name.split("+")]
    unknown = [p for p in parts if p not in LOSSES]
    if unknown:
        raise ValueError(
            f"unknown loss {unknown[0]!r} in {name!r}; known: {', '.join(LOSSES)} "
            f"(or a sum such as 'weighted_ce+dice')."
        )
    if len(parts) == 1:
        return LOSSES[parts[0]](**kwargs)
    weights = kwargs.pop("weights", None)
    stray = [k for k in kwargs if k not in parts]
    if stray:
        raise ValueError(
            f"loss_kwargs of the sum {name!r} must be keyed by its parts {parts} (and 'weights'); got {stray}"
        )
    return SumOfLosses({p: LOSSES[p](**kwargs.get(p, {})) for p in parts}, weights)


__all__ = [
    "LOSSES",
    "CrossEntropy",
    "SMPLoss",
    "SumOfLosses",
    "WeightMapCache",
    "WeightedPixelLoss",
    "build_loss",
    "class_balance_weights",
    "unet_weight_map",
]
