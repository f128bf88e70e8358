"""Plain SVD vs activation-aware (whitened) initialisation on a CNN, before any fine-tuning.

Takes the teacher of a comparison config (trained once and cached by ``inhernet compare``; trained
here if missing), inherits it with ``init="svd"`` and ``init="whitened"`` (calibrated like the
compare runs: the first 256 training images) at the config's sizes, and reports the test accuracy
of each before fine-tuning, plus how far apart the whitened factors' norms would be without the
balancing of :meth:`inhernet.factorise.svd.Factorisation.factors` (largest ``‖u_i‖/‖v_i‖`` ratio of a
``√σ``-each-side split; plain SVD gives 1 by construction).

    python benchmarks/bench_whitened_init.py --out docs/benchmarks/whitened_init.md
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

import inhernet
from inhernet.calibrate import input_second_moments
from inhernet.factorise.whitening import cholesky_factor
from inhernet.compare import load_config, prepare_teacher
from inhernet.compare.basics import load_data
from inhernet.compare.runner import CALIBRATION_IMAGES, calibration_batches
from inhernet.models import create_model
from inhernet.factorise.svd import truncated_svd
from inhernet.train import evaluate

ROOT = Path(__file__).resolve().parents[1]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", type=Path, default=ROOT / "benchmarks/configs/fmnist_resnet56_resnet20.yaml")
    p.add_argument("--out", type=Path, default=ROOT / "docs/benchmarks/whitened_init.md")
    return p.parse_args(argv)


def unbalanced_ratio(teacher: torch.nn.Module, calibration: list, rank: int) -> float:
    """Largest norm ratio between a component's up column and down row if the whitened factors were
    split √σ on each side (what ``factors`` did before balancing), over the teacher's convolutions."""
    convs = {n: m for n, m in teacher.named_modules() if isinstance(m, torch.nn.Conv2d)}
    moments = input_second_moments(teacher, convs, calibration)
    worst = 1.0
    for name, conv in convs.items():
        fact = truncated_svd(conv.weight.detach(), min(rank, *conv.weight.flatten(1).shape),
                             whiten=cholesky_factor(moments[name]))
        n = fact.Vh.norm(dim=1)  # the √σ split gives ‖up_i‖ / ‖down_i‖ = 1 / n_i
        worst = max(worst, float(n.max()), float(1 / n.min()))
    return worst


def main(argv=None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(1)
    cfg = load_config(args.config)
    data = load_data(cfg)
    teacher, _ = prepare_teacher(cfg, data, progress=False)
    teacher.eval()
    calibration = calibration_batches(data.train, CALIBRATION_IMAGES)
    student = create_model(cfg.student.arch, num_classes=data.num_classes, in_channels=data.in_channels)
    sizes = {"the student's size (spectral budget)": dict(budget=student), "rank 8": dict(rank=8),
             "rank 16": dict(rank=16)}
    rows = []
    for label, size in sizes.items():
        acc = {}
        for init in ("svd", "whitened"):
            extra = {"calibration": calibration} if init == "whitened" else {}
            model = inhernet.inherit(teacher, heads=3, init=init, progress=False, **size, **extra)
            acc[init] = 100 * evaluate(model, data.test)["acc"]
        rows.append(f"| {label} | {inhernet.count_parameters(model):,} | {acc['svd']:.2f} | {acc['whitened']:.2f} |")
    teacher_acc = 100 * evaluate(teacher, data.test)["acc"]
    ratio = unbalanced_ratio(teacher, calibration, rank=8)
    lines = [
        "# Whitened vs plain SVD initialisation, before fine-tuning", "",
        "```bash", "python " + " ".join([os.path.relpath(__file__, ROOT), *sys.argv[1:]]), "```", "",
        f"Teacher: the cached {cfg.teacher.arch} of `{os.path.relpath(args.config, ROOT)}` "
        f"({teacher_acc:.2f} % on its {len(data.test):,} test images). Whitened: calibrated on the first "
        f"{CALIBRATION_IMAGES} training images. H = 3, no fine-tuning.", "",
        "| InherNet size | params (whitened) | plain SVD test acc % | whitened test acc % |", "|---|---:|---:|---:|",
        *rows, "",
        f"Without balancing, the whitened factors of the teacher's convolutions at rank 8 would be up to "
        f"{ratio:.1f}× apart in norm (a component's up column against its down row); "
        "`Factorisation.factors` now gives both the same norm.", "",
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
