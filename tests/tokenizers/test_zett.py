"""P26 ZeTT: hypernetwork shapes and masking, the vocabulary override of forward, training, transfer, errors.

``fixtures/vocab_transfer_before.npz`` was recorded with the code before issue 12 (private encoder,
hand-written log-softmax): the bits per byte, FVT rows and the hypernetwork's outputs for fixed
parameters must not change now that they run through ``token_stats`` and the shared ``forward``.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import tokjax
from tokjax.tokenizers import BPETokenizer, ByteTokenizer
from tokjax.tokenizers._vocab_transfer import (
    EvalWindows,
    bits_per_byte,
    decompose_vocab,
    eval_windows,
    mean_of_parts,
    nll_sum,
)
from tokjax.tokenizers.zett import (
    Hypernet,
    HypernetConfig,
    hypernet_embeddings,
    identity_pool,
    init_hypernet,
    make_tokenizer_pool,
    transfer,
    vocab_overlap,
    zett_batch_fn,
    zett_loss,
    zett_warmup_batch_fn,
    zett_warmup_loss,
)
from tokjax.train.recipes.zett import cached_hypernet, load_hypernet, save_hypernet, train_hypernet

FIXTURE = Path(__file__).parent / "fixtures" / "vocab_transfer_before.npz"

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


@pytest.mark.slow  # default-suite time; the file's other tests keep the method covered in the default suite
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
@pytest.mark.slow  # default-suite time; the file's other tests keep the method covered in the default suite
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


@pytest.mark.slow  # default-suite time; the file's other tests keep the method covered in the default suite
def test_plain_head_adds_nothing_the_residual_head_adds_exactly_fvt(setup):
    # P26: the paper's head is e(t) = P_out(h_1); tokjax's variant is P_out(h_1) + mean of parts (FVT).
    model, old, new = setup
    d = decompose_vocab(new, old, maxlen=6)
    ids, lengths = jnp.asarray(d.ids), jnp.asarray(d.lengths)
    src = model.params["embed"]
    plain = init_hypernet(HypernetConfig(d_model=16, hidden=16, d_ff=32, maxlen=6, residual=False), jax.random.key(7))
    same = Hypernet(plain.params, HypernetConfig(d_model=16, hidden=16, d_ff=32, maxlen=6, residual=True))
    e_plain = hypernet_embeddings(plain, src, ids, lengths)[0]
    e_res = hypernet_embeddings(same, src, ids, lengths)[0]
    np.testing.assert_allclose(e_res - e_plain, mean_of_parts(src, ids, lengths), atol=1e-5)
    # an untrained plain head is not FVT (its last layer is not zero): it has to learn the composition
    assert float(jnp.abs(e_plain - mean_of_parts(src, ids, lengths)).mean()) > 1e-2


@pytest.mark.slow
def test_identity_pool_is_the_source_vocabulary_and_its_warmup_targets_the_source_embeddings(setup):
    model, old, _ = setup
    pool = identity_pool(old, 6)
    V = old.vocab_size
    assert len(pool) == 1 and pool.ids.shape == (1, V, 6) and pool.vocab_sizes == [V]
    used = np.array([bool(b) for b in old.id_to_bytes]) | np.isin(np.arange(V), list(old.special_ids))
    np.testing.assert_array_equal(pool.valid[0], used)
    np.testing.assert_array_equal(pool.ids[0, used, 0], np.flatnonzero(used))
    assert (pool.ids[0, :, 1:] == -1).all() and (pool.lengths[0] == used).all()
    specials = sorted(old.special_ids)
    np.testing.assert_array_equal(pool.force[0, specials], specials)
    # the warm-up loss is ZeTT's identity objective ||H([i]) - E_old[i]||^2: zero for a head that
    # returns the source row (an untrained residual head), positive for an untrained plain head
    batch = {k: jnp.asarray(v) for k, v in zett_warmup_batch_fn(pool, vocab_sample=64, seed=0)(0).items()}
    assert batch["vocab_valid"].all()

    def loss(residual):
        cfg = HypernetConfig(d_model=16, hidden=16, d_ff=32, maxlen=6, residual=residual)
        hn = init_hypernet(cfg, jax.random.key(8))
        return float(zett_warmup_loss({"hypernet": hn.params, "lm": model.params}, None, batch,
                                      hypernet_cfg=cfg, lm_cfg=model.cfg)[0])

    assert loss(True) < 1e-10 and loss(False) > 1e-4
    with pytest.raises(ValueError, match="maxlen"):
        identity_pool(old, 0)
    with pytest.raises(ValueError, match="byte tables"):
        identity_pool(object(), 6)


def test_vocab_overlap_counts_the_target_tokens_a_pool_tokenizer_has(setup):
    _, old, new = setup
    assert vocab_overlap(new, [new]) == 1.0
    tokens = lambda t: {b for i, b in enumerate(t.id_to_bytes) if b and i not in t.special_ids}  # noqa: E731
    want = len(tokens(new) & tokens(old)) / len(tokens(new))
    assert vocab_overlap(new, [old]) == pytest.approx(want) and 0 < want < 1
    other = BPETokenizer.train(["zzzz qqqq xxxx " * 30], 270)
    assert vocab_overlap(new, [old, other]) >= vocab_overlap(new, [old])  # a larger pool never sees less
    assert vocab_overlap(new, [other]) == pytest.approx(len(tokens(new) & tokens(other)) / len(tokens(new)))
    with pytest.raises(ValueError, match="at least one"):
        vocab_overlap(new, [])
    with pytest.raises(ValueError, match="byte tables"):
        vocab_overlap(object(), [old])


@pytest.mark.slow
def test_training_lowers_the_loss_and_transfer_builds_a_model(setup, tmp_path):
    model, old, new = setup
    pool = make_tokenizer_pool(old, DOCS, [280, 300], seq_len=15, sample_fraction=0.8)
    hcfg = HypernetConfig(d_model=16, hidden=16, d_ff=32, maxlen=6)
    hn, hist = train_hypernet(model, pool, hcfg, steps=20, warmup_steps=2, batch_size=4, vocab_sample=300, lr=3e-3,
                              log_every=5)
    assert len(hist["warmup"]) >= 1 and len(hist["train"]) >= 2
    first, last = hist["train"][0]["ce"], hist["train"][-1]["ce"]
    assert np.isfinite(last) and last < first
    out = transfer(model, old, new, hn)
    assert out.cfg.vocab_size == new.vocab_size
    np.testing.assert_array_equal(out.params["embed"][new.eos_id], model.params["embed"][old.eos_id])
    assert out(jnp.asarray([new.encode("the lazy dog")])).logits.shape[-1] == new.vocab_size
    path = save_hypernet(tmp_path / "hn", hn, {"steps": 20})
    back, meta = load_hypernet(path)
    assert meta == {"steps": 20} and back.cfg == hn.cfg
    for x, y in zip(jax.tree.leaves(back.params), jax.tree.leaves(hn.params)):
        np.testing.assert_array_equal(x, y)
    with pytest.raises(ValueError, match="already exists"):
        save_hypernet(path, hn)
    # the cache: trained once, then loaded; absent settings give None without training
    kw = dict(cache_dir=tmp_path / "cache", name="t", pool_vocab_sizes=(280, 300), steps=2, hcfg=hcfg)
    assert cached_hypernet(model, old, None, train_if_missing=False, **kw) is None
    with pytest.raises(ValueError, match="docs"):
        cached_hypernet(model, old, None, **kw)


def test_batches_are_pure_functions_of_the_step(setup):
    _, old, _ = setup
    pool = make_tokenizer_pool(old, DOCS, [280, 300], seq_len=15, sample_fraction=0.8)
    fn = zett_batch_fn(pool, batch_size=4, vocab_sample=300, seed=1)
    a, b, c = fn(3), fn(3), fn(4)
    assert set(a) == {"tokens", "mask", "vocab_ids", "vocab_lengths", "vocab_force", "vocab_single", "vocab_valid"}
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    assert any(not np.array_equal(a[k], c[k]) for k in ("tokens", "vocab_ids"))
    assert a["tokens"].shape == (4, 16) and a["vocab_ids"].shape == (300, 6) and a["tokens"].max() < 300
    assert set(zett_warmup_batch_fn(pool, vocab_sample=64)(0)) >= {"vocab_ids", "vocab_lengths"}
    with pytest.raises(ValueError, match="vocab_sample"):
        zett_batch_fn(pool, batch_size=4, vocab_sample=32)


# --------------------------------------------------- behaviour recorded before issue 12
def _old_to_new(flat: dict, cfg: HypernetConfig) -> dict:
    """Returns the hypernet params of the first tokjax version (its private encoder) in today's layout."""
    H, nh = cfg.hidden, cfg.n_heads
    hd = H // nh
    get = lambda name: jnp.asarray(flat["zp/" + name])  # noqa: E731
    tree = lambda prefix, *keys: {k: get(f"{prefix}/{k}") for k in keys}  # noqa: E731
    proj = lambda prefix: {"dense1": tree(f"{prefix}/dense1", "w", "b"), "dense2": tree(f"{prefix}/dense2", "w", "b"),  # noqa: E731
                           "ln": tree(f"{prefix}/ln", "scale", "bias")}
    layers = []
    for i in range(cfg.n_layers):
        L = f"layers/{i}"
        w, b = get(f"{L}/qkv/w"), get(f"{L}/qkv/b")
        layers.append({
            "attn_norm": tree(f"{L}/ln1", "scale", "bias"), "mlp_norm": tree(f"{L}/ln2", "scale", "bias"),
            "wq": w[:, :H].reshape(H, nh, hd), "wk": w[:, H:2 * H].reshape(H, nh, hd),
            "wv": w[:, 2 * H:].reshape(H, nh, hd), "bq": b[:H].reshape(nh, hd), "bk": b[H:2 * H].reshape(nh, hd),
            "bv": b[2 * H:].reshape(nh, hd), "wo": get(f"{L}/out/w").reshape(nh, hd, H), "bo": get(f"{L}/out/b"),
            "w_up": get(f"{L}/up/w"), "b_up": get(f"{L}/up/b"), "w_down": get(f"{L}/down/w"), "b_down": get(f"{L}/down/b"),
        })
    encoder = {"layers": jax.tree.map(lambda *a: jnp.stack(a), *layers), "pos_embed": get("pos"),
               "final_norm": tree("final_ln", "scale", "bias")}
    return {"in_dense": tree("in_dense", "w", "b"), "in_block": proj("in_block"), "encoder": encoder,
            "out_block": proj("out_block"), "out_dense": tree("out_dense", "w", "b"),
            "out_block2": proj("out_block2"), "out_dense2": tree("out_dense2", "w", "b"),
            "bias_dense": tree("bias_dense", "w", "b")}


