"""COCO's cap of detections per image in the mask AP: COCO's 100 by default, a setting above it, and a logged note
when images hold more than the cap (a DSB2018 image holds up to 289 nuclei)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from zoo.core.coco import COCO_SUMMARY, coco_stats, coco_summary, run_cocoeval
from zoo.core.instance_metrics import COCOMaskMetrics


def _grid_of_squares(count: int, side: int = 6, gap: int = 2) -> torch.Tensor:
    """A label image with ``count`` separate squares (ids 1..count)."""
    per_row = int(np.ceil(np.sqrt(count)))
    size = per_row * (side + gap) + gap
    labels = torch.zeros(size, size, dtype=torch.int32)
    for k in range(count):
        r, c = divmod(k, per_row)
        y, x = gap + r * (side + gap), gap + c * (side + gap)
        labels[y : y + side, x : x + side] = k + 1
    return labels


def _perfect_update(metric: COCOMaskMetrics, count: int) -> None:
    labels = _grid_of_squares(count)
    scores = torch.linspace(1.0, 0.5, count)
    metric.update([{"labels_image": labels, "scores": scores}], [{"labels_image": labels}])


@pytest.mark.parametrize("backend", ["faster_coco_eval", "pycocotools"])
def test_coco_stats_read_from_the_arrays_equal_cocoevals_own_summary(backend):
    metric = COCOMaskMetrics(backend=backend)
    truth = _grid_of_squares(12)
    pred = truth.clone()
    pred[pred == 3] = 0  # a missed object
    pred[:3, :3] = 13  # a false positive
    metric.update([{"labels_image": pred, "scores": torch.rand(12, generator=torch.Generator().manual_seed(0))}],
                  [{"labels_image": truth}])  # fmt: skip
    gt, results = metric.coco_inputs()
    evaluator = run_cocoeval(gt, results, backend, iou_type="segm")
    stats = coco_stats(evaluator)
    assert list(stats) == [row[0] for row in COCO_SUMMARY]
    np.testing.assert_allclose(list(stats.values()), evaluator.stats[:12], atol=1e-12)
    assert 0.5 < stats["map"] < 1.0


@pytest.mark.parametrize("backend", ["faster_coco_eval", "pycocotools"])
def test_cocos_cap_of_100_leaves_objects_out_of_the_mask_ap_and_says_so(backend):
    metric = COCOMaskMetrics(backend=backend)
    _perfect_update(metric, 150)
    with pytest.warns(UserWarning, match=r"1 of 1 images hold more than 100 detections \(at most 150\).*"
                                         r"50 detections left out.*mask_max_detections: 150"):  # fmt: skip
        result = metric.compute()
    assert result["mar_100"] == pytest.approx(100 / 150)
    assert result["map"] < 0.7  # recall stops at 2/3: the 50 lowest-scoring perfect masks do not count
    assert result["max_detections"] == 100


@pytest.mark.parametrize("backend", ["faster_coco_eval", "pycocotools"])
def test_a_cap_above_the_objects_counts_every_one_without_a_note(backend):
    metric = COCOMaskMetrics(backend=backend, max_detections=300)
    _perfect_update(metric, 150)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = metric.compute()
    assert result["map"] == pytest.approx(1.0)
    assert result["mar_300"] == pytest.approx(1.0)
    assert "mar_100" not in result
    assert [row[0] for row in coco_summary(300)] == list(result)[:12]


@pytest.mark.parametrize("cap", [5, 0, 12.5, True])
def test_a_cap_below_ten_or_not_an_integer_is_refused_with_the_fix(cap):
    with pytest.raises(ValueError, match="at least 10.*Fix"):
        COCOMaskMetrics(max_detections=cap)


def test_the_instance_modules_pass_their_cap_to_both_mask_metrics():
    from zoo.detection import InstanceDetector
    from zoo.segmentation import InstanceSegmenter

    segmenter = InstanceSegmenter(network="unet_same", num_classes=3, network_kwargs={"base_channels": 2, "depth": 1},
                                  mask_max_detections=300)  # fmt: skip
    detector = InstanceDetector(mask_max_detections=300)
    assert segmenter.val_mask_coco.max_detections == segmenter.test_mask_coco.max_detections == 300
    assert detector.val_masks.max_detections == detector.test_masks.max_detections == 300
    assert segmenter.hparams.mask_max_detections == detector.hparams.mask_max_detections == 300


def test_the_box_metrics_note_images_beyond_cocos_100_detections():
    from zoo.detection.metrics import COCOMetrics

    metric = COCOMetrics(num_classes=1)
    boxes = torch.tensor([[i * 3.0, 0.0, i * 3.0 + 2.0, 2.0] for i in range(120)])
    labels = torch.ones(120, dtype=torch.long)
    metric.update([{"boxes": boxes, "scores": torch.linspace(1, 0.5, 120), "labels": labels}],
                  [{"boxes": boxes, "labels": labels}])  # fmt: skip
    with pytest.warns(UserWarning, match=r"box mAP: 1 of 1 images hold more than 100 detections.*COCO's definition"):
        result = metric.compute()
    assert result["mar_100"] == pytest.approx(100 / 120)
