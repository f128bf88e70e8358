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

__all__ = ["eval_mode", "stable_hash"]


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
