"""A download-free retrieval benchmark over CPython's pydoc topics (for P3 PromptReps, P20 FIRST).

Documents are the prose paragraphs of ``pydoc_data.topics`` (the help texts ``help("for")`` shows,
~0.5 MB of English shipped with every CPython); each paragraph's topic (``"for"``, ``"dict"``,
``"customization"``, ...) is its topic id. A query is one sentence *held out* of a paragraph: the
sentence is removed from that document, so a retriever must find the paragraph from what is left
(the paraphrase-free analogue of an "inverse cloze" query). Graded relevance, as TREC qrels::

    qrel(q, d) = 2   if d is the paragraph q was cut from
                 1   if d is another paragraph of the same topic
                 0   otherwise

Queries are split into train / test halves by ``seed`` (the split a reranker fine-tune or any
choice of prompt must be made on is ``train``); documents are shared by both splits. Paragraphs
that are code (grammar rules, most lines indented) or short (< ``min_words``) are left out; paragraphs
with one sentence are documents without a query of their own.
Everything is deterministic in ``seed``; nothing is cached on disk.
"""

from __future__ import annotations

import dataclasses
import re

import numpy as np

__all__ = ["RetrievalSet", "pydocs_retrieval"]

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z(\"'`])")
_SPLITS = ("train", "test")


@dataclasses.dataclass(frozen=True)
class RetrievalSet:
    """Documents with topic ids, held-out-sentence queries with their source document, and the query split."""

    docs: tuple[str, ...]
    doc_topic: np.ndarray  # [D] int32 index into topics
    topics: tuple[str, ...]
    queries: tuple[str, ...]
    query_doc: np.ndarray  # [Q] int32: the document each query was cut from
    query_split: tuple[str, ...]  # [Q] "train" | "test"

    def split(self, name: str) -> np.ndarray:
        """Returns int64 indices of the queries in split ``name`` ("train" or "test")."""
        if name not in _SPLITS:
            raise ValueError(f"split must be one of {_SPLITS}, got {name!r}")
        return np.asarray([i for i, s in enumerate(self.query_split) if s == name], np.int64)

    def qrels(self, split: str | None = None) -> np.ndarray:
        """Returns float32 [Q, D] graded relevance (2 source paragraph, 1 same topic, 0 else) for ``split`` (None: all)."""
        rows = np.arange(len(self.queries)) if split is None else self.split(split)
        src = self.query_doc[rows]
        same_topic = self.doc_topic[None, :] == self.doc_topic[src][:, None]
        rel = same_topic.astype(np.float32)
        rel[np.arange(len(rows)), src] = 2.0
        return rel

    def query_texts(self, split: str | None = None) -> list[str]:
        """Returns the query strings of ``split`` (None: all), in the row order of :meth:`qrels`."""
        rows = range(len(self.queries)) if split is None else self.split(split)
        return [self.queries[i] for i in rows]


_BULLET = re.compile(r"\s*([*\-]|\d+\.|\(\d+\))\s")


def _is_code(paragraph: str) -> bool:
    """True for grammar rules, code examples and interpreter sessions (bulleted prose is indented too: kept)."""
    if "::=" in paragraph or _BULLET.match(paragraph):
        return "::=" in paragraph
    lines = [ln for ln in paragraph.split("\n") if ln.strip()]
    return sum(ln.startswith("   ") or ln.lstrip().startswith((">>>", "...")) for ln in lines) > len(lines) / 2


def _paragraphs(text: str) -> list[str]:
    return [" ".join(p.split()) for p in re.split(r"\n\s*\n", text) if p.strip() and not _is_code(p)]


def pydocs_retrieval(seed: int = 0, *, min_words: int = 20, min_query_words: int = 6,
                     test_fraction: float = 0.5) -> RetrievalSet:
    """Returns the pydocs retrieval set: every prose paragraph a document, one held-out-sentence query per usable one.

    Args:
      seed: picks the held-out sentence of each paragraph and the train/test split of the queries.
      min_words: paragraphs with fewer words are not documents; a query is only cut where the
        rest keeps ``min_words``.
      min_query_words: a sentence must have at least this many words to be a query.
      test_fraction: share of queries in the test split, in (0, 1).
    """
    if not (0.0 < test_fraction < 1.0):
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    if min_words < 1 or min_query_words < 1:
        raise ValueError(f"min_words and min_query_words must be >= 1, got {min_words} and {min_query_words}")
    from pydoc_data.topics import topics as pydoc_topics

    rng = np.random.default_rng(seed)
    docs, doc_topic, queries, query_doc = [], [], [], []
    topic_names = sorted(pydoc_topics)
    for t, name in enumerate(topic_names):
        for para in _paragraphs(pydoc_topics[name]):
            if len(para.split()) < min_words:
                continue
            sentences = _SENTENCE_END.split(para)
            # a query needs a long enough sentence and a document still long enough without it
            candidates = [i for i, s in enumerate(sentences) if len(s.split()) >= min_query_words
                          and len(para.split()) - len(s.split()) >= min_words] if len(sentences) > 1 else []
            if candidates:
                q = candidates[int(rng.integers(len(candidates)))]
                query_doc.append(len(docs))
                queries.append(sentences[q])
                para = " ".join(s for i, s in enumerate(sentences) if i != q)
            docs.append(para)
            doc_topic.append(t)
    used = sorted(set(doc_topic))
    remap = {t: i for i, t in enumerate(used)}
    n_test = int(round(test_fraction * len(queries)))
    is_test = np.zeros(len(queries), bool)
    is_test[rng.permutation(len(queries))[:n_test]] = True
    return RetrievalSet(
        docs=tuple(docs), doc_topic=np.asarray([remap[t] for t in doc_topic], np.int32),
        topics=tuple(topic_names[t] for t in used), queries=tuple(queries),
        query_doc=np.asarray(query_doc, np.int32), query_split=tuple("test" if x else "train" for x in is_test))
