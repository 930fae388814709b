"""P26 ZeTT: hypernetwork shapes and masking, the vocabulary override of forward, training, transfer, errors."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import tokjax
from tokjax.tokenizers import BPETokenizer, ByteTokenizer
from tokjax.tokenizers._vocab_transfer import (
    bits_per_byte,
    decompose_vocab,
    eval_windows,
    mean_of_parts,
)
from tokjax.tokenizers.zett import (
    HypernetConfig,
    hypernet_embeddings,
    init_hypernet,
    load_hypernet,
    make_tokenizer_pool,
    save_hypernet,
    train_hypernet,
    transfer,
    zett_loss,
)

TEXT = ("the quick brown fox jumps over the lazy dog. " * 4 + "def main(): return 42\n" * 3
        + "naïve café über straße 12345\n") * 2
DOCS = [TEXT[i : i + 120] for i in range(0, len(TEXT), 120)]


@pytest.fixture(scope="module")
def setup():
    old = BPETokenizer.train([TEXT], 290)
    new = BPETokenizer.train([TEXT + " the lazy fox"], 330)
    cfg = tokjax.ModelConfig(vocab_size=old.vocab_size, d_model=16, n_layers=1, n_heads=2, n_kv_heads=1, max_len=32)
    return tokjax.Model.init(cfg, jax.random.key(0)), old, new


# ------------------------------------------------- forward's per-call vocabulary override
def test_forward_override_accepts_a_larger_vocabulary_and_differentiates_through_it(setup):
    model, _, _ = setup
    cfg = model.cfg
    big = jax.random.normal(jax.random.key(1), (cfg.vocab_size + 50, cfg.d_model)) * 0.02
    toks = jnp.asarray([[0, cfg.vocab_size + 10, cfg.vocab_size + 49, 5]])  # ids only the new table has

    # tokens travel as jit arguments: forward checks concrete tokens against cfg.vocab_size
    def loss(e, t):
        logits = tokjax.forward(model.params, cfg, t, embedding=e, head=e.T).logits
        return -jnp.mean(jax.nn.log_softmax(logits)[0, :-1, 7])

    value, grad = jax.jit(jax.value_and_grad(loss))(big, toks)
    assert np.isfinite(float(value))
    assert float(jnp.abs(grad[cfg.vocab_size + 10]).sum()) > 0  # the gradient reaches the new rows
    logits = jax.jit(lambda e, t: tokjax.forward(model.params, cfg, t, embedding=e, head=e.T).logits)(big, toks)
    assert logits.shape == (1, 4, cfg.vocab_size + 50)


# ---------------------------------------------------------------------------- decomposition
def test_decomposition_spells_every_token_and_copies_specials(setup):
    _, old, new = setup
    d = decompose_vocab(new, old, maxlen=16)
    assert not d.truncated.any()
    for i, b in enumerate(new.id_to_bytes):
        if b:
            assert b"".join(old.id_to_bytes[j] for j in d.ids[i, : d.lengths[i]]) == b
            assert (d.exact[i] >= 0) == (b in old.bytes_to_id)
    assert d.ids[new.bos_id, 0] == old.bos_id and d.lengths[new.pad_id] == 1
    bt = decompose_vocab(new, ByteTokenizer(), maxlen=16)  # into raw bytes
    assert all(bt.lengths[i] == len(b) for i, b in enumerate(new.id_to_bytes) if b)


def test_bits_per_byte_matches_a_direct_computation(setup):
    model, old, _ = setup
    w = eval_windows(old, DOCS[:3], 16)
    total = 0.0
    for row, m in zip(w.tokens, w.mask):
        logp = jax.nn.log_softmax(model(jnp.asarray(row[None, :-1])).logits[0])
        total -= float(sum(logp[t, row[t + 1]] * m[t] for t in range(len(m))))
    assert w.num_bytes == sum(len(d.encode()) for d in DOCS[:3])
    assert math.isclose(bits_per_byte(model.params, model.cfg, w, batch_size=4),
                        total / math.log(2) / w.num_bytes, rel_tol=1e-4)


# ------------------------------------------------------------------------------ hypernet
def test_residual_hypernet_starts_at_mean_of_parts_and_ignores_padding(setup):
    model, old, new = setup
    d = decompose_vocab(new, old, maxlen=6)
    hn = init_hypernet(HypernetConfig(d_model=16, hidden=16, d_ff=32, maxlen=6), jax.random.key(2))
    src = model.params["embed"]
    e, e_out, bias = hypernet_embeddings(hn, src, jnp.asarray(d.ids), jnp.asarray(d.lengths))
    assert e.shape == (new.vocab_size, 16) and e_out is None and bias is None
    np.testing.assert_allclose(e, mean_of_parts(src, jnp.asarray(d.ids), jnp.asarray(d.lengths)), atol=1e-6)
    plain = init_hypernet(HypernetConfig(d_model=16, hidden=16, d_ff=32, maxlen=6, residual=False,
                                         separate_out=True, predict_bias=True), jax.random.key(3))
    junk = np.where(d.ids < 0, 7, d.ids)  # change only the padding slots
    a = hypernet_embeddings(plain, src, jnp.asarray(d.ids), jnp.asarray(d.lengths))
    b = hypernet_embeddings(plain, src, jnp.asarray(junk), jnp.asarray(d.lengths))
    for x, y in zip(a, b):
        np.testing.assert_allclose(x, y, atol=1e-5)
    assert a[1].shape == (new.vocab_size, 16) and a[2].shape == (new.vocab_size,)


def test_training_lowers_the_loss_and_transfer_builds_a_model(setup, tmp_path):
    model, old, new = setup
    pool = make_tokenizer_pool(old, DOCS, [280, 300], seq_len=15, sample_fraction=0.8)
    hcfg = HypernetConfig(d_model=16, hidden=16, d_ff=32, maxlen=6)
    hn, hist = train_hypernet(model, pool, hcfg, steps=20, warmup_steps=2, batch_size=4, vocab_sample=300, lr=3e-3)
    first, last = hist["train"][0][2], hist["train"][-1][2]
    assert np.isfinite(last) and last < first
    out = transfer(model, old, new, hn)
    assert out.cfg.vocab_size == new.vocab_size
    np.testing.assert_array_equal(out.params["embed"][new.eos_id], model.params["embed"][old.eos_id])
    assert out(jnp.asarray([new.encode("the lazy dog")])).logits.shape[-1] == new.vocab_size
    path = save_hypernet(tmp_path / "hn.npz", hn, {"steps": 20})
    back, meta = load_hypernet(path)
    assert meta == {"steps": 20} and back.cfg == hn.cfg
    for x, y in zip(jax.tree.leaves(back.params), jax.tree.leaves(hn.params)):
        np.testing.assert_array_equal(x, y)


def test_zett_loss_lexical_term_and_gradients(setup):
    model, old, new = setup
    d = decompose_vocab(new, old, maxlen=6)
    hn = init_hypernet(HypernetConfig(d_model=16, hidden=16, d_ff=32, maxlen=6, residual=False), jax.random.key(4))
    V = new.vocab_size
    single = np.where(d.lengths == 1, d.ids[:, 0], -1).astype(np.int32)
    force = np.full((V,), -1, np.int32)
    force[new.bos_id] = old.bos_id
    batch = {"tokens": jnp.asarray([[new.bos_id] + new.encode("the lazy dog")]), "ids": jnp.asarray(d.ids),
             "lengths": jnp.asarray(d.lengths), "force": jnp.asarray(force), "single": jnp.asarray(single),
             "valid": jnp.ones((V,), bool)}
    batch["mask"] = jnp.ones((1, batch["tokens"].shape[1] - 1))
    f = jax.jit(lambda hp, lw: zett_loss(hp, hn, model.params, model.cfg, batch, lw))
    (l0, m0), (l1, m1) = f(hn.params, 0.0), f(hn.params, 1.0)
    np.testing.assert_allclose(float(l1) - float(l0), float(m1["lexical_mse"]), rtol=1e-4)
    g = jax.grad(lambda hp: f(hp, 0.5)[0])(hn.params)
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(g))
    assert float(jnp.abs(g["out_dense"]["w"]).sum()) > 0


class _LossyTokenizer:
    vocab_size = 3
    special_ids = frozenset()
    bos_id = eos_id = pad_id = None
    id_to_bytes = [b"a", b"b", b"ab"]
    bytes_to_id = {b"a": 0, b"b": 1, b"ab": 2}


def test_bad_inputs_raise_clear_errors(setup, tmp_path):
    model, old, new = setup
    hn = init_hypernet(HypernetConfig(d_model=16, hidden=16, d_ff=32), jax.random.key(5))
    with pytest.raises(ValueError, match="loses bytes"):
        transfer(model, old, _LossyTokenizer(), hn)
    with pytest.raises(ValueError, match="byte tables"):
        transfer(model, object(), new, hn)
    with pytest.raises(ValueError, match="d_model"):
        transfer(model, old, new, init_hypernet(HypernetConfig(d_model=8), jax.random.key(0)))
    untied = tokjax.Model.init(model.cfg.replace(tied_embeddings=False), jax.random.key(6))
    with pytest.raises(ValueError, match="separate_out"):
        transfer(untied, old, new, hn)
    with pytest.raises(ValueError, match="divisible"):
        HypernetConfig(d_model=16, hidden=10, n_heads=4)
    with pytest.raises(ValueError, match="no hypernet file"):
        load_hypernet(tmp_path / "missing.npz")
