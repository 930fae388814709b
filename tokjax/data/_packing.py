"""Sequence packing and a deterministic, resumable batch iterator."""

from __future__ import annotations

import operator
from collections.abc import Iterable, Iterator, Sequence

import numpy as np

__all__ = [
    "pack_sequences",
    "batches",
    "batch_indices",
    "steps_per_epoch",
    "epoch_permutation",
]

_INT32_MAX = int(np.iinfo(np.int32).max)


def check_int(name: str, value, lo: int = 0) -> int:
    """Returns ``value`` as a Python int; raises ValueError unless it is an integer (bools and floats are
    not, numpy integers are) that is >= ``lo``."""
    try:
        v = operator.index(value)
    except TypeError:
        kind = "a positive int" if lo == 1 else ("a non-negative int" if lo == 0 else f"an int >= {lo}")
        raise ValueError(f"{name} must be {kind}, got {value!r}") from None
    if v < lo:
        raise ValueError(f"{name} must be >= {lo}, got {v}")
    return v


def _check_pos_int(name: str, value) -> int:
    return check_int(name, value, 1)


def _check_nonneg_int(name: str, value) -> int:
    return check_int(name, value, 0)


def _check_token_id(name: str, value) -> int | None:
    if value is None:
        return None
    try:
        v = operator.index(value)
    except TypeError:
        raise ValueError(f"{name} must be an int or None, got {value!r}") from None
    if not 0 <= v <= _INT32_MAX:
        raise ValueError(f"{name} must be in [0, {_INT32_MAX}], got {v}")
    return v


def pack_sequences(
    token_lists: Iterable[Sequence[int] | np.ndarray],
    seq_len: int,
    *,
    eos_id: int | None = None,
    bos_id: int | None = None,
) -> np.ndarray:
    """Returns int32 windows ``[N, seq_len + 1]`` cut from the concatenated documents.

    Each document becomes ``[bos_id] + tokens + [eos_id]`` (the optional ids are
    left out when ``None``); the documents are concatenated in order and cut
    into consecutive, non-overlapping windows of ``seq_len + 1`` tokens, so a
    model reads ``x[:, :-1]`` and predicts ``x[:, 1:]``.  The ragged tail that
    does not fill a whole window is dropped.

    Raises:
      ValueError: ``seq_len < 1``, a token id outside ``[0, 2**31 - 1]``, or
        fewer tokens in total than one window needs.
    """
    seq_len = _check_pos_int("seq_len", seq_len)
    eos_id = _check_token_id("eos_id", eos_id)
    bos_id = _check_token_id("bos_id", bos_id)
    window = seq_len + 1
    pieces: list[np.ndarray] = []
    bos = None if bos_id is None else np.array([bos_id], dtype=np.int64)
    eos = None if eos_id is None else np.array([eos_id], dtype=np.int64)
    n_docs = 0
    for i, toks in enumerate(token_lists):
        arr = np.asarray(toks)
        if arr.ndim != 1:
            raise ValueError(f"document {i} must be a 1-D token list, got shape {arr.shape}")
        if arr.size:
            if not np.issubdtype(arr.dtype, np.integer):
                raise ValueError(f"document {i} has non-integer tokens (dtype {arr.dtype})")
            lo, hi = int(arr.min()), int(arr.max())
            if lo < 0 or hi > _INT32_MAX:
                raise ValueError(
                    f"document {i} has token ids outside [0, {_INT32_MAX}] (min {lo}, max {hi})"
                )
        n_docs += 1
        if bos is not None:
            pieces.append(bos)
        if arr.size:
            pieces.append(arr.astype(np.int64, copy=False))
        if eos is not None:
            pieces.append(eos)
    stream = np.concatenate(pieces) if pieces else np.zeros((0,), np.int64)
    total = int(stream.size)
    if total < window:
        raise ValueError(
            f"pack_sequences: only {total} tokens in {n_docs} document(s) "
            f"(including bos/eos), but one window needs seq_len + 1 = {window} tokens"
        )
    n = total // window
    return stream[: n * window].astype(np.int32).reshape(n, window)


# --------------------------------------------------------------------------- batching


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """Returns SplitMix64's finaliser of a uint64 array (a bijection on uint64)."""
    with np.errstate(over="ignore"):
        x = x + np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        x = x ^ (x >> np.uint64(31))
    return x


def _mix_key(seed: int, epoch: int) -> np.uint64:
    s = np.array([seed & 0xFFFFFFFFFFFFFFFF], dtype=np.uint64)
    k = _splitmix64(s)
    k = _splitmix64(k ^ np.array([epoch & 0xFFFFFFFFFFFFFFFF], dtype=np.uint64))
    return k[0]


