"""The teacher of an image comparison: trained once per config and cached by its hash, or loaded from
``teacher.path``, and the rules that say which runs were trained against it.

Layout of ``cache_dir/teachers/<arch>-<key>/``: ``teacher_config.json``, ``metrics.jsonl``,
``checkpoints/last.ckpt`` while training, ``model/`` and ``done.json`` once finished (test accuracy,
curve, the digest of its weights and the ``machine`` it was trained on).

**A run counts only with the teacher it was trained against.** The teacher's ``done.json`` records
the digest of its weights (:func:`inhernet.utils.weights_digest`) and every run records it as
``teacher_digest``. A cached teacher whose record is there but whose weights are not (a new machine,
or a clone of committed records) is retrained and checked against the record as it trains: CPU
training repeats bit for bit only on the same CPU type, thread count and torch build, so the first
epoch whose metrics differ from the record stops the retraining (:class:`TeacherRecordError`). The
record is then kept as it was, with this machine noted under ``not_repeated_on`` (a later run on
the same machine type stops before training), and the retraining's epochs are dropped. The same
weights (or, for a record without a digest, the same value of every metric at every epoch) and the
recorded runs stand. With ``new_teacher=True`` a different network is trained and supersedes the
record (kept in ``supersedes``): the runs trained against the old teacher are neither skipped nor
reported, and training them again is an error unless ``force=True`` (while it trains, ``new_teacher.json``
marks the folder, so an interrupted new teacher resumes as one). A record trained at another thread
count than this training's is refused before any epoch. A plain student never sees the teacher and
always counts.

Instead of retraining, :func:`restore_teacher` puts a copy of the weights back (from another machine,
or an earlier commit: ``benchmarks/teacher_from_history.py``), on any machine type: accepted only as
the recorded network (its digest, or for an older record its test and validation metrics evaluated
here), and noted in the record under ``restored``.
"""

from __future__ import annotations

import json
import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import torch
from lightning.pytorch.callbacks import Callback
from torch import nn

from inhernet.train.fit import CHECKPOINT_DIR, global_rank
from inhernet.train.identity import file_digest
from inhernet.utils import read_json, stable_hash, write_json

from .basics import (CompareError, TeacherRecordError, data_identity, file_lock, load_data, log_info, single_process,
                     trainer_kwargs)
from .config import CompareConfig

__all__ = ["MACHINE_KEYS", "NEW_TEACHER_MARK", "RECORDED", "first_divergence", "not_repeated_here", "prepare_teacher",
           "restore_teacher", "teacher_folder", "teacher_in_training_elsewhere", "teacher_key", "teacher_path", "teacher_ready",
           "teacher_state", "teacher_weights_here", "trained_against", "unrepeatable_reason"]


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
    ident = {"data": data_identity(cfg), "arch": cfg.teacher.arch, "seed": cfg.teacher.seed,
             "schedule": _teacher_schedule(cfg)}
    if cfg.teacher.subset != "same":  # (absent otherwise, so caches made before the option stay valid)
        ident["teacher_subset"] = cfg.teacher.subset
    return stable_hash(ident)


def teacher_folder(cfg: CompareConfig) -> Path:
    """Where a teacher trained by the comparison is cached: ``cache_dir/teachers/<arch>-<key>/``
    (``done.json`` and ``model/`` once finished; ``checkpoints/last.ckpt`` while training)."""
    from inhernet.models import arch_slug

    return Path(cfg.cache_dir) / "teachers" / f"{arch_slug(cfg.teacher.arch)}-{teacher_key(cfg)}"


def prepare_teacher(cfg: CompareConfig, data: Any, *, progress: Any = True, fit_kwargs: Optional[dict] = None,
                    log: Callable[[str], None] = log_info, new_teacher: bool = False) -> tuple[nn.Module, dict]:
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
    return len(a) == len(b) and first_divergence(a, b) is None


def first_divergence(rows: list[dict], recorded: list[dict]) -> Optional[int]:
    """The index of the first epoch in which a (re)training's ``metrics.jsonl`` rows differ from the
    recorded ones in any metric (timings aside), comparing the epochs both have; None when they agree."""
    for i, (a, b) in enumerate(zip(_without_timings(rows), _without_timings(recorded))):
        if a != b:
            return i
    return None


