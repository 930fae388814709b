"""P14 ILM loss: batch construction (hand-worked, property, noise), loss vs brute force, registry, bad input."""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tokjax
from tokjax.losses.insertion import (
    STOP_KEY, ilm_batch, ilm_batch_from_drops, ilm_loss, ilm_targets, init_stop_head, make_ilm_loss, sample_drops,
    stop_logits,
)
from tokjax.losses.registry import make_loss

V = 12
CFG = tokjax.ModelConfig(vocab_size=V, d_model=32, n_layers=2, n_heads=2, max_len=16)
CLS, BOS = 10, 11


@pytest.fixture(scope="module")
def params():
    p = tokjax.Model.init(CFG, jax.random.key(0)).params
    p = init_stop_head(p, CFG, jax.random.key(1))
    # non-zero biases so the brute force exercises every term of the head
    head = dict(p[STOP_KEY])
    head["b1"] = 0.1 * jnp.arange(head["b1"].shape[0], dtype=jnp.float32) / head["b1"].shape[0]
    head["b2"] = jnp.linspace(-0.2, 0.2, head["b2"].shape[0])
    head["out"] = head["out"] * 20.0
    return {**p, STOP_KEY: head}


def _raw():
    prompt = jnp.array([[CLS, 3, 4, BOS, 0], [CLS, BOS, 0, 0, 0], [CLS, 1, BOS, 0, 0]], jnp.int32)
    prompt_lengths = jnp.array([4, 2, 3], jnp.int32)
    target = jnp.array([[5, 6, 7, 8], [1, 2, 0, 0], [9, 9, 2, 0]], jnp.int32)
    target_lengths = jnp.array([4, 2, 3], jnp.int32)
    drop = jnp.array([[True, False, True, True], [False, False, False, False], [True, True, True, False]])
    return prompt, prompt_lengths, target, target_lengths, drop


def test_batch_hand_worked():
    b = ilm_batch_from_drops(*_raw(), pad_id=0)
    # row 0: prompt [c 3 4 b], target 5 6 7 8 with 5, 7, 8 dropped -> [c 3 4 b 6]; 5 goes after b (col 3),
    # 7 and 8 after 6 (col 4). Row 1: nothing dropped. Row 2: everything dropped -> all after b (col 2).
    np.testing.assert_array_equal(b["tokens"], [[CLS, 3, 4, BOS, 6, 0, 0, 0, 0],
                                                [CLS, BOS, 1, 2, 0, 0, 0, 0, 0],
                                                [CLS, 1, BOS, 0, 0, 0, 0, 0, 0]])
    np.testing.assert_array_equal(b["lengths"], [5, 4, 3])
    np.testing.assert_array_equal(b["slots"], [[3, -1, 4, 4], [-1, -1, -1, -1], [2, 2, 2, -1]])
    np.testing.assert_array_equal(b["n_drops"], [3, 0, 3])
    np.testing.assert_array_equal(b["positions"], np.broadcast_to(np.arange(9), (3, 9)))
    t = np.asarray(ilm_targets(b, V))
    want = np.zeros((3, 9, V), np.float32)
    want[0, 3, 5] = want[0, 4, 7] = want[0, 4, 8] = 1 / 3
    want[2, 2, 9] = 2 / 3
    want[2, 2, 2] = 1 / 3
    np.testing.assert_allclose(t, want, atol=1e-7)


@settings(max_examples=25, deadline=None)
@given(st.integers(2, 5), st.lists(st.integers(0, V - 1), max_size=6), st.data())
def test_reinserting_the_drops_recovers_the_target(plen, target, data):
    """Property: the built row with every dropped token put back into its gap (in order) is prompt + target."""
    L = len(target)
    drop = data.draw(st.lists(st.booleans(), min_size=L, max_size=L))
    P, T = 6, 7
    prompt = np.zeros((1, P), np.int32)
    prompt[0, :plen] = np.arange(plen) + 1
    tgt = np.zeros((1, T), np.int32)
    tgt[0, :L] = target
    dr = np.zeros((1, T), bool)
    dr[0, :L] = drop
    b = ilm_batch_from_drops(prompt, [plen], tgt, [L], dr, pad_id=0)
    n = int(b["lengths"][0])
    gaps = {i: [] for i in range(n)}
    for j in range(L):
        s = int(b["slots"][0, j])
        assert (s >= 0) == drop[j]
        if s >= 0:
            assert plen - 1 <= s < n
            gaps[s].append(int(b["targets"][0, j]))
    rebuilt = []
    for i in range(n):
        rebuilt += [int(b["tokens"][0, i])] + gaps[i]
    assert rebuilt == list(range(1, plen + 1)) + list(target)
    assert int(b["n_drops"][0]) == sum(drop)
    np.testing.assert_allclose(np.asarray(ilm_targets(b, V)).sum(), 1.0 if any(drop) else 0.0, atol=1e-6)


