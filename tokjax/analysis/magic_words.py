"""P43 magic words: k-ε controllability of an LM by short prepended prompts.

Bhargava, Witkowski, Shah, Thomson, "What's the Magic Word? A Control Theory of LLM Prompting" (2023; official
code ``amanb2000/Magic_Words``: ``prompt_hack.py`` greedy back-generation, ``easy_gcg.py``).

State x₀ (an imposed token sequence), control u (a prompt of |u| <= k tokens *prepended*), output
y = argmax P(· | u ⊕ x₀). The pair (x₀, y*) is **reachable** with k tokens if some u, |u| <= k, gives
argmax P(· | u ⊕ x₀) = y*; the reachable set R_k(x₀) collects those y*; **k-ε controllability**: ε(k) is the
fraction of sampled (x₀, y*) pairs not reachable with <= k tokens.

Searches (every returned prompt is verified: its argmax is y*, so greedy and GCG only give lower bounds on
reachability, subsets of the exhaustive set):

* ``"exhaustive"``: every prompt of length 0..k (V^k of them: toy vocabularies only);
* ``"greedy"`` (official greedy back-generation): u = []; for i = 1..k: u = [argmin_c CE(y* | [c] ⊕ u ⊕ x₀)] ⊕ u
  over candidates c (all tokens, or the ``top_c`` with the most negative gradient of the CE w.r.t. a one-hot
  input at the new position when ``top_c`` < V); stop when argmax = y*;
* ``"gcg"`` (greedy coordinate gradient): for each length m in ``gcg_lengths`` (default 1..k), start from the
  greedy prompt of that length, and for ``steps`` iterations take the gradient of CE w.r.t. the one-hot prompt,
  draw ``batch`` single-token swaps among each position's ``top_c`` candidates, move to the best of them; stop when
  argmax = y*.

Candidates are scored in fixed-shape batches through the shared forward, unembedding only the last position
(:func:`controlled_logits` exposes that map for baselines such as random prompts).
"""

from __future__ import annotations

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np

from tokjax.analysis.patching import _unpack
from tokjax.model.forward import Inputs, forward, unembed

__all__ = ["controlled_logits", "k_epsilon", "reachable", "reachable_set"]

METHODS = ("greedy", "gcg", "exhaustive")


@functools.partial(jax.jit, static_argnames=("cfg",))
def _last_logits(params, cfg, prompts, x0):
    """Logits [M, V] at the last position of each prompt [M, m] ⊕ x0 [T0] (only that position is unembedded:
    on SmolLM2 the [M, T, V] logits of every position would cost a quarter of the forward and 4 MB per row-token)."""
    M = prompts.shape[0]
    toks = jnp.concatenate([prompts, jnp.broadcast_to(x0, (M, x0.shape[0]))], axis=1).astype(jnp.int32)
    hidden = forward(params, cfg, Inputs(tokens=toks), compute_logits=False).hidden
    return unembed(params, cfg, hidden[:, -1:])[:, 0]


@functools.partial(jax.jit, static_argnames=("cfg",))
def _onehot_grad(params, cfg, prompt, x0, y):
    """Gradient [m, V] of CE(y | prompt ⊕ x0) w.r.t. the one-hot prompt (prompt [m] int)."""
    E = params["embed"]
    V = E.shape[0]

    def ce(onehot):
        emb = jnp.concatenate([onehot @ E.astype(jnp.float32), E[x0].astype(jnp.float32)], axis=0)[None]
        hidden = forward(params, cfg, Inputs(embeds=emb.astype(cfg.dtype)), compute_logits=False).hidden
        logits = unembed(params, cfg, hidden[:, -1:])[0, 0]
        return -jax.nn.log_softmax(logits)[y]

    return jax.grad(ce)(jax.nn.one_hot(prompt, V, dtype=jnp.float32))


