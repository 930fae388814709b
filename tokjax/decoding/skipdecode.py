"""P16 SkipDecode (Del Corro et al., 2023): "SkipDecode: Autoregressive Skip Decoding with Batching and
Caching for Efficient LLM Inference".

One active-layer count per sequence position, shared by every row of the batch and
non-increasing over positions. Skipped layers are the *lower-middle* ones: a position runs the
``warmup`` first layers, then jumps to the top ``n(t) - warmup`` layers (the paper "bypasses lower to
middle layers, devoting most of the computational resources to upper layers", with a warm-up layer
before the jump). The linear schedule of the paper::

    n(s) = max(n_min, n_max - floor((n_max - n_min) * s / horizon))          (P16, linear decay)
    active(s) = {0 .. warmup-1}  U  {L - (n(s) - warmup) .. L-1}

``s`` is the decode step (= the generated-token index of every live row). Because ``n`` never
grows, every layer a position runs was also run for every earlier position (prompt positions run
all layers in the prefill), so the key/value entries it attends to always exist: skipped layers
write no KV and nothing is ever recomputed. Each layer's per-row cache length tracks exactly the
positions that layer has seen.

* :func:`skipdecode` - the decode :class:`SkipDecode` strategy for :func:`tokjax.decoding.generate`.
* :func:`layer_mask`, :func:`skip_hooks`, :func:`skipdecode_loss` - the matching training-time transform
  (the paper fine-tunes with the same schedule): a layer that a position skips adds nothing to its
  residual stream, which for a non-increasing schedule equals the cached decode computation.
* :func:`active_layers`, :func:`linear_schedule` - the schedule itself.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from tokjax.decoding._state import DecodeState, Strategy, sample_and_commit
from tokjax.logits import LogitTransform, hparam, target_logprobs
from tokjax.model import (
    Inputs, ModelConfig, blocks, embed, final_norm, forward, layer_weights, position_embed, unembed,
)

__all__ = [
    "SkipDecode", "skipdecode", "active_layers", "linear_schedule", "layer_mask", "skip_hooks", "skipdecode_loss",
    "mean_active_layers",
]


# ------------------------------------------------------------------------------ schedule
def linear_schedule(min_layers, max_layers, horizon, length: int) -> jax.Array:
    """Returns int32 [length]: n(s) = max(n_min, n_max - floor((n_max - n_min) * s / horizon)), s = 0..length-1 (P16)."""
    s = jnp.arange(length, dtype=jnp.int32)
    lo = jnp.asarray(min_layers, jnp.int32)
    hi = jnp.asarray(max_layers, jnp.int32)
    h = jnp.maximum(jnp.asarray(horizon, jnp.int32), 1)
    return jnp.maximum(lo, hi - ((hi - lo) * s) // h).astype(jnp.int32)


def active_layers(n, warmup, n_layers: int) -> jax.Array:
    """Returns bool [..., n_layers]: layer l runs when l < warmup or l >= n_layers - (n - warmup) (P16)."""
    n = jnp.asarray(n, jnp.int32)[..., None]
    w = jnp.asarray(warmup, jnp.int32)
    l = jnp.arange(n_layers, dtype=jnp.int32)
    return (l < w) | (l >= n_layers - (n - w))


def _check_schedule(counts: np.ndarray, warmup: int, n_layers: int | None) -> None:
    if counts.ndim != 1 or counts.size == 0:
        raise ValueError(f"schedule must be a non-empty 1-D sequence of active-layer counts, got shape {counts.shape}")
    if counts.dtype.kind not in "iu":
        raise ValueError(f"schedule must hold integers (active-layer counts), got dtype {counts.dtype}")
    lo = max(int(warmup), 1)
    hi = n_layers if n_layers is not None else None
    if counts.min() < lo or (hi is not None and counts.max() > hi):
        raise ValueError(
            f"schedule counts must lie in [max(warmup, 1)={lo}, n_layers={hi}], got values in "
            f"[{int(counts.min())}, {int(counts.max())}]"
        )
    rises = np.nonzero(np.diff(counts) > 0)[0]
    if rises.size:
        i = int(rises[0])
        raise ValueError(
            f"schedule must be non-increasing (a layer a position runs must have run for every earlier position, "
            f"else its KV is missing); it rises from {int(counts[i])} to {int(counts[i + 1])} at step {i + 1}"
        )


# ------------------------------------------------------------------------------ strategy
@dataclasses.dataclass(frozen=True)
class SkipDecode(Strategy):
    """The P16 SkipDecode strategy: one target call per step that skips the lower-middle layers.

    ``min_layers``, ``max_layers``, ``horizon`` (linear decay, see module docstring), ``warmup`` (the
    always-run bottom layers) and an explicit ``schedule`` (active-layer counts per decode step,
    non-increasing; the last value repeats) are runtime values copied into the decode state: changing
    them does not recompile. ``schedule`` overrides the linear one when given.
    """

    min_layers: Any = hparam(None)
    max_layers: Any = hparam(None)
    horizon: Any = hparam(64)
    warmup: Any = hparam(1)
    schedule: Any = hparam(None)
    slack: int = 0
    max_accept: int = 1

    def validate(self, cfg: ModelConfig) -> None:
        L = cfg.n_layers
        w = int(self.warmup)
        if not 0 <= w <= L:
            raise ValueError(f"warmup must lie in [0, n_layers={L}], got {w}")
        if self.schedule is not None:
            _check_schedule(np.asarray(self.schedule), w, L)
            return
        lo = L if self.min_layers is None else int(self.min_layers)
        hi = L if self.max_layers is None else int(self.max_layers)
        if not max(w, 1) <= lo <= hi <= L:
            raise ValueError(
                f"SkipDecode needs max(warmup, 1) <= min_layers <= max_layers <= n_layers, got warmup={w}, "
                f"min_layers={lo}, max_layers={hi}, n_layers={L}"
            )
        if int(self.horizon) < 1:
            raise ValueError(f"horizon must be >= 1 (decode steps over which n decays), got {self.horizon}")

    def counts(self, cfg: ModelConfig, length: int) -> jax.Array:
        """Returns int32 [length]: the active-layer count of each decode step."""
        if self.schedule is not None:
            sched = jnp.asarray(self.schedule, jnp.int32)
            return sched[jnp.minimum(jnp.arange(length), sched.shape[0] - 1)]
        lo = cfg.n_layers if self.min_layers is None else self.min_layers
        hi = cfg.n_layers if self.max_layers is None else self.max_layers
        return linear_schedule(lo, hi, self.horizon, length)

    def init(self, params, cfg: ModelConfig, state: DecodeState) -> dict:
        steps = state.tokens.shape[1]  # an upper bound on the number of decode steps
        return {"counts": self.counts(cfg, steps), "warmup": jnp.asarray(self.warmup, jnp.int32),
                "layer_evals": jnp.zeros((), jnp.int32)}

    def step(self, params, cfg: ModelConfig, transform: LogitTransform, state: DecodeState, eos_id=None) -> DecodeState:
        ex = state.extra
        n = ex["counts"][jnp.minimum(state.step, ex["counts"].shape[0] - 1)]
        run = active_layers(n, ex["warmup"], cfg.n_layers)  # [L], one layer set for the whole batch
        pos = (state.lengths - 1)[:, None]
        pending = jnp.take_along_axis(state.tokens, pos, axis=1)
        x = embed(params, cfg, pending) + position_embed(params, cfg, pos)
        cache = state.cache
        k, v = list(cache.k), list(cache.v)
        for i in range(cfg.n_layers):
            # Each skip decision is a lax.cond over this layer's own weights and cache buffers only (not
            # the whole cache through every cond), so a layer that runs updates its buffers in place
            # and the strategy at full depth does what a plain decode step does plus L branches.
            one = {**params, "layers": (layer_weights(params, i),)}

            def layer_i(op, i=i, one=one):
                h, ki, vi = op
                sub = cache.replace(k=(ki,), v=(vi,), lengths=cache.lengths[i:i + 1])
                h, sub, _ = blocks(one, cfg, h, pos, cache=sub, start=0, end=1)
                return h, sub.k[0], sub.v[0]

            x, k[i], v[i] = jax.lax.cond(run[i], layer_i, lambda op: op, (x, k[i], v[i]))
        # a skipped layer keeps its shorter length (its slot for this position was never written)
        cache = cache.replace(k=tuple(k), v=tuple(v), lengths=cache.lengths + run[:, None].astype(jnp.int32))
        logits = unembed(params, cfg, final_norm(params, cfg, x))[:, 0]
        live = jnp.sum(~state.done).astype(jnp.int32)
        extra = {**ex, "layer_evals": ex["layer_evals"] + live * jnp.sum(run).astype(jnp.int32)}
        state = sample_and_commit(state, logits, transform, eos_id, extra=extra)
        # commit sets every layer's length to lengths - 1; only lower the layers that ran
        return state.replace(cache=cache.rollback(state.lengths - 1))


def skipdecode(min_layers=None, max_layers=None, horizon=64, *, warmup=1, schedule=None) -> SkipDecode:
    """Returns the P16 SkipDecode strategy; pass it as ``generate(..., strategy=skipdecode(...))``.

    ``min_layers``/``max_layers`` (default: all layers) bound the active-layer count n, which decays
    linearly over ``horizon`` decode steps; ``warmup`` bottom layers always run; ``schedule`` (a
    non-increasing sequence of counts per step) replaces the linear decay. Raises ValueError for an
    increasing schedule or counts outside [max(warmup, 1), n_layers].
    """
    if schedule is not None:
        _check_schedule(np.asarray(schedule), int(warmup), None)
        schedule = tuple(int(c) for c in np.asarray(schedule))
    for name, v in (("min_layers", min_layers), ("max_layers", max_layers)):
        if v is not None and int(v) < 1:
            raise ValueError(f"{name} must be >= 1, got {v}")
    if min_layers is not None and max_layers is not None and int(min_layers) > int(max_layers):
        raise ValueError(f"min_layers ({min_layers}) must not exceed max_layers ({max_layers})")
    if int(horizon) < 1:
        raise ValueError(f"horizon must be >= 1 (decode steps over which n decays), got {horizon}")
    if int(warmup) < 0:
        raise ValueError(f"warmup must be >= 0, got {warmup}")
    return SkipDecode(min_layers=min_layers, max_layers=max_layers, horizon=horizon, warmup=warmup, schedule=schedule)


def mean_active_layers(strategy: SkipDecode, cfg: ModelConfig, steps: int) -> float:
    """Returns the mean active-layer count over the first ``steps`` decode steps (layer evaluations per token)."""
    return float(np.mean(np.asarray(strategy.counts(cfg, steps))))


# ----------------------------------------------------------------------- training transform
def layer_mask(counts, warmup, n_layers: int, seq_len: int, prompt_lengths) -> jax.Array:
    """Returns float32 [B, n_layers, seq_len]: 1 where layer l runs for the token at position t.

    Mirrors decoding: positions before the pending token (t < P - 1) are prefilled by every layer;
    the token at t >= P - 1 is fed at decode step s = t - (P - 1) and runs ``active(counts[s])``
    (the last count repeats).
    """
    counts = jnp.asarray(counts, jnp.int32)
    P = jnp.asarray(prompt_lengths, jnp.int32).reshape(-1)
    t = jnp.arange(seq_len, dtype=jnp.int32)
    s = t[None, :] - (P[:, None] - 1)  # [B, T]
    n = jnp.where(s < 0, n_layers, counts[jnp.clip(s, 0, counts.shape[0] - 1)])
    act = active_layers(n, warmup, n_layers)  # [B, T, L]
    return jnp.swapaxes(act, 1, 2).astype(jnp.float32)


def skip_hooks(mask: jax.Array) -> dict:
    """Returns forward hooks that zero a layer's attention and MLP outputs where ``mask`` [B, L, T] is 0.

    A zeroed layer leaves that token's residual stream unchanged (the layer is skipped). With a
    non-increasing schedule the tokens that run layer l form a prefix, so no running token attends
    to a skipping one: the no-cache training forward equals cached SkipDecode decoding (P16).
    """

    def gate(x, layer):
        m = jax.lax.dynamic_index_in_dim(mask, layer, axis=1, keepdims=False)  # [B, T]
        return x * m[:, :, None].astype(x.dtype)

    return {"layer.*.attn_out": gate, "layer.*.mlp_out": gate}


def skipdecode_loss(strategy: SkipDecode, *, prompt_length: int = 1):
    """Returns a tokjax loss ``fn(params, cfg, batch, rng) -> (loss, metrics)``: next-token CE under the skip schedule.

    Fine-tuning with the same schedule as decoding (P16). ``batch['tokens']`` [B, T+1];
    optional ``batch['prompt_lengths']`` [B] (default ``prompt_length``): positions before the
    prompt's last token run every layer, later positions follow the schedule. Optional
    ``batch['mask']`` [B, T] weights the targets.
    """

    def loss_fn(params, cfg: ModelConfig, batch: Mapping[str, jax.Array], rng=None):
        del rng
        tokens = jnp.asarray(batch["tokens"], jnp.int32)
        if tokens.ndim != 2 or tokens.shape[1] < 2:
            raise ValueError(f"batch['tokens'] must be [B, T+1] with T >= 1, got shape {tokens.shape}")
        x, y = tokens[:, :-1], tokens[:, 1:]
        B, T = x.shape
        P = batch.get("prompt_lengths")
        P = jnp.full((B,), prompt_length, jnp.int32) if P is None else jnp.asarray(P, jnp.int32)
        mask = layer_mask(strategy.counts(cfg, T), strategy.warmup, cfg.n_layers, T, P)
        # the skip hooks act inside forward, so the logits are in hand (token_stats runs no hooks)
        logits = forward(params, cfg, Inputs(tokens=x), hooks=skip_hooks(mask)).logits
        nll = -target_logprobs(logits, y)
        w = jnp.ones(y.shape, jnp.float32) if batch.get("mask") is None else jnp.asarray(batch["mask"], jnp.float32)
        denom = jnp.maximum(w.sum(), 1e-9)
        loss = jnp.sum(w * nll) / denom
        acc = jnp.sum(w * (jnp.argmax(logits, -1) == y)) / denom
        return loss, {"loss": loss, "nll_sum": jnp.sum(w * nll), "token_count": w.sum(), "accuracy": acc}

    return loss_fn
