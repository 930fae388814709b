"""The train step's layer-loop options (scan_unroll, remat): same loss and gradients, validated, plumbed from
TrainConfig through train(), absent from the config dict unless chosen. The frozen prefix (layer_loop(frozen_prefix=k),
set by make_train_step from the trainable set): same loss, gradients and taps, no backward through the prefix."""

import functools
import sys

import jax
import numpy as np
import pytest

from tokjax.losses import next_token_loss
from tokjax.model import ModelConfig, forward, init_params
from tokjax.model.forward import REMAT_POLICIES, blocks, layer_loop
from tokjax.train import TrainConfig, init_state, make_optimizer, make_train_step

CFG = ModelConfig(vocab_size=64, d_model=32, n_layers=3, n_heads=2, n_kv_heads=1, max_len=32)
TC = TrainConfig(lr=1e-2, warmup_steps=0, total_steps=10, batch_size=2, seq_len=12)
TOKENS = np.random.default_rng(0).integers(0, CFG.vocab_size, (2, 13)).astype(np.int32)
# (scan_unroll, remat): the reference first; 2 does not divide 3 layers (a remainder iteration)
OPTIONS = [(1, "none"), (True, "none"), (2, "dots"), (1, "full"), (3, "dots_no_batch")]


@pytest.fixture(scope="module")
def params():
    return jax.jit(init_params, static_argnums=0)(CFG, jax.random.key(0))


def _loss_and_grad(params, unroll, remat, via_context):
    def loss(p):
        if via_context:
            with layer_loop(scan_unroll=unroll, remat=remat):
                return next_token_loss(p, CFG, {"tokens": TOKENS})[0]
        h = forward(p, CFG, TOKENS[:, :-1], scan_unroll=unroll, remat=remat).logits
        return -jax.numpy.mean(jax.nn.log_softmax(h)[..., 0])

    return jax.jit(jax.value_and_grad(loss))(params)


def _check_same(params, options, via_context):
    ref_loss, ref_grad = _loss_and_grad(params, *OPTIONS[0], via_context)
    for unroll, remat in options:
        loss, grad = _loss_and_grad(params, unroll, remat, via_context)
        np.testing.assert_allclose(loss, ref_loss, rtol=1e-6, atol=1e-6, err_msg=f"{unroll}, {remat}")
        for a, b in zip(jax.tree.leaves(grad), jax.tree.leaves(ref_grad)):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6, err_msg=f"{unroll}, {remat}")


def test_an_unrolled_checkpointed_loop_gives_the_same_loss_and_gradients(params):
    _check_same(params, [(2, "dots")], via_context=True)


@pytest.mark.slow
@pytest.mark.parametrize("via_context", [True, False], ids=["layer_loop", "forward_kw"])
def test_every_option_gives_the_same_loss_and_gradients(params, via_context):
    _check_same(params, OPTIONS[1:], via_context)


def test_options_change_the_traced_program(params):
    # The options must reach the scan: a checkpointed layer shows a remat / checkpoint in the jaxpr, an unrolled
    # scan has a different jaxpr from the rolled one.
    x = jax.numpy.zeros((1, 4, CFG.d_model))
    pos = jax.numpy.arange(4)[None]

    def jaxpr(**kw):
        return str(jax.make_jaxpr(lambda p: blocks(p, CFG, x, pos, **kw)[0])(params))

    base = jaxpr()
    assert "checkpoint" in jaxpr(remat="full") or "remat" in jaxpr(remat="full")
    assert "checkpoint" not in base and "remat" not in base
    assert jaxpr(scan_unroll=True) != base
    # "auto" (the train step's default): unrolled over a short stack, one layer per iteration over a deep one
    fwd_mod = sys.modules["tokjax.model.forward"]  # the module, not the function tokjax.model.forward

    assert jaxpr(scan_unroll="auto") == jaxpr(scan_unroll=True)
    deep = fwd_mod.AUTO_UNROLL_MAX_LAYERS
    try:
        fwd_mod.AUTO_UNROLL_MAX_LAYERS = CFG.n_layers - 1
        assert jaxpr(scan_unroll="auto") == base
    finally:
        fwd_mod.AUTO_UNROLL_MAX_LAYERS = deep
    with layer_loop(remat="dots"):
        assert jaxpr() == jaxpr(remat="dots") != base
    assert jaxpr() == base  # the context is gone


