"""P24 TokenAdapt: the hybrid heuristic vs a loop reference, copy-exactness, convexity, transfer and errors."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tokjax
from tokjax.tokenizers import BPETokenizer
from tokjax.tokenizers.tokenadapt import tokenadapt_embeddings, tokenadapt_transfer

TEXT = ("the quick brown fox jumps over the lazy dog. " * 4 + "def main(): return 42\n" * 3
        + "naïve café über straße 12345\n") * 2


def reference(old, ids, lengths, exact, ratio, aux_new, aux_old, fallback, tau, lam, thr, mask, k):
    """Loop version of TokenAdapt's hybrid initialisation (official heuristics.py, numpy)."""
    out = []
    norm = lambda v: v / max(np.linalg.norm(v), 1e-8)
    for n in range(ids.shape[0]):
        if exact[n] >= 0:
            out.append(old[exact[n]])
            continue
        if lengths[n] == 0:
            out.append(fallback[n])
            continue
        q = norm(aux_new[n])
        parts = ids[n, : lengths[n]]
        sims = np.array([q @ norm(aux_old[s]) for s in parts])
        score = sims * (sims >= 0.7 * thr) + 1.0 / len(parts) + np.minimum(ratio[n, : len(parts)], 1.0)
        w = np.exp(score / tau - np.max(score / tau))
        w /= w.sum()
        local = (w[:, None] * old[parts]).sum(0)
        all_sims = np.array([q @ norm(a) if mask[j] else -2.0 for j, a in enumerate(aux_old)])
        top = np.argsort(-all_sims, kind="stable")[:k]
        keep = [j for j in top if all_sims[j] >= thr]
        if keep:
            s = all_sims[keep] / tau
            g = np.exp(s - s.max())
            g /= g.sum()
            glob = (g[:, None] * old[keep]).sum(0)
            out.append((1 - lam) * local + lam * glob)
        else:
            out.append(local)
    return np.stack(out)


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 10_000), tau=st.sampled_from([0.1, 0.3, 1.0]), lam=st.sampled_from([0.0, 0.3, 1.0]),
       thr=st.sampled_from([-1.0, 0.0, 0.3]))
def test_heuristic_matches_loop_reference(seed, tau, lam, thr):
    r = np.random.default_rng(seed)
    V, D, A, N, L, k = 12, 5, 4, 7, 3, 4
    old = r.normal(size=(V, D)).astype(np.float32)
    lengths = r.integers(0, L + 1, size=N).astype(np.int32)
    ids = np.where(np.arange(L)[None] < lengths[:, None], r.integers(0, V, size=(N, L)), -1).astype(np.int32)
    exact = np.where(r.random(N) < 0.2, r.integers(0, V, size=N), -1).astype(np.int32)
    ratio = r.random((N, L)).astype(np.float32) * 1.5
    aux_new = r.normal(size=(N, A)).astype(np.float32)
    aux_old = r.normal(size=(V, A)).astype(np.float32)
    fallback = r.normal(size=(N, D)).astype(np.float32)
    mask = r.random(V) < 0.8
    got = tokenadapt_embeddings(old, ids, lengths, exact, ratio, aux_new, aux_old, fallback, temperature=tau,
                                global_weight=lam, threshold=thr, old_mask=jnp.asarray(mask), top_k=k)
    want = reference(old, ids, lengths, exact, ratio, aux_new, aux_old, fallback, tau, lam, thr, mask, k)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_weights_are_convex_and_exact_matches_are_copied():
    r = np.random.default_rng(0)
    V, D, N, L = 10, 4, 6, 3
    v = r.normal(size=(D,)).astype(np.float32)
    old = np.tile(v, (V, 1))  # every old row equal: any convex combination returns v
    ids = r.integers(0, V, size=(N, L)).astype(np.int32)
    lengths = np.full((N,), L, np.int32)
    out = tokenadapt_embeddings(old, ids, lengths, -np.ones(N, np.int32), np.ones((N, L), np.float32),
                                r.normal(size=(N, 3)), r.normal(size=(V, 3)), np.zeros((N, D), np.float32),
                                threshold=-1.0)
    np.testing.assert_allclose(out, np.tile(v, (N, 1)), atol=1e-5)
    old2 = r.normal(size=(V, D)).astype(np.float32)
    exact = np.arange(N, dtype=np.int32)
    out2 = tokenadapt_embeddings(old2, ids, lengths, exact, np.ones((N, L), np.float32),
                                 r.normal(size=(N, 3)), r.normal(size=(V, 3)), np.zeros((N, D), np.float32))
    np.testing.assert_array_equal(np.asarray(out2), old2[:N])


def test_runtime_hyperparameters_do_not_recompile():
    r = np.random.default_rng(1)
    args = (r.normal(size=(8, 4)).astype(np.float32), r.integers(0, 8, size=(5, 2)).astype(np.int32),
            np.full((5,), 2, np.int32), -np.ones(5, np.int32), np.ones((5, 2), np.float32),
            r.normal(size=(5, 3)).astype(np.float32), r.normal(size=(8, 3)).astype(np.float32), np.zeros((5, 4), np.float32))
    f = jax.jit(lambda t, w: tokenadapt_embeddings(*args, temperature=t, global_weight=w, threshold=-1.0, top_k=3))
    a, b = f(0.3, 0.0), f(1.0, 1.0)
    assert not np.allclose(a, b)
    assert f._cache_size() == 1


