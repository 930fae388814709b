"""Tests for the open-set knowledge probes (tokjax.data._open_sets; P73's navigation task)."""

import builtins
import keyword
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tokjax.data._open_sets import OpenSetProbe, distinct_correct, normalize_answer, open_sets

PROBES = {p.name: p for p in open_sets()}


def test_probes_are_deterministic_named_and_multi_answer():
    a, b = open_sets(), open_sets()
    assert a == b  # same probes, same order, same truth
    assert 8 <= len(a) <= 12
    assert len(PROBES) == len(a)  # unique names
    for p in a:
        assert p.question.endswith(".") and len(p.truth) >= 8, p.name
        assert all(isinstance(t, str) and t for t in p.truth)


def test_truth_comes_from_the_standard_library():
    assert PROBES["keywords"].truth == frozenset(keyword.kwlist)
    assert PROBES["stdlib-modules"].truth <= sys.stdlib_module_names
    assert {"os", "sys", "math", "json", "itertools"} <= PROBES["stdlib-modules"].truth
    assert not any(m.startswith("_") for m in PROBES["stdlib-modules"].truth)
    assert {"len", "print", "sorted", "help", "int"} <= PROBES["builtin-functions"].truth
    assert not {"ValueError", "exit", "quit", "copyright"} & PROBES["builtin-functions"].truth
    assert {"ValueError", "KeyError", "StopIteration", "Exception"} <= PROBES["builtin-exceptions"].truth
    assert all(issubclass(getattr(builtins, n), BaseException) for n in PROBES["builtin-exceptions"].truth)
    assert {"upper", "split", "join", "strip"} <= PROBES["str-methods"].truth
    assert {"append", "pop", "sort"} <= PROBES["list-methods"].truth
    assert {"keys", "items", "get", "setdefault"} <= PROBES["dict-methods"].truth
    assert {"add", "union", "discard"} <= PROBES["set-methods"].truth
    assert {"sqrt", "floor", "gcd"} <= PROBES["math-functions"].truth and "pi" not in PROBES["math-functions"].truth
    assert {"chain", "product", "groupby"} <= PROBES["itertools-functions"].truth
    assert PROBES["string-constants"].truth == {"ascii_letters", "ascii_lowercase", "ascii_uppercase", "digits",
                                                "hexdigits", "octdigits", "printable", "punctuation", "whitespace"}
    assert {"int", "dict", "frozenset"} <= PROBES["builtin-types"].truth and "len" not in PROBES["builtin-types"].truth


@pytest.mark.parametrize("name,text", [
    ("keywords", "if"), ("keywords", " `lambda`"), ("keywords", "The Python keyword is `None`."),
    ("keywords", "yield\nSome explanation"), ("keywords", "`async"),  # an answer the prompt's backtick opened
    ("builtin-functions", "len()"), ("builtin-functions", "`print()`."), ("builtin-functions", "1. sorted"),
    ("builtin-functions", "- zip"), ("stdlib-modules", "import os"), ("stdlib-modules", "`os.path`"),
    ("stdlib-modules", "json."), ("builtin-exceptions", "ValueError: invalid literal"),
    ("builtin-exceptions", "builtins.KeyError"), ("str-methods", "str.upper()"), ("str-methods", "'strip'"),
    ("list-methods", "list.append(x)"), ("dict-methods", "**get**"), ("string-constants", "string.digits"),
])
def test_check_accepts_true_answers(name, text):
    assert PROBES[name].check(text), (name, text, PROBES[name].normalize(text))


@pytest.mark.parametrize("name,text", [
    ("keywords", "print"), ("keywords", "IF"), ("keywords", ""), ("keywords", "   \n  "), ("keywords", "!!!"),
    ("builtin-functions", "ValueError"), ("builtin-functions", "exit"), ("builtin-functions", "The answer is len"),
    ("stdlib-modules", "numpy"), ("stdlib-modules", "_abc"), ("builtin-exceptions", "MyError"),
    ("str-methods", "append"), ("str-methods", "__len__"), ("list-methods", "upper"),
    ("math-functions", "pi"), ("string-constants", "capwords"),
])
def test_check_rejects_wrong_answers(name, text):
    assert not PROBES[name].check(text), (name, text, PROBES[name].normalize(text))


def test_normalize_answer_forms():
    assert normalize_answer("  `len()`.  ") == "len"
    assert normalize_answer("str.upper()") == "str.upper"
    assert normalize_answer("str.upper()", "last") == "upper"
    assert normalize_answer("os.path.join", "head") == "os"
    assert normalize_answer("\n\n2) from collections import deque") == "collections"
    assert normalize_answer("Use ``zip`` here") == "zip"
    assert normalize_answer("") == "" and normalize_answer("...") == ""


def test_distinct_correct_counts_each_correct_name_once():
    p = PROBES["keywords"]
    assert distinct_correct(p, ["if", "`if`", "if.", "for", "print", "", "while"]) == 3
    assert distinct_correct(p, []) == 0


@settings(max_examples=30, deadline=None)
@given(st.sampled_from(sorted(PROBES)), st.data())
def test_every_true_name_is_accepted_in_any_wrapping(name, data):
    p = PROBES[name]
    word = data.draw(st.sampled_from(sorted(p.truth)))
    wrap = data.draw(st.sampled_from(["{}", "`{}`", "{}.", " {} ", "`{}()`", "1. {}", "{}\nmore text", "'{}'"]))
    assert p.normalize(wrap.format(word)) == word
    assert p.check(wrap.format(word))


def test_bad_input():
    with pytest.raises(ValueError, match="empty truth"):
        OpenSetProbe("x", "Name one.", frozenset())
    with pytest.raises(ValueError, match="dotted"):
        OpenSetProbe("x", "Name one.", frozenset({"a"}), dotted="middle")
    with pytest.raises(ValueError, match="needs a str"):
        normalize_answer(None)
    with pytest.raises(ValueError, match="dotted"):
        normalize_answer("a", "x")
    with pytest.raises(ValueError, match="list of answers"):
        distinct_correct(PROBES["keywords"], "if")
