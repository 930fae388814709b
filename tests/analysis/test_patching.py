"""Activation capture and patching (tokjax.analysis.patching) over the forward's taps and hooks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import tokjax
from tokjax.analysis.patching import capture, head_ablation_hooks, patch
from tokjax.model.forward import forward


def _model():
    cfg = tokjax.ModelConfig(vocab_size=37, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, max_len=32,
                             init_scale=0.3)
    return tokjax.Model.init(cfg, jax.random.key(0))


TOKS = jnp.array([[3, 5, 7, 11, 2, 9], [1, 4, 4, 8, 30, 6]])


@pytest.mark.parametrize("site", ["layer.1.attn_heads", "layer.0.resid_post",
                                  *[pytest.param(s, marks=pytest.mark.slow)
                                    for s in ("layer.0.resid_pre", "layer.0.attn_out", "layer.1.mlp_out")]])
def test_patching_clean_activations_back_is_the_identity(site):
    m = _model()
    base = forward(m.params, m.cfg, TOKS).logits
    acts = capture(m, TOKS, [site])
    out = patch(m, TOKS, {site: (None, acts[site])})
    np.testing.assert_array_equal(out.logits, base)
    some = patch((m.params, m.cfg), TOKS, {site: (jnp.array([1, 4]), acts[site][:, jnp.array([1, 4])])})
    np.testing.assert_array_equal(some.logits, base)


def test_patch_changes_output_and_only_from_the_patched_position_on():
    m = _model()
    other = jnp.array([[9, 9, 9, 9, 9, 9], [0, 0, 0, 0, 0, 0]])
    src = capture(m, other, "layer.0.resid_post")["layer.0.resid_post"]
    base = forward(m.params, m.cfg, TOKS).logits
    out = patch(m, TOKS, {"layer.0.resid_post": (jnp.array([3]), src[:, 3:4])}).logits
    np.testing.assert_array_equal(out[:, :3], base[:, :3])  # causal: earlier positions unchanged
    assert float(jnp.abs(out[:, 3:] - base[:, 3:]).max()) > 1e-3


def test_capture_shapes_star_layers_and_return_output():
    m = _model()
    acts, out = capture(m, TOKS, ["layer.*.resid_post", "layer.1.attn_probs", "layer.0.attn_heads"],
                        return_output=True)
    assert acts["layer.*.resid_post"].shape == (2, 2, 6, 32)
    assert acts["layer.1.attn_probs"].shape == (2, 4, 6, 6)
    assert acts["layer.0.attn_heads"].shape == (2, 6, 4, 8)
    np.testing.assert_allclose(out.logits, forward(m.params, m.cfg, TOKS).logits, atol=1e-5)


def test_head_ablation_zeroes_the_head_and_mean_ablation_with_own_value_is_identity():
    m = _model()
    hooks = head_ablation_hooks(m.cfg, [(1, 2), (1, 0)])
    acts = capture(m, TOKS, "layer.1.attn_heads", hooks=hooks)["layer.1.attn_heads"]
    assert float(jnp.abs(acts[:, :, [0, 2]]).max()) == 0.0 and float(jnp.abs(acts[:, :, 1]).max()) > 0
    # mean ablation with a constant equal to the head's own (constant) output would be identity; check the fill
    means = jnp.ones((2, 4, 8))
    acts = capture(m, TOKS, "layer.1.attn_heads", hooks=head_ablation_hooks(m.cfg, [(1, 3)], means=means))
    np.testing.assert_array_equal(acts["layer.1.attn_heads"][:, :, 3], 1.0)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda m: patch(m, TOKS, {"layer.0.attn_probs": (None, jnp.zeros((2, 6, 32)))}), "tap-only"),
        (lambda m: patch(m, TOKS, {"layer.5.resid_post": (None, jnp.zeros((2, 6, 32)))}), "out of range"),
        (lambda m: patch(m, TOKS, {"layer.*.resid_post": (None, jnp.zeros((2, 6, 32)))}), "one layer"),
        (lambda m: patch(m, TOKS, {"layer.0.resid_post": (jnp.array([6]), jnp.zeros((2, 1, 32)))}), r"positions \(T=6\) must lie in \[0, 6\)"),
        (lambda m: patch(m, TOKS, {"layer.0.resid_post": (jnp.array([1]), jnp.zeros((2, 2, 32)))}), "values must be"),
        (lambda m: patch(m, TOKS, {}), "non-empty"),
        (lambda m: capture(m, TOKS, []), "at least one site"),
        (lambda m: capture(m, TOKS, ["layer.0.foo"]), "unknown site"),
        (lambda m: head_ablation_hooks(m.cfg, [(0, 4)]), "out of range"),
    ],
)
def test_bad_input_raises(call, match):
    with pytest.raises(ValueError, match=match):
        call(_model())
