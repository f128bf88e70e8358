"""Latency budgets: the teacher's layers timed on this device, once, for the rank policy to spend.

``InheritConfig(budget=0.5, budget_metric="latency", latency_input=(64, 3, 32, 32))`` asks for an
InherNet whose predicted latency is half the teacher's on that input, on this device and thread
count. The work is split as everywhere in the pipeline:

* **analysis** (this module): :func:`measure_latency` runs the teacher once on the example with
  forward hooks on the selected layers, to capture each layer's input shape; then, per distinct
  (layer shape, input shape), it times the dense layer and the inherited layer (the configured
  heads, gate and structure, as :func:`inhernet.pipeline.build_layer` builds it) at a grid of
  ranks (:func:`candidate_ranks`: powers of two and their 1.5× — 1, 2, 3, 4, 6, 8, 12, 16, 24,
  32, 48, … — up to the largest rank that saves parameters), side by side in interleaved rounds
  with :func:`inhernet.optimize.time_candidates` (on a CPU with one thread, the thread's CPU time:
  :func:`inhernet.optimize.default_clock`). Layers of one shape share one measurement. The rest of
  the network (norms, activations, pooling, the classifier, layers not selected) is timed once as
  the teacher with every selected layer replaced by a stub that returns its recorded output: the
  *fixed* part. Every measurement is cached on disk (:class:`LatencyCache`: one JSON per device,
  CPU, thread count and torch version, keyed by the layer's kind and hyper-parameters, its input
  shape and dtype, heads / gate / structure and the rank grid), so it is made once per machine;
  :class:`LayerLatency` interpolates linearly between the measured ranks, whose times are first made
  non-decreasing in the rank (:func:`monotone_in_rank`: a dip is noise the allocator would exploit);
* **policy** (:mod:`inhernet.ranks`, ``latency:spectral`` / ``latency:uniform``): per layer dense or
  a rank, within the budget's milliseconds;
* **surgery** (:mod:`inhernet.pipeline`): unchanged; :func:`latency_summary` then writes each
  layer's predicted time and the whole model's predicted and measured times into the plan.

The budget is compared with *predictions* on both sides: the InherNet's predicted time (fixed part
+ each layer's time as chosen) ≤ ``budget`` × the teacher's predicted time (fixed part + every
dense layer), so an error of the additive model (a layer alone is timed with warm caches) affects
both alike. The plan records the teacher's and the InherNet's measured whole-model times beside
the predictions; ``inhernet.layer_report`` prints them.

What is timed (``InheritConfig.latency_form``), in eval mode without autograd:

* ``"inherited"`` (default): the layer as inherited — the training form (H heads, the gate
  running), the model ``inherit`` returns;
* ``"optimized"``: the layer as :func:`inhernet.optimize_for_inference` runs it once trained. Its
  heads are first made to differ (``diversify_heads("perturbed")``: after training they do, and
  the gate must run; identical heads would fold), then ``optimize_for_inference`` is given the
  layer alone on the recorded input shape (contiguous memory, no whole-model steps) and picks the
  fastest of its inference kernels — or the exact dense product, when that is not faster or the
  form keeps more than ``1 − min_saving`` of the dense parameters. Whole-model steps it takes on
  a real model (BatchNorm folding, channels_last, fused shared-input products) are not counted,
  and the teacher's side is the teacher as it is: the prediction is conservative against that
  teacher, and can be optimistic against a teacher given the same steps (they help dense layers
  more; docs/benchmarks/latency_budget.md). :func:`inhernet.inherit` then also times the optimised
  InherNet (heads made to differ the same way) against the teacher and writes it in the plan
  (``optimized_measured_ms``).
"""

from __future__ import annotations

import contextlib
import copy
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from .config import InheritConfig
from .errors import ConfigError
from .optimize import DEFAULT_MIN_SAVING, as_trained, default_clock, optimize_for_inference, time_candidates
from .pipeline import build_layer, layer_generator, layer_spec
from .plan import InheritPlan
from .ranks import LayerSpec, too_large
from .select import Candidate, resolve_config, select_layers
from .targets import is_transformers_model
from .utils import call_model, cpu_name, eval_mode, read_json, set_submodule, stable_hash, write_json

__all__ = ["DEFAULT_CACHE", "LatencyCache", "LatencyTable", "LayerLatency", "candidate_ranks",
           "device_record", "monotone_in_rank",
           "latency_example", "latency_summary", "measure_latency", "time_models"]

