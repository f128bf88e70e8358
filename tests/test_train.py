"""Training: loader determinism, the Lightning module, resume == uninterrupted, 2-process DDP, model files."""

import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn

pytest.importorskip("lightning")

from inhernet.train import (  # noqa: E402
    ArchitectureMismatchError,
    TensorLoader,
    fit,
    load_model,
    read_metrics,
    save_model,
    scaled_milestones,
)

from toy import toy_data, toy_net  # noqa: E402

SRC = str(Path(__file__).resolve().parents[1] / "src")


_data, _net = toy_data, toy_net


def test_scaled_milestones():
    assert scaled_milestones(240) == [150, 180, 210]
    assert scaled_milestones(24) == [15, 18, 21]
    assert scaled_milestones(10) == [6, 8, 9]
    assert scaled_milestones(1) == []


def test_loader_is_epoch_seeded_and_sharded():
    d = _data(n_train=50).train
    a = TensorLoader(d, 8, shuffle=True, seed=3)
    b = TensorLoader(d, 8, shuffle=True, seed=3)
    ya = torch.cat([y for _, y in a])
    assert torch.equal(ya, torch.cat([y for _, y in b]))
    a.set_epoch(1)
    assert not torch.equal(a._indices(), b._indices())
    b.set_epoch(1)
    assert torch.equal(a._indices(), b._indices())
    # two ranks: disjoint, equal-sized training shards
    r0 = TensorLoader(d, 8, shuffle=True, seed=3, rank=0, world_size=2)
    r1 = TensorLoader(d, 8, shuffle=True, seed=3, rank=1, world_size=2)
    i0, i1 = set(r0._indices().tolist()), set(r1._indices().tolist())
    assert len(i0) == len(i1) == 25 and not i0 & i1 and len(r0) == len(r1)
    # evaluation shards cover every sample exactly once
    e = [TensorLoader(d, 7, rank=r, world_size=3)._indices() for r in range(3)]
    assert sorted(torch.cat(e).tolist()) == list(range(50))
    # augmentation is reproducible from (seed, epoch)
    aug = TensorLoader(d, 50, shuffle=True, seed=1, augment="crop_flip")
    x1 = next(iter(aug))[0]
    x2 = next(iter(TensorLoader(d, 50, shuffle=True, seed=1, augment="crop_flip")))[0]
    assert torch.equal(x1, x2) and x1.shape == d.x.shape


class _Kill(Exception):
    pass


class _KillAtEpoch(__import__("lightning").pytorch.callbacks.Callback):
    def __init__(self, epoch):
        self.epoch = epoch

    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch == self.epoch:
            raise _Kill(f"killed at the start of epoch {self.epoch}")


def test_resume_matches_uninterrupted(tmp_path):
    data = _data()
    kw = dict(epochs=3, batch_size=16, milestones=[1, 2], seed=5, progress=False)
    straight = fit(_net(), data, out_dir=tmp_path / "a", **kw)
    with pytest.raises(_Kill):
        fit(_net(), data, out_dir=tmp_path / "b", callbacks=[_KillAtEpoch(1)], **kw)
    assert (tmp_path / "b" / "checkpoints" / "last.ckpt").is_file()
    assert [r["epoch"] for r in read_metrics(tmp_path / "b")] == [0]
    resumed = fit(_net(), data, out_dir=tmp_path / "b", **kw)
    assert resumed.resumed_from_epoch == 1
    sa, sb = straight.model.state_dict(), resumed.model.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        torch.testing.assert_close(sa[k], sb[k], rtol=0, atol=1e-6, msg=k)
    drop = lambda r: {k: v for k, v in r.items() if k != "epoch_time_s"}  # noqa: E731
    assert [drop(r) for r in straight.metrics] == [drop(r) for r in resumed.metrics]
    assert [r["lr"] for r in straight.metrics] == pytest.approx([0.05, 0.005, 0.0005])
    assert {"train/loss", "train/acc", "val/acc", "test/acc"} <= set(straight.metrics[-1])
    # the logged test accuracy of the last epoch is the accuracy of the final weights
    m = straight.model.eval()
    with torch.no_grad():
        acc = (m(data.test.x).argmax(1) == data.test.y).float().mean().item()
    assert straight.final["test/acc"] == pytest.approx(acc, abs=1e-6)
    # a finished run "resumes" to the same weights without training
    again = fit(_net(), data, out_dir=tmp_path / "a", **kw)
    for k in sa:
        torch.testing.assert_close(again.model.state_dict()[k], sa[k], rtol=0, atol=0)
    # resume=False starts over (and gives the same result again: the seed fixes everything)
    fresh = fit(_net(), data, out_dir=tmp_path / "a", resume=False, **kw)
    assert fresh.resumed_from_epoch is None
    for k in sa:
        torch.testing.assert_close(fresh.model.state_dict()[k], sa[k], rtol=0, atol=1e-6)


