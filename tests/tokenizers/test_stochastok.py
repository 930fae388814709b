"""StochasTok (P36): expansion table, host transform, jitted split op, training-loss wrapper."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tokjax.data import load_corpus
from tokjax.tokenizers import BPETokenizer, ByteTokenizer, pad_batch
from tokjax.tokenizers.stochastok import (
    ExpansionTable, _split, build_expansions, expand_ids, expansion_table, stochastok, stochastok_loss,
    stochastok_split,
)

FEW = settings(max_examples=25, deadline=None, derandomize=True)
TEXT = "Hello wörld 🙂 def foo(x): return x**2  # the quick brown fox, 12345 + 678 = 13023\n"


@pytest.fixture(scope="module")
def tok():
    return BPETokenizer.train([load_corpus("pydocs", max_bytes=120_000).text], vocab_size=600)


@pytest.fixture(scope="module")
def table(tok):
    return expansion_table(tok)


def test_expansions_equal_brute_force_over_all_pairs(tok):
    """Every (a, b) with bytes(a) + bytes(b) == bytes(t), found by a naive loop over all id pairs."""
    b2i = tok.bytes_to_id
    naive: dict[int, set] = {}
    words = [(i, b) for i, b in enumerate(tok.id_to_bytes) if b and i not in tok.special_ids]
    for a, ba in words:
        for b, bb in words:
            t = b2i.get(ba + bb)
            if t is not None and (a, b) == (b2i[ba], b2i[bb]):
                naive.setdefault(t, set()).add((a, b))
    got = build_expansions(tok)
    assert {t: set(v) for t, v in got.items()} == naive
    # Every merged token (id >= 3 specials + 256 bytes) is splittable; bytes and specials are not.
    assert set(got) == set(range(259, tok.vocab_size))
    assert all(type(k) is int for k in got)


def test_json_round_trip_pitfall_is_avoided(tok):
    """The reference caches the table as JSON (int keys -> str) and then never splits; ours hits."""
    ex = build_expansions(tok)
    ids = tok.encode(TEXT)
    assert sum(i in ex for i in ids) > 0
    broken = json.loads(json.dumps(ex))
    assert sum(i in broken for i in ids) == 0  # what the reference silently does
    out = stochastok(tok, 1.0, seed=0).encode(TEXT)
    assert len(out) > len(ids)


@FEW
@given(text=st.text(max_size=60), p=st.floats(0.0, 1.0), seed=st.integers(0, 2**16))
def test_detokenization_is_byte_exact(tok, text, p, seed):
    st_tok = stochastok(tok, p, seed=seed)
    ids = st_tok.encode(text)
    assert st_tok.decode(ids) == text
    assert b"".join(tok.id_to_bytes[i] for i in ids) == text.encode("utf-8")
    assert all(0 <= i < tok.vocab_size for i in ids)
    assert not set(ids) & tok.special_ids
    assert len(ids) >= len(tok.encode(text))


def test_p_zero_is_identity_and_p_one_grows(tok):
    base = tok.encode(TEXT)
    assert stochastok(tok, 0.0).encode(TEXT) == base
    grown = [len(stochastok(tok, 1.0, seed=s).encode(TEXT)) for s in range(5)]
    assert min(grown) > len(base)


def test_encode_wraps_bos_eos_without_splitting_them(tok):
    ids = stochastok(tok, 1.0, seed=3).encode(TEXT, add_bos=True, add_eos=True)
    assert ids[0] == tok.bos_id and ids[-1] == tok.eos_id
    assert tok.decode(ids) == TEXT
    assert len(stochastok(tok, 0.5).encode_batch(["ab cd", "ef"])) == 2


def test_max_splits_caps_host_splits(tok):
    base = tok.encode(TEXT)
    out = expand_ids(base, build_expansions(tok), 1.0, np.random.default_rng(0), max_splits=3)
    assert len(out) == len(base) + 3


def test_byte_tokenizer_has_nothing_to_split():
    bt = ByteTokenizer()
    assert build_expansions(bt) == {}
    assert stochastok(bt, 1.0).encode("abc") == bt.encode("abc")


@pytest.mark.parametrize("p", [-0.1, 1.5, float("nan"), "x", None])
def test_bad_p_is_value_error(tok, p):
    with pytest.raises(ValueError, match="p must"):
        stochastok(tok, p)


def test_tokenizer_without_byte_tables_is_value_error():
    class Plain:
        vocab_size = 10

        def encode(self, text):
            return [1]

    with pytest.raises(ValueError, match="byte tables"):
        stochastok(Plain(), 0.1)


# --------------------------------------------------------------------------- device op
def _batch(tok, texts, width):
    return pad_batch(tok.encode_batch(texts), tok.pad_id, length=width)


TEXTS = [TEXT, "abc def", "the the the", "", "x"]


@FEW
@given(p=st.floats(0.0, 1.0), seed=st.integers(0, 2**16), cap=st.sampled_from([0, 7, 30]))  # few compilations
def test_split_op_keeps_text_and_vocab(tok, table, p, seed, cap):
    ids, lengths = _batch(tok, TEXTS, 70)
    out, new_len, n = map(np.asarray, stochastok_split(ids, lengths, jax.random.PRNGKey(seed), p, table,
                                                       max_splits=cap, pad_id=tok.pad_id))
    assert out.shape == ids.shape and out.dtype == np.int32
    np.testing.assert_array_equal(new_len, lengths + n)
    attempts = np.minimum(np.floor(lengths * p + 1e-4), cap)
    assert np.all(n <= attempts)
    for row, ln, text in zip(out, new_len, TEXTS):
        assert tok.decode(row[:ln]) == text
        assert np.all(row[ln:] == tok.pad_id)
        assert np.all((row >= 0) & (row < tok.vocab_size))


def test_split_op_statistics_match_the_host_loop(tok, table):
    """Same algorithm: mean number of splits of one text agrees with the reference-style host loop."""
    base = tok.encode(TEXT)
    ex = build_expansions(tok)
    rng = np.random.default_rng(0)
    host = np.mean([len(expand_ids(base, ex, 0.5, rng)) - len(base) for _ in range(400)])
    ids, lengths = pad_batch([base] * 400, tok.pad_id, length=len(base) * 2)
    _, _, n = stochastok_split(ids, lengths, jax.random.PRNGKey(1), 0.5, table, max_splits=len(base))
    dev = float(np.mean(np.asarray(n)))
    assert host > 5 and abs(dev - host) < 0.1 * host


def test_p_is_runtime_no_recompile(tok, table):
    ids, lengths = _batch(tok, TEXTS, 70)
    stochastok_split(ids, lengths, jax.random.PRNGKey(0), 0.1, table, max_splits=8)
    before = _split._cache_size()
    for p in (0.0, 0.3, 0.9):
        stochastok_split(ids, lengths, jax.random.PRNGKey(0), p, table, max_splits=8)
    assert _split._cache_size() == before
    zero, zl, zn = stochastok_split(ids, lengths, jax.random.PRNGKey(0), 0.0, table, max_splits=8, pad_id=tok.pad_id)
    np.testing.assert_array_equal(np.asarray(zero), ids)
    assert int(np.asarray(zn).sum()) == 0


def test_full_rows_skip_or_truncate(tok, table):
    base = tok.encode(TEXT)
    ids, lengths = pad_batch([base], tok.pad_id)  # exactly full
    out, ln, n = stochastok_split(ids, lengths, jax.random.PRNGKey(0), 1.0, table, max_splits=10)
    np.testing.assert_array_equal(np.asarray(out), ids)
    assert int(n[0]) == 0
    out, ln, n = stochastok_split(ids, lengths, jax.random.PRNGKey(0), 1.0, table, max_splits=10, truncate=True)
    assert int(n[0]) > 0 and int(ln[0]) == len(base)
    got = b"".join(tok.id_to_bytes[i] for i in np.asarray(out[0]))
    assert TEXT.encode().startswith(got) and len(got) < len(TEXT.encode())


def test_split_op_bad_inputs(tok, table):
    ids, lengths = _batch(tok, TEXTS, 70)
    key = jax.random.PRNGKey(0)
    with pytest.raises(ValueError, match="p must"):
        stochastok_split(ids, lengths, key, 1.2, table, max_splits=4)
    with pytest.raises(ValueError, match=r"ids must lie in \[0, 600\)"):
        stochastok_split(ids + 1000, lengths, key, 0.1, table, max_splits=4)
    with pytest.raises(ValueError, match="lengths must"):
        stochastok_split(ids, lengths + 100, key, 0.1, table, max_splits=4)
    with pytest.raises(ValueError, match=r"\[batch, seq\]"):
        stochastok_split(ids[0], lengths, key, 0.1, table, max_splits=4)
    with pytest.raises(ValueError, match="max_splits"):
        stochastok_split(ids, lengths, key, 0.1, table, max_splits=-1)
    with pytest.raises(ValueError, match="ExpansionTable"):
        stochastok_split(ids, lengths, key, 0.1, {"pairs": 1}, max_splits=4)


def test_split_op_jits_with_traced_p(tok, table):
    ids, lengths = _batch(tok, TEXTS, 70)

    @jax.jit
    def f(p, key):
        return stochastok_split(ids, lengths, key, p, table, max_splits=16)[2].sum()

    assert int(f(jnp.float32(1.0), jax.random.PRNGKey(2))) > 0
    assert int(f(jnp.float32(0.0), jax.random.PRNGKey(2))) == 0


@pytest.mark.slow  # default-suite time; the file's other tests keep the method covered in the default suite
def test_stochastok_loss_in_a_train_step(tok, table):
    import tokjax
    from tokjax.losses import next_token_loss

    cfg = tokjax.ModelConfig(vocab_size=tok.vocab_size, d_model=16, n_layers=1, n_heads=2, max_len=32)
    params = tokjax.Model.init(cfg, jax.random.PRNGKey(0)).params
    windows = jnp.asarray(np.resize(np.asarray(tok.encode(TEXT * 3)), (4, 33)), jnp.int32)
    batch = {"tokens": windows}
    key = jax.random.PRNGKey(5)
    plain = next_token_loss(params, cfg, batch, key)[0]
    same = jax.jit(lambda p: stochastok_loss(table, 0.0, max_splits=8)(p, cfg, batch, key)[0])(params)
    split = jax.jit(lambda p: stochastok_loss(table, 1.0, max_splits=8)(p, cfg, batch, key)[0])(params)
    np.testing.assert_allclose(float(same), float(plain), rtol=1e-6)
    assert np.isfinite(float(split)) and float(split) != float(plain)
    with pytest.raises(ValueError, match="mask"):
        stochastok_loss(table, 0.1, max_splits=2)(params, cfg, {**batch, "mask": jnp.ones((4, 32))}, key)
    assert isinstance(table, ExpansionTable) and table.vocab_size == tok.vocab_size


@pytest.mark.slow
def test_train_recipe_with_p_zero_equals_plain_training(tok, table):
    """tokjax.train.recipes.stochastok: p=0 changes nothing, so the params equal a plain train() run's."""
    import tokjax
    from tokjax.train import TrainConfig, train
    from tokjax.train.recipes.stochastok import train_stochastok

    cfg = tokjax.ModelConfig(vocab_size=tok.vocab_size, d_model=16, n_layers=1, n_heads=2, max_len=32)
    windows = np.resize(np.asarray(tok.encode(TEXT * 6), np.int32), (8, 17))
    tc = TrainConfig(total_steps=3, warmup_steps=1, batch_size=4, seq_len=16, eval_every=0, log_every=1)
    plain, _ = train(cfg, tc, windows, progress=False)
    same, _ = train_stochastok(cfg, tc, windows, table, 0.0, max_splits=4, progress=False)
    split, hist = train_stochastok(cfg, tc, windows, tok, 1.0, max_splits=4, progress=False)
    for a, b in zip(jax.tree.leaves(plain.params), jax.tree.leaves(same.params)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    assert np.isfinite(hist["train"][-1]["loss"])
    assert any(not np.allclose(a, b) for a, b in zip(jax.tree.leaves(plain.params), jax.tree.leaves(split.params)))
    with pytest.raises(ValueError, match="vocab_size"):
        train_stochastok(cfg.replace(vocab_size=tok.vocab_size + 1), tc, windows, table, 0.1, max_splits=2)


def test_transforms_share_the_wrapped_tokenizer_base(tok):
    from tokjax.tokenizers import WrappedTokenizer, right_to_left_digits

    for t in (stochastok(tok, 0.5), right_to_left_digits(tok)):
        assert isinstance(t, WrappedTokenizer) and t.vocab_size == tok.vocab_size  # delegated to the base
        assert t.decode(t.encode("12345 + 678")) == "12345 + 678"
        with pytest.raises(ValueError, match="single str"):
            t.encode_batch("abc")
