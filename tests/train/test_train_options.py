"""The train step's layer-loop options (scan_unroll, remat): same loss and gradients, validated, plumbed from
TrainConfig through train(), absent from the config dict unless chosen."""

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
    for kw in ({"scan_unroll": 0}, {"scan_unroll": False}, {"scan_unroll": 1.5}, {"remat": "dots_saveable"}):
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
