"""Your own data: a ``.npz`` file of arrays, or a folder of images with one sub-folder per class.

Both are given where a data set name is (``load_dataset(path)``, ``--data PATH``, ``data.name`` of a
comparison config) and come back as the same :class:`~inhernet.data.DataSplits` as the built-in
data sets: seeded stratified validation split, ``subset`` / ``test_subset``, normalisation with the
training split's statistics.

**.npz** (``numpy.savez``; key names are matched case-insensitively, so ``X_train`` works too):

* ``x_train``, ``y_train``, ``x_test``, ``y_test``: the official train / test split; or
* ``x``, ``y``: all examples; a stratified test split (``test_fraction``, default 20 %) is drawn
  with a fixed seed (:data:`FILE_TEST_SEED`), the same for every run, as for ``digits``;
* optionally ``classes``: the class names (strings, index = label).

Features are images ``N x C x H x W`` or ``N x H x W`` (one channel), or flat vectors ``N x D``,
which are held as ``N x D x 1 x 1``: every feature is a channel, standardised on its own, and
``in_channels`` is ``D`` (the input size an MLP factory is given). uint8 values are pixels (0..255);
other numbers are used as they are. Labels are integers ``0 .. K-1`` (``K`` = ``len(classes)`` when
given, else the largest label + 1, and then every class needs a training example).

**Image folder**: ``root/train/<class>/*.png`` and ``root/test/<class>/*`` (the official split), or
``root/<class>/*`` (a fixed-seed stratified test split, as for ``x`` / ``y``). Class names are the
sub-folder names, sorted. Images are read with Pillow (``.png .jpg .jpeg .bmp .gif .tif .tiff
.webp``); all must have one size (they are not resized). If every image is greyscale the data have
one channel, else three (RGB; transparency is dropped).

The training augmentation suggested (``augment: default``) is a random crop with ``padding`` of
1/8 of the image side and no flip (a mirrored digit or letter is another one) for images, and none
for flat features.
"""

from __future__ import annotations

import hashlib
import os
import zipfile
from pathlib import Path
from typing import Optional, Union

import numpy as np

from .errors import DataFormatError, DatasetNotFoundError
from .splits import STREAM_TEST_SPLIT, DataSplits, build_splits, split_rng, stratified_split

__all__ = ["FILE_TEST_SEED", "IMAGE_SUFFIXES", "data_file_digest", "data_path", "load_image_folder",
           "load_npz"]

#: Seed of the fixed test split drawn from a file that has no test split (``x`` / ``y``, ``root/<class>/``).
FILE_TEST_SEED = 0
#: File endings read as images in an image folder.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")

PathLike = Union[str, "os.PathLike[str]"]


def data_path(name: PathLike, root: Optional[PathLike] = None) -> Path:
    """The path ``name`` means: relative to ``root`` when ``root`` is given and ``name`` is relative."""
    p = Path(os.fspath(name)).expanduser()
    if root is not None and not p.is_absolute():
        p = Path(os.fspath(root)).expanduser() / p
    return p


# ---------------------------------------------------------------------------------------------- npz
def _npz_arrays(path: Path) -> dict[str, np.ndarray]:
    if not path.exists():
        raise DatasetNotFoundError(f"data file {path} not found: check the path (relative paths are taken from the "
                                   "current folder, or from --data-root / data.root when given)")
    if path.is_dir():
        raise DataFormatError(f"{path} is a folder, not a .npz file")
    try:
        with np.load(path, allow_pickle=False) as npz:
            if not isinstance(npz, np.lib.npyio.NpzFile):
                raise DataFormatError(f"{path} holds one array, not a .npz archive of named arrays: save it with "
                                      "np.savez(path, x_train=..., y_train=..., x_test=..., y_test=...)")
            return {k: npz[k] for k in npz.files}
    except DataFormatError:
        raise
    except ValueError as err:  # object arrays need pickle, which is never enabled for data files
        raise DataFormatError(f"{path}: an array cannot be read without pickle ({err}); save plain numeric "
                              "arrays (labels as integers, class names as a string array)") from err
    except (OSError, zipfile.BadZipFile, EOFError) as err:
        raise DataFormatError(f"{path} is not a readable .npz file ({type(err).__name__}: {err}); write it again "
                              "with np.savez") from err


