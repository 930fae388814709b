"""InfiGFusion GLD (P12): co-activation graphs over vocabulary channels and the sorting-based GW approximation."""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tokjax
from tokjax.losses.infigfusion import (
    GW_METHODS, coactivation_graph, graph_on_logits_loss, make_gld_loss, sorted_gw, topk_features,
)


def _logits(seed, B=2, T=5, V=12, scale=1.0):
    return jnp.asarray(np.random.default_rng(seed).normal(size=(B, T, V)) * scale, jnp.float32)


def _numpy_model(seed=0, V=41):
    cfg = tokjax.ModelConfig(vocab_size=V, d_model=16, n_layers=1, n_heads=2, n_kv_heads=1, max_len=16)
    r = np.random.default_rng(seed)

    def make(spec):
        if spec.init in ("ones", "zeros"):
            return (jnp.ones if spec.init == "ones" else jnp.zeros)(spec.shape, jnp.float32)
        return jnp.asarray(r.normal(size=spec.shape) * 0.3 * spec.scale, jnp.float32)

    specs = tokjax.model.param_specs(cfg)
    return jax.tree.map(make, specs, is_leaf=lambda x: isinstance(x, tokjax.model.ParamSpec)), cfg


def exact_gw(a, b):
    """Returns min over node permutations P of (1/n^2) ||A - P B P^T||^2 (exact GW for PSD graphs), by brute force."""
    n = a.shape[0]
    best = np.inf
    for p in itertools.permutations(range(n)):
        idx = np.asarray(p)
        best = min(best, float(((a - b[np.ix_(idx, idx)]) ** 2).sum()) / n ** 2)
    return best


def _psd(seed, k, rank=3):
    z = np.random.default_rng(seed).normal(size=(rank, k))
    return (z.T @ z) / rank


def _naive_features(row, k, temperature=1.0, values="logits"):
    """numpy float64: the top-k entries of the transformed row kept in place, the rest 0."""
    x = np.asarray(row, np.float64) / temperature
    if values != "logits":
        x = x - x.max() - np.log(np.exp(x - x.max()).sum())
        x = np.exp(x) if values == "probs" else x
    z = np.zeros_like(x)
    top = np.argsort(-x, kind="stable")[:k]
    z[top] = x[top]
    return z, top


def _naive_graph(x, mask, k, **kw):
    """numpy [V, V] mean over masked-in t of z_t z_t^T, and the set of kept ids."""
    V = x.shape[-1]
    acc, n, ids = np.zeros((V, V)), 0, set()
    for t in range(x.shape[0]):
        if mask[t]:
            z, top = _naive_features(x[t], k, **kw)
            acc += np.outer(z, z)
            ids |= set(top.tolist())
            n += 1
    return acc / max(n, 1), ids


def _naive_shared_vocab(s, t, mask, k, **kw):
    """numpy mean over rows with a masked-in position of (1/n^2) ||G_s - G_t||_F^2 over the union of kept ids."""
    out = []
    for b in range(s.shape[0]):
        if mask[b].any():
            gs, ids_s = _naive_graph(s[b], mask[b], k, **kw)
            gt, ids_t = _naive_graph(t[b], mask[b], k, **kw)
            out.append(((gs - gt) ** 2).sum() / len(ids_s | ids_t) ** 2)
    return float(np.mean(out)) if out else 0.0


def test_features_are_indexed_by_vocabulary_channel():
    x = _logits(0)
    perm = np.random.default_rng(1).permutation(12)
    for values in ("logits", "logprobs", "probs"):
        z = np.asarray(topk_features(x, 4, temperature=2.0, values=values))
        assert z.shape == x.shape and np.all((z != 0).sum(-1) == 4)
        for b, t in itertools.product(range(2), range(5)):
            np.testing.assert_allclose(z[b, t], _naive_features(x[b, t], 4, 2.0, values)[0], rtol=1e-5, atol=1e-6)
        # a vocabulary permutation permutes the features with it (the old rank-slot features did not move)
        zp = np.asarray(topk_features(x[..., perm], 4, temperature=2.0, values=values))
        np.testing.assert_allclose(zp, z[..., perm], rtol=1e-6)


