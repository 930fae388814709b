"""Two-model routing: the small model (the driver's target) decodes, a large model emits the tokens a router picks.

The shared step of P62 EAD (:mod:`tokjax.decoding.entropy_adaptive`) and P46 R2R
(:mod:`tokjax.decoding.r2r`). Each step the small model consumes the pending token; a routing rule
(EAD: the rolling entropy of earlier steps; R2R: a router on the small model's step) marks the rows
whose token comes from the large model. The large model's KV cache holds the tokens it has consumed,
row b's ``consumed_b`` of them, so it lags the sequence by ``lag_b = length_b - consumed_b`` tokens
(the pending one included)::

    run_t    = any_b live_b and (want_b or lag_b >= catch_up)          (one bool for the batch)
    if run_t:  feed every row its lag (<= catch_up tokens) as one right-padded chunk through the cached
               forward (row b's positions continue its own cache); a row's logits are those at its
               last real chunk index; consumed_b <- length_b

Lazy catch-up (R2R's "the LLM prefills the SLM's tokens only when it is called"): with a rare route
the large model runs about once per ``catch_up`` steps plus once per routed step, instead of every
step. The chunk is as wide as the largest live lag rounded up to a power of two (or ``catch_up``), one
compiled branch per width, so a call that catches up two tokens pays for two; on weight-bound
hardware a narrow chunk costs about one token (every weight is read once either way).
``benchmarks/routing.py`` measures the speed against the large model alone.

``catch_up=1`` is lockstep: both models consume every token, the large forward is called directly
(no ``lax.switch``), and the outputs are bit for bit those of the earlier lockstep implementation. Larger values give the same tokens up to float rounding (a chunked
forward adds attention terms in another order). A batch shares one ``run_t``: at batch 8 the large
model runs whenever any live row routes.

A recurrent (``mixer="mamba"``) large model would absorb the chunk's padding into its state, so it
takes only ``catch_up=1``.
"""

from __future__ import annotations


import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from tokjax.decoding._state import KV_CACHE, DecodeState, commit
from tokjax.model import Inputs, KVCache, ModelConfig, forward, prefill

__all__ = [
    "LARGE", "LargeModel", "check_catch_up", "chunk_widths", "commit_routed", "init_large", "large_axes", "large_logits",
    "small_logits",
]


LARGE = "large"  # the routing strategies' name for the large model in Strategy.models() / DecodeState.models


@struct.dataclass
class LargeModel:
    """The large model's part of a routing strategy's state: its KV cache (the tokens it consumed) and call count.

    Its weights are not state: the strategy lists the model in ``models()`` and every step reads the
    driver's decode layout of them from ``state.models["large"]`` (never copied, never donated).
    """

    cache: KVCache
    calls: jax.Array  # int32 scalar: large-model forwards run so far


def check_catch_up(catch_up, large_cfg: ModelConfig) -> int:
    """Returns ``catch_up`` as an int after checking it (an int >= 1; 1 for a recurrent large model)."""
    if not isinstance(catch_up, (int, np.integer)) or isinstance(catch_up, bool) or catch_up < 1:
        raise ValueError(f"catch_up must be an int >= 1 (1 = both models read every token), got {catch_up!r}")
    if catch_up > 1 and large_cfg.mixer == "mamba":
        raise ValueError("a mixer='mamba' large model takes only catch_up=1: its recurrent state would absorb the "
                         "padding of a catch-up chunk")
    return int(catch_up)


def init_large(large_cfg: ModelConfig, state: DecodeState) -> LargeModel:
    """Returns the large model's state for a decode: its prefilled cache of each row's prompt (pending token left out)."""
    B, S = state.tokens.shape
    if S > large_cfg.max_len:
        raise ValueError(f"prompt + max_new_tokens ({S} slots) exceeds the large model's max_len "
                         f"({large_cfg.max_len}); shorten one of them")
    P = int(np.max(np.asarray(state.prompt_lengths)))
    cache = prefill(state.models[LARGE], large_cfg, state.tokens[:, :P], state.prompt_lengths, S)
    return LargeModel(cache=cache, calls=jnp.zeros((), jnp.int32))


