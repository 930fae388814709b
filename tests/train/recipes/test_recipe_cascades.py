"""tokjax.train.recipes.cascades: fitting P42's post-hoc deferral MLP through tokjax.train."""

import jax
import numpy as np
import pytest

from tokjax.decoding.cascades import deferral_batch, deferral_mlp_loss, posthoc_score
from tokjax.train.recipes.cascades import train_deferral_mlp


def test_posthoc_mlp_learns_a_separable_rule():
    r = np.random.default_rng(7)
    x = r.normal(size=(200, 3)).astype(np.float32)
    y = (x[:, 0] + 0.5 * x[:, 2] > 0).astype(np.float32)
    first = train_deferral_mlp(x, y, key=jax.random.key(0), steps=1)
    mlp = train_deferral_mlp(x, y, key=jax.random.key(0), steps=300)
    s = np.asarray(posthoc_score(mlp, x))
    assert ((s < 0) == (y == 1)).mean() > 0.9  # low confidence where the large model wins
    batch = deferral_batch(x, y)

    def loss(m):
        return float(deferral_mlp_loss({"w1": m.w1, "b1": m.b1, "w2": m.w2, "b2": m.b2}, None, batch)[0])

    assert loss(mlp) < 0.5 * loss(first)
    np.testing.assert_allclose(mlp.mean, x.mean(0), rtol=1e-5)  # the standardisation is fixed, not trained
    np.testing.assert_allclose(mlp.std, x.std(0) + 1e-6, rtol=1e-5)


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="targets"):
        train_deferral_mlp(np.zeros((3, 2)), np.array([0.0, 2.0, 1.0]), key=jax.random.key(0))
    with pytest.raises(ValueError, match="steps"):
        train_deferral_mlp(np.zeros((3, 2)), np.zeros(3), key=jax.random.key(0), steps=0)
