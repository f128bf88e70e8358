"""`inhernet compare` end to end on a tiny digits config: outputs, resume, clear errors that keep results."""

import json
from pathlib import Path

import pytest
import yaml

pytest.importorskip("lightning")
pytest.importorskip("sklearn")  # the digits data set

from inhernet.compare import (  # noqa: E402
    CompareConfig,
    CompareConfigError,
    ConfigKeyError,
    StaleRunError,
    load_config,
    run_compare,
)
from inhernet.train import ArchitectureMismatchError, save_model  # noqa: E402


def tiny_config(tmp: Path, **over) -> dict:
    cfg = {
        "name": "tiny",
        "out_dir": str(tmp / "out"),
        "cache_dir": str(tmp / "cache"),
        "data": {"name": "digits", "subset": 160, "test_subset": 80, "val_fraction": 0.05, "seed": 0},
        "teacher": {"arch": "resnet14", "epochs": 1},
        "student": {"arch": "resnet8"},
        "schedule": {"epochs": 2, "batch_size": 64, "eval_batch_size": 256},
        "seeds": [0],
        "methods": [
            {"name": "student", "kind": "student"},
            {"name": "student_kd", "kind": "student_kd", "loss": {"temperature": 2.0}},
            {"name": "inh", "kind": "inhernet", "kd": True, "inherit": {"budget": "student", "heads": 2}},
        ],
        "trainer": {"progress": False, "threads": 1},
        "latency": {"rounds": 1, "iters": 2},
    }
    for k, v in over.items():
        cfg[k] = v
    return cfg


def write_cfg(tmp: Path, cfg: dict, name: str = "cfg.yaml") -> Path:
    p = tmp / name
    p.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return p


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("compare")
    path = write_cfg(tmp, tiny_config(tmp))
    logs: list[str] = []
    results = run_compare(load_config(path), log=logs.append)
    return tmp, path, results, logs


def _snapshot(out: Path) -> dict:
    return {str(p.relative_to(out)): p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}


def test_outputs(finished):
    tmp, _, results, logs = finished
    out = tmp / "out"
    for name in ("results.json", "results.md", "acc_vs_epoch.png", "acc_vs_params.png", "config.yaml", "teacher.json"):
        assert (out / name).is_file(), name
    saved = json.loads((out / "results.json").read_text())
    names = [m["name"] for m in saved["methods"]]
    assert names == ["student", "student_kd", "inh"]
    for m in saved["methods"]:
        assert m["complete"] and m["seeds"] == [0]
        assert 0.0 <= m["test_acc_mean"] <= 1.0 and m["test_acc_std"] == 0.0
        assert m["params"] > 0 and m["flops"] > 0 and m["latency_ms"] > 0
        assert len(m["curve_test_acc"]["mean"]) == 2
    inh = saved["methods"][2]
    assert inh["params"] <= saved["student_params"]  # budget: student
    assert saved["teacher"]["params"] > saved["student_params"]
    table = (out / "results.md").read_text()
    assert "| method |" in table and "inh" in table and "(n = 1)" in table and "± 0.00" not in table
    assert (out / "acc_vs_epoch.png").read_bytes()[:4] == b"\x89PNG"
    # per run: metrics, checkpoint, final model, done marker
    run = out / "runs" / "inh" / "seed0"
    for name in ("metrics.jsonl", "checkpoints/last.ckpt", "model/model.safetensors", "done.json", "run.json"):
        assert (run / name).is_file(), name
    assert any("training" in line for line in logs)
    # the teacher is cached by its config hash
    assert len(list((tmp / "cache" / "teachers").glob("resnet14-*/model"))) == 1


def test_rerun_skips_finished_and_resumes_interrupted(finished):
    tmp, path, results, _ = finished
    out = tmp / "out"
    # simulate an interrupted run: its checkpoint is there, its done marker is not
    done = out / "runs" / "student_kd" / "seed0" / "done.json"
    old = json.loads(done.read_text())
    done.unlink()
    before = (out / "runs" / "student" / "seed0" / "done.json").stat().st_mtime_ns
    logs: list[str] = []
    again = run_compare(load_config(path), log=logs.append)
    text = "\n".join(logs)
    assert "reusing resnet14" in text
    assert "student seed 0: done, skipped" in text and "inh seed 0: done, skipped" in text
    assert "student_kd seed 0: resuming" in text
    assert (out / "runs" / "student" / "seed0" / "done.json").stat().st_mtime_ns == before
    new = json.loads(done.read_text())
    assert new["final"] == old["final"]  # resumed at the end: same last-epoch metrics
    assert [m["test_acc_mean"] for m in again["methods"]] == [m["test_acc_mean"] for m in results["methods"]]


def test_bad_key_is_clear_and_harmless(finished):
    tmp, _, _, _ = finished
    out = tmp / "out"
    snap = _snapshot(out)
    cfg = tiny_config(tmp)
    cfg["schedule"] = {"epoch": 2, "batch_size": 64}
    with pytest.raises(ConfigKeyError) as err:
        load_config(write_cfg(tmp, cfg, "bad.yaml"))
    msg = str(err.value)
    assert "'epoch'" in msg and "did you mean 'epochs'" in msg and "Valid keys" in msg and "batch_size" in msg
    cfg = tiny_config(tmp)
    cfg["methods"][2]["inherit"] = {"rnak": 4}
    with pytest.raises(ConfigKeyError, match="did you mean 'rank'"):
        load_config(write_cfg(tmp, cfg, "bad2.yaml"))
    with pytest.raises(ConfigKeyError, match="did you mean 'teacher'"):
        CompareConfig.from_dict({**tiny_config(tmp), "teachr": {}})
    with pytest.raises(CompareConfigError, match="did you mean 'student_dkd'"):
        CompareConfig.from_dict({**tiny_config(tmp), "methods": [{"name": "a", "kind": "student_dk"}]})
    assert _snapshot(out) == snap


def test_wrong_architecture_teacher_is_clear_and_harmless(finished):
    tmp, _, _, _ = finished
    out = tmp / "out"
    snap = _snapshot(out)
    from inhernet.models import create_model

    wrong = create_model("resnet8", num_classes=10, in_channels=1)
    save_model(wrong, tmp / "wrong_teacher", arch="resnet8", num_classes=10, in_channels=1)
    cfg = tiny_config(tmp, teacher={"arch": "resnet14", "path": str(tmp / "wrong_teacher")})
    with pytest.raises(ArchitectureMismatchError, match="'resnet8'.*'resnet14'"):
        run_compare(load_config(write_cfg(tmp, cfg, "wrong.yaml")), log=lambda s: None)
    # a bare state dict of the wrong architecture: the mismatch is named too
    import torch

    torch.save(wrong.state_dict(), tmp / "wrong.pt")
    cfg = tiny_config(tmp, teacher={"arch": "resnet14", "path": str(tmp / "wrong.pt")})
    with pytest.raises(ArchitectureMismatchError, match="do not fit architecture 'resnet14'"):
        run_compare(load_config(write_cfg(tmp, cfg, "wrong2.yaml")), log=lambda s: None)
    assert _snapshot(out) == snap


