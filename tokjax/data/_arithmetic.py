"""Synthetic multi-digit addition/subtraction problems, optionally with chain of thought."""

from __future__ import annotations

import dataclasses
import operator

import numpy as np

from tokjax.data._packing import check_int

__all__ = ["ArithmeticExample", "arithmetic", "extract_answer", "digit_steps"]

ANSWER_MARK = " => "


@dataclasses.dataclass(frozen=True)
class ArithmeticExample:
    """One problem: ``prompt`` (``"123+4567="``), ``completion`` and the ``answer``.

    Attributes:
      a, b: the operands (for ``"-"``, ``a >= b``).
      op: ``"+"`` or ``"-"``.
      prompt: ``f"{a}{op}{b}="``.
      answer: the decimal result as a string.
      completion: what a model should write after the prompt: the answer, or,
        with chain of thought, the digit steps then ``" => "`` and the answer.
      carries: number of digit positions that produce a carry (for ``"-"``: a borrow).
    """

    a: int
    b: int
    op: str
    prompt: str
    answer: str
    completion: str
    carries: int

    @property
    def text(self) -> str:
        """Returns ``prompt + completion``."""
        return self.prompt + self.completion


def digit_steps(a: int, b: int, op: str = "+") -> list[tuple[int, int, int, int, int]]:
    """Returns the column steps ``(x, y, carry_in, digit, carry_out)`` from the units up.

    For ``"+"``: ``x + y + carry_in = digit + 10 * carry_out``; for ``"-"``
    (needs ``a >= b >= 0``): ``x - y - borrow_in = digit - 10 * borrow_out``.
    There is one step per digit of the longer operand.
    """
    if a < 0 or b < 0:
        raise ValueError("operands must be non-negative")
    if op == "-" and a < b:
        raise ValueError("subtraction steps need a >= b")
    da, db = str(a)[::-1], str(b)[::-1]
    width = max(len(da), len(db))
    steps = []
    c = 0
    for i in range(width):
        x = int(da[i]) if i < len(da) else 0
        y = int(db[i]) if i < len(db) else 0
        if op == "+":
            s = x + y + c
            d, cout = s % 10, s // 10
        elif op == "-":
            s = x - y - c
            d, cout = (s + 10, 1) if s < 0 else (s, 0)
        else:
            raise ValueError(f"op must be '+' or '-', got {op!r}")
        steps.append((x, y, c, d, cout))
        c = cout
    return steps


def _format_cot(steps, op: str, answer: str) -> str:
    parts = [f"{x}{op}{y}{op}{c}={d} c{co}" for x, y, c, d, co in steps]
    return ", ".join(parts) + ANSWER_MARK + answer


def extract_answer(completion: str) -> str:
    """Returns the final answer in a (possibly chain-of-thought) completion string."""
    tail = completion.rsplit(ANSWER_MARK.strip(), 1)[-1]
    return tail.strip()


def _digit_range(name: str, digits) -> tuple[int, int]:
    if isinstance(digits, (tuple, list)):
        if len(digits) != 2:
            raise ValueError(f"{name} must be an int or a (low, high) pair, got {digits!r}")
        lo, hi = digits
    else:
        lo = hi = digits
    try:
        lo, hi = operator.index(lo), operator.index(hi)
    except TypeError:
        raise ValueError(f"{name} must be ints, got {digits!r}") from None
    if lo < 1 or hi < 1:
        raise ValueError(f"{name} must be >= 1, got {digits!r}")
    if lo > hi:
        raise ValueError(f"{name}: low > high in {digits!r}")
    return lo, hi


def _sample_operand(rng: np.random.Generator, lo: int, hi: int) -> int:
    d = int(rng.integers(lo, hi + 1))
    ds = rng.integers(0, 10, size=d)
    if d > 1 and ds[0] == 0:
        ds[0] = int(rng.integers(1, 10))
    return int("".join(str(int(x)) for x in ds))


def arithmetic(
    n: int,
    digits: int | tuple[int, int] = (1, 5),
    op: str = "+",
    chain_of_thought: bool = False,
    seed: int = 0,
    *,
    digits_b: int | tuple[int, int] | None = None,
    carry_fraction: float | None = None,
) -> list[ArithmeticExample]:
    """Returns ``n`` seeded :class:`ArithmeticExample` problems ``a op b``.

    Args:
      n: number of examples.
      digits: digits per operand, an int or an inclusive ``(low, high)`` range;
        each operand first draws its digit count uniformly, then its digits.
      op: ``"+"`` or ``"-"`` (for ``"-"`` the operands are ordered so ``a >= b``).
      chain_of_thought: if True, the completion lists each column as
        ``"x+y+c=d cK"`` (digit ``d``, carry out ``K``), from the units up,
        then ``" => "`` and the answer, e.g. ``"5+7+0=2 c1, 1+0+1=2 c0 => 22"``.
      seed: seed of the ``np.random.Generator``.
      digits_b: digit range for the second operand (default: same as ``digits``).
      carry_fraction: if set, exactly ``round(carry_fraction * n)`` examples
        have at least one carry (borrow) and the rest none, in random order;
        by default operands are uniform and carries fall as they may.

    Raises:
      ValueError: ``n < 0``, digits < 1, unknown op, carry_fraction outside
        [0, 1], or a carry_fraction the digit ranges cannot satisfy.
    """
    n = check_int("n", n, 0)
    if op not in ("+", "-"):
        raise ValueError(f"op must be '+' or '-', got {op!r}")
    ra = _digit_range("digits", digits)
    rb = _digit_range("digits_b", digits if digits_b is None else digits_b)
    rng = np.random.default_rng(seed)

    want: np.ndarray | None = None
    if carry_fraction is not None:
        cf = float(carry_fraction)
        if not 0.0 <= cf <= 1.0:
            raise ValueError(f"carry_fraction must be in [0, 1], got {carry_fraction!r}")
        k = int(np.floor(cf * n + 0.5))
        want = np.zeros(n, dtype=bool)
        want[rng.permutation(n)[:k]] = True

    out: list[ArithmeticExample] = []
    for i in range(n):
        for _attempt in range(10_000):
            a = _sample_operand(rng, *ra)
            b = _sample_operand(rng, *rb)
            if op == "-" and a < b:
                a, b = b, a
            steps = digit_steps(a, b, op)
            carries = sum(s[4] for s in steps)
            if want is None or (carries > 0) == bool(want[i]):
                break
        else:
            kind = "with" if want[i] else "without"
            raise ValueError(
                f"could not sample a problem {kind} carries for digits={digits!r}, "
                f"digits_b={digits_b!r}, op={op!r}; change carry_fraction"
            )
        answer = str(a + b if op == "+" else a - b)
        completion = _format_cot(steps, op, answer) if chain_of_thought else answer
        out.append(
            ArithmeticExample(
                a=a,
                b=b,
                op=op,
                prompt=f"{a}{op}{b}=",
                answer=answer,
                completion=completion,
                carries=int(carries),
            )
        )
    return out
