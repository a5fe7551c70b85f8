"""Instance metrics shared by both instance routes (the detection family's Mask R-CNN, the segmentation family's
U-Net instances): the **2018 Data Science Bowl score** and COCO **mask mAP**, and the conversions between the two
routes' outputs (per-object masks with scores, label images).

- **DSB score** (:class:`DSBScore`, :func:`dsb_score`; Caicedo et al. 2019, "Nucleus segmentation across imaging
  experiments: the 2018 Data Science Bowl", Nature Methods 16; the Kaggle competition's evaluation page): instance
  label images are compared object by object; per image the mean over the IoU thresholds 0.5, 0.55, ..., 0.95 of
  ``TP / (TP + FP + FN)``, then the mean over images. :func:`match_instances` gives the IoU matrix and the merge /
  split counts behind it (one joint histogram of the two label images, not a loop over pixel pairs).
- **Mask mAP**: COCOeval ``segm`` (Lin et al. 2014, sec. 5).

- :func:`encode_masks` / :func:`encode_labels`: per-object RLEs (pycocotools' run-length encoding, the format of
  COCO results files) of ``(N, H, W)`` masks or of a label image (0 background, k = instance k).
- :func:`masks_to_labels`: overlapping soft masks (Mask R-CNN) to one label image, as the 2018 Data Science Bowl
  required (no pixel in two objects): a pixel goes to the highest-scoring mask that covers it.
- :class:`COCOMaskMetrics`: a torchmetrics ``Metric`` whose per-image states are the RLEs (as bytes), gathered
  whole across processes (:func:`zoo.core.coco.gather_per_image_lists`), evaluated by COCOeval ``segm``.

pycocotools does the encoding and faster-coco-eval / pycocotools the evaluation; the glue is written here.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torchmetrics import Metric

from zoo.core.coco import (
    COCO_MAX_DETECTIONS,
    Backend,
    canonical_image_order,
    check_max_detections,
    coco_stats,
    coco_summary,
    gather_per_image_lists,
    run_cocoeval,
    warn_if_capped,
)

MASK_STATES = ("pred_rles", "pred_scores", "gt_rles", "gt_crowd", "image_sizes")


# -- 2018 Data Science Bowl: instance matching and score (Caicedo et al. 2019) ----------------------------------------
DSB_IOU_THRESHOLDS: tuple[float, ...] = tuple(k / 20 for k in range(10, 20))
"""0.5, 0.55, ..., 0.95, each the correctly rounded ``k / 20``: an IoU that equals a threshold exactly (e.g.
7 / 10 against 14 / 20) is the same double and is not counted as a hit (the competition's "greater than")."""

InstanceLabels = np.ndarray | torch.Tensor


def _label_array(labels: InstanceLabels, what: str) -> np.ndarray:
    array = labels.detach().cpu().numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
    if array.ndim != 2:
        raise ValueError(f"{what} must be one (H, W) instance label image, got shape {array.shape}")
    if array.dtype == bool:
        array = array.astype(np.int64)
    if not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"{what} must hold integer instance ids (0 background), got dtype {array.dtype}")
    if array.size and array.min() < 0:
        raise ValueError(f"{what} holds negative ids ({array.min()}); instance ids are 0 (background) or > 0")
    return array


