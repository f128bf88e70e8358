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

from inhernet.compare import StaleRunError, load_config, run_compare  # noqa: E402
from inhernet.compare.runner import teacher_folder, trained_against  # noqa: E402
from inhernet.utils import weights_digest  # noqa: E402

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
    logs: list[str] = []
    with pytest.raises(StaleRunError, match=r"another teacher.*inh/seed0.*--force") as err:
        run_compare(load_config(path), log=logs.append)
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


def test_a_record_without_digest_is_checked_by_its_metrics(first, tmp_path):
    """Records written before digests existed: the retrained teacher must repeat every metric of
    every epoch; one differing value makes it another network."""
    def legacy_record_of_another_teacher(cfg, tmp):
        folder = teacher_folder(cfg)
        done = json.loads((folder / "done.json").read_text())
        done.pop("weights_digest")
        (folder / "done.json").write_text(json.dumps(done))
        rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
        rows[0]["test/loss"] += 1e-6
        (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        for run in (tmp / "out" / "runs").glob("*/seed0/done.json"):
            d = json.loads(run.read_text())
            d.pop("teacher_digest", None)
            run.write_text(json.dumps(d))

    path = _on_new_machine(first, tmp_path, legacy_record_of_another_teacher)
    logs: list[str] = []
    with pytest.raises(StaleRunError, match="inh/seed0"):
        run_compare(load_config(path), log=logs.append)
    assert "is another network" in "\n".join(logs)


def test_plain_students_train_while_another_process_trains_the_teacher(tmp_path):
    """The second process of a shared comparison does not idle while the first trains the teacher: it
    trains the rows that never see the teacher, then waits."""
    import threading
    import time

    from inhernet.compare.runner import file_lock, teacher_in_training_elsewhere

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
