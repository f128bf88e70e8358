"""Aggregate finished runs into ``results.json``, a Markdown table and PNG plots."""

from __future__ import annotations

import json
import math
import os
import statistics
from dataclasses import asdict
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn

from inhernet.utils import atomic_write, cpu_name, stable_hash

__all__ = ["build_results", "curve_stats", "format_table", "has_head_curves", "mean_std", "plot_heads", "plot_results",
           "size_family", "size_families", "time_note", "write_report"]


def mean_std(xs: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation, ignoring None / NaN (std 0 for one value, NaN for none)."""
    xs = [x for x in xs if x is not None and not (isinstance(x, float) and math.isnan(x))]
    if not xs:
        return float("nan"), float("nan")
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def curve_stats(curves: list[list[Optional[float]]]) -> dict:
    """Per-epoch ``{"mean": [...], "std": [...]}`` over seeds' curves, cut to the shortest curve."""
    if not curves:
        return {"mean": [], "std": []}
    n = min(len(c) for c in curves)
    mean, std = [], []
    for e in range(n):
        m, s = mean_std([c[e] for c in curves])
        mean.append(m)
        std.append(s)
    return {"mean": mean, "std": std}


#: the head diagnostics of gated InherNets (inhernet.train.heads): metric -> results.json names
HEAD_METRICS = {"heads/cosine_mean": "head_cosine", "gate/entropy": "gate_entropy",
                "gate/grad_ratio": "gate_grad_ratio"}


def _head_stats(rs: list[dict]) -> dict:
    """Per-epoch curves (mean ± std over seeds) and last-epoch means of the head diagnostics, for the
    metrics the runs of one method recorded (none for students and ungated InherNets)."""
    out: dict[str, Any] = {}
    for key, name in HEAD_METRICS.items():
        curves = [r.get("curve", {}).get(key) for r in rs]
        curves = [c for c in curves if c and any(v is not None for v in c)]
        if not curves:
            continue
        out[f"curve_{name}"] = curve_stats(curves)
        last = mean_std([r.get("final", {}).get(key) for r in rs])[0]
        out[f"{name}_last"] = None if math.isnan(last) else last
    return out


def build_results(cfg: Any, data: Any, teacher: nn.Module, tinfo: dict, runs: list[dict], *,
                  measure: bool = True, previous: Optional[dict] = None, wall_time_s: Optional[float] = None) -> dict:
    """The ``results.json`` object: one entry per method (mean ± std over seeds) plus the teacher."""
    import inhernet
    from inhernet.train import load_model, measure_latency

    shape = (1, data.in_channels, *data.image_size)
    by_method: dict[str, list[dict]] = {}
    failed_by_method: dict[str, list[dict]] = {}
    for r in runs:
        (failed_by_method if r.get("failed") else by_method).setdefault(r["method"], []).append(r)
    methods = []
    models: dict[str, nn.Module] = {"teacher": teacher}
    for m in cfg.methods:
        rs = sorted(by_method.get(m.name, []), key=lambda r: r["seed"])
        fails = sorted(failed_by_method.get(m.name, []), key=lambda r: r["seed"])
        entry: dict[str, Any] = {"name": m.name, "label": m.label or m.name, "kind": m.kind,
                                 "loss": m.loss_kind, "family": size_family(m), "seeds": [r["seed"] for r in rs],
                                 "complete": len(rs) == len(cfg.seeds_of(m)),
                                 "failed": [{"seed": r["seed"], "reason": r["reason"]} for r in fails]}
        if rs:
            accs = [r["final"].get("test/acc") for r in rs]
            vals = [r["final"].get("val/acc") for r in rs]
            entry.update({
                "test_acc": accs, "test_acc_mean": mean_std(accs)[0], "test_acc_std": mean_std(accs)[1],
                "val_acc_mean": mean_std(vals)[0], "val_acc_std": mean_std(vals)[1],
                "params": rs[0]["params"], "flops": rs[0]["flops"],
                "curve_test_acc": curve_stats([r["curve"]["test/acc"] for r in rs]),
                "curve_val_acc": curve_stats([r["curve"]["val/acc"] for r in rs]),
                "train_time_s_mean": mean_std([r.get("train_time_s") for r in rs])[0],
                "epochs": rs[0].get("epochs"),
            })
            entry.update(_head_stats(rs))
            if "inherit" in rs[0]:
                entry["inherit"] = {k: v for k, v in rs[0]["inherit"].items()
                                    if k in ("rank", "heads", "head_init", "head_init_scale", "budget", "budget_mode",
                                             "init", "gate", "structure", "head_scale", "rank_fraction", "energy")}
                entry["layer_summary"] = rs[0].get("layer_summary")
            if measure:
                mdir = Path(cfg.out_dir) / "runs" / m.name / f"seed{rs[0]['seed']}" / "model"
                try:
                    models[m.name], _ = load_model(mdir)
                except Exception as err:  # noqa: BLE001 - latency is reported as missing
                    entry["latency_error"] = str(err)
        methods.append(entry)

    t_entry = {"name": "teacher", "label": f"teacher ({cfg.teacher.arch})", "kind": "teacher", "loss": "ce",
               "arch": cfg.teacher.arch, "test_acc_mean": tinfo.get("test_acc"), "test_acc_std": 0.0,
               "params": inhernet.count_parameters(teacher), "flops": inhernet.count_flops(teacher, shape),
               "seeds": [cfg.teacher.seed], "source": tinfo.get("source"), "path": tinfo.get("path")}
    if tinfo.get("curve"):
        t_entry["curve_test_acc"] = {"mean": tinfo["curve"], "std": [0.0] * len(tinfo["curve"])}

    lat_cfg = cfg.latency
    latency: dict[str, dict] = {}
    if measure and lat_cfg.enabled:
        latency = measure_latency(models, (lat_cfg.batch_size, *shape[1:]), rounds=lat_cfg.rounds,
                                  iters=lat_cfg.iters, threads=lat_cfg.threads)
    elif previous and lat_cfg.enabled:  # disabled: no column, not even an earlier measurement's
        for e in previous.get("methods", []) + [previous.get("teacher", {})]:
            if e.get("latency_ms") is not None:
                latency[e["name"]] = {"ms_per_image": e["latency_ms"]}
    for e in methods + [t_entry]:
        if e["name"] in latency:
            e["latency_ms"] = latency[e["name"]]["ms_per_image"]

    # convergence: first epoch whose mean test accuracy reaches the best KD student's final accuracy
    kd_students = [e for e in methods if e["kind"] in ("student_kd", "student_dkd", "student_lskd")
                   and e.get("test_acc_mean") is not None and not math.isnan(e["test_acc_mean"])]
    ref = max(kd_students, key=lambda e: e["test_acc_mean"]) if kd_students else None
    if ref is not None:
        for e in methods:
            curve = e.get("curve_test_acc", {}).get("mean", [])
            hit = next((i + 1 for i, a in enumerate(curve) if a is not None and a >= ref["test_acc_mean"]), None)
            e["epochs_to_best_kd_student"] = hit
    student_params = next((e["params"] for e in methods if e["kind"] == "student" and "params" in e), None)
    if student_params is None:
        from inhernet.models import create_model

        student_params = inhernet.count_parameters(
            create_model(cfg.student.arch, num_classes=data.num_classes, in_channels=data.in_channels))
    return {
        "name": cfg.name,
        "config": cfg.to_dict(),
        "data": {"name": data.name, "train": len(data.train.y), "val": len(data.val.y), "test": len(data.test.y),
                 "num_classes": data.num_classes, "shape": list(shape[1:])},
        "teacher": t_entry,
        "student_arch": cfg.student.arch,
        "student_params": student_params,
        "reference_kd_student": ref["name"] if ref else None,
        "methods": methods,
        "failed_runs": [{"method": e["name"], **f} for e in methods for f in e["failed"]],
        "latency": {"batch_size": lat_cfg.batch_size, "threads": lat_cfg.threads or torch.get_num_threads(),
                    "measured": bool(measure and lat_cfg.enabled), "enabled": bool(lat_cfg.enabled), "cpu": cpu_name(),
                    "torch": torch.__version__},
        "wall_time_s": wall_time_s,
    }


def _pct(x: Optional[float]) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.2f}"