def _chunks(params, cfg, prompts, x0, batch_size):
    """Yields (logits [rows, V] jax, n valid rows) for prompts [M, m] (numpy) in batches of rows = min(M, batch_size).

    The last batch is padded with copies of its first row, so a search compiles one program per prompt length
    instead of one per ragged remainder."""
    M = prompts.shape[0]
    rows = max(1, min(M, int(batch_size)))
    for s in range(0, M, rows):
        chunk = np.asarray(prompts[s:s + rows], np.int32)
        n = chunk.shape[0]
        if n < rows:
            chunk = np.concatenate([chunk, np.repeat(chunk[:1], rows - n, 0)], 0)
        yield _last_logits(params, cfg, jnp.asarray(chunk), x0), n


def _score(params, cfg, prompts, x0, y, batch_size):
    """Returns (CE of y [M], argmax [M]) for prompts [M, m] (numpy), in batches."""
    ces, arg = [], []
    for lg, n in _chunks(params, cfg, prompts, x0, batch_size):
        ces.append(np.asarray(-jax.nn.log_softmax(lg)[:, y])[:n])
        arg.append(np.asarray(jnp.argmax(lg, -1))[:n])
    return np.concatenate(ces), np.concatenate(arg)


def _check(model, x0, k):
    params, cfg = _unpack(model)
    x0 = np.asarray(x0)
    if x0.ndim != 1 or x0.size == 0 or not np.issubdtype(x0.dtype, np.integer):
        raise ValueError(f"x0 must be a non-empty int [T0] token sequence, got shape {x0.shape} dtype {x0.dtype}")
    if x0.min() < 0 or x0.max() >= cfg.vocab_size:
        raise ValueError(f"x0 tokens must lie in [0, {cfg.vocab_size})")
    if not isinstance(k, (int, np.integer)) or k < 0:
        raise ValueError(f"k must be an int >= 0, got {k!r}")
    if x0.size + k > cfg.max_len:
        raise ValueError(f"|x0| + k = {x0.size + k} exceeds the model's max_len {cfg.max_len}")
    return params, cfg, jnp.asarray(x0, jnp.int32)


def controlled_logits(model, x0, prompts, *, batch_size: int = 64) -> np.ndarray:
    """Returns float32 logits [M, V] of the token after u ⊕ x0 for each control prompt u in ``prompts`` [M, m]
    (P43's output map y = argmax of these; m = 0 gives P(· | x0) alone), scored in batches of ``batch_size``."""
    params, cfg, x0 = _check(model, x0, 0)
    prompts = np.asarray(prompts)
    if prompts.ndim != 2 or not np.issubdtype(prompts.dtype, np.integer):
        raise ValueError(f"prompts must be an int [M, m] array of token ids, got shape {prompts.shape} "
                         f"dtype {prompts.dtype}")
    if prompts.size and (prompts.min() < 0 or prompts.max() >= cfg.vocab_size):
        raise ValueError(f"prompt tokens must lie in [0, {cfg.vocab_size})")
    if prompts.shape[1] + x0.shape[0] > cfg.max_len:
        raise ValueError(f"|u| + |x0| = {prompts.shape[1] + x0.shape[0]} exceeds the model's max_len {cfg.max_len}")
    if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
    out = [np.asarray(lg)[:n] for lg, n in _chunks(params, cfg, prompts, x0, batch_size)]
    return np.concatenate(out) if out else np.zeros((0, cfg.vocab_size), np.float32)


