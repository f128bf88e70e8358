"""What the comparison runner and its teacher cache share: the errors, the data a config names and
its identity, the trainer options of every fit, the default log, and the locks between processes
that share one comparison (:mod:`inhernet.compare.runner`, :mod:`inhernet.compare.teacher`)."""

from __future__ import annotations

import fcntl
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any, Iterator

from inhernet.errors import TrainingError
from inhernet.train.fit import global_rank

from .config import CompareConfig

__all__ = ["CompareError", "IDENTITY_BASELINE", "StaleRunError", "TeacherRecordError", "data_identity", "file_lock",
           "inherit_identity", "load_data", "log_info", "single_process", "trainer_kwargs"]


class CompareError(TrainingError):
    """A comparison cannot proceed; the message says why. A :class:`inhernet.errors.TrainingError`
    (so also a ``RuntimeError``, as before)."""


class StaleRunError(CompareError):
    """Existing run folders were produced by a different config."""


class TeacherRecordError(CompareError):
    """A teacher retrained from its config (its weights were not here) left its committed record: this
    machine does not repeat that training. Nothing is replaced; ``new_teacher=True`` (``inhernet compare
    --new-teacher``) trains a new teacher instead, and the runs recorded against the old one stop counting."""


def data_identity(cfg: CompareConfig) -> dict:
    d = asdict(cfg.data)
    d.pop("root", None)
    from inhernet.data import data_file_digest, is_data_path

    if is_data_path(cfg.data.name, cfg.data.root):  # your own files: their contents, so an edit is noticed
        d["digest"] = data_file_digest(cfg.data.name, cfg.data.root)
    return d


#: The :class:`~inhernet.InheritConfig` defaults that run identities were first made under. A method's
#: ``inherit`` options enter its run's identity as written, so a run made when ``heads: 3`` could be
#: left out keeps its key only while the default is the same; once a default here changes, a method
#: that leaves the option out gets the *current* default written into its identity (what it now
#: trains: a new run, not the old one's), and one that writes the baseline value of an option that
#: runs omitted before it existed (``head_init: copies``) keeps the old key (it trains what they did).
IDENTITY_BASELINE = {"heads": 3, "head_init": "copies"}
#: options that did not exist when the first runs were made: their baseline value is left out of the
#: identity (those runs never wrote it)
_ADDED_LATER = ("head_init",)
#: options that change nothing without a gate (one head, or ``gate: none``): a default of theirs is
#: not written into such a method's identity (the same training, the same key)
_GATE_ONLY = ("head_init",)


def inherit_identity(inherit: dict, defaults: dict | None = None) -> dict:
    """A method's ``inherit`` options as they enter its run's identity (see :data:`IDENTITY_BASELINE`):
    the same training gets the same key whichever library defaults are current, and a change of a
    default changes the key of every method that relied on it. ``defaults``: the caller's own
    defaults, applied before the library's (the transformer methods' ``heads: 2``, ...); they have
    not changed since the first runs, so an option they supply is not written in."""
    from inhernet import InheritConfig

    current, own = InheritConfig(), defaults or {}
    out = dict(inherit)
    trained = {**own, **out}  # what the method trains, where the library's defaults do not decide
    gated = (trained.get("heads", current.heads) > 1
             and trained.get("gate", current.gate) != "none")
    for name, baseline in IDENTITY_BASELINE.items():
        now = getattr(current, name)
        if name not in out and name not in own and now != baseline and (gated or name not in _GATE_ONLY):
            out[name] = now
        if name in _ADDED_LATER and out.get(name) == baseline:
            out.pop(name)
    return out


def trainer_kwargs(cfg: CompareConfig, progress: Any) -> dict:
    tr = cfg.trainer
    return dict(devices=tr.devices, num_nodes=tr.num_nodes, strategy=tr.strategy, accelerator=tr.accelerator,
                precision=tr.precision, channels_last=tr.channels_last, data_on_device=tr.data_on_device,
                compile=tr.compile, progress=progress, quiet=True)


def log_info(msg: str) -> None:
    if global_rank() == 0:
        print(msg, flush=True)


@contextmanager
def file_lock(path: Path, *, wait: bool) -> Iterator[bool]:
    """Hold an exclusive ``flock`` on ``path`` (created) for the block; yields whether it was taken.
    ``wait=False`` yields False at once when another process holds it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def single_process(cfg: CompareConfig) -> bool:
    """Whether each training run is one process (locks between processes make sense)."""
    devices = cfg.trainer.devices
    return cfg.trainer.num_nodes == 1 and (devices in (1, "1") or (isinstance(devices, list) and len(devices) == 1))


def load_data(cfg: CompareConfig, *, subset: Any = "same") -> Any:
    """The config's data splits; ``subset`` other than ``"same"`` replaces ``data.subset`` (the
    teacher's own training images: ``None`` for all of them)."""
    from inhernet.data import load_dataset

    d = cfg.data
    return load_dataset(d.name, root=d.root, val_fraction=d.val_fraction, subset=d.subset if subset == "same" else subset,
                        test_subset=d.test_subset, seed=d.seed)
