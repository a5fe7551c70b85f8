"""The 2018 Data Science Bowl score (Caicedo et al. 2019): hand-computed cases, an independent loop-over-pairs
implementation, merge / split counts and DDP-style state merging."""

import math
from fractions import Fraction

import numpy as np
import pytest
import torch
from scipy import ndimage

from zoo.core.instance_metrics import DSB_IOU_THRESHOLDS, DSBScore, dsb_score, match_instances


def strip(*runs: tuple[int, int, int], width: int = 40) -> np.ndarray:
    """A (1, width) label image: each run (id, start, stop) paints pixels [start, stop) with id."""
    labels = np.zeros((1, width), np.int64)
    for value, start, stop in runs:
        labels[0, start:stop] = value
    return labels


def reference_dsb_score(pred: np.ndarray, true: np.ndarray) -> float | None:
    """The competition's definition written as plainly as possible: boolean masks, loops over object pairs,
    each object matched at most once; None for an image with no true and no predicted objects."""
    pred_ids = [i for i in np.unique(pred) if i != 0]
    true_ids = [j for j in np.unique(true) if j != 0]
    if not pred_ids and not true_ids:
        return None
    precisions = []
    for threshold in [Fraction(10 + k, 20) for k in range(10)]:  # exact: an IoU equal to t is no hit
        matched_pred, matched_true = set(), set()
        for j in true_ids:
            for i in pred_ids:
                if i in matched_pred:
                    continue
                a, b = pred == i, true == j
                iou = Fraction(int(np.logical_and(a, b).sum()), int(np.logical_or(a, b).sum()))
                if iou > threshold:  # strictly greater, as the competition says
                    matched_pred.add(i)
                    matched_true.add(j)
                    break
        tp = len(matched_true)
        fp = len(pred_ids) - len(matched_pred)
        fn = len(true_ids) - tp
        precisions.append(tp / (tp + fp + fn))
    return sum(precisions) / len(precisions)


def random_labels(rng: np.random.Generator, shape=(32, 40)) -> np.ndarray:
    """Blobs: connected components of smoothed noise above a threshold, with shuffled, gappy ids."""
    noise = ndimage.gaussian_filter(rng.random(shape), 2.0)
    labels, n = ndimage.label(noise > np.quantile(noise, 0.6))
    ids = rng.permutation(np.arange(1, n + 1)) * 3  # non-consecutive ids in random order
    return np.concatenate([[0], ids])[labels]


def perturbed(rng: np.random.Generator, true: np.ndarray) -> np.ndarray:
    """A plausible prediction: the truth shifted, some objects dropped, merged or eroded, some noise blobs."""
    pred = np.roll(true, (int(rng.integers(0, 2)), 0), axis=(0, 1)).copy()
    ids = [i for i in np.unique(pred) if i]
    for i in ids:
        r = rng.random()
        if r < 0.15:
            pred[pred == i] = 0  # missed
        elif r < 0.3 and ids:
            pred[pred == i] = ids[0]  # merged into another id (not necessarily touching)
        elif r < 0.45:
            eroded = ndimage.binary_erosion(pred == i)
            pred[(pred == i) & ~eroded] = 0
    spots = ndimage.label(rng.random(true.shape) > 0.997)[0]
    pred[(spots > 0) & (pred == 0)] = 1000 + spots[(spots > 0) & (pred == 0)]
    return pred


def test_a_perfect_prediction_scores_one_whatever_the_ids():
    true = strip((1, 0, 5), (2, 5, 9), (7, 20, 30))
    pred = strip((9, 0, 5), (3, 5, 9), (4, 20, 30))
    assert dsb_score(pred, true) == 1.0


def test_a_missed_object_scores_zero():
    assert dsb_score(strip(), strip((1, 3, 8))) == 0.0


def test_predictions_on_an_image_without_objects_score_zero():
    assert dsb_score(strip((1, 3, 8)), strip()) == 0.0


def test_iou_0_7_counts_as_a_hit_only_at_the_thresholds_below_it():
    true = strip((1, 0, 10))
    pred = strip((1, 0, 7))  # IoU = 7 / 10 exactly
    assert match_instances(pred, true).iou[0, 0] == 0.7
    # hits at t = 0.5, 0.55, 0.6, 0.65 (TP 1, FP 0, FN 0: precision 1); none at t = 0.7 (IoU must be
    # *greater* than t) ... 0.95 (TP 0, FP 1, FN 1: precision 0): (4 * 1 + 6 * 0) / 10
    assert dsb_score(pred, true) == pytest.approx(0.4, abs=1e-15)
    # IoU 18 / 25 = 0.72: one threshold more, 0.7
    assert dsb_score(strip((1, 0, 18)), strip((1, 0, 25))) == pytest.approx(0.5, abs=1e-15)


def test_a_false_positive_lowers_every_threshold_to_two_thirds():
    true = strip((1, 0, 5), (2, 10, 15))
    pred = strip((1, 0, 5), (2, 10, 15), (3, 30, 33))
    # at every threshold TP 2, FP 1, FN 0: 2 / 3
    assert dsb_score(pred, true) == pytest.approx(2 / 3, abs=1e-15)


