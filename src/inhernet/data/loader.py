"""In-memory, epoch-seeded, rank-aware batching of tensor data sets.

A :class:`TensorLoader` iterates pre-stacked ``(x, y)`` batches straight from the tensors of a
data set (anything with ``.x`` and ``.y``; ``inhernet.data.TensorData`` included). Its order and its
augmentation depend only on ``(seed, epoch, rank)``, never on global RNG state, so a run resumed at
an epoch boundary sees exactly the batches of an uninterrupted run. Lightning calls
``loader.sampler.set_epoch(epoch)`` before every epoch (as for a ``DistributedSampler``).

Under data parallelism each process gets a disjoint shard: for training every process gets the
same number of samples (``N // world_size``, the remainder dropped for that epoch) so that they run
the same number of steps; for evaluation the shards are ``idx[rank::world_size]`` and cover every
sample exactly once. ``batch_size`` is per process, as in Lightning.

With ``device`` (e.g. ``"cuda"``) the loader holds its tensors on that device, picks the batches
there and augments them there: no host-to-device copy per batch. The order and the augmentation's
random draws still come from the same CPU generators (only the drawn numbers cross over), so the
batches are the same values as without ``device``; ``device="cpu"`` gives the very same tensors.
"""

from __future__ import annotations

import hashlib
from typing import Any, Callable, Iterator, Optional

import torch
from torch import Tensor

from .augment import RandomCropFlip

__all__ = ["EpochSampler", "TensorLoader", "resolve_augment", "mix_seed"]


def mix_seed(*parts: int) -> int:
    """A deterministic 63-bit seed from integers (a hash, independent of ``PYTHONHASHSEED``)."""
    digest = hashlib.blake2b(repr(tuple(int(p) for p in parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & 0x7FFFFFFFFFFFFFFF


def resolve_augment(augment: Any, data: Any = None) -> Optional[Callable[[Tensor], Tensor]]:
    """Turn an augmentation spec into a batch transform (or ``None``).

    Accepted: ``None`` / ``"none"`` / ``False``; ``"default"`` (the data set's ``default_augment``,
    if any); ``"crop_flip"``, ``"crop"``, ``"flip"``; a dict of :class:`inhernet.data.RandomCropFlip`
    keyword arguments (``DataSplits.default_augment``); a ``RandomCropFlip``; or any callable
    ``f(x) -> x``. A transform with ``manual_seed`` is re-seeded from ``(seed, epoch, rank)`` by
    :class:`TensorLoader` every epoch.
    """
    if augment is None or augment is False or augment == "none":
        return None
    if augment == "default":
        return resolve_augment(getattr(data, "default_augment", None), None) if data is not None else None
    presets = {"crop_flip": (4, True), "crop": (4, False), "flip": (0, True)}
    if isinstance(augment, str):
        if augment not in presets:
            raise ValueError(f"unknown augment {augment!r}; use none, default, crop_flip, crop or flip")
        return RandomCropFlip(*presets[augment])
    if isinstance(augment, dict):
        return RandomCropFlip(**augment)
    if callable(augment):
        return augment
    raise TypeError(f"cannot use {augment!r} as an augmentation")


class EpochSampler:
    """Holds the epoch; Lightning finds it as ``loader.sampler`` and calls :meth:`set_epoch`."""

    def __init__(self) -> None:
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)


class TensorLoader:
    """Iterate ``(x, y)`` batches of a tensor data set; see the module docstring."""

    def __init__(
        self,
        data: Any,
        batch_size: int,
        *,
        shuffle: bool = False,
        augment: Any = None,
        seed: int = 0,
        drop_last: bool = False,
        rank: int = 0,
        world_size: int = 1,
        device: Optional[torch.device | str] = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.device = torch.device(device) if device is not None else None
        # one copy of the split on the device for the loader's life (a no-op when it is already there)
        self.x: Tensor = data.x if self.device is None else data.x.to(self.device)
        self.y: Tensor = data.y if self.device is None else data.y.to(self.device)
        if len(self.x) != len(self.y):
            raise ValueError(f"x and y differ in length: {len(self.x)} vs {len(self.y)}")
        self.batch_size = int(batch_size)
        self.shuffle = bool(shuffle)
        self.augment = resolve_augment(augment, data)
        self.seed = int(seed)
        self.drop_last = bool(drop_last)
        self.rank, self.world_size = int(rank), int(world_size)
        self.sampler = EpochSampler()
        self.batch_sampler = None  # (Lightning inspects it; batches are formed here)

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    def _indices(self) -> Tensor:
        n = len(self.x)
        if self.shuffle:
            g = torch.Generator().manual_seed(mix_seed(self.seed, self.sampler.epoch, 1))
            idx = torch.randperm(n, generator=g)
        else:
            idx = torch.arange(n)
        if self.world_size > 1:
            if self.shuffle:  # training: equal shard sizes so every process takes the same steps
                per = n // self.world_size
                idx = idx[self.rank :: self.world_size][:per]
            else:
                idx = idx[self.rank :: self.world_size]
        return idx

    def _num_samples(self) -> int:
        n = len(self.x)
        if self.world_size > 1:
            return n // self.world_size if self.shuffle else len(range(self.rank, n, self.world_size))
        return n

    def __len__(self) -> int:
        m = self._num_samples()
        return m // self.batch_size if self.drop_last else -(-m // self.batch_size)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        idx = self._indices()  # drawn on the CPU generator, wherever the data are
        if self.device is not None:
            idx = idx.to(self.device)
        if hasattr(self.augment, "manual_seed"):
            self.augment.manual_seed(mix_seed(self.seed, self.sampler.epoch, self.rank, 2))
        for i in range(len(self)):
            b = idx[i * self.batch_size : (i + 1) * self.batch_size]
            x, y = self.x[b], self.y[b]
            if self.augment is not None:
                x = self.augment(x)
            yield x, y
