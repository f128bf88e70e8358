"""One validation for every entry point: the CLI, a compare config and the Python fit() reject the
same bad values, with a message naming the option, before any folder is created."""

import math

import pytest
from torch import nn

pytest.importorskip("lightning")

from inhernet.compare import CompareConfig, CompareConfigError  # noqa: E402
from inhernet.config import ConfigError  # noqa: E402
from inhernet.train import fit  # noqa: E402
from inhernet.train.validate import check_folder_name, check_latency_options  # noqa: E402

#: (field, bad value) for the schedule, shared by every entry point below
BAD_SCHEDULE = [
    ("epochs", 0), ("epochs", -3), ("batch_size", 0), ("lr", 0.0), ("lr", -0.1), ("lr", math.nan),
    ("lr", math.inf), ("momentum", -0.5), ("momentum", math.nan), ("weight_decay", -1e-4),
    ("weight_decay", math.inf),
]


def _ids(cases):
    return [f"{f}={v}" for f, v in cases]


@pytest.mark.parametrize("field,value", BAD_SCHEDULE + [("eval_batch_size", 0), ("milestones", [0]),
                                                        ("gamma", 0.0), ("epochs", 2.5), ("epochs", True)],
                         ids=_ids(BAD_SCHEDULE) + ["eval_batch_size=0", "milestones=[0]", "gamma=0", "epochs=2.5",
                                                   "epochs=True"])
def test_fit_rejects_bad_options_before_writing(tmp_path, field, value):
    out = tmp_path / "run"
    with pytest.raises(ConfigError, match=rf"^{field}="):
        fit(nn.Linear(4, 2), data=None, out_dir=out, progress=False, **{field: value})
    assert not out.exists()


CLI_FLAG = {"epochs": "--epochs", "batch_size": "--batch-size", "lr": "--lr", "momentum": "--momentum",
            "weight_decay": "--weight-decay"}


@pytest.mark.parametrize("command", ["train-teacher", "finetune"])
@pytest.mark.parametrize("field,value", BAD_SCHEDULE, ids=_ids(BAD_SCHEDULE))
def test_cli_rejects_bad_options_before_writing(tmp_path, capsys, command, field, value):
    from inhernet.cli import main

    out = tmp_path / "out"
    source = ["--arch", "resnet8"] if command == "train-teacher" else [str(tmp_path / "model")]
    flag = CLI_FLAG[field]
    rc = main([command, *source, "--out", str(out), "--data", "digits", "--progress", "none", flag, str(value)])
    err = capsys.readouterr().err
    assert rc == 2
    assert f"{flag}=" in err and "Traceback" not in err
    assert not out.exists()


@pytest.mark.parametrize("field,value", BAD_SCHEDULE, ids=_ids(BAD_SCHEDULE))
def test_compare_config_rejects_bad_schedule(tmp_path, field, value):
    raw = _compare_raw(tmp_path, schedule={field: value})
    with pytest.raises(CompareConfigError, match=rf"schedule\.{field}=") as err:
        CompareConfig.from_dict(raw)
    assert isinstance(err.value, ConfigError)  # one kind of error, whichever entry point
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("section,values,option", [
    ("latency", {"rounds": 0}, "latency.rounds"),
    ("latency", {"iters": 0}, "latency.iters"),
    ("latency", {"batch_size": 0}, "latency.batch_size"),
    ("teacher", {"arch": "resnet14", "lr": -1.0}, "teacher.lr"),
    ("teacher", {"arch": "resnet14", "batch_size": 0}, "teacher.batch_size"),
    ("teacher", {"arch": "resnet14", "epochs": 0}, "teacher.epochs"),
])
def test_compare_config_rejects_bad_latency_and_teacher(tmp_path, section, values, option):
    with pytest.raises(CompareConfigError, match=rf"{option}="):
        CompareConfig.from_dict(_compare_raw(tmp_path, **{section: values}))


UNSAFE_NAMES = ["..", "../escape", ".hidden", "a/b", "a\\b", "with space", "semi;colon", "x" * 129, "plus+sign"]


@pytest.mark.parametrize("name", UNSAFE_NAMES)
def test_compare_config_rejects_unsafe_method_names(tmp_path, name):
    raw = _compare_raw(tmp_path)
    raw["methods"] = [{"name": name, "kind": "student"}]
    with pytest.raises(CompareConfigError, match="method name .* is not a safe folder name"):
        CompareConfig.from_dict(raw)


@pytest.mark.parametrize("name", ["student", "inh_r8-h3", "v1.2", "_x", "-x"])
def test_safe_method_names_pass(name):
    check_folder_name("method name", name)


def test_compare_cli_rejects_before_writing(tmp_path, capsys):
    """Through the command line: a ``..`` method name and ``--epochs 0`` (an override that used to be
    dropped) fail with rc 2 and create no out_dir."""
    import yaml

    from inhernet.cli import main

    raw = _compare_raw(tmp_path)
    raw["methods"] = [{"name": "..", "kind": "student"}]
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert main(["compare", str(path)]) == 2
    assert "not a safe folder name" in capsys.readouterr().err
    raw["methods"] = [{"name": "student", "kind": "student"}]
    path.write_text(yaml.safe_dump(raw))
    assert main(["compare", str(path), "--epochs", "0"]) == 2
    assert "schedule.epochs=0" in capsys.readouterr().err
    assert not (tmp_path / "out").exists() and not (tmp_path / "cache").exists()


def test_measure_latency_rejects_zero_rounds():
    from inhernet.train import measure_latency

    with pytest.raises(ConfigError, match="rounds=0"):
        measure_latency({"m": nn.Linear(4, 2)}, (1, 4), rounds=0)
    with pytest.raises(ConfigError, match="threads=0"):
        check_latency_options(rounds=1, iters=1, threads=0)


def _compare_raw(tmp_path, **sections):
    raw = {"out_dir": str(tmp_path / "out"), "cache_dir": str(tmp_path / "cache"),
           "data": {"name": "digits", "subset": 100}, "teacher": {"arch": "resnet14", "epochs": 1},
           "student": {"arch": "resnet8"}, "methods": [{"name": "student", "kind": "student"}]}
    raw.update(sections)
    return raw
