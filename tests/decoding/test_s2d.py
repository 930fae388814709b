"""P59 S2D: nested sub-model drafts with confidence-based exits; lossless greedy output, deferred KV, the SoFT loss.

SoFT training (``tokjax.train.recipes.s2d.sorted_finetune``) is tested in tests/train/recipes.
"""

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.model._models import small_cfg
from tokjax.decoding import DecodeState, DecodeStats, generate, verify
from tokjax.decoding.s2d import exit_logits, exit_metrics, nested, sorted_loss, truncate
from tokjax.decoding.speculative import speculative
from tokjax.logits import greedy
from tokjax.model import Inputs, KVCache, Model, forward
from tokjax.parallel import make_mesh

PROMPTS = [[3, 14, 15, 9, 2, 6], [5], [8, 9, 7, 9, 3, 2, 3, 8, 4]]  # ragged, one of length 1
NEW = 12


@pytest.fixture(scope="module")
def model():
    cfg = small_cfg(n_layers=4, init_scale=0.3)
    return jax.jit(lambda k: Model.init(cfg, k))(jax.random.key(1))


@pytest.fixture(scope="module")
def plain(model):
    return [c.tolist() for c in generate(model, PROMPTS, max_new_tokens=NEW, logits=greedy()).completions()]


def _run(model, src):
    return generate(model, PROMPTS, max_new_tokens=NEW, logits=greedy(), strategy=speculative(src, verify.greedy()))


@pytest.mark.slow  # a second draft model compiles another decode loop; the fast tests cover 1- and 2-exit drafts
def test_greedy_s2d_equals_plain_greedy_with_a_separate_sorted_draft(model, plain):
    other = jax.jit(lambda k: Model.init(small_cfg(n_layers=3, init_scale=0.3), k))(jax.random.key(9))
    out = _run(model, nested(other, exits=(1, 2, 3), thresholds=(0.2, 0.3, 0.0), num_draft=4))
    assert [c.tolist() for c in out.completions()] == plain


@pytest.mark.slow
def test_full_depth_self_draft_is_fully_accepted_and_shallow_exits_still_lossless(model, plain):
    full = _run(model, nested(model, exits=(4,), num_draft=3))  # the deepest exit IS the target
    assert [c.tolist() for c in full.completions()] == plain
    assert full.stats["tokens_per_call"] == 4.0
    mixed = _run(model, nested(model, exits=(1, 4), thresholds=(0.3, 0.0), num_draft=3))
    assert [c.tolist() for c in mixed.completions()] == plain
    shallow = _run(model, nested(model, exits=(1, 4), thresholds=(0.0, 0.0), num_draft=3))  # always exit at 1
    assert [c.tolist() for c in shallow.completions()] == plain
    # per step: the full-depth catch-up (4 layers) + 2 fed drafts through 1 layer each
    assert shallow.stats["draft_layer_evals"] == shallow.stats["forward_calls"] * (4 + 2 * 1)
    assert full.stats["draft_layer_evals"] == full.stats["forward_calls"] * (4 + 2 * 4)



@pytest.mark.slow
def test_one_nested_draft_serves_two_targets_of_different_depth(model, plain):
    # P59's deployment: ONE sorted draft, unchanged, drafts for targets of different depth sharing its vocabulary
    # (here the 4-layer model and its own first 2 layers as a second, shallower target).
    shallow = truncate(model, 2)
    shallow_plain = [c.tolist() for c in generate(shallow, PROMPTS, max_new_tokens=NEW, logits=greedy()).completions()]
    assert shallow_plain != plain  # two different targets, so the check below is not one target twice
    deepest = nested(truncate(model, 2), exits=(1, 2), thresholds=(1.0, 0.0), num_draft=3)  # always exits at 2
    adaptive = nested(truncate(model, 2), exits=(1, 2), thresholds=(0.3, 0.0), num_draft=3)
    tpc = {}
    for name, target, want in (("deep", model, plain), ("shallow", shallow, shallow_plain)):
        for kind, src in (("deepest", deepest), ("adaptive", adaptive)):  # thresholds are runtime: one compile
            out = _run(target, src)
            assert [c.tolist() for c in out.completions()] == want  # each target keeps its own greedy output
            tpc[name, kind] = out.stats["tokens_per_call"]
    # the draft's deepest sub-model IS the shallow target: every draft token is accepted there (3 drafts + 1)
    assert tpc["shallow", "deepest"] == 4.0
    assert 1.0 <= tpc["deep", "deepest"] < 4.0

def _state(model, prompts, steps):
    cfg, params = model.cfg, model.params
    B = len(prompts)
    lens = np.array([len(p) for p in prompts], np.int32)
    P = int(lens.max())
    buf = np.zeros((B, P + steps), np.int32)
    for b, p in enumerate(prompts):
        buf[b, : len(p)] = p
    prefill = jax.jit(lambda p, t: forward(p, cfg, Inputs(tokens=t), cache=KVCache.init(cfg, B, P + steps + 8),
                                           compute_logits=False).cache)
    cache = prefill(params, jnp.asarray(buf[:, :P]))
    return DecodeState(
        tokens=jnp.asarray(buf), lengths=jnp.asarray(lens), prompt_lengths=jnp.asarray(lens),
        max_lengths=jnp.asarray(lens + steps), done=jnp.zeros((B,), bool), cache=cache.set_lengths(lens - 1),
        logit_state=greedy().init(B), key=jax.random.key(0), step=jnp.zeros((), jnp.int32),
        stats=DecodeStats.init(B, 1),
    )


