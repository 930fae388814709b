"""Tests for TokenDataset."""

import math

import numpy as np
import pytest

from tokjax.data import Corpus, TokenDataset, load_corpus, pack_sequences, split_corpus


class ByteTokenizer:
    eos_id = 256

    def encode(self, text):
        return list(text.encode("utf-8"))


class PairTokenizer:
    """Two bytes per token, no eos attribute."""

    def encode(self, text):
        b = text.encode("utf-8")
        return [b[i] * 256 + (b[i + 1] if i + 1 < len(b) else 0) for i in range(0, len(b), 2)]


class EncodingLike:
    def __init__(self, ids):
        self.ids = ids


class HFStyleTokenizer:
    eos_id = 0

    def encode(self, text):
        return EncodingLike([1 + (c % 50) for c in text.encode()])


def test_from_corpus_bytes():
    ds = TokenDataset.from_corpus("pydocs", ByteTokenizer(), seq_len=64, val_fraction=0.1)
    c = load_corpus("pydocs")
    train_docs, val_docs = split_corpus(c, 0.1, seed=0)
    assert ds.name == "pydocs" and ds.seq_len == 64 and ds.eos_id == 256
    assert ds.train.dtype == np.int32 and ds.train.shape[1] == 65
    assert ds.val.shape[1] == 65 and ds.val.shape[0] > 0
    assert ds.train_num_bytes == sum(len(d.encode()) for d in train_docs)
    assert ds.val_num_bytes == sum(len(d.encode()) for d in val_docs)
    assert ds.val_num_tokens == ds.val_num_bytes
    assert ds.bytes_per_token == 1.0
    expected = pack_sequences([list(d.encode()) for d in train_docs], 64, eos_id=256)
    np.testing.assert_array_equal(ds.train, expected)


def test_bytes_per_token_and_bpb():
    c = Corpus(name="toy", documents=[f"doc {i} " * 20 for i in range(30)],
               doc_names=[str(i) for i in range(30)])
    ds = TokenDataset.from_corpus(c, PairTokenizer(), seq_len=8, val_fraction=0.2, seed=1)
    assert ds.eos_id is None and ds.name == "toy"
    assert 1.9 < ds.bytes_per_token <= 2.0
    assert ds.bytes_per_token == ds.val_num_bytes / ds.val_num_tokens
    assert math.isclose(ds.bits_per_byte(math.log(2) * 2), 2 / ds.bytes_per_token)


def test_hf_encoding_objects_and_batches():
    ds = TokenDataset.from_corpus("pydocs", HFStyleTokenizer(), seq_len=32, max_bytes=50_000)
    assert ds.train.max() <= 50
    b = next(ds.batches(4, seed=0))
    assert b["tokens"].shape == (4, 33)
    v = list(ds.batches(2, seed=0, split="val", epochs=1, shuffle=False))
    np.testing.assert_array_equal(v[0]["tokens"], ds.val[:2])
    with pytest.raises(ValueError, match="split"):
        ds.batches(2, seed=0, split="test")


def test_no_validation_split():
    ds = TokenDataset.from_corpus("pydocs", ByteTokenizer(), seq_len=16, val_fraction=0.0,
                                  max_bytes=20_000)
    assert ds.val.shape == (0, 17) and ds.val_num_bytes == 0
    assert ds.bytes_per_token == 1.0


def test_bad_inputs():
    with pytest.raises(ValueError, match="Unknown corpus"):
        TokenDataset.from_corpus("nope", ByteTokenizer(), 8)
    with pytest.raises(ValueError, match="seq_len"):
        TokenDataset.from_corpus("pydocs", ByteTokenizer(), 0, max_bytes=1000)
    with pytest.raises(ValueError, match="val_fraction"):
        TokenDataset.from_corpus("pydocs", ByteTokenizer(), 8, val_fraction=1.0)
    with pytest.raises(ValueError, match=r"validation split.*only 2 tokens.*needs seq_len \+ 1 = 9"):
        TokenDataset.from_texts(["a" * 100], ["b"], ByteTokenizer(), 8)
    with pytest.raises(ValueError, match="train split.*only 2 tokens"):
        TokenDataset.from_texts(["a"], ["b" * 100], ByteTokenizer(), 8)
