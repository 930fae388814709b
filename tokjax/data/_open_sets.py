"""Open-set knowledge probes: questions with many correct answers, graded against the Python standard library.

For P73 (In-Context Navigation, "Correlation and Navigation in the Vocabulary Key Representation
Space of Language Models"): a method is asked the same question several times ("Name a Python
keyword") and scored on how many *distinct correct* answers it finds. The truth of every probe is
computed from the running interpreter (``builtins``, ``keyword.kwlist``, ``sys.stdlib_module_names``,
``dir(str)``, ...), so nothing is downloaded and the sets are exact for that Python version.

``open_sets()`` returns the probes in a fixed order (deterministic for one Python version). Each
:class:`OpenSetProbe` has ``question`` (one sentence, no instruction about format), ``truth`` (a
frozenset of names) and:

* ``normalize(text)`` -> the candidate name in a generated answer: the first line, the content of
  its first backtick span when there is one (chat models write "The keyword is `if`."), leading list
  markers, quotes and ``import`` dropped, then the first identifier-like word (dots kept), trailing
  punctuation and call parentheses removed; for method probes the owner prefix goes
  (``str.upper()`` -> ``upper``), for the module probe the top-level package is kept
  (``os.path`` -> ``os``). ``""`` when nothing name-like is there.
* ``check(text)`` -> whether ``normalize(text)`` is in ``truth`` (case-sensitive: Python names are).

:func:`distinct_correct` counts the distinct correct names among answers (the metric of P73's
navigation experiment: duplicates and wrong answers score nothing).
"""

from __future__ import annotations

import builtins
import dataclasses
import keyword
import itertools
import math
import re
import string
import sys
from collections.abc import Iterable

__all__ = ["OpenSetProbe", "open_sets", "normalize_answer", "distinct_correct"]

# Added to builtins by the `site` module (present or not depending on how Python started): left out,
# so the truth does not depend on `python -S`; `help` is a documented built-in function and is kept.
_SITE_NAMES = frozenset({"copyright", "credits", "exit", "quit", "license"})
_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*")
_BULLET = re.compile(r"^\s*(?:[-*\u2022>]+|\(?\d+[.):]|[a-z][.)])\s+")
_DOTTED = ("full", "last", "head")


def normalize_answer(text: str, dotted: str = "full") -> str:
    """Returns the candidate name in a generated answer ("" when there is none).

    The first non-empty line is taken; when it holds a backtick span, that span's content; list
    markers ("1.", "-", "*"), quotes and a leading ``import``/``from`` are dropped; then the first
    identifier-like word (letters, digits, underscores, dots between them), so ``len()`` -> ``len``,
    ``"ValueError:"`` -> ``ValueError``. ``dotted``: ``"full"`` keeps ``a.b``, ``"last"`` keeps ``b``
    (``str.upper`` -> ``upper``), ``"head"`` keeps ``a`` (``os.path`` -> ``os``).
    """
    if not isinstance(text, str):
        raise ValueError(f"normalize_answer needs a str, got {type(text).__name__}")
    if dotted not in _DOTTED:
        raise ValueError(f"dotted must be one of {_DOTTED}, got {dotted!r}")
    line = next((ln for ln in text.splitlines() if ln.strip()), "")
    spans = re.findall(r"`+([^`]+)`+", line)
    if spans:
        line = spans[0]
    elif line.count("`") == 1:  # an opened span cut off by the token budget, or a prefix the prompt opened
        line = line.replace("`", " ")
    line = _BULLET.sub("", line).strip().strip("\"'*")
    line = re.sub(r"^(?:import|from)\s+", "", line)
    m = _WORD.search(line)
    if not m:
        return ""
    word = m.group(0)
    if dotted == "last":
        word = word.rsplit(".", 1)[-1]
    elif dotted == "head":
        word = word.split(".", 1)[0]
    return word


