"""The inheritance pipeline: select layers → choose ranks → factorise each layer → write it.

One loop (:func:`run`) drives every inheritance. It reads the teacher from a *weight source* and
puts the result in a *sink*:

* :class:`ModuleSource` — a model in memory (the copy being inherited, or the teacher itself with
  ``inplace``); :class:`CheckpointSource` — a safetensors checkpoint read tensor by tensor into a
  meta-device skeleton of the architecture, a submodule given real values only while it is needed;
* :class:`ModuleSink` — the inherited layers replace the originals in the model;
  :class:`ShardSink` — every tensor goes to output shards as soon as its part of the model is final.

:func:`inhernet.inherit` and :func:`inhernet.inherit_checkpoint` are the two front doors: same
options, same report, the same random draws by construction (each layer draws from its own
:func:`layer_generator`), the same statistics for ``init="whitened"`` (the same walk of
:mod:`inhernet.calibrate` over the same values), hence bit-identical results.

The steps, each pluggable through a registry (:mod:`inhernet.registry`): selection
(:mod:`inhernet.select`, over the registered layer kinds), the rank policy (:mod:`inhernet.ranks`:
a policy that must see all layers is given every spec — and spectrum, if it needs them — before any
layer is factorised; the others decide each layer when it is reached), the initialisation
(:mod:`inhernet.factorise.inits`; one that needs calibration makes the loop walk the model one pass
or block by block) and the head initialisation.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from .calibrate import NoCalibration, Unit, calibration_plan
from .config import InheritConfig
from .errors import ConfigError
from .factorise.svd import singular_values
from .kinds import LayerKind
from .layers import INHER_LAYERS
from .plan import InheritPlan, LayerRecord
from .ranks import LayerSpec, RankDecision, choose_ranks, inherited_params, policy_for
from .registry import INITS, LAYER_KINDS
from .select import Candidate, dense_record, find_layers, resolve_config, select_layers
from .shards import ShardReader, ShardWriter, release_memory
from .utils import count_parameters, set_submodule, tied_names

__all__ = ["CheckpointSource", "ModuleSink", "ModuleSource", "ShardSink", "build_layer", "check_finite",
           "check_materialised", "inherit_layer", "layer_generator", "layer_spec", "merge_config", "meta_copy", "resolve_budget", "run",
           "set_submodule"]


# --------------------------------------------------------------------------------------- helpers

def merge_config(config: InheritConfig | None, overrides: dict[str, Any]) -> InheritConfig:
    """``config`` with keyword ``overrides`` applied on top (``inherit(teacher, rank=8)``)."""
    if config is None:
        return InheritConfig.from_dict(overrides)
    if not isinstance(config, InheritConfig):
        raise TypeError(f"config must be an InheritConfig, got {type(config).__name__}; use InheritConfig.from_dict for dicts.")
    if not overrides:
        return config
    data = {f: getattr(config, f) for f in config.__dataclass_fields__}
    return InheritConfig.from_dict({**data, **overrides})


def layer_generator(seed: int, name: str) -> torch.Generator:
    """The CPU generator one layer's random draws come from (gate, random factors, randomized SVD,
    head deviations): seeded from ``(seed, layer name)``, so a layer's draws depend on neither the
    order layers are processed in, nor which other layers are inherited, nor the global RNG — the
    in-memory and the streaming paths agree by construction, and concurrent calls cannot disturb
    each other."""
    digest = hashlib.sha256(f"{int(seed)}:{name}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))


def check_finite(name: str, pname: str, tensor: Tensor) -> None:
    if not torch.isfinite(tensor).all():
        raise ConfigError(
            f"teacher layer {name!r} has non-finite values (NaN/Inf) in its {pname}; "
            "an SVD of it is meaningless. Fix or reload the teacher's weights, or exclude the "
            "layer with exclude_modules."
        )


def check_materialised(teacher: nn.Module) -> None:
    """ConfigError when a parameter or buffer of ``teacher`` lives on the ``meta`` device: such a
    tensor has a shape but no values, so there is nothing to factorise. Models built under
    ``init_empty_weights`` / ``device="meta"`` must get their real weights first."""
    tensors = [*teacher.named_parameters(remove_duplicate=False), *teacher.named_buffers(remove_duplicate=False)]
    meta = [name for name, t in tensors if t.is_meta]
    if meta:
        raise ConfigError(
            f"the teacher has {len(meta)} tensor(s) on the meta device (e.g. {meta[0]!r}): they have a shape but "
            "no values, so there is nothing to inherit. Load the real weights first (e.g. from_pretrained "
            "without device_map='meta', or model.to_empty(device='cpu') then load_state_dict), or, for a "
            "checkpoint on disk, use inhernet.inherit_checkpoint(src, dst, model=skeleton) (or "
            "inhernet.hf.inherit_checkpoint for a Hugging Face folder), which reads its tensors one at a time."
        )


def resolve_budget(cfg: InheritConfig, teacher_params: int, selected_params: int | None = None) -> int | None:
    """The budget as a parameter count for the whole network (None without one); ConfigError when it
    compresses nothing. With ``budget_scope="targets"`` the budget is of the ``selected_params``
    (the dense size of the selected layers), the rest of the network counted as it is."""
    b = cfg.budget
    if b is None:
        return None
    if cfg.budget_scope == "targets":
        if selected_params is None:
            raise ValueError("budget_scope='targets' needs the selected layers' parameter count")
        rest = teacher_params - selected_params
        n = int(b * selected_params) if isinstance(b, float) else int(b)
        what = (f"budget={b} of the selected layers' {selected_params:,} parameters" if isinstance(b, float)
                else f"budget={b:,} parameters for the selected layers")
        if n >= selected_params:
            raise ConfigError(f"{what} is at or above their size ({selected_params:,}): nothing would be compressed. "
                              "Give a smaller budget (a float below 1.0 is a fraction of them).")
        return rest + n
    if isinstance(b, nn.Module):
        n, what = count_parameters(b), f"the budget model's {count_parameters(b):,} parameters"
    elif isinstance(b, float):
        n, what = int(b * teacher_params), f"budget={b} × the teacher = {int(b * teacher_params):,} parameters"
    else:
        n, what = int(b), f"budget={b:,} parameters"
    if n >= teacher_params:
        raise ConfigError(
            f"{what} is at or above the teacher's size ({teacher_params:,}): nothing would be compressed. "
            "Give a smaller budget (a float below 1.0 is a fraction of the teacher, e.g. budget=0.5).")
    return n


def layer_spec(candidate: Candidate) -> LayerSpec:
    """What the rank policies see of a selected layer: its kind, matrix dims and bias."""
    m = candidate.module
    return LayerSpec(candidate.name, candidate.kind.name, *candidate.kind.dims(m.weight), m.bias is not None)


def build_layer(module: nn.Module, kind: str | LayerKind, rank: int, cfg: InheritConfig, *,
                device: torch.device | str | None = None, dtype: torch.dtype | None = None,
                generator: torch.Generator | None = None) -> nn.Module:
    """An empty (randomly initialised, from ``generator``) inherited layer with the structure of
    ``module``, on ``module``'s device and dtype unless given (``module`` may be a meta skeleton)."""
    kind = LAYER_KINDS.get(kind) if isinstance(kind, str) else kind
    return kind.build(module, rank, cfg.heads, bias=module.bias is not None, gate=cfg.gate, structure=cfg.structure,
                      device=module.weight.device if device is None else device,
                      dtype=module.weight.dtype if dtype is None else dtype, generator=generator)


