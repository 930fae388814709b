"""Right-to-left (and left-to-right, single) digit grouping as tokenizer transforms (paper P70).

Paper: "Tokenization counts: the impact of tokenization on arithmetic in frontier LLMs"
(Singh & Strouse, 2024, P70). GPT-3.5/4 cut digit runs into groups of at most three from the
*left* (``1234567 -> 123|456|7``); enforcing groups from the *right* (``1|234|567``, the
paper does it by writing ``1,234,567``) aligns the groups of the operands and of the answer
by place value and improves addition. With a digit run ``d_1..d_n`` the cut points are

    l2r3: after d_{3k}            r2l3: after d_{n-3k}            single: after every digit

(the policies of :mod:`tokjax.tokenizers._digits`, shared with ``BPETokenizer.train(digits=)``).
The transforms also take any group size ``N`` in 1..9 as ``"l2rN"`` / ``"r2lN"`` (cuts after
``d_{Nk}`` / ``d_{n-Nk}``), e.g. ``"r2l2"``: ``12345 -> 1|23|45``, so the direction effect can be
studied at a group size whose addition table (100 group values instead of 1000) a tiny model
can learn; :func:`split_digit_groups` does the cutting.

* :func:`right_to_left_digits` -- ``Tokenizer -> Tokenizer``: the text is cut by the policy
  first and each piece is encoded separately, so no token crosses a group boundary, whatever
  the base tokenizer's own pre-tokenizer does. Decoding is unchanged (byte-exact).
* :func:`group_digits` -- the paper's inference-time trick: a separator (comma) between groups.
* :func:`encode_arithmetic` -- the ``tokjax.data.arithmetic`` task encoded under a tokenizer
  (padded ids, prompt lengths, loss mask over the completion).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import numpy as np

from tokjax.tokenizers._base import WrappedTokenizer
from tokjax.tokenizers._digits import DIGIT_POLICIES, DigitPolicy, split_digits

__all__ = [
    "DigitGroupedTokenizer", "check_group_policy", "encode_arithmetic", "group_digits", "right_to_left_digits",
    "split_digit_groups",
]

_SIZED = re.compile(r"(l2r|r2l)([1-9])")


def check_group_policy(policy: object) -> str:
    """Returns ``policy`` if it names a digit policy, else raises ValueError (P70).

    Accepted: a :data:`DIGIT_POLICIES` name, or ``"l2rN"`` / ``"r2lN"`` with a group size N in 1..9.
    """
    if isinstance(policy, str) and (policy in DIGIT_POLICIES or _SIZED.fullmatch(policy)):
        return policy
    raise ValueError(f"unknown digits policy {policy!r}; expected 'none', 'single', or 'l2rN' / 'r2lN' with a group "
                     f"size N in 1..9 (e.g. 'r2l3', the paper's right-to-left 3-digit groups)")


def split_digit_groups(text: str, policy: str) -> list[str]:
    """Returns ``text`` cut into pieces whose concatenation is ``text``: each ASCII digit run cut by ``policy`` (P70).

    ``policy``: a :data:`DIGIT_POLICIES` name (delegated to :func:`split_digits`) or ``"l2rN"`` /
    ``"r2lN"``: groups of at most ``N`` digits counted from the left / right
    (``split_digit_groups("12345", "r2l2") == ["1", "23", "45"]``). Raises ValueError for an
    unknown policy or a non-str text.
    """
    policy = check_group_policy(policy)
    if policy in DIGIT_POLICIES:
        return split_digits(text, policy)
    if not isinstance(text, str):
        raise ValueError(f"split_digit_groups expects a str, got {type(text).__name__}")
    n = int(policy[3])
    # Same shapes as _digits.DIGIT_PATTERNS["l2r3"/"r2l3"] with 3 -> N: a r2l group is followed by a
    # whole number of N-digit groups up to the end of the run.
    pattern = rf"[0-9]{{1,{n}}}" if policy.startswith("l2r") else rf"[0-9]{{1,{n}}}(?=(?:[0-9]{{{n}}})*(?![0-9]))"
    pieces: list[str] = []
    pos = 0
    for match in re.finditer(pattern, text):
        if match.start() > pos:
            pieces.append(text[pos:match.start()])
        pieces.append(match.group())
        pos = match.end()
    if pos < len(text):
        pieces.append(text[pos:])
    return pieces


class DigitGroupedTokenizer(WrappedTokenizer):
    """Tokenizer that cuts digit runs by ``policy`` before ``base.encode``; everything else is ``base``'s."""

    def __init__(self, base: Any, policy: DigitPolicy = "r2l3") -> None:
        if not callable(getattr(base, "encode", None)):
            raise ValueError(f"right_to_left_digits needs a tokenizer with encode(), got {type(base).__name__}")
        super().__init__(base)
        self.policy = check_group_policy(policy)

    def __repr__(self) -> str:
        return f"DigitGroupedTokenizer(policy={self.policy!r}, base={self.base!r})"

    def _encode_text(self, text: str) -> list[int]:
        if not isinstance(text, str):
            raise ValueError(f"text must be a str, got {type(text).__name__}")
        ids: list[int] = []
        for piece in split_digit_groups(text, self.policy):  # every digit group encoded on its own
            ids.extend(self.base.encode(piece))
        return ids