def test_changed_config_does_not_overwrite(finished):
    tmp, _, _, _ = finished
    out = tmp / "out"
    snap = _snapshot(out)
    cfg = tiny_config(tmp, schedule={"epochs": 3, "batch_size": 64})
    with pytest.raises(StaleRunError, match="--force"):
        run_compare(load_config(write_cfg(tmp, cfg, "changed.yaml")), log=lambda s: None)
    assert _snapshot(out) == snap


def test_cli_compare_and_report_on_finished_runs(finished, capsys):
    from inhernet.cli import main

    tmp, path, results, _ = finished
    out = tmp / "out"
    assert main(["compare", str(path), "--resume"]) == 0
    printed = capsys.readouterr().out
    assert "done, skipped" in printed and "| method |" in printed
    before = json.loads((out / "results.json").read_text())
    assert main(["report", str(out), "--no-latency"]) == 0
    assert "| method |" in capsys.readouterr().out
    after = json.loads((out / "results.json").read_text())
    assert [m["test_acc_mean"] for m in after["methods"]] == [m["test_acc_mean"] for m in before["methods"]]
    assert [m["latency_ms"] for m in after["methods"]] == [m["latency_ms"] for m in before["methods"]]
    assert main(["report", str(tmp / "nowhere")]) == 2


def test_report_says_whether_its_latencies_are_earlier_ones_or_none(finished):
    """A table rebuilt without measuring says its latencies are earlier ones only when there are
    some; with none (a partial comparison rebuilt with --no-latency) it says none were measured."""
    import copy

    from inhernet.compare.report import format_table

    results = copy.deepcopy(finished[2])
    results["latency"]["measured"] = False
    assert "(from an earlier measurement)" in format_table(results)
    for m in results["methods"]:
        m["latency_ms"] = None
    table = format_table(results)
    assert "earlier measurement" not in table and "none was measured before" in table


def test_report_gives_the_summed_training_time_not_just_the_last_invocations(finished):
    """A resumed comparison's table is written by whichever process finishes last, often one that only
    read finished records: its own wall time (seconds) is not the comparison's cost. The table sums
    every finished run's training time and gives the invocation's own wall time beside it."""
    import copy

    from inhernet.compare.report import format_table, time_note

    results = copy.deepcopy(finished[2])
    runs = [(m["train_time_s_mean"], len(m["seeds"])) for m in results["methods"] if m.get("train_time_s_mean")]
    total = sum(t * n for t, n in runs)
    assert runs and total > 0
    results["wall_time_s"] = 0.0
    note = time_note(results)
    assert note.startswith(f"Training time: {total / 60:.1f} min summed over the {sum(n for _, n in runs)} finished")
    assert note.endswith("; wall time of the invocation that wrote this table: 0.0 min.") and note in format_table(results)
    results["wall_time_s"] = None
    assert time_note(results) == f"Training time: {total / 60:.1f} min summed over the {sum(n for _, n in runs)} finished run(s)."
    for m in results["methods"]:
        m.pop("train_time_s_mean", None)
    assert time_note(results) is None and "Training time" not in format_table(results)


def test_a_report_rebuilt_with_latency_disabled_drops_earlier_latencies(finished, tmp_path):
    """``latency: {enabled: false}`` in a comparison's config: a rebuilt table has no latency figures,
    not even an earlier measurement's (timed under other conditions, they would be compared with none)."""
    import shutil

    import yaml

    from inhernet.compare import rebuild_report

    src, _, results, _ = finished
    assert any(m.get("latency_ms") is not None for m in results["methods"])  # the finished run measured some
    out = tmp_path / "out"
    shutil.copytree(src / "out", out)
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    cfg["latency"] = {**cfg.get("latency", {}), "enabled": False}
    (out / "config.yaml").write_text(yaml.safe_dump(cfg))
    rebuilt = rebuild_report(out, latency=False, log=lambda m: None)
    assert all(e.get("latency_ms") is None for e in [rebuilt["teacher"], *rebuilt["methods"]])
    table = (out / "results.md").read_text()
    assert "latency.enabled is false" in table and "earlier measurement" not in table


def test_whitened_method_calibrates_on_training_images(tmp_path):
    """``inherit: {init: whitened}`` in a method: the teacher is calibrated on the first training
    images; the inherited network then tracks the teacher on them better than plain SVD's."""
    import torch

    from inhernet.compare.basics import load_data
    from inhernet.compare.runner import build_method_model
    from inhernet.models import create_model

    methods = [{"name": n, "kind": "inhernet", "inherit": {"rank_fraction": 0.25, "heads": 2, **extra}}
               for n, extra in [("svd", {}), ("white", {"init": "whitened", "calibration_images": 64})]]
    cfg = CompareConfig.from_dict(tiny_config(tmp_path, methods=methods))
    data = load_data(cfg)
    torch.manual_seed(0)
    teacher = create_model("resnet14", num_classes=data.num_classes, in_channels=data.in_channels).eval()
    x = data.train.x[:64]
    with torch.no_grad():
        ref = teacher(x)
        err = {}
        for m in cfg.methods:
            model, meta = build_method_model(m, 0, cfg, teacher, data.num_classes, data.in_channels, data.train)
            err[m.name] = ((model.eval()(x) - ref).norm() / ref.norm()).item()
    assert meta["inherit"]["init"] == "whitened"
    assert err["white"] < 0.8 * err["svd"], err
    with pytest.raises(Exception, match="needs the training split"):
        build_method_model(cfg.methods[1], 0, cfg, teacher, data.num_classes, data.in_channels)


@pytest.mark.parametrize("progress", [False, True])
def test_inheritance_progress_bars_follow_the_trainer_setting(tmp_path, monkeypatch, progress):
    """``trainer: {progress: false}`` reached every training bar but not the inheritance's (its
    calibration and layer bars filled the logs of the long benchmark runs)."""
    import inhernet
    from inhernet.compare.runner import build_method_model
    from inhernet.models import create_model

    seen, real = [], inhernet.inherit
    monkeypatch.setattr(inhernet, "inherit", lambda *a, **kw: seen.append(kw.get("progress", True)) or real(*a, **kw))
    cfg = load_config(write_cfg(tmp_path, tiny_config(tmp_path)))
    teacher = create_model("resnet14", num_classes=10, in_channels=1)
    build_method_model(cfg.methods[2], 0, cfg, teacher, 10, 1, progress=progress)
    assert seen == [progress]


