"""DenseNet (Huang, Liu, van der Maaten, Weinberger, "Densely Connected Convolutional Networks",
CVPR 2017), built by torchvision's ``DenseNet`` class: the ImageNet DenseNet-121/169/201 (paper
table 1, growth rate 32, bottleneck layers and compression 0.5) and, for tiny images, the
paper's CIFAR DenseNet-BC (L=100, k=12): three dense blocks of 16 bottleneck layers, 24 stem
filters, about 0.8M parameters (paper table 2).

Small inputs follow the zoo's rule (see ``zoo.classification.models._adapt``):

- ``small_input=False``: the published network (7x7 stride-2 ``features.conv0`` and 3x3 stride-2
  ``features.pool0``); DenseNet-121/169/201 need inputs of at least 29x29 pixels (a 28x28 image
  would vanish in the last transition's 2x2 pooling), smaller ones raise a ``ValueError``.
- ``small_input=True``: CIFAR-style stem: ``features.conv0`` becomes 3x3 stride 1 and
  ``features.pool0`` is removed, so a 32x32 image ends as a 4x4 map (28x28: 3x3).

``memory_efficient=True`` recomputes the concatenations in the backward pass (torchvision's
checkpointing): slower, much less memory, same state dict.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch
import torch.nn as nn
import torchvision.models as tvm
from torchvision.models import DenseNet

from zoo.classification.models._adapt import adapt_first_conv, guard_min_input_size
from zoo.core.registry import register_model

# Smallest square input that keeps every feature map non-empty (found by probing the networks):
# the ImageNet stem divides by 4 and each transition's 2x2 average-pool by 2; keyed by the number
# of transitions (3 in the ImageNet DenseNets, 2 in DenseNet-BC-100).
MIN_INPUT_SIZE = {3: 29, 2: 13}
MIN_INPUT_SIZE_SMALL = {3: 8, 2: 4}


def _kaiming_normal(weight: torch.Tensor) -> None:
    nn.init.kaiming_normal_(weight)  # torchvision's DenseNet initialisation


def _adapt(model: DenseNet, name: str, in_channels: int, small_input: bool) -> DenseNet:
    features = model.features
    features.conv0 = adapt_first_conv(features.conv0, in_channels, small_input, init=_kaiming_normal)
    if small_input:
        features.pool0 = nn.Identity()
    transitions = sum(child.startswith("transition") for child, _ in features.named_children())
    min_size = (MIN_INPUT_SIZE_SMALL if small_input else MIN_INPUT_SIZE)[transitions]
    guard_min_input_size(model, name, min_size, small_input)
    return model


def _densenet(
    name: str, densenet: Callable[..., DenseNet], doc: str, num_classes: int = 1000, small_input: bool = False
) -> Callable[..., DenseNet]:
    """Register and return the builder ``name`` of ``densenet(num_classes=..., drop_rate=...,
    memory_efficient=...)``, with docstring ``doc`` and the defaults ``num_classes``, ``small_input``."""
    default_classes, default_small_input = num_classes, small_input

    def builder(
        num_classes: int = default_classes,
        in_channels: int = 3,
        small_input: bool = default_small_input,
        drop_rate: float = 0.0,
        memory_efficient: bool = False,
    ) -> DenseNet:
        model = densenet(num_classes=num_classes, drop_rate=drop_rate, memory_efficient=memory_efficient)
        return _adapt(model, name, in_channels, small_input)

    builder.__name__ = builder.__qualname__ = name
    builder.__doc__ = doc
    return register_model("classification", name, source="torchvision")(builder)


def _imagenet_densenet(name: str, tv_builder: Callable[..., DenseNet], network: str) -> Callable[..., DenseNet]:
    """:func:`_densenet` of torchvision's ImageNet DenseNet ``tv_builder``."""
    doc = (
        f"torchvision's {network} (Huang et al. 2017, table 1); ``small_input`` and\n"
        "``memory_efficient``: see the module docstring."
    )
    return _densenet(name, partial(tv_builder, weights=None), doc)


densenet121 = _imagenet_densenet("densenet121", tvm.densenet121, "DenseNet-121")
densenet169 = _imagenet_densenet("densenet169", tvm.densenet169, "DenseNet-169")
densenet201 = _imagenet_densenet("densenet201", tvm.densenet201, "DenseNet-201")
densenet_bc100 = _densenet(
    "densenet_bc100",
    # any number of dense blocks works (DenseNet's annotation says four)
    partial(DenseNet, growth_rate=12, block_config=(16, 16, 16), num_init_features=24, bn_size=4),
    """DenseNet-BC (L=100, k=12) for CIFAR-sized images (Huang et al. 2017, sec. 3 and table 2),
    built with torchvision's ``DenseNet(growth_rate=12, block_config=(16, 16, 16),
    num_init_features=24)``; about 0.77M parameters at 10 classes.

    ``small_input=True`` (the default here) is the paper's CIFAR stem, a single 3x3 stride-1
    convolution (torchvision adds BN-ReLU after it, and its ``pool0`` is removed); inputs of at
    least 4x4 pixels work. ``small_input=False`` uses torchvision's ImageNet stem (7x7 stride 2 and
    max-pool) instead, for large images (at least 13x13 pixels).
    """,
    num_classes=10,
    small_input=True,
)
