"""Forward latency of one inherited layer on CPU, side by side in one process.

InherConv2d (64→64, 3×3, 32×32 input, batch 1 and 64, r = 8/16/32): H=3 against H=1, against a
naive per-head implementation like the paper's demo (H separate 1×1 convs, outputs summed), and
against the dense conv. InherLinear on (64, 128, 384) input likewise (the naive version runs H
separate linear heads). Each variant is timed in alternating rounds (``torch.utils.benchmark``
medians, best round kept); ratios are what to read, since the machine is shared.

    python benchmarks/bench_layers.py [--threads 1] [--out docs/benchmarks/layers.md]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.benchmark import Timer

from inhernet import InherConv2d, InherLinear


class NaivePerHead(nn.Module):
    """The demo's way: every head applied separately to z, outputs weighted by the gate and summed."""

    def __init__(self, layer: InherConv2d | InherLinear) -> None:
        super().__init__()
        self.layer = layer

    def forward(self, x):
        layer = self.layer
        if isinstance(layer, InherConv2d):
            z = F.conv2d(x, layer.down, None, layer.stride, layer.padding, layer.dilation)
            g = torch.softmax(layer.gate(z.mean((2, 3))), -1)
            outs = [F.conv2d(z, layer.up[h][:, :, None, None]) for h in range(layer.heads)]
            return sum(g[:, h, None, None, None] * o for h, o in enumerate(outs))
        z = F.linear(x, layer.down)
        g = torch.softmax(layer.gate(z), -1)
        return sum(g[..., h:h + 1] * F.linear(z, layer.up[h]) for h in range(layer.heads))


def interleaved_ms(fns: dict, x, rounds: int, min_run_time: float) -> dict:
    """Per-call time of each function, measured in alternating rounds; the minimum over rounds is
    kept, which is the estimate least disturbed by other work on a shared machine."""
    timers = {k: Timer("fn(x)", globals={"fn": f, "x": x}) for k, f in fns.items()}
    best = {k: float("inf") for k in fns}
    with torch.no_grad():
        for _ in range(rounds):
            for k, t in timers.items():
                best[k] = min(best[k], t.blocked_autorange(min_run_time=min_run_time).median * 1e3)
    return best


def bench(kind: str, batch: int, rank: int, rounds: int, min_run_time: float) -> dict:
    torch.manual_seed(0)
    if kind == "conv":
        x = torch.randn(batch, 64, 32, 32)
        dense = nn.Conv2d(64, 64, 3, padding=1, bias=False)
        h3 = InherConv2d(64, 64, 3, rank, 3, padding=1, bias=False)
        h1 = InherConv2d(64, 64, 3, rank, 1, padding=1, bias=False)
        shape = f"conv 64→64 3×3, {batch}×64×32×32"
    else:
        x = torch.randn(batch, 128, 384)
        dense = nn.Linear(384, 384, bias=False)
        h3 = InherLinear(384, 384, rank, 3, bias=False)
        h1 = InherLinear(384, 384, rank, 1, bias=False)
        shape = f"linear 384→384, {batch}×128×384"
    with torch.no_grad():  # distinct heads, so no shortcut could hide work
        h3.up.normal_()
    naive = NaivePerHead(h3)
    with torch.no_grad():
        torch.testing.assert_close(naive(x), h3(x), rtol=1e-4, atol=1e-4)
    t = interleaved_ms({"dense": dense, "H=1": h1, "H=3": h3, "naive H=3": naive}, x, rounds, min_run_time)
    return {"shape": shape, "rank": rank, **t}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds; the best is kept")
    parser.add_argument("--min-run-time", type=float, default=0.2, help="seconds per measurement")
    parser.add_argument("--out", type=Path, default=None, help="write the Markdown table here too")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = [bench(kind, b, r, args.rounds, args.min_run_time)
            for kind, batches in (("conv", (1, 64)), ("linear", (64,))) for b in batches for r in (8, 16, 32)]
    lines = [
        f"torch {torch.__version__}, {args.threads} thread(s); ms per forward (best of {args.rounds} interleaved rounds of medians).",
        "",
        "| layer, input | r | dense ms | H=1 ms | H=3 ms | naive H=3 ms | H=3 / H=1 | naive / H=3 | H=3 / dense |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['shape']} | {r['rank']} | {r['dense']:.3f} | {r['H=1']:.3f} | {r['H=3']:.3f} | {r['naive H=3']:.3f} "
            f"| {r['H=3'] / r['H=1']:.2f}× | {r['naive H=3'] / r['H=3']:.2f}× | {r['H=3'] / r['dense']:.2f}× |"
        )
    table = "\n".join(lines)
    print(table)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        command = "python benchmarks/bench_layers.py " + " ".join(sys.argv[1:])
        args.out.write_text(f"# Layer latency (CPU)\n\nProduced by `{command}`.\n\n{table}\n")


if __name__ == "__main__":
    main()
