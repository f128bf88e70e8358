"""A comparison's runs count only with the teacher they were trained against: a teacher whose weights are
missing (a new machine, a clone of committed records) is retrained and checked against its record; a
different network supersedes the record and the runs trained against it stop counting."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from torch import nn

pytest.importorskip("lightning")
pytest.importorskip("sklearn")  # the digits data set

from inhernet.compare import StaleRunError, TeacherRecordError, load_config, run_compare  # noqa: E402
from inhernet.compare.teacher import first_divergence, teacher_folder, trained_against  # noqa: E402
from inhernet.utils import cpu_name, machine_record, weights_digest  # noqa: E402

from test_compare import tiny_config, write_cfg  # noqa: E402


def test_weights_digest_tells_weights_apart_and_ignores_the_object():
    torch.manual_seed(0)
    a = nn.Linear(3, 2)
    b = nn.Linear(3, 2)
    b.load_state_dict(a.state_dict())
    assert weights_digest(a) == weights_digest(b)
    with torch.no_grad():
        b.weight[0, 0] = torch.nextafter(b.weight[0, 0], torch.tensor(2.0))  # one ulp
    assert weights_digest(a) != weights_digest(b)


def test_trained_against_rules():
    t = {"weights_digest": "aaaa", "supersedes": []}
    assert trained_against({"kind": "inhernet", "teacher_digest": "aaaa"}, t)
    assert not trained_against({"kind": "inhernet", "teacher_digest": "bbbb"}, t)
    assert trained_against({"kind": "inhernet"}, t)  # recorded before digests, teacher never replaced
    replaced = {**t, "supersedes": [{"test_acc": 0.5}]}
    assert not trained_against({"kind": "student_kd"}, replaced)
    assert trained_against({"kind": "student", "teacher_digest": "bbbb"}, replaced)  # never saw a teacher
    assert trained_against({"kind": "inhernet", "teacher_digest": "bbbb"}, None)


def _clone_records(src: Path, dst: Path) -> None:
    """What a clone of the committed store holds: records and reports, no weights or checkpoints."""
    shutil.copytree(src, dst)
    for p in list(dst.rglob("*")):
        if p.is_file() and (p.suffix in (".safetensors", ".ckpt") or p.name.endswith(".lock")):
            p.unlink()


@pytest.fixture(scope="module")
def first(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("teacher_id")
    cfg = tiny_config(tmp, methods=[{"name": "student", "kind": "student"},
                                    {"name": "inh", "kind": "inhernet", "inherit": {"rank": 4, "heads": 2}}])
    cfg["schedule"]["epochs"] = 1
    cfg["teacher"] = {**cfg["teacher"], "epochs": 2}  # two epochs: a retraining that leaves its record stops after one
    run_compare(load_config(write_cfg(tmp, cfg)), log=lambda m: None)
    return tmp, cfg


def _on_new_machine(first, tmp: Path, edit=None) -> Path:
    src, cfg = first
    _clone_records(src / "out", tmp / "out")
    _clone_records(src / "cache", tmp / "cache")
    cfg = {**cfg, "out_dir": str(tmp / "out"), "cache_dir": str(tmp / "cache")}
    path = write_cfg(tmp, cfg)
    if edit:
        edit(load_config(path), tmp)
    return path


def test_a_retrained_teacher_that_is_the_same_network_keeps_the_runs(first, tmp_path):
    path = _on_new_machine(first, tmp_path)
    folder = teacher_folder(load_config(path))
    recorded = json.loads((folder / "done.json").read_text())
    logs: list[str] = []
    res = run_compare(load_config(path), log=logs.append)
    text = "\n".join(logs)
    assert "its weights are not here" in text and "is the recorded one" in text, text
    assert "inh seed 0: done, skipped" in text and "student seed 0: done, skipped" in text
    again = json.loads((folder / "done.json").read_text())
    assert again["weights_digest"] == recorded["weights_digest"] and again["supersedes"] == []
    assert again["machine"]["cpu"] == cpu_name() and again["machine"]["threads"] == 1  # what it was trained on
    assert not (folder / "recorded").exists()
    assert {m["name"]: m["complete"] for m in res["methods"]} == {"student": True, "inh": True}


def test_a_retrained_teacher_that_is_another_network_supersedes_its_runs(first, tmp_path):
    def pretend_another_teacher(cfg, tmp):  # the record (and the run trained against it) name other weights
        folder = teacher_folder(cfg)
        done = json.loads((folder / "done.json").read_text())
        (folder / "done.json").write_text(json.dumps({**done, "weights_digest": "0123456789abcdef"}))
        run = tmp / "out" / "runs" / "inh" / "seed0" / "done.json"
        (run).write_text(json.dumps({**json.loads(run.read_text()), "teacher_digest": "0123456789abcdef"}))

    path = _on_new_machine(first, tmp_path, pretend_another_teacher)
    inh_done = tmp_path / "out" / "runs" / "inh" / "seed0" / "done.json"
    before = inh_done.read_text()
    folder = teacher_folder(load_config(path))
    record = json.loads((folder / "done.json").read_text())
    logs: list[str] = []
    # every epoch repeats the record, the weights do not: found at the end, and the record is kept
    with pytest.raises(TeacherRecordError, match="left its record at the end: other weights"):
        run_compare(load_config(path), log=logs.append)
    kept = json.loads((folder / "done.json").read_text())
    assert {k: v for k, v in kept.items() if k != "not_repeated_on"} == record
    assert [n["left_at"] for n in kept["not_repeated_on"]] == ["at the end: other weights (every epoch's metrics equal)"]
    # --new-teacher trains one and it supersedes the record
    with pytest.raises(StaleRunError, match=r"another teacher.*inh/seed0.*--force") as err:
        run_compare(load_config(path), new_teacher=True, log=logs.append)
    assert "student" not in str(err.value).split("(")[1]  # a plain student never saw the teacher
    assert "is another network" in "\n".join(logs)
    assert inh_done.read_text() == before  # nothing the runs recorded is lost
    done = json.loads((teacher_folder(load_config(path)) / "done.json").read_text())
    assert done["supersedes"][0]["weights_digest"] == "0123456789abcdef"
    assert done["weights_digest"] != "0123456789abcdef"
    # the teacher is not retrained again; --force on that row retrains it, the student is kept
    logs.clear()
    student_done = (tmp_path / "out" / "runs" / "student" / "seed0" / "done.json").read_text()
    res = run_compare(load_config(path), force=True, methods=["inh"], log=logs.append)
    text = "\n".join(logs)
    assert "reusing resnet14" in text and "inh seed 0: training" in text
    assert (tmp_path / "out" / "runs" / "student" / "seed0" / "done.json").read_text() == student_done
    assert json.loads(inh_done.read_text())["teacher_digest"] == done["weights_digest"]
    assert {m["name"]: m["complete"] for m in res["methods"]} == {"student": True, "inh": True}


def test_first_divergence_compares_metrics_not_timings():
    a = [{"epoch": 0, "test/acc": 0.5, "epoch_time_s": 1.0}, {"epoch": 1, "test/acc": 0.6, "epoch_time_s": 1.0}]
    b = [{"epoch": 0, "test/acc": 0.5, "epoch_time_s": 9.0}, {"epoch": 1, "test/acc": 0.61, "epoch_time_s": 9.0}]
    assert first_divergence(a, b) == 1
    assert first_divergence(a[:1], b) is None  # only the epochs both have
    assert first_divergence(a, a) is None


def _legacy_record_of_another_teacher(cfg, tmp):
    """A record written before digests existed whose first epoch differs from what this machine trains."""
    folder = teacher_folder(cfg)
    done = json.loads((folder / "done.json").read_text())
    done.pop("weights_digest")
    done.pop("machine", None)
    (folder / "done.json").write_text(json.dumps(done))
    rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    rows[0]["test/loss"] += 1e-6
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    for run in (tmp / "out" / "runs").glob("*/seed0/done.json"):
        d = json.loads(run.read_text())
        d.pop("teacher_digest", None)
        run.write_text(json.dumps(d))


def test_a_retraining_that_leaves_its_record_stops_at_that_epoch(first, tmp_path, monkeypatch):
    """Every metric of every epoch is checked as the retraining goes: the first epoch that differs stops
    it (not the end of the schedule); the record is kept as committed, with this machine noted, so the
    next run here stops before training; ``new_teacher=True`` trains a new teacher, which supersedes it."""
    path = _on_new_machine(first, tmp_path, _legacy_record_of_another_teacher)
    folder = teacher_folder(load_config(path))
    record, rows = (folder / "done.json").read_text(), (folder / "metrics.jsonl").read_text()
    import inhernet.compare.teacher as teacher_mod

    trained_epochs: list[int] = []
    keep = teacher_mod._keep_record

    def counting_keep(folder, *args):  # how many epochs the retraining ran when it was stopped
        trained_epochs.append(len((folder / "metrics.jsonl").read_text().splitlines()))
        return keep(folder, *args)

    monkeypatch.setattr(teacher_mod, "_keep_record", counting_keep)
    logs: list[str] = []
    with pytest.raises(TeacherRecordError, match=r"left its record at epoch 1: test/loss .* against the recorded .*--new-teacher") as err:
        run_compare(load_config(path), log=logs.append)
    assert cpu_name() in str(err.value) and "does not say what it was trained on" in str(err.value)
    assert trained_epochs == [1]  # stopped after epoch 1 of 2
    # the record as committed (its metrics too), plus the note; the retraining's epochs are gone
    kept = json.loads((folder / "done.json").read_text())
    assert {k: v for k, v in kept.items() if k != "not_repeated_on"} == json.loads(record)
    (note,) = kept["not_repeated_on"]
    assert {k: note[k] for k in ("cpu", "isa", "threads", "torch")} == {**machine_record(), "threads": 1}
    assert note["left_at"].startswith("at epoch 1: test/loss")
    assert (folder / "metrics.jsonl").read_text() == rows
    assert not (folder / "checkpoints").exists() and not (folder / "recorded").exists()
    logs.clear()
    with pytest.raises(TeacherRecordError, match="did not repeat its training .*at epoch 1"):
        run_compare(load_config(path), log=logs.append)
    assert not any("teacher: training" in m for m in logs)  # no epoch is spent to learn it again
    logs.clear()
    with pytest.raises(StaleRunError, match="inh/seed0"):  # the inherited run was trained against the record
        run_compare(load_config(path), new_teacher=True, log=logs.append)
    assert "is another network" in "\n".join(logs)
    done = json.loads((folder / "done.json").read_text())
    assert done["supersedes"] and done["machine"] == {**machine_record(), "threads": 1}
    assert len((folder / "metrics.jsonl").read_text().splitlines()) == 2


def test_new_teacher_is_refused_for_a_pretrained_teacher(capsys):
    from inhernet.cli import main

    root = Path(__file__).resolve().parents[1]
    assert main(["compare", str(root / "configs" / "text_demo.yaml"), "--new-teacher"]) != 0
    err = capsys.readouterr().err
    assert "--new-teacher" in err and "pretrained model, never retrained" in err


def test_plain_students_train_while_another_process_trains_the_teacher(tmp_path):
    """The second process of a shared comparison does not idle while the first trains the teacher: it
    trains the rows that never see the teacher, then waits."""
    import threading
    import time

    from inhernet.compare.basics import file_lock
    from inhernet.compare.teacher import teacher_in_training_elsewhere

    cfg = tiny_config(tmp_path, methods=[{"name": "student", "kind": "student"},
                                         {"name": "inh", "kind": "inhernet", "inherit": {"rank": 4, "heads": 2}}])
    cfg["schedule"]["epochs"] = 1
    loaded = load_config(write_cfg(tmp_path, cfg))
    folder = teacher_folder(loaded)
    lock = folder.with_name(folder.name + ".lock")
    logs: list[str] = []
    with file_lock(lock, wait=True):  # "another process" is training the teacher
        assert teacher_in_training_elsewhere(loaded)
        worker = threading.Thread(target=run_compare, args=(loaded,), kwargs={"log": logs.append})
        worker.start()
        deadline = time.time() + 300
        while not (tmp_path / "out" / "runs" / "student" / "seed0" / "done.json").exists():
            assert time.time() < deadline and worker.is_alive(), logs
            time.sleep(0.2)
        time.sleep(0.5)
        assert not (tmp_path / "out" / "runs" / "inh" / "seed0" / "done.json").exists()  # that one waits
    worker.join(timeout=300)
    text = "\n".join(logs)
    assert "plain-student run(s) meanwhile" in text
    assert text.index("student seed 0: training") < text.index("teacher: training resnet14")
    assert "student seed 0: done, skipped" in text and "inh seed 0: training" in text
    assert (tmp_path / "out" / "runs" / "inh" / "seed0" / "done.json").is_file()


def test_plain_student_rows_alone_do_not_need_the_teacher(tmp_path):
    cfg = tiny_config(tmp_path, methods=[{"name": "student", "kind": "student"},
                                         {"name": "inh", "kind": "inhernet", "inherit": {"rank": 4, "heads": 2}}])
    cfg["schedule"]["epochs"] = 1
    loaded = load_config(write_cfg(tmp_path, cfg))
    logs: list[str] = []
    assert run_compare(loaded, methods=["student"], log=logs.append) is None  # no report without a teacher
    assert "the report waits for the teacher" in "\n".join(logs)
    assert (tmp_path / "out" / "runs" / "student" / "seed0" / "done.json").is_file()
    assert not (teacher_folder(loaded) / "done.json").exists() and not (tmp_path / "out" / "runs" / "inh").exists()
    logs.clear()
    res = run_compare(loaded, log=logs.append)  # then the full command trains the teacher and reuses the student
    assert "student seed 0: done, skipped" in "\n".join(logs)
    assert {m["name"]: m["complete"] for m in res["methods"]} == {"student": True, "inh": True}


def test_a_clone_of_the_records_rebuilds_its_report_without_any_weights(first, tmp_path):
    from inhernet.compare.runner import rebuild_report

    src, _ = first
    _clone_records(src / "out", tmp_path / "out")
    before = json.loads((tmp_path / "out" / "results.json").read_text())
    logs: list[str] = []
    res = rebuild_report(tmp_path / "out", latency=True, log=logs.append)
    assert "no weights at" in "\n".join(logs)
    assert res["teacher"]["params"] == before["teacher"]["params"] and res["teacher"]["flops"] == before["teacher"]["flops"]
    assert [m["test_acc_mean"] for m in res["methods"]] == [m["test_acc_mean"] for m in before["methods"]]


def test_teacher_threads_train_the_teacher_and_are_recorded(tmp_path):
    """``teacher.threads``: the teacher trains at that many intra-op threads (recorded in its machine,
    not in its cache key); the methods' runs and the caller keep theirs."""
    cfg = tiny_config(tmp_path, methods=[{"name": "student", "kind": "student"}])
    cfg["schedule"]["epochs"] = 1
    cfg["teacher"] = {**cfg["teacher"], "threads": 2}
    loaded = load_config(write_cfg(tmp_path, cfg))
    plain = load_config(write_cfg(tmp_path, {**cfg, "teacher": {k: v for k, v in cfg["teacher"].items() if k != "threads"}},
                                  name="plain.yaml"))
    assert teacher_folder(loaded) == teacher_folder(plain)  # the same teacher, cached under the same key
    run_compare(loaded, log=lambda m: None)
    assert torch.get_num_threads() == 1  # back to trainer.threads after the teacher
    done = json.loads((teacher_folder(loaded) / "done.json").read_text())
    assert done["machine"]["threads"] == 2
    run = json.loads((tmp_path / "out" / "runs" / "student" / "seed0" / "done.json").read_text())
    assert run["final"]["test/acc"] is not None