def test_the_metric_averages_the_per_image_scores():
    metric = DSBScore()
    metric.update([strip((1, 0, 5))], [strip((1, 0, 5))])  # 1
    metric.update([strip()], [strip((1, 0, 5))])  # 0
    metric.update([strip((1, 0, 7))], [strip((1, 0, 10))])  # 0.4
    assert metric.compute().item() == pytest.approx((1 + 0 + 0.4) / 3, abs=1e-7)
    summary = metric.summary()
    assert summary["images"] == 3
    assert summary["score"] == pytest.approx(1.4 / 3, abs=1e-12)
    # score against threshold: image 3 counts 1 up to 0.65; the score is their mean
    assert summary["score_per_threshold"] == pytest.approx([2 / 3] * 4 + [1 / 3] * 6)
    assert np.mean(summary["score_per_threshold"]) == pytest.approx(summary["score"])
    # pooled counts at 0.5: TP 2, FP 0, FN 1 -> F1 = 4 / 5
    assert (summary["tp"][0], summary["fp"][0], summary["fn"][0]) == (2, 0, 1)
    assert summary["f1_50"] == pytest.approx(0.8)


def test_images_without_true_and_predicted_objects_are_skipped_unless_given_a_score():
    skipping = DSBScore()
    skipping.update([strip(), strip((1, 0, 5))], [strip(), strip((1, 0, 5))])
    assert skipping.compute().item() == 1.0
    assert skipping.summary()["images"] == 1 and skipping.summary()["empty_images"] == 1
    assert math.isnan(dsb_score(strip(), strip()))
    counting = DSBScore(empty_score=0.0)
    counting.update([strip(), strip((1, 0, 5))], [strip(), strip((1, 0, 5))])
    assert counting.compute().item() == 0.5
    assert dsb_score(strip(), strip(), empty_score=1.0) == 1.0


def test_agrees_with_a_loop_over_object_pairs_on_random_label_images():
    rng = np.random.default_rng(0)
    metric = DSBScore()
    expected = []
    for _ in range(12):
        true = random_labels(rng)
        pred = perturbed(rng, true)
        reference = reference_dsb_score(pred, true)
        assert dsb_score(pred, true) == pytest.approx(reference, abs=1e-12)
        expected.append(reference)
        metric.update([torch.from_numpy(pred)], [torch.from_numpy(true)])
    assert 0.1 < np.mean(expected) < 0.9  # the cases are neither trivial nor hopeless
    assert metric.summary()["score"] == pytest.approx(np.mean(expected), abs=1e-12)


def test_huge_sparse_ids_give_the_same_match_as_small_ones():
    rng = np.random.default_rng(1)
    true = random_labels(rng)
    pred = perturbed(rng, true)
    small = match_instances(pred, true)
    huge = match_instances(np.where(pred > 0, pred * 10**9 + 7, 0), np.where(true > 0, true + 2**40, 0))
    np.testing.assert_array_equal(small.iou, huge.iou)


def test_iou_matrix_and_merge_and_split_counts_on_a_hand_built_case():
    true = strip((1, 0, 4), (2, 4, 10), (3, 20, 30))
    # prediction 5 covers all of 1 and 2 (a merge); 3 is cut into 6 (20..25) and 8 (25..30) (a split)
    pred = strip((5, 0, 10), (6, 20, 25), (8, 25, 30))
    match = match_instances(pred, true)
    assert match.pred_ids.tolist() == [5, 6, 8] and match.true_ids.tolist() == [1, 2, 3]
    np.testing.assert_allclose(match.iou, [[0.4, 0.6, 0], [0, 0, 0.5], [0, 0, 0.5]])
    assert (match.merged, match.merged_objects) == (1, 2)
    assert (match.split, match.split_pieces) == (1, 2)
    # IoU 0.6 with object 2 is a hit up to 0.55; IoU 0.5 of the halves is no hit (not greater than 0.5)
    assert match.counts(0.5) == (1, 2, 2)
    assert match.counts(0.6) == (0, 3, 3)


def test_half_coverage_is_not_a_merge():
    true = strip((1, 0, 4), (2, 4, 8))
    # covers exactly half of object 2: more than half is required
    assert match_instances(strip((1, 0, 6)), true).merged == 0
    assert match_instances(strip((1, 0, 7)), true).merged == 1


def test_two_metrics_merged_equal_one_metric_over_all_images():
    rng = np.random.default_rng(2)
    pairs = [(perturbed(rng, t), t) for t in (random_labels(rng) for _ in range(6))]
    pairs.append((np.zeros((32, 40), np.int64), np.zeros((32, 40), np.int64)))  # an empty image
    whole = DSBScore()
    whole.update([p for p, _ in pairs], [t for _, t in pairs])
    first, second = DSBScore(), DSBScore()
    first.update([p for p, _ in pairs[:3]], [t for _, t in pairs[:3]])
    second.update([p for p, _ in pairs[3:]], [t for _, t in pairs[3:]])
    # what DDP's "sum" reduction does with the states of two processes
    summed = {name: getattr(first, name) + getattr(second, name) for name in first._defaults}
    first.merge_state(second)
    for name in whole._defaults:  # counts exactly, float sums up to the order of the additions
        torch.testing.assert_close(getattr(first, name), getattr(whole, name), rtol=1e-12, atol=0, msg=name)
        torch.testing.assert_close(summed[name], getattr(whole, name), rtol=1e-12, atol=0, msg=name)
    merged_summary, whole_summary = first.summary(), whole.summary()
    assert merged_summary.keys() == whole_summary.keys()
    for key, value in whole_summary.items():
        np.testing.assert_allclose(merged_summary[key], value, rtol=1e-12, err_msg=key)
    assert first.compute().item() == pytest.approx(whole.compute().item(), rel=1e-6)


def test_thresholds_below_one_half_are_rejected():
    with pytest.raises(ValueError, match="0.5"):
        DSBScore(thresholds=(0.3, 0.5))
    assert DSB_IOU_THRESHOLDS == (0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95)


def test_label_images_of_different_sizes_are_rejected():
    with pytest.raises(ValueError, match="differ in shape"):
        dsb_score(np.zeros((4, 4), int), np.zeros((4, 5), int))
