"""The loss-transform family: TokenStats, transforms, reductions, the shifted completion mask, next_token_loss."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import tokjax
from tokjax.losses import (
    TokenStats, chain, cut_cross_entropy, make_next_token_loss, named_chain, next_token_loss, per_token_nll,
    reduce_loss, sequence_count, shifted_completion_mask, sum_and_count, token_count, token_stats, token_weights,
)

TOL = dict(rtol=2e-5, atol=2e-5)


def assert_close(a, b, **tol):
    np.testing.assert_allclose(np.asarray(a, np.float32), np.asarray(b, np.float32), **(tol or TOL))


def numpy_model(seed=0, **kw):
    """Returns a small tokjax.Model whose params are drawn with NumPy (no per-shape JAX RNG compiles)."""
    cfg = tokjax.ModelConfig(**{**dict(vocab_size=53, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2,
                                       max_len=32), **kw})
    r = np.random.default_rng(seed)
    specs = tokjax.model.param_specs(cfg)

    def make(spec):
        if spec.init == "ones":
            return jnp.ones(spec.shape, jnp.float32)
        if spec.init == "zeros":
            return jnp.zeros(spec.shape, jnp.float32)
        return jnp.asarray(r.normal(size=spec.shape) * 0.2 * spec.scale, jnp.float32)

    params = jax.tree.map(make, specs, is_leaf=lambda x: isinstance(x, tokjax.model.ParamSpec))
    return tokjax.Model(params=params, cfg=cfg)


@pytest.fixture(scope="module")
def model():
    return numpy_model()


def _tokens(B=4, S=10, V=53, seed=1):
    return jnp.asarray(np.random.default_rng(seed).integers(0, V, size=(B, S)), jnp.int32)


def _reference_logp(model, tokens):
    """Returns [B, T] log p(target) from the model's materialised logits (independent of tokjax.losses)."""
    logits = tokjax.forward(model.params, model.cfg, tokens[:, :-1]).logits
    return jnp.take_along_axis(jax.nn.log_softmax(logits, -1), tokens[:, 1:, None], -1)[..., 0]


# ------------------------------------------------------------------------------------ mask
def test_shifted_completion_mask_by_hand():
    tokens = jnp.zeros((3, 6), jnp.int32)  # T = 5 targets: tokens[:, 1..5]
    m = shifted_completion_mask(tokens, jnp.array([0, 2, 3]), jnp.array([6, 5, 3]))
    expect = np.array([
        [1, 1, 1, 1, 1],  # prompt 0, all 6 real: targets 1..5
        [0, 1, 1, 1, 0],  # completion tokens 2..4
        [0, 0, 0, 0, 0],  # prompt 3 == length 3: no completion
    ], bool)
    np.testing.assert_array_equal(np.asarray(m), expect)
    np.testing.assert_array_equal(np.asarray(shifted_completion_mask(tokens)), np.ones((3, 5), bool))


def test_shifted_completion_mask_bad_input():
    with pytest.raises(ValueError, match="tokens"):
        shifted_completion_mask(jnp.zeros((3,), jnp.int32))
    with pytest.raises(ValueError, match="tokens"):
        shifted_completion_mask(jnp.zeros((2, 1), jnp.int32))
    with pytest.raises(ValueError, match="prompt_lengths"):
        shifted_completion_mask(jnp.zeros((2, 5), jnp.int32), jnp.array([0, 6]))
    with pytest.raises(ValueError, match="lengths"):
        shifted_completion_mask(jnp.zeros((2, 5), jnp.int32), lengths=jnp.array([1, 2, 3]))
    with pytest.raises(ValueError, match="integers"):
        shifted_completion_mask(jnp.zeros((2, 5), jnp.int32), lengths=jnp.array([1.0, 2.0]))


# ------------------------------------------------------------------------------ reductions
def _stats(seed=0, B=3, T=5):
    r = np.random.default_rng(seed)
    logp = -r.uniform(0.1, 3.0, size=(B, T))
    mask = r.uniform(size=(B, T)) < 0.7
    mask[0] = False  # one empty row
    w = r.uniform(0.5, 1.5, size=(B, T))
    return TokenStats.create(logp, mask, w), logp, mask, w


