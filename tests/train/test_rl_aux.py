"""tokjax.train.rl: the ``aux`` and ``prepare`` plug points (issue 21), and aux=None = the plain loop bit for bit."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import tokjax
from tests._grpo_loop import run_reference
from tokjax.losses.grpo import group_advantages, make_grpo_loss
from tokjax.model import Model
from tokjax.train.rl import RLConfig, make_aux_loss, rl_train, rollout, rollout_batch

V, TARGET, EOS = 12, 5, 11
CFG = tokjax.ModelConfig(vocab_size=V, d_model=32, n_layers=1, n_heads=2, max_len=32)
RL = RLConfig(steps=2, prompts_per_step=2, group_size=4, max_new_tokens=5, max_prompt_len=4, lr=1e-2)


class CountTarget:
    """Reward = fraction of the completion's tokens equal to TARGET."""

    def prompts(self, step, n):
        r = np.random.default_rng(step)
        return [r.integers(1, V - 1, 3).tolist() for _ in range(n)], [None] * n

    def reward(self, completions, answers):
        return np.array([np.mean(np.asarray(c) == TARGET) if len(c) else 0.0 for c in completions]), \
            np.ones(len(completions), bool)


def model():
    return Model(params=tokjax.model.init_params(CFG, jax.random.key(0)), cfg=CFG)


def _leaves_equal(a, b):
    return all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


@pytest.mark.slow
def test_aux_none_is_the_plain_loop_bit_for_bit():
    """aux=None, prepare=None: rl_train equals a hand-written rollout -> group_advantages -> grpo step loop."""
    m, task = model(), CountTarget()
    trained, hist = rl_train(m, task, RL, eos_id=EOS)
    state, steps = run_reference(m, RL, task.prompts, lambda r: task.reward(r.completions, r.answers)[0], eos_id=EOS)
    for s, _, metrics in steps:
        assert float(metrics["loss"]) == hist[s]["loss"]
    assert _leaves_equal(trained.params, state.params)


@pytest.mark.slow  # aux=None bit-for-bit and the aux-term test stay in the default suite
def test_zero_aux_and_token_writing_prepare_leave_the_run_unchanged():
    """An aux returning 0 and a prepare that writes after each row give the aux=None run (to float rounding: with
    aux / prepare the head scores every position, see rl.scoring)."""
    base, _ = rl_train(model(), CountTarget(), RL, eos_id=EOS)
    seen = []

    def zero_aux(params, cfg, batch, stats):
        seen.append(stats.hidden is not None)
        return jnp.zeros((), jnp.float32), {"zero": jnp.zeros(())}

    zero_aux.requires = ("hidden",)

    def prepare(r, batch):
        W = batch["tokens"].shape[1]
        after = np.arange(W)[None, :] >= r.lengths[:, None]
        return {**batch, "tokens": jnp.where(after, 7, batch["tokens"]), "extra": jnp.ones(len(r.tokens))}

    got, hist = rl_train(model(), CountTarget(), RL, eos_id=EOS, aux=zero_aux, prepare=prepare)
    for a, b in zip(jax.tree.leaves(got.params), jax.tree.leaves(base.params)):  # aux / prepare: full-width head
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-5)  # Adam: lr * noise / sqrt(v)
    assert seen and all(seen) and hist[0]["grpo_loss"] == hist[0]["loss"] and "zero" in hist[0]


