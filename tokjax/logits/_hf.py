"""Logit transforms with transformers' exact semantics, and ``hf_sampling``: transformers' processor order.

``hf_sampling(...)`` returns the chain ``transformers.GenerationMixin._get_logits_processor``
builds from the same generation-config values: repetition penalty, no-repeat n-gram, (allowed
tokens), then, when sampling, the warpers temperature, top-k, top-p, min-p, typical-p,
epsilon, eta. Each stage keeps transformers' defaults, its "disabled" value and its boundary
rules, so the kept set and the surviving logits are transformers' (tests/logits/test_hf_sampling.py
checks them against fixtures made by transformers itself).

Where transformers' rule differs from tokjax's own transform of the same name, this module has
its own class: ``HFTopK`` keeps every token tied with the k-th largest logit (``TopK`` keeps
exactly k) and takes k = 0 as "off", ``HFTopP`` cuts on the cumulative mass from the least likely
end against 1 - p (float rounding at the cut is transformers') and allows ``p = 0``, ``HFMinP``
compares probabilities (``MinP`` compares in log space). New
transforms (typical, epsilon, eta, no-repeat n-gram, allowed tokens) exist only here.

Every hyperparameter is a runtime per-row value in the state (``hparam``), so a new value does
not recompile, and each stage is the identity at its disabled value (top-k 0, top-p 1, typical-p
1, epsilon 0, eta 0, n-gram size 0), exactly, so rows may mix enabled and disabled values.
Removed tokens get ``-inf`` (transformers' ``filter_value``).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from tokjax.logits._base import (
    NEG_INF, LogitTransform, NamedChain, as_rows, check_int_option, check_range, hparam, masked_log_softmax,
    masked_softmax, named_chain,
)
from tokjax.logits._transforms import Greedy, RepetitionPenalty, Temperature

__all__ = [
    "AllowedTokens", "EpsilonCutoff", "EtaCutoff", "HFMinP", "HFTopK", "HFTopP", "NoRepeatNGram", "TypicalP",
    "allowed_tokens", "epsilon_cutoff", "eta_cutoff", "hf_sampling", "no_repeat_ngram", "typical_p",
]


def _is_tracer(value) -> bool:
    return isinstance(value, jax.core.Tracer)


def _check_int_rows(value, name: str, lo: int) -> None:
    """Returns None; raises ValueError unless a concrete ``value`` is integer-valued (a scalar or per-row
    array, bools refused) and >= ``lo``. A tracer passes: it is checked where it was made."""
    if _is_tracer(value):
        return
    arr = np.asarray(value)
    if arr.dtype == bool or arr.dtype.kind not in "iu":
        raise ValueError(f"{name} must be an int (or per-row int array) >= {lo}, got {value!r}")
    if arr.size and arr.min() < lo:
        raise ValueError(f"{name} must be >= {lo}, got {value!r}")


def _kth_largest(logits: jax.Array, k) -> jax.Array:
    """Returns [B, 1]: each row's k-th largest logit (``torch.topk(x, k)[0][..., -1]``); ``k`` int or [B], 1 <= k <= V."""
    asc = jnp.sort(logits, axis=-1)
    V = logits.shape[-1]
    idx = jnp.broadcast_to(jnp.asarray(V - k, jnp.int32).reshape(-1, 1), (logits.shape[0], 1))
    return jnp.take_along_axis(asc, idx, axis=-1)


def _unsort(values_sorted: jax.Array, order: jax.Array) -> jax.Array:
    """Returns ``values_sorted`` moved back to vocabulary positions (``order`` is the sorting permutation)."""
    rows = jnp.arange(order.shape[0])[:, None]
    return jnp.zeros_like(values_sorted).at[rows, order].set(values_sorted)


def _keep_top(logits: jax.Array, min_keep: int) -> jax.Array:
    """Returns bool [B, V]: tokens at least as large as the ``min_keep``-th largest (transformers' min_tokens_to_keep)."""
    return logits >= _kth_largest(logits, min(min_keep, logits.shape[-1]))


def _check_min_keep(value) -> int:
    return check_int_option(value, "min_tokens_to_keep", lo=1)


