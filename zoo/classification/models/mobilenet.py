"""MobileNets, built by torchvision:

- MobileNetV2 (Sandler, Howard, Zhu, Zhmoginov, Chen, "MobileNetV2: Inverted Residuals and Linear
  Bottlenecks", CVPR 2018);
- MobileNetV3-Large and -Small (Howard, Sandler, Chu, Chen, Chen, Tan, Wang, Zhu, Pang, Vasudevan,
  Le, Adam, "Searching for MobileNetV3", ICCV 2019).

Any input size works (every convolution is padded, pooling is adaptive). ``small_input=True``
applies the zoo's small-input rule (``zoo.classification.models._adapt``): the stem convolution
``features.0.0`` (3x3, stride 2) gets stride 1, so a 32x32 image ends as a 2x2 map instead of 1x1.
No weight changes shape.
"""

from __future__ import annotations

from collections.abc import Callable

import torchvision.models as tvm
from torchvision.models import MobileNetV2, MobileNetV3

from zoo.classification.models._adapt import adapt_first_conv
from zoo.core.registry import register_model


def _adapt_stem(model: MobileNetV2 | MobileNetV3, in_channels: int, small_input: bool) -> None:
    stem = model.features[0]
    stem[0] = adapt_first_conv(stem[0], in_channels, small_input)


@register_model("classification", source="torchvision")
def mobilenet_v2(
    num_classes: int = 1000,
    in_channels: int = 3,
    small_input: bool = False,
    width_mult: float = 1.0,
    dropout: float = 0.2,
) -> MobileNetV2:
    """torchvision's MobileNetV2 (Sandler et al. 2018, table 2); ``width_mult`` scales every
    layer's width as in the paper's sec. 6.1. ``small_input``: see the module docstring."""
    model = tvm.mobilenet_v2(weights=None, num_classes=num_classes, width_mult=width_mult, dropout=dropout)
    _adapt_stem(model, in_channels, small_input)
    return model


def _mobilenet_v3(name: str, tv_builder: Callable[..., MobileNetV3], network: str) -> Callable[..., MobileNetV3]:
    """Register and return the builder ``name`` of torchvision's ``tv_builder``; ``network`` (the
    network and its paper) heads its docstring."""

    def builder(
        num_classes: int = 1000, in_channels: int = 3, small_input: bool = False, dropout: float = 0.2
    ) -> MobileNetV3:
        model = tv_builder(weights=None, num_classes=num_classes, dropout=dropout)
        _adapt_stem(model, in_channels, small_input)
        return model

    builder.__name__ = builder.__qualname__ = name
    builder.__doc__ = f"torchvision's {network}. ``small_input``: see the\nmodule docstring."
    return register_model("classification", name, source="torchvision")(builder)


mobilenet_v3_large = _mobilenet_v3(
    "mobilenet_v3_large", tvm.mobilenet_v3_large, "MobileNetV3-Large (Howard et al. 2019, table 1)"
)
mobilenet_v3_small = _mobilenet_v3(
    "mobilenet_v3_small", tvm.mobilenet_v3_small, "MobileNetV3-Small (Howard et al. 2019, table 2)"
)
