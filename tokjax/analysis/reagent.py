"""ReAGent (P18; Zhao & Shan 2024, "ReAGent: a model-agnostic feature attribution method for generative LMs").

Which input tokens make the model predict its next token y? ReAGent only queries the model's output
probabilities (no gradients, no attention), so it works on any model:

* p0 = P(y | x). Logit importance s ~ U(0, 1) per input position, for ``chains`` independent chains.
* Each step replaces a random subset R of the tokens (each position with probability ``ratio`` = 0.3)
  by sampled tokens (uniform over the allowed vocabulary, or a unigram distribution), p^ = P(y | x~),
  Delta = p0 - p^, and for every position ``d = +Delta`` if it was replaced else ``-Delta``;
  ``s <- s + logit(0.5 + d / 2)``. Importance = softmax(s).
* Stopping: replace every token *except* the ``top_n`` most important ones; a chain stops once y is
  still among the model's ``top_k`` predictions (its s is frozen from then on; ``max_steps`` caps it).
* Aggregation over chains: the importance is the mean softmax(s) over the stopped chains (all chains
  if none stopped); the rationale is the positions that are in the top_n of at least ``overlap`` chains.

Official code: ``casszhao/ReAGent`` (``importance_score_evaluator/delta_prob.py``,
``stopping_condition_evaluator/top_k.py``, ``aggregate_rationalizer.py``, ``token_replacer/uniform.py``):
defaults ratio 0.3, top_n 5, top_k 3-5, aggregate batch 5, overlap 3. The official samplers also include a
POS-tag-matched sampler and an "inferential" sampler (an LM such as RoBERTa proposes replacements); neither
is available offline here: ``sampler="uniform"`` (the official default) or ``"unigram"`` (token
frequencies from a corpus, a documented stand-in for the POS/LM samplers).

The whole loop is one ``lax.while_loop`` (each step: one batched forward of the chains' replaced inputs
and one of their stopping-check inputs); ``ratio``, ``top_n``, ``top_k``, ``overlap`` and ``max_steps``
are runtime values. The faithfulness metrics Soft-NS / Soft-NC live in :mod:`tokjax.analysis.attribution`.
"""

from __future__ import annotations

import functools
import jax
import jax.numpy as jnp
import numpy as np

from tokjax.analysis.attribution import model_apply, soft_metrics, soft_nc, soft_ns  # noqa: F401  (re-exported)

__all__ = ["SAMPLERS", "reagent", "soft_metrics", "soft_nc", "soft_ns"]

SAMPLERS = ("uniform", "unigram")
_F32 = jnp.float32
_EPS = 1e-6


def _sample_tokens(key, shape, log_probs):
    return jax.random.categorical(key, log_probs, shape=shape).astype(jnp.int32)


@functools.partial(jax.jit, static_argnames=("apply", "chains"))
def _reagent_loop(apply, params, tokens, target, log_probs, ratio, top_n, top_k, max_steps, key, *, chains):
    T = tokens.shape[0]
    x = jnp.broadcast_to(tokens, (chains, T))

    def logits_fn(batch):
        return apply(params, batch)

    def p_target(batch):
        return jax.nn.softmax(logits_fn(batch).astype(_F32), axis=-1)[:, target]

    def in_top_k(batch):
        lg = logits_fn(batch).astype(_F32)
        rank = jnp.sum(lg > lg[:, target][:, None], axis=-1)  # 0 = the model's top prediction
        return rank < top_k

    p0 = p_target(tokens[None])[0]
    k_init, key = jax.random.split(key)
    s0 = jax.random.uniform(k_init, (chains, T), _F32)

    def cond(state):
        step, _, stopped, _ = state
        return (step < max_steps) & ~jnp.all(stopped)

    def body(state):
        step, s, stopped, key = state
        key, k_mask, k_tok, k_stop = jax.random.split(key, 4)
        replace = jax.random.uniform(k_mask, (chains, T)) < ratio
        x_rep = jnp.where(replace, _sample_tokens(k_tok, (chains, T), log_probs), x)
        delta = p0 - p_target(x_rep)  # [C]
        d = jnp.where(replace, delta[:, None], -delta[:, None])
        upd = jax.scipy.special.logit(jnp.clip(0.5 + 0.5 * d, _EPS, 1.0 - _EPS))
        s = jnp.where(stopped[:, None], s, s + upd)
        # stopping check: keep only the top_n most important positions, replace the rest
        order = jnp.argsort(-s, axis=-1)
        rank_pos = jnp.argsort(order, axis=-1)  # rank of each position by importance
        x_stop = jnp.where(rank_pos < top_n, x, _sample_tokens(k_stop, (chains, T), log_probs))
        stopped = stopped | in_top_k(x_stop)
        return step + 1, s, stopped, key

    init = (jnp.int32(0), s0, jnp.zeros((chains,), bool), key)
    # ReAGent's own fixed-point iteration (replace, score, stop when the target survives): not a decode
    # loop, nothing is generated, so it is a while_loop here and not a Strategy of tokjax.generate.
    steps, s, stopped, _ = jax.lax.while_loop(cond, body, init)
    return steps, s, stopped, p0


