"""Tests of P40 concept-aware fine-tuning (tokjax.losses.caft)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from tokjax.losses import caft as C
from tokjax.losses._next_token import next_token_loss
from tokjax.losses.registry import make_loss
from tokjax.model import ModelConfig, init_params
from tokjax.model.forward import head_matrix

V = 16
CFG = ModelConfig(vocab_size=V, d_model=32, n_layers=3, n_heads=2, max_len=64, init_scale=0.3)
CFG1 = ModelConfig(vocab_size=V, d_model=32, n_layers=1, n_heads=2, max_len=64, init_scale=0.3)
K = 3


def _params(seed=0, k=K, init="copy"):
    p = init_params(CFG, jax.random.PRNGKey(seed))
    return C.init_caft_heads(p, CFG, jax.random.PRNGKey(seed + 1), k, init=init)


def _tokens(seed=0, rows=2, length=9):
    return jnp.asarray(np.random.default_rng(seed).integers(0, V, (rows, length)), jnp.int32)


def _chain(rng, rows, length, perm):
    """Returns int32 [rows, length] with x_{t+1} = perm[x_t], so x_{t+j} = f^j(x_t)."""
    x = np.zeros((rows, length), np.int32)
    x[:, 0] = rng.integers(0, V, rows)
    for t in range(1, length):
        x[:, t] = perm[x[:, t - 1]]
    return x


@jax.jit
def _head_out(p, toks):
    _, h_in = C.caft_trunk(p, CFG, toks)
    return C.caft_head_hidden(p, CFG, h_in)


def _strip(tree):
    return {k: v for k, v in tree.items() if k != C.CAFT_KEY}


# ------------------------------------------------------------------------------------ equivalence
@pytest.mark.slow  # default-suite time; the file's other tests keep the method covered in the default suite
def test_alpha_zero_equals_next_token_loss_exactly():
    """alpha=0: the CAFT loss and its gradients are bit-for-bit next_token_loss's (eager; jitted within 1e-6),
    with a prompt mask and a per-target mask."""
    p = _params()
    batch = {"tokens": _tokens(), "step": jnp.int32(2), "prompt_lengths": jnp.array([2, 4]),
             "mask": jnp.array([[True] * 7 + [False], [False] + [True] * 7])}
    ref_batch = {k: v for k, v in batch.items() if k != "step"}
    fn = lambda q: C.caft_loss(q, CFG, batch, alpha=0.0, total_steps=10)[0]  # noqa: E731
    ref = lambda q: next_token_loss(q, CFG, ref_batch)[0]  # noqa: E731
    v1, g1 = jax.value_and_grad(fn)(p)
    v2, g2 = jax.value_and_grad(ref)(p)
    assert float(v1) == float(v2)
    for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert all(float(jnp.max(jnp.abs(x))) == 0.0 for x in jax.tree.leaves(g1[C.CAFT_KEY]))
    np.testing.assert_allclose(float(jax.jit(fn)(p)), float(v2), rtol=1e-6)


def test_loss_is_ce0_plus_alpha_schedule_decayed_heads():
    """L = CE_0 + alpha * rsine(step) * sum_k gamma^k CE_k, CE_k read off the head logits by hand."""
    p = _params()
    toks = _tokens(3, rows=2, length=10)
    step, S, alpha, gamma = 3, 8, 0.5, 0.7
    loss, m = jax.jit(lambda q, b: C.caft_loss(q, CFG, b, alpha=alpha, gamma=gamma, total_steps=S))(
        p, {"tokens": toks, "step": jnp.int32(step)})
    hk = _head_out(p, toks[:, :-1])
    w, _ = head_matrix(p, CFG)
    logp = np.asarray(jax.nn.log_softmax(jnp.einsum("kbtd,vd->kbtv", hk, w), -1))
    T = toks.shape[1] - 1
    y = np.asarray(toks)
    ce = [-np.mean([logp[k - 1, b, t, y[b, t + 1 + k]] for b in range(2) for t in range(T - k)])
          for k in range(1, K + 1)]
    np.testing.assert_allclose([float(m[f"ce_{k}"]) for k in range(1, K + 1)], ce, rtol=1e-5)
    s = math.sin((S - step) / S * math.pi / 2)
    want = float(m["nll"]) + alpha * s * sum(gamma ** k * c for k, c in zip(range(1, K + 1), ce))
    np.testing.assert_allclose(float(loss), want, rtol=1e-5)
    np.testing.assert_allclose(float(m["sched"]), s, rtol=1e-6)


def test_schedules_and_weights():
    """The official schedules at their end points, and gamma^k for k = 1..K."""
    S = 10
    assert float(C.caft_schedule(0, S, "rsine")) == pytest.approx(1.0)
    assert float(C.caft_schedule(S, S, "rsine")) == pytest.approx(0.0, abs=1e-7)
    assert float(C.caft_schedule(5, S, "rsine")) == pytest.approx(math.sin(math.pi / 4))
    assert float(C.caft_schedule(99, S, "rsine")) == pytest.approx(0.0, abs=1e-7)  # clipped past S
    assert float(C.caft_schedule(0, S, "sine")) == 0.0 and float(C.caft_schedule(S, S, "sine")) == pytest.approx(1.0)
    assert float(C.caft_schedule(4, S, "linear")) == pytest.approx(0.4)
    assert float(C.caft_schedule(7, None, "constant")) == 1.0
    np.testing.assert_allclose(np.asarray(C.caft_weights(4, 0.8)), [0.8, 0.64, 0.512, 0.4096], rtol=1e-6)


def test_step_from_batch_does_not_recompile():
    """batch['step'] and batch['hparams'] are runtime arrays: one compiled step serves every value."""
    p = _params()
    fn = make_loss("caft", total_steps=4)
    traces = []

    @jax.jit
    def f(p, b):
        traces.append(1)
        return fn(p, CFG, b, None)[1]

    toks = _tokens()
    scheds = [float(f(p, {"tokens": toks, "step": jnp.int32(s), "hparams": {"alpha": jnp.float32(0.01)}})["sched"])
              for s in range(5)]
    assert len(traces) == 1
    np.testing.assert_allclose(scheds, [math.sin((4 - s) / 4 * math.pi / 2) for s in range(5)], atol=1e-6)
    m0 = f(p, {"tokens": toks, "step": jnp.int32(1), "hparams": {"alpha": jnp.float32(0.0)}})
    assert float(m0["loss"]) == float(m0["nll"]) and len(traces) == 1


# -------------------------------------------------------------------------------------- alignment
@pytest.mark.slow
def test_head_k_learns_x_t_plus_1_plus_k_and_off_by_one_fails():
    """On x_{t+j} = f^j(x_t), trained heads reach ~0 CE on x_{t+1+k}; read against x_{t+k} or x_{t+2+k} they fail."""
    perm = np.random.default_rng(0).permutation(V)
    while np.any(perm == np.arange(V)) or np.any(perm[perm] == np.arange(V)):  # no fixed points of f or f^2
        perm = np.random.default_rng(int(perm[0]) + 7).permutation(V)
    data = _chain(np.random.default_rng(1), 32, 12, perm)
    cfg = CFG1
    p = C.init_caft_heads(init_params(cfg, jax.random.PRNGKey(0)), cfg, jax.random.PRNGKey(1), K, init="random")
    loss_fn = C.make_caft_loss(alpha=1.0, gamma=1.0, schedule="constant")
    opt = optax.adam(2e-2)

    @jax.jit
    def step(p, s, toks):
        (loss, m), g = jax.value_and_grad(lambda q: loss_fn(q, cfg, {"tokens": toks}), has_aux=True)(p)
        u, s = opt.update(g, s, p)
        return optax.apply_updates(p, u), s, m

    s = opt.init(p)
    for _ in range(150):
        p, s, m = step(p, s, jnp.asarray(data))
    test = _chain(np.random.default_rng(2), 8, 12, perm)
    w, _ = head_matrix(p, cfg)
    _, h_in = C.caft_trunk(p, cfg, jnp.asarray(test[:, :-1]))
    logp = np.asarray(jax.nn.log_softmax(jnp.einsum("kbtd,vd->kbtv", C.caft_head_hidden(p, cfg, h_in), w), -1))
    T = test.shape[1] - 1
    for k in range(1, K + 1):
        def ce(shift):
            n = T - shift
            tgt = test[:, shift:shift + n]
            return -np.mean(np.take_along_axis(logp[k - 1, :, :n], tgt[..., None], -1))
        assert ce(1 + k) < 0.05, (k, ce(1 + k))
        assert ce(k) > 2.0 and ce(2 + k) > 2.0, (k, ce(k), ce(2 + k))


@pytest.mark.parametrize("head_input", C.HEAD_INPUTS)
def test_heads_are_causal(head_input):
    """Changing x_{>t} leaves every head's output (and the trunk's) at positions <= t unchanged."""
    p = _params(init="random")
    rng = np.random.default_rng(5)
    a = _tokens(4, rows=2, length=12)[:, :-1]

    @jax.jit
    def out(toks):
        _, h_in = C.caft_trunk(p, CFG, toks, head_input=head_input)
        return C.caft_head_hidden(p, CFG, h_in, head_norm=True)

    for t in (0, 4, 9):
        b = np.asarray(a).copy()
        b[:, t + 1:] = rng.integers(0, V, b[:, t + 1:].shape)
        outs = [np.asarray(out(toks)) for toks in (a, jnp.asarray(b))]
        np.testing.assert_allclose(outs[0][:, :, :t + 1], outs[1][:, :, :t + 1], atol=1e-6)
        assert np.abs(outs[0][:, :, t + 1:] - outs[1][:, :, t + 1:]).max() > 1e-4  # the future does change later ones


# ------------------------------------------------------------------------------- frozen/pretrain
@pytest.mark.slow  # a CPU-budget option; the loss tests stay in the default suite
def test_frozen_layers_same_value_no_bottom_gradient_and_precomputed_hidden():
    """frozen_layers=k keeps the loss, zeroes the bottom layers' gradients; frozen_hidden gives the same loss."""
    p = _params()
    toks = _tokens(6)
    batch = {"tokens": toks, "step": jnp.int32(1)}
    f = jax.jit(lambda q, b, k: C.caft_loss(q, CFG, b, total_steps=5, frozen_layers=k)[0], static_argnums=2)
    v0 = f(p, batch, 0)
    v2, g2 = jax.value_and_grad(f)(p, batch, 2)
    np.testing.assert_allclose(float(v2), float(v0), rtol=1e-6)
    assert float(jnp.max(jnp.abs(g2["layers"]["wq"][:2]))) == 0.0
    assert float(jnp.max(jnp.abs(g2["layers"]["wq"][2]))) > 0.0
    from tokjax.model import Inputs, forward

    hid = forward(p, CFG, Inputs(tokens=toks[:, :-1]), layers=(0, 2), compute_logits=False).hidden
    v3 = f(p, {**batch, "frozen_hidden": hid}, 2)
    np.testing.assert_allclose(float(v3), float(v0), rtol=1e-6)


