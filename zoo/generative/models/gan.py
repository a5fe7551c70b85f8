"""The fully connected GAN networks (Goodfellow et al., "Generative Adversarial Nets", NeurIPS 2014) and
:class:`GeneratorDiscriminator`, the one network object every GAN builder returns. Hand-written: torchvision and
timm have no GANs."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn

from zoo.core.registry import register_model


class MLPGenerator(nn.Module):
    """z -> 256 -> 512 -> 1024 -> image, LeakyReLU(0.2), tanh output.

    Goodfellow et al. 2014 used ReLU/sigmoid generators and maxout discriminators with dropout
    (sec. 5); LeakyReLU and a tanh output on [-1, 1] images are the common modern substitute.
    """

    def __init__(
        self, latent_dim: int, in_channels: int, image_size: int, hidden: Sequence[int] = (256, 512, 1024)
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = latent_dim
        for h in hidden:
            layers += [nn.Linear(width, h), nn.LeakyReLU(0.2, inplace=True)]
            width = h
        layers += [nn.Linear(width, in_channels * image_size * image_size), nn.Tanh()]
        self.net = nn.Sequential(*layers)
        self.shape = (in_channels, image_size, image_size)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z).view(len(z), *self.shape)


class MLPDiscriminator(nn.Module):
    """image -> 512 -> 256 -> 1 logit, LeakyReLU(0.2) and dropout 0.3 (the paper's dropout, sec. 5)."""

    def __init__(
        self, in_channels: int, image_size: int, hidden: Sequence[int] = (512, 256), dropout: float = 0.3
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        width = in_channels * image_size * image_size
        for h in hidden:
            layers += [nn.Linear(width, h), nn.LeakyReLU(0.2, inplace=True), nn.Dropout(dropout)]
            width = h
        layers.append(nn.Linear(width, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images).squeeze(1)


class GeneratorDiscriminator(nn.Module):
    """A generator ``(N, latent_dim) -> images in [-1, 1]`` and a discriminator ``images -> (N,)`` logits, one
    network object (what the GAN builders return); ``forward`` generates."""

    kind = "gan"

    def __init__(self, generator: nn.Module, discriminator: nn.Module, latent_dim: int) -> None:
        super().__init__()
        self.generator, self.discriminator = generator, discriminator
        self.latent_dim = latent_dim

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.generator(z)


@register_model("generative")
def gan_mlp(
    in_channels: int = 1,
    image_size: int = 28,
    latent_dim: int = 64,
    generator_hidden: Sequence[int] = (256, 512, 1024),
    discriminator_hidden: Sequence[int] = (512, 256),
    dropout: float = 0.3,
) -> GeneratorDiscriminator:
    """The fully connected GAN (Goodfellow et al. 2014): :class:`MLPGenerator` and :class:`MLPDiscriminator`."""
    return GeneratorDiscriminator(
        MLPGenerator(latent_dim, in_channels, image_size, generator_hidden),
        MLPDiscriminator(in_channels, image_size, discriminator_hidden, dropout),
        latent_dim,
    )
