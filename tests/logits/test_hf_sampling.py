"""hf_sampling and the transformers-semantics transforms: parity with transformers (fixtures, live torch),
properties of typical / epsilon / eta / allowed tokens / no-repeat n-grams, no recompiles, bad inputs."""

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import tokjax
from tokjax import logits as L
from tokjax.decoding import TRACE_COUNTS
from tests.model._models import small_model

FIXTURE = json.loads((Path(__file__).parent / "fixtures" / "hf_sampling.json").read_text())
# transformers' processor classes -> hf_sampling's stage names
STAGE = {
    "RepetitionPenaltyLogitsProcessor": "repetition_penalty", "NoRepeatNGramLogitsProcessor": "no_repeat_ngram",
    "TemperatureLogitsWarper": "temperature", "TopKLogitsWarper": "top_k", "TopPLogitsWarper": "top_p",
    "MinPLogitsWarper": "min_p", "TypicalLogitsWarper": "typical_p", "EpsilonLogitsWarper": "epsilon",
    "EtaLogitsWarper": "eta",
}
finite = st.floats(-20, 20, allow_nan=False, allow_subnormal=False, width=32)


def tokjax_kwargs(setting: dict) -> dict:
    """Returns hf_sampling keywords for a transformers GenerationConfig setting."""
    names = {"epsilon_cutoff": "epsilon", "eta_cutoff": "eta"}
    return {names.get(k, k): v for k, v in setting.items()}


def ctx_for(tokens, lengths=None):
    tokens = jnp.asarray(tokens, jnp.int32)
    lengths = jnp.full((tokens.shape[0],), tokens.shape[1]) if lengths is None else jnp.asarray(lengths)
    return L.LogitContext(tokens=tokens, lengths=lengths.astype(jnp.int32), step=jnp.int32(0))


# The transform is a static argument: transforms differing only in hyperparameters share one program.
_apply = jax.jit(lambda t, x, s, c: t.apply(x, s, c)[0], static_argnums=0)


def run(transform, logits, tokens, lengths=None, jit=True):
    """Returns the transformed logits as numpy, through a jitted apply (as the decode loop runs it) or, for
    tests that build many different chains once each, eagerly (cheaper than compiling each)."""
    logits = jnp.asarray(logits, jnp.float32)
    args = (logits, transform.init(logits.shape[0]), ctx_for(tokens, lengths))
    return np.asarray(_apply(transform, *args) if jit else transform.apply(*args)[0])


def case_arrays(name):
    c = FIXTURE["cases"][name]
    x = np.array([[-np.inf if v is None else v for v in row] for row in c["logits"]], np.float32)
    return x, np.array(c["input_ids"])


def assert_same_as_hf(out, kept, values, what, x=None):
    """Checks tokjax's output ``out`` keeps transformers' ids with transformers' values (1e-5).

    With the input logits ``x`` given, one difference is allowed: transformers' top-p sorts with
    torch's unstable sort, so *which* of several tokens with equal logits survive the cut is
    torch's accident; then the same number of each tied value must be kept. Returns the number of
    rows that needed that allowance.
    """
    tie_rows = 0
    for b in range(out.shape[0]):
        mine = np.flatnonzero(np.isfinite(out[b])).tolist()
        if mine != kept[b] and x is not None:
            diff = sorted(set(mine) ^ set(kept[b]))
            ties = all((x[b][diff] == x[b][i]).sum() >= 2 for i in diff)
            assert ties, f"{what} row {b}: kept {mine}, transformers kept {kept[b]} (not a tie)"
            np.testing.assert_allclose(np.sort(out[b][mine]), np.sort(values[b]), rtol=1e-5, atol=1e-5,
                                       err_msg=f"{what} row {b} (tied values)")
            tie_rows += 1
            continue
        assert mine == kept[b], f"{what} row {b}: kept {mine}, transformers kept {kept[b]}"
        np.testing.assert_allclose(out[b][mine], values[b], rtol=1e-5, atol=1e-5, err_msg=f"{what} row {b}")
    return tie_rows


