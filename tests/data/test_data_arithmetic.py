"""Tests for the arithmetic task generator."""

import pytest

from tokjax.data import arithmetic, digit_steps, extract_answer


def test_addition_examples_are_correct():
    exs = arithmetic(300, digits=(1, 5), seed=0)
    assert len(exs) == 300
    for e in exs:
        a, b = e.prompt[:-1].split("+")
        assert (int(a), int(b)) == (e.a, e.b)
        assert e.prompt == f"{e.a}+{e.b}=" and e.answer == str(e.a + e.b)
        assert e.completion == e.answer and e.text == e.prompt + e.answer
        assert 1 <= len(a) <= 5 and 1 <= len(b) <= 5
        assert e.carries == sum(s[4] for s in digit_steps(e.a, e.b))
    assert any(e.carries > 0 for e in exs) and any(e.carries == 0 for e in exs)
    assert {len(str(e.a)) for e in exs} == {1, 2, 3, 4, 5}


def test_seeded_and_deterministic():
    assert arithmetic(20, seed=5) == arithmetic(20, seed=5)
    assert arithmetic(20, seed=5) != arithmetic(20, seed=6)


def test_fixed_digits_and_digits_b():
    exs = arithmetic(50, digits=3, digits_b=(1, 2), seed=1)
    assert all(len(str(e.a)) == 3 and 1 <= len(str(e.b)) <= 2 for e in exs)


def test_carry_count_known_cases():
    assert sum(s[4] for s in digit_steps(999, 1)) == 3
    assert sum(s[4] for s in digit_steps(123, 456)) == 0
    assert sum(s[4] for s in digit_steps(1000, 1, "-")) == 3


def test_chain_of_thought_format():
    exs = arithmetic(200, digits=(1, 6), chain_of_thought=True, seed=2)
    for e in exs:
        assert extract_answer(e.completion) == e.answer
        steps = e.completion.split(" => ")[0].split(", ")
        assert len(steps) == max(len(str(e.a)), len(str(e.b)))
        digits, carry = [], 0
        for st in steps:
            lhs, rhs = st.split("=")
            x, y, c = (int(t) for t in lhs.split("+"))
            d, co = rhs.split(" c")
            assert c == carry and x + y + c == int(d) + 10 * int(co)
            digits.append(d)
            carry = int(co)
        assert int(("1" if carry else "") + "".join(reversed(digits))) == e.a + e.b
    e = arithmetic(1, digits=2, chain_of_thought=True, seed=0)[0]
    assert e.text.startswith(e.prompt) and e.text.endswith(" => " + e.answer)


def test_known_cot_string():
    from tokjax.data._arithmetic import _format_cot

    assert _format_cot(digit_steps(15, 7), "+", "22") == "5+7+0=2 c1, 1+0+1=2 c0 => 22"


def test_subtraction():
    exs = arithmetic(200, digits=(1, 4), op="-", chain_of_thought=True, seed=3)
    for e in exs:
        assert e.a >= e.b and e.answer == str(e.a - e.b)
        assert extract_answer(e.completion) == e.answer
    assert any(e.carries > 0 for e in exs)


def test_carry_fraction_exact():
    exs = arithmetic(40, digits=(1, 3), carry_fraction=0.25, seed=4)
    assert sum(e.carries > 0 for e in exs) == 10
    assert all(e.carries > 0 for e in arithmetic(10, digits=1, carry_fraction=1.0, seed=0))
    with pytest.raises(ValueError, match="carry"):
        arithmetic(3, digits=1, op="-", carry_fraction=1.0)


@pytest.mark.parametrize("kw", [dict(digits=0), dict(digits=(0, 3)), dict(digits=(3, 2)),
                                dict(digits=(1, 2, 3)), dict(digits_b=0), dict(op="*"),
                                dict(n=-1), dict(carry_fraction=1.5)])
def test_bad_args(kw):
    args = dict(n=3)
    args.update(kw)
    with pytest.raises(ValueError):
        arithmetic(**args)


def test_digits_error_message():
    with pytest.raises(ValueError, match="digits must be >= 1"):
        arithmetic(3, digits=0)