@dataclasses.dataclass(frozen=True)
class HFTopK(LogitTransform):
    """transformers' ``TopKLogitsWarper``: removes tokens whose logit is below the k-th largest.

    k_eff = min(max(k, min_tokens_to_keep), V); keep x_v >= (k_eff-th largest x). Every token tied
    with the k-th largest is kept (so a row may keep more than k). ``k = 0`` is the identity
    (transformers' "disabled"). ``k``: int >= 0, scalar or per-row [B].
    """

    k: object = hparam(50)
    min_tokens_to_keep: int = 1

    def __post_init__(self):
        _check_int_rows(self.k, "top_k", lo=0)
        _check_min_keep(self.min_tokens_to_keep)

    def init(self, batch):
        return as_rows(self.k, batch, "top_k", jnp.int32)

    def apply(self, logits, state, ctx):
        k = jnp.clip(jnp.maximum(state, self.min_tokens_to_keep), 1, logits.shape[-1])
        keep = (logits >= _kth_largest(logits, k)) | (state[:, None] == 0)
        return jnp.where(keep, logits, NEG_INF), state


@dataclasses.dataclass(frozen=True)
class HFTopP(LogitTransform):
    """transformers' ``TopPLogitsWarper`` (nucleus sampling, Holtzman et al. 2020, arXiv:1904.09751).

    Sort ascending, c_i = the cumulative softmax mass up to and including position i; remove
    positions with c_i <= 1 - p, except the last ``min_tokens_to_keep``. Equivalently: keep the
    most likely tokens until the mass before a token reaches p. ``p`` in [0, 1]; ``p >= 1`` is the
    identity (transformers skips the warper), ``p = 0`` keeps only the top ``min_tokens_to_keep``.

    Ties at the cut: how many of a group of tied tokens are kept is transformers' number, but
    which ones transformers keeps follows torch's unstable CPU sort (no documented rule); here the
    lower ids are kept, as in top-k and argmax.
    """

    p: object = hparam(1.0)
    min_tokens_to_keep: int = 1

    def __post_init__(self):
        check_range(self.p, "top_p", lo=0.0, hi=1.0)
        _check_min_keep(self.min_tokens_to_keep)

    def init(self, batch):
        return as_rows(self.p, batch, "top_p")

    def apply(self, logits, state, ctx):
        V = logits.shape[-1]
        # ascending, ties with the higher id first, so the lower ids of a tied group survive the cut
        order = jnp.argsort(-logits, axis=-1, stable=True)[:, ::-1]
        cum = jnp.cumsum(masked_softmax(jnp.take_along_axis(logits, order, axis=-1)), axis=-1)
        remove = (cum <= (1.0 - state)[:, None]) & (jnp.arange(V)[None, :] < V - self.min_tokens_to_keep)
        remove = _unsort(remove, order) & (state[:, None] < 1.0)
        return jnp.where(remove, NEG_INF, logits), state


@dataclasses.dataclass(frozen=True)
class HFMinP(LogitTransform):
    """transformers' ``MinPLogitsWarper`` (min-p sampling, Nguyen et al. 2024, arXiv:2407.01082).

    probs = softmax(x); remove tokens with probs_v < p * max(probs), except the top
    ``min_tokens_to_keep``. ``p`` in [0, 1]; ``p = 0`` is the identity.
    """

    p: object = hparam(0.05)
    min_tokens_to_keep: int = 1

    def __post_init__(self):
        check_range(self.p, "min_p", lo=0.0, hi=1.0)
        _check_min_keep(self.min_tokens_to_keep)

    def init(self, batch):
        return as_rows(self.p, batch, "min_p")

    def apply(self, logits, state, ctx):
        probs = masked_softmax(logits)
        remove = probs < state[:, None] * probs.max(-1, keepdims=True)
        # With p <= 1 the top token is never removed, so only a larger min_tokens_to_keep needs a rank;
        # transformers keeps torch.topk's indices there, ties broken by lower id here.
        if self.min_tokens_to_keep > 1:
            rank = jnp.argsort(jnp.argsort(-probs, axis=-1, stable=True), axis=-1, stable=True)
            remove &= rank >= self.min_tokens_to_keep
        return jnp.where(remove, NEG_INF, logits), state


