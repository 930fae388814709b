"""tokjax.data.word_problems / check_answer: stories whose answers a separate parser re-derives."""

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tokjax.data import ANSWER_INSTRUCTION, WORD_PROBLEM_LEVELS, check_answer, word_problems


def replay(question: str) -> int:
    """Re-derives the answer from the story's sentences alone (an independent reading of the templates)."""
    sentences = re.split(r"(?<=\.) ", question)
    count = int(re.search(r"has (\d+) ", sentences[0]).group(1))
    for s in sentences[1:-1]:
        n = int(re.findall(r"\d+", s)[0])
        if "times" in s or "multiplied" in s:
            count *= n
        elif re.search(r"loses|uses|gives \d+ \w+ to", s):
            count -= n
        else:
            count += n
    return count


@settings(max_examples=30, deadline=None)
@given(level=st.sampled_from(sorted(WORD_PROBLEM_LEVELS)), seed=st.integers(0, 10_000))
def test_answers_match_a_replay_of_the_story_and_stay_non_negative(level, seed):
    for p in word_problems(5, level, seed):
        assert p.answer == replay(p.question) >= 0
        assert len(p.ops) == WORD_PROBLEM_LEVELS[level][1]
        assert p.prompt().endswith(ANSWER_INSTRUCTION) and not p.prompt(instruction=False).endswith(ANSWER_INSTRUCTION)


def test_deterministic_and_levels_get_harder():
    assert word_problems(20, 3, 7) == word_problems(20, 3, 7) != word_problems(20, 3, 8)
    assert not any("x" in p.ops for lv in (1, 2) for p in word_problems(50, lv, 0))
    assert any("x" in p.ops for p in word_problems(50, 4, 0))
    mean = lambda lv: sum(p.answer for p in word_problems(200, lv, 0)) / 200  # noqa: E731
    assert mean(1) < mean(3) < mean(5)


@pytest.mark.parametrize("text, answer, want", [
    ("She has 12 left. Answer: 12", 12, (True, True)),
    ("answer is **1,234**", 1234, (True, True)),
    ("3 + 4 = 7, so she has 7 apples.", 7, (True, False)),
    ("Answer: 8. Wait, 9.", 9, (False, True)),     # the stated answer is graded, not a later number
    ("no idea", 3, (False, False)),
    ("", 0, (False, False)),
])
def test_check_answer(text, answer, want):
    assert check_answer(text, answer) == want


def test_bad_input():
    with pytest.raises(ValueError, match="level"):
        word_problems(3, level=9)
    with pytest.raises(ValueError, match="n must be"):
        word_problems(0)
    with pytest.raises(ValueError, match="text must be a str"):
        check_answer(None, 3)


def _digest(level: int) -> str:
    import hashlib

    h = hashlib.sha256()
    for seed in (0, 1000):
        for p in word_problems(50, level, seed):
            h.update(repr((p.question, p.answer, p.level, p.ops)).encode())
    return h.hexdigest()[:16]


def test_levels_1_to_5_are_bit_identical_to_before_level_0():
    # Digests of word_problems(50, level, seed 0 and 1000) taken before level 0 and the prompt styles were
    # added: recorded experiment rows depend on these problems.
    want = {1: "e080b3919b5f281a", 2: "d6c3037a7ef76ce7", 3: "c2766dee962b6b7e", 4: "b35cae6ce6c58652",
            5: "e765d047916bb2e7"}
    assert {lv: _digest(lv) for lv in want} == want


def test_level_0_is_one_small_addition():
    probs = word_problems(200, 0, 3)
    assert all(p.ops == ("+",) and 3 <= p.answer <= 10 for p in probs)
    assert len({p.answer for p in probs}) == 8          # every sum 3..10 occurs
    assert sum(p.answer for p in probs) < sum(p.answer for p in word_problems(200, 1, 3))


def test_prompt_styles():
    from tokjax.data._word_problems import SHORT_INSTRUCTION, WORD_PROBLEM_STYLES

    p = word_problems(1, 1, 0)[0]
    assert p.prompt() == p.prompt(style="steps") == f"{p.question} {ANSWER_INSTRUCTION}"   # default unchanged
    assert p.prompt(style="direct").endswith("Reply with only the number.")
    assert p.prompt(style="short").endswith(SHORT_INSTRUCTION)
    for style in WORD_PROBLEM_STYLES:
        assert p.prompt(instruction=False, style=style) == p.question
        turns = p.messages(style)
        assert turns[-1] == {"role": "user", "content": p.prompt(style=style)}
        assert [t["role"] for t in turns] == (["user", "assistant", "user"] if style == "oneshot" else ["user"])
    shot = p.messages("oneshot")
    assert check_answer(shot[1]["content"], replay(shot[0]["content"].split(" Write")[0])) == (True, True)
    with pytest.raises(ValueError, match="style must be one of"):
        p.prompt(style="cot")
    with pytest.raises(ValueError, match="style must be one of"):
        p.messages("Direct")
