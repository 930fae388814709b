"""A numpy-only reader and writer for the safetensors format, with errors that name file and tensor.

Format (https://github.com/huggingface/safetensors): 8 bytes little-endian u64 N, N bytes of
JSON header ``{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {...}}``,
then the raw little-endian tensor bytes (offsets relative to the end of the header).

Why not the ``safetensors`` package: its numpy API cannot return bfloat16 tensors (numpy has no
bfloat16), and most Llama / Qwen2 checkpoints are bfloat16. ``ml_dtypes`` (a JAX dependency)
supplies the numpy bfloat16 dtype, so this reader needs nothing beyond what tokjax already has.
Files are memory-mapped: reading a header costs nothing, a tensor is paged in when converted.
"""

from __future__ import annotations

import json
import math
import os
import struct
from pathlib import Path
from typing import Mapping

import ml_dtypes
import numpy as np

# safetensors dtype tag -> numpy dtype (little-endian). Float tags first: they are what weights use.
DTYPES: dict[str, np.dtype] = {
    "F64": np.dtype("<f8"),
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "I64": np.dtype("<i8"),
    "I32": np.dtype("<i4"),
    "I16": np.dtype("<i2"),
    "I8": np.dtype("i1"),
    "U64": np.dtype("<u8"),
    "U32": np.dtype("<u4"),
    "U16": np.dtype("<u2"),
    "U8": np.dtype("u1"),
    "BOOL": np.dtype("?"),
}
_TAGS = {v: k for k, v in DTYPES.items()}
FLOAT_TAGS = ("F64", "F32", "F16", "BF16")
# A header is JSON text; 100 MB is the limit the reference implementation enforces.
_MAX_HEADER = 100_000_000


class CheckpointError(ValueError):
    """A checkpoint file or tensor is missing, malformed or disagrees with the config; names file and tensor."""


class SafetensorsFile:
    """A validated, memory-mapped view of one safetensors file.

    ``header[name] = (tag, shape, begin, end)``; :meth:`get` returns a numpy view (no copy).
    """

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path)
        if not self.path.is_file():
            raise CheckpointError(f"{self.path}: safetensors file not found")
        size = self.path.stat().st_size
        if size < 8:
            raise CheckpointError(f"{self.path}: truncated safetensors file ({size} bytes, no header length)")
        with open(self.path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            if n > _MAX_HEADER or 8 + n > size:
                raise CheckpointError(
                    f"{self.path}: truncated or corrupt safetensors file (header of {n} bytes, file of {size} bytes)"
                )
            raw = f.read(n)
        try:
            header = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise CheckpointError(f"{self.path}: corrupt safetensors header (not JSON: {err})") from None
        if not isinstance(header, dict):
            raise CheckpointError(f"{self.path}: corrupt safetensors header (not a JSON object)")
        self.metadata: dict[str, str] = header.pop("__metadata__", None) or {}
        self._data_start = 8 + n
        data_size = size - self._data_start
        self.header: dict[str, tuple[str, tuple[int, ...], int, int]] = {}
        for name, info in header.items():
            try:
                tag, shape, (begin, end) = info["dtype"], tuple(int(s) for s in info["shape"]), info["data_offsets"]
            except (KeyError, TypeError, ValueError):
                raise CheckpointError(f"{self.path}: tensor {name!r} has a malformed header entry {info!r}") from None
            if tag not in DTYPES:
                raise CheckpointError(f"{self.path}: tensor {name!r} has unsupported dtype {tag!r}")
            nbytes = math.prod(shape) * DTYPES[tag].itemsize
            if end - begin != nbytes or begin < 0:
                raise CheckpointError(
                    f"{self.path}: tensor {name!r} ({tag}{list(shape)}) needs {nbytes} bytes but its offsets "
                    f"[{begin}, {end}) span {end - begin}"
                )
            if end > data_size:
                raise CheckpointError(
                    f"{self.path}: truncated safetensors file: tensor {name!r} ends at byte {self._data_start + end} "
                    f"but the file has {size} bytes"
                )
            self.header[name] = (tag, shape, int(begin), int(end))
        self._mmap: np.memmap | None = None

    def keys(self) -> list[str]:
        """Returns the tensor names in file order."""
        return list(self.header)

    def dtype_tag(self, name: str) -> str:
        """Returns the safetensors dtype tag ("F32", "BF16", ...) of tensor ``name``."""
        return self.header[name][0]

    def shape(self, name: str) -> tuple[int, ...]:
        """Returns the shape of tensor ``name`` without reading it."""
        return self.header[name][1]

    def get(self, name: str) -> np.ndarray:
        """Returns tensor ``name`` as a read-only numpy view into the memory-mapped file."""
        if name not in self.header:
            raise CheckpointError(f"{self.path}: no tensor named {name!r}")
        tag, shape, begin, end = self.header[name]
        if self._mmap is None:
            total = self.path.stat().st_size - self._data_start
            if total == 0:
                return np.zeros(shape, DTYPES[tag])
            self._mmap = np.memmap(self.path, dtype=np.uint8, mode="r", offset=self._data_start, shape=(total,))
        return self._mmap[begin:end].view(DTYPES[tag]).reshape(shape)


def read_safetensors(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """Returns every tensor of the safetensors file at ``path`` as a name -> numpy array dict (memory-mapped)."""
    f = SafetensorsFile(path)
    return {name: f.get(name) for name in f.keys()}


def write_safetensors(
    path: str | os.PathLike[str], tensors: Mapping[str, np.ndarray], metadata: Mapping[str, str] | None = None
) -> Path:
    """Returns the path of a safetensors file written with ``tensors`` (numpy arrays, any supported dtype).

    Tensors are laid out in sorted-name order with 8-byte-aligned header padding, as the
    reference writer does, so transformers and the ``safetensors`` package read the file.
    """
    path = Path(path)
    header: dict[str, object] = {}
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    arrays = []
    offset = 0
    for name in sorted(tensors):
        arr = np.asarray(tensors[name])
        dt = arr.dtype.newbyteorder("<") if arr.dtype.byteorder == ">" else arr.dtype
        tag = _TAGS.get(np.dtype(dt))
        if tag is None:
            raise CheckpointError(f"{path}: tensor {name!r} has dtype {arr.dtype} which safetensors cannot store")
        arr = np.asarray(arr, dtype=dt, order="C")  # (ascontiguousarray would make scalars 1-d)
        header[name] = {"dtype": tag, "shape": list(arr.shape), "data_offsets": [offset, offset + arr.nbytes]}
        offset += arr.nbytes
        arrays.append(arr)
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % 8)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for arr in arrays:
            f.write(arr.tobytes())
    os.replace(tmp, path)  # never leave a half-written file under the real name
    return path
