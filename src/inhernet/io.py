"""Save and load inherited models: ``model.safetensors`` + ``inhernet_config.json``, no pickle.

The JSON holds the format version, the inheritance plan (global config and one record per
Linear/Conv2d/Conv1D of the teacher: rank, heads, or why it stayed dense) and the size and SHA-256
of each weights file. ``load`` rebuilds the inherited structure on a freshly constructed base model
from the plan — no SVD — then loads the weights strictly. A base model of another architecture, a
missing or damaged file, or a weights file that does not fit the structure is an error that says
what is wrong; a model is never returned half-loaded. The JSON is checked key by key
(:func:`check_meta`) before anything reads it, so a damaged file is an :class:`InherNetLoadError`
naming the key, never a KeyError or TypeError.

``save`` refuses a folder that already holds a model (:class:`ModelExistsError`) unless
``overwrite=True``; it writes only the model's own files, and leaves anything else in the folder.

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

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn


from .config import InheritConfig
from .errors import ArchitectureMismatchError, ConfigError, CorruptCheckpointError, InherNetLoadError, ModelExistsError
from .layers import INHER_LAYERS
from .pipeline import build_layer, set_submodule
from .plan import PLAN_ATTR, InheritPlan, LayerRecord, get_plan
from .registry import LAYER_KINDS
from .shards import INDEX_NAME as SHARD_INDEX_NAME, ShardWriter, parse_size
from .utils import atomic_write, count_parameters, sha256_file, state_dict_problems, tied_names

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "inhernet_config.json"
#: the newest format this version reads; a folder records the lowest version that can read it
#: (1: one weights file; 2: sharded weights, ``"weights": {"files": [...]}``)
FORMAT_VERSION = 2


#: the entry-point group of model formats: a format saves and rebuilds the files a model of some
#: library needs besides its weights (``config.json`` for transformers, :mod:`inhernet.hf.io`); its
#: entry-point name is the top-level package the model classes come from
FORMAT_GROUP = "inhernet.model_formats"


def _format_entry(name: str):
    from importlib.metadata import entry_points

    return next((ep for ep in entry_points(group=FORMAT_GROUP) if ep.name == name), None)


def model_format(model: nn.Module) -> Any:
    """The registered model format for ``model``'s library (by the top-level packages of its class
    hierarchy), or None for a plain module. Loaded only when such a model is met."""
    for package in dict.fromkeys(c.__module__.partition(".")[0] for c in type(model).__mro__):
        entry = _format_entry(package)
        if entry is not None:
            return entry.load()
    return None


def after_inherit(model: nn.Module) -> nn.Module:
    """Let the model's format (if any) adapt a model ``inherit`` or ``load`` returns: its optional
    ``after_inherit(model)`` hook (transformers: ``save_pretrained`` then writes this format,
    :mod:`inhernet.hf.pretrained`). Returns ``model``."""
    hook = getattr(model_format(model), "after_inherit", None)
    if hook is not None:
        hook(model)
    return model


def saved_format(folder: Path, name: str) -> Any:
    entry = _format_entry(name)
    if entry is None:
        raise InherNetLoadError(f"{folder} holds a {name} model, but no inhernet model format for {name} is "
                                "installed (reinstall inhernet: `pip install -e .`, or `make install`), or pass "
                                "base_model=<the architecture> to inhernet.load.")
    return entry.load()
#: files whose presence means a folder already holds a saved model (InherNet, dense model, or a
#: Hugging Face checkpoint); besides these, any ``*.safetensors`` weights file counts
MODEL_FILES = (CONFIG_NAME, WEIGHTS_NAME, "model_config.json", SHARD_INDEX_NAME, "pytorch_model.bin")


def holds_model(folder: str | os.PathLike) -> bool:
    """Whether ``folder`` already holds a saved model: an ``inhernet_config.json``, a dense
    ``model_config.json``, or model weights (``*.safetensors``, ``pytorch_model.bin``)."""
    folder = Path(folder)
    if not folder.is_dir():
        return False
    return any((folder / name).exists() for name in MODEL_FILES) or any(folder.glob("*.safetensors"))


def check_save_target(folder: str | os.PathLike, *, overwrite: bool = False) -> None:
    """Refuse (:class:`ModelExistsError`) to save into ``folder`` when it already holds a model,
    unless ``overwrite``; also refuse a ``folder`` that is an existing file. Called by every saving
    entry point before any work, so a refusal costs nothing and changes nothing."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise ModelExistsError(f"{folder} is a file, not a folder; give a folder to save the model into.")
    if not overwrite and holds_model(folder):
        raise ModelExistsError(
            f"{folder} already holds a saved model; pass overwrite=True (on the command line: --overwrite) to "
            "replace it (only the model's own files are rewritten; other files in the folder are left alone), "
            "or save into another folder."
        )


