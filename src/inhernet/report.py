"""Counting and reporting: parameters, FLOPs, and the per-layer inheritance table."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from .plan import InheritPlan, LayerRecord, get_plan
from .diagnostics import head_stats, multi_head_layers
from .utils import call_model, count_parameters, eval_mode, markdown_table, text_table


def count_flops(model: nn.Module, input_shape: Sequence[int] | None = None, *, example_input: Any = None) -> int:
    """FLOPs of one forward pass (``torch.utils.flop_counter``: matmuls and convolutions, 2 per
    multiply-add), for a zero tensor of ``input_shape`` (batch included) or a given ``example_input``
    (a tensor, a tuple of positional args or a dict of keyword args)."""
    if example_input is None:
        if input_shape is None:
            raise ValueError("give input_shape (e.g. (1, 3, 32, 32)) or example_input.")
        ref = next(iter(model.parameters()), None)
        example_input = torch.zeros(*input_shape, device=None if ref is None else ref.device)
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), eval_mode(model), counter:
        call_model(model, example_input)
    return int(counter.get_total_flops())


@dataclass
class LayerReport:
    """Per-layer table of an inherited model; ``print()`` it, or use ``rows`` / ``to_markdown()``.

    ``head_cos`` (layer name → the heads' mean pairwise cosine, from the weights, for inherited layers
    with H > 1) is the "head cos" column: 1 means the heads are still copies of each other."""

    rows: list[LayerRecord]
    teacher_params: int
    model_params: int
    budget: int | None
    head_cos: dict[str, float] = field(default_factory=dict)
    #: what the budget counts (``InheritConfig.budget_scope``): "model" or "targets"
    budget_scope: str = "model"

    HEADER = ("layer", "kind", "shape", "rank", "heads", "params before", "params after", "energy kept", "head cos",
              "note")

    def _cells(self) -> list[tuple[str, ...]]:
        out = []
        for r in self.rows:
            out.append((
                r.name, r.kind, "×".join(map(str, r.shape)),
                "dense" if r.rank is None else str(r.rank),
                "" if r.heads is None else str(r.heads),
                f"{r.params_before:,}", f"{r.params_after:,}",
                "" if r.energy_kept is None else f"{100 * r.energy_kept:.1f}%",
                f"{self.head_cos[r.name]:.6f}" if r.name in self.head_cos else "",
                r.skipped,
            ))
        return out

    def summary(self) -> str:
        n_inh = sum(r.rank is not None for r in self.rows)
        line = (f"{n_inh} of {len(self.rows)} layers inherited; parameters {self.model_params:,} "
                f"(teacher {self.teacher_params:,}, {self.model_params / max(self.teacher_params, 1):.1%})")
        if self.budget is not None:
            verdict = "within" if self.model_params <= self.budget else "OVER"
            line += f"; budget {self.budget:,}: {verdict} budget"
            if self.budget_scope == "targets":
                sel = [r for r in self.rows if r.rank is not None or not r.skipped or not _never_selected(r)]
                before = sum(r.params_before for r in sel)
                after = sum(r.params_after for r in sel)
                line += (f" (budget_scope='targets': the {len(sel)} selected layers keep {after:,} of their "
                         f"{before:,} parameters, {after / max(before, 1):.1%}; the rest of the network as it was)")
        return line

    def __str__(self) -> str:
        numeric = {3, 4, 5, 6, 7, 8}
        left = {i for i in range(len(self.HEADER)) if i not in numeric}
        return "\n".join([*text_table(list(self.HEADER), self._cells(), left), "", self.summary()])

    def to_markdown(self) -> str:
        return "\n".join([*markdown_table(list(self.HEADER), self._cells()), "", self.summary()])


def layer_report(model: nn.Module) -> LayerReport:
    """One row per Linear/Conv2d of the teacher: shape, rank, heads, parameters before/after,
    fraction of spectrum energy kept, the heads' mean pairwise cosine (H > 1; from the current
    weights, so after training it tells whether the heads diverged), and why a layer stayed dense."""
    plan = get_plan(model)
    cos = {name: st["cosine_mean"] for name, layer in multi_head_layers(model)
           if (st := head_stats(layer))["cosine_mean"] is not None}
    return LayerReport(plan.layers, plan.teacher_params, count_parameters(model), plan.budget, cos,
                       plan.config.get("budget_scope", "model"))


def plan_report(plan: InheritPlan) -> LayerReport:
    """The :class:`LayerReport` of a plan alone (a streamed inheritance, a saved folder's
    ``inhernet_config.json``), without the model: its parameter count follows from the records
    (the teacher's, minus what each layer had, plus what it has); no head cosines."""
    params = plan.teacher_params - sum(r.params_before for r in plan.layers) + sum(r.params_after for r in plan.layers)
    return LayerReport(plan.layers, plan.teacher_params, params, plan.budget, {}, plan.config.get("budget_scope", "model"))


def _never_selected(record: LayerRecord) -> bool:
    """A dense layer that selection skipped (as opposed to one the rank policy kept dense)."""
    return bool(record.skipped) and not record.skipped.startswith(("rank ", "the budget allocation"))
