"""Inherit a sharded safetensors checkpoint tensor by tensor, for models larger than memory.

:func:`inherit_checkpoint` never holds the teacher: it builds the architecture from
``config.json`` with every parameter on the meta device (module names, types, shapes, ties; no
memory), then walks the model's state dict in order. Each tensor is read from its input shard with
plain file reads when it is needed (one input shard open at a time; the shards of a ``save_pretrained``
checkpoint follow the same order, so each is opened once). An eligible layer's weight is factorised
as soon as it is read and only the inherited factors are kept; everything else is copied through.
Output tensors are collected up to ``max_shard_size`` and written shard by shard. Peak memory is
therefore about one output shard + one layer's weight and SVD workspace (+ the skeleton),
whatever the size of the model.

The result is the folder ``inhernet.save`` would have written for ``inherit(teacher, config)`` —
the same tensors (bit for bit: same SVD, and the gates' random initialisation drawn in the same
order from the same seed), the same plan — sharded when bigger than ``max_shard_size``
(``model-0000i-of-0000N.safetensors`` + ``model.safetensors.index.json``), plus
``inhernet_config.json`` and the source's ``config.json``, generation config and tokenizer files.
``inhernet.load(dst)`` loads it.

Rank policies: ``rank``, ``rank_pattern``, ``rank_fraction``, ``energy`` (each layer's own spectrum,
from the SVD it runs anyway) and the uniform budget (shapes only) work in one pass; the spectral
budget needs every layer's spectrum before it can allocate, so it first makes a pass that reads each
eligible weight once and keeps only its singular values.
"""

from __future__ import annotations

import ctypes
import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from tqdm.auto import tqdm

from ..config import ConfigError, InheritConfig
from ..inherit import (
    InheritPlan,
    _iter_linear_conv,
    _kind,
    _merge,
    _record,
    _resolve_budget,
    check_finite,
    inherit_layer,
    layer_spec,
    resolve_config,
    select_layers,
)
from ..io import CONFIG_NAME, WEIGHTS_NAME, _shared_names, check_save_target, recorded_weight_files, write_meta
from ..ranks import choose_ranks
from ..report import count_parameters
from ..svd import singular_values
from .conv1d import weight_matrix
from .io import SIDE_FILE_SUFFIXES, WEIGHT_INDEX_SUFFIX, build_empty_model, hf_meta

INDEX_NAME = "model.safetensors.index.json"
_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}


def parse_size(size: int | str) -> int:
    """Bytes from an int or a string like ``"500MB"`` / ``"2GB"`` / ``"1GiB"`` (as transformers)."""
    if isinstance(size, int):
        return size
    m = re.fullmatch(r"\s*([\d.]+)\s*([a-zA-Z]*)\s*", str(size))
    if not m or m.group(2).upper() not in _UNITS:
        raise ConfigError(f"max_shard_size={size!r}: give bytes as an int or a string like '500MB' or '2GB'.")
    return int(float(m.group(1)) * _UNITS[m.group(2).upper()])


def checkpoint_index(folder: Path) -> dict[str, str]:
    """``tensor name → shard file name`` of a safetensors checkpoint folder (index file, or the
    headers of every ``*.safetensors`` file)."""
    index = folder / INDEX_NAME
    if index.is_file():
        return dict(json.loads(index.read_text())["weight_map"])
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{folder} holds no *.safetensors checkpoint (and no {INDEX_NAME}).")
    out = {}
    for path in files:
        with safe_open(str(path), framework="pt") as fh:
            out.update(dict.fromkeys(fh.keys(), path.name))
    return out


_SAFETENSORS_DTYPES = {
    torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
    torch.bool: "BOOL", torch.float8_e4m3fn: "F8_E4M3", torch.float8_e5m2: "F8_E5M2",
}
_DTYPES_BY_NAME = {name: dtype for dtype, name in _SAFETENSORS_DTYPES.items()}


