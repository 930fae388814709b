"""tokjax.vision.mar: masked-set continuous AR (MAR, the base of P19 DiSA): the official fill schedule, the
masked flow loss, decoding through tokjax.generate, head-evaluation counts and the reduction to continuous raster
AR."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tokjax.model import Model, ModelConfig
from tokjax.vision import disa as D
from tokjax.vision import flow as F
from tokjax.vision import mar as M

C, DM, L = 4, 32, 8


@pytest.fixture(scope="module")
def model():
    cfg = ModelConfig(vocab_size=11, d_model=DM, n_layers=2, n_heads=4, max_len=16)
    params = dict(Model.init(cfg, jax.random.key(0)).params)
    params["mar"] = M.mar_init(jax.random.key(1), cfg, C, width=16, depth=2)
    # perturb the zero-initialised AdaLN / output layers so the head is not identically 0
    rng = np.random.default_rng(0)
    params["mar"] = jax.tree.map(lambda a: a + 0.05 * rng.normal(size=a.shape).astype(np.float32), params["mar"])
    return Model(params, cfg)


def _official_fills(seq_len, num_iter):
    """Transliteration of MAR's sample_tokens mask arithmetic (one row, order = identity): tokens predicted per
    step."""
    mask = np.ones(seq_len)
    out = []
    for step in range(num_iter):
        mask_ratio = np.cos(math.pi / 2.0 * (step + 1) / num_iter)
        mask_len = np.floor(seq_len * mask_ratio)
        mask_len = np.maximum(1, np.minimum(np.sum(mask) - 1, mask_len))
        mask_next = np.zeros(seq_len)
        mask_next[: int(mask_len)] = 1
        cur, nxt = mask.astype(bool), mask_next.astype(bool)
        to_pred = cur if step >= num_iter - 1 else np.logical_xor(cur, nxt)
        out.append(int(to_pred.sum()))
        mask = mask_next
    return out


def test_fill_schedule_is_the_official_arithmetic():
    for seq_len in (4, 8, 16, 64, 256):
        for num_iter in (1, 2, 3, 4, 7, 16, 64):
            if num_iter > seq_len:
                continue
            got = M.mar_fill_counts(seq_len, num_iter)
            assert got.tolist() == _official_fills(seq_len, num_iter) and got.sum() == seq_len
            left = M.mar_masked_counts(seq_len, num_iter)
            assert left[-1] == 0 and np.all(seq_len - np.cumsum(got) == left)
    assert M.mar_fill_counts(12, 12, "linear").tolist() == [1] * 12


def test_causal_loss_is_the_flow_loss(model):
    batch = F.continuous_batch(np.random.default_rng(0).normal(size=(3, L, C)), np.array([1, 2, 3]), num_classes=10,
                               class_dropout=0.0)
    a, _ = jax.jit(lambda p: M.mar_loss(p, model.cfg, batch, jax.random.key(3), t_samples=2, attention="causal"))(
        model.params)
    b, _ = jax.jit(lambda p: F.flow_loss(p, model.cfg, batch, jax.random.key(3), t_samples=2, key="mar"))(model.params)
    np.testing.assert_allclose(float(a), float(b), rtol=1e-5)


def test_registered_mar_loss_trains_every_part_and_scores_masked_tokens(model):
    from tokjax.losses.registry import make_loss

    loss = make_loss("mar", t_samples=2)
    batch = F.continuous_batch(np.random.default_rng(1).normal(size=(4, L, C)), np.arange(4), num_classes=10,
                               class_dropout=0.5, key=jax.random.key(0))
    (val, metrics), g = jax.jit(jax.value_and_grad(lambda p: loss(p, model.cfg, batch, jax.random.key(1)),
                                                   has_aux=True))(model.params)
    assert np.isfinite(float(val)) and 0.7 <= float(metrics["mask_ratio"]) <= 1.0
    for part in (g["mar"]["head"]["out"]["w"], g["mar"]["proj"]["w"], g["mar"]["mask"], g["embed"]):
        assert float(jnp.abs(part).sum()) > 0


@pytest.mark.parametrize("sampler", ["euler", pytest.param("euler_maruyama", marks=pytest.mark.slow)])
def test_one_token_per_step_raster_causal_is_continuous_raster_ar(model, sampler):
    labels, key = np.array([2, 5, 0]), jax.random.key(7)
    ref = F.sample_continuous(model, F.continuous_ar(model.params["mar"], length=L, steps=3, sampler=sampler), labels,
                              key, num_classes=10)
    s = M.mar(length=L, iters=L, steps=3, sampler=sampler, order="raster", fill="linear", attention="causal")
    out = M.sample_mar(model, s, labels, key, num_classes=10)
    np.testing.assert_allclose(out.tokens, ref.tokens, atol=1e-4)  # full forward vs cached decode
    assert out.stats["head_evals"] == ref.stats["head_evals"] == 3 * L and out.stats["forward_calls"] == L


def test_decode_follows_the_fill_schedule_against_a_step_by_step_reference(model):
    """Temperature 0, raster order: each step's tokens are the deterministic flow samples of mar_hidden over the
    canvas so far (a plain Python loop with the official fill counts)."""
    labels, iters, steps = np.array([4, 1]), 3, 2
    out = M.sample_mar(model, M.mar(length=L, iters=iters, steps=steps, temperature=0.0, order="raster"), labels,
                       jax.random.key(0), num_classes=10)
    @jax.jit
    def reference(params):
        canvas, known, start = jnp.zeros((2, L, C)), jnp.zeros((2, L), bool), 0
        for f in M.mar_fill_counts(L, iters).tolist():
            z = M.mar_hidden(params, model.cfg, canvas, known, labels)
            x, _ = F.flow_sample(params["mar"]["head"], z[:, start:start + f], jax.random.key(0), steps=steps,
                                 temperature=0.0)
            canvas, known = canvas.at[:, start:start + f].set(x), known.at[:, start:start + f].set(True)
            start += f
        return canvas

    np.testing.assert_allclose(out.tokens, np.asarray(reference(model.params)), atol=1e-4)


def test_head_evals_constant_schedule_and_no_recompile(model):
    from tokjax.decoding import driver

    labels, key, iters = np.array([0, 3, 9, 9]), jax.random.key(4), 4
    fills = M.mar_fill_counts(L, iters)
    plain = M.sample_mar(model, M.mar(length=L, iters=iters, steps=3), labels, key, num_classes=10)
    const = M.sample_mar(model, M.mar(length=L, iters=iters, steps=D.disa_steps(iters, schedule="constant", t_low=3)),
                         labels, key, num_classes=10)
    np.testing.assert_array_equal(const.tokens, plain.tokens)  # bit for bit
    assert plain.stats["head_evals"] == 3 * L and plain.stats["forward_calls"] == iters
    assert np.all(np.abs(plain.tokens).sum(-1) > 0)  # every token was filled
    before = driver._loop_jit._cache_size()
    for schedule in ("linear", "cosine", "two_stage"):
        steps = D.disa_steps(iters, schedule=schedule, t_low=2, t_up=9)
        out = M.sample_mar(model, M.mar(length=L, iters=iters, steps=steps), labels, key, num_classes=10)
        assert out.stats["head_evals"] == D.head_evals(steps, fills) == int(np.sum(steps * fills))
    assert driver._loop_jit._cache_size() == before  # one compile for every schedule


@pytest.mark.slow  # the unguided decode tests keep MAR decoding covered in the default suite
def test_guidance_one_equals_unguided(model):
    labels, key = np.array([1, 6]), jax.random.key(2)
    a = M.sample_mar(model, M.mar(length=L, iters=3, steps=2), labels, key, num_classes=10)
    b = M.sample_mar(model, M.mar(length=L, iters=3, steps=2, guided=True), labels, key, num_classes=10)
    c = M.sample_mar(model, M.mar(length=L, iters=3, steps=2, guidance=3.0), labels, key, num_classes=10)
    np.testing.assert_allclose(a.tokens, b.tokens, atol=1e-5)
    assert np.isfinite(c.tokens).all() and not np.allclose(a.tokens, c.tokens)


def test_bad_inputs_raise(model):
    with pytest.raises(ValueError, match="iters"):
        M.mar(length=4, iters=5)
    with pytest.raises(ValueError, match="iters"):
        M.mar(length=4, iters=0)
    with pytest.raises(ValueError, match="steps must be >= 1"):
        M.mar(length=4, iters=2, steps=[3, 0])
    with pytest.raises(ValueError, match="steps must be >= 1"):
        M.mar(length=4, iters=2, steps=0)
    with pytest.raises(ValueError, match=r"one count per AR step \[iters=2\]"):
        M.mar(length=4, iters=2, steps=[3, 2, 1])
    with pytest.raises(ValueError, match="order='raster'"):
        M.mar(length=4, iters=4, attention="causal")
    with pytest.raises(ValueError, match="fill"):
        M.mar(length=4, iters=2, fill="exp")
    with pytest.raises(ValueError, match="temperature"):
        M.mar(length=4, iters=2, temperature=-1.0)
    with pytest.raises(ValueError, match="mask_ratio_min"):
        M.make_mar_loss(mask_ratio_min=0.0)
    with pytest.raises(ValueError, match="params has no 'mar'"):
        M.mar_hidden({}, model.cfg, jnp.zeros((1, L, C)), jnp.zeros((1, L), bool), jnp.zeros((1,), jnp.int32))
    with pytest.raises(ValueError, match="token_dim"):
        M.mar_hidden(model.params, model.cfg, jnp.zeros((1, L, C + 1)), jnp.zeros((1, L), bool), jnp.zeros(1, int))
    with pytest.raises(ValueError, match="max_len"):
        M.sample_mar(model, M.mar(length=16, iters=4), np.array([0]), jax.random.key(0), num_classes=10)
