"""Encoders and decoders of the autoencoders and of the VAE: fully connected and convolutional.

The autoencoder (``autoencoder_mlp``, ``autoencoder_conv``; Hinton & Salakhutdinov, "Reducing the
Dimensionality of Data with Neural Networks", Science 2006, for the deep fully connected one) encodes an
image to a code of ``latent_dim`` features; the VAE's encoder (``vae_mlp``, ``vae_conv``; Kingma & Welling,
"Auto-Encoding Variational Bayes", ICLR 2014, appendix C.2: an MLP with a Gaussian output) outputs the mean
and the log-variance of q(z|x) side by side, ``2 * latent_dim`` features. The decoders output image logits
(the LightningModules apply sigmoid or tanh). Hand-written: torchvision and timm have no autoencoders.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn as nn

from zoo.core.registry import register_model

MLP_HIDDEN = (256, 128)
CONV_CHANNELS = (32, 64)


class MLPEncoder(nn.Module):
    """Flattened image -> hidden layers (ReLU) -> ``out_features`` (input -> 256 -> 128 -> latent)."""

    def __init__(
        self, in_channels: int, image_size: int, out_features: int, hidden: Sequence[int] = MLP_HIDDEN
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        width = in_channels * image_size * image_size
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU(inplace=True)]
            width = h
        layers.append(nn.Linear(width, out_features))
        self.net = nn.Sequential(*layers)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images)


class MLPDecoder(nn.Module):
    """Latent -> hidden layers in reverse (128 -> 256) -> image logits ``(N, C, H, W)``."""

    def __init__(self, in_channels: int, image_size: int, latent_dim: int, hidden: Sequence[int] = MLP_HIDDEN) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = latent_dim
        for h in reversed(hidden):
            layers += [nn.Linear(width, h), nn.ReLU(inplace=True)]
            width = h
        layers.append(nn.Linear(width, in_channels * image_size * image_size))
        self.net = nn.Sequential(*layers)
        self.shape = (in_channels, image_size, image_size)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z).view(len(z), *self.shape)


def _conv_stages(image_size: int, channels: Sequence[int]) -> tuple[int, int]:
    """The channels of the two convolutional stages, which halve the image twice: ``image_size`` must be a multiple
    of 4."""
    if image_size % 4:
        raise ValueError(
            f"the convolutional encoder/decoder halves the image twice: image_size must be a multiple of 4, "
            f"got {image_size}. Fix: pad or resize the images, or use a fully connected network (*_mlp)."
        )
    c1, c2 = channels
    return c1, c2


class ConvEncoder(nn.Module):
    """Two stride-2 4x4 convolutions (28 -> 14 -> 7) with ReLU, then a linear layer to ``out_features``."""

    def __init__(
        self, in_channels: int, image_size: int, out_features: int, channels: Sequence[int] = CONV_CHANNELS
    ) -> None:
        super().__init__()
        c1, c2 = _conv_stages(image_size, channels)
        self.net = nn.Sequential(
            nn.Conv2d(in_channels, c1, 4, stride=2, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(c1, c2, 4, stride=2, padding=1), nn.ReLU(inplace=True),
            nn.Flatten(), nn.Linear(c2 * (image_size // 4) ** 2, out_features),
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images)


class ConvDecoder(nn.Module):
    """The mirror of :class:`ConvEncoder`: linear to a 7x7 map, two stride-2 transposed convolutions."""

    def __init__(
        self, in_channels: int, image_size: int, latent_dim: int, channels: Sequence[int] = CONV_CHANNELS
    ) -> None:
        super().__init__()
        c1, self.c2 = _conv_stages(image_size, channels)  # forward reshapes the projection to (c2, grid, grid)
        self.grid = image_size // 4
        self.project = nn.Sequential(nn.Linear(latent_dim, self.c2 * self.grid**2), nn.ReLU(inplace=True))
        self.net = nn.Sequential(
            nn.ConvTranspose2d(self.c2, c1, 4, stride=2, padding=1), nn.ReLU(inplace=True),
            nn.ConvTranspose2d(c1, in_channels, 4, stride=2, padding=1),
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(self.project(z).view(len(z), self.c2, self.grid, self.grid))


class EncoderDecoder(nn.Module):
    """An encoder and a decoder, one network object (what the ``autoencoder_*`` and ``vae_*`` builders return).

    ``kind``: ``autoencoder`` (the encoder outputs the code, ``latent_dim`` features) or ``vae`` (it outputs the
    mean and log-variance of q(z|x), ``2 * latent_dim`` features). ``forward`` returns the decoder's logits of
    the code (of the posterior mean for a VAE).
    """

    def __init__(
        self, encoder: nn.Module, decoder: nn.Module, latent_dim: int, kind: Literal["autoencoder", "vae"]
    ) -> None:
        super().__init__()
        self.encoder, self.decoder = encoder, decoder
        self.latent_dim, self.kind = latent_dim, kind

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        code = self.encoder(images)
        return self.decoder(code[:, : self.latent_dim] if self.kind == "vae" else code)


def _encoder_decoder(
    kind: Literal["autoencoder", "vae"], encoder: type[nn.Module], decoder: type[nn.Module], in_channels: int,
    image_size: int, latent_dim: int, widths: Sequence[int],
) -> EncoderDecoder:
    """The encoder (to the code, or to a VAE's mean and log-variance) built before the decoder: seeded runs draw the
    same initial weights as before the registry."""
    code = 2 * latent_dim if kind == "vae" else latent_dim
    return EncoderDecoder(
        encoder(in_channels, image_size, code, widths), decoder(in_channels, image_size, latent_dim, widths),
        latent_dim, kind,
    )


@register_model("generative")
def autoencoder_mlp(
    in_channels: int = 1, image_size: int = 28, latent_dim: int = 32, hidden_dims: Sequence[int] = MLP_HIDDEN
) -> EncoderDecoder:
    """The fully connected autoencoder: input -> 256 -> 128 -> latent and back (``hidden_dims`` mirrored)."""
    return _encoder_decoder("autoencoder", MLPEncoder, MLPDecoder, in_channels, image_size, latent_dim, hidden_dims)


@register_model("generative")
def autoencoder_conv(
    in_channels: int = 1, image_size: int = 28, latent_dim: int = 32, conv_channels: Sequence[int] = CONV_CHANNELS
) -> EncoderDecoder:
    """The convolutional autoencoder: two stride-2 convolutions (28 -> 14 -> 7, ``conv_channels``), a linear
    code, and their transposes."""
    return _encoder_decoder("autoencoder", ConvEncoder, ConvDecoder, in_channels, image_size, latent_dim, conv_channels)


@register_model("generative")
def vae_mlp(
    in_channels: int = 1, image_size: int = 28, latent_dim: int = 16, hidden_dims: Sequence[int] = MLP_HIDDEN
) -> EncoderDecoder:
    """The fully connected VAE networks (Kingma & Welling 2014, appendix C.2): input -> 256 -> 128 ->
    2 x latent (mean, log-variance), and latent -> 128 -> 256 -> image logits."""
    return _encoder_decoder("vae", MLPEncoder, MLPDecoder, in_channels, image_size, latent_dim, hidden_dims)


@register_model("generative")
def vae_conv(
    in_channels: int = 1, image_size: int = 28, latent_dim: int = 16, conv_channels: Sequence[int] = CONV_CHANNELS
) -> EncoderDecoder:
    """The convolutional VAE networks: :class:`ConvEncoder` to 2 x latent (mean, log-variance) and
    :class:`ConvDecoder`."""
    return _encoder_decoder("vae", ConvEncoder, ConvDecoder, in_channels, image_size, latent_dim, conv_channels)