#: where latency tables are kept unless ``InheritConfig.latency_cache`` says otherwise
DEFAULT_CACHE = Path("~/.cache/inhernet/latency")
#: interleaved timing rounds per measurement (the fastest round is kept)
ROUNDS = 5
#: bumps when what a cached entry means changes (older entries are then measured again)
CACHE_VERSION = 1
#: ``latency_form="optimized"``: the relative size of the head differences that make the gate run
DIVERSIFY_SCALE = 1e-3


def candidate_ranks(max_rank: int, multiple: int = 1) -> list[int]:
    """The ranks a layer is timed at: powers of two and 1.5× them (1, 2, 3, 4, 6, 8, 12, 16, 24, 32,
    48, 64, 96, …: a geometric grid whose steps from 8 on are multiples of 8, the widths vector units
    and GEMM kernels favour), rounded down to multiples of ``multiple``, and ``max_rank`` itself
    (the largest rank a policy may choose) so interpolation never extrapolates."""
    grid, p = {max_rank}, 1
    while p <= max_rank:
        grid.update(r for r in (p, p + p // 2) if r <= max_rank)
        p *= 2
    return sorted({(r // multiple) * multiple for r in grid} - {0}) if max_rank >= 1 else []


@dataclass
class LayerLatency:
    """One selected layer's measured times (ms per call of the example, summed over the calls the
    example makes to it): ``dense_ms``, and ``factorised_ms[i]`` at ``ranks[i]``; ``input_shapes``:
    the shapes it was timed on (empty: the example never reached it, so it costs nothing)."""

    dense_ms: float
    ranks: list[int] = field(default_factory=list)
    factorised_ms: list[float] = field(default_factory=list)
    input_shapes: list[list[int]] = field(default_factory=list)

    def at(self, rank: int) -> float:
        """The predicted time at ``rank``: linear between the measured ranks (the nearest end outside them)."""
        if not self.ranks:
            return self.dense_ms
        return float(np.interp(rank, self.ranks, self.factorised_ms))


@dataclass
class LatencyTable:
    """The measured times of a teacher on one example input: one :class:`LayerLatency` per
    selected layer, the fixed rest of the network (``fixed_ms``), the teacher's measured whole-model
    time, and where / how it was measured."""

    layers: dict[str, LayerLatency]
    fixed_ms: float
    teacher_ms: float
    device: dict[str, Any] = field(default_factory=dict)
    input_shape: list[int] | None = None
    cache_file: str | None = None
    measured: int = 0  # distinct layer shapes timed in this call (the others came from the cache)
    reused: int = 0

    @property
    def dense_ms(self) -> float:
        """The selected layers' dense time, summed."""
        return sum(lat.dense_ms for lat in self.layers.values())

    @property
    def teacher_predicted_ms(self) -> float:
        """The teacher as the additive model sees it: fixed part + every selected layer dense."""
        return self.fixed_ms + self.dense_ms

    def budget_ms(self, cfg: InheritConfig) -> float:
        """The time ``cfg.budget`` allows what it counts: the whole network's predicted time
        (``budget_scope="model"``) or the selected layers' (``"targets"``)."""
        base = self.dense_ms if cfg.budget_scope == "targets" else self.teacher_predicted_ms
        return float(cfg.budget) * base

    def budget_left(self, cfg: InheritConfig) -> float:
        """The milliseconds the selected layers may take (the budget minus the fixed part, for a
        whole-model budget); a ConfigError when the fixed part alone exceeds it."""
        if cfg.budget_scope == "targets":
            return self.budget_ms(cfg)
        left = self.budget_ms(cfg) - self.fixed_ms
        if left < 0:
            raise ConfigError(
                f"budget={cfg.budget} of the teacher's predicted {self.teacher_predicted_ms:.3g} ms is "
                f"{self.budget_ms(cfg):.3g} ms, but what is not inherited (norms, activations, the classifier, "
                f"layers not selected) alone takes {self.fixed_ms:.3g} ms; raise the budget above "
                f"{self.fixed_ms / self.teacher_predicted_ms:.2f}, or pass budget_scope='targets' for a fraction "
                "of the selected layers' time.")
        return left

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class LatencyCache:
    """Measured times on disk: ``folder/<device hash>.json``, one file per device record
    (:func:`device_record`), entries keyed by what decides a time. Written atomically, merged with
    what another process wrote meanwhile; ``folder=""`` (or ``None`` given as ``False``) keeps
    nothing."""

    def __init__(self, folder: str | Path | None, device: dict[str, Any]) -> None:
        self.device = device
        self.path = None if folder == "" else Path(folder or DEFAULT_CACHE).expanduser() / f"{stable_hash(device)}.json"
        self.entries: dict[str, Any] = self._read()
        self.dirty: dict[str, Any] = {}

    def _read(self) -> dict[str, Any]:
        data = read_json(self.path) if self.path is not None else None
        if not isinstance(data, dict) or data.get("version") != CACHE_VERSION or data.get("device") != self.device:
            return {}
        return dict(data.get("entries", {}))

    def get(self, key: str) -> Any:
        return self.entries.get(key)

    def put(self, key: str, value: Any) -> None:
        self.entries[key] = self.dirty[key] = value

    def save(self) -> None:
        if self.path is None or not self.dirty:
            return
        entries = {**self._read(), **self.dirty}
        write_json(self.path, {"version": CACHE_VERSION, "device": self.device, "entries": entries})
        self.dirty = {}


def device_record(device: torch.device | str) -> dict[str, Any]:
    """What a cached time is valid for: device (a GPU's name), CPU model, intra-op threads, torch
    version and the clock :func:`inhernet.optimize.default_clock` reads."""
    device = torch.device(device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else device.type
    return {"device": name, "cpu": cpu_name(), "threads": torch.get_num_threads(), "torch": torch.__version__,
            "clock": default_clock(device)}


def latency_example(model: nn.Module, cfg: InheritConfig, example_input: Any = None) -> Any:
    """The input a latency budget is measured on: ``example_input`` as given (a tensor, a tuple of
    positional inputs, a dict of keyword inputs), else a random tensor of ``cfg.latency_input``:
    standard normal values in the model's dtype, or for a Hugging Face model random token ids of
    shape ``(batch, tokens)``. ConfigError when there is neither."""
    if example_input is not None:
        return example_input
    shape = cfg.latency_input
    if shape is None:
        raise ConfigError("budget_metric='latency' needs the input to time the teacher on: "
                          "latency_input=(batch, ...) (e.g. (64, 3, 32, 32)), or inherit(..., example_input=x).")
    ref = next(iter(model.parameters()), None)
    device = None if ref is None else ref.device
    gen = torch.Generator().manual_seed(0)
    if is_transformers_model(model):
        vocab = getattr(model.config, "vocab_size", None)
        if len(shape) != 2 or not vocab:
            raise ConfigError(f"latency_input={shape!r}: a Hugging Face model is timed on token ids, give "
                              "(batch, tokens), e.g. (1, 128); or pass inherit(..., example_input=tokenizer(...)).")
        return {"input_ids": torch.randint(0, vocab, tuple(shape), generator=gen).to(device)}
    dtype = ref.dtype if ref is not None and ref.is_floating_point() else torch.float32
    return torch.randn(tuple(shape), generator=gen, dtype=dtype).to(device)


class _Recorded(nn.Module):
    """Stands in for a selected layer when the fixed part is timed: returns the outputs the layer
    gave on the example, in call order, without computing anything."""

    def __init__(self, outputs: list[Tensor]) -> None:
        super().__init__()
        self.outputs, self.calls = outputs, 0

    def forward(self, *args: Any, **kwargs: Any) -> Tensor:
        out = self.outputs[self.calls % len(self.outputs)]
        self.calls += 1
        return out


def _shared_copy(model: nn.Module) -> nn.Module:
    """A copy of ``model``'s module tree sharing its parameters and buffers (no memory for weights)."""
    memo = {id(t): t for t in [*model.parameters(), *model.buffers()]}
    return copy.deepcopy(model, memo)


def _capture(model: nn.Module, names: list[str], example: Any) -> dict[str, list[tuple[Tensor, Tensor]]]:
    """``name → [(input, output), …]`` of each selected layer's calls on ``example``."""
    calls: dict[str, list[tuple[Tensor, Tensor]]] = {n: [] for n in names}
    handles = []
    for name in names:
        def hook(module: nn.Module, args: tuple, kwargs: dict, output: Any, name: str = name) -> None:
            x = args[0] if args else next(iter(kwargs.values()))
            calls[name].append((x.detach(), output.detach()))

        handles.append(model.get_submodule(name).register_forward_hook(hook, with_kwargs=True))
    try:
        call_model(model, example)
    except (RuntimeError, TypeError, ValueError, IndexError) as err:
        raise ConfigError(f"the teacher does not run on the latency example input ({err}); give the input it takes: "
                          "latency_input=(batch, ...) of its shape, or inherit(..., example_input=x) (a tensor, a "
                          "tuple of inputs or a dict of keyword inputs).") from err
    finally:
        for h in handles:
            h.remove()
    return calls


def time_models(models: Mapping[str, Callable[[Any], Any] | nn.Module], example: Any, *, rounds: int = ROUNDS,
                ) -> dict[str, float]:
    """Milliseconds per call of whole models on ``example``, side by side in interleaved rounds
    (:func:`inhernet.optimize.time_candidates`, the fastest round, the clock of
    :func:`~inhernet.optimize.default_clock`), each in eval mode (restored afterwards)."""
    device = next((t.device for m in models.values() if isinstance(m, nn.Module) for t in m.parameters()),
                  torch.device("cpu"))
    calls = {k: (lambda x, m=m: call_model(m, x)) if isinstance(m, nn.Module) else m for k, m in models.items()}
    with contextlib.ExitStack() as stack:
        for m in models.values():
            if isinstance(m, nn.Module):
                stack.enter_context(eval_mode(m))
        return time_candidates(calls, example, rounds=rounds, statistic="min", clock=default_clock(device))


def _layer_key(c: Candidate, x: Tensor, cfg: InheritConfig, ranks: list[int]) -> str:
    m = c.module
    return stable_hash({"v": CACHE_VERSION, "kind": c.kind.name, "module": f"{type(m).__name__}({m.extra_repr()})",
                        "weight": list(m.weight.shape), "input": list(x.shape), "dtype": str(x.dtype),
                        "heads": cfg.heads, "gate": cfg.gate, "structure": cfg.structure, "ranks": ranks,
                        **({} if cfg.latency_form == "inherited" else {"form": cfg.latency_form,
                                                                        "min_saving": DEFAULT_MIN_SAVING})}, n=20)


def _max_rank(spec: LayerSpec, cfg: InheritConfig) -> int:
    """The largest multiple of ``rank_multiple`` below full rank that saves parameters (0: none)."""
    step, best = cfg.rank_multiple, 0
    for r in range(step, spec.full_rank, step):
        if too_large(spec, r, cfg):
            break
        best = r
    return best


def measure_latency(model: nn.Module, cfg: InheritConfig, example: Any, *, progress: bool = True,
                    rounds: int = ROUNDS) -> LatencyTable:
    """The :class:`LatencyTable` of ``model`` (the teacher, unchanged) on ``example`` for ``cfg``'s
    selected layers, heads, gate and structure, on the device of the model's parameters and the
    current thread count; what the cache (``cfg.latency_cache``) holds is reused, the rest measured
    and stored. Shows a progress bar over the layer shapes it times."""
    cfg = resolve_config(model, cfg)
    eligible, _ = select_layers(model, cfg)
    ref = next(iter(model.parameters()), None)
    device = ref.device if ref is not None else torch.device("cpu")
    cache = LatencyCache(cfg.latency_cache, device_record(device))
    names = [c.name for c in eligible]
    table = LatencyTable({}, 0.0, 0.0, device=cache.device, cache_file=None if cache.path is None else str(cache.path))
    table.input_shape = list(example.shape) if isinstance(example, Tensor) else None
    with torch.no_grad(), eval_mode(model):
        calls = _capture(model, names, example)
        jobs: dict[str, tuple[Candidate, Tensor, list[int]]] = {}
        keys: dict[str, list[str]] = {}
        for c in eligible:
            grid = candidate_ranks(_max_rank(layer_spec(c), cfg), cfg.rank_multiple)
            keys[c.name] = [_layer_key(c, x, cfg, grid) for x, _ in calls[c.name]]
            for key, (x, _) in zip(keys[c.name], calls[c.name]):
                if cache.get(key) is None:
                    jobs.setdefault(key, (c, x, grid))
        table.measured, table.reused = len(jobs), len({k for ks in keys.values() for k in ks}) - len(jobs)
        bar = tqdm(jobs.items(), desc="timing layers", unit="shape", disable=not progress, leave=False)
        for key, (c, x, grid) in bar:
            cache.put(key, _time_layer(c, x, grid, cfg, rounds))
        bar.close()
        whole_key = "model:" + stable_hash({"model": repr(model), "names": names, "layers": keys,
                                            "input": _shapes(example)}, n=20)
        whole = cache.get(whole_key)
        if whole is None:
            fixed = _shared_copy(model)
            for name in names:
                if calls[name]:
                    set_submodule(fixed, name, _Recorded([out for _, out in calls[name]]))
            whole = time_models({"teacher": model, "fixed": fixed}, example, rounds=rounds)
            cache.put(whole_key, whole)
    cache.save()
    table.fixed_ms, table.teacher_ms = whole["fixed"], whole["teacher"]
    for c in eligible:
        entries = [cache.get(k) for k in keys[c.name]]
        lat = LayerLatency(sum(e["dense"] for e in entries),
                           input_shapes=[list(x.shape) for x, _ in calls[c.name]])
        if entries and entries[0]["ranks"]:
            lat.ranks = entries[0]["ranks"]
            lat.factorised_ms = monotone_in_rank([float(sum(col)) for col in zip(*(e["ms"] for e in entries))])
        table.layers[c.name] = lat
    return table


def monotone_in_rank(ms: list[float]) -> list[float]:
    """The measured times of one layer at increasing ranks, made non-decreasing (the least-squares
    isotonic fit, ``scipy.optimize.isotonic_regression``): a larger rank does more work, so a time
    that drops with the rank is measurement noise — and an allocator that believes it picks the
    rank that happened to measure fast (a rank-3 conv "faster" than rank 2, at a fraction of the
    energy). The fit averages such runs of measurements instead; the cache keeps the raw times."""
    from scipy.optimize import isotonic_regression  # here: scipy is slow to import, and only this needs it

    if len(ms) < 2:
        return list(ms)
    return [float(t) for t in isotonic_regression(np.asarray(ms, dtype=np.float64), increasing=True).x]


def _shapes(example: Any) -> Any:
    if isinstance(example, Tensor):
        return [list(example.shape), str(example.dtype)]
    if isinstance(example, Mapping):
        return {k: _shapes(v) for k, v in example.items()}
    if isinstance(example, (list, tuple)):
        return [_shapes(v) for v in example]
    return repr(example)


def _deployed(layer: nn.Module, x: Tensor, rounds: int) -> nn.Module:
    """``layer`` (inherited, untrained, built for this timing) as :func:`optimize_for_inference`
    would run it once trained."""
    return optimize_for_inference(as_trained(layer, DIVERSIFY_SCALE, inplace=True), x, memory_format="contiguous",
                                  check_speed=False, fuse_shared_inputs=False, min_saving=DEFAULT_MIN_SAVING,
                                  rounds=rounds)


def _time_layer(c: Candidate, x: Tensor, grid: list[int], cfg: InheritConfig, rounds: int) -> dict[str, Any]:
    """One layer shape timed: the dense layer and the inherited layer at every rank of ``grid`` (in
    ``cfg.latency_form``), side by side on a random input of ``x``'s shape (the factors' values do
    not change the time)."""
    x = torch.randn(x.shape, dtype=x.dtype, device=x.device) if x.is_floating_point() else x
    gen = layer_generator(cfg.seed, c.name)
    candidates: dict[str, nn.Module] = {"dense": c.module}
    for r in grid:
        layer = build_layer(c.module, c.kind, r, cfg, generator=gen).eval().requires_grad_(False)
        candidates[f"r{r}"] = _deployed(layer, x, rounds) if cfg.latency_form == "optimized" else layer
    times = time_candidates(candidates, x, rounds=rounds, statistic="min", clock=default_clock(x.device))
    return {"dense": times["dense"], "ranks": grid, "ms": [times[f"r{r}"] for r in grid]}


def latency_summary(plan: InheritPlan, table: LatencyTable, cfg: InheritConfig,
                    measured: Mapping[str, float] | None = None) -> None:
    """Write the latency side of an inheritance into ``plan``: each selected layer's predicted time
    as chosen and dense (``LayerRecord.latency_ms`` / ``dense_latency_ms``), and ``plan.latency``:
    the budget, the fixed part, the teacher's and the InherNet's predicted times, and ``measured``
    (``{"teacher": ms, "inherited": ms}``, and ``"optimized"`` for ``latency_form="optimized"``: whole
    models timed side by side) when given."""
    predicted = table.fixed_ms
    for record in plan.layers:
        lat = table.layers.get(record.name)
        if lat is None:
            continue
        record.dense_latency_ms = lat.dense_ms
        record.latency_ms = lat.dense_ms if record.rank is None else lat.at(record.rank)
        predicted += record.latency_ms
    plan.latency = {
        "device": table.device, "input_shape": table.input_shape, "budget": cfg.budget, "form": cfg.latency_form,
        "budget_scope": cfg.budget_scope, "budget_ms": table.budget_ms(cfg), "fixed_ms": table.fixed_ms,
        "teacher_predicted_ms": table.teacher_predicted_ms, "predicted_ms": predicted,
        "teacher_measured_ms": table.teacher_ms, "cache_file": table.cache_file,
        "shapes_measured": table.measured, "shapes_cached": table.reused,
    }
    if measured:
        plan.latency.update({f"{k}_measured_ms": v for k, v in measured.items()})
