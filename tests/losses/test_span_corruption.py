"""Span corruption in prefix-LM form (P76's model): T5 noise masks, corrupted rows against a list oracle, the loss."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tokjax
from tokjax.losses.registry import make_loss
from tokjax.losses.span_corruption import (
    make_span_corruption_loss, noise_span_counts, random_spans_noise_mask, span_corruption_loss, span_corruption_rows,
)

V = 40
SENT = [39, 38, 37, 36, 35, 34]
CFG = tokjax.ModelConfig(vocab_size=V, d_model=32, n_layers=2, n_heads=2, max_len=40)


def _runs(row: np.ndarray) -> list[tuple[bool, int]]:
    """Returns [(is_noise, run length), ...] of a bool row."""
    out = []
    for v in row:
        if out and out[-1][0] == bool(v):
            out[-1] = (bool(v), out[-1][1] + 1)
        else:
            out.append((bool(v), 1))
    return out


def _oracle(tokens: list[int], noise: list[bool], sent: list[int]) -> tuple[list[int], list[int]]:
    """Returns (input, target) of T5 span corruption closed by the next sentinel, built with plain lists."""
    inp, tgt, i, span = [], [], 0, 0
    while i < len(tokens):
        if noise[i]:
            inp.append(sent[span])
            tgt.append(sent[span])
            while i < len(tokens) and noise[i]:
                tgt.append(tokens[i])
                i += 1
            span += 1
        else:
            inp.append(tokens[i])
            i += 1
    tgt.append(sent[span])
    return inp, tgt


@pytest.mark.slow  # default-suite time; the file's other tests keep the method covered in the default suite
@settings(max_examples=12, deadline=None)
@given(st.lists(st.integers(2, 30), min_size=1, max_size=4), st.integers(0, 2**30),
       st.floats(0.05, 0.6), st.floats(1.0, 5.0))
def test_noise_mask_has_t5_layout_and_counts(lengths, seed, density, mean_span):
    """Each row: kept run first, noise run last, alternating, exactly T5's noise-token and span counts."""
    W = 30
    mask = np.asarray(random_spans_noise_mask(jax.random.key(seed), jnp.array(lengths), W, density, mean_span))
    n_noise, n_spans = (np.asarray(x) for x in noise_span_counts(jnp.array(lengths), density, mean_span))
    for b, n in enumerate(lengths):
        assert not mask[b, n:].any()
        runs = _runs(mask[b, :n])
        assert runs[0][0] is False and runs[-1][0] is True
        assert sum(r for v, r in runs if v) == n_noise[b] == max(1, min(n - 1, round(n * density)))
        assert sum(1 for v, _ in runs if v) == n_spans[b]


def test_noise_mask_segments_are_uniform():
    """The noise-run lengths follow the uniform distribution over compositions (3 tokens into 2 runs: 1+2, 2+1)."""
    lengths = jnp.full((4000,), 10)  # 10 * 0.3 = 3 noise tokens, round(3 / 1.5) = 2 spans
    mask = np.asarray(random_spans_noise_mask(jax.random.key(1), lengths, 10, 0.3, 1.5))
    first = np.array([[r for v, r in _runs(row) if v][0] for row in mask])
    assert set(first.tolist()) == {1, 2}
    assert abs((first == 1).mean() - 0.5) < 0.04


