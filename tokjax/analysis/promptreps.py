"""PromptReps: dense and sparse retrieval representations from one prompted forward (P3: *PromptReps:
Prompting Large Language Models to Generate Dense and Sparse Representations for Zero-Shot Document
Retrieval*, Zhuang et al., EMNLP 2024).

An instruction-tuned LM reads a text inside a prompt that asks for one word to represent it, ending
right where that word would start (chat template, user: ``Passage: "{text}". Use one most important
word to represent the passage in retrieval task. Make sure your word is in lowercase.``, assistant
prefix ``The word is: "``). From the last position of that single forward::

    dense(x)  = h_L / ||h_L||                          the final-normed hidden state            (P3)
    sparse(x) = log(1 + ReLU(z))[v]  for v in ids(x)   the next-token logits on the token ids of the
                                                       text's own non-stopword words, top 128 kept,
                                                       quantised round(100 * w) (an impact index)   (P3)
    score_dense(q, d) = dense(q) . dense(d);   score_sparse(q, d) = sparse(q) . sparse(d)
    hybrid(q, d) = alpha * minmax_q(score_dense) + (1 - alpha) * minmax_q(score_sparse),  alpha = 0.5

``ids(x)``: lower-cased words, stopwords and punctuation removed, each word encoded on its own
(without a leading space: the word the model writes after the opening quote has none either), all its
token ids kept. ``minmax_q`` rescales one query's scores over the documents to [0, 1] (ranx ``fuse``,
``norm="min-max"``, ``method="wsum"``, as the official ``hybrid.py``).

Read in the official code (github.com/ielab/PromptReps, ``modeling.py::encode_query``, ``encode.py``
``get_valid_tokens_values``, ``hybrid.py``, prompts of Meta-Llama-3-8B-Instruct): last position at
``attention_mask.sum() - 1`` with right padding, hidden = the HF ``hidden_states[-1]`` (after the final
norm), L2-normalised with ``--normalize``; sparse top-k = min(#ids, 128), values ``rint(100 w)``; a text
with no usable word falls back to the top-10 logits of the whole vocabulary; queries and passages
share the encoder. Differences here: NLTK's ``word_tokenize`` and stopword list need a download, so
words are ``[a-z0-9]+`` runs and :data:`STOPWORDS` is our own list of English function words; the
expansion terms (``num_expended_tokens``, 0 by default) are not implemented.
"""

from __future__ import annotations

import re
from typing import Sequence

import numpy as np

from tokjax.model.readout import last_token_states

__all__ = ["PASSAGE_PROMPT", "QUERY_PROMPT", "STOPWORDS", "SparseReps", "encode_prompted", "hybrid_scores",
           "mean_pooled", "minmax_rows", "prompt_ids", "sparse_reps", "sparse_scores", "text_token_ids"]

PASSAGE_PROMPT = ('Passage: "{text}". Use one most important word to represent the passage in retrieval task. '
                  "Make sure your word is in lowercase.", 'The word is: "')
QUERY_PROMPT = ('Query: "{text}". Use one most important word to represent the query in retrieval task. '
                "Make sure your word is in lowercase.", 'The word is: "')

STOPWORDS = frozenset("""
a about above after again against all am an and any are aren arent as at be because been before being below
between both but by can cannot could couldn couldnt d did didn didnt do does doesn doesnt doing don dont down
during each few for from further had hadn hadnt has hasn hasnt have haven havent having he her here hers
herself him himself his how i if in into is isn isnt it its itself just ll m ma me might mightn more most
must mustn my myself needn no nor not now o of off on once only or other our ours ourselves out over own re
s same shan she should shouldn so some such t than that the their theirs them themselves then there these
they this those through to too under until up ve very was wasn wasnt we were weren what when where which
while who whom why will with won wont would wouldn y you your yours yourself yourselves
""".split())

_WORD = re.compile(r"[a-z0-9]+")


def prompt_ids(tokenizer, texts: Sequence[str], prompt: tuple[str, str] = PASSAGE_PROMPT) -> list[list[int]]:
    """Returns the token ids of each text inside ``prompt`` = (user message with ``{text}``, assistant prefix),
    through the tokenizer's chat template, ending with the assistant prefix (the model's next token is the word)."""
    if not (isinstance(prompt, tuple) and len(prompt) == 2 and "{text}" in prompt[0]):
        raise ValueError("prompt must be (user message containing '{text}', assistant prefix), "
                         f"got {prompt!r}")
    if not hasattr(tokenizer, "apply_chat_template"):
        raise ValueError("PromptReps needs an instruction-tuned model's tokenizer with a chat template "
                         "(apply_chat_template)")
    prefix = tokenizer.encode(prompt[1])
    return [tokenizer.apply_chat_template([{"role": "user", "content": prompt[0].format(text=t)}],
                                          add_generation_prompt=True) + prefix for t in texts]


def text_token_ids(tokenizer, text: str) -> list[int]:
    """Returns the sorted token ids of ``text``'s non-stopword words, each word encoded on its own."""
    ids: set[int] = set()
    for w in _WORD.findall(text.lower()):
        if w not in STOPWORDS:
            ids.update(tokenizer.encode(w))
    return sorted(ids)


