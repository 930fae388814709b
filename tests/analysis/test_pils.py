"""PILS (P4, tokjax.analysis.pils): teacher-forced log-probs == generate's per-step log-probs, exact ALR -> hidden
recovery (and its failure with too few ids), the inverter loss and its generate-based greedy decoding, bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import tokjax
from tokjax.analysis.pils import (
    FeaturePrefixLM, alr_features, alr_head_matrix, alr_relative_residual, fit_alr_map, greedy_completions,
    init_inverter, invert, logprob_sequence, logprob_sequences, make_pils_loss, pils_loss, project_features,
    recover_hidden, teacher_forced_exact, vocab_subset,
)
from tokjax.losses.registry import make_loss
from tokjax.model import Model, ModelConfig, init_params
from tokjax.model.forward import Inputs, embed, forward
from tokjax.model.attention import Prefix

V, D = 256, 32


@pytest.fixture(scope="module")
def target():
    # init_scale 0.2: peaked distributions, clear greedy choices
    cfg = ModelConfig.tiny(vocab_size=V, d_model=D, n_layers=2, n_heads=4, n_kv_heads=2, max_len=64, init_scale=0.2)
    return Model(init_params(cfg, jax.random.key(0)), cfg)


def _prompts(seed, n, lo=3, hi=9):
    r = np.random.default_rng(seed)
    return [r.integers(0, V, size=int(r.integers(lo, hi))).astype(np.int32) for _ in range(n)]


@pytest.mark.slow
def test_teacher_forced_logprobs_equal_generate_step_logprobs(target):
    prompts = _prompts(0, 3)
    T = 5
    # Sampled steps: generate records each step's full distribution (top V = all of it).
    g = tokjax.generate(target, prompts, key=jax.random.key(3), max_new_tokens=T, logprobs=V)
    comp = np.stack(g.completions())
    lp = np.asarray(logprob_sequences(target, prompts, comp))
    for b in range(3):
        p = int(g.prompt_lengths[b])
        want = np.full((T, V), -np.inf, np.float32)
        for t in range(T):
            want[t, g.top_ids[b, p + t]] = g.top_logprobs[b, p + t]
        np.testing.assert_allclose(lp[b], want, atol=2e-5)
    # Greedy steps (the PILS setting): each completion token is the argmax of its teacher-forced vector.
    greedy = greedy_completions(target, prompts, T, batch_size=2)
    for b, p in enumerate(prompts):
        one = np.asarray(logprob_sequence(target, p, greedy[b]))
        np.testing.assert_array_equal(one.argmax(-1), greedy[b])
        np.testing.assert_allclose(np.exp(one).sum(-1), 1.0, atol=1e-5)


def test_alr_least_squares_recovers_hidden_and_fails_with_too_few_ids(target):
    prompts = _prompts(1, 12)
    comp = greedy_completions(target, prompts, 12, batch_size=12)
    lp, h = logprob_sequences(target, prompts, comp, hidden=True)
    lp, h = np.asarray(lp).reshape(-1, V), np.asarray(h).reshape(-1, D)  # 144 steps
    sub = vocab_subset(V, D, extra=8)
    a = alr_features(lp, sub, hidden_size=D)
    assert a.shape == (144, D + 8)
    # The log-normaliser cancels: ALR of logits == ALR of log-probs.
    shift = np.random.default_rng(0).normal(size=(144, 1)).astype(np.float32) * 10
    np.testing.assert_allclose(alr_features(lp + shift, sub), a, atol=1e-4)
    fit, held = slice(0, 100), slice(100, None)
    M = fit_alr_map(a[fit], h[fit])
    assert float(alr_relative_residual(a[held], h[held], M)) < 1e-4
    # White-box: the unembedding gives the same linear map.
    A = alr_head_matrix(target, sub)
    np.testing.assert_allclose(h @ np.asarray(A), a, atol=2e-4)
    rec = recover_hidden(a, A)
    assert float(jnp.linalg.norm(rec - h) / jnp.linalg.norm(h)) < 1e-4
    # K - 1 < D log-ratios cannot pin down a D-dimensional hidden state.
    small = sub[:D - 7]
    a_small = alr_features(lp, small)
    M_small = fit_alr_map(a_small[fit], h[fit])
    assert float(alr_relative_residual(a_small[held], h[held], M_small)) > 0.05
    with pytest.raises(ValueError, match="D \\+ 1"):
        alr_features(lp, small, hidden_size=D)


def _inverter(seed=0, F=12, Vi=20, T=4, L=7):
    cfg = ModelConfig.tiny(vocab_size=Vi, d_model=32, n_layers=2, n_heads=4, max_len=32)
    params = init_inverter(cfg, jax.random.key(seed), F, bottleneck=16)
    r = np.random.default_rng(seed)
    B = 6
    tokens = np.zeros((B, L), np.int32)
    lengths = r.integers(3, L + 1, size=B).astype(np.int32)
    for b in range(B):
        tokens[b, 0] = 1
        tokens[b, 1:lengths[b] - 1] = r.integers(3, Vi, size=lengths[b] - 2)
        tokens[b, lengths[b] - 1] = 2
    feats = r.normal(size=(B, T, F)).astype(np.float32)
    feats[:, :, 0] = tokens[:, 1:T + 1]  # the features carry the answer
    return params, cfg, {"features": feats, "tokens": tokens, "lengths": lengths}


@pytest.mark.slow  # default-suite time; the file's other tests keep the method covered in the default suite
def test_pils_loss_matches_reference_and_decreases():
    params, cfg, batch = _inverter()
    loss, m = pils_loss(params, cfg, batch)
    # Reference: explicit prefix-LM forward over [u; embed(tokens)] and a hand-written masked NLL.
    u = project_features(params, batch["features"])
    x = jnp.concatenate([u, embed(params["lm"], cfg, jnp.asarray(batch["tokens"][:, :-1]))], axis=1)
    T = u.shape[1]
    logits = forward(params["lm"], cfg, Inputs(embeds=x), mask=Prefix(jnp.full((6,), T))).logits[:, T:]
    logq = np.asarray(jax.nn.log_softmax(logits, -1))
    nll, n = 0.0, 0
    for b in range(6):
        for j in range(batch["lengths"][b] - 1):
            nll -= logq[b, j, batch["tokens"][b, j + 1]]
            n += 1
    np.testing.assert_allclose(float(loss), nll / n, rtol=1e-5)
    assert float(m["target_tokens"]) == n
    # The registered loss is the same function; a few gradient steps lower it; gradients reach lm and proj.
    fn = make_loss("pils", dropout=0.0)
    value = jax.jit(lambda p: fn(p, cfg, batch)[0])
    assert float(value(params)) == pytest.approx(float(loss), rel=1e-5)
    grad = jax.jit(jax.grad(lambda p: fn(p, cfg, batch)[0]))
    g = grad(params)
    assert float(jnp.abs(g["proj"]["w1"]).sum()) > 0 and float(jnp.abs(g["lm"]["embed"]).sum()) > 0
    # Central finite difference along the gradient equals its squared norm.
    eps = 1e-3
    trained = lambda t: {"lm": t["lm"], "proj": t["proj"]}  # noqa: E731  (TRAINABLE)
    gn = sum(float(jnp.sum(x * x)) for x in jax.tree.leaves(trained(g)))

    def moved(sign):
        return {**params, **jax.tree.map(lambda p, d: p + sign * eps * d, trained(params), trained(g))}

    fd = (float(value(moved(1.0))) - float(value(moved(-1.0)))) / (2 * eps)
    assert fd == pytest.approx(gn, rel=0.02)
    opt = optax.adam(1e-2)
    p, st = trained(params), opt.init(trained(params))

    @jax.jit
    def adam_step(p, st):
        upd, st = opt.update(jax.grad(lambda q: fn({**params, **q}, cfg, batch)[0])(p), st, p)
        return optax.apply_updates(p, upd), st

    for _ in range(40):
        p, st = adam_step(p, st)
    assert float(value({**params, **p})) < 0.5 * float(loss)
    # Dropout draws from rng only.
    lo, _ = make_pils_loss(dropout=0.5)(params, cfg, batch, jax.random.key(1))
    assert np.isfinite(float(lo)) and float(lo) != float(loss)


def _naive_greedy(params, cfg, feats, bos, steps):
    B = feats.shape[0]
    toks = np.full((B, 1), bos, np.int32)
    u = project_features(params, feats)
    T = u.shape[1]
    for _ in range(steps):
        x = jnp.concatenate([u, embed(params["lm"], cfg, jnp.asarray(toks))], axis=1)
        logits = forward(params["lm"], cfg, Inputs(embeds=x), mask=Prefix(jnp.full((B,), T))).logits
        toks = np.concatenate([toks, np.asarray(logits[:, -1].argmax(-1))[:, None].astype(np.int32)], 1)
    return toks[:, 1:]


@pytest.mark.slow
def test_invert_through_generate_equals_full_forward_greedy_and_teacher_forced_exact():
    params, cfg, batch = _inverter(seed=2)
    params = {**params, "lm": jax.tree.map(lambda x: x * 4.0, params["lm"])}  # sharper, varied argmaxes
    steps = 6
    ref = _naive_greedy(params, cfg, batch["features"], 1, steps)
    eos = int(np.bincount(ref[:, 2:].ravel(), minlength=cfg.vocab_size)[3:].argmax()) + 3
    out = invert(params, cfg, batch["features"], bos_id=1, eos_id=eos, max_new_tokens=steps)
    for b in range(len(out)):
        row = ref[b].tolist()
        want = row[:row.index(eos)] if eos in row else row
        assert out[b].tolist() == want
    # Teacher-forced exactness of the greedy outputs is True; a changed token makes it False.
    tokens = np.concatenate([np.ones((6, 1), np.int32), ref], 1)
    chk = {"features": batch["features"], "tokens": tokens, "lengths": np.full((6,), steps + 1, np.int32)}
    assert teacher_forced_exact(params, cfg, chk).all()
    tokens[0, 3] = (tokens[0, 3] + 1) % cfg.vocab_size
    got = teacher_forced_exact(params, cfg, {**chk, "tokens": tokens})
    assert not got[0] and got[1:].all()


def test_bad_input():
    with pytest.raises(ValueError, match="distinct"):
        alr_features(jnp.zeros((3, 10)), np.array([1, 2, 2]))
    with pytest.raises(ValueError, match="at least 2"):
        alr_features(jnp.zeros((3, 10)), np.array([1]))
    with pytest.raises(ValueError, match=r"\[0, vocab_size=10\)"):
        alr_features(jnp.zeros((3, 10)), np.array([1, 12]))
    with pytest.raises(ValueError, match="D \\+ 1"):
        alr_features(jnp.zeros((3, 10)), np.array([1, 2, 3]), hidden_size=4)
    with pytest.raises(ValueError, match="vocab_size"):
        vocab_subset(50, 48, extra=5)
    with pytest.raises(ValueError, match="pairs"):
        fit_alr_map(jnp.zeros((3, 5)), jnp.zeros((3, 2)))
    with pytest.raises(ValueError, match="dropout"):
        make_loss("pils", dropout=1.5)
    params, cfg, batch = _inverter()
    with pytest.raises(ValueError, match="'features'"):
        pils_loss(params, cfg, {"tokens": batch["tokens"]})
    with pytest.raises(ValueError, match="tokens"):
        pils_loss(params, cfg, {**batch, "tokens": batch["tokens"] + 100})
    with pytest.raises(ValueError, match="F=12"):
        project_features(params, batch["features"][..., :5])
    with pytest.raises(ValueError, match="bos_id"):
        invert(params, cfg, batch["features"], bos_id=99, eos_id=2, max_new_tokens=4)
    with pytest.raises(ValueError, match="max_len"):
        invert(params, cfg, batch["features"], bos_id=1, eos_id=2, max_new_tokens=40)
    with pytest.raises(ValueError, match="embeds"):
        tokjax.generate(Model(params["lm"], cfg), np.ones((2, 5), np.int32), max_new_tokens=2,
                        logits=tokjax.logits.greedy(), strategy=FeaturePrefixLM())


def test_logprob_sequence_bad_input(target):
    with pytest.raises(ValueError, match="outside"):
        logprob_sequence(target, [1, 2, V], [3])
    with pytest.raises(ValueError, match="non-empty"):
        logprob_sequence(target, [], [3])
    with pytest.raises(ValueError, match="max_len"):
        logprob_sequence(target, list(range(60)), list(range(10)))
    with pytest.raises(ValueError, match="Model"):
        logprob_sequence((1, 2), [1], [2])
