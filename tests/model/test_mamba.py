"""Mamba-1 layers (mixer="mamba"): fused scan == associative scan == step-by-step recurrence == cached decode (generate),
sites and hooks, packed segments, the P68 constrained x_proj's signs, bad input, and training through tokjax.train."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tokjax
from tokjax.model import (
    Bidirectional, Inputs, KVCache, MambaState, ModelConfig, Taps, forward, layer_weights, mamba_mixer, mamba_state,
    prefill, selective_scan, ssm_projections, unstack_layers,
)


def _cfg(**kw):
    base = dict(vocab_size=61, d_model=32, n_layers=2, n_heads=4, max_len=48, mixer="mamba", ssm_state=4)
    return ModelConfig(**{**base, **kw})


def _model(seed=0, **kw):
    cfg = _cfg(**kw)
    cfg = cfg.replace(init_scale=0.3)  # logits far from uniform: greedy ties improbable
    return tokjax.Model.init(cfg, jax.random.key(seed))


# Jitted once per call structure: eager forwards would compile every op separately.
_fwd = jax.jit(forward, static_argnames=("cfg", "taps"))
_mixer = jax.jit(mamba_mixer, static_argnames=("cfg", "method"))
_scan = jax.jit(selective_scan, static_argnames=("method",))


def test_associative_scan_equals_the_step_by_step_recurrence():
    m = _model()
    p = layer_weights(m.params, 1)
    h = jax.random.normal(jax.random.key(2), (3, 11, m.cfg.d_model))
    state = MambaState(conv=jax.random.normal(jax.random.key(3), (3, 3, m.cfg.ssm_inner)),
                       ssm=jax.random.normal(jax.random.key(4), (3, m.cfg.ssm_inner, m.cfg.ssm_state)))
    ys, ss = _mixer(p, m.cfg, h, state=state, method="sequential")
    for method in ("associative", "fused"):
        ya, sa = _mixer(p, m.cfg, h, state=state, method=method)
        np.testing.assert_allclose(ya, ys, atol=1e-5, rtol=1e-5)
        np.testing.assert_allclose(sa.ssm, ss.ssm, atol=1e-5, rtol=1e-5)
        np.testing.assert_array_equal(sa.conv, ss.conv)
    # the fused scan (the default) with a right-padded prefill's stops, and with packed segments and gradients
    stop = jnp.asarray([0, 4, 11])
    y_ref, st_ref = _mixer(p, m.cfg, h, state=state, stop=stop, method="sequential")
    y, st_ = _mixer(p, m.cfg, h, state=state, stop=stop, method="fused")
    np.testing.assert_allclose(y, y_ref, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(st_.ssm, st_ref.ssm, atol=1e-5, rtol=1e-5)
    seg = jnp.asarray([[0] * 5 + [1] * 6, [0] * 11, [0, 0, 1, 1, 1, 2, 2, 2, 2, 3, 3]])
    loss = lambda method: jax.grad(lambda pp, hh: jnp.sum(jnp.sin(
        mamba_mixer(pp, m.cfg, hh, segment_ids=seg, method=method)[0])), (0, 1))(p, h)
    for a_, b_ in zip(jax.tree.leaves(loss("fused")), jax.tree.leaves(loss("associative"))):
        np.testing.assert_allclose(np.asarray(a_), np.asarray(b_), atol=1e-4, rtol=1e-4)
    # the recurrence itself, written out with a Python loop over time
    a = jax.random.uniform(jax.random.key(5), (2, 7, 3))
    b = jax.random.normal(jax.random.key(6), (2, 7, 3))
    h0 = jax.random.normal(jax.random.key(7), (2, 3))
    a, b, h0 = np.asarray(a), np.asarray(b), np.asarray(h0)
    ref, hs = [], h0
    for t in range(7):
        hs = a[:, t] * hs + b[:, t]
        ref.append(hs)
    np.testing.assert_allclose(_scan(a, b, h0), np.stack(ref, 1), atol=1e-6)
    np.testing.assert_allclose(_scan(a, b, h0, method="sequential"), np.stack(ref, 1), atol=1e-6)


def test_cached_decode_equals_the_full_forward_token_by_token_and_in_chunks():
    m = _model()
    cfg = m.cfg
    toks = jax.random.randint(jax.random.key(1), (2, 12), 0, cfg.vocab_size)
    full = _fwd(m.params, cfg, toks).logits
    cache, got = KVCache.init(cfg, 2, 16), []
    for t in range(12):
        o = _fwd(m.params, cfg, toks[:, t:t + 1], cache=cache)
        cache = o.cache
        got.append(o.logits)
    np.testing.assert_allclose(jnp.concatenate(got, 1), full, atol=1e-5)
    assert np.asarray(cache.lengths).tolist() == [[12, 12]] * cfg.n_layers
    o1 = _fwd(m.params, cfg, toks[:, :6], cache=KVCache.init(cfg, 2, 16))
    o2 = _fwd(m.params, cfg, toks[:, 6:], cache=o1.cache)
    np.testing.assert_allclose(jnp.concatenate([o1.logits, o2.logits], 1), full, atol=1e-5)
    # the stacked (lax.scan) and unstacked (Python loop) paths agree; two programs, so float32 rounding may
    # differ (1.7e-6 seen with the suite's compile flags, conftest.py), as for the cached paths above
    np.testing.assert_allclose(_fwd(unstack_layers(m.params), cfg, toks).logits, full, atol=1e-5)


def test_ragged_prefill_absorbs_exactly_each_rows_prompt():
    m = _model(seed=1)
    cfg = m.cfg
    toks = jax.random.randint(jax.random.key(2), (2, 8), 0, cfg.vocab_size)
    lengths = jnp.array([3, 8])
    c = prefill(m.params, cfg, toks, lengths, 16)
    assert np.asarray(c.lengths).tolist() == [[2, 7]] * cfg.n_layers
    for b in range(2):
        n = int(lengths[b]) - 1
        ref = _fwd(m.params, cfg, toks[b:b + 1, :n], cache=KVCache.init(cfg, 1, 16)).cache
        for i in range(cfg.n_layers):
            np.testing.assert_allclose(c.ssm[i][b], ref.ssm[i][0], atol=1e-5)
            np.testing.assert_allclose(c.conv[i][b], ref.conv[i][0], atol=1e-5)


def test_generate_greedy_equals_the_full_forwards_argmax():
    m = _model(seed=2)
    cfg = m.cfg
    prompt = np.array([[5, 9, 13, 0, 0], [7, 1, 2, 3, 4]], np.int32)
    out = tokjax.generate(m, prompt, prompt_lengths=[3, 5], max_new_tokens=6, logits=tokjax.logits.greedy())
    for b in range(2):
        row = out.tokens[b, :out.lengths[b]]
        P = int(out.prompt_lengths[b])
        assert len(row) == P + 6
        logits = np.asarray(_fwd(m.params, cfg, jnp.asarray(row[None, :-1])).logits[0])
        np.testing.assert_array_equal(row[P:], logits[P - 1:].argmax(-1))
        # the decision margins are far above float error, so the argmax comparison is meaningful
        top2 = np.sort(logits[P - 1:], -1)[:, -2:]
        assert (top2[:, 1] - top2[:, 0]).min() > 1e-4


@pytest.mark.slow
def test_beam_search_reorders_the_recurrent_state_with_its_beams():
    m = _model(seed=3)
    cfg = m.cfg
    prompt = np.array([[5, 9, 13, 2]], np.int32)
    out = tokjax.generate(m, prompt, max_new_tokens=3, strategy=tokjax.decoding.beam(3))
    # brute-force beam search (3 beams, no eos, equal lengths) with full forwards
    beams = [(0.0, list(prompt[0]))]
    for _ in range(3):
        rows = jnp.asarray([b[1] for b in beams])
        logp = np.asarray(jax.nn.log_softmax(_fwd(m.params, cfg, rows).logits[:, -1]))
        cand = [(s + logp[i, v], seq + [v]) for i, (s, seq) in enumerate(beams) for v in range(cfg.vocab_size)]
        beams = sorted(cand, key=lambda c: -c[0])[:3]
    np.testing.assert_array_equal(out.tokens[0, :out.lengths[0]], beams[0][1])


def test_sites_hooks_and_segments():
    m = _model()
    cfg = m.cfg
    toks = jax.random.randint(jax.random.key(1), (2, 9), 0, cfg.vocab_size)
    sites = ("resid_pre", "attn_out", "mlp_out", "resid_post")
    o = _fwd(m.params, cfg, toks, taps=Taps(layers="all", sites=sites))
    assert o.taps["attn_out"].shape == (cfg.n_layers, 2, 9, cfg.d_model)
    np.testing.assert_allclose(o.taps["resid_post"], o.taps["resid_pre"] + o.taps["attn_out"], atol=1e-6)
    assert not np.any(np.asarray(o.taps["mlp_out"]))
    np.testing.assert_allclose(o.taps["resid_pre"][1], o.taps["resid_post"][0], atol=0)
    # zeroing the mixer's output through its hook leaves layer 0 the identity
    hooked = jax.jit(lambda p, t: forward(p, cfg, t, hooks={"layer.0.attn_out": lambda a, _l: jnp.zeros_like(a)},
                                          taps=Taps(layers=(0,), sites=sites)))(m.params, toks)
    np.testing.assert_array_equal(hooked.taps["resid_post"][0], hooked.taps["resid_pre"][0])
    # an mlp_out hook is added to the stream even though the block has no MLP
    bump = jax.jit(lambda p, t: forward(p, cfg, t, hooks={"layer.1.mlp_out": lambda a, _l: a + 1.0},
                                        taps=Taps(layers=(1,))))(m.params, toks)
    np.testing.assert_allclose(bump.taps["resid_post"][0], o.taps["resid_post"][1] + 1.0, atol=1e-5)
    # packed documents: the state and the conv window restart at a new segment id
    seg = jnp.array([[0] * 4 + [1] * 5, [0] * 9])
    packed = _fwd(m.params, cfg, Inputs(tokens=toks, segment_ids=seg)).logits
    # each document alone at the start of its own row (causal: what follows it does not matter)
    alone = _fwd(m.params, cfg, jnp.stack([toks[0], jnp.concatenate([toks[0, 4:], toks[0, :4]])])).logits
    np.testing.assert_allclose(packed[0, :4], alone[0, :4], atol=1e-5)
    np.testing.assert_allclose(packed[0, 4:], alone[1, :5], atol=1e-5)
    assert np.abs(np.asarray(o.logits[0, 4:] - packed[0, 4:])).max() > 1e-3  # without segments they differ
    np.testing.assert_allclose(packed[1], o.logits[1], atol=1e-5)


def test_attention_configs_keep_their_parameters_and_cache():
    cfg = ModelConfig(vocab_size=61, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, max_len=48)
    assert cfg.mixer == "attention" and cfg.ssm_sign is None
    shapes = tokjax.model.param_shapes(cfg)
    assert sorted(shapes["layers"]) == ["attn_norm", "mlp_norm", "w_down", "w_gate", "w_up", "wk", "wo", "wq", "wv"]
    cache = KVCache.init(cfg, 2, 8)
    assert not cache.recurrent and cache.conv == () and len(jax.tree.leaves(cache)) == 2 * cfg.n_layers + 1
    mc = KVCache.init(_cfg(), 2, 8)
    assert mc.recurrent and mc.capacity == 8 and mc.batch == 2 and len(jax.tree.leaves(mc)) == 4 * 2 + 1


@settings(max_examples=8, deadline=None)
@given(d=st.integers(2, 12), expand=st.integers(1, 2), n=st.integers(1, 8), seed=st.integers(0, 2**16),
       scale=st.sampled_from([0.02, 0.5, 3.0]), sign=st.sampled_from(["pos", "neg"]))
@pytest.mark.slow  # default-suite time; the file's other tests keep the method covered in the default suite
def test_ssm_sign_fixes_the_sign_of_sc_t_sb(d, expand, n, seed, scale, sign):
    E = d * expand
    n = min(n, E)
    cfg = ModelConfig(vocab_size=8, d_model=d, n_layers=1, n_heads=1, mixer="mamba", ssm_state=n, ssm_expand=expand,
                      ssm_sign=sign)
    x_proj = scale * np.random.default_rng(seed).standard_normal((E, cfg.ssm_dt_rank + 2 * n)).astype(np.float32)
    _, s_b, s_c = (np.asarray(a, np.float64) for a in ssm_projections({"x_proj": jnp.asarray(x_proj)}, cfg))
    U = s_c
    assert np.allclose(np.tril(U, -1), 0) and np.allclose(np.diag(U[:, :n]), 1.0)
    mu = s_c.T @ s_b  # [E, E] = +-U^T D U: symmetric, rank n
    np.testing.assert_allclose(mu, mu.T, atol=1e-6 * max(1.0, np.abs(mu).max()))
    eig = np.linalg.eigvalsh(mu)
    sgn = 1.0 if sign == "pos" else -1.0
    nonzero = np.sort(sgn * eig)[-n:]  # the n eigenvalues of the nonzero spectrum
    assert nonzero.min() > 0, eig
    assert (sgn * eig).min() > -1e-6 * max(1.0, np.abs(eig).max())  # the rest are zeros
    small = np.linalg.eigvals(s_b @ s_c.T)  # [n, n]: the same nonzero spectrum, real and of one sign
    assert np.all(sgn * small.real > 0)
    free = cfg.replace(ssm_sign=None)
    _, fb, fc = ssm_projections({"x_proj": jnp.asarray(x_proj)}, free)
    R = cfg.ssm_dt_rank
    np.testing.assert_array_equal(fb, x_proj[:, R:R + n].T)
    np.testing.assert_array_equal(fc, x_proj[:, R + n:].T)


def test_bad_input_raises_clear_errors():
    with pytest.raises(ValueError, match="mixer"):
        _cfg(mixer="rnn")
    for field in ("ssm_state", "ssm_conv", "ssm_expand"):
        with pytest.raises(ValueError, match=field):
            _cfg(**{field: 0})
    with pytest.raises(ValueError, match="ssm_sign"):
        _cfg(ssm_sign="up")
    with pytest.raises(ValueError, match="needs mixer='mamba'"):
        _cfg(mixer="attention", ssm_sign="pos")
    with pytest.raises(ValueError, match="no MLP"):
        _cfg(d_ff=64)
    with pytest.raises(ValueError, match="ssm_state <= "):
        _cfg(d_model=4, ssm_expand=1, ssm_state=8, n_heads=1, ssm_sign="neg")
    m = _model()
    toks = jnp.zeros((1, 4), jnp.int32)
    with pytest.raises(ValueError, match="Causal"):
        forward(m.params, m.cfg, toks, mask=Bidirectional())
    with pytest.raises(ValueError, match="attn_probs"):
        forward(m.params, m.cfg, toks, taps=Taps(layers="all", sites=("attn_probs",)))
    with pytest.raises(ValueError, match="attn_heads"):
        forward(m.params, m.cfg, toks, hooks={"layer.0.attn_heads": lambda a, _l: a})
    attn_cfg = ModelConfig(vocab_size=61, d_model=32, n_layers=2, n_heads=4, max_len=48)
    with pytest.raises(ValueError, match="recurrent state"):
        forward(m.params, m.cfg, toks, cache=KVCache.init(attn_cfg, 1, 8))
    with pytest.raises(ValueError, match="mixer='attention'"):
        forward(tokjax.Model.init(attn_cfg, jax.random.key(0)).params, attn_cfg, toks, cache=KVCache.init(m.cfg, 1, 8))
    cache = KVCache.init(m.cfg, 1, 8)
    with pytest.raises(ValueError, match="cannot be rolled back"):
        cache.rollback(jnp.array([0]))
    with pytest.raises(ValueError, match="cannot be rolled back"):
        cache.gather(jnp.array([0]), jnp.zeros((1, 1), jnp.int32), jnp.array([1]))
    with pytest.raises(ValueError, match="method"):
        selective_scan(jnp.ones((1, 2, 1)), jnp.ones((1, 2, 1)), method="fft")
    with pytest.raises(ValueError, match="one shape"):
        selective_scan(jnp.ones((1, 2, 1)), jnp.ones((1, 3, 1)))
    spec = tokjax.decoding.speculative(tokjax.decoding.drafts.prompt_lookup(2, 3), tokjax.decoding.verify.greedy())
    with pytest.raises(ValueError, match="cannot be rolled back"):
        tokjax.generate(m, np.array([[1, 2, 3]]), max_new_tokens=2, logits=tokjax.logits.greedy(), strategy=spec)
    s = mamba_state(m.cfg, 2)
    assert s.conv.shape == (2, 3, m.cfg.ssm_inner) and s.ssm.dtype == jnp.float32


@pytest.mark.slow
def test_a_tiny_mamba_model_trains_through_tokjax_train():
    cfg = ModelConfig(vocab_size=16, d_model=16, n_layers=2, n_heads=1, max_len=32, mixer="mamba", ssm_state=4,
                      ssm_sign="pos")
    rng = np.random.default_rng(0)
    pattern = rng.integers(0, 16, 5)
    stream = np.tile(pattern, 200)  # period 5: learnable by a causal conv + state
    windows = np.stack([stream[i:i + 17] for i in range(0, 600, 3)]).astype(np.int32)
    tc = tokjax.train.TrainConfig(lr=1e-2, warmup_steps=0, total_steps=12, batch_size=8, seq_len=16, log_every=1,
                                  eval_every=0)
    model, hist = tokjax.train.train(cfg, tc, windows, progress=False)
    losses = [h["loss"] for h in hist["train"]]
    assert len(losses) == 12 and np.all(np.isfinite(losses))
    assert losses[-1] < losses[0] - 0.3, losses
    assert isinstance(model, tokjax.Model) and model.cfg.mixer == "mamba"
