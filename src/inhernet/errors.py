"""The one error hierarchy of InherNet.

Every error the library raises on purpose derives from :class:`InherNetError`, so a caller (and the
``inhernet`` command line) can catch the root and show its message, which always names the cause
and the fix. Each class also derives from the built-in exception a Python user would expect
(``ValueError`` for a bad value, ``FileExistsError`` for an occupied folder, ...), so existing
``except ValueError`` code keeps working.

    InherNetError
    ├── ConfigError (ValueError)            a bad option, config key or input to inherit
    ├── InherNetLoadError (ValueError)      a saved model that cannot be loaded as asked
    │   ├── CorruptCheckpointError          the files are damaged (truncated, not safetensors, bad JSON)
    │   └── ArchitectureMismatchError       the files are fine but hold another architecture
    ├── ModelExistsError (FileExistsError)  saving into a folder that already holds a model
    ├── DependencyError (ImportError)       an optional dependency (onnx, transformers) is missing
    └── TrainingError (RuntimeError)        training or a comparison cannot go on

The subpackages add their own leaves (``inhernet.data`` dataset errors, ``inhernet.train`` /
``inhernet.compare`` errors) under these.
"""

from __future__ import annotations

__all__ = [
    "ArchitectureMismatchError",
    "ConfigError",
    "CorruptCheckpointError",
    "DependencyError",
    "InherNetError",
    "InherNetLoadError",
    "ModelExistsError",
    "TrainingError",
]


class InherNetError(Exception):
    """The root of every error InherNet raises on purpose; its message names the cause and the fix."""


class ConfigError(InherNetError, ValueError):
    """An ``InheritConfig`` value (or key), or an input to ``inherit``, is invalid; the message says
    which and how to fix it."""


class InherNetLoadError(InherNetError, ValueError):
    """A saved model cannot be loaded as asked; the message names the cause and the fix."""


class CorruptCheckpointError(InherNetLoadError):
    """The saved files are damaged (truncated, not safetensors, unreadable JSON, a checksum that does
    not match): save or copy the model again. Never reported as an architecture mismatch."""


class ArchitectureMismatchError(InherNetLoadError):
    """The saved files are intact but hold another architecture than the one they are loaded into."""


class ModelExistsError(InherNetError, FileExistsError):
    """``save`` was asked to write into a folder that already holds a saved model; the message names
    the folder and the way out (``overwrite=True``, ``--overwrite`` on the command line, or another
    folder). Nothing was written."""


class DependencyError(InherNetError, ImportError):
    """An optional dependency a feature needs is not installed; the message names the package."""


class TrainingError(InherNetError, RuntimeError):
    """Training, evaluation or a comparison cannot go on (diverged, interrupted, stale runs)."""
