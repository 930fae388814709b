"""TensorBLEU (P75): equality with NLTK per sentence and per corpus, properties, bad input."""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tokjax.metrics.tensorbleu import (
    SMOOTHINGS, bleu_from_stats, bleu_stats, tensor_corpus_bleu, tensor_sentence_bleu,
)

nltk_bleu = pytest.importorskip("nltk.translate.bleu_score")

_SF = nltk_bleu.SmoothingFunction()
# One compilation per (shape, smoothing) instead of op-by-op dispatch keeps the file fast.
sentence_bleu_jit = jax.jit(tensor_sentence_bleu, static_argnames=("max_n", "smoothing", "pad_id"))
NLTK_METHOD = {"none": _SF.method0, "floor": _SF.method1, "add-k": _SF.method2, "exp": _SF.method3}


def random_batch(seed, b=12, r=3, t=14, t_ref=16, vocab=6, pad_id=None, copy=False):
    """Returns (cand, refs, cand_len, ref_len) with random valid lengths; padding is `pad_id` or junk.

    With `copy`, candidates are the first reference with ~20% of tokens replaced (so that a large
    vocabulary still gives matching 4-grams).
    """
    rng = np.random.default_rng(seed)
    cand = rng.integers(1, vocab + 1, (b, t))
    refs = rng.integers(1, vocab + 1, (b, r, t_ref))
    if copy:
        cand = np.where(rng.random((b, t)) < 0.2, cand, refs[:, 0, :t])
    cand_len = rng.integers(0, t + 1, b)
    ref_len = rng.integers(0, t_ref + 1, (b, r))
    ref_len[:, 0] = np.maximum(ref_len[:, 0], 1)  # every sentence has at least one reference
    if pad_id is not None:
        cand[np.arange(t)[None, :] >= cand_len[:, None]] = pad_id
        refs[np.arange(t_ref)[None, None, :] >= ref_len[:, :, None]] = pad_id
    return cand, refs, cand_len, ref_len


def as_strings(cand, refs, cand_len, ref_len):
    """Returns NLTK's (list_of_references, hypotheses): ids as strings, absent references dropped."""
    hyps = [[str(x) for x in cand[i, :cand_len[i]]] for i in range(len(cand))]
    references = [[[str(x) for x in refs[i, j, :ref_len[i, j]]] for j in range(refs.shape[1]) if ref_len[i, j] > 0]
                  for i in range(len(cand))]
    return references, hyps


def nltk_sentence(batch, smoothing, weights=(0.25, 0.25, 0.25, 0.25)):
    references, hyps = as_strings(*batch)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return np.array([nltk_bleu.sentence_bleu(rs, h, weights=weights, smoothing_function=NLTK_METHOD[smoothing])
                         for rs, h in zip(references, hyps)])


@pytest.mark.parametrize("smoothing", SMOOTHINGS)
@pytest.mark.parametrize("vocab", [3, 1000])
def test_sentence_bleu_equals_nltk(smoothing, vocab):
    batch = random_batch(vocab, vocab=vocab, copy=vocab > 10)
    cand, refs, cand_len, ref_len = batch
    got = sentence_bleu_jit(cand, refs, candidate_lengths=cand_len, reference_lengths=ref_len, smoothing=smoothing)
    want = nltk_sentence(batch, smoothing)
    np.testing.assert_allclose(np.asarray(got), want, atol=1e-6, rtol=0)
    assert want.max() > 0.05  # the comparison exercises non-trivial scores


@pytest.mark.parametrize("smoothing", SMOOTHINGS)
def test_corpus_bleu_equals_nltk(smoothing):
    batch = random_batch(7, vocab=4)
    cand, refs, cand_len, ref_len = batch
    got = tensor_corpus_bleu(cand, refs, candidate_lengths=cand_len, reference_lengths=ref_len, smoothing=smoothing)
    references, hyps = as_strings(*batch)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        want = nltk_bleu.corpus_bleu(references, hyps, smoothing_function=NLTK_METHOD[smoothing])
    assert abs(float(got) - want) < 1e-6 and want > 0.05


