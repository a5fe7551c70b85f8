"""VGG (Simonyan & Zisserman, "Very Deep Convolutional Networks for Large-Scale Image Recognition",
ICLR 2015), built by torchvision: configurations A (vgg11), B (vgg13), D (vgg16) and E (vgg19) of
the paper's table 1, and their ``_bn`` versions with batch normalisation after every convolution
(Ioffe & Szegedy 2015; a torchvision addition, not in the paper).

Small inputs follow the zoo's rule (see ``zoo.classification.models._adapt``). VGG has no
separate stem: its first stage (3x3 stride-1 convolutions, then a 2x2 max-pool) plays that role.

- ``small_input=False``: the published network; its five 2x2 max-pools need inputs of at least
  32x32 pixels (smaller ones raise a ``ValueError``; a 28x28 image would end as a 0x0 map).
- ``small_input=True``: the first max-pool (end of the first stage) is removed, so a 32x32 image
  ends as a 2x2 map and a 28x28 one as 1x1 (inputs down to 16x16 work). The first conv is
  already 3x3 with stride 1, so no weight changes shape (only ``in_channels`` may).
"""

from __future__ import annotations

from collections.abc import Callable

import torch.nn as nn
import torchvision.models as tvm
from torchvision.models import VGG

from zoo.classification.models._adapt import adapt_first_conv, guard_min_input_size
from zoo.core.registry import register_model

# Five 2x2 max-pools: a 32x32 image ends as a 1x1 map; 28x28 would end as 0x0.
MIN_INPUT_SIZE = 32
MIN_INPUT_SIZE_SMALL = 16  # four max-pools left


def _vgg(name: str, tv_builder: Callable[..., VGG], config: str) -> Callable[..., VGG]:
    """Register and return the builder ``name`` of torchvision's ``tv_builder``, the paper's
    configuration ``config`` (with batch normalisation for a ``_bn`` name)."""

    def builder(
        num_classes: int = 1000, in_channels: int = 3, small_input: bool = False, dropout: float = 0.5, width: int = 64
    ) -> VGG:
        if width == 64:
            model = tv_builder(weights=None, num_classes=num_classes, dropout=dropout)
        else:
            model = _narrow_vgg(config, name.endswith("_bn"), width, num_classes, dropout)
        model.features[0] = adapt_first_conv(model.features[0], in_channels)  # already 3x3, stride 1
        if small_input:
            first_pool = next(i for i, m in enumerate(model.features) if isinstance(m, nn.MaxPool2d))
            model.features[first_pool] = nn.Identity()
        guard_min_input_size(model, name, MIN_INPUT_SIZE_SMALL if small_input else MIN_INPUT_SIZE, small_input)
        return model

    batch_norm = " with batch normalisation" if name.endswith("_bn") else ""
    builder.__name__ = builder.__qualname__ = name
    builder.__doc__ = f"""torchvision's VGG configuration {config}{batch_norm} (Simonyan & Zisserman 2015, table 1);
    ``small_input``: see the module docstring; ``width``: channels of the first stage (64 in the paper), the
    others scaled alike, the hidden fully connected layers ``64 * width`` wide (4096 in the paper)."""
    return register_model("classification", name, source="torchvision")(builder)


def _narrow_vgg(config: str, batch_norm: bool, width: int, num_classes: int, dropout: float) -> VGG:
    """torchvision's VGG of ``config`` with every width scaled by ``width / 64`` (a network a CPU can train, e.g. as
    a segmentation encoder); torchvision's classifier is fixed at 512 x 7 x 7 -> 4096, so it is rebuilt to match, with
    torchvision's initialisation (N(0, 0.01) weights, zero biases)."""
    if width < 1:
        raise ValueError(f"width must be a positive number of channels, got {width}")
    layers = [v if v == "M" else int(v) * width // 64 for v in tvm.vgg.cfgs[config]]  # 64 -> width, 512 -> 8 width
    model = VGG(tvm.vgg.make_layers(layers, batch_norm=batch_norm), num_classes=num_classes, dropout=dropout)
    hidden = 64 * width
    model.classifier = nn.Sequential(
        nn.Linear(8 * width * 7 * 7, hidden), nn.ReLU(True), nn.Dropout(p=dropout),
        nn.Linear(hidden, hidden), nn.ReLU(True), nn.Dropout(p=dropout),
        nn.Linear(hidden, num_classes),
    )  # fmt: skip
    for layer in model.classifier:
        if isinstance(layer, nn.Linear):
            nn.init.normal_(layer.weight, 0, 0.01)
            nn.init.zeros_(layer.bias)
    return model


vgg11 = _vgg("vgg11", tvm.vgg11, "A")
vgg13 = _vgg("vgg13", tvm.vgg13, "B")
vgg16 = _vgg("vgg16", tvm.vgg16, "D")
vgg19 = _vgg("vgg19", tvm.vgg19, "E")
vgg11_bn = _vgg("vgg11_bn", tvm.vgg11_bn, "A")
vgg13_bn = _vgg("vgg13_bn", tvm.vgg13_bn, "B")
vgg16_bn = _vgg("vgg16_bn", tvm.vgg16_bn, "D")
vgg19_bn = _vgg("vgg19_bn", tvm.vgg19_bn, "E")
