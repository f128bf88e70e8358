"""Which settings made a run folder, so that a new command never silently reuses an old run.

``inhernet train-teacher`` and ``inhernet finetune`` write their run into ``--out``: a checkpoint,
``metrics.jsonl`` and the final ``model/``. Before this module, a second command into the same
folder resumed from the old checkpoint whatever its settings were (a finished run trained nothing
and reported the old accuracy). Now the folder holds ``run.json``: the **identity** of the run (the
settings that decide its result: the model or teacher it starts from with a hash of its files, the
data, the schedule, the loss and the seed), a hash of it (``key``) and, once it has finished, its
result. :func:`claim_run` compares a new command's identity with it before anything is written:

* the same settings: resume the unfinished run, or skip the finished one (as ``inhernet compare``
  skips a finished run);
* other settings: :class:`RunConflictError`, which lists what differs, unless ``force`` (the old
  run is deleted and trained again). ``resume`` asks for the same-settings case only and fails
  otherwise;
* a run folder without ``run.json`` (written by an older version): its settings are unknown, so it
  is refused too; ``resume`` takes it as made with the current settings, ``force`` retrains.

The identity hash is :func:`inhernet.utils.stable_hash`, the one ``compare`` keys its runs by.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

from inhernet.errors import ConfigError
from inhernet.utils import atomic_write, stable_hash

from .fit import CHECKPOINT_NAME

__all__ = ["RUN_RECORD", "RunConflictError", "RunPlan", "claim_run", "clear_run", "file_digest", "finish_run",
           "record_run", "run_key"]

#: the file in a run folder that records its identity (and, once finished, its result)
RUN_RECORD = "run.json"
#: what a run writes into its folder (and ``force`` deletes): nothing else there is touched
_RUN_FILES = (RUN_RECORD, "checkpoints", "metrics.jsonl", "metrics.jsonl.tmp", "model")
#: files whose content identifies a saved model (weights and their configs)
_MODEL_SUFFIXES = (".safetensors", ".json", ".ckpt", ".pt", ".pth", ".bin")


class RunConflictError(ConfigError):
    """The output folder holds a run made with other (or unknown) settings; nothing was changed."""


def file_digest(path: Union[str, os.PathLike]) -> str:
    """Short SHA-256 of a model file, or of every weight / config file under a model folder (names
    and contents, in sorted order), so a run records exactly which model it started from."""
    p = Path(path)
    h = hashlib.sha256()
    files = [p] if p.is_file() else sorted(f for f in p.rglob("*") if f.is_file() and f.suffix in _MODEL_SUFFIXES)
    for f in files:
        h.update(f.relative_to(p).as_posix().encode() if f != p else f.name.encode())
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()[:12]


def run_key(identity: dict) -> str:
    """The hash of a run's identity (JSON, sorted keys)."""
    return stable_hash(identity)


def _read_record(out: Path) -> Optional[dict]:
    try:
        rec = json.loads((out / RUN_RECORD).read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return rec if isinstance(rec, dict) else None


def _has_run(out: Path) -> bool:
    """``out`` holds training output (a run.json, a checkpoint, metrics or a saved model)."""
    return any((out / name).exists() for name in _RUN_FILES)


def _flatten(d: Any, prefix: str = "") -> dict:
    if isinstance(d, dict):
        out: dict = {}
        for k, v in d.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: d}


def _differences(old: dict, new: dict, limit: int = 6) -> str:
    """``key: old -> new`` for the settings that differ, at most ``limit`` of them."""
    a, b = _flatten(old), _flatten(new)
    diffs = [f"{k}: {json.dumps(a.get(k))} -> {json.dumps(b.get(k))}" for k in sorted(set(a) | set(b))
             if a.get(k) != b.get(k)]
    more = f" and {len(diffs) - limit} more" if len(diffs) > limit else ""
    return "; ".join(diffs[:limit]) + more


