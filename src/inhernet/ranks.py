"""Rank policies: which rank each selected layer gets (``None`` = the layer stays dense).

Policy only — no module surgery. Each selected layer is described by a :class:`LayerSpec`
(shape and, when a policy needs it, its singular values). Policies:

* ``rank``: one rank everywhere (the paper);
* ``rank_fraction``: a fraction of each layer's full rank ``min(d_out, d_in)``;
* ``energy``: the smallest rank keeping a fraction of each layer's spectrum energy;
* ``budget`` / ``"uniform"``: the largest single rank whose network fits the parameter budget
  (what the paper would pick by hand);
* ``budget`` / ``"spectral"``: a global greedy allocation that spends the budget where it buys the
  most spectrum energy per parameter (each layer's energy normalised to 1, so layers count equally
  whatever their scale). Beyond the paper.

* ``budget`` with ``budget_metric="latency"`` / ``"spectral"``: per layer dense or a rank, chosen
  to keep the most (normalised) spectrum energy within a budget of milliseconds read from the
  layers' measured :class:`~inhernet.latency.LayerLatency` (an exact knapsack over a discretised
  time axis: :func:`latency_allocation`); ``"uniform"``: the largest single rank that fits in time.
  A factorised layer is an option only when it is at least 5 % faster than its dense layer
  (:data:`LATENCY_MARGIN`); otherwise it stays dense.

Afterwards ``rank_pattern`` overrides single layers, ranks are rounded down to ``rank_multiple``,
a layer whose rank reaches ``min(d_out, d_in)`` stays dense (the paper's rule), and so does a layer
whose factorised form would not save at least ``min_saving`` of its dense parameters (default 0:
it must be strictly smaller — a factorisation that grows the layer compresses nothing; ``None``
turns this off, as the paper's parameter counts need). With ``dense_at_full_rank=False`` every
selected layer is factorised at its (clamped) rank instead: the exact-reconstruction check.
"""

from __future__ import annotations

import heapq
import math
import re
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor

from .config import InheritConfig
from .errors import ConfigError
from .registry import RANK_POLICIES

#: under a latency budget a factorised layer is an option only when its predicted time is at most
#: this fraction of the dense layer's (at least 5 % faster): a layer that does not run faster
#: factorised stays dense and exact
LATENCY_MARGIN = 0.95
#: the latency knapsack's time axis has at least this many steps (and 50 per layer): each layer's
#: time is rounded *up* to a step, so the choice always fits, losing at most one step per layer
LATENCY_STEPS = 4000


@dataclass
class LayerSpec:
    """One selected layer, as the policies see it."""

    name: str
    kind: str  # "Linear" | "Conv2d" | "Conv1D"
    d_in: int  # in_features, or C_in·k·k
    d_out: int
    has_bias: bool
    spectrum: Tensor | None = None  # all singular values, descending (only when the policy needs it)
    #: its measured times, an :class:`inhernet.latency.LayerLatency` (a latency budget only; this
    #: module reads ``dense_ms`` and ``at(rank)`` and imports nothing of the timing)
    latency: Any = None

    @property
    def full_rank(self) -> int:
        return min(self.d_in, self.d_out)

    @property
    def dense_params(self) -> int:
        return self.d_in * self.d_out + (self.d_out if self.has_bias else 0)

    def cumulative_energy(self) -> Tensor:
        """``c[r]`` = fraction of ``‖W‖_F²`` kept at rank r (``c[0] = 0``), float64."""
        if self.spectrum is None:
            raise RuntimeError(f"layer {self.name}: the policy needs its spectrum, which was not computed.")
        e = self.spectrum.double() ** 2
        total = e.sum()
        c = torch.cat([e.new_zeros(1), e.cumsum(0)])
        return c / total if total > 0 else torch.ones_like(c)


