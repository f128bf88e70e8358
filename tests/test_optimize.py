"""optimize_for_inference: the same outputs (rtol 1e-4, atol 1e-5 in float32), a new module, a
report of what every layer became."""

import re
import shutil

import pytest
import torch
from torch import nn

import inhernet
import inhernet.optimize as optimize
import inhernet.optimize.build  # noqa: F401 - the module whose timing the tests replace
from inhernet.config import ConfigError
from inhernet.models import create_model
from inhernet.optimize import FactorisedConv2d, GatedConv2d, optimize_for_inference

RTOL, ATOL = 1e-4, 1e-5
VARIANTS = {
    "H=1": dict(heads=1),
    "H=3 gated": dict(heads=3),
    "gate=none": dict(heads=3, gate="none"),
    "symmetric": dict(heads=3, structure="symmetric"),
    "symmetric gate=none": dict(heads=3, structure="symmetric", gate="none"),
}


@torch.no_grad()
def _randomise(model: nn.Module) -> nn.Module:
    """Heads that differ and a gate that matters, BatchNorms with non-trivial statistics: at SVD
    initialisation the heads are copies, and a fresh BatchNorm is the identity, which would hide
    a wrong fold."""
    for m in model.modules():
        if isinstance(m, (inhernet.InherConv2d, inhernet.InherLinear)):
            m.up.add_(0.3 * torch.randn_like(m.up) * m.up.std())
            if m.bias is not None:
                m.bias.normal_(0, 0.1)
            if m.gate is not None:
                m.gate.weight.normal_(0, 1.0)
                m.gate.bias.normal_(0, 0.5)
        elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            m.running_mean.normal_(0, 0.2)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.uniform_(0.5, 1.5)
            m.bias.normal_(0, 0.2)
    return model


def _resnet(arch="resnet20", **kw):
    teacher = _randomise(create_model(arch, num_classes=10, in_channels=1))
    return _randomise(inhernet.inherit(teacher, rank=8, progress=False, **kw))


def _mlp(**kw):
    teacher = nn.Sequential(nn.Linear(32, 96), nn.BatchNorm1d(96), nn.ReLU(), nn.Linear(96, 96), nn.ReLU(),
                            nn.Linear(96, 10))
    return _randomise(inhernet.inherit(_randomise(teacher), rank=8, min_saving=None, progress=False, **kw))


def _inherited_names(model):
    return [n for n, m in model.named_modules() if isinstance(m, (inhernet.InherConv2d, inhernet.InherLinear))]


def _assert_same(opt, model, x):
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(opt(x), model(x), rtol=RTOL, atol=ATOL)


def _snapshot(model):
    return ({k: v.clone() for k, v in model.state_dict().items()},
            [(n, type(m), m.training) for n, m in model.named_modules()],
            [p.requires_grad for p in model.parameters()])


def _assert_unchanged(model, snap):
    state, modules, grads = snap
    now = model.state_dict()
    assert now.keys() == state.keys() and all(torch.equal(now[k], v) for k, v in state.items())
    assert [(n, type(m), m.training) for n, m in model.named_modules()] == modules
    assert [p.requires_grad for p in model.parameters()] == grads


@pytest.mark.parametrize("variant, memory_format", [(v, "contiguous") for v in VARIANTS]
                         + [("H=1", "channels_last"), ("H=3 gated", "channels_last")])
def test_resnet_outputs_equal_the_original(variant, memory_format):
    model = _resnet(**VARIANTS[variant]).train()
    snap = _snapshot(model)
    opt = optimize_for_inference(model, torch.randn(4, 1, 28, 28), memory_format=memory_format, rounds=1)
    _assert_unchanged(model, snap)  # the input model is never changed (training flags included)
    report = opt.inhernet_optimized
    assert report.memory_format == memory_format and not report.approximate
    assert report.max_abs_diff <= 1e-4 * report.reference_scale
    _assert_same(opt, model, torch.randn(3, 1, 28, 28))  # another batch size: decisions are shape-free
    assert not opt.training and not any(p.requires_grad for p in opt.parameters())
    # every inherited layer is in the report, once
    assert [d.name for d in report.layers if d.kind == "InherConv2d"] == _inherited_names(model)
    # every BatchNorm of a ResNet follows a conv: all are folded away
    bns = [n for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)]
    assert not any(isinstance(m, nn.BatchNorm2d) for m in opt.modules())
    assert sorted(report.removed_batchnorms) == sorted(bns) and report.batchnorm_pairing == "torch.fx"
    layers = [model.get_submodule(n) for n in _inherited_names(model)]
    assert layers  # the variant inherits something
    gated = layers[0].gate is not None
    expected = ({"gated kept", "gated per-sample", "gated shared-weight"} if gated else {"dense", "folded pair"})
    assert set(report.counts()) <= expected
    text = str(report)
    assert all(name in text for name in _inherited_names(model)) and "BatchNorm folded" in text


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_mlp_outputs_equal_the_original(variant):
    model = _mlp(**VARIANTS[variant])
    snap = _snapshot(model)
    opt = optimize_for_inference(model, torch.randn(4, 32), rounds=1)  # "auto": no convs, contiguous only
    _assert_unchanged(model, snap)
    _assert_same(opt, model, torch.randn(5, 32))
    report = opt.inhernet_optimized
    assert report.memory_format == "contiguous" and report.model_times_ms == {}
    assert [d.name for d in report.layers if d.kind == "InherLinear"] == _inherited_names(model) == ["0", "3"]
    assert report.removed_batchnorms == ["1"] and not any(isinstance(m, nn.BatchNorm1d) for m in opt.modules())
    assert report.layers[0].batchnorm == "1"


