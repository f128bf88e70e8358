"""resnet56 → InherNet (rank 8, H = 3 and H = 1) before and after ``optimize_for_inference``, on CPU.

The first target of issue 13: an InherNet with a third of the teacher's FLOPs should run near the
dense network of the same FLOPs (resnet20), not at the teacher's speed. Models, measured side by
side in one process:

* ``teacher``: resnet56 as built (BatchNorm modules in the graph);
* ``teacher, BN folded``: ``optimize_for_inference(teacher)`` — for a dense network that is its own
  BatchNorm folded into the convs (and the faster memory layout): the fair baseline;
* ``resnet20`` and ``resnet20, BN folded``: the dense network of about the InherNet's FLOPs;
* ``InherNet H=3`` / ``H=1``: ``inherit(teacher, rank=8, heads=H)``, eager, then after
  ``optimize_for_inference`` (and, with ``--compile``, that under ``torch.compile``).

For every batch size (1 and 64 by default) each model is optimised for that batch, then all models
run in interleaved rounds (each round: ``--iters`` forwards of every model in turn, the order
reversed every other round); a model's ms/img is its median over rounds, and its speed relative to
the teacher is the median over rounds of the per-round ratio teacher time / model time (so slow and
fast phases of other work on the machine cancel). One thread by default. The weights are those of
the SVD initialisation; speed does not depend on trained values.

    python benchmarks/bench_optimize.py [--threads 1] [--batches 1 64] [--rounds 9] [--iters 5]
                                        [--compile] [--out docs/benchmarks/optimize.md]

A quick check that the script works: ``--rounds 2 --iters 2 --opt-rounds 1`` (the numbers are then
meaningless).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

import inhernet
from inhernet.models import create_model

TEACHER = "teacher"
TEACHER_FOLDED = "teacher, BN folded"


def build_models(batch: int, args: argparse.Namespace) -> tuple[dict[str, nn.Module], dict[str, str]]:
    """The models for one batch size (the optimised ones optimised for it) and, per optimised
    model, the summary of what ``optimize_for_inference`` did."""
    shape = (batch, args.in_channels, args.size, args.size)
    example = torch.randn(*shape, generator=torch.Generator().manual_seed(1))
    torch.manual_seed(0)
    teacher = create_model("resnet56", num_classes=args.num_classes, in_channels=args.in_channels).eval()
    small = create_model("resnet20", num_classes=args.num_classes, in_channels=args.in_channels).eval()
    opt = {"rounds": args.opt_rounds}
    models: dict[str, nn.Module] = {TEACHER: teacher}
    summaries: dict[str, str] = {}

    def optimised(name: str, model: nn.Module, **extra) -> nn.Module:
        t0 = time.perf_counter()
        out = inhernet.optimize_for_inference(model, example, **opt, **extra)
        report = out.inhernet_optimized
        summaries[name] = f"{report.summary()}\n(optimised in {time.perf_counter() - t0:.1f} s)"
        return out

    models[TEACHER_FOLDED] = optimised(TEACHER_FOLDED, teacher)
    models["resnet20"] = small
    models["resnet20, BN folded"] = optimised("resnet20, BN folded", small)
    for heads in args.heads:
        inh = inhernet.inherit(teacher, rank=args.rank, heads=heads, progress=False).eval()
        models[f"InherNet r{args.rank} H={heads}"] = inh
        name = f"InherNet r{args.rank} H={heads}, optimised"
        models[name] = optimised(name, inh)
        if args.compile:
            cname = f"InherNet r{args.rank} H={heads}, optimised + compiled"
            models[cname] = optimised(cname, inh, compile=True)
    return models, summaries


def measure(models: dict[str, nn.Module], x: torch.Tensor, rounds: int, iters: int) -> dict[str, dict]:
    """ms/img (median over rounds) and per-round-ratio medians against both teachers."""
    names = list(models)
    times: dict[str, list[float]] = {n: [] for n in names}
    with torch.no_grad():
        for m in models.values():  # warm-up: allocations, oneDNN primitives, compiled graphs
            for _ in range(2):
                m(x)
        for r in range(rounds):
            for n in (names if r % 2 == 0 else names[::-1]):
                t0 = time.perf_counter()
                for _ in range(iters):
                    models[n](x)
                times[n].append((time.perf_counter() - t0) / iters)
    batch = x.shape[0]
    out = {}
    for n in names:
        out[n] = {
            "ms_per_img": statistics.median(times[n]) * 1e3 / batch,
            "vs_teacher": statistics.median(a / b for a, b in zip(times[TEACHER], times[n])),
            "vs_folded": statistics.median(a / b for a, b in zip(times[TEACHER_FOLDED], times[n])),
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 64])
    parser.add_argument("--heads", type=int, nargs="+", default=[3, 1])
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=9, help="interleaved rounds; medians are reported")
    parser.add_argument("--iters", type=int, default=5, help="forwards per model per round")
    parser.add_argument("--opt-rounds", type=int, default=5, help="timing rounds inside optimize_for_inference")
    parser.add_argument("--compile", action="store_true", help="also time the optimised InherNets under torch.compile")
    parser.add_argument("--size", type=int, default=32, help="image height and width (CIFAR: 32)")
    parser.add_argument("--in-channels", type=int, default=3)
    parser.add_argument("--num-classes", type=int, default=100)
    parser.add_argument("--out", type=Path, default=None, help="write the Markdown report here too")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    results: dict[int, dict[str, dict]] = {}
    summaries: dict[int, dict[str, str]] = {}
    flops: dict[str, float] = {}
    params: dict[str, int] = {}
    for batch in args.batches:
        models, summaries[batch] = build_models(batch, args)
        for name, m in models.items():
            if name not in flops and "compiled" not in name:
                flops[name] = inhernet.count_flops(m, (1, args.in_channels, args.size, args.size)) / 1e6
                params[name] = inhernet.count_parameters(m)
        x = torch.randn(batch, args.in_channels, args.size, args.size)
        results[batch] = measure(models, x, args.rounds, args.iters)
        print(f"batch {batch}: done", file=sys.stderr)

    names = list(results[args.batches[0]])
    head = "| model | params | MFLOPs/img | " + " | ".join(
        f"b={b} ms/img | b={b} × teacher | b={b} × teacher BN-folded" for b in args.batches) + " |"
    lines = [
        f"torch {torch.__version__}, CPU, {args.threads} thread(s), input {args.in_channels}×{args.size}×{args.size}, "
        f"{args.num_classes} classes; {args.rounds} interleaved rounds × {args.iters} forwards per model. "
        "ms/img: median over rounds; × teacher: median over rounds of (teacher time / model time) in the same "
        "round (> 1 = faster than the teacher).",
        "",
        head,
        "|" + "---|" * (3 + 3 * len(args.batches)),
    ]
    for n in names:
        cells = [n, f"{params.get(n, 0):,}" if n in params else "", f"{flops[n]:.1f}" if n in flops else ""]
        for b in args.batches:
            r = results[b][n]
            cells += [f"{r['ms_per_img']:.3f}", f"{r['vs_teacher']:.2f}×", f"{r['vs_folded']:.2f}×"]
        lines.append("| " + " | ".join(cells) + " |")
    table = "\n".join(lines)
    details = []
    for b in args.batches:
        for name, text in summaries[b].items():
            details += [f"**{name}, batch {b}**", "", "```", text, "```", ""]
    print(table)
    print()
    print("\n".join(details))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        command = "python benchmarks/bench_optimize.py " + " ".join(sys.argv[1:])
        args.out.write_text(
            "# optimize_for_inference: resnet56 → InherNet on CPU\n\n"
            f"Produced by `{command}`.\n\n{table}\n\n## What optimize_for_inference did\n\n" + "\n".join(details))


if __name__ == "__main__":
    main()
