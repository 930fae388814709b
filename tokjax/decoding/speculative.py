"""Batched speculative decoding as a decode strategy: a draft source times a verifier.

    strategy = speculative(drafts.prompt_lookup(max_ngram=3, num_draft=8), verify.rejection())
    out = tokjax.generate(model, prompts, key=key, max_new_tokens=64, strategy=strategy,
                          logits=chain(top_p(0.9), temperature(0.7)))

One step of the strategy (Leviathan et al. 2023; Chen et al. 2023; tree form as in
SpecInfer/SpecTr):

1. the draft source proposes ``N`` draft nodes per row: a token tree (``Draft``) whose
   roots hang off the pending token (the last committed token, not yet in the cache);
2. ONE target forward over the block ``[pending, node_0 .. node_{N-1}]`` with the tree
   mask, positions ``cache length + depth`` and the KV cache;
3. the logit transform (temperature, top-p, penalties, ...) is applied to every node's
   logits *with that node's own context* (committed tokens + the node's ancestors), so
   context-dependent transforms such as repetition penalties stay exact;
4. the verifier returns each row's accepted path and a bonus token (ragged per row);
5. the accepted path's keys/values are compacted in the cache with ``KVCache.gather``,
   and path + bonus are committed (``_state.commit``: eos, budgets, rollback, log-probabilities
   under the transformed target distribution at each committed position);
6. the draft source observes the verified step (rolls back its own cache, updates tables).

Rows of a batch accept different numbers of tokens; nothing is restricted to batch 1.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import struct

from tokjax.decoding._state import DecodeState, Strategy, check_like, commit
from tokjax.logits import LogitContext, LogitTransform
from tokjax.model import Inputs, ModelConfig, Tree, forward, repeat_rows, tree_ancestors

__all__ = ["Draft", "Verdict", "DraftSource", "Verifier", "Speculative", "speculative", "node_logits", "block_tree",
           "follows_commits"]


@struct.dataclass
class Draft:
    """One step's draft token tree for every row.

    ``tokens`` [B, N] int32 node tokens. ``parents`` [B, N] int32: parent node index (< n) or
    -1 (child of the pending token); a chain is -1, 0, 1, ... ``probs`` [B, N, V] float32 or
    None: the distribution node n's token was drawn from, given its parent path *and its
    earlier siblings* (for siblings drawn i.i.d. that is just q(.|parent path); for siblings
    drawn without replacement it is q with the earlier siblings removed, renormalised). None
    means a deterministic draft, treated as point masses by rejection verifiers. ``valid``
    [B, N] bool: the node exists for this row (invalid nodes are never accepted; their tokens
    must still be valid ids). ``layer_evals``: scalar int32, draft cost in layer evaluations.
    """

    tokens: jax.Array
    parents: jax.Array
    probs: jax.Array | None
    valid: jax.Array
    layer_evals: jax.Array


@struct.dataclass
class Verdict:
    """A verifier's decision for every row.

    ``path`` [B, A] node indices of the accepted path (root first; entries >= count ignored).
    ``count`` [B] int32 accepted draft nodes. ``bonus`` [B] int32 the token sampled (or
    argmaxed) after the accepted path, always committed. ``accept_at`` [B, A] bool: depth a
    was accepted (a < count). ``masked`` [B] bool: the target's logits at the end of the path
    were all -inf, so there is no bonus token (the row stops, as plain sampling would).
    """

    path: jax.Array
    count: jax.Array
    bonus: jax.Array
    accept_at: jax.Array
    masked: jax.Array | None = None


class DraftSource:
    """Base class of draft proposers: a frozen hashable dataclass (a static jit argument) with defaults.

    A subclass defines ``num_nodes`` (N, static) and ``propose``; the rest has defaults here:
    ``max_depth`` (static bound on an accepted path's depth; default N), ``validate(cfg)``,
    ``init(params, cfg, state) -> dstate`` (None), ``observe(...) -> dstate`` (unchanged),
    ``state_axes(dstate)`` (None: replicated; see ``Strategy.state_axes``) and, for hot start,
    ``persistent_state(dstate)`` / ``resume(dstate, saved)``.

    ``propose`` receives the target's LogitTransform (to draft from transformed logits) and
    ``observe`` the untransformed target logits ``raw_logits`` [B, 1+N, V] besides the
    transformed ones; a source that needs neither ignores them. Sources that do not subclass
    this (written before it) are called without those two arguments.
    """

    num_nodes: int

    @property
    def max_depth(self) -> int:
        return self.num_nodes

    def validate(self, cfg: ModelConfig) -> None:
        return None

    def init(self, params, cfg: ModelConfig, state: DecodeState) -> Any:
        return None

    def models(self) -> dict:
        """Other models the draft runs, ``{name: Model}``: their decode layouts reach ``init``, ``propose`` and
        ``observe`` as ``state.models[name]`` (see :class:`tokjax.decoding.Strategy`)."""
        return {}

    def propose(self, params, cfg: ModelConfig, state: DecodeState, dstate, key, transform: LogitTransform) -> tuple[Draft, Any]:
        raise NotImplementedError(f"{type(self).__name__} must define propose")

    def observe(
        self, params, cfg: ModelConfig, state: DecodeState, dstate, draft: Draft, target_logits: jax.Array,
        accepted: Verdict, raw_logits: jax.Array,
    ) -> Any:
        return dstate

    def state_axes(self, dstate) -> Any:
        return None

    def persistent_state(self, dstate) -> Any:
        return dstate

    def resume(self, dstate, saved) -> Any:
        return check_like(saved, dstate, "strategy_state")


class Verifier:
    """Base class of verifiers: a frozen hashable dataclass; ``lossless``: output follows the target's distribution.

    A subclass defines ``verify(key, draft, target_logits) -> Verdict``; ``validate(draft_source)``
    and ``check_transform(transform)`` (raise ValueError for a pairing it cannot verify exactly)
    default to accepting everything.
    """

    lossless: bool = True

    def validate(self, draft_source) -> None:
        return None

    def check_transform(self, transform: LogitTransform) -> None:
        return None

    def verify(self, key: jax.Array, draft: Draft, target_logits: jax.Array) -> Verdict:
        raise NotImplementedError(f"{type(self).__name__} must define verify")


def block_tree(draft: Draft) -> jax.Array:
    """Returns int32 [B, 1+N]: the parents of the verification block [pending, nodes...] (pending is the root)."""
    p = draft.parents.astype(jnp.int32)
    return jnp.concatenate([jnp.full((p.shape[0], 1), -1, jnp.int32), jnp.where(p >= 0, p + 1, 0)], axis=1)


def follows_commits(transform: LogitTransform) -> bool:
    """Returns whether ``transform``, or a member of its chain, declares ``state_follows_commits``: a state
    that is a function of the committed sequence (``tokjax.logits.grammar``'s automaton state)."""
    if getattr(transform, "state_follows_commits", False):
        return True
    members = getattr(transform, "members", None)
    return callable(members) and any(follows_commits(t) for t in members())


def node_logits(
    transform: LogitTransform, logits: jax.Array, logit_state, state: DecodeState, block_tokens: jax.Array,
    block_parents: jax.Array, *, return_state: bool = False,
):
    """Returns float32 [B, T, V]: ``transform`` applied to each block node's logits in that node's own context.

    Node t's context is the committed sequence (pending token included) followed by the
    tokens of t's ancestors and t itself, so penalties that count earlier tokens see exactly
    what plain decoding would see at that point. The transform's per-row state is shared by
    all nodes of a row; a transform that changes its state raises ValueError (a speculative
    step may commit several tokens, so a per-step state update has no single meaning), unless
    its state follows the committed sequence (:func:`follows_commits`): then it is applied to
    the root (the committed context) first, every node starts from that state, and the root's
    state is the step's new state, so rejected draft tails never reach it.
    ``return_state``: return ``(logits, new logit state)`` instead of the logits.
    """
    B, T, V = logits.shape
    S = state.tokens.shape[1]
    anc = tree_ancestors(block_parents)  # [B, T, T]
    depth = anc.sum(-1).astype(jnp.int32) - 1  # [B, T]
    last = state.lengths - 1
    # Ancestor j of node t (j > 0; j = 0 is the pending token, already in the buffer) goes to slot last + depth_j.
    is_anc = anc & (jnp.arange(T)[None, None, :] > 0)
    slots = jnp.where(is_anc, last[:, None, None] + depth[:, None, :], S)
    vals = jnp.broadcast_to(block_tokens[:, None, :], (B, T, T))
    ctx_tokens = jnp.broadcast_to(state.tokens[:, None, :], (B, T, S))
    ctx_tokens = ctx_tokens.at[jnp.arange(B)[:, None, None], jnp.arange(T)[None, :, None], slots].set(vals, mode="drop")
    ctx = LogitContext(
        tokens=ctx_tokens.reshape(B * T, S),
        lengths=jnp.minimum(state.lengths[:, None] + depth, S).reshape(B * T),
        step=state.step,
    )
    follows = follows_commits(transform)
    if follows:
        _, logit_state = transform.apply(logits[:, 0].astype(jnp.float32), logit_state, state.context())
    rep = repeat_rows(logit_state, B, T)
    out, new_state = transform.apply(logits.reshape(B * T, V).astype(jnp.float32), rep, ctx)
    for a, b in zip(jax.tree.leaves(rep), jax.tree.leaves(new_state)):
        if a is not b and not follows:
            raise ValueError(
                f"speculative decoding needs logit transforms whose state is constant during decoding; "
                f"{type(transform).__name__} updates its state"
            )
    out = out.reshape(B, T, V)
    return (out, logit_state) if return_state else out


def _max_depth(draft: DraftSource) -> int:
    return int(getattr(draft, "max_depth", draft.num_nodes))


def _legacy(obj, base) -> bool:
    """True for a draft source / verifier written before the base classes (duck-typed protocol)."""
    return not isinstance(obj, base)


@dataclasses.dataclass(frozen=True)
class Speculative(Strategy):
    """The speculative decode strategy: a draft source's tree verified in one target call (module docstring).

    Build it with :func:`speculative`. Its state is the draft source's state; sharding
    declaration and hot start are delegated to the draft source.
    """

    draft: Any
    verifier: Any

    @property
    def slack(self) -> int:
        return 1 + self.draft.num_nodes

    @property
    def max_accept(self) -> int:
        return 1 + _max_depth(self.draft)

    def validate(self, cfg: ModelConfig) -> None:
        if hasattr(self.draft, "validate"):
            self.draft.validate(cfg)
        if hasattr(self.verifier, "validate"):
            self.verifier.validate(self.draft)

    def init(self, params, cfg, state):
        return self.draft.init(params, cfg, state)

    def models(self) -> dict:
        return getattr(self.draft, "models", dict)()

    def state_axes(self, extra) -> Any:
        return None if _legacy(self.draft, DraftSource) else self.draft.state_axes(extra)

    def persistent_state(self, extra) -> Any:
        return extra if _legacy(self.draft, DraftSource) else self.draft.persistent_state(extra)

    def resume(self, extra, saved) -> Any:
        return check_like(saved, extra, "strategy_state") if _legacy(self.draft, DraftSource) else self.draft.resume(extra, saved)

    def step(self, params, cfg: ModelConfig, transform: LogitTransform, state: DecodeState, eos_id=None) -> DecodeState:
        if not _legacy(self.verifier, Verifier):
            self.verifier.check_transform(transform)
        B = state.tokens.shape[0]
        N = self.draft.num_nodes
        key, k_draft, k_verify = jax.random.split(state.key, 3)
        if _legacy(self.draft, DraftSource):
            draft, dstate = self.draft.propose(params, cfg, state, state.extra, k_draft)
        else:
            draft, dstate = self.draft.propose(params, cfg, state, state.extra, k_draft, transform)
        if draft.tokens.shape != (B, N) or draft.parents.shape != (B, N) or draft.valid.shape != (B, N):
            raise ValueError(
                f"draft source {type(self.draft).__name__} returned tokens {draft.tokens.shape}, parents "
                f"{draft.parents.shape}, valid {draft.valid.shape}; expected [B={B}, num_nodes={N}] each"
            )
        if draft.probs is not None and draft.probs.shape != (B, N, cfg.vocab_size):
            raise ValueError(f"draft probs must be [B, N, V]={(B, N, cfg.vocab_size)}, got {draft.probs.shape}")

        base = state.lengths - 1  # the cache holds lengths - 1 tokens; the pending token is slot base
        pending = jnp.take_along_axis(state.tokens, base[:, None], axis=1)
        block_tokens = jnp.concatenate([pending, draft.tokens.astype(jnp.int32)], axis=1)
        parents = block_tree(draft)
        depth = tree_ancestors(parents).sum(-1).astype(jnp.int32) - 1
        # Nodes deeper than the row's budget are never committed, but their positions must stay
        # inside the learned position table (an out-of-range take would write NaN keys to the cache).
        positions = jnp.minimum(base[:, None] + depth, cfg.max_len - 1)
        out = forward(params, cfg, Inputs(tokens=block_tokens, positions=positions), cache=state.cache, mask=Tree(parents))
        return self._verify_and_commit(params, cfg, transform, state, eos_id, key, k_verify, draft, dstate,
                                       block_tokens, parents, out, base)

    def _verify_and_commit(self, params, cfg, transform, state, eos_id, key, k_verify, draft, dstate,
                           block_tokens, parents, out, base) -> DecodeState:
        """Returns the next DecodeState after verifying ``draft`` against the target's block forward ``out``
        (logits of the pending token and every draft node, its cache with the block written at ``base``):
        the accepted path and the bonus token committed, the cache compacted, stats and the draft
        source's state updated. Shared by every speculative strategy whatever computed ``out``."""
        B, N, A = state.tokens.shape[0], self.draft.num_nodes, _max_depth(self.draft)
        logits, logit_state = node_logits(
            transform, out.logits, state.logit_state, state, block_tokens, parents, return_state=True
        )

        verdict = self.verifier.verify(k_verify, draft, logits)
        path = verdict.path[:, :A].astype(jnp.int32)
        count = jnp.minimum(verdict.count.astype(jnp.int32), A)
        src = jnp.concatenate([jnp.zeros((B, 1), jnp.int32), path + 1], axis=1)
        # Committed token a was chosen under the transformed target logits of its parent block node src[a].
        chosen_logits = jnp.take_along_axis(logits, src[:, :, None], axis=1)
        masked = jnp.zeros((B,), bool) if verdict.masked is None else verdict.masked
        # NaN / +inf logits at the bonus position are a broken model, not a ban: commit sees and reports them.
        at_bonus = jnp.take_along_axis(chosen_logits, count[:, None, None], axis=1)[:, 0]
        masked = masked & ~(jnp.isnan(at_bonus) | (at_bonus == jnp.inf)).any(-1)
        cache = out.cache.gather(base, src, 1 + count)

        path_tokens = jnp.take_along_axis(draft.tokens.astype(jnp.int32), jnp.clip(path, 0, N - 1), axis=1)
        idx = jnp.arange(A + 1)[None, :]
        padded = jnp.concatenate([path_tokens, jnp.zeros((B, 1), jnp.int32)], axis=1)
        new_tokens = jnp.where(idx < count[:, None], padded, jnp.where(idx == count[:, None], verdict.bonus[:, None], 0))
        n_commit = count + jnp.where(masked, 0, 1)

        live = ~state.done
        accept_at = jnp.arange(A)[None, :] < count[:, None]
        reached = jnp.arange(A)[None, :] <= count[:, None]
        stats = state.stats
        stats = stats.replace(
            forward_calls=stats.forward_calls + 1,
            draft_layer_evals=stats.draft_layer_evals + jnp.asarray(draft.layer_evals, jnp.int32),
            masked_rows=stats.masked_rows | (masked & live),
            position_accepted=stats.position_accepted + (accept_at & live[:, None]).sum(0).astype(jnp.int32),
            position_reached=stats.position_reached + (reached & live[:, None]).sum(0).astype(jnp.int32),
        )
        state = state.replace(cache=cache, key=key, stats=stats, logit_state=logit_state)
        new_state = commit(state, new_tokens, n_commit, eos_id, logits=chosen_logits)
        new_state = new_state.replace(done=new_state.done | masked)
        if _legacy(self.draft, DraftSource):
            dstate = self.draft.observe(params, cfg, new_state, dstate, draft, logits, verdict)
        else:
            dstate = self.draft.observe(params, cfg, new_state, dstate, draft, logits, verdict, out.logits)
        return new_state.replace(extra=dstate)


def speculative(draft, verify, *, num_draft: int | None = None) -> Speculative:
    """Returns the speculative decode strategy drafting with ``draft`` and verifying with ``verify``.

    ``num_draft``: optional override of the draft source's ``num_draft`` (nodes per step; a
    shape, so changing it recompiles). Raises ValueError for num_draft < 1 or objects that
    are not a draft source / verifier.
    """
    for attr in ("num_nodes", "init", "propose", "observe"):
        if not hasattr(draft, attr):
            raise ValueError(f"draft must be a DraftSource (see tokjax.decoding.drafts); {type(draft).__name__} lacks {attr!r}")
    if not hasattr(verify, "verify"):
        raise ValueError(f"verify must be a Verifier (see tokjax.decoding.verify); {type(verify).__name__} lacks 'verify'")
    if num_draft is not None:
        if not isinstance(num_draft, int) or isinstance(num_draft, bool) or num_draft < 1:
            raise ValueError(f"num_draft must be an int >= 1, got {num_draft!r}")
        if dataclasses.is_dataclass(draft) and any(f.name == "num_draft" for f in dataclasses.fields(draft)):
            draft = dataclasses.replace(draft, num_draft=num_draft)
        elif num_draft != draft.num_nodes:
            raise ValueError(
                f"{type(draft).__name__} has a fixed number of draft nodes ({draft.num_nodes}); num_draft={num_draft} "
                "cannot change it"
            )
    if draft.num_nodes < 1:
        raise ValueError(f"a draft source must propose at least one node, got num_nodes={draft.num_nodes}")
    return Speculative(draft=draft, verifier=verify)