@pytest.mark.parametrize("variant", ["H=3 gated", "symmetric", "gate=none"])
def test_per_token_inputs(variant):
    """Linear layers gate per token: a (batch, tokens, features) input."""
    teacher = nn.Sequential(nn.Linear(32, 96), nn.GELU(), nn.Linear(96, 96), nn.GELU(), nn.Linear(96, 10))
    model = _randomise(inhernet.inherit(teacher, rank=8, min_saving=None, progress=False, **VARIANTS[variant]))
    opt = optimize_for_inference(model, torch.randn(2, 7, 32), rounds=1)
    _assert_same(opt, model, torch.randn(3, 5, 32))


def test_resnet56_inhernet_and_a_dense_teacher():
    teacher = _randomise(create_model("resnet56", num_classes=10, in_channels=1))
    model = _randomise(inhernet.inherit(teacher, rank=8, heads=3, progress=False))
    x = torch.randn(4, 1, 28, 28)
    opt = optimize_for_inference(model, x, rounds=1)
    assert len([d for d in opt.inhernet_optimized.layers if d.kind == "InherConv2d"]) == len(_inherited_names(model)) == 55
    _assert_same(opt, model, x)
    # a dense network: only its BatchNorms fold (the "teacher, BN folded" baseline)
    folded = optimize_for_inference(teacher, x, rounds=1)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    assert all(type(m) is nn.Conv2d for m in folded.modules() if isinstance(m, nn.Conv2d))
    _assert_same(folded, teacher, x)
    assert not hasattr(opt, "inhernet_plan") and hasattr(model, "inhernet_plan")  # the plan stays with the original


def test_freeze_gate_folds_and_reports_its_deviation():
    model = _resnet(heads=3)
    x = torch.randn(4, 1, 28, 28)
    opt = optimize_for_inference(model, x, freeze_gate=True, memory_format="contiguous", rounds=1)
    report = opt.inhernet_optimized
    assert report.approximate and report.frozen_gates == sorted(_inherited_names(model))
    frozen = [d for d in report.layers if d.kind == "InherConv2d"]
    assert all(d.became in ("dense", "folded pair") and d.gate_deviation > 0 for d in frozen)
    with torch.no_grad():
        deviation = float((opt(x) - model.eval()(x)).abs().max())
    assert report.max_abs_diff == pytest.approx(deviation, rel=1e-3, abs=1e-6) and deviation > 0
    assert "APPROXIMATE" in str(report) and "gate frozen" in str(report)
    assert not any(isinstance(m, GatedConv2d) or isinstance(m, inhernet.InherConv2d) for m in opt.modules())

    # one layer by name: only it is frozen, the rest stay exact gated layers
    one = optimize_for_inference(model, x, freeze_gate=["layer3.2.conv2"], memory_format="contiguous", rounds=1)
    became = {d.name: d.became for d in one.inhernet_optimized.layers}
    assert one.inhernet_optimized.frozen_gates == ["layer3.2.conv2"]
    assert became["layer3.2.conv2"] in ("dense", "folded pair") and became["layer3.2.conv1"].startswith("gated")


def _prefer(winner):
    """A timing function that makes the candidates whose name starts with ``winner`` the fastest."""
    def fake(candidates, x, **kw):
        return {k: (1.0 if k.startswith(winner) else 2.0) for k in candidates}
    return fake


def test_a_layer_not_faster_than_dense_becomes_dense_and_exact(monkeypatch):
    monkeypatch.setattr(optimize.build, "time_candidates", _prefer("dense"))
    for model in (_resnet(heads=1), _resnet(heads=3, gate="none")):
        opt = optimize_for_inference(model, torch.randn(4, 1, 28, 28), memory_format="contiguous")
        assert set(opt.inhernet_optimized.counts()) == {"dense"}
        assert not any(isinstance(m, (FactorisedConv2d, inhernet.InherConv2d)) for m in opt.modules())
        _assert_same(opt, model, torch.randn(2, 1, 28, 28))


@pytest.mark.parametrize("winner, module, attr", [
    ("folded pair (1×1 conv)", FactorisedConv2d, ("kernel", "conv")),
    ("folded pair", FactorisedConv2d, ("kernel", "matmul")),
])
def test_forced_pairs_are_exact(monkeypatch, winner, module, attr):
    def fake(candidates, x, **kw):
        return {k: (1.0 if k == winner else 2.0) for k in candidates}
    monkeypatch.setattr(optimize.build, "time_candidates", fake)
    for memory_format in ("contiguous", "channels_last"):
        model = _resnet(heads=3, structure="symmetric", gate="none")
        # min_saving=None: at inner width H·r = 24 some pairs keep > 80 % of the dense parameters
        opt = optimize_for_inference(model, torch.randn(4, 1, 28, 28), memory_format=memory_format, min_saving=None)
        pairs = [m for m in opt.modules() if isinstance(m, module)]
        assert len(pairs) == len(_inherited_names(model)) and all(getattr(m, attr[0]) == attr[1] for m in pairs)
        assert pairs[0].down.out_channels == 3 * 8  # a symmetric layer folds to inner width H·r
        _assert_same(opt, model, torch.randn(2, 1, 28, 28))


