"""What :func:`inhernet.optimize_for_inference` did, layer by layer (:class:`OptimizationReport`,
:class:`LayerDecision`, :class:`SharedInputGroup`), and the constants its choices and report name."""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["DEFAULT_MIN_SAVING", "DEFAULT_TOLERANCE", "LONE_LAYER", "LayerDecision", "OptimizationReport", "PER_LAYER",
           "PLAIN", "REPORT_ATTR", "SharedInputGroup"]


#: the check of the result: max |optimised − original| on the example ≤ this × max |original|
DEFAULT_TOLERANCE = 1e-4

#: the attribute of the optimised model that holds its :class:`OptimizationReport`
REPORT_ATTR = "inhernet_optimized"

#: an inherited layer whose factorised inference form keeps more than ``1 − this`` of the dense
#: layer's parameters becomes dense (when its heads fold); see ``min_saving``
DEFAULT_MIN_SAVING = 0.2

#: the whole-model variants ``check_speed`` compares
PER_LAYER, PLAIN = "per-layer choices", "out×in weights, no fusion"

#: the report's name for the layer when ``optimize_for_inference`` is given one inherited layer alone
LONE_LAYER = "(the layer)"


@dataclass
class LayerDecision:
    """What one ``Linear`` / ``Conv2d`` / inherited layer became.

    ``became``: ``"dense"`` (one ``nn.Conv2d`` / ``nn.Linear``; for an inherited layer the product
    of its factors), ``"folded pair"``, ``"gated kept"`` (the inherited layer itself),
    ``"gated per-sample"`` / ``"gated shared-weight"`` (:class:`GatedConv2d`, or
    :class:`GatedLinear` for a linear layer), ``"gated per-token"`` (:class:`GatedLinear`), or
    ``"unchanged"`` (a dense layer with no BatchNorm after it). ``batchnorm``: the BatchNorm folded
    into it. ``times_ms``: the candidates timed on ``input_shape`` (the chosen one is ``chosen``; a
    gated layer's ``"dense (reference)"`` is the dense layer of the teacher's shape, timed for
    comparison only: it is not what the layer computes). ``gate_deviation``: for a frozen gate, the
    largest |g − ḡ| of its gate weights over the example input. ``param_fraction``: for an inherited
    layer, the parameters of its factorised inference form (the pair its heads fold to, or the
    gated layer with all heads) over the dense layer's. ``shared_input``: the names of the layers
    whose first products it shares one matmul with (see :class:`SharedInputGroup`), else None.
    """

    name: str
    kind: str
    became: str
    batchnorm: str | None = None
    input_shape: tuple[int, ...] | None = None
    times_ms: dict[str, float] = field(default_factory=dict)
    chosen: str | None = None
    gate_deviation: float | None = None
    note: str = ""
    param_fraction: float | None = None
    shared_input: list[str] | None = None

    def add_note(self, text: str) -> None:
        self.note = f"{self.note}; {text}" if self.note else text


@dataclass
class SharedInputGroup:
    """Layers that read the same input tensor on the example (q/k/v of an attention layer, gate/up
    of a gated MLP), timed computing their first products separately and as one matmul
    (:class:`SharedInputProduct`); ``fused`` says whether the one matmul was kept (only when faster).
    ``left_out``: members of the group whose form has no first product to share (a kept inherited
    layer)."""

    names: list[str]
    input_shape: tuple[int, ...] | None
    times_ms: dict[str, float]
    fused: bool
    left_out: list[str] = field(default_factory=list)
    chosen: str | None = None


