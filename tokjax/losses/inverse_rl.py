"""Inverse RL as TD-regularised MLE: offline IQLearn for language (P60: *Imitating Language via Scalable Inverse
Reinforcement Learning*, Wulfmeier et al., arXiv 2409.01369).

The model's logits are a soft Q-function, ``Q(s_t, a) = z_t[a]``; its soft value is the log-partition
``V(s_t) = logsumexp_a z_t[a]`` (``TokenStats.lse``), so ``pi = softmax(Q)`` and
``log pi(a_t|s_t) = Q(s_t, a_t) - V(s_t)``. IQLearn's implied reward of a demonstrated transition is::

    r_t = Q(s_t, a_t) - gamma V(s_{t+1}) = log pi(a_t|s_t) + V(s_t) - gamma V(s_{t+1})          (P60 TD term)

Offline IQLearn with the chi^2 regulariser (P60 eq. 14; the paper writes it as an objective over
the expert state-action distribution mu_E) is MLE plus a TD penalty::

    J(pi) = E_{mu_E}[ lambda (V(s) + log pi(a|s) - gamma E_{s'} V(s'))^2 - log pi(a|s) ]          (P60 eq. 14)

Derivation (IQLearn, Garg et al. 2021, offline form): with phi(x) = x - x^2 / (4 c) for chi^2, the
loss ``-E[phi(Q - gamma V')] + E[V - gamma V']`` collapses per transition to
``-E[Q - V] + (1/(4c)) E[(Q - gamma V')^2] = -E[log pi] + lambda E[r^2]`` (lambda = 1/(4c)): the
boundary term ``(1 - gamma) E[V(s_0)]`` of the online objective is replaced by the expert's own
value differences ``E[V(s) - gamma V(s')]``, which telescope against the linear TD term and leave
exactly the log-likelihood. So lambda = 0 is MLE, value and gradient.

Conventions here: the sum runs over the masked-in (response) targets of each row; the state after the
last masked-in target of a row is terminal (absorbing, ``V = 0``, IQLearn's ``done`` mask), so the last
transition's reward is ``Q(s, a)`` itself. Gradients flow through ``log pi`` and both values (offline
IQLearn has no target network). Reduction: sum over tokens divided by the token count (``token_mean``,
as :func:`tokjax.losses.next_token_loss`) or by the number of rows (``seq_mean``). ``lam`` >= 0 and
``gamma`` in (0, 1] may be traced runtime arrays.

The telescoping identity that any implementation must satisfy (tested)::

    sum_{t<T} [Q(s_t, a_t) - V(s_{t+1})] = sum_{t<T} log pi(a_t|s_t) + V(s_0) - V(s_T)        (gamma = 1)
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from tokjax.logits._base import check_range
from tokjax.losses._distill import hparam_value
from tokjax.losses._stats import masked_token_arrays
from tokjax.losses.cut_cross_entropy import DEFAULT_BLOCK_SIZE

__all__ = ["REDUCTIONS", "inverse_rl_loss", "make_inverse_rl_loss", "soft_q", "td_rewards"]

REDUCTIONS = ("token_mean", "seq_mean", "sum")
_F32 = jnp.float32


def _check(logp, lse, mask) -> tuple[jax.Array, jax.Array, jax.Array]:
    (lp, v), m = masked_token_arrays(mask, logp=logp, lse=lse)
    return lp, v, m


def _check_gamma(gamma):
    check_range(gamma, "gamma", lo=0.0, hi=1.0, lo_open=True)
    return jnp.asarray(gamma, _F32)


def soft_q(logp, lse, mask) -> jax.Array:
    """Returns float32 [B, T] ``Q(s_t, a_t) = log pi(a_t|s_t) + V(s_t)`` (the target's logit), 0 where masked."""
    lp, v, m = _check(logp, lse, mask)
    return jnp.where(m, lp + v, 0.0)


def td_rewards(logp, lse, mask, gamma=1.0) -> jax.Array:
    """Returns float32 [B, T] P60 rewards ``r_t = log pi(a_t|s_t) + V(s_t) - gamma V(s_{t+1})``, 0 where masked.

    ``logp`` / ``lse`` float [B, T] per-target log-prob and log-partition (``TokenStats.logp`` /
    ``.lse``), ``mask`` bool [B, T] (a contiguous response span per row); ``V(s_{t+1})`` is the next
    target's ``lse`` when that target is masked in, else 0 (terminal state). ``gamma`` in (0, 1].
    """
    g = _check_gamma(gamma)
    lp, v, m = _check(logp, lse, mask)
    v_next = jnp.concatenate([v[:, 1:], jnp.zeros_like(v[:, :1])], axis=1)
    m_next = jnp.concatenate([m[:, 1:], jnp.zeros_like(m[:, :1])], axis=1)
    return jnp.where(m, lp + v - g * jnp.where(m_next, v_next, 0.0), 0.0)


def inverse_rl_loss(logp, lse, mask, *, lam, gamma=1.0, reduction: str = "token_mean") -> tuple[jax.Array, dict]:
    """Returns (float32 loss, metrics) of P60 offline IQLearn: ``sum_t m_t [-log pi_t + lam * r_t^2]`` reduced.

    P60 eq. 14 with ``r_t`` from :func:`td_rewards`; ``lam`` >= 0 (0 = MLE, value and gradient),
    ``gamma`` in (0, 1]; ``reduction`` in :data:`REDUCTIONS` (``token_mean`` divides by the number
    of masked-in targets, ``seq_mean`` by the number of rows, ``sum`` not at all). Metrics: ``nll``
    (token-mean -log pi), ``td_sq`` (token-mean r^2), ``reward`` (token-mean r), ``token_count``.
    """
    check_range(lam, "lam", lo=0.0)
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    lam = jnp.asarray(lam, _F32)
    r = td_rewards(logp, lse, mask, gamma)
    lp, _, m = _check(logp, lse, mask)
    nll_sum = -jnp.sum(lp)
    td_sum = jnp.sum(jnp.where(m, r * r, 0.0))
    total = nll_sum + lam * td_sum
    n = jnp.sum(m).astype(_F32)
    denom = {"token_mean": jnp.maximum(n, 1.0), "seq_mean": jnp.asarray(max(m.shape[0], 1), _F32),
             "sum": jnp.asarray(1.0, _F32)}[reduction]
    safe = jnp.maximum(n, 1.0)
    sg = jax.lax.stop_gradient
    metrics = {"nll": sg(nll_sum / safe), "td_sq": sg(td_sum / safe), "reward": sg(jnp.sum(r) / safe),
               "token_count": n}
    return total / denom, metrics


def make_inverse_rl_loss(*, lam: float = 0.1, gamma: float = 1.0, method: str = "cut",
                         block_size: int = DEFAULT_BLOCK_SIZE, reduction: str = "token_mean") -> Callable:
    """Returns ``loss_fn(params, cfg, batch, rng) -> (loss, metrics)``: :func:`inverse_rl_loss` on the batch's
    :func:`tokjax.losses.token_stats` (``logp`` and ``lse`` from one streaming head pass, no [B, T, V]
    logits with ``method="cut"``). ``batch["hparams"]["lam"]`` / ``["gamma"]`` override at run time.
    The batch keys are :func:`tokjax.losses.next_token_loss`'s (``tokens``, ``prompt_lengths``, ``mask``...)."""
    from tokjax.losses._next_token import METHODS, token_stats

    check_range(lam, "lam", lo=0.0)
    check_range(gamma, "gamma", lo=0.0, hi=1.0, lo_open=True)
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")

    def loss_fn(params, cfg, batch, rng=None):
        del rng
        stats = token_stats(params, cfg, batch, method=method, block_size=block_size)
        loss, metrics = inverse_rl_loss(stats.logp, stats.lse, stats.mask, lam=hparam_value(batch, "lam", lam),
                                        gamma=hparam_value(batch, "gamma", gamma), reduction=reduction)
        metrics["loss"] = loss
        return loss, metrics

    return loss_fn
