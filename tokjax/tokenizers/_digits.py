"""Digit pre-tokenization policies (paper P70, "Tokenization counts").

A policy decides how runs of ASCII digits are cut into pre-tokens before BPE
sees them; BPE never merges across a pre-token boundary, so the policy bounds
which number tokens can exist. Only ``0-9`` count as digits: the same pattern
must behave identically in Python's ``re`` and in the Oniguruma engine used by
Hugging Face ``tokenizers``, and ``\\d`` differs between the two on non-ASCII
digits.
"""

from __future__ import annotations

import re
from typing import Literal

DigitPolicy = Literal["none", "single", "l2r3", "r2l3"]

DIGIT_POLICIES: tuple[str, ...] = ("none", "single", "l2r3", "r2l3")

# ``(?![0-9])`` rather than ``\b``: in "x12345y" there is no word boundary
# after the 5, so a ``\b``-anchored r2l pattern would fail to group digits
# that touch letters.
DIGIT_PATTERNS: dict[str, str] = {
    "single": r"[0-9]",
    "l2r3": r"[0-9]{1,3}",
    "r2l3": r"[0-9]{1,3}(?=(?:[0-9]{3})*(?![0-9]))",
}

_COMPILED = {name: re.compile(pattern) for name, pattern in DIGIT_PATTERNS.items()}


def check_digit_policy(policy: object) -> str:
    """Return ``policy`` unchanged if it names a known digit policy, else raise ValueError."""
    if not isinstance(policy, str) or policy not in DIGIT_POLICIES:
        raise ValueError(
            f"unknown digits policy {policy!r}; expected one of {', '.join(map(repr, DIGIT_POLICIES))}"
        )
    return policy


def digit_policy_from_pattern(pattern: str) -> str | None:
    """Return the policy whose regex is exactly ``pattern``, or None if it is not one of ours."""
    for name, known in DIGIT_PATTERNS.items():
        if known == pattern:
            return name
    return None


def split_digits(text: str, policy: DigitPolicy) -> list[str]:
    """Return ``text`` cut into pieces whose concatenation is ``text``.

    Each maximal run of ASCII digits is cut into groups according to
    ``policy``; the non-digit stretches between runs are kept whole.

    * ``"none"``: no cuts, ``[text]``.
    * ``"single"``: every digit is its own piece.
    * ``"l2r3"``: groups of at most 3 counted from the left, ``12345 -> 123|45``.
    * ``"r2l3"``: groups of at most 3 counted from the right, ``12345 -> 12|345``.

    The empty string gives ``[]`` under every policy.

    >>> split_digits("x1234567y", "r2l3")
    ['x', '1', '234', '567', 'y']
    """
    if not isinstance(text, str):
        raise ValueError(f"split_digits expects a str, got {type(text).__name__}")
    check_digit_policy(policy)
    if not text:
        return []
    if policy == "none":
        return [text]
    pieces: list[str] = []
    pos = 0
    for match in _COMPILED[policy].finditer(text):
        start, end = match.span()
        if start > pos:
            pieces.append(text[pos:start])
        pieces.append(match.group())
        pos = end
    if pos < len(text):
        pieces.append(text[pos:])
    return pieces
