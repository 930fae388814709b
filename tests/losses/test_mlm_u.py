"""Tests for MLM-U (P8): leak-freeness, the absorbing mask rule, the loss, decoding, training and bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import tokjax.losses.mlm_u as M
from tokjax.model import ModelConfig, init_params

V, T, P = 24, 12, 5  # vocab, sequence length, prompt length
CFG = ModelConfig(vocab_size=V, d_model=32, n_layers=2, n_heads=4, max_len=64)


def _model(seed=0, dec_layers=2):
    p = init_params(CFG, jax.random.PRNGKey(seed))
    return M.init_mlm_u(p, CFG, jax.random.PRNGKey(100 + seed), n_layers=dec_layers)


def _batch(B=4, seed=0):
    toks = jax.random.randint(jax.random.PRNGKey(seed), (B, T), 1, V)
    path = jnp.broadcast_to(jnp.arange(T)[None] >= P, (B, T))
    return toks, path


_logits = jax.jit(lambda p, t, v: M.mlm_u_logits(p, CFG, t, v))


def test_hidden_tokens_leak_nothing():
    p = _model()
    toks, path = _batch()
    vis = M.mlm_u_visibility(jax.random.PRNGKey(3), path)
    hidden = path & ~vis
    assert bool(hidden.any()) and bool((path & vis).any())
    base = _logits(p, toks, vis)
    for s in range(3):  # any change of the hidden tokens: every logit (hidden and visible positions) unchanged
        other = jax.random.randint(jax.random.PRNGKey(50 + s), toks.shape, 0, V)
        changed = jnp.where(hidden, other, toks)
        assert bool((changed != toks).any())
        np.testing.assert_array_equal(np.asarray(_logits(p, changed, vis)), np.asarray(base))
    # the test can fail: changing one visible path token does change the logits
    b, t = map(int, np.argwhere(np.asarray(path & vis))[0])
    moved = toks.at[b, t].set((toks[b, t] + 1) % V)
    assert float(jnp.abs(_logits(p, moved, vis)[b] - base[b]).max()) > 1e-6
    # and the decoder's queries are position-only: the logits at a position do not depend on its own token
    # unless that token is visible (checked above); rows are independent
    np.testing.assert_array_equal(np.asarray(_logits(p, moved, vis)[b + 1:]), np.asarray(base[b + 1:]))


def test_masks_follow_the_absorbing_rule_with_uniform_rate():
    B, L = 4000, 64
    path = jnp.broadcast_to(jnp.arange(L)[None] >= 8, (B, L))
    pad = jnp.broadcast_to(jnp.arange(L)[None] < L - 4, (B, L))
    vis = np.asarray(M.mlm_u_visibility(jax.random.PRNGKey(0), path, pad))
    assert vis[:, :8].all()  # the prompt is always visible
    assert not vis[:, L - 4:].any()  # padding never
    frac = vis[:, 8:L - 4].mean(1)  # per-row visible share of path tokens ~ r ~ U(0, 1)
    qs = np.quantile(frac, [0.1, 0.25, 0.5, 0.75, 0.9])
    np.testing.assert_allclose(qs, [0.1, 0.25, 0.5, 0.75, 0.9], atol=0.035)
    assert abs(vis[:, 8:L - 4].mean() - 0.5) < 0.02  # marginal rate 1/2
    # a fixed rate (PAST's float train_mode): visible with that probability, independently per token
    fixed = np.asarray(M.mlm_u_visibility(jax.random.PRNGKey(1), path, rate=0.2))[:, 8:]
    assert abs(fixed.mean() - 0.2) < 0.01 and fixed.mean(1).std() < 0.1
    # the rule is r > u with r per row: the same key gives nested masks as the rate grows
    lo = np.asarray(M.mlm_u_visibility(jax.random.PRNGKey(2), path, rate=0.3))
    hi = np.asarray(M.mlm_u_visibility(jax.random.PRNGKey(2), path, rate=0.7))
    assert (lo <= hi).all() and hi.sum() > lo.sum()


def test_loss_is_global_mean_ce_over_hidden_tokens():
    p = _model(seed=1)
    toks, path = _batch(seed=1)
    valid = jnp.ones_like(path).at[0, -2:].set(False)
    key = jax.random.PRNGKey(7)
    loss, met = jax.jit(lambda q: M.mlm_u_loss(q, CFG, toks, path, key, valid))(p)
    vis = M.mlm_u_visibility(key, path & valid, valid)
    hidden = np.asarray(path & valid & ~vis)
    lp = np.asarray(jax.nn.log_softmax(_logits(p, toks, vis), -1))
    ce = -np.take_along_axis(lp, np.asarray(toks)[..., None], -1)[..., 0]
    want = ce[hidden].sum() / hidden.sum()
    np.testing.assert_allclose(float(loss), want, rtol=1e-5)
    assert float(met["hidden_count"]) == hidden.sum() and not hidden[0, -2:].any()


def test_strategy_greedy_matches_recomputed_official_eval():
    import tokjax

    p = _model(seed=2)
    prompts = [[1, 2, 3, 4, 5], [6, 7, 8]]
    out = tokjax.generate(tokjax.Model(params=p, cfg=CFG), prompts, max_new_tokens=4,
                          logits=tokjax.logits.greedy(), strategy=M.MLMUDecode())
    for prompt, comp in zip(prompts, out.completions()):
        seq = list(prompt)
        for _ in range(4):  # the official loop: visible = prompt + decoded, argmax of the query at the next slot
            buf = np.zeros((1, T), np.int32)
            buf[0, :len(seq)] = seq
            vis = jnp.asarray(np.arange(T)[None] < len(seq))
            seq.append(int(jnp.argmax(_logits(p, jnp.asarray(buf), vis)[0, len(seq)])))
        assert list(map(int, comp)) == seq[len(prompt):]


@pytest.mark.slow  # default-suite time; the file's other tests keep the method covered in the default suite
def test_registered_loss_trains_through_tokjax_train():
    from tokjax.losses.registry import loss_names
    from tokjax.train import TrainConfig, train

    assert "mlm_u" in loss_names()
    p = _model(seed=3, dec_layers=1)
    # task: every path token is id 7 (learnable from the position-only queries alone); padding after it
    seqs = np.asarray(jax.random.randint(jax.random.PRNGKey(9), (64, T), 1, V)).astype(np.int32)
    seqs[:, P:2 * P] = 7
    path = np.zeros((64, T), bool)
    path[:, P:2 * P] = True
    valid = np.zeros((64, T), bool)
    valid[:, :2 * P] = True

    def batch_fn(step):
        i = (np.arange(16) + 16 * step) % 64
        return {"tokens": seqs[i], "path_mask": path[i], "attention_mask": valid[i]}

    tc = TrainConfig(lr=1e-2, total_steps=15, warmup_steps=0, batch_size=16, seq_len=T, eval_every=0,
                     checkpoint_every=0, log_every=1, loss={"name": "mlm_u"})
    model, hist = train(CFG, tc, batch_fn, params=p, progress=False)
    losses = [h["loss"] for h in hist["train"]]
    assert len(losses) == 15 and all(np.isfinite(losses))
    assert np.mean(losses[-3:]) < 0.3 * np.mean(losses[:2])
    assert not np.allclose(np.asarray(model.params["mlm_u"]["query"]), np.asarray(p["mlm_u"]["query"]))


def test_bad_input_raises():
    p = _model()
    toks, path = _batch()
    key = jax.random.PRNGKey(0)
    with pytest.raises(ValueError, match="no visible token"):
        M.mlm_u_logits(p, CFG, toks, jnp.zeros_like(path))
    with pytest.raises(ValueError, match="no visible token"):
        M.mlm_u_loss(p, CFG, toks, jnp.ones_like(path), key)  # all path, no prompt
    with pytest.raises(ValueError, match="init_mlm_u"):
        M.mlm_u_logits(init_params(CFG, key), CFG, toks, ~path)
    with pytest.raises(ValueError, match="path_mask must be a bool"):
        M.mlm_u_loss(p, CFG, toks, path.astype(jnp.int32), key)
    with pytest.raises(ValueError, match="attention_mask must have the tokens' shape"):
        M.mlm_u_loss(p, CFG, toks, path, key, jnp.ones((4, 3), bool))
    with pytest.raises(ValueError, match=r"vocab_size=24"):
        M.mlm_u_loss(p, CFG, toks.at[0, 0].set(V), path, key)
    with pytest.raises(ValueError, match="n_layers must be a positive int"):
        M.init_mlm_u(init_params(CFG, key), CFG, key, n_layers=0)
    with pytest.raises(ValueError, match="batch\\['path_mask'\\]"):
        M.make_mlm_u_loss()(p, CFG, {"tokens": toks}, key)
    with pytest.raises(ValueError, match="rng"):
        M.make_mlm_u_loss()(p, CFG, {"tokens": toks, "path_mask": path}, None)
    with pytest.raises(ValueError, match="tokens must be int"):
        M.mlm_u_logits(p, CFG, jnp.zeros((4,), jnp.int32), path[0])


def test_p08_experiment_rejects_unknown_claim_ids_before_training():
    from experiments import p08_mlm_u

    with pytest.raises(ValueError, match="unknown P8 claim ids"):
        p08_mlm_u.run(False, only=frozenset({"star-graph", "bogus"}))


def test_p08_star_diagnostic_scores_each_path_position_on_the_true_prefix():
    """The star-graph diagnosis: NTP position k is scored by the logits at k - 1 of the full sequence; MLM-U
    position k sees only the prompt and the path before k (a later token must not change it)."""
    import numpy as np

    from experiments import p08_mlm_u
    from tokjax.model import Inputs, forward

    _, test, V, T = p08_mlm_u._star_data(20, 30)
    P = test["prompt_len"]
    cfg = ModelConfig(vocab_size=V, d_model=32, n_layers=2, n_heads=2, max_len=T + 8)
    params = init_params(cfg, jax.random.PRNGKey(0))
    got = p08_mlm_u._teacher_forced_by_position(params, cfg, "ntp", test, n=30)
    pred = np.asarray(jnp.argmax(forward(params, cfg, Inputs(tokens=jnp.asarray(test["seq"][:30]))).logits, -1))
    want = [float(np.mean(pred[:, k - 1] == test["seq"][:30, k])) for k in range(P, T)]
    assert got == [round(w, 3) for w in want] and len(got) == T - P

    mp = M.init_mlm_u(params, cfg, jax.random.PRNGKey(1), n_layers=1)
    base = p08_mlm_u._teacher_forced_by_position(mp, cfg, "mlm_u", test, n=30)
    changed = {**test, "seq": test["seq"].copy()}
    changed["seq"][:, -1] = (changed["seq"][:, -1] + 1) % V  # the last path token: no earlier position sees it
    after = p08_mlm_u._teacher_forced_by_position(mp, cfg, "mlm_u", changed, n=30)
    assert after[:-1] == base[:-1]