def test_graph_matches_naive_loop():
    x = _logits(0)
    mask = np.array([[1, 1, 0, 1, 0], [0, 0, 0, 0, 0]], bool)
    for values in ("logits", "logprobs", "probs"):
        g = np.asarray(coactivation_graph(x, jnp.asarray(mask), k=4, temperature=2.0, values=values))
        assert g.shape == (2, 12, 12)
        for b in range(2):
            ref, ids = _naive_graph(np.asarray(x[b]), mask[b], 4, temperature=2.0, values=values)
            np.testing.assert_allclose(g[b], ref, rtol=1e-5, atol=1e-6)
            # nodes are token ids: only channels kept at some masked-in position have edges
            assert set(np.flatnonzero(np.abs(g[b]).sum(-1))) == ids
    assert np.all(g[1] == 0)


@pytest.mark.slow  # default-suite time; the file's other tests keep the method covered in the default suite
@settings(max_examples=8, deadline=None)
@given(st.integers(0, 10_000), st.sampled_from(["logits", "logprobs", "probs"]))
def test_shared_vocab_matches_dense_graphs(seed, values):
    r = np.random.default_rng(seed)
    B, T, V = 3, int(r.integers(1, 6)), int(r.integers(3, 11))
    k = int(r.integers(1, V + 1))
    s, t = _logits(seed, B, T, V, 2.0), _logits(seed + 1, B, T, V, 2.0)
    mask = r.uniform(size=(B, T)) < 0.7
    got = float(graph_on_logits_loss(s, t, jnp.asarray(mask), k=k, temperature=1.5, values=values))
    ref = _naive_shared_vocab(np.asarray(s), np.asarray(t), mask, k, temperature=1.5, values=values)
    np.testing.assert_allclose(got, ref, rtol=2e-4, atol=1e-7)


@pytest.mark.slow  # test_permuted_student_kl_and_gld covers the permuted student in the default suite
@settings(max_examples=10, deadline=None)
@given(st.data())
def test_permuted_student_has_positive_gld(data):
    """The issue-15 property: a student whose logits are a vocabulary permutation of the teacher's
    (one permutation per position) gets GLD > 0 whenever the permutation moves a kept channel, and
    GLD = 0 for identical logits. (A permutation that only shuffles channels outside every top-k
    set leaves the kept logits, hence any top-k loss, unchanged: then GLD = 0 exactly.)"""
    seed = data.draw(st.integers(0, 2 ** 31 - 1), "seed")
    V = data.draw(st.integers(2, 9), "V")
    k = data.draw(st.integers(1, V), "k")
    T = data.draw(st.integers(1, 4), "T")
    values = data.draw(st.sampled_from(["logits", "logprobs"]), "values")
    per_position = data.draw(st.booleans(), "per_position")
    perms = [data.draw(st.permutations(range(V)), f"perm{t}") for t in range(T if per_position else 1)]
    perms = np.asarray(perms * (1 if per_position else T))  # [T, V]
    teacher = _logits(seed, 1, T, V, 3.0)
    student = jnp.take_along_axis(teacher, jnp.asarray(perms)[None], axis=-1)  # student[t, i] = teacher[t, perm_t[i]]
    mask = jnp.asarray(data.draw(st.lists(st.booleans(), min_size=T, max_size=T), "mask"))[None]
    # the kept features differ iff some masked-in position's permutation moves a kept channel
    tops = [set(np.argsort(-np.asarray(teacher[0, t]))[:k].tolist()) for t in range(T)]
    moved = any(bool(mask[0, t]) and any(perms[t, i] != i and (i in tops[t] or perms[t, i] in tops[t])
                                         for i in range(V)) for t in range(T))
    gld = jax.jit(lambda s_, t_, m_: graph_on_logits_loss(s_, t_, m_, k=k, values=values))
    loss = float(gld(student, teacher, mask))
    assert np.isfinite(loss) and loss >= 0
    assert float(gld(teacher, teacher, mask)) == 0.0
    if moved:
        assert loss > 0, (perms, k)
    else:
        assert loss == 0.0
    g = np.asarray(jax.jit(jax.grad(lambda s_: graph_on_logits_loss(s_, teacher, mask, k=k, values=values)))(student))
    assert np.all(np.isfinite(g))


def test_permuted_student_kl_and_gld():
    # the example: KL is several nats, the old rank-slot graphs gave GLD = 0
    r = np.random.default_rng(0)
    teacher = _logits(3, 2, 6, 50, 4.0)
    perms = jnp.asarray(np.stack([[r.permutation(50) for _ in range(6)] for _ in range(2)]))
    student = jnp.take_along_axis(teacher, perms, axis=-1)
    kl = float(tokjax.losses.kd_loss(student, teacher))
    assert kl > 1.0
    assert float(graph_on_logits_loss(student, teacher, k=10)) > 1e-3
    assert float(graph_on_logits_loss(student, teacher, k=10, method="aligned")) > 0  # per-position: structure moves
    glob = teacher[..., r.permutation(50)]  # one relabelling at every position: the sorted GW cannot see it
    assert float(graph_on_logits_loss(glob, teacher, k=10)) > 1e-3
    for method in ("aligned", "degree"):
        assert float(graph_on_logits_loss(glob, teacher, k=10, method=method)) < 1e-6


