"""The passes of :func:`inhernet.optimize_for_inference`: for every layer the candidate forms
(:mod:`~inhernet.optimize.forms`) timed side by side on the input shape it sees
(:mod:`~inhernet.optimize.timing`), the fastest exact one kept, BatchNorm folded
(:mod:`~inhernet.optimize.batchnorm`), projections sharing an input fused, the memory format and the
whole-model variant chosen, the result checked against the original; and :func:`as_trained`."""

from __future__ import annotations

import copy
import math
import shutil
import tempfile
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..config import ConfigError
from ..layers import INHER_LAYERS, InherConv2d
from ..plan import PLAN_ATTR
from ..utils import call_model, nested_tensors
from .aot import aot_compile, package_file
from .batchnorm import bn_affine, fold_bn_into_dense, fold_bn_into_heads, pairs_by_fx, pairs_by_hooks, verified_pairs
from .capture import LayerCalls, capture_calls, max_diff, replace_module, select_frozen
from .forms import (LAYOUTS, FactorisedConv2d, GatedConv2d, GatedLinear, InOutLinear, SharedInputProduct,
                    SharedInputProjection, wide)
from .report import (DEFAULT_MIN_SAVING, DEFAULT_TOLERANCE, LONE_LAYER, PER_LAYER, PLAIN, REPORT_ATTR, LayerDecision,
                     OptimizationReport, SharedInputGroup)
from .timing import default_clock, time_candidates

__all__ = ["COMPILE_OPTIONS", "as_trained", "optimize_for_inference"]


_MEMORY_FORMATS = ("auto", "contiguous", "channels_last")

#: the TorchInductor options ``compile=True`` uses, per device type. On a CPU: the C++ wrapper, which
#: runs each compiled graph's kernel calls from generated C++ instead of generated Python — a gated
#: layer is a handful of small calls (gate, softmax, mixing, products), and at batch 1 their Python
#: dispatch is what is left after the compiler has fused the rest (measured, resnet56 → InherNet r8
#: H = 3 with heads that differ, batch 1, one thread: 4.09 → 3.86 ms, 1.33× → 1.42× the eager
#: teacher; batch 64 the same; docs/benchmarks/compile_options.md). The first call compiles longer.
COMPILE_OPTIONS: dict[str, dict[str, Any]] = {"cpu": {"cpp_wrapper": True}}


def _compile_options(compile: bool | Mapping[str, Any], device: torch.device) -> dict[str, Any] | None:
    """The inductor options of a ``compile`` argument (None: no compiling); see :data:`COMPILE_OPTIONS`."""
    if isinstance(compile, bool):
        return dict(COMPILE_OPTIONS.get(device.type, {})) if compile else None
    if isinstance(compile, Mapping) and all(isinstance(k, str) for k in compile):
        if "freezing" in compile:
            # torch.compile(options={"freezing": True}) compiles without freezing (torch 2.13: inductor
            # decides it from its global config, outside the options' patch; the output code keeps
            # plain convolutions) — refused rather than silently ignored
            raise ConfigError(
                "compile={'freezing': ...}: torch.compile ignores 'freezing' among its options (torch 2.13), "
                "so the model would compile unfrozen. Set torch._inductor.config.freezing = True before "
                "optimize_for_inference(..., compile=True) instead (measured no faster here: "
                "docs/benchmarks/compile_options.md).")
        return dict(compile)
    raise ConfigError(f"compile={compile!r}: give True / False, 'aot' (compiled ahead of time into a package), "
                      "or a dict of TorchInductor options for torch.compile (e.g. {'cpp_wrapper': False}; {} is "
                      "torch's default).")


#: a gated linear layer stays as it is only when faster than its best :class:`GatedLinear` form by
#: more than this factor (the inference form can share its first product with its neighbours)
_KEPT_MARGIN = 1.03


def _channels_last_input(module: nn.Module, args: tuple) -> tuple | None:
    """Forward pre-hook of a channels-last model: its 4-D tensor input laid out channels-last."""
    if args and isinstance(args[0], Tensor) and args[0].dim() == 4:
        return (args[0].contiguous(memory_format=torch.channels_last), *args[1:])
    return None


@dataclass
class _Settings:
    memory_format: str
    min_speedup: float
    rounds: int
    min_saving: float | None = DEFAULT_MIN_SAVING
    fuse_shared_inputs: bool = True
    layouts: tuple[str, ...] = LAYOUTS
    cache: dict = field(default_factory=dict)


def _timing_input(rec: LayerCalls, device: torch.device, memory_format: str) -> Tensor:
    x = torch.randn(rec.input_shape, dtype=rec.dtype, device=device)
    if memory_format == "channels_last" and x.dim() == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    return x


def _prepare(module: nn.Module, memory_format: str) -> nn.Module:
    module.eval().requires_grad_(False)
    if memory_format == "channels_last":
        module.to(memory_format=torch.channels_last)
    return module


