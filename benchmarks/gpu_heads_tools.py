"""Helpers of ``benchmarks/gpu_heads.sh``: derive the configs to run, say how far the runs are,
and pack / unpack the state a fresh machine needs to resume.

    python benchmarks/gpu_heads_tools.py prepare --dest runs/gpu/configs [--smoke] [--root DIR] CONFIG...
    python benchmarks/gpu_heads_tools.py progress CONFIG...
    python benchmarks/gpu_heads_tools.py pack --dest OUT --parts 2 CONFIG...
    python benchmarks/gpu_heads_tools.py unpack DIR

``prepare`` writes one config per input into ``--dest`` (the paths are printed, one a line): the
same config, with ``data.root`` set when ``--root`` is given, or, with ``--smoke``, the tiny CPU
setting of the smoke test (200 training images, 300 validation and 300 test images, 1 epoch,
seed 0, two methods, accelerator cpu, one thread, its own out_dir and cache under
``runs/gpu_smoke/``; ``--smoke-epochs`` for more, e.g. to see a stopped run resume) that keeps every other option, channels_last and data_on_device included;
the precision becomes ``--smoke-precision`` (default 32: bf16 autocast runs on a CPU, but without
bf16 instructions it is ~9x slower than float32 for resnet56, measured on this project's 2-core
machine; tests/test_gpu_ready.py covers bf16-mixed).

``pack`` exists because the device machine is handed back a few seconds after a call and a later
call gets a fresh, empty one, while at most 8 files of 16 MiB each come back from it. The state
packed is what lets a fresh machine go on: every small file of the out_dirs and of the teachers'
cache folders (``done.json``, ``metrics.jsonl``, ``run.json``, ``config.yaml``, ``teacher.json``,
...), the teachers' weights, then, while they fit into ``--parts`` files of ``--part-mib``, the
checkpoints of unfinished training (the teachers' first, then the runs with the most epochs done).
Finished runs' weights (``model/``) and lock files are left out: neither resuming nor
``inhernet report --no-latency`` reads them. A run whose checkpoint did not fit starts over.
``unpack`` extracts such parts, never over a file that is already there (a warm machine's own
files are newer).
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import tarfile
from pathlib import Path

import yaml

#: the two methods of the smoke test (each config has both): one distils into a student, one inherits
SMOKE_METHODS = ("student_kd", "h2_perturbed")
STATE_NAME = "state.tgz"


def prepare(configs: list[str], dest: Path, *, smoke: bool, root: str | None, methods: list[str],
            smoke_precision: str | None = None, smoke_epochs: int = 1) -> list[Path]:
    """Write the configs to run into ``dest``; see the module docstring."""
    dest.mkdir(parents=True, exist_ok=True)
    out = []
    for path in configs:
        raw = yaml.safe_load(Path(path).read_text())
        if root:
            raw["data"]["root"] = root
        if smoke:
            keep = [m for m in raw["methods"] if m["name"] in methods]
            if not keep:
                raise SystemExit(f"{path}: none of the smoke methods {methods} is in the config")
            raw.update(name=raw["name"] + "_smoke", out_dir=f"runs/gpu_smoke/{raw['name']}",
                       cache_dir="runs/gpu_smoke/cache", seeds=[0], methods=keep)
            raw["data"].update(subset=200, test_subset=300, val_fraction=0.005)  # 300 of the 60,000
            raw["teacher"]["epochs"] = smoke_epochs
            raw["schedule"]["epochs"] = smoke_epochs
            raw["trainer"].update(accelerator="cpu", threads=1, precision=smoke_precision)
        target = dest / Path(path).name
        target.write_text(yaml.safe_dump(raw, sort_keys=False))
        out.append(target)
    return out


def _load(path: str):
    from inhernet.compare import load_config
    from inhernet.compare.runner import plan_runs
    from inhernet.compare.teacher import teacher_key

    cfg = load_config(path)
    key = teacher_key(cfg)
    teacher_dir = Path(cfg.cache_dir) / "teachers" / f"{cfg.teacher.arch}-{key}"
    return cfg, teacher_dir, plan_runs(cfg, key)


def _epochs_done(run_dir: Path) -> int:
    from inhernet.train import read_metrics

    return len(read_metrics(run_dir))


def progress(configs: list[str]) -> str:
    """One paragraph per config: the teacher's state and how many runs are done / under way."""
    lines = []
    for path in configs:
        cfg, tdir, runs = _load(path)
        if (tdir / "done.json").is_file():
            acc = json.loads((tdir / "done.json").read_text()).get("test_acc")
            teacher = f"done (test acc {100 * acc:.2f}%)" if acc is not None else "done"
        elif tdir.exists():
            teacher = f"{_epochs_done(tdir)} of {cfg.teacher.epochs} epochs"
        else:
            teacher = "not started"
        done = [r for r in runs if (r["dir"] / "done.json").is_file()]
        failed = [r for r in runs if (r["dir"] / "failed.json").is_file()]
        partial = [(r, _epochs_done(r["dir"])) for r in runs if r not in done and r not in failed
                   and r["dir"].exists()]
        lines.append(f"{cfg.name}: teacher {cfg.teacher.arch} {teacher}; runs done {len(done)} of {len(runs)}"
                     f"{f', failed {len(failed)}' if failed else ''}, under way {len(partial)}")
        for r in done:
            res = json.loads((r["dir"] / "done.json").read_text())
            lines.append(f"  done     {r['method'].name} seed {r['seed']}: test acc "
                         f"{100 * res['final'].get('test/acc', float('nan')):.2f}% ({res.get('epochs')} epochs)")
        for r, n in partial:
            lines.append(f"  partial  {r['method'].name} seed {r['seed']}: {n} of {cfg.schedule.epochs} epochs")
    return "\n".join(lines)


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file()) if folder.is_dir() else []


