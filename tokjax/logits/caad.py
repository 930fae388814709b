"""CAAD / RAD (P1): retrieval-augmented logit shaping from a small grounding store of teacher-forced logits.

Paper: *CAAD: Context-Aware Adaptive Decoding for Truthful Text Generation*, published as *RAD:
Retrieval-Augmented Decoding* (ECML-PKDD 2026, arXiv 2508.02184; official code
``github.com/manhitv/DecodeHub``, method key ``rcd``: ``utils/generation.py::rcd_generation`` and
``database/datastore.py``, read for this module). Two stages:

**Grounding store G** (offline, :func:`caad_store`). Each (question, truthful answer) pair is run
teacher-forced through the chat template, ``x = chat(question)``, ``y = tokenize(answer)``; for
every answer position s = 1..m one entry is stored:

    key_s   = normalize(embed(last M tokens of x ++ y_<s)))           (M = window = 8)
    value_s = z_s = LLM(x ++ y)[|x| - 1 + s - 1]      full-vocabulary float32 logits predicting y_s

(the model's *own* logits in a truthful context, not a one-hot of y_s).

**Decoding** (:func:`caad`, a LogitTransform). At each step, with query q = normalize(embed(last M
tokens of the prefix)) and cosine similarities s_i = q . key_i:

    top-k by s_i (k = top_k, at most the store size);  keep the entries with s_i > tau
    r  = sum_i (s_i / sum_j s_j) value_i          agg="weighted" (default)
       = (1 / n) sum_i value_i                    agg="mean"
       = 0                                        when no entry passes
    z' = z + alpha r                              shaping="linear" (default)
       | (1 - alpha) z + alpha r                  shaping="delta"
       | log((1 - alpha) softmax(z) + alpha softmax(r))   shaping="prob_interp"       (P1, RAD)

then the next token is taken from z' (greedy in the paper: ``chain(caad(store), greedy())``).
Defaults as in the official code: alpha = 0.5, tau = 0.7, M = 8, weighted, linear, k = 2048.

Differences from the official code, on purpose:

* **Embedder.** The paper embeds the *decoded text* of the window with SBERT all-MiniLM-L6-v2,
  which is not available offline. The default here, :class:`HashedNgramEmbedder`, hashes the
  window's token unigrams and bigrams into a count vector (L2-normalised), computed inside the jit
  from the LogitContext (``ctx.tokens``, ``ctx.lengths``); special tokens count like any token.
  Any function ``(tokens [B, S] int, lengths [B] int) -> [B, Dk] float`` may replace it
  (``embedder=``); keys and queries are L2-normalised here in any case, so the score is a cosine.
* **Cosine index.** The official ``KNNDatastore`` defaults to ``faiss.IndexFlatL2`` and
  ``rcd_generation`` is called without ``use_cosine=True``, so there ``s`` is a squared L2
  distance (nearest first) and ``s > tau`` keeps the *farther* entries. The paper and README
  describe a cosine index with a similarity threshold; that is what is implemented.
* **Masked tokens stay masked.** A token whose input logit is ``-inf`` (banned by an earlier
  transform) stays ``-inf`` under every shaping; for ``prob_interp`` softmax(r) is taken over the
  row's unmasked tokens (identical to the formula when nothing is masked). The official code adds
  1e-8 inside the log of ``prob_interp``; this does not (the mixture is computed as a log-sum-exp).
  A row with every token masked stays all ``-inf`` (never NaN).
* The decode loop uses the KV cache (the reference recomputes the whole prefix every step).

``alpha`` and ``tau`` are runtime values (per-row float32 arrays in the transform state): a new
value does not recompile ``tokjax.generate``. The store's keys and values also live in the state
(with a leading axis of size 1, so row operations of the decode loop leave them alone), so a new
store of the same shapes does not recompile either. ``agg``, ``shaping``, ``top_k`` and the
embedder are static.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from tokjax.logits._base import LogitTransform, as_rows, check_int_option, check_range, hparam

__all__ = ["AGGREGATIONS", "SHAPINGS", "CAAD", "CAADStore", "HashedNgramEmbedder", "caad", "caad_retrieve",
           "caad_shape", "caad_store", "caad_store_ids", "hashed_ngram_embedder"]

AGGREGATIONS = ("weighted", "mean")
SHAPINGS = ("linear", "delta", "prob_interp")
DEFAULT_TOP_K = 2048  # the official search depth: k = min(top_n or 2048, 2048)
_F32 = jnp.float32
_EPS = 1e-12

# Odd 32-bit multipliers for the n-gram hash (any fixed odd constants work; these are well-mixed).
_M_UNI, _M_PREV, _M_CUR, _M_MIX1, _M_MIX2 = 0x9E3779B1, 0x85EBCA77, 0xC2B2AE3D, 0x7FEB352D, 0x846CA68B


def _mix32(h: jax.Array) -> jax.Array:
    """Returns a uint32 avalanche of ``h`` (uint32): lowbias32 (xor-shift-multiply)."""
    h = h ^ (h >> 16)
    h = h * jnp.uint32(_M_MIX1)
    h = h ^ (h >> 15)
    h = h * jnp.uint32(_M_MIX2)
    return h ^ (h >> 16)


def _window(tokens: jax.Array, lengths: jax.Array, window: int) -> tuple[jax.Array, jax.Array]:
    """Returns (ids [B, window] int32, valid [B, window] bool): the last ``window`` tokens before ``lengths``
    (right-aligned; slots before the start of a short row are invalid)."""
    tokens = jnp.asarray(tokens)
    lengths = jnp.asarray(lengths, jnp.int32)
    S = tokens.shape[1]
    idx = lengths[:, None] - window + jnp.arange(window, dtype=jnp.int32)[None, :]
    valid = (idx >= 0) & (idx < S)
    ids = jnp.take_along_axis(tokens, jnp.clip(idx, 0, S - 1), axis=1).astype(jnp.int32)
    return ids, valid


@dataclasses.dataclass(frozen=True)
class HashedNgramEmbedder:
    """The default CAAD embedder: hashed token uni- and bigram counts of the last ``window`` ids, L2-normalised.

    ``__call__(tokens [B, S] int, lengths [B] int) -> float32 [B, dim]``: the window is
    ``tokens[b, lengths[b] - window : lengths[b]]`` (fewer tokens when the row is shorter). Each
    unigram t adds 1 at bucket hash(t) and each adjacent pair (t', t) inside the window 1 at
    bucket hash(t', t) (``dim`` buckets, a separate hash for the two kinds). A row with no valid
    token is the zero vector (cosine 0 to every key, never NaN). Pure and jit-compatible; a frozen
    dataclass, so equal embedders are equal static arguments.
    """

    window: int = 8
    dim: int = 2048

    def __post_init__(self):
        check_int_option(self.window, "window", lo=1)
        check_int_option(self.dim, "dim", lo=1)

    def __call__(self, tokens: jax.Array, lengths: jax.Array) -> jax.Array:
        ids, valid = _window(tokens, lengths, self.window)
        u = ids.astype(jnp.uint32)
        uni = _mix32(u * jnp.uint32(_M_UNI) + jnp.uint32(1)) % jnp.uint32(self.dim)
        bi = _mix32(u[:, :-1] * jnp.uint32(_M_PREV) + (u[:, 1:] ^ jnp.uint32(_M_CUR))) % jnp.uint32(self.dim)
        bi_valid = valid[:, :-1] & valid[:, 1:]
        B = ids.shape[0]
        buckets = jnp.concatenate([uni, bi], axis=1).astype(jnp.int32)
        weights = jnp.concatenate([valid, bi_valid], axis=1).astype(_F32)
        rows = jnp.broadcast_to(jnp.arange(B)[:, None], buckets.shape)
        v = jnp.zeros((B, self.dim), _F32).at[rows, buckets].add(weights)
        return _normalize(v)


def hashed_ngram_embedder(window: int = 8, dim: int = 2048) -> HashedNgramEmbedder:
    """Returns the default CAAD embedder (hashed uni/bigrams of the last ``window`` token ids, ``dim`` buckets)."""
    return HashedNgramEmbedder(window=window, dim=dim)


def _normalize(x: jax.Array) -> jax.Array:
    x = jnp.asarray(x, _F32)
    return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), _EPS)


def _check_embedder(embedder) -> None:
    if not callable(embedder):
        raise ValueError(f"embedder must be a function (tokens [B, S], lengths [B]) -> [B, Dk], got {embedder!r}")
    try:
        hash(embedder)
    except TypeError:
        raise ValueError("embedder must be hashable (a function or a frozen dataclass): it is a static argument "
                         f"of the decode loop, got {type(embedder).__name__}") from None


# --------------------------------------------------------------------------------------- the store
@dataclasses.dataclass(frozen=True, eq=False)
class CAADStore:
    """The P1 grounding store G: ``keys`` float32 [N, Dk] (L2-normalised on construction), ``values`` float32
    [N, V] (full-vocabulary logits), the ``embedder`` that made the keys (queries must use the same one),
    and optionally ``next_tokens`` int32 [N] (the answer token each value predicted) and ``window``.

    Build one with :func:`caad_store` (from (question, answer) text pairs) or :func:`caad_store_ids`
    (from token ids), or directly from arrays. Raises ValueError for an empty store, shapes that
    disagree, or non-finite values.
    """

    keys: jax.Array
    values: jax.Array
    embedder: Callable = dataclasses.field(default_factory=HashedNgramEmbedder)
    next_tokens: jax.Array | None = None
    window: int | None = None

    def __post_init__(self):
        keys = np.asarray(self.keys, np.float32)
        values = np.asarray(self.values, np.float32)
        if keys.ndim != 2 or values.ndim != 2:
            raise ValueError(f"CAADStore keys must be [N, Dk] and values [N, V], got shapes {keys.shape} and "
                             f"{values.shape}")
        if keys.shape[0] == 0 or values.shape[0] == 0:
            raise ValueError("CAADStore is empty (no entries): build it from at least one (question, answer) pair "
                             "with a non-empty answer")
        if keys.shape[0] != values.shape[0]:
            raise ValueError(f"CAADStore keys and values must have one row per entry, got {keys.shape[0]} keys and "
                             f"{values.shape[0]} values")
        if values.shape[1] < 2 or keys.shape[1] < 1:
            raise ValueError(f"CAADStore values need V >= 2 and keys Dk >= 1, got shapes {keys.shape}, {values.shape}")
        if not np.all(np.isfinite(values)) or not np.all(np.isfinite(keys)):
            raise ValueError("CAADStore keys and values must be finite (no NaN / inf logits)")
        _check_embedder(self.embedder)
        object.__setattr__(self, "keys", _normalize(jnp.asarray(keys)))
        object.__setattr__(self, "values", jnp.asarray(values))
        if self.next_tokens is not None:
            nt = np.asarray(self.next_tokens)
            if nt.shape != (keys.shape[0],):
                raise ValueError(f"CAADStore next_tokens must be [N={keys.shape[0]}], got shape {nt.shape}")
            object.__setattr__(self, "next_tokens", jnp.asarray(nt, jnp.int32))

    def __len__(self) -> int:
        return int(self.keys.shape[0])

    @property
    def vocab_size(self) -> int:
        """Returns V, the vocabulary of the stored logits (the model's)."""
        return int(self.values.shape[1])


def _prefix_embed_jit(embedder):
    return jax.jit(lambda t, n: embedder(t, n))


def _teacher_forced_logits(model, tokens: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """Returns float32 [B, P, V]: the shared forward's logits of ``tokens`` [B, T] read at ``positions`` [B, P]."""
    return np.asarray(_gather_logits(model.params, jnp.asarray(tokens), jnp.asarray(positions), cfg=model.cfg))


def _gather_logits_impl(params, tokens, positions, *, cfg):
    from tokjax.model import forward, unembed

    out = forward(params, cfg, tokens, compute_logits=False)
    h = jnp.take_along_axis(out.hidden, positions[:, :, None], axis=1)  # [B, P, D], final-normed
    return unembed(params, cfg, h)


_gather_logits = jax.jit(_gather_logits_impl, static_argnames=("cfg",))


def _bucket(n: int) -> int:
    return max(8, 1 << max(int(n) - 1, 0).bit_length())


def caad_store_ids(model, prompts: Sequence[Sequence[int]], answers: Sequence[Sequence[int]], *, window: int = 8,
                   embedder: Callable | None = None, batch_size: int = 16) -> CAADStore:
    """Returns the P1 grounding store of teacher-forced (prompt, answer) token-id pairs.

    For pair j and answer position s: key = embedder(prompt ++ answer[:s]) (default
    :class:`HashedNgramEmbedder` over the last ``window`` ids), value = the model's float32 logits
    predicting ``answer[s]`` (the shared forward, batched ``batch_size`` pairs at a time; only the
    answer positions are unembedded). ``model`` is a ``tokjax.Model``. Raises ValueError for
    ``window < 1``, mismatched lists, empty prompts, ids outside the vocabulary, or when no pair has
    a non-empty answer (an empty store).
    """
    window = check_int_option(window, "window", lo=1)
    batch_size = check_int_option(batch_size, "batch_size", lo=1)
    embedder = HashedNgramEmbedder(window=window) if embedder is None else embedder
    _check_embedder(embedder)
    cfg = getattr(model, "cfg", None)
    if cfg is None or not hasattr(model, "params"):
        raise ValueError(f"caad_store needs a tokjax.Model (params and cfg), got {type(model).__name__}")
    prompts, answers = [list(map(int, p)) for p in prompts], [list(map(int, a)) for a in answers]
    if len(prompts) != len(answers):
        raise ValueError(f"caad_store needs one answer per prompt, got {len(prompts)} prompts and {len(answers)} "
                         "answers")
    V = int(cfg.vocab_size)
    for j, (p, a) in enumerate(zip(prompts, answers)):
        if not p:
            raise ValueError(f"caad_store: prompt {j} is empty")
        bad = [t for t in p + a if not 0 <= t < V]
        if bad:
            raise ValueError(f"caad_store: pair {j} has token ids outside [0, vocab_size={V}): {bad[:5]}")
    pairs = [(p, a) for p, a in zip(prompts, answers) if a]
    if not pairs:
        raise ValueError("caad_store got no (prompt, answer) pair with a non-empty answer: the store would be empty")
    keys, values, nexts = [], [], []
    embed = _prefix_embed_jit(embedder)
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start:start + batch_size]
        T = _bucket(max(len(p) + len(a) for p, a in chunk))
        P = _bucket(max(len(a) for _, a in chunk))
        toks = np.zeros((batch_size, T), np.int32)
        pos = np.zeros((batch_size, P), np.int32)
        for i, (p, a) in enumerate(chunk):
            seq = p + a
            toks[i, :len(seq)] = seq
            pos[i, :len(a)] = len(p) - 1 + np.arange(len(a))
        logits = _teacher_forced_logits(model, toks, pos)
        rows, lens = [], []
        for i, (p, a) in enumerate(chunk):
            for s in range(len(a)):
                rows.append(i)
                lens.append(len(p) + s)
                values.append(logits[i, s])
                nexts.append(a[s])
        k = np.asarray(embed(jnp.asarray(toks[np.asarray(rows)]), jnp.asarray(np.asarray(lens, np.int32))))
        keys.append(k)
    return CAADStore(keys=np.concatenate(keys, 0), values=np.stack(values, 0), embedder=embedder,
                     next_tokens=np.asarray(nexts, np.int32), window=window)


def _has_chat(tok) -> bool:
    return callable(getattr(tok, "apply_chat_template", None)) and getattr(tok, "chat_template", "") is not None


def _pair(example, j: int) -> tuple[str, str]:
    if isinstance(example, (tuple, list)) and len(example) == 2:
        q, a = example
    elif hasattr(example, "question") and hasattr(example, "answer"):
        q, a = example.question, example.answer
    else:
        raise ValueError(f"caad_store example {j} must be a (question, answer) pair or have .question and .answer, "
                         f"got {example!r}")
    if not isinstance(q, str) or not q.strip() or not isinstance(a, str) or not a.strip():
        raise ValueError(f"caad_store example {j}: question and answer must be non-empty str, got {q!r}, {a!r}")
    return q, a


def caad_store(model, tok, examples, window: int = 8, *, embedder: Callable | None = None, chat: bool | None = None,
               batch_size: int = 16) -> CAADStore:
    """Returns the P1 grounding store G of (question, truthful answer) ``examples`` under ``model``.

    ``examples``: (question, answer) str pairs, or objects with ``.question`` and ``.answer``
    (``tokjax.data`` python_facts). Each question goes through ``tok``'s chat template (one user
    turn with the generation prompt) when it has one (``chat=None``) or ``chat=True``, else plain
    ``tok.encode``; the answer is ``tok.encode(answer)`` appended to it, as the official
    ``precompute_space`` does. Then :func:`caad_store_ids`. Raises ValueError for an empty list,
    malformed examples, ``window < 1``, or ``chat=True`` without a chat template.
    """
    window = check_int_option(window, "window", lo=1)
    examples = list(examples)
    if not examples:
        raise ValueError("caad_store got no examples: the store would be empty")
    use_chat = _has_chat(tok) if chat is None else bool(chat)
    if use_chat and not callable(getattr(tok, "apply_chat_template", None)):
        raise ValueError("chat=True needs a tokenizer with a chat template (apply_chat_template)")
    prompts, answers = [], []
    for j, ex in enumerate(examples):
        q, a = _pair(ex, j)
        if use_chat:
            prompts.append(list(tok.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True)))
        else:
            prompts.append(list(tok.encode(q)))
        answers.append(list(tok.encode(a)))
    return caad_store_ids(model, prompts, answers, window=window, embedder=embedder, batch_size=batch_size)


# ------------------------------------------------------------------------------- retrieval and shaping
def _check_agg(agg) -> None:
    if agg not in AGGREGATIONS:
        raise ValueError(f"agg must be one of {AGGREGATIONS}, got {agg!r}")


def _check_shaping(shaping) -> None:
    if shaping not in SHAPINGS:
        raise ValueError(f"shaping must be one of {SHAPINGS}, got {shaping!r}")


def _check_alpha(alpha, shaping) -> None:
    if shaping == "linear":
        check_range(alpha, "alpha", lo=0.0)
    else:  # a mixture weight: (1 - alpha) must stay >= 0
        check_range(alpha, f"alpha (shaping={shaping!r})", lo=0.0, hi=1.0)


def caad_retrieve(query: jax.Array, keys: jax.Array, values: jax.Array, tau, *, agg: str = "weighted",
                  top_k: int = DEFAULT_TOP_K) -> tuple[jax.Array, jax.Array]:
    """Returns (r float32 [B, V], hits int32 [B]): the P1 retrieved logits and how many entries passed.

    ``query`` [B, Dk] and ``keys`` [N, Dk] are L2-normalised here (a zero row stays zero), s = q . k;
    the ``top_k`` most similar entries (all when ``top_k >= N``) with s > ``tau`` (scalar or [B])
    are aggregated: ``"weighted"`` sum_i (s_i / sum_j s_j) values_i, ``"mean"`` their plain
    average; r = 0 where none passes. tau >= 0 keeps the weights positive.
    """
    _check_agg(agg)
    top_k = check_int_option(top_k, "top_k", lo=1)
    check_range(tau, "tau", lo=0.0)
    q, k = _normalize(query), _normalize(keys)
    values = jnp.asarray(values, _F32)
    if q.ndim != 2 or k.ndim != 2 or q.shape[1] != k.shape[1]:
        raise ValueError(f"query [B, Dk] and keys [N, Dk] must agree on Dk, got {tuple(q.shape)} and {tuple(k.shape)}")
    if values.ndim != 2 or values.shape[0] != k.shape[0]:
        raise ValueError(f"values must be [N={k.shape[0]}, V], got {tuple(values.shape)}")
    B, N = q.shape[0], k.shape[0]
    tau = jnp.broadcast_to(jnp.asarray(tau, _F32), (B,))
    sims = jnp.dot(q, k.T, precision=jax.lax.Precision.HIGHEST)  # [B, N]
    if top_k < N:
        top_s, top_i = jax.lax.top_k(sims, top_k)
        keep_top = top_s > tau[:, None]
        keep = jnp.zeros((B, N), bool).at[jnp.arange(B)[:, None], top_i].set(keep_top)
    else:
        keep = sims > tau[:, None]
    if agg == "weighted":
        w = jnp.where(keep, sims, 0.0)
    else:
        w = keep.astype(_F32)
    total = jnp.sum(w, axis=-1, keepdims=True)
    w = w / jnp.where(total > 0, total, 1.0)
    r = jnp.dot(w, values, precision=jax.lax.Precision.HIGHEST)
    return r, jnp.sum(keep, axis=-1).astype(jnp.int32)


def caad_shape(logits: jax.Array, retrieved: jax.Array, alpha, shaping: str = "linear") -> jax.Array:
    """Returns float32 [B, V] the P1 shaped logits z' from z = ``logits`` and r = ``retrieved`` (see the module doc).

    ``alpha``: scalar or [B] (>= 0; <= 1 for "delta" and "prob_interp"). Tokens with z = -inf stay
    -inf (for "prob_interp" softmax(r) is renormalised over the unmasked tokens); an all-masked row
    stays all -inf, never NaN.
    """
    _check_shaping(shaping)
    _check_alpha(alpha, shaping)
    z = jnp.asarray(logits, _F32)
    r = jnp.asarray(retrieved, _F32)
    if z.shape != r.shape or z.ndim != 2:
        raise ValueError(f"logits and retrieved must both be [B, V], got {tuple(z.shape)} and {tuple(r.shape)}")
    a = jnp.broadcast_to(jnp.asarray(alpha, _F32), (z.shape[0],))[:, None]
    allowed = ~jnp.isneginf(z)
    if shaping == "linear":
        out = z + a * r
    elif shaping == "delta":
        out = (1.0 - a) * z + a * r
    else:
        zs = jnp.where(allowed, z, -jnp.inf)
        ls_z = jax.nn.log_softmax(jnp.where(allowed, zs, -1e30), axis=-1)
        ls_r = jax.nn.log_softmax(jnp.where(allowed, r, -1e30), axis=-1)
        log_a = jnp.where(a > 0, jnp.log(jnp.where(a > 0, a, 1.0)), -jnp.inf)
        log_1ma = jnp.where(a < 1, jnp.log1p(-jnp.where(a < 1, a, 0.0)), -jnp.inf)
        out = jnp.logaddexp(log_1ma + ls_z, log_a + ls_r)
    return jnp.where(allowed, out, -jnp.inf)


# ---------------------------------------------------------------------------------- the transform
@dataclasses.dataclass(frozen=True)
class CAAD(LogitTransform):
    """The P1 logit transform: z -> shape(z, retrieve(embed(context))) against a :class:`CAADStore`.

    ``store`` (keys and values), ``alpha`` and ``tau`` are runtime values held in the state (a new
    value, or a store of the same shapes, does not recompile); ``agg``, ``shaping``, ``top_k`` and the
    store's embedder are static. State: ``{"alpha": [B], "tau": [B], "keys": [1, N, Dk], "values":
    [1, N, V], "hits": int32 [B] (entries that passed on the last step)}``. Needs the LogitContext
    (the decode loop passes it). Raises ValueError when the model's vocabulary differs from the
    store's.
    """

    store: object = hparam(None)
    alpha: object = hparam(0.5)
    tau: object = hparam(0.7)
    agg: str = "weighted"
    shaping: str = "linear"
    top_k: int = DEFAULT_TOP_K
    embedder: object = dataclasses.field(default=None, init=False)

    def __post_init__(self):
        if not isinstance(self.store, CAADStore):
            raise ValueError(f"caad needs a CAADStore (tokjax.logits.caad.caad_store), got {type(self.store).__name__}")
        _check_agg(self.agg)
        _check_shaping(self.shaping)
        check_int_option(self.top_k, "top_k", lo=1)
        _check_alpha(self.alpha, self.shaping)
        check_range(self.tau, "tau", lo=0.0)
        object.__setattr__(self, "embedder", self.store.embedder)

    def init(self, batch):
        return {"alpha": as_rows(self.alpha, batch, "alpha"), "tau": as_rows(self.tau, batch, "tau"),
                "keys": jnp.asarray(self.store.keys, _F32)[None], "values": jnp.asarray(self.store.values, _F32)[None],
                "hits": jnp.zeros((batch,), jnp.int32)}

    def apply(self, logits, state, ctx):
        if ctx is None:
            raise ValueError("caad needs a LogitContext (ctx.tokens, ctx.lengths) to embed the decoding context")
        keys, values = state["keys"][0], state["values"][0]
        if logits.shape[-1] != values.shape[-1]:
            raise ValueError(f"caad: the store's logits have vocab {values.shape[-1]} but the model's have "
                             f"vocab={logits.shape[-1]}; build the store with the same model")
        q = self.embedder(ctx.tokens, ctx.lengths)
        if q.ndim != 2 or q.shape[0] != logits.shape[0] or q.shape[1] != keys.shape[1]:
            raise ValueError(f"caad: the embedder returned shape {tuple(q.shape)}, expected [B={logits.shape[0]}, "
                             f"Dk={keys.shape[1]}] (the store's key size)")
        r, hits = caad_retrieve(q, keys, values, state["tau"], agg=self.agg, top_k=self.top_k)
        out = caad_shape(logits, r, state["alpha"], self.shaping).astype(logits.dtype)
        return out, {**state, "hits": hits}


def caad(store: CAADStore, alpha=0.5, tau=0.7, agg: str = "weighted", shaping: str = "linear",
         top_k: int = DEFAULT_TOP_K) -> CAAD:
    """Returns the CAAD / RAD logit transform (P1) over ``store``; use ``chain(caad(store), greedy())``.

    ``alpha`` (>= 0; <= 1 for "delta" / "prob_interp") and ``tau`` (>= 0) are scalars or per-row [B]
    runtime values; ``agg`` in ``AGGREGATIONS``, ``shaping`` in ``SHAPINGS``, ``top_k`` >= 1.
    """
    return CAAD(store=store, alpha=alpha, tau=tau, agg=agg, shaping=shaping, top_k=top_k)
