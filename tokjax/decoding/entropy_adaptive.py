"""P62 Entropy Adaptive Decoding (EAD): per-row, per-step switching between a small and a large model.

Paper: "Entropy Adaptive Decoding: Dynamic Model Switching for Efficient Inference" (P62; no
official code found). With ``p`` the softmax of the *active* model's raw logits (before any
temperature or truncation)::

    H_t      = -sum_i p_i log2 p_i                         (bits)
    Hbar_t   = (1 / n_t) * sum_{i=t-n_t+1..t} H_i,  n_t = min(w, t + 1)   (rolling mean, window w)
    model_{t+1} = M_L if Hbar_t > tau else M_S

Both models read every emitted token (M_L lazily, see below), and no step verifies anything: the
output may diverge from M_L's ("controlled divergence").

Choices made here that the paper (read only through its abstract and a secondary source) does
not pin down:

* The paper's *stability condition on switching* was not read and is NOT implemented: the
  model is re-chosen after every token from the rolling mean alone.
* The first generated token has no history: the window is seeded with M_S's entropy at that
  position and the token comes from M_L if that entropy exceeds tau. So tau = +inf reproduces
  M_S decoding and tau = -inf reproduces M_L decoding exactly, token for token.
* The rolling mean is over the last ``min(w, steps so far)`` entropies (no zero padding).
* Compute: the two-model step is :mod:`tokjax.decoding.routing`. With ``catch_up=1`` (the
  default) both models run on every step, caches in lockstep (the recorded experiment's setting);
  with ``catch_up=k > 1`` M_L runs only on the steps where some live row uses it or some row lags
  k tokens behind, catching up in one chunk (same tokens up to float rounding; the stats'
  ``large_calls`` counts its forwards). ``large_fraction`` (tokens emitted by M_L per row) and
  :func:`relative_cost` report what an implementation that runs M_S only on its own tokens spends.

Built as a decode strategy (:class:`EntropyAdaptive`) of ``tokjax.generate``: the small model
is the target the driver runs, the large model's weights and KV cache live in the strategy
state, so the loop, stopping, hot start and sharding are the driver's.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from tokjax.decoding._state import DecodeState, Strategy, ends_greedy
from tokjax.decoding.driver import generate
from tokjax.decoding.routing import (
    LARGE, LargeModel, check_catch_up, commit_routed, init_large, large_axes, large_logits, small_logits,
)
from tokjax.logits import LogitTransform, entropy, hparam, sample
from tokjax.model import Model, ModelConfig

__all__ = [
    "EADOutput", "EADState", "EntropyAdaptive", "entropy_adaptive", "entropy_adaptive_generate", "entropy_bits",
    "relative_cost", "rolling_mean",
]


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
class EADState:
    """EAD's decode state: the large model (weights, KV cache, see :mod:`tokjax.decoding.routing`) and the switching record."""

    large: LargeModel  # the large model's weights, KV cache (lazy catch-up) and call count
    history: jax.Array  # [B, w] float32 ring buffer of active-model entropies (bits)
    count: jax.Array  # [B] int32 entropies pushed so far
    use_large: jax.Array  # [B] bool: which model emits the next token
    tau: jax.Array  # [B] float32 threshold (runtime: sweeping it does not recompile)
    large_tokens: jax.Array  # [B] int32 tokens emitted by M_L
    used_large: jax.Array  # [B, S] bool per generated position (first max_new_tokens columns used)
    entropy: jax.Array  # [B, S] float32 active-model entropy per generated position


def _threshold(tau, batch: int) -> np.ndarray:
    t = np.asarray(tau, np.float32)
    if t.ndim > 1 or (t.ndim == 1 and t.shape[0] != batch):
        raise ValueError(f"tau must be a scalar or one value per prompt row ({batch}), got shape {t.shape}")
    if np.isnan(t).any():
        raise ValueError("tau must not be NaN (use +inf for always-small, -inf for always-large)")
    return np.broadcast_to(t, (batch,)).copy()


