"""The toy preference task shared by the P15 (AlignDistil) and P65 (implicit token reward) experiments.

A prompt ``BOS topic`` is answered by RESP words from a topic-dependent Markov chain; a rejected
response is the same response with one word replaced by BAD at a known position.
"""

from __future__ import annotations

BOS, TOPIC0, N_TOPIC, WORD0, N_WORD, BAD = 0, 1, 4, 5, 10, 15
VOCAB, RESP, PROMPT = 16, 8, 2
SEQ = PROMPT + RESP


def make_pairs(n: int, seed: int, *, follow: float = 0.6, bad_rate: float = 1.0):
    """Returns (clean [n, SEQ] int32, with_bad [n, SEQ] int32, bad_index [n]): with_bad = clean with word
    ``bad_index`` (0..RESP-1, uniform) replaced by BAD in a ``bad_rate`` fraction of rows (-1 elsewhere)."""
    import numpy as np

    r = np.random.default_rng(seed)
    succ = np.random.default_rng(4321).integers(0, N_WORD, size=(N_TOPIC, N_WORD))
    topic = r.integers(0, N_TOPIC, size=n)
    words = np.empty((n, RESP), np.int64)
    words[:, 0] = r.integers(0, N_WORD, size=n)
    for j in range(1, RESP):
        words[:, j] = np.where(r.uniform(size=n) < follow, succ[topic, words[:, j - 1]], r.integers(0, N_WORD, size=n))
    clean = np.concatenate([np.full((n, 1), BOS), TOPIC0 + topic[:, None], WORD0 + words], axis=1).astype(np.int32)
    bad_index = r.integers(0, RESP, size=n)
    bad_index[r.uniform(size=n) >= bad_rate] = -1
    with_bad = clean.copy()
    hit = bad_index >= 0
    with_bad[np.arange(n)[hit], PROMPT + bad_index[hit]] = BAD
    return clean, with_bad, bad_index