class _Reader:
    """Reads tensors by name, one input shard open at a time, with plain file reads.

    Not through a memory map (``safe_open``): the pages of a mapped shard stay resident while it is
    open, which adds a whole input shard to the peak. Each tensor is read into its own buffer.
    """

    def __init__(self, folder: Path, index: dict[str, str]) -> None:
        self.folder, self.index = folder, index
        self._file: str | None = None
        self._handle = None
        self._header: dict[str, Any] = {}
        self._data_start = 0
        self.shards_opened = 0

    def __contains__(self, key: str) -> bool:
        return key in self.index

    def _open(self, file: str) -> None:
        self.close()
        self._handle = open(self.folder / file, "rb")
        n = int.from_bytes(self._handle.read(8), "little")
        self._header = json.loads(self._handle.read(n))
        self._data_start = 8 + n
        self._file = file
        self.shards_opened += 1

    def get(self, key: str) -> torch.Tensor:
        file = self.index[key]
        if file != self._file:
            self._open(file)
        info = self._header[key]
        dtype, shape = _DTYPES_BY_NAME[info["dtype"]], info["shape"]
        start, end = info["data_offsets"]
        if end == start:
            return torch.empty(shape, dtype=dtype)
        buf = bytearray(end - start)
        self._handle.seek(self._data_start + start)
        if self._handle.readinto(buf) != len(buf):
            raise OSError(f"{self.folder / file} is truncated: tensor {key!r} runs past the end of the file.")
        return torch.frombuffer(buf, dtype=torch.uint8).view(dtype).reshape(shape)

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            release_memory()
        self._handle, self._file = None, None


def release_memory() -> None:
    """Hand freed heap memory back to the OS (glibc ``malloc_trim``; a no-op elsewhere). Without it
    the freed tensors of one shard stay in the process's heap and the resident size creeps up shard
    by shard."""
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (AttributeError, OSError):
        pass




def write_safetensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    """Write a safetensors file tensor by tensor. ``safetensors.torch.save_file`` first turns every
    tensor into a ``bytes`` copy, which doubles a shard's memory at the moment it is written; here
    each tensor's buffer goes to the file as it is."""
    header: dict[str, Any] = {"__metadata__": metadata}
    offset = 0
    for key, t in tensors.items():
        size = t.numel() * t.element_size()
        header[key] = {"dtype": _SAFETENSORS_DTYPES[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + size]}
        offset += size
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)  # the data starts 8-byte aligned, as safetensors writes it
    with open(path, "wb") as fh:
        fh.write(len(blob).to_bytes(8, "little"))
        fh.write(blob)
        for t in tensors.values():
            if t.numel():
                fh.write(memoryview(t.contiguous().reshape(-1).view(torch.uint8).numpy()))


class _Writer:
    """Collects output tensors and writes a shard whenever the next tensor would overflow it."""

    def __init__(self, folder: Path, max_bytes: int) -> None:
        self.folder, self.max_bytes = folder, max_bytes
        self.pending: dict[str, torch.Tensor] = {}
        self.pending_bytes = 0
        self.shards: list[tuple[str, list[str]]] = []  # (temporary file name, keys)
        self.total_bytes = 0

    def add(self, key: str, tensor: torch.Tensor) -> None:
        size = tensor.numel() * tensor.element_size()
        if self.pending and self.pending_bytes + size > self.max_bytes:
            self.flush()
        self.pending[key] = tensor.detach().contiguous()
        self.pending_bytes += size
        self.total_bytes += size

    def flush(self) -> None:
        if not self.pending:
            return
        name = f"model-{len(self.shards) + 1:05d}.safetensors.tmp"
        write_safetensors(self.folder / name, self.pending, metadata={"format": "inhernet"})
        self.shards.append((name, list(self.pending)))
        self.pending, self.pending_bytes = {}, 0
        release_memory()

    def finish(self) -> list[str]:
        """Write the last shard, give the shards their final names; return them in order."""
        self.flush()
        n = len(self.shards)
        names = [WEIGHTS_NAME] if n == 1 else [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]
        for (tmp, _), final in zip(self.shards, names):
            os.replace(self.folder / tmp, self.folder / final)
        if n > 1:
            weight_map = {k: final for (_, keys), final in zip(self.shards, names) for k in keys}
            index = {"metadata": {"total_size": self.total_bytes}, "weight_map": weight_map}
            (self.folder / INDEX_NAME).write_text(json.dumps(index, indent=2))
        return names