@dataclasses.dataclass(frozen=True)
class EntropyAdaptive(Strategy):
    """P62 EAD: each step emits from the small (target) or the large model, by the rolling entropy vs ``tau``.

    Build it with :func:`entropy_adaptive`. Static: ``large_cfg``, ``window``, ``catch_up``. Runtime (not part
    of the jit key): ``large_params`` and ``tau`` (scalar or per-row; checked at ``init``).
    """

    large_cfg: ModelConfig
    window: int = 5
    large_params: Any = dataclasses.field(default=None, compare=False, hash=False, repr=False)
    tau: Any = hparam(0.0)
    catch_up: int = 1

    def validate(self, cfg: ModelConfig) -> None:
        if cfg.vocab_size != self.large_cfg.vocab_size:
            raise ValueError(
                f"small and large models must share a vocabulary; got vocab sizes {cfg.vocab_size} and "
                f"{self.large_cfg.vocab_size}"
            )
        check_catch_up(self.catch_up, self.large_cfg)

    def init(self, params, cfg: ModelConfig, state: DecodeState) -> EADState:
        B, S = state.tokens.shape
        tau = _threshold(self.tau, B)
        return EADState(
            large=init_large(self.large_cfg, state),
            history=jnp.zeros((B, self.window), jnp.float32),
            count=jnp.zeros((B,), jnp.int32),
            use_large=jnp.zeros((B,), bool),
            tau=jnp.asarray(tau),
            large_tokens=jnp.zeros((B,), jnp.int32),
            used_large=jnp.zeros((B, S), bool),
            entropy=jnp.zeros((B, S), jnp.float32),
        )

    def models(self) -> dict:
        return {LARGE: Model(params=self.large_params, cfg=self.large_cfg)}

    def state_axes(self, extra: EADState) -> EADState:
        row, rows2 = ("batch",), ("batch", None)
        return EADState(
            large=large_axes(), history=rows2,
            count=row, use_large=row, tau=row, large_tokens=row, used_large=rows2, entropy=rows2,
        )

    def step(self, params, cfg: ModelConfig, transform: LogitTransform, s: DecodeState, eos_id=None) -> DecodeState:
        ex: EADState = s.extra
        out_s, raw_s = small_logits(params, cfg, s)
        h_s = entropy_bits(raw_s)
        first = ex.count == 0
        # No history before the first token: M_S's entropy there decides (see module docstring).
        use_large = jnp.where(first, h_s > ex.tau, ex.use_large)
        large, raw_l = large_logits(ex.large, self.large_cfg, s, use_large, self.catch_up)
        h_l = entropy_bits(raw_l)
        raw = jnp.where(use_large[:, None], raw_l, raw_s)
        h = jnp.where(use_large, h_l, h_s)

        logits, logit_state = transform.apply(raw, s.logit_state, s.context())
        key, sub = jax.random.split(s.key)
        tok, sst = sample(sub, logits, greedy=ends_greedy(transform))
        all_masked = sst.all_masked

        live = ~s.done
        B, w = ex.history.shape
        slot = ex.count % self.window
        history = jnp.where(live[:, None] & (jnp.arange(w)[None, :] == slot[:, None]), h[:, None], ex.history)
        count = ex.count + live.astype(jnp.int32)
        hbar = rolling_mean(history, count, self.window)
        pos = jnp.clip(s.lengths - s.prompt_lengths, 0, ex.used_large.shape[1] - 1)
        rows = jnp.arange(B)
        used = ex.used_large.at[rows, pos].set(jnp.where(live, use_large, ex.used_large[rows, pos]))
        ent = ex.entropy.at[rows, pos].set(jnp.where(live, h, ex.entropy[rows, pos]))
        extra = ex.replace(
            large=large, history=history, count=count, use_large=hbar > ex.tau, used_large=used, entropy=ent,
            large_tokens=ex.large_tokens + (live & use_large).astype(jnp.int32),
        )
        return commit_routed(s, out_s.cache, logit_state, key, extra, tok, logits, live, all_masked, eos_id)

    def persistent_state(self, extra: EADState) -> None:
        return None  # nothing carries over between requests (the caches belong to this prompt)

    def resume(self, extra: EADState, saved) -> EADState:
        raise ValueError("entropy-adaptive decoding keeps no state across requests; pass strategy_state=None")

    def finalize(self, state: DecodeState) -> dict:
        """Returns ``large_fraction`` [B], ``used_large`` / ``entropy`` [B, max_new_tokens] (numpy), ``large_tokens``
        and ``large_calls`` (large-model forwards run)."""
        ex: EADState = state.extra
        prompt = np.asarray(state.prompt_lengths)
        new = int(np.asarray(state.max_lengths)[0] - prompt[0])  # every row has the same budget
        gen = np.asarray(state.lengths) - prompt
        large_tokens = np.asarray(ex.large_tokens)
        return {
            "large_fraction": large_tokens / np.maximum(gen, 1),
            "used_large": np.asarray(ex.used_large)[:, :new],
            "entropy": np.asarray(ex.entropy)[:, :new],
            "large_tokens": int(large_tokens.sum()),
            "large_calls": int(np.asarray(ex.large.calls)),
        }


