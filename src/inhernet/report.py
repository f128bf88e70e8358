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
    #: a latency budget's timing (``InheritPlan.latency``); adds the "ms (dense ms)" column
    latency: dict[str, Any] | None = None

    HEADER = ("layer", "kind", "shape", "rank", "heads", "params before", "params after", "energy kept", "head cos",
              "note")

    @property
    def header(self) -> tuple[str, ...]:
        return self.HEADER if self.latency is None else (*self.HEADER[:-1], "ms (dense)", self.HEADER[-1])

    def _cells(self) -> list[tuple[str, ...]]:
        out = []
        for r in self.rows:
            ms = () if self.latency is None else (
                "" if r.latency_ms is None else f"{r.latency_ms:.3g} ({r.dense_latency_ms:.3g})",)
            out.append((
                r.name, r.kind, "×".join(map(str, r.shape)),
                "dense" if r.rank is None else str(r.rank),
                "" if r.heads is None else str(r.heads),
                f"{r.params_before:,}", f"{r.params_after:,}",
                "" if r.energy_kept is None else f"{100 * r.energy_kept:.1f}%",
                f"{self.head_cos[r.name]:.6f}" if r.name in self.head_cos else "",
                *ms, r.skipped,
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
        if self.latency is not None:
            line += "\n" + latency_line(self.latency)
        return line

    def __str__(self) -> str:
        header = self.header
        left = {0, 1, 2, len(header) - 1}
        return "\n".join([*text_table(list(header), self._cells(), left), "", self.summary()])

    def to_markdown(self) -> str:
        return "\n".join([*markdown_table(list(self.header), self._cells()), "", self.summary()])


def latency_line(t: dict[str, Any]) -> str:
    """The latency budget's verdict: predicted against the budget, and measured against the teacher."""
    scope = " of the selected layers" if t.get("budget_scope") == "targets" else ""
    predicted, teacher = t["predicted_ms"], t["teacher_predicted_ms"]
    verdict = "within" if predicted <= t["budget_ms"] + (t["fixed_ms"] if scope else 0) + 1e-9 else "OVER"
    form = " (layers as optimize_for_inference runs them once trained)" if t.get("form") == "optimized" else ""
    line = (f"latency on {t.get('input_shape') or 'the example'}: predicted{form} {predicted:.3g} ms "
            f"({predicted / teacher:.1%} of the teacher's predicted {teacher:.3g} ms; fixed part {t['fixed_ms']:.3g} ms); "
            f"budget {t['budget']}{scope} = {t['budget_ms']:.3g} ms: {verdict} budget")
    if t.get("inherited_measured_ms") is not None:
        ref = t.get("teacher_measured_ms")
        line += f"; measured {t['inherited_measured_ms']:.3g} ms"
        if ref:
            line += f" ({t['inherited_measured_ms'] / ref:.1%} of the teacher's measured {ref:.3g} ms)"
    if t.get("optimized_measured_ms") is not None:
        ref = t.get("teacher_measured_ms")
        line += f"; optimised (heads made to differ) {t['optimized_measured_ms']:.3g} ms"
        if ref:
            line += f" ({t['optimized_measured_ms'] / ref:.1%} of the teacher's)"
    return line


def layer_report(model: nn.Module) -> LayerReport:
    """One row per Linear/Conv2d of the teacher: shape, rank, heads, parameters before/after,
    fraction of spectrum energy kept, the heads' mean pairwise cosine (H > 1; from the current
    weights, so after training it tells whether the heads diverged), and why a layer stayed dense."""
    plan = get_plan(model)
    cos = {name: st["cosine_mean"] for name, layer in multi_head_layers(model)
           if (st := head_stats(layer))["cosine_mean"] is not None}
    return LayerReport(plan.layers, plan.teacher_params, count_parameters(model), plan.budget, cos,
                       plan.config.get("budget_scope", "model"), plan.latency)


def plan_report(plan: InheritPlan) -> LayerReport:
    """The :class:`LayerReport` of a plan alone (a streamed inheritance, a saved folder's
    ``inhernet_config.json``), without the model: its parameter count follows from the records
    (the teacher's, minus what each layer had, plus what it has); no head cosines."""
    params = plan.teacher_params - sum(r.params_before for r in plan.layers) + sum(r.params_after for r in plan.layers)
    return LayerReport(plan.layers, plan.teacher_params, params, plan.budget, {}, plan.config.get("budget_scope", "model"),
                       plan.latency)


def _never_selected(record: LayerRecord) -> bool:
    """A dense layer that selection skipped (as opposed to one the rank policy kept dense)."""
    return bool(record.skipped) and not record.skipped.startswith(("rank ", "the budget allocation",
                                                                    "the latency allocation"))
