"""Speculative decoding: greedy equality with plain decoding, sampling losslessness (chi-square), bad input.

The chi-square harness (``joint_first3`` / ``exact_first3`` / ``chi_square_pvalue``) is shared
with test_spectr.py. Its power is checked directly: samples from a distribution 2% (total
variation) away from the exact one must fail it.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats as sstats

import tokjax
from tokjax import forward, generate
from tokjax import logits as L
from tokjax.decoding import drafts, verify
from tokjax.decoding.speculative import Draft, speculative
from tests.model._models import small_model

MODEL = small_model(seed=3)  # V=61, 3 layers
V = MODEL.cfg.vocab_size


def perturbed(model, scale, seed):
    """Returns a copy of ``model`` with Gaussian noise on every parameter (a draft that mostly agrees)."""
    leaves, tree = jax.tree.flatten(model.params)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    noisy = [x + scale * jnp.std(x) * jax.random.normal(k, x.shape, x.dtype) for x, k in zip(leaves, keys)]
    return tokjax.Model(params=jax.tree.unflatten(tree, noisy), cfg=model.cfg)


DRAFT = perturbed(MODEL, 0.3, seed=11)


def ragged_prompts(n, seed=0, lo=1, hi=10):
    rng = np.random.default_rng(seed)
    # Repeated spans give prompt lookup something to find.
    out = []
    for _ in range(n):
        base = rng.integers(0, V, size=int(rng.integers(lo, hi + 1))).tolist()
        out.append((base * 2)[: max(lo, len(base) + int(rng.integers(0, len(base) + 1)))])
    return out


PROMPTS = ragged_prompts(100)
_REF = {}


def greedy_reference(transform_name="greedy", eos_id=None):
    key = (transform_name, eos_id)
    if key not in _REF:
        t = L.greedy() if transform_name == "greedy" else L.chain(L.repetition_penalty(1.5), L.greedy())
        _REF[key] = generate(MODEL, PROMPTS, max_new_tokens=14, logits=t, eos_id=eos_id)
    return _REF[key]


DRAFTS = {"prompt_lookup": lambda: drafts.prompt_lookup(max_ngram=2, num_draft=4), "model": lambda: drafts.model(DRAFT, num_draft=3)}
VERIFIERS = {"greedy": verify.greedy, "rejection": verify.rejection, "tree": verify.tree}


SLOW = {("prompt_lookup", "rejection"), ("model", "tree"), ("model", "rejection")}  # same code paths as the default combinations


@pytest.mark.parametrize(
    "draft_name,verifier_name",
    [pytest.param(d, v, marks=[pytest.mark.slow] if (d, v) in SLOW else []) for d in sorted(DRAFTS) for v in sorted(VERIFIERS)],
)
def test_greedy_speculative_equals_plain_greedy_on_100_ragged_prompts(draft_name, verifier_name):
    ref = greedy_reference()
    strategy = speculative(DRAFTS[draft_name](), VERIFIERS[verifier_name]())
    out = generate(MODEL, PROMPTS, key=jax.random.key(0), max_new_tokens=14, logits=L.greedy(), strategy=strategy)
    np.testing.assert_array_equal(out.lengths, ref.lengths)
    np.testing.assert_array_equal(out.tokens, ref.tokens)
    s = out.stats
    assert s["tokens_per_call"] > 1.05, s  # something was accepted
    assert len(s["position_acceptance"]) == strategy.max_accept - 1
    assert all(0.0 <= a <= 1.0 for a in s["position_acceptance"])
    if draft_name == "model":
        assert s["draft_layer_evals"] == s["forward_calls"] * 3 * MODEL.cfg.n_layers


@pytest.mark.slow  # default-suite time; the file's other tests keep the method covered in the default suite
def test_eos_and_repetition_penalty_are_exact_under_speculation():
    # eos inside an accepted draft stops the row there; a context-dependent transform is applied with each node's context.
    ref = greedy_reference()
    eos = int(np.bincount(np.concatenate(ref.completions())).argmax())
    assert any(eos in c[:-1].tolist() for c in ref.completions())  # eos really occurs mid-sequence
    strategy = speculative(drafts.model(DRAFT, num_draft=3), verify.rejection())
    want = greedy_reference("penalty", eos_id=eos)
    t = L.chain(L.repetition_penalty(1.5), L.greedy())
    out = generate(MODEL, PROMPTS, key=jax.random.key(0), max_new_tokens=14, logits=t, strategy=strategy, eos_id=eos)
    np.testing.assert_array_equal(out.tokens, want.tokens)
    assert (want.lengths < ref.lengths).any() and out.stats["tokens_per_call"] > 1.05


def test_self_draft_accepts_everything_and_stats_add_up():
    strategy = speculative(drafts.model(MODEL, num_draft=3), verify.rejection())  # same compile as the model tests
    out = generate(MODEL, PROMPTS, key=jax.random.key(0), max_new_tokens=14, logits=L.greedy(), strategy=strategy)
    np.testing.assert_array_equal(out.tokens, greedy_reference().tokens)
    s = out.stats
    # 14 tokens = 4 + 4 + 4 + 2 (the budget cuts the last step)
    assert s["forward_calls"] == 4 and s["tokens_per_call"] == 3.5
    assert s["position_acceptance"] == [1.0, 1.0, 1.0] and s["accepted_histogram"] == [0, 100, 0, 300]


# ----------------------------------------------------------------------------- sampling
TINY = tokjax.Model.init(
    tokjax.ModelConfig(vocab_size=4, d_model=16, n_layers=1, n_heads=2, max_len=16, init_scale=0.8), jax.random.key(2)
)
TINY_DRAFT = perturbed(TINY, 1.0, seed=5)
TINY_PROMPT = [1, 3, 0]


def exact_first3(model, prompt, transform):
    """Returns float64 [V**3]: the exact law of the first three sampled tokens (transform applied in context)."""
    Vt = model.cfg.vocab_size
    P = len(prompt)
    grid = np.array(np.meshgrid(np.arange(Vt), np.arange(Vt), indexing="ij")).reshape(2, -1).T  # [V^2, 2]
    seqs = np.concatenate([np.tile(prompt, (len(grid), 1)), grid], axis=1).astype(np.int32)
    logits = forward(model.params, model.cfg, jnp.asarray(seqs)).logits  # [V^2, P+2, V]
    probs = []
    for j in range(3):
        ctx = L.LogitContext(tokens=jnp.asarray(seqs), lengths=jnp.full((len(seqs),), P + j, jnp.int32), step=jnp.int32(j))
        lj, _ = transform.apply(logits[:, P - 1 + j], transform.init(len(seqs)), ctx)
        probs.append(np.asarray(jax.nn.softmax(lj, axis=-1), np.float64))
    p1 = probs[0][0]
    p2 = probs[1][np.arange(Vt) * Vt]  # rows whose x1 = a (x2 arbitrary): [V, V]
    p3 = probs[2].reshape(Vt, Vt, Vt)
    joint = p1[:, None, None] * p2[:, :, None] * p3
    return joint.reshape(-1)


def joint_first3(out, prompt_len, vocab):
    """Returns int [V**3] counts of the first three generated tokens of every row."""
    toks = out.tokens[:, prompt_len:prompt_len + 3].astype(np.int64)
    assert (out.lengths == prompt_len + 3).all()
    return np.bincount((toks[:, 0] * vocab + toks[:, 1]) * vocab + toks[:, 2], minlength=vocab**3)


def chi_square_pvalue(counts, probs, min_expected=5.0):
    """Returns the chi-square goodness-of-fit p-value of counts against probs (cells with small expectation merged)."""
    n = counts.sum()
    exp = n * probs
    small = exp < min_expected
    obs_c = np.append(counts[~small], counts[small].sum())
    exp_c = np.append(exp[~small], exp[small].sum())
    keep = exp_c > 0
    obs_c, exp_c = obs_c[keep], exp_c[keep]
    stat = ((obs_c - exp_c) ** 2 / exp_c).sum()
    return float(sstats.chi2.sf(stat, df=len(exp_c) - 1))


def shifted_by(probs, tv, seed=0):
    """Returns a distribution at total-variation distance ``tv`` from probs, spread smoothly over all cells."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(probs))
    sign = np.zeros(len(probs))
    up = down = 0.0
    for i in order:  # balance the mass moved up and down
        if up <= down:
            sign[i], up = 1.0, up + probs[i]
        else:
            sign[i], down = -1.0, down + probs[i]
    eps_up, eps_down = tv / up, tv / down
    return probs * (1 + np.where(sign > 0, eps_up, -eps_down))