def test_pretrain_heads_trains_heads_only():
    """caft_pretrain_heads = sum_k gamma^k CE_k (no CE_0) and only params['caft'] gets gradient."""
    p = _params()
    batch = {"tokens": _tokens(7)}
    (loss, m), g = jax.jit(jax.value_and_grad(lambda q: C.caft_pretrain_heads(q, CFG, batch, gamma=0.8),
                                              has_aux=True))(p)
    want = sum(0.8 ** k * float(m[f"ce_{k}"]) for k in range(1, K + 1))
    np.testing.assert_allclose(float(loss), want, rtol=1e-5)
    assert all(float(jnp.max(jnp.abs(x))) == 0.0 for x in jax.tree.leaves(_strip(g)))
    assert any(float(jnp.max(jnp.abs(x))) > 0.0 for x in jax.tree.leaves(g[C.CAFT_KEY]))
    fn = make_loss("caft_pretrain_heads")
    np.testing.assert_allclose(float(jax.jit(lambda q: fn(q, CFG, batch, None)[0])(p)), float(loss), rtol=1e-6)


def test_init_copies_layer_l_minus_2():
    p = _params(k=4)
    for name, a in p[C.CAFT_KEY]["layers"].items():
        if isinstance(a, dict):
            continue
        for k in range(4):
            np.testing.assert_array_equal(np.asarray(a[k]), np.asarray(p["layers"][name][CFG.n_layers - 2]))


