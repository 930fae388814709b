"""Verifiers for speculative decoding: greedy, rejection (speculative sampling) and tree (recursive rejection).

Every verifier sees the draft tree and the *transformed* target logits of the verification
block ``[pending, node_0 .. node_{N-1}]`` ([B, 1+N, V]; block index t = node t-1) and returns
a :class:`~tokjax.decoding.speculative.Verdict`.

* ``rejection()`` - speculative sampling (Leviathan et al. 2023, "Fast Inference from
  Transformers via Speculative Decoding", Algorithm 1; Chen et al. 2023): accept draft token
  x ~ q with probability min(1, p(x)/q(x)); on the first rejection sample from the residual
  norm(max(0, p - q)); when every draft token is accepted, sample the bonus token from p.
  Follows the first child of each node (a chain).
* ``tree()`` - multi-candidate recursive rejection sampling over siblings (SpecInfer, Miao et
  al. 2024; "multi-round speculative sampling"): at a node, try its children in index order;
  child i is accepted with probability min(1, r(x_i)/q_i(x_i)) where r is the current
  residual (p at first), and a rejection sets r <- norm(max(0, r - q_i)). Lossless when q_i
  is the distribution x_i was drawn from given the earlier siblings (``Draft.probs``);
  deterministic drafts use point masses (a rejected token is removed from r).
* ``greedy()`` (:class:`GreedyMatch`, not to be confused with the logit transform
  ``tokjax.logits.Greedy``) - argmax verification, for greedy decoding (checks that the transform ends in
  ``greedy()``).

On a chain ``rejection()`` and ``tree()`` agree exactly (same uniforms, same decisions).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from tokjax.decoding._state import ends_greedy
from tokjax.decoding.speculative import Draft, Verdict, Verifier
from tokjax.logits import masked_softmax, sample

__all__ = [
    "greedy", "rejection", "tree", "GreedyMatch", "Rejection", "TreeRejection", "recursive_rejection", "greedy_walk",
]


def _draw(key: jax.Array, probs: jax.Array) -> jax.Array:
    return sample(key, probs=probs)[0]


def _draft_q(draft: Draft, V: int) -> jax.Array:
    if draft.probs is None:
        return jax.nn.one_hot(draft.tokens, V, dtype=jnp.float32)
    return draft.probs.astype(jnp.float32)


def recursive_rejection(
    key: jax.Array,
    draft: Draft,
    logits: jax.Array,
    *,
    first_child_only: bool = False,
    accept_scale: float = 1.0,
    residual_from_target: bool = False,
) -> Verdict:
    """Returns the Verdict of recursive rejection sampling over the draft tree (see the module docstring).

    One pass over the nodes in index order (a topological order): a node is a candidate when
    its parent is the current node; acceptance moves the current node to it (its target
    distribution becomes the residual), a rejection shrinks the residual. ``first_child_only``
    gives standard chain speculative sampling. ``accept_scale`` and ``residual_from_target``
    exist to build deliberately *biased* verifiers for negative tests (1.0 / False is exact).
    """
    B, T, V = logits.shape
    N = T - 1
    p = masked_softmax(logits)  # [B, T, V]; an all-masked row is zeros (never NaN)
    masked = ~jnp.isfinite(logits).any(-1)  # [B, T]
    q = _draft_q(draft, V)
    k_u, k_bonus = jax.random.split(key)
    u = jax.random.uniform(k_u, (B, N))
    rows = jnp.arange(B)

    def body(carry, xs):
        cur, r, count, path, tried = carry
        n, tok, par, valid, q_n, u_n = xs
        par_block = jnp.where(par >= 0, par + 1, 0)
        cand = valid & (par_block == cur)
        if first_child_only:
            cand = cand & ~tried
        r_x = r[rows, tok]
        q_x = q_n[rows, tok]
        acc = cand & (u_n * q_x < accept_scale * r_x)
        rej = cand & ~acc
        if residual_from_target:
            shrunk = r
        else:
            left = jnp.maximum(r - q_n, 0.0)
            total = left.sum(-1, keepdims=True)
            # total == 0 only when r <= q everywhere, i.e. r == q: then acceptance was certain.
            shrunk = jnp.where(total > 1e-12, left / jnp.maximum(total, 1e-30), r)
        p_next = p[:, n + 1]
        r = jnp.where(acc[:, None], p_next, jnp.where(rej[:, None], shrunk, r))
        path = path.at[rows, jnp.where(acc, count, N)].set(n, mode="drop")
        count = count + acc.astype(jnp.int32)
        cur = jnp.where(acc, n + 1, cur)
        tried = jnp.where(acc, False, tried | cand)
        return (cur, r, count, path, tried), None

    init = (
        jnp.zeros((B,), jnp.int32), p[:, 0], jnp.zeros((B,), jnp.int32), jnp.zeros((B, N), jnp.int32),
        jnp.zeros((B,), bool),
    )
    xs = (
        jnp.arange(N), draft.tokens.T.astype(jnp.int32), draft.parents.T.astype(jnp.int32), draft.valid.T,
        jnp.swapaxes(q, 0, 1), u.T,
    )
    (cur, r, count, path, _), _ = jax.lax.scan(body, init, xs)
    bonus = _draw(k_bonus, r)
    return Verdict(
        path=path, count=count, bonus=bonus, accept_at=jnp.arange(N)[None, :] < count[:, None],
        masked=masked[rows, cur],
    )


def greedy_walk(draft: Draft, logits: jax.Array) -> Verdict:
    """Returns the Verdict of argmax verification: descend into the first child whose token is the argmax."""
    B, T, V = logits.shape
    N = T - 1
    best = jnp.argmax(logits, axis=-1).astype(jnp.int32)  # [B, T]
    masked = ~jnp.isfinite(logits).any(-1)
    rows = jnp.arange(B)

    def body(carry, xs):
        cur, count, path = carry
        n, tok, par, valid = xs
        par_block = jnp.where(par >= 0, par + 1, 0)
        acc = valid & (par_block == cur) & (tok == best[rows, cur]) & ~masked[rows, cur]
        path = path.at[rows, jnp.where(acc, count, N)].set(n, mode="drop")
        return (jnp.where(acc, n + 1, cur), count + acc.astype(jnp.int32), path), None

    init = (jnp.zeros((B,), jnp.int32), jnp.zeros((B,), jnp.int32), jnp.zeros((B, N), jnp.int32))
    xs = (jnp.arange(N), draft.tokens.T.astype(jnp.int32), draft.parents.T.astype(jnp.int32), draft.valid.T)
    (cur, count, path), _ = jax.lax.scan(body, init, xs)
    return Verdict(
        path=path, count=count, bonus=best[rows, cur], accept_at=jnp.arange(N)[None, :] < count[:, None],
        masked=masked[rows, cur],
    )


@dataclasses.dataclass(frozen=True)
class GreedyMatch(Verifier):
    """The argmax verifier: accepts draft tokens equal to the target's argmax (exact for greedy decoding)."""

    def check_transform(self, transform) -> None:
        if not ends_greedy(transform):
            raise ValueError(
                "verify.greedy() accepts draft tokens equal to the target's argmax, which equals plain decoding only "
                "for greedy logits (logits=...greedy()); use verify.rejection() or verify.tree() for sampling"
            )

    def verify(self, key, draft: Draft, target_logits: jax.Array) -> Verdict:
        return greedy_walk(draft, target_logits)


