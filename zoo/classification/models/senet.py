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

import textwrap
from collections.abc import Callable

import torch.nn as nn

from zoo.classification.models.resnet import adapt_resnet_stem
from zoo.core.registry import register_model


def _timm_seresnet(name: str, network: str) -> Callable[..., nn.Module]:
    """Register and return the builder ``name`` of timm's network ``name``; ``network`` (the network
    and its paper) heads its docstring."""

    def builder(
        num_classes: int = 1000, in_channels: int = 3, small_input: bool = False, drop_path_rate: float = 0.0
    ) -> nn.Module:
        import timm  # here, not at the top: importing the classification family stays free of timm (0.3 s)

        model = timm.create_model(
            name, pretrained=False, num_classes=num_classes, in_chans=in_channels, drop_path_rate=drop_path_rate
        )
        return adapt_resnet_stem(model, in_channels, small_input)

    builder.__name__ = builder.__qualname__ = name
    doc = f"timm's {network}. ``small_input``, ``drop_path_rate``: see the module docstring."
    builder.__doc__ = textwrap.fill(doc, 90)
    return register_model("classification", name, source="timm")(builder)


seresnet50 = _timm_seresnet("seresnet50", "SE-ResNet-50 (Hu et al. 2018, table 1)")
seresnext50_32x4d = _timm_seresnet("seresnext50_32x4d", "SE-ResNeXt-50 32x4d (Hu et al. 2018, table 1)")
