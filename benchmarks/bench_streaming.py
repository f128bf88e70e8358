"""Streaming inheritance of a checkpoint bigger than it needs to be in memory: time and peak RSS.

Generates (once; never committed) a randomly initialised Llama-architecture checkpoint of about
1.1 B parameters (TinyLlama-1.1B shapes, fp32, ~4.4 GB in ``--shard-mb`` shards; with ``--small`` a
tiny one, hidden 256, 2 layers, for smoke runs), then measures, each in a fresh subprocess so peak
RSS is its own:

* ``idle``: importing torch, transformers and inhernet, nothing else (the fixed cost in every row);
* ``load``: loading the whole teacher (``AutoModelForCausalLM.from_pretrained``, then reading every
  weight once, since the weights are memory-mapped and untouched pages would not count), the reference;
* ``stream``: ``inhernet.hf.inherit_checkpoint`` with ``init="svd"`` (tensor by tensor, shard by shard);
* ``stream-whitened``: ``inherit_checkpoint`` with ``init="whitened", calibration_mode="sequential"``
  (block by block), calibrated on ``--calibration-blocks`` × ``--calibration-seq-len`` tokens. The
  teacher is random, so the calibration tokens are random too: ids drawn uniformly from the
  vocabulary by a seeded generator (``--seed``), which exercises the memory and time of the
  pipeline, not the quality of the result. The per-block statistics memory is the plan's
  ``calibration.peak_statistics_bytes``.

From the measured rows the script fits the memory model ``peak ≈ idle + statistics + activations +
weights in flight`` and extrapolates it to Llama-2-7B and -70B shapes (fp32, like the benchmark).

    python benchmarks/bench_streaming.py --work /tmp/inhernet-stream --shard-mb 512 --out docs/benchmarks/streaming.md
    python benchmarks/bench_streaming.py --small --out runs/bench/streaming_small.md     # smoke run, ~1 min

The target (issue 4): the streaming peak stays below 40 % of the peak of loading the teacher.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

# TinyLlama-1.1B's shapes: 22 layers, hidden 2048, MLP 5632, 32 heads / 4 KV heads, vocab 32000
LLAMA_1B = dict(vocab_size=32000, hidden_size=2048, intermediate_size=5632, num_hidden_layers=22,
                num_attention_heads=32, num_key_value_heads=4, max_position_embeddings=2048,
                tie_word_embeddings=False)
# --small: the same architecture, tiny (a smoke run of the whole pipeline in about a minute)
LLAMA_SMALL = dict(vocab_size=1024, hidden_size=256, intermediate_size=704, num_hidden_layers=2,
                   num_attention_heads=8, num_key_value_heads=2, max_position_embeddings=512,
                   tie_word_embeddings=False)
# shapes the measured memory model is extrapolated to (Llama-2-7B and Llama-2-70B)
EXTRAPOLATE = {
    "7B (Llama-2-7B shapes)": dict(vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                                   num_attention_heads=32, num_key_value_heads=32, tie_word_embeddings=False),
    "70B (Llama-2-70B shapes)": dict(vocab_size=32000, hidden_size=8192, intermediate_size=28672, num_hidden_layers=80,
                                     num_attention_heads=64, num_key_value_heads=8, tie_word_embeddings=False),
}
MODES = ("idle", "load", "stream", "stream-whitened")


def generate(folder: Path, shard_bytes: int, shapes: dict = LLAMA_1B) -> int:
    """Write a random Llama checkpoint shard by shard without holding the model; returns #params."""
    import torch
    from safetensors.torch import save_file
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(**shapes, architectures=["LlamaForCausalLM"])
    with torch.device("meta"):
        skeleton = LlamaForCausalLM(config)
    folder.mkdir(parents=True, exist_ok=True)
    shapes = {k: v.shape for k, v in skeleton.state_dict().items()}
    gen = torch.Generator().manual_seed(0)
    n, current, size, total = 0, {}, 0, 0
    for name, shape in shapes.items():
        t = torch.randn(shape, generator=gen) * 0.02 if len(shape) > 1 else torch.ones(shape)
        current[name], size, total = t, size + t.numel() * 4, total + t.numel()
        if size >= shard_bytes:
            n += 1
            save_file(current, str(folder / f"part-{n:05d}.safetensors"), metadata={"format": "pt"})
            current, size = {}, 0
    if current:
        n += 1
        save_file(current, str(folder / f"part-{n:05d}.safetensors"), metadata={"format": "pt"})
    weight_map = {}
    for i in range(1, n + 1):  # rename to the save_pretrained convention, now that N is known
        old, new = folder / f"part-{i:05d}.safetensors", f"model-{i:05d}-of-{n:05d}.safetensors"
        old.rename(folder / new)
        from safetensors import safe_open

        with safe_open(str(folder / new), "pt") as f:
            weight_map.update({k: new for k in f.keys()})
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {"total_size": total * 4}, "weight_map": weight_map}))
    config.save_pretrained(folder)
    return total


