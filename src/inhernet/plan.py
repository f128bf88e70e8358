"""What an inheritance did: the :class:`InheritPlan` every inherited model carries
(``model.inhernet_plan``), with one :class:`LayerRecord` per Linear/Conv layer of the teacher.

Pure data: ``layer_report`` prints it, ``save`` writes it (``inhernet_config.json``), ``load``
rebuilds the architecture from it without any SVD.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from torch import nn

__all__ = ["PLAN_ATTR", "InheritPlan", "LayerRecord", "get_plan"]

#: the attribute of an inherited model that holds its plan
PLAN_ATTR = "inhernet_plan"


@dataclass
class LayerRecord:
    """One row of the plan: a Linear/Conv layer of the teacher and what became of it."""

    name: str
    kind: str  # a registered layer kind: "Linear" | "Conv2d" | "Conv1D" | "Conv1d" | ...
    shape: list[int]  # teacher weight shape, as stored (a Conv1D's is in × out)
    rank: int | None = None  # None: dense
    heads: int | None = None
    params_before: int = 0
    params_after: int = 0
    energy_kept: float | None = None  # fraction of ‖W‖_F² (or ‖W L‖_F², whitened) in the kept singular values
    skipped: str = ""  # why the layer stayed dense
    #: under a latency budget: the predicted time of the layer as chosen, and of the dense layer (ms,
    #: from the measured table, on the example input's shapes)
    latency_ms: float | None = None
    dense_latency_ms: float | None = None


@dataclass
class InheritPlan:
    """What ``inherit`` did: the config, per-layer records, the teacher's / budget's counts, and
    for ``init="whitened"`` how the calibration ran (``calibration``: mode, batches, rows, peak
    statistics and activation bytes), and under a latency budget the timing (``latency``: device,
    input shape, the teacher's fixed part and budget in ms, predicted and measured whole-model
    times; :func:`inhernet.latency.latency_summary`)."""

    config: dict[str, Any]
    layers: list[LayerRecord] = field(default_factory=list)
    teacher_params: int = 0
    budget: int | None = None
    calibration: dict[str, Any] | None = None
    latency: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "InheritPlan":
        layers = [LayerRecord(**row) for row in data.get("layers", [])]
        return cls(config=data["config"], layers=layers, teacher_params=data["teacher_params"],
                   budget=data.get("budget"), calibration=data.get("calibration"),
                   latency=data.get("latency"))

    @property
    def inherited(self) -> list[LayerRecord]:
        return [r for r in self.layers if r.rank is not None]


def get_plan(model: nn.Module) -> InheritPlan:
    """The plan of an inherited model; ``ValueError`` for a model ``inherit`` did not make."""
    plan = getattr(model, PLAN_ATTR, None)
    if plan is None:
        raise ValueError("this model carries no inheritance plan: pass a model returned by inhernet.inherit or inhernet.load.")
    return plan
