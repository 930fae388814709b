"""P14 insertion decoding: position bookkeeping, a planted model against a list oracle, the stop head, bad input."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tokjax
from tokjax.decoding import TRACE_COUNTS
from tokjax.decoding.insertion import insert_tokens, insertion, sort_by_position
from tokjax.losses.insertion import STOP_KEY, init_stop_head

V, D, L = 8, 48, 24
CFG = tokjax.ModelConfig(vocab_size=V, d_model=D, n_layers=1, n_heads=2, max_len=L, positions="learned",
                         tied_embeddings=False)


@pytest.mark.slow  # default-suite time; the file's other tests keep the method covered in the default suite
@settings(max_examples=30, deadline=None)
@given(st.integers(1, 4), st.lists(st.integers(0, 100), min_size=0, max_size=8))
def test_sorting_by_position_reproduces_the_insertion_order(plen, gaps):
    """Insertion = append with shifted positions; sorting by position ids gives the list the insertions built."""
    S = plen + len(gaps) + 1
    positions = jnp.arange(S, dtype=jnp.int32)[None, :]
    tokens = np.full((1, S), -1, np.int32)
    tokens[0, :plen] = np.arange(plen)
    oracle = list(range(plen))
    n = plen
    for step, g in enumerate(gaps):
        anchor_pos = g % n  # insert after the token at sequence position anchor_pos
        anchor_col = int(np.nonzero(np.asarray(positions[0, :n]) == anchor_pos)[0][0])
        new = 100 + step
        oracle.insert(anchor_pos + 1, new)
        tokens[0, n] = new
        positions = insert_tokens(positions, jnp.array([n]), jnp.array([anchor_col]), jnp.array([True]))
        n += 1
        # a row that does not insert keeps its positions
        assert np.array_equal(insert_tokens(positions, jnp.array([n]), jnp.array([0]), jnp.array([False])), positions)
    assert sorted(np.asarray(positions[0, :n]).tolist()) == list(range(n))
    out, order = sort_by_position(jnp.asarray(tokens), positions, jnp.array([n]))
    assert np.asarray(out[0, :n]).tolist() == oracle
    assert np.asarray(tokens[0])[np.asarray(order[0, :n])].tolist() == oracle


def _planted(seed, stop_logit=-5.0):
    """Returns (Model, Htok, Hpos): zero blocks, one-hot token and position embeddings in disjoint dims, so
    logits[i, v] = c * (Htok[token_i, v] + Hpos[pos_i, v]) with c > 0; the stop head gives
    p_stop = sigmoid(stop_logit)."""
    rng = np.random.default_rng(seed)
    p = jax.tree.map(np.asarray, tokjax.Model.init(CFG, jax.random.key(0)).params)
    p = {**p, "layers": dict(p["layers"])}
    p["layers"]["wo"] = np.zeros_like(p["layers"]["wo"])
    p["layers"]["w_down"] = np.zeros_like(p["layers"]["w_down"])
    p["embed"] = np.eye(V, D, dtype=np.float32)
    p["pos_embed"] = np.eye(L, D, k=V, dtype=np.float32)
    h_tok, h_pos = rng.normal(size=(V, V)), rng.normal(size=(L, V))
    head = np.zeros((D, V), np.float32)
    head[:V], head[V:V + L] = h_tok, h_pos
    p["lm_head"] = head
    p = init_stop_head(p, CFG, jax.random.key(1))
    stop = {k: np.zeros_like(v) for k, v in p[STOP_KEY].items()}
    stop["b2"][D - 1] = 1.0  # z = h + b2; h is 0 in the last dim, so logits = out[D-1] = (stop_logit, 0)
    stop["out"][D - 1] = [stop_logit, 0.0]
    p[STOP_KEY] = stop
    return tokjax.Model(jax.tree.map(jnp.asarray, p), CFG), h_tok, h_pos


def _oracle(prompt, h_tok, h_pos, n, suppress):
    """Returns (sequence, insertion step of each element): the joint argmax run on a Python list."""
    seq, born = list(prompt), list(range(len(prompt)))
    for step in range(n):
        best = None
        for i in range(len(prompt) - 1, len(seq)):
            for v in range(V):
                if v not in suppress:
                    score = h_tok[seq[i], v] + h_pos[i, v]
                    if best is None or score > best[0]:
                        best = (score, i, v)
        _, i, v = best
        seq.insert(i + 1, v)
        born.insert(i + 1, len(prompt) + step)
    return seq, born


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_planted_model_inserts_at_the_joint_argmax(seed):
    model, h_tok, h_pos = _planted(seed)
    prompts = [[1, 2], [3, 4, 5], [1, 6, 7, 2]]
    n = 6
    out = tokjax.generate(model, prompts, strategy=insertion(suppress_ids=(0,)), max_new_tokens=n,
                          logits=tokjax.logits.greedy(), bucket=False)
    middle = 0
    for b, prompt in enumerate(prompts):
        seq, born = _oracle(prompt, h_tok, h_pos, n, {0})
        assert out.tokens[b, :out.lengths[b]].tolist() == seq
        assert out.stats["insertion_order"][b] == born
        assert out.completions()[b].tolist() == seq[len(prompt):]
        middle += sum(born[k] < born[k - 1] for k in range(len(prompt) + 1, len(born)))  # not appended at the end
    assert middle > 0  # the planted runs insert before earlier insertions, not only at the end
    assert out.stats["stopped"] == [False] * 3
    assert out.stats["forward_calls"] == n
    # top_k(1) sampling over the joint distribution is the same argmax
    out2 = tokjax.generate(model, prompts, strategy=insertion(suppress_ids=(0,)), max_new_tokens=n,
                           logits=tokjax.logits.top_k(1), key=jax.random.key(3), bucket=False)
    np.testing.assert_array_equal(out2.tokens, out.tokens)


def test_stop_head_threshold_is_runtime():
    model, _, _ = _planted(0, stop_logit=float(np.log(0.7 / 0.3)))  # p_stop = 0.7 at every step
    prompts = [[1, 2], [3, 4, 5]]
    out = tokjax.generate(model, prompts, strategy=insertion(stop_threshold=0.5), max_new_tokens=5,
                          logits=tokjax.logits.greedy(), bucket=False)
    np.testing.assert_array_equal(out.lengths, out.prompt_lengths)  # stopped before inserting anything
    assert out.stats["stopped"] == [True, True]
    np.testing.assert_allclose(out.stats["p_stop"], [0.7, 0.7], rtol=1e-5)
    traces = TRACE_COUNTS["decode_loop"]
    out = tokjax.generate(model, prompts, strategy=insertion(stop_threshold=[0.8, 0.6]), max_new_tokens=5,
                          logits=tokjax.logits.greedy(), bucket=False)
    assert TRACE_COUNTS["decode_loop"] == traces  # a new threshold does not recompile
    assert (out.lengths - out.prompt_lengths).tolist() == [5, 0]  # per-row thresholds
    assert out.stats["stopped"] == [False, True]


def test_sampling_is_seeded_and_stays_in_allowed_gaps():
    model, _, _ = _planted(4)
    prompts = [[1, 2, 3]] * 4
    kw = dict(strategy=insertion(suppress_ids=(0, 5)), max_new_tokens=6, logits=tokjax.logits.temperature(3.0),
              bucket=False)
    a = tokjax.generate(model, prompts, key=jax.random.key(1), **kw)
    b = tokjax.generate(model, prompts, key=jax.random.key(1), **kw)
    np.testing.assert_array_equal(a.tokens, b.tokens)
    for row, order in zip(a.tokens, a.stats["insertion_order"]):
        assert row[:3].tolist() == [1, 2, 3]  # the prompt stays in front (no insertion inside it)
        assert order[:3] == [0, 1, 2]
        assert not set(row[3:9].tolist()) & {0, 5}


def test_bad_inputs():
    model, _, _ = _planted(0)
    for t in (0.0, 1.0, 1.5, float("nan")):
        with pytest.raises(ValueError, match="stop_threshold"):
            insertion(stop_threshold=t)
    with pytest.raises(ValueError, match="suppress_ids"):
        tokjax.generate(model, [[1, 2]], strategy=insertion(suppress_ids=(V,)), max_new_tokens=2,
                        logits=tokjax.logits.greedy())
    with pytest.raises(ValueError, match="suppress_ids"):
        insertion(suppress_ids=(1.5,))
    with pytest.raises(ValueError, match=">= 2 tokens"):
        tokjax.generate(model, [[1]], strategy=insertion(), max_new_tokens=2, logits=tokjax.logits.greedy())
    bare = tokjax.Model({k: v for k, v in model.params.items() if k != STOP_KEY}, CFG)
    with pytest.raises(ValueError, match="stop head"):
        tokjax.generate(bare, [[1, 2]], strategy=insertion(), max_new_tokens=2, logits=tokjax.logits.greedy())
    with pytest.raises(ValueError, match="RepetitionPenalty"):
        tokjax.generate(model, [[1, 2]], strategy=insertion(), max_new_tokens=2, key=jax.random.key(0),
                        logits=tokjax.logits.repetition_penalty(1.2))


@pytest.mark.slow
def test_trained_ilm_sorts():
    """End to end: an ILM trained by tokjax.train with the `ilm` loss on a toy task (write the prompt's 4 distinct
    digits in increasing order) decodes it with the stop head ending each row (> 90% exact match)."""
    from tokjax.data import batch_indices
    from tokjax.losses.registry import make_loss

    cls, bos, n_dig, k = 10, 11, 10, 4
    rng = np.random.default_rng(0)

    def rows(n):
        digits = np.stack([rng.permutation(n_dig)[:k] for _ in range(n)])
        prompt = np.concatenate([np.full((n, 1), cls), digits, np.full((n, 1), bos)], axis=1).astype(np.int32)
        return prompt, np.sort(digits, axis=1).astype(np.int32)

    prompt, target = rows(4096)
    cfg = tokjax.ModelConfig(vocab_size=12, d_model=64, n_layers=2, n_heads=4, max_len=2 * k + 4)
    p0 = init_stop_head(tokjax.model.init_params(cfg, jax.random.key(0)), cfg, jax.random.key(1))
    data = {"prompt": prompt, "prompt_lengths": np.full(len(prompt), k + 2, np.int32), "target": target,
            "target_lengths": np.full(len(prompt), k, np.int32)}

    def batch_fn(step):
        idx = batch_indices(len(prompt), 64, step, seed=0)
        return {key: v[idx] for key, v in data.items()}

    tc = tokjax.train.TrainConfig(lr=3e-3, warmup_steps=50, total_steps=1000, batch_size=64, seq_len=cfg.max_len,
                                  eval_every=0, checkpoint_every=0, log_every=50, weight_decay=0.0)
    model, _ = tokjax.train.train(cfg, tc, batch_fn, loss_fn=make_loss("ilm", stop_weight=1.0, stop_class_weight=None),
                                  params=p0, progress=False)
    test_prompt, test_target = rows(200)
    out = tokjax.generate(model, test_prompt, strategy=insertion(suppress_ids=(cls, bos)), max_new_tokens=k + 2,
                          logits=tokjax.logits.greedy(), bucket=False)
    got = [c.tolist() for c in out.completions()]
    acc = np.mean([g == t.tolist() for g, t in zip(got, test_target)])
    bad = [(g, t.tolist()) for g, t in zip(got, test_target) if g != t.tolist()]
    assert acc > 0.9, (acc, bad[:8])
    assert np.mean(out.stats["stopped"]) > 0.9
