"""P59 S2D (Kavehzadeh et al., 2024): "S2D: Sorted Speculative Decoding For More Efficient Deployment of Nested
Large Language Models" (official code: parsareal/SD2).

A *sorted* draft model holds nested sub-models: its first ``k`` layers, read out through the shared
final norm and LM head, for every ``k`` in ``exits`` (SD2: the first 12 layers of Vicuna-7B with
exits 6, 9, 12). Sorted fine-tuning (SoFT) trains all exits at once::

    L_SoFT = sum_{k in exits} w_k * CE(head(norm(h_k)), y)                  (P59, shared head)

:func:`sorted_loss` is that loss; ``tokjax.train.recipes.s2d.sorted_finetune`` runs it through
``tokjax.train`` (training sits above decoding, so the fitting function lives there).

Drafting one token picks the sub-model by confidence (official ``inference/model/sd2/decoding.py``)::

    run layers up to exit k_1; p = softmax(head(norm(h))); if max p > theta_1: emit argmax p
    else continue to k_2 (first completing the deferred KV of earlier tokens that exited at k_1), ...
    the last exit always emits (theta_last = 0; SD2 defaults (6, 9, 12), thresholds (0.5, 0.5, 0))

Verification is standard speculative decoding with the target (any verifier of
``tokjax.decoding.verify``; greedy verification reproduces plain greedy decoding exactly).

Batched: the exit is chosen per row, a deeper segment runs when any row needs it (rows that had
exited get their KV filled by the same call, which is exact), and the deferred KV of tokens that
exited early is filled by pushing their stored boundary hidden states through the deeper segment
in one block call. The first draft token of a step (the pending token) runs the full draft depth,
which also completes the KV of every token committed since the last step.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from tokjax.decoding._state import KV_CACHE, DecodeState, unstacked_param_axes
from tokjax.decoding.speculative import Draft, DraftSource, Verdict
from tokjax.logits import hparam, masked_softmax, target_logprobs
from tokjax.model import (
    Inputs, Model, ModelConfig, Taps, final_norm, forward, prefill, stack_layers, unembed, unstack_layers,
)

__all__ = [
    "Nested", "nested", "sorted_loss", "truncate", "exit_logits", "exit_metrics", "check_exits",
]


def check_exits(exits: Sequence[int], n_layers: int) -> tuple[int, ...]:
    """Returns ``exits`` as a tuple after checking 1 <= k_1 < k_2 < ... <= n_layers; raises ValueError otherwise."""
    ex = tuple(int(k) for k in exits)
    if not ex or any(not 1 <= k <= n_layers for k in ex) or any(a >= b for a, b in zip(ex, ex[1:])):
        raise ValueError(
            f"exits must be strictly increasing layer counts in [1, n_layers={n_layers}] (sub-model depths), "
            f"got {tuple(exits)}"
        )
    return ex


# ------------------------------------------------------------------------------ training
def exit_logits(params, cfg: ModelConfig, tokens: jax.Array, exits: Sequence[int]) -> jax.Array:
    """Returns float32 [len(exits), B, T, V]: each nested sub-model's logits (shared final norm + head) in one forward."""
    ex = check_exits(exits, cfg.n_layers)
    out = forward(params, cfg, Inputs(tokens=tokens), taps=Taps(layers=tuple(k - 1 for k in ex), sites=("resid_post",)))
    hs = out.taps["resid_post"]  # [n_exits, B, T, D]
    return jnp.stack([unembed(params, cfg, final_norm(params, cfg, hs[i])) for i in range(len(ex))])


def sorted_loss(exits: Sequence[int], weights: Sequence[float] | None = None):
    """Returns a tokjax loss ``fn(params, cfg, batch, rng) -> (loss, metrics)``: SoFT, the weighted sum of exit CEs (P59).

    ``weights`` default to 1 per exit (as in SD2's train_soft). Metrics: ``loss``, ``ce_k<k>`` and
    ``acc_k<k>`` per exit. ``batch['tokens']`` [B, T+1], optional ``batch['mask']`` [B, T].
    """
    ex = tuple(int(k) for k in exits)
    w = tuple(1.0 for _ in ex) if weights is None else tuple(float(x) for x in weights)
    if len(w) != len(ex):
        raise ValueError(f"weights must have one entry per exit ({len(ex)}), got {len(w)}")

    def loss_fn(params, cfg: ModelConfig, batch: Mapping[str, jax.Array], rng=None):
        del rng
        check_exits(ex, cfg.n_layers)
        tokens = jnp.asarray(batch["tokens"], jnp.int32)
        x, y = tokens[:, :-1], tokens[:, 1:]
        logits = exit_logits(params, cfg, x, ex)  # one head per exit: the logits are in hand
        nll = -target_logprobs(logits, jnp.broadcast_to(y[None], logits.shape[:-1]))
        m = jnp.ones(y.shape, jnp.float32) if batch.get("mask") is None else jnp.asarray(batch["mask"], jnp.float32)
        denom = jnp.maximum(m.sum(), 1e-9)
        ces = jnp.sum(nll * m[None], axis=(1, 2)) / denom
        accs = jnp.sum((jnp.argmax(logits, -1) == y[None]) * m[None], axis=(1, 2)) / denom
        loss = jnp.sum(jnp.asarray(w) * ces)
        metrics = {"loss": loss}
        for i, k in enumerate(ex):
            metrics[f"ce_k{k}"] = ces[i]
            metrics[f"acc_k{k}"] = accs[i]
        return loss, metrics

    return loss_fn