def _pick(arrays: dict[str, np.ndarray], path: Path) -> tuple[dict[str, np.ndarray], bool]:
    """The arrays by their canonical (lower-case) names; whether the file has its own test split."""
    lower: dict[str, str] = {}
    for k in arrays:
        lower.setdefault(k.lower(), k)
    got = {k: arrays[lower[k]] for k in ("x_train", "y_train", "x_test", "y_test", "x", "y", "classes") if k in lower}
    split = [k for k in ("x_train", "y_train", "x_test", "y_test") if k in got]
    expected = ("expected x_train, y_train, x_test, y_test (a train / test split), or x, y (a test split is drawn), "
                "plus optionally classes")
    if len(split) == 4:
        return got, True
    if split:
        missing = [k for k in ("x_train", "y_train", "x_test", "y_test") if k not in got]
        raise DataFormatError(f"{path} has {', '.join(split)} but not {', '.join(missing)}: {expected}")
    if "x" in got and "y" in got:
        return got, False
    raise DataFormatError(f"{path} holds the arrays {', '.join(sorted(arrays)) or '(none)'}; {expected}")


def _features(x: np.ndarray, what: str) -> np.ndarray:
    """Features as N x C x H x W (flat N x D as N x D x 1 x 1, N x H x W as N x 1 x H x W)."""
    if x.dtype.kind not in "biuf":
        raise DataFormatError(f"{what} has dtype {x.dtype}; features must be numbers (uint8 pixels or floats)")
    if x.ndim == 2:
        x = x[:, :, None, None]
    elif x.ndim == 3:
        x = x[:, None]
    elif x.ndim == 4:
        if x.shape[1] > 4 and x.shape[3] in (1, 3, 4):
            raise DataFormatError(f"{what} has shape {x.shape}, which looks channels-last (N x H x W x C); images "
                                  "must be N x C x H x W: save np.transpose(x, (0, 3, 1, 2))")
    else:
        raise DataFormatError(f"{what} has shape {x.shape}; features must be N x C x H x W, N x H x W (one channel) "
                              "or N x D (flat)")
    if x.dtype == np.bool_:
        x = x.astype(np.uint8)
    if x.dtype != np.uint8:
        x = x.astype(np.float32)
        if not np.isfinite(x).all():
            raise DataFormatError(f"{what} holds NaN or infinite values; replace them before saving")
    return x


def _labels(y: np.ndarray, n: int, what: str) -> np.ndarray:
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise DataFormatError(f"{what} has shape {y.shape}; labels must be a vector of class indices (one-hot "
                              "labels: save y.argmax(1))")
    if y.dtype.kind not in "iu":
        raise DataFormatError(f"{what} has dtype {y.dtype}; labels must be integers 0..K-1 (class names: map them "
                              "to indices, e.g. np.unique(names, return_inverse=True), and save the names as "
                              "'classes')")
    if y.shape[0] != n:
        raise DataFormatError(f"{what} has {y.shape[0]} labels for {n} examples; there must be one label per example")
    if y.size and y.min() < 0:
        raise DataFormatError(f"{what} holds the label {int(y.min())}; labels must be integers 0..K-1")
    return y.astype(np.int64)


def _classes(got: dict, y_train: np.ndarray, y_test: np.ndarray, path: Path) -> list[str]:
    top = int(max(y_train.max(initial=-1), y_test.max(initial=-1)))
    if "classes" in got:
        names = [str(c) for c in np.asarray(got["classes"]).reshape(-1)]
        if top >= len(names):
            raise DataFormatError(f"{path}: the label {top} is out of range for the {len(names)} names in 'classes'; "
                                  f"labels must be 0..{len(names) - 1}")
        return names
    if top < 0:
        raise DataFormatError(f"{path} holds no examples")
    missing = sorted(set(range(top + 1)) - set(np.unique(y_train).tolist()))
    if missing:
        hint = (f" (the labels run {int(y_train.min())}..{top}: subtract {int(y_train.min())} to start at 0)"
                if y_train.size and missing == list(range(int(y_train.min()))) else "")
        raise DataFormatError(f"{path}: labels must be 0..K-1 with every class in the training data, but class(es) "
                              f"{', '.join(map(str, missing[:10]))}{' ...' if len(missing) > 10 else ''} have no "
                              f"training example{hint}; relabel, or save the class names as 'classes'")
    return [str(c) for c in range(top + 1)]


def _default_augment(x: np.ndarray) -> dict:
    h, w = x.shape[2], x.shape[3]
    if min(h, w) < 4:  # flat features (N x D x 1 x 1), or strips: cropping would only blank them
        return {"padding": 0, "flip": False}
    return {"padding": max(1, round(min(h, w) / 8)), "flip": False}


