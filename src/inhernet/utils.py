"""Small helpers shared across the package that change nothing the caller owns.

``stable_hash`` is the one identity hash of runs and caches (compare's runs, the teacher cache,
``finetune`` / ``train-teacher`` run records). ``eval_mode`` runs a block with a module in eval mode and puts every submodule back in the mode it
had (``module.train(was_training)`` would not: it sets one flag on all of them), so library code
can evaluate, calibrate or distil from a model without leaving a trace on it.
"""

from __future__ import annotations

import hashlib
import json
from contextlib import contextmanager
from typing import Any, Iterator

from torch import nn

__all__ = ["call_model", "eval_mode", "markdown_table", "stable_hash", "text_table"]


def call_model(model: nn.Module, example: Any) -> Any:
    """``model(**example)`` for a dict, ``model(*example)`` for a tuple, else ``model(example)``: how
    counting, diagnostics and optimisation run a model on an example input. (Calibration batches
    follow a richer rule, :func:`inhernet.calibrate.model_inputs`, which also unpacks ``(x, y)``.)"""
    if isinstance(example, dict):
        return model(**example)
    if isinstance(example, tuple):
        return model(*example)
    return model(example)


def text_table(header: list[str], rows: list[list[str]], left: set[int]) -> list[str]:
    """Lines of a plain-text table: columns padded to their widest cell, those in ``left`` left-aligned
    (names), the others right-aligned (numbers), a dashed rule under the header."""
    cells = [header, *rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = []
    for k, row in enumerate(cells):
        parts = [c.ljust(w) if i in left else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))]
        lines.append("  ".join(parts).rstrip())
        if k == 0:
            lines.append("  ".join("-" * w for w in widths))
    return lines


def markdown_table(header: list[str], rows: list[list[str]]) -> list[str]:
    """Lines of a Markdown table (``|`` inside cells escaped)."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in rows]


def stable_hash(obj: Any, n: int = 12) -> str:
    """Short SHA-256 of a JSON-able object (sorted keys): the cache / run identity."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:n]


@contextmanager
def eval_mode(module: nn.Module) -> Iterator[nn.Module]:
    """``with eval_mode(model): ...`` — ``model`` is in eval mode inside the block; afterwards each of
    its submodules has its own earlier ``training`` flag again (also when the block raises)."""
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield module
    finally:
        for m, training in modes:
            m.training = training