@dataclasses.dataclass(frozen=True)
class TypicalP(LogitTransform):
    """Locally typical sampling (Meister et al. 2023, arXiv:2202.00666), as transformers' ``TypicalLogitsWarper``.

    With log-probabilities l_v = log softmax(x)_v and entropy H = -sum_v p_v l_v, each token's
    atypicality is s_v = | -l_v - H |. Tokens are sorted by s ascending (most typical first); with
    c_i the cumulative probability along that order, i* = min(#{i : c_i < mass}, V - 1) and the
    tokens kept are those with s_v <= s_(i*) (ties at the cut all kept), plus the
    ``min_tokens_to_keep`` most typical. So the most likely token can be removed. ``mass`` in
    (0, 1]; ``mass = 1`` is the identity (transformers' disabled value).
    """

    mass: object = hparam(0.9)
    min_tokens_to_keep: int = 1

    def __post_init__(self):
        check_range(self.mass, "typical_p", lo=0.0, hi=1.0, lo_open=True)
        _check_min_keep(self.min_tokens_to_keep)

    def init(self, batch):
        return as_rows(self.mass, batch, "typical_p")

    def apply(self, logits, state, ctx):
        V = logits.shape[-1]
        logp = masked_log_softmax(logits)
        finite = jnp.isfinite(logp)
        ent = -jnp.sum(jnp.where(finite, logp * jnp.exp(logp), 0.0), axis=-1, keepdims=True)
        shifted = jnp.where(finite, jnp.abs(-logp - ent), jnp.inf)
        order = jnp.argsort(shifted, axis=-1, stable=True)
        sorted_shifted = jnp.take_along_axis(shifted, order, axis=-1)
        cum = jnp.cumsum(masked_softmax(jnp.take_along_axis(logits, order, axis=-1)), axis=-1)
        last = jnp.minimum((cum < state[:, None]).sum(-1), V - 1)
        cut = jnp.take_along_axis(sorted_shifted, last[:, None], axis=-1)
        remove = (sorted_shifted > cut) & (jnp.arange(V)[None, :] >= self.min_tokens_to_keep)
        remove = _unsort(remove, order) & (state[:, None] < 1.0)
        return jnp.where(remove, NEG_INF, logits), state


@dataclasses.dataclass(frozen=True)
class EpsilonCutoff(LogitTransform):
    """Epsilon sampling (Hewitt et al. 2022, arXiv:2210.15191), as transformers' ``EpsilonLogitsWarper``.

    Removes tokens with softmax(x)_v < epsilon, except those at least as large as the
    ``min_tokens_to_keep``-th largest logit (so a row is never emptied). ``epsilon`` in [0, 1);
    0 is the identity. The paper suggests 3e-4 to 9e-4.
    """

    epsilon: object = hparam(3e-4)
    min_tokens_to_keep: int = 1

    def __post_init__(self):
        check_range(self.epsilon, "epsilon", lo=0.0, hi=1.0, hi_open=True)
        _check_min_keep(self.min_tokens_to_keep)

    def init(self, batch):
        return as_rows(self.epsilon, batch, "epsilon")

    def apply(self, logits, state, ctx):
        remove = (masked_softmax(logits) < state[:, None]) & ~_keep_top(logits, self.min_tokens_to_keep)
        return jnp.where(remove, NEG_INF, logits), state


