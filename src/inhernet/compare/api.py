"""The front door of ``inhernet compare``: one :func:`load_config` / :func:`run_compare` /
:func:`rebuild_report` for every task, dispatching on the config's ``task`` —
``image-classification`` (the default; :mod:`inhernet.compare.config`, :mod:`~inhernet.compare.runner`)
or the transformer tasks ``sequence-classification`` / ``causal-lm``
(:mod:`~inhernet.compare.text_config`, :mod:`~inhernet.compare.text_runner`)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional, Union

from inhernet.utils import did_you_mean

from . import runner, text_runner
from .config import CompareConfig, CompareConfigError, read_config_file
from .text_config import TEXT_TASKS, TextCompareConfig


__all__ = ["comparison_status", "load_config", "rebuild_report", "run_compare"]


def load_config(path: Union[str, Path], overrides: Optional[dict] = None) -> Union[CompareConfig, TextCompareConfig]:
    """Read and validate a YAML comparison config of any task. ``overrides``: ``{"out_dir": ...,
    "trainer": {...}}`` merged in (one level deep)."""
    p = Path(path)
    raw = read_config_file(p, overrides)
    task = raw.get("task", "image-classification")
    if task != "image-classification" and task not in TEXT_TASKS:
        tasks = ("image-classification", *TEXT_TASKS)
        raise CompareConfigError(f"{p}: task={task!r}{did_you_mean(task, tasks)}; the tasks are {', '.join(tasks)}")
    cls = TextCompareConfig if raw.get("task") in TEXT_TASKS else CompareConfig
    try:
        cfg = cls.from_dict(raw, where=p.name)
    except CompareConfigError as err:
        raise type(err)(f"{p}: {err}") from err
    cfg.source = str(p)
    return cfg


def run_compare(cfg: Union[CompareConfig, TextCompareConfig], **kwargs: Any) -> Optional[dict]:
    """Run (or resume) a comparison and write its report; see the task's runner for the options."""
    if isinstance(cfg, TextCompareConfig):
        return text_runner.run_text_compare(cfg, **kwargs)
    return runner.run_compare(cfg, **kwargs)


def comparison_status(cfg: Union[CompareConfig, TextCompareConfig]) -> str:
    """The teacher's and every started run's state, and how many planned runs are done, as text
    (``inhernet compare CONFIG --status``); trains, loads and writes nothing."""
    if isinstance(cfg, TextCompareConfig):
        return text_runner.text_comparison_status(cfg)
    return runner.comparison_status(cfg)


def rebuild_report(out_dir: Union[str, os.PathLike], **kwargs: Any) -> dict:
    """Rebuild the table and plots of a finished or partial comparison from its ``out_dir``."""
    import yaml

    cpath = Path(out_dir) / "config.yaml"
    raw = yaml.safe_load(cpath.read_text()) if cpath.is_file() else {}
    if (raw or {}).get("task") in TEXT_TASKS:
        kwargs.pop("latency", None)  # speed is reused from results.json
        return text_runner.rebuild_text_report(out_dir, **kwargs)
    return runner.rebuild_report(out_dir, **kwargs)
