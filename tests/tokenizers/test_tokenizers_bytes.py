"""ByteTokenizer, pad_batch, and the Tokenizer protocol contract shared by all tokenizers."""

import pydoc_data.topics

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tokjax.tokenizers import BPETokenizer, ByteTokenizer, Tokenizer, pad_batch

DET = settings(max_examples=200, deadline=None, derandomize=True)


def corpus():
    topics = pydoc_data.topics.topics
    return [topics[k] for k in sorted(topics)][:8]


@pytest.fixture(scope="module", params=["byte", "bpe"])
def any_tok(request):
    if request.param == "byte":
        return ByteTokenizer()
    return BPETokenizer.train(corpus(), 320)


def test_byte_tokenizer_layout():
    t = ByteTokenizer()
    assert t.vocab_size == 259
    assert (t.bos_id, t.eos_id, t.pad_id) == (256, 257, 258)
    assert t.encode("aé") == [97, 0xC3, 0xA9]
    assert t.encode("a", add_bos=True, add_eos=True) == [256, 97, 257]
    assert t.token_bytes(97) == b"a" and t.token_bytes(258) == b""
    assert t.token_to_id("<|eos|>") == 257
    assert t.decode([256, 104, 105, 257, 258]) == "hi"
    t = ByteTokenizer(special_tokens=())
    assert t.vocab_size == 256 and t.bos_id is None
    with pytest.raises(ValueError, match="no bos"):
        t.encode("x", add_bos=True)


def test_byte_tokenizer_errors():
    t = ByteTokenizer()
    with pytest.raises(ValueError, match="must be a str"):
        t.encode(b"abc")
    with pytest.raises(ValueError, match=r"outside \[0, 259\)"):
        t.decode([259])
    with pytest.raises(ValueError, match="surrogate"):
        t.encode("\ud83d")
    with pytest.raises(ValueError, match="not a special token"):
        ByteTokenizer(pad_token="<pad>")


@DET
@given(text=st.text())
def test_byte_round_trip(text):
    t = ByteTokenizer()
    ids = t.encode(text, add_bos=True)
    assert len(ids) == len(text.encode("utf-8")) + 1
    assert t.decode(ids) == text


def test_protocol_contract(any_tok):
    t = any_tok
    assert isinstance(t, Tokenizer)
    assert len(t.id_to_bytes) == t.vocab_size
    assert {t.bos_id, t.eos_id, t.pad_id} <= set(t.special_ids)
    assert all(t.id_to_bytes[i] == b"" for i in t.special_ids)
    assert all(0 <= i < t.vocab_size for i in t.special_ids)
    for b, i in t.bytes_to_id.items():
        assert t.token_bytes(i) == b != b""
    text = "Protocol check: 42 héllo 👍\n"
    ids = t.encode(text, add_bos=True, add_eos=True)
    assert ids[0] == t.bos_id and ids[-1] == t.eos_id
    assert b"".join(t.id_to_bytes[i] for i in ids) == text.encode("utf-8")
    assert t.decode(ids) == text
    batch = t.encode_batch([text, "", "x"])
    assert t.decode_batch(batch) == [text, "", "x"]
    assert not isinstance(object(), Tokenizer)


@DET
@given(text=st.text(max_size=30))
def test_bytes_table_matches_decode(any_tok, text):
    ids = any_tok.encode(text)
    raw = b"".join(any_tok.id_to_bytes[i] for i in ids)
    assert raw.decode("utf-8") == any_tok.decode(ids) == text


def test_pad_batch_right_and_left():
    ids, lengths = pad_batch([[1, 2, 3], [4], []], pad_id=0)
    assert ids.dtype == np.int32 and lengths.dtype == np.int32
    np.testing.assert_array_equal(ids, [[1, 2, 3], [4, 0, 0], [0, 0, 0]])
    np.testing.assert_array_equal(lengths, [3, 1, 0])
    ids, lengths = pad_batch([[1, 2, 3], [4]], pad_id=9, length=5, left=True)
    np.testing.assert_array_equal(ids, [[9, 9, 1, 2, 3], [9, 9, 9, 9, 4]])
    np.testing.assert_array_equal(lengths, [3, 1])
    ids, lengths = pad_batch([np.array([5, 6]), (7,)], pad_id=0)
    np.testing.assert_array_equal(ids, [[5, 6], [7, 0]])
    ids, lengths = pad_batch([], pad_id=0)
    assert ids.shape == (0, 0) and lengths.shape == (0,)
    assert pad_batch([], pad_id=0, length=4)[0].shape == (0, 4)


def test_pad_batch_errors():
    with pytest.raises(ValueError, match="more than length=2"):
        pad_batch([[1], [1, 2, 3]], pad_id=0, length=2)
    with pytest.raises(ValueError, match="integer pad_id"):
        pad_batch([[1]], pad_id=None)
    with pytest.raises(ValueError, match="sequence 1"):
        pad_batch([[1], [1.5]], pad_id=0)
    with pytest.raises(ValueError, match="length must be"):
        pad_batch([[1]], pad_id=0, length=-1)


@DET
@given(
    seqs=st.lists(st.lists(st.integers(0, 1000), max_size=8), max_size=6),
    left=st.booleans(),
    extra=st.integers(0, 3),
)
def test_pad_batch_properties(seqs, left, extra):
    width = max((len(s) for s in seqs), default=0) + extra
    ids, lengths = pad_batch(seqs, pad_id=-1, length=width, left=left)
    assert ids.shape == (len(seqs), width)
    for row, n, s in zip(ids, lengths, seqs):
        assert n == len(s)
        kept = row[width - n :] if left else row[:n]
        pad = row[: width - n] if left else row[n:]
        assert kept.tolist() == s and (pad == -1).all()