@settings(max_examples=15, deadline=None)
@given(st.integers(0, 10_000), st.sampled_from(GW_METHODS))
def test_nonnegative_and_zero_on_identical(seed, method):
    s, t = _logits(seed, V=9, scale=2.0), _logits(seed + 1, V=9, scale=2.0)
    assert float(graph_on_logits_loss(s, t, k=3, method=method)) >= 0
    assert float(graph_on_logits_loss(t, t, k=3, method=method)) == 0.0


def test_sorting_bounds_sandwich_exact_gw():
    for seed in range(6):
        k = 3 + seed % 3
        a, b = _psd(seed, k), _psd(100 + seed, k)
        exact = exact_gw(a, b)
        up = float(sorted_gw(jnp.asarray(a), jnp.asarray(b), "aligned"))
        lo = float(sorted_gw(jnp.asarray(a), jnp.asarray(b), "degree"))
        assert lo <= exact * (1 + 1e-5) + 1e-7
        assert exact <= up * (1 + 1e-5) + 1e-7


def test_sorted_gw_node_masks_pad_with_isolated_nodes():
    for seed in range(4):
        na, nb = 3 + seed % 2, 5
        a, b = _psd(seed, na), _psd(50 + seed, nb)
        pad_a = np.zeros((nb, nb))
        pad_a[:na, :na] = a
        exact = exact_gw(pad_a, b)  # the smaller graph gets isolated nodes
        # real nodes scattered among junk slots (junk rows are ignored)
        slots = 7
        ia, ib = np.sort(np.random.default_rng(seed).choice(slots, na, replace=False)), np.arange(nb)
        ga, gb = np.full((slots, slots), 9.0), np.full((nb, nb), 0.0)
        ga[np.ix_(ia, ia)] = a
        gb[:] = b
        va = np.zeros(slots, bool)
        va[ia] = True
        for method in ("aligned", "degree"):
            got = float(sorted_gw(jnp.asarray(ga), jnp.asarray(gb), method, valid_student=jnp.asarray(va)))
            ref = float(sorted_gw(jnp.asarray(pad_a), jnp.asarray(b), method))
            np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-7)
            if method == "aligned":
                assert exact <= got * (1 + 1e-5) + 1e-7
            else:
                assert got <= exact * (1 + 1e-5) + 1e-7


@pytest.mark.slow  # default-suite time; the file's other tests keep the method covered in the default suite
@settings(max_examples=8, deadline=None)
@given(st.integers(0, 10_000), st.integers(2, 5))
def test_aligned_is_exact_for_rank_one_nonnegative_graphs(seed, k):
    # One position with probability features: G = z z^T with z >= 0 on k active channels each, where
    # the rearrangement inequality makes the degree-sorted matching optimal.
    r = np.random.default_rng(seed)
    s = jnp.asarray(r.normal(size=(1, 1, 9)) * 2, jnp.float32)
    t = jnp.asarray(r.normal(size=(1, 1, 7)) * 2, jnp.float32)
    gs = np.asarray(coactivation_graph(s, k=k, values="probs"))[0]
    gt = np.asarray(coactivation_graph(t, k=k, values="probs"))[0]
    ks, kt = np.flatnonzero(gs.sum(-1)), np.flatnonzero(gt.sum(-1))
    assert len(ks) == len(kt) == k
    loss = float(graph_on_logits_loss(s, t, k=k, values="probs", method="aligned"))
    np.testing.assert_allclose(loss, exact_gw(gs[np.ix_(ks, ks)], gt[np.ix_(kt, kt)]), rtol=1e-4, atol=1e-9)


@settings(max_examples=20, deadline=None)
@given(st.integers(0, 10_000), st.integers(2, 6))
def test_graph_relabelling_invariance_and_zero_on_identical(seed, k):
    a, b = _psd(seed, k), _psd(seed + 1, k)
    p, q = np.random.default_rng(seed).permutation(k), np.random.default_rng(seed + 7).permutation(k)
    pa, qb = a[np.ix_(p, p)], b[np.ix_(q, q)]
    for method in ("aligned", "degree"):
        base = float(sorted_gw(jnp.asarray(a), jnp.asarray(b), method))
        assert base >= 0
        np.testing.assert_allclose(float(sorted_gw(jnp.asarray(pa), jnp.asarray(qb), method)), base, rtol=1e-5,
                                   atol=1e-7)
        assert float(sorted_gw(jnp.asarray(a), jnp.asarray(pa), method)) <= 1e-10