def inherit_layer(candidate: Candidate, spec: LayerSpec, rank: int, weight: Tensor, bias: Tensor | None,
                  cfg: InheritConfig, whiten: Tensor | None = None) -> tuple[nn.Module, LayerRecord]:
    """The inherited version of one teacher layer and its plan record.

    ``candidate.module`` gives the structure (it may be a meta skeleton); ``weight`` (as stored: a
    Conv1D's is ``in × out``) and ``bias`` give the values; the new layer lives on ``weight``'s device
    and dtype. Its random draws come from :func:`layer_generator` ``(cfg.seed, name)``.
    ``whiten``: the layer's input Cholesky factor, for an initialisation that needs calibration.
    """
    init = INITS.get(cfg.init)
    if init.needs_calibration != (whiten is not None):
        raise ConfigError(f"{spec.name}: init={cfg.init!r} {'needs' if whiten is None else 'takes no'} input whitening factor")
    gen = layer_generator(cfg.seed, spec.name)
    new = build_layer(candidate.module, candidate.kind, rank, cfg, device=weight.device, dtype=weight.dtype, generator=gen)
    weight = weight.detach()
    bias = None if bias is None else bias.detach()
    energy_kept = init.fill(new, candidate.kind.matrix(weight), bias, rank, cfg, gen, whiten)
    n_after = inherited_params(spec, rank, cfg.heads, cfg.structure, cfg.gate)
    record = LayerRecord(spec.name, spec.kind, list(weight.shape), rank, cfg.heads, spec.dense_params, n_after, energy_kept)
    return new, record


