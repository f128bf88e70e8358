"""A small, timm-style model registry.

Architecture modules decorate their factory functions with :func:`register_model`; the model is
then reachable by name through :func:`create_model`::

    @register_model
    def resnet20(num_classes: int = 100, in_channels: int = 3, **kwargs) -> nn.Module:
        ...

    model = create_model("resnet20", num_classes=10, in_channels=1)

Every registered factory must accept the keyword arguments ``num_classes`` and ``in_channels``.

**Your own model**: wherever a model name is accepted (:func:`create_model`, the comparison config's
``teacher.arch`` / ``student.arch``, the command line's ``--arch`` / ``--budget``), an import path
``package.module:factory`` (or ``package.module:Class``) works too. The module is imported, the
attribute is called with ``num_classes=`` / ``in_channels=`` where its signature takes them (with
neither otherwise), and the result must be an ``nn.Module``. Nothing is registered (no global
state changes); a saved model records the import path as its ``arch``, so
:func:`inhernet.train.load_model` rebuilds it the same way::

    model = create_model("mypkg.models:make_mlp", num_classes=10, in_channels=64)
"""

from __future__ import annotations

import fnmatch
import importlib
import inspect
import re
import sys
from collections.abc import Callable
from typing import TypeVar

from torch import nn

from inhernet.errors import ConfigError
from inhernet.utils import did_you_mean

__all__ = ["arch_slug", "create_model", "is_import_path", "is_model", "list_models", "register_model",
           "resolve_architecture"]

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
    """Return whether ``name`` is a registered model (an import path is not: see :func:`is_import_path`)."""
    return name in _MODEL_ENTRYPOINTS


def is_import_path(name: object) -> bool:
    """Whether ``name`` is written as an import path ``package.module:factory`` (not checked further)."""
    return isinstance(name, str) and ":" in name


_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")


def arch_slug(name: str) -> str:
    """``name`` as a file-name part: zoo names unchanged, an import path's ``:`` and other characters
    that are awkward in a folder name replaced by ``-`` (``mypkg.models:make_mlp`` ->
    ``mypkg.models-make_mlp``)."""
    return re.sub(r"[^A-Za-z0-9._-]", "-", name)


def _unknown_model(name: str) -> ConfigError:
    available = list_models()
    return ConfigError(
        f"Unknown model {name!r}{did_you_mean(name, available, n=3)}. Available models: {', '.join(available)}; "
        "or give your own model as an import path 'package.module:factory'")


def _import_factory(name: str) -> Callable[..., nn.Module]:
    """The callable an import path ``module:attr`` names, or a ConfigError saying what is wrong."""
    module_name, _, attr = name.partition(":")
    module_name, attr = module_name.strip(), attr.strip()
    if not _IDENT.match(module_name) or not _IDENT.match(attr):
        raise ConfigError(f"model {name!r} is not a valid import path: write it as 'package.module:factory' "
                          "(a dotted module name, a colon, then the name of a function or class in it)")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        missing = err.name or ""
        if missing and (module_name == missing or module_name.startswith(missing + ".")):
            raise ConfigError(
                f"model {name!r}: module {module_name!r} cannot be imported (no module named {missing!r}). "
                f"Python looks for it in sys.path ({', '.join(p or '.' for p in sys.path[:4])}"
                f"{', ...' if len(sys.path) > 4 else ''}): install your package (pip install -e .), or run "
                "from the folder that holds it, or add that folder to PYTHONPATH") from err
        raise ConfigError(f"model {name!r}: importing module {module_name!r} failed: {err}. Install what it "
                          "imports, or fix the module") from err
    except Exception as err:  # noqa: BLE001 - a module that raises on import is the user's code failing
        raise ConfigError(f"model {name!r}: importing module {module_name!r} failed: "
                          f"{type(err).__name__}: {err}") from err
    obj = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            public = sorted(n for n in dir(module) if not n.startswith("_") and callable(getattr(module, n, None)))
            # those the module defines itself first (not what it imported), at most 20 listed
            own = [n for n in public if getattr(getattr(module, n), "__module__", None) == module.__name__]
            listed = own or public
            more = f" (and {len(listed) - 20} more)" if len(listed) > 20 else ""
            raise ConfigError(
                f"model {name!r}: module {module_name!r} has no attribute {attr!r}{did_you_mean(attr, public, n=3)}. "
                f"Its public callables: {', '.join(listed[:20]) or 'none'}{more}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ConfigError(f"model {name!r}: {module_name}.{attr} is a {type(obj).__name__}, not callable; name a "
                          "function or class that returns an nn.Module")
    return obj


def _accepted(factory: Callable[..., object], kwargs: dict) -> dict:
    """The keyword arguments of ``kwargs`` that ``factory``'s signature takes (all, with ``**kwargs``)."""
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):  # a builtin without a signature: pass nothing it might refuse
        return {}
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return dict(kwargs)
    ok = {n for n, p in params.items()
          if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)}
    return {k: v for k, v in kwargs.items() if k in ok}


def resolve_architecture(name: str) -> Callable[..., nn.Module]:
    """The factory behind ``name``: a registered model name, or an import path
    ``package.module:factory`` (see the module docstring), as a callable
    ``f(num_classes=..., in_channels=..., **kwargs) -> nn.Module``. Resolving imports the module (so
    a bad path fails here, before any training) and registers nothing.

    Raises:
        inhernet.errors.ConfigError: an unknown name (with close matches and the available ones), or
            an import path whose module cannot be imported, which lacks the attribute (close matches
            among the module's public callables), or names something not callable.
    """
    if not isinstance(name, str) or not name.strip():
        raise ConfigError(f"a model must be given as a name or an import path 'package.module:factory', got {name!r}")
    factory = _MODEL_ENTRYPOINTS.get(name)
    if factory is not None:
        return factory
    if not is_import_path(name):
        raise _unknown_model(name)
    target = _import_factory(name)

    def build(**kwargs) -> nn.Module:
        try:
            model = target(**_accepted(target, kwargs))
        except Exception as err:  # noqa: BLE001 - the user's factory failed: say which and why
            raise ConfigError(f"model {name!r}: calling {getattr(target, '__qualname__', name)}"
                              f"({', '.join(f'{k}={v!r}' for k, v in _accepted(target, kwargs).items())}) "
                              f"raised {type(err).__name__}: {err}") from err
        if not isinstance(model, nn.Module):
            raise ConfigError(f"model {name!r} returned a {type(model).__name__}, not a torch nn.Module; the "
                              "factory must build and return the model")
        return model

    build.__name__ = build.__qualname__ = name
    return build


def create_model(
    name: str, *, num_classes: int = 100, in_channels: int = 3, **kwargs
) -> nn.Module:
    """Build the registered model ``name``.

    Args:
        name: registered model name (see :func:`list_models`), or an import path
            ``package.module:factory`` of your own (see :func:`resolve_architecture`).
        num_classes: size of the classifier output.
        in_channels: channels of the input images (1 for grey images; only the stem changes).
        **kwargs: forwarded to the model factory.

    Raises:
        inhernet.errors.ConfigError: (a ``ValueError``) if ``name`` is not registered; the message
            lists close matches and all available names. For an import path, any of the errors of
            :func:`resolve_architecture`, or a factory that raises or returns no ``nn.Module``.
    """
    factory = resolve_architecture(name)
    return factory(num_classes=num_classes, in_channels=in_channels, **kwargs)
