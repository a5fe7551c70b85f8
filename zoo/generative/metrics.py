"""Sample-quality metrics: the Fréchet distance (FID) on any feature extractor and the
leave-one-out 1-nearest-neighbour two-sample test.

Hand-written because torchmetrics' ``FrechetInceptionDistance`` accumulates its statistics
inside a metric object tied to one extractor, while a zoo model needs the distance of two feature
sets it already has (the same features also feed the 1-NN test); torchmetrics has no 1-NN
two-sample test. ``frechet_distance`` agrees with torchmetrics' FID on the same features (tested).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn as nn

FeatureExtractor = Callable[[torch.Tensor], torch.Tensor]


class FeatureShapeError(ValueError):
    """A feature extractor returned something other than ``(N, D)`` features."""


class SingularCovarianceError(ValueError):
    """Too few samples for a full-rank covariance of the features."""


def _check_features(features: torch.Tensor, name: str) -> torch.Tensor:
    if features.ndim != 2:
        raise FeatureShapeError(
            f"{name} features have shape {tuple(features.shape)}; the Fréchet distance and the 1-NN test need "
            f"2-D features (N samples, D features). Fix: make the feature extractor return (N, D), e.g. "
            f"end it with global pooling and nn.Flatten()."
        )
    return features


def _mean_cov(features: torch.Tensor, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    n, d = features.shape
    if n < d + 1:
        # N samples give a covariance of rank at most N - 1: below D + 1 it is singular and the
        # matrix square root of eq. 6 is ill-defined (FID then depends on rounding noise).
        raise SingularCovarianceError(
            f"{name} set has {n} samples of {d}-dimensional features: its covariance is singular "
            f"(rank <= {n - 1} < {d}). The Fréchet distance needs at least {d + 1} samples per set "
            f"(many more for a stable estimate, e.g. {max(10 * d, 1000)}); pass more samples or use a "
            f"feature extractor with fewer features."
        )
    x = features.double()
    mean = x.mean(dim=0)
    centred = x - mean
    cov = centred.T @ centred / (n - 1)  # unbiased, as torchmetrics and the reference implementation
    return mean, cov


def _sqrtm_psd(matrix: torch.Tensor) -> torch.Tensor:
    """Square root of a symmetric positive semi-definite matrix by its eigendecomposition."""
    values, vectors = torch.linalg.eigh(matrix)
    return (vectors * values.clamp_min(0).sqrt()) @ vectors.T


def frechet_distance(real_features: torch.Tensor, fake_features: torch.Tensor) -> torch.Tensor:
    """Fréchet distance of Gaussians fitted to two feature sets (Heusel et al. 2017, eq. 6):

    ``d^2 = ||mu_r - mu_g||^2 + Tr(S_r + S_g - 2 (S_r S_g)^(1/2))``.

    With Inception pool3 features this is the FID; the zoo's default on MNIST-like data uses a
    zoo classifier's penultimate features (``zoo.generative.features``). ``Tr((S_r S_g)^(1/2))`` is
    computed as ``Tr((S_r^(1/2) S_g S_r^(1/2))^(1/2))`` (similar matrices have the same
    eigenvalues), whose argument is symmetric PSD: stable, real, no ``scipy.linalg.sqrtm``.

    Args:
        real_features: ``(N, D)``.
        fake_features: ``(M, D)``; N and M must both exceed D (else :class:`SingularCovarianceError`).

    Returns:
        A float64 scalar tensor.
    """
    _check_features(real_features, "real")
    _check_features(fake_features, "generated")
    if real_features.shape[1] != fake_features.shape[1]:
        raise FeatureShapeError(
            f"real features have {real_features.shape[1]} dimensions but generated ones {fake_features.shape[1]}: "
            "both sets must come from the same feature extractor."
        )
    mu_r, cov_r = _mean_cov(real_features, "real")
    mu_g, cov_g = _mean_cov(fake_features, "generated")
    root_r = _sqrtm_psd(cov_r)
    cross = _sqrtm_psd(root_r @ cov_g @ root_r)
    distance = (mu_r - mu_g).square().sum() + cov_r.trace() + cov_g.trace() - 2 * cross.trace()
    return distance.clamp_min(0)  # rounding can leave a tiny negative value for identical sets


@torch.no_grad()
def extract_features(
    extractor: FeatureExtractor, images: torch.Tensor, batch_size: int = 500
) -> torch.Tensor:
    """Run ``extractor`` over ``images`` in batches; the result must be ``(N, D)``."""
    was_training = extractor.training if isinstance(extractor, nn.Module) else None
    if isinstance(extractor, nn.Module):
        extractor.eval()
    try:
        parts = [extractor(images[i : i + batch_size]) for i in range(0, len(images), batch_size)]
    finally:
        if was_training:
            extractor.train()
    for part in parts:
        _check_features(part, f"{type(extractor).__name__}'s")
    return torch.cat(parts).float()


def fid(
    real_images: torch.Tensor,
    fake_images: torch.Tensor,
    extractor: FeatureExtractor,
    batch_size: int = 500,
) -> torch.Tensor:
    """FID of two image sets under any feature extractor (Heusel et al. 2017, eq. 6).

    ``extractor`` maps a batch of images (in whatever range it expects; the zoo's extractors take
    [0, 1]) to ``(N, D)`` features: :class:`zoo.generative.features.ClassifierFeatures` (the
    default for MNIST-like data) or :class:`zoo.generative.features.InceptionFeatures`.
    """
    return frechet_distance(
        extract_features(extractor, real_images, batch_size), extract_features(extractor, fake_images, batch_size)
    )


def one_nn_accuracy(real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """Leave-one-out accuracy of a 1-nearest-neighbour classifier telling real from generated samples.

    The classifier two-sample test of Lopez-Paz & Oquab 2017 (sec. 2-3) with a 1-NN classifier,
    evaluated leave-one-out over the pooled samples as proposed for GANs by Xu et al. 2018
    ("An empirical study on evaluation metrics of generative adversarial networks", sec. 3.6).
    Each of the N + M samples is labelled by its nearest other sample (Euclidean distance); the
    accuracy is the fraction labelled correctly. 0.5 means the two sets cannot be told apart
    (ideal, with N = M); 1.0 means they are separable (e.g. a generator that memorised nothing
    real-looking); well below 0.5 means the generated samples copy the real ones.

    Args:
        real: ``(N, ...)`` samples (images or features; flattened to vectors).
        fake: ``(M, ...)``.

    Returns:
        A float scalar tensor in [0, 1].
    """
    if len(real) < 1 or len(fake) < 1 or len(real) + len(fake) < 3:
        raise ValueError(f"the 1-NN test needs samples in both sets (got {len(real)} real, {len(fake)} generated)")
    x = torch.cat([real.flatten(1), fake.flatten(1)]).double()
    labels = torch.cat([torch.ones(len(real)), torch.zeros(len(fake))])
    distances = torch.cdist(x, x)
    distances.fill_diagonal_(float("inf"))  # leave one out: a sample is not its own neighbour
    nearest = distances.argmin(dim=1)
    return (labels[nearest] == labels).float().mean()
