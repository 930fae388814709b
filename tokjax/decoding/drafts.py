"""Draft sources for speculative decoding: a smaller model, and n-gram prompt lookup.

* :func:`model` - a smaller tokjax Model with the target's vocabulary drafts ``num_draft``
  tokens autoregressively (HF "assisted generation"), from its logits under the target's
  logit transform (so q matches how p is processed), with its own KV cache kept in the draft
  state and rolled back to the committed length after verification. ``num_chains = k > 1``
  drafts k i.i.d. chains (a tree of k chains, SpecTr's draft; see ``spectr.py``).
* :func:`prompt_lookup` - prompt lookup decoding (apoorvumang/prompt-lookup-decoding; HF
  ``PromptLookupCandidateGenerator``): for n = max_ngram .. 1, find the *first* earlier
  occurrence of the row's last n tokens in its context and propose the (up to num_draft)
  tokens that followed it, cut at the end of the context. Deterministic (probs None).

Other helpers' sources (STAND ``ngram_memory``, ``recycling``, Kangaroo ``early_exit``, S2D
``nested``) live in their own modules and follow the same DraftSource protocol.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from tokjax.decoding._state import KV_CACHE, DecodeState
from tokjax.decoding.speculative import Draft, DraftSource, Verdict
from tokjax.logits import LogitContext, masked_softmax, sample
from tokjax.model import Inputs, KVCache, Model, ModelConfig, forward, prefill, repeat_rows

DRAFT = "draft"  # ModelDraft's name for its model in Strategy.models() / DecodeState.models

__all__ = [
    "ModelDraft", "ModelDraftState", "PromptLookup", "model", "prompt_lookup", "chain_parents",
    "ngram_memory", "recycling", "early_exit", "nested",  # re-exported from their papers' modules
]


def chain_parents(num_chains: int, length: int) -> np.ndarray:
    """Returns int32 [num_chains * length]: parents of k independent chains laid out chain-major."""
    d = np.arange(length)
    one = np.where(d == 0, -1, d - 1)
    return np.concatenate([one + np.where(one >= 0, j * length, 0) for j in range(num_chains)]).astype(np.int32)


def _draw(key, probs):
    return sample(key, probs=probs)[0]


@struct.dataclass
class ModelDraftState:
    """A draft model's decode state: its KV cache (``num_chains`` rows per target row). Its weights are the
    driver's decode layout, read from ``state.models["draft"]`` (``ModelDraft.models``)."""

    cache: KVCache


