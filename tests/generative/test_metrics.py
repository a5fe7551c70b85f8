"""FID (Fréchet distance on pluggable features) and the leave-one-out 1-NN two-sample test."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from torchmetrics.image.fid import FrechetInceptionDistance

from zoo.classification import ImageClassifier
from zoo.generative import (
    ClassifierFeatures,
    FeatureShapeError,
    SingularCovarianceError,
    fid,
    frechet_distance,
    one_nn_accuracy,
)


def correlated(n: int, d: int, seed: int, shift: float = 0.0, scale: float = 1.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    mixing = torch.randn(d, d, generator=torch.Generator().manual_seed(99)) / d**0.5
    return (torch.randn(n, d, generator=g) @ mixing) * scale + shift


class Identity(nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        self.num_features = d

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def torchmetrics_fid(real: torch.Tensor, fake: torch.Tensor, feature: nn.Module) -> float:
    metric = FrechetInceptionDistance(feature=feature)
    metric.update(real, real=True)
    metric.update(fake, real=False)
    return float(metric.compute())


def test_fid_of_a_set_with_itself_is_zero():
    x = correlated(400, 32, seed=0, scale=3.0)
    assert float(frechet_distance(x, x)) == pytest.approx(0.0, abs=1e-6)
    assert float(frechet_distance(x, x.clone())) == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("shift, scale", [(0.0, 1.0), (0.5, 1.0), (0.0, 2.0), (1.0, 0.3)])
def test_fid_agrees_with_torchmetrics_on_the_same_features(shift, scale):
    real, fake = correlated(600, 24, seed=1), correlated(500, 24, seed=2, shift=shift, scale=scale)
    ours = float(frechet_distance(real, fake))
    assert ours == pytest.approx(torchmetrics_fid(real, fake, Identity(24)), abs=1e-3)
    assert ours > 0


def test_fid_of_gaussians_with_equal_covariance_is_the_squared_mean_distance():
    # eq. 6 with S_r = S_g: the trace terms cancel exactly, leaving ||mu_r - mu_g||^2.
    x = correlated(500, 8, seed=3)
    shift = torch.tensor([1.0, -2.0] + [0.0] * 6)
    assert float(frechet_distance(x, x + shift)) == pytest.approx(5.0, rel=1e-6)


def test_fid_with_classifier_features_agrees_with_torchmetrics_using_the_same_extractor():
    torch.manual_seed(0)
    extractor = ClassifierFeatures(ImageClassifier(network="lenet5"))
    assert extractor.layer_name == "classifier.3" and extractor.num_features == 84
    real, fake = torch.rand(200, 1, 28, 28), torch.rand(200, 1, 28, 28).pow(2)
    ours = float(fid(real, fake, extractor))
    assert ours == pytest.approx(torchmetrics_fid(real, fake, extractor), abs=1e-3)
    assert float(fid(real, real, extractor)) == pytest.approx(0.0, abs=1e-4)


def test_fid_needs_more_samples_than_feature_dimensions_and_says_how_many():
    with pytest.raises(SingularCovarianceError, match=r"50 samples of 64-dimensional.*at least 65 samples"):
        frechet_distance(torch.randn(50, 64), torch.randn(500, 64))
    with pytest.raises(SingularCovarianceError, match="generated set"):
        frechet_distance(torch.randn(500, 64), torch.randn(64, 64))
    frechet_distance(torch.randn(65, 64), torch.randn(65, 64))  # the minimum passes


def test_a_feature_extractor_whose_output_is_not_2d_is_rejected():
    conv = nn.Conv2d(1, 4, 3)  # (N, 4, 26, 26): forgot to pool and flatten
    with pytest.raises(FeatureShapeError, match=r"shape \(10, 4, 26, 26\).*\(N samples, D features\)"):
        fid(torch.rand(10, 1, 28, 28), torch.rand(10, 1, 28, 28), conv)
    with pytest.raises(FeatureShapeError, match="same feature extractor"):
        frechet_distance(torch.randn(100, 5), torch.randn(100, 6))


def test_one_nn_accuracy_is_near_half_for_two_samples_of_the_same_distribution():
    a, b = correlated(500, 10, seed=4), correlated(500, 10, seed=5)
    assert abs(float(one_nn_accuracy(a, b)) - 0.5) < 0.06


def test_one_nn_accuracy_is_one_for_separable_sets():
    a, b = correlated(300, 10, seed=6), correlated(300, 10, seed=7, shift=20.0)
    assert float(one_nn_accuracy(a, b)) == 1.0


def test_one_nn_accuracy_is_leave_one_out():
    # Without leaving each sample out it would be its own neighbour and the accuracy always 1.
    a = torch.tensor([[0.0], [10.0]])
    b = torch.tensor([[0.1], [10.1]])
    assert float(one_nn_accuracy(a, b)) == 0.0  # each point's nearest other point is of the other set


def test_one_nn_accuracy_is_near_half_for_two_halves_of_real_mnist(data_root):
    from datamodules import MNISTDataModule

    dm = MNISTDataModule(data_dir=str(data_root), download=False, normalization="unit")
    dm.setup("test")
    images = dm.test_set.images[torch.randperm(10_000, generator=torch.Generator().manual_seed(0))[:2000]]
    assert abs(float(one_nn_accuracy(images[:1000], images[1000:])) - 0.5) < 0.05
