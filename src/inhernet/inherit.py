"""``inherit``: turn a teacher into an InherNet.

Three separate steps (as Torch-Pruning separates analysis, policy and surgery):

1. **select** (:func:`select_layers`): which ``Linear``/``Conv2d`` (and transformers' ``Conv1D``)
   layers are eligible, and why the others are skipped (excluded by name, final classifier, grouped
   conv, tied weight, ...); on a Hugging Face model ``target_modules=None`` means the architecture's
   attention and MLP projections (:func:`resolve_config`);
2. **policy** (:mod:`inhernet.ranks`): a rank per selected layer, or dense;
3. **surgery** (:func:`inherit`): a copy of the teacher whose selected layers are replaced by
   :class:`~inhernet.layers.InherLinear` / :class:`~inhernet.layers.InherConv2d`, initialised from
   the truncated SVD. The teacher is never modified unless ``inplace=True``.

The result carries an :class:`InheritPlan` (``model.inhernet_plan``) that ``layer_report`` and
``save`` read.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import re
import warnings
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any, Iterator

import torch
from torch import nn
from tqdm.auto import tqdm

from .calibrate import cholesky_factor, input_second_moments
from .config import ALL_LINEAR, ConfigError, InheritConfig
from .hf.conv1d import KIND as CONV1D, in_out_features, is_conv1d, weight_matrix
from .layers import INHER_LAYERS, InherConv2d, InherLinear
from .ranks import LayerSpec, RankDecision, choose_ranks, inherited_params, needs_spectrum
from .svd import singular_values, truncated_svd

PLAN_ATTR = "inhernet_plan"
_TYPES = {"Linear": nn.Linear, "Conv2d": nn.Conv2d}
_LINEAR_KINDS = ("Linear", CONV1D)
#: candidate names listed in full in the "selects no layer" error below this count, summarised above
_LIST_ALL = 40
#: the skip reason of an output layer kept dense by ``exclude_classifier``
CLASSIFIER_REASON = "final classifier / output layer (exclude_classifier=True)"


@dataclass
class LayerRecord:
    """One row of the plan: a Linear/Conv2d of the teacher and what became of it."""

    name: str
    kind: str  # "Linear" | "Conv2d" | "Conv1D"
    shape: list[int]  # teacher weight shape, as stored (a Conv1D's is in × out)
    rank: int | None = None  # None: dense
    heads: int | None = None
    params_before: int = 0
    params_after: int = 0
    energy_kept: float | None = None  # fraction of ‖W‖_F² in the kept singular values
    skipped: str = ""  # why the layer stayed dense


@dataclass
class InheritPlan:
    """What ``inherit`` did: the config, per-layer records, and the teacher's / budget's counts."""

    config: dict[str, Any]
    layers: list[LayerRecord] = field(default_factory=list)
    teacher_params: int = 0
    budget: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "InheritPlan":
        layers = [LayerRecord(**row) for row in data.get("layers", [])]
        return cls(config=data["config"], layers=layers, teacher_params=data["teacher_params"], budget=data.get("budget"))

    @property
    def inherited(self) -> list[LayerRecord]:
        return [r for r in self.layers if r.rank is not None]


def _kind(module: nn.Module) -> str | None:
    for kind, cls in _TYPES.items():
        if isinstance(module, cls):
            return kind
    return CONV1D if is_conv1d(module) else None


def resolve_config(model: nn.Module, cfg: InheritConfig) -> InheritConfig:
    """The config as applied to ``model``: on a Hugging Face ``PreTrainedModel`` with
    ``target_modules=None``, the architecture's default targets (attention and MLP projections,
    :func:`inhernet.hf.default_target_modules`); otherwise ``cfg`` unchanged."""
    from .hf import default_target_modules, is_hf_model

    if cfg.target_modules is None and is_hf_model(model):
        return dataclasses.replace(cfg, target_modules=default_target_modules(model))
    return cfg


def _matches(name: str, selector: str | tuple[str, ...]) -> bool:
    """PEFT semantics: a string is a regex matched in full; a list matches names or name suffixes
    (``"q_proj"`` matches ``"layers.0.self_attn.q_proj"``); list entries may also be regexes."""
    if isinstance(selector, str):
        return re.fullmatch(selector, name) is not None
    for entry in selector:
        if name == entry or name.endswith("." + entry):
            return True
        try:
            if re.fullmatch(entry, name):
                return True
        except re.error:
            continue
    return False


def _iter_linear_conv(model: nn.Module) -> Iterator[tuple[str, nn.Module, str, nn.Module | None]]:
    """``(name, module, kind, parent)`` of every Linear/Conv2d/Conv1D, in registration order."""
    parents = {}
    for pname, parent in model.named_modules():
        for cname, child in parent.named_children():
            parents[f"{pname}.{cname}" if pname else cname] = parent
    for name, module in model.named_modules():
        kind = _kind(module)
        if kind is not None:
            yield name, module, kind, parents.get(name)


def select_layers(model: nn.Module, cfg: InheritConfig) -> tuple[list[tuple[str, nn.Module]], list[LayerRecord]]:
    """Split the model's Linear/Conv2d layers into eligible ``(name, module)`` and skipped records.

    Raises ``ConfigError`` when nothing is eligible, listing the candidate names.
    """
    found = list(_iter_linear_conv(model))
    outputs = _output_layers(model, found)
    tied = _tied_elsewhere(model)
    eligible, skipped = [], []
    for name, module, kind, parent in found:
        reason = _skip_reason(name, module, kind, parent, cfg, outputs) or _tie_reason(name, module, tied)
        if reason:
            skipped.append(_record(name, module, kind, skipped=reason))
        else:
            eligible.append((name, module))
    if cfg.target_modules is not None and not isinstance(cfg.target_modules, str):
        for entry in cfg.target_modules:
            if not any(_matches(n, (entry,)) for n, _, _, _ in found):
                warnings.warn(f"target_modules entry {entry!r} matches no Linear/Conv2d/Conv1D layer", stacklevel=3)
    if any(name == "" for name, _ in eligible):
        raise ConfigError(
            f"the teacher is itself a single nn.{_kind(model)}, not a network containing one, and a model cannot "
            "replace itself; wrap it: inhernet.inherit(nn.Sequential(layer), exclude_classifier=False, ...) "
            "(the InherNet layer is then the wrapper's element '0').")
    if not eligible and skipped and all(r.skipped == CLASSIFIER_REASON for r in skipped):
        raise ConfigError(_only_classifier_message(skipped))
    if not eligible:
        names = _candidates([n for n, _, _, _ in found]) or "(the model has no Linear, Conv2d or Conv1D layer)"
        raise ConfigError(
            "the config selects no layer to inherit "
            f"(target_modules={cfg.target_modules!r}, exclude_modules={cfg.exclude_modules!r}, "
            f"layer_types={list(cfg.layer_types)}). Candidate layers: {names}"
        )
    return eligible, skipped


def _only_classifier_message(skipped: list[LayerRecord]) -> str:
    """Why nothing is inherited when the model's only eligible layers are its output layers."""
    if len(skipped) == 1 and skipped[0].name == "":
        what = f"the model itself (an nn.{skipped[0].kind} {'×'.join(map(str, skipped[0].shape))})"
        return (f"the only layer to inherit, {what}, is the final classifier, which stays dense by default "
                "(exclude_classifier=True), so nothing is left to factorise. To factorise it, include it with "
                "exclude_classifier=False (or target it by name) — and since a model cannot replace itself, wrap "
                "a bare layer first: inhernet.inherit(nn.Sequential(layer), exclude_classifier=False, ...).")
    one = len(skipped) == 1
    what = ", ".join(repr(r.name) for r in skipped)
    return (f"the only {'layer' if one else 'layers'} to inherit, {what}, {'is' if one else 'are'} the final "
            f"classifier / output layer, which stays dense by default (exclude_classifier=True), so nothing is left "
            f"to factorise. To factorise {'it' if one else 'them'}, pass exclude_classifier=False, or target "
            f"{'it' if one else 'them'} by name (target_modules={[r.name for r in skipped]!r}).")


