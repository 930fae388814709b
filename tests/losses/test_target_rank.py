"""token_stats' optional target rank (tokjax.losses._stats.target_rank): blockwise, equal to a naive count."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import tokjax
from tokjax.losses import token_stats


def test_target_rank_matches_naive_full_logits_count():
    from tokjax.losses._stats import target_rank

    h = jax.random.normal(jax.random.key(0), (7, 8))
    w = jax.random.normal(jax.random.key(1), (8, 45))
    b = jax.random.normal(jax.random.key(2), (45,))
    y = jnp.asarray([0, 3, 44, 10, 10, 7, 21])
    z = h @ w + b
    naive = jnp.sum(z > z[jnp.arange(7), y][:, None], axis=-1)
    np.testing.assert_array_equal(target_rank(h, w, y, bias=b, block_size=16), naive)
    np.testing.assert_array_equal(target_rank(h, w.T, y, layout="vd", bias=b, block_size=45), naive)
    top = jnp.argmax(z, -1)
    assert int(jnp.max(target_rank(h, w, top, bias=b, block_size=8))) == 0
    with pytest.raises(ValueError, match="layout"):
        target_rank(h, w, y, layout="x")


def test_token_stats_rank_equals_argsort_position_of_the_target():
    cfg = tokjax.ModelConfig(vocab_size=50, d_model=16, n_layers=1, n_heads=2, max_len=16)
    params = tokjax.model.init_params(cfg, jax.random.key(0))
    tokens = jax.random.randint(jax.random.key(1), (2, 9), 0, 50)
    plain = token_stats(params, cfg, {"tokens": tokens})
    stats = token_stats(params, cfg, {"tokens": tokens}, rank=True, block_size=16)
    assert plain.rank is None and stats.hidden is None
    logits = tokjax.forward(params, cfg, tokens[:, :-1]).logits
    target = jnp.take_along_axis(logits, tokens[:, 1:, None], -1)
    np.testing.assert_array_equal(stats.rank, jnp.sum(logits > target, -1))
    np.testing.assert_allclose(stats.logp, plain.logp, atol=1e-6)  # another head block size: summation order
