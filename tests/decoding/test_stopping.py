"""Stopping: several eos ids, token-id stop sequences, stop strings (trimmed as transformers' StopStringCriteria),
min_new_tokens, and NaN / inf logits reported apart from banned rows (raise, or on_nan="stop")."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import tokjax
from tokjax import forward, generate, stream
from tokjax import logits as L
from tokjax.decoding import NonFiniteLogitsError, drafts, verify
from tokjax.decoding.speculative import speculative
from tokjax.logits import sample
from tests.model._models import small_model

MODEL = small_model(seed=3)  # V=61, max_len 48
V = MODEL.cfg.vocab_size
PROMPTS = [[5, 9, 14, 5, 9, 14, 5], [3, 1, 4, 1, 5], [7, 7]]
LOOKUP = speculative(drafts.prompt_lookup(max_ngram=2, num_draft=4), verify.greedy())


def cut_after(full, b, k):
    """Returns row b of ``full`` cut after its k-th completion token (the reference for any stop)."""
    row = full.tokens[b].copy()
    n = full.prompt_lengths[b] + k
    row[n:] = 0
    return row, n


@pytest.fixture(scope="module")
def greedy_full():
    return generate(MODEL, PROMPTS, max_new_tokens=16, logits=L.greedy())


@pytest.mark.slow  # default-suite time; the file's other tests keep the method covered in the default suite
def test_several_eos_ids_stop_each_row_at_the_first_of_them(greedy_full):
    comps = [c.tolist() for c in greedy_full.completions()]
    eos = [comps[0][3], comps[1][5]]
    for strategy in (None, LOOKUP):
        out = generate(MODEL, PROMPTS, max_new_tokens=16, logits=L.greedy(), eos_id=eos, strategy=strategy)
        for b, comp in enumerate(comps):
            k = next((i + 1 for i, t in enumerate(comp) if t in eos), len(comp))
            row, n = cut_after(greedy_full, b, k)
            assert out.lengths[b] == n, (b, eos, comp)
            np.testing.assert_array_equal(out.tokens[b], row)
    one = generate(MODEL, PROMPTS, max_new_tokens=16, logits=L.greedy(), eos_id=np.array(eos[:1]))
    assert one.lengths[0] == greedy_full.prompt_lengths[0] + 4


@pytest.mark.slow
def test_token_stop_sequences_stop_inside_the_loop_and_keep_the_sequence(greedy_full):
    comps = [c.tolist() for c in greedy_full.completions()]
    seq = comps[0][4:6]
    spanning = [PROMPTS[1][-1], comps[1][0]]  # starts in the prompt: never a match
    for strategy in (None, LOOKUP):
        out = generate(MODEL, PROMPTS, max_new_tokens=16, logits=L.greedy(), strategy=strategy, stop=[seq, spanning])
        for b, comp in enumerate(comps):
            k = next((i + 1 for i in range(1, len(comp)) if comp[i - 1:i + 1] in (seq, spanning)), len(comp))
            row, n = cut_after(greedy_full, b, k)
            assert out.lengths[b] == n
            np.testing.assert_array_equal(out.tokens[b], row)
        assert out.lengths[0] <= greedy_full.prompt_lengths[0] + 6


@pytest.mark.slow  # default-suite time; the file's other tests keep the method covered in the default suite
def test_min_new_tokens_bans_eos_until_reached_also_under_speculation():
    full = generate(MODEL, PROMPTS, max_new_tokens=12, logits=L.greedy())
    eos = int(full.completions()[0][0])  # row 0 would stop at once
    stopped = generate(MODEL, PROMPTS, max_new_tokens=12, logits=L.greedy(), eos_id=eos)
    assert stopped.lengths[0] == stopped.prompt_lengths[0] + 1
    want = greedy_with_banned_eos(eos, min_new=4, steps=12)
    for strategy in (None, LOOKUP):
        out = generate(MODEL, PROMPTS, max_new_tokens=12, logits=L.greedy(), eos_id=eos, min_new_tokens=4,
                       strategy=strategy)
        for b, comp in enumerate(out.completions()):
            assert eos not in comp[:4].tolist()
            assert comp.tolist() == want[b], (b, strategy)
    # a runtime value: another min_new_tokens reuses the compiled loop
    before = tokjax.decoding.TRACE_COUNTS["decode_loop"]
    generate(MODEL, PROMPTS, max_new_tokens=12, logits=L.greedy(), eos_id=eos, min_new_tokens=2)
    assert tokjax.decoding.TRACE_COUNTS["decode_loop"] == before


_full = jax.jit(lambda params, toks: forward(params, MODEL.cfg, toks).logits)


def greedy_with_banned_eos(eos, min_new, steps):
    """Greedy completions from full forwards, eos banned for the first ``min_new`` tokens, stopping at eos."""
    out = []
    for p in PROMPTS:
        seq = list(p)
        for t in range(steps):
            padded = np.zeros((1, 48), np.int32)
            padded[0, : len(seq)] = seq
            lg = np.array(_full(MODEL.params, jnp.asarray(padded))[0, len(seq) - 1])
            if t < min_new:
                lg[eos] = -np.inf
            seq.append(int(lg.argmax()))
            if seq[-1] == eos:
                break
        out.append(seq[len(p):])
    return out


def test_stop_sequences_count_only_from_min_new_tokens(greedy_full):
    comp = greedy_full.completions()[0].tolist()
    seq = comp[0:2]
    out = generate(MODEL, PROMPTS[:1], max_new_tokens=16, logits=L.greedy(), stop=[seq], min_new_tokens=3)
    later = next((i + 1 for i in range(2, len(comp)) if comp[i - 1:i + 1] == seq), len(comp))
    assert out.lengths[0] == len(PROMPTS[0]) + later


@pytest.fixture(scope="module")
def tiny():
    model, tok = tokjax.pretrained("tiny-test")
    prompts = [tok.encode("The function returns"), tok.encode("def f(x):"), tok.encode("import os")]
    kw = dict(max_new_tokens=24, logits=L.temperature(0.8), key=jax.random.key(0))
    return model, tok, prompts, kw, generate(model, prompts, **kw)


def first_stop(tok, comp, stops, min_new=0):
    """The definition: the smallest k >= min_new such that decode(comp[:k]) holds a stop string ending in token k."""
    for k in range(max(min_new, 1), len(comp) + 1):
        prev, cur = tok.decode(comp[: k - 1]), tok.decode(comp[:k])
        if any(s in cur and s not in prev for s in stops):
            return k
    return None


def spanning_stop(tok, comp, start):
    """Returns (stop string, j): a string spanning completion tokens j and j+1 (j >= start), first seen there."""
    for j in range(start, len(comp) - 1):
        a, b = tok.decode(comp[j:j + 1]), tok.decode(comp[j + 1:j + 2])
        if not a or not b:
            continue
        s = a[-1] + b[0]
        if s not in tok.decode(comp[: j + 1]) and s in tok.decode(comp[: j + 2]) and s.strip():
            return s, j
    raise AssertionError("no spanning stop string found")


def check_stop_strings(tiny, stops, min_new=0):
    model, tok, prompts, kw, full = tiny
    out = generate(model, prompts, **kw, stop=stops, tokenizer=tok, min_new_tokens=min_new)
    hits = []
    for b, comp in enumerate(full.completions()):
        k = first_stop(tok, comp.tolist(), stops, min_new)
        k = len(comp) if k is None else k
        row, n = cut_after(full, b, k)
        assert out.lengths[b] == n, (b, stops)
        np.testing.assert_array_equal(out.tokens[b], row)
        hits.append(out.stats["stop_strings"][b])
    return out, hits


def test_stop_strings_trim_exactly_including_one_that_spans_two_tokens(tiny):
    model, tok, prompts, kw, full = tiny
    comp = full.completions()[0].tolist()
    early, j = spanning_stop(tok, comp, 1)
    out, hits = check_stop_strings(tiny, [early])
    assert out.lengths[0] == full.prompt_lengths[0] + j + 2 and hits[0]  # cut after the second token of the span
    text = out.texts(tok)[0]
    assert text == tok.decode(comp[: j + 2]) and text.index(early) + len(early) > len(tok.decode(comp[: j + 1]))
    late, _ = spanning_stop(tok, comp, 12)  # found after the first chunk of steps
    check_stop_strings(tiny, [late])
    inside = next(tok.decode([t])[:2] for t in comp if len(tok.decode([t]).strip()) >= 3)  # overhanging token
    check_stop_strings(tiny, [inside, "\u2603never"])
    check_stop_strings(tiny, [early], min_new=j + 3)  # the first occurrence ends too early to count


def test_stream_checks_stop_strings_every_step_and_matches_generate(tiny):
    model, tok, prompts, kw, full = tiny
    stop, _ = spanning_stop(tok, full.completions()[1].tolist(), 2)
    out = generate(model, prompts, **kw, stop=[stop], tokenizer=tok, eos_id=[1, 2])
    pieces = [[] for _ in prompts]
    for step in stream(model, prompts, **kw, stop=[stop], tokenizer=tok, eos_id=[1, 2]):
        for b, toks in enumerate(step):
            pieces[b].extend(toks.tolist())
    assert pieces == [c.tolist() for c in out.completions()]


def test_bad_stopping_arguments_raise_clear_errors():
    kw = dict(max_new_tokens=2, logits=L.greedy())
    for bad in ([], [1.5], "3", [[1], 2], -1, V, True):
        with pytest.raises(ValueError, match="eos_id"):
            generate(MODEL, PROMPTS, eos_id=bad, **kw)
    for bad, msg in (([3, 4], "bare int"), ([[]], "non-empty"), ([[V]], r"\[0, 61\)"), ([""], "non-empty"),
                     (["ab"], "tokenizer"), (5, "list")):
        with pytest.raises(ValueError, match=msg):
            generate(MODEL, PROMPTS, stop=bad, **kw)
    for bad in (-1, 2.0, None):
        with pytest.raises(ValueError, match="min_new_tokens"):
            generate(MODEL, PROMPTS, min_new_tokens=bad, **kw)
    with pytest.raises(ValueError, match="on_nan"):
        generate(MODEL, PROMPTS, on_nan="ignore", **kw)


# ------------------------------------------------------------------------------------------- NaN / inf logits
def test_sample_reports_nan_rows_apart_from_banned_rows():
    logits = jnp.array([[0.0, 1.0, 2.0], [-jnp.inf] * 3, [0.0, jnp.nan, 1.0], [jnp.nan] * 3, [0.0, jnp.inf, 0.0]])
    for greedy in (False, True):
        tok, st = sample(jax.random.key(0), logits, greedy=greedy)
        np.testing.assert_array_equal(st.all_masked, [False, True, False, False, False])
        np.testing.assert_array_equal(st.nan_rows, [False, False, True, True, True])
        assert tok[3] == 0 and tok[1] == 0 and (greedy or tok[2] in (0, 2))  # sampling skips the NaN entry
    probs = jnp.array([[0.2, 0.8], [0.0, 0.0], [jnp.nan, 1.0], [-0.5, 1.0]])
    tok, st = sample(jax.random.key(0), probs=probs)
    np.testing.assert_array_equal(st.all_masked, [False, True, False, False])
    np.testing.assert_array_equal(st.nan_rows, [False, False, True, True])
    assert tok[2] == 1 and tok[3] == 1


POISON = 11  # the token whose (untied) embedding row is NaN; the clean model generates it for [3, 1, 4]


@pytest.fixture(scope="module")
def poisoned():
    clean = small_model(seed=3, tied_embeddings=False)
    params = dict(clean.params)
    params["embed"] = clean.params["embed"].at[POISON].set(jnp.nan)
    return clean, tokjax.Model(params=params, cfg=clean.cfg)


def test_nan_logits_raise_by_default_naming_rows_and_steps(poisoned):
    clean, bad = poisoned
    prompts = [[4, POISON, 8], [3, 1, 4]]
    with pytest.raises(NonFiniteLogitsError, match=r"rows \[0\] at decode steps \[0\]"):
        generate(bad, prompts, max_new_tokens=4, logits=L.greedy())
    with pytest.raises(NonFiniteLogitsError, match="on_nan='stop'"):
        next(stream(bad, prompts, max_new_tokens=4, logits=L.greedy()))
    generate(clean, prompts, max_new_tokens=4, logits=L.greedy())  # the clean model is fine


@pytest.mark.parametrize("strategy", [None, LOOKUP], ids=["sampling", "prompt_lookup"])
def test_on_nan_stop_ends_the_rows_and_reports_them(poisoned, strategy):
    clean, bad = poisoned
    ref = generate(clean, [[3, 1, 4], [9, 9, 2]], max_new_tokens=20, logits=L.greedy())
    prompts = [[4, POISON, 8], [3, 1, 4], [9, 9, 2]]
    out = generate(bad, prompts, max_new_tokens=20, logits=L.greedy(), on_nan="stop", strategy=strategy)
    assert out.stats["nan_rows"] == [True, True, False]
    assert out.stats["nan_steps"][0] == 0 and out.lengths[0] == 3  # NaN already in the prompt: nothing generated
    assert not any(out.stats["masked_rows"])  # NaN is not reported as "every token banned"
    # row 1 generates the poisoned token (a healthy step), then the next step's logits are NaN
    comp = ref.completions()[0].tolist()
    i = comp.index(POISON)
    assert out.completions()[1].tolist() == comp[: i + 1]
    if strategy is None:
        assert out.stats["nan_steps"][1] == i + 1
    assert out.completions()[2].tolist() == ref.completions()[1].tolist() and out.stats["nan_steps"][2] == -1