@pytest.mark.parametrize("inherit, message", [
    ({"rank": 4, "calibration_images": 64}, "only applies to init: whitened"),
    ({"rank": 4, "init": "whitened", "calibration_images": 0}, "must be a positive int"),
])
def test_calibration_images_is_checked(inherit, message, tmp_path):
    methods = [{"name": "w", "kind": "inhernet", "inherit": inherit}]
    with pytest.raises(CompareConfigError, match=message):
        CompareConfig.from_dict(tiny_config(tmp_path, methods=methods))


def _weights(run_dir: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(run_dir / "model" / "model.safetensors"))


def _order_cfg(tmp: Path, out: str, methods: list[dict]) -> Path:
    cfg = tiny_config(tmp, methods=methods)
    cfg["out_dir"] = str(tmp / out)
    return write_cfg(tmp, cfg, name=f"{out}.yaml")


KD = {"name": "student_kd", "kind": "student_kd", "loss": {"temperature": 2.0}}
INH = {"name": "inh", "kind": "inhernet", "kd": False, "inherit": {"rank": 4, "heads": 2}}


def test_method_results_do_not_depend_on_order_or_on_a_kill(tmp_path, monkeypatch):
    """A KD method once froze the shared teacher, and every InherNet inherited after it trained with
    the teacher's BatchNorm and classifier frozen. Now the InherNet's final weights are the same
    bit for bit whether it runs first, after a KD method, or is killed after one epoch and resumed."""
    import torch

    import inhernet.train

    first = run_compare(load_config(_order_cfg(tmp_path, "inh_first", [INH, KD])), log=lambda m: None)
    after = run_compare(load_config(_order_cfg(tmp_path, "kd_first", [KD, INH])), log=lambda m: None)
    w_first = _weights(tmp_path / "inh_first" / "runs" / "inh" / "seed0")
    w_after = _weights(tmp_path / "kd_first" / "runs" / "inh" / "seed0")
    assert w_first.keys() == w_after.keys()
    for k in w_first:
        assert torch.equal(w_first[k], w_after[k]), k
    acc = {m["name"]: m["test_acc_mean"] for m in first["methods"]}
    assert acc == {m["name"]: m["test_acc_mean"] for m in after["methods"]}
    # the BatchNorm and classifier parameters moved away from the teacher's (they were frozen before)
    teacher_dir = next((tmp_path / "cache" / "teachers").glob("resnet14-*/model"))
    from safetensors.torch import load_file

    t = load_file(str(teacher_dir / "model.safetensors"))
    assert not torch.equal(w_after["fc.weight"], t["fc.weight"])
    assert not torch.equal(w_after["bn1.weight"], t["bn1.weight"])

    # killed at the start of the InherNet's second epoch (after a KD run), then resumed
    class Killed(Exception):
        pass

    from lightning.pytorch.callbacks import Callback

    class KillAtEpoch1(Callback):
        def on_train_epoch_start(self, trainer, pl_module):
            if trainer.current_epoch == 1:
                raise Killed()

    real_fit = inhernet.train.fit

    def fit_killed_in_inh(model, data, **kw):
        if Path(kw["out_dir"]).parts[-2] == "inh":
            kw["callbacks"] = [KillAtEpoch1()]
        return real_fit(model, data, **kw)

    path = _order_cfg(tmp_path, "killed", [KD, INH])
    monkeypatch.setattr(inhernet.train, "fit", fit_killed_in_inh)
    with pytest.raises(Killed):
        run_compare(load_config(path), log=lambda m: None)
    run = tmp_path / "killed" / "runs" / "inh" / "seed0"
    assert (run / "checkpoints" / "last.ckpt").is_file() and not (run / "done.json").exists()
    monkeypatch.setattr(inhernet.train, "fit", real_fit)
    logs: list[str] = []
    run_compare(load_config(path), log=logs.append)
    assert any("inh seed 0: resuming" in line for line in logs)
    w_resumed = _weights(run)
    for k in w_first:
        assert torch.equal(w_first[k], w_resumed[k]), k


def test_size_families_join_one_variant_at_several_sizes(tmp_path):
    """acc_vs_params.png draws a line through a budget / rank sweep: rows that differ only in size.
    A row that differs in anything else (heads, gate lr) or only in name at the same size is not joined."""
    from inhernet.compare.config import MethodConfig
    from inhernet.compare.report import plot_results, size_families, size_family

    ms = [MethodConfig(name="h1", kind="inhernet", inherit={"budget": "student", "heads": 1}),
          MethodConfig(name="h1_small", kind="inhernet", inherit={"budget": 0.15, "heads": 1}, seeds=[0]),
          MethodConfig(name="h1_r4", kind="inhernet", label="H = 1, rank 4", inherit={"rank": 4, "heads": 1}),
          MethodConfig(name="h2", kind="inhernet", inherit={"budget": "student", "heads": 2}),
          MethodConfig(name="h2_glr", kind="inhernet", gate_lr_scale=100.0, inherit={"budget": 0.15, "heads": 2}),
          MethodConfig(name="h2_again", kind="inhernet", inherit={"budget": "student", "heads": 2}),
          MethodConfig(name="student", kind="student")]
    params = [100, 50, 20, 100, 50, 100, 80]
    entries = [{"name": m.name, "label": m.name, "kind": m.kind, "family": size_family(m), "params": p,
                "test_acc_mean": 0.5 + p / 1000, "test_acc_std": 0.0, "seeds": [0],
                "curve_test_acc": {"mean": [0.5], "std": [0.0]}}
               for m, p in zip(ms, params)]
    assert [[e["name"] for e in f] for f in size_families(entries)] == [["h1", "h1_small", "h1_r4"]]
    results = {"name": "sweep", "methods": entries, "student_params": 80,
               "teacher": {"label": "teacher", "kind": "teacher", "params": 300, "test_acc_mean": 0.9}}
    paths = plot_results(results, tmp_path)
    assert [p.name for p in paths] == ["acc_vs_epoch.png", "acc_vs_params.png"] and all(p.stat().st_size for p in paths)


