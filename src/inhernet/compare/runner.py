"""Run a comparison: every method x seed under one schedule, resumable, then the report.

Layout of ``out_dir``::

    config.yaml                  the validated config of the last run (written after validation)
    teacher.json                 the teacher used: where it is, its accuracy, params, FLOPs
    runs/<method>/seed<k>/       one run: run.json (its identity), metrics.jsonl,
                                 checkpoints/last.ckpt, model/ (final weights), done.json —
                                 or failed.json when training diverged (NaN/Inf loss or gradient)
    results.json  results.md  acc_vs_epoch.png  acc_vs_params.png

A run with ``done.json`` is finished and skipped; a run with only a checkpoint resumes from it. A run
that diverges is stopped (:class:`~inhernet.train.TrainingDivergedError`), recorded in ``failed.json``
and shown as failed in the report, never as a result; the other runs go on, and the invocation
reports the failures at the end (the CLI exits non-zero). A re-run skips it (it would diverge again)
until ``force=True`` retrains it. A run
folder whose identity (a hash of data, teacher, schedule, method and seed) differs from what the
current config asks for is never overwritten silently: that is an error unless ``force=True``.
Everything is validated (config, data, teacher) before anything is written.

**A run counts only with the teacher it was trained against.** The teacher's ``done.json`` records
the digest of its weights (:func:`inhernet.utils.weights_digest`) and every run records it as
``teacher_digest``. A cached teacher whose record is there but whose weights are not (a new machine,
or a clone of committed records) is retrained and checked against the record: the same weights (or,
for a record without a digest, the same value of every metric at every epoch) and the recorded runs
stand; another network (CPU training repeats bit for bit only on the same machine type, library
build and thread count) and the record is superseded (kept in ``supersedes``), the runs trained
against the old teacher are neither skipped nor reported, and training them again is an error
unless ``force=True`` (a plain student never sees the teacher and always counts).

**Several processes share one comparison**: start ``inhernet compare CONFIG`` two (or more) times,
on one machine or on machines sharing the folder. Each run is claimed with a lock file
(``out_dir/locks/``): a process skips a run another one is training and takes the next; a teacher
being trained is waited for, not trained twice. Every process writes the report of what is
finished when it ends; the last one writes the complete table (``inhernet report`` rebuilds it any
time). Not used under multi-device strategies, whose processes run the same runs together.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import time
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import torch
from lightning.pytorch.callbacks import Callback
from torch import nn

from inhernet.errors import TrainingError
from inhernet.train.fit import global_rank
from inhernet.train.identity import file_digest
from inhernet.utils import read_json, stable_hash, write_json

from .config import CompareConfig, MethodConfig

__all__ = ["CompareError", "StaleRunError", "TeacherRecordError", "run_compare", "prepare_teacher", "global_rank", "build_method_model",
           "plan_runs", "select_runs", "teacher_folder", "teacher_key", "trained_against"]


class CompareError(TrainingError):
    """A comparison cannot proceed; the message says why. A :class:`inhernet.errors.TrainingError`
    (so also a ``RuntimeError``, as before)."""


class StaleRunError(CompareError):
    """Existing run folders were produced by a different config."""


class TeacherRecordError(CompareError):
    """A teacher retrained from its config (its weights were not here) left its committed record: this
    machine does not repeat that training. Nothing is replaced; ``new_teacher=True`` (``inhernet compare
    --new-teacher``) trains a new teacher instead, and the runs recorded against the old one stop counting."""




def _data_identity(cfg: CompareConfig) -> dict:
    d = asdict(cfg.data)
    d.pop("root", None)
    from inhernet.data import data_file_digest, is_data_path

    if is_data_path(cfg.data.name, cfg.data.root):  # your own files: their contents, so an edit is noticed
        d["digest"] = data_file_digest(cfg.data.name, cfg.data.root)
    return d


def _teacher_schedule(cfg: CompareConfig) -> dict:
    from inhernet.train import scaled_milestones

    s = cfg.schedule
    t = cfg.teacher
    return {
        "epochs": t.epochs,
        "batch_size": t.batch_size or s.batch_size,
        "lr": t.lr if t.lr is not None else s.lr,
        "momentum": s.momentum,
        "weight_decay": s.weight_decay,
        "nesterov": s.nesterov,
        "milestones": scaled_milestones(t.epochs),
        "gamma": s.gamma,
    }


def teacher_key(cfg: CompareConfig) -> str:
    if cfg.teacher.path:
        return "file-" + file_digest(cfg.teacher.path)
    ident = {"data": _data_identity(cfg), "arch": cfg.teacher.arch, "seed": cfg.teacher.seed,
             "schedule": _teacher_schedule(cfg)}
    if cfg.teacher.subset != "same":  # (absent otherwise, so caches made before the option stay valid)
        ident["teacher_subset"] = cfg.teacher.subset
    return stable_hash(ident)


def teacher_folder(cfg: CompareConfig) -> Path:
    """Where a teacher trained by the comparison is cached: ``cache_dir/teachers/<arch>-<key>/``
    (``done.json`` and ``model/`` once finished; ``checkpoints/last.ckpt`` while training)."""
    from inhernet.models import arch_slug

    return Path(cfg.cache_dir) / "teachers" / f"{arch_slug(cfg.teacher.arch)}-{teacher_key(cfg)}"


def _fit_kwargs(cfg: CompareConfig, progress: Any) -> dict:
    tr = cfg.trainer
    return dict(devices=tr.devices, num_nodes=tr.num_nodes, strategy=tr.strategy, accelerator=tr.accelerator,
                precision=tr.precision, channels_last=tr.channels_last, data_on_device=tr.data_on_device,
                compile=tr.compile, progress=progress, quiet=True)


def _info(msg: str) -> None:
    if global_rank() == 0:
        print(msg, flush=True)


def prepare_teacher(cfg: CompareConfig, data: Any, *, progress: Any = True, fit_kwargs: Optional[dict] = None,
                    log: Callable[[str], None] = _info, new_teacher: bool = False) -> tuple[nn.Module, dict]:
    """The teacher model and a dict describing it (path, test accuracy, params, FLOPs, curve).

    ``teacher.path``: loaded and checked against ``teacher.arch`` (an
    :class:`~inhernet.train.ArchitectureMismatchError` otherwise). Else trained once under
    ``cache_dir/teachers/<arch>-<hash>/`` (interrupted training resumes) and reused afterwards.
    A cached record without its weights (a new machine) is retrained and checked epoch by epoch
    against the record: on the first epoch that differs a :class:`TeacherRecordError` stops it
    (``new_teacher=True``: train on, and the new teacher supersedes the record).
    """
    import inhernet
    from inhernet.train import evaluate, load_model
    from inhernet.utils import weights_digest

    t = cfg.teacher
    nc, ic = data.num_classes, data.in_channels
    if t.path:
        model, info = load_model(t.path, expect_arch=t.arch, num_classes=nc, in_channels=ic)
        if info.get("inherited"):
            raise CompareError(f"teacher.path={t.path} is an inherited model; a teacher must be a dense {t.arch}.")
        ev = evaluate(model, data.test)
        return model, {"source": "path", "path": str(info["path"]), "arch": t.arch, "key": teacher_key(cfg),
                       "test_acc": ev["acc"], "params": inhernet.count_parameters(model), "curve": None,
                       "weights_digest": weights_digest(model)}

    key = teacher_key(cfg)
    folder = teacher_folder(cfg)
    args = (cfg, data, folder, key, progress, fit_kwargs, log, new_teacher)
    if not single_process(cfg):
        return _cached_or_trained_teacher(*args)
    lock = _teacher_lock(cfg)
    with file_lock(lock, wait=False) as taken:
        if taken:
            return _cached_or_trained_teacher(*args)
    log(f"teacher: another process is training {t.arch} into {folder}; waiting for it")
    with file_lock(lock, wait=True):
        return _cached_or_trained_teacher(*args)


#: what a teacher's two trainings must agree on, epoch by epoch, to count as one network when no
#: weight digest was recorded (every loss and accuracy; not the timings)
_TIMING_KEYS = ("epoch_time_s",)


def _without_timings(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if k not in _TIMING_KEYS} for row in rows]


def _same_training(a: list[dict], b: list[dict]) -> bool:
    """Whether two ``metrics.jsonl`` recordings agree on every metric of every epoch (timings aside)."""
    return _without_timings(a) == _without_timings(b)


def first_divergence(rows: list[dict], recorded: list[dict]) -> Optional[int]:
    """The index of the first epoch in which a (re)training's ``metrics.jsonl`` rows differ from the
    recorded ones in any metric (timings aside), comparing the epochs both have; None when they agree."""
    for i, (a, b) in enumerate(zip(_without_timings(rows), _without_timings(recorded))):
        if a != b:
            return i
    return None


def _diverged_message(folder: Path, epoch: int, row: dict, old_row: dict, old: dict) -> str:
    from inhernet.utils import machine_record

    here, there = machine_record(), old.get("machine")
    keys = [k for k in sorted(set(row) | set(old_row), key=lambda k: (k != "test/acc", k))
            if k not in _TIMING_KEYS and row.get(k) != old_row.get(k)]
    diff = f"{keys[0]} {row.get(keys[0])} against the recorded {old_row.get(keys[0])}" + (
        f" ({len(keys) - 1} other metric(s) differ too)" if len(keys) > 1 else "")
    where = (f"the record was trained on {there['cpu']} ({there['isa']}, {there['threads']} thread(s), torch "
             f"{there['torch']}), this machine is {here['cpu']} ({here['isa']}, {here['threads']} thread(s), torch "
             f"{here['torch']})" if there else
             f"this machine is {here['cpu']} ({here['isa']}, {here['threads']} thread(s), torch {here['torch']}); "
             "the record does not say what it was trained on")
    return (f"teacher: the retraining of {folder.name} left its record at epoch {epoch + 1}: {diff}. CPU training "
            f"repeats bit for bit only on the same CPU type, thread count and torch build ({where}), so this "
            "machine will not give back the recorded teacher, and the runs recorded against it still count only "
            "with that one. Nothing was replaced: the record stays in "
            f"{folder / RECORDED}, the retraining's epochs in {folder}. To train a new teacher here instead (the "
            "recorded runs then stop counting; `--force` retrains them) run again with `inhernet compare CONFIG "
            "--new-teacher`; to keep the recorded one, run on the machine type that trained it.")


class _RepeatsRecord(Callback):
    """Stops a teacher's retraining after the first epoch whose metrics differ from its record
    (:class:`TeacherRecordError`), not at the end of the schedule. The error is raised once that
    epoch's checkpoint is written (Lightning runs checkpoint callbacks last), so ``--new-teacher``
    resumes from it."""

    def __init__(self, folder: Path, recorded: list[dict], old: dict) -> None:
        self.folder, self.recorded, self.old = folder, recorded, old
        self.error: Optional[TeacherRecordError] = None

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:  # after JsonlMetrics wrote the row
        from inhernet.train import read_metrics

        rows = read_metrics(self.folder)
        i = first_divergence(rows, self.recorded)
        if i is not None:
            self.error = TeacherRecordError(_diverged_message(self.folder, i, rows[i], self.recorded[i], self.old))

    def _raise(self, *_: Any) -> None:
        if self.error is not None:
            raise self.error

    on_train_epoch_start = _raise  # the next epoch's start: the diverged epoch's checkpoint is on disk
    on_train_end = _raise  # the last epoch diverged


def _teacher_weights_here(model_dir: Path) -> bool:
    from inhernet.train.store import WEIGHTS_NAME

    return (model_dir / WEIGHTS_NAME).is_file()


def _set_record_aside(folder: Path, done: dict, log: Callable[[str], None]) -> None:
    """A finished teacher whose weights are not here (a new machine, or a clone of committed records):
    its record moves to ``recorded/`` (kept until the retrained teacher is checked against it, also
    across an interrupted retraining), so the teacher is retrained from scratch."""
    log(f"teacher: {folder / 'done.json'} records a finished {done.get('arch')} (test acc "
        f"{100 * done['test_acc']:.2f}%) but its weights are not here (a new machine, or a clone of the records); "
        "retraining it, then checking it is the same network (the runs recorded against it count only then)")
    if global_rank() == 0:
        rec = folder / RECORDED
        rec.mkdir(exist_ok=True)
        for name in ("done.json", "metrics.jsonl"):
            if (folder / name).exists():
                os.replace(folder / name, rec / name)


#: where a teacher's record waits while the teacher is retrained (see _set_record_aside)
RECORDED = "recorded"


def _check_reproduced(info: dict, metrics: list[dict], old: dict, old_rows: list[dict],
                      log: Callable[[str], None]) -> dict:
    """``info`` of a retrained teacher, marked with whether it is the recorded one: the same weights
    (when the record has their digest) or the same metrics at every epoch (older records). A different
    network supersedes the record: the runs trained against that one stop counting."""
    if old.get("weights_digest"):
        same = old["weights_digest"] == info["weights_digest"]
    else:
        same = bool(old_rows) and _same_training(metrics, old_rows)
    if same:
        log("teacher: the retrained teacher is the recorded one (the same "
            f"{'weights' if old.get('weights_digest') else 'metrics at every epoch'}); its runs stand")
        return {**info, "supersedes": old.get("supersedes", [])}
    first_old = (old.get("curve") or [None])[0]
    first_new = (info.get("curve") or [None])[0]
    log(f"teacher: WARNING: the retrained teacher is another network (test acc {100 * info['test_acc']:.2f}% against "
        f"the recorded {100 * old['test_acc']:.2f}%; epoch 1: {first_new} against {first_old}). CPU training "
        "repeats bit for bit only on the same machine, library build and thread count. Runs trained against the "
        "recorded teacher no longer count; `inhernet compare --force` retrains them.")
    gone = {k: old.get(k) for k in ("test_acc", "curve", "weights_digest", "train_time_s") if k in old}
    return {**info, "supersedes": [*old.get("supersedes", []), gone]}


def _teacher_lock(cfg: CompareConfig) -> Path:
    folder = teacher_folder(cfg)
    return folder.with_name(folder.name + ".lock")


def teacher_ready(cfg: CompareConfig) -> bool:
    """Whether the teacher is given (``teacher.path``) or trained and cached with its weights here."""
    folder = teacher_folder(cfg)
    return bool(cfg.teacher.path) or (read_json(folder / "done.json") is not None
                                      and _teacher_weights_here(folder / "model"))


def teacher_in_training_elsewhere(cfg: CompareConfig) -> bool:
    """Whether another process holds the teacher's lock (it is training the teacher now)."""
    if cfg.teacher.path or not single_process(cfg):
        return False
    with file_lock(_teacher_lock(cfg), wait=False) as taken:
        return not taken


