"""tokjax.train.recipes.kangaroo: fitting the P44 early-exit adapter through tokjax.train."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.model._models import small_cfg
from tokjax.decoding import generate, verify
from tokjax.decoding.kangaroo import distill_metrics, early_exit, init_adapter
from tokjax.decoding.speculative import speculative
from tokjax.logits import greedy
from tokjax.model import Model
from tokjax.train.recipes.kangaroo import fit_adapter

PROMPTS = [[3, 14, 15, 9, 2, 6], [5], [8, 9, 7, 9, 3, 2, 3, 8, 4]]


@pytest.fixture(scope="module")
def model():
    cfg = small_cfg(n_layers=4, init_scale=0.3)
    return jax.jit(lambda k: Model.init(cfg, k))(jax.random.key(1))


@pytest.mark.slow  # default-suite time; the file's other tests keep the method covered in the default suite
def test_adapter_training_reduces_distillation_loss_and_keeps_the_base_frozen(model):
    windows = np.asarray(jax.random.randint(jax.random.key(5), (64, 16), 0, model.cfg.vocab_size))
    ad0 = init_adapter(model, 1, jax.random.key(0), warm_start=False)
    before = distill_metrics(model, ad0, 1, windows[:16])
    base = jax.tree.map(np.array, model.params)
    ad, hist = fit_adapter(model, 1, windows, steps=40, batch_size=8, lr=3e-3, adapter=ad0)
    after = distill_metrics(model, ad, 1, windows[:16])
    assert after["loss"] < before["loss"] - 0.05
    assert after["prob_acc"] > before["prob_acc"]
    assert hist["train"][-1]["step"] == 40
    # the base stays frozen: only adapter params come back, with the adapter's shapes
    assert jax.tree.map(jnp.shape, ad) == jax.tree.map(jnp.shape, ad0)
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(base), jax.tree.leaves(model.params)))


@pytest.mark.slow
def test_a_trained_adapter_keeps_greedy_speculation_lossless(model):
    windows = np.asarray(jax.random.randint(jax.random.key(5), (64, 16), 0, model.cfg.vocab_size))
    ad, _ = fit_adapter(model, 1, windows, steps=40, batch_size=8, lr=3e-3,
                        adapter=init_adapter(model, 1, jax.random.key(0), warm_start=False))
    # the trained adapter only changes the drafts: greedy verification keeps plain greedy's tokens
    plain = generate(model, PROMPTS, max_new_tokens=12, logits=greedy())
    out = generate(model, PROMPTS, max_new_tokens=12, logits=greedy(),
                   strategy=speculative(early_exit(1, ad, 4, 0.3), verify.greedy()))
    assert [c.tolist() for c in out.completions()] == [c.tolist() for c in plain.completions()]


def test_bad_inputs_raise(model):
    with pytest.raises(ValueError, match="windows"):
        fit_adapter(model, 2, np.zeros((4,), np.int32))
    with pytest.raises(ValueError, match="windows must hold integer"):
        fit_adapter(model, 2, np.zeros((4, 8), np.float32))
    with pytest.raises(ValueError, match="steps"):
        fit_adapter(model, 2, np.zeros((4, 8), np.int32), steps=0)
    with pytest.raises(ValueError, match="batch_size"):
        fit_adapter(model, 2, np.zeros((4, 8), np.int32), batch_size=5)
    with pytest.raises(ValueError, match="early-exit layer"):
        fit_adapter(model, 4, np.zeros((4, 8), np.int32), batch_size=2)