def _timed(key: tuple, candidates: dict[str, Callable], rec: LayerCalls | None, ref: Tensor, s: _Settings,
           ) -> tuple[dict[str, float], str]:
    """Times of the candidates on the layer's captured input shape, shared by layers of one key."""
    if rec is None or rec.input_shape is None:
        return {}, "not run on the example input: not timed"
    if key in s.cache:
        return s.cache[key], ""
    times = time_candidates(candidates, _timing_input(rec, ref.device, s.memory_format), rounds=s.rounds,
                            statistic="min", clock=default_clock(ref.device))
    s.cache[key] = times
    return times, ""


def _dense_conv(layer: InherConv2d, weight: Tensor, bias: Tensor | None) -> nn.Conv2d:
    conv = nn.Conv2d(layer.in_channels, layer.out_channels, layer.kernel_size, stride=layer.stride,
                     padding=layer.padding, dilation=layer.dilation, bias=bias is not None,
                     device=layer.up.device, dtype=layer.up.dtype)
    with torch.no_grad():
        conv.weight.copy_(weight.reshape(conv.weight.shape))
        if bias is not None:
            conv.bias.copy_(bias)
    return conv


def _identical_heads(layer: nn.Module) -> bool:
    """Whether every head of a gated layer equals the first (up-projection, bias and, for a
    symmetric layer, its block of the down-projection): then ``Σ_h g_h (B z + b) = B z + b`` for any
    gate weights summing to one — the gate does not matter (an untrained InherNet inherited with
    ``head_init="copies"``)."""
    if layer.heads == 1:
        return True
    if not all(torch.equal(layer.up[h], layer.up[0]) for h in range(1, layer.heads)):
        return False
    if layer.bias is not None and not all(torch.equal(layer.bias[h], layer.bias[0]) for h in range(1, layer.heads)):
        return False
    if layer.structure == "symmetric":
        blocks = layer.down.unflatten(0, (layer.heads, layer.rank))
        return all(torch.equal(blocks[h], blocks[0]) for h in range(1, layer.heads))
    return True


def _fixed_gate(layer: nn.Module, rec: LayerCalls | None, frozen: bool) -> tuple[Tensor | None, float | None, str]:
    """The fixed head weights of a layer whose heads fold (float64, shape H), for a frozen gate its
    largest deviation |g − ḡ| on the example, and why they are fixed: ``"no gate"``, ``"identical
    heads"`` (exact; the weights are then ``(1, 0, …)``: head 0 alone), ``"constant gate"`` (a gate
    whose weight is zero — an untrained InherNet inherited with ``head_init="perturbed"`` or
    ``"split"`` — gives every input ``softmax(bias)``; exact), ``"frozen"``; ``(None, None, "")`` when
    the gate must run."""
    device = layer.up.device
    if layer.gate is None:
        return torch.full((layer.heads,), 1.0 / layer.heads, dtype=torch.float64, device=device), None, "no gate"
    if _identical_heads(layer):
        first = torch.zeros(layer.heads, dtype=torch.float64, device=device)
        first[0] = 1.0
        return first, None, "identical heads"
    if not layer.gate.weight.any():  # g = softmax(0 · z + c) = softmax(c) for every input
        bias = layer.gate.bias
        logits = torch.zeros(layer.heads, dtype=torch.float64, device=device) if bias is None else wide(bias)
        return torch.softmax(logits, 0), None, "constant gate"
    if not frozen:
        return None, None, ""
    if rec is None or not rec.gates:
        raise ConfigError("freeze_gate: a layer whose gate is to be frozen was not run on the example input")
    g = torch.cat(rec.gates)
    mean = g.mean(0)
    return (mean / mean.sum()).to(device), float((g - mean).abs().max()), "frozen"


def _folded_factors(layer: nn.Module, g: Tensor, bn: nn.Module | None) -> tuple[Tensor, Tensor | None]:
    """``(up, bias)`` of the one up-projection (d_out × R) the heads amount to under fixed head
    weights ``g``, with BatchNorm folded in (float64): ``Σ_h g_h B_h`` on a shared down, the heads
    ``g_h B_h`` side by side for a symmetric layer (whose down rows are already head by head)."""
    up = wide(layer.up)
    if layer.structure == "symmetric":
        up_eff = (up * g[:, None, None]).permute(1, 0, 2).reshape(up.shape[1], -1)
    else:
        up_eff = torch.einsum("h,hor->or", g, up)
    bias = None if layer.bias is None else g @ wide(layer.bias)
    if bn is not None:
        s, t = bn_affine(bn)
        up_eff = up_eff * s[:, None]
        bias = t if bias is None else bias * s + t
    return up_eff, bias


def _linear(weight: Tensor, bias: Tensor | None) -> nn.Linear:
    """An ``nn.Linear`` holding ``weight`` ``(out, in)`` and ``bias`` (copies, no gradients)."""
    out = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        out.weight.copy_(weight)
        if bias is not None:
            out.bias.copy_(bias)
    return out.requires_grad_(False)