def meta_copy(model: nn.Module) -> nn.Module:
    """A copy of ``model`` whose parameters are on the meta device (ties kept; buffers, which may be
    computed rather than stored — rotary tables — stay as they are): the skeleton a streamed
    inheritance works on, so the caller's model is never changed."""
    memo: dict[int, nn.Parameter] = {}
    originals = {}
    for module in model.modules():  # deepcopy without copying real parameter data
        for pname, p in module.named_parameters(recurse=False):
            if id(p) not in memo:
                memo[id(p)] = nn.Parameter(torch.empty_like(p, device="meta"), requires_grad=p.requires_grad)
            originals[id(p)] = p
    deep_memo = {id(p): memo[id(p)] for p in originals.values()}
    return copy.deepcopy(model, deep_memo)


def _under(key: str, prefix: str) -> bool:
    return prefix == "" or key == prefix or key.startswith(prefix + ".")


# --------------------------------------------------------------------------------------- sources

class ModuleSource:
    """The teacher's weights in a model in memory: ``model`` is the copy being inherited (or the
    teacher itself, ``inplace``); every tensor is real already."""

    whole_model_ok = True

    def __init__(self, model: nn.Module) -> None:
        self.model = model  # real values: inherit() checked them (check_materialised) before copying

    def layer_tensors(self, name: str) -> tuple[Tensor, Tensor | None]:
        module = self.model.get_submodule(name)
        return module.weight, module.bias

    def materialise(self, prefix: str) -> None:
        pass

    def materialise_on_use(self, prefix: str) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()

    def release(self, prefix: str) -> None:
        pass

    def release_except(self, prefix: str) -> None:
        pass

    def close(self) -> None:
        pass