def inherited_params(spec: LayerSpec, rank: int, heads: int, structure: str = "asymmetric", gate: str = "softmax") -> int:
    """Parameters of one inherited layer (METHOD.md §3):
    ``R·d_in + H·r·d_out + (R·H + H) [gate, if H > 1] + H·d_out [head biases, if the teacher had a bias]``,
    with ``R = r`` (shared down) or ``H·r`` (symmetric ablation)."""
    down_rows = rank * heads if structure == "symmetric" else rank
    n = down_rows * spec.d_in + heads * rank * spec.d_out
    if gate == "softmax" and heads > 1:
        n += down_rows * heads + heads
    if spec.has_bias:
        n += heads * spec.d_out
    return n


@dataclass
class RankDecision:
    """A layer's rank (``None``: stays dense) and, for dense layers, why."""

    rank: int | None
    reason: str = ""


def too_large(spec: LayerSpec, rank: int, cfg: InheritConfig) -> bool:
    """Whether factorising ``spec`` at ``rank`` fails to save ``cfg.min_saving`` of its dense
    parameters (never, with ``min_saving=None`` or ``dense_at_full_rank=False``)."""
    if cfg.min_saving is None or not cfg.dense_at_full_rank:
        return False
    n = inherited_params(spec, rank, cfg.heads, cfg.structure, cfg.gate)
    return n >= (1.0 - cfg.min_saving) * spec.dense_params


class _Cost:
    """Parameter cost of a layer at a rank, with the rules that keep it dense (rank ≥ full, or a
    factorised form that does not save ``min_saving``)."""

    def __init__(self, cfg: InheritConfig) -> None:
        self.cfg = cfg

    def __call__(self, spec: LayerSpec, rank: int | None) -> int:
        cfg = self.cfg
        if rank is None or rank >= spec.full_rank or too_large(spec, rank, cfg):
            return spec.dense_params
        return inherited_params(spec, rank, cfg.heads, cfg.structure, cfg.gate)


@dataclass(frozen=True)
class RankPolicy:
    """A way of choosing ranks, and what the pipeline must give it.

    ``ranks(specs, cfg, budget_left)`` returns ``{name: rank or None (dense)}``. ``needs_spectrum``:
    the specs must carry their singular values (whitened ones under ``init="whitened"``).
    ``sees_all_layers``: it decides only once it has seen every selected layer (a budget), so the
    pipeline first collects every spec (and spectrum) and decides before it factorises anything;
    otherwise each layer is decided alone, when the pipeline reaches it.
    """

    name: str
    ranks: Callable[[list[LayerSpec], InheritConfig, int | None], dict[str, int | None]]
    needs_spectrum: bool = False
    sees_all_layers: bool = False


def policy_for(cfg: InheritConfig) -> RankPolicy:
    """The registered policy ``cfg`` selects: ``rank`` / ``rank_fraction`` / ``energy``, or
    ``budget:<budget_mode>`` (``latency:<budget_mode>`` under ``budget_metric="latency"``)."""
    if cfg.policy == "budget":
        name = f"{'latency' if cfg.budget_metric == 'latency' else 'budget'}:{cfg.budget_mode}"
    else:
        name = cfg.policy
    return RANK_POLICIES.get(name)


def needs_spectrum(cfg: InheritConfig) -> bool:
    """Whether the config's policy reads singular values (energy threshold or spectral budget)."""
    return policy_for(cfg).needs_spectrum


