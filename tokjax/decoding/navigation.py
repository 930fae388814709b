"""In-Context Navigation (ICN; P73, "Correlation and Navigation in the Vocabulary Key Representation Space of
Language Models", ICLR 2025) and the two baselines it is compared with, all on ``tokjax.generate``.

Next-token prediction ranks tokens by ``k_v . h(x)``; the middle ranks of one distribution are crowded by
tokens whose keys resemble the top-1 key (see :mod:`tokjax.analysis.vocab_keys`), so reading several
answers off a single distribution finds few new correct ones. ICN moves the *query* instead: each round
the prompt lists what was already answered and asks for a different answer, and greedy decoding reads
the new top-1 (the notes' algorithm, no official code)::

    explored = []
    for i in 1..N:
        prompt = template(question) + " Already given: " + ", ".join(explored) + ". Give a different one:"
        a_i = greedy_decode(prompt)
        explored.append(a_i)

:func:`in_context_navigation` runs the N rounds for a batch of questions, one ``generate`` call per round
(every question's round-i prompt in one batch), through the tokenizer's chat template when it has one.
Baselines, same prompt as ICN's first round: :func:`top_n_first_tokens` (the n most likely first tokens
of that one distribution, each forced and then decoded greedily: two ``generate`` calls) and
:func:`sample_answers` (n samples at a temperature: one call).

A :class:`NavigationTemplate` fixes the wording: ``first`` (round 1) and ``more`` (later rounds) are
format strings with ``{question}`` and ``{given}`` (the explored answers joined by ``separator``);
``answer_prefix`` opens the assistant's answer (e.g. a backtick, so a chat model answers with a name
rather than a sentence) and is part of every returned text. ``clean(text)`` turns a generated text into
the answer that the next round lists (default :func:`first_line`; an open-set probe's ``normalize``
fits); empty and repeated answers are not listed again.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import NamedTuple

import jax
import numpy as np

from tokjax.decoding.driver import generate
from tokjax.logits import greedy, temperature

__all__ = ["DEFAULT_TEMPLATE", "Navigation", "NavigationTemplate", "first_line", "in_context_navigation",
           "navigation_prompt", "sample_answers", "top_n_first_tokens"]


@dataclasses.dataclass(frozen=True)
class NavigationTemplate:
    """The wording of an ICN prompt: ``first`` (no answers yet), ``more`` (with ``{given}``), both with
    ``{question}``; ``answer_prefix`` opens the answer; ``separator`` joins the explored answers."""

    first: str = "{question}"
    more: str = "{question} Already given: {given}. Give a different one:"
    answer_prefix: str = ""
    separator: str = ", "

    def __post_init__(self) -> None:
        for name in ("first", "more", "answer_prefix", "separator"):
            if not isinstance(getattr(self, name), str):
                raise ValueError(f"NavigationTemplate.{name} must be a str, got {type(getattr(self, name)).__name__}")
        if "{question}" not in self.first or "{question}" not in self.more or "{given}" not in self.more:
            raise ValueError("NavigationTemplate needs {question} in `first` and `more`, and {given} in `more`; got "
                             f"first={self.first!r}, more={self.more!r}")

    def text(self, question: str, given: Sequence[str] = ()) -> str:
        """Returns the user message for ``question`` with the explored answers ``given``."""
        if not given:
            return self.first.format(question=question)
        return self.more.format(question=question, given=self.separator.join(given))


DEFAULT_TEMPLATE = NavigationTemplate()


class Navigation(NamedTuple):
    """Answers of one method: ``answers[q][i]`` the cleaned i-th answer to question q, ``texts[q][i]`` its
    generated text (``answer_prefix`` + completion), ``prompts[c][r]``: row r's prompt ids of generate call c
    (ICN: call c is round c + 1)."""

    answers: list
    texts: list
    prompts: list


def first_line(text: str) -> str:
    """Returns the first non-empty line of ``text``, stripped of spaces and a trailing period."""
    line = next((ln for ln in text.splitlines() if ln.strip()), "")
    return line.strip().rstrip(".").strip()


def _chat(tokenizer, chat: bool | None) -> bool:
    has = (callable(getattr(tokenizer, "apply_chat_template", None))
           and getattr(tokenizer, "chat_template", "") is not None)
    if chat is None:
        return has
    if chat and not has:
        raise ValueError("chat=True needs a tokenizer with a chat template (apply_chat_template)")
    return bool(chat)


def navigation_prompt(tokenizer, question: str, given: Sequence[str] = (), *,
                      template: NavigationTemplate = DEFAULT_TEMPLATE, chat: bool | None = None) -> list[int]:
    """Returns the prompt ids for ``question`` with the explored answers ``given``: the template's user message,
    in the tokenizer's chat template (one user turn, generation prompt) when it has one (``chat=None``) or
    ``chat=True``, else the plain text; then ``template.answer_prefix``."""
    if not isinstance(template, NavigationTemplate):
        raise ValueError(f"template must be a NavigationTemplate, got {type(template).__name__}")
    if not isinstance(question, str) or not question.strip():
        raise ValueError(f"question must be a non-empty str, got {question!r}")
    text = template.text(question, list(given))
    if _chat(tokenizer, chat):
        ids = list(tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True))
    else:
        ids = list(tokenizer.encode(text))
    if template.answer_prefix:
        ids += list(tokenizer.encode(template.answer_prefix))
    return ids


def _questions(question) -> tuple[list[str], bool]:
    single = isinstance(question, str)
    qs = [question] if single else list(question)
    if not qs or not all(isinstance(q, str) and q.strip() for q in qs):
        raise ValueError(f"question must be a non-empty str or a non-empty list of them, got {question!r}")
    return qs, single


def _cleaners(clean, n: int) -> list[Callable[[str], str]]:
    if clean is None:
        return [first_line] * n
    if callable(clean):
        return [clean] * n
    cs = list(clean)
    if len(cs) != n or not all(callable(c) for c in cs):
        raise ValueError(f"clean must be a callable or one callable per question ({n}), got {clean!r}")
    return cs


def _check_count(name: str, x) -> int:
    if not isinstance(x, (int, np.integer)) or isinstance(x, bool) or x < 1:
        raise ValueError(f"{name} must be an int >= 1, got {x!r}")
    return int(x)


def _eos(tokenizer, eos_id):
    return tokenizer.eos_id if eos_id is None else eos_id


def _decode(model, tokenizer, prompts, *, max_new_tokens, eos_id, stop, **kw):
    stop = list(stop) if stop else None
    return generate(model, prompts, max_new_tokens=max_new_tokens, eos_id=eos_id, stop=stop,
                    tokenizer=tokenizer if stop else None, pad_id=getattr(tokenizer, "pad_id", None) or 0, **kw)


def _unpack(values: list, single: bool):
    return values[0] if single else values


def in_context_navigation(model, tokenizer, question, rounds: int, *, template: NavigationTemplate = DEFAULT_TEMPLATE,
                          max_new_tokens: int = 16, clean=None, chat: bool | None = None, eos_id=None,
                          stop: Sequence[str] = ("\n",)) -> Navigation:
    """Returns the Navigation of ``rounds`` ICN rounds (P73) for ``question`` (one str or a list: batched).

    Round i's prompt (:func:`navigation_prompt`) lists the distinct non-empty cleaned answers of rounds
    1..i-1; every question's round-i prompt goes into one greedy ``generate`` call (``max_new_tokens``,
    stopping at ``eos_id`` (default the tokenizer's) or a ``stop`` string, a newline by default). ``clean``:
    a callable or one per question mapping a generated text to its answer (default :func:`first_line`).
    With a single str question, ``answers``/``texts`` are that question's lists and each ``prompts`` entry
    holds one row.
    """
    qs, single = _questions(question)
    rounds = _check_count("rounds", rounds)
    max_new_tokens = _check_count("max_new_tokens", max_new_tokens)
    cleaners = _cleaners(clean, len(qs))
    explored: list[list[str]] = [[] for _ in qs]
    answers: list[list[str]] = [[] for _ in qs]
    texts: list[list[str]] = [[] for _ in qs]
    prompts = []
    for _ in range(rounds):
        batch = [navigation_prompt(tokenizer, q, explored[j], template=template, chat=chat) for j, q in enumerate(qs)]
        out = _decode(model, tokenizer, batch, max_new_tokens=max_new_tokens, eos_id=_eos(tokenizer, eos_id),
                      stop=stop, logits=greedy())
        for j, t in enumerate(out.texts(tokenizer)):
            text = template.answer_prefix + t
            a = cleaners[j](text)
            texts[j].append(text)
            answers[j].append(a)
            if a and a not in explored[j]:
                explored[j].append(a)
        prompts.append(batch)
    return Navigation(answers=_unpack(answers, single), texts=_unpack(texts, single), prompts=prompts)


def top_n_first_tokens(model, tokenizer, question, n: int, *, template: NavigationTemplate = DEFAULT_TEMPLATE,
                       max_new_tokens: int = 16, clean=None, chat: bool | None = None, eos_id=None,
                       stop: Sequence[str] = ("\n",)) -> Navigation:
    """Returns the Navigation of the single-distribution baseline: the ``n`` most likely first tokens of ICN's
    first-round prompt, each forced and completed greedily (``max_new_tokens`` in all, the forced one included).

    Two ``generate`` calls: one step recording the untransformed top-n (``logprobs=n``), then all
    questions x n forced prompts decoded greedily in one batch. Answers are in rank order.
    """
    qs, single = _questions(question)
    n = _check_count("n", n)
    max_new_tokens = _check_count("max_new_tokens", max_new_tokens)
    cleaners = _cleaners(clean, len(qs))
    base = [navigation_prompt(tokenizer, q, (), template=template, chat=chat) for q in qs]
    first = _decode(model, tokenizer, base, max_new_tokens=1, eos_id=None, stop=None, logits=temperature(1.0),
                    key=jax.random.key(0), logprobs=n)  # the sampled token is not used, only the recorded top-n
    tops = [first.top_ids[b, first.prompt_lengths[b]].tolist() for b in range(len(qs))]
    forced = [p + [t] for p, ts in zip(base, tops) for t in ts]
    eos = _eos(tokenizer, eos_id)
    if max_new_tokens > 1:
        out = _decode(model, tokenizer, forced, max_new_tokens=max_new_tokens - 1, eos_id=eos, stop=stop,
                      logits=greedy())
        comps = [c.tolist() for c in out.completions()]
    else:
        comps = [[] for _ in forced]
    answers, texts = [[] for _ in qs], [[] for _ in qs]
    for r, (row, comp) in enumerate(zip(forced, comps)):
        j = r // n
        text = template.answer_prefix + tokenizer.decode([row[-1]] + comp)
        texts[j].append(text)
        answers[j].append(cleaners[j](text))
    return Navigation(answers=_unpack(answers, single), texts=_unpack(texts, single), prompts=[base, forced])


def sample_answers(model, tokenizer, question, n: int, *, key, temp: float = 1.0,
                   template: NavigationTemplate = DEFAULT_TEMPLATE, max_new_tokens: int = 16, clean=None,
                   chat: bool | None = None, eos_id=None, stop: Sequence[str] = ("\n",)) -> Navigation:
    """Returns the Navigation of the sampling baseline: ``n`` samples at temperature ``temp`` of ICN's
    first-round prompt per question, one ``generate(n=n)`` call (``key``: a jax.random key)."""
    qs, single = _questions(question)
    n = _check_count("n", n)
    max_new_tokens = _check_count("max_new_tokens", max_new_tokens)
    if not isinstance(temp, (int, float)) or isinstance(temp, bool) or not temp > 0 or temp != temp:
        raise ValueError(f"temp must be a number > 0, got {temp!r}")
    if key is None:
        raise ValueError("sample_answers needs key= (a jax.random key)")
    cleaners = _cleaners(clean, len(qs))
    base = [navigation_prompt(tokenizer, q, (), template=template, chat=chat) for q in qs]
    out = _decode(model, tokenizer, base, max_new_tokens=max_new_tokens, eos_id=_eos(tokenizer, eos_id), stop=stop,
                  logits=temperature(float(temp)), key=key, n=n)
    answers, texts = [[] for _ in qs], [[] for _ in qs]
    for r, t in enumerate(out.texts(tokenizer)):
        j = r // n  # prompt-major rows
        text = template.answer_prefix + t
        texts[j].append(text)
        answers[j].append(cleaners[j](text))
    return Navigation(answers=_unpack(answers, single), texts=_unpack(texts, single), prompts=[base])
