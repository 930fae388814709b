"""Python facts: short questions about misconception-prone Python expressions, graded by Python's own ``eval``.

For P1 (CAAD / RAD, "Context-Aware Adaptive Decoding for Truthful Text Generation"): a small
TruthfulQA-like task whose truth needs no download and no judge. Every fact is one expression that
people (and small LMs) often get wrong; its answer is ``repr(eval(expression))`` in the running
interpreter, so it is exact by construction. Families (``FAMILIES``):

    float_equality     0.1 + 0.2 == 0.3 -> False       (binary floats; some sums are exact -> True)
    bankers_rounding   round(2.5) -> 2                  (round half to even)
    floor_division     -7 // 2 -> -4                    (floors toward -inf, not toward 0)
    negative_modulo    -7 % 3 -> 2,  7 % -3 -> -2       (the sign follows the divisor)
    truthiness         bool("False") -> True, bool([0]) -> True, bool(0.0) -> False
    int_truncation     int(-2.7) -> -2                  (truncates toward 0)
    string_repetition  "7" * 3 -> '777'                 (repetition, not arithmetic)
    true_division      6 / 3 -> 2.0                     (always a float)
    power_precedence   -3 ** 2 -> -9                    (** binds tighter than unary minus)
    bool_arithmetic    True + 3 -> 4                    (bool is an int subclass)

Each family is a fixed, finite pool of distinct expressions (at least ``8 * 50`` each), put in a fixed
order by a seed-independent permutation; the item at position p of that order belongs to split
``p % N_SPLITS``. ``python_facts(n, seed)`` returns ``n`` facts from split ``seed`` (0 <= seed <
``N_SPLITS``), spread over the requested families round-robin (family order as given), each family's
items in the fixed order. So different seeds never share an expression (disjoint splits: a grounding
store, a validation split and held-out draws), the same call always returns the same list, and
``python_facts(k, s)`` is a prefix of ``python_facts(n, s)`` for k <= n (nested stores).

The question text opens with the instruction and ends with the expression (so a method that reads
the last few tokens of the prompt, like P1's retrieval keys, sees the expression); the phrasing is
one of ``QUESTION_TEMPLATES``, fixed per expression.

:func:`check_fact` grades a completion: the first answer-like token (a quoted string, True / False /
None, or a number) after removing echoes of the expression, normalised (quotes, backticks, a
trailing period and thousands separators dropped; true/false in any case), must equal the answer
normalised the same way. Types matter: ``2`` is wrong for ``6 / 3`` (the answer is ``2.0``).
"""

from __future__ import annotations

import dataclasses
import re

import numpy as np

from tokjax.data._packing import check_int

__all__ = ["ANSWER_INSTRUCTION", "FAMILIES", "N_SPLITS", "QUESTION_TEMPLATES", "PythonFact", "check_fact",
           "extract_fact_answer", "python_facts"]

N_SPLITS = 8
ANSWER_INSTRUCTION = "Answer with the value only."
QUESTION_TEMPLATES = (
    "{instruction} In Python 3, what does `{expr}` evaluate to?",
    "{instruction} What is the value of the Python expression `{expr}`?",
    "{instruction} Python question: what is `{expr}`?",
    "{instruction} Evaluate in Python 3: `{expr}`",
)
_ORDER_SEED = 20250802  # the fixed, seed-independent order of every pool


def _dec(tenths: int) -> str:
    return f"{tenths // 10}.{tenths % 10}"


def _float_equality() -> list[str]:
    out = [f"{_dec(i)} + {_dec(j)} == {_dec(i + j)}" for i in range(1, 20) for j in range(1, 20)]
    out += [f"{_dec(i)} - {_dec(j)} == {_dec(i - j)}" for i in range(2, 20) for j in range(1, i)]
    return out


def _bankers_rounding() -> list[str]:
    return [f"round({k}.5)" if k >= 0 else f"round(-{-k - 1}.5)" for k in range(-250, 250)]


def _nonmultiples():
    return [(a, b) for b in range(2, 10) for a in range(1, 51) if a % b]


def _floor_division() -> list[str]:
    return [f"-{a} // {b}" for a, b in _nonmultiples()] + [f"{a} // -{b}" for a, b in _nonmultiples()]


def _negative_modulo() -> list[str]:
    return [f"-{a} % {b}" for a, b in _nonmultiples()] + [f"{a} % -{b}" for a, b in _nonmultiples()]


