"""The classifier's report: accuracy overall, per class and top-5, the confusion matrix, the most-confused
class pairs, the most confident mistakes as an image grid, and a reliability diagram with the expected
calibration error.

Calibration follows Guo et al. 2017 ("On Calibration of Modern Neural Networks", ICML): predictions are
grouped into 15 equal-width bins of confidence (the top softmax probability); the reliability diagram
plots each bin's accuracy against its mean confidence, and ECE = sum_b |B_b| / N * |acc(B_b) - conf(B_b)|.
The module logs the same ECE with torchmetrics (``MulticlassCalibrationError``, ``test/ece``); the
binning here reproduces it (tested) because the diagram needs the per-bin numbers torchmetrics does not return.

A multi-label classifier (``task="multilabel"``) gets its own report (:class:`MultilabelClassificationReport`, chosen
by :class:`ClassificationReport` itself): mAP, macro AUROC, F1 and exact match at the model's ``threshold``, a
per-class table (positives, AUROC, AP, precision, recall, F1), precision-recall and ROC curves per class, and the
images whose predicted label set is furthest from the true one. It has no confusion matrix (an image has no single
true and predicted class to cross) and no reliability diagram.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from zoo.classification.module import ImageClassifier
from zoo.evaluation import report

ECE_BINS = 15  # Guo et al. 2017 use M = 15 bins


def reliability_bins(
    confidence: torch.Tensor, correct: torch.Tensor, n_bins: int = ECE_BINS
) -> dict[str, torch.Tensor]:
    """Per-bin ``count``, ``accuracy`` and mean ``confidence`` over ``n_bins`` equal-width bins of (0, 1]
    (a confidence on a bin edge belongs to the lower bin, as in torchmetrics), and the ``ece``."""
    edges = torch.linspace(0, 1, n_bins + 1, dtype=torch.float64)
    index = (torch.bucketize(confidence.double(), edges, right=False) - 1).clamp(0, n_bins - 1)
    count = torch.bincount(index, minlength=n_bins).double()
    conf_sum = torch.bincount(index, weights=confidence.double(), minlength=n_bins)
    acc_sum = torch.bincount(index, weights=correct.double(), minlength=n_bins)
    accuracy = acc_sum / count.clamp_min(1)
    mean_conf = conf_sum / count.clamp_min(1)
    ece = ((accuracy - mean_conf).abs() * count).sum() / count.sum().clamp_min(1)
    return {"edges": edges, "count": count, "accuracy": accuracy, "confidence": mean_conf, "ece": ece}


def most_confused_pairs(confmat: torch.Tensor, class_names: list[str], top: int = 10) -> list[dict[str, Any]]:
    """The ``top`` off-diagonal cells of a confusion matrix (rows true, columns predicted), largest first."""
    off = confmat.clone().long()
    off.fill_diagonal_(0)
    support = confmat.sum(dim=1)
    values, flat = off.flatten().sort(descending=True)
    pairs = []
    for value, index in zip(values.tolist(), flat.tolist(), strict=True):
        if value == 0 or len(pairs) == top:
            break
        true, pred = divmod(index, confmat.shape[1])
        pairs.append(
            {
                "true": class_names[true],
                "predicted": class_names[pred],
                "count": value,
                "fraction_of_true": value / max(int(support[true]), 1),
            }
        )
    return pairs


@report.register_report_writer(ImageClassifier)
class ClassificationReport(report.ReportWriter):
    """Collects every test sample's softmax probabilities and label, and the ``max_examples`` most confident
    mistakes' images; writes the figures and tables listed in the module docstring."""

    max_examples = 32

    def __new__(cls, module: ImageClassifier, *args: Any, **kwargs: Any) -> ClassificationReport:
        # One writer is registered per module class; a multi-label classifier's report is another one.
        if cls is ClassificationReport and getattr(module, "task", "multiclass") == "multilabel":
            cls = MultilabelClassificationReport
        return super().__new__(cls)

    def __init__(self, module: ImageClassifier) -> None:
        super().__init__(module)
        self.probs: list[torch.Tensor] = []
        self.labels: list[torch.Tensor] = []
        # (confidence, image, true, predicted) of the most confident mistakes seen so far
        self.mistakes: list[tuple[float, torch.Tensor, int, int]] = []

    def collect(self, module: Any, batch: Any, outputs: Any) -> None:
        images, labels = batch[0], batch[1]
        logits = outputs if isinstance(outputs, torch.Tensor) else module(images)
        probs = logits.float().softmax(dim=1).cpu()
        labels = labels.cpu()
        self.probs.append(probs)
        self.labels.append(labels)
        self.num_samples += len(labels)
        confidence, predicted = probs.max(dim=1)
        wrong = (predicted != labels).nonzero().flatten()
        if len(wrong):
            worst = wrong[confidence[wrong].argsort(descending=True)[: self.max_examples]]
            self.mistakes += [(float(confidence[i]), images[i].cpu(), int(labels[i]), int(predicted[i])) for i in worst]
            self.mistakes = sorted(self.mistakes, key=lambda m: -m[0])[: self.max_examples]

    def write(self, module: Any, metrics: dict[str, float], report_dir: Path) -> report.FamilyReport:
        import matplotlib

        matplotlib.use("Agg")
        from zoo.core.plots import plot_confusion_matrix

        names = list(module.class_names)
        probs = torch.cat(self.probs) if self.probs else torch.zeros(0, module.num_classes)
        labels = torch.cat(self.labels) if self.labels else torch.zeros(0, dtype=torch.long)
        confidence, predicted = probs.max(dim=1) if len(probs) else (torch.zeros(0), torch.zeros(0, dtype=torch.long))
        correct = predicted == labels
        k = module.num_classes
        confmat = torch.bincount(labels * k + predicted, minlength=k * k).reshape(k, k)
        support = confmat.sum(dim=1)
        top5 = min(5, k)
        top5_acc = (
            float((probs.topk(top5, dim=1).indices == labels[:, None]).any(dim=1).float().mean())
            if len(probs)
            else float("nan")
        )
        bins = reliability_bins(confidence, correct)
        pairs = most_confused_pairs(confmat, names)

        figures = [
            report.Figure(
                report.save_figure(plot_confusion_matrix(confmat, names), report_dir / "confusion_matrix.png"),
                "Confusion matrix (rows: true class; colour: fraction of the true class; numbers: counts)",
            ),
            report.Figure(
                report.save_figure(_reliability_figure(bins), report_dir / "reliability_diagram.png"),
                f"Reliability diagram, {ECE_BINS} bins (Guo et al. 2017); ECE = {float(bins['ece']):.4f}",
            ),
        ]
        if self.mistakes:
            figures.append(
                report.Figure(
                    report.save_figure(_mistakes_figure(self.mistakes, names), report_dir / "misclassified.png"),
                    f"The {len(self.mistakes)} most confident mistakes: true -> predicted (confidence)",
                )
            )
        per_class = [
            [
                name,
                int(support[i]),
                metrics.get(f"test/acc_class/{name}", float(confmat[i, i]) / max(int(support[i]), 1)),
            ]
            for i, name in enumerate(names)
        ]
        accuracy = metrics.get("test/acc", float(correct.float().mean()) if len(correct) else float("nan"))
        sections = [
            report.Section(
                "Accuracy",
                tables=[
                    report.Table(
                        ["metric", "value"],
                        [
                            ["top-1 accuracy", accuracy],
                            [f"top-{top5} accuracy", metrics.get("test/acc_top5", top5_acc)],
                            ["expected calibration error (ECE)", metrics.get("test/ece", float(bins["ece"]))],
                            ["test samples", self.num_samples],
                        ],
                    )
                ],
            ),
            report.Section(
                "Per-class accuracy", tables=[report.Table(["class", "test samples", "accuracy"], per_class)]
            ),
            report.Section(
                "Confusion",
                text="The most-confused class pairs (off-diagonal cells of the confusion matrix).",
                tables=[
                    report.Table(
                        ["true", "predicted", "count", "fraction of true class"],
                        [[p["true"], p["predicted"], p["count"], p["fraction_of_true"]] for p in pairs],
                    )
                ],
                figures=figures[:1],
            ),
            report.Section(
                "Calibration",
                text=(
                    "Confidence = top softmax probability. Bars: accuracy per confidence bin; the diagonal is perfect "
                    "calibration; ECE is the sample-weighted mean gap (Guo et al. 2017)."
                ),
                figures=figures[1:2],
            ),
            report.Section("Misclassified test images", figures=figures[2:]),
        ]
        data = {
            "ece": float(bins["ece"]),
            "ece_bins": ECE_BINS,
            "reliability": {key: bins[key].tolist() for key in ("count", "accuracy", "confidence")},
            "top5_accuracy": top5_acc,
            "confusion_matrix": confmat.tolist(),
            "most_confused": pairs,
            "figures": [f.path.name for f in figures],
        }
        return report.FamilyReport(sections, data)