@dataclasses.dataclass(frozen=True)
class ModelDraft(DraftSource):
    """A smaller model of the target's vocabulary drafting ``num_chains`` chains of ``num_draft`` tokens (see :func:`model`)."""

    draft_params: object = dataclasses.field(compare=False, hash=False, repr=False)
    draft_cfg: ModelConfig
    num_draft: int
    num_chains: int = 1

    @property
    def num_nodes(self) -> int:
        return self.num_draft * self.num_chains

    @property
    def max_depth(self) -> int:
        return self.num_draft

    def validate(self, cfg: ModelConfig) -> None:
        if self.draft_cfg.vocab_size != cfg.vocab_size:
            raise ValueError(
                f"draft model vocabulary ({self.draft_cfg.vocab_size}) differs from the target's ({cfg.vocab_size}); "
                "a draft model must share the target's tokenizer"
            )
        if self.draft_cfg.max_len < cfg.max_len and self.draft_cfg.positions == "learned":
            raise ValueError(f"draft model max_len {self.draft_cfg.max_len} < target max_len {cfg.max_len}")

    def models(self) -> dict:
        return {DRAFT: Model(params=self.draft_params, cfg=self.draft_cfg)}

    def init(self, params, cfg, state: DecodeState) -> ModelDraftState:
        P = int(np.max(np.asarray(state.prompt_lengths)))
        capacity = state.tokens.shape[1] + self.num_draft + 2
        cache = prefill(state.models[DRAFT], self.draft_cfg, state.tokens[:, :P], state.prompt_lengths, capacity)
        return ModelDraftState(cache=cache.fork(self.num_chains) if self.num_chains > 1 else cache)

    def state_axes(self, dstate: ModelDraftState):
        return ModelDraftState(cache=KV_CACHE)

    def propose(self, params, cfg, state: DecodeState, dstate: ModelDraftState, key, transform):
        B, S = state.tokens.shape
        k, N, dcfg = self.num_chains, self.num_draft, self.draft_cfg
        dparams, cache = state.models[DRAFT], dstate.cache
        lengths = jnp.repeat(state.lengths, k)
        tokens = jnp.repeat(state.tokens, k, axis=0)
        ctx = LogitContext(tokens=tokens, lengths=lengths, step=state.step)
        lstate = repeat_rows(state.logit_state, B, k)

        def dist(logits):  # q is drawn from the target's transform of the draft logits, as p is processed
            logits, _ = transform.apply(logits.astype(jnp.float32), lstate, ctx)
            # An all-masked draft row falls back to uniform (the draft is only a proposal).
            return masked_softmax(logits, empty="uniform")

        # The draft cache holds lengths-2 or lengths-1 tokens (one behind after a fully accepted
        # step); feeding the two slots from its length catches up and yields the pending token's logits.
        have = cache.lengths[0]
        idx = jnp.clip(have[:, None] + jnp.arange(2)[None, :], 0, S - 1)
        out = forward(dparams, dcfg, Inputs(tokens=jnp.take_along_axis(tokens, idx, axis=1)), cache=cache)
        first = jnp.take_along_axis(out.logits, (lengths - 1 - have)[:, None, None], axis=1)[:, 0]
        cache = out.cache.rollback(lengths)

        def step(carry, sub):
            cache, logits = carry
            q = dist(logits)
            x = _draw(sub, q)
            out = forward(dparams, dcfg, Inputs(tokens=x[:, None]), cache=cache)
            return (out.cache, out.logits[:, 0]), (x, q)

        keys = jax.random.split(key, N)
        (cache, last), (xs, qs) = jax.lax.scan(step, (cache, first), keys[:-1])
        q_last = dist(last)
        x_last = _draw(keys[-1], q_last)
        xs = jnp.concatenate([xs, x_last[None]], axis=0)  # [N, R]
        qs = jnp.concatenate([qs, q_last[None]], axis=0)  # [N, R, V]
        V = qs.shape[-1]
        toks = jnp.swapaxes(xs, 0, 1).reshape(B, k * N)
        probs = jnp.swapaxes(qs, 0, 1).reshape(B, k * N, V)
        parents = jnp.broadcast_to(jnp.asarray(chain_parents(k, N)), (B, k * N))
        draft = Draft(
            tokens=toks, parents=parents, probs=probs, valid=jnp.ones((B, k * N), bool),
            layer_evals=jnp.asarray(N * k * dcfg.n_layers, jnp.int32),
        )
        return draft, ModelDraftState(cache=cache)

    def observe(self, params, cfg, state: DecodeState, dstate: ModelDraftState, draft: Draft, target_logits,
                accepted: Verdict, raw_logits):
        cache = dstate.cache
        k, N = self.num_chains, self.num_draft
        if k > 1:
            B = state.tokens.shape[0]
            chain = jnp.where(accepted.count > 0, accepted.path[:, 0] // N, 0)
            cache = cache.select_rows(jnp.repeat(jnp.arange(B) * k + chain, k))
        return dstate.replace(cache=cache.rollback(jnp.repeat(state.lengths - 1, k)))


def model(draft_model, draft_cfg: ModelConfig | None = None, num_draft: int = 4, *, num_chains: int = 1) -> ModelDraft:
    """Returns a draft source that runs a smaller tokjax model (``Model``, or params plus ``draft_cfg``).

    ``num_draft`` tokens per chain and step (>= 1); ``num_chains`` i.i.d. chains (>= 1; SpecTr
    uses k > 1). The draft's vocabulary must equal the target's (checked by generate).
    """
    if isinstance(draft_model, Model):
        if draft_cfg is not None and draft_cfg != draft_model.cfg:
            raise ValueError("pass either a Model or params with draft_cfg, not a Model with a different draft_cfg")
        params, draft_cfg = draft_model.params, draft_model.cfg
    else:
        params = draft_model
        if not isinstance(draft_cfg, ModelConfig):
            raise ValueError("drafts.model needs a tokjax Model, or draft params together with draft_cfg=ModelConfig")
    for name, v in (("num_draft", num_draft), ("num_chains", num_chains)):
        if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 1:
            raise ValueError(f"{name} must be an int >= 1, got {v!r}")
    return ModelDraft(draft_params=params, draft_cfg=draft_cfg, num_draft=int(num_draft), num_chains=int(num_chains))


@dataclasses.dataclass(frozen=True)
class PromptLookup(DraftSource):
    """Prompt lookup: drafts the tokens that followed the first earlier match of a row's last n-gram (see :func:`prompt_lookup`)."""

    max_ngram: int = 2
    num_draft: int = 10

    @property
    def num_nodes(self) -> int:
        return self.num_draft

    def propose(self, params, cfg, state: DecodeState, dstate, key, transform):
        tokens, L = state.tokens, state.lengths
        B, S = tokens.shape
        idx = jnp.arange(S)
        start = jnp.full((B,), -1, jnp.int32)
        for n in range(self.max_ngram, 0, -1):  # longest n-gram first; the first size with a match wins
            suffix = jnp.take_along_axis(tokens, jnp.clip(L[:, None] - n + jnp.arange(n)[None, :], 0, S - 1), axis=1)
            match = jnp.ones((B, S), bool)
            for j in range(n):
                shifted = jnp.take_along_axis(tokens, jnp.clip(idx[None, :] + j, 0, S - 1), axis=1)
                match = match & (shifted == suffix[:, j:j + 1])
            # the continuation must start inside the context: i + n < L (so the suffix itself never matches)
            match = match & (idx[None, :] + n < L[:, None]) & (n <= L[:, None] - 1)
            found = match.any(-1)
            first = jnp.argmax(match, axis=-1).astype(jnp.int32) + n
            start = jnp.where((start < 0) & found, first, start)
        pos = start[:, None] + jnp.arange(self.num_draft)[None, :]
        valid = (start[:, None] >= 0) & (pos < L[:, None])
        toks = jnp.where(valid, jnp.take_along_axis(tokens, jnp.clip(pos, 0, S - 1), axis=1), 0)
        parents = jnp.broadcast_to(jnp.arange(self.num_draft, dtype=jnp.int32) - 1, (B, self.num_draft))
        return Draft(tokens=toks, parents=parents, probs=None, valid=valid, layer_evals=jnp.zeros((), jnp.int32)), None


def prompt_lookup(max_ngram: int = 2, num_draft: int = 10) -> PromptLookup:
    """Returns the prompt-lookup draft source (HF defaults: max_ngram 2, 10 tokens).

    Raises ValueError unless both are ints >= 1.
    """
    for name, v in (("max_ngram", max_ngram), ("num_draft", num_draft)):
        if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 1:
            raise ValueError(f"{name} must be an int >= 1, got {v!r}")
    return PromptLookup(max_ngram=int(max_ngram), num_draft=int(num_draft))


# Draft sources of individual papers live in their own modules; re-exported so every draft
# source is reachable as tokjax.decoding.drafts.<name>.
from tokjax.decoding.kangaroo import early_exit  # noqa: E402  (P44)
from tokjax.decoding.s2d import nested  # noqa: E402  (P59)
from tokjax.decoding.stand import ngram_memory  # noqa: E402  (P22)
from tokjax.decoding.token_recycling import recycling  # noqa: E402  (P45)
