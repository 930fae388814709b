"""Grammar-constrained decoding (tokjax.logits.grammar): tables against outlines-core's own index, outputs that
parse for hypothesis-generated JSON schemas, regex full matches, composition, speculative decoding, bad input."""

from __future__ import annotations

import dataclasses
import json
import re

import jax
import jax.numpy as jnp
import numpy as np
import outlines_core
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tokjax
from tokjax.decoding import drafts, speculative, verify
from tokjax.decoding.driver import TRACE_COUNTS
from tokjax.logits import LogitContext, chain, greedy, temperature, top_k
from tokjax.logits.grammar import json_constraint, json_schema_regex, regex_constraint

# One table shape for every hypothesis schema (the largest of 200 examples had 235 states and 9,834
# transitions on tiny-test's 300-token vocabulary), so they all share one compiled decode loop.
MAX_STATES, MAX_TRANSITIONS = 512, 16384
# Every sampled decode below has these shapes (prompts padded to WIDTH), so they share one compiled loop.
ROWS, WIDTH, NEW_TOKENS = 4, 16, 160


def _generate(model, tok, texts, transform, eos_id, key):
    """Returns generate's output for ``texts`` (cycled to ROWS rows, padded to WIDTH) under ``transform``."""
    rows = [tok.encode(texts[i % len(texts)]) for i in range(ROWS)]
    arr = np.zeros((ROWS, WIDTH), np.int32)
    for r, ids in enumerate(rows):
        arr[r, :len(ids)] = ids
    return tokjax.generate(model, arr, prompt_lengths=[len(r) for r in rows], key=key, max_new_tokens=NEW_TOKENS,
                           logits=transform, eos_id=eos_id)


@pytest.fixture(scope="module")
def tiny():
    model, tok = tokjax.pretrained("tiny-test", progress=False)
    # RoPE has no position table: a longer max_len only lifts the length check, so JSON objects fit.
    return tokjax.Model(model.params, dataclasses.replace(model.cfg, max_len=256)), tok


def _outlines_index(pattern: str, tok, eos: int):
    """outlines-core's own index over the tokenizer's byte spellings (the oracle for the packed tables)."""
    vocab: dict[bytes, list[int]] = {}
    for i, b in enumerate(tok.id_to_bytes):
        if b and i != eos:
            vocab.setdefault(b, []).append(i)
    return outlines_core.Index(pattern, outlines_core.Vocabulary(eos, vocab))


def _ctx(tokens: np.ndarray, lengths) -> LogitContext:
    return LogitContext(tokens=jnp.asarray(tokens, jnp.int32), lengths=jnp.asarray(lengths, jnp.int32),
                        step=jnp.zeros((), jnp.int32))


def _finite(x) -> set[int]:
    return set(np.flatnonzero(np.isfinite(np.asarray(x))).tolist())


# ------------------------------------------------------------------------------------------------ tables


@pytest.mark.parametrize("kind", ["regex", "json"])
def test_masks_and_transitions_equal_outlines_index_on_random_walks(tiny, kind):
    _, tok = tiny
    if kind == "regex":
        pattern, c = r"(ab|c[0-9]{1,3})+ é?", regex_constraint(r"(ab|c[0-9]{1,3})+ é?", tok)
    else:
        schema = {"type": "object", "properties": {"a": {"type": "string", "maxLength": 3},
                                                   "b": {"type": "array", "items": {"type": "integer"}, "maxItems": 2}},
                  "required": ["a", "b"]}
        pattern = json_schema_regex(schema)
        c = json_constraint(schema, tok)
    index = _outlines_index(pattern, tok, tok.eos_id)
    V = tok.vocab_size
    apply = jax.jit(c.apply)
    rng = np.random.default_rng(0)
    for walk in range(6):
        S = 40
        buf = np.zeros((1, S), np.int32)
        buf[0, 0] = 17  # a one-token prompt, not part of the match
        state, s_ref, n = c.init(1), index.get_initial_state(), 1
        while True:
            masked, state = apply(jnp.zeros((1, V)), state, _ctx(buf, [n]))
            want = set(index.get_allowed_tokens(s_ref))
            assert _finite(masked[0]) == want, (walk, n)
            choices = sorted(want - {tok.eos_id})
            if not choices or n == S:
                break
            t = int(rng.choice(choices))
            buf[0, n], n = t, n + 1
            s_ref = index.get_next_state(s_ref, t)
        # one apply advancing over the whole walk at once (a speculative step commits several tokens)
        _, started = apply(jnp.zeros((1, V)), c.init(1), _ctx(buf, [1]))
        once, late = apply(jnp.zeros((1, V)), started, _ctx(buf, [n]))
        assert _finite(once[0]) == want
        assert int(late.consumed[0]) == n