def save(model: nn.Module, folder: str | os.PathLike, *, extra: dict[str, Any] | None = None,
         tokenizer: Any = None, overwrite: bool = False, max_shard_size: int | str | None = None,
         state_dict: dict[str, torch.Tensor] | None = None) -> Path:
    """Write ``model`` (returned by ``inherit`` or ``load``) to ``folder``.

    ``extra`` is stored under ``"extra"`` in the JSON (e.g. the base architecture's name and
    arguments, so a CLI can rebuild it). For a Hugging Face model the folder also gets
    ``config.json`` (+ ``generation_config.json``), and ``tokenizer`` (a tokenizer or processor,
    anything with ``save_pretrained``) writes its files there too; ``load(folder)`` then needs no
    base model. ``max_shard_size`` (bytes, or ``"500MB"`` / ``"2GB"``) splits the weights into shards
    of at most that size (``model-0000i-of-0000N.safetensors`` + ``model.safetensors.index.json``,
    as ``save_pretrained`` names them); by default one ``model.safetensors``. ``state_dict``: the
    tensors to write instead of the model's own (the same keys and shapes, e.g. gathered from a
    distributed model by a trainer). Returns the folder's path.

    A folder that already holds a saved model (:func:`holds_model`) is refused with
    :class:`ModelExistsError` unless ``overwrite=True``, so a model is never replaced by accident.
    Overwriting rewrites the model's own files (and removes weight shards of the old model that the
    new one does not use); any other file in the folder is left as it is.
    """
    plan = get_plan(model)
    folder = Path(folder)
    check_save_target(folder, overwrite=overwrite)
    shard_bytes = None if max_shard_size is None else parse_size(max_shard_size)  # before anything is written
    if state_dict is not None:
        problems = state_dict_problems(model, state_dict)
        if problems:
            raise ArchitectureMismatchError(f"save(state_dict=...) needs this model's keys and shapes: {'; '.join(problems)}.")
    old_weights = recorded_weight_files(folder)
    folder.mkdir(parents=True, exist_ok=True)
    hf = None
    fmt = model_format(model)
    if fmt is not None:
        hf = fmt.save_files(model, folder, tokenizer)
    elif tokenizer is not None:
        tokenizer.save_pretrained(str(folder))
    state = _state_once(model, state_dict)
    if max_shard_size is None:
        atomic_write(folder / WEIGHTS_NAME, lambda p: save_file(state, str(p), metadata={"format": "inhernet"}))
        files = [WEIGHTS_NAME]
    else:
        writer = ShardWriter(folder, shard_bytes)
        try:
            for key, tensor in state.items():
                writer.add(key, tensor)
            files = writer.finish()
        except BaseException:
            writer.abort()
            raise
    write_meta(folder, plan, files, base_model_class=f"{type(model).__module__}.{type(model).__qualname__}",
               extra=extra, hf=hf)
    remove_stale_weights(folder, old_weights, files)
    return folder


def remove_stale_weights(folder: Path, old: set[str], new: list[str]) -> None:
    """After overwriting a saved model: remove the old model's weight files the new one does not
    use, and its shard index when the new model is one file."""
    for name in old - set(new):
        (folder / name).unlink(missing_ok=True)
    if len(new) == 1:
        (folder / SHARD_INDEX_NAME).unlink(missing_ok=True)


def recorded_weight_files(folder: Path) -> set[str]:
    """The weights files an existing ``inhernet_config.json`` in ``folder`` lists (plain file names
    ending in ``.safetensors`` only; nothing when there is no readable config)."""
    try:
        meta = json.loads((folder / CONFIG_NAME).read_text())
        entries = weight_files(meta)
        names = {e["file"] for e in entries}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return set()
    return {n for n in names if isinstance(n, str) and Path(n).name == n and n.endswith(".safetensors")}