@pytest.mark.slow  # LaSeR's tests check an aux gradient in the default suite
def test_aux_term_is_added_to_the_loss_and_its_gradient():
    m = model()
    r = rollout(m, [[1, 2, 3], [4, 5, 6]], [None, None], key=jax.random.key(3), group_size=4, max_new_tokens=5,
                eos_id=EOS, width=9)
    batch = rollout_batch(r)
    batch["old_logp"] = tokjax.losses.token_stats(m.params, CFG, batch).logp
    batch["advantages"] = group_advantages(np.arange(8, dtype=np.float32), 4)

    def aux(params, cfg, b, stats):
        v = 0.3 * jnp.sum(params["embed"] ** 2)
        return v, {"sq": v}

    plain = make_grpo_loss()
    with_aux = make_aux_loss(aux)
    (l0, _), g0 = jax.value_and_grad(plain, has_aux=True)(m.params, CFG, batch)
    (l1, met), g1 = jax.value_and_grad(with_aux, has_aux=True)(m.params, CFG, batch)
    np.testing.assert_allclose(l1, l0 + met["sq"], rtol=1e-6)
    np.testing.assert_allclose(met["grpo_loss"], l0, rtol=1e-7)
    np.testing.assert_allclose(g1["embed"], g0["embed"] + 0.6 * m.params["embed"], rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(g1["layers"]["wq"], g0["layers"]["wq"])


def test_bad_aux_and_prepare_errors():
    with pytest.raises(ValueError, match="callable"):
        make_aux_loss(3)
    bad = lambda p, c, b, s: (0.0, {})  # noqa: E731
    bad.requires = ("logits",)
    with pytest.raises(ValueError, match="requires"):
        make_aux_loss(bad)
    clash = make_aux_loss(lambda p, c, b, s: (jnp.zeros(()), {"kl": jnp.zeros(())}))
    m = model()
    r = rollout(m, [[1, 2, 3]], [None], key=jax.random.key(3), group_size=2, max_new_tokens=3, width=7)
    batch = rollout_batch(r) | {"old_logp": jnp.zeros((2, 6)), "advantages": jnp.ones(2)}
    with pytest.raises(ValueError, match="clash"):
        clash(m.params, CFG, batch)
    vector = make_aux_loss(lambda p, c, b, s: (jnp.zeros(3), {}))
    with pytest.raises(ValueError, match="scalar"):
        vector(m.params, CFG, batch)

    def overwrite(r, batch):  # changes a completion token: the GRPO log-probs would no longer be the rollout's
        return {**batch, "tokens": batch["tokens"].at[:, r.prompt_lengths[0]].set(0)}

    with pytest.raises(ValueError, match="prompt or completion token"):
        rl_train(model(), CountTarget(), RL, eos_id=EOS, prepare=overwrite)
    with pytest.raises(ValueError, match="prepare must be callable"):
        rl_train(model(), CountTarget(), RL, eos_id=EOS, prepare=5)


def test_swapped_objective_plug_points_reproduce_the_grpo_loop_and_rloo_is_passed_through():
    """strategy / arrays / loss / logp given as the defaults they replace (plain sampling, GRPO's loss, token
    log-probs, an unused extra array) reproduce the plain run (to float rounding: the plain run skips the
    old-logp forward, see rl.scoring); RLConfig.rloo reaches the advantages."""
    from tokjax.decoding import Sampling
    from tokjax.losses import token_stats

    cfg = dataclasses.replace(RL, scale="none", rloo=True)
    base, base_hist = rl_train(model(), CountTarget(), cfg, eos_id=EOS)
    seen = []

    def arrays(out, width):
        seen.append(width)
        return {"unused": np.zeros(len(out.tokens), np.float32)}

    got, hist = rl_train(model(), CountTarget(), cfg, eos_id=EOS, strategy=Sampling(), arrays=arrays,
                         loss=make_grpo_loss(), logp=lambda p, c, b: token_stats(p, c, b).logp)
    assert seen == [RL.max_prompt_len + RL.max_new_tokens] * RL.steps
    # loss= / logp= take the separate old-logp forward and the full-width head; the plain run (inner_steps 1)
    # takes old_logp from its loss's own forward on the completion window: equal up to float rounding
    np.testing.assert_allclose([h["loss"] for h in hist], [h["loss"] for h in base_hist], rtol=1e-6, atol=1e-7)
    for a, b in zip(jax.tree.leaves(got.params), jax.tree.leaves(base.params)):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-5)  # Adam: lr * noise / sqrt(v)
    group, _ = rl_train(model(), CountTarget(), RL, eos_id=EOS)
    assert not _leaves_equal(group.params, base.params)  # group-std vs RLOO advantages differ
    with pytest.raises(ValueError, match="replaces the GRPO objective"):
        rl_train(model(), CountTarget(), cfg, loss=make_grpo_loss(), aux=lambda *a: (0.0, {}))
    with pytest.raises(ValueError, match="extra batch arrays"):
        rl_train(model(), CountTarget(), cfg, eos_id=EOS, arrays=lambda out, width: {"tokens": out.tokens})
