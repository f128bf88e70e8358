"""Seeded stratified splits, train-set normalisation, and the :class:`DataSplits` container.

Every loader ends in :func:`build_splits`: it takes the raw official train/test arrays, carves a
fixed validation set out of the training set, optionally keeps a stratified subset of what is
left (and of the test set), measures the per-channel mean/std on the examples actually trained
on, and normalises all three splits with it. Doing this in one place keeps the data sets alike:
the same seed always gives the same split, and the validation set does not move when ``subset``
changes, so runs of different sizes are scored on the same examples.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .augment import RandomCropFlip
from .tensordata import TensorData

__all__ = ["STREAM_TEST_SPLIT", "DataSplits", "build_splits", "channel_stats", "split_rng", "stratified_split"]

# Independent random streams per purpose, so that e.g. asking for a subset never moves the
# validation split.
_STREAM_VAL, _STREAM_SUBSET, _STREAM_TEST_SUBSET, STREAM_TEST_SPLIT = 1, 2, 3, 4


@dataclass(repr=False)
class DataSplits:
    """One data set, split and normalised, ready to train on.

    Attributes:
        train, val, test: the three splits; ``x`` float32 N x C x H x W normalised with the
            train split's per-channel ``mean``/``std``, ``y`` int64 labels in ``[0, num_classes)``.
        num_classes: number of classes.
        in_channels: C (1 for the MNISTs and digits, 3 for CIFAR).
        image_size: (H, W).
        name: the registry name (``"fashion_mnist"``, ...).
        classes: class names, index = label.
        mean, std: per-channel statistics (pixel values scaled to [0, 1]) used to normalise.
        default_augment: keyword arguments for :class:`RandomCropFlip` that suit the data set
            (no horizontal flip for digits: a mirrored 2 is not a 2).
        source: where the files were read from.
    """

    train: TensorData
    val: TensorData
    test: TensorData
    num_classes: int
    in_channels: int
    image_size: tuple[int, int]
    name: str
    classes: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    default_augment: dict[str, Any] = field(default_factory=lambda: {"padding": 4, "flip": True})
    source: str = ""

    def make_augment(self, seed: int = 0) -> RandomCropFlip:
        """The data set's suggested training augmentation, seeded."""
        return RandomCropFlip(**self.default_augment, seed=seed)

    def __repr__(self) -> str:
        return (
            f"DataSplits({self.name!r}: train={len(self.train)}, val={len(self.val)}, "
            f"test={len(self.test)}, classes={self.num_classes}, "
            f"shape={self.in_channels}x{self.image_size[0]}x{self.image_size[1]})"
        )


def split_rng(seed: int, stream: int) -> np.random.Generator:
    """The random generator of one purpose (``STREAM_*``) of a seeded split: independent streams,
    so asking for a subset never moves the validation split."""
    return np.random.default_rng([stream, seed])


def stratified_split(labels: np.ndarray, n_take: int,
                     rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Split ``range(len(labels))`` into ``n_take`` stratified indices and the rest.

    Each class contributes in proportion to its size; the total is exactly ``n_take`` (rounding by
    largest remainder, ties broken at random). Both index arrays come back sorted, so the data keep
    their original order.
    """
    labels = np.asarray(labels)
    n = labels.shape[0]
    if not 0 <= n_take <= n:
        raise ValueError(f"cannot take {n_take} of {n} examples")
    classes, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    quota = counts * (n_take / n) if n else counts.astype(float)
    take = np.floor(quota).astype(np.int64)
    short = n_take - int(take.sum())
    if short:
        order = rng.permutation(len(classes))  # random tie-break among equal remainders
        frac = (quota - take)[order]
        take[order[np.argsort(-frac, kind="stable")[:short]]] += 1
    picked = []
    for c in range(len(classes)):
        members = np.flatnonzero(inverse == c)
        picked.append(rng.choice(members, size=int(take[c]), replace=False))
    chosen = np.sort(np.concatenate(picked)) if picked else np.zeros(0, np.int64)
    mask = np.ones(n, dtype=bool)
    mask[chosen] = False
    return chosen.astype(np.int64), np.flatnonzero(mask).astype(np.int64)


def channel_stats(x: np.ndarray, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and std of ``x / scale`` (``x`` is N x C x H x W).

    uint8 images go through a 256-bin histogram (``torch.bincount``), which is exact and fast and
    needs no float copy of the data set; other types are summed in float64.
    """
    c = x.shape[1]
    mean, std = np.zeros(c), np.ones(c)
    for i in range(c):
        v = x[:, i]
        if v.size == 0:
            continue
        if x.dtype == np.uint8:
            flat = torch.from_numpy(np.ascontiguousarray(v).reshape(-1))
            hist = torch.bincount(flat, minlength=256).double().numpy()
            vals = np.arange(256, dtype=np.float64) / scale
            m = float(hist @ vals) / hist.sum()
            var = float(hist @ (vals - m) ** 2) / hist.sum()
        else:
            f = v.astype(np.float64) / scale
            m, var = float(f.mean()), float(f.var())
        mean[i], std[i] = m, (np.sqrt(var) if var > 0 else 1.0)
    return mean, std


def _normalised(x: np.ndarray, idx: np.ndarray | None, scale: float, mean: np.ndarray,
                std: np.ndarray) -> torch.Tensor:
    """``(x[idx] / scale - mean) / std`` as a float32 tensor, computed in place to save memory."""
    part = (x if idx is None else x[idx]).astype(np.float32)  # always a fresh, writable copy
    part *= (1.0 / (scale * std)).astype(np.float32).reshape(1, -1, 1, 1)
    part -= (mean / std).astype(np.float32).reshape(1, -1, 1, 1)
    return torch.from_numpy(part)


def _check_count(what: str, n: int | None, available: int) -> None:
    if n is None:
        return
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)):
        raise TypeError(f"{what} must be an int (a number of examples), got {n!r}")
    if not 1 <= n <= available:
        raise ValueError(f"{what}={n} is out of range: between 1 and {available} examples are available")


