"""PAWN (P21, tokjax.analysis.pawn): features vs a full-logits oracle, constant gate == mean aggregation,
a learned gate finds the informative tokens, disk cache, AUROC / macro-F1 oracles, bad input."""


import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tokjax.analysis import pawn as P
from tokjax.analysis.pawn import (
    METRICS, TRAINABLE, UNIFORM_TRAINABLE, PawnFeatures, apply_pawn, init_pawn,
    pawn_batch_fn, pawn_features, pawn_features_batched, pawn_loss, pawn_norm_stats, pawn_weights, uniform_gate,
)
from tokjax.metrics.classification import auroc
from tokjax.model import ModelConfig, init_params, masked_mean
from tokjax.model.forward import Inputs, forward


@pytest.fixture(scope="module")
def lm():
    cfg = ModelConfig.tiny(vocab_size=97, d_model=32, n_layers=2, n_heads=2, n_kv_heads=1, max_len=64)
    return init_params(cfg, jax.random.key(0)), cfg


def _random_head(seed=0, M=4, D=6, F=8, G=1):
    p = init_pawn(jax.random.key(seed), M, D, features=F, metric_hidden=8, gate_hidden=8, gate_heads=G, head_hidden=8)
    k = jax.random.key(seed + 100)
    gate = dict(p["gate"])
    gate["w2"] = jax.random.normal(k, gate["w2"].shape)  # a non-constant gate
    return {**p, "gate": gate}


def _inputs(seed=0, B=3, T=7, M=4, D=6):
    r = np.random.default_rng(seed)
    mask = r.random((B, T)) < 0.7
    mask[:, 0] = True
    return (r.normal(size=(B, T, M)).astype(np.float32), r.normal(size=(B, T, D)).astype(np.float32), mask)


def test_features_match_full_logits_oracle(lm):
    params, cfg = lm
    tokens = np.asarray(jax.random.randint(jax.random.key(1), (2, 12), 0, cfg.vocab_size), np.int32)
    mask = np.ones((2, 12), bool)
    mask[1, 9:] = False  # padding: targets 9.. of row 1 do not count
    f = pawn_features(params, cfg, tokens, mask=mask)
    out = forward(params, cfg, Inputs(tokens=jnp.asarray(tokens[:, :-1])))
    logits = np.asarray(out.logits, np.float64)
    logq = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) \
        - logits.max(-1, keepdims=True)
    y = tokens[:, 1:]
    logp = np.take_along_axis(logq, y[..., None], -1)[..., 0]
    ent = -(np.exp(logq) * logq).sum(-1)
    zy = np.take_along_axis(logits, y[..., None], -1)
    rank = (logits > zy).sum(-1)
    want = np.stack([logp, ent, logq.max(-1), np.log1p(rank)], -1)
    tmask = mask[:, 1:]
    np.testing.assert_array_equal(np.asarray(f.mask), tmask)
    np.testing.assert_allclose(np.asarray(f.metrics)[tmask], want[tmask], atol=2e-4, rtol=1e-4)
    assert not np.any(np.asarray(f.metrics)[~tmask])
    np.testing.assert_allclose(np.asarray(f.hidden), np.asarray(out.hidden), atol=1e-5)
    assert f.metrics.shape == (2, 11, len(METRICS))
    m = np.asarray(f.metrics)[tmask]
    assert np.all(m[:, 2] >= m[:, 0]) and np.all(m[:, 2] <= 0) and np.all(m[:, 1] >= -1e-5)


@pytest.mark.parametrize("G", [1, 4])
def test_constant_gate_is_mean_aggregation_exactly(G):
    p = _random_head(G=G)
    metrics, hidden, mask = _inputs()
    gate = dict(p["gate"])
    gate["w2"] = jnp.zeros_like(gate["w2"])
    gate["b2"] = jnp.arange(G, dtype=jnp.float32) * 3.0 - 1.0  # constant per head, not zero
    pc = {**p, "gate": gate}
    logits, w = apply_pawn(pc, metrics, hidden, mask, return_weights=True)
    f = P._mlp(pc["metric"], jnp.asarray(metrics))  # norm is the identity here
    want = P._mlp(pc["head"], masked_mean(f, mask))[:, 0]
    np.testing.assert_array_equal(np.asarray(logits), np.asarray(want))
    n = mask.sum(1, keepdims=True)[..., None]
    np.testing.assert_allclose(np.asarray(w), np.where(mask[..., None], 1.0 / n, 0.0) * np.ones((1, 1, G)), rtol=1e-6)
    # uniform_gate() gives the same constant-gate head; a non-constant gate does not equal the mean
    np.testing.assert_array_equal(np.asarray(apply_pawn(uniform_gate(p), metrics, hidden, mask)), np.asarray(want))
    assert not np.allclose(np.asarray(apply_pawn(p, metrics, hidden, mask)), np.asarray(want))