@pytest.mark.parametrize("winner", ["gated shared-weight", "dense"])
@pytest.mark.parametrize("layer", ["conv", "linear"])
def test_one_inherited_layer_alone_becomes_its_inference_form(monkeypatch, winner, layer):
    monkeypatch.setattr(optimize.build, "time_candidates", _prefer(winner))
    if layer == "conv":
        model, x = _resnet(heads=3), torch.randn(4, 16, 28, 28)
        lone = model.layer1[0].conv1
    else:
        model, x = _mlp(heads=3), torch.randn(8, 96)
        lone = model[3]
    gated = winner != "dense"
    if not gated:  # a layer whose heads fold may become dense; a gated one cannot (its gate must run)
        lone.gate = None
    snap = _snapshot(lone)
    opt = optimize_for_inference(lone, x, memory_format="contiguous")
    assert not isinstance(opt, nn.Sequential) and not isinstance(opt, (inhernet.InherConv2d, inhernet.InherLinear))
    report = opt.inhernet_optimized
    assert [d.name for d in report.layers] == [optimize.LONE_LAYER] and set(report.counts()) == {winner}
    assert isinstance(opt, (GatedConv2d if layer == "conv" else optimize.GatedLinear) if gated
                      else (nn.Conv2d if layer == "conv" else nn.Linear))
    _assert_unchanged(lone, snap)
    _assert_same(opt, lone, x)


def test_as_trained_makes_gated_heads_differ_and_keeps_the_original():
    model = inhernet.inherit(create_model("resnet20", num_classes=10, in_channels=1), rank=4, heads=3, progress=False)
    snap = _snapshot(model)
    trained = optimize.as_trained(model, 1e-3)
    _assert_unchanged(model, snap)
    layers = [m for m in trained.modules() if isinstance(m, inhernet.InherConv2d)]
    assert layers and all(not torch.equal(m.up[0], m.up[1]) for m in layers)
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(trained.eval()(x), model.eval()(x), rtol=0.05, atol=0.05)  # changed by ~1e-3
    same = optimize.as_trained(model, 1e-3, inplace=True)
    assert same is model and all(not torch.equal(m.up[0], m.up[1])
                                 for m in model.modules() if isinstance(m, inhernet.InherConv2d))


@pytest.mark.parametrize("winner", ["gated kept", "gated per-sample", "gated shared-weight"])
@pytest.mark.parametrize("structure", ["asymmetric", "symmetric"])
def test_each_gated_kernel_is_exact(monkeypatch, winner, structure):
    monkeypatch.setattr(optimize.build, "time_candidates", _prefer(winner))
    model = _resnet(heads=3, structure=structure)
    for memory_format in ("contiguous", "channels_last"):
        opt = optimize_for_inference(model, torch.randn(4, 1, 28, 28), memory_format=memory_format)
        counts = opt.inhernet_optimized.counts()
        if winner == "gated per-sample" and structure == "symmetric":  # no per-sample form without a shared down
            assert "gated per-sample" not in counts
        else:
            assert set(counts) == {winner}
        _assert_same(opt, model, torch.randn(2, 1, 28, 28))


def test_min_speedup_prefers_dense_at_near_ties(monkeypatch):
    def fake(candidates, x, **kw):
        return {k: (1.0 if k == "dense" else 0.9) for k in candidates}  # the pair 10 % faster
    monkeypatch.setattr(optimize.build, "time_candidates", fake)
    model = _resnet(heads=1)
    x = torch.randn(4, 1, 28, 28)
    assert set(optimize_for_inference(model, x, memory_format="contiguous").inhernet_optimized.counts()) == {"folded pair"}
    opt = optimize_for_inference(model, x, memory_format="contiguous", min_speedup=1.2)
    assert set(opt.inhernet_optimized.counts()) == {"dense"}
    layer = next(d for d in opt.inhernet_optimized.layers if d.kind == "InherConv2d")
    assert layer.chosen == "dense" and layer.times_ms == {"dense": 1.0, "folded pair": 0.9, "folded pair (1×1 conv)": 0.9}


def test_memory_format_auto_keeps_the_faster_layout(monkeypatch):
    monkeypatch.setattr(optimize.build, "time_candidates", _prefer("channels_last"))
    model = _resnet(heads=1)
    opt = optimize_for_inference(model, torch.randn(4, 1, 28, 28))
    assert opt.inhernet_optimized.memory_format == "channels_last"
    assert set(opt.inhernet_optimized.model_times_ms) == {"contiguous", "channels_last"}
    _assert_same(opt, model, torch.randn(2, 1, 28, 28))


class _Untraceable(nn.Module):
    """torch.fx cannot trace the data-dependent branch; conv2's output is read by bn2 *and* by the
    sum, so folding bn2 into conv2 would change the output — only conv1/bn1 may fold."""

    def __init__(self):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.conv2, self.bn2 = nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8)

    def forward(self, x):
        if float(x.sum()) > float("-inf"):
            x = self.bn1(self.conv1(x))
        y = self.conv2(x)
        return self.bn2(y) + y


def test_batchnorm_pairs_of_an_untraceable_model_are_verified():
    model = _randomise(_Untraceable())
    x = torch.randn(4, 1, 12, 12)
    opt = optimize_for_inference(model, x, rounds=1)
    report = opt.inhernet_optimized
    assert report.batchnorm_pairing.startswith("forward hooks") and "bn2" in report.batchnorm_pairing
    assert report.removed_batchnorms == ["bn1"] and isinstance(opt.bn2, nn.BatchNorm2d)
    _assert_same(opt, model, torch.randn(2, 1, 12, 12))


def test_bad_arguments_are_config_errors():
    model = _resnet(heads=3)
    x = torch.randn(2, 1, 28, 28)
    with pytest.raises(ConfigError, match="memory_format"):
        optimize_for_inference(model, x, memory_format="nhwc")
    with pytest.raises(ConfigError, match="matches no gated layer"):
        optimize_for_inference(model, x, freeze_gate=["no.such.layer"])
    with pytest.raises(ConfigError, match="min_speedup"):
        optimize_for_inference(model, x, min_speedup=0)
    with pytest.raises(ConfigError, match="example_input"):
        optimize_for_inference(model, [1, 2])


