"""Save and load inherited models: ``model.safetensors`` + ``inhernet_config.json``, no pickle.

The JSON holds the format version, the inheritance plan (global config and one record per
Linear/Conv2d of the teacher: rank, heads, or why it stayed dense) and the SHA-256 of the weights
file. ``load`` rebuilds the inherited structure on a freshly constructed base model from the plan —
no SVD — then loads the weights strictly. A base model of another architecture, a missing or
damaged file, or a weights file that does not fit the structure is an error that says what is
wrong; a model is never returned half-loaded.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from safetensors import SafetensorError
from safetensors.torch import load_model, save_model
from torch import nn

from . import __name__ as _pkg
from .config import InheritConfig
from .inherit import PLAN_ATTR, InheritPlan, build_layer, set_submodule
from .layers import INHER_LAYERS
from .report import count_parameters, get_plan

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "inhernet_config.json"
FORMAT_VERSION = 1


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


def save(model: nn.Module, folder: str | os.PathLike, *, extra: dict[str, Any] | None = None) -> Path:
    """Write ``model`` (returned by ``inherit`` or ``load``) to ``folder``.

    ``extra`` is stored under ``"extra"`` in the JSON (e.g. the base architecture's name and
    arguments, so a CLI can rebuild it). Returns the folder's path.
    """
    plan = get_plan(model)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    weights = folder / WEIGHTS_NAME
    _write_atomically(weights, lambda p: save_model(model, str(p), metadata={"format": "inhernet"}))
    meta = {
        "format": "inhernet",
        "format_version": FORMAT_VERSION,
        "inhernet_version": _version(),
        "base_model_class": f"{type(model).__module__}.{type(model).__qualname__}",
        "plan": plan.to_dict(),
        "weights": {"file": WEIGHTS_NAME, "bytes": weights.stat().st_size, "sha256": _sha256(weights)},
        "extra": extra or {},
    }
    _write_atomically(folder / CONFIG_NAME, lambda p: p.write_text(json.dumps(meta, indent=2)))
    return folder


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


def load(folder: str | os.PathLike, base_model: nn.Module) -> nn.Module:
    """Load a saved InherNet into ``base_model``, a freshly constructed instance of the teacher's
    architecture (its weights are overwritten; pretrained weights are not needed). Returns it."""
    folder = Path(folder)
    meta = read_config(folder)
    weights = folder / meta["weights"]["file"]
    _check_weights_file(weights, meta["weights"])
    if any(isinstance(m, INHER_LAYERS) for m in base_model.modules()):
        raise InherNetLoadError("base_model already contains inherited layers; pass a freshly constructed teacher architecture.")
    plan = InheritPlan.from_dict(meta["plan"])
    _check_architecture(base_model, plan, meta)
    cfg = InheritConfig.from_dict(plan.config)
    for record in plan.inherited:
        module = base_model.get_submodule(record.name)
        set_submodule(base_model, record.name, build_layer(module, record.kind, record.rank, cfg))
    try:
        load_model(base_model, str(weights), strict=True, device=_device_of(base_model))
    except (RuntimeError, SafetensorError) as err:
        raise InherNetLoadError(
            f"the weights in {weights} do not fit the rebuilt model: {err}. The base model is probably "
            "not the architecture this InherNet was made from."
        ) from err
    setattr(base_model, PLAN_ATTR, plan)
    return base_model


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
