"""Kronos (P52): a BSQ K-line tokenizer with coarse/fine subtokens and a dual (s1, then s2 | s1) head.

Paper: *Kronos: A Foundation Model for the Language of Financial Markets* (Shi et al., arXiv
2508.02739; official code ``shiyu-coder/Kronos``, ``model/module.py`` and ``model/kronos.py``, read for
this module). Two parts:

**Tokenizer.** Each bar's features x (OHLCV, z-scored per series and clipped to +-5) are encoded to
z in R^k (k = s1_bits + s2_bits), then *binary spherical quantization* (BSQ)::

    u    = z / ||z||                                        (F.normalize in BSQuantizer.forward)
    q    = (u + stop_grad(sign(u) - u)) / sqrt(k)           sign(0) = -1; straight-through: dq/du = I / sqrt(k)
    L_bsq = beta * mean ||stop_grad(q) - u||^2 + zeta * (gamma0 * H_sample - gamma * H_codebook)

with the official soft entropies: H_sample = sum_i H(sigmoid(-4 u_i / sqrt(k)) ) (the "analytical" per-sample
entropy) and H_codebook = sum over groups of ``group_size`` bits of the entropy of the batch-mean soft
assignment softmax(2 <u_g, c> ) over the 2^group_size group codes c in {+-1/sqrt(k)}^group_size. The first
``s1_bits`` bits are the coarse subtoken, the rest the fine one. The decoder runs twice: from the coarse
bits alone (its own input projection, as the official ``post_quant_embed_pre``) and from all bits, and
the tokenizer loss is MSE(x_pre, x) + MSE(x_full, x) + L_bsq. Subtoken ids are little-endian within
their bits (the official ``bits_to_indices``: bit i -> 2^i); the composite id is
``(s1 << s2_bits) | s2`` (the official ``HierarchicalEmbedding.split_token`` takes s1 from the high bits; NOTES P52
pitfall: the official full-code index would put s1 in the low bits, so we never build that one).

**Dual head.** On the shared forward's final hidden state h_t (tokjax embeds the composite id with one
V = 2^(s1+s2) table, which contains the official concat(emb_s1, emb_s2) -> Linear fusion as a special case)::

    log p(s1 | h_t)       = log_softmax(h_t W1 + b1)
    a_t                   = CrossAttn(query = E1[s1_t], keys = values = h_{<=t})      (causal, n_heads heads)
    log p(s2 | h_t, s1_t) = log_softmax(RMSNorm(h_t + a_t) W2 + b2)                   (DependencyAwareLayer)
    loss                  = (CE_s1 + CE_s2) / 2                                        (DualHead.compute_loss)

(s1 teacher-forced in training, sampled at inference). ``mode="independent"`` drops the dependency
layer (s2 from h_t alone: the ablation). Deviation: the official cross-attention also rotates q and k
with RoPE; here the causal mask alone carries order (documented simplification). With ``s2_bits = 0`` the
head is exactly a flat softmax over 2^s1 tokens (tested against the model's own head).

:class:`KronosDecode` is a ``tokjax.generate`` Strategy that samples s1 and then s2 | s1 per bar (one
backbone call per bar; the hidden states of earlier bars live in strategy state for the cross-attention).
"""

from __future__ import annotations

import dataclasses
import math
import jax
import jax.numpy as jnp
import numpy as np

from tokjax.model import Inputs, ModelConfig
from tokjax.model.forward import forward

__all__ = [
    "BSQConfig", "KronosHead", "KronosDecode", "bits_to_ids", "bsq_entropy_terms", "bsq_quantize", "ids_to_codes",
    "init_kronos_head", "init_tokenizer", "kline_features", "kronos_joint_logprobs", "kronos_loss",
    "kronos_logits", "make_kronos_loss", "make_tokenizer_loss", "split_ids", "tokenizer_decode",
    "tokenizer_encode", "tokenizer_loss",
]

_F32 = jnp.float32


