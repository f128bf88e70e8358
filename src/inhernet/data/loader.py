"""``DataLoader`` construction for :class:`TensorData`: one tensor index per batch.

We build a plain ``torch.utils.data.DataLoader`` (with ``batch_size`` and a sampler) rather than
a custom batch iterator, because PyTorch Lightning re-creates plain loaders with a
``DistributedSampler`` when it trains on several devices, and that keeps working here: the loader
still asks the data set for whole batches through ``__getitems__``, and :class:`BatchCollate`
passes them through (augmenting them when asked).

Shuffling uses :class:`SeededRandomSampler` instead of ``DataLoader(generator=...)``: it keeps only
integers, because a ``torch.Generator`` inside a loader breaks Lightning's ``ddp_spawn`` (torch
2.13 fails to share the generator's state tensor with the spawned processes: "unable to resize
file").
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch.utils.data import DataLoader, RandomSampler

from .tensordata import TensorData

__all__ = ["BatchCollate", "SeededRandomSampler", "make_loader"]


class SeededRandomSampler(RandomSampler):
    """A random permutation per epoch that depends only on ``(seed, epoch)``.

    The epoch counter advances each time an epoch starts; ``set_epoch`` (which Lightning calls
    when present) sets it, so epoch k has the same order whether or not earlier epochs ran.
    A ``RandomSampler`` subclass so that Lightning knows the loader shuffles and gives the
    ``DistributedSampler`` it substitutes ``shuffle=True``.
    """

    def __init__(self, data_source, seed: int = 0):
        super().__init__(data_source)
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __iter__(self):
        mixed = np.random.SeedSequence([self.seed, self.epoch]).generate_state(1, np.uint64)[0]
        g = torch.Generator().manual_seed(int(mixed) & (2**63 - 1))
        self.epoch += 1
        return iter(torch.randperm(len(self.data_source), generator=g).tolist())


class BatchCollate:
    """``collate_fn`` for data sets whose ``__getitems__`` returns a stacked ``(x, y)`` batch.

    Passes the batch through unchanged, applying ``augment`` to ``x`` when one is given. A
    class rather than a closure so that worker processes can pickle it. Also accepts a list of
    ``(x, y)`` pairs (what ``DataLoader`` produces for data sets without ``__getitems__``) and
    stacks it.
    """

    def __init__(self, augment: Callable[[torch.Tensor], torch.Tensor] | None = None):
        self.augment = augment

    def __call__(self, batch):
        if isinstance(batch, list):  # per-example (x, y) pairs: stack them
            xs, ys = zip(*batch)
            x, y = torch.stack(xs), torch.as_tensor([int(v) for v in ys])
        else:
            x, y = batch
        if self.augment is not None:
            x = self.augment(x)
        return x, y

    def __repr__(self) -> str:
        return f"BatchCollate(augment={self.augment!r})"


def make_loader(
    data: TensorData,
    batch_size: int,
    *,
    shuffle: bool,
    augment: Callable[[torch.Tensor], torch.Tensor] | None = None,
    seed: int = 0,
    drop_last: bool = False,
    num_workers: int = 0,
    pin_memory: bool = False,
) -> DataLoader:
    """A ``DataLoader`` over ``data`` that fetches each batch with one tensor index.

    Args:
        data: the split to iterate.
        batch_size: examples per batch (the last one is smaller unless ``drop_last``).
        shuffle: a fresh random order every epoch (:class:`SeededRandomSampler`), a function of
            ``seed`` and the epoch number only: the same on every run.
        augment: applied to each batch's images (e.g. :class:`RandomCropFlip`); training only.
        seed: seeds the shuffling. (Worker seeds, used when ``num_workers > 0``, come from torch's
            global random state, as usual; ``lightning.seed_everything`` fixes them.)
        drop_last: drop the last, incomplete batch.
        num_workers: worker processes; the default 0 is right for in-memory data, where a batch
            costs one index operation.
        pin_memory: page-lock batches for faster copies to a GPU.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    return DataLoader(
        data,
        batch_size=batch_size,
        sampler=SeededRandomSampler(data, seed) if shuffle else None,
        collate_fn=BatchCollate(augment),
        drop_last=drop_last,
        num_workers=num_workers,
        pin_memory=pin_memory,
    )