@dataclasses.dataclass(frozen=True)
class EtaCutoff(LogitTransform):
    """Eta sampling (Hewitt et al. 2022, arXiv:2210.15191), as transformers' ``EtaLogitsWarper``.

    With H the entropy of softmax(x) (nats), the cutoff is eta = min(epsilon, sqrt(epsilon) * exp(-H));
    removes tokens with softmax(x)_v < eta, except those at least as large as the
    ``min_tokens_to_keep``-th largest logit. ``epsilon`` (transformers' ``eta_cutoff``) in [0, 1);
    0 is the identity. The paper suggests 3e-4 to 2e-3.
    """

    epsilon: object = hparam(6e-4)
    min_tokens_to_keep: int = 1

    def __post_init__(self):
        check_range(self.epsilon, "eta", lo=0.0, hi=1.0, hi_open=True)
        _check_min_keep(self.min_tokens_to_keep)

    def init(self, batch):
        return as_rows(self.epsilon, batch, "eta")

    def apply(self, logits, state, ctx):
        logp = masked_log_softmax(logits)
        probs = jnp.exp(logp)
        ent = -jnp.sum(jnp.where(jnp.isfinite(logp), logp * probs, 0.0), axis=-1, keepdims=True)
        eps = state[:, None]
        eta = jnp.minimum(eps, jnp.sqrt(eps) * jnp.exp(-ent))
        remove = (masked_softmax(logits) < eta) & ~_keep_top(logits, self.min_tokens_to_keep)
        return jnp.where(remove, NEG_INF, logits), state


@dataclasses.dataclass(frozen=True)
class NoRepeatNGram(LogitTransform):
    """No repeated n-grams, as transformers' ``NoRepeatNGramLogitsProcessor`` (fairseq's ``no_repeat_ngram_size``).

    For a row whose sequence is t_0 .. t_{L-1} (``ctx.tokens[b, :ctx.lengths[b]]``, prompt
    included), bans every token t_{j+n-1} with 0 <= j <= L - n and t_{j..j+n-2} equal to the
    last n - 1 tokens t_{L-n+1..L-1}: the tokens that would complete an n-gram already in the
    sequence. n = 1 bans every token already present; n = 0 (or L < n) bans nothing.

    ``size`` is a runtime int >= 0 (scalar or per-row [B]): the comparison runs a
    ``fori_loop`` of n - 1 steps over fixed [B, S] buffers, so any n reuses one compiled program.
    Cost per step: O(n * S) comparisons per row.
    """

    size: object = hparam(3)

    def __post_init__(self):
        _check_int_rows(self.size, "no_repeat_ngram_size", lo=0)

    def init(self, batch):
        return as_rows(self.size, batch, "no_repeat_ngram_size", jnp.int32)

    def apply(self, logits, state, ctx):
        if ctx is None:
            raise ValueError("no_repeat_ngram needs a LogitContext with the tokens generated so far")
        n = state
        tokens, lengths = ctx.tokens.astype(jnp.int32), ctx.lengths.astype(jnp.int32)
        B, S = tokens.shape
        V = logits.shape[-1]
        j = jnp.arange(S, dtype=jnp.int32)[None, :]  # window start
        start = (lengths - n + 1)[:, None]  # where the last n - 1 tokens begin

        def same(i, ok):
            a = jnp.take_along_axis(tokens, jnp.clip(j + i, 0, S - 1), axis=1)
            b = jnp.take_along_axis(tokens, jnp.clip(start + i, 0, S - 1), axis=1)
            return ok & ((a == b) | (i >= n - 1)[:, None])

        ok = jax.lax.fori_loop(0, jnp.maximum(jnp.max(n) - 1, 0), same, jnp.ones((B, S), bool))
        valid = (n >= 1)[:, None] & (j <= (lengths - n)[:, None])
        last = jnp.take_along_axis(tokens, jnp.clip(j + n[:, None] - 1, 0, S - 1), axis=1)
        # windows that ban nothing (and ids outside the vocabulary) go to column V, dropped by the scatter
        idx = jnp.where(ok & valid & (last >= 0) & (last < V), last, V)
        banned = jnp.zeros((B, V), bool).at[jnp.arange(B)[:, None], idx].set(True, mode="drop")
        return jnp.where(banned, NEG_INF, logits), state


