"""TokenFLEX: one VLM trained with a random number of visual tokens per step, so it serves any token count
(P61; Hu et al. 2025, "TokenFLEX: Unified VLM Training for Flexible Visual Tokens Inference", arXiv 2504.03154,
Li Auto; no official code found -- ``LiAutoAD/Ristretto`` is a candidate, not in the index here).

A captioner on the shared forward. An image [H, W] in [0, 1] is cut into p x p patches (a G_h x G_w grid,
G = H / p), encoded patch-wise, pooled to n x n, projected into the LLM's embedding space and read as a
bidirectional prefix; the caption is then predicted causally:

    f_g   = x_g W_e + b_e + P_g                         x_g: the k x k pixel window around patch g (k = p + 2r,
                                                         zero-padded; a stride-p convolution stem, r = 0 is plain
                                                         patchify) + learned position table P (g: grid cell)
    f_g  <- f_g + W_2 gelu(W_1 LN(f_g))                  a per-patch residual MLP (the "vision encoder")
    F'    = A_n F A_n^T,   A_n[i, j] = 1 / (e_i - s_i)   adaptive average pooling to n x n (separable),
            for s_i <= j < e_i, s_i = floor(i G / n), e_i = ceil((i + 1) G / n)   (torch AdaptiveAvgPool2d bins)
    v     = (silu(F' W_1) * (F' W_2)) W_3               SwiGLU projector, one visual token per pooled cell
    seq   = [v_1 .. v_{n^2}, BOS, w_1 .. w_{L-1}]        under Prefix(n^2): visual tokens see each other, text is
                                                         causal (and sees every visual token)
    loss  = - 1/(B L) sum_b sum_t log p(w_t | v, w_<t)   caption cross-entropy (targets w_1 .. w_L = EOS)

Dynamic token training (the paper's "stochastically modulating token counts"): every train step draws n from
static buckets (default {2, 4, 8}: N = n^2 in {4, 16, 64}) with given probabilities. Under jit the token count
is a shape, so the batch carries the pooling matrix ``pool`` = A_n [n, G]: its leading dimension is the
bucket's n and ``tokjax.train`` compiles one step per bucket (three compiles for three buckets); the pooling
weights themselves are a runtime array. A fixed-n model is the same code with one bucket.

Verified against the paper's abstract and secondary summaries (alphaxiv overview, sciencestack TL;DR): adaptive
average pooling of ViT features to N = n^2 tokens, a SwiGLU projector ("feature weighting"), stochastic token
counts during training, N in {64, 144, 256} in the paper's own runs. Unverified (the method section was not
readable here): the sampling ratios of the token counts (uniform by default here), whether pooling precedes
the SwiGLU (it does here), the SwiGLU's exact form and width (W_3(silu(x W_1) * x W_2), width 2 d here), and
the vision encoder: the paper uses a pretrained ViT, whose patch features are contextual; here a small trainable
convolution stem (each feature reads an 8 x 8 pixel window around its 2 x 2 patch at the default r = 3, a
stand-in for that context) with a learned position table and a per-patch MLP, trained from scratch with the
LLM; pooled tokens carry the mean position embedding of their cell. Declared deviation.

Caption accuracy. Exact match of the greedy caption equals "every teacher-forced argmax is right" (if all
teacher-forced argmaxes match, greedy decoding reproduces the caption, and conversely), so
:func:`caption_accuracy` scores the greedy caption in one forward; :func:`greedy_captions` is the decode loop,
tested to agree.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from tokjax.model import Inputs, ModelConfig, forward, init_params
from tokjax.model.attention import Prefix
from tokjax.model.forward import embed, unembed
from tokjax.vision.orders import _check_int

__all__ = ["BOS_ID", "CAPTION_LEN", "CAPTION_VOCAB", "EOS_ID", "adaptive_avg_pool", "adaptive_pool_matrix",
           "caption_accuracy", "caption_predictions", "caption_text", "caption_tokens", "greedy_captions",
           "make_tokenflex_loss", "tokenflex_batch", "tokenflex_batch_fn", "tokenflex_hidden", "tokenflex_init",
           "tokenflex_loss", "visual_tokens"]

_F32 = jnp.float32
_KEY = "tokenflex"

# Caption vocabulary: "digit left|right top|bottom small|large", framed by BOS and EOS.
CAPTION_VOCAB: tuple[str, ...] = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine",
                                  "left", "right", "top", "bottom", "small", "large", "<bos>", "<eos>")
_LEFT, _RIGHT, _TOP, _BOTTOM, _SMALL, _LARGE = 10, 11, 12, 13, 14, 15
BOS_ID, EOS_ID = 16, 17
CAPTION_LEN = 6  # [BOS, digit, left|right, top|bottom, small|large, EOS]


# ------------------------------------------------------------------------------------------ captions
def caption_tokens(digits: Any, left: Any, top: Any, large: Any) -> np.ndarray:
    """Returns int32 [B, 6]: ``[BOS, digit, left|right, top|bottom, small|large, EOS]`` ids of
    :data:`CAPTION_VOCAB` for digit labels in 0-9 and boolean placement labels (as ``tokjax.data.glyphs`` gives).
    Raises ValueError for digits outside 0-9 or labels of different lengths."""
    d = np.asarray(digits)
    if d.ndim != 1 or not np.issubdtype(d.dtype, np.integer):
        raise ValueError(f"digits must be ints [B], got {d.dtype} {d.shape}")
    if d.size and (d.min() < 0 or d.max() > 9):
        raise ValueError(f"digits must lie in 0-9, got values in [{d.min()}, {d.max()}]")
    flags = [np.asarray(a) for a in (left, top, large)]
    for name, a in zip(("left", "top", "large"), flags):
        if a.shape != d.shape:
            raise ValueError(f"{name} must be [B={d.shape[0]}] like digits, got shape {a.shape}")
    left, top, large = (a.astype(bool) for a in flags)
    B = d.shape[0]
    return np.stack([np.full(B, BOS_ID), d, np.where(left, _LEFT, _RIGHT), np.where(top, _TOP, _BOTTOM),
                     np.where(large, _LARGE, _SMALL), np.full(B, EOS_ID)], axis=1).astype(np.int32)


def caption_text(tokens: Any) -> list[str]:
    """Returns the words of each caption row of ``tokens`` (ids of :data:`CAPTION_VOCAB`; BOS/EOS dropped)."""
    t = np.asarray(tokens)
    if t.ndim != 2:
        raise ValueError(f"tokens must be [B, L], got shape {t.shape}")
    if t.size and (t.min() < 0 or t.max() >= len(CAPTION_VOCAB)):
        raise ValueError(f"caption ids must lie in [0, {len(CAPTION_VOCAB)}), got [{t.min()}, {t.max()}]")
    return [" ".join(CAPTION_VOCAB[i] for i in row if i not in (BOS_ID, EOS_ID)) for row in t]


# ------------------------------------------------------------------------------------------- pooling
def _check_n(n: Any, size: int) -> int:
    n = _check_int("n", n, 1)
    if n > size:
        raise ValueError(f"n={n} visual tokens per side needs at least n patches per side; the patch grid has {size} "
                         f"(pooling only downsamples here)")
    return n


@functools.lru_cache(maxsize=None)
def adaptive_pool_matrix(n: int, size: int) -> np.ndarray:
    """Returns float32 [n, size]: row i averages cells ``floor(i size / n) <= j < ceil((i + 1) size / n)`` (the bins
    of torch's ``AdaptiveAvgPool1d``; overlapping when n does not divide size). ``n = size`` is the identity.
    Raises ValueError for n < 1, size < 1 or n > size."""
    size = _check_int("size", size, 1)
    n = _check_n(n, size)
    a = np.zeros((n, size), np.float32)
    for i in range(n):
        s, e = (i * size) // n, -((-(i + 1) * size) // n)
        a[i, s:e] = 1.0 / (e - s)
    a.setflags(write=False)
    return a


def _pool_with(features: jax.Array, rows: jax.Array, cols: jax.Array) -> jax.Array:
    return jnp.einsum("ih,...hwd,jw->...ijd", rows.astype(_F32), features.astype(_F32), cols.astype(_F32))


def adaptive_avg_pool(features: Any, n: int) -> jax.Array:
    """Returns [..., n, n, D]: ``features`` [..., G_h, G_w, D] average-pooled adaptively to n x n (P61: the
    token-adaptive projector's ``AdaptiveAvgPool2d``; separable, so ``A_n F A_n^T`` per channel, exact).
    Raises ValueError for features of rank < 3 or n outside 1 .. min(G_h, G_w)."""
    x = jnp.asarray(features)
    if x.ndim < 3:
        raise ValueError(f"features must be [..., G_h, G_w, D], got shape {tuple(x.shape)}")
    gh, gw = int(x.shape[-3]), int(x.shape[-2])
    n = _check_n(n, min(gh, gw))
    return _pool_with(x, jnp.asarray(adaptive_pool_matrix(n, gh)), jnp.asarray(adaptive_pool_matrix(n, gw)))


# -------------------------------------------------------------------------------------------- params
def _dense(key, d_in: int, d_out: int, scale: float | None = None) -> jax.Array:
    return jax.random.normal(key, (d_in, d_out), _F32) * ((1.0 / math.sqrt(d_in)) if scale is None else scale)


def tokenflex_init(cfg: ModelConfig, key: jax.Array, *, patch: int = 2, image_size: int = 16, context: int = 3,
                   d_vision: int | None = None, proj_ratio: int = 2) -> dict:
    """Returns the params of a TokenFLEX captioner: the LLM's own (``init_params(cfg, key)``) plus
    ``params["tokenflex"]`` = {``patch_w`` [k^2, d_v], ``patch_b`` [d_v], ``pos`` [G, G, d_v], ``mlp_w1``
    [d_v, 2 d_v], ``mlp_w2`` [2 d_v, d_v], ``proj_w1``, ``proj_w2`` [d_v, h], ``proj_w3`` [h, d]} with
    G = image_size / patch, k = patch + 2 ``context`` (the window each patch feature reads: a stride-p convolution
    stem; context 0 is plain patchify), d_v = ``d_vision`` (default d_model) and h = ``proj_ratio`` d_v.
    Raises ValueError for a config without room for G^2 + 5 positions (or pos_dims != 1), a vocabulary smaller than
    :data:`CAPTION_VOCAB`, a patch not dividing the image, or sizes < 1."""
    if not isinstance(cfg, ModelConfig):
        raise ValueError(f"cfg must be a ModelConfig, got {type(cfg).__name__}")
    p = _check_int("patch", patch, 1)
    size = _check_int("image_size", image_size, 1)
    k = p + 2 * _check_int("context", context, 0)
    if size % p:
        raise ValueError(f"patch={p} must divide image_size={size}")
    if cfg.vocab_size < len(CAPTION_VOCAB):
        raise ValueError(f"cfg.vocab_size={cfg.vocab_size} is smaller than the caption vocabulary "
                         f"({len(CAPTION_VOCAB)} words)")
    if cfg.pos_dims != 1:
        raise ValueError(f"the TokenFLEX captioner reads one sequence (visual prefix, then caption): it needs "
                         f"pos_dims=1, got {cfg.pos_dims}")
    G = size // p
    if cfg.max_len < G * G + CAPTION_LEN - 1:
        raise ValueError(f"cfg.max_len={cfg.max_len} cannot hold {G * G} visual tokens + {CAPTION_LEN - 1} caption "
                         "tokens")
    dv = cfg.d_model if d_vision is None else _check_int("d_vision", d_vision, 1)
    h = _check_int("proj_ratio", proj_ratio, 1) * dv
    ks = jax.random.split(key, 8)
    params = dict(init_params(cfg, ks[0]))
    params[_KEY] = {
        "patch_w": _dense(ks[1], k * k, dv), "patch_b": jnp.zeros((dv,), _F32),
        "pos": jax.random.normal(ks[2], (G, G, dv), _F32) * 0.5,
        "mlp_w1": _dense(ks[3], dv, 2 * dv), "mlp_w2": _dense(ks[4], 2 * dv, dv),
        "proj_w1": _dense(ks[5], dv, h), "proj_w2": _dense(ks[6], dv, h), "proj_w3": _dense(ks[7], h, cfg.d_model),
    }
    return params


def _tf_params(params) -> dict:
    if not isinstance(params, dict) or _KEY not in params:
        raise ValueError("a TokenFLEX model needs params['tokenflex'] (build the params with tokenflex_init(cfg, key))")
    return params[_KEY]


def _grid_of(p: dict) -> int:
    return int(p["pos"].shape[0])


def _check_images(images: Any, p: dict) -> tuple[jax.Array, int, int]:
    """Returns (images, patch, context) after checking ``images`` [B, H, H] against the params' grid and window."""
    x = jnp.asarray(images)
    G, k = _grid_of(p), int(round(math.sqrt(int(p["patch_w"].shape[0]))))
    if x.ndim != 3 or x.shape[1] != x.shape[2] or x.shape[1] % G or (k - x.shape[1] // G) % 2 or k < x.shape[1] // G:
        raise ValueError(f"images must be [B, H, H] with H = G * patch for the params' {G}x{G} patch grid and "
                         f"{k}x{k} window (window = patch + 2 context), got shape {tuple(x.shape)}")
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise ValueError(f"images must be float pixels in [0, 1], got dtype {x.dtype}")
    patch = x.shape[1] // G
    return x, patch, (k - patch) // 2


def _encode(p: dict, images: jax.Array, patch: int, context: int) -> jax.Array:
    """Returns float32 [B, G, G, d_v]: per-patch features: a k x k window (k = patch + 2 context, zero-padded)
    around each patch, linearly embedded (a stride-patch convolution), + position table + residual MLP."""
    k = patch + 2 * context
    w = p["patch_w"].reshape(k, k, 1, -1)  # HWIO; row-major (y, x) like patchify at context 0
    f = jax.lax.conv_general_dilated(images.astype(_F32)[..., None], w, (patch, patch),
                                     [(context, context), (context, context)],
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
    f = f + p["patch_b"] + p["pos"]
    mu = jnp.mean(f, -1, keepdims=True)
    ln = (f - mu) * jax.lax.rsqrt(jnp.var(f, -1, keepdims=True) + 1e-5)
    return f + jax.nn.gelu(ln @ p["mlp_w1"]) @ p["mlp_w2"]


def _pool_arrays(pool: Any, G: int) -> jax.Array:
    a = jnp.asarray(pool)
    if a.ndim != 2 or a.shape[1] != G or a.shape[0] < 1 or a.shape[0] > G:
        raise ValueError(f"pool must be the adaptive pooling matrix [n, G={G}] with 1 <= n <= {G} "
                         f"(adaptive_pool_matrix(n, {G})), got shape {tuple(a.shape)}")
    return a


def visual_tokens(params, images: Any, pool: Any) -> jax.Array:
    """Returns float32 [B, n^2, d_model]: the visual tokens of ``images`` [B, H, W] (raster over the n x n cells):
    encode, pool with ``pool`` = A_n [n, G] (a runtime array; its shape sets n), SwiGLU-project (module docstring)."""
    p = _tf_params(params)
    x, patch, context = _check_images(images, p)
    a = _pool_arrays(pool, _grid_of(p))
    pooled = _pool_with(_encode(p, x, patch, context), a, a)  # [B, n, n, d_v]
    B, n = pooled.shape[0], pooled.shape[1]
    u = pooled.reshape(B, n * n, -1)
    return (jax.nn.silu(u @ p["proj_w1"]) * (u @ p["proj_w2"])) @ p["proj_w3"]


def _check_tokens(tokens: Any, cfg: ModelConfig) -> jax.Array:
    t = jnp.asarray(tokens)
    if t.ndim != 2 or t.shape[1] < 2 or not jnp.issubdtype(t.dtype, jnp.integer):
        raise ValueError(f"tokens must be int captions [B, L + 1] ([BOS, words.., EOS], L >= 1), got {t.dtype} "
                         f"{tuple(t.shape)}")
    return t.astype(jnp.int32)


def tokenflex_hidden(params, cfg: ModelConfig, images: Any, tokens: Any, pool: Any) -> jax.Array:
    """Returns float32 [B, n^2 + L, d]: final-normed hidden states of ``[visual tokens, tokens[:, :-1]]`` under
    ``Prefix(n^2)`` (visual tokens bidirectional, caption causal). ``tokens`` [B, L + 1] = [BOS, .., EOS]."""
    t = _check_tokens(tokens, cfg)
    v = visual_tokens(params, images, pool).astype(cfg.dtype)
    if v.shape[0] != t.shape[0]:
        raise ValueError(f"images ({v.shape[0]}) and tokens ({t.shape[0]}) must have the same batch size")
    N = v.shape[1]
    if N + t.shape[1] - 1 > cfg.max_len:
        raise ValueError(f"{N} visual + {t.shape[1] - 1} caption tokens exceed cfg.max_len={cfg.max_len}")
    x = jnp.concatenate([v, embed(params, cfg, t[:, :-1])], axis=1)
    out = forward(params, cfg, Inputs(embeds=x), mask=Prefix(lengths=jnp.full((x.shape[0],), N, jnp.int32)),
                  compute_logits=False)
    return out.hidden


def _caption_logits(params, cfg, images, tokens, pool) -> jax.Array:
    h = tokenflex_hidden(params, cfg, images, tokens, pool)
    L = jnp.asarray(tokens).shape[1] - 1
    return unembed(params, cfg, h[:, h.shape[1] - L:]).astype(_F32)  # [B, L, V]: row t predicts tokens[:, t + 1]


def tokenflex_loss(params, cfg: ModelConfig, batch: dict, rng=None) -> tuple[jax.Array, dict]:
    """The P61 train loss ``(params, cfg, batch, rng) -> (loss, metrics)``: mean caption cross-entropy of a
    :func:`tokenflex_batch` (``images`` [B, H, W], ``tokens`` [B, L + 1], ``pool`` [n, G]); metrics ``nll`` and
    ``token_acc`` (teacher-forced argmax accuracy)."""
    del rng
    missing = [k for k in ("images", "tokens", "pool") if k not in batch]
    if missing:
        raise ValueError(f"a TokenFLEX batch needs 'images', 'tokens' and 'pool' (build it with tokenflex_batch); "
                         f"missing {missing}, got keys {sorted(batch)}")
    t = _check_tokens(batch["tokens"], cfg)
    z = _caption_logits(params, cfg, batch["images"], t, batch["pool"])
    y = t[:, 1:]
    nll = -jnp.take_along_axis(jax.nn.log_softmax(z, -1), y[..., None], -1)[..., 0]
    loss = jnp.mean(nll)
    return loss, {"nll": loss, "token_acc": jnp.mean((jnp.argmax(z, -1) == y).astype(_F32))}


@functools.lru_cache(maxsize=None)
def make_tokenflex_loss() -> Callable:
    """Returns :func:`tokenflex_loss` (the factory of the registered loss ``"tokenflex"``; no options: the token
    count is the batch's ``pool`` shape and the patch size the params')."""
    return tokenflex_loss


# ---------------------------------------------------------------------------------------- batches
def _check_data(images: Any, tokens: Any) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(images)
    if x.ndim != 3 or not np.issubdtype(x.dtype, np.floating):
        raise ValueError(f"images must be float [N, H, W], got {x.dtype} {x.shape}")
    if x.size and (not np.isfinite(x).all() or x.min() < 0.0 or x.max() > 1.0):
        raise ValueError(f"pixels must lie in [0, 1], got values in [{np.nanmin(x)}, {np.nanmax(x)}]")
    t = np.asarray(tokens)
    if t.ndim != 2 or t.shape[0] != x.shape[0] or t.shape[1] < 2 or not np.issubdtype(t.dtype, np.integer):
        raise ValueError(f"tokens must be int [N={x.shape[0]}, L + 1 >= 2] (one caption per image), got {t.dtype} "
                         f"{t.shape}")
    if t.size and (t.min() < 0 or t.max() >= len(CAPTION_VOCAB)):
        raise ValueError(f"caption ids must lie in [0, {len(CAPTION_VOCAB)}), got [{t.min()}, {t.max()}]")
    return x.astype(np.float32), t.astype(np.int32)


def tokenflex_batch(images: Any, tokens: Any, n: int, *, patch: int = 2) -> dict:
    """Returns a dict batch for ``tokjax.train.train`` with :func:`tokenflex_loss`: ``images`` float32 [B, H, W],
    ``tokens`` int32 [B, L + 1] and ``pool`` = ``adaptive_pool_matrix(n, H / patch)`` [n, G]. Raises ValueError for
    non-square images, a patch not dividing them, pixels outside [0, 1], bad caption ids or n outside 1 .. G."""
    x, t = _check_data(images, tokens)
    p = _check_int("patch", patch, 1)
    if x.shape[1] != x.shape[2] or x.shape[1] % p:
        raise ValueError(f"images must be square with a side divisible by patch={p}, got shape {x.shape}")
    return {"images": x, "tokens": t, "pool": adaptive_pool_matrix(n, x.shape[1] // p)}


def tokenflex_batch_fn(images: Any, tokens: Any, *, buckets: Sequence[int] = (2, 4, 8),
                       probs: Sequence[float] | None = None, batch_size: int, patch: int = 2,
                       seed: int = 0) -> Callable[[int], dict]:
    """Returns ``batch_fn(step) -> tokenflex_batch(...)`` with ``n`` drawn from ``buckets`` with ``probs``
    (default uniform; the paper's ratios are unverified) -- dynamic token training (P61); one bucket trains a
    fixed-n model. A pure function of ``step`` (rows from ``tokjax.data.batch_indices``, n from a numpy generator
    seeded by (seed, step)), so a resumed run is bitwise the uninterrupted one.

    Raises ValueError for empty or repeated buckets, a bucket outside 1 .. G, probs of another length, negative or
    not summing to 1, and the checks of :func:`tokenflex_batch`."""
    from tokjax.data import batch_indices

    x, t = _check_data(images, tokens)
    p = _check_int("patch", patch, 1)
    if x.shape[1] != x.shape[2] or x.shape[1] % p:
        raise ValueError(f"images must be square with a side divisible by patch={p}, got shape {x.shape}")
    G = x.shape[1] // p
    buckets = tuple(buckets)
    if not buckets or len(set(buckets)) != len(buckets):
        raise ValueError(f"buckets must be distinct token counts per side, at least one; got {buckets}")
    buckets = tuple(_check_n(b, G) for b in buckets)
    if probs is None:
        pr = np.full(len(buckets), 1.0 / len(buckets))
    else:
        pr = np.asarray(probs, np.float64)
        if pr.shape != (len(buckets),) or (pr < 0).any() or not np.isclose(pr.sum(), 1.0):
            raise ValueError(f"probs must be {len(buckets)} non-negative numbers summing to 1 (one per bucket), "
                             f"got {probs!r}")
    batch_size = _check_int("batch_size", batch_size, 1)
    seed = _check_int("seed", seed, 0)
    pools = {b: adaptive_pool_matrix(b, G) for b in buckets}
    cdf = np.cumsum(pr)

    def batch_fn(step: int) -> dict:
        idx = batch_indices(x.shape[0], batch_size, step, seed=seed)
        u = np.random.default_rng((seed, 61, int(step))).random()
        n = buckets[min(int(np.searchsorted(cdf, u * cdf[-1], side="right")), len(buckets) - 1)]
        return {"images": x[idx], "tokens": t[idx], "pool": pools[n]}

    return batch_fn


# --------------------------------------------------------------------------------------- evaluation
def caption_predictions(params, cfg: ModelConfig, images: Any, tokens: Any, n: int) -> jax.Array:
    """Returns int32 [B, L]: the teacher-forced argmax at every caption slot (slot t given the true words before it)
    with n x n visual tokens; compare with ``tokens[:, 1:]``."""
    G = _grid_of(_tf_params(params))
    a = jnp.asarray(adaptive_pool_matrix(_check_n(n, G), G))
    return jnp.argmax(_caption_logits(params, cfg, images, tokens, a), -1).astype(jnp.int32)


def caption_accuracy(params, cfg: ModelConfig, images: Any, tokens: Any, n: int, *, chunk: int = 500) -> dict:
    """Returns {"exact": exact-match accuracy of the greedy caption (= all teacher-forced argmaxes right, module
    docstring), "per_slot": [L] accuracy per caption slot (digit, left|right, top|bottom, small|large, EOS),
    teacher-forced} for ``images`` [B, H, W] with n x n visual tokens, in ``chunk``-row forwards."""
    x, t = _check_data(images, tokens)
    chunk = _check_int("chunk", chunk, 1)
    fn = _predict_jit(cfg, int(n))
    hits = []
    for s in range(0, x.shape[0], chunk):
        pred = np.asarray(fn(params, x[s:s + chunk], t[s:s + chunk]))
        hits.append(pred == t[s:s + chunk, 1:])
    h = np.concatenate(hits)
    return {"exact": float(h.all(1).mean()), "per_slot": h.mean(0).tolist()}


@functools.lru_cache(maxsize=None)
def _predict_jit(cfg: ModelConfig, n: int):
    return jax.jit(lambda params, x, t: caption_predictions(params, cfg, x, t, n))


def greedy_captions(params, cfg: ModelConfig, images: Any, n: int, *, length: int = CAPTION_LEN - 1) -> jax.Array:
    """Returns int32 [B, length]: greedy captions of ``images`` with n x n visual tokens (argmax over the whole
    vocabulary, one full forward per word, BOS given). Cache-free: the caption is causal, so the unfilled slots
    after the current one never change its logits."""
    length = _check_int("length", length, 1)
    p = _tf_params(params)
    G = _grid_of(p)
    a = jnp.asarray(adaptive_pool_matrix(_check_n(n, G), G))
    x, _, _ = _check_images(images, p)
    B = x.shape[0]
    seq = jnp.zeros((B, length + 1), jnp.int32).at[:, 0].set(BOS_ID)

    def step(i, seq):
        z = _caption_logits(params, cfg, x, seq, a)  # row i predicts slot i + 1
        nxt = jnp.argmax(jax.lax.dynamic_index_in_dim(z, i, axis=1, keepdims=False), -1).astype(jnp.int32)
        return jax.lax.dynamic_update_index_in_dim(seq, nxt, i + 1, axis=1)

    return jax.lax.fori_loop(0, length, step, seq)[:, 1:]


# ------------------------------------------------------------------------------------------ registry
def _register() -> None:
    from tokjax.losses.registry import register_loss

    register_loss("tokenflex", make_tokenflex_loss, {},
                  doc="P61 TokenFLEX captioner: patch features adaptively avg-pooled to n x n, SwiGLU-projected into a "
                      "Prefix(n^2) visual prefix, caption cross-entropy; batch needs images, tokens, pool [n, G] "
                      "(tokjax.vision.tokenflex.tokenflex_batch_fn draws n per step); params need params['tokenflex'] "
                      "(tokjax.vision.tokenflex.tokenflex_init)",
                  overwrite=True)


_register()