@pytest.mark.slow  # default-suite time; a regression pin against the old private encoder, the file's other tests cover the hypernet
def test_hypernet_on_the_shared_forward_computes_what_the_private_encoder_did():
    z = dict(np.load(FIXTURE))
    cfg = HypernetConfig(d_model=16, hidden=16, d_ff=32, maxlen=6, residual=False, separate_out=True, predict_bias=True)
    params = _old_to_new(z, cfg)
    fresh = init_hypernet(cfg, jax.random.key(3)).params  # same tree structure and shapes as the converted one
    assert jax.tree.structure(fresh) == jax.tree.structure(params)
    assert all(a.shape == b.shape for a, b in zip(jax.tree.leaves(fresh), jax.tree.leaves(params)))
    e_in, e_out, bias = hypernet_embeddings(Hypernet(params, cfg), jnp.asarray(z["z_src"]), jnp.asarray(z["z_ids"]),
                                            jnp.asarray(z["z_lengths"]))
    np.testing.assert_allclose(e_in, z["z_e_in"], atol=2e-5, rtol=1e-4)
    np.testing.assert_allclose(e_out, z["z_e_out"], atol=2e-5, rtol=1e-4)
    np.testing.assert_allclose(bias, z["z_bias"], atol=2e-5, rtol=1e-4)


