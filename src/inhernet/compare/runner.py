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

**A run counts only with the teacher it was trained against** (the teacher's weight digest; a teacher
retrained on a new machine is checked against its record): :mod:`inhernet.compare.teacher`.

**Several processes share one comparison**: start ``inhernet compare CONFIG`` two (or more) times,
on one machine or on machines sharing the folder. Each run is claimed with a lock file
(``out_dir/locks/``): a process skips a run another one is training and takes the next; a teacher
being trained is waited for, not trained twice. Every process writes the report of what is
finished when it ends; the last one writes the complete table (``inhernet report`` rebuilds it any
time). Not used under multi-device strategies, whose processes run the same runs together.
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from torch import nn

from inhernet.train.fit import global_rank
from inhernet.train.validate import shows_bar
from inhernet.utils import read_json, stable_hash, write_json

from .basics import (CompareError, StaleRunError, data_identity, file_lock, inherit_identity, load_data, log_info,
                     single_process, trainer_kwargs)
from .config import CompareConfig, MethodConfig
from .teacher import (prepare_teacher, teacher_in_training_elsewhere, teacher_key, teacher_path, teacher_ready,
                      teacher_weights_here, trained_against)

__all__ = ["CALIBRATION_IMAGES", "build_method_model", "calibration_batches", "clear_runs", "comparison_status",
           "finished_run", "plan_runs", "rebuild_report", "refuse_stale", "run_all", "run_compare", "run_states",
           "select_runs", "write_comparison_header"]


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
    if method.kind == "inhernet":  # a library default the method relies on is part of what it trains
        m["inherit"] = inherit_identity(m.get("inherit") or {})
    return {"teacher": tkey, "data": data_identity(cfg), "student": cfg.student.arch,
            "schedule": asdict(cfg.schedule), "method": m, "seed": seed}


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
                                     progress=shows_bar(progress))
    loss = DistillLoss.from_dict(m.loss_spec())
    s = cfg.schedule
    t0 = time.perf_counter()
    try:
        res = fit(model, data, out_dir=d, teacher=teacher if loss.needs_teacher else None, loss=loss,
                  epochs=s.epochs, batch_size=s.batch_size, eval_batch_size=s.eval_batch_size, lr=s.lr,
                  momentum=s.momentum, weight_decay=s.weight_decay, nesterov=s.nesterov, milestones=s.milestones,
                  gamma=s.gamma, gate_lr_scale=m.gate_lr_scale, augment=cfg.data.augment, seed=seed, resume=True,
                  model_meta=meta,
                  run_name=f"{m.name}/seed{seed}", **trainer_kwargs(cfg, progress))
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


def run_states(runs: list[dict], of: str, total: int) -> tuple[list[str], int]:
    """One line per planned run that has started (done with its test accuracy, failed, or how many
    ``of`` — "epoch" / "step" rows — of ``total`` its metrics hold, and whether its checkpoint is here to
    resume from), and how many are done. Reads the folders only."""
    from inhernet.train import read_metrics
    from inhernet.train.fit import CHECKPOINT_DIR, CHECKPOINT_NAME

    lines, n_done = [], 0
    for r in runs:
        rec = _planned_record(r)
        name = f"{r['method'].name} seed {r['seed']}"
        if rec is not None and "reason" not in rec:  # done.json (failed.json says why it failed)
            n_done += 1
            acc = (rec.get("final") or {}).get("test/acc")
            lines.append(f"{name}: done" + (f", test acc {100 * acc:.2f} %" if acc is not None else ""))
        elif rec is not None:
            lines.append(f"{name}: FAILED ({rec.get('reason', 'see failed.json')})")
        elif (rows := len(read_metrics(r["dir"]))):
            here = (r["dir"] / CHECKPOINT_DIR / CHECKPOINT_NAME).is_file()
            lines.append(f"{name}: {of} {rows} of {total} " + ("(in progress here)" if here else
                                                              "(recorded, but no checkpoint here: it starts over)"))
    return lines, n_done


def comparison_status(cfg: CompareConfig) -> str:
    """What ``inhernet compare CONFIG --status`` prints: the teacher's state and every started run's,
    and how many of the planned runs are done. Trains, loads and writes nothing."""
    from .teacher import teacher_state

    runs = plan_runs(cfg, teacher_key(cfg))
    lines, n_done = run_states(runs, "epoch", cfg.schedule.epochs)
    return "\n".join([cfg.name, f"  teacher {cfg.teacher.arch}: {teacher_state(cfg)}", *(f"  {x}" for x in lines),
                      f"  {n_done} of {len(runs)} runs done"])


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
                log: Callable[[str], None] = log_info, report: bool = True,
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


def rebuild_report(out_dir: str | os.PathLike, *, latency: bool = True, log: Callable[[str], None] = log_info) -> dict:
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
    if tpath.is_file() or teacher_weights_here(tpath):
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
