"""BPETokenizer: training, exact round trips, digit policies, specials, bad input."""

import pydoc_data.topics

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tokjax.tokenizers import DIGIT_POLICIES, BPETokenizer, Tokenizer, pad_batch, split_digits

DET = settings(max_examples=200, deadline=None, derandomize=True)

SPECIALS = ("<|bos|>", "<|eos|>", "<|pad|>")
TRICKY = [
    "",
    " ",
    "  ",
    "\n",
    "\t \n ",
    "\x00",
    "a\x00b",
    " leading and trailing ",
    "emoji 👍🏽 family 👨‍👩‍👧",
    "e\u0301 combining",
    "中文字符和日本語のテキスト",
    "<|bos|> literal specials <|eos|><|pad|>",
    "x1234567y 12345 3.14159 -0042",
    "\r\n\r\n",
    "\ufeffbom",
    "\U0010ffff",
    "'s 're 've",
]


def corpus():
    """About 40 KB of CPython help text plus numbers, so digit merges get learned."""
    topics = pydoc_data.topics.topics
    texts = [topics[k] for k in sorted(topics)][:12]
    rng = np.random.default_rng(0)
    numbers = " ".join(str(n) for n in rng.integers(0, 10**7, size=1500))
    # Repeated numbers make whole digit groups frequent enough to merge.
    repeated = " ".join(["1234567 x12345y 12345 3.14159"] * 40)
    return texts + [numbers, repeated]


@pytest.fixture(scope="module")
def toks():
    return {d: BPETokenizer.train(corpus(), 500, digits=d) for d in DIGIT_POLICIES}


@pytest.fixture(scope="module")
def tok(toks):
    return toks["none"]


def test_layout_and_protocol(tok):
    assert isinstance(tok, Tokenizer)
    assert tok.vocab_size == 500
    assert (tok.bos_id, tok.eos_id, tok.pad_id) == (0, 1, 2)
    assert tok.special_ids == frozenset({0, 1, 2})
    assert tok.special_tokens == SPECIALS
    assert len(tok.id_to_bytes) == tok.vocab_size
    assert all(tok.id_to_bytes[i] == b"" for i in tok.special_ids)
    # All 256 single bytes are in the vocabulary, so any byte string is encodable.
    assert all(bytes([b]) in tok.bytes_to_id for b in range(256))
    for b, i in tok.bytes_to_id.items():
        assert tok.id_to_bytes[i] == b and tok.token_bytes(i) == b
    assert len(tok.bytes_to_id) == tok.vocab_size - 3  # byte-level BPE tokens are distinct
    # Learned merges exist: some tokens are longer than one byte.
    assert max(len(b) for b in tok.id_to_bytes) > 3


@pytest.mark.parametrize("text", TRICKY)
@pytest.mark.parametrize("policy", DIGIT_POLICIES)
def test_tricky_round_trip(toks, policy, text):
    t = toks[policy]
    ids = t.encode(text)
    assert t.decode(ids) == text
    assert b"".join(t.id_to_bytes[i] for i in ids) == text.encode("utf-8")
    assert not set(ids) & t.special_ids


@DET
@given(text=st.text(), policy=st.sampled_from(DIGIT_POLICIES))
def test_round_trip_any_text(toks, text, policy):
    t = toks[policy]
    ids = t.encode(text)
    assert t.decode(ids) == text
    assert b"".join(t.id_to_bytes[i] for i in ids) == text.encode("utf-8")


pieces = st.sampled_from(["<|bos|>", "<|eos|>", "<|pad|>", "12345", "0", " ", "  ", "\n", "é", "e\u0301", "👍", "\x00", "ab", "<|", "|>"])


@DET
@given(parts=st.lists(pieces, max_size=12), policy=st.sampled_from(DIGIT_POLICIES))
def test_round_trip_special_spellings(toks, parts, policy):
    t = toks[policy]
    text = "".join(parts)
    ids = t.encode(text, add_bos=True, add_eos=True)
    assert ids[0] == t.bos_id and ids[-1] == t.eos_id
    # Special-token spellings in text are literal text, never special ids.
    assert not set(ids[1:-1]) & t.special_ids
    assert t.decode(ids) == text


def _token_boundaries(t, ids):
    """Char offsets at which tokens end (text here is ASCII, so bytes == chars)."""
    ends, pos = set(), 0
    for i in ids:
        pos += len(t.id_to_bytes[i])
        ends.add(pos)
    return ends


@DET
@given(text=st.text(alphabet=st.sampled_from(list("0123456789" * 4) + list("ab ,.")), max_size=40))
def test_digit_groups_are_token_boundaries(toks, text):
    for policy in ("single", "l2r3", "r2l3"):
        t = toks[policy]
        ids = t.encode(text)
        assert t.decode(ids) == text
        group_ends, pos = set(), 0
        for p in split_digits(text, policy):
            pos += len(p)
            group_ends.add(pos)
        # No token crosses a digit-group boundary.
        assert group_ends <= _token_boundaries(t, ids) | {0}


def test_digit_policies_on_examples(toks):
    def pieces(t, text):
        return [t.id_to_bytes[i].decode() for i in t.encode(text)]

    # With this numeric corpus whole 3-digit groups become single tokens.
    assert pieces(toks["l2r3"], "1234567") == ["123", "456", "7"]
    assert pieces(toks["r2l3"], "1234567") == ["1", "234", "567"]
    assert pieces(toks["single"], "1234567") == list("1234567")
    assert pieces(toks["r2l3"], "x12345y")[1:3] == ["12", "345"]
    assert pieces(toks["l2r3"], "x12345y")[1:3] == ["123", "45"]
    # Without a policy BPE learns tokens spanning more than 3 digits or crossing groups.
    digit_tokens = [b for b in toks["none"].id_to_bytes if b.strip().isdigit()]
    assert any(len(b.strip()) > 3 for b in digit_tokens)
    for policy in ("single", "l2r3", "r2l3"):
        longest = max(len(b.strip()) for b in toks[policy].id_to_bytes if b.strip().isdigit())
        assert longest <= (1 if policy == "single" else 3)


