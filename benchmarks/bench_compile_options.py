"""Which TorchInductor options ``optimize_for_inference(compile=...)`` should use on CPU, measured.

Issue 13 (batch-1 speed of a gated InherNet). For every option set (``--options``) and batch size, one
fresh worker process (no compiled code, dynamo cache or recompile limit shared between option sets)
builds resnet56 (100 classes, random weights), its BN-folded form compiled with those options
(``optimize_for_inference(teacher, x, compile=OPTIONS)``: the fair baseline of a compiled model), and
the InherNet rank 8, H = 3 — untrained (its heads fold exactly) and with heads that differ and a gate
that depends on its input (``inhernet.optimize.as_trained``: the per-image gate runs, as after
fine-tuning) — optimised and compiled the same way; the eager teacher is the reference. Inside a
worker every model is timed side by side (``inhernet.optimize.time_candidates``: interleaved rounds,
one thread, the thread's CPU time), so each ratio is measured in one run; ratios of different
workers share only the reference (the eager teacher, timed in each).

    python benchmarks/bench_compile_options.py [--options default cpp_wrapper] [--batches 1 64]
                                               [--rounds 7] [--out docs/benchmarks/compile_options.md]

``--options aot`` compiles every model ahead of time instead (``compile="aot"``: ``torch.export`` +
AOTInductor into a package, no Python per call). An option set naming ``freezing`` sets ``torch._inductor.config.freezing`` for its worker (torch.compile
ignores it among the options: the graph would compile unfrozen) and passes the rest as options.

``--quick``: tiny input (8 × 8), 2 rounds — checks that the script runs; the numbers are then
meaningless.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch._inductor.config

import inhernet
from inhernet.models import create_model
from inhernet.optimize import as_trained, time_candidates

#: the option sets a run can compare (``--options``): name -> TorchInductor options
OPTION_SETS = {
    "default": {},
    "cpp_wrapper": {"cpp_wrapper": True},
    "freezing": {"freezing": True},
    "freezing+cpp_wrapper": {"freezing": True, "cpp_wrapper": True},
    "aot": "aot",  # not inductor options: compile="aot" (torch.export + AOTInductor, a package)
}
MODELS = ("teacher, BN folded, compiled", "InherNet r8 H=3 (untrained), optimised, compiled",
          "InherNet r8 H=3 (heads differ), optimised", "InherNet r8 H=3 (heads differ), optimised, compiled")


def worker(options_name: str, batch: int, rounds: int, size: int) -> dict:
    """One option set at one batch size, in this process: ms per call and × the eager teacher."""
    torch.set_num_threads(1)
    torch.manual_seed(0)
    options = OPTION_SETS[options_name]
    if isinstance(options, dict):
        options = dict(options)
        # torch.compile ignores "freezing" among its options (the product refuses it there): inductor
        # reads its global config, as a user who wants it sets it
        torch._inductor.config.freezing = bool(options.pop("freezing", False))
    x = torch.randn(batch, 3, size, size)
    teacher = create_model("resnet56", num_classes=100).eval()
    untrained = inhernet.inherit(teacher, rank=8, heads=3, progress=False).eval()
    differ = as_trained(untrained)
    t0 = time.perf_counter()
    models = {
        MODELS[0]: inhernet.optimize_for_inference(teacher, x, compile=options),
        MODELS[1]: inhernet.optimize_for_inference(untrained, x, compile=options),
        MODELS[2]: inhernet.optimize_for_inference(differ, x),
        MODELS[3]: inhernet.optimize_for_inference(differ, x, compile=options),
    }
    build_s = time.perf_counter() - t0
    calls = {"teacher": lambda inp: teacher(inp), **{k: (lambda inp, m=m: m(inp)) for k, m in models.items()}}
    times = time_candidates(calls, x, rounds=rounds, clock="cpu")
    return {"options": options, "batch": batch, "build_s": build_s, "ms": times,
            "formats": {k: m.inhernet_optimized.memory_format for k, m in models.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--options", nargs="+", default=["default", "cpp_wrapper"], choices=list(OPTION_SETS))
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 64])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--quick", action="store_true", help="smoke test: 8 × 8 input, 2 rounds")
    parser.add_argument("--out", type=Path, default=None, help="write the Markdown report here too")
    parser.add_argument("--worker", nargs=2, metavar=("OPTIONS", "BATCH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    size = 8 if args.quick else 32
    rounds = 2 if args.quick else args.rounds
    if args.worker:
        print(json.dumps(worker(args.worker[0], int(args.worker[1]), rounds, size)))
        return

    t0 = time.perf_counter()
    results = []
    for batch in args.batches:
        for name in args.options:
            cmd = [sys.executable, __file__, "--worker", name, str(batch), "--rounds", str(rounds)]
            if args.quick:
                cmd.append("--quick")
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
            results.append((name, json.loads(out.strip().splitlines()[-1])))
            print(f"batch {batch}, {name}: done", file=sys.stderr, flush=True)

    lines = ["| batch | options | model | ms / call | × eager teacher | × teacher compiled alike | layout |",
             "|---:|---|---|---:|---:|---:|---|"]
    for name, r in results:
        ms, base, alike = r["ms"], r["ms"]["teacher"], r["ms"][MODELS[0]]
        lines.append(f"| {r['batch']} | {name} | teacher (eager, the reference) | {base:.3f} | 1.00× | | |")
        for model in MODELS:
            vs_alike = "" if model == MODELS[0] or "compiled" not in model else f"{alike / ms[model]:.2f}×"
            lines.append(f"| {r['batch']} | {name} | {model} | {ms[model]:.3f} | {base / ms[model]:.2f}× | "
                         f"{vs_alike} | {r['formats'][model]} |")
    table = "\n".join(lines)
    header = (f"torch {torch.__version__}, CPU, 1 thread; each (batch, options) row group measured side by side "
              f"in its own process ({rounds} interleaved rounds, median of the thread's CPU time); total "
              f"{(time.perf_counter() - t0) / 60:.1f} min.")
    print(f"{header}\n\n{table}")
    if args.out:
        command = "python benchmarks/bench_compile_options.py " + shlex.join(sys.argv[1:])
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(f"# TorchInductor options for a compiled inference model (issue 13)\n\n"
                            f"Produced by `{command}`.\n\n{header}\n\nOptions: "
                            + "; ".join(f"`{k}` = " + ("`compile=\"aot\"`" if k == "aot" else f"`{OPTION_SETS[k]}`") for k in args.options) + ".\n\n" + table + "\n")


if __name__ == "__main__":
    main()
