"""P44 Kangaroo (Liu et al., 2024): "Kangaroo: Lossless Self-Speculative Decoding via Double Early Exiting".

The draft model is the target's own first ``layer`` layers (shared weights and shared KV) plus a
small trained *adapter* with its own final RMSNorm, read out through the target's shared LM head::

    e_t   = layers[0 : layer](x_<=t)                         (first early exit: shallow sub-network)
    q_t   = softmax(head(norm_a(e_t + Attn_a(norm(e_t)))))   (adapter: one attention block, no MLP,
                                                             its own RMSNorm; official kangaroo/adapter.py)
    draft d_j = argmax q; stop after d_j once max q < eta    (second early exit, official
                                                             evaluation/inference_kangaroo.py)

The adapter is trained by soft-label distillation with the base frozen (official train.py)::

    L = - sum_v p_target(v | x_<=t) log q_t(v)              p_target: the full model, stop-gradient

(:func:`adapter_distill_loss` on :func:`distill_batch` batches; ``tokjax.train.recipes.kangaroo.fit_adapter``
runs it through ``tokjax.train`` with the adapter as a standalone params pytree.)

Verification is standard speculative decoding (``tokjax.decoding.speculative`` with any verifier;
greedy verification makes the output identical to plain greedy decoding). Batched and ragged: each
row stops drafting at its own confidence drop (its later nodes are marked invalid); the draft loop
ends when every row has stopped.

Not done (the paper's optional saving): the verification pass recomputes layers 0..layer-1 for the
drafted tokens instead of reusing the shallow hidden states and KV computed while drafting.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from tokjax.decoding._state import KV_CACHE, DecodeState
from tokjax.decoding.speculative import Draft, DraftSource, Verdict
from tokjax.logits import hparam, masked_log_softmax, masked_softmax
from tokjax.model import (
    Inputs, KVCache, Model, ModelConfig, Taps, blocks, final_norm, forward, init_params, lm_head, stack_layers, unembed,
    unstack_layers,
)

__all__ = [
    "EarlyExit", "early_exit", "adapter_config", "init_adapter", "adapter_logits", "shallow_and_target",
    "adapter_distill_loss", "distill_batch", "distill_metrics",
]


# ------------------------------------------------------------------------------- adapter
def adapter_config(cfg: ModelConfig, *, mlp: bool = False) -> ModelConfig:
    """Returns the adapter's config: one block of the target's width (a tiny unused MLP unless ``mlp``)."""
    return cfg.replace(n_layers=1, d_ff=None if mlp else 1)


def _no_mlp(m, layer):
    return jnp.zeros_like(m)


_NO_MLP_HOOKS = {"layer.*.mlp_out": _no_mlp}


def init_adapter(model: Model, layer: int, key: jax.Array, *, mlp: bool = False, warm_start: bool = True) -> dict:
    """Returns adapter params {"layers", "final_norm"} for exiting ``model`` after ``layer`` layers.

    ``warm_start`` copies target layer ``layer``'s attention (and the target's final norm) as the
    starting point, our choice for tiny training budgets; the official code starts from a fresh init.
    """
    cfg = model.cfg
    _check_layer(layer, cfg)
    acfg = adapter_config(cfg, mlp=mlp)
    fresh = init_params(acfg, key)
    params = {"layers": fresh["layers"], "final_norm": fresh["final_norm"]}
    if warm_start:
        stacked = stack_layers(model.params)["layers"]
        src = jax.tree.map(lambda a: a[layer:layer + 1], stacked)
        shapes = lambda t: jax.tree.map(jnp.shape, t)  # noqa: E731
        keep = {k: src[k] for k in params["layers"] if k in src and shapes(src[k]) == shapes(params["layers"][k])}
        params["layers"] = {**params["layers"], **keep}
        params["final_norm"] = jax.tree.map(jnp.array, model.params["final_norm"])
    return params


def adapter_logits(adapter, acfg: ModelConfig, params, cfg: ModelConfig, hidden, positions, *, cache=None, mlp=False):
    """Returns (logits [B, T, V] float32, adapter cache) of the adapter on exited hidden states through the shared head."""
    h, cache, _ = blocks(adapter, acfg, hidden, positions, cache=cache, hooks=None if mlp else _NO_MLP_HOOKS)
    return unembed(params, cfg, final_norm(adapter, acfg, h)), cache


def _check_layer(layer, cfg: ModelConfig) -> None:
    if not isinstance(layer, (int, np.integer)) or isinstance(layer, bool) or not 1 <= layer < cfg.n_layers:
        raise ValueError(
            f"early-exit layer must be an int in [1, n_layers - 1] = [1, {cfg.n_layers - 1}] (the draft runs the "
            f"first `layer` layers of the target), got {layer!r}"
        )


# ------------------------------------------------------------------------------- training
def shallow_and_target(params, cfg: ModelConfig, tokens: jax.Array, layer: int) -> tuple[jax.Array, jax.Array]:
    """Returns (e [B, T, D] the residual stream after ``layer`` layers, full-model logits [B, T, V]) in one forward."""
    out = forward(params, cfg, Inputs(tokens=tokens), taps=Taps(layers=(layer - 1,), sites=("resid_post",)))
    return out.taps["resid_post"][0], out.logits


def adapter_distill_loss(mlp: bool = False, *, acfg: ModelConfig | None = None):
    """Returns a tokjax loss ``fn(adapter, cfg, batch, rng) -> (loss, metrics)``: P44's soft-label distillation.

    ``adapter`` is the adapter params pytree alone (the base is frozen and not an argument);
    ``cfg`` its config (:func:`adapter_config`), or None when ``acfg`` is given (``tokjax.train``
    passes None for a standalone params pytree). ``batch`` (see :func:`distill_batch`): ``hidden``
    [B, T, D] exited states of the base, ``target_logits`` [B, T, V] of the full model, ``head``
    [D, V] the shared LM head, optional ``mask`` [B, T]. Loss: mean over tokens of
    -sum_v p_target(v) log q(v). Metrics: ``prob_acc`` = mean sum_v min(p, q) (the official
    "Accept" log, the expected acceptance of sampling verification) and ``top1`` agreement.
    """

    def loss_fn(adapter, cfg: ModelConfig | None, batch: Mapping[str, jax.Array], rng=None):
        del rng
        a_cfg = acfg if cfg is None else cfg
        if not isinstance(a_cfg, ModelConfig):
            raise ValueError("adapter_distill_loss needs the adapter config: pass cfg or build it with acfg=")
        for key in ("hidden", "target_logits", "head"):
            if key not in batch:
                raise ValueError(f"the distillation batch needs {key!r} (build it with kangaroo.distill_batch)")
        hidden = batch["hidden"]
        B, T, _ = hidden.shape
        pos = jnp.broadcast_to(jnp.arange(T, dtype=jnp.int32), (B, T))
        h, _, _ = blocks(adapter, a_cfg, hidden.astype(a_cfg.dtype), pos, hooks=None if mlp else _NO_MLP_HOOKS)
        logits = unembed(adapter, a_cfg, final_norm(adapter, a_cfg, h), head=batch["head"])
        logq = masked_log_softmax(logits)  # a full distribution is compared, so no target gather here
        p = jax.lax.stop_gradient(masked_softmax(batch["target_logits"]))
        w = jnp.ones((B, T), jnp.float32) if batch.get("mask") is None else jnp.asarray(batch["mask"], jnp.float32)
        denom = jnp.maximum(w.sum(), 1e-9)
        ce = -jnp.sum(p * logq, -1)
        loss = jnp.sum(w * ce) / denom
        acc = jnp.sum(w * jnp.minimum(p, jnp.exp(logq)).sum(-1)) / denom
        top1 = jnp.sum(w * (jnp.argmax(logq, -1) == jnp.argmax(p, -1))) / denom
        return loss, {"loss": loss, "prob_acc": acc, "top1": top1}

    return loss_fn


@functools.partial(jax.jit, static_argnames=("cfg", "layer"))
def _teacher(params, cfg, tokens, layer):
    e, logits = shallow_and_target(params, cfg, tokens, layer)
    return {"hidden": e, "target_logits": logits, "head": lm_head(params, cfg)}


def distill_batch(model: Model, layer: int, tokens) -> dict:
    """Returns the distillation batch of token windows ``tokens`` [B, T] for an adapter exiting after ``layer``.

    ``{"hidden": [B, T, D], "target_logits": [B, T, V], "head": [D, V]}``: the frozen base's
    exited states and full-model logits from one forward, and its LM head (what
    :func:`adapter_distill_loss` reads).
    """
    _check_layer(layer, model.cfg)
    tokens = jnp.asarray(tokens)
    if tokens.ndim != 2 or tokens.shape[1] < 1 or not jnp.issubdtype(tokens.dtype, jnp.integer):
        raise ValueError(f"tokens must be int token windows [B, T], got {tokens.dtype} {tuple(tokens.shape)}")
    return _teacher(model.params, model.cfg, tokens, int(layer))


def distill_metrics(model: Model, adapter, layer: int, windows: np.ndarray, *, mlp: bool = False,
                    batch_size: int = 16) -> dict:
    """Returns the mean distillation loss, prob_acc and top-1 agreement of ``adapter`` on token ``windows`` [N, T]."""
    acfg = adapter_config(model.cfg, mlp=mlp)
    loss_fn = jax.jit(adapter_distill_loss(mlp), static_argnums=1)
    sums, n = {}, 0
    for i in range(0, len(windows), batch_size):
        toks = jnp.asarray(windows[i:i + batch_size])
        _, m = loss_fn(adapter, acfg, distill_batch(model, layer, toks))
        k = toks.shape[0]
        for name, v in m.items():
            sums[name] = sums.get(name, 0.0) + float(v) * k
        n += k
    return {name: v / max(n, 1) for name, v in sums.items()}


# ---------------------------------------------------------------------------- draft source
@functools.partial(jax.jit, static_argnames=("cfg", "acfg", "layer", "capacity", "mlp"))
def _adapter_prefill(params, adapter, tokens, lengths, *, cfg, acfg, layer, capacity, mlp):
    B, P = tokens.shape
    e = forward(params, cfg, Inputs(tokens=tokens), layers=(0, layer), compute_logits=False).hidden
    cache = KVCache.init(acfg, B, capacity)
    pos = jnp.broadcast_to(jnp.arange(P, dtype=jnp.int32), (B, P))
    _, cache = adapter_logits(adapter, acfg, params, cfg, e, pos, cache=cache, mlp=mlp)
    return cache.set_lengths(lengths - 1)


@dataclasses.dataclass(frozen=True)
class EarlyExit(DraftSource):
    """The P44 Kangaroo draft source: the target's first ``layer`` layers plus a trained adapter, with a
    confidence-based second exit.

    Build it with :func:`early_exit`; use it as ``speculative(early_exit(...), verifier)``.
    """

    layer: int
    adapter: Any = dataclasses.field(compare=False, hash=False, repr=False)
    num_draft: int = 6
    threshold: Any = hparam(0.6)
    mlp: bool = False

    @property
    def num_nodes(self) -> int:
        return self.num_draft

    def validate(self, cfg: ModelConfig) -> None:
        _check_layer(self.layer, cfg)
        acfg = adapter_config(cfg, mlp=self.mlp)
        want = jax.tree.map(lambda s: tuple(s.shape), _adapter_shapes(acfg))
        got = jax.tree.map(lambda a: tuple(np.shape(a)), {"layers": stack_layers(self.adapter)["layers"],
                                                           "final_norm": self.adapter["final_norm"]})
        if want != got:
            raise ValueError(
                f"adapter params do not fit this model (mlp={self.mlp}): expected shapes {want}, got {got}; "
                "build them with kangaroo.init_adapter / recipes.kangaroo.fit_adapter for the same model"
            )

    def init(self, params, cfg: ModelConfig, state: DecodeState):
        acfg = adapter_config(cfg, mlp=self.mlp)
        P = int(np.max(np.asarray(state.prompt_lengths)))
        capacity = state.tokens.shape[1] + self.num_draft + 2
        adapter = jax.tree.map(jnp.copy, unstack_layers(self.adapter))  # the decode state is donated
        cache = _adapter_prefill(params, adapter, state.tokens[:, :P], state.prompt_lengths, cfg=cfg, acfg=acfg,
                                 layer=self.layer, capacity=capacity, mlp=self.mlp)
        return {"adapter": adapter, "cache": cache, "threshold": jnp.asarray(self.threshold, jnp.float32)}

    def state_axes(self, dstate):
        # the adapter is one small block: replicated; its cache is laid out like the target's
        return {"adapter": None, "cache": KV_CACHE, "threshold": None}

    def _feed(self, params, cfg, adapter, tcache, acache, tokens, positions):
        """Returns (adapter logits, target cache copy, adapter cache) after the shallow layers and the adapter."""
        acfg = adapter_config(cfg, mlp=self.mlp)
        sh = forward(params, cfg, Inputs(tokens=tokens, positions=positions), cache=tcache, layers=(0, self.layer),
                     compute_logits=False)
        logits, acache = adapter_logits(adapter, acfg, params, cfg, sh.hidden, positions, cache=acache, mlp=self.mlp)
        return logits, sh.cache, acache

    def propose(self, params, cfg: ModelConfig, state: DecodeState, dstate, key, transform):
        B, S = state.tokens.shape
        N = self.num_draft
        adapter, thr = dstate["adapter"], dstate["threshold"]
        p = state.lengths - 1  # position of the pending token
        # The adapter cache is one token behind after a fully accepted step: feed the two slots from
        # its length (shallow KV of the target cache is recomputed there in a private copy).
        have = dstate["cache"].lengths[0]
        pos2 = have[:, None] + jnp.arange(2, dtype=jnp.int32)[None, :]
        toks2 = jnp.take_along_axis(state.tokens, jnp.clip(pos2, 0, S - 1), axis=1)
        # the second slot may be scratch (past the pending token): clipped positions keep it finite
        logits2, tcache, acache = self._feed(params, cfg, adapter, state.cache.rollback(have),
                                             dstate["cache"].rollback(have), toks2, jnp.minimum(pos2, cfg.max_len - 1))
        logits = jnp.take_along_axis(logits2, (p - have)[:, None, None], axis=1)[:, 0]
        tcache, acache = tcache.rollback(p + 1), acache.rollback(p + 1)

        def cond(c):
            return (c[0] < N) & jnp.any(c[6])

        def body(c):
            j, tcache, acache, logits, toks, valid, alive, fed = c
            q = jax.nn.softmax(logits.astype(jnp.float32), -1)
            d = jnp.argmax(q, -1).astype(jnp.int32)
            toks = toks.at[:, j].set(d)
            valid = valid.at[:, j].set(alive)
            alive = alive & (jnp.max(q, -1) >= thr)  # second early exit: stop after a low-confidence token

            def feed(args):
                tc, ac, _ = args
                lg, tc, ac = self._feed(params, cfg, adapter, tc, ac, d[:, None],
                                        jnp.minimum(p + 1 + j, cfg.max_len - 1)[:, None])
                return tc, ac, lg[:, 0]

            need = (j + 1 < N) & jnp.any(alive)
            tcache, acache, logits = jax.lax.cond(need, feed, lambda a: a, (tcache, acache, logits))
            return j + 1, tcache, acache, logits, toks, valid, alive, fed + need.astype(jnp.int32)

        init = (jnp.zeros((), jnp.int32), tcache, acache, logits, jnp.zeros((B, N), jnp.int32),
                jnp.zeros((B, N), bool), ~state.done, jnp.ones((), jnp.int32))
        # Inner loop inherent to Kangaroo: the adapter drafts token by token until its confidence
        # drops below the threshold (the paper's early exit), inside one step of the shared driver.
        _, _, acache, _, toks, valid, _, fed = jax.lax.while_loop(cond, body, init)
        parents = jnp.broadcast_to(jnp.arange(N, dtype=jnp.int32) - 1, (B, N))
        draft = Draft(tokens=toks, parents=parents, probs=None, valid=valid,
                      layer_evals=(fed * (self.layer + 1)).astype(jnp.int32))
        return draft, {**dstate, "cache": acache}

    def observe(self, params, cfg, state: DecodeState, dstate, draft: Draft, target_logits, accepted: Verdict,
                raw_logits):
        return {**dstate, "cache": dstate["cache"].rollback(state.lengths - 1)}


def _adapter_shapes(acfg: ModelConfig):
    from tokjax.model import param_shapes

    s = param_shapes(acfg)
    return {"layers": s["layers"], "final_norm": s["final_norm"]}


def early_exit(layer: int, adapter, num_draft: int = 6, threshold: float = 0.6, *, mlp: bool = False) -> EarlyExit:
    """Returns the Kangaroo (P44) self-draft source: the target's first ``layer`` layers + ``adapter`` + shared head.

    ``adapter``: params from ``tokjax.train.recipes.kangaroo.fit_adapter`` / :func:`init_adapter`
    (``mlp`` must match).
    Drafts up to ``num_draft`` tokens per step and stops a row after the first token whose draft
    confidence (max softmax) is below ``threshold`` (official defaults: layer 2, 6 steps, 0.6;
    ``threshold`` is a runtime value). Use with ``speculative(early_exit(...), verify.greedy())``.
    """
    if not isinstance(num_draft, (int, np.integer)) or isinstance(num_draft, bool) or num_draft < 1:
        raise ValueError(f"num_draft must be an int >= 1, got {num_draft!r}")
    if not isinstance(layer, (int, np.integer)) or isinstance(layer, bool) or layer < 1:
        raise ValueError(f"early-exit layer must be an int >= 1, got {layer!r}")
    thr = float(threshold)
    if not 0.0 <= thr <= 1.0:
        raise ValueError(f"threshold must lie in [0, 1] (a max-softmax confidence), got {threshold!r}")
    if not isinstance(adapter, Mapping) or "layers" not in adapter or "final_norm" not in adapter:
        raise ValueError("adapter must be the params dict from kangaroo.init_adapter / recipes.kangaroo.fit_adapter")
    return EarlyExit(layer=int(layer), adapter=adapter, num_draft=int(num_draft), threshold=thr, mlp=bool(mlp))
