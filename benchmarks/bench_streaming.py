"""Streaming inheritance of a checkpoint bigger than it needs to be in memory: time and peak RSS.

Generates (once; never committed) a randomly initialised Llama-architecture checkpoint of about
1.1 B parameters (TinyLlama-1.1B shapes, fp32, ~4.4 GB in ``--shard-mb`` shards), then measures, each in a
fresh subprocess so peak RSS is its own:

* ``load``: loading the whole teacher (``AutoModelForCausalLM.from_pretrained``, then reading every
  weight once, since the weights are memory-mapped and untouched pages would not count), the reference;
* ``stream``: ``inhernet.hf.inherit_checkpoint`` (tensor by tensor, shard by shard).

    python benchmarks/bench_streaming.py --work /tmp/inhernet-stream [--out docs/benchmarks/streaming.md]

The target (issue 4): the streaming peak stays below 40 % of the peak of loading the teacher.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

# TinyLlama-1.1B's shapes: 22 layers, hidden 2048, MLP 5632, 32 heads / 4 KV heads, vocab 32000
LLAMA_1B = dict(vocab_size=32000, hidden_size=2048, intermediate_size=5632, num_hidden_layers=22,
                num_attention_heads=32, num_key_value_heads=4, max_position_embeddings=2048,
                tie_word_embeddings=False)


def generate(folder: Path, shard_bytes: int) -> int:
    """Write a random Llama checkpoint shard by shard without holding the model; returns #params."""
    import torch
    from safetensors.torch import save_file
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(**LLAMA_1B, architectures=["LlamaForCausalLM"])
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


def child(mode: str, src: Path, dst: Path, rank: int, heads: int, shard_mb: int) -> None:
    import torch

    torch.set_num_threads(1)
    t0 = time.perf_counter()
    if mode == "load":
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32)
        # touch every weight (as any forward pass does): safetensors are memory-mapped, so
        # untouched pages would not count yet
        n = sum(p.numel() for p in model.parameters() if torch.isfinite(p.sum()))
    else:
        import inhernet.hf

        inhernet.hf.inherit_checkpoint(src, dst, rank=rank, heads=heads, svd="randomized", max_shard_size=f"{shard_mb}MB",
                                       progress=False)
        n = None
    peak_mb = peak_rss_mb()
    print(json.dumps({"mode": mode, "seconds": time.perf_counter() - t0, "peak_rss_mb": peak_mb, "params": n}))


def run_child(mode: str, args) -> dict:
    cmd = [sys.executable, __file__, "--child", mode, "--work", str(args.work), "--rank", str(args.rank),
           "--heads", str(args.heads), "--shard-mb", str(args.shard_mb)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path("/tmp/inhernet-stream"))
    parser.add_argument("--rank", type=int, default=256)
    parser.add_argument("--heads", type=int, default=2)
    parser.add_argument("--shard-mb", type=int, default=512, help="shard size of the generated teacher and of the output")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--child", choices=["load", "stream"], default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    src, dst = args.work / "teacher", args.work / "inherited"
    if args.child:
        child(args.child, src, dst, args.rank, args.heads, args.shard_mb)
        return
    if not (src / "model.safetensors.index.json").exists():
        t0 = time.perf_counter()
        n = generate(src, args.shard_mb << 20)
        print(f"generated {n:,} parameters in {time.perf_counter() - t0:.0f} s -> {src}", flush=True)
    load = run_child("load", args)
    print(load, flush=True)
    stream = run_child("stream", args)
    print(stream, flush=True)
    out_bytes = sum(p.stat().st_size for p in dst.glob("*.safetensors"))
    src_bytes = sum(p.stat().st_size for p in src.glob("*.safetensors"))
    ratio = stream["peak_rss_mb"] / load["peak_rss_mb"]
    table = "\n".join([
        f"Teacher: random Llama, {load['params']:,} parameters (TinyLlama-1.1B shapes), fp32, "
        f"{src_bytes / 2**30:.2f} GiB in {args.shard_mb} MiB shards (output shards likewise). InherNet: rank {args.rank}, H = {args.heads}, "
        f"randomized SVD, default targets (attention + MLP projections); output {out_bytes / 2**30:.2f} GiB. "
        "One thread, each step in a fresh process.",
        "",
        "| step | wall time s | peak RSS MiB |",
        "|---|---|---|",
        f"| load the whole teacher (`from_pretrained`) | {load['seconds']:.0f} | {load['peak_rss_mb']:,.0f} |",
        f"| `inherit_checkpoint` (streaming) | {stream['seconds']:.0f} | {stream['peak_rss_mb']:,.0f} |",
        "",
        f"Streaming peak / loading peak: **{ratio:.0%}** (target < 40 %: {'met' if ratio < 0.4 else 'not met'}).",
    ])
    print(table)
    if args.out:
        command = "python benchmarks/bench_streaming.py " + " ".join(sys.argv[1:])
        args.out.write_text(f"# Streaming inheritance of a 1.1 B checkpoint\n\nProduced by `{command}`.\n\n{table}\n")


if __name__ == "__main__":
    main()
