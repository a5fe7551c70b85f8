"""What every classifier builder shares: the input-channel and small-input rules.

**The small-input rule** (one rule for every builder that has a ``small_input`` argument):

- ``small_input=False`` (default for ImageNet networks): the published architecture, module for
  module as torchvision / timm build it (same state-dict keys and shapes at ``in_channels=3``).
  If an input is too small for it (its strides and poolings would shrink the feature map to
  nothing), ``forward`` raises a :class:`ValueError` that names the model, the minimum size
  and the fix, instead of a shape error deep inside the network.
- ``small_input=True``: the CIFAR-style stem. The stem no longer downsamples: its first
  convolution becomes 3x3 with stride 1 and padding 1, and its max-pooling (if any) is replaced
  by ``nn.Identity``. Everything after the stem is unchanged and parameter names stay the same
  (only the first convolution's weight shape changes, so ImageNet weights load for every other
  tensor; see ``zoo.classification.finetune``).
- Images are never resized: choosing the stem is an explicit, build-time decision.

**Input channels**: ``in_channels != 3`` replaces the first convolution by one taking that many
channels, under the same attribute (hence the same state-dict key), freshly initialised.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn as nn

SMALL_INPUT_FIX = "build it with small_input=True (CIFAR-style stem: 3x3 stride-1 first conv, no stem pool)"


def kaiming_fan_out(weight: torch.Tensor) -> None:
    """He et al. 2015 initialisation, as torchvision's ResNet / VGG / MobileNet use."""
    nn.init.kaiming_normal_(weight, mode="fan_out", nonlinearity="relu")


def adapt_first_conv(
    conv: nn.Conv2d,
    in_channels: int,
    small_input: bool = False,
    init: Callable[[torch.Tensor], None] | None = kaiming_fan_out,
) -> nn.Conv2d:
    """``conv`` itself when nothing changes; otherwise a new convolution taking ``in_channels``
    channels and, with ``small_input``, a 3x3 kernel with stride 1 and padding 1.

    ``init`` initialises the new weight the way the family initialises its convolutions
    (``None``: PyTorch's default ``Conv2d`` initialisation); a bias starts at zero.
    """
    if in_channels == conv.in_channels and not small_input:
        return conv
    if in_channels < 1:
        raise ValueError(f"in_channels must be a positive number of image channels, got {in_channels}.")
    geometry: dict[str, object] = (
        {"kernel_size": 3, "stride": 1, "padding": 1}
        if small_input
        else {"kernel_size": conv.kernel_size, "stride": conv.stride, "padding": conv.padding}
    )
    new = nn.Conv2d(
        in_channels,
        conv.out_channels,
        dilation=conv.dilation,
        groups=conv.groups,
        bias=conv.bias is not None,
        padding_mode=conv.padding_mode,
        **geometry,  # type: ignore[arg-type]
    )
    if init is not None:
        init(new.weight)
        if new.bias is not None:
            nn.init.zeros_(new.bias)
    return new


class MinInputSize:
    """Forward pre-hook: a clear :class:`ValueError` for inputs smaller than ``min_size`` pixels.

    A plain class (not a closure) so that a model holding it can still be pickled.
    """

    def __init__(self, model_name: str, min_size: int, fix: str | None = SMALL_INPUT_FIX) -> None:
        self.model_name = model_name
        self.min_size = min_size
        self.fix = fix

    def __call__(self, module: nn.Module, args: tuple[object, ...]) -> None:
        x = args[0] if args else None
        if isinstance(x, torch.Tensor) and x.dim() >= 3 and min(x.shape[-2:]) < self.min_size:
            fix = f" or {self.fix}" if self.fix else ""
            raise ValueError(
                f"{self.model_name} needs inputs of at least {self.min_size}x{self.min_size} pixels; "
                f"got {tuple(x.shape[-2:])}. Resize the images{fix}."
            )


def guard_min_input_size(model: nn.Module, model_name: str, min_size: int, small_input: bool) -> None:
    """Make ``model`` refuse inputs smaller than ``min_size`` pixels with a clear error (which
    suggests ``small_input=True`` where the model does not use it yet); ``model.min_input_size``
    records the limit."""
    model.min_input_size = min_size  # type: ignore[assignment]
    fix = None if small_input else SMALL_INPUT_FIX
    model.register_forward_pre_hook(MinInputSize(model_name, min_size, fix))
