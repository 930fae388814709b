"""TokenDataset: a corpus tokenized, split and packed into training windows."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator, Sequence
from typing import Any, Protocol

import numpy as np

from tokjax.data._corpora import Corpus, load_corpus
from tokjax.data._packing import batches as _batches
from tokjax.data._packing import _check_pos_int, pack_sequences
from tokjax.data._split import check_val_fraction, split_corpus

__all__ = ["TokenDataset", "Tokenizer"]


class Tokenizer(Protocol):
    """Anything with ``encode(str) -> list[int]`` (and optionally ``eos_id``/``bos_id``)."""

    def encode(self, text: str) -> Sequence[int]: ...


def _encode(tokenizer: Any, text: str) -> np.ndarray:
    out = tokenizer.encode(text)
    ids = getattr(out, "ids", out)  # also accept HF `tokenizers.Encoding`
    return np.asarray(ids, dtype=np.int64).reshape(-1)


def _num_bytes(docs: Sequence[str]) -> int:
    return sum(len(d.encode("utf-8", errors="surrogatepass")) for d in docs)


@dataclasses.dataclass(frozen=True)
class TokenDataset:
    """Packed train/validation token windows plus the byte counts for bits-per-byte.

    Attributes:
      train, val: int32 arrays ``[N, seq_len + 1]`` from :func:`pack_sequences`
        (``val`` has 0 rows when there is no validation text).
      seq_len: model context length; windows hold ``seq_len + 1`` tokens.
      train_num_bytes, val_num_bytes: UTF-8 bytes of the train/val documents.
      train_num_tokens, val_num_tokens: tokens the tokenizer produced for them
        (without the bos/eos ids added between documents).
      bytes_per_token: ``val_num_bytes / val_num_tokens`` (train figures when
        the validation split is empty).  Bits per byte of a mean per-token loss
        ``L`` in nats is ``L / ln(2) / bytes_per_token``; see :meth:`bits_per_byte`.
      eos_id, bos_id: the separator ids used when packing (``None`` if unused).
      name: corpus name (or ``"custom"``).
    """

    train: np.ndarray
    val: np.ndarray
    seq_len: int
    train_num_bytes: int
    val_num_bytes: int
    train_num_tokens: int
    val_num_tokens: int
    bytes_per_token: float
    eos_id: int | None = None
    bos_id: int | None = None
    name: str = "custom"

    @classmethod
    def from_texts(
        cls,
        train_docs: Sequence[str],
        val_docs: Sequence[str],
        tokenizer: Tokenizer,
        seq_len: int,
        *,
        eos_id: int | None = None,
        bos_id: int | None = None,
        name: str = "custom",
    ) -> "TokenDataset":
        """Returns a TokenDataset from already split documents.

        ``eos_id``/``bos_id`` default to the tokenizer's ``eos_id``/``bos_id``
        attributes when it has them.  An empty ``val_docs`` gives a ``val``
        array with 0 rows; a non-empty one too short for one window raises
        ``ValueError``.
        """
        seq_len = _check_pos_int("seq_len", seq_len)
        if eos_id is None:
            eos_id = getattr(tokenizer, "eos_id", None)
        if bos_id is None:
            bos_id = getattr(tokenizer, "bos_id", None)
        train_toks = [_encode(tokenizer, d) for d in train_docs]
        val_toks = [_encode(tokenizer, d) for d in val_docs]
        try:
            train = pack_sequences(train_toks, seq_len, eos_id=eos_id, bos_id=bos_id)
        except ValueError as e:
            raise ValueError(f"train split of {name!r}: {e}") from None
        if val_toks:
            try:
                val = pack_sequences(val_toks, seq_len, eos_id=eos_id, bos_id=bos_id)
            except ValueError as e:
                raise ValueError(
                    f"validation split of {name!r}: {e}; use a larger val_fraction or seq_len smaller"
                ) from None
        else:
            val = np.zeros((0, seq_len + 1), np.int32)
        tr_b, va_b = _num_bytes(train_docs), _num_bytes(val_docs)
        tr_t = int(sum(t.size for t in train_toks))
        va_t = int(sum(t.size for t in val_toks))
        if va_t > 0:
            bpt = va_b / va_t
        else:
            bpt = tr_b / tr_t if tr_t else float("nan")
        return cls(
            train=train,
            val=val,
            seq_len=seq_len,
            train_num_bytes=tr_b,
            val_num_bytes=va_b,
            train_num_tokens=tr_t,
            val_num_tokens=va_t,
            bytes_per_token=float(bpt),
            eos_id=None if eos_id is None else int(eos_id),
            bos_id=None if bos_id is None else int(bos_id),
            name=name,
        )

    @classmethod
    def from_corpus(
        cls,
        name: str | Corpus,
        tokenizer: Tokenizer,
        seq_len: int,
        val_fraction: float = 0.05,
        *,
        seed: int = 0,
        max_bytes: int | None = None,
        eos_id: int | None = None,
        bos_id: int | None = None,
    ) -> "TokenDataset":
        """Returns a TokenDataset built from a bundled corpus (or a :class:`Corpus`).

        The corpus is split by document with :func:`split_corpus` (``val_fraction``,
        ``seed``), each split is tokenized with ``tokenizer.encode`` and packed
        with :func:`pack_sequences`.  Nothing is cached on disk.
        """
        check_val_fraction(val_fraction)
        corpus = name if isinstance(name, Corpus) else load_corpus(name, max_bytes=max_bytes)
        train_docs, val_docs = split_corpus(corpus, val_fraction=val_fraction, seed=seed)
        return cls.from_texts(
            train_docs, val_docs, tokenizer, seq_len, eos_id=eos_id, bos_id=bos_id, name=corpus.name
        )

    def batches(
        self,
        batch_size: int,
        *,
        seed: int,
        split: str = "train",
        epochs: int | None = None,
        shuffle: bool = True,
        start_step: int = 0,
    ) -> Iterator[dict[str, np.ndarray]]:
        """Returns :func:`tokjax.data.batches` over the ``"train"`` or ``"val"`` windows."""
        if split not in ("train", "val"):
            raise ValueError(f"split must be 'train' or 'val', got {split!r}")
        return _batches(
            getattr(self, split),
            batch_size,
            seed=seed,
            epochs=epochs,
            shuffle=shuffle,
            start_step=start_step,
        )

    def bits_per_byte(self, loss_nats_per_token: float) -> float:
        """Returns bits per UTF-8 byte for a mean per-token loss given in nats."""
        return float(loss_nats_per_token) / math.log(2.0) / self.bytes_per_token