def reachable(model, x0, y: int, k: int, *, method: str = "greedy", top_c: int | None = None, steps: int = 20,
              batch: int = 128, restarts: int = 1, batch_size: int = 512, key: jax.Array | None = None,
              gcg_lengths=None, extra_candidates=None) -> dict:
    """Searches a prompt u, |u| <= k, with argmax P(· | u ⊕ x0) = y (P43).

    ``model``: a :class:`tokjax.Model` or (params, cfg); ``x0`` int [T0]; ``method`` in ``("greedy", "gcg",
    "exhaustive")``; ``top_c``: gradient-preselected candidates per position (None: all V tokens);
    ``steps``/``batch``: GCG iterations and swaps per iteration (all m·top_c swaps when they fit);
    ``restarts``: GCG runs per length (the first from the greedy prompt, the others from random prompts);
    ``key``: GCG's sampling; ``gcg_lengths``: the prompt lengths GCG searches after greedy failed (default 1..k;
    the official backoff runs greedy for short prompts and GCG only for the longer ones); ``extra_candidates``:
    token ids put first in every candidate list (greedy step, GCG position) before the gradient's picks fill it to
    ``top_c`` (e.g. y* itself and its embedding neighbours: a copy prior the gradient misses far from the end).
    Returns {"reachable": bool, "prompt": list[int] (a verified witness, [] when x0 alone gives y; None when
    not found), "length": |u| or None, "evals": prompts scored (forward rows, x0 alone included),
    "grads": one-hot gradients taken}.
    """
    params, cfg, x0 = _check(model, x0, k)
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; expected one of {METHODS}")
    if not isinstance(y, (int, np.integer)) or not 0 <= y < cfg.vocab_size:
        raise ValueError(f"y must be a token id in [0, {cfg.vocab_size}), got {y!r}")
    y = int(y)
    V = cfg.vocab_size
    if top_c is not None and (not isinstance(top_c, (int, np.integer)) or top_c < 1):
        raise ValueError(f"top_c must be None (all tokens) or an int >= 1, got {top_c!r}")
    if int(steps) < 1 or int(batch) < 1 or int(restarts) < 1 or int(batch_size) < 1:
        raise ValueError(f"steps, batch, restarts and batch_size must be >= 1, got {steps}, {batch}, {restarts}, "
                         f"{batch_size}")
    if gcg_lengths is None:
        gcg_lengths = range(1, k + 1)
    gcg_lengths = sorted({int(m) for m in gcg_lengths})
    if any(m < 1 or m > k for m in gcg_lengths):
        raise ValueError(f"gcg_lengths must lie in [1, k={k}], got {gcg_lengths}")
    extra = np.zeros(0, np.int64) if extra_candidates is None else np.asarray(extra_candidates).reshape(-1)
    if extra.size and (not np.issubdtype(extra.dtype, np.integer) or extra.min() < 0 or extra.max() >= V):
        raise ValueError(f"extra_candidates must be token ids in [0, {V}), got {extra.tolist()[:8]}")
    extra = np.asarray(list(dict.fromkeys(extra.tolist())), np.int64)  # unique, order kept
    count = {"evals": 0, "grads": 0}

    def pick(g, n):
        """The extra tokens, then the most negative gradient entries of g [V], n in all (fixed size)."""
        if not extra.size:
            return np.argsort(g)[:n]
        g = g.copy()
        g[extra] = np.inf
        return np.concatenate([extra, np.argsort(g)])[:n]

    def done(prompt):
        return {"reachable": prompt is not None, "prompt": prompt, "length": None if prompt is None else len(prompt),
                **count}

    def score(prompts):
        count["evals"] += prompts.shape[0]
        return _score(params, cfg, prompts, x0, y, batch_size)

    def grad(prompt):
        count["grads"] += 1
        return np.asarray(_onehot_grad(params, cfg, jnp.asarray(prompt, jnp.int32), x0, y))

    _, a0 = score(np.zeros((1, 0), np.int32))
    if a0[0] == y:
        return done([])
    if method == "exhaustive":
        if V ** k > 2_000_000:
            raise ValueError(f"exhaustive search over V^{k} = {V ** k} prompts is too large; use greedy or gcg")
        for m in range(1, k + 1):
            allp = np.asarray(list(itertools.product(range(V), repeat=m)), np.int32)
            _, arg = score(allp)
            hit = np.nonzero(arg == y)[0]
            if hit.size:
                return done(allp[hit[0]].tolist())
        return done(None)
    # greedy back-generation (also GCG's starting point)
    u: list[int] = []
    greedy_prompts = []
    for m in range(1, k + 1):
        if top_c is None or top_c >= V:
            cand = np.arange(V)
        else:  # most negative gradient at the new first position: largest first-order CE decrease
            cand = extra[:top_c] if extra.size >= top_c else pick(grad([0] + u)[0], int(top_c))
        prompts = np.concatenate([cand[:, None], np.broadcast_to(np.asarray(u, np.int32), (cand.size, len(u)))], 1)
        ce, arg = score(prompts.astype(np.int32))
        hit = np.nonzero(arg == y)[0]
        if hit.size:
            return done(prompts[hit[np.argmin(ce[hit])]].tolist())
        u = prompts[np.argmin(ce)].tolist()
        greedy_prompts.append(u)
    if method == "greedy":
        return done(None)
    key = jax.random.key(0) if key is None else key
    rng = np.random.default_rng(np.asarray(jax.random.key_data(key)).ravel().astype(np.uint32))
    tc = V if top_c is None else min(int(top_c), V)
    for m in gcg_lengths:
        for r in range(int(restarts)):
            cur = np.asarray(greedy_prompts[m - 1] if r == 0 else rng.integers(0, V, m), np.int32)
            for _ in range(steps):
                g = grad(cur)  # [m, V]
                top = np.stack([pick(gi, tc) for gi in g])  # [m, tc]
                if batch >= m * tc:  # every single-token swap fits in one batch
                    pos, tok = np.repeat(np.arange(m), tc), top.reshape(-1)
                else:
                    pos = rng.integers(0, m, batch)
                    tok = top[pos, rng.integers(0, tc, batch)]
                cands = np.repeat(cur[None], pos.size, 0)
                cands[np.arange(pos.size), pos] = tok
                ce, arg = score(cands)
                hit = np.nonzero(arg == y)[0]
                if hit.size:
                    return done(cands[hit[np.argmin(ce[hit])]].tolist())
                cur = cands[int(np.argmin(ce))]  # GCG moves to the batch's best swap even when it does not improve
    return done(None)