def test_reductions_by_hand():
    s, logp, mask, w = _stats()
    per = np.where(mask, -w * logp, 0.0)
    assert_close(per_token_nll(s), per)
    total, count = sum_and_count(s)
    assert_close(total, per.sum())
    assert float(count) == mask.sum() == float(token_count(mask))
    assert_close(reduce_loss(s, "token_mean"), per.sum() / mask.sum())
    assert_close(reduce_loss(s, "sum"), per.sum())
    assert_close(reduce_loss(s, "const"), per.sum() / mask.size)
    rows = [per[b].sum() / mask[b].sum() for b in range(3) if mask[b].any()]
    assert_close(reduce_loss(s, "seq_mean"), np.mean(rows))
    assert float(sequence_count(mask)) == len(rows)
    assert_close(reduce_loss(s, "token_mean", normalizer=100.0), per.sum() / 100.0)
    assert_close(reduce_loss(s, "weighted_mean"), per.sum() / np.where(mask, w, 0).sum())


def test_empty_mask_reduces_to_zero_with_zero_grad():
    s, logp, _, w = _stats()
    s = s.replace(mask=jnp.zeros_like(s.mask))
    for how in ("token_mean", "sum", "seq_mean", "const"):
        val, g = jax.value_and_grad(lambda lp: reduce_loss(s.replace(logp=lp), how))(s.logp)
        assert float(val) == 0.0 and np.all(np.asarray(g) == 0)


def test_reduction_bad_input():
    s, *_ = _stats()
    with pytest.raises(ValueError, match="reduction"):
        reduce_loss(s, "mean")
    with pytest.raises(ValueError, match="normalizer"):
        reduce_loss(s, normalizer=-1.0)
    with pytest.raises(ValueError, match="mask shape"):
        TokenStats.create(jnp.zeros((2, 3)), mask=jnp.ones((2, 4), bool))
    with pytest.raises(ValueError, match="entropy shape"):
        TokenStats.create(jnp.zeros((2, 3)), entropy=jnp.zeros((2,)))


# ---------------------------------------------------------------------------- transforms
def test_token_weights_transform_and_chain():
    s, logp, mask, w = _stats()
    extra = jnp.asarray(np.random.default_rng(3).uniform(size=logp.shape), jnp.float32)
    batch = {"token_weights": extra}
    tf = chain(token_weights(), token_weights(scale=2.0))
    out, state = tf(s, None, batch)
    assert_close(out.weights, w * np.asarray(extra) ** 2 * 2.0)
    assert len(state) == 2
    nt = named_chain(("a", token_weights(scale=3.0)))
    out2, st2 = nt(s, None, batch)
    assert_close(out2.weights, w * np.asarray(extra) * 3.0)
    assert_close(st2["a"]["scale"], 3.0)
    # Hyperparameters are runtime state, not identity: equal transforms share a compiled program.
    assert token_weights(scale=1.0) == token_weights(scale=5.0)
    assert hash(token_weights(scale=1.0)) == hash(token_weights(scale=5.0))
    with pytest.raises(ValueError, match="chain"):
        chain(token_weights(), "not a transform")
    with pytest.raises(ValueError, match="unique"):
        named_chain(("a", token_weights()), ("a", token_weights()))
    with pytest.raises(ValueError, match="token_weights"):
        token_weights()(s, None, {})
    with pytest.raises(dataclasses.FrozenInstanceError):
        token_weights().key = "x"


def test_one_composition_for_loss_and_logit_transforms():
    # Both families' Chain / NamedChain / Identity are the shared tokjax._transform compositions; each keeps
    # its own base class (a loss chain rejects logit transforms and vice versa) and its own init arity.
    from tokjax import _transform, logits as L
    from tokjax.losses import Identity, LossTransform, Prior

    for fam_chain, fam_named, fam_identity in ((chain, named_chain, Identity), (L.chain, L.named_chain, L.Identity)):
        assert isinstance(fam_chain(), _transform.SequentialComposition)
        assert isinstance(fam_named(), _transform.NamedComposition)
        assert isinstance(fam_identity(), _transform.IdentityBehaviour)
    assert Identity() == Identity() and Identity() != L.Identity() and hash(Identity()) == hash(Identity())
    with pytest.raises(ValueError, match="chain expects LossTransform objects, got TopK"):
        chain(token_weights(), L.top_k(2))
    with pytest.raises(ValueError, match="is not a LogitTransform: TokenWeights"):
        L.named_chain(("w", token_weights()))
    with pytest.raises(ValueError, match=r"\(name: str, transform\) pairs"):
        named_chain(token_weights())
    # requires: the union over members, in order, through both compositions (and nesting)
    nested = chain(token_weights(), named_chain(("p", Prior()), ("w", token_weights())))
    assert nested.requires == ("ref_logp",) and isinstance(nested, LossTransform)
    assert named_chain(("p", Prior())).requires == ("ref_logp",) and chain().requires == ()
    s, _, _, _ = _stats()
    out, state = Identity()(s, (), None)
    assert out is s and state == ()
    assert len(L.chain(L.temperature(2.0), L.top_k(3)).init(4)) == 2  # logit init(batch), loss init()
    assert set(named_chain(("a", token_weights()), ("b", Identity())).init()) == {"a", "b"}


