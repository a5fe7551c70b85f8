"""Pixel error and the ISBI foreground-restricted Rand error (checked against scikit-image)."""

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import ndimage

from zoo.segmentation import PixelError, RandError, adapted_rand_error, pixel_error, rand_error

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
