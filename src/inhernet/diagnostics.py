"""Do the heads live? Per-layer measurements of the H up-projection heads and their gate.

With the paper's SVD initialisation every head of an inherited layer starts as the same copy of
``U_r Σ_r^{1/2}``. Identical heads give the gate the gradient ``g_h (u_h − y)ᵀ ∂L/∂y = 0``, so the
gate never learns and the heads stay copies: H heads then cost H times the parameters of one and do
the work of one. Three numbers tell whether that happened:

* **head cosine**: pairwise cosine similarity of the heads (each head's ``up[h]`` flattened, its
  bias appended when the layer has one), mean and max over the ``H(H−1)/2`` pairs. 1 = copies.
* **gate entropy**: the entropy of the gate's softmax weights on real inputs, divided by ``log H``
  and averaged over positions (linear layers) or samples (convolutions): 1 = the uniform mix,
  0 = one head per input. A gate that does not learn stays near its initial value.
* **gate gradient ratio**: ``‖∇gate‖ / ‖∇up‖`` after a backward pass (the gate's weight and bias
  gradients together, over the heads' ``up`` gradient). ≈ 0 means the gate gets no signal.

:func:`head_report` gathers them for a model (one row per inherited layer with H > 1);
:class:`GateMonitor` accumulates the gate entropy over many forward passes through forward hooks
(training uses it through :class:`inhernet.train.heads.HeadDiagnostics`, which logs the numbers
per epoch). Everything here reads the model and changes nothing: hooks are detached and return
nothing, so outputs and gradients are those of the model without them.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import asdict, dataclass, field
from typing import Any, Optional

import torch
from torch import Tensor, nn

from .layers import INHER_LAYERS
from .utils import call_model, eval_mode, markdown_table, text_table

__all__ = [
    "GateMonitor",
    "HeadReport",
    "HeadRow",
    "gate_entropy",
    "gate_grad_ratio",
    "gate_grad_ratios",
    "gated_layers",
    "has_gated_layers",
    "head_report",
    "head_stats",
    "multi_head_layers",
]


def multi_head_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(name, layer)`` of every inherited layer of ``model`` with more than one head, in module order."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, INHER_LAYERS) and m.heads > 1]


def gated_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(name, layer)`` of every inherited layer whose heads are mixed by a learned softmax gate."""
    return [(n, m) for n, m in multi_head_layers(model) if m.gate is not None]


def has_gated_layers(model: nn.Module) -> bool:
    """Whether ``model`` holds at least one inherited layer with a learned gate (H > 1, ``gate="softmax"``)."""
    return any(isinstance(m, INHER_LAYERS) and m.gate is not None for m in model.modules())


def _head_vectors(layer: nn.Module) -> Tensor:
    """``(H, d_out·r [+ d_out])``: each head's up-projection flattened, its bias appended (float64)."""
    up = layer.up.detach().double().flatten(1)
    if layer.bias is not None:
        up = torch.cat([up, layer.bias.detach().double()], dim=1)
    return up


@torch.no_grad()
def head_stats(layer: nn.Module) -> dict[str, Any]:
    """Similarity of one inherited layer's heads, from its weights.

    Returns ``{"heads", "cosine_mean", "cosine_max", "spread"}``: the pairwise cosine similarity of
    the heads (``up[h]`` flattened with the bias appended), mean and max over pairs, and the relative
    spread ``mean_h ‖up_h − mean_h up‖ / ‖mean_h up‖`` (0 for copies; the ``head_init_scale`` of a
    perturbed start). With one head there are no pairs: cosine and spread are None; a zero mean
    head gives a spread of None too.
    """
    if not isinstance(layer, INHER_LAYERS):
        raise TypeError(f"head_stats needs an InherLinear or InherConv2d, not {type(layer).__name__}.")
    h = layer.heads
    out: dict[str, Any] = {"heads": h, "cosine_mean": None, "cosine_max": None, "spread": None}
    if h < 2:
        return out
    vecs = _head_vectors(layer)
    unit = vecs / vecs.norm(dim=1, keepdim=True).clamp_min(1e-300)
    cos = (unit @ unit.T).clamp(-1.0, 1.0)
    i, j = torch.triu_indices(h, h, offset=1)
    pairs = cos[i, j]
    out["cosine_mean"] = float(pairs.mean())
    out["cosine_max"] = float(pairs.max())
    up = layer.up.detach().double().flatten(1)
    mean = up.mean(0)
    ref = float(mean.norm())
    if ref > 0:
        out["spread"] = float((up - mean).norm(dim=1).mean()) / ref
    return out


