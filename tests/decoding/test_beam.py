"""Beam search (``tokjax.decoding.beam``) against transformers' beams, plus properties and bad inputs.

``fixtures/beam_<case>.json`` hold transformers' ``generate(num_beams=...)`` output on the tiny
checkpoints of ``tests/io/fixtures`` (written by ``make_beam_fixtures.py``): tokjax must return
the same hypotheses token for token, in the same order, with scores within 1e-4.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tokjax
from tokjax import logits as L
from tokjax.decoding.beam import beam
from tokjax.io import load_hf
from tokjax.model import forward

HERE = Path(__file__).resolve().parent
CHECKPOINTS = HERE.parent / "io" / "fixtures"
CASES = ("gpt2", "llama_gqa_untied", "qwen2_mqa_tied")
TOL = 1e-4
KEY = jax.random.key(0)  # beam search never samples; generate still asks for a key without greedy()


@functools.lru_cache(maxsize=None)
def fixture(case: str) -> dict:
    return json.loads((HERE / "fixtures" / f"beam_{case}.json").read_text())


@functools.lru_cache(maxsize=None)
def model_of(case: str):
    return load_hf(CHECKPOINTS / case)[0]


def run_beam(model, prompts, strategy, *, max_new_tokens, eos_id=None, logits=None, **kw):
    return tokjax.generate(model, prompts, key=KEY, max_new_tokens=max_new_tokens, strategy=strategy, eos_id=eos_id,
                           logits=logits, **kw)


def check_run(case: str, run: dict):
    data = fixture(case)
    logits = L.repetition_penalty(run["repetition_penalty"]) if "repetition_penalty" in run else None
    strategy = beam(run["num_beams"], length_penalty=run["length_penalty"], early_stopping=run["early_stopping"],
                    num_return_sequences=run["num_return_sequences"])
    kw = {"min_new_tokens": run["min_new_tokens"]} if "min_new_tokens" in run else {}
    out = run_beam(model_of(case), data["prompts"], strategy, max_new_tokens=data["max_new_tokens"],
                   eos_id=data["eos_id"] if run["eos"] else None, logits=logits, **kw)
    got = [c.tolist() for c in out.completions()]
    assert got == run["sequences"], f"{case} {run}"
    np.testing.assert_allclose(out.stats["sequence_scores"], run["scores"], atol=TOL, rtol=0, err_msg=f"{case} {run}")


# A few settings per checkpoint in the default suite (eos, several returns, each early_stopping);
# every setting of every checkpoint under -m slow.
FAST = {"gpt2": (1, 2), "llama_gqa_untied": (3, 5, 10), "qwen2_mqa_tied": (5, 9)}


def test_fixtures_cover_the_settings():
    for case in CASES:
        data = fixture(case)
        runs = data["runs"]
        assert {r["num_beams"] for r in runs} >= {2, 4}
        assert {r["length_penalty"] for r in runs} >= {0.5, 1.0, 2.0}
        assert {json.dumps(r["early_stopping"]) for r in runs} == {"false", "true", '"never"'}
        assert max(r["num_return_sequences"] for r in runs) > 1
        assert len({len(p) for p in data["prompts"]}) == 2
        # the eos id matters: some returned hypotheses end at it, some run to max_new_tokens
        ends = [s[-1] == data["eos_id"] for r in runs if r["eos"] for s in r["sequences"]]
        assert any(ends) and not all(ends)


@pytest.mark.parametrize("case", CASES)
def test_beam_matches_transformers(case):
    runs = fixture(case)["runs"]
    for i in FAST[case]:
        check_run(case, runs[i])


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES)
def test_beam_matches_transformers_every_setting(case):
    for run in fixture(case)["runs"]:
        check_run(case, run)


def test_length_penalty_is_runtime():
    """Two length penalties, one compiled loop, each equal to transformers' (fixture runs 1 and 3)."""
    case = "gpt2"
    data, model = fixture(case), model_of(case)
    before = tokjax.decoding.TRACE_COUNTS["decode_loop"]
    outs = []
    for i in (1, 3):
        run = data["runs"][i]
        assert run["num_beams"] == 4 and run["early_stopping"] is False and run["eos"]
        strategy = beam(4, length_penalty=run["length_penalty"], num_return_sequences=4)
        out = run_beam(model, data["prompts"], strategy, max_new_tokens=data["max_new_tokens"], eos_id=data["eos_id"])
        n = run["num_return_sequences"]
        got = [c.tolist() for c in out.completions()]
        assert got[:n] + got[4:4 + n] == run["sequences"]
        outs.append(got)
    # one penalty per prompt: prompt 0 as run 1 (lp 1.0), prompt 1 as run 3 (lp 2.0)
    lp = [data["runs"][1]["length_penalty"], data["runs"][3]["length_penalty"]]
    out = run_beam(model, data["prompts"], beam(4, length_penalty=np.array(lp), num_return_sequences=4),
                   max_new_tokens=data["max_new_tokens"], eos_id=data["eos_id"])
    got = [c.tolist() for c in out.completions()]
    assert got[:4] == outs[0][:4] and got[4:] == outs[1][4:]
    assert tokjax.decoding.TRACE_COUNTS["decode_loop"] - before <= 1
    assert outs[0] != outs[1]  # the penalty changes the answer