def entropy_adaptive(large: Model, *, tau, window: int = 5, catch_up: int = 1) -> EntropyAdaptive:
    """Returns the P62 EAD strategy switching to ``large`` when the rolling entropy of the last ``window`` steps exceeds ``tau``.

    Use it as ``tokjax.generate(small, prompts, strategy=entropy_adaptive(large, tau=2.0))``; the
    output's ``stats`` then hold ``large_fraction``, ``used_large``, ``entropy`` and ``large_calls``.
    ``catch_up``: 1 runs ``large`` on every step; k > 1 only where a row uses it or lags k tokens
    (:mod:`tokjax.decoding.routing`).
    """
    if not isinstance(large, Model):
        raise ValueError(f"large must be a tokjax Model (params + cfg), got {type(large).__name__}")
    if not isinstance(window, (int, np.integer)) or isinstance(window, bool) or window < 1:
        raise ValueError(f"window must be an int >= 1, got {window!r}")
    t = np.asarray(tau, np.float32)
    if np.isnan(t).any():
        raise ValueError("tau must not be NaN (use +inf for always-small, -inf for always-large)")
    if t.ndim > 1:
        raise ValueError(f"tau must be a scalar or one value per prompt row, got shape {t.shape}")
    return EntropyAdaptive(large_cfg=large.cfg, window=int(window), large_params=large.params, tau=tau,
                           catch_up=check_catch_up(catch_up, large.cfg))


@dataclasses.dataclass(frozen=True)
class EADOutput:
    """What entropy_adaptive_generate returns (host numpy arrays): tokens plus which model emitted each one.

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


def entropy_adaptive_generate(
    small: Model,
    large: Model,
    prompt: Any,
    *,
    tau,
    window: int = 5,
    catch_up: int = 1,
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
    *after* the entropy is taken. Prompt and stopping conventions are those of tokjax.generate;
    ``catch_up``: see :func:`entropy_adaptive`. This is
    ``generate(small, ..., strategy=entropy_adaptive(large, tau=tau, window=window, catch_up=catch_up))``.
    """
    if not isinstance(small, Model):
        raise ValueError(f"small must be a tokjax Model (params + cfg), got {type(small).__name__}")
    strategy = entropy_adaptive(large, tau=tau, window=window, catch_up=catch_up)
    out = generate(small, prompt, key=key, max_new_tokens=max_new_tokens, prompt_lengths=prompt_lengths,
                   logits=logits, strategy=strategy, eos_id=eos_id, pad_id=pad_id)
    st = out.stats
    return EADOutput(
        tokens=out.tokens, lengths=out.lengths, prompt_lengths=out.prompt_lengths,
        large_fraction=st["large_fraction"], used_large=st["used_large"], entropy=st["entropy"],
        stats={"steps": st["forward_calls"], "generated_tokens": st["generated_tokens"],
               "large_tokens": st["large_tokens"], "large_calls": st["large_calls"], "masked_rows": st["masked_rows"]},
    )
