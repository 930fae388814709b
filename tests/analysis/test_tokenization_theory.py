"""P38 tokenization theory: switching sources, unigram-over-tokens bits per char, model bits per byte."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tokjax.analysis.tokenization_theory import (
    binary_entropy, chunk_text, model_bits_per_byte, switching_source, token_byte_lengths, unigram_bits_per_char,
    unigram_curve, unigram_token_bits,
)
from tokjax.data import empirical_conditional_entropy
from tokjax.tokenizers import BPETokenizer, ByteTokenizer

FEW = settings(max_examples=20, deadline=None, derandomize=True)


@pytest.mark.parametrize("delta, order", [(0.1, 1), (0.2, 2), (0.3, 3)])
def test_switching_source_has_entropy_rate_h_delta(delta, order):
    src = switching_source(delta, order)
    assert src.entropy_rate() == pytest.approx(binary_entropy(delta), abs=1e-12)
    np.testing.assert_allclose(src.stationary(), np.full(2**order, 2.0**-order), atol=1e-9)
    text = src.sample(60_000, rng=0)
    assert empirical_conditional_entropy(text, order, 2) == pytest.approx(binary_entropy(delta), abs=0.01)
    flips = np.mean([text[i] != text[i - order] for i in range(order, 20_000)])
    assert flips == pytest.approx(delta, abs=0.015)


@FEW
@given(alpha=st.floats(0.05, 2.0), seed=st.integers(0, 1000))
def test_unigram_token_bits_matches_a_naive_loop(alpha, seed):
    V, n_train, n_test = 12, 60, 40  # fixed shapes: one compilation
    r = np.random.default_rng(seed)
    train = r.integers(0, V, n_train)
    test = r.integers(0, V, n_test)
    valid = r.uniform(size=n_test) < 0.8
    support = np.ones(V, bool)
    counts = np.bincount(train, minlength=V)
    naive = 0.0
    for t, ok in zip(test, valid):
        if ok:
            naive -= math.log2((counts[t] + alpha) / (n_train + alpha * V))
    got = unigram_token_bits(jnp.asarray(counts), jnp.asarray(test), jnp.asarray(valid), jnp.asarray(support),
                             jnp.float32(alpha))
    assert float(got) == pytest.approx(naive, rel=1e-5, abs=1e-4)


def test_character_unigram_pays_one_bit_per_char():
    src = switching_source(0.1, 2)
    bpc = unigram_bits_per_char(ByteTokenizer(), src.sample(20_000, 0), src.sample(10_000, 1))
    assert bpc == pytest.approx(1.0, abs=0.01)


def test_unigram_over_bpe_tokens_approaches_the_entropy_rate():
    src = switching_source(0.1, 1)
    train, test = src.sample(120_000, 0), src.sample(40_000, 1)
    curve = unigram_curve(train, test, [16, 128, 512])
    sizes = sorted(curve)
    vals = [curve[v] for v in sizes]
    assert sizes[0] == 2 and vals[0] == pytest.approx(1.0, abs=0.01)
    h = binary_entropy(0.1)
    assert vals[-1] < 0.62 and vals[-1] > h - 0.01  # close to h = 0.469 from above, far below 1 bit
    assert all(b <= a + 0.01 for a, b in zip(vals, vals[1:]))


def test_model_bits_per_byte_equals_per_token_loss_over_bytes():
    import tokjax

    src = switching_source(0.2, 1)
    text = src.sample(5000, 0)
    tok = BPETokenizer.train(chunk_text(text, 100), vocab_size=300)
    ids = np.concatenate([tok.encode(c) for c in chunk_text(text, 100)])[: 4 * 17].reshape(4, 17)
    cfg = tokjax.ModelConfig(vocab_size=tok.vocab_size, d_model=16, n_layers=1, n_heads=2, max_len=16)
    params = tokjax.Model.init(cfg, jax.random.PRNGKey(0)).params
    lengths = token_byte_lengths(tok)
    bits, nbytes = jax.jit(model_bits_per_byte, static_argnums=1)(params, cfg, ids, lengths)
    logits = tokjax.forward(params, cfg, jnp.asarray(ids[:, :-1])).logits
    lp = np.asarray(jax.nn.log_softmax(logits, -1))
    y = ids[:, 1:]
    naive_bits = -sum(lp[b, t, y[b, t]] for b in range(4) for t in range(16)) / math.log(2)
    naive_bytes = sum(len(tok.id_to_bytes[i]) for i in y.reshape(-1))
    assert float(bits) == pytest.approx(naive_bits, rel=1e-5)
    assert float(nbytes) == naive_bytes


def test_bad_inputs():
    with pytest.raises(ValueError, match="delta"):
        switching_source(0.0)
    with pytest.raises(ValueError, match="delta"):
        switching_source(1.5)
    with pytest.raises(ValueError, match="order"):
        switching_source(0.1, 0)
    with pytest.raises(ValueError, match="delta"):
        binary_entropy(-0.1)
    with pytest.raises(ValueError, match="non-empty"):
        unigram_bits_per_char(ByteTokenizer(), "", "ab")
    with pytest.raises(ValueError, match="alpha"):
        unigram_bits_per_char(ByteTokenizer(), "ab", "ab", alpha=0.0)
    with pytest.raises(ValueError, match="byte tables"):
        token_byte_lengths(object())
    with pytest.raises(ValueError, match="chunk size"):
        chunk_text("abc", 0)


def test_model_bits_per_byte_matches_the_values_recorded_before_issue_12():
    """fixtures/tokenization_theory_before.npz: recorded with materialised logits; now token_stats (cut CE)."""
    from pathlib import Path

    import tokjax

    z = np.load(Path(__file__).parent / "fixtures" / "tokenization_theory_before.npz")
    cfg = tokjax.ModelConfig(vocab_size=int(z["vocab_size"]), d_model=16, n_layers=1, n_heads=2, max_len=16)
    params = tokjax.Model.init(cfg, jax.random.PRNGKey(0)).params
    bits, nbytes = jax.jit(model_bits_per_byte, static_argnums=1)(params, cfg, z["ids"], z["byte_lengths"])
    assert float(bits) == pytest.approx(float(z["bits"]), rel=1e-5)
    assert float(nbytes) == float(z["nbytes"])
