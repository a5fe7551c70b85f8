"""Augmentations.

Batch-level tensor augmentations for in-memory image sets (MNIST-like data): one
``affine_grid`` + ``grid_sample`` call per batch instead of one PIL/albumentations call per image,
which is what keeps an MNIST epoch fast on a CPU (and CIFAR's random crop and flip as one indexing
operation per batch). They run on whatever device the batch is on.
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



def random_crop_flip_batch(
    images: torch.Tensor,
    padding: int = 4,
    flip: bool = True,
    fill: float | torch.Tensor = 0.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """The standard CIFAR training augmentation (He, Zhang, Ren, Sun 2016, sec. 4.2: "4 pixels are padded on
    each side, and a 32x32 crop is randomly sampled from the padded image or its horizontal flip") of an
    ``(N, C, H, W)`` batch, as one indexing operation on the batch's device.

    Each image is padded by ``padding`` pixels of value ``fill`` on every side (a float, or one value per
    channel: a tensor of ``C`` values, e.g. the normalized black pixel), an ``H x W`` window at an independent
    uniformly random offset in ``0..2 * padding`` is cut out of it and, with ``flip``, mirrored left-right with
    probability 1/2. Kept pixels are copied exactly (no interpolation); ``padding=0`` and ``flip=False`` is the
    identity. ``generator`` (on the batch's device) makes the draws reproducible.
    """
    if isinstance(padding, bool) or not isinstance(padding, int) or padding < 0:
        raise ValueError(f"padding must be a whole number of pixels >= 0, got {padding!r}")
    n, c, h, w = images.shape
    device = images.device
    if padding:
        value = torch.as_tensor(fill, dtype=images.dtype, device=device).reshape(-1)
        if value.numel() not in (1, c):
            raise ValueError(f"fill has {value.numel()} values for images of {c} channels (give 1 or {c})")
        padded = value.view(1, -1, 1, 1).expand(n, c, h + 2 * padding, w + 2 * padding).clone()
        padded[:, :, padding : padding + h, padding : padding + w] = images
        offsets = torch.randint(0, 2 * padding + 1, (n, 2), generator=generator, device=device)
    else:
        padded = images
        offsets = torch.zeros(n, 2, dtype=torch.long, device=device)
    rows = offsets[:, :1] + torch.arange(h, device=device)  # (N, H): the source row of each output row
    cols = offsets[:, 1:] + torch.arange(w, device=device)  # (N, W)
    if flip:
        mirrored = torch.rand(n, generator=generator, device=device) < 0.5
        cols = torch.where(mirrored[:, None], cols.flip(1), cols)
    batch = torch.arange(n, device=device)[:, None, None]
    # channels-last for the gather: (N, H, W, C), then back to (N, C, H, W)
    out = padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]]
    return out.permute(0, 3, 1, 2).contiguous()

# -- segmentation: albumentations pipelines (image, mask and weight map stay aligned) ------------------
# Per-sample numpy pipelines for large images that are cropped at random: albumentations moves the
# masks with the image (nearest-neighbour for masks, so class labels stay integers). albumentations
# takes ~2 s to import, so it is imported on first use, not with this module (MNIST never needs it).

import functools  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402


@functools.cache
def _coarse_grid_elastic_class() -> type:
    import albumentations as A
    import cv2
    from scipy import ndimage

    class CoarseGridElastic(A.DualTransform):
        """The U-Net paper's elastic deformation (Ronneberger et al. 2015, sec. 3.1): random
        displacement vectors on a coarse ``grid x grid`` grid (3 x 3 in the paper), drawn from a
        Gaussian with ``sigma`` pixels standard deviation (10 in the paper); per-pixel displacements
        by bicubic interpolation of the grid (its points on the image corners, edge midpoints and
        centre).

        Hand-written because albumentations' ``ElasticTransform`` is Simard et al.'s model (per-pixel
        random fields smoothed by a Gaussian), not this coarse-grid one. The image is resampled
        bicubically, masks (and weight maps passed as masks) with nearest neighbours; pixels pulled
        from outside the image are mirrored.
        """

        def __init__(self, grid: int = 3, sigma: float = 10.0, p: float = 1.0) -> None:
            super().__init__(p=p)
            if grid < 2:
                raise ValueError(f"grid must be at least 2 (points on both edges), got {grid}")
            self.grid = grid
            self.sigma = sigma

        def get_params_dependent_on_data(self, params: dict, data: dict) -> dict:
            h, w = params["shape"][:2]
            coarse = self.random_generator.normal(0.0, self.sigma, size=(2, self.grid, self.grid))
            # bicubic: an order-3 spline through the grid points, grid corners on the image corners
            factors = (h / self.grid, w / self.grid)
            dy, dx = (
                ndimage.zoom(c, factors, order=3, mode="nearest", grid_mode=False)[:h, :w] for c in coarse
            )
            ys, xs = np.meshgrid(np.arange(h, dtype=np.float32), np.arange(w, dtype=np.float32),
                                 indexing="ij")
            return {"map_x": xs + dx.astype(np.float32), "map_y": ys + dy.astype(np.float32)}

        def apply(self, img: np.ndarray, map_x: np.ndarray, map_y: np.ndarray, **params: Any) -> np.ndarray:
            out = cv2.remap(img, map_x, map_y, interpolation=cv2.INTER_CUBIC,
                            borderMode=cv2.BORDER_REFLECT_101)
            return out.reshape(img.shape)

        def apply_to_mask(
            self, mask: np.ndarray, map_x: np.ndarray, map_y: np.ndarray, **params: Any
        ) -> np.ndarray:
            out = cv2.remap(mask, map_x, map_y, interpolation=cv2.INTER_NEAREST,
                            borderMode=cv2.BORDER_REFLECT_101)
            return out.reshape(mask.shape)

        def get_transform_init_args_names(self) -> tuple[str, ...]:
            return ("grid", "sigma")

    CoarseGridElastic.__module__ = __name__
    CoarseGridElastic.__qualname__ = "CoarseGridElastic"  # picklable through the module __getattr__
    return CoarseGridElastic


def __getattr__(name: str) -> Any:
    # ``from datamodules.transforms import CoarseGridElastic`` builds the class (and imports
    # albumentations) on first use.
    if name == "CoarseGridElastic":
        return _coarse_grid_elastic_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def segmentation_train_transform(
    crop_size: int,
    elastic: bool = True,
    elastic_grid: int = 3,
    elastic_sigma: float = 10.0,
    flips: bool = True,
    brightness_contrast: float = 0.1,
) -> Any:
    """The training augmentation of the segmentation datamodules (an ``albumentations.Compose``),
    applied to ``image`` (H, W, C) uint8, ``mask`` (H, W) and ``weight`` (H, W, the U-Net weight
    map, moved like a mask):

    the paper's coarse-grid elastic deformation over the whole image (``CoarseGridElastic``),
    a random ``crop_size`` crop (mirror-padded first when the image is smaller), flips and 90-degree
    rotations (shift and rotation invariance, sec. 3.1) and brightness / contrast jitter (the
    paper's "gray value variations"). Validation and test data are never passed through it.
    """
    import albumentations as A
    import cv2

    steps: list[Any] = []
    if elastic:
        steps.append(_coarse_grid_elastic_class()(elastic_grid, elastic_sigma, p=1.0))
    steps += [
        A.PadIfNeeded(crop_size, crop_size, border_mode=cv2.BORDER_REFLECT_101),
        A.RandomCrop(crop_size, crop_size),
    ]
    if flips:
        steps += [A.HorizontalFlip(p=0.5), A.VerticalFlip(p=0.5), A.RandomRotate90(p=0.5)]
    if brightness_contrast > 0:
        steps.append(A.RandomBrightnessContrast(brightness_contrast, brightness_contrast, p=0.5))
    return A.Compose(steps, additional_targets={"weight": "mask"})


def seed_transform(transform: Any, seed: int) -> None:
    """Seed an albumentations pipeline reproducibly, with an independent stream per step.

    albumentations' ``Compose.set_random_seed`` gives every step the *same* seed, which couples
    their draws (two flips with p=0.5 would always flip together); this spawns one seed per step.
    """
    steps = list(getattr(transform, "transforms", []))
    children = np.random.SeedSequence(seed).spawn(len(steps) + 1)
    transform.set_random_seed(int(children[0].generate_state(1)[0]))
    for step, child in zip(steps, children[1:], strict=True):
        step_seed = int(child.generate_state(1)[0])
        if hasattr(step, "transforms"):
            seed_transform(step, step_seed)
        else:
            step.set_random_seed(step_seed)
