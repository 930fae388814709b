"""Tests for P37 Soft Tokens, Hard Truths (tokjax.losses.soft_tokens, tokjax.decoding.soft_tokens)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import tokjax
from tokjax import logits as L
from tokjax.decoding.soft_tokens import rollout_arrays, soft_tokens
from tokjax.losses import token_stats
from tokjax.losses.grpo import group_advantages, make_grpo_loss
from tokjax.losses.registry import make_loss
from tokjax.losses.soft_tokens import (
    KIND_HARD, KIND_NONE, KIND_SOFT, cot_log_likelihood, make_soft_tokens_loss, soft_input, soft_mixture,
    soft_token_logp,
)
from tokjax.model import Inputs, forward

V, NEW, G = 32, 10, 4
PROMPTS = [[1, 2, 3], [4, 5]]


@pytest.fixture(scope="module")
def model():
    cfg = tokjax.ModelConfig(vocab_size=V, d_model=32, n_layers=2, n_heads=2, max_len=40)
    params = jax.jit(lambda k: jax.tree.map(lambda x: x * 2.0, tokjax.Model.init(cfg, k).params))(jax.random.PRNGKey(0))
    return tokjax.Model(params=params, cfg=cfg)


@pytest.fixture(scope="module")
def end(model):
    """A token greedy decoding of prompt 0 emits mid-way, so a near-greedy CoT ends there."""
    ref = tokjax.generate(model, PROMPTS, max_new_tokens=NEW, logits=L.greedy())
    return int(ref.tokens[0, len(PROMPTS[0]) + 3])


def _rollout(model, end, tau, sigma, key=0, logits=None):
    out = tokjax.generate(model, PROMPTS, key=jax.random.key(key), n=G, max_new_tokens=NEW,
                          strategy=soft_tokens(end, tau=tau, sigma=sigma), logits=logits or L.temperature(1.0))
    arr = rollout_arrays(out)
    batch = {k: jnp.asarray(arr[k]) for k in ("tokens", "kinds", "embeds", "prompt_lengths", "lengths")}
    return out, arr, {**batch, "tau": jnp.float32(tau), "sigma": jnp.float32(sigma)}


def _hard_batch(out):
    toks = np.asarray(out.tokens)
    pos = np.arange(toks.shape[1])[None, :]
    kinds = np.where((pos >= out.prompt_lengths[:, None]) & (pos < out.lengths[:, None]), KIND_HARD, KIND_NONE)
    return {"tokens": jnp.asarray(toks), "kinds": jnp.asarray(kinds, jnp.int32),
            "embeds": jnp.zeros(toks.shape + (32,), jnp.float32), "tau": 1.0, "sigma": 0.0,
            "prompt_lengths": jnp.asarray(out.prompt_lengths), "lengths": jnp.asarray(out.lengths)}


@pytest.mark.slow
def test_all_hard_slots_equal_grpo_on_the_hard_likelihood(model):
    """Reduction (i): every slot hard -> the hard token log-probs and GRPO's loss and gradients exactly."""
    out = tokjax.generate(model, PROMPTS, key=jax.random.key(1), n=G, max_new_tokens=NEW, logits=L.temperature(1.0))
    batch = _hard_batch(out)
    stats = jax.jit(lambda p, b: soft_token_logp(p, model.cfg, b))(model.params, batch)
    ref = jax.jit(lambda p, b: token_stats(p, model.cfg, b, method="naive"))(model.params, batch)
    np.testing.assert_array_equal(np.asarray(stats.mask), np.asarray(ref.mask))
    np.testing.assert_allclose(np.where(ref.mask, stats.logp, 0), np.where(ref.mask, ref.logp, 0), atol=2e-5)
    rewards = np.array([1, 0, 0, 1, 0, 0, 0, 1], np.float32)
    batch = {**batch, "old_logp": jax.lax.stop_gradient(ref.logp) - 0.05,  # ratio != 1: the clip is exercised
             "advantages": group_advantages(rewards, G, scale="none", rloo=True)}
    soft_fn, grpo_fn = make_soft_tokens_loss(), make_grpo_loss()
    vg = lambda fn: jax.jit(jax.value_and_grad(lambda p, b: fn(p, model.cfg, b), has_aux=True))  # noqa: E731
    (l1, m1), g1 = vg(soft_fn)(model.params, batch)
    (l2, m2), g2 = vg(grpo_fn)(model.params, batch)
    np.testing.assert_allclose(float(l1), float(l2), rtol=1e-5, atol=1e-7)
    assert float(m1["soft_fraction"]) == 0.0 and float(m1["clip_fraction"]) == float(m2["clip_fraction"])
    for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)