def test_a_diverging_run_is_reported_failed_and_the_cli_exits_nonzero(tmp_path, capsys):
    """At an absurd learning rate the losses turn non-finite: each run stops with the step and the
    fixes, results.json/.md mark it FAILED (not a 9.9 % "result"), the runner goes on to the next
    run after a failure, and `inhernet compare` exits 1. A re-run skips them (same settings
    diverge again)."""
    from inhernet.cli import main

    cfg = tiny_config(tmp_path, methods=[{"name": "student", "kind": "student"},
                                         {"name": "inh_kd", "kind": "inhernet", "kd": True,
                                          "inherit": {"rank": 4, "heads": 2}}])
    cfg["schedule"]["lr"] = 1e6
    path = write_cfg(tmp_path, cfg)
    rc = main(["compare", str(path)])
    out = capsys.readouterr()
    assert rc == 1
    assert "run(s) failed" in out.err
    assert "inh_kd/seed0: training diverged at step" in out.out and "lower the learning rate" in out.out
    res = json.loads((tmp_path / "out" / "results.json").read_text())
    by = {m["name"]: m for m in res["methods"]}
    assert [f["seed"] for f in by["inh_kd"]["failed"]] == [0] and by["inh_kd"]["seeds"] == []
    assert "test_acc_mean" not in by["inh_kd"]
    assert [f["method"] for f in res["failed_runs"]] == ["student", "inh_kd"]
    assert all("diverged at step" in f["reason"] for f in res["failed_runs"])
    for name in ("student", "inh_kd"):  # the first failure did not stop the second run
        run = tmp_path / "out" / "runs" / name / "seed0"
        assert (run / "failed.json").is_file() and not (run / "done.json").exists() and not (run / "model").exists()
    table = (tmp_path / "out" / "results.md").read_text()
    assert "FAILED" in table
    # a re-run does not silently retrain nor report it as a result
    assert main(["compare", str(path)]) == 1
    assert "failed earlier" in capsys.readouterr().out


def test_report_works_from_any_working_directory(tmp_path, monkeypatch, capsys):
    """out_dir and cache_dir relative to where `compare` ran; `report` then runs from elsewhere."""
    from inhernet.cli import main

    work = tmp_path / "work"
    work.mkdir()
    cfg = tiny_config(tmp_path, methods=[{"name": "student", "kind": "student"}])
    cfg["out_dir"], cfg["cache_dir"] = "out", "cache"
    cfg["schedule"]["epochs"] = 1
    path = write_cfg(tmp_path, cfg)
    monkeypatch.chdir(work)
    assert main(["compare", str(path)]) == 0
    tinfo = json.loads((work / "out" / "teacher.json").read_text())
    assert not Path(tinfo["path"]).is_absolute() and (work / "out" / tinfo["path"] / "model.safetensors").is_file()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    capsys.readouterr()
    assert main(["report", str(work / "out"), "--no-latency"]) == 0
    assert "| student |" in capsys.readouterr().out


def test_teacher_can_train_on_every_image_while_methods_use_a_subset(tmp_path):
    """teacher.subset: null trains the (cached) teacher on all training images; the methods keep
    data.subset; the cache key differs from the same-data teacher's."""
    from inhernet.compare.teacher import teacher_key

    cfg = tiny_config(tmp_path, methods=[{"name": "student", "kind": "student"}])
    cfg["teacher"]["subset"] = None
    cfg["schedule"]["epochs"] = 1
    logs: list[str] = []
    res = run_compare(load_config(write_cfg(tmp_path, cfg)), log=logs.append)
    line = next(m for m in logs if "training images (the methods" in m)
    n_teacher = int(line.split("teacher: ")[1].split(" ")[0].replace(",", ""))
    assert n_teacher > 160 and "the methods: 160" in line
    assert res["data"]["train"] == 160
    same = CompareConfig.from_dict(tiny_config(tmp_path))
    assert teacher_key(load_config(write_cfg(tmp_path, cfg, "c2.yaml"))) != teacher_key(same)
    with pytest.raises(CompareConfigError, match="teacher.subset"):
        CompareConfig.from_dict(tiny_config(tmp_path, teacher={"arch": "resnet14", "subset": 0}))


def test_two_processes_share_one_comparison(tmp_path):
    """Two `inhernet compare` processes on one config: the teacher is trained once (the other waits),
    every run is trained by exactly one of them, and the last one writes the complete table."""
    import os
    import subprocess
    import sys

    cfg = tiny_config(tmp_path, methods=[{"name": "student", "kind": "student"},
                                         {"name": "inh", "kind": "inhernet", "inherit": {"rank": 4, "heads": 2}}],
                      seeds=[0, 1])
    cfg["schedule"]["epochs"] = 1
    path = write_cfg(tmp_path, cfg)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "inhernet.cli", "compare", str(path)]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
             for _ in range(2)]
    logs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], logs
    both = "\n".join(logs)
    assert both.count("teacher: training resnet14") == 1, both
    trained = [line for line in both.splitlines() if ": training (" in line]
    assert sorted(line.split("] ")[1].split(":")[0] for line in trained) == [
        "inh seed 0", "inh seed 1", "student seed 0", "student seed 1"], both
    res = json.loads((tmp_path / "out" / "results.json").read_text())
    assert all(m["complete"] for m in res["methods"])


@pytest.mark.parametrize("method, message", [
    ({"name": "s", "kind": "student", "gate_lr_scale": 10}, "needs an InherNet with gated heads"),
    ({"name": "h1", "kind": "inhernet", "gate_lr_scale": 10, "inherit": {"rank": 4, "heads": 1}}, "heads=1"),
    ({"name": "ng", "kind": "inhernet", "gate_lr_scale": 10, "inherit": {"rank": 4, "gate": "none"}}, "gate='none'"),
    ({"name": "z", "kind": "inhernet", "gate_lr_scale": 0, "inherit": {"rank": 4}}, "must be a finite number > 0"),
])
def test_gate_lr_scale_is_checked(method, message, tmp_path):
    with pytest.raises(CompareConfigError, match=message):
        CompareConfig.from_dict(tiny_config(tmp_path, methods=[method]))


def test_gate_lr_scale_reaches_the_optimiser_and_only_then_the_run_key(tmp_path):
    """A method's ``gate_lr_scale`` trains its gates at lr × the scale (the checkpoint's optimiser
    groups say so); left at 1 it is absent from the run's identity, so the keys of runs made before
    the option are unchanged."""
    import torch

    from inhernet.compare.runner import plan_runs

    base = {"name": "inh", "kind": "inhernet", "inherit": {"rank": 4, "heads": 2}}
    cfg = CompareConfig.from_dict(tiny_config(tmp_path, methods=[base, {**base, "name": "fast", "gate_lr_scale": 10}]))
    plain, fast = plan_runs(cfg, "teacher-key")
    assert "gate_lr_scale" not in plain["identity"]["method"] and fast["identity"]["method"]["gate_lr_scale"] == 10
    before = CompareConfig.from_dict(tiny_config(tmp_path, methods=[base]))
    assert plan_runs(before, "teacher-key")[0]["key"] == plain["key"]

    cfg_path = write_cfg(tmp_path, tiny_config(tmp_path, methods=[{**base, "name": "fast", "gate_lr_scale": 10}]))
    run_compare(load_config(cfg_path), log=lambda _: None)
    ckpt = torch.load(tmp_path / "out" / "runs" / "fast" / "seed0" / "checkpoints" / "last.ckpt", weights_only=False)
    groups = ckpt["optimizer_states"][0]["param_groups"]
    assert len(groups) == 2 and groups[1]["lr"] == pytest.approx(10 * groups[0]["lr"])