@pytest.mark.slow
def test_train_step_options_match_the_default_step():
    opt = make_optimizer(TC)
    batch = {"tokens": TOKENS}
    ref, m_ref = make_train_step(CFG, opt, donate=False)(init_state(CFG, opt, 0), batch)
    new, m_new = make_train_step(CFG, opt, donate=False, scan_unroll=True, remat="dots")(init_state(CFG, opt, 0), batch)
    np.testing.assert_allclose(m_new["loss"], m_ref["loss"], rtol=1e-6)
    for a, b in zip(jax.tree.leaves(new.params), jax.tree.leaves(ref.params)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_train_config_fields_reach_the_step_and_stay_out_of_the_dict(monkeypatch):
    # train() builds its step in _run_fns (jit is lazy: nothing compiles here)
    assert "scan_unroll" not in TC.to_dict() and "remat" not in TC.to_dict()
    tc = TC.replace(scan_unroll=2, remat="full", total_steps=1)
    assert tc.to_dict()["scan_unroll"] == 2 and tc.to_dict()["remat"] == "full"
    seen = {}
    import tokjax.train._loop as loop_mod

    real = loop_mod.make_train_step

    def spy(*a, **kw):
        seen.update(kw)
        return real(*a, **kw)

    monkeypatch.setattr(loop_mod, "make_train_step", spy)
    loop_mod._run_fns(CFG, tc, next_token_loss)
    assert seen["scan_unroll"] == 2 and seen["remat"] == "full"
    loop_mod._run_fns(CFG, TC, next_token_loss)
    assert seen["scan_unroll"] is None and seen["remat"] is None  # the step's defaults


def test_bad_options_raise_clear_errors(params):
    x, pos = jax.numpy.zeros((1, 4, CFG.d_model)), jax.numpy.arange(4)[None]
    for kw in ({"scan_unroll": 0}, {"scan_unroll": False}, {"scan_unroll": 1.5}, {"scan_unroll": "always"},
               {"remat": "dots_saveable"}):
        with pytest.raises(ValueError, match="scan_unroll|remat"):
            blocks(params, CFG, x, pos, **kw)
    with pytest.raises(ValueError, match="remat"):
        with layer_loop(remat="everything"):
            pass
    with pytest.raises(ValueError, match="remat must be one of"):
        make_train_step(CFG, make_optimizer(TC), remat="bogus")
    with pytest.raises(ValueError, match="scan_unroll"):
        TC.replace(scan_unroll=0)
    with pytest.raises(ValueError, match="remat"):
        TC.replace(remat="bogus")
    assert set(REMAT_POLICIES) == {"none", "full", "dots", "dots_no_batch"}


# ------------------------------------------------------------------------------------------ frozen prefix
# Issue 21/22: with trainable "last:N" the first L - N stacked layers (and the embeddings) are frozen; the step runs
# them as a scan of their own over stop_gradient weights, so the backward never enters them.
DEEP = ModelConfig(vocab_size=64, d_model=16, n_layers=5, n_heads=2, n_kv_heads=1, max_len=32)
DEEP_TOKENS = np.random.default_rng(1).integers(0, DEEP.vocab_size, (2, 9)).astype(np.int32)


@pytest.fixture(scope="module")
def deep():
    return jax.jit(init_params, static_argnums=0)(DEEP, jax.random.key(1))


def _masked_grad(params, trainable, *, split, loss=None, hooks=None):
    """value_and_grad of a next-token loss as the train step differentiates it (frozen leaves under
    stop_gradient), with the frozen prefix split (``split``) or one scan."""
    import contextlib

    from tokjax.train._step import _select, frozen_prefix, trainable_mask

    mask = trainable_mask(params, trainable)
    k = frozen_prefix(params, mask)
    loss = loss or _logits_loss

    def f(p):
        p = jax.tree.map(lambda q, t: _select(t, q, jax.lax.stop_gradient(q)), p, mask)
        ctx = layer_loop(frozen_prefix=k, frozen_layers=p["layers"]) if split else contextlib.nullcontext()
        with ctx:
            return loss(p)

    return k, f


def _logits_loss(p, taps=False):
    from tokjax.model import Taps

    out = forward(p, DEEP, DEEP_TOKENS[:, :-1], taps=Taps(layers="all", sites=("resid_post",)) if taps else None)
    loss = -jax.numpy.mean(jax.numpy.take_along_axis(jax.nn.log_softmax(out.logits), DEEP_TOKENS[:, 1:, None], -1))
    return (loss, out.taps["resid_post"]) if taps else loss


def _scan_lengths(fn, *args):
    """Returns the ``length`` of every top-level scan of fn's jaxpr over the layers (forward and backward scans
    alike; the length-1 scans of cut cross-entropy's vocabulary loop left out)."""
    eqns = jax.make_jaxpr(fn)(*args).jaxpr.eqns
    return sorted(e.params["length"] for e in eqns if e.primitive.name == "scan" and e.params["length"] > 1)


def test_frozen_prefix_is_read_from_the_trainable_set(deep):
    from tokjax.model.lora import init_lora
    from tokjax.train._step import frozen_prefix, trainable_mask

    L = DEEP.n_layers
    k = lambda p, t: frozen_prefix(p, trainable_mask(p, t))  # noqa: E731
    assert k(deep, ("last:2",)) == L - 2 and k(deep, ("last:5",)) == 0
    assert k(deep, None) == 0 and k(deep, ("layers/wq",)) == 0  # one leaf trains in every layer
    assert k(deep, ("final_norm",)) == L  # no stacked layer trains
    # Leaves outside the layers (embeddings, an adapter) do not shorten it: only the layers' own weights are
    # stopped, so their gradient still flows through the prefix (checked below).
    assert k(deep, ("embed", "last:1")) == L - 1
    with_lora = {**deep, "lora": init_lora(DEEP, jax.random.key(2), rank=2)}
    assert k(with_lora, ("lora",)) == L
    assert frozen_prefix({"w": np.zeros(3)}, {"w": True}) == 0  # no stacked layers


@pytest.mark.slow
def test_split_prefix_gives_the_same_loss_gradients_and_taps_bit_for_bit_and_skips_its_backward(deep):
    loss = functools.partial(_logits_loss, taps=True)
    k, unsplit = _masked_grad(deep, ("last:2",), split=False, loss=loss)
    _, split = _masked_grad(deep, ("last:2",), split=True, loss=loss)
    grad = lambda f: jax.value_and_grad(f, has_aux=True)  # noqa: E731
    ((l0, t0), g0), ((l1, t1), g1) = jax.jit(grad(unsplit))(deep), jax.jit(grad(split))(deep)
    assert k == 3 and np.asarray(l1) == np.asarray(l0)
    assert t1.shape[0] == DEEP.n_layers  # taps still see every layer, same values
    np.testing.assert_array_equal(t1, t0)
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(g1), jax.tree.leaves(g0)):
        np.testing.assert_array_equal(a, b, err_msg=jax.tree_util.keystr(path))
    assert np.all(np.asarray(g1["layers"]["wq"])[:k] == 0) and np.any(np.asarray(g1["layers"]["wq"])[k:] != 0)
    # (Bit for bit at this size; at longer rows, e.g. T = 220, XLA can round the prefix's gradient-free forward 1 ulp
    # differently from the linearised one: logp within 1e-6, as benchmarks/rl_step.py --tiny shows.)
    # The program: unsplit, a forward and a backward scan over all 5 layers; split, the prefix's forward only
    # (no backward scan of length k) and the suffix's forward and backward.
    assert _scan_lengths(grad(unsplit), deep) == [5, 5]
    assert _scan_lengths(grad(split), deep) == [2, 2, 3]