_FALSY_LOOKING = ('""', '" "', '"0"', '"False"', '"None"', '"0.0"', '"[]"', '"{}"', "[]", "[0]", "[[]]", "[None]",
                  "[False]", "()", "(0,)", "{}", "{0: 0}", "set()", "{0}", "0", "0.0", "-0.0", "0j", "None", "False",
                  "range(0)", "range(1)", '"no"', '"off"', '"null"')
_TRUTHY_TEMPLATES = ("bool({k} - {k})", "bool([{k} - {k}])", 'bool("0" * {k})', "bool([0] * {k})", "bool([{k}] * 0)",
                     "bool({k} % {k})", "bool({k}.0 - {k})", "bool(({k} - {k},))")


def _truthiness() -> list[str]:
    return [f"bool({x})" for x in _FALSY_LOOKING] + [t.format(k=k) for t in _TRUTHY_TEMPLATES for k in range(1, 61)]


def _int_truncation() -> list[str]:
    return [f"int({s}{k}.{d})" for s in ("", "-") for k in range(25) for d in range(1, 10)]


def _string_repetition() -> list[str]:
    return ([f'"{d}" * {k}' for d in range(1, 121) for k in (2, 3)]
            + [f'{k} * "{d}"' for d in range(1, 121) for k in (2, 3)])


def _true_division() -> list[str]:
    return [f"{b * q} / {b}" for b in range(2, 10) for q in range(1, 61)]


def _power_precedence() -> list[str]:
    return [f"-{a} ** 2" for a in range(1, 361)] + [f"-{a} ** 4" for a in range(1, 41)]


def _bool_arithmetic() -> list[str]:
    forms = ("True + {k}", "True * {k}", "{k} - True", "True + True + {k}", "False * {k}")
    return [f.format(k=k) for f in forms for k in range(1, 101)]


_POOLS = {
    "float_equality": _float_equality, "bankers_rounding": _bankers_rounding, "floor_division": _floor_division,
    "negative_modulo": _negative_modulo, "truthiness": _truthiness, "int_truncation": _int_truncation,
    "string_repetition": _string_repetition, "true_division": _true_division, "power_precedence": _power_precedence,
    "bool_arithmetic": _bool_arithmetic,
}
FAMILIES = tuple(_POOLS)


@dataclasses.dataclass(frozen=True)
class PythonFact:
    """One fact: the ``question`` text (instruction + expression), its ``answer`` (``repr(eval(expression))``),
    the ``family`` and the bare ``expression``."""

    question: str
    answer: str
    family: str
    expression: str


def _evaluate(expr: str) -> str:
    return repr(eval(expr, {"__builtins__": {"round": round, "int": int, "bool": bool, "range": range, "set": set}}))


_SPLITS: dict[str, list[list[PythonFact]]] = {}


