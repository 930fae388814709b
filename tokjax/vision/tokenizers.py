"""Image tokenizers: per-pixel quantization, patches, and a small k-means VQ codebook.

    PixelQuantizer(levels)        image in [0, 1] -> code floor(x * levels) (clipped to levels - 1);
                                  decode -> bin centre (code + 0.5) / levels, so |x - decode(encode(x))|
                                  <= 1 / (2 levels)
    patchify(images, p)           [N, H, W(, C)] -> [N, H/p, W/p, p*p(*C)], each patch row-major (y, x, c)
    unpatchify(patches, p, H, W)  the inverse
    train_vq(images, patch, K)    -> VQ: a codebook [K, p*p*C] fitted to the image patches by
                                  minibatch k-means with EMA updates and dead-code restart
    VQ.encode(images)             codes [N, H/p, W/p] = argmin_k ||patch - c_k||^2
    VQ.decode(codes)              images made of the codewords
    codebook_usage(codes, K)      (used fraction, perplexity = exp(entropy of code frequencies))

The canonical image grid of tokjax is 8x8 tokens: 8x8 images at 8 grey levels (:class:`PixelQuantizer`),
or 16x16 images through a 2x2-patch VQ.

VQ training (the EMA codebook of VQ-VAE, van den Oord et al. 2017, appendix A.1, run here on the
raw patches, i.e. minibatch k-means with exponential moving averages; dead-code restart as in
Jukebox, Dhariwal et al. 2020). Per step t, on a minibatch x_1..x_B of patches:

    z_i = argmin_k ||x_i - c_k||^2,   n_k = #{i : z_i = k},   s_k = sum_{i : z_i = k} x_i
    N_k <- decay * N_k + (1 - decay) * n_k
    S_k <- decay * S_k + (1 - decay) * s_k
    c_k <- S_k / N_k

starting from K random data patches with N_k = 1, S_k = c_k. A code that no batch has used for
``dead_after`` consecutive steps is *dead*; with ``restart_dead`` it is reset to an input x_j of the
current batch (c_k = x_j, N_k = 1, S_k = x_j), drawn with probability proportional to x_j's squared
distance to its nearest codeword (k-means++ D^2 sampling; uniform once the batch is matched exactly),
so restarts go where the codebook fits worst rather than onto patches a code already holds. Without
restarts, codes initialised on duplicate patches, or starved by a neighbour, stay unused forever.
The fit ends with ``refine`` Lloyd iterations on all patches (each used codeword set to the exact
mean of the patches nearest to it), which removes what the EMA still remembers of earlier
assignments. ``decay``, ``dead_after``, ``restart_dead`` and ``refine`` are runtime values of the
jitted fit (sweeping them does not recompile); the step count, batch size and codebook size are
static.

Input checks (range, finiteness, code range) run on concrete arrays; under ``jax.jit`` they are
skipped and values are clipped into range instead.
"""

from __future__ import annotations

import dataclasses
import math
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

__all__ = ["VQ", "PixelQuantizer", "codebook_usage", "patchify", "train_vq", "unpatchify"]


def _concrete(x) -> bool:
    return not isinstance(x, jax.core.Tracer)


def _check_int(name: str, value, low: int) -> int:
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < low:
        raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    return int(value)


def _check_codes(codes, size: int, what: str):
    codes = jnp.asarray(codes)
    if not jnp.issubdtype(codes.dtype, jnp.integer):
        raise ValueError(f"{what} codes must be integers, got dtype {codes.dtype}")
    if _concrete(codes) and codes.size and (int(codes.min()) < 0 or int(codes.max()) >= size):
        raise ValueError(f"{what} codes must lie in [0, {size}), got values in [{int(codes.min())}, {int(codes.max())}]")
    return codes


# ----------------------------------------------------------------------------- pixel quantizer


