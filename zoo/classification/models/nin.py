"""Network in Network (Lin, Chen, Yan, "Network In Network", ICLR 2014). Hand-written: neither
torchvision nor timm has it.

An *mlpconv* layer slides a small multilayer perceptron over the image: a ``k x k`` convolution
followed by two 1x1 convolutions, each with a ReLU (paper sec. 3.1, eq. 2). The network stacks
three mlpconv layers and replaces fully connected layers by *global average pooling* of one
feature map per class (sec. 3.2). Widths and poolings are those of the authors' released
CIFAR-10 model (the paper's sec. 4.2 network): 192-160-96 (5x5), max-pool; 192-192-192 (5x5),
average-pool; 192-192-classes (3x3); dropout 0.5 after the first two mlpconv layers.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from zoo.core.registry import register_model


class MlpConv(nn.Sequential):
    """``k x k`` conv, then two 1x1 convs (paper eq. 2), ReLU after each unless ``last_relu`` is off."""

    def __init__(
        self, in_channels: int, widths: tuple[int, int, int], kernel_size: int, last_relu: bool = True
    ) -> None:
        c1, c2, c3 = widths
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, c1, kernel_size, padding=kernel_size // 2),
            nn.ReLU(inplace=True),
            nn.Conv2d(c1, c2, 1),
            nn.ReLU(inplace=True),
            nn.Conv2d(c2, c3, 1),
        ]
        if last_relu:
            layers.append(nn.ReLU(inplace=True))
        super().__init__(*layers)


class NiN(nn.Module):
    """Three mlpconv layers and global average pooling (Lin et al. 2014, fig. 2).

    Deviations, documented: the last 1x1 convolution has no ReLU, so the pooled class maps are
    unconstrained logits for cross-entropy (the released Caffe model rectifies them); weights use
    He initialisation instead of the released model's hand-tuned Gaussians; poolings use
    ``ceil_mode`` like Caffe, so a 32x32 image gives 16x16, 8x8 and finally 8x8 class maps.
    Any input of at least 5x5 pixels works (global pooling adapts to the size).
    """

    min_input_size = 5

    def __init__(self, num_classes: int = 10, in_channels: int = 3, dropout: float = 0.5) -> None:
        super().__init__()
        self.features = nn.Sequential(
            MlpConv(in_channels, (192, 160, 96), 5),
            nn.MaxPool2d(3, stride=2, ceil_mode=True),
            nn.Dropout(dropout),
            MlpConv(96, (192, 192, 192), 5),
            nn.AvgPool2d(3, stride=2, ceil_mode=True),
            nn.Dropout(dropout),
            MlpConv(192, (192, 192, num_classes), 3, last_relu=False),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if min(x.shape[-2:]) < self.min_input_size:
            raise ValueError(
                f"nin needs inputs of at least {self.min_input_size}x{self.min_input_size} pixels "
                f"(two 3x3 stride-2 poolings); got {tuple(x.shape[-2:])}. Resize the images."
            )
        return self.pool(self.features(x)).flatten(1)


@register_model("classification", source="zoo")
def nin(num_classes: int = 10, in_channels: int = 3, dropout: float = 0.5) -> NiN:
    """Network in Network for CIFAR-sized images (Lin, Chen, Yan 2014), hand-written; about
    0.97M parameters at 10 classes. Works unchanged on 28x28, 32x32 and larger inputs."""
    return NiN(num_classes=num_classes, in_channels=in_channels, dropout=dropout)