@pytest.mark.slow
def test_upstream_and_adapter_gradients_still_flow_through_the_prefix(deep):
    # A trainable embedding (upstream of the prefix) and LoRA adapters on the frozen layers: same gradients as the
    # unsplit step (the prefix's backward now runs, w.r.t. the residual / the adapters only).
    from tokjax.model.lora import init_lora, lora_forward

    lora = init_lora(DEEP, jax.random.key(3), rank=2)
    lora = {**lora, "layers": jax.tree.map(lambda a: a + 0.01, lora["layers"])}  # B != 0: adapters matter
    params = {**deep, "lora": lora}
    x, y = DEEP_TOKENS[:, :-1], DEEP_TOKENS[:, 1:]

    def loss(p):
        logits = lora_forward({k: v for k, v in p.items() if k != "lora"}, DEEP, p["lora"], x,
                              np.ones(x.shape, bool)).logits
        return -jax.numpy.mean(jax.numpy.take_along_axis(jax.nn.log_softmax(logits), y[..., None], -1))

    for trainable in (("embed", "last:1"), ("lora",)):
        k, unsplit = _masked_grad(params, trainable, split=False, loss=loss)
        _, split = _masked_grad(params, trainable, split=True, loss=loss)
        assert k >= 4
        (l0, g0), (l1, g1) = jax.jit(jax.value_and_grad(unsplit))(params), jax.jit(jax.value_and_grad(split))(params)
        np.testing.assert_array_equal(l1, l0)
        for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(g1), jax.tree.leaves(g0)):
            np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7, err_msg=f"{trainable} {jax.tree_util.keystr(path)}")
        trained = g1["embed"] if trainable[0] == "embed" else g1["lora"]["layers"]["wq"]["a"][0]
        assert np.any(np.asarray(trained) != 0), trainable


