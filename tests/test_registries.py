"""The registries (layer kinds, rank policies, inits, head inits), nn.Conv1d as a kind, the damped
Cholesky factor, calibration modes, sharded saves, single-file streaming and the load errors.

Every entry added to a global registry here is added with ``monkeypatch`` (on the registry's
``_entries`` dict), so it is gone again when the test ends.
"""

from __future__ import annotations

import json
import math
import os

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

import inhernet
from inhernet import calibrate
from inhernet.conv1d import InherConv1d
from inhernet.config import InheritConfig
from inhernet.errors import (ArchitectureMismatchError, ConfigError, CorruptCheckpointError, InherNetError,
                             InherNetLoadError)
from inhernet.factorise.inits import Init
from inhernet.factorise.whitening import DAMPING, cholesky_factor
from inhernet.kinds import LayerKind, kind_of
from inhernet.layers import INHER_LAYERS, InherLinear
from inhernet.ranks import RankPolicy
from inhernet.registry import HEAD_INITS, INITS, LAYER_KINDS, RANK_POLICIES, Registry

from toy import blocknet_arch, hf_batch, mlp_arch, toy_blocknet, toy_cnn, toy_hf, toy_mlp

FULL = dict(rank=10_000, dense_at_full_rank=False, min_saving=None, progress=False)


def _state_equal(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


# ------------------------------------------------------------------------------------ 1. Registry

def test_registry_refuses_duplicates_allows_replace_and_hints_unknown_names():
    reg = Registry("widget", "widget")
    a, b = object(), object()
    assert reg.register("alpha", a) is a
    with pytest.raises(ConfigError, match="already registered"):
        reg.register("alpha", b)
    assert reg.get("alpha") is a  # the refusal changed nothing
    assert reg.register("alpha", b, replace=True) is b
    assert reg.get("alpha") is b
    reg.register("beta", a)
    assert reg.names() == ("alpha", "beta") and list(reg) == ["alpha", "beta"]
    assert "alpha" in reg and "gamma" not in reg and reg.values() == [b, a]
    with pytest.raises(ConfigError, match=r"did you mean 'alpha'\?"):
        reg.get("alpah")
    with pytest.raises(ConfigError, match="'alpha', 'beta'"):  # names the valid ones
        reg.get("zzz")
    with pytest.raises(ConfigError):
        reg.get(["alpha"])  # unhashable: still a ConfigError, not a TypeError
    for bad in ("", None, 3):
        with pytest.raises(ConfigError, match="non-empty string"):
            reg.register(bad, a)


def test_global_registries_refuse_shadowing_a_builtin_and_hint():
    linear = LAYER_KINDS.get("Linear")
    with pytest.raises(ConfigError, match="already registered"):
        LAYER_KINDS.register("Linear", object())
    assert LAYER_KINDS.get("Linear") is linear
    for reg, name in ((INITS, "svd"), (HEAD_INITS, "copies"), (RANK_POLICIES, "rank")):
        with pytest.raises(ConfigError, match="already registered"):
            reg.register(name, object())
    assert {"Linear", "Conv2d", "Conv1D", "Conv1d"} <= set(LAYER_KINDS.names())
    assert {"svd", "whitened", "random"} <= set(INITS.names())
    assert {"copies", "perturbed", "split"} <= set(HEAD_INITS.names())
    assert {"rank", "rank_fraction", "energy", "budget:uniform", "budget:spectral"} <= set(RANK_POLICIES.names())
    with pytest.raises(ConfigError, match=r"did you mean 'svd'\?"):
        INITS.get("svdd")
    with pytest.raises(ConfigError, match=r"did you mean 'whitened'\?"):
        InheritConfig(init="whitend")
    with pytest.raises(ConfigError, match=r"did you mean 'Conv1d'\?"):
        InheritConfig(layer_types=["Conv1dd"])
    with pytest.raises(ConfigError, match=r"did you mean 'spectral'\?"):
        InheritConfig(budget=0.5, budget_mode="spectrall")


# ---------------------------------------------------------------------- 2. a new layer kind


class MyProj(nn.Module):
    """Not an nn.Linear: a weight (out × in), a bias, forward = F.linear."""

    def __init__(self, d_in, d_out):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(d_out, d_in) / math.sqrt(d_in))
        self.bias = nn.Parameter(0.1 * torch.randn(d_out))

    def forward(self, x):
        return F.linear(x, self.weight, self.bias)


class MyProjKind(LayerKind):
    name, linear = "MyProj", True

    def matches(self, module):
        return isinstance(module, MyProj)

    def build(self, module, rank, heads, **common):
        d_out, d_in = module.weight.shape
        return InherLinear(d_in, d_out, rank, heads, **common)


