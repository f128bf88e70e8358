"""Depth pruning: the classic shallower student made from a teacher's own blocks.

DistilBERT initialises its student from every other layer of the teacher; the same recipe gives a
depth-pruned decoder. :func:`depth_prune` keeps the chosen transformer blocks of a copy of the model
and fixes what refers to the layer count (``config.num_hidden_layers``, per-layer ``layer_types``,
the attention's ``layer_idx`` used by the KV cache), so the student trains, saves and generates like
any model of its class.

    >>> student = depth_prune(teacher, every_other_layer(teacher))   # DistilBERT: layers 0, 2, 4
"""

from __future__ import annotations

import copy
from typing import Sequence

from torch import nn

__all__ = ["block_list", "depth_prune", "evenly_spaced", "evenly_spaced_layers", "every_other_layer"]


def block_list(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The ``nn.ModuleList`` of transformer blocks: the list whose length is
    ``config.num_hidden_layers`` (``bert.encoder.layer``, ``model.layers``, ``transformer.h``)."""
    n = getattr(getattr(model, "config", None), "num_hidden_layers", None)
    if n is None:
        raise TypeError(f"{type(model).__name__} has no config.num_hidden_layers: depth_prune needs a transformers model")
    found = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.ModuleList) and len(m) == n
             and len({type(b) for b in m}) == 1]
    if len(found) != 1:
        names = [name for name, _ in found] or "none"
        raise ValueError(f"expected one list of {n} blocks in {type(model).__name__}, found: {names}; "
                         "encoder-decoder models need each stack pruned separately")
    return found[0]


def every_other_layer(model: nn.Module) -> list[int]:
    """Blocks 0, 2, 4, …: DistilBERT's choice of teacher layers."""
    return list(range(0, len(block_list(model)[1]), 2))


def depth_prune(model: nn.Module, keep: Sequence[int]) -> nn.Module:
    """A copy of ``model`` with only the blocks at indices ``keep`` (in that order); the teacher is
    not modified. Embeddings, final norm and heads are kept as they are."""
    name, blocks = block_list(model)
    keep = list(keep)
    if not keep or len(set(keep)) != len(keep) or not all(0 <= i < len(blocks) for i in keep):
        raise ValueError(f"keep={keep} must be distinct block indices in [0, {len(blocks)})")
    student = copy.deepcopy(model)
    _, student_blocks = block_list(student)
    kept = nn.ModuleList(student_blocks[i] for i in keep)
    for new_idx, block in enumerate(kept):
        for sub in block.modules():
            if hasattr(sub, "layer_idx"):
                sub.layer_idx = new_idx
    student.set_submodule(name, kept)
    config = student.config
    config.num_hidden_layers = len(keep)
    if isinstance(getattr(config, "layer_types", None), list):
        config.layer_types = [config.layer_types[i] for i in keep]
    return student


def evenly_spaced(n_total: int, n_keep: int) -> list[int]:
    """``n_keep`` indices of ``range(n_total)``, evenly spaced, the first and the last included.

    >>> evenly_spaced(30, 24)[:5], evenly_spaced(6, 3), evenly_spaced(5, 1)
    ([0, 1, 3, 4, 5], [0, 2, 5], [0])
    """
    if not 1 <= n_keep <= n_total:
        raise ValueError(f"cannot keep {n_keep} of {n_total} blocks")
    if n_keep == 1:
        return [0]
    return sorted({round(i * (n_total - 1) / (n_keep - 1)) for i in range(n_keep)})


def evenly_spaced_layers(model: nn.Module, fraction: float) -> list[int]:
    """The blocks a depth-pruned student keeps at ``fraction`` of the teacher's depth:
    ``round(fraction × n)`` of them (at least one), evenly spaced, first and last kept — at
    ``fraction=0.8`` 80 % of the block parameters, the budget convention of the LLM-compression
    papers."""
    n = len(block_list(model)[1])
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction={fraction} must lie in (0, 1]")
    return evenly_spaced(n, max(1, round(fraction * n)))
