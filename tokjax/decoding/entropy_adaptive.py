"""P62 Entropy Adaptive Decoding (EAD): per-row, per-step switching between a small and a large model.

Paper: "Entropy Adaptive Decoding: Dynamic Model Switching for Efficient Inference" (P62; no
official code found). With ``p`` the softmax of the *active* model's raw logits (before any
temperature or truncation)::

    H_t      = -sum_i p_i log2 p_i                         (bits)
    Hbar_t   = (1 / n_t) * sum_{i=t-n_t+1..t} H_i,  n_t = min(w, t + 1)   (rolling mean, window w)
    model_{t+1} = M_L if Hbar_t > tau else M_S

Both models consume every emitted token, so their KV caches stay in lockstep, and no step
verifies anything: the output may diverge from M_L's ("controlled divergence").

Choices made here that the paper (read only through its abstract and a secondary source) does
not pin down:

* The paper's *stability condition on switching* was not read and is NOT implemented: the
  model is re-chosen after every token from the rolling mean alone.
* The first generated token has no history: the window is seeded with M_S's entropy at that
  position and the token comes from M_L if that entropy exceeds tau. So tau = +inf reproduces
  M_S decoding and tau = -inf reproduces M_L decoding exactly, token for token.
* The rolling mean is over the last ``min(w, steps so far)`` entropies (no zero padding).
* Compute: this implementation runs BOTH models on every step (the simplest way to keep both
  caches in lockstep in a fixed-shape batched loop; no lazy catch-up prefill). What a real
  implementation spends is reported instead: ``large_fraction`` (tokens emitted by M_L per
  row) and :func:`relative_cost`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from tokjax.decoding._state import DecodeState, DecodeStats, commit
from tokjax.decoding.generate import TRACE_COUNTS, _ends_greedy, _prefill_jit, _prepare_prompt
from tokjax.logits import Identity, LogitTransform, entropy, sample
from tokjax.model import Inputs, KVCache, Model, forward, unstack_layers

__all__ = ["EADOutput", "entropy_adaptive_generate", "entropy_bits", "relative_cost", "rolling_mean"]


def entropy_bits(logits: jax.Array) -> jax.Array:
    """Returns the Shannon entropy in bits of softmax(logits) over the last axis (float32)."""
    return entropy(logits) / jnp.log(2.0)


def rolling_mean(history: jax.Array, count: jax.Array, window: int) -> jax.Array:
    """Returns the mean of the last ``min(window, count[b])`` entries of each row of ring buffer ``history`` [B, window].

    Entry ``i`` of the ring holds step ``i mod window``; only the first ``min(count, window)``
    slots have been written, so the plain masked sum over them is the rolling sum.
    """
    n = jnp.minimum(count, window)
    filled = jnp.arange(window)[None, :] < n[:, None]
    return jnp.sum(jnp.where(filled, history, 0.0), axis=-1) / jnp.maximum(n, 1).astype(history.dtype)


@struct.dataclass
class _EADExtra:
    large_cache: KVCache
    history: jax.Array  # [B, w] float32 ring buffer of active-model entropies (bits)
    count: jax.Array  # [B] int32 entropies pushed so far
    use_large: jax.Array  # [B] bool: which model emits the next token
    tau: jax.Array  # [B] float32 threshold (runtime: sweeping it does not recompile)
    large_tokens: jax.Array  # [B] int32 tokens emitted by M_L
    used_large: jax.Array  # [B, max_new] bool per generated position
    entropy: jax.Array  # [B, max_new] float32 active-model entropy per generated position


def _step(ps, pl, s: DecodeState, *, cfg_s, cfg_l, transform, window, eos_id):
    ex: _EADExtra = s.extra
    pending = jnp.take_along_axis(s.tokens, (s.lengths - 1)[:, None], axis=1)
    out_s = forward(ps, cfg_s, Inputs(tokens=pending), cache=s.cache)
    out_l = forward(pl, cfg_l, Inputs(tokens=pending), cache=ex.large_cache)
    raw_s, raw_l = out_s.logits[:, 0].astype(jnp.float32), out_l.logits[:, 0].astype(jnp.float32)
    h_s, h_l = entropy_bits(raw_s), entropy_bits(raw_l)
    first = ex.count == 0
    # No history before the first token: M_S's entropy there decides (see module docstring).
    use_large = jnp.where(first, h_s > ex.tau, ex.use_large)
    raw = jnp.where(use_large[:, None], raw_l, raw_s)
    h = jnp.where(use_large, h_l, h_s)

    logits, logit_state = transform.apply(raw, s.logit_state, s.context())
    key, sub = jax.random.split(s.key)
    if _ends_greedy(transform):
        tok = jnp.argmax(logits, axis=-1).astype(jnp.int32)
        all_masked = ~jnp.isfinite(logits).any(-1)
    else:
        tok, sst = sample(sub, logits)
        all_masked = sst.all_masked

    live = ~s.done
    B, w = ex.history.shape
    slot = ex.count % window
    history = jnp.where(live[:, None] & (jnp.arange(w)[None, :] == slot[:, None]), h[:, None], ex.history)
    count = ex.count + live.astype(jnp.int32)
    hbar = rolling_mean(history, count, window)
    pos = jnp.clip(s.lengths - s.prompt_lengths, 0, ex.used_large.shape[1] - 1)
    rows = jnp.arange(B)
    used = ex.used_large.at[rows, pos].set(jnp.where(live, use_large, ex.used_large[rows, pos]))
    ent = ex.entropy.at[rows, pos].set(jnp.where(live, h, ex.entropy[rows, pos]))
    extra = ex.replace(
        history=history, count=count, use_large=hbar > ex.tau, used_large=used, entropy=ent,
        large_tokens=ex.large_tokens + (live & use_large).astype(jnp.int32),
    )
    counts = jnp.where(all_masked, 0, 1).astype(jnp.int32)
    stats = s.stats.replace(forward_calls=s.stats.forward_calls + 1,
                            masked_rows=s.stats.masked_rows | (all_masked & live))
    s = s.replace(cache=out_s.cache, logit_state=logit_state, key=key, stats=stats, extra=extra)
    s = commit(s, tok[:, None], counts, eos_id)
    extra = s.extra.replace(large_cache=out_l.cache.set_lengths(s.lengths - 1))
    return s.replace(extra=extra, done=s.done | all_masked, step=s.step + 1)


def _loop(ps, pl, state, *, cfg_s, cfg_l, transform, window, max_steps, eos_id):
    TRACE_COUNTS["ead_loop"] += 1
    step = lambda s: _step(ps, pl, s, cfg_s=cfg_s, cfg_l=cfg_l, transform=transform, window=window, eos_id=eos_id)  # noqa: E731
    return jax.lax.while_loop(lambda s: (s.step < max_steps) & ~jnp.all(s.done), step, state)


_loop_jit = jax.jit(_loop, static_argnames=("cfg_s", "cfg_l", "transform", "window", "max_steps", "eos_id"),
                    donate_argnames=("state",))


@dataclasses.dataclass(frozen=True)
class EADOutput:
    """Returns nothing; what entropy_adaptive_generate returns (host numpy arrays).

    ``tokens`` [B, S]: prompt then generated tokens (``pad_id`` after ``lengths[b]``).
    ``large_fraction`` [B]: fraction of each row's generated tokens emitted by M_L.
    ``used_large`` [B, max_new_tokens]: which model emitted each generated token (False past the end).
    ``entropy`` [B, max_new_tokens]: the active model's raw-logit entropy (bits) at each generated token.
    """

    tokens: np.ndarray
    lengths: np.ndarray
    prompt_lengths: np.ndarray
    large_fraction: np.ndarray
    used_large: np.ndarray
    entropy: np.ndarray
    stats: dict

    def completions(self) -> list[np.ndarray]:
        """Returns each row's generated tokens (without the prompt)."""
        return [self.tokens[b, p:n] for b, (p, n) in enumerate(zip(self.prompt_lengths, self.lengths))]


