"""A latency budget against a parameter budget at equal measured latency (issue 13, item 5).

The resnet56 teacher trained on 1,000 Fashion-MNIST images (the ``inhernet compare`` cache,
``--teacher``) is inherited with parameter budgets (``budget=p``, spectral allocation) and, for
each, with a latency budget (``budget_metric="latency"``, timed at ``--batch`` × 1 × 28 × 28) set to
the latency the parameter-budget model was *measured* to have: the two then take the same time,
and what differs is where the allocation spent it. Everything goes through the product:
``inhernet.inherit`` (the latency table cached under ``--cache``), ``inhernet.latency.time_models``
(all models side by side in interleaved rounds, one thread, the thread's CPU time), and
``inhernet.train.evaluate`` on the full 10,000-image test set, before any fine-tuning.

    python benchmarks/bench_latency_budget.py [--budgets 0.3 0.5] [--batch 64] [--rounds 7]
                                              [--out docs/benchmarks/latency_budget.md]

``--quick``: one budget, 1,000 test images, 3 rounds (a check that the script runs).
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

import torch

import inhernet
from inhernet.data import load_dataset
from inhernet.latency import time_models
from inhernet.train import evaluate, load_model
from inhernet.utils import markdown_table

TEACHER = "/work/main/cache/teachers/resnet56-ae24a815cfbc/model"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--teacher", default=TEACHER)
    p.add_argument("--budgets", type=float, nargs="+", default=[0.3, 0.5], help="parameter budgets (fractions)")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--heads", type=int, default=3)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--cache", default=None, help="latency table folder (default ~/.cache/inhernet/latency)")
    p.add_argument("--out", default="docs/benchmarks/latency_budget.md")
    p.add_argument("--quick", action="store_true")
    a = p.parse_args(argv)
    if a.quick:
        a.budgets, a.rounds = a.budgets[:1], 3
    torch.set_num_threads(a.threads)
    command = "python benchmarks/bench_latency_budget.py " + shlex.join(argv if argv is not None else sys.argv[1:])
    start = time.time()

    teacher, info = load_model(a.teacher)
    teacher.eval()
    data = load_dataset("fashion_mnist", val_fraction=0.01, subset=1000, seed=0,
                        test_subset=1000 if a.quick else None)
    shape = (a.batch, *data.test.x.shape[1:])
    x_batch, x_one = torch.randn(shape), torch.randn(1, *shape[1:])

    common = dict(heads=a.heads, progress=False)
    models: dict[str, torch.nn.Module] = {"teacher": teacher}
    for b in a.budgets:
        models[f"params {b:g}"] = inhernet.inherit(teacher, budget=b, **common)
    # each parameter-budget model's measured latency, side by side with the teacher: the latency budgets
    first = time_models(models, x_batch, rounds=a.rounds)
    for b in a.budgets:
        level = first[f"params {b:g}"] / first["teacher"]
        models[f"latency {level:.3f} (= params {b:g})"] = inhernet.inherit(
            teacher, budget=min(1.0, level), budget_metric="latency", latency_input=shape, latency_cache=a.cache, **common)

    # the final measurement: every model side by side, at the batch and at batch 1
    at_batch = time_models(models, x_batch, rounds=a.rounds)
    at_one = time_models(models, x_one, rounds=a.rounds)
    rows, results = [], {}
    for name, m in models.items():
        acc = evaluate(m, data.test)["acc"]
        plan = getattr(m, "inhernet_plan", None)
        predicted = ""
        if plan is not None and plan.latency is not None:
            t = plan.latency
            predicted = f"{t['predicted_ms'] / t['teacher_predicted_ms']:.3f}"
        inherited = 0 if plan is None else sum(r.rank is not None for r in plan.layers)
        results[name] = (acc, at_batch[name] / at_batch["teacher"])
        rows.append([name, f"{inhernet.count_parameters(m) / inhernet.count_parameters(teacher):.3f}",
                     str(inherited), predicted, f"{at_batch[name] / at_batch['teacher']:.3f}",
                     f"{at_one[name] / at_one['teacher']:.3f}", f"{acc:.4f}"])
    header = ["model", "params / teacher", "layers factorised", "predicted latency / teacher",
              f"measured latency / teacher (batch {a.batch})", "measured latency / teacher (batch 1)",
              "test acc (before fine-tuning)"]
    verdicts = []
    for b in a.budgets:
        pname = f"params {b:g}"
        lname = next(k for k in models if k.endswith(f"(= params {b:g})"))
        (pa, pt), (la, lt) = results[pname], results[lname]
        faster = "faster" if lt < pt else "slower"
        verdicts.append(f"* {pname} vs {lname}: accuracy {pa:.4f} vs {la:.4f} "
                        f"({'latency budget better' if la > pa else 'parameter budget better' if pa > la else 'equal'}); "
                        f"measured at batch {a.batch} the latency-budget model is {abs(lt / pt - 1):.1%} {faster} "
                        f"({lt:.3f} vs {pt:.3f} of the teacher).")
    table = markdown_table(header, rows)
    text = "\n".join([
        "# Latency budget against parameter budget at equal measured latency", "",
        f"Command: `{command}`", "",
        f"Teacher: {a.teacher} ({info.get('arch')}, Fashion-MNIST, 1,000 training images); test set "
        f"{len(data.test.y):,} images; heads {a.heads}; {a.threads} thread(s), thread CPU time; {a.rounds} interleaved "
        f"rounds per measurement, the fastest kept; ran {time.time() - start:.0f} s.", "",
        *table, "", *verdicts, ""])
    print(text)
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
