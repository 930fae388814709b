"""split_digits: the pure digit-grouping policies, and agreement with the HF regex engine."""

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tokenizers import Regex, pre_tokenizers

from tokjax.tokenizers import DIGIT_PATTERNS, DIGIT_POLICIES, split_digits

DET = settings(max_examples=200, deadline=None, derandomize=True)

# Digits, letters, spaces and non-ASCII digits (which must NOT be grouped).
mixed_text = st.text(alphabet=st.sampled_from(list("0123456789") * 3 + list("ab x\n.-") + ["٣", "５", "é"]))


@pytest.mark.parametrize(
    "text, policy, expected",
    [
        ("12345", "l2r3", ["123", "45"]),
        ("12345", "r2l3", ["12", "345"]),
        ("1234567", "l2r3", ["123", "456", "7"]),
        ("1234567", "r2l3", ["1", "234", "567"]),
        ("1234", "r2l3", ["1", "234"]),
        ("123456", "r2l3", ["123", "456"]),
        ("123", "r2l3", ["123"]),
        ("x12345y", "r2l3", ["x", "12", "345", "y"]),
        ("x12345y", "l2r3", ["x", "123", "45", "y"]),
        ("x12345y", "single", ["x", "1", "2", "3", "4", "5", "y"]),
        ("x12345y", "none", ["x12345y"]),
        ("a1b22c333d4444", "r2l3", ["a", "1", "b", "22", "c", "333", "d", "4", "444"]),
        ("12 3456", "r2l3", ["12", " ", "3", "456"]),
        ("3.14159", "r2l3", ["3", ".", "14", "159"]),
        ("3.14159", "l2r3", ["3", ".", "141", "59"]),
        ("abc", "r2l3", ["abc"]),
        ("", "none", []),
        ("", "r2l3", []),
        # Only ASCII digits are grouped, matching the HF pre-tokenizer.
        ("٣٤٥٦", "r2l3", ["٣٤٥٦"]),
        ("１２３４", "single", ["１２３４"]),
    ],
)
def test_split_digits_examples(text, policy, expected):
    assert split_digits(text, policy) == expected


def test_unknown_policy_is_value_error():
    with pytest.raises(ValueError, match="unknown digits policy"):
        split_digits("123", "r2l")
    with pytest.raises(ValueError, match="unknown digits policy"):
        split_digits("123", None)


def test_non_str_is_value_error():
    with pytest.raises(ValueError, match="str"):
        split_digits(b"123", "single")


def _runs(pieces):
    """Group consecutive all-digit pieces into runs (lists of group lengths)."""
    runs, cur = [], []
    for p in pieces:
        if re.fullmatch(r"[0-9]+", p):
            cur.append(len(p))
        else:
            if cur:
                runs.append(cur)
            cur = []
    if cur:
        runs.append(cur)
    return runs


@DET
@given(text=mixed_text, policy=st.sampled_from(DIGIT_POLICIES))
def test_split_digits_properties(text, policy):
    pieces = split_digits(text, policy)
    assert "".join(pieces) == text
    assert all(pieces)
    if policy == "none":
        assert pieces == ([text] if text else [])
        return
    # Every piece is either a digit group or digit-free text; no two digit-free
    # pieces are adjacent (stretches between runs stay whole).
    for p in pieces:
        assert re.fullmatch(r"[0-9]+", p) or not re.search(r"[0-9]", p)
    for a, b in zip(pieces, pieces[1:]):
        assert re.search(r"[0-9]", a) or re.search(r"[0-9]", b)
    expected_runs = [len(m) for m in re.findall(r"[0-9]+", text)]
    runs = _runs(pieces)
    assert [sum(r) for r in runs] == expected_runs
    for r in runs:
        if policy == "single":
            assert set(r) == {1}
        elif policy == "l2r3":
            assert all(n == 3 for n in r[:-1]) and 1 <= r[-1] <= 3
        else:
            assert all(n == 3 for n in r[1:]) and 1 <= r[0] <= 3


@DET
@given(text=mixed_text, policy=st.sampled_from([p for p in DIGIT_POLICIES if p != "none"]))
def test_hf_split_agrees_with_python(text, policy):
    # The same pattern runs in Oniguruma at encode time; both engines must cut identically.
    hf_split = pre_tokenizers.Split(Regex(DIGIT_PATTERNS[policy]), behavior="isolated")
    assert [p for p, _ in hf_split.pre_tokenize_str(text)] == split_digits(text, policy)
