"""P44 Kangaroo: early-exit self-drafts with an adapter; lossless greedy output, double early exit, verification
from the shallow exit (layers < l not recomputed), distillation loss.

Adapter training (``tokjax.train.recipes.kangaroo.fit_adapter``) is tested in tests/train/recipes.
"""

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.model._models import small_cfg
from tokjax.decoding import generate, verify
from tokjax.decoding.kangaroo import (
    adapter_distill_loss, adapter_config, distill_batch, distill_metrics, early_exit, init_adapter, kangaroo,
    shallow_and_target,
)
from tokjax.decoding.speculative import speculative
from tokjax.logits import greedy
from tokjax.model import Model, forward, lm_head
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


def _run(model, src, make=kangaroo, prompts=PROMPTS):
    return generate(model, prompts, max_new_tokens=NEW, logits=greedy(), strategy=make(src, verify.greedy()))


@pytest.mark.parametrize("make", [kangaroo, pytest.param(speculative, marks=pytest.mark.slow)])
@pytest.mark.parametrize("layer,num_draft,threshold", [pytest.param(1, 4, 0.3, marks=pytest.mark.slow), (3, 5, 0.0)])
def test_greedy_kangaroo_equals_plain_greedy(model, plain, layer, num_draft, threshold, make):
    # kangaroo: verification continues from the shallow exit; speculative: full verification forward
    ad = init_adapter(model, layer, jax.random.key(layer), warm_start=layer != 1)
    out = _run(model, early_exit(layer, ad, num_draft, threshold), make)
    assert [c.tolist() for c in out.completions()] == plain
    assert out.stats["forward_calls"] <= NEW


@pytest.mark.parametrize("prompts", [pytest.param([[7, 1, 4]], marks=pytest.mark.slow), pytest.param([[2], [9, 9, 1, 3], [4, 4, 4, 4, 4, 4, 4], [11, 5], [6, 0, 2, 8, 1]], marks=pytest.mark.slow)])
def test_shallow_kv_reuse_equals_plain_greedy_at_other_batch_sizes(model, prompts):
    ad = init_adapter(model, 2, jax.random.key(2))
    ref = generate(model, prompts, max_new_tokens=NEW, logits=greedy())
    out = _run(model, early_exit(2, ad, 3, 0.2), prompts=prompts)
    assert [c.tolist() for c in out.completions()] == [c.tolist() for c in ref.completions()]


@pytest.mark.parametrize("make", [kangaroo, pytest.param(speculative, marks=pytest.mark.slow)])
def test_verification_does_not_rerun_the_shallow_layers(model, monkeypatch, make):
    # Count every layer evaluation at run time (layer index, tokens in the call). A verification
    # call is the only one over a block of 1 + num_draft tokens; with kangaroo() it runs layers
    # >= l only, the shallow layers having run token by token while drafting (pending + each draft).
    import importlib

    fwd = importlib.import_module("tokjax.model.forward")  # the module (tokjax.model.forward is the function)

    layer, nd, prompt = 2, 3, [[3, 14, 15, 9, 2, 6]]  # prompt width 6 != block width 4
    calls = []
    orig = fwd._layer

    def counting(p, cfg, x, positions, mask_spec, segment_ids, i, kv, hooks, *args):
        if cfg.n_layers == model.cfg.n_layers:  # the target's layers, not the one-block adapter's
            jax.debug.callback(lambda i, t=x.shape[1]: calls.append((int(i), t)), i)
        return orig(p, cfg, x, positions, mask_spec, segment_ids, i, kv, hooks, *args)

    m = _identity_tail(model, layer)  # a perfect draft: every step drafts num_draft tokens
    ad = init_adapter(m, layer, jax.random.key(0), warm_start=True)
    monkeypatch.setattr(fwd, "_layer", counting)
    jax.clear_caches()  # retrace through the counting layer
    try:
        out = _run(m, early_exit(layer, ad, nd, 0.0), make, prompts=prompt)
        jax.effects_barrier()
    finally:
        jax.clear_caches()
    calls_per = {(i, t): calls.count((i, t)) for i, t in set(calls)}
    steps = out.stats["forward_calls"]
    assert steps == NEW // (nd + 1)
    for i in range(model.cfg.n_layers):
        # every verification runs each deep layer once on the block; the shallow ones only in the ablation
        want = 0 if (make is kangaroo and i < layer) else steps
        assert calls_per.get((i, nd + 1), 0) == want, (i, calls_per)
    for i in range(layer):
        # drafting: the pending token and all nd drafted tokens go through the shallow layers alone
        assert calls_per[(i, 1)] == steps * (1 + nd)
    assert all(t != 1 for i, t in calls if i >= layer)  # the deep layers never run while drafting