def format_table(results: dict) -> str:
    """The Markdown results table (last-epoch test accuracy, mean ± std over seeds)."""
    sp = results.get("student_params") or 0
    ref = results.get("reference_kd_student")
    cfg = results["config"]
    head = ["method", "kind", "loss", "test acc % (last epoch)", "seeds", "params", "× student", "MFLOPs/img",
            "CPU ms/img"]
    if ref:
        head.append(f"epochs to {ref} acc")
    heads_cols = has_head_curves(results)
    if heads_cols:
        head += ["head cos (last)", "gate grad ratio (last)"]
    rows = []
    for e in [results["teacher"], *results["methods"]]:
        n = len(e.get("seeds", []))
        n_failed = len(e.get("failed", []))
        if e.get("test_acc_mean") is None:
            acc = "FAILED" if n_failed else "–"
        elif e["kind"] == "teacher":
            acc = _pct(e["test_acc_mean"])
        elif n == 1:
            acc = f"{_pct(e['test_acc_mean'])} (n = 1)"
        else:
            acc = f"{_pct(e['test_acc_mean'])} ± {_pct(e['test_acc_std'])}"
        seeds = str(n) + (f", {n_failed} FAILED" if n_failed else "")
        if not e.get("complete", True) and not n_failed:
            seeds += " (incomplete)"
        row = [e.get("label", e["name"]), e["kind"], e.get("loss", ""), acc, seeds,
               f"{e['params']:,}" if e.get("params") else "–",
               f"{e['params'] / sp:.2f}" if e.get("params") and sp else "–",
               f"{e['flops'] / 1e6:.1f}" if e.get("flops") else "–",
               f"{e['latency_ms']:.2f}" if e.get("latency_ms") is not None else "–"]
        if ref:
            row.append("" if e["kind"] == "teacher" else str(e.get("epochs_to_best_kd_student") or "not reached"))
        if heads_cols:
            cos, ratio = e.get("head_cosine_last"), e.get("gate_grad_ratio_last")
            row += ["–" if cos is None else f"{cos:.6f}", "–" if ratio is None else f"{ratio:.1e}"]
        rows.append(row)
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    d = results["data"]
    s = cfg["schedule"]
    lat = results.get("latency", {})
    if not lat.get("enabled", True):
        lat_note = " (not measured: latency.enabled is false)"
    else:
        earlier = any(e.get("latency_ms") is not None for e in results.get("methods", []))
        lat_note = ("" if lat.get("measured", True) else " (from an earlier measurement)" if earlier
                    else " (not measured: the table was rebuilt without latency and none was measured before)")
    notes = [
        "",
        f"Data: {d['name']}, train {d['train']:,} / val {d['val']:,} / test {d['test']:,} images "
        f"({'×'.join(map(str, d['shape']))}, {d['num_classes']} classes), augment {cfg['data']['augment']}.",
        f"Schedule (every method): {s['epochs']} epochs, batch {s['batch_size']}, SGD lr {s['lr']} momentum "
        f"{s['momentum']} wd {s['weight_decay']}, lr ×{s['gamma']} at the paper's milestones scaled; seeds "
        f"{cfg['seeds']}. Teacher {cfg['teacher']['arch']} ({results['teacher'].get('source')}), student "
        f"{results['student_arch']} ({sp:,} params).",
        f"Accuracy: last epoch, not best epoch; mean ± sample std over seeds. Latency: median of "
        f"interleaved rounds, batch {lat.get('batch_size')}, {lat.get('threads')} thread(s), torch "
        f"{lat.get('torch')}" + lat_note + ".",
    ]
    if heads_cols:
        notes.append("Head cos: the heads' pairwise cosine (mean over pairs and layers; 1 = the heads are copies); "
                     "gate grad ratio: ‖∇gate‖ / ‖∇heads‖ (median over layers, mean over the epoch's "
                     "steps; ≈ 0: the gate does not learn). Last epoch, mean over seeds; see heads_vs_epoch.png.")
    unmeasured = [e["name"] for e in results.get("methods", []) if e.get("latency_error")]
    if unmeasured and lat.get("measured", True) and lat.get("enabled", True):
        notes.append(f"Latency not measured for {', '.join(unmeasured)}: no model weights in the run folder (a folder "
                     "kept with its run records only, e.g. committed without weights).")
    for f in results.get("failed_runs", []):
        notes.append(f"FAILED: {f['method']} seed {f['seed']} — {f['reason']}; not counted in its mean.")
    note = time_note(results)
    if note:
        notes.append(note)
    return "\n".join(lines + notes)


