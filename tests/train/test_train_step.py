"""Train step, loss interface, optimiser and evaluation (bits per token / byte)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import tokjax.losses
from tokjax.model import Inputs, ModelConfig, forward
from tokjax.train import (
    TrainConfig, bits_per_byte, bits_per_token, check_batch, eval_sums, evaluate, init_state, make_optimizer,
    make_schedule, make_train_step, next_token_loss, unigram_loss,
)

# Jitted once per batch structure: eager forwards would compile every op separately.
loss_jit = jax.jit(next_token_loss, static_argnums=1)
sums_jit = jax.jit(eval_sums, static_argnums=1)

CFG = ModelConfig(vocab_size=64, d_model=32, n_layers=1, n_heads=2, n_kv_heads=1, max_len=32)
TC = TrainConfig(lr=1e-2, warmup_steps=0, total_steps=100, batch_size=4, seq_len=16)


def _batch(seed=0, B=4, T=16):
    return {"tokens": np.random.default_rng(seed).integers(0, CFG.vocab_size, (B, T + 1)).astype(np.int32)}


@pytest.fixture(scope="module")
def params():
    return init_state(CFG, make_optimizer(TC), 0).params  # jitted init: one compile, not one per op


def _full(batch, mask=None, weights=None):
    """Returns the batch with explicit mask and weights, so every call shares one compiled program."""
    B, T = batch["tokens"].shape[0], batch["tokens"].shape[1] - 1
    ones = np.ones((B, T), np.float32)
    return {**batch, "mask": ones if mask is None else mask, "weights": ones if weights is None else weights}


def test_train_step_decreases_loss_on_a_fixed_batch():
    opt = make_optimizer(TC)
    state = init_state(CFG, opt, 0)
    step = make_train_step(CFG, opt, schedule=make_schedule(TC))
    batch = _batch()
    losses = []
    for _ in range(15):
        state, m = step(state, batch)
        losses.append(float(m["loss"]))
    assert int(state.step) == 15
    assert losses[-1] < losses[0] - 0.5, losses
    assert set(m) >= {"loss", "grad_norm", "lr", "nll_sum", "token_count", "nll"}
    assert float(m["token_count"]) == 4 * 16


def test_pluggable_loss_fn_is_used_and_gets_a_step_dependent_rng():
    seen = []

    def my_loss(params, cfg, batch, rng):
        loss, metrics = next_token_loss(params, cfg, batch, rng)
        u = jax.random.uniform(rng)
        return 0.5 * loss, {"half": 0.5 * loss, "u": u}

    opt = make_optimizer(TC)
    step = make_train_step(CFG, opt, my_loss, donate=False)
    state = init_state(CFG, opt, 0)
    batch = _batch()
    s1, m1 = step(state, batch)
    s2, m2 = step(s1, batch)
    assert float(m1["loss"]) == pytest.approx(float(m1["half"]))
    full, _ = loss_jit(state.params, CFG, batch)
    assert float(m1["loss"]) == pytest.approx(0.5 * float(full), rel=1e-5)
    assert float(m1["u"]) != float(m2["u"])  # fold_in(rng, step): fresh randomness each step
    # Same state, same batch -> same randomness (a pure function of (seed, step)).
    _, m1b = step(state, batch)
    assert float(m1b["u"]) == float(m1["u"])
    del seen


def test_loss_fn_must_return_scalar_and_dict():
    opt = make_optimizer(TC)
    bad = make_train_step(CFG, opt, lambda p, c, b, r: (jnp.zeros(3), {}), donate=False)
    with pytest.raises(ValueError, match="scalar"):
        bad(init_state(CFG, opt, 0), _batch())
    worse = make_train_step(CFG, opt, lambda p, c, b, r: jnp.zeros(()), donate=False)
    with pytest.raises(ValueError, match="metrics dict"):
        worse(init_state(CFG, opt, 0), _batch())
    with pytest.raises(ValueError, match="loss_fn"):
        make_train_step(CFG, opt, "not a function")


def test_mask_and_weights_normalise_explicitly(params):
    batch = _batch(1)
    s_all, c_all, _ = sums_jit(params, CFG, _full(batch))
    mask = np.zeros((4, 16), np.float32)
    mask[:, :8] = 1
    s_m, c_m, _ = sums_jit(params, CFG, _full(batch, mask=mask))
    assert float(c_all) == 64 and float(c_m) == 32
    loss_m, met = loss_jit(params, CFG, _full(batch, mask=mask))
    assert float(loss_m) == pytest.approx(float(s_m) / 32, rel=1e-6)
    # weights 2 everywhere: the default loss (token_mean, tokjax.losses.next_token_loss) divides the
    # weighted sum by the number of targets, so the loss doubles; the weighted mean stays the same
    # with reduction="weighted_mean" and in evaluation (sum(w m nll) / sum(w m)).
    w2 = _full(batch, weights=np.full((4, 16), 2.0, np.float32))
    loss_w, met_w = loss_jit(params, CFG, w2)
    loss_1, met_1 = loss_jit(params, CFG, _full(batch))
    assert float(loss_w) == pytest.approx(2 * float(loss_1), rel=1e-6)
    assert float(met_w["nll_sum"]) == pytest.approx(2 * float(met_1["nll_sum"]), rel=1e-6)
    assert float(met_w["token_count"]) == 64
    wmean = jax.jit(tokjax.losses.make_next_token_loss(reduction="weighted_mean"), static_argnums=1)
    assert float(wmean(params, CFG, w2)[0]) == pytest.approx(float(loss_1), rel=1e-6)
    s_w, c_w, _ = sums_jit(params, CFG, w2)
    assert float(c_w) == 128 and float(s_w) / float(c_w) == pytest.approx(float(s_all) / float(c_all), rel=1e-6)
    # everything masked: 0, not NaN
    loss_0, _ = loss_jit(params, CFG, _full(batch, mask=np.zeros((4, 16), np.float32)))
    assert float(loss_0) == 0.0


@pytest.mark.parametrize(
    "batch, msg",
    [
        ({"tokens": np.zeros((4,), np.int32)}, r"\[B, T\+1\]"),
        ({"tokens": np.zeros((4, 17), np.float32)}, "integers"),
        ({"tokens": np.zeros((4, 17), np.int32), "mask": np.ones((4, 5))}, "aligned with the targets"),
        ({"tokens": np.zeros((4, 17), np.int32), "prompt_lengths": np.ones((3,), np.int32)}, r"\[B\]"),
        ({"tokens": np.zeros((4, 17), np.int32), "ref_logp": np.ones((4, 17))}, "one per target"),
        ({"targets": np.zeros((4, 16), np.int32)}, r"needs the model inputs"),
        ({"inputs": np.zeros((4, 16), np.int32)}, r"needs batch\['targets'\]"),
        ({"tokens": np.zeros((1, 40), np.int32)}, "max_len"),
        ({"rewards": np.zeros(4)}, "needs batch\['tokens'\]"),
        (np.zeros((4, 17), np.int32), "mapping"),
    ],
)
def test_bad_batches_raise_clear_errors(batch, msg):
    with pytest.raises(ValueError, match=msg):
        check_batch(batch, CFG, require_tokens=True)


def test_check_batch_lets_extra_keys_and_per_token_masks_through():
    tok = np.zeros((4, 17), np.int32)
    extra = {"tokens": tok, "mask": np.ones((4, 17), bool), "weights": np.ones((4, 16)), "rewards": np.zeros(4),
             "prompt_lengths": np.full(4, 3, np.int32), "ref_logp": np.zeros((4, 16)), "anything": {"x": 1}}
    assert check_batch(extra, CFG) == (4, 16)
    assert check_batch({"inputs": tok[:, :-1], "targets": tok[:, 1:]}, CFG) == (4, 16)
    assert check_batch({"rewards": np.zeros(4)}, CFG) is None  # no tokens: fine unless the loss needs them


def test_default_loss_is_the_stats_based_loss_and_equals_naive_cross_entropy(params):
    assert next_token_loss is tokjax.losses.next_token_loss
    batch = _full(_batch(4))
    loss, m = loss_jit(params, CFG, batch)
    tok = batch["tokens"]
    logits = forward(params, CFG, Inputs(tokens=jnp.asarray(tok[:, :-1]))).logits.astype(jnp.float32)
    logp = jax.nn.log_softmax(logits, -1)  # the naive reference the cut cross-entropy must equal
    naive = -jnp.take_along_axis(logp, jnp.asarray(tok[:, 1:])[..., None], -1)[..., 0]
    assert float(loss) == pytest.approx(float(jnp.mean(naive)), rel=1e-5)
    s, c, k = sums_jit(params, CFG, batch)
    assert float(s) == pytest.approx(float(jnp.sum(naive)), rel=1e-5) and float(c) == 64
    hits = jnp.sum(jnp.argmax(logits, -1) == jnp.asarray(tok[:, 1:]))
    assert float(k) == float(hits)  # the accuracy numerator: argmax from the streamed head


def test_optimizer_schedule_and_clipping():
    sched = make_schedule(TrainConfig(lr=1.0, warmup_steps=10, total_steps=110, min_lr_ratio=0.1))
    assert float(sched(0)) == 0.0
    assert float(sched(10)) == pytest.approx(1.0)
    assert float(sched(110)) == pytest.approx(0.1)
    assert float(sched(5)) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="TrainConfig"):
        make_optimizer({"lr": 1.0})
    # clipping: a huge gradient moves params by at most ~lr per coordinate (Adam) and stays finite
    opt = make_optimizer(TrainConfig(lr=1e-3, warmup_steps=0, total_steps=10, grad_clip=1.0, weight_decay=0.0))
    p = {"w": jnp.ones((3, 3))}
    st = opt.init(p)
    upd, _ = jax.jit(opt.update)({"w": jnp.full((3, 3), 1e6)}, st, p)
    assert np.all(np.isfinite(upd["w"])) and float(jnp.max(jnp.abs(upd["w"]))) <= 1.1e-3


def test_weight_decay_skips_vectors():
    opt = make_optimizer(TrainConfig(lr=0.1, warmup_steps=0, total_steps=10, weight_decay=0.5, grad_clip=None))
    p = {"mat": jnp.ones((2, 2)), "vec": jnp.ones((2,))}
    upd, _ = jax.jit(opt.update)(jax.tree.map(jnp.zeros_like, p), jax.jit(opt.init)(p), p)
    assert float(jnp.abs(upd["vec"]).max()) == 0.0  # zero grad, no decay
    assert float(jnp.abs(upd["mat"]).max()) > 0.0  # zero grad, decayed


def test_bits_per_byte_computation():
    assert bits_per_token(math.log(2)) == pytest.approx(1.0)
    assert bits_per_byte(2 * math.log(2), 4.0) == pytest.approx(0.5)
    for bad in (0, -1.0, float("nan"), float("inf"), "x", None):
        with pytest.raises(ValueError, match="bytes_per_token"):
            bits_per_byte(1.0, bad)


def test_evaluate_is_a_token_weighted_mean_over_batches(params):
    b1, b2 = _batch(2), _batch(3, B=2)
    mask = np.ones((2, 16), np.float32)
    mask[:, 10:] = 0
    b2 = {**b2, "mask": mask}  # a different batch size and a mask: evaluate takes any mix
    s1, c1, _ = sums_jit(params, CFG, _full(b1))
    s2, c2, _ = sums_jit(params, CFG, _full(b2, mask=mask))
    ev = evaluate(params, CFG, [b1, b2], bytes_per_token=3.0)
    expect = (float(s1) + float(s2)) / (float(c1) + float(c2))
    assert ev["loss"] == pytest.approx(expect, rel=1e-6)
    assert ev["tokens"] == 64 + 20
    assert ev["bits_per_token"] == pytest.approx(expect / math.log(2), rel=1e-6)
    assert ev["bits_per_byte"] == pytest.approx(expect / math.log(2) / 3.0, rel=1e-6)
    # bare arrays are batches too; without bytes_per_token bits_per_byte is NaN
    ev2 = evaluate(params, CFG, [b1["tokens"]])
    assert math.isnan(ev2["bits_per_byte"])
    # an untrained model is close to uniform: loss ~ ln V
    assert abs(ev2["loss"] - math.log(CFG.vocab_size)) < 0.3
    with pytest.raises(ValueError, match="no batches"):
        evaluate(params, CFG, [])
    with pytest.raises(ValueError, match="bytes_per_token"):
        evaluate(params, CFG, [b1], bytes_per_token=0.0)


def test_unigram_loss():
    train = np.array([0, 0, 0, 1])
    # add-one counts over V=2: p0 = 4/6, p1 = 2/6
    assert unigram_loss(train, np.array([0, 1]), 2) == pytest.approx(-(math.log(4 / 6) + math.log(2 / 6)) / 2)
    with pytest.raises(ValueError):
        unigram_loss(train, np.array([], np.int64), 2)


def test_init_state_is_deterministic_and_validates():
    opt = make_optimizer(TC)
    a, b = init_state(CFG, opt, 7), init_state(CFG, opt, 7)
    assert all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))
    c = init_state(CFG, opt, jax.random.PRNGKey(7))
    assert np.array_equal(c.params["embed"], a.params["embed"])
    with pytest.raises(ValueError, match="ModelConfig"):
        init_state({"d_model": 3}, opt, 0)
