"""CIFAR-10 / CIFAR-100 from a local folder in the official "python version" (pickle) format.

CIFAR is not packaged for this machine, so users download it once and pass ``root=``: either the
extracted folder itself (``cifar-10-batches-py`` / ``cifar-100-python``) or the folder holding it.
The files are pickles; we read them with an unpickler that only admits the few numpy names a
CIFAR file needs, so pointing ``root`` at a hostile file cannot run code.

:func:`write_fake_cifar` writes small files in the same format, for tests.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from .errors import DataFormatError, DatasetNotFoundError
from .splits import DataSplits, build_splits

__all__ = ["CIFAR10_CLASSES", "load_cifar10", "load_cifar100", "read_cifar_pickle", "write_fake_cifar"]

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer",
                   "dog", "frog", "horse", "ship", "truck"]

_LAYOUT = {  # num_classes -> (display name, standard subfolder, train files, test file, meta file)
    10: ("CIFAR-10", "cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], "test_batch", "batches.meta"),
    100: ("CIFAR-100", "cifar-100-python", ["train"], "test", "meta"),
}
_URL = {10: "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
        100: "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"}


def _hint(num_classes: int) -> str:
    name, sub = _LAYOUT[num_classes][:2]
    return (f"download the {name} python version ({_URL[num_classes]}), extract it, and pass "
            f"root=<the extracted {sub} folder or its parent>")


# (module, name) pairs a CIFAR pickle may reference: numpy array reconstruction, and the codec
# that protocol-2 pickles use for bytes.
_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
}
_NUMPY2 = hasattr(np, "_core")


class _CifarUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}: not something a CIFAR file holds")
        if _NUMPY2 and module.startswith("numpy.core."):  # files pickled by numpy 1.x
            module = "numpy._core." + module[len("numpy.core."):]
        return super().find_class(module, name)


def read_cifar_pickle(path: str | os.PathLike) -> dict[str, Any]:
    """Load one CIFAR pickle with string keys (the originals were written by Python 2; ``latin1``
    is the decoding numpy documents for such files, and bytes keys are decoded too)."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            obj = _CifarUnpickler(f, encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as exc:
        raise DataFormatError(f"{path}: not a readable CIFAR pickle ({exc}); re-download it") from exc
    if not isinstance(obj, dict):
        raise DataFormatError(f"{path}: expected a dict, found {type(obj).__name__}")
    return {(k.decode("latin1") if isinstance(k, bytes) else k): v for k, v in obj.items()}


def _names(values) -> list[str]:
    return [v.decode("latin1") if isinstance(v, bytes) else str(v) for v in values]


def _batch(path: Path, label_key: str) -> tuple[np.ndarray, np.ndarray]:
    d = read_cifar_pickle(path)
    if "data" not in d or label_key not in d:
        raise DataFormatError(f"{path}: missing 'data' or '{label_key}' (keys: {sorted(d)})")
    data = np.asarray(d["data"], dtype=np.uint8)
    labels = np.asarray(d[label_key], dtype=np.int64)
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or data.shape[0] != labels.shape[0]:
        raise DataFormatError(f"{path}: expected N x 3072 images and N labels, got "
                              f"{data.shape} and {labels.shape}")
    return data.reshape(-1, 3, 32, 32), labels


def _resolve(root: str | os.PathLike | None, num_classes: int) -> Path:
    name, sub, train_files, test_file, _ = _LAYOUT[num_classes]
    if root is None:
        raise DatasetNotFoundError(f"{name} is not installed on this machine: {_hint(num_classes)}")
    root = Path(root)
    for folder in (root, root / sub):
        if all((folder / f).is_file() for f in [*train_files, test_file]):
            return folder
    raise DatasetNotFoundError(
        f"{name} not found in {root} (expected {', '.join(train_files)} and {test_file} there or in "
        f"{root / sub}): {_hint(num_classes)}")