def test_byte_level_spellings_reach_outlines(tiny):
    """Tokens are given as their bytes (GPT-2 characters mapped back), so ' the' is one allowed token and a
    UTF-8 character split over byte tokens still matches."""
    _, tok = tiny
    c = regex_constraint(" the", tok)
    first = _finite(jax.jit(c.apply)(jnp.zeros((1, tok.vocab_size)), c.init(1), _ctx(np.zeros((1, 4)), [1]))[0][0])
    spelled = {i for i, b in enumerate(tok.id_to_bytes) if b and b" the".startswith(b)}
    assert first == spelled and tok.bytes_to_id[b" the"] in first and tok.bytes_to_id[b" "] in first
    e = regex_constraint("é", tok)
    first = _finite(jax.jit(e.apply)(jnp.zeros((1, tok.vocab_size)), e.init(1), _ctx(np.zeros((1, 4)), [1]))[0][0])
    assert first == {i for i, b in enumerate(tok.id_to_bytes) if b and "é".encode().startswith(b)}


def test_dead_row_is_fully_masked_and_eos_only_in_final_states(tiny):
    _, tok = tiny
    c = regex_constraint("ab", tok)
    a, b, z = (tok.bytes_to_id[x] for x in (b"a", b"b", b"z"))
    buf = np.array([[5, a, b, 0], [5, z, 0, 0], [5, a, 0, 0]], np.int32)
    apply = jax.jit(c.apply)
    _, state = apply(jnp.zeros((3, tok.vocab_size)), c.init(3), _ctx(buf, [1, 1, 1]))
    out, state = apply(jnp.zeros((3, tok.vocab_size)), state, _ctx(buf, [3, 2, 2]))
    assert _finite(out[0]) == {tok.eos_id}  # "ab" matched: only eos
    assert _finite(out[1]) == set()  # "z" left the automaton: nothing
    assert tok.eos_id not in _finite(out[2]) and b in _finite(out[2])
    assert int(state.fsm[1]) == -1
    # several eos ids (chat models have more than one): each ends a full match, and only there
    two = regex_constraint("ab", tok, eos_id=[tok.eos_id, tok.pad_id])
    apply2 = jax.jit(two.apply)
    _, state = apply2(jnp.zeros((3, tok.vocab_size)), two.init(3), _ctx(buf, [1, 1, 1]))
    out, _ = apply2(jnp.zeros((3, tok.vocab_size)), state, _ctx(buf, [3, 2, 2]))
    assert _finite(out[0]) == {tok.eos_id, tok.pad_id} and two.eos_id == tok.eos_id
    assert not {tok.eos_id, tok.pad_id} & _finite(out[2])


def test_new_schema_of_the_same_shape_is_the_same_static_transform(tiny):
    _, tok = tiny
    c1 = json_constraint({"type": "boolean"}, tok, max_states=64, max_transitions=1024)
    c2 = json_constraint({"enum": ["x", "yz"]}, tok, max_states=64, max_transitions=1024)
    c3 = json_constraint({"enum": ["x", "yz"]}, tok)
    assert c1 == c2 and hash(c1) == hash(c2) and c1.pattern != c2.pattern
    assert c3 != c1  # default sizes bucket differently
    assert c1.num_states <= 64 and c1.shape.n_states == 64


# ------------------------------------------------------------------------------------------------ decoding