class CheckpointSource:
    """A safetensors checkpoint (``folder``, one file or shards) read tensor by tensor into
    ``skeleton``, the architecture with its parameters on the meta device.

    :meth:`materialise` gives a submodule the checkpoint's values (a block, before it runs);
    :meth:`release` turns them back into meta tensors once the block is written, so the resident
    memory is what is being worked on, whatever the model's size."""

    #: a streamed model's blocks are released once written: no pass over the whole inherited model
    whole_model_ok = False

    def __init__(self, skeleton: nn.Module, folder: Path, index: dict[str, str]) -> None:
        self.model, self.folder = meta_copy(skeleton), folder
        self.reader = ShardReader(folder, index)
        self.tied = tied_names(skeleton)
        self.keys = list(self.model.state_dict(keep_vars=True).keys())
        #: key → (the module that holds it, its attribute) of every tensor given real values; the
        #: module is kept, not looked up again, since an inherited layer may have replaced it since
        self.loaded: dict[str, tuple[nn.Module, str]] = {}

    def stored_key(self, key: str) -> str | None:
        """The name the checkpoint stores ``key``'s tensor under (a tied tensor is stored once)."""
        if key in self.reader:
            return key
        return next((k for k in self.tied.get(key, []) if k in self.reader), None)

    def tensor(self, key: str) -> Tensor:
        stored = self.stored_key(key)
        if stored is None:
            raise ConfigError(f"{self.folder} has no tensor {key!r}, which the architecture "
                              f"({type(self.model).__name__}) needs: the checkpoint does not match it.")
        return self.reader.get(stored)

    def layer_tensors(self, name: str) -> tuple[Tensor, Tensor | None]:
        """The layer's weight and bias: the ones in memory when its block is materialised, else read."""
        module = self.model.get_submodule(name)
        weight = module.weight if not module.weight.is_meta else self.tensor(f"{name}.weight")
        bias = None
        if module.bias is not None:
            bias = module.bias if not module.bias.is_meta else self.tensor(f"{name}.bias")
        return weight, bias

    @staticmethod
    def _set(owner: nn.Module, leaf: str, value: Tensor) -> None:
        if leaf in owner._parameters:
            setattr(owner, leaf, nn.Parameter(value, requires_grad=False))
        else:
            owner._buffers[leaf] = value

    def _load(self, keep) -> None:
        for key, t in self.model.state_dict(keep_vars=True).items():
            if keep(key) and t.is_meta and key not in self.loaded:
                owner_name, _, leaf = key.rpartition(".")
                owner = self.model.get_submodule(owner_name) if owner_name else self.model
                self._set(owner, leaf, self.tensor(key))
                self.loaded[key] = (owner, leaf)

    def materialise(self, prefix: str) -> None:
        self._load(lambda key: _under(key, prefix))

    @contextlib.contextmanager
    def materialise_on_use(self, prefix: str) -> Iterator[None]:
        """While active, every module outside ``prefix`` gets its own (direct) tensors from the
        checkpoint when it is first called: what a forward pass up to the first block needs, and
        nothing it does not reach (an LM head)."""
        handles = []
        for name, module in self.model.named_modules():
            if name and _under(name, prefix):
                continue
            keys = [f"{name}.{leaf}" if name else leaf for leaf, t in [*module._parameters.items(), *module._buffers.items()]
                    if t is not None and t.is_meta]
            if keys:
                def load(mod: nn.Module, args: tuple, keys: list[str] = keys) -> None:
                    self._load(lambda key: key in keys)

                handles.append(module.register_forward_pre_hook(load))
        try:
            yield
        finally:
            for h in handles:
                h.remove()

    def release_except(self, prefix: str) -> None:
        """Meta tensors again for everything loaded outside ``prefix``."""
        self._release([k for k in self.loaded if not _under(k, prefix)])

    def _release(self, keys: list[str]) -> None:
        for key in keys:
            owner, leaf = self.loaded.pop(key)
            t = owner._parameters.get(leaf, owner._buffers.get(leaf))
            if isinstance(t, Tensor) and not t.is_meta:
                self._set(owner, leaf, torch.empty_like(t, device="meta"))
        release_memory()

    def release(self, prefix: str) -> None:
        """Meta tensors again for everything under ``prefix`` loaded from the checkpoint, and for the
        inherited layers there (written to the sink by now)."""
        root = self.model.get_submodule(prefix) if prefix else self.model
        for name, module in root.named_modules():
            if isinstance(module, INHER_LAYERS):
                module.to("meta")
        self._release([k for k in self.loaded if _under(k, prefix)])

    def close(self) -> None:
        self.reader.close()


# --------------------------------------------------------------------------------------- sinks

class ModuleSink:
    """The inherited layers stay in the model (already replaced by the loop): nothing to write."""

    def unit_done(self, unit: Unit) -> None:
        pass

    def finish(self) -> list[str]:
        return []

    def abort(self) -> None:
        pass


