"""Instances from a semantic network's probabilities (seeded watershed), the three-class target and the
mask-to-label conversion, on hand-built discs and on a real DSB2018 image."""

import logging

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import ndimage

from datamodules.instance_targets import BOUNDARY, INTERIOR, labels_from_masks, three_class_target
from zoo.core.instance_metrics import dsb_score, match_instances
from zoo.segmentation.instances import InstancePostprocessor, instances_from_probabilities

pytest.importorskip("skimage")

H, W = 48, 64


def disc(cy: float, cx: float, r: float) -> np.ndarray:
    yy, xx = np.mgrid[:H, :W]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r**2


def two_touching_discs() -> np.ndarray:
    """Label image: disc 1 (r 10 at x 20) and disc 2 (r 10 at x 40) meeting along the column x = 30."""
    labels = np.zeros((H, W), np.int64)
    labels[disc(24, 20, 10.5) & (np.arange(W) < 30)] = 1
    labels[disc(24, 40, 10.5) & (np.arange(W) >= 30)] = 2
    return labels


def matched_ious(pred: np.ndarray, true: np.ndarray) -> np.ndarray:
    """For each true object, its best IoU with a predicted one."""
    return match_instances(pred, true).iou.max(axis=0)


def test_three_class_probabilities_split_two_touching_discs_at_their_boundary():
    true = two_touching_discs()
    foreground = true > 0
    assert ndimage.label(foreground)[1] == 1  # one blob: only the boundary class can cut it
    # hand-built network output: background outside, boundary within 2 px of the contact line, interior else
    near_contact = np.abs(np.arange(W) - 29.5)[None, :].repeat(H, 0) < 2
    probs = np.zeros((3, H, W), np.float32)
    probs[0] = np.where(foreground, 0.05, 0.9)
    probs[2] = np.where(foreground & near_contact, 0.8, 0.05)
    probs[1] = 1 - probs[0] - probs[2]
    probs[2][~foreground] = 0.05
    probs[1][~foreground] = 0.05
    labels = instances_from_probabilities(torch.from_numpy(probs), mode="three_class")
    assert labels.dtype == np.int32
    assert set(np.unique(labels)) == {0, 1, 2}
    assert matched_ious(labels, true).min() > 0.95
    assert np.array_equal(labels > 0, foreground)  # grown back over the boundary to the full extent
    # without the boundary class the same blob is one object: the test above checks the boundary's effect
    merged = probs.copy()
    merged[1][foreground], merged[2][foreground] = 0.9, 0.05
    assert instances_from_probabilities(merged, mode="three_class").max() == 1


@pytest.mark.parametrize("seeds", [{"seed_method": "maxima"}, {"seed_method": "erosion", "erosion": 5}])
def test_two_class_distance_watershed_splits_two_overlapping_discs_of_different_centres(seeds):
    small, large = disc(24, 18, 9), disc(24, 37, 11)
    foreground = small | large
    assert ndimage.label(foreground)[1] == 1
    p = foreground.astype(np.float32) * 0.9 + 0.05
    labels = instances_from_probabilities(np.stack([1 - p, p]), mode="two_class", **seeds)
    true = np.where(small, 1, np.where(large, 2, 0))
    assert labels.max() == 2
    assert matched_ious(labels, true).min() > 0.9
    # the same from a single (H, W) cell probability
    assert np.array_equal(instances_from_probabilities(p, mode="two_class", **seeds), labels)


def test_min_size_removes_a_tiny_blob_to_background():
    p = (disc(20, 20, 8) | disc(40, 50, 1)).astype(np.float32)  # a disc and a 5-pixel blob
    probs = np.stack([1 - p, p])
    kept = instances_from_probabilities(probs, mode="two_class", min_size=0)
    assert kept.max() == 2
    removed = instances_from_probabilities(probs, mode="two_class", min_size=6)
    assert removed.max() == 1
    assert (removed[disc(40, 50, 1)] == 0).all()  # set to background, not given to the disc
    assert (removed > 0).sum() == disc(20, 20, 8).sum()


def test_labels_are_numbered_one_to_k_after_removals():
    p = np.zeros((H, W), np.float32)
    for i, x in enumerate([8, 20, 32, 44, 56]):
        p[disc(8, x, 2)] = 1  # small ones first in raster order: they get the first seed ids
        if i % 2 == 0:
            p[disc(30, x, 5)] = 1
    labels = instances_from_probabilities(p, mode="two_class", erosion=1, min_size=20)
    assert np.unique(labels).tolist() == [0, 1, 2, 3]
    assert (labels[:14] == 0).all()


def test_a_foreground_component_without_seed_is_kept_as_one_instance():
    # a small object predicted as all boundary (no interior seed) next to a normal one
    probs = np.zeros((3, H, W), np.float32)
    probs[0] = 1
    big, small = disc(20, 20, 8), disc(20, 45, 3)
    probs[:, big] = np.array([0, 0.9, 0.1])[:, None]
    probs[:, small] = np.array([0.1, 0.1, 0.8])[:, None]
    labels = instances_from_probabilities(probs, mode="three_class")
    assert labels.max() == 2
    assert len(np.unique(labels[small])) == 1 and labels[small][0] > 0


