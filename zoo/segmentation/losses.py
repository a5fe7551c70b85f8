"""Losses of the segmentation family: the U-Net weighted pixel loss and its weight map, Dice, and
segmentation-models-pytorch's losses by name.

Ronneberger et al. 2015, sec. 3, eq. 1-2: the energy is a pixel-wise soft-max cross-entropy in which
every pixel counts with a weight

    w(x) = w_c(x) + w0 * exp(-(d1(x) + d2(x))^2 / (2 sigma^2))

where ``w_c`` balances the class frequencies, ``d1`` / ``d2`` are the distances to the border of the
nearest and the second-nearest cell, and ``w0 = 10``, ``sigma = 5`` pixels. The weight map is
pre-computed once per ground-truth label when the data is set up (:func:`unet_weight_map`,
:class:`WeightMapCache`, defined in ``datamodules.weight_maps`` and re-exported here) and applied by
:class:`WeightedPixelLoss`.

Everything here is called as ``loss(logits, target, weight=None)``: ``logits (N, C, H, W)``,
``target (N, H, W)`` integer classes, ``weight (N, H, W)`` the weight map (only the weighted
loss reads it).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

# The weight map is preprocessing of the labels, computed by the datamodules; re-exported here beside its loss.
from datamodules.weight_maps import ClassWeights, WeightMapCache, class_balance_weights, unet_weight_map


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
    "ClassWeights",
    "CrossEntropy",
    "SMPLoss",
    "SumOfLosses",
    "WeightMapCache",
    "WeightedPixelLoss",
    "build_loss",
    "class_balance_weights",
    "unet_weight_map",
]