def _select(configs: list[str], budget: int) -> tuple[list[Path], list[str]]:
    """The files to pack, in priority order, and what was left out for want of room."""
    must: list[Path] = []
    ckpts: list[tuple[int, int, Path]] = []  # (priority, -epochs, file)
    for path in configs:
        cfg, tdir, runs = _load(path)
        out = Path(cfg.out_dir)
        for f in _files(tdir):
            if "checkpoints" in f.relative_to(tdir).parts:
                if not (tdir / "done.json").is_file():
                    ckpts.append((0, -_epochs_done(tdir), f))
            elif f.suffix != ".lock":
                must.append(f)
        in_runs = {r["dir"].resolve(): r for r in runs}
        for f in _files(out):
            rel = f.relative_to(out).parts
            if rel[0] == "locks":
                continue
            run_dir = out.joinpath(*rel[:3]).resolve() if len(rel) > 3 else None
            if run_dir in in_runs and rel[3] == "model":
                continue  # a finished run's weights: not needed to resume or report
            if run_dir in in_runs and rel[3] == "checkpoints":
                if not (run_dir / "done.json").is_file():
                    ckpts.append((1, -_epochs_done(run_dir), f))
                continue
            must.append(f)
    chosen, used, left = list(must), sum(f.stat().st_size for f in must), []
    for _, _, f in sorted(ckpts):
        size = f.stat().st_size
        if used + size <= budget:
            chosen.append(f)
            used += size
        else:
            left.append(str(f))
    if used > budget:
        left.insert(0, f"(even without checkpoints the state is {used / 2**20:.1f} MiB, over the budget)")
    return chosen, left


def pack(configs: list[str], dest: Path, *, parts: int, part_mib: float) -> list[Path]:
    """Pack the state (module docstring) into ``dest/state.tgz.NN`` parts of at most ``part_mib`` MiB."""
    part_bytes = int(part_mib * 2**20)
    chosen, left = _select(configs, budget=int(parts * part_bytes * 0.97))  # gzip gains little on weights
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz", compresslevel=6) as tar:
        for f in chosen:
            tar.add(f, arcname=str(f), recursive=False)
    blob = buf.getvalue()
    chunks = [blob[i:i + part_bytes] for i in range(0, len(blob), part_bytes)]
    if len(chunks) > parts:
        print(f"state: {len(blob) / 2**20:.1f} MiB packed does not fit into {parts} parts; not written",
              file=sys.stderr)
        return []
    dest.mkdir(parents=True, exist_ok=True)
    written = []
    for i, chunk in enumerate(chunks):
        p = dest / f"{STATE_NAME}.{i:02d}"
        p.write_bytes(chunk)
        written.append(p)
    print(f"state: {len(chosen)} files, {len(blob) / 2**20:.1f} MiB in {len(written)} part(s) under {dest}")
    for f in left:
        print(f"state: left out (no room; that run starts over on a fresh machine): {f}")
    return written


def unpack(folder: Path) -> int:
    """Extract ``folder/state.tgz.NN`` into the working directory; existing files are kept."""
    parts = sorted(folder.glob(f"{STATE_NAME}.[0-9][0-9]"))
    if not parts:
        print(f"state: no {STATE_NAME}.NN in {folder}; starting from what is here")
        return 0
    blob = b"".join(p.read_bytes() for p in parts)
    n = 0
    with tarfile.open(fileobj=io.BytesIO(blob), mode="r:gz") as tar:
        for member in tar.getmembers():
            target = Path(member.name)
            if target.is_absolute() or ".." in target.parts or not member.isfile():
                raise SystemExit(f"state: refusing the member {member.name!r}")
            if target.exists():
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            with tar.extractfile(member) as src:
                target.write_bytes(src.read())
            n += 1
    print(f"state: {n} files restored from {len(parts)} part(s) in {folder}")
    return n


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("prepare")
    s.add_argument("configs", nargs="+")
    s.add_argument("--dest", type=Path, required=True)
    s.add_argument("--smoke", action="store_true")
    s.add_argument("--root", default=None)
    s.add_argument("--methods", default=",".join(SMOKE_METHODS))
    s.add_argument("--smoke-precision", default=None, help="the smoke test's precision (default: 32-bit)")
    s.add_argument("--smoke-epochs", type=int, default=1, help="the smoke test's epochs (teacher and methods)")
    s = sub.add_parser("progress")
    s.add_argument("configs", nargs="+")
    s = sub.add_parser("pack")
    s.add_argument("configs", nargs="+")
    s.add_argument("--dest", type=Path, required=True)
    s.add_argument("--parts", type=int, default=2)
    s.add_argument("--part-mib", type=float, default=14.0)
    s = sub.add_parser("unpack")
    s.add_argument("folder", type=Path)
    a = p.parse_args(argv)
    if a.cmd == "prepare":
        for path in prepare(a.configs, a.dest, smoke=a.smoke, root=a.root, methods=a.methods.split(","),
                            smoke_precision=a.smoke_precision, smoke_epochs=a.smoke_epochs):
            print(path)
    elif a.cmd == "progress":
        print(progress(a.configs))
    elif a.cmd == "pack":
        pack(a.configs, a.dest, parts=a.parts, part_mib=a.part_mib)
    else:
        unpack(a.folder)
    return 0


if __name__ == "__main__":
    sys.exit(main())