@pytest.mark.parametrize("seeds, message", [
    ([], "non-empty list of distinct integers"),
    ([0, 0], "non-empty list of distinct integers"),
    ("0", "non-empty list of distinct integers"),
])
def test_method_seeds_are_checked(seeds, message, tmp_path):
    with pytest.raises(CompareConfigError, match=message):
        CompareConfig.from_dict(tiny_config(tmp_path, seeds=[0, 1],
                                            methods=[{"name": "s", "kind": "student", "seeds": seeds}]))


def test_a_method_runs_on_its_own_seeds_and_keeps_its_run_keys(tmp_path):
    """``seeds:`` on a method restricts it to those of the comparison's seeds: the plan skips the
    rest, the row is complete at its own n, and the run keys are the ones made without the option
    (so a config can narrow a row without retraining it)."""
    from inhernet.compare.runner import plan_runs

    methods = [{"name": "student", "kind": "student", "seeds": [1]},
               {"name": "inh", "kind": "inhernet", "inherit": {"rank": 4, "heads": 2}}]
    cfg = tiny_config(tmp_path, seeds=[0, 1], methods=methods)
    cfg["schedule"]["epochs"] = 1
    plan = plan_runs(CompareConfig.from_dict(cfg), "teacher-key")
    assert [(r["method"].name, r["seed"]) for r in plan] == [("inh", 0), ("student", 1), ("inh", 1)]
    wide = CompareConfig.from_dict({**cfg, "methods": [{"name": "student", "kind": "student"}, methods[1]]})
    keys = {(r["method"].name, r["seed"]): r["key"] for r in plan_runs(wide, "teacher-key")}
    assert all(keys[(r["method"].name, r["seed"])] == r["key"] for r in plan)
    assert "seeds" not in plan[1]["identity"]["method"]

    res = run_compare(load_config(write_cfg(tmp_path, cfg)), log=lambda _: None)
    student, inh = res["methods"]
    assert student["seeds"] == [1] and student["complete"] and inh["seeds"] == [0, 1] and inh["complete"]
    assert not (tmp_path / "out" / "runs" / "student" / "seed0").exists()
    table = (tmp_path / "out" / "results.md").read_text()
    assert "(n = 1)" in table and "(incomplete)" not in table


def _strip_weights(out: Path) -> None:
    """What a committed comparison folder keeps: the run records, not the weights or checkpoints."""
    import shutil

    for d in [*out.rglob("model"), *out.rglob("checkpoints")]:
        shutil.rmtree(d)


def test_run_records_without_weights_count_as_finished(finished, tmp_path):
    """A run folder that kept its records but not its weights (a comparison committed to a repository,
    checkpoints ignored) is finished: re-running skips it, its accuracy stays in the table, only its
    latency is missing."""
    import shutil

    src, path, results, _ = finished
    shutil.copytree(src / "out", tmp_path / "out")
    _strip_weights(tmp_path / "out")
    cfg = yaml.safe_load(path.read_text())
    cfg["out_dir"] = str(tmp_path / "out")  # the same (cached) teacher
    logs: list[str] = []
    again = run_compare(load_config(write_cfg(tmp_path, cfg)), log=logs.append)
    assert sum("done, skipped" in line for line in logs) == 3 and not any(": training (" in x for x in logs)
    assert [m["test_acc_mean"] for m in again["methods"]] == [m["test_acc_mean"] for m in results["methods"]]
    assert all("latency_ms" not in m and "latency_error" in m for m in again["methods"])
    table = (tmp_path / "out" / "results.md").read_text()
    assert "Latency not measured for student, student_kd, inh: no model weights in the run folder" in table


def test_methods_option_trains_those_rows_first_and_reports_all(finished, tmp_path, capsys):
    """``--methods`` trains only the named methods' runs; the report counts every finished run (the
    others' rows are empty until they run); an unknown name is refused before anything is written,
    with the config's method names; a method whose seeds miss the comparison's says so."""
    from inhernet.cli import main as cli_main

    src, path, _, _ = finished
    cfg = yaml.safe_load(path.read_text())
    cfg["out_dir"] = str(tmp_path / "out")  # the cached teacher
    cfg["seeds"] = [0]
    cfg["methods"] = [*cfg["methods"][:2], {"name": "later", "kind": "student", "seeds": [7]}]
    cfg_path = write_cfg(tmp_path, cfg)
    assert cli_main(["compare", str(cfg_path), "--methods", "student_k"]) == 2
    err = capsys.readouterr().err
    assert "'student_k' is not a method of this config" in err and "did you mean 'student_kd'" in err
    assert not (tmp_path / "out").exists()

    assert cli_main(["compare", str(cfg_path), "--methods", "student"]) == 0
    out = capsys.readouterr().out
    assert "method 'later' runs on seeds [7], none of this comparison's [0]" in out
    res = json.loads((tmp_path / "out" / "results.json").read_text())
    by = {m["name"]: m for m in res["methods"]}
    assert by["student"]["seeds"] == [0] and by["student_kd"]["seeds"] == [] and by["later"]["seeds"] == []
    assert not (tmp_path / "out" / "runs" / "student_kd").exists()


def test_long_runs_script_reports_the_strong_teacher_plan():
    """benchmarks/long_runs.sh status reads both strong-teacher configs and their ⅓-of-the-epochs
    companions with their committed state (benchmarks/store/): the teacher's progress and how many
    planned runs are done; a bad verb is refused."""
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    env = {"BIN": str(Path(sys.executable).parent), "PATH": "/usr/bin:/bin"}
    res = subprocess.run(["bash", "benchmarks/long_runs.sh", "status"], cwd=root, capture_output=True, text=True,
                         env=env, timeout=300)
    assert res.returncode == 0, res.stderr
    for name, teacher in (("fmnist60k_resnet56_resnet20", "resnet56"), ("fmnist60k_wrn_40_2_wrn_40_1", "wrn_40_2")):
        assert name in res.stdout and f"{name}_third" in res.stdout and f"teacher {teacher}: " in res.stdout
    assert res.stdout.count("runs done") == 4
    bad = subprocess.run(["bash", "benchmarks/long_runs.sh", "bogus"], cwd=root, capture_output=True, text=True,
                         env=env, timeout=60)
    assert bad.returncode == 2 and "usage" in bad.stderr


