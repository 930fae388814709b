"""``ByteTokenizer``: one token per UTF-8 byte, the trivial byte-level baseline."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from ._base import (
    SpecialIdsMixin,
    DEFAULT_SPECIAL_TOKENS,
    INFER,
    add_bos_eos,
    batch_rows,
    check_ids,
    check_special_tokens,
    check_text,
    check_texts,
    resolve_role,
)


class ByteTokenizer(SpecialIdsMixin):
    """Tokenizer whose ids ``0..255`` are the bytes themselves, followed by special tokens.

    ``ByteTokenizer()`` has vocab 259: bytes, then ``<|bos|>`` (256),
    ``<|eos|>`` (257), ``<|pad|>`` (258).
    """

    def __init__(
        self,
        special_tokens: Sequence[str] = DEFAULT_SPECIAL_TOKENS,
        *,
        bos_token: Any = INFER,
        eos_token: Any = INFER,
        pad_token: Any = INFER,
    ) -> None:
        self.special_tokens = check_special_tokens(special_tokens)
        specials = {tok: 256 + i for i, tok in enumerate(self.special_tokens)}
        self._specials = specials
        self._bos_id = resolve_role("bos", bos_token, specials)
        self._eos_id = resolve_role("eos", eos_token, specials)
        self._pad_id = resolve_role("pad", pad_token, specials)
        self._special_ids = frozenset(specials.values())
        self._id_to_bytes = [bytes([b]) for b in range(256)] + [b""] * len(self.special_tokens)
        self._bytes_to_id = {bytes([b]): b for b in range(256)}
        self.digits = "none"

    def __repr__(self) -> str:
        return f"ByteTokenizer(vocab_size={self.vocab_size}, special_tokens={self.special_tokens})"

    @property
    def vocab_size(self) -> int:
        """Number of ids: 256 bytes plus the special tokens."""
        return 256 + len(self.special_tokens)

    @property
    def id_to_bytes(self) -> list[bytes]:
        return self._id_to_bytes

    @property
    def bytes_to_id(self) -> dict[bytes, int]:
        return self._bytes_to_id

    def token_bytes(self, id: int) -> bytes:
        """Return the bytes token ``id`` decodes to (``b""`` for special tokens)."""
        (i,) = check_ids([id], self.vocab_size, what="id")
        return self._id_to_bytes[i]

    def token_to_id(self, token: str) -> int | None:
        """Return the id of a special token name, or None."""
        return self._specials.get(token)

    def encode(self, text: str, *, add_bos: bool = False, add_eos: bool = False) -> list[int]:
        """Return the UTF-8 bytes of ``text`` as ids, optionally wrapped in bos/eos."""
        check_text(text)
        try:
            ids = list(text.encode("utf-8"))
        except UnicodeEncodeError as err:
            raise ValueError(f"text is not encodable as UTF-8 (lone surrogate?): {err}") from None
        return add_bos_eos(ids, self._bos_id, self._eos_id, add_bos, add_eos)

    def encode_batch(
        self, texts: Iterable[str], *, add_bos: bool = False, add_eos: bool = False
    ) -> list[list[int]]:
        """Return ``[encode(t) for t in texts]``."""
        return [self.encode(t, add_bos=add_bos, add_eos=add_eos) for t in check_texts(texts)]

    def decode(self, ids: Sequence[int] | np.ndarray) -> str:
        """Return the text for ``ids``; special tokens are dropped, invalid UTF-8 becomes U+FFFD."""
        out = check_ids(ids, self.vocab_size)
        return bytes(i for i in out if i < 256).decode("utf-8", errors="replace")

    def decode_batch(self, batch: Iterable[Sequence[int]] | np.ndarray) -> list[str]:
        """Return ``[decode(ids) for ids in batch]``."""
        return [self.decode(row) for row in batch_rows(batch)]