def test_teacher_threads_must_be_positive(tmp_path):
    from inhernet.compare import CompareConfigError

    cfg = tiny_config(tmp_path)
    cfg["teacher"] = {**cfg["teacher"], "threads": 0}
    with pytest.raises(CompareConfigError, match="teacher.threads"):
        load_config(write_cfg(tmp_path, cfg))


def test_a_record_trained_at_another_thread_count_is_not_retrained(first, tmp_path):
    """A retraining at another thread count cannot repeat the record: refused before any epoch."""
    def trained_at_two_threads(cfg, tmp):
        folder = teacher_folder(cfg)
        done = json.loads((folder / "done.json").read_text())
        (folder / "done.json").write_text(json.dumps({**done, "machine": {**done["machine"], "threads": 2}}))

    path = _on_new_machine(first, tmp_path, trained_at_two_threads)
    folder = teacher_folder(load_config(path))
    before = (folder / "done.json").read_text()
    logs: list[str] = []
    with pytest.raises(TeacherRecordError, match=r"trained at 2 thread\(s\) and this training runs at 1.*teacher.threads"):
        run_compare(load_config(path), log=logs.append)
    assert not any("teacher: training" in m for m in logs)
    assert (folder / "done.json").read_text() == before and not (folder / "recorded").exists()