def _myproj_net():
    torch.manual_seed(3)
    return nn.Sequential(MyProj(8, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), MyProj(16, 12), nn.ReLU(),
                         nn.Linear(12, 4)).eval()


def test_a_new_layer_kind_is_one_registration(monkeypatch, tmp_path):
    teacher, x = _myproj_net(), torch.randn(5, 8)
    with monkeypatch.context() as m:
        m.setitem(LAYER_KINDS._entries, "MyProj", MyProjKind())
        assert "MyProj" in InheritConfig().layer_types  # the default is every registered kind
        assert kind_of(teacher[0]).name == "MyProj"
        model = inhernet.inherit(teacher, layer_types=["Linear", "MyProj"], heads=2, **FULL)
        plan = {r.name: r for r in model.inhernet_plan.layers}
        assert plan["0"].kind == plan["4"].kind == "MyProj" and plan["0"].rank == 8 and plan["4"].rank == 12
        assert plan["2"].kind == "Linear" and plan["2"].rank == 16
        assert plan["6"].rank is None  # the classifier
        assert isinstance(model[0], InherLinear) and isinstance(model[4], InherLinear)
        with torch.no_grad():
            torch.testing.assert_close(model(x), teacher(x), atol=1e-5, rtol=1e-5)
        # a low rank changes the output, so the full-rank equality above is not vacuous
        low = inhernet.inherit(teacher, layer_types=["MyProj"], rank=2, heads=1, progress=False)
        assert {r.name: r.rank for r in low.inhernet_plan.layers} == {"0": 2, "2": None, "4": 2, "6": None}
        assert "not in layer_types" in next(r for r in low.inhernet_plan.layers if r.name == "2").skipped
        # save / load rebuild the custom kind's layers from the plan
        inhernet.save(model, tmp_path / "m")
        again = inhernet.load(tmp_path / "m", base_model=_myproj_net())
        assert isinstance(again[0], InherLinear)
        with torch.no_grad():
            assert torch.equal(again(x), model(x))
        # without "MyProj" in layer_types the custom modules stay dense
        only_linear = inhernet.inherit(teacher, layer_types=["Linear"], rank=4, exclude_classifier=False,
                                       progress=False)
        assert isinstance(only_linear[0], MyProj)
    # gone again once the registration is undone
    assert "MyProj" not in LAYER_KINDS and kind_of(teacher[0]) is None
    for bad in (["MyProj"], ["Nope"]):
        with pytest.raises(ConfigError, match="layer_types entry"):
            InheritConfig(layer_types=bad)


# ---------------------------------------------------------------- 3. a new init, a new head init

def test_a_new_init_is_one_registration(monkeypatch):
    calls = []

    @torch.no_grad()
    def zeros_up(layer, matrix, bias, rank, cfg, generator, whiten=None):
        calls.append((tuple(matrix.shape), rank, whiten))
        layer.up.zero_()
        if bias is not None:
            layer.bias.copy_(bias.expand_as(layer.bias))
        return None

    monkeypatch.setitem(INITS._entries, "zeros_up", Init("zeros_up", zeros_up))
    torch.manual_seed(0)
    teacher = nn.Sequential(nn.Linear(8, 6)).eval()
    nn.init.normal_(teacher[0].bias)
    model = inhernet.inherit(teacher, init="zeros_up", rank=3, heads=2, exclude_classifier=False, min_saving=None,
                             progress=False)
    assert calls == [((6, 8), 3, None)]
    assert model.inhernet_plan.config["init"] == "zeros_up"
    assert model.inhernet_plan.layers[0].rank == 3 and model.inhernet_plan.layers[0].energy_kept is None
    x = torch.randn(7, 8)
    with torch.no_grad():
        torch.testing.assert_close(model(x), teacher[0].bias.expand(7, 6))
    with pytest.raises(ConfigError, match="calibration"):  # no calibration: it needs none
        inhernet.inherit(teacher, init="zeros_up", rank=3, exclude_classifier=False, progress=False,
                         calibration=[x])


def test_a_new_init_that_needs_calibration_gets_the_whitening_factor(monkeypatch):
    seen = []

    def whiten_probe(layer, matrix, bias, rank, cfg, generator, whiten=None):
        seen.append(whiten)
        return INITS.get("svd").fill(layer, matrix, bias, rank, cfg, generator, whiten)

    monkeypatch.setitem(INITS._entries, "probe", Init("probe", whiten_probe, needs_calibration=True))
    teacher = toy_mlp()
    with pytest.raises(ConfigError, match="needs calibration"):
        inhernet.inherit(teacher, init="probe", rank=4, progress=False)
    model = inhernet.inherit(teacher, init="probe", rank=4, heads=1, progress=False, calibration=[torch.randn(40, 16)])
    assert len(seen) == 3 and all(w is not None and w.shape[0] == w.shape[1] for w in seen)
    assert model.inhernet_plan.calibration["mode"] == "one_pass"