def _reliability_figure(bins: dict[str, torch.Tensor]) -> Any:
    import matplotlib.pyplot as plt

    edges = bins["edges"].numpy()
    width = edges[1] - edges[0]
    centers = edges[:-1] + width / 2
    filled = bins["count"].numpy() > 0
    fig, (ax, hist) = plt.subplots(2, 1, figsize=(5, 6.5), gridspec_kw={"height_ratios": [3, 1]}, sharex=True)
    ax.bar(centers[filled], bins["accuracy"].numpy()[filled], width=width, edgecolor="black", label="accuracy")
    gap = bins["confidence"].numpy() - bins["accuracy"].numpy()
    ax.bar(
        centers[filled],
        gap[filled],
        bottom=bins["accuracy"].numpy()[filled],
        width=width,
        color="red",
        alpha=0.3,
        edgecolor="red",
        label="gap to confidence",
    )
    ax.plot([0, 1], [0, 1], "k--", label="perfect calibration")
    ax.set_ylabel("accuracy")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.legend(loc="upper left")
    ax.set_title(f"Reliability diagram, ECE = {float(bins['ece']):.4f}")
    hist.bar(centers, bins["count"].numpy(), width=width, edgecolor="black")
    hist.set_yscale("symlog")
    hist.set_xlabel("confidence")
    hist.set_ylabel("samples")
    fig.tight_layout()
    return fig


