"""A latency budget against a parameter budget at equal measured latency (issue 13, item 5).

The resnet56 teacher trained on all 58,800 Fashion-MNIST training images (93.0 % test accuracy; the
``inhernet compare`` cache of ``benchmarks/configs/fmnist60k_resnet56_resnet20.yaml``, ``--teacher``)
is inherited with parameter budgets (``budget=p``, spectral allocation) and with latency budgets
(``budget_metric="latency"``, timed at ``--batch`` × 1 × 28 × 28), in each latency form
(``--forms``):

* ``inherited``: every model is timed as ``inherit`` returns it (the training form);
* ``optimized``: every model is timed as it would be served once trained — heads made to differ
  (``inhernet.optimize.as_trained``: the gate runs, as after fine-tuning) and then
  ``inhernet.optimize_for_inference``, the teacher too (BatchNorm folded, the faster memory format)
  — and the latency budgets use ``latency_form="optimized"``.

The verdict compares every latency-budget model with the parameter-budget curve (accuracy
against measured latency, linear between its points, the teacher at 1.0) *at the latency the
latency-budget model was measured to have*: the allocator need not hit its target exactly for the
comparison to be at equal latency. A latency budget the allocator's prediction cannot reach is
listed as such. Everything goes through the product:
``inhernet.inherit`` (the latency table cached under ``--cache``), ``inhernet.latency.time_models``
(all models of a form side by side in interleaved rounds, one thread, the thread's CPU time), and
``inhernet.train.evaluate`` on the full 10,000-image test set, before any fine-tuning.

    python benchmarks/bench_latency_budget.py [--budgets 0.2 0.3 0.4 0.5 0.6 0.8]
        [--latency-budgets 0.6 0.7 0.8 0.9] [--forms inherited optimized] [--batch 64] [--rounds 7]
        [--out docs/benchmarks/latency_budget.md]

``--quick``: two parameter budgets, one latency budget, 1,000 test images, 3 rounds (a check that
the script runs).
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch

import inhernet
from inhernet.data import load_dataset
from inhernet.latency import time_models
from inhernet.optimize import as_trained, optimize_for_inference
from inhernet.train import evaluate, load_model
from inhernet.utils import markdown_table

TEACHER = "benchmarks/store/cache/teachers/resnet56-bf487c73312a/model"  # trained by fmnist60k_resnet56_resnet20.yaml (benchmarks/long_runs.sh)
FORMS = ("inherited", "optimized")


def served(model: torch.nn.Module, form: str, example: torch.Tensor) -> torch.nn.Module:
    """``model`` as it is timed in ``form`` (optimized: the teacher too, BatchNorm folded and all)."""
    if form == "inherited":
        return model
    return optimize_for_inference(as_trained(model) if hasattr(model, "inhernet_plan") else model, example)


def curve_at(points: list[tuple[float, float]], latency: float) -> float:
    """The parameter-budget curve's accuracy at ``latency`` (linear between its measured points)."""
    xs, ys = zip(*sorted(points))
    return float(np.interp(latency, xs, ys))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--teacher", default=TEACHER)
    p.add_argument("--budgets", type=float, nargs="+", default=[0.2, 0.3, 0.4, 0.5, 0.6, 0.8],
                   help="parameter budgets (fractions of the teacher's parameters)")
    p.add_argument("--latency-budgets", type=float, nargs="+", default=[0.6, 0.7, 0.8, 0.9],
                   help="latency budgets (fractions of the teacher's predicted latency)")
    p.add_argument("--forms", nargs="+", default=list(FORMS), choices=FORMS)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--heads", type=int, default=3)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--cache", default=None, help="latency table folder (default ~/.cache/inhernet/latency)")
    p.add_argument("--out", default="docs/benchmarks/latency_budget.md")
    p.add_argument("--test-subset", type=int, default=None, help="test images (stratified; default all 10,000)")
    p.add_argument("--quick", action="store_true")
    a = p.parse_args(argv)
    if a.quick:
        a.budgets, a.latency_budgets, a.rounds = [0.3, 0.6], [0.8], 3
    torch.set_num_threads(a.threads)
    command = "python benchmarks/bench_latency_budget.py " + shlex.join(argv if argv is not None else sys.argv[1:])
    start = time.time()

    teacher, info = load_model(a.teacher)
    teacher.eval()
    data = load_dataset("fashion_mnist", val_fraction=0.01, subset=1000, seed=0,
                        test_subset=1000 if a.quick else a.test_subset)
    shape = (a.batch, *data.test.x.shape[1:])
    x_batch, x_one = torch.randn(shape), torch.randn(1, *shape[1:])
    common = dict(heads=a.heads, progress=False)

    accuracy: dict[str, float] = {}

    def acc(name: str, model: torch.nn.Module) -> float:
        if name not in accuracy:
            accuracy[name] = evaluate(model, data.test)["acc"]
        return accuracy[name]

    params = {f"params {b:g}": inhernet.inherit(teacher, budget=b, **common) for b in a.budgets}
    sections: list[str] = []
    for form in a.forms:
        models: dict[str, torch.nn.Module] = {"teacher": teacher, **params}
        unreachable: list[str] = []
        timed = {name: served(m, form, x_batch) for name, m in models.items()}
        for level in a.latency_budgets:
            name = f"latency {level:g}"
            try:
                models[name] = inhernet.inherit(teacher, budget=level, budget_metric="latency",
                                                latency_form=form, latency_input=shape, latency_cache=a.cache,
                                                **common)
            except inhernet.InherNetError as err:  # the allocator's prediction cannot reach that level
                unreachable.append(f"* {name}: not built — {err}")
                continue
            timed[name] = served(models[name], form, x_batch)
        # the final measurement: every model of this form side by side, at the batch and at batch 1
        at_batch = time_models(timed, x_batch, rounds=a.rounds)
        at_one = time_models({k: served(m, form, x_one) for k, m in models.items()}, x_one, rounds=a.rounds)
        rows, curve, latency_points = [], [(1.0, acc("teacher", teacher))], []
        for name, m in models.items():
            plan = getattr(m, "inhernet_plan", None)
            predicted = ""
            if plan is not None and plan.latency is not None:
                predicted = f"{plan.latency['predicted_ms'] / plan.latency['teacher_predicted_ms']:.3f}"
            factorised = 0 if plan is None else sum(r.rank is not None for r in plan.layers)
            lat = at_batch[name] / at_batch["teacher"]
            accuracy_m = acc(f"{form}: {name}" if name.startswith("latency") else name, m)
            if name.startswith("params"):
                curve.append((lat, accuracy_m))
            elif name.startswith("latency"):
                latency_points.append((name, lat, accuracy_m))
            rows.append([name, f"{inhernet.count_parameters(m) / inhernet.count_parameters(teacher):.3f}",
                         str(factorised), predicted, f"{lat:.3f}", f"{at_one[name] / at_one['teacher']:.3f}",
                         f"{accuracy_m:.4f}"])
        header = ["model", "params / teacher", "layers factorised", "predicted latency / teacher",
                  f"measured latency / teacher (batch {a.batch})", "measured latency / teacher (batch 1)",
                  "test acc (before fine-tuning)"]
        verdicts, gaps = [], []
        for name, lat, la in latency_points:
            pa = curve_at(curve, lat)
            gaps.append(la - pa)
            verdicts.append(f"* {name}: measured {lat:.3f} of the teacher; accuracy {la:.4f} against the parameter "
                            f"budgets' {pa:.4f} at that latency: **{100 * (la - pa):+.1f} points**")
        wins = sum(g > 0 for g in gaps)
        title = {"inherited": "as inherited (the training form)",
                 "optimized": "as served: heads made to differ, then optimize_for_inference"}[form]
        sections += [f"## Latency form `{form}`: models timed {title}", "", *markdown_table(header, rows), "",
                     *verdicts, *unreachable, "",
                     f"Latency budget better at equal measured latency in **{wins} of {len(gaps)}** levels; mean "
                     f"difference {100 * float(np.mean(gaps)):+.1f} points.", ""]
    text = "\n".join([
        "# Latency budget against parameter budget at equal measured latency", "",
        f"Command: `{command}`", "",
        f"Teacher: {a.teacher} ({info.get('arch')}, Fashion-MNIST, trained on all 58,800 training images, test "
        f"accuracy {accuracy['teacher']:.2%}); test set {len(data.test.y):,} images; heads {a.heads}; {a.threads} "
        f"thread(s), thread CPU time; {a.rounds} interleaved rounds per measurement, the fastest kept; ran "
        f"{time.time() - start:.0f} s.", "",
        "Accuracy is before any fine-tuning (the initialisations a fine-tuning would start from). The verdict "
        "lines compare each latency-budget model with the parameter-budget curve at the latency it was measured "
        "to have.", "",
        *sections])
    print(text)
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
