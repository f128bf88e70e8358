"""The one error hierarchy: every exception class InherNet defines derives from
``inhernet.errors.InherNetError`` and keeps the built-in base a caller would catch it by, and the
older names (``ModelLoadError``, ``inhernet.config.ConfigError``, ...) are the same classes."""

import builtins
import importlib
import inspect
import pkgutil

import pytest

import inhernet
from inhernet import errors

#: exceptions that are deliberately no ``Exception`` (so no InherNetError): a signal that stopped
#: training must not be swallowed by ``except Exception`` (see inhernet.train.signals)
NOT_EXCEPTIONS = {"inhernet.train.signals.TrainingInterrupted"}


def _private(cls) -> bool:
    """A private class (``_Stop`` in inhernet.calibrate): control flow inside one module, caught
    there, never raised to a caller, so it is no error of the library."""
    return cls.__qualname__.startswith("_")


def _modules():
    """Every module of the package (``inhernet.hf`` included: transformers is installed)."""
    names = ["inhernet"]
    for info in pkgutil.walk_packages(inhernet.__path__, "inhernet."):
        names.append(info.name)
    return names


def _exception_classes():
    """``qualified name -> class`` of every exception class defined in an inhernet module."""
    found = {}
    for name in _modules():
        module = importlib.import_module(name)
        for obj in vars(module).values():
            if inspect.isclass(obj) and issubclass(obj, BaseException) and obj.__module__.startswith("inhernet"):
                found[f"{obj.__module__}.{obj.__qualname__}"] = obj
    return found


def test_every_inhernet_exception_derives_from_the_root():
    classes = _exception_classes()
    # the walk finds the leaves of the subpackages, not just inhernet.errors
    for expected in ("inhernet.errors.CorruptCheckpointError", "inhernet.train.guard.TrainingDivergedError",
                     "inhernet.compare.basics.StaleRunError", "inhernet.data.errors.IdxFormatError",
                     "inhernet.export.ExportDependencyError"):
        assert expected in classes, sorted(classes)
    outside = sorted(name for name, cls in classes.items()
                     if issubclass(cls, Exception) and not issubclass(cls, errors.InherNetError) and not _private(cls))
    assert not outside, f"exception classes outside inhernet.errors.InherNetError: {outside}"
    not_exceptions = {name for name, cls in classes.items() if not issubclass(cls, Exception)}
    assert not_exceptions == NOT_EXCEPTIONS


def test_every_inhernet_error_keeps_a_builtin_base():
    """``except ValueError`` / ``except FileNotFoundError`` / ... code keeps working: every class
    below the root (but its direct structural children) also derives from a built-in exception."""
    builtin_errors = tuple(v for v in vars(builtins).values()
                           if inspect.isclass(v) and issubclass(v, Exception) and v is not Exception)
    for name, cls in _exception_classes().items():
        if cls is not errors.InherNetError and issubclass(cls, errors.InherNetError) and not _private(cls):
            assert issubclass(cls, builtin_errors), name


def test_the_older_names_are_the_same_classes():
    import inhernet.config
    import inhernet.io
    from inhernet import train
    from inhernet.train import store

    assert store.ModelLoadError is train.ModelLoadError is errors.InherNetLoadError
    assert store.ArchitectureMismatchError is train.ArchitectureMismatchError is errors.ArchitectureMismatchError
    assert store.CorruptCheckpointError is errors.CorruptCheckpointError
    assert inhernet.config.ConfigError is errors.ConfigError
    assert inhernet.io.InherNetLoadError is errors.InherNetLoadError
    assert inhernet.io.ModelExistsError is errors.ModelExistsError


@pytest.mark.parametrize("name,bases", [
    ("inhernet.train.store.ArchitectureUnknownError", (errors.InherNetLoadError, ValueError)),
    ("inhernet.train.guard.TrainingDivergedError", (errors.TrainingError, RuntimeError)),
    ("inhernet.train.identity.RunConflictError", (errors.ConfigError, ValueError)),
    ("inhernet.compare.basics.CompareError", (errors.TrainingError, RuntimeError)),
    ("inhernet.compare.basics.StaleRunError", ("inhernet.compare.basics.CompareError", errors.TrainingError)),
    ("inhernet.compare.config.CompareConfigError", (errors.ConfigError, ValueError)),
    ("inhernet.compare.config.ConfigKeyError", ("inhernet.compare.config.CompareConfigError",)),
    ("inhernet.data.errors.DatasetNotFoundError", (errors.InherNetError, FileNotFoundError)),
    ("inhernet.data.errors.DataFormatError", (errors.InherNetError, ValueError)),
    ("inhernet.data.errors.IdxFormatError", ("inhernet.data.errors.DataFormatError",)),
    ("inhernet.export.ExportDependencyError", (errors.DependencyError, ImportError)),
])
def test_each_leaf_sits_where_it_belongs(name, bases):
    def resolve(qualified):
        module, _, attr = qualified.rpartition(".")
        return getattr(importlib.import_module(module), attr)

    cls = resolve(name)
    for base in bases:
        assert issubclass(cls, resolve(base) if isinstance(base, str) else base), (name, base)


def test_unknown_names_are_config_errors_with_a_hint():
    from inhernet.data import load_dataset
    from inhernet.models import create_model
    from inhernet.train import DistillLoss

    with pytest.raises(errors.ConfigError, match=r"'resnet57' \(did you mean 'resnet56'"):
        create_model("resnet57")
    with pytest.raises(errors.ConfigError, match=r"unknown data set 'cifar1000' \(did you mean 'cifar100'\?\)"):
        load_dataset("cifar1000")
    with pytest.raises(errors.ConfigError, match="unknown loss kind"):
        DistillLoss(kind="kdd")
