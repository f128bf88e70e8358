"""Put a comparison's cached teacher back from the repository's history, checked against its record.

The long CPU comparisons (benchmarks/long_runs.sh) keep their records in benchmarks/store/ but not the
trained weights. CPU training repeats bit for bit only on the machine type that trained it, so on a
machine of another type the teacher cannot be retrained as the same network. Where an earlier commit
did hold the teacher's weights, they are taken from that commit (nothing is committed now) and go
through ``inhernet.compare.restore_teacher``, which accepts them only as the network the record
describes (its weight digest, or for a record without one the recorded test and validation metrics
evaluated here).

    python benchmarks/teacher_from_history.py benchmarks/configs/fmnist60k_resnet56_resnet20.yaml

Exit status 0: the teacher's weights are here (restored now or before); 1: the history holds no
weights of it (a shallow clone, or a teacher never committed) or they did not pass the check; 2: bad
arguments. Reads the repository, writes only the config's teacher cache.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Optional

from inhernet.compare import CompareError, load_config, restore_teacher
from inhernet.compare.teacher import teacher_folder, teacher_ready
from inhernet.train.store import DENSE_CONFIG_NAME, WEIGHTS_NAME


def _git(root: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", "-C", str(root), *args], capture_output=True, check=False)


def last_commit_with(root: Path, path: str) -> Optional[str]:
    """The latest commit that added or changed ``path`` (relative to the repository root), or None."""
    r = _git(root, "log", "--format=%H", "--diff-filter=AM", "-1", "--", path)
    return (r.stdout.decode().strip() or None) if r.returncode == 0 else None


def weights_from_history(root: Path, model_dir: str, into: Path) -> Optional[str]:
    """Write the model folder ``model_dir`` (its weights and config) as the latest commit that held its
    weights had it into ``into``; returns that commit, or None when the history has none."""
    commit = last_commit_with(root, f"{model_dir}/{WEIGHTS_NAME}")
    if commit is None:
        return None
    into.mkdir(parents=True, exist_ok=True)
    for name in (WEIGHTS_NAME, DENSE_CONFIG_NAME):
        r = _git(root, "show", f"{commit}:{model_dir}/{name}")
        if r.returncode != 0:
            return None
        (into / name).write_bytes(r.stdout)
    return commit


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("config", help="an image comparison config whose teacher is cached (trained) by the runner")
    a = ap.parse_args(argv)
    cfg = load_config(a.config)
    if cfg.teacher.path:
        print(f"{a.config}: the teacher is given by teacher.path ({cfg.teacher.path}); nothing to restore")
        return 0
    if teacher_ready(cfg):
        print(f"teacher: its weights are here ({teacher_folder(cfg) / 'model'})")
        return 0
    root = Path(_git(Path(a.config).resolve().parent, "rev-parse", "--show-toplevel").stdout.decode().strip() or ".")
    folder = teacher_folder(cfg).resolve()
    try:
        model_dir = str((folder / "model").relative_to(root.resolve()))
    except ValueError:
        print(f"teacher: {folder} is outside the repository {root}; no history to restore it from")
        return 1
    with tempfile.TemporaryDirectory() as tmp:
        commit = weights_from_history(root, model_dir, Path(tmp) / "model")
        if commit is None:
            print(f"teacher: the repository's history holds no weights at {model_dir} (a shallow clone, or never "
                  "committed): it has to be retrained")
            return 1
        print(f"teacher: weights found in commit {commit[:10]} ({model_dir}); checking them against the record")
        try:
            record = restore_teacher(cfg, Path(tmp) / "model", origin=f"git {commit}:{model_dir}", log=print)
        except CompareError as err:
            print(f"teacher: not restored: {err}")
            return 1
    print(f"teacher: restored ({record['restored'][-1]['checked']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