def _mistakes_figure(mistakes: list[tuple[float, torch.Tensor, int, int]], names: list[str]) -> Any:
    fig, axes = report.panel_grid(len(mistakes), 8, (1.6, 1.9))
    for ax, (conf, image, true, pred) in zip(axes, mistakes, strict=False):
        shown = report.display_image(image)
        ax.imshow(shown, cmap="gray" if shown.ndim == 2 else None)
        ax.set_title(f"{names[true]} -> {names[pred]}\n({conf:.2f})", fontsize=8)
    fig.tight_layout()
    return fig


class MultilabelClassificationReport(ClassificationReport):
    """The report of a ``task="multilabel"`` classifier (module docstring): every test sample's sigmoid
    probabilities and multi-hot targets, and the ``max_examples`` images with the largest mean binary cross-entropy
    among those whose predicted label set (probability >= ``threshold``) differs from the true one."""

    max_curves_in_legend = 20

    def __init__(self, module: ImageClassifier) -> None:
        report.ReportWriter.__init__(self, module)
        self.probs: list[torch.Tensor] = []
        self.labels: list[torch.Tensor] = []
        # (mean BCE, image, true label indices, predicted label indices) of the worst images seen so far
        self.worst: list[tuple[float, torch.Tensor, list[int], list[int]]] = []

    def collect(self, module: Any, batch: Any, outputs: Any) -> None:
        images, targets = batch[0], batch[1]
        logits = (outputs if isinstance(outputs, torch.Tensor) else module(images)).float().cpu()
        targets = targets.float().cpu()
        probs = logits.sigmoid()
        self.probs.append(probs)
        self.labels.append(targets.long())
        self.num_samples += len(targets)
        predicted = probs >= module.threshold
        wrong = (predicted != targets.bool()).any(dim=1).nonzero().flatten()
        if len(wrong):
            loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, targets, reduction="none").mean(dim=1)
            worst = wrong[loss[wrong].argsort(descending=True)[: self.max_examples]]
            self.worst += [
                (float(loss[i]), images[i].cpu(), targets[i].nonzero().flatten().tolist(),
                 predicted[i].nonzero().flatten().tolist())
                for i in worst
            ]  # fmt: skip
            self.worst = sorted(self.worst, key=lambda m: -m[0])[: self.max_examples]

    def write(self, module: Any, metrics: dict[str, float], report_dir: Path) -> report.FamilyReport:
        import matplotlib

        matplotlib.use("Agg")
        names = list(module.class_names)
        k = module.num_classes
        probs = torch.cat(self.probs) if self.probs else torch.zeros(0, k)
        targets = torch.cat(self.labels) if self.labels else torch.zeros(0, k, dtype=torch.long)
        threshold = float(module.threshold)
        per_class = multilabel_per_class(probs, targets, threshold)
        logged = {"auroc": "auroc_class", "ap": "ap_class"}
        for key, prefix in logged.items():  # the module's numbers where it logged them (the same definitions)
            per_class[key] = [metrics.get(f"test/{prefix}/{name}", v) for name, v in zip(names, per_class[key],
                                                                                          strict=True)]
        summary = {
            "map": metrics.get("test/map", _nanmean(per_class["ap"])),
            "auroc": metrics.get("test/auroc", _nanmean(per_class["auroc"])),
            "f1": metrics.get("test/f1", _nanmean(per_class["f1"], nan_as_zero=True)),
            "exact_match": metrics.get(
                "test/exact_match",
                float(((probs >= threshold) == targets.bool()).all(dim=1).float().mean()) if len(probs) else math.nan,
            ),
        }
        figures = [
            report.Figure(
                report.save_figure(_curves_figure(probs, targets, names, "pr", self.max_curves_in_legend),
                                   report_dir / "pr_curves.png"),
                f"Precision-recall curve per class (legend: AP); mAP = {_cell(summary['map'])}",
            ),
            report.Figure(
                report.save_figure(_curves_figure(probs, targets, names, "roc", self.max_curves_in_legend),
                                   report_dir / "roc_curves.png"),
                f"ROC curve per class (legend: AUROC); macro AUROC = {_cell(summary['auroc'])}",
            ),
        ]  # fmt: skip
        if self.worst:
            figures.append(
                report.Figure(
                    report.save_figure(_worst_multilabel_figure(self.worst, names), report_dir / "misclassified.png"),
                    f"The {len(self.worst)} test images with the largest mean BCE among those whose predicted label "
                    f"set differs from the true one: true / predicted (probability >= {threshold:g}) labels",
                )
            )
        rows = [
            [name, per_class["positives"][i], per_class["negatives"][i], _cell(per_class["auroc"][i]),
             _cell(per_class["ap"][i]), per_class["precision"][i], per_class["recall"][i], per_class["f1"][i]]
            for i, name in enumerate(names)
        ]  # fmt: skip
        sections = [
            report.Section(
                "Multi-label metrics",
                text=(
                    f"Probabilities are per-label sigmoids; a label is predicted at probability >= {threshold:g} "
                    "(the model's threshold). mAP and AUROC are macro means over the classes where they are defined "
                    "(AP: at least one positive test image; AUROC: positives and negatives)."
                ),
                tables=[
                    report.Table(
                        ["metric", "value"],
                        [
                            ["mean average precision (mAP)", _cell(summary["map"])],
                            ["macro AUROC", _cell(summary["auroc"])],
                            [f"macro F1 at {threshold:g}", _cell(summary["f1"])],
                            ["exact match (subset accuracy)", _cell(summary["exact_match"])],
                            ["test samples", self.num_samples],
                        ],
                    )
                ],
            ),
            report.Section(
                "Per-class AUROC and AP",
                text="Precision, recall and F1 at the threshold; undefined: no positive (or, for AUROC, no negative) "
                "test image of that class.",
                tables=[
                    report.Table(
                        ["class", "positives", "negatives", "AUROC", "AP", "precision", "recall", "F1"], rows
                    )
                ],
            ),
            report.Section("Precision-recall and ROC curves", figures=figures[:2]),
            report.Section(
                "Misclassified test images",
                text=(
                    "No confusion matrix: an image with several labels has no single true and predicted class to "
                    "cross; each class's errors are in the per-class table. Shown instead: the images whose "
                    "predicted label set is furthest (mean BCE) from the true one."
                    if self.worst
                    else "No confusion matrix (an image with several labels has no single true and predicted class "
                    "to cross), and no test image with a wrong label set."
                ),
                figures=figures[2:],
            ),
        ]
        data = {
            "task": "multilabel",
            "threshold": threshold,
            **{key: _json_number(value) for key, value in summary.items()},
            "per_class": [
                {"class": name, **{key: _json_number(per_class[key][i]) for key in per_class}}
                for i, name in enumerate(names)
            ],
            "figures": [f.path.name for f in figures],
        }
        return report.FamilyReport(sections, data)