@dataclass
class OptimizationReport:
    """What :func:`optimize_for_inference` did, layer by layer; ``print`` it for a table.

    ``max_abs_diff``: max |optimised − original| on the example input (``reference_scale`` = max
    |original|); exact transforms stay within ``tolerance`` × ``reference_scale``, a frozen gate
    (``approximate``) may not. ``memory_format`` and ``model_times_ms``: the layout kept and the
    whole-model times of the layouts tried (compiled ahead of time, ``model_times_compiled``, with
    ``compile="aot"``). ``shared_inputs``: the groups of layers reading one
    input and whether each was fused. ``variant_times_ms``: the whole model with the per-layer
    choices against ``out×in`` weights without fusion (``check_speed``), when timed.
    ``compiled`` / ``compile_options``: whether the result is compiled, and the TorchInductor
    options ``torch.compile`` was given. ``compile_mode``: ``"torch.compile"``, ``"aot"`` (exported
    and compiled ahead of time into a package by AOTInductor, ``package_path`` where it was kept,
    None for a temporary one) or None (not compiled).
    """

    layers: list[LayerDecision]
    example_shape: tuple[int, ...] | None
    device: str
    threads: int
    memory_format: str
    model_times_ms: dict[str, float]
    max_abs_diff: float
    reference_scale: float
    tolerance: float
    frozen_gates: list[str]
    removed_batchnorms: list[str]
    batchnorm_pairing: str
    compile_options: dict[str, Any] = field(default_factory=dict)
    compile_mode: str | None = None
    package_path: str | None = None
    min_speedup: float = 1.0
    min_saving: float | None = DEFAULT_MIN_SAVING
    shared_inputs: list[SharedInputGroup] = field(default_factory=list)
    variant_times_ms: dict[str, float] = field(default_factory=dict)

    @property
    def variant(self) -> str:
        """Which whole-model variant was kept: the per-layer choices, or (when the whole model was
        faster so) ``out×in`` weights without fusion; see ``check_speed``."""
        if not self.variant_times_ms:
            return PER_LAYER
        return min(self.variant_times_ms, key=self.variant_times_ms.get)

    @property
    def compiled(self) -> bool:
        """Whether the result is compiled (``compile_mode`` is set)."""
        return self.compile_mode is not None

    @property
    def model_times_compiled(self) -> bool:
        """Whether the layouts in ``model_times_ms`` were timed compiled (ahead of time)."""
        return self.compile_mode == "aot" and len(self.model_times_ms) > 1

    @property
    def approximate(self) -> bool:
        """True when a gate was frozen: the result then only approximates the original."""
        return bool(self.frozen_gates)

    def counts(self) -> Counter:
        """How many inherited layers became what (``"dense"``, ``"folded pair"``, ...)."""
        return Counter(d.became for d in self.layers if d.kind in ("InherConv2d", "InherLinear"))

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["approximate"] = self.approximate
        out["compiled"], out["model_times_compiled"] = self.compiled, self.model_times_compiled
        return out

    def summary(self) -> str:
        inherited = sum(self.counts().values())
        kinds = ", ".join(f"{n} {k}" for k, n in sorted(self.counts().items())) or "none"
        times = " vs ".join(f"{k} {v:.3f} ms" for k, v in self.model_times_ms.items())
        lines = [
            f"{inherited} inherited layers: {kinds}; {len(self.removed_batchnorms)} BatchNorm folded "
            f"(pairs found by {self.batchnorm_pairing})",
            f"timed on {self.device}, {self.threads} thread(s), example input {self.example_shape}; memory format "
            f"{self.memory_format}" + (f" ({'compiled: ' if self.model_times_compiled else ''}{times})"
                                       if len(self.model_times_ms) > 1 else "")
            + self._compiled_note(),
            f"max |optimised − original| on the example: {self.max_abs_diff:.3g} (outputs up to "
            f"{self.reference_scale:.3g}; exact transforms stay below {self.tolerance:g} × that)",
        ]
        if self.variant_times_ms:
            times = " vs ".join(f"{k} {v:.3f} ms" for k, v in self.variant_times_ms.items())
            lines.append(f"whole model timed: {times}; kept: {self.variant}")
        if self.shared_inputs:
            fused = [g for g in self.shared_inputs if g.fused]
            lines.append(f"{len(self.shared_inputs)} group(s) of layers sharing an input; {len(fused)} fused into one "
                         f"matmul each (kept only where faster)")
        if self.frozen_gates:
            lines.append(f"APPROXIMATE: {len(self.frozen_gates)} gate(s) frozen at their mean over the example "
                         f"input; the deviation above is what freezing costs on it")
        return "\n".join(lines)

    def _compiled_note(self) -> str:
        if not self.compiled:
            return ""
        if self.compile_mode == "aot":
            return "; compiled ahead of time (torch.export + AOTInductor, package " + (
                self.package_path or "temporary") + ")"
        return "; torch.compile" + (" (" + ", ".join(f"{k}={v}" for k, v in self.compile_options.items()) + ")"
                                    if self.compile_options else "")

    def __str__(self) -> str:
        header = ("layer", "type", "became", "BatchNorm folded", "input", "times (ms; * = kept)", "note")
        rows = []
        for d in self.layers:
            times = " · ".join(f"{k} {v:.3f}{'*' if k == d.chosen else ''}" for k, v in d.times_ms.items())
            note = d.note
            if d.gate_deviation is not None:
                note = (note + "; " if note else "") + f"gate frozen, max |g − ḡ| {d.gate_deviation:.3g}"
            shape = "×".join(map(str, d.input_shape)) if d.input_shape else ""
            rows.append((d.name, d.kind, d.became, d.batchnorm or "", shape, times, note))
        widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]
        fmt = "  ".join(f"{{:<{w}}}" for w in widths)
        lines = [fmt.format(*header), fmt.format(*("-" * w for w in widths))]
        lines += [fmt.format(*r).rstrip() for r in rows]
        return "\n".join(lines) + "\n\n" + self.summary()
