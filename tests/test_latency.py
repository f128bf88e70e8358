"""Latency budgets (``budget_metric="latency"``): the allocator on injected tables, the cache, the
config's errors, and end to end on a tiny CNN and MLP (timing faked where a test asserts a choice,
real in one smoke test)."""

import itertools
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import inhernet
from inhernet import InheritConfig, inherit
from inhernet.errors import ConfigError
from inhernet.latency import (LatencyCache, LayerLatency, candidate_ranks, device_record, measure_latency,
                              monotone_in_rank)
from inhernet.ranks import LATENCY_MARGIN, LayerSpec, choose_ranks, fast_ranks, latency_allocation

from toy import mlp_arch, toy_cnn, toy_mlp


def _spec(name, d=32, decay=None, dense_ms=10.0, per_rank=0.2, base=1.0):
    """A 32×32 layer whose factorised time is ``base + per_rank·r`` ms at every measured rank, and
    whose spectrum decays by ``decay`` per index (flat: None)."""
    s = torch.ones(d) if decay is None else torch.tensor([decay ** k for k in range(d)])
    ranks = candidate_ranks(d - 1)
    lat = LayerLatency(dense_ms, ranks, [base + per_rank * r for r in ranks], [[4, d]])
    return LayerSpec(name, "Linear", d, d, False, spectrum=s, latency=lat)


def _cfg(**kw):
    return InheritConfig(budget=0.5, budget_metric="latency", latency_input=(4, 32), min_saving=None, **kw)


def _predicted(specs, decisions):
    return sum(s.latency.dense_ms if decisions[s.name].rank is None else s.latency.at(decisions[s.name].rank)
               for s in specs)


# ------------------------------------------------------------------------------------ the allocator

def test_allocator_factorises_the_energy_efficient_layer_and_keeps_the_budget():
    # two layers, same shapes and times: 20 ms dense, budget 14 ms, so one must be factorised;
    # "peaked" keeps ~all its energy at a small rank, "flat" only r/32 of it: factorise "peaked"
    specs = [_spec("flat"), _spec("peaked", decay=0.3)]
    decisions = choose_ranks(specs, _cfg(), budget_left=14.0)
    assert decisions["flat"].rank is None
    assert decisions["peaked"].rank is not None
    assert _predicted(specs, decisions) <= 14.0
    # what is left (4 ms: r ≤ 15) goes into the peaked layer's rank, as far as it still buys energy
    assert 8 <= decisions["peaked"].rank <= 15


def test_allocator_grows_ranks_with_the_budget():
    specs = [_spec(f"l{i}", decay=0.5 + 0.1 * i) for i in range(4)]
    ranks = []
    for budget in (10.0, 20.0, 30.0):
        decisions = choose_ranks(specs, _cfg(), budget_left=budget)
        assert _predicted(specs, decisions) <= budget + 1e-9
        ranks.append(sum(32 if d.rank is None else d.rank for d in decisions.values()))
    assert ranks[0] < ranks[1] < ranks[2]


def test_a_layer_not_five_percent_faster_stays_dense():
    slow = _spec("slow", decay=0.3, dense_ms=10.0, per_rank=0.0, base=10.0 * (LATENCY_MARGIN + 0.02))
    fast = _spec("fast", decay=0.9)
    cfg = _cfg()
    assert fast_ranks(slow, cfg) == []
    decisions = choose_ranks([slow, fast], cfg, budget_left=15.0)
    assert decisions["slow"].rank is None and "5% faster" in decisions["slow"].reason
    assert decisions["fast"].rank is not None


def test_too_small_a_latency_budget_names_the_fastest_allocation():
    with pytest.raises(ConfigError, match="fastest allocation takes"):
        choose_ranks([_spec("a"), _spec("b")], _cfg(), budget_left=1.0)


def test_uniform_latency_budget_is_the_largest_single_rank_that_fits():
    specs = [_spec("a"), _spec("b", per_rank=0.4)]
    decisions = choose_ranks(specs, _cfg(budget_mode="uniform"), budget_left=12.0)
    r = decisions["a"].rank
    assert r == decisions["b"].rank and r is not None
    assert 2 + 0.6 * r <= 12.0 < 2 + 0.6 * (r + 1)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(st.tuples(st.floats(0, 10), st.floats(0, 1)), min_size=1, max_size=4), min_size=1, max_size=4),
       st.floats(0.5, 30))
