"""Top-k sparse autoencoders (tokjax.analysis.sae, tokjax.train.recipes.sae): numpy oracles, planted atoms, taps."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import tokjax
from tokjax.analysis.patching import capture
from tokjax.analysis.sae import (
    SparseCodes, collect_activations, sae_activations, sae_decode, sae_encode, sae_encode_sparse, sae_init, sae_loss,
    sae_metrics,
)
from tokjax.train.recipes.sae import sae_loss_fn, train_sae


def _np_encode(params, x, k):
    """Numpy oracle: top-k of ReLU((x - b_dec) W_enc + b_enc), ties to the lower index, others 0."""
    p = {n: np.asarray(v, np.float64) for n, v in params.items()}
    pre = np.maximum((np.asarray(x, np.float64) - p["b_dec"]) @ p["W_enc"] + p["b_enc"], 0.0)
    z = np.zeros_like(pre)
    for i, row in enumerate(pre.reshape(-1, pre.shape[-1])):
        keep = np.argsort(-row, kind="stable")[:k]
        z.reshape(-1, pre.shape[-1])[i, keep] = row[keep]
    return z


def _np_decode(params, z):
    w = np.asarray(params["W_dec"], np.float64)
    return z @ (w / np.linalg.norm(w, axis=1, keepdims=True)) + np.asarray(params["b_dec"], np.float64)


def _random_params(seed, d_in=6, d_sae=10):
    k1, k2, k3, k4 = jax.random.split(jax.random.key(seed), 4)
    p = sae_init(k1, d_in, d_sae)
    # non-unit stored decoder rows and non-zero biases, so the oracle checks every term
    p["W_dec"] = p["W_dec"] * jax.random.uniform(k2, (d_sae, 1), minval=0.3, maxval=3.0)
    p["b_enc"] = 0.3 * jax.random.normal(k3, (d_sae,))
    p["b_dec"] = 0.3 * jax.random.normal(k4, (d_in,))
    return p


def test_init_shapes_unit_decoder_rows_and_tied_encoder():
    p = sae_init(jax.random.key(0), 8, 24, k=4)
    assert {k: v.shape for k, v in p.items()} == {"W_enc": (8, 24), "b_enc": (24,), "W_dec": (24, 8), "b_dec": (8,)}
    np.testing.assert_allclose(np.linalg.norm(p["W_dec"], axis=1), 1.0, rtol=1e-6)
    np.testing.assert_array_equal(p["W_enc"], p["W_dec"].T)
    assert not np.any(p["b_enc"]) and not np.any(p["b_dec"])


@functools.partial(jax.jit, static_argnames=("k",))
def _roundtrip(p, x, k):
    z = sae_encode(p, x, k)
    codes = sae_encode_sparse(p, x, k)
    return z, sae_decode(p, z), codes, sae_decode(p, codes)


@settings(max_examples=10)
@given(seed=st.integers(0, 10_000), k=st.sampled_from([1, 3, 10]))
def test_encode_decode_match_numpy_oracle(seed, k):
    p = _random_params(seed)
    x = np.asarray(jax.random.normal(jax.random.key(seed + 1), (3, 5, 6)))
    z, x_hat, codes, x_hat_sparse = _roundtrip(p, x, k)
    np.testing.assert_allclose(z, _np_encode(p, x, k), atol=1e-5)
    assert np.all((np.asarray(z) != 0).sum(-1) <= k)
    np.testing.assert_allclose(x_hat, _np_decode(p, np.asarray(z, np.float64)), atol=1e-4)
    assert codes.indices.shape == (3, 5, k)
    np.testing.assert_allclose(x_hat_sparse, x_hat, atol=1e-5)  # gather of k rows == dense product


def test_ties_go_to_the_lower_latent_like_the_oracle():
    p = sae_init(jax.random.key(0), 2, 6)
    p["W_enc"] = jnp.ones((2, 6))  # every latent has the same pre-activation
    z = np.asarray(sae_encode(p, np.ones((1, 2), np.float32), 2))
    np.testing.assert_array_equal(z[0] != 0, [True, True, False, False, False, False])


def test_runtime_k_equals_static_k_and_does_not_recompile():
    p = _random_params(3)
    x = jax.random.normal(jax.random.key(4), (7, 6))
    traces = []

    @functools.partial(jax.jit, static_argnames=("k_max",))
    def enc(p, x, k, k_max):
        traces.append(1)
        return sae_encode(p, x, k, k_max=k_max)

    for k in (1, 3, 5):
        np.testing.assert_allclose(enc(p, x, jnp.int32(k), 5), sae_encode(p, x, k), atol=1e-6)
        np.testing.assert_allclose(sae_encode(p, x, jnp.int32(k)), sae_encode(p, x, k), atol=1e-6)  # k_max = d_sae
    assert len(traces) == 1


def test_decode_is_invariant_to_decoder_row_scale():
    p = _random_params(5)
    z = sae_encode(p, jax.random.normal(jax.random.key(6), (4, 6)), 3)
    q = dict(p, W_dec=p["W_dec"] * jnp.linspace(0.1, 7.0, 10)[:, None])
    np.testing.assert_allclose(sae_decode(q, z), sae_decode(p, z), atol=1e-5)


@pytest.mark.parametrize("k_max", [None, 2, 8])
def test_loss_metrics_match_numpy(k_max):
    p = _random_params(7)
    x = np.asarray(jax.random.normal(jax.random.key(8), (16, 6)), np.float64)
    loss, m = jax.jit(functools.partial(sae_loss, k_max=k_max))(p, None, {"x": x.astype(np.float32), "k": 2})
    z = _np_encode(p, x, 2)
    err = np.sum((x - _np_decode(p, z)) ** 2)
    np.testing.assert_allclose(loss, err / np.sum((x - x.mean(0)) ** 2), rtol=1e-4)
    np.testing.assert_allclose(m["nmse"], loss, rtol=0)
    np.testing.assert_allclose(m["mse"], err / x.size, rtol=1e-4)
    np.testing.assert_allclose(m["l0"], (z != 0).sum(-1).mean(), rtol=1e-6)
    np.testing.assert_allclose(m["dead_frac"], 1 - (z != 0).any(0).mean(), rtol=1e-6)
    full = sae_metrics(p, x.astype(np.float32), 2, chunk=5)  # ragged chunks
    np.testing.assert_allclose(full["nmse"], float(loss), rtol=1e-4)
    np.testing.assert_allclose(full["dead_frac"], float(m["dead_frac"]), rtol=1e-6)


def test_sae_activations_chunks_equal_one_call():
    p = _random_params(9)
    x = np.asarray(jax.random.normal(jax.random.key(10), (23, 6)), np.float32)
    codes = sae_activations(p, x, 3, chunk=5)
    one = sae_encode_sparse(p, x, 3)
    np.testing.assert_array_equal(codes.indices, one.indices)
    np.testing.assert_allclose(codes.values, one.values, atol=1e-6)
    assert isinstance(codes, SparseCodes) and codes.indices.dtype == np.int32


def _planted(d, n_atoms, active, n, seed):
    """Rows that are sums of `active` of `n_atoms` random unit atoms with coefficients in [0.5, 1.5]."""
    r = np.random.default_rng(seed)
    atoms = r.normal(size=(n_atoms, d))
    atoms /= np.linalg.norm(atoms, axis=1, keepdims=True)
    pick = np.argsort(r.random((n, n_atoms)), axis=1)[:, :active]
    x = np.einsum("na,nad->nd", r.uniform(0.5, 1.5, size=(n, active)), atoms[pick])
    return x.astype(np.float32), atoms


def _recovered(params, atoms):
    w = np.array(params["W_dec"], np.float64)
    w /= np.linalg.norm(w, axis=1, keepdims=True)
    return float(((atoms @ w.T).max(1) > 0.9).mean())


def test_planted_atoms_are_recovered():
    """The planted check: d=32, 64 unit atoms, 3 active per row; >= 90% of atoms get a decoder row at cos > 0.9."""
    x, atoms = _planted(32, 64, 3, 8192, seed=0)
    params, hist = train_sae(x, 128, 3, steps=800, seed=0, lr=3e-3, batch=256)
    assert _recovered(params, atoms) >= 0.9
    assert hist["train"][-1]["nmse"] < 0.1 and hist["train"][-1]["l0"] == pytest.approx(3.0)
    assert sae_metrics(params, x, 3)["nmse"] < 0.1


@pytest.mark.slow
def test_planted_atoms_are_recovered_larger():
    x, atoms = _planted(64, 256, 4, 32768, seed=1)
    params, _ = train_sae(x, 512, 4, steps=3000, seed=1, lr=2e-3, batch=512)
    assert _recovered(params, atoms) >= 0.9


def test_loss_fn_is_shared_per_k_max():
    assert sae_loss_fn(4) is sae_loss_fn(4)
    assert sae_loss_fn(4).keywords == {"k_max": 4}


CFG = tokjax.ModelConfig(vocab_size=40, d_model=16, n_layers=3, n_heads=2, n_kv_heads=2, max_len=12)


@pytest.mark.parametrize("site", ["layer.1.resid_post", "layer.2.attn_heads"])
def test_collect_activations_equals_capture(site):
    m = tokjax.Model.init(CFG, jax.random.key(0))
    tokens = np.asarray(jax.random.randint(jax.random.key(1), (5, 9), 0, CFG.vocab_size))
    mask = np.ones((5, 9), bool)
    mask[3, 6:] = False  # padding
    x, ids = collect_activations(m, tokens, site, mask=mask, skip_first=1, batch_size=2)
    ref = np.asarray(jax.jit(lambda p, t: capture((p, CFG), t, site)[site])(m.params, tokens))
    ref = ref.reshape(ref.shape[:2] + (-1,))
    keep = mask.copy()
    keep[:, 0] = False
    np.testing.assert_allclose(x, ref[keep], atol=1e-5)
    np.testing.assert_array_equal(ids, tokens[keep])
    assert x.shape[0] == keep.sum() == 5 * 8 - 3


def test_bad_inputs_raise():
    p = sae_init(jax.random.key(0), 4, 8)
    x = np.zeros((3, 4), np.float32)
    with pytest.raises(ValueError, match="d_sae"):
        sae_init(jax.random.key(0), 4, 0)
    with pytest.raises(ValueError, match="k must"):
        sae_init(jax.random.key(0), 4, 8, k=9)
    with pytest.raises(ValueError, match=r"k must lie in \[1, d_sae=8\]"):
        sae_encode(p, x, 9)
    with pytest.raises(ValueError, match="k must lie"):
        sae_encode(p, x, 0)
    with pytest.raises(ValueError, match="k_max"):
        sae_encode(p, x, jnp.int32(5), k_max=4)
    with pytest.raises(ValueError, match="k=5 exceeds k_max=4"):
        sae_encode(p, x, 5, k_max=4)
    with pytest.raises(ValueError, match=r"\[\.\.\., d_in=4\]"):
        sae_encode(p, np.zeros((3, 5), np.float32), 2)
    with pytest.raises(ValueError, match="d_sae=8"):
        sae_decode(p, np.zeros((3, 7), np.float32))
    with pytest.raises(ValueError, match="W_enc"):
        sae_encode({"W_enc": p["W_enc"]}, x, 2)
    with pytest.raises(ValueError, match="batch"):
        sae_loss(p, None, {"x": x})
    with pytest.raises(ValueError, match="N >= 2"):
        sae_loss(p, None, {"x": x[:1], "k": 2})
    with pytest.raises(ValueError, match="non-finite"):
        train_sae(np.full((8, 4), np.nan, np.float32), 8, 2, steps=1, batch=4)
    with pytest.raises(ValueError, match="batch must lie"):
        train_sae(np.zeros((8, 4), np.float32), 8, 2, steps=1, batch=9)
    with pytest.raises(ValueError, match="k must be"):
        train_sae(np.zeros((8, 4), np.float32), 8, 0, steps=1, batch=4)
    m = tokjax.Model.init(CFG, jax.random.key(0))
    toks = np.zeros((2, 4), np.int32)
    with pytest.raises(ValueError, match="unknown site"):
        collect_activations(m, toks, "layer.0.nope")
    with pytest.raises(ValueError, match="one vector per token"):
        collect_activations(m, toks, "layer.0.attn_probs")
    with pytest.raises(ValueError, match="one layer"):
        collect_activations(m, toks, "layer.*.resid_post")
    with pytest.raises(ValueError, match="out of range"):
        collect_activations(m, toks, "layer.3.resid_post")
    with pytest.raises(ValueError, match="vocab_size=40"):
        collect_activations(m, toks + 40, "layer.0.resid_post")
    with pytest.raises(ValueError, match="max_len=12"):
        collect_activations(m, np.zeros((1, 13), np.int32), "layer.0.resid_post")
    with pytest.raises(ValueError, match="mask"):
        collect_activations(m, toks, "layer.0.resid_post", mask=np.ones((2, 3), bool))
