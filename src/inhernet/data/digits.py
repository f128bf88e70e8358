"""scikit-learn's 8 x 8 digits (1,797 images): tiny, always available with scikit-learn.

It has no official test split, so we make one: stratified, ``test_fraction`` of the images
(default 20 %, i.e. 360), drawn with a fixed seed (:data:`DIGITS_TEST_SEED`) that does not follow
the ``seed`` argument - the test set is the same for every run, as with the other data sets;
``seed`` only moves the validation split and subsets. Pixel values are 0..16.
"""

from __future__ import annotations

import os

import numpy as np

from .errors import DatasetNotFoundError
from .splits import STREAM_TEST_SPLIT, DataSplits, build_splits, split_rng, stratified_split

__all__ = ["DIGITS_TEST_SEED", "load_digits"]

#: Seed of the fixed digits test split.
DIGITS_TEST_SEED = 0


def load_digits(*, root: str | os.PathLike | None = None, val_fraction: float = 0.1,
                subset: int | None = None, test_subset: int | None = None, seed: int = 0,
                test_fraction: float = 0.2) -> DataSplits:
    """The sklearn digits as a :class:`DataSplits` (1 x 8 x 8 images, 10 classes).

    ``root`` is accepted for a uniform signature and ignored (the data ship inside scikit-learn).
    """
    del root
    try:
        from sklearn.datasets import load_digits as _sk_load_digits
    except ImportError as exc:
        raise DatasetNotFoundError(
            "digits needs scikit-learn, which is not installed: install it with `pip install scikit-learn`"
        ) from exc
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    bunch = _sk_load_digits()
    images = np.asarray(bunch.images, dtype=np.float32)[:, None]  # N x 1 x 8 x 8, values 0..16
    labels = np.asarray(bunch.target, dtype=np.int64)
    rng = split_rng(DIGITS_TEST_SEED, STREAM_TEST_SPLIT)
    test_idx, train_idx = stratified_split(labels, int(round(len(labels) * test_fraction)), rng)
    return build_splits("digits", images[train_idx], labels[train_idx], images[test_idx], labels[test_idx],
                        classes=[str(d) for d in range(10)], scale=16.0,
                        val_fraction=val_fraction, subset=subset, test_subset=test_subset, seed=seed,
                        default_augment={"padding": 1, "flip": False}, source="sklearn.datasets.load_digits")
