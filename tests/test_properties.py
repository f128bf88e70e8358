"""Property-based tests (hypothesis): over random small MLP / CNN teachers and random configs —
valid and invalid values alike — every config either builds a model whose saved and reloaded
outputs are identical, or raises ``ConfigError``; never another exception."""

from __future__ import annotations

import copy
import tempfile

import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from torch import nn

import inhernet
from inhernet.config import ConfigError, InheritConfig

SETTINGS = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])

#: values outside each option's domain (wrong type, out of range) mixed with valid ones
JUNK = st.sampled_from([None, -1, 0, 0.0, -0.5, 1.5, float("nan"), float("inf"), "x", True, [], {}, 10**9])


@st.composite
def _maybe(draw, valid: st.SearchStrategy, junk: int) -> object:
    """A junk value with probability 1 / ``junk``, else a valid one."""
    # a middle value: hypothesis favours the ends of a range
    return draw(JUNK) if draw(st.integers(0, junk)) == junk // 2 else draw(valid)


@st.composite
def teachers(draw) -> tuple[nn.Module, tuple[int, ...]]:
    torch.manual_seed(draw(st.integers(0, 1000)))
    if draw(st.booleans()):
        widths = draw(st.lists(st.integers(2, 12), min_size=2, max_size=4))
        layers: list[nn.Module] = []
        for a, b in zip(widths, widths[1:]):
            layers += [nn.Linear(a, b, bias=draw(st.booleans())), nn.ReLU()]
        layers.append(nn.Linear(widths[-1], draw(st.integers(2, 5))))
        return nn.Sequential(*layers).eval(), (3, widths[0])
    c_in, c_mid = draw(st.integers(1, 4)), draw(st.sampled_from([4, 6, 8]))
    k = draw(st.sampled_from([1, 3]))
    groups = draw(st.sampled_from([1, 1, 2]))
    net = nn.Sequential(
        nn.Conv2d(c_in, c_mid, k, padding=k // 2, bias=draw(st.booleans())), nn.BatchNorm2d(c_mid), nn.ReLU(),
        nn.Conv2d(c_mid, c_mid, 3, padding=1, groups=groups), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c_mid, 3))
    return net.eval(), (2, c_in, 6, 6)


@st.composite
def configs(draw, junk: int = 15) -> dict:
    """Option dicts: each option present half the time, its value junk with probability 1 / ``junk``."""
    d: dict = {}

    def _m(valid: st.SearchStrategy) -> st.SearchStrategy:
        return _maybe(valid, junk)

    policy = draw(st.sampled_from(["none", "rank", "rank_fraction", "energy", "budget", "two"]))
    if policy in ("rank", "two"):
        d["rank"] = draw(_m(st.integers(1, 16)))
    if policy in ("rank_fraction", "two"):
        d["rank_fraction"] = draw(_m(st.floats(0.05, 1.0)))
    if policy == "energy":
        d["energy"] = draw(_m(st.floats(0.05, 1.0)))
    if policy == "budget":
        d["budget"] = draw(_m(st.one_of(st.floats(0.05, 0.99), st.integers(50, 2000))))
        d["budget_mode"] = draw(_m(st.sampled_from(["spectral", "uniform"])))
    for key, valid in [("heads", st.integers(1, 4)), ("gate", st.sampled_from(["softmax", "none"])),
                       ("structure", st.sampled_from(["asymmetric", "symmetric"])),
                       ("head_scale", st.sampled_from(["exact", "paper"])),
                       ("head_init", st.sampled_from(["copies", "perturbed", "split"])),
                       ("head_init_scale", st.floats(0.0, 1.0)),
                       ("init", st.sampled_from(["svd", "random", "whitened"])),
                       ("svd", st.sampled_from(["exact", "randomized"])), ("rank_multiple", st.integers(1, 3)),
                       ("min_saving", st.one_of(st.none(), st.floats(0.0, 0.9))),
                       ("dense_at_full_rank", st.booleans()), ("exclude_classifier", st.booleans()),
                       ("seed", st.integers(0, 2**31)), ("svd_niter", st.integers(0, 4)),
                       ("target_modules", st.sampled_from([None, ["0"], r"\d+", ["nope"]])),
                       ("layer_types", st.sampled_from([("Linear",), ("Conv2d",), ("Linear", "Conv2d")]))]:
        if draw(st.booleans()):
            d[key] = draw(_m(valid))
    if draw(st.integers(0, 3 * junk)) == junk:
        d["not_an_option"] = 1
    return d


@SETTINGS
@given(teacher_and_shape=teachers(), options=configs())
def test_every_config_builds_a_model_that_round_trips_or_is_a_config_error(teacher_and_shape, options):
    teacher, shape = teacher_and_shape
    before = copy.deepcopy(teacher.state_dict())
    x = torch.randn(*shape)
    try:
        cfg = InheritConfig.from_dict(options)
        calibration = [torch.randn(*shape), torch.randn(*shape)] if cfg.init == "whitened" else None
        model = inhernet.inherit(teacher, cfg, calibration=calibration, progress=False)
    except ConfigError as err:
        event(f"ConfigError: {str(err)[:40]}")
        return
    event("built and round-tripped")
    # the teacher is never modified
    assert all(torch.equal(v, before[k]) for k, v in teacher.state_dict().items())
    model.eval()
    with torch.no_grad():
        y = model(x)
    assert torch.isfinite(y).all()
    with tempfile.TemporaryDirectory() as tmp:
        inhernet.save(model, tmp, overwrite=True)
        again = inhernet.load(tmp, copy.deepcopy(teacher))
    with torch.no_grad():
        assert torch.equal(again.eval()(x), y)
    # the report accounts for every parameter, and a non-budget policy never grows the network
    report = inhernet.layer_report(model)
    assert {r.name for r in report.rows} >= {r.name for r in model.inhernet_plan.inherited}
    if cfg.min_saving is not None and cfg.dense_at_full_rank:
        assert all(r.params_after < r.params_before for r in report.rows if r.rank is not None)


@SETTINGS
@given(options=configs(junk=3))
def test_config_validation_raises_config_error_only(options):
    """``InheritConfig.from_dict`` accepts a dict or raises ``ConfigError`` (a ``ValueError``),
    whatever the values' types; an accepted config survives ``to_dict`` → ``from_dict``."""
    try:
        cfg = InheritConfig.from_dict(options)
    except ConfigError:
        return
    assert InheritConfig.from_dict(cfg.to_dict()) == cfg