def test_distillation_keeps_teacher_frozen_and_out_of_checkpoint(tmp_path):
    data = _data()
    teacher = _net(seed=7)  # in train mode, every parameter trainable: left exactly so
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    res = fit(_net(), data, out_dir=tmp_path, teacher=teacher, loss={"kind": "dkd", "temperature": 2.0}, epochs=1,
              batch_size=16, progress=False)
    assert math.isfinite(res.final["train/loss"])
    for k, v in teacher.state_dict().items():
        assert torch.equal(v, before[k]), k  # BN running stats too: the teacher ran in eval mode
    # the caller's teacher object is not changed: its mode and its requires_grad flags are as given
    assert teacher.training and all(m.training for m in teacher.modules())
    assert all(p.requires_grad and p.grad is None for p in teacher.parameters())
    ck = torch.load(tmp_path / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert all(k.startswith("model.") for k in ck["state_dict"])
    assert len(ck["state_dict"]) == len(res.model.state_dict())
    assert ck["hyper_parameters"]["loss"]["kind"] == "dkd"
    with pytest.raises(ValueError, match="no teacher"):
        fit(_net(), data, out_dir=tmp_path / "x", loss="kd", epochs=1, progress=False)


DDP_SCRIPT = textwrap.dedent(
    """
    import json, math, os, sys
    sys.path.insert(0, {src!r})
    import torch
    from torch import nn
    from types import SimpleNamespace
    from inhernet.train import fit, global_rank

    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    def split(n):
        x = torch.randn(n, 1, 8, 8, generator=g)
        return SimpleNamespace(x=x, y=(x.mean((1, 2, 3)) > 0).long())
    data = SimpleNamespace(train=split(64), val=split(20), test=split(21), num_classes=2)
    torch.manual_seed(1)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
    n_before = sum(p.numel() for p in model.parameters())
    res = fit(model, data, out_dir={out!r}, epochs=1, batch_size=8, strategy="ddp", devices=2,
              accelerator="cpu", progress=False)
    n_after = sum(p.numel() for p in res.model.parameters())
    with torch.no_grad():
        acc = (res.model.eval()(data.test.x).argmax(1) == data.test.y).float().mean().item()
    row = dict(rank=global_rank(), world=res.extra["world_size"], zero=res.extra["is_global_zero"],
               n_before=n_before, n_after=n_after, metrics=res.metrics, acc=acc)
    with open(os.path.join({out!r}, "rank%d.json" % global_rank()), "w") as f:
        json.dump(row, f)
    """
)


def test_ddp_two_processes_on_cpu(tmp_path):
    """strategy="ddp", devices=2 on CPU (gloo): Lightning re-launches the script as a second process."""
    out = tmp_path / "run"
    out.mkdir()
    script = tmp_path / "ddp_fit.py"
    script.write_text(DDP_SCRIPT.format(src=SRC, out=str(out)))
    env = {k: v for k, v in os.environ.items() if k not in ("LOCAL_RANK", "RANK", "WORLD_SIZE", "NODE_RANK",
                                                           "MASTER_ADDR", "MASTER_PORT")}
    env["PYTHONWARNINGS"] = "ignore"
    proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = {int(p.stem[4:]): json.loads(p.read_text()) for p in out.glob("rank*.json")}
    assert len(rows) == 2, proc.stderr[-2000:]
    r0 = rows[0]
    other = rows[max(rows)]
    assert r0["world"] == other["world"] == 2 and r0["zero"] and not other["zero"]
    assert r0["n_before"] == r0["n_after"] == other["n_after"]
    # one checkpoint, written once; one metrics row, written once (rank zero), finite loss
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["last.ckpt"]
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 1
    m = json.loads(lines[0])
    assert math.isfinite(m["train/loss"])
    # the logged test accuracy is reduced over both processes' shards: it equals the accuracy of the
    # (DDP-synchronised) final weights on the whole test set
    assert m["test/acc"] == pytest.approx(r0["acc"], abs=1e-6)
    assert r0["acc"] == pytest.approx(other["acc"], abs=1e-6)


def test_save_and_load_models(tmp_path):
    import inhernet
    from inhernet.models import create_model

    t = create_model("resnet8", num_classes=4, in_channels=1)
    save_model(t, tmp_path / "t", arch="resnet8", num_classes=4, in_channels=1)
    m, info = load_model(tmp_path / "t", expect_arch="resnet8")
    assert info["kind"] == "dense" and not info["inherited"] and info["params"] == inhernet.count_parameters(t)
    x = torch.randn(2, 1, 28, 28)
    torch.testing.assert_close(m(x), t.eval()(x))
    with pytest.raises(ArchitectureMismatchError, match="resnet14"):
        load_model(tmp_path / "t", expect_arch="resnet14")
    # a bare state dict of another architecture: the message names the problem
    torch.save(t.state_dict(), tmp_path / "w.pt")
    with pytest.raises(ArchitectureMismatchError, match="do not fit architecture 'resnet14'"):
        load_model(tmp_path / "w.pt", arch="resnet14", num_classes=4, in_channels=1)
    inh = inhernet.inherit(t, inhernet.InheritConfig(rank=2, heads=2))
    save_model(inh, tmp_path / "i", arch="resnet8", num_classes=4, in_channels=1)
    m2, info2 = load_model(tmp_path / "i")
    assert info2["inherited"] and info2["params"] == inhernet.count_parameters(inh)
    torch.testing.assert_close(m2(x), inh.eval()(x))


def _is_corrupt_not_mismatch(info) -> str:
    """The error a damaged file raised: a CorruptCheckpointError saying so and how to fix it, never an
    ArchitectureMismatchError."""
    from inhernet.errors import CorruptCheckpointError

    err = info.value
    assert isinstance(err, CorruptCheckpointError) and not isinstance(err, ArchitectureMismatchError), repr(err)
    msg = str(err)
    assert "damaged" in msg and "again" in msg, msg
    return msg


def test_a_damaged_model_file_is_corrupt_not_an_architecture_mismatch(tmp_path):
    from inhernet.errors import CorruptCheckpointError, InherNetLoadError
    from inhernet.models import create_model
    from inhernet.train.store import model_info

    t = create_model("resnet8", num_classes=4, in_channels=1)
    save_model(t, tmp_path / "t", arch="resnet8", num_classes=4, in_channels=1)
    weights = tmp_path / "t" / "model.safetensors"
    good = weights.read_bytes()
    # a truncated weights file (an interrupted copy), an empty one, garbage bytes
    for damaged in (good[: len(good) // 2], b"", b"not a safetensors file at all" * 10):
        weights.write_bytes(damaged)
        with pytest.raises(CorruptCheckpointError) as info:
            load_model(tmp_path / "t", expect_arch="resnet8")
        assert str(weights) in _is_corrupt_not_mismatch(info)
    weights.unlink()  # an incomplete folder
    with pytest.raises(CorruptCheckpointError) as info:
        load_model(tmp_path / "t")
    _is_corrupt_not_mismatch(info)
    weights.write_bytes(good)
    # model_config.json that is not JSON, or JSON of the wrong shape
    cfg = tmp_path / "t" / "model_config.json"
    good_cfg = cfg.read_text()
    for text in ('{"format": "inhernet-dense", "arch": "resn', "\xff\xfe garbage", "[1, 2]",
                 '{"arch": 7, "num_classes": 4, "in_channels": 1}'):
        cfg.write_text(text)
        for call in (model_info, load_model):
            with pytest.raises(CorruptCheckpointError) as info:
                call(tmp_path / "t")
            assert str(cfg) in _is_corrupt_not_mismatch(info)
    cfg.write_text(good_cfg)
    load_model(tmp_path / "t", expect_arch="resnet8")  # intact again: loads
    # torch files that cannot be unpickled: a truncated state dict, a truncated training checkpoint
    torch.save(t.state_dict(), tmp_path / "w.pt")
    raw = (tmp_path / "w.pt").read_bytes()
    (tmp_path / "w.pt").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(CorruptCheckpointError) as info:
        load_model(tmp_path / "w.pt", arch="resnet8", num_classes=4, in_channels=1)
    _is_corrupt_not_mismatch(info)
    (tmp_path / "c.ckpt").write_bytes(b"\x80\x04 garbage")
    with pytest.raises(CorruptCheckpointError) as info:
        load_model(tmp_path / "c.ckpt")
    _is_corrupt_not_mismatch(info)
    torch.save({"epoch": 3}, tmp_path / "noweights.ckpt")  # readable, but no state_dict in it
    with pytest.raises(CorruptCheckpointError) as info:
        load_model(tmp_path / "noweights.ckpt")
    _is_corrupt_not_mismatch(info)
    # a truncated bare .safetensors
    from safetensors.torch import save_file

    save_file(t.state_dict(), str(tmp_path / "w.safetensors"))
    raw = (tmp_path / "w.safetensors").read_bytes()
    (tmp_path / "w.safetensors").write_bytes(raw[:100])
    with pytest.raises(CorruptCheckpointError) as info:
        load_model(tmp_path / "w.safetensors", arch="resnet8", num_classes=4, in_channels=1)
    _is_corrupt_not_mismatch(info)
    # an inherited model with truncated weights: inhernet.load's error passes through, never a mismatch
    import inhernet

    save_model(inhernet.inherit(t, inhernet.InheritConfig(rank=2, heads=2)), tmp_path / "i", arch="resnet8",
               num_classes=4, in_channels=1)
    iw = tmp_path / "i" / "model.safetensors"
    iw.write_bytes(iw.read_bytes()[:64])
    with pytest.raises(InherNetLoadError) as info:
        load_model(tmp_path / "i")
    assert not isinstance(info.value, ArchitectureMismatchError), repr(info.value)


def test_intact_files_of_another_architecture_are_a_mismatch_not_corrupt(tmp_path):
    from inhernet.errors import CorruptCheckpointError
    from inhernet.models import create_model

    t = create_model("resnet8", num_classes=4, in_channels=1)
    save_model(t, tmp_path / "t", arch="resnet8", num_classes=4, in_channels=1)
    # a readable dense folder whose weights do not fit what its config records (other num_classes)
    other = create_model("resnet8", num_classes=7, in_channels=1)
    from safetensors.torch import save_model as st_save

    st_save(other, str(tmp_path / "t" / "model.safetensors"))
    with pytest.raises(ArchitectureMismatchError, match="do not fit architecture 'resnet8'") as info:
        load_model(tmp_path / "t")
    assert not isinstance(info.value, CorruptCheckpointError)
    assert "shape mismatch" in str(info.value) and "fc.weight" in str(info.value)
    # a readable state dict with other keys
    torch.save({"encoder.weight": torch.zeros(3)}, tmp_path / "w.pt")
    with pytest.raises(ArchitectureMismatchError, match="missing key.*unexpected key.*encoder.weight") as info:
        load_model(tmp_path / "w.pt", arch="resnet8", num_classes=4, in_channels=1)
    assert not isinstance(info.value, CorruptCheckpointError)


def test_state_dict_problems_names_each_misfit():
    from inhernet.utils import state_dict_problems

    net = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 3))
    state = net.state_dict()
    assert state_dict_problems(net, state) == []
    bad = {**state, "0.weight": torch.zeros(5, 3), "extra": torch.zeros(1), "1.bias": "not a tensor"}
    del bad["1.weight"]
    problems = state_dict_problems(net, bad)
    assert problems == ["2 shape mismatch(es), e.g. 0.weight: (5, 3) vs (4, 3); 1.bias: a str, not a tensor",
                        "1 missing key(s), e.g. 1.weight", "1 unexpected key(s), e.g. extra"]
    # a tied tensor stored once (under either name) is not missing
    tied = nn.Sequential(nn.Linear(3, 3, bias=False), nn.Linear(3, 3, bias=False))
    tied[1].weight = tied[0].weight
    assert state_dict_problems(tied, {"1.weight": torch.zeros(3, 3)}) == []
    assert state_dict_problems(tied, {"1.weight": torch.zeros(3, 3)}, shared={}) == [
        "1 missing key(s), e.g. 0.weight"]


def test_non_finite_loss_stops_the_run_with_step_and_fixes(tmp_path):
    from inhernet.train import TrainingDivergedError

    data = _data()
    with pytest.raises(TrainingDivergedError) as info:
        fit(_net(), data, out_dir=tmp_path / "r", epochs=2, batch_size=16, lr=1e8, progress=False,
            run_name="absurd-lr")
    err = info.value
    msg = str(err)
    assert msg.startswith("run absurd-lr: training diverged at step ")
    assert "lower the learning rate" in msg and "without KD" in msg and "check the teacher" in msg
    assert err.step >= 1 and err.lr == pytest.approx(1e8)
    # no step was taken from the non-finite gradients: the model's weights are all finite
    assert not (tmp_path / "r" / "model").exists()


def test_non_finite_teacher_logits_name_the_teacher(tmp_path):
    from inhernet.train import TrainingDivergedError

    teacher = _net(seed=7)
    with torch.no_grad():
        teacher[5].weight.fill_(float("nan"))
    with pytest.raises(TrainingDivergedError, match="teacher's logits are non-finite"):
        fit(_net(), _data(), out_dir=tmp_path, teacher=teacher, loss="kd", epochs=1, batch_size=16, progress=False)


# --------------------------------------------------------------------------- gate learning rate
def _gated_toy(heads=3):
    """A 1 × 8 × 8, 3-class conv net (toy_data's shape) inherited with H gated heads in every layer."""
    import inhernet

    torch.manual_seed(2)
    teacher = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                            nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                            nn.Linear(16, 3)).eval()
    return inhernet.inherit(teacher, rank=4, heads=heads, head_init="perturbed", min_saving=None, progress=False)