# ------------------------------------------------------------------------ next_token_loss
@pytest.mark.slow
def test_next_token_loss_cut_equals_naive_equals_logits(model):
    tokens = _tokens()
    r = np.random.default_rng(5)
    batch = {
        "tokens": tokens, "prompt_lengths": jnp.array([0, 2, 4, 1]), "lengths": jnp.array([10, 9, 7, 10]),
        "weights": jnp.asarray(r.uniform(0.5, 2.0, size=(4, 9)), jnp.float32),
        "mask": jnp.asarray(r.uniform(size=(4, 10)) < 0.9),
    }
    cfg = model.cfg

    @jax.jit
    def run(params):
        out = {}
        for method in ("cut", "naive"):
            out[method] = jax.value_and_grad(
                lambda p: next_token_loss(p, cfg, batch, None, method=method, block_size=16), has_aux=True)(params)
        return out

    out = run(model.params)
    (lc, mc), gc = out["cut"]
    (ln, mn), gn = out["naive"]
    lp = _reference_logp(model, tokens)
    mask = shifted_completion_mask(tokens, batch["prompt_lengths"], batch["lengths"]) & batch["mask"][:, 1:]
    expect = jnp.sum(jnp.where(mask, -batch["weights"] * lp, 0.0)) / jnp.sum(mask)
    assert_close(lc, expect)
    assert_close(ln, expect)
    assert float(mc["token_count"]) == float(jnp.sum(mask))
    jax.tree.map(lambda a, b: assert_close(a, b, rtol=1e-4, atol=1e-6), gc, gn)


def test_segment_ids_mask_cross_document_targets(model):
    tokens = _tokens(B=2, S=9)
    seg = jnp.array([[1, 1, 1, 2, 2, 2, 2, 3, 3], [1] * 9])
    st = jax.jit(lambda p: token_stats(p, model.cfg, {"tokens": tokens, "segment_ids": seg}, block_size=16))(
        model.params)
    np.testing.assert_array_equal(np.asarray(st.mask[0]), [1, 1, 0, 1, 1, 1, 0, 1])
    assert bool(st.mask[1].all())


def test_z_loss_matches_cut_cross_entropy(model):
    tokens = _tokens()
    cfg = model.cfg

    @jax.jit
    def run(params):
        loss, _ = next_token_loss(params, cfg, {"tokens": tokens}, None, z_loss=1e-2, block_size=16)
        hidden = tokjax.forward(params, cfg, tokens[:, :-1], compute_logits=False).hidden
        ref = cut_cross_entropy(hidden, tokjax.lm_head(params, cfg), tokens[:, 1:], z_loss=1e-2, block_size=16)
        return loss, ref

    loss, ref = run(model.params)
    assert_close(loss, ref)


@pytest.mark.slow  # default-suite time; the file's other tests keep the method covered in the default suite
def test_global_normalizer_makes_micro_batches_add_up(model):
    # Gradient accumulation: per-micro-batch losses normalised by the GLOBAL token count sum to the
    # full-batch token mean, in value and in gradient.
    tokens = _tokens(B=6, S=10, seed=7)
    lengths = jnp.array([10, 3, 7, 10, 2, 5])
    cfg = model.cfg
    n_global = token_count(shifted_completion_mask(tokens, lengths=lengths))
    micro = [(tokens[i:i + 3], lengths[i:i + 3]) for i in (0, 3)]

    @jax.jit
    def vg(params, tokens, lengths, normalizer):
        return jax.value_and_grad(lambda p: next_token_loss(
            p, cfg, {"tokens": tokens, "lengths": lengths}, None, normalizer=normalizer, block_size=16)[0])(params)

    whole = vg(model.params, tokens, lengths, n_global)  # = the plain full-batch token mean
    parts = [vg(model.params, t, n, n_global) for t, n in micro]
    acc = jax.tree.map(lambda *xs: sum(xs), *parts)
    assert_close(acc[0], whole[0])
    jax.tree.map(lambda a, b: assert_close(a, b, rtol=1e-4, atol=1e-6), acc[1], whole[1])
    # ... while averaging the local means is NOT the full-batch loss here (uneven lengths).
    local = [vg(model.params, t, n, token_count(shifted_completion_mask(t, lengths=n)))[0] for t, n in micro]
    assert abs(float(np.mean([float(x) for x in local])) - float(whole[0])) > 1e-3


