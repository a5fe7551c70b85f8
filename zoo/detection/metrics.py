"""Detection metrics: IoU, the TP/FP/FN rule, precision/recall curves, a confusion matrix with a
background class, and COCO's mAP (Lin et al. 2014, "Microsoft COCO", sec. 5 and the cocodataset.org
detection-eval page).

Formats (torchmetrics' and torchvision's): one dict per image; predictions hold ``boxes`` (``(N, 4)``
``x1, y1, x2, y2`` pixels), ``scores`` and ``labels``; targets hold ``boxes``, ``labels`` and optionally
``iscrowd`` (crowd regions: a detection inside one is neither a true nor a false positive) and
``area`` (COCO's object area, e.g. the mask's pixel count; default: the box area), which decides
the small/medium/large ranges.

What is written here and what is used:

- IoU is ``torchvision.ops.box_iou``.
- :func:`match_detections` is the lecture's rule for one IoU threshold, which is COCO's
  ``evaluateImg`` matching: detections in decreasing score; each takes the unmatched ground-truth
  box of its class with the highest IoU if that IoU >= threshold (true positive), else it is a
  false positive, unless it lies in a crowd region of its class (intersection / detection area >=
  threshold: ignored). Ground-truth boxes left unmatched are false negatives. Hand-written because
  torchvision/torchmetrics expose no per-detection verdicts.
- :func:`coco_map` is COCOeval (``faster-coco-eval``'s C++ implementation by default, or ``pycocotools``), fed
  directly through :mod:`zoo.core.coco` (shared with the instance masks' metrics); :class:`COCOMetrics` is a
  torchmetrics ``Metric`` that gathers predictions and targets across processes (DDP) and calls it, so the
  numbers do not depend on the number of devices.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torchmetrics import Metric
from torchvision.ops import box_area, box_iou

from zoo.core.coco import (  # noqa: F401  (COCO_SUMMARY, COCO_STAT_NAMES, Backend: re-exported for the tools)
    COCO_MAX_DETECTIONS,
    COCO_STAT_NAMES,
    COCO_SUMMARY,
    Backend,
    canonical_image_order,
    gather_per_image_lists,
    run_cocoeval,
    summarize_cocoeval,
    warn_if_capped,
)

# The per-image list states of COCOMetrics (gathered whole across processes).
STATES = ("pred_boxes", "pred_scores", "pred_labels", "gt_boxes", "gt_labels", "gt_crowd", "gt_area")


def class_name(label: int, class_names: Sequence[str] | None) -> str:
    """The name of the 1-based object label ``label`` (the label itself outside ``class_names``)."""
    return class_names[label - 1] if class_names and 1 <= label <= len(class_names) else str(label)


def crowd_iou(pred_boxes: Tensor, crowd_boxes: Tensor) -> Tensor:
    """COCO's overlap with a crowd region: intersection / area of the *detection* (``(P, C)``)."""
    lt = torch.max(pred_boxes[:, None, :2], crowd_boxes[None, :, :2])
    rb = torch.min(pred_boxes[:, None, 2:], crowd_boxes[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(dim=2)
    return inter / box_area(pred_boxes)[:, None].clamp(min=1e-12)


@dataclass
class Matches:
    """Verdicts for one image's detections (in the given order) and ground-truth boxes.

    ``tp``/``fp``/``ignored`` are per detection; ``matched_gt`` is the index of the ground-truth box
    a true positive matched (-1 otherwise) and ``iou`` that IoU; ``fn`` is per ground-truth box
    (crowd regions are never false negatives).
    """

    tp: Tensor
    fp: Tensor
    ignored: Tensor
    matched_gt: Tensor
    iou: Tensor
    fn: Tensor

    @property
    def num_tp(self) -> int:
        return int(self.tp.sum())

    @property
    def num_fp(self) -> int:
        return int(self.fp.sum())

    @property
    def num_fn(self) -> int:
        return int(self.fn.sum())


def match_detections(
    pred_boxes: Tensor,
    pred_scores: Tensor,
    pred_labels: Tensor,
    gt_boxes: Tensor,
    gt_labels: Tensor,
    iou_threshold: float = 0.5,
    gt_crowd: Tensor | None = None,
    class_aware: bool = True,
) -> Matches:
    """True/false positives and false negatives of one image at one IoU threshold (see the module
    docstring); ``class_aware=False`` matches boxes whatever their classes (what the confusion
    matrix needs). Ties in score keep the given order (a stable sort, as COCOeval's mergesort)."""
    num_pred, num_gt = len(pred_boxes), len(gt_boxes)
    crowd = torch.zeros(num_gt, dtype=torch.bool) if gt_crowd is None else gt_crowd.bool().cpu()
    pred_boxes, gt_boxes = pred_boxes.float().cpu(), gt_boxes.float().cpu()
    pred_labels, gt_labels = pred_labels.cpu(), gt_labels.cpu()
    tp = torch.zeros(num_pred, dtype=torch.bool)
    ignored = torch.zeros(num_pred, dtype=torch.bool)
    matched_gt = torch.full((num_pred,), -1, dtype=torch.long)
    best_iou = torch.zeros(num_pred)
    taken = torch.zeros(num_gt, dtype=torch.bool)
    if num_pred and num_gt:
        ious = box_iou(pred_boxes, gt_boxes)
        ious[:, crowd] = crowd_iou(pred_boxes, gt_boxes[crowd]) if crowd.any() else ious[:, crowd]
        same = pred_labels[:, None] == gt_labels[None, :] if class_aware else torch.ones_like(ious, dtype=torch.bool)
        order = torch.sort(pred_scores.cpu(), descending=True, stable=True).indices
        for d in order.tolist():
            # a regular box first (each matched once), a crowd region only when no regular box fits
            candidates = same[d] & ~crowd & ~taken & (ious[d] >= iou_threshold)
            if candidates.any():
                g = int(torch.where(candidates, ious[d], torch.full_like(ious[d], -1.0)).argmax())
                tp[d], matched_gt[d], best_iou[d] = True, g, ious[d, g]
                taken[g] = True
            elif (same[d] & crowd & (ious[d] >= iou_threshold)).any():
                ignored[d] = True
    return Matches(tp=tp, fp=~tp & ~ignored, ignored=ignored, matched_gt=matched_gt, iou=best_iou, fn=~taken & ~crowd)


def _crowd(target: dict[str, Tensor]) -> Tensor:
    crowd = target.get("iscrowd")
    return torch.zeros(len(target["boxes"]), dtype=torch.bool) if crowd is None else crowd.bool().cpu()


@dataclass
class PRCurve:
    """One class's precision/recall curve at one IoU threshold: a point per detection, in decreasing
    score; ``ap`` is its area with COCO's 101-point interpolated precision."""

    precision: Tensor
    recall: Tensor
    scores: Tensor
    num_gt: int
    num_tp: int
    num_fp: int

    @property
    def ap(self) -> float:
        if self.num_gt == 0:
            return float("nan")
        return interpolated_ap(self.precision, self.recall)


def interpolated_ap(precision: Tensor, recall: Tensor, points: int = 101) -> float:
    """Average of the precision envelope (max precision at recall >= r) at ``points`` recall levels
    0, 0.01, ..., 1 (COCO's interpolation; Everingham et al. 2010 used 11 points)."""
    # reshape: torchmetrics squeezes one-element results of ``compute`` to 0-d tensors
    precision, recall = precision.reshape(-1), recall.reshape(-1)
    if len(precision) == 0:
        return 0.0
    envelope = torch.flip(torch.cummax(torch.flip(precision.double(), [0]), 0).values, [0])
    levels = torch.linspace(0, 1, points, dtype=torch.float64)
    idx = torch.searchsorted(recall.double().contiguous(), levels, right=False)
    values = torch.where(idx < len(envelope), envelope[idx.clamp(max=len(envelope) - 1)], torch.zeros(()))
    return float(values.mean())


def precision_recall_curves(
    preds: list[dict[str, Tensor]],
    targets: list[dict[str, Tensor]],
    labels: list[int] | None = None,
    iou_threshold: float = 0.5,
) -> dict[int, PRCurve]:
    """Per-class precision/recall curves over a data set (the lecture's definition: precision =
    TP / (TP + FP), recall = TP / number of non-crowd objects, detections ranked by score across
    all images). ``labels``: classes to report (default: every label seen)."""
    flags: dict[int, list[tuple[Tensor, Tensor]]] = {}
    num_gt: dict[int, int] = {}
    for pred, target in zip(preds, targets, strict=True):
        crowd = _crowd(target)
        for label in target["labels"][~crowd].tolist():
            num_gt[label] = num_gt.get(label, 0) + 1
        m = match_detections(
            pred["boxes"], pred["scores"], pred["labels"], target["boxes"], target["labels"], iou_threshold, crowd
        )
        keep = ~m.ignored
        for label in pred["labels"][keep].unique().tolist():
            sel = keep & (pred["labels"].cpu() == label)
            flags.setdefault(label, []).append((pred["scores"].cpu()[sel].float(), m.tp[sel]))
    wanted = sorted(set(num_gt) | set(flags)) if labels is None else list(labels)
    curves = {}
    for label in wanted:
        parts = flags.get(label, [])
        scores = torch.cat([s for s, _ in parts]) if parts else torch.zeros(0)
        tp = torch.cat([t for _, t in parts]) if parts else torch.zeros(0, dtype=torch.bool)
        order = torch.sort(scores, descending=True, stable=True).indices
        scores, tp = scores[order], tp[order]
        ctp, cfp = tp.cumsum(0).double(), (~tp).cumsum(0).double()
        n = num_gt.get(label, 0)
        curves[label] = PRCurve(
            precision=ctp / (ctp + cfp).clamp(min=1),
            recall=ctp / max(n, 1),
            scores=scores,
            num_gt=n,
            num_tp=int(tp.sum()),
            num_fp=int((~tp).sum()),
        )
    return curves


def detection_confusion_matrix(
    preds: list[dict[str, Tensor]],
    targets: list[dict[str, Tensor]],
    num_classes: int,
    iou_threshold: float = 0.5,
    score_threshold: float = 0.5,
) -> Tensor:
    """``(num_classes + 1, num_classes + 1)`` counts, rows the true class, columns the predicted one;
    index 0 is the background: row 0 counts detections on no object (false positives), column 0
    objects no detection found (false negatives). Detections with ``score >= score_threshold`` are
    matched to objects of any class by IoU >= ``iou_threshold`` (highest score first), so a
    misclassified but well-placed box lands off the diagonal; detections in crowd regions and
    crowd regions themselves are not counted. Labels are 1..num_classes."""
    confmat = torch.zeros(num_classes + 1, num_classes + 1, dtype=torch.long)
    for pred, target in zip(preds, targets, strict=True):
        keep = pred["scores"].cpu() >= score_threshold
        boxes, scores, labels = pred["boxes"].cpu()[keep], pred["scores"].cpu()[keep], pred["labels"].cpu()[keep]
        crowd = _crowd(target)
        gt_labels = target["labels"].cpu()
        m = match_detections(boxes, scores, labels, target["boxes"], gt_labels, iou_threshold, crowd, class_aware=False)
        for d in torch.nonzero(m.tp).flatten().tolist():
            confmat[gt_labels[m.matched_gt[d]], labels[d]] += 1
        for d in torch.nonzero(m.fp).flatten().tolist():
            confmat[0, labels[d]] += 1
        for g in torch.nonzero(m.fn).flatten().tolist():
            confmat[gt_labels[g], 0] += 1
    return confmat


# ------------------------------------------------------------------------------------------------
# COCO mAP
# ------------------------------------------------------------------------------------------------


def to_coco_dicts(
    preds: list[dict[str, Tensor]],
    targets: list[dict[str, Tensor]],
    category_ids: list[int] | None = None,
    image_ids: list[int] | None = None,
) -> tuple[dict[str, Any], np.ndarray]:
    """The ground truth as a COCO dataset dict and the detections as COCO's ``N x 7`` result array
    ``[image_id, x, y, w, h, score, category_id]``. Labels become COCO ids when ``category_ids`` is given
    (label k back to COCO's id ``category_ids[k - 1]``), else stay as they are."""
    if len(preds) != len(targets):
        raise ValueError(f"{len(preds)} prediction dicts but {len(targets)} target dicts: one of each per image")
    ids = list(range(1, len(targets) + 1)) if image_ids is None else [int(i) for i in image_ids]

    def cat(labels: Tensor) -> np.ndarray:
        labels = labels.cpu().numpy().astype(np.int64)
        return np.asarray([0, *category_ids], dtype=np.int64)[labels] if category_ids is not None else labels

    annotations, categories = [], set()
    for image_id, target in zip(ids, targets, strict=True):
        boxes = target["boxes"].detach().cpu().double().numpy().reshape(-1, 4)
        xywh = np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1)
        area = target.get("area")
        areas = area.detach().cpu().double().numpy() if area is not None else xywh[:, 2] * xywh[:, 3]
        crowd = _crowd(target).numpy()
        for box, a, c, label in zip(
            xywh.tolist(), areas.tolist(), crowd.tolist(), cat(target["labels"]).tolist(), strict=True
        ):
            annotations.append(
                {"id": len(annotations) + 1, "image_id": image_id, "category_id": int(label), "bbox": box,
                 "area": float(a), "iscrowd": int(c)}
            )  # fmt: skip
            categories.add(int(label))
    rows = []
    for image_id, pred in zip(ids, preds, strict=True):
        boxes = pred["boxes"].detach().cpu().double().numpy().reshape(-1, 4)
        if not len(boxes):
            continue
        labels = cat(pred["labels"])
        categories.update(labels.tolist())
        rows.append(
            np.column_stack([
                np.full(len(boxes), image_id, dtype=np.float64), boxes[:, :2], boxes[:, 2:] - boxes[:, :2],
                pred["scores"].detach().cpu().double().numpy(), labels.astype(np.float64),
            ])
        )  # fmt: skip
    results = np.concatenate(rows) if rows else np.zeros((0, 7))
    gt = {
        "images": [{"id": i} for i in ids],
        "annotations": annotations,
        "categories": [{"id": c} for c in sorted(categories)],
    }
    return gt, results


def coco_map(
    preds: list[dict[str, Tensor]],
    targets: list[dict[str, Tensor]],
    backend: Backend = "faster_coco_eval",
    category_ids: list[int] | None = None,
    image_ids: list[int] | None = None,
) -> dict[str, Any]:
    """COCO box mAP (Lin et al. 2014; cocodataset.org/#detection-eval): ``map`` (AP@[.5:.95]),
    ``map_50``, ``map_75``, ``map_small/medium/large``, ``mar_1/10/100``, ``mar_small/medium/large``,
    and ``per_class`` {category: {ap, ap_50, ar_100}}, computed by COCOeval on exactly these inputs.

    ``category_ids`` maps labels to COCO category ids (label k -> ``category_ids[k - 1]``; per-class keys are
    then COCO ids), ``image_ids`` names the images (default 1..N). Values of -1 mean "no objects"
    (COCO's convention)."""
    gt, results = to_coco_dicts(preds, targets, category_ids, image_ids)
    return summarize_cocoeval(run_cocoeval(gt, results, backend))


class COCOMetrics(Metric):
    """COCO mAP, per-class AP/AR, precision/recall curves and the detection confusion matrix of
    everything passed to :meth:`update`, gathered across processes under DDP (list states), so the
    result is the same on one device or many.

    ``compute()`` returns :func:`coco_map`'s dict plus ``confusion_matrix`` (see
    :func:`detection_confusion_matrix`) and ``pr_curves`` ({label: :class:`PRCurve`} at
    ``iou_threshold``) when ``extended`` is set. Keys of ``per_class`` are labels (1..num_classes).
    """

    full_state_update = False
    higher_is_better = True

    def __init__(
        self,
        num_classes: int,
        backend: Backend = "faster_coco_eval",
        iou_threshold: float = 0.5,
        score_threshold: float = 0.5,
        extended: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.num_classes = num_classes
        self.backend = backend
        self.iou_threshold = iou_threshold
        self.score_threshold = score_threshold
        self.extended = extended
        for name in STATES:
            self.add_state(name, default=[], dist_reduce_fx=None)

    def update(self, preds: list[dict[str, Tensor]], targets: list[dict[str, Tensor]]) -> None:  # type: ignore[override]
        if len(preds) != len(targets):
            raise ValueError(f"{len(preds)} prediction dicts but {len(targets)} target dicts: one of each per image")
        for pred, target in zip(preds, targets, strict=True):
            boxes = target["boxes"].detach().float().reshape(-1, 4)
            self.pred_boxes.append(pred["boxes"].detach().float().reshape(-1, 4))
            self.pred_scores.append(pred["scores"].detach().float())
            self.pred_labels.append(pred["labels"].detach().long())
            self.gt_boxes.append(boxes)
            self.gt_labels.append(target["labels"].detach().long())
            crowd = target.get("iscrowd")
            self.gt_crowd.append(
                crowd.detach().long()
                if crowd is not None
                else torch.zeros(len(boxes), dtype=torch.long, device=boxes.device)
            )
            area = target.get("area")
            self.gt_area.append(area.detach().float() if area is not None else box_area(boxes))

    def _sync_dist(self, dist_sync_fn: Any = None, process_group: Any | None = None) -> None:
        # torchmetrics gathers a list state one element at a time: with one tensor per image and processes holding
        # different numbers of images (an uneven last round), the collectives do not pair up and DDP fails or hangs.
        # Gather each process's per-image lists whole instead (one object all-gather per state), rank by rank.
        gather_per_image_lists(self, STATES, process_group or self.process_group)

    def _lists(self) -> tuple[list[dict[str, Tensor]], list[dict[str, Tensor]]]:
        preds = [
            {"boxes": b, "scores": s, "labels": lab}
            for b, s, lab in zip(self.pred_boxes, self.pred_scores, self.pred_labels, strict=True)
        ]
        targets = [
            {"boxes": b, "labels": lab, "iscrowd": c, "area": a}
            for b, lab, c, a in zip(self.gt_boxes, self.gt_labels, self.gt_crowd, self.gt_area, strict=True)
        ]
        return preds, targets

    def compute(self) -> dict[str, Any]:
        canonical_image_order(self, STATES)  # the same image ids on 1 or N processes (COCOeval breaks ties by id)
        preds, targets = self._lists()
        warn_if_capped([len(s) for s in self.pred_scores], COCO_MAX_DETECTIONS, "box mAP")
        result = coco_map(preds, targets, backend=self.backend)
        if self.extended:
            result["confusion_matrix"] = detection_confusion_matrix(
                preds, targets, self.num_classes, self.iou_threshold, self.score_threshold
            )
            result["pr_curves"] = precision_recall_curves(
                preds, targets, list(range(1, self.num_classes + 1)), self.iou_threshold
            )
        return result


def format_coco_table(result: dict[str, Any], class_names: list[str] | None = None) -> str:
    """COCOeval's summary lines plus a per-class table (AP, AP@.5, AR@100), as printed by ``test``."""
    what = {"AP": "Average Precision", "AR": "Average Recall"}
    lines = [
        f" {what[kind]:<18} @[ IoU={iou:<9} | area={area:>6} | maxDets={dets:>3} ] = {result[key]:0.3f}"
        for key, kind, iou, area, dets in COCO_SUMMARY
    ]
    per_class = result.get("per_class") or {}
    if per_class:
        width = max([len(n) for n in (class_names or [])] + [8])
        lines += ["", f" {'class':<{width}}  {'AP':>6}  {'AP@.5':>6}  {'AR@100':>6}"]
        for label, values in per_class.items():
            name = class_name(int(label), class_names)
            cells = "  ".join(f"{values[k]:6.3f}" if values[k] > -1 else f"{'-':>6}" for k in ("ap", "ap_50", "ar_100"))
            lines.append(f" {name:<{width}}  {cells}")
    return "\n".join(lines)


__all__ = [
    "COCOMetrics",
    "COCO_STAT_NAMES",
    "COCO_SUMMARY",
    "Matches",
    "PRCurve",
    "box_iou",
    "class_name",
    "coco_map",
    "crowd_iou",
    "detection_confusion_matrix",
    "format_coco_table",
    "interpolated_ap",
    "match_detections",
    "precision_recall_curves",
    "run_cocoeval",
    "summarize_cocoeval",
    "to_coco_dicts",
]
