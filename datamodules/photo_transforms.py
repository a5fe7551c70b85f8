"""Transforms for real photographs: the ImageNet recipe of torchvision's reference training scripts.

* **Training** (:func:`photo_train_transform`): ``RandomResizedCrop(image_size)`` (scale 0.08-1, aspect ratio
  3/4-4/3, Szegedy et al. 2015), a horizontal flip (p = 0.5), optionally ``TrivialAugmentWide`` (Müller & Hutter
  2021, ``auto_augment: trivial``) or ``RandAugment`` (Cubuk et al. 2020, ``auto_augment: rand``), conversion to
  float in [0, 1], normalization, and optionally random erasing (Zhong et al. 2020, ``random_erasing``: its
  probability; erased pixels take the value 0, i.e. the mean after normalization).
* **Evaluation** (:func:`photo_eval_transform`): the short side resized to ``image_size / crop_fraction``
  (``crop_fraction`` 0.875: 256 for 224) and a center crop of ``image_size``; never random.
* **Normalization** (:func:`normalization_stats`): the ``imagenet`` preset (mean 0.485, 0.456, 0.406 and std 0.229,
  0.224, 0.225 for RGB; for one channel their averages, 0.449 and 0.226), ``none`` (pixels stay in [0, 1]), or
  explicit per-channel ``mean`` / ``std``. The ``data`` preset (the training split's own statistics) is computed by
  the datamodule (:mod:`datamodules.images`), which then passes them here as explicit values; so is ``weights``
  (the pretrained weights' own mean, std, resize ratio and interpolation, which ``train.py`` hands the datamodule).

**Why torchvision.transforms.v2 and not albumentations** (both are installed): the images arrive as ``(C, H, W)``
tensors straight from ``torchvision.io.decode_image``, and v2 works on those tensors directly (uint8 kept through
the geometric ops, which is also where its resize is fastest; float for 16-bit images, which keep their precision)
with no HWC numpy round trip; and v2 has exactly the reference recipe's ``TrivialAugmentWide``, ``RandAugment`` and
``RandomErasing``, which albumentations lacks or implements differently. Albumentations stays the zoo's choice
where masks and weight maps must move with the image (:mod:`datamodules.transforms`, segmentation).

Every transform takes a ``torchvision.tv_tensors.Image`` (uint8 or float32 in [0, 1], 1 or 3 channels, any size)
and returns a plain float32 tensor ``(C, image_size, image_size)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torchvision.transforms import v2

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
AUTO_AUGMENTS = ("none", "trivial", "rand")
NORMALIZE_PRESETS = ("imagenet", "data", "weights", "none")
AutoAugment = Literal["none", "trivial", "rand"]
ImageSize = int | Sequence[int]


def as_size(image_size: ImageSize) -> tuple[int, int]:
    """``image_size`` (an int, or ``[height, width]``) as ``(height, width)``; an error for anything else."""
    if isinstance(image_size, int) and not isinstance(image_size, bool):
        size = (image_size, image_size)
    elif isinstance(image_size, Sequence) and len(image_size) == 2:
        size = (int(image_size[0]), int(image_size[1]))
    else:
        raise ValueError(f"image_size must be an int or [height, width]; got {image_size!r}. Fix: image_size: 224.")
    if min(size) < 1:
        raise ValueError(f"image_size must be positive; got {image_size!r}. Fix: e.g. image_size: 224.")
    return size


def normalization_stats(
    normalize: str | None,
    mean: Sequence[float] | None,
    std: Sequence[float] | None,
    in_channels: int,
) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """The per-channel ``(mean, std)`` that images in [0, 1] are normalized with, or None for no normalization.

    ``normalize``: ``"imagenet"`` (the default when neither it nor ``mean`` / ``std`` is set), ``"none"``, or None
    with explicit ``mean`` and ``std`` (one value per channel, or one value for every channel). ``"data"`` is
    resolved by the datamodule before it calls this. Setting both a preset and ``mean`` / ``std`` is an error: one
    of them would not take effect.
    """
    explicit = mean is not None or std is not None
    if normalize is not None and normalize not in NORMALIZE_PRESETS:
        raise ValueError(
            f"normalize must be one of {', '.join(NORMALIZE_PRESETS)} (or unset, with mean and std); got "
            f"{normalize!r}. Fix: normalize: imagenet, data or none, or give mean: [...] and std: [...]."
        )
    if explicit:
        if normalize is not None:
            raise ValueError(
                f"normalize: {normalize} and explicit mean / std are both set; only one of them can take effect. "
                "Fix: leave normalize unset (null) to use mean / std, or remove mean and std."
            )
        if mean is None or std is None:
            raise ValueError("mean and std must be given together. Fix: set both (one value per channel).")
        return _per_channel(mean, "mean", in_channels), _per_channel(std, "std", in_channels, positive=True)
    if normalize in (None, "imagenet"):
        if in_channels == 3:
            return IMAGENET_MEAN, IMAGENET_STD
        return (round(sum(IMAGENET_MEAN) / 3, 3),), (round(sum(IMAGENET_STD) / 3, 3),)
    if normalize == "none":
        return None
    raise ValueError(
        f"normalize: {normalize} is resolved by the datamodule (the training split's statistics, or the pretrained "
        "weights' own)"
    )


def _per_channel(values: Sequence[float], name: str, channels: int, positive: bool = False) -> tuple[float, ...]:
    values = tuple(float(v) for v in values)
    if len(values) == 1:
        values = values * channels
    if len(values) != channels:
        raise ValueError(
            f"{name} has {len(values)} values for in_channels={channels}. Fix: give one value per channel "
            f"(or a single value for all)."
        )
    if positive and min(values) <= 0:
        raise ValueError(f"{name} {list(values)} must be positive. Fix: give standard deviations > 0.")
    return values


def _finish(stats: tuple[Sequence[float], Sequence[float]] | None) -> list[v2.Transform]:
    steps: list[v2.Transform] = [v2.ToDtype(torch.float32, scale=True)]
    if stats is not None:
        steps.append(v2.Normalize(mean=list(stats[0]), std=list(stats[1])))
    return steps


def photo_train_transform(
    image_size: ImageSize = 224,
    stats: tuple[Sequence[float], Sequence[float]] | None = (IMAGENET_MEAN, IMAGENET_STD),
    hflip: float = 0.5,
    crop_scale: Sequence[float] = (0.08, 1.0),
    crop_ratio: Sequence[float] = (3 / 4, 4 / 3),
    auto_augment: AutoAugment = "none",
    rand_augment_magnitude: int = 9,
    random_erasing: float = 0.0,
) -> v2.Compose:
    """The training transform (see the module docstring). ``stats``: ``(mean, std)`` or None (no normalization)."""
    if auto_augment not in AUTO_AUGMENTS:
        raise ValueError(
            f"auto_augment must be one of {', '.join(AUTO_AUGMENTS)}; got {auto_augment!r}. Fix: auto_augment: "
            "trivial (TrivialAugmentWide), rand (RandAugment) or none."
        )
    for name, p in (("hflip", hflip), ("random_erasing", random_erasing)):
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"{name} is a probability in [0, 1]; got {p}. Fix: e.g. {name}: 0.5 (0 turns it off).")
    if len(crop_scale) != 2 or not 0 < crop_scale[0] <= crop_scale[1] <= 1:
        raise ValueError(f"crop_scale must be [min, max] with 0 < min <= max <= 1; got {list(crop_scale)}.")
    steps: list[v2.Transform] = [
        v2.RandomResizedCrop(as_size(image_size), scale=tuple(crop_scale), ratio=tuple(crop_ratio), antialias=True)
    ]
    if hflip > 0:
        steps.append(v2.RandomHorizontalFlip(p=hflip))
    if auto_augment == "trivial":
        steps.append(v2.TrivialAugmentWide())
    elif auto_augment == "rand":
        steps.append(v2.RandAugment(magnitude=rand_augment_magnitude))
    steps += _finish(stats)
    if random_erasing > 0:
        steps.append(v2.RandomErasing(p=random_erasing, value=0))
    steps.append(v2.ToPureTensor())
    return v2.Compose(steps)


def photo_eval_transform(
    image_size: ImageSize = 224,
    stats: tuple[Sequence[float], Sequence[float]] | None = (IMAGENET_MEAN, IMAGENET_STD),
    crop_fraction: float = 0.875,
    interpolation: str = "bilinear",
) -> v2.Compose:
    """The evaluation transform: short side to ``image_size / crop_fraction`` (``interpolation``: ``bilinear``,
    ``bicubic`` or ``nearest``), center crop, float, normalize."""
    if not 0 < crop_fraction <= 1:
        raise ValueError(f"crop_fraction must be in (0, 1]; got {crop_fraction}. Fix: e.g. crop_fraction: 0.875.")
    height, width = as_size(image_size)
    short = round(min(height, width) / crop_fraction)
    mode = v2.InterpolationMode(interpolation)
    steps: list[v2.Transform] = [v2.Resize(short, interpolation=mode, antialias=True), v2.CenterCrop((height, width))]
    return v2.Compose(steps + _finish(stats) + [v2.ToPureTensor()])


def photo_pixels_transform(image_size: ImageSize = 224, crop_fraction: float = 0.875) -> v2.Compose:
    """The evaluation geometry without normalization: float pixels in [0, 1], what data statistics are taken on."""
    return photo_eval_transform(image_size, None, crop_fraction)


__all__ = [
    "AUTO_AUGMENTS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "NORMALIZE_PRESETS",
    "as_size",
    "normalization_stats",
    "photo_eval_transform",
    "photo_pixels_transform",
    "photo_train_transform",
]
