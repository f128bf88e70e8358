"""Wide Residual Networks (Zagoruyko & Komodakis, 2016) as defined in RepDistiller.

Architecture, parameter counts, weight initialisation and ``state_dict`` key names follow
``HobbitLong/RepDistiller/models/wrn.py`` (so its checkpoints load directly; hence the
``convShortcut`` / ``block1.layer`` names). Differences: the stem accepts ``in_channels`` input
channels, global pooling is adaptive (any input size works, 32x32 gives the original network), and
``forward`` returns logits only.

``wrn_D_K``: depth ``D = 6n + 4`` (``n`` pre-activation blocks per stage), widen factor ``K``,
stage widths ``16K / 32K / 64K``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .registry import register_model

__all__ = ["NetworkBlock", "WideBasicBlock", "WideResNet"]


class WideBasicBlock(nn.Module):
    """Pre-activation block: BN-ReLU-conv3x3-BN-ReLU-(dropout)-conv3x3 plus shortcut.

    When the width changes, the shortcut is a 1x1 conv applied to the *pre-activated* input (as in
    the reference implementation); otherwise it is the identity on the raw input.
    """

    def __init__(
        self, in_planes: int, out_planes: int, stride: int, drop_rate: float = 0.0
    ) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(out_planes, out_planes, 3, stride=1, padding=1, bias=False)
        self.drop_rate = drop_rate
        self.equal_in_out = in_planes == out_planes
        self.convShortcut = (
            None
            if self.equal_in_out
            else nn.Conv2d(in_planes, out_planes, 1, stride=stride, padding=0, bias=False)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = self.relu1(self.bn1(x))
        if self.convShortcut is None:
            shortcut = x
        else:
            shortcut = self.convShortcut(pre)
        out = self.relu2(self.bn2(self.conv1(pre)))
        if self.drop_rate > 0:
            out = F.dropout(out, p=self.drop_rate, training=self.training)
        return shortcut + self.conv2(out)


class NetworkBlock(nn.Module):
    """One WRN stage: ``nb_layers`` blocks, the first one changing width / stride."""

    def __init__(
        self, nb_layers: int, in_planes: int, out_planes: int, stride: int, drop_rate: float = 0.0
    ) -> None:
        super().__init__()
        self.layer = nn.Sequential(
            *(
                WideBasicBlock(
                    in_planes if i == 0 else out_planes,
                    out_planes,
                    stride if i == 0 else 1,
                    drop_rate,
                )
                for i in range(nb_layers)
            )
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


class WideResNet(nn.Module):
    """WRN-depth-widen_factor for CIFAR-size inputs, classifier ``fc``.

    Args:
        depth: ``6n + 4``.
        widen_factor: width multiplier ``K``.
        num_classes: classifier outputs.
        in_channels: input image channels (only the stem conv depends on it).
        drop_rate: dropout between the two convs of each block (0 in RepDistiller).
    """

    def __init__(
        self,
        depth: int,
        widen_factor: int = 1,
        num_classes: int = 100,
        in_channels: int = 3,
        drop_rate: float = 0.0,
    ) -> None:
        super().__init__()
        if depth < 4 or (depth - 4) % 6 != 0:
            raise ValueError(f"WRN depth must be 6n+4, got {depth}")
        n = (depth - 4) // 6
        widths = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.depth = depth
        self.widen_factor = widen_factor
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, stride=1, padding=1, bias=False)
        self.block1 = NetworkBlock(n, widths[0], widths[1], 1, drop_rate)
        self.block2 = NetworkBlock(n, widths[1], widths[2], 2, drop_rate)
        self.block3 = NetworkBlock(n, widths[2], widths[3], 2, drop_rate)
        self.bn1 = nn.BatchNorm2d(widths[3])
        self.relu = nn.ReLU(inplace=True)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(widths[3], num_classes)

        # RepDistiller init: N(0, sqrt(2 / (k*k*out))) == Kaiming normal, fan_out; fc bias zero.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return logits of shape ``(batch, num_classes)``."""
        out = self.block3(self.block2(self.block1(self.conv1(x))))
        out = self.relu(self.bn1(out))
        out = torch.flatten(self.avgpool(out), 1)
        return self.fc(out)


@register_model
def wrn_16_1(num_classes: int = 100, in_channels: int = 3, **kwargs) -> WideResNet:
    """WRN-16-1."""
    return WideResNet(16, 1, num_classes=num_classes, in_channels=in_channels, **kwargs)


@register_model
def wrn_16_2(num_classes: int = 100, in_channels: int = 3, **kwargs) -> WideResNet:
    """WRN-16-2."""
    return WideResNet(16, 2, num_classes=num_classes, in_channels=in_channels, **kwargs)


@register_model
def wrn_40_1(num_classes: int = 100, in_channels: int = 3, **kwargs) -> WideResNet:
    """WRN-40-1."""
    return WideResNet(40, 1, num_classes=num_classes, in_channels=in_channels, **kwargs)


@register_model
def wrn_40_2(num_classes: int = 100, in_channels: int = 3, **kwargs) -> WideResNet:
    """WRN-40-2."""
    return WideResNet(40, 2, num_classes=num_classes, in_channels=in_channels, **kwargs)