def test_time_candidates_measures_side_by_side():
    calls = []
    times = optimize.time_candidates({"a": lambda x: calls.append("a"), "b": lambda x: calls.append("b")},
                                     torch.zeros(1), rounds=3, min_time_s=0.0)
    assert set(times) == {"a", "b"} and all(t >= 0 for t in times.values())
    assert calls[4:] == ["a", "b", "b", "a", "a", "b"]  # after two warm-up calls each: interleaved, alternating


@pytest.mark.skipif(shutil.which("cc") is None and shutil.which("gcc") is None, reason="torch.compile needs a C compiler")
def test_compiled_result_is_exact():
    model = _mlp(heads=1)
    opt = optimize_for_inference(model, torch.randn(4, 32), compile=True, rounds=1)
    report = opt.inhernet_optimized
    assert report.compiled and report.compile_options == optimize.COMPILE_OPTIONS["cpu"] == {"cpp_wrapper": True}
    assert "torch.compile (cpp_wrapper=True)" in report.summary()
    _assert_same(opt, model, torch.randn(4, 32))


def test_a_compiled_result_that_differs_is_refused_and_its_difference_reported(monkeypatch):
    """The compiled model is checked against the original on the example like every transform, on
    every compile path (here torch.compile of a one-layout model: no layouts compared), and its
    difference is the report's max_abs_diff."""
    class Shifted(nn.Module):  # a "compiled" model whose outputs are off by `by`
        def __init__(self, module, by):
            super().__init__()
            self.module, self.by = module, by

        def forward(self, x):
            return self.module(x) + self.by

    model, x = _mlp(heads=1), torch.randn(4, 32)
    monkeypatch.setattr(torch, "compile", lambda module, **kw: Shifted(module, 1.0))
    with pytest.raises(RuntimeError, match="the compiled model differs from the original"):
        optimize_for_inference(model, x, compile=True, rounds=1)
    monkeypatch.setattr(torch, "compile", lambda module, **kw: Shifted(module, 1e-7))  # inside rounding
    report = optimize_for_inference(model, x, compile=True, rounds=1).inhernet_optimized
    assert report.max_abs_diff >= 1e-7 * 0.5


@pytest.mark.parametrize("bad", ["fast", 1, {1: True}])
def test_a_compile_setting_that_is_neither_a_switch_nor_inductor_options_is_refused(bad):
    with pytest.raises(ConfigError, match=r"compile=.*True / False, 'aot'.*or a dict of TorchInductor options"):
        optimize_for_inference(_mlp(heads=1), torch.randn(4, 32), compile=bad, rounds=1)


@pytest.mark.skipif(shutil.which("cc") is None and shutil.which("gcc") is None,
                    reason="AOTInductor compiles C++: it needs a C compiler")
def test_compiled_ahead_of_time_is_exact_keeps_its_package_and_refuses_other_shapes(tmp_path):
    model = _resnet("resnet8", heads=3)  # gated convs whose gates run (randomised heads)
    x = torch.randn(2, 1, 28, 28)
    snap = _snapshot(model)
    package = tmp_path / "fast.pt2"
    opt = optimize_for_inference(model, x, compile="aot", package_path=package, rounds=1)
    _assert_unchanged(model, snap)
    report = opt.inhernet_optimized
    assert isinstance(opt, optimize.AotCompiledModel) and report.compiled and report.compile_mode == "aot"
    assert report.package_path == str(package) and package.is_file()
    assert "compiled ahead of time" in report.summary() and str(package) in report.summary()
    _assert_same(opt, model, torch.randn(2, 1, 28, 28))
    # the package loads without the library's wrapper and computes the same
    loaded = torch._inductor.aoti_load_package(str(package))
    fresh = torch.randn(2, 1, 28, 28)
    torch.testing.assert_close(loaded(fresh), opt(fresh))
    with pytest.raises(ConfigError, match=r"compiled ahead of time for inputs \(2, 1, 28, 28\).*got \(3, 1, 28, 28\)"):
        opt(torch.randn(3, 1, 28, 28))
    # an existing file is never written over, and the check comes before any work
    with pytest.raises(ConfigError, match="exists; remove it or give another path"):
        optimize_for_inference(model, x, compile="aot", package_path=package, rounds=1)


@pytest.mark.skipif(shutil.which("cc") is None and shutil.which("gcc") is None,
                    reason="AOTInductor compiles C++: it needs a C compiler")
def test_compiled_ahead_of_time_without_a_package_path_uses_a_temporary_package():
    model = _mlp(heads=3)
    opt = optimize_for_inference(model, torch.randn(4, 32), compile="aot", rounds=1)
    report = opt.inhernet_optimized
    assert report.package_path is None and opt.package_path is None and "package temporary" in report.summary()
    _assert_same(opt, model, torch.randn(4, 32))