@pytest.fixture(scope="module")
def targets_script():
    """benchmarks/issue11_targets.py, loaded as a module (it is a script, not part of the package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("issue11_targets", Path(__file__).resolve().parents[1] / "benchmarks"
                                                  / "issue11_targets.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_issue11_targets_are_computed_from_the_rows_roles(tmp_path, targets_script):
    """benchmarks/issue11_targets.py judges each target on the rows' roles (read from their inherit
    summary, not their names) and marks verdicts that read rows with fewer seeds than asked."""
    def row(name, kind, acc, seeds=(0, 1, 2), params=100, hit=2, **inherit):
        spread = [acc - 0.001, acc, acc + 0.001][:len(seeds)] if len(seeds) > 1 else [acc]
        e = {"name": name, "kind": kind, "test_acc_mean": acc, "test_acc_std": 0.001, "seeds": list(seeds),
             "test_acc": spread, "params": params, "epochs": 9, "epochs_to_best_kd_student": hit}
        if kind == "inhernet":
            e["inherit"] = {"budget": None if "rank" in inherit else 100, "gate": "softmax", "init": "svd",
                            "head_init": "copies", **inherit}
            e.update(head_cosine_last=0.99, gate_grad_ratio_last=1e-3)
        return e

    results = {"name": "toy", "config": {"seeds": [0, 1, 2]}, "student_params": 100, "reference_kd_student": "dkd",
               "teacher": {"name": "teacher", "kind": "teacher", "test_acc_mean": 0.93, "params": 1000},
               "methods": [row("dkd", "student_dkd", 0.90, hit=None),
                           row("a", "inhernet", 0.915, heads=1),
                           row("b", "inhernet", 0.925, heads=3),                         # the best gated, default
                           row("c", "inhernet", 0.93, heads=3, seeds=(0,), head_init="perturbed", hit=4),
                           row("d", "inhernet", 0.918, heads=3, gate="none"),
                           row("big", "inhernet", 0.928, params=400, heads=3, rank=16)]}
    rows = {t: (fig, v) for t, fig, _, v in targets_script.verdicts(results, 3)}
    gated_h1 = rows["best gated ≥ H = 1 (plain low rank) + 0.5"]
    assert gated_h1[0].startswith("c 93.00 (n = 1) vs a 91.50") and gated_h1[1] == "met (provisional: n < 3)"
    assert gated_h1[0].endswith("+1.50 (Welch p = –)")  # c has one seed: no test
    assert rows["best gated ≥ w.o. gate + 0.5"][1] == "met (provisional: n < 3)"
    assert rows["InherNet at ≤ student params ≥ best KD student + 1"][1].startswith("met")
    # the issue's rule: the default (H = 1: row a) is not the best measured row (c, one seed)
    default = rows["the library's default is the best measured InherNet at the student's size"]
    assert default[0].startswith("best: c 93.00 (n = 1) (heads=3, head_init=perturbed, init=svd); the default's row a")
    assert default[1] == "**not met** (provisional: a row has fewer seeds)"
    assert rows["default config's heads reported (head cosine, gate gradient ratio)"][1] == "n/a (H = 1)"
    assert rows["Large ≥ teacher − 0.3 at ≤ 50 % of its params"][1] == "met"  # 92.8 vs 93.0, 40 %
    convergence = next(v for t, (f, v) in rows.items() if t.startswith("every InherNet reaches"))
    assert convergence.startswith("**not met**")  # c needs 4 of 9 epochs (> 3)
    path = tmp_path / "results.json"
    path.write_text(json.dumps(results))
    assert "## toy" in targets_script.render([path])
    results["methods"] = [m for m in results["methods"] if m["name"] != "c"]
    rows = {t: (fig, v) for t, fig, _, v in targets_script.verdicts(results, 3)}
    # b (3 seeds, 1 point above a, spread 0.1) is the best now: the default's a is clearly below it
    assert rows["the library's default is the best measured InherNet at the student's size"][1] == "**not met**"
    a = next(m for m in results["methods"] if m["name"] == "a")
    a.update(test_acc_mean=0.9248, test_acc=[0.9238, 0.9248, 0.9258])  # 0.02 below b: inside the seeds' spread
    rows = {t: (fig, v) for t, fig, _, v in targets_script.verdicts(results, 3)}
    assert rows["the library's default is the best measured InherNet at the student's size"][1].startswith(
        "**not met** (within noise: p = ")
    a.update(test_acc_mean=0.93, test_acc=[0.929, 0.93, 0.931])  # now the best
    rows = {t: (fig, v) for t, fig, _, v in targets_script.verdicts(results, 3)}
    assert rows["the library's default is the best measured InherNet at the student's size"][1] == "met"
    kd = rows["InherNet at ≤ student params ≥ best KD student + 1"][0]
    assert kd.startswith("a 93.00 ± 0.10 vs dkd 90.00 ± 0.10: +3.00 (Welch p = ")
    assert 0 < float(kd.split("Welch p = ")[1].rstrip(")")) < 1e-3  # 3 seeds each, 3 points apart, spread 0.1


def test_issue11_third_of_the_epochs_is_judged_on_its_own_comparison(tmp_path, targets_script):
    """issue11_targets.py --third: a comparison that trained the InherNet rows with a third of the
    epochs is paired with the full one of the same teacher, student and data, and each of its rows'
    final accuracy is judged against the full run's best KD student; a pairing that does not fit is
    refused with the reason."""
    def row(name, kind, acc, seeds=(0, 1, 2), **inherit):
        e = {"name": name, "kind": kind, "test_acc_mean": acc, "test_acc_std": 0.001, "seeds": list(seeds),
             "test_acc": [acc - 0.001, acc, acc + 0.001][:len(seeds)], "params": 100, "epochs": 9,
             "epochs_to_best_kd_student": 7}
        if kind == "inhernet":
            e["inherit"] = {"budget": 100, "gate": "softmax", "init": "svd", "head_init": "copies", **inherit}
        return e

    def config(epochs, names):
        return {"seeds": [0, 1, 2], "teacher": {"arch": "resnet56"}, "student": {"arch": "resnet20"},
                "data": {"subset": 10}, "schedule": {"epochs": epochs}, "methods": [{"name": n} for n in names]}

    full = {"name": "full", "config": config(9, ["dkd", "a"]), "student_params": 100, "reference_kd_student": "dkd",
            "teacher": {"name": "teacher", "kind": "teacher", "test_acc_mean": 0.93, "params": 1000},
            "methods": [row("dkd", "student_dkd", 0.90), row("a", "inhernet", 0.92, heads=1)]}
    third = {"name": "third", "config": config(3, ["a", "b"]), "student_params": 100,
             "methods": [row("a", "inhernet", 0.905, heads=1), row("b", "inhernet", 0.0, seeds=())]}
    paths = {}
    for name, r in (("full", full), ("third", third)):
        paths[name] = tmp_path / f"{name}.json"
        paths[name].write_text(json.dumps(r))
    target = "every InherNet trained with ⅓ of the epochs (3 of 9, the recipe scaled) reaches the best KD student's final accuracy"
    rows = {t: (fig, v) for t, fig, _, v in targets_script.verdicts(full, 3, third)}
    assert rows[target][0] == "a 90.50 ± 0.10 vs dkd 90.00 ± 0.10 (9 epochs); not trained yet: b"
    assert rows[target][1] == "met (rows missing)"
    third["methods"][0].update(test_acc_mean=0.899)
    assert {t: v for t, _, _, v in targets_script.verdicts(full, 3, third)}[target] == "**not met**"
    assert target in targets_script.render([paths["full"]], [paths["third"]])
    assert target not in targets_script.render([paths["full"]])  # the mid-run row alone without --third
    third["config"]["schedule"]["epochs"] = 4  # more than 9 / 3
    paths["third"].write_text(json.dumps(third))
    with pytest.raises(SystemExit, match="more than a third"):
        targets_script.render([paths["full"]], [paths["third"]])
    third["config"]["student"] = {"arch": "wrn_40_1"}
    paths["third"].write_text(json.dumps(third))
    with pytest.raises(SystemExit, match="no comparison given has its teacher, student and data"):
        targets_script.render([paths["full"]], [paths["third"]])


@pytest.mark.parametrize("path, kept", [
    ("benchmarks/store/cache/teachers/resnet56-0/model/model.safetensors", False),
    ("benchmarks/store/cache/teachers/resnet56-0/done.json", True),
    ("benchmarks/store/fmnist60k_resnet56_resnet20/runs/h1_svd/seed0/done.json", True),
    ("benchmarks/store/fmnist60k_resnet56_resnet20/runs/h1_svd/seed0/metrics.jsonl", True),
    ("benchmarks/store/fmnist60k_resnet56_resnet20/results.json", True),
    ("benchmarks/store/fmnist60k_resnet56_resnet20/runs/h1_svd/seed0/model/model.safetensors", False),
    ("benchmarks/store/fmnist60k_resnet56_resnet20/runs/h1_svd/seed0/checkpoints/last.ckpt", False),
    ("benchmarks/store/cache/teachers/resnet56-0/checkpoints/last.ckpt", False),
    ("benchmarks/store/fmnist60k_resnet56_resnet20/locks/h1_svd-seed0.lock", False),
    ("benchmarks/store/cache/teachers/resnet56-0/recorded/done.json", False),
    ("benchmarks/store/cache/teachers/resnet56-0/new_teacher.json", False),
])
def test_the_committed_store_keeps_records_not_trained_artefacts(path, kept):
    """The ignore rules behind benchmarks/store/ (the long comparisons' records, committed because a
    session's machine may be new): records and reports tracked; trained artefacts (teacher and run
    weights, checkpoints) and locks not."""
    import shutil
    import subprocess

    root = Path(__file__).resolve().parents[1]
    if shutil.which("git") is None or not (root / ".git").exists():
        pytest.skip("not a git checkout: the ignore rules cannot be asked")
    res = subprocess.run(["git", "check-ignore", "-q", path], cwd=root)
    assert res.returncode == (1 if kept else 0), f"{path}: {'ignored' if res.returncode == 0 else 'tracked'}"


@pytest.mark.parametrize("case, new_teacher, expect", [
    ("one-thread record, config at 2", "", "it was trained at 1 thread(s) and this training runs at 2"),
    ("this machine type noted", "1", "did not repeat its training (it left the record at epoch 1"),
    ("record already at 2 threads", "1", "already is at that count"),
])
def test_long_runs_start_refuses_what_cannot_repeat_the_teacher(tmp_path, case, new_teacher, expect):
    """benchmarks/long_runs.sh start launches nothing where a retraining cannot repeat the committed
    teacher (another thread count, a machine type noted as not repeating it) or where NEW_TEACHER=1
    has nothing to switch; it says why (a scratch copy of the script, configs and a synthetic record)."""
    import shutil
    import subprocess
    import sys

    from inhernet.compare.teacher import teacher_folder
    from inhernet.utils import machine_record

    root = Path(__file__).resolve().parents[1]
    (tmp_path / "benchmarks" / "configs").mkdir(parents=True)
    for name in ("long_runs.sh", "teacher_from_history.py"):
        shutil.copy(root / "benchmarks" / name, tmp_path / "benchmarks")
    for name in ("fmnist60k_resnet56_resnet20.yaml", "fmnist60k_wrn_40_2_wrn_40_1.yaml"):
        shutil.copy(root / "benchmarks" / "configs" / name, tmp_path / "benchmarks" / "configs")
    cfg = load_config(tmp_path / "benchmarks" / "configs" / "fmnist60k_resnet56_resnet20.yaml")
    folder = tmp_path / teacher_folder(cfg)
    folder.mkdir(parents=True)
    here = {**machine_record(), "threads": 1}
    record = {"arch": "resnet56", "test_acc": 0.93, "curve": [0.9], "machine": {"threads": 1}}
    if case == "this machine type noted":
        record["not_repeated_on"] = [{**here, "left_at": "at epoch 1: test/acc 0.1 against the recorded 0.2",
                                      "date": "2026-12-02"}]
    if case == "record already at 2 threads":
        record["machine"] = {**here, "threads": 2}
    (folder / "done.json").write_text(json.dumps(record))
    # BIN: this Python, and a stand-in `inhernet` that only records its arguments: a refusal that fails
    # must not start hours of training
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python").write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    (bin_dir / "python").chmod(0o755)
    (bin_dir / "inhernet").write_text(f"#!/bin/sh\necho \"$@\" >> {tmp_path / 'launched.txt'}\n")
    (bin_dir / "inhernet").chmod(0o755)
    env = {"BIN": str(bin_dir), "PATH": "/usr/bin:/bin", "NEW_TEACHER": new_teacher, "LOG_DIR": str(tmp_path / "logs")}
    res = subprocess.run(["bash", "benchmarks/long_runs.sh", "start"], cwd=tmp_path, capture_output=True, text=True,
                         env=env, timeout=300)
    assert res.returncode == 1 and "not started" in res.stdout and expect in res.stdout, res.stdout + res.stderr
    assert "holds no weights" in res.stdout  # it asked the history first (a scratch folder has none)
    assert not (tmp_path / "logs").exists() and not (tmp_path / "launched.txt").exists()  # nothing launched


def test_status_reports_the_teacher_and_every_started_run_without_training(finished, tmp_path, capsys):
    """``inhernet compare CONFIG --status``: the teacher's state, each started run's (done with its
    accuracy, epoch k of n and whether it can resume here), how many are done; nothing written."""
    import shutil

    from inhernet.cli import main
    from inhernet.compare import comparison_status

    src, path, results, _ = finished
    out = tmp_path / "out"
    shutil.copytree(src / "out", out)
    cfg = tiny_config(src, out_dir=str(out))
    cfg["cache_dir"] = str(src / "cache")
    p = write_cfg(tmp_path, cfg)
    (out / "runs" / "inh" / "seed0" / "done.json").unlink()  # as if stopped after its epochs, checkpoint kept
    before = sorted(str(q) for q in out.rglob("*"))
    text = comparison_status(load_config(p))
    assert "teacher resnet14: done, test acc" in text and "(record only" not in text
    acc = results["methods"][0]["test_acc_mean"]
    assert f"student seed 0: done, test acc {100 * acc:.2f} %" in text
    assert "inh seed 0: epoch 2 of 2 (in progress here)" in text and "2 of 3 runs done" in text
    assert main(["compare", str(p), "--status"]) == 0 and "2 of 3 runs done" in capsys.readouterr().out
    assert sorted(str(q) for q in out.rglob("*")) == before  # read only


def test_teacher_threads_benchmark_runs_on_a_tiny_setting(tmp_path):
    """benchmarks/bench_teacher_threads.py (the figure behind teacher.threads) on a tiny setting: a table
    for 1 and 2 threads and the repeatability verdict, written to --out."""
    import importlib.util

    import torch

    spec = importlib.util.spec_from_file_location("bench_teacher_threads", Path(__file__).resolve().parents[1]
                                                  / "benchmarks" / "bench_teacher_threads.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = tmp_path / "t.md"
    try:
        assert mod.main(["--arch", "resnet8", "--size", "8", "--batch", "4", "--rounds", "2", "--steps", "1",
                         "--digest-steps", "2", "--out", str(out)]) == 0
    finally:
        torch.set_num_threads(1)
    text = out.read_text()
    assert "| 1 |" in text and "| 2 |" in text and "**the same**." in text


def test_accuracy_vs_parameters_labels_only_points_apart():
    """acc_vs_params.png writes a point's name next to it unless another point lies on top of it (rows at
    the student's size within a few hundredths of a point would overprint; the legend names them)."""
    from inhernet.compare.report import _crowded

    pts = [{"params": 272_000, "test_acc_mean": 0.9189}, {"params": 272_100, "test_acc_mean": 0.9207},
           {"params": 272_186, "test_acc_mean": 0.8808}, {"params": 855_000, "test_acc_mean": 0.932}]
    span = 100 * (0.932 - 0.8808)
    assert [_crowded(e, pts, span) for e in pts] == [True, True, False, False]