def sample_spec(strategy, transform, n, seed):
    out = generate(TINY, [TINY_PROMPT] * n, key=jax.random.key(seed), max_new_tokens=3, logits=transform, strategy=strategy)
    return joint_first3(out, len(TINY_PROMPT), 4)


N_FAST = 48_000  # detects a smooth 2% TV shift of this 64-cell law (see the power test)
TRANSFORMS = {
    "t0.7": L.temperature(0.7),
    "t1.0": L.temperature(1.0),
    "top_p": L.chain(L.temperature(0.7), L.top_p(0.8)),
}


def test_chi_square_harness_detects_a_2_percent_deviation():
    probs = exact_first3(TINY, TINY_PROMPT, TRANSFORMS["t1.0"])
    rng = np.random.default_rng(0)
    fails = [chi_square_pvalue(rng.multinomial(N_FAST, shifted_by(probs, 0.02, seed=s)), probs) < 1e-3 for s in range(10)]
    passes = [chi_square_pvalue(rng.multinomial(N_FAST, probs), probs) >= 1e-3 for _ in range(10)]
    assert sum(fails) >= 9 and all(passes), (fails, passes)


@pytest.mark.parametrize("tname", [pytest.param("t0.7", marks=pytest.mark.slow), "t1.0", pytest.param("top_p", marks=pytest.mark.slow)])
def test_rejection_sampling_preserves_the_joint_law_of_three_tokens(tname):
    strategy = speculative(drafts.model(TINY_DRAFT, num_draft=2), verify.rejection())
    probs = exact_first3(TINY, TINY_PROMPT, TRANSFORMS[tname])
    counts = sample_spec(strategy, TRANSFORMS[tname], N_FAST, seed=1)
    assert chi_square_pvalue(counts, probs) > 1e-3