def _schema_strategy():
    names = st.text(alphabet="abcdefghijklmnopqrstuvwxyz", min_size=1, max_size=4)
    words = st.text(alphabet="abcdefghijklmnopqrstuvwxyz", min_size=1, max_size=5)
    primitive = st.one_of(
        st.builds(lambda n: {"type": "string", "maxLength": n}, st.integers(0, 6)),
        # outlines enforces maxDigits (not minimum/maximum; and 0.2.14 reads maxDigits 1 as unbounded), and
        # unbounded digits would rarely end on a tiny model
        st.builds(lambda n: {"type": "integer", "maxDigits": n}, st.integers(2, 3)),
        st.just({"type": "boolean"}),
        st.builds(lambda v: {"enum": v},
                  st.lists(st.one_of(words, st.integers(-50, 50)), min_size=1, max_size=3, unique=True)),
    )

    def array(items):
        return st.builds(lambda it, n: {"type": "array", "items": it, "maxItems": n}, items, st.integers(0, 3))

    def obj(fields, most):
        return st.dictionaries(names, fields, min_size=1, max_size=most).map(
            lambda p: {"type": "object", "properties": p, "required": sorted(p)})

    return obj(st.one_of(primitive, array(primitive), obj(st.one_of(primitive, array(primitive)), 2)), 4)


def _validate(value, schema, where="$"):
    """Raises AssertionError unless ``value`` is valid for the schema subset generated above."""
    if "enum" in schema:
        assert any(value == e and type(value) is type(e) for e in schema["enum"]), (where, value)
        return
    kind = schema["type"]
    if kind == "string":
        assert isinstance(value, str) and len(value) <= schema["maxLength"], (where, value)
    elif kind == "integer":
        assert type(value) is int and len(str(abs(value))) <= schema["maxDigits"], (where, value)
    elif kind == "boolean":
        assert isinstance(value, bool), (where, value)
    elif kind == "array":
        assert isinstance(value, list) and len(value) <= schema["maxItems"], (where, value)
        for i, v in enumerate(value):
            _validate(v, schema["items"], f"{where}[{i}]")
    elif kind == "object":
        assert isinstance(value, dict) and set(value) == set(schema["required"]), (where, value)
        for k, v in value.items():
            _validate(v, schema["properties"][k], f"{where}.{k}")
    else:
        raise AssertionError(f"unexpected schema {schema}")


def _decode_json(model, tok, schema, seed):
    c = json_constraint(schema, tok, max_states=MAX_STATES, max_transitions=MAX_TRANSITIONS)
    out = _generate(model, tok, ["The answer as JSON: "], c, c.eos_id, jax.random.key(seed))
    assert not any(out.stats["masked_rows"]), "the automaton left a row with no allowed token"
    finished = 0
    for ids in out.completions():
        ids = ids.tolist()
        if ids and ids[-1] == c.eos_id:
            text = tok.decode(ids[:-1])
            assert re.fullmatch(c.pattern, text), text
            _validate(json.loads(text), schema)
            finished += 1
        else:  # out of budget: still a prefix the automaton accepts (its state is alive)
            assert len(ids) == NEW_TOKENS
    return finished


def _run_schemas(tiny, max_examples):
    model, tok = tiny
    totals = {"rows": 0, "finished": 0, "traces": set()}

    @settings(max_examples=max_examples)
    @given(schema=_schema_strategy(), seed=st.integers(0, 2**16))
    def check(schema, seed):
        totals["finished"] += _decode_json(model, tok, schema, seed)
        totals["rows"] += ROWS
        totals["traces"].add(TRACE_COUNTS["decode_loop"])

    check()
    # every schema ran in the program compiled for the first one (same padded table shapes)
    assert len(totals["traces"]) == 1, totals["traces"]
    assert totals["finished"] >= 0.8 * totals["rows"], totals
    return totals


def test_hypothesis_json_schemas_parse(tiny):
    assert _run_schemas(tiny, 20)["rows"] > 0


