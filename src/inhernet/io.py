"""Save and load inherited models: ``model.safetensors`` + ``inhernet_config.json``, no pickle.

The JSON holds the format version, the inheritance plan (global config and one record per
Linear/Conv2d/Conv1D of the teacher: rank, heads, or why it stayed dense) and the size and SHA-256
of each weights file. ``load`` rebuilds the inherited structure on a freshly constructed base model
from the plan — no SVD — then loads the weights strictly. A base model of another architecture, a
missing or damaged file, or a weights file that does not fit the structure is an error that says
what is wrong; a model is never returned half-loaded.

Hugging Face models (``transformers.PreTrainedModel``): ``save`` also writes the base model's
``config.json`` (with ``architectures`` set to the model's class), its ``generation_config.json``
and, when given, the tokenizer's files, so ``load(folder)`` needs no base model: it rebuilds the
architecture from the config with its parameters on the meta device (no random init, no teacher
weights, no SVD) and assigns the saved tensors (:mod:`inhernet.hf.io`).

Weights are one ``model.safetensors`` (format version 1), or several shards listed in the JSON
(format version 2, written by :func:`inhernet.hf.inherit_checkpoint` for big models). Tied
parameters are stored once and tied again on load.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from . import __name__ as _pkg
from .config import InheritConfig
from .inherit import PLAN_ATTR, InheritPlan, build_layer, set_submodule
from .layers import INHER_LAYERS
from .report import count_parameters, get_plan

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "inhernet_config.json"
#: the newest format this version reads; a folder records the lowest version that can read it
#: (1: one weights file; 2: sharded weights, ``"weights": {"files": [...]}``)
FORMAT_VERSION = 2


class InherNetLoadError(ValueError):
    """A saved InherNet cannot be loaded as asked; the message names the cause and the fix."""


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _write_atomically(path: Path, write) -> None:
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    os.replace(tmp, path)


def save(model: nn.Module, folder: str | os.PathLike, *, extra: dict[str, Any] | None = None,
         tokenizer: Any = None) -> Path:
    """Write ``model`` (returned by ``inherit`` or ``load``) to ``folder``.

    ``extra`` is stored under ``"extra"`` in the JSON (e.g. the base architecture's name and
    arguments, so a CLI can rebuild it). For a Hugging Face model the folder also gets
    ``config.json`` (+ ``generation_config.json``), and ``tokenizer`` (a tokenizer or processor,
    anything with ``save_pretrained``) writes its files there too; ``load(folder)`` then needs no
    base model. Returns the folder's path.
    """
    plan = get_plan(model)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    hf = None
    from .hf import is_hf_model

    if is_hf_model(model):
        from .hf.io import save_hf_files

        hf = save_hf_files(model, folder, tokenizer)
    elif tokenizer is not None:
        tokenizer.save_pretrained(str(folder))
    weights = folder / WEIGHTS_NAME
    _write_atomically(weights, lambda p: save_file(_state_once(model), str(p), metadata={"format": "inhernet"}))
    write_meta(folder, plan, [WEIGHTS_NAME], base_model_class=f"{type(model).__module__}.{type(model).__qualname__}",
               extra=extra, hf=hf)
    return folder


def _state_once(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict with each tied tensor once, under its first name in state-dict order (for a
    Hugging Face model the tie's source, e.g. the input embeddings, as ``save_pretrained`` keeps)."""
    shared = _shared_names(model)
    out: dict[str, torch.Tensor] = {}
    for key, tensor in model.state_dict().items():
        if not any(other in out for other in shared.get(key, [])):
            out[key] = tensor.detach().contiguous()
    return out


def _file_info(folder: Path, name: str) -> dict[str, Any]:
    path = folder / name
    return {"file": name, "bytes": path.stat().st_size, "sha256": _sha256(path)}


