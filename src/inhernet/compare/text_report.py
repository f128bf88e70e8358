"""The report of a transformer comparison: ``results.json``, a Markdown table and two plots.

Every score is shown before and after fine-tuning (mean ± sample std over seeds; "n = 1" when one
run stands behind it), with the parameters — all of them, and the linear layers inside the
transformer blocks as a share of the teacher's, the budget convention of the LLM-compression papers
— and tokens/s (or sentences/s) measured side by side.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Optional

import torch

from inhernet.utils import atomic_write, cpu_name

from .report import curve_stats, mean_std, time_note

__all__ = ["build_text_results", "describe_data", "format_text_table", "plot_text_results", "write_text_report"]

#: the scores of each task, (results key, column title, is a percentage)
SCORES = {
    "causal-lm": [("held_out_ppl", "held-out ppl", False), ("wikitext2_ppl", "WikiText-2 ppl", False)],
    "sequence-classification": [("val_acc", "val acc %", True), ("test_acc", "test acc %", True)],
}
#: the score the plots and the headline use
MAIN_SCORE = {"causal-lm": "wikitext2_ppl", "sequence-classification": "test_acc"}


def _stats(runs: list[dict], phase: str, key: str) -> Optional[dict]:
    xs = [r.get(phase, {}).get(key) for r in runs if r.get(phase)]
    xs = [x for x in xs if x is not None]
    if not xs:
        return None
    m, s = mean_std(xs)
    return {"mean": m, "std": s, "n": len(xs), "values": xs}


def build_text_results(cfg: Any, data_info: dict, tinfo: dict, runs: list[dict], speed: dict, *,
                       wall_time_s: Optional[float] = None) -> dict:
    """Aggregate the finished runs (``done.json`` / ``failed.json`` contents) per method."""
    task = cfg.task
    keys = [k for k, _, _ in SCORES[task]]
    main = MAIN_SCORE[task] if (task != "causal-lm" or cfg.evaluation.wikitext2) else "held_out_ppl"
    teacher_blp = tinfo.get("block_linear_params")
    methods = []
    for m in cfg.methods:
        rs = [r for r in runs if r.get("method") == m.name and not r.get("failed")]
        fails = [r for r in runs if r.get("method") == m.name and r.get("failed")]
        e: dict[str, Any] = {"name": m.name, "label": m.label or m.name, "kind": m.kind, "kd": m.kd,
                             "budget": m.budget, "finetune": m.finetune, "seeds": [r["seed"] for r in rs],
                             "failed": [{"seed": r["seed"], "reason": r.get("reason")} for r in fails]}
        if rs:
            e["params"] = rs[0]["params"]
            e["block_linear_params"] = rs[0].get("block_linear_params")
            if teacher_blp and e["block_linear_params"] is not None:
                e["block_linear_fraction"] = e["block_linear_params"] / teacher_blp
            for phase in ("before", "after"):
                e[phase] = {k: s for k in keys for s in [_stats(rs, phase, k)] if s is not None}
            times = [r.get("train_time_s") for r in rs if r.get("train_time_s") is not None]
            e["train_time_s_mean"] = mean_std(times)[0] if times else None
            e["tokens_seen"] = rs[0].get("tokens_seen")
            # the evaluation curve during fine-tuning, starting at step 0 with the score before it
            curve_key, start_key = ("eval/ppl", "held_out_ppl") if task == "causal-lm" else ("test/acc", "test_acc")
            curves = [[r.get("before", {}).get(start_key), *r["curve"][curve_key]] for r in rs
                      if r.get("curve", {}).get(curve_key)]
            if curves:
                steps = [0, *rs[0]["curve"]["step"]]
                e["curve"] = {"step": steps[:min(len(c) for c in curves)], **curve_stats(curves)}
            if rs[0].get("layer_summary"):
                e["layer_summary"] = rs[0]["layer_summary"]
        if m.name in speed or (m.kind == "teacher" and "teacher" in speed):
            e["speed"] = speed.get(m.name, speed.get("teacher"))  # a fine-tuned teacher runs at the teacher's speed
        methods.append(e)
    return {"name": cfg.name, "task": task, "config": cfg.to_dict(), "data": data_info, "main_score": main,
            "teacher": {**{k: v for k, v in tinfo.items() if k != "path"}, "speed": speed.get("teacher")},
            "speed": speed, "methods": methods, "failed_runs": [{"method": e["name"], **f} for e in methods for f in e["failed"]],
            "speed_settings": {"threads": cfg.evaluation.threads or torch.get_num_threads(), "torch": torch.__version__,
                               "cpu": cpu_name(),
                               "tokens": cfg.evaluation.speed_tokens, "batch": cfg.evaluation.speed_batch,
                               "new_tokens": cfg.evaluation.new_tokens},
            "wall_time_s": wall_time_s}


def _fmt(stat: Optional[dict], pct: bool) -> str:
    if not stat or stat.get("mean") is None or (isinstance(stat["mean"], float) and math.isnan(stat["mean"])):
        return "–"
    f = (lambda x: f"{100 * x:.2f}") if pct else (lambda x: f"{x:,.2f}")
    if stat["n"] == 1:
        return f"{f(stat['mean'])} (n = 1)"
    if stat["std"] == 0 and len(set(stat.get("values", []))) == 1:  # e.g. an SVD init: no randomness
        return f"{f(stat['mean'])} (all {stat['n']} seeds)"
    return f"{f(stat['mean'])} ± {f(stat['std'])}"


def format_text_table(results: dict) -> str:
    """The Markdown table: scores before / after fine-tuning, sizes, speed, and the notes that say
    how every figure was made."""
    task = results["task"]
    # a score no model has (e.g. val accuracy without a validation split) gets no columns
    scores = [sc for sc in SCORES[task] if results["teacher"].get("scores", {}).get(sc[0]) is not None
              or any(sc[0] in e.get(phase, {}) for e in results["methods"] for phase in ("before", "after"))]
    head = ["method", "kind", "KD"]
    for _, title, _ in scores:
        head += [f"{title} before", f"{title} after FT"]
    head += ["params", "block-linear % of teacher"]
    speed_cols = (["fwd tok/s (× teacher)", "gen tok/s (× teacher)"] if task == "causal-lm"
                  else ["sentences/s (× teacher)"])
    head += speed_cols + ["train s"]
    t = results["teacher"]
    tspeed = t.get("speed") or {}
    rows = []
    if not any(e["kind"] == "teacher" and not e.get("finetune") for e in results["methods"]):  # else that row is it
        rows.append(["teacher (as given)" if task == "causal-lm" else "teacher (fine-tuned once)", "teacher", ""]
                    + [x for k, _, pct in scores
                       for x in (_fmt({"mean": t.get("scores", {}).get(k), "n": 1, "std": 0}, pct), "")]
                    + [f"{t.get('params', 0):,}", "100.0"] + [_speed(tspeed, tspeed, c) for c in speed_cols] + [""])
    for e in results["methods"]:
        if not e.get("seeds"):
            rows.append([e["label"], e["kind"], "", *["FAILED" if e["failed"] else "–"] * (len(head) - 3)])
            continue
        row = [e["label"], e["kind"], f"{e['kd']:g}" if e.get("kd") else ""]
        for k, _, pct in scores:
            row += [_fmt(e.get("before", {}).get(k), pct),
                    _fmt(e.get("after", {}).get(k), pct) if e.get("finetune") else "(not fine-tuned)"]
        frac = e.get("block_linear_fraction")
        row += [f"{e['params']:,}", "–" if frac is None else f"{100 * frac:.1f}"]
        row += [_speed(e.get("speed") or {}, tspeed, c) for c in speed_cols]
        row.append("" if e.get("train_time_s_mean") is None else f"{e['train_time_s_mean']:.0f}")
        rows.append(row)
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    cfg, s, ev = results["config"], results["config"]["schedule"], results["config"]["evaluation"]
    d = results["data"]
    sp = results.get("speed_settings", {})
    notes = ["", f"Task {task}; teacher {cfg['teacher']['model']}; data: {describe_data(task, d)}."]
    notes.append(f"Fine-tuning (every method the same): {s['max_steps']} AdamW steps of {s['batch_size']} × "
                 f"{s['grad_accum']} sequences" + (f" of {cfg['data']['seq_len']} tokens" if task == "causal-lm" else "")
                 + f", lr {s['lr']}, {s['schedule']} schedule, warm-up {s['warmup']}, weight "
                 f"decay {s['weight_decay']}; seeds {cfg['seeds']}; KD: (1 − a)·task + a·T²·KL(teacher ‖ student), "
                 "a in the KD column. Scores are the final ones (after the last step), mean ± sample std over seeds.")
    if task == "causal-lm":
        notes.append("Perplexity is token-weighted (exp of the mean next-token NLL over every predicted token). "
                     f"WikiText-2: the test split, rows joined with blank lines, tokenised once, non-overlapping "
                     f"windows of {ev['seq_len']} tokens" + (f", the first {ev['max_windows']}" if ev['max_windows']
                                                            else "") + ". Held-out: the packed blocks of documents "
                     "no model trained on.")
    notes.append("Block-linear %: parameters of the linear layers inside the transformer blocks (attention and MLP "
                 "projections, inherited layers with their gates), as a share of the teacher's — the "
                 "LLM-compression papers' budget convention (embeddings and the LM head are not counted).")
    if sp:
        notes.append(f"Speed: CPU, {sp.get('threads')} thread(s), torch {sp.get('torch')}, median of interleaved "
                     + (f"rounds; forward of {sp.get('batch')} × {sp.get('tokens')} tokens, greedy generation of "
                        f"{sp.get('new_tokens')} tokens with the KV cache." if task == "causal-lm"
                        else "rounds, one sentence at a time."))
    for f in results.get("failed_runs", []):
        notes.append(f"FAILED: {f['method']} seed {f['seed']} — {f['reason']}; not counted in its mean.")
    note = time_note(results)
    if note:
        notes.append(note)
    return "\n".join(lines + notes)


def describe_data(task: str, d: dict) -> str:
    """One line saying what data a comparison ran on (sizes, documents, WikiText-2 windows)."""
    meta = d.get("meta", {})
    if task == "causal-lm":
        docs, toks = meta.get("documents", {}), meta.get("tokens", {})
        text = (f"{d.get('name')}, {docs.get('train', '?'):,} training / {docs.get('held_out', '?'):,} held-out documents; "
                f"{d.get('train_blocks', 0):,} training / {d.get('held_out_blocks', 0):,} held-out blocks of "
                f"{d.get('seq_len')} tokens ({toks.get('train', 0):,} / {toks.get('held_out', 0):,} tokens)")
        if d.get("wikitext2_windows"):
            text += f"; WikiText-2 (test): {d['wikitext2_windows']} windows of {d['wikitext2_seq_len']} tokens"
        return text
    return (f"{d.get('name')}, {d.get('labels')} classes, train {d.get('train', 0):,} / val {d.get('val', 0):,} / "
            f"test {d.get('test', 0):,} examples, at most {d.get('max_length')} tokens")


def _speed(sp: dict, teacher: dict, column: str) -> str:
    key = {"fwd": "forward_tokens_per_s", "gen": "generate_tokens_per_s", "sen": "sentences_per_s"}[column[:3]]
    v, t = sp.get(key), teacher.get(key)
    if v is None:
        return "–"
    return f"{v:,.0f} ({v / t:.2f}×)" if t else f"{v:,.0f}"


def plot_text_results(results: dict, out_dir: Path) -> list[Path]:
    """``metric_vs_params.png`` (the main score after fine-tuning against the parameters, and before
    as open markers) and ``metric_vs_step.png`` (the evaluation curve during fine-tuning)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    key, task = results["main_score"], results["task"]
    scale = 100 if task == "sequence-classification" else 1
    title = dict((k, t) for k, t, _ in SCORES[task])[key]
    paths = []
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, e in enumerate(results["methods"]):
        if not e.get("params"):
            continue
        for phase, fill in (("before", "none"), ("after", None)):  # open: before fine-tuning; filled: after
            st = e.get(phase, {}).get(key)
            if st:
                ax.errorbar(e["params"] / 1e6, scale * st["mean"], yerr=scale * st["std"], fmt="o", color=f"C{i % 10}",
                            mfc=fill, capsize=3, label=e["label"] if phase == "after" or not e.get("after") else None)
    tv = results["teacher"].get("scores", {}).get(key)
    if tv is not None:
        ax.axhline(scale * tv, color="k", ls="--", lw=1, label="teacher")
    ax.set_xlabel("parameters (M)")
    ax.set_ylabel(f"{title} (open: before fine-tuning, filled: after)")
    if task == "causal-lm":
        ax.set_yscale("log")
    ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    paths.append(out_dir / "metric_vs_params.png")
    fig.savefig(paths[-1], dpi=120)
    plt.close(fig)
    curves = [e for e in results["methods"] if e.get("curve", {}).get("mean")]
    if curves:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for e in curves:
            c = e["curve"]
            ax.plot(c["step"], [scale * v for v in c["mean"]], marker="o", ms=3, label=e["label"])
        ax.set_xlabel("optimiser step")
        ax.set_ylabel("held-out ppl" if task == "causal-lm" else "test acc %")
        if task == "causal-lm":
            ax.set_yscale("log")
        ax.legend(fontsize=7)
        fig.tight_layout()
        paths.append(out_dir / "metric_vs_step.png")
        fig.savefig(paths[-1], dpi=120)
        plt.close(fig)
    return paths


def write_text_report(results: dict, out_dir: os.PathLike | str) -> str:
    """Write ``results.json``, ``results.md`` and the plots into ``out_dir``; return the table."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / "results.json", json.dumps(results, indent=2, default=str))
    table = format_text_table(results)
    atomic_write(out / "results.md", f"# {results['name']}\n\n{table}\n")
    try:
        plot_text_results(results, out)
    except Exception as err:  # noqa: BLE001 - a plot is a nicety; the table is written
        print(f"warning: plots not written ({err})")
    return table