@dataclass
class RunPlan:
    """What a command does with its output folder (the decision of :func:`claim_run`).

    ``action``: ``"new"`` (nothing there yet), ``"resume"`` (an unfinished run with these settings),
    ``"skip"`` (a finished run with these settings; ``result`` is what it recorded) or ``"retrain"``
    (``force``: the old run is deleted first). ``message`` says so, for the user.
    """

    action: str
    out_dir: Path
    identity: dict
    key: str
    message: str
    result: Optional[dict] = None

    @property
    def fresh(self) -> bool:
        """The run starts from scratch (nothing is resumed)."""
        return self.action in ("new", "retrain")


def claim_run(out_dir: Union[str, os.PathLike], identity: dict, *, force: bool = False, resume: bool = False,
              command: str = "inhernet") -> RunPlan:
    """Decide what to do with ``out_dir`` for a run of ``identity``; reads only, writes nothing.

    Raises :class:`RunConflictError` when the folder holds a run of other or unknown settings and
    ``force`` is not set (``resume`` accepts a run of unknown settings, never one of other settings).
    ``command`` names the command in the messages.
    """
    if force and resume:
        raise ConfigError("--force and --resume exclude each other: --force retrains, --resume continues")
    out = Path(out_dir)
    key = run_key(identity)
    plan = RunPlan("new", out, identity, key, f"{command}: training -> {out}")
    if not out.is_dir() or not _has_run(out):
        if resume:
            plan.message = f"{command}: {out} holds no run to resume; training from scratch -> {out}"
        return plan
    if force:
        plan.action, plan.message = "retrain", f"{command}: --force: deleting the run in {out} and training again"
        return plan
    rec = _read_record(out)
    if rec is None and not resume:
        raise RunConflictError(
            f"{out} already holds training output but no {RUN_RECORD} saying which settings made it (an older "
            "inhernet, or another program). Nothing was changed. Re-run with --resume to continue it as a run of "
            "these settings, with --force to delete it and retrain, or choose another --out.")
    if rec is not None and rec.get("key") != key:
        diff = _differences(rec.get("identity") or {}, identity)
        raise RunConflictError(
            f"{out} already holds a run made with other settings ({diff or 'see ' + str(out / RUN_RECORD)}). "
            "Nothing was changed. Re-run with --force to delete it and retrain, or choose another --out"
            + (" (--resume only continues a run of the same settings)." if resume else "."))
    if rec is not None and rec.get("finished"):
        result = rec.get("result") or {}
        acc = result.get("test_acc")
        shown = f" (test acc {100 * acc:.2f}%)" if isinstance(acc, (int, float)) else ""
        plan.action, plan.result = "skip", result
        plan.message = (f"{command}: {out} holds a finished run with the same settings{shown}; nothing to do "
                        "(--force retrains it)")
        return plan
    plan.action = "resume"
    start = ("resuming it from its last checkpoint" if (out / "checkpoints" / CHECKPOINT_NAME).is_file()
             else "no epoch of it had finished, so it starts from the beginning")
    plan.message = f"{command}: {out} holds an unfinished run with the same settings; {start} (--force starts over)"
    return plan


def clear_run(out_dir: Union[str, os.PathLike]) -> None:
    """Delete what a run wrote into ``out_dir`` (``run.json``, checkpoints, metrics, ``model/``);
    any other file in the folder is left alone."""
    out = Path(out_dir)
    for name in _RUN_FILES:
        p = out / name
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        elif p.exists() or p.is_symlink():
            p.unlink()


def _write_record(out: Path, record: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / RUN_RECORD, json.dumps(record, indent=2, default=str))


def record_run(plan: RunPlan) -> None:
    """Carry out ``plan`` before training: delete the old run for ``"retrain"``, then write
    ``run.json`` (identity, key, ``finished: false``). Call it on one process only (global rank 0)."""
    if plan.action == "skip":
        return
    if plan.action == "retrain":
        clear_run(plan.out_dir)
    _write_record(plan.out_dir, {"format": "inhernet-run", "key": plan.key, "finished": False,
                                 "identity": plan.identity})


def finish_run(plan: RunPlan, result: dict) -> None:
    """Mark the run finished in ``run.json`` with its ``result`` (e.g. ``{"test_acc": ...}``), so the
    same command again skips it. Call it on one process only (global rank 0)."""
    _write_record(plan.out_dir, {"format": "inhernet-run", "key": plan.key, "finished": True,
                                 "identity": plan.identity, "result": result})