def _identity_tail(model, layer):
    """Returns a model whose layers >= layer add nothing (so the shallow exit IS the full model)."""

    def zero(path, a):
        name = getattr(path[-1], "key", None)
        if name in ("wo", "w_down") and any(getattr(k, "key", None) == "layers" for k in path):
            return a.at[layer:].set(0.0)
        return a

    return Model(params=jax.tree_util.tree_map_with_path(zero, model.params), cfg=model.cfg)


@pytest.mark.slow
def test_perfect_draft_is_fully_accepted(model):
    # Layers >= 2 are identities and the adapter (warm-started from layer 2, whose attention output is
    # zero) adds nothing: the draft equals the target, so every step must accept all num_draft tokens.
    # Any error in the draft's positions, shared shallow KV or adapter cache would break this.
    # With kangaroo() the verification also reads the shallow KV and states written while drafting,
    # and the adapter catches up on the last draft token every step (all are accepted).
    m = _identity_tail(model, 2)
    ad = init_adapter(m, 2, jax.random.key(0), warm_start=True)
    ref = generate(m, PROMPTS, max_new_tokens=NEW, logits=greedy())
    for make in (kangaroo, speculative):
        out = _run(m, early_exit(2, ad, num_draft=3, threshold=0.0), make)
        assert [c.tolist() for c in out.completions()] == [c.tolist() for c in ref.completions()]
        assert out.stats["forward_calls"] == NEW // 4  # 3 drafts + 1 bonus per call, every call
        assert out.stats["tokens_per_call"] == 4.0


@pytest.mark.slow  # default-suite time; the file's other tests keep the method covered in the default suite
def test_second_early_exit_stops_drafting_at_low_confidence(model):
    m = _identity_tail(model, 2)
    ad = init_adapter(m, 2, jax.random.key(0), warm_start=True)
    never = _run(m, early_exit(2, ad, num_draft=3, threshold=1.0))  # no token is that confident: 1 draft per step
    assert never.stats["tokens_per_call"] == 2.0
    # per call: shallow layers (2 each) on the pending token and the one draft, the adapter once
    assert never.stats["draft_layer_evals"] == never.stats["forward_calls"] * (2 * 2 + 1)
    always = _run(m, early_exit(2, ad, num_draft=3, threshold=0.0))
    # shallow on pending + 3 drafts, the adapter on pending (+ catch-up) and the first 2 drafts
    assert always.stats["draft_layer_evals"] == always.stats["forward_calls"] * (4 * 2 + 3)
    # runtime threshold: a new value reuses the compiled decode loop
    from tokjax.decoding.driver import TRACE_COUNTS

    before = TRACE_COUNTS["decode_loop"]
    _run(m, early_exit(2, ad, num_draft=3, threshold=0.5))
    assert TRACE_COUNTS["decode_loop"] == before


@pytest.mark.slow  # the default suite keeps the exact-parity tests above; this regression pin runs in test-all
def test_outputs_match_those_recorded_before_the_shared_primitives(model):
    # recorded with the pre-issue-12 code (private log-softmax, private teacher loop): same draft
    # behaviour (tokens, calls) and the same distillation metrics. Draft layer evaluations changed by
    # design with shallow-KV reuse (the last drafted token now goes through the shallow layers too).
    rec = np.load(Path(__file__).parent / "fixtures" / "methods_before_issue12.npz")
    for name, layer, key, warm, num_draft, thr in (("kang1", 1, 1, False, 4, 0.3), ("kang3", 3, 3, True, 5, 0.0)):
        ad = init_adapter(model, layer, jax.random.key(key), warm_start=warm)
        out = _run(model, early_exit(layer, ad, num_draft, thr))
        np.testing.assert_array_equal(np.asarray(out.tokens), rec[f"{name}_tokens"])
        np.testing.assert_array_equal(np.asarray(out.lengths), rec[f"{name}_lengths"])
        assert int(out.stats["forward_calls"]) == int(rec[f"{name}_stat_forward_calls"])
    # the draft state's sharding declaration (state_axes) matches its tree: a one-device mesh runs it
    mesh = make_mesh(1, 1, devices=jax.devices()[:1])
    on_mesh = generate(model, PROMPTS, max_new_tokens=NEW, logits=greedy(), mesh=mesh,
                       strategy=kangaroo(early_exit(3, ad, 5, 0.0), verify.greedy()))  # ad: the layer-3 adapter
    np.testing.assert_array_equal(np.asarray(on_mesh.tokens), rec["kang3_tokens"])
    m = distill_metrics(model, init_adapter(model, 2, jax.random.key(0), warm_start=False), 2, rec["kang_windows"])
    for k in ("loss", "prob_acc", "top1"):
        np.testing.assert_allclose(m[k], float(rec[f"kang_metrics_{k}"]), rtol=1e-5, atol=1e-6)