def _machine_text(m: dict) -> str:
    """A machine record in words; a partial one (a record written before machines were kept) says what it knows."""
    known = [x for x in (m.get("isa"), m.get("threads") and f"{m['threads']} thread(s)",
                         m.get("torch") and f"torch {m['torch']}") if x]
    return f"{m.get('cpu') or 'an unrecorded CPU'}" + (f" ({', '.join(known)})" if known else "")


#: what must agree for two CPU trainings to repeat each other bit for bit
MACHINE_KEYS = ("cpu", "isa", "threads", "torch")


def not_repeated_here(record: dict, threads: Optional[int] = None) -> Optional[dict]:
    """The note in a teacher's record (``not_repeated_on``) that this machine type, training with
    ``threads`` intra-op threads (default: the current setting), has already failed to repeat its
    training, if there is one: a retraining here would leave the record again."""
    from inhernet.utils import machine_record

    here = {**machine_record(), **({"threads": int(threads)} if threads else {})}
    return next((n for n in record.get("not_repeated_on", []) if all(n.get(k) == here[k] for k in MACHINE_KEYS)), None)


class _LeftRecord(Exception):
    """Internal: raised by :class:`_RepeatsRecord` inside ``fit``; turned into a :class:`TeacherRecordError`."""

    def __init__(self, epoch: int, row: dict, old_row: dict) -> None:
        super().__init__(f"epoch {epoch + 1}")
        self.epoch, self.row, self.old_row = epoch, row, old_row


def _keep_record(folder: Path, old: dict, old_rows: list[dict], what: str) -> TeacherRecordError:
    """A retraining on this machine does not repeat the record: put the record back as it was, with
    this machine noted under ``not_repeated_on`` (so the next run here stops before training), drop the
    retraining's epochs and checkpoint, and return the error that says so."""
    import time

    from inhernet.utils import atomic_write, machine_record

    here = machine_record()
    note = {**here, "left_at": what, "date": time.strftime("%Y-%m-%d")}
    if global_rank() == 0:
        write_json(folder / "done.json", {**old, "not_repeated_on": [*old.get("not_repeated_on", []), note]})
        atomic_write(folder / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in old_rows))
        shutil.rmtree(folder / CHECKPOINT_DIR, ignore_errors=True)
        shutil.rmtree(folder / RECORDED, ignore_errors=True)
    there = old.get("machine")
    where = (f"the record was trained on {_machine_text(there)}, this machine is {_machine_text(here)}"
             if there and there.get("cpu") else
             f"this machine is {_machine_text(here)}; the record does not say what it was trained on")
    return TeacherRecordError(
        f"teacher: retraining {folder.name} on this machine left its record {what}. CPU training repeats bit for "
        f"bit only on the same CPU type, thread count and torch build ({where}), so this machine will not give "
        "back the recorded teacher, and the runs recorded against it count only with that one. The record is kept "
        f"as it was in {folder}, with this machine noted under not_repeated_on (a run here stops at once next "
        "time); the retraining's epochs are dropped. To train a new teacher here instead (the recorded runs then "
        "stop counting; `--force` retrains them): `inhernet compare CONFIG --new-teacher`; to keep the recorded "
        "one, run on the machine type that trained it.")


def _epoch_difference(epoch: int, row: dict, old_row: dict) -> str:
    keys = [k for k in sorted(set(row) | set(old_row), key=lambda k: (k != "test/acc", k))
            if k not in _TIMING_KEYS and row.get(k) != old_row.get(k)]
    return (f"at epoch {epoch + 1}: {keys[0]} {row.get(keys[0])} against the recorded {old_row.get(keys[0])}"
            + (f" ({len(keys) - 1} other metric(s) differ too)" if len(keys) > 1 else ""))


class _RepeatsRecord(Callback):
    """Stops a teacher's retraining at the end of the first epoch whose metrics differ from its record,
    not at the end of the schedule (:func:`_cached_or_trained_teacher` then keeps the record)."""

    def __init__(self, folder: Path, recorded: list[dict]) -> None:
        self.folder, self.recorded = folder, recorded

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:  # after JsonlMetrics wrote the row
        from inhernet.train import read_metrics

        rows = read_metrics(self.folder)
        i = first_divergence(rows, self.recorded)
        if i is not None:
            raise _LeftRecord(i, rows[i], self.recorded[i])


