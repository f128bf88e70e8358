"""Small helpers shared across the package that change nothing the caller owns.

``stable_hash`` is the one identity hash of runs and caches (compare's runs, the teacher cache,
``finetune`` / ``train-teacher`` run records). ``eval_mode`` runs a block with a module in eval mode and puts every submodule back in the mode it
had (``module.train(was_training)`` would not: it sets one flag on all of them), so library code
can evaluate, calibrate or distil from a model without leaving a trace on it.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Optional

from torch import nn

__all__ = ["atomic_write", "call_model", "count_parameters", "did_you_mean", "eval_mode", "markdown_table",
           "sha256_file", "stable_hash", "state_dict_problems", "text_table", "tied_names"]


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters, each shared (tied) tensor counted once (``nn.Module.parameters``
    yields a tied tensor once)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def tied_names(model: nn.Module) -> dict[str, list[str]]:
    """``name → every name of the same tensor`` for the parameters and buffers registered under
    several names (tied: GPT-2's LM head and word embeddings); untied tensors are not in it."""
    by_id: dict[int, list[str]] = {}
    for name, t in [*model.named_parameters(remove_duplicate=False), *model.named_buffers(remove_duplicate=False)]:
        by_id.setdefault(id(t), []).append(name)
    return {n: names for names in by_id.values() if len(names) > 1 for n in names}


def state_dict_problems(model: nn.Module, state: Mapping[str, Any],
                        shared: Optional[Mapping[str, list[str]]] = None, *, examples: int = 3) -> list[str]:
    """What keeps ``state`` from loading strictly into ``model``, as phrases for an error message:
    ``"N shape mismatch(es), e.g. name: saved vs model; ..."``, ``"N missing key(s), e.g. ..."``,
    ``"N unexpected key(s), e.g. ..."`` (each with up to ``examples`` names), or ``[]`` when every
    entry of ``model.state_dict()`` is in ``state`` with its shape and nothing else is.

    The one strict check of saved weights against a model, so that every loader reports a misfit
    the same way (and before ``load_state_dict``, whose message is long and names no file).
    ``shared`` maps the name of a tensor registered under several names to all of them (default
    :func:`tied_names` of ``model``): such a tensor counts as present when any one of its names is
    in ``state``, as in a file saved without duplicate tensors. A value of ``state`` that is not a
    tensor counts as a shape mismatch."""
    own = model.state_dict(keep_vars=True)
    shared = tied_names(model) if shared is None else shared
    missing = [k for k in own if k not in state and not any(n in state for n in shared.get(k, ()))]
    unexpected = [k for k in state if k not in own]
    shapes = []
    for k, t in own.items():
        if k not in state:
            continue
        got = getattr(state[k], "shape", None)
        if got is None:
            shapes.append(f"{k}: a {type(state[k]).__name__}, not a tensor")
        elif tuple(got) != tuple(t.shape):
            shapes.append(f"{k}: {tuple(got)} vs {tuple(t.shape)}")
    problems = []
    for names, what in ((shapes, "shape mismatch(es)"), (missing, "missing key(s)"),
                        (unexpected, "unexpected key(s)")):
        if names:
            sep = "; " if names is shapes else ", "
            problems.append(f"{len(names)} {what}, e.g. {sep.join(names[:examples])}")
    return problems


def did_you_mean(name: Any, valid: Iterable[str], *, n: int = 1, cutoff: float = 0.6) -> str:
    """`` (did you mean 'x'?)`` for the closest of ``valid`` to ``name``, or ``""`` when none is close:
    the hint every "unknown key / name" message carries."""
    close = difflib.get_close_matches(str(name), list(valid), n=n, cutoff=cutoff)
    if not close:
        return ""
    return f" (did you mean {' or '.join(map(repr, close))}?)"


def sha256_file(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def atomic_write(path: str | os.PathLike, write: Callable[[Path], Any] | str | bytes) -> Path:
    """Write ``path`` so that a reader sees the old file or the new one, never half of one: ``write``
    (a function given the temporary path, or the text / bytes themselves) writes ``path.tmp``, which
    then replaces ``path``. The temporary file is removed if writing fails."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        if isinstance(write, str):
            tmp.write_text(write)
        elif isinstance(write, bytes):
            tmp.write_bytes(write)
        else:
            write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


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
