"""experiments/_preference_real.sample_pool: bad input is refused before any model call."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from experiments._preference_real import SETTING, sample_pool

MODEL = SimpleNamespace(cfg=SimpleNamespace(vocab_size=100))
TOK = SimpleNamespace(eos_id=1, vocab_size=100, apply_chat_template=lambda *a, **k: [])


@pytest.mark.parametrize("kwargs, match", [
    (dict(n_prompts=0, seed=0), "n_prompts"),
    (dict(n_prompts=2, seed=-1), "seed"),
    (dict(n_prompts=2, seed=0, samples=0), "samples"),
    (dict(n_prompts=2, seed=0, temperature=0.0), "temperature"),
    (dict(n_prompts=2, seed=0, setting={"level": 0}), "exactly the keys"),
    (dict(n_prompts=2, seed=0, setting={**SETTING, "style": "poem"}), "level/style"),
    (dict(n_prompts=2, seed=0, setting={**SETTING, "new_tokens": 0}), "new_tokens"),
])
def test_bad_arguments_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        sample_pool(MODEL, TOK, **kwargs)


def test_tokenizer_and_vocabulary_mismatch_are_refused():
    with pytest.raises(ValueError, match="chat tokenizer"):
        sample_pool(MODEL, SimpleNamespace(eos_id=None, vocab_size=100), 2, 0)
    with pytest.raises(ValueError, match="vocabulary"):
        sample_pool(SimpleNamespace(cfg=SimpleNamespace(vocab_size=50)), TOK, 2, 0)


# ---------------------------------------------------------------------------- SmolLM-row helpers (tiny inputs)
def _pool(correct, lengths=(2, 3, 4, 5), answer=7):
    import numpy as np

    from experiments._preference_real import PromptPool

    comps = tuple(np.arange(10 * i, 10 * i + n, dtype=np.int32) for i, n in enumerate(lengths))
    return PromptPool(np.array([1, 2, 3], np.int32), comps, np.array(correct), np.ones(len(correct), bool), answer)


def test_pairs_one_correct_one_incorrect_per_prompt_deterministic_and_dropped_counted():
    from experiments._preference_smollm import make_pairs

    pools = [_pool([True, False, True, False]), _pool([True] * 4), _pool([False] * 4), _pool([False, True, False, False])]
    pairs, dropped = make_pairs(pools, seed=3)
    assert dropped == 2 and [p.index for p in pairs] == [0, 3]
    for p in pairs:
        pool = pools[p.index]
        grade = {tuple(c): bool(g) for c, g in zip(pool.completions, pool.correct)}
        assert grade[tuple(p.chosen)] and not grade[tuple(p.rejected)]
    again, _ = make_pairs(pools, seed=3)
    assert all((a.chosen == b.chosen).all() and (a.rejected == b.rejected).all() for a, b in zip(pairs, again))
    # a prompt's pair does not depend on the other prompts
    alone, _ = make_pairs(pools[:1], seed=3)
    assert (alone[0].chosen == pairs[0].chosen).all() and (alone[0].rejected == pairs[0].rejected).all()
    picks = {tuple(make_pairs(pools[:1], seed=s)[0][0].chosen) for s in range(20)}
    assert len(picks) == 2  # both correct samples get chosen under some seed
    with pytest.raises(ValueError, match="seed"):
        make_pairs(pools, seed=-1)


def test_pair_layout_masks_exactly_the_completion_and_orders_chosen_then_rejected():
    import numpy as np

    from experiments._preference_smollm import Pair, pair_layout
    from tokjax.losses._stats import shifted_completion_mask

    pairs = [Pair(np.array([5, 6, 7]), np.array([8, 9]), np.array([10]), 0),
             Pair(np.array([5, 6]), np.array([11, 12, 13]), np.array([14, 15, 16, 17]), 1)]
    lay = pair_layout(pairs, pad_id=0)
    assert lay["tokens"].shape == (4, 8) and lay["tokens"].dtype == np.int32
    np.testing.assert_array_equal(lay["tokens"][0], [5, 6, 7, 8, 9, 0, 0, 0])
    np.testing.assert_array_equal(lay["tokens"][3], [5, 6, 14, 15, 16, 17, 0, 0])
    mask = np.asarray(shifted_completion_mask(lay["tokens"], lay["prompt_lengths"], lay["lengths"]))
    targets = [list(lay["tokens"][r, 1:][mask[r]]) for r in range(4)]
    assert targets == [[8, 9], [11, 12, 13], [10], [14, 15, 16, 17]]
    with pytest.raises(ValueError, match="shorter"):
        pair_layout(pairs, pad_id=0, length=5)
    with pytest.raises(ValueError, match="no pairs"):
        pair_layout([], pad_id=0)


def test_pair_batch_rows_pairs_rows_and_covers_each_epoch():
    import numpy as np

    from experiments._preference_smollm import pair_batch_rows

    n, b = 10, 3
    epoch = np.concatenate([pair_batch_rows(s, n, b, seed=1)[:b] for s in range(3)])
    assert len(set(epoch.tolist())) == 9  # no pair twice within an epoch
    rows = pair_batch_rows(4, n, b, seed=1)
    np.testing.assert_array_equal(rows[b:], rows[:b] + n)
    np.testing.assert_array_equal(rows, pair_batch_rows(4, n, b, seed=1))
    with pytest.raises(ValueError, match="at least batch"):
        pair_batch_rows(0, 2, 3, seed=0)


def test_real_verdict_rules():
    import numpy as np

    from experiments._preference_smollm import beats, bootstrap_halfwidth, real_verdict

    r = np.random.default_rng(0)
    ref = (r.uniform(size=200) < 0.3).astype(float)
    dpo = np.where(r.uniform(size=200) < 0.3, 1.0, ref)       # clearly better than the reference
    better = np.where(r.uniform(size=200) < 0.4, 1.0, dpo)    # clearly better than DPO
    worse = np.where(r.uniform(size=200) < 0.3, 0.0, dpo)
    assert beats(dpo, ref)[0] and not beats(ref, dpo)[0]
    assert bootstrap_halfwidth(np.zeros(50)) == 0.0 and beats(dpo + 0.0, dpo)[2] == 2.0  # the 2-point floor
    assert real_verdict([better, better], [dpo, dpo], ref, (0, 1))[0].status == "reproduced"
    assert real_verdict([worse, worse], [dpo, dpo], ref, (0, 1))[0].status == "not-reproduced"
    assert real_verdict([better, worse], [dpo, dpo], ref, (0, 1))[0].status in ("inconclusive", "not-reproduced")
    assert real_verdict([better, dpo], [dpo, dpo], ref, (0, 1))[0].status == "inconclusive"
    v, note = real_verdict([better, better], [ref, ref], ref, (0, 1))  # DPO did not beat the reference
    assert v.status == "inconclusive" and "did not beat" in note
    with pytest.raises(ValueError, match="paired"):
        beats(dpo[:10], ref)


def test_sizes_env(monkeypatch):
    from experiments._preference_smollm import FULL_SIZE, sizes

    monkeypatch.delenv("TOKJAX_PREF_REAL", raising=False)
    assert sizes()["n_train"] == FULL_SIZE["n_train"] and sizes()["steps"] == 150 and sizes()["aux_steps"] == 100
    monkeypatch.setenv("TOKJAX_PREF_REAL", "48,64,20,1")
    s = sizes()
    assert (s["n_train"], s["n_heldout"], s["steps"], s["seeds"], s["n_val"], s["aux_steps"]) == (48, 64, 20, (0,), 8, 20)
    monkeypatch.setenv("TOKJAX_PREF_REAL", "48,64")
    with pytest.raises(ValueError, match="TOKJAX_PREF_REAL"):
        sizes()


def test_self_bleu_identical_samples_score_one_and_distinct_lower():
    import numpy as np

    from experiments._preference_smollm import self_bleu

    same = [[np.array([5, 6, 7, 8, 9])] * 4]
    mixed = [[np.array([5, 6, 7, 8, 9]), np.array([9, 8, 7, 6, 5]), np.array([1, 2, 3, 4, 5]), np.array([5, 6, 1, 2, 3])]]
    disjoint = [[np.arange(4 * i, 4 * i + 4) for i in range(4)]]
    s = self_bleu(same + mixed + disjoint)
    assert s.shape == (3,) and abs(s[0] - 1.0) < 1e-6 and s[0] > s[1] > s[2] and s[2] < 0.1
    with pytest.raises(ValueError, match="same number"):
        self_bleu([[np.array([1, 2])], [np.array([1]), np.array([2])]])


def test_p51_auroc_and_answer_token_mask():
    from types import SimpleNamespace

    from experiments.p51_t_reg import answer_token_mask, auroc

    assert auroc([3, 4], [1, 2]) == 1.0 and auroc([1], [2]) == 0.0 and auroc([1, 1], [1, 1]) == 0.5
    vocab = {0: "4", 1: " +", 2: " 3", 3: " =", 4: " 8", 5: ".", 6: " Answer", 7: ":", 8: " 1", 9: "2", 10: "<|im_end|>"}
    tok = SimpleNamespace(decode=lambda ids: "".join(vocab[i] for i in ids))
    mask = answer_token_mask(tok, [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 5, 10])
    assert mask.tolist() == [False] * 8 + [True, True] + [False, False]
    assert not answer_token_mask(tok, [0, 1, 2]).any()


def test_run_rows_selects_toy_and_smollm_rows():
    from experiments._preference_smollm import run_rows

    toy = lambda quick: [SimpleNamespace(claim_id="toy")]  # noqa: E731
    calls = []

    def real():
        calls.append(1)
        return [SimpleNamespace(claim_id="smollm-a"), SimpleNamespace(claim_id="smollm-b")]

    ids = lambda rows: [r.claim_id for r in rows]  # noqa: E731
    assert ids(run_rows(True, None, toy, real, ("smollm-a", "smollm-b"))) == ["toy"] and not calls
    assert ids(run_rows(False, None, toy, real, ("smollm-a", "smollm-b"))) == ["toy", "smollm-a", "smollm-b"]
    assert ids(run_rows(False, frozenset({"smollm-b"}), toy, real, ("smollm-a", "smollm-b"))) == ["smollm-b"]
    assert ids(run_rows(False, frozenset({"toy"}), toy, real, ("smollm-a", "smollm-b"))) == ["toy"]
    with pytest.raises(ValueError, match="full mode only"):
        run_rows(True, frozenset({"smollm-a"}), toy, real, ("smollm-a", "smollm-b"))


@pytest.mark.slow  # the library's own tail-training test (tests/model/test_trunk.py) stays in the default suite
def test_train_rows_on_the_cached_trunk_follows_whole_model_training():
    """The SmolLM arms train the 4-layer tail on cached trunk states with each step cut to its longest row
    (issue 22): same losses and trained layers as tokjax.train of the whole model with trainable last:4."""
    import jax
    import numpy as np

    import tokjax
    from experiments._preference_smollm import TAIL, TRAINABLE, layout_trunk, row_layout, row_logp, train_rows
    from tokjax.train import TrainConfig, train

    cfg = tokjax.ModelConfig(vocab_size=40, d_model=16, n_layers=TAIL + 2, n_heads=2, n_kv_heads=1, max_len=96)
    model = tokjax.Model.init(cfg.replace(init_scale=0.3), jax.random.key(0))
    r = np.random.default_rng(0)
    prompts = [r.integers(1, 40, n) for n in (3, 5, 4, 6, 2, 7)]
    comps = [r.integers(1, 40, n) for n in (4, 2, 6, 3, 5, 1)]
    layout = row_layout(prompts, comps, 0, length=72)  # batches are cut to 32 positions
    rows = lambda s: np.array([[0, 1, 2], [3, 4, 5], [5, 0, 2]][s % 3])  # noqa: E731
    loss = {"name": "next_token"}
    got, h_got = train_rows(model, loss, layout, rows, steps=3, lr=1e-2, seed=0)
    tc = TrainConfig(lr=1e-2, total_steps=3, warmup_steps=1, weight_decay=0.0, grad_clip=1.0, seed=0, log_every=1,
                     eval_every=0, checkpoint_every=0, loss=loss, trainable=TRAINABLE)
    want, h_want = train(cfg, tc, lambda s: {k: v[rows(s)] for k, v in layout.items()}, params=model.params,
                         progress=False)
    np.testing.assert_allclose([x["loss"] for x in h_got["train"]], [x["loss"] for x in h_want["train"]], rtol=1e-5)
    for a, b in zip(jax.tree.leaves(got.params), jax.tree.leaves(want.params)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5)
    trunk = layout_trunk(model, layout)
    np.testing.assert_allclose(row_logp(got.params, cfg, layout, trunk=trunk), row_logp(got.params, cfg, layout),
                               atol=1e-5)


def test_an_interrupted_pool_resumes_to_the_uninterrupted_pool(tmp_path, monkeypatch):
    """sample_pool saves each finished generate call; a run killed after the first call resumes at the second
    and returns exactly the pool an uninterrupted run returns."""
    import jax
    import numpy as np

    import tokjax
    from experiments import _preference_real as R

    cfg = tokjax.ModelConfig(vocab_size=40, d_model=16, n_layers=1, n_heads=2, max_len=32)
    model = tokjax.Model.init(cfg, jax.random.key(0))
    tok = SimpleNamespace(eos_id=1, pad_id=0, vocab_size=40, decode=lambda ids, **k: " ".join(map(str, ids)),
                          apply_chat_template=lambda msgs, **k: [2 + len(msgs[-1]["content"]) % 30, 3, 4])
    setting = {**SETTING, "new_tokens": 3}
    n = R.PROMPTS_PER_CALL + 2  # two calls

    def pools(cache):
        monkeypatch.setenv("TOKJAX_CACHE", str(tmp_path / cache))
        return R.sample_pool(model, tok, n, 0, samples=2, setting=setting)

    want = pools("whole")
    real_generate, calls = tokjax.generate, []

    def dies_on_second_call(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_generate(*a, **k)

    monkeypatch.setattr(tokjax, "generate", dies_on_second_call)
    with pytest.raises(KeyboardInterrupt):
        pools("resumed")
    assert len(list((tmp_path / "resumed").rglob("*.partial.npz"))) == 1
    monkeypatch.setattr(tokjax, "generate", real_generate)
    got = pools("resumed")
    assert len(got) == n == len(want) and not list((tmp_path / "resumed").rglob("*.partial.npz"))
    for a, b in zip(got, want):
        np.testing.assert_array_equal(a.prompt, b.prompt)
        assert [c.tolist() for c in a.completions] == [c.tolist() for c in b.completions]
        np.testing.assert_array_equal(a.correct, b.correct)
