"""Generative models: autoencoders (plain, convolutional, denoising; anomaly scores), the VAE,
GAN and DCGAN, and sample-quality metrics (FID with a pluggable feature extractor, the 1-NN test)."""

from zoo.generative.autoencoder import AutoEncoder, DenoisingAutoEncoder
from zoo.generative.base import GenerativeModule, WrongCheckpointError
from zoo.generative.features import ClassifierFeatures, InceptionFeatures, train_feature_classifier
from zoo.generative.gan import DCGAN, GAN
from zoo.generative.metrics import (
    FeatureShapeError,
    NonFiniteLossError,
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
    "WrongCheckpointError",
    "fid",
    "frechet_distance",
    "kl_divergence",
    "one_nn_accuracy",
    "reparameterize",
    "train_feature_classifier",
]
