"""THR (P69): token hidden reward, a first-order estimate of each token's effect on the correct responses.

Paper: *Token Hidden Reward: Steering Exploration-Exploitation in Group Relative Deep Reinforcement
Learning* (Deng, Ren, Li, Gong, Sutherland, Li, Thrampoulidis; arXiv 2510.03669; no code found).
Under GRPO, the update on token t of rollout i also moves the likelihood of every *other* token.
With the last layer's hidden state h (final-normed, what the head reads) as a fixed feature and the
head W as the parameter, the gradient of log pi(y | h) is ``(e_y - pi) h^T`` and one step of
``A_i log pi(y_{i,t})`` changes log pi(y_{j,s}) by ``eta A_i <h_{i,t}, h_{j,s}> <e_{y_{i,t}} - pi_{i,t},
e_{y_{j,s}} - pi_{j,s}>`` (the learning-dynamics decomposition of Ren & Sutherland). Summed over the
tokens of the *correct* responses j of the same prompt (the group), this is the token hidden reward:

    THR_{i,t} = A_i sum_{j correct} sum_s <h_{i,t}, h_{j,s}> (1[y = y'] - pi'(y) - pi(y') + <pi, pi'>)

with y = y_{i,t}, pi = pi_{i,t}, y' = y_{j,s}, pi' = pi_{j,s}; the bracket is ``<e_y - pi, e_y' - pi'>``.
THR > 0: training on the token raises the correct responses' likelihood (exploitation); THR < 0: it
lowers it, keeping probability mass for other outputs (exploration). The reweighted GRPO scales each
token's advantage by ``1 + p sign(THR_{i,t})``: p > 0 for exploitation (greedy accuracy), p < 0 for
exploration (Pass@K); p = 0 is GRPO exactly.

Computation (no [N, N, V]; chunks of ``block_size`` vocabulary entries, one group at a time):

* ``method="factored"`` (default, O(N V D) per group, memory [N, block]): the sum over correct tokens is
  a Frobenius product with the correct tokens' summed head gradient,
  ``THR_{i,t} = A_i <(e_y - pi) h^T, Gamma>`` with ``Gamma = sum_{j,s correct} (e_{y'} - pi') h'^T``
  [V, D]; per vocabulary block, ``Gamma_blk = R_blk^T (c * H)`` and the block's share is
  ``sum_v R_blk * (H Gamma_blk^T)`` (R = E - P, the one-hot minus the probabilities; c = 1 on correct
  tokens). Exact, linear in the tokens, so no subsampling is needed.
* ``method="pairwise"`` (O(N^2 (V + D)), memory [N, N]): the bracket matrix ``R R^T`` accumulated over
  vocabulary blocks (the identity above as [N, V] x [V, N] products), times the Gram matrix ``H H^T``,
  contracted with c. The reference the factored form is tested against.

What the reachable text of the paper (abstract and summaries; the method section and any code were not
reachable here) confirms: THR measures each token's influence on the likelihood of correct responses under
GRPO, positive THR favours exploitation and negative exploration, the reweighting amplifies positive-THR
tokens and weakens negative ones for exploitation (reverse for exploration), greedy accuracy / Pass@K gains.
**Unverified**: the exact formula (here the head-only learning-dynamics derivation above, as NOTES-losses
P69 writes it), whether the correct set is the group or the batch (here: the group), any normalisation
(irrelevant to sign(THR) when positive and global), the weight form ``1 + p sign(THR)`` and p's values,
and whether THR uses the sampling policy (here: yes, the policy that drew the rollouts; with
``inner_steps=1`` the same as the updated one before its step).

Functions: :func:`token_hidden_reward` (from hidden states, head, targets), :func:`model_token_hidden_reward`
(from a model and a rollout batch), :func:`thr_weights`; :class:`THRWeights` (a LossTransform reading
``batch["thr"]``) and :class:`TokenHiddenReward` (the ``select`` + ``callback`` plug-ins of
:func:`tokjax.train.rl.rl_train`). p is a runtime float32 array: a new value does not recompile.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp

from tokjax.logits._base import check_range, hparam
from tokjax.losses._stats import LossTransform, TokenStats

__all__ = ["METHODS", "THRWeights", "THR_KEY", "THR_P_KEY", "model_token_hidden_reward", "thr_weights",
           "token_hidden_reward", "check_p"]

METHODS = ("factored", "pairwise")
THR_KEY, THR_P_KEY = "thr", "thr_p"
_F32 = jnp.float32


def _concrete(x) -> bool:
    return not isinstance(x, jax.core.Tracer)


def check_p(p, name: str = "p") -> None:
    if jnp.ndim(p) != 0:
        raise ValueError(f"{name} must be a scalar, got shape {tuple(jnp.shape(p))}")
    check_range(p, name, lo=-1.0, hi=1.0)  # |p| <= 1 keeps every weight 1 + p sign(THR) >= 0


def _check_group_size(group_size, B: int) -> None:
    if not isinstance(group_size, int) or isinstance(group_size, bool) or group_size < 2:
        raise ValueError(f"group_size must be an int >= 2 (rollouts per prompt), got {group_size!r}")
    if B % group_size:
        raise ValueError(f"the batch of {B} rollouts must be a multiple of group_size {group_size}")


def _check_inputs(hidden, head, targets, mask, advantages, correct, group_size, layout, lse, method, block_size):
    if hidden.ndim != 3:
        raise ValueError(f"hidden must be [B, T, D] (final-normed last-layer states), got shape {tuple(hidden.shape)}")
    B, T, D = hidden.shape
    if layout not in ("dv", "vd"):
        raise ValueError(f"layout must be 'dv' (head [D, V]) or 'vd' (a tied embedding [V, D]), got {layout!r}")
    if head.ndim != 2 or head.shape[0 if layout == "dv" else 1] != D:
        want = "[D, V]" if layout == "dv" else "[V, D]"
        raise ValueError(f"head must be {want} with D = {D} (layout {layout!r}), got shape {tuple(head.shape)}")
    if targets.shape != (B, T) or not jnp.issubdtype(targets.dtype, jnp.integer):
        raise ValueError(f"targets must be int [B, T]={B, T}, got {targets.dtype} {tuple(targets.shape)}")
    if mask.shape != (B, T):
        raise ValueError(f"mask must be [B, T]={B, T}, got {tuple(mask.shape)}")
    if advantages.shape not in ((B,), (B, T)):
        raise ValueError(f"advantages must be [B]={B,} or [B, T]={B, T}, got {tuple(advantages.shape)}")
    if correct.shape != (B,):
        raise ValueError(f"correct must be bool [B]={B,} (which rollouts are right), got {tuple(correct.shape)}")
    if lse is not None and lse.shape != (B, T):
        raise ValueError(f"lse must be [B, T]={B, T}, got {tuple(lse.shape)}")
    _check_group_size(group_size, B)
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if not isinstance(block_size, int) or isinstance(block_size, bool) or block_size < 1:
        raise ValueError(f"block_size must be an int >= 1 (vocabulary entries per chunk), got {block_size!r}")
    for name, x in (("advantages", advantages), ("hidden", hidden)):
        if _concrete(x) and not bool(jnp.all(jnp.isfinite(x))):
            raise ValueError(f"{name} must be finite (got NaN or inf)")


def token_hidden_reward(hidden, head, targets, mask, advantages, correct, group_size: int, *, layout: str = "dv",
                        lse=None, method: str = "factored", block_size: int = 4096) -> jax.Array:
    """Returns float32 [B, T] THR_{i,t} (P69, equation in the module docstring); 0 outside ``mask``.

    ``hidden`` [B, T, D]: the final-normed last-layer states that predict ``targets`` [B, T] (int);
    ``head`` [D, V] (``layout="dv"``) or [V, D] (``"vd"``, a tied embedding); ``mask`` [B, T] the valid
    completion tokens; ``advantages`` [B] or [B, T] (A_i); ``correct`` bool [B] (the anchors' rows);
    ``group_size`` consecutive rows share a prompt and only a row's own group is summed over. ``lse``
    [B, T] the log-partition of each position (computed blockwise when None). A group without a correct
    rollout gives THR 0. No gradient flows (a weight, not a loss term).
    """
    hidden, head = jnp.asarray(hidden), jnp.asarray(head)
    targets, mask = jnp.asarray(targets), jnp.asarray(mask).astype(bool)
    advantages, correct = jnp.asarray(advantages, _F32), jnp.asarray(correct).astype(bool)
    lse = None if lse is None else jnp.asarray(lse, _F32)
    _check_inputs(hidden, head, targets, mask, advantages, correct, group_size, layout, lse, method, block_size)
    sg = jax.lax.stop_gradient
    return _thr(sg(hidden).astype(_F32), sg(head).astype(_F32), targets.astype(jnp.int32), mask, sg(advantages),
                correct, None if lse is None else sg(lse), group_size=group_size, layout=layout, method=method,
                block_size=block_size)


@functools.partial(jax.jit, static_argnames=("group_size", "layout", "method", "block_size"))
def _thr(hidden, head, targets, mask, advantages, correct, lse, *, group_size, layout, method, block_size):
    B, T, D = hidden.shape
    w = head if layout == "dv" else head.T  # [D, V]
    V = w.shape[1]
    bs = min(block_size, V)
    nb = -(-V // bs)
    wp = jnp.pad(w, ((0, 0), (0, nb * bs - V))).reshape(D, nb, bs).transpose(1, 0, 2)  # [nb, D, bs]
    n_groups, N = B // group_size, group_size * T
    h = jnp.where(mask[..., None], hidden, 0.0).reshape(n_groups, N, D)
    y = targets.reshape(n_groups, N)
    anchors = (mask & correct[:, None]).astype(_F32).reshape(n_groups, N)
    cols = jnp.arange(bs)

    def logits(hg, k):  # [N, bs], padded columns at -inf
        z = hg @ wp[k]
        return jnp.where((k * bs + cols < V)[None, :], z, -jnp.inf)

    def group_lse(hg):
        def body(carry, k):
            m, s = carry
            z = logits(hg, k)
            m2 = jnp.maximum(m, jnp.max(z, axis=1))
            return (m2, s * jnp.exp(m - m2) + jnp.sum(jnp.exp(z - m2[:, None]), axis=1)), None
        (m, s), _ = jax.lax.scan(body, (jnp.full((N,), -jnp.inf, _F32), jnp.zeros((N,), _F32)), jnp.arange(nb))
        return m + jnp.log(s)

    def residual(hg, yg, lg, k):  # R = e_y - pi on block k: [N, bs]
        p = jnp.exp(logits(hg, k) - lg[:, None])
        return (yg[:, None] == k * bs + cols[None, :]).astype(_F32) - p

    def one_group(args):
        hg, yg, cg, lg = args
        lg = group_lse(hg) if lg is None else lg
        ch = cg[:, None] * hg
        if method == "factored":
            def body(acc, k):
                r = residual(hg, yg, lg, k)
                gamma = r.T @ ch  # [bs, D]: the correct tokens' head gradient on this block
                return acc + jnp.sum(r * (hg @ gamma.T), axis=1), None
            out, _ = jax.lax.scan(body, jnp.zeros((N,), _F32), jnp.arange(nb))
            return out

        def body(acc, k):
            r = residual(hg, yg, lg, k)
            return acc + r @ r.T, None
        bracket, _ = jax.lax.scan(body, jnp.zeros((N, N), _F32), jnp.arange(nb))
        return ((hg @ hg.T) * bracket) @ cg

    lse_g = None if lse is None else lse.reshape(n_groups, N)
    if lse_g is None:
        s = jax.lax.map(lambda a: one_group((*a, None)), (h, y, anchors))
    else:
        s = jax.lax.map(one_group, (h, y, anchors, lse_g))
    adv = advantages[:, None] if advantages.ndim == 1 else advantages
    return jnp.where(mask, adv * s.reshape(B, T), 0.0)


def model_token_hidden_reward(params, cfg, batch: dict, advantages, correct, group_size: int, *,
                              method: str = "factored", block_size: int = 4096) -> jax.Array:
    """Returns float32 [B, T] THR of a rollout batch under the model (``params``, ``cfg``): the last layer's
    final-normed hidden states and log-partitions from :func:`tokjax.losses.token_stats` (``hidden=True``),
    the head from :func:`tokjax.model.forward.head_matrix`; ``batch`` as token_stats reads it (its mask
    gives the valid completion tokens). Other arguments as :func:`token_hidden_reward`.
    """
    from tokjax.losses._next_token import token_stats
    from tokjax.model.forward import head_matrix

    stats = token_stats(params, cfg, batch, hidden=True)
    targets = jnp.asarray(batch["tokens"])[:, 1:] if "tokens" in batch else jnp.asarray(batch["targets"])
    w, layout = head_matrix(params, cfg)
    return token_hidden_reward(stats.hidden, w, targets, stats.mask, advantages, correct, group_size,
                               layout=layout, lse=stats.lse, method=method, block_size=block_size)


def thr_weights(thr, p) -> jax.Array:
    """Returns float32 token weights ``1 + p sign(THR)`` (P69's reweighting; THR = 0 keeps weight 1).

    ``p`` in [-1, 1] (a traced scalar is allowed): > 0 amplifies positive-THR tokens and weakens negative ones
    (exploitation), < 0 the reverse (exploration), 0 gives all-ones weights (GRPO).
    """
    check_p(p)
    return 1.0 + jnp.asarray(p, _F32) * jnp.sign(jnp.asarray(thr, _F32))


@dataclasses.dataclass(frozen=True)
class THRWeights(LossTransform):
    """LossTransform: multiply the token weights by ``1 + p sign(batch["thr"])`` (P69).

    ``batch[key]`` [B, T] holds the THR of the rollouts (what :meth:`TokenHiddenReward.select` puts there);
    p is ``batch[p_key]`` when the batch carries it (a runtime array), else the state's ``p``.
    """

    p: object = hparam(0.0)
    key: str = THR_KEY
    p_key: str = THR_P_KEY

    def __post_init__(self):
        check_p(self.p)

    def init(self):
        return {"p": jnp.asarray(self.p, _F32)}

    def apply(self, stats: TokenStats, state, batch):
        if not isinstance(batch, dict) or self.key not in batch:
            raise ValueError(f"THRWeights needs batch[{self.key!r}] [B, T] (token hidden rewards; "
                             f"TokenHiddenReward.select puts them there)")
        thr = jnp.asarray(batch[self.key], _F32)
        if thr.shape != stats.logp.shape:
            raise ValueError(f"batch[{self.key!r}] shape {tuple(thr.shape)} must equal {tuple(stats.logp.shape)}")
        p = batch.get(self.p_key, state["p"])
        return stats.replace(weights=stats.weights * thr_weights(jax.lax.stop_gradient(thr), p)), state