@pytest.mark.slow  # default-suite time; the file's other tests keep the method covered in the default suite
def test_tree_verifier_over_two_chains_preserves_the_joint_law():
    strategy = speculative(drafts.model(TINY_DRAFT, num_draft=2, num_chains=2), verify.tree())
    probs = exact_first3(TINY, TINY_PROMPT, TRANSFORMS["t1.0"])
    assert chi_square_pvalue(sample_spec(strategy, TRANSFORMS["t1.0"], N_FAST, seed=2), probs) > 1e-3


@pytest.mark.slow
def test_plain_sampling_matches_the_exact_law():  # the harness itself
    probs = exact_first3(TINY, TINY_PROMPT, TRANSFORMS["top_p"])
    assert chi_square_pvalue(sample_spec(None, TRANSFORMS["top_p"], N_FAST, seed=3), probs) > 1e-3


@dataclasses.dataclass(frozen=True)
class Biased:
    """A deliberately wrong verifier: accepts with min(1, 1.1 p/q), or resamples from p instead of the residual."""

    kind: str
    lossless: bool = False

    def verify(self, key, draft, target_logits):
        if self.kind == "scale":
            return verify.recursive_rejection(key, draft, target_logits, first_child_only=True, accept_scale=1.1)
        return verify.recursive_rejection(key, draft, target_logits, first_child_only=True, residual_from_target=True)


@pytest.mark.parametrize("kind", ["scale", pytest.param("residual", marks=pytest.mark.slow)])
def test_a_biased_verifier_fails_the_same_test(kind):
    strategy = speculative(drafts.model(TINY_DRAFT, num_draft=2), Biased(kind))
    probs = exact_first3(TINY, TINY_PROMPT, TRANSFORMS["t1.0"])
    assert chi_square_pvalue(sample_spec(strategy, TRANSFORMS["t1.0"], N_FAST, seed=1), probs) < 1e-3


@pytest.mark.slow
@pytest.mark.parametrize("tname", sorted(TRANSFORMS))
@pytest.mark.parametrize("which", ["rejection_pl", "tree_model", "rejection_model"])
def test_sampling_losslessness_large(tname, which):
    src = drafts.prompt_lookup(1, 3) if which == "rejection_pl" else drafts.model(TINY_DRAFT, num_draft=3)
    ver = verify.tree() if which == "tree_model" else verify.rejection()
    probs = exact_first3(TINY, TINY_PROMPT, TRANSFORMS[tname])
    counts = sample_spec(speculative(src, ver), TRANSFORMS[tname], 150_000, seed=4)
    assert chi_square_pvalue(counts, probs) > 1e-4


