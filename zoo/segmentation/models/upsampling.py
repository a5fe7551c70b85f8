"""The decoders' upsampling layers, one per choice, behind :func:`make_upsampling` (the U-Net's ``upsampling``
argument) and the max-unpooling that SegNet and DeconvNet share.

Every choice doubles the spatial size and maps ``in_ch`` to ``out_ch`` channels (halving them in the U-Net, as
the paper's up-convolution does):

* ``transposed``: the 2x2 up-convolution with stride 2 of Ronneberger et al. 2015 (sec. 2, fig. 1), a plain
  ``nn.ConvTranspose2d`` (same parameters and state-dict keys as the U-Net has always had);
* ``nearest``: nearest-neighbour resizing, then a 1x1 convolution;
* ``bilinear``: bilinear resizing (``align_corners=False``), then a 1x1 convolution;
* ``bed_of_nails``: zero insertion (each value at the top-left of its 2x2 cell, zeros elsewhere; the "unpooling"
  of Zeiler and Fergus without switches), then a 1x1 convolution;
* ``max_unpool``: a 1x1 convolution to ``out_ch``, then ``nn.MaxUnpool2d`` with the indices of the matching encoder
  max-pooling (Noh et al. 2015, sec. 3.2.1; Badrinarayanan et al. 2017, sec. 3). The convolution comes first
  because the indices are per channel of that encoder level: in the U-Net the decoder map has twice its channels
  (SegNet's decoders reduce the channels before unpooling for the same reason).

Why 1x1: the convolution after a resizing only has to change the channels; the two 3x3 convolutions that follow in
every decoder block mix neighbouring pixels (as SegNet's decoder convolutions densify its sparse unpooled maps,
Badrinarayanan et al. sec. 3). A pointwise convolution keeps the valid U-Net's size arithmetic and its seamless
overlap-tiling: a padded 3x3 convolution would see zeros at every tile edge where the whole image has context.

For the same reason ``bilinear`` in a valid-convolution network (``valid=True``) drops the outermost output pixel
on each side, the one interpolated from a clamped edge instead of the neighbour it lacks: its output is
``2 * size - 2`` (:func:`upsampling_border`).
"""

from __future__ import annotations

import difflib
from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F

from zoo.core.errors import ZooUserError

UpsamplingKind = Literal["transposed", "nearest", "bilinear", "bed_of_nails", "max_unpool"]
UPSAMPLING_KINDS: tuple[str, ...] = ("transposed", "nearest", "bilinear", "bed_of_nails", "max_unpool")


class UnknownUpsamplingError(ZooUserError, ValueError):
    """An ``upsampling`` value that is none of :data:`UPSAMPLING_KINDS`."""