def gate_entropy(weights: Tensor) -> Tensor:
    """Entropy of mixing weights ``(*batch, H)`` (rows summing to 1) divided by ``log H``, per row:
    1 = the uniform mix, 0 = all weight on one head. Shape ``(*batch,)``."""
    h = weights.shape[-1]
    if h < 2:
        return weights.new_zeros(weights.shape[:-1])
    w = weights.float()
    ent = -(w * torch.log(w.clamp_min(1e-30))).sum(-1)
    return ent / math.log(h)


@torch.no_grad()
def gate_grad_ratio(layer: nn.Module) -> Optional[float]:
    """``‖∇gate‖ / ‖∇up‖`` from the gradients now in ``.grad`` (gate weight and bias together, over
    the heads' up-projection), or None without a gate, without gradients, or with a zero ``∇up``."""
    gate = getattr(layer, "gate", None)
    if gate is None or gate.weight.grad is None or layer.up.grad is None:
        return None
    g2 = gate.weight.grad.double().pow(2).sum()
    if gate.bias is not None and gate.bias.grad is not None:
        g2 = g2 + gate.bias.grad.double().pow(2).sum()
    up = float(layer.up.grad.double().norm())
    return float(g2.sqrt()) / up if up > 0 else None


class GateMonitor:
    """Accumulate every gated inherited layer's gate entropy (and mean gate weights) over forward passes.

    A forward hook on each layer's gate (the ``nn.Linear`` producing the logits whose softmax mixes
    the heads) adds the normalised entropy of ``softmax(logits)`` to a running sum, detached and on
    the logits' device (no synchronisation per forward). The hooks return nothing, so the model's
    outputs and gradients do not change. ``training_only=True`` counts only forwards in training
    mode (not the validation passes of a training loop); ``enabled = False`` pauses the counting.

        with GateMonitor(model) as mon:
            model(x)
        mon.entropy()          # {"layer1.0.conv1": 0.97, ...}; None for a layer not run yet
    """

    def __init__(self, model: nn.Module, *, training_only: bool = False) -> None:
        self.layers = dict(gated_layers(model))
        self.training_only = bool(training_only)
        self.enabled = True  #: False: forwards are not counted (the hooks stay)
        self._handles: list[Any] = []
        self._entropy: dict[str, Tensor] = {}
        self._weights: dict[str, Tensor] = {}
        self._count: dict[str, int] = {}
        self._log_h: dict[str, float] = {}
        for name, layer in self.layers.items():
            self._handles.append(layer.gate.register_forward_hook(self._hook(name)))

    def _hook(self, name: str):
        self._log_h[name] = math.log(self.layers[name].heads)

        def hook(module: nn.Module, args: Any, logits: Tensor) -> None:
            if not self.enabled or (self.training_only and not module.training):
                return
            with torch.no_grad():  # few, small kernels: this runs on every forward of every gated layer
                g = torch.softmax(logits.detach().reshape(-1, logits.shape[-1]).float(), dim=-1)
                # Σ over rows of -Σ_h g ln g (÷ log H when read); float64 sums: an epoch has millions of rows
                ent = torch.special.entr(g).sum(dtype=torch.float64)
                w = g.sum(0, dtype=torch.float64)
                if name in self._entropy:
                    self._entropy[name] += ent
                    self._weights[name] += w
                else:
                    self._entropy[name], self._weights[name] = ent, w
                self._count[name] = self._count.get(name, 0) + g.shape[0]
        return hook

    def entropy(self) -> dict[str, Optional[float]]:
        """Per layer, the mean normalised gate entropy over the positions/samples seen since the last
        :meth:`reset` (None for a layer that has not run)."""
        return {n: (float(self._entropy[n]) / (self._count[n] * self._log_h[n]) if self._count.get(n) else None)
                for n in self.layers}

    def gate_means(self) -> dict[str, Optional[list[float]]]:
        """Per layer, the mean gate weight of each head over the positions/samples seen (None if not run)."""
        return {n: ((self._weights[n] / self._count[n]).tolist() if self._count.get(n) else None)
                for n in self.layers}

    def reset(self) -> None:
        """Forget what was accumulated (the hooks stay)."""
        self._entropy.clear()
        self._weights.clear()
        self._count.clear()

    def remove(self) -> None:
        """Remove the hooks (what was accumulated can still be read)."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def __enter__(self) -> "GateMonitor":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.remove()


@dataclass
class HeadRow:
    """One inherited layer with H > 1: its heads' similarity, and where measured, its gate's behaviour."""

    name: str
    kind: str  # "Linear" | "Conv2d"
    heads: int
    gate: bool  # a learned softmax gate (False: gate="none", fixed 1/H)
    cosine_mean: Optional[float]
    cosine_max: Optional[float]
    spread: Optional[float]
    entropy: Optional[float] = None  # normalised gate entropy on the inputs seen (1 = uniform)
    gate_mean: Optional[list[float]] = None  # mean gate weight per head on the inputs seen
    grad_ratio: Optional[float] = None  # ‖∇gate‖ / ‖∇up‖


def _median(xs: list[Optional[float]]) -> Optional[float]:
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def _mean(xs: list[Optional[float]]) -> Optional[float]:
    xs = [x for x in xs if x is not None]
    return statistics.fmean(xs) if xs else None


@dataclass
class HeadReport:
    """Per-layer table of the heads of an inherited model; ``print()`` it, or use ``rows`` / ``summary()``."""

    rows: list[HeadRow] = field(default_factory=list)

    HEADER = ("layer", "kind", "heads", "gate", "head cos mean", "head cos max", "spread", "gate entropy",
              "gate weights", "grad ratio")

    @classmethod
    def from_model(cls, model: nn.Module, *, entropy: Optional[dict] = None, gate_means: Optional[dict] = None,
                   grad_ratios: Optional[dict] = None) -> "HeadReport":
        """Rows from ``model``'s weights, plus per-layer gate entropies, mean gate weights and gradient
        ratios measured elsewhere (dicts by layer name; missing names are left empty)."""
        rows = []
        for name, layer in multi_head_layers(model):
            st = head_stats(layer)
            gated = layer.gate is not None
            rows.append(HeadRow(
                name=name, kind="Conv2d" if layer.down.dim() == 4 else "Linear", heads=layer.heads, gate=gated,
                cosine_mean=st["cosine_mean"], cosine_max=st["cosine_max"], spread=st["spread"],
                entropy=(entropy or {}).get(name) if gated else None,
                gate_mean=(gate_means or {}).get(name) if gated else None,
                grad_ratio=(grad_ratios or {}).get(name) if gated else None,
            ))
        return cls(rows)

    def summary(self) -> dict[str, Any]:
        """Over layers: ``layers`` and ``gated`` counts, ``cosine_mean`` (mean of the layers' mean
        cosines), ``cosine_max`` (max), ``spread`` (mean), ``entropy`` (mean over gated layers
        measured) and ``grad_ratio`` (median over gated layers measured); None where nothing was measured."""
        cos_max = [r.cosine_max for r in self.rows if r.cosine_max is not None]
        return {
            "layers": len(self.rows),
            "gated": sum(r.gate for r in self.rows),
            "cosine_mean": _mean([r.cosine_mean for r in self.rows]),
            "cosine_max": max(cos_max) if cos_max else None,
            "spread": _mean([r.spread for r in self.rows]),
            "entropy": _mean([r.entropy for r in self.rows]),
            "grad_ratio": _median([r.grad_ratio for r in self.rows]),
        }

    def to_dict(self) -> dict[str, Any]:
        """``{"summary": ..., "layers": [row, ...]}``, JSON-ready."""
        return {"summary": self.summary(), "layers": [asdict(r) for r in self.rows]}

    def _cells(self) -> list[tuple[str, ...]]:
        def num(x: Optional[float], fmt: str) -> str:
            return "–" if x is None else format(x, fmt)

        return [(
            r.name, r.kind, str(r.heads), "yes" if r.gate else "no",
            num(r.cosine_mean, ".6f"), num(r.cosine_max, ".6f"), num(r.spread, ".2e"), num(r.entropy, ".4f"),
            "–" if r.gate_mean is None else " ".join(f"{w:.3f}" for w in r.gate_mean),
            num(r.grad_ratio, ".2e"),
        ) for r in self.rows]

    def _summary_line(self) -> str:
        s = self.summary()
        if not s["layers"]:
            return "no inherited layer with more than one head"

        def num(x: Optional[float], fmt: str) -> str:
            return "–" if x is None else format(x, fmt)

        return (f"{s['layers']} multi-head layers ({s['gated']} gated); head cosine mean "
                f"{num(s['cosine_mean'], '.6f')}, max {num(s['cosine_max'], '.6f')}; gate entropy "
                f"{num(s['entropy'], '.4f')}; gate grad ratio (median) {num(s['grad_ratio'], '.2e')}")

    def __str__(self) -> str:
        return "\n".join([*text_table(list(self.HEADER), self._cells(), {0, 1, 3}), "", self._summary_line()])

    def to_markdown(self) -> str:
        return "\n".join([*markdown_table(list(self.HEADER), self._cells()), "", self._summary_line()])


@torch.no_grad()
def _run(model: nn.Module, example_input: Any) -> None:
    """One forward pass of ``model`` on a tensor, a tuple of positional args or a dict of keyword args,
    in eval mode (each submodule's training flag is put back afterwards)."""
    with eval_mode(model):
        call_model(model, example_input)


def head_report(model: nn.Module, example_input: Any = None) -> HeadReport:
    """One row per inherited layer of ``model`` with H > 1: heads, gate, head cosine (mean / max
    over pairs), relative spread of the heads.

    With ``example_input`` (a tensor, a tuple of positional args or a dict of keyword args) the model
    is run once on it (eval mode, no gradients) and each gated layer's row gets the normalised gate
    entropy (1 = uniform) and the mean gate weight of each head. When the layers' ``.grad`` are
    populated (after a ``backward()``), each gated row gets ``‖∇gate‖ / ‖∇up‖``. The model is not
    changed. ``print(report)`` gives a table; ``report.summary()`` the numbers over layers.
    """
    entropy = gate_means = None
    if example_input is not None:
        with GateMonitor(model) as mon:
            _run(model, example_input)
        entropy, gate_means = mon.entropy(), mon.gate_means()
    grads = {n: gate_grad_ratio(m) for n, m in gated_layers(model)}
    return HeadReport.from_model(model, entropy=entropy, gate_means=gate_means, grad_ratios=grads)


@torch.no_grad()
def gate_grad_ratios(layers: list[nn.Module]) -> Tensor:
    """``‖∇gate‖ / ‖∇up‖`` of each of ``layers`` (gated inherited layers) as one float32 tensor on
    the gradients' device, NaN where a gradient is missing or ``∇up`` is zero. No value leaves the
    device and the norms are taken by a few fused multi-tensor kernels (not a few per layer), so a
    training loop can call it every step: 55 layers of an inherited resnet56 cost under 1 ms on a CPU."""
    if not layers:
        return torch.zeros(0)
    device = layers[0].up.device
    grads = [(m.gate.weight.grad, None if m.gate.bias is None else m.gate.bias.grad, m.up.grad) for m in layers]
    foreach_norm = getattr(torch, "_foreach_norm", None)
    fast = foreach_norm is not None and all(
        w is not None and b is not None and u is not None and w.device == b.device == u.device == device
        for w, b, u in grads)
    if fast:
        w, b, u = (torch.stack(foreach_norm([g[k] for g in grads])).float() for k in range(3))
        gate = torch.sqrt(w * w + b * b)
    else:  # missing gradients, a gate without bias, a model split over devices: one layer at a time
        gate_l, up_l = [], []
        for w, b, u in grads:
            if w is None or u is None:
                gate_l.append(torch.full((), float("nan"), device=device))
                up_l.append(torch.ones((), device=device))
                continue
            g2 = w.float().pow(2).sum() + (b.float().pow(2).sum() if b is not None else 0.0)
            gate_l.append(g2.sqrt().to(device))
            up_l.append(torch.linalg.vector_norm(u.float()).to(device))
        gate, u = torch.stack(gate_l), torch.stack(up_l)
    return torch.where(u > 0, gate / u, torch.full_like(u, float("nan")))
