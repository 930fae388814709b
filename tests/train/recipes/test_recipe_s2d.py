"""tokjax.train.recipes.s2d: sorted fine-tuning (SoFT) of a P59 nested draft through tokjax.train."""

import jax
import numpy as np
import pytest

from tests.model._models import small_cfg
from tokjax.decoding import generate, verify
from tokjax.decoding.s2d import exit_metrics, nested, truncate
from tokjax.decoding.speculative import speculative
from tokjax.logits import greedy
from tokjax.model import Model
from tokjax.train.recipes.s2d import sorted_finetune

PROMPTS = [[3, 14, 15, 9, 2, 6], [5], [8, 9, 7, 9, 3, 2, 3, 8, 4]]


@pytest.fixture(scope="module")
def model():
    cfg = small_cfg(n_layers=4, init_scale=0.3)
    return jax.jit(lambda k: Model.init(cfg, k))(jax.random.key(1))


@pytest.mark.slow  # training plus a second draft model's decode loop
def test_sorted_finetuning_improves_every_exit_and_decoding_stays_lossless(model):
    windows = np.asarray(jax.random.randint(jax.random.key(6), (64, 13), 0, 12))  # a tiny 12-token language
    draft = truncate(model, 3)
    assert draft.cfg.n_layers == 3
    before = exit_metrics(draft, (1, 2, 3), model, windows[:16])
    tuned, hist = sorted_finetune(draft, (1, 2, 3), windows, steps=20, batch_size=16, lr=5e-3)
    after = exit_metrics(tuned, (1, 2, 3), model, windows[:16])
    for k in (1, 2, 3):
        assert after[k]["ce"] < before[k]["ce"] - 0.5
    assert hist["train"][-1]["step"] == 20 and {"ce_k1", "acc_k3"} <= set(hist["train"][-1])
    plain = generate(model, PROMPTS, max_new_tokens=12, logits=greedy())
    out = generate(model, PROMPTS, max_new_tokens=12, logits=greedy(),
                   strategy=speculative(nested(tuned, (1, 2, 3), (0.3, 0.3, 0.0), num_draft=4), verify.greedy()))
    assert [c.tolist() for c in out.completions()] == [c.tolist() for c in plain.completions()]


def test_bad_inputs_raise(model):
    draft = truncate(model, 2)
    with pytest.raises(ValueError, match="strictly increasing"):
        sorted_finetune(draft, (2, 1), np.zeros((4, 8), np.int32))
    with pytest.raises(ValueError, match="windows"):
        sorted_finetune(draft, (1, 2), np.zeros((8,), np.int32))