def time_note(results: dict) -> Optional[str]:
    """The table's line on time: the training time of every finished run, summed (resumed parts
    included), and the wall time of the invocation that wrote the table. A comparison resumed many
    times — or reported by a process that only read finished records — would otherwise print just
    its last invocation's wall time (0.0 min for a report that trained nothing); side by side, the
    two figures say how much of the table that invocation trained."""
    runs = [(e.get("train_time_s_mean"), len(e.get("seeds") or [])) for e in results.get("methods", [])]
    total = sum(t * n for t, n in runs if t is not None)
    count = sum(n for t, n in runs if t is not None)
    wall = results.get("wall_time_s")
    parts = []
    if count:
        parts.append(f"Training time: {total / 60:.1f} min summed over the {count} finished run(s)")
    if wall is not None:
        parts.append(f"wall time of the invocation that wrote this table: {wall / 60:.1f} min")
    if not parts:
        return None
    text = "; ".join(parts)
    return text[0].upper() + text[1:] + "."


def _save(fig, path: Path) -> Path:
    """Lay out, write (PNG, 120 dpi) and close a figure."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


#: the inherit options that set a method's size: rows equal in every other option form one sweep
SIZE_OPTIONS = ("rank", "rank_fraction", "energy", "budget")


def size_family(method: Any) -> str:
    """What a method is apart from its size: its config (a :class:`~inhernet.compare.config.MethodConfig`)
    without name, label, seeds and the inherit options of :data:`SIZE_OPTIONS`, as a short hash. Rows with
    the same family are one variant at several sizes (a budget or rank sweep)."""
    d = asdict(method)
    for k in ("name", "label", "seeds"):
        d.pop(k, None)
    d["inherit"] = {k: v for k, v in (d.get("inherit") or {}).items() if k not in SIZE_OPTIONS}
    return stable_hash(d)


def size_families(methods: list[dict]) -> list[list[dict]]:
    """The groups of result rows (``build_results``' method entries) of one inherited variant at two or
    more sizes (the same ``family``, distinct parameter counts), in row order: the sweeps to draw as lines."""
    groups: dict[str, list[dict]] = {}
    for e in methods:
        if e.get("kind") == "inhernet" and e.get("family") and e.get("params"):
            groups.setdefault(e["family"], []).append(e)
    return [g for g in groups.values() if len({e["params"] for e in g}) > 1]


def _crowded(e: dict, plotted: list[dict], span: float) -> bool:
    """Whether another plotted point lies within 3 % of the parameter axis (log) and 4 % of the accuracy
    range of ``e``, where their labels would overprint."""
    return any(o is not e and abs(math.log10(o["params"] / e["params"])) < 0.03
               and abs(100 * (o["test_acc_mean"] - e["test_acc_mean"])) < 0.04 * max(span, 1e-9) for o in plotted)


def plot_results(results: dict, out_dir: Path) -> list[Path]:
    """``acc_vs_epoch.png`` (mean test accuracy per epoch, ±std band) and ``acc_vs_params.png``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    paths = []
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    for e in results["methods"]:
        c = e.get("curve_test_acc")
        if not c or not c["mean"]:
            continue
        xs = list(range(1, len(c["mean"]) + 1))
        mean = [100 * v for v in c["mean"]]
        std = [100 * v for v in c["std"]]
        (line,) = ax.plot(xs, mean, marker="o", ms=3, label=f"{e['label']} (n={len(e['seeds'])})")
        ax.fill_between(xs, [m - s for m, s in zip(mean, std)], [m + s for m, s in zip(mean, std)],
                        color=line.get_color(), alpha=0.18, linewidth=0)
    t = results["teacher"]
    if t.get("test_acc_mean") is not None:
        ax.axhline(100 * t["test_acc_mean"], color="k", ls="--", lw=1, label=t["label"])
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"{results['name']}: test accuracy per epoch (mean ± std over seeds)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    paths.append(_save(fig, out_dir / "acc_vs_epoch.png"))

    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    markers = {"student": "s", "student_kd": "s", "student_dkd": "s", "student_lskd": "s", "inhernet": "o",
               "teacher": "*"}
    plotted = [e for e in [*results["methods"], t]
               if e.get("test_acc_mean") is not None and e.get("params") and not math.isnan(e["test_acc_mean"])]
    for members in size_families(plotted):  # a budget / rank sweep: one line through its sizes
        members = sorted(members, key=lambda e: e["params"])
        ax.plot([e["params"] for e in members], [100 * e["test_acc_mean"] for e in members], color="gray",
                lw=1, alpha=0.6, zorder=0)
    span = max(100 * e["test_acc_mean"] for e in plotted) - min(100 * e["test_acc_mean"] for e in plotted) if plotted else 0
    for e in plotted:
        ax.errorbar(e["params"], 100 * e["test_acc_mean"], yerr=100 * (e.get("test_acc_std") or 0.0),
                    fmt=markers.get(e["kind"], "o"), ms=8 if e["kind"] == "teacher" else 6, capsize=3,
                    label=e["label"])
        if not _crowded(e, plotted, span):  # labels of points on top of each other would overprint: the legend names them
            ax.annotate(e["label"], (e["params"], 100 * e["test_acc_mean"]), textcoords="offset points",
                        xytext=(5, 4), fontsize=7)
    if results.get("student_params"):
        ax.axvline(results["student_params"], color="gray", ls=":", lw=1, label="student size")
    ax.set_xscale("log")
    ax.set_xlabel("parameters (log scale)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"{results['name']}: accuracy vs parameters")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7, loc="lower right")
    paths.append(_save(fig, out_dir / "acc_vs_params.png"))
    return paths


def has_head_curves(results: dict) -> bool:
    """Whether some method of ``results`` recorded head diagnostics (a gated InherNet)."""
    return any(e.get("curve_head_cosine") or e.get("curve_gate_entropy") for e in results.get("methods", []))


def plot_heads(results: dict, out_dir: Path) -> Optional[Path]:
    """``heads_vs_epoch.png``: head cosine, gate entropy and (log scale) gate gradient ratio per
    epoch, one line per gated method (mean over seeds); None, and no file, when no method has them."""
    path = Path(out_dir) / "heads_vs_epoch.png"
    if not has_head_curves(results):
        path.unlink(missing_ok=True)  # an earlier report's plot would describe runs no longer there
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    panels = [("curve_head_cosine", "head cosine (mean over pairs, layers)", "linear"),
              ("curve_gate_entropy", "gate entropy / log H (1 = uniform)", "linear"),
              ("curve_gate_grad_ratio", "‖∇gate‖ / ‖∇heads‖ (median over layers)", "log")]
    fig, axes = plt.subplots(1, len(panels), figsize=(13.5, 4.2))
    for ax, (key, title, scale) in zip(axes, panels):
        drawn = False
        for e in results["methods"]:
            c = e.get(key)
            if not c or not c["mean"]:
                continue
            pts = [(i + 1, v) for i, v in enumerate(c["mean"])
                   if v is not None and not math.isnan(v) and (scale != "log" or v > 0)]
            if not pts:
                continue
            ax.plot(*zip(*pts), marker="o", ms=3, label=f"{e['label']} (n={len(e['seeds'])})")
            drawn = True
        if drawn and scale == "log":
            ax.set_yscale("log")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
        ax.set_title(title, fontsize=9)
        ax.grid(alpha=0.3, which="both")
        if drawn:
            ax.legend(fontsize=7)
    fig.suptitle(f"{results['name']}: do the heads live? (mean over seeds)", fontsize=10)
    return _save(fig, path)


def write_report(results: dict, out_dir: os.PathLike | str) -> str:
    """Write ``results.json``, ``results.md`` and the plots (``heads_vs_epoch.png`` too when a gated
    InherNet recorded head diagnostics) into ``out_dir``; return the table."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / "results.json", json.dumps(results, indent=2, default=str))
    table = format_table(results)
    heads_png = "\n![head cosine and gate entropy per epoch](heads_vs_epoch.png)\n" if has_head_curves(results) else ""
    (out / "results.md").write_text(f"# {results['name']}\n\n{table}\n\n![accuracy per epoch](acc_vs_epoch.png)\n\n"
                                    f"![accuracy vs parameters](acc_vs_params.png)\n{heads_png}")
    plot_results(results, out)
    plot_heads(results, out)
    return table
