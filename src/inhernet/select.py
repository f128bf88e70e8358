"""Layer selection: which layers of a teacher are inherited, and why the others stay dense.

The first step of the pipeline (as Torch-Pruning separates analysis, policy and surgery). It reads
module types, names and shapes only, so it works on a meta-device skeleton as well as on a real
model: every registered :class:`~inhernet.kinds.LayerKind` is a candidate; a layer is skipped when
its kind is not in ``layer_types``, it is not in ``target_modules`` / is in ``exclude_modules``,
it is the output layer (``exclude_classifier``), its weight is tied to another module, it sits in
an ``nn.MultiheadAttention`` (which reads the weight directly), or its kind refuses it (a grouped
conv). On a Hugging Face model ``target_modules=None`` means the architecture's attention and MLP
projections (:func:`resolve_config`).
"""

from __future__ import annotations

import dataclasses
import re
import warnings
from collections import Counter
from typing import Iterator

from torch import nn

from .config import ALL_LINEAR, InheritConfig
from .errors import ConfigError
from .kinds import LayerKind, kind_of
from .plan import LayerRecord
from .targets import default_target_modules, is_transformers_model
from .utils import tied_names

__all__ = ["CLASSIFIER_REASON", "Candidate", "dense_record", "find_layers", "matches", "resolve_config",
           "select_layers"]

#: candidate names listed in full in the "selects no layer" error below this count, summarised above
LIST_ALL = 40
#: the skip reason of an output layer kept dense by ``exclude_classifier``
CLASSIFIER_REASON = "final classifier / output layer (exclude_classifier=True)"


@dataclasses.dataclass
class Candidate:
    """A layer of a registered kind: its qualified name, the module, its kind and its parent."""

    name: str
    module: nn.Module
    kind: LayerKind
    parent: nn.Module | None


def resolve_config(model: nn.Module, cfg: InheritConfig) -> InheritConfig:
    """The config as applied to ``model``: on a Hugging Face ``PreTrainedModel`` with
    ``target_modules=None``, the architecture's default targets (attention and MLP projections,
    :func:`inhernet.targets.default_target_modules`); otherwise ``cfg`` unchanged."""
    if cfg.target_modules is None and is_transformers_model(model):
        return dataclasses.replace(cfg, target_modules=default_target_modules(model))
    return cfg


def matches(name: str, selector: str | tuple[str, ...]) -> bool:
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


def find_layers(model: nn.Module) -> Iterator[Candidate]:
    """Every module of a registered layer kind, in registration order."""
    parents = {}
    for pname, parent in model.named_modules():
        for cname, child in parent.named_children():
            parents[f"{pname}.{cname}" if pname else cname] = parent
    for name, module in model.named_modules():
        kind = kind_of(module)
        if kind is not None:
            yield Candidate(name, module, kind, parents.get(name))


def dense_record(name: str, module: nn.Module, kind: LayerKind, reason: str) -> LayerRecord:
    """The plan record of a layer that stays dense, and why."""
    n = sum(p.numel() for p in module.parameters(recurse=False))
    return LayerRecord(name, kind.name, list(module.weight.shape), params_before=n, params_after=n, skipped=reason)


def select_layers(model: nn.Module, cfg: InheritConfig) -> tuple[list[Candidate], list[LayerRecord]]:
    """Split the model's candidate layers into the eligible ones and the records of the skipped.

    Raises ``ConfigError`` when nothing is eligible, listing the candidate names.
    """
    found = list(find_layers(model))
    outputs = _output_layers(model, found)
    tied = tied_names(model)
    eligible, skipped = [], []
    for c in found:
        reason = _skip_reason(c, cfg, outputs) or _tie_reason(c, tied)
        if reason:
            skipped.append(dense_record(c.name, c.module, c.kind, reason))
        else:
            eligible.append(c)
    if cfg.target_modules is not None and not isinstance(cfg.target_modules, str):
        for entry in cfg.target_modules:
            if not any(matches(c.name, (entry,)) for c in found):
                warnings.warn(f"target_modules entry {entry!r} matches no Linear/Conv layer", stacklevel=3)
    if any(c.name == "" for c in eligible):
        raise ConfigError(
            f"the teacher is itself a single nn.{type(model).__name__}, not a network containing one, and a model "
            "cannot replace itself; wrap it: inhernet.inherit(nn.Sequential(layer), exclude_classifier=False, ...) "
            "(the InherNet layer is then the wrapper's element '0').")
    if not eligible and skipped and all(r.skipped == CLASSIFIER_REASON for r in skipped):
        raise ConfigError(_only_classifier_message(skipped))
    if not eligible:
        names = _candidates([c.name for c in found]) or "(the model has no layer of a registered kind)"
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
    if len(names) <= LIST_ALL:
        return ", ".join(names)
    counts = Counter(n.rpartition(".")[2] for n in names)
    example = {}
    for n in names:
        example.setdefault(n.rpartition(".")[2], n)
    parts = [f"{leaf} ×{c} (e.g. {example[leaf]})" for leaf, c in counts.items()]
    return f"{len(names)} layers: " + ", ".join(parts)


def _output_layers(model: nn.Module, found: list[Candidate]) -> set[str]:
    """What ``exclude_classifier`` keeps dense: the last linear layer, and a Hugging Face model's
    output embeddings (the LM head)."""
    last = next((c.name for c in reversed(found) if c.kind.linear), None)
    out = set() if last is None else {last}
    get_out = getattr(model, "get_output_embeddings", None)
    if callable(get_out):
        try:
            head = get_out()
        except (NotImplementedError, AttributeError):
            head = None
        if isinstance(head, nn.Module):
            out.update(c.name for c in found if c.module is head)
    return out


def _tie_reason(c: Candidate, tied: dict[str, list[str]]) -> str:
    for pname, _ in c.module.named_parameters(recurse=False):
        full = f"{c.name}.{pname}" if c.name else pname
        others = [n for n in tied.get(full, []) if n.rpartition(".")[0] != c.name]
        if others:
            return f"{pname} tied to {others[0]}: stays dense so the tie holds"
    return ""


def _skip_reason(c: Candidate, cfg: InheritConfig, outputs: set[str]) -> str:
    all_linear = cfg.target_modules == ALL_LINEAR
    targeted = cfg.target_modules is not None and not all_linear and matches(c.name, cfg.target_modules)
    if c.kind.name not in cfg.layer_types:
        return f"layer type {c.kind.name} not in layer_types"
    if all_linear and not c.kind.linear:
        return f"{ALL_LINEAR!r} targets Linear/Conv1D layers only"
    if cfg.target_modules is not None and not all_linear and not targeted:
        return "not in target_modules"
    if cfg.exclude_modules is not None and matches(c.name, cfg.exclude_modules):
        return "in exclude_modules"
    if cfg.exclude_classifier and c.name in outputs and not targeted:
        return CLASSIFIER_REASON
    if isinstance(c.parent, nn.MultiheadAttention):
        return "inside nn.MultiheadAttention, which reads the weight directly"
    return c.kind.skip_reason(c.module)
