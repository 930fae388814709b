"""Deterministic train/validation split by document."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence

from tokjax.data._corpora import Corpus

__all__ = ["split_corpus", "check_val_fraction"]


def check_val_fraction(val_fraction: float) -> float:
    """Returns ``val_fraction`` as a float after checking it lies in [0, 1)."""
    try:
        v = float(val_fraction)
    except (TypeError, ValueError):
        raise ValueError(f"val_fraction must be a number in [0, 1), got {val_fraction!r}") from None
    if isinstance(val_fraction, bool) or not (0.0 <= v < 1.0) or math.isnan(v):
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction!r}")
    return v


def _doc_key(doc: str, seed: int) -> bytes:
    h = hashlib.blake2b(digest_size=16, person=b"tokjax-split")
    h.update(str(int(seed)).encode("ascii"))
    h.update(b"\x00")
    h.update(doc.encode("utf-8", errors="surrogatepass"))
    return h.digest()


def split_corpus(
    corpus: Corpus | Sequence[str], val_fraction: float = 0.05, seed: int = 0
) -> tuple[list[str], list[str]]:
    """Returns ``(train_docs, val_docs)``, a deterministic split of the documents.

    Each document gets a BLAKE2b hash of ``(seed, document text)``; the
    ``round(val_fraction * n)`` documents with the smallest hashes form the
    validation split.  The result therefore depends only on the document texts
    and the seed (not on Python's salted ``hash``, the platform or the Python
    version), and identical documents always land on the same side.

    When ``val_fraction > 0`` and there are at least 2 documents, both splits
    hold at least one document.  ``val_fraction == 0`` gives an empty
    validation split.  Both lists keep the corpus order.

    Args:
      corpus: a :class:`Corpus` or a sequence of document strings.
      val_fraction: fraction of documents for validation, in [0, 1).
      seed: integer seed; a different seed gives a different split.
    """
    v = check_val_fraction(val_fraction)
    docs = list(corpus.documents if isinstance(corpus, Corpus) else corpus)
    for i, d in enumerate(docs):
        if not isinstance(d, str):
            raise TypeError(f"document {i} is {type(d).__name__}, expected str")
    n = len(docs)
    if v == 0.0 or n == 0:
        return docs, []
    if n == 1:
        return docs, []
    n_val = int(math.floor(v * n + 0.5))
    n_val = min(max(n_val, 1), n - 1)
    order = sorted(range(n), key=lambda i: (_doc_key(docs[i], seed), i))
    val_idx = set(order[:n_val])
    train = [d for i, d in enumerate(docs) if i not in val_idx]
    val = [d for i, d in enumerate(docs) if i in val_idx]
    return train, val
