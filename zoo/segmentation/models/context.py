"""Multi-scale context aggregation: Yu and Koltun, "Multi-Scale Context Aggregation by Dilated Convolutions",
ICLR 2016 (arXiv 1511.07122).

* :class:`ContextModule` (sec. 3, table 1): seven 3x3 convolutions with dilations 1, 1, 2, 4, 8, 16, 1, each
  followed by the pointwise truncation max(., 0), then a 1x1 convolution without truncation; C feature maps in,
  C out, the size kept (each convolution zero-padded by its dilation), receptive field 67x67. The *basic* module
  has C channels in every layer (64 C^2 weights); the *large* one 2C, 2C, 4C, 8C, 16C, 32C, 32C, then C.
  Initialisation: the identity of eq. 4 (basic: the centre tap of channel a to channel a is 1, all else 0) or of
  eq. 5 (large: the centre tap is C / c_out between channels of the same group, plus small Gaussian noise), with
  zero biases: the untrained module passes a non-negative input through unchanged (a negative value is
  truncated by the first layer's max(., 0), as in the paper). It maps any C-channel map and is usable alone.
* :class:`DilatedFrontEnd` (sec. 4): VGG-16 adapted to dense prediction: the last two poolings (and their
  striding) removed, the convolutions after them dilated by 2 for each removed pooling (conv5: 2; fc6, a 7x7
  convolution: 4), fc7 (1x1) and a 1x1 classifier to C classes; output stride 8. The paper also removes the
  intermediate padding and reflection-pads the input instead; here every convolution is zero-padded to keep the
  size, so any input side of at least 8 works.
* :class:`DilatedContextNet` (registered ``dilated_context``): front end, context module on its C class maps, and
  bilinear upsampling of the result to the input size (the paper's 8x upsampling of the 1/8-resolution output).

``width`` (64 in VGG-16) sets the channels of the front end's first block, doubled per block up to ``8 * width``,
so that a CPU can train a narrow copy.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F

from zoo.core.registry import register_model
from zoo.segmentation.models.deconvnet import VGG16_BLOCKS, check_image_batch, vgg_channels

CONTEXT_DILATIONS: tuple[int, ...] = (1, 1, 2, 4, 8, 16, 1)  # table 1, layers 1-7 (layer 8 is the 1x1 output)
LARGE_MULTIPLIERS: tuple[int, ...] = (2, 2, 4, 8, 16, 32, 32)  # table 1, output channels of the large module / C
ContextVariant = Literal["basic", "large"]


class ContextModule(nn.Module):
    """The context module of Yu and Koltun 2016 (sec. 3, table 1), identity-initialised (eq. 4 / 5).

    Args:
        channels: C, the feature maps in and out (the number of classes when it follows a front end).
        variant: ``basic`` (C channels in every layer) or ``large`` (2C ... 32C, table 1).
        noise_std: the large module's eq. 5 noise, as a fraction of each layer's C / c_out (sigma << C / c_out);
            the basic module has none.
    """

    def __init__(self, channels: int, variant: ContextVariant = "basic", noise_std: float = 1e-3) -> None:
        super().__init__()
        if variant not in ("basic", "large"):
            raise ValueError(f"variant must be 'basic' or 'large', got {variant!r}")
        if channels < 1:
            raise ValueError(f"channels must be positive, got {channels}")
        self.channels, self.variant, self.noise_std = channels, variant, noise_std
        widths = (
            [channels] * len(CONTEXT_DILATIONS) if variant == "basic" else [m * channels for m in LARGE_MULTIPLIERS]
        )
        layers: list[nn.Module] = []
        c_in = channels
        for c_out, dilation in zip(widths, CONTEXT_DILATIONS, strict=True):
            layers += [nn.Conv2d(c_in, c_out, 3, padding=dilation, dilation=dilation), nn.ReLU(inplace=True)]
            c_in = c_out
        layers.append(nn.Conv2d(c_in, channels, 1))  # layer 8: no truncation
        self.layers = nn.Sequential(*layers)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Eq. 4 (basic) / eq. 5 (large): k^b(t, a) = [t = 0] C / c_out where channels a and b fall in the same one
        of C groups (a * C // c_in == b * C // c_out; the identity when c_in = c_out = C), plus N(0, sigma^2) noise
        for the large module; biases zero."""
        big_c = self.channels
        for conv in self.layers:
            if not isinstance(conv, nn.Conv2d):
                continue
            c_out, c_in, kh, kw = conv.weight.shape
            b = torch.arange(c_out, device=conv.weight.device)
            a = torch.arange(c_in, device=conv.weight.device)
            same_group = (a[None, :] * big_c // c_in == b[:, None] * big_c // c_out).to(conv.weight.dtype)
            conv.weight.zero_()
            if self.variant == "large" and self.noise_std > 0:
                conv.weight.normal_(0.0, self.noise_std * big_c / c_out)
            conv.weight[:, :, kh // 2, kw // 2] += same_group * (big_c / c_out)
            conv.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != self.channels:
            raise ValueError(f"ContextModule({self.channels}) expects (N, {self.channels}, H, W), got {tuple(x.shape)}")
        return self.layers(x)


class DilatedFrontEnd(nn.Module):
    """The front end of Yu and Koltun 2016 (sec. 4): VGG-16 without its last two poolings, conv5 dilated by 2,
    fc6 (``fc_kernel`` x ``fc_kernel``) dilated by 4, fc7, a 1x1 classifier; output stride 8.

    Args:
        num_classes: C, the class maps it outputs.
        in_channels: image channels.
        width: channels of the first block (64 in VGG-16), doubled per block up to ``8 * width``.
        fc_channels: channels of fc6 / fc7; None: ``64 * width`` (VGG-16's 4096).
        fc_kernel: fc6's kernel (7 in VGG-16).
        dropout: drop-out after fc6 and fc7 (VGG-16's 0.5).
    """

    def __init__(
        self,
        num_classes: int = 21,
        in_channels: int = 3,
        width: int = 64,
        fc_channels: int | None = None,
        fc_kernel: int = 7,
        dropout: float = 0.5,
    ) -> None:
        super().__init__()
        channels = vgg_channels(width)
        fc = fc_channels or 64 * width
        layers: list[nn.Module] = []
        c_in = in_channels
        for block, (n, c) in enumerate(zip(VGG16_BLOCKS, channels, strict=True)):
            dilation = 2 if block == 4 else 1  # conv5 follows the removed pool4
            for _ in range(n):
                layers += [nn.Conv2d(c_in, c, 3, padding=dilation, dilation=dilation), nn.ReLU(inplace=True)]
                c_in = c
            if block < 3:  # pool1-3 stay; pool4 and pool5 are removed
                layers.append(nn.MaxPool2d(2, 2))
        self.features = nn.Sequential(*layers)
        self.fc6 = nn.Conv2d(c_in, fc, fc_kernel, padding=4 * (fc_kernel // 2), dilation=4)  # after both removed
        self.fc7 = nn.Conv2d(fc, fc, 1)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.classifier = nn.Conv2d(fc, num_classes, 1)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        x = self.dropout(F.relu(self.fc6(x)))
        x = self.dropout(F.relu(self.fc7(x)))
        return self.classifier(x)


@register_model("segmentation", "dilated_context")
class DilatedContextNet(nn.Module):
    """Yu and Koltun 2016: the dilated VGG-16 front end, the context module on its class maps, bilinear upsampling
    to the input size. Registered as ``dilated_context``.

    Args:
        num_classes: C (21 for PASCAL VOC).
        in_channels: image channels.
        width, fc_channels, fc_kernel, dropout: the front end's (:class:`DilatedFrontEnd`).
        context: ``basic`` or ``large`` context module (:class:`ContextModule`), or ``none``: the front end alone
            (the paper trains it first, then adds the module).
    """

    size_divisor = 8  # for the tiler: tiles on the pooling grid; the network itself takes any side >= 8

    def __init__(
        self,
        num_classes: int = 21,
        in_channels: int = 3,
        width: int = 64,
        fc_channels: int | None = None,
        fc_kernel: int = 7,
        dropout: float = 0.5,
        context: Literal["basic", "large", "none"] = "basic",
    ) -> None:
        super().__init__()
        if context not in ("basic", "large", "none"):
            raise ValueError(f"context must be 'basic', 'large' or 'none', got {context!r}")
        self.num_classes, self.in_channels = num_classes, in_channels
        self.front_end = DilatedFrontEnd(num_classes, in_channels, width, fc_channels, fc_kernel, dropout)
        self.context = ContextModule(num_classes, context) if context != "none" else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_image_batch(x, self.in_channels, 8, "DilatedContextNet")
        out = self.context(self.front_end(x))
        return F.interpolate(out, size=(int(x.shape[-2]), int(x.shape[-1])), mode="bilinear", align_corners=False)


__all__ = [
    "CONTEXT_DILATIONS",
    "LARGE_MULTIPLIERS",
    "ContextModule",
    "ContextVariant",
    "DilatedContextNet",
    "DilatedFrontEnd",
]
