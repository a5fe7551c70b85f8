"""IoU, the TP/FP/FN rule, PR curves, the confusion matrix, and COCO mAP against pycocotools."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from zoo.detection import COCOMetrics, box_iou, coco_map, detection_confusion_matrix, match_detections
from zoo.detection.metrics import COCO_STAT_NAMES, interpolated_ap, precision_recall_curves, run_cocoeval, to_coco_dicts


def t(rows: list[list[float]]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float32).reshape(-1, 4)


def test_box_iou_of_hand_made_boxes() -> None:
    a = t([[0, 0, 10, 10]])
    b = t([[0, 0, 10, 10], [5, 0, 15, 10], [10, 10, 20, 20], [0, 0, 5, 5]])
    assert box_iou(a, b)[0].tolist() == pytest.approx([1.0, 50 / 150, 0.0, 0.25])


def test_prediction_is_true_positive_only_with_right_class_and_iou_at_least_half() -> None:
    gt = t([[0, 0, 10, 10], [20, 20, 30, 30], [40, 40, 50, 50]])
    gt_labels = torch.tensor([1, 1, 2])
    preds = t([
        [0, 0, 10, 10],     # exact, right class -> TP
        [0, 0, 10, 10],     # duplicate of a matched object -> FP
        [25, 20, 35, 30],   # IoU 50/150 = 0.33 -> FP
        [40, 40, 50, 50],   # exact box, wrong class -> FP
    ])  # fmt: skip
    m = match_detections(preds, torch.tensor([0.9, 0.8, 0.7, 0.6]), torch.tensor([1, 1, 1, 1]), gt, gt_labels)
    assert m.tp.tolist() == [True, False, False, False]
    assert m.fp.tolist() == [False, True, True, True]
    assert m.fn.tolist() == [False, True, True]  # the two objects nobody found correctly
    assert (m.num_tp, m.num_fp, m.num_fn) == (1, 3, 2)


def test_iou_exactly_half_is_a_match_and_just_below_is_not() -> None:
    gt = t([[0, 0, 10, 10]])
    half = t([[0, 0, 10, 20]])  # IoU 100 / 200 = 0.5
    below = t([[0, 0, 10, 20.5]])
    assert match_detections(half, torch.tensor([1.0]), torch.tensor([1]), gt, torch.tensor([1])).tp.item()
    assert not match_detections(below, torch.tensor([1.0]), torch.tensor([1]), gt, torch.tensor([1])).tp.item()


def test_higher_score_takes_the_object_first() -> None:
    gt = t([[0, 0, 10, 10]])
    preds = t([[0, 0, 10, 9], [0, 0, 10, 10]])  # the better box has the lower score
    m = match_detections(preds, torch.tensor([0.9, 0.5]), torch.tensor([1, 1]), gt, torch.tensor([1]))
    assert m.tp.tolist() == [True, False] and m.matched_gt.tolist() == [0, -1]


def test_detection_inside_crowd_region_is_ignored_not_false_positive() -> None:
    gt = t([[0, 0, 100, 100]])
    m = match_detections(t([[10, 10, 30, 30]]), torch.tensor([0.9]), torch.tensor([1]), gt, torch.tensor([1]),
                         gt_crowd=torch.tensor([1]))  # fmt: skip
    assert m.ignored.tolist() == [True] and m.fp.tolist() == [False] and m.fn.tolist() == [False]


def test_pr_curve_follows_score_order() -> None:
    preds = [{"boxes": t([[0, 0, 10, 10], [50, 50, 60, 60], [20, 20, 30, 30]]),
              "scores": torch.tensor([0.9, 0.8, 0.7]), "labels": torch.tensor([1, 1, 1])}]  # fmt: skip
    targets = [{"boxes": t([[0, 0, 10, 10], [20, 20, 30, 30]]), "labels": torch.tensor([1, 1])}]
    curve = precision_recall_curves(preds, targets)[1]
    assert curve.precision.tolist() == pytest.approx([1.0, 0.5, 2 / 3])
    assert curve.recall.tolist() == pytest.approx([0.5, 0.5, 1.0])
    # envelope: precision 1 up to recall .5 (51 levels), 2/3 above (50 levels)
    assert curve.ap == pytest.approx((51 * 1.0 + 50 * 2 / 3) / 101)
    assert interpolated_ap(torch.zeros(0), torch.zeros(0)) == 0.0


def test_confusion_matrix_has_background_row_and_column() -> None:
    preds = [{"boxes": t([[0, 0, 10, 10], [20, 20, 30, 30], [60, 60, 70, 70], [80, 80, 90, 90]]),
              "scores": torch.tensor([0.9, 0.9, 0.9, 0.1]), "labels": torch.tensor([1, 2, 2, 1])}]  # fmt: skip
    targets = [{"boxes": t([[0, 0, 10, 10], [20, 20, 30, 30], [40, 40, 50, 50]]), "labels": torch.tensor([1, 1, 2])}]
    cm = detection_confusion_matrix(preds, targets, num_classes=2, score_threshold=0.5)
    expected = torch.tensor([
        [0, 0, 1],   # background: one detection (class 2) on no object; the 0.1 one is below threshold
        [0, 1, 1],   # class-1 objects: one found as 1, one found as 2
        [1, 0, 0],   # class-2 object missed
    ])  # fmt: skip
    assert torch.equal(cm, expected)


def perturbed_coco_subset(annotation_file: Path, seed: int = 0) -> tuple[list, list, list[int], dict]:
    """Ground truth of the real COCO subset (original category ids) and predictions made from it:
    jittered boxes, random scores, some class swaps, some misses, some extra boxes."""
    data = json.loads(annotation_file.read_text())
    g = torch.Generator().manual_seed(seed)
    cat_ids = [c["id"] for c in data["categories"]]
    preds, targets, image_ids = [], [], []
    for image in data["images"]:
        anns = [a for a in data["annotations"] if a["image_id"] == image["id"]]
        boxes = torch.tensor([a["bbox"] for a in anns], dtype=torch.float64).reshape(-1, 4)
        boxes[:, 2:] += boxes[:, :2]
        labels = torch.tensor([a["category_id"] for a in anns], dtype=torch.long)
        targets.append({"boxes": boxes, "labels": labels, "iscrowd": torch.tensor([a["iscrowd"] for a in anns]),
                        "area": torch.tensor([a["area"] for a in anns], dtype=torch.float64)})  # fmt: skip
        keep = torch.rand(len(boxes), generator=g) > 0.15
        jitter = (
            torch.randn(boxes.shape, generator=g, dtype=torch.float64)
            * (boxes[:, 2:] - boxes[:, :2]).repeat(1, 2)
            * 0.1
        )
        p_boxes, p_labels = (boxes + jitter)[keep], labels[keep].clone()
        swap = torch.rand(len(p_labels), generator=g) < 0.1
        p_labels[swap] = torch.tensor(cat_ids)[torch.randint(len(cat_ids), (int(swap.sum()),), generator=g)]
        extra = torch.rand(3, 4, generator=g, dtype=torch.float64) * 200
        extra[:, 2:] += extra[:, :2] + 5
        p_boxes = torch.cat([p_boxes, extra])
        p_labels = torch.cat([p_labels, torch.tensor(cat_ids)[torch.randint(len(cat_ids), (3,), generator=g)]])
        preds.append({"boxes": p_boxes, "scores": torch.rand(len(p_boxes), generator=g, dtype=torch.float64),
                      "labels": p_labels})  # fmt: skip
        image_ids.append(image["id"])
    return preds, targets, image_ids, data


def pycocotools_stats(annotation_file: Path, results: np.ndarray) -> np.ndarray:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    gt = COCO(str(annotation_file))
    evaluator = COCOeval(gt, gt.loadRes(results), "bbox")
    evaluator.evaluate()
    evaluator.accumulate()
    evaluator.summarize()
    return np.asarray(evaluator.stats)


@pytest.mark.parametrize("backend", ["faster_coco_eval", "pycocotools"])
def test_map_equals_pycocotools_on_real_coco_subset(coco_subset: tuple[Path, Path], backend: str) -> None:
    annotation_file, _ = coco_subset
    preds, targets, image_ids, _ = perturbed_coco_subset(annotation_file)
    ours = coco_map(preds, targets, backend=backend, image_ids=image_ids)
    _, results = to_coco_dicts(preds, targets, image_ids=image_ids)
    reference = pycocotools_stats(annotation_file, results)
    assert 0.2 < reference[0] < 0.95  # a non-trivial case: neither all right nor all wrong
    np.testing.assert_allclose([ours[k] for k in COCO_STAT_NAMES], reference, atol=1e-6, rtol=0)


def test_map_through_contiguous_labels_round_trips_to_coco_ids(coco_subset: tuple[Path, Path]) -> None:
    # the module's path: COCO ids -> labels 1..80 -> metric with category_ids -> COCO ids again
    annotation_file, _ = coco_subset
    preds, targets, image_ids, data = perturbed_coco_subset(annotation_file, seed=1)
    cat_ids = sorted(c["id"] for c in data["categories"])
    to_label = {c: i + 1 for i, c in enumerate(cat_ids)}

    def relabel(d: dict) -> dict:
        return {**d, "labels": torch.tensor([to_label[int(c)] for c in d["labels"]], dtype=torch.long)}

    metric = COCOMetrics(num_classes=len(cat_ids))
    metric.update([relabel(p) for p in preds], [relabel(tg) for tg in targets])
    by_label = metric.compute()
    by_id = coco_map(preds, targets, image_ids=image_ids)
    for key in COCO_STAT_NAMES:
        assert by_label[key] == pytest.approx(by_id[key], abs=1e-9)
    for label, values in by_label["per_class"].items():
        assert values["ap"] == pytest.approx(by_id["per_class"][cat_ids[label - 1]]["ap"], abs=1e-9)


def test_map_equals_pycocotools_with_crowd_and_empty_images(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(3)
    preds, targets = [], []
    for i in range(12):
        n = int(torch.randint(0, 5, (1,), generator=g)) if i % 4 else 0  # every 4th image has no objects
        boxes = torch.rand(n, 4, generator=g) * 100
        boxes[:, 2:] = boxes[:, :2] + 5 + torch.rand(n, 2, generator=g) * 80
        crowd = (torch.rand(n, generator=g) < 0.25).long()
        labels = torch.randint(1, 4, (n,), generator=g)
        targets.append({"boxes": boxes, "labels": labels, "iscrowd": crowd})
        k = int(torch.randint(0, 6, (1,), generator=g)) if i % 5 else 0  # every 5th image has no detections
        jitter = torch.randn(n, 4, generator=g) * 6
        extra = torch.rand(k, 4, generator=g) * 100
        extra[:, 2:] += extra[:, :2] + 10
        preds.append({"boxes": torch.cat([boxes + jitter, extra]), "scores": torch.rand(n + k, generator=g),
                      "labels": torch.cat([labels, torch.randint(1, 4, (k,), generator=g)])})  # fmt: skip
    ours = coco_map(preds, targets)
    gt, results = to_coco_dicts(preds, targets)
    gt["categories"] = [{"id": c} for c in (1, 2, 3)]
    path = tmp_path / "gt.json"
    path.write_text(json.dumps(gt))
    assert any(int(tg["iscrowd"].sum()) for tg in targets) and any(len(tg["boxes"]) == 0 for tg in targets)
    np.testing.assert_allclose([ours[k] for k in COCO_STAT_NAMES], pycocotools_stats(path, results), atol=1e-6, rtol=0)
    np.testing.assert_allclose(
        run_cocoeval(gt, results, "pycocotools").stats, run_cocoeval(gt, results, "faster_coco_eval").stats, atol=1e-6
    )


def test_no_detections_scores_zero_not_an_error() -> None:
    targets = [{"boxes": t([[0, 0, 10, 10]]), "labels": torch.tensor([1])}]
    preds = [{"boxes": t([]), "scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.long)}]
    result = coco_map(preds, targets)
    assert result["map"] == 0.0 and result["map_50"] == 0.0


def test_perfect_detections_score_one() -> None:
    targets = [{"boxes": t([[0, 0, 40, 40], [50, 50, 90, 95]]), "labels": torch.tensor([1, 2])}]
    preds = [{"boxes": targets[0]["boxes"], "scores": torch.tensor([0.9, 0.8]), "labels": torch.tensor([1, 2])}]
    result = COCOMetrics(num_classes=2, extended=True)
    result.update(preds, targets)
    out = result.compute()
    assert out["map"] == pytest.approx(1.0) and out["map_50"] == pytest.approx(1.0)
    assert torch.equal(out["confusion_matrix"], torch.tensor([[0, 0, 0], [0, 1, 0], [0, 0, 1]]))
    assert out["pr_curves"][1].ap == pytest.approx(1.0)