def _candidates(names: list[str]) -> str:
    """Candidate layer names for an error message: all of them, or for a big model the distinct
    last name components with their counts and one full name each."""
    if len(names) <= _LIST_ALL:
        return ", ".join(names)
    counts = Counter(n.rpartition(".")[2] for n in names)
    example = {}
    for n in names:
        example.setdefault(n.rpartition(".")[2], n)
    parts = [f"{leaf} ×{c} (e.g. {example[leaf]})" for leaf, c in counts.items()]
    return f"{len(names)} layers: " + ", ".join(parts)


def _output_layers(model: nn.Module, found) -> set[str]:
    """What ``exclude_classifier`` keeps dense: the last Linear/Conv1D, and a Hugging Face model's
    output embeddings (the LM head)."""
    last = next((n for n, _, k, _ in reversed(found) if k in _LINEAR_KINDS), None)
    out = set() if last is None else {last}
    get_out = getattr(model, "get_output_embeddings", None)
    if callable(get_out):
        try:
            head = get_out()
        except (NotImplementedError, AttributeError):
            head = None
        if isinstance(head, nn.Module):
            out.update(n for n, m, _, _ in found if m is head)
    return out


def _tied_elsewhere(model: nn.Module) -> dict[int, list[str]]:
    """``id(parameter) → qualified names`` for every parameter shared by several names (tied)."""
    names: dict[int, list[str]] = {}
    for pname, p in model.named_parameters(remove_duplicate=False):
        names.setdefault(id(p), []).append(pname)
    return {k: v for k, v in names.items() if len(v) > 1}


