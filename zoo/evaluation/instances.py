"""The instance segmentation report, for both instance routes: Mask R-CNN (:class:`zoo.detection.InstanceDetector`)
and the U-Net with post-processing (:class:`zoo.segmentation.InstanceSegmenter`).

What it adds to the report (:func:`instance_report`, one function for both modules):

* the **2018 Data Science Bowl score** (Caicedo et al. 2019, Nature Methods 16: per image the mean over the IoU
  thresholds .50:.05:.95 of TP / (TP + FP + FN), averaged over images), F1 pooled over images, and COCO **mask** AP
  (COCOeval ``segm``, Lin et al. 2014) in one table;
* the score and F1 against the IoU threshold (``dsb_score_vs_iou.png`` and a table of TP / FP / FN per threshold);
* the counts of merged and split objects (:class:`zoo.core.instance_metrics.InstanceMatch`), the errors an instance
  method makes on touching nuclei that a pixel score does not show;
* a per-image table (worst first; every image also in ``instances_per_image.csv``);
* the best and worst images at full resolution with the outlines of the true (green) and predicted (yellow)
  instances (``best_<k>.png``, ``worst_<k>.png``; :func:`zoo.core.instances.draw_outlines`).

Each module keeps its family's report as well: the detector's box report (:mod:`zoo.evaluation.detection`; its
sections titled "Boxes: ..."), the segmenter's pixel report (:mod:`zoo.evaluation.segmentation`, "Pixels: ...").

Nothing is recomputed: the numbers are the ones the module computed at the end of the test and kept in
``module.last_test_result`` (the same the module logged as ``test/dsb_score``, ``test/mask_map``, ...). The two
modules keep them under different names (the detector under ``["instances"]`` with ``mask`` and ``examples`` as a
list, the segmenter at the top with ``mask_coco`` and ``examples`` as ``best`` / ``worst``);
:func:`instance_result` reads either. ``metrics.json["report"]`` holds ``dsb_score``, ``f1_50``, ``mask_map``,
``mask_map_50``, ``merged`` and ``split`` at its top level for benchmarks (None where a number does not exist: no
test image had objects, COCO's -1), everything else under ``"instances"``.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from zoo.evaluation.detection import DetectionReport
from zoo.evaluation.report import (
    FamilyReport,
    Figure,
    Section,
    Table,
    attached_datamodule,
    register_report_writer,
    save_figure,
)
from zoo.evaluation.segmentation import SegmentationReport

EXAMPLES = 3  # best and worst images drawn
TABLE_ROWS = 200  # per-image rows in report.md (the CSV has them all): a COCO-sized test set stays readable
NO_OBJECTS = "—, no objects"  # an image with no true and no predicted object: the DSB score is 0 / 0
NO_GROUND_TRUTH = "—, no ground truth"  # COCO's -1
BENCHMARK_KEYS = ("dsb_score", "f1_50", "mask_map", "mask_map_50", "merged", "split")
COUNT_KEYS = ("true_objects", "predicted_objects", "merged", "split")  # the per-image table's count columns


@dataclass
class InstanceResult:
    """The instance part of a test, in one shape whichever module computed it (:func:`instance_result`).

    ``per_image``: ``{name, path, dsb_score, true_objects, predicted_objects, merged, split}``; ``examples``: the
    same keys where known plus ``image`` ``(C, H, W)`` float in [0, 1], ``labels`` and ``truth`` ``(H, W)`` label
    images."""

    dsb: dict[str, Any]
    mask: dict[str, float]
    per_image: list[dict[str, Any]] = field(default_factory=list)
    examples: list[dict[str, Any]] = field(default_factory=list)


def _score(value: Any) -> float:
    return float("nan") if value is None else float(value)


def _row(record: dict[str, Any]) -> dict[str, Any]:
    """A per-image record with the detector's or the segmenter's key names, in the names used here."""
    path = record.get("path")
    # the detector's name key is "image"; the segmenter's "image" is the picture itself
    name = record.get("name", record["image"] if isinstance(record.get("image"), str) else None)
    return {
        "name": str(name if name is not None else Path(str(path)).name),
        "path": None if path is None else str(path),
        "dsb_score": _score(record.get("dsb_score")),
        "true_objects": record.get("true_objects"),
        "predicted_objects": record.get("predicted_objects", record.get("pred_objects")),
        "merged": record.get("merged"),
        "split": record.get("split"),
    }


def _example(record: dict[str, Any]) -> dict[str, Any]:
    """An example image with its label images; the image as ``(C, H, W)`` float in [0, 1] (the detector keeps it so,
    the segmenter as ``(H, W, C)`` uint8)."""
    if "pixels" in record:
        image = np.asarray(record["pixels"], np.float32)
    else:
        image = np.asarray(record["image"])
        image = image.astype(np.float32) / 255.0 if image.dtype == np.uint8 else image.astype(np.float32)
        image = image.transpose(2, 0, 1) if image.ndim == 3 else image[None]
    labels = record["labels"] if "labels" in record else record["pred"]
    truth = record["truth"] if "truth" in record else record["true"]
    return {**_row(record), "image": image, "labels": np.asarray(labels), "truth": np.asarray(truth)}


def instance_result(result: dict[str, Any] | None) -> InstanceResult | None:
    """The instance part of a module's ``last_test_result`` (an :class:`InstanceDetector`'s, holding it under
    ``"instances"``, or an :class:`InstanceSegmenter`'s, holding it at the top), or None when it holds none."""
    if not result:
        return None
    part = result.get("instances", result)
    if not isinstance(part, dict) or "dsb" not in part:
        return None
    examples = part.get("examples") or []
    if isinstance(examples, dict):  # the segmenter's {"best": [...], "worst": [...]}, which may share images
        examples = [*examples.get("best", []), *examples.get("worst", [])]
    unique: dict[tuple[str, Any], dict[str, Any]] = {}
    for record in examples:
        example = _example(record)
        unique.setdefault((example["name"], example["path"]), example)
    rows = [_row(r) for r in part.get("per_image") or []]
    by_name = {r["name"]: r for r in rows}
    for example in unique.values():  # the segmenter's examples carry no counts: its per-image rows do
        known = by_name.get(example["name"], {})
        example.update({k: known.get(k) for k, v in example.items() if v is None and k in known})
    return InstanceResult(
        dsb=dict(part["dsb"]),
        mask={k: float(v) for k, v in (part.get("mask") or part.get("mask_coco") or {}).items()},
        per_image=rows,
        examples=list(unique.values()),
    )


