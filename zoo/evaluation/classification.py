"""The classifier's report: accuracy overall, per class and top-5, the confusion matrix, the most-confused
class pairs, the most confident mistakes as an image grid, and a reliability diagram with the expected
calibration error.

Calibration follows Guo et al. 2017 ("On Calibration of Modern Neural Networks", ICML): predictions are
grouped into 15 equal-width bins of confidence (the top softmax probability); the reliability diagram
plots each bin's accuracy against its mean confidence, and ECE = sum_b |B_b| / N * |acc(B_b) - conf(B_b)|.
The module logs the same ECE with torchmetrics (``MulticlassCalibrationError``, ``test/ece``); the
binning here reproduces it (tested) because the diagram needs the per-bin numbers torchmetrics does not return.
"""

from __future__ import annotations

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
