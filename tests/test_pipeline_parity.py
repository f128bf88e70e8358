"""Parity of the two pipelines: ``inhernet.inherit`` (teacher in memory) and
``inhernet.hf.inherit_checkpoint`` (teacher streamed tensor by tensor from a safetensors folder)
give the same InherNet, bit for bit — weights, plan and logits — for every init (svd, random,
whitened) over a matrix of toy models × configs; sequential calibration (block by block, on the
outputs of the already-inherited blocks) through the streaming path equals sequential calibration
in memory; and a streaming run that fails leaves its ``dst`` as it was.

Toy teachers (tests/toy.py): a plain MLP, a small CNN with a grouped conv (stays dense) and a
BatchNorm, a plain module with one block list (``BlockNet``), and tiny Llama, GPT-2 (Conv1D, tied
LM head), BERT (sequence classifier, padded attention mask) and T5 (encoder-decoder, tied LM head),
all built from configs (nothing downloaded).

Streaming a plain ``nn.Module``: ``src`` holds a ``model.safetensors`` written by
``safetensors.torch.save_model`` and ``model=`` is the architecture built on the meta device; the
result is loaded with ``inhernet.load(dst, base_model=<fresh architecture>)``. A Hugging Face
teacher is streamed from its ``save_pretrained`` folder and loaded with ``inhernet.load(dst)``.

Matrix: init="svd" over every model × every config; "random" over every model × two configs;
"whitened" (2 calibration batches) over every model but T5 × two configs with the default
``calibration_mode="auto"`` (sequential for the models with one block list: BlockNet, Llama, GPT-2,
BERT; one pass for the MLP and the CNN), plus explicit ``"sequential"`` / ``"one_pass"`` cells.
T5 has two block lists (encoder.block, decoder.block), so it does not fit the "one block list" rule
of ``auto``: it runs svd and random (where the calibration mode plays no part) and whitened with an
explicit ``calibration_mode="one_pass"`` only.
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_model
from torch.testing import assert_close

import inhernet
from inhernet.errors import ConfigError, InherNetError
from toy import (
    blocknet_arch,
    cnn_arch,
    hf_batch,
    mlp_arch,
    toy_blocknet,
    toy_cnn,
    toy_hf,
    toy_mlp,
)

# ------------------------------------------------------------------------------------------ models
#: plain nn.Module teachers: (teacher factory, architecture factory, input shape)
PLAIN = {
    "mlp": (toy_mlp, mlp_arch, (8, 16)),
    "cnn": (toy_cnn, cnn_arch, (4, 3, 8, 8)),
    "blocks": (toy_blocknet, blocknet_arch, (8, 16)),
}
HF = ("llama", "gpt2", "bert", "t5")
MODELS = (*PLAIN, *HF)
#: the block list of each model with one (what calibration_mode="auto" makes sequential)
BLOCK_PREFIX = {"blocks": "blocks", "llama": "model.layers", "gpt2": "transformer.h", "bert": "bert.encoder.layer"}

# ----------------------------------------------------------------------------------------- configs
POLICIES = {
    "rank4-h2": dict(rank=4, heads=2),
    # min_saving=None: at half rank with 3 heads a 32×32 layer is bigger than dense, and the default
    # min_saving rule would keep every layer of these toys dense (nothing left to compare)
    "frac0.5-h3-perturbed": dict(rank_fraction=0.5, heads=3, head_init="perturbed", min_saving=None),
    "budget0.6-spectral-h2": dict(budget=0.6, budget_mode="spectral", heads=2),
    "energy0.9-h1": dict(energy=0.9, heads=1),
}


def _cases():
    cases = []
    for model in MODELS:  # svd: the full matrix
        for pid in POLICIES:
            cases.append(pytest.param(model, "svd", pid, None, id=f"svd-{model}-{pid}"))
    for model in MODELS:  # random: two configs
        for pid in ("rank4-h2", "frac0.5-h3-perturbed"):
            cases.append(pytest.param(model, "random", pid, None, id=f"random-{model}-{pid}"))
    for model in (*PLAIN, "llama", "gpt2", "bert"):  # whitened, calibration_mode="auto"
        for pid in ("rank4-h2", "budget0.6-spectral-h2"):
            cases.append(pytest.param(model, "whitened", pid, None, id=f"whitened-{model}-{pid}"))
    # T5 has two block lists: whitened only with an explicit one-pass calibration
    cases.append(pytest.param("t5", "whitened", "rank4-h2", "one_pass", id="whitened-t5-rank4-h2-one_pass"))
    # explicit calibration modes through both paths
    for model in ("blocks", "llama"):
        for mode in ("sequential", "one_pass"):
            cases.append(pytest.param(model, "whitened", "rank4-h2", mode, id=f"whitened-{model}-rank4-h2-{mode}"))
    return cases


# ---------------------------------------------------------------------------------------- helpers
def _teacher(model: str) -> torch.nn.Module:
    return PLAIN[model][0]() if model in PLAIN else toy_hf(model)


def _input(model: str, seed: int):
    """A fixed input: a tensor for a plain module, a keyword batch for a Hugging Face model."""
    if model in PLAIN:
        return torch.randn(PLAIN[model][2], generator=torch.Generator().manual_seed(seed))
    return hf_batch(model, seed=seed)


def _calibration(model: str) -> list:
    return [_input(model, seed=11), _input(model, seed=12)]


def _forward(model_name: str, model: torch.nn.Module, x) -> torch.Tensor:
    with torch.no_grad():
        return model(x) if model_name in PLAIN else model(**x).logits


def _config(init: str, pid: str, mode: str | None) -> inhernet.InheritConfig:
    kw = dict(POLICIES[pid], init=init)
    if mode is not None:  # only named when the case is about it (the default is "auto")
        kw["calibration_mode"] = mode
    return inhernet.InheritConfig(**kw)


def _save_teacher(model: str, teacher: torch.nn.Module, folder: Path) -> Path:
    folder.mkdir(parents=True)
    if model in PLAIN:
        save_model(teacher, str(folder / "model.safetensors"))  # handles tied weights (none here)
    else:
        teacher.save_pretrained(str(folder), safe_serialization=True)
    return folder


def _meta_architecture(model: str) -> torch.nn.Module:
    with torch.device("meta"):
        return PLAIN[model][1]()


def _stream(model: str, src: Path, dst: Path, cfg, calibration=None, **kw) -> Path:
    """The streaming front door: ``inhernet.inherit_checkpoint(src, dst, model=architecture)`` for a
    plain module, ``inhernet.hf.inherit_checkpoint`` (architecture from config.json) for a Hugging
    Face folder; ``calibration=`` only for a whitened init."""
    import inhernet.hf

    if calibration is not None:
        kw["calibration"] = calibration
    if model in PLAIN:
        return inhernet.inherit_checkpoint(src, dst, cfg, model=_meta_architecture(model), progress=False, **kw)
    return inhernet.hf.inherit_checkpoint(src, dst, cfg, progress=False, **kw)


def _load(model: str, dst: Path) -> torch.nn.Module:
    if model in PLAIN:
        torch.manual_seed(123)  # the fresh architecture's values must not matter
        return inhernet.load(dst, base_model=PLAIN[model][1]()).eval()
    return inhernet.load(dst).eval()


def _in_memory(teacher, cfg, calibration):
    kw = {} if calibration is None else {"calibration": calibration}
    return inhernet.inherit(teacher, cfg, progress=False, **kw)


def _state_mismatches(a: dict, b: dict) -> list[str]:
    """Keys of two state dicts whose tensors are not bit-identical (value, dtype or shape)."""
    bad = []
    for key in a:
        x, y = a[key], b[key]
        if x.dtype != y.dtype or x.shape != y.shape or not torch.equal(x, y):
            bad.append(key)
    return bad


def _layers(model) -> list[dict]:
    return model.inhernet_plan.to_dict()["layers"]


def _folder_snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


# ------------------------------------------------------------------------------ streaming ≡ memory
@pytest.mark.parametrize("model_name, init, pid, mode", _cases())
def test_streaming_equals_in_memory(tmp_path, model_name, init, pid, mode):
    teacher = _teacher(model_name)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    cfg = _config(init, pid, mode)
    calibration = _calibration(model_name) if init == "whitened" else None
    src = _save_teacher(model_name, teacher, tmp_path / "src")

    mem = _in_memory(teacher, cfg, calibration).eval()
    assert not _state_mismatches(before, teacher.state_dict()), "inherit() changed the teacher"
    dst = _stream(model_name, src, tmp_path / "dst", cfg, calibration)
    streamed = _load(model_name, dst)

    # weights: the same keys, every tensor bit-identical
    a, b = mem.state_dict(), streamed.state_dict()
    assert sorted(a) == sorted(b)
    bad = _state_mismatches(a, b)
    assert not bad, f"{len(bad)}/{len(a)} tensors differ between in-memory and streaming, e.g. {bad[:5]}"
    # the plan: the same record for every layer, and something was inherited
    assert _layers(streamed) == _layers(mem)
    assert any(r["rank"] is not None for r in _layers(mem)), "the case inherits no layer: it tests nothing"
    if model_name == "cnn":  # the grouped conv stays dense, and the plan says why
        grouped = next(r for r in _layers(mem) if r["name"] == "3")
        assert grouped["rank"] is None and "group" in grouped["skipped"]
    # the function: identical logits on a fixed input
    x = _input(model_name, seed=99)
    assert_close(_forward(model_name, streamed, x), _forward(model_name, mem, x), rtol=0, atol=0)
    # and the whole plan (config as recorded, teacher's count, budget)
    assert streamed.inhernet_plan.to_dict() == mem.inhernet_plan.to_dict()


# --------------------------------------------------------------------- calibration modes, in memory
def _whitened(mode: str | None) -> inhernet.InheritConfig:
    return inhernet.InheritConfig(rank=4, heads=2, init="whitened", **({} if mode is None else {"calibration_mode": mode}))


@pytest.mark.parametrize("model_name", ["blocks", "llama"])
def test_sequential_differs_from_one_pass_after_the_first_block(model_name):
    """Sequential statistics of block 1 are measured on the outputs of the inherited block 0, so
    they differ from the teacher's (one pass); block 0 sees the same inputs either way."""
    teacher, calibration = _teacher(model_name), _calibration(model_name)
    seq = _in_memory(teacher, _whitened("sequential"), calibration).state_dict()
    one = _in_memory(teacher, _whitened("one_pass"), calibration).state_dict()
    prefix = BLOCK_PREFIX[model_name]
    block0 = [k for k in seq if k.startswith(f"{prefix}.0.")]
    block1 = [k for k in seq if k.startswith(f"{prefix}.1.")]
    outside = [k for k in seq if not k.startswith(f"{prefix}.")]
    assert block0 and block1 and sorted(seq) == sorted(one)
    assert not _state_mismatches({k: seq[k] for k in block0}, one), "block 0 must not depend on the mode"
    assert not _state_mismatches({k: seq[k] for k in outside}, one), "layers outside the blocks stay as they are"
    assert _state_mismatches({k: seq[k] for k in block1}, one), \
        "block 1 is identical in both modes: sequential calibration does not see the inherited block 0"


