"""Augmentations.

Batch-level tensor augmentations for in-memory image sets (MNIST-like data): one
``affine_grid`` + ``grid_sample`` call per batch instead of one PIL/albumentations call per image,
which is what keeps an MNIST epoch fast on a CPU. They run on whatever device the batch is on.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def random_affine_batch(
    images: torch.Tensor,
    degrees: float = 10.0,
    translate_px: float = 2.0,
    scale: float = 0.1,
    fill: float = 0.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Apply an independent random rotation (+-``degrees``), isotropic scaling (1 +- ``scale``)
    and translation (+-``translate_px`` pixels in x and y) to each image of an ``(N, C, H, W)``
    float batch. Pixels that come from outside the image take the value ``fill``."""
    n, _, h, w = images.shape
    opts = {"device": images.device, "dtype": images.dtype}

    def uniform(*shape: int) -> torch.Tensor:
        return torch.rand(*shape, generator=generator, device=images.device).to(images.dtype) * 2 - 1

    angle = uniform(n) * math.radians(degrees)
    factor = 1 + uniform(n) * scale
    theta = torch.zeros(n, 2, 3, **opts)
    theta[:, 0, 0] = torch.cos(angle) * factor
    theta[:, 0, 1] = -torch.sin(angle) * factor
    theta[:, 1, 0] = torch.sin(angle) * factor
    theta[:, 1, 1] = torch.cos(angle) * factor
    # affine_grid works in [-1, 1] coordinates: one pixel is 2/size.
    shift = uniform(n, 2) * translate_px
    theta[:, 0, 2] = shift[:, 0] * 2 / w
    theta[:, 1, 2] = shift[:, 1] * 2 / h
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    warped = F.grid_sample(images - fill, grid, align_corners=False, padding_mode="zeros")
    return warped + fill