@pytest.fixture(scope="module")
def setup():
    old = BPETokenizer.train([TEXT], 290)
    new = BPETokenizer.train([TEXT + " the lazy fox"], 330)
    cfg = tokjax.ModelConfig(vocab_size=old.vocab_size, d_model=16, n_layers=1, n_heads=2, n_kv_heads=1, max_len=32)
    return tokjax.Model.init(cfg, jax.random.key(0)), old, new


def test_transfer_copies_shared_tokens_and_runs(setup):
    model, old, new = setup
    out = tokenadapt_transfer(model, old, new, top_k=5)
    assert out.cfg.vocab_size == new.vocab_size
    emb, src = np.asarray(out.params["embed"]), np.asarray(model.params["embed"])
    shared = [(i, old.bytes_to_id[b]) for i, b in enumerate(new.id_to_bytes) if b and b in old.bytes_to_id]
    assert len(shared) > 256
    for i, j in shared:
        np.testing.assert_array_equal(emb[i], src[j])
    np.testing.assert_array_equal(emb[new.bos_id], src[old.bos_id])
    assert np.isfinite(emb).all()
    ids = jnp.asarray([new.encode("the lazy fox jumps")])
    assert out(ids).logits.shape == (1, ids.shape[1], new.vocab_size)


class _LossyTokenizer:
    vocab_size = 3
    special_ids = frozenset()
    bos_id = eos_id = pad_id = None
    id_to_bytes = [b"a", b"b", b"ab"]
    bytes_to_id = {b"a": 0, b"b": 1, b"ab": 2}


def test_bad_inputs_raise_clear_errors(setup):
    model, old, new = setup
    with pytest.raises(ValueError, match="loses bytes"):
        tokenadapt_transfer(model, old, _LossyTokenizer())
    with pytest.raises(ValueError, match="byte tables"):
        tokenadapt_transfer(model, old, object())
    with pytest.raises(ValueError, match="global_weight"):
        tokenadapt_transfer(model, old, new, global_weight=1.5)
    with pytest.raises(ValueError, match="temperature"):
        tokenadapt_transfer(model, old, new, temperature=0.0)
    with pytest.raises(ValueError, match="top_k"):
        tokenadapt_transfer(model, old, new, top_k=0)


def test_local_only_at_high_temperature_is_the_mean_of_parts():
    from tokjax.tokenizers._vocab_transfer import mean_of_parts

    r = np.random.default_rng(2)
    V, D, N, L = 9, 4, 6, 3
    old = r.normal(size=(V, D)).astype(np.float32)
    lengths = r.integers(1, L + 1, size=N).astype(np.int32)
    ids = np.where(np.arange(L)[None] < lengths[:, None], r.integers(0, V, size=(N, L)), -1).astype(np.int32)
    out = tokenadapt_embeddings(old, ids, lengths, -np.ones(N, np.int32), r.random((N, L)).astype(np.float32),
                                r.normal(size=(N, 3)), r.normal(size=(V, 3)), np.zeros((N, D), np.float32),
                                temperature=1e7, global_weight=0.0)
    np.testing.assert_allclose(out, mean_of_parts(old, ids, lengths), atol=1e-5)


def test_embedding_auxiliary_space_runs_and_bad_aux_is_rejected(setup):
    model, old, new = setup
    out = tokenadapt_transfer(model, old, new, aux="embedding", top_k=5)
    assert out.cfg.vocab_size == new.vocab_size and np.isfinite(np.asarray(out.params["embed"])).all()
    with pytest.raises(ValueError, match="aux"):
        tokenadapt_transfer(model, old, new, aux="external")


def test_supertokens_cross_word_boundaries_keep_text_exact_and_transfer():
    """max_words=2 pre-tokenization learns multi-word tokens; decoding stays exact; TokenAdapt initialises them."""
    import jax

    from tokjax import Model, ModelConfig
    from tokjax.tokenizers import BPETokenizer
    from tokjax.tokenizers.tokenadapt import tokenadapt_transfer

    texts = ["the cat sat on the mat and the dog sat on the log, 42 times!"] * 30 + ["of the sea in the sky"] * 30
    sup = BPETokenizer.train(texts, 330, max_words=2)
    words = BPETokenizer.train(texts, 330)
    multi = [b for b in sup.id_to_bytes if b" " in b.strip(b" ")]
    assert multi, "no multi-word token learned"
    assert not [b for b in words.id_to_bytes if b" " in b.strip(b" ") and b.strip(b" ").replace(b" ", b"").isalpha()]
    for t in texts[:1] + texts[-1:] + ["  odd\tspacing\n\nand 12345 digits ."]:
        assert sup.decode(sup.encode(t)) == t
    assert len(sup.encode(texts[0])) < len(words.encode(texts[0]))
    cfg = ModelConfig(vocab_size=words.vocab_size, d_model=16, n_layers=1, n_heads=2, d_ff=32, max_len=32)
    model = Model.init(cfg, jax.random.key(0))
    moved = tokenadapt_transfer(model, words, sup)
    assert moved.cfg.vocab_size == sup.vocab_size
    assert bool(jax.numpy.isfinite(moved.params["embed"]).all())
    with pytest.raises(ValueError, match="max_words"):
        BPETokenizer.train(texts, 330, max_words=0)
    with pytest.raises(ValueError, match="digits"):
        BPETokenizer.train(texts, 330, max_words=2, digits="r2l3")


