"""xAR: next-X prediction with Noisy Context Learning (P10; Ren et al. 2025, "Beyond Next-Token: Next-X
Prediction for Autoregressive Visual Generation", arXiv 2502.20388, code OliverRensu/xAR ``models/xar.py``).

Continuous tokens x [h, w, c] (here: pixel patches) are grouped into K *entities* X_1 .. X_K (``entity``:
"token" = one token, K = h w; "row" = one grid row, K = h; "cell" = a ``cell`` x ``cell`` block, K =
(h / cell)(w / cell)). The sequence the shared forward reads is ``[class token, tokens entity-major]``
(raster order inside an entity), under a bidirectional ``Rank`` mask with rank 0 for the class token and
e + 1 for entity e: entity e sees the class token and every token of entities <= e (xAR's block-causal
mask). Positions are spatial: 1 + the raster index of each token (0 for the class token).

Training, Noisy Context Learning (official ``forward_loss``): every entity draws its own time
t_e ~ logit-normal(0, 1) and every token is noised, context included::

    x~_i = (1 - t_e) x_i + t_e eps_i,    input_i = P x~_i + (time embedding of t_e at every resid_pre)
    L = mean_i || V hidden_i - (eps_i - x_i) ||^2                         (the network output is the velocity)

so one pass trains all entities and the context is never clean (against exposure bias). The per-token time
embedding enters through :func:`tokjax.vision.flow.cond_hooks` (added at every layer's ``resid_pre``; the
official code uses AdaLN). ``context="clean"`` is the teacher-forced ablation: the sequence is
``[class, clean tokens (t = 0), noisy tokens]``, where the noisy copy of entity e sees the class token, the
clean entities < e and its own noisy entity (an explicit mask), and the loss is on the noisy copy: the same
targets with clean context, at twice the sequence length.

Decoding (official ``sample_tokens``): for entity s = 0 .. K-1, the previous entity (the class token for
s = 0) enters the KV cache clean (t = 0), then T flow steps from t = 1 to 0 each run one forward over the
current entity's tokens only (their cache writes are dropped); the cache prefill of entity s-1 shares the
first flow step's forward (a two-rank block; at s = 0 the clean block is the class token), so a sample
costs K T forwards. Decoding is a ``tokjax.generate`` Strategy (:func:`xar_decode`, one AR step per entity,
``steps`` a runtime scalar or per-entity schedule T(s)); :func:`xar_sample` runs it. Classifier-free guidance
runs conditional and null-class rows and ramps linearly over entities (official): g_s = 1 + (g - 1) s/(K-1)
(``ramp=False``: g at every entity). The sampler is :func:`tokjax.vision.flow.flow_update` (Euler or
Euler-Maruyama, uniform time grid; the official uses 40-50 Euler-Maruyama steps on a shifted grid).

Reductions: with ``entity="token"`` the ranks are 0, 1, ..., L, so the mask is the causal mask (tested);
with clean context decoding is continuous raster AR whose flow "head" is the whole network, and the cached
decode equals a full-forward reference (tested).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from flax import struct

from tokjax.decoding import DecodeState, Strategy, commit
from tokjax.logits import check_range, hparam
from tokjax.model import Inputs, KVCache, Model, ModelConfig, forward
from tokjax.model.attention import Bidirectional, Explicit, Rank
from tokjax.model.forward import embed
from tokjax.vision.image_lm import image_rows
from tokjax.vision.flow import (SAMPLERS, _check_int, _check_steps, _dense, _linear, cond_hooks, flow_update,
                               generate_class_conditional, time_embed, time_embed_init)

__all__ = ["ENTITIES", "XarLayout", "XarSamples", "make_xar_loss", "xar_batch_fn", "xar_init", "xar_layout",
           "xar_loss", "xar_positions", "xar_ranks", "xar_sample", "xar_velocity", "XarDecode", "XarDecodeState",
           "xar_decode"]

_F32 = jnp.float32
ENTITIES = ("token", "row", "cell")


@dataclasses.dataclass(frozen=True)
class XarLayout:
    """The entity partition of an (h, w) token grid: ``perm`` [L] (raster index of each sequence slot,
    entity-major), ``entity`` [L] (entity id of each slot), ``size`` E tokens per entity, ``count`` K entities.
    Frozen and hashable (a static argument)."""

    grid: tuple[int, int]
    kind: str
    cell: int
    perm: tuple[int, ...]
    entity: tuple[int, ...]
    size: int
    count: int

    @property
    def length(self) -> int:
        return len(self.perm)


@functools.lru_cache(maxsize=None)
def xar_layout(grid: tuple[int, int], entity: str = "cell", cell: int = 4) -> XarLayout:
    """Returns the :class:`XarLayout` of entities ``entity`` ("token", "row" or "cell" of ``cell`` x ``cell``
    tokens) on a ``grid`` = (h, w) of tokens. Raises ValueError for an unknown entity or a cell not dividing
    the grid."""
    h, w = (_check_int("grid height", grid[0], 1), _check_int("grid width", grid[1], 1))
    if entity not in ENTITIES:
        raise ValueError(f"entity must be one of {ENTITIES}, got {entity!r}")
    cell = _check_int("cell", cell, 1)
    idx = np.arange(h * w).reshape(h, w)
    if entity == "token":
        perm, ent = idx.reshape(-1), np.arange(h * w)
    elif entity == "row":
        perm, ent = idx.reshape(-1), np.repeat(np.arange(h), w)
    else:
        if h % cell or w % cell:
            raise ValueError(f"cell={cell} must divide the grid {h}x{w}")
        blocks = idx.reshape(h // cell, cell, w // cell, cell).transpose(0, 2, 1, 3)
        perm, ent = blocks.reshape(-1), np.repeat(np.arange((h // cell) * (w // cell)), cell * cell)
    K = int(ent.max()) + 1
    return XarLayout(grid=(h, w), kind=entity, cell=cell, perm=tuple(int(i) for i in perm),
                     entity=tuple(int(e) for e in ent), size=h * w // K, count=K)


def xar_ranks(layout: XarLayout) -> np.ndarray:
    """Returns int32 [1 + L]: the ``Rank`` of every slot of ``[class, tokens entity-major]`` (0, then entity + 1)."""
    return np.concatenate([[0], np.asarray(layout.entity) + 1]).astype(np.int32)


def xar_positions(layout: XarLayout) -> np.ndarray:
    """Returns int32 [1 + L]: the spatial position of every slot (0 for the class token, 1 + raster index)."""
    return np.concatenate([[0], np.asarray(layout.perm) + 1]).astype(np.int32)


def xar_init(key: jax.Array, cfg: ModelConfig, token_dim: int) -> dict:
    """Returns ``params["xar"]``: {"proj": token_dim -> d_model, "time": time embedding, "out": d_model ->
    token_dim} (the velocity read-out)."""
    token_dim = _check_int("token_dim", token_dim, 1)
    k1, k2, k3 = jax.random.split(key, 3)
    return {"proj": _linear(k1, token_dim, cfg.d_model), "time": time_embed_init(k2, cfg.d_model),
            "out": _linear(k3, cfg.d_model, token_dim)}


def _xp(params: Any) -> dict:
    if not isinstance(params, dict) or "xar" not in params:
        raise ValueError("params has no 'xar' entry: add it, e.g. params['xar'] = tokjax.vision.xar.xar_init(key, cfg, "
                         "token_dim)")
    return params["xar"]


def _token_dim(params) -> int:
    return int(_xp(params)["proj"]["w"].shape[0])


def _check_layout(layout: Any, cfg: ModelConfig) -> XarLayout:
    if not isinstance(layout, XarLayout):
        raise ValueError(f"layout must be an XarLayout (xar_layout(grid, entity)), got {type(layout).__name__}")
    if cfg.pos_dims != 1:
        raise ValueError(f"xAR reads 1-D spatial positions (pos_dims=1), got pos_dims={cfg.pos_dims}")
    if layout.length + 1 > cfg.max_len:
        raise ValueError(f"[class, {layout.length} tokens] does not fit max_len={cfg.max_len}")
    return layout


def _check_tokens(params, x, layout: XarLayout) -> jax.Array:
    c = _token_dim(params)
    x = jnp.asarray(x, _F32)
    if x.ndim != 3 or x.shape[1:] != (layout.length, c):
        raise ValueError(f"tokens must be float [B, L={layout.length}, token_dim={c}] (raster order), got shape "
                         f"{x.shape}")
    return x


def _embed_seq(params, cfg, cls, xs, ts):
    """Returns (embeds, cond) [B, 1 + n, D] of ``[class, xs]`` (xs [B, n, c] noisy tokens at times ts [B, n])."""
    xp = _xp(params)
    e_cls = embed(params, cfg, jnp.asarray(cls, jnp.int32)[:, None]).astype(_F32)
    e = jnp.concatenate([e_cls, _dense(xp["proj"], xs)], axis=1)
    cond = jnp.concatenate([jnp.zeros_like(e_cls), time_embed(xp["time"], ts)], axis=1)
    return e, cond


def xar_velocity(params, cfg: ModelConfig, x_t: jax.Array, t_tok: jax.Array, cls: jax.Array,
                 layout: XarLayout) -> jax.Array:
    """Returns float32 [B, L, c] (raster order): the network's velocity for noisy tokens ``x_t`` [B, L, c]
    (raster order) at per-token times ``t_tok`` [B, L] (raster order), class ids ``cls`` [B], under the
    entity ``Rank`` mask (one full forward)."""
    layout = _check_layout(layout, cfg)
    x_t = _check_tokens(params, x_t, layout)
    perm = np.asarray(layout.perm)
    e, cond = _embed_seq(params, cfg, cls, x_t[:, perm], jnp.asarray(t_tok, _F32)[:, perm])
    out = forward(params, cfg, Inputs(embeds=e.astype(cfg.dtype), positions=jnp.asarray(xar_positions(layout))),
                  mask=Rank(jnp.asarray(xar_ranks(layout))), hooks=cond_hooks(cond.astype(cfg.dtype)),
                  compute_logits=False)
    v = _dense(_xp(params)["out"], out.hidden[:, 1:].astype(_F32))
    return jnp.zeros_like(v).at[:, perm].set(v)


@functools.lru_cache(maxsize=None)
def _clean_mask(layout: XarLayout) -> np.ndarray:
    """bool [1 + 2L, 1 + 2L]: [class, clean copy, noisy copy] visibility of the clean-context ablation."""
    L = layout.length
    ent = np.asarray(layout.entity)
    T = 1 + 2 * L
    vis = np.zeros((T, T), bool)
    vis[:, 0] = True
    c, n = slice(1, 1 + L), slice(1 + L, T)
    vis[c, c] = ent[None, :] <= ent[:, None]
    vis[n, c] = ent[None, :] < ent[:, None]
    vis[n, n] = ent[None, :] == ent[:, None]
    return vis


def xar_loss(params, cfg: ModelConfig, batch: dict, rng: jax.Array, *, layout: XarLayout,
             context: str = "noisy") -> tuple[jax.Array, dict]:
    """Returns (loss, {"flow_mse"}): xAR's velocity MSE (module docstring) on ``batch`` = {"x" float
    [B, L, c] (raster order), "cls" int [B]} with per-entity t ~ logit-normal(0, 1); ``context`` "noisy"
    (Noisy Context Learning) or "clean" (teacher-forced ablation)."""
    if context not in ("noisy", "clean"):
        raise ValueError(f"context must be 'noisy' or 'clean', got {context!r}")
    if rng is None:
        raise ValueError("the xar loss draws t and eps: it needs rng (tokjax.train passes one per step)")
    if not isinstance(batch, dict) or "x" not in batch or "cls" not in batch:
        raise ValueError("an xar batch needs 'x' float [B, L, token_dim] and 'cls' int [B] (xar_batch_fn)")
    layout = _check_layout(layout, cfg)
    x = _check_tokens(params, batch["x"], layout)
    B = x.shape[0]
    kt, ke = jax.random.split(rng)
    t_ent = jax.nn.sigmoid(jax.random.normal(kt, (B, layout.count), _F32))
    perm, ent = np.asarray(layout.perm), np.asarray(layout.entity)
    xs = x[:, perm]  # sequence order
    ts = t_ent[:, ent]  # [B, L]
    eps = jax.random.normal(ke, xs.shape, _F32)
    x_t = (1.0 - ts[..., None]) * xs + ts[..., None] * eps
    pos = xar_positions(layout)
    if context == "noisy":
        e, cond = _embed_seq(params, cfg, batch["cls"], x_t, ts)
        mask, positions = Rank(jnp.asarray(xar_ranks(layout))), pos
    else:
        e, cond = _embed_seq(params, cfg, batch["cls"], jnp.concatenate([xs, x_t], 1),
                             jnp.concatenate([jnp.zeros_like(ts), ts], 1))
        mask, positions = Explicit(jnp.asarray(_clean_mask(layout))), np.concatenate([pos, pos[1:]])
    out = forward(params, cfg, Inputs(embeds=e.astype(cfg.dtype), positions=jnp.asarray(positions)), mask=mask,
                  hooks=cond_hooks(cond.astype(cfg.dtype)), compute_logits=False)
    v = _dense(_xp(params)["out"], out.hidden[:, -layout.length:].astype(_F32))
    loss = jnp.mean(jnp.square(v - (eps - xs)))
    return loss, {"flow_mse": loss}


@functools.lru_cache(maxsize=None)
def make_xar_loss(grid: tuple = (8, 8), entity: str = "cell", cell: int = 4, context: str = "noisy") -> Callable:
    """Returns the train loss ``(params, cfg, batch, rng) -> (loss, metrics)`` of :func:`xar_loss` (the factory
    of the registered loss ``"xar"``)."""
    layout = xar_layout(tuple(int(g) for g in grid), entity, cell)
    if context not in ("noisy", "clean"):
        raise ValueError(f"context must be 'noisy' or 'clean', got {context!r}")
    return functools.partial(xar_loss, layout=layout, context=context)


def xar_batch_fn(tokens: Any, labels: Any, *, num_classes: int, batch_size: int, class_dropout: float = 0.1,
                 seed: int = 0) -> Callable[[int], dict]:
    """Returns ``batch_fn(step)`` of {"x", "cls"} batches (the continuous batches of
    :func:`tokjax.vision.flow.continuous_batch_fn`; tokens in raster order)."""
    from tokjax.vision.flow import continuous_batch_fn

    return continuous_batch_fn(tokens, labels, num_classes=num_classes, batch_size=batch_size,
                               class_dropout=class_dropout, seed=seed)


# ------------------------------------------------------------------------------------------- decoding
class XarSamples(NamedTuple):
    """What :func:`xar_sample` returns: ``tokens`` float32 [N, L, c] (raster order) and ``stats``
    (forward_calls = sum_s T(s) = K T per sample, head_evals = token velocity evaluations per image = L T; with
    guidance each is evaluated on two rows), as ``tokjax.generate`` reports them."""

    tokens: np.ndarray
    stats: dict


@struct.dataclass
class XarDecodeState:
    """``DecodeState.extra`` of :class:`XarDecode`: ``seq`` float32 [R, L, c] (the sampled tokens, sequence
    order), ``cache`` (the xAR KV cache: class token and clean finished entities), ``steps`` int32 [K] (flow steps
    T(s) of entity s), ``guidance`` float32 [], ``temperature`` float32 [], ``head_evals`` int32 [] (per image:
    sum_s T(s) E; guidance evaluates each on two rows)."""

    seq: jax.Array
    cache: KVCache
    steps: jax.Array
    guidance: jax.Array
    temperature: jax.Array
    head_evals: jax.Array


@dataclasses.dataclass(frozen=True)
class XarDecode(Strategy):
    """xAR decoding (module docstring) as a ``tokjax.generate`` Strategy: AR step s generates entity s.

    Its first forward is one two-rank block: the previous entity clean at t = 0 (the class token at s = 0),
    whose cache writes are kept, and the current entity at t = 1; the other T(s) - 1 flow steps each run one
    forward over the current entity (writes dropped). A sample costs sum_s T(s) forwards. With guidance the
    rows are [conditional; null class] and both halves evaluate the velocity at the same x_t (one noise draw
    per image, as the official ``torch.cat([x, x])``).

    Static: ``layout``, ``sampler``, ``guided``, ``ramp`` (guidance ramped linearly over entities, official).
    Runtime (state): ``steps`` (scalar or [K]: the per-entity schedule T(s)), ``guidance``, ``temperature``.
    """

    layout: XarLayout
    sampler: str = "euler"
    guided: bool = False
    ramp: bool = True
    steps: Any = hparam(10)
    guidance: Any = hparam(1.0)
    temperature: Any = hparam(1.0)

    def __post_init__(self):
        if not isinstance(self.layout, XarLayout):
            raise ValueError(f"layout must be an XarLayout (xar_layout(grid, entity)), got {type(self.layout).__name__}")
        if self.sampler not in SAMPLERS:
            raise ValueError(f"sampler must be one of {SAMPLERS}, got {self.sampler!r}")
        st = _check_steps(self.steps)
        if st.ndim > 1 or (st.ndim == 1 and st.shape[0] != self.layout.count):
            raise ValueError(f"steps must be a scalar or one count per entity [{self.layout.count}], got shape "
                             f"{st.shape}")
        check_range(self.temperature, "temperature", lo=0.0)
        check_range(self.guidance, "guidance", lo=0.0)
        if np.ndim(self.guidance):
            raise ValueError(f"guidance must be a scalar, got shape {np.shape(self.guidance)}")

    def validate(self, cfg: ModelConfig) -> None:
        _check_layout(self.layout, cfg)

    def init(self, params, cfg: ModelConfig, state: DecodeState) -> XarDecodeState:
        lay = self.layout
        R = state.tokens.shape[0]
        image_rows(R, self.guided)
        return XarDecodeState(
            seq=jnp.zeros((R, lay.length, _token_dim(params)), _F32), cache=KVCache.init(cfg, R, 1 + lay.length + lay.size),
            steps=jnp.broadcast_to(_check_steps(self.steps), (lay.count,)),
            guidance=jnp.asarray(self.guidance, _F32), temperature=jnp.asarray(self.temperature, _F32),
            head_evals=jnp.zeros((), jnp.int32))

    def step(self, params, cfg: ModelConfig, transform, state: DecodeState, eos_id=None) -> DecodeState:
        del transform
        ex, lay = state.extra, self.layout
        E, K = lay.size, lay.count
        R = state.tokens.shape[0]
        n = R // 2 if self.guided else R
        xp = _xp(params)
        s = jnp.minimum(state.step, K - 1)
        T = ex.steps[s]
        h = 1.0 / T.astype(_F32)
        pos_seq = jnp.asarray(xar_positions(lay))[1:].reshape(K, E)
        pos = jax.lax.dynamic_index_in_dim(pos_seq, s, keepdims=False)
        g = ex.guidance if not self.ramp or K == 1 else 1.0 + (ex.guidance - 1.0) * s.astype(_F32) / (K - 1)
        key, k0, kl = jax.random.split(state.key, 3)

        def velocity(hidden):  # [R, E, D] -> [n, E, c]
            v = _dense(xp["out"], hidden.astype(_F32))
            return v[:n] + (g - 1.0) * (v[:n] - v[n:]) if self.guided else v

        def inputs(x, t):  # x [n, E, c] -> embeds and time conditioning of all R rows
            x = jnp.concatenate([x, x]) if self.guided else x
            return _dense(xp["proj"], x), time_embed(xp["time"], jnp.full(x.shape[:2], t))

        x = ex.temperature * jax.random.normal(k0, (n, E, _token_dim(params)), _F32)
        e_cur, c_cur = inputs(x, 1.0)

        def two_block(prev_e, prev_c, prev_pos):
            P = prev_e.shape[1]
            ranks = jnp.concatenate([jnp.zeros((P,), jnp.int32), jnp.ones((E,), jnp.int32)])
            out = forward(params, cfg, Inputs(embeds=jnp.concatenate([prev_e, e_cur], 1).astype(cfg.dtype),
                                              positions=jnp.concatenate([prev_pos, pos])),
                          cache=ex.cache, mask=Rank(ranks), hooks=cond_hooks(jnp.concatenate([prev_c, c_cur], 1)),
                          compute_logits=False)
            # keep the clean block's writes, drop the noisy entity's
            return velocity(out.hidden[:, P:]), out.cache.set_lengths(ex.cache.lengths[0] + P)

        def first(_):  # s = 0: the class token (the prompt's pending token) is the clean block
            cls = jnp.take_along_axis(state.tokens, (state.lengths - 1)[:, None], axis=1)
            e_cls = embed(params, cfg, cls).astype(_F32)
            return two_block(e_cls, jnp.zeros_like(e_cls), jnp.zeros((1,), jnp.int32))

        def later(_):
            prev = jax.lax.dynamic_slice_in_dim(ex.seq, (s - 1) * E, E, axis=1)[:n]
            e_prev, c_prev = inputs(prev, 0.0)
            return two_block(e_prev, c_prev, jax.lax.dynamic_index_in_dim(pos_seq, jnp.maximum(s - 1, 0),
                                                                           keepdims=False))

        v0, cache = jax.lax.cond(s == 0, first, later, None)
        x = flow_update(x, v0, 1.0, h, T == 1, jax.random.fold_in(kl, 0), ex.temperature, self.sampler)

        def flow_step(i, x):
            t = (T - i).astype(_F32) * h
            e_i, c_i = inputs(x, t)
            o = forward(params, cfg, Inputs(embeds=e_i.astype(cfg.dtype), positions=pos), cache=cache,
                        mask=Bidirectional(), hooks=cond_hooks(c_i), compute_logits=False)  # writes dropped
            return flow_update(x, velocity(o.hidden), t, h, i == T - 1, jax.random.fold_in(kl, i), ex.temperature,
                               self.sampler)

        x = jax.lax.fori_loop(1, T, flow_step, x)
        x = jnp.concatenate([x, x]) if self.guided else x
        seq = jax.lax.dynamic_update_slice_in_dim(ex.seq, x, s * E, axis=1)
        stats = state.stats.replace(forward_calls=state.stats.forward_calls + T)
        extra = ex.replace(seq=seq, cache=cache, head_evals=ex.head_evals + T * E)
        state = state.replace(key=key, stats=stats, extra=extra)
        return commit(state, jnp.zeros((R, 1), jnp.int32), jnp.ones((R,), jnp.int32), eos_id)

    def finalize(self, state: DecodeState) -> dict:
        return {"head_evals": int(state.extra.head_evals)}

    def persistent_state(self, extra: XarDecodeState) -> jax.Array:
        perm = np.asarray(self.layout.perm)
        return jnp.zeros_like(extra.seq).at[:, perm].set(extra.seq)  # raster order


def xar_decode(layout: XarLayout, *, steps: Any = 10, guidance: Any = 1.0, temperature: Any = 1.0,
               sampler: str = "euler", ramp: bool = True, guided: bool | None = None) -> XarDecode:
    """Returns the :class:`XarDecode` strategy (``steps`` a scalar or a per-entity schedule [K]; ``guided``
    defaults to ``guidance`` != 1)."""
    if guided is None:
        guided = bool(np.any(np.asarray(guidance) != 1.0))
    return XarDecode(layout=layout, sampler=sampler, guided=guided, ramp=bool(ramp), steps=steps, guidance=guidance,
                     temperature=temperature)


def xar_sample(params, cfg: ModelConfig, labels: Any, key: jax.Array, *, layout: XarLayout, num_classes: int,
               steps: Any = 10, sampler: str = "euler", temperature: Any = 1.0, guidance: Any = 1.0,
               ramp: bool = True) -> XarSamples:
    """Returns :class:`XarSamples` for class ``labels`` [N]: xAR decoding (module docstring) through
    ``tokjax.generate`` with :func:`xar_decode`, entity by entity, ``steps`` T >= 1 flow steps each (runtime; a
    scalar or one per entity), ``guidance`` g >= 0 (runtime; != 1 runs null-class rows, ramped over entities
    unless ``ramp=False``), ``temperature`` >= 0 (runtime) and ``sampler`` "euler" | "euler_maruyama". Raises
    ValueError for bad labels, steps < 1, temperature or guidance < 0, or a model that cannot hold the sequence."""
    layout = _check_layout(layout, cfg)
    strategy = xar_decode(layout, steps=steps, guidance=guidance, temperature=temperature, sampler=sampler, ramp=ramp)
    return XarSamples(*generate_class_conditional(Model(params, cfg), strategy, labels, key, num_classes=num_classes,
                                                  ar_steps=layout.count))


def _register() -> None:
    from tokjax.losses.registry import register_loss

    register_loss("xar", make_xar_loss, {"grid": (8, 8), "entity": "cell", "cell": 4, "context": "noisy"},
                  doc="P10 xAR: per-entity rectified-flow velocity MSE under the entity Rank mask, per-token time via "
                      "resid_pre hooks; context 'noisy' (Noisy Context Learning) or 'clean' (teacher-forced); batch "
                      "needs x float [B, L, c] (raster) and cls int [B]; params need params['xar'] "
                      "(tokjax.vision.xar.xar_init)",
                  overwrite=True)


_register()