def inherit_checkpoint(src: str | os.PathLike, dst: str | os.PathLike, config: InheritConfig | None = None, *,
                       max_shard_size: int | str = "1GB", architecture: str | None = None,
                       progress: bool = True, overwrite: bool = False, **overrides: Any) -> Path:
    """Inherit the Hugging Face checkpoint in ``src`` into ``dst`` without loading the teacher.

    Args:
        src: a folder with ``config.json`` and safetensors weights (one file or shards with
            ``model.safetensors.index.json``), as ``save_pretrained`` writes it.
        dst: the output folder (created); afterwards ``inhernet.load(dst)`` loads the InherNet.
        config: an :class:`~inhernet.InheritConfig`; ``overrides`` apply on top, as in ``inherit``.
            ``target_modules=None`` means the architecture's attention and MLP projections.
        max_shard_size: the largest output shard, in bytes or as ``"500MB"``/``"2GB"``; it bounds
            the output side of the peak memory.
        architecture: the transformers model class to build (default: ``config.architectures[0]``).
        progress: show a progress bar over the eligible layers.
        overwrite: replace a model already saved in ``dst`` (refused otherwise, with
            :class:`inhernet.io.ModelExistsError`, before any work); other files there are kept.

    Returns the path of ``dst``.
    """
    from transformers import AutoConfig

    src, dst = Path(src), Path(dst)
    if src.resolve() == dst.resolve():
        raise ConfigError("dst must differ from src: the source checkpoint is read while dst is written.")
    check_save_target(dst, overwrite=overwrite)
    old_weights = recorded_weight_files(dst)
    cfg = _merge(config, overrides)
    if cfg.init == "whitened":
        raise ConfigError("init='whitened' needs calibration activations, which a streaming pass cannot collect; "
                          "use inherit(model, ..., calibration=batches) on a loaded model (from the command line: "
                          "`inhernet inherit FOLDER --init whitened --calibration TEXT_FILE`), or init='svd'.")
    max_bytes = parse_size(max_shard_size)
    hf_config = AutoConfig.from_pretrained(str(src))
    arch = architecture or (hf_config.architectures or [None])[0]
    if not arch:
        raise ConfigError(f"{src}/config.json names no architecture; pass architecture='LlamaForCausalLM' (a transformers class).")
    index = checkpoint_index(src)
    skeleton = build_empty_model(src, {"architecture": arch, "dtype": _checkpoint_dtype(src, index)}, config=hf_config)

    cfg = resolve_config(skeleton, cfg)
    teacher_params = count_parameters(skeleton)
    order = {name: i for i, (name, *_rest) in enumerate(_iter_linear_conv(skeleton))}
    eligible, skipped = select_layers(skeleton, cfg)
    kinds = {name: _kind(m) for name, m in eligible}
    specs = {name: layer_spec(name, kinds[name], m.weight, m.bias is not None, False) for name, m in eligible}
    for name in specs:
        if f"{name}.weight" not in index:
            raise ConfigError(f"{src} has no tensor {name}.weight for layer {name!r}: the checkpoint does not "
                              f"match {arch} built from its config.json (or uses a key layout this path does not read).")
    reader = _Reader(src, index)
    budget = _resolve_budget(cfg, teacher_params)
    decisions = None
    if budget is not None:
        if cfg.budget_mode == "spectral":  # first pass: every eligible layer's spectrum, nothing else kept
            for name in tqdm(specs, desc="spectra", unit="layer", disable=not progress, leave=False, delay=1.0):
                weight = reader.get(f"{name}.weight")
                check_finite(name, "weight", weight)
                specs[name].spectrum = singular_values(weight_matrix(weight, kinds[name]))
                del weight
            reader.close()
        budget_left = budget - (teacher_params - sum(s.dense_params for s in specs.values()))
        decisions = choose_ranks(list(specs.values()), cfg, budget_left=budget_left)

    dst.mkdir(parents=True, exist_ok=True)
    writer = _Writer(dst, max_bytes)
    shared = _shared_names(skeleton)
    layer_of = {f"{name}.{p}": name for name, m in eligible for p, _ in m.named_parameters(recurse=False)}
    modules = dict(eligible)
    records = list(skipped)
    done: set[str] = set()
    bar = tqdm(total=len(eligible), desc="inheriting", unit="layer", disable=not progress, leave=False, delay=1.0)
    try:
        # every layer draws from its own generator (inherit_layer), as in inherit()
        for key, tensor in skeleton.state_dict(keep_vars=True).items():
            name = layer_of.get(key)
            if name is not None:
                if name not in done:
                    done.add(name)
                    records.append(_inherit_one(name, modules[name], specs[name], decisions, reader, writer, cfg))
                    bar.update()
            elif key in reader:
                writer.add(key, reader.get(key))
            elif any(other in reader for other in shared.get(key, [])):
                continue  # tied: stored once, under the name the checkpoint uses
            elif not tensor.is_meta:
                writer.add(key, tensor)  # a persistent buffer the checkpoint leaves out: the architecture's own value
            else:
                raise ConfigError(f"{src} has no tensor {key!r}, which {arch} built from its config.json needs.")
        files = writer.finish()
    finally:
        bar.close()
        reader.close()
    records.sort(key=lambda r: order[r.name])
    plan = InheritPlan(config=cfg.to_dict(), layers=records, teacher_params=teacher_params, budget=budget)
    _copy_side_files(src, dst)
    hf = hf_meta(skeleton)
    hf["dtype"] = _checkpoint_dtype(src, index)
    write_meta(dst, plan, files, base_model_class=f"{type(skeleton).__module__}.{type(skeleton).__qualname__}", hf=hf)
    for name in old_weights - set(files):  # shards of an overwritten model
        (dst / name).unlink(missing_ok=True)
    if len(old_weights) > 1 and len(files) == 1:  # and its shard index
        (dst / INDEX_NAME).unlink(missing_ok=True)
    return dst


