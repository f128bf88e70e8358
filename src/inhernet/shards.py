"""Safetensors checkpoints read and written tensor by tensor, for models larger than memory.

:class:`ShardReader` reads one tensor at a time with plain file reads (one input shard open at a
time; no memory map, whose resident pages would add a whole shard to the peak); :class:`ShardWriter`
collects output tensors up to ``max_shard_size`` and writes a shard whenever the next tensor would
overflow it, under a temporary name until :meth:`ShardWriter.finish` (``abort`` removes them), then
``model.safetensors`` or ``model-0000i-of-0000N.safetensors`` + ``model.safetensors.index.json``,
as ``save_pretrained`` names them.
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

from .errors import ConfigError

__all__ = ["INDEX_NAME", "ShardReader", "ShardWriter", "WEIGHTS_NAME", "checkpoint_dtype", "checkpoint_index",
           "parse_size", "release_memory", "write_safetensors"]

#: the weights file of an unsharded model
WEIGHTS_NAME = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"
_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}


def parse_size(size: int | str) -> int:
    """Bytes from an int or a string like ``"500MB"`` / ``"2GB"`` / ``"1GiB"`` (as transformers)."""
    hint = f"max_shard_size={size!r}: give a positive number of bytes as an int or a string like '500MB' or '2GB'."
    if isinstance(size, bool):
        raise ConfigError(hint)
    if isinstance(size, int):
        if size < 1:
            raise ConfigError(hint)
        return size
    m = re.fullmatch(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([a-zA-Z]*)\s*", str(size))
    if not m or m.group(2).upper() not in _UNITS or float(m.group(1)) <= 0:
        raise ConfigError(hint)
    return max(1, int(float(m.group(1)) * _UNITS[m.group(2).upper()]))


def checkpoint_index(folder: Path, *, only: str | None = None) -> dict[str, str]:
    """``tensor name → shard file name`` of a safetensors checkpoint folder (index file, or the
    headers of every ``*.safetensors`` file; ``only``: of that one file)."""
    index = folder / INDEX_NAME
    if index.is_file() and only is None:
        return dict(json.loads(index.read_text())["weight_map"])
    files = [folder / only] if only is not None else sorted(folder.glob("*.safetensors"))
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


class ShardReader:
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


class ShardWriter:
    """Writes output tensors to shards of at most ``max_bytes``, starting a new shard whenever the
    next tensor would overflow the current one.

    A tensor's bytes go to disk as soon as it is added (to the shard's data file), so the memory
    held is one tensor, not one shard: the header of a safetensors file, which lists every tensor,
    is written in front of the data when the shard is complete (:meth:`flush`)."""

    def __init__(self, folder: Path, max_bytes: int) -> None:
        self.folder, self.max_bytes = folder, max_bytes
        self.pending: dict[str, dict[str, Any]] = {}  # key → dtype / shape / offsets in the data file
        self.pending_bytes = 0
        self.shards: list[tuple[str, list[str]]] = []  # (temporary file name, keys)
        self.total_bytes = 0
        self._data = None  # the open data file of the shard being written

    def _data_path(self) -> Path:
        return self.folder / f"model-{len(self.shards) + 1:05d}.safetensors.data.tmp"

    def add(self, key: str, tensor: torch.Tensor) -> None:
        size = tensor.numel() * tensor.element_size()
        if self.pending and self.pending_bytes + size > self.max_bytes:
            self.flush()
        if self._data is None:
            self._data = open(self._data_path(), "wb")
        t = tensor.detach().contiguous()
        self.pending[key] = {"dtype": _SAFETENSORS_DTYPES[t.dtype], "shape": list(t.shape),
                             "data_offsets": [self.pending_bytes, self.pending_bytes + size]}
        if t.numel():
            self._data.write(memoryview(t.reshape(-1).view(torch.uint8).numpy()))
        self.pending_bytes += size
        self.total_bytes += size

    def flush(self) -> None:
        """Complete the current shard: its header, then its data, as one ``.tmp`` file."""
        if not self.pending:
            return
        self._data.close()
        self._data = None
        data = self._data_path()
        name = f"model-{len(self.shards) + 1:05d}.safetensors.tmp"
        header: dict[str, Any] = {"__metadata__": {"format": "inhernet"}, **self.pending}
        blob = json.dumps(header, separators=(",", ":")).encode()
        blob += b" " * (-len(blob) % 8)  # the data starts 8-byte aligned, as safetensors writes it
        with open(self.folder / name, "wb") as out, open(data, "rb") as src:
            out.write(len(blob).to_bytes(8, "little"))
            out.write(blob)
            shutil.copyfileobj(src, out, 1 << 20)
        data.unlink()
        self.shards.append((name, list(self.pending)))
        self.pending, self.pending_bytes = {}, 0
        release_memory()

    def abort(self) -> None:
        """Remove every shard written so far (a failed run leaves the folder as it was)."""
        if self._data is not None:
            self._data.close()
            self._data = None
        self._data_path().unlink(missing_ok=True)
        self.pending, self.pending_bytes = {}, 0
        for tmp, _ in self.shards:
            (self.folder / tmp).unlink(missing_ok=True)
        self.shards = []

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


def checkpoint_dtype(src: Path, index: dict[str, str]) -> str | None:
    """dtype of the checkpoint's first floating tensor (read from a header, no data loaded)."""
    for file in dict.fromkeys(index.values()):
        with safe_open(str(src / file), framework="pt") as fh:
            for key in fh.keys():
                dtype = fh.get_slice(key).get_dtype()
                if dtype.startswith(("F", "BF")):
                    return {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16"}.get(dtype)
    return None


