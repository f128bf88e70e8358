"""``InheritConfig``: everything that decides how a teacher becomes an InherNet.

The config is a plain dataclass (PEFT-style): layer selection (``target_modules``,
``exclude_modules``, ``layer_types``), one rank policy, the layer's structure (heads, gate, head
scale, symmetric ablation) and how the SVD is computed. It validates itself on construction, so a
bad value fails where it was written, with a message that names the fix.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence, Union

from torch import nn

from .errors import ConfigError
from .registry import HEAD_INITS, INITS, LAYER_KINDS, RANK_POLICIES
from .utils import count_parameters, did_you_mean

DEFAULT_RANK = 8

HEAD_SCALES = ("exact", "paper")
#: how the H heads start (see :meth:`inhernet.layers.InherLinear.diversify_heads`)
GATES = ("softmax", "none")
STRUCTURES = ("asymmetric", "symmetric")
SVD_METHODS = ("exact", "randomized")
#: what a budget counts: the whole network, or only the selected layers (the LLM-compression convention)
BUDGET_SCOPES = ("model", "targets")
#: what a budget is measured in: parameters, or latency measured on this device (:mod:`inhernet.latency`)
BUDGET_METRICS = ("params", "latency")
#: which form of each layer a latency budget times: as ``inherit`` returns it (trained this way), or as
#: ``optimize_for_inference`` runs it once trained (:mod:`inhernet.latency`)
LATENCY_FORMS = ("inherited", "optimized")
#: how ``init="whitened"`` measures input statistics (see :mod:`inhernet.calibrate`)
CALIBRATION_MODES = ("auto", "sequential", "one_pass")
#: ``target_modules`` shortcut (as in PEFT): every Linear/Conv1D except the output layer
ALL_LINEAR = "all-linear"

Budget = Union[int, float, nn.Module, None]
#: the smallest ``int`` budget accepted: no network worth inheriting fits in fewer parameters, so a
#: smaller int (``budget=1``) is almost surely a fraction written without its decimal point
MIN_BUDGET_COUNT = 100
#: the most heads accepted: every head is a whole up-projection (d_out × r) of every inherited layer,
#: so H is the layer's size multiplier; the paper uses 2–3, and a larger count is almost surely a typo
#: that would otherwise surface as an out-of-memory kill (``heads=10**9`` asks for terabytes)
MAX_HEADS = 64


def _choice(name: str, value: str, allowed: Sequence[str]) -> None:
    if value not in allowed:
        raise ConfigError(f"{name}={value!r} is not valid{did_you_mean(value, allowed)}; "
                          f"choose one of {', '.join(map(repr, allowed))}.")


def _as_name_list(value: str | Sequence[str] | None) -> str | tuple[str, ...] | None:
    """Normalise ``target_modules``-style input: a single regex string stays a string (PEFT)."""
    if value is None or isinstance(value, str):
        return value
    return tuple(value)


@dataclass
class InheritConfig:
    """How to inherit a teacher.

    Rank policy (give at most one; with none, ``rank=8`` as in the paper's small presets):
      rank:           one rank for every factorised layer (the paper).
      rank_fraction:  a fraction of each layer's full rank ``min(d_out, d_in)``.
      energy:         the smallest rank keeping this fraction of each layer's spectrum energy.
      budget:         a parameter budget for the whole inherited network: an ``int`` count (at
                      least ``MIN_BUDGET_COUNT`` = 100: a smaller int such as ``budget=1`` is taken
                      for a mistyped fraction and refused), a
                      ``float`` in (0, 1] as a fraction of the teacher, or a ``nn.Module`` meaning
                      "as many parameters as that model". ``budget_mode`` picks how it is spent:
                      ``"uniform"`` (the largest single rank that fits, as the paper would pick) or
                      ``"spectral"`` (a global allocation by spectrum energy gained per parameter).
      budget_scope:   what the budget counts. ``"model"`` (default): the whole inherited network,
                      embeddings, norms and the classifier included (``budget=0.6`` on a small
                      transformer whose embeddings are a third of it leaves little for the blocks).
                      ``"targets"``: only the selected layers — the LLM-compression convention ("60 %
                      of the decoder-linear parameters"): ``budget=0.6`` keeps 60 % of what the
                      targeted layers hold, an int is a count for them; everything else is unchanged.
      budget_metric:  what the budget is measured in. ``"params"`` (default): parameters, as above.
                      ``"latency"``: ``budget`` is a float in (0, 1], a fraction of the teacher's latency
                      measured on this device and thread count on the example input
                      (``latency_input``, or ``inherit(..., example_input=x)``): every selected layer
                      is timed dense and factorised at a grid of ranks once (cached on disk, see
                      :mod:`inhernet.latency`), and the allocator chooses dense or a rank per layer to
                      keep the most spectrum energy (whitened energy under ``init="whitened"``) within
                      the time. ``budget_mode`` ``"spectral"`` (that allocation) or ``"uniform"`` (the
                      largest single rank that fits). With ``budget_scope="model"`` the rest of the
                      network (norms, activations, the classifier) is timed once and counts as fixed;
                      with ``"targets"`` the budget is a fraction of the selected layers' time.
      latency_input:  the shape of the example input a latency budget is measured on, batch included
                      (``(64, 3, 32, 32)``; a Hugging Face model: ``(batch, tokens)`` of random token
                      ids). Optional when ``inherit`` is given ``example_input``.
      latency_cache:  the folder of the latency tables (default ``~/.cache/inhernet/latency``), one
                      JSON per device, thread count and torch version; ``""``: measure every time.
      latency_form:   what a latency budget times per layer. ``"inherited"`` (default): the layer as
                      ``inherit`` returns it (H heads, the gate running: the training form).
                      ``"optimized"``: the layer as :func:`inhernet.optimize_for_inference` runs it
                      once trained (heads that differ, so the gate runs; the fastest of its inference
                      kernels, or the exact dense product when that is not faster): budget the model
                      you will serve through ``optimize_for_inference`` / ``inhernet export``.
      rank_pattern:   ``{regex: rank}`` overrides, matched against layer names (first full match
                      wins); it applies on top of the policy above, not under a budget.
      rank_multiple:  round each rank down to a multiple of this (at least the multiple itself).
      dense_at_full_rank: a layer whose rank reaches ``min(d_out, d_in)`` stays dense (the paper's
                      rule; default). ``False`` factorises every selected layer at its rank, full
                      rank included (ranks above full are clamped) and whatever its size: the
                      exact-reconstruction check.
      min_saving:     a layer stays dense unless its factorised form has fewer than
                      ``(1 - min_saving)`` × its dense parameters (default 0.0: it must be strictly
                      smaller, so ``energy=0.9`` cannot grow a network past its teacher). ``None``
                      turns the rule off (the paper's parameter counts factorise a 16×3×3×3 stem
                      conv into a larger layer). The report names the layers it keeps dense.

    Selection:
      target_modules: layer names to factorise: a list of names / name suffixes, or one regex
                      string matched in full against the qualified name (as in PEFT), or
                      ``"all-linear"``: every Linear/Conv1D except the output layer (the LM head /
                      classifier, while ``exclude_classifier``). ``None`` means every layer of
                      ``layer_types`` for a plain ``nn.Module``; for a Hugging Face
                      ``PreTrainedModel`` it means the architecture's attention and MLP projections
                      (:func:`inhernet.targets.default_target_modules`; embeddings, heads, patch
                      embeddings and norms stay dense). Layers whose weight is tied to another
                      module's stay dense.
      exclude_modules: same syntax; these stay dense.
      layer_types:    which registered layer kinds are eligible (default: all of them:
                      ``"Linear"``, ``"Conv2d"``, ``"Conv1D"`` — transformers' transposed linear of
                      GPT-2 — and ``"Conv1d"``, ``nn.Conv1d``; :mod:`inhernet.kinds`).
      exclude_classifier: keep the network's last ``Linear`` (and a Hugging Face model's output
                      embeddings, the LM head) dense unless targeted by name (default, as in the paper).

    Structure:
      heads:          number of gated up-projection heads H (paper: 3 on CIFAR, 2 on GLUE). Default
                      1 — plain low rank, no gate — because at equal parameters no gated variant has
                      measured better: on resnet56 → resnet20 (strong teacher, 3 seeds) the best one
                      (H = 2, ``perturbed``) was +0.18 points (Welch p = 0.15), on MiniLM H = 1 was
                      5.5 points ahead of H = 2 (the heads halve the rank a budget buys) and on
                      SmolLM2 at 60 % far ahead; H = 1 is also the fastest to train and serve. ``3``
                      with ``head_init="copies"`` is the paper's layer (docs/benchmarks).
      head_scale:     ``"exact"`` (at full rank the network equals the teacher) or ``"paper"``
                      (every head divided by H, as in the paper and its demo).
      head_init:      how the H SVD-initialised heads start (H > 1). ``"perturbed"`` (default):
                      zero-sum random perturbations of the heads (Σ_h δ_h = 0) and a zero-initialised
                      gate; ``"split"``: each head leans on a different subset of the kept singular
                      directions (zero-sum too) and a zero gate. Both keep the layer's initial
                      function exactly that of the copies (a zero gate mixes the heads uniformly)
                      while giving the gate a gradient. ``"copies"``: identical copies and a random
                      gate (the paper) — the gate gets no gradient at step 0 (``u_h − y = 0``) and the
                      heads part only slowly, through the gate's per-sample weights (head cosine
                      0.996 after 10 epochs on resnet56 → resnet20). ``perturbed`` is the default as
                      the best measured mode, by margins inside the noise: on resnet56 → resnet20
                      (3 seeds) H = 2 perturbed 92.07 ± 0.05 against copies 91.94 ± 0.20, H = 3
                      copies 91.95 ± 0.10 against perturbed 91.84 ± 0.08, the 1,000-image pilot
                      H = 3 perturbed 72.63 against copies 72.27 (docs/benchmarks).
      head_init_scale: size of the head deviations in the ``perturbed`` / ``split`` modes: the mean
                      ‖δ_h‖ / ‖B‖ (default 0.005; ``split`` at 1.0 is the full split, head h =
                      H × its subset).
      init:           ``"svd"`` (truncated SVD of each weight, the paper's), ``"whitened"``
                      (activation-aware: the SVD of ``W·L`` with ``L`` the Cholesky factor of the
                      layer's input second moment on calibration batches, so the kept rank minimises
                      the output error on real inputs, as in SVD-LLM; needs
                      ``inherit(..., calibration=batches)``; for a Conv2d the inputs are its patches) or ``"random"``
                      (the paper's "w.o. SVD" ablation: factors random, everything else inherited).
      calibration_mode: how ``init="whitened"`` measures the input statistics. ``"sequential"``
                      (SVD-LLM): block by block through the network's list of repeated blocks (a
                      transformer's layers); each block's statistics are taken on the outputs of the
                      blocks already inherited, so later layers correct for earlier truncation, and
                      peak memory is one block's statistics + the calibration activations at one
                      block, whatever the depth (a streamed checkpoint loads each block only when
                      it is reached). ``"one_pass"``: every layer's statistics from the teacher in
                      one pass with hooks on the whole model (memory grows with depth).
                      ``"auto"`` (default): sequential when the model has one list of repeated
                      blocks holding its inherited layers (Hugging Face decoders and encoders),
                      one pass otherwise (a CNN).
      gate:           ``"softmax"`` (learned gate on the pooled compressed features) or ``"none"``
                      (fixed equal weights: the "w.o. gate" ablation).
      structure:      ``"asymmetric"`` (one shared down-projection) or ``"symmetric"`` (H separate
                      down+up pairs, the LoRA+MoE-like ablation).

    SVD:
      svd:            ``"exact"`` or ``"randomized"`` (``torch.svd_lowrank``; faster on big matrices).
      svd_niter:      power iterations of the randomized SVD.
      seed:           seeds the random parts (gate init, random factors, randomized SVD).
    """

    rank: int | None = None
    heads: int = 1
    rank_fraction: float | None = None
    energy: float | None = None
    budget: Budget = None
    budget_mode: str = "spectral"
    budget_scope: str = "model"
    budget_metric: str = "params"
    latency_input: Sequence[int] | None = None
    latency_cache: str | None = None
    latency_form: str = "inherited"
    rank_pattern: dict[str, int] = field(default_factory=dict)
    rank_multiple: int = 1
    dense_at_full_rank: bool = True
    min_saving: float | None = 0.0
    target_modules: str | Sequence[str] | None = None
    exclude_modules: str | Sequence[str] | None = None
    layer_types: Sequence[str] = field(default_factory=LAYER_KINDS.names)
    exclude_classifier: bool = True
    head_scale: str = "exact"
    head_init: str = "perturbed"
    head_init_scale: float = 0.005
    init: str = "svd"
    calibration_mode: str = "auto"
    gate: str = "softmax"
    structure: str = "asymmetric"
    svd: str = "exact"
    svd_niter: int = 4
    seed: int = 0

    def __post_init__(self) -> None:
        self._validate_types()
        self.target_modules = _as_name_list(self.target_modules)
        self.exclude_modules = _as_name_list(self.exclude_modules)
        self.layer_types = tuple(self.layer_types)
        self.rank_pattern = dict(self.rank_pattern)
        if self.latency_input is not None:
            self.latency_input = tuple(self.latency_input)
        self._validate()

    # ------------------------------------------------------------------ validation
    def _validate_types(self) -> None:
        """Types first, so a wrong type is a ``ConfigError`` naming the option, not a ``TypeError``
        from deep inside ``inherit`` (found by tests/test_properties.py)."""
        for name in ("target_modules", "exclude_modules"):
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, str):
                _regex(name, value)
            elif not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
                raise ConfigError(f"{name}={value!r} must be a list of layer names / name suffixes, or one regex string.")
        if isinstance(self.layer_types, str) or not isinstance(self.layer_types, (list, tuple)):
            raise ConfigError(f"layer_types={self.layer_types!r} must be a list of {', '.join(LAYER_KINDS.names())}.")
        if not isinstance(self.rank_pattern, dict):
            raise ConfigError(f"rank_pattern={self.rank_pattern!r} must be a dict {{regex: rank}}.")
        for pattern in self.rank_pattern:
            if isinstance(pattern, str):
                _regex(f"rank_pattern key {pattern!r}", pattern)
        for name in ("dense_at_full_rank", "exclude_classifier"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name}={getattr(self, name)!r} must be true or false.")
        for name in ("rank_fraction", "energy"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                      or not math.isfinite(value)):
                raise ConfigError(f"{name}={value!r} must be a number in (0, 1].")
        if self.latency_input is not None and (
                isinstance(self.latency_input, str) or not isinstance(self.latency_input, (list, tuple))
                or not self.latency_input
                or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 1 for d in self.latency_input)):
            raise ConfigError(f"latency_input={self.latency_input!r} must be an input shape, batch included: positive "
                              "ints such as (64, 3, 32, 32).")
        if self.latency_cache is not None and not isinstance(self.latency_cache, str):
            raise ConfigError(f"latency_cache={self.latency_cache!r} must be a folder path (a string; '' for no cache).")
        for name in ("budget_mode", "budget_scope", "budget_metric", "latency_form", "head_scale", "head_init", "init", "calibration_mode", "gate", "structure", "svd"):
            if not isinstance(getattr(self, name), str):
                raise ConfigError(f"{name}={getattr(self, name)!r} must be a string.")
        _positive_int("seed", self.seed, allow_zero=True)

    def _validate(self) -> None:
        policies = [n for n in ("rank", "rank_fraction", "energy", "budget") if getattr(self, n) is not None]
        if len(policies) > 1:
            raise ConfigError(
                f"give one rank policy, got {', '.join(policies)}; keep one of them "
                "(rank_pattern can still override single layers)."
            )
        if self.rank is not None:
            _positive_int("rank", self.rank)
        if self.min_saving is not None and (isinstance(self.min_saving, bool)
                                            or not isinstance(self.min_saving, (int, float))
                                            or not 0 <= self.min_saving < 1):
            raise ConfigError(f"min_saving={self.min_saving!r} must be a fraction in [0, 1) (or None to turn "
                              "the rule off).")
        if self.rank_fraction is not None and not (0 < self.rank_fraction <= 1):
            raise ConfigError(f"rank_fraction={self.rank_fraction} must lie in (0, 1].")
        if self.energy is not None and not (0 < self.energy <= 1):
            raise ConfigError(f"energy={self.energy} must lie in (0, 1] (fraction of squared singular values kept).")
        self._validate_budget()
        _positive_int("heads", self.heads)
        if self.heads > MAX_HEADS:
            raise ConfigError(f"heads={self.heads}: every head is a full up-projection of each inherited layer, so "
                              f"H multiplies its size; at most {MAX_HEADS} are accepted (the paper uses 2-3).")
        _positive_int("rank_multiple", self.rank_multiple)
        _positive_int("svd_niter", self.svd_niter, allow_zero=True)
        for pattern, r in self.rank_pattern.items():
            if not isinstance(pattern, str):
                raise ConfigError(f"rank_pattern keys are regex strings, got {pattern!r}.")
            _positive_int(f"rank_pattern[{pattern!r}]", r)
        if self.budget is not None and self.rank_pattern:
            raise ConfigError("rank_pattern cannot be combined with a budget; the budget allocates every rank.")
        _choice("budget_scope", self.budget_scope, BUDGET_SCOPES)
        if self.budget_scope == "targets" and isinstance(self.budget, nn.Module):
            raise ConfigError("budget_scope='targets' counts the selected layers only; a model budget counts a whole "
                              "network: give a fraction or a parameter count, or budget_scope='model'.")
        _choice("budget_metric", self.budget_metric, BUDGET_METRICS)
        self._validate_latency()
        prefix = "latency:" if self.budget_metric == "latency" else "budget:"
        _choice("budget_mode", self.budget_mode, [n[len(prefix):] for n in RANK_POLICIES.names() if n.startswith(prefix)])
        _choice("head_scale", self.head_scale, HEAD_SCALES)
        _choice("head_init", self.head_init, HEAD_INITS.names())
        if (isinstance(self.head_init_scale, bool) or not isinstance(self.head_init_scale, (int, float))
                or not math.isfinite(self.head_init_scale) or self.head_init_scale < 0):
            raise ConfigError(f"head_init_scale={self.head_init_scale!r} must be a finite number >= 0.")
        _choice("init", self.init, INITS.names())
        _choice("calibration_mode", self.calibration_mode, CALIBRATION_MODES)
        _choice("gate", self.gate, GATES)
        _choice("structure", self.structure, STRUCTURES)
        _choice("svd", self.svd, SVD_METHODS)
        for t in self.layer_types:
            _choice("layer_types entry", t, LAYER_KINDS.names())
        if not self.layer_types:
            raise ConfigError(f"layer_types is empty; name at least one of {LAYER_KINDS.names()}.")

    def _validate_budget(self) -> None:
        b = self.budget
        if b is None or isinstance(b, nn.Module):
            return
        if isinstance(b, bool) or not isinstance(b, (int, float)):
            raise ConfigError(
                f"budget={b!r}: give an int parameter count, a float fraction of the teacher in (0, 1], "
                "or a model whose parameter count to match."
            )
        if isinstance(b, float):
            if not (math.isfinite(b) and 0 < b <= 1):
                raise ConfigError(f"budget={b} as a float is a fraction of the teacher and must lie in (0, 1].")
        elif b <= 0:
            raise ConfigError(f"budget={b} must be a positive parameter count.")
        elif b < MIN_BUDGET_COUNT:
            raise ConfigError(
                f"budget={b}: an int is a parameter count (here {b} parameter{'s' if b != 1 else ''}), not a "
                f"fraction; use a float for a fraction of the teacher (1.0 for the whole teacher, 0.25 for a "
                f"quarter of it), or a count of at least {MIN_BUDGET_COUNT} parameters."
            )

    def _validate_latency(self) -> None:
        _choice("latency_form", self.latency_form, LATENCY_FORMS)
        if self.budget_metric != "latency":
            if self.latency_input is not None:
                raise ConfigError(f"latency_input={self.latency_input!r} is only read by a latency budget; pass "
                                  "budget_metric='latency' with a budget (e.g. budget=0.5), or drop latency_input.")
            if self.latency_form != "inherited":
                raise ConfigError(f"latency_form={self.latency_form!r} is only read by a latency budget; pass "
                                  "budget_metric='latency' with a budget (e.g. budget=0.5), or drop latency_form.")
            return
        b = self.budget
        if b is None:
            raise ConfigError("budget_metric='latency' needs budget=<a fraction of the teacher's measured latency>, "
                              "e.g. budget=0.5 for half the teacher's time.")
        if not isinstance(b, float):
            raise ConfigError(
                f"budget={b!r} with budget_metric='latency': a latency budget is a float fraction of the teacher's "
                f"measured latency in (0, 1] (e.g. 0.5); {'an int counts parameters' if isinstance(b, int) else 'a model budget counts parameters'}"
                ": drop budget_metric='latency' for a parameter budget.")

    # ------------------------------------------------------------------ helpers
    @property
    def policy(self) -> str:
        """The active rank policy's name: rank, rank_fraction, energy or budget."""
        for name in ("rank_fraction", "energy", "budget"):
            if getattr(self, name) is not None:
                return name
        return "rank"

    @property
    def uniform_rank(self) -> int:
        """The single rank of the ``rank`` policy (the default when no policy is given)."""
        return self.rank if self.rank is not None else DEFAULT_RANK

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict. A model budget is stored as its parameter count."""
        out = dataclasses.asdict(self)
        if isinstance(self.budget, nn.Module):
            out["budget"] = count_parameters(self.budget)
        out["layer_types"] = list(self.layer_types)
        for key in ("target_modules", "exclude_modules"):
            if isinstance(out[key], tuple):
                out[key] = list(out[key])
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "InheritConfig":
        """Build from a dict (YAML, JSON, CLI); unknown keys are an error naming the valid ones."""
        valid = [f.name for f in dataclasses.fields(cls)]
        unknown = [k for k in data if k not in valid]
        if unknown:
            hints = [f"{k!r}{did_you_mean(k, valid)}" for k in unknown]
            raise ConfigError(f"unknown InheritConfig option(s): {', '.join(hints)}. Valid options: {', '.join(valid)}.")
        return cls(**dict(data))


def _regex(name: str, value: str) -> None:
    try:
        re.compile(value)
    except re.error as err:
        raise ConfigError(f"{name}={value!r} is not a valid regular expression ({err}).") from None


def _positive_int(name: str, value: Any, allow_zero: bool = False) -> None:
    low = 0 if allow_zero else 1
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ConfigError(f"{name}={value!r} must be an integer >= {low}.")
