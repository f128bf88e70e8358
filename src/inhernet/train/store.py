"""Model files that the CLI and the comparison runner read and write.

* An **inherited** model is a folder written by :func:`inhernet.save` (``model.safetensors`` +
  ``inhernet_config.json``); the base architecture's name and arguments go in its ``extra`` field, so
  :func:`load_model` can rebuild the base and call :func:`inhernet.load`.
* A **dense** model (teacher, student) is a folder with ``model.safetensors`` and
  ``model_config.json`` (``{"format": "inhernet-dense", "arch", "num_classes", "in_channels"}``).
* A Lightning checkpoint (``*.ckpt`` from :func:`inhernet.train.fit`) of a dense model, a run folder
  (its ``model/``), or a bare state dict (``.safetensors`` / ``.pt``, with ``arch=`` given) also load.

Every load error is an :class:`inhernet.errors.InherNetLoadError` (``ModelLoadError`` here, the same
class), and two causes are told apart, because their fixes differ:

* a **damaged** file (a truncated or unreadable ``model.safetensors``, a ``model_config.json`` that is
  not JSON, a torch file that cannot be unpickled) raises :class:`CorruptCheckpointError`: save or
  copy the model again;
* a readable file of **another architecture** than the one expected (a recorded ``arch`` or size
  that differs, weights whose keys or shapes do not fit) raises :class:`ArchitectureMismatchError`,
  which says what was found and what was expected.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Optional, Union

import torch
from torch import nn

from inhernet.errors import ArchitectureMismatchError, CorruptCheckpointError, InherNetLoadError
from inhernet.utils import atomic_write, state_dict_problems

__all__ = ["ArchitectureMismatchError", "ArchitectureUnknownError", "CorruptCheckpointError", "ModelLoadError",
           "load_model", "save_model", "model_info", "DENSE_CONFIG_NAME", "WEIGHTS_NAME"]

DENSE_CONFIG_NAME = "model_config.json"
WEIGHTS_NAME = "model.safetensors"
INHERIT_CONFIG_NAME = "inhernet_config.json"


#: the error of a model file or folder that cannot be loaded (the message says why and what to do):
#: the one load error of the package, :class:`inhernet.errors.InherNetLoadError`, under its older name
ModelLoadError = InherNetLoadError


def _damaged(path: Path, detail: Any) -> CorruptCheckpointError:
    """The error for a saved file that cannot be read: what is wrong with it and the fix."""
    return CorruptCheckpointError(f"{path} is damaged ({detail}); it cannot be read as a saved model. Save the "
                                  "model again, or copy it again from where it came from.")


class ArchitectureUnknownError(InherNetLoadError):
    """A bare state dict was given without ``arch=``: nothing says which architecture to build.
    ``path`` is the file; a command line that has an ``--arch`` option says to use it."""

    def __init__(self, message: str, *, path: Path) -> None:
        super().__init__(message)
        self.path = path


def _is_inherited(model: nn.Module) -> bool:
    from inhernet.layers import INHER_LAYERS

    return any(isinstance(m, INHER_LAYERS) for m in model.modules())


def save_model(model: nn.Module, folder: Union[str, os.PathLike], *, arch: str, num_classes: int,
               in_channels: int, extra: Optional[dict] = None, overwrite: bool = False) -> Path:
    """Save a dense model (``arch`` = its registry name, or the import path ``package.module:factory``
    of your own model) or an inherited one (``arch`` = the teacher's). :func:`load_model` rebuilds
    the architecture from ``arch`` (:func:`inhernet.models.create_model`) and loads the weights.

    A folder that already holds a model is refused (:class:`inhernet.io.ModelExistsError`) unless
    ``overwrite=True``: the CLI's ``--overwrite``, or a run folder that training itself rewrites.
    Only the model's files are written (or, when a dense model replaces an inherited one or the
    reverse, removed); other files in the folder are left alone. Writes are atomic per file
    (temporary name, then rename).
    """
    import inhernet
    from inhernet.io import check_save_target

    folder = Path(folder)
    check_save_target(folder, overwrite=overwrite)
    folder.mkdir(parents=True, exist_ok=True)
    info = {"arch": arch, "num_classes": int(num_classes), "in_channels": int(in_channels), **(extra or {})}
    if _is_inherited(model):
        inhernet.save(model, folder, extra=info, overwrite=True)  # the folder was checked above
        stale = folder / DENSE_CONFIG_NAME
        if stale.exists():
            stale.unlink()
        return folder
    from safetensors.torch import save_model as st_save

    atomic_write(folder / WEIGHTS_NAME,
                 lambda tmp: st_save(model, str(tmp), metadata={"format": "inhernet-dense", "arch": arch}))
    meta = {"format": "inhernet-dense", "format_version": 1, **info}
    atomic_write(folder / DENSE_CONFIG_NAME, json.dumps(meta, indent=2))
    stale = folder / INHERIT_CONFIG_NAME
    if stale.exists():
        stale.unlink()
    return folder


def model_info(path: Union[str, os.PathLike]) -> dict:
    """What a saved model is, without loading weights: ``kind`` (dense|inherited|checkpoint|state_dict),
    ``arch``, ``num_classes``, ``in_channels`` where known."""
    p = _resolve(Path(path))
    if p.is_dir():
        if (p / INHERIT_CONFIG_NAME).is_file():
            from inhernet.io import read_config

            meta = read_config(p)  # checked: a damaged file is an InherNetLoadError naming the problem
            extra = meta.get("extra") or {}
            info = {k: extra.get(k) for k in ("arch", "num_classes", "in_channels")}
            _check_info(info, p / INHERIT_CONFIG_NAME, "'extra'")
            return {"kind": "inherited", "path": str(p), **info, "plan": meta["plan"]}
        if (p / DENSE_CONFIG_NAME).is_file():
            meta = _read_dense_config(p / DENSE_CONFIG_NAME)
            info = {k: meta.get(k) for k in ("arch", "num_classes", "in_channels")}
            _check_info(info, p / DENSE_CONFIG_NAME, "the config")
            return {"kind": "dense", "path": str(p), **info}
        raise ModelLoadError(f"{p} holds no saved model (no {INHERIT_CONFIG_NAME} or {DENSE_CONFIG_NAME}).")
    if p.suffix == ".ckpt":
        ck = _read_checkpoint(p)
        hparams = ck.get("hyper_parameters") or {}
        meta = (hparams.get("model_meta") if isinstance(hparams, dict) else None) or {}
        if not isinstance(meta, dict):
            raise _damaged(p, f"its hyper_parameters.model_meta is a {type(meta).__name__}, not a mapping")
        return {"kind": "checkpoint", "path": str(p), **{k: meta.get(k) for k in ("arch", "num_classes",
                                                                                    "in_channels")},
                "inherited": bool(meta.get("inherited"))}
    return {"kind": "state_dict", "path": str(p), "arch": None, "num_classes": None, "in_channels": None}


def _read_dense_config(path: Path) -> dict:
    """A dense model's ``model_config.json``: a JSON object, else a CorruptCheckpointError naming the damage."""
    try:
        meta = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise _damaged(path, f"not valid JSON: {err}") from err
    if not isinstance(meta, dict):
        raise _damaged(path, f"it holds a JSON {type(meta).__name__}, not an object")
    return meta