# ---------------------------------------------------------------------------------------- bad input
def test_bad_inputs():
    p0 = init_params(CFG, jax.random.PRNGKey(0))
    p = _params()
    toks = _tokens()
    b = {"tokens": toks, "step": jnp.int32(0)}
    with pytest.raises(ValueError, match="num_heads"):
        C.init_caft_heads(p0, CFG, jax.random.PRNGKey(0), 0)
    with pytest.raises(ValueError, match="init"):
        C.init_caft_heads(p0, CFG, jax.random.PRNGKey(0), 2, init="zeros")
    for g in (0.0, 1.5, -0.2):
        with pytest.raises(ValueError, match="gamma"):
            C.caft_loss(p, CFG, b, gamma=g, total_steps=4)
        with pytest.raises(ValueError, match="gamma"):
            make_loss("caft", gamma=g, total_steps=4)
    with pytest.raises(ValueError, match="alpha"):
        C.make_caft_loss(alpha=-1.0, total_steps=4)
    with pytest.raises(ValueError, match="batch\\['step'\\]"):
        C.caft_loss(p, CFG, {"tokens": toks}, total_steps=4)
    with pytest.raises(ValueError, match="total_steps"):
        C.make_caft_loss()
    with pytest.raises(ValueError, match="schedule"):
        C.make_caft_loss(schedule="cosine", total_steps=4)
    with pytest.raises(ValueError, match="head_input"):
        C.make_caft_loss(head_input="layer-2", total_steps=4)
    with pytest.raises(ValueError, match="frozen_layers"):
        C.caft_loss(p, CFG, b, total_steps=4, frozen_layers=3)
    with pytest.raises(ValueError, match="init_caft_heads"):
        C.caft_loss(p0, CFG, b, total_steps=4)
    with pytest.raises(ValueError, match="tokens"):
        C.caft_loss(p, CFG, {"tokens": toks[:, :1], "step": jnp.int32(0)}, total_steps=4)
    with pytest.raises(ValueError, match="mask"):
        C.caft_loss(p, CFG, {**b, "mask": jnp.ones((2, 3), bool)}, total_steps=4)
    with pytest.raises(ValueError, match="frozen_hidden"):
        C.caft_loss(p, CFG, {**b, "frozen_hidden": jnp.zeros((2, 8, 5))}, total_steps=4, frozen_layers=1)
    loss, _ = jax.jit(lambda q, bb: C.caft_loss(q, CFG, bb, total_steps=4))(p, {**b, "mask": jnp.zeros((2, 8), bool)})
    assert float(loss) == 0.0  # an empty mask gives 0, not NaN
