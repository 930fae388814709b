"""token_stats reads batch['positions'] (per token of a ``tokens`` batch, or per input position) into the forward."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import tokjax
from tokjax.losses import token_stats
from tokjax.model.forward import Inputs


def test_positions_reach_the_forward_for_1d_and_2d_models():
    cfg = tokjax.ModelConfig(vocab_size=30, d_model=16, n_layers=1, n_heads=2, max_len=32, init_scale=0.3)
    params = tokjax.model.init_params(cfg, jax.random.key(0))
    tokens = jax.random.randint(jax.random.key(1), (2, 7), 0, 30)
    plain = token_stats(params, cfg, {"tokens": tokens})
    same = token_stats(params, cfg, {"tokens": tokens, "positions": jnp.broadcast_to(jnp.arange(7), (2, 7))})
    np.testing.assert_allclose(same.logp, plain.logp, atol=1e-6)
    moved = token_stats(params, cfg, {"tokens": tokens, "positions": jnp.broadcast_to(3 * jnp.arange(7), (2, 7))})
    assert np.abs(np.asarray(moved.logp - plain.logp)).max() > 1e-4  # the positions were used

    cfg2 = cfg.replace(pos_dims=2)
    p2 = tokjax.model.init_params(cfg2, jax.random.key(0))
    pos = jnp.stack([jnp.arange(7) // 3, jnp.arange(7) % 3], -1)[None].repeat(2, 0)  # [2, 7, 2]
    stats = token_stats(p2, cfg2, {"tokens": tokens, "positions": pos})
    logits = tokjax.forward(p2, cfg2, Inputs(tokens=tokens[:, :-1], positions=pos[:, :-1])).logits
    want = jnp.take_along_axis(jax.nn.log_softmax(logits, -1), tokens[:, 1:, None], -1)[..., 0]
    np.testing.assert_allclose(stats.logp, want, atol=1e-5)
    per_input = token_stats(p2, cfg2, {"inputs": tokens[:, :-1], "targets": tokens[:, 1:], "positions": pos[:, :-1]})
    np.testing.assert_allclose(per_input.logp, stats.logp, atol=1e-6)
    with pytest.raises(ValueError, match="batch\\['positions'\\]"):
        token_stats(p2, cfg2, {"tokens": tokens, "positions": pos[:, :-1]})
    with pytest.raises(ValueError, match="needs Inputs.positions"):
        token_stats(p2, cfg2, {"tokens": tokens})