@dataclasses.dataclass(frozen=True)
class AllowedTokens(LogitTransform):
    """Per-row allowed tokens: x_v stays where ``mask[b, v]`` is True, else -inf.

    ``mask``: bool [V] (every row) or [B, V], a runtime array in the state, so a new mask of the
    same shape does not recompile. Every row must allow at least one token. This is the jittable
    form of transformers' ``PrefixConstrainedLogitsProcessor`` for a mask known in advance.
    """

    mask: object = hparam(None)

    def __post_init__(self):
        if _is_tracer(self.mask):
            return
        arr = np.asarray(self.mask)
        if arr.dtype != bool:
            raise ValueError(
                f"allowed_tokens mask must be a bool array of shape [V] or [B, V], got dtype {arr.dtype}; "
                "build it with e.g. np.zeros((B, V), bool) and set the allowed ids to True"
            )
        if arr.ndim not in (1, 2) or arr.shape[-1] == 0:
            raise ValueError(f"allowed_tokens mask must have shape [V] or [B, V], got shape {arr.shape}")
        empty = np.flatnonzero(~arr.reshape(-1, arr.shape[-1]).any(-1))
        if empty.size:
            raise ValueError(f"allowed_tokens mask allows no token in row(s) {empty.tolist()}; every row needs one")

    def init(self, batch):
        m = jnp.asarray(self.mask, bool)
        if m.ndim == 1:
            return jnp.broadcast_to(m, (batch, m.shape[0]))
        if m.shape[0] != batch:
            raise ValueError(f"allowed_tokens mask has {m.shape[0]} rows but the batch has {batch}")
        return m

    def apply(self, logits, state, ctx):
        if state.shape[-1] != logits.shape[-1]:
            raise ValueError(
                f"allowed_tokens mask covers {state.shape[-1]} tokens but the logits have vocabulary {logits.shape[-1]}"
            )
        return jnp.where(state, logits, NEG_INF), state


# Lower-case constructors, the way users spell them.
def typical_p(mass=0.9, *, min_tokens_to_keep: int = 1) -> TypicalP:
    """Returns a TypicalP (locally typical sampling) transform (0 < mass <= 1, scalar or per-row)."""
    return TypicalP(mass, min_tokens_to_keep)


def epsilon_cutoff(epsilon=3e-4, *, min_tokens_to_keep: int = 1) -> EpsilonCutoff:
    """Returns an EpsilonCutoff (epsilon sampling) transform (0 <= epsilon < 1, scalar or per-row)."""
    return EpsilonCutoff(epsilon, min_tokens_to_keep)


def eta_cutoff(epsilon=6e-4, *, min_tokens_to_keep: int = 1) -> EtaCutoff:
    """Returns an EtaCutoff (eta sampling) transform (0 <= epsilon < 1, scalar or per-row)."""
    return EtaCutoff(epsilon, min_tokens_to_keep)


def no_repeat_ngram(size=3) -> NoRepeatNGram:
    """Returns a NoRepeatNGram transform (n-gram size int >= 0, scalar or per-row; 0 disables)."""
    return NoRepeatNGram(size)


def allowed_tokens(mask) -> AllowedTokens:
    """Returns an AllowedTokens transform keeping only the ids where ``mask`` (bool [V] or [B, V]) is True."""
    return AllowedTokens(mask)


def _enabled(value, on) -> bool:
    """Returns whether a stage is needed: a tracer always, else when ``on(value)`` holds for some row."""
    return _is_tracer(value) or bool(np.any(on(np.asarray(value))))