SETTINGS = [json.loads(k) for k in dict.fromkeys(json.dumps(r["setting"]) for r in FIXTURE["records"])]


@pytest.mark.parametrize("setting", SETTINGS, ids=[json.dumps(s_) for s_ in SETTINGS])
def test_hf_sampling_matches_transformers_fixture(setting):
    """Every input case of the fixture, stacked into one batch, through hf_sampling(setting)."""
    recs = [r for r in FIXTURE["records"] if r["setting"] == setting]
    x, ids = (np.concatenate(a) for a in zip(*(case_arrays(r["case"]) for r in recs)))
    kept, values, what = sum((r["kept"] for r in recs), []), sum((r["values"] for r in recs), []), str(setting)
    chain = L.hf_sampling(**tokjax_kwargs(setting))
    names = [n for n, _ in chain.named]
    processors = [STAGE[p] for p in recs[0]["processors"]]
    if setting["do_sample"]:
        assert names == processors, what
        tie_rows = assert_same_as_hf(run(chain, x, ids), kept, values, what, x=x)
        assert tie_rows == 0 or "top_p" in names, what
    else:
        # transformers takes the argmax of the processed scores; the chain ends in greedy instead
        assert names == processors + ["greedy"], what
        assert_same_as_hf(run(L.named_chain(*chain.named[:-1]), x, ids), kept, values, what)
        out = run(chain, x, ids)
        assert np.isfinite(out).sum(-1).tolist() == [1] * out.shape[0]
        assert out.argmax(-1).tolist() == sum((r["argmax"] for r in recs), []), what


def test_fixture_covers_every_stage_and_ties():
    seen = {p for r in FIXTURE["records"] for p in r["processors"]}
    assert seen == set(STAGE)
    x, _ = case_arrays("tied")
    assert any(len(set(row.tolist())) < len(row) for row in x)


def test_hand_written_chain_keeps_a_different_set_than_transformers():
    """The documented chain(top_p, temperature) is not transformers' order; hf_sampling is."""
    rec = next(r for r in FIXTURE["records"] if r["setting"] == dict(do_sample=True, temperature=0.7, top_p=0.9, top_k=0)
               and r["case"] == "plain")
    x, ids = case_arrays("plain")
    hand = run(L.chain(L.top_p(0.9), L.temperature(0.7)), x, ids)
    hf = run(L.hf_sampling(temperature=0.7, top_p=0.9, top_k=0), x, ids)
    assert [np.flatnonzero(np.isfinite(r)).tolist() for r in hf] == rec["kept"]
    assert (np.isfinite(hand).sum(-1) != np.isfinite(hf).sum(-1)).any()


@settings(max_examples=12, deadline=None)
@given(st.integers(0, 2**31 - 1), st.data())
def test_live_against_transformers(seed, data):
    pytest.importorskip("torch", reason="live parity needs the hf extra: pip install -e '.[hf]'")
    pytest.importorskip("transformers", reason="live parity needs the hf extra")
    from tests.logits.make_hf_sampling_fixtures import hf_process

    setting = dict(
        do_sample=data.draw(st.booleans()),
        temperature=data.draw(st.sampled_from([1.0, 0.6, 1.7])),
        top_k=data.draw(st.sampled_from([0, 1, 7, 50, 80])),
        top_p=data.draw(st.sampled_from([1.0, 0.0, 0.3, 0.9])),
        typical_p=data.draw(st.sampled_from([1.0, 0.4, 0.95])),
        epsilon_cutoff=data.draw(st.sampled_from([0.0, 1e-3, 0.05])),
        eta_cutoff=data.draw(st.sampled_from([0.0, 1e-3, 0.05])),
        repetition_penalty=data.draw(st.sampled_from([1.0, 1.4, 0.7])),
        no_repeat_ngram_size=data.draw(st.sampled_from([0, 1, 2, 4])),
    )
    min_p = data.draw(st.sampled_from([None, 0.0, 0.1]))
    if min_p is not None:
        setting["min_p"] = min_p
    rng = np.random.default_rng(seed)
    B, V, S = 3, 40, 10
    x = (rng.standard_normal((B, V)) * rng.uniform(0.5, 4)).astype(np.float32)
    ids = rng.integers(0, rng.integers(2, V), (B, S))
    scores, _ = hf_process(setting, x, ids)
    chain = L.hf_sampling(**tokjax_kwargs(setting))
    if not setting["do_sample"]:
        chain = L.named_chain(*chain.named[:-1])
    out = run(chain, x, ids, jit=False)
    kept = [np.flatnonzero(np.isfinite(r)).tolist() for r in scores]
    assert_same_as_hf(out, kept, [r[np.isfinite(r)] for r in scores], str(setting))


