"""AlexNet (Krizhevsky, Sutskever, Hinton, "ImageNet Classification with Deep Convolutional Neural
Networks", NIPS 2012), built by torchvision. torchvision's variant is the single-GPU one of
Krizhevsky's "One weird trick for parallelizing convolutional neural networks" (2014): 64/192/384/
256/256 filters, no local response normalisation, 61.1M parameters at 1000 classes.

Small inputs follow the zoo's rule (see ``zoo.classification.models._adapt``).
"""

from __future__ import annotations

import torch.nn as nn
from torchvision.models import AlexNet
from torchvision.models import alexnet as tv_alexnet

from zoo.classification.models._adapt import adapt_first_conv, guard_min_input_size
from zoo.core.registry import register_model

# Smallest square input that keeps every feature map non-empty (found by probing the network).
MIN_INPUT_SIZE = 63
MIN_INPUT_SIZE_SMALL = 7


@register_model("classification", source="torchvision")
def alexnet(
    num_classes: int = 1000, in_channels: int = 3, small_input: bool = False, dropout: float = 0.5
) -> AlexNet:
    """torchvision's AlexNet (Krizhevsky et al. 2012; the 2014 single-tower widths).

    - ``small_input=False``: the published network; it needs inputs of at least 63x63 pixels
      (11x11 stride-4 conv and three 3x3 stride-2 max-pools), smaller ones raise a ``ValueError``.
    - ``small_input=True``: CIFAR-style stem: ``features.0`` becomes a 3x3 stride-1 conv and the
      first max-pool (``features.2``) is removed, so a 32x32 image reaches the classifier as a
      7x7 map (28x28: 6x6), close to the 6x6 map the classifier was designed for.
    """
    model = tv_alexnet(weights=None, num_classes=num_classes, dropout=dropout)
    # torchvision's AlexNet keeps PyTorch's default initialisation: so does a replaced first conv.
    model.features[0] = adapt_first_conv(model.features[0], in_channels, small_input, init=None)
    if small_input:
        model.features[2] = nn.Identity()
    min_size = MIN_INPUT_SIZE_SMALL if small_input else MIN_INPUT_SIZE
    guard_min_input_size(model, "alexnet", min_size, small_input)
    return model
