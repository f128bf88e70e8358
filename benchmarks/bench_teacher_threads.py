"""How much a second CPU thread speeds up the strong-teacher training, and whether it repeats.

Why: ``teacher.threads`` (benchmarks/configs/fmnist60k_resnet56_resnet20.yaml) trains the resnet56
teacher at 2 threads while the methods' runs use one each. That only helps if 2 threads are faster,
and only keeps the committed records usable if 2-thread training repeats bit for bit (a retrained
teacher is checked against its record, :mod:`inhernet.compare.teacher`).

Measures, in one process, side by side: one SGD step (forward, cross-entropy, backward, step) of the
teacher at the config's batch and image shape, at 1 and 2 threads in interleaved rounds (median ms per
step, and the median per-round ratio); then trains ``--digest-steps`` steps from the same seed twice
at 2 threads and compares the weight digests (:func:`inhernet.utils.weights_digest`).

    python benchmarks/bench_teacher_threads.py --out docs/benchmarks/teacher_threads.md
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from typing import Optional

import torch

from inhernet.models import create_model
from inhernet.utils import machine_record, markdown_table, weights_digest


def _step_fn(arch: str, batch: int, size: int):
    torch.manual_seed(0)
    model = create_model(arch, num_classes=10, in_channels=1)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    x, y = torch.randn(batch, 1, size, size), torch.randint(0, 10, (batch,))

    def step() -> None:
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return step


def _trained_digest(arch: str, batch: int, size: int, steps: int) -> str:
    torch.manual_seed(0)
    model = create_model(arch, num_classes=10, in_channels=1)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        x = torch.randn(batch, 1, size, size, generator=g)
        y = torch.randint(0, 10, (batch,), generator=g)
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return weights_digest(model)


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", default="resnet56")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--size", type=int, default=28, help="image side (Fashion-MNIST: 28)")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps", type=int, default=8, help="timed steps per thread count and round")
    p.add_argument("--digest-steps", type=int, default=8)
    p.add_argument("--out", default=None, help="markdown file to write")
    a = p.parse_args(argv)

    step = _step_fn(a.arch, a.batch, a.size)
    times: dict[int, list[float]] = {1: [], 2: []}
    ratios = []
    for r in range(a.rounds):
        per: dict[int, float] = {}
        for th in ((1, 2) if r % 2 == 0 else (2, 1)):
            torch.set_num_threads(th)
            step()  # warm-up at this thread count
            t0 = time.perf_counter()
            for _ in range(a.steps):
                step()
            per[th] = (time.perf_counter() - t0) / a.steps * 1e3
            times[th].append(per[th])
        ratios.append(per[1] / per[2])
    torch.set_num_threads(2)
    digests = [_trained_digest(a.arch, a.batch, a.size, a.digest_steps) for _ in range(2)]

    m = machine_record()
    cmd = "python benchmarks/bench_teacher_threads.py " + " ".join(argv if argv is not None else sys.argv[1:])
    rows = [["1", f"{statistics.median(times[1]):.1f}", "1.00×"],
            ["2", f"{statistics.median(times[2]):.1f}", f"{statistics.median(ratios):.2f}×"]]
    text = "\n".join([
        "# Teacher training at 1 and 2 CPU threads", "", f"Produced by `{cmd.strip()}`.", "",
        f"{m['cpu']} ({m['isa']}), torch {m['torch']}; {a.arch}, one SGD step at batch {a.batch} × 1 × {a.size} × "
        f"{a.size}, {a.rounds} interleaved rounds × {a.steps} steps (wall time; median over rounds; speed-up: "
        "median of the per-round ratios).", "",
        *markdown_table(["threads", "ms / step", "speed-up"], rows), "",
        f"Repeatability at 2 threads: {a.digest_steps} training steps from the same seed, twice in this process: "
        f"weight digests {digests[0]} and {digests[1]} — " + ("**the same**." if digests[0] == digests[1] else
                                                             "**different**."), ""])
    print(text)
    if a.out:
        with open(a.out, "w") as f:
            f.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