ROWS, VOCAB = 4, 24


def logit_rows(masked=True):
    """[ROWS, VOCAB] float32 logits (fixed shape: one compiled program), some -inf, every row with a finite entry."""
    elements = st.one_of(finite, st.just(-np.inf)) if masked else finite
    return hnp.arrays(np.float32, (ROWS, VOCAB), elements=elements).map(
        lambda x: np.where(np.isfinite(x).any(-1, keepdims=True), x, np.float32(0.0)))


@given(logit_rows(), st.sampled_from(["typical", "epsilon", "eta"]), st.floats(0.0, 1.0), st.sampled_from([1, 3]))
def test_typical_epsilon_eta_never_empty_a_row(x, kind, value, min_keep):
    make = {"typical": L.typical_p, "epsilon": L.epsilon_cutoff, "eta": L.eta_cutoff}[kind]
    value = max(value, 1e-3) if kind == "typical" else min(value, 0.999)
    out = run(make(value, min_tokens_to_keep=min_keep), x, np.zeros((ROWS, 1)))
    kept = np.isfinite(out)
    assert (kept.sum(-1) >= np.minimum(min_keep, np.isfinite(x).sum(-1))).all()
    np.testing.assert_array_equal(out[kept], x[kept])  # filters only remove, never change a logit


