"""The `inhernet` command: help texts, and a tiny train-teacher -> inherit -> evaluate round trip."""

import json
import subprocess
import sys

import pytest

from inhernet.cli import build_parser, main

COMMANDS = ["train-teacher", "inherit", "finetune", "evaluate", "compare", "report", "models"]


def test_help(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for c in COMMANDS:
        assert c in out
    assert "examples:" in out


@pytest.mark.parametrize("command", COMMANDS)
def test_subcommand_help(command, capsys):
    with pytest.raises(SystemExit) as e:
        main([command, "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "usage: inhernet " + command in out
    if command in ("train-teacher", "finetune", "compare"):
        for flag in ("--devices", "--num-nodes", "--strategy"):
            assert flag in out
    if command == "inherit":
        for flag in ("--rank", "--heads", "--budget", "--init", "--gate", "--structure"):
            assert flag in out
    if command == "compare":
        assert "--force" in out and "--resume" in out


def test_module_entry_point():
    proc = subprocess.run([sys.executable, "-m", "inhernet.cli", "--help"], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0 and "train-teacher" in proc.stdout


def test_no_command_prints_help(capsys):
    assert main([]) == 2
    assert "usage: inhernet" in capsys.readouterr().out


def test_train_inherit_evaluate_roundtrip(tmp_path, capsys):
    pytest.importorskip("lightning")
    pytest.importorskip("sklearn")
    data = ["--data", "digits", "--subset", "120", "--test-subset", "60"]
    t = tmp_path / "teacher"
    assert main(["train-teacher", "--arch", "resnet8", "--epochs", "1", "--out", str(t), "--progress", "none",
                 "--threads", "1", *data]) == 0
    assert (t / "model" / "model.safetensors").is_file() and (t / "checkpoints" / "last.ckpt").is_file()
    capsys.readouterr()
    inh = tmp_path / "inh"
    assert main(["inherit", str(t), "--rank", "2", "--heads", "2", "--out", str(inh)]) == 0
    out = capsys.readouterr().out
    assert "layer" in out and "inherited" in out and "saved" in out
    assert main(["evaluate", str(inh), "--json", *data]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["inherited"] and res["arch"] == "resnet8" and res["n"] == 60 and 0 <= res["acc"] <= 1
    # the teacher's checkpoint evaluates like its saved model
    assert main(["evaluate", str(t / "checkpoints" / "last.ckpt"), "--json", *data]) == 0
    a = json.loads(capsys.readouterr().out)
    assert main(["evaluate", str(t), "--json", *data]) == 0
    b = json.loads(capsys.readouterr().out)
    assert a["acc"] == b["acc"] and a["params"] == b["params"]
    # errors are one clear line and exit code 2
    assert main(["evaluate", str(tmp_path / "missing"), *data]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["compare", str(tmp_path / "nope.yaml")]) == 2
    assert "not found" in capsys.readouterr().err


def test_budget_argument_parsing():
    from inhernet.cli import _parse_budget

    assert _parse_budget("12000", 10, 1) == 12000
    assert _parse_budget("0.25", 10, 1) == 0.25
    m = _parse_budget("resnet8", 10, 1)
    assert sum(p.numel() for p in m.parameters()) > 0
    assert build_parser().parse_args(["compare", "x.yaml", "--force"]).force
