"""SpecTr (P23): K-SEQ residual and rho*, exact output law, acceptance 1 - (1 - beta(rho*))^k, decoding equivalence."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tokjax import generate
from tokjax import logits as L
from tokjax.decoding import drafts, verify
from tokjax.decoding.speculative import Draft, speculative
from tokjax.decoding.spectr import kseq_accept_prob, kseq_beta, kseq_residual, kseq_select, solve_rho, spectr
from tests.decoding.test_speculative import (
    DRAFT, MODEL, N_FAST, PROMPTS, TINY, TINY_DRAFT, TINY_PROMPT, TRANSFORMS, chi_square_pvalue, exact_first3,
    greedy_reference, joint_first3,
)


def random_pair(seed, V, sparsity):
    rng = np.random.default_rng(seed)
    p = rng.dirichlet(np.full(V, 0.5))
    q = rng.dirichlet(np.full(V, 0.5))
    if sparsity:  # zeros in p and/or q (top-p / greedy style supports)
        p = p * (rng.random(V) > 0.5)
        q = q * (rng.random(V) > 0.5)
        p[0] += 1e-3 * (p.sum() == 0)
        q[-1] += 1e-3 * (q.sum() == 0)
    return (p / p.sum()).astype(np.float32), (q / q.sum()).astype(np.float32)


VMAX = 40


@jax.jit
def _kseq_quantities(p, q, k):
    rho = solve_rho(p[None], q[None], k[None])
    beta = kseq_beta(p[None], q[None], rho)
    lo = jnp.maximum(rho * (1 - 1e-3), 1.0)
    return rho[0], beta[0], kseq_beta(p[None], q[None], lo)[0], kseq_residual(p[None], q[None], rho, k[None])[0]


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 10**6), st.integers(2, VMAX), st.integers(1, 8), st.booleans())
def test_residual_is_a_distribution_and_the_output_law_is_p(seed, V, k, sparse):
    p, q = random_pair(seed, V, sparse)
    pad = lambda x: jnp.asarray(np.pad(x, (0, VMAX - V)))  # noqa: E731  zero mass: one compiled shape
    rho, beta, b_lo, res = (np.asarray(a, np.float64) for a in _kseq_quantities(pad(p), pad(q), jnp.float32(k)))
    res = res[:V]
    assert 1.0 - 1e-6 <= rho <= k + 1e-6
    assert res.min() >= 0 and abs(res.sum() - 1) < 1e-5
    if beta < 1e-7:  # disjoint supports: nothing can be accepted, the residual is p
        np.testing.assert_allclose(res, p, atol=1e-6)
        return
    c = (1 - (1 - beta) ** k) / beta
    assert c <= rho * (1 + 1e-5)  # the validity condition
    raw = p - np.minimum(q, p / rho) * c  # the paper's residual numerator, before any clipping
    assert raw.min() >= -1e-5
    # emitted law: accepted mass min(q, p/rho) * sum_i (1-beta)^i, plus the residual after k misses
    law = np.minimum(q, p / rho) * c + (1 - beta) ** k * res
    np.testing.assert_allclose(law, p, atol=2e-5)
    if rho > 1 + 1e-3:  # rho* is the smallest valid rho (up to the bisection tolerance)
        lo = rho * (1 - 1e-3)
        assert 1 - (1 - b_lo) ** k > lo * b_lo
    if k == 1:  # standard speculative sampling
        assert rho == 1.0
        left = np.maximum(p - q, 0)
        if left.sum() > 1e-6:
            np.testing.assert_allclose(res, left / left.sum(), atol=1e-5)


def test_monte_carlo_kseq_matches_p_and_the_acceptance_formula():
    V, k, n = 6, 3, 200_000
    p, q = random_pair(7, V, False)
    P = jnp.broadcast_to(jnp.asarray(p), (n, V))
    Q = jnp.broadcast_to(jnp.asarray(q), (n, V))
    k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
    cands = jax.random.categorical(k1, jnp.log(Q)[:, None, :], axis=-1, shape=(n, k)).astype(jnp.int32)
    acc, idx, res = kseq_select(k2, P, Q, cands, jnp.ones((n, k), bool))
    fallback = jax.random.categorical(k3, jnp.log(jnp.maximum(res, 1e-38)), axis=-1)
    out = np.asarray(jnp.where(acc, cands[jnp.arange(n), idx], fallback))
    assert chi_square_pvalue(np.bincount(out, minlength=V), p.astype(np.float64)) > 1e-3
    rate = float(acc.mean())
    want = float(kseq_accept_prob(jnp.asarray(p)[None], jnp.asarray(q)[None], jnp.asarray([k]))[0])
    assert abs(rate - want) < 4.5 * np.sqrt(want * (1 - want) / n)
    alpha = float(np.minimum(p, q).sum())
    assert alpha <= want + 1e-6 and want <= 1 - (1 - alpha) ** k + 1e-6


@pytest.mark.parametrize("k", [3, pytest.param(1, marks=pytest.mark.slow), pytest.param(5, marks=pytest.mark.slow)])
def test_verifier_acceptance_on_model_distributions_matches_formula(k):
    # p, q: the target's and draft's next-token laws after the prompt; one depth, k chains of length 1.
    from tokjax import forward

    n = 40_000
    logits_p = forward(TINY.params, TINY.cfg, jnp.asarray([TINY_PROMPT])).logits[0, -1]
    logits_q = forward(TINY_DRAFT.params, TINY_DRAFT.cfg, jnp.asarray([TINY_PROMPT])).logits[0, -1]
    p, q = jax.nn.softmax(logits_p), jax.nn.softmax(logits_q)
    toks = jax.random.categorical(jax.random.key(k), jnp.log(q), shape=(n, k)).astype(jnp.int32)
    draft = Draft(
        tokens=toks, parents=jnp.full((n, k), -1, jnp.int32), probs=jnp.broadcast_to(q, (n, k, 4)),
        valid=jnp.ones((n, k), bool), layer_evals=jnp.int32(0),
    )
    target = jnp.broadcast_to(jnp.log(jnp.stack([p] + [p] * k)), (n, 1 + k, 4))  # node logits unused past depth 0
    verdict = jax.jit(spectr(k).verify)(jax.random.key(9), draft, target)
    rate = float((verdict.count > 0).mean())
    want = float(kseq_accept_prob(p[None], q[None], jnp.asarray([k]))[0])
    assert abs(rate - want) < 4.5 * np.sqrt(want * (1 - want) / n)
    if k == 1:
        assert abs(want - float(jnp.minimum(p, q).sum())) < 1e-5


@pytest.mark.slow
def test_spectr_greedy_equals_plain_greedy_on_100_prompts():
    ref = greedy_reference()
    strategy = speculative(drafts.model(DRAFT, num_draft=3, num_chains=3), spectr(3))
    out = generate(MODEL, PROMPTS, key=jax.random.key(0), max_new_tokens=14, logits=L.greedy(), strategy=strategy)
    np.testing.assert_array_equal(out.tokens, ref.tokens)
    assert out.stats["tokens_per_call"] > 1.05
    assert out.stats["draft_layer_evals"] == out.stats["forward_calls"] * 3 * 3 * MODEL.cfg.n_layers


@pytest.mark.slow  # the verifier-level law tests above stay in the default suite
def test_spectr_sampling_preserves_the_joint_law():
    strategy = speculative(drafts.model(TINY_DRAFT, num_draft=2, num_chains=3), spectr(3))
    probs = exact_first3(TINY, TINY_PROMPT, TRANSFORMS["t1.0"])
    out = generate(TINY, [TINY_PROMPT] * N_FAST, key=jax.random.key(5), max_new_tokens=3, logits=TRANSFORMS["t1.0"],
                   strategy=strategy)
    assert chi_square_pvalue(joint_first3(out, len(TINY_PROMPT), 4), probs) > 1e-3


@pytest.mark.slow
@pytest.mark.parametrize("k", [2, 4])
def test_decoding_depth0_acceptance_matches_formula(k):
    # One step from the prompt: depth-0 acceptance over all rows vs 1 - (1 - beta(rho*))^k.
    from tokjax import forward

    n = 20_000
    strategy = speculative(drafts.model(TINY_DRAFT, num_draft=2, num_chains=k), spectr(k))
    out = generate(TINY, [TINY_PROMPT] * n, key=jax.random.key(6), max_new_tokens=1, logits=TRANSFORMS["t1.0"], strategy=strategy)
    p = jax.nn.softmax(forward(TINY.params, TINY.cfg, jnp.asarray([TINY_PROMPT])).logits[0, -1])
    q = jax.nn.softmax(forward(TINY_DRAFT.params, TINY_DRAFT.cfg, jnp.asarray([TINY_PROMPT])).logits[0, -1])
    want = float(kseq_accept_prob(p[None], q[None], jnp.asarray([k]))[0])
    got = out.stats["position_acceptance"][0]
    assert abs(got - want) < 4.5 * np.sqrt(want * (1 - want) / n), (got, want)
    assert got > float(jnp.minimum(p, q).sum()) - 4.5 * np.sqrt(0.25 / n)  # beats a single draft


def test_spectr_bad_input():
    with pytest.raises(ValueError, match="num_drafts"):
        spectr(0)
    with pytest.raises(ValueError, match="chains"):
        generate(MODEL, [[1, 2]], key=jax.random.key(0), max_new_tokens=3, logits=L.greedy(),
                 strategy=speculative(drafts.model(DRAFT, num_draft=2, num_chains=2), spectr(3)))
    with pytest.raises(ValueError, match="num_chains"):
        drafts.model(DRAFT, num_draft=2, num_chains=0)
