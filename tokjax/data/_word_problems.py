"""Templated arithmetic word problems with verifiable integer answers (the RL / preference / routing task).

``word_problems(n, level, seed)`` writes short stories: a starting count, then ``steps`` events that
add, remove or multiply it, then a question. The level sets the number range, the number of steps
and whether multiplication occurs:

    level 0: start 2-5,    1 step,  + only (1-5 added: answers 3-10)
    level 1: start 2-9,    1 step,  + / -
    level 2: start 5-20,   2 steps, + / -
    level 3: start 5-30,   2 steps, + / - / x (x2, x3)
    level 4: start 10-60,  3 steps, + / - / x (x2..x4)
    level 5: start 20-200, 4 steps, + / - / x (x2..x5)

Every intermediate count stays a non-negative integer (a removal never exceeds the count).
Level 0 was added after levels 1-5; their problems for every (n, level, seed) are unchanged.

``prompt(style=...)`` words the request (:data:`WORD_PROBLEM_STYLES`): ``"steps"`` (default) asks
for a step-by-step solution ending with ``Answer: N``; ``"short"`` for the calculation in one line,
then ``Answer: N``; ``"direct"`` for the number alone; ``"oneshot"`` is ``"short"`` after one
worked example in the chat (``messages(style)`` returns the chat turns to pass to a chat template;
for the other styles it is the single user turn ``prompt(style)``).

``check_answer(text, answer)`` grades a completion: ``format_ok`` when it states ``Answer: N``;
the graded number is that N, else the last integer in the text (so a model that ignores the
format can still be right, and the format rate is reported apart).
"""

from __future__ import annotations

import dataclasses
import re

import numpy as np

from tokjax.data._packing import check_int

__all__ = ["ANSWER_INSTRUCTION", "WORD_PROBLEM_LEVELS", "WORD_PROBLEM_STYLES", "WordProblem", "check_answer",
           "word_problems"]

ANSWER_INSTRUCTION = "Solve the problem step by step, then end with 'Answer: N' where N is the number."
SHORT_INSTRUCTION = "Write the calculation in one line, then end with 'Answer: N' where N is the number."
# style -> the instruction appended to the question ("oneshot" also puts a worked example before it)
WORD_PROBLEM_STYLES = {"steps": ANSWER_INSTRUCTION, "short": SHORT_INSTRUCTION,
                       "direct": "Reply with only the number.", "oneshot": SHORT_INSTRUCTION}
# the worked example of style "oneshot" (a level-0 story; "Mia" is none of the drawn names)
_EXAMPLE_QUESTION = "Mia has 4 pencils. Mia finds 3 more pencils. How many pencils does Mia have now?"
_EXAMPLE_ANSWER = "4 + 3 = 7. Answer: 7"

# level -> (start range, steps, multiplier range or None)
WORD_PROBLEM_LEVELS = {0: ((2, 5), 1, None), 1: ((2, 9), 1, None), 2: ((5, 20), 2, None), 3: ((5, 30), 2, (2, 3)),
                       4: ((10, 60), 3, (2, 4)), 5: ((20, 200), 4, (2, 5))}
_ADD_ONLY_LEVELS = frozenset({0})
_NAMES = ("Ana", "Ben", "Carla", "Dev", "Emma", "Farid", "Grace", "Hugo", "Iris", "Jonas", "Kemi", "Liam",
          "Maya", "Noah", "Olga", "Priya")
_ITEMS = ("apples", "marbles", "stickers", "books", "coins", "pencils", "cards", "shells", "stamps", "cookies")
_ADD = ("{name} buys {b} more {items}.", "{friend} gives {name} {b} {items}.", "{name} finds {b} more {items}.")
_SUB = ("{name} gives {b} {items} to {friend}.", "{name} loses {b} {items}.", "{name} uses {b} of the {items}.")
_MUL = ("Then the number of {items} {name} has becomes {k} times as large.",
        "{name} trades so that the number of {items} is multiplied by {k}.")