def _check_bits(s1_bits, s2_bits) -> tuple[int, int]:
    if isinstance(s1_bits, bool) or not isinstance(s1_bits, (int, np.integer)) or s1_bits < 1:
        raise ValueError(f"s1_bits must be an int >= 1 (the coarse subtoken's bits), got {s1_bits!r}")
    if isinstance(s2_bits, bool) or not isinstance(s2_bits, (int, np.integer)) or s2_bits < 0:
        raise ValueError(f"s2_bits must be an int >= 0 (the fine subtoken's bits; 0 = a flat token), got {s2_bits!r}")
    if s1_bits + s2_bits > 24:
        raise ValueError(f"s1_bits + s2_bits must be <= 24 (vocabulary 2^bits), got {s1_bits} + {s2_bits}")
    return int(s1_bits), int(s2_bits)


# ------------------------------------------------------------------------------------------ ids <-> bits
def bits_to_ids(bits: jax.Array, s1_bits: int, s2_bits: int) -> jax.Array:
    """Returns int32 [...] composite ids (s1 << s2_bits) | s2 of ``bits`` [..., s1_bits + s2_bits] (bit = value > 0).

    s1 = sum_{i < s1_bits} b_i 2^i and s2 = sum_j b_{s1_bits + j} 2^j (little-endian, as the official
    ``bits_to_indices`` applied to each half)."""
    s1_bits, s2_bits = _check_bits(s1_bits, s2_bits)
    bits = jnp.asarray(bits)
    if bits.ndim < 1 or bits.shape[-1] != s1_bits + s2_bits:
        raise ValueError(f"bits must be [..., {s1_bits + s2_bits}] (s1_bits + s2_bits), got shape {bits.shape}")
    b = (bits > 0).astype(jnp.int32)
    s1 = jnp.sum(b[..., :s1_bits] << jnp.arange(s1_bits, dtype=jnp.int32), -1)
    s2 = jnp.sum(b[..., s1_bits:] << jnp.arange(s2_bits, dtype=jnp.int32), -1) if s2_bits else jnp.zeros_like(s1)
    return (s1 << s2_bits) | s2


def split_ids(ids: jax.Array, s2_bits: int) -> tuple[jax.Array, jax.Array]:
    """Returns (s1, s2) int32 of composite ``ids``: (ids >> s2_bits, ids & (2^s2_bits - 1))."""
    ids = jnp.asarray(ids).astype(jnp.int32)
    return ids >> s2_bits, ids & ((1 << s2_bits) - 1)


def ids_to_codes(ids: jax.Array, s1_bits: int, s2_bits: int) -> jax.Array:
    """Returns float32 [..., k] the BSQ codes +-1/sqrt(k) (k = s1_bits + s2_bits) of composite ``ids`` [...]."""
    s1_bits, s2_bits = _check_bits(s1_bits, s2_bits)
    s1, s2 = split_ids(ids, s2_bits)
    b1 = (s1[..., None] >> jnp.arange(s1_bits)) & 1
    b2 = (s2[..., None] >> jnp.arange(s2_bits)) & 1
    b = jnp.concatenate([b1, b2], -1).astype(_F32)
    return (2 * b - 1) / math.sqrt(s1_bits + s2_bits)


# ------------------------------------------------------------------------------------------------- BSQ
def bsq_quantize(u: jax.Array) -> jax.Array:
    """Returns float32 [..., k] q = (u + stop_grad(sign(u) - u)) / sqrt(k): the BSQ code with a straight-through
    gradient (sign(0) = -1, as the official ``torch.where(z > 0, 1, -1)``); ``u`` should be unit-norm (P52)."""
    u = jnp.asarray(u, _F32)
    k = u.shape[-1]
    hard = jnp.where(u > 0, 1.0, -1.0)
    return (u + jax.lax.stop_gradient(hard - u)) / math.sqrt(k)


def _entropy(p: jax.Array, axis: int = -1) -> jax.Array:
    return -jnp.sum(p * jnp.log(p + 1e-8), axis=axis)


