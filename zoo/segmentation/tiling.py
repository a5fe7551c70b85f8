"""Overlap-tile inference for images of any size (Ronneberger et al. 2015, sec. 2 and fig. 2).

The image is mirror-padded, cut into tiles that are run through the network in batches, and the
tile outputs are put back together:

* **Valid-convolution networks** (the paper's :class:`~zoo.segmentation.models.UNet`): a tile of
  input side ``s`` predicts the central ``s - 2 * border`` pixels, the missing context at the image
  border is mirrored (fig. 2). Tiles move in steps that are multiples of ``2**depth``, so every
  tile's 2x2 pooling grid lines up with that of one forward pass over the whole mirror-padded
  image, and the stitched result *equals* that pass (up to float rounding) - no blending needed.
* **Padded networks** (smp architectures, PSPNet, ``unet_same``): tiles overlap by ``overlap``
  pixels and are blended with weights that fall off linearly towards each tile's edge, where the
  network saw zero padding instead of context. The result differs slightly from a whole-image pass
  (``bench/tiling.py`` reports by how much).

Per axis the number of tiles is the fewest that ``tile_size`` allows, and the tiles are then shrunk
to the smallest size that still covers the image, so little work is spent on padding. Memory for
the network is bounded by ``batch_size`` tiles whatever the image size; the image, its padded copy
and the output logits are the only image-sized buffers.

A network tells the tiler its geometry with two optional attributes: ``size_divisor`` (input sides
must be multiples of it; tiles of valid networks move in multiples of it) and ``output_size(n)`` /
``input_size(n)`` methods (valid networks: output side for an input side, and the smallest input
side giving at least ``n`` output pixels). Networks without them are treated as padded with
divisor 1; smp models get ``size_divisor`` from :func:`zoo.segmentation.models.build_smp`.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


def mirror_pad(x: torch.Tensor, top: int, bottom: int, left: int, right: int) -> torch.Tensor:
    """Mirror (reflect, edge pixel not repeated) padding of the last two dimensions by any amount,
    also more than the image side (the reflection is then repeated, as in the paper's fig. 2)."""
    pads = [left, right, top, bottom]
    if min(pads) < 0:
        raise ValueError(f"padding must be non-negative, got top={top} bottom={bottom} left={left} right={right}")
    while any(pads):
        h, w = x.shape[-2:]
        step = [min(pads[0], w - 1), min(pads[1], w - 1), min(pads[2], h - 1), min(pads[3], h - 1)]
        if not any(step):  # a 1-pixel side cannot be reflected: repeat it
            return F.pad(x, pads, mode="replicate")
        x = F.pad(x, step, mode="reflect")
        pads = [p - s for p, s in zip(pads, step, strict=True)]
    return x


@dataclass(frozen=True)
class AxisPlan:
    """How one image axis of ``length`` pixels is tiled.

    The padded axis is ``pad_before + length + pad_after`` long; tile ``k`` reads padded input
    ``[starts[k], starts[k] + tile)`` and its output covers image pixels ``[starts[k], starts[k] + out)``
    (valid networks) or padded pixels ``[starts[k], starts[k] + tile)`` (padded networks).
    """

    length: int
    tile: int
    out: int
    starts: tuple[int, ...]
    pad_before: int
    pad_after: int
    valid: bool

    @property
    def padded(self) -> int:
        return self.pad_before + self.length + self.pad_after


@dataclass(frozen=True)
class Geometry:
    """What the tiler needs to know of a network: valid or padded, border lost per side, divisor."""

    valid: bool
    border: int
    divisor: int
    net: nn.Module

    def output_size(self, size: int) -> int:
        return self.net.output_size(size) if self.valid else size

    def input_size(self, size: int) -> int:
        if self.valid:
            return self.net.input_size(size)
        return math.ceil(size / self.divisor) * self.divisor


def network_geometry(net: nn.Module) -> Geometry:
    """Read ``size_divisor`` / ``output_size`` / ``input_size`` off a network (see the module doc)."""
    divisor = int(getattr(net, "size_divisor", 1) or 1)
    if hasattr(net, "output_size") and hasattr(net, "input_size"):
        probe = net.input_size(1)
        border = (probe - net.output_size(probe)) // 2
        if border > 0:
            return Geometry(True, border, divisor, net)
    return Geometry(False, 0, divisor, net)


def plan_axis(length: int, tile_size: int, geometry: Geometry, overlap: int = 0) -> AxisPlan:
    """Tile one axis: the fewest tiles of input side at most ``tile_size``, shrunk to cover ``length``."""
    if length < 1:
        raise ValueError(f"cannot tile an axis of length {length}")
    d = geometry.divisor
    if geometry.valid:
        # the largest valid input <= tile_size, and its step (output rounded down to the divisor)
        smallest = geometry.input_size(d)
        if tile_size < smallest:
            raise ValueError(
                f"tile_size={tile_size} is too small for this network: tiles must be at least {smallest} "
                f"pixels (output {geometry.output_size(smallest)}, of which {d} are used per step). Fix: "
                f"--model.init_args.tile_size {smallest} or more."
            )
        largest = max(s for s in range(tile_size - 2 * d - 1, tile_size + 1) if _valid(geometry, s))
        max_step = geometry.output_size(largest) // d * d
        n = math.ceil(length / max_step)
        step = math.ceil(length / n / d) * d  # shrink: the smallest step covering the axis with n tiles
        tile = geometry.input_size(step)
        out = geometry.output_size(tile)
        starts = tuple(k * step for k in range(n))
        padded = starts[-1] + tile
        return AxisPlan(length, tile, out, starts, geometry.border, padded - length - geometry.border, True)
    tile_max = tile_size // d * d
    if tile_max < d:
        raise ValueError(f"tile_size={tile_size} is smaller than this network's size divisor {d}")
    overlap = min(max(overlap, 0), tile_max - d)
    n = 1 if length <= tile_max else math.ceil((length - tile_max) / (tile_max - overlap)) + 1
    tile = math.ceil((length + (n - 1) * overlap) / n / d) * d
    tile = max(tile, overlap + 1) if n > 1 else tile
    stride = tile - overlap
    padded = (n - 1) * stride + tile
    pad_total = padded - length
    starts = tuple(k * stride for k in range(n))
    return AxisPlan(length, tile, tile, starts, pad_total // 2, pad_total - pad_total // 2, False)


def _valid(geometry: Geometry, size: int) -> bool:
    try:
        geometry.output_size(size)
    except ValueError:
        return False
    return size > 0


def _blend_window(tile: int, overlap: int, n_tiles: int, device: torch.device) -> torch.Tensor:
    """1D blending weights: 1 in the middle, falling linearly to ~0 over ``overlap`` pixels at each edge."""
    if n_tiles == 1 or overlap <= 0:
        return torch.ones(tile, device=device)
    i = torch.arange(tile, device=device, dtype=torch.float32)
    ramp = torch.minimum(i + 0.5, tile - i - 0.5) / overlap
    return ramp.clamp(1e-3, 1.0)


def _forward(net: nn.Module, x: torch.Tensor, flips: bool) -> torch.Tensor:
    def run(t: torch.Tensor) -> torch.Tensor:
        out = net(t)
        return out if isinstance(out, torch.Tensor) else out[0]

    if not flips:
        return run(x)
    total = run(x)
    for dims in ((-1,), (-2,), (-2, -1)):
        total = total + run(x.flip(dims)).flip(dims)
    return total / 4


class _EvalMode:
    def __init__(self, net: nn.Module) -> None:
        self.net, self.was_training = net, net.training

    def __enter__(self) -> None:
        self.net.eval()

    def __exit__(self, *exc: object) -> None:
        self.net.train(self.was_training)


def _device_of(net: nn.Module, fallback: torch.device) -> torch.device:
    param = next(net.parameters(), None)
    return param.device if param is not None else fallback


def _as_batch(images: torch.Tensor) -> tuple[torch.Tensor, bool]:
    if images.ndim == 3:
        return images.unsqueeze(0), True
    if images.ndim != 4:
        raise ValueError(f"expected an image (C, H, W) or a batch (N, C, H, W), got shape {tuple(images.shape)}")
    return images, False


@torch.no_grad()
def predict_whole(net: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Logits of one forward pass over the whole (mirror-padded) image: the reference that
    :func:`predict_tiled` is compared with. Valid networks get ``border`` mirrored pixels on the top
    and left and enough on the bottom and right to reach a valid size; padded networks are padded
    to a multiple of ``size_divisor`` (split between both sides)."""
    batch, squeeze = _as_batch(images)
    geometry = network_geometry(net)
    pads = []
    for length in batch.shape[-2:]:
        if geometry.valid:
            size = geometry.input_size(length)
            pads.append((geometry.border, size - length - geometry.border))
        else:
            total = geometry.input_size(length) - length
            pads.append((total // 2, total - total // 2))
    (top, bottom), (left, right) = pads
    device = _device_of(net, batch.device)
    with _EvalMode(net):
        padded = mirror_pad(batch.to(device), top, bottom, left, right)
        out = _forward(net, padded, flips=False)
    h, w = batch.shape[-2:]
    # a valid network's output starts at the image's first pixel (the top/left pad is its border)
    oy, ox = (0, 0) if geometry.valid else (top, left)
    out = out[..., oy : oy + h, ox : ox + w].to(batch.device)
    return out[0] if squeeze else out


def _tiles(plan_h: AxisPlan, plan_w: AxisPlan, n_images: int) -> Iterator[tuple[int, int, int]]:
    for i in range(n_images):
        for y in plan_h.starts:
            for x in plan_w.starts:
                yield i, y, x


@torch.no_grad()
def predict_tiled(
    net: nn.Module,
    images: torch.Tensor,
    tile_size: int | None = 572,
    overlap: int = 64,
    batch_size: int = 4,
    flips: bool = False,
) -> torch.Tensor:
    """Segment images of any size tile by tile (overlap-tile strategy, paper fig. 2).

    Args:
        net: a segmentation network (``(N, C, h, w) -> (N, K, h', w')``); run in eval mode here.
        images: ``(C, H, W)`` or ``(N, C, H, W)`` normalized images.
        tile_size: largest network input side of a tile (572 in the paper); rounded down to a
            valid size. None: one forward pass over the whole image (:func:`predict_whole`).
        overlap: overlap of neighbouring tiles in pixels, blended; padded networks only (valid
            networks tile seamlessly).
        batch_size: tiles per forward pass.
        flips: test-time augmentation: average the logits over horizontal, vertical and both flips.

    Returns:
        logits ``(N, K, H, W)`` (or ``(K, H, W)``) on the images' device.
    """
    if tile_size is None:
        if flips:
            batch, squeeze = _as_batch(images)
            out = sum(predict_whole(net, batch.flip(d)).flip(d) for d in ((-1,), (-2,), (-2, -1))) + predict_whole(
                net, batch
            )
            out = out / 4
            return out[0] if squeeze else out
        return predict_whole(net, images)
    batch, squeeze = _as_batch(images)
    n, _, h, w = batch.shape
    geometry = network_geometry(net)
    plan_h = plan_axis(h, tile_size, geometry, overlap)
    plan_w = plan_axis(w, tile_size, geometry, overlap)
    device = _device_of(net, batch.device)
    padded = mirror_pad(batch, plan_h.pad_before, plan_h.pad_after, plan_w.pad_before, plan_w.pad_after)
    tiles = list(_tiles(plan_h, plan_w, n))
    output: torch.Tensor | None = None
    norm: torch.Tensor | None = None
    window: torch.Tensor | None = None
    with _EvalMode(net):
        for first in range(0, len(tiles), batch_size):
            chunk = tiles[first : first + batch_size]
            x = torch.stack([padded[i, :, y : y + plan_h.tile, xx : xx + plan_w.tile] for i, y, xx in chunk])
            logits = _forward(net, x.to(device), flips).to(batch.device)
            if output is None:
                k = logits.shape[1]
                if geometry.valid:
                    output = batch.new_zeros((n, k, h, w), dtype=logits.dtype)
                else:
                    output = batch.new_zeros((n, k, plan_h.padded, plan_w.padded), dtype=logits.dtype)
                    norm = batch.new_zeros((1, 1, plan_h.padded, plan_w.padded), dtype=logits.dtype)
                    window = torch.outer(
                        _blend_window(plan_h.tile, overlap, len(plan_h.starts), batch.device),
                        _blend_window(plan_w.tile, overlap, len(plan_w.starts), batch.device),
                    ).to(logits.dtype)
            for (i, y, xx), tile_logits in zip(chunk, logits, strict=True):
                if geometry.valid:
                    # the tile's output starts at image pixel (y, xx): pad_before == border
                    hh, ww = min(plan_h.out, h - y), min(plan_w.out, w - xx)
                    output[i, :, y : y + hh, xx : xx + ww] = tile_logits[:, :hh, :ww]
                else:
                    output[i, :, y : y + plan_h.tile, xx : xx + plan_w.tile] += tile_logits * window
                    if i == 0:
                        norm[0, 0, y : y + plan_h.tile, xx : xx + plan_w.tile] += window
    assert output is not None
    if not geometry.valid:
        output = output.div_(norm)[
            ..., plan_h.pad_before : plan_h.pad_before + h, plan_w.pad_before : plan_w.pad_before + w
        ]
    return output[0] if squeeze else output


__all__ = [
    "AxisPlan",
    "Geometry",
    "mirror_pad",
    "network_geometry",
    "plan_axis",
    "predict_tiled",
    "predict_whole",
]