def choose_ranks(specs: list[LayerSpec], cfg: InheritConfig, *, budget_left: float | None = None) -> dict[str, RankDecision]:
    """Decide the rank of every layer in ``specs`` with the config's policy.

    ``budget_left`` (budget policies only) is the parameter budget minus every parameter that is
    not in a selected layer (norms, classifier, excluded layers); under ``budget_metric="latency"``
    the milliseconds the selected layers may take.
    """
    policy = policy_for(cfg)
    if policy.sees_all_layers and budget_left is None:
        raise ValueError(f"the {policy.name} policy needs budget_left")
    ranks = policy.ranks(specs, cfg, budget_left)
    if cfg.budget is None:
        for s in specs:
            override = _pattern_rank(s.name, cfg.rank_pattern)
            if override is not None:
                ranks[s.name] = override
        ranks = {n: (r if r is None else _round_down(r, cfg.rank_multiple)) for n, r in ranks.items()}
    decisions = {}
    for s in specs:
        r = ranks[s.name]
        if r is None:
            decisions[s.name] = RankDecision(None, _dense_reason(s, cfg))
        elif r >= s.full_rank and cfg.dense_at_full_rank:
            decisions[s.name] = RankDecision(None, f"rank {r} >= min(d_out, d_in) = {s.full_rank}: stays dense")
        elif too_large(s, r, cfg):
            n = inherited_params(s, r, cfg.heads, cfg.structure, cfg.gate)
            need = "no smaller than" if not cfg.min_saving else f"not {cfg.min_saving:.0%} smaller than"
            decisions[s.name] = RankDecision(
                None, f"rank {r} would need {n:,} params, {need} dense ({s.dense_params:,}): stays dense")
        else:
            decisions[s.name] = RankDecision(min(r, s.full_rank))
    return decisions


def _dense_reason(spec: LayerSpec, cfg: InheritConfig) -> str:
    if cfg.budget_metric != "latency":
        return "the budget allocation keeps it dense (no dearer, exact)"
    if spec.latency is None or not fast_ranks(spec, cfg):
        dense = "" if spec.latency is None else f" ({spec.latency.dense_ms:.3g} ms)"
        return (f"the latency allocation keeps it dense: no factorised rank is {1 - LATENCY_MARGIN:.0%} faster than "
                f"dense{dense} and smaller in parameters")
    return "the latency allocation keeps it dense (exact; the budget is spent where it keeps more energy per ms)"


def fast_ranks(spec: LayerSpec, cfg: InheritConfig) -> list[tuple[int, float]]:
    """``(rank, predicted ms)`` of every rank (multiples of ``rank_multiple`` below full rank, that
    save ``min_saving`` of the parameters) at which the factorised layer is at least
    ``1 − LATENCY_MARGIN`` faster than dense: the options a latency budget may choose."""
    lat, step = spec.latency, cfg.rank_multiple
    out = []
    for r in range(step, spec.full_rank, step):
        if too_large(spec, r, cfg):
            break  # the parameter count only grows with the rank
        ms = lat.at(r)
        if ms <= LATENCY_MARGIN * lat.dense_ms:
            out.append((r, ms))
    return out


def latency_allocation(options: list[list[tuple[float, float]]], budget: float, *, steps: int = LATENCY_STEPS,
                       ) -> list[int] | None:
    """Pick one option per layer, maximising the summed value with total time ≤ ``budget``.

    ``options[i]`` lists layer i's ``(time, value)`` pairs; returns the chosen index per layer, or
    ``None`` when even the fastest options do not fit. This is a multiple-choice knapsack, solved
    exactly by dynamic programming over a time axis of ``max(steps, 50·layers)`` steps, each
    time rounded up to a step (so the result always fits; it can lose at most one step per layer of
    the budget; when only the fastest choice fits, unrounded, that is the answer). A greedy on value per time — the parameter budget's allocator — is not used
    here: measured time is not convex in the rank (kernels step at hardware-friendly widths, and a
    small rank may cost as much as a larger one), and a greedy stuck behind an expensive step
    never reaches the cheap ranks after it. The DP costs ``layers × options × steps`` additions,
    vectorised (under a second for a few hundred layers)."""
    n = max(steps, 50 * len(options))
    fastest = [min(range(len(opts)), key=lambda k: (opts[k][0], -opts[k][1])) for opts in options]
    if sum(opts[k][0] for opts, k in zip(options, fastest)) > budget * (1 + 1e-9) + 1e-12:  # float round-off
        return None
    if budget <= 0:
        return fastest
    unit = budget / n
    best = np.full(n + 1, -np.inf)
    best[0] = 0.0
    choice = np.zeros((len(options), n + 1), dtype=np.int32)
    weights = []
    for i, opts in enumerate(options):
        w = [max(0, math.ceil(t / unit * (1 - 1e-12))) for t, _ in opts]
        weights.append(w)
        new = np.full(n + 1, -np.inf)
        for k, ((_, value), wk) in enumerate(zip(opts, w)):
            if wk > n:
                continue
            cand = np.full(n + 1, -np.inf)
            cand[wk:] = best[: n + 1 - wk] + value
            better = cand > new  # ties keep the earlier option (callers list dense first)
            new[better] = cand[better]
            choice[i, better] = k
        best = new
    if not np.isfinite(best).any():
        return fastest  # it fits, but only without the rounding up: nothing else does
    j = int(np.argmax(best))  # the first maximum: the least time among the best
    picks = [0] * len(options)
    for i in range(len(options) - 1, -1, -1):
        k = int(choice[i, j])
        picks[i] = k
        j -= weights[i][k]
    return picks


