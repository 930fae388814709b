"""ModelConfig presets and validation."""

import pytest

import tokjax
from tokjax.model import check_params, param_axes, param_shapes


@pytest.mark.parametrize("preset", ["tiny", "small", "gpt2_small", "llama_like"])
def test_presets_are_valid_and_hashable(preset):
    cfg = getattr(tokjax.ModelConfig, preset)()
    assert hash(cfg) == hash(getattr(tokjax.ModelConfig, preset)())
    shapes = param_shapes(cfg)
    n = sum(int(__import__("numpy").prod(s.shape)) for s in __import__("jax").tree.leaves(shapes))
    assert n == cfg.num_params()


def test_gpt2_small_has_124m_params():
    assert abs(tokjax.ModelConfig.gpt2_small().num_params() - 124_439_808) < 1_000_000


@pytest.mark.parametrize(
    "kw, field",
    [
        (dict(d_model=30, n_heads=4), "n_heads"),
        (dict(n_kv_heads=3), "n_kv_heads"),
        (dict(vocab_size=0), "vocab_size"),
        (dict(n_layers=-1), "n_layers"),
        (dict(d_ff=0), "d_ff"),
        (dict(norm="batch"), "norm"),
        (dict(positions="alibi"), "positions"),
        (dict(activation="relu"), "activation"),
        (dict(compute_dtype="float8"), "compute_dtype"),
        (dict(init_scale=0.0), "init_scale"),
    ],
)
def test_invalid_config_names_the_field(kw, field):
    with pytest.raises(ValueError, match=field):
        tokjax.ModelConfig.tiny(**kw)


def test_every_param_has_logical_axes_of_matching_rank():
    import jax

    cfg = tokjax.ModelConfig.tiny(norm="layer", bias=True, qkv_bias=True, tied_embeddings=False, positions="learned")
    shapes = param_shapes(cfg)
    axes = param_axes(cfg)
    for s, a in zip(jax.tree.leaves(shapes), jax.tree.leaves(axes, is_leaf=lambda x: isinstance(x, tuple))):
        assert len(s.shape) == len(a)
    known = {"batch", "seq", "embed", "heads", "kv_heads", "head_dim", "mlp", "vocab", "layers"}
    for a in jax.tree.leaves(axes, is_leaf=lambda x: isinstance(x, tuple)):
        assert set(a) <= known


def test_check_params_reports_the_wrong_tensor():
    import jax

    cfg = tokjax.ModelConfig.tiny(vocab_size=50, d_model=32, n_heads=4, n_layers=2)
    m = tokjax.Model.init(cfg, jax.random.key(0))
    check_params(m.params, cfg)
    bad = dict(m.params, embed=m.params["embed"][:10])
    with pytest.raises(ValueError, match="embed"):
        check_params(bad, cfg)
