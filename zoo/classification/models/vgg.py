"""VGG (Simonyan & Zisserman, "Very Deep Convolutional Networks for Large-Scale Image Recognition",
ICLR 2015), built by torchvision: configurations A (vgg11), B (vgg13), D (vgg16) and E (vgg19) of
the paper's table 1, and their ``_bn`` versions with batch normalisation after every convolution
(Ioffe & Szegedy 2015; a torchvision addition, not in the paper).

Small inputs follow the zoo's rule (see ``zoo.classification.models._adapt``). VGG has no
separate stem: its first stage (3x3 stride-1 convolutions, then a 2x2 max-pool) plays that role.
"""

from __future__ import annotations

from collections.abc import Callable

import torch.nn as nn
import torchvision.models as tvm
from torchvision.models import VGG

from zoo.classification.models._adapt import adapt_first_conv, guard_min_input_size
from zoo.registry import register_model

# Five 2x2 max-pools: a 32x32 image ends as a 1x1 map; 28x28 would end as 0x0.
MIN_INPUT_SIZE = 32
MIN_INPUT_SIZE_SMALL = 16  # four max-pools left


def _vgg(
    tv_builder: Callable[..., VGG],
    name: str,
    num_classes: int,
    in_channels: int,
    small_input: bool,
    dropout: float,
) -> VGG:
    model = tv_builder(weights=None, num_classes=num_classes, dropout=dropout)
    model.features[0] = adapt_first_conv(model.features[0], in_channels)  # already 3x3, stride 1
    if small_input:
        first_pool = next(i for i, m in enumerate(model.features) if isinstance(m, nn.MaxPool2d))
        model.features[first_pool] = nn.Identity()
    guard_min_input_size(model, name, MIN_INPUT_SIZE_SMALL if small_input else MIN_INPUT_SIZE, small_input)
    return model


_DOC = """torchvision's {name} (Simonyan & Zisserman 2015, configuration {config}{bn}).

    - ``small_input=False``: the published network; its five 2x2 max-pools need inputs of at
      least 32x32 pixels (smaller ones raise a ``ValueError``).
    - ``small_input=True``: the first max-pool (end of the first stage, the "stem") is removed,
      so a 32x32 image ends as a 2x2 map and a 28x28 one as 1x1 (inputs down to 16x16 work).
      The first conv is already 3x3 with stride 1, so no weight changes shape.
    """


def _document(config: str, bn: bool) -> Callable[[Callable[..., VGG]], Callable[..., VGG]]:
    def decorator(builder: Callable[..., VGG]) -> Callable[..., VGG]:
        bn_text = ", with batch normalisation" if bn else ""
        builder.__doc__ = _DOC.format(name=builder.__name__, config=config, bn=bn_text)
        return builder

    return decorator


@register_model("classification", source="torchvision")
@_document("A", bn=False)
def vgg11(
    num_classes: int = 1000, in_channels: int = 3, small_input: bool = False, dropout: float = 0.5
) -> VGG:
    return _vgg(tvm.vgg11, "vgg11", num_classes, in_channels, small_input, dropout)


@register_model("classification", source="torchvision")
@_document("B", bn=False)
def vgg13(
    num_classes: int = 1000, in_channels: int = 3, small_input: bool = False, dropout: float = 0.5
) -> VGG:
    return _vgg(tvm.vgg13, "vgg13", num_classes, in_channels, small_input, dropout)


@register_model("classification", source="torchvision")
@_document("D", bn=False)
def vgg16(
    num_classes: int = 1000, in_channels: int = 3, small_input: bool = False, dropout: float = 0.5
) -> VGG:
    return _vgg(tvm.vgg16, "vgg16", num_classes, in_channels, small_input, dropout)


@register_model("classification", source="torchvision")
@_document("E", bn=False)
def vgg19(
    num_classes: int = 1000, in_channels: int = 3, small_input: bool = False, dropout: float = 0.5
) -> VGG:
    return _vgg(tvm.vgg19, "vgg19", num_classes, in_channels, small_input, dropout)


@register_model("classification", source="torchvision")
@_document("A", bn=True)
def vgg11_bn(
    num_classes: int = 1000, in_channels: int = 3, small_input: bool = False, dropout: float = 0.5
) -> VGG:
    return _vgg(tvm.vgg11_bn, "vgg11_bn", num_classes, in_channels, small_input, dropout)


@register_model("classification", source="torchvision")
@_document("B", bn=True)
def vgg13_bn(
    num_classes: int = 1000, in_channels: int = 3, small_input: bool = False, dropout: float = 0.5
) -> VGG:
    return _vgg(tvm.vgg13_bn, "vgg13_bn", num_classes, in_channels, small_input, dropout)


@register_model("classification", source="torchvision")
@_document("D", bn=True)
def vgg16_bn(
    num_classes: int = 1000, in_channels: int = 3, small_input: bool = False, dropout: float = 0.5
) -> VGG:
    return _vgg(tvm.vgg16_bn, "vgg16_bn", num_classes, in_channels, small_input, dropout)


@register_model("classification", source="torchvision")
@_document("E", bn=True)
def vgg19_bn(
    num_classes: int = 1000, in_channels: int = 3, small_input: bool = False, dropout: float = 0.5
) -> VGG:
    return _vgg(tvm.vgg19_bn, "vgg19_bn", num_classes, in_channels, small_input, dropout)