@dataclasses.dataclass(frozen=True)
class PixelQuantizer:
    """Per-pixel uniform quantizer of images in [0, 1] into ``levels`` codes (module docstring).

    ``encode(images [..., H, W]) -> int32 codes [..., H, W]`` in [0, levels);
    ``decode(codes) -> float32`` bin centres ``(code + 0.5) / levels``. Raises ValueError on
    ``levels < 2``, pixels outside [0, 1] or non-finite, and codes outside [0, levels).
    """

    levels: int

    def __post_init__(self):
        _check_int("levels", self.levels, 2)

    def encode(self, images) -> jax.Array:
        """Returns int32 codes ``min(floor(x * levels), levels - 1)`` of images in [0, 1]."""
        x = jnp.asarray(images, jnp.float32)
        if _concrete(x) and x.size:
            if not bool(jnp.all(jnp.isfinite(x))):
                raise ValueError("images contain NaN or inf; pixels must be finite values in [0, 1]")
            lo, hi = float(x.min()), float(x.max())
            if lo < 0.0 or hi > 1.0:
                raise ValueError(f"pixels must lie in [0, 1], got values in [{lo}, {hi}]")
        return jnp.clip(jnp.floor(x * self.levels), 0, self.levels - 1).astype(jnp.int32)

    def decode(self, codes) -> jax.Array:
        """Returns float32 images whose pixels are the bin centres ``(code + 0.5) / levels``."""
        codes = _check_codes(codes, self.levels, "pixel")
        return (jnp.clip(codes, 0, self.levels - 1).astype(jnp.float32) + 0.5) / self.levels


# ----------------------------------------------------------------------------- patches


