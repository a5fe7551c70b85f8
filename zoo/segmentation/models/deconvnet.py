"""Encoder-decoder networks that upsample with the encoder's own max-pooling indices:

* **DeconvNet**: Noh, Hong, Han, "Learning Deconvolution Network for Semantic Segmentation", ICCV 2015
  (arXiv 1505.04366). Sec. 3, fig. 2 and table 1: the 13 convolutions of VGG-16 with 2x2 max pooling, fc6 (a 7x7
  convolution to 4096 channels, 1x1 output on a 224x224 input) and fc7 (1x1, 4096) as convolutions; a mirrored
  *deconvolution network*: deconv-fc6 (a 7x7 transposed convolution back to 7x7x512), then per VGG block an
  unpooling with the switch variables (the argmax positions) of the matching pooling (sec. 3.2.1) followed by
  3x3 deconvolution layers (transposed convolutions, sec. 3.2.2) with the channels of table 1; a 1x1 output
  layer to the classes. Sec. 4.1: batch normalization after every convolution and deconvolution. Table 1's layers
  with 21 classes count 251.8M parameters (the 252M quoted for DeconvNet), 222M of them in fc6, fc7 and
  deconv-fc6.
* **SegNet**: Badrinarayanan, Kendall, Cipolla, "SegNet: A Deep Convolutional Encoder-Decoder Architecture for
  Image Segmentation", TPAMI 2017 (arXiv 1511.00561). Sec. 3, fig. 2 and 3: the encoder is VGG-16's 13
  convolutions without its fully connected layers (14.7M parameters), each followed by batch normalization and
  ReLU, with 2x2 max pooling whose indices are kept; every decoder upsamples with the indices of its encoder
  (parameter-free, fig. 3), then its trainable 3x3 convolutions (+ BN + ReLU) densify the sparse map, one
  decoder convolution per encoder convolution; the last one gives the class scores for the soft-max. 29.5M
  parameters in all.

``width`` is the channels of the first block (64 in both papers), doubled per block up to ``8 * width``, so that
a CPU can train a narrow copy of the same architecture.

Input sizes: any side of at least 32 (five poolings) gives an output of the input's size. The encoder records
every pooling's input size and every unpooling restores it (``MaxUnpool2d``'s ``output_size``): an odd size,
whose pooling dropped the last row or column, comes back with that row or column zero, to be filled by the
decoder's convolutions; no padding or cropping of the image. DeconvNet's fc6 needs a ``fc_kernel`` x ``fc_kernel``
pool5 map (224 pixels for the paper's 7): a smaller map is zero-padded to it around fc6 and cropped back after
deconv-fc6, the zeros a padded convolution would see. ``size_divisor`` 32 tells the tiler to cut tiles on the
pooling grid.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from zoo.core.errors import ZooUserError
from zoo.core.registry import register_model
from zoo.segmentation.models.upsampling import MaxUnpool

VGG16_BLOCKS: tuple[int, ...] = (2, 2, 3, 3, 3)  # 3x3 convolutions per VGG-16 block (Simonyan and Zisserman, table 1)


class InputTooSmallError(ZooUserError, ValueError):
    """An input side smaller than a network's poolings can take."""


def vgg_channels(width: int) -> list[int]:
    """Channels of the five VGG-16 blocks for a first block of ``width`` (64: 64, 128, 256, 512, 512)."""
    if width < 1:
        raise ValueError(f"width must be positive, got {width}")
    return [width, 2 * width, 4 * width, 8 * width, 8 * width]


def check_image_batch(x: torch.Tensor, in_channels: int, min_side: int, name: str) -> None:
    """A batch ``(N, in_channels, H, W)`` with both sides at least ``min_side``; an error saying the fix otherwise."""
    if x.ndim != 4 or x.shape[1] != in_channels:
        raise ValueError(
            f"{name} expects a batch (N, {in_channels}, H, W), got shape {tuple(x.shape)}. "
            f"Fix: build it with in_channels={x.shape[1] if x.ndim == 4 else '?'} or convert the images."
        )
    if min(x.shape[-2:]) < min_side:
        raise InputTooSmallError(
            f"{name} cannot take a {x.shape[-2]}x{x.shape[-1]} input: its poolings need sides of at least "
            f"{min_side}. Fix: mirror-pad the image to {min_side} pixels or more (zoo.segmentation.predict_tiled "
            f"pads to the network's size_divisor)."
        )


