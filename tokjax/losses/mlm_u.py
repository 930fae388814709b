"""MLM-U (P8): an encoder over the visible tokens and a decoder of position-only queries, trained with uniform masking.

Paper: *Transformers Can Navigate Mazes With Multi-Step Prediction* (Kitouni, Nolte, Williams,
Rabbat, Bouchacourt, Ibrahim; arXiv 2412.05117; P8). Official code:
``facebookresearch/maze_navigation_MLMU``, ``recipe/models/past.py`` (the "PAST" model,
``train_mode="absorbing"``) and ``recipe/models/pl_model.py`` / ``recipe/datasets/maze.py`` (the
eval). Read there; this module is written from scratch on the shared forward.

Objective ("absorbing" mode with a uniform rate). A sequence x_1..x_T splits into a prompt (the
maze; never hidden) and the path tokens the model learns to predict. Per sequence

    r ~ U(0, 1);   u_i ~ U(0, 1);   visible_i = (r > u_i)  or  i not a path token
    L = sum_{i hidden} -log p(x_i | x_visible) / sum_{batch} |hidden|                      (P8)

so each path token is visible with probability r, i.e. hidden with probability 1 - r, which is
uniform too (``_get_diffusion_masks``: ``prob > uniform``; ``get_mask``: ``| ~need_to_pred``;
``prediction_mask = ~enc_mask``; ``get_loss`` with ``scale_loss=False``: a global token mean).
Padding is never visible and never predicted. (The official code also forces position 0
visible to avoid empty rows; position 0 is always a prompt token here, so it is visible anyway.)

Architecture (PAST). With E the tied token embedding:

* encoder: the model's own ``forward`` over the tokens with an ``Explicit`` mask in which every
  position attends to the visible positions only (bidirectionally; hidden tokens are keys of
  nobody), RoPE at 0..T-1; its final-normed output M [B, T, D] is the memory;
* decoder: its own stack of layers (``init_mlm_u``, default as many as the encoder) whose inputs
  are position-only: one learned query vector q [D] at every position t (RoPE at t). Every
  decoder layer attends to M (``stack_enc_dec=True``: the encoder's final output, not its layer
  l) at the visible slots only, with no query-query attention. This runs through
  :func:`tokjax.model.memory_cache` (M's K/V in every decoder layer's cache) and
  :func:`tokjax.model.memory_mask` (``queries="none"``);
* head: the decoder's final norm, then E^T (shared with the encoder's input embedding).

Decoding (the official eval): ``pl_model.py`` evaluates an absorbing model in mode
``"all_but_last"`` with ``attention_mask`` = prompt + tokens decoded so far, and
``maze.py::_eval_get_model_answers`` fills the path greedily left to right, one position per
forward (argmax of the query at that position). :class:`MLMUDecode` is that loop as a
``tokjax.generate`` Strategy: each step re-encodes prompt + committed tokens (bidirectional, so no
incremental cache) and runs one decoder query at the next position.

Deviations from ``past.py`` (kept small; recorded): tokjax layers (pre-norm RMSNorm, SwiGLU, no
biases) instead of GPT-2 blocks with LayerNorm/GELU; the decoder layer's K/V projection of the
memory goes through that layer's ``attn_norm`` (``memory_cache``'s rule) where PAST projects the
already final-normed memory directly (``c_attn_mem``), i.e. one extra normalisation of a
normalised vector; the query vector enters as an input embedding (``wpe(0)`` in PAST); the
decoder's final norm is its own (PAST shares ``ln_f`` code but not weights: the same).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from tokjax.model import Inputs, ModelConfig, forward, init_params, memory_cache, memory_mask
from tokjax.model.attention import Explicit

__all__ = [
    "MLMU_KEY", "MLMUDecode", "decoder_config", "init_mlm_u", "make_mlm_u_loss", "mlm_u_logits", "mlm_u_loss",
    "mlm_u_visibility",
]

MLMU_KEY = "mlm_u"
_F32 = jnp.float32


# ----------------------------------------------------------------------------------------- params
def init_mlm_u(params: dict, cfg: ModelConfig, key: jax.Array, *, n_layers: int | None = None) -> dict:
    """Returns ``params`` plus ``params["mlm_u"]``: a decoder stack (``layers``, ``final_norm``) and one learned
    query vector ``query`` [D] (P8, PAST).

    ``params`` (from ``init_params(cfg, key)``) is the encoder; its embedding (and position
    tables, if any) are shared with the decoder, and the tied head reads the decoder's output.
    ``n_layers``: decoder depth (default ``cfg.n_layers``, as PAST's symmetric encoder/decoder).
    The encoder's ``forward`` ignores the extra entry.
    """
    if not isinstance(cfg, ModelConfig):
        raise ValueError(f"cfg must be the encoder's ModelConfig, got {type(cfg).__name__}")
    if not isinstance(params, dict) or "layers" not in params or "embed" not in params:
        raise ValueError("params must be a tokjax parameter dict with 'embed' and 'layers' (init_params(cfg, key))")
    if cfg.mixer != "attention" or cfg.pos_dims != 1:
        raise ValueError(f"MLM-U needs an attention model with pos_dims=1 (the decoder attends through a KV "
                         f"cache), got mixer={cfg.mixer!r}, pos_dims={cfg.pos_dims}")
    n = cfg.n_layers if n_layers is None else n_layers
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n_layers must be a positive int (decoder depth), got {n_layers!r}")
    dcfg = dataclasses.replace(cfg, n_layers=int(n))
    k_dec, k_q = jax.random.split(key)
    dp = init_params(dcfg, k_dec)
    query = cfg.init_scale * jax.random.normal(k_q, (cfg.d_model,), _F32)
    return {**params, MLMU_KEY: {"layers": dp["layers"], "final_norm": dp["final_norm"], "query": query}}


def _head(params) -> dict:
    if not isinstance(params, dict) or MLMU_KEY not in params:
        raise ValueError(f"params has no {MLMU_KEY!r} entry: add the decoder with init_mlm_u(params, cfg, key)")
    head = params[MLMU_KEY]
    if not isinstance(head, dict) or not {"layers", "final_norm", "query"} <= set(head):
        raise ValueError(f"params[{MLMU_KEY!r}] must hold 'layers', 'final_norm' and 'query' (init_mlm_u)")
    return head


def decoder_config(params: dict, cfg: ModelConfig) -> ModelConfig:
    """Returns the decoder's ModelConfig: ``cfg`` with the decoder's depth (read from the parameter shapes)."""
    layers = _head(params)["layers"]
    n = len(layers) if isinstance(layers, (tuple, list)) else int(jax.tree.leaves(layers)[0].shape[0])
    return dataclasses.replace(cfg, n_layers=n)


def _decoder_params(params: dict) -> dict:
    head = _head(params)
    shared = {k: v for k, v in params.items() if k not in ("layers", "final_norm", MLMU_KEY)}
    return {**shared, "layers": head["layers"], "final_norm": head["final_norm"]}


# ---------------------------------------------------------------------------------------- forward
def _check_tokens(tokens, name="tokens") -> jax.Array:
    tokens = jnp.asarray(tokens)
    if tokens.ndim != 2 or tokens.shape[1] < 1 or not jnp.issubdtype(tokens.dtype, jnp.integer):
        raise ValueError(f"{name} must be int [batch, seq] with seq >= 1, got {tokens.dtype} {tuple(tokens.shape)}")
    return tokens


def _check_bool(x, shape, name) -> jax.Array:
    x = jnp.asarray(x)
    if x.dtype != jnp.bool_:
        raise ValueError(f"{name} must be a bool array (True = {'visible' if name == 'visible' else 'yes'}), "
                         f"got dtype {x.dtype}")
    if x.shape != shape:
        raise ValueError(f"{name} must have the tokens' shape {shape}, got {tuple(x.shape)}")
    return x


def _encode(params, cfg, tokens, visible) -> jax.Array:
    """Returns the encoder's final-normed output [B, T, D]: every position attends to the visible positions only."""
    B, T = tokens.shape
    mask = Explicit(jnp.broadcast_to(visible[:, None, :], (B, T, T)))
    return forward(params, cfg, Inputs(tokens=tokens), mask=mask, compute_logits=False).hidden


def _decode(params, cfg, memory, visible, query_positions) -> jax.Array:
    """Returns float32 logits [B, Q, V] of position-only queries at ``query_positions`` [B, Q] reading the memory."""
    dcfg = decoder_config(params, cfg)
    dp = _decoder_params(params)
    B, S = visible.shape
    Q = query_positions.shape[1]
    q = jnp.broadcast_to(_head(params)["query"].astype(cfg.dtype), (B, Q, cfg.d_model))
    cache = memory_cache(dp, dcfg, memory, jnp.arange(S, dtype=jnp.int32), S + Q, dtype=_F32)
    mask = memory_mask(visible, Q, S + Q, queries="none")
    out = forward(dp, dcfg, Inputs(embeds=q, positions=query_positions), cache=cache, mask=mask)
    return out.logits.astype(_F32)


def _check_visible_rows(visible) -> None:
    if not isinstance(visible, jax.core.Tracer):
        empty = ~np.asarray(visible).any(axis=1)
        if empty.any():
            raise ValueError(f"rows {np.flatnonzero(empty).tolist()} have no visible token: MLM-U conditions on the "
                             f"visible tokens, so every row needs at least one (a prompt token)")


def mlm_u_logits(params: dict, cfg: ModelConfig, tokens: jax.Array, visible: jax.Array) -> jax.Array:
    """Returns float32 [B, T, V]: at every position t, the decoder query's distribution of x_t given x_visible (P8).

    ``tokens`` int [B, T]; ``visible`` bool [B, T] (True = the encoder sees it). Hidden tokens
    reach nothing: the logits do not depend on them (tested). ``params`` needs
    ``params["mlm_u"]`` (:func:`init_mlm_u`). ValueError for a row with no visible token (checked
    when concrete).
    """
    tokens = _check_tokens(tokens)
    visible = _check_bool(visible, tokens.shape, "visible")
    _check_visible_rows(visible)
    memory = _encode(params, cfg, tokens, visible)
    B, T = tokens.shape
    pos = jnp.broadcast_to(jnp.arange(T, dtype=jnp.int32)[None], (B, T))
    return _decode(params, cfg, memory, visible, pos)


# ------------------------------------------------------------------------------------------- loss
def mlm_u_visibility(key: jax.Array, path_mask: jax.Array, attention_mask: jax.Array | None = None,
                     rate=None) -> jax.Array:
    """Returns bool [B, T] visible: the official "absorbing" mask with a uniform rate (P8).

    Per row r ~ U(0, 1) (or the given ``rate``, a scalar or [B] of visible probabilities, as
    PAST's float ``train_mode``); a path token (``path_mask`` True) is visible when r > u_i with
    u_i ~ U(0, 1), i.e. with probability r; every other token (the prompt) is visible. Tokens
    with ``attention_mask`` False (padding) are never visible.
    """
    path_mask = jnp.asarray(path_mask)
    if path_mask.ndim != 2 or path_mask.dtype != jnp.bool_:
        raise ValueError(f"path_mask must be bool [batch, seq] (True = a path token that may be hidden), got "
                         f"{path_mask.dtype} {tuple(path_mask.shape)}")
    B, T = path_mask.shape
    k_r, k_u = jax.random.split(key)
    r = jax.random.uniform(k_r, (B, 1)) if rate is None else jnp.broadcast_to(
        jnp.asarray(rate, _F32).reshape(-1, 1), (B, 1))
    u = jax.random.uniform(k_u, (B, T))
    visible = (r > u) | ~path_mask
    if attention_mask is not None:
        visible = visible & _check_bool(attention_mask, (B, T), "attention_mask")
    return visible


def mlm_u_loss(params: dict, cfg: ModelConfig, tokens: jax.Array, path_mask: jax.Array, key: jax.Array,
               attention_mask: jax.Array | None = None) -> tuple[jax.Array, dict]:
    """Returns (L, metrics): the MLM-U loss of one batch (P8; see the module docstring).

    ``tokens`` int [B, T] (prompt then path, right-padded); ``path_mask`` bool [B, T], True at the
    tokens to learn (the path after ``<PATH_START>``, its end token included); ``attention_mask``
    bool [B, T] (False = padding; default all True); ``key`` draws the masks. L is the sum of the
    hidden tokens' cross-entropies over the number of hidden tokens in the batch (0 when none is
    hidden). Metrics: ``loss``, ``hidden_count``, ``hidden_acc`` (argmax accuracy on hidden
    tokens) and ``visible_frac`` (visible share of path tokens).
    """
    tokens = _check_tokens(tokens)
    path_mask = _check_bool(path_mask, tokens.shape, "path_mask")
    valid = jnp.ones(tokens.shape, bool) if attention_mask is None else _check_bool(
        attention_mask, tokens.shape, "attention_mask")
    if not isinstance(tokens, jax.core.Tracer) and not isinstance(path_mask, jax.core.Tracer) \
            and not isinstance(valid, jax.core.Tracer):
        t = np.asarray(tokens)
        if t.min() < 0 or t.max() >= cfg.vocab_size:
            raise ValueError(f"token ids must lie in [0, vocab_size={cfg.vocab_size}), got [{t.min()}, {t.max()}]")
        _check_visible_rows(np.asarray(valid) & ~np.asarray(path_mask))
    path = path_mask & valid
    visible = mlm_u_visibility(key, path, valid)
    hidden = path & ~visible
    logits = mlm_u_logits(params, cfg, tokens, visible)
    lse = jax.nn.logsumexp(logits, axis=-1)
    picked = jnp.take_along_axis(logits, tokens[..., None], axis=-1)[..., 0]
    ce = jnp.where(hidden, lse - picked, 0.0)
    count = jnp.sum(hidden).astype(_F32)
    loss = jnp.sum(ce) / jnp.maximum(count, 1.0)
    sg = jax.lax.stop_gradient
    acc = jnp.sum(hidden & (jnp.argmax(logits, -1) == tokens)) / jnp.maximum(count, 1.0)
    frac = jnp.sum(path & visible) / jnp.maximum(jnp.sum(path), 1)
    return loss, {"loss": loss, "hidden_count": count, "hidden_acc": sg(acc), "visible_frac": sg(frac)}


def make_mlm_u_loss() -> callable:
    """Returns ``loss_fn(params, cfg, batch, rng) -> (loss, metrics)``: :func:`mlm_u_loss` in the train signature.

    ``batch["tokens"]`` int [B, T], ``batch["path_mask"]`` bool [B, T], optional
    ``batch["attention_mask"]`` bool [B, T]; ``rng`` (the loop's per-step key) draws the masks.
    """

    def loss_fn(params, cfg, batch, rng=None):
        if not isinstance(batch, dict) or "tokens" not in batch or "path_mask" not in batch:
            raise ValueError("the mlm_u loss needs batch['tokens'] int [B, T] and batch['path_mask'] bool [B, T] "
                             "(True at the path tokens to predict); optional batch['attention_mask'] bool [B, T]")
        if rng is None:
            raise ValueError("the mlm_u loss draws random masks: pass rng (tokjax.train passes one per step)")
        return mlm_u_loss(params, cfg, batch["tokens"], jnp.asarray(batch["path_mask"]).astype(bool), rng,
                          None if batch.get("attention_mask") is None
                          else jnp.asarray(batch["attention_mask"]).astype(bool))

    return loss_fn


# ------------------------------------------------------------------------------------- generation
def _strategy_base():
    from tokjax.decoding._state import Strategy

    return Strategy


@dataclasses.dataclass(frozen=True)
class MLMUDecode(_strategy_base()):
    """A ``tokjax.generate`` Strategy: greedy (or any logit transform) left-to-right MLM-U decoding (P8).

    As the official eval (``_eval_get_model_answers`` with mode ``"all_but_last"``): each step the
    encoder reads the prompt and every committed token (all visible, bidirectionally; the
    incremental KV cache of a causal model does not apply), one position-only decoder query at
    the next position reads that memory, and its logits choose the token. ``params`` must carry
    ``params["mlm_u"]`` (:func:`init_mlm_u`). Costs one encoder pass over the buffer per token.
    """

    def validate(self, cfg: ModelConfig) -> None:
        if cfg.mixer != "attention" or cfg.pos_dims != 1:
            raise ValueError(f"MLMUDecode needs an attention model with pos_dims=1, got mixer={cfg.mixer!r}")

    def init(self, params, cfg, state):
        _head(params)
        return None

    def step(self, params, cfg, transform, state, eos_id=None):
        from tokjax.decoding._state import sample_and_commit

        tokens = state.tokens
        S = tokens.shape[1]
        visible = jnp.arange(S)[None, :] < state.lengths[:, None]
        memory = _encode(params, cfg, tokens, visible)
        raw = _decode(params, cfg, memory, visible, state.lengths[:, None].astype(jnp.int32))[:, 0]
        return sample_and_commit(state, raw, transform, eos_id)


# --------------------------------------------------------------------------------------- registry
def _register() -> None:
    from tokjax.losses.registry import register_loss

    register_loss("mlm_u", make_mlm_u_loss, {},
                  doc="P8 MLM-U: uniform-rate absorbing masks over path tokens, an encoder over the visible tokens "
                      "and a decoder of position-only queries; batch needs tokens + path_mask; params need "
                      "params['mlm_u'] (tokjax.losses.mlm_u.init_mlm_u)",
                  overwrite=True)


_register()