def test_distillation_loss_is_soft_cross_entropy_and_gradient_only_reaches_adapter(model):
    cfg = model.cfg
    toks = jax.random.randint(jax.random.key(2), (2, 8), 0, cfg.vocab_size)
    ad = init_adapter(model, 2, jax.random.key(0), warm_start=False)

    @jax.jit
    def run(params, ad, toks):
        e, tl = shallow_and_target(params, cfg, toks, 2)
        ref_tl = forward(params, cfg, toks).logits
        ref_e = forward(params, cfg, toks, layers=(0, 2), compute_logits=False).hidden
        batch = {"hidden": e, "target_logits": tl, "head": lm_head(params, cfg)}
        loss_fn = adapter_distill_loss()
        (loss, m), g = jax.value_and_grad(lambda a: loss_fn(a, adapter_config(cfg), batch), has_aux=True)(ad)
        # tokjax.train passes cfg=None for a standalone adapter pytree: the config comes from acfg=
        loss_none, _ = adapter_distill_loss(acfg=adapter_config(cfg))(ad, None, batch)
        p = jax.nn.softmax(tl, -1)
        entropy = -(p * jax.nn.log_softmax(tl, -1)).sum(-1).mean()
        return e, tl, ref_e, ref_tl, loss, m["prob_acc"], entropy, g, loss_none

    e, tl, ref_e, ref_tl, loss, acc, entropy, g, loss_none = run(model.params, ad, toks)
    assert float(loss_none) == float(loss)
    b = distill_batch(model, 2, toks)
    np.testing.assert_allclose(b["hidden"], e, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(b["target_logits"], tl, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(b["head"], lm_head(model.params, cfg))
    np.testing.assert_allclose(tl, ref_tl, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(e, ref_e, rtol=1e-5, atol=1e-5)
    # the soft CE is at least the target entropy, with equality only when q = p
    assert float(loss) >= float(entropy) - 1e-4 and 0.0 <= float(acc) <= 1.0
    assert float(jnp.abs(g["layers"]["wq"]).sum()) > 0
    assert float(jnp.abs(g["layers"]["w_up"]).sum()) == 0.0  # no MLP in the official adapter


def test_bad_inputs_raise(model):
    ad = init_adapter(model, 2, jax.random.key(0))
    with pytest.raises(ValueError, match="early-exit layer"):
        init_adapter(model, 4, jax.random.key(0))  # exiting after the last layer is no early exit
    with pytest.raises(ValueError, match="early-exit layer"):
        early_exit(0, ad)
    with pytest.raises(ValueError, match="early-exit layer"):
        _run(model, early_exit(7, ad))
    with pytest.raises(ValueError, match="threshold"):
        early_exit(2, ad, threshold=1.5)
    with pytest.raises(ValueError, match="num_draft"):
        early_exit(2, ad, num_draft=0)
    with pytest.raises(ValueError, match="adapter"):
        early_exit(2, {"wq": 1})
    with pytest.raises(ValueError, match="needs an early_exit"):
        kangaroo(ad, verify.greedy())
    with pytest.raises(ValueError, match="verify must be a Verifier"):
        kangaroo(early_exit(2, ad), ad)
    with pytest.raises(ValueError, match="adapter params do not fit"):  # an MLP adapter used as an MLP-free one
        _run(model, early_exit(2, init_adapter(model, 2, jax.random.key(0), mlp=True)))
    with pytest.raises(ValueError, match="tokens must be int token windows"):
        distill_batch(model, 2, np.zeros((4,), np.int32))
    with pytest.raises(ValueError, match="early-exit layer"):
        distill_batch(model, 4, np.zeros((1, 4), np.int32))
    with pytest.raises(ValueError, match="adapter config"):
        adapter_distill_loss()(ad, None, {})
    with pytest.raises(ValueError, match="needs 'hidden'"):
        adapter_distill_loss()(ad, adapter_config(model.cfg), {})
