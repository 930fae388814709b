"""The LogitTransform family: optax-shaped ``init``/``apply`` pairs, composed with ``chain``.

A transform is a frozen dataclass. Its hyperparameters are *initial values* that ``init``
copies into the state as float32 arrays of shape [B] (one value per row), and they are
excluded from equality and hashing. So two transforms that differ only in a hyperparameter
are equal as static jit arguments: ``generate(..., logits=temperature(0.7))`` followed by
``temperature(1.0)`` reuses the compiled program (optax#577 is the pain this avoids).
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from tokjax._transform import (
    IdentityBehaviour, NamedComposition, SequentialComposition, checked_members, checked_named_members,
)

NEG_INF = -jnp.inf


@struct.dataclass
class LogitContext:
    """What a logit transform may read besides the logits.

    ``tokens`` [B, S] the sequence buffer (prompt + generated so far), ``lengths`` [B] the valid
    length of each row, ``step`` the decode step (scalar int32).
    """

    tokens: jax.Array
    lengths: jax.Array
    step: jax.Array


def hparam(default=None):
    """Returns a dataclass field for a runtime hyperparameter (not part of the static identity)."""
    return dataclasses.field(default=default, compare=False, hash=False)


def as_rows(value, batch: int, name: str, dtype=jnp.float32) -> jax.Array:
    """Returns ``value`` broadcast to a [batch] array; raises ValueError when its shape cannot be."""
    arr = jnp.asarray(value, dtype)
    if arr.ndim == 0:
        return jnp.full((batch,), arr, dtype)
    if arr.shape != (batch,):
        raise ValueError(f"{name} must be a scalar or have shape [batch={batch}], got shape {tuple(arr.shape)}")
    return arr


def check_range(value, name: str, lo=None, hi=None, lo_open=False, hi_open=False) -> None:
    """Returns None; raises ValueError when a concrete hyperparameter lies outside its range."""
    if isinstance(value, jax.core.Tracer):
        return
    arr = np.asarray(value, dtype=np.float64)
    if np.any(~np.isfinite(arr)):
        raise ValueError(f"{name} must be finite, got {value!r}")
    bad = np.zeros(arr.shape, bool)
    if lo is not None:
        bad |= (arr <= lo) if lo_open else (arr < lo)
    if hi is not None:
        bad |= (arr >= hi) if hi_open else (arr > hi)
    if np.any(bad):
        lb = ("(" if lo_open else "[") + ("-inf" if lo is None else str(lo))
        ub = ("inf" if hi is None else str(hi)) + (")" if hi_open else "]")
        raise ValueError(f"{name} must lie in {lb}, {ub}, got {value!r}")


def check_int_option(value, name: str, lo: int | None = None, hi: int | None = None) -> int:
    """Returns ``value`` as a Python int; raises ValueError unless it is an int (a numpy integer counts, a
    bool does not) in [``lo``, ``hi``] (either bound may be None). For static, shape-setting options."""
    ok = not isinstance(value, bool) and isinstance(value, (int, np.integer))
    if ok and ((lo is not None and value < lo) or (hi is not None and value > hi)):
        ok = False
    if not ok:
        if lo is not None and hi is not None:
            want = f"an int in [{lo}, {hi}]"
        elif lo == 1:
            want = "a positive int (>= 1)"
        else:
            want = "an int" + ("" if lo is None else f" >= {lo}") + ("" if hi is None else f" <= {hi}")
        raise ValueError(f"{name} must be {want}, got {value!r}")
    return int(value)


class LogitTransform:
    """Base class of the logit-transform family. Subclasses define ``init(batch) -> state`` and
    ``apply(logits [B, V] float32, state, ctx) -> (logits, state)``.
    """

    def init(self, batch: int) -> Any:
        return ()

    def apply(self, logits: jax.Array, state: Any, ctx: LogitContext | None) -> tuple[jax.Array, Any]:
        raise TypeError(f"{type(self).__name__} must define apply(logits, state, ctx)")

    def __call__(self, logits, state=None, ctx=None):
        state = self.init(logits.shape[0]) if state is None else state
        return self.apply(logits, state, ctx)


@dataclasses.dataclass(frozen=True)
class Chain(SequentialComposition, LogitTransform):
    """A logit transform applying ``transforms`` left to right; its state is the tuple of their states."""

    transforms: tuple


@dataclasses.dataclass(frozen=True)
class NamedChain(NamedComposition, LogitTransform):
    """A logit transform applying ``(name, transform)`` pairs in order; its state is a dict keyed by name
    (addressable hyperparameters)."""

    named: tuple  # ((name, transform), ...)


def chain(*transforms: LogitTransform) -> Chain:
    """Returns the composition applying ``transforms`` left to right."""
    return Chain(checked_members(transforms, LogitTransform))


def named_chain(*named: tuple[str, LogitTransform]) -> NamedChain:
    """Returns the composition of ``(name, transform)`` pairs with a name-keyed state."""
    return NamedChain(checked_named_members(named, LogitTransform))


class Identity(IdentityBehaviour, LogitTransform):
    """The logit transform that changes nothing."""


class Stats(NamedTuple):
    """Diagnostics of one sampled step."""

    all_masked: jax.Array  # [B] bool: every token was banned (all logits -inf, or all probs 0)
    nan_rows: jax.Array | None = None  # [B] bool: the row held NaN or +inf (a broken model, not a ban)


def entropy(logits: jax.Array) -> jax.Array:
    """Returns the float32 Shannon entropy H = -sum_v p_v log p_v (nats) of softmax(logits) over the last axis.

    From ``log_softmax`` (stable for large logits); ``-inf`` logits (banned tokens) contribute 0.
    Log-probabilities are valid input too (their log_softmax is themselves).
    """
    logp = jax.nn.log_softmax(jnp.asarray(logits).astype(jnp.float32), axis=-1)
    p = jnp.exp(logp)
    return jnp.maximum(-jnp.sum(jnp.where(p > 0, p * logp, 0.0), axis=-1), 0.0)



def masked_softmax(logits: jax.Array, *, empty: str = "zeros") -> jax.Array:
    """Returns float32 softmax(logits) over the last axis where ``-inf`` entries (masked tokens) get 0.

    A row with no finite logit is all zeros (``empty="zeros"``, never NaN) or uniform
    (``empty="uniform"``: a proposal distribution that must stay a distribution).
    """
    if empty not in ("zeros", "uniform"):
        raise ValueError(f"empty must be 'zeros' or 'uniform', got {empty!r}")
    logits = jnp.asarray(logits).astype(jnp.float32)
    finite = jnp.isfinite(logits)
    m = jnp.max(jnp.where(finite, logits, -1e30), axis=-1, keepdims=True)
    e = jnp.where(finite, jnp.exp(logits - m), 0.0)
    total = e.sum(-1, keepdims=True)
    p = e / jnp.maximum(total, 1e-30)
    if empty == "uniform":
        p = jnp.where(total > 0, p, 1.0 / logits.shape[-1])
    return p


def masked_log_softmax(logits: jax.Array) -> jax.Array:
    """Returns float32 log_softmax(logits) over the last axis with ``-inf`` kept at masked entries
    (and a row with no finite logit all ``-inf``), never NaN."""
    logits = jnp.asarray(logits).astype(jnp.float32)
    finite = jnp.isfinite(logits)
    return jnp.where(finite, jax.nn.log_softmax(jnp.where(finite, logits, -1e30), axis=-1), -jnp.inf)


def target_logprobs(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """Returns float32 log softmax(logits)[..., targets]: the log-probability of each target id.

    ``logits`` [..., V], ``targets`` int [...]. For log-probs of a batch under a model use
    ``tokjax.losses.token_stats`` (no [B, T, V] logits); this is for logits already in hand
    (verification, draft heads, hypernetwork-built heads).
    """
    logp = jax.nn.log_softmax(jnp.asarray(logits).astype(jnp.float32), axis=-1)
    return jnp.take_along_axis(logp, jnp.asarray(targets)[..., None].astype(jnp.int32), axis=-1)[..., 0]

def sample(key: jax.Array, logits: jax.Array | None = None, *, probs: jax.Array | None = None,
           greedy: bool = False) -> tuple[jax.Array, Stats]:
    """Returns (token ids [...] int32, Stats): one draw per row from softmax(``logits``) or from ``probs``.

    The one sampler of tokjax (decode steps, draft models, verifiers' residual and bonus draws).
    Give exactly one of ``logits`` [..., V] (``-inf`` = masked) or ``probs`` [..., V]
    (non-negative, need not be normalised). ``greedy``: the argmax instead (no randomness).

    * logits: Gumbel-max (``jax.random.categorical``): exact down to the smallest probabilities.
    * probs: inverse CDF, one uniform per row instead of V Gumbel draws (on CPU categorical's cost
      is mostly the random bits); exact up to float32 rounding of the cumulative sum, and a
      zero-probability token is never drawn. Verifiers and draft models, which already hold
      probabilities, use this form on every step.

    Two kinds of row are reported rather than sampled silently (never NaN tokens):

    * ``Stats.all_masked``: every token is banned (all logits ``-inf``, or all probs 0); the row
      yields token 0 and the decode loop ends it (``stats["masked_rows"]``).
    * ``Stats.nan_rows``: the row holds NaN or ``+inf`` (logits) or NaN / inf / negative
      entries (probs): the model or a transform is broken, which is a different thing from a ban.
      Sampling ignores those entries (token 0 when nothing else is left); ``generate`` raises,
      or stops the row with ``on_nan="stop"`` (``stats["nan_rows"]``).
    """
    if (logits is None) == (probs is None):
        raise ValueError("sample takes exactly one of logits= or probs=")
    if logits is not None:
        finite = jnp.isfinite(logits)
        nan_rows = (jnp.isnan(logits) | (logits == jnp.inf)).any(-1)
        any_finite = finite.any(-1)
        if greedy:
            tok = jnp.argmax(logits, axis=-1).astype(jnp.int32)
        else:
            tok = jax.random.categorical(key, jnp.where(finite, logits, -1e30), axis=-1).astype(jnp.int32)
        return jnp.where(any_finite, tok, 0), Stats(all_masked=~any_finite & ~nan_rows, nan_rows=nan_rows)
    probs = probs.astype(jnp.float32)
    nan_rows = (~jnp.isfinite(probs) | (probs < 0)).any(-1)
    probs = jnp.where(jnp.isfinite(probs) & (probs > 0), probs, 0.0)
    positive = probs > 0
    empty = ~positive.any(-1)
    stats = Stats(all_masked=empty & ~nan_rows, nan_rows=nan_rows)
    if greedy:
        return jnp.argmax(probs, axis=-1).astype(jnp.int32), stats
    cdf = jnp.cumsum(probs, axis=-1)
    u = jax.random.uniform(key, probs.shape[:-1]) * cdf[..., -1]
    idx = (cdf <= u[..., None]).sum(-1)
    # float rounding could step past the last positive entry: clamp to it (0 for an empty row)
    last = jnp.where(empty, 0, probs.shape[-1] - 1 - jnp.argmax(positive[..., ::-1], axis=-1))
    return jnp.minimum(idx, last).astype(jnp.int32), stats