def test_gate_parameter_groups_split_the_gates_and_keep_the_rest():
    from inhernet.diagnostics import gated_layers
    from inhernet.train.groups import gate_parameter_groups

    model = _gated_toy()
    params = list(model.parameters())
    assert gate_parameter_groups(model, [{"params": params}], 0.1, 1.0) == [{"params": params}]
    groups = gate_parameter_groups(model, [{"params": params, "weight_decay": 1e-3}], 0.1, 20.0)
    gates = {id(p) for _, m in gated_layers(model) for p in m.gate.parameters()}
    assert gates and len(groups) == 2 and all(g["weight_decay"] == 1e-3 for g in groups)
    rest, mine = groups
    assert {id(p) for p in mine["params"]} == gates and mine["lr"] == pytest.approx(2.0) and "lr" not in rest
    assert sorted(map(id, rest["params"] + mine["params"])) == sorted(map(id, params))  # every parameter, once


@pytest.mark.parametrize("scale", [1.0, 30.0])
def test_gate_lr_scale_multiplies_the_gate_step_only(scale):
    """One SGD step from the same state: the gates move ``scale`` times as far, the rest the same."""
    from inhernet.diagnostics import gated_layers
    from inhernet.train import DistillModule

    x, y = torch.randn(8, 1, 8, 8), torch.randint(0, 3, (8,))
    moved = {}
    for s in (1.0, scale):
        model = _gated_toy()
        with torch.no_grad():  # heads apart, so the gates get a gradient worth comparing
            for _, m in gated_layers(model):
                m.up.add_(0.3 * torch.randn_like(m.up))
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        module = DistillModule(model, num_classes=3, epochs=2, lr=0.1, momentum=0.0, weight_decay=0.0,
                               gate_lr_scale=s)
        opt = module.configure_optimizers()["optimizer"]
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        moved[s] = {n: (p.detach() - before[n]) for n, p in model.named_parameters()}
    gate_names = [n for n in moved[1.0] if ".gate." in n]
    assert gate_names
    for n, d in moved[1.0].items():
        expect = d * (scale if n in gate_names else 1.0)
        torch.testing.assert_close(moved[scale][n], expect, rtol=1e-4, atol=1e-7)
    assert any(moved[1.0][n].abs().max() > 0 for n in gate_names)