def teacher_weights_here(model_dir: Path) -> bool:
    from inhernet.train.store import WEIGHTS_NAME

    return (model_dir / WEIGHTS_NAME).is_file()


def _set_record_aside(folder: Path, done: dict, log: Callable[[str], None], new_teacher: bool) -> None:
    """A finished teacher whose weights are not here (a new machine, or a clone of committed records):
    its record moves to ``recorded/`` (kept until the retrained teacher is checked against it, also
    across an interrupted retraining), so the teacher is retrained from scratch."""
    log(f"teacher: {folder / 'done.json'} records a finished {done.get('arch')} (test acc "
        f"{100 * done['test_acc']:.2f}%) but its weights are not here (a new machine, or a clone of the records); "
        + ("--new-teacher: training a new one, which supersedes the record unless it is the same network"
           if new_teacher else "retraining it, checked against the record epoch by epoch (the runs recorded "
           "against it count only if it is the same network)"))
    if global_rank() == 0:
        rec = folder / RECORDED
        rec.mkdir(exist_ok=True)
        for name in ("done.json", "metrics.jsonl"):
            if (folder / name).exists():
                os.replace(folder / name, rec / name)


#: where a teacher's record waits while the teacher is retrained (see _set_record_aside)
RECORDED = "recorded"
#: left in a teacher's folder while a new teacher that ``new_teacher=True`` started trains: a resume goes on
#: with it (instead of checking it against the record it replaces)
NEW_TEACHER_MARK = "new_teacher.json"


def _check_reproduced(info: dict, metrics: list[dict], old: dict, old_rows: list[dict], folder: Path,
                      new_teacher: bool, log: Callable[[str], None]) -> dict:
    """``info`` of a retrained teacher, marked with whether it is the recorded one: the same weights
    (when the record has their digest) or the same metrics at every epoch (older records). Another
    network supersedes the record with ``new_teacher`` (the runs trained against that one stop
    counting); without it the record is kept and a :class:`TeacherRecordError` raised."""
    if old.get("weights_digest"):
        same = old["weights_digest"] == info["weights_digest"]
    else:
        same = bool(old_rows) and _same_training(metrics, old_rows)
    if same:
        log("teacher: the retrained teacher is the recorded one (the same "
            f"{'weights' if old.get('weights_digest') else 'metrics at every epoch'}); its runs stand")
        return {**info, "supersedes": old.get("supersedes", []), "not_repeated_on": old.get("not_repeated_on", [])}
    if not new_teacher:
        raise _keep_record(folder, old, old_rows, "at the end: other weights (every epoch's metrics equal)"
                           if old.get("weights_digest") else "at the end")
    first_old = (old.get("curve") or [None])[0]
    first_new = (info.get("curve") or [None])[0]
    log(f"teacher: WARNING: the new teacher is another network (test acc {100 * info['test_acc']:.2f}% against "
        f"the recorded {100 * old['test_acc']:.2f}%; epoch 1: {first_new} against {first_old}). Runs trained "
        "against the recorded teacher no longer count; `inhernet compare --force` retrains them.")
    gone = {k: old.get(k) for k in ("test_acc", "curve", "weights_digest", "train_time_s", "machine") if k in old}
    return {**info, "supersedes": [*old.get("supersedes", []), gone]}


def _teacher_lock(cfg: CompareConfig) -> Path:
    folder = teacher_folder(cfg)
    return folder.with_name(folder.name + ".lock")


def teacher_ready(cfg: CompareConfig) -> bool:
    """Whether the teacher is given (``teacher.path``) or trained and cached with its weights here."""
    folder = teacher_folder(cfg)
    return bool(cfg.teacher.path) or (read_json(folder / "done.json") is not None
                                      and teacher_weights_here(folder / "model"))


def teacher_in_training_elsewhere(cfg: CompareConfig) -> bool:
    """Whether another process holds the teacher's lock (it is training the teacher now)."""
    if cfg.teacher.path or not single_process(cfg):
        return False
    with file_lock(_teacher_lock(cfg), wait=False) as taken:
        return not taken


