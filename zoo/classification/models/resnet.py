"""Residual networks, with optional stochastic depth.

- ImageNet ResNets (He, Zhang, Ren, Sun, "Deep Residual Learning for Image Recognition", CVPR 2016)
  and ResNeXts (Xie, Girshick, Dollar, Tu, He, "Aggregated Residual Transformations for Deep Neural
  Networks", CVPR 2017): torchvision's ``ResNet`` class. Its bottleneck ResNets are "v1.5" (the
  stride-2 sits in the 3x3 convolution, not the first 1x1). The only change is the blocks'
  ``forward``, which passes the residual branch through a parameter-free ``drop_path``
  (stochastic depth, off by default), so state dicts are torchvision's, key for key.
  Any input size works (padded convolutions, adaptive pooling). ``small_input=True`` applies the
  zoo's small-input rule (``zoo.classification.models._adapt``): the 7x7 stride-2 ``conv1``
  becomes 3x3 stride 1 and ``maxpool`` is removed (the usual CIFAR adaptation), so a 32x32 image
  reaches ``layer1`` at 32x32 and ``layer4`` at 4x4 instead of 1x1.
- CIFAR ResNets (resnet20/32/44/56/110; He et al. 2016, sec. 4.2), hand-written because neither
  torchvision nor timm has them: a 3x3 stem with 16 filters, three stages of ``n`` basic blocks
  with 16/32/64 filters (feature maps 32/16/8 for a 32x32 image), option-A shortcuts
  (parameter-free: stride-2 subsampling and zero-padded channels), global average pooling and a
  linear classifier; depth ``6n + 2``.
- Stochastic depth (Huang, Sun, Liu, Sedra, Weinberger, "Deep Networks with Stochastic Depth",
  ECCV 2016) for both: with ``drop_path_rate = 1 - p_L`` the residual branch of block
  ``l = 1..L`` survives with the paper's linear decay ``p_l = 1 - l / L * (1 - p_L)`` (the paper
  uses ``p_L = 0.5``, i.e. ``drop_path_rate=0.5``). As in the paper the whole branch is dropped
  for a mini-batch (``drop_path_mode="batch"``; ``"row"`` drops it per sample instead).
  torchvision's ``StochasticDepth`` scales a kept branch by ``1 / p_l`` during training, so at
  test time the branch is used as is: the same expected output as the paper's test-time rule
  ``H = ReLU(p_l f(x) + x)`` with unscaled training, and a model trained with stochastic depth
  is an ordinary ResNet in eval mode (its weights load into ``drop_path_rate=0`` models).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch
import torch.nn as nn
import torch.nn.functional as F
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet
from torchvision.ops import StochasticDepth

from zoo.classification.models._adapt import adapt_first_conv
from zoo.core.registry import register_model

DROP_PATH_MODES = ("batch", "row")

# ---------------------------------------------------------------------------------------------
# Stochastic depth
# ---------------------------------------------------------------------------------------------


def linear_decay_drop_probs(num_blocks: int, drop_path_rate: float) -> list[float]:
    """Drop probability ``1 - p_l = l / L * drop_path_rate`` of blocks ``l = 1..L`` (Huang et al.
    2016, eq. 4 with ``p_0 = 1`` and ``p_L = 1 - drop_path_rate``)."""
    if not 0.0 <= drop_path_rate <= 1.0:
        raise ValueError(f"drop_path_rate (= 1 - p_L) must lie in [0, 1], got {drop_path_rate}.")
    return [drop_path_rate * layer / num_blocks for layer in range(1, num_blocks + 1)]


def residual_blocks(model: nn.Module) -> list[nn.Module]:
    """The model's residual blocks that take stochastic depth, input to output."""
    return [m for m in model.modules() if isinstance(m, _StochasticDepthBlock)]


def set_stochastic_depth(model: nn.Module, drop_path_rate: float, mode: str = "batch") -> nn.Module:
    """Give every residual block of ``model`` the linearly decaying drop probability (in place;
    ``drop_path_rate=0`` turns stochastic depth off). Returns ``model``."""
    if mode not in DROP_PATH_MODES:
        raise ValueError(f"drop_path_mode must be one of {DROP_PATH_MODES}, got {mode!r}.")
    blocks = residual_blocks(model)
    for block, p in zip(blocks, linear_decay_drop_probs(len(blocks), drop_path_rate), strict=True):
        block.drop_path = StochasticDepth(p, mode)
    return model


