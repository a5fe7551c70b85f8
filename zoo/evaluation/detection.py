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
    shorten,
)

NO_GROUND_TRUTH = "—, no ground truth"  # table cell of a number COCO gives as -1: no objects to score against
TITLE_CHARS = 22  # characters of an image name in a grid panel's title (the full names are in the table below)


def _finite(value: Any) -> float | None:
    """A number for metrics.json: None for NaN and for COCO's -1 ("no objects of this kind")."""
    value = float(value)
    return None if math.isnan(value) or value == -1 else value


def _no_ground_truth(value: Any) -> bool:
    """COCO's -1: the class (or object size) has no ground-truth objects in the test set, so no AP exists. It is
    never 0 (an AP of 0 means objects were there and none was found)."""
    return value is not None and float(value) == -1


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
            tables = [self._grid_table(score_threshold)] if self.kept else []
            grid = Section("Detections", figures=figures, tables=tables)
            return FamilyReport([Section("COCO metrics", text=text), grid], {"figures": [f.path.name for f in figures]})

        from zoo.detection.metrics import COCO_SUMMARY

        coco_rows = [
            [what, iou, area, dets, _shown(metrics.get(f"test/{key}", result[key]), no_objects=NO_GROUND_TRUTH)]
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
            # COCO's -1 (or no objects counted): no AP exists; metrics.json says so instead of a number
            entry["ground_truth"] = not (_no_ground_truth(values.get("ap", -1)) or entry["objects"] == 0)
            per_class[name] = entry
            scores = ("ap", "ap_50", "ar_100")
            class_rows.append(
                [
                    name,
                    *(
                        NO_GROUND_TRUTH if key in scores and not entry["ground_truth"] else _shown(entry[key])
                        for key in ("objects", "ap", "ap_50", "ar_100", "tp", "fp")
                    ),
                ]
            )
        confmat = result.get("confusion_matrix")
        figures = [
            Figure(
                save_figure(_ap_bars(names, per_class), report_dir / "per_class_ap.png"),
                "AP per class: AP@[.5:.95] (COCO's primary metric) and AP@.5; a hatched grey bar: no objects of "
                "the class in the test set (no AP exists; COCO reports -1), '0': an AP of 0",
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
                    f"large = object area < 32^2, < 96^2, >= 96^2 pixels. '{NO_GROUND_TRUTH}': no objects of that "
                    "kind in the test set (COCO's -1; not an AP of 0)."
                ),
                tables=[Table(["metric", "IoU", "area", "max detections", "value"], coco_rows)],
            ),
            Section(
                "Per-class AP",
                text=(
                    f"Objects = non-crowd test objects; TP / FP: every detection at IoU >= {iou_threshold:g}. "
                    f"'{NO_GROUND_TRUTH}': the test set has no objects of the class, so it has no AP (its "
                    "detections are all false positives)."
                ),
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
            Section(
                "Detections",
                figures=[f for n, f in by_name.items() if n == "detections.png"],
                tables=[self._grid_table(score_threshold)] if self.kept else [],
            ),
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
        # the logged COCO numbers stay as logged (-1) in metrics.json; the report's table says what -1 means
        notes = {k: f"-1 ({NO_GROUND_TRUTH})" for k, v in metrics.items() if k.startswith("test/") and v == -1}
        return FamilyReport(sections, data, metric_notes=notes)

    def _grid_table(self, score_threshold: float) -> Table:
        """The panels of the detections grid by number, with the images' full names (the titles shorten them)."""
        rows = [
            [f"#{i}", name, len(target["boxes"]), int((pred["scores"] >= score_threshold).sum())]
            for i, (name, _, target, pred) in enumerate(self.kept, start=1)
        ]
        return Table(["panel", "image", "true boxes", f"detections >= {score_threshold:g}"], rows)

    def _grid_figures(self, names: list[str], score_threshold: float, report_dir: Path) -> list[Figure]:
        if not self.kept:
            return []
        fig = _detections_figure(self.kept, names, score_threshold)
        return [
            Figure(
                save_figure(fig, report_dir / "detections.png"),
                f"The first {len(self.kept)} test images: true boxes (green), detections scoring >= "
                f"{score_threshold:g} (red, class and score); panel numbers and full image names in the table",
            )
        ]


def _shown(value: Any, no_objects: str = "-") -> Any:
    """Table cell: COCO's -1 as ``no_objects``, missing values and NaN as '-'."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, (int, float)) and value == -1:
        return no_objects
    return value


def _ap_bars(names: list[str], per_class: dict[str, dict[str, Any]]) -> Any:
    """AP@[.5:.95] and AP@.5 bars of the classes with objects ('0' written on an AP of 0, 'n/a' where COCO gave
    none), a hatched grey bar labelled 'no objects' for each class without; the legend is made from these bars."""
    import matplotlib.pyplot as plt

    def value(entry: dict[str, Any], key: str) -> float:
        v = entry.get(key)
        return np.nan if v is None or v == -1 else float(v)

    # "ground_truth" as the writer sets it; else COCO's -1 (or no AP at all) means the class had no objects
    has_gt = np.array(
        [per_class[n].get("ground_truth", per_class[n].get("ap") not in (None, -1)) for n in names], dtype=bool
    )
    x = np.arange(len(names))
    ap = np.array([value(per_class[n], "ap") for n in names])
    ap50 = np.array([value(per_class[n], "ap_50") for n in names])
    fig, ax = plt.subplots(figsize=(max(4.0, 0.5 * len(names) + 2), 3.5))
    handles = []
    if has_gt.any():
        handles.append(ax.bar(x[has_gt] - 0.2, ap[has_gt], width=0.4, color="C0", label="AP@[.5:.95]"))
        handles.append(ax.bar(x[has_gt] + 0.2, ap50[has_gt], width=0.4, color="C1", label="AP@.5"))
    if not has_gt.all():
        handles.append(
            ax.bar(x[~has_gt], 1.0, width=0.8, color="0.92", edgecolor="0.55", hatch="//", linewidth=0.5,
                   label="no objects in the test set (no AP)")
        )  # fmt: skip
        for i in x[~has_gt]:
            ax.text(i, 0.5, "no objects", rotation=90, ha="center", va="center", fontsize=7, color="0.3",
                    bbox={"facecolor": "white", "edgecolor": "none", "pad": 1})  # fmt: skip
    for i in x[has_gt]:
        for offset, v in ((-0.2, ap[i]), (0.2, ap50[i])):
            if np.isnan(v) or v == 0:
                ax.text(i + offset, 0.01, "n/a" if np.isnan(v) else "0", ha="center", va="bottom", fontsize=6)
    ax.set_xticks(x, names, rotation=45 if len(names) > 10 else 0, ha="right" if len(names) > 10 else "center")
    ax.set_xlim(-0.6, len(names) - 0.4)
    ax.set_ylim(0, 1)
    ax.set_ylabel("average precision")
    ax.legend(  # from the drawn bars; above them, never on them
        handles=handles, labels=[h.get_label() for h in handles], ncol=len(handles), loc="lower center",
        bbox_to_anchor=(0.5, 1.0), frameon=False, fontsize=8,
    )  # fmt: skip
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
    for i, (ax, (name, image, target, pred)) in enumerate(zip(axes, kept, strict=False), start=1):
        ax.imshow(draw_detections(image, pred, names, score_threshold, target).permute(1, 2, 0).numpy())
        shown = int((pred["scores"] >= score_threshold).sum())
        # image names can be 64-character ids: shortened here (never wider than the panel), whole in the table
        ax.set_title(f"#{i} {shorten(name, TITLE_CHARS)}\n{len(target['boxes'])} true, {shown} detected", fontsize=8)
    fig.tight_layout()
    return fig