@pytest.mark.parametrize("bad", [0, -1.0, float("nan"), float("inf"), True, "10"])
def test_gate_lr_scale_must_be_a_positive_number(tmp_path, bad):
    from inhernet.config import ConfigError

    with pytest.raises(ConfigError, match="gate_lr_scale"):
        fit(_gated_toy(), _data(), out_dir=tmp_path / "run", epochs=1, gate_lr_scale=bad, progress=False)
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_gate_lr_scale_refuses_a_model_without_gates(tmp_path):
    from inhernet.config import ConfigError

    with pytest.raises(ConfigError, match="no gated inherited layer"):
        fit(_net(), _data(), out_dir=tmp_path / "run", epochs=1, gate_lr_scale=10, progress=False)
    fit(_net(), _data(), out_dir=tmp_path / "ok", epochs=1, gate_lr_scale=1, progress=False)  # 1: allowed, a no-op


def test_progress_log_prints_one_line_per_epoch_and_draws_no_bar(tmp_path, capsys):
    """``progress="log"`` (background runs whose output is a log file): one line per finished epoch with
    the epoch's metrics as metrics.jsonl has them, and no bar (no carriage returns)."""
    res = fit(_net(), _data(), out_dir=tmp_path / "run", epochs=2, batch_size=16, progress="log", run_name="toy/seed0")
    out = capsys.readouterr()
    lines = [ln for ln in out.out.splitlines() if ln.startswith("toy/seed0: epoch")]
    assert [ln.split(",")[0] for ln in lines] == ["toy/seed0: epoch 1/2", "toy/seed0: epoch 2/2"]
    last = res.metrics[-1]
    assert f"train loss {last['train/loss']:.4g}" in lines[-1]
    assert f"val acc {100 * last['val/acc']:.2f} %" in lines[-1]
    assert "\r" not in out.out + out.err


@pytest.mark.parametrize("bad", ["bar", 1, None])
def test_a_bad_progress_setting_fails_before_anything_is_written(tmp_path, bad):
    from inhernet.compare import CompareConfig, CompareConfigError
    from inhernet.config import ConfigError

    with pytest.raises(ConfigError, match=r"progress=.* is not a progress setting; use one of tqdm, rich, log"):
        fit(_net(), _data(), out_dir=tmp_path / "run", epochs=1, progress=bad)
    assert not (tmp_path / "run").exists()
    cfg = {"name": "c", "out_dir": str(tmp_path / "out"), "data": {"name": "digits", "subset": 160},
           "teacher": {"arch": "resnet14", "epochs": 1}, "student": {"arch": "resnet8"}, "schedule": {"epochs": 1},
           "methods": [{"name": "s", "kind": "student"}], "trainer": {"progress": bad}}
    # a wrong type is refused by the config's type check, a wrong word by the progress check
    with pytest.raises(CompareConfigError, match=r"trainer\.progress=.*(is not a progress setting|wrong type)"):
        CompareConfig.from_dict(cfg)
    assert CompareConfig.from_dict({**cfg, "trainer": {"progress": "log"}}).trainer.progress == "log"