def _fixed_test_split(x: np.ndarray, y: np.ndarray, test_fraction: float, path: Path):
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    n_test = int(round(len(y) * test_fraction))
    if n_test < 1 or n_test >= len(y):
        raise DataFormatError(f"{path}: {len(y)} examples are too few to draw a test split of {test_fraction:.0%}; "
                              "give more examples, or an explicit train / test split")
    test_idx, train_idx = stratified_split(y, n_test, split_rng(FILE_TEST_SEED, STREAM_TEST_SPLIT))
    return x[train_idx], y[train_idx], x[test_idx], y[test_idx]


def _splits(path: Path, name: str, train_x, train_y, test_x, test_y, classes, *, val_fraction, subset, test_subset,
            seed) -> DataSplits:
    if train_x.shape[1:] != test_x.shape[1:]:
        raise DataFormatError(f"{path}: train and test examples differ in shape ({train_x.shape[1:]} vs "
                              f"{test_x.shape[1:]}); they must have one shape")
    if train_x.dtype != test_x.dtype:  # e.g. uint8 train, float test: one scale for both
        train_x, test_x = train_x.astype(np.float32), test_x.astype(np.float32)
    scale = 255.0 if train_x.dtype == np.uint8 else 1.0
    return build_splits(name, train_x, train_y, test_x, test_y, classes=classes, scale=scale,
                        val_fraction=val_fraction, subset=subset, test_subset=test_subset, seed=seed,
                        default_augment=_default_augment(train_x), source=str(path.resolve()))


def load_npz(path: PathLike, *, root: Optional[PathLike] = None, val_fraction: float = 0.1,
             subset: Optional[int] = None, test_subset: Optional[int] = None, seed: int = 0,
             test_fraction: float = 0.2) -> DataSplits:
    """A ``.npz`` file of arrays as a :class:`DataSplits` (see the module docstring for its layout).

    Raises:
        DatasetNotFoundError: no such file.
        DataFormatError: the arrays are missing, of the wrong shape or type, or the labels are not 0..K-1.
    """
    p = data_path(path, root)
    got, has_test = _pick(_npz_arrays(p), p)
    if has_test:
        train_x = _features(got["x_train"], f"{p}: x_train")
        test_x = _features(got["x_test"], f"{p}: x_test")
        train_y = _labels(got["y_train"], len(train_x), f"{p}: y_train")
        test_y = _labels(got["y_test"], len(test_x), f"{p}: y_test")
    else:
        x = _features(got["x"], f"{p}: x")
        y = _labels(got["y"], len(x), f"{p}: y")
        train_x, train_y, test_x, test_y = _fixed_test_split(x, y, test_fraction, p)
    if len(train_y) == 0:
        raise DataFormatError(f"{p} holds no training examples")
    classes = _classes(got, train_y, test_y, p)
    return _splits(p, str(path), train_x, train_y, test_x, test_y, classes, val_fraction=val_fraction,
                   subset=subset, test_subset=test_subset, seed=seed)


# ------------------------------------------------------------------------------------- image folder
def _class_folders(folder: Path) -> dict[str, list[Path]]:
    """``class name -> image files`` of the sub-folders of ``folder`` (hidden entries skipped)."""
    out = {}
    for sub in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
        out[sub.name] = sorted(f for f in sub.iterdir() if f.is_file() and not f.name.startswith(".")
                               and f.suffix.lower() in IMAGE_SUFFIXES)
    return out


def _image_files(root: Path) -> tuple[dict[str, list[Path]], Optional[dict[str, list[Path]]]]:
    """Train (and test, if the folder has ``train/`` and ``test/``) class folders of ``root``."""
    if not root.exists():
        raise DatasetNotFoundError(f"image folder {root} not found: check the path (relative paths are taken from "
                                   "the current folder, or from --data-root / data.root when given)")
    if not root.is_dir():
        raise DataFormatError(f"{root} is a file, not an image folder or a .npz file: give a .npz archive "
                              "(np.savez) or a folder with one sub-folder of images per class")
    layout = "root/train/<class>/*.png and root/test/<class>/*.png, or root/<class>/*.png"
    train_dir, test_dir = root / "train", root / "test"
    if train_dir.is_dir() or test_dir.is_dir():
        if not (train_dir.is_dir() and test_dir.is_dir()):
            have, lack = ("train", "test") if train_dir.is_dir() else ("test", "train")
            raise DataFormatError(f"{root} has a {have}/ folder but no {lack}/ folder; the layout is {layout}")
        train, test = _class_folders(train_dir), _class_folders(test_dir)
        where = train_dir
    else:
        train, test, where = _class_folders(root), None, root
    if not train:
        raise DataFormatError(f"{where} has no class sub-folders; the layout is {layout}")
    empty = [c for c, files in train.items() if not files]
    if empty:
        raise DataFormatError(f"class folder(s) {', '.join(str(where / c) for c in empty[:5])} hold no images "
                              f"({', '.join(IMAGE_SUFFIXES)}); add images or remove the folder")
    if test is not None:
        extra = sorted(set(test) - set(train))
        if extra:
            raise DataFormatError(f"{test_dir} has class folder(s) {', '.join(extra)} that {train_dir} lacks; the "
                                  "test classes must be among the training classes")
    return train, test


