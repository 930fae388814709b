"""Future Token Prediction (P66): a causal encoder whose h_t feeds a small decoder predicting x_{t+1..t+N}.

Paper: *Future Token Prediction -- Causal Language Modelling with Per-Token Semantic State Vector for
Multi-Token Prediction* (N. Walker, arXiv 2410.18160; P66; no official code). A GPT-like causal
encoder gives the top-layer vector h_t of every position. Instead of a language head, a linear,
expansive projection turns h_t into an m-slot "pseudo-sequence"

    P(h_t) = reshape(h_t W_P + b_P, [m, D'])          W_P: [D, m D']

and a small transformer decoder cross-attends to P(h_t) only (no other past context), self-attends
causally to its own teacher-forced inputs (a learned start vector, then x_{t+1}, ..., x_{t+N-1})
and predicts x_{t+1}, ..., x_{t+N}. The loss over every position t and future offset j is

    L = sum_{j=1..N} w_j * CE_j,     CE_j = mean_t -log p_dec(x_{t+j} | P(h_t), x_{t+1..t+j-1}),
    w_j = decay^(j-1)                                                                    (P66)

(token losses "exponentially down-weighted by their distance ahead"; here each CE_j is the mean
over the positions whose target x_{t+j} lies inside the window, so w_1 CE_1 alone is next-token
cross-entropy through the decoder). ``decay`` is a runtime value (``batch["hparams"]["decay"]``
overrides it without recompiling); explicit ``weights`` [N] replace the exponential schedule.

Cross-attention reuses the shared forward: :func:`tokjax.model.memory_cache` fills the decoder's
KV cache with every decoder layer's K/V of the pseudo-sequence (positions 0..m-1), and the decoder's
N queries follow at positions m..m+N-1 under ``Causal()`` (all memory slots + causal queries). So the
decoder layer is the ordinary tokjax layer: self-attention over [memory; queries], which for
queries is exactly "cross-attend to P(h_t) and self-attend causally to earlier queries" with one
softmax over both (a fused cross+self attention, as in decoder-only encoder-decoder set-ups; the
paper's decoder may use separate cross- and self-attention sub-layers: unverified).

The B*T mini-sequences run as a chunked map (``chunk`` rows at a time under ``lax.map`` with
rematerialisation), so memory grows with ``chunk``, not with B*T; ``chunk=None`` runs them in one
batch (the same values: tested).

Next-token use: the decoder's first output (start vector + P(h_t)) is the model's next-token
distribution. :func:`ftp_next_logits` gives it for every position (bits per byte), and
:class:`FTPDecode` is a ``tokjax.generate`` Strategy that decodes with it (the encoder's KV cache as
usual; the decoder runs one query per step on the new h_t).

Not verified against the paper (only its abstract and a third-party summary were readable here):
the paper's N (tokens ahead), m (pseudo-sequence length), D' (decoder width), the decay rate of
w_j, the decoder depth, whether the decoder shares the encoder's token embedding, and the start
token. The defaults below (N=4, m=4, decay=0.8, a 1-layer decoder of the encoder's width with its
own embedding and tied head) are this module's choices for CPU-scale runs.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from tokjax.model import Causal, Inputs, ModelConfig, forward, init_params, memory_cache

__all__ = [
    "FTP_KEY", "FTPConfig", "FTPDecode", "default_decoder_cfg", "ftp_config", "ftp_loss", "ftp_logits",
    "ftp_next_logits", "ftp_per_token", "ftp_weights", "init_ftp", "make_ftp_loss",
]

FTP_KEY = "ftp"
_F32 = jnp.float32


# ----------------------------------------------------------------------------------------- config
@dataclasses.dataclass(frozen=True)
class FTPConfig:
    """The static shape of an FTP head: the decoder's ModelConfig, N (tokens ahead) and m (pseudo-sequence slots).

    D' is ``decoder.d_model``; the decoder predicts over ``decoder.vocab_size`` ids (must equal the
    encoder's). Frozen and hashable (a static jit argument).
    """

    decoder: ModelConfig
    n_future: int
    m_slots: int

    def __post_init__(self):
        if not isinstance(self.decoder, ModelConfig):
            raise ValueError(f"FTPConfig.decoder must be a ModelConfig, got {type(self.decoder).__name__}")
        for name, what in (("n_future", "N, the number of future tokens predicted (N >= 1)"),
                           ("m_slots", "m, the pseudo-sequence length (m >= 1)")):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
                raise ValueError(f"{name} must be a positive int ({what}), got {v!r}")
        if self.decoder.mixer != "attention":
            raise ValueError("the FTP decoder must be an attention model (it cross-attends through a KV cache), got "
                             f"mixer={self.decoder.mixer!r}")
        if self.decoder.pos_dims != 1:
            raise ValueError(f"the FTP decoder needs pos_dims=1, got {self.decoder.pos_dims}")
        need = self.m_slots + self.n_future
        if self.decoder.positions == "learned" and self.decoder.max_len < need:
            raise ValueError(f"decoder max_len={self.decoder.max_len} is too small for m + N = {need} positions")


def default_decoder_cfg(cfg: ModelConfig, *, d_model: int | None = None, n_layers: int = 1) -> ModelConfig:
    """Returns a small decoder config for the encoder ``cfg``: ``n_layers`` layers of width ``d_model`` (default
    ``cfg.d_model``), the encoder's vocabulary, norm, activation and head size where they fit."""
    d = cfg.d_model if d_model is None else int(d_model)
    heads = max(1, d // cfg.head_size) if d % cfg.head_size == 0 else 1
    return ModelConfig(vocab_size=cfg.vocab_size, d_model=d, n_layers=int(n_layers), n_heads=heads,
                       norm=cfg.norm, activation=cfg.activation, max_len=64, init_scale=cfg.init_scale)


def ftp_config(cfg: ModelConfig, *, n_future: int, m_slots: int, decoder_cfg: ModelConfig | None = None) -> FTPConfig:
    """Returns the FTPConfig for encoder ``cfg`` after checking the decoder's vocabulary matches it."""
    if not isinstance(cfg, ModelConfig):
        raise ValueError(f"cfg must be the encoder's ModelConfig, got {type(cfg).__name__}")
    dec = default_decoder_cfg(cfg) if decoder_cfg is None else _as_cfg(decoder_cfg)
    if dec.vocab_size != cfg.vocab_size:
        raise ValueError(f"decoder vocab_size={dec.vocab_size} must equal the encoder's {cfg.vocab_size}")
    return FTPConfig(dec, n_future, m_slots)


def _as_cfg(value: Any) -> ModelConfig:
    if isinstance(value, ModelConfig):
        return value
    if isinstance(value, dict):
        return ModelConfig(**value)
    if isinstance(value, (list, tuple)) and all(isinstance(p, (list, tuple)) and len(p) == 2 for p in value):
        return ModelConfig(**{str(k): v for k, v in value})  # the registry's frozen form of a mapping
    raise ValueError(f"decoder_cfg must be a ModelConfig or a mapping of its fields, got {value!r}")


def init_ftp(params: dict, cfg: ModelConfig, key: jax.Array, *, n_future: int = 4, m_slots: int = 4,
             decoder_cfg: ModelConfig | None = None) -> dict:
    """Returns ``params`` plus ``params["ftp"]``: the projection W_P [D, m*D'] (+ bias), the decoder's params and
    its start vector [D'] (P66).

    ``n_future`` (N) and ``m_slots`` (m) are checked here (ValueError for N < 1, m < 1) and must be
    passed again to the loss (they are static shapes, not stored). ``decoder_cfg`` default:
    :func:`default_decoder_cfg` (one layer of the encoder's width). The encoder forward ignores the
    extra entry, so the model still runs on these params.
    """
    if not isinstance(params, dict):
        raise ValueError(f"params must be the encoder's parameter dict, got {type(params).__name__}")
    fc = ftp_config(cfg, n_future=n_future, m_slots=m_slots, decoder_cfg=decoder_cfg)
    dec = fc.decoder
    k_proj, k_dec, k_start = jax.random.split(key, 3)
    proj = {"kernel": jax.random.normal(k_proj, (cfg.d_model, fc.m_slots * dec.d_model), _F32) / math.sqrt(cfg.d_model),
            "bias": jnp.zeros((fc.m_slots * dec.d_model,), _F32)}
    start = dec.init_scale * jax.random.normal(k_start, (dec.d_model,), _F32)
    return {**params, FTP_KEY: {"proj": proj, "decoder": init_params(dec, k_dec), "start": start}}


def _ftp_params(params) -> dict:
    if not isinstance(params, dict) or FTP_KEY not in params:
        raise ValueError(f"params has no {FTP_KEY!r} entry: add one with init_ftp(params, cfg, key, ...)")
    return params[FTP_KEY]


def _check_head(head: dict, cfg: ModelConfig, fc: FTPConfig) -> None:
    want = (cfg.d_model, fc.m_slots * fc.decoder.d_model)
    got = tuple(jnp.shape(head["proj"]["kernel"]))
    if got != want:
        raise ValueError(f"params['ftp']['proj']['kernel'] has shape {got}, but D={cfg.d_model}, m={fc.m_slots}, "
                         f"D'={fc.decoder.d_model} need {want}: pass the m_slots / decoder_cfg used by init_ftp")


# --------------------------------------------------------------------------------------- weights
def ftp_weights(n_future: int, decay=0.8, weights=None) -> jax.Array:
    """Returns float32 [N] loss weights: ``weights`` when given (length N, finite, >= 0, not all 0; checked when
    concrete), else ``w_j = decay^(j-1)`` for j = 1..N with ``decay`` in (0, 1] (may be traced)."""
    N = int(n_future)
    if N < 1:
        raise ValueError(f"n_future must be >= 1, got {n_future!r}")
    if weights is not None:
        w = jnp.asarray(weights, _F32)
        if w.shape != (N,):
            raise ValueError(f"weights must have one entry per future token, shape ({N},), got {tuple(w.shape)}")
        if not isinstance(w, jax.core.Tracer):
            a = np.asarray(w)
            if not np.all(np.isfinite(a)) or np.any(a < 0) or not np.any(a > 0):
                raise ValueError(f"weights must be finite, >= 0 and not all zero, got {a.tolist()}")
        return w
    d = jnp.asarray(decay, _F32)
    if d.shape != ():
        raise ValueError(f"decay must be a scalar, got shape {tuple(d.shape)}")
    if not isinstance(d, jax.core.Tracer):
        v = float(d)
        if not (0.0 < v <= 1.0):
            raise ValueError(f"decay must lie in (0, 1] (w_j = decay^(j-1)), got {v!r}")
    return d ** jnp.arange(N, dtype=_F32)


# ------------------------------------------------------------------------------------- decoding
def _pseudo_sequence(head: dict, fc: FTPConfig, h: jax.Array) -> jax.Array:
    """Returns P(h) [..., m, D']: the linear, expansive projection of final-normed hidden states h [..., D]."""
    p = h.astype(_F32) @ head["proj"]["kernel"].astype(_F32) + head["proj"]["bias"].astype(_F32)
    return p.reshape(h.shape[:-1] + (fc.m_slots, fc.decoder.d_model))


def _decode(head: dict, fc: FTPConfig, memory: jax.Array, inputs: jax.Array | None) -> jax.Array:
    """Returns float32 logits [R, Q, V] of the decoder over rows: memory [R, m, D'], teacher-forced ids [R, Q-1]
    (or None for Q = 1: the start query only)."""
    dec = fc.decoder
    dp = head["decoder"]
    R = memory.shape[0]
    start = jnp.broadcast_to(head["start"].astype(dec.dtype), (R, 1, dec.d_model))
    q = start if inputs is None else jnp.concatenate(
        [start, jnp.take(dp["embed"], inputs, axis=0).astype(dec.dtype)], axis=1)
    Q = q.shape[1]
    cache = memory_cache(dp, dec, memory.astype(dec.dtype), jnp.arange(fc.m_slots, dtype=jnp.int32),
                         fc.m_slots + Q, dtype=_F32)
    out = forward(dp, dec, Inputs(embeds=q), cache=cache, mask=Causal())
    return out.logits


def _chunked(fn: Callable, args: tuple, chunk: int | None):
    """Returns ``fn(*args)`` over the leading (row) axis, ``chunk`` rows at a time (lax.map + remat); None: at once."""
    if chunk is None:
        return fn(*args)
    R = args[0].shape[0]
    c = max(1, min(int(chunk), R))
    n = -(-R // c)
    pad = n * c - R

    def split(a):
        a = jnp.pad(a, [(0, pad)] + [(0, 0)] * (a.ndim - 1)) if pad else a
        return a.reshape((n, c) + a.shape[1:])

    out = jax.lax.map(jax.checkpoint(lambda xs: fn(*xs)), tuple(split(a) for a in args))
    return jax.tree.map(lambda o: o.reshape((n * c,) + o.shape[2:])[:R], out)


def _check_chunk(chunk) -> int | None:
    if chunk is None:
        return None
    if isinstance(chunk, bool) or not isinstance(chunk, (int, np.integer)) or chunk < 1:
        raise ValueError(f"chunk must be None or a positive int (mini-sequences per map step), got {chunk!r}")
    return int(chunk)


def _check_tokens(tokens, cfg) -> jax.Array:
    tokens = jnp.asarray(tokens)
    if tokens.ndim != 2 or tokens.shape[1] < 1 or not jnp.issubdtype(tokens.dtype, jnp.integer):
        raise ValueError(f"tokens must be int [batch, seq] with seq >= 1, got {tokens.dtype} {tuple(tokens.shape)}")
    return tokens


def _encode(params, cfg, tokens) -> jax.Array:
    """Returns the encoder's final-normed top-layer vectors h [B, T, D] (no logits)."""
    return forward(params, cfg, Inputs(tokens=tokens), compute_logits=False).hidden


def _future_ids(tokens: jax.Array, n: int) -> tuple[jax.Array, jax.Array]:
    """Returns (ids [B, L, n], valid [B, L, n]): ids[b, t, k] = tokens[b, t+1+k] where t+1+k < L (else 0)."""
    L = tokens.shape[1]
    idx = jnp.arange(L)[:, None] + 1 + jnp.arange(n)[None, :]
    valid = idx < L
    ids = jnp.take(tokens, jnp.minimum(idx, L - 1), axis=1)
    return jnp.where(valid[None], ids, 0), jnp.broadcast_to(valid[None], ids.shape)


def ftp_logits(params: dict, cfg: ModelConfig, fc: FTPConfig, tokens: jax.Array, *, chunk: int | None = None) -> jax.Array:
    """Returns float32 [B, L, N, V]: at position t, output j (0-based) is the decoder's distribution of x_{t+1+j}
    given P(h_t) and the teacher-forced x_{t+1..t+j} from ``tokens`` [B, L] (P66).

    Inputs past the end of ``tokens`` are id 0; they only reach outputs whose targets lie past the
    end too. Materialises [B, L, N, V]: for tests and small inspections; training uses
    :func:`ftp_per_token`.
    """
    tokens = _check_tokens(tokens, cfg)
    head = _ftp_params(params)
    _check_head(head, cfg, fc)
    B, L = tokens.shape
    N = fc.n_future
    mem = _pseudo_sequence(head, fc, _encode(params, cfg, tokens)).reshape(B * L, fc.m_slots, fc.decoder.d_model)
    ids, _ = _future_ids(tokens, N - 1)
    args = (mem,) if N == 1 else (mem, ids.reshape(B * L, N - 1))
    out = _chunked(lambda m, *i: _decode(head, fc, m, i[0] if i else None), args, _check_chunk(chunk))
    return out.reshape(B, L, N, -1)


def ftp_next_logits(params: dict, cfg: ModelConfig, fc: FTPConfig, tokens: jax.Array, *,
                    chunk: int | None = None) -> jax.Array:
    """Returns float32 [B, L, V]: the decoder's first output at every position (the FTP model's next-token
    distribution), from the start query alone (one decoder token per position)."""
    tokens = _check_tokens(tokens, cfg)
    head = _ftp_params(params)
    _check_head(head, cfg, fc)
    B, L = tokens.shape
    mem = _pseudo_sequence(head, fc, _encode(params, cfg, tokens)).reshape(B * L, fc.m_slots, fc.decoder.d_model)
    out = _chunked(lambda m: _decode(head, fc, m, None), (mem,), _check_chunk(chunk))
    return out.reshape(B, L, -1)


def ftp_per_token(params: dict, cfg: ModelConfig, fc: FTPConfig, tokens: jax.Array, mask: jax.Array | None = None,
                  *, chunk: int | None = None) -> tuple[jax.Array, jax.Array]:
    """Returns (ce [B, T, N], valid [B, T, N]) for a training window ``tokens`` [B, T+1] (P66).

    The encoder reads x_0..x_{T-1}; ``ce[b, t, j]`` = -log p_dec(x_{t+1+j} | P(h_t), x_{t+1..t+j}) and
    ``valid`` says whether x_{t+1+j} lies in the window (t + 1 + j <= T) and, with ``mask`` [B, T]
    (per next-token target, ``mask[:, k]`` for x_{k+1}), is unmasked. Invalid entries are 0. The
    B*T mini-sequences run ``chunk`` at a time (None: all at once).
    """
    tokens = _check_tokens(tokens, cfg)
    if tokens.shape[1] < 2:
        raise ValueError(f"tokens must be [batch, T+1] with T >= 1, got shape {tuple(tokens.shape)}")
    head = _ftp_params(params)
    _check_head(head, cfg, fc)
    B, T = tokens.shape[0], tokens.shape[1] - 1
    N = fc.n_future
    if mask is not None:
        mask = jnp.asarray(mask)
        if mask.shape != (B, T):
            raise ValueError(f"mask must be [batch, T] = {(B, T)} (one entry per next-token target), got "
                             f"{tuple(mask.shape)}")
    chunk = _check_chunk(chunk)
    mem = _pseudo_sequence(head, fc, _encode(params, cfg, tokens[:, :-1])).reshape(B * T, fc.m_slots,
                                                                                   fc.decoder.d_model)
    fut, valid = _future_ids(tokens, N)  # [B, T+1, N]: x_{t+1..t+N}
    fut, valid = fut[:, :T], valid[:, :T]
    if mask is not None:
        idx = jnp.minimum(jnp.arange(T)[:, None] + jnp.arange(N)[None, :], T - 1)
        valid = valid & jnp.take(mask.astype(bool), idx, axis=1)
    targets = fut.reshape(B * T, N)

    def rows(m, tgt):
        logits = _decode(head, fc, m, tgt[:, :-1] if N > 1 else None)
        lse = jax.nn.logsumexp(logits, axis=-1)
        picked = jnp.take_along_axis(logits, tgt[..., None], axis=-1)[..., 0]
        return lse - picked

    ce = _chunked(rows, (mem, targets), chunk).reshape(B, T, N)
    return jnp.where(valid, ce, 0.0), valid


def ftp_loss(params: dict, cfg: ModelConfig, fc: FTPConfig, tokens: jax.Array, mask: jax.Array | None = None, *,
             decay=0.8, weights=None, chunk: int | None = None) -> tuple[jax.Array, dict]:
    """Returns (L, metrics) with ``L = sum_j w_j CE_j`` (P66; see the module docstring).

    ``CE_j`` is the mean of :func:`ftp_per_token`'s ``ce[..., j]`` over its valid entries (0 when
    none); ``w`` from :func:`ftp_weights` (``decay`` may be traced). Metrics: ``loss``, ``ce_1``
    (next-token CE through the decoder), ``ce_mean`` (unweighted mean over j), ``ce_last`` and
    ``token_count`` (valid next-token targets).
    """
    w = ftp_weights(fc.n_future, decay, weights)
    ce, valid = ftp_per_token(params, cfg, fc, tokens, mask, chunk=chunk)
    count = jnp.sum(valid, axis=(0, 1)).astype(_F32)
    per_j = jnp.sum(ce, axis=(0, 1)) / jnp.maximum(count, 1.0)
    loss = jnp.sum(w * per_j)
    sg = jax.lax.stop_gradient
    return loss, {"loss": loss, "ce_1": sg(per_j[0]), "ce_mean": sg(jnp.mean(per_j)), "ce_last": sg(per_j[-1]),
                  "token_count": count[0]}


def make_ftp_loss(*, decoder_cfg=None, n_future: int = 4, m_slots: int = 4, decay: float = 0.8,
                  weights: Sequence[float] | None = None, chunk: int | None = 1024) -> Callable:
    """Returns ``loss_fn(params, cfg, batch, rng) -> (loss, metrics)``: :func:`ftp_loss` in the train signature.

    ``batch["tokens"]`` [B, T+1] (optional ``batch["mask"]`` [B, T]); ``batch["hparams"]["decay"]``
    overrides ``decay`` at run time (no recompilation). ``decoder_cfg`` None: the
    :func:`default_decoder_cfg` of the model's cfg. Options are checked here (ValueError).
    """
    ftp_weights(n_future, decay, weights)  # validates N, decay and weights now
    if isinstance(m_slots, bool) or not isinstance(m_slots, (int, np.integer)) or m_slots < 1:
        raise ValueError(f"m_slots must be a positive int (m, the pseudo-sequence length), got {m_slots!r}")
    dec = None if decoder_cfg is None else _as_cfg(decoder_cfg)
    chunk = _check_chunk(chunk)
    weights = None if weights is None else tuple(float(x) for x in weights)

    def loss_fn(params, cfg, batch, rng=None):
        del rng
        if not isinstance(batch, dict) or "tokens" not in batch:
            raise ValueError("the ftp loss needs batch['tokens'] int [B, T+1]")
        fc = ftp_config(cfg, n_future=int(n_future), m_slots=int(m_slots), decoder_cfg=dec)
        hp = batch.get("hparams")
        d = hp["decay"] if isinstance(hp, dict) and "decay" in hp else decay
        return ftp_loss(params, cfg, fc, batch["tokens"], batch.get("mask"), decay=d, weights=weights, chunk=chunk)

    return loss_fn


# ------------------------------------------------------------------------------------ generation
def _strategy_base():
    from tokjax.decoding._state import Strategy

    return Strategy


@dataclasses.dataclass(frozen=True)
class FTPDecode(_strategy_base()):
    """A ``tokjax.generate`` Strategy that decodes an FTP model with its decoder's first output (P66).

    Each step feeds the pending token to the encoder (its KV cache as usual), projects the new
    final-normed h_t to P(h_t) and runs the decoder's start query on it; the logits of that one
    query go through the logit transforms (greedy, sampling, ...) and the chosen token is committed.
    ``fc`` is the :class:`FTPConfig`; ``params`` must carry ``params["ftp"]`` (:func:`init_ftp`).
    """

    fc: FTPConfig = None

    def validate(self, cfg: ModelConfig) -> None:
        if not isinstance(self.fc, FTPConfig):
            raise ValueError(f"FTPDecode needs fc=FTPConfig(...), got {self.fc!r}")
        if self.fc.decoder.vocab_size != cfg.vocab_size:
            raise ValueError(f"FTP decoder vocab_size={self.fc.decoder.vocab_size} != the model's {cfg.vocab_size}")

    def step(self, params, cfg, transform, state, eos_id=None):
        from tokjax.decoding._state import sample_and_commit

        head = _ftp_params(params)
        pending = jnp.take_along_axis(state.tokens, (state.lengths - 1)[:, None], axis=1)
        out = forward(params, cfg, Inputs(tokens=pending), cache=state.cache, compute_logits=False)
        mem = _pseudo_sequence(head, self.fc, out.hidden[:, 0])
        raw = _decode(head, self.fc, mem, None)[:, 0]
        return sample_and_commit(state, raw, transform, eos_id, cache=out.cache)


# -------------------------------------------------------------------------------------- registry
def _factory(decoder_cfg, n_future, m_slots, decay, weights, chunk):
    return make_ftp_loss(decoder_cfg=decoder_cfg, n_future=n_future, m_slots=m_slots, decay=float(decay),
                         weights=weights, chunk=None if chunk is None else chunk)


def _register() -> None:
    from tokjax.losses.registry import register_loss

    register_loss("ftp", _factory,
                  {"decoder_cfg": None, "n_future": 4, "m_slots": 4, "decay": 0.8, "weights": None, "chunk": 1024},
                  doc="P66 Future Token Prediction: sum_j decay^(j-1) CE_j of a small decoder reading an m-slot "
                      "projection of h_t; params need params['ftp'] (tokjax.losses.future_token_prediction.init_ftp)",
                  overwrite=True)


_register()