def test_bits_per_byte_and_fvt_match_the_recorded_values(setup):
    model, old, new = setup
    z = dict(np.load(FIXTURE))
    d = decompose_vocab(new, old, maxlen=6)
    fvt = mean_of_parts(model.params["embed"], jnp.asarray(d.ids), jnp.asarray(d.lengths))
    np.testing.assert_allclose(fvt, z["vt_fvt"], atol=1e-7)
    w_old = EvalWindows(z["vt_old_tokens"], z["vt_old_mask"], int(z["vt_old_bytes"]))
    w_new = EvalWindows(z["vt_new_tokens"], z["vt_new_mask"], int(z["vt_new_bytes"]))
    assert math.isclose(bits_per_byte(model.params, model.cfg, w_old, batch_size=4), float(z["vt_bpb_base"]),
                        rel_tol=1e-5)
    assert math.isclose(bits_per_byte(model.params, model.cfg, w_new, embedding=fvt, batch_size=4),
                        float(z["vt_bpb_fvt"]), rel_tol=1e-5)
    got = nll_sum(model.params, model.cfg, w_new.tokens, w_new.mask, embedding=fvt,
                  logit_bias=jnp.asarray(z["vt_bias"]), batch_size=4)
    assert math.isclose(got, float(z["vt_nll_fvt_bias"]), rel_tol=1e-5)


