"""The detector's report: COCO's box metrics (Lin et al. 2014: AP@[.5:.95], AP@.5, AP@.75, by object size, and
AR at 1/10/100 detections), per-class AP (table and bar chart), per-class precision/recall curves at the module's
``iou_threshold``, the confusion matrix with a background row and column, and a grid of test images with their
true (green) and predicted (red) boxes.

Nothing is recomputed here: the numbers and curves are the ones ``ObjectDetector`` computed at the end of the test
(:class:`zoo.detection.COCOMetrics`, kept in ``module.last_test_result``; gathered across processes under DDP), so
the report agrees with the logged ``test/*`` metrics by construction. The writer itself keeps only the first
``max_images`` test images with their targets and detections, for the grid: memory does not grow with the test set.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from zoo.evaluation.report import (
    FamilyReport,
    Figure,
    ReportWriter,
    Section,
    Table,
    panel_grid,
    register_report_writer,
    save_figure,
)


def _finite(value: Any) -> float | None:
    """A number for metrics.json: None for NaN and for COCO's -1 ("no objects of this kind")."""
    value = float(value)
    return None if math.isnan(value) or value == -1 else value


@register_report_writer("zoo.detection.ObjectDetector")
class DetectionReport(ReportWriter):
    """Counts the test images and keeps the first ``max_images`` (image, target, detections) for the grid;
    writes the tables and figures listed in the module docstring from ``module.last_test_result``."""

    max_images = 8

    def __init__(self, module: Any) -> None:
        super().__init__(module)
        self.kept: list[tuple[str, torch.Tensor, dict[str, torch.Tensor], dict[str, torch.Tensor]]] = []

    def collect(self, module: Any, batch: dict[str, Any], outputs: Any) -> None:
        images, targets = batch["images"], batch["targets"]
        self.num_samples += len(images)
        room = min(self.max_images - len(self.kept), len(images))
        if room <= 0:
            return
        # ObjectDetector.test_step returns its detections; a module that returns nothing is run on the kept images
        preds = outputs if isinstance(outputs, (list, tuple)) else module(images[:room])
        paths = batch.get("paths") or [None] * len(images)
        for i in range(room):
            name = Path(paths[i]).stem if paths[i] else f"image {self.num_samples - len(images) + i}"
            pred = {k: v.detach().cpu() for k, v in preds[i].items()}
            target = {k: v.detach().cpu() for k, v in targets[i].items()}
            self.kept.append((name, images[i].detach().cpu(), target, pred))

    def write(self, module: Any, metrics: dict[str, float], report_dir: Path) -> FamilyReport:
        import matplotlib

        matplotlib.use("Agg")
        names = list(module.class_names)
        iou_threshold = float(module.hparams.get("iou_threshold", 0.5))
        score_threshold = float(module.hparams.get("score_threshold", 0.5))
        result = getattr(module, "last_test_result", None)
        if result is None:
            text = (
                f"{type(module).__name__} kept no COCO result (``last_test_result`` is None): only the logged "
                "metrics and the detections grid are available."
            )
            figures = self._grid_figures(names, score_threshold, report_dir)
            return FamilyReport([Section("COCO metrics", text=text), Section("Detections", figures=figures)],
                                {"figures": [f.path.name for f in figures]})  # fmt: skip

        from zoo.detection.metrics import COCO_SUMMARY

        coco_rows = [
            [what, iou, area, dets, _shown(metrics.get(f"test/{key}", result[key]))]
            for key, what, iou, area, dets in COCO_SUMMARY
        ]
        curves = result.get("pr_curves") or {}
        per_class_result = result.get("per_class") or {}
        per_class: dict[str, dict[str, Any]] = {}
        class_rows = []
        for label, name in enumerate(names, start=1):
            values = per_class_result.get(label, {})
            curve = curves.get(label)
            entry = {
                "objects": curve.num_gt if curve is not None else None,
                "ap": _finite(values.get("ap", -1)),
                "ap_50": _finite(values.get("ap_50", -1)),
                "ar_100": _finite(values.get("ar_100", -1)),
                "tp": curve.num_tp if curve is not None else None,  # at iou_threshold, every score
                "fp": curve.num_fp if curve is not None else None,
            }
            per_class[name] = entry
            class_rows.append([name, *(_shown(v) for v in entry.values())])
        confmat = result.get("confusion_matrix")
        figures = [
            Figure(
                save_figure(_ap_bars(names, per_class), report_dir / "per_class_ap.png"),
                "AP per class: AP@[.5:.95] (COCO's primary metric) and AP@.5; no bar: no objects of the class",
            )
        ]
        if curves:
            from zoo.detection.plots import plot_pr_curves

            figures.append(
                Figure(
                    save_figure(plot_pr_curves(curves, names, iou_threshold), report_dir / "pr_curves.png"),
                    f"Precision / recall per class at IoU >= {iou_threshold:g} (every detection, ranked by score; "
                    "AP in the legend, 101-point interpolation)",
                )
            )
        if confmat is not None:
            figures.append(
                Figure(
                    save_figure(
                        _confusion_figure(confmat, names, iou_threshold, score_threshold),
                        report_dir / "confusion_matrix.png",
                    ),
                    f"Confusion matrix with background (rows: true class, columns: predicted; detections scoring "
                    f">= {score_threshold:g}, matched at IoU >= {iou_threshold:g} whatever their class). Row "
                    "'background': detections of nothing (false positives); column 'background': missed objects",
                )
            )
        figures += self._grid_figures(names, score_threshold, report_dir)
        by_name = {f.path.name: f for f in figures}
        sections = [
            Section(
                "COCO metrics",
                text=(
                    "COCOeval (Lin et al. 2014) on the whole test set: AP averaged over IoU thresholds .50:.05:.95 "
                    "and 101 recall levels; AR = recall with at most 1/10/100 detections per image; small/medium/"
                    "large = object area < 32^2, < 96^2, >= 96^2 pixels. '-': no objects of that kind."
                ),
                tables=[Table(["metric", "IoU", "area", "max detections", "value"], coco_rows)],
            ),
            Section(
                "Per-class AP",
                text=f"Objects = non-crowd test objects; TP / FP: every detection at IoU >= {iou_threshold:g}.",
                tables=[
                    Table(
                        ["class", "objects", "AP", "AP@.5", "AR@100", f"TP@{iou_threshold:g}", f"FP@{iou_threshold:g}"],
                        class_rows,
                    )
                ],
                figures=[by_name["per_class_ap.png"]],
            ),
            Section("Precision / recall", figures=[f for n, f in by_name.items() if n == "pr_curves.png"]),
            Section("Confusion", figures=[f for n, f in by_name.items() if n == "confusion_matrix.png"]),
            Section("Detections", figures=[f for n, f in by_name.items() if n == "detections.png"]),
        ]
        sections = [s for s in sections if s.tables or s.figures]
        data = {
            "coco": {key: float(result[key]) for key, *_ in COCO_SUMMARY},
            "per_class": per_class,
            "iou_threshold": iou_threshold,
            "score_threshold": score_threshold,
            "confusion_matrix": confmat.tolist() if confmat is not None else None,
            "confusion_labels": ["background", *names],
            "grid_images": [k[0] for k in self.kept],
            "figures": [f.path.name for f in figures],
        }
        return FamilyReport(sections, data)

    def _grid_figures(self, names: list[str], score_threshold: float, report_dir: Path) -> list[Figure]:
        if not self.kept:
            return []
        fig = _detections_figure(self.kept, names, score_threshold)
        return [
            Figure(
                save_figure(fig, report_dir / "detections.png"),
                f"The first {len(self.kept)} test images: true boxes (green), detections scoring >= "
                f"{score_threshold:g} (red, class and score)",
            )
        ]


