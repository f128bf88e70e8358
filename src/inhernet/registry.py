"""Registries: the places where a layer kind, a rank policy or an initialisation is added.

Each registry maps a name (what a config or the command line writes) to an object. The modules
that define the entries register them when they are imported (``inhernet/__init__`` imports them
all); nothing else in the engine lists the names, so a new entry is one file and one
``register`` call:

* :data:`LAYER_KINDS` — :class:`inhernet.kinds.LayerKind`: which modules are eligible, their matrix
  view, their inherited replacement (``Linear``, ``Conv2d``, transformers' ``Conv1D``, ``Conv1d``);
* :data:`RANK_POLICIES` — :class:`inhernet.ranks.RankPolicy`: how ranks are chosen, and what the
  pipeline must give the policy (spectra, all layers at once);
* :data:`INITS` — :class:`inhernet.factorise.inits.Init`: how a layer's factors start (``svd``,
  ``whitened``, ``random``);
* :data:`HEAD_INITS` — how the H heads start from the factors (``copies``, ``perturbed``, ``split``).

This module imports nothing of the engine, so every module can use it.
"""

from __future__ import annotations

from typing import Generic, Iterator, TypeVar

from .errors import ConfigError
from .utils import did_you_mean

__all__ = ["HEAD_INITS", "INITS", "LAYER_KINDS", "RANK_POLICIES", "Registry"]

T = TypeVar("T")


class Registry(Generic[T]):
    """An ordered ``name → entry`` map with a clear error for an unknown name."""

    def __init__(self, what: str, option: str) -> None:
        self.what, self.option = what, option
        self._entries: dict[str, T] = {}

    def register(self, name: str, entry: T, *, replace: bool = False) -> T:
        """Add ``entry`` under ``name``; a second entry under the same name is refused unless
        ``replace`` (so two plugins cannot silently shadow each other). Returns ``entry``."""
        if not isinstance(name, str) or not name:
            raise ConfigError(f"a {self.what} needs a non-empty string name, got {name!r}.")
        if name in self._entries and not replace:
            raise ConfigError(f"a {self.what} named {name!r} is already registered; pick another name, or pass "
                              "replace=True to override it on purpose.")
        self._entries[name] = entry
        return entry

    def get(self, name: str) -> T:
        """The entry called ``name``; ``ConfigError`` naming the valid ones otherwise."""
        try:
            return self._entries[name]
        except (KeyError, TypeError):
            raise ConfigError(f"{self.option}={name!r} is not a known {self.what}{did_you_mean(name, self._entries)}; "
                              f"choose one of {', '.join(map(repr, self._entries))}.") from None

    def names(self) -> tuple[str, ...]:
        return tuple(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def values(self) -> list[T]:
        return list(self._entries.values())

    def __repr__(self) -> str:
        return f"Registry({self.what}: {', '.join(self._entries)})"


LAYER_KINDS: Registry = Registry("layer kind", "layer_types entry")
RANK_POLICIES: Registry = Registry("rank policy", "policy")
INITS: Registry = Registry("initialisation", "init")
HEAD_INITS: Registry = Registry("head initialisation", "head_init")
