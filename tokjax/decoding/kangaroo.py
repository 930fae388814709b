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

Verification (:func:`kangaroo`, the paper's): every drafted token also goes through the shallow
layers, so the block ``[pending, d_0 .. d_{J-1}]`` has its exited states e and its layer < ``layer``
keys/values in the target cache when the draft ends; the target then runs only layers
``layer .. L-1`` on e (official ``forward_draft_or_large_model(in_features_large=...)``)::

    logits(block) = head(norm(layers[layer : L](e_block)))      layers < layer are not recomputed

then the standard speculative verdict, compaction and commit (any verifier; greedy verification
makes the output identical to plain greedy decoding). ``speculative(early_exit(...), verifier)``
gives the same tokens with a full verification forward (the shallow layers recomputed), as an
ablation. Batched and ragged: each row stops drafting at its own confidence drop (its later nodes
are marked invalid); the draft loop ends when every row has stopped.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from tokjax.decoding._state import KV_CACHE, DecodeState
from tokjax.decoding.speculative import Draft, DraftSource, Speculative, Verdict, block_tree, speculative
from tokjax.logits import LogitTransform, hparam, masked_log_softmax, masked_softmax
from tokjax.model import (
    Inputs, KVCache, Model, ModelConfig, Taps, Tree, blocks, final_norm, forward, init_params, lm_head, stack_layers,
    tree_ancestors, unembed, unstack_layers,
)

__all__ = [
    "EarlyExit", "early_exit", "Kangaroo", "kangaroo", "adapter_config", "init_adapter", "adapter_logits",
    "shallow_and_target", "adapter_distill_loss", "distill_batch", "distill_metrics",
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

    Build it with :func:`early_exit`. ``kangaroo(early_exit(...), verifier)`` verifies from the
    shallow layers' states and KV written while drafting (the paper); ``speculative(early_exit(...),
    verifier)`` verifies with a full target forward that recomputes them (same tokens; an ablation).

    Every drafted token, the last one included, goes through the shallow layers (official
    ``inference_kangaroo.py`` breaks after the shallow forward, before the adapter), so the block
    ``[pending, d_0 .. d_{J-1}]`` has its exited states ``e`` and its layer ``< layer`` KV when
    verification starts. ``Draft.layer_evals`` = shallow calls x ``layer`` + adapter calls (one
    adapter block each).
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
        B = state.tokens.shape[0]
        P = int(np.max(np.asarray(state.prompt_lengths)))
        capacity = state.tokens.shape[1] + self.num_draft + 2
        adapter = jax.tree.map(jnp.copy, unstack_layers(self.adapter))  # the decode state is donated
        cache = _adapter_prefill(params, adapter, state.tokens[:, :P], state.prompt_lengths, cfg=cfg, acfg=acfg,
                                 layer=self.layer, capacity=capacity, mlp=self.mlp)
        return {"adapter": adapter, "cache": cache, "threshold": jnp.asarray(self.threshold, jnp.float32),
                # exited states of the last verified block, and of the last committed draft token
                "exited": jnp.zeros((B, self.num_draft + 1, cfg.d_model), cfg.dtype),
                "last": jnp.zeros((B, cfg.d_model), cfg.dtype)}

    def state_axes(self, dstate):
        # the adapter is one small block: replicated; its cache is laid out like the target's
        return {"adapter": None, "cache": KV_CACHE, "threshold": None, "exited": ("batch", None, None),
                "last": ("batch", None)}

    def _shallow(self, params, cfg, tcache, tokens, positions):
        """Returns (exited states [B, T, D], target cache with layers < ``layer`` written): the first exit."""
        sh = forward(params, cfg, Inputs(tokens=tokens, positions=positions), cache=tcache, layers=(0, self.layer),
                     compute_logits=False)
        return sh.hidden, sh.cache

    def draft(self, params, cfg: ModelConfig, state: DecodeState, dstate):
        """Returns (Draft, dstate, target cache, exited states [B, 1+N, D] of the block [pending, d_0 ..]).

        The returned target cache is ``state.cache`` with layers ``< layer`` holding the block's
        keys/values (written while drafting) and layers ``>= layer`` untouched; block nodes past the
        last drafted step (every row stopped) have zero states and are invalid.
        """
        B, S = state.tokens.shape
        N = self.num_draft
        acfg = adapter_config(cfg, mlp=self.mlp)
        adapter, thr = dstate["adapter"], dstate["threshold"]
        p = state.lengths - 1  # position of the pending token; the target cache holds exactly p tokens
        # positions past the learned table only occur for nodes beyond a row's budget (never committed)
        clip = functools.partial(jnp.minimum, cfg.max_len - 1)
        pending = jnp.take_along_axis(state.tokens, p[:, None], axis=1)
        e0, tcache = self._shallow(params, cfg, state.cache, pending, clip(p)[:, None])
        # After a fully accepted step the adapter lacks the last draft token (it went through the
        # shallow layers only): feed its exited state, kept by observe, ahead of the pending token
        # (official: exited_hidden_states[:, -1:]). Otherwise the second slot is scratch, dropped below.
        have = dstate["cache"].lengths[0]
        lag = (have < p)[:, None, None]
        x2 = jnp.where(lag, jnp.stack([dstate["last"], e0[:, 0]], 1), jnp.concatenate([e0, e0], 1))
        pos2 = have[:, None] + jnp.arange(2, dtype=jnp.int32)[None, :]
        logits2, acache = adapter_logits(adapter, acfg, params, cfg, x2, clip(pos2), cache=dstate["cache"],
                                         mlp=self.mlp)
        logits = jnp.take_along_axis(logits2, (p - have)[:, None, None], axis=1)[:, 0]
        acache = acache.rollback(p + 1)
        exited = jnp.zeros((B, N + 1, cfg.d_model), e0.dtype).at[:, 0].set(e0[:, 0])

        def cond(c):
            return (c[0] < N) & jnp.any(c[7])

        def body(c):
            j, tcache, acache, logits, exited, toks, valid, alive, n_adapter = c
            q = jax.nn.softmax(logits.astype(jnp.float32), -1)
            d = jnp.argmax(q, -1).astype(jnp.int32)
            toks = toks.at[:, j].set(d)
            valid = valid.at[:, j].set(alive)
            alive = alive & (jnp.max(q, -1) >= thr)  # second early exit: stop after a low-confidence token
            pos = clip(p + 1 + j)[:, None]
            # first exit for d_j, also for the last drafted token: verification reuses its KV and state
            e, tcache = self._shallow(params, cfg, tcache, d[:, None], pos)
            exited = jax.lax.dynamic_update_slice_in_dim(exited, e, j + 1, axis=1)

            def adapt(args):
                ac, _ = args
                lg, ac = adapter_logits(adapter, acfg, params, cfg, e, pos, cache=ac, mlp=self.mlp)
                return ac, lg[:, 0]

            need = (j + 1 < N) & jnp.any(alive)
            acache, logits = jax.lax.cond(need, adapt, lambda a: a, (acache, logits))
            return j + 1, tcache, acache, logits, exited, toks, valid, alive, n_adapter + need.astype(jnp.int32)

        init = (jnp.zeros((), jnp.int32), tcache, acache, logits, exited, jnp.zeros((B, N), jnp.int32),
                jnp.zeros((B, N), bool), ~state.done, jnp.ones((), jnp.int32))
        # Inner loop inherent to Kangaroo: the adapter drafts token by token until its confidence
        # drops below the threshold (the paper's early exit), inside one step of the shared driver.
        J, tcache, acache, _, exited, toks, valid, _, n_adapter = jax.lax.while_loop(cond, body, init)
        parents = jnp.broadcast_to(jnp.arange(N, dtype=jnp.int32) - 1, (B, N))
        draft = Draft(tokens=toks, parents=parents, probs=None, valid=valid,
                      layer_evals=((1 + J) * self.layer + n_adapter).astype(jnp.int32))
        return draft, {**dstate, "cache": acache, "exited": exited}, tcache, exited

    def propose(self, params, cfg: ModelConfig, state: DecodeState, dstate, key, transform):
        draft, dstate, _, _ = self.draft(params, cfg, state, dstate)
        return draft, dstate

    def observe(self, params, cfg, state: DecodeState, dstate, draft: Draft, target_logits, accepted: Verdict,
                raw_logits):
        # block node `count` is the last accepted draft token: the adapter may still need its state
        count = jnp.clip(accepted.count.astype(jnp.int32), 0, self.num_draft)
        last = jnp.take_along_axis(dstate["exited"], count[:, None, None], axis=1)[:, 0]
        return {**dstate, "cache": dstate["cache"].rollback(state.lengths - 1), "last": last}


@dataclasses.dataclass(frozen=True)
class Kangaroo(Speculative):
    """P44's decode strategy: :class:`EarlyExit` drafts, the target verifies from the shallow exit.

    Verification runs only layers ``layer .. L-1`` on the block ``[pending, d_0 .. d_{N-1}]``,
    starting from the exited states ``e`` computed while drafting and reading the layer ``< layer``
    keys/values the draft wrote into the target cache (official ``forward_draft_or_large_model``
    with ``in_features_large``); the rest of the step (logit transform per node, verifier, cache
    compaction, commit, observe) is :class:`~tokjax.decoding.speculative.Speculative`'s.

    Build it with :func:`kangaroo`.
    """

    def validate(self, cfg: ModelConfig) -> None:
        if not isinstance(self.draft, EarlyExit):
            raise ValueError(f"kangaroo() needs an early_exit(...) draft source, got {type(self.draft).__name__}")
        super().validate(cfg)

    def step(self, params, cfg: ModelConfig, transform: LogitTransform, state: DecodeState, eos_id=None) -> DecodeState:
        # Speculative.step with one change, the verification forward (from the shallow exit); the rest
        # is Speculative._verify_and_commit.
        if hasattr(self.verifier, "check_transform"):
            self.verifier.check_transform(transform)
        key, _, k_verify = jax.random.split(state.key, 3)  # same keys as Speculative (rejection verifiers)
        draft, dstate, tcache, exited = self.draft.draft(params, cfg, state, state.extra)

        base = state.lengths - 1
        pending = jnp.take_along_axis(state.tokens, base[:, None], axis=1)
        block_tokens = jnp.concatenate([pending, draft.tokens.astype(jnp.int32)], axis=1)
        parents = block_tree(draft)
        depth = tree_ancestors(parents).sum(-1).astype(jnp.int32) - 1
        positions = jnp.minimum(base[:, None] + depth, cfg.max_len - 1)
        # the second exit's continuation: layers >= layer from the exited states; layers < layer of the
        # block are already in tcache (their lengths run ahead of the deeper layers' until the gather)
        out = forward(params, cfg, Inputs(hidden=exited, positions=positions), cache=tcache,
                      layers=(self.draft.layer, cfg.n_layers), mask=Tree(parents))
        return self._verify_and_commit(params, cfg, transform, state, eos_id, key, k_verify, draft, dstate,
                                       block_tokens, parents, out, base)


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


def kangaroo(draft: EarlyExit, verify) -> Kangaroo:
    """Returns the P44 Kangaroo decode strategy: ``draft`` (:func:`early_exit`) verified by ``verify``,
    the verification continuing from the shallow exit (layers < ``draft.layer`` are not recomputed).

        strategy = kangaroo(early_exit(2, adapter), verify.greedy())
        out = tokjax.generate(model, prompts, max_new_tokens=64, logits=greedy(), strategy=strategy)

    Same tokens as ``speculative(draft, verify)`` (greedy verification: as plain greedy decoding).
    """
    if not isinstance(draft, EarlyExit):
        raise ValueError(f"kangaroo() needs an early_exit(...) draft source, got {type(draft).__name__}")
    return Kangaroo(draft=speculative(draft, verify).draft, verifier=verify)