@pytest.mark.slow  # default-suite time; the file's other tests keep the method covered in the default suite
def test_tau_sigma_to_zero_is_greedy_decoding_and_the_hard_answer_likelihood(model, end):
    """Reduction (ii): tau, sigma -> 0 gives the greedy rollout, and the soft loss's gradient is the hard
    likelihood's of the answer given that (deterministic) CoT."""
    greedy = tokjax.generate(model, PROMPTS, max_new_tokens=NEW, logits=L.greedy())
    out, arr, _ = _rollout(model, end, 1e-6, 0.0, logits=L.greedy())
    np.testing.assert_array_equal(out.tokens[::G], greedy.tokens)
    np.testing.assert_array_equal(out.lengths[::G], greedy.lengths)
    # Sampled answers after a near-deterministic fuzzy CoT (tau 1e-6, sigma 1e-4).
    out, arr, batch = _rollout(model, end, 1e-6, 1e-4, key=3)
    soft = arr["kinds"] == KIND_SOFT
    assert soft.any() and (arr["kinds"] == KIND_HARD).any(), "the rollout needs both a CoT and an answer"
    hard = {**batch, "kinds": jnp.asarray(np.where(soft, KIND_NONE, arr["kinds"]))}
    rewards = np.array([1, 0, 1, 0, 0, 1, 1, 0], np.float32)
    adv = group_advantages(rewards, G, scale="none", rloo=True)
    fn = make_soft_tokens_loss(reduction="const")
    logp = jax.jit(lambda p, b: soft_token_logp(p, model.cfg, b).logp)
    grad = jax.jit(jax.grad(lambda p, b: fn(p, model.cfg, b)[0]))
    grads = [grad(model.params, {**b, "old_logp": logp(model.params, b), "advantages": adv}) for b in (batch, hard)]
    for a, b in zip(jax.tree.leaves(grads[0]), jax.tree.leaves(grads[1])):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)
    assert max(float(jnp.abs(x).max()) for x in jax.tree.leaves(grads[1])) > 1e-4  # the answer terms are not empty


def test_score_function_gradient_equals_reparameterisation_in_expectation():
    """The notes' check: E[R(h~) grad log N(h~; pE, s^2)] = E[grad R(pE + s eps)] = grad E[R] on a 1-step toy."""
    Vt, D, N, tau, sigma = 6, 4, 60_000, 0.5, 0.3
    k1, k2, k3, k4 = jax.random.split(jax.random.key(0), 4)
    z = jax.random.normal(k1, (Vt,))
    E = jax.random.normal(k2, (Vt, D))
    c = jax.random.normal(k3, (D,))
    eps = jax.random.normal(k4, (N, D))
    R = lambda x: -jnp.sum((x - c) ** 2, -1) + jnp.sin(3 * x[..., 0])  # noqa: E731 (not quadratic: MC both sides)
    x, _ = soft_input(jnp.broadcast_to(z, (N, Vt)), E, tau, sigma, eps)
    r = R(x)
    baseline = (r.sum() - r) / (N - 1)  # leave-one-out (RLOO): unbiased, lower variance
    score = jax.jit(jax.vmap(jax.grad(lambda zz, xi: cot_log_likelihood(zz, xi, E, tau, sigma)), (None, 0)))(z, x)
    sf = (r - baseline)[:, None] * score  # [N, V]
    rp = jax.jit(jax.vmap(jax.grad(lambda zz, e: R(soft_mixture(zz, E, tau) + sigma * e)), (None, 0)))(z, eps)
    diff = sf - rp
    se = diff.std(0) / np.sqrt(N)
    assert np.all(np.abs(diff.mean(0)) < 5 * se + 1e-6), (diff.mean(0), se)
    # The quadratic part alone has a closed form: grad of -||pE - c||^2 (the noise adds a constant -d s^2).
    Rq = lambda x: -jnp.sum((x - c) ** 2, -1)  # noqa: E731
    rq = Rq(x)
    sfq = ((rq - (rq.sum() - rq) / (N - 1))[:, None] * score)
    exact = jax.grad(lambda zz: Rq(soft_mixture(zz, E, tau)))(z)
    assert np.all(np.abs(sfq.mean(0) - exact) < 5 * sfq.std(0) / np.sqrt(N) + 1e-6)