def _check_info(info: dict, path: Path, where: str) -> None:
    """The architecture fields a saved model records: ``arch`` a string, the sizes positive ints; else
    the file is damaged (CorruptCheckpointError)."""
    if info["arch"] is not None and not isinstance(info["arch"], str):
        raise _damaged(path, f"{where}['arch'] is {info['arch']!r}, not a model name")
    for key in ("num_classes", "in_channels"):
        v = info[key]
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
            raise _damaged(path, f"{where}[{key!r}] is {v!r}, not a positive integer")


def _resolve(p: Path) -> Path:
    if not p.exists():
        raise ModelLoadError(f"{p} does not exist.")
    if p.is_dir() and not (p / INHERIT_CONFIG_NAME).is_file() and not (p / DENSE_CONFIG_NAME).is_file():
        for sub in ("model", "teacher"):
            if (p / sub).is_dir() and ((p / sub / INHERIT_CONFIG_NAME).is_file()
                                       or (p / sub / DENSE_CONFIG_NAME).is_file()):
                return p / sub
    return p


def _torch_load(p: Path) -> Any:
    """What a torch file holds; a file that cannot be unpickled is damaged (CorruptCheckpointError)."""
    try:
        return torch.load(p, map_location="cpu", weights_only=False)
    except Exception as err:  # noqa: BLE001 - any failure to unpickle means the bytes are not a torch file
        raise _damaged(p, f"torch.load failed: {type(err).__name__}: {err}") from err


def _read_checkpoint(p: Path) -> dict:
    """A Lightning checkpoint: a mapping with a ``state_dict`` mapping, else the file is damaged."""
    ck = _torch_load(p)
    if not isinstance(ck, dict) or not isinstance(ck.get("state_dict"), dict):
        raise _damaged(p, "not a training checkpoint: it holds no 'state_dict' mapping")
    return ck


