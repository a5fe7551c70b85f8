"""COCOeval, fed directly, for boxes and masks: what the detection family's box metrics and the instance metrics of
both instance routes (Mask R-CNN, the U-Net's post-processed instances) share (Lin et al. 2014, "Microsoft COCO",
sec. 5, and the cocodataset.org detection-eval page).

- :func:`run_cocoeval`: a ground-truth dataset dict and results (an ``N x 7`` box array, or a list of result dicts
  with RLE ``segmentation``) through ``faster-coco-eval`` (C++, default) or ``pycocotools``, ``iouType`` ``bbox`` or
  ``segm``.
- :func:`summarize_cocoeval`: the 12 numbers of ``COCOeval.summarize`` plus per-class AP / AP@.5 / AR@100.
- :func:`coco_summary` / :func:`coco_stats`: the same 12 numbers under another cap on detections per image than
  COCO's 100 (``max_detections``; read from the evaluated arrays as ``summarize`` reads them, because pycocotools'
  ``summarize`` hard-codes 100 for its first line), and :func:`warn_if_capped`: a logged note naming the images
  whose detections beyond the cap do not count.
- :func:`gather_per_image_lists`: a torchmetrics metric's per-image list states gathered whole across processes (one
  object all-gather per state), and :func:`canonical_image_order`: the images in an order that does not depend on
  how they were spread over the processes (COCOeval breaks score ties by image id), so COCO numbers do not depend
  on the number of devices.

Written here because neither library offers these conversions for tensors; the evaluation itself is the libraries'.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np

Backend = Literal["faster_coco_eval", "pycocotools"]
IouType = Literal["bbox", "segm"]
# COCOeval.summarize()'s twelve lines, in its order: (key of the result, AP or AR, IoU, area, max detections)
COCO_SUMMARY = (
    ("map", "AP", "0.50:0.95", "all", 100),
    ("map_50", "AP", "0.50", "all", 100),
    ("map_75", "AP", "0.75", "all", 100),
    ("map_small", "AP", "0.50:0.95", "small", 100),
    ("map_medium", "AP", "0.50:0.95", "medium", 100),
    ("map_large", "AP", "0.50:0.95", "large", 100),
    ("mar_1", "AR", "0.50:0.95", "all", 1),
    ("mar_10", "AR", "0.50:0.95", "all", 10),
    ("mar_100", "AR", "0.50:0.95", "all", 100),
    ("mar_small", "AR", "0.50:0.95", "small", 100),
    ("mar_medium", "AR", "0.50:0.95", "medium", 100),
    ("mar_large", "AR", "0.50:0.95", "large", 100),
)
COCO_STAT_NAMES = tuple(row[0] for row in COCO_SUMMARY)  # the keys of COCOeval.stats, in its order
COCO_MAX_DETECTIONS = 100  # COCO's cap of detections per image in AP and AR@100


def coco_summary(max_detections: int = COCO_MAX_DETECTIONS) -> tuple[tuple[str, str, str, str, int], ...]:
    """:data:`COCO_SUMMARY` with the cap of detections per image at ``max_detections`` instead of COCO's 100: the
    AP lines and the area AR lines count at most that many per image, and ``mar_100`` becomes
    ``mar_<max_detections>``. At least 10 (the AR@1 and AR@10 lines stay beside it)."""
    check_max_detections(max_detections)
    if max_detections == COCO_MAX_DETECTIONS:
        return COCO_SUMMARY
    return tuple(
        ("mar_" + str(max_detections) if key == "mar_100" else key, kind, iou, area,
         max_detections if dets == COCO_MAX_DETECTIONS else dets)
        for key, kind, iou, area, dets in COCO_SUMMARY
    )  # fmt: skip


def check_max_detections(max_detections: int) -> None:
    if isinstance(max_detections, bool) or not isinstance(max_detections, int) or max_detections < 10:
        raise ValueError(
            f"max_detections={max_detections!r}: the cap of detections per image in COCO's AP / AR must be an "
            "integer of at least 10 (AR@1 and AR@10 are reported beside it). Fix: 100 (COCO's definition) or the "
            "largest number of objects one image can hold."
        )


def coco_stats(evaluator: Any, rows: Sequence[tuple[str, str, str, str, int]] = COCO_SUMMARY) -> dict[str, float]:
    """The numbers of ``rows`` (:func:`coco_summary`) from an evaluated COCOeval's ``eval["precision"]``
    ``(T, R, K, A, M)`` and ``eval["recall"]`` ``(T, K, A, M)`` arrays, averaged over the entries above -1 as
    pycocotools' ``summarize._summarize`` does; -1 where nothing is defined."""
    params = evaluator.params
    precision = np.asarray(evaluator.eval["precision"])
    recall = np.asarray(evaluator.eval["recall"])
    iou_thresholds = np.asarray(params.iouThrs)
    out = {}
    for key, kind, iou, area, dets in rows:
        a, m = list(params.areaRngLbl).index(area), list(params.maxDets).index(dets)
        values = precision[..., a, m] if kind == "AP" else recall[..., a, m]
        if iou != "0.50:0.95":
            values = values[np.isclose(iou_thresholds, float(iou))]
        valid = values[values > -1]
        out[key] = float(valid.mean()) if valid.size else -1.0
    return out