@settings(max_examples=15, deadline=None)
@given(st.data())
def test_rows_match_list_oracle(data):
    """span_corruption_rows == the list oracle for random texts and arbitrary (not only T5) noise masks."""
    B, L, W = 3, 12, 40
    row = st.lists(st.integers(1, 30), min_size=L, max_size=L)
    toks = np.array(data.draw(st.lists(row, min_size=B, max_size=B)))
    lens = np.array(data.draw(st.lists(st.integers(1, L), min_size=B, max_size=B)))
    noise = np.array(data.draw(st.lists(st.lists(st.booleans(), min_size=L, max_size=L), min_size=B, max_size=B)))
    rows = span_corruption_rows(jnp.array(toks), jnp.array(lens), jnp.array(noise), SENT, width=W, pad_id=0)
    for b in range(B):
        n = lens[b]
        inp, tgt = _oracle(toks[b, :n].tolist(), noise[b, :n].tolist(), SENT)
        row = np.asarray(rows["tokens"][b])
        spans = sum(1 for v, _ in _runs(noise[b, :n]) if v)
        assert bool(rows["ok"][b]) == (spans + 1 <= len(SENT))  # W = 40 >= 3 L always fits
        if not bool(rows["ok"][b]):
            continue
        assert int(rows["prefix_lengths"][b]) == len(inp)
        assert int(rows["lengths"][b]) == len(inp) + len(tgt)
        assert row[:len(inp) + len(tgt)].tolist() == inp + tgt
        assert (row[len(inp) + len(tgt):] == 0).all()
        assert np.asarray(rows["target_mask"][b]).nonzero()[0].tolist() == list(range(len(inp), len(inp) + len(tgt)))


def test_rows_flag_too_narrow_and_too_few_sentinels():
    toks = jnp.arange(1, 11)[None]
    noise = jnp.array([[0, 1, 0, 1, 0, 1, 0, 1, 0, 1]], bool)  # 5 spans
    assert not bool(span_corruption_rows(toks, jnp.array([10]), noise, SENT[:5], width=40)["ok"][0])  # needs 6
    assert bool(span_corruption_rows(toks, jnp.array([10]), noise, SENT, width=40)["ok"][0])
    assert not bool(span_corruption_rows(toks, jnp.array([10]), noise, SENT, width=15)["ok"][0])  # needs 10 + 5 + 1


def _reference_loss(params, rows):
    """Token-mean NLL of the targets with an explicit [B, T, T] prefix-LM mask (brute force)."""
    toks = np.asarray(rows["tokens"])
    B, W = toks.shape
    pre = np.asarray(rows["prefix_lengths"])
    i, j = np.arange(W)[:, None], np.arange(W)[None, :]
    vis = np.stack([(j <= i) | ((i < p) & (j < p)) for p in pre])
    explicit = tokjax.model.attention.Explicit(jnp.asarray(vis))
    logits = tokjax.forward(params, CFG, jnp.asarray(toks), mask=explicit).logits
    logp = np.asarray(jax.nn.log_softmax(logits[:, :-1], -1))
    tm = np.asarray(rows["target_mask"])[:, 1:] & np.asarray(rows["ok"])[:, None]
    lp = np.take_along_axis(logp, toks[:, 1:, None], -1)[..., 0]
    return -(lp * tm).sum() / tm.sum()


@pytest.mark.slow
def test_loss_matches_explicit_mask_reference_and_ignores_padding():
    params = tokjax.model.init_params(CFG, jax.random.key(0))
    toks = jax.random.randint(jax.random.key(1), (4, 16), 1, 30)
    lens = jnp.array([16, 9, 5, 12])
    noise = random_spans_noise_mask(jax.random.key(2), lens, 16, 0.25, 2.0)
    rows = span_corruption_rows(toks, lens, noise, SENT, width=40)
    loss, m = span_corruption_loss(params, CFG, rows)
    np.testing.assert_allclose(float(loss), _reference_loss(params, rows), rtol=1e-5)
    assert float(m["dropped_rows"]) == 0
    # a different pad id past each row changes nothing
    rows2 = span_corruption_rows(toks, lens, noise, SENT, width=40, pad_id=7)
    np.testing.assert_allclose(float(span_corruption_loss(params, CFG, rows2)[0]), float(loss), rtol=1e-6)


def test_prefix_is_bidirectional_targets_are_causal():
    """Changing a later input token changes the first target's loss; changing a later target token does not."""
    params = tokjax.model.init_params(CFG, jax.random.key(0))
    toks = jnp.array([[5, 6, 7, 8, 9, 10, 11, 12]])
    noise = jnp.array([[0, 0, 1, 1, 0, 0, 1, 1]], bool)
    rows = span_corruption_rows(toks, jnp.array([8]), noise, SENT, width=20)
    p = int(rows["prefix_lengths"][0])

    def logp_at(tokens, col):
        lg = tokjax.forward(params, CFG, tokens, mask=tokjax.model.attention.Prefix(jnp.array([p]))).logits
        return np.asarray(jax.nn.log_softmax(lg[0, col]))

    base = logp_at(rows["tokens"], 1)  # an input position
    changed_input = rows["tokens"].at[0, p - 2].set(3)  # a later input token
    assert not np.allclose(logp_at(changed_input, 1), base)
    first_target = logp_at(rows["tokens"], p)
    changed_target = rows["tokens"].at[0, p + 2].set(3)  # a later target token
    np.testing.assert_allclose(logp_at(changed_target, p), first_target, rtol=1e-6)