@pytest.mark.parametrize("model_name, resolved", [
    ("blocks", "sequential"), ("llama", "sequential"), ("gpt2", "sequential"), ("bert", "sequential"),
    ("mlp", "one_pass"), ("cnn", "one_pass"),
])
def test_auto_calibration_mode(model_name, resolved):
    """``calibration_mode="auto"`` is sequential for a model with one block list, one pass otherwise."""
    teacher, calibration = _teacher(model_name), _calibration(model_name)
    auto = _in_memory(teacher, _whitened(None), calibration).state_dict()
    explicit = _in_memory(teacher, _whitened(resolved), calibration).state_dict()
    bad = _state_mismatches(auto, explicit)
    assert not bad, f"auto differs from {resolved!r} on {bad[:5]}"


@pytest.mark.parametrize("model_name", ["mlp", "cnn"])
def test_sequential_needs_a_block_list(tmp_path, model_name):
    teacher, calibration = _teacher(model_name), _calibration(model_name)
    with pytest.raises(ConfigError):
        _in_memory(teacher, _whitened("sequential"), calibration)
    src = _save_teacher(model_name, teacher, tmp_path / "src")
    with pytest.raises(ConfigError):
        _stream(model_name, src, tmp_path / "dst", _whitened("sequential"), calibration)
    assert not (tmp_path / "dst").exists() or not any((tmp_path / "dst").iterdir())