def _conv_bn_relu(in_ch: int, out_ch: int, transposed: bool = False) -> nn.Sequential:
    conv_type = nn.ConvTranspose2d if transposed else nn.Conv2d
    return nn.Sequential(conv_type(in_ch, out_ch, 3, padding=1), nn.BatchNorm2d(out_ch), nn.ReLU(inplace=True))


class VGGEncoder(nn.Module):
    """VGG-16's 13 3x3 convolutions in five blocks, each convolution followed by BatchNorm and ReLU (the layout of
    torchvision's ``vgg16_bn().features``), and 2x2 max pooling after every block that keeps its indices."""

    def __init__(self, in_channels: int = 3, width: int = 64, blocks: tuple[int, ...] = VGG16_BLOCKS) -> None:
        super().__init__()
        self.channels = vgg_channels(width)[: len(blocks)]
        self.blocks = nn.ModuleList()
        c_in = in_channels
        for n, c in zip(blocks, self.channels, strict=True):
            self.blocks.append(nn.Sequential(*(_conv_bn_relu(c_in if i == 0 else c, c) for i in range(n))))
            c_in = c
        self.pool = nn.MaxPool2d(kernel_size=2, stride=2, return_indices=True)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor], list[tuple[int, int]]]:
        """The pooled features of the last block, each pooling's indices and each pooling's input size."""
        indices: list[torch.Tensor] = []
        sizes: list[tuple[int, int]] = []
        for block in self.blocks:
            x = block(x)
            sizes.append((int(x.shape[-2]), int(x.shape[-1])))
            x, where = self.pool(x)
            indices.append(where)
        return x, indices, sizes


def _decoder_block(n: int, c: int, c_out: int, transposed: bool) -> nn.Sequential:
    """``n`` 3x3 layers at ``c`` channels, the last one to ``c_out``: the mirror of an encoder block."""
    return nn.Sequential(*(_conv_bn_relu(c, c if i < n - 1 else c_out, transposed) for i in range(n)))