def test_cached_decode_equals_full_forward_reference(model, end):
    """The strategy's cached steps agree with one full forward over the recorded inputs: sigma = 0 inputs are
    exactly softmax(z / tau) E of the full-forward logits, readouts are their argmax, and the recorded
    log-likelihoods (Gaussian at soft slots, hard log-probs at answer slots) are soft_token_logp's."""
    params, cfg = model.params, model.cfg
    for sigma in (0.0, 0.3):
        out, arr, batch = _rollout(model, end, 0.5, sigma, key=5)
        kinds, toks = arr["kinds"], arr["tokens"]
        assert (kinds == KIND_SOFT).any()
        x = jnp.where(jnp.asarray(kinds == KIND_SOFT)[..., None], batch["embeds"], params["embed"][batch["tokens"]])
        z = forward(params, cfg, Inputs(embeds=x)).logits
        soft = kinds[:, 1:] == KIND_SOFT
        np.testing.assert_array_equal(np.asarray(jnp.argmax(z[:, :-1], -1))[soft], toks[:, 1:][soft])
        if sigma == 0.0:
            mean = soft_mixture(z[:, :-1], params["embed"], 0.5)
            np.testing.assert_allclose(np.asarray(mean)[soft], arr["embeds"][:, 1:][soft], atol=2e-5)
            continue
        stats = soft_token_logp(params, cfg, batch)
        m = np.asarray(stats.mask)
        np.testing.assert_array_equal(m, (kinds[:, 1:] != KIND_NONE) & (np.arange(1, toks.shape[1]) <
                                                                       arr["lengths"][:, None]))
        np.testing.assert_allclose(np.asarray(stats.logp)[m], arr["loglik"][:, 1:][m], rtol=1e-4, atol=2e-3)


def test_registered_jitted_and_runtime_hyperparameters(model, end):
    out, arr, batch = _rollout(model, end, 0.5, 0.3, key=7)
    fn = make_loss("soft_tokens")
    batch = {**batch, "old_logp": soft_token_logp(model.params, model.cfg, batch).logp,
             "advantages": group_advantages(np.arange(8, dtype=np.float32) % 3, G, scale="none", rloo=True)}
    step = jax.jit(lambda p, b: fn(p, model.cfg, b)[0])
    l1 = step(model.params, batch)
    n = step._cache_size()
    l2 = step(model.params, {**batch, "tau": jnp.float32(0.25), "sigma": jnp.float32(0.5)})
    assert step._cache_size() == n and np.isfinite(float(l1)) and np.isfinite(float(l2)) and float(l1) != float(l2)


def test_bad_inputs(model, end):
    with pytest.raises(ValueError, match="sigma"):
        soft_tokens(end, sigma=-0.1)
    with pytest.raises(ValueError, match="tau"):
        soft_tokens(end, tau=0.0)
    with pytest.raises(ValueError, match="mode"):
        soft_tokens(end, mode="warm")
    with pytest.raises(ValueError, match="end_ids"):
        soft_tokens([])
    with pytest.raises(ValueError, match="vocabulary"):
        tokjax.generate(model, PROMPTS, key=jax.random.key(0), max_new_tokens=2, strategy=soft_tokens(V + 3))
    with pytest.raises(ValueError, match="tau"):
        soft_mixture(jnp.zeros((2, V)), model.params["embed"], -1.0)
    with pytest.raises(ValueError, match="reduction"):
        make_soft_tokens_loss(reduction="mean")
    _, _, batch = _rollout(model, end, 0.5, 0.3, key=9)
    with pytest.raises(ValueError, match="sigma"):
        soft_token_logp(model.params, model.cfg, {**batch, "sigma": 0.0})  # soft slots need sigma > 0
    with pytest.raises(ValueError, match="kinds"):
        soft_token_logp(model.params, model.cfg, {**batch, "kinds": batch["kinds"] + 3})
    with pytest.raises(ValueError, match="embeds"):
        soft_token_logp(model.params, model.cfg, {**batch, "embeds": batch["embeds"][..., :5]})
    with pytest.raises(ValueError, match="needs 'embeds'"):
        soft_token_logp(model.params, model.cfg, {k: v for k, v in batch.items() if k != "embeds"})
    with pytest.raises(ValueError, match="old_logp"):
        make_soft_tokens_loss()(model.params, model.cfg, batch)