class _Branchy(nn.Module):
    """A forward whose path depends on the data: torch.export cannot capture it."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(8, 8)

    def forward(self, x):
        y = self.lin(x)
        return y if y.sum() > 0 else -y


def test_a_model_export_cannot_capture_is_refused_ahead_of_time_with_the_way_out():
    with pytest.raises(ConfigError, match=r"torch.export could not capture this model.*use compile=True"):
        optimize_for_inference(_Branchy(), torch.randn(2, 8), compile="aot", rounds=1)


@pytest.mark.skipif(shutil.which("cc") is None and shutil.which("gcc") is None,
                    reason="AOTInductor compiles C++: it needs a C compiler")
def test_a_cnn_compiled_ahead_of_time_chooses_its_layout_by_timing_both_layouts_compiled():
    model = _resnet("resnet8", heads=3)
    x = torch.randn(2, 1, 16, 16)
    opt = optimize_for_inference(model, x, compile="aot", rounds=1)
    report = opt.inhernet_optimized
    assert report.model_times_compiled and set(report.model_times_ms) == {"contiguous", "channels_last"}
    assert report.memory_format == min(report.model_times_ms, key=report.model_times_ms.get)
    assert opt.package_path is None and report.package_path is None  # the layouts' packages were temporary
    assert "memory format " + report.memory_format + " (compiled: " in report.summary()
    _assert_same(opt, model, torch.randn(2, 1, 16, 16))
    eager = optimize_for_inference(model, x, rounds=1).inhernet_optimized  # not compiled: timed eager
    assert not eager.model_times_compiled and "(compiled: " not in eager.summary()


def test_a_package_path_needs_aot_and_a_pt2_name(tmp_path):
    with pytest.raises(ConfigError, match="give compile='aot' with it"):
        optimize_for_inference(_mlp(heads=1), torch.randn(4, 32), compile=True, package_path=tmp_path / "m.pt2")
    with pytest.raises(ConfigError, match="a .pt2 file"):
        optimize_for_inference(_mlp(heads=1), torch.randn(4, 32), compile="aot", package_path=tmp_path / "m.so")


def test_freezing_among_the_compile_options_is_refused_with_the_way_that_works():
    # torch.compile(options={"freezing": True}) would compile unfrozen without a word
    with pytest.raises(ConfigError, match=r"ignores 'freezing'.*torch._inductor.config.freezing = True"):
        optimize_for_inference(_mlp(heads=1), torch.randn(4, 32), compile={"freezing": True}, rounds=1)


def test_export_onnx_of_an_optimised_inhernet_passes_its_check(tmp_path):
    pytest.importorskip("onnxruntime", reason="the ONNX Runtime check needs onnxruntime (requirements.txt)")
    from inhernet.export import OnnxModule

    model = _resnet("resnet8", heads=3).train()
    res = inhernet.export_onnx(model, tmp_path / "opt.onnx", torch.randn(1, 1, 28, 28))  # optimize=True by default
    assert model.training  # restored
    report = res["optimized"]
    assert report is not None and report.memory_format == "contiguous" and len(report.removed_batchnorms) > 0
    assert res["max_abs_diff"] < 1e-4
    x = torch.randn(3, 1, 28, 28)
    with torch.no_grad():  # the file computes what the original model computes
        torch.testing.assert_close(OnnxModule(res["path"], threads=1)(x), model.eval()(x), rtol=1e-4, atol=1e-5)


def test_cli_export_reports_the_optimisation(tmp_path, capsys):
    pytest.importorskip("onnxruntime", reason="the ONNX Runtime check needs onnxruntime (requirements.txt)")
    from inhernet.cli import main
    from inhernet.train import save_model

    teacher = create_model("resnet8", num_classes=10, in_channels=1)
    save_model(inhernet.inherit(teacher, rank=4, heads=1, progress=False), tmp_path / "model", arch="resnet8",
               num_classes=10, in_channels=1)
    assert main(["export", str(tmp_path / "model"), "--input-shape", "1", "16", "16", "--out", str(tmp_path / "m.onnx")]) == 0
    out = capsys.readouterr().out
    assert re.search(r"optimised for inference: .*BatchNorm folded", out) and "ONNX Runtime matches PyTorch" in out
    assert main(["export", str(tmp_path / "model"), "--input-shape", "1", "16", "16", "--out", str(tmp_path / "n.onnx"),
                 "--no-optimize"]) == 0
    assert "optimised for inference" not in capsys.readouterr().out


@pytest.mark.skipif(shutil.which("cc") is None and shutil.which("gcc") is None,
                    reason="AOTInductor compiles C++: it needs a C compiler")
def test_cli_export_to_a_pt2_package_compiles_ahead_of_time(tmp_path, capsys):
    from inhernet.cli import main
    from inhernet.train import save_model

    teacher = create_model("resnet8", num_classes=10, in_channels=1)
    model = _randomise(inhernet.inherit(teacher, rank=4, heads=2, progress=False))
    save_model(model, tmp_path / "model", arch="resnet8", num_classes=10, in_channels=1)
    out = tmp_path / "m.pt2"
    args = ["export", str(tmp_path / "model"), "--input-shape", "1", "16", "16", "--out", str(out)]
    assert main([*args, "--batch-size", "2"]) == 0
    printed = capsys.readouterr().out
    assert "AOTInductor package, input 2×1×16×16" in printed and "optimised for inference" in printed
    x = torch.randn(2, 1, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(torch._inductor.aoti_load_package(str(out))(x), model.eval()(x),
                                   rtol=RTOL, atol=ATOL)
    assert main(args) == 2 and "exists" in capsys.readouterr().err  # never written over
    assert main([*args[:-1], str(tmp_path / "n.pt2"), "--opset", "17"]) == 2
    assert "ONNX options" in capsys.readouterr().err
    assert main([*args[:-1], str(tmp_path / "n.onnx"), "--batch-size", "2"]) == 2
    assert "dynamic batch" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# linear layers: gated kernels, identical heads, min_saving, shared inputs (issue 13)


from inhernet.optimize import (GatedLinear, InOutLinear, SharedInputProduct,  # noqa: E402
                               SharedInputProjection)


def _gated_mlp(bias=True, structure="asymmetric"):
    teacher = nn.Sequential(nn.Linear(32, 96, bias=bias), nn.GELU(), nn.Linear(96, 96, bias=bias), nn.GELU(),
                            nn.Linear(96, 10, bias=bias))
    return _randomise(inhernet.inherit(teacher, rank=8, heads=3, structure=structure, min_saving=None,
                                       progress=False))


@pytest.mark.parametrize("structure", ["asymmetric", "symmetric"])
@pytest.mark.parametrize("mixing", ["shared", "per-token"])
@pytest.mark.parametrize("layout", ["out×in", "in×out"])
@pytest.mark.parametrize("bias", [True, False])
def test_gated_linear_computes_the_inherited_layer(structure, mixing, layout, bias):
    layer = _gated_mlp(bias=bias, structure=structure)[2].eval()
    if mixing == "per-token" and structure == "symmetric":
        with pytest.raises(ConfigError, match="shared down"):
            GatedLinear.from_layer(layer, mixing, layout)
        return
    fast = GatedLinear.from_layer(layer, mixing, layout)
    # down rows and gate logit rows in one matrix, stored as the product reads it: no copy per call
    rows = layer.down.shape[0] + layer.heads
    assert fast.first_product()[0].shape == (rows, 96) and fast.first_weight.is_contiguous()
    with torch.no_grad():
        for shape in [(5, 96), (2, 7, 96), (1, 1, 96)]:
            x = torch.randn(*shape)
            torch.testing.assert_close(fast(x), layer(x), rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("rows", [1, 3, 40])
def test_inherlinear_no_grad_heads_loop_matches_the_concatenated_product(rows):
    """Few rows without autograd: the heads are accumulated one by one (no copy of ``up``)."""
    layer = _gated_mlp()[2].eval()
    x = torch.randn(rows, 96)
    with torch.enable_grad():
        reference = layer(x)  # autograd: the concatenated product
    assert reference.requires_grad
    with torch.no_grad():
        torch.testing.assert_close(layer(x), reference.detach(), rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("winner", ["gated kept", "gated shared-weight", "gated shared-weight (in×out)",
                                    "gated per-token", "gated per-token (in×out)"])
def test_each_gated_linear_kernel_is_exact_and_reported(monkeypatch, winner):
    monkeypatch.setattr(optimize.build, "time_candidates", _prefer(winner))
    model = _gated_mlp()
    opt = optimize_for_inference(model, torch.randn(2, 7, 32), fuse_shared_inputs=False)
    report = opt.inhernet_optimized
    inherited = [d for d in report.layers if d.kind == "InherLinear"]
    assert {d.chosen for d in inherited} == {winner}
    assert {d.became for d in inherited} == {winner.removesuffix(" (in×out)")}
    assert all("dense (reference)" in d.times_ms and 0 < d.param_fraction < 1 for d in inherited)
    _assert_same(opt, model, torch.randn(3, 5, 32))


def test_identical_heads_fold_exactly():
    """The paper's SVD-initialised heads are copies: the gate cannot matter, the layer folds to a pair."""
    teacher = nn.Sequential(nn.Linear(32, 96), nn.GELU(), nn.Linear(96, 96), nn.GELU(), nn.Linear(96, 10))
    for structure in ("asymmetric", "symmetric"):
        model = inhernet.inherit(teacher, rank=8, heads=3, head_init="copies", structure=structure, min_saving=None,
                                 progress=False)
        opt = optimize_for_inference(model, torch.randn(4, 32), rounds=1, min_saving=None)
        report = opt.inhernet_optimized
        assert set(report.counts()) <= {"folded pair", "dense"} and not report.approximate
        assert all("heads identical" in d.note for d in report.layers if d.kind == "InherLinear")
        pairs = [m for m in opt.modules() if isinstance(m, nn.Sequential) and m is not opt]
        assert all(p[0].weight.shape[0] == 8 for p in pairs)  # one head's width, also for a symmetric layer
        _assert_same(opt, model, torch.randn(6, 32))


