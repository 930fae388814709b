"""A synthetic two-language corpus for few-shot translation (P76 SAP's tiny check).

Language: ``n_words`` source words and ``n_words`` target words; a fixed random lexicon maps each
source word to one target word (seeded by ``lexicon_seed``, the "language"), and the target
sentence is the word-by-word translation, with each adjacent pair swapped (positions 2i and 2i+1,
like adjective-noun order) when ``swap_pairs`` (then translating needs a reordering too).
Sentences are ``min_len..max_len`` uniform random source words.

Token layout (:class:`TranslationVocab`): ``pad=0, bos=1, eq=2 ("="), sep=3 (";")``, then the
source words, the target words, and ``n_sentinels`` sentinel ids at the top of the vocabulary
(``sentinels[0] = vocab_size - 1`` is T5's ``<extra_id_0>``). A pair reads ``x_1 .. x_n = y_1 .. y_n ;``.

* :func:`translation_pairs` draws pairs;
* :func:`pair_stream_windows` builds pre-training text: documents ``[bos] pair pair ...`` cut into
  windows of a fixed width at random offsets (the same windows serve a causal LM and a
  span-corruption model, so both see equal data);
* :func:`few_shot_prompts` builds evaluation prompts ``[bos] shot_1 .. shot_m x =`` with the
  reference translation of ``x``.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from tokjax.data._packing import check_int

__all__ = ["FewShotSet", "TranslationPairs", "TranslationVocab", "few_shot_prompts", "pair_stream_windows",
           "translate", "translation_pairs", "translation_vocab"]


@dataclasses.dataclass(frozen=True)
class TranslationVocab:
    """Token ids of the synthetic translation language (module docstring)."""

    n_words: int
    n_sentinels: int
    pad: int = 0
    bos: int = 1
    eq: int = 2
    sep: int = 3

    @property
    def src0(self) -> int:
        return 4

    @property
    def tgt0(self) -> int:
        return 4 + self.n_words

    @property
    def size(self) -> int:
        return 4 + 2 * self.n_words + self.n_sentinels

    @property
    def sentinels(self) -> tuple[int, ...]:
        """Sentinel ids, ``<extra_id_0>`` first (the top of the vocabulary, counting down as in T5)."""
        return tuple(self.size - 1 - i for i in range(self.n_sentinels))


def translation_vocab(n_words: int = 24, n_sentinels: int = 8) -> TranslationVocab:
    """Returns the vocabulary of a language with ``n_words`` words per side and ``n_sentinels`` sentinels."""
    check_int("n_words", n_words, 2)
    check_int("n_sentinels", n_sentinels, 0)
    return TranslationVocab(n_words=int(n_words), n_sentinels=int(n_sentinels))


def _lexicon(vocab: TranslationVocab, lexicon_seed: int) -> np.ndarray:
    return vocab.tgt0 + np.random.default_rng(lexicon_seed).permutation(vocab.n_words)


def translate(src: np.ndarray, vocab: TranslationVocab, lexicon_seed: int = 0, swap_pairs: bool = True) -> np.ndarray:
    """Returns the target sentence of source word ids ``src`` [n]: lexicon lookup (then adjacent pairs swapped)."""
    src = np.asarray(src)
    if src.ndim != 1 or ((src < vocab.src0) | (src >= vocab.tgt0)).any():
        raise ValueError(f"src must be 1-D source word ids in [{vocab.src0}, {vocab.tgt0}), got {src.tolist()}")
    words = _lexicon(vocab, lexicon_seed)[src - vocab.src0]
    out = words.copy()
    if not swap_pairs:
        return out.astype(np.int32)
    n2 = len(words) // 2 * 2
    out[0:n2:2], out[1:n2:2] = words[1:n2:2], words[0:n2:2]
    return out.astype(np.int32)


@dataclasses.dataclass(frozen=True)
class TranslationPairs:
    """Sentence pairs: ``src`` / ``tgt`` int32 [n, max_len] padded with ``vocab.pad``, ``lengths`` [n] (both sides)."""

    src: np.ndarray
    tgt: np.ndarray
    lengths: np.ndarray
    vocab: TranslationVocab

    def __len__(self) -> int:
        return int(self.src.shape[0])

    def pair(self, i: int) -> list[int]:
        """Returns pair i as tokens ``x_1 .. x_n = y_1 .. y_n ;``."""
        n = int(self.lengths[i])
        v = self.vocab
        return self.src[i, :n].tolist() + [v.eq] + self.tgt[i, :n].tolist() + [v.sep]


def translation_pairs(n: int, *, vocab: TranslationVocab | None = None, min_len: int = 3, max_len: int = 6,
                      seed: int = 0, lexicon_seed: int = 0, swap_pairs: bool = True) -> TranslationPairs:
    """Returns ``n`` random sentence pairs of the language ``lexicon_seed`` (module docstring)."""
    check_int("n", n, 1)
    check_int("min_len", min_len, 1)
    check_int("max_len", max_len, min_len)
    vocab = translation_vocab() if vocab is None else vocab
    rng = np.random.default_rng(seed)
    lengths = rng.integers(min_len, max_len + 1, size=n).astype(np.int32)
    src = np.full((n, max_len), vocab.pad, np.int32)
    tgt = np.full((n, max_len), vocab.pad, np.int32)
    for i, L in enumerate(lengths):
        s = vocab.src0 + rng.integers(0, vocab.n_words, size=L)
        src[i, :L] = s
        tgt[i, :L] = translate(s, vocab, lexicon_seed, swap_pairs)
    return TranslationPairs(src=src, tgt=tgt, lengths=lengths, vocab=vocab)


def pair_stream_windows(pairs: TranslationPairs, n_windows: int, width: int, *, pairs_per_doc: int = 8,
                        seed: int = 0) -> np.ndarray:
    """Returns int32 [n_windows, width]: windows of pre-training documents ``[bos] pair pair ...``.

    Each window is one document of ``pairs_per_doc`` random pairs from ``pairs``, read from a random
    offset (so a window may start or end mid-pair); a document shorter than ``offset + width`` is
    followed by the next document of the stream.
    """
    check_int("n_windows", n_windows, 1)
    check_int("width", width, 2)
    check_int("pairs_per_doc", pairs_per_doc, 1)
    rng = np.random.default_rng(seed)
    out = np.empty((n_windows, width), np.int32)
    for w in range(n_windows):
        stream: list[int] = []
        while True:
            doc = [pairs.vocab.bos]
            for i in rng.integers(0, len(pairs), size=pairs_per_doc):
                doc += pairs.pair(int(i))
            if not stream:
                off = int(rng.integers(0, max(len(doc) - width // 2, 1)))
                doc = doc[off:]
            stream += doc
            if len(stream) >= width:
                break
        out[w] = stream[:width]
    return out


@dataclasses.dataclass(frozen=True)
class FewShotSet:
    """Few-shot prompts (lists of ids ``[bos] shots.. x =``) and their references (target word ids)."""

    prompts: list
    references: list
    vocab: TranslationVocab


def few_shot_prompts(pairs: TranslationPairs, shots: TranslationPairs, n_shots: int = 3, *,
                     seed: int = 0) -> FewShotSet:
    """Returns one prompt per pair of ``pairs`` (the query), each with ``n_shots`` random demonstrations
    from ``shots``."""
    check_int("n_shots", n_shots, 0)
    rng = np.random.default_rng(seed)
    v = pairs.vocab
    prompts, refs = [], []
    for i in range(len(pairs)):
        p = [v.bos]
        for j in rng.integers(0, len(shots), size=n_shots):
            p += shots.pair(int(j))
        n = int(pairs.lengths[i])
        prompts.append(p + pairs.src[i, :n].tolist() + [v.eq])
        refs.append(pairs.tgt[i, :n].tolist())
    return FewShotSet(prompts=prompts, references=refs, vocab=v)