def _tie_reason(name: str, module: nn.Module, tied: dict[int, list[str]]) -> str:
    for pname, p in module.named_parameters(recurse=False):
        others = [n for n in tied.get(id(p), []) if n.rpartition(".")[0] != name]
        if others:
            return f"{pname} tied to {others[0]}: stays dense so the tie holds"
    return ""


def _skip_reason(name, module, kind, parent, cfg: InheritConfig, outputs: set[str]) -> str:
    all_linear = cfg.target_modules == ALL_LINEAR
    targeted = cfg.target_modules is not None and not all_linear and _matches(name, cfg.target_modules)
    if kind not in cfg.layer_types:
        return f"layer type {kind} not in layer_types"
    if all_linear and kind not in _LINEAR_KINDS:
        return f"{ALL_LINEAR!r} targets Linear/Conv1D layers only"
    if cfg.target_modules is not None and not all_linear and not targeted:
        return "not in target_modules"
    if cfg.exclude_modules is not None and _matches(name, cfg.exclude_modules):
        return "in exclude_modules"
    if cfg.exclude_classifier and name in outputs and not targeted:
        return CLASSIFIER_REASON
    if isinstance(parent, nn.MultiheadAttention):
        return "inside nn.MultiheadAttention, which reads the weight directly"
    if kind == "Conv2d":
        if module.groups != 1:
            return f"grouped/depthwise conv (groups={module.groups}) is not factorised"
        if module.padding_mode != "zeros":
            return f"padding_mode={module.padding_mode!r} (only 'zeros' is supported)"
    return ""


def _record(name: str, module: nn.Module, kind: str, **kw) -> LayerRecord:
    n = sum(p.numel() for p in module.parameters(recurse=False))
    return LayerRecord(name, kind, list(module.weight.shape), params_before=n, params_after=n, **kw)