def test_a_run_identity_states_the_library_defaults_it_relies_on(monkeypatch):
    """Run keys hash a method's inherit options as written; a library default the method leaves out is
    part of what it trains. So: runs made under the first defaults keep their keys (heads written,
    head_init written as copies: the key of the runs made before head_init existed), and once a
    default differs from that baseline a method that leaves the option out gets another key (it now
    trains something else), instead of silently counting the old runs as its own — unless the option
    changes nothing for it (head_init without a gate)."""
    import inhernet
    from inhernet.compare.basics import IDENTITY_BASELINE, inherit_identity

    written = {"budget": "student", "heads": 3}
    assert inherit_identity({**written, "head_init": "copies"}) == written  # the committed runs' identities
    # head_init: the default is perturbed now, not the baseline's copies: a gated method leaving it out trains that
    assert inhernet.InheritConfig().head_init != IDENTITY_BASELINE["head_init"]
    assert inherit_identity(written) == {**written, "head_init": inhernet.InheritConfig().head_init}
    assert inherit_identity({**written, "head_init": "split"}) == {**written, "head_init": "split"}
    # heads: the default is 1 now, not the baseline's 3: a method that leaves it out trains H = 1 (no gate,
    # so the head_init default is not part of what it trains); so does one without a gate
    assert inhernet.InheritConfig().heads != IDENTITY_BASELINE["heads"]
    assert inherit_identity({"budget": "student"}) == {"budget": "student", "heads": inhernet.InheritConfig().heads}
    assert inherit_identity({"heads": 1}) == {"heads": 1}
    assert inherit_identity({**written, "gate": "none"}) == {**written, "gate": "none"}
    # a caller's own defaults (the transformer methods' heads: 2) decide what is trained and are not written
    assert inherit_identity({}, defaults={"heads": 2}) == {"head_init": inhernet.InheritConfig().head_init}
    assert inherit_identity({"head_init": "copies"}, defaults={"heads": 2}) == {}
    assert inherit_identity({}, defaults={"heads": 1}) == {}
    # a later change of a default: methods leaving it out get the new default in their key
    monkeypatch.setattr(inhernet.InheritConfig, "__init__", _with_default(inhernet.InheritConfig.__init__, head_init="split"))
    assert inherit_identity(written) == {**written, "head_init": "split"}
    assert inherit_identity({**written, "head_init": "copies"}) == written  # the old runs' key, written explicitly