def test_weights_normalise_mask_and_jit():
    p = _random_head(G=2)
    metrics, hidden, mask = _inputs(seed=3)
    logits, w = apply_pawn(p, metrics, hidden, mask, return_weights=True)
    np.testing.assert_allclose(np.asarray(w).sum(1), 1.0, rtol=1e-5)
    assert not np.any(np.asarray(w)[~mask])
    np.testing.assert_allclose(np.asarray(pawn_weights(p, hidden, mask)), np.asarray(w), rtol=1e-6)
    # masked-out tokens do not matter, whatever their values
    m2, h2 = metrics.copy(), hidden.copy()
    m2[~mask], h2[~mask] = 1e3, -1e3
    np.testing.assert_allclose(np.asarray(apply_pawn(p, m2, h2, mask)), np.asarray(logits), rtol=1e-6)
    # jit-compatible, position_scale a runtime array (no recompilation)
    jf = jax.jit(lambda pp, a, b, c, s: apply_pawn(pp, a, b, c, position_scale=s))
    np.testing.assert_allclose(np.asarray(jf(p, metrics, hidden, mask, jnp.float32(128.0))), np.asarray(logits),
                               rtol=1e-5)
    other = jf(p, metrics, hidden, mask, jnp.float32(2.0))
    assert jf._cache_size() == 1 and not np.allclose(np.asarray(other), np.asarray(logits))


def _planted(n, T=16, D=8, seed=0):
    """Texts whose label shows only in 2 informative tokens per text; hidden dim 0 flags them."""
    r = np.random.default_rng(seed)
    y = r.integers(0, 2, n)
    info = np.zeros((n, T), bool)
    for i in range(n):
        info[i, r.choice(T, 2, replace=False)] = True
    # uninformative tokens are loud noise, so averaging them in hurts: the gate has a reason to concentrate
    metrics = (r.normal(size=(n, T, 2)) * np.where(info, 0.5, 3.0)[..., None]).astype(np.float32)
    metrics[..., 0] += np.where(info, 1.5 * (2 * y[:, None] - 1), 0.0)
    hidden = r.normal(size=(n, T, D)).astype(np.float32)
    hidden[..., 0] = np.where(info, 2.0, -2.0) + 0.1 * hidden[..., 0]
    return PawnFeatures(metrics, hidden, np.ones((n, T), bool)), y, info


def _train(params, feats, y, steps, trainable, seed=0):
    from tokjax.train import TrainConfig, train

    tcfg = TrainConfig(lr=1e-2, warmup_steps=10, total_steps=steps, weight_decay=0.0, grad_clip=1.0, batch_size=64,
                       seq_len=1, seed=seed, log_every=steps, eval_every=0, checkpoint_every=0, trainable=trainable)
    return train(None, tcfg, pawn_batch_fn(feats, y, batch_size=64, seed=seed), loss_fn=pawn_loss, params=params,
                 progress=False)


@pytest.mark.slow
def test_learned_gate_finds_the_informative_tokens():
    feats, y, _ = _planted(512)
    test, yt, info = _planted(256, seed=1)
    p0 = init_pawn(jax.random.key(0), 2, 8, features=8, metric_hidden=16, gate_hidden=16, head_hidden=8,
                   norm=pawn_norm_stats(feats))
    p, hist = _train(p0, feats, y, 300, TRAINABLE)
    w = np.asarray(pawn_weights(p, test.hidden, test.mask))[..., 0]
    mass = (w * info).sum(1).mean()
    print(f'informative-token weight mass {mass:.3f}')
    assert mass >= 0.8, mass
    np.testing.assert_array_equal(np.asarray(p["norm"]["metric_mean"]), np.asarray(p0["norm"]["metric_mean"]))
    # the uniform-gate head (same MLPs, gate frozen constant) puts 2/16 on them and separates worse
    pu, _ = _train(uniform_gate(p0), feats, y, 300, UNIFORM_TRAINABLE)
    wu = np.asarray(pawn_weights(pu, test.hidden, test.mask))[..., 0]
    np.testing.assert_allclose((wu * info).sum(1), 2 / 16, rtol=1e-5)
    auc = auroc(np.asarray(apply_pawn(p, *test)), yt)
    auc_u = auroc(np.asarray(apply_pawn(pu, *test)), yt)
    print(f'AUROC pawn {auc:.3f} uniform {auc_u:.3f}')
    assert auc > auc_u and auc > 0.95, (auc, auc_u)


