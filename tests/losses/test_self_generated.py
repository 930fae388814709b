"""Self-generated tokens (P49): BASH input mixing, the scheduled-sampling loss, the schedule, RAC batches."""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tokjax
from tokjax.losses import next_token_loss
from tokjax.losses.self_generated import (
    make_scheduled_sampling_loss, mix_self_generated, reference_answer_correction, scheduled_probability,
    scheduled_sampling_loss, self_generated_tokens,
)

CFG = tokjax.ModelConfig(vocab_size=29, d_model=16, n_layers=1, n_heads=2, n_kv_heads=1, max_len=16)


def _params(seed=0):
    r = np.random.default_rng(seed)

    def make(spec):
        if spec.init in ("ones", "zeros"):
            return (jnp.ones if spec.init == "ones" else jnp.zeros)(spec.shape, jnp.float32)
        return jnp.asarray(r.normal(size=spec.shape) * 0.3 * spec.scale, jnp.float32)

    return jax.tree.map(make, tokjax.model.param_specs(CFG), is_leaf=lambda x: isinstance(x, tokjax.model.ParamSpec))


_mix = jax.jit(mix_self_generated)


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 10_000), prob=st.sampled_from([0.0, 0.3, 1.0]))
def test_mixing_replaces_only_completion_tokens(seed, prob):
    r = np.random.default_rng(seed)
    toks = jnp.asarray(r.integers(0, 10, size=(4, 12)), jnp.int32)
    gen = toks + 100  # every replacement is visible
    pl, ln = jnp.asarray([0, 3, 5, 11]), jnp.asarray([12, 12, 8, 12])
    mixed, rep = _mix(toks, gen, prob, jax.random.key(seed), prompt_lengths=pl, lengths=ln)
    mixed, rep = np.asarray(mixed), np.asarray(rep)
    pos = np.arange(12)[None, :]
    eligible = (pos >= np.maximum(np.asarray(pl), 1)[:, None]) & (pos < np.asarray(ln)[:, None])
    assert not rep[~eligible].any()
    np.testing.assert_array_equal(mixed, np.where(rep, np.asarray(gen), np.asarray(toks)))
    if prob == 0.0:
        assert not rep.any()
    if prob == 1.0:
        np.testing.assert_array_equal(rep, eligible)


def test_replacement_rate_and_per_row_prob():
    toks = jnp.zeros((2, 2001), jnp.int32)
    _, rep = _mix(toks, toks + 1, jnp.asarray([0.1, 0.6]), jax.random.key(0))
    frac = np.asarray(rep)[:, 1:].mean(1)
    np.testing.assert_allclose(frac, [0.1, 0.6], atol=0.04)


def test_schedule():
    s = [float(scheduled_probability(t, max_prob=0.5, total_steps=110, warmup_steps=10)) for t in (0, 10, 60, 110, 500)]
    np.testing.assert_allclose(s, [0.0, 0.0, 0.25, 0.5, 0.5], atol=1e-6)
    assert float(scheduled_probability(3, max_prob=0.2, kind="constant")) == pytest.approx(0.2)
    assert float(jax.jit(lambda t: scheduled_probability(t, max_prob=0.5, total_steps=100))(50)) == pytest.approx(0.25)