def _latency_spectral(specs: list[LayerSpec], cfg: InheritConfig, budget_left: float) -> dict[str, int | None]:
    """Dense (energy 1, its dense time) or a fast rank (its energy fraction, its predicted time) per
    layer, the most summed energy within ``budget_left`` ms (:func:`latency_allocation`)."""
    choices: list[list[int | None]] = []
    options: list[list[tuple[float, float]]] = []
    for s in specs:
        energy = s.cumulative_energy()
        fast = fast_ranks(s, cfg)
        choices.append([None, *(r for r, _ in fast)])
        options.append([(s.latency.dense_ms, 1.0), *((ms, float(energy[r])) for r, ms in fast)])
    picks = latency_allocation(options, budget_left)
    if picks is None:
        _latency_too_small(specs, cfg, budget_left, sum(min(t for t, _ in o) for o in options))
    return {s.name: c[k] for s, c, k in zip(specs, choices, picks)}


def _latency_uniform(specs: list[LayerSpec], cfg: InheritConfig, budget_left: float) -> dict[str, int | None]:
    """The largest single rank (a multiple of ``rank_multiple``) whose predicted time fits; a layer
    that is not faster factorised at that rank stays dense."""
    fast = {s.name: dict(fast_ranks(s, cfg)) for s in specs}
    best, fastest = None, math.inf
    step = cfg.rank_multiple
    for r in range(step, max(s.full_rank for s in specs) + step, step):
        total = sum(fast[s.name].get(r, s.latency.dense_ms) for s in specs)
        fastest = min(fastest, total)
        if total <= budget_left:
            best = r
    if best is None:
        _latency_too_small(specs, cfg, budget_left, fastest)
    return {s.name: (best if best in fast[s.name] else None) for s in specs}


def _latency_too_small(specs: list[LayerSpec], cfg: InheritConfig, budget_left: float, fastest: float) -> None:
    dense = sum(s.latency.dense_ms for s in specs)
    raise ConfigError(
        f"the latency budget leaves {budget_left:.3g} ms for the {len(specs)} selected layers (dense: {dense:.3g} ms), "
        f"but the fastest allocation takes {fastest:.3g} ms ({fastest / max(dense, 1e-12):.0%} of dense); raise the "
        f"budget{_scope_hint(cfg)}, or factorise more layers — a layer that is not faster factorised stays dense.")


def _scope_hint(cfg: InheritConfig) -> str:
    if cfg.budget_scope == "model":
        return (" (it counts the whole network, whose embeddings, norms and heads stay as they are; to give the "
                "budget to the selected layers only, pass budget_scope='targets')")
    return ""


