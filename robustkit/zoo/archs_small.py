"""Small image classifiers for 8x8 digits, MNIST and CIFAR-sized inputs.

Layer names follow the published checkpoints they must load: ``lenet5`` is advertorch's MNIST LeNet5
(``LeNet5Madry``: conv1, conv2, linear1, linear2) and ``kw-small`` is the small convolutional network of
Wong & Kolter's convex_adversarial (an ``nn.Sequential`` whose weights are keyed 0, 2, 5, 7).
"""
from __future__ import annotations

import torch
from torch import nn

from .arch_registry import register_model


def _check_size(name: str, input_size: int, divisor: int) -> None:
    if isinstance(input_size, bool) or not isinstance(input_size, int) or input_size < divisor:
        raise ValueError(f"{name}: input_size must be an int >= {divisor}, got {input_size!r}")


class SmallCNN(nn.Module):
    """Two conv + maxpool stages and two linear layers: small enough to adversarially train on 8x8 digits in
    seconds on a laptop CPU, large enough for ~99% on MNIST (28x28) with the default width."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1, input_size: int = 28, width: int = 32,
                 hidden: int = 128) -> None:
        super().__init__()
        _check_size("small-cnn", input_size, 4)
        self.conv1 = nn.Conv2d(in_channels, width, 3, padding=1)
        self.conv2 = nn.Conv2d(width, 2 * width, 3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.relu = nn.ReLU()
        side = input_size // 2 // 2
        self.fc1 = nn.Linear(2 * width * side * side, hidden)
        self.fc2 = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.pool(self.relu(self.conv1(x)))
        out = self.pool(self.relu(self.conv2(out)))
        out = self.relu(self.fc1(torch.flatten(out, 1)))
        return self.fc2(out)


@register_model("small-cnn")
def small_cnn(num_classes: int = 10, in_channels: int = 1, input_size: int = 28, width: int = 32,
              hidden: int = 128) -> nn.Module:
    """Small CNN; ``input_size=8`` for scikit-learn digits, 28 for MNIST, 32 (``in_channels=3``) for CIFAR."""
    return SmallCNN(num_classes, in_channels, input_size, width, hidden)


class LeNet5(nn.Module):
    """advertorch's MNIST LeNet5 (the Madry et al. MNIST network): 2 conv + maxpool stages, 2 linear layers."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1, input_size: int = 28) -> None:
        super().__init__()
        _check_size("lenet5", input_size, 4)
        self.conv1 = nn.Conv2d(in_channels, 32, kernel_size=3, padding=1)
        self.relu1 = nn.ReLU()
        self.maxpool1 = nn.MaxPool2d(2, 2)
        self.conv2 = nn.Conv2d(32, 64, kernel_size=3, padding=1)
        self.relu2 = nn.ReLU()
        self.maxpool2 = nn.MaxPool2d(2, 2)
        side = input_size // 2 // 2
        self.linear1 = nn.Linear(64 * side * side, 200)
        self.relu3 = nn.ReLU()
        self.linear2 = nn.Linear(200, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.maxpool1(self.relu1(self.conv1(x)))
        out = self.maxpool2(self.relu2(self.conv2(out)))
        out = out.reshape(out.size(0), -1)
        out = self.relu3(self.linear1(out))
        return self.linear2(out)


@register_model("lenet5")
def lenet5(num_classes: int = 10, in_channels: int = 1, input_size: int = 28) -> nn.Module:
    """advertorch's MNIST LeNet5 (loads ``mnist_lenet5_clntrained.pt`` / ``mnist_lenet5_advtrained.pt``)."""
    return LeNet5(num_classes, in_channels, input_size)


@register_model("kw-small")
def kw_small(num_classes: int = 10, in_channels: int = 1, input_size: int = 28) -> nn.Module:
    """convex_adversarial's small ConvNet: two stride-2 4x4 convs (16, 32 channels), linear 100, linear out.

    ``in_channels=1, input_size=28`` for its MNIST models, ``3, 32`` for CIFAR-10 / SVHN.
    """
    _check_size("kw-small", input_size, 4)
    side = (((input_size - 2) // 2 + 1) - 2) // 2 + 1  # two 4x4 stride-2 convs with padding 1
    return nn.Sequential(
        nn.Conv2d(in_channels, 16, 4, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv2d(16, 32, 4, stride=2, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(32 * side * side, 100),
        nn.ReLU(),
        nn.Linear(100, num_classes),
    )


@register_model("mlp")
def mlp(num_classes: int = 10, in_features: int = 784, hidden: int = 256, depth: int = 2) -> nn.Module:
    """Fully connected ReLU network on the flattened image (``in_features`` = C*H*W, e.g. 64 for digits)."""
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 1:
        raise ValueError(f"mlp: depth must be an int >= 1, got {depth!r}")
    layers: list[nn.Module] = [nn.Flatten()]
    width = in_features
    for _ in range(depth):
        layers += [nn.Linear(width, hidden), nn.ReLU()]
        width = hidden
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)