def test_a_new_teacher_interrupted_resumes_as_a_new_teacher(first, tmp_path):
    """``--new-teacher`` leaves a mark while its teacher trains: a resume without the flag goes on with
    that teacher instead of checking it against the record it replaces (and dropping it)."""
    from inhernet.compare.teacher import NEW_TEACHER_MARK, RECORDED

    path = _on_new_machine(first, tmp_path, _legacy_record_of_another_teacher)
    folder = teacher_folder(load_config(path))
    (folder / RECORDED).mkdir()
    for name in ("done.json", "metrics.jsonl"):  # as --new-teacher leaves it when stopped before its first epoch
        (folder / name).rename(folder / RECORDED / name)
    (folder / NEW_TEACHER_MARK).write_text(json.dumps({"replaces": {"test_acc": 0.5}}))
    logs: list[str] = []
    with pytest.raises(StaleRunError, match="inh/seed0"):  # the new teacher superseded the record
        run_compare(load_config(path), log=logs.append)
    assert "resuming the new teacher" in "\n".join(logs)
    done = json.loads((folder / "done.json").read_text())
    assert done["supersedes"] and not (folder / NEW_TEACHER_MARK).exists() and not (folder / RECORDED).exists()


# --- restoring a teacher's weights (``inhernet compare CONFIG --teacher-weights PATH``) ----------------

