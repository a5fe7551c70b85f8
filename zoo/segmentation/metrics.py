"""Segmentation metrics that torchmetrics lacks: pixel error and the ISBI 2012 Rand error.

IoU and Dice per class come from torchmetrics (``MulticlassJaccardIndex``,
``torchmetrics.segmentation.DiceScore``) in :class:`zoo.segmentation.SemanticSegmenter`.

* **Pixel error**: the fraction of pixels whose predicted (argmax) class is wrong.
* **ISBI challenge pixel error** (:class:`ISBIPixelError`): what the ISBI 2012 challenge and the U-Net
  paper's table 1 call pixel error, ``1 -`` the maximal F-score of pixel similarity over the thresholds
  0, 0.1, ..., 1 of the foreground probability map (positive = foreground; the challenge's Fiji code,
  ``trainableSegmentation.metrics.PixelError.getPixelErrorMaximalFScore(0.0, 1.0, 0.1)``). Not the same
  number as the fraction above: an F-score, and the best threshold for the images evaluated.
* **Foreground-restricted Rand error** (ISBI 2012; Arganda-Carreras et al. 2015, "Crowdsourcing the
  creation of image segmentation algorithms for connectomics"): the cells of the ground truth and of
  the prediction are the connected components of the foreground class; pixels that are background
  in the ground truth are left out; the error is ``1 - F``, ``F`` the harmonic mean of Rand split and
  merge scores computed from the contingency table of the two labelings. Same definition as
  ``skimage.metrics.adapted_rand_error`` (the tests check that they agree), written here with numpy
  so that scikit-image is not a runtime dependency.
* The **2018 Data Science Bowl score** of instance label images lives in :mod:`zoo.core.instance_metrics` (both
  instance routes, Mask R-CNN and the U-Net's instances, are scored with it).
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage
from torchmetrics import Metric


def pixel_error(preds: torch.Tensor, target: torch.Tensor, ignore_index: int | None = None) -> torch.Tensor:
    """Fraction of misclassified pixels of class maps ``preds`` and ``target`` (same shape)."""
    if preds.shape != target.shape:
        raise ValueError(f"preds {tuple(preds.shape)} and target {tuple(target.shape)} differ in shape")
    valid = torch.ones_like(target, dtype=torch.bool) if ignore_index is None else target != ignore_index
    wrong = (preds != target) & valid
    return wrong.sum().float() / valid.sum().clamp_min(1)


def adapted_rand_error(
    labels_true: np.ndarray, labels_pred: np.ndarray, ignore_labels: tuple[int, ...] = (0,)
) -> tuple[float, float, float]:
    """``(error, precision, recall)`` of two label images, as ``skimage.metrics.adapted_rand_error``:
    pixels whose true label is in ``ignore_labels`` are left out; ``error = 1 - F`` with
    ``F = sum(p_ij^2) / (0.5 sum(b_j^2) + 0.5 sum(a_i^2))`` over the (pixel-count) contingency table."""
    t = np.asarray(labels_true).ravel()
    p = np.asarray(labels_pred).ravel()
    if t.shape != p.shape:
        raise ValueError(f"label images of {np.asarray(labels_true).shape} and {np.asarray(labels_pred).shape} pixels")
    keep = ~np.isin(t, ignore_labels) if ignore_labels else np.ones(t.shape, bool)
    t, p = t[keep].astype(np.int64), p[keep].astype(np.int64)
    if t.size == 0:
        return 0.0, 1.0, 1.0
    _, t = np.unique(t, return_inverse=True)
    _, p = np.unique(p, return_inverse=True)
    joint = np.unique(t * (int(p.max()) + 1) + p, return_counts=True)[1].astype(np.float64)
    a = np.bincount(t).astype(np.float64)
    b = np.bincount(p).astype(np.float64)
    n = float(t.size)
    sum_p_ij2 = joint @ joint - n
    sum_a2 = a @ a - n
    sum_b2 = b @ b - n
    # skimage's naming: precision over the true segments' pairs, recall over the predicted ones'
    precision = sum_p_ij2 / sum_a2 if sum_a2 else 1.0
    recall = sum_p_ij2 / sum_b2 if sum_b2 else 1.0
    denom = 0.5 * sum_b2 + 0.5 * sum_a2
    fscore = sum_p_ij2 / denom if denom else 1.0
    return 1.0 - fscore, precision, recall


def foreground_components(classes: np.ndarray, foreground_class: int = 1) -> np.ndarray:
    """Cells as labels: 4-connected components of ``classes == foreground_class`` (0 elsewhere)."""
    return ndimage.label(np.asarray(classes) == foreground_class)[0]


def rand_error(preds: torch.Tensor | np.ndarray, target: torch.Tensor | np.ndarray, foreground_class: int = 1) -> float:
    """ISBI foreground-restricted Rand error of one predicted class map against the true one
    (cells: connected components of ``foreground_class``; true background pixels ignored)."""
    preds = preds.cpu().numpy() if isinstance(preds, torch.Tensor) else np.asarray(preds)
    target = target.cpu().numpy() if isinstance(target, torch.Tensor) else np.asarray(target)
    error, _, _ = adapted_rand_error(
        foreground_components(target, foreground_class), foreground_components(preds, foreground_class)
    )
    return float(error)


class PixelError(Metric):
    """Fraction of misclassified pixels over everything seen (sums of counts: DDP-safe)."""

    higher_is_better = False
    full_state_update = False

    def __init__(self, ignore_index: int | None = None, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.ignore_index = ignore_index
        self.add_state("wrong", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("total", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        valid = torch.ones_like(target, dtype=torch.bool) if self.ignore_index is None else target != self.ignore_index
        self.wrong += ((preds != target) & valid).sum()
        self.total += valid.sum()

    def compute(self) -> torch.Tensor:
        return self.wrong.float() / self.total.clamp_min(1)


class ISBIPixelError(Metric):
    """The ISBI 2012 challenge's pixel error: ``1 - max_t F(t)`` over the thresholds ``t`` = 0, 0.1, ..., 1,
    where ``F(t)`` is the F-score (harmonic mean of precision and recall) of "foreground probability > t"
    against "true class is the foreground", counted over every pixel seen (Arganda-Carreras et al. 2015,
    sec. 2.4; the challenge's Fiji evaluation, ``PixelError.getPixelErrorMaximalFScore(0.0, 1.0, 0.1)``).
    The U-Net paper's 0.0611 (table 1) is this number on the challenge's test set.

    ``update(probs, target)``: foreground probabilities ``(N, H, W)`` in [0, 1] and class maps ``(N, H, W)``.
    Counts are sums (DDP-safe). :attr:`best_threshold` is the threshold of the last ``compute()``.
    Written here: neither torchmetrics nor scikit-image has the challenge's definition, and torchmetrics'
    binned ``BinaryPrecisionRecallCurve`` counts ``probability >= t`` where the challenge counts ``> t``
    (they differ on saturated probabilities of exactly 0 or 1 and on ties at a threshold).
    """

    higher_is_better = False
    full_state_update = False

    def __init__(self, foreground_class: int = 1, thresholds: int = 11, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.foreground_class = foreground_class
        self.register_buffer("thresholds", torch.linspace(0, 1, thresholds), persistent=False)
        for name in ("tp", "fp", "fn"):
            self.add_state(name, torch.zeros(thresholds, dtype=torch.long), dist_reduce_fx="sum")
        self.best_threshold = float("nan")

    def update(self, probs: torch.Tensor, target: torch.Tensor) -> None:
        if probs.shape != target.shape:
            raise ValueError(f"foreground probabilities {tuple(probs.shape)} and class maps {tuple(target.shape)} "
                             "must have the same shape")
        positive = (target == self.foreground_class).flatten()
        probs = probs.flatten()
        for i, t in enumerate(self.thresholds):
            predicted = probs > t
            self.tp[i] += (predicted & positive).sum()
            self.fp[i] += (predicted & ~positive).sum()
            self.fn[i] += (~predicted & positive).sum()

    def compute(self) -> torch.Tensor:
        tp, fp, fn = self.tp.double(), self.fp.double(), self.fn.double()
        f_score = torch.where(tp > 0, 2 * tp / (2 * tp + fp + fn), torch.zeros_like(tp))  # = 2PR / (P + R)
        best = int(f_score.argmax())
        self.best_threshold = float(self.thresholds[best])
        return (1 - f_score[best]).float()


class RandError(Metric):
    """Mean over images of the ISBI foreground-restricted Rand error (:func:`rand_error`).

    ``update(preds, target)`` takes class maps ``(N, H, W)``; the connected components are
    computed with scipy on the CPU, one image at a time.
    """

    higher_is_better = False
    full_state_update = False

    def __init__(self, foreground_class: int = 1, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.foreground_class = foreground_class
        self.add_state("error_sum", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("images", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        if preds.ndim == 2:
            preds, target = preds[None], target[None]
        preds_np, target_np = preds.cpu().numpy(), target.cpu().numpy()
        for p, t in zip(preds_np, target_np, strict=True):
            self.error_sum += rand_error(p, t, self.foreground_class)
            self.images += 1

    def compute(self) -> torch.Tensor:
        return (self.error_sum / self.images.clamp_min(1)).float()


__all__ = [
    "ISBIPixelError",
    "PixelError",
    "RandError",
    "adapted_rand_error",
    "foreground_components",
    "pixel_error",
    "rand_error",
]