def _compact(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(index image: 0 background, 1..n the objects in id order, the n object ids) of a label image."""
    flat = labels.ravel().astype(np.int64, copy=False)
    top = int(flat.max()) if flat.size else 0
    if top <= 4 * flat.size + 1024:  # a lookup table: linear time, no sort
        present = np.bincount(flat, minlength=top + 1) > 0
        present[0] = False
        ids = np.flatnonzero(present)
        table = np.zeros(top + 1, np.int64)
        table[ids] = np.arange(1, len(ids) + 1)
        return table[flat], ids
    values, index = np.unique(flat, return_inverse=True)  # sparse, huge ids
    if values[0] != 0:
        return index.ravel() + 1, values
    return index.ravel(), values[1:]


@dataclass(frozen=True)
class InstanceMatch:
    """How the objects of a predicted and a true instance label image overlap (:func:`match_instances`).

    Rows are predicted objects, columns true objects, both in increasing id order (``pred_ids``,
    ``true_ids``). ``merged``: predictions that each cover more than half of the area of at least two true
    objects (``merged_objects``: the true objects so covered). ``split``: true objects of which at least two
    predictions each lie with more than half of their own area inside (``split_pieces``: those predictions).
    A true object can be more than half covered by only one prediction, and a prediction can lie more than
    half inside only one true object (the objects of a label image are disjoint), so a true object takes part
    in at most one merge and a prediction in at most one split.
    """

    iou: np.ndarray
    intersection: np.ndarray
    pred_ids: np.ndarray
    true_ids: np.ndarray
    pred_areas: np.ndarray
    true_areas: np.ndarray
    merged: int
    merged_objects: int
    split: int
    split_pieces: int

    def counts(self, threshold: float) -> tuple[int, int, int]:
        """``(TP, FP, FN)`` at an IoU threshold >= 0.5: a pair is a match when its IoU exceeds the threshold.
        Above 0.5 a prediction can match at most one true object and vice versa (IoU > 0.5 means the
        intersection holds more than half of either object, and the objects of a label image are
        disjoint), so counting the pairs is the one-to-one matching, no assignment problem to solve."""
        if threshold < 0.5:
            raise ValueError(f"IoU threshold {threshold} < 0.5: matches are one-to-one only above 0.5")
        tp = int(np.count_nonzero(self.iou > threshold))
        return tp, len(self.pred_ids) - tp, len(self.true_ids) - tp


def match_instances(pred: InstanceLabels, true: InstanceLabels) -> InstanceMatch:
    """IoU matrix (predicted x true objects) and merge / split counts of two instance label images (0 is
    background, every other id one object; ids need not be consecutive). See :class:`InstanceMatch`.

    The intersections of all pairs come from one joint histogram (``np.bincount`` of
    ``pred_index * (T + 1) + true_index``), linear in the pixels."""
    p = _label_array(pred, "pred")
    t = _label_array(true, "true")
    if p.shape != t.shape:
        raise ValueError(f"pred {p.shape} and true {t.shape} label images differ in shape")
    p_index, pred_ids = _compact(p)
    t_index, true_ids = _compact(t)
    n_p, n_t = len(pred_ids), len(true_ids)
    codes = p_index * (n_t + 1) + t_index
    if (n_p + 1) * (n_t + 1) <= 4 * codes.size + (1 << 20):
        joint = np.bincount(codes, minlength=(n_p + 1) * (n_t + 1)).reshape(n_p + 1, n_t + 1)
    else:  # very many objects: only the pairs that meet, then scattered into the matrix
        pairs, counts = np.unique(codes, return_counts=True)
        joint = np.zeros((n_p + 1, n_t + 1), np.int64)
        joint[pairs // (n_t + 1), pairs % (n_t + 1)] = counts
    pred_areas = joint[1:].sum(axis=1)
    true_areas = joint[:, 1:].sum(axis=0)
    inter = joint[1:, 1:]
    union = pred_areas[:, None] + true_areas[None, :] - inter
    iou = np.divide(inter, union, out=np.zeros(inter.shape, np.float64), where=union > 0)
    # integer comparisons: "more than half" is exact, no rounding at 0.5
    covers = 2 * inter > true_areas[None, :]  # prediction covers more than half of the true object
    inside = 2 * inter > pred_areas[:, None]  # prediction lies more than half inside the true object
    merging = covers.sum(axis=1) >= 2
    splitting = inside.sum(axis=0) >= 2
    return InstanceMatch(
        iou=iou,
        intersection=inter,
        pred_ids=pred_ids,
        true_ids=true_ids,
        pred_areas=pred_areas,
        true_areas=true_areas,
        merged=int(merging.sum()),
        merged_objects=int(covers[merging].sum()),
        split=int(splitting.sum()),
        split_pieces=int(inside[:, splitting].sum()),
    )


def _check_thresholds(thresholds: Sequence[float]) -> tuple[float, ...]:
    values = tuple(float(t) for t in thresholds)
    if not values or any(not 0.5 <= t < 1.0 for t in values):
        raise ValueError(
            f"IoU thresholds must lie in [0.5, 1), got {list(values)}: below 0.5 one prediction can match "
            f"several objects and the score would need an assignment"
        )
    return values


def dsb_precisions(match: InstanceMatch, thresholds: Sequence[float] = DSB_IOU_THRESHOLDS) -> np.ndarray:
    """``TP / (TP + FP + FN)`` at each threshold (the competition's "precision"); NaN where the image has no
    true and no predicted objects (0 / 0)."""
    n = len(match.pred_ids) + len(match.true_ids)
    if n == 0:
        return np.full(len(thresholds), np.nan)
    out = []
    for t in _check_thresholds(thresholds):
        tp, fp, fn = match.counts(t)
        out.append(tp / (tp + fp + fn))
    return np.asarray(out, np.float64)


def dsb_score(
    pred: InstanceLabels,
    true: InstanceLabels,
    thresholds: Sequence[float] = DSB_IOU_THRESHOLDS,
    empty_score: float | None = None,
) -> float:
    """The 2018 Data Science Bowl score of one image (Caicedo et al. 2019, Nature Methods): the mean over
    ``thresholds`` of ``TP / (TP + FP + FN)``. An image with neither true nor predicted objects scores
    ``empty_score`` (None: NaN, i.e. not scored; see :class:`DSBScore`)."""
    precisions = dsb_precisions(match_instances(pred, true), thresholds)
    if np.isnan(precisions).all():
        return math.nan if empty_score is None else float(empty_score)
    return float(precisions.mean())


class DSBScore(Metric):
    """The 2018 Data Science Bowl score (Caicedo et al. 2019, "Nucleus segmentation across imaging experiments:
    the 2018 Data Science Bowl", Nature Methods 16; the Kaggle evaluation page): for each image, the mean over
    the IoU thresholds ``t`` = 0.5, 0.55, ..., 0.95 of ``TP(t) / (TP(t) + FP(t) + FN(t))``, where a predicted
    object is a hit (TP) when its IoU with a true object is greater than ``t``, each object matched at most
    once (above 0.5 that holds by itself: :meth:`InstanceMatch.counts`); unmatched predictions are FP,
    unmatched true objects FN. ``compute()`` is the mean of the per-image scores.

    ``update(preds, targets)``: sequences of ``(H, W)`` instance label images (numpy or torch; 0 background,
    each other id one object), or ``(N, H, W)`` tensors; sizes may differ between images.

    **Images without objects** (no true and no predicted object, 0 / 0): the evaluation page does not define
    them. ``empty_score=None`` (default) leaves them out of the mean (counted in ``empty_images``), so
    a data set's score does not rise with empty crops; a number scores them with it (1.0: "nothing there,
    nothing found" is perfect). An image with true objects and no predictions scores 0, and so does one
    with predictions and no true objects (every prediction is an FP). Every image of this repository's
    DSB2018 copy holds nuclei (3 to 289), so the rule matters only for crops or other data.

    The states are sums (DDP-safe): per-image scores and image count, per-threshold score sums (the score
    against the IoU threshold), per-threshold TP / FP / FN pooled over images (F1), merge / split counts
    (:func:`match_instances`). :meth:`summary` returns all of them.
    """

    higher_is_better = True
    full_state_update = False

    def __init__(
        self,
        thresholds: Sequence[float] = DSB_IOU_THRESHOLDS,
        empty_score: float | None = None,
        **kwargs: object,
    ) -> None:
        super().__init__(**kwargs)
        self.thresholds = _check_thresholds(thresholds)
        if empty_score is not None and not 0.0 <= empty_score <= 1.0:
            raise ValueError(f"empty_score must be None or lie in [0, 1], got {empty_score}")
        self.empty_score = empty_score
        n = len(self.thresholds)
        self.add_state("score_sum", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("images", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("empty_images", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("threshold_score_sum", torch.zeros(n, dtype=torch.float64), dist_reduce_fx="sum")
        for name in ("tp", "fp", "fn"):
            self.add_state(name, torch.zeros(n, dtype=torch.long), dist_reduce_fx="sum")
        for name in ("true_objects", "pred_objects", "merged", "merged_objects", "split", "split_pieces"):
            self.add_state(name, torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(
        self, preds: Sequence[InstanceLabels] | torch.Tensor, targets: Sequence[InstanceLabels] | torch.Tensor
    ) -> None:
        if isinstance(preds, torch.Tensor | np.ndarray) and preds.ndim == 2:
            preds, targets = [preds], [targets]
        if len(preds) != len(targets):
            raise ValueError(f"{len(preds)} predicted but {len(targets)} true label images: one of each per image")
        n = len(self.thresholds)
        scores = np.zeros(n, np.float64)
        counts = np.zeros((3, n), np.int64)
        totals = np.zeros(6, np.int64)
        images = empty = 0
        # accumulate in numpy and add to the (possibly GPU) states once per call, not per image
        for pred, true in zip(preds, targets, strict=True):
            match = match_instances(pred, true)
            for i, t in enumerate(self.thresholds):
                counts[:, i] += match.counts(t)
            totals += (
                len(match.true_ids),
                len(match.pred_ids),
                match.merged,
                match.merged_objects,
                match.split,
                match.split_pieces,
            )
            if len(match.pred_ids) + len(match.true_ids) == 0:
                empty += 1
                if self.empty_score is None:
                    continue
                scores += self.empty_score
            else:
                scores += dsb_precisions(match, self.thresholds)
            images += 1
        self.threshold_score_sum += torch.from_numpy(scores).to(self.threshold_score_sum)
        self.score_sum += float(scores.sum()) / n  # sum over images of each image's mean over thresholds
        self.images += images
        self.empty_images += empty
        for name, row in zip(("tp", "fp", "fn"), counts, strict=True):
            state = getattr(self, name)
            state += torch.from_numpy(row).to(state)
        for name, value in zip(
            ("true_objects", "pred_objects", "merged", "merged_objects", "split", "split_pieces"), totals, strict=True
        ):
            getattr(self, name).add_(int(value))

    def compute(self) -> torch.Tensor:
        return (self.score_sum / self.images.clamp_min(1)).float()

    def summary(self) -> dict[str, object]:
        """Everything for a report, synchronised across processes like ``compute()``: ``score``;
        ``thresholds`` and ``score_per_threshold`` (mean over images of ``TP / (TP + FP + FN)`` at each
        threshold: the score is their mean); ``tp``, ``fp``, ``fn`` and ``f1`` per threshold, pooled over
        images (``F1 = 2 TP / (2 TP + FP + FN)``), ``average_f1`` (their mean over thresholds, the "average
        F1" of Caicedo et al. 2019, table 1, computed from pooled counts) and ``f1_50`` (F1 at IoU 0.5);
        ``images`` (scored), ``empty_images`` (no true and no predicted objects), ``true_objects``,
        ``pred_objects``, ``merged``, ``merged_objects``, ``split``, ``split_pieces``
        (:class:`InstanceMatch`)."""
        with self.sync_context(
            dist_sync_fn=self.dist_sync_fn, should_sync=self._to_sync, should_unsync=self._should_unsync
        ):
            images = self.images.clamp_min(1)
            tp, fp, fn = self.tp.double(), self.fp.double(), self.fn.double()
            denom = 2 * tp + fp + fn
            f1 = torch.where(denom > 0, 2 * tp / denom.clamp_min(1), torch.zeros_like(tp))
            result: dict[str, object] = {
                "score": float(self.score_sum / images),
                "thresholds": list(self.thresholds),
                "score_per_threshold": (self.threshold_score_sum / images).tolist(),
                "tp": self.tp.tolist(),
                "fp": self.fp.tolist(),
                "fn": self.fn.tolist(),
                "f1": f1.tolist(),
                "average_f1": float(f1.mean()),
                "f1_50": float(f1[0]) if self.thresholds[0] == 0.5 else float("nan"),
            }
            for name in (
                "images",
                "empty_images",
                "true_objects",
                "pred_objects",
                "merged",
                "merged_objects",
                "split",
                "split_pieces",
            ):
                result[name] = int(getattr(self, name))
        return result


def _rle_json(rle: dict[str, Any]) -> dict[str, Any]:
    counts = rle["counts"]
    return {"size": [int(v) for v in rle["size"]], "counts": counts.decode() if isinstance(counts, bytes) else counts}


def encode_masks(masks: np.ndarray | Tensor) -> list[dict[str, Any]]:
    """COCO RLEs (``{"size": [H, W], "counts": str}``) of binary masks ``(N, H, W)``."""
    from pycocotools import mask as mask_utils

    array = masks.detach().cpu().numpy() if isinstance(masks, Tensor) else np.asarray(masks)
    if array.ndim != 3:
        raise ValueError(f"masks must be (N, H, W); got shape {array.shape}")
    if not len(array):
        return []
    encoded = mask_utils.encode(np.asfortranarray(array.transpose(1, 2, 0).astype(np.uint8)))
    return [_rle_json(r) for r in encoded]


def encode_labels(labels: np.ndarray | Tensor) -> tuple[list[dict[str, Any]], list[int]]:
    """The RLE of each instance of a label image (0 background, k > 0 instance k), in increasing k, with the ks."""
    from scipy import ndimage

    array = labels.detach().cpu().numpy() if isinstance(labels, Tensor) else np.asarray(labels)
    ids = [int(k) for k in np.unique(array) if k > 0]
    rles = []
    # each instance is compared inside its own bounding box only: a big image with 300 nuclei stays cheap
    slices = ndimage.find_objects(array.astype(np.int64))
    for k in ids:
        mask = np.zeros(array.shape, dtype=np.uint8)
        window = slices[k - 1]
        mask[window] = array[window] == k
        rles.extend(encode_masks(mask[None]))
    return rles, ids


def masks_to_labels(
    masks: Tensor, scores: Tensor, mask_threshold: float = 0.5, score_threshold: float = 0.0
) -> tuple[Tensor, Tensor]:
    """One label image (int32, 0 background, k = the k-th kept detection) from soft masks ``(N, 1 or -, H, W)``:
    detections with ``score >= score_threshold`` in decreasing score; a pixel whose mask probability is at least
    ``mask_threshold`` goes to the highest-scoring of them (the DSB's no-overlap rule). Returns the label image and
    the scores of labels 1..K (an instance left with no pixel is dropped and numbers close up)."""
    if masks.ndim == 4:
        masks = masks[:, 0]
    height, width = masks.shape[-2:]
    order = torch.argsort(scores, descending=True)
    order = order[scores[order] >= score_threshold]
    labels = torch.zeros((height, width), dtype=torch.int32, device=masks.device)
    kept: list[Tensor] = []
    for index in order.tolist():
        claim = (masks[index] >= mask_threshold) & (labels == 0)
        if claim.any():
            kept.append(scores[index])
            labels[claim] = len(kept)
    return labels, (torch.stack(kept) if kept else scores.new_zeros(0))


def _as_bytes_tensor(obj: Any) -> Tensor:
    return torch.frombuffer(bytearray(json.dumps(obj).encode()), dtype=torch.uint8)


def _from_bytes_tensor(tensor: Tensor) -> Any:
    return json.loads(bytes(tensor.cpu().numpy().tobytes()).decode())


class COCOMaskMetrics(Metric):
    """COCO mask mAP (COCOeval ``segm``: AP@[.5:.95], AP@.5, AP@.75, small / medium / large, AR@1/10/100) of every
    image passed to :meth:`update`, the same on one device or many (the RLEs are gathered whole under DDP).

    :meth:`update` takes, per image, predictions ``{"masks": (N, [1,] H, W) probabilities or 0/1, "scores": (N,)}``
    (or ``{"labels_image": (H, W) int, "scores": (K,)}``, the U-Net route's instances) and targets
    ``{"masks": (M, H, W) 0/1, "iscrowd": (M,) optional}`` (or ``{"labels_image": (H, W)}``). One object class.

    ``max_detections``: the cap of predicted instances per image that AP and AR count (COCO's 100 by default; the
    highest-scoring count). A DSB2018 image holds up to 289 nuclei, so there the default leaves objects out of the
    AP: ``compute`` then logs a note with the images' count and the setting that counts them all (the keys follow
    :func:`zoo.core.coco.coco_summary`: ``mar_100`` becomes ``mar_<max_detections>``; ``max_detections`` is in
    the result too).
    """

    full_state_update = False
    higher_is_better = True

    def __init__(
        self, backend: Backend = "faster_coco_eval", mask_threshold: float = 0.5,
        max_detections: int = COCO_MAX_DETECTIONS, **kwargs: Any,
    ) -> None:  # fmt: skip
        super().__init__(**kwargs)
        check_max_detections(max_detections)
        self.backend = backend
        self.mask_threshold = mask_threshold
        self.max_detections = max_detections
        for name in MASK_STATES:
            self.add_state(name, default=[], dist_reduce_fx=None)

    def _rles(self, item: dict[str, Tensor], threshold: bool) -> list[dict[str, Any]]:
        if "labels_image" in item:
            return encode_labels(item["labels_image"])[0]
        masks = item["masks"]
        if masks.ndim == 4:
            masks = masks[:, 0]
        binary = masks >= self.mask_threshold if threshold and masks.is_floating_point() else masks > 0
        return encode_masks(binary)

    def update(self, preds: Sequence[dict[str, Tensor]], targets: Sequence[dict[str, Tensor]]) -> None:  # type: ignore[override]
        if len(preds) != len(targets):
            raise ValueError(f"{len(preds)} prediction dicts but {len(targets)} target dicts: one of each per image")
        for pred, target in zip(preds, targets, strict=True):
            pred_rles = self._rles(pred, threshold=True)
            gt_rles = self._rles(target, threshold=False)
            scores = pred["scores"].detach().float().reshape(-1).cpu()
            if len(scores) != len(pred_rles):
                raise ValueError(f"{len(pred_rles)} predicted instances but {len(scores)} scores")
            crowd = target.get("iscrowd")
            crowd = crowd.detach().long().cpu() if crowd is not None else torch.zeros(len(gt_rles), dtype=torch.long)
            size = (pred.get("labels_image") if "labels_image" in pred else pred["masks"]).shape[-2:]
            self.pred_rles.append(_as_bytes_tensor(pred_rles))
            self.pred_scores.append(scores)
            self.gt_rles.append(_as_bytes_tensor(gt_rles))
            self.gt_crowd.append(crowd)
            self.image_sizes.append(torch.tensor(list(size)))

    def _sync_dist(self, dist_sync_fn: Any = None, process_group: Any | None = None) -> None:
        gather_per_image_lists(self, MASK_STATES, process_group or self.process_group)

    def coco_inputs(self) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """The ground truth as a COCO dataset dict and the predictions as COCO results (RLE ``segmentation``),
        images numbered 1..N in update order."""
        from pycocotools import mask as mask_utils

        images, annotations, results = [], [], []
        for i, (pred, scores, gt, crowd, size) in enumerate(
            zip(self.pred_rles, self.pred_scores, self.gt_rles, self.gt_crowd, self.image_sizes, strict=True),
            start=1,
        ):
            height, width = (int(v) for v in size)
            images.append({"id": i, "height": height, "width": width})
            for rle, is_crowd in zip(_from_bytes_tensor(gt), crowd.tolist(), strict=True):
                box = mask_utils.toBbox(rle).tolist()
                annotations.append({
                    "id": len(annotations) + 1, "image_id": i, "category_id": 1, "segmentation": rle,
                    "area": float(mask_utils.area(rle)), "bbox": box, "iscrowd": int(is_crowd),
                })  # fmt: skip
            for rle, score in zip(_from_bytes_tensor(pred), scores.tolist(), strict=True):
                results.append({"image_id": i, "category_id": 1, "segmentation": rle, "score": float(score),
                                "bbox": mask_utils.toBbox(rle).tolist()})  # fmt: skip
        gt = {"images": images, "annotations": annotations, "categories": [{"id": 1}]}
        return gt, results

    def compute(self) -> dict[str, float]:
        canonical_image_order(self, MASK_STATES)  # the same image ids on 1 or N processes
        gt, results = self.coco_inputs()
        warn_if_capped([len(s) for s in self.pred_scores], self.max_detections, "mask mAP", "mask_max_detections")
        evaluator = run_cocoeval(gt, results if results else np.zeros((0, 7)), self.backend, iou_type="segm",
                                 max_detections=self.max_detections)  # fmt: skip
        return {**coco_stats(evaluator, coco_summary(self.max_detections)), "max_detections": self.max_detections}


__all__ = [
    "DSB_IOU_THRESHOLDS",
    "COCOMaskMetrics",
    "DSBScore",
    "InstanceMatch",
    "dsb_precisions",
    "dsb_score",
    "encode_labels",
    "encode_masks",
    "masks_to_labels",
    "match_instances",
]
