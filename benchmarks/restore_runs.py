"""Rebuild a comparison's single-seed run records from its published ``results.json``.

Why: a session's machine may be new, and the run folders of a long CPU comparison (hours of CPU per
row) live on the machine that trained them. A published ``results.json`` holds, for a row measured
on one seed (n = 1), everything the report reads from that run's ``done.json``: final test and
validation accuracy, the per-epoch curves, the head diagnostics, parameters, FLOPs, the inherit
config. This script writes those records back (``run.json`` + ``done.json``, marked
``restored_from``) so ``inhernet compare`` skips the runs and the report counts them, saying which
rows were restored. Rows averaged over several seeds cannot be split back into runs and are left out.

It refuses unless the records can stand for what a retrain would give:

* each record's run key (a hash of data, teacher config, schedule, method and seed), computed from the
  published config, equals the key the current config plans — same experiment, not a look-alike;
* the current config's teacher is already trained here (``cache_dir``) and scores the published
  teacher's test accuracy exactly (to the last of 10,000 images): the comparison's teacher is
  trained deterministically from its config, and the runs were trained against it;
* a run folder that already holds a record is never overwritten.

Usage (after the teacher is trained, e.g. by ``inhernet compare CONFIG`` running)::

    python benchmarks/restore_runs.py benchmarks/configs/fmnist60k_resnet56_resnet20.yaml \\
        docs/benchmarks/fmnist60k_resnet56_resnet20/results.json [--only student_kd h2_copies ...]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from inhernet.compare.config import CompareConfig, read_config_file
from inhernet.compare.runner import plan_runs, teacher_folder, teacher_key
from inhernet.utils import read_json, write_json

#: results.json's head diagnostics -> the metric names a run records
HEADS = {"head_cosine": "heads/cosine_mean", "gate_entropy": "gate/entropy", "gate_grad_ratio": "gate/grad_ratio"}


def provenance(results_path: Path) -> str:
    """``path@commit`` of the published table (the commit that last changed it), or just the path."""
    try:
        commit = subprocess.run(["git", "log", "-1", "--format=%h", "--", str(results_path)], capture_output=True,
                                text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = ""
    return f"{results_path}@{commit}" if commit else str(results_path)


def record_from_entry(entry: dict, key: str, source: str) -> dict:
    """The ``done.json`` of the one seed behind a published n = 1 row."""
    final = {"test/acc": entry["test_acc"][0], "val/acc": entry["val_acc_mean"]}
    curve = {"test/acc": entry["curve_test_acc"]["mean"], "val/acc": entry["curve_val_acc"]["mean"]}
    for name, metric in HEADS.items():
        if entry.get(f"curve_{name}"):
            curve[metric] = entry[f"curve_{name}"]["mean"]
            final[metric] = entry.get(f"{name}_last")
    rec = {"key": key, "method": entry["name"], "kind": entry["kind"], "seed": entry["seeds"][0],
           "loss": entry["loss"], "params": entry["params"], "flops": entry["flops"], "final": final,
           "epochs": entry["epochs"], "curve": curve, "train_time_s": entry.get("train_time_s_mean"),
           "restored_from": source}
    if "inherit" in entry:
        rec["inherit"] = entry["inherit"]
        rec["layer_summary"] = entry.get("layer_summary")
    return rec


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("config", type=Path, help="the comparison config whose runs to restore")
    ap.add_argument("results", type=Path, help="the published results.json holding n = 1 rows")
    ap.add_argument("--only", nargs="+", metavar="METHOD", help="restore these methods only")
    a = ap.parse_args(argv)

    cfg = CompareConfig.from_dict(read_config_file(a.config), where=str(a.config))
    published = read_json(a.results)
    if published is None:
        sys.exit(f"{a.results}: not found or not JSON")
    old = CompareConfig.from_dict(published["config"], where=f"{a.results}: config")

    # the teacher: trained here, and the published one (same test accuracy on the full test set)
    done = read_json(teacher_folder(cfg) / "done.json")
    if done is None:
        sys.exit(f"the teacher of {a.config} is not trained here yet ({teacher_folder(cfg)}): run `inhernet compare "
                 f"{a.config}` until it is; restored records are only valid against the same teacher")
    want = published["teacher"]["test_acc_mean"]
    if teacher_key(old) != teacher_key(cfg) or abs(done["test_acc"] - want) > 1e-9:
        sys.exit(f"the teacher here (key {teacher_key(cfg)}, test acc {done['test_acc']:.4f}) is not the published one "
                 f"(key {teacher_key(old)}, test acc {want:.4f}); nothing was restored")

    plan = {(r["method"].name, r["seed"]): r for r in plan_runs(cfg, teacher_key(cfg))}
    old_keys = {(r["method"].name, r["seed"]): r["key"] for r in plan_runs(old, teacher_key(old))}
    source = provenance(a.results)
    restored = 0
    for entry in published["methods"]:
        name = entry["name"]
        if a.only and name not in a.only:
            continue
        if len(entry.get("seeds", [])) != 1 or entry.get("test_acc_mean") is None:
            print(f"{name}: {len(entry.get('seeds', []))} seeds published; only n = 1 rows can be restored, skipped")
            continue
        seed = entry["seeds"][0]
        run = plan.get((name, seed))
        if run is None:
            print(f"{name} seed {seed}: not planned by {a.config}, skipped")
            continue
        if old_keys.get((name, seed)) != run["key"]:
            print(f"{name} seed {seed}: the published run's key differs from the planned one (another experiment), "
                  "skipped")
            continue
        d: Path = run["dir"]
        if (d / "done.json").exists() or (d / "failed.json").exists():
            print(f"{name} seed {seed}: {d} already holds a record, left as it is")
            continue
        d.mkdir(parents=True, exist_ok=True)
        write_json(d / "run.json", {"key": run["key"], **run["identity"]})
        write_json(d / "done.json", record_from_entry(entry, run["key"], source))
        restored += 1
        print(f"{name} seed {seed}: restored (test acc {100 * entry['test_acc'][0]:.2f} %) -> {d}")
    print(f"{restored} run record(s) restored from {source}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