def peak_rss_mb() -> float:
    """This process's peak resident set (VmHWM). Not ``ru_maxrss``: Linux carries the forking
    parent's peak into it across fork + exec, so a child would report its parent's peak."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status (Linux only)")


def reset_peak_rss() -> None:
    """Reset this process's VmHWM to its current RSS (``5`` into ``/proc/self/clear_refs``, Linux
    4.0+), so a later :func:`peak_rss_mb` measures the peak of what runs in between."""
    Path("/proc/self/clear_refs").write_text("5")


def random_calibration(vocab_size: int, blocks: int, seq_len: int, batch_size: int, seed: int) -> list[dict]:
    """``blocks`` rows of ``seq_len`` token ids drawn uniformly from the vocabulary (seeded), in
    ``{"input_ids": (batch_size, seq_len)}`` batches as :func:`inhernet.hf.calibration.text_calibration`
    gives them: calibration data for a random teacher, which no real text suits better."""
    import torch

    ids = torch.randint(vocab_size, (blocks, seq_len), generator=torch.Generator().manual_seed(seed))
    return [{"input_ids": ids[i:i + batch_size]} for i in range(0, blocks, batch_size)]


def child(mode: str, src: Path, args) -> None:
    import torch

    torch.set_num_threads(1)
    t0 = time.perf_counter()
    result = {"mode": mode}
    if mode == "idle":
        import transformers  # noqa: F401  (what every other row imports)
        from transformers import AutoModelForCausalLM  # noqa: F401

        import inhernet.hf.streaming  # noqa: F401
        n = None
    elif mode == "load":
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32)
        # touch every weight (as any forward pass does): safetensors are memory-mapped, so
        # untouched pages would not count yet
        n = sum(p.numel() for p in model.parameters() if torch.isfinite(p.sum()))
    else:
        import inhernet.hf

        dst = args.work / ("inherited" if mode == "stream" else "inherited-whitened")
        options = {}
        if mode == "stream-whitened":
            vocab = json.loads((src / "config.json").read_text())["vocab_size"]
            options = dict(init="whitened", calibration_mode="sequential",
                           calibration=random_calibration(vocab, args.calibration_blocks, args.calibration_seq_len,
                                                          args.calibration_batch_size, args.seed))
        t0 = time.perf_counter()  # the calibration ids are not part of the time
        inhernet.hf.inherit_checkpoint(src, dst, rank=args.rank, heads=args.heads, svd=args.svd,
                                       max_shard_size=f"{args.shard_mb}MB", progress=False, overwrite=True, **options)
        n = None
        plan = json.loads((dst / "inhernet_config.json").read_text())["plan"]
        result["calibration"] = plan.get("calibration")
        result["output_bytes"] = sum(p.stat().st_size for p in dst.glob("*.safetensors"))
    result.update(seconds=time.perf_counter() - t0, peak_rss_mb=peak_rss_mb(), params=n)
    print(json.dumps(result))


def run_child(mode: str, args) -> dict:
    cmd = [sys.executable, __file__, "--child", mode, "--work", str(args.work), "--rank", str(args.rank),
           "--heads", str(args.heads), "--shard-mb", str(args.shard_mb), "--svd", args.svd,
           "--calibration-blocks", str(args.calibration_blocks), "--calibration-seq-len", str(args.calibration_seq_len),
           "--calibration-batch-size", str(args.calibration_batch_size), "--seed", str(args.seed)]
    if args.small:
        cmd.append("--small")
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr)
        raise SystemExit(f"the {mode} child failed with exit status {proc.returncode}: {shlex.join(cmd)}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------------- memory model
def shape_counts(s: dict) -> dict:
    """Parameter counts of a Llama of shapes ``s``: total, per decoder block, the embedding; and
    ``gram`` = Σ d_in² over a block's projections (q, k, v, o, gate, up, down: one d_in × d_in
    second moment each), the size the per-block statistics scale with."""
    h, i, L, v = s["hidden_size"], s["intermediate_size"], s["num_hidden_layers"], s["vocab_size"]
    kv = h * s["num_key_value_heads"] // s["num_attention_heads"]
    block = h * h * 2 + 2 * h * kv + 3 * h * i + 2 * h
    emb = v * h
    total = L * block + emb * (1 if s.get("tie_word_embeddings") else 2) + h
    return {"total": total, "block": block, "embedding": emb, "hidden": h, "gram": 6 * h * h + i * i}


def memory_model(idle_mb: float, load_mb: float, whitened: dict, shapes: dict) -> tuple[dict, list[dict]]:
    """Split the measured stream-whitened peak into idle + statistics + activations + weights in
    flight (the rest), and extrapolate each part by its scaling: statistics with Σ d_in² of a block,
    activations with the hidden size (same calibration tokens), weights in flight with the largest
    of one block and one embedding matrix (what is held at once), idle constant. The teacher's load
    is extrapolated as idle + (load − idle) × params ratio (fp32 throughout)."""
    cal = whitened.get("calibration") or {}
    stats_mb = (cal.get("peak_statistics_bytes") or 0) / 2**20
    act_mb = (cal.get("peak_activation_bytes") or 0) / 2**20
    base = shape_counts(shapes)
    rest_mb = whitened["peak_rss_mb"] - idle_mb - stats_mb - act_mb
    parts = {"idle_mb": idle_mb, "statistics_mb": stats_mb, "activations_mb": act_mb, "weights_in_flight_mb": rest_mb}
    rows = []
    for name, s in [("measured shapes (the fit gives back the measurement)", shapes), *EXTRAPOLATE.items()]:
        c = shape_counts(s)
        stream = (idle_mb + stats_mb * c["gram"] / base["gram"] + act_mb * c["hidden"] / base["hidden"]
                  + rest_mb * max(c["block"], c["embedding"]) / max(base["block"], base["embedding"]))
        load = idle_mb + (load_mb - idle_mb) * c["total"] / base["total"]
        rows.append({"shapes": name, "params": c["total"], "load_mb": load, "stream_whitened_mb": stream,
                     "ratio": stream / load})
    return parts, rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=None,
                        help="folder of the generated teacher and the outputs (default /tmp/inhernet-stream, "
                             "with --small /tmp/inhernet-stream-small)")
    parser.add_argument("--rank", type=int, default=None, help="InherNet rank (default 256; with --small 32)")
    parser.add_argument("--heads", type=int, default=2)
    parser.add_argument("--svd", default="randomized", help="SVD method of both streaming rows")
    parser.add_argument("--shard-mb", type=int, default=None,
                        help="shard size of the generated teacher and of the output (default 512; with --small 2)")
    parser.add_argument("--calibration-blocks", type=int, default=None, help="stream-whitened: rows (default 16; --small 2)")
    parser.add_argument("--calibration-seq-len", type=int, default=None, help="stream-whitened: tokens per row (default 512; --small 64)")
    parser.add_argument("--calibration-batch-size", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0, help="seed of the random calibration token ids")
    parser.add_argument("--modes", nargs="+", choices=MODES[1:], default=list(MODES[1:]),
                        help="rows to run besides idle (default all)")
    parser.add_argument("--small", action="store_true", help="smoke run: a tiny random Llama (hidden 256, 2 layers)")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--child", choices=MODES, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    for name, full, small in (("work", Path("/tmp/inhernet-stream"), Path("/tmp/inhernet-stream-small")),
                              ("rank", 256, 32), ("shard_mb", 512, 2), ("calibration_blocks", 16, 2),
                              ("calibration_seq_len", 512, 64)):
        if getattr(args, name) is None:
            setattr(args, name, small if args.small else full)
    shapes = LLAMA_SMALL if args.small else LLAMA_1B
    src = args.work / "teacher"
    if args.child:
        child(args.child, src, args)
        return
    if not (src / "model.safetensors.index.json").exists():
        t0 = time.perf_counter()
        n = generate(src, args.shard_mb << 20, shapes)
        print(f"generated {n:,} parameters in {time.perf_counter() - t0:.0f} s -> {src}", flush=True)
    rows = {}
    for mode in ("idle", *args.modes):
        rows[mode] = run_child(mode, args)
        print(rows[mode], flush=True)
    table = report(args, rows, shapes, src)
    print(table)
    if args.out:
        command = shlex.join(["python", "benchmarks/bench_streaming.py", *sys.argv[1:]])
        title = "a tiny random Llama (smoke run)" if args.small else "a 1.1 B checkpoint"
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(f"# Streaming inheritance of {title}\n\nProduced by `{command}`.\n\n{table}\n")


def report(args, rows: dict, shapes: dict, src: Path) -> str:
    src_bytes = sum(p.stat().st_size for p in src.glob("*.safetensors"))
    idle, load = rows["idle"], rows.get("load")
    n = shape_counts(shapes)["total"] if load is None else load["params"]
    lines = [
        f"Teacher: random Llama, {n:,} parameters ({'tiny smoke-run shapes' if args.small else 'TinyLlama-1.1B shapes'}: "
        f"hidden {shapes['hidden_size']}, {shapes['num_hidden_layers']} layers, MLP {shapes['intermediate_size']}, "
        f"vocab {shapes['vocab_size']}), fp32, {src_bytes / 2**30:.2f} GiB in {args.shard_mb} MiB shards "
        f"(output shards likewise). InherNet: rank {args.rank}, H = {args.heads}, {args.svd} SVD, default targets "
        "(attention + MLP projections)."
        + (" `stream-whitened`: `init=\"whitened\", calibration_mode=\"sequential\"`, calibrated on "
           f"{args.calibration_blocks} × {args.calibration_seq_len} random token ids (seed {args.seed}; the teacher is "
           f"random, so real text would be no better), batches of {args.calibration_batch_size}."
           if "stream-whitened" in rows else "")
        + " One thread, each step in a fresh process.",
        "",
        "| step | wall time s | peak RSS MiB | peak / loading peak | output MiB |",
        "|---|---:|---:|---:|---:|",
    ]
    names = {"idle": "import torch + transformers + inhernet (nothing else)",
             "load": "load the whole teacher (`from_pretrained`)",
             "stream": "`inherit_checkpoint`, `init=\"svd\"` (streaming)",
             "stream-whitened": "`inherit_checkpoint`, `init=\"whitened\"`, sequential (streaming)"}
    for mode, r in rows.items():
        ratio = "–" if load is None else f"{r['peak_rss_mb'] / load['peak_rss_mb']:.0%}"
        out = f"{r['output_bytes'] / 2**20:,.1f}" if "output_bytes" in r else "–"
        lines.append(f"| {names[mode]} | {r['seconds']:.0f} | {r['peak_rss_mb']:,.0f} | {ratio} | {out} |")
    lines.append("")
    if load is not None:
        for mode in ("stream", "stream-whitened"):
            if mode in rows:
                ratio = rows[mode]["peak_rss_mb"] / load["peak_rss_mb"]
                lines.append(f"- `{mode}` peak / loading peak: **{ratio:.0%}** (target < 40 %: "
                             f"{'met' if ratio < 0.4 else 'not met'}).")
        lines.append("")
    whitened = rows.get("stream-whitened")
    if whitened is not None:
        cal = whitened.get("calibration") or {}
        lines += ["Calibration record of the plan (`inhernet_config.json` → `plan.calibration`): "
                  + (", ".join(f"`{k}` = {v:,}" if isinstance(v, int) else f"`{k}` = {v}" for k, v in cal.items())
                     or "none recorded") + ".", ""]
        stats = cal.get("peak_statistics_bytes")
        if stats is not None:
            lines += [f"Per-block statistics memory (peak): **{stats / 2**20:,.1f} MiB**; "
                      f"activations: {(cal.get('peak_activation_bytes') or 0) / 2**20:,.1f} MiB.", ""]
        if load is not None:
            parts, model = memory_model(idle["peak_rss_mb"], load["peak_rss_mb"], whitened, shapes)
            lines += [
                "Memory model, fitted to this run: stream-whitened peak = idle "
                f"({parts['idle_mb']:,.0f} MiB) + statistics ({parts['statistics_mb']:,.1f}) + activations "
                f"({parts['activations_mb']:,.1f}) + weights in flight (the rest, {parts['weights_in_flight_mb']:,.0f}). "
                "Extrapolated (fp32, the same calibration tokens, rank and shard size): statistics × Σ d_in² of a "
                "block (one d_in × d_in float64 second moment per distinct projection input: q/k/v share one, "
                "gate/up one), activations × hidden size, weights in flight (the block's weights, its inherited "
                "layers, the SVD workspace and the forward pass's temporaries; the embedding matrix while the first "
                "block's inputs are captured) × max(one block, the embedding matrix), idle constant; loading the "
                "teacher = idle + (measured load − idle) × parameter ratio. Output shards are written tensor by "
                "tensor, so `max_shard_size` adds nothing. Real 7 B / 70 B checkpoints are mostly bf16, which "
                "halves the teacher and the weights-in-flight terms. An extrapolation, not a measurement.",
                "",
                "| shapes | parameters | load the teacher GiB | stream-whitened peak GiB | ratio |",
                "|---|---:|---:|---:|---:|",
            ]
            for r in model:
                lines.append(f"| {r['shapes']} | {r['params']:,} | {r['load_mb'] / 1024:,.1f} "
                             f"| {r['stream_whitened_mb'] / 1024:,.2f} | {r['ratio']:.1%} |")
            lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
