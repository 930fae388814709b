"""P76 SAP: prefix-LM decoding against a full-forward oracle, the SAP loop against a list oracle, bad input."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import tokjax
from tokjax.decoding.sap import PrefixLM, infill, prefix_lm, sap, sap_prompt
from tokjax.model.attention import Prefix

V = 12
SENT = [11, 10, 9]
STOP_ID = 3
# A random model whose SAP runs end in every way (stop token, empty infill, budget) on LOOP_PROMPTS.
CFG = tokjax.ModelConfig(vocab_size=V, d_model=32, n_layers=2, n_heads=2, max_len=48, tied_embeddings=False,
                         init_scale=0.2)
MODEL = tokjax.Model(tokjax.model.init_params(CFG, jax.random.key(3)), CFG)
LOOP_PROMPTS = [[1, 4, 5, 2], [9, 9], [4, 5, 6, 7, 8], [0, 0]]


@jax.jit
def _last_logits(tokens, prefix):
    return tokjax.forward(MODEL.params, CFG, tokens, mask=Prefix(prefix)).logits


def _oracle_decode(row: list[int], tail: int, budget: int, eos=()) -> list[int]:
    """Greedy decoding by re-running the full forward under Prefix(len(row) - tail) every step."""
    toks = list(row)
    P = len(row) - tail
    out = []
    for _ in range(budget):
        padded = np.zeros((1, CFG.max_len), np.int32)  # right padding: causal columns never see it
        padded[0, :len(toks)] = toks
        t = int(jnp.argmax(_last_logits(jnp.asarray(padded), jnp.array([P]))[0, len(toks) - 1]))
        out.append(t)
        toks.append(t)
        if t in eos:
            break
    return out


PROMPTS = [[1, 4, 5, 6, 2], [1, 7, 2], [1, 4, 4, 5, 6, 7, 8, 2, 5]]


@pytest.mark.parametrize("tail", [1, 2])
def test_prefix_lm_generate_equals_full_forward_oracle(tail):
    """The strategy's cached decode == re-encoding the whole row under the prefix mask at every step."""
    out = tokjax.generate(MODEL, PROMPTS, max_new_tokens=6, logits=tokjax.logits.greedy(), strategy=prefix_lm(
        causal_tail=tail))
    for p, c in zip(PROMPTS, out.completions()):
        assert c.tolist() == _oracle_decode(p, tail, 6)


@pytest.mark.slow  # default-suite time; the prefix-LM oracle and SAP loop tests keep decoding covered
def test_prefix_is_bidirectional_in_decoding():
    """Prefix-LM decoding differs from causal decoding of the same prompt (the prefix sees its right context)."""
    row = [1, 4, 5, 6, 7, 8, 2]
    a = tokjax.generate(MODEL, [row], max_new_tokens=8, logits=tokjax.logits.greedy(), strategy=PrefixLM(causal_tail=1))
    b = tokjax.generate(MODEL, [row], max_new_tokens=8, logits=tokjax.logits.greedy())
    lg_causal = tokjax.forward(MODEL.params, CFG, jnp.asarray([row])).logits[0, -1]
    lg_prefix = tokjax.forward(MODEL.params, CFG, jnp.asarray([row]), mask=Prefix(jnp.array([6]))).logits[0, -1]
    assert not np.allclose(lg_causal, lg_prefix)
    assert a.completions()[0].tolist() == _oracle_decode(row, 1, 8)
    assert b.completions()[0].tolist() == _oracle_decode(row, len(row), 8)  # Prefix(0) == causal


def _oracle_sap(prompt, k, budget, stops):
    out = []
    while True:
        span = _oracle_decode(sap_prompt(prompt, out, SENT[0]), 1, k, eos=SENT)
        span = [t for t in span[:next((i for i, t in enumerate(span) if t in SENT), len(span))]]
        kept = span[:min(k, budget - len(out))]
        hit = [j for j, t in enumerate(kept) if t in stops]
        if hit:
            return out + kept[:hit[0]], "stop"
        if not kept:
            return out, "empty"
        out += kept
        if len(out) >= budget:
            return out, "length"


@pytest.mark.parametrize("k", [pytest.param(1, marks=pytest.mark.slow), 3])
def test_sap_loop_equals_list_oracle(k):
    prompts = LOOP_PROMPTS
    res = sap(MODEL, prompts, sentinel_ids=SENT, k=k, max_new_tokens=7, stop_ids=[STOP_ID])
    for p, o, e in zip(prompts, res.outputs, res.ended):
        want, why = _oracle_sap(p, k, 7, {STOP_ID})
        assert o.tolist() == want and e == why
        assert SENT[0] not in o.tolist() and STOP_ID not in o.tolist()
    assert res.calls == int(res.iterations.max())


