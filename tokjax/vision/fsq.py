"""Finite scalar quantization, nested (Matryoshka) dropout of token suffixes, and register encoders (issue 25,
item 1(d); used by P32 FlexTok, ``tokjax.vision.flextok``).

FSQ (Mentzer et al. 2023, "Finite Scalar Quantization: VQ-VAE Made Simple", arXiv 2309.15505, Appendix A.1; the
form of FlexTok's ``flextok/regularizers/quantize_fsq.py``). For levels L_1 .. L_d, each channel of z [..., d] is
bounded, rounded with a straight-through gradient and renormalised::

    half_l = (L - 1)(1 + 1e-3) / 2,  offset = 1/2 if L even else 0,  shift = atanh(offset / half_l)
    bound(z)    = tanh(z + shift) half_l - offset
    quantize(z) = round_ste(bound(z)) / (L // 2)         round_ste(y) = y + stop_gradient(round(y) - y)

so channel i takes the L_i values m / (L_i // 2), m in [-(L_i // 2), L_i - 1 - L_i // 2]. Codes <-> ids is the
mixed-radix bijection ``id = sum_i (m_i + L_i // 2) prod_{j < i} L_j`` onto [0, prod L). ``snap(y)`` is the
projection onto that grid (round, clip); it is idempotent and every ``quantize`` output is a fixed point of it.
``quantize`` itself is idempotent when every level is 3 or 5 (tanh(1) (L // 2) rounds back to L // 2 only for
L // 2 <= 2), which covers FlexTok's CPU setting [5, 5, 5] (tested); for larger levels re-quantizing a code
moves it toward 0, as in the official code.

Nested dropout (FlexTok's ``MaskedNestedDropout``, ``flextok/model/preprocessors/token_dropout.py``): keep the
first k of n tokens and replace tokens k .. n-1 by a learned mask token::

    nested_dropout(tokens, keep, mask_token)[b, i] = tokens[b, i] if i < keep[b] else mask_token

with keep k drawn per example by :func:`sample_keep`: "uniform" k ~ U{1..n}; "pow2" k ~ U{1, 2, 4, ..., n}
(n a power of two); "uniform_pow2" k ~ U{1..n} rounded up to the next power of two (capped at n, which equals
the official "no masking" when that power exceeds n). keep = n is the identity (tested).

Register encoders (FlexTok's encoder, D-AR's query encoder): the shared forward over ``[patches][registers]``
under ``Prefix(num_patches)``: patches see every patch, register j sees every patch and registers <= j, and no
patch sees a register (tested against a brute-force oracle, and by the Jacobian's zero pattern).
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from tokjax.model import Inputs, ModelConfig, forward
from tokjax.model.attention import Prefix

__all__ = ["FSQ", "KEEP_MODES", "fsq", "nested_dropout", "register_encode", "round_ste", "sample_keep"]

_F32 = jnp.float32
_EPS = 1e-3
KEEP_MODES = ("uniform", "pow2", "uniform_pow2")


def _concrete(x) -> bool:
    return not isinstance(x, jax.core.Tracer)


def round_ste(y: jax.Array) -> jax.Array:
    """Returns round(y) with the identity (straight-through) gradient: y + stop_gradient(round(y) - y)."""
    y = jnp.asarray(y, _F32)
    return y + jax.lax.stop_gradient(jnp.round(y) - y)


class FSQ(NamedTuple):
    """A finite scalar quantizer with ``levels`` (module docstring); build it with :func:`fsq`. Hashable (a
    static argument of jitted code); every method is pure and jit-compatible."""

    levels: tuple[int, ...]

    @property
    def dim(self) -> int:
        """Channels d of a code (= len(levels))."""
        return len(self.levels)

    @property
    def codebook_size(self) -> int:
        """prod(levels): the number of ids."""
        return int(np.prod(self.levels))

    def _arrays(self):
        L = np.asarray(self.levels, np.int64)
        half_width = L // 2
        basis = np.cumprod(np.concatenate([[1], L[:-1]])).astype(np.int64)
        return L, half_width, basis

    def _check_dim(self, x, what: str) -> jax.Array:
        x = jnp.asarray(x, _F32)
        if x.ndim < 1 or x.shape[-1] != self.dim:
            raise ValueError(f"{what} must be [..., {self.dim}] (one channel per FSQ level {list(self.levels)}), got "
                             f"shape {x.shape}")
        return x

    def bound(self, z: Any) -> jax.Array:
        """Returns float32 [..., d]: tanh(z + shift) half_l - offset (module docstring), each channel in
        (-(L // 2) - 1/2, L - 1 - L // 2 + 1/2)."""
        z = self._check_dim(z, "z")
        L, _, _ = self._arrays()
        half_l = jnp.asarray((L - 1) * (1.0 + _EPS) / 2.0, _F32)
        offset = jnp.asarray(np.where(L % 2 == 0, 0.5, 0.0), _F32)
        shift = jnp.arctanh(offset / half_l)
        return jnp.tanh(z + shift) * half_l - offset

    def quantize(self, z: Any) -> jax.Array:
        """Returns float32 [..., d]: round_ste(bound(z)) / (L // 2), codes on the grid in [-1, 1] with the
        straight-through gradient of bound(z) / (L // 2)."""
        _, hw, _ = self._arrays()
        return round_ste(self.bound(z)) / jnp.asarray(hw, _F32)

    def snap(self, y: Any) -> jax.Array:
        """Returns float32 [..., d]: the nearest grid code of normalised values ``y`` (round, then clip to each
        channel's range); idempotent, and the identity on codes."""
        y = self._check_dim(y, "y")
        L, hw, _ = self._arrays()
        m = jnp.clip(jnp.round(y * hw), -hw, L - 1 - hw)
        return (m / hw).astype(_F32)

    def codes_to_ids(self, codes: Any) -> jax.Array:
        """Returns int32 [...]: the id in [0, prod(levels)) of grid codes [..., d] (off-grid values map to the id of
        their :meth:`snap`)."""
        codes = self._check_dim(codes, "codes")
        L, hw, basis = self._arrays()
        digits = jnp.clip(jnp.round(codes * hw) + hw, 0, L - 1).astype(jnp.int32)
        return jnp.sum(digits * jnp.asarray(basis, jnp.int32), axis=-1).astype(jnp.int32)

    def ids_to_codes(self, ids: Any) -> jax.Array:
        """Returns float32 [..., d]: the grid codes of ids [...] (the inverse of :meth:`codes_to_ids`). Raises
        ValueError for non-integer ids or (concrete) ids outside [0, prod(levels))."""
        ids = jnp.asarray(ids)
        if not jnp.issubdtype(ids.dtype, jnp.integer):
            raise ValueError(f"ids must be integers, got dtype {ids.dtype}")
        if _concrete(ids) and ids.size and (int(ids.min()) < 0 or int(ids.max()) >= self.codebook_size):
            raise ValueError(f"ids must lie in [0, {self.codebook_size}) for levels {list(self.levels)}, got "
                             f"[{int(ids.min())}, {int(ids.max())}]")
        L, hw, basis = self._arrays()
        digits = (ids.astype(jnp.int32)[..., None] // jnp.asarray(basis, jnp.int32)) % jnp.asarray(L, jnp.int32)
        return ((digits - jnp.asarray(hw, jnp.int32)) / jnp.asarray(hw, _F32)).astype(_F32)

    def __call__(self, z: Any) -> tuple[jax.Array, jax.Array]:
        """Returns (codes float32 [..., d] = quantize(z), ids int32 [...])."""
        codes = self.quantize(z)
        return codes, self.codes_to_ids(jax.lax.stop_gradient(codes))


def fsq(levels: Any) -> FSQ:
    """Returns the :class:`FSQ` quantizer of ``levels`` (a non-empty sequence of ints >= 2, e.g. FlexTok's
    [8, 8, 8, 5, 5, 5] or [5, 5, 5] on CPU). Raises ValueError for a level < 2, a non-integer level, no levels,
    or a codebook larger than 2^31 - 1 ids."""
    try:
        lv = tuple(levels)
    except TypeError:
        raise ValueError(f"levels must be a sequence of ints >= 2, got {levels!r}") from None
    if not lv:
        raise ValueError("levels must name at least one channel (e.g. [5, 5, 5]), got []")
    for i, L in enumerate(lv):
        if isinstance(L, bool) or not isinstance(L, (int, np.integer)):
            raise ValueError(f"levels must be ints >= 2, got {L!r} at index {i} of {list(lv)}")
        if int(L) < 2:
            raise ValueError(f"every FSQ level must be >= 2 (a channel needs two values), got {int(L)} at index {i} "
                             f"of {list(lv)}")
    lv = tuple(int(L) for L in lv)
    if math.prod(lv) > 2**31 - 1:
        raise ValueError(f"levels {list(lv)} give {math.prod(lv)} ids, more than int32 holds")
    return FSQ(lv)


# ----------------------------------------------------------------------------------------- nested dropout
def _is_pow2(n: int) -> bool:
    return n >= 1 and n & (n - 1) == 0


def sample_keep(key: jax.Array, n: int, shape: Any = (), *, mode: str = "pow2") -> jax.Array:
    """Returns int32 ``shape``: keep counts k in [1, n] drawn by ``mode`` (module docstring: "uniform", "pow2",
    "uniform_pow2"; the samplers of FlexTok's ``MaskedNestedDropout.sample_keep_k``). Raises ValueError for an
    unknown mode, n < 1, or "pow2" with n not a power of two."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or int(n) < 1:
        raise ValueError(f"n must be an int >= 1 (the number of tokens), got {n!r}")
    n = int(n)
    shape = tuple(int(s) for s in shape) if isinstance(shape, (tuple, list)) else (int(shape),)
    if mode not in KEEP_MODES:
        raise ValueError(f"mode must be one of {KEEP_MODES}, got {mode!r}")
    if mode == "pow2":
        if not _is_pow2(n):
            raise ValueError(f"mode 'pow2' keeps 1, 2, 4, ..., n tokens: n must be a power of two, got {n}")
        pows = 2 ** jnp.arange(int(math.log2(n)) + 1, dtype=jnp.int32)
        return jax.random.choice(key, pows, shape)
    k = jax.random.randint(key, shape, 1, n + 1, dtype=jnp.int32)
    if mode == "uniform":
        return k
    pows = 2 ** jnp.arange(int(math.ceil(math.log2(n))) + 1, dtype=jnp.int32)  # 1 .. the first power >= n
    up = jnp.min(jnp.where(pows >= k[..., None], pows, 2 * pows[-1]), axis=-1)
    return jnp.minimum(up, n).astype(jnp.int32)


def nested_dropout(tokens: Any, keep: Any, mask_token: Any) -> jax.Array:
    """Returns ``tokens`` [..., n, d] with tokens i >= keep replaced by ``mask_token`` [d] (module docstring).

    ``keep``: int, a runtime scalar or one count per leading index (shape ``tokens.shape[:-2]``), each in
    [1, n]; keep = n returns ``tokens`` unchanged. Raises ValueError for tokens with fewer than 2 dims, a
    mask_token that is not [d], non-integer keep, a keep whose shape does not broadcast, or (concrete) keep
    outside [1, n] (under jit it is clipped into range).
    """
    x = jnp.asarray(tokens)
    if x.ndim < 2:
        raise ValueError(f"tokens must be [..., n, d] (a sequence of token vectors), got shape {x.shape}")
    n, d = x.shape[-2], x.shape[-1]
    m = jnp.asarray(mask_token)
    if m.shape != (d,):
        raise ValueError(f"mask_token must be [d={d}] (one token vector), got shape {m.shape}")
    k = jnp.asarray(keep)
    if not jnp.issubdtype(k.dtype, jnp.integer):
        raise ValueError(f"keep must be integer token counts, got dtype {k.dtype}")
    lead = x.shape[:-2]
    try:
        k = jnp.broadcast_to(k, lead)
    except ValueError:
        raise ValueError(f"keep must be a scalar or one count per sequence (shape {lead}), got shape {k.shape}") \
            from None
    if _concrete(k) and k.size and (int(k.min()) < 1 or int(k.max()) > n):
        raise ValueError(f"keep must lie in [1, n={n}] (at least one token is kept), got "
                         f"[{int(k.min())}, {int(k.max())}]")
    k = jnp.clip(k.astype(jnp.int32), 1, n)
    kept = jnp.arange(n, dtype=jnp.int32) < k[..., None]  # [..., n]
    return jnp.where(kept[..., None], x, m.astype(x.dtype))


# ----------------------------------------------------------------------------------------- register encoder
def register_encode(params: Any, cfg: ModelConfig, patches: Any, registers: Any, *, hooks: dict | None = None,
                    positions: Any = None) -> jax.Array:
    """Returns float32 [B, R, D]: the final hidden states of the registers after the shared forward over
    ``[patches][registers]`` under ``Prefix(P)`` (module docstring).

    ``patches``: embeddings [B, P, D]; ``registers``: [R, D] (learned, shared by every row) or [B, R, D];
    ``hooks``, ``positions``: passed to ``forward`` (default positions 0 .. P + R - 1). Raises ValueError for
    widths that are not ``cfg.d_model`` or a sequence longer than ``cfg.max_len``.
    """
    p = jnp.asarray(patches)
    r = jnp.asarray(registers)
    D = cfg.d_model
    if p.ndim != 3 or p.shape[-1] != D:
        raise ValueError(f"patches must be embeddings [B, P, d_model={D}], got shape {p.shape}")
    if r.ndim == 2:
        r = jnp.broadcast_to(r, (p.shape[0],) + r.shape)
    if r.ndim != 3 or r.shape[0] != p.shape[0] or r.shape[-1] != D:
        raise ValueError(f"registers must be [R, d_model={D}] or [B={p.shape[0]}, R, d_model], got shape "
                         f"{jnp.shape(registers)}")
    P, R = p.shape[1], r.shape[1]
    if P + R > cfg.max_len:
        raise ValueError(f"{P} patches + {R} registers do not fit the model's max_len={cfg.max_len}")
    e = jnp.concatenate([p.astype(_F32), r.astype(_F32)], axis=1).astype(cfg.dtype)
    inputs = Inputs(embeds=e) if positions is None else Inputs(embeds=e, positions=jnp.asarray(positions))
    out = forward(params, cfg, inputs, mask=Prefix(jnp.int32(P)), hooks=hooks, compute_logits=False)
    return out.hidden[:, P:].astype(_F32)