class ShardSink:
    """Writes a streamed model to ``dst`` in shards of at most ``max_bytes``: each unit's tensors as
    soon as the unit is final (inherited factors, or the dense tensors read through), the tensors of
    no unit (embeddings, norms) in checkpoint order around them. Nothing is named final until
    :meth:`finish`; :meth:`abort` removes what was written."""

    def __init__(self, source: CheckpointSource, dst: Path, max_bytes: int) -> None:
        self.source = source
        self.writer = ShardWriter(dst, max_bytes)
        self.order = {k: i for i, k in enumerate(source.keys)}
        self.written: set[str] = set()

    def _emit(self, key: str, value: Tensor | None = None) -> None:
        """Write the teacher tensor ``key`` once: ``value`` when it is in memory, else read from the
        checkpoint; a tied tensor only under the name the checkpoint stores it by."""
        self.written.add(key)
        src = self.source
        stored = src.stored_key(key)
        if stored is not None and stored != key:
            return  # tied: stored once, under the name the checkpoint uses
        if value is not None and not value.is_meta:
            self.writer.add(key, value)
        elif stored is not None:
            self.writer.add(key, src.reader.get(key))
        else:
            t = src.model.state_dict(keep_vars=True)[key]
            if t.is_meta:
                raise ConfigError(f"{src.folder} has no tensor {key!r}, which the architecture "
                                  f"({type(src.model).__name__}) needs: the checkpoint does not match it.")
            self.writer.add(key, t)  # a persistent buffer the checkpoint leaves out: the architecture's own value

    def unit_done(self, unit: Unit) -> None:
        prefixes = [unit.prefix] if unit.prefix is not None else list(unit.layers)
        keys = self.source.keys
        originals = [k for k in keys if k not in self.written and any(_under(k, p) for p in prefixes)]
        if originals:  # first the tensors of no unit that come before this one in the checkpoint
            for key in keys[:min(self.order[k] for k in originals)]:
                if key not in self.written:
                    self._emit(key)
        for key, t in self.source.model.state_dict(keep_vars=True).items():
            if key in self.written or not any(_under(key, p) for p in prefixes):
                continue
            if key in self.order:
                self._emit(key, t)  # a teacher tensor of this unit (dense, or not replaced)
            else:
                self.written.add(key)
                self.writer.add(key, t)  # an inherited layer's factor
        self.written.update(originals)  # the tensors of the layers that were replaced

    def finish(self) -> list[str]:
        for key in self.source.keys:
            if key not in self.written:
                self._emit(key)
        return self.writer.finish()

    def abort(self) -> None:
        self.writer.abort()


# --------------------------------------------------------------------------------------- the loop

def run(source: ModuleSource | CheckpointSource, sink: ModuleSink | ShardSink, cfg: InheritConfig,
        calibration: Any = None, *, progress: bool = True, latency: Any = None) -> InheritPlan:
    """Inherit the model of ``source`` into ``sink`` with ``cfg``; returns the plan. On any error the
    sink is aborted (a streamed ``dst`` keeps no partial shard) and the error propagates.

    ``latency``: for ``budget_metric="latency"``, the teacher's measured
    :class:`~inhernet.latency.LatencyTable` (:func:`inhernet.latency.measure_latency`); the policy
    then spends a budget in milliseconds."""
    try:
        return _run(source, sink, cfg, calibration, progress, latency)
    except BaseException:
        sink.abort()
        raise
    finally:
        source.close()


