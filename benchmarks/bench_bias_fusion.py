"""Where the mixed bias of a gated conv is added when the model is compiled, measured side by side.

Issue 13 (batch-64 speed of a gated InherNet). A gated inherited conv ends with ``y = W_n z + b_n``
per image (``W_n``, ``b_n``: its heads and their biases mixed by the gate). Written as one
``torch.baddbmm(b, W, z)``, a compiled graph (torch.export + AOTInductor, or torch.compile) first
copies the broadcast bias into the whole output and then accumulates the product into it: a full
pass over every gated layer's output (profiled: 111 such copies per forward, 13 % of the extern
time of resnet56 → rank 8, H = 3 at batch 64). ``inhernet.layers.batched_product`` writes it as
``bmm`` then an addition when compiled, which the compiler fuses into the next elementwise kernel.

This script compiles one optimised InherNet (heads that differ, ``inhernet.optimize.as_trained``:
the gate runs) ahead of time twice — the product's form, and the same model with the bias inside
``baddbmm`` (the form before; ``batched_product`` patched for that one compilation) — and times both
in one process, interleaved with the eager teacher and the teacher compiled ahead of time alike
(``inhernet.optimize.time_candidates``: one thread, the thread's CPU time, the order reversed every
other round), so the ratio between the two forms is measured side by side.

    python benchmarks/bench_bias_fusion.py [--batches 1 64] [--rounds 9] [--out docs/benchmarks/bias_fusion.md]

``--quick``: a tiny input (8 × 8), 2 rounds — checks the script runs; the numbers are meaningless.
"""

from __future__ import annotations

import argparse
import sys
import time
from unittest import mock

import torch

import inhernet
import inhernet.layers
import inhernet.optimize.forms
from inhernet.models import create_model
from inhernet.optimize import as_trained
from inhernet.optimize.aot import aot_compile
from inhernet.optimize.timing import time_candidates
from inhernet.utils import markdown_table


def _baddbmm(a: torch.Tensor, b: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """The form before: the bias inside one ``baddbmm`` whether compiled or not."""
    return torch.bmm(a, b) if bias is None else torch.baddbmm(bias, a, b)


def measure(batch: int, args: argparse.Namespace) -> dict[str, float]:
    torch.manual_seed(0)
    teacher = create_model("resnet56", num_classes=100, in_channels=3).eval()
    gated = as_trained(inhernet.inherit(teacher, rank=8, heads=3, progress=False).eval())
    x = torch.randn(batch, 3, args.size, args.size, generator=torch.Generator().manual_seed(1))
    optimised = inhernet.optimize_for_inference(gated, x)  # eager choices, made once for both forms
    models = {"teacher (eager)": teacher,
              "teacher, BN folded + AOT": aot_compile(inhernet.optimize_for_inference(teacher, x), x),
              "gated InherNet + AOT, bias after the product (batched_product)": aot_compile(optimised, x)}
    with mock.patch.object(inhernet.layers, "batched_product", _baddbmm), \
            mock.patch.object(inhernet.optimize.forms, "batched_product", _baddbmm):
        models["gated InherNet + AOT, bias inside baddbmm (before)"] = aot_compile(optimised, x)
    with torch.no_grad():
        ours, before = list(models.values())[2:]
        diff = (ours(x) - before(x)).abs().max().item()
    print(f"batch {batch}: max |difference| of the two forms {diff:.2e}", file=sys.stderr)
    return time_candidates(models, x, rounds=args.rounds, clock="cpu", min_time_s=args.min_time)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 64])
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--min-time", type=float, default=0.3, help="seconds per model per round")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out")
    args = ap.parse_args(argv)
    if args.quick:
        args.batches, args.rounds, args.size, args.min_time = [2], 2, 8, 0.01
    torch.set_num_threads(1)
    start = time.time()
    cmd = "python benchmarks/bench_bias_fusion.py " + " ".join(argv if argv is not None else sys.argv[1:])
    lines = ["# Mixed bias of a gated conv: after the product or inside baddbmm, compiled ahead of time", "",
             f"Produced by `{cmd.strip()}`.", "",
             "resnet56 → InherNet rank 8, H = 3, heads that differ (the gate runs), 100 classes, input "
             f"3×{args.size}×{args.size}; one thread, the benchmark thread's CPU time, {args.rounds} interleaved "
             "rounds (median); × teacher: the eager teacher's median time / the model's, in the same run.", ""]
    for batch in args.batches:
        t = measure(batch, args)
        ref = t["teacher (eager)"]
        rows = [[name, f"{ms / batch:.3f}", f"{ref / ms:.2f}×"] for name, ms in t.items()]
        lines += [f"## batch {batch}", ""] + markdown_table(["model", "ms/img", "× teacher"], rows)
        ours, before = (t[k] for k in list(t)[2:])
        lines += ["", f"bias after the product / inside baddbmm: **{ours / before:.3f}×** the time.", ""]
    lines.append(f"torch {torch.__version__}, total run {(time.time() - start) / 60:.1f} min.")
    text = "\n".join(lines)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
