"""Squeeze-and-Excitation networks (Hu, Shen, Sun, "Squeeze-and-Excitation Networks", CVPR 2018),
built by timm (``timm.create_model(name, pretrained=False, ...)``): SE-ResNet-50 and
SE-ResNeXt-50 (32x4d), the ResNet / ResNeXt of the paper's table 2 with an SE block (reduction
16) on every residual branch. State dicts are timm's, key for key.

Any input size works (padded convolutions, adaptive pooling). ``small_input=True`` applies the
zoo's small-input rule (``zoo.classification.models._adapt``): the 7x7 stride-2 ``conv1`` becomes
3x3 stride 1 and ``maxpool`` is removed, so a 32x32 image ends as a 4x4 map instead of 1x1.
``drop_path_rate`` is timm's stochastic depth: per sample, linearly from 0 at the first block to
``drop_path_rate`` at the last (the zoo's ResNets use Huang et al.'s per-batch ``l / L`` rule).
"""

from __future__ import annotations

import timm
import torch.nn as nn

from zoo.classification.models._adapt import adapt_first_conv
from zoo.core.registry import register_model


def _timm_seresnet(
    timm_name: str, num_classes: int, in_channels: int, small_input: bool, drop_path_rate: float
) -> nn.Module:
    model = timm.create_model(
        timm_name,
        pretrained=False,
        num_classes=num_classes,
        in_chans=in_channels,
        drop_path_rate=drop_path_rate,
    )
    model.conv1 = adapt_first_conv(model.conv1, in_channels, small_input)
    if small_input:
        model.maxpool = nn.Identity()
    return model


@register_model("classification", source="timm")
def seresnet50(
    num_classes: int = 1000, in_channels: int = 3, small_input: bool = False, drop_path_rate: float = 0.0
) -> nn.Module:
    """timm's SE-ResNet-50 (Hu et al. 2018, table 1). ``small_input``, ``drop_path_rate``: see
    the module docstring."""
    return _timm_seresnet("seresnet50", num_classes, in_channels, small_input, drop_path_rate)


@register_model("classification", source="timm")
def seresnext50_32x4d(
    num_classes: int = 1000, in_channels: int = 3, small_input: bool = False, drop_path_rate: float = 0.0
) -> nn.Module:
    """timm's SE-ResNeXt-50 32x4d (Hu et al. 2018, table 1). ``small_input``, ``drop_path_rate``:
    see the module docstring."""
    return _timm_seresnet("seresnext50_32x4d", num_classes, in_channels, small_input, drop_path_rate)