def test_loss_equals_teacher_forcing_at_zero_and_generated_inputs_at_one():
    params = _params()
    toks = jnp.asarray(np.random.default_rng(3).integers(0, 29, size=(3, 10)), jnp.int32)
    pl = jnp.asarray([0, 2, 4])
    batch = {"tokens": toks, "prompt_lengths": pl}
    key = jax.random.key(7)
    fn = make_scheduled_sampling_loss(method="naive")

    @jax.jit
    def run(p, b, prob, key):
        ss, m = fn(p, CFG, {**b, "ss_prob": prob}, key)
        tf, _ = next_token_loss(p, CFG, b, None, method="naive")
        gen = self_generated_tokens(p, CFG, b["tokens"])
        logits = tokjax.forward(p, CFG, b["tokens"][:, :-1]).logits
        cut, _ = scheduled_sampling_loss(p, CFG, {**b, "ss_prob": prob}, key, method="cut", block_size=8)
        return ss, m, tf, gen, logits, cut

    ss0, m0, tf, gen, logits, cut0 = run(params, batch, jnp.float32(0.0), key)
    np.testing.assert_allclose(ss0, tf, rtol=1e-5)
    np.testing.assert_allclose(cut0, ss0, rtol=1e-5)
    assert float(m0["replaced_frac"]) == 0.0
    np.testing.assert_array_equal(np.asarray(gen)[:, 1:], np.argmax(np.asarray(logits), -1))
    np.testing.assert_array_equal(np.asarray(gen)[:, 0], np.asarray(toks)[:, 0])
    ss1, m1, *_ = run(params, batch, jnp.float32(1.0), key)
    assert run._cache_size() == 1  # the probability is a runtime array
    assert float(m1["replaced_frac"]) > 0.5
    # prob 1: every completion input is the model's own token; targets stay the ground truth
    mixed = np.where(np.arange(10)[None, :] >= np.maximum(np.asarray(pl), 1)[:, None], np.asarray(gen), np.asarray(toks))
    lp = jax.nn.log_softmax(tokjax.forward(params, CFG, jnp.asarray(mixed[:, :-1])).logits, -1)
    nll = -np.take_along_axis(np.asarray(lp), np.asarray(toks)[:, 1:, None], -1)[..., 0]
    mask = np.arange(1, 10)[None, :] >= np.asarray(pl)[:, None]
    np.testing.assert_allclose(ss1, nll[mask].mean(), rtol=1e-4)


_RECORDED = Path(__file__).with_name("scheduled_sampling_recorded.npz")


@pytest.mark.slow  # default-suite time; the file's other tests keep the method covered in the default suite
def test_loss_matches_outputs_recorded_before_it_went_through_token_stats():
    # Recorded with the pre-issue-12 implementation (its own forward + head_stats/naive_core copy of
    # token_stats); scheduled_sampling_loss must give the same loss and metrics bit for bit.
    params = _params(0)
    toks = jnp.asarray(np.random.default_rng(1).integers(0, 29, size=(3, 11)), jnp.int32)
    batch = {"tokens": toks, "prompt_lengths": jnp.array([2, 0, 4]), "lengths": jnp.array([11, 9, 7]),
             "weights": jnp.asarray(np.random.default_rng(2).uniform(0.5, 1.5, size=(3, 10)), jnp.float32)}
    rec = np.load(_RECORDED)
    for method in ("cut", "naive"):
        for sample in (False, True):
            for red in ("token_mean", "seq_mean"):
                loss, m = scheduled_sampling_loss(params, CFG, batch, jax.random.key(3), prob=0.5, sample=sample,
                                                  method=method, reduction=red)
                key = f"{method}_{int(sample)}_{red}"
                np.testing.assert_allclose(loss, rec[key + "_loss"], rtol=1e-6, err_msg=key)
                for name, value in m.items():
                    np.testing.assert_allclose(value, rec[f"{key}_{name}"], rtol=1e-6, err_msg=f"{key} {name}")


@pytest.mark.slow  # default-suite time; the file's other tests keep the method covered in the default suite
def test_packed_documents_score_like_separate_rows():
    # Two 6-token documents packed into one row with segment_ids: the self-generated pass and the scored
    # pass must both stay inside each document, the first token of document 2 is never replaced and the
    # cross-boundary target is masked, so the packed loss equals the loss of the two documents as rows.
    params = _params(4)
    docs = jnp.asarray(np.random.default_rng(5).integers(0, 29, size=(2, 6)), jnp.int32)
    packed = {"tokens": docs.reshape(1, 12), "segment_ids": jnp.asarray([[0] * 6 + [1] * 6], jnp.int32)}
    key = jax.random.key(0)
    lp, mp = scheduled_sampling_loss(params, CFG, packed, key, prob=1.0)
    ls, ms = scheduled_sampling_loss(params, CFG, {"tokens": docs}, key, prob=1.0)
    assert float(mp["token_count"]) == float(ms["token_count"]) == 10.0
    np.testing.assert_allclose(lp, ls, rtol=1e-5)
    np.testing.assert_allclose(mp["gen_match"], ms["gen_match"], rtol=1e-6)
    gen = self_generated_tokens(params, CFG, packed["tokens"], segment_ids=packed["segment_ids"])
    _, rep = mix_self_generated(packed["tokens"], gen, 1.0, key, segment_ids=packed["segment_ids"])
    np.testing.assert_array_equal(np.asarray(rep)[0], [False] + [True] * 5 + [False] + [True] * 5)
    # prob 0 with segments is the plain next-token loss with segments
    l0, _ = scheduled_sampling_loss(params, CFG, packed, key, prob=0.0)
    np.testing.assert_allclose(l0, next_token_loss(params, CFG, packed)[0], rtol=1e-6)