@pytest.mark.slow  # default-suite time; the file's other tests keep the method covered in the default suite
def test_registered_loss_trains_and_draws_noise_from_rng():
    loss_fn = make_loss("span_corruption", sentinel_ids=SENT, noise_density=0.2, mean_noise_span_length=1.5)
    params = tokjax.model.init_params(CFG, jax.random.key(0))
    # 20 tokens: 4 noise tokens in 3 spans (a single span is always the row's last tokens: nothing random)
    batch = {"tokens": jax.random.randint(jax.random.key(3), (4, 20), 1, 30), "lengths": jnp.array([20, 20, 18, 6])}
    l1, m = jax.jit(lambda p, b, r: loss_fn(p, CFG, b, r))(params, batch, jax.random.key(0))
    l2, _ = loss_fn(params, CFG, batch, jax.random.key(1))
    assert np.isfinite(float(l1)) and float(l1) != float(l2)
    grads = jax.grad(lambda p: loss_fn(p, CFG, batch, jax.random.key(0))[0])(params)
    assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree.leaves(grads))
    assert float(m["dropped_rows"]) == 0 and float(m["target_tokens"]) > 0
    # the noise density is a runtime value: one compiled step serves both, and more noise means more targets
    step = jax.jit(lambda p, b, r: loss_fn(p, CFG, b, r)[1]["target_tokens"])
    few = step(params, {**batch, "sc_noise_density": jnp.float32(0.1)}, jax.random.key(0))
    many = step(params, {**batch, "sc_noise_density": jnp.float32(0.4)}, jax.random.key(0))
    assert step._cache_size() == 1 and float(many) > float(few)


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="sentinel_ids is missing"):
        make_span_corruption_loss(sentinel_ids=None)
    with pytest.raises(ValueError, match="sentinel_ids is missing"):
        make_loss("span_corruption")
    with pytest.raises(ValueError, match="distinct"):
        make_span_corruption_loss(sentinel_ids=[5, 5])
    with pytest.raises(ValueError, match="at least 2"):
        make_span_corruption_loss(sentinel_ids=[5])
    with pytest.raises(ValueError, match="noise_density"):
        make_span_corruption_loss(sentinel_ids=SENT, noise_density=1.5)
    with pytest.raises(ValueError, match="mean_noise_span_length"):
        make_span_corruption_loss(sentinel_ids=SENT, mean_noise_span_length=0.5)
    with pytest.raises(ValueError, match="lengths"):
        random_spans_noise_mask(jax.random.key(0), jnp.array([1]), 8)
    with pytest.raises(ValueError, match="is a sentinel id"):
        span_corruption_rows(jnp.array([[1, 39, 3]]), jnp.array([3]), jnp.array([[0, 0, 1]], bool), SENT, width=10)
    with pytest.raises(ValueError, match="noise_mask"):
        span_corruption_rows(jnp.array([[1, 2, 3]]), jnp.array([3]), jnp.array([[0, 1]], bool), SENT, width=10)
    loss_fn = make_loss("span_corruption", sentinel_ids=[99, 98])
    params = tokjax.model.init_params(CFG, jax.random.key(0))
    with pytest.raises(ValueError, match="vocab_size"):
        loss_fn(params, CFG, {"tokens": jnp.ones((1, 6), jnp.int32)}, jax.random.key(0))
    with pytest.raises(ValueError, match="rng"):
        make_loss("span_corruption", sentinel_ids=SENT)(params, CFG, {"tokens": jnp.ones((1, 6), jnp.int32)})