def _read_safetensors(p: Path) -> dict:
    """The tensors of a safetensors file; a missing, truncated or unreadable one is damaged."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(p))
    except (SafetensorError, OSError) as err:
        raise _damaged(p, f"not a readable safetensors file: {err}") from err


def _check_expected(found: Optional[str], expect: Optional[str], p: Path) -> None:
    if expect and found and found != expect:
        raise ArchitectureMismatchError(
            f"{p} holds a {found!r} model, but {expect!r} was expected. Point to a {expect} checkpoint, "
            f"or change the expected architecture to {found!r}.")


def _check_state_dict(state: Any, p: Path) -> None:
    """A bare weights file must hold a state dict (parameter names to tensors), else a ModelLoadError."""
    if not isinstance(state, dict) or not all(isinstance(k, str) for k in state):
        raise ModelLoadError(f"{p} holds a {type(state).__name__}, not a state dict (a mapping of parameter names "
                             "to tensors); give a saved model folder, a training checkpoint or a state dict file.")


def _load_state(model: nn.Module, state: Any, p: Path, arch: str) -> None:
    """Load ``state`` (read from ``p``) into ``model`` strictly (:func:`inhernet.utils.state_dict_problems`);
    weights that do not fit are an ArchitectureMismatchError naming the misfit."""
    _check_state_dict(state, p)
    problems = state_dict_problems(model, state)
    if problems:
        raise ArchitectureMismatchError(
            f"the weights in {p} do not fit architecture {arch!r}: " + "; ".join(problems)
            + ". The file was saved from another architecture (or other num_classes / in_channels).")
    model.load_state_dict(state, strict=False)  # checked strictly above (tied tensors may be stored once)


def load_model(
    path: Union[str, os.PathLike],
    *,
    arch: Optional[str] = None,
    num_classes: Optional[int] = None,
    in_channels: Optional[int] = None,
    expect_arch: Optional[str] = None,
) -> tuple[nn.Module, dict]:
    """Load any saved model; returns ``(model, info)`` with ``info`` as :func:`model_info` (+ ``params``).

    ``arch`` / ``num_classes`` / ``in_channels`` are needed only for bare state dicts (or override
    nothing: a mismatch with what the file records is an error). ``expect_arch`` makes a model of
    another architecture an :class:`ArchitectureMismatchError`.
    """
    import inhernet
    from inhernet.models import create_model

    p = _resolve(Path(path))
    info = model_info(p)
    found_arch = info.get("arch")
    if arch and found_arch and arch != found_arch:
        _check_expected(found_arch, arch, p)
    _check_expected(found_arch, expect_arch, p)
    arch = found_arch or arch or expect_arch
    if not arch:
        raise ArchitectureUnknownError(
            f"{p} is a bare state dict, which does not record its architecture; give a saved model folder or "
            "training checkpoint instead, or name the architecture (load_model(..., arch=NAME)).", path=p)
    for key, given in (("num_classes", num_classes), ("in_channels", in_channels)):
        if info.get(key) is not None and given is not None and int(info[key]) != int(given):
            raise ArchitectureMismatchError(f"{p} was saved with {key}={info[key]}, but {key}={given} was expected.")
    nc = int(info.get("num_classes") or num_classes or 100)
    ic = int(info.get("in_channels") or in_channels or 3)
    base = create_model(arch, num_classes=nc, in_channels=ic)
    kind = info["kind"]
    if kind == "inherited":
        try:
            model = inhernet.load(p, base)
        except InherNetLoadError:
            raise  # inhernet.load names the cause: damaged files are never reported as a mismatch
        except ValueError as err:
            raise ModelLoadError(f"cannot load the inherited model in {p}: {err}") from err
    elif kind == "dense":
        _load_state(base, _read_safetensors(p / WEIGHTS_NAME), p, arch)
        model = base
    elif kind == "checkpoint":
        if info.get("inherited"):
            raise ModelLoadError(f"{p} is a training checkpoint of an inherited model; load the model folder "
                                 "saved next to it (…/model) instead.")
        ck = _read_checkpoint(p)
        state = {k[len("model."):]: v for k, v in ck["state_dict"].items() if k.startswith("model.")}
        _load_state(base, state, p, arch)
        model = base
    else:
        if p.suffix == ".safetensors":
            state = _read_safetensors(p)
        else:
            state = _torch_load(p)
            if isinstance(state, dict) and "state_dict" in state:
                state = state["state_dict"]
            if isinstance(state, nn.Module):
                state = state.state_dict()
        _check_state_dict(state, p)
        if any(k.startswith("model.") for k in state) and not any(k in base.state_dict() for k in state):
            state = {k[len("model."):]: v for k, v in state.items() if k.startswith("model.")}
        _load_state(base, state, p, arch)
        model = base
    info = {**info, "arch": arch, "num_classes": nc, "in_channels": ic,
            "params": inhernet.count_parameters(model), "inherited": _is_inherited(model)}
    return model.eval(), info