def test_init_registration_is_undone():
    assert "zeros_up" not in INITS and "probe" not in INITS and "antisym" not in HEAD_INITS
    with pytest.raises(ConfigError, match="init"):
        InheritConfig(init="zeros_up")
    with pytest.raises(ConfigError, match="head_init"):
        InheritConfig(head_init="antisym")


def test_a_new_head_init_is_one_registration(monkeypatch):
    calls = []

    @torch.no_grad()
    def antisym(layer, scale, generator):
        calls.append(layer.heads)
        assert layer.heads == 2
        base = layer.up.mean(0)
        delta = scale * base.norm() * torch.randn(base.shape, generator=generator, dtype=base.dtype) / math.sqrt(base.numel())
        layer.up[0].copy_(base + delta)
        layer.up[1].copy_(base - delta)
        layer.gate.weight.zero_()
        layer.gate.bias.zero_()

    monkeypatch.setitem(HEAD_INITS._entries, "antisym", antisym)
    teacher, x = toy_mlp(), torch.randn(9, 16)
    base = dict(rank=4, heads=2, progress=False)
    copies = inhernet.inherit(teacher, head_init="copies", **base)
    model = inhernet.inherit(teacher, head_init="antisym", head_init_scale=0.3, **base)
    assert calls == [2, 2, 2]
    layers = [m for m in model.modules() if isinstance(m, InherLinear)]
    assert len(layers) == 3
    for layer, ref in zip(layers, [m for m in copies.modules() if isinstance(m, InherLinear)]):
        assert not torch.allclose(layer.up[0], layer.up[1])  # the heads differ ...
        torch.testing.assert_close(layer.up[0] + layer.up[1], 2 * ref.up[0])  # ... antisymmetrically
        assert torch.count_nonzero(layer.gate.weight) == 0 and torch.count_nonzero(layer.gate.bias) == 0
        assert torch.count_nonzero(ref.gate.weight) > 0  # copies keep the random gate
    with torch.no_grad():
        torch.testing.assert_close(model(x), copies(x), atol=1e-5, rtol=1e-5)
    # one head: the head init is not called
    inhernet.inherit(teacher, head_init="antisym", rank=4, heads=1, progress=False)
    assert calls == [2, 2, 2]


# ---------------------------------------------------------------------------- 4. a rank policy