class _StochasticDepthBlock:
    """Marker of the blocks whose residual branch goes through ``self.drop_path``."""

    drop_path: StochasticDepth


# ---------------------------------------------------------------------------------------------
# torchvision ResNets / ResNeXts
# ---------------------------------------------------------------------------------------------


class _TorchvisionStochasticDepthBlock(_StochasticDepthBlock):
    """Mixin, before a torchvision block class: ``drop_path`` (no parameters) on the residual branch
    that the block's ``residual_branch`` computes."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.drop_path = StochasticDepth(0.0, "batch")

    def residual_branch(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.drop_path(self.residual_branch(x))
        out += identity  # in place, as torchvision's block: one feature-map allocation less per block
        return self.relu(out)


class StochasticDepthBasicBlock(_TorchvisionStochasticDepthBlock, BasicBlock):
    """torchvision's ``BasicBlock`` with ``drop_path`` on the residual branch (no new parameters)."""

    def residual_branch(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        return self.bn2(self.conv2(out))


class StochasticDepthBottleneck(_TorchvisionStochasticDepthBlock, Bottleneck):
    """torchvision's ``Bottleneck`` with ``drop_path`` on the residual branch (no new parameters)."""

    def residual_branch(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self.bn3(self.conv3(out))


def adapt_resnet_stem(model: nn.Module, in_channels: int, small_input: bool) -> nn.Module:
    """The zoo's small-input rule on a ResNet stem (a 7x7 stride-2 ``conv1``, then ``maxpool``), in
    place: ``conv1`` takes ``in_channels`` (and becomes 3x3 stride 1 with ``small_input``, which also
    removes ``maxpool``). torchvision's and timm's ResNets (``senet``) share the stem. Returns ``model``."""
    model.conv1 = adapt_first_conv(model.conv1, in_channels, small_input)
    if small_input:
        model.maxpool = nn.Identity()
    return model


def _torchvision_resnet(
    name: str,
    block: type[BasicBlock] | type[Bottleneck],
    layers: list[int],
    network: str,
    groups: int = 1,
    width_per_group: int = 64,
) -> Callable[..., ResNet]:
    """Register and return the builder ``name`` of torchvision's ``ResNet(block, layers, groups=...,
    width_per_group=...)``; ``network`` (the network and its paper) heads its docstring."""
    resnet = partial(ResNet, block, layers, groups=groups, width_per_group=width_per_group)

    def builder(
        num_classes: int = 1000,
        in_channels: int = 3,
        small_input: bool = False,
        drop_path_rate: float = 0.0,
        drop_path_mode: str = "batch",
        zero_init_residual: bool = False,
    ) -> ResNet:
        model = resnet(num_classes=num_classes, zero_init_residual=zero_init_residual)
        adapt_resnet_stem(model, in_channels, small_input)
        return set_stochastic_depth(model, drop_path_rate, drop_path_mode)

    builder.__name__ = builder.__qualname__ = name
    builder.__doc__ = f"""torchvision's {network}.

    ``small_input`` (CIFAR-style stem) and ``drop_path_*`` (stochastic depth): see the module docstring.
    """
    return register_model("classification", name, source="torchvision")(builder)


# name, residual block, blocks per stage, docstring head (the network and its paper); ResNeXts: groups and width
resnet18 = _torchvision_resnet(
    "resnet18", StochasticDepthBasicBlock, [2, 2, 2, 2], "ResNet-18 (He et al. 2016, table 1)"
)
resnet34 = _torchvision_resnet(
    "resnet34", StochasticDepthBasicBlock, [3, 4, 6, 3], "ResNet-34 (He et al. 2016, table 1)"
)
resnet50 = _torchvision_resnet(
    "resnet50", StochasticDepthBottleneck, [3, 4, 6, 3], "ResNet-50 v1.5 (He et al. 2016, table 1)"
)
resnet101 = _torchvision_resnet(
    "resnet101", StochasticDepthBottleneck, [3, 4, 23, 3], "ResNet-101 v1.5 (He et al. 2016, table 1)"
)
resnet152 = _torchvision_resnet(
    "resnet152", StochasticDepthBottleneck, [3, 8, 36, 3], "ResNet-152 v1.5 (He et al. 2016, table 1)"
)
resnext50_32x4d = _torchvision_resnet(
    "resnext50_32x4d", StochasticDepthBottleneck, [3, 4, 6, 3], "ResNeXt-50 32x4d (Xie et al. 2017, table 1)", 32, 4
)
resnext101_32x8d = _torchvision_resnet(
    "resnext101_32x8d", StochasticDepthBottleneck, [3, 4, 23, 3], "ResNeXt-101 32x8d (Xie et al. 2017, sec. 5.1)", 32, 8
)


# ---------------------------------------------------------------------------------------------
# CIFAR ResNets (hand-written)
# ---------------------------------------------------------------------------------------------


class OptionAShortcut(nn.Module):
    """He et al. 2016, sec. 3.3 option (A): the identity, with stride-``stride`` subsampling and
    the extra output channels padded with zeros (appended after the input's channels). No
    parameters."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        if out_channels < in_channels:
            raise ValueError(f"option-A shortcuts cannot reduce channels ({in_channels} -> {out_channels}).")
        self.extra_channels = out_channels - in_channels
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, 0, self.extra_channels))


class CifarBasicBlock(nn.Module, _StochasticDepthBlock):
    """Two 3x3 conv-BN layers (ReLU between and after the sum) with an option-A shortcut."""

    def __init__(self, in_channels: int, channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut: nn.Module = (
            OptionAShortcut(in_channels, channels, stride)
            if stride != 1 or in_channels != channels
            else nn.Identity()
        )
        self.drop_path = StochasticDepth(0.0, "batch")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.drop_path(self.bn2(self.conv2(out)))
        out += self.shortcut(x)  # in place: one feature-map allocation less per block
        return self.relu(out)


class CifarResNet(nn.Module):
    """He et al. 2016, sec. 4.2: depth ``6n + 2`` (``n`` blocks per stage), 16/32/64 filters.

    Parameters at 10 classes (paper, table 6): ResNet-20 0.27M, -32 0.46M, -44 0.66M, -56 0.85M,
    -110 1.7M. Any input of at least 1x1 pixel works; 28x28 and 32x32 images are its design size.
    """

    def __init__(
        self,
        depth: int,
        num_classes: int = 10,
        in_channels: int = 3,
        drop_path_rate: float = 0.0,
        drop_path_mode: str = "batch",
    ) -> None:
        super().__init__()
        if depth < 8 or (depth - 2) % 6:
            raise ValueError(f"A CIFAR ResNet has depth 6n + 2 (20, 32, 44, 56, 110, ...); got {depth}.")
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(in_channels, 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = self._stage(16, 16, n, stride=1)
        self.layer2 = self._stage(16, 32, n, stride=2)
        self.layer3 = self._stage(32, 64, n, stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):  # He et al. 2015 initialisation, as the paper
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        set_stochastic_depth(self, drop_path_rate, drop_path_mode)

    @staticmethod
    def _stage(in_channels: int, channels: int, blocks: int, stride: int) -> nn.Sequential:
        layers = [CifarBasicBlock(in_channels, channels, stride)]
        layers += [CifarBasicBlock(channels, channels) for _ in range(blocks - 1)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def _cifar_resnet(depth: int) -> Callable[..., CifarResNet]:
    """Register and return the builder ``resnet<depth>`` of ``CifarResNet(depth)``."""

    def builder(
        num_classes: int = 10, in_channels: int = 3, drop_path_rate: float = 0.0, drop_path_mode: str = "batch"
    ) -> CifarResNet:
        return CifarResNet(depth, num_classes, in_channels, drop_path_rate, drop_path_mode)

    builder.__name__ = builder.__qualname__ = f"resnet{depth}"
    builder.__doc__ = (
        f"CIFAR ResNet-{depth} (He et al. 2016, sec. 4.2, n = {(depth - 2) // 6}), hand-written; ``drop_path_*``:"
        " stochastic\ndepth (module docstring; Huang et al. 2016 train ResNet-110 with ``drop_path_rate=0.5``)."
    )
    return register_model("classification", builder.__name__, source="zoo")(builder)


resnet20 = _cifar_resnet(20)
resnet32 = _cifar_resnet(32)
resnet44 = _cifar_resnet(44)
resnet56 = _cifar_resnet(56)
resnet110 = _cifar_resnet(110)
