"""CIFAR-style model zoo of the knowledge-distillation literature (RepDistiller definitions).

    >>> from inhernet.models import create_model, list_models
    >>> model = create_model("resnet56", num_classes=100)
    >>> list_models("wrn_*")
    ['wrn_16_1', 'wrn_16_2', 'wrn_40_1', 'wrn_40_2']

Models: ``resnet{8,14,20,32,44,56,110}``, ``resnet8x4``, ``resnet32x4``, ``wrn_{16,40}_{1,2}`` and
``vgg{8,11,13,16,19}`` (with BatchNorm). Every factory takes ``num_classes`` (default 100) and
``in_channels`` (default 3), accepts any input of at least 28x28 pixels, and returns logits.
Your own model is given as an import path ``package.module:factory`` wherever a name is accepted.
"""

from . import resnet, vgg, wrn  # noqa: F401  (importing registers the models)
from .registry import (
    arch_slug,
    create_model,
    is_import_path,
    is_model,
    list_models,
    register_model,
    resolve_architecture,
)
from .resnet import ResNet
from .vgg import VGG
from .wrn import WideResNet

__all__ = [
    "ResNet",
    "VGG",
    "WideResNet",
    "arch_slug",
    "create_model",
    "is_import_path",
    "is_model",
    "list_models",
    "register_model",
    "resolve_architecture",
]
