"""Top-k sparse autoencoders (SAEs) on activations from any site of the shared forward (used by P27's analysis).

The top-k SAE of Gao et al., "Scaling and evaluating sparse autoencoders" (OpenAI 2024, arXiv 2406.04093):

    pre   = ReLU( (x - b_dec) W_enc + b_enc )                 x [.., d_in], W_enc [d_in, d_sae]
    z     = TopK_k(pre)       (the k largest entries kept, every other one set to 0)
    x_hat = z . unit_rows(W_dec) + b_dec                      W_dec [d_sae, d_in]
    loss  = sum ||x - x_hat||^2 / sum ||x - mean_batch(x)||^2 (normalised MSE, the logged "nmse")

``b_dec`` is the pre-encoder bias (subtracted before encoding, added back after decoding). The
paper keeps decoder rows at unit norm by renormalising after every step (and projecting the
gradient); here the decoder is *parametrised* by its row directions: :func:`sae_decode` divides
each row of ``W_dec`` by its norm, so the effective decoder always has unit rows, the gradient is
projected by the chain rule, and training needs no private loop (it runs through
:func:`tokjax.train.train`; see :func:`tokjax.train.recipes.sae.train_sae`). Initialisation
follows the paper: random unit decoder rows, ``W_enc = W_dec^T``, zero biases (the recipe sets
``b_dec`` to the data mean; the paper uses the geometric median). The paper's AuxK loss for
reviving dead latents needs per-latent state across steps (tokens since each latent last fired),
which a pure loss cannot keep; it is left out, and the fraction of dead latents is measured instead.

Top-k and ``k``: :func:`jax.lax.top_k` needs a static number of slots ``K``. ``k`` may be a Python
int (then ``K = k``) or an int array (runtime: a sweep over k does not recompile); a runtime k
keeps the first k of ``K = k_max`` static slots (``k_max`` defaults to ``d_sae``, a full sort).
Ties are broken toward the lower latent index, as ``lax.top_k`` does. Under ``jit`` a runtime k is
clipped to [0, K]; the host entry points validate it.

* :func:`sae_init`, :func:`sae_encode` (dense codes), :func:`sae_encode_sparse` (:class:`SparseCodes`),
  :func:`sae_decode`, :func:`sae_loss` (the ``loss_fn(params, cfg, batch, rng)`` that
  :func:`tokjax.train.train` takes, batch ``{"x": [N, d_in], "k": int}``).
* :func:`sae_activations` (sparse codes of many rows, in chunks), :func:`sae_metrics` (normalised
  MSE, dead fraction and L0 over a whole set) and :func:`collect_activations` (activations of one
  site for many token rows, through the forward's taps, with their token ids).
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from tokjax.analysis.patching import _unpack, parse_site
from tokjax.model.forward import Inputs, Taps, forward

__all__ = [
    "SparseCodes", "collect_activations", "sae_activations", "sae_decode", "sae_encode", "sae_encode_sparse",
    "sae_init", "sae_loss", "sae_metrics",
]

_F32 = jnp.float32
_PARAM_KEYS = ("W_enc", "b_enc", "W_dec", "b_dec")


class SparseCodes(NamedTuple):
    """Top-k SAE codes in sparse form: ``indices`` int32 [..., K] (latent ids, by decreasing pre-activation)
    and ``values`` float32 [..., K] (0 for slots beyond k and for latents whose ReLU is 0)."""

    indices: jax.Array
    values: jax.Array


# ----------------------------------------------------------------------------------------- checks
def _static_int(v: Any) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def _dims(params) -> tuple[int, int]:
    """Returns (d_in, d_sae) of SAE params after checking their keys and shapes."""
    if not isinstance(params, dict) or any(k not in params for k in _PARAM_KEYS):
        got = sorted(params) if isinstance(params, dict) else type(params).__name__
        raise ValueError(f"SAE params must be a dict with keys {_PARAM_KEYS} (from sae_init), got {got}")
    d_in, d_sae = jnp.shape(params["W_enc"]) if jnp.ndim(params["W_enc"]) == 2 else (None, None)
    want = {"W_enc": (d_in, d_sae), "b_enc": (d_sae,), "W_dec": (d_sae, d_in), "b_dec": (d_in,)}
    for name, shape in want.items():
        if d_in is None or tuple(jnp.shape(params[name])) != shape:
            raise ValueError(f"SAE params must be W_enc [d_in, d_sae], b_enc [d_sae], W_dec [d_sae, d_in], b_dec "
                             f"[d_in]; got shapes { {k: tuple(jnp.shape(params[k])) for k in _PARAM_KEYS} }")
    return int(d_in), int(d_sae)


def _check_x(x, d_in: int, name: str = "x") -> jax.Array:
    x = jnp.asarray(x)
    if x.ndim < 1 or x.shape[-1] != d_in:
        raise ValueError(f"{name} must be [..., d_in={d_in}] activations, got shape {x.shape}")
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise ValueError(f"{name} must be floating point activations, got dtype {x.dtype}")
    return x


def _slots(k, k_max, d_sae: int) -> tuple[int, jax.Array | None]:
    """Returns (K static slots, runtime k or None when k is the static K) after checking k and k_max."""
    if k_max is not None and not (_static_int(k_max) and 1 <= k_max <= d_sae):
        raise ValueError(f"k_max must be a Python int in [1, d_sae={d_sae}] (the static number of top-k slots), "
                         f"got {k_max!r}")
    if _static_int(k):
        if not 1 <= k <= d_sae:
            raise ValueError(f"k must lie in [1, d_sae={d_sae}], got {k}")
        if k_max is not None and k > k_max:
            raise ValueError(f"k={k} exceeds k_max={k_max}")
        return int(k), None
    karr = jnp.asarray(k)
    if karr.ndim != 0 or not jnp.issubdtype(karr.dtype, jnp.integer):
        raise ValueError(f"k must be an int or an int scalar array (the number of active latents), got {k!r}")
    K = d_sae if k_max is None else int(k_max)
    if not isinstance(karr, jax.core.Tracer):
        kv = int(karr)
        if not 1 <= kv <= K:
            raise ValueError(f"k must lie in [1, {'d_sae' if k_max is None else 'k_max'}={K}], got {kv}")
    return K, karr


# ------------------------------------------------------------------------------------------- model
def sae_init(key: jax.Array, d_in: int, d_sae: int, *, k: int | None = None, dtype=jnp.float32) -> dict:
    """Returns SAE params ``{"W_enc" [d_in, d_sae], "b_enc" [d_sae], "W_dec" [d_sae, d_in], "b_dec" [d_in]}``.

    Gao et al.'s initialisation: decoder rows are random unit vectors, ``W_enc = W_dec^T``, biases
    are zero. ``k`` (optional) is only checked against ``d_sae`` here: it is an argument of every
    encode call, not a parameter, so one set of params serves any k.
    """
    for name, v in (("d_in", d_in), ("d_sae", d_sae)):
        if not _static_int(v) or v < 1:
            raise ValueError(f"{name} must be an int >= 1, got {v!r}")
    if k is not None and not (_static_int(k) and 1 <= k <= d_sae):
        raise ValueError(f"k must be an int in [1, d_sae={d_sae}], got {k!r}")
    w = jax.random.normal(key, (d_sae, d_in), _F32)
    w = w / jnp.linalg.norm(w, axis=-1, keepdims=True)
    return {"W_enc": w.T.astype(dtype), "b_enc": jnp.zeros((d_sae,), dtype), "W_dec": w.astype(dtype),
            "b_dec": jnp.zeros((d_in,), dtype)}


def _unit_rows(w: jax.Array) -> jax.Array:
    n = jnp.sqrt(jnp.sum(jnp.square(w.astype(_F32)), axis=-1, keepdims=True))
    return w.astype(_F32) / jnp.maximum(n, 1e-12)


def sae_encode_sparse(params: dict, x, k, *, k_max: int | None = None) -> SparseCodes:
    """Returns the top-k codes of ``x`` [..., d_in] as :class:`SparseCodes` ([..., K] indices and values).

    ``values`` are the k largest entries of ReLU((x - b_dec) W_enc + b_enc) (float32) in decreasing
    order, with their latent ``indices``; slots past a runtime ``k`` hold 0. ``K`` is ``k`` for a
    Python int, else ``k_max`` (default ``d_sae``).
    """
    d_in, d_sae = _dims(params)
    x = _check_x(x, d_in)
    K, kr = _slots(k, k_max, d_sae)
    pre = (x.astype(_F32) - params["b_dec"].astype(_F32)) @ params["W_enc"].astype(_F32) + params["b_enc"].astype(_F32)
    values, indices = jax.lax.top_k(jax.nn.relu(pre), K)
    if kr is not None:
        values = jnp.where(jnp.arange(K) < jnp.clip(kr, 0, K), values, 0.0)
    return SparseCodes(indices.astype(jnp.int32), values)


def _densify(codes: SparseCodes, d_sae: int) -> jax.Array:
    lead = codes.values.shape[:-1]
    K = codes.values.shape[-1]
    idx = codes.indices.reshape(-1, K)
    rows = jnp.arange(idx.shape[0])[:, None]
    dense = jnp.zeros((idx.shape[0], d_sae), codes.values.dtype).at[rows, idx].set(codes.values.reshape(-1, K))
    return dense.reshape(lead + (d_sae,))


def sae_encode(params: dict, x, k, *, k_max: int | None = None) -> jax.Array:
    """Returns float32 [..., d_sae] top-k codes of ``x`` [..., d_in]: the k largest ReLU pre-activations, others 0.

    ``k``: a Python int, or an int scalar array (runtime; at most ``k_max`` slots, default d_sae).
    """
    _, d_sae = _dims(params)
    return _densify(sae_encode_sparse(params, x, k, k_max=k_max), d_sae)


def sae_decode(params: dict, z) -> jax.Array:
    """Returns float32 [..., d_in] reconstructions ``z . unit_rows(W_dec) + b_dec`` of codes ``z``.

    ``z``: dense codes [..., d_sae] or :class:`SparseCodes` (a gather of k decoder rows per input).
    Each decoder row is divided by its norm here, so the effective decoder has unit rows whatever
    the stored ``W_dec`` (the renormalisation is part of the parametrisation).
    """
    d_in, d_sae = _dims(params)
    b = params["b_dec"].astype(_F32)
    if isinstance(z, SparseCodes):
        idx, val = jnp.asarray(z.indices), jnp.asarray(z.values, _F32)
        if idx.shape != val.shape or idx.ndim < 1 or not jnp.issubdtype(idx.dtype, jnp.integer):
            raise ValueError(f"SparseCodes needs int indices and values of one shape [..., K], got {idx.shape} "
                             f"{idx.dtype} and {val.shape}")
        w = params["W_dec"].astype(_F32)
        norms = jnp.maximum(jnp.sqrt(jnp.sum(w * w, axis=-1)), 1e-12)
        rows = w[idx] / norms[idx][..., None]  # [..., K, d_in]
        return jnp.einsum("...k,...kd->...d", val, rows) + b
    z = jnp.asarray(z)
    if z.ndim < 1 or z.shape[-1] != d_sae:
        raise ValueError(f"codes must be [..., d_sae={d_sae}] (or SparseCodes), got shape {z.shape}")
    return z.astype(_F32) @ _unit_rows(params["W_dec"]) + b


def _nmse_parts(x: jax.Array, x_hat: jax.Array) -> tuple[jax.Array, jax.Array]:
    x = x.astype(_F32)
    err = jnp.sum(jnp.square(x - x_hat))
    var = jnp.sum(jnp.square(x - jnp.mean(x, axis=0, keepdims=True)))
    return err, var


def sae_loss(params: dict, cfg, batch, rng=None, *, k_max: int | None = None):
    """Returns (loss, metrics) for a batch ``{"x": float [N, d_in], "k": int scalar}``: the train-loss signature.

    ``loss`` = normalised MSE, sum ||x - x_hat||^2 / sum ||x - mean(x)||^2 over the batch (the
    variance is the batch's own; a batch of identical rows has its denominator floored at 1e-12).
    ``cfg`` and ``rng`` are unused (``train(None, ...)`` passes cfg=None). ``k`` is read from the
    batch, so it is a runtime value bounded by the static ``k_max`` (bind it with
    ``functools.partial(sae_loss, k_max=...)``; default d_sae, a full sort per row). Metrics:
    ``nmse``, ``mse`` (per element), ``l0`` (mean number of non-zero codes per row) and
    ``dead_frac``, the fraction of latents that fire on no row *of this batch* (the recipe's
    history averages it over the logging window; :func:`sae_metrics` measures it over a whole set).
    """
    del cfg, rng
    if not isinstance(batch, dict) or "x" not in batch or "k" not in batch:
        got = sorted(batch) if isinstance(batch, dict) else type(batch).__name__
        raise ValueError(f"sae_loss needs a batch {{'x': float [N, d_in], 'k': int}}, got {got}")
    d_in, d_sae = _dims(params)
    x = _check_x(batch["x"], d_in, "batch['x']")
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"batch['x'] must be [N >= 2, d_in] (the normaliser is the batch variance), got {x.shape}")
    codes = sae_encode_sparse(params, x, jnp.asarray(batch["k"], jnp.int32), k_max=k_max)
    K = codes.values.shape[-1]
    # A gather of K decoder rows per input is cheaper than the dense product when K is small.
    x_hat = sae_decode(params, codes) if 4 * K <= d_sae else sae_decode(params, _densify(codes, d_sae))
    err, var = _nmse_parts(x, x_hat)
    nmse = err / jnp.maximum(var, 1e-12)
    active = codes.values > 0
    fired = jnp.zeros((d_sae,), jnp.int32).at[codes.indices.reshape(-1)].max(active.reshape(-1).astype(jnp.int32))
    metrics = {"nmse": nmse, "mse": err / x.size, "l0": jnp.mean(jnp.sum(active, axis=-1).astype(_F32)),
               "dead_frac": (d_sae - jnp.sum(fired)).astype(_F32) / d_sae}
    return nmse, metrics


# ------------------------------------------------------------------------------- many rows (host)
@functools.partial(jax.jit, static_argnames=("k",))
def _encode_chunk(params, x, k):
    return sae_encode_sparse(params, x, k)


def _chunks(x: np.ndarray, chunk: int):
    """Yields (start, n, padded chunk [chunk, d]) so every jitted call sees one shape."""
    for s in range(0, x.shape[0], chunk):
        part = x[s : s + chunk]
        n = part.shape[0]
        if n < chunk:
            part = np.concatenate([part, np.zeros((chunk - n,) + part.shape[1:], part.dtype)])
        yield s, n, part


def _check_rows(x, d_in: int, name: str) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim != 2 or x.shape[1] != d_in or x.shape[0] < 1:
        raise ValueError(f"{name} must be [N >= 1, d_in={d_in}], got shape {x.shape}")
    if x.dtype.kind != "f":
        raise ValueError(f"{name} must be floating point, got dtype {x.dtype}")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{name} holds non-finite values (NaN or inf)")
    return x.astype(np.float32, copy=False)


def sae_activations(params: dict, x, k: int, *, chunk: int = 4096) -> SparseCodes:
    """Returns numpy :class:`SparseCodes` (int32 / float32 [N, k]) of the rows ``x`` [N, d_in], ``chunk`` rows per call.

    The convenience for large activation sets (300k rows x d_sae latents would not fit densely):
    the codes of :func:`sae_encode_sparse` with a static int ``k``, one jitted program for every chunk.
    """
    d_in, d_sae = _dims(params)
    x = _check_rows(x, d_in, "x")
    if not _static_int(k) or not 1 <= k <= d_sae:
        raise ValueError(f"k must be a Python int in [1, d_sae={d_sae}], got {k!r}")
    if not _static_int(chunk) or chunk < 1:
        raise ValueError(f"chunk must be an int >= 1, got {chunk!r}")
    chunk = min(int(chunk), x.shape[0])
    idx = np.empty((x.shape[0], k), np.int32)
    val = np.empty((x.shape[0], k), np.float32)
    for s, n, part in _chunks(x, chunk):
        c = jax.device_get(_encode_chunk(params, part, int(k)))
        idx[s : s + n], val[s : s + n] = c.indices[:n], c.values[:n]
    return SparseCodes(idx, val)


@jax.jit
def _decode_chunk(params, codes):
    return sae_decode(params, codes)


def sae_metrics(params: dict, x, k: int, *, chunk: int = 4096) -> dict[str, float]:
    """Returns {"nmse", "dead_frac", "l0", "n"} of the SAE over all rows ``x`` [N, d_in].

    ``nmse`` = sum ||x - x_hat||^2 / sum ||x - mean(x)||^2 over the whole set; ``dead_frac`` = the
    fraction of latents that fire (a non-zero code) on none of the N rows; ``l0`` = mean non-zero
    codes per row.
    """
    d_in, d_sae = _dims(params)
    x = _check_rows(x, d_in, "x")
    codes = sae_activations(params, x, k, chunk=chunk)
    chunk = min(int(chunk), x.shape[0])
    err = 0.0
    for s in range(0, x.shape[0], chunk):
        n = min(chunk, x.shape[0] - s)
        pad = ((0, chunk - n), (0, 0))  # every call sees one shape
        c = SparseCodes(np.pad(codes.indices[s : s + n], pad), np.pad(codes.values[s : s + n], pad))
        x_hat = np.asarray(_decode_chunk(params, c))[:n]
        err += float(np.sum(np.square(x[s : s + n].astype(np.float64) - x_hat)))
    var = float(np.sum(np.square(x.astype(np.float64) - x.astype(np.float64).mean(0))))
    active = codes.values > 0
    fired = np.zeros(d_sae, bool)
    fired[codes.indices[active]] = True
    return {"nmse": err / max(var, 1e-12), "dead_frac": 1.0 - float(fired.mean()),
            "l0": float(active.sum(-1).mean()), "n": int(x.shape[0])}


# ------------------------------------------------------------------------ activations from the LM
_SAE_SITES = ("resid_pre", "attn_heads", "attn_out", "mlp_out", "resid_post", "keys", "values")


@functools.partial(jax.jit, static_argnames=("cfg", "layer", "kind"))
def _tap(params, cfg, tokens, layer: int, kind: str):
    # Layers after the tapped one are not run (layers=(0, layer + 1)) and no logits are made.
    out = forward(params, cfg, Inputs(tokens=tokens), layers=(0, layer + 1),
                  taps=Taps(layers=(layer,), sites=(kind,)), compute_logits=False)
    a = out.taps[kind][0]
    return a.reshape(a.shape[:2] + (-1,)).astype(_F32)


def collect_activations(model, tokens, site: str, *, mask=None, skip_first: int = 0,
                        batch_size: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """Returns (x float32 [M, D'], token_ids int32 [M]): the activations at ``site`` of every kept position.

    ``model``: a :class:`tokjax.Model` or ``(params, cfg)``; ``tokens`` int [N, T] rows (T <=
    max_len), run ``batch_size`` rows per jitted forward that stops after the tapped layer;
    ``site``: ``"layer.<i>.<s>"`` with s one of resid_pre, attn_heads, attn_out, mlp_out,
    resid_post, keys, values (per-head sites are flattened to H * head_size). Kept positions are
    those with ``mask`` [N, T] true (padding out) and index >= ``skip_first`` (e.g. 1 to drop the
    first position, whose residual norm is often an outlier), in row-major order; ``token_ids`` are
    the tokens *at* those positions, aligned with ``x`` (what :func:`tokjax.analysis.function_tokens.
    feature_coverage` needs).
    """
    params, cfg = _unpack(model)
    layer, kind = parse_site(site, cfg.n_layers)
    if layer is None:
        raise ValueError(f"site {site!r} must name one layer ('layer.<i>.{kind}'), not every layer")
    if kind not in _SAE_SITES:
        raise ValueError(f"site {site!r}: an SAE needs one vector per token; expected a site in {_SAE_SITES}")
    tok = np.asarray(tokens)
    if tok.ndim != 2 or tok.shape[0] < 1 or tok.shape[1] < 1 or tok.dtype.kind not in "iu":
        raise ValueError(f"tokens must be int [N, T] with N, T >= 1, got shape {tok.shape} dtype {tok.dtype}")
    if tok.shape[1] > cfg.max_len:
        raise ValueError(f"tokens have T={tok.shape[1]} positions, more than the model's max_len={cfg.max_len}")
    if tok.min() < 0 or tok.max() >= cfg.vocab_size:
        raise ValueError(f"token ids must lie in [0, vocab_size={cfg.vocab_size}), got [{tok.min()}, {tok.max()}]")
    keep = np.ones(tok.shape, bool)
    if mask is not None:
        m = np.asarray(mask)
        if m.shape != tok.shape:
            raise ValueError(f"mask must be [N, T] = {tok.shape} like tokens, got shape {m.shape}")
        keep &= m.astype(bool)
    if not _static_int(skip_first) or not 0 <= skip_first < tok.shape[1]:
        raise ValueError(f"skip_first must be an int in [0, T={tok.shape[1]}), got {skip_first!r}")
    keep[:, :skip_first] = False
    if not _static_int(batch_size) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
    batch_size = min(int(batch_size), tok.shape[0])
    tok = tok.astype(np.int32)
    xs = []
    for s, n, part in _chunks(tok, batch_size):
        a = np.asarray(jax.device_get(_tap(params, cfg, part, layer, kind)))[:n]
        xs.append(a[keep[s : s + n]])
    return np.concatenate(xs, axis=0), tok[keep]