def _cached_or_trained_teacher(cfg: CompareConfig, data: Any, folder: Path, key: str, progress: Any,
                               fit_kwargs: Optional[dict], log: Callable[[str], None],
                               new_teacher: bool) -> tuple[nn.Module, dict]:
    import inhernet
    from inhernet.models import create_model
    from inhernet.train import evaluate, fit, load_model, read_metrics, save_model
    from inhernet.utils import machine_record, weights_digest

    t = cfg.teacher
    nc, ic = data.num_classes, data.in_channels
    done = read_json(folder / "done.json")
    model_dir = folder / "model"
    if done is not None and _teacher_weights_here(model_dir):
        model, _ = load_model(model_dir, expect_arch=t.arch, num_classes=nc, in_channels=ic)
        log(f"teacher: reusing {t.arch} from {folder} (test acc {100 * done['test_acc']:.2f}%)")
        return model, {"weights_digest": weights_digest(model), **done, "source": "cache", "path": str(model_dir)}
    if done is not None:
        _set_record_aside(folder, done, log)
    old = read_json(folder / RECORDED / "done.json")
    old_rows = read_metrics(folder / RECORDED) if old is not None else []
    check = old is not None and old_rows and not new_teacher
    if check:  # an interrupted retraining may already have left the record
        rows = read_metrics(folder)
        i = first_divergence(rows, old_rows)
        if i is not None:
            raise TeacherRecordError(_diverged_message(folder, i, rows[i], old_rows[i], old))

    sched = _teacher_schedule(cfg)
    if global_rank() == 0:
        folder.mkdir(parents=True, exist_ok=True)
        write_json(folder / "teacher_config.json", {"key": key, "arch": t.arch, "data": _data_identity(cfg),
                                                      "subset": t.subset, "seed": t.seed, "schedule": sched})
    log(f"teacher: training {t.arch} for {t.epochs} epochs -> {folder}")
    import lightning as L

    L.seed_everything(t.seed, workers=True, verbose=False)
    model = create_model(t.arch, num_classes=nc, in_channels=ic)
    kw = dict(fit_kwargs or _fit_kwargs(cfg, progress))
    if check and single_process(cfg):  # (in a multi-process run the record is checked at the end)
        kw["callbacks"] = [*kw.get("callbacks", ()), _RepeatsRecord(folder, old_rows, old)]
    train_data = data if t.subset == "same" else load_data(cfg, subset=t.subset)
    if train_data is not data:
        log(f"teacher: {len(train_data.train.y):,} training images (the methods: {len(data.train.y):,})")
    res = fit(model, train_data, out_dir=folder, loss="ce", epochs=t.epochs, batch_size=sched["batch_size"],
              eval_batch_size=cfg.schedule.eval_batch_size, lr=sched["lr"], momentum=sched["momentum"],
              weight_decay=sched["weight_decay"], nesterov=sched["nesterov"], gamma=sched["gamma"],
              augment=cfg.data.augment, seed=t.seed, resume=True,
              model_meta={"arch": t.arch, "num_classes": nc, "in_channels": ic, "inherited": False}, **kw)
    model = res.model.eval()
    ev = evaluate(model, data.test)
    info = {"source": "trained", "arch": t.arch, "key": key, "test_acc": ev["acc"],
            "params": inhernet.count_parameters(model),
            "curve": [r.get("test/acc") for r in res.metrics], "epochs": t.epochs,
            "train_time_s": sum(r.get("epoch_time_s", 0.0) for r in res.metrics),
            "weights_digest": weights_digest(model), "machine": machine_record()}
    if old is not None:
        info = _check_reproduced(info, res.metrics, old, old_rows, log)
    if res.extra.get("is_global_zero", True) and global_rank() == 0:
        save_model(model, model_dir, arch=t.arch, num_classes=nc, in_channels=ic, overwrite=True)  # the cache's own
        write_json(folder / "done.json", info)
        shutil.rmtree(folder / RECORDED, ignore_errors=True)
    return model, {**info, "path": str(model_dir)}


