"""P39 dynamic tokenization: batch-level BPE merges vs a loop reference, reconstruction, boundaries, errors."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tokjax
from tokjax.tokenizers import BPETokenizer, ByteTokenizer
from tokjax.tokenizers.dynamic_tokenization import (
    dynamic_embeddings,
    dynamic_merges,
    dynamic_tokenize,
    expand_ids,
    hypernet_dynamic_embeddings,
    joinable_mask,
    new_token_bias,
    new_token_decompositions,
)

TEXT = (
    "the cat sat on the mat. the cat is fat and the mat is flat.\n\n"
    "def f(x):\n    return x + 1  # the cat\n"
    "Ünïcödé text: naïve café, 12345 and 67890; the end.\n"
) * 3


@pytest.fixture(scope="module")
def tok():
    return BPETokenizer.train([TEXT], 300)


# ------------------------------------------------------------------------- loop reference
def reference_merges(ids, lengths, joinable, vocab_size, max_new, num_merges, target_reduction):
    """Naive batch BPE: the most frequent valid pair (ties: smallest pair), merged left to right."""
    rows = [list(map(int, ids[b, : lengths[b]])) for b in range(len(lengths))]
    joins = [list(map(bool, joinable[b, : lengths[b]])) for b in range(len(lengths))]
    original = sum(len(r) for r in rows)
    parts = []
    while len(parts) < min(num_merges, max_new) and sum(len(r) for r in rows) > (1 - target_reduction) * original:
        counts = {}
        for r, j in zip(rows, joins):
            for i in range(len(r) - 1):
                if j[i]:
                    counts[(r[i], r[i + 1])] = counts.get((r[i], r[i + 1]), 0) + 1
        if not counts:
            break
        best = max(counts.values())
        a, c = min(p for p, n in counts.items() if n == best)
        new = vocab_size + len(parts)
        parts.append((a, c))
        for k, (r, j) in enumerate(zip(rows, joins)):
            out, oj, i = [], [], 0
            while i < len(r):
                if i + 1 < len(r) and j[i] and r[i] == a and r[i + 1] == c:
                    out.append(new)
                    oj.append(j[i + 1])
                    i += 2
                else:
                    out.append(r[i])
                    oj.append(j[i])
                    i += 1
            rows[k], joins[k] = out, oj
    return rows, parts


@settings(max_examples=25, deadline=None)
@given(
    data=st.data(),
    num_merges=st.integers(0, 6),
    target=st.sampled_from([0.0, 0.2, 0.5, 1.0]),
)
def test_merges_match_loop_reference(data, num_merges, target):
    B, T, V = 3, 10, 4  # one shape: the jitted merge loop compiles once
    ids = np.array(data.draw(st.lists(st.lists(st.integers(0, V - 1), min_size=T, max_size=T), min_size=B, max_size=B)))
    lengths = np.array(data.draw(st.lists(st.integers(0, T), min_size=B, max_size=B)))
    joinable = np.array(data.draw(st.lists(st.lists(st.booleans(), min_size=T, max_size=T), min_size=B, max_size=B)))
    out = dynamic_merges(ids, lengths, joinable, vocab_size=V, max_new_tokens=4, num_merges=num_merges,
                         target_reduction=target, pad_id=0)
    rows, parts = reference_merges(ids, lengths, joinable, V, 4, num_merges, target)
    got = [np.asarray(out.ids)[b, : int(out.lengths[b])].tolist() for b in range(B)]
    assert got == rows
    assert int(out.num_new) == len(parts)
    assert np.asarray(out.parts)[: len(parts)].tolist() == [list(p) for p in parts]
    assert (np.asarray(out.parts)[len(parts):] == -1).all()


def test_runs_of_equal_tokens_merge_left_to_right():
    ids = np.array([[5, 5, 5, 5, 5]])
    out = dynamic_merges(ids, np.array([5]), np.ones((1, 5), bool), vocab_size=6, max_new_tokens=1, pad_id=0)
    assert np.asarray(out.ids)[0, : int(out.lengths[0])].tolist() == [6, 6, 5]


# -------------------------------------------------------------------- text properties
texts = st.lists(st.text(alphabet=st.sampled_from(list("ab c.\n\té1")), max_size=30), min_size=1, max_size=4)


@settings(max_examples=15, deadline=None)
@given(batch=texts, boundary=st.sampled_from(["pretoken", "word", "any"]))
def test_merges_reconstruct_the_text_exactly(tok, batch, boundary):
    rows = tok.encode_batch(batch + [""] * (4 - len(batch)), add_bos=True)
    ids, lengths = tokjax.tokenizers.pad_batch(rows, tok.pad_id, length=64)  # one shape: one compile
    join = joinable_mask(tok, ids, lengths, boundary)
    out = dynamic_merges(ids, lengths, join, vocab_size=tok.vocab_size, max_new_tokens=16, pad_id=tok.pad_id)
    out = out._replace(ids=out.ids[: len(batch)], lengths=out.lengths[: len(batch)])
    expanded = expand_ids(out, tok.vocab_size)
    assert expanded == tok.encode_batch(batch, add_bos=True)
    assert tok.decode_batch(expanded) == batch


def test_length_reduction_is_monotone_in_the_number_of_merges(tok):
    batch = TEXT.split("\n")
    totals = [int(dynamic_tokenize(tok, batch, max_new_tokens=40, num_merges=m).lengths.sum()) for m in range(0, 41, 5)]
    assert all(a >= b for a, b in zip(totals, totals[1:]))
    assert totals[-1] < totals[0]


def test_target_reduction_is_reached_and_not_overshot(tok):
    batch = TEXT.split("\n")
    base = sum(len(r) for r in tok.encode_batch(batch))
    out = dynamic_tokenize(tok, batch, max_new_tokens=200, target_reduction=0.1)
    total = int(out.lengths.sum())
    assert total <= 0.9 * base
    one_less = dynamic_tokenize(tok, batch, max_new_tokens=200, num_merges=int(out.num_new) - 1)
    assert int(one_less.lengths.sum()) > 0.9 * base  # it stopped at the first merge reaching the target


def test_merges_stay_inside_pretokens_and_never_touch_specials(tok):
    batch = [t + " <|bos|>" for t in TEXT.split("\n")]  # a literal special spelling is just text
    rows = tok.encode_batch(batch, add_bos=True, add_eos=True)
    ids, lengths = tokjax.tokenizers.pad_batch(rows, tok.pad_id)
    join = joinable_mask(tok, ids, lengths)
    out = dynamic_merges(ids, lengths, join, vocab_size=tok.vocab_size, max_new_tokens=300, pad_id=tok.pad_id)
    leaves, lens = new_token_decompositions(out.parts, tok.vocab_size, 64)
    for k in range(int(out.num_new)):
        parts = np.asarray(leaves[k, : int(lens[k])]).tolist()
        assert not set(parts) & set(tok.special_ids)
        merged = b"".join(tok.id_to_bytes[i] for i in parts)
        text = merged.decode("utf-8", errors="strict") if _valid(merged) else None
        if text is not None:
            assert len(tok.hf.pre_tokenizer.pre_tokenize_str(text)) == 1, text
    assert not join[np.isin(ids, list(tok.special_ids))].any()


def _valid(b: bytes) -> bool:
    try:
        b.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


def test_word_boundary_keeps_leading_space_with_the_word():
    bt = ByteTokenizer()
    ids = np.array([list(b"ab cd  ef")])
    join = joinable_mask(bt, ids, boundary="word")
    # bytes: a b _ c d _ _ e f ; a break before " cd" and before the whitespace run's last space
    assert join[0].tolist() == [True, False, True, True, False, False, True, True, False]


# -------------------------------------------------------------------------- embeddings
def test_mean_of_parts_embeddings_and_decompositions(tok):
    out = dynamic_tokenize(tok, TEXT.split("\n"), max_new_tokens=30)
    V = tok.vocab_size
    table = jax.random.normal(jax.random.key(0), (V, 8))
    ext = dynamic_embeddings(table, out.parts, out.num_new)
    leaves, lens = new_token_decompositions(out.parts, V, 64)
    for k in range(int(out.num_new)):
        ref = np.asarray(table)[np.asarray(leaves[k, : int(lens[k])])].mean(0)
        np.testing.assert_allclose(ext[V + k], ref, atol=1e-5)
    np.testing.assert_array_equal(ext[:V], table)
    bias = new_token_bias(V, 30, out.num_new)
    assert (bias[: V + int(out.num_new)] == 0).all() and (bias[V + int(out.num_new):] < -1e8).all()


@pytest.mark.slow  # default-suite time; the file's other tests keep the method covered in the default suite
def test_untrained_residual_hypernet_gives_the_mean_of_parts(tok):
    from tokjax.tokenizers.zett import HypernetConfig, init_hypernet

    out = dynamic_tokenize(tok, TEXT.split("\n"), max_new_tokens=30)
    table = jax.random.normal(jax.random.key(3), (tok.vocab_size, 8))
    hn = init_hypernet(HypernetConfig(d_model=8, hidden=8, d_ff=16, n_heads=2, maxlen=32), jax.random.key(4))
    np.testing.assert_allclose(hypernet_dynamic_embeddings(hn, table, out.parts, out.num_new),
                               dynamic_embeddings(table, out.parts, out.num_new), atol=1e-5)


def test_forward_with_dynamic_vocabulary_equals_static_when_no_merge():
    cfg = tokjax.ModelConfig(vocab_size=300, d_model=16, n_layers=1, n_heads=2, n_kv_heads=1, max_len=32)
    m = tokjax.Model.init(cfg, jax.random.key(1))
    ids = jax.random.randint(jax.random.key(2), (2, 10), 3, 300)
    out = dynamic_merges(ids, jnp.array([10, 10]), jnp.zeros((2, 10), bool), vocab_size=300, max_new_tokens=4)
    table = dynamic_embeddings(m.params["embed"], out.parts, out.num_new)
    bias = new_token_bias(300, 4, out.num_new)
    dyn = jax.jit(lambda t, e, b: tokjax.forward(m.params, cfg, t, embedding=e, head=e.T, logit_bias=b).logits)(
        out.ids, table, bias)
    static = tokjax.forward(m.params, cfg, ids).logits
    np.testing.assert_allclose(jax.nn.log_softmax(dyn)[..., :300], jax.nn.log_softmax(static), atol=1e-5)


def test_runtime_merge_count_does_not_recompile():
    ids = jnp.tile(jnp.arange(6), (2, 2))
    lens = jnp.array([12, 12])
    join = jnp.ones((2, 12), bool)
    f = jax.jit(lambda n: dynamic_merges(ids, lens, join, vocab_size=6, max_new_tokens=8, num_merges=n).lengths)
    a, b = f(1), f(3)
    assert int(a.sum()) > int(b.sum())
    assert f._cache_size() == 1


# ----------------------------------------------------------------------------- bad input
def test_bad_inputs_raise_clear_errors(tok):
    ids = np.array([[1, 2, 3]])
    with pytest.raises(ValueError, match="vocab_size"):
        dynamic_merges(ids, np.array([3]), np.ones((1, 3), bool), vocab_size=3, max_new_tokens=2)
    with pytest.raises(ValueError, match="target_reduction"):
        dynamic_merges(ids, np.array([3]), np.ones((1, 3), bool), vocab_size=5, max_new_tokens=2, target_reduction=1.5)
    with pytest.raises(ValueError, match="joinable"):
        dynamic_merges(ids, np.array([3]), np.ones((1, 2), bool), vocab_size=5, max_new_tokens=2)
    with pytest.raises(ValueError, match="boundary"):
        joinable_mask(tok, ids, boundary="sentence-ish")
    with pytest.raises(ValueError, match="pre-tokenizer"):
        joinable_mask(ByteTokenizer(), ids, boundary="pretoken")
    with pytest.raises(ValueError, match="byte tables"):
        joinable_mask(object(), ids)
    with pytest.raises(ValueError, match="outside"):
        joinable_mask(tok, np.array([[1, 5000]]))


def test_applying_a_batch_merge_list_reproduces_the_batch(tok):
    from tokjax.tokenizers.dynamic_tokenization import DynamicBatch, apply_merges

    rows = tok.encode_batch(TEXT.split("\n"))
    ids, lengths = tokjax.tokenizers.pad_batch(rows, tok.pad_id)
    join = joinable_mask(tok, ids, lengths)
    out = dynamic_merges(ids, lengths, join, vocab_size=tok.vocab_size, max_new_tokens=40, pad_id=tok.pad_id)
    base = DynamicBatch(jnp.asarray(ids), jnp.asarray(lengths), jnp.asarray(join), out.parts, jnp.int32(0))
    again = apply_merges(base, out.parts, out.num_new, vocab_size=tok.vocab_size, pad_id=tok.pad_id)
    np.testing.assert_array_equal(again.ids, out.ids)
    np.testing.assert_array_equal(again.lengths, out.lengths)
    # other text: merges apply where they fit, and the text still reconstructs exactly
    other = tok.encode_batch(["the cat sat on the flat mat", "return the fat cat"])
    oids, olens = tokjax.tokenizers.pad_batch(other, tok.pad_id)
    ojoin = joinable_mask(tok, oids, olens)
    applied = apply_merges(DynamicBatch(jnp.asarray(oids), jnp.asarray(olens), jnp.asarray(ojoin), out.parts, 0),
                           out.parts, out.num_new, vocab_size=tok.vocab_size, pad_id=tok.pad_id)
    assert int(applied.lengths.sum()) < int(olens.sum())
    assert expand_ids(applied, tok.vocab_size) == other
