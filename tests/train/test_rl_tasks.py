"""tokjax.train.rl_tasks: the arithmetic chain-of-thought RL task (format / exact-match reward, disjoint splits)
and the tiny-arithmetic-cot warm start's snapshot rule."""

from __future__ import annotations

import numpy as np
import pytest

from tokjax.data import arithmetic
from tokjax.pretrained import pretrained, pretrained_config, pretrained_metadata
from tokjax.tokenizers import BPETokenizer
from tokjax.train.rl_tasks import (
    DATA, ArithmeticCoTTask, arithmetic_cot_splits, check_arithmetic_cot, max_completion_tokens, select_snapshot,
)


@pytest.fixture(scope="module")
def tok():
    return BPETokenizer.train([e.text for e in arithmetic(400, (1, 4), chain_of_thought=True, seed=5)], 280,
                              digits="single")


def test_check_answer_format_and_exact_match():
    for e in arithmetic(50, (1, 4), chain_of_thought=True, seed=3):
        assert check_arithmetic_cot(e.completion, e.answer) == (True, True)
        assert check_arithmetic_cot(e.completion, int(e.answer) + 1) == (False, True)
    assert check_arithmetic_cot("7+5+0=2 c1 => 12", "12") == (True, True)  # grammar, not arithmetic, is checked
    for bad in ("7+5+0=2 c1 =>12", "=> 12", "7+5+0=2 c1, => 12", "7+5+0=2 c1 => 12 ", "", "12"):
        assert check_arithmetic_cot(bad, "12") == (False, False), bad
    with pytest.raises(ValueError, match="integer"):
        check_arithmetic_cot("7+5+0=2 c1 => 12", "twelve")
    with pytest.raises(ValueError, match="str"):
        check_arithmetic_cot([1, 2], "12")


def test_splits_are_disjoint_and_seeded():
    s = arithmetic_cot_splits({"train": 3000, "validation": 300, "test": 300}, digits=(1, 2))
    p = {k: {e.prompt for e in v} for k, v in s.items()}
    assert not (p["train"] & p["validation"]) and not (p["train"] & p["test"]) and not (p["validation"] & p["test"])
    assert [e.prompt for e in s["test"]] == [e.prompt for e in arithmetic_cot_splits({"test": 300}, digits=(1, 2))["test"]]
    with pytest.raises(ValueError, match="sizes"):
        arithmetic_cot_splits({"dev": 3})


def test_task_prompts_and_rewards(tok):
    task = ArithmeticCoTTask(tok, "validation")
    p1, a1 = task.prompts(3, 4)
    p2, a2 = task.prompts(3, 4)
    assert p1 == p2 and a1 == a2 and task.prompts(4, 4)[1] != a1
    assert all(p[0] == tok.bos_id for p in p1)
    ex = {e.answer: e for e in task.examples}
    gold = [tok.encode(ex[a].completion) + [tok.eos_id] for a in a1]
    r, f = task.reward(gold, a1)
    assert r.dtype == np.float32 and r.tolist() == [1.0] * 4 and f.all()
    wrong = [tok.encode(ex[a1[0]].completion.rsplit(" => ", 1)[0] + " => 0") + [tok.eos_id]]
    assert task.reward(wrong, a1[:1])[0].tolist() == [0.0] and task.reward(wrong, a1[:1])[1].all()
    truncated = [tok.encode(ex[a1[0]].completion)]  # no eos: malformed
    assert task.reward(truncated, a1[:1])[1].tolist() == [False]
    assert max(len(tok.encode(e.completion)) + 1 for e in task.examples) <= task.max_new_tokens
    with pytest.raises(ValueError, match="split"):
        ArithmeticCoTTask(tok, "dev")
    with pytest.raises(ValueError, match="completions"):
        task.reward(gold, a1[:2])
    with pytest.raises(ValueError, match="unknown"):
        ArithmeticCoTTask(tok, "test", data={"level": 3})


def test_task_data_is_the_warm_starts():
    cfg = pretrained_config("tiny-arithmetic-cot").to_dict()
    assert cfg["data"] == DATA
    assert max_completion_tokens(DATA["digits"]) < cfg["model"]["max_len"]


def test_snapshot_rule_picks_the_band_and_raises_outside_it():
    curve = [{"step": 100, "accuracy": 0.05, "format_ok": 1.0}, {"step": 200, "accuracy": 0.35, "format_ok": 0.9},
             {"step": 300, "accuracy": 0.5, "format_ok": 0.99}, {"step": 400, "accuracy": 0.8, "format_ok": 1.0}]
    kw = dict(acc_low=0.2, acc_high=0.7, target=0.4, min_format=0.95)
    assert select_snapshot(curve, **kw) == 2  # step 200 is closer to 0.4 but malformed too often
    with pytest.raises(ValueError, match="no SFT snapshot"):
        select_snapshot(curve[:2], **kw)


@pytest.mark.slow  # default-suite time; the file's other tests keep the method covered in the default suite
def test_builder_runs_and_refuses_an_undertrained_model(tmp_path):
    over = {"data": {"train": 300, "validation": 16, "test": 16}, "train": {"total_steps": 4, "warmup_steps": 1},
            "select": {"eval_every": 2}}
    with pytest.raises(ValueError, match="no SFT snapshot"):
        pretrained("tiny-arithmetic-cot", cache_dir=tmp_path, overrides=over, progress=False)


@pytest.mark.slow  # trains the warm start (about 4 CPU-minutes) unless it is cached
def test_warm_start_is_in_the_declared_band():
    pretrained("tiny-arithmetic-cot", progress=False)
    m = pretrained_metadata("tiny-arithmetic-cot")["metrics"]
    assert 0.2 <= m["val_accuracy"] <= 0.7 and m["val_format_ok"] >= 0.95
    assert 0.15 <= m["test_accuracy"] <= 0.75 and m["test_format_ok"] >= 0.9  # measured: 0.504, 0.998