def trained_against(record: dict, tinfo: Optional[dict]) -> bool:
    """Whether a finished run (its ``done.json`` / ``failed.json``) was trained against the teacher
    ``tinfo`` describes: the same weight digest; a record from before digests were kept counts while
    the teacher has never been replaced by a different network (``supersedes`` empty). A plain
    student (kind ``student``) never sees the teacher and always counts."""
    if tinfo is None or record.get("kind") == "student":
        return True
    if record.get("teacher_digest"):
        return record["teacher_digest"] == tinfo.get("weights_digest")
    return not tinfo.get("supersedes")


#: training images the teacher is calibrated on for ``init: whitened`` unless the method says
CALIBRATION_IMAGES = 256


def calibration_batches(train: Any, images: int, batch_size: int = 64) -> list[torch.Tensor]:
    """The first ``images`` training images (no augmentation) in batches, for ``init: whitened``."""
    x = train.x[:images]
    return [x[i:i + batch_size] for i in range(0, len(x), batch_size)]


def build_method_model(method: MethodConfig, seed: int, cfg: CompareConfig, teacher: nn.Module, num_classes: int,
                       in_channels: int, train: Any = None, *, progress: bool = True) -> tuple[nn.Module, dict]:
    """The untrained model of a method: a fresh student, or the teacher inherited with its config.
    ``train`` (the training split) is needed by ``init: whitened``, which calibrates on it;
    ``progress``: the inheritance's progress bars (``trainer: {progress: false}`` turns them off)."""
    import lightning as L

    import inhernet
    from inhernet.models import create_model

    L.seed_everything(seed, workers=True, verbose=False)
    if method.kind != "inhernet":
        model = create_model(cfg.student.arch, num_classes=num_classes, in_channels=in_channels)
        return model, {"arch": cfg.student.arch, "num_classes": num_classes, "in_channels": in_channels,
                       "inherited": False}
    d = dict(method.inherit)
    images = d.pop("calibration_images", CALIBRATION_IMAGES)
    d.setdefault("seed", seed)
    if d.get("budget") == "student":
        d["budget"] = create_model(cfg.student.arch, num_classes=num_classes, in_channels=in_channels)
    elif d.get("budget") == "teacher":
        d["budget"] = teacher
    icfg = inhernet.InheritConfig.from_dict(d)
    calibration = None
    if icfg.init == "whitened":
        if train is None:
            raise CompareError(f"method {method.name!r}: init: whitened needs the training split to calibrate on")
        calibration = calibration_batches(train, images)
    model = inhernet.inherit(teacher, icfg, calibration=calibration, progress=progress)
    return model, {"arch": cfg.teacher.arch, "num_classes": num_classes, "in_channels": in_channels,
                   "inherited": True, "inherit": icfg.to_dict()}