@pytest.mark.slow
def test_hypothesis_json_schemas_parse_200(tiny):
    assert _run_schemas(tiny, 200)["rows"] > 0


@pytest.mark.parametrize("pattern", [r"[0-9]{3}-[0-9]{4}", r"(19|20)[0-9]{2}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])",
                                     r"(yes|no|maybe), (because|since) [a-z]{1,8}\."])
def test_regex_outputs_fullmatch(tiny, pattern):
    model, tok = tiny
    c = regex_constraint(pattern, tok, max_states=MAX_STATES, max_transitions=MAX_TRANSITIONS)
    out = _generate(model, tok, ["Call me at ", "x"], c, c.eos_id, jax.random.key(7))
    texts = []
    for ids in out.completions():
        assert ids[-1] == c.eos_id, "every row of a bounded regex ends"
        texts.append(tok.decode(ids[:-1]))
        assert re.fullmatch(pattern, texts[-1]), texts[-1]
    assert len(set(texts)) > 1  # sampled, not one forced string


def test_composes_with_top_k_and_temperature(tiny):
    model, tok = tiny
    c = regex_constraint(r"[a-z]+ [0-9]{2}", tok)
    logits = jax.random.normal(jax.random.key(0), (2, tok.vocab_size))
    buf = np.zeros((2, 8), np.int32)
    composed = chain(c, top_k(3), temperature(0.5))
    out, _ = jax.jit(composed.apply)(logits, composed.init(2), _ctx(buf, [1, 1]))
    allowed = _finite(jax.jit(c.apply)(logits[:1], c.init(1), _ctx(buf[:1], [1]))[0][0])
    for r in range(2):
        top = sorted(allowed, key=lambda v: -float(logits[r, v]))[:3]
        assert _finite(out[r]) == set(top)
        np.testing.assert_allclose(np.asarray(out[r, top]), np.asarray(logits[r, top]) / 0.5, rtol=1e-6)
    gen = _generate(model, tok, ["id: "], chain(c, top_k(5), temperature(0.7)), c.eos_id, jax.random.key(1))
    done = [ids for ids in gen.completions() if ids[-1] == c.eos_id]
    assert done and all(re.fullmatch(r"[a-z]+ [0-9]{2}", tok.decode(ids[:-1])) for ids in done)


SCHEMA = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 6},
                                           "age": {"type": "integer", "maxDigits": 2},
                                           "ok": {"type": "boolean"}, "color": {"enum": ["red", "green"]}},
          "required": ["name", "age", "ok", "color"]}


@pytest.mark.slow  # default-suite time; the file's other tests keep the method covered in the default suite
def test_speculative_greedy_equals_plain_greedy_under_the_constraint(tiny):
    """Draft tokens are checked against the automaton at every block position: prompt lookup proposes the
    prompt's JSON (valid) and other tokens (invalid), and greedy verification commits exactly plain greedy's
    tokens, so rejected tails never touch the automaton state."""
    model, tok = tiny
    c = json_constraint(SCHEMA, tok)
    prompts = [tok.encode('{ "name" : "ab", "age" : 3, "ok" : true, "color" : "red" } again: '),
               tok.encode("x"), tok.encode('{ "name" : "')]
    kw = dict(max_new_tokens=100, logits=chain(c, greedy()), eos_id=c.eos_id)
    plain = tokjax.generate(model, prompts, **kw)
    spec = tokjax.generate(model, prompts, strategy=speculative(drafts.prompt_lookup(3, 8), verify.greedy()), **kw)
    for a, b in zip(plain.completions(), spec.completions()):
        assert a.tolist() == b.tolist()
        json.loads(tok.decode(a[:-1]))
    assert spec.stats["forward_calls"] < plain.stats["forward_calls"]  # drafts were accepted


