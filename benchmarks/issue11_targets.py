"""Issue 11's targets, read off one or more `inhernet compare` results.json files: each target with
the figures it is judged on, the n behind them, and met / not met — so the verdict in the docs is
computed, not typed.

    python benchmarks/issue11_targets.py benchmarks/store/fmnist60k_resnet56_resnet20/results.json \\
        [benchmarks/store/fmnist60k_wrn_40_2_wrn_40_1/results.json] [--out docs/benchmarks/issue11_targets.md] \\
        [--third benchmarks/store/fmnist60k_resnet56_resnet20_third/results.json ...]

The rows, by what each method is (its inherit summary in results.json, not its name):

* **gated**: an InherNet at the student's parameter budget with H > 1, a softmax gate and the paper's
  shared down-projection (the symmetric ablation is not a candidate); the best of them (highest
  mean) is "the best gated variant";
* **H = 1**: the same budget, one head (plain low rank); the best of them;
* **w.o. gate**: the same budget, H > 1, ``gate: none``;
* **best KD student**: the highest-mean student_kd / student_dkd / student_lskd row;
* **Large**: an InherNet with a fixed rank (no budget), e.g. the paper's rank 16, H = 3;
* **the default config**: the row whose heads, head_init, init and gate are the library's defaults
  (``InheritConfig()``): checked against the best row, and, when the default has gated heads, its
  last-epoch head cosine and gate gradient ratio are reported (one head: nothing to report).

A target is judged on means over seeds; a row with fewer seeds than the comparison's is marked
provisional and so is every verdict that reads it. Each difference also gets Welch's two-sided
t-test over the rows' per-seed accuracies (``p``; "–" where a row has one seed): with 3 seeds a
difference well inside the seeds' spread is not evidence either way, and the figures say so. The
last row checks the library's default against the best measured row at the student's size (the
issue's rule: the default is whatever measured best, H = 1 included). Nothing here trains or
measures anything.

"Reaches the best KD student's final accuracy in ≤ ⅓ of the epochs" is judged two ways. Within the
full run (the first epoch whose test accuracy reaches it), which reads a mid-schedule epoch: with the
paper's milestones scaled to 10 epochs the first lr drop comes at epoch 6, so an epoch-3 model is
still at the initial lr. And, with ``--third``, on a comparison that trained the InherNet rows with
a third of the epochs (the same data, teacher and recipe, its milestones scaled to that count —
``benchmarks/configs/fmnist60k_*_third.yaml``): each row's final accuracy against the full
comparison's best KD student. A ``--third`` results.json is paired with the positional one of the
same teacher, student and data.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path
from typing import Optional

KD_KINDS = ("student_kd", "student_dkd", "student_lskd")


def _pct(x: Optional[float]) -> str:
    return "–" if x is None else f"{100 * x:.2f}"


def _acc(e: dict) -> str:
    n = len(e.get("seeds", []))
    if e.get("kind") == "teacher":
        return _pct(e.get("test_acc_mean"))
    return f"{_pct(e['test_acc_mean'])} (n = 1)" if n == 1 else f"{_pct(e['test_acc_mean'])} ± {_pct(e['test_acc_std'])}"


def _welch_p(a: dict, b: dict) -> str:
    """Welch's two-sided t-test p-value of two rows' per-seed test accuracies, as text ("–": a row
    has fewer than two seeds, or both have no spread)."""
    from scipy import stats

    x, y = a.get("test_acc") or [], b.get("test_acc") or []
    if len(x) < 2 or len(y) < 2:
        return "–"
    with warnings.catch_warnings():  # a row whose seeds agree to the last digit (wrn w.o. gate: 92.35 twice)
        warnings.simplefilter("ignore", RuntimeWarning)  # makes scipy warn of precision loss; p stands
        p = stats.ttest_ind(x, y, equal_var=False).pvalue
    return "–" if p != p else f"{p:.2g}"  # NaN: no spread in either row


def _diff(a: dict, b: dict) -> str:
    """``a``'s mean minus ``b``'s, in points, with Welch's p."""
    return f"{100 * (a['test_acc_mean'] - b['test_acc_mean']):+.2f} (Welch p = {_welch_p(a, b)})"