_forward = jax.jit(forward, static_argnums=1)


def check_hypotheses(model, prompts, out, n, lp, eos, max_new):
    """Every returned hypothesis' score is its summed log-prob (a full forward) / generated_length ** lp,
    the scores are sorted best first, and the hypotheses of one prompt are distinct and end at eos or
    max_new."""
    scores = np.asarray(out.stats["sequence_scores"]).reshape(len(prompts), n)
    assert np.all(np.diff(scores, axis=1) <= 0)
    comps = out.completions()
    for b, prompt in enumerate(prompts):
        hyps = [comps[b * n + j].tolist() for j in range(n)]
        assert len({tuple(h) for h in hyps}) == n
        width = len(prompt) + max_new
        ids = np.zeros((n, width), np.int32)
        for j, h in enumerate(hyps):
            assert 1 <= len(h) <= max_new and (len(h) == max_new or h[-1] == eos) and eos not in h[:-1]
            ids[j, : len(prompt) + len(h)] = prompt + h
        logp = np.asarray(jax.nn.log_softmax(_forward(model.params, model.cfg, jnp.asarray(ids)).logits, -1))
        P = len(prompt)
        for j, h in enumerate(hyps):
            want = sum(logp[j, P - 1 + t, g] for t, g in enumerate(h)) / len(h) ** lp
            assert abs(scores[b, j] - want) < 1e-4, (b, j, h, scores[b, j], want)


@settings(max_examples=4)
@given(seed=st.integers(0, 2**16), lp=st.sampled_from([-0.5, 0.0, 0.5, 1.0, 2.0]))
def test_hypotheses_are_sorted_and_scored(seed, lp):
    """One compiled loop (shapes and eos fixed), random prompts and length penalties; see check_hypotheses."""
    model = model_of("llama_gqa_untied")
    rng = np.random.default_rng(seed)
    prompts = [rng.integers(0, 59, 6).tolist(), rng.integers(0, 59, 3).tolist()]
    eos = fixture("llama_gqa_untied")["eos_id"]
    out = run_beam(model, prompts, beam(3, lp, False, 3), max_new_tokens=6, eos_id=eos)
    check_hypotheses(model, prompts, out, 3, lp, eos, 6)