_GREY_MODES = ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F")


def _read_images(files: list[Path]) -> np.ndarray:
    """The images of ``files`` as uint8 N x C x H x W (C = 1 if all are greyscale, else 3)."""
    try:
        from PIL import Image, UnidentifiedImageError
    except ImportError as err:
        from inhernet.errors import DependencyError

        raise DependencyError("an image folder is read with Pillow, which is not installed: pip install pillow "
                              "(or save the images as a .npz file)") from err
    images, modes, first = [], [], None
    for f in files:
        try:
            with Image.open(f) as im:
                im.load()
                img = im.copy()
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
            raise DataFormatError(f"{f} cannot be read as an image ({type(err).__name__}: {err}); replace or remove "
                                  "it") from err
        if first is None:
            first = (f, img.size)
        elif img.size != first[1]:
            (w0, h0), (w1, h1) = first[1], img.size
            raise DataFormatError(f"the images differ in size: {first[0]} is {w0}x{h0} but {f} is {w1}x{h1}; all "
                                  "images must have one size: resize them first (e.g. PIL's Image.resize)")
        images.append(img)
        modes.append(img.mode)
    grey = all(m in _GREY_MODES for m in modes)
    arrays = []
    for img in images:
        if grey:
            a = np.asarray(img.convert("L") if img.mode != "L" else img, dtype=np.uint8)[None]
        else:
            a = np.asarray(img.convert("RGB"), dtype=np.uint8).transpose(2, 0, 1)
        arrays.append(a)
    return np.stack(arrays)


def load_image_folder(path: PathLike, *, root: Optional[PathLike] = None, val_fraction: float = 0.1,
                      subset: Optional[int] = None, test_subset: Optional[int] = None, seed: int = 0,
                      test_fraction: float = 0.2) -> DataSplits:
    """A folder of images, one sub-folder per class, as a :class:`DataSplits` (see the module docstring).

    Raises:
        DatasetNotFoundError: no such folder.
        DataFormatError: the layout is wrong, a class folder is empty, an image is unreadable, or two
            images differ in size (both are named).
    """
    p = data_path(path, root)
    train, test = _image_files(p)
    classes = list(train)
    index = {c: i for i, c in enumerate(classes)}

    def flat(groups: dict[str, list[Path]]) -> tuple[list[Path], np.ndarray]:
        files = [f for c in groups for f in groups[c]]
        labels = np.array([index[c] for c in groups for _ in groups[c]], dtype=np.int64)
        return files, labels

    train_files, train_y = flat(train)
    if test is None:
        x = _read_images(train_files)
        train_x, train_y, test_x, test_y = _fixed_test_split(x, train_y, test_fraction, p)
    else:
        test_files, test_y = flat(test)
        if not test_files:
            raise DataFormatError(f"{p / 'test'} holds no images; add some, or drop train/ and test/ to have a test "
                                  "split drawn")
        both = _read_images(train_files + test_files)  # one pass: one size and one channel count for both
        train_x, test_x = both[:len(train_files)], both[len(train_files):]
    return _splits(p, str(path), train_x, train_y, test_x, test_y, classes, val_fraction=val_fraction,
                   subset=subset, test_subset=test_subset, seed=seed)


# --------------------------------------------------------------------------------------------- identity
_DIGESTS: dict[tuple, str] = {}


def data_file_digest(name: PathLike, root: Optional[PathLike] = None) -> str:
    """Short SHA-256 of your data (the .npz file, or every image's relative path and bytes), so a
    cached teacher or a finished run is not reused after the data changed. Remembered per file
    sizes and times within a process; a missing path gives ``"missing"`` (loading it then says so)."""
    p = data_path(name, root)
    if not p.exists():
        return "missing"
    files = [p] if p.is_file() else sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in
                                           IMAGE_SUFFIXES and not any(s.startswith(".") for s in f.relative_to(p).parts))
    sig = (str(p.resolve()), tuple((str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in files))
    if sig not in _DIGESTS:
        h = hashlib.sha256()
        for f in files:
            h.update((f.relative_to(p).as_posix() if f != p else "").encode() + b"\0")
            with open(f, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    h.update(block)
        _DIGESTS[sig] = h.hexdigest()[:12]
    return _DIGESTS[sig]