def write_meta(folder: Path, plan: InheritPlan, weight_files: list[str], *, base_model_class: str,
               extra: dict[str, Any] | None = None, hf: dict[str, Any] | None = None) -> None:
    """Write ``inhernet_config.json`` for weights already in ``folder`` (one file, or shards)."""
    if len(weight_files) == 1:
        version, weights = 1, _file_info(folder, weight_files[0])
    else:
        version, weights = 2, {"files": [_file_info(folder, f) for f in weight_files]}
    meta = {
        "format": "inhernet",
        "format_version": version,
        "inhernet_version": _version(),
        "base_model_class": base_model_class,
        "plan": plan.to_dict(),
        "weights": weights,
        "extra": extra or {},
    }
    if hf is not None:
        meta["hf"] = hf
    _write_atomically(folder / CONFIG_NAME, lambda p: p.write_text(json.dumps(meta, indent=2)))


def weight_files(meta: dict[str, Any]) -> list[dict[str, Any]]:
    """``[{"file", "bytes", "sha256"}, ...]`` of a saved folder, one entry per weights file."""
    w = meta["weights"]
    return list(w["files"]) if "files" in w else [w]


def read_config(folder: str | os.PathLike) -> dict[str, Any]:
    """The saved JSON of an InherNet folder, checked for format and version."""
    path = Path(folder) / CONFIG_NAME
    if not path.is_file():
        raise InherNetLoadError(f"{path} not found: {folder} is not a folder written by inhernet.save.")
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise InherNetLoadError(f"{path} is not valid JSON ({err}); the file is damaged, save the model again.") from err
    if meta.get("format") != "inhernet":
        raise InherNetLoadError(f"{path} is not an InherNet config (format={meta.get('format')!r}).")
    if meta.get("format_version", 0) > FORMAT_VERSION:
        raise InherNetLoadError(
            f"{path} has format version {meta['format_version']}, newer than this inhernet "
            f"({_version()}, version {FORMAT_VERSION}); upgrade inhernet."
        )
    return meta


def load(folder: str | os.PathLike, base_model: nn.Module | None = None, *,
         device: str | torch.device | None = None) -> nn.Module:
    """Load a saved InherNet.

    Args:
        folder: written by :func:`save` (or :func:`inhernet.hf.inherit_checkpoint`).
        base_model: a freshly constructed instance of the teacher's architecture (its weights are
            overwritten; pretrained weights are not needed). Leave it out for a folder saved from a
            Hugging Face model: the architecture is then rebuilt from the folder's ``config.json``
            (parameters on the meta device, nothing initialised) and returned in eval mode, with its
            generation config when the folder has one.
        device: where the weights go (default: ``base_model``'s device, or the CPU).

    Returns the loaded model (``base_model`` itself when given).
    """
    folder = Path(folder)
    meta = read_config(folder)
    files = weight_files(meta)
    for info in files:
        _check_weights_file(folder / info["file"], info)
    plan = InheritPlan.from_dict(meta["plan"])
    rebuilt = base_model is None
    if rebuilt:
        if "hf" not in meta:
            raise InherNetLoadError(
                f"{folder} was saved from a plain nn.Module (no config.json to rebuild it from); pass "
                "base_model=<a freshly constructed teacher architecture>."
            )
        from .hf.io import build_empty_model

        base_model = build_empty_model(folder, meta["hf"])
    elif any(isinstance(m, INHER_LAYERS) for m in base_model.modules()):
        raise InherNetLoadError("base_model already contains inherited layers; pass a freshly constructed teacher architecture.")
    _check_architecture(base_model, plan, meta)
    cfg = InheritConfig.from_dict(plan.config)
    for record in plan.inherited:
        module = base_model.get_submodule(record.name)
        set_submodule(base_model, record.name, build_layer(module, record.kind, record.rank, cfg))
    if device is None:
        device = "cpu" if rebuilt else _device_of(base_model)
    _load_weights(base_model, [folder / info["file"] for info in files], str(device), assign=rebuilt)
    if rebuilt:
        base_model.to(device).eval()
    setattr(base_model, PLAN_ATTR, plan)
    return base_model


def _shared_names(model: nn.Module) -> dict[str, list[str]]:
    """``name → every name of the same tensor`` for tensors registered under several names (tied)."""
    by_id: dict[int, list[str]] = {}
    for name, t in [*model.named_parameters(remove_duplicate=False), *model.named_buffers(remove_duplicate=False)]:
        by_id.setdefault(id(t), []).append(name)
    return {n: names for names in by_id.values() if len(names) > 1 for n in names}