@pytest.mark.slow
def test_deferred_kv_fill_makes_deep_exits_exact(model):
    # Draft = target with exits (1, 4): a node that exits at depth 4 must be exactly the target's argmax
    # after its draft prefix -- which needs the layer 1..3 KV of earlier nodes that exited at depth 1.
    N = 6
    src = nested(model, exits=(1, 4), thresholds=(0.25, 0.0), num_draft=N)
    state = _state(model, PROMPTS, 16)
    dstate = src.init(model.params, model.cfg, state)
    draft, dstate = jax.jit(lambda s, d: src.propose(model.params, model.cfg, s, d, None, greedy()))(state, dstate)
    toks, exits = np.asarray(draft.tokens), np.asarray(dstate["last_exits"])
    deferred = 0
    argmax = jax.jit(lambda p, t: jnp.argmax(forward(p, model.cfg, t).logits[0], -1))
    for b, prompt in enumerate(PROMPTS):
        ref = np.asarray(argmax(model.params, jnp.asarray([prompt + toks[b].tolist()])))
        P = len(prompt)
        for j in range(N):
            if exits[b, j] == 1:
                assert toks[b, j] == ref[P - 1 + j]
                deferred += int(np.any(exits[b, :j] == 0))
    assert exits[:, 0].min() == 1  # the pending token's successor runs the full depth
    assert deferred > 0 and (exits == 0).any()  # the deferred path really ran


def test_exit_logits_and_sorted_loss(model):
    cfg = model.cfg
    toks = jax.random.randint(jax.random.key(4), (2, 10), 0, cfg.vocab_size)

    @jax.jit
    def run(params, toks):
        ex = exit_logits(params, cfg, toks[:, :-1], (1, 3, 4))
        full = forward(params, cfg, toks[:, :-1]).logits
        shallow = forward(params, cfg, toks[:, :-1], layers=(0, 1)).logits
        soft, m = sorted_loss((1, 3, 4), weights=(1.0, 0.0, 2.0))(params, cfg, {"tokens": toks})
        one, _ = sorted_loss((4,))(params, cfg, {"tokens": toks})
        return ex, full, shallow, soft, m, one

    ex, full, shallow, soft, m, one = run(model.params, toks)
    np.testing.assert_allclose(ex[-1], full, rtol=1e-5, atol=1e-5)  # deepest exit = the model
    np.testing.assert_allclose(ex[0], shallow, rtol=1e-5, atol=1e-5)  # exit k = early-exit logits of k layers
    np.testing.assert_allclose(float(soft), float(m["ce_k1"]) + 2 * float(m["ce_k4"]), rtol=1e-5)
    np.testing.assert_allclose(float(one), float(m["ce_k4"]), rtol=1e-5)


@pytest.mark.slow  # the default suite keeps the exact-parity tests above; this regression pin runs in test-all
def test_outputs_match_those_recorded_before_the_shared_primitives(model):
    # recorded with the pre-issue-12 code (private draft prefill, hand-written log-softmax)
    rec = np.load(Path(__file__).parent / "fixtures" / "methods_before_issue12.npz")
    out = _run(model, nested(model, exits=(1, 4), thresholds=(0.25, 0.0), num_draft=6))
    np.testing.assert_array_equal(np.asarray(out.tokens), rec["s2d_tokens"])
    np.testing.assert_array_equal(np.asarray(out.lengths), rec["s2d_lengths"])
    for stat in ("forward_calls", "draft_layer_evals"):  # same drafts: same acceptance, same exits taken
        assert int(out.stats[stat]) == int(rec[f"s2d_stat_{stat}"]), stat
    # the draft state's sharding declaration (state_axes) matches its tree: a one-device mesh runs it
    mesh = make_mesh(1, 1, devices=jax.devices()[:1])
    on_mesh = generate(model, PROMPTS, max_new_tokens=NEW, logits=greedy(), mesh=mesh,
                       strategy=speculative(nested(model, exits=(1, 4), thresholds=(0.25, 0.0), num_draft=6),
                                            verify.greedy()))
    np.testing.assert_array_equal(np.asarray(on_mesh.tokens), rec["s2d_tokens"])
    _, m = jax.jit(lambda p, t: sorted_loss((1, 3, 4), weights=(1.0, 0.0, 2.0))(p, model.cfg, {"tokens": t}))(
        model.params, jnp.asarray(rec["s2d_loss_tokens"]))
    for k, v in m.items():
        np.testing.assert_allclose(float(v), float(rec[f"s2d_loss_{k}"]), rtol=1e-5, atol=1e-6)
    em = exit_metrics(truncate(model, 3), (1, 2, 3), model, rec["s2d_windows"])
    got = np.array([[em[k][n] for n in ("ce", "agree", "conf")] for k in (1, 2, 3)])
    np.testing.assert_allclose(got, rec["s2d_exit_metrics"], rtol=1e-5, atol=1e-6)


def test_bad_inputs_raise(model):
    with pytest.raises(ValueError, match="strictly increasing"):
        nested(model, exits=(2, 1))
    with pytest.raises(ValueError, match="strictly increasing"):
        nested(model, exits=(1, 5))  # deeper than the draft model
    with pytest.raises(ValueError, match="one entry per exit"):
        nested(model, exits=(1, 2), thresholds=(0.5,))
    with pytest.raises(ValueError, match="thresholds must lie"):
        nested(model, exits=(1, 2), thresholds=(2.0, 0.0))
    with pytest.raises(ValueError, match="num_draft"):
        nested(model, exits=(1,), num_draft=0)
    with pytest.raises(ValueError, match="draft_cfg"):
        nested(model.params, exits=(1,))
    small = Model(params=model.params, cfg=model.cfg.replace(vocab_size=model.cfg.vocab_size - 1))
    with pytest.raises(ValueError, match="vocabulary"):
        _run(model, nested(small, exits=(1,)))
    with pytest.raises(ValueError, match="n_layers"):
        truncate(model, 0)