def layer_spec(name: str, kind: str, weight: torch.Tensor, has_bias: bool, with_spectrum: bool,
               whiten: torch.Tensor | None = None) -> LayerSpec:
    """The :class:`LayerSpec` of a layer from its stored weight (a Conv1D's is transposed here);
    ``weight`` may live on the meta device when ``with_spectrum`` is False."""
    matrix = weight_matrix(weight.detach(), kind)
    d_out, d_in = matrix.shape[0], matrix[0].numel()
    return LayerSpec(name, kind, d_in, d_out, has_bias, singular_values(matrix, whiten) if with_spectrum else None)


def _spec(name: str, module: nn.Module, kind: str, with_spectrum: bool, whiten: torch.Tensor | None) -> LayerSpec:
    return layer_spec(name, kind, module.weight, module.bias is not None, with_spectrum, whiten)


def _whitening(teacher: nn.Module, eligible: list[tuple[str, nn.Module]],
               cfg: InheritConfig, calibration: Any) -> dict[str, torch.Tensor]:
    """The Cholesky factors of every eligible layer's input second moment (``init="whitened"``)."""
    if cfg.init != "whitened":
        if calibration is not None:
            raise ConfigError("calibration batches are only used by init='whitened'; pass init='whitened' or drop them.")
        return {}
    if calibration is None:
        raise ConfigError("init='whitened' needs calibration data: inherit(model, ..., calibration=batches), "
                          "a few batches of real inputs (a dict is passed as model(**batch)).")
    moments = input_second_moments(teacher, dict(eligible), calibration)
    return {name: cholesky_factor(g) for name, g in moments.items()}


def check_finite(name: str, pname: str, tensor: torch.Tensor) -> None:
    if not torch.isfinite(tensor).all():
        raise ValueError(
            f"teacher layer {name!r} has non-finite values (NaN/Inf) in its {pname}; "
            "an SVD of it is meaningless. Fix or reload the teacher's weights, or exclude the "
            "layer with exclude_modules."
        )


def _check_finite(eligible: list[tuple[str, nn.Module]]) -> None:
    for name, module in eligible:
        for pname, p in module.named_parameters(recurse=False):
            check_finite(name, pname, p)


def check_materialised(teacher: nn.Module) -> None:
    """ConfigError when a parameter or buffer of ``teacher`` lives on the ``meta`` device: such a
    tensor has a shape but no values, so there is nothing to factorise (and copying or running the
    teacher would fail obscurely). Models built under ``init_empty_weights`` / ``device="meta"``
    must get their real weights first."""
    tensors = [*teacher.named_parameters(remove_duplicate=False), *teacher.named_buffers(remove_duplicate=False)]
    meta = [name for name, t in tensors if t.is_meta]
    if meta:
        raise ConfigError(
            f"the teacher has {len(meta)} tensor(s) on the meta device (e.g. {meta[0]!r}): they have a shape but "
            "no values, so there is nothing to inherit. Load the real weights first (e.g. from_pretrained "
            "without device_map='meta', or model.to_empty(device='cpu') then load_state_dict), or, for a "
            "Hugging Face checkpoint on disk, use inhernet.hf.inherit_checkpoint(src, dst, ...), which reads "
            "its tensors from the files one at a time."
        )


def _resolve_budget(cfg: InheritConfig, teacher_params: int) -> int | None:
    from .report import count_parameters

    b = cfg.budget
    if b is None:
        return None
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