@pytest.mark.slow  # default-suite time; the file's other tests keep the method covered in the default suite
@settings(max_examples=10, deadline=None)
@given(st.integers(0, 10_000))
def test_sorted_methods_take_differing_vocabularies(seed):
    s, t = _logits(seed, V=10), _logits(seed + 1, V=14)
    perm = np.random.default_rng(seed).permutation(10)
    for method in ("aligned", "degree"):
        base = float(graph_on_logits_loss(s, t, k=5, method=method))
        assert base > 0
        np.testing.assert_allclose(float(graph_on_logits_loss(s[..., perm], t, k=5, method=method)), base,
                                   rtol=1e-5, atol=1e-7)
        assert float(graph_on_logits_loss(s, s, k=5, method=method)) == 0.0
    with pytest.raises(ValueError, match="vocab size"):
        graph_on_logits_loss(s, t, k=5)  # shared_vocab needs one vocabulary


def test_gradient_matches_finite_differences():
    s, t = _logits(3, B=2, T=3, V=8), _logits(4, B=2, T=3, V=8)
    mask = jnp.asarray([[1, 1, 0], [1, 0, 1]], bool)
    for method, values in (("shared_vocab", "logits"), ("shared_vocab", "logprobs"), ("aligned", "logits"),
                           ("degree", "probs")):
        f = jax.jit(lambda x: graph_on_logits_loss(x, t, mask, k=3, temperature=1.5, values=values, method=method))
        g = np.asarray(jax.jit(jax.grad(f))(s))
        assert np.all(g[0, 2] == 0) and np.all(g[1, 1] == 0)  # masked positions get no gradient
        x0 = np.asarray(s, np.float64)
        for idx in [(0, 0, int(np.argmax(x0[0, 0]))), (1, 2, int(np.argmax(x0[1, 2]))), (0, 1, 0)]:
            e = np.zeros_like(x0)
            e[idx] = 1e-2
            fd = (float(f(jnp.asarray(x0 + e, jnp.float32))) - float(f(jnp.asarray(x0 - e, jnp.float32)))) / 2e-2
            np.testing.assert_allclose(g[idx], fd, rtol=3e-2, atol=1e-4)
        if values == "logits":  # a channel outside the position's top-k gets no gradient
            low = int(np.argmin(x0[0, 0]))
            assert g[0, 0, low] == 0
    # the teacher gets no gradient
    gt = jax.grad(lambda y: graph_on_logits_loss(s, y, k=3))(t)
    assert np.all(np.asarray(gt) == 0)


@pytest.mark.slow  # default-suite time; the file's other tests keep the method covered in the default suite
def test_mask_normalizer_and_empty():
    s, t = _logits(5, B=4, T=3), _logits(6, B=4, T=3)
    gol = jax.jit(lambda x, y, m, n=None: graph_on_logits_loss(x, y, m, k=4, normalizer=n))
    mask = jnp.asarray(np.random.default_rng(0).uniform(size=(4, 3)) < 0.7).at[2].set(False)
    full = gol(s, t, mask)
    # masked positions do not matter, even non-finite ones
    for junk in (100.0, jnp.inf, jnp.nan):
        s2 = jnp.where(mask[..., None], s, junk)
        np.testing.assert_allclose(float(gol(s2, t, mask)), float(full), rtol=1e-6)
        g = jax.grad(lambda x: graph_on_logits_loss(x, t, mask, k=4, values="logprobs", method="aligned"))(s2)
        assert np.all(np.isfinite(np.asarray(g))) and np.all(np.asarray(g)[~np.asarray(mask)] == 0)
    # micro-batches with the global row count add up to the full-batch loss
    rows = float(jnp.sum(jnp.any(mask, -1)))
    parts = sum(float(gol(s[i:i + 2], t[i:i + 2], mask[i:i + 2], jnp.float32(rows))) for i in (0, 2))
    np.testing.assert_allclose(parts, float(full), rtol=1e-5)
    none = jnp.zeros((4, 3), bool)
    for method in GW_METHODS:
        v, g = jax.jit(jax.value_and_grad(lambda x: graph_on_logits_loss(x, t, none, k=4, method=method)))(s)
        assert float(v) == 0.0 and np.all(np.asarray(g) == 0)