def right_to_left_digits(tokenizer: Any, policy: DigitPolicy = "r2l3") -> DigitGroupedTokenizer:
    """Returns ``tokenizer`` with digit runs grouped by ``policy`` before encoding (P70).

    ``"r2l3"``: groups of at most 3 from the right (``12345 -> 12|345``, the paper's fix);
    ``"l2r3"``: from the left (``123|45``, GPT-3.5/4's cl100k behaviour); ``"single"``: one
    digit per group; ``"none"``: unchanged. Only ASCII ``0-9`` count as digits. Tokens that
    the base would have formed across a group boundary are never produced; the text decodes
    back exactly. Any group size N in 1..9 is accepted as ``"l2rN"`` / ``"r2lN"`` (e.g.
    ``"r2l2"``: ``12345 -> 1|23|45``). Raises ValueError for an unknown policy.
    """
    return DigitGroupedTokenizer(tokenizer, policy)


def group_digits(text: str, policy: DigitPolicy = "r2l3", sep: str = ",") -> str:
    """Returns ``text`` with ``sep`` between the digit groups of every digit run (``1234567 -> 1,234,567``).

    The paper (P70) enforces right-to-left tokenization of a frontier model this way. Only
    boundaries *inside* a digit run get a separator; other text is unchanged.
    """
    if not isinstance(sep, str):
        raise ValueError(f"sep must be a str, got {type(sep).__name__}")
    pieces = split_digit_groups(text, policy)
    out: list[str] = []
    for i, piece in enumerate(pieces):
        if i and piece[:1].isascii() and piece[:1].isdigit() and pieces[i - 1][-1:].isascii() and pieces[i - 1][-1:].isdigit():
            out.append(sep)
        out.append(piece)
    return "".join(out)


def encode_arithmetic(
    tokenizer: Any, examples: Sequence[Any], *, width: int | None = None, add_eos: bool = True
) -> dict[str, np.ndarray]:
    """Returns ``{"tokens", "lengths", "prompt_lengths", "mask"}`` for :func:`tokjax.data.arithmetic` examples.

    ``tokens`` int32 [N, W]: ``encode(prompt) + encode(completion)`` (+ eos), right-padded with
    ``pad_id``; ``prompt_lengths`` [N]: tokens of the prompt; ``mask`` bool [N, W-1] aligned with
    the targets ``tokens[:, 1:]``: True on the completion (and eos) tokens, the part a model
    is scored on. Prompt and completion are encoded separately so that no token spans ``=``.
    """
    if tokenizer.pad_id is None:
        raise ValueError("encode_arithmetic needs a tokenizer with a pad token")
    rows, plens = [], []
    for ex in examples:
        prompt = tokenizer.encode(ex.prompt)
        completion = tokenizer.encode(ex.completion, add_eos=add_eos)
        rows.append(prompt + completion)
        plens.append(len(prompt))
    if not rows:
        raise ValueError("encode_arithmetic got no examples")
    lengths = np.asarray([len(r) for r in rows], np.int32)
    W = int(lengths.max()) if width is None else int(width)
    if lengths.max() > W:
        raise ValueError(f"an example has {int(lengths.max())} tokens, more than width={W}")
    tokens = np.full((len(rows), W), tokenizer.pad_id, np.int32)
    for i, r in enumerate(rows):
        tokens[i, : len(r)] = r
    plens_a = np.asarray(plens, np.int32)
    t = np.arange(1, W)[None, :]  # target positions
    mask = (t >= plens_a[:, None]) & (t < lengths[:, None])
    return {"tokens": tokens, "lengths": lengths, "prompt_lengths": plens_a, "mask": mask}
