"""CIFAR VGG with batch normalisation, as defined in RepDistiller (``vggN_bn`` there).

Architecture, parameter counts, weight initialisation and ``state_dict`` key names follow
``HobbitLong/RepDistiller/models/vgg.py`` with ``batch_norm=True`` (so its ``vgg*_bn`` checkpoints
load directly). The fully connected head of ImageNet VGG is replaced by global average pooling and
one linear ``classifier`` (512 -> num_classes).

Five conv blocks separated by 2x2 max-pooling; the pool between blocks 3 and 4 is applied only for
inputs at least 64 pixels high (RepDistiller applies it for exactly 64, i.e. Tiny-ImageNet), so a
32x32 CIFAR image reaches block 4 at 4x4 and a 28x28 image at 3x3. Differences from the reference:
the stem accepts ``in_channels`` input channels and ``forward`` returns logits only.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .registry import register_model

__all__ = ["VGG", "VGG_CONFIGS"]

#: Conv widths of the five blocks for each depth (conv layers + 1 classifier layer).
VGG_CONFIGS: dict[int, tuple[tuple[int, ...], ...]] = {
    8: ((64,), (128,), (256,), (512,), (512,)),
    11: ((64,), (128,), (256, 256), (512, 512), (512, 512)),
    13: ((64, 64), (128, 128), (256, 256), (512, 512), (512, 512)),
    16: ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512)),
    19: ((64, 64), (128, 128), (256, 256, 256, 256), (512, 512, 512, 512), (512, 512, 512, 512)),
}


def _make_block(widths: Sequence[int], in_channels: int) -> nn.Sequential:
    """``[conv3x3-BN-ReLU] * (len-1) + conv3x3-BN``; the final ReLU is applied in ``forward``."""
    layers: list[nn.Module] = []
    for v in widths:
        conv = nn.Conv2d(in_channels, v, kernel_size=3, padding=1)
        layers += [conv, nn.BatchNorm2d(v), nn.ReLU(inplace=True)]
        in_channels = v
    return nn.Sequential(*layers[:-1])


class VGG(nn.Module):
    """VGG-BN for small images: five conv blocks, global average pooling, linear ``classifier``.

    Args:
        cfg: five sequences of conv widths (see :data:`VGG_CONFIGS`); the classifier input size
            is the last block's width (512 for every standard config).
        num_classes: classifier outputs.
        in_channels: input image channels (only the first conv depends on it).
    """

    def __init__(
        self, cfg: Sequence[Sequence[int]], num_classes: int = 100, in_channels: int = 3
    ) -> None:
        super().__init__()
        if len(cfg) != 5:
            raise ValueError(f"VGG cfg needs 5 blocks, got {len(cfg)}")
        self.block0 = _make_block(cfg[0], in_channels)
        self.block1 = _make_block(cfg[1], cfg[0][-1])
        self.block2 = _make_block(cfg[2], cfg[1][-1])
        self.block3 = _make_block(cfg[3], cfg[2][-1])
        self.block4 = _make_block(cfg[4], cfg[3][-1])
        self.pool0 = nn.MaxPool2d(kernel_size=2, stride=2)
        self.pool1 = nn.MaxPool2d(kernel_size=2, stride=2)
        self.pool2 = nn.MaxPool2d(kernel_size=2, stride=2)
        self.pool3 = nn.MaxPool2d(kernel_size=2, stride=2)
        self.pool4 = nn.AdaptiveAvgPool2d((1, 1))
        self.classifier = nn.Linear(cfg[4][-1], num_classes)

        # RepDistiller init: conv N(0, sqrt(2 / (k*k*out))) == Kaiming normal fan_out, conv bias 0;
        # BN weight 1 bias 0; classifier N(0, 0.01), bias 0.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return logits of shape ``(batch, num_classes)``."""
        large = x.shape[-2] >= 64
        x = self.pool0(F.relu(self.block0(x)))
        x = self.pool1(F.relu(self.block1(x)))
        x = self.pool2(F.relu(self.block2(x)))
        x = F.relu(self.block3(x))
        if large:
            x = self.pool3(x)
        x = F.relu(self.block4(x))
        x = torch.flatten(self.pool4(x), 1)
        return self.classifier(x)


def _vgg(depth: int, num_classes: int, in_channels: int, **kwargs) -> VGG:
    return VGG(VGG_CONFIGS[depth], num_classes=num_classes, in_channels=in_channels, **kwargs)


@register_model
def vgg8(num_classes: int = 100, in_channels: int = 3, **kwargs) -> VGG:
    """VGG-8 with BatchNorm (RepDistiller ``vgg8_bn``, config "S")."""
    return _vgg(8, num_classes, in_channels, **kwargs)


@register_model
def vgg11(num_classes: int = 100, in_channels: int = 3, **kwargs) -> VGG:
    """VGG-11 with BatchNorm (RepDistiller ``vgg11_bn``, config "A")."""
    return _vgg(11, num_classes, in_channels, **kwargs)


@register_model
def vgg13(num_classes: int = 100, in_channels: int = 3, **kwargs) -> VGG:
    """VGG-13 with BatchNorm (RepDistiller ``vgg13_bn``, config "B")."""
    return _vgg(13, num_classes, in_channels, **kwargs)


@register_model
def vgg16(num_classes: int = 100, in_channels: int = 3, **kwargs) -> VGG:
    """VGG-16 with BatchNorm (RepDistiller ``vgg16_bn``, config "D")."""
    return _vgg(16, num_classes, in_channels, **kwargs)


@register_model
def vgg19(num_classes: int = 100, in_channels: int = 3, **kwargs) -> VGG:
    """VGG-19 with BatchNorm (RepDistiller ``vgg19_bn``, config "E")."""
    return _vgg(19, num_classes, in_channels, **kwargs)