def _finished(e: dict) -> bool:
    return e.get("test_acc_mean") is not None and e.get("seeds")


def classify(results: dict) -> dict[str, list[dict]]:
    """The rows of one comparison by role (see the module docstring)."""
    sp = results["student_params"]
    out: dict[str, list[dict]] = {"gated": [], "h1": [], "wo_gate": [], "kd": [], "large": [], "inhernet_small": []}
    for e in results["methods"]:
        if not _finished(e):
            continue
        if e["kind"] in KD_KINDS:
            out["kd"].append(e)
        if e["kind"] != "inhernet":
            continue
        inh = e.get("inherit", {})
        if inh.get("budget") is None and inh.get("rank") is not None:
            out["large"].append(e)
            continue
        if e["params"] > sp:
            continue
        out["inhernet_small"].append(e)
        if inh.get("heads") == 1:
            out["h1"].append(e)
        elif inh.get("gate") == "none":
            out["wo_gate"].append(e)
        elif inh.get("structure", "asymmetric") == "asymmetric":
            out["gated"].append(e)
    return out


def _best(rows: list[dict]) -> Optional[dict]:
    return max(rows, key=lambda e: e["test_acc_mean"]) if rows else None


def _third_row(third: dict, kd: Optional[dict], epochs: int, judge, ns) -> tuple[str, str, str, str]:
    """The ⅓-epochs target judged on a comparison trained with a third of the epochs: every finished
    InherNet row's final accuracy against the full comparison's best KD student (``kd``)."""
    short = third["config"]["schedule"]["epochs"]
    target = (f"every InherNet trained with ⅓ of the epochs ({short} of {epochs}, the recipe scaled) reaches "
              f"the best KD student's final accuracy")
    rows = [e for e in third["methods"] if _finished(e) and e["kind"] == "inhernet"]
    if kd is None or not rows:
        return target, "–", ns(*rows), judge(None)
    figures = ", ".join(f"{e['name']} {_acc(e)}" for e in rows) + f" vs {kd['name']} {_acc(kd)} ({epochs} epochs)"
    missing = [m["name"] for m in third["config"]["methods"] if m["name"] not in {e["name"] for e in rows}]
    if missing:
        figures += "; not trained yet: " + ", ".join(missing)
    ok = all(e["test_acc_mean"] >= kd["test_acc_mean"] for e in rows)
    return target, figures, ns(*rows), judge(ok, *rows) + (" (rows missing)" if missing and ok else "")


