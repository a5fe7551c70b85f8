"""Generative models: autoencoders (plain, convolutional, denoising; anomaly scores), the VAE,
GAN and DCGAN, and sample-quality metrics (FID with a pluggable feature extractor, the 1-NN test).

The networks are in :mod:`zoo.generative.models` (registry family ``"generative"``); the training script of the
FID feature classifier is ``python -m zoo.evaluation.fid_features`` (not imported here: it needs the datamodules).
"""

import zoo.generative.models  # noqa: F401  (registers the family's networks before any module builds one)
from zoo.core.reliability import NonFiniteLossError
from zoo.generative.autoencoder import AutoEncoder, DenoisingAutoEncoder
from zoo.generative.base import GenerativeModule
from zoo.generative.features import ClassifierFeatures, InceptionFeatures
from zoo.generative.gan import DCGAN, GAN
from zoo.generative.metrics import (
    FeatureShapeError,
    SingularCovarianceError,
    fid,
    frechet_distance,
    one_nn_accuracy,
)
from zoo.generative.vae import VAE, kl_divergence, reparameterize

__all__ = [
    "DCGAN",
    "GAN",
    "VAE",
    "AutoEncoder",
    "ClassifierFeatures",
    "DenoisingAutoEncoder",
    "FeatureShapeError",
    "GenerativeModule",
    "InceptionFeatures",
    "NonFiniteLossError",
    "SingularCovarianceError",
    "fid",
    "frechet_distance",
    "kl_divergence",
    "one_nn_accuracy",
    "reparameterize",
]
