"""tokjax.vision.x_omni (P28): the classifier-reward image RLTask, min-p rollouts through rl_train, bad input."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tokjax
from tokjax.logits import greedy, min_p
from tokjax.model import Model
from tokjax.train.rl import RLConfig, rl_train, rollout
from tokjax.vision.image_lm import ImageVocab
from tokjax.vision.orders import raster, to_sequence
from tokjax.vision.quality import class_logprob, classifier_init
from tokjax.vision.tokenizers import PixelQuantizer
from tokjax.vision.x_omni import XOmniTask, class_reward, x_omni

VOCAB = ImageVocab(num_codes=4, num_classes=3)
ORDER = raster(2, 3)
DECODE = PixelQuantizer(4).decode
CLF = classifier_init(jax.random.key(0), (2, 3), 3, hidden=16)
CFG = tokjax.ModelConfig(vocab_size=VOCAB.size, d_model=32, n_layers=1, n_heads=2, max_len=16)


def model(seed=0):
    return Model(params=tokjax.model.init_params(CFG, jax.random.key(seed)), cfg=CFG)


def test_reward_is_the_classifier_logprob_of_the_decoded_image_and_invalid_rows_get_the_floor():
    codes = np.asarray(jax.random.randint(jax.random.key(1), (5, 2, 3), 0, 4), np.int32)
    labels = np.array([0, 1, 2, 0, 1], np.int32)
    want = np.asarray(class_logprob(CLF, DECODE(codes), labels))
    np.testing.assert_allclose(np.asarray(class_reward(CLF, codes, labels, DECODE)), want, rtol=1e-6)
    task = XOmniTask(VOCAB, ORDER, CLF, DECODE)
    seq = list(np.asarray(to_sequence(codes, ORDER)))
    seq[3] = seq[3][:-1]  # too short
    seq[4] = np.array([0, 1, 2, 3, 4, 0])  # a class id among the codes
    r, ok = task.reward(seq, labels.tolist())
    np.testing.assert_array_equal(ok, [True, True, True, False, False])
    np.testing.assert_allclose(r[:3], want[:3], rtol=1e-6)
    np.testing.assert_array_equal(r[3:], [task.invalid_reward] * 2)


def test_prompts_are_class_tokens_and_a_pure_function_of_the_step():
    task = XOmniTask(VOCAB, ORDER, CLF, DECODE, seed=3)
    p, a = task.prompts(5, 4)
    assert p == task.prompts(5, 4)[0] and p == [[VOCAB.num_codes + c] for c in a]
    assert XOmniTask(VOCAB, ORDER, CLF, DECODE, classes=(2,)).prompts(0, 3)[1] == [2, 2, 2]


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 7), seed=st.integers(0, 50))
def test_every_class_is_prompted_equally_often(n, seed):
    task = XOmniTask(VOCAB, ORDER, CLF, DECODE, seed=seed)
    labels = np.concatenate([task.labels(s, n) for s in range(3)])  # 3 * n prompts: a multiple of 3 classes
    np.testing.assert_array_equal(np.bincount(labels, minlength=3), [n, n, n])


@pytest.mark.slow
def test_min_p_one_rollouts_are_greedy_and_min_p_zero_is_plain_sampling():
    m, xo = model(), x_omni(VOCAB, ORDER, CLF, DECODE, group_size=2)
    prompts, answers = xo.task.prompts(0, 3)
    kw = dict(key=jax.random.key(2), group_size=2, max_new_tokens=ORDER.size, width=1 + ORDER.size,
              strategy=xo.strategy)
    r = rollout(m, prompts, answers, logits=min_p(1.0), **kw)
    out = tokjax.generate(m, prompts, max_new_tokens=ORDER.size, logits=greedy(), strategy=xo.strategy)
    np.testing.assert_array_equal(r.tokens[::2], out.tokens)
    np.testing.assert_array_equal(r.tokens[1::2], out.tokens)  # both rollouts of a class are the argmax image
    np.testing.assert_array_equal(rollout(m, prompts, answers, logits=min_p(0.0), **kw).tokens,
                                  rollout(m, prompts, answers, **kw).tokens)
    sampled = rollout(m, prompts, answers, logits=xo.logits, **kw)
    assert all(len(c) == ORDER.size and c.max() < VOCAB.num_codes for c in sampled.completions)


@pytest.mark.slow
def test_rl_train_with_the_x_omni_plug_ins_updates_the_policy_with_a_kl_to_sft():
    sft, xo = model(), x_omni(VOCAB, ORDER, CLF, DECODE, group_size=4, beta=0.04)
    assert xo.options["eps_low"] == xo.options["eps_high"] == 0.2 and xo.options["max_new_tokens"] == 6
    cfg = RLConfig(steps=2, prompts_per_step=3, lr=1e-2, **xo.options)
    policy, hist = rl_train(sft, xo.task, cfg, strategy=xo.strategy, logits=xo.logits, reference=sft)
    assert len(hist) == 2 and all(np.isfinite(h["loss"]) and h["format_ok"] == 1.0 for h in hist)
    assert hist[0]["kl"] == 0.0 < hist[1]["kl"]  # the first batch is drawn from the SFT model itself
    assert not np.array_equal(policy.params["embed"], sft.params["embed"])


def test_bad_input_raises():
    for kw, match in (({"group_size": 1}, "group_size"), ({"min_p": 1.5}, "min_p"), ({"eps": 1.0}, "eps"),
                      ({"beta": -0.1}, "beta"), ({"temperature": 0.0}, "temperature")):
        with pytest.raises(ValueError, match=match):
            x_omni(VOCAB, ORDER, CLF, DECODE, **kw)
    with pytest.raises(ValueError, match="classes"):
        XOmniTask(VOCAB, ORDER, CLF, DECODE, classes=(3,))
    with pytest.raises(ValueError, match="decode"):
        XOmniTask(VOCAB, ORDER, CLF, None)
    task = XOmniTask(VOCAB, ORDER, CLF, DECODE)
    with pytest.raises(ValueError, match="step"):
        task.labels(-1, 2)
    with pytest.raises(ValueError, match="answers"):
        task.reward([np.zeros(6, np.int32)], [0, 1])
    with pytest.raises(ValueError, match="labels"):
        class_reward(CLF, np.zeros((1, 2, 3), np.int32), np.array([3]), DECODE)