@given(logit_rows(masked=False), st.floats(1e-4, 0.3))
def test_epsilon_and_eta_keep_exactly_the_tokens_above_the_cutoff(x, eps):
    p = np.exp(x.astype(np.float64) - x.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    top = x == x.max(-1, keepdims=True)
    kept = np.isfinite(run(L.epsilon_cutoff(eps), x, np.zeros((ROWS, 1))))
    near = np.abs(p - eps) < 1e-6  # float32 rounding may flip tokens at the cutoff itself
    assert ((kept == ((p >= eps) | top)) | near).all()
    H = -(p * np.log(np.maximum(p, 1e-300))).sum(-1, keepdims=True)
    eta = np.minimum(eps, np.sqrt(eps) * np.exp(-H))
    kept = np.isfinite(run(L.eta_cutoff(eps), x, np.zeros((ROWS, 1))))
    near = np.abs(p - eta) < 1e-6
    assert ((kept == ((p >= eta) | top)) | near).all()


@given(logit_rows(masked=False), st.data())
def test_allowed_mask_never_lets_a_banned_id_through(x, data):
    B, V = x.shape
    mask = data.draw(hnp.arrays(bool, (B, V)))
    mask[np.arange(B), data.draw(hnp.arrays(np.int64, (B,), elements=st.integers(0, V - 1)))] = True
    out = run(L.allowed_tokens(mask), x, np.zeros((B, 1)))
    assert np.isneginf(out[~mask]).all()
    np.testing.assert_array_equal(out[mask], x[mask])
    # composed after other stages too: still nothing outside the mask
    out = run(L.hf_sampling(temperature=0.5, top_k=3, allowed_tokens=mask), x, np.zeros((B, 1)))
    assert not np.isfinite(out[~mask]).any() and np.isfinite(out).any(-1).all()


def ngram_reference(seq, n):
    """Returns the set of tokens transformers' _get_ngrams / _get_generated_ngrams ban after ``seq``."""
    if n < 1 or len(seq) < n:
        return set()
    table = {}
    for g in zip(*[seq[i:] for i in range(n)]):
        table.setdefault(tuple(g[:-1]), set()).add(g[-1])
    return table.get(tuple(seq[len(seq) - n + 1:]), set())


@given(st.integers(0, 2**31 - 1), st.integers(1, 5), st.booleans())
def test_no_repeat_ngram_bans_exactly_the_completing_tokens(seed, n, per_row):
    rng = np.random.default_rng(seed)
    B, S, V = 4, 14, 9
    tokens = rng.integers(0, rng.integers(2, V + 1), (B, S))
    lengths = rng.integers(0, S + 1, B)
    sizes = rng.integers(0, 6, B) if per_row else np.full(B, n)
    x = rng.standard_normal((B, V)).astype(np.float32)
    out = run(L.no_repeat_ngram(sizes if per_row else n), x, tokens, lengths)
    for b in range(B):
        banned = set(np.flatnonzero(~np.isfinite(out[b])).tolist())
        assert banned == ngram_reference(tokens[b, : lengths[b]].tolist(), int(sizes[b])), (b, sizes[b])


MODEL = small_model(seed=3)


def ngrams(seq, n):
    return [tuple(seq[i:i + n]) for i in range(len(seq) - n + 1)]


@settings(max_examples=5, deadline=None)
@given(st.integers(1, 3), st.integers(0, 1000), st.booleans())
def test_no_repeat_ngram_generate_never_repeats_an_ngram(n, seed, sample):
    """A random-weight model loops under greedy decoding; with the ban no row repeats an n-gram."""
    rng = np.random.default_rng(seed)
    V = MODEL.cfg.vocab_size
    lengths = rng.integers(2, 8, 3)
    # distinct ids, padded to one width: one compiled program for every example
    prompts = np.stack([rng.permutation(V)[:8] for _ in range(3)])
    t = L.hf_sampling(no_repeat_ngram_size=n, do_sample=sample, top_k=0)
    out = tokjax.generate(MODEL, prompts, prompt_lengths=lengths, key=jax.random.key(seed), max_new_tokens=16, logits=t)
    for b in range(3):
        grams = ngrams(out.tokens[b, : out.lengths[b]].tolist(), n)
        assert len(grams) == len(set(grams)), (b, n, grams)


def test_greedy_repeats_bigrams_without_the_ban():
    """The property above is not vacuous: the same model repeats bigrams when nothing bans them."""
    rng = np.random.default_rng(0)
    prompts = np.stack([rng.permutation(MODEL.cfg.vocab_size)[:8] for _ in range(3)])
    plain = tokjax.generate(MODEL, prompts, prompt_lengths=[2, 5, 7], max_new_tokens=16,
                            logits=L.hf_sampling(no_repeat_ngram_size=0, do_sample=False))
    grams = [ngrams(plain.tokens[b, : plain.lengths[b]].tolist(), 2) for b in range(3)]
    assert any(len(set(g)) < len(g) for g in grams)


def test_changing_hf_sampling_values_does_not_recompile():
    prompts = [[1, 2, 3], [4, 5]]
    kw = dict(key=jax.random.key(0), max_new_tokens=5)
    mk = lambda **v: L.hf_sampling(**v)  # noqa: E731
    first = dict(temperature=0.7, top_k=10, top_p=0.9, min_p=0.05, typical_p=0.9, epsilon=1e-3, eta=1e-3,
                 repetition_penalty=1.2, no_repeat_ngram_size=2)
    tokjax.generate(MODEL, prompts, logits=mk(**first), **kw)
    before = TRACE_COUNTS["decode_loop"]
    for v in [dict(temperature=1.5, top_k=3, top_p=0.5, min_p=0.2, typical_p=0.3, epsilon=0.01, eta=0.02,
                   repetition_penalty=0.9, no_repeat_ngram_size=4),
              dict(first, top_p=jnp.array([0.2, 0.99]), no_repeat_ngram_size=np.array([1, 3]))]:
        tokjax.generate(MODEL, prompts, logits=mk(**v), **kw)
    assert TRACE_COUNTS["decode_loop"] == before


@pytest.mark.slow
def test_all_stages_and_allowed_masks_do_not_recompile():
    prompts = [[1, 2, 3], [4, 5]]
    kw = dict(key=jax.random.key(0), max_new_tokens=5)
    # all_stages keeps the chain fixed, so switching stages on and off reuses one program too
    tokjax.generate(MODEL, prompts, logits=L.hf_sampling(all_stages=True, min_p=0.1), **kw)
    before = TRACE_COUNTS["decode_loop"]
    tokjax.generate(MODEL, prompts, logits=L.hf_sampling(all_stages=True, top_k=0), **kw)
    tokjax.generate(MODEL, prompts, logits=L.hf_sampling(all_stages=True, temperature=0.5, typical_p=0.5), **kw)
    assert TRACE_COUNTS["decode_loop"] == before
    # a new allowed mask of the same shape is a runtime value as well
    V = MODEL.cfg.vocab_size
    m = np.zeros((2, V), bool)
    m[:, :5] = True
    tokjax.generate(MODEL, prompts, logits=L.allowed_tokens(m), **kw)
    before = TRACE_COUNTS["decode_loop"]
    out = tokjax.generate(MODEL, prompts, logits=L.allowed_tokens(~m), **kw)
    assert TRACE_COUNTS["decode_loop"] == before
    assert (out.completions()[0] >= 5).all() and (out.completions()[1] >= 5).all()


@pytest.mark.slow  # default-suite time; the file's other tests keep the method covered in the default suite
def test_disabled_values_are_the_exact_identity():
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((3, 50)) * 8).astype(np.float32)
    x[0, :3] = -np.inf
    ids = rng.integers(0, 50, (3, 9))
    for t in (L.HFTopK(0), L.HFTopP(1.0), L.HFMinP(0.0), L.typical_p(1.0), L.epsilon_cutoff(0.0), L.eta_cutoff(0.0),
              L.no_repeat_ngram(0)):
        np.testing.assert_array_equal(run(t, x, ids, jit=False), x, err_msg=repr(t))
    np.testing.assert_array_equal(run(L.hf_sampling(all_stages=True, top_k=0), x, ids), x)
    # per-row: a disabled row is untouched while its neighbour is filtered
    out = run(L.typical_p(jnp.array([1.0, 0.2, 1.0])), x, ids)
    np.testing.assert_array_equal(out[[0, 2]], x[[0, 2]])
    assert np.isfinite(out[1]).sum() < np.isfinite(x[1]).sum()