def _cached_or_trained_teacher(cfg: CompareConfig, data: Any, folder: Path, key: str, progress: Any,
                               fit_kwargs: Optional[dict], log: Callable[[str], None],
                               new_teacher: bool) -> tuple[nn.Module, dict]:
    from inhernet.train import load_model
    from inhernet.utils import weights_digest

    t = cfg.teacher
    nc, ic = data.num_classes, data.in_channels
    done = read_json(folder / "done.json")
    model_dir = folder / "model"
    if done is not None and teacher_weights_here(model_dir):
        model, _ = load_model(model_dir, expect_arch=t.arch, num_classes=nc, in_channels=ic)
        digest = weights_digest(model)
        if done.get("weights_digest") and done["weights_digest"] != digest:
            raise CompareError(
                f"teacher: the weights in {model_dir} (digest {digest}) are not the teacher {folder / 'done.json'} "
                f"records (digest {done['weights_digest']}): they were replaced by hand. Delete {model_dir} and put "
                "the recorded teacher back with `inhernet compare CONFIG --teacher-weights PATH` (checked), or "
                "retrain it.")
        log(f"teacher: reusing {t.arch} from {folder} (test acc {100 * done['test_acc']:.2f}%)")
        return model, {**done, "weights_digest": digest, "source": "cache", "path": str(model_dir)}
    with _teacher_threads(t.threads):
        return _train_or_retrain(cfg, data, folder, key, progress, fit_kwargs, log, new_teacher, done)


@contextmanager
def _teacher_threads(threads: Optional[int]) -> Iterator[None]:
    """``teacher.threads`` intra-op threads inside (unchanged when None), the caller's setting after."""
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(int(threads))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def unrepeatable_reason(record: dict, threads: int) -> Optional[str]:
    """Why a retraining here at ``threads`` intra-op threads cannot repeat the teacher ``record``
    describes, or None: this machine type is noted as not repeating it (at the thread count it was
    trained at), or it was trained at another thread count. The one rule behind the runner's refusal,
    ``--status`` and ``benchmarks/long_runs.sh start``."""
    recorded = (record.get("machine") or {}).get("threads")
    seen = not_repeated_here(record, recorded or threads)
    if seen:
        return (f"this machine type, {_machine_text(seen)}, did not repeat its training (it left the record "
                f"{seen.get('left_at')}, on {seen.get('date')})")
    if recorded and recorded != threads:
        return (f"it was trained at {recorded} thread(s) and this training runs at {threads}; CPU training repeats "
                "bit for bit only at the same thread count")
    return None


def _refuse_unrepeatable(folder: Path, record: dict) -> None:
    """:class:`TeacherRecordError` before any epoch when a retraining here cannot repeat ``record``."""
    why = unrepeatable_reason(record, torch.get_num_threads())
    if why:
        raise TeacherRecordError(
            f"teacher: {folder / 'done.json'} records a finished {record.get('arch')} whose weights are not here, "
            f"and {why}: not retrained. Run on the machine type (and teacher.threads) that trained it, or train a "
            "new teacher here with `inhernet compare CONFIG --new-teacher` (the runs recorded against the old one "
            "then stop counting; `--force` retrains them).")