def test_runtime_weights_epsilon_and_max_n_under_jit_match_nltk():
    batch = random_batch(3, vocab=5)
    cand, refs, cand_len, ref_len = batch
    f = sentence_bleu_jit
    for weights in [(0.7, 0.3), (0.2, 0.8)]:
        got = f(cand, refs, candidate_lengths=cand_len, reference_lengths=ref_len, max_n=2,
                weights=jnp.asarray(weights), smoothing="none")
        np.testing.assert_allclose(np.asarray(got), nltk_sentence(batch, "none", weights), atol=1e-6, rtol=0)
    eps = 0.37
    got = f(cand, refs, candidate_lengths=cand_len, reference_lengths=ref_len, smoothing="floor", epsilon=eps)
    references, hyps = as_strings(*batch)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        want = [nltk_bleu.sentence_bleu(rs, h, smoothing_function=nltk_bleu.SmoothingFunction(epsilon=eps).method1)
                for rs, h in zip(references, hyps)]
    np.testing.assert_allclose(np.asarray(got), want, atol=1e-6, rtol=0)


def test_add_k_uses_k_on_orders_above_one():
    batch = random_batch(5, vocab=4)
    cand, refs, cand_len, ref_len = batch
    stats = bleu_stats(cand, refs, candidate_lengths=cand_len, reference_lengths=ref_len)
    k = 2.5
    got = bleu_from_stats(stats, smoothing="add-k", k=k)
    num, den = np.asarray(stats.numerators, float), np.asarray(stats.denominators, float)
    p = np.concatenate([num[:, :1] / den[:, :1], (num[:, 1:] + k) / (den[:, 1:] + k)], 1)
    c, r = np.asarray(stats.candidate_lengths, float), np.asarray(stats.reference_lengths, float)
    bp = np.where(c > r, 1.0, np.exp(1 - r / np.maximum(c, 1)))
    with np.errstate(divide="ignore"):
        want = np.where(num[:, 0] == 0, 0.0, bp * np.exp(np.log(p).mean(1)))
    np.testing.assert_allclose(np.asarray(got), want, atol=1e-6, rtol=0)


def test_pad_id_gives_the_same_scores_as_lengths():
    cand, refs, cand_len, ref_len = random_batch(11, vocab=5, pad_id=0)
    by_len = sentence_bleu_jit(cand, refs, candidate_lengths=cand_len, reference_lengths=ref_len, smoothing="exp")
    by_pad = sentence_bleu_jit(cand, refs, pad_id=0, smoothing="exp")
    np.testing.assert_array_equal(np.asarray(by_pad), np.asarray(by_len))


def test_absent_reference_slot_is_ignored_for_brevity():
    # candidate "1 2 3 4 5"; one real reference of length 9 and an all-padding slot: r must be 9, not 0.
    cand = np.array([[1, 2, 3, 4, 5, 0, 0, 0, 0]])
    refs = np.array([[[1, 2, 3, 4, 5, 6, 7, 8, 9], [0] * 9]])
    got = float(sentence_bleu_jit(cand, refs, pad_id=0)[0])
    assert abs(got - np.exp(1 - 9 / 5)) < 1e-6


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), length=st.integers(4, 12))
def test_identical_candidate_and_reference_score_one(seed, length):
    rng = np.random.default_rng(seed)
    toks = rng.integers(1, 50, (3, 12))
    lengths = np.full(3, length)
    for smoothing in SMOOTHINGS:
        got = sentence_bleu_jit(toks, toks[:, None, :], candidate_lengths=lengths,
                                   reference_lengths=lengths[:, None], smoothing=smoothing)
        np.testing.assert_allclose(np.asarray(got), 1.0, atol=1e-6)


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), smoothing=st.sampled_from(SMOOTHINGS))
def test_scores_in_unit_interval_and_permute_with_rows(seed, smoothing):
    cand, refs, cand_len, ref_len = random_batch(seed, b=6, r=2, t=8, t_ref=9, vocab=4)
    got = np.asarray(sentence_bleu_jit(cand, refs, candidate_lengths=cand_len, reference_lengths=ref_len,
                                          smoothing=smoothing))
    assert np.all((got >= 0) & (got <= 1 + 1e-6)) and np.all(np.isfinite(got))
    perm = np.random.default_rng(seed + 1).permutation(len(cand))
    permuted = sentence_bleu_jit(cand[perm], refs[perm], candidate_lengths=cand_len[perm],
                                    reference_lengths=ref_len[perm], smoothing=smoothing)
    np.testing.assert_allclose(np.asarray(permuted), got[perm], atol=1e-7)


