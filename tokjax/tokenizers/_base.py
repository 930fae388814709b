"""The host-side ``Tokenizer`` protocol and helpers shared by its implementations."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np

DEFAULT_SPECIAL_TOKENS: tuple[str, ...] = ("<|bos|>", "<|eos|>", "<|pad|>")

# Names used by common checkpoints; lets ``from_hf`` and ``train`` assign the
# bos/eos/pad roles without the caller spelling them out.
_ROLE_NAMES: dict[str, tuple[str, ...]] = {
    "bos": ("<|bos|>", "<s>", "<bos>", "<|begin_of_text|>", "<|startoftext|>", "[BOS]"),
    "eos": ("<|eos|>", "</s>", "<eos>", "<|end_of_text|>", "<|endoftext|>", "[EOS]"),
    "pad": ("<|pad|>", "<pad>", "[PAD]", "<|padding|>"),
}


class SpecialIdsMixin:
    """Mixin with the special-id properties every tokjax tokenizer shares (the class sets ``_bos_id`` etc.)."""

    @property
    def bos_id(self) -> int | None:
        return self._bos_id

    @property
    def eos_id(self) -> int | None:
        return self._eos_id

    @property
    def pad_id(self) -> int | None:
        return self._pad_id

    @property
    def special_ids(self) -> frozenset[int]:
        return self._special_ids


class WrappedTokenizer:
    """A tokenizer transform: ``encode`` re-encodes text through ``base`` (subclasses define
    ``_encode_text``), everything else -- decode, byte tables, special ids -- is ``base``'s."""

    def __init__(self, base: Any) -> None:
        self.base = base

    def __getattr__(self, name: str) -> Any:
        # Only reached for names not defined here: the rest of the base's Tokenizer protocol.
        if name == "base":  # not set yet (copy/pickle): no infinite recursion
            raise AttributeError(name)
        return getattr(self.base, name)

    def _encode_text(self, text: str) -> list[int]:
        raise NotImplementedError(f"{type(self).__name__} must define _encode_text(text) -> ids")

    def encode(self, text: str, *, add_bos: bool = False, add_eos: bool = False) -> list[int]:
        """Returns the ids of ``text`` under this transform, with the base's bos/eos when asked."""
        ids = self._encode_text(text)
        if add_bos or add_eos:
            # Reuse the base's bos/eos handling (and its errors) on an empty text.
            wrap = self.base.encode("", add_bos=add_bos, add_eos=add_eos)
            ids = wrap[: int(add_bos)] + ids + wrap[int(add_bos) :]
        return ids

    def encode_batch(self, texts: Iterable[str], *, add_bos: bool = False, add_eos: bool = False) -> list[list[int]]:
        """Returns ``[encode(t) for t in texts]``."""
        if isinstance(texts, (str, bytes)):
            raise ValueError("encode_batch expects an iterable of str, got a single str; use encode()")
        return [self.encode(t, add_bos=add_bos, add_eos=add_eos) for t in texts]


class _Infer:
    """Sentinel: infer a special-token role from well-known token names."""

    def __repr__(self) -> str:
        return "INFER"


INFER: Any = _Infer()