def test_disk_cache_roundtrip(lm, tmp_path, monkeypatch):
    params, cfg = lm
    tokens = np.array(jax.random.randint(jax.random.key(2), (5, 9), 0, cfg.vocab_size), np.int32)
    path = tmp_path / "feats.npz"
    a = pawn_features_batched(params, cfg, tokens, batch_size=2, cache_path=path)
    direct = pawn_features(params, cfg, tokens)
    np.testing.assert_allclose(a.metrics, np.asarray(direct.metrics), rtol=1e-6, atol=1e-6)
    assert a.hidden.dtype == np.float16 and a.metrics.shape == (5, 8, 4) and path.is_file()
    calls = []
    real = P._features
    monkeypatch.setattr(P, "_features", lambda *x: calls.append(1) or real(*x))
    b = pawn_features_batched(params, cfg, tokens, batch_size=2, cache_path=path)
    assert not calls
    for u, v in zip(a, b):
        np.testing.assert_array_equal(u, v)
    tokens[0, 0] = (tokens[0, 0] + 1) % cfg.vocab_size  # other tokens: the stale file is recomputed
    pawn_features_batched(params, cfg, tokens, batch_size=2, cache_path=path)
    assert calls


def test_bad_input(lm):
    params, cfg = lm
    p = _random_head()
    metrics, hidden, mask = _inputs()
    with pytest.raises(ValueError, match="all False in row"):
        apply_pawn(p, metrics, hidden, np.zeros_like(mask))
    with pytest.raises(ValueError, match="hidden must be"):
        apply_pawn(p, metrics, hidden[:, :-1], mask)
    with pytest.raises(ValueError, match="n_metrics=4"):
        apply_pawn(p, metrics[..., :3], hidden, mask)
    with pytest.raises(ValueError, match="mask must be"):
        apply_pawn(p, metrics, hidden, mask[:, :-1])
    bad = metrics.copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="finite"):
        apply_pawn(p, bad, hidden, mask)
    with pytest.raises(ValueError, match="PAWN params"):
        apply_pawn({"metric": p["metric"]}, metrics, hidden, mask)
    with pytest.raises(ValueError, match="cfg=None"):
        pawn_loss(p, cfg, {"metrics": metrics, "hidden": hidden, "mask": mask, "labels": np.zeros(3, int)})
    with pytest.raises(ValueError, match="labels"):
        pawn_loss(p, None, {"metrics": metrics, "hidden": hidden, "mask": mask, "labels": np.zeros(2, int)})
    with pytest.raises(ValueError, match="must divide"):
        init_pawn(jax.random.key(0), 4, 6, features=8, gate_heads=3)
    with pytest.raises(ValueError, match="norm"):
        init_pawn(jax.random.key(0), 4, 6, norm={"metric_mean": np.zeros(4)})
    with pytest.raises(ValueError, match="labels must be 0/1"):
        pawn_batch_fn(PawnFeatures(metrics, hidden, mask), np.array([0, 1, 2]), batch_size=2)
    with pytest.raises(ValueError, match="all False"):
        pawn_batch_fn(PawnFeatures(metrics, hidden, np.zeros_like(mask)), np.array([0, 1, 1]), batch_size=2)
    with pytest.raises(ValueError, match="token ids must lie"):
        pawn_features(params, cfg, np.full((1, 5), cfg.vocab_size))
    with pytest.raises(ValueError, match="seq\\+1 >= 2"):
        pawn_features(params, cfg, np.zeros((1, 1), int))
    with pytest.raises(ValueError, match="mask must be"):
        pawn_features(params, cfg, np.zeros((2, 5), int), mask=np.ones((2, 3), bool))