def test_runtime_temperature_no_recompile():
    s, t = _logits(7), _logits(8)
    traces = []

    @jax.jit
    def f(x, tau):
        traces.append(1)
        return graph_on_logits_loss(x, t, k=4, temperature=tau)

    a, b = f(s, jnp.float32(1.0)), f(s, jnp.float32(3.0))
    assert len(traces) == 1 and float(a) != float(b)
    np.testing.assert_allclose(float(a), float(graph_on_logits_loss(s, t, k=4)), rtol=1e-6)


def test_bad_inputs():
    s, t = _logits(0), _logits(1)
    with pytest.raises(ValueError, match="batch, seq"):
        graph_on_logits_loss(s, t[:, :3], k=4)
    with pytest.raises(ValueError, match="must not exceed"):
        graph_on_logits_loss(s, t, k=13)
    with pytest.raises(ValueError, match="temperature"):
        graph_on_logits_loss(s, t, k=4, temperature=0.0)
    with pytest.raises(ValueError, match="temperature"):
        graph_on_logits_loss(s, t, k=4, temperature=-1.0)
    with pytest.raises(ValueError, match="mask shape"):
        graph_on_logits_loss(s, t, jnp.ones((2, 4), bool), k=4)
    with pytest.raises(ValueError, match=r"\[batch, seq, vocab\]"):
        graph_on_logits_loss(s[0], t[0], k=4)
    with pytest.raises(ValueError, match="positive int"):
        graph_on_logits_loss(s, t, k=0)
    with pytest.raises(ValueError, match="vocab size 9 must equal"):
        graph_on_logits_loss(s, t[..., :9], k=4)
    with pytest.raises(ValueError, match="method"):
        graph_on_logits_loss(s, t, k=4, method="exact")
    with pytest.raises(ValueError, match="values"):
        topk_features(s, 3, values="ranks")
    with pytest.raises(ValueError, match="method"):
        sorted_gw(jnp.eye(3), jnp.eye(3), "shared_vocab")
    with pytest.raises(ValueError, match="square"):
        sorted_gw(jnp.eye(3), jnp.ones((3, 4)))
    with pytest.raises(ValueError, match="valid_student"):
        sorted_gw(jnp.eye(3), jnp.eye(3), valid_student=jnp.ones(4, bool))
    with pytest.raises(ValueError, match="normalizer"):
        graph_on_logits_loss(s, t, k=4, normalizer=-1.0)
    with pytest.raises(ValueError, match="method"):
        make_gld_loss(_numpy_model(0), method="gw")


@pytest.mark.slow  # default-suite time; the file's other tests keep the method covered in the default suite
def test_factory_train_signature():
    params, cfg = _numpy_model(0)
    t_params, _ = _numpy_model(1)
    tokens = jnp.asarray(np.random.default_rng(2).integers(0, cfg.vocab_size, size=(3, 9)), jnp.int32)
    batch = {"tokens": tokens, "lengths": jnp.array([9, 7, 5])}
    loss_fn = make_gld_loss((t_params, cfg), k=5, gld_weight=0.5, kd_weight=1.0)
    (loss, m), g = jax.jit(jax.value_and_grad(lambda p: loss_fn(p, cfg, batch, None), has_aux=True))(params)
    assert set(m) >= {"loss", "ce", "kd", "gld", "token_count", "teacher_agreement"}
    np.testing.assert_allclose(float(loss), float(m["ce"] + m["kd"] + 0.5 * m["gld"]), rtol=1e-5)
    assert float(m["token_count"]) == 8 + 6 + 4 and float(m["gld"]) > 0
    assert all(np.all(np.isfinite(np.asarray(x))) for x in jax.tree.leaves(g))
    # runtime weight override; a student identical to its teacher has zero KD and zero GLD
    m0 = jax.jit(lambda p, b: loss_fn(p, cfg, b, None)[1])(t_params, {**batch, "hparams": {"gld_weight": 0.0,
                                                                                            "kd_weight": 0.0}})
    np.testing.assert_allclose(float(m0["loss"]), float(m0["ce"]), rtol=1e-6)
    assert abs(float(m0["kd"])) < 1e-5 and abs(float(m0["gld"])) < 1e-9 and float(m0["teacher_agreement"]) == 1.0
    with pytest.raises(ValueError, match="teacher"):
        make_gld_loss(params)