def verdicts(results: dict, seeds_wanted: int, third: Optional[dict] = None) -> list[tuple[str, str, str, str]]:
    """``(target, figures, n, verdict)`` rows for one comparison (``third``: the same pair trained with
    a third of the epochs, see the module docstring)."""
    from inhernet import InheritConfig

    roles = classify(results)
    rows: list[tuple[str, str, str, str]] = []

    def provisional(*es: Optional[dict]) -> bool:
        return any(e is not None and len(e["seeds"]) < seeds_wanted for e in es)

    def judge(ok: Optional[bool], *es: Optional[dict]) -> str:
        if ok is None:
            return "not measured yet"
        word = "met" if ok else "**not met**"
        return word + (" (provisional: n < %d)" % seeds_wanted if provisional(*es) else "")

    def ns(*es: Optional[dict]) -> str:
        return ", ".join(f"{e['name']} {len(e['seeds'])}" for e in es if e is not None)

    gated, h1, wo = _best(roles["gated"]), _best(roles["h1"]), _best(roles["wo_gate"])
    for other, label in ((h1, "H = 1 (plain low rank)"), (wo, "w.o. gate")):
        if gated is None or other is None:
            rows.append((f"best gated ≥ {label} + 0.5", "–", ns(gated, other), judge(None)))
            continue
        d = gated["test_acc_mean"] - other["test_acc_mean"]
        rows.append((f"best gated ≥ {label} + 0.5",
                     f"{gated['name']} {_acc(gated)} vs {other['name']} {_acc(other)}: {_diff(gated, other)}",
                     ns(gated, other), judge(d >= 0.005, gated, other)))
    small, kd = _best(roles["inhernet_small"]), _best(roles["kd"])
    if small is not None and kd is not None:
        d = small["test_acc_mean"] - kd["test_acc_mean"]
        rows.append(("InherNet at ≤ student params ≥ best KD student + 1",
                     f"{small['name']} {_acc(small)} vs {kd['name']} {_acc(kd)}: {_diff(small, kd)}", ns(small, kd),
                     judge(d >= 0.01, small, kd)))
    else:
        rows.append(("InherNet at ≤ student params ≥ best KD student + 1", "–", ns(small, kd), judge(None)))
    t = results["teacher"]
    for large in roles["large"] or [None]:
        if large is None:
            rows.append(("Large ≥ teacher − 0.3 at ≤ 50 % of its params", "–", "", judge(None)))
            continue
        d = large["test_acc_mean"] - t["test_acc_mean"]
        frac = large["params"] / t["params"]
        rows.append(("Large ≥ teacher − 0.3 at ≤ 50 % of its params",
                     f"{large['name']} {_acc(large)} vs teacher {_acc(t)}: {100 * d:+.2f} (the teacher: one network); "
                     f"{frac:.0%} of its params",
                     ns(large), judge(d >= -0.003 and frac <= 0.5, large)))
    ref = results.get("reference_kd_student")
    inhs = roles["inhernet_small"] + roles["large"]
    if ref and inhs:
        epochs = max(e.get("epochs") or 0 for e in inhs)
        limit = epochs / 3
        hits = {e["name"]: e.get("epochs_to_best_kd_student") for e in inhs}
        slow = {k: v for k, v in hits.items() if v is None or v > limit}
        figures = ", ".join(f"{k} {v if v is not None else 'never'}" for k, v in hits.items())
        rows.append((f"every InherNet reaches {ref}'s final accuracy in ≤ ⅓ of the epochs (≤ {limit:.1f} of {epochs}) "
                     "of its full run (a mid-schedule epoch)", figures, ns(*inhs), judge(not slow, *inhs)))
    if third is not None:
        rows.append(_third_row(third, kd, results["config"]["schedule"]["epochs"], judge, ns))
    default = InheritConfig()
    rows.append(_default_row(roles, default, provisional))
    target = "default config's heads reported (head cosine, gate gradient ratio)"
    if default.heads == 1:
        rows.append((target, "the default has one head: no gate, nothing to diverge", "", "n/a (H = 1)"))
        return rows
    for e in roles["gated"]:
        inh = e.get("inherit", {})
        if (inh.get("heads"), inh.get("head_init", "copies"), inh.get("init"), inh.get("gate")) == (
                default.heads, default.head_init, default.init, default.gate):
            cos, ratio = e.get("head_cosine_last"), e.get("gate_grad_ratio_last")
            rows.append((target, f"{e['name']}: cos {cos:.6f}, ratio {ratio:.1e}" if cos is not None and ratio is not None
                         else f"{e['name']}: –", ns(e), "reported"))
            break
    return rows


def _knobs(inh: dict) -> tuple:
    """The options the default decides, as an inherit summary states them (absent = the paper's); with
    one head, head_init and gate build nothing, so they do not tell two H = 1 rows apart."""
    one = inh.get("heads") == 1
    return (inh.get("heads"), None if one else inh.get("head_init", "copies"), inh.get("init", "svd"),
            None if one else inh.get("gate", "softmax"), inh.get("structure", "asymmetric"),
            inh.get("budget_mode", "spectral"))


