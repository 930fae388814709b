"""generate: greedy equals repeated full forwards, determinism, no recompiles, eos, streaming, bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tokjax
from tokjax import forward, generate, stream
from tokjax import logits as L
from tokjax.decoding import TRACE_COUNTS
from tests.model._models import small_model

MODEL = small_model(seed=3)
V = MODEL.cfg.vocab_size


_full = jax.jit(lambda params, toks: forward(params, MODEL.cfg, toks).logits)


def greedy_reference(model, prompt, n, width=16):
    """Returns prompt + n greedy tokens from full (uncached) forwards; right padding cannot leak (causal)."""
    assert model is MODEL
    seq = list(prompt)
    for _ in range(n):
        padded = np.zeros((1, width), np.int32)
        padded[0, : len(seq)] = seq
        seq.append(int(jnp.argmax(_full(model.params, jnp.asarray(padded))[0, len(seq) - 1])))
    return seq


@settings(max_examples=6)
@given(st.lists(st.integers(1, 6), min_size=3, max_size=3), st.integers(0, 1000))
def test_greedy_generate_equals_argmax_of_repeated_full_forwards(lengths, seed):
    rng = np.random.default_rng(seed)
    padded = rng.integers(0, V, size=(3, 6))
    out = generate(MODEL, padded, prompt_lengths=lengths, max_new_tokens=5, logits=L.greedy())
    for b in range(3):
        want = greedy_reference(MODEL, padded[b, : lengths[b]].tolist(), 5)
        assert out.tokens[b, : out.lengths[b]].tolist() == want
        assert (out.tokens[b, out.lengths[b]:] == 0).all()
    assert out.stats["forward_calls"] == 5 and out.stats["tokens_per_call"] == 1.0


def test_list_of_prompts_and_completions():
    prompts = [[1, 2, 3], [4], [5, 6]]
    out = generate(MODEL, prompts, max_new_tokens=4, logits=L.greedy())
    for b, p in enumerate(prompts):
        assert out.completions()[b].tolist() == greedy_reference(MODEL, p, 4)[len(p):]


def test_same_key_same_output_and_different_key_differs():
    prompts = [[1, 2, 3], [4, 5]]
    t = L.chain(L.top_p(0.95), L.temperature(1.5))
    a = generate(MODEL, prompts, key=jax.random.key(7), max_new_tokens=12, logits=t)
    b = generate(MODEL, prompts, key=jax.random.key(7), max_new_tokens=12, logits=t)
    c = generate(MODEL, prompts, key=jax.random.key(8), max_new_tokens=12, logits=t)
    np.testing.assert_array_equal(a.tokens, b.tokens)
    assert not np.array_equal(a.tokens, c.tokens)


def test_changing_hyperparameters_does_not_recompile():
    prompts = [[1, 2, 3], [4, 5]]
    kw = dict(key=jax.random.key(0), max_new_tokens=6)
    generate(MODEL, prompts, logits=L.chain(L.top_k(10), L.top_p(0.9), L.temperature(0.7)), **kw)
    before = TRACE_COUNTS["decode_loop"]
    for t, k, p in [(1.0, 5, 0.5), (0.3, 40, 1.0), (2.0, 1, 0.1)]:
        generate(MODEL, prompts, logits=L.chain(L.top_k(k), L.top_p(p), L.temperature(t)), **kw)
    assert TRACE_COUNTS["decode_loop"] == before


def test_temperature_changes_the_distribution():
    prompts = [[1, 2, 3]] * 64
    cold = generate(MODEL, prompts, key=jax.random.key(1), max_new_tokens=1, logits=L.temperature(0.05))
    hot = generate(MODEL, prompts, key=jax.random.key(1), max_new_tokens=1, logits=L.temperature(5.0))
    assert len(set(cold.tokens[:, 3].tolist())) < len(set(hot.tokens[:, 3].tolist()))


def test_sampling_matches_the_model_distribution():
    """First sampled token frequencies match softmax(logits) (chi-square, 4000 draws)."""
    prompt = [[1, 2, 3]]
    probs = np.asarray(jax.nn.softmax(forward(MODEL.params, MODEL.cfg, jnp.asarray(prompt)).logits[0, -1] / 2.0))
    out = generate(MODEL, prompt * 4000, key=jax.random.key(2), max_new_tokens=1, logits=L.temperature(2.0))
    counts = np.bincount(out.tokens[:, 3], minlength=V)
    expected = probs * 4000
    big = expected > 5
    chi2 = (((counts[big] - expected[big]) ** 2) / expected[big]).sum()
    dof = big.sum() - 1
    assert chi2 < dof + 5 * np.sqrt(2 * dof), (chi2, dof)


def test_eos_stops_each_row_and_is_kept():
    prompts = [[1, 2], [3, 4, 5]]
    free = generate(MODEL, prompts, max_new_tokens=6, logits=L.greedy())
    eos = int(free.tokens[0, 3])  # the second token row 0 generates
    out = generate(MODEL, prompts, max_new_tokens=6, logits=L.greedy(), eos_id=eos)
    assert out.lengths[0] == 4 and out.tokens[0, 3] == eos
    row1 = free.tokens[1, 3 : free.lengths[1]].tolist()
    want = row1[: row1.index(eos) + 1] if eos in row1 else row1
    assert out.completions()[1].tolist() == want


def test_stream_yields_the_same_tokens_as_generate():
    prompts = [[1, 2, 3], [4, 5]]
    t = L.temperature(0.8)
    full = generate(MODEL, prompts, key=jax.random.key(3), max_new_tokens=5, logits=t)
    pieces = list(stream(MODEL, prompts, key=jax.random.key(3), max_new_tokens=5, logits=t))
    assert len(pieces) == 5
    for b in range(2):
        assert np.concatenate([p[b] for p in pieces]).tolist() == full.completions()[b].tolist()


def test_all_masked_row_stops_without_nan():
    banned = L.ban_tokens(list(range(V)))
    out = generate(MODEL, [[1, 2]], key=jax.random.key(0), max_new_tokens=4, logits=banned)
    assert out.lengths[0] == 2 and out.stats["masked_rows"] == [True]


def test_penalty_transforms_run_inside_generate():
    out = generate(MODEL, [[1, 2, 3]], max_new_tokens=10, logits=L.chain(L.presence_penalty(100.0), L.greedy()))
    gen = out.completions()[0].tolist()
    assert len(set(gen)) == len(gen) and not set(gen) & {1, 2, 3}


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(prompt=[[1, V]]), r"\[0, 61\)"),
        (dict(prompt=[[-3, 1]]), r"\[0, 61\)"),
        (dict(prompt=[list(range(49))]), "max_len"),
        (dict(prompt=[[1] * 40], max_new_tokens=20), "max_len"),
        (dict(max_new_tokens=0), "max_new_tokens"),
        (dict(prompt=np.zeros((2, 3), int), prompt_lengths=[3]), "prompt_lengths"),
        (dict(prompt=np.zeros((2, 3), int), prompt_lengths=[3, 0]), "prompt lengths"),
        (dict(prompt=np.zeros((2, 3), float)), "integers"),
        (dict(prompt=np.zeros((2, 3, 1), int)), r"\[batch, seq\]"),
        (dict(logits="greedy"), "LogitTransform"),
        (dict(eos_id=V), "eos_id"),
        (dict(key=None, logits=L.temperature(1.0)), "key="),
    ],
)
def test_bad_input_raises_value_error(kw, match):
    args = dict(prompt=[[1, 2]], key=jax.random.key(0), max_new_tokens=2)
    args.update(kw)
    prompt = args.pop("prompt")
    with pytest.raises(ValueError, match=match):
        generate(MODEL, prompt, **args)
    with pytest.raises(ValueError, match="tokjax Model"):
        generate(MODEL.params, [[1]], max_new_tokens=1)


def test_generate_with_bfloat16_and_gpt2_style_model():
    m = small_model(seed=1, norm="layer", positions="learned", activation="gelu", bias=True, compute_dtype="bfloat16")
    out = generate(m, [[1, 2, 3]], max_new_tokens=4, logits=L.greedy())
    assert out.lengths[0] == 7 and isinstance(out, tokjax.GenerateOutput)


# ------------------------------------------------------------------ the Strategy contract
import dataclasses  # noqa: E402

from tokjax.decoding import DecodeState, Sampling, Strategy  # noqa: E402


@dataclasses.dataclass(frozen=True)
class _Recording(Strategy):
    """Plain sampling that records, in its state, how many layer dicts init saw, and counts its steps."""

    def init(self, params, cfg, state):
        layers = params["layers"]
        # same layout as step: a tuple of per-layer dicts (unstacked, fused q/k/v)
        return {"layers_seen": jnp.asarray(len(layers) if isinstance(layers, tuple) else -1, jnp.int32),
                "fused": jnp.asarray("wqkv" in layers[0] if isinstance(layers, tuple) else False),
                "steps": jnp.zeros((), jnp.int32)}

    def step(self, params, cfg, transform, state: DecodeState, eos_id=None):
        out = Sampling().step(params, cfg, transform, state, eos_id)
        same = jnp.asarray(isinstance(params["layers"], tuple) and "wqkv" in params["layers"][0])
        extra = {**state.extra, "steps": state.extra["steps"] + 1, "fused": state.extra["fused"] & same}
        return out.replace(extra=extra)

    def finalize(self, state):
        return {"steps_seen": int(state.extra["steps"]), "init_layers": int(state.extra["layers_seen"]),
                "same_layout": bool(state.extra["fused"])}


def test_strategy_base_defaults_and_finalize_and_same_param_layout():
    assert (Strategy.slack, Strategy.max_accept) == (0, 1)
    s = _Recording()
    assert s.state_axes({"a": 1}) is None and s.validate(MODEL.cfg) is None
    plain = generate(MODEL, [[1, 2, 3]], max_new_tokens=6, logits=L.greedy())
    out = generate(MODEL, [[1, 2, 3]], max_new_tokens=6, logits=L.greedy(), strategy=s)
    np.testing.assert_array_equal(out.tokens, plain.tokens)
    assert out.stats["steps_seen"] == 6 and out.stats["init_layers"] == MODEL.cfg.n_layers
    assert out.stats["same_layout"]  # init and step both received the unstacked, fused params
    assert set(out.strategy_state) == {"layers_seen", "fused", "steps"}  # default persistent_state: all of it
    # hot start with the default resume: the state is checked against a fresh one, then used
    again = generate(MODEL, [[1, 2, 3]], max_new_tokens=6, logits=L.greedy(), strategy=s, strategy_state=out.strategy_state)
    assert again.stats["steps_seen"] == 12
    with pytest.raises(ValueError, match="shaped like"):
        generate(MODEL, [[1, 2, 3]], max_new_tokens=2, logits=L.greedy(), strategy=s, strategy_state={"steps": 0})


@dataclasses.dataclass(frozen=True)
class _Legacy:
    """A strategy written before the base class (duck-typed): still accepted."""

    slack: int = 0
    max_accept: int = 1

    def step(self, params, cfg, transform, state, eos_id=None):
        return Sampling().step(params, cfg, transform, state, eos_id)


def test_duck_typed_strategies_still_run_and_missing_step_is_reported():
    plain = generate(MODEL, [[4, 5]], max_new_tokens=4, logits=L.greedy())
    out = generate(MODEL, [[4, 5]], max_new_tokens=4, logits=L.greedy(), strategy=_Legacy())
    np.testing.assert_array_equal(out.tokens, plain.tokens)
    assert out.strategy_state is None

    class NoStep:
        slack, max_accept = 0, 1

    with pytest.raises(ValueError, match="lacks 'step'"):
        generate(MODEL, [[4, 5]], max_new_tokens=2, logits=L.greedy(), strategy=NoStep())


def test_mesh_arguments_are_checked():
    with pytest.raises(ValueError, match="mesh"):
        generate(MODEL, [[4, 5]], max_new_tokens=2, logits=L.greedy(), mesh="cpu")
    with pytest.raises(ValueError, match="mesh="):
        generate(MODEL, [[4, 5]], max_new_tokens=2, logits=L.greedy(), rules=tokjax.parallel.DEFAULT_RULES)


def test_generate_on_a_one_device_mesh_equals_plain():
    mesh = tokjax.parallel.make_mesh(1, 1, devices=jax.devices()[:1])
    key = jax.random.key(5)
    plain = generate(MODEL, [[1, 2, 3], [4]], key=key, max_new_tokens=5, logits=L.temperature(0.9))
    out = generate(MODEL, [[1, 2, 3], [4]], key=key, max_new_tokens=5, logits=L.temperature(0.9), mesh=mesh)
    np.testing.assert_array_equal(out.tokens, plain.tokens)


def test_decode_layout_is_reused_for_the_same_params_only():
    from tokjax.decoding import driver

    m = small_model(seed=5)
    a = driver.decode_layout(m.params, fuse=True)
    assert driver.decode_layout(m.params, fuse=True) is a  # the weight copy is made once
    assert driver.decode_layout(m.params, fuse=False) is not a
    other = jax.tree.map(lambda x: x + 0, m.params)  # same values, new arrays
    assert driver.decode_layout(other, fuse=True) is not a
    out1 = tokjax.generate(m, [[1, 2, 3]], max_new_tokens=4, logits=L.greedy())
    m2 = tokjax.Model(jax.tree.map(lambda x: -x, m.params), m.cfg)  # a different model is not served a stale layout
    out2 = tokjax.generate(m2, [[1, 2, 3]], max_new_tokens=4, logits=L.greedy())
    ref = tokjax.generate(tokjax.Model(jax.tree.map(lambda x: -x + 0, m.params), m.cfg), [[1, 2, 3]],
                          max_new_tokens=4, logits=L.greedy())
    np.testing.assert_array_equal(out2.tokens, ref.tokens)
    assert out1.tokens.shape == out2.tokens.shape
