"""STAND: stochastic n-gram memory of verified target distributions, drafted as a Gumbel-top-k tree.

Paper: "Accelerated Test-Time Scaling with Model-Free Speculative Sampling" (Song et al., EMNLP
2025), P22 -- STAND, STochastic Adaptive N-gram Drafting. No official code was found; the details
follow ``../shared/papers/NOTES-decoding.md`` (P22, from the abstract and a secondary source).

Memory (shared by every row of the batch, i.e. by all trajectories of best-of-N): one table per
n-gram order n (default 4, 3, 2). A key is the last n tokens; its value is a sparse distribution
over at most K (default 10) next tokens and a count c. After each verification step every
verified position (the pending token and each accepted node) with target distribution p adds an
observation of its key (the paper's running average, applied to all of a step's observations at
once)::

    D(key) <- top_K( (c * D(key) + sum_j top_K(p_j)) / (c + m) ),   c <- c + m      (m observations)

Drafting: the longest stored key that matches the context (4-gram, else 3, else 2) gives q; a
static tree template (paths of sibling ranks) is expanded breadth first and the children of a
node are its Gumbel-top-k sample of q (sampling without replacement, so sibling j was drawn from
q with siblings 0..j-1 removed and renormalised; that conditional is the node's ``probs`` row,
which keeps multi-candidate rejection verification lossless).

Under greedy decoding the (transformed) target distribution is a point mass; the memory then
stores the model's untransformed distribution (``raw_logits``, which the speculative step passes
to every draft source's ``observe``), so a key keeps alternatives. Drafts only affect speed:
greedy and ``tree()`` verification stay exact. ``prime_prompt=True`` (our addition, off by
default) also stores the prompt's own n-grams as one-hot observations at ``init``.

Fixed-size, jit-friendly storage: each order is a direct-mapped hash table of ``capacity`` slots
(a power of two). A slot stores its full key, so a lookup never returns another key's
distribution. Collision policy: a key that hashes to a slot held by a different key evicts it
(the newcomer starts from c = 0); within one update, when several keys hash to one slot, the
key of the last observation in (row, position) order takes the slot and the others are dropped.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from tokjax.decoding._state import check_like
from tokjax.decoding.speculative import Draft, DraftSource
from tokjax.decoding.token_recycling import TEMPLATES, template_arrays

__all__ = [
    "NgramMemory",
    "NgramTables",
    "ngram_memory",
    "ngram_hash",
    "ngram_lookup",
    "ngram_update",
    "STAND_TEMPLATE",
]

# Default static tree: the paper optimises an 80-node tree offline (not published); we use the
# same-size P45 "2.2.2" shape with ranks read as Gumbel-top-k sibling ranks.
STAND_TEMPLATE = TEMPLATES["2.2.2"]

_EMPTY = -1


@struct.dataclass
class NgramTables:
    """The STAND memory, shared by all rows: per n-gram order o, ``capacity`` hash slots of sparse next-token distributions.

    ``keys`` [O, C, n_max] int32 (first n_o columns hold the key, rest -1), ``tokens`` [O, C, K]
    int32, ``weights`` [O, C, K] f32 (the stored probabilities, 0 = no candidate), ``counts``
    [O, C] int32 (observations averaged; 0 = empty slot).
    """

    keys: jax.Array
    tokens: jax.Array
    weights: jax.Array
    counts: jax.Array

    @classmethod
    def init(cls, orders: Sequence[int], capacity: int, k: int) -> "NgramTables":
        """Returns empty tables for ``orders`` with ``capacity`` slots each and ``k`` candidates per key."""
        orders = _check_orders(orders)
        _check_capacity(capacity)
        if int(k) < 1:
            raise ValueError(f"top_k must be >= 1, got {k}")
        O, n_max = len(orders), max(orders)
        return cls(
            keys=jnp.full((O, capacity, n_max), _EMPTY, jnp.int32),
            tokens=jnp.zeros((O, capacity, k), jnp.int32),
            weights=jnp.zeros((O, capacity, k), jnp.float32),
            counts=jnp.zeros((O, capacity), jnp.int32),
        )


def _check_orders(orders) -> tuple[int, ...]:
    orders = tuple(int(n) for n in orders)
    if not orders or len(set(orders)) != len(orders) or min(orders) < 1 or max(orders) > 16:
        raise ValueError(f"orders must be distinct n-gram lengths in [1, 16], got {orders}")
    return tuple(sorted(orders, reverse=True))


def _check_capacity(capacity) -> None:
    c = int(capacity)
    if c < 2 or c & (c - 1):
        raise ValueError(f"capacity must be a power of two >= 2 (hash slots per order), got {capacity}")


def ngram_hash(keys: jax.Array, capacity: int) -> jax.Array:
    """Returns the slot int32 [...] of each key [..., n] (FNV-1a over the ids, then a murmur-style finaliser)."""
    h = jnp.full(keys.shape[:-1], 2166136261, jnp.uint32)
    for j in range(keys.shape[-1]):
        h = (h ^ keys[..., j].astype(jnp.uint32)) * jnp.uint32(16777619)
    h = h ^ (h >> 13)
    h = h * jnp.uint32(0x5BD1E995)
    h = h ^ (h >> 15)
    return (h & jnp.uint32(capacity - 1)).astype(jnp.int32)


def ngram_lookup(tables: NgramTables, orders: Sequence[int], ctx: jax.Array, ctx_ok: jax.Array):
    """Returns (tokens [..., K], weights [..., K], found [...]) for the longest stored suffix of ctx.

    ``ctx`` [..., n_max]: the last n_max tokens (most recent last); ``ctx_ok`` marks real tokens
    (False before the start of a sequence). Orders are tried longest first.
    """
    orders = _check_orders(orders)
    n_max = max(orders)
    C = tables.counts.shape[1]
    K = tables.tokens.shape[2]
    tok = jnp.zeros(ctx.shape[:-1] + (K,), jnp.int32)
    w = jnp.zeros(ctx.shape[:-1] + (K,), jnp.float32)
    found = jnp.zeros(ctx.shape[:-1], bool)
    for o, n in enumerate(orders):
        key = ctx[..., n_max - n:]
        ok = jnp.all(ctx_ok[..., n_max - n:], axis=-1)
        slot = ngram_hash(key, C)
        hit = ok & (tables.counts[o, slot] > 0) & jnp.all(tables.keys[o, slot, :n] == key, axis=-1)
        take = hit & ~found
        tok = jnp.where(take[..., None], tables.tokens[o, slot], tok)
        w = jnp.where(take[..., None], tables.weights[o, slot], w)
        found = found | hit
    return tok, w, found


def ngram_update(
    tables: NgramTables,
    orders: Sequence[int],
    ctx: jax.Array,
    ctx_ok: jax.Array,
    obs_tokens: jax.Array,
    obs_weights: jax.Array,
    mask: jax.Array,
    vocab_size: int,
) -> NgramTables:
    """Returns the tables after adding M observations (STAND's running-average update, P22).

    ``ctx`` [M, n_max] / ``ctx_ok``: each observation's context (its last token is the one the
    distribution follows); ``obs_tokens``/``obs_weights`` [M, J]: its sparse distribution (e.g.
    top-K of the target probabilities; a one-hot is J = 1); ``mask`` [M]: which observations
    count. All observations of one key in this call are averaged in together (see module doc);
    collisions follow the module's eviction policy.
    """
    orders = _check_orders(orders)
    n_max = max(orders)
    C = tables.counts.shape[1]
    K = tables.tokens.shape[2]
    M = ctx.shape[0]
    idx = jnp.arange(M, dtype=jnp.int32)
    obs_weights = obs_weights.astype(jnp.float32)
    keys, toks, ws, cnts = tables.keys, tables.tokens, tables.weights, tables.counts
    dsts, new_keys, new_toks, new_ws, new_cs = [], [], [], [], []
    for o, n in enumerate(orders):
        key = ctx[:, n_max - n:]
        ok = mask & jnp.all(ctx_ok[:, n_max - n:], axis=-1)
        slot = ngram_hash(key, C)
        winner = jnp.full((C,), -1, jnp.int32).at[slot].max(jnp.where(ok, idx, -1))
        w_of = winner[slot]
        member = ok & jnp.all(key == key[jnp.maximum(w_of, 0)], axis=-1)
        is_w = ok & (w_of == idx)
        old_match = is_w & (cnts[o, slot] > 0) & jnp.all(keys[o, slot, :n] == key, axis=-1)
        c_old = jnp.where(old_match, cnts[o, slot], 0)
        dense = jnp.zeros((M, vocab_size), jnp.float32)
        dense = dense.at[idx[:, None], toks[o, slot]].add(c_old[:, None].astype(jnp.float32) * ws[o, slot])
        group = jnp.where(member, w_of, M)
        dense = dense.at[group[:, None], obs_tokens].add(obs_weights, mode="drop")
        m = jnp.zeros((M,), jnp.int32).at[group].add(1, mode="drop")
        c_new = c_old + m
        new_w, new_tok = jax.lax.top_k(dense / jnp.maximum(c_new, 1)[:, None].astype(jnp.float32), K)
        dsts.append(jnp.where(is_w, o * C + slot, len(orders) * C))  # non-winners write nowhere
        new_keys.append(jnp.concatenate([key, jnp.full((M, n_max - n), _EMPTY, jnp.int32)], axis=1))
        new_toks.append(new_tok.astype(jnp.int32))
        new_ws.append(new_w)
        new_cs.append(c_new)
    # One scatter per field over all orders (a scatter per order would copy the tables each time).
    O = len(orders)
    dst = jnp.concatenate(dsts)
    keys = keys.reshape(O * C, n_max).at[dst].set(jnp.concatenate(new_keys), mode="drop").reshape(keys.shape)
    toks = toks.reshape(O * C, K).at[dst].set(jnp.concatenate(new_toks), mode="drop").reshape(toks.shape)
    ws = ws.reshape(O * C, K).at[dst].set(jnp.concatenate(new_ws), mode="drop").reshape(ws.shape)
    cnts = cnts.reshape(O * C).at[dst].set(jnp.concatenate(new_cs), mode="drop").reshape(cnts.shape)
    return NgramTables(keys=keys, tokens=toks, weights=ws, counts=cnts)


def _target_topk(logits: jax.Array, k: int):
    """Returns (tokens, probs, finite) of the top-k of softmax(logits) [..., V]; rows with no finite logit flagged."""
    finite = jnp.isfinite(jnp.max(logits, axis=-1))
    p = jax.nn.softmax(jnp.where(finite[..., None], logits.astype(jnp.float32), 0.0), axis=-1)
    w, t = jax.lax.top_k(p, k)
    return t.astype(jnp.int32), w, finite


def _tree_context_index(parents: np.ndarray, n_max: int) -> np.ndarray:
    """Returns int [1 + N, n_max]: for the root (row 0) and each node, indices into concat(tail[n_max], nodes[N])."""
    N = parents.shape[0]
    out = np.zeros((1 + N, n_max), np.int32)
    out[0] = np.arange(n_max)
    for i in range(N):
        path, j = [], i
        while j >= 0:
            path.append(n_max + j)
            j = int(parents[j])
        seq = list(range(n_max)) + path[::-1]
        out[1 + i] = seq[-n_max:]
    return out


@struct.dataclass
class StandState:
    """STAND's draft state: the shared tables and what propose saw (each row's last tokens and liveness, for observe)."""

    tables: NgramTables
    tail: jax.Array  # [B, n_max] last tokens up to the pending one at propose time
    tail_ok: jax.Array  # [B, n_max]
    live: jax.Array  # [B]


@dataclasses.dataclass(frozen=True)
class NgramMemory(DraftSource):
    """STAND (P22) as a draft source for ``speculative(draft, verifier)``: a Gumbel-top-k tree from the n-gram memory.

    See :func:`ngram_memory` for the fields. Hot start: its ``persistent_state`` is the
    :class:`NgramTables` (any batch size may resume them).
    """

    template: tuple[tuple[int, ...], ...] = STAND_TEMPLATE
    orders: tuple[int, ...] = (4, 3, 2)
    top_k: int = 10
    capacity: int = 1 << 12
    prime_prompt: bool = False

    @property
    def num_nodes(self) -> int:
        return len(self.template)

    @property
    def max_depth(self) -> int:
        return max(len(p) for p in self.template)

    def validate(self, cfg) -> None:
        _check_orders(self.orders)
        _check_capacity(self.capacity)
        _, child, _ = template_arrays(self.template)
        if int(child.max()) >= self.top_k:
            raise ValueError(f"tree template uses sibling rank {int(child.max())} but only top_k={self.top_k} candidates are stored")
        if self.top_k > cfg.vocab_size:
            raise ValueError(f"top_k={self.top_k} exceeds the vocabulary size {cfg.vocab_size}")

    def init(self, params, cfg, state) -> StandState:
        B, S = state.tokens.shape
        n_max = max(self.orders)
        if self.prime_prompt and S > 1:
            tables = _prime_tables(
                state.tokens[:, :_prime_width(state.prompt_lengths, S)], state.prompt_lengths,
                orders=self.orders, capacity=self.capacity, top_k=self.top_k, vocab_size=cfg.vocab_size,
            )
        else:
            tables = NgramTables.init(self.orders, self.capacity, self.top_k)
        return StandState(
            tables=tables,
            tail=jnp.zeros((B, n_max), jnp.int32),
            tail_ok=jnp.zeros((B, n_max), bool),
            live=jnp.zeros((B,), bool),
        )

    def state_axes(self, dstate: StandState):
        # The tables are shared by every row (replicated); what propose saw follows the batch.
        return StandState(tables=None, tail=("batch", None), tail_ok=("batch", None), live=("batch",))

    def persistent_state(self, dstate: StandState) -> NgramTables:
        return dstate.tables

    def resume(self, dstate: StandState, saved) -> StandState:
        if not isinstance(saved, NgramTables):
            raise ValueError(f"strategy_state must be the NgramTables of an earlier output, got {type(saved).__name__}")
        return dstate.replace(tables=check_like(saved, dstate.tables, "strategy_state"))

    def propose(self, params, cfg, state, dstate: StandState, key, transform):
        tokens, valid, probs, tail, tail_ok = draft_stand_tree(
            dstate.tables, self.orders, self.template, state.tokens, state.lengths, key, cfg.vocab_size
        )
        B, N = tokens.shape
        parents, _, _ = template_arrays(self.template)
        draft = Draft(
            tokens=tokens,
            parents=jnp.broadcast_to(jnp.asarray(parents), (B, N)),
            probs=probs,
            valid=valid,
            layer_evals=jnp.zeros((), jnp.int32),
        )
        return draft, dstate.replace(tail=tail, tail_ok=tail_ok, live=~state.done)

    def observe(self, params, cfg, state, dstate: StandState, draft, target_logits, accepted, raw_logits):
        tables = observe_stand(
            dstate.tables, self.orders, self.top_k, dstate.tail, dstate.tail_ok, dstate.live, draft.tokens,
            target_logits, accepted.path, accepted.count, cfg.vocab_size, raw_logits=raw_logits,
        )
        return dstate.replace(tables=tables)


def _prime_width(prompt_lengths, S: int) -> int:
    """Returns how many leading buffer columns priming reads: the longest prompt rounded up to a power of two (<= S).

    Columns past the longest prompt hold no prompt n-gram, yet each costs a dense vocabulary-wide
    row per order in ``ngram_update`` (at V = 49152 the whole buffer cost about one prefill).
    Rounding up to a power of two, as ``generate`` buckets prompt widths, bounds recompiles to
    one per bucket rather than one per prompt length. Under an outer trace the lengths are not
    known, so the whole buffer is read (same tables, more work).
    """
    if isinstance(prompt_lengths, jax.core.Tracer):
        return S
    P = int(np.max(np.asarray(prompt_lengths)))
    return min(S, max(2, 1 << max(P - 1, 0).bit_length()))


@functools.partial(jax.jit, static_argnames=("orders", "capacity", "top_k", "vocab_size"))
def _prime_tables(tokens, prompt_lengths, *, orders, capacity, top_k, vocab_size) -> NgramTables:
    """Returns fresh tables holding each prompt's own n-grams as one-hot observations (``prime_prompt``).

    ``tokens`` [B, W]: the first W buffer columns (W >= every prompt length); the observation at
    position t (t = 0..W-2) is the next token ``tokens[:, t+1]`` keyed by the n-gram ending at t,
    counted only where t + 1 < the row's prompt length. One compiled call (rather than op by op):
    it is the same work, with one compilation per shape instead of one per primitive.
    """
    B, W = tokens.shape
    n_max = max(orders)
    pos = jnp.arange(W - 1)
    idx = pos[:, None] - n_max + 1 + jnp.arange(n_max)[None, :]  # [W-1, n_max]
    ctx = tokens[:, jnp.clip(idx, 0, W - 1)]  # [B, W-1, n_max]
    ctx_ok = jnp.broadcast_to(idx >= 0, ctx.shape)
    nxt = tokens[:, 1:]
    mask = (pos[None, :] + 1) < prompt_lengths[:, None]
    return ngram_update(
        NgramTables.init(orders, capacity, top_k), orders, ctx.reshape(-1, n_max), ctx_ok.reshape(-1, n_max),
        nxt.reshape(-1, 1), jnp.ones((B * (W - 1), 1), jnp.float32), mask.reshape(-1), vocab_size,
    )


def draft_stand_tree(tables, orders, template, seq_tokens, lengths, key, vocab_size):
    """Returns (tokens [B,N], valid [B,N], probs [B,N,V], tail, tail_ok): STAND's Gumbel-top-k tree draft.

    ``seq_tokens`` [B, S] / ``lengths`` [B]: each row's sequence (the last token is pending).
    Node i is the rank-``child[i]`` Gumbel-top-k draw from q(. | context of its parent); its
    ``probs`` row is q with the higher-ranked siblings removed, renormalised (one-hot on the
    token for invalid nodes, which are never accepted).
    """
    orders = _check_orders(orders)
    n_max = max(orders)
    parents, child, depth = template_arrays(template)
    B = seq_tokens.shape[0]
    N = parents.shape[0]
    K = tables.tokens.shape[2]
    pos = lengths[:, None] - n_max + jnp.arange(n_max)[None, :]
    tail = jnp.take_along_axis(seq_tokens, jnp.maximum(pos, 0), axis=1)
    tail_ok = pos >= 0
    # Expanded nodes: the root (block index 0) and every node with a child (block index i + 1).
    has_child = np.zeros(N + 1, bool)
    has_child[parents + 1] = True
    exp = np.nonzero(has_child)[0]
    exp_depth = np.concatenate([[0], depth])[exp]
    exp_of = np.full(N + 1, -1, np.int32)
    exp_of[exp] = np.arange(exp.size)
    par_e = exp_of[parents + 1]  # [N] expanded index of each node's parent
    ctx_index = _tree_context_index(parents, n_max)[exp]  # [E, n_max]
    gumbel = jax.random.gumbel(key, (B, exp.size, K))  # one draw per (row, expanded node, candidate)
    keep = jnp.asarray(np.arange(K)[None, :] >= child[:, None])  # [N, K]: ranks < j were drawn before node j
    exp_parent_node = jnp.asarray(np.maximum(exp - 1, 0))
    exp_is_root = jnp.asarray(exp == 0)

    def level(d, carry):
        # Same program for every depth (a fori_loop, one compiled body): expand the nodes of depth d-1,
        # then place the nodes of depth d.
        nodes, nvalid, q_w, cand_tok, cand_w, cand_ok = carry
        X = jnp.concatenate([tail, nodes], axis=1)
        Xok = jnp.concatenate([tail_ok, jnp.ones((B, N), bool)], axis=1)
        t, w, found = ngram_lookup(tables, orders, X[:, ctx_index], Xok[:, ctx_index])
        par_ok = exp_is_root[None, :] | nvalid[:, exp_parent_node]
        score = jnp.where(w > 0, jnp.log(jnp.maximum(w, 1e-30)) + gumbel, -jnp.inf)
        _, order = jax.lax.top_k(score, K)  # Gumbel-top-k: descending perturbed log-weights
        now = jnp.asarray(exp_depth)[None, :] == d - 1
        cand_tok = jnp.where(now[..., None], jnp.take_along_axis(t, order, axis=-1), cand_tok)
        cand_w = jnp.where(now[..., None], jnp.take_along_axis(w, order, axis=-1), cand_w)
        cand_ok = jnp.where(now, found & par_ok, cand_ok)
        ct = cand_tok[:, par_e]  # [B, N, K]
        cw = cand_w[:, par_e]
        rank = jnp.asarray(child)[None, :, None]
        tok = jnp.take_along_axis(ct, rank, axis=-1)[..., 0]
        ok = cand_ok[:, par_e] & (jnp.take_along_axis(cw, rank, axis=-1)[..., 0] > 0)
        qw = jnp.where(keep[None], cw, 0.0)
        qw = qw / jnp.maximum(qw.sum(-1, keepdims=True), 1e-30)
        place = jnp.asarray(depth)[None, :] == d
        nodes = jnp.where(place, jnp.where(ok, tok, 0), nodes)
        nvalid = jnp.where(place, ok, nvalid)
        q_w = jnp.where(place[..., None], jnp.where(ok[..., None], qw, 0.0), q_w)
        return nodes, nvalid, q_w, cand_tok, cand_w, cand_ok

    E = exp.size
    init = (
        jnp.zeros((B, N), jnp.int32), jnp.zeros((B, N), bool), jnp.zeros((B, N, K), jnp.float32),
        jnp.zeros((B, E, K), jnp.int32), jnp.zeros((B, E, K), jnp.float32), jnp.zeros((B, E), bool),
    )
    nodes, nvalid, q_w, cand_tok, _, _ = jax.lax.fori_loop(1, int(depth.max()) + 1, level, init)
    q_tok = cand_tok[:, par_e]
    b = jnp.arange(B)[:, None, None]
    n = jnp.arange(N)[None, :, None]
    probs = jnp.zeros((B, N, vocab_size), jnp.float32).at[b, n, q_tok].add(q_w)
    probs = jnp.where(nvalid[..., None], probs, jax.nn.one_hot(nodes, vocab_size, dtype=jnp.float32))
    return nodes, nvalid, probs, tail, tail_ok


def observe_stand(tables, orders, top_k, tail, tail_ok, live, draft_tokens, target_logits, path, count, vocab_size,
                  raw_logits=None):
    """Returns the tables updated with the verified positions: the pending token and each accepted node.

    Position j (0 = pending, j >= 1 = accepted node ``path[:, j-1]``) contributes top-K of the
    target distribution ``softmax(target_logits)`` at that node, keyed by its context. Where
    that distribution is a point mass (greedy) and ``raw_logits`` are given, the untransformed
    distribution is stored instead (drafting only; verification stays exact).
    """
    orders = _check_orders(orders)
    n_max = max(orders)
    B, A = path.shape
    path_c = jnp.clip(path, 0, draft_tokens.shape[1] - 1)
    path_tok = jnp.take_along_axis(draft_tokens, path_c, axis=1)
    seq = jnp.concatenate([tail, path_tok], axis=1)  # [B, n_max + A]
    seq_ok = jnp.concatenate([tail_ok, jnp.ones((B, A), bool)], axis=1)
    win = np.arange(A + 1)[:, None] + np.arange(n_max)[None, :]  # [A+1, n_max]
    ctx = seq[:, win]
    ctx_ok = seq_ok[:, win]
    node = jnp.concatenate([jnp.zeros((B, 1), jnp.int32), 1 + path_c], axis=1)  # [B, A+1] logits rows
    logits = jnp.take_along_axis(target_logits, node[:, :, None], axis=1)
    if raw_logits is not None:
        raw = jnp.take_along_axis(raw_logits, node[:, :, None], axis=1).astype(jnp.float32)
        point_mass = jnp.isfinite(logits).sum(-1) <= 1
        logits = jnp.where(point_mass[..., None], raw, logits)
    t, w, finite = _target_topk(logits, top_k)
    mask = live[:, None] & (jnp.arange(A + 1)[None, :] <= count[:, None]) & finite
    M = B * (A + 1)
    return ngram_update(
        tables, orders, ctx.reshape(M, n_max), ctx_ok.reshape(M, n_max), t.reshape(M, top_k),
        w.reshape(M, top_k), mask.reshape(M), vocab_size,
    )


def ngram_memory(
    template: str | Sequence[Sequence[int]] = "2.2.2",
    *,
    orders: Sequence[int] = (4, 3, 2),
    top_k: int = 10,
    capacity: int = 1 << 12,
    prime_prompt: bool = False,
) -> NgramMemory:
    """Returns the STAND (P22) draft source: shared stochastic n-gram memory + Gumbel-top-k tree.

    ``template``: static tree (a :data:`~tokjax.decoding.token_recycling.TEMPLATES` name or paths
    of sibling ranks in BFS order); ``orders``: n-gram lengths, longest tried first; ``top_k``:
    candidates stored per key (the paper's 10); ``capacity``: hash slots per order (power of
    two); ``prime_prompt``: also store the prompt's own n-grams as one-hot observations (our
    addition, off by default).
    """
    if isinstance(template, str):
        if template not in TEMPLATES:
            raise ValueError(f"unknown tree template {template!r}; valid names: {sorted(TEMPLATES)} or a list of paths")
        paths = TEMPLATES[template]
    else:
        paths = tuple(tuple(int(c) for c in p) for p in template)
    _, child, _ = template_arrays(paths)
    orders = _check_orders(orders)
    _check_capacity(capacity)
    if not isinstance(top_k, (int, np.integer)) or isinstance(top_k, bool) or top_k < 1:
        raise ValueError(f"top_k must be an int >= 1, got {top_k!r}")
    if int(child.max()) >= top_k:
        raise ValueError(f"tree template uses sibling rank {int(child.max())} but only top_k={top_k} candidates are stored")
    return NgramMemory(template=paths, orders=orders, top_k=int(top_k), capacity=int(capacity), prime_prompt=bool(prime_prompt))