def test_logits_are_refused_and_from_logits_applies_the_softmax():
    inside = torch.from_numpy(disc(20, 20, 8))
    logits = torch.zeros(1, 3, H, W)
    logits[0, 0][~inside] = 5.0
    logits[0, 1][inside] = 5.0
    with pytest.raises(ValueError, match="softmax"):
        instances_from_probabilities(logits[0] * 3 - 1, mode="three_class")
    post = InstancePostprocessor(mode="three_class")
    (labels,) = post.from_logits(logits)
    assert labels.max() == 1 and (labels > 0).sum() == disc(20, 20, 8).sum()
    assert post.num_classes == 3
    with pytest.raises(ValueError, match="interior_threshold"):
        InstancePostprocessor(interior_threshold=1.5)


def test_three_class_target_puts_boundary_pixels_between_touching_discs():
    true = two_touching_discs()
    target = three_class_target(true, boundary_width=2)
    assert target.dtype == np.uint8
    assert (target[true == 0] == 0).all()
    row = target[24]
    # the two pixels on each side of the contact line (x = 28, 29 | 30, 31) are boundary, interior beyond
    assert row[26:34].tolist() == [INTERIOR, INTERIOR, BOUNDARY, BOUNDARY, BOUNDARY, BOUNDARY, INTERIOR, INTERIOR]
    # the interiors are two 8-connected components, one inside each disc
    interiors, n = ndimage.label(target == INTERIOR, np.ones((3, 3)))
    assert n == 2
    assert {len(np.unique(true[interiors == k])) for k in (1, 2)} == {1}
    # a nucleus cut by the image border gets no boundary along the border
    cut = np.zeros((10, 10), np.int64)
    cut[0:5, 2:8] = 1
    assert (three_class_target(cut, 1)[0, 3:7] == INTERIOR).all()


def test_labels_from_masks_gives_overlapping_pixels_to_the_smaller_mask_and_logs_it(caplog):
    big = np.zeros((10, 10), np.uint8)
    big[1:7, 1:7] = 255  # 36 px
    small = np.zeros((10, 10), np.uint8)
    small[5:9, 5:9] = 255  # 16 px, 4 of them inside big
    with caplog.at_level(logging.WARNING, logger="datamodules.instance_targets"):
        labels, overlap = labels_from_masks([small, big], return_overlap=True)
    assert overlap == 4
    assert (labels[5:9, 5:9] == 1).all()  # the smaller mask (index 0 -> id 1) keeps all its pixels
    assert (labels == 2).sum() == 36 - 4
    assert "4 pixels" in caplog.text and "smallest" in caplog.text
    # order does not matter: the rule is by size
    assert np.array_equal(labels_from_masks(np.stack([big, small])), np.where(labels == 1, 2, np.where(labels, 1, 0)))
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="datamodules.instance_targets"):
        _, overlap = labels_from_masks([big], return_overlap=True)
    assert overlap == 0 and not caplog.text


def test_labels_from_masks_breaks_ties_for_the_earlier_mask_and_reports_lost_duplicates(caplog):
    a = np.zeros((4, 4), bool)
    a[0:2, 0:2] = True
    b = np.roll(a, 1, axis=1)  # same size, overlapping by one column
    assert (labels_from_masks([a, b])[0:2, 1] == 1).all()
    with caplog.at_level(logging.WARNING, logger="datamodules.instance_targets"):
        labels = labels_from_masks([a, a.copy()])
    assert np.unique(labels).tolist() == [0, 1]
    assert "lost every pixel" in caplog.text


def test_a_real_dsb2018_image_round_trips_through_the_three_class_target(dsb_root, caplog):
    # 28 nuclei, several touching, and two masks that overlap by 2 pixels (an upstream quirk)
    image_id = "0a7d30b252359a10fd298b638b90cb9ada3acced4e0c0e5a3692013f432ee4e9"
    mask_dir = dsb_root / "stage1_train" / image_id / "masks"
    masks = [np.asarray(Image.open(p)) for p in sorted(mask_dir.glob("*.png"))]
    with caplog.at_level(logging.WARNING, logger="datamodules.instance_targets"):
        true, overlap = labels_from_masks(masks, return_overlap=True)
    assert overlap == 2 and "2 pixels" in caplog.text
    target = three_class_target(true)
    perfect = np.eye(3, dtype=np.float32)[target].transpose(2, 0, 1)  # one-hot: the ideal network output
    labels = instances_from_probabilities(perfect, mode="three_class")
    score = dsb_score(labels, true)
    assert score > 0.9
    # the touching nuclei make this a real test: their connected components alone score far lower
    assert dsb_score(ndimage.label(true > 0)[0], true) < 0.75
