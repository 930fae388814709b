"""Grammar-constrained decoding: regex and JSON-schema constraints as a stateful logit transform.

    c = json_constraint({"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}, tok)
    out = tokjax.generate(model, prompt, key=key, max_new_tokens=64, logits=chain(c, temperature(0.7)),
                          eos_id=c.eos_id)

On the host, once per constraint, ``outlines-core`` compiles the regular expression (or the
regex of the JSON schema, ``outlines_core.json_schema.build_regex_from_schema``) against the
tokenizer's vocabulary into a token automaton: states S, initial state s0, final states F and
a partial transition function delta(s, v) over token ids (``outlines_core.Index``). Tokens are
given to it as the raw bytes they decode to (``tokenizer.id_to_bytes``: byte-level BPE's
GPT-2 characters already mapped back to bytes, so tokens that split a UTF-8 character work),
and the automaton runs over bytes. This module packs it into device tables and runs it inside
the jitted decode loop. For a row whose generated tokens x_1..x_t led to state s_t =
delta(...delta(s0, x_1)..., x_t):

    allowed(s) = {v : delta(s, v) defined}  U  ({eos ids} if s in F)
    logits'_v  = logits_v if v in allowed(s_t) else -inf

so every sampled continuation is a prefix of a string the regex matches, and eos can only end
a full match: a row that stops at eos fully matches (a JSON constraint's output parses). A row
that runs out of ``max_new_tokens`` first is a prefix only.

**State.** ``GrammarState(fsm [B], consumed [B], tables)``: each row's automaton state, how
many tokens of the row's sequence it has read, and the packed tables (a runtime array, so a
new schema whose tables have the same padded shape reuses the compiled decode loop). Each
``apply`` first advances every row over ``ctx.tokens[consumed:ctx.lengths]``, the tokens
committed since its previous apply, then masks. The state is therefore a function of the
committed sequence, not of what was proposed: a speculative step that keeps the state of its
verification block's root (the committed context) rolls back rejected draft tails for free,
and each draft node, applied in its own context (committed tokens + its ancestors), is
masked exactly as plain decoding would mask that position. The first apply of a row starts
the automaton at its ``ctx.lengths`` (the prompt is not constrained). A dead row (a token
outside the automaton was committed, e.g. by a transform that un-masked logits) has every
logit masked, so the decode loop stops it and reports it in ``stats["masked_rows"]``.

**Tables** (one flat int32 buffer, layout :class:`GrammarShape`): the allowed-token bitmask
[states, ceil(V/32)], the final-state flags, and the transitions in CSR form (per-state
offsets, then token ids sorted within each state and their next states), looked up by a
fixed-length binary search. Dense next-state tables [states, V] would cost 4*V bytes per
state: 27 MB for a 137-state schema on SmolLM2 (V=49152) against 3.7 MB packed here (205,768
transitions, padded). States and transitions are padded to powers of two (or to
``max_states`` / ``max_transitions``) so similar schemas share one compiled program.

Place the constraint first in a chain (``chain(c, top_k(20), temperature(0.7))``): a filter
before it may keep only disallowed tokens, leaving the row nothing to sample.
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from tokjax.logits._base import NEG_INF, LogitTransform, hparam

__all__ = [
    "Grammar", "GrammarShape", "GrammarState", "json_constraint", "json_schema_regex",
    "regex_constraint",
]

# The flat table buffer is at least this long (and odd), so no batch size a decoder could use equals
# its length: per-row state helpers (repeat_rows, take_rows, state_shardings) treat a leaf whose
# leading axis equals the batch as per-row, and the tables must stay shared.
_MIN_BUFFER = 1 << 16


def _pow2(n: int, floor: int) -> int:
    return max(floor, 1 << max(int(n) - 1, 0).bit_length())


@dataclasses.dataclass(frozen=True)
class GrammarShape:
    """The static layout of a packed automaton (part of a :class:`Grammar`'s jit identity).

    ``vocab_size`` V, ``n_states`` and ``n_transitions`` (padded), ``n_eos`` (eos ids). The
    buffer holds, in order: the initial state (1), the bitmask (n_states * words), final flags
    (n_states), CSR offsets (n_states + 1), transition tokens and next states (n_transitions
    each), eos ids (n_eos); then zeros up to ``length``.
    """

    vocab_size: int
    n_states: int
    n_transitions: int
    n_eos: int

    @property
    def words(self) -> int:
        return -(-self.vocab_size // 32)

    @property
    def search_steps(self) -> int:
        # a state's sorted token segment holds at most V entries
        return max(1, math.ceil(math.log2(self.vocab_size + 1)))

    def sections(self) -> dict[str, tuple[int, int]]:
        sizes = (("initial", 1), ("bits", self.n_states * self.words), ("final", self.n_states),
                 ("offsets", self.n_states + 1), ("tokens", self.n_transitions), ("next", self.n_transitions),
                 ("eos", self.n_eos))
        out, at = {}, 0
        for name, n in sizes:
            out[name] = (at, at + n)
            at += n
        return out

    @property
    def length(self) -> int:
        used = self.sections()["eos"][1]
        return max(used, _MIN_BUFFER) | 1


def _view(buf: jax.Array, shape: GrammarShape) -> dict[str, jax.Array]:
    sec = shape.sections()
    t = {name: buf[a:b] for name, (a, b) in sec.items()}
    t["bits"] = t["bits"].reshape(shape.n_states, shape.words)
    t["initial"] = t["initial"][0]
    return t


@struct.dataclass
class GrammarState:
    """Per-row automaton state: ``fsm`` [B] int32 (-1: dead), ``consumed`` [B] int32 (tokens of the row's
    sequence already read; -1: not started), ``tables`` the packed automaton (shared by all rows)."""

    fsm: jax.Array
    consumed: jax.Array
    tables: jax.Array


@dataclasses.dataclass(frozen=True)
class Grammar(LogitTransform):
    """A grammar constraint: masks every token the automaton does not allow in the row's state (module docstring).

    Build it with :func:`regex_constraint` or :func:`json_constraint`. Equal (one static jit
    argument) to every Grammar with the same :class:`GrammarShape`; the tables themselves are
    runtime state. ``eos_ids``: the tokens allowed (only) in final states. ``pattern``: the regex.
    """

    shape: GrammarShape
    eos_ids: tuple = hparam(())  # also in the tables; only their count (in shape) is static
    tables: Any = dataclasses.field(default=None, compare=False, hash=False, repr=False)
    pattern: str = hparam("")
    num_states: int = hparam(0)  # before padding
    num_transitions: int = hparam(0)

    # Its state follows the committed sequence: speculative decoding may keep the state of the
    # verification block's root node (see tokjax.decoding.speculative.node_logits).
    state_follows_commits = True

    @property
    def eos_id(self) -> int:
        """The first eos id (pass it as ``generate(..., eos_id=)`` so rows stop when the match is complete)."""
        return self.eos_ids[0]

    def init(self, batch: int) -> GrammarState:
        return GrammarState(
            fsm=jnp.zeros((batch,), jnp.int32),  # replaced by the initial state at the first apply
            consumed=jnp.full((batch,), -1, jnp.int32),
            tables=jnp.asarray(self.tables, jnp.int32),
        )

    def apply(self, logits, state: GrammarState, ctx):
        if ctx is None:
            raise ValueError(
                "a grammar constraint needs a LogitContext (the row's tokens and lengths) to follow the automaton; "
                "use it through tokjax.generate or pass ctx="
            )
        R, V = logits.shape
        if V != self.shape.vocab_size:
            raise ValueError(
                f"grammar constraint was compiled for a vocabulary of {self.shape.vocab_size} tokens but the logits "
                f"have {V}; build it with the model's tokenizer (pass vocab_size=model.cfg.vocab_size when the model "
                "pads its vocabulary beyond the tokenizer's)"
            )
        t = _view(state.tables, self.shape)
        fresh = state.consumed < 0
        fsm = jnp.where(fresh, t["initial"], state.fsm)
        pos = jnp.where(fresh, ctx.lengths, state.consumed)
        # A sequence shorter than what was read means the state belongs to another sequence: never guess.
        stale = pos > ctx.lengths
        fsm = jnp.where(stale, -1, fsm)
        pos = jnp.where(stale, ctx.lengths, pos)
        fsm, pos = _advance(t, self.shape, fsm, pos, ctx.tokens, ctx.lengths)
        keep = _allowed(t, self.shape, fsm)
        return jnp.where(keep, logits, NEG_INF), GrammarState(fsm=fsm, consumed=pos, tables=state.tables)


def _next_state(t: dict, shape: GrammarShape, fsm: jax.Array, tok: jax.Array) -> jax.Array:
    """Returns int32 [R]: delta(fsm, tok), with -1 for a dead row or an undefined transition; eos keeps a
    final state (and kills any other)."""
    alive = fsm >= 0
    s = jnp.clip(fsm, 0, shape.n_states - 1)
    lo, end = t["offsets"][s], t["offsets"][s + 1]
    hi = end
    last = shape.n_transitions - 1
    for _ in range(shape.search_steps):  # lower bound of tok in tokens[lo:end]
        mid = (lo + hi) // 2
        less = t["tokens"][jnp.minimum(mid, last)] < tok
        open_ = lo < hi
        lo = jnp.where(open_ & less, mid + 1, lo)
        hi = jnp.where(open_ & ~less, mid, hi)
    at = jnp.minimum(lo, last)
    found = (lo < end) & (t["tokens"][at] == tok)
    nxt = jnp.where(found, t["next"][at], -1)
    is_eos = (tok[:, None] == t["eos"][None, :]).any(-1)
    nxt = jnp.where(is_eos, jnp.where(t["final"][s] > 0, fsm, -1), nxt)
    return jnp.where(alive, nxt, -1)


def _advance(t, shape, fsm, pos, tokens, lengths):
    """Returns (fsm, pos) after feeding each row the tokens committed since its last apply.

    An inner loop inherent to the constraint, not a decode loop: a speculative step commits a
    variable number of tokens per row, so the automaton advances until every row has caught up.
    """
    S = tokens.shape[1]

    def cond(c):
        return jnp.any(c[1] < lengths)

    def body(c):
        fsm, pos = c
        go = pos < lengths
        tok = jnp.take_along_axis(tokens, jnp.clip(pos, 0, S - 1)[:, None], axis=1)[:, 0]
        return jnp.where(go, _next_state(t, shape, fsm, tok), fsm), pos + go.astype(jnp.int32)

    # Not a decode loop: it advances the automaton over tokens already given (a prompt's ragged
    # rows), each row for its own length.
    return jax.lax.while_loop(cond, body, (fsm, pos))


def _allowed(t, shape: GrammarShape, fsm: jax.Array) -> jax.Array:
    """Returns bool [R, V]: the tokens allowed in each row's state (nothing for a dead row)."""
    alive = fsm >= 0
    s = jnp.clip(fsm, 0, shape.n_states - 1)
    words = t["bits"][s]  # [R, W]
    bits = jax.lax.shift_right_logical(words[:, :, None], jnp.arange(32, dtype=jnp.int32)[None, None, :]) & 1
    keep = bits.reshape(fsm.shape[0], -1)[:, : shape.vocab_size].astype(bool) & alive[:, None]
    is_eos = jnp.zeros((shape.vocab_size,), bool).at[t["eos"]].set(True)
    final = (t["final"][s] > 0) & alive
    return keep | (is_eos[None, :] & final[:, None])


# ---------------------------------------------------------------------------------------------------------
# host side: outlines-core index -> packed tables


def _vocabulary(tokenizer, eos_ids: tuple[int, ...], vocab_size: int):
    import outlines_core

    id_to_bytes = tokenizer.id_to_bytes
    tokens: dict[bytes, list[int]] = {}
    for i, b in enumerate(id_to_bytes[:vocab_size]):
        # special tokens decode to b"" and can never be part of a match; eos is added by outlines itself
        if b and i not in eos_ids:
            tokens.setdefault(bytes(b), []).append(i)
    if not tokens:
        raise ValueError("the tokenizer has no token with a byte spelling; a grammar cannot be matched with it")
    return outlines_core.Vocabulary(eos_ids[0], tokens)


def _eos_ids(tokenizer, eos_id, vocab_size: int) -> tuple[int, ...]:
    if eos_id is None:
        eos_id = getattr(tokenizer, "eos_id", None)
        if eos_id is None:
            raise ValueError("the tokenizer has no eos id; pass eos_id= (the token that ends a constrained row)")
    ids = np.atleast_1d(np.asarray(eos_id))
    if ids.ndim != 1 or ids.size == 0 or ids.dtype.kind not in "iu" or ids.min() < 0 or ids.max() >= vocab_size:
        raise ValueError(f"eos_id must be one token id or a non-empty list of ids in [0, {vocab_size}), got {eos_id!r}")
    return tuple(dict.fromkeys(int(i) for i in ids))


def _check_size(value, name: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive int or None, got {value!r}")
    return int(value)


def _compile(pattern: str, tokenizer, eos_id, vocab_size, max_states, max_transitions) -> Grammar:
    import outlines_core

    if not isinstance(pattern, str):
        raise ValueError(f"pattern must be a regular expression str, got {type(pattern).__name__}")
    if not (hasattr(tokenizer, "id_to_bytes") and hasattr(tokenizer, "vocab_size")):
        raise ValueError(
            f"tokenizer must be a tokjax tokenizer (with vocab_size and id_to_bytes), got {type(tokenizer).__name__}"
        )
    tok_v = int(tokenizer.vocab_size)
    V = tok_v if vocab_size is None else _check_size(vocab_size, "vocab_size")
    if V < tok_v:
        raise ValueError(
            f"vocab_size={V} is smaller than the tokenizer's vocabulary ({tok_v}); the model cannot emit all its tokens"
        )
    max_states = _check_size(max_states, "max_states")
    max_transitions = _check_size(max_transitions, "max_transitions")
    eos = _eos_ids(tokenizer, eos_id, V)
    vocab = _vocabulary(tokenizer, eos, tok_v)
    try:
        index = outlines_core.Index(pattern, vocab)
    except (ValueError, TypeError) as e:
        raise ValueError(f"cannot compile the regex {pattern!r} with this tokenizer's vocabulary: {e}") from None
    return _pack(index, pattern, V, eos, max_states, max_transitions)


def _pack(index, pattern: str, V: int, eos: tuple[int, ...], max_states, max_transitions) -> Grammar:
    trans = index.get_transitions()
    initial = index.get_initial_state()
    finals = set(index.get_final_states())
    # outlines' state ids are arbitrary ints: renumber densely, the initial state first
    rows = [(s, np.fromiter(row.keys(), np.int64, len(row)), np.fromiter(row.values(), np.int64, len(row)))
            for s, row in trans.items()]
    names = np.unique(np.concatenate([np.asarray([initial, *finals, *trans], np.int64)] + [d for _, _, d in rows]))
    names = np.concatenate([[initial], names[names != initial]])
    by_name = np.argsort(names)

    def dense(x):
        return by_name[np.searchsorted(names, x, sorter=by_name)]

    n = len(names)
    src = np.concatenate([np.full(len(k), s, np.int64) for s, k, _ in rows] or [np.zeros(0, np.int64)])
    tok = np.concatenate([k for _, k, _ in rows] or [np.zeros(0, np.int64)])
    dst = np.concatenate([d for _, _, d in rows] or [np.zeros(0, np.int64)])
    keep = ~np.isin(tok, np.asarray(eos)) & (tok < V)  # eos is handled by the final flags
    src, tok, dst = dense(src[keep]), tok[keep], dense(dst[keep])
    order_t = np.lexsort((tok, src))
    src, tok, dst = src[order_t], tok[order_t], dst[order_t]
    m = int(src.size)
    n_states = _pow2(n, 16) if max_states is None else max_states
    n_trans = _pow2(m, 256) if max_transitions is None else max_transitions
    if n > n_states or m > n_trans:
        raise ValueError(
            f"the automaton of {pattern[:80]!r} has {n} states and {m} transitions, more than max_states={n_states} / "
            f"max_transitions={n_trans}; raise them (or leave them None to size the tables to fit)"
        )
    shape = GrammarShape(vocab_size=V, n_states=n_states, n_transitions=n_trans, n_eos=len(eos))
    sec = shape.sections()
    buf = np.zeros((shape.length,), np.int64)

    def put(name, values):
        a, b = sec[name]
        buf[a:a + len(values)] = values

    put("initial", [0])
    bits = np.zeros((n_states, shape.words), np.uint32)
    np.bitwise_or.at(bits, (src, tok // 32), (np.uint32(1) << (tok % 32).astype(np.uint32)))
    put("bits", bits.reshape(-1).astype(np.int64))
    final = np.zeros((n_states,), np.int64)
    final[dense(np.asarray(sorted(finals), np.int64))] = 1
    put("final", final)
    offsets = np.searchsorted(src, np.arange(n_states + 1), side="left")
    put("offsets", offsets)
    tokens = np.full((n_trans,), V, np.int64)  # padding sorts after every real token
    tokens[:m] = tok
    put("tokens", tokens)
    nxt = np.full((n_trans,), -1, np.int64)
    nxt[:m] = dst
    put("next", nxt)
    put("eos", list(eos))
    # bitmask words are uint32 bit patterns: wrap into int32 without changing the bits
    buf32 = (buf & 0xFFFFFFFF).astype(np.uint32).view(np.int32)
    return Grammar(shape=shape, eos_ids=eos, tables=buf32, pattern=pattern, num_states=n, num_transitions=m)


def regex_constraint(pattern: str, tokenizer, *, eos_id=None, vocab_size: int | None = None,
                     max_states: int | None = None, max_transitions: int | None = None) -> Grammar:
    """Returns a :class:`Grammar` logit transform under which generated text fully matches ``pattern``.

    ``pattern``: a regular expression (outlines-core / Rust ``regex`` syntax, matched against the
    whole generated text; the prompt is not part of it). ``tokenizer``: a tokjax tokenizer (its
    ``id_to_bytes`` spell each token; special tokens never match). ``eos_id``: the id or ids
    allowed once the text is a full match (default ``tokenizer.eos_id``); pass the same to
    ``generate``. ``vocab_size``: the model's vocabulary when it pads beyond the tokenizer's
    (extra ids are never allowed). ``max_states`` / ``max_transitions``: pin the padded table
    sizes so constraints of different sizes share one compiled decode (default: next power of
    two). Raises ValueError for an invalid regex, one the vocabulary cannot spell, a tokenizer
    without byte spellings, or tables larger than the given maxima.
    """
    return _compile(pattern, tokenizer, eos_id, vocab_size, max_states, max_transitions)


def json_schema_regex(schema, *, whitespace: str | None = None) -> str:
    """Returns the regex outlines-core builds for a JSON schema (a dict, or its JSON text).

    ``whitespace``: the regex of the whitespace allowed between tokens of the JSON text (outlines'
    default ``[ ]?``). Keywords outlines does not turn into a regex (``minimum``, ``maximum``,
    ``multipleOf``, ...) are not enforced; ``maxLength``, ``maxItems``, ``enum``, ``const``,
    ``pattern``, ``required``, nesting and ``maxDigits`` of integers are (outlines-core 0.2.14
    reads ``maxDigits: 1`` as unbounded). Raises ValueError for a schema it cannot compile.
    """
    from outlines_core.json_schema import build_regex_from_schema

    if isinstance(schema, str):
        text = schema
        try:
            json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"schema is a str but not valid JSON: {e}") from None
    elif isinstance(schema, dict):
        try:
            text = json.dumps(schema)
        except (TypeError, ValueError) as e:
            raise ValueError(f"schema must be JSON-serialisable: {e}") from None
    else:
        raise ValueError(f"schema must be a JSON schema dict or its JSON text, got {type(schema).__name__}")
    if whitespace is not None and not isinstance(whitespace, str):
        raise ValueError(f"whitespace must be a regex str or None, got {whitespace!r}")
    try:
        return build_regex_from_schema(text, whitespace)
    except (ValueError, TypeError) as e:
        raise ValueError(f"outlines-core cannot compile this JSON schema: {e}") from None


def json_constraint(schema, tokenizer, *, whitespace: str | None = None, eos_id=None, vocab_size: int | None = None,
                    max_states: int | None = None, max_transitions: int | None = None) -> Grammar:
    """Returns a :class:`Grammar` under which a row that ends at eos is JSON text valid for ``schema``.

    ``schema``: a JSON schema dict or its JSON text, compiled by :func:`json_schema_regex`
    (``whitespace`` as there). The other arguments are :func:`regex_constraint`'s. Raises
    ValueError for a schema outlines-core cannot compile and for the cases regex_constraint lists.
    """
    pattern = json_schema_regex(schema, whitespace=whitespace)
    return _compile(pattern, tokenizer, eos_id, vocab_size, max_states, max_transitions)
