"""Print a Markdown table of two `inhernet compare` results.json files side by side (per method:
last-epoch test accuracy mean ± std, seeds, params), e.g. a published table against its re-run.

    python benchmarks/diff_results.py OLD/results.json NEW/results.json [--old-label ...] [--new-label ...]

An old results.json from git history: `git show REV:docs/benchmarks/X/results.json > /tmp/old.json`.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def _acc(entry: dict | None) -> str:
    if not entry or entry.get("test_acc_mean") is None:
        return "–"
    n = len(entry.get("seeds", [])) or 1
    mean = 100 * entry["test_acc_mean"]
    if entry.get("kind") == "teacher" or n == 1:
        return f"{mean:.2f}" + ("" if entry.get("kind") == "teacher" else " (n = 1)")
    return f"{mean:.2f} ± {100 * entry['test_acc_std']:.2f}"


def table(old: dict, new: dict, old_label: str, new_label: str) -> str:
    by_old = {m["name"]: m for m in old["methods"]}
    by_new = {m["name"]: m for m in new["methods"]}
    names = [m["name"] for m in new["methods"]] + [n for n in by_old if n not in by_new]
    rows = [f"| method | {old_label} | params | {new_label} | params | Δ mean |", "|---|---|---:|---|---:|---:|"]
    for name, o, n in [("teacher", old["teacher"], new["teacher"])] + [(x, by_old.get(x), by_new.get(x)) for x in names]:
        delta = "–"
        if o and n and o.get("test_acc_mean") is not None and n.get("test_acc_mean") is not None:
            delta = f"{100 * (n['test_acc_mean'] - o['test_acc_mean']):+.2f}"
        rows.append(f"| {name} | {_acc(o)} | {o.get('params', 0) if o else 0:,} | {_acc(n)} | "
                    f"{n.get('params', 0) if n else 0:,} | {delta} |")
    return "\n".join(rows)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("old", type=Path)
    p.add_argument("new", type=Path)
    p.add_argument("--old-label", default="published")
    p.add_argument("--new-label", default="re-run")
    a = p.parse_args(argv)
    print(table(json.loads(a.old.read_text()), json.loads(a.new.read_text()), a.old_label, a.new_label))


if __name__ == "__main__":
    main()