def _dense_params(layer: nn.Module, bias: bool) -> int:
    return math.prod(layer.dense_shape) + (layer.up.shape[1] if bias else 0)


def _too_large(fraction: float, s: _Settings) -> bool:
    """Whether a factorised form keeping ``fraction`` of the dense parameters saves less than
    ``min_saving``."""
    return s.min_saving is not None and fraction > 1.0 - s.min_saving


def _optimize_inherited(name: str, layer: nn.Module, rec: LayerCalls | None, bn: nn.Module | None,
                        frozen: bool, s: _Settings) -> tuple[nn.Module, LayerDecision]:
    kind = type(layer).__name__
    decision = LayerDecision(name, kind, "", input_shape=rec.input_shape if rec else None)
    g, deviation, why = _fixed_gate(layer, rec, frozen)
    decision.gate_deviation = deviation
    dtype, device = layer.up.dtype, layer.up.device
    conv = isinstance(layer, InherConv2d)
    base_key = (kind, rec.input_shape if rec else None, rec.dtype if rec else None, s.memory_format,
                layer.dense_shape, layer.rank, layer.heads, layer.structure,
                getattr(layer, "stride", None), getattr(layer, "padding", None), getattr(layer, "dilation", None))
    if g is not None:  # heads fold: a plain pair, or dense when that is not faster
        up, bias = _folded_factors(layer, g, bn)
        down = wide(layer.down)
        if why == "identical heads" and layer.structure == "symmetric":  # head 0's block alone
            up, down = up[:, : layer.rank], down[: layer.rank]
        dense_w = (up @ down.flatten(1)).reshape(up.shape[0], *down.shape[1:]).to(dtype)
        up, down = up.to(dtype), down.to(dtype)
        bias = None if bias is None else bias.to(dtype)
        if conv:
            dense = _dense_conv(layer, dense_w, bias)
            down_conv = nn.Conv2d(layer.in_channels, down.shape[0], layer.kernel_size, stride=layer.stride,
                                  padding=layer.padding, dilation=layer.dilation, bias=False,
                                  device=device, dtype=dtype)
            up_conv = nn.Conv2d(down.shape[0], up.shape[0], 1, bias=bias is not None, device=device, dtype=dtype)
            with torch.no_grad():
                down_conv.weight.copy_(down)
                up_conv.weight.copy_(up[:, :, None, None])
                if bias is not None:
                    up_conv.bias.copy_(bias)
            pairs = {"folded pair": FactorisedConv2d(down_conv, up_conv, "matmul"),
                     "folded pair (1×1 conv)": FactorisedConv2d(down_conv, up_conv, "conv")}
            denses = {"dense": dense}
        else:
            dense = _linear(dense_w, bias)
            denses = {"dense": dense}
            pairs = {"folded pair": nn.Sequential(_linear(down, None), _linear(up, bias))}
            if "in×out" in s.layouts:
                denses["dense (in×out)"] = InOutLinear(dense_w, bias)
                pairs["folded pair (in×out)"] = nn.Sequential(InOutLinear(down, None), InOutLinear(up, bias))
        candidates = {k: _prepare(m, s.memory_format) for k, m in {**denses, **pairs}.items()}
        fraction = (down.numel() + up.numel() + (up.shape[0] if bias is not None else 0)) / _dense_params(
            layer, bias is not None)
        decision.param_fraction = fraction
        too_large = _too_large(fraction, s)  # not worth a factorised kernel: the exact product of its factors
        times, note = _timed((*base_key, "fold", down.shape[0], bias is not None), candidates, rec, layer.up, s)
        if not times:
            chosen = "dense" if too_large else "folded pair"
        else:
            chosen = min(denses, key=lambda k: times[k])
            pair = min(pairs, key=lambda k: times[k])
            if not too_large and times[chosen] >= s.min_speedup * times[pair]:
                chosen = pair
        if too_large:
            note = (note + "; " if note else "") + (f"the pair keeps {fraction:.0%} of the dense parameters, more "
                                                    f"than 1 − min_saving = {1 - s.min_saving:.0%}: dense")
        decision.became = "dense" if chosen in denses else "folded pair"
        decision.times_ms, decision.chosen, decision.note = times, chosen, note
        if why == "identical heads" and layer.heads > 1:
            decision.add_note("heads identical: folded exactly (the gate weights sum to one)")
        if why == "constant gate":
            decision.add_note("gate weight zero: the gate is the constant softmax(bias), folded exactly")
        if why == "frozen":
            decision.add_note("approximation (gate frozen at its mean)")
        return candidates[chosen], decision

    # gated: the gate must run; BatchNorm goes into every head
    if bn is not None:
        fold_bn_into_heads(layer, bn)
    _prepare(layer, s.memory_format)
    candidates: dict[str, nn.Module] = {"gated kept": layer}
    up, bias = layer.up.detach(), None if layer.bias is None else layer.bias.detach()
    uniform = torch.full((layer.heads,), 1.0 / layer.heads, dtype=torch.float64, device=device)
    ref_w, ref_b = _folded_factors(layer, uniform, None)
    ref_w, ref_b = (ref_w @ wide(layer.down).flatten(1)).to(dtype), None if ref_b is None else ref_b.to(dtype)
    if conv:
        down_conv = nn.Conv2d(layer.in_channels, layer.down.shape[0], layer.kernel_size, stride=layer.stride,
                              padding=layer.padding, dilation=layer.dilation, bias=False, device=device, dtype=dtype)
        with torch.no_grad():
            down_conv.weight.copy_(layer.down)
        if layer.structure == "asymmetric":
            candidates["gated per-sample"] = GatedConv2d(down_conv, copy.deepcopy(layer.gate), up, bias,
                                                         structure=layer.structure, mixing="per-sample")
        candidates["gated shared-weight"] = GatedConv2d(down_conv, copy.deepcopy(layer.gate), up, bias,
                                                        structure=layer.structure, mixing="shared")
        reference = _dense_conv(layer, ref_w, ref_b)
    else:
        mixings = ("shared", "per-token") if layer.structure == "asymmetric" else ("shared",)
        for mixing in mixings:
            label = "gated shared-weight" if mixing == "shared" else "gated per-token"
            for layout in s.layouts:
                suffix = "" if layout == "out×in" else " (in×out)"
                candidates[label + suffix] = GatedLinear.from_layer(layer, mixing=mixing, layout=layout)
        reference = _linear(ref_w, ref_b)
    candidates = {k: _prepare(m, s.memory_format) for k, m in candidates.items()}
    timed = {**candidates, "dense (reference)": _prepare(reference, s.memory_format)}
    times, note = _timed((*base_key, "gated", layer.bias is not None), timed, rec, layer.up, s)
    chosen = min(candidates, key=lambda k: times[k]) if times else "gated kept"
    if not conv and chosen == "gated kept" and len(candidates) > 1:
        # a near tie goes to the inference form: its first product can be fused with its neighbours'
        best = min((k for k in candidates if k != "gated kept"), key=lambda k: times[k])
        if times[best] <= _KEPT_MARGIN * times["gated kept"]:
            chosen = best
    decision.became = chosen.removesuffix(" (in×out)")
    decision.times_ms, decision.chosen, decision.note = times, chosen, note
    if times and times[chosen] > 1.05 * times["dense (reference)"]:
        decision.add_note(f"{times[chosen] / times['dense (reference)']:.2f}× the dense layer's time; "
                          "freeze_gate would let it fold (an approximation)")
    fraction = sum(p.numel() for p in layer.parameters()) / _dense_params(layer, layer.bias is not None)
    decision.param_fraction = fraction
    if _too_large(fraction, s):
        decision.add_note(f"keeps {fraction:.0%} of the dense parameters (min_saving {s.min_saving:g}) but its gate "
                          "runs, so it cannot become one dense layer exactly; InheritConfig(min_saving=...) keeps "
                          "such layers dense at inheritance")
    return candidates[chosen], decision