@pytest.mark.parametrize("head_init", ["perturbed", "split"])
@pytest.mark.parametrize("structure", ["asymmetric", "symmetric"])
def test_a_zero_gate_is_a_constant_and_folds_exactly(head_init, structure):
    """``perturbed`` / ``split`` heads differ but start with a zero gate: every input gets
    softmax(bias), so an untrained model folds exactly (a symmetric layer to its H·r-wide pair); once the
    gate depends on its input (``as_trained``) it runs."""
    teacher = nn.Sequential(nn.Linear(32, 96), nn.GELU(), nn.Linear(96, 96), nn.GELU(), nn.Linear(96, 10))
    model = inhernet.inherit(teacher, rank=8, heads=3, head_init=head_init, head_init_scale=0.3, structure=structure,
                             min_saving=None, progress=False)
    layers = [m for m in model.modules() if isinstance(m, inhernet.InherLinear)]
    assert layers and all(not torch.equal(m.up[0], m.up[1]) for m in layers)  # the heads do differ
    with torch.no_grad():
        for m in layers:  # a gate bias the training moved: the constant is softmax(bias), not 1/H
            m.gate.bias.copy_(torch.tensor([0.5, -0.2, 0.1]))
    opt = optimize_for_inference(model, torch.randn(4, 32), rounds=1, min_saving=None)
    report = opt.inhernet_optimized
    assert set(report.counts()) <= {"folded pair", "dense"} and not report.approximate
    assert all("gate weight zero" in d.note for d in report.layers if d.kind == "InherLinear")
    _assert_same(opt, model, torch.randn(6, 32))
    running = optimize_for_inference(optimize.as_trained(model), torch.randn(4, 32), rounds=1, min_saving=None)
    assert not set(running.inhernet_optimized.counts()) & {"folded pair", "dense"}


