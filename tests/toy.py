"""Tiny in-memory data and a tiny CNN shared by the training tests (what ``fit`` needs: ``.train`` /
``.val`` / ``.test`` splits with ``.x`` / ``.y``, ``num_classes``, ``default_augment``)."""

from types import SimpleNamespace

import torch
from torch import nn

CROP_FLIP = {"padding": 1, "flip": True}


def toy_data(n_train=96, n_val=30, n_test=31, classes=3, seed=0, default_augment=CROP_FLIP):
    """1×8×8 Gaussian images whose label depends on the mean of two image halves (learnable in an epoch)."""
    g = torch.Generator().manual_seed(seed)

    def split(n):
        x = torch.randn(n, 1, 8, 8, generator=g)
        y = (x[:, 0, :4].mean((1, 2)) > 0).long() + (x[:, 0, 4:].mean((1, 2)) > 0.3).long()
        return SimpleNamespace(x=x, y=y.clamp(max=classes - 1))

    return SimpleNamespace(train=split(n_train), val=split(n_val), test=split(n_test), num_classes=classes,
                           default_augment=default_augment)


def toy_net(classes=3, seed=1):
    """Conv → BatchNorm → ReLU → pool → Linear, seeded."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(6, classes))
