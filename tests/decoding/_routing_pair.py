"""The small/large model pair and router shared by the R2R (P46) and routing tests."""

import jax

import tokjax
from tokjax.decoding.r2r import init_router

V, K = 32, 8
PROMPTS = [[1, 2, 3], [4, 5], [6, 7, 8, 9, 10], [11]]
NEW = 12


def make_pair():
    """Returns (small, large): 1x32 and 2x48 models with weights x3 (peaked, different argmaxes, so routing changes
    the output)."""
    cs = tokjax.ModelConfig(vocab_size=V, d_model=32, n_layers=1, n_heads=2, max_len=48)
    cl = tokjax.ModelConfig(vocab_size=V, d_model=48, n_layers=2, n_heads=4, max_len=48)

    def init(cfg, seed):
        params = jax.jit(lambda k: jax.tree.map(lambda x: x * 3.0, tokjax.Model.init(cfg, k).params))(jax.random.PRNGKey(seed))
        return tokjax.Model(params=params, cfg=cfg)

    return init(cs, 0), init(cl, 1)


def make_router():
    return init_router(jax.random.key(5), 32, top_k=K, dims=(16, 24))
