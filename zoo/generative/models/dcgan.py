"""DCGAN's networks (Radford, Metz, Chintala, "Unsupervised Representation Learning with Deep Convolutional
Generative Adversarial Networks", ICLR 2016) scaled to 28x28 images, and their initialisation."""

from __future__ import annotations

import torch
import torch.nn as nn

from zoo.core.registry import register_model
from zoo.generative.models.gan import GeneratorDiscriminator


class DCGANGenerator(nn.Module):
    """DCGAN's generator (Radford et al. 2016, sec. 3 and fig. 1) scaled to 28x28: project z to a
    ``2w x 7 x 7`` map, then fractionally strided 4x4 convolutions 7 -> 14 -> 28; batch norm and
    ReLU everywhere except the tanh output layer.

    ``extra_layers`` adds that many 3x3 stride-1 convolutions (``w`` channels, batch norm, ReLU) at
    14x14, before the output layer: the ``n_extra_layers`` of the DCGAN generator in Arjovsky et al.'s
    WGAN code, more depth without more resolution."""

    def __init__(
        self, latent_dim: int, in_channels: int, image_size: int, width: int = 64, extra_layers: int = 0
    ) -> None:
        super().__init__()
        if image_size % 4:
            raise ValueError(f"DCGAN upsamples twice: image_size must be a multiple of 4, got {image_size}")
        if extra_layers < 0:
            raise ValueError(f"extra_layers counts added 3x3 layers: 0 or more, got {extra_layers}")
        self.grid, self.channels = image_size // 4, 2 * width
        self.project = nn.Sequential(
            nn.Linear(latent_dim, self.channels * self.grid**2, bias=False),
            nn.BatchNorm1d(self.channels * self.grid**2), nn.ReLU(inplace=True),
        )
        self.net = nn.Sequential(
            nn.ConvTranspose2d(self.channels, width, 4, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(width), nn.ReLU(inplace=True),
            *[layer for _ in range(extra_layers) for layer in (
                nn.Conv2d(width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True))],
            nn.ConvTranspose2d(width, in_channels, 4, stride=2, padding=1), nn.Tanh(),
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(self.project(z).view(len(z), self.channels, self.grid, self.grid))


class DCGANDiscriminator(nn.Module):
    """DCGAN's discriminator: strided 4x4 convolutions (no pooling) 28 -> 14 -> 7, LeakyReLU(0.2),
    batch norm on every layer but the first (Radford et al. 2016, sec. 3), a linear logit."""

    def __init__(self, in_channels: int, image_size: int, width: int = 64) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(in_channels, width, 4, stride=2, padding=1), nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(width, 2 * width, 4, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(2 * width), nn.LeakyReLU(0.2, inplace=True),
            nn.Flatten(), nn.Linear(2 * width * (image_size // 4) ** 2, 1),
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images).squeeze(1)


def dcgan_init(module: nn.Module) -> None:
    """Weights from N(0, 0.02); batch-norm scales from N(1, 0.02) (Radford et al. 2016, sec. 4)."""
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
        nn.init.normal_(module.weight, 0.0, 0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


@register_model("generative")
def dcgan(
    in_channels: int = 1, image_size: int = 28, latent_dim: int = 64, width: int = 64, generator_extra_layers: int = 0
) -> GeneratorDiscriminator:
    """DCGAN (Radford et al. 2016): :class:`DCGANGenerator` (with ``generator_extra_layers`` 3x3 layers) and
    :class:`DCGANDiscriminator` of base width ``width``, both initialised by :func:`dcgan_init` (sec. 4)."""
    generator = DCGANGenerator(latent_dim, in_channels, image_size, width, generator_extra_layers)
    discriminator = DCGANDiscriminator(in_channels, image_size, width)
    # In this order (both built, then both initialised): seeded runs draw the same initial weights as before.
    generator.apply(dcgan_init)
    discriminator.apply(dcgan_init)
    return GeneratorDiscriminator(generator, discriminator, latent_dim)