def build_splits(
    name: str,
    train_x: np.ndarray,
    train_y: np.ndarray,
    test_x: np.ndarray,
    test_y: np.ndarray,
    *,
    classes: list[str],
    scale: float,
    val_fraction: float = 0.1,
    subset: int | None = None,
    test_subset: int | None = None,
    seed: int = 0,
    default_augment: dict[str, Any] | None = None,
    source: str = "",
) -> DataSplits:
    """Split, subset and normalise raw arrays into a :class:`DataSplits`.

    Args:
        name: registry name recorded in the result.
        train_x, test_x: raw images N x C x H x W (uint8, or float for digits).
        train_y, test_y: integer labels.
        classes: class names; ``len(classes)`` is the number of classes.
        scale: the raw value that maps to 1.0 (255 for 8-bit images, 16 for sklearn digits).
        val_fraction: share of the official training set held out for validation, in [0, 1);
            stratified, drawn with ``seed``, independent of ``subset``.
        subset: keep only this many (stratified) training examples of those left after the
            validation split.
        test_subset: keep only this many (stratified) test examples.
        seed: seeds the validation split and both subsets.
        default_augment: suggested :class:`RandomCropFlip` keyword arguments.
        source: where the data came from.
    """
    if not 0.0 <= float(val_fraction) < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    num_classes = len(classes)
    for split, y in (("train", train_y), ("test", test_y)):
        if y.size and (y.min() < 0 or y.max() >= num_classes):
            raise ValueError(f"{name}: {split} labels outside [0, {num_classes}): "
                             f"min {y.min()}, max {y.max()}")
    train_y = train_y.astype(np.int64)
    test_y = test_y.astype(np.int64)

    n_val = int(round(len(train_y) * float(val_fraction)))
    val_idx, train_idx = stratified_split(train_y, n_val, split_rng(seed, _STREAM_VAL))
    _check_count("subset", subset, len(train_idx))
    if subset is not None:
        keep, _ = stratified_split(train_y[train_idx], int(subset), split_rng(seed, _STREAM_SUBSET))
        train_idx = train_idx[keep]
    test_idx = None
    _check_count("test_subset", test_subset, len(test_y))
    if test_subset is not None:
        test_idx, _ = stratified_split(test_y, int(test_subset), split_rng(seed, _STREAM_TEST_SUBSET))

    train_part = train_x[train_idx]
    mean, std = channel_stats(train_part, scale)

    def tensors(x, idx, y):
        return TensorData(_normalised(x, idx, scale, mean, std),
                          torch.from_numpy(y if idx is None else y[idx]))

    return DataSplits(
        train=tensors(train_part, None, train_y[train_idx]),
        val=tensors(train_x, val_idx, train_y),
        test=tensors(test_x, test_idx, test_y),
        num_classes=num_classes,
        in_channels=int(train_x.shape[1]),
        image_size=(int(train_x.shape[2]), int(train_x.shape[3])),
        name=name,
        classes=list(classes),
        mean=tuple(float(m) for m in mean),
        std=tuple(float(s) for s in std),
        default_augment=dict(default_augment or {"padding": 4, "flip": True}),
        source=str(source),
    )