def _run_identity(cfg: CompareConfig, tkey: str, method: MethodConfig, seed: int) -> dict:
    m = asdict(method)
    m.pop("label", None)
    m.pop("seeds", None)  # which seeds a method runs on is planning; the run's own seed is below
    if m.get("gate_lr_scale") == 1.0:  # the default is absent, so runs made before the option keep their keys
        m.pop("gate_lr_scale")
    return {"teacher": tkey, "data": _data_identity(cfg), "student": cfg.student.arch,
            "schedule": asdict(cfg.schedule), "method": m, "seed": seed}


@contextmanager
def file_lock(path: Path, *, wait: bool) -> Iterator[bool]:
    """Hold an exclusive ``flock`` on ``path`` (created) for the block; yields whether it was taken.
    ``wait=False`` yields False at once when another process holds it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def single_process(cfg: CompareConfig) -> bool:
    """Whether each training run is one process (locks between processes make sense)."""
    devices = cfg.trainer.devices
    return cfg.trainer.num_nodes == 1 and (devices in (1, "1") or (isinstance(devices, list) and len(devices) == 1))


def _run_dir(cfg: CompareConfig, method: MethodConfig, seed: int) -> Path:
    return Path(cfg.out_dir) / "runs" / method.name / f"seed{seed}"


def plan_runs(cfg: CompareConfig, tkey: str) -> list[dict]:
    runs = []
    for seed in cfg.seeds:
        for m in cfg.methods:
            if seed not in cfg.seeds_of(m):
                continue
            ident = _run_identity(cfg, tkey, m, seed)
            runs.append({"method": m, "seed": seed, "dir": _run_dir(cfg, m, seed), "identity": ident,
                         "key": stable_hash(ident)})
    return runs


def stale_runs(runs: list[dict]) -> list[dict]:
    """The planned runs whose folder holds something another config made (a different ``run.json``
    key, or files without one)."""
    out = []
    for r in runs:
        d: Path = r["dir"]
        if not d.exists():
            continue
        meta = read_json(d / "run.json")
        if meta is None:
            if any(d.iterdir()):
                out.append(r)
            continue
        if meta.get("key") != r["key"]:
            out.append(r)
    return out


def refuse_stale(runs: list[dict], out: Path, force: bool) -> None:
    """:class:`StaleRunError` when ``out`` holds runs of another config and ``force`` is off: a
    folder is never overwritten silently."""
    stale = stale_runs(runs)
    if stale and not force:
        names = ", ".join(sorted({f"{r['method'].name}/seed{r['seed']}" for r in stale}))
        raise StaleRunError(
            f"{out} already holds runs made with a different config ({names}). Nothing was changed. Re-run with "
            "--force to retrain them (their old results are deleted), or set another out_dir.")


def select_runs(runs: list[dict], methods: Optional[list[str]], known: list[str]) -> list[dict]:
    """The planned runs of ``methods`` only (all when None): ``inhernet compare --methods`` trains
    the rows that decide first; the report still counts every finished run. An unknown name is a
    :class:`~inhernet.compare.config.CompareConfigError` naming the config's methods."""
    if methods is None:
        return runs
    from inhernet.utils import did_you_mean

    from .config import CompareConfigError

    for name in methods:
        if name not in known:
            raise CompareConfigError(f"methods (--methods): {name!r} is not a method of this config{did_you_mean(name, known)}; "
                                     f"its methods: {', '.join(known)}")
    return [r for r in runs if r["method"].name in methods]


