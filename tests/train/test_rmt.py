"""tokjax.train.rmt (P7 Reinforcement Mid-Training): budget, length reward, curriculum, and the reduction to GRPO."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import tokjax
from tests._grpo_loop import run_reference
from tokjax.losses import token_stats
from tokjax.model import Model
from tokjax.train.rl import RLConfig, rl_train
from tokjax.train.rmt import (
    RMTAnswer, RMTConfig, RMTTask, base_entropy, curriculum_probs, length_reward, make_ntp_aux, parse_reasoning,
    reason_then_predict, rmt, rmt_reward, token_budget,
)

V, THINK, END = 12, 10, 11
CFG = tokjax.ModelConfig(vocab_size=V, d_model=32, n_layers=1, n_heads=2, max_len=32)
WINDOWS = np.random.default_rng(0).integers(0, 10, (6, 9)).astype(np.int32)  # [N, S+1], S = 8
RL = RLConfig(steps=2, prompts_per_step=2, group_size=4, max_new_tokens=6, max_prompt_len=9, lr=1e-2)


def model():
    return Model(params=tokjax.model.init_params(CFG, jax.random.key(0)), cfg=CFG)


def _leaves_equal(a, b):
    return all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


# --------------------------------------------------------------------------- budget / rewards

@settings(max_examples=30, deadline=None)
@given(b0=st.floats(1.0, 64.0), frac=st.floats(0.0, 1.0), gamma=st.floats(0.01, 1.0), kappa=st.floats(0.0, 2.0),
       T=st.integers(1, 500))
def test_budget_monotone_clamped(b0, frac, gamma, kappa, T):
    b_min = 1.0 + frac * (b0 - 1.0)
    k = np.round(np.linspace(0, T, 33))  # one shape: no recompilation per example
    b = np.asarray(token_budget(k, T, b0, b_min, gamma, kappa))
    assert np.all(np.diff(b) <= 1e-5 * b0)  # non-increasing in k
    assert np.all(b >= np.float32(b_min))  # clamped at B_min
    np.testing.assert_allclose(b[0], b0, rtol=1e-6)
    want = np.maximum(b_min, b0 * gamma ** (k / float(T) ** kappa))
    np.testing.assert_allclose(b, want, rtol=1e-4)


def test_budget_fixed_and_floor():
    assert np.all(np.asarray(token_budget(np.arange(10), 10, 6.0, 1.0, 1.0)) == 6.0)  # gamma = 1: fixed B_0
    b = np.asarray(token_budget(np.arange(101), 100, 8.0, 2.0, 0.01))
    assert b[-1] == 2.0 and b[0] == 8.0 and np.sum(b == 2.0) > 1  # reaches and stays at the floor
    assert RMTConfig(b0=8, gamma=0.125).budget(10, 10) == pytest.approx(1.0)


def test_length_reward_is_a_triangle_at_the_budget():
    r = np.asarray(length_reward(np.array([0, 2, 4, 6, 8, 9]), 4.0))
    np.testing.assert_allclose(r, [0.0, 0.5, 1.0, 0.5, 0.0, 0.0])


def test_rmt_reward_match_plus_length_and_invalid_zero():
    r = rmt_reward(np.array([3, 3, 5, 3]), np.array([3, 4, 5, 3]), np.array([2, 2, 0, 2]), 2.0,
                   np.array([True, True, True, False]), 0.5)
    np.testing.assert_allclose(np.asarray(r), [1.5, 0.5, 1.0, 0.0])


def test_parse_reasoning():
    assert parse_reasoning([4, 5, 6, END, 0], END) == (6, 2, True)
    assert parse_reasoning([7, END], END) == (7, 0, True)
    assert parse_reasoning([END, 3], END) == (-1, 0, False)
    assert parse_reasoning([1, 2, 3], END) == (-1, 0, False)
    assert parse_reasoning([4, 5, 9, 6, END], END, answer_id=9) == (6, 2, True)
    assert parse_reasoning([9, 6, END], END, answer_id=9) == (6, 0, True)
    assert parse_reasoning([4, 5, 6, END], END, answer_id=9) == (-1, 0, False)  # no marker before the answer
    assert parse_reasoning([4, 9, 9, END], END, answer_id=9) == (-1, 0, False)


# --------------------------------------------------------------------------- curriculum

@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.sampled_from([2, 40]), q=st.sampled_from([0.0, 0.3, 0.5, 0.8]),
       width=st.floats(0.05, 1.0))
def test_curriculum_expected_entropy_rises(seed, n, q, width):
    rng = np.random.default_rng(seed)
    h = rng.exponential(size=n).astype(np.float32)
    h[rng.random(n) < 0.2] = 1.0  # ties
    mask = rng.random(n) < 0.8
    mask[0] = True
    means = []
    for p in np.linspace(0, 1, 6):
        probs = np.asarray(curriculum_probs(h, mask, p, width=width, pool_quantile=q))
        np.testing.assert_allclose(probs.sum(), 1.0, rtol=1e-5)
        assert np.all(probs[~mask] == 0)
        cut = np.quantile(h[mask], q)
        assert np.all(probs[mask & (h < cut - 1e-6)] == 0)  # only the pool is sampled
        means.append(float(np.sum(probs * h)))
    assert np.all(np.diff(means) >= -1e-4 * max(1.0, abs(means[0])))


def test_curriculum_moves_from_easy_to_hard():
    h = np.arange(20, dtype=np.float32)
    mask = np.ones(20, bool)
    early = np.asarray(curriculum_probs(h, mask, 0.0, width=0.1, pool_quantile=0.5))
    late = np.asarray(curriculum_probs(h, mask, 1.0, width=0.1, pool_quantile=0.5))
    assert early[:10].sum() == 0 and late[:10].sum() == 0  # pool = the higher-entropy half
    assert np.argmax(early) == 10 and np.argmax(late) == 19


def test_task_prompts_answers_and_reward():
    h = base_entropy(model(), WINDOWS)
    assert h.shape == (6, 8) and np.all(h >= 0)
    cfg = RMTConfig(b0=2.0, gamma=0.5, min_context=3)
    task = RMTTask(WINDOWS, h, cfg, total_steps=4, think_id=THINK, end_id=END)
    p, a = task.prompts(1, 3)
    assert p == task.prompts(1, 3)[0]  # a pure function of the step
    for prompt, ans in zip(p, a):
        assert prompt[-1] == THINK and len(prompt) - 1 >= 3
        assert WINDOWS[ans.window, len(prompt) - 1] == ans.target
        assert ans.budget == pytest.approx(2.0 * 0.5 ** 0.25)
    r, ok = task.reward([[1, 2, a[0].target, END], [a[1].target, 4]],
                        [a[0], a[1]])
    b = a[0].budget
    np.testing.assert_allclose(r, [1.0 + max(0.0, 1 - abs(2 - b) / b), 0.0], rtol=1e-6)
    assert ok.tolist() == [True, False]


# --------------------------------------------------------------------------- reductions

@pytest.mark.slow
def test_lambda0_fixed_budget_is_grpo_bit_for_bit():
    """ntp_weight = 0, gamma = 1: rmt == a hand-written GRPO loop on r = [y == x_t] + r_len(|o|; B_0)."""
    m = model()
    h = base_entropy(m, WINDOWS)
    cfg = RMTConfig(b0=2.0, gamma=1.0, ntp_weight=0.0, min_context=2)
    trained, hist = rmt(m, WINDOWS, h, cfg, rl=RL, think_id=THINK, end_id=END)
    task = RMTTask(WINDOWS, h, cfg, total_steps=RL.steps, think_id=THINK, end_id=END, prompt_seed=RL.seed)

    def rewards(r):  # the reward written out independently
        out = []
        for c, a in zip(r.completions, r.answers):
            c = list(np.asarray(c))
            if END in c and c.index(END) > 0:
                body = c[:c.index(END)]
                out.append(float(body[-1] == a.target) + max(0.0, 1.0 - abs(len(body) - 1 - 2.0) / 2.0))
            else:
                out.append(0.0)
        return out

    state, steps = run_reference(m, RL, task.prompts, rewards, eos_id=END)
    for s, rw, metrics in steps:
        assert float(metrics["loss"]) == hist[s]["loss"]
        np.testing.assert_allclose(hist[s]["reward"], np.mean(rw), rtol=1e-6)
        assert hist[s]["budget"] == 2.0
    assert _leaves_equal(trained.params, state.params)


def test_ntp_aux_is_lambda_times_window_ce():
    m = model()
    aux = make_ntp_aux()
    batch = {"ntp_tokens": jnp.asarray(WINDOWS), "ntp_weight": jnp.asarray(0.7, jnp.float32)}
    ce = lambda p: -jnp.mean(token_stats(p, CFG, {"tokens": jnp.asarray(WINDOWS)}).logp)  # noqa: E731
    loss, met = jax.jit(lambda p: aux(p, CFG, batch, None))(m.params)
    np.testing.assert_allclose(float(met["ntp_loss"]), float(jax.jit(ce)(m.params)), rtol=1e-5)
    np.testing.assert_allclose(float(loss), 0.7 * float(met["ntp_loss"]), rtol=1e-6)
    g = jax.jit(jax.grad(lambda p: aux(p, CFG, batch, None)[0]))(m.params)
    g1 = jax.jit(jax.grad(ce))(m.params)
    np.testing.assert_allclose(g["embed"], 0.7 * g1["embed"], rtol=1e-4, atol=1e-7)


@pytest.mark.slow  # the lambda = 0 reduction runs rmt end to end in the default suite
def test_rmt_with_ntp_term_and_decaying_budget():
    m = model()
    h = base_entropy(m, WINDOWS)
    _, hist = rmt(m, WINDOWS, h, RMTConfig(b0=2.0, gamma=0.5, ntp_weight=0.5, min_context=2), rl=RL,
                  think_id=THINK, end_id=END)
    assert [r["budget"] for r in hist] == pytest.approx([2.0, 2.0 * 0.5 ** 0.5])
    assert all("ntp_loss" in r and r["loss"] == pytest.approx(r["grpo_loss"] + 0.5 * r["ntp_loss"], rel=1e-5)
               for r in hist)
    out = reason_then_predict(m, [[1, 2, THINK], [3, THINK]], end_id=END, max_new_tokens=4)
    assert out["pred"].shape == (2,) and out["valid"].dtype == bool


# --------------------------------------------------------------------------- bad input

def test_bad_inputs():
    with pytest.raises(ValueError, match="b0 must be >= b_min"):
        token_budget(0, 10, 2.0, 4.0)
    with pytest.raises(ValueError, match="gamma"):
        token_budget(0, 10, 8.0, 1.0, 0.0)
    with pytest.raises(ValueError, match="gamma"):
        RMTConfig(gamma=1.5)
    with pytest.raises(ValueError, match="b_min"):
        RMTConfig(b_min=0.5)
    with pytest.raises(ValueError, match="ntp_weight"):
        RMTConfig(ntp_weight=-1.0)
    with pytest.raises(ValueError, match="budget"):
        length_reward(1, 0.0)
    with pytest.raises(ValueError, match="all False"):
        curriculum_probs(np.ones(3), np.zeros(3, bool), 0.5)
    with pytest.raises(ValueError, match="progress"):
        curriculum_probs(np.ones(3), np.ones(3, bool), 1.5)
    h = np.zeros((6, 8), np.float32)
    with pytest.raises(ValueError, match="entropy must be"):
        RMTTask(WINDOWS, h[:, :5], RMTConfig(), total_steps=2, think_id=THINK, end_id=END)
    with pytest.raises(ValueError, match="must differ"):
        RMTTask(WINDOWS, h, RMTConfig(), total_steps=2, think_id=END, end_id=END)
    with pytest.raises(ValueError, match="answer_id"):
        RMTTask(WINDOWS, h, RMTConfig(), total_steps=2, think_id=THINK, end_id=END, answer_id=END)
    with pytest.raises(ValueError, match="max_new_tokens"):
        rmt(model(), WINDOWS, h, RMTConfig(b0=8.0), rl=RL, think_id=THINK, end_id=END)
    with pytest.raises(ValueError, match="max_prompt_len"):
        rmt(model(), WINDOWS, h, RMTConfig(b0=2.0), rl=RLConfig(max_new_tokens=6, max_prompt_len=4),
            think_id=THINK, end_id=END)
    with pytest.raises(ValueError, match="token id"):
        rmt(model(), WINDOWS, h, RMTConfig(b0=2.0), rl=RL, think_id=V, end_id=END)
    with pytest.raises(ValueError, match="outside"):
        rmt(model(), WINDOWS + 5, h, RMTConfig(b0=2.0), rl=RL, think_id=THINK, end_id=END)
    with pytest.raises(ValueError, match="pred and target"):
        rmt_reward(np.zeros(2), np.zeros(3), np.zeros(2), 1.0, np.ones(2, bool))
    assert RMTAnswer(1, 2.0, 0).target == 1
    assert rl_train  # the loop rmt builds on


def test_swept_hyperparameters_are_runtime_arrays():
    """Budget options, progress, width and alpha may be traced: one compiled program serves every value."""
    budget = jax.jit(token_budget)
    np.testing.assert_allclose(budget(5, 10, 8.0, 1.0, 0.5, 1.0), 8.0 * 0.5 ** 0.5, rtol=1e-6)
    np.testing.assert_allclose(budget(5, 10, 8.0, 1.0, 0.25, 2.0), 8.0 * 0.25 ** 0.05, rtol=1e-6)
    h, m = np.arange(10, dtype=np.float32), np.ones(10, bool)
    probs = jax.jit(lambda p, w: curriculum_probs(h, m, p, width=w))
    for p in (0.0, 0.5, 1.0):
        np.testing.assert_allclose(probs(p, 0.2), curriculum_probs(h, m, p, width=0.2), rtol=1e-5, atol=1e-7)
    r = jax.jit(rmt_reward)(jnp.array([1]), jnp.array([1]), jnp.array([3]), 2.0, jnp.array([True]), 0.25)
    np.testing.assert_allclose(r, [1.0 + 0.25 * 0.5])