def _init_weights(net: nn.Module) -> None:
    for m in net.modules():
        if isinstance(m, nn.Conv2d | nn.ConvTranspose2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


@register_model("segmentation", "segnet")
class SegNet(nn.Module):
    """SegNet (Badrinarayanan et al. 2017, sec. 3, fig. 2): VGG-16 encoder, decoders that unpool with their own
    encoder's max-pooling indices and densify with 3x3 convolutions. Registered as ``segnet``; full width with
    11 classes (CamVid, sec. 4): 29.5M parameters, 14.7M of them in the encoder.

    Args:
        num_classes: output channels of the last decoder convolution (11 for CamVid).
        in_channels: image channels.
        width: channels of the first block (64 in the paper), doubled per block up to ``8 * width``.
    """

    size_divisor = 32  # for the tiler: tiles on the pooling grid; the network itself takes any side >= 32

    def __init__(self, num_classes: int = 11, in_channels: int = 3, width: int = 64) -> None:
        super().__init__()
        self.num_classes, self.in_channels = num_classes, in_channels
        self.encoder = VGGEncoder(in_channels, width)
        channels = self.encoder.channels
        self.unpool = MaxUnpool()
        self.decoders = nn.ModuleList()
        for level in reversed(range(1, len(VGG16_BLOCKS))):
            self.decoders.append(_decoder_block(VGG16_BLOCKS[level], channels[level], channels[level - 1], False))
        # the first block's decoder ends in the class scores for the soft-max: no BN / ReLU on its last convolution
        c = channels[0]
        self.decoders.append(
            nn.Sequential(
                *(_conv_bn_relu(c, c) for _ in range(VGG16_BLOCKS[0] - 1)), nn.Conv2d(c, num_classes, 3, 1, 1)
            )
        )
        _init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_image_batch(x, self.in_channels, 2 ** len(VGG16_BLOCKS), "SegNet")
        x, indices, sizes = self.encoder(x)
        for decoder, where, size in zip(self.decoders, reversed(indices), reversed(sizes), strict=True):
            x = decoder(self.unpool(x, where, size))
        return x


@register_model("segmentation", "deconvnet")
class DeconvNet(nn.Module):
    """DeconvNet (Noh et al. 2015, sec. 3, fig. 2, table 1): VGG-16 convolutions, fc6 / fc7 as convolutions, and a
    mirrored deconvolution network of unpooling (the matching pooling's switches) and 3x3 deconvolution layers.
    Registered as ``deconvnet``; full width with 21 classes (PASCAL VOC): about 252M parameters.

    Args:
        num_classes: output channels of the 1x1 output layer (21 for PASCAL VOC).
        in_channels: image channels.
        width: channels of the first block (64 in the paper), doubled per block up to ``8 * width``.
        fc_channels: channels of fc6 / fc7; None: ``64 * width`` (the paper's 4096).
        fc_kernel: kernel of fc6 and deconv-fc6 (7 in the paper: a 224x224 input's pool5 map).
    """

    size_divisor = 32  # for the tiler: tiles on the pooling grid; the network itself takes any side >= 32

    def __init__(
        self,
        num_classes: int = 21,
        in_channels: int = 3,
        width: int = 64,
        fc_channels: int | None = None,
        fc_kernel: int = 7,
    ) -> None:
        super().__init__()
        if fc_kernel < 1:
            raise ValueError(f"fc_kernel must be positive, got {fc_kernel}")
        self.num_classes, self.in_channels, self.fc_kernel = num_classes, in_channels, fc_kernel
        self.encoder = VGGEncoder(in_channels, width)
        channels = self.encoder.channels
        fc = fc_channels or 64 * width
        self.fc6 = nn.Sequential(nn.Conv2d(channels[-1], fc, fc_kernel), nn.BatchNorm2d(fc), nn.ReLU(inplace=True))
        self.fc7 = nn.Sequential(nn.Conv2d(fc, fc, 1), nn.BatchNorm2d(fc), nn.ReLU(inplace=True))
        self.deconv_fc6 = nn.Sequential(
            nn.ConvTranspose2d(fc, channels[-1], fc_kernel), nn.BatchNorm2d(channels[-1]), nn.ReLU(inplace=True)
        )
        self.unpool = MaxUnpool()
        self.decoders = nn.ModuleList()
        for level in reversed(range(len(VGG16_BLOCKS))):
            c_out = channels[level - 1] if level > 0 else channels[0]
            self.decoders.append(_decoder_block(VGG16_BLOCKS[level], channels[level], c_out, transposed=True))
        self.head = nn.Conv2d(channels[0], num_classes, 1)
        _init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_image_batch(x, self.in_channels, 2 ** len(VGG16_BLOCKS), "DeconvNet")
        x, indices, sizes = self.encoder(x)
        h, w = int(x.shape[-2]), int(x.shape[-1])
        pad_h, pad_w = max(0, self.fc_kernel - h), max(0, self.fc_kernel - w)
        if pad_h or pad_w:
            x = F.pad(x, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2))
        x = self.deconv_fc6(self.fc7(self.fc6(x)))
        x = x[..., pad_h // 2 : pad_h // 2 + h, pad_w // 2 : pad_w // 2 + w]
        for decoder, where, size in zip(self.decoders, reversed(indices), reversed(sizes), strict=True):
            x = decoder(self.unpool(x, where, size))
        return self.head(x)


__all__ = [
    "VGG16_BLOCKS",
    "DeconvNet",
    "InputTooSmallError",
    "SegNet",
    "VGGEncoder",
    "check_image_batch",
    "vgg_channels",
]