def test_knapsack_fits_and_is_optimal_up_to_one_step_per_layer(options, budget):
    steps = 400
    picks = latency_allocation(options, budget, steps=steps)
    fastest = sum(min(t for t, _ in o) for o in options)
    if picks is None:
        assert fastest > budget * (1 - len(options) / max(steps, 50 * len(options))) - 1e-9
        return
    assert sum(o[k][0] for o, k in zip(options, picks)) <= budget + 1e-9
    value = sum(o[k][1] for o, k in zip(options, picks))
    slack = budget * (1 - len(options) / max(steps, 50 * len(options)))
    brute = max((sum(o[k][1] for o, k in zip(options, ks)) for ks in itertools.product(*(range(len(o)) for o in options))
                 if sum(o[k][0] for o, k in zip(options, ks)) <= slack), default=-math.inf)
    assert value >= brute - 1e-9


def test_layer_latency_interpolates_between_measured_ranks():
    lat = LayerLatency(5.0, [1, 4, 8], [1.0, 2.5, 4.5])
    assert lat.at(4) == 2.5 and lat.at(2) == pytest.approx(1.5) and lat.at(6) == pytest.approx(3.5)
    assert LayerLatency(5.0).at(3) == 5.0  # never reached / not factorisable: its dense time


def test_candidate_ranks_are_a_geometric_grid_with_the_largest_rank():
    assert candidate_ranks(63) == [1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 63]
    assert candidate_ranks(40, 8) == [8, 16, 24, 32, 40]
    assert candidate_ranks(0) == []


# ------------------------------------------------------------------------------------ config errors

@pytest.mark.parametrize("kw, match", [
    ({"budget_metric": "latency"}, "needs budget="),
    ({"budget_metric": "latency", "budget": 5000}, "float fraction"),
    ({"budget_metric": "latency", "budget": 1.5}, r"\(0, 1\]"),
    ({"budget_metric": "latency", "budget": 0.5, "rank_pattern": {"x": 4}}, "rank_pattern"),
    ({"budget_metric": "latency", "budget": 0.5, "budget_mode": "whitened"}, "budget_mode"),
    ({"budget_metric": "time", "budget": 0.5}, "budget_metric"),
    ({"budget": 0.5, "latency_input": (4, 16)}, "only read by a latency budget"),
    ({"budget_metric": "latency", "budget": 0.5, "latency_input": (4, 0)}, "latency_input"),
    ({"budget_metric": "latency", "budget": 0.5, "latency_input": "4,16"}, "latency_input"),
    ({"budget_metric": "latency", "budget": 0.5, "budget_scope": "targets", "latency_cache": 3}, "latency_cache"),
    ({"budget_metric": "latency", "budget": 0.5, "latency_form": "fast"}, "latency_form='fast' is not valid"),
    ({"budget": 0.5, "latency_form": "optimized"}, "latency_form='optimized' is only read by a latency budget"),
])
def test_latency_config_errors(kw, match):
    with pytest.raises(ConfigError, match=match):
        InheritConfig(**kw)


def test_latency_budget_needs_an_example_and_refuses_one_without_it():
    with pytest.raises(ConfigError, match="latency_input"):
        inherit(toy_mlp(), budget=0.5, budget_metric="latency", progress=False)
    with pytest.raises(ConfigError, match="example_input is only used"):
        inherit(toy_mlp(), rank=2, example_input=torch.randn(2, 16), progress=False)
    with pytest.raises(ConfigError, match="does not run on the latency example"):
        inherit(toy_mlp(), budget=0.5, budget_metric="latency", latency_input=(2, 7), latency_cache="", progress=False)


def test_a_streamed_checkpoint_refuses_a_latency_budget(tmp_path):
    from safetensors.torch import save_model

    save_model(toy_mlp(), str(tmp_path / "model.safetensors"))
    with torch.device("meta"):
        skeleton = mlp_arch()
    with pytest.raises(ConfigError, match="teacher in memory"):
        inhernet.inherit_checkpoint(tmp_path, tmp_path / "out", model=skeleton, budget=0.5, budget_metric="latency",
                                    latency_input=(4, 16), progress=False)


# ------------------------------------------------------------------------------------ end to end, faked timing

