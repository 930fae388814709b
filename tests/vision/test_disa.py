"""tokjax.vision.disa (P19 DiSA): the official step-annealing arithmetic, and its use as the steps schedule of
continuous raster AR."""

import math

import jax
import numpy as np
import pytest

from tokjax.model import Model, ModelConfig
from tokjax.vision import disa as D
from tokjax.vision import flow as F


def _official_mar(step, ar_num_iter, strategy, lower, upper):
    """Transliteration of MAR_DiSA/models/diffloss.py DiffLoss.sample (sampler "DiSA"): the T of the respaced
    sampler it picks (gen_diffusion = one sampler per T in range(lower, upper + 1))."""
    gen_diffusion = list(range(lower, upper + 1, 1))
    upper_step = ar_num_iter - 1
    if strategy == "linear":
        schedule_id = int((upper_step - step) / upper_step * (len(gen_diffusion) - 1))
    elif strategy == "cosine":
        schedule_id = int((math.cos(math.pi * step / upper_step) + 1) / 2 * (len(gen_diffusion) - 1))
    elif strategy == "constant":
        schedule_id = 0
    elif strategy == "two-stage":
        schedule_id = len(gen_diffusion) - 1 if step < upper_step / 2 else 0
    return gen_diffusion[schedule_id]


def _official_xar(step, clusters, flow_upper_steps, flow_lower_steps):
    """Transliteration of xAR_DiSA/models/xar.py sample_tokens' num_steps."""
    upper_step = clusters - 1
    return int((upper_step - step) / upper_step * (flow_upper_steps - flow_lower_steps) + flow_lower_steps)


BOUNDS = [(5, 50), (10, 50), (15, 50), (5, 25), (1, 2), (3, 3), (5, 100), (7, 9)]
NS = [2, 3, 4, 5, 7, 10, 16, 33, 64, 256]


@pytest.mark.parametrize("schedule", D.SCHEDULES)
def test_schedules_equal_the_official_formula(schedule):
    official = "two-stage" if schedule == "two_stage" else schedule
    for t_low, t_up in BOUNDS:
        for n in NS:
            want = [_official_mar(s, n, official, t_low, t_up) for s in range(n)]
            got = D.disa_steps(n, schedule=schedule, t_low=t_low, t_up=t_up)
            assert got.dtype == np.int32 and got.tolist() == want, (schedule, t_low, t_up, n)
            assert D.inner_steps(n - 1, n, schedule=schedule, t_low=t_low, t_up=t_up) == want[-1]
            if schedule != "constant":
                assert want[0] == t_up and np.all(np.diff(got) <= 0) and got.min() >= t_low
            else:
                assert set(want) == {t_low}


def test_xar_arithmetic_equals_the_official_formula():
    for t_low, t_up in BOUNDS:
        for n in NS:
            want = [_official_xar(s, n, t_up, t_low) for s in range(n)]
            assert D.disa_steps(n, schedule="linear", t_low=t_low, t_up=t_up, arithmetic="xar").tolist() == want


def test_single_step_and_head_evals():
    for schedule in ("linear", "cosine", "two_stage"):
        assert D.disa_steps(1, schedule=schedule, t_low=5, t_up=50).tolist() == [50]
    assert D.disa_steps(1, schedule="constant", t_low=5, t_up=50).tolist() == [5]
    assert D.head_evals([50, 20, 5], [1, 2, 4]) == 50 + 40 + 20
    assert D.head_evals(7, np.ones(64, np.int32)) == 7 * 64


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="t_low"):
        D.inner_steps(0, 4, t_low=0, t_up=5)
    with pytest.raises(ValueError, match="t_up"):
        D.disa_steps(4, t_low=1, t_up=0)
    with pytest.raises(ValueError, match="t_low must be <= t_up"):
        D.disa_steps(4, t_low=50, t_up=5)
    with pytest.raises(ValueError, match=r"s must lie in \[0, n=4\)"):
        D.inner_steps(4, 4)
    with pytest.raises(ValueError, match="s must be an int"):
        D.inner_steps(0.5, 4)
    with pytest.raises(ValueError, match="n "):
        D.disa_steps(0)
    with pytest.raises(ValueError, match="schedule must be one of"):
        D.disa_steps(4, schedule="exp")
    with pytest.raises(ValueError, match="xAR arithmetic"):
        D.disa_steps(4, schedule="cosine", arithmetic="xar")
    with pytest.raises(ValueError, match="steps must be >= 1"):
        D.head_evals([1, 0], [1, 1])
    with pytest.raises(ValueError, match="steps must be >= 1"):
        F.continuous_ar(length=3, steps=np.array([2, 0, 1]))


C, DM, L = 4, 32, 6


@pytest.fixture(scope="module")
def model():
    cfg = ModelConfig(vocab_size=11, d_model=DM, n_layers=2, n_heads=4, max_len=16)
    params = dict(Model.init(cfg, jax.random.key(0)).params)
    params["flow"] = F.continuous_init(jax.random.key(1), cfg, C, width=16, depth=2)
    rng = np.random.default_rng(0)
    params["flow"] = jax.tree.map(lambda a: a + 0.05 * rng.normal(size=a.shape).astype(np.float32), params["flow"])
    return Model(params, cfg)


@pytest.mark.parametrize("sampler", ["euler", pytest.param("euler_maruyama", marks=pytest.mark.slow)])
def test_constant_schedule_is_the_plain_sampler_and_new_schedules_do_not_recompile(model, sampler):
    from tokjax.decoding import driver

    labels, key = np.array([0, 3, 9]), jax.random.key(4)
    plain = F.sample_continuous(model, F.continuous_ar(length=L, steps=3, sampler=sampler), labels, key,
                                num_classes=10)
    const = F.sample_continuous(
        model, F.continuous_ar(length=L, steps=D.disa_steps(L, schedule="constant", t_low=3, t_up=9), sampler=sampler),
        labels, key, num_classes=10)
    np.testing.assert_array_equal(const.tokens, plain.tokens)  # bit for bit
    assert const.stats["head_evals"] == plain.stats["head_evals"] == 3 * L
    before = driver._loop_jit._cache_size()
    for schedule in ("linear", "cosine", "two_stage"):
        steps = D.disa_steps(L, schedule=schedule, t_low=2, t_up=7)
        out = F.sample_continuous(model, F.continuous_ar(length=L, steps=steps, sampler=sampler), labels, key,
                                  num_classes=10)
        assert out.stats["head_evals"] == D.head_evals(steps, np.ones(L, np.int32))
        assert np.isfinite(out.tokens).all()
    assert driver._loop_jit._cache_size() == before  # one compile for every schedule