def check_upsampling(kind: str) -> str:
    """``kind`` if it is one of :data:`UPSAMPLING_KINDS`; an :class:`UnknownUpsamplingError` naming them otherwise."""
    if kind in UPSAMPLING_KINDS:
        return kind
    close = difflib.get_close_matches(str(kind), UPSAMPLING_KINDS, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise UnknownUpsamplingError(
        f"upsampling={kind!r} is not an upsampling choice.{hint} Fix: set upsampling to one of "
        f"{', '.join(UPSAMPLING_KINDS)} (e.g. --model.init_args.network_kwargs '{{upsampling: transposed}}')."
    )


def upsampling_border(kind: str, valid: bool) -> int:
    """Pixels an upsampling layer drops on each side of its doubled output (1: ``bilinear`` in a valid network)."""
    return 1 if valid and check_upsampling(kind) == "bilinear" else 0


def bed_of_nails(x: torch.Tensor) -> torch.Tensor:
    """Zero insertion by 2: ``out[..., 2i, 2j] = x[..., i, j]``, zeros at the other three pixels of each cell."""
    zeros = torch.zeros_like(x)
    rows = torch.stack((x, zeros), dim=-1).flatten(-2)  # (..., h, 2w): x, 0, x, 0, ...
    return torch.stack((rows, torch.zeros_like(rows)), dim=-2).flatten(-3, -2)  # (..., 2h, 2w)


class BedOfNails(nn.Module):
    """:func:`bed_of_nails` as a layer."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return bed_of_nails(x)


class MaxUnpool(nn.MaxUnpool2d):
    """``nn.MaxUnpool2d(2, 2)`` that takes the output size as Python ints: an odd encoder size (its pooling dropped
    the last row or column) is restored exactly, and ``torch.jit.trace`` records the size as a constant, where
    ``F.max_unpool2d``'s check of a size read from a traced shape fails."""

    def __init__(self) -> None:
        super().__init__(kernel_size=2, stride=2)

    def forward(self, x: torch.Tensor, indices: torch.Tensor, size: tuple[int, int] | list[int]) -> torch.Tensor:
        return super().forward(x, indices, output_size=[int(size[0]), int(size[1])])


def crop_pool_indices(indices: torch.Tensor, input_size: tuple[int, int], height: int, width: int) -> torch.Tensor:
    """The indices of a 2x2 / stride-2 max pooling of an ``input_size`` map, for the pooled cells of its central
    ``2*height x 2*width`` window (the window :func:`~zoo.segmentation.models.unet.center_crop` takes), as flat
    positions in that window: what ``MaxUnpool2d`` needs when a valid network's decoder map is smaller than the
    encoder map it unpools into."""
    full_h, full_w = int(input_size[0]), int(input_size[1])
    top, left = (full_h - 2 * height) // 2, (full_w - 2 * width) // 2
    if top < 0 or left < 0 or top % 2 or left % 2:
        raise ValueError(
            f"the central {2 * height}x{2 * width} window of a {full_h}x{full_w} map does not start on the 2x2 "
            f"pooling grid (offset {top}, {left}): its cells cannot be unpooled"
        )
    window = indices[..., top // 2 : top // 2 + height, left // 2 : left // 2 + width]
    rows = torch.div(window, full_w, rounding_mode="floor") - top
    cols = torch.remainder(window, full_w) - left
    return rows * (2 * width) + cols


class TransposedUpsampling(nn.ConvTranspose2d):
    """``transposed``: the U-Net paper's 2x2 up-convolution with stride 2 (its keys: ``weight``, ``bias``)."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__(in_ch, out_ch, kernel_size=2, stride=2)

    def forward(self, x: torch.Tensor, indices: torch.Tensor | None = None) -> torch.Tensor:  # type: ignore[override]
        return super().forward(x)


class NearestUpsampling(nn.Module):
    """``nearest``: nearest-neighbour resizing by 2 and a 1x1 convolution."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, kernel_size=1)

    def forward(self, x: torch.Tensor, indices: torch.Tensor | None = None) -> torch.Tensor:
        # a 1x1 convolution commutes with copying pixels: convolving first is the same map at a quarter of the cost
        return F.interpolate(self.conv(x), scale_factor=2, mode="nearest")


class BilinearUpsampling(nn.Module):
    """``bilinear``: bilinear resizing by 2 and a 1x1 convolution; ``border`` pixels dropped on each side."""

    def __init__(self, in_ch: int, out_ch: int, border: int = 0) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, kernel_size=1)
        self.border = border

    def forward(self, x: torch.Tensor, indices: torch.Tensor | None = None) -> torch.Tensor:
        # bilinear weights sum to 1, so the 1x1 convolution (bias included) commutes with it: convolve first, cheaper
        out = F.interpolate(self.conv(x), scale_factor=2, mode="bilinear", align_corners=False)
        b = self.border
        return out[..., b : out.shape[-2] - b, b : out.shape[-1] - b] if b else out


class BedOfNailsUpsampling(nn.Module):
    """``bed_of_nails``: zero insertion by 2 (:func:`bed_of_nails`) and a 1x1 convolution."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.unpool = BedOfNails()
        self.conv = nn.Conv2d(in_ch, out_ch, kernel_size=1)

    def forward(self, x: torch.Tensor, indices: torch.Tensor | None = None) -> torch.Tensor:
        return self.conv(self.unpool(x))


class MaxUnpoolUpsampling(nn.Module):
    """``max_unpool``: a 1x1 convolution to the encoder level's channels, then each value back at the position of
    its encoder pooling's maximum, zeros elsewhere. ``indices`` are those of the matching encoder max-pooling, as
    flat positions in the ``2h x 2w`` output (:func:`crop_pool_indices` when the decoder map is a central part of
    the pooled one)."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.unpool = MaxUnpool()
        self.conv = nn.Conv2d(in_ch, out_ch, kernel_size=1)

    def forward(self, x: torch.Tensor, indices: torch.Tensor | None = None) -> torch.Tensor:
        if indices is None:
            raise ValueError("max_unpool upsampling needs the indices of its encoder's max pooling")
        return self.unpool(self.conv(x), indices, (2 * x.shape[-2], 2 * x.shape[-1]))


def make_upsampling(kind: str, in_ch: int, out_ch: int, valid: bool = False) -> nn.Module:
    """The upsampling layer ``kind`` (one of :data:`UPSAMPLING_KINDS`) from ``in_ch`` to ``out_ch`` channels, doubling
    the size; ``valid``: it is part of a valid-convolution network (``bilinear`` then drops its clamped edge pixels).
    Every layer is called as ``layer(x)``, ``max_unpool`` as ``layer(x, indices)`` (indices of an ``out_ch``-channel
    pooling)."""
    kind = check_upsampling(kind)
    if kind == "transposed":
        return TransposedUpsampling(in_ch, out_ch)
    if kind == "nearest":
        return NearestUpsampling(in_ch, out_ch)
    if kind == "bilinear":
        return BilinearUpsampling(in_ch, out_ch, upsampling_border(kind, valid))
    if kind == "bed_of_nails":
        return BedOfNailsUpsampling(in_ch, out_ch)
    return MaxUnpoolUpsampling(in_ch, out_ch)


__all__ = [
    "UPSAMPLING_KINDS",
    "BedOfNails",
    "BedOfNailsUpsampling",
    "BilinearUpsampling",
    "MaxUnpool",
    "MaxUnpoolUpsampling",
    "NearestUpsampling",
    "TransposedUpsampling",
    "UnknownUpsamplingError",
    "UpsamplingKind",
    "bed_of_nails",
    "check_upsampling",
    "crop_pool_indices",
    "make_upsampling",
    "upsampling_border",
]