def test_min_saving_makes_large_pairs_dense_and_notes_large_gated_layers(monkeypatch):
    monkeypatch.setattr(optimize.build, "time_candidates", _prefer("folded pair"))  # timing alone would keep pairs
    teacher = nn.Sequential(nn.Linear(32, 40), nn.GELU(), nn.Linear(40, 12), nn.GELU(), nn.Linear(12, 4))
    # rank 10 keeps (10·(32 + 40) + 40) / (32·40 + 40) = 58 % of layer 0, (10·52 + 12) / (40·12 + 12) = 108 % of
    # layer 2 (layer 4 is the classifier: not inherited)
    model = inhernet.inherit(teacher, rank=10, heads=1, min_saving=None, dense_at_full_rank=False, progress=False)
    x = torch.randn(4, 32)
    became = {d.name: d for d in optimize_for_inference(model, x).inhernet_optimized.layers}
    assert became["0"].became == "folded pair" and became["2"].became == "dense"
    assert "min_saving" in became["2"].note and became["2"].param_fraction == pytest.approx(532 / 492)
    strict = optimize_for_inference(model, x, min_saving=0.5).inhernet_optimized
    assert {d.name: d.became for d in strict.layers if d.kind == "InherLinear"} == {"0": "dense", "2": "dense"}
    loose = optimize_for_inference(model, x, min_saving=None).inhernet_optimized
    assert {d.became for d in loose.layers if d.kind == "InherLinear"} == {"folded pair"}
    _assert_same(optimize_for_inference(model, x, min_saving=0.5), model, x)
    # a gated layer that keeps too much cannot become dense exactly: it stays, and the report says so
    gated = _randomise(inhernet.inherit(teacher, rank=10, heads=3, min_saving=None, dense_at_full_rank=False,
                                        progress=False))
    layers = optimize_for_inference(gated, x).inhernet_optimized.layers
    big = next(d for d in layers if d.name == "2")
    assert big.became.startswith("gated") and "cannot become one dense layer" in big.note
    with pytest.raises(ConfigError, match="min_saving"):
        optimize_for_inference(model, x, min_saving=1.0)


def test_a_dense_linear_is_relaid_only_when_faster_and_never_a_tied_one(monkeypatch):
    monkeypatch.setattr(optimize.build, "time_candidates", _prefer("dense (in×out)"))
    model = nn.Sequential(nn.Linear(16, 24), nn.ReLU(), nn.Linear(24, 16), nn.ReLU(), nn.Linear(16, 24))
    model[4].weight = model[0].weight  # tied: stays an nn.Linear
    opt = optimize_for_inference(model, torch.randn(3, 16), fuse_shared_inputs=False)
    assert isinstance(opt[2], InOutLinear) and type(opt[0]) is nn.Linear and opt[0].weight is opt[4].weight
    assert opt[2].weight.shape == (16, 24)  # the (out, in) view for code that reads it
    _assert_same(opt, model, torch.randn(5, 16))
    monkeypatch.setattr(optimize.build, "time_candidates", _prefer("dense"))
    assert type(optimize_for_inference(model, torch.randn(3, 16))[2]) is nn.Linear


def _qkv_model(heads=2, diversify=True):
    """Three projections reading one input (like q/k/v), the first gated, one dense (kept so by
    ``target_modules``), then one more layer."""

    class QKV(nn.Module):
        def __init__(self):
            super().__init__()
            self.q, self.k, self.v, self.o = nn.Linear(32, 48), nn.Linear(32, 16), nn.Linear(32, 48), nn.Linear(48, 8)

        def forward(self, x):
            return self.o(torch.tanh(self.q(x)) * self.v(x)) + self.k(x)[..., :8]

    model = inhernet.inherit(QKV(), rank=6, heads=heads, target_modules=["q", "v", "o"], min_saving=None,
                             progress=False)
    return _randomise(model) if diversify else model


@pytest.mark.parametrize("winner", ["fused", "fused (in×out)"])
@pytest.mark.parametrize("kernel", ["gated shared-weight", "gated per-token (in×out)", "folded pair"])
def test_projections_sharing_an_input_fuse_when_faster(monkeypatch, winner, kernel):
    def fake(candidates, x, **kw):
        prefer = winner if "separate" in candidates else kernel
        return {k: (1.0 if k == prefer else 2.0) for k in candidates}
    monkeypatch.setattr(optimize.build, "time_candidates", fake)
    model = _qkv_model(diversify=kernel != "folded pair")
    opt = optimize_for_inference(model, torch.randn(2, 5, 32))
    report = opt.inhernet_optimized
    assert [(g.names, g.fused, g.chosen) for g in report.shared_inputs] == [(["q", "k", "v"], True, winner)]
    assert all(isinstance(getattr(opt, n), SharedInputProjection) for n in "qkv") and opt.q.shared is opt.k.shared
    assert opt.k.weight.shape == (16, 32)  # a dense member's rows of the shared weight
    assert "fused with k, v" in next(d.note for d in report.layers if d.name == "q")
    assert "1 fused" in report.summary()
    for shape in [(3, 4, 32), (1, 1, 32), (7, 32)]:
        _assert_same(opt, model, torch.randn(*shape))


def test_projections_sharing_an_input_stay_separate_when_not_faster(monkeypatch):
    def fake(candidates, x, **kw):
        return {k: (1.0 if k in ("separate", "gated shared-weight") else 2.0) for k in candidates}
    monkeypatch.setattr(optimize.build, "time_candidates", fake)
    model = _qkv_model()
    opt = optimize_for_inference(model, torch.randn(2, 5, 32))
    group = opt.inhernet_optimized.shared_inputs[0]
    assert not group.fused and group.chosen is None and set(group.times_ms) == {"separate", "fused", "fused (in×out)"}
    assert not any(isinstance(m, SharedInputProjection) for m in opt.modules())
    assert "fusing was not faster" in next(d.note for d in opt.inhernet_optimized.layers if d.name == "k")
    # and without fusion asked for, the groups are not even timed
    assert optimize_for_inference(model, torch.randn(2, 5, 32), fuse_shared_inputs=False).inhernet_optimized.shared_inputs == []


