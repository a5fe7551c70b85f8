"""Pixel error and the ISBI foreground-restricted Rand error (checked against scikit-image)."""

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import ndimage

from zoo.segmentation import ISBIPixelError, PixelError, RandError, adapted_rand_error, pixel_error, rand_error

skimage_metrics = pytest.importorskip("skimage.metrics")


def test_adapted_rand_error_agrees_with_scikit_image_on_random_labels():
    rng = np.random.default_rng(0)
    for _ in range(5):
        t = rng.integers(0, 7, (40, 50))
        p = rng.integers(0, 9, (40, 50))
        np.testing.assert_allclose(adapted_rand_error(t, p), skimage_metrics.adapted_rand_error(t, p), rtol=1e-12)


def test_rand_error_agrees_with_scikit_image_on_isbi_labels(isbi_root):
    target = (np.asarray(Image.open(isbi_root / "train" / "label" / "0.png")) == 255).astype(np.int64)
    # a plausible prediction: the label with membranes thinned and some noise
    pred = ndimage.binary_dilation(target, iterations=1).astype(np.int64)
    rng = np.random.default_rng(0)
    flip = rng.random(target.shape) < 0.02
    pred[flip] = 1 - pred[flip]
    true_cells, pred_cells = ndimage.label(target)[0], ndimage.label(pred)[0]
    expected, _, _ = skimage_metrics.adapted_rand_error(true_cells, pred_cells)
    assert rand_error(pred, target) == pytest.approx(expected, rel=1e-12)
    assert rand_error(target, target) == pytest.approx(0.0, abs=1e-12)
    metric = RandError()
    metric.update(torch.from_numpy(np.stack([pred, target])), torch.from_numpy(np.stack([target, target])))
    assert metric.compute().item() == pytest.approx(expected / 2, rel=1e-6)


def test_pixel_error():
    target = torch.tensor([[0, 1], [1, 1]])
    preds = torch.tensor([[0, 0], [1, 1]])
    assert pixel_error(preds, target).item() == 0.25
    metric = PixelError()
    metric.update(preds, target)
    metric.update(target, target)
    assert metric.compute().item() == 0.125


def test_isbi_pixel_error_is_one_minus_the_best_f_score_over_thresholds_on_a_hand_computed_case():
    target = torch.tensor([[1, 1, 0, 0]])  # cell interior (the positive class) on the left
    probs = torch.tensor([[0.9, 0.45, 0.55, 0.1]])
    # t = 0: everything positive, F = 2/3; t = 0.1 ... 0.4: 0.9, 0.45, 0.55 positive, P = 2/3, R = 1, F = 0.8;
    # t = 0.5: 0.9, 0.55, F = 0.5; t = 0.6 ... 0.8: 0.9 alone, F = 2/3; t = 0.9, 1: nothing positive, F = 0
    metric = ISBIPixelError(foreground_class=1)
    metric.update(probs, target)
    assert metric.compute().item() == pytest.approx(0.2)
    assert metric.best_threshold == pytest.approx(0.1)
    assert pixel_error((probs > 0.5).long(), target).item() == 0.5  # the argmax definition is another number


def test_isbi_pixel_error_sums_counts_over_batches_like_the_challenge_code_over_slices():
    rng = np.random.default_rng(0)
    target = rng.random((3, 20, 30)) < 0.7
    probs = np.clip(target * 0.6 + rng.normal(0.2, 0.25, target.shape), 0, 1)

    def challenge(probs: np.ndarray, target: np.ndarray) -> float:  # getPixelErrorMaximalFScore(0.0, 1.0, 0.1)
        best = 0.0
        for t in np.linspace(0, 1, 11):
            predicted = probs > t
            tp, fp, fn = (predicted & target).sum(), (predicted & ~target).sum(), (~predicted & target).sum()
            precision, recall = tp / max(tp + fp, 1), tp / max(tp + fn, 1)
            if precision + recall:
                best = max(best, 2 * precision * recall / (precision + recall))
        return 1 - best

    metric = ISBIPixelError()
    for i in range(3):  # one slice per update
        metric.update(torch.from_numpy(probs[i]).float(), torch.from_numpy(target[i]).long())
    assert metric.compute().item() == pytest.approx(challenge(probs, target), abs=1e-6)
    perfect = ISBIPixelError()
    perfect.update(torch.from_numpy(target).float(), torch.from_numpy(target).long())
    assert perfect.compute().item() == 0.0
    with pytest.raises(ValueError, match="same shape"):
        metric.update(torch.zeros(2, 4, 4), torch.zeros(2, 4, 5, dtype=torch.long))