def _run(source, sink, cfg: InheritConfig, calibration: Any, progress: bool, latency: Any) -> InheritPlan:
    model = source.model
    if any(isinstance(m, INHER_LAYERS) for m in model.modules()):
        raise ConfigError("the model already contains inherited layers; inherit from the original teacher.")
    cfg = resolve_config(model, cfg)
    init = INITS.get(cfg.init)
    if init.needs_calibration and calibration is None:
        raise ConfigError(f"init={cfg.init!r} needs calibration data: inherit(model, ..., calibration=batches), "
                          "a few batches of real inputs (a dict is passed as model(**batch)).")
    if not init.needs_calibration and calibration is not None:
        raise ConfigError(f"calibration batches are only used by an init that needs them (init='whitened'), not by "
                          f"init={cfg.init!r}; pass init='whitened' or drop them.")
    teacher_params = count_parameters(model)
    order = {c.name: i for i, c in enumerate(find_layers(model))}
    eligible, skipped = select_layers(model, cfg)
    cands = {c.name: c for c in eligible}
    specs = {c.name: layer_spec(c) for c in eligible}
    selected = sum(s.dense_params for s in specs.values())
    budget_left: float | None
    if cfg.budget_metric == "latency":
        if latency is None:
            raise ConfigError("budget_metric='latency' needs the teacher in memory, run on an example input: "
                              "inhernet.inherit(model, ..., latency_input=shape) (a streamed inherit_checkpoint "
                              "cannot time the teacher); or use a parameter budget.")
        for name, s in specs.items():
            s.latency = latency.layers[name]
        budget, budget_left = None, latency.budget_left(cfg)  # milliseconds for the selected layers
    else:
        budget = resolve_budget(cfg, teacher_params, selected)
        budget_left = None if budget is None else budget - (teacher_params - selected)  # what the selected layers may use
    policy = policy_for(cfg)
    kinds = {n: c.kind for n, c in cands.items()}

    def collector():
        if not init.needs_calibration:
            return NoCalibration(list(cands))
        return calibration_plan(model, kinds, calibration, cfg.calibration_mode, whole_model_ok=source.whole_model_ok,
                                progress=progress)

    def spectrum(name: str, weight: Tensor, factors: dict[str, Tensor]) -> Tensor:
        return singular_values(cands[name].kind.matrix(weight.detach()), factors.get(name))

    def tensors(name: str) -> tuple[Tensor, Tensor | None]:
        weight, bias = source.layer_tensors(name)
        check_finite(name, "weight", weight)
        if bias is not None:
            check_finite(name, "bias", bias)
        return weight, bias

    def release(unit: Unit) -> None:
        for prefix in ([unit.prefix] if unit.prefix is not None else unit.layers):
            source.release(prefix)

    walk = collector()
    decisions: dict[str, RankDecision] = {}
    # a policy that sees all layers decides before the first one is factorised; with one-pass
    # statistics every layer is in the one unit, so it decides there, from the whitened spectra
    decide_in_unit = policy.sees_all_layers and policy.needs_spectrum and walk.mode == "one_pass"
    if policy.sees_all_layers and not decide_in_unit:
        if policy.needs_spectrum:
            def collect(unit: Unit, factors: dict[str, Tensor]) -> None:
                for name in unit.layers:
                    specs[name].spectrum = spectrum(name, tensors(name)[0], factors)

            bar = tqdm(total=len(cands), desc="spectra", unit="layer", disable=not progress, leave=False, delay=1.0)
            def counted(unit: Unit) -> None:
                release(unit)
                bar.update(len(unit.layers))

            collector().walk(source, collect, counted)
            bar.close()
        decisions = choose_ranks(list(specs.values()), cfg, budget_left=budget_left)

    records = list(skipped)
    bar = tqdm(total=len(cands), desc="inheriting", unit="layer", disable=not progress, leave=False, delay=1.0)

    def visit(unit: Unit, factors: dict[str, Tensor]) -> None:
        if decide_in_unit:
            for name in cands:
                specs[name].spectrum = spectrum(name, tensors(name)[0], factors)
            decisions.update(choose_ranks(list(specs.values()), cfg, budget_left=budget_left))
        for name in unit.layers:
            weight, bias = tensors(name)
            decision = decisions.get(name)
            if decision is None:  # a per-layer policy decides from this layer alone
                if policy.needs_spectrum:
                    specs[name].spectrum = spectrum(name, weight, factors)
                decision = choose_ranks([specs[name]], cfg)[name]
            c = cands[name]
            if decision.rank is None:
                records.append(dense_record(name, c.module, c.kind, decision.reason))
            else:
                new, record = inherit_layer(c, specs[name], decision.rank, weight, bias, cfg, factors.get(name))
                set_submodule(model, name, new)
                records.append(record)
            specs[name].spectrum = None
            done_with = getattr(factors, "done", None)  # a lazily made factor is freed once its layers are done
            if done_with is not None:
                done_with(name)
            bar.update()

    def done(unit: Unit) -> None:
        sink.unit_done(unit)
        release(unit)

    try:
        walk.walk(source, visit, done)
    finally:
        bar.close()
    records.sort(key=lambda r: order[r.name])
    record = walk.record.to_dict() if walk.record is not None else None
    return InheritPlan(config=cfg.to_dict(), layers=records, teacher_params=teacher_params, budget=budget,
                       calibration=record)