# ---------------------------------------------------------------------------- bad input
def test_bad_input_raises_clear_errors():
    with pytest.raises(ValueError, match="num_draft"):
        speculative(drafts.prompt_lookup(2, 4), verify.greedy(), num_draft=0)
    with pytest.raises(ValueError, match="num_draft"):
        drafts.prompt_lookup(2, 0)
    with pytest.raises(ValueError, match="max_ngram"):
        drafts.prompt_lookup(0, 3)
    with pytest.raises(ValueError, match="num_draft"):
        drafts.model(DRAFT, num_draft=0)
    with pytest.raises(ValueError, match="DraftSource"):
        speculative(object(), verify.greedy())
    with pytest.raises(ValueError, match="Verifier"):
        speculative(drafts.prompt_lookup(), object())
    other_vocab = small_model(seed=1, vocab_size=V + 1)
    with pytest.raises(ValueError, match="vocabulary"):
        generate(MODEL, [[1, 2]], max_new_tokens=3, logits=L.greedy(), strategy=speculative(drafts.model(other_vocab, num_draft=2), verify.greedy()))
    with pytest.raises(ValueError, match="greedy"):
        generate(MODEL, [[1, 2]], key=jax.random.key(0), max_new_tokens=3, logits=L.temperature(0.7),
                 strategy=speculative(drafts.prompt_lookup(), verify.greedy()))


def test_num_draft_override_and_stateful_transform_error():
    s = speculative(drafts.prompt_lookup(2, 4), verify.tree(), num_draft=6)
    assert s.draft.num_nodes == 6 and s.slack == 7 and s.max_accept == 7

    @dataclasses.dataclass(frozen=True)
    class Counting(L.LogitTransform):
        def init(self, batch):
            return jnp.zeros((batch,), jnp.int32)

        def apply(self, logits, state, ctx):
            return logits, state + 1

    with pytest.raises(ValueError, match="state"):
        generate(MODEL, [[1, 2]], key=jax.random.key(0), max_new_tokens=3, logits=Counting(),
                 strategy=speculative(drafts.prompt_lookup(), verify.rejection()))


def test_prompt_lookup_proposes_the_first_match_of_the_longest_ngram():
    # context 5 6 7 | 9 5 6 8 | 5 6 : the bigram "5 6" first occurs at 0 -> propose 7 9 5 6
    toks = jnp.asarray([[5, 6, 7, 9, 5, 6, 8, 5, 6, 0, 0, 0]], jnp.int32)
    state = tokjax.decoding.DecodeState(
        tokens=toks, lengths=jnp.array([9]), prompt_lengths=jnp.array([9]), max_lengths=jnp.array([12]),
        done=jnp.array([False]), cache=None, logit_state=(), key=jax.random.key(0), step=jnp.int32(0), stats=None,
    )
    d, _ = drafts.prompt_lookup(2, 6).propose(None, MODEL.cfg, state, None, None, None)
    assert d.tokens[0, :6].tolist() == [7, 9, 5, 6, 8, 5] and d.valid[0].tolist() == [True] * 6
    d, _ = drafts.prompt_lookup(2, 8).propose(None, MODEL.cfg, state, None, None, None)
    assert d.valid[0].tolist() == [True] * 7 + [False]  # cut at the end of the context
    none = state.replace(tokens=jnp.asarray([[1, 2, 3, 4, 0, 0, 0, 0, 0, 0, 0, 0]]), lengths=jnp.array([4]))
    d, _ = drafts.prompt_lookup(2, 3).propose(None, MODEL.cfg, none, None, None, None)
    assert not d.valid.any()


@pytest.mark.slow  # default-suite time; the other tests of this file keep the method covered
def test_learned_positions_up_to_max_len_stay_finite_and_lossless():
    """Draft nodes past a row's budget get positions beyond max_len; they must not poison the cache with NaN."""
    model = small_model(positions="learned", norm="layer", activation="gelu", max_len=20)
    rng = np.random.default_rng(3)
    prompts = [np.tile(rng.integers(1, model.cfg.vocab_size, 3), 3).tolist(), rng.integers(1, model.cfg.vocab_size, 5).tolist()]
    plain = generate(model, prompts, max_new_tokens=11, logits=L.greedy())
    strategy = speculative(drafts.prompt_lookup(max_ngram=2, num_draft=6), verify.greedy())
    spec = generate(model, prompts, max_new_tokens=11, logits=L.greedy(), strategy=strategy)
    np.testing.assert_array_equal(spec.tokens, plain.tokens)
    assert int(spec.lengths.max()) == model.cfg.max_len  # the budget ends exactly at max_len
