"""Sliding-window pixel classification (lecture notes sec. 13.1): a small CNN classifies the patch around each
pixel, the label of the patch's centre. The classic instance is Ciresan, Giusti, Gambardella, Schmidhuber, "Deep
Neural Networks Segment Neuronal Membranes in Electron Microscopy Images", NIPS 2012 (sec. 2: a 65x65 window around
each pixel, mirrored at the image border; the defaults here are their network N4, table 1).

**The patch classifier** (:meth:`SlidingWindowClassifier.classify_patches`): ``len(channels)`` stages of a valid
``k x k`` convolution, ReLU and a 2x2 max-pooling with stride 2 (floor mode: a pooled map of odd side drops its last
row and column), then the fully connected layers written as convolutions: one whose kernel covers the whole
remaining map (``fc_kernel``, computed from ``patch_size``) with ``hidden`` units, ReLU, dropout, and a 1x1 layer
to the classes. A ``patch_size x patch_size`` patch gives a 1x1 map of class scores.

**The dense network** (the default ``forward``): running that classifier once per pixel repeats almost all of the
work of the neighbouring windows. The patch classifier is a fully convolutional network in disguise: evaluate it
on the whole (padded) image, with every 2x2 pooling of stride 2 replaced by a 2x2 pooling of stride 1 and every
later convolution and pooling dilated by the product of the strides removed before it (the "a trous" algorithm;
the same result as "shift-and-stitch", Long et al. 2015 sec. 3.2, without the stitching). The output at ``(i, j)``
is then exactly the classifier's output on the patch whose top-left corner is ``(i, j)`` of the padded image: one
pass gives every pixel's score with shared computation, and the same weights serve both forms.

**Padding**: the patch of pixel ``(y, x)`` covers rows ``y - patch_size // 2 ... y - patch_size // 2 + patch_size
- 1`` (centred for an odd ``patch_size``; one more row above than below for an even one), and likewise columns. The
image is padded by ``patch_size // 2`` before and ``patch_size - 1 - patch_size // 2`` after, by mirroring
(``padding_mode="reflect"``, the edge pixel not repeated, as Ciresan et al.; pads larger than the image repeat the
reflection, :func:`zoo.segmentation.tiling.mirror_pad`) or with zeros (``"zeros"``). Output size = input size.
Floor-mode poolings can leave the last rows and columns of a patch unread (the receptive field,
:attr:`SlidingWindowClassifier.receptive_field`, may be smaller than ``patch_size``); both forms agree on that.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F

from zoo.core.registry import register_model
from zoo.segmentation.tiling import mirror_pad

PaddingMode = Literal["reflect", "zeros"]


@register_model("segmentation", "sliding_window")
class SlidingWindowClassifier(nn.Module):
    """A patch classifier run densely over the image; see the module docstring (Ciresan et al. 2012).

    Args:
        num_classes: classes of the centre pixel (2 in Ciresan et al.: membrane / not).
        in_channels: image channels.
        patch_size: side of the window around each pixel (65 in Ciresan et al.).
        channels: output channels of each conv + pool stage (48 each in N4).
        kernel_sizes: the convolution kernel of each stage (N4: 4, 5, 4, 4); as many as ``channels``.
        hidden: units of the hidden fully connected layer (200 in N4).
        dropout: dropout before the last layer (0 disables it).
        padding_mode: ``"reflect"`` (mirror the image at its border) or ``"zeros"``.
    """

    def __init__(
        self,
        num_classes: int = 2,
        in_channels: int = 1,
        patch_size: int = 65,
        channels: Sequence[int] = (48, 48, 48, 48),
        kernel_sizes: Sequence[int] = (4, 5, 4, 4),
        hidden: int = 200,
        dropout: float = 0.5,
        padding_mode: PaddingMode = "reflect",
    ) -> None:
        super().__init__()
        if len(channels) != len(kernel_sizes) or not channels:
            raise ValueError(
                f"channels {list(channels)} and kernel_sizes {list(kernel_sizes)} must be equally long, one entry "
                "per conv + pool stage. Fix: give one kernel size per stage."
            )
        if padding_mode not in ("reflect", "zeros"):
            raise ValueError(f"padding_mode must be 'reflect' or 'zeros', got {padding_mode!r}.")
        side = patch_size
        sides = []
        for k in kernel_sizes:
            side = (side - k + 1) // 2  # valid convolution, then 2x2 pooling with stride 2 (floor)
            sides.append(side)
        if min(sides) < 1:
            raise ValueError(
                f"patch_size={patch_size} is too small for kernel_sizes {list(kernel_sizes)}: the stages leave "
                f"maps of sides {sides}. Fix: a larger patch_size, or fewer or smaller kernels."
            )
        self.patch_size = patch_size
        self.padding_mode = padding_mode
        self.fc_kernel = side
        self.convs = nn.ModuleList(
            nn.Conv2d(c_in, c_out, k)
            for c_in, c_out, k in zip([in_channels, *channels[:-1]], channels, kernel_sizes, strict=True)
        )
        self.fc = nn.Conv2d(channels[-1], hidden, side)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Conv2d(hidden, num_classes, 1)
        receptive, jump = 1, 1
        for k in kernel_sizes:
            receptive += (k - 1) * jump + jump  # the convolution, then the 2x2 pooling
            jump *= 2
        self.receptive_field = receptive + (side - 1) * jump

    def _layers(self, x: torch.Tensor, dense: bool) -> torch.Tensor:
        dilation = 1
        for conv in self.convs:
            x = F.relu(F.conv2d(x, conv.weight, conv.bias, dilation=dilation))
            if dense:
                x = F.max_pool2d(x, 2, stride=1, dilation=dilation)
                dilation *= 2  # the removed stride-2 subsampling, now spread over the later kernels
            else:
                x = F.max_pool2d(x, 2, stride=2)
        x = F.relu(F.conv2d(x, self.fc.weight, self.fc.bias, dilation=dilation))
        return self.classifier(self.dropout(x))

    def pad(self, images: torch.Tensor) -> torch.Tensor:
        """``images`` padded by half a patch on each side (see the module docstring)."""
        before = self.patch_size // 2
        after = self.patch_size - 1 - before
        if self.padding_mode == "reflect":
            return mirror_pad(images, before, after, before, after)
        return F.pad(images, (before, after, before, after))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Logits ``(N, num_classes, H, W)`` of every pixel of ``images`` ``(N, C, H, W)``: the dense network."""
        h, w = images.shape[-2:]
        # A receptive field smaller than the patch leaves patch_size - receptive_field extra outputs at the end.
        return self._layers(self.pad(images), dense=True)[..., :h, :w]

    def score_patches(self, patches: torch.Tensor) -> torch.Tensor:
        """Class scores ``(N, num_classes)`` of ``patch_size x patch_size`` patches ``(N, C, p, p)``: the patch
        classifier itself (stride-2 poolings), which labels each patch's centre pixel."""
        return self._layers(patches, dense=False).flatten(1)

    def classify_patches(self, images: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
        """The same logits as :meth:`forward`, the slow way: the patch around every pixel is cut out and classified
        on its own, ``batch_size`` patches at a time (the reference the dense form is checked against)."""
        n, c, h, w = images.shape
        p = self.patch_size
        patches = F.unfold(self.pad(images), p)  # (N, C * p * p, H * W), rows first
        patches = patches.transpose(1, 2).reshape(n * h * w, c, p, p)
        scores = torch.cat([self.score_patches(chunk) for chunk in patches.split(batch_size)])
        return scores.reshape(n, h, w, -1).permute(0, 3, 1, 2)
