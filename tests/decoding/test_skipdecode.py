"""P16 SkipDecode: schedule validity, cache safety (no unwritten KV slot is ever read), train/decode equivalence."""

import dataclasses
import functools
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.model._models import small_cfg
from tokjax.model import Model
from tokjax.decoding import DecodeState, DecodeStats, generate
from tokjax.decoding.skipdecode import (
    SkipDecode, active_layers, layer_mask, linear_schedule, skip_hooks, skipdecode, skipdecode_loss,
)
from tokjax.logits import greedy
from tokjax.model import Inputs, KVCache, forward

PROMPTS = [[3, 14, 15, 9, 2, 6], [5, 35], [8, 9, 7, 9, 3, 2, 3, 8, 4]]  # ragged


@pytest.fixture(scope="module")
def model():
    cfg = small_cfg(n_layers=4, init_scale=0.3)  # far-from-uniform logits: argmax ties are improbable
    return jax.jit(lambda k: Model.init(cfg, k))(jax.random.key(1))


def _rows(out):
    return [c.tolist() for c in out.completions()]


# ----------------------------------------------------------------------------- schedule
@settings(max_examples=25, deadline=None)
@given(L=st.integers(1, 8), data=st.data())
def test_linear_schedule_is_non_increasing_and_bounded(L, data):
    lo = data.draw(st.integers(1, L))
    hi = data.draw(st.integers(lo, L))
    horizon = data.draw(st.integers(1, 40))
    n = np.asarray(linear_schedule(lo, hi, horizon, 50))
    assert n[0] == hi
    assert np.all(np.diff(n) <= 0)
    assert n.min() >= lo and n.max() <= hi
    assert np.all(n[horizon:] == lo)
    # reference formula of the paper, in plain Python
    ref = [max(lo, hi - ((hi - lo) * s) // horizon) for s in range(50)]
    np.testing.assert_array_equal(n, ref)


@settings(max_examples=25, deadline=None)
@given(L=st.integers(1, 8), data=st.data())
def test_active_layer_sets_are_nested_and_skip_lower_middle_layers(L, data):
    w = data.draw(st.integers(0, L))
    ns = list(range(max(w, 1), L + 1))
    sets = {n: np.asarray(active_layers(n, w, L)) for n in ns}
    for n in ns:
        s = sets[n]
        assert s.sum() == n
        assert s[:w].all()  # warm-up layers always run
        if n > w:
            assert s[L - 1]  # the top layer runs: upper layers are kept, lower-middle ones skipped
        for m in ns:
            if m <= n:  # fewer active layers: a subset, so every layer run later also ran earlier
                assert not np.any(sets[m] & ~s)


# ----------------------------------------------------------------------------- decoding
def test_all_layers_schedule_equals_plain_greedy(model):
    plain = generate(model, PROMPTS, max_new_tokens=12, logits=greedy())
    skip = generate(model, PROMPTS, max_new_tokens=12, logits=greedy(), strategy=skipdecode())
    assert _rows(skip) == _rows(plain)
    assert skip.stats["forward_calls"] == plain.stats["forward_calls"]


def test_skipping_changes_output_and_runtime_hparams_do_not_recompile(model):
    from tokjax.decoding.driver import TRACE_COUNTS

    plain = generate(model, PROMPTS, max_new_tokens=12, logits=greedy())
    a = generate(model, PROMPTS, max_new_tokens=12, logits=greedy(), strategy=skipdecode(1, 4, 4))
    before = TRACE_COUNTS["decode_loop"]
    b = generate(model, PROMPTS, max_new_tokens=12, logits=greedy(), strategy=skipdecode(2, 3, 6, warmup=1))
    assert TRACE_COUNTS["decode_loop"] == before  # min/max/horizon/warmup are runtime values
    assert _rows(a) != _rows(plain)  # skipping layers of a random model does change the tokens
    assert _rows(a) != _rows(b)


# --------------------------------------------------- proof: no step reads an unwritten KV slot
@dataclasses.dataclass(frozen=True)
class Poisoned:
    """Wraps a strategy: before every step, every cache slot beyond each layer's length gets huge garbage KV."""

    inner: object
    slack: int = 0
    max_accept: int = 1

    def validate(self, cfg):
        self.inner.validate(cfg)

    def init(self, params, cfg, state):
        return self.inner.init(params, cfg, state)

    def step(self, params, cfg, transform, state, eos_id=None):
        def blow_up(path, a):  # keys/values 300x too large: any visible garbage slot dominates attention
            return a * 300.0 if getattr(path[-1], "key", None) in ("wk", "wv") else a

        bad = jax.tree_util.tree_map_with_path(blow_up, params)
        cache = state.cache
        B, S = cache.batch, cache.capacity
        junk = jax.random.normal(jax.random.fold_in(jax.random.key(7), state.step), (B, S, cfg.d_model))
        # Written through the public API at each layer's own length (so only unwritten/stale slots
        # change), then every layer's length is restored: no valid slot is touched.
        out = forward(bad, cfg, Inputs(embeds=junk, positions=jnp.zeros((B, S), jnp.int32)), cache=cache,
                      compute_logits=False)
        poisoned = out.cache.replace(lengths=cache.lengths)
        return self.inner.step(params, cfg, transform, state.replace(cache=poisoned), eos_id)


class _Lying(SkipDecode):
    """A broken SkipDecode: accepts an increasing schedule and marks skipped layers' slots as written."""

    def validate(self, cfg):
        return None

    def step(self, params, cfg, transform, state, eos_id=None):
        state = super().step(params, cfg, transform, state, eos_id)
        return state.replace(cache=state.cache.set_lengths(state.lengths - 1))


def test_no_step_reads_an_unwritten_cache_slot(model):
    for strat in (skipdecode(1, 4, 5, warmup=1), skipdecode(schedule=[4, 3, 3, 2, 2, 1], warmup=0),
                  skipdecode(2, 4, 3, warmup=2)):
        clean = generate(model, PROMPTS, max_new_tokens=12, logits=greedy(), strategy=strat)
        dirty = generate(model, PROMPTS, max_new_tokens=12, logits=greedy(), strategy=Poisoned(strat))
        assert _rows(dirty) == _rows(clean)


def test_poison_detects_reads_of_unwritten_slots(model):
    # Control: a layer that skipped earlier positions but later runs (increasing schedule), with
    # lengths that claim the skipped slots were written, reads unwritten KV; the poisoned run then
    # diverges. Shows the proof above has teeth.
    bad = _Lying(schedule=(2, 2, 2, 4, 4, 4, 4, 4, 4, 4, 4, 4), warmup=1)
    clean = generate(model, PROMPTS, max_new_tokens=12, logits=greedy(), strategy=bad)
    dirty = generate(model, PROMPTS, max_new_tokens=12, logits=greedy(), strategy=Poisoned(bad))
    assert _rows(dirty) != _rows(clean)


def _drive(model, prompts, strategy, steps):
    """Returns the per-step cache lengths [steps + 1, L, B] and pending positions [steps + 1, B] of a manual decode."""
    cfg, params = model.cfg, model.params
    B = len(prompts)
    lens = np.array([len(p) for p in prompts], np.int32)
    P = int(lens.max())
    buf = np.zeros((B, P + steps), np.int32)
    for b, p in enumerate(prompts):
        buf[b, : len(p)] = p
    cache = KVCache.init(cfg, B, P + steps)
    cache = forward(params, cfg, Inputs(tokens=jnp.asarray(buf[:, :P])), cache=cache, compute_logits=False).cache
    transform = greedy()
    state = DecodeState(
        tokens=jnp.asarray(buf), lengths=jnp.asarray(lens), prompt_lengths=jnp.asarray(lens),
        max_lengths=jnp.asarray(lens + steps), done=jnp.zeros((B,), bool), cache=cache.set_lengths(lens - 1),
        logit_state=transform.init(B), key=jax.random.key(0), step=jnp.zeros((), jnp.int32),
        stats=DecodeStats.init(B, 1),
    )
    state = state.replace(extra=strategy.init(params, cfg, state))
    step = jax.jit(lambda s: strategy.step(params, cfg, transform, s).replace(step=s.step + 1))
    lengths, pos = [np.asarray(state.cache.lengths)], [np.asarray(state.lengths) - 1]
    for _ in range(steps):
        state = step(state)
        lengths.append(np.asarray(state.cache.lengths))
        pos.append(np.asarray(state.lengths) - 1)
    return np.stack(lengths), np.stack(pos), state


@pytest.mark.slow  # default-suite time; the file's other tests keep the method covered in the default suite
def test_per_layer_lengths_track_exactly_the_positions_each_layer_ran(model):
    L = model.cfg.n_layers
    strat = skipdecode(1, 4, 6, warmup=1)
    steps = 10
    lengths, pos, _ = _drive(model, PROMPTS, strat, steps)
    counts = np.asarray(strat.counts(model.cfg, steps))
    written = [[set(range(p - 1)) for p in map(len, PROMPTS)] for _ in range(L)]  # prefill wrote 0..P-2
    for s in range(steps):
        run = np.asarray(active_layers(counts[s], 1, L))
        for layer in range(L):
            for b in range(len(PROMPTS)):
                before, after, p = lengths[s, layer, b], lengths[s + 1, layer, b], pos[s, b]
                if run[layer]:
                    # the layer reads slots 0..p-1 (+ its own new slot p): all of them were written by it
                    assert before == p and set(range(p)) <= written[layer][b]
                    assert after == p + 1
                    written[layer][b].add(p)
                else:
                    assert after == before <= p  # a skipped layer writes nothing and claims nothing
    # every layer's written slots are a prefix: no hole that a later position could hit
    for layer in range(L):
        for b in range(len(PROMPTS)):
            w = written[layer][b]
            assert w == set(range(len(w)))


# ------------------------------------------------------------------ training-time transform
@functools.partial(jax.jit, static_argnames="cfg")
def _skip_forward_argmax(params, cfg, tokens, prompt_lengths, counts):
    """Returns (argmax [B, T], mask mean) of the no-cache training forward under the skip schedule (warmup 1)."""
    mask = layer_mask(counts, 1, cfg.n_layers, tokens.shape[1], prompt_lengths)
    logits = forward(params, cfg, Inputs(tokens=tokens), hooks=skip_hooks(mask)).logits
    return jnp.argmax(logits, -1), mask.mean()


def test_training_forward_with_schedule_reproduces_skip_decoding(model):
    strat = skipdecode(1, 4, 5, warmup=1)
    out = generate(model, PROMPTS, max_new_tokens=12, logits=greedy(), strategy=strat)
    P = np.asarray(out.prompt_lengths)
    T = out.tokens.shape[1] - 1
    pred, frac = _skip_forward_argmax(model.params, model.cfg, jnp.asarray(out.tokens[:, :-1]), jnp.asarray(P),
                                      strat.counts(model.cfg, T))
    pred = np.asarray(pred)
    for b in range(len(PROMPTS)):
        seq = out.tokens[b, : out.lengths[b]]
        # teacher-forced under the same schedule = the skip-decoded tokens
        np.testing.assert_array_equal(pred[b, P[b] - 1: out.lengths[b] - 1], seq[P[b]:])
    assert float(frac) < 0.9  # the mask does skip layers (else the check above is plain decoding)


def test_skipdecode_loss_with_all_layers_equals_plain_next_token_loss(model):
    from tokjax.train import next_token_loss

    cfg = model.cfg
    toks = jax.random.randint(jax.random.key(3), (2, 12), 0, cfg.vocab_size)

    @jax.jit
    def losses(params):
        full, _ = skipdecode_loss(skipdecode())(params, cfg, {"tokens": toks})
        ref, _ = next_token_loss(params, cfg, {"tokens": toks})
        skip_fn = skipdecode_loss(skipdecode(1, 4, 4), prompt_length=3)
        (skip, m), g = jax.value_and_grad(lambda p: skip_fn(p, cfg, {"tokens": toks}), has_aux=True)(params)
        return full, ref, skip, m["accuracy"], g

    full, ref, skip, acc, g = losses(model.params)
    np.testing.assert_allclose(float(full), float(ref), rtol=1e-5)
    assert abs(float(skip) - float(ref)) > 1e-3 and np.isfinite(float(skip)) and 0 <= float(acc) <= 1
    assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(g))


def test_outputs_match_those_recorded_before_the_shared_primitives(model):
    # recorded with the pre-issue-12 code (hand-written log-softmax in skipdecode_loss)
    rec = np.load(Path(__file__).parent / "fixtures" / "methods_before_issue12.npz")
    prompts = [[3, 14, 15, 9, 2, 6], [5], [8, 9, 7, 9, 3, 2, 3, 8, 4]]
    out = generate(model, prompts, max_new_tokens=12, logits=greedy(), strategy=skipdecode(1, 4, 5, warmup=1))
    np.testing.assert_array_equal(np.asarray(out.tokens), rec["skip_tokens"])
    np.testing.assert_array_equal(np.asarray(out.lengths), rec["skip_lengths"])
    loss_fn = skipdecode_loss(skipdecode(1, 4, 4), prompt_length=3)
    toks = jnp.asarray(rec["skip_loss_tokens"])
    _, m = jax.jit(lambda p, t: loss_fn(p, model.cfg, {"tokens": t}))(model.params, toks)
    for k, v in m.items():
        np.testing.assert_allclose(float(v), float(rec[f"skip_loss_{k}"]), rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------- bad inputs
def test_bad_inputs_raise_clear_errors(model):
    with pytest.raises(ValueError, match="non-increasing"):
        skipdecode(schedule=[2, 3, 1])
    with pytest.raises(ValueError, match="min_layers .* must not exceed"):
        skipdecode(3, 2)
    with pytest.raises(ValueError, match="horizon"):
        skipdecode(1, 2, 0)
    with pytest.raises(ValueError, match="schedule counts must lie"):
        skipdecode(schedule=[2, 0])
    with pytest.raises(ValueError, match="n_layers"):  # more layers than the model has
        generate(model, PROMPTS, max_new_tokens=3, logits=greedy(), strategy=skipdecode(1, 5))
    with pytest.raises(ValueError, match="schedule counts must lie"):
        generate(model, PROMPTS, max_new_tokens=3, logits=greedy(), strategy=skipdecode(schedule=[6, 2]))
    with pytest.raises(ValueError, match="warmup"):
        generate(model, PROMPTS, max_new_tokens=3, logits=greedy(), strategy=skipdecode(1, 4, warmup=2))
    with pytest.raises(ValueError, match="1-D"):
        skipdecode(schedule=[[4, 3]])