@pytest.mark.slow
def test_a_hook_in_the_frozen_prefix_keeps_its_gradient(deep):
    steer = jax.numpy.full((DEEP.d_model,), 0.1)

    def run(p, v, split):
        def hook(x, layer):  # a trainable steering vector added at layer 1, inside the frozen prefix
            return x + jax.numpy.where(layer == 1, 1.0, 0.0) * v

        ctx = layer_loop(frozen_prefix=3, frozen_layers=p["layers"]) if split else layer_loop()
        with ctx:
            return forward(p, DEEP, DEEP_TOKENS, hooks={"layer.*.resid_post": hook}).logits.std()

    fn = lambda split: jax.jit(jax.value_and_grad(lambda p, v: run(p, v, split), argnums=1))  # noqa: E731
    (l0, g0), (l1, g1) = fn(False)(deep, steer), fn(True)(deep, steer)
    np.testing.assert_array_equal(l1, l0)
    np.testing.assert_allclose(g1, g0, rtol=1e-6)
    assert np.any(np.asarray(g1) != 0)  # the hook's own gradient flows through the frozen prefix


def test_frozen_prefix_only_applies_to_the_declared_weights(deep):
    # Another model's weights (a teacher, a rebuilt copy) traced in the same block keep their gradient: one scan
    # forward and one backward over all 5 layers. The declared weights (or frozen_layers=None: every forward) are
    # split at layer 2; the embeddings train here, so the prefix still runs backward (w.r.t. the residual only).
    other = jax.tree.map(lambda a: a + 0, deep["layers"])
    grad = lambda only: jax.grad(lambda p: _run_under(p, only))  # noqa: E731
    assert _scan_lengths(grad(other), deep) == [5, 5]
    assert _scan_lengths(grad(None), deep) == [2, 2, 3, 3]
    assert _scan_lengths(jax.grad(lambda p: _run_under(p, p["layers"])), deep) == [2, 2, 3, 3]
    with pytest.raises(ValueError, match="frozen_prefix must be an int >= 0"):
        with layer_loop(frozen_prefix=-1):
            pass
    for bad in (1.5, True):
        with pytest.raises(ValueError, match="frozen_prefix"):
            with layer_loop(frozen_prefix=bad):
                pass
    with pytest.raises(ValueError, match="pass frozen_prefix too"):
        with layer_loop(frozen_layers=deep["layers"]):
            pass


def _run_under(p, only):
    with layer_loop(frozen_prefix=2, frozen_layers=only):
        return forward(p, DEEP, DEEP_TOKENS).logits.sum()


@pytest.mark.slow
def test_split_train_step_matches_the_one_scan_step_and_keeps_frozen_leaves(deep):
    tc = TC.replace(trainable=("last:2",))
    opt = make_optimizer(tc)
    batch = {"tokens": DEEP_TOKENS}
    s0 = init_state(DEEP, opt, 0, params=deep)
    ref, split = (make_train_step(DEEP, opt, donate=False, trainable=tc.trainable, split_frozen=f) for f in (False, True))
    a, ma = ref(s0, batch)
    b, mb = split(s0, batch)
    for key in ("loss", "grad_norm"):
        np.testing.assert_array_equal(mb[key], ma[key])
    for (path, x), y, x0 in zip(jax.tree_util.tree_leaves_with_path(b.params), jax.tree.leaves(a.params),
                                jax.tree.leaves(deep)):
        np.testing.assert_array_equal(x, y, err_msg=jax.tree_util.keystr(path))
    np.testing.assert_array_equal(b.params["layers"]["w_up"][:3], deep["layers"]["w_up"][:3])
    np.testing.assert_array_equal(b.params["embed"], deep["embed"])
    assert not np.array_equal(b.params["layers"]["w_up"][3:], deep["layers"]["w_up"][3:])


@pytest.mark.slow
def test_resume_with_a_frozen_prefix_is_bitwise_identical(tmp_path):
    from tokjax.train import train

    tc = TC.replace(trainable=("last:1",), total_steps=4, checkpoint_every=2, seq_len=8, batch_size=2, log_every=2)
    data = np.random.default_rng(0).integers(0, CFG.vocab_size, (8, 9)).astype(np.int32)
    straight, _ = train(CFG, tc, {"train": data}, progress=False)

    class Killed(Exception):
        pass

    def kill(step, state, metrics):
        if step == 3:
            raise Killed

    with pytest.raises(Killed):
        train(CFG, tc, {"train": data}, workdir=tmp_path, progress=False, callback=kill)
    resumed, _ = train(CFG, tc, {"train": data}, workdir=tmp_path, progress=False)
    for x, y in zip(jax.tree.leaves(resumed.params), jax.tree.leaves(straight.params)):
        np.testing.assert_array_equal(x, y)
