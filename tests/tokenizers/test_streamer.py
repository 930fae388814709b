"""TextStreamer: streamed pieces concatenate to decode(all ids); a split multi-byte character is never emitted half."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tokjax.tokenizers import BPETokenizer, ByteTokenizer, TextStreamer, stream_text

# Multi-byte text (2-, 3- and 4-byte characters) so the trained vocabulary has tokens holding
# character fragments, and rare characters stay split into byte tokens.
CORPUS = [
    "naïve café déjà vu — “quotes” 日本語のテキスト 🙂🚀 emoji ∑ αβγ " * 20,
    "def f(x):\n    return x + 1\n" * 20,
]


@pytest.fixture(scope="module")
def bpe():
    return BPETokenizer.train(CORPUS, 320)


def _pieces(tok, ids, chunk_sizes):
    s = TextStreamer(tok)
    out, k = [], 0
    for n in chunk_sizes:
        out.append(s.push(ids[k:k + n]))
        k += n
    out.append(s.push(ids[k:]))
    out.append(s.flush())
    return out, s


@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_pieces_concatenate_to_decode(bpe, data):
    # Random ids include lone continuation bytes and truncated sequences: decode turns them
    # into U+FFFD, and the stream must produce exactly the same text, chunked any way.
    ids = data.draw(st.lists(st.integers(0, bpe.vocab_size - 1), max_size=40))
    chunks = data.draw(st.lists(st.integers(0, 4), max_size=20))
    pieces, s = _pieces(bpe, ids, chunks)
    assert "".join(pieces) == bpe.decode(ids) == s.text


@settings(max_examples=100, deadline=None)
@given(text=st.text(alphabet=st.sampled_from(list("aé—日🙂🚀 \n∑")), max_size=30))
def test_no_half_characters_byte_tokenizer(text):
    # One token per byte: every multi-byte character is split, so every push before the last
    # byte of a character must hold it back; no piece may contain U+FFFD for valid text.
    tok = ByteTokenizer()
    ids = tok.encode(text)
    pieces, _ = _pieces(tok, ids, [1] * len(ids))
    assert all("\ufffd" not in p for p in pieces)
    assert "".join(pieces) == text


def test_emoji_split_across_bpe_tokens(bpe):
    tok = ByteTokenizer()
    s = TextStreamer(tok)
    raw = "🙂".encode()
    assert [s.push([b]) for b in raw[:3]] == ["", "", ""]  # held back, never a half character
    assert s.push([raw[3]]) == "🙂"
    # The same on a BPE tokenizer whose tokens split a rare character mid-way.
    text = "x𝄞y"  # not in the corpus: its four bytes stay separate tokens
    ids = bpe.encode(text)
    pieces, _ = _pieces(bpe, ids, [1] * len(ids))
    assert "".join(pieces) == text and all("\ufffd" not in p for p in pieces)


def test_incomplete_tail_is_flushed_as_decode_does():
    tok = ByteTokenizer()
    s = TextStreamer(tok)
    assert s.push(list("ab€".encode())[:-1]) == "ab"
    assert s.flush() == "\ufffd" and s.text == tok.decode(s.ids)


def test_stream_text_batches_rows(bpe):
    rows = [bpe.encode("café 🙂 ok"), bpe.encode("日本語")]
    n = max(map(len, rows))
    steps = [[np.asarray(r[i:i + 1]) for r in rows] for i in range(n)]
    got = ["", ""]
    for step in stream_text(bpe, steps):
        got = [g + p for g, p in zip(got, step)]
    assert got == ["café 🙂 ok", "日本語"]


def test_bad_input():
    with pytest.raises(ValueError, match="decode"):
        TextStreamer(object())
    with pytest.raises(ValueError, match="1-D"):
        TextStreamer(ByteTokenizer()).push([[1, 2]])
    with pytest.raises(ValueError, match="rows"):
        list(stream_text(ByteTokenizer(), [[np.array([97])], [np.array([97]), np.array([98])]]))


def test_reports_a_decoder_that_rewrites_text():
    class Rewriting:
        def decode(self, ids):  # capitalises the first letter only once there are two ids
            t = "".join(chr(97 + i) for i in ids)
            return t.capitalize() if len(ids) > 1 else t

    s = TextStreamer(Rewriting())
    assert s.push([0]) == "a"
    with pytest.raises(ValueError, match="prefix-stable"):
        s.push([1])
