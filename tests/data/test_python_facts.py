"""tokjax.data python_facts / check_fact: misconception-prone Python expressions whose truth is eval's."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tokjax.data._python_facts import (
    ANSWER_INSTRUCTION, FAMILIES, N_SPLITS, PythonFact, _family_splits, check_fact, extract_fact_answer,
    python_facts,
)


def test_answers_are_pythons_own_eval():
    facts = [f for fam in FAMILIES for split in _family_splits(fam) for f in split]  # every pool, whole
    assert len(facts) >= 400 * len(FAMILIES)
    for f in facts:
        assert f.answer == repr(eval(f.expression)), f  # the full builtins, not the restricted ones
        assert f.question.startswith(ANSWER_INSTRUCTION) and f"`{f.expression}`" in f.question
        assert len(f.answer) <= 12
    # the classic misconceptions are in the pools with their true answers
    by_expr = {f.expression: f.answer for f in facts}
    for expr, want in {"0.1 + 0.2 == 0.3": "False", "round(2.5)": "2", "-7 // 2": "-4", "-7 % 3": "2",
                       'bool("False")': "True", "bool([])": "False", "bool(0.0)": "False", "int(-2.7)": "-2",
                       '"7" * 3': "'777'", "6 / 3": "2.0", "-3 ** 2": "-9", "True + 3": "4"}.items():
        assert by_expr[expr] == want


def test_families_splits_and_determinism():
    assert len(FAMILIES) >= 6
    a = python_facts(70, 0)
    assert a == python_facts(70, 0) and python_facts(10, 0) == a[:10]  # nested: a store of 10 inside 100
    assert {f.family for f in a} == set(FAMILIES) and all(isinstance(f, PythonFact) for f in a)
    counts = {fam: sum(f.family == fam for f in a) for fam in FAMILIES}
    assert set(counts.values()) == {7}
    splits = [{f.expression for f in python_facts(40 * len(FAMILIES), s)} for s in range(N_SPLITS)]
    for i in range(N_SPLITS):
        for j in range(i + 1, N_SPLITS):
            assert not splits[i] & splits[j]  # disjoint splits
    sub = python_facts(9, 3, families=["truthiness", "bankers_rounding"])
    assert [f.family for f in sub[:4]] == ["truthiness", "bankers_rounding"] * 2 and len(sub) == 9
    assert python_facts(5, 1, families="true_division")[0].family == "true_division"
    answers = {f.answer for f in python_facts(100, 2, families=["float_equality", "truthiness"])}
    assert answers == {"True", "False"}  # both truth values occur


@pytest.mark.parametrize("text, answer, expr, want", [
    ("False", "False", None, True),
    ("false.", "False", None, True),
    ("`-4`", "-4", "-7 // 2", True),
    ("-7 // 2 evaluates to -4.", "-4", "-7 // 2", True),
    ("-7//2 = -4", "-4", "-7 // 2", True),           # an echo with other spacing is skipped
    ("-3", "-4", "-7 // 2", False),
    ("'777'", "'777'", '"7" * 3', True),
    ("777", "'777'", '"7" * 3', True),
    ("21", "'777'", '"7" * 3', False),
    ("2", "2.0", "6 / 3", False),                       # the type matters: true division gives a float
    ("The answer is 2.0", "2.0", "6 / 3", True),
    ("\u22129", "-9", "-3 ** 2", True),                # a Unicode minus
    ("-160,000", "-160000", "-400 ** 2", True),
    ("The Python expression `round(26", "26", "round(26.5)", False),  # a cut-off echo is no answer
    ("`int(-10.6)` is -10", "-10", "int(-10.6)", True),
    ("False", "False", "bool(False)", True),        # a bare answer that also occurs in the expression
    ("The value of `bool(())` is False.", "False", "bool(())", True),
    ("I am not sure.", "True", None, False),
    ("", "0", None, False),
])
def test_check_fact(text, answer, expr, want):
    assert check_fact(text, answer, expr) is want


def test_check_fact_takes_a_fact():
    f = python_facts(1, 0, families="floor_division")[0]
    assert check_fact(f"{f.expression} is {f.answer}", f)
    assert extract_fact_answer("Result: `True`, since ...") == "True"


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, N_SPLITS - 1), n=st.integers(1, 60))
def test_a_fact_grades_its_own_answer(seed, n):
    for f in python_facts(n, seed):
        assert check_fact(f.answer, f) and check_fact(f"`{f.answer}`", f.answer)


def test_bad_args():
    with pytest.raises(ValueError, match="n must be"):
        python_facts(0, 0)
    with pytest.raises(ValueError, match=r"seed selects one of the 8 disjoint splits"):
        python_facts(5, N_SPLITS)
    with pytest.raises(ValueError, match="seed must be"):
        python_facts(5, -1)
    with pytest.raises(ValueError, match="unknown python_facts families"):
        python_facts(5, 0, families=["astrology"])
    with pytest.raises(ValueError, match="at least one family"):
        python_facts(5, 0, families=[])
    with pytest.raises(ValueError, match="distinct"):
        python_facts(5, 0, families=["truthiness", "truthiness"])
    with pytest.raises(ValueError, match="ask for fewer"):
        python_facts(10_000, 0)
    with pytest.raises(ValueError, match="answer must be a non-empty str"):
        check_fact("2", "")
    with pytest.raises(ValueError, match="text must be a str"):
        check_fact(None, "2")