def truncate(model: Model, n_layers: int) -> Model:
    """Returns a Model made of ``model``'s first ``n_layers`` layers with its embedding, final norm and head."""
    if not isinstance(n_layers, int) or not 1 <= n_layers <= model.cfg.n_layers:
        raise ValueError(f"n_layers must be an int in [1, {model.cfg.n_layers}], got {n_layers!r}")
    params = stack_layers(model.params)
    params = {**params, "layers": jax.tree.map(lambda a: jnp.array(a[:n_layers]), params["layers"])}
    return Model(params=params, cfg=model.cfg.replace(n_layers=n_layers))


@functools.partial(jax.jit, static_argnames=("cfg", "exits"))
def _exit_stats(params, cfg, tokens, target_argmax, exits):
    logits = exit_logits(params, cfg, tokens[:, :-1], exits)
    y = tokens[:, 1:]
    nll = -target_logprobs(logits, jnp.broadcast_to(y[None], logits.shape[:-1]))
    pred = jnp.argmax(logits, -1)
    conf = masked_softmax(logits).max(-1)
    return nll.mean((1, 2)), (pred == target_argmax[None]).mean((1, 2)), conf.mean((1, 2))


def exit_metrics(draft: Model, exits: Sequence[int], target: Model, windows: np.ndarray, *, batch_size: int = 16) -> dict:
    """Returns per exit {"ce": nats/token, "agree": top-1 agreement with ``target``, "conf": mean max prob}."""
    ex = check_exits(exits, draft.cfg.n_layers)
    tgt = jax.jit(lambda p, t: jnp.argmax(forward(p, target.cfg, Inputs(tokens=t)).logits, -1))
    acc = np.zeros((3, len(ex)))
    n = 0
    for i in range(0, len(windows), batch_size):
        toks = jnp.asarray(windows[i:i + batch_size])
        ta = tgt(target.params, toks[:, :-1])
        ce, agree, conf = _exit_stats(draft.params, draft.cfg, toks, ta, ex)
        k = toks.shape[0]
        acc += k * np.stack([np.asarray(ce), np.asarray(agree), np.asarray(conf)])
        n += k
    acc /= max(n, 1)
    return {k: {"ce": float(acc[0, i]), "agree": float(acc[1, i]), "conf": float(acc[2, i])} for i, k in enumerate(ex)}


# ---------------------------------------------------------------------------- draft source
def _take_rows(x: jax.Array, start: jax.Array, size: int) -> jax.Array:
    """Returns x[b, start[b] : start[b] + size] for every row (indices clipped into range)."""
    idx = jnp.clip(start[:, None] + jnp.arange(size)[None, :], 0, x.shape[1] - 1)
    return jnp.take_along_axis(x, idx.reshape(idx.shape + (1,) * (x.ndim - 2)), axis=1)