def epoch_permutation(num_windows: int, epoch: int, *, seed: int, shuffle: bool = True) -> np.ndarray:
    """Returns the int64 order in which windows are visited during ``epoch``.

    The permutation is an argsort of SplitMix64 hashes of ``index ^ key(seed,
    epoch)``; it is pure integer arithmetic, so it is identical on every
    platform and NumPy/Python version.  With ``shuffle=False`` it is
    ``arange(num_windows)``.
    """
    num_windows = _check_nonneg_int("num_windows", num_windows)
    idx = np.arange(num_windows, dtype=np.uint64)
    if not shuffle:
        return idx.astype(np.int64)
    key = _mix_key(int(seed), _check_nonneg_int("epoch", epoch))
    h = _splitmix64(idx ^ key)
    return np.argsort(h, kind="stable").astype(np.int64)


def steps_per_epoch(num_windows: int, batch_size: int) -> int:
    """Returns the number of full batches per epoch (``num_windows // batch_size``)."""
    num_windows = _check_nonneg_int("num_windows", num_windows)
    batch_size = _check_pos_int("batch_size", batch_size)
    return num_windows // batch_size


def batch_indices(
    num_windows: int, batch_size: int, step: int, *, seed: int, shuffle: bool = True
) -> np.ndarray:
    """Returns the window indices (int64 ``[batch_size]``) of global batch ``step``.

    Step ``s`` belongs to epoch ``s // steps_per_epoch``; each epoch visits a
    fresh permutation and drops the ``num_windows % batch_size`` windows left
    over at its end.  This is a pure function of its arguments, which is what
    makes :func:`batches` resumable.
    """
    spe = steps_per_epoch(num_windows, batch_size)
    if spe == 0:
        raise ValueError(
            f"batch_size={batch_size} is larger than the number of windows ({num_windows})"
        )
    step = _check_nonneg_int("step", step)
    epoch, k = divmod(step, spe)
    perm = epoch_permutation(num_windows, epoch, seed=seed, shuffle=shuffle)
    return perm[k * batch_size : (k + 1) * batch_size]


def batches(
    packed: np.ndarray,
    batch_size: int,
    *,
    seed: int,
    epochs: int | None = None,
    shuffle: bool = True,
    start_step: int = 0,
) -> Iterator[dict[str, np.ndarray]]:
    """Returns an iterator of ``{"tokens": int32 [batch_size, seq_len + 1]}`` batches.

    Batches are drawn from ``packed`` (as made by :func:`pack_sequences`) in a
    per-epoch permutation fixed by ``seed`` (see :func:`batch_indices`); each
    epoch yields ``len(packed) // batch_size`` full batches.  ``epochs=None``
    iterates forever.

    ``start_step=s`` yields exactly the batches that an uninterrupted iteration
    would yield from its ``s``-th batch (0-based) on, so a training run resumed
    at step ``s`` sees bitwise-identical data.  With ``epochs`` set, a
    ``start_step`` at or past the end yields nothing.

    Raises:
      ValueError: ``batch_size < 1``, ``batch_size > len(packed)``, ``epochs <
        0``, ``start_step < 0`` or ``packed`` not 2-D.
    """
    packed = np.asarray(packed)
    if packed.ndim != 2:
        raise ValueError(f"packed must be a 2-D [N, seq_len + 1] array, got shape {packed.shape}")
    batch_size = _check_pos_int("batch_size", batch_size)
    start_step = _check_nonneg_int("start_step", start_step)
    if epochs is not None:
        epochs = _check_nonneg_int("epochs", epochs)
    n = packed.shape[0]
    spe = n // batch_size
    if spe == 0:
        raise ValueError(
            f"batch_size={batch_size} is larger than the number of packed windows ({n})"
        )
    seed = int(seed)
    if packed.dtype != np.int32:
        packed = packed.astype(np.int32)
    return _batch_gen(packed, batch_size, spe, seed, epochs, shuffle, start_step)


def _batch_gen(packed, batch_size, spe, seed, epochs, shuffle, start_step):
    n = packed.shape[0]
    total = None if epochs is None else epochs * spe
    step = start_step
    cur_epoch, perm = -1, None
    while total is None or step < total:
        epoch, k = divmod(step, spe)
        if epoch != cur_epoch:
            perm = epoch_permutation(n, epoch, seed=seed, shuffle=shuffle)
            cur_epoch = epoch
        idx = perm[k * batch_size : (k + 1) * batch_size]
        yield {"tokens": packed[idx]}
        step += 1
