"""FIRST: listwise reranking from the first identifier's logits instead of a generated permutation (P20: *An
Early FIRST Reproduction and Improvements to Single-Token Decoding for Fast Listwise Reranking*, Chen et al.,
2024; FIRST: Reddy et al., 2024).

A listwise reranker reads a query and a window of w candidate passages labelled ``[A]``, ``[B]``, ... and is
asked for the permutation ``[C] > [A] > ...`` (RankGPT / RankZephyr prompt). Generating it costs ~3w decode
steps. FIRST reads the ranking off the logits of the first identifier instead::

    s_i = z_{t0}(id_i)            the next-token logit of identifier i right after the answer's opening "["
    ranking = argsort(-s)                                                                                 (P20)

one forward per window. Windows slide over the first-stage top-k from the bottom up (window w, stride s,
RankGPT's order), so the best candidates bubble to the top.

Read in the official reproduction (castorini/rank_llm ``rank_listwise_os_llm.py``: ``run_llm_batched`` with
``use_logits`` generates 2 greedy tokens with 30 log-probs and ``_get_logits_single_digit`` reads the
*second* position, i.e. the identifier after the generated "["; ``_evaluate_logits`` keeps single alphabetic
tokens A.. within the window, sorts them by log-prob and appends the missing ids in their current order).
Here the "[" is appended to the prompt (the assistant's answer prefix), which reads the same position in one
forward when the model's greedy first token is "[" (the prompt demands that format), and the logits of all w
identifiers are compared (no top-30 truncation; ids are never missing). The permutation baseline generates
greedily through :func:`tokjax.generate` and parses the first occurrence of each identifier (missing ones
appended in their current order, as rank_llm's response cleaning does).
"""

from __future__ import annotations

import re
import string
from typing import Sequence

import numpy as np

__all__ = ["RERANK_SYSTEM", "first_rerank", "first_window_scores", "identifier_ids", "parse_permutation",
           "permutation_rerank", "rerank_prompt", "sliding_windows"]

RERANK_SYSTEM = ("You are RankLLM, an intelligent assistant that can rank passages based on their relevancy to the "
                 "query.")
_LETTERS = string.ascii_uppercase


def _user_message(query: str, passages: Sequence[str]) -> str:
    n = len(passages)
    listing = "\n".join(f"[{_LETTERS[i]}] {p}" for i, p in enumerate(passages))
    return (f"I will provide you with {n} passages, each indicated by an alphabetical identifier []. Rank the "
            f"passages based on their relevance to the search query: {query}.\n\n{listing}\n\nSearch Query: {query}.\n"
            f"Rank the {n} passages above based on their relevance to the search query. All the passages should be "
            "included and listed using identifiers, in descending order of relevance. The output format should be "
            "[] > [], e.g., [B] > [A]. Only respond with the ranking results, do not say any word or explain.")


def rerank_prompt(tokenizer, query: str, passages: Sequence[str], *, answer_prefix: str = "[") -> list[int]:
    """Returns the listwise prompt's ids (system + user through the chat template, then ``answer_prefix``)."""
    if not passages:
        raise ValueError("rerank_prompt needs at least one passage")
    if len(passages) > len(_LETTERS):
        raise ValueError(f"at most {len(_LETTERS)} passages per window (identifiers A..Z), got {len(passages)}")
    if not hasattr(tokenizer, "apply_chat_template"):
        raise ValueError("listwise reranking needs an instruction-tuned model's tokenizer with a chat template")
    ids = tokenizer.apply_chat_template([{"role": "system", "content": RERANK_SYSTEM},
                                         {"role": "user", "content": _user_message(query, passages)}],
                                        add_generation_prompt=True)
    return ids + (tokenizer.encode(answer_prefix) if answer_prefix else [])


def identifier_ids(tokenizer, n: int) -> np.ndarray:
    """Returns int32 [n] the token ids of the identifiers "A".."(n-th letter)"; ValueError unless each is one token."""
    if not 1 <= n <= len(_LETTERS):
        raise ValueError(f"n must be in [1, {len(_LETTERS)}], got {n}")
    ids = [tokenizer.encode(c) for c in _LETTERS[:n]]
    bad = [c for c, i in zip(_LETTERS, ids) if len(i) != 1]
    if bad:
        raise ValueError(f"identifiers {bad} are not single tokens for this tokenizer: FIRST needs one token per id")
    return np.asarray([i[0] for i in ids], np.int32)