@pytest.mark.parametrize("how,count", [("token_mean", token_count), ("seq_mean", sequence_count),
                                       ("weighted_mean", lambda m: None),
                                       ("const", lambda m: float(m.size)), ("sum", lambda m: 1.0)])
def test_sum_of_micro_batch_reductions_equals_full_batch(how, count):
    s, logp, mask, w = _stats(seed=4, B=8, T=6)
    whole = reduce_loss(s, how)
    norm = count(s.mask)
    if norm is None:  # weighted_mean: the global total of the masked-in weights
        norm = jnp.sum(jnp.where(s.mask, s.weights, 0.0))
    parts = [reduce_loss(jax.tree.map(lambda x: x[i:i + 2], s), how, normalizer=norm) for i in range(0, 8, 2)]
    assert_close(sum(parts), whole)
    # and the (sum, count) pairs add up to the same token mean
    pairs = [sum_and_count(jax.tree.map(lambda x: x[i:i + 2], s)) for i in range(0, 8, 2)]
    assert_close(sum(p[0] for p in pairs) / sum(p[1] for p in pairs), reduce_loss(s, "token_mean"))


def test_normalizer_from_batch(model):
    tokens = _tokens()
    f = jax.jit(lambda p, b: next_token_loss(p, model.cfg, b, None, block_size=16)[0])
    a = f(model.params, {"tokens": tokens, "normalizer": jnp.float32(4 * 9)})  # = the local token count
    b = f(model.params, {"tokens": tokens, "normalizer": jnp.float32(2 * 4 * 9)})
    assert_close(b, a / 2)
    assert_close(a, jax.jit(lambda p: next_token_loss(p, model.cfg, {"tokens": tokens}, None, method="naive")[0])(
        model.params))


def test_all_masked_batch_gives_zero_loss_and_grads(model):
    tokens = _tokens()
    batch = {"tokens": tokens, "mask": jnp.zeros((4, 9), bool)}
    (loss, m), g = jax.jit(jax.value_and_grad(
        lambda p: next_token_loss(p, model.cfg, batch, None, block_size=16), has_aux=True))(model.params)
    assert float(loss) == 0.0 and float(m["token_count"]) == 0.0
    assert all(np.all(np.asarray(x) == 0) for x in jax.tree.leaves(g))


def test_entropy_metric_and_make_loss(model):
    tokens = _tokens()
    loss_fn = make_next_token_loss(method="cut", block_size=16, entropy=True)
    loss, m = jax.jit(lambda p: loss_fn(p, model.cfg, {"tokens": tokens}, jax.random.key(0)))(model.params)
    logits = tokjax.forward(model.params, model.cfg, tokens[:, :-1]).logits
    p = jax.nn.softmax(logits, -1)
    ent = -jnp.sum(p * jax.nn.log_softmax(logits, -1), -1)
    assert_close(m["entropy"], ent.mean(), rtol=1e-5, atol=1e-5)
    assert_close(m["nll"], loss)
    assert_close(m["nll_sum"] / m["token_count"], loss)
    with pytest.raises(ValueError, match="unknown"):
        make_next_token_loss(blocksize=3)
    with pytest.raises(ValueError, match="method"):
        make_next_token_loss(method="fused")


def test_next_token_loss_bad_input(model):
    cfg, params = model.cfg, model.params
    tokens = _tokens()
    with pytest.raises(ValueError, match="tokens"):
        next_token_loss(params, cfg, {"ids": tokens}, None)
    with pytest.raises(ValueError, match="mask"):
        next_token_loss(params, cfg, {"tokens": tokens, "mask": jnp.ones((4, 3), bool)}, None)
    with pytest.raises(ValueError, match="weights"):
        next_token_loss(params, cfg, {"tokens": tokens, "weights": jnp.ones((4,))}, None)
    with pytest.raises(ValueError, match="method"):
        next_token_loss(params, cfg, {"tokens": tokens}, None, method="fast")
    with pytest.raises(ValueError, match="token ids"):
        next_token_loss(params, cfg, {"tokens": tokens.at[0, 0].set(53)}, None)
    with pytest.raises(ValueError, match="reduction"):
        next_token_loss(params, cfg, {"tokens": tokens}, None, reduction="mean")