@dataclasses.dataclass(frozen=True)
class Nested(DraftSource):
    """The P59 S2D nested draft source: a sorted draft's sub-models, each token exiting at the first confident one.

    Build it with :func:`nested`; use it as ``speculative(nested(...), verifier)``.
    """

    draft_params: Any = dataclasses.field(compare=False, hash=False, repr=False)
    draft_cfg: ModelConfig
    exits: tuple
    num_draft: int = 4
    thresholds: Any = hparam(None)

    @property
    def num_nodes(self) -> int:
        return self.num_draft

    def validate(self, cfg: ModelConfig) -> None:
        check_exits(self.exits, self.draft_cfg.n_layers)
        if self.draft_cfg.vocab_size != cfg.vocab_size:
            raise ValueError(
                f"draft vocabulary ({self.draft_cfg.vocab_size}) differs from the target's ({cfg.vocab_size}); the nested "
                "draft must share the target's tokenizer"
            )

    def _cfg(self) -> ModelConfig:
        return self.draft_cfg.replace(n_layers=self.exits[-1])  # layers past the deepest exit never run

    def init(self, params, cfg: ModelConfig, state: DecodeState):
        dcfg = self._cfg()
        P = int(np.max(np.asarray(state.prompt_lengths)))
        capacity = state.tokens.shape[1] + self.num_draft + 2
        dparams = stack_layers(self.draft_params)
        dparams = {**dparams, "layers": jax.tree.map(lambda a: a[: dcfg.n_layers], dparams["layers"])}
        dparams = jax.tree.map(jnp.copy, unstack_layers(dparams))  # the decode state is donated
        cache = prefill(dparams, dcfg, state.tokens[:, :P], state.prompt_lengths, capacity)
        thr = np.zeros(len(self.exits), np.float32) if self.thresholds is None else np.asarray(self.thresholds, np.float32)
        return {"params": dparams, "cache": cache, "thresholds": jnp.asarray(thr),
                "exit_counts": jnp.zeros((len(self.exits),), jnp.int32),
                "last_exits": jnp.zeros((state.tokens.shape[0], self.num_draft), jnp.int32)}

    def state_axes(self, dstate):
        # the draft's weights like a second model's (up to the deepest exit), its cache like the target's
        return {"params": unstacked_param_axes(self._cfg()), "cache": KV_CACHE, "thresholds": None,
                "exit_counts": None, "last_exits": ("batch", None)}

    def propose(self, params, cfg: ModelConfig, state: DecodeState, dstate, key, transform):
        dcfg = self._cfg()
        dparams, cache, thr = dstate["params"], dstate["cache"], dstate["thresholds"]
        B, S = state.tokens.shape
        N, ex = self.num_draft, self.exits
        K = len(ex)
        bounds = (0,) + ex
        p = state.lengths - 1

        def exit_head(h, end):  # forward returns the final-normed stream when `end` is the last draft layer
            return unembed(dparams, dcfg, h if end == dcfg.n_layers else final_norm(dparams, dcfg, h))[:, 0]

        # Catch-up: every layer gets the tokens committed since its length, plus the pending token
        # (the deepest layer lags by at most N + 1 tokens), in one full-depth block.
        C = N + 1
        have = cache.lengths[-1]
        pos = have[:, None] + jnp.arange(C, dtype=jnp.int32)[None, :]
        toks = jnp.take_along_axis(state.tokens, jnp.clip(pos, 0, S - 1), axis=1)
        # slots past the pending token are scratch (rolled back below); clipped positions keep them finite
        safe_pos = jnp.minimum(pos, dcfg.max_len - 1)
        out = forward(dparams, dcfg, Inputs(tokens=toks, positions=safe_pos), cache=cache.rollback(have))
        logits = jnp.take_along_axis(out.logits, (p - have)[:, None, None], axis=1)[:, 0]
        cache = out.cache.rollback(p + 1)
        evals = jnp.asarray(dcfg.n_layers, jnp.int32)

        M = max(N - 1, 1)  # draft tokens fed this step (d_0 .. d_{N-2}), indexed by r = position - (p + 1)
        H = jnp.zeros((K, B, M, dcfg.d_model), dcfg.dtype)  # H[i]: hidden entering segment i (i >= 1)
        toks_out = jnp.zeros((B, N), jnp.int32)
        exit_used = jnp.full((B, N), K - 1, jnp.int32)  # node 0 (after the pending token) runs the full depth
        def feed(j, carry):
            # feed d_j at position p + 1 + j: segment 0 from the token, deeper segments on demand
            cache, H, logits, toks_out, exit_used, evals = carry
            d = jnp.argmax(logits, -1).astype(jnp.int32)
            toks_out = toks_out.at[:, j].set(d)
            r = j
            pos = jnp.minimum(p + 1 + j, dcfg.max_len - 1)[:, None]
            o = forward(dparams, dcfg, Inputs(tokens=d[:, None], positions=pos), cache=cache, layers=(0, bounds[1]),
                        compute_logits=False)
            cache, h = o.cache, o.hidden
            evals = evals + bounds[1]
            lg = exit_head(h, bounds[1])
            conf = jax.nn.softmax(lg.astype(jnp.float32), -1).max(-1)
            new_logits, chosen = lg, jnp.zeros((B,), jnp.int32)
            done = conf > thr[0]
            if K > 1:
                H = H.at[1, :, r].set(h[:, 0])
            for i in range(1, K):
                lo, hi = bounds[i], bounds[i + 1]

                def deeper(args, i=i, lo=lo, hi=hi):
                    cache, H, new_logits, chosen, done = args
                    # deferred KV: the segment's lagging tokens (exited early before) and this one, in one block
                    start = cache.lengths[lo] - (p + 1)
                    blk = _take_rows(H[i], start, M)
                    blk_pos = (p + 1)[:, None] + start[:, None] + jnp.arange(M, dtype=jnp.int32)[None, :]
                    blk_pos = jnp.minimum(blk_pos, dcfg.max_len - 1)
                    o = forward(dparams, dcfg, Inputs(hidden=blk, positions=blk_pos), cache=cache, layers=(lo, hi),
                                compute_logits=False)
                    cache = o.cache.rollback(p + 2 + r)
                    hb = o.hidden  # [B, M, D]: raw residual (normed when hi is the last draft layer)
                    if i + 1 < K:  # store the outputs as the next segment's inputs
                        rel = start[:, None] + jnp.arange(M)[None, :]
                        rows = jnp.arange(B)[:, None]
                        H = H.at[i + 1, rows, jnp.where(rel <= r, rel, M)].set(hb, mode="drop")
                    lg = exit_head(jnp.take_along_axis(hb, (r - start)[:, None, None], axis=1), hi)
                    conf = jax.nn.softmax(lg.astype(jnp.float32), -1).max(-1)
                    take = ~done
                    new_logits = jnp.where(take[:, None], lg, new_logits)
                    chosen = jnp.where(take, i, chosen)
                    done = done | (conf > thr[i]) | (i == K - 1)
                    return cache, H, new_logits, chosen, done

                ran = ~jnp.all(done)
                cache, H, new_logits, chosen, done = jax.lax.cond(
                    ran, deeper, lambda a: a, (cache, H, new_logits, chosen, done))
                evals = evals + ran.astype(jnp.int32) * (hi - lo)
            exit_used = exit_used.at[:, j + 1].set(chosen)
            return cache, H, new_logits, toks_out, exit_used, evals

        carry = (cache, H, logits, toks_out, exit_used, evals)
        cache, H, logits, toks_out, exit_used, evals = jax.lax.fori_loop(0, N - 1, feed, carry)
        toks_out = toks_out.at[:, N - 1].set(jnp.argmax(logits, -1).astype(jnp.int32))
        parents = jnp.broadcast_to(jnp.arange(N, dtype=jnp.int32) - 1, (B, N))
        draft = Draft(tokens=toks_out, parents=parents, probs=None, valid=jnp.ones((B, N), bool), layer_evals=evals)
        live = ~state.done
        used = (jax.nn.one_hot(exit_used, K, dtype=jnp.int32) * live[:, None, None]).sum((0, 1))
        return draft, {**dstate, "cache": cache, "exit_counts": dstate["exit_counts"] + used, "last_exits": exit_used}

    def observe(self, params, cfg, state: DecodeState, dstate, draft: Draft, target_logits, accepted: Verdict,
                raw_logits):
        return {**dstate, "cache": dstate["cache"].rollback(state.lengths - 1)}


