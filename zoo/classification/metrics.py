"""Multi-label metrics that torchmetrics lacks: per-label AP / AUROC averaged over the labels where they are
defined (torchmetrics counts an undefined label as 0). Written here on top of torchmetrics' exact metrics, so they
sync under DDP like any torchmetrics ``Metric``."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import torch
from torchmetrics.classification import MultilabelAUROC, MultilabelAveragePrecision
from torchmetrics.utilities import dim_zero_cat


class _OverDefinedLabels:
    """Per-label AP / AUROC where a label's metric is defined, and their macro mean over those labels only.

    torchmetrics gives a label without positives (AP, AUROC) or without negatives (AUROC) the value 0 and averages
    it into the macro mean, so a validation split lacking a rare label lowers mAP by ``1 / num_labels`` for nothing
    the model did. Here such a label is ``nan`` per class and left out of the mean (the convention of PASCAL VOC /
    COCO, which average over the classes present); ``nan`` when no label is defined.
    """

    needs_negatives: ClassVar[bool] = False

    def __init__(self, num_labels: int, average: Literal["macro", "none"] = "macro", **kwargs: Any) -> None:
        super().__init__(num_labels, average="none", **kwargs)  # type: ignore[call-arg]
        self.defined_average = average

    def compute(self) -> torch.Tensor:
        values = super().compute().float().clone()  # type: ignore[misc]
        target = dim_zero_cat(self.target)  # type: ignore[attr-defined]
        defined = (target == 1).sum(dim=0) > 0
        if self.needs_negatives:
            defined &= (target == 0).sum(dim=0) > 0
        values[~defined] = float("nan")
        if self.defined_average == "none":
            return values
        return values[defined].mean() if bool(defined.any()) else values.new_tensor(float("nan"))


class MultilabelMeanAveragePrecision(_OverDefinedLabels, MultilabelAveragePrecision):
    """torchmetrics' ``MultilabelAveragePrecision`` (exact, no binning), macro over the labels with a positive."""


class MultilabelMeanAUROC(_OverDefinedLabels, MultilabelAUROC):
    """torchmetrics' ``MultilabelAUROC`` (exact), macro over the labels with both positives and negatives."""

    needs_negatives = True