def _teacher_copy(first, tmp: Path) -> Path:
    """A copy of the trained teacher's model folder, as another machine (or git history) would hold it."""
    src, cfg = first
    folder = teacher_folder(load_config(write_cfg(src, cfg)))
    dst = tmp / "elsewhere" / "model"
    shutil.copytree(folder / "model", dst)
    return dst


def _legacy_record(cfg, tmp):
    """A record from before digests were kept (the committed resnet56 teacher's kind)."""
    folder = teacher_folder(cfg)
    done = json.loads((folder / "done.json").read_text())
    done.pop("weights_digest")
    (folder / "done.json").write_text(json.dumps(done))


@pytest.mark.parametrize("legacy", [False, True], ids=["digest", "metrics"])
def test_restored_teacher_weights_are_checked_and_its_runs_stand(first, tmp_path, legacy):
    from inhernet.compare import restore_teacher

    path = _on_new_machine(first, tmp_path, _legacy_record if legacy else None)
    source = _teacher_copy(first, tmp_path)
    source_bytes = {p.name: p.read_bytes() for p in source.iterdir()}
    cfg = load_config(path)
    folder = teacher_folder(cfg)
    metrics = (folder / "metrics.jsonl").read_text()
    logs: list[str] = []
    record = restore_teacher(cfg, source, log=logs.append)
    assert {p.name: p.read_bytes() for p in source.iterdir()} == source_bytes  # only read
    (note,) = record["restored"]
    assert note["checked"].startswith("evaluated here: test accuracy" if legacy else "weight digest")
    assert note["from"] == str(source) and note["on"]["cpu"] == cpu_name()
    assert json.loads((folder / "done.json").read_text()) == record
    assert record["weights_digest"] == json.loads((first[0] / "cache").joinpath(
        folder.relative_to(tmp_path / "cache"), "done.json").read_text())["weights_digest"]
    assert (folder / "metrics.jsonl").read_text() == metrics
    # the comparison then uses it: no retraining, the recorded runs stand
    logs.clear()
    res = run_compare(load_config(path), log=logs.append)
    text = "\n".join(logs)
    assert "reusing resnet14" in text and "teacher: training" not in text
    assert "inh seed 0: done, skipped" in text
    assert {m["name"]: m["complete"] for m in res["methods"]} == {"student": True, "inh": True}
    # a second restoration of the same weights changes nothing
    assert restore_teacher(load_config(path), source, log=logs.append)["restored"] == record["restored"]
    assert "already holds these weights" in logs[-1]