@pytest.mark.slow
@settings(max_examples=12)
@given(
    seed=st.integers(0, 2**16),
    num_beams=st.integers(1, 4),
    lp=st.sampled_from([-0.5, 0.0, 1.0, 2.0]),
    early=st.sampled_from([False, True, "never"]),
    data=st.data(),
)
def test_hypotheses_are_sorted_and_scored_any_setting(seed, num_beams, lp, early, data):
    model = model_of("llama_gqa_untied")
    rng = np.random.default_rng(seed)
    prompts = [rng.integers(0, 59, 6).tolist(), rng.integers(0, 59, 3).tolist()]
    eos = int(rng.integers(0, 59))
    n = data.draw(st.integers(1, num_beams))
    out = run_beam(model, prompts, beam(num_beams, lp, early, n), max_new_tokens=6, eos_id=eos)
    check_hypotheses(model, prompts, out, n, lp, eos, 6)


def test_one_beam_is_greedy():
    """num_beams=1 with early_stopping=True is greedy decoding, eos included: the first hypothesis (the
    greedy one, ending at eos or max_new_tokens) fills the single slot."""
    case = "gpt2"
    data, model = fixture(case), model_of(case)
    eos = data["eos_id"]
    greedy = tokjax.generate(model, data["prompts"], max_new_tokens=8, logits=L.greedy(), eos_id=eos)
    out = run_beam(model, data["prompts"], beam(1, early_stopping=True), max_new_tokens=8, eos_id=eos)
    for got, want in zip(out.completions(), greedy.completions()):
        np.testing.assert_array_equal(got, want)
    lens = [len(c) for c in greedy.completions()]
    assert min(lens) < 8 and max(lens) == 8  # one row stops at eos, one runs to the limit


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(num_beams=0), "num_beams must be a positive int"),
        (dict(num_beams=2.0), "num_beams must be a positive int"),
        (dict(num_beams=2, num_return_sequences=3), r"num_return_sequences=3 must be <= num_beams=2"),
        (dict(num_beams=2, num_return_sequences=0), "num_return_sequences must be a positive int"),
        (dict(num_beams=2, early_stopping="always"), "early_stopping must be True, False or 'never'"),
        (dict(num_beams=2, length_penalty=float("nan")), "length_penalty must be finite"),
        (dict(num_beams=2, length_penalty=[[1.0]]), "length_penalty must be a scalar or one value per prompt"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        beam(**kwargs)


@pytest.mark.parametrize(
    "transform",
    [L.temperature(0.7), L.top_k(5), L.chain(L.repetition_penalty(1.2), L.top_p(0.9)), L.greedy(), L.min_p(0.1)],
)
def test_sampling_transforms_rejected(transform):
    model = model_of("gpt2")
    with pytest.raises(ValueError, match="beam search does not sample"):
        run_beam(model, [[1, 2, 3]], beam(2), max_new_tokens=3, logits=transform)


def test_stop_sequences_rejected():
    with pytest.raises(ValueError, match="beam search does not support stop= sequences"):
        run_beam(model_of("gpt2"), [[1, 2, 3]], beam(2), max_new_tokens=3, stop=[[4, 5]])


def test_hot_start_rejected():
    with pytest.raises(ValueError, match="keeps no state across requests"):
        beam(2).resume(None, object())


def test_beam_needs_no_key_and_rejects_stop_strings_and_n():
    """Beam search never samples, so generate needs no key=; stop strings and n > 1 are refused clearly."""
    import tokjax
    from tokjax.decoding import beam

    model, tok = tokjax.pretrained("tiny-test")
    ids = tok.encode("the")
    out = tokjax.generate(model, [ids], max_new_tokens=4, strategy=beam(2))
    assert out.tokens.shape[0] == 1
    with pytest.raises(ValueError, match="stop strings and n > 1"):
        tokjax.generate(model, [ids], max_new_tokens=4, strategy=beam(2), n=2)
    with pytest.raises(ValueError, match="stop strings and n > 1"):
        tokjax.generate(model, [ids], max_new_tokens=4, strategy=beam(2), stop=["x"], tokenizer=tok)
