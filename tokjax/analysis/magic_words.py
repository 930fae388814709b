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
* ``"gcg"`` (greedy coordinate gradient): for each length m = 1..k, start from the greedy prompt (padded), and for
  ``steps`` iterations take the gradient of CE w.r.t. the one-hot prompt, draw ``batch`` single-token swaps among
  each position's ``top_c`` candidates, move to the best of them; stop when argmax = y*.
"""

from __future__ import annotations

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np

from tokjax.analysis.patching import _unpack
from tokjax.model.forward import Inputs, forward

__all__ = ["k_epsilon", "reachable", "reachable_set"]

METHODS = ("greedy", "gcg", "exhaustive")


@functools.partial(jax.jit, static_argnames=("cfg",))
def _last_logits(params, cfg, prompts, x0):
    """Logits [M, V] at the last position of each prompt [M, m] ⊕ x0 [T0]."""
    M = prompts.shape[0]
    toks = jnp.concatenate([prompts, jnp.broadcast_to(x0, (M, x0.shape[0]))], axis=1).astype(jnp.int32)
    return forward(params, cfg, Inputs(tokens=toks)).logits[:, -1]


@functools.partial(jax.jit, static_argnames=("cfg",))
def _onehot_grad(params, cfg, prompt, x0, y):
    """Gradient [m, V] of CE(y | prompt ⊕ x0) w.r.t. the one-hot prompt (prompt [m] int)."""
    E = params["embed"]
    V = E.shape[0]

    def ce(onehot):
        emb = jnp.concatenate([onehot @ E.astype(jnp.float32), E[x0].astype(jnp.float32)], axis=0)[None]
        logits = forward(params, cfg, Inputs(embeds=emb.astype(cfg.dtype))).logits[0, -1]
        return -jax.nn.log_softmax(logits)[y]

    return jax.grad(ce)(jax.nn.one_hot(prompt, V, dtype=jnp.float32))


def _score(params, cfg, prompts, x0, y, batch_size):
    """Returns (CE of y [M], argmax [M]) for prompts [M, m] (numpy), in batches."""
    ces, arg = [], []
    for s in range(0, prompts.shape[0], batch_size):
        lg = _last_logits(params, cfg, jnp.asarray(prompts[s:s + batch_size]), x0)
        ces.append(np.asarray(-jax.nn.log_softmax(lg)[:, y]))
        arg.append(np.asarray(jnp.argmax(lg, -1)))
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


def _candidates(params, cfg, prompt, x0, y, pos, top_c):
    V = cfg.vocab_size
    if top_c is None or top_c >= V:
        return np.arange(V)
    g = np.asarray(_onehot_grad(params, cfg, jnp.asarray(prompt, jnp.int32), x0, y))[pos]
    return np.argsort(g)[:top_c]  # most negative gradient: largest first-order CE decrease


def reachable(model, x0, y: int, k: int, *, method: str = "greedy", top_c: int | None = None, steps: int = 20,
              batch: int = 128, restarts: int = 1, batch_size: int = 512, key: jax.Array | None = None) -> dict:
    """Searches a prompt u, |u| <= k, with argmax P(· | u ⊕ x0) = y (P43).

    ``model``: a :class:`tokjax.Model` or (params, cfg); ``x0`` int [T0]; ``method`` in ``("greedy", "gcg",
    "exhaustive")``; ``top_c``: gradient-preselected candidates per position (None: all V tokens);
    ``steps``/``batch``: GCG iterations and swaps per iteration (all m·top_c swaps when they fit);
    ``restarts``: GCG runs per length (the first from the greedy prompt, the others from random prompts);
    ``key``: GCG's sampling.
    Returns {"reachable": bool, "prompt": list[int] (a verified witness, [] when x0 alone gives y; None when
    not found), "length": |u| or None}.
    """
    params, cfg, x0 = _check(model, x0, k)
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; expected one of {METHODS}")
    if not isinstance(y, (int, np.integer)) or not 0 <= y < cfg.vocab_size:
        raise ValueError(f"y must be a token id in [0, {cfg.vocab_size}), got {y!r}")
    y = int(y)
    V = cfg.vocab_size
    _, a0 = _score(params, cfg, np.zeros((1, 0), np.int32), x0, y, 1)
    if a0[0] == y:
        return {"reachable": True, "prompt": [], "length": 0}
    if method == "exhaustive":
        if V ** k > 2_000_000:
            raise ValueError(f"exhaustive search over V^{k} = {V ** k} prompts is too large; use greedy or gcg")
        for m in range(1, k + 1):
            allp = np.asarray(list(itertools.product(range(V), repeat=m)), np.int32)
            _, arg = _score(params, cfg, allp, x0, y, batch_size)
            hit = np.nonzero(arg == y)[0]
            if hit.size:
                return {"reachable": True, "prompt": allp[hit[0]].tolist(), "length": m}
        return {"reachable": False, "prompt": None, "length": None}
    # greedy back-generation (also GCG's starting point)
    u: list[int] = []
    greedy_prompts = []
    for m in range(1, k + 1):
        cand = _candidates(params, cfg, [0] + u, x0, y, 0, top_c)
        prompts = np.concatenate([cand[:, None], np.broadcast_to(np.asarray(u, np.int32), (cand.size, len(u)))], 1)
        ce, arg = _score(params, cfg, prompts.astype(np.int32), x0, y, batch_size)
        hit = np.nonzero(arg == y)[0]
        if hit.size:
            best = hit[np.argmin(ce[hit])]
            return {"reachable": True, "prompt": prompts[best].tolist(), "length": m}
        u = prompts[np.argmin(ce)].tolist()
        greedy_prompts.append(u)
    if method == "greedy":
        return {"reachable": False, "prompt": None, "length": None}
    key = jax.random.key(0) if key is None else key
    rng = np.random.default_rng(np.asarray(jax.random.key_data(key)).ravel().astype(np.uint32))
    tc = V if top_c is None else min(int(top_c), V)
    if int(steps) < 1 or int(batch) < 1 or int(restarts) < 1:
        raise ValueError(f"steps, batch and restarts must be >= 1, got {steps}, {batch}, {restarts}")
    for m in range(1, k + 1):
        for r in range(int(restarts)):
            cur = np.asarray(greedy_prompts[m - 1] if r == 0 else rng.integers(0, V, m), np.int32)
            for _ in range(steps):
                g = np.asarray(_onehot_grad(params, cfg, jnp.asarray(cur), x0, y))  # [m, V]
                top = np.argsort(g, axis=1)[:, :tc]
                if batch >= m * tc:  # every single-token swap fits in one batch
                    pos, tok = np.repeat(np.arange(m), tc), top.reshape(-1)
                else:
                    pos = rng.integers(0, m, batch)
                    tok = top[pos, rng.integers(0, tc, batch)]
                cands = np.repeat(cur[None], pos.size, 0)
                cands[np.arange(pos.size), pos] = tok
                ce, arg = _score(params, cfg, cands, x0, y, batch_size)
                hit = np.nonzero(arg == y)[0]
                if hit.size:
                    return {"reachable": True, "prompt": cands[hit[np.argmin(ce[hit])]].tolist(), "length": m}
                cur = cands[int(np.argmin(ce))]  # GCG moves to the batch's best swap even when it does not improve
    return {"reachable": False, "prompt": None, "length": None}


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
