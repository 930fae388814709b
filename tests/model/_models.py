"""Small model configs shared by the model, logits and decoding tests."""

import jax

import tokjax


def small_cfg(**kw) -> tokjax.ModelConfig:
    base = dict(vocab_size=61, d_model=32, n_layers=3, n_heads=4, n_kv_heads=2, max_len=48)
    return tokjax.ModelConfig(**{**base, **kw})


def small_model(seed=0, **kw) -> tokjax.Model:
    cfg = small_cfg(**kw)
    # A larger init scale makes logits far from uniform so argmax ties are improbable.
    cfg = cfg.replace(init_scale=kw.get("init_scale", 0.3))
    return tokjax.Model.init(cfg, jax.random.key(seed))
