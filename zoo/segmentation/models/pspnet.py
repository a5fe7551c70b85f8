"""PSPNet: Zhao, Shi, Qi, Wang, Jia, "Pyramid Scene Parsing Network", CVPR 2017.

A dilated ResNet (output stride 8: the strides of the last two stages replaced by dilation, sec. 3.2)
from segmentation-models-pytorch's encoders, the pyramid pooling module written here (sec. 3.2,
fig. 3: average pooling to 1x1, 2x2, 3x3 and 6x6 bins, a 1x1 convolution to 1/N of the channels at
each of the N levels, bilinear upsampling, concatenation with the input features, a 3x3
convolution) and the deep-supervision auxiliary head on stage 4 (sec. 3.3, weight 0.4).

smp's own ``PSPNet`` (registered as ``smp_pspnet``) truncates the encoder instead of dilating it and
has no auxiliary segmentation loss, which is why this one is hand-written.

In training mode :class:`PSPNet` returns ``(main_logits, aux_logits)``; ``aux_weight`` says how much
the auxiliary loss counts (:class:`zoo.segmentation.SemanticSegmenter` reads it). In eval mode it
returns the main logits only.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from segmentation_models_pytorch.encoders import get_encoder

from zoo.core.registry import register_model
from zoo.segmentation.models.smp import (
    adapt_first_convolution,
    built_for_rgb,
    load_encoder_weights,
    resolve_encoder_weights,
)


def _conv_bn_relu(in_ch: int, out_ch: int, kernel_size: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, kernel_size, padding=kernel_size // 2, bias=False),
        nn.BatchNorm2d(out_ch),
        nn.ReLU(inplace=True),
    )


class PyramidPoolingModule(nn.Module):
    """Sec. 3.2: pool to each bin size, reduce to ``in_channels / len(bins)`` channels, upsample
    bilinearly and concatenate with the input (output: ``2 * in_channels`` channels)."""

    def __init__(self, in_channels: int, bins: Sequence[int] = (1, 2, 3, 6)) -> None:
        super().__init__()
        self.bins = tuple(bins)
        reduced = in_channels // len(self.bins)
        self.stages = nn.ModuleList(
            nn.Sequential(nn.AdaptiveAvgPool2d(b), _conv_bn_relu(in_channels, reduced, 1)) for b in self.bins
        )
        self.out_channels = in_channels + reduced * len(self.bins)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        pooled = [F.interpolate(stage(x), size=size, mode="bilinear", align_corners=False) for stage in self.stages]
        return torch.cat([x, *pooled], dim=1)


@register_model("segmentation", "pspnet")
class PSPNet(nn.Module):
    """PSPNet (Zhao et al. 2017) over a dilated smp encoder (``resnet18`` / ``resnet34`` / ``resnet50`` / ...):
    output stride 8, pyramid bins 1/2/3/6, auxiliary loss 0.4 on stage 4. Registered as ``pspnet``.

    Args:
        num_classes: output classes.
        in_channels: image channels.
        encoder_name: any smp encoder that supports ``output_stride=8`` (the ResNets do).
        encoder_weights: the encoder's weights (a local file, a URL, or a name: smp's ``imagenet`` for the
            encoder, ``torchvision:...``; see :mod:`zoo.segmentation.models.smp`), or None (random init).
        bins: pyramid bin sizes (1, 2, 3, 6 in the paper).
        head_channels: channels of the 3x3 convolution after the pyramid (512 in the paper).
        aux_weight: weight of the stage-4 auxiliary loss (0.4 in the paper); 0 removes the head.
        dropout: dropout before the classifiers (0.1 in the paper).
    """

    def __init__(
        self,
        num_classes: int = 2,
        in_channels: int = 3,
        encoder_name: str = "resnet50",
        encoder_weights: str | None = None,
        bins: Sequence[int] = (1, 2, 3, 6),
        head_channels: int = 512,
        aux_weight: float = 0.4,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.in_channels = in_channels
        resolved = resolve_encoder_weights(encoder_weights, encoder_name) if encoder_weights else None
        rgb = built_for_rgb(resolved, in_channels)
        self.encoder = get_encoder(
            encoder_name, in_channels=3 if rgb else in_channels, depth=5, weights=None, output_stride=8
        )
        if resolved is not None:
            load_encoder_weights(self.encoder, resolved)
            if rgb:
                adapt_first_convolution(self.encoder, in_channels, resolved.source.label)
        stage4, stage5 = self.encoder.out_channels[-2:]
        self.ppm = PyramidPoolingModule(stage5, bins)
        self.head = nn.Sequential(
            _conv_bn_relu(self.ppm.out_channels, head_channels, 3),
            nn.Dropout2d(dropout),
            nn.Conv2d(head_channels, num_classes, kernel_size=1),
        )
        self.aux_weight = float(aux_weight)
        self.aux_head = (
            nn.Sequential(
                _conv_bn_relu(stage4, max(stage4 // 4, 16), 3),
                nn.Dropout2d(dropout),
                nn.Conv2d(max(stage4 // 4, 16), num_classes, kernel_size=1),
            )
            if aux_weight > 0
            else None
        )
        self.size_divisor = 8  # output stride: zoo.segmentation.tiling keeps tiles on this grid

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"PSPNet expects (N, {self.in_channels}, H, W), got shape {tuple(x.shape)}")
        size = x.shape[-2:]
        features = self.encoder(x)
        logits = F.interpolate(self.head(self.ppm(features[-1])), size=size, mode="bilinear", align_corners=False)
        if self.training and self.aux_head is not None:
            aux = F.interpolate(self.aux_head(features[-2]), size=size, mode="bilinear", align_corners=False)
            return logits, aux
        return logits
