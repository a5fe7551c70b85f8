"""SqueezeNet (Iandola, Han, Moskewicz, Ashraf, Dally, Keutzer, "SqueezeNet: AlexNet-level
accuracy with 50x fewer parameters and <0.5MB model size", arXiv:1602.07360, 2016), built by
torchvision: ``squeezenet1_0`` is the paper's network, ``squeezenet1_1`` the authors' later v1.1
(3x3 first conv with 64 filters, earlier pooling: 2.4x less computation, same accuracy).

Small inputs follow the zoo's rule (see ``zoo.classification.models._adapt``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn as nn
import torchvision.models as tvm
from torchvision.models import SqueezeNet

from zoo.classification.models._adapt import adapt_first_conv, guard_min_input_size
from zoo.core.registry import register_model

# Smallest square inputs that keep every feature map non-empty (found by probing the networks).
MIN_INPUT_SIZE = {"squeezenet1_0": 21, "squeezenet1_1": 17}
MIN_INPUT_SIZE_SMALL = {"squeezenet1_0": 4, "squeezenet1_1": 4}


def _kaiming_uniform(weight: torch.Tensor) -> None:
    nn.init.kaiming_uniform_(weight)  # torchvision's SqueezeNet initialisation


def _squeezenet(name: str, tv_builder: Callable[..., SqueezeNet], network: str, stem: str) -> Callable[..., SqueezeNet]:
    """Register and return the builder ``name`` of torchvision's ``tv_builder``; ``network`` (the
    network and its paper) heads its docstring, ``stem`` is its first convolution."""

    def builder(
        num_classes: int = 1000, in_channels: int = 3, small_input: bool = False, dropout: float = 0.5
    ) -> SqueezeNet:
        model = tv_builder(weights=None, num_classes=num_classes, dropout=dropout)
        model.features[0] = adapt_first_conv(model.features[0], in_channels, small_input, init=_kaiming_uniform)
        if small_input:
            model.features[2] = nn.Identity()  # the stem's max-pool
        min_size = (MIN_INPUT_SIZE_SMALL if small_input else MIN_INPUT_SIZE)[name]
        guard_min_input_size(model, name, min_size, small_input)
        return model

    size, padding = MIN_INPUT_SIZE[name], " (padding 1)" if stem == "3x3" else ""
    builder.__name__ = builder.__qualname__ = name
    builder.__doc__ = f"""torchvision's {network}.

    - ``small_input=False``: the published network ({stem} stride-2 conv, then max-pool); inputs
      must be at least {size}x{size} pixels, smaller ones raise a ``ValueError``.
    - ``small_input=True``: CIFAR-style stem: ``features.0`` becomes 3x3 stride 1{padding}
      and the stem max-pool ``features.2`` is removed, so a 32x32 image ends as a 7x7 map.
    """
    return register_model("classification", name, source="torchvision")(builder)


squeezenet1_0 = _squeezenet("squeezenet1_0", tvm.squeezenet1_0, "SqueezeNet 1.0 (Iandola et al. 2016, table 1)", "7x7")
squeezenet1_1 = _squeezenet(
    "squeezenet1_1",
    tvm.squeezenet1_1,
    "SqueezeNet 1.1 (Iandola et al.'s v1.1 release of their 2016 network)",
    "3x3",
)
