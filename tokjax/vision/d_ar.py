"""D-AR: diffusion via autoregressive models -- token groups aligned with flow-decoder steps, streaming x0 previews
(P33; Gao et al. 2025, "D-AR: Diffusion via Autoregressive Models", arXiv 2505.23660; official code showlab/D-AR).

Stage 1, the sequential diffusion tokenizer, on 8 x 8 glyphs (2 x 2 pixel patches x in [-1, 1]^4, 16 patches;
built on P32 FlexTok's parts, ``tokjax.vision.flextok``)::

    h    = Encoder([W_p x_1 .. W_p x_16][r_1 .. r_N])[queries]     shared forward under Prefix(16): query j sees
                                                                    every patch and queries <= j
    q    = FSQ_[5,5,5](W_q h)                                       125 codes per query (tokjax.vision.fsq)
    c    = CondTransformer(W_c q + pos)                             a causal shared forward: c_j reads q_1 .. q_j
    N queries in G groups of n = N / G; group g = queries g n .. (g + 1) n - 1
    u ~ U[0, 1) per image,  g(u) = min(floor(G u), G - 1),  t = shift(1 - u)       (u = denoising progress)
    shift(s) = a s / (1 + (a - 1) s)                                time shift a (official ``time_shift: 2``)
    x_t  = (1 - t) x + t eps,   eps ~ N(0, I)
    v    = W_o Decoder([W_x x_t][c_{g n} .. c_{g n + n - 1}] + time_embed(t))[patches]   bidirectional
    L    = mean || v - (eps - x) ||^2                               rectified flow (tokjax.vision.flow convention)

Decoding (:func:`d_ar_decode`): ``steps`` = S Euler (or Euler-Maruyama) steps from x_1 = temperature * eps; step
i runs from t_i = shift(1 - i / S) to t_{i+1} (t_S = 0) with the condition of group g_i = floor(i G / S), so
with S = G step g reads group g exactly, and the velocity at step i depends only on groups <= g_i (the
condition transformer is causal). Hence after the AR model has emitted group g, every step of groups <= g can
run: the preview after group g is the x0 estimate of the latest step whose group is <= g::

    x0_hat_i = x_{t_i} - t_i v_i        preview[g] = x0_hat_{i*(g)},  i*(g) = max{i : g_i <= g}

The last Euler step (t_{S-1} -> 0, h = t_{S-1}) is x - t v itself, so the last preview equals the final sample
bit for bit (tested). :func:`grouped_flow_sample` is this sampler for any velocity callable (a point mass lands
on x* at every step count and shift; tested); it runs steps ``[start, end)`` so a stream can advance one group
at a time (:func:`d_ar_stream`, the same jitted program: stream == batch decode). ``steps``, ``time_shift`` and
``temperature`` are runtime values (no recompile).

``visible`` chooses what the decoder reads at a step of group g: "group" (the official decoder: the n condition
outputs of group g, which summarise groups <= g through the causal condition transformer), "prefix" (the
conditions of groups <= g, later ones replaced by FlexTok's mask token: the issue's literal "sees groups <= g"),
or "full" (every group at every step: the non-aligned, FlexTok-style baseline; no streaming previews exist).

Stage 2: plain next-token prediction over the N query ids (D-AR's AR model is an unchanged LlamaGen; here a
class-conditional tokjax LM over FlexTok's :func:`~tokjax.vision.flextok.register_vocab`, batches from
:func:`~tokjax.vision.flextok.register_batch_fn`); :func:`d_ar_generate` (alias ``d_ar``) samples the ids with
``tokjax.generate`` and decodes them, or with a ``callback`` streams: ``tokjax.stream`` emits ids, and after
every group the decoder runs that group's steps and calls ``callback(g, preview)``.

Verified against showlab/D-AR (``tokenizer/tokenizer_image/vq_model.py``, ``diff_decoder.py``,
``configs/tokenizer_v1.yaml``): encoder over [patches][queries] with queries causal among themselves and seeing
every patch; a causal transformer (``decoder_layers_forward``, plus a learned per-query embedding) turns the
quantized tokens into conditions; the diffusion step uses ``cond[:, g n : (g + 1) n]`` of one group only; 8 groups
= 8 denoising steps; training draws the time uniformly and picks the group from its discretised value; the time
shift t / (t + a (1 - t)) (a = 2, in the official convention t = 1 data) is applied after the group is chosen and
on the sampling grid; the flow-matching target is the velocity (noise - data here, data - noise there). Documented
deviations: (i) the group is floor(G u) (the issue's [g/G, (g+1)/G) rule) where the official code rounds,
floor(G u + 1/2) clamped to G - 1; on the sampling grid u = i / G both give g = i; (ii) quantizer: the foundation's
FSQ [5, 5, 5] (125 codes) instead of an l2-normalised VQ with 16,384 codes of dimension 8 and its codebook /
commitment losses; ``drop_quant`` is FlexTok's FSQ option, not D-AR's; (iii) the decoder conditions through
in-sequence tokens and additive time embeddings at every ``resid_pre`` (FlexTok's decoder) instead of SiT blocks
with cross-attention and AdaLN; pixels of 2 x 2 patches instead of patch-8 pixel space; no REPA, no perceptual or
GAN losses; Euler (or Euler-Maruyama) instead of the official second-order Adams sampler.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Iterable, Iterator, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from tokjax.decoding import generate, stream
from tokjax.logits import allowed_tokens, chain, check_range, temperature as temperature_tf
from tokjax.model import Inputs, Model, ModelConfig, forward, init_params
from tokjax.model.attention import Causal
from tokjax.vision.flextok import LEVELS, NUM_PATCHES, PATCH, _check_levels, _check_patches, _dims, _pre_quant, \
    flextok_encode, flextok_init, flextok_registers, flextok_velocity, register_vocab
from tokjax.vision.flow import SAMPLERS, _check_int, flow_update
from tokjax.vision.fsq import nested_dropout

__all__ = [
    "DARDecoded", "DARPreview", "DARSamples", "NUM_GROUPS", "NUM_QUERIES", "TIME_SHIFT", "VISIBLE", "d_ar",
    "d_ar_conditions", "d_ar_decode", "d_ar_encode", "d_ar_generate", "d_ar_init", "d_ar_loss", "d_ar_stream",
    "d_ar_visible", "group_of_step", "group_steps", "grouped_flow_sample", "make_d_ar_loss", "shift_time",
]

_F32 = jnp.float32
NUM_QUERIES, NUM_GROUPS = 16, 8
TIME_SHIFT = 2.0  # the official tokenizer_v1.yaml ``time_shift``
VISIBLE = ("group", "prefix", "full")


# ------------------------------------------------------------------------------------ time / groups
def shift_time(t: Any, shift: Any) -> jax.Array:
    """Returns float32 ``shift t / (1 + (shift - 1) t)``: the time shift (> 1 moves time toward noise, t = 1); maps
    0 to 0 and 1 to 1 exactly, and is the identity at shift = 1."""
    t = jnp.asarray(t, _F32)
    a = jnp.asarray(shift, _F32)
    return a * t / (1.0 + (a - 1.0) * t)


def group_of_step(i: Any, steps: Any, num_groups: int) -> jax.Array:
    """Returns int32 floor(i G / S): the token group whose condition step ``i`` of ``steps`` = S reads (integer
    arithmetic, jit-compatible; g(0) = 0, non-decreasing, g(S - 1) = G - 1 whenever S >= G)."""
    return (jnp.asarray(i, jnp.int32) * num_groups) // jnp.asarray(steps, jnp.int32)


def group_steps(g: Any, steps: Any, num_groups: int) -> tuple[jax.Array, jax.Array]:
    """Returns (start, end) int32: the steps i in [start, end) whose group (:func:`group_of_step`) is ``g``;
    start = ceil(g S / G), end = ceil((g + 1) S / G). Over g = 0 .. G - 1 they partition [0, S) (empty when
    S < G leaves a group without a step)."""
    g = jnp.asarray(g, jnp.int32)
    S = jnp.asarray(steps, jnp.int32)
    return (g * S + num_groups - 1) // num_groups, ((g + 1) * S + num_groups - 1) // num_groups


def _check_steps(steps) -> int:
    if isinstance(steps, bool) or np.ndim(steps) or not np.issubdtype(np.asarray(steps).dtype, np.integer) \
            or int(steps) < 1:
        raise ValueError(f"steps must be an int >= 1 (flow steps), got {steps!r}")
    return int(steps)


def _check_shift(time_shift) -> None:
    check_range(time_shift, "time_shift")
    if not isinstance(time_shift, jax.core.Tracer) and float(np.min(np.asarray(time_shift))) <= 0.0:
        raise ValueError(f"time_shift must be > 0 (1 = no shift, the official 2 moves steps toward noise), got "
                         f"{time_shift!r}")


def grouped_flow_sample(velocity: Callable, x: Any, key: jax.Array, *, steps: Any, num_groups: int,
                        time_shift: Any = 1.0, temperature: Any = 1.0, sampler: str = "euler", start: Any = 0,
                        end: Any = None, previews: Any = None) -> tuple[jax.Array, jax.Array]:
    """Returns (x float32, previews float32 [G, *x.shape]) after running steps i in [``start``, ``end``) of the
    grouped flow sampler (module docstring): ``x`` is the state at step ``start`` (x_1 = temperature * eps at
    start = 0), ``velocity(x, t, g) -> v`` with t a float32 scalar and g the int32 group of the step, each step
    :func:`tokjax.vision.flow.flow_update` with key ``fold_in(key, i)``. ``previews[g']`` is overwritten by x0_hat =
    x - t v for every g' >= g_i, so after the steps of groups <= g it holds preview g; pass the previous
    ``previews`` back when resuming (default zeros). ``steps``, ``start``, ``end`` (default ``steps``),
    ``time_shift`` and ``temperature`` are runtime values. Raises ValueError for an unknown sampler, num_groups < 1
    or previews of the wrong shape."""
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler must be one of {SAMPLERS}, got {sampler!r}")
    G = _check_int("num_groups", num_groups, 1)
    x = jnp.asarray(x, _F32)
    prev = jnp.zeros((G,) + x.shape, _F32) if previews is None else jnp.asarray(previews, _F32)
    if prev.shape != (G,) + x.shape:
        raise ValueError(f"previews must be [num_groups={G}, *x.shape={x.shape}], got shape {prev.shape}")
    S = jnp.asarray(steps, jnp.int32)
    end = S if end is None else jnp.asarray(end, jnp.int32)
    temp = jnp.asarray(temperature, _F32)
    levels = jnp.arange(G, dtype=jnp.int32).reshape((G,) + (1,) * x.ndim)

    def t_of(i):
        return shift_time(1.0 - i.astype(_F32) / S.astype(_F32), time_shift)

    def body(i, carry):
        x, prev = carry
        t, t_next = t_of(i), t_of(i + 1)
        g = group_of_step(i, S, G)
        v = jnp.asarray(velocity(x, t, g), _F32)
        prev = jnp.where(levels >= g, (x - t * v)[None], prev)
        x = flow_update(x, v, t, t - t_next, i == S - 1, jax.random.fold_in(key, i), temp, sampler)
        return x, prev

    return jax.lax.fori_loop(jnp.asarray(start, jnp.int32), end, body, (x, prev))


# ------------------------------------------------------------------------------------------ params
def d_ar_init(cfg: ModelConfig, key: jax.Array, *, levels: Any = LEVELS, num_queries: int = NUM_QUERIES,
              patch_dim: int = PATCH * PATCH, num_patches: int = NUM_PATCHES, fsq_scale: Any = None) -> dict:
    """Returns the params of a D-AR tokenizer: :func:`~tokjax.vision.flextok.flextok_init`'s (encoder, queries as
    its registers, FSQ projections, mask token, decoder; ``fsq_scale`` = its fixed multiplier of z before FSQ, the
    guard against every query collapsing onto one code) plus ``params["d_ar"]`` = {"cond": the causal condition
    transformer's shared-forward params (same cfg), "pos" [N, D] the learned per-query embedding}. Raises
    ValueError as flextok_init, or for a max_len below num_queries."""
    k0, k1, k2 = jax.random.split(key, 3)
    params = flextok_init(cfg, k0, levels=levels, num_registers=num_queries, patch_dim=patch_dim,
                          num_patches=num_patches, fsq_scale=fsq_scale)
    params["d_ar"] = {"cond": init_params(cfg, k1),
                      "pos": 0.02 * jax.random.normal(k2, (int(num_queries), cfg.d_model), _F32)}
    return params


def _dp(params) -> dict:
    if not isinstance(params, dict) or "d_ar" not in params or "flextok" not in params:
        raise ValueError("params has no 'd_ar' entry: build them with tokjax.vision.d_ar.d_ar_init(cfg, key)")
    return params["d_ar"]


def _queries_per_group(params, num_groups) -> tuple[int, int]:
    """Returns (N queries, n per group); raises unless num_groups divides N."""
    _dp(params)
    N = _dims(params)[1]
    G = _check_int("num_groups", num_groups, 1)
    if N % G:
        raise ValueError(f"num_groups={G} must divide the {N} queries (groups of equal size)")
    return N, N // G


def _check_visible(visible) -> str:
    if visible not in VISIBLE:
        raise ValueError(f"visible must be one of {VISIBLE}, got {visible!r}")
    return visible


# ----------------------------------------------------------------------------------------- stage 1
def d_ar_encode(params: Any, cfg: ModelConfig, x: Any, *, levels: Any = LEVELS) -> tuple[jax.Array, jax.Array]:
    """Returns (codes float32 [B, N, d] (straight-through FSQ), ids int32 [B, N]) of patch tokens ``x`` [B, P, c]:
    the query encoder under Prefix(P) and FSQ (:func:`~tokjax.vision.flextok.flextok_encode`)."""
    _dp(params)
    return flextok_encode(params, cfg, x, levels=levels)


def d_ar_conditions(params: Any, cfg: ModelConfig, codes: Any) -> jax.Array:
    """Returns float32 [B, N, D]: the condition tokens c = CondTransformer(W_c q + pos) of codes [B, N, d], a causal
    shared forward (c_j depends on codes 1 .. j only; tested)."""
    dp = _dp(params)
    N = _dims(params)[1]
    e = flextok_registers(params, codes, N) + dp["pos"]
    out = forward(dp["cond"], cfg, Inputs(embeds=e.astype(cfg.dtype)), mask=Causal(), compute_logits=False)
    return out.hidden.astype(_F32)


def d_ar_visible(params: Any, conds: Any, group: Any, *, num_groups: int = NUM_GROUPS,
                 visible: str = "group") -> jax.Array:
    """Returns float32 [B, R, D]: what the decoder reads at a step of ``group`` (int scalar or [B], runtime) from
    conditions [B, N, D]: "group" -> the n = N / G conditions of that group (R = n); "prefix" -> all N with
    groups > g replaced by the mask token; "full" -> all N. Raises ValueError for an unknown mode or a G not
    dividing N."""
    N, n = _queries_per_group(params, num_groups)
    _check_visible(visible)
    c = jnp.asarray(conds, _F32)
    if c.ndim != 3 or c.shape[1] != N:
        raise ValueError(f"conds must be [B, N={N}, D] (d_ar_conditions), got shape {c.shape}")
    g = jnp.broadcast_to(jnp.clip(jnp.asarray(group, jnp.int32), 0, num_groups - 1), (c.shape[0],))
    if visible == "full":
        return c
    if visible == "prefix":
        return nested_dropout(c, (g + 1) * n, params["flextok"]["mask_token"])
    idx = g[:, None] * n + jnp.arange(n, dtype=jnp.int32)
    return jnp.take_along_axis(c, idx[:, :, None], axis=1)


def d_ar_loss(params: Any, cfg: ModelConfig, batch: dict, rng: jax.Array, *, levels: Any = LEVELS,
              num_groups: int = NUM_GROUPS, visible: str = "group", time_shift: Any = TIME_SHIFT,
              drop_quant: Any = 0.0) -> tuple[jax.Array, dict]:
    """Returns (loss, {"flow_mse", "group_mean"}): the D-AR tokenizer's rectified-flow loss (module docstring) on
    ``batch`` = {"x" float [B, P, c] patch tokens, optional "group" int [B] (fixed groups, overriding the draw
    from u)}: per image u ~ U[0, 1), group floor(G u), t = shift(1 - u), and the decoder reads what ``visible``
    gives for that group. ``drop_quant`` in [0, 1]: FlexTok's FSQ option (skip the rounding per image with that
    probability; not in D-AR, off by default)."""
    check_range(drop_quant, "drop_quant", lo=0.0, hi=1.0)
    _check_shift(time_shift)
    _check_visible(visible)
    if rng is None:
        raise ValueError("the d_ar loss draws u, eps (and quantization skips): it needs rng (tokjax.train passes one)")
    if not isinstance(batch, dict) or "x" not in batch:
        raise ValueError("a d_ar batch needs 'x' float [B, P, patch_dim] (tokjax.vision.flextok.tokenizer_batch_fn)")
    G = _check_int("num_groups", num_groups, 1)
    _queries_per_group(params, G)
    x = _check_patches(params, batch["x"])
    B = x.shape[0]
    ku, ke, kd = jax.random.split(rng, 3)
    q = _check_levels(params, levels)
    z = _pre_quant(params, cfg, x)
    skip = jax.random.bernoulli(kd, jnp.asarray(drop_quant, _F32), (B, 1, 1))
    codes = jnp.where(skip, q.bound(z) / jnp.asarray([L // 2 for L in q.levels], _F32), q.quantize(z))
    u = jax.random.uniform(ku, (B,), _F32)
    if batch.get("group") is not None:
        g = jnp.broadcast_to(jnp.asarray(batch["group"], jnp.int32), (B,))
        u = (g.astype(_F32) + u) / G  # a uniform time inside the fixed group's interval
    g = jnp.minimum(jnp.floor(u * G).astype(jnp.int32), G - 1)
    t = shift_time(1.0 - u, time_shift)
    eps = jax.random.normal(ke, x.shape, _F32)
    x_t = (1.0 - t[:, None, None]) * x + t[:, None, None] * eps
    regs = d_ar_visible(params, d_ar_conditions(params, cfg, codes), g, num_groups=G, visible=visible)
    v = flextok_velocity(params, cfg, x_t, t, regs)
    loss = jnp.mean(jnp.square(v - (eps - x)))
    return loss, {"flow_mse": loss, "group_mean": jnp.mean(g.astype(_F32))}


def make_d_ar_loss(levels: Any = LEVELS, num_groups: int = NUM_GROUPS, visible: str = "group",
                   time_shift: float = TIME_SHIFT, drop_quant: float = 0.0) -> Callable:
    """Returns the train loss ``(params, cfg, batch, rng) -> (loss, metrics)`` of :func:`d_ar_loss` (the factory of
    the registered loss ``"d_ar"``; equal options return the same function). Raises ValueError for bad options."""
    from tokjax.vision.fsq import fsq

    q = fsq(levels)
    _check_visible(visible)
    _check_shift(time_shift)
    check_range(drop_quant, "drop_quant", lo=0.0, hi=1.0)
    return _d_ar_loss_fn(q.levels, _check_int("num_groups", num_groups, 1), visible, float(time_shift),
                         float(drop_quant))


@functools.lru_cache(maxsize=None)
def _d_ar_loss_fn(levels, num_groups, visible, time_shift, drop_quant) -> Callable:
    return functools.partial(d_ar_loss, levels=levels, num_groups=num_groups, visible=visible,
                             time_shift=time_shift, drop_quant=drop_quant)


# ----------------------------------------------------------------------------------------- decoding
@functools.partial(jax.jit, static_argnames=("cfg", "levels", "num_groups", "visible", "sampler"))
def _run(params, cfg, ids, x, previews, key, steps, start, end, time_shift, temperature, *, levels, num_groups,
         visible, sampler):
    from tokjax.vision.fsq import fsq

    conds = d_ar_conditions(params, cfg, fsq(levels).ids_to_codes(ids))

    def vel(x, t, g):
        regs = d_ar_visible(params, conds, g, num_groups=num_groups, visible=visible)
        return flextok_velocity(params, cfg, x, t, regs)

    return grouped_flow_sample(vel, x, key, steps=steps, num_groups=num_groups, time_shift=time_shift,
                               temperature=temperature, sampler=sampler, start=start, end=end, previews=previews)


class DARDecoded(NamedTuple):
    """What :func:`d_ar_decode` returns: ``x`` float32 [B, P, c] the final sample, ``previews`` float32
    [G, B, P, c] the x0 preview after each group (``previews[-1] == x``)."""

    x: jax.Array
    previews: jax.Array


class DARPreview(NamedTuple):
    """One item of :func:`d_ar_stream`: ``group`` g, ``preview`` float32 [B, P, c] (x0 estimate from groups <= g),
    ``x`` float32 [B, P, c] (the flow state after the steps of groups <= g; the final sample after the last)."""

    group: int
    preview: jax.Array
    x: jax.Array


def _setup(params, *, levels, num_groups, steps, time_shift, temperature, visible, sampler,
           num_patches):
    N, n = _queries_per_group(params, num_groups)
    q = _check_levels(params, levels)
    _check_visible(visible)
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler must be one of {SAMPLERS}, got {sampler!r}")
    S = _check_steps(steps)
    _check_shift(time_shift)
    check_range(temperature, "temperature", lo=0.0)
    _check_int("num_patches", num_patches, 1)
    return N, n, q, S


def _check_ids(q, ids, N, what="ids") -> jax.Array:
    ids = jnp.asarray(ids)
    if ids.ndim != 2 or ids.shape[1] != N or not jnp.issubdtype(ids.dtype, jnp.integer):
        raise ValueError(f"{what} must be int [B, N={N}] (query ids), got {ids.dtype} {ids.shape}")
    q.ids_to_codes(ids)  # range check
    return ids.astype(jnp.int32)


def _start(params, B, num_patches, key, temperature):
    """Returns (x_1 float32 [B, P, c], the steps' key): the initial noise and key of a decode (stream == batch)."""
    c = _dims(params)[0]
    k0, kloop = jax.random.split(key)
    return jnp.asarray(temperature, _F32) * jax.random.normal(k0, (B, num_patches, c), _F32), kloop


def d_ar_decode(params: Any, cfg: ModelConfig, ids: Any, key: jax.Array, *, levels: Any = LEVELS,
                num_groups: int = NUM_GROUPS, steps: Any = NUM_GROUPS, time_shift: Any = TIME_SHIFT,
                temperature: Any = 1.0, visible: str = "group", sampler: str = "euler",
                num_patches: int = NUM_PATCHES) -> DARDecoded:
    """Returns :class:`DARDecoded` (final sample and per-group previews) of query ids [B, N] (module docstring):
    ``steps`` >= 1 flow steps (step i reads group floor(i G / S)), time shift ``time_shift`` > 0 and initial noise
    scale ``temperature`` >= 0 -- all runtime (a new value does not recompile). Raises ValueError for ids not
    [B, N] in range, steps < 1, a bad shift, temperature, mode or sampler, or G not dividing N."""
    N, _, q, S = _setup(params, levels=levels, num_groups=num_groups, steps=steps, time_shift=time_shift,
                        temperature=temperature, visible=visible, sampler=sampler, num_patches=num_patches)
    ids = _check_ids(q, ids, N)
    x1, kloop = _start(params, ids.shape[0], num_patches, key, temperature)
    x, prev = _run(params, cfg, ids, x1, jnp.zeros((int(num_groups),) + x1.shape, _F32), kloop, jnp.int32(S), jnp.int32(0), jnp.int32(S),
                   jnp.asarray(time_shift, _F32), jnp.asarray(temperature, _F32), levels=q.levels,
                   num_groups=int(num_groups), visible=visible, sampler=sampler)
    return DARDecoded(x=x, previews=prev)


def d_ar_stream(params: Any, cfg: ModelConfig, groups: Iterable[Any], key: jax.Array, *, levels: Any = LEVELS,
                num_groups: int = NUM_GROUPS, steps: Any = NUM_GROUPS, time_shift: Any = TIME_SHIFT,
                temperature: Any = 1.0, visible: str = "group", sampler: str = "euler",
                num_patches: int = NUM_PATCHES) -> Iterator[DARPreview]:
    """Yields a :class:`DARPreview` after each of the G groups of ids read from ``groups`` (an iterable of int
    [B, n] arrays, group 0 first, e.g. as an AR model emits them): the decoder runs the steps of that group
    (:func:`group_steps`) on the ids so far (later ids padded; no step reads them). Same arguments, key and
    compiled program as :func:`d_ar_decode`, so its previews and final x equal the batch decode's. Raises
    ValueError for visible="full" (every step reads every group: nothing to preview before the last id), a group
    not [B, n] in range, or more than G groups."""
    N, n, q, S = _setup(params, levels=levels, num_groups=num_groups, steps=steps, time_shift=time_shift,
                        temperature=temperature, visible=visible, sampler=sampler, num_patches=num_patches)
    if visible == "full":
        raise ValueError("visible='full' reads every group at every step: it has no streaming previews (use 'group' "
                         "or 'prefix', or d_ar_decode)")
    G = int(num_groups)
    ids, x, prev, kloop = None, None, None, None
    shift, temp = jnp.asarray(time_shift, _F32), jnp.asarray(temperature, _F32)
    for g, chunk in enumerate(groups):
        if g >= G:
            raise ValueError(f"groups yielded more than num_groups={G} groups")
        chunk = jnp.asarray(chunk)
        if chunk.ndim != 2 or chunk.shape[1] != n or (ids is not None and chunk.shape[0] != ids.shape[0]):
            raise ValueError(f"group {g} must be int [B, n={n}] (ids of one group), got shape {chunk.shape}")
        if ids is None:
            ids = jnp.zeros((chunk.shape[0], N), jnp.int32)
            x, kloop = _start(params, chunk.shape[0], num_patches, key, temperature)
            prev = jnp.zeros((G,) + x.shape, _F32)
        ids = ids.at[:, g * n:(g + 1) * n].set(_check_ids(q, chunk, n, what=f"group {g}"))
        start, end = group_steps(g, S, G)
        x, prev = _run(params, cfg, ids, x, prev, kloop, jnp.int32(S), start, end, shift, temp, levels=q.levels,
                       num_groups=G, visible=visible, sampler=sampler)
        yield DARPreview(group=g, preview=prev[g], x=x)


# ----------------------------------------------------------------------------------------- stage 2
class DARSamples(NamedTuple):
    """What :func:`d_ar_generate` returns: ``x`` float32 [M, P, c] patch tokens (``token_images`` makes pixels),
    ``previews`` float32 [G, M, P, c] (``previews[-1] == x``), ``ids`` int32 [M, N], ``stats`` (generate's, plus
    ``flow_steps``)."""

    x: np.ndarray
    previews: np.ndarray
    ids: np.ndarray
    stats: dict


def d_ar_generate(lm: Model, params: Any, cfg: ModelConfig, labels: Any, key: jax.Array, *, levels: Any = LEVELS,
                  num_classes: int = 10, num_groups: int = NUM_GROUPS, steps: Any = NUM_GROUPS,
                  time_shift: Any = TIME_SHIFT, temperature: Any = 1.0, lm_temperature: Any = 1.0,
                  visible: str = "group", sampler: str = "euler", num_patches: int = NUM_PATCHES,
                  callback: Callable[[int, np.ndarray], Any] | None = None) -> DARSamples:
    """Returns :class:`DARSamples` for class ``labels`` [M]: the stage-2 LM samples all N query ids after each
    class token (plain NTP; code ids only, temperature ``lm_temperature``) and the tokenizer decodes them
    (:func:`d_ar_decode`). With ``callback``, the ids come from ``tokjax.stream`` and after each group g the
    decoder advances (:func:`d_ar_stream`) and calls ``callback(g, preview [M, P, c])``: the same ids, previews
    and samples as without it (same key). Raises ValueError for bad labels, an LM that cannot hold the register
    vocabulary, or the decode's errors."""
    if not isinstance(lm, Model):
        raise ValueError(f"lm must be a tokjax Model (the stage-2 query-id LM), got {type(lm).__name__}")
    N, n, _, _ = _setup(params, levels=levels, num_groups=num_groups, steps=steps, time_shift=time_shift,
                        temperature=temperature, visible=visible, sampler=sampler, num_patches=num_patches)
    vocab = register_vocab(levels, num_classes)
    if lm.cfg.vocab_size < vocab.size:
        raise ValueError(f"the LM's vocab_size={lm.cfg.vocab_size} cannot hold register_vocab's {vocab.size} ids")
    y = np.asarray(labels)
    if y.ndim != 1 or y.size < 1 or not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"labels must be ints [M >= 1], got {y.dtype} {y.shape}")
    if callback is not None and not callable(callback):
        raise ValueError(f"callback must be callable(group, preview) or None, got {callback!r}")
    prompts = np.asarray(vocab.class_tokens(y), np.int32)[:, None]
    k_lm, k_dec = jax.random.split(key)
    logits = chain(allowed_tokens(jnp.asarray(vocab.code_mask(lm.cfg.vocab_size))), temperature_tf(lm_temperature))
    opts = dict(levels=levels, num_groups=num_groups, steps=steps, time_shift=time_shift, temperature=temperature,
                visible=visible, sampler=sampler, num_patches=num_patches)
    if callback is None:
        out = generate(lm, prompts, key=k_lm, max_new_tokens=N, logits=logits)
        ids = np.asarray(out.tokens)[:, 1:1 + N].astype(np.int32)
        dec = d_ar_decode(params, cfg, ids, k_dec, **opts)
        return DARSamples(x=np.asarray(dec.x), previews=np.asarray(dec.previews), ids=ids,
                          stats={**dict(out.stats), "flow_steps": int(steps)})

    got: list[np.ndarray] = []
    lm_steps = [0]

    def id_groups():
        rows: list[list[int]] = [[] for _ in range(y.size)]
        for step in stream(lm, prompts, key=k_lm, max_new_tokens=N, logits=logits):
            lm_steps[0] += 1
            for r, toks in zip(rows, step):
                r.extend(int(v) for v in np.asarray(toks))
            while min(len(r) for r in rows) >= n * (len(got) + 1):
                g = len(got)
                got.append(np.asarray([r[g * n:(g + 1) * n] for r in rows], np.int32))
                yield got[-1]

    previews, x = [], None
    for item in d_ar_stream(params, cfg, id_groups(), k_dec, **opts):
        p = np.asarray(item.preview)
        previews.append(p)
        x = item.x
        callback(item.group, p)
    if len(previews) != num_groups:
        raise ValueError(f"the LM emitted {sum(a.shape[1] for a in got)} ids, fewer than the {N} queries")
    ids = np.concatenate(got, axis=1)
    return DARSamples(x=np.asarray(x), previews=np.stack(previews), ids=ids,
                      stats={"lm_steps": lm_steps[0], "flow_steps": int(steps)})


d_ar = d_ar_generate  # the catalog's main name: the whole D-AR pipeline (NTP over query ids + streaming decode)


# ------------------------------------------------------------------------------------------ registry
def _register() -> None:
    from tokjax.losses.registry import register_loss

    register_loss("d_ar", make_d_ar_loss, {"levels": LEVELS, "num_groups": NUM_GROUPS, "visible": "group",
                                           "time_shift": TIME_SHIFT, "drop_quant": 0.0},
                  doc="P33 D-AR: rectified-flow loss of a sequential diffusion tokenizer (query encoder under "
                      "Prefix(P), FSQ, causal condition transformer; u ~ U[0,1), group floor(G u), t = shift(1 - u); "
                      "the decoder reads visible = 'group' | 'prefix' | 'full' conditions); batch needs x float "
                      "[B, P, c] (tokjax.vision.flextok.tokenizer_batch_fn); params from "
                      "tokjax.vision.d_ar.d_ar_init",
                  overwrite=True)


_register()