_DENSE_LINEARS = (nn.Linear, InOutLinear)


def _uses_new_forms(model: nn.Module) -> bool:
    """Whether a built model holds fused products or weights stored ``in×out``."""
    return any(isinstance(m, (SharedInputProjection, InOutLinear)) or getattr(m, "layout", None) == "in×out"
               for m in model.modules())


def _first_product(module: nn.Module) -> tuple[Tensor, Tensor | None, nn.Module | None] | None:
    """``(weight (out, in), bias, tail)`` of a layer's form whose output is
    ``tail(F.linear(x, weight, bias))`` (no tail: the product is the output), or None for a form
    that cannot share its first product."""
    if type(module) in _DENSE_LINEARS:
        return module.weight, module.bias, None
    if isinstance(module, GatedLinear):
        return (*module.first_product(), module.mixer)
    if (type(module) is nn.Sequential and len(module) == 2 and all(type(m) in _DENSE_LINEARS for m in module)
            and module[0].bias is None):
        return module[0].weight, None, module[1]
    return None


def _relaid_linear(module: nn.Linear, decision: LayerDecision, rec: LayerCalls | None, s: _Settings) -> nn.Module:
    """A dense ``nn.Linear`` or the same weight stored in × out (:class:`InOutLinear`), whichever
    is faster on the layer's input (``decision`` records the times and the choice)."""
    candidates = {"dense": module, "dense (in×out)": _prepare(InOutLinear.from_linear(module), s.memory_format)}
    key = ("linear", rec.input_shape if rec else None, rec.dtype if rec else None, tuple(module.weight.shape),
           module.bias is not None)
    times, note = _timed(key, candidates, rec, module.weight, s)
    chosen = min(candidates, key=lambda k: times[k]) if times else "dense"
    decision.times_ms, decision.chosen = times, chosen
    if chosen != "dense":
        decision.became = "dense"
        decision.add_note("weight stored in × out")
    return candidates[chosen]


