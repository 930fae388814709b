"""experiments/p17_critical_tokens.py, the SmolLM critical-token ban test (issue 22): position choice, the ban
(that position only), grading plumbing, the positive / negative models' disk cache; tiny models only."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from experiments.p17_critical_tokens import (
    ban_resample, candidate_count, critical_position, incorrect_sources, random_position, success_rate,
)

V = 40


def _tiny(n_layers=2, scale=2.0, seed=0):
    import jax

    import tokjax

    cfg = tokjax.ModelConfig(vocab_size=V, d_model=16, n_layers=n_layers, n_heads=2, n_kv_heads=1, max_len=96)
    return tokjax.Model.init(cfg.replace(init_scale=scale), jax.random.key(seed))


def _next_probs(model, prefix):
    import jax

    import tokjax

    logits = tokjax.forward(model.params, model.cfg, np.asarray([prefix], np.int32)).logits[0, -1]
    return np.asarray(jax.nn.softmax(logits.astype(np.float32)))


# ---------------------------------------------------------------------------- positions
def test_critical_position_is_the_first_argmin_among_the_candidates_only():
    s = np.array([0.5, 0.1, 0.3, 0.1, 0.01])
    assert critical_position(s, 4) == 1  # the tie at 3 loses to the first; 0.01 at 4 is not a candidate
    assert critical_position(s, 5) == 4
    assert critical_position(s, 1) == 0


@pytest.mark.parametrize("scores, n, match", [
    ([0.1, 0.2], 0, "n must be"), ([0.1, 0.2], 3, "n must be"), ([0.1, 0.2], True, "n must be"),
    ([0.1, float("nan")], 2, "finite"),
])
def test_critical_position_bad_inputs(scores, n, match):
    with pytest.raises(ValueError, match=match):
        critical_position(scores, n)


def test_random_position_is_seeded_per_source_and_uniform():
    draws = [random_position(5, i) for i in range(400)]
    assert draws == [random_position(5, i) for i in range(400)]  # a pure function of (seed, index)
    assert set(draws) == set(range(5)) and max(np.bincount(draws)) < 120  # every position, none dominates
    assert [random_position(5, i, seed=3) for i in range(50)] != draws[:50]
    assert random_position(1, 7) == 0
    for bad in (0, -1, 2.0, False):
        with pytest.raises(ValueError, match="n must be"):
            random_position(bad, 0)


def test_candidates_exclude_only_a_terminal_eos():
    assert candidate_count([5, 6, 2], 2) == 2
    assert candidate_count([5, 2, 6], 2) == 3  # an eos inside is an ordinary token
    assert candidate_count([5, 6, 7], [2, 3]) == 3 and candidate_count([5, 6, 3], [2, 3]) == 2
    assert candidate_count([2], 2) == 0 and candidate_count([5, 6], None) == 2


# ---------------------------------------------------------------------------- the ban
def test_ban_removes_the_token_at_that_position_only_and_keeps_eos_and_budgets():
    import jax

    import tokjax
    from tokjax import logits as L

    model = _tiny()
    prefixes = [np.array([3, 7, 11], np.int32), np.array([5, 9], np.int32), np.array([6, 2, 2, 8], np.int32)]
    probs = [_next_probs(model, p) for p in prefixes]
    banned = [int(np.argmax(q)) for q in probs]  # each prefix's most likely next token
    eos = int(np.argsort(probs[0])[-2])  # prefix 0's second most likely token ends a row
    assert min(q[b] for q, b in zip(probs, banned)) > 0.2 and eos not in banned
    budgets, n, key = [6, 1, 3], 16, jax.random.key(3)
    run = lambda ban, bud: ban_resample(model, prefixes, ban, bud, key=key, samples=n, eos_id=eos, chunk=2)  # noqa: E731
    got = run(banned, budgets)  # chunks (0, 1) and (2, a padded copy of 2)
    assert [len(g) for g in got] == [n, n, n]
    # without the ban (an unlikely id banned instead: the same compiled draw), the banned token comes up often,
    # so the check below can fail
    free = run([int(np.argmin(q)) for q in probs], [1, 1, 1])
    assert sum(int(c[0]) == banned[i] for i, rows in enumerate(free) for c in rows) > 6
    for i, rows in enumerate(got):
        assert all(int(c[0]) != banned[i] for c in rows)
        assert all(1 <= len(c) <= budgets[i] for c in rows)
    assert all(len(c) == 1 for c in got[1])  # budget 1: the replaced token only
    assert any(int(c[0]) == eos and len(c) == 1 for c in got[0])  # an eos first token ends the row
    for c in got[0]:
        hit = np.flatnonzero(c == eos)
        assert not len(hit) or hit[0] == len(c) - 1  # nothing after an eos
    # the continuation is plain T=1 sampling (no ban after that position): the same run from prefix + first token
    k2 = jax.random.split(jax.random.fold_in(key, 0))[1]
    starts = [np.concatenate([p, c[:1]]).tolist() for p, rows in zip(prefixes[:2], got[:2]) for c in rows]
    plain = tokjax.generate(model, starts, key=k2, max_new_tokens=budgets[0] - 1, logits=L.temperature(1.0),
                            eos_id=eos).completions()
    go = [(c, q) for c, q in zip(got[0], plain) if int(c[0]) != eos]
    assert len(go) > 4
    for c, q in go:
        np.testing.assert_array_equal(c[1:], q)
    assert any(banned[0] in c[1:].tolist() for c in got[0])  # the banned id stays allowed later
    again = run(banned, budgets)
    assert all(np.array_equal(a, b) for x, y in zip(got, again) for a, b in zip(x, y))


@pytest.mark.parametrize("kwargs, match", [
    (dict(prefixes=[], banned=[], budgets=[]), "at least one"),
    (dict(prefixes=[[1, 2]], banned=[1, 2], budgets=[3]), "as many"),
    (dict(prefixes=[[]], banned=[1], budgets=[3]), "at least one token"),
    (dict(prefixes=[[1, 2]], banned=[V], budgets=[3]), "banned ids"),
    (dict(prefixes=[[1, 2]], banned=[-1], budgets=[3]), "banned ids"),
    (dict(prefixes=[[1, 2]], banned=[1], budgets=[0]), "budgets"),
    (dict(prefixes=[[1, 2]], banned=[1], budgets=[3], samples=0), "samples"),
    (dict(prefixes=[[1, 2]], banned=[1], budgets=[3], chunk=0), "chunk"),
])
def test_ban_resample_bad_inputs(kwargs, match):
    import jax

    with pytest.raises(ValueError, match=match):
        ban_resample(SimpleNamespace(cfg=SimpleNamespace(vocab_size=V)), key=jax.random.key(0), **kwargs)


# ---------------------------------------------------------------------------- grading plumbing
CHARS = "0123456789 +=.Answer:x"
TOK = SimpleNamespace(decode=lambda ids: "".join(CHARS[i] for i in ids))
enc = lambda s: np.array([CHARS.index(ch) for ch in s], np.int32)  # noqa: E731


def test_success_rate_grades_prefix_plus_continuation():
    prefix = enc("3 + 4 = ")
    conts = [enc("7. Answer: 7"), enc("8. Answer: 8"), enc("7"), enc("1. Answer: 7")]
    assert success_rate(TOK, 7, prefix, conts) == 0.75  # the stated answer wins over the calculation
    assert success_rate(TOK, 7, enc("3 + 4 = 7. Answer: "), [enc("7"), enc("9")]) == 0.5
    with pytest.raises(ValueError, match="at least one"):
        success_rate(TOK, 7, prefix, [])


def test_incorrect_sources_regrade_in_problem_major_order():
    probs = [SimpleNamespace(answer=7), SimpleNamespace(answer=5)]
    ids = [[enc("Answer: 7"), enc("Answer: 6"), enc("x")], [enc("Answer: 5"), enc("Answer: 55")]]
    found, seen = incorrect_sources(TOK, probs, ids)
    assert seen == 5 and [(i, j) for i, j, _ in found] == [(0, 1), (0, 2), (1, 1)]
    np.testing.assert_array_equal(found[0][2], ids[0][1])
    with pytest.raises(ValueError, match="one list of samples per problem"):
        incorrect_sources(TOK, probs, ids[:1])


# ---------------------------------------------------------------------------- positive / negative models on disk
@pytest.mark.slow
def test_aux_models_are_cached_on_disk_and_keyed_by_the_aux_settings(monkeypatch, tmp_path):
    import jax

    import experiments.p17_critical_tokens as p17
    from experiments._preference_real import PromptPool
    from experiments._preference_smollm import TAIL

    monkeypatch.setenv("TOKJAX_CACHE", str(tmp_path))
    model = _tiny(n_layers=TAIL + 1, scale=0.3)
    r = np.random.default_rng(0)
    pools = [PromptPool(r.integers(1, V, 4).astype(np.int32), tuple(r.integers(1, V, 3).astype(np.int32) for _ in range(4)),
                        np.array([True, False, True, False]), np.ones(4, bool), 7) for _ in range(5)]
    size = dict(n_train=5, n_val=1, aux_steps=2, n_heldout=2, steps=2, seeds=(0,))
    mk = lambda sz: SimpleNamespace(model=model, tok=SimpleNamespace(pad_id=0), size=sz, train_pools=pools[:4],  # noqa: E731
                                    _memo={})
    pos, neg = p17.aux_models(mk(size), 0)
    files = sorted(tmp_path.rglob("p17-aux-*.npz"))
    assert len(files) == 1
    leaves = lambda m: jax.tree.leaves(m.params)  # noqa: E731
    assert any(not np.allclose(a, b) for a, b in zip(leaves(pos), leaves(neg)))  # trained on different rows
    assert any(not np.allclose(a, b) for a, b in zip(leaves(pos), leaves(model)))
    import experiments._preference_smollm as ps

    # a second context (empty memo) loads the file, it does not train
    monkeypatch.setattr(ps, "sft", lambda *a, **k: pytest.fail("retrained instead of loading the cache"))
    pos2, neg2 = p17.aux_models(mk(size), 0)
    for a, b in zip(leaves(pos) + leaves(neg), leaves(pos2) + leaves(neg2)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # other aux settings or another seed: another entry
    keys = {p17._aux_path(mk(sz), seed)[0] for sz, seed in ((size, 0), ({**size, "aux_steps": 1}, 0), (size, 1),
                                                             ({**size, "n_train": 6}, 0))}
    assert len(keys) == 4 and files[0] in keys
    assert p17._aux_path(mk({**size, "n_heldout": 9, "steps": 7}), 0)[0] == files[0]  # sizes that do not matter