def test_training_is_deterministic():
    a = BPETokenizer.train(corpus(), 400, digits="r2l3")
    b = BPETokenizer.train(iter(corpus()), 400, digits="r2l3")
    assert a.hf.to_str() == b.hf.to_str()


def test_custom_specials_and_roles():
    t = BPETokenizer.train(corpus(), 400, special_tokens=("<s>", "</s>", "<unk>"))
    assert (t.bos_id, t.eos_id, t.pad_id) == (0, 1, None)
    t = BPETokenizer.train(corpus(), 400, special_tokens=("[A]", "[B]"), bos_token="[B]", pad_token="[A]")
    assert (t.bos_id, t.eos_id, t.pad_id) == (1, None, 0)
    assert t.encode("hi", add_bos=True)[0] == 1
    with pytest.raises(ValueError, match="no eos"):
        t.encode("hi", add_eos=True)
    with pytest.raises(ValueError, match="not a special token"):
        BPETokenizer.train(corpus(), 400, bos_token="<nope>")
    t = BPETokenizer.train(corpus(), 400, special_tokens=())
    assert t.special_ids == frozenset() and t.bos_id is None
    assert t.decode(t.encode("plain text")) == "plain text"


def test_batch_and_padding(tok):
    texts = TRICKY + ["a longer sentence with numbers 1234 in it."]
    batch = tok.encode_batch(texts, add_bos=True)
    assert batch == [tok.encode(x, add_bos=True) for x in texts]
    for left in (False, True):
        arr, lengths = pad_batch(batch, tok.pad_id, left=left)
        assert arr.dtype == np.int32 and lengths.dtype == np.int32
        assert tok.decode_batch(arr) == texts
        assert tok.decode_batch(list(arr)) == texts
    assert tok.encode_batch([]) == [] and tok.decode_batch([]) == []


def test_decode_accepts_arrays_and_partial_utf8(tok):
    ids = tok.encode("héllo 👍")
    assert tok.decode(np.array(ids, dtype=np.int32)) == "héllo 👍"
    assert tok.decode(tuple(ids)) == "héllo 👍"
    assert tok.decode([]) == ""
    # A lone continuation byte is invalid UTF-8 and shows as U+FFFD.
    assert tok.decode([tok.bytes_to_id[b"\x9f"]]) == "\ufffd"


def test_bad_training_input():
    with pytest.raises(ValueError, match="empty training corpus"):
        BPETokenizer.train([], 400)
    with pytest.raises(ValueError, match="empty training corpus"):
        BPETokenizer.train(["", ""], 400)
    with pytest.raises(ValueError, match="empty training corpus"):
        BPETokenizer.train(iter(()), 400)
    with pytest.raises(ValueError, match="smaller than 256"):
        BPETokenizer.train(corpus(), 258)
    with pytest.raises(ValueError, match="smaller than 256"):
        BPETokenizer.train(corpus(), 300, special_tokens=tuple(f"<{i}>" for i in range(50)))
    with pytest.raises(ValueError, match="unknown digits policy"):
        BPETokenizer.train(corpus(), 400, digits="r2l")
    with pytest.raises(ValueError, match="vocab_size must be an int"):
        BPETokenizer.train(corpus(), 400.0)
    with pytest.raises(ValueError, match="not a single str"):
        BPETokenizer.train("some text", 400)
    with pytest.raises(ValueError, match="item 1 is bytes"):
        BPETokenizer.train(["ok", b"bytes"], 400)
    with pytest.raises(ValueError, match="duplicates"):
        BPETokenizer.train(corpus(), 400, special_tokens=("<a>", "<a>"))
    with pytest.raises(ValueError, match="no merges"):
        BPETokenizer.train(corpus(), 259)


def test_bad_encode_decode_input(tok):
    for bad in (b"bytes", None, 3, ["list"]):
        with pytest.raises(ValueError, match="must be a str"):
            tok.encode(bad)
    with pytest.raises(ValueError, match="single str"):
        tok.encode_batch("not a list")
    with pytest.raises(ValueError, match=r"texts\[1\]"):
        tok.encode_batch(["ok", 5])
    with pytest.raises(ValueError, match="surrogate"):
        tok.encode("a\ud800b")
    with pytest.raises(ValueError, match="surrogate"):
        tok.encode_batch(["fine", "a\udfffb"])
    for bad in ([tok.vocab_size], [-1], [0, 1, 10**9]):
        with pytest.raises(ValueError, match=r"outside \[0, 500\)"):
            tok.decode(bad)
    with pytest.raises(ValueError, match=r"outside"):
        tok.decode_batch([[1, 2], [tok.vocab_size]])
    with pytest.raises(ValueError, match="integers"):
        tok.decode(np.array([1.0, 2.0]))
    with pytest.raises(ValueError, match="integers"):
        tok.decode([True, False])
    with pytest.raises(ValueError, match="1-D"):
        tok.decode(np.zeros((2, 2), dtype=np.int32))
    with pytest.raises(ValueError, match="outside"):
        tok.token_bytes(tok.vocab_size)