def _state_once(model: nn.Module, state: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """The state dict (``state``, or the model's own) with each tied tensor once, under its first
    name in state-dict order (for a Hugging Face model the tie's source, e.g. the input embeddings,
    as ``save_pretrained`` keeps)."""
    shared = tied_names(model)
    out: dict[str, torch.Tensor] = {}
    for key, tensor in (model.state_dict() if state is None else state).items():
        if not any(other in out for other in shared.get(key, [])):
            out[key] = tensor.detach().contiguous()
    return out


def _file_info(folder: Path, name: str) -> dict[str, Any]:
    path = folder / name
    return {"file": name, "bytes": path.stat().st_size, "sha256": sha256_file(path)}


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
    atomic_write(folder / CONFIG_NAME, lambda p: p.write_text(json.dumps(meta, indent=2)))


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
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CorruptCheckpointError(f"{path} is not valid JSON ({err}); the file is damaged, save the model again.") from err
    check_meta(meta, path)
    return meta


def _json_type(value: Any) -> str:
    """The JSON name of a decoded value's type, for messages."""
    for kind, name in ((bool, "boolean"), (dict, "object"), (list, "array"), (str, "string"), (int, "number"),
                       (float, "number")):
        if isinstance(value, kind):
            return name
    return "null" if value is None else type(value).__name__


def _is_int(value: Any, low: int = 0) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= low


_HEX = frozenset("0123456789abcdef")
_LAYER_FIELDS = {f.name for f in dataclasses.fields(LayerRecord)}


def check_meta(meta: Any, path: str | os.PathLike = CONFIG_NAME) -> None:
    """Check the structure of a decoded ``inhernet_config.json`` before anything reads it: the
    format and version, the weights entries (plain file names inside the folder, sizes, SHA-256),
    the plan (its config a valid :class:`InheritConfig`, each layer record's fields and types), and
    the ``extra`` / ``hf`` objects. The first problem found raises :class:`InherNetLoadError`
    naming the key and what it holds, so a damaged file never surfaces as a KeyError or TypeError."""

    def damaged(what: str) -> CorruptCheckpointError:
        return CorruptCheckpointError(f"{path} is damaged: {what}. Save the model again, or restore the file from a copy.")

    def need(obj: dict, key: str, where: str, kind: type, kind_name: str) -> Any:
        if key not in obj:
            raise damaged(f"{where} has no {key!r} key")
        if not isinstance(obj[key], kind) or isinstance(obj[key], bool) and kind is not bool:
            raise damaged(f"{where}[{key!r}] is a JSON {_json_type(obj[key])}, not {kind_name}")
        return obj[key]

    if not isinstance(meta, dict):
        raise damaged(f"it holds a JSON {_json_type(meta)}, not the object inhernet.save writes")
    if meta.get("format") != "inhernet":
        raise InherNetLoadError(f"{path} is not an InherNet config (format={meta.get('format')!r}).")
    version = meta.get("format_version")
    if not _is_int(version, 1):
        raise damaged(f"'format_version' is {version!r}, not an integer >= 1")
    if version > FORMAT_VERSION:
        raise InherNetLoadError(
            f"{path} has format version {version}, newer than this inhernet "
            f"({_version()}, version {FORMAT_VERSION}); upgrade inhernet."
        )
    weights = need(meta, "weights", "the config", dict, "an object")
    entries = weights.get("files", [weights]) if "files" in weights else [weights]
    if not isinstance(entries, list) or not entries:
        raise damaged(f"'weights'['files'] is {entries!r}, not a non-empty list of weights files")
    for i, entry in enumerate(entries):
        where = f"'weights'['files'][{i}]" if "files" in weights else "'weights'"
        if not isinstance(entry, dict):
            raise damaged(f"{where} is a JSON {_json_type(entry)}, not an object")
        name = need(entry, "file", where, str, "a file name")
        if Path(name).name != name or name in ("", ".", ".."):
            raise damaged(f"{where}['file'] is {name!r}, not the name of a file inside the folder")
        if not _is_int(need(entry, "bytes", where, int, "a byte count")):
            raise damaged(f"{where}['bytes'] is negative")
        sha = need(entry, "sha256", where, str, "a SHA-256 hex digest")
        if len(sha) != 64 or not set(sha) <= _HEX:
            raise damaged(f"{where}['sha256'] is {sha!r}, not a 64-digit SHA-256 hex digest")
    plan = need(meta, "plan", "the config", dict, "an object")
    _saved_config(need(plan, "config", "'plan'", dict, "an object"), path)
    if not _is_int(need(plan, "teacher_params", "'plan'", int, "a parameter count")):
        raise damaged("'plan'['teacher_params'] is negative")
    if plan.get("budget") is not None and not _is_int(plan["budget"]):
        raise damaged(f"'plan'['budget'] is {plan['budget']!r}, not a parameter count or null")
    for i, row in enumerate(need(plan, "layers", "'plan'", list, "a list of layer records")):
        _check_layer_record(row, f"'plan'['layers'][{i}]", damaged, need)
    for key in ("extra", "hf"):
        if key in meta and not isinstance(meta[key], dict) and not (key == "extra" and meta[key] is None):
            raise damaged(f"{key!r} is a JSON {_json_type(meta[key])}, not an object")
    hf = meta.get("hf") or {}
    for key in ("architecture", "attn_implementation", "dtype", "model_type", "transformers_version"):
        if hf.get(key) is not None and not isinstance(hf[key], str):
            raise damaged(f"'hf'[{key!r}] is a JSON {_json_type(hf[key])}, not a string")
    if hf.get("dtype") is not None and not isinstance(getattr(torch, hf["dtype"], None), torch.dtype):
        raise damaged(f"'hf'['dtype'] is {hf['dtype']!r}, not a torch dtype name")


def _check_layer_record(row: Any, where: str, damaged, need) -> None:
    """One ``plan.layers`` entry: the fields of :class:`LayerRecord` with their types."""
    if not isinstance(row, dict):
        raise damaged(f"{where} is a JSON {_json_type(row)}, not an object")
    unknown = sorted(set(row) - _LAYER_FIELDS)
    if unknown:
        raise damaged(f"{where} has unknown key(s) {', '.join(map(repr, unknown))}")
    need(row, "name", where, str, "a layer name")
    kind = need(row, "kind", where, str, "a layer kind")
    if kind not in LAYER_KINDS:
        raise damaged(f"{where}['kind'] is {kind!r}, not one of {', '.join(map(repr, LAYER_KINDS.names()))}")
    dims = LAYER_KINDS.get(kind).weight_dims
    shape = need(row, "shape", where, list, "a weight shape")
    if len(shape) != dims or not all(_is_int(d, 1) for d in shape):
        raise damaged(f"{where}['shape'] is {shape!r}, not the {dims} positive sizes of a {kind} weight")
    for key in ("rank", "heads"):
        if row.get(key) is not None and not _is_int(row[key], 1):
            raise damaged(f"{where}[{key!r}] is {row[key]!r}, not an integer >= 1 or null")
    if row.get("rank") is not None and row.get("heads") is None:
        raise damaged(f"{where} has a rank but no 'heads'")
    for key in ("params_before", "params_after"):
        if key in row and not _is_int(row[key]):
            raise damaged(f"{where}[{key!r}] is {row[key]!r}, not a parameter count")
    energy = row.get("energy_kept")
    if energy is not None and (isinstance(energy, bool) or not isinstance(energy, (int, float))):
        raise damaged(f"{where}['energy_kept'] is {energy!r}, not a number or null")
    for key in ("latency_ms", "dense_latency_ms"):
        value = row.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise damaged(f"{where}[{key!r}] is {value!r}, not a number of milliseconds or null")
    if "skipped" in row and not isinstance(row["skipped"], str):
        raise damaged(f"{where}['skipped'] is a JSON {_json_type(row['skipped'])}, not a string")


def _saved_config(data: dict[str, Any], path: str | os.PathLike) -> InheritConfig:
    """The :class:`InheritConfig` a plan records, as ``load`` needs it: the structure (heads, gate,
    structure, ...). The plan already holds every layer's rank, so the rank policy is not applied
    again and the budget is not re-validated (a model budget is stored as its parameter count,
    which may be smaller than an int budget may be). A config this version cannot read raises
    :class:`InherNetLoadError`."""
    types = data.get("layer_types", [])
    unknown = [k for k in types if isinstance(k, str) and k not in LAYER_KINDS] if isinstance(types, list) else []
    if unknown:
        raise InherNetLoadError(
            f"{path} was inherited with the layer kind(s) {', '.join(map(repr, unknown))}, which are not registered "
            "in this process: import the module that registers them (inhernet.registry.LAYER_KINDS.register) "
            "before inhernet.load.")
    try:
        # the plan holds the ranks: no budget (and so no latency budget's options) is checked again
        return InheritConfig.from_dict({**data, "budget": None, "budget_metric": "params", "latency_input": None})
    except (ConfigError, TypeError, ValueError) as err:
        raise InherNetLoadError(
            f"{path} is damaged or from another inhernet version: its 'plan'['config'] is not a valid "
            f"InheritConfig ({err}). Save the model again with this version."
        ) from err


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
    plan = InheritPlan.from_dict(meta["plan"])  # checked by read_config
    rebuilt = base_model is None
    if rebuilt:
        if "hf" not in meta:
            raise InherNetLoadError(
                f"{folder} was saved from a plain nn.Module (no config.json to rebuild it from); pass "
                "base_model=<a freshly constructed teacher architecture>."
            )
        base_model = saved_format(folder, "transformers").build(folder, meta["hf"])
    elif any(isinstance(m, INHER_LAYERS) for m in base_model.modules()):
        raise InherNetLoadError("base_model already contains inherited layers; pass a freshly constructed teacher architecture.")
    _check_architecture(base_model, plan, meta)
    cfg = _saved_config(plan.config, folder / CONFIG_NAME)
    for record in plan.inherited:
        module = base_model.get_submodule(record.name)
        set_submodule(base_model, record.name, build_layer(module, record.kind, record.rank, cfg))
    if device is None:
        device = "cpu" if rebuilt else _device_of(base_model)
    _load_weights(base_model, [folder / info["file"] for info in files], str(device), assign=rebuilt)
    if rebuilt:
        base_model.to(device).eval()
    setattr(base_model, PLAN_ATTR, plan)
    return after_inherit(base_model)


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
        raise CorruptCheckpointError(f"cannot read the weights in {where}: {err}; the file is damaged, save or copy "
                                     "the model again.") from err
    shared = tied_names(model)
    problems = state_dict_problems(model, state, shared)
    if not problems:
        try:
            model.load_state_dict(state, strict=False, assign=assign)
        except RuntimeError as err:
            problems.append(str(err))
    if problems:
        raise ArchitectureMismatchError(
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
        raise CorruptCheckpointError(f"{path} not found; the saved folder is incomplete, save the model again.")
    size = path.stat().st_size
    if size != info["bytes"]:
        raise CorruptCheckpointError(f"{path} is truncated or damaged: {size:,} bytes, {info['bytes']:,} expected.")
    if sha256_file(path) != info["sha256"]:
        raise CorruptCheckpointError(f"{path} is corrupted: its SHA-256 does not match the one recorded at save time.")


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
        elif not _is_kind(module, record.kind):
            problems.append(f"layer {record.name!r} is a {type(module).__name__}, the plan records a {record.kind}")
    if problems:
        shown = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
        raise ArchitectureMismatchError(
            f"base_model ({type(base).__name__}) is not the architecture this InherNet was inherited from "
            f"({saved_from}): {shown}. Construct the teacher's architecture (same model name and "
            "num_classes / in_channels) and pass that."
        )


def _is_kind(module: nn.Module, kind: str) -> bool:
    """Whether ``module`` is of the layer kind a plan record names."""
    return kind in LAYER_KINDS and LAYER_KINDS.get(kind).matches(module)


def _device_of(model: nn.Module) -> str:
    p = next(iter(model.parameters()), None)
    return "cpu" if p is None else str(p.device)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(__name__.partition(".")[0])
    except PackageNotFoundError:
        return "unknown"
