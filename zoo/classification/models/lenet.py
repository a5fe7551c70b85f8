"""LeNet-5 (LeCun, Bottou, Bengio, Haffner, "Gradient-based learning applied to document
recognition", Proc. IEEE 1998, sec. II.B). Hand-written: neither torchvision nor timm has it.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from zoo.core.registry import register_model

# Table I of the paper: which S2 feature maps (rows) feed each of the 16 C3 maps (columns).
C3_CONNECTIONS: tuple[tuple[int, ...], ...] = (
    (0, 1, 2), (1, 2, 3), (2, 3, 4), (3, 4, 5), (0, 4, 5), (0, 1, 5),
    (0, 1, 2, 3), (1, 2, 3, 4), (2, 3, 4, 5), (0, 3, 4, 5), (0, 1, 4, 5), (0, 1, 2, 5),
    (0, 1, 3, 4), (1, 2, 4, 5), (0, 2, 3, 5), (0, 1, 2, 3, 4, 5),
)


class ScaledTanh(nn.Module):
    """f(a) = 1.7159 tanh(2a/3), the squashing function of the paper's appendix A."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 1.7159 * torch.tanh(x * (2.0 / 3.0))


class Subsampling(nn.Module):
    """S2/S4: the four inputs of each unit are summed, multiplied by a trainable
    coefficient and offset by a trainable bias, one pair per feature map."""

    ends_stage = True  # a pooling layer: zoo.classification.finetune.stages cuts a stage after it

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.full((channels,), 0.25))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        summed = F.avg_pool2d(x, 2) * 4.0
        return summed * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)


class SparseConv2d(nn.Conv2d):
    """C3: a convolution whose input/output feature-map connections follow Table I."""

    def __init__(self, connections: tuple[tuple[int, ...], ...], in_channels: int, kernel_size: int) -> None:
        super().__init__(in_channels, len(connections), kernel_size)
        mask = torch.zeros(len(connections), in_channels, 1, 1)
        for out_map, in_maps in enumerate(connections):
            mask[out_map, list(in_maps)] = 1.0
        self.register_buffer("mask", mask, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, self.weight * self.mask, self.bias)


class LeNet5(nn.Module):
    """LeNet-5: C1 6@5x5, S2, C3 16@5x5 (Table I connections), S4, C5 120@5x5, F6 84, output.

    Adaptations, all documented here:
    - The paper centres 28x28 digits in a 32x32 field; C1 uses ``padding=2`` for the same effect,
      so a 28x28 input gives the paper's 28x28 C1 maps and a 1x1 C5.
    - The Euclidean RBF output layer is replaced by a linear layer trained with cross-entropy.
    - Inputs larger than 28x28 give a C5 map larger than 1x1, which is averaged (global pooling).
    - ``modern=True`` swaps the scaled tanh for ReLU, the trainable subsampling for max pooling and
      the sparse C3 for a dense one.

    At 10 classes the network stores 61,750 parameters; the 900 C3 weights outside Table I are
    masked to zero and never change, so 60,850 are effectively trained (the paper: "about 60,000").
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 1, modern: bool = False) -> None:
        super().__init__()

        def act() -> nn.Module:
            return nn.ReLU(inplace=True) if modern else ScaledTanh()

        def pool(channels: int) -> nn.Module:
            return nn.MaxPool2d(2) if modern else Subsampling(channels)

        c3 = nn.Conv2d(6, 16, 5) if modern else SparseConv2d(C3_CONNECTIONS, 6, 5)
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 6, 5, padding=2), act(), pool(6), act(),  # C1, S2
            c3, act(), pool(16), act(),  # C3, S4
            nn.Conv2d(16, 120, 5), act(),  # C5
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(120, 84), act(), nn.Linear(84, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if min(x.shape[-2:]) < 16:
            raise ValueError(
                f"LeNet-5 needs inputs of at least 16x16 pixels (C1, two subsamplings and C5 of 5x5); "
                f"got {tuple(x.shape[-2:])}. Resize the images or use the 'convnet' network."
            )
        return self.classifier(self.pool(self.features(x)))


@register_model("classification")
def lenet5(num_classes: int = 10, in_channels: int = 1, modern: bool = False) -> LeNet5:
    """LeNet-5 as in the paper (scaled tanh, trainable subsampling, Table I connections)."""
    return LeNet5(num_classes=num_classes, in_channels=in_channels, modern=modern)