def _load_weights(model: nn.Module, paths: list[Path], device: str, *, assign: bool) -> None:
    """Load every tensor of ``paths`` into ``model``, strictly: each state-dict entry must be in the
    files (a tied tensor under any one of its names) and every tensor in the files must fit.
    ``assign=True`` replaces the model's tensors (a meta-device skeleton) instead of copying into them,
    then ties shared tensors again."""
    where = ", ".join(str(p) for p in paths) if len(paths) < 4 else f"{paths[0].parent} ({len(paths)} files)"
    try:
        state: dict[str, torch.Tensor] = {}
        for path in paths:
            state.update(load_file(str(path), device=device))
    except (SafetensorError, OSError) as err:
        raise InherNetLoadError(f"cannot read the weights in {where}: {err}") from err
    shared = _shared_names(model)
    expected = model.state_dict(keep_vars=True).keys()
    missing = [k for k in expected if k not in state and not any(n in state for n in shared.get(k, []))]
    unexpected = [k for k in state if k not in expected]
    problems = []
    if missing:
        problems.append(f"missing {len(missing)} tensor(s), e.g. {', '.join(missing[:3])}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected tensor(s), e.g. {', '.join(unexpected[:3])}")
    if not problems:
        try:
            model.load_state_dict(state, strict=False, assign=assign)
        except RuntimeError as err:
            problems.append(str(err))
    if problems:
        raise InherNetLoadError(
            f"the weights in {where} do not fit the rebuilt model: {'; '.join(problems)}. The base model "
            "is probably not the architecture this InherNet was made from."
        )
    if assign:
        _retie(model, shared, state)
        left = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
        if left:
            raise InherNetLoadError(f"the weights in {where} leave {len(left)} tensor(s) unset, e.g. {', '.join(left[:3])}.")


def _retie(model: nn.Module, shared: dict[str, list[str]], state: dict[str, torch.Tensor]) -> None:
    """After an ``assign`` load, point every name of a tied group at the one tensor that was loaded."""
    done = set()
    for name, names in shared.items():
        if name in done:
            continue
        done.update(names)
        source = next((n for n in names if n in state), None)
        if source is None:  # e.g. a non-persistent buffer registered twice: nothing was loaded
            continue
        owner, _, leaf = source.rpartition(".")
        tensor = getattr(model.get_submodule(owner), leaf)
        for other in names:
            if other != source:
                owner, _, leaf = other.rpartition(".")
                setattr(model.get_submodule(owner), leaf, tensor)


def _check_weights_file(path: Path, info: dict[str, Any]) -> None:
    if not path.is_file():
        raise InherNetLoadError(f"{path} not found; the saved folder is incomplete, save the model again.")
    size = path.stat().st_size
    if size != info["bytes"]:
        raise InherNetLoadError(f"{path} is truncated or damaged: {size:,} bytes, {info['bytes']:,} expected.")
    if _sha256(path) != info["sha256"]:
        raise InherNetLoadError(f"{path} is corrupted: its SHA-256 does not match the one recorded at save time.")


def _check_architecture(base: nn.Module, plan: InheritPlan, meta: dict[str, Any]) -> None:
    """The base model must be the teacher's architecture: same parameter count, and every recorded
    layer present with the recorded weight shape."""
    saved_from = meta.get("base_model_class", "?")
    problems = []
    n = count_parameters(base)
    if n != plan.teacher_params:
        problems.append(f"it has {n:,} parameters, the teacher had {plan.teacher_params:,}")
    for record in plan.layers:
        try:
            module = base.get_submodule(record.name)
        except AttributeError:
            problems.append(f"it has no layer {record.name!r}")
            continue
        shape = list(getattr(getattr(module, "weight", None), "shape", []))
        if shape != record.shape:
            problems.append(f"layer {record.name!r} has weight shape {shape}, expected {record.shape}")
    if problems:
        shown = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
        raise InherNetLoadError(
            f"base_model ({type(base).__name__}) is not the architecture this InherNet was inherited from "
            f"({saved_from}): {shown}. Construct the teacher's architecture (same model name and "
            "num_classes / in_channels) and pass that."
        )


def _device_of(model: nn.Module) -> str:
    p = next(iter(model.parameters()), None)
    return "cpu" if p is None else str(p.device)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(_pkg)
    except PackageNotFoundError:
        return "unknown"