def relative_cost(large_fraction, small_params: int, large_params: int) -> np.ndarray:
    """Returns per-token compute of EAD relative to always-M_L, for a real implementation that runs M_S only on its tokens.

    ``(1 - f) * N_S + f * N_L`` over ``N_L`` (forward FLOPs ~ parameter count; the catch-up
    prefill of the other model's tokens is batched and counted as free, as in the paper).
    """
    f = np.asarray(large_fraction, np.float64)
    return ((1 - f) * small_params + f * large_params) / large_params


def _threshold(tau, batch: int) -> np.ndarray:
    t = np.asarray(tau, np.float32)
    if t.ndim > 1 or (t.ndim == 1 and t.shape[0] != batch):
        raise ValueError(f"tau must be a scalar or one value per prompt row ({batch}), got shape {t.shape}")
    if np.isnan(t).any():
        raise ValueError("tau must not be NaN (use +inf for always-small, -inf for always-large)")
    return np.broadcast_to(t, (batch,)).copy()


def entropy_adaptive_generate(
    small: Model,
    large: Model,
    prompt: Any,
    *,
    tau,
    window: int = 5,
    max_new_tokens: int,
    key: jax.Array | None = None,
    prompt_lengths: Sequence[int] | None = None,
    logits: LogitTransform | None = None,
    eos_id: int | None = None,
    pad_id: int = 0,
) -> EADOutput:
    """Returns an EADOutput: each row decoded by M_S or M_L per step, M_L when the rolling entropy exceeds tau.

    P62 EAD: ``model_{t+1} = M_L if mean(H_{t-w+1..t}) > tau else M_S`` with ``H`` the active
    model's raw-logit entropy in bits. ``tau``: scalar or per-row [B] (a runtime value: changing
    it does not recompile); +inf = always M_S, -inf = always M_L. ``window``: w (static, >= 1).
    ``logits``: a LogitTransform (greedy, temperature, ...) applied to the active model's logits
    *after* the entropy is taken. Prompt and stopping conventions are those of tokjax.generate.
    """
    for name, m in (("small", small), ("large", large)):
        if not isinstance(m, Model):
            raise ValueError(f"{name} must be a tokjax Model (params + cfg), got {type(m).__name__}")
    cs, cl = small.cfg, large.cfg
    if cs.vocab_size != cl.vocab_size:
        raise ValueError(f"small and large models must share a vocabulary; got vocab sizes {cs.vocab_size} and {cl.vocab_size}")
    if not isinstance(window, (int, np.integer)) or isinstance(window, bool) or window < 1:
        raise ValueError(f"window must be an int >= 1, got {window!r}")
    if not isinstance(max_new_tokens, (int, np.integer)) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be an int >= 1, got {max_new_tokens!r}")
    transform = Identity() if logits is None else logits
    if not isinstance(transform, LogitTransform):
        raise ValueError(f"logits must be a LogitTransform (e.g. tokjax.logits.greedy()), got {type(logits).__name__}")
    if eos_id is not None and not (0 <= int(eos_id) < cs.vocab_size):
        raise ValueError(f"eos_id must lie in [0, {cs.vocab_size}), got {eos_id}")
    if key is None:
        if not _ends_greedy(transform):
            raise ValueError("entropy_adaptive_generate needs key= for sampling; pass logits=greedy() for greedy")
        key = jax.random.key(0)
    tokens, lens = _prepare_prompt(prompt, prompt_lengths, cs, pad_id)
    B, P = tokens.shape
    tau_arr = _threshold(tau, B)
    max_len = min(cs.max_len, cl.max_len)
    if int(lens.max()) + max_new_tokens > max_len:
        raise ValueError(f"prompt ({int(lens.max())} tokens) + max_new_tokens ({max_new_tokens}) exceeds the smaller "
                         f"max_len of the two models ({max_len}); shorten one of them")
    total = P + max_new_tokens
    buf = np.full((B, total), pad_id, np.int32)
    buf[:, :P] = tokens
    ps, pl = unstack_layers(small.params, fuse=True), unstack_layers(large.params, fuse=True)
    jt, jl = jnp.asarray(tokens), jnp.asarray(lens)
    extra = _EADExtra(
        large_cache=_prefill_jit(pl, cl, jt, jl, total),
        history=jnp.zeros((B, window), jnp.float32),
        count=jnp.zeros((B,), jnp.int32),
        use_large=jnp.zeros((B,), bool),
        tau=jnp.asarray(tau_arr),
        large_tokens=jnp.zeros((B,), jnp.int32),
        used_large=jnp.zeros((B, max_new_tokens), bool),
        entropy=jnp.zeros((B, max_new_tokens), jnp.float32),
    )
    state = DecodeState(
        tokens=jnp.asarray(buf), lengths=jnp.array(lens), prompt_lengths=jnp.array(lens),
        max_lengths=jnp.array(lens + max_new_tokens), done=jnp.zeros((B,), bool),
        cache=_prefill_jit(ps, cs, jt, jl, total),
        logit_state=jax.tree.map(jnp.copy, transform.init(B)), key=jnp.copy(key),
        step=jnp.zeros((), jnp.int32), stats=DecodeStats.init(B, 1), extra=extra,
    )
    eos = None if eos_id is None else int(eos_id)
    state = _loop_jit(ps, pl, state, cfg_s=cs, cfg_l=cl, transform=transform, window=int(window),
                      max_steps=int(max_new_tokens), eos_id=eos)
    out_tokens, lengths = np.asarray(state.tokens), np.asarray(state.lengths)
    out_tokens = np.where(np.arange(total)[None, :] < lengths[:, None], out_tokens, pad_id)
    gen = lengths - lens
    large_tokens = np.asarray(state.extra.large_tokens)
    return EADOutput(
        tokens=out_tokens, lengths=lengths, prompt_lengths=lens,
        large_fraction=large_tokens / np.maximum(gen, 1),
        used_large=np.asarray(state.extra.used_large), entropy=np.asarray(state.extra.entropy),
        stats={"steps": int(state.step), "generated_tokens": int(gen.sum()), "large_tokens": int(large_tokens.sum()),
               "masked_rows": np.asarray(state.stats.masked_rows).tolist()},
    )
