"""CIFAR ResNets whose state-dict keys match public checkpoints exactly.

* ``resnet20/32/44/56``: He et al. (2016) CIFAR ResNets with the parameter-free "option A" shortcut
  (subsample by 2, zero-pad the new channels), as in akamaster/pytorch_resnet_cifar10, whose pretrained
  files load unchanged (after the ``module.`` prefix is stripped by the checkpoint loader).
* ``resnet2b`` / ``resnet4b``: alpha-beta-CROWN's BatchNorm-free verification benchmark ResNets
  (stride-2 stem, 2 residual blocks per stage with a 1x1 conv shortcut where the shape changes, then two
  dense layers).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .arch_registry import register_model


class PadShortcut(nn.Module):
    """Option-A shortcut: take every second pixel and zero-pad channels on both sides (no parameters)."""

    def __init__(self, pad_channels: int) -> None:
        super().__init__()
        self.pad_channels = pad_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad_channels, self.pad_channels), "constant", 0.0)


class CifarBasicBlock(nn.Module):
    """conv-bn-relu-conv-bn plus shortcut, then relu."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        if stride != 1 or in_planes != planes:
            self.shortcut: nn.Module = PadShortcut(planes // 4)
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """3 stages of 16/32/64 channels with ``n`` blocks each (depth 6n + 2), global average pool, ``linear``."""

    def __init__(self, blocks_per_stage: int, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 16, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        in_planes = 16
        stages = []
        for planes, stride in ((16, 1), (32, 2), (64, 2)):
            blocks = []
            for i in range(blocks_per_stage):
                blocks.append(CifarBasicBlock(in_planes, planes, stride if i == 0 else 1))
                in_planes = planes
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.linear = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.linear(out)


def _cifar_resnet(depth: int):
    if (depth - 2) % 6:
        raise ValueError(f"CIFAR ResNet depth must be 6n + 2, got {depth}")

    def factory(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
        return CifarResNet((depth - 2) // 6, num_classes, in_channels)

    factory.__doc__ = f"CIFAR ResNet-{depth} (He et al. 2016, option-A shortcuts; akamaster key names)."
    return factory


for _depth in (20, 32, 44, 56, 110):
    register_model(f"resnet{_depth}")(_cifar_resnet(_depth))


class CrownBlock(nn.Module):
    """BN-free residual block: relu(conv2(relu(conv1(x))) + shortcut(x)); 1x1 conv shortcut on shape change."""

    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=True)
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride=stride, bias=True))
        else:
            self.shortcut = nn.Sequential()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv2(F.relu(self.conv1(x)))
        return F.relu(out + self.shortcut(x))


class CrownResNet(nn.Module):
    """alpha-beta-CROWN's CResNet5/CResNet7 without BN and with the "dense" head.

    Stem conv (stride 2) to ``in_planes`` channels; ``num_stages`` stages of 2 blocks at ``2 * in_planes``
    channels, each stage halving the resolution; flatten; ``linear1`` (→100), relu, ``linear2``.
    """

    def __init__(self, in_planes: int, num_stages: int, num_classes: int = 10, in_channels: int = 3,
                 input_size: int = 32, blocks_per_stage: int = 2) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, in_planes, 3, stride=2, padding=1, bias=True)
        planes, current = 2 * in_planes, in_planes
        side = (input_size - 1) // 2 + 1
        for s in range(num_stages):
            blocks = []
            for i in range(blocks_per_stage):
                blocks.append(CrownBlock(current, planes, 2 if i == 0 else 1))
                current = planes
            side = (side - 1) // 2 + 1
            self.add_module(f"layer{s + 1}", nn.Sequential(*blocks))
        self.num_stages = num_stages
        self.linear1 = nn.Linear(planes * side * side, 100)
        self.linear2 = nn.Linear(100, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.conv1(x))
        for s in range(self.num_stages):
            out = getattr(self, f"layer{s + 1}")(out)
        out = F.relu(self.linear1(torch.flatten(out, 1)))
        return self.linear2(out)


@register_model("resnet2b")
def resnet2b(num_classes: int = 10, in_channels: int = 3, input_size: int = 32) -> nn.Module:
    """alpha-beta-CROWN ResNet-2B (8-channel stem, one stage of 2 blocks at 16 channels, dense head)."""
    return CrownResNet(8, 1, num_classes, in_channels, input_size)


@register_model("resnet4b")
def resnet4b(num_classes: int = 10, in_channels: int = 3, input_size: int = 32) -> nn.Module:
    """alpha-beta-CROWN ResNet-4B (16-channel stem, two stages of 2 blocks at 32 channels, dense head)."""
    return CrownResNet(16, 2, num_classes, in_channels, input_size)
