"""Tests for P73 In-Context Navigation and its baselines (tokjax.decoding.navigation) on a tiny random model."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import tokjax
from tokjax.decoding import navigation as nav
from tokjax.decoding.navigation import (
    NavigationTemplate, first_line, in_context_navigation, navigation_prompt, sample_answers, top_n_first_tokens,
)
from tokjax.model.forward import Inputs, forward

V = 128
QUESTIONS = ["Name a colour.", "Name a fruit please.", "Name a Python keyword."]
NEW = 6


class CharTokenizer:
    """One id per ASCII character (a bijection on ASCII text): prompts can be read back exactly."""

    eos_id = None
    pad_id = 0

    def encode(self, text):
        return [ord(c) % V for c in text]

    def decode(self, ids):
        return "".join(chr(int(i)) for i in ids)


class ChatCharTokenizer(CharTokenizer):
    chat_template = "<u>{content}<a>"

    def apply_chat_template(self, messages, add_generation_prompt=True):
        (m,) = messages
        return self.encode("<u>" + m["content"] + "<a>")


def clean(text):
    """Deterministic, never empty, sometimes repeated: exercises the listing of distinct answers."""
    return "w" + "".join(c for c in text if c.isalnum())[:1]


@pytest.fixture(scope="module")
def model():
    cfg = tokjax.ModelConfig(vocab_size=V, d_model=32, n_layers=1, n_heads=2, max_len=160)
    return tokjax.Model.init(cfg, jax.random.key(0))


@pytest.fixture
def calls(monkeypatch):
    seen = []
    real = nav.generate

    def counting(model, prompts, **kw):
        seen.append((len(prompts), kw))
        return real(model, prompts, **kw)

    monkeypatch.setattr(nav, "generate", counting)
    return seen


def test_each_round_lists_the_earlier_answers_in_one_generate_call(model, calls):
    tok, rounds = CharTokenizer(), 4
    res = in_context_navigation(model, tok, QUESTIONS, rounds, max_new_tokens=NEW, clean=clean, stop=())
    assert len(calls) == rounds and all(b == len(QUESTIONS) for b, _ in calls)  # one batched call per round
    assert all(type(kw["logits"]).__name__ == "Greedy" for _, kw in calls)
    assert len(res.prompts) == rounds and all(len(p) == len(QUESTIONS) for p in res.prompts)
    t = nav.DEFAULT_TEMPLATE
    for j, q in enumerate(QUESTIONS):
        assert len(res.answers[j]) == len(res.texts[j]) == rounds
        assert res.answers[j] == [clean(x) for x in res.texts[j]]
        for i in range(rounds):
            given = list(dict.fromkeys(res.answers[j][:i]))  # distinct earlier answers, in order
            assert tok.decode(res.prompts[i][j]) == t.text(q, given)
            for a in given:
                assert a in tok.decode(res.prompts[i][j])
        assert tok.decode(res.prompts[0][j]) == q  # nothing given in round 1
        assert "Already given: " + res.answers[j][0] in tok.decode(res.prompts[1][j])


@pytest.mark.slow
def test_round_one_is_greedy_decoding_and_top_one_forced_equals_it(model):
    tok = CharTokenizer()
    res = in_context_navigation(model, tok, QUESTIONS, 1, max_new_tokens=NEW, stop=())
    out = tokjax.generate(model, [tok.encode(q) for q in QUESTIONS], max_new_tokens=NEW, logits=tokjax.logits.greedy())
    assert [x[0] for x in res.texts] == out.texts(tok)
    assert [x[0] for x in res.answers] == [first_line(t) for t in out.texts(tok)]
    top = top_n_first_tokens(model, tok, QUESTIONS, 4, max_new_tokens=NEW, stop=())
    assert [x[0] for x in top.texts] == out.texts(tok)  # the top-1 first token completed greedily = greedy
    for j, q in enumerate(QUESTIONS):  # the forced first tokens are the distribution's top 4, in rank order
        ids = jnp.asarray([tok.encode(q)])
        logits = forward(model.params, model.cfg, Inputs(tokens=ids), compute_logits=True).logits
        want = np.argsort(-np.asarray(logits[0, -1]), kind="stable")[:4]
        assert [ord(t[0]) for t in top.texts[j]] == want.tolist()
        assert len(top.answers[j]) == 4


def test_baselines_make_one_or_two_generate_calls(model, calls):
    tok = CharTokenizer()
    top_n_first_tokens(model, tok, QUESTIONS, 3, max_new_tokens=NEW)
    assert [b for b, _ in calls] == [3, 9]  # first-token distribution, then questions x n forced prompts
    assert calls[0][1]["logprobs"] == 3 and calls[0][1]["max_new_tokens"] == 1
    calls.clear()
    a = sample_answers(model, tok, QUESTIONS, 5, key=jax.random.key(1), max_new_tokens=NEW)
    assert len(calls) == 1 and calls[0][1]["n"] == 5
    b = sample_answers(model, tok, QUESTIONS, 5, key=jax.random.key(1), max_new_tokens=NEW)
    assert a == b and all(len(x) == 5 for x in a.answers)  # same key, same samples
    assert len({t for x in a.texts for t in x}) > 3  # temperature 1 on a random model: the samples differ


def test_chat_template_answer_prefix_and_single_question(model):
    tok = ChatCharTokenizer()
    t = NavigationTemplate(first="Q: {question}", more="Q: {question} Not: {given}. Another:", answer_prefix="`")
    ids = navigation_prompt(tok, "Name a fruit.", ["apple", "kiwi"], template=t)
    assert tok.decode(ids) == "<u>Q: Name a fruit. Not: apple, kiwi. Another:<a>`"
    assert tok.decode(navigation_prompt(tok, "Name a fruit.", template=t, chat=False)) == "Q: Name a fruit.`"
    res = in_context_navigation(model, tok, "Name a fruit.", 2, template=t, max_new_tokens=NEW, clean=clean)
    assert isinstance(res.answers, list) and len(res.answers) == 2 and isinstance(res.answers[0], str)
    assert all(x.startswith("`") for x in res.texts)
    assert tok.decode(res.prompts[1][0]).startswith("<u>Q: Name a fruit. Not: " + res.answers[0])
    with pytest.raises(ValueError, match="chat template"):
        navigation_prompt(CharTokenizer(), "Name a fruit.", chat=True)


def test_bad_input(model):
    tok = CharTokenizer()
    with pytest.raises(ValueError, match="rounds"):
        in_context_navigation(model, tok, QUESTIONS, 0)
    with pytest.raises(ValueError, match="question"):
        in_context_navigation(model, tok, [], 2)
    with pytest.raises(ValueError, match="question"):
        in_context_navigation(model, tok, ["ok", "  "], 2)
    with pytest.raises(ValueError, match="one callable per question"):
        in_context_navigation(model, tok, QUESTIONS, 2, clean=[first_line])
    with pytest.raises(ValueError, match="max_new_tokens"):
        top_n_first_tokens(model, tok, QUESTIONS, 2, max_new_tokens=0)
    with pytest.raises(ValueError, match="n must be"):
        top_n_first_tokens(model, tok, QUESTIONS, 0)
    with pytest.raises(ValueError, match="temp"):
        sample_answers(model, tok, QUESTIONS, 2, key=jax.random.key(0), temp=0.0)
    with pytest.raises(ValueError, match="key"):
        sample_answers(model, tok, QUESTIONS, 2, key=None)
    with pytest.raises(ValueError, match="given"):
        NavigationTemplate(more="{question} again")
    with pytest.raises(ValueError, match="NavigationTemplate"):
        navigation_prompt(tok, "q", template="{question}")
