"""Frozen trunk / trainable tail (tokjax.model.trunk; issue 22's cached preference training).

The tail model reading the trunk's cached residual stream (``input_hidden``) must give the whole model's
log-probs and, trained through tokjax.train, the same trajectory as training the whole model's last layers."""

import jax
import numpy as np
import pytest

import tokjax
from tests.model._models import small_model
from tokjax.losses import token_stats
from tokjax.model.trunk import tail, trunk_states, with_tail

TOKENS = np.random.default_rng(0).integers(0, 61, (5, 12)).astype(np.int32)


@pytest.mark.parametrize("kw,k", [({}, 2), pytest.param(
    {"positions": "learned", "norm": "layer", "activation": "gelu", "bias": True}, 1, marks=pytest.mark.slow)])
def test_tail_on_trunk_states_equals_the_whole_model(kw, k):
    model = small_model(**kw)
    batch = {"tokens": TOKENS, "prompt_lengths": np.array([3, 4, 5, 2, 6]), "lengths": np.array([12, 9, 10, 12, 8])}
    whole = token_stats(model.params, model.cfg, batch)
    h = trunk_states(model, k, TOKENS[:, :-1], chunk=2)  # 5 rows: the last chunk is padded
    assert h.shape == (5, 11, model.cfg.d_model) and h.dtype == np.float32
    t = tail(model, k)
    assert t.cfg.n_layers == model.cfg.n_layers - k
    part = token_stats(t.params, t.cfg, {**batch, "input_hidden": h})
    np.testing.assert_array_equal(np.asarray(part.mask), np.asarray(whole.mask))
    np.testing.assert_allclose(np.asarray(part.logp), np.asarray(whole.logp), atol=2e-5)
    back = with_tail(model, t)
    for a, b in zip(jax.tree.leaves(back.params), jax.tree.leaves(model.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_training_the_tail_follows_training_the_last_layers():
    from tokjax.train import TrainConfig, train

    model = small_model()
    k = 2
    h = trunk_states(model, k, TOKENS[:, :-1])
    tc = TrainConfig(lr=3e-3, total_steps=3, warmup_steps=0, weight_decay=0.0, seed=0, log_every=1, eval_every=0,
                     checkpoint_every=0, trainable=("last:1",))
    rows = lambda s: np.arange(s % 2, s % 2 + 4)  # noqa: E731
    whole, h_whole = train(model.cfg, tc, lambda s: {"tokens": TOKENS[rows(s)]}, params=model.params, progress=False)
    t = tail(model, k)
    part, h_part = train(t.cfg, tc, lambda s: {"tokens": TOKENS[rows(s)], "input_hidden": h[rows(s)]},
                         params=t.params, progress=False)
    np.testing.assert_allclose([r["loss"] for r in h_part["train"]], [r["loss"] for r in h_whole["train"]], rtol=1e-5)
    merged = with_tail(model, part)
    for a, b in zip(jax.tree.leaves(merged.params), jax.tree.leaves(whole.params)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5)


def test_bad_inputs_say_what_is_expected():
    model = small_model()
    with pytest.raises(ValueError, match="0 < k < n_layers=3"):
        tail(model, 3)
    with pytest.raises(ValueError, match="0 < k < n_layers"):
        trunk_states(model, 0, TOKENS)
    with pytest.raises(ValueError, match="int \\[N, T\\]"):
        trunk_states(model, 1, TOKENS.astype(np.float32))
    with pytest.raises(ValueError, match="not a tail of this model"):
        with_tail(model, tail(small_model(d_model=16), 1))
    with pytest.raises(ValueError, match="tokjax Model"):
        tail(model.params, 1)
    with pytest.raises(ValueError, match=r"input_hidden'\] must be \[B, T, d_model\]"):
        token_stats(model.params, model.cfg, {"tokens": TOKENS, "input_hidden": np.zeros((5, 12, 32), np.float32)})
    assert isinstance(tail(model, 1), tokjax.Model)