def _round_down(rank: int, multiple: int) -> int:
    return max(multiple, (rank // multiple) * multiple)


def _pattern_rank(name: str, pattern: dict[str, int]) -> int | None:
    for regex, rank in pattern.items():
        if re.fullmatch(regex, name):
            return rank
    return None


def _one_rank(specs: list[LayerSpec], cfg: InheritConfig, budget_left: int | None) -> dict[str, int | None]:
    return {s.name: cfg.uniform_rank for s in specs}


def _rank_fraction(specs: list[LayerSpec], cfg: InheritConfig, budget_left: int | None) -> dict[str, int | None]:
    return {s.name: max(1, int(cfg.rank_fraction * s.full_rank)) for s in specs}


def _energy(specs: list[LayerSpec], cfg: InheritConfig, budget_left: int | None) -> dict[str, int | None]:
    out: dict[str, int | None] = {}
    for s in specs:
        c = s.cumulative_energy()
        # smallest r with c[r] >= threshold (tolerate float round-off at energy=1)
        out[s.name] = max(1, int(torch.searchsorted(c, torch.tensor(cfg.energy - 1e-12, dtype=c.dtype)).item()))
    return out


def _budget_uniform(specs: list[LayerSpec], cfg: InheritConfig, budget_left: int) -> dict[str, int | None]:
    """The largest single rank (a multiple of ``rank_multiple``) whose network fits the budget."""
    cost = _Cost(cfg)
    step = cfg.rank_multiple
    best = None
    for r in range(step, max(s.full_rank for s in specs) + step, step):
        if sum(cost(s, r) for s in specs) <= budget_left:
            best = r
    if best is None:
        smallest = sum(cost(s, step) for s in specs)
        raise ConfigError(
            f"the budget leaves {budget_left:,} parameters for the selected layers, but even rank {step} "
            f"everywhere needs {smallest:,}; raise the budget{_scope_hint(cfg)}, or factorise more layers "
            "(fewer exclude_modules) so more of the network shrinks."
        )
    return {s.name: best for s in specs}


def _budget_spectral(specs: list[LayerSpec], cfg: InheritConfig, budget_left: int) -> dict[str, int | None]:
    """Greedy allocation: repeatedly grow the layer whose next step (``rank_multiple`` more ranks,
    or going dense when that is no dearer) buys the most normalised spectrum energy per parameter."""
    cost, step = _Cost(cfg), cfg.rank_multiple
    energy = {s.name: s.cumulative_energy() for s in specs}
    rank: dict[str, int | None] = {}
    for s in specs:  # start every layer at the smallest rank, or dense when that is no dearer
        r = min(step, s.full_rank)
        rank[s.name] = None if cost(s, r) >= s.dense_params else r
    left = budget_left - sum(cost(s, rank[s.name]) for s in specs)
    if left < 0:
        raise ConfigError(
            f"the budget leaves {budget_left:,} parameters for the selected layers, but the smallest "
            f"allocation (rank {step} everywhere) needs {budget_left - left:,}; raise the budget{_scope_hint(cfg)}."
        )

    def next_step(s: LayerSpec) -> tuple[float, int, int | None] | None:
        r = rank[s.name]
        if r is None:
            return None
        nxt: int | None = r + step
        if nxt >= s.full_rank or cost(s, nxt) >= s.dense_params:
            nxt = None  # going dense: exact, and no dearer than growing further
        gain = float((1.0 if nxt is None else energy[s.name][nxt]) - energy[s.name][r])
        return gain, cost(s, nxt) - cost(s, r), nxt

    heap: list[tuple[float, int, int | None]] = []
    by_index = dict(enumerate(specs))

    def push(i: int) -> None:
        st = next_step(by_index[i])
        if st is not None:
            gain, delta, _ = st
            heapq.heappush(heap, (-gain / max(delta, 1), i, delta))

    for i in by_index:
        push(i)
    while heap:
        _, i, delta = heapq.heappop(heap)
        s = by_index[i]
        if delta > left:
            continue  # this layer cannot grow further within the budget; others may
        rank[s.name] = next_step(s)[2]
        left -= delta
        push(i)
    return rank


for _policy in (
    RankPolicy("rank", _one_rank),
    RankPolicy("rank_fraction", _rank_fraction),
    RankPolicy("energy", _energy, needs_spectrum=True),
    RankPolicy("budget:uniform", _budget_uniform, sees_all_layers=True),
    RankPolicy("budget:spectral", _budget_spectral, needs_spectrum=True, sees_all_layers=True),
    RankPolicy("latency:spectral", _latency_spectral, needs_spectrum=True, sees_all_layers=True),
    RankPolicy("latency:uniform", _latency_uniform, sees_all_layers=True),
):
    RANK_POLICIES.register(_policy.name, _policy)
