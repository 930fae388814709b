"""score_continuations: one prefill + forked caches equals scoring each full sequence with token_stats."""

import jax
import numpy as np
import pytest

import tokjax
from tokjax.decoding import score_continuations
from tokjax.losses import token_stats
from tokjax.model import Model

CFG = tokjax.ModelConfig(vocab_size=40, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, max_len=32)
MODEL = Model(params=tokjax.model.init_params(CFG, jax.random.key(0)), cfg=CFG)


@pytest.mark.slow
def test_equals_token_stats_of_each_full_sequence_in_any_batch_size():
    prefix = [3, 7, 1, 9]
    conts = [[5], [2, 2, 8], [39, 0, 4, 4, 6], [1, 2]]
    for bs in (3, 16):  # a padded last chunk, and one chunk
        out = score_continuations(MODEL, prefix, conts, batch_size=bs)
        for c, lp in zip(conts, out.logprobs):
            seq = np.asarray([prefix + c], np.int32)
            want = np.asarray(token_stats(MODEL.params, CFG, {"tokens": seq}).logp)[0, len(prefix) - 1:]
            np.testing.assert_allclose(lp, want, atol=1e-5)
        np.testing.assert_allclose(out.totals, [lp.sum() for lp in out.logprobs], rtol=1e-6)


def test_bad_input():
    with pytest.raises(ValueError, match="prefix must hold"):
        score_continuations(MODEL, [], [[1]])
    with pytest.raises(ValueError, match="empty"):
        score_continuations(MODEL, [1], [[2], []])
    with pytest.raises(ValueError, match="continuation ids"):
        score_continuations(MODEL, [1], [[40]])
    with pytest.raises(ValueError, match="max_len"):
        score_continuations(MODEL, [1] * 30, [[1] * 5])