def test_reference_answer_correction_layout():
    prompt = jnp.asarray([[5, 6, 0], [7, 0, 0]])
    gen = jnp.asarray([[8, 9], [10, 0]])
    ref = jnp.asarray([[11, 12, 13], [14, 0, 0]])
    out = jax.jit(lambda *a: reference_answer_correction(*a, jnp.asarray([3, 4]), pad_id=0))(
        prompt, jnp.asarray([2, 1]), gen, jnp.asarray([2, 1]), ref, jnp.asarray([3, 1]))
    np.testing.assert_array_equal(out["tokens"], [[5, 6, 8, 9, 3, 4, 11, 12, 13, 0],
                                                  [7, 10, 3, 4, 14, 0, 0, 0, 0, 0]])
    np.testing.assert_array_equal(out["prompt_lengths"], [4, 2])
    np.testing.assert_array_equal(out["lengths"], [9, 5])
    no_marker = reference_answer_correction(prompt, jnp.asarray([2, 1]), gen, jnp.asarray([2, 1]), ref,
                                            jnp.asarray([3, 1]), [3, 4], train_marker=False)
    np.testing.assert_array_equal(no_marker["prompt_lengths"], [6, 4])


@pytest.mark.parametrize("call, msg", [
    (lambda p: mix_self_generated(jnp.zeros((2, 4), jnp.int32), jnp.zeros((2, 5), jnp.int32), 0.5,
                                  jax.random.key(0)), "generated shape"),
    (lambda p: mix_self_generated(jnp.zeros((2, 4), jnp.int32), jnp.zeros((2, 4), jnp.int32), 1.5,
                                  jax.random.key(0)), "prob"),
    (lambda p: scheduled_sampling_loss(p, CFG, {"tokens": jnp.zeros((2, 4), jnp.int32)}, None, prob=0.5), "rng"),
    (lambda p: scheduled_sampling_loss(p, CFG, {"tokens": jnp.zeros((2, 4), jnp.int32)}, jax.random.key(0)),
     "ss_prob"),
    (lambda p: scheduled_probability(1, max_prob=0.5, total_steps=10, warmup_steps=10), "warmup_steps"),
    (lambda p: scheduled_probability(1, kind="cosine"), "kind"),
    (lambda p: self_generated_tokens(p, CFG, jnp.zeros((2, 4), jnp.int32), sample=True), "rng"),
    (lambda p: reference_answer_correction(jnp.zeros((2, 3), jnp.int32), jnp.asarray([4, 1]),
                                           jnp.zeros((2, 2), jnp.int32), jnp.asarray([1, 1]),
                                           jnp.zeros((2, 2), jnp.int32), jnp.asarray([1, 1]), [1]), "prompt_lengths"),
    (lambda p: make_scheduled_sampling_loss(method="fast"), "method"),
    (lambda p: scheduled_sampling_loss(p, CFG, {"tokens": jnp.zeros((2, 4), jnp.int32),
                                                "segment_ids": jnp.zeros((2, 3), jnp.int32)}, jax.random.key(0),
                                       prob=0.5), "segment_ids"),
])
def test_bad_inputs(call, msg):
    with pytest.raises(ValueError, match=msg):
        call(_params())