def test_all_masked_rows_stay_masked_without_nan():
    x = jnp.full((2, 7), -jnp.inf)
    for t in (L.HFTopK(3), L.HFTopP(0.5), L.HFMinP(0.1), L.typical_p(0.5), L.epsilon_cutoff(0.1), L.eta_cutoff(0.1)):
        out = np.asarray(t(x)[0])
        assert np.isneginf(out).all(), t


def test_greedy_hf_sampling_needs_no_key_and_matches_greedy():
    prompts = [[1, 2, 3], [4, 5]]
    a = tokjax.generate(MODEL, prompts, max_new_tokens=6, logits=L.hf_sampling(do_sample=False, temperature=0.3))
    b = tokjax.generate(MODEL, prompts, max_new_tokens=6, logits=L.greedy())
    np.testing.assert_array_equal(a.tokens, b.tokens)


def test_hf_sampling_stages_and_defaults():
    assert [n for n, _ in L.hf_sampling().named] == ["top_k"]  # transformers' default top_k=50
    assert [n for n, _ in L.hf_sampling(top_k=None).named] == []
    assert [n for n, _ in L.hf_sampling(do_sample=False, top_p=0.5).named] == ["greedy"]
    names = [n for n, _ in L.hf_sampling(all_stages=True).named]
    assert names == ["temperature", "top_k", "top_p", "min_p", "typical_p", "epsilon", "eta"]
    st_ = L.hf_sampling(temperature=0.5, top_p=jnp.array([0.3, 0.9])).init(2)
    np.testing.assert_allclose(st_["top_p"], [0.3, 0.9])
    assert L.hf_sampling(top_p=0.3) == L.hf_sampling(top_p=0.8)


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: L.hf_sampling(temperature=0.0), "do_sample=False"),
        (lambda: L.hf_sampling(temperature=-1.0), "temperature"),
        (lambda: L.hf_sampling(top_k=-1), "top_k"),
        (lambda: L.hf_sampling(top_k=2.5), "top_k"),
        (lambda: L.hf_sampling(top_p=1.5), "top_p"),
        (lambda: L.hf_sampling(top_p=-0.1), "top_p"),
        (lambda: L.hf_sampling(min_p=1.2), "min_p"),
        (lambda: L.hf_sampling(typical_p=0.0), "typical_p"),
        (lambda: L.hf_sampling(typical_p=1.1), "typical_p"),
        (lambda: L.hf_sampling(epsilon=1.0), "epsilon"),
        (lambda: L.hf_sampling(epsilon=-1e-3), "epsilon"),
        (lambda: L.hf_sampling(eta=1.5), "eta"),
        (lambda: L.hf_sampling(eta=float("nan")), "eta"),
        (lambda: L.hf_sampling(repetition_penalty=0.0), "repetition_penalty"),
        (lambda: L.hf_sampling(no_repeat_ngram_size=-1), "no_repeat_ngram_size"),
        (lambda: L.hf_sampling(no_repeat_ngram_size=True), "no_repeat_ngram_size"),
        (lambda: L.hf_sampling(do_sample="yes"), "do_sample"),
        (lambda: L.hf_sampling(min_tokens_to_keep=0), "min_tokens_to_keep"),
        (lambda: L.hf_sampling(all_stages=1), "all_stages"),
        (lambda: L.hf_sampling(do_sample=False, top_p=2.0), "top_p"),  # validated even when sampling is off
        (lambda: L.typical_p(0.9, min_tokens_to_keep=1.5), "min_tokens_to_keep"),
        (lambda: L.allowed_tokens(np.ones((2, 5), np.int32)), "bool"),
        (lambda: L.allowed_tokens(np.ones((2, 3, 5), bool)), "shape"),
        (lambda: L.allowed_tokens(np.array([[True, False], [False, False]])), r"row\(s\) \[1\]"),
        (lambda: L.allowed_tokens(np.ones((3, 5), bool)).init(2), "3 rows"),
        (lambda: L.allowed_tokens(np.ones(5, bool))(jnp.zeros((2, 6))), "vocabulary 6"),
        (lambda: L.no_repeat_ngram(2)(jnp.zeros((1, 4))), "LogitContext"),
    ],
)
def test_bad_inputs_raise(make, match):
    with pytest.raises(ValueError, match=match):
        make()