def _train_or_retrain(cfg: CompareConfig, data: Any, folder: Path, key: str, progress: Any,
                      fit_kwargs: Optional[dict], log: Callable[[str], None], new_teacher: bool,
                      done: Optional[dict]) -> tuple[nn.Module, dict]:
    """Train the teacher (no weights here): from scratch, resumed, or as a checked retraining of its record."""
    import inhernet
    from inhernet.models import create_model
    from inhernet.train import evaluate, fit, read_metrics, save_model
    from inhernet.utils import machine_record, weights_digest

    t = cfg.teacher
    nc, ic = data.num_classes, data.in_channels
    model_dir = folder / "model"
    if not new_teacher and (folder / NEW_TEACHER_MARK).is_file():  # a new teacher started with --new-teacher
        log("teacher: resuming the new teacher that `--new-teacher` started here")
        new_teacher = True
    record = done if done is not None else read_json(folder / RECORDED / "done.json")  # (an interrupted retraining)
    if record is not None and not new_teacher:
        _refuse_unrepeatable(folder, record)
    if done is not None:
        _set_record_aside(folder, done, log, new_teacher)
    old = read_json(folder / RECORDED / "done.json")
    old_rows = read_metrics(folder / RECORDED) if old is not None else []
    check = old is not None and bool(old_rows) and not new_teacher
    if old is not None and new_teacher and global_rank() == 0:  # so that a resume without the flag goes on with it
        write_json(folder / NEW_TEACHER_MARK, {"replaces": {k: old.get(k) for k in ("test_acc", "weights_digest")}})
    if check:  # an interrupted retraining may already have left the record
        rows = read_metrics(folder)
        i = first_divergence(rows, old_rows)
        if i is not None:
            raise _keep_record(folder, old, old_rows, _epoch_difference(i, rows[i], old_rows[i]))

    sched = _teacher_schedule(cfg)
    if global_rank() == 0:
        folder.mkdir(parents=True, exist_ok=True)
        write_json(folder / "teacher_config.json", {"key": key, "arch": t.arch, "data": data_identity(cfg),
                                                      "subset": t.subset, "seed": t.seed, "schedule": sched})
    log(f"teacher: training {t.arch} for {t.epochs} epochs -> {folder}")
    import lightning as L

    L.seed_everything(t.seed, workers=True, verbose=False)
    model = create_model(t.arch, num_classes=nc, in_channels=ic)
    kw = dict(fit_kwargs or trainer_kwargs(cfg, progress))
    if check and single_process(cfg):  # (in a multi-process run the record is checked at the end)
        kw["callbacks"] = [*kw.get("callbacks", ()), _RepeatsRecord(folder, old_rows)]
    train_data = data if t.subset == "same" else load_data(cfg, subset=t.subset)
    if train_data is not data:
        log(f"teacher: {len(train_data.train.y):,} training images (the methods: {len(data.train.y):,})")
    try:
        res = fit(model, train_data, out_dir=folder, loss="ce", epochs=t.epochs, batch_size=sched["batch_size"],
                  eval_batch_size=cfg.schedule.eval_batch_size, lr=sched["lr"], momentum=sched["momentum"],
                  weight_decay=sched["weight_decay"], nesterov=sched["nesterov"], gamma=sched["gamma"],
                  augment=cfg.data.augment, seed=t.seed, resume=True,
                  model_meta={"arch": t.arch, "num_classes": nc, "in_channels": ic, "inherited": False}, **kw)
    except _LeftRecord as left:
        raise _keep_record(folder, old, old_rows, _epoch_difference(left.epoch, left.row, left.old_row)) from None
    model = res.model.eval()
    ev = evaluate(model, data.test)
    info = {"source": "trained", "arch": t.arch, "key": key, "test_acc": ev["acc"],
            "params": inhernet.count_parameters(model),
            "curve": [r.get("test/acc") for r in res.metrics], "epochs": t.epochs,
            "train_time_s": sum(r.get("epoch_time_s", 0.0) for r in res.metrics),
            "weights_digest": weights_digest(model), "machine": machine_record()}
    if old is not None:
        info = _check_reproduced(info, res.metrics, old, old_rows, folder, new_teacher, log)
    if res.extra.get("is_global_zero", True) and global_rank() == 0:
        save_model(model, model_dir, arch=t.arch, num_classes=nc, in_channels=ic, overwrite=True)  # the cache's own
        write_json(folder / "done.json", info)
        shutil.rmtree(folder / RECORDED, ignore_errors=True)
        (folder / NEW_TEACHER_MARK).unlink(missing_ok=True)
    return model, {**info, "path": str(model_dir)}


#: how close a restored teacher's test metrics, evaluated here, must come to the record's when the record
#: has no weight digest: the same network gives the same predictions up to float rounding on another CPU
#: (a borderline image or two), another network is off by tens of images and by percents of loss
RESTORE_ACC_IMAGES = 5
RESTORE_LOSS_RTOL = 1e-3