def best_and_worst(examples: list[dict[str, Any]], count: int = EXAMPLES) -> tuple[list[dict], list[dict]]:
    """The ``count`` highest and lowest scoring examples (best first, worst first), never the same image in both:
    with fewer than ``2 * count`` scored images the better half are the best. Images without objects (no score)
    are neither."""
    ranked = sorted((e for e in examples if not math.isnan(e["dsb_score"])), key=lambda e: -e["dsb_score"])
    best = ranked[: min(count, (len(ranked) + 1) // 2)]
    worst = list(reversed(ranked[len(best) :]))[:count]
    return best, worst


def _number(value: Any) -> float | int | None:
    """A number for metrics.json: None for NaN and for COCO's -1 (no objects to score against)."""
    if value is None:
        return None
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return int(value)
    value = float(value)
    return None if math.isnan(value) or value == -1 else value


def _clean(value: Any) -> Any:
    """Lists and dicts of numbers with NaN as None (JSON has no NaN; the report's metrics.json refuses it)."""
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return None if math.isnan(value) else float(value)
    if isinstance(value, np.integer):
        return int(value)
    return value


def _shown(value: Any, missing: str = "-") -> Any:
    """Table cell: NaN / None as ``missing``, COCO's -1 as no ground truth."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return missing
    if isinstance(value, float) and value == -1:
        return NO_GROUND_TRUTH
    return value


def _score_plot(dsb: dict[str, Any]) -> Any:
    """The DSB score (mean over images of TP / (TP + FP + FN)) and the pooled F1 at each IoU threshold, with the
    overall score (their mean) as a dashed line."""
    import matplotlib.pyplot as plt

    thresholds = np.asarray(dsb["thresholds"], float)
    fig, ax = plt.subplots(figsize=(5.5, 4.6))
    ax.plot(thresholds, dsb["score_per_threshold"], "o-", color="C0", label="TP / (TP + FP + FN), mean over images")
    ax.plot(thresholds, dsb["f1"], "s--", color="C1", label="F1, pooled over images")
    ax.axhline(float(dsb["score"]), color="C0", linestyle=":", linewidth=1,
               label=f"DSB score {float(dsb['score']):.3f} (mean over thresholds)")  # fmt: skip
    ax.set_xlabel("IoU threshold (a match needs IoU above it)")
    ax.set_ylabel("score")
    ax.set_xlim(thresholds.min() - 0.02, thresholds.max() + 0.02)
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    # below the axes: where the curves run depends on the model, so no corner inside is always free
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.18), ncol=1, frameon=False)
    objects = f"{dsb['true_objects']} true and {dsb['pred_objects']} predicted objects"
    ax.set_title(f"{dsb['images']} images scored, {objects}", fontsize=9)
    fig.tight_layout()
    return fig


def _outline_png(example: dict[str, Any], path: Path) -> Path:
    """The example at full resolution with its outlines (a resampled matplotlib panel would blur the one-pixel
    outlines of small nuclei away)."""
    from PIL import Image

    from zoo.core.instances import draw_outlines

    image = example["image"]
    if image.shape[0] not in (1, 3):  # draw_outlines shows one channel or three
        image = image[:3] if image.shape[0] > 3 else image[:1]
    Image.fromarray(draw_outlines(image, example["labels"], example["truth"])).save(path)
    return path


def _evaluated_on(datamodule: Any, names: list[str]) -> tuple[str, str]:
    """``(short, long)``: the test loop's images in words when they are the validation images (a datamodule with
    ``val_names`` whose test split is its validation split, as ``NucleiInstanceDataModule``); else ``("", "")``."""
    stated = getattr(datamodule, "test_split_description", None)
    if isinstance(stated, str) and stated.strip():
        return "not a test split", stated.strip()
    try:
        val = [str(n) for n in getattr(datamodule, "val_names", None) or []]
    except RuntimeError:  # not set up
        return "", ""
    seen = {Path(n).stem for n in names}
    if not val or not names or not seen <= set(val):
        return "", ""
    chosen = ", ".join(f"{k}={getattr(datamodule, k)}" for k in ("val_size", "split_seed") if hasattr(datamodule, k))
    count = f"all {len(val)}" if len(seen) == len(val) else f"{len(seen)} of the {len(val)}"
    return "validation images, not a test split", (
        f"the validation images, not a test set: {type(datamodule).__name__}'s test split is its validation split "
        f"(it has no labelled test split). Images evaluated: {count} validation images"
        + (f", chosen by {chosen}" if chosen else "")
    )


def instance_report(
    instances: InstanceResult | None, report_dir: Path, module_name: str = "the module"
) -> FamilyReport:
    """The instance sections, figures and data of the report (see the module docstring), for either module."""
    import matplotlib

    matplotlib.use("Agg")
    from zoo.core.coco import COCO_MAX_DETECTIONS, coco_summary

    if instances is None:
        text = (f"{module_name} kept no instance result (``last_test_result`` holds no DSB score): no test batch "
                "was scored.")  # fmt: skip
        return FamilyReport([Section("Instances", text=text)], {k: None for k in BENCHMARK_KEYS})
    dsb, mask = instances.dsb, instances.mask
    cap = int(mask.get("max_detections", COCO_MAX_DETECTIONS))
    mask_rows = coco_summary(cap)
    summary_rows = [
        ["DSB2018 score (mean over images of the mean over IoU .50:.05:.95 of TP / (TP + FP + FN))",
         _shown(float(dsb["score"]) if dsb.get("images") else None, NO_OBJECTS)],
        ["F1 at IoU 0.5 (pooled over images)", _shown(float(dsb["f1_50"]))],
        ["average F1 over the IoU thresholds", _shown(float(dsb["average_f1"]))],
        *[[f"mask {what}@{iou} (area {area}, at most {dets} detection{'s' if dets != 1 else ''})",
           _shown(mask.get(key))] for key, what, iou, area, dets in mask_rows if key in mask],
        ["images scored", dsb["images"]],
        ["images without true or predicted objects (not scored)", dsb["empty_images"]],
        ["true objects", dsb["true_objects"]],
        ["predicted objects", dsb["pred_objects"]],
    ]  # fmt: skip
    threshold_rows = [
        [f"{t:.2f}", _shown(s), tp, fp, fn, _shown(f1)]
        for t, s, tp, fp, fn, f1 in zip(dsb["thresholds"], dsb["score_per_threshold"], dsb["tp"], dsb["fp"],
                                        dsb["fn"], dsb["f1"], strict=True)
    ]  # fmt: skip
    error_rows = [
        ["merged predictions (each covers more than half of two or more true objects)", dsb["merged"]],
        ["true objects inside those merges", dsb["merged_objects"]],
        ["split true objects (two or more predictions each lie more than half inside one)", dsb["split"]],
        ["predictions that are pieces of those splits", dsb["split_pieces"]],
    ]
    # worst first (what to look at); images without objects have no score and come last
    rows = sorted(instances.per_image, key=lambda r: (math.isnan(r["dsb_score"]), r["dsb_score"]))
    headers = ["image", "DSB score", "true objects", "predicted objects", "merged", "split"]
    cells = [[r["name"], _shown(r["dsb_score"], NO_OBJECTS), *(_shown(r[k]) for k in COUNT_KEYS)] for r in rows]
    with (report_dir / "instances_per_image.csv").open("w", newline="") as handle:
        csv.writer(handle).writerows(
            [[*headers, "path"], *([*row[:1], _csv(r["dsb_score"]), *row[2:], r["path"] or ""]
                                   for row, r in zip(cells, rows, strict=True))]
        )  # fmt: skip
    shown_rows = cells[:TABLE_ROWS]
    figures = [
        Figure(
            save_figure(_score_plot(dsb), report_dir / "dsb_score_vs_iou.png"),
            "The DSB score against the IoU threshold (mean over images of TP / (TP + FP + FN)) and F1 pooled over "
            "images; the DSB score is the mean of the first curve",
        )
    ]
    best, worst = best_and_worst(instances.examples)
    example_figures = []
    for kind, chosen in (("best", best), ("worst", worst)):
        for k, example in enumerate(chosen, start=1):
            counts = f"{example['true_objects']} true, {example['predicted_objects']} predicted objects"
            caption = (f"{kind.capitalize()} #{k}: {example['name']}, DSB score {example['dsb_score']:.3f} ({counts}, "
                       f"{example['merged']} merged, {example['split']} split). Outlines: true green, predicted "
                       "yellow (drawn over the green: where they agree only yellow shows)")  # fmt: skip
            example_figures.append(Figure(_outline_png(example, report_dir / f"{kind}_{k}.png"), caption))
    figures += example_figures
    table_note = f" The {len(shown_rows)} worst of {len(rows)} shown here." if len(rows) > len(shown_rows) else ""
    sections = [
        Section(
            "Instance metrics",
            text=(
                "The 2018 Data Science Bowl score (Caicedo et al. 2019): a predicted object is a true positive at IoU "
                "threshold t when its IoU with a true object is above t (one-to-one above 0.5); per image the mean "
                "over t of TP / (TP + FP + FN), then the mean over the images with objects. Mask AP / AR: COCOeval "
                f"segm (Lin et al. 2014) on the same instances, at most {cap} per image (on images with more, only "
                f"the {cap} highest-scoring count{'; COCO defines 100' if cap != COCO_MAX_DETECTIONS else ''}). "
                f"'{NO_GROUND_TRUTH}': COCO's -1, no objects of that size."
            ),
            tables=[Table(["metric", "value"], summary_rows)],
        ),
        Section(
            "Score against the IoU threshold",
            tables=[Table(["IoU threshold", "DSB score at t", "TP", "FP", "FN", "F1"], threshold_rows)],
            figures=figures[:1],
        ),
        Section(
            "Merged and split objects",
            text="Over the whole test set: the errors of touching objects (InstanceMatch's definitions).",
            tables=[Table(["", "count"], error_rows)],
        ),
        Section(
            "Per image (instances)",
            text=f"Sorted from the worst DSB score up; also in instances_per_image.csv.{table_note}",
            tables=[Table(headers, shown_rows)],
        ),
        Section("Best and worst images", figures=example_figures),
    ]
    sections = [s for s in sections if s.tables or s.figures]
    top = {
        "dsb_score": _number(dsb["score"]) if dsb.get("images") else None,
        "f1_50": _number(dsb["f1_50"]),
        "mask_map": _number(mask.get("map")),
        "mask_map_50": _number(mask.get("map_50")),
        "merged": int(dsb["merged"]),
        "split": int(dsb["split"]),
    }
    data = {
        **top,
        "instances": _clean({
            "dsb": dsb, "mask": mask, "per_image": rows, "best": [e["name"] for e in best],
            "worst": [e["name"] for e in worst],
        }),
        "figures": [f.path.name for f in figures],
    }  # fmt: skip
    return FamilyReport(sections, data)


def _csv(value: float) -> str:
    return "" if math.isnan(value) else f"{value:.6f}"


def _combine(instances: FamilyReport, family: FamilyReport, prefix: str) -> FamilyReport:
    """The instance report first, then the family's own sections titled ``prefix: ...``; the data merged, the
    figures listed together."""
    for section in family.sections:
        section.title = f"{prefix}: {section.title}"
    # _clean: the pixel report's per-image IoU is NaN for a class in neither map (an image without objects), and
    # metrics.json takes no NaN
    data = _clean({**family.data, **instances.data})
    data["figures"] = [*family.data.get("figures", []), *instances.data.get("figures", [])]
    return FamilyReport(
        [*instances.sections, *family.sections],
        data,
        evaluated_on=instances.evaluated_on or family.evaluated_on,
        evaluated_split=instances.evaluated_split or family.evaluated_split,
        metric_notes={**family.metric_notes, **instances.metric_notes},
    )


@register_report_writer("zoo.detection.InstanceDetector")  # by import path, like the detector's
class InstanceDetectionReport(DetectionReport):
    """Mask R-CNN: the instance report, then the detector's box report."""

    def collect(self, module: Any, batch: dict[str, Any], outputs: Any) -> None:
        # the grid draws boxes only: without the masks ((N, H, W) per image, up to 300 nuclei) memory stays small
        targets = [{k: v for k, v in t.items() if k != "masks"} for t in batch["targets"]]
        if isinstance(outputs, (list, tuple)):
            outputs = [{k: v for k, v in p.items() if k != "masks"} for p in outputs]
        super().collect(module, {**batch, "targets": targets}, outputs)
        for *_, pred in self.kept:
            pred.pop("masks", None)  # a module that returned nothing was run here, masks and all

    def write(self, module: Any, metrics: dict[str, float], report_dir: Path) -> FamilyReport:
        boxes = super().write(module, metrics, report_dir)
        instances = instance_result(getattr(module, "last_test_result", None))
        part = instance_report(instances, report_dir, type(module).__name__)
        if instances is not None:
            part.evaluated_split, part.evaluated_on = _evaluated_on(
                attached_datamodule(module), [r["name"] for r in instances.per_image]
            )
        return _combine(part, boxes, "Boxes")


@register_report_writer("zoo.segmentation.InstanceSegmenter")
class InstanceSegmentationReport(SegmentationReport):
    """The U-Net route: the instance report, then the segmenter's pixel report (its semantic maps)."""

    def write(self, module: Any, metrics: dict[str, float], report_dir: Path) -> FamilyReport:
        pixels = super().write(module, metrics, report_dir)
        part = instance_report(
            instance_result(getattr(module, "last_test_result", None)), report_dir, type(module).__name__
        )
        return _combine(part, pixels, "Pixels")


__all__ = [
    "InstanceDetectionReport",
    "InstanceResult",
    "InstanceSegmentationReport",
    "best_and_worst",
    "instance_report",
    "instance_result",
]
