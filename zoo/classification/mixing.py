"""Mixup and CutMix on whole batches, and the losses of their soft targets.

- **mixup** (Zhang et al. 2018, "mixup: Beyond Empirical Risk Minimization", ICLR, eq. 1): a batch is mixed with a
  permutation of itself, ``x = lam * x_i + (1 - lam) * x_j`` and ``y = lam * y_i + (1 - lam) * y_j``, with
  ``lam ~ Beta(alpha, alpha)`` drawn once per batch and ``j`` a random permutation of the batch (their reference
  code's ``torch.randperm``).
- **CutMix** (Yun et al. 2019, "CutMix: Regularization Strategy to Train Strong Classifiers with Localizable
  Features", ICCV, eq. 1-2 and Algorithm A1): a box of the permuted batch is pasted into each image. ``lam ~
  Beta(alpha, alpha)`` sets the box, of size ``H sqrt(1 - lam)`` by ``W sqrt(1 - lam)`` around a uniformly drawn
  centre, clipped to the image; the targets are mixed with the **area-corrected** ``lam = 1 - box area / (H W)``
  (the share of each image that is still its own after clipping), as in their code and timm's ``correct_lam``.

Per batch, as timm's ``Mixup`` (``mode="batch"``): with probability ``mix_prob`` the batch is mixed at all; when both
alphas are positive, CutMix is chosen with probability ``switch_prob``, mixup otherwise.

Written here rather than taken from a library, because neither fits the classifier as it is:
torchvision's ``transforms.v2.MixUp`` / ``CutMix`` take integer labels only (no multi-hot targets) and know nothing
of label smoothing; timm's ``Mixup`` stops on an odd batch size (``assert len(x) % 2 == 0``: the last batch of an
epoch often is), mixes the batch tensor in place (a datamodule's in-memory images would change) and draws from
numpy's global generator. The code below follows timm's batch mode (its box, its ``correct_lam``, its way of
combining label smoothing with the mixed targets, tested against ``timm.data.mixup``), draws from torch's generator
(``seed_everything`` seeds it) and leaves its input alone.

Label smoothing is applied by the losses, after mixing (the same targets as timm's ``mixup_target``, whose
smoothing is linear in the targets): ``(1 - s) * y + s / C`` for cross-entropy (Szegedy et al. 2016, sec. 7) and
``(1 - s) * y + s / 2`` for the binary cross-entropy of multi-label targets.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

MixKind = Literal["none", "mixup", "cutmix"]


@dataclass
class MixInfo:
    """What :class:`BatchMixer` did to one batch: ``kind``, the targets' ``lam`` (for CutMix the area-corrected one),
    the pasted ``box`` ``(y0, y1, x0, x1)`` (CutMix only) and the permutation ``partner`` (``j`` of sample ``i``)."""

    kind: MixKind = "none"
    lam: float = 1.0
    box: tuple[int, int, int, int] | None = None
    partner: torch.Tensor | None = None


def check_mixing_arguments(mixup_alpha: float, cutmix_alpha: float, switch_prob: float, mix_prob: float) -> None:
    """A ``ValueError`` naming the argument and the fix for a negative alpha or a probability outside [0, 1]."""
    for name, value in (("mixup_alpha", mixup_alpha), ("cutmix_alpha", cutmix_alpha)):
        if not (value >= 0 and math.isfinite(value)):
            raise ValueError(f"{name}={value}: a Beta distribution's alpha must be >= 0. Fix: set {name} to 0 (off) "
                             f"or a positive number (mixup: 0.2 to 0.4 on ImageNet; CutMix: 1.0).")
    for name, value in (("mix_switch_prob", switch_prob), ("mix_prob", mix_prob)):
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"{name}={value} is a probability. Fix: set {name} within [0, 1].")


class BatchMixer:
    """Mixup / CutMix of a batch and its targets (see the module docstring).

    Args:
        num_classes: the classes of the one-hot targets made from integer labels.
        mixup_alpha: ``alpha`` of mixup's ``Beta(alpha, alpha)``; 0: no mixup.
        cutmix_alpha: ``alpha`` of CutMix's ``Beta(alpha, alpha)``; 0: no CutMix.
        switch_prob: with both alphas positive, the probability that a batch gets CutMix rather than mixup.
        mix_prob: the probability that a batch is mixed at all.
    """

    def __init__(
        self,
        num_classes: int,
        mixup_alpha: float = 0.0,
        cutmix_alpha: float = 0.0,
        switch_prob: float = 0.5,
        mix_prob: float = 1.0,
    ) -> None:
        check_mixing_arguments(mixup_alpha, cutmix_alpha, switch_prob, mix_prob)
        self.num_classes = num_classes
        self.mixup_alpha, self.cutmix_alpha = float(mixup_alpha), float(cutmix_alpha)
        self.switch_prob, self.mix_prob = float(switch_prob), float(mix_prob)

    @property
    def enabled(self) -> bool:
        return (self.mixup_alpha > 0 or self.cutmix_alpha > 0) and self.mix_prob > 0

    def draw(self) -> tuple[MixKind, float]:
        """The kind of mixing of the next batch and its ``lam`` drawn from the Beta distribution (timm's
        ``_params_per_batch``)."""
        if not self.enabled or float(torch.rand(())) >= self.mix_prob:
            return "none", 1.0
        if self.mixup_alpha > 0 and self.cutmix_alpha > 0:
            kind: MixKind = "cutmix" if float(torch.rand(())) < self.switch_prob else "mixup"
        else:
            kind = "cutmix" if self.cutmix_alpha > 0 else "mixup"
        alpha = self.cutmix_alpha if kind == "cutmix" else self.mixup_alpha
        lam = float(torch.distributions.Beta(alpha, alpha).sample())
        return kind, lam

    def one_hot(self, targets: torch.Tensor) -> torch.Tensor:
        """Float targets ``(N, num_classes)``: integer labels one-hot, multi-hot targets as they are."""
        if targets.ndim == 1:
            return F.one_hot(targets.long(), self.num_classes).float()
        return targets.float()

    def __call__(
        self, images: torch.Tensor, targets: torch.Tensor, kind: MixKind | None = None, lam: float | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, MixInfo]:
        """``(images, targets, info)`` of a batch ``(N, C, H, W)`` and its targets (integer labels ``(N,)`` or
        multi-hot ``(N, num_classes)``). Mixed: new image and soft-target tensors ``(N, num_classes)`` whose rows
        keep their sums (one for labels). Not mixed this time (``mix_prob``): the inputs themselves, unchanged.
        ``kind`` and ``lam`` replace the random draw (tests)."""
        if kind is None:
            kind, lam = self.draw()
        lam = 1.0 if lam is None else float(lam)
        if kind == "none":
            return images, targets, MixInfo()
        partner = torch.randperm(len(images), device=images.device)
        box = None
        if kind == "mixup":
            mixed = images * lam + images[partner] * (1.0 - lam)
        elif kind == "cutmix":
            box = cutmix_box(images.shape[-2], images.shape[-1], lam, device=images.device)
            y0, y1, x0, x1 = box
            mixed = images.clone()
            mixed[..., y0:y1, x0:x1] = images[partner][..., y0:y1, x0:x1]
            lam = 1.0 - (y1 - y0) * (x1 - x0) / (images.shape[-2] * images.shape[-1])  # area-corrected
        else:
            raise ValueError(f"unknown mixing {kind!r}: 'none', 'mixup' or 'cutmix'")
        soft = self.one_hot(targets)
        soft = soft * lam + soft[partner] * (1.0 - lam)
        return mixed, soft, MixInfo(kind, lam, box, partner)


def cutmix_box(height: int, width: int, lam: float, device: torch.device | str | None = None) -> tuple[int, ...]:
    """``(y0, y1, x0, x1)`` of CutMix's box (Yun et al. 2019, Algorithm A1; timm's ``rand_bbox``): sides
    ``int(H sqrt(1 - lam))`` by ``int(W sqrt(1 - lam))`` around a centre drawn uniformly over the image, clipped
    to it."""
    ratio = math.sqrt(1.0 - lam)
    cut_h, cut_w = int(height * ratio), int(width * ratio)
    cy = int(torch.randint(0, height, ()))
    cx = int(torch.randint(0, width, ()))
    y0, y1 = max(cy - cut_h // 2, 0), min(cy + (cut_h + 1) // 2, height)
    x0, x1 = max(cx - cut_w // 2, 0), min(cx + (cut_w + 1) // 2, width)
    return y0, y1, x0, x1


def soft_target_cross_entropy(
    logits: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | None = None,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """Cross-entropy of logits ``(N, C)`` against probability targets ``(N, C)`` (mixed one-hot rows).

    Label smoothing makes the targets ``(1 - s) * target + s / C`` (Szegedy et al. 2016, sec. 7). Class weights
    ``w`` weigh each class's term, and the sum is divided by ``sum_n sum_c w_c target_nc``, the weight each sample's
    unsmoothed target carries: for one-hot targets this is exactly ``F.cross_entropy(logits, labels, weight=w,
    label_smoothing=s)`` (the weighted mean of PyTorch's index targets), so a mixed batch and an unmixed one are on
    one scale. (PyTorch's own probability-target cross-entropy divides a weighted sum by ``N`` instead.)
    Without weights it is ``F.cross_entropy(logits, target, label_smoothing=s)``.
    """
    logp = logits.float().log_softmax(dim=1)
    target = target.float()
    smoothed = target * (1.0 - label_smoothing) + label_smoothing / logits.shape[1] if label_smoothing else target
    if weight is None:
        return -(smoothed * logp).sum(dim=1).mean()
    weight = weight.to(logp)
    return -(smoothed * logp * weight).sum() / (target * weight).sum().clamp_min(1e-12)


def multilabel_bce(
    logits: torch.Tensor,
    target: torch.Tensor,
    pos_weight: torch.Tensor | None = None,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """Mean binary cross-entropy with logits over samples and labels; label smoothing makes the targets
    ``(1 - s) * y + s / 2`` (timm's multi-label ``mixup_target``); ``pos_weight`` (per class) weighs the positive
    term of each label, ``-[p_c y log sigma(z) + (1 - y) log(1 - sigma(z))]`` (``BCEWithLogitsLoss``)."""
    target = target.to(logits.dtype)
    if label_smoothing:
        target = target * (1.0 - label_smoothing) + 0.5 * label_smoothing
    return F.binary_cross_entropy_with_logits(logits, target, pos_weight=pos_weight)


__all__ = [
    "BatchMixer",
    "MixInfo",
    "check_mixing_arguments",
    "cutmix_box",
    "multilabel_bce",
    "soft_target_cross_entropy",
]