def test_bad_inputs_raise_value_error():
    cand, refs, cand_len, ref_len = random_batch(0, b=2, r=2, t=5, t_ref=5)
    kw = dict(candidate_lengths=cand_len, reference_lengths=ref_len)
    with pytest.raises(ValueError, match="candidates must be"):
        tensor_sentence_bleu(cand[0], refs, **kw)
    with pytest.raises(ValueError, match="references must be"):
        tensor_sentence_bleu(cand, refs[:, 0], **kw)
    with pytest.raises(ValueError, match="batch size"):
        tensor_sentence_bleu(cand[:1], refs, **kw)
    with pytest.raises(ValueError, match=r"candidate_lengths must lie in \[0, 5\]"):
        tensor_sentence_bleu(cand, refs, candidate_lengths=np.array([-1, 2]), reference_lengths=ref_len)
    with pytest.raises(ValueError, match="reference_lengths must lie"):
        tensor_sentence_bleu(cand, refs, candidate_lengths=cand_len, reference_lengths=ref_len + 6)
    with pytest.raises(ValueError, match="reference_lengths must have shape"):
        tensor_sentence_bleu(cand, refs, candidate_lengths=cand_len, reference_lengths=ref_len[:, 0])
    with pytest.raises(ValueError, match="max_n must be"):
        tensor_sentence_bleu(cand, refs, max_n=0, **kw)
    with pytest.raises(ValueError, match="smoothing must be one of"):
        tensor_corpus_bleu(cand, refs, smoothing="method7", **kw)
    with pytest.raises(ValueError, match="weights must have shape"):
        tensor_sentence_bleu(cand, refs, weights=[0.5, 0.5], **kw)
    with pytest.raises(ValueError, match="integer token ids"):
        tensor_sentence_bleu(cand.astype(float), refs, **kw)
    with pytest.raises(ValueError, match="give pad_id"):
        tensor_sentence_bleu(cand, refs)


@pytest.mark.slow  # default-suite time; the file's other tests keep the method covered in the default suite
def test_long_rows_two_key_sort_path_matches_packed_keys(monkeypatch):
    """Rows too long to pack a pair of ids into one int32 take the two-key sort; both paths agree with NLTK."""
    import tokjax.metrics.tensorbleu as tb

    batch = random_batch(7, b=6, r=2, t=20, t_ref=20, vocab=40, copy=True)
    packed = np.asarray(tensor_sentence_bleu(*batch[:2], candidate_lengths=batch[2], reference_lengths=batch[3],
                                             smoothing="floor"))
    monkeypatch.setattr(tb, "_PACKED_KEY_LIMIT", 0)
    two_key = np.asarray(tensor_sentence_bleu(*batch[:2], candidate_lengths=batch[2], reference_lengths=batch[3],
                                              smoothing="floor"))
    np.testing.assert_allclose(two_key, packed, atol=1e-7)
    np.testing.assert_allclose(packed, nltk_sentence(batch, "floor"), atol=1e-6)