def large_axes() -> LargeModel:
    """Returns the sharding axes of a :class:`LargeModel` (the cache by row and kv head)."""
    return LargeModel(cache=KV_CACHE, calls=None)


def _pending(s: DecodeState) -> jax.Array:
    return jnp.take_along_axis(s.tokens, (s.lengths - 1)[:, None], axis=1)


def small_logits(params, cfg: ModelConfig, s: DecodeState):
    """Feeds each row's pending token to the small model; returns (its Output, float32 logits [B, V])."""
    out = forward(params, cfg, Inputs(tokens=_pending(s)), cache=s.cache)
    return out, out.logits[:, 0].astype(jnp.float32)


def large_logits(large: LargeModel, large_cfg: ModelConfig, s: DecodeState, want: jax.Array, catch_up: int):
    """Returns (large state, float32 logits [B, V]) for this step: valid for every row of a step the large model ran.

    ``want`` [B] bool: the rows that take the large model's token. It runs iff a live row wants it
    or a live row's lag reached ``catch_up`` (always when ``catch_up == 1``); otherwise the logits
    are zeros and nothing is read. Done rows are marked caught up without being fed. See the module
    docstring.
    """
    B, S = s.tokens.shape
    lengths = s.lengths
    if catch_up == 1:
        out = forward(s.models[LARGE], large_cfg, Inputs(tokens=_pending(s)), cache=large.cache)
        return (large.replace(cache=out.cache.set_lengths(lengths), calls=large.calls + 1),
                out.logits[:, 0].astype(jnp.float32))
    consumed = large.cache.length
    lag = lengths - consumed
    live = ~s.done
    run = jnp.any(live & (want | (lag >= catch_up)))
    widths = chunk_widths(catch_up)
    # The narrowest chunk that holds every live row's lag: a step that catches up 2 tokens does not pay for catch_up.
    need = jnp.max(jnp.where(live, lag, 1))
    branch = jnp.where(run, 1 + jnp.searchsorted(jnp.asarray(widths), need), 0)

    def feed(width):
        def go(cache):
            idx = jnp.clip(consumed[:, None] + jnp.arange(width)[None, :], 0, S - 1)
            chunk = jnp.take_along_axis(s.tokens, idx, axis=1)  # padding past a row's lag is never read back
            out = forward(s.models[LARGE], large_cfg, Inputs(tokens=chunk), cache=cache)
            last = jnp.clip(lag - 1, 0, width - 1)
            raw = jnp.take_along_axis(out.logits, last[:, None, None], axis=1)[:, 0].astype(jnp.float32)
            return out.cache.set_lengths(lengths), raw
        return go

    def skip(cache):
        return cache, jnp.zeros((B, large_cfg.vocab_size), jnp.float32)

    cache, raw = jax.lax.switch(branch, [skip] + [feed(w) for w in widths], large.cache)
    return large.replace(cache=cache, calls=large.calls + run.astype(jnp.int32)), raw


def chunk_widths(catch_up: int) -> tuple[int, ...]:
    """Returns the catch-up chunk widths compiled for ``catch_up``: powers of two below it, then ``catch_up``."""
    widths = [1]
    while widths[-1] * 2 < catch_up:
        widths.append(widths[-1] * 2)
    return tuple(widths) + ((catch_up,) if widths[-1] != catch_up else ())


def commit_routed(s: DecodeState, small_cache: KVCache, logit_state, key, extra, tok, logits, live, all_masked,
                  eos_id) -> DecodeState:
    """Commits one token per row of a routed step (the small model's cache becomes the state's).

    Rows whose logits were all masked commit nothing and are done.
    """
    counts = jnp.where(all_masked, 0, 1).astype(jnp.int32)
    stats = s.stats.replace(forward_calls=s.stats.forward_calls + 1,
                            masked_rows=s.stats.masked_rows | (all_masked & live))
    s = s.replace(cache=small_cache, logit_state=logit_state, key=key, stats=stats, extra=extra)
    s = commit(s, tok[:, None], counts, eos_id, logits=logits[:, None])
    return s.replace(done=s.done | all_masked)
