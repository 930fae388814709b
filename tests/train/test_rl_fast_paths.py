"""rl_train's fast scoring (issue 21): no separate old-logp forward at inner_steps 1 (``make_grpo_loss(on_policy=True)``)
and the head on the completion window only (``token_stats(span=)``) give today's loss, gradients and params."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import tokjax
from tokjax.losses import token_stats
from tokjax.losses.grpo import group_advantages, make_grpo_loss
from tokjax.model import Model
from tokjax.train._step import init_state, make_optimizer, make_train_step
from tokjax.train.rl import RLConfig, _logp, rl_train, rollout, rollout_batch, scoring

V, TARGET, EOS = 16, 5, 15
CFG = tokjax.ModelConfig(vocab_size=V, d_model=32, n_layers=2, n_heads=2, max_len=32)
NEW = 5


def model(seed=0):
    return Model(params=tokjax.model.init_params(CFG, jax.random.key(seed)), cfg=CFG)


@pytest.fixture(scope="module")
def rolled():
    """Prompts of different lengths (so completion windows start at different columns), eos ends some rows."""
    m = model()
    r = rollout(m, [[1, 2, 3], [4, 5], [6, 7, 8, 9]], [None] * 3, key=jax.random.key(3), group_size=4,
                max_new_tokens=NEW, eos_id=EOS, width=4 + NEW)
    assert len(set(r.prompt_lengths.tolist())) == 3
    return m, rollout_batch(r)


def _close(a, b, tol):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=0, atol=tol)


def test_span_scores_the_completion_window_as_the_full_head(rolled):
    m, batch = rolled

    def masked_sum(p, span):
        st = token_stats(p, CFG, batch, span=span)
        return jnp.sum(jnp.where(st.mask, st.logp, 0.0))

    @jax.jit
    def run(p):
        full = token_stats(p, CFG, batch, entropy=True, rank=True)
        win = token_stats(p, CFG, batch, entropy=True, rank=True, span=NEW)
        wide = token_stats(p, CFG, batch, span=100)  # span >= T: every target, as without it
        return (full, win, token_stats(p, CFG, batch, span=2).mask, wide.logp,
                jax.grad(masked_sum)(p, None), jax.grad(masked_sum)(p, NEW))

    full, got, short, wide, g0, g1 = run(m.params)
    mask = np.asarray(full.mask)
    np.testing.assert_array_equal(np.asarray(got.mask), mask)  # every completion target is in its window
    for f in ("logp", "lse", "entropy", "rank"):
        a, b = np.asarray(getattr(got, f)), np.asarray(getattr(full, f))
        np.testing.assert_allclose(a[mask], b[mask], rtol=1e-6, atol=1e-6, err_msg=f)
        assert np.all(a[:, :int(np.min(batch["prompt_lengths"])) - 1] == 0)  # prompt targets are not scored
    _close(g1, g0, 1e-6)
    short = np.asarray(short)  # a span shorter than a completion drops its tail (mask False there)
    assert short.sum(1).max() <= 2 and short.sum() < mask.sum() and not np.any(short & ~mask)
    np.testing.assert_array_equal(np.asarray(wide), np.asarray(full.logp))
    for bad in (0, 2.0, True):
        with pytest.raises(ValueError, match="span"):
            token_stats(m.params, CFG, batch, span=bad)
    with pytest.raises(ValueError, match="span"):
        make_grpo_loss(span=-1)


def test_target_cols_batch_key_equals_span_and_reaches_registered_losses(rolled):
    """batch['target_cols'] (the runtime-array form of span, issue 22) scores the same window as span=, and a
    registered loss that calls token_stats itself (DPO) sees it: same loss as on every target."""
    from tokjax.losses.dpo import make_dpo_loss

    m, batch = rolled
    T = batch["tokens"].shape[1] - 1
    cols = np.clip(np.asarray(batch["prompt_lengths"]) - 1, 0, T - NEW)[:, None] + np.arange(NEW)[None, :]
    a, b = token_stats(m.params, CFG, batch, span=NEW), token_stats(m.params, CFG, {**batch, "target_cols": cols})
    np.testing.assert_array_equal(np.asarray(a.mask), np.asarray(b.mask))
    np.testing.assert_allclose(np.asarray(a.logp), np.asarray(b.logp), atol=1e-6)
    pairs = {k: batch[k][:12] for k in ("tokens", "prompt_lengths", "lengths")}
    pairs["ref_logp"] = np.asarray(token_stats(model(1).params, CFG, pairs).logp)
    loss = make_dpo_loss(beta=0.1)
    full, _ = loss(m.params, CFG, pairs)
    cut, _ = loss(m.params, CFG, {**pairs, "target_cols": cols[:12]})
    np.testing.assert_allclose(float(cut), float(full), rtol=1e-6)
    for bad, match in ((cols[:, :, None], "int \\[B, S\\]"), (cols + T, "lie in"), (cols * 0, "repeat")):
        with pytest.raises(ValueError, match=match):
            token_stats(m.params, CFG, {**batch, "target_cols": bad})
    with pytest.raises(ValueError, match="not both"):
        token_stats(m.params, CFG, {**batch, "target_cols": cols}, span=NEW)


@pytest.mark.parametrize("beta", [pytest.param(0.0, marks=pytest.mark.slow), 0.1])
def test_on_policy_loss_equals_the_separate_old_logp_forward(rolled, beta):
    """make_grpo_loss(on_policy=True, span) without batch['old_logp'] == the loss on a separate old-logp forward:
    value and gradient within 1e-6 (with a reference's ref_logp when beta > 0)."""
    m, ref = rolled[0], model(1)
    batch = rolled[1] | {"advantages": group_advantages(np.arange(12, dtype=np.float32) % 5, 4)}
    old = dict(batch, old_logp=_logp(m.params, CFG, batch))
    new = dict(batch)
    if beta:
        old["ref_logp"], new["ref_logp"] = _logp(ref.params, CFG, batch), _logp(ref.params, CFG, batch, span=NEW)
    vg = lambda fn, b: jax.jit(jax.value_and_grad(fn, has_aux=True), static_argnums=1)(m.params, CFG, b)  # noqa: E731
    (l0, m0), g0 = vg(make_grpo_loss(beta=beta), old)
    (l1, m1), g1 = vg(make_grpo_loss(beta=beta, on_policy=True, span=NEW), new)
    assert float(l0) != 0.0 and (beta == 0 or float(m0["kl"]) > 0)
    np.testing.assert_allclose(float(l1), float(l0), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(float(m1["kl"]), float(m0["kl"]), rtol=1e-5, atol=1e-7)
    _close(g1, g0, 1e-6)
    assert float(m1["clip_fraction"]) == 0.0
    with pytest.raises(ValueError, match="old_logp"):  # the default still needs the separate forward's values
        make_grpo_loss()(m.params, CFG, new)


def test_scoring_keeps_the_old_path_where_a_plug_in_needs_it():
    c = RLConfig(max_new_tokens=7)
    f = lambda *a: None  # noqa: E731
    assert scoring(c) == (True, 7)
    assert scoring(RLConfig(max_new_tokens=7, inner_steps=2)) == (False, 7)  # pi_old != pi_theta after step 1
    assert scoring(c, aux=f) == (True, None) and scoring(c, prepare=f) == (True, None)  # may read after a row
    assert scoring(c, loss=f) == (False, None) and scoring(c, logp=f) == (False, None)  # a swapped objective


class CountTarget:
    def prompts(self, step, n):
        r = np.random.default_rng(step)
        return [r.integers(1, V - 1, int(r.integers(2, 5))).tolist() for _ in range(n)], [None] * n

    def reward(self, completions, answers):
        return np.array([np.mean(np.asarray(c) == TARGET) if len(c) else 0.0 for c in completions]), \
            np.ones(len(completions), bool)


def _old_path_loop(m, rl, task, reference=None):
    """rl_train's step as it was before the fast paths: a separate old-logp forward and the full-width head."""
    opt = make_optimizer(rl.train_config())
    state = init_state(CFG, opt, rl.seed, params=m.params)
    step = make_train_step(CFG, opt, make_grpo_loss(beta=rl.beta), donate=False)
    key, losses = jax.random.key(rl.seed), []
    for s in range(rl.steps):
        p, answers = task.prompts(s, rl.prompts_per_step)
        r = rollout(Model(state.params, CFG), p, answers, key=jax.random.fold_in(key, s), group_size=rl.group_size,
                    max_new_tokens=rl.max_new_tokens, eos_id=EOS, width=rl.max_prompt_len + rl.max_new_tokens)
        batch = rollout_batch(r)
        batch["old_logp"] = _logp(state.params, CFG, batch)
        if reference is not None:
            batch["ref_logp"] = _logp(reference.params, CFG, batch)
        batch["advantages"] = group_advantages(task.reward(r.completions, r.answers)[0], rl.group_size)
        state, metrics = step(state, batch)
        losses.append(float(metrics["loss"]))
    return state.params, losses


@pytest.mark.slow  # two rl_train runs and their old-path twins (~25 s of one core); the loss-level tests stay fast
@pytest.mark.parametrize("beta", [0.0, 0.05])
def test_rl_train_fast_paths_match_the_old_path_over_steps(beta):
    m = model()
    rl = RLConfig(steps=3, prompts_per_step=2, group_size=4, max_new_tokens=NEW, max_prompt_len=4, lr=1e-3, beta=beta)
    ref = model(1) if beta else None
    got, hist = rl_train(m, CountTarget(), rl, eos_id=EOS, reference=ref)
    want, losses = _old_path_loop(m, rl, CountTarget(), reference=ref)
    np.testing.assert_allclose([h["loss"] for h in hist], losses, rtol=1e-5, atol=1e-7)
    _close(got.params, want, 1e-5)
    assert not np.array_equal(np.asarray(want["layers"]["wq"]), np.asarray(m.params["layers"]["wq"]))