def test_zett_loss_lexical_term_and_gradients(setup):
    model, old, new = setup
    d = decompose_vocab(new, old, maxlen=6)
    hn = init_hypernet(HypernetConfig(d_model=16, hidden=16, d_ff=32, maxlen=6, residual=False), jax.random.key(4))
    V = new.vocab_size
    single = np.where(d.lengths == 1, d.ids[:, 0], -1).astype(np.int32)
    force = np.full((V,), -1, np.int32)
    force[new.bos_id] = old.bos_id
    batch = {"tokens": jnp.asarray([[new.bos_id] + new.encode("the lazy dog")]), "vocab_ids": jnp.asarray(d.ids),
             "vocab_lengths": jnp.asarray(d.lengths), "vocab_force": jnp.asarray(force),
             "vocab_single": jnp.asarray(single), "vocab_valid": jnp.ones((V,), bool)}
    batch["mask"] = jnp.ones((1, batch["tokens"].shape[1] - 1))

    def f(hp, lw):
        loss = functools.partial(zett_loss, hypernet_cfg=hn.cfg, lm_cfg=model.cfg, lexical_weight=lw)
        return loss({"hypernet": hp, "lm": model.params}, None, batch, None)

    f = jax.jit(f, static_argnums=1)
    (l0, m0), (l1, m1) = f(hn.params, 0.0), f(hn.params, 1.0)
    np.testing.assert_allclose(float(l1) - float(l0), float(m1["lexical_mse"]), rtol=1e-4)
    g = jax.grad(lambda hp: f(hp, 0.5)[0])(hn.params)
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(g))
    assert float(jnp.abs(g["out_dense"]["w"]).sum()) > 0
    assert float(jnp.abs(g["encoder"]["layers"]["wq"]).sum()) > 0  # the gradient reaches the shared-forward encoder
    with pytest.raises(ValueError, match="hypernet"):
        zett_loss(hn.params, None, batch, hypernet_cfg=hn.cfg, lm_cfg=model.cfg)


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
    with pytest.raises(ValueError, match="no hypernet"):
        load_hypernet(tmp_path / "missing")
    with pytest.raises(ValueError, match="TokenizerPool"):
        train_hypernet(model, object())