def _shown(value: Any) -> Any:
    """Table cell: COCO's -1 and missing values as '-'."""
    if value is None or (isinstance(value, float) and (math.isnan(value) or value == -1)):
        return "-"
    return value


def _ap_bars(names: list[str], per_class: dict[str, dict[str, Any]]) -> Any:
    import matplotlib.pyplot as plt

    x = np.arange(len(names))
    ap = [np.nan if per_class[n]["ap"] is None else per_class[n]["ap"] for n in names]
    ap50 = [np.nan if per_class[n]["ap_50"] is None else per_class[n]["ap_50"] for n in names]
    fig, ax = plt.subplots(figsize=(max(4.0, 0.5 * len(names) + 2), 3.5))
    ax.bar(x - 0.2, ap, width=0.4, label="AP@[.5:.95]")
    ax.bar(x + 0.2, ap50, width=0.4, label="AP@.5")
    for i, value in enumerate(ap):
        if np.isnan(value):
            ax.text(i, 0.02, "no objects", rotation=90, ha="center", va="bottom", fontsize=7, color="gray")
    ax.set_xticks(x, names, rotation=45 if len(names) > 10 else 0, ha="right" if len(names) > 10 else "center")
    ax.set_xlim(-0.6, len(names) - 0.4)
    ax.set_ylim(0, 1)
    ax.set_ylabel("average precision")
    ax.legend(ncol=2, loc="lower center", bbox_to_anchor=(0.5, 1.0), frameon=False)  # above the bars, never on them
    fig.tight_layout()
    return fig


def _confusion_figure(confmat: torch.Tensor, names: list[str], iou_threshold: float, score_threshold: float) -> Any:
    from zoo.core.plots import plot_confusion_matrix

    fig = plot_confusion_matrix(confmat, ["background", *names], normalize=True)
    fig.axes[0].set_title(
        f"Boxes at IoU >= {iou_threshold:g}, score >= {score_threshold:g} ({int(confmat.sum())} boxes)"
    )
    return fig


def _detections_figure(
    kept: list[tuple[str, torch.Tensor, dict[str, torch.Tensor], dict[str, torch.Tensor]]],
    names: list[str],
    score_threshold: float,
) -> Any:
    from zoo.detection.plots import draw_detections

    fig, axes = panel_grid(len(kept), 4, (3.2, 3.7))
    for ax, (name, image, target, pred) in zip(axes, kept, strict=False):
        ax.imshow(draw_detections(image, pred, names, score_threshold, target).permute(1, 2, 0).numpy())
        shown = int((pred["scores"] >= score_threshold).sum())
        ax.set_title(f"{name}\n{len(target['boxes'])} true, {shown} detected", fontsize=8)
    fig.tight_layout()
    return fig