def test_shared_input_product_recomputes_for_every_new_input():
    w = [torch.randn(4, 6), torch.randn(3, 6)]
    b = [torch.randn(4), None]
    for layout in ("out×in", "in×out"):
        shared = SharedInputProduct(w, b, layout)
        first, second = SharedInputProjection(shared, 0, None), SharedInputProjection(shared, 1, None)

        def expect(x):
            return x @ w[0].T + b[0], x @ w[1].T

        x = torch.randn(2, 6)
        torch.testing.assert_close((first(x), second(x)), expect(x))
        assert shared._kept is None  # dropped once every member has read it
        y = torch.randn(2, 6)
        first(x)
        torch.testing.assert_close(first(y), expect(y)[0])  # another input: recomputed
        torch.testing.assert_close(second(x), expect(x)[1])  # the first input again: recomputed
        first(x)
        x.mul_(2)  # the same tensor object changed in place: its version changed
        torch.testing.assert_close(second(x), expect(x)[1])
        first(x)
        torch.testing.assert_close(first(x), expect(x)[0])  # a member asking twice: a new call
        with torch.inference_mode():
            z = torch.randn(2, 6)
            torch.testing.assert_close((first(z), second(z)), expect(z))


def _tiny_llama(**inherit):
    tf = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = tf.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    teacher = tf.LlamaForCausalLM(cfg).eval()
    return teacher, inhernet.inherit(teacher, rank=6, heads=2, min_saving=None, progress=False, **inherit).eval()


@pytest.mark.parametrize("kernel", ["gated shared-weight (in×out)", "gated per-token"])
def test_optimised_tiny_llama_generates_what_the_original_does(monkeypatch, kernel):
    def fake(candidates, x, **kw):
        prefer = "fused (in×out)" if "separate" in candidates else kernel
        return {k: (1.0 if k == prefer else 2.0) for k in candidates}
    monkeypatch.setattr(optimize.build, "time_candidates", fake)
    _, model = _tiny_llama()
    model = optimize.as_trained(model)  # heads differ and the gate reads its input: the gate runs
    ids = torch.randint(0, 64, (1, 9), generator=torch.Generator().manual_seed(1))
    opt = optimize_for_inference(model, {"input_ids": ids[:, :1]})
    report = opt.inhernet_optimized
    assert {d.chosen for d in report.layers if d.kind == "InherLinear"} == {kernel}
    assert sorted(len(g.names) for g in report.shared_inputs if g.fused) == [2, 2, 3, 3]  # q/k/v, gate/up per block
    with torch.no_grad():
        torch.testing.assert_close(opt(input_ids=ids).logits, model(input_ids=ids).logits, rtol=RTOL, atol=ATOL)
        out = opt.generate(ids, do_sample=False, max_new_tokens=8)
        assert torch.equal(out, model.generate(ids, do_sample=False, max_new_tokens=8))


def test_an_untrained_tiny_llama_folds_every_layer():
    teacher, model = _tiny_llama()  # head_init="perturbed": a zero gate, a constant (copies: identical heads)
    ids = torch.randint(0, 64, (1, 6))
    opt = optimize_for_inference(model, {"input_ids": ids}, rounds=1)
    assert set(opt.inhernet_optimized.counts()) <= {"folded pair", "dense"}
    assert not any(isinstance(m, (inhernet.InherLinear, GatedLinear)) for m in opt.modules())
    with torch.no_grad():
        torch.testing.assert_close(opt(input_ids=ids).logits, model(input_ids=ids).logits, rtol=RTOL, atol=ATOL)


def test_time_candidates_clocks_and_statistics():
    fns = {"a": lambda x: None}
    for clock in optimize.CLOCKS:
        for statistic in ("median", "min"):
            assert set(optimize.time_candidates(fns, None, rounds=2, clock=clock, statistic=statistic)) == {"a"}
    with pytest.raises(ConfigError, match="clock"):
        optimize.time_candidates(fns, None, clock="tsc")
    with pytest.raises(ConfigError, match="statistic"):
        optimize.time_candidates(fns, None, statistic="mean")
    assert optimize.default_clock("cpu") in ("cpu", "wall") and optimize.default_clock("meta") == "wall"


@pytest.mark.parametrize("plain_faster", [True, False])
def test_the_whole_model_check_keeps_the_faster_variant(monkeypatch, plain_faster):
    def fake(candidates, x, **kw):
        if optimize.PER_LAYER in candidates:  # the whole-model check
            return {optimize.PER_LAYER: 2.0 if plain_faster else 1.0, optimize.PLAIN: 1.0 if plain_faster else 2.0}
        prefer = "fused (in×out)" if "separate" in candidates else "gated shared-weight (in×out)"
        return {k: (1.0 if k == prefer else 2.0) for k in candidates}
    monkeypatch.setattr(optimize.build, "time_candidates", fake)
    model = _qkv_model()
    opt = optimize_for_inference(model, torch.randn(2, 5, 32))
    report = opt.inhernet_optimized
    assert set(report.variant_times_ms) == {optimize.PER_LAYER, optimize.PLAIN}
    assert report.variant == (optimize.PLAIN if plain_faster else optimize.PER_LAYER)
    assert f"kept: {report.variant}" in report.summary()
    fused = any(isinstance(m, SharedInputProjection) for m in opt.modules())
    relaid = any(getattr(m, "layout", None) == "in×out" for m in opt.modules())
    assert fused == relaid == (not plain_faster)
    _assert_same(opt, model, torch.randn(3, 32))
    # nothing to compare without new forms, or when asked not to
    off = optimize_for_inference(model, torch.randn(2, 5, 32), check_speed=False).inhernet_optimized
    assert off.variant_times_ms == {} and off.variant == optimize.PER_LAYER