@pytest.mark.slow
def test_live_against_transformers_on_real_model_logits():
    """SmolLM2's next-token logits (V = 49152): transformers' processors and hf_sampling keep the same tokens."""
    pytest.importorskip("torch", reason="live parity needs the hf extra: pip install -e '.[hf]'")
    pytest.importorskip("transformers", reason="live parity needs the hf extra")
    from tests.logits.make_hf_sampling_fixtures import hf_process

    model, tok = tokjax.pretrained("smollm2-135m-instruct")
    rows = [tok.encode(p) for p in ["The capital of France is", "Once upon a time", "My favourite colour is"]]
    width = min(map(len, rows))
    ids = np.array([r[:width] for r in rows])  # equal lengths: transformers would see padding as tokens
    x = np.asarray(tokjax.forward(model.params, model.cfg, jnp.asarray(ids)).logits[:, -1], np.float32)
    for setting in [dict(do_sample=True, temperature=0.7, top_p=0.9),
                    dict(do_sample=True, temperature=1.3, top_k=0, typical_p=0.9, eta_cutoff=1e-3, min_p=0.02,
                         repetition_penalty=1.2, no_repeat_ngram_size=2),
                    dict(do_sample=True, temperature=1.5, top_k=0, top_p=0.95, epsilon_cutoff=3e-4)]:
        scores, _ = hf_process(setting, x, ids)
        out = run(L.hf_sampling(**tokjax_kwargs(setting)), x, ids, jit=False)
        kept = [np.flatnonzero(np.isfinite(r)).tolist() for r in scores]
        assert_same_as_hf(out, kept, [r[np.isfinite(r)] for r in scores], str(setting))