def _inherit_one(name, module, spec, decisions, reader: _Reader, writer: _Writer, cfg: InheritConfig):
    weight = reader.get(f"{name}.weight")
    bias = reader.get(f"{name}.bias") if module.bias is not None else None
    check_finite(name, "weight", weight)
    if bias is not None:
        check_finite(name, "bias", bias)
    if decisions is not None:
        decision = decisions[name]
    else:  # per-layer policies decide from this layer alone (energy: its own spectrum)
        if cfg.energy is not None:
            spec.spectrum = singular_values(weight_matrix(weight, spec.kind))
        decision = choose_ranks([spec], cfg)[name]
    if decision.rank is None:
        writer.add(f"{name}.weight", weight)
        if bias is not None:
            writer.add(f"{name}.bias", bias)
        return _record(name, module, spec.kind, skipped=decision.reason)
    new, record = inherit_layer(module, spec, decision.rank, weight, bias, cfg)
    spec.spectrum = None
    for key, value in new.state_dict().items():
        writer.add(f"{name}.{key}", value)
    return record


def _checkpoint_dtype(src: Path, index: dict[str, str]) -> str | None:
    """dtype of the checkpoint's first floating tensor (read from a header, no data loaded)."""
    for file in dict.fromkeys(index.values()):
        with safe_open(str(src / file), framework="pt") as fh:
            for key in fh.keys():
                dtype = fh.get_slice(key).get_dtype()
                if dtype.startswith(("F", "BF")):
                    return {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16"}.get(dtype)
    return None


def _copy_side_files(src: Path, dst: Path) -> None:
    """config.json, generation config, tokenizer files: everything small that is not weights."""
    for path in src.iterdir():
        if (path.is_file() and path.name.endswith(SIDE_FILE_SUFFIXES) and not path.name.endswith(WEIGHT_INDEX_SUFFIX)
                and path.name != CONFIG_NAME):
            shutil.copyfile(path, dst / path.name)