def patchify(images, patch: int) -> jax.Array:
    """Returns ``images`` [N, H, W] or [N, H, W, C] cut into patches [N, H/p, W/p, p*p(*C)].

    Patch (i, j) is ``images[:, i*p:(i+1)*p, j*p:(j+1)*p]`` flattened row-major (y, then x, then channel).
    Raises ValueError when ``patch`` is not an int >= 1 or does not divide H and W.
    """
    x = jnp.asarray(images)
    if x.ndim not in (3, 4):
        raise ValueError(f"images must be [N, H, W] or [N, H, W, C], got shape {x.shape}")
    p = _check_int("patch", patch, 1)
    n, h, w = x.shape[:3]
    if h % p or w % p:
        raise ValueError(f"patch {p} must divide the image grid, got H={h}, W={w}")
    c = x.shape[3:]
    x = x.reshape(n, h // p, p, w // p, p, *c)
    x = jnp.moveaxis(x, 2, 3)  # [N, H/p, W/p, p, p, (C)]
    return x.reshape(n, h // p, w // p, p * p * math.prod(c))


def unpatchify(patches, patch: int, H: int | None = None, W: int | None = None, channels: int | None = None) -> jax.Array:
    """Returns the images [N, H, W] (or [N, H, W, C]) whose :func:`patchify` is ``patches`` [N, H/p, W/p, D].

    ``H``, ``W`` default to the grid times ``patch`` and are checked against it when given. ``channels``:
    None gives [N, H, W] when D = p*p and [N, H, W, D/(p*p)] otherwise; an int C asks for [N, H, W, C].
    Raises ValueError on inconsistent shapes.
    """
    x = jnp.asarray(patches)
    if x.ndim != 4:
        raise ValueError(f"patches must be [N, H/p, W/p, p*p*C], got shape {x.shape}")
    p = _check_int("patch", patch, 1)
    n, gh, gw, d = x.shape
    H = gh * p if H is None else H
    W = gw * p if W is None else W
    if H % p or W % p:
        raise ValueError(f"patch {p} must divide the image grid, got H={H}, W={W}")
    if (H // p, W // p) != (gh, gw):
        raise ValueError(f"a {H}x{W} image in {p}x{p} patches is a {H // p}x{W // p} grid, patches have {gh}x{gw}")
    if d % (p * p):
        raise ValueError(f"patch width {d} is not a multiple of patch * patch = {p * p}")
    c = d // (p * p)
    if channels is not None and _check_int("channels", channels, 1) != c:
        raise ValueError(f"patch width {d} = {p}*{p}*{c} holds {c} channels, not {channels}")
    tail = () if channels is None and c == 1 else (c,)
    x = x.reshape(n, gh, gw, p, p, *tail)
    x = jnp.moveaxis(x, 3, 2)  # [N, H/p, p, W/p, p, (C)]
    return x.reshape(n, H, W, *tail)


# ----------------------------------------------------------------------------- VQ


def _nearest(x: jax.Array, codebook: jax.Array) -> jax.Array:
    """Returns int32 [...] the index of the nearest codeword (squared L2, ties to the lower index) of x [..., D].

    The distances are sums of squared differences, not ||x||^2 - 2 x.c + ||c||^2: that expansion cancels
    catastrophically (errors ~1e-7 * ||x||^2 in float32), so identical or nearly identical codewords would
    split a cluster at random, both count as used, and a duplicate would never be detected as dead.
    """
    return jnp.argmin(jnp.sum(jnp.square(x[..., None, :] - codebook), -1), axis=-1).astype(jnp.int32)


def _nearest_chunked(patches: jax.Array, codebook: jax.Array) -> jax.Array:
    """Returns :func:`_nearest` of patches [N, h, w, D], mapped over images in chunks to bound memory."""
    n, h, w, d = patches.shape
    per_image = max(h * w * codebook.shape[0] * d, 1)
    chunk = int(min(max(n, 1), max(1, (1 << 24) // per_image)))
    return jax.lax.map(lambda p: _nearest(p, codebook), patches, batch_size=chunk)


@struct.dataclass
class VQ:
    """A patch vector quantizer: ``codebook`` [K, p*p*C] float32 (a pytree leaf), ``patch`` and
    ``channels`` static (``channels`` None: images without a channel axis).

    ``encode(images [N, H, W(, C)]) -> int32 codes [N, H/p, W/p]`` (nearest codeword of each patch);
    ``decode(codes) -> float32 images [N, H, W(, C)]``. Both are pure and jit-compatible; a VQ can be
    passed into jitted functions as an argument.
    """

    codebook: jax.Array
    patch: int = struct.field(pytree_node=False)
    channels: int | None = struct.field(pytree_node=False, default=None)

    @property
    def codebook_size(self) -> int:
        return self.codebook.shape[0]

    def encode(self, images) -> jax.Array:
        """Returns int32 codes [N, H/p, W/p]: the nearest codeword of each patch."""
        x = jnp.asarray(images, jnp.float32)
        want = 3 if self.channels is None else 4
        if x.ndim != want or (self.channels is not None and x.shape[-1] != self.channels):
            shape = "[N, H, W]" if self.channels is None else f"[N, H, W, {self.channels}]"
            raise ValueError(f"this VQ encodes images {shape}, got shape {x.shape}")
        if _concrete(x) and x.size and not bool(jnp.all(jnp.isfinite(x))):
            raise ValueError("images contain NaN or inf; pixels must be finite")
        return _nearest_chunked(patchify(x, self.patch), self.codebook)

    def decode(self, codes) -> jax.Array:
        """Returns float32 images [N, H, W(, C)] made of the codewords of ``codes`` [N, H/p, W/p]."""
        codes = _check_codes(codes, self.codebook_size, "VQ")
        if codes.ndim != 3:
            raise ValueError(f"VQ codes must be [N, H/p, W/p], got shape {codes.shape}")
        patches = self.codebook[jnp.clip(codes, 0, self.codebook_size - 1)]
        return unpatchify(patches, self.patch, channels=self.channels)


@partial(jax.jit, static_argnames=("codebook_size", "steps", "batch_size"))
def _fit(data, key, decay, dead_after, restart_dead, refine, *, codebook_size, steps, batch_size):
    """Returns the codebook [K, D] fitted to patches ``data`` [P, D] as the module docstring says."""
    num, _ = data.shape
    k_init, k_loop = jax.random.split(key)
    start = jax.random.choice(k_init, num, (codebook_size,), replace=num < codebook_size)
    codebook = data[start]
    init = (codebook, jnp.ones((codebook_size,), jnp.float32), codebook, jnp.zeros((codebook_size,), jnp.int32))

    def step(state, key):
        codebook, counts, sums, unused = state
        k_batch, k_fresh = jax.random.split(key)
        batch = data[jax.random.randint(k_batch, (batch_size,), 0, num)]
        dist = jnp.sum(jnp.square(batch[:, None, :] - codebook), -1)  # [B, K], as in _nearest
        onehot = jax.nn.one_hot(jnp.argmin(dist, -1), codebook_size, dtype=jnp.float32)
        n = onehot.sum(0)
        counts = decay * counts + (1.0 - decay) * n
        sums = decay * sums + (1.0 - decay) * jnp.matmul(onehot.T, batch, precision=jax.lax.Precision.HIGHEST)
        # Counts of long-unused codes decay geometrically with their sums: keep the old codeword once tiny.
        codebook = jnp.where(counts[:, None] > 1e-20, sums / jnp.maximum(counts, 1e-20)[:, None], codebook)
        unused = jnp.where(n > 0, 0, unused + 1)
        dead = restart_dead & (unused >= dead_after)
        # Restart inputs: batch rows drawn with probability proportional to their squared quantization
        # error (k-means++ "D^2" sampling), uniformly when every row is already matched exactly.
        err = jnp.min(dist, -1)
        logits = jnp.where(err > 0, jnp.log(jnp.where(err > 0, err, 1.0)), -jnp.inf)
        logits = jnp.where(jnp.any(err > 0), logits, 0.0)
        fresh = batch[jax.random.categorical(k_fresh, logits, shape=(codebook_size,))]
        codebook = jnp.where(dead[:, None], fresh, codebook)
        counts = jnp.where(dead, 1.0, counts)
        sums = jnp.where(dead[:, None], fresh, sums)
        unused = jnp.where(dead, 0, unused)
        return (codebook, counts, sums, unused), None

    (codebook, *_), _ = jax.lax.scan(step, init, jax.random.split(k_loop, steps))
    chunk = int(max(1, min(num, (1 << 22) // (codebook_size * data.shape[1]))))

    def lloyd(_, codebook):
        codes = jax.lax.map(lambda row: _nearest(row, codebook), data, batch_size=chunk)
        n = jax.ops.segment_sum(jnp.ones((num,), jnp.float32), codes, codebook_size)
        sums = jax.ops.segment_sum(data, codes, codebook_size)
        return jnp.where(n[:, None] > 0, sums / jnp.maximum(n, 1.0)[:, None], codebook)

    return jax.lax.fori_loop(0, refine, lloyd, codebook)


def train_vq(images, patch: int = 2, codebook_size: int = 64, *, steps: int = 500, batch_size: int = 256,
             decay: float = 0.99, dead_after: int = 20, restart_dead: bool = True, refine: int = 2,
             seed: int = 0) -> VQ:
    """Returns a :class:`VQ` with ``codebook_size`` codewords fitted to the ``patch`` x ``patch`` patches of
    ``images`` [N, H, W] or [N, H, W, C] (float, any range) by EMA minibatch k-means with dead-code restart
    (module docstring): ``steps`` jitted steps (one ``lax.scan``) on minibatches of ``batch_size`` patches
    drawn with replacement, then ``refine`` full-data Lloyd iterations.

    Raises ValueError on ``codebook_size < 2``, a ``patch`` that is not an int >= 1 dividing H and W,
    non-finite images, ``steps`` or ``batch_size`` < 1, ``decay`` outside [0, 1), ``dead_after`` < 1 or
    ``refine`` < 0.
    """
    k = _check_int("codebook_size", codebook_size, 2)
    steps, batch_size = _check_int("steps", steps, 1), _check_int("batch_size", batch_size, 1)
    dead_after, refine = _check_int("dead_after", dead_after, 1), _check_int("refine", refine, 0)
    if not 0.0 <= float(decay) < 1.0:
        raise ValueError(f"decay must lie in [0, 1), got {decay!r}")
    x = jnp.asarray(images, jnp.float32)
    patches = patchify(x, patch)  # checks the shape and that patch divides the grid
    if x.size == 0:
        raise ValueError(f"train_vq needs at least one image, got shape {x.shape}")
    if not bool(jnp.all(jnp.isfinite(x))):
        raise ValueError("images contain NaN or inf; pixels must be finite")
    data = patches.reshape(-1, patches.shape[-1])
    codebook = _fit(data, jax.random.PRNGKey(seed), jnp.float32(decay), jnp.int32(dead_after),
                    jnp.bool_(restart_dead), jnp.int32(refine), codebook_size=k, steps=steps, batch_size=batch_size)
    return VQ(codebook=codebook, patch=int(patch), channels=None if x.ndim == 3 else int(x.shape[-1]))


# ----------------------------------------------------------------------------- usage


def codebook_usage(codes, codebook_size: int) -> tuple[jax.Array, jax.Array]:
    """Returns float32 scalars (used fraction, perplexity) of integer ``codes`` (any shape) over a codebook.

    used fraction = #{k : code k occurs} / K; perplexity = exp(-sum_k f_k log f_k) with f_k the code
    frequencies (0 log 0 = 0): K under uniform use, 1 when a single code is used. Jit-compatible with
    ``codebook_size`` static. Raises ValueError on ``codebook_size < 1``, no codes, or codes outside [0, K).
    """
    k = _check_int("codebook_size", codebook_size, 1)
    codes = _check_codes(codes, k, "VQ").reshape(-1)
    if codes.size == 0:
        raise ValueError("codebook_usage needs at least one code")
    counts = jnp.bincount(jnp.clip(codes, 0, k - 1), length=k).astype(jnp.float32)
    freq = counts / counts.sum()
    entropy = -jnp.sum(jnp.where(freq > 0, freq * jnp.log(jnp.where(freq > 0, freq, 1.0)), 0.0))
    return jnp.mean(counts > 0).astype(jnp.float32), jnp.exp(entropy)