@dataclasses.dataclass(frozen=True)
class Rejection(Verifier):
    """Chain speculative sampling: rejection-samples the first child of each node (see :func:`rejection`)."""

    def verify(self, key, draft: Draft, target_logits: jax.Array) -> Verdict:
        return recursive_rejection(key, draft, target_logits, first_child_only=True)


@dataclasses.dataclass(frozen=True)
class TreeRejection(Verifier):
    """Recursive rejection sampling over every sibling of a draft tree (see :func:`tree`)."""

    def verify(self, key, draft: Draft, target_logits: jax.Array) -> Verdict:
        return recursive_rejection(key, draft, target_logits)


def greedy() -> GreedyMatch:
    """Returns the argmax verifier: accept a child whose token is the target argmax; bonus = argmax.

    Output equals plain greedy decoding; raises ValueError (at generate) when the logit
    transform does not end in ``tokjax.logits.greedy()``.
    """
    return GreedyMatch()


def rejection() -> Rejection:
    """Returns the speculative-sampling verifier (Leviathan et al. 2023, Alg. 1): accept x with prob
    min(1, p(x)/q(x)); on rejection sample norm(max(0, p - q)); bonus from p after a full accept.
    """
    return Rejection()


def tree() -> TreeRejection:
    """Returns the lossless multi-candidate verifier: recursive rejection sampling over sibling nodes."""
    return TreeRejection()