@pytest.mark.slow
def test_speculative_rejection_sampling_outputs_parse(tiny):
    model, tok = tiny
    c = json_constraint(SCHEMA, tok)
    prompt = tok.encode('{ "name" : "ab", "age" : 3, "ok" : true, "color" : "red" } ')
    out = tokjax.generate(model, [prompt] * 6, key=jax.random.key(3), max_new_tokens=100,
                          logits=chain(c, temperature(0.8)), eos_id=c.eos_id,
                          strategy=speculative(drafts.prompt_lookup(3, 8), verify.rejection()))
    assert out.stats["tokens_per_call"] > 1
    for ids in out.completions():
        assert ids[-1] == c.eos_id
        _validate(json.loads(tok.decode(ids[:-1])), SCHEMA)


@pytest.mark.slow
def test_smollm2_json_with_chat_template():
    """The real model (byte-level BPE, V=49152) answers in JSON that parses and fits the schema."""
    model, tok = tokjax.pretrained("smollm2-135m-instruct")
    schema = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 20},
                                               "country": {"type": "string", "maxLength": 20},
                                               "population_millions": {"type": "integer", "maxDigits": 3}},
              "required": ["city", "country", "population_millions"]}
    c = json_constraint(schema, tok, whitespace=r"[ ]?")
    assert c.eos_id == tok.eos_id and tok.id_to_bytes[tok.encode(' {')[0]] == b" {"
    prompt = tok.apply_chat_template([{"role": "user", "content": "Name a large city as JSON with city, country and "
                                                                  "population_millions."}])
    out = tokjax.generate(model, [prompt], max_new_tokens=64, logits=chain(c, greedy()), eos_id=c.eos_id)
    ids = out.completions()[0].tolist()
    assert ids[-1] == c.eos_id
    value = json.loads(tok.decode(ids[:-1]))
    assert set(value) == {"city", "country", "population_millions"} and isinstance(value["population_millions"], int)


# ------------------------------------------------------------------------------------------------ bad input


def test_bad_input_raises_clear_errors(tiny):
    model, tok = tiny
    with pytest.raises(ValueError, match="cannot compile the regex"):
        regex_constraint("(ab", tok)
    with pytest.raises(ValueError, match="cannot compile the regex"):
        regex_constraint("☃", _AsciiOnly(tok))
    with pytest.raises(ValueError, match="cannot compile this JSON schema"):
        json_constraint({"type": "frobnicate"}, tok)
    with pytest.raises(ValueError, match="not valid JSON"):
        json_constraint("{'type': 'object'}", tok)
    with pytest.raises(ValueError, match="JSON schema dict"):
        json_constraint(["type"], tok)
    with pytest.raises(ValueError, match="tokjax tokenizer"):
        regex_constraint("a", object())
    with pytest.raises(ValueError, match="eos_id"):
        regex_constraint("a", tok, eos_id=10**6)
    with pytest.raises(ValueError, match="max_states"):
        regex_constraint("[a-z]{20}", tok, max_states=4)
    with pytest.raises(ValueError, match="smaller than the tokenizer"):
        regex_constraint("a", tok, vocab_size=10)
    c = regex_constraint("a", tok)
    with pytest.raises(ValueError, match="LogitContext"):
        c(jnp.zeros((1, tok.vocab_size)))
    # a model whose vocabulary is not the tokenizer's (raised while generate traces its loop)
    wide = jnp.zeros((1, tok.vocab_size + 12))
    with pytest.raises(ValueError, match=r"compiled for a vocabulary of 300 tokens but the logits have 312"):
        c.apply(wide, c.init(1), _ctx(np.zeros((1, 4)), [1]))
    # a model whose vocabulary pads the tokenizer's: the extra ids are never allowed
    padded = regex_constraint("a", tok, vocab_size=tok.vocab_size + 12)
    out, _ = jax.jit(padded.apply)(wide, padded.init(1), _ctx(np.zeros((1, 4)), [1]))
    assert _finite(out[0]) == {tok.bytes_to_id[b"a"]}


class _AsciiOnly:
    """A tokenizer view whose vocabulary spells no non-ASCII byte (so some regexes cannot be spelled)."""

    def __init__(self, tok):
        self.vocab_size, self.eos_id = tok.vocab_size, tok.eos_id
        self.id_to_bytes = [b if all(x < 128 for x in b) else b"" for b in tok.id_to_bytes]