def _signature(module: nn.Module) -> tuple:
    """What a layer's timing depends on: its type, configuration and parameter shapes."""
    return (type(module).__name__, module.extra_repr(), tuple(tuple(p.shape) for p in module.parameters()))


def _fuse_shared_inputs(work: nn.Module, calls: dict[str, LayerCalls], decisions: list[LayerDecision],
                        s: _Settings) -> list[SharedInputGroup]:
    """Linear layers that read the same input tensor in every call on the example (their
    :attr:`LayerCalls.inputs` lists are equal) are timed computing their first products separately and
    as one matmul (:class:`SharedInputProduct`); the fused form replaces them where it is faster."""
    by_inputs: dict[tuple[int, ...], list[str]] = {}
    for d in decisions:
        rec = calls.get(d.name)
        if rec is not None and rec.inputs:
            by_inputs.setdefault(tuple(rec.inputs), []).append(d.name)
    by_name = {d.name: d for d in decisions}
    groups = []
    for names in (n for n in by_inputs.values() if len(n) > 1):
        modules = {n: work.get_submodule(n) for n in names}
        parts = {n: _first_product(m) for n, m in modules.items()}
        members = [n for n in names if parts[n] is not None]
        weights = [parts[n][0] for n in members]
        if len(members) < 2 or len({(w.shape[1], w.dtype, w.device) for w in weights}) != 1:
            continue
        biases = [parts[n][1] for n in members]
        fused = {}
        for layout in s.layouts:
            shared = SharedInputProduct(weights, biases, layout)
            fused["fused" if layout == "out×in" else "fused (in×out)"] = [
                SharedInputProjection(shared, i, parts[n][2]) for i, n in enumerate(members)]
        separate = [modules[n] for n in members]
        rec = calls[members[0]]
        candidates = {"separate": lambda x, ms=separate: [m(x) for m in ms],
                      **{k: (lambda x, ms=ms: [m(x) for m in ms]) for k, ms in fused.items()}}
        key = ("shared input", rec.input_shape, rec.dtype, tuple(_signature(m) for m in separate))
        times, note = _timed(key, candidates, rec, weights[0], s)
        best = min(fused, key=lambda k: times[k]) if times else None
        keep = best is not None and times[best] < times["separate"]
        group = SharedInputGroup(members, rec.input_shape, times, keep, [n for n in names if n not in members],
                                 best if keep else None)
        groups.append(group)
        for i, n in enumerate(members):
            d = by_name[n]
            d.shared_input = [m for m in members if m != n]
            others = ", ".join(m.rpartition(".")[2] or m for m in d.shared_input)
            if keep:
                replace_module(work, modules[n], fused[best][i])
                d.add_note(f"first product fused with {others} ({best}: {times[best]:.3f} ms vs "
                           f"{times['separate']:.3f} ms separate)")
            elif times:
                d.add_note(f"shares its input with {others}; fusing was not faster ({times[best]:.3f} vs "
                           f"{times['separate']:.3f} ms)")
    return groups


def _build(base: nn.Module, calls: dict[str, LayerCalls], pairs: dict[str, str], frozen: set[str],
           s: _Settings) -> tuple[nn.Module, list[LayerDecision], list[str], list[SharedInputGroup]]:
    work = _prepare(copy.deepcopy(base), s.memory_format)
    if s.memory_format == "channels_last":
        work.register_forward_pre_hook(_channels_last_input)
    if hasattr(work, PLAN_ATTR):  # the inheritance plan no longer describes the modules
        delattr(work, PLAN_ATTR)
    modules = dict(work.named_modules())
    decisions: list[LayerDecision] = []
    removed: list[str] = []
    inherited = [n + "." for n, m in modules.items() if isinstance(m, INHER_LAYERS)]
    uses = Counter(id(p) for _, m in work.named_modules(remove_duplicate=False) for p in m.parameters(recurse=False))
    for name, module in list(modules.items()):
        if any(name.startswith(prefix) for prefix in inherited):
            continue  # a part of an inherited layer (its gate), handled with the layer
        bn = modules[pairs[name]] if name in pairs else None
        if isinstance(module, INHER_LAYERS):
            new, decision = _optimize_inherited(name, module, calls.get(name), bn, name in frozen, s)
        elif isinstance(module, (nn.Conv2d, nn.Linear)):
            rec = calls.get(name)
            new = module if bn is None else _prepare(fold_bn_into_dense(module, bn), s.memory_format)
            decision = LayerDecision(name, type(module).__name__, "dense" if bn is not None else "unchanged",
                                     input_shape=rec.input_shape if rec else None)
            if type(new) is nn.Linear and uses[id(module.weight)] == 1 and rec is not None and "in×out" in s.layouts:
                new = _relaid_linear(new, decision, rec, s)  # a tied weight stays where it is
        else:
            continue
        if bn is not None:
            decision.batchnorm = pairs[name]
            replace_module(work, bn, nn.Identity())
            removed.append(pairs[name])
        if new is not module:
            replace_module(work, module, new)
        decisions.append(decision)
    groups = _fuse_shared_inputs(work, calls, decisions, s) if s.fuse_shared_inputs else []
    return work, decisions, removed, groups