def _perturbed(source: Path, tmp: Path, scale: float) -> Path:
    from safetensors.torch import load_file, save_file

    dst = tmp / "other" / "model"
    shutil.copytree(source, dst)
    state = load_file(dst / "model.safetensors")
    torch.manual_seed(0)
    save_file({k: (v + scale * torch.randn_like(v) if v.is_floating_point() else v) for k, v in state.items()},
              dst / "model.safetensors")
    return dst


@pytest.mark.parametrize("legacy", [False, True], ids=["digest", "metrics"])
def test_other_weights_are_refused_and_nothing_changes(first, tmp_path, legacy):
    from inhernet.compare import CompareError, restore_teacher

    path = _on_new_machine(first, tmp_path, _legacy_record if legacy else None)
    other = _perturbed(_teacher_copy(first, tmp_path), tmp_path, 0.05)
    cfg = load_config(path)
    folder = teacher_folder(cfg)
    before = {p.relative_to(folder): p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    match = r"is not the teacher .* records: evaluated here, its test" if legacy else r"another network"
    with pytest.raises(CompareError, match=match):
        restore_teacher(cfg, other, log=lambda m: None)
    assert {p.relative_to(folder): p.read_bytes() for p in folder.rglob("*") if p.is_file()} == before


def test_restoring_is_refused_without_a_record_or_for_a_given_teacher(first, tmp_path):
    from inhernet.compare import CompareError, restore_teacher

    source = _teacher_copy(first, tmp_path)
    src, cfg = first
    fresh = {**cfg, "out_dir": str(tmp_path / "out"), "cache_dir": str(tmp_path / "empty")}
    with pytest.raises(CompareError, match="no record of a trained resnet14.*teacher.path"):
        restore_teacher(load_config(write_cfg(tmp_path, fresh)), source)
    given = {**fresh, "teacher": {**cfg["teacher"], "path": str(source)}}
    with pytest.raises(CompareError, match="gives its teacher by teacher.path"):
        restore_teacher(load_config(write_cfg(tmp_path, given, name="given.yaml")), source)
    with pytest.raises(CompareError, match="does not exist"):
        restore_teacher(load_config(write_cfg(tmp_path, fresh)), tmp_path / "nowhere")
    assert not (tmp_path / "empty").exists() or not any((tmp_path / "empty").rglob("*.safetensors"))


def test_restoring_ends_an_interrupted_retraining_with_the_committed_record(first, tmp_path):
    """A retraining stopped here has set the record aside and left epochs and a checkpoint: restoring the
    weights puts the committed record and metrics back and drops the retraining's."""
    from inhernet.compare import restore_teacher
    from inhernet.compare.teacher import RECORDED

    path = _on_new_machine(first, tmp_path)
    folder = teacher_folder(load_config(path))
    record, rows = (folder / "done.json").read_text(), (folder / "metrics.jsonl").read_text()
    (folder / RECORDED).mkdir()
    for name in ("done.json", "metrics.jsonl"):
        (folder / name).rename(folder / RECORDED / name)
    (folder / "metrics.jsonl").write_text(rows.splitlines()[0] + "\n")  # the retraining's first epoch
    (folder / "checkpoints").mkdir(exist_ok=True)
    (folder / "checkpoints" / "last.ckpt").write_bytes(b"partial")
    restored = restore_teacher(load_config(path), _teacher_copy(first, tmp_path), log=lambda m: None)
    assert {k: v for k, v in restored.items() if k != "restored"} == json.loads(record)
    assert (folder / "metrics.jsonl").read_text() == rows
    assert not (folder / "checkpoints").exists() and not (folder / RECORDED).exists()


def test_weights_replaced_by_hand_in_the_cache_are_refused(first, tmp_path):
    from inhernet.compare import CompareError

    path = _on_new_machine(first, tmp_path)
    folder = teacher_folder(load_config(path))
    other = _perturbed(_teacher_copy(first, tmp_path), tmp_path, 0.01)
    shutil.copytree(other, folder / "model", dirs_exist_ok=True)
    with pytest.raises(CompareError, match=r"are not the teacher .* records .*--teacher-weights"):
        run_compare(load_config(path), log=lambda m: None)


def test_cli_teacher_weights(first, tmp_path, capsys):
    from inhernet.cli import main

    path = _on_new_machine(first, tmp_path)
    source = _teacher_copy(first, tmp_path)
    assert main(["compare", str(path), "--teacher-weights", str(source), "--status"]) == 0
    out = capsys.readouterr().out
    assert "restoring it into" in out or "restoring it into" in capsys.readouterr().err
    assert "teacher resnet14: done" in out and "record only" not in out
    root = Path(__file__).resolve().parents[1]
    assert main(["compare", str(root / "configs" / "text_demo.yaml"), "--teacher-weights", str(source)]) != 0
    assert "--teacher-weights" in capsys.readouterr().err


def _history_script():
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "teacher_from_history.py"
    spec = importlib.util.spec_from_file_location("teacher_from_history", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _git(repo: Path, *args: str) -> None:
    import subprocess

    subprocess.run(["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t", *args], check=True,
                   capture_output=True)


@pytest.mark.parametrize("history", ["weights", "other weights", "none"])
def test_teacher_from_history_restores_weights_a_commit_held(first, tmp_path, history, capsys):
    """benchmarks/teacher_from_history.py: in a repository whose history once held the teacher's weights
    (committed, then removed from the tree), they come back through the checked restoration; weights of
    another network in the history, or none at all, leave the cache as it was (exit 1, said why)."""
    if shutil.which("git") is None:
        pytest.skip("git is not installed: the script reads the repository's history")
    repo = tmp_path / "repo"
    path = _on_new_machine(first, repo)  # records only, as a clone has them
    folder = teacher_folder(load_config(path))
    model = folder / "model"
    _git(repo, "init", "-q")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-q", "-m", "records")
    if history != "none":
        shutil.copytree(_teacher_copy(first, tmp_path), model, dirs_exist_ok=True)
        if history == "other weights":
            shutil.copy(_perturbed(model, tmp_path, 0.05) / "model.safetensors", model / "model.safetensors")
        _git(repo, "add", "-f", str(model.relative_to(repo)))
        _git(repo, "commit", "-q", "-m", "the teacher's weights")
        _git(repo, "rm", "-q", "-r", "--cached", str(model.relative_to(repo)))
        _git(repo, "commit", "-q", "-m", "weights out of git")
        shutil.rmtree(model)
    before = {p.relative_to(folder): p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    code = _history_script().main([str(path)])
    out = capsys.readouterr().out
    if history == "weights":
        assert code == 0, out
        assert "weights found in commit" in out and "teacher: restored (evaluated here" not in out  # by digest
        record = json.loads((folder / "done.json").read_text())
        assert record["restored"][-1]["from"].startswith("git ") and (model / "model.safetensors").is_file()
        assert "reusing resnet14" in "\n".join(_run_logs(path))
        assert _history_script().main([str(path)]) == 0 and "its weights are here" in capsys.readouterr().out
    else:
        assert code == 1, out
        assert ("another network" if history == "other weights" else "holds no weights") in out
        assert {p.relative_to(folder): p.read_bytes() for p in folder.rglob("*") if p.is_file()} == before


def _run_logs(path: Path) -> list[str]:
    logs: list[str] = []
    run_compare(load_config(path), log=logs.append)
    return logs