@dataclasses.dataclass(frozen=True)
class OpenSetProbe:
    """One multi-answer question: ``name`` (slug), ``question``, ``truth`` (the correct names) and how
    ``normalize`` treats dotted names (``dotted``: "full" | "last" | "head")."""

    name: str
    question: str
    truth: frozenset
    dotted: str = "full"

    def __post_init__(self) -> None:
        if not self.truth:
            raise ValueError(f"probe {self.name!r} has an empty truth set")
        if self.dotted not in _DOTTED:
            raise ValueError(f"probe {self.name!r}: dotted must be one of {_DOTTED}, got {self.dotted!r}")

    def normalize(self, text: str) -> str:
        """Returns the candidate name in ``text`` (see :func:`normalize_answer`)."""
        return normalize_answer(text, self.dotted)

    def check(self, text: str) -> bool:
        """Returns whether the name in ``text`` is one of the probe's correct answers."""
        return self.normalize(text) in self.truth


def distinct_correct(probe: OpenSetProbe, answers: Iterable[str]) -> int:
    """Returns how many distinct correct names ``answers`` holds (after ``probe.normalize``)."""
    if isinstance(answers, str):
        raise ValueError("distinct_correct needs a list of answers, got one str")
    return len({a for a in (probe.normalize(t) for t in answers) if a in probe.truth})


def _public(names: Iterable[str]) -> frozenset:
    return frozenset(n for n in names if not n.startswith("_"))


def _methods(cls: type) -> frozenset:
    return _public(n for n in dir(cls) if callable(getattr(cls, n)))


def _callables(module) -> frozenset:
    names = getattr(module, "__all__", None) or dir(module)
    return _public(n for n in names if callable(getattr(module, n)))


def _is_exception(obj) -> bool:
    return isinstance(obj, type) and issubclass(obj, BaseException)


def open_sets() -> list[OpenSetProbe]:
    """Returns the 12 open-set probes, in a fixed order; truth sets come from this Python's standard library.

    builtin-functions (callables in ``builtins`` except exception classes and the names ``site``
    adds, plus ``help``), builtin-types (classes in ``builtins`` that are not exceptions), keywords
    (``keyword.kwlist``), stdlib-modules (public ``sys.stdlib_module_names``), builtin-exceptions,
    str / list / dict / set methods (public callables of ``dir``), math functions, itertools functions,
    string constants (str values of ``string.__all__``). builtin-types is lenient: every non-exception
    class in ``builtins`` counts (``map``, ``property`` as well as ``int``, ``dict``).
    """
    b = {n: getattr(builtins, n) for n in dir(builtins) if not n.startswith("_") and n not in _SITE_NAMES}
    functions = frozenset(n for n, o in b.items() if callable(o) and not _is_exception(o)) | {"help"}
    types = frozenset(n for n, o in b.items() if isinstance(o, type) and not _is_exception(o))
    exceptions = frozenset(n for n, o in b.items() if _is_exception(o))
    constants = frozenset(n for n in string.__all__ if isinstance(getattr(string, n), str))
    return [
        OpenSetProbe("builtin-functions", "Name a Python built-in function.", functions),
        OpenSetProbe("builtin-types", "Name a built-in data type in Python.", types),
        OpenSetProbe("keywords", "Name a Python keyword.", frozenset(keyword.kwlist)),
        OpenSetProbe("stdlib-modules", "Name a module in the Python standard library.",
                     _public(sys.stdlib_module_names), dotted="head"),
        OpenSetProbe("builtin-exceptions", "Name a built-in exception class in Python.", exceptions, dotted="last"),
        OpenSetProbe("str-methods", "Name a method of Python's str type.", _methods(str), dotted="last"),
        OpenSetProbe("list-methods", "Name a method of Python's list type.", _methods(list), dotted="last"),
        OpenSetProbe("dict-methods", "Name a method of Python's dict type.", _methods(dict), dotted="last"),
        OpenSetProbe("set-methods", "Name a method of Python's set type.", _methods(set), dotted="last"),
        OpenSetProbe("math-functions", "Name a function in Python's math module.", _callables(math), dotted="last"),
        OpenSetProbe("itertools-functions", "Name a function in Python's itertools module.", _callables(itertools),
                     dotted="last"),
        OpenSetProbe("string-constants", "Name a constant defined in Python's string module.", constants,
                     dotted="last"),
    ]