def _load(num_classes: int, root, **split_args) -> DataSplits:
    name, _, train_files, test_file, meta_file = _LAYOUT[num_classes]
    folder = _resolve(root, num_classes)
    label_key = "labels" if num_classes == 10 else "fine_labels"
    parts = [_batch(folder / f, label_key) for f in train_files]
    tx = np.concatenate([p[0] for p in parts])
    ty = np.concatenate([p[1] for p in parts])
    sx, sy = _batch(folder / test_file, label_key)
    classes = CIFAR10_CLASSES if num_classes == 10 else [str(i) for i in range(100)]
    if (folder / meta_file).is_file():
        meta = read_cifar_pickle(folder / meta_file)
        key = "label_names" if num_classes == 10 else "fine_label_names"
        if key in meta and len(meta[key]) == num_classes:
            classes = _names(meta[key])
    return build_splits(f"cifar{num_classes}", tx, ty, sx, sy, classes=classes, scale=255.0,
                        default_augment={"padding": 4, "flip": True}, source=str(folder), **split_args)


def load_cifar10(*, root: str | os.PathLike | None = None, val_fraction: float = 0.1,
                 subset: int | None = None, test_subset: int | None = None, seed: int = 0) -> DataSplits:
    """CIFAR-10: 50,000 + 10,000 colour 32 x 32 images, 10 classes, from ``root``."""
    return _load(10, root, val_fraction=val_fraction, subset=subset, test_subset=test_subset, seed=seed)


def load_cifar100(*, root: str | os.PathLike | None = None, val_fraction: float = 0.1,
                  subset: int | None = None, test_subset: int | None = None, seed: int = 0) -> DataSplits:
    """CIFAR-100: 50,000 + 10,000 colour 32 x 32 images, 100 fine classes, from ``root``."""
    return _load(100, root, val_fraction=val_fraction, subset=subset, test_subset=test_subset, seed=seed)


def write_fake_cifar(root: str | os.PathLike, num_classes: int = 10, n_train: int = 100,
                     n_test: int = 50, seed: int = 0) -> Path:
    """Write a tiny CIFAR-format folder (same file names, keys and dtypes as the real one) into
    ``root`` and return ``root``. For tests: real users point ``root`` at the real download.

    Every class appears (labels cycle through the classes, then are shuffled), and each class has
    its own mean colour plus noise, so a model can learn something from the fake images. Keys and
    names are written as bytes, which is how the Python-2 originals read with ``encoding="bytes"``.
    """
    if num_classes not in _LAYOUT:
        raise ValueError(f"num_classes must be 10 or 100, got {num_classes}")
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    colours = rng.integers(40, 216, size=(num_classes, 3, 1, 1))
    label_key = b"labels" if num_classes == 10 else b"fine_labels"

    def batch(n: int, tag: str) -> dict:
        y = rng.permutation(np.arange(n) % num_classes)
        x = np.clip(colours[y] + rng.normal(0, 30, size=(n, 3, 32, 32)), 0, 255).astype(np.uint8)
        d = {b"batch_label": tag.encode(), b"data": x.reshape(n, -1), label_key: y.tolist(),
             b"filenames": [f"fake_{tag}_{i}.png".encode() for i in range(n)]}
        if num_classes == 100:
            d[b"coarse_labels"] = (y // 5).tolist()
        return d

    def dump(name: str, obj: dict) -> None:
        with open(root / name, "wb") as f:
            pickle.dump(obj, f, protocol=2)

    _, _, train_files, test_file, meta_file = _LAYOUT[num_classes]
    for i, n in enumerate(np.array_split(np.arange(n_train), len(train_files))):
        dump(train_files[i], batch(len(n), train_files[i]))
    dump(test_file, batch(n_test, test_file))
    if num_classes == 10:
        meta = {b"label_names": [c.encode() for c in CIFAR10_CLASSES],
                b"num_cases_per_batch": -(-n_train // 5), b"num_vis": 3072}
    else:
        meta = {b"fine_label_names": [f"fine_{i:02d}".encode() for i in range(100)],
                b"coarse_label_names": [f"coarse_{i:02d}".encode() for i in range(20)]}
    dump(meta_file, meta)
    return root