def multilabel_per_class(probs: torch.Tensor, targets: torch.Tensor, threshold: float) -> dict[str, list[Any]]:
    """Per class: ``positives``, ``negatives``, ``auroc``, ``ap`` (torchmetrics' exact AUROC / AP; ``nan`` where
    undefined, as the module's :class:`~zoo.classification.metrics.MultilabelMeanAUROC`), and ``precision``,
    ``recall``, ``f1`` at ``threshold`` (0 where undefined, as torchmetrics' ``zero_division``)."""
    from torchmetrics.functional.classification import multilabel_auroc, multilabel_average_precision

    k = probs.shape[1]
    positives = (targets == 1).sum(dim=0)
    negatives = (targets == 0).sum(dim=0)
    nan = torch.full((k,), float("nan"))
    if len(probs):
        auroc = multilabel_auroc(probs, targets, k, average="none").float()
        ap = multilabel_average_precision(probs, targets, k, average="none").float()
        auroc = torch.where((positives > 0) & (negatives > 0), auroc, nan)
        ap = torch.where(positives > 0, ap, nan)
    else:
        auroc, ap = nan, nan.clone()
    predicted = probs >= threshold
    truth = targets.bool()
    tp = (predicted & truth).sum(dim=0).double()
    fp = (predicted & ~truth).sum(dim=0).double()
    fn = (~predicted & truth).sum(dim=0).double()

    def ratio(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
        return torch.where(den > 0, num / den.clamp_min(1), torch.zeros_like(num))  # 0/0 -> 0

    precision, recall, f1 = ratio(tp, tp + fp), ratio(tp, tp + fn), ratio(2 * tp, 2 * tp + fp + fn)
    return {
        "positives": positives.tolist(),
        "negatives": negatives.tolist(),
        "auroc": auroc.tolist(),
        "ap": ap.tolist(),
        "precision": precision.tolist(),
        "recall": recall.tolist(),
        "f1": f1.tolist(),
    }


def _nanmean(values: list[float], nan_as_zero: bool = False) -> float:
    kept = [0.0 if (nan_as_zero and math.isnan(v)) else v for v in values]
    kept = [v for v in kept if not math.isnan(v)]
    return sum(kept) / len(kept) if kept else math.nan


def _json_number(value: Any) -> Any:
    return None if isinstance(value, float) and math.isnan(value) else value


def _cell(value: float) -> Any:
    return "undefined" if isinstance(value, float) and math.isnan(value) else value


def _curves_figure(probs: torch.Tensor, targets: torch.Tensor, names: list[str], kind: str, max_legend: int) -> Any:
    """Precision-recall (``kind="pr"``) or ROC (``"roc"``) curves, one line per class with a positive (and, for ROC,
    a negative) test image; the legend gives each class's AP / AUROC (up to ``max_legend`` classes)."""
    import matplotlib.pyplot as plt
    from torchmetrics.functional.classification import multilabel_precision_recall_curve, multilabel_roc

    fig, ax = plt.subplots(figsize=(6, 5.5))
    per_class = multilabel_per_class(probs, targets, 0.5)
    score = per_class["ap" if kind == "pr" else "auroc"]
    if len(probs):
        curves = (multilabel_precision_recall_curve if kind == "pr" else multilabel_roc)(probs, targets, len(names))
        xs, ys = (curves[1], curves[0]) if kind == "pr" else (curves[0], curves[1])  # PR: recall on x
        many = len(names) > max_legend
        for i, name in enumerate(names):
            if math.isnan(score[i]):
                continue  # undefined for this class: no curve
            ax.plot(xs[i].numpy(), ys[i].numpy(), lw=1, alpha=0.5 if many else 1.0,
                    label=None if many else f"{name} ({score[i]:.3f})")  # fmt: skip
        if not many and any(not math.isnan(s) for s in score):
            ax.legend(loc="lower left" if kind == "pr" else "lower right", fontsize=8)
    if kind == "roc":
        ax.plot([0, 1], [0, 1], "k--", lw=0.8)
    ax.set_xlabel("recall" if kind == "pr" else "false positive rate")
    ax.set_ylabel("precision" if kind == "pr" else "true positive rate")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_title("Precision-recall curves" if kind == "pr" else "ROC curves")
    fig.tight_layout()
    return fig


def _label_list(indices: list[int], names: list[str], most: int = 3) -> str:
    shown = ",".join(names[i] for i in indices[:most])
    return (shown + (f"+{len(indices) - most}" if len(indices) > most else "")) or "-"


def _worst_multilabel_figure(worst: list[tuple[float, torch.Tensor, list[int], list[int]]], names: list[str]) -> Any:
    fig, axes = report.panel_grid(len(worst), 8, (1.6, 2.1))
    for ax, (loss, image, true, pred) in zip(axes, worst, strict=False):
        shown = report.display_image(image)
        ax.imshow(shown, cmap="gray" if shown.ndim == 2 else None)
        ax.set_title(f"{_label_list(true, names)}\n/ {_label_list(pred, names)}\n(BCE {loss:.2f})", fontsize=7)
    fig.tight_layout()
    return fig
