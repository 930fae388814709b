"""SpecTr: Fast Speculative Decoding via Optimal Transport (P23; Sun, Suresh, Ro, Beirami, Jain, Yu, NeurIPS 2023).

The draft model samples k i.i.d. draft sequences of length L (``drafts.model(...,
num_chains=k)``: a tree of k chains, verified in one target call under the tree mask). At
each depth the candidates are the next tokens of the drafts that agree with the accepted
prefix; they are conditionally i.i.d. from q(.|prefix), and K-SEQ selects among them:

    beta(rho)  = sum_x min(q(x), p(x) / rho)
    for i = 1..k':  accept X_i with probability min(1, p(X_i) / (rho q(X_i)))   -> emit X_i, descend
    none accepted:  sample from p_res(x) = [p(x) - min(q(x), p(x)/rho) * (1 - (1-beta)^k') / beta] / (1-beta)^k'

Output law: P(emit x) = min(q, p/rho) * sum_{i<k'} (1-beta)^i + (1-beta)^k' p_res(x) = p(x) for
every rho with (1 - (1-beta)^k') / beta <= rho, which is exactly p_res >= 0. The acceptance
probability 1 - (1-beta(rho))^k' decreases in rho, so the best valid rho is the root rho* of
rho * beta(rho) = 1 - (1-beta(rho))^k' in [1, k'] (g(rho) = rho beta - 1 + (1-beta)^k' is
non-decreasing: rho*beta(rho) is non-decreasing and beta non-increasing), found by bisection;
we keep the upper bracket, which is always valid. At rho*, P(accept) = 1 - (1-beta*)^k' =
rho* beta*, which lies between the single-draft rate sum_x min(p, q) (k = 1, rho = 1: standard
speculative sampling) and 1 - (1 - sum_x min(p, q))^k'. The paper proves K-SEQ is within a
(1 - 1/e) factor of the optimal k-draft transport plan.

Verification notes (the decoding notes tag these formulas *unverified*; no official code is
public): the selection rule and residual above are checked here by the derivation in this
docstring and by tests that compare the exact output law with p on random (p, q) pairs, the
non-negativity of p_res, and measured acceptance against 1 - (1 - beta*)^k.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from tokjax.decoding.speculative import Draft, Verdict, Verifier
from tokjax.logits import masked_softmax, sample

__all__ = ["SpecTr", "spectr", "kseq_beta", "solve_rho", "kseq_residual", "kseq_select", "kseq_accept_prob"]

BISECT_STEPS = 40


def kseq_beta(p: jax.Array, q: jax.Array, rho: jax.Array) -> jax.Array:
    """Returns beta_{p,q}(rho) = sum_x min(q(x), p(x)/rho) over the last axis (rho broadcasts over rows)."""
    return jnp.minimum(q, p / rho[..., None]).sum(-1)


def solve_rho(p: jax.Array, q: jax.Array, k: jax.Array) -> jax.Array:
    """Returns rho* [...]: the smallest rho in [1, k] with 1 - (1-beta(rho))^k <= rho beta(rho) (bisection, upper bracket).

    ``p``, ``q`` [..., V] distributions, ``k`` [...] number of candidates (k <= 1 gives rho = 1).
    """
    k = jnp.maximum(jnp.asarray(k, jnp.float32), 1.0)
    k = jnp.broadcast_to(k, p.shape[:-1])

    def ok(rho):
        beta = kseq_beta(p, q, rho)
        return 1.0 - (1.0 - beta) ** k <= rho * beta * (1.0 + 1e-6) + 1e-12

    def body(_, bounds):
        lo, hi = bounds
        mid = 0.5 * (lo + hi)
        good = ok(mid)
        return jnp.where(good, lo, mid), jnp.where(good, mid, hi)

    lo = jnp.ones_like(k)
    lo, hi = jax.lax.fori_loop(0, BISECT_STEPS, body, (lo, k))
    return jnp.where(ok(lo), lo, hi)


def kseq_residual(p: jax.Array, q: jax.Array, rho: jax.Array, k: jax.Array) -> jax.Array:
    """Returns p_res [..., V] = [p - min(q, p/rho) (1 - (1-beta)^k)/beta] / (1-beta)^k (unnormalised terms clipped at 0).

    Where (1-beta)^k is 0 (the drafts are always accepted) the residual is never used and p is returned.
    """
    k = jnp.asarray(k, jnp.float32)
    beta = kseq_beta(p, q, rho)
    miss = (1.0 - beta) ** k
    scale = jnp.where(beta > 0, (1.0 - miss) / jnp.maximum(beta, 1e-30), k)
    left = jnp.maximum(p - jnp.minimum(q, p / rho[..., None]) * scale[..., None], 0.0)
    total = left.sum(-1, keepdims=True)
    return jnp.where(total > 1e-12, left / jnp.maximum(total, 1e-30), p)


def kseq_accept_prob(p: jax.Array, q: jax.Array, k: jax.Array) -> jax.Array:
    """Returns the K-SEQ probability that some of k i.i.d. q-draws is accepted: 1 - (1 - beta(rho*))^k."""
    rho = solve_rho(p, q, k)
    return 1.0 - (1.0 - kseq_beta(p, q, rho)) ** jnp.asarray(k, jnp.float32)


def kseq_select(key, p, q, candidates, alive):
    """Returns (accepted [B] bool, index [B] of the accepted candidate, residual [B, V]) of one K-SEQ selection.

    ``p``, ``q`` [B, V]; ``candidates`` [B, k] token ids drawn i.i.d. from q; ``alive`` [B, k]
    which candidates take part (k' = alive.sum(-1); in index order).
    """
    B, k = candidates.shape
    kk = alive.sum(-1).astype(jnp.float32)
    rho = solve_rho(p, q, kk)
    u = jax.random.uniform(key, (B, k))
    rows = jnp.arange(B)[:, None]
    p_x = p[rows, candidates]
    q_x = q[rows, candidates]
    ok = alive & (u * rho[:, None] * q_x < p_x)
    accepted = ok.any(-1)
    index = jnp.argmax(ok, axis=-1).astype(jnp.int32)
    residual = jnp.where((kk > 0)[:, None], kseq_residual(p, q, rho, kk), p)
    return accepted, index, residual


@dataclasses.dataclass(frozen=True)
class SpecTr(Verifier):
    """The SpecTr K-SEQ verifier: selects among k i.i.d. draft chains depth by depth (see :func:`spectr`)."""

    num_drafts: int

    def validate(self, draft_source) -> None:
        chains = getattr(draft_source, "num_chains", None)
        if chains is not None and chains != self.num_drafts:
            raise ValueError(
                f"spectr(num_drafts={self.num_drafts}) needs a draft of {self.num_drafts} chains; the draft source "
                f"proposes {chains} (use drafts.model(..., num_chains={self.num_drafts}))"
            )
        if draft_source.num_nodes % self.num_drafts:
            raise ValueError(
                f"spectr(num_drafts={self.num_drafts}): the draft's {draft_source.num_nodes} nodes are not "
                f"{self.num_drafts} equal chains"
            )

    def verify(self, key, draft: Draft, target_logits: jax.Array) -> Verdict:
        B, T, V = target_logits.shape
        k = self.num_drafts
        N = T - 1
        Ld = N // k
        p_all = masked_softmax(target_logits)  # [B, T, V]
        masked_all = ~jnp.isfinite(target_logits).any(-1)
        q_all = jax.nn.one_hot(draft.tokens, V) if draft.probs is None else draft.probs.astype(jnp.float32)
        toks = draft.tokens.reshape(B, k, Ld).astype(jnp.int32)
        valid = draft.valid.reshape(B, k, Ld)
        rows = jnp.arange(B)
        keys = jax.random.split(key, Ld + 1)

        alive = valid[:, :, 0]
        going = jnp.ones((B,), bool)
        chain = jnp.zeros((B,), jnp.int32)
        cur = jnp.zeros((B,), jnp.int32)  # block index of the last accepted node (0 = pending)
        count = jnp.zeros((B,), jnp.int32)
        r = p_all[:, 0]
        for d in range(Ld):
            alive = alive & valid[:, :, d]
            p = p_all[rows, cur]
            lead = jnp.where(alive.any(-1), jnp.argmax(alive, axis=-1), chain).astype(jnp.int32)
            q = q_all[rows, lead * Ld + d]
            acc, idx, res = kseq_select(keys[d], p, q, toks[:, :, d], alive & going[:, None])
            acc = acc & going
            stop_here = going & ~acc
            r = jnp.where(stop_here[:, None], res, r)
            x = toks[rows, idx, d]
            chain = jnp.where(acc, idx, chain)
            cur = jnp.where(acc, 1 + idx * Ld + d, cur)
            count = count + acc.astype(jnp.int32)
            alive = alive & (toks[:, :, d] == x[:, None])
            going = acc
        r = jnp.where(going[:, None], p_all[rows, cur], r)
        bonus = sample(keys[-1], probs=r)[0]
        path = chain[:, None] * Ld + jnp.arange(Ld)[None, :]
        return Verdict(
            path=path.astype(jnp.int32), count=count, bonus=bonus,
            accept_at=jnp.arange(Ld)[None, :] < count[:, None], masked=masked_all[rows, cur],
        )


def spectr(num_drafts: int) -> SpecTr:
    """Returns the SpecTr (K-SEQ) verifier for ``num_drafts`` i.i.d. draft chains (P23).

    Pair it with ``drafts.model(small, num_draft=L, num_chains=num_drafts)``; ``num_drafts = 1``
    is standard speculative sampling. Raises ValueError for num_drafts < 1.
    """
    if not isinstance(num_drafts, int) or isinstance(num_drafts, bool) or num_drafts < 1:
        raise ValueError(f"num_drafts must be an int >= 1, got {num_drafts!r}")
    return SpecTr(num_drafts=num_drafts)
