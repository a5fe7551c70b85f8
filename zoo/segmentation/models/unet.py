"""U-Net as in Ronneberger, Fischer, Brox, "U-Net: Convolutional Networks for Biomedical Image
Segmentation", MICCAI 2015 (arXiv 1505.04597), hand-written (no library has the paper's
valid-convolution network).

Sec. 2 / fig. 1: a contracting path of two unpadded 3x3 convolutions (+ ReLU) per level and 2x2
max pooling with stride 2, doubling the channels at every level; an expansive path of 2x2
up-convolutions halving the channels, concatenation with the centre-cropped feature map of the
same level (the valid convolutions lose border pixels, hence the crop), and two 3x3 convolutions;
a final 1x1 convolution to the classes. With the default ``depth=4`` poolings and 64 base channels
a 572x572 tile gives a 388x388 output. Sec. 3: weights drawn from a Gaussian with standard
deviation sqrt(2/N), N the number of incoming nodes of one neuron (He initialisation); sec. 3.1:
drop-out at the end of the contracting path.

Additions for modern use: ``batch_norm`` after every 3x3 convolution, ``padding="same"`` (the
output then has the input's size, which must be a multiple of ``2**depth``) and ``upsampling``: the paper's
up-convolution (``transposed``, the default) or a resizing (``nearest``, ``bilinear``, zero insertion
``bed_of_nails``, ``max_unpool`` with the indices of the matching encoder pooling) followed by a 1x1 convolution
(:mod:`zoo.segmentation.models.upsampling`).

Size arithmetic (valid padding): every level's two convolutions remove 4 pixels, every 2x2 pooling
needs an even size, every up-convolution doubles. The valid input sizes for ``depth=4`` are
188, 204, ..., 572, ... (188 + 16k); :func:`unet_output_size`, :func:`unet_input_size` and
:func:`nearest_valid_sizes` do the arithmetic and name the nearest valid sizes when a size is not one.
Every upsampling choice keeps this arithmetic except ``bilinear``, which in a valid network drops the pixel it
interpolated from a clamped edge on each side (``2 * size - 2``; 572 -> 358 at depth 4), so that overlap-tiling
stays seamless for every choice (:func:`~zoo.segmentation.models.upsampling.upsampling_border`).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn as nn

from zoo.core.errors import ZooUserError
from zoo.core.registry import register_model
from zoo.segmentation.models.upsampling import check_upsampling, crop_pool_indices, make_upsampling, upsampling_border

Padding = Literal["valid", "same"]


class InvalidInputSizeError(ZooUserError, ValueError):
    """An input size that the UNet cannot take (a 2x2 pooling would see an odd size)."""


def _output_size_or_none(size: int, depth: int, padding: Padding, upsampling: str = "transposed") -> int | None:
    """The output side for an input side, or None when the input side is not valid."""
    if padding == "same":
        return size if size > 0 and size % (2**depth) == 0 else None
    s = size
    for _ in range(depth):
        s -= 4  # two unpadded 3x3 convolutions
        if s < 2 or s % 2:  # a 2x2 max pooling with stride 2 needs an even size
            return None
        s //= 2
    s -= 4  # the bottom level's convolutions
    if s < 1:
        return None
    lost = upsampling_border(upsampling, valid=True)
    for _ in range(depth):
        s = 2 * s - 2 * lost - 4  # upsampling by 2, then two 3x3 convolutions
        if s < 1:
            return None
    return s


def nearest_valid_sizes(
    size: int, depth: int = 4, padding: Padding = "valid", upsampling: str = "transposed"
) -> tuple[int | None, int | None]:
    """The largest valid input side ``<= size`` and the smallest one ``>= size`` (None: there is none)."""
    below = next((s for s in range(size, 0, -1) if _output_size_or_none(s, depth, padding, upsampling)), None)
    above = next(
        s
        for s in range(max(size, 1), size + 2**depth * 64 + 1024)
        if _output_size_or_none(s, depth, padding, upsampling)
    )
    return below, above


def _size_error(what: str, size: int, depth: int, padding: Padding, upsampling: str) -> InvalidInputSizeError:
    below, above = nearest_valid_sizes(size, depth, padding, upsampling)
    options = [s for s in dict.fromkeys((below, above)) if s is not None]
    listed = " or ".join(f"{s} (output {_output_size_or_none(s, depth, padding, upsampling)})" for s in options)
    rule = (
        f"padding='same' needs a multiple of 2**depth = {2**depth}"
        if padding == "same"
        else "with unpadded convolutions every 2x2 max pooling must see an even size"
    )
    name = f"depth={depth}, padding={padding!r}" + (
        "" if upsampling == "transposed" else f", upsampling={upsampling!r}"
    )
    return InvalidInputSizeError(
        f"UNet({name}) cannot take {what} {size}: {rule}. "
        f"Nearest valid input sizes: {listed}. Fix: crop or mirror-pad the input to one of them, "
        f"or run zoo.segmentation.predict_tiled, which tiles any image size."
    )


def unet_output_size(
    input_size: int, depth: int = 4, padding: Padding = "valid", upsampling: str = "transposed"
) -> int:
    """Output side of a UNet for an input side (572 -> 388 for the paper's depth 4);
    an :class:`InvalidInputSizeError` naming the nearest valid input sizes otherwise."""
    out = _output_size_or_none(int(input_size), depth, padding, upsampling)
    if out is None:
        raise _size_error("input size", int(input_size), depth, padding, upsampling)
    return out


def unet_input_size(
    output_size: int, depth: int = 4, padding: Padding = "valid", upsampling: str = "transposed"
) -> int:
    """The smallest valid input side whose output side is at least ``output_size``
    (388 -> 572 for the paper's depth 4). Valid input sizes for an exact output: see
    :func:`nearest_valid_sizes`."""
    if output_size < 1:
        raise ValueError(f"output_size must be positive, got {output_size}")
    if padding == "same":
        return math.ceil(output_size / 2**depth) * 2**depth
    lost = upsampling_border(upsampling, valid=True)
    s = int(output_size)
    for _ in range(depth):  # invert the expansive path, rounding up to a reachable size
        s = math.ceil((s + 4 + 2 * lost) / 2)
    s += 4
    for _ in range(depth):
        s = 2 * s + 4

    def too_small(s: int) -> bool:
        out = _output_size_or_none(s, depth, padding, upsampling)
        return out is None or out < output_size

    while too_small(s):
        s += 1
    return s


def _conv_block(in_ch: int, out_ch: int, padding: Padding, batch_norm: bool) -> nn.Sequential:
    pad = 1 if padding == "same" else 0
    layers: list[nn.Module] = []
    for c_in in (in_ch, out_ch):
        layers.append(nn.Conv2d(c_in, out_ch, kernel_size=3, padding=pad, bias=not batch_norm))
        if batch_norm:
            layers.append(nn.BatchNorm2d(out_ch))
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


def center_crop(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """The central ``height x width`` window of the last two dimensions (the paper's "crop")."""
    h, w = x.shape[-2:]
    top, left = (h - height) // 2, (w - width) // 2
    if top < 0 or left < 0:
        raise ValueError(f"cannot crop {h}x{w} to the larger {height}x{width}")
    return x[..., top : top + height, left : left + width]


@register_model("segmentation", "unet")
class UNet(nn.Module):
    """The U-Net of Ronneberger et al. 2015 (fig. 1); registered as ``unet`` (the paper's valid convolutions,
    572 -> 388 with the defaults).

    Args:
        num_classes: output channels of the final 1x1 convolution (2 in the paper: cell / border).
        in_channels: image channels.
        base_channels: channels of the first level (64 in the paper), doubled at every level.
        depth: number of 2x2 poolings (4 in the paper: five levels).
        padding: ``"valid"`` (the paper: unpadded 3x3 convolutions, output smaller than input) or
            ``"same"`` (zero padding, output the size of the input).
        batch_norm: BatchNorm after every 3x3 convolution (not in the paper).
        dropout: drop-out probability at the end of the contracting path (sec. 3.1); 0 disables it.
        upsampling: how the expansive path doubles the size (:mod:`zoo.segmentation.models.upsampling`):
            ``transposed`` (the paper's 2x2 up-convolution), ``nearest``, ``bilinear``, ``bed_of_nails`` or
            ``max_unpool`` (with the indices of the same level's pooling), each of the last four followed by a
            1x1 convolution. With valid padding ``bilinear`` changes the size arithmetic (see the module doc).
    """

    def __init__(
        self,
        num_classes: int = 2,
        in_channels: int = 1,
        base_channels: int = 64,
        depth: int = 4,
        padding: Padding = "valid",
        batch_norm: bool = False,
        dropout: float = 0.5,
        upsampling: str = "transposed",
    ) -> None:
        super().__init__()
        check_upsampling(upsampling)
        if padding not in ("valid", "same"):
            raise ValueError(f"padding must be 'valid' or 'same', got {padding!r}")
        if depth < 1 or base_channels < 1:
            raise ValueError(f"depth and base_channels must be positive, got {depth} and {base_channels}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.num_classes = num_classes
        self.in_channels = in_channels
        self.depth = depth
        self.padding: Padding = padding
        self.upsampling = upsampling
        channels = [base_channels * 2**level for level in range(depth + 1)]
        self.down = nn.ModuleList()
        c_in = in_channels
        for c in channels[:-1]:
            self.down.append(_conv_block(c_in, c, padding, batch_norm))
            c_in = c
        self.pool = nn.MaxPool2d(kernel_size=2, stride=2, return_indices=upsampling == "max_unpool")
        self.bottom = _conv_block(channels[-2], channels[-1], padding, batch_norm)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.up = nn.ModuleList()
        self.up_blocks = nn.ModuleList()
        for level in reversed(range(depth)):
            self.up.append(make_upsampling(upsampling, channels[level + 1], channels[level], valid=padding == "valid"))
            self.up_blocks.append(_conv_block(2 * channels[level], channels[level], padding, batch_norm))
        self.head = nn.Conv2d(channels[0], num_classes, kernel_size=1)
        self.reset_parameters()

    # -- geometry used by zoo.segmentation.tiling ------------------------------------------------------
    @property
    def size_divisor(self) -> int:
        """Tiles must move in steps of ``2**depth`` for the pooling grids to line up."""
        return 2**self.depth

    def output_size(self, input_size: int) -> int:
        """Output side for an input side; an error naming the nearest valid sizes otherwise."""
        return unet_output_size(input_size, self.depth, self.padding, self.upsampling)

    def input_size(self, output_size: int) -> int:
        """The smallest valid input side giving at least ``output_size`` output pixels."""
        return unet_input_size(output_size, self.depth, self.padding, self.upsampling)

    @property
    def border(self) -> int:
        """Pixels lost on each side by the valid convolutions (92 for depth 4), 0 for ``same``."""
        if self.padding == "same":
            return 0
        s = unet_input_size(1, self.depth, "valid", self.upsampling)
        return (s - unet_output_size(s, self.depth, "valid", self.upsampling)) // 2

    def reset_parameters(self) -> None:
        """He initialisation, sec. 3: N(0, sqrt(2/N)) with N the incoming nodes of one neuron
        (3x3 conv: 9 x input channels; 2x2 up-convolution with stride 2: input channels)."""
        for m in self.modules():
            if isinstance(m, nn.ConvTranspose2d):
                kh, kw = m.kernel_size
                sh, sw = m.stride
                fan_in = m.in_channels * (kh // sh) * (kw // sw)
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_in))
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def check_input(self, x: torch.Tensor) -> None:
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"UNet expects a batch (N, {self.in_channels}, H, W), got shape {tuple(x.shape)}. "
                f"Fix: build it with in_channels={x.shape[1] if x.ndim == 4 else '?'} or convert the images."
            )
        for name, size in zip(("height", "width"), x.shape[-2:], strict=True):
            if _output_size_or_none(int(size), self.depth, self.padding, self.upsampling) is None:
                raise _size_error(f"input {name}", int(size), self.depth, self.padding, self.upsampling)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        unpool = self.upsampling == "max_unpool"
        skips, indices = [], []
        for block in self.down:
            x = block(x)
            skips.append(x)
            if unpool:
                x, where = self.pool(x)
                indices.append(where)
            else:
                x = self.pool(x)
        x = self.dropout(self.bottom(x))
        for level, (up, block, skip) in enumerate(zip(self.up, self.up_blocks, reversed(skips), strict=True)):
            if unpool:
                # valid convolutions: the decoder map is the centre of the pooled one, so are its indices
                where = crop_pool_indices(indices[-1 - level], skip.shape[-2:], *x.shape[-2:])
                x = up(x, where)
            else:
                x = up(x)
            x = block(torch.cat([center_crop(skip, *x.shape[-2:]), x], dim=1))
        return self.head(x)


@register_model("segmentation", "unet_same")
def unet_same(
    num_classes: int = 2,
    in_channels: int = 1,
    base_channels: int = 64,
    depth: int = 4,
    batch_norm: bool = True,
    dropout: float = 0.5,
    upsampling: str = "transposed",
) -> UNet:
    """U-Net with zero-padded ('same') convolutions and BatchNorm: output the size of the input; ``upsampling`` as
    in :class:`UNet`."""
    return UNet(num_classes, in_channels, base_channels, depth, "same", batch_norm, dropout, upsampling)


__all__ = [
    "InvalidInputSizeError",
    "UNet",
    "center_crop",
    "nearest_valid_sizes",
    "unet_input_size",
    "unet_output_size",
    "unet_same",
]