def sliding_windows(n: int, window: int, stride: int) -> list[tuple[int, int]]:
    """Returns the [start, end) windows over ranks 0..n-1, from the bottom up (RankGPT's order)."""
    if window < 2 or stride < 1 or stride > window:
        raise ValueError(f"need window >= 2 and 1 <= stride <= window, got window={window}, stride={stride}")
    if n < 1:
        raise ValueError("no passages to rerank")
    out, end = [], n
    while True:
        start = max(0, end - window)
        out.append((start, end))
        if start == 0:
            return out
        end -= stride


def first_window_scores(model, prompts: Sequence[Sequence[int]], id_tokens: np.ndarray, sizes: Sequence[int], *,
                        batch_size: int = 4, bucket: int = 256) -> list[np.ndarray]:
    """Returns, per prompt, float32 [sizes[r]] next-token logits of its identifiers (one forward per prompt).

    Prompt widths are rounded up to ``bucket`` tokens: listwise prompts are long and vary by hundreds of tokens,
    and every new width is a new compile."""
    from tokjax.model import last_token_logits

    logits = last_token_logits(model, prompts, batch_size=batch_size, bucket=bucket, columns=np.asarray(id_tokens))
    return [logits[r, :k] for r, k in enumerate(sizes)]


def _rerank(order_lists, passages_of, windows, rank_window):
    """Slides the windows (same schedule for every query) and applies rank_window to all queries' windows at once."""
    for start, end in windows:
        live = [q for q in range(len(order_lists)) if start < len(order_lists[q])]
        spans = [order_lists[q][start:end] for q in live]
        perms = rank_window(live, [[passages_of[q][i] for i in span] for q, span in zip(live, spans)])
        for q, span, perm in zip(live, spans, perms):
            order_lists[q][start:start + len(span)] = [span[j] for j in perm]
    return order_lists


def first_rerank(model, tokenizer, queries: Sequence[str], candidates: Sequence[Sequence[str]], *, window: int = 10,
                 stride: int = 5, batch_size: int = 4) -> list[list[int]]:
    """Returns, per query, its candidates' indices reordered by FIRST (one forward per window, module docstring)."""
    _check(queries, candidates)
    n = max(len(c) for c in candidates)
    ids = identifier_ids(tokenizer, min(window, n))

    def rank_window(live, texts):
        prompts = [rerank_prompt(tokenizer, queries[q], t) for q, t in zip(live, texts)]
        scores = first_window_scores(model, prompts, ids, [len(t) for t in texts], batch_size=batch_size)
        return [list(np.argsort(-s, kind="stable")) for s in scores]

    return _rerank([list(range(len(c))) for c in candidates], candidates, sliding_windows(n, window, stride),
                   rank_window)


def parse_permutation(text: str, n: int) -> list[int]:
    """Returns the order of identifiers A.. in ``text`` (first mention wins, out-of-range ignored), missing ids appended."""
    seen: list[int] = []
    for m in re.finditer(r"\[?\b([A-Z])\b\]?", text):
        i = ord(m.group(1)) - ord("A")
        if i < n and i not in seen:
            seen.append(i)
    return seen + [i for i in range(n) if i not in seen]


def permutation_rerank(model, tokenizer, queries: Sequence[str], candidates: Sequence[Sequence[str]], *,
                       window: int = 10, stride: int = 5, max_new_tokens: int | None = None,
                       batch_size: int = 4) -> list[list[int]]:
    """Returns, per query, the candidates reordered by generating the permutation greedily for every window."""
    import tokjax
    from tokjax.logits import greedy

    _check(queries, candidates)
    n = max(len(c) for c in candidates)
    new = max_new_tokens if max_new_tokens is not None else 4 * min(window, n) + 4  # "[X] >" is 4 tokens per id

    def rank_window(live, texts):
        perms = []
        for s in range(0, len(live), batch_size):
            prompts = [rerank_prompt(tokenizer, queries[q], t) for q, t in zip(live[s:s + batch_size],
                                                                               texts[s:s + batch_size])]
            out = tokjax.generate(model, prompts, max_new_tokens=new, logits=greedy(), eos_id=tokenizer.eos_id)
            for r, t in enumerate(texts[s:s + batch_size]):
                perms.append(parse_permutation("[" + tokenizer.decode(out.completions()[r].tolist()), len(t)))
        return perms

    return _rerank([list(range(len(c))) for c in candidates], candidates, sliding_windows(n, window, stride),
                   rank_window)


def _check(queries, candidates):
    if len(queries) != len(candidates) or not queries:
        raise ValueError(f"need one candidate list per query and at least one query, got {len(queries)} queries and "
                         f"{len(candidates)} candidate lists")
    if any(len(c) == 0 for c in candidates):
        raise ValueError("every query needs at least one candidate passage")