def _family_splits(family: str) -> list[list[PythonFact]]:
    """Returns the family's facts per split (cached): fixed order, item at position p in split p % N_SPLITS."""
    if family not in _SPLITS:
        pool = _POOLS[family]()
        assert len(set(pool)) == len(pool), family
        fi = FAMILIES.index(family)
        order = np.random.default_rng([_ORDER_SEED, fi]).permutation(len(pool))
        splits: list[list[PythonFact]] = [[] for _ in range(N_SPLITS)]
        for p, idx in enumerate(order):
            expr = pool[int(idx)]
            template = QUESTION_TEMPLATES[(p // N_SPLITS) % len(QUESTION_TEMPLATES)]
            q = template.format(instruction=ANSWER_INSTRUCTION, expr=expr)
            splits[p % N_SPLITS].append(PythonFact(q, _evaluate(expr), family, expr))
        _SPLITS[family] = splits
    return _SPLITS[family]


def _check_families(families) -> tuple[str, ...]:
    if families is None:
        return FAMILIES
    if isinstance(families, str):
        families = (families,)
    fams = tuple(families)
    if not fams:
        raise ValueError(f"families must name at least one family of {FAMILIES}, got an empty list")
    unknown = [f for f in fams if f not in _POOLS]
    if unknown:
        raise ValueError(f"unknown python_facts families {unknown}; valid: {FAMILIES}")
    if len(set(fams)) != len(fams):
        raise ValueError(f"families must be distinct, got {list(fams)}")
    return fams


def python_facts(n: int, seed: int = 0, families=None) -> list[PythonFact]:
    """Returns ``n`` PythonFacts from split ``seed`` (0 <= seed < N_SPLITS; splits are disjoint), a pure function
    of (n, seed, families).

    ``families``: a family name or a sequence of them (default all of ``FAMILIES``); ``n`` is spread
    round-robin over them in the order given (the first ``n % len(families)`` get one more).
    Raises ValueError for n < 1, a seed outside [0, N_SPLITS), unknown or repeated families, or an
    ``n`` larger than the split holds for those families.
    """
    n = check_int("n", n, 1)
    seed = check_int("seed", seed, 0)
    if seed >= N_SPLITS:
        raise ValueError(f"seed selects one of the {N_SPLITS} disjoint splits: it must lie in [0, {N_SPLITS}), "
                         f"got {seed}")
    fams = _check_families(families)
    per, extra = divmod(n, len(fams))
    counts = [per + (i < extra) for i in range(len(fams))]
    lists = []
    for fam, c in zip(fams, counts):
        items = _family_splits(fam)[seed]
        if c > len(items):
            raise ValueError(f"python_facts: split {seed} of family {fam!r} holds {len(items)} facts, {c} requested "
                             f"(n={n} over {len(fams)} families); ask for fewer")
        lists.append(items[:c])
    out = []
    for r in range(max(counts)):
        out += [lst[r] for lst in lists if r < len(lst)]
    return out


_ANSWER_RE = re.compile(
    r"'([^'\n]*)'"                                # a single-quoted string
    r'|"([^"\n]*)"'                               # a double-quoted string
    r"|(?<![\w.])(true|false|none)(?![\w])"       # a constant (any case)
    r"|(?<![\w.])(-?\d{1,3}(?:,\d{3})+(?:\.\d+)?(?![\d,])|-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?j?)(?![\w])",
    re.IGNORECASE)


def _is_operator(c: str) -> bool:
    return not (c.isalnum() or c in ".-_")


def _strip_echoes(text: str, expression: str) -> str:
    """Returns ``text`` with every echo of ``expression`` blanked: each longest run (spacing ignored) that is a
    substring of the expression, at least 3 characters long and holding an operator, bracket or quote, so a
    truncated echo such as "`round(26" goes too while a bare "-10" or "False" stays."""
    expr = "".join(expression.split())
    out, i, n = [], 0, len(text)
    while i < n:
        acc, j, end = "", i, i
        while j < n:
            c = text[j]
            if not c.isspace():
                if acc + c not in expr:
                    break
                acc += c
                end = j + 1
            j += 1
        if len(acc) >= 3 and any(_is_operator(c) for c in acc):
            out.append(" ")
            i = end
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def _norm_token(tok: str) -> str:
    tok = tok.strip().strip("`*")
    low = tok.lower()
    if low in ("true", "false", "none"):
        return low.capitalize()
    if re.fullmatch(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?", tok):
        return tok.replace(",", "")
    return tok


def extract_fact_answer(text: str, expression: str | None = None) -> str:
    """Returns the first answer-like token of a completion, normalised ("" when there is none).

    Echoes of ``expression`` (with any spacing, also cut-off ones: runs of >= 3 characters that occur in the
    expression and hold an operator, bracket or quote) are removed first; Unicode minus signs read as "-".
    Answer-like: a quoted string (its content), True / False / None in any case (capitalised), or
    a number (thousands separators dropped).
    """
    if not isinstance(text, str):
        raise ValueError(f"text must be a str (a decoded completion), got {type(text).__name__}")
    text = text.replace("\u2212", "-").replace("\u2013", "-")
    if expression:
        text = _strip_echoes(text, expression)
    m = _ANSWER_RE.search(text)
    if not m:
        return ""
    for g in m.groups():
        if g is not None:
            return _norm_token(g)
    return ""  # pragma: no cover (an empty quoted string matches group 1 or 2 with "")


def _norm_answer(answer: str) -> str:
    a = answer.strip()
    if len(a) >= 2 and a[0] == a[-1] and a[0] in "'\"":
        return a[1:-1]
    return _norm_token(a)


def check_fact(text: str, answer, expression: str | None = None) -> bool:
    """Returns whether the first answer-like token of completion ``text`` (see :func:`extract_fact_answer`)
    equals ``answer`` (a PythonFact's answer text: ``"False"``, ``"-4"``, ``"2.0"``, ``"'777'"``).

    ``answer`` may also be a PythonFact (its expression is then used to ignore echoes).
    """
    if isinstance(answer, PythonFact):
        expression = answer.expression if expression is None else expression
        answer = answer.answer
    if not isinstance(answer, str) or not answer.strip():
        raise ValueError(f"answer must be a non-empty str (a PythonFact's answer), got {answer!r}")
    got = extract_fact_answer(text, expression)
    return bool(got) and got == _norm_answer(answer)
