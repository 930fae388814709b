"""Vectorised numpy dequantisation of the GGML tensor types tokjax reads from GGUF files.

Each quantised type stores a row of ``ne0`` values as ``ne0 / 32`` blocks of 32 values:

* ``Q8_0`` (34 bytes): float16 scale ``d``, then 32 int8 ``q``;          x = d * q
* ``Q4_0`` (18 bytes): float16 ``d``, then 16 bytes of 4-bit ``q``;        x = d * (q - 8)
* ``Q4_1`` (20 bytes): float16 ``d``, float16 min ``m``, 16 bytes of ``q``; x = d * q + m

In the 4-bit types byte ``j`` holds value ``j`` in its low nibble and value ``j + 16`` in its high
nibble. Arithmetic is float32 in the order ggml's reference dequantiser uses, so the result is
bit-identical to ``gguf.quants.dequantize`` (the tests check this on random blocks).
"""

from __future__ import annotations

import numpy as np

# GGML type id -> (name, values per block, bytes per block); ids are ggml's enum ggml_type.
GGML_TYPES: dict[int, tuple[str, int, int]] = {
    0: ("F32", 1, 4),
    1: ("F16", 1, 2),
    2: ("Q4_0", 32, 18),
    3: ("Q4_1", 32, 20),
    8: ("Q8_0", 32, 34),
    30: ("BF16", 1, 2),
}
SUPPORTED = tuple(name for name, _, _ in GGML_TYPES.values())


def type_name(type_id: int) -> str:
    """Returns ggml's name for a type id (``Q5_K``, ...), or ``type <id>`` when even gguf does not know it."""
    if int(type_id) in GGML_TYPES:
        return GGML_TYPES[int(type_id)][0]
    try:
        from gguf import GGMLQuantizationType

        return GGMLQuantizationType(int(type_id)).name
    except ValueError:
        return f"type {int(type_id)}"


def nbytes(type_id: int, n_elements: int) -> int:
    """Returns the bytes a tensor of ``n_elements`` values of a supported type occupies."""
    _, block, size = GGML_TYPES[int(type_id)]
    return n_elements // block * size


def _f16(blocks: np.ndarray, lo: int) -> np.ndarray:
    """Returns the float16 at byte offset ``lo`` of every block, as float32 [n, 1]."""
    return np.ascontiguousarray(blocks[:, lo : lo + 2]).view(np.float16).astype(np.float32)


def _nibbles(qs: np.ndarray) -> np.ndarray:
    """Returns the 4-bit values of [n, 16] packed bytes as uint8 [n, 32] (low nibbles first)."""
    return np.concatenate([qs & np.uint8(0x0F), qs >> np.uint8(4)], axis=1)


def dequantize(raw: np.ndarray, type_id: int, shape: tuple[int, ...]) -> np.ndarray:
    """Returns the float32 array of ``shape`` (numpy order, row length last) stored in ``raw``.

    ``raw`` holds the tensor's bytes (any dtype; it is viewed as bytes). Raises ValueError for a
    type outside :data:`SUPPORTED`, a row length that is not a whole number of blocks, or a byte
    count that does not match ``shape``.
    """
    type_id = int(type_id)
    if type_id not in GGML_TYPES:
        raise ValueError(f"unsupported GGML type {type_name(type_id)}; tokjax dequantises {', '.join(SUPPORTED)}")
    name, block, size = GGML_TYPES[type_id]
    n = int(np.prod(shape, dtype=np.int64))
    if shape and shape[-1] % block:
        raise ValueError(f"{name}: row length {shape[-1]} is not a multiple of the block size {block}")
    data = np.ascontiguousarray(raw).reshape(-1).view(np.uint8)
    if data.size != n // block * size:
        raise ValueError(f"{name}: {data.size} bytes for shape {list(shape)}, expected {n // block * size}")
    if name == "F32":
        out = data.view(np.float32)
    elif name == "F16":
        out = data.view(np.float16).astype(np.float32)
    elif name == "BF16":
        # bfloat16 is the top half of a float32.
        out = (data.view(np.uint16).astype(np.uint32) << np.uint32(16)).view(np.float32)
    else:
        blocks = data.reshape(-1, size)
        if name == "Q8_0":
            out = blocks[:, 2:].view(np.int8).astype(np.float32) * _f16(blocks, 0)
        elif name == "Q4_0":
            q = _nibbles(blocks[:, 2:]).astype(np.int8) - np.int8(8)
            out = _f16(blocks, 0) * q.astype(np.float32)
        else:  # Q4_1
            out = _f16(blocks, 0) * _nibbles(blocks[:, 4:]).astype(np.float32) + _f16(blocks, 2)
    return out.reshape(shape)
