"""tokjax.model.readout: last-position states and logits of ragged token lists (shared by P3 and P20)."""

import jax
import numpy as np
import pytest

from tokjax.model import Model, ModelConfig, forward, last_token_logits, last_token_states

LISTS = [[1, 2, 3, 4, 5], [6], [7, 8], [9, 10, 11, 12, 13, 14, 15], [3, 3]]


@pytest.fixture(scope="module")
def model():
    cfg = ModelConfig(vocab_size=32, d_model=32, n_layers=2, n_heads=2, max_len=40)
    return Model.init(cfg, jax.random.key(0))


@pytest.mark.slow
def test_every_batch_layout_equals_one_forward_per_list(model):
    want_h, want_z, want_mean = [], [], []
    for t in LISTS:
        out = forward(model.params, model.cfg, np.asarray([t], np.int32))
        want_h.append(np.asarray(out.hidden[0, -1]))
        want_z.append(np.asarray(out.logits[0, -1]))
        want_mean.append(np.asarray(out.hidden[0]).mean(0))
    for batch_size, bucket in ((1, 32), (2, 4), (8, 1)):
        seen = []
        for idx, (h, z, mean) in last_token_states(model, LISTS, batch_size=batch_size, bucket=bucket):
            for r, i in enumerate(idx):
                np.testing.assert_allclose(np.asarray(h[r]), want_h[i], rtol=1e-5, atol=1e-5)
                np.testing.assert_allclose(np.asarray(z[r]), want_z[i], rtol=1e-5, atol=1e-5)
                np.testing.assert_allclose(np.asarray(mean[r]), want_mean[i], rtol=1e-5, atol=1e-5)
            seen += list(idx)
        assert sorted(seen) == list(range(len(LISTS)))
    cols = np.array([3, 0, 31])
    np.testing.assert_allclose(last_token_logits(model, LISTS, batch_size=2, columns=cols),
                               np.stack(want_z)[:, cols], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("lists,kwargs,match", [
    ([], {}, "at least one token list"),
    ([[1], []], {}, "non-empty"),
    ([[1, 32]], {}, "outside the model's vocabulary"),
    ([[1, -1]], {}, "outside the model's vocabulary"),
    ([[1.5, 2.0]], {}, "integer token ids"),
    ([[1]], {"batch_size": 0}, ">= 1"),
    ([list(range(30)) + list(range(15))], {}, "exceeds the model's max_len"),
    ([[1]], {"columns": [32]}, "columns must be"),
    ([[1]], {"columns": []}, "columns must be"),
    ([[1]], {"columns": [[1, 2]]}, "columns must be"),
])
def test_bad_input_raises(model, lists, kwargs, match):
    with pytest.raises(ValueError, match=match):
        last_token_logits(model, lists, **kwargs)
