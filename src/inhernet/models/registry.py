"""A small, timm-style model registry.

Architecture modules decorate their factory functions with :func:`register_model`; the model is
then reachable by name through :func:`create_model`::

    @register_model
    def resnet20(num_classes: int = 100, in_channels: int = 3, **kwargs) -> nn.Module:
        ...

    model = create_model("resnet20", num_classes=10, in_channels=1)

Every registered factory must accept the keyword arguments ``num_classes`` and ``in_channels``.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from typing import TypeVar

from torch import nn

from inhernet.errors import ConfigError
from inhernet.utils import did_you_mean

__all__ = ["create_model", "is_model", "list_models", "register_model"]

_F = TypeVar("_F", bound=Callable[..., nn.Module])

_MODEL_ENTRYPOINTS: dict[str, Callable[..., nn.Module]] = {}


def register_model(fn: _F) -> _F:
    """Register a model factory under its function name and return it unchanged.

    Raises:
        ValueError: if a different factory is already registered under the same name.
    """
    name = fn.__name__
    existing = _MODEL_ENTRYPOINTS.get(name)
    if existing is not None and existing is not fn:
        # Re-importing the defining module (e.g. importlib.reload) re-registers a new function
        # object with the same qualified origin; allow that, reject genuine clashes.
        same_origin = (getattr(existing, "__module__", None), existing.__qualname__) == (
            getattr(fn, "__module__", None),
            fn.__qualname__,
        )
        if not same_origin:
            raise ValueError(
                f"model {name!r} is already registered by "
                f"{existing.__module__}.{existing.__qualname__}"
            )
    _MODEL_ENTRYPOINTS[name] = fn
    return fn


def list_models(pattern: str | None = None) -> list[str]:
    """Return the sorted names of registered models, optionally filtered by an fnmatch pattern.

    >>> list_models("wrn_40_*")
    ['wrn_40_1', 'wrn_40_2']
    """
    names = sorted(_MODEL_ENTRYPOINTS)
    if pattern is None:
        return names
    return [n for n in names if fnmatch.fnmatchcase(n, pattern)]


def is_model(name: str) -> bool:
    """Return whether ``name`` is a registered model."""
    return name in _MODEL_ENTRYPOINTS


def create_model(
    name: str, *, num_classes: int = 100, in_channels: int = 3, **kwargs
) -> nn.Module:
    """Build the registered model ``name``.

    Args:
        name: registered model name (see :func:`list_models`).
        num_classes: size of the classifier output.
        in_channels: channels of the input images (1 for grey images; only the stem changes).
        **kwargs: forwarded to the model factory.

    Raises:
        inhernet.errors.ConfigError: (a ``ValueError``) if ``name`` is not registered; the message
            lists close matches and all available names.
    """
    try:
        factory = _MODEL_ENTRYPOINTS[name]
    except KeyError:
        available = list_models()
        raise ConfigError(
            f"Unknown model {name!r}{did_you_mean(name, available, n=3)}. Available models: {', '.join(available)}"
        ) from None
    return factory(num_classes=num_classes, in_channels=in_channels, **kwargs)