def test_one_shot_infill_is_the_first_sap_span():
    prompts = [[1, 4, 5, 2], [1, 6, 7, 8, 2]]
    spans = infill(MODEL, prompts, sentinel_ids=SENT, max_new_tokens=5)
    for p, s in zip(prompts, spans):
        full = _oracle_decode(sap_prompt(p, [], SENT[0]), 1, 5, eos=SENT)
        assert s.tolist() == [t for t in full if t not in SENT]


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="sentinel_ids is missing"):
        sap(MODEL, PROMPTS, sentinel_ids=None, max_new_tokens=4)
    with pytest.raises(ValueError, match="at least 2"):
        sap(MODEL, PROMPTS, sentinel_ids=[11], max_new_tokens=4)
    with pytest.raises(ValueError, match="vocab_size"):
        infill(MODEL, PROMPTS, sentinel_ids=[40, 41], max_new_tokens=4)
    for bad_k in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="k \\(tokens kept"):
            sap(MODEL, PROMPTS, sentinel_ids=SENT, k=bad_k, max_new_tokens=4)
    with pytest.raises(ValueError, match="max_new_tokens"):
        sap(MODEL, PROMPTS, sentinel_ids=SENT, max_new_tokens=0)
    with pytest.raises(ValueError, match="contains the infill sentinel"):
        sap(MODEL, [[1, 11, 2]], sentinel_ids=SENT, max_new_tokens=4)
    with pytest.raises(ValueError, match="stop_ids .* sentinel"):
        sap(MODEL, PROMPTS, sentinel_ids=SENT, max_new_tokens=4, stop_ids=[10])
    with pytest.raises(ValueError, match="max_len"):
        sap(MODEL, [[1] * 45], sentinel_ids=SENT, max_new_tokens=4)
    with pytest.raises(ValueError, match="outside"):
        sap(MODEL, [[1, 99]], sentinel_ids=SENT, max_new_tokens=4)
    with pytest.raises(ValueError, match="list of token-id lists"):
        sap(MODEL, np.ones((2, 3), np.int32), sentinel_ids=SENT, max_new_tokens=4)
    with pytest.raises(ValueError, match="causal_tail"):
        prefix_lm(causal_tail=0)
    with pytest.raises(ValueError, match="longer than causal_tail"):
        tokjax.generate(MODEL, [[5, 6]], max_new_tokens=2, logits=tokjax.logits.greedy(), strategy=prefix_lm(
            causal_tail=2))


def test_oracle_cases_cover_every_ending():
    """The loop test above sees rows that stop, close empty and run out of budget (else it proves little)."""
    runs = [_oracle_sap(p, k, 7, {STOP_ID}) for p in LOOP_PROMPTS for k in (1, 3)]
    assert {why for _, why in runs} == {"stop", "empty", "length"}
    assert any(why == "empty" and out for out, why in runs)  # an empty infill after some output


def test_translation_corpus_is_consistent():
    """The P76 experiment's corpus: a pair's target is the lexicon translation; windows and prompts are well formed."""
    from tokjax.data._translation_pairs import (
        few_shot_prompts, pair_stream_windows, translate, translation_pairs, translation_vocab,
    )

    v = translation_vocab(6, 3)
    assert v.size == 4 + 12 + 3 and v.sentinels == (18, 17, 16)
    src = np.array([4, 5, 6, 7, 8])
    lex = translate(src, v, swap_pairs=False)
    assert len(set(lex.tolist())) == 5 and ((lex >= v.tgt0) & (lex < v.tgt0 + 6)).all()  # a permutation
    assert translate(src, v).tolist() == [lex[1], lex[0], lex[3], lex[2], lex[4]]
    pairs = translation_pairs(20, vocab=v, min_len=2, max_len=4, seed=1)
    w = pair_stream_windows(pairs, 5, 16, seed=2)
    assert w.shape == (5, 16) and not np.isin(w, v.sentinels).any()
    fs = few_shot_prompts(pairs, pairs, 2, seed=3)
    for p, r, i in zip(fs.prompts, fs.references, range(len(pairs))):
        assert p[-1] == v.eq and p[0] == v.bos and p.count(v.sep) == 2
        assert r == translate(pairs.src[i, :pairs.lengths[i]], v).tolist()
    with pytest.raises(ValueError, match="source word ids"):
        translate(np.array([1, 2]), v)