@dataclasses.dataclass(frozen=True)
class WordProblem:
    """One problem: the story ``question``, its integer ``answer``, ``level`` and the ``ops`` in order."""

    question: str
    answer: int
    level: int
    ops: tuple[str, ...]

    def prompt(self, instruction: bool = True, style: str = "steps") -> str:
        """Returns the question, followed by the instruction of ``style`` (:data:`WORD_PROBLEM_STYLES`;
        default ``"steps"``: :data:`ANSWER_INSTRUCTION`) unless ``instruction`` is False."""
        instr = _style_instruction(style)
        return f"{self.question} {instr}" if instruction else self.question

    def messages(self, style: str = "steps") -> list[dict[str, str]]:
        """Returns the chat turns (``[{"role", "content"}]``) asking this problem in ``style``: one user turn
        ``prompt(style=style)``, preceded for ``"oneshot"`` by a worked example (user turn, assistant answer)."""
        turns = [{"role": "user", "content": self.prompt(style=style)}]
        if style == "oneshot":
            turns = [{"role": "user", "content": f"{_EXAMPLE_QUESTION} {SHORT_INSTRUCTION}"},
                     {"role": "assistant", "content": _EXAMPLE_ANSWER}] + turns
        return turns


def _style_instruction(style: str) -> str:
    if not isinstance(style, str) or style not in WORD_PROBLEM_STYLES:
        raise ValueError(f"style must be one of {sorted(WORD_PROBLEM_STYLES)}, got {style!r}")
    return WORD_PROBLEM_STYLES[style]


def _problem(rng: np.random.Generator, level: int) -> WordProblem:
    (lo, hi), steps, mul = WORD_PROBLEM_LEVELS[level]
    name, friend = rng.choice(_NAMES, 2, replace=False)
    items = str(rng.choice(_ITEMS))
    count = int(rng.integers(lo, hi + 1))
    sentences = [f"{name} has {count} {items}."]
    ops = []
    for _ in range(steps):
        kinds = ["+"] if level in _ADD_ONLY_LEVELS else ["+", "-"] + (["x"] if mul else [])
        op = "-" if count > 3 * hi and "-" in kinds and rng.random() < 0.7 else str(rng.choice(kinds))
        if op == "-" and count < 2:
            op = "+"
        if op == "+":
            b = int(rng.integers(1, hi + 1))
            count += b
            sentences.append(str(rng.choice(_ADD)).format(name=name, friend=friend, b=b, items=items))
        elif op == "-":
            b = int(rng.integers(1, count))
            count -= b
            sentences.append(str(rng.choice(_SUB)).format(name=name, friend=friend, b=b, items=items))
        else:
            k = int(rng.integers(mul[0], mul[1] + 1))
            count *= k
            sentences.append(str(rng.choice(_MUL)).format(name=name, k=k, items=items))
        ops.append(op)
    sentences.append(f"How many {items} does {name} have now?")
    return WordProblem(question=" ".join(sentences), answer=count, level=level, ops=tuple(ops))


def word_problems(n: int, level: int = 1, seed: int = 0) -> list[WordProblem]:
    """Returns ``n`` problems of ``level`` (0-5, see the module docstring), a pure function of (n, level, seed)."""
    n = check_int("n", n, 1)
    if level not in WORD_PROBLEM_LEVELS:
        raise ValueError(f"level must be one of {sorted(WORD_PROBLEM_LEVELS)}, got {level!r}")
    seed = check_int("seed", seed, 0)
    rng = np.random.default_rng([seed, level])
    return [_problem(rng, level) for _ in range(n)]


_ANSWER_RE = re.compile(r"answer\s*(?:is)?\s*[:=]?\s*\**\s*(-?\d[\d,]*)", re.IGNORECASE)
_INT_RE = re.compile(r"-?\d[\d,]*")


def _to_int(s: str) -> int | None:
    digits = s.replace(",", "")
    return int(digits) if re.fullmatch(r"-?\d+", digits) else None


def check_answer(text: str, answer: int) -> tuple[bool, bool]:
    """Returns (correct, format_ok) of a completion ``text`` against the integer ``answer``.

    ``format_ok``: the text states ``Answer: N`` (case-insensitive, ``Answer is N`` and bold
    markers accepted); the graded number is the last such N, else the last integer in the text.
    """
    if not isinstance(text, str):
        raise ValueError(f"text must be a str (a decoded completion), got {type(text).__name__}")
    stated = _ANSWER_RE.findall(text)
    format_ok = bool(stated)
    candidates = stated or _INT_RE.findall(text)
    value = _to_int(candidates[-1]) if candidates else None
    return (value is not None and value == int(answer)), format_ok