def reagent(model, tokens, target=None, *, ratio=0.3, sampler: str = "uniform", unigram=None, allowed=None,
            top_n=5, top_k=3, chains: int = 5, overlap=3, max_steps=1000, key=None) -> dict:
    """Returns ReAGent's attribution of ``target`` (default: the greedy next token) to ``tokens`` [T] (P18).

    ``model``: a tokjax Model, a ``(params, cfg)`` pair, or a function ``tokens [C, T] -> logits [C, V]``
    of the next token (any model: ReAGent only reads output probabilities). ``sampler``: ``"uniform"``
    over ``allowed`` (bool [V], default every token) or ``"unigram"`` from ``unigram`` (non-negative
    counts or probabilities [V]). Result: ``importance`` float32 [T] (mean softmax(s) over the stopped
    chains), ``rationale`` bool [T] (in the top_n of >= ``overlap`` chains), ``chain_importance`` [C, T],
    ``stopped`` bool [C], ``steps`` (steps run), ``target``, ``p0`` = P(target | tokens).
    """
    apply, params, V = model_apply(model)
    tokens = jnp.asarray(tokens)
    if tokens.ndim == 2 and tokens.shape[0] == 1:
        tokens = tokens[0]
    if tokens.ndim != 1 or tokens.shape[0] < 1 or not jnp.issubdtype(tokens.dtype, jnp.integer):
        raise ValueError(f"tokens must be one int sequence [T] (or [1, T]) with T >= 1, got shape {tokens.shape} "
                         f"dtype {tokens.dtype}")
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler must be one of {SAMPLERS}, got {sampler!r} (the official POS-tag and RoBERTa "
                         f"samplers need resources that are not available offline)")
    if not isinstance(chains, int) or chains < 1:
        raise ValueError(f"chains must be an int >= 1, got {chains!r}")
    for name, v, lo, hi in (("ratio", ratio, 0.0, 1.0), ("top_n", top_n, 0, None), ("top_k", top_k, 1, None),
                            ("overlap", overlap, 1, chains), ("max_steps", max_steps, 1, None)):
        if isinstance(v, jax.core.Tracer):
            continue
        fv = float(np.asarray(v))
        if not np.isfinite(fv) or fv < lo or (hi is not None and fv > hi):
            rng = f"[{lo}, {hi}]" if hi is not None else f">= {lo}"
            raise ValueError(f"{name} must be in {rng}, got {v!r}")
    if sampler == "uniform":
        mask = jnp.ones((V,), bool) if allowed is None else jnp.asarray(allowed, bool)
        if mask.shape != (V,) or not bool(jnp.any(mask)):
            raise ValueError(f"allowed must be a bool [V={V}] mask with at least one True entry, got {mask.shape}")
        log_probs = jnp.where(mask, 0.0, -jnp.inf)
    else:
        if unigram is None:
            raise ValueError("sampler='unigram' needs unigram= token counts or probabilities [V]")
        u = jnp.asarray(unigram, _F32)
        if u.shape != (V,) or bool(jnp.any(u < 0)) or not float(jnp.sum(u)) > 0:
            raise ValueError(f"unigram must be non-negative counts [V={V}] with a positive sum, got shape {u.shape}")
        log_probs = jnp.log(u / jnp.sum(u))
    T = tokens.shape[0]
    check = np.asarray(tokens)
    if check.min() < 0 or check.max() >= V:
        raise ValueError(f"token ids must lie in [0, {V}), got [{check.min()}, {check.max()}]")
    if target is None:
        target = jnp.argmax(apply(params, tokens[None])[0])
    target = jnp.asarray(target, jnp.int32)
    key = jax.random.key(0) if key is None else key
    steps, s, stopped, p0 = _reagent_loop(
        apply, params, tokens.astype(jnp.int32), target, log_probs, jnp.asarray(ratio, _F32),
        jnp.asarray(top_n, jnp.int32), jnp.asarray(top_k, jnp.int32), jnp.asarray(max_steps, jnp.int32), key,
        chains=chains)
    imp = jax.nn.softmax(s, axis=-1)
    w = jnp.where(jnp.any(stopped), stopped.astype(_F32), jnp.ones_like(stopped, _F32))
    importance = jnp.sum(imp * w[:, None], 0) / jnp.sum(w)
    rank_pos = jnp.argsort(jnp.argsort(-s, axis=-1), axis=-1)
    counts = jnp.sum(rank_pos < jnp.minimum(top_n, T), axis=0)
    return {"importance": importance, "rationale": counts >= overlap, "chain_importance": imp, "stopped": stopped,
            "steps": steps, "target": target, "p0": p0}
