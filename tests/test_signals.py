"""SIGTERM is handled like Ctrl-C: the checkpoint of the last finished epoch is kept, the command says
how to resume and exits non-zero (143), and the same command again resumes and finishes."""

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn

pytest.importorskip("lightning")

from lightning.pytorch.callbacks import Callback  # noqa: E402

from inhernet.train import fit, read_metrics  # noqa: E402
from inhernet.train.signals import TrainingInterrupted, sigterm_as_interrupt  # noqa: E402


def _wait_for(path: Path, proc=None, timeout: float = 300.0) -> None:
    t0 = time.monotonic()
    while not path.is_file():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the command ended (rc {proc.returncode}) before writing {path}")
        if time.monotonic() - t0 > timeout:
            raise AssertionError(f"{path} was not written within {timeout} s")
        time.sleep(0.02)


def test_sigterm_stops_train_teacher_and_the_same_command_resumes(tmp_path, capsys):
    pytest.importorskip("sklearn")
    from inhernet.cli import main

    out = tmp_path / "teacher"
    epochs = 12  # the signal comes after epoch 1 of 12: ample time on a loaded machine, little to train
    args = ["train-teacher", "--arch", "resnet8", "--epochs", str(epochs), "--out", str(out), "--data", "digits",
            "--subset", "120", "--test-subset", "60", "--progress", "none", "--threads", "1"]
    proc = subprocess.Popen([sys.executable, "-m", "inhernet.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        _wait_for(out / "checkpoints" / "last.ckpt", proc)
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143, (proc.returncode, stdout, stderr)
    assert "stopped by SIGTERM" in stderr and "Traceback" not in stderr
    assert "to resume, run the same command again: inhernet train-teacher" in stderr
    assert (out / "checkpoints" / "last.ckpt").is_file()
    done = len(read_metrics(out))
    assert 1 <= done < epochs
    assert not json.loads((out / "run.json").read_text())["finished"]
    assert not (out / "model").exists()

    # the same command again (in this process, to spare a second start-up): resumes and finishes
    assert main(args) == 0
    assert "resuming it from its last checkpoint" in capsys.readouterr().out
    rows = read_metrics(out)
    assert [r["epoch"] for r in rows] == list(range(epochs))
    assert json.loads((out / "run.json").read_text())["finished"]
    assert (out / "model" / "model.safetensors").is_file()


# ------------------------------------------------------------------------------ fit() in-process
def _data(n=48, classes=3):
    g = torch.Generator().manual_seed(0)

    def split(k):
        x = torch.randn(k, 1, 6, 6, generator=g)
        return SimpleNamespace(x=x, y=(x[:, 0].mean((1, 2)) > 0).long() + (x[:, 0, :3].mean((1, 2)) > 0.3).long())

    return SimpleNamespace(train=split(n), val=split(12), test=split(12), num_classes=classes)


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(64, 3))


class SigtermAt(Callback):
    """Send this process SIGTERM at the end of one epoch, or after its first batch."""

    def __init__(self, epoch: int, mid_epoch: bool = False) -> None:
        self.epoch, self.mid_epoch = epoch, mid_epoch

    def on_train_batch_end(self, trainer, *args):
        if self.mid_epoch and trainer.current_epoch == self.epoch:
            self.mid_epoch = False
            os.kill(os.getpid(), signal.SIGTERM)

    def on_train_epoch_end(self, trainer, module):
        if not self.mid_epoch and trainer.current_epoch == self.epoch:
            os.kill(os.getpid(), signal.SIGTERM)


KW = dict(epochs=4, batch_size=16, progress=False, seed=0, augment="none")


@pytest.mark.parametrize("mid_epoch", [False, True], ids=["epoch_end", "mid_epoch"])
def test_fit_keeps_the_checkpoint_on_sigterm_and_resumes_exactly(tmp_path, mid_epoch):
    handler = signal.getsignal(signal.SIGTERM)
    with pytest.raises(TrainingInterrupted) as err:
        fit(_model(), _data(), out_dir=tmp_path / "run", callbacks=[SigtermAt(1, mid_epoch)], **KW)
    e = err.value
    assert e.signum == signal.SIGTERM and e.exit_code == 143 and isinstance(e, KeyboardInterrupt)
    assert e.checkpoint == tmp_path / "run" / "checkpoints" / "last.ckpt" and e.checkpoint.is_file()
    assert str(tmp_path / "run") in str(e) and "SIGTERM" in str(e)
    # at an epoch's end Lightning stops after that epoch's checkpoint; mid-epoch the last finished one is kept
    assert len(read_metrics(tmp_path / "run")) == (1 if mid_epoch else 2)
    assert signal.getsignal(signal.SIGTERM) is handler  # the handlers it found are back

    resumed = fit(_model(), _data(), out_dir=tmp_path / "run", **KW)
    assert resumed.resumed_from_epoch == (1 if mid_epoch else 2)
    whole = fit(_model(), _data(), out_dir=tmp_path / "whole", **KW)
    assert [r["epoch"] for r in resumed.metrics] == list(range(KW["epochs"]))
    for a, b in zip(resumed.model.state_dict().values(), whole.model.state_dict().values()):
        assert torch.equal(a, b)


def test_sigterm_before_any_checkpoint_says_there_is_none(tmp_path):
    with pytest.raises(TrainingInterrupted) as err:
        fit(_model(), _data(), out_dir=tmp_path / "run", callbacks=[SigtermAt(0, mid_epoch=True)], **KW)
    assert err.value.checkpoint is None and "no checkpoint yet" in str(err.value)


def test_ctrl_c_in_fit_is_an_interrupt_not_lightnings_exit_1(tmp_path):
    """Lightning answers Ctrl-C inside Trainer.fit with sys.exit(1) and leaves SIGINT ignored."""

    class CtrlC(Callback):
        def on_train_epoch_end(self, trainer, module):
            if trainer.current_epoch == 1:
                raise KeyboardInterrupt

    sigint = signal.getsignal(signal.SIGINT)
    with pytest.raises(TrainingInterrupted) as err:
        fit(_model(), _data(), out_dir=tmp_path / "run", callbacks=[CtrlC()], **KW)
    assert err.value.signum == signal.SIGINT and err.value.exit_code == 130 and err.value.checkpoint is not None
    assert signal.getsignal(signal.SIGINT) is sigint


def test_sigterm_as_interrupt_outside_training():
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(TrainingInterrupted) as err:
        with sigterm_as_interrupt():
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # the handler raises before this ends
    assert err.value.exit_code == 143 and err.value.out_dir is None
    assert signal.getsignal(signal.SIGTERM) is before


def test_sigterm_during_compare_keeps_the_run_and_a_rerun_finishes(tmp_path):
    """compare trains each run with fit(): a SIGTERM stops the whole comparison (it is not one failed
    run among others), and run_compare again resumes the interrupted run."""
    pytest.importorskip("sklearn")
    from inhernet.compare import CompareConfig, run_compare

    raw = {"out_dir": str(tmp_path / "out"), "cache_dir": str(tmp_path / "cache"),
           "data": {"name": "digits", "subset": 160, "test_subset": 60, "val_fraction": 0.05},
           "teacher": {"arch": "resnet8", "epochs": 1}, "student": {"arch": "resnet8"},
           "schedule": {"epochs": 30, "batch_size": 64}, "seeds": [0],
           "methods": [{"name": "student", "kind": "student"}], "trainer": {"progress": False, "threads": 1},
           "latency": {"enabled": False}}
    run = tmp_path / "out" / "runs" / "student" / "seed0"

    def kill_when_checkpointed():
        _wait_for(run / "checkpoints" / "last.ckpt")
        os.kill(os.getpid(), signal.SIGTERM)

    with sigterm_as_interrupt():
        killer = threading.Thread(target=kill_when_checkpointed, daemon=True)
        killer.start()
        with pytest.raises(TrainingInterrupted) as err:
            run_compare(CompareConfig.from_dict(raw), log=lambda m: None, report=False)
        killer.join(timeout=60)
    assert err.value.exit_code == 143 and err.value.out_dir == run
    assert not (run / "done.json").exists() and 1 <= len(read_metrics(run)) < 30
    results = run_compare(CompareConfig.from_dict(raw), log=lambda m: None, report=False)
    assert (run / "done.json").is_file() and len(read_metrics(run)) == 30
    assert results is not None