def unplanned_methods(cfg: Any) -> list[str]:
    """Log lines for the methods that run on none of the comparison's seeds (a method's own
    ``seeds`` outside them, e.g. after ``--seeds``): their rows stay empty."""
    return [f"note: method {m.name!r} runs on seeds {m.seeds}, none of this comparison's {cfg.seeds}: it has no "
            "runs this time" for m in cfg.methods if getattr(m, "seeds", None) is not None and not cfg.seeds_of(m)]


def clear_runs(runs: list[dict]) -> None:
    """Delete the planned runs' folders (``--force``)."""
    for r in runs:
        if r["dir"].exists():
            shutil.rmtree(r["dir"])


def write_comparison_header(out: Path, cfg: Any, tinfo: dict, *, cleared: Optional[list[dict]] = None) -> None:
    """Start (or refresh) a comparison folder on rank 0: delete the ``cleared`` runs' folders
    (``--force``), then write the validated ``config.yaml`` (what ``inhernet report`` re-aggregates
    from) and ``teacher.json``. Shared by the image and text runners."""
    import yaml

    out.mkdir(parents=True, exist_ok=True)
    if cleared:
        clear_runs(cleared)
    (out / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    write_json(out / "teacher.json", tinfo)


def run_all(runs: list[dict], out: Path, train: Callable[[dict, int], Any], *, locking: bool,
            log: Callable[[str], None]) -> int:
    """Call ``train(run, i)`` for every planned run; with ``locking`` each run is first claimed with a
    lock file under ``out/locks/`` and one another process holds is skipped. Returns how many were
    skipped that way (the report is then partial)."""
    elsewhere = 0
    for i, r in enumerate(runs, 1):
        if not locking:
            train(r, i)
            continue
        with file_lock(out / "locks" / f"{r['method'].name}-seed{r['seed']}.lock", wait=False) as taken:
            if taken:
                train(r, i)
            else:
                elsewhere += 1
                log(f"[{i}/{len(runs)}] {r['method'].name} seed {r['seed']}: being trained by another process, skipped")
    return elsewhere


#: per-epoch diagnostics of gated InherNets recorded as curves in done.json (inhernet.train.heads)
HEAD_CURVES = ("heads/cosine_mean", "gate/entropy", "gate/grad_ratio")


def _head_curves(metrics: list[dict]) -> dict:
    """The :data:`HEAD_CURVES` a run logged (none for a model without gated inherited layers)."""
    return {k: [row.get(k) for row in metrics] for k in HEAD_CURVES if any(k in row for row in metrics)}


def _run_one(cfg: CompareConfig, r: dict, data: Any, teacher: nn.Module, tinfo: dict, progress: Any, i: int,
             n: int, log: Callable[[str], None]) -> Optional[dict]:
    import inhernet
    from inhernet.train import DistillLoss, TrainingDivergedError, fit, save_model

    m: MethodConfig = r["method"]
    seed, d = r["seed"], r["dir"]
    done = read_json(d / "done.json")
    tag = f"[{i}/{n}] {m.name} seed {seed}"
    tdigest = tinfo.get("weights_digest")
    if done is not None and done.get("key") == r["key"] and trained_against(done, tinfo):
        log(f"{tag}: done, skipped (test acc {100 * done['final'].get('test/acc', float('nan')):.2f}%)")
        return done
    failed = read_json(d / "failed.json")
    if failed is not None and failed.get("key") == r["key"] and trained_against(failed, tinfo):
        log(f"{tag}: failed earlier ({failed['reason']}); skipped — --force retrains it")
        return failed
    rank0 = global_rank() == 0
    if rank0:
        write_json(d / "run.json", {"key": r["key"], **r["identity"], "teacher_digest": tdigest})
    ck = d / "checkpoints" / "last.ckpt"
    log(f"{tag}: {'resuming' if ck.exists() else 'training'} ({m.kind}, loss {m.loss_kind})")
    model, meta = build_method_model(m, seed, cfg, teacher, data.num_classes, data.in_channels, data.train,
                                     progress=bool(progress))
    loss = DistillLoss.from_dict(m.loss_spec())
    s = cfg.schedule
    t0 = time.perf_counter()
    try:
        res = fit(model, data, out_dir=d, teacher=teacher if loss.needs_teacher else None, loss=loss,
                  epochs=s.epochs, batch_size=s.batch_size, eval_batch_size=s.eval_batch_size, lr=s.lr,
                  momentum=s.momentum, weight_decay=s.weight_decay, nesterov=s.nesterov, milestones=s.milestones,
                  gamma=s.gamma, gate_lr_scale=m.gate_lr_scale, augment=cfg.data.augment, seed=seed, resume=True,
                  model_meta=meta,
                  run_name=f"{m.name}/seed{seed}", **_fit_kwargs(cfg, progress))
    except TrainingDivergedError as err:
        out = {"key": r["key"], "teacher_digest": tdigest, "method": m.name, "kind": m.kind, "seed": seed,
               "failed": True,
               "reason": err.reason, "message": str(err), "step": err.step, "epoch": err.epoch}
        if rank0:
            write_json(d / "failed.json", out)
        log(f"{tag}: FAILED — {err}")
        return out
    if not (res.extra.get("is_global_zero", True) and rank0):
        return None
    model = res.model.eval()
    shape = (1, data.in_channels, *data.image_size)
    out = {
        "key": r["key"], "teacher_digest": tdigest, "method": m.name, "kind": m.kind, "seed": seed,
        "loss": loss.resolved(),
        "params": inhernet.count_parameters(model), "flops": inhernet.count_flops(model, shape),
        "final": res.final, "epochs": len(res.metrics),
        "curve": {**{k: [row.get(k) for row in res.metrics]
                     for k in ("test/acc", "val/acc", "train/acc", "train/loss")},
                  **_head_curves(res.metrics)},  # gated InherNets: do the heads live? (absent otherwise)
        "train_time_s": sum(row.get("epoch_time_s", 0.0) for row in res.metrics),
        "wall_time_s": time.perf_counter() - t0,
    }
    if meta.get("inherited"):
        out["inherit"] = meta["inherit"]
        try:
            out["layer_summary"] = inhernet.layer_report(model).summary()
        except Exception:  # noqa: BLE001 - a report is a nicety
            pass
    save_model(model, d / "model", arch=meta["arch"], num_classes=data.num_classes, in_channels=data.in_channels,
               overwrite=True,  # this run's own folder (a resumed run re-saves its model)
               extra={"method": m.name, "seed": seed})
    write_json(d / "done.json", out)
    log(f"{tag}: test acc {100 * out['final'].get('test/acc', float('nan')):.2f}% "
        f"({out['params']:,} params, {out['train_time_s']:.0f} s)")
    return out


def _planned_record(r: dict) -> Optional[dict]:
    """A planned run's ``done.json`` (or ``failed.json``) when it matches the plan, else None."""
    for name in ("done.json", "failed.json"):
        res = read_json(r["dir"] / name)
        if res is not None and res.get("key") == r["key"]:
            return res
    return None


def finished_run(r: dict, tinfo: Optional[dict] = None) -> Optional[dict]:
    """A planned run's finished record when it matches the plan (and, given the teacher's ``tinfo``,
    was trained against that teacher: :func:`trained_against`), else None."""
    res = _planned_record(r)
    return res if res is not None and trained_against(res, tinfo) else None


def runs_of_another_teacher(runs: list[dict], tinfo: dict) -> list[dict]:
    """The planned runs whose finished record matches the plan but was trained against another
    teacher than ``tinfo``'s (the teacher was retrained on another machine into another network)."""
    return [r for r in runs for res in [_planned_record(r)] if res is not None and not trained_against(res, tinfo)]


def refuse_other_teacher(runs: list[dict], tinfo: dict, force: bool, log: Callable[[str], None]) -> None:
    """:class:`StaleRunError` when runs to train were trained against another teacher and ``force``
    is off: their records are results of another experiment, kept until the user says otherwise."""
    other = runs_of_another_teacher(runs, tinfo)
    if not other:
        return
    names = ", ".join(sorted(f"{r['method'].name}/seed{r['seed']}" for r in other))
    if force:
        log(f"--force: retraining {names} (trained against another teacher)")
        return
    raise StaleRunError(
        f"{len(other)} finished run(s) were trained against another teacher than the one here ({names}): the "
        "teacher was retrained and is a different network. Nothing was changed. Re-run with --force to retrain "
        "them (their old records are deleted; --methods NAMES limits --force to those rows), or restore the "
        "teacher they were trained against.")


def load_data(cfg: CompareConfig, *, subset: Any = "same") -> Any:
    """The config's data splits; ``subset`` other than ``"same"`` replaces ``data.subset`` (the
    teacher's own training images: ``None`` for all of them)."""
    from inhernet.data import load_dataset

    d = cfg.data
    return load_dataset(d.name, root=d.root, val_fraction=d.val_fraction, subset=d.subset if subset == "same" else subset,
                        test_subset=d.test_subset, seed=d.seed)


def _check_trainer_here(cfg: CompareConfig) -> None:
    """``trainer.accelerator`` is usable on this machine (the config checked only its name)."""
    from inhernet.config import ConfigError
    from inhernet.train.validate import check_accelerator

    from .config import CompareConfigError

    try:
        check_accelerator("accelerator", cfg.trainer.accelerator, option="trainer.{}".format)
    except ConfigError as err:
        where = f"{cfg.source}: " if cfg.source else ""
        raise CompareConfigError(f"{where}{err}") from err


def run_compare(cfg: CompareConfig, *, force: bool = False, progress: Any = None,
                log: Callable[[str], None] = _info, report: bool = True,
                methods: Optional[list[str]] = None, new_teacher: bool = False) -> Optional[dict]:
    """Run (or resume) the comparison ``cfg`` and write its report; returns the results (rank zero).
    ``methods``: train only these methods' runs this time (``--force`` then clears only theirs);
    the report covers every finished run. A selection of plain students alone, before the teacher is
    trained, trains them without it and returns None (no report without a teacher).
    ``new_teacher``: where a teacher retrained from its record does not repeat it
    (:class:`TeacherRecordError`), train a new one on (the recorded runs then stop counting)."""
    from .report import build_results, write_report

    if cfg.trainer.threads:
        torch.set_num_threads(int(cfg.trainer.threads))
    progress = cfg.trainer.progress if progress is None else progress
    out = Path(cfg.out_dir)
    t_start = time.perf_counter()

    # 1. validate everything that can fail before writing anything (the accelerator first: a config
    #    asking for a GPU on a machine without one fails here, not deep inside Lightning)
    _check_trainer_here(cfg)
    data = load_data(cfg)
    log(f"data: {data!r}")
    if cfg.teacher.path:
        teacher, tinfo = prepare_teacher(cfg, data, progress=progress, log=log, new_teacher=new_teacher)
    else:
        teacher, tinfo = None, None
    tkey = teacher_key(cfg)
    runs = plan_runs(cfg, tkey)
    todo = select_runs(runs, methods, [m.name for m in cfg.methods])
    refuse_stale(todo, out, force)
    for line in unplanned_methods(cfg):
        log(line)
    # 2. the teacher (trained and cached if needed). A plain student never sees it: while another
    #    process trains the teacher, this one trains the plain-student rows instead of waiting
    #    (not under --force, which clears the rows once the teacher is there)
    if (teacher is None and methods is not None and todo and all(r["method"].kind == "student" for r in todo)
            and not teacher_ready(cfg)):
        log("teacher: not trained yet, and only plain-student rows are selected (they do not use it): training "
            "them without it; the report waits for the teacher (`inhernet compare CONFIG` trains it)")
        if force and global_rank() == 0:
            clear_runs(todo)
        run_all(todo, out, lambda r, i: _run_one(cfg, r, data, None, {}, progress, i, len(todo), log),
                locking=single_process(cfg), log=log)
        return None
    if teacher is None and not force and teacher_in_training_elsewhere(cfg):
        first = [r for r in todo if r["method"].kind == "student"]
        if first:
            log(f"teacher: being trained by another process; training the {len(first)} plain-student run(s) "
                "meanwhile (they do not use it)")
            run_all(first, out, lambda r, i: _run_one(cfg, r, data, None, {}, progress, i, len(first), log),
                    locking=True, log=log)
    if teacher is None:
        teacher, tinfo = prepare_teacher(cfg, data, progress=progress, log=log, new_teacher=new_teacher)
    teacher = teacher.eval()
    refuse_other_teacher(todo, tinfo, force, log)
    rank0 = global_rank() == 0
    if rank0:
        # the teacher's path relative to out_dir, so `inhernet report` works from any directory
        tinfo = {**tinfo, "path": os.path.relpath(Path(tinfo["path"]).resolve(), out.resolve())}
        write_comparison_header(out, cfg, tinfo, cleared=todo if force else None)

    # 3. every method x seed (a diverged run is recorded as failed; the others go on); a run another
    #    process is training is left to it
    elsewhere = run_all(todo, out, lambda r, i: _run_one(cfg, r, data, teacher, tinfo, progress, i, len(todo), log),
                        locking=single_process(cfg), log=log)
    if not rank0:
        return None
    # what is finished now, by this process or another
    results_per_run = [res for r in runs for res in [finished_run(r, tinfo)] if res is not None]
    ignored = runs_of_another_teacher(runs, tinfo)
    if ignored:
        log(f"\n{len(ignored)} finished run(s) were trained against another teacher and are not reported: "
            + ", ".join(sorted(f"{r['method'].name}/seed{r['seed']}" for r in ignored)))
    failed = [f"{r['method']}/seed{r['seed']}: {r['reason']}" for r in results_per_run if r.get("failed")]
    if elsewhere:
        log(f"\n{elsewhere} run(s) were being trained by other processes; this report is partial — the last "
            f"process to finish writes the complete one (or run `inhernet report {out}`).")
    # 4. report
    results = build_results(cfg, data, teacher, tinfo, results_per_run, wall_time_s=time.perf_counter() - t_start)
    if report:
        table = write_report(results, out)
        log("")
        log(table)
        log(f"\nwritten: {out / 'results.json'}, {out / 'results.md'}, {out / 'acc_vs_epoch.png'}, "
            f"{out / 'acc_vs_params.png'}")
    if failed:
        log(f"\n{len(failed)} run(s) FAILED and are reported as failed, not as results:\n  " + "\n  ".join(failed))
    return results


def teacher_path(out_dir: Path, tinfo: dict) -> Path:
    """Where ``teacher.json``'s teacher lies: its path is stored relative to ``out_dir`` (older runs
    stored it relative to the directory `inhernet compare` ran in, tried second)."""
    p = Path(tinfo["path"])
    if p.is_absolute():
        return p
    return out_dir / p if (out_dir / p).exists() or not p.exists() else p


def rebuild_report(out_dir: str | os.PathLike, *, latency: bool = True, log: Callable[[str], None] = _info) -> dict:
    """Re-aggregate the finished runs of ``out_dir`` (from its ``config.yaml``) and rewrite the report."""
    import yaml

    from inhernet.train import load_model

    from .report import build_results, write_report

    out = Path(out_dir)
    cpath = out / "config.yaml"
    if not cpath.is_file():
        raise CompareError(f"{cpath} not found: {out} is not the out_dir of an `inhernet compare` run.")
    cfg = CompareConfig.from_dict(yaml.safe_load(cpath.read_text()), where=str(cpath))
    cfg.out_dir = str(out)
    tinfo = read_json(out / "teacher.json")
    if not tinfo or "path" not in tinfo:
        raise CompareError(f"{out / 'teacher.json'} is missing or damaged; re-run `inhernet compare` on the config "
                           "to rebuild it (finished runs are reused).")
    data = load_data(cfg)
    tpath = teacher_path(out, tinfo)
    if tpath.is_file() or _teacher_weights_here(tpath):
        teacher, _ = load_model(tpath, expect_arch=cfg.teacher.arch)
    else:  # records kept without weights (a clone): the architecture gives the counts; no latency is measured
        from inhernet.models import create_model

        log(f"teacher: no weights at {tpath}; its parameter and FLOP counts come from the architecture and "
            "no latency is measured")
        teacher = create_model(cfg.teacher.arch, num_classes=data.num_classes, in_channels=data.in_channels)
        latency = False
    done = []
    for r in plan_runs(cfg, tinfo.get("key", teacher_key(cfg))):
        d = read_json(r["dir"] / "done.json") or read_json(r["dir"] / "failed.json")
        if d is not None and trained_against(d, tinfo):
            done.append(d)
    previous = read_json(out / "results.json") if not latency else None
    results = build_results(cfg, data, teacher, tinfo, done, measure=latency, previous=previous)
    table = write_report(results, out)
    log(table)
    return results