def bsq_entropy_terms(u: jax.Array, group_size: int, inv_temperature=1.0) -> tuple[jax.Array, jax.Array]:
    """Returns (per-sample entropy, codebook entropy), the official soft BSQ entropies of unit ``u`` [N, k] (P52).

    Per sample: mean_n sum_i H(sigmoid(-4 u_i / sqrt(k) * inv_t)) ("analytical"); codebook: sum over the
    k / group_size groups of H(mean_n softmax(2 <u_g, c> * inv_t)) over the group codes c in {+-1/sqrt(k)}^g."""
    u = jnp.asarray(u, _F32)
    k = u.shape[-1]
    if k % group_size:
        raise ValueError(f"group_size={group_size} must divide the code length {k}")
    p = jax.nn.sigmoid(-4.0 * u / math.sqrt(k) * inv_temperature)
    per_sample = jnp.mean(jnp.sum(_entropy(jnp.stack([p, 1 - p], -1)), -1))
    codes = ((np.arange(2**group_size)[:, None] >> np.arange(group_size)) & 1) * 2.0 - 1.0
    codes = jnp.asarray(codes / math.sqrt(k), _F32)  # [2^g, g]
    ug = u.reshape(-1, k // group_size, group_size)
    prob = jax.nn.softmax(2.0 * jnp.einsum("ngc,dc->ngd", ug, codes) * inv_temperature, -1)
    codebook = jnp.sum(_entropy(jnp.mean(prob, 0)))
    return per_sample, codebook


@dataclasses.dataclass(frozen=True)
class BSQConfig:
    """The K-line tokenizer's static shape: features per bar, subtoken bits, MLP width, BSQ group size.

    The official tokenizer runs a Transformer encoder/decoder over the window; this one is a per-bar MLP
    (``n_features -> hidden -> k`` and back), the same BSQ and the same two-pass decoder. Loss weights
    (beta, gamma0, gamma, zeta) are runtime values of :func:`tokenizer_loss`.
    """

    n_features: int = 4
    s1_bits: int = 4
    s2_bits: int = 4
    hidden: int = 64
    group_size: int | None = None  # None: min(k, 9) when it divides k, else 1

    def __post_init__(self):
        _check_bits(self.s1_bits, self.s2_bits)
        for name in ("n_features", "hidden"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"BSQConfig.{name} must be an int >= 1, got {v!r}")
        k = self.s1_bits + self.s2_bits
        if self.group_size is not None and (self.group_size < 1 or k % self.group_size):
            raise ValueError(f"BSQConfig.group_size must divide s1_bits + s2_bits = {k}, got {self.group_size!r}")

    @property
    def bits(self) -> int:
        return self.s1_bits + self.s2_bits

    @property
    def group(self) -> int:
        if self.group_size is not None:
            return self.group_size
        return next(g for g in range(min(self.bits, 9), 0, -1) if self.bits % g == 0)


def _dense(key, n_in, n_out):
    return {"w": jax.random.normal(key, (n_in, n_out), _F32) / math.sqrt(n_in), "b": jnp.zeros((n_out,), _F32)}


def init_tokenizer(tc: BSQConfig, key: jax.Array) -> dict:
    """Returns tokenizer params: ``enc`` (2-layer MLP to k), ``dec_pre`` (s1 bits -> hidden), ``dec_full``
    (k bits -> hidden) and ``dec`` (hidden -> hidden -> n_features, shared by both passes)."""
    if not isinstance(tc, BSQConfig):
        raise ValueError(f"init_tokenizer needs a BSQConfig, got {type(tc).__name__}")
    ks = jax.random.split(key, 6)
    H = tc.hidden
    return {
        "enc": {"l1": _dense(ks[0], tc.n_features, H), "l2": _dense(ks[1], H, tc.bits)},
        "dec_pre": _dense(ks[2], tc.s1_bits, H),
        "dec_full": _dense(ks[3], tc.bits, H),
        "dec": {"l1": _dense(ks[4], H, H), "l2": _dense(ks[5], H, tc.n_features)},
    }


def _lin(p, x):
    return x @ p["w"] + p["b"]


def _check_x(x, tc: BSQConfig) -> jax.Array:
    x = jnp.asarray(x, _F32)
    if x.ndim < 1 or x.shape[-1] != tc.n_features:
        raise ValueError(f"features must be [..., n_features={tc.n_features}], got shape {x.shape}")
    return x


def tokenizer_encode(params: dict, tc: BSQConfig, x: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Returns (u unit [..., k], q = BSQ codes [..., k], composite ids int32 [...]) of features ``x`` [..., F]."""
    x = _check_x(x, tc)
    z = _lin(params["enc"]["l2"], jax.nn.gelu(_lin(params["enc"]["l1"], x)))
    u = z / jnp.maximum(jnp.linalg.norm(z, axis=-1, keepdims=True), 1e-12)
    q = bsq_quantize(u)
    return u, q, bits_to_ids(q, tc.s1_bits, tc.s2_bits)


def tokenizer_decode(params: dict, tc: BSQConfig, q: jax.Array, *, coarse: bool = False) -> jax.Array:
    """Returns float32 [..., F] features decoded from codes ``q`` [..., k] (or composite ids [...] int), from all bits
    or, with ``coarse``, from the s1 bits alone (the official two decoder passes)."""
    q = jnp.asarray(q)
    if jnp.issubdtype(q.dtype, jnp.integer):
        q = ids_to_codes(q, tc.s1_bits, tc.s2_bits)
    if q.shape[-1] != tc.bits:
        raise ValueError(f"codes must be [..., {tc.bits}] (or integer ids), got shape {q.shape}")
    q = q.astype(_F32)
    h = _lin(params["dec_pre"], q[..., : tc.s1_bits]) if coarse else _lin(params["dec_full"], q)
    return _lin(params["dec"]["l2"], jax.nn.gelu(_lin(params["dec"]["l1"], jax.nn.gelu(h))))


def tokenizer_loss(params: dict, tc: BSQConfig, x: jax.Array, *, beta=0.05, gamma0=1.0, gamma=1.1, zeta=0.05,
                   inv_temperature=1.0) -> tuple[jax.Array, dict]:
    """Returns (loss, metrics): MSE(x_pre, x) + MSE(x_full, x) + beta ||sg(q) - u||^2 + zeta (gamma0 H_sample -
    gamma H_codebook) on features ``x`` [N, F] (P52; weights are runtime scalars). Metrics: ``loss``, ``mse_pre``,
    ``mse_full``, ``commit``, ``h_sample``, ``h_codebook``."""
    x = _check_x(x, tc)
    u, q, _ = tokenizer_encode(params, tc, x)
    mse_pre = jnp.mean((tokenizer_decode(params, tc, q, coarse=True) - x) ** 2)
    mse_full = jnp.mean((tokenizer_decode(params, tc, q) - x) ** 2)
    commit = jnp.mean(jnp.sum((jax.lax.stop_gradient(q) - u) ** 2, -1))
    hs, hc = bsq_entropy_terms(u.reshape(-1, tc.bits), tc.group, inv_temperature)
    loss = mse_pre + mse_full + beta * commit + zeta * (gamma0 * hs - gamma * hc) / inv_temperature
    return loss, {"loss": loss, "mse_pre": mse_pre, "mse_full": mse_full, "commit": commit, "h_sample": hs,
                  "h_codebook": hc}


def make_tokenizer_loss(tc: BSQConfig, **weights):
    """Returns a ``tokjax.train`` loss_fn(params, None, batch, rng) of :func:`tokenizer_loss` on ``batch["x"]``."""
    if not isinstance(tc, BSQConfig):
        raise ValueError(f"make_tokenizer_loss needs a BSQConfig, got {type(tc).__name__}")

    def loss_fn(params, cfg, batch, rng=None):
        del cfg, rng
        if not isinstance(batch, dict) or "x" not in batch:
            raise ValueError("the Kronos tokenizer loss needs batch['x'] float [N, n_features]")
        return tokenizer_loss(params, tc, batch["x"], **weights)

    return loss_fn


def kline_features(ohlcv, *, clip: float = 5.0, lookback: int | None = None
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Returns (features float32 [n, bars, 4], mean [n, 4], std [n, 4]) of OHLCV bars ``ohlcv`` [n, bars, 5].

    Per bar: log(C/O) (the bar's log return when O = previous close), log(H / max(O, C)), log(min(O, C) / L),
    log V; then z-scored per series with the mean and std of its first ``lookback`` bars (None: all bars; the
    official normalisation uses the lookback window, so a forecast never sees statistics of the bars it
    predicts) and clipped to +-``clip``. ``features * std + mean`` undoes the scaling (up to the clip). Raises
    ValueError for a wrong shape, non-finite or non-positive prices/volumes, fewer than 2 bars, or a lookback
    outside [2, bars]."""
    a = np.asarray(ohlcv, np.float64)
    if a.ndim != 3 or a.shape[-1] != 5 or a.shape[1] < 2:
        raise ValueError(f"ohlcv must be [n, bars >= 2, 5] (open, high, low, close, volume), got shape {a.shape}")
    if not np.isfinite(a).all():
        raise ValueError("ohlcv holds NaN or inf prices/volumes; K-line features need finite positive values")
    if (a <= 0).any():
        raise ValueError("ohlcv must be > 0 (prices and volumes); got a non-positive entry")
    L = a.shape[1] if lookback is None else lookback
    if isinstance(L, bool) or not isinstance(L, (int, np.integer)) or not 2 <= L <= a.shape[1]:
        raise ValueError(f"lookback must be an int in [2, bars={a.shape[1]}] or None, got {lookback!r}")
    o, h, lo, c, v = (a[..., i] for i in range(5))
    f = np.stack([np.log(c / o), np.log(h / np.maximum(o, c)), np.log(np.minimum(o, c) / lo), np.log(v)], -1)
    mean, std = f[:, :L].mean(1), f[:, :L].std(1) + 1e-8
    z = np.clip((f - mean[:, None]) / std[:, None], -clip, clip)
    return z.astype(np.float32), mean, std


# ------------------------------------------------------------------------------------------ dual head
@dataclasses.dataclass(frozen=True)
class KronosHead:
    """The predictor head's static shape: subtoken bits, ``mode`` ("dual": s2 | s1 by cross-attention; "independent":
    s2 from h_t alone) and the dependency layer's ``n_heads`` (official: 4)."""

    s1_bits: int = 4
    s2_bits: int = 4
    mode: str = "dual"
    n_heads: int = 4

    def __post_init__(self):
        _check_bits(self.s1_bits, self.s2_bits)
        if self.mode not in ("dual", "independent"):
            raise ValueError(f"KronosHead.mode must be 'dual' or 'independent', got {self.mode!r}")
        if isinstance(self.n_heads, bool) or not isinstance(self.n_heads, int) or self.n_heads < 1:
            raise ValueError(f"KronosHead.n_heads must be an int >= 1, got {self.n_heads!r}")

    @property
    def vocab(self) -> int:
        return 1 << (self.s1_bits + self.s2_bits)


def _check_cfg(cfg: ModelConfig, hc: KronosHead) -> None:
    if not isinstance(hc, KronosHead):
        raise ValueError(f"expected a KronosHead, got {type(hc).__name__}")
    if cfg.vocab_size != hc.vocab:
        raise ValueError(f"the model's vocab_size={cfg.vocab_size} must be 2^(s1_bits + s2_bits) = {hc.vocab} "
                         "(it embeds composite ids)")
    if cfg.d_model % hc.n_heads:
        raise ValueError(f"KronosHead.n_heads={hc.n_heads} must divide d_model={cfg.d_model}")


def init_kronos_head(params: dict, cfg: ModelConfig, hc: KronosHead, key: jax.Array) -> dict:
    """Returns ``{**params, "kronos": head}``: s1 and s2 linear heads and, for ``mode="dual"``, the s1 embedding
    (std d^-1/2, official) and the dependency layer (q, k, v, o projections and an RMSNorm weight)."""
    _check_cfg(cfg, hc)
    D = cfg.d_model
    ks = jax.random.split(key, 7)
    head = {"s1": _dense(ks[0], D, 1 << hc.s1_bits), "s2": _dense(ks[1], D, 1 << hc.s2_bits)}
    if hc.mode == "dual":
        head["emb_s1"] = jax.random.normal(ks[2], (1 << hc.s1_bits, D), _F32) / math.sqrt(D)
        head.update(q=_dense(ks[3], D, D), k=_dense(ks[4], D, D), v=_dense(ks[5], D, D), o=_dense(ks[6], D, D),
                    norm=jnp.ones((D,), _F32))
    return {**params, "kronos": head}


def _head(params) -> dict:
    if not isinstance(params, dict) or "kronos" not in params:
        raise ValueError("params need params['kronos'] (tokjax.tokenizers.kronos.init_kronos_head)")
    return params["kronos"]


def _check_tokens(tokens, cfg: ModelConfig) -> jax.Array:
    tokens = jnp.asarray(tokens)
    if tokens.ndim != 2 or not jnp.issubdtype(tokens.dtype, jnp.integer):
        raise ValueError(f"tokens must be int [B, T] composite ids, got {tokens.dtype} {tokens.shape}")
    return tokens.astype(jnp.int32)


def _cross(head: dict, n_heads: int, resid: jax.Array, query: jax.Array, keys: jax.Array, valid: jax.Array):
    """Returns RMSNorm(resid + o(softmax(q k^T / sqrt(dh)) v)) * w: resid, query [B, Q, D], keys [B, S, D],
    valid bool [B, Q, S] (which keys each query may see)."""
    B, Q, D = query.shape
    S = keys.shape[1]
    dh = D // n_heads
    q = _lin(head["q"], query).reshape(B, Q, n_heads, dh)
    k = _lin(head["k"], keys).reshape(B, S, n_heads, dh)
    v = _lin(head["v"], keys).reshape(B, S, n_heads, dh)
    s = jnp.einsum("bqhd,bshd->bhqs", q, k) / math.sqrt(dh)
    s = jnp.where(valid[:, None], s, -jnp.inf)
    a = jnp.einsum("bhqs,bshd->bqhd", jax.nn.softmax(s, -1), v).reshape(B, Q, D)
    x = resid + _lin(head["o"], a)
    return x * jax.lax.rsqrt(jnp.mean(x * x, -1, keepdims=True) + 1e-5) * head["norm"]


def _s2_logits(head: dict, hc: KronosHead, hidden: jax.Array, s1: jax.Array) -> jax.Array:
    """Returns float32 [B, T, 2^s2] s2 logits given s1 [B, T] (causal over ``hidden`` [B, T, D])."""
    if hc.mode == "independent":
        return _lin(head["s2"], hidden)
    T = hidden.shape[1]
    causal = jnp.broadcast_to(jnp.tril(jnp.ones((T, T), bool)), (hidden.shape[0], T, T))
    return _lin(head["s2"], _cross(head, hc.n_heads, hidden, head["emb_s1"][s1], hidden, causal))


def _hidden(params, cfg, tokens) -> jax.Array:
    return forward(params, cfg, Inputs(tokens=tokens), compute_logits=False).hidden.astype(_F32)


def kronos_logits(params: dict, cfg: ModelConfig, hc: KronosHead, tokens: jax.Array, s1: jax.Array
                  ) -> tuple[jax.Array, jax.Array]:
    """Returns (s1 logits [B, T, 2^s1], s2 logits [B, T, 2^s2] given ``s1`` [B, T]) after ``tokens`` [B, T]
    (position t predicts bar t+1; pass its teacher-forced or sampled s1)."""
    _check_cfg(cfg, hc)
    tokens = _check_tokens(tokens, cfg)
    s1 = jnp.asarray(s1, jnp.int32)
    if s1.shape != tokens.shape:
        raise ValueError(f"s1 must be [B, T]={tokens.shape} like tokens, got {s1.shape}")
    head = _head(params)
    h = _hidden(params, cfg, tokens)
    return _lin(head["s1"], h), _s2_logits(head, hc, h, s1)


def kronos_joint_logprobs(params: dict, cfg: ModelConfig, hc: KronosHead, tokens: jax.Array) -> jax.Array:
    """Returns float32 [B, T, 2^(s1+s2)]: log p(s1) + log p(s2 | s1) at every composite id (index (s1 << s2_bits) |
    s2) after ``tokens`` [B, T], the dual head evaluated at every s1 value."""
    _check_cfg(cfg, hc)
    tokens = _check_tokens(tokens, cfg)
    head = _head(params)
    h = _hidden(params, cfg, tokens)
    lp1 = jax.nn.log_softmax(_lin(head["s1"], h), -1)  # [B, T, V1]
    V1 = lp1.shape[-1]
    B, T = tokens.shape
    if hc.mode == "independent":
        lp2 = jnp.broadcast_to(jax.nn.log_softmax(_lin(head["s2"], h), -1)[:, :, None], (B, T, V1, 1 << hc.s2_bits))
    else:
        lp2 = jax.vmap(lambda s: jax.nn.log_softmax(_s2_logits(head, hc, h, jnp.full((B, T), s, jnp.int32)), -1),
                       out_axes=2)(jnp.arange(V1))  # [B, T, V1, V2]
    return (lp1[..., None] + lp2).reshape(B, T, -1)


def kronos_loss(params: dict, cfg: ModelConfig, hc: KronosHead, tokens: jax.Array, mask: jax.Array | None = None
                ) -> tuple[jax.Array, dict]:
    """Returns (loss, metrics): (CE_s1 + CE_s2) / 2 over next-bar targets of ``tokens`` [B, T+1], s1 teacher-forced
    (official ``DualHead.compute_loss``); ``mask`` [B, T] or [B, T+1] (per target). Metrics: ``loss``, ``ce_s1``,
    ``ce_s2``, ``nll`` (= CE_s1 + CE_s2, the joint NLL per bar)."""
    _check_cfg(cfg, hc)
    tokens = _check_tokens(tokens, cfg)
    if tokens.shape[1] < 2:
        raise ValueError(f"tokens must be [B, T+1] with T >= 1, got {tokens.shape}")
    inp, tgt = tokens[:, :-1], tokens[:, 1:]
    t1, t2 = split_ids(tgt, hc.s2_bits)
    l1, l2 = kronos_logits(params, cfg, hc, inp, t1)
    n1 = -jnp.take_along_axis(jax.nn.log_softmax(l1, -1), t1[..., None], -1)[..., 0]
    n2 = -jnp.take_along_axis(jax.nn.log_softmax(l2, -1), t2[..., None], -1)[..., 0]
    m = jnp.ones(tgt.shape, _F32) if mask is None else jnp.asarray(mask, _F32)
    if m.shape == tokens.shape:
        m = m[:, 1:]
    if m.shape != tgt.shape:
        raise ValueError(f"mask must be [B, T]={tgt.shape} or [B, T+1], got {m.shape}")
    denom = jnp.maximum(m.sum(), 1.0)
    ce1, ce2 = (n1 * m).sum() / denom, (n2 * m).sum() / denom
    loss = (ce1 + ce2) / 2
    return loss, {"loss": loss, "ce_s1": ce1, "ce_s2": ce2, "nll": ce1 + ce2}


def make_kronos_loss(*, s1_bits: int = 4, s2_bits: int = 4, mode: str = "dual", n_heads: int = 4):
    """Returns a ``tokjax.train`` loss_fn(params, cfg, batch, rng) of :func:`kronos_loss` on ``batch["tokens"]``
    (registered as ``"kronos"``)."""
    hc = KronosHead(s1_bits=s1_bits, s2_bits=s2_bits, mode=mode, n_heads=n_heads)

    def loss_fn(params, cfg, batch, rng=None):
        del rng
        if not isinstance(batch, dict) or "tokens" not in batch:
            raise ValueError("the kronos loss needs batch['tokens'] int [B, T+1] composite ids")
        return kronos_loss(params, cfg, hc, batch["tokens"], batch.get("mask"))

    return loss_fn


# ------------------------------------------------------------------------------------------ generation
def _strategy_base():
    from tokjax.decoding._state import Strategy

    return Strategy


@dataclasses.dataclass(frozen=True)
class KronosDecode(_strategy_base()):
    """A ``tokjax.generate`` Strategy that samples each bar's s1 and then s2 | s1 with the Kronos head (P52).

    Per step: one backbone call on the pending token (KV cache as usual) gives h_t, stored in a
    hidden-state buffer (strategy state) for the cross-attention; s1 is drawn from the transformed s1
    logits (the ``logits`` transforms: temperature, top-k/p, as the official sampler applies them to s1),
    then s2 from the same transforms applied to the s2 logits given that s1 (a stateful transform's state is
    advanced by the s1 call only). ``commit`` gets the joint logits log p(s1) + log p(s2 | s1) over composite
    ids, so ``generate(logprobs=0)`` records the exact log-probability of each drawn (s1, s2) (rows of other s1
    values use untransformed s2 logits). ``params`` must carry ``params["kronos"]``.
    """

    head: KronosHead = None

    def validate(self, cfg: ModelConfig) -> None:
        if not isinstance(self.head, KronosHead):
            raise ValueError(f"KronosDecode needs head=KronosHead(...), got {self.head!r}")
        _check_cfg(cfg, self.head)

    def init(self, params, cfg, state):
        # hidden states of every buffer position (causal, so the prompt's are exact; later slots are rewritten)
        return {"hidden": _hidden(params, cfg, state.tokens)}

    def step(self, params, cfg, transform, state, eos_id=None):
        from tokjax.decoding._state import commit, ends_greedy
        from tokjax.logits import sample

        hc = self.head
        head = _head(params)
        B, S = state.tokens.shape
        pos = state.lengths - 1
        pending = jnp.take_along_axis(state.tokens, pos[:, None], axis=1)
        out = forward(params, cfg, Inputs(tokens=pending), cache=state.cache, compute_logits=False)
        h = out.hidden[:, 0].astype(_F32)  # [B, D]
        buf = state.extra["hidden"].at[jnp.arange(B), pos].set(h)
        raw1 = _lin(head["s1"], h)
        l1, logit_state = transform.apply(raw1, state.logit_state, state.context())
        key, k1, k2 = jax.random.split(state.key, 3)
        greedy = ends_greedy(transform)
        s1, st1 = sample(k1, l1, greedy=greedy)
        V1 = 1 << hc.s1_bits
        if hc.mode == "dual":
            valid = jnp.broadcast_to((jnp.arange(S)[None, :] <= pos[:, None])[:, None], (B, V1, S))
            hq = jnp.broadcast_to(h[:, None], (B, V1, h.shape[-1]))
            queries = jnp.broadcast_to(head["emb_s1"][None], hq.shape)  # every s1 value, for the joint logits
            raw2_all = _lin(head["s2"], _cross(head, hc.n_heads, hq, queries, buf, valid))  # [B, V1, V2]
        else:
            raw2_all = jnp.broadcast_to(_lin(head["s2"], h)[:, None], (B, V1, 1 << hc.s2_bits))
        raw2 = jnp.take_along_axis(raw2_all, s1[:, None, None], axis=1)[:, 0]
        l2, _ = transform.apply(raw2, logit_state, state.context())
        s2, st2 = sample(k2, l2, greedy=greedy)
        lp2_all = jax.nn.log_softmax(raw2_all, -1)
        lp2_all = jnp.where((jnp.arange(V1) == s1[:, None])[..., None], jax.nn.log_softmax(l2, -1)[:, None], lp2_all)
        joint = (jax.nn.log_softmax(l1, -1)[..., None] + lp2_all).reshape(B, -1)
        tok = (s1 << hc.s2_bits) | s2
        masked = st1.all_masked | st2.all_masked
        counts = jnp.where(masked, 0, 1).astype(jnp.int32)
        stats = state.stats.replace(forward_calls=state.stats.forward_calls + 1,
                                    masked_rows=state.stats.masked_rows | (masked & ~state.done))
        state = state.replace(cache=out.cache, logit_state=logit_state, key=key, stats=stats, extra={"hidden": buf})
        state = commit(state, tok[:, None].astype(jnp.int32), counts, eos_id, logits=joint[:, None])
        return state.replace(done=state.done | masked)


# -------------------------------------------------------------------------------------------- registry
def _factory(s1_bits, s2_bits, mode, n_heads):
    return make_kronos_loss(s1_bits=int(s1_bits), s2_bits=int(s2_bits), mode=str(mode), n_heads=int(n_heads))


def _register() -> None:
    from tokjax.losses.registry import register_loss

    register_loss("kronos", _factory, {"s1_bits": 4, "s2_bits": 4, "mode": "dual", "n_heads": 4},
                  doc="P52 Kronos dual head: (CE_s1 + CE_s2) / 2 with s2 predicted from emb(s1) cross-attending the "
                      "hidden states; params need params['kronos'] (tokjax.tokenizers.kronos.init_kronos_head)",
                  overwrite=True)


_register()
