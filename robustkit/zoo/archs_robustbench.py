"""The two workhorse architectures of the RobustBench CIFAR leaderboards, with RobustBench's key names.

``preact-resnet18`` is RobustBench's ``PreActResNet(PreActBlock, [2, 2, 2, 2])`` and ``wrn-28-10`` its
``WideResNet(depth=28, widen_factor=10)`` (from TRADES), so their published state dicts load unchanged.
Forward passes reproduce theirs exactly, including the WideResNet quirk that a block whose channel count
changes feeds the *activated* input to its shortcut convolution.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .arch_registry import register_model


class PreActBlock(nn.Module):
    """Pre-activation basic block; the shortcut (1x1 conv) sees the raw input, as in RobustBench."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(x))
        shortcut = self.shortcut(x) if hasattr(self, "shortcut") else x
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + shortcut


class PreActResNet(nn.Module):
    """Pre-activation ResNet for 32x32 inputs: conv1, layer1..4 (64..512 channels), [bn], linear."""

    def __init__(self, num_blocks: tuple[int, int, int, int], num_classes: int = 10, bn_before_fc: bool = False,
                 in_channels: int = 3) -> None:
        super().__init__()
        self.bn_before_fc = bn_before_fc
        self.conv1 = nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False)
        in_planes = 64
        for i, (planes, n) in enumerate(zip((64, 128, 256, 512), num_blocks)):
            blocks = []
            for j in range(n):
                blocks.append(PreActBlock(in_planes, planes, (1 if i == 0 else 2) if j == 0 else 1))
                in_planes = planes
            self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))
        if bn_before_fc:
            self.bn = nn.BatchNorm2d(512)
        self.linear = nn.Linear(512, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(x)
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        if self.bn_before_fc:
            out = F.relu(self.bn(out))
        out = F.avg_pool2d(out, 4)
        return self.linear(out.reshape(out.size(0), -1))


@register_model("preact-resnet18")
def preact_resnet18(num_classes: int = 10, bn_before_fc: bool = False, in_channels: int = 3) -> nn.Module:
    """RobustBench's PreActResNet-18 (``bn_before_fc=True`` for the variants with a final BN + ReLU)."""
    return PreActResNet((2, 2, 2, 2), num_classes, bn_before_fc, in_channels)


class WideBasicBlock(nn.Module):
    """WideResNet block (bn-relu-conv twice); ``convShortcut`` only where the channel count changes."""

    def __init__(self, in_planes: int, out_planes: int, stride: int, drop_rate: float = 0.0) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.relu1 = nn.ReLU()
        self.conv1 = nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.relu2 = nn.ReLU()
        self.conv2 = nn.Conv2d(out_planes, out_planes, 3, stride=1, padding=1, bias=False)
        self.drop_rate = drop_rate
        self.equal_in_out = in_planes == out_planes
        self.convShortcut = None if self.equal_in_out else nn.Conv2d(
            in_planes, out_planes, 1, stride=stride, padding=0, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        act = self.relu1(self.bn1(x))
        out = self.relu2(self.bn2(self.conv1(act)))
        if self.drop_rate > 0:
            out = F.dropout(out, p=self.drop_rate, training=self.training)
        out = self.conv2(out)
        shortcut = x if self.equal_in_out else self.convShortcut(act)
        return shortcut + out


class NetworkBlock(nn.Module):
    """A stage of WideResNet blocks, stored under ``.layer`` (RobustBench key names)."""

    def __init__(self, n: int, in_planes: int, out_planes: int, stride: int, drop_rate: float) -> None:
        super().__init__()
        self.layer = nn.Sequential(*[
            WideBasicBlock(in_planes if i == 0 else out_planes, out_planes, stride if i == 0 else 1, drop_rate)
            for i in range(n)
        ])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


class WideResNet(nn.Module):
    """WideResNet-depth-k for 32x32 inputs (Zagoruyko & Komodakis), as defined in TRADES / RobustBench."""

    def __init__(self, depth: int = 28, widen_factor: int = 10, num_classes: int = 10, sub_block1: bool = False,
                 drop_rate: float = 0.0, bias_last: bool = True, in_channels: int = 3) -> None:
        super().__init__()
        if (depth - 4) % 6:
            raise ValueError(f"WideResNet depth must be 6n + 4, got {depth}")
        n = (depth - 4) // 6
        channels = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.conv1 = nn.Conv2d(in_channels, channels[0], 3, stride=1, padding=1, bias=False)
        self.block1 = NetworkBlock(n, channels[0], channels[1], 1, drop_rate)
        if sub_block1:  # unused in forward; present in some RobustBench checkpoints (e.g. Carmon2019Unlabeled)
            self.sub_block1 = NetworkBlock(n, channels[0], channels[1], 1, drop_rate)
        self.block2 = NetworkBlock(n, channels[1], channels[2], 2, drop_rate)
        self.block3 = NetworkBlock(n, channels[2], channels[3], 2, drop_rate)
        self.bn1 = nn.BatchNorm2d(channels[3])
        self.relu = nn.ReLU()
        self.fc = nn.Linear(channels[3], num_classes, bias=bias_last)
        self.n_channels = channels[3]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block3(self.block2(self.block1(self.conv1(x))))
        out = self.relu(self.bn1(out))
        out = F.avg_pool2d(out, 8)
        return self.fc(out.reshape(-1, self.n_channels))


@register_model("wrn-28-10")
def wrn_28_10(num_classes: int = 10, sub_block1: bool = False, drop_rate: float = 0.0, bias_last: bool = True,
              in_channels: int = 3) -> nn.Module:
    """RobustBench's standard WideResNet-28-10."""
    return WideResNet(28, 10, num_classes, sub_block1, drop_rate, bias_last, in_channels)


@register_model("wrn-34-10")
def wrn_34_10(num_classes: int = 10, sub_block1: bool = False, drop_rate: float = 0.0, bias_last: bool = True,
              in_channels: int = 3) -> nn.Module:
    """WideResNet-34-10, the TRADES / MART architecture (same block definition as ``wrn-28-10``)."""
    return WideResNet(34, 10, num_classes, sub_block1, drop_rate, bias_last, in_channels)


@register_model("wide-resnet")
def wide_resnet(num_classes: int = 10, depth: int = 28, widen_factor: int = 10, sub_block1: bool = False,
                drop_rate: float = 0.0, bias_last: bool = True, in_channels: int = 3) -> nn.Module:
    """Any depth / width of the same WideResNet (e.g. ``depth: 16, widen_factor: 4`` for quick tests)."""
    return WideResNet(depth, widen_factor, num_classes, sub_block1, drop_rate, bias_last, in_channels)