def _default_row(roles: dict, default, provisional) -> tuple[str, str, str, str]:
    """Whether the library's default is the best measured InherNet at the student's size: the issue's
    rule (a row is the default's when heads, head_init, init, gate, structure and budget_mode match)."""
    target = "the library's default is the best measured InherNet at the student's size"
    mine = _knobs({"heads": default.heads, "head_init": default.head_init, "init": default.init, "gate": default.gate,
                   "structure": default.structure, "budget_mode": default.budget_mode})
    small = roles["inhernet_small"]
    best = _best(small)
    if best is None:
        return target, "–", "", "not measured yet"
    ours = next((e for e in small if _knobs(e.get("inherit", {})) == mine), None)
    heads, head_init, init = _knobs(best.get("inherit", {}))[:3]
    knobs = f"heads={heads}" + ("" if head_init is None else f", head_init={head_init}") + f", init={init}"
    figures = f"best: {best['name']} {_acc(best)} ({knobs})"
    if ours is None:
        return target, figures + "; no row has the default's options", f"{best['name']} {len(best['seeds'])}", \
            "not measured yet"
    if ours is not best:
        figures += f"; the default's row {ours['name']} {_acc(ours)}: {_diff(ours, best)}"
    ok = ours is best
    p = _welch_p(ours, best)
    word = "met" if ok else ("**not met**" + (f" (within noise: p = {p})" if p != "–" and float(p) >= 0.05 else ""))
    prov = " (provisional: a row has fewer seeds)" if provisional(best, ours) else ""
    rows = [best] if ours is best else [best, ours]
    return target, figures, ", ".join(f"{e['name']} {len(e['seeds'])}" for e in rows), word + prov


def _pair(results: dict) -> str:
    """What a comparison and its ⅓-epochs companion must share: teacher, student and data."""
    c = results["config"]
    return json.dumps([c["teacher"], c["student"], c["data"]], sort_keys=True)


def pair_thirds(full: dict[Path, dict], thirds: list[Path]) -> dict[Path, dict]:
    """Each ``--third`` results.json matched to the full comparison of the same teacher, student and
    data, checked to have at most a third of its epochs; a clear error otherwise."""
    out: dict[Path, dict] = {}
    for t in thirds:
        short = json.loads(t.read_text())
        match = [p for p, r in full.items() if _pair(r) == _pair(short)]
        if not match:
            sys.exit(f"--third {t}: no comparison given has its teacher, student and data; pass that "
                     "comparison's results.json too")
        p = match[0]
        epochs, few = full[p]["config"]["schedule"]["epochs"], short["config"]["schedule"]["epochs"]
        if 3 * few > epochs:
            sys.exit(f"--third {t}: {few} epochs is more than a third of {p}'s {epochs}")
        out[p] = short
    return out


def render(paths: list[Path], thirds: Optional[list[Path]] = None) -> str:
    full = {p: json.loads(p.read_text()) for p in paths}
    paired = pair_thirds(full, thirds or [])
    lines = ["# Issue 11 targets", "",
             "Computed by `python benchmarks/issue11_targets.py " + " ".join(map(str, paths))
             + "".join(f" --third {t}" for t in thirds or []) + "` from the "
             "tables' results.json (means over seeds, last epoch; \"provisional\": a row has fewer seeds than "
             "the comparison asks for).", ""]
    for p in paths:
        results = full[p]
        want = len(results["config"]["seeds"])
        t = results.get("teacher") or {}
        teacher = f"teacher {t.get('arch', '?')} at {100 * t['test_acc_mean']:.2f} %" if t.get("test_acc_mean") else "teacher"
        lines += [f"## {results['name']} ({teacher}; `{p}`)", "", "| target | figures (test acc %, last epoch) | seeds per row | verdict |",
                  "|---|---|---|---|"]
        lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in verdicts(results, want, paired.get(p))]
        lines.append("")
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("results", nargs="+", type=Path, help="results.json of a comparison")
    ap.add_argument("--out", type=Path, help="also write the Markdown here")
    ap.add_argument("--third", type=Path, nargs="+", default=[],
                    help="results.json of the same pair trained with a third of the epochs (fmnist60k_*_third.yaml)")
    a = ap.parse_args(argv)
    for p in [*a.results, *a.third]:
        if not p.is_file():
            sys.exit(f"{p}: not found (run `inhernet report OUT_DIR --no-latency` to write it)")
    text = render(a.results, a.third)
    print(text)
    if a.out:
        a.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
