"""An in-memory data set of image tensors.

All the data sets this project uses fit in memory as one tensor, so loading a batch is a single
``x[idx]`` - no per-example Python calls, no per-example collation: that is what
:class:`inhernet.data.TensorLoader` does. ``TensorData`` is also a plain map-style ``Dataset``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.utils.data import Dataset

__all__ = ["TensorData"]


class TensorData(Dataset):
    """Images ``x`` (float32, N x C x H x W) and integer labels ``y`` (int64, N) held in memory.

    ``data[i]`` gives one ``(image, label)`` pair, so any ``DataLoader`` works; the fast way to
    iterate is :class:`inhernet.data.TensorLoader`, which takes each batch with one tensor index.
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor):
        if x.dim() != 4:
            raise ValueError(f"x must be N x C x H x W, got shape {tuple(x.shape)}")
        if y.dim() != 1 or y.shape[0] != x.shape[0]:
            raise ValueError(f"y must be a vector of {x.shape[0]} labels, got shape {tuple(y.shape)}")
        if not x.is_floating_point():
            raise TypeError(f"x must be a floating-point tensor, got {x.dtype}")
        self.x = x
        self.y = y.long()

    def __len__(self) -> int:
        return self.x.shape[0]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x[index], self.y[index]

    def subset(self, indices: Sequence[int] | torch.Tensor) -> TensorData:
        """A new ``TensorData`` holding only ``indices`` (copied; the original is untouched)."""
        idx = torch.as_tensor(indices, dtype=torch.long)
        return TensorData(self.x[idx], self.y[idx])

    def to(self, device: torch.device | str) -> TensorData:
        """A copy on ``device`` (e.g. to keep a small data set on the GPU)."""
        return TensorData(self.x.to(device), self.y.to(device))

    @property
    def shape(self) -> tuple[int, ...]:
        """The shape of ``x``: (N, C, H, W)."""
        return tuple(self.x.shape)

    def class_counts(self, num_classes: int | None = None) -> torch.Tensor:
        """How many examples each class has (length ``num_classes``, default max label + 1)."""
        n = int(self.y.max()) + 1 if num_classes is None and len(self) else (num_classes or 0)
        return torch.bincount(self.y, minlength=n)

    def __repr__(self) -> str:
        return f"TensorData(n={len(self)}, x={tuple(self.x.shape)} {self.x.dtype}, y={self.y.dtype})"
