"""Read IDX files (the MNIST / Fashion-MNIST format) with numpy, gzipped or not.

An IDX file is a 4-byte magic number - two zero bytes, a type code, the number of dimensions -
followed by one big-endian int32 per dimension and then the raw array. We check every part of that
header against the file's length, so that a truncated download fails here with a message that
names the file, rather than later as a baffling reshape error or silently short data set.
"""

from __future__ import annotations

import gzip
import os
import zlib
from pathlib import Path

import numpy as np

from .errors import IdxFormatError

__all__ = ["read_idx", "write_idx", "IDX_DTYPES"]

#: IDX type code -> numpy dtype (big-endian where it matters, as the format prescribes).
IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_CODES = {dt: code for code, dt in IDX_DTYPES.items()}


def _kind(dt: np.dtype) -> tuple[str, int]:
    """A dtype's kind and size, ignoring byte order ('>i4' and '<i4' are the same element type)."""
    return dt.kind, dt.itemsize
_GZIP_MAGIC = b"\x1f\x8b"


def _read_bytes(path: Path) -> bytes:
    """The file's content, decompressed when it is gzip (detected by its magic, not its name)."""
    with open(path, "rb") as f:
        raw = f.read()
    if raw[:2] != _GZIP_MAGIC:
        return raw
    try:
        return gzip.decompress(raw)
    except (EOFError, OSError, zlib.error) as exc:
        raise IdxFormatError(
            f"{path}: truncated or corrupt gzip stream ({exc}); the file is damaged - "
            "re-download or reinstall it"
        ) from exc


def read_idx(path: str | os.PathLike, *, ndim: int | None = None,
             dtype: np.dtype | type | None = None) -> np.ndarray:
    """Read one IDX file into a numpy array of the shape its header declares.

    Args:
        path: the file, plain or gzipped (``.gz`` or not - gzip is recognised by its content).
        ndim: when given, the number of dimensions the file must have (3 for images, 1 for labels);
            this is what tells an images file from a labels file, as their magic numbers
            (2051 and 2049) differ only in that byte.
        dtype: when given, the element type the file must hold (e.g. ``np.uint8``).

    Returns:
        A C-contiguous array in native byte order; read-only for single-byte types (a view of the
        decompressed bytes, not copied - index or copy it before writing).

    Raises:
        IdxFormatError: bad magic number, unexpected type or rank, or a file shorter (or longer)
            than its header says.
    """
    path = Path(path)
    data = _read_bytes(path)
    if len(data) < 4:
        raise IdxFormatError(f"{path}: only {len(data)} bytes, too short for an IDX header")
    zero, code, rank = int.from_bytes(data[:2], "big"), data[2], data[3]
    if zero != 0 or code not in IDX_DTYPES:
        raise IdxFormatError(
            f"{path}: bad IDX magic number 0x{int.from_bytes(data[:4], 'big'):08x} "
            "(expected 0x0000TTNN: TT a type code, NN the number of dimensions)"
        )
    if ndim is not None and rank != ndim:
        raise IdxFormatError(f"{path}: IDX file has {rank} dimensions, expected {ndim}")
    item = IDX_DTYPES[code]
    if dtype is not None and _kind(item) != _kind(np.dtype(dtype)):
        raise IdxFormatError(f"{path}: IDX file holds {item}, expected {np.dtype(dtype)}")
    header = 4 + 4 * rank
    if len(data) < header:
        raise IdxFormatError(f"{path}: truncated IDX header ({len(data)} of {header} bytes)")
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(rank))
    expected = header + int(np.prod(shape, dtype=np.int64)) * item.itemsize
    if len(data) != expected:
        what = "truncated" if len(data) < expected else "has trailing bytes"
        raise IdxFormatError(
            f"{path}: IDX file {what}: header declares shape {shape} ({expected} bytes in all) "
            f"but the file holds {len(data)} bytes; re-download or reinstall it"
        )
    arr = np.frombuffer(data, dtype=item, offset=header).reshape(shape)
    if item.itemsize > 1:  # to native byte order
        arr = arr.astype(np.dtype(_kind(item)[0] + str(item.itemsize)))
    return arr


def write_idx(path: str | os.PathLike, array: np.ndarray, *, compress: bool | None = None) -> Path:
    """Write ``array`` as an IDX file (gzipped when ``compress``, default: when the name ends .gz).

    Used by the tests to build small files; real data comes from the installed packages.
    """
    path = Path(path)
    array = np.asarray(array)
    code = next((c for dt, c in _CODES.items() if _kind(dt) == _kind(array.dtype)), None)
    if code is None:
        raise ValueError(f"IDX cannot hold dtype {array.dtype}")
    head = bytes([0, 0, code, array.ndim]) + b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    body = np.ascontiguousarray(array, dtype=IDX_DTYPES[code]).tobytes()
    compress = path.suffix == ".gz" if compress is None else compress
    payload = head + body
    path.write_bytes(gzip.compress(payload, compresslevel=1) if compress else payload)
    return path