def hf_sampling(
    temperature=1.0, top_k=50, top_p=1.0, min_p=None, typical_p=1.0, epsilon=0.0, eta=0.0,
    repetition_penalty=1.0, no_repeat_ngram_size=0, do_sample=True, *, min_tokens_to_keep: int = 1,
    allowed_tokens=None, all_stages: bool = False,
) -> NamedChain:
    """Returns the logit-transform chain transformers' ``generate`` applies for these generation-config values.

    The order is ``_get_logits_processor``'s: ``repetition_penalty`` (CTRL, prompt included),
    ``no_repeat_ngram`` (size ``no_repeat_ngram_size``), ``allowed_tokens`` (where transformers
    applies ``prefix_allowed_tokens_fn``), then, only when ``do_sample``: ``temperature``,
    ``top_k``, ``top_p``, ``min_p``, ``typical_p``, ``epsilon`` (``epsilon_cutoff``), ``eta``
    (``eta_cutoff``). With ``do_sample=False`` the warpers are left out and the chain ends in
    ``greedy`` (transformers' argmax, lowest id on ties). The names above are the keys of the
    chain's state (a ``NamedChain``).

    Defaults and "disabled" values are transformers': temperature 1.0, top_k 50 (0 or None
    disables), top_p 1.0, min_p None, typical_p 1.0, epsilon 0.0, eta 0.0, repetition_penalty
    1.0, no_repeat_ngram_size 0. A stage at its disabled value is left out, as transformers does.
    Note ``top_k=50`` is on by default, as in transformers; pass ``top_k=0`` for pure top-p.
    Values may be per-row arrays [B]. Changing a value (say top_p 0.9 -> 0.8) does not
    recompile; switching a stage on or off changes the chain and does, unless
    ``all_stages=True``, which keeps every warper in the chain (each is exactly the identity at
    its disabled value) so any later values share one compiled program.

    Unlike transformers, out-of-range values raise ValueError instead of being ignored
    (transformers silently skips e.g. ``epsilon_cutoff=1.5``). ``temperature=0`` raises: use
    ``do_sample=False`` for greedy decoding.

    Ordering matters: ``chain(top_p(0.9), temperature(0.7))`` applies top-p to the untempered
    distribution and keeps a different set than transformers, which scales first.
    """
    if not isinstance(do_sample, (bool, np.bool_)):
        raise ValueError(f"do_sample must be True or False, got {do_sample!r}")
    min_keep = _check_min_keep(min_tokens_to_keep)
    if not isinstance(all_stages, (bool, np.bool_)):
        raise ValueError(f"all_stages must be True or False, got {all_stages!r}")
    temperature = 1.0 if temperature is None else temperature
    top_k = 0 if top_k is None else top_k
    top_p = 1.0 if top_p is None else top_p
    typical_p = 1.0 if typical_p is None else typical_p
    epsilon = 0.0 if epsilon is None else epsilon
    eta = 0.0 if eta is None else eta
    repetition_penalty = 1.0 if repetition_penalty is None else repetition_penalty
    no_repeat_ngram_size = 0 if no_repeat_ngram_size is None else no_repeat_ngram_size
    if not _is_tracer(temperature) and np.any(np.asarray(temperature, np.float64) == 0):
        raise ValueError("temperature must be > 0, got 0; for greedy decoding pass do_sample=False")
    # Build every stage first: each validates its value even when sampling is off or it is left out.
    stages = [
        ("repetition_penalty", RepetitionPenalty(repetition_penalty), lambda v: v != 1.0, False),
        ("no_repeat_ngram", NoRepeatNGram(no_repeat_ngram_size), lambda v: v > 0, False),
    ]
    if allowed_tokens is not None:
        stages.append(("allowed_tokens", AllowedTokens(allowed_tokens), None, False))
    stages += [
        ("temperature", Temperature(temperature), lambda v: v != 1.0, True),
        ("top_k", HFTopK(top_k, min_keep), lambda v: v != 0, True),
        ("top_p", HFTopP(top_p, min_keep), lambda v: v < 1.0, True),
        ("min_p", HFMinP(0.0 if min_p is None else min_p, min_keep), (lambda v: True) if min_p is not None else None, True),
        ("typical_p", TypicalP(typical_p, min_keep), lambda v: v < 1.0, True),
        ("epsilon", EpsilonCutoff(epsilon, min_keep), lambda v: v > 0.0, True),
        ("eta", EtaCutoff(eta, min_keep), lambda v: v > 0.0, True),
    ]
    values = {
        "repetition_penalty": repetition_penalty, "no_repeat_ngram": no_repeat_ngram_size, "temperature": temperature,
        "top_k": top_k, "top_p": top_p, "min_p": min_p, "typical_p": typical_p, "epsilon": epsilon, "eta": eta,
    }
    chosen = []
    for name, t, on, warper in stages:
        if warper and not do_sample:
            continue
        if name == "allowed_tokens" or (warper and all_stages) or (on is not None and _enabled(values[name], on)):
            chosen.append((name, t))
    if not do_sample:
        chosen.append(("greedy", Greedy()))
    return named_chain(*chosen)