def test_official_noise_distribution_and_determinism():
    L, T, N = 4, 5, 6000
    keys = jax.random.split(jax.random.key(3), 1)
    d = np.asarray(sample_drops(keys[0], jnp.full((N,), L, jnp.int32), T))
    assert not d[:, L:].any()
    np.testing.assert_array_equal(d, np.asarray(sample_drops(keys[0], jnp.full((N,), L, jnp.int32), T)))
    n = d.sum(1)
    counts = np.bincount(n, minlength=L + 1)
    # n ~ U{0..L}: each count ~ N/5 = 1200, sd ~ 31
    assert np.all(np.abs(counts - N / (L + 1)) < 5 * np.sqrt(N / (L + 1))), counts
    # given n = 2, each of the 6 subsets equally likely
    sub = d[n == 2][:, :L]
    pats = {c: 0 for c in itertools.combinations(range(L), 2)}
    for row in sub:
        pats[tuple(np.nonzero(row)[0])] += 1
    m = len(sub) / 6
    assert all(abs(v - m) < 5 * np.sqrt(m) for v in pats.values()), pats
    b1 = ilm_batch(jax.random.key(5), *_raw()[:4])
    b2 = ilm_batch(jax.random.key(5), *_raw()[:4])
    for k in b1:
        np.testing.assert_array_equal(b1[k], b2[k])


def _per_row_outputs(params, batch):
    """Returns [(logits [n, V] float64, stop logits [2] float64)] of each row run alone (unpadded, no segments)."""
    tokens, lengths = np.asarray(batch["tokens"]), np.asarray(batch["lengths"])
    outs = []
    for b in range(tokens.shape[0]):
        n = int(lengths[b])
        out = tokjax.forward(params, CFG, tokjax.Inputs(tokens=jnp.asarray(tokens[b:b + 1, :n])),
                             mask=tokjax.model.attention.Bidirectional())
        outs.append((np.asarray(out.logits[0], np.float64),
                     np.asarray(stop_logits(params, out.hidden[:, 0])[0], np.float64)))
    return outs


def _brute_force(outs, batch, lam, c):
    """Returns the ILM loss by loops over each row's own forward: dense targets, joint log-softmax, float64."""
    total = []
    for b, (logits, s2) in enumerate(outs):
        n = logits.shape[0]
        target = np.zeros((n, V))
        drops = 0
        for j in range(batch["slots"].shape[1]):
            s = int(batch["slots"][b, j])
            if s >= 0:
                target[s, int(batch["targets"][b, j])] += 1
                drops += 1
        allowed = np.ones(n, bool)
        allowed[0] = False  # the CLS slot
        flat = logits[allowed].reshape(-1)
        logq = flat - (np.log(np.exp(flat - flat.max()).sum()) + flat.max())
        ce = -(target[allowed].reshape(-1) / max(drops, 1) * logq).sum()
        z = 1 if drops else 0
        nll = -(s2[z] - np.log(np.exp(s2).sum()))
        w = 1.0 if c is None else (c if z == 0 else 1 - c)
        total.append(ce + lam * w * nll)
    return float(np.mean(total))


@pytest.mark.slow
def test_loss_matches_brute_force(params):
    batch = ilm_batch_from_drops(*_raw(), pad_id=0)
    outs = _per_row_outputs(params, batch)
    # runtime hyperparameters: one compiled (value, grad) for every (lambda, c)
    weighted = jax.jit(jax.value_and_grad(
        lambda p, b, lam, c: ilm_loss(p, CFG, b, stop_weight=lam, stop_class_weight=c), has_aux=True))
    for lam, c in [(0.001, 0.9), (1.0, None), (0.5, 0.2)]:
        if c is None:
            got, metrics = ilm_loss(params, CFG, batch, stop_weight=lam, stop_class_weight=None)
        else:
            (got, metrics), g = weighted(params, batch, jnp.float32(lam), jnp.float32(c))
            assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(g))
            assert float(jnp.abs(g[STOP_KEY]["out"]).sum()) > 0
        assert float(got) == pytest.approx(_brute_force(outs, batch, lam, c), rel=2e-5, abs=1e-6), (lam, c)
        assert set(metrics) == {"ce", "stop_loss", "stop_accuracy", "n_drops"}


