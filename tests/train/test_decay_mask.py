"""Weight decay reaches matrices only, also for stacked layer weights (a leading layer axis does not count)."""

import jax
import jax.numpy as jnp
import optax

from tokjax.model import Model, ModelConfig
from tokjax.train import TrainConfig
from tokjax.train._step import _decay_mask, make_optimizer


def test_stacked_norm_scales_and_ssm_parameters_are_not_decayed():
    attn = Model.init(ModelConfig(vocab_size=40, d_model=16, n_layers=2, n_heads=2), jax.random.PRNGKey(0))
    m = _decay_mask(attn.params)
    assert m["embed"] and m["layers"]["wq"] and m["layers"]["w_down"]
    assert not m["layers"]["attn_norm"]["scale"] and not m["layers"]["mlp_norm"]["scale"]
    assert not m["final_norm"]["scale"]
    mamba = Model.init(ModelConfig(vocab_size=40, d_model=16, n_layers=2, n_heads=2, mixer="mamba"),
                       jax.random.PRNGKey(0))
    m = _decay_mask(mamba.params)
    assert m["layers"]["in_proj"] and m["layers"]["x_proj"]
    assert not any(m["layers"][k] for k in ("A_log", "D", "dt_bias"))


def test_zero_gradient_step_leaves_norm_scales_untouched():
    model = Model.init(ModelConfig(vocab_size=40, d_model=16, n_layers=2, n_heads=2), jax.random.PRNGKey(0))
    opt = make_optimizer(TrainConfig(lr=1e-2, weight_decay=0.5, total_steps=10, warmup_steps=1))
    state = opt.init(model.params)
    zeros = jax.tree.map(jnp.zeros_like, model.params)
    new = model.params
    for _ in range(2):  # the schedule's step 0 has lr 0 (linear warmup from 0)
        upd, state = opt.update(zeros, state, new)
        new = optax.apply_updates(new, upd)
    assert jnp.array_equal(new["layers"]["attn_norm"]["scale"], model.params["layers"]["attn_norm"]["scale"])
    assert not jnp.array_equal(new["layers"]["wq"], model.params["layers"]["wq"])