def test_aux_embeddings_match_the_values_recorded_before_issue_12():
    """fixtures/vocab_transfer_before.npz: the pooled hidden states, recorded before the pool used masked_mean."""
    from pathlib import Path

    from tokjax.tokenizers.tokenadapt import aux_embeddings

    z = np.load(Path(__file__).parent / "fixtures" / "vocab_transfer_before.npz")
    old = BPETokenizer.train([TEXT], 290)
    cfg = tokjax.ModelConfig(vocab_size=old.vocab_size, d_model=16, n_layers=1, n_heads=2, n_kv_heads=1, max_len=32)
    model = tokjax.Model.init(cfg, jax.random.key(0))
    got = aux_embeddings(model, z["ta_ids"], z["ta_lengths"], bos_id=old.bos_id, batch_size=16)
    np.testing.assert_allclose(got, z["ta_aux"], rtol=1e-5, atol=1e-6)
    assert np.all(np.asarray(got)[z["ta_lengths"] == 0] == 0)  # empty rows pool to zeros


def test_byte_ngram_tfidf_matches_a_direct_count():
    """tf-idf of framed byte n-grams: unit rows, shared n-grams give similarity, empty text gives zeros."""
    from tokjax.tokenizers.tokenadapt import byte_ngram_tfidf

    texts = [b"ab", b"abc", b"xyz", b""]
    x = byte_ngram_tfidf(texts, n_max=2)
    # direct: features of "ab" framed as ^ab$ with n <= 2: a, b, ^a, ab, b$
    feats = [[("a",), ("b",), ("^", "a"), ("a", "b"), ("b", "$")],
             [("a",), ("b",), ("c",), ("^", "a"), ("a", "b"), ("b", "c"), ("c", "$")],
             [("x",), ("y",), ("z",), ("^", "x"), ("x", "y"), ("y", "z"), ("z", "$")], []]
    allf = sorted({f for fs in feats for f in fs})
    df = {f: sum(f in fs for fs in feats) for f in allf}
    idf = {f: np.log(5 / (1 + df[f])) + 1 for f in allf}
    want = np.array([[idf[f] if f in fs else 0.0 for f in allf] for fs in feats])
    want = want / np.maximum(np.linalg.norm(want, axis=1, keepdims=True), 1e-12)
    np.testing.assert_allclose(x @ x.T, want @ want.T, atol=1e-6)  # feature order is an implementation detail
    assert x.shape[1] == len(allf)
    assert np.all(x[3] == 0) and x[0] @ x[1] > 0.5 and x[0] @ x[2] == 0
    with pytest.raises(ValueError, match="n_max"):
        byte_ngram_tfidf(texts, n_max=0)
    with pytest.raises(ValueError, match="bytes"):
        byte_ngram_tfidf(["ab"])


def test_external_aux_arrays_equal_the_built_in_space_and_bad_shapes_raise(setup):
    """Passing tokenadapt_aux's arrays gives the same model as the named kind; tf-idf runs; shapes are checked."""
    from tokjax.tokenizers.tokenadapt import tokenadapt_aux

    model, old, new = setup
    pair = tokenadapt_aux(model, old, new, "tfidf")
    assert pair[0].shape[0] == new.vocab_size and pair[1].shape[0] == old.vocab_size
    a = tokenadapt_transfer(model, old, new, aux="tfidf", top_k=5)
    b = tokenadapt_transfer(model, old, new, aux=pair, top_k=5)
    np.testing.assert_array_equal(np.asarray(a.params["embed"]), np.asarray(b.params["embed"]))
    h = tokenadapt_transfer(model, old, new, aux="hidden", top_k=5, global_weight=1.0, threshold=-1.0)
    t = tokenadapt_transfer(model, old, new, aux="tfidf", top_k=5, global_weight=1.0, threshold=-1.0)
    assert not np.allclose(np.asarray(h.params["embed"]), np.asarray(t.params["embed"]))  # the space matters
    with pytest.raises(ValueError, match="aux arrays"):
        tokenadapt_transfer(model, old, new, aux=(pair[0][:-1], pair[1]))
    with pytest.raises(ValueError, match="aux"):
        tokenadapt_transfer(model, old, new, aux=(pair[0],))
    with pytest.raises(ValueError, match="aux"):
        tokenadapt_aux(model, old, new, "external")