@pytest.mark.slow  # default-suite time; the file's other tests keep the method covered in the default suite
def test_registered_loss_trains():
    """The registry's `ilm` loss draws its drops from the train loop's key and lowers the loss on a fixed task."""
    loss = make_loss("ilm", stop_weight=1.0, stop_class_weight=None)
    assert loss is make_loss("ilm", stop_weight=1.0, stop_class_weight=None)
    rng = np.random.default_rng(0)
    B, P, T = 32, 4, 3
    prompt = np.tile(np.array([[CLS, 0, 0, BOS]], np.int32), (B, 1))
    target = np.zeros((B, T), np.int32)
    for b in range(B):  # the prompt holds a digit pair; the target is the pair sorted, then its sum mod 10
        x, y = rng.integers(0, 10, 2)
        prompt[b, 1:3] = (x, y)
        target[b] = sorted((x, y)) + [(x + y) % 10]
    data = {"prompt": prompt, "prompt_lengths": np.full(B, P, np.int32), "target": target,
            "target_lengths": np.full(B, T, np.int32)}
    cfg = tokjax.ModelConfig(vocab_size=V, d_model=32, n_layers=1, n_heads=2, max_len=P + T)
    p0 = init_stop_head(tokjax.model.init_params(cfg, jax.random.key(0)), cfg, jax.random.key(1))
    tc = tokjax.train.TrainConfig(lr=1e-2, warmup_steps=5, total_steps=40, batch_size=B, seq_len=P + T, eval_every=0,
                                  checkpoint_every=0, log_every=1, weight_decay=0.0)
    model, hist = tokjax.train.train(cfg, tc, lambda s: data, loss_fn=loss, params=p0, progress=False)
    assert STOP_KEY in model.params
    # the same drops (fixed keys) before and after training
    keys = jax.random.split(jax.random.key(7), 3)
    ev = jax.jit(lambda p, k: loss(p, cfg, data, k)[0])
    before = np.mean([float(ev(p0, k)) for k in keys])
    after = np.mean([float(ev(model.params, k)) for k in keys])
    assert after < 0.7 * before, (before, after)
    # deterministic by key: the loss of a step depends only on its key
    assert float(ev(p0, keys[0])) == float(ev(p0, keys[0]))


def test_bad_inputs(params):
    prompt, pl, target, tl, drop = _raw()
    with pytest.raises(ValueError, match="prompt_lengths"):
        ilm_batch_from_drops(prompt, jnp.array([4, 1, 3]), target, tl, drop)
    with pytest.raises(ValueError, match="target_lengths"):
        ilm_batch_from_drops(prompt, pl, target, jnp.array([5, 2, 3]), drop)
    with pytest.raises(ValueError, match="drop marks"):
        ilm_batch_from_drops(prompt, pl, target, tl, drop.at[1, 3].set(True))
    with pytest.raises(ValueError, match="drop must be bool"):
        ilm_batch_from_drops(prompt, pl, target, tl, drop.astype(jnp.int32))
    with pytest.raises(ValueError, match="target token ids"):
        ilm_batch_from_drops(prompt, pl, target.at[0, 0].set(V), tl, drop, vocab_size=V)
    with pytest.raises(ValueError, match="at least 2 tokens wide"):
        ilm_batch_from_drops(prompt[:, :1], jnp.array([1, 1, 1]), target, tl, drop)
    with pytest.raises(ValueError, match="same rows"):
        ilm_batch_from_drops(prompt[:2], pl[:2], target, tl, drop)
    batch = ilm_batch_from_drops(prompt, pl, target, tl, drop)
    with pytest.raises(ValueError, match="stop head"):
        ilm_loss({k: v for k, v in params.items() if k != STOP_KEY}, CFG, batch)
    with pytest.raises(ValueError, match="stop_weight"):
        ilm_loss(params, CFG, batch, stop_weight=-1.0)
    with pytest.raises(ValueError, match="stop_class_weight"):
        ilm_loss(params, CFG, batch, stop_class_weight=1.5)
    with pytest.raises(ValueError, match="built ILM batch"):
        ilm_loss(params, CFG, {"tokens": batch["tokens"]})
    with pytest.raises(ValueError, match="stop_class_weight"):
        make_loss("ilm", stop_class_weight=-0.1)
    fn = make_ilm_loss()
    with pytest.raises(ValueError, match="missing"):
        fn(params, CFG, {"prompt": prompt}, jax.random.key(0))
    with pytest.raises(ValueError, match="rng"):
        fn(params, CFG, {"prompt": prompt, "prompt_lengths": pl, "target": target, "target_lengths": tl}, None)
    with pytest.raises(ValueError, match="max_len"):
        ilm_loss(params, tokjax.ModelConfig(vocab_size=V, d_model=32, n_layers=2, n_heads=2, max_len=4), batch)
