"""Optimiser parameter groups: the gates of the inherited layers at their own learning rate.

Why: at inheritance the H heads of a layer are (near-)copies, so the gate's gradient
``g_h (u_h − y)ᵀ ∂L/∂y`` is proportional to how far the heads are apart — measured on the
resnet56 → resnet20 strong-teacher runs, ``‖∇gate‖ / ‖∇heads‖`` ≈ 1e-3 with the zero-sum
perturbed heads and ≈ 1e-2 with copies and a random gate. Under SGD the gate then barely moves,
the mix stays uniform, every head receives the same gradient and the heads stay near-copies
(cosine 0.995–0.99996 after 10 epochs). Mixture-of-experts training has the same problem with its routers; one
remedy is to give the router a larger step. ``gate_lr_scale`` multiplies the learning rate of
every gate parameter (the ``gate`` ``nn.Linear`` of each inherited layer with H > 1 and
``gate="softmax"``); the schedule (milestones, warm-up, decay) scales it like every other group.

``gate_lr_scale=1`` (the default) returns the groups unchanged — one group for SGD, so
checkpoints written before this option resume with the same optimiser state layout.
"""

from __future__ import annotations

import math
from typing import Any, Iterable

from torch import nn

from ..errors import ConfigError
from ..diagnostics import gated_layers

__all__ = ["check_gate_lr_scale", "gate_parameter_groups"]


def check_gate_lr_scale(value: Any, model: nn.Module | None = None, *, option: str = "gate_lr_scale") -> float:
    """``value`` as a float, or a ConfigError: it must be a finite number > 0, and a value other
    than 1 needs a model with gated inherited layers (otherwise it would silently do nothing)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ConfigError(f"{option}={value!r} must be a finite number > 0 (the factor on the gates' learning rate; "
                          "1 = the same as every other parameter).")
    if model is not None and value != 1 and not gated_layers(model):
        raise ConfigError(f"{option}={value!r}, but the model has no gated inherited layer (it needs heads > 1 and "
                          "gate='softmax'); leave it at 1.")
    return float(value)


def gate_parameter_groups(model: nn.Module, groups: Iterable[dict], lr: float, gate_lr_scale: float = 1.0) -> list[dict]:
    """Split every optimiser group of ``model``'s parameters: the gate parameters get
    ``lr × gate_lr_scale`` (keeping the group's other options, e.g. its weight decay), the rest keep
    theirs. Empty groups are dropped. ``gate_lr_scale == 1``: the groups as given."""
    groups = [dict(g, params=list(g["params"])) for g in groups]
    if gate_lr_scale == 1:
        return [g for g in groups if g["params"]]
    gates = {id(p) for _, layer in gated_layers(model) for p in layer.gate.parameters()}
    out = []
    for g in groups:
        rest = [p for p in g["params"] if id(p) not in gates]
        mine = [p for p in g["params"] if id(p) in gates]
        if rest:
            out.append(dict(g, params=rest))
        if mine:
            out.append(dict(g, params=mine, lr=g.get("lr", lr) * gate_lr_scale))
    return out