def _with_default(init, **defaults):
    def patched(self, *args, **kwargs):
        init(self, *args, **{**defaults, **kwargs})
    return patched


@pytest.mark.parametrize("name", ["fmnist60k_resnet56_resnet20", "fmnist60k_wrn_40_2_wrn_40_1"])
def test_the_committed_runs_keep_their_keys_under_the_committed_configs(name):
    """Every finished run committed in benchmarks/store/ is planned again, under the same key, by the
    config that made it: a change of the library's defaults or of the identity rules that would quietly
    retrain — or quietly re-count — those runs fails here."""
    from inhernet.compare import load_config
    from inhernet.compare.runner import plan_runs
    from inhernet.compare.teacher import teacher_key
    from inhernet.utils import read_json

    root = Path(__file__).resolve().parents[1]
    cfg = load_config(root / "benchmarks" / "configs" / f"{name}.yaml")
    cfg.out_dir = str(root / cfg.out_dir)
    planned = {(r["method"].name, r["seed"]): r["key"] for r in plan_runs(cfg, teacher_key(cfg))}
    done = sorted((root / cfg.out_dir / "runs").glob("*/seed*/done.json"))
    assert len(done) >= 3, "the store holds finished runs"
    for path in done:
        rec = read_json(path)
        method, seed = path.parent.parent.name, int(path.parent.name[len("seed"):])
        assert (method, seed) in planned, f"{method} seed {seed}: no longer planned"
        assert rec["key"] == planned[method, seed], f"{method} seed {seed}: its key changed"