class FakeClock:
    """Replaces ``time_candidates``: a layer's dense time is ``numel(W)/100`` ms, the factorised
    ``(base + r·(d_in + H·d_out))/100`` ms; a whole model takes 100 ms (teacher), 2 ms (fixed part)
    or 50 ms. Counts the layer timings."""

    def __init__(self, base=0.0, slow=False):
        self.base, self.slow, self.layer_calls = base, slow, 0

    def __call__(self, candidates, x, **kw):
        if "dense" not in candidates:
            return {k: {"teacher": 100.0, "fixed": 2.0}.get(k, 50.0) for k in candidates}
        self.layer_calls += 1
        w = candidates["dense"].weight
        dense = w.numel() / 100
        d_in, d_out = w[0].numel(), w.shape[0]
        out = {"dense": dense}
        for k in candidates:
            if k != "dense":
                r = int(k[1:])
                out[k] = 2 * dense if self.slow else (self.base + r * (d_in + 3 * d_out)) / 100
        return out


@pytest.fixture
def fake_clock(monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(inhernet.latency, "time_candidates", clock)
    return clock


@pytest.mark.parametrize("make, shape", [(toy_mlp, (8, 16)), (toy_cnn, (8, 3, 8, 8))], ids=["mlp", "cnn"])
@pytest.mark.parametrize("scope", ["model", "targets"])
def test_end_to_end_latency_budget_is_kept(fake_clock, tmp_path, make, shape, scope):
    teacher = make()
    model = inherit(teacher, budget=0.6, budget_metric="latency", budget_scope=scope, latency_input=shape,
                    latency_cache=str(tmp_path), min_saving=None, progress=False)
    plan = model.inhernet_plan
    t = plan.latency
    selected = [r for r in plan.layers if r.dense_latency_ms is not None]
    assert selected and any(r.rank is not None for r in selected)
    spent = sum(r.latency_ms for r in selected)
    assert spent <= (t["budget_ms"] if scope == "targets" else t["budget_ms"] - t["fixed_ms"]) + 1e-9
    assert t["predicted_ms"] == pytest.approx(t["fixed_ms"] + spent)
    assert t["fixed_ms"] == 2.0 and t["inherited_measured_ms"] == 50.0 and t["teacher_measured_ms"] == 100.0
    for r in selected:
        if r.rank is not None:
            assert r.latency_ms <= LATENCY_MARGIN * r.dense_latency_ms
    x = torch.randn(*shape)
    assert model(x).shape == teacher(x).shape and torch.isfinite(model(x)).all()
    report = str(inhernet.layer_report(model))
    assert "ms (dense)" in report and "within budget" in report
    if make is toy_cnn:
        assert all(r.rank is None for r in plan.layers if r.name == "3")  # the grouped conv stays dense


@pytest.mark.parametrize("make, shape", [(toy_mlp, (8, 16)), (toy_cnn, (8, 3, 8, 8))], ids=["mlp", "cnn"])
def test_a_full_latency_budget_where_nothing_is_faster_keeps_the_teacher_exactly(monkeypatch, make, shape):
    monkeypatch.setattr(inhernet.latency, "time_candidates", FakeClock(slow=True))
    teacher = make()
    model = inherit(teacher, budget=1.0, budget_metric="latency", latency_input=shape, latency_cache="",
                    progress=False)
    assert all(r.rank is None for r in model.inhernet_plan.layers)
    x = torch.randn(*shape)
    torch.testing.assert_close(model(x), teacher(x), rtol=0, atol=0)


def test_the_table_is_measured_once_and_read_back_from_the_cache(fake_clock, tmp_path):
    teacher = toy_mlp()
    cfg = InheritConfig(budget=0.6, budget_metric="latency", latency_cache=str(tmp_path))
    x = torch.randn(8, 16)
    first = measure_latency(teacher, cfg, x, progress=False)
    # the MLP has three selected Linears of two shapes (16→32, 32→32 twice): two timed, one shared
    assert fake_clock.layer_calls == 2 and first.measured == 2 and first.reused == 0
    second = measure_latency(teacher, cfg, x, progress=False)
    assert fake_clock.layer_calls == 2 and second.measured == 0
    assert second.layers == first.layers and second.fixed_ms == first.fixed_ms
    # another head count is another measurement; another device record another file
    measure_latency(teacher, InheritConfig(budget=0.6, budget_metric="latency", latency_cache=str(tmp_path), heads=2),
                    x, progress=False)
    assert fake_clock.layer_calls == 4
    other = LatencyCache(str(tmp_path), {**device_record("cpu"), "threads": 999})
    assert other.entries == {} and other.path != LatencyCache(str(tmp_path), device_record("cpu")).path


class RecordingClock(FakeClock):
    """A :class:`FakeClock` that keeps the candidates of every layer timing."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def __call__(self, candidates, x, **kw):
        if "dense" in candidates:
            self.seen.append((dict(candidates), x))
        return super().__call__(candidates, x, **kw)


@pytest.mark.parametrize("make, shape", [(toy_mlp, (8, 16)), (toy_cnn, (8, 3, 8, 8))], ids=["mlp", "cnn"])
def test_the_optimized_form_times_each_layer_as_optimize_for_inference_serves_it_once_trained(
        monkeypatch, tmp_path, make, shape):
    from inhernet.optimize import REPORT_ATTR, as_trained
    from inhernet.pipeline import build_layer, layer_generator
    from inhernet.select import select_layers

    clock = RecordingClock()
    monkeypatch.setattr(inhernet.latency, "time_candidates", clock)
    teacher = make()
    cfg = InheritConfig(budget=0.6, budget_metric="latency", latency_form="optimized", latency_cache=str(tmp_path))
    measure_latency(teacher, cfg, torch.randn(*shape), progress=False)
    assert clock.seen
    names = {c.name: c for c in select_layers(teacher, inhernet.select.resolve_config(teacher, cfg))[0]}
    for candidates, x in clock.seen:
        dense = candidates["dense"]
        c = next(c for c in names.values() if c.module is dense)
        gen = layer_generator(cfg.seed, c.name)
        for key, served in candidates.items():
            if key == "dense":
                continue
            # the candidate came out of optimize_for_inference, and computes what the inherited layer
            # of that rank computes once its heads differ (as after training)
            assert getattr(served, REPORT_ATTR) is not None, key
            built = build_layer(dense, c.kind, int(key[1:]), cfg, generator=gen).eval()
            with torch.no_grad():
                torch.testing.assert_close(served(x), as_trained(built, 1e-3)(x), rtol=1e-4, atol=1e-5)
    # the two forms are two cache entries: the inherited form is measured again
    calls = clock.layer_calls
    measure_latency(teacher, InheritConfig(budget=0.6, budget_metric="latency", latency_cache=str(tmp_path)),
                    torch.randn(*shape), progress=False)
    assert clock.layer_calls > calls
    again = measure_latency(teacher, cfg, torch.randn(*shape), progress=False)
    assert again.measured == 0


def test_an_optimized_form_budget_records_the_optimised_model_measured(fake_clock, tmp_path):
    model = inherit(toy_mlp(), budget=0.6, budget_metric="latency", latency_form="optimized", latency_input=(8, 16),
                    latency_cache=str(tmp_path), min_saving=None, progress=False)
    t = model.inhernet_plan.latency
    assert t["form"] == "optimized" and t["optimized_measured_ms"] == 50.0
    assert "optimised (heads made to differ)" in str(inhernet.layer_report(model))
    plain = inherit(toy_mlp(), budget=0.6, budget_metric="latency", latency_input=(8, 16),
                    latency_cache=str(tmp_path), min_saving=None, progress=False)
    t = plain.inhernet_plan.latency
    assert t["form"] == "inherited" and "optimized_measured_ms" not in t


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(0.01, 100.0), min_size=0, max_size=12))
def test_monotone_in_rank_is_non_decreasing_and_keeps_what_already_is(ms):
    out = monotone_in_rank(ms)
    assert len(out) == len(ms) and all(a <= b + 1e-9 for a, b in zip(out, out[1:]))
    if ms:
        assert sum(out) == pytest.approx(sum(ms))  # least squares: each pooled run keeps its mean
    if ms == sorted(ms):
        assert out == pytest.approx(ms)


def test_a_time_that_dips_with_the_rank_is_smoothed_before_the_allocator_reads_it(monkeypatch):
    def dipping(candidates, x, **kw):  # rank 3 "measures" faster than rank 2: noise
        if "dense" not in candidates:
            return {k: 10.0 for k in candidates}
        return {k: 10.0 if k == "dense" else 1.0 if k == "r3" else 2.0 + 0.1 * int(k[1:]) for k in candidates}

    monkeypatch.setattr(inhernet.latency, "time_candidates", dipping)
    table = measure_latency(toy_mlp(), InheritConfig(budget=0.6, budget_metric="latency", latency_cache=""),
                            torch.randn(8, 16), progress=False)
    for lat in table.layers.values():
        assert lat.factorised_ms == sorted(lat.factorised_ms)
        assert lat.at(3) > lat.at(2) - 1e-9 and lat.at(3) > 1.0  # the dip is averaged away


def test_cache_round_trip_and_damaged_file(tmp_path):
    cache = LatencyCache(str(tmp_path), device_record("cpu"))
    cache.put("k", {"dense": 1.5, "ranks": [1, 2], "ms": [0.5, 0.7]})
    cache.save()
    assert LatencyCache(str(tmp_path), device_record("cpu")).get("k") == {"dense": 1.5, "ranks": [1, 2], "ms": [0.5, 0.7]}
    cache.path.write_text("{cut sho")
    assert LatencyCache(str(tmp_path), device_record("cpu")).entries == {}  # unreadable: measured again
    assert LatencyCache("", device_record("cpu")).path is None


def test_a_latency_model_saves_and_loads(fake_clock, tmp_path):
    model = inherit(toy_mlp(), budget=0.6, budget_metric="latency", latency_input=(8, 16), latency_cache="",
                    min_saving=None, progress=False)
    inhernet.save(model, tmp_path / "m")
    loaded = inhernet.load(tmp_path / "m", base_model=mlp_arch())
    x = torch.randn(3, 16)
    torch.testing.assert_close(loaded(x), model(x))
    assert loaded.inhernet_plan.latency["predicted_ms"] == model.inhernet_plan.latency["predicted_ms"]


# ------------------------------------------------------------------------------------ real timing

def test_real_timing_smoke(tmp_path):
    torch.set_num_threads(1)
    teacher = toy_mlp()
    x = torch.randn(4, 16)
    model = inherit(teacher, budget=1.0, budget_metric="latency", example_input=x, latency_cache=str(tmp_path),
                    progress=False)
    t = model.inhernet_plan.latency
    assert t["teacher_measured_ms"] > 0 and t["inherited_measured_ms"] > 0 and t["fixed_ms"] >= 0
    assert t["predicted_ms"] <= t["budget_ms"] + 1e-9
    assert model(x).shape == (4, 4)
    again = inherit(teacher, budget=1.0, budget_metric="latency", example_input=x, latency_cache=str(tmp_path),
                    progress=False)
    assert again.inhernet_plan.latency["shapes_measured"] == 0


# ------------------------------------------------------------------------------------ command line

def test_cli_latency_budget(fake_clock, tmp_path, capsys):
    from inhernet.cli import main
    from inhernet.train import save_model

    teacher = inhernet.models.create_model("resnet8", num_classes=10, in_channels=1)
    save_model(teacher, tmp_path / "t", arch="resnet8", num_classes=10, in_channels=1)
    out = tmp_path / "inh"
    assert main(["inherit", str(tmp_path / "t"), "--budget", "0.7", "--budget-metric", "latency",
                 "--latency-input", "2,1,28,28", "--latency-cache", str(tmp_path / "cache"), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "latency on [2, 1, 28, 28]" in printed and "within budget" in printed
    assert main(["inherit", str(tmp_path / "t"), "--budget", "0.7", "--budget-metric", "latency", "--latency-form",
                 "optimized", "--latency-input", "2,1,28,28", "--latency-cache", str(tmp_path / "cache"),
                 "--out", str(tmp_path / "inh_opt")]) == 0
    assert "predicted (layers as optimize_for_inference runs them once trained)" in capsys.readouterr().out
    assert list((tmp_path / "cache").glob("*.json"))
    with pytest.raises(SystemExit):
        main(["inherit", str(tmp_path / "t"), "--budget", "0.7", "--budget-metric", "latency",
              "--latency-input", "2,one", "--out", str(tmp_path / "x")])
    assert "not a shape" in capsys.readouterr().err