def reachable_set(model, x0, k: int, *, method: str = "exhaustive", targets=None, **kw) -> np.ndarray:
    """Returns bool [V]: which next tokens y are reachable from x0 with <= k prepended tokens by ``method``.

    ``exhaustive`` enumerates every prompt once (R_k exactly); ``greedy``/``gcg`` search each target in
    ``targets`` (default all V) with :func:`reachable` (a subset of R_k).
    """
    params, cfg, x0a = _check(model, x0, k)
    V = cfg.vocab_size
    out = np.zeros(V, bool)
    if method == "exhaustive":
        if V ** k > 2_000_000:
            raise ValueError(f"exhaustive search over V^{k} = {V ** k} prompts is too large; use greedy or gcg")
        for m in range(0, k + 1):
            allp = np.asarray(list(itertools.product(range(V), repeat=m)), np.int32).reshape(V ** m, m)
            _, arg = _score(params, cfg, allp, x0a, 0, kw.get("batch_size", 512))
            out[np.unique(arg)] = True
        if targets is not None:
            mask = np.zeros(V, bool)
            mask[np.asarray(targets)] = True
            out &= mask
        return out
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; expected one of {METHODS}")
    for y in (range(V) if targets is None else np.asarray(targets).tolist()):
        out[y] = reachable((params, cfg), x0, int(y), k, method=method, **kw)["reachable"]
    return out


def k_epsilon(lengths, ks) -> np.ndarray:
    """Returns ε(k) for each k in ``ks``: the fraction of (x0, y*) pairs whose shortest found prompt is longer
    than k (``lengths``: per pair the ``"length"`` from :func:`reachable`, None when not found)."""
    if len(lengths) == 0:
        raise ValueError("lengths is empty: need at least one (x0, y*) pair")
    L = np.asarray([np.inf if v is None else v for v in lengths], float)
    ks = np.asarray(ks)
    if ks.ndim != 1 or ks.size == 0 or (ks < 0).any():
        raise ValueError(f"ks must be a non-empty list of k >= 0, got {ks.tolist()}")
    return np.asarray([float(np.mean(L > k)) for k in ks])