@runtime_checkable
class Tokenizer(Protocol):
    """Host-side tokenizer: text <-> integer ids, plus byte tables for byte-level methods.

    Conventions every implementation follows:

    * ``encode`` treats its input as literal text: a special token's spelling
      inside the text is encoded as ordinary text, never as the special id,
      so ``decode(encode(s)) == s`` for every ``str`` ``s``.
    * Special tokens decode to nothing and ``id_to_bytes[i] == b""`` for them.
    * ``b"".join(id_to_bytes[i] for i in ids)`` is the UTF-8 encoding of
      ``decode(ids)`` whenever those bytes are valid UTF-8.
    """

    @property
    def vocab_size(self) -> int:
        """Number of ids; valid ids are ``0 .. vocab_size - 1``."""
        ...

    @property
    def bos_id(self) -> int | None: ...

    @property
    def eos_id(self) -> int | None: ...

    @property
    def pad_id(self) -> int | None: ...

    @property
    def special_ids(self) -> frozenset[int]: ...

    @property
    def id_to_bytes(self) -> list[bytes]: ...

    @property
    def bytes_to_id(self) -> dict[bytes, int]: ...

    def encode(self, text: str, *, add_bos: bool = False, add_eos: bool = False) -> list[int]: ...

    def encode_batch(
        self, texts: Iterable[str], *, add_bos: bool = False, add_eos: bool = False
    ) -> list[list[int]]: ...

    def decode(self, ids: Sequence[int] | np.ndarray) -> str: ...

    def decode_batch(self, batch: Iterable[Sequence[int]] | np.ndarray) -> list[str]: ...

    def token_bytes(self, id: int) -> bytes: ...