def warn_if_capped(
    detections_per_image: Sequence[int], max_detections: int, what: str, setting: str | None = None
) -> None:
    """A logged note when some images hold more detections than COCO's AP / AR count (their lowest-scoring ones
    are left out of those numbers, by COCO's definition); ``setting`` is the argument that raises the cap, if any."""
    over = [n for n in detections_per_image if n > max_detections]
    if over:
        from torchmetrics.utilities import rank_zero_warn

        rank_zero_warn(
            f"{what}: {len(over)} of {len(detections_per_image)} images hold more than {max_detections} detections "
            f"(at most {max(over)}); COCO's AP / AR count only the {max_detections} highest-scoring of each "
            f"({sum(over) - max_detections * len(over)} detections left out of those numbers). "
            + (f"Fix, to count them all: {setting}: {max(over)} or more (the numbers then differ from COCO's "
               "100-detection definition)." if setting else "This is COCO's definition; the precision / recall "
               "curves and the confusion matrix beside it take every detection.")
        )  # fmt: skip


def run_cocoeval(
    gt: dict[str, Any], results: np.ndarray | list[dict[str, Any]], backend: Backend = "faster_coco_eval",
    iou_type: IouType = "bbox", max_detections: int = COCO_MAX_DETECTIONS,
) -> Any:
    """COCOeval of a ground-truth dataset dict and results (an ``N x 7`` box array, or result dicts, with RLE
    ``segmentation`` for ``iou_type="segm"``), evaluated, accumulated and summarized (its printout swallowed);
    returns the COCOeval object. ``max_detections`` other than 100: ``params.maxDets`` is ``[1, 10,
    max_detections]`` (read the numbers with :func:`coco_stats`, not ``stats``)."""
    check_max_detections(max_detections)
    if backend == "faster_coco_eval":
        from faster_coco_eval import COCO
        from faster_coco_eval import COCOeval_faster as COCOeval
    elif backend == "pycocotools":
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval
    else:
        raise ValueError(f"backend must be 'faster_coco_eval' or 'pycocotools', got {backend!r}")
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = gt
        coco_gt.createIndex()
        if len(results):
            coco_dt = coco_gt.loadRes(results)
        else:  # loadRes fails on no detections: an empty result set scores 0 on every class with objects
            coco_dt = COCO()
            coco_dt.dataset = {"images": gt["images"], "annotations": [], "categories": gt["categories"]}
            coco_dt.createIndex()
        evaluator = COCOeval(coco_gt, coco_dt, iou_type)
        evaluator.params.maxDets = [1, 10, max_detections]
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return evaluator


def summarize_cocoeval(evaluator: Any, category_ids: list[int] | None = None) -> dict[str, Any]:
    """The 12 COCO numbers plus per-class AP (IoU .5:.95), AP@.5 and AR@100 (all areas) from an
    evaluated COCOeval, read from its ``eval["precision"]`` ``(T, R, K, A, M)`` and ``eval["recall"]``
    ``(T, K, A, M)`` arrays the way ``summarize`` reads them; -1 where a class has no objects."""
    out: dict[str, Any] = {name: float(v) for name, v in zip(COCO_STAT_NAMES, evaluator.stats, strict=False)}
    precision = np.asarray(evaluator.eval["precision"])
    recall = np.asarray(evaluator.eval["recall"])
    cat_ids = list(evaluator.params.catIds)

    def mean_valid(a: np.ndarray) -> float:
        valid = a[a > -1]
        return float(valid.mean()) if valid.size else -1.0

    per_class = {}
    for k, cat_id in enumerate(cat_ids):
        per_class[int(cat_id)] = {
            "ap": mean_valid(precision[:, :, k, 0, -1]),
            "ap_50": mean_valid(precision[0, :, k, 0, -1]),
            "ar_100": mean_valid(recall[:, k, 0, -1]),
        }
    out["per_class"] = per_class
    # the interpolated PR curve at IoU .5, all areas, 100 detections: COCO's own, per class
    out["pr_curve_50"] = {int(c): precision[0, :, k, 0, -1].copy() for k, c in enumerate(cat_ids)}
    return out


def gather_per_image_lists(metric: Any, names: Sequence[str], group: Any = None) -> None:
    """Replace each list state ``names`` of ``metric`` by the concatenation of every process's list, rank by rank.

    torchmetrics gathers a list state one element at a time: with one tensor per image and processes holding
    different numbers of images (an uneven last round), the collectives do not pair up and DDP fails or hangs."""
    import torch.distributed as dist

    for name in names:
        gathered: list[Any] = [None] * dist.get_world_size(group)
        dist.all_gather_object(gathered, [_to_cpu(t) for t in getattr(metric, name)], group=group)
        setattr(metric, name, [_to_device(t, metric.device) for part in gathered for t in part])


def canonical_image_order(metric: Any, names: Sequence[str]) -> None:
    """Reorder the per-image list states ``names`` of ``metric`` (all of one length, one entry per image) by the
    bytes of each image's entries. Gathered rank by rank, images arrive in an order that depends on the number of
    processes (rank 0's, then rank 1's); COCOeval numbers images in that order and breaks ties between equal scores
    by image id, so without this the mAP could differ between 1 and N devices. Identical entries are
    interchangeable, so the order is canonical."""
    lists = [getattr(metric, name) for name in names]
    if not lists or not lists[0]:
        return

    def key(i: int) -> bytes:
        return b"|".join(_to_cpu(values[i]).numpy().tobytes() for values in lists)

    order = sorted(range(len(lists[0])), key=key)
    for name, values in zip(names, lists, strict=True):
        setattr(metric, name, [values[i] for i in order])


def gather_objects(objects: list[Any]) -> list[Any]:
    """Every process's list of picklable records (per-image rows of a report), concatenated rank by rank; the list
    itself on one process."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return objects
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, objects)
    return [item for part in gathered for item in part]


def _to_cpu(value: Any) -> Any:
    return value.cpu() if hasattr(value, "cpu") else value


def _to_device(value: Any, device: Any) -> Any:
    return value.to(device) if hasattr(value, "to") else value
