"""GoogLeNet / Inception v1 (Szegedy, Liu, Jia, Sermanet, Reed, Anguelov, Erhan, Vanhoucke,
Rabinovich, "Going Deeper with Convolutions", CVPR 2015), built by torchvision with its two
auxiliary classifiers (``aux1`` after inception 4a, ``aux2`` after 4d) and batch normalisation in
every convolution (a torchvision addition, not in the paper).

**Return type.** In training mode (``model.train()``) ``forward`` returns torchvision's
``GoogLeNetOutputs(logits, aux_logits2, aux_logits1)`` namedtuple; in eval mode only the
``logits`` tensor. A training loop handles both with :func:`main_logits` (for metrics) and
:func:`googlenet_loss` (main loss + 0.3 x each auxiliary loss, paper sec. 5).

Small inputs follow the zoo's rule (see ``zoo.classification.models._adapt``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn as nn
from torchvision.models import GoogLeNet, GoogLeNetOutputs

from zoo.classification.models._adapt import adapt_first_conv, guard_min_input_size
from zoo.core.registry import register_model

# Smallest square input that keeps every feature map non-empty (found by probing the network).
MIN_INPUT_SIZE = 15
MIN_INPUT_SIZE_SMALL = 4
# The stages that freezing counts in (zoo.classification.finetune.stages reads ``stage_names``): the stem, then
# inception 3, 4 and 5, each with the max-pool that follows it.
STAGE_NAMES = (
    ("conv1", "maxpool1", "conv2", "conv3", "maxpool2"),
    ("inception3a", "inception3b", "maxpool3"),
    ("inception4a", "inception4b", "inception4c", "inception4d", "inception4e", "maxpool4"),
    ("inception5a", "inception5b"),
)


def _trunc_normal(weight: torch.Tensor) -> None:
    """torchvision's GoogLeNet initialisation (``init_weights=True``)."""
    nn.init.trunc_normal_(weight, mean=0.0, std=0.01, a=-2, b=2)


@register_model("classification", source="torchvision")
def googlenet(
    num_classes: int = 1000,
    in_channels: int = 3,
    small_input: bool = False,
    aux_logits: bool = True,
    dropout: float = 0.2,
    dropout_aux: float = 0.7,
) -> GoogLeNet:
    """torchvision's GoogLeNet (Szegedy et al. 2015) with auxiliary classifiers and
    ``init_weights=True``; ``transform_input`` is off (inputs are normalised by the datamodule).

    Training mode returns ``GoogLeNetOutputs(logits, aux_logits2, aux_logits1)``, eval mode the
    logits; use :func:`main_logits` / :func:`googlenet_loss`. ``aux_logits=False`` drops the
    auxiliary heads (then the state dict has no ``aux1.*`` / ``aux2.*`` keys).

    - ``small_input=False``: the published network; inputs must be at least 15x15 pixels
      (smaller ones raise a ``ValueError``).
    - ``small_input=True``: CIFAR-style stem: ``conv1`` becomes a 3x3 stride-1 convolution and
      ``maxpool1`` is removed, so a 32x32 image enters inception 3a at 16x16 and ends at 4x4.
    """
    model = GoogLeNet(
        num_classes=num_classes,
        aux_logits=aux_logits,
        transform_input=False,
        init_weights=True,
        dropout=dropout,
        dropout_aux=dropout_aux,
    )
    model.conv1.conv = adapt_first_conv(model.conv1.conv, in_channels, small_input, init=_trunc_normal)
    if small_input:
        model.maxpool1 = nn.Identity()
    min_size = MIN_INPUT_SIZE_SMALL if small_input else MIN_INPUT_SIZE
    guard_min_input_size(model, "googlenet", min_size, small_input)
    model.stage_names = STAGE_NAMES
    return model


def main_logits(output: torch.Tensor | tuple[torch.Tensor, ...]) -> torch.Tensor:
    """The main logits of any classifier's output: a tensor is returned as is; a
    ``GoogLeNetOutputs`` (or any namedtuple with a ``logits`` field) gives its ``logits``; another
    tuple its first element."""
    if isinstance(output, torch.Tensor):
        return output
    logits = getattr(output, "logits", None)
    if isinstance(logits, torch.Tensor):
        return logits
    if isinstance(output, tuple) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    raise TypeError(f"Cannot find the logits in a classifier output of type {type(output).__name__}.")


def googlenet_loss(
    output: torch.Tensor | GoogLeNetOutputs,
    target: torch.Tensor,
    criterion: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    aux_weight: float = 0.3,
) -> torch.Tensor:
    """``criterion(logits) + aux_weight * (criterion(aux1) + criterion(aux2))``.

    Szegedy et al. 2015, sec. 5: "during training, their loss gets added to the total loss of the
    network with a discount weight (the losses of the auxiliary classifiers were weighted by
    0.3)". In eval mode (a plain tensor, or missing auxiliary logits) it is ``criterion(logits)``.
    """
    if isinstance(output, torch.Tensor):
        return criterion(output, target)
    loss = criterion(main_logits(output), target)
    for aux in (getattr(output, "aux_logits1", None), getattr(output, "aux_logits2", None)):
        if aux is not None:
            loss = loss + aux_weight * criterion(aux, target)
    return loss
