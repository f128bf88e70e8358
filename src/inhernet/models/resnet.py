"""CIFAR-style ResNets (He et al., 2016) as defined in RepDistiller.

The architecture, parameter counts, weight initialisation and ``state_dict`` key names follow
``HobbitLong/RepDistiller/models/resnet.py``, so checkpoints trained with that code load directly.
Differences: the stem accepts ``in_channels`` input channels, global pooling is adaptive (any input
size works, 32x32 gives the original network), and ``forward`` returns logits only.

Depth ``6n + 2`` with basic blocks (``9n + 2`` with bottlenecks); three stages at strides 1, 2, 2.
``resnet8x4`` / ``resnet32x4`` are the 4x-wide variants used as teachers/students in the
knowledge-distillation literature.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .registry import register_model

__all__ = ["BasicBlock", "Bottleneck", "ResNet"]


def _conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    """Post-activation residual block: two 3x3 conv-BN layers, ReLU after the addition."""

    expansion = 1

    def __init__(
        self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None
    ) -> None:
        super().__init__()
        self.conv1 = _conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + identity)


class Bottleneck(nn.Module):
    """Post-activation bottleneck block (1x1 reduce, 3x3, 1x1 expand by 4)."""

    expansion = 4

    def __init__(
        self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(out + identity)


_BLOCKS: dict[str, type[BasicBlock] | type[Bottleneck]] = {
    "basic": BasicBlock,
    "basicblock": BasicBlock,
    "bottleneck": Bottleneck,
}


class ResNet(nn.Module):
    """CIFAR ResNet: 3x3 stem, three residual stages, global average pooling, linear ``fc``.

    Args:
        depth: total depth; ``6n + 2`` for basic blocks, ``9n + 2`` for bottlenecks, where ``n``
            is the number of blocks per stage.
        num_filters: ``[stem, stage1, stage2, stage3]`` widths, e.g. ``[16, 16, 32, 64]``.
        block: ``"basic"`` or ``"bottleneck"``.
        num_classes: classifier outputs.
        in_channels: input image channels (only the stem conv depends on it).
    """

    def __init__(
        self,
        depth: int,
        num_filters: Sequence[int],
        block: str = "basic",
        num_classes: int = 100,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        try:
            block_cls = _BLOCKS[block.lower()]
        except KeyError:
            raise ValueError(f"block must be 'basic' or 'bottleneck', got {block!r}") from None
        per_block = 2 if block_cls is BasicBlock else 3
        if depth < 2 or (depth - 2) % (3 * per_block) != 0:
            raise ValueError(
                f"depth for {block_cls.__name__} must be {3 * per_block}n+2, got {depth}"
            )
        if len(num_filters) != 4:
            raise ValueError(f"num_filters must have 4 entries, got {list(num_filters)}")
        n = (depth - 2) // (3 * per_block)

        self.depth = depth
        self.inplanes = num_filters[0]
        self.conv1 = nn.Conv2d(in_channels, num_filters[0], kernel_size=3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(num_filters[0])
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = self._make_layer(block_cls, num_filters[1], n, stride=1)
        self.layer2 = self._make_layer(block_cls, num_filters[2], n, stride=2)
        self.layer3 = self._make_layer(block_cls, num_filters[3], n, stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(num_filters[3] * block_cls.expansion, num_classes)

        # RepDistiller init; the Linear layer keeps PyTorch's default init.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)

    def _make_layer(
        self, block: type[BasicBlock] | type[Bottleneck], planes: int, blocks: int, stride: int
    ) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(
                    self.inplanes, planes * block.expansion, kernel_size=1, stride=stride,
                    bias=False,
                ),
                nn.BatchNorm2d(planes * block.expansion),
            )
        layers = [block(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * block.expansion
        layers.extend(block(self.inplanes, planes) for _ in range(1, blocks))
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return logits of shape ``(batch, num_classes)``."""
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        x = torch.flatten(self.avgpool(x), 1)
        return self.fc(x)


_CIFAR = (16, 16, 32, 64)
_CIFAR_X4 = (32, 64, 128, 256)


def _resnet(depth: int, filters: Sequence[int], num_classes: int, in_channels: int, **kw):
    return ResNet(depth, filters, "basic", num_classes=num_classes, in_channels=in_channels, **kw)


@register_model
def resnet8(num_classes: int = 100, in_channels: int = 3, **kwargs) -> ResNet:
    """ResNet-8 (1 basic block per stage, widths 16/32/64)."""
    return _resnet(8, _CIFAR, num_classes, in_channels, **kwargs)


@register_model
def resnet14(num_classes: int = 100, in_channels: int = 3, **kwargs) -> ResNet:
    """ResNet-14 (2 basic blocks per stage, widths 16/32/64)."""
    return _resnet(14, _CIFAR, num_classes, in_channels, **kwargs)


@register_model
def resnet20(num_classes: int = 100, in_channels: int = 3, **kwargs) -> ResNet:
    """ResNet-20 (3 basic blocks per stage, widths 16/32/64)."""
    return _resnet(20, _CIFAR, num_classes, in_channels, **kwargs)


@register_model
def resnet32(num_classes: int = 100, in_channels: int = 3, **kwargs) -> ResNet:
    """ResNet-32 (5 basic blocks per stage, widths 16/32/64)."""
    return _resnet(32, _CIFAR, num_classes, in_channels, **kwargs)


@register_model
def resnet44(num_classes: int = 100, in_channels: int = 3, **kwargs) -> ResNet:
    """ResNet-44 (7 basic blocks per stage, widths 16/32/64)."""
    return _resnet(44, _CIFAR, num_classes, in_channels, **kwargs)


@register_model
def resnet56(num_classes: int = 100, in_channels: int = 3, **kwargs) -> ResNet:
    """ResNet-56 (9 basic blocks per stage, widths 16/32/64)."""
    return _resnet(56, _CIFAR, num_classes, in_channels, **kwargs)


@register_model
def resnet110(num_classes: int = 100, in_channels: int = 3, **kwargs) -> ResNet:
    """ResNet-110 (18 basic blocks per stage, widths 16/32/64)."""
    return _resnet(110, _CIFAR, num_classes, in_channels, **kwargs)


@register_model
def resnet8x4(num_classes: int = 100, in_channels: int = 3, **kwargs) -> ResNet:
    """ResNet-8x4 (1 basic block per stage, stem 32, widths 64/128/256)."""
    return _resnet(8, _CIFAR_X4, num_classes, in_channels, **kwargs)


@register_model
def resnet32x4(num_classes: int = 100, in_channels: int = 3, **kwargs) -> ResNet:
    """ResNet-32x4 (5 basic blocks per stage, stem 32, widths 64/128/256)."""
    return _resnet(32, _CIFAR_X4, num_classes, in_channels, **kwargs)