def restore_teacher(cfg: CompareConfig, source: str | os.PathLike, *, data: Any = None, origin: Optional[str] = None,
                    log: Callable[[str], None] = log_info) -> dict:
    """Put a trained teacher's weights back into the config's cache, checked against its record.

    For a teacher whose record (``done.json``) is here without its weights — a new machine, a clone of
    committed records — and that this machine cannot retrain bit for bit (another CPU type), or that
    would take hours to retrain: ``source`` is a copy of its weights (a model folder as the cache
    writes it, a training checkpoint, or a ``.safetensors`` state dict), e.g. from another machine or
    from the repository's history. They are accepted only as the network the record describes: the
    same weight digest when the record has one; otherwise (older records) the test set evaluated here
    must give the recorded test accuracy (within ``RESTORE_ACC_IMAGES`` images) and the last epoch's
    test loss (relative ``RESTORE_LOSS_RTOL``), and the validation metrics likewise when recorded. The
    record then gains the digest (later restorations are checked by it) and a ``restored`` note (where the
    weights came from: ``origin``, e.g. a commit, or else ``source``); the recorded runs stand. Returns the
    record. ``source`` is only read.

    Raises :class:`CompareError` when the config names its teacher by ``teacher.path``, there is no
    record to check against, the cache holds other weights already, or the weights are another network.
    """
    import datetime

    from inhernet.train import load_model, read_metrics, save_model
    from inhernet.utils import machine_record, weights_digest

    t = cfg.teacher
    if t.path:
        raise CompareError(f"--teacher-weights: the config gives its teacher by teacher.path ({t.path}); there is "
                           "no cached teacher to restore. Drop the option (or point teacher.path at the weights).")
    folder = teacher_folder(cfg)
    model_dir = folder / "model"
    src = Path(source)
    if not src.exists():
        raise CompareError(f"--teacher-weights: {src} does not exist; give a model folder, a checkpoint or a "
                           ".safetensors file of the trained teacher.")
    if data is None:
        data = load_data(cfg)
    nc, ic = data.num_classes, data.in_channels
    model, _ = load_model(src, arch=t.arch, expect_arch=t.arch, num_classes=nc, in_channels=ic)
    digest = weights_digest(model)
    with file_lock(_teacher_lock(cfg), wait=False) as taken:
        if not taken and single_process(cfg):
            raise CompareError(f"--teacher-weights: another process is training the teacher in {folder}; stop it "
                               "first (its checkpoint stays), then restore.")
        aside = folder / RECORDED
        done = read_json(folder / "done.json")
        from_aside = done is None and (aside / "done.json").is_file()  # an interrupted retraining here
        record = read_json(aside / "done.json") if from_aside else done
        if record is None:
            raise CompareError(
                f"--teacher-weights: {folder} holds no record of a trained {t.arch} to check the weights against "
                "(no done.json). To compare against weights of your own, set teacher.path in the config.")
        if done is not None and teacher_weights_here(model_dir):
            here, _ = load_model(model_dir, expect_arch=t.arch, num_classes=nc, in_channels=ic)
            if weights_digest(here) == digest:
                log(f"teacher: {model_dir} already holds these weights (digest {digest}); nothing to restore")
                return {**done, "weights_digest": digest}
            raise CompareError(f"--teacher-weights: {model_dir} already holds other weights than {src}; the "
                               "teacher is there, nothing is replaced. Delete that folder first to restore.")
        rows = read_metrics(aside if from_aside else folder)
        if record.get("weights_digest"):
            if record["weights_digest"] != digest:
                raise CompareError(f"--teacher-weights: {src} holds weights with digest {digest}, but the record "
                                   f"{folder / 'done.json'} is of digest {record['weights_digest']}: another "
                                   "network. Nothing was changed.")
            checked = f"weight digest {digest} equals the record's"
        else:
            checked = _check_restored_metrics(model, cfg, data, record, rows[-1] if rows else {}, src, folder)
        log(f"teacher: {src} is the recorded {t.arch} ({checked}); restoring it into {model_dir}")
        if global_rank() == 0:
            save_model(model, model_dir, arch=t.arch, num_classes=nc, in_channels=ic, overwrite=True)
            if from_aside:  # the committed record and metrics come back; the retraining's epochs go
                shutil.rmtree(folder / CHECKPOINT_DIR, ignore_errors=True)
                for name in ("done.json", "metrics.jsonl"):
                    if (aside / name).exists():
                        os.replace(aside / name, folder / name)
                shutil.rmtree(aside, ignore_errors=True)
            note = {"from": origin or str(src), "checked": checked, "on": machine_record(),
                    "date": datetime.date.today().isoformat()}
            record = {**record, "weights_digest": digest, "restored": [*record.get("restored", []), note]}
            write_json(folder / "done.json", record)
    return record


