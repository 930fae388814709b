"""tokjax.train.rl: rollouts through generate, exact old log-probs, and a GRPO run that learns a toy reward."""

from __future__ import annotations

import jax
import numpy as np
import pytest

import tokjax
from tokjax.losses import token_stats
from tokjax.model import Model
from tokjax.train.rl import RLConfig, rl_train, rollout, rollout_batch

V, TARGET = 12, 5
CFG = tokjax.ModelConfig(vocab_size=V, d_model=32, n_layers=1, n_heads=2, max_len=32)


class CountTarget:
    """Reward = fraction of the completion's tokens equal to TARGET (format always valid)."""

    def prompts(self, step, n):
        r = np.random.default_rng(step)
        return [r.integers(1, V, 3).tolist() for _ in range(n)], [None] * n

    def reward(self, completions, answers):
        return np.array([np.mean(np.asarray(c) == TARGET) if len(c) else 0.0 for c in completions]), \
            np.ones(len(completions), bool)


def model():
    return Model(params=tokjax.model.init_params(CFG, jax.random.key(0)), cfg=CFG)


@pytest.mark.slow
def test_rollout_log_probs_at_temperature_one_equal_token_stats():
    m = model()
    out = tokjax.generate(m, [[1, 2, 3], [4, 5]], key=jax.random.key(1), n=3, max_new_tokens=6,
                          logits=tokjax.logits.temperature(1.0), logprobs=0)
    r = rollout(m, [[1, 2, 3], [4, 5]], ["a", "b"], key=jax.random.key(1), group_size=3, max_new_tokens=6, width=16)
    assert r.tokens.shape == (6, 16) and r.answers == ["a"] * 3 + ["b"] * 3
    np.testing.assert_array_equal(r.tokens[:, :out.tokens.shape[1]], out.tokens)
    batch = rollout_batch(r)
    stats = token_stats(m.params, CFG, batch)
    mask = np.asarray(stats.mask)
    want = np.asarray(out.logprobs)[:, 1:]
    got = np.asarray(stats.logp)[:, :want.shape[1]]
    np.testing.assert_allclose(got[mask[:, :want.shape[1]]], want[mask[:, :want.shape[1]]], atol=1e-4)
    assert mask.sum() == (r.lengths - r.prompt_lengths).sum()
    assert r.truncated.all()  # no eos id given: every row used its whole budget


def test_grpo_run_raises_the_toy_reward():
    cfg = RLConfig(steps=12, prompts_per_step=4, group_size=8, max_new_tokens=6, max_prompt_len=4, lr=1e-2)
    _, hist = rl_train(model(), CountTarget(), cfg)
    assert len(hist) == 12 and all(np.isfinite(h["loss"]) for h in hist)
    first, last = np.mean([h["reward"] for h in hist[:3]]), np.mean([h["reward"] for h in hist[-3:]])
    assert last > first + 0.2, (first, last)  # measured: 0.07 -> 0.8 over the 12 steps


@pytest.mark.slow  # make_train_step's trainable tests cover freezing in the default suite
def test_trainable_keeps_the_rest_frozen_bit_for_bit():
    m = model()
    cfg = RLConfig(steps=2, prompts_per_step=2, group_size=4, max_new_tokens=4, max_prompt_len=4, lr=1e-2,
                   trainable=("layers",))
    trained, _ = rl_train(m, CountTarget(), cfg)
    np.testing.assert_array_equal(trained.params["embed"], m.params["embed"])
    assert not np.array_equal(trained.params["layers"]["wq"], m.params["layers"]["wq"])


def test_bad_config_and_reference_errors():
    with pytest.raises(ValueError, match="group_size"):
        RLConfig(group_size=1)
    with pytest.raises(ValueError, match="reduction"):
        RLConfig(reduction="mean")
    with pytest.raises(ValueError, match="reference"):
        rl_train(model(), CountTarget(), RLConfig(beta=0.1))
    with pytest.raises(ValueError, match="max_prompt_len"):
        rl_train(model(), CountTarget(), RLConfig(steps=1, max_prompt_len=2, max_new_tokens=2))
