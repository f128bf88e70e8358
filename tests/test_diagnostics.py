"""Head diagnostics: head cosine / spread, gate entropy, gate gradient ratio, the gate monitor, the
training callback (metrics.jsonl, heads.json) and the comparison report's plot and columns."""

import dataclasses
import importlib
import itertools
import json
import math
import statistics
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import inhernet
from inhernet.diagnostics import (
    GateMonitor,
    gate_entropy,
    gate_grad_ratio,
    gate_grad_ratios,
    gated_layers,
    has_gated_layers,
    head_report,
    head_stats,
)

# the paper's identical SVD copies, whatever the library's default head initialisation is
COPIES = {"head_init": "copies"} if "head_init" in {f.name for f in dataclasses.fields(inhernet.InheritConfig)} else {}


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(10, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4))


def _cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))


def _input(kind: str) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    return torch.randn(6, 5, 10, generator=g) if kind == "mlp" else torch.randn(4, 3, 8, 8, generator=g)


def _inherit(kind: str, **kw) -> nn.Module:
    teacher = _mlp() if kind == "mlp" else _cnn()
    return inhernet.inherit(teacher, rank=3, heads=3, min_saving=None, progress=False, **{**COPIES, **kw})


@torch.no_grad()
def _perturb(model: nn.Module, scale: float, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    for _, layer in gated_layers(model):
        layer.up.add_(scale * layer.up.norm() / layer.up[0].numel() ** 0.5
                      * torch.randn(layer.up.shape, generator=g))


def _pairwise(layer) -> list[float]:
    vecs = layer.up.detach().flatten(1)
    if layer.bias is not None:
        vecs = torch.cat([vecs, layer.bias.detach()], 1)
    return [F.cosine_similarity(vecs[a].double(), vecs[b].double(), dim=0).item()
            for a, b in itertools.combinations(range(layer.heads), 2)]


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_heads_are_copies_at_svd_init_and_the_stats_follow_perturbations(kind):
    model = _inherit(kind)
    layers = gated_layers(model)
    assert len(layers) == 2 and has_gated_layers(model)
    for _, layer in layers:
        st = head_stats(layer)
        assert st["heads"] == 3
        assert abs(st["cosine_mean"] - 1) < 1e-6 and abs(st["cosine_max"] - 1) < 1e-6
        assert st["spread"] < 1e-6
    report = head_report(model)
    assert [r.name for r in report.rows] == [n for n, _ in layers]
    assert all(r.gate and r.entropy is None and r.gate_mean is None and r.grad_ratio is None for r in report.rows)
    assert abs(report.summary()["cosine_mean"] - 1) < 1e-6

    _perturb(model, 0.05)
    for _, layer in layers:
        st = head_stats(layer)
        pairs = _pairwise(layer)
        assert st["cosine_mean"] == pytest.approx(sum(pairs) / len(pairs), abs=1e-9)
        assert st["cosine_max"] == pytest.approx(max(pairs), abs=1e-9)
        assert st["cosine_mean"] < 1 - 1e-4
        up = layer.up.detach().double().flatten(1)
        spread = ((up - up.mean(0)).norm(dim=1).mean() / up.mean(0).norm()).item()
        assert st["spread"] == pytest.approx(spread, rel=1e-9) and st["spread"] > 0.01
    s = head_report(model).summary()
    assert s["layers"] == s["gated"] == 2 and s["cosine_mean"] < 1 - 1e-4 and s["cosine_max"] <= 1
    # more perturbation, lower cosine
    _perturb(model, 0.5, seed=1)
    assert head_report(model).summary()["cosine_mean"] < s["cosine_mean"]


def test_the_bias_counts_in_the_cosine_and_one_head_has_no_pairs():
    model = _inherit("mlp")
    _, layer = gated_layers(model)[0]
    assert layer.bias is not None
    with torch.no_grad():
        layer.bias[0] += 10 * layer.bias.abs().max() + 1
    assert head_stats(layer)["cosine_mean"] < 0.999
    assert head_stats(layer)["spread"] < 1e-6  # the spread reads the up-projections only
    one = inhernet.inherit(_mlp(), rank=3, heads=1, min_saving=None, progress=False)
    assert not has_gated_layers(one) and head_report(one).rows == []
    layer1 = next(m for m in one.modules() if isinstance(m, inhernet.InherLinear))
    assert head_stats(layer1) == {"heads": 1, "cosine_mean": None, "cosine_max": None, "spread": None}
    with pytest.raises(TypeError):
        head_stats(nn.Linear(2, 2))
    # gate="none": listed (its heads are copies for good), no gate numbers
    fixed = _inherit("mlp", gate="none")
    rows = head_report(fixed, _input("mlp")).rows
    assert len(rows) == 2 and not any(r.gate for r in rows) and all(r.entropy is None for r in rows)
    assert "no" in str(head_report(fixed))


def test_gate_entropy_function():
    h = 3
    assert gate_entropy(torch.full((4, h), 1 / h)).tolist() == pytest.approx([1.0] * 4)
    assert gate_entropy(torch.eye(h)).tolist() == pytest.approx([0.0] * h, abs=1e-6)
    w = torch.tensor([0.5, 0.25, 0.25])
    assert float(gate_entropy(w)) == pytest.approx(-(w * w.log()).sum().item() / math.log(h))


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_gate_entropy_is_one_for_a_zero_gate_and_below_otherwise(kind):
    model = _inherit(kind)
    x = _input(kind)
    with torch.no_grad():
        for _, layer in gated_layers(model):
            layer.gate.weight.zero_()
            layer.gate.bias.zero_()
    rows = head_report(model, x).rows
    for r in rows:
        assert r.entropy == pytest.approx(1.0, abs=1e-6)
        assert r.gate_mean == pytest.approx([1 / 3] * 3, abs=1e-6)
    with torch.no_grad():
        for _, layer in gated_layers(model):
            layer.gate.weight.normal_(0, 3)
    report = head_report(model, x)
    for r in report.rows:
        assert 0 < r.entropy < 1 - 1e-3 and sum(r.gate_mean) == pytest.approx(1, abs=1e-6)
    assert report.summary()["entropy"] == pytest.approx(sum(r.entropy for r in report.rows) / len(report.rows))
    # the first layer's entropy, computed by hand from its gate weights on its own input
    name, first = gated_layers(model)[0]
    with torch.no_grad():
        z = F.linear(x, first.down) if kind == "mlp" else F.conv2d(x, first.down, None, first.stride, first.padding)
        expect = gate_entropy(first.gate_weights(z)).mean().item()
    assert report.rows[0].name == name and report.rows[0].entropy == pytest.approx(expect, rel=1e-5)
    # a tuple of positional args and a dict of keyword args work as example inputs
    assert head_report(model, (x,)).rows[0].entropy == pytest.approx(expect, rel=1e-5)
    assert head_report(model, {"input": x}).rows[0].entropy == pytest.approx(expect, rel=1e-5)
    text = str(report)
    assert "gate entropy" in text and name in text and "2 multi-head layers (2 gated)" in text
    assert "| layer |" in report.to_markdown()


def _backward(model, kind):
    model.zero_grad()
    model(_input(kind)).pow(2).mean().backward()


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_gate_gradient_ratio_is_zero_for_copies_and_not_once_the_heads_differ(kind):
    model = _inherit(kind)
    with torch.no_grad():  # a gate that is far from uniform: it is the heads, not the gate, that block it
        for _, layer in gated_layers(model):
            layer.gate.weight.normal_(0, 1)
    _backward(model, kind)
    rows = head_report(model).rows
    assert all(r.grad_ratio is not None and r.grad_ratio < 1e-5 for r in rows), [r.grad_ratio for r in rows]
    _perturb(model, 0.2)
    _backward(model, kind)
    report = head_report(model)
    assert all(r.grad_ratio > 1e-3 for r in report.rows), [r.grad_ratio for r in report.rows]
    assert report.summary()["grad_ratio"] == pytest.approx(statistics.median(r.grad_ratio for r in report.rows))
    # the batched, on-device version agrees (float32)
    layers = [m for _, m in gated_layers(model)]
    batched = gate_grad_ratios(layers).tolist()
    assert batched == pytest.approx([gate_grad_ratio(m) for m in layers], rel=1e-4)
    model.zero_grad(set_to_none=True)
    assert all(math.isnan(v) for v in gate_grad_ratios(layers).tolist())
    assert all(r.grad_ratio is None for r in head_report(model).rows)


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_monitor_changes_nothing_and_removes_its_hooks(kind):
    model = _inherit(kind)
    _perturb(model, 0.1)
    x = _input(kind)
    _backward(model, kind)
    ref_out = model(x).detach()
    ref_grads = [p.grad.clone() for p in model.parameters()]
    mon = GateMonitor(model)
    assert set(mon.layers) == {n for n, _ in gated_layers(model)}
    assert mon.entropy() == {n: None for n in mon.layers}
    _backward(model, kind)
    assert torch.equal(model(x).detach(), ref_out)
    assert all(torch.equal(p.grad, g) for p, g in zip(model.parameters(), ref_grads))
    first = mon.entropy()
    assert all(0 < v <= 1 for v in first.values())
    with torch.no_grad():
        model(x)
    assert mon.entropy() == pytest.approx(first, rel=1e-6)  # the same input twice: the same mean
    mon.reset()
    assert all(v is None for v in mon.entropy().values())
    # training_only: eval-mode forwards are not counted
    only = GateMonitor(model, training_only=True)
    with torch.no_grad():
        model.eval()
        model(x)
        assert all(v is None for v in only.entropy().values())
        model.train()
        model(x)
    assert only.entropy() == pytest.approx(first, rel=1e-6)
    only.remove()
    mon.reset()
    mon.remove()
    for _, layer in gated_layers(model):
        assert len(layer.gate._forward_hooks) == 0
    with torch.no_grad():
        model(x)
    assert all(v is None for v in mon.entropy().values())
    with GateMonitor(model) as ctx:
        model(x)
    assert all(v is not None for v in ctx.entropy().values())
    assert all(len(layer.gate._forward_hooks) == 0 for _, layer in gated_layers(model))


def test_layer_report_has_a_head_cosine_column():
    model = _inherit("cnn")
    report = inhernet.layer_report(model)
    assert "head cos" in str(report) and "head cos" in report.to_markdown()
    assert set(report.head_cos) == {n for n, _ in gated_layers(model)}
    assert all(abs(c - 1) < 1e-6 for c in report.head_cos.values())
    _perturb(model, 0.1)
    report = inhernet.layer_report(model)
    for name, layer in gated_layers(model):
        c = head_stats(layer)["cosine_mean"]
        assert report.head_cos[name] == pytest.approx(c) and c < 1 - 1e-4
        line = next(ln for ln in str(report).splitlines() if ln.startswith(name + " "))
        assert f"{c:.6f}" in line
    dense_line = next(ln for ln in str(report).splitlines() if ln.startswith("6 "))  # the classifier
    assert "1.000000" not in dense_line and f"{c:.6f}" not in dense_line


from toy import toy_data  # noqa: E402

# --- training: the callback -----------------------------------------------------------------------

def _data(n_train=64, n_val=16, n_test=16, classes=3, seed=0):
    return toy_data(n_train, n_val, n_test, classes, seed, default_augment=None)


def _tiny_inherited(heads=3):
    torch.manual_seed(1)
    teacher = nn.Sequential(nn.Conv2d(1, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(), nn.Conv2d(6, 6, 3, padding=1),
                            nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 3))
    return inhernet.inherit(teacher, rank=3, heads=heads, min_saving=None, progress=False, **COPIES)


KEYS = ("heads/cosine_mean", "heads/cosine_max", "gate/entropy", "gate/grad_ratio")


def test_fit_logs_head_diagnostics_and_writes_heads_json(tmp_path, monkeypatch):
    pytest.importorskip("lightning")
    from inhernet.train import fit

    data = _data()
    kw = dict(epochs=1, batch_size=16, seed=0, progress=False)
    res = fit(_tiny_inherited(), data, out_dir=tmp_path / "a", **kw)
    row = res.metrics[-1]
    for key in KEYS:
        assert key in row, key
    assert 0.99 < row["heads/cosine_mean"] <= row["heads/cosine_max"] <= 1.0
    assert 0 < row["gate/entropy"] <= 1 and 0 <= row["gate/grad_ratio"] < 1
    saved = json.loads((tmp_path / "a" / "heads.json").read_text())
    assert saved["epoch"] == 0 and saved["summary"]["layers"] == 2
    layers = saved["layers"]
    assert [r["name"] for r in layers] == [n for n, _ in gated_layers(res.model)]
    for r in layers:
        assert r["heads"] == 3 and r["gate"] and 0 < r["entropy"] <= 1 and r["grad_ratio"] is not None
        assert sum(r["gate_mean"]) == pytest.approx(1, abs=1e-5)
    # the logged cosine is that of the final weights
    assert row["heads/cosine_mean"] == pytest.approx(head_report(res.model).summary()["cosine_mean"], abs=1e-6)
    # the epoch's gradient ratio: the median over layers of per-layer means
    ratios = sorted(r["grad_ratio"] for r in layers)
    assert row["gate/grad_ratio"] == pytest.approx(sum(ratios) / 2, rel=1e-5)

    # the callback only measures: the same run without it ends with the same weights
    monkeypatch.setattr(importlib.import_module("inhernet.train.fit"), "has_gated_layers", lambda m: False)
    plain = fit(_tiny_inherited(), data, out_dir=tmp_path / "b", **kw)
    assert not (tmp_path / "b" / "heads.json").exists() and not set(KEYS) & set(plain.metrics[-1])
    for k, v in res.model.state_dict().items():
        assert torch.equal(v, plain.model.state_dict()[k]), k
    assert res.metrics[-1]["train/loss"] == plain.metrics[-1]["train/loss"]
    # after fit, no hook is left on the model
    assert all(len(m.gate._forward_hooks) == 0 for _, m in gated_layers(res.model))


def test_fit_without_gated_layers_logs_no_head_keys(tmp_path):
    pytest.importorskip("lightning")
    from inhernet.train import fit

    res = fit(_tiny_inherited(heads=1), _data(), out_dir=tmp_path, epochs=1, batch_size=16, progress=False)
    assert not set(KEYS) & set(res.metrics[-1]) and not (tmp_path / "heads.json").exists()


# --- the comparison report ------------------------------------------------------------------------

def test_compare_report_plots_heads_and_adds_columns(tmp_path):
    pytest.importorskip("lightning")
    pytest.importorskip("sklearn")  # the digits data set
    from inhernet.compare import CompareConfig, run_compare

    cfg = CompareConfig.from_dict({
        "name": "heads",
        "out_dir": str(tmp_path / "out"),
        "cache_dir": str(tmp_path / "cache"),
        "data": {"name": "digits", "subset": 120, "test_subset": 60, "val_fraction": 0.05, "seed": 0},
        "teacher": {"arch": "resnet8", "epochs": 1},
        "student": {"arch": "resnet8"},
        "schedule": {"epochs": 2, "batch_size": 64, "eval_batch_size": 256},
        "seeds": [0],
        "methods": [
            {"name": "student", "kind": "student"},
            {"name": "inh", "kind": "inhernet", "inherit": {"rank": 2, "heads": 2, "min_saving": None}},
        ],
        "trainer": {"progress": False, "threads": 1},
        "latency": {"enabled": False},
    })
    results = run_compare(cfg, log=lambda m: None)
    out = tmp_path / "out"
    done = json.loads((out / "runs" / "inh" / "seed0" / "done.json").read_text())
    for key in ("heads/cosine_mean", "gate/entropy", "gate/grad_ratio"):
        assert len(done["curve"][key]) == 2 and all(v is not None for v in done["curve"][key])
    student_done = json.loads((out / "runs" / "student" / "seed0" / "done.json").read_text())
    assert "gate/entropy" not in student_done["curve"]
    saved = json.loads((out / "results.json").read_text())
    student, inh = saved["methods"]
    for name in ("curve_head_cosine", "curve_gate_entropy", "curve_gate_grad_ratio"):
        assert len(inh[name]["mean"]) == 2 and name not in student
    assert inh["head_cosine_last"] == pytest.approx(done["final"]["heads/cosine_mean"])
    assert inh["gate_grad_ratio_last"] == pytest.approx(done["final"]["gate/grad_ratio"])
    assert (out / "heads_vs_epoch.png").read_bytes()[:4] == b"\x89PNG"
    md = (out / "results.md").read_text()
    assert "head cos (last)" in md and "gate grad ratio (last)" in md and "heads_vs_epoch.png" in md
    lines = {ln.split("|")[1].strip(): ln for ln in md.splitlines() if ln.startswith("| ")}
    assert lines["student"].rstrip().endswith("| – | – |")
    assert f"{inh['head_cosine_last']:.6f}" in lines["inh"] and f"{inh['gate_grad_ratio_last']:.1e}" in lines["inh"]
    assert results["methods"][1]["head_cosine_last"] == inh["head_cosine_last"]

    # without any gated method: no plot (a stale one is removed), no columns
    from inhernet.compare.report import format_table, write_report

    bare = {**saved, "methods": [student]}
    write_report(bare, out)
    assert not (out / "heads_vs_epoch.png").exists() and "head cos" not in format_table(bare)


def test_callback_can_measure_one_batch_in_n():
    pytest.importorskip("lightning")
    from inhernet.train import HeadDiagnostics

    with pytest.raises(ValueError, match="every_n_steps"):
        HeadDiagnostics(every_n_steps=0)
    model = _inherit("mlp")
    cb = HeadDiagnostics(every_n_steps=2)
    module = SimpleNamespace(model=model)
    cb.on_fit_start(None, module)
    cb.on_train_epoch_start(None, module)
    x = _input("mlp")
    for i in range(4):
        cb.on_train_batch_start(None, module, None, i)
        _backward(model, "mlp")
        cb.on_before_optimizer_step(None, module, None)
    assert cb._ratio_count.tolist() == [2.0, 2.0]  # batches 0 and 2
    mon = GateMonitor(model)  # every forward of the 4, for comparison (the same input each time)
    model(x)
    assert cb.epoch_report(module).summary()["entropy"] == pytest.approx(
        statistics.fmean(mon.entropy().values()), rel=1e-5)
    mon.remove()
    cb.teardown(None, module, "fit")
    assert all(len(m.gate._forward_hooks) == 0 for _, m in gated_layers(model))
