"""P54 successor heads: effective OV circuit scores (planted head = 1.0, random ~ chance) and per-head ablation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import tokjax
from tokjax.analysis.successor_heads import (
    ablated_accuracy, effective_embeddings, head_ov_logits, successor_scores,
)
from tokjax.model.forward import forward, norm

CFG = tokjax.ModelConfig(vocab_size=48, d_model=32, n_layers=2, n_heads=4, n_kv_heads=4, max_len=16, init_scale=0.3)
SET = list(range(5, 12))  # 7 ordinal tokens, N <= head_size = 8


def _naive_effective(params, cfg, ids):
    """W_E[t] + SwiGLU-MLP0(RMSNorm(W_E[t])) in numpy (the reference for effective="mlp0")."""
    assert cfg.norm == "rms" and cfg.activation == "swiglu" and not cfg.bias
    p = jax.tree.map(lambda a: np.asarray(a[0], np.float64), params["layers"])
    x = np.asarray(params["embed"], np.float64)[ids]
    h = x / np.sqrt((x * x).mean(-1, keepdims=True) + cfg.norm_eps) * p["mlp_norm"]["scale"]
    g, u = h @ p["w_gate"], h @ p["w_up"]
    return x + (g / (1 + np.exp(-g)) * u) @ p["w_down"]


def _plant(params, cfg, layer, head, ids, gain=10.0):
    """Returns params whose head (layer, head) maps norm(e_t) -> logit gain at succ(t) among ``ids``."""
    ids = jnp.asarray(ids)
    N, hd = len(ids), cfg.head_size
    p_l = jax.tree.map(lambda a: a[layer], params["layers"])
    X = np.asarray(norm(effective_embeddings(params, cfg, ids), p_l["attn_norm"], cfg), np.float64)  # [N, D]
    SU = np.asarray(params["final_norm"]["scale"], np.float64)[:, None] * np.asarray(params["embed"], np.float64)[ids].T
    wv = np.zeros((cfg.d_model, hd))
    wv[:, :N] = np.linalg.pinv(X)  # X @ wv = [I_N, 0]
    perm = np.zeros((hd, N))
    perm[np.arange(N - 1), np.arange(1, N)] = gain  # row i -> succ(i)
    wo = perm @ np.linalg.pinv(SU)  # [hd, D]
    layers = dict(params["layers"])
    layers["wv"] = layers["wv"].at[layer, :, head].set(jnp.asarray(wv, jnp.float32))
    layers["wo"] = layers["wo"].at[layer, head].set(jnp.asarray(wo, jnp.float32))
    return {**params, "layers": layers}


def test_effective_embedding_matches_naive_mlp0():
    m = tokjax.Model.init(CFG, jax.random.key(0))
    e = effective_embeddings(m.params, CFG, jnp.asarray(SET))
    np.testing.assert_allclose(e, _naive_effective(m.params, CFG, SET), atol=1e-4)
    only = effective_embeddings(m.params, CFG, jnp.asarray(SET), effective="mlp0_only")
    np.testing.assert_allclose(only + m.params["embed"][jnp.asarray(SET)], e, atol=1e-5)


def test_planted_successor_head_scores_one_and_random_heads_score_near_chance():
    m = tokjax.Model.init(CFG, jax.random.key(0))
    planted = _plant(m.params, CFG, layer=1, head=2, ids=SET)
    out = successor_scores(planted, CFG, {"toy": SET})
    s = np.asarray(out["scores"]["toy"])
    assert s.shape == (2, 4) and s[1, 2] == 1.0
    # the other heads are untouched random heads: pooled over three disjoint 12-token sets, ~ chance 1/12
    sets = {"a": list(range(0, 12)), "b": list(range(12, 24)), "c": list(range(24, 36))}
    rnd = successor_scores(m.params, CFG, sets)
    pooled = float(np.mean([np.asarray(v) for v in rnd["scores"].values()]))
    assert abs(pooled - 1 / 12) < 0.07, pooled
    assert rnd["chance"]["a"] == pytest.approx(1 / 12)
    np.testing.assert_allclose(rnd["mean"], np.mean([np.asarray(v) for v in rnd["scores"].values()], 0), atol=1e-7)


@pytest.mark.slow
def test_head_ov_logits_shape_and_gqa():
    cfg = CFG.replace(n_kv_heads=2)
    m = tokjax.Model.init(cfg, jax.random.key(1))
    lg = head_ov_logits(m.params, cfg, jnp.asarray(SET), jnp.arange(10))
    assert lg.shape == (2, 4, 7, 10) and bool(jnp.all(jnp.isfinite(lg)))
    # heads 0 and 1 share kv head 0 but have their own W_O: different logits
    assert float(jnp.abs(lg[0, 0] - lg[0, 1]).max()) > 1e-4


@pytest.mark.slow
def test_ablating_the_planted_head_through_attn_heads_hook():
    m = tokjax.Model.init(CFG, jax.random.key(0))
    prompts = jnp.asarray([[1, 2, 5, 6], [3, 4, 7, 8]])
    targets = jnp.asarray([7, 9])
    none = ablated_accuracy(m, prompts, targets)
    lp = jax.nn.log_softmax(forward(m.params, CFG, prompts).logits[:, -1])
    assert float(none["logp"]) == pytest.approx(float(jnp.mean(lp[jnp.arange(2), targets])), abs=1e-5)
    abl = ablated_accuracy(m, prompts, targets, heads=[(1, 2), (0, 0)])
    assert abs(float(abl["logp"]) - float(none["logp"])) > 1e-4


@pytest.mark.parametrize(
    "sets, match",
    [({}, "at least one"), ({"x": [3]}, "at least 2"), ({"x": [3, 3]}, "distinct"), ({"x": [3, 99]}, "vocab_size"),
     ("days", "dict")],
)
def test_bad_sets_raise(sets, match):
    m = tokjax.Model.init(CFG, jax.random.key(0))
    with pytest.raises(ValueError, match=match):
        successor_scores(m.params, CFG, sets)
    with pytest.raises(ValueError, match="effective"):
        successor_scores(m.params, CFG, {"x": [1, 2]}, effective="mlp1")