def layer_generator(seed: int, name: str) -> torch.Generator:
    """The CPU generator one layer's random draws come from (gate, random factors, randomized SVD):
    seeded from ``(seed, layer name)``, so a layer's draws depend on neither the order layers are
    processed in, nor which other layers are inherited, nor the global RNG — the in-memory and the
    streaming paths agree by construction, and concurrent ``inherit`` calls cannot disturb each other."""
    digest = hashlib.sha256(f"{int(seed)}:{name}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))


def build_layer(module: nn.Module, kind: str, rank: int, cfg: InheritConfig, *,
                device: torch.device | str | None = None, dtype: torch.dtype | None = None,
                generator: torch.Generator | None = None) -> nn.Module:
    """An empty (randomly initialised, from ``generator``) inherited layer with the structure of
    ``module``, on ``module``'s device and dtype unless given (``module`` may be a meta-device skeleton)."""
    common = dict(bias=module.bias is not None, gate=cfg.gate, structure=cfg.structure,
                  device=module.weight.device if device is None else device,
                  dtype=module.weight.dtype if dtype is None else dtype, generator=generator)
    if kind == "Linear":
        return InherLinear(module.in_features, module.out_features, rank, cfg.heads, **common)
    if kind == CONV1D:
        return InherLinear(*in_out_features(module), rank, cfg.heads, **common)
    return InherConv2d(module.in_channels, module.out_channels, module.kernel_size, rank, cfg.heads,
                       stride=module.stride, padding=module.padding, dilation=module.dilation, **common)


def set_submodule(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, new)


def inherit(teacher: nn.Module, config: InheritConfig | None = None, *, inplace: bool = False,
            progress: bool = True, calibration: Any = None, **overrides: Any) -> nn.Module:
    """Build an InherNet from ``teacher``.

    Args:
        teacher: any ``nn.Module``; it is deep-copied first (unless ``inplace=True``) and never changed.
            Every parameter of the result is trainable (``requires_grad=True``), whatever flags the
            teacher's carry: freeze parts of the InherNet afterwards if you want them frozen.
        config: an :class:`InheritConfig`; ``overrides`` (e.g. ``rank=16``) are applied on top, so
            ``inherit(teacher, rank=8, heads=3)`` works too.
        inplace: replace the layers of ``teacher`` itself (saves memory on very large models).
        progress: show a progress bar over the factorised layers.
        calibration: for ``init="whitened"`` only: the input batches the teacher is run on to
            measure each layer's input statistics: a list of tensors, a ``DataLoader`` (of tensors,
            or of ``(x, y)`` pairs, whose labels ``y`` a plain module is not given), dicts passed as
            ``model(**batch)``, or one tensor as one batch (the rule:
            :func:`inhernet.calibrate.model_inputs`). Batches with NaN/Inf are refused.

    Returns:
        the inherited model, with ``model.inhernet_plan`` describing every Linear/Conv2d/Conv1D.

    Deterministic without global state: every random draw comes from a per-layer
    :func:`layer_generator` seeded by ``config.seed``; the global RNG is left as it was, and calls
    from several threads at once give the same models as one after the other.

    On a Hugging Face ``PreTrainedModel``, ``target_modules=None`` selects the architecture's
    attention and MLP projections (:func:`resolve_config`); the plan records the resolved regex.
    """
    cfg = resolve_config(teacher, _merge(config, overrides))
    if any(isinstance(m, INHER_LAYERS) for m in teacher.modules()):
        raise ConfigError("the model already contains inherited layers; inherit from the original teacher.")
    check_materialised(teacher)
    from .report import count_parameters

    teacher_params = count_parameters(teacher)
    order = {name: i for i, (name, *_rest) in enumerate(_iter_linear_conv(teacher))}
    eligible, skipped = select_layers(teacher, cfg)
    _check_finite(eligible)
    kinds = {name: _kind(m) for name, m in eligible}
    whiten = _whitening(teacher, eligible, cfg, calibration)
    specs = [_spec(name, m, kinds[name], needs_spectrum(cfg), whiten.get(name)) for name, m in eligible]
    budget = _resolve_budget(cfg, teacher_params)
    budget_left = None
    if budget is not None:
        budget_left = budget - (teacher_params - sum(s.dense_params for s in specs))
    decisions = choose_ranks(specs, cfg, budget_left=budget_left)

    model = teacher if inplace else copy.deepcopy(teacher)
    # trainable whatever flags the teacher carries (a frozen teacher, e.g. one used for KD)
    model.requires_grad_(True)
    records = list(skipped)
    modules = dict(eligible)
    todo = [(s, modules[s.name], decisions[s.name]) for s in specs]
    for spec, module, decision in tqdm(todo, desc="inheriting", unit="layer", disable=not progress, leave=False, delay=1.0):
        records.append(_surgery(model, spec, module, decision, cfg, whiten.get(spec.name)))
    records.sort(key=lambda r: order[r.name])
    plan = InheritPlan(config=cfg.to_dict(), layers=records, teacher_params=teacher_params, budget=budget)
    setattr(model, PLAN_ATTR, plan)
    return model


def _merge(config: InheritConfig | None, overrides: dict[str, Any]) -> InheritConfig:
    if config is None:
        return InheritConfig.from_dict(overrides)
    if not isinstance(config, InheritConfig):
        raise TypeError(f"config must be an InheritConfig, got {type(config).__name__}; use InheritConfig.from_dict for dicts.")
    if not overrides:
        return config
    data = {f: getattr(config, f) for f in config.__dataclass_fields__}
    return InheritConfig.from_dict({**data, **overrides})


def inherit_layer(module: nn.Module, spec: LayerSpec, rank: int, weight: torch.Tensor, bias: torch.Tensor | None,
                  cfg: InheritConfig, whiten: torch.Tensor | None = None) -> tuple[nn.Module, LayerRecord]:
    """The inherited version of one teacher layer and its plan record.

    ``module`` gives the structure (it may be a meta-device skeleton); ``weight`` (as stored: a
    Conv1D's is ``in × out``) and ``bias`` give the values. The new layer lives on ``weight``'s
    device and dtype. Its random draws (the random factors, the gate, a randomized SVD) come from
    :func:`layer_generator` ``(cfg.seed, spec.name)``; the global RNG is not touched.
    ``whiten``: the layer's input Cholesky factor, required by ``init="whitened"``.
    """
    gen = layer_generator(cfg.seed, spec.name)
    # random factors (the "w.o. SVD" init) and the gate
    new = build_layer(module, spec.kind, rank, cfg, device=weight.device, dtype=weight.dtype, generator=gen)
    weight = weight.detach()
    bias = None if bias is None else bias.detach()
    energy_kept = None
    if cfg.init in ("svd", "whitened"):
        if (cfg.init == "whitened") != (whiten is not None):
            raise ConfigError(f"{spec.name}: init={cfg.init!r} {'needs' if whiten is None else 'takes no'} "
                              "input whitening factor")
        matrix = weight_matrix(weight, spec.kind)
        fact = truncated_svd(matrix, rank, method=cfg.svd, niter=cfg.svd_niter, whiten=whiten, generator=gen)
        down, up = fact.factors()
        new.set_factors(down.to(weight.dtype), up.to(weight.dtype), bias, cfg.head_scale)
        new.diversify_heads(cfg.head_init, cfg.head_init_scale, generator=gen)
        energy_kept = fact.energy_kept
    elif bias is not None:  # random factors, but the bias is inherited
        with torch.no_grad():
            new.bias.copy_(bias.unsqueeze(0).expand_as(new.bias))
    n_after = inherited_params(spec, rank, cfg.heads, cfg.structure, cfg.gate)
    record = LayerRecord(spec.name, spec.kind, list(weight.shape), rank, cfg.heads, spec.dense_params, n_after, energy_kept)
    return new, record


def _surgery(model: nn.Module, spec: LayerSpec, module: nn.Module, decision: RankDecision, cfg: InheritConfig,
             whiten: torch.Tensor | None) -> LayerRecord:
    """Replace one layer of ``model`` (the copy) by its inherited version, or record why not."""
    if decision.rank is None:
        return _record(spec.name, module, spec.kind, skipped=decision.reason)
    new, record = inherit_layer(module, spec, decision.rank, module.weight, module.bias, cfg, whiten)
    set_submodule(model, spec.name, new)
    return record