def as_trained(model: nn.Module, scale: float = 0.005, seed: int = 0, *, inplace: bool = False) -> nn.Module:
    """A copy of an InherNet (or of one inherited layer) whose gated heads differ and whose gate
    depends on its input, as after training: on every layer with a gate and several heads,
    ``diversify_heads("perturbed", scale)`` and then a gate weight drawn as ``nn.Linear`` draws it
    (uniform in ±1/√r). What a speed measurement of the trained model needs, since identical heads
    fold, and so does a gate with zero weight (a constant) — the gate would never run. The function
    changes by about ``scale`` relative; the speed does not depend on it. ``inplace=True`` changes
    ``model`` itself (for a throwaway model: no copy)."""
    out = model if inplace else copy.deepcopy(model)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in out.modules():
            if isinstance(m, INHER_LAYERS) and m.gate is not None and m.heads > 1:
                m.diversify_heads("perturbed", scale, gen)
                bound = 1.0 / math.sqrt(m.gate.in_features)
                m.gate.weight.copy_(torch.empty(m.gate.weight.shape, dtype=torch.float32).uniform_(
                    -bound, bound, generator=gen))
    return out


def optimize_for_inference(model: nn.Module, example_input: Any, *, tolerance: float = DEFAULT_TOLERANCE,
                           freeze_gate: bool | str | Iterable[str] = False,
                           compile: bool | str | Mapping[str, Any] = False,
                           package_path: str | Path | None = None,
                           min_speedup: float = 1.0, min_saving: float | None = DEFAULT_MIN_SAVING,
                           fuse_shared_inputs: bool = True, check_speed: bool = True,
                           memory_format: str = "auto", rounds: int = 5) -> nn.Module:
    """A new module computing what ``model`` computes in eval mode, as fast as measured on this device.

    Args:
        model: an InherNet or any ``nn.Module``; it is deep-copied and never changed (parameters,
            buffers, module types and training flags stay as they are).
        example_input: one input the model takes (a tensor, a tuple of positional arguments or a
            dict of keyword arguments), on the model's device, of the batch size to optimise for:
            every layer is timed on the input shape it sees when the model runs on it.
        tolerance: the result is checked on ``example_input``: max |optimised − original| must stay
            within ``tolerance`` × max |original| (default 1e-4), else RuntimeError. Every transform
            except ``freeze_gate`` is exact in exact arithmetic; in float32 the outputs agree to
            rounding (about 1e-6 relative on the zoo's ResNets; the tests assert ``rtol=1e-4,
            atol=1e-5`` elementwise on fresh inputs).
        freeze_gate: ``True`` (every gated layer), a layer name / name suffix / regex, or a list of
            them: freeze those gates at their mean over ``example_input``, so the heads fold like
            ``gate="none"`` and the layer can become a pair or a dense layer. **An approximation**:
            the report gives each frozen layer's largest gate deviation |g − ḡ| and the model's
            max output deviation on the example (``report.max_abs_diff``), and the tolerance check
            is not applied.
        compile: wrap the result in ``torch.compile`` (run once on the example to compile it):
            ``True`` with the options that measured fastest for inference on the example's device
            (:data:`COMPILE_OPTIONS`: on a CPU inductor's C++ wrapper), or a dict of TorchInductor
            options passed as they are (``{}``: torch's defaults). The report names the options.
            ``"aot"``: compiled ahead of time instead — ``torch.export`` at the example's shapes,
            AOTInductor into a ``.pt2`` package, loaded back as an
            :class:`~inhernet.optimize.aot.AotCompiledModel`: no Python runs per call (at batch 1 on
            a CPU the fastest form measured), but it takes the example's shapes only.
        package_path: with ``compile="aot"``, where the ``.pt2`` package is written and kept (it loads
            without this library: ``torch._inductor.aoti_load_package``); default a temporary file.
        min_speedup: a folded layer stays a factorised pair only when the dense layer takes at least
            ``min_speedup`` × the pair's time; 1.0 (default): whichever is faster, > 1 prefers
            dense layers at near ties.
        min_saving: a layer whose heads fold becomes dense, untimed, when its pair keeps more than
            ``1 − min_saving`` of the dense layer's parameters (default 0.2: a pair must save at least
            20 %; ``None`` turns the rule off, timing alone decides). A gated layer whose gate must
            run cannot become dense exactly: when it keeps more than that (all H heads and the gate
            counted) it stays gated and the report says so. ``InheritConfig(min_saving=0.2)``
            applies the same rule at inheritance time, to the inherited layer with all its heads,
            which then keeps the teacher's own weight.
        fuse_shared_inputs: time fusing the first products of linear layers that read one input
            tensor (q/k/v, gate/up) into one matmul (:class:`SharedInputProduct`) and keep it where
            faster; not with ``compile=True`` (the compiler fuses what it can itself).
        check_speed: when the per-layer choices include fused products or ``in×out`` weights,
            time the whole model against the same model built without them (``out×in`` weights,
            no fusion) on the example, side by side, and keep the faster (both are exact); the
            times are in ``report.variant_times_ms``.
        memory_format: ``"auto"`` (default): for a convolutional model with a 4-D input, build the
            model in both layouts and keep the faster one (timed whole, side by side; with
            ``compile="aot"`` both compiled ahead of time, so a CNN costs two compilations);
            ``"contiguous"`` / ``"channels_last"``: that layout only.
        rounds: interleaved timing rounds per measurement (the median is kept).

    ``model`` may be one inherited layer alone (:class:`~inhernet.layers.InherLinear` /
    :class:`~inhernet.layers.InherConv2d`): the result is then its inference form, and the report
    names it :data:`LONE_LAYER`.

    Returns the optimised module (eval mode, parameters without gradients) carrying its
    :class:`OptimizationReport` as ``model.inhernet_optimized`` (:data:`REPORT_ATTR`). An
    optimised InherNet carries no inheritance plan any more: save the original, not this.
    """
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model must be an nn.Module, got {type(model).__name__}")
    if memory_format not in _MEMORY_FORMATS:
        raise ConfigError(f"memory_format={memory_format!r}: use one of {_MEMORY_FORMATS}.")
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
        raise ConfigError(f"rounds={rounds!r}: give a positive number of timing rounds.")
    if not (isinstance(min_speedup, (int, float)) and min_speedup > 0 and math.isfinite(min_speedup)):
        raise ConfigError(f"min_speedup={min_speedup!r}: give a positive factor (1.0: whichever is faster).")
    if min_saving is not None and (isinstance(min_saving, bool) or not isinstance(min_saving, (int, float))
                                   or not 0 <= min_saving < 1):
        raise ConfigError(f"min_saving={min_saving!r}: give a fraction in [0, 1), or None to turn the rule off.")
    if not (isinstance(tolerance, (int, float)) and tolerance >= 0):
        raise ConfigError(f"tolerance={tolerance!r}: give a non-negative relative tolerance.")
    if not nested_tensors(example_input):
        raise ConfigError("example_input must be a tensor, or a tuple / dict holding the model's input tensors.")
    aot = compile == "aot"
    if package_path is not None and not aot:
        raise ConfigError("package_path is where compile='aot' writes its package; give compile='aot' with it.")
    if package_path is not None:
        package_file(package_path)  # a bad or occupied path fails now, not after the work
    compile_options = None if aot else _compile_options(compile, nested_tensors(example_input)[0].device)

    base = copy.deepcopy(model).eval().requires_grad_(False)
    lone = isinstance(base, INHER_LAYERS)  # one inherited layer: optimised as the only child of a container
    if lone:
        base = nn.Sequential(base)
    with torch.no_grad():
        reference = call_model(base, example_input)
    frozen = select_frozen(base, freeze_gate)
    calls = capture_calls(base, example_input, frozen)
    pairs = pairs_by_fx(base, calls)
    pairing = "torch.fx"
    if pairs is None:  # not traceable: pair by tensor identity, keep the folds that keep the output
        pairs, dropped = verified_pairs(base, pairs_by_hooks(base, example_input, calls), example_input,
                                         reference, tolerance)
        pairing = "forward hooks" + (f"; {len(dropped)} dropped, folding changed the output: {', '.join(dropped)}"
                                     if dropped else "")

    formats = [memory_format]
    if memory_format == "auto":
        convolutional = any(isinstance(m, (nn.Conv2d, InherConv2d)) for m in base.modules())
        four_d = isinstance(example_input, Tensor) and example_input.dim() == 4
        formats = ["contiguous", "channels_last"] if convolutional and four_d else ["contiguous"]

    timings: dict = {}  # shared by every build: a layer shape is timed once

    def build(fmt: str, pairs: dict[str, str], plain: bool = False):
        settings = _Settings(fmt, float(min_speedup), rounds, None if min_saving is None else float(min_saving),
                             bool(fuse_shared_inputs) and compile_options is None and not aot and not plain,
                             ("out×in",) if plain else LAYOUTS, timings)
        work, decisions, removed, groups = _build(base, calls, pairs, frozen, settings)
        with torch.no_grad():
            diff, scale = max_diff(call_model(work, example_input), reference)
        return work, decisions, removed, diff, scale, groups

    def exact_limit(scale: float) -> float:
        return tolerance * max(scale, 1e-12)

    built = {fmt: build(fmt, pairs) for fmt in formats}
    if (not frozen and pairing.startswith("forward hooks") and pairs
            and any(b[3] > exact_limit(b[4]) for b in built.values())):
        pairing = "forward hooks; all dropped, the folds together changed the output"
        pairs = {}
        built = {fmt: build(fmt, pairs) for fmt in formats}
    compiling = compile_options is not None or aot

    def compiled_form(module: nn.Module, path: str | Path | None = None) -> nn.Module:
        return aot_compile(module, example_input, path) if aot else torch.compile(module, options=compile_options)

    model_times: dict[str, float] = {}
    candidates: dict[str, nn.Module] = {}
    # the layouts' packages, kept until one is chosen: the chosen one is copied, not compiled again
    staging = tempfile.TemporaryDirectory(prefix="inhernet-aot-") if aot and len(built) > 1 else None
    if len(built) > 1:
        # a model compiled ahead of time is compared in both layouts compiled: the compiler's kernels
        # rank the layouts otherwise than eager ones do (batch 64, the gated resnet56 InherNet: an eager
        # near-tie, 152.1 vs 153.7 ms, chose contiguous, and ahead of time it then ran 1.68x the teacher
        # against 1.94x for the channels-last torch.compile one:
        # docs/benchmarks/optimize_cnn_aot_eager_layout.md). Not under torch.compile: every compiled
        # model of one class takes one of Dynamo's per-function cache entries (8 by default), and a
        # second compilation per model would exhaust them twice as fast (then Dynamo runs eager).
        with torch.no_grad():
            candidates = {fmt: compiled_form(b[0], Path(staging.name) / f"{fmt}.pt2")
                          for fmt, b in built.items()} if staging else {fmt: b[0] for fmt, b in built.items()}
            model_times = time_candidates({fmt: (lambda x, m=m: call_model(m, x)) for fmt, m in candidates.items()},
                                          example_input, rounds=rounds, statistic="min",
                                          clock=default_clock(nested_tensors(example_input)[0].device))
        chosen_format = min(model_times, key=model_times.get)
    else:
        chosen_format = formats[0]
    work, decisions, removed, diff, scale, groups = built[chosen_format]
    variant_times: dict[str, float] = {}
    if check_speed and _uses_new_forms(work):
        # per-layer timings need not add up in the whole model (weights evicted from the caches
        # between calls): keep the per-layer choices only if the whole model is faster with them
        plain = build(chosen_format, pairs, plain=True)
        variant_times = time_candidates({PER_LAYER: lambda x, m=work: call_model(m, x),
                                         PLAIN: lambda x, m=plain[0]: call_model(m, x)},
                                        example_input, rounds=rounds, statistic="min",
                                        clock=default_clock(nested_tensors(example_input)[0].device))
        if variant_times[PLAIN] < variant_times[PER_LAYER]:
            work, decisions, removed, diff, scale, groups = plain
    if not frozen and diff > exact_limit(scale):
        raise RuntimeError(f"optimize_for_inference: the optimised model differs from the original by {diff:.3g} "
                           f"(outputs up to {scale:.3g}, tolerance {tolerance:g} × that) on the example input; "
                           "please report this model")
    if lone:
        work = work[0]
        for d in decisions:
            d.name = LONE_LAYER
    result: nn.Module = work
    if compiling:
        kept = candidates.get(chosen_format) if staging else None  # compiled while the layouts were compared
        with torch.no_grad():
            if kept is not None and not lone and work is built[chosen_format][0]:
                if package_path is not None:
                    shutil.copyfile(kept.package_path, package_path)
                kept.package_path = None if package_path is None else Path(package_path)
                result = kept
            else:
                result = compiled_form(work, package_path)
            diff_c, _ = max_diff(call_model(result, example_input), reference)
        diff = max(diff, diff_c)
        if not frozen and diff_c > exact_limit(scale):
            raise RuntimeError(f"optimize_for_inference: the compiled model differs from the original by "
                               f"{diff_c:.3g} (outputs up to {scale:.3g}) on the example input")
    if staging is not None:
        staging.cleanup()
    first = nested_tensors(example_input)[0]
    report = OptimizationReport(
        layers=decisions, example_shape=tuple(first.shape) if isinstance(example_input, Tensor) else None,
        device=str(first.device), threads=torch.get_num_threads(), memory_format=chosen_format,
        model_times_ms=model_times, max_abs_diff=diff,
        reference_scale=scale, tolerance=float(tolerance),
        frozen_gates=sorted(frozen), removed_batchnorms=removed, batchnorm_pairing=pairing,
        compile_options=compile_options or {},
        compile_mode="aot" if aot else ("torch.compile" if compile_options is not None else None),
        package_path=None if not aot else (str(result.package_path) if result.package_path else None),
        min_speedup=float(min_speedup), min_saving=None if min_saving is None else float(min_saving),
        shared_inputs=groups, variant_times_ms=variant_times,
    )
    setattr(result, REPORT_ATTR, report)
    return result