def nested(draft, exits: Sequence[int], thresholds: Sequence[float] | None = None, num_draft: int = 4, *,
           draft_cfg: ModelConfig | None = None) -> Nested:
    """Returns the S2D (P59) nested draft source: sub-models of ``draft`` exiting at ``exits`` chosen by confidence.

    ``draft``: a (SoFT fine-tuned) tokjax ``Model`` sharing the target's vocabulary, or its params
    with ``draft_cfg``. ``thresholds`` (one per exit, runtime values; the last is ignored and
    treated as 0; default SD2's 0.5 for every earlier exit): a token exits at the first sub-model
    whose max probability exceeds its threshold. ``num_draft`` tokens per step.
    """
    if isinstance(draft, Model):
        params, dcfg = draft.params, draft.cfg
    else:
        params, dcfg = draft, draft_cfg
        if not isinstance(dcfg, ModelConfig):
            raise ValueError("nested needs a tokjax Model, or draft params together with draft_cfg=ModelConfig")
    ex = check_exits(exits, dcfg.n_layers)
    if not isinstance(num_draft, (int, np.integer)) or isinstance(num_draft, bool) or num_draft < 1:
        raise ValueError(f"num_draft must be an int >= 1, got {num_draft!r}")
    thr = [0.5] * (len(ex) - 1) + [0.0] if thresholds is None else [float(t) for t in thresholds]
    if len(thr) != len(ex):
        raise ValueError(f"thresholds must have one entry per exit ({len(ex)}), got {len(thr)}")
    if any(not 0.0 <= t <= 1.0 for t in thr):
        raise ValueError(f"thresholds must lie in [0, 1] (max-softmax confidences), got {thr}")
    thr[-1] = 0.0
    return Nested(draft_params=params, draft_cfg=dcfg, exits=ex, num_draft=int(num_draft), thresholds=tuple(thr))
