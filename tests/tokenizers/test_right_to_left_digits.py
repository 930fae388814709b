"""P70 digit grouping transforms: R2L / L2R / single-digit encoding, comma grouping, arithmetic encoding."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tokjax.data import arithmetic
from tokjax.tokenizers import BPETokenizer, ByteTokenizer, split_digits
from tokjax.tokenizers.right_to_left_digits import (
    encode_arithmetic,
    group_digits,
    right_to_left_digits,
    split_digit_groups,
)

FEW = settings(max_examples=40, deadline=None, derandomize=True)
mixed = st.text(alphabet=st.sampled_from(list("0123456789") * 4 + list("+= ab.\n") + ["٣", "é", "🙂"]), max_size=40)


@pytest.fixture(scope="module")
def toks():
    texts = [e.text for e in arithmetic(6000, digits=(1, 6), seed=0)]
    return {p: BPETokenizer.train(texts, vocab_size=1400, digits=p, min_frequency=1) for p in ("none", "l2r3")}


@pytest.mark.parametrize(
    "policy, groups",
    [
        ("r2l3", ["1", "234", "567", "+", "89", "=", "1", "234", "656"]),
        ("l2r3", ["123", "456", "7", "+", "89", "=", "123", "465", "6"]),
        ("single", list("1234567+89=1234656")),
        ("r2l2", ["1", "23", "45", "67", "+", "89", "=", "1", "23", "46", "56"]),
        ("l2r2", ["12", "34", "56", "7", "+", "89", "=", "12", "34", "65", "6"]),
    ],
)
def test_groups_on_addition(toks, policy, groups):
    tok = right_to_left_digits(toks["l2r3"], policy)
    ids = tok.encode("1234567+89=1234656")
    assert [toks["l2r3"].id_to_bytes[i].decode() for i in ids] == groups
    assert tok.decode(ids) == "1234567+89=1234656"


@FEW
@given(text=mixed, policy=st.sampled_from(["none", "single", "l2r3", "r2l3"]))
def test_no_token_crosses_a_group_boundary(toks, text, policy):
    base = toks["none"]
    tok = right_to_left_digits(base, policy)
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    # Token boundaries include every group boundary: the pieces' encodings concatenated.
    expected = [i for piece in split_digits(text, policy) for i in base.encode(piece)]
    assert ids == expected
    cuts = np.cumsum([len(base.id_to_bytes[i]) for i in ids]).tolist()
    group_cuts = np.cumsum([len(p.encode()) for p in split_digits(text, policy)]).tolist()
    assert set(group_cuts) <= set(cuts)


@FEW
@given(text=mixed)
def test_transform_equals_the_hf_pre_tokenizer_policy(toks, text):
    """The same L2R grouping done by the transform and by BPETokenizer's own pre-tokenizer."""
    tok = toks["l2r3"]
    assert right_to_left_digits(tok, "l2r3").encode(text) == tok.encode(text)


@FEW
@given(text=mixed)
def test_sized_policies_match_the_shared_ones(text):
    """Group size 3 is exactly _digits' l2r3 / r2l3, size 1 is 'single'."""
    for sized, named in (("l2r3", "l2r3"), ("r2l3", "r2l3"), ("l2r1", "single"), ("r2l1", "single")):
        assert split_digit_groups(text, sized) == split_digits(text, named)


@FEW
@given(text=mixed, n=st.integers(1, 9), direction=st.sampled_from(["l2r", "r2l"]))
def test_sized_groups_partition_each_digit_run(text, n, direction):
    pieces = split_digit_groups(text, f"{direction}{n}")
    assert "".join(pieces) == text
    runs, run = [], []
    for piece in pieces + ["x"]:  # group the pieces of each maximal ASCII digit run
        if piece and all(c in "0123456789" for c in piece):
            run.append(len(piece))
        elif run:
            runs.append(run)
            run = []
    for lengths in runs:
        assert all(1 <= k <= n for k in lengths)
        # Only the group at the open end of the run may be short: the last from the left, the first from the right.
        full = lengths[:-1] if direction == "l2r" else lengths[1:]
        assert all(k == n for k in full)


def test_r2l_on_an_l2r_vocabulary_uses_three_digit_tokens(toks):
    tok = right_to_left_digits(toks["l2r3"], "r2l3")
    ids = tok.encode("1234567")
    assert [toks["l2r3"].id_to_bytes[i] for i in ids] == [b"1", b"234", b"567"]


def test_bytes_tokenizer_and_bos_eos():
    bt = ByteTokenizer()
    tok = right_to_left_digits(bt, "r2l3")
    assert tok.encode("12345") == bt.encode("12345")
    ids = tok.encode("12345", add_bos=True, add_eos=True)
    assert ids[0] == bt.bos_id and ids[-1] == bt.eos_id and tok.decode(ids) == "12345"
    assert tok.vocab_size == bt.vocab_size  # the protocol is delegated


@pytest.mark.parametrize(
    "text, policy, expected",
    [
        ("1234567", "r2l3", "1,234,567"),
        ("1234567", "l2r3", "123,456,7"),
        ("x12345+678=13023", "r2l3", "x12,345+678=13,023"),
        ("1234", "single", "1,2,3,4"),
        ("12345", "r2l2", "1,23,45"),
        ("12345", "l2r2", "12,34,5"),
        ("no digits", "r2l3", "no digits"),
        ("٣٤٥٦7", "r2l3", "٣٤٥٦7"),
        ("", "r2l3", ""),
    ],
)
def test_group_digits(text, policy, expected):
    assert group_digits(text, policy) == expected
    assert group_digits(text, policy).replace(",", "") == text.replace(",", "")


def test_encode_arithmetic_masks_the_completion(toks):
    exs = arithmetic(20, digits=(1, 5), seed=3)
    tok = right_to_left_digits(toks["l2r3"], "r2l3")
    enc = encode_arithmetic(tok, exs)
    for ex, row, ln, pl, m in zip(exs, enc["tokens"], enc["lengths"], enc["prompt_lengths"], enc["mask"]):
        assert tok.decode(row[:pl]) == ex.prompt
        assert tok.decode(row[pl:ln]) == ex.completion
        assert row[ln - 1] == tok.eos_id
        assert np.all(row[ln:] == tok.pad_id)
        np.testing.assert_array_equal(np.nonzero(m)[0] + 1, np.arange(pl, ln))


def test_bad_inputs(toks):
    with pytest.raises(ValueError, match="unknown digits policy"):
        right_to_left_digits(toks["none"], "r2l")
    with pytest.raises(ValueError, match="unknown digits policy"):
        group_digits("123", "rtl")
    for bad in ("r2l0", "l2r10", "R2L3", 3, None):
        with pytest.raises(ValueError, match="unknown digits policy"):
            split_digit_groups("123", bad)
    with pytest.raises(ValueError, match="str"):
        split_digit_groups(123, "r2l2")
    with pytest.raises(ValueError, match="str"):
        right_to_left_digits(toks["none"]).encode(123)
    with pytest.raises(ValueError, match="encode"):
        right_to_left_digits(object())
    with pytest.raises(ValueError, match="width"):
        encode_arithmetic(toks["none"], arithmetic(3, digits=4), width=3)