@pytest.mark.parametrize("spectrum", [False, True])
def test_a_new_budget_policy_is_one_registration(monkeypatch, spectrum):
    calls = []

    def half(specs, cfg, budget_left):
        calls.append(([s.name for s in specs], budget_left, [s.spectrum is not None for s in specs]))
        return {s.name: max(1, s.full_rank // 2) for s in specs}

    monkeypatch.setitem(RANK_POLICIES._entries, "budget:half",
                        RankPolicy("budget:half", half, needs_spectrum=spectrum, sees_all_layers=True))
    cfg = InheritConfig(budget=0.5, budget_mode="half", heads=1, min_saving=None)
    teacher = toy_mlp()
    model = inhernet.inherit(teacher, cfg, progress=False)
    # decided once, from every selected layer at once, with the budget left for them
    assert len(calls) == 1
    names, budget_left, has_spectrum = calls[0]
    assert names == ["0", "2", "4"]
    n_teacher = inhernet.count_parameters(teacher)
    head = 32 * 4 + 4
    assert budget_left == int(0.5 * n_teacher) - head
    assert has_spectrum == [spectrum] * 3
    ranks = {r.name: r.rank for r in model.inhernet_plan.layers}
    assert ranks == {"0": 8, "2": 16, "4": 16, "6": None}
    assert model.inhernet_plan.config["budget_mode"] == "half"


def test_a_per_layer_policy_is_called_layer_by_layer(monkeypatch):
    calls = []

    def third(specs, cfg, budget_left):
        calls.append(([s.name for s in specs], budget_left))
        return {s.name: max(1, s.full_rank // 3) for s in specs}

    monkeypatch.setitem(RANK_POLICIES._entries, "budget:third", RankPolicy("budget:third", third))
    model = inhernet.inherit(toy_mlp(), budget=0.5, budget_mode="third", heads=1, progress=False)
    assert calls == [(["0"], None), (["2"], None), (["4"], None)]
    assert {r.name: r.rank for r in model.inhernet_plan.layers} == {"0": 5, "2": 10, "4": 10, "6": None}


def test_budget_mode_is_validated_against_the_registered_budget_policies():
    with pytest.raises(ConfigError, match="budget_mode"):
        InheritConfig(budget=0.5, budget_mode="half")
    InheritConfig(budget=0.5, budget_mode="spectral")


# -------------------------------------------------------------------------------- 5. nn.Conv1d

class Conv1dNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv1d(3, 8, 3, padding=1)
        self.c2 = nn.Conv1d(8, 12, 3, stride=2, dilation=2, padding=2)
        self.c3 = nn.Conv1d(12, 10, 4, padding="same")  # even kernel: asymmetric padding (1, 2)
        self.c4 = nn.Conv1d(10, 10, 3, padding="same", dilation=2, bias=False)
        self.grouped = nn.Conv1d(10, 10, 3, padding=1, groups=2)
        self.circular = nn.Conv1d(10, 10, 3, padding=1, padding_mode="circular")
        self.head = nn.Linear(10, 5)

    def forward(self, x):
        for conv in (self.c1, self.c2, self.c3, self.c4, self.grouped, self.circular):
            x = torch.relu(conv(x))
        return self.head(x.mean(-1))


def _conv1d_net(seed=0):
    torch.manual_seed(seed)
    return Conv1dNet().eval()


CONV1D_CASES = [
    dict(in_channels=3, out_channels=5, kernel_size=3, padding=1),
    dict(in_channels=3, out_channels=5, kernel_size=3),
    dict(in_channels=3, out_channels=5, kernel_size=3, stride=2, dilation=2, padding=2),
    dict(in_channels=3, out_channels=5, kernel_size=4, padding="same"),
    dict(in_channels=3, out_channels=5, kernel_size=3, padding="same", dilation=3),
    dict(in_channels=3, out_channels=5, kernel_size=5, stride=3, padding=(1,)),
]


@pytest.mark.parametrize("spec", CONV1D_CASES)
def test_conv1d_layer_inputs_are_the_unfolded_windows(spec):
    torch.manual_seed(0)
    conv = nn.Conv1d(**spec)
    x = torch.randn(2, 3, 17)
    rows = calibrate.layer_inputs(conv, x)
    with torch.no_grad():
        ref = conv(x) - conv.bias[None, :, None]  # (N, C_out, L')
        n, c_out, length = ref.shape
        assert rows.shape == (n * length, 3 * conv.kernel_size[0])
        out = rows @ conv.weight.reshape(c_out, -1).T
        torch.testing.assert_close(out.reshape(n, length, c_out).permute(0, 2, 1), ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("spec", CONV1D_CASES)
def test_inherited_conv1d_at_full_rank_is_the_conv(spec):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv1d(**spec)).eval()
    x = torch.randn(2, 3, 17)
    inh = inhernet.inherit(model, heads=2, **FULL)
    assert isinstance(inh[0], InherConv1d)
    with torch.no_grad():
        torch.testing.assert_close(inh(x), model(x), atol=1e-5, rtol=1e-5)


def test_conv1d_model_full_rank_equals_teacher_and_grouped_stays_dense():
    teacher, x = _conv1d_net(), torch.randn(3, 3, 20)
    model = inhernet.inherit(teacher, heads=3, **FULL)
    plan = {r.name: r for r in model.inhernet_plan.layers}
    for name, full in (("c1", 8), ("c2", 12), ("c3", 10), ("c4", 10)):
        assert plan[name].kind == "Conv1d" and plan[name].rank == full, name
        assert isinstance(getattr(model, name), InherConv1d)
    assert plan["grouped"].rank is None and "groups=2" in plan["grouped"].skipped
    assert plan["circular"].rank is None and "circular" in plan["circular"].skipped
    assert type(model.grouped) is nn.Conv1d and type(model.circular) is nn.Conv1d
    assert plan["head"].rank is None
    with torch.no_grad():
        torch.testing.assert_close(model(x), teacher(x), atol=1e-5, rtol=1e-5)
    # layer_types selects the kind by name
    only_conv1d_off = inhernet.inherit(teacher, layer_types=["Linear"], exclude_classifier=False, rank=2, heads=1,
                                       progress=False)
    assert type(only_conv1d_off.c1) is nn.Conv1d and isinstance(only_conv1d_off.head, InherLinear)


def test_low_rank_conv1d_is_the_truncated_svd_of_the_unfolded_weight():
    torch.manual_seed(0)
    teacher = nn.Sequential(nn.Conv1d(6, 9, 3, stride=2, padding=1)).eval()
    x = torch.randn(4, 6, 21)
    r = 3
    model = inhernet.inherit(teacher, rank=r, heads=2, progress=False)
    w = teacher[0].weight.detach()
    u, s, vh = torch.linalg.svd(w.reshape(9, -1).double(), full_matrices=False)
    w_r = ((u[:, :r] * s[:r]) @ vh[:r]).reshape(w.shape).float()
    eff = model[0].effective_weight()
    torch.testing.assert_close(eff, w_r, atol=1e-5, rtol=1e-5)
    tail = float(s[r:].pow(2).sum().sqrt())
    assert abs(float((w - eff).double().norm()) - tail) < 1e-4 * max(1.0, tail)
    rec = model.inhernet_plan.layers[0]
    assert rec.energy_kept == pytest.approx(float(s[:r].pow(2).sum() / s.pow(2).sum()), rel=1e-5)
    with torch.no_grad():
        ref = F.conv1d(x, w_r, teacher[0].bias, stride=2, padding=1)
        torch.testing.assert_close(model(x), ref, atol=1e-5, rtol=1e-5)
        err = model(x) - teacher(x)
        # the output error is the conv with the SVD tail
        torch.testing.assert_close(err, F.conv1d(x, w_r - w, None, stride=2, padding=1), atol=1e-5, rtol=1e-5)


def test_conv1d_save_load_round_trip(tmp_path):
    teacher, x = _conv1d_net(), torch.randn(2, 3, 20)
    model = inhernet.inherit(teacher, rank=3, heads=2, min_saving=None, progress=False).eval()
    inhernet.save(model, tmp_path / "c")
    again = inhernet.load(tmp_path / "c", base_model=_conv1d_net(seed=5))
    assert isinstance(again.c2, InherConv1d) and again.c2.stride == (2,) and again.c2.dilation == (2,)
    assert again.c3.padding == "same"
    _state_equal(again, model)
    with torch.no_grad():
        assert torch.equal(again.eval()(x), model(x))


def test_whitened_init_on_conv1d():
    teacher = _conv1d_net()
    g = torch.Generator().manual_seed(0)
    cal = [torch.randn(4, 3, 20, generator=g) for _ in range(2)]
    model = inhernet.inherit(teacher, init="whitened", calibration=cal, rank=2, heads=2, min_saving=None,
                             progress=False)
    rec = model.inhernet_plan.calibration
    assert rec["mode"] == "one_pass" and rec["batches"] == 2 and rec["peak_statistics_bytes"] > 0
    assert rec["rows"] == 2 * 4 * 20  # c1's windows: stride 1, length kept
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert sum(isinstance(m, InherConv1d) for m in model.modules()) == 4
    with torch.no_grad():
        assert torch.isfinite(model(cal[0])).all()


def test_whitened_conv1d_beats_plain_svd_on_its_calibration_inputs():
    """The Gram statistics of the Conv1d windows are right only if the whitened truncation is the
    best rank-r map for those inputs: far less output error than the plain SVD on anisotropic data."""
    torch.manual_seed(0)
    teacher = nn.Sequential(nn.Conv1d(6, 8, 3, padding=1)).eval()
    g = torch.Generator().manual_seed(1)
    scales = torch.tensor([10.0, 5.0, 1.0, 0.3, 0.1, 0.01])
    x = torch.randn(16, 6, 24, generator=g) * scales[None, :, None]
    common = dict(rank=3, heads=1, progress=False)
    plain = inhernet.inherit(teacher, **common)
    aware = inhernet.inherit(teacher, init="whitened", calibration=[x[:8], x[8:]], **common)
    with torch.no_grad():
        ref = teacher(x)
        e_plain, e_aware = ((m(x) - ref).pow(2).mean().item() for m in (plain, aware))
    assert e_aware < 0.5 * e_plain


@pytest.mark.parametrize("init", ["svd", "whitened"])
def test_streamed_conv1d_equals_in_memory(tmp_path, init):
    teacher = _conv1d_net()
    src = _checkpoint(tmp_path, teacher)
    with torch.device("meta"):
        skeleton = Conv1dNet()
    cal = dict(calibration=[torch.randn(3, 3, 20)]) if init == "whitened" else {}
    cfg = dict(init=init, rank=3, heads=2, min_saving=None, progress=False, **cal)
    dst = inhernet.inherit_checkpoint(src, tmp_path / "dst", model=skeleton, **cfg)
    streamed = inhernet.load(dst, base_model=_conv1d_net(seed=9))
    memory = inhernet.inherit(teacher, **cfg)
    assert isinstance(streamed.c3, InherConv1d)
    _state_equal(streamed, memory)

# --------------------------------------------------------------------------------- 6. Cholesky

def _check_factor(g, damping):
    L = cholesky_factor(g)
    assert L.dtype == torch.float64 and torch.isfinite(L).all()
    assert torch.equal(L, torch.tril(L))
    scale = float(g.double().diagonal().mean())
    eye = torch.eye(g.shape[0], dtype=torch.float64)
    torch.testing.assert_close(L @ L.T, g.double() + damping * scale * eye, atol=1e-9 * scale, rtol=1e-7)
    return L


def test_cholesky_of_rank_deficient_moments_is_damped_not_a_crash():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(5, 12, generator=g, dtype=torch.float64)  # fewer rows than columns
    G = x.T @ x / 5
    assert torch.linalg.matrix_rank(G) == 5
    _check_factor(G, DAMPING)
    x = torch.randn(50, 8, generator=g, dtype=torch.float64)
    x[:, 3] = 0  # a dead input channel
    _check_factor(x.T @ x / 50, DAMPING)
    _check_factor((x.T @ x / 50).float(), DAMPING)  # float32 in, float64 out


def test_cholesky_damping_grows_until_it_succeeds():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(40, 6, generator=g, dtype=torch.float64)
    G = x.T @ x / 40
    scale = float(G.diagonal().mean())
    # numerically indefinite by -5e-4·scale along one direction: 1e-4 fails, 1e-3 succeeds
    evals, evecs = torch.linalg.eigh(G)
    evals[0] = -5e-4 * scale
    bad = (evecs * evals) @ evecs.T
    assert not torch.linalg.cholesky_ex(bad + DAMPING * scale * torch.eye(6, dtype=torch.float64))[1] == 0
    _check_factor(bad, 10 * DAMPING)
    with pytest.raises(ValueError, match="positive semi-definite"):
        cholesky_factor(torch.diag(torch.tensor([-3.0, -3.0, -3.0, 12.0], dtype=torch.float64)))


def test_cholesky_of_an_all_zero_moment_is_the_identity():
    assert torch.equal(cholesky_factor(torch.zeros(5, 5)), torch.eye(5, dtype=torch.float64))


def test_whitened_inherit_with_fewer_rows_than_inputs_and_dead_inputs():
    torch.manual_seed(0)
    teacher = nn.Sequential(nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 4)).eval()
    x = torch.randn(3, 32)  # 3 rows < d_in = 32
    x[:, 5] = 0
    model = inhernet.inherit(teacher, init="whitened", calibration=[x], rank=4, heads=2, progress=False)
    assert model.inhernet_plan.calibration["rows"] == 3
    assert [r.rank for r in model.inhernet_plan.layers] == [4, 4, None]
    assert all(torch.isfinite(p).all() for p in model.parameters())
    with torch.no_grad():
        assert torch.isfinite(model(torch.randn(6, 32))).all()
    # an input that is always zero gives L = I for that layer: the plain SVD
    zero = inhernet.inherit(teacher, init="whitened", calibration=[torch.zeros(4, 32)], rank=4, heads=1,
                            target_modules=["0"], progress=False)
    plain = inhernet.inherit(teacher, rank=4, heads=1, target_modules=["0"], progress=False)
    torch.testing.assert_close(zero[0].effective_weight(), plain[0].effective_weight(), atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------------- 7. calibration modes

def test_sequential_on_a_model_without_blocks_is_a_config_error():
    with pytest.raises(ConfigError, match="calibration_mode='sequential' needs one list of repeated blocks"):
        inhernet.inherit(toy_cnn(), init="whitened", calibration_mode="sequential",
                         calibration=[torch.randn(2, 3, 8, 8)], rank=2, progress=False)
    # auto picks one pass there
    model = inhernet.inherit(toy_cnn(), init="whitened", calibration=[torch.randn(2, 3, 8, 8)], rank=2,
                             min_saving=None, progress=False)
    assert model.inhernet_plan.calibration["mode"] == "one_pass"


def test_tiny_llama_calibration_record_under_auto_and_one_pass():
    pytest.importorskip("transformers")
    teacher, batch = toy_hf("llama"), hf_batch("llama", batch=2, seq=8)
    seq = inhernet.inherit(teacher, init="whitened", calibration=[batch, batch], rank=4, heads=2,
                           progress=False)
    rec = seq.inhernet_plan.calibration
    assert rec["mode"] == "sequential" and rec["blocks"] == 2 and rec["block_list"] == "model.layers"
    assert rec["batches"] == 2 and rec["rows"] == 2 * 2 * 8
    assert rec["peak_statistics_bytes"] > 0 and rec["peak_activation_bytes"] > 0
    one = inhernet.inherit(teacher, init="whitened", calibration=[batch, batch], rank=4, heads=2,
                           calibration_mode="one_pass", progress=False)
    rec1 = one.inhernet_plan.calibration
    assert rec1["mode"] == "one_pass" and rec1["blocks"] == 0
    # one pass holds every layer's statistics at once, sequential one block's
    assert rec1["peak_statistics_bytes"] > rec["peak_statistics_bytes"]
    assert rec1["peak_statistics_bytes"] == pytest.approx(2 * rec["peak_statistics_bytes"], rel=0.01)
    with torch.no_grad():
        assert torch.isfinite(seq(**batch).logits).all()


def _checkpoint(tmp_path, teacher, name="model.safetensors"):
    src = tmp_path / "src"
    src.mkdir(exist_ok=True)
    save_file({k: v.contiguous() for k, v in teacher.state_dict().items()}, str(src / name))
    return src


def _blocknet_checkpoint(tmp_path):
    """A BlockNet teacher, its checkpoint folder, a meta skeleton and one calibration batch."""
    teacher = toy_blocknet()
    src = _checkpoint(tmp_path, teacher)
    with torch.device("meta"):
        skeleton = blocknet_arch()
    return teacher, src, skeleton, torch.randn(8, 16)


def test_streamed_sequential_refuses_a_head_after_the_blocks_and_leaves_dst_alone(tmp_path):
    teacher, src, skeleton, x = _blocknet_checkpoint(tmp_path)
    cfg = dict(init="whitened", calibration=[x], calibration_mode="sequential", exclude_classifier=False, rank=2,
               heads=2, progress=False)
    dst = tmp_path / "dst"
    with pytest.raises(ConfigError, match="'head'"):
        inhernet.inherit_checkpoint(src, dst, model=skeleton, **cfg)
    assert not dst.exists()
    dst.mkdir()
    with pytest.raises(ConfigError, match="'head'"):
        inhernet.inherit_checkpoint(src, dst, model=skeleton, **cfg)
    assert list(dst.iterdir()) == []
    # an existing model in dst survives a failed overwrite
    old = inhernet.inherit(teacher, rank=2, progress=False)
    inhernet.save(old, dst)
    before = sorted(p.name for p in dst.iterdir())
    with pytest.raises(ConfigError, match="'head'"):
        inhernet.inherit_checkpoint(src, dst, model=skeleton, overwrite=True, **cfg)
    assert sorted(p.name for p in dst.iterdir()) == before
    _state_equal(inhernet.load(dst, base_model=blocknet_arch()), old)
    # in memory the head is calibrated after the blocks
    model = inhernet.inherit(teacher, **cfg)
    assert isinstance(model.head, InherLinear)
    rec = model.inhernet_plan.calibration
    assert rec["mode"] == "sequential" and rec["blocks"] == 2 and rec["block_list"] == "blocks"


def test_streamed_sequential_equals_in_memory_without_the_head(tmp_path):
    teacher, src, skeleton, x = _blocknet_checkpoint(tmp_path)
    cfg = dict(init="whitened", calibration=[x], calibration_mode="sequential", rank=4, heads=2, progress=False)
    dst = inhernet.inherit_checkpoint(src, tmp_path / "dst", model=skeleton, **cfg)
    streamed = inhernet.load(dst, base_model=blocknet_arch())
    memory = inhernet.inherit(teacher, **cfg)
    _state_equal(streamed, memory)
    assert streamed.inhernet_plan.calibration == memory.inhernet_plan.calibration


# ------------------------------------------------------------------------------ 8. sharded save

def test_sharded_save_load_and_overwrite_with_one_file(tmp_path):
    model = inhernet.inherit(toy_mlp(), rank=4, heads=2, progress=False)
    folder = tmp_path / "m"
    max_bytes = 3000
    inhernet.save(model, folder, max_shard_size=max_bytes)
    shards = sorted(p.name for p in folder.glob("*.safetensors"))
    n = len(shards)
    assert n >= 2
    assert shards == [f"model-{i:05d}-of-{n:05d}.safetensors" for i in range(1, n + 1)]
    assert not (folder / "model.safetensors").exists()
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    state = model.state_dict()
    assert set(index["weight_map"]) == set(state)
    assert set(index["weight_map"].values()) == set(shards)
    assert index["metadata"]["total_size"] == sum(t.numel() * t.element_size() for t in state.values())
    for shard in shards:  # each shard within the limit (unless it is one tensor on its own)
        keys = [k for k, f in index["weight_map"].items() if f == shard]
        size = sum(state[k].numel() * state[k].element_size() for k in keys)
        assert size <= max_bytes or len(keys) == 1
    meta = json.loads((folder / "inhernet_config.json").read_text())
    assert [f["file"] for f in meta["weights"]["files"]] == shards
    again = inhernet.load(folder, base_model=mlp_arch())
    _state_equal(again, model)
    # overwrite with one file: the old shards and index go, other files stay
    (folder / "notes.txt").write_text("keep me")
    with pytest.raises(inhernet.errors.ModelExistsError):
        inhernet.save(model, folder)
    inhernet.save(model, folder, overwrite=True)
    assert sorted(p.name for p in folder.iterdir()) == ["inhernet_config.json", "model.safetensors", "notes.txt"]
    _state_equal(inhernet.load(folder, base_model=mlp_arch()), model)
    # and back to shards: the one file goes
    inhernet.save(model, folder, overwrite=True, max_shard_size="3KB")
    names = sorted(p.name for p in folder.iterdir())
    assert "model.safetensors" not in names and "model.safetensors.index.json" in names and "notes.txt" in names
    _state_equal(inhernet.load(folder, base_model=mlp_arch()), model)
    # a limit above the model's size: one file, no index
    inhernet.save(model, folder, overwrite=True, max_shard_size="1GB")
    assert sorted(p.name for p in folder.iterdir()) == ["inhernet_config.json", "model.safetensors", "notes.txt"]


def test_overwriting_with_fewer_shards_removes_the_extra_ones(tmp_path):
    model = inhernet.inherit(toy_mlp(), rank=4, heads=2, progress=False)
    folder = tmp_path / "m"
    inhernet.save(model, folder, max_shard_size=1500)
    many = len(list(folder.glob("model-*.safetensors")))
    inhernet.save(model, folder, overwrite=True, max_shard_size=4000)
    few = sorted(p.name for p in folder.glob("model-*.safetensors"))
    assert 2 <= len(few) < many
    assert all(f"-of-{len(few):05d}" in name for name in few)
    _state_equal(inhernet.load(folder, base_model=mlp_arch()), model)


# ------------------------------------------------------------------ 9. one .safetensors file

def test_inherit_checkpoint_from_a_single_file_equals_inherit_and_leaves_the_skeleton(tmp_path):
    teacher = toy_mlp()
    src = _checkpoint(tmp_path, teacher, name="teacher.safetensors")
    # a different model's checkpoint in the same folder must not be read
    save_file({k: v.contiguous() for k, v in toy_mlp(seed=7).state_dict().items()}, str(src / "model.safetensors"))
    with torch.device("meta"):
        skeleton = mlp_arch()
    modules_before = [(n, type(m), m) for n, m in skeleton.named_modules()]
    params_before = [(n, p) for n, p in skeleton.named_parameters()]
    cfg = dict(rank=4, heads=2, head_init="perturbed", progress=False)
    dst = inhernet.inherit_checkpoint(src / "teacher.safetensors", tmp_path / "dst", model=skeleton,
                                      max_shard_size="2KB", **cfg)
    streamed = inhernet.load(dst, base_model=mlp_arch())
    memory = inhernet.inherit(teacher, **cfg)
    _state_equal(streamed, memory)
    assert len(list(dst.glob("model-*.safetensors"))) >= 2
    # the caller's skeleton is untouched
    assert [(n, type(m), m) for n, m in skeleton.named_modules()] == modules_before
    assert [(n, p) for n, p in skeleton.named_parameters()] == params_before
    assert all(p.is_meta for p in skeleton.parameters())
    assert not any(isinstance(m, INHER_LAYERS) for m in skeleton.modules())
    assert not hasattr(skeleton, "inhernet_plan")


# ---------------------------------------------------------------------------------- 10. errors

def test_truncated_and_mismatched_loads_raise_the_typed_errors(tmp_path):
    model = inhernet.inherit(toy_mlp(), rank=4, progress=False)
    folder = inhernet.save(model, tmp_path / "m")
    # wrong architecture
    with pytest.raises(ArchitectureMismatchError) as info:
        inhernet.load(folder, base_model=toy_cnn())
    assert isinstance(info.value, InherNetLoadError) and isinstance(info.value, InherNetError)
    wider = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(),
                          nn.Linear(32, 5))
    with pytest.raises(ArchitectureMismatchError):
        inhernet.load(folder, base_model=wider)
    # truncated weights
    weights = folder / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(CorruptCheckpointError) as info:
        inhernet.load(folder, base_model=mlp_arch())
    assert isinstance(info.value, InherNetLoadError) and isinstance(info.value, InherNetError)
    assert not isinstance(info.value, ArchitectureMismatchError)
    # same size, flipped bytes
    flipped = bytearray(data)
    flipped[-5] ^= 0xFF
    weights.write_bytes(bytes(flipped))
    with pytest.raises(CorruptCheckpointError):
        inhernet.load(folder, base_model=mlp_arch())


def test_a_truncated_shard_is_a_corrupt_checkpoint(tmp_path):
    model = inhernet.inherit(toy_mlp(), rank=4, progress=False)
    folder = inhernet.save(model, tmp_path / "m", max_shard_size=3000)
    shard = sorted(folder.glob("model-*.safetensors"))[-1]
    shard.write_bytes(shard.read_bytes()[:-10])
    with pytest.raises(CorruptCheckpointError, match="truncated"):
        inhernet.load(folder, base_model=mlp_arch())
    shard.unlink()
    with pytest.raises(CorruptCheckpointError, match="not found"):
        inhernet.load(folder, base_model=mlp_arch())