def _check_restored_metrics(model: nn.Module, cfg: CompareConfig, data: Any, record: dict, last: dict,
                            src: Path, folder: Path) -> str:
    """Evaluate a teacher restored against a record without a digest; the checks it passed, in words,
    or :class:`CompareError` naming the metric that differs."""
    from inhernet.train import evaluate

    bs = cfg.schedule.eval_batch_size
    test = evaluate(model, data.test, batch_size=bs)
    checks = [("test accuracy", test["acc"], record["test_acc"], len(data.test.y))]
    if "test/loss" in last:
        checks.append(("test loss", test["loss"], last["test/loss"], None))
    if "val/acc" in last:
        tdata = data if cfg.teacher.subset == "same" else load_data(cfg, subset=cfg.teacher.subset)
        val = evaluate(model, tdata.val, batch_size=bs)
        checks += [("validation accuracy", val["acc"], last["val/acc"], len(tdata.val.y)),
                   ("validation loss", val["loss"], last["val/loss"], None)]
    said = []
    for what, got, want, n in checks:
        if n is not None:
            off = round(abs(got - want) * n)
            ok, text = off <= RESTORE_ACC_IMAGES, f"{what} {100 * got:.2f} % ({off} image(s) from the record)"
        else:
            rel = abs(got - want) / max(abs(want), 1e-12)
            ok, text = rel <= RESTORE_LOSS_RTOL, f"{what} {got:.6f} (record {want:.6f}, relative {rel:.1e})"
        if not ok:
            raise CompareError(
                f"--teacher-weights: {src} is not the teacher {folder / 'done.json'} records: evaluated here, its "
                f"{text}; the same network differs by at most {RESTORE_ACC_IMAGES} images and {RESTORE_LOSS_RTOL:g} "
                "relative loss. Nothing was changed.")
        said.append(text)
    return "evaluated here: " + ", ".join(said)


def teacher_state(cfg: CompareConfig) -> str:
    """One line on the comparison's teacher as it stands here, nothing trained or changed: given, done,
    a record whose weights are not here (and whether a retraining here could repeat it), or how far its
    (re)training has come (``inhernet compare CONFIG --status``)."""
    from inhernet.train import read_metrics

    t = cfg.teacher
    if t.path:
        return f"given: {t.path}"
    folder = teacher_folder(cfg)
    done = read_json(folder / "done.json")
    threads = t.threads or cfg.trainer.threads or torch.get_num_threads()
    if done is not None:
        acc = f"done, test acc {100 * done['test_acc']:.2f} %"
        if teacher_weights_here(folder / "model"):
            return acc
        why = unrepeatable_reason(done, threads)
        if why:
            return f"{acc} (record only; {why}: not retrained here; `--new-teacher` trains a new one)"
        return f"{acc} (record only: its weights are not here; the next run retrains it, checked epoch by epoch)"
    epochs = len(read_metrics(folder))
    recorded = read_json(folder / RECORDED / "done.json")
    if recorded is None:
        return f"epoch {epochs} of {t.epochs}" if epochs else "not trained yet"
    what = ("a new teacher (--new-teacher) replacing" if (folder / NEW_TEACHER_MARK).is_file() else
            "retraining, checked against,")
    return f"epoch {epochs} of {t.epochs}: {what} the recorded {100 * recorded['test_acc']:.2f} % teacher"


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


def teacher_path(out_dir: Path, tinfo: dict) -> Path:
    """Where ``teacher.json``'s teacher lies: its path is stored relative to ``out_dir`` (older runs
    stored it relative to the directory `inhernet compare` ran in, tried second)."""
    p = Path(tinfo["path"])
    if p.is_absolute():
        return p
    return out_dir / p if (out_dir / p).exists() or not p.exists() else p