def encode_prompted(model, token_lists: Sequence[Sequence[int]], *, batch_size: int = 8, bucket: int = 32
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Returns (dense [N, D] L2-normalised last hidden, logits [N, V] at the last position) of prompted texts.

    One forward per batch of ``batch_size`` (right padding, widths rounded up to ``bucket`` tokens, so
    few shapes compile); only the last position's logits are computed.
    """
    dense = np.zeros((len(token_lists), model.cfg.d_model), np.float32) if token_lists else None
    logits = np.zeros((len(token_lists), model.cfg.vocab_size), np.float32) if token_lists else None
    for idx, (h, z, _) in last_token_states(model, token_lists, batch_size=batch_size, bucket=bucket):
        dense[idx] = np.asarray(h)[: len(idx)]
        logits[idx] = np.asarray(z)[: len(idx)]
    dense /= np.maximum(np.linalg.norm(dense, axis=1, keepdims=True), 1e-12)
    return dense, logits


def mean_pooled(model, token_lists: Sequence[Sequence[int]], *, batch_size: int = 8, bucket: int = 32) -> np.ndarray:
    """Returns [N, D] L2-normalised mean of the final hidden states over each text's tokens (no prompt): the
    usual training-free embedding PromptReps is compared with."""
    out = np.zeros((len(token_lists), model.cfg.d_model), np.float32) if token_lists else None
    for idx, (_, _, m) in last_token_states(model, token_lists, batch_size=batch_size, bucket=bucket):
        out[idx] = np.asarray(m)[: len(idx)]
    return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)


class SparseReps:
    """Sparse vectors as padded (ids [N, K], weights [N, K]); weight 0 marks padding."""

    def __init__(self, ids: np.ndarray, weights: np.ndarray):
        self.ids, self.weights = np.asarray(ids, np.int64), np.asarray(weights, np.float32)

    def dense(self, columns: np.ndarray) -> np.ndarray:
        """Returns [N, len(columns)] weights on the given sorted vocabulary ids (ids outside are dropped)."""
        out = np.zeros((len(self.ids), len(columns)), np.float32)
        pos = np.searchsorted(columns, self.ids)
        ok = (pos < len(columns)) & (columns[np.minimum(pos, len(columns) - 1)] == self.ids) & (self.weights > 0)
        rows = np.broadcast_to(np.arange(len(self.ids))[:, None], self.ids.shape)
        np.add.at(out, (rows[ok], pos[ok]), self.weights[ok])
        return out


def sparse_reps(logits: np.ndarray, id_lists: Sequence[Sequence[int]], *, top_k: int = 128,
                quantize: bool = True) -> SparseReps:
    """Returns the P3 sparse vectors: log(1 + ReLU(logits)) on each row's ids, top ``top_k`` kept, ``rint(100 w)``
    if ``quantize``; a row without ids keeps the top 10 of the whole vocabulary (the official fallback)."""
    logits = np.asarray(logits, np.float32)
    if logits.ndim != 2 or len(id_lists) != len(logits):
        raise ValueError(f"logits must be [N, V] with one id list per row, got {logits.shape} and {len(id_lists)} lists")
    if top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    w_all = np.log1p(np.maximum(logits, 0.0))
    K = max(top_k, 10)
    ids = np.zeros((len(logits), K), np.int64)
    wts = np.zeros((len(logits), K), np.float32)
    for r, cand in enumerate(id_lists):
        cand = np.unique(np.asarray(cand, np.int64))
        if cand.size and (cand.min() < 0 or cand.max() >= logits.shape[1]):
            raise ValueError(f"row {r}: token ids must be in [0, {logits.shape[1]}), got {cand.min()}..{cand.max()}")
        k = min(cand.size, top_k) if cand.size else 10
        pool = cand if cand.size else np.arange(logits.shape[1])
        top = pool[np.argsort(-w_all[r, pool], kind="stable")[:k]]
        ids[r, :k], wts[r, :k] = top, w_all[r, top]
    if quantize:
        wts = np.rint(wts * 100.0)
    return SparseReps(ids, wts)


def sparse_scores(queries: SparseReps, docs: SparseReps) -> np.ndarray:
    """Returns float32 [Q, D] dot products of sparse query and document vectors."""
    cols = np.unique(np.concatenate([queries.ids[queries.weights > 0], docs.ids[docs.weights > 0]]))
    return queries.dense(cols) @ docs.dense(cols).T


def minmax_rows(scores: np.ndarray) -> np.ndarray:
    """Returns each row of ``scores`` rescaled to [0, 1] (a constant row becomes 0)."""
    s = np.asarray(scores, np.float64)
    lo, hi = s.min(1, keepdims=True), s.max(1, keepdims=True)
    return ((s - lo) / np.where(hi > lo, hi - lo, 1.0)).astype(np.float32)


def hybrid_scores(dense: np.ndarray, sparse: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Returns ``alpha * minmax(dense) + (1 - alpha) * minmax(sparse)`` per query row (P3's fusion)."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    dense, sparse = np.asarray(dense), np.asarray(sparse)
    if dense.shape != sparse.shape or dense.ndim != 2:
        raise ValueError(f"dense and sparse scores must share one [Q, D] shape, got {dense.shape} and {sparse.shape}")
    return alpha * minmax_rows(dense) + (1.0 - alpha) * minmax_rows(sparse)