def pad_batch(
    seqs: Iterable[Sequence[int] | np.ndarray],
    pad_id: int,
    length: int | None = None,
    left: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(ids, lengths)``: an int32 ``[B, T]`` array padded with ``pad_id`` and int32 ``[B]`` true lengths.

    ``T`` is ``length`` if given, else the longest sequence. ``left=True`` puts
    the padding before the tokens (what batched autoregressive decoding
    wants). A sequence longer than ``length`` raises ValueError rather than
    being truncated silently.
    """
    if pad_id is None or isinstance(pad_id, bool) or not isinstance(pad_id, (int, np.integer)):
        raise ValueError(f"pad_batch needs an integer pad_id, got {pad_id!r}")
    rows = [_as_id_list(s, what=f"sequence {i}") for i, s in enumerate(seqs)]
    lengths = np.array([len(r) for r in rows], dtype=np.int32)
    longest = int(lengths.max()) if rows else 0
    if length is None:
        width = longest
    else:
        if isinstance(length, bool) or not isinstance(length, (int, np.integer)) or length < 0:
            raise ValueError(f"length must be a non-negative int or None, got {length!r}")
        width = int(length)
        if longest > width:
            i = int(np.argmax(lengths))
            raise ValueError(f"sequence {i} has {longest} tokens, more than length={width}")
    out = np.full((len(rows), width), pad_id, dtype=np.int32)
    for i, row in enumerate(rows):
        if not row:
            continue
        if left:
            out[i, width - len(row) :] = row
        else:
            out[i, : len(row)] = row
    return out, lengths


def _as_id_list(ids: Any, *, what: str = "ids") -> list[int]:
    """Return ``ids`` (list, tuple, numpy or jax array) as a list of Python ints; ValueError otherwise."""
    if isinstance(ids, (str, bytes)):
        raise ValueError(f"{what} must be a sequence of integer ids, got {type(ids).__name__}")
    if isinstance(ids, list) and all(type(i) is int for i in ids):
        return ids
    try:
        arr = np.asarray(ids)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{what} must be a sequence of integer ids: {err}") from None
    if arr.size == 0:
        return []
    if arr.ndim != 1:
        raise ValueError(f"{what} must be 1-D, got shape {arr.shape}")
    if arr.dtype == np.bool_ or not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"{what} must contain integers, got dtype {arr.dtype}")
    return arr.tolist()


def check_ids(ids: Any, vocab_size: int, *, what: str = "ids") -> list[int]:
    """Return ``ids`` as a list of ints after checking each lies in ``[0, vocab_size)``."""
    out = _as_id_list(ids, what=what)
    if out:
        lo, hi = min(out), max(out)
        if lo < 0 or hi >= vocab_size:
            bad = lo if lo < 0 else hi
            raise ValueError(f"{what} contain id {bad} outside [0, {vocab_size})")
    return out


def check_text(text: Any, *, what: str = "text") -> str:
    """Return ``text`` if it is a str, else raise ValueError naming the type."""
    if not isinstance(text, str):
        raise ValueError(f"{what} must be a str, got {type(text).__name__}")
    return text


def check_texts(texts: Any) -> list[str]:
    """Return ``texts`` as a list of str; a bare str or a non-str element raises ValueError."""
    if isinstance(texts, (str, bytes)):
        raise ValueError(
            f"encode_batch expects an iterable of str, got a single {type(texts).__name__}; use encode()"
        )
    try:
        items = list(texts)
    except TypeError:
        raise ValueError(f"encode_batch expects an iterable of str, got {type(texts).__name__}") from None
    for i, t in enumerate(items):
        check_text(t, what=f"texts[{i}]")
    return items


def batch_rows(batch: Any) -> list[Any]:
    """Return the rows of a 2-D array or an iterable of id sequences."""
    if isinstance(batch, (str, bytes)):
        raise ValueError(f"decode_batch expects a batch of id sequences, got {type(batch).__name__}")
    if hasattr(batch, "ndim") and hasattr(batch, "shape"):
        arr = np.asarray(batch)
        if arr.ndim != 2:
            raise ValueError(f"decode_batch expects a 2-D array, got shape {arr.shape}")
        return list(arr)
    try:
        return list(batch)
    except TypeError:
        raise ValueError(f"decode_batch expects a batch of id sequences, got {type(batch).__name__}") from None


def add_bos_eos(ids: list[int], bos_id: int | None, eos_id: int | None, add_bos: bool, add_eos: bool) -> list[int]:
    """Return ``ids`` with bos prepended / eos appended as requested; ValueError if the role is unset."""
    if add_bos:
        if bos_id is None:
            raise ValueError("add_bos=True but this tokenizer has no bos token")
        ids = [bos_id, *ids]
    if add_eos:
        if eos_id is None:
            raise ValueError("add_eos=True but this tokenizer has no eos token")
        ids = [*ids, eos_id]
    return ids


def resolve_role(role: str, choice: Any, specials: Mapping[str, int]) -> int | None:
    """Return the id playing ``role`` (bos/eos/pad) among ``specials`` (token -> id), or None.

    ``choice`` is INFER (pick the first well-known name present), None (no
    such token), a token string, or an id; a string or id that is not one of
    the special tokens raises ValueError.
    """
    if choice is None:
        return None
    if choice is INFER:
        for name in _ROLE_NAMES[role]:
            if name in specials:
                return specials[name]
        return None
    if isinstance(choice, str):
        if choice not in specials:
            raise ValueError(
                f"{role}_token {choice!r} is not a special token; special tokens are {sorted(specials)}"
            )
        return specials[choice]
    if isinstance(choice, (int, np.integer)) and not isinstance(choice, bool):
        if int(choice) not in specials.values():
            raise ValueError(f"{role}_token id {int(choice)} is not a special token id")
        return int(choice)
    raise ValueError(f"{role}_token must be a str, an int id or None, got {choice!r}")


def check_special_tokens(special_tokens: Any) -> tuple[str, ...]:
    """Return ``special_tokens`` as a tuple of distinct non-empty strings; ValueError otherwise."""
    if isinstance(special_tokens, str):
        raise ValueError("special_tokens must be a sequence of str, not a single str")
    out = tuple(special_tokens)
    for tok in out:
        if not isinstance(tok, str) or not tok:
            raise ValueError(f"special tokens must be non-empty str, got {tok!r}")
    if len(set(out)) != len(out):
        raise ValueError(f"special_tokens contain duplicates: {out}")
    return out


def build_bytes_to_id(id_to_bytes: Sequence[bytes], special_ids: frozenset[int]) -> dict[bytes, int]:
    """Return the inverse of ``id_to_bytes`` over non-special tokens; on duplicates the smallest id wins."""
    out: dict[bytes, int] = {}
    for i, b in enumerate(id_to_bytes):
        if i in special_ids or not b:
            continue
        out.setdefault(b, i)
    return out