# ----------------------------------------------------------------------- streaming failure: no trace
#: the last eligible layer of each teacher (the one given a NaN, so the run fails late)
LAST_ELIGIBLE = {"llama": "model.layers.1.mlp.down_proj", "mlp": "4"}


@pytest.mark.parametrize("model_name", ["llama", "mlp"])
def test_failed_streaming_leaves_dst_as_it_was(tmp_path, model_name):
    """A run that fails late (a NaN in the last eligible layer's weight, after earlier output shards
    were written) must leave ``dst`` exactly as it was: no new files (no ``.tmp`` shards), and the
    model saved there before (replaced only on success, ``overwrite=True``) intact and loadable."""
    cfg = inhernet.InheritConfig(rank=4, heads=2)
    teacher = _teacher(model_name)
    dst = tmp_path / "dst"
    saved = inhernet.save(_in_memory(teacher, cfg, None), dst)
    (dst / "notes.txt").write_text("not inhernet's")
    snapshot = _folder_snapshot(dst)
    saved_state = {k: v.clone() for k, v in _load(model_name, dst).state_dict().items()}

    with torch.no_grad():
        teacher.get_submodule(LAST_ELIGIBLE[model_name]).weight[-1, -1] = math.nan
    src = _save_teacher(model_name, teacher, tmp_path / "bad_src")
    with pytest.raises((ValueError, InherNetError), match=r"(?i)nan|non-finite"):
        # small shards: several output shards are written before the bad layer is reached
        _stream(model_name, src, dst, cfg, max_shard_size="2KB", overwrite=True)

    after = _folder_snapshot(dst)
    assert sorted(set(after) - set(snapshot)) == [], "the failed run left new files in dst"
    assert not list(dst.rglob("*.tmp")), "the failed run left temporary shards in dst"
    assert after == snapshot, "the failed run changed files of the model saved in dst"
    assert saved == dst
    assert not _state_mismatches(saved_state, _load(model_name, dst).state_dict())
