"""NeoDiff (P67): non-simultaneous continuous diffusion of token embeddings, with a per-token intrinsic time.

Paper: *Unifying Continuous and Discrete Text Diffusion with Non-simultaneous Diffusion Processes* (Li et al.,
ACL 2025, arXiv 2505.22165; P67). Official code: ``bc-li/neodiff`` (fairseq) -- ``neodiff/scheduler/nonsim.py``
(``PoissonScheduler.sample_taus`` / ``process_tau`` / ``create_labels``), ``scheduler/scheduler.py`` (noise
schedules, ``forward``), ``neodiff/neodiff.py`` (the losses, ``forward_decoder``), ``modules.py``
(``TauPredictor``) and ``scripts/iwslt14_de_en/train_neodiff.sh`` (the configuration). Read there; this
module is written anew on the shared forward.

Two times. An extrinsic time t in [0, 1] per sequence, and an intrinsic time (noise level) tau_i per token on
the grid {0, 1, ..., M} (M = ``num_tau`` - 1). ``scheme`` says how tau_i is drawn given t (``sample_taus``)::

    "poisson"           tau_i = min(k_i, M),  k_i ~ Poisson(lambda(t)),  lambda(t) = lam_scale M t   (capped)
    "poisson_rescaled"  tau_i = clip(round((k_i - lambda) / sqrt(lambda) * spread M t + lambda), 0, M)
                        (the official ``PoissonScheduler`` with ``trans_schedule="constant_same"``: lam_scale =
                        spread = 2; the Poisson shape rescaled to standard deviation spread M t)
    "continuous"        tau_i = M t for every token (``DeterministicScheduler``: plain continuous diffusion)
    "absorbing"         tau_i = M with probability t, else 0 (discrete absorbing diffusion, "masking")

Forward process (``scheduler.forward`` with ``forward_coeff_type="sqrt"`` and the ``sqrt`` noise schedule)::

    z_i = sqrt(abar(s_i)) emb(x_i) + sqrt(1 - abar(s_i)) sigma eps_i,   s_i = tau_i / M,
    abar(s) = clip(1 - sqrt(s + shift), 0, 1)                                               (P67, eq. forward)

emb is the model's (tied) embedding table with every row scaled to unit RMS (the official ``--embed-norm``
option, without affine; it keeps the signal-to-noise ratio of a level fixed while the table trains). So
tau = 0 with ``shift`` = 0 is the clean embedding and tau = M is pure noise sigma eps, which carries nothing
about x_i: with tau in {0, M} the process is absorbing masking ("absorbing", or "poisson" with num_tau = 2,
whose mask rate is 1 - exp(-lam_scale t)); tau = M t for all tokens is ordinary continuous diffusion
(Diffusion-LM's sqrt schedule). Both reductions are tested.

Denoiser. The shared forward reads ``[source tokens, z]`` under a ``Rank`` mask (source rank 0, target rank 1:
the source is a bidirectional prefix, the target attends to everything; the official model is an encoder-decoder
with cross-attention); every target slot gets the time embedding of its own s_i added at every layer's
``resid_pre`` (:func:`tokjax.vision.flow.cond_hooks`); a linear read-out of the final hidden state is
x0_hat_i. Rounding: logits_i = x0_hat_i emb^T (through the tied table, over the first ``num_targets`` ids).

Time predictor (``TauPredictor``, ``--tau-predictor-layers 1``): one transformer layer over
``[source, stop_gradient(x0_hat)]`` (same mask), with the time embedding of t added at the target slots, and a
linear read-out of tau / M (the official ``--tau-mse`` regression head, which the released configuration trains).
Its labels (``create_labels``): rank the target tokens of a row by their loss (``--tau-loss-anchor``: MSE + CE)
and give the token of rank r the Poisson quantile of level ``(r + 0.5) / n`` at t, so harder tokens get more
noise (:func:`tau_labels`).

Loss (``NeoDiff.forward``; per token, averaged over the target tokens)::

    L = w_z |x0_hat - emb(x)|^2 / D  +  w_anchor CE(x0_hat emb^T, x)  +  w_tau (tau_hat / M - label / M)^2

Decoding (``forward_decoder`` + ``NonSimScheduler.reverse``; :class:`NeoDiffDecode`): start at t = 1 with
z = sigma eps and every tau = M; at step k of S (t = 1 - k / S) denoise to x0_hat, then at the next time
t' = t - 1 / S choose tau_hat per token and re-noise: z = sqrt(abar(tau_hat / M)) x0_hat + sqrt(1 - abar)
sigma eps' (fresh noise). ``tau_source``: "predictor" (the time predictor at t'; the paper's method),
"confidence" (the official ``method="cmlm"``: :func:`tau_labels` of the negated confidence max_v log p_v, so
the least confident tokens get the most noise; with "absorbing" this is mask-predict) or "schedule" (fresh
draws of the scheme at t', the official path without a predictor; for "continuous" every choice is M t').
The last step commits argmax(logits) (the rounding; ``sample=True`` draws from softmax(logits) instead;
logit transforms are not applied).

Runtime hyperparameters (arrays; ``batch["hparams"]`` / the strategy's ``hparams``; a new value does not
recompile): ``lam_scale``, ``spread``, ``noise_scale`` (sigma; official ``--noise-factor 6.5`` for a 128-d latent
of learned scale; default 1 here, for unit-RMS embeddings), ``shift`` (official 1e-4), ``w_z``, ``w_anchor``,
``w_tau``. Static: ``scheme``, ``num_tau``, ``num_targets``, ``predictor``.

Deviations (recorded): no self-conditioning, length prediction, label smoothing or Bayesian-optimised extrinsic
schedule (uniform t grid); abar is clipped at 0 (official 1e-8, a 1e-4 signal coefficient at tau = M); the
official ``sample_taus`` sets tau = 1 for t > 0.99 (a leftover of a [0, 1]-scaled tau, it seems), not done here;
the predictor does not train the denoiser or the embeddings (its inputs are stop-gradient; the official
predictor also detaches x0_hat but lets its cross-attention train the encoder).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from tokjax.decoding._state import DecodeState, Strategy, commit
from tokjax.logits import check_range, hparam
from tokjax.model import Inputs, Model, ModelConfig, embedding_matrix, forward, init_params
from tokjax.model.attention import Rank
from tokjax.vision.flow import _dense, _linear, cond_hooks, time_embed, time_embed_init

__all__ = [
    "HPARAMS", "NEODIFF_KEY", "SCHEMES", "TAU_SOURCES", "NeoDiffDecode", "NeoDiffDecodeState", "NeoDiffSamples",
    "alpha_bar", "default_hparams", "embed_table", "make_neodiff_loss", "neodiff_decoder", "neodiff_denoise",
    "neodiff_init", "neodiff_loss", "neodiff_sample", "noise_tokens", "predict_tau", "sample_taus", "tau_labels",
    "tau_pmf", "tau_quantile",
]

_F32 = jnp.float32
NEODIFF_KEY = "neodiff"
SCHEMES = ("poisson", "poisson_rescaled", "continuous", "absorbing")
TAU_SOURCES = ("predictor", "confidence", "schedule")
HPARAMS = ("lam_scale", "spread", "noise_scale", "shift", "w_z", "w_anchor", "w_tau")
_LOWER = {"lam_scale": (0.0, True), "spread": (0.0, False), "noise_scale": (0.0, False), "shift": (0.0, False),
          "w_z": (0.0, False), "w_anchor": (0.0, False), "w_tau": (0.0, False)}


def _concrete(*xs) -> bool:
    return not any(isinstance(x, jax.core.Tracer) for x in xs)


def _check_int(name: str, value: Any, lo: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or int(value) < lo:
        raise ValueError(f"{name} must be an int >= {lo}, got {value!r}")
    return int(value)


def _check_scheme(scheme: str) -> str:
    if scheme not in SCHEMES:
        raise ValueError(f"scheme must be one of {SCHEMES}, got {scheme!r}")
    return scheme


def default_hparams(scheme: str = "poisson") -> dict:
    """Returns the default runtime hyperparameters of ``scheme`` (lam_scale 2 for the official
    "poisson_rescaled", 1 otherwise, so that E[tau] = M t for the plain capped Poisson at small t)."""
    _check_scheme(scheme)
    return {"lam_scale": 2.0 if scheme == "poisson_rescaled" else 1.0, "spread": 2.0, "noise_scale": 1.0,
            "shift": 1e-4, "w_z": 1.0, "w_anchor": 1.0, "w_tau": 1.0}


def _hparams(hp: Any, scheme: str) -> dict:
    """Returns {name: float32 array} = the defaults of ``scheme`` updated by ``hp`` (a dict or None)."""
    if hp is None:
        hp = {}
    if not isinstance(hp, dict):
        raise ValueError(f"hparams must be a dict with keys from {HPARAMS}, got {type(hp).__name__}")
    unknown = sorted(set(hp) - set(HPARAMS))
    if unknown:
        raise ValueError(f"unknown NeoDiff hyperparameters {unknown}; valid: {HPARAMS}")
    out = {**default_hparams(scheme), **hp}
    for name, (lo, lo_open) in _LOWER.items():
        check_range(out[name], name, lo=lo, lo_open=lo_open)
    return {k: jnp.asarray(v, _F32) for k, v in out.items()}


def _check_t(t: Any) -> jax.Array:
    t = jnp.asarray(t, _F32)
    if t.ndim != 1:
        raise ValueError(f"t must be float [batch] (one extrinsic time per sequence), got shape {t.shape}")
    check_range(t, "t", lo=0.0, hi=1.0)
    return t


# ------------------------------------------------------------------------------------------- schedules
def alpha_bar(s: Any, shift: Any = 1e-4) -> jax.Array:
    """Returns abar(s) = clip(1 - sqrt(s + shift), 0, 1), the official ``sqrt`` noise schedule, for the
    rescaled intrinsic time s = tau / M in [0, 1] (P67)."""
    s = jnp.asarray(s, _F32)
    return jnp.clip(1.0 - jnp.sqrt(jnp.maximum(s + shift, 0.0)), 0.0, 1.0)


def _lam(t: jax.Array, M: int, hp: dict) -> jax.Array:
    return hp["lam_scale"] * M * t


def _rescale(k: jax.Array, lam: jax.Array, t: jax.Array, M: int, hp: dict, scheme: str) -> jax.Array:
    """The official ``process_tau`` (rescaled) or the plain cap, as float levels in [0, M]."""
    if scheme == "poisson":
        return jnp.minimum(k, M).astype(_F32)
    tau = (k - lam) / (jnp.sqrt(lam) + 1e-8) * (hp["spread"] * M * t) + lam
    return jnp.clip(jnp.round(tau), 0, M).astype(_F32)


def sample_taus(key: jax.Array, t: Any, length: int, *, scheme: str = "poisson", num_tau: int = 10,
                hparams: Any = None) -> jax.Array:
    """Returns float32 [B, length]: intrinsic times tau_i in [0, M] drawn given the extrinsic times ``t`` [B]
    (module docstring; integers except for "continuous", where tau = M t). Raises ValueError for t outside
    [0, 1], num_tau < 2 or an unknown scheme."""
    scheme = _check_scheme(scheme)
    M = _check_int("num_tau", num_tau, 2) - 1
    length = _check_int("length", length, 1)
    hp = _hparams(hparams, scheme)
    t = _check_t(t)[:, None]
    shape = (t.shape[0], length)
    if scheme == "continuous":
        return jnp.broadcast_to(M * t, shape).astype(_F32)
    if scheme == "absorbing":
        return jnp.where(jax.random.uniform(key, shape) < t, float(M), 0.0).astype(_F32)
    lam = jnp.broadcast_to(_lam(t, M, hp), shape)
    k = jax.random.poisson(key, lam, shape).astype(_F32)
    return _rescale(k, lam, t, M, hp, scheme)


def _grid(num_tau: int) -> int:
    """Static size of the Poisson support the quantiles search (covers lam_scale up to ~4)."""
    return 6 * num_tau + 64


def _poisson_cdf(lam: jax.Array, K: int) -> jax.Array:
    """Returns float32 [..., K]: P(k' <= k) for k = 0..K-1 under Poisson(lam [...]) (cumulative pmf)."""
    k = jnp.arange(K, dtype=_F32)
    logp = jax.scipy.special.xlogy(k, lam[..., None]) - lam[..., None] - jax.scipy.special.gammaln(k + 1.0)
    return jnp.minimum(jnp.cumsum(jnp.exp(logp), axis=-1), 1.0)


def tau_quantile(q: Any, t: Any, *, scheme: str = "poisson", num_tau: int = 10, hparams: Any = None) -> jax.Array:
    """Returns float32 [B, L]: the q-quantile (smallest level with CDF >= q) of tau given t, for levels
    ``q`` [B, L] in [0, 1] and times ``t`` [B] (the official ``poisson.ppf`` + ``process_tau``; the rescaling is
    monotone, so it maps quantiles to quantiles)."""
    scheme = _check_scheme(scheme)
    M = _check_int("num_tau", num_tau, 2) - 1
    hp = _hparams(hparams, scheme)
    t = _check_t(t)
    q = jnp.asarray(q, _F32)
    if q.ndim != 2 or q.shape[0] != t.shape[0]:
        raise ValueError(f"q must be [batch={t.shape[0]}, length], got shape {q.shape}")
    tc = t[:, None]
    if scheme == "continuous":
        return jnp.broadcast_to(M * tc, q.shape).astype(_F32)
    if scheme == "absorbing":
        return jnp.where(q > 1.0 - tc, float(M), 0.0).astype(_F32)
    lam = _lam(t, M, hp)
    cdf = _poisson_cdf(lam, _grid(num_tau))  # [B, K]
    k = jnp.sum(cdf[:, None, :] < q[..., None], axis=-1).astype(_F32)  # [B, L]
    return _rescale(k, lam[:, None], tc, M, hp, scheme)


def tau_pmf(t: Any, *, scheme: str = "poisson", num_tau: int = 10, hparams: Any = None) -> jax.Array:
    """Returns float32 [B, M + 1]: P(tau = m | t) for every level m and time ``t`` [B] (not for "continuous",
    whose tau = M t need not be a level). The exact law :func:`sample_taus` draws from."""
    scheme = _check_scheme(scheme)
    if scheme == "continuous":
        raise ValueError("tau_pmf: the 'continuous' scheme is deterministic (tau = M t, not a grid level)")
    M = _check_int("num_tau", num_tau, 2) - 1
    hp = _hparams(hparams, scheme)
    t = _check_t(t)
    if scheme == "absorbing":
        return jnp.zeros((t.shape[0], M + 1), _F32).at[:, 0].set(1.0 - t).at[:, M].add(t)
    K = _grid(num_tau)
    lam = _lam(t, M, hp)
    cdf = _poisson_cdf(lam, K)
    pmf = jnp.diff(cdf, axis=-1, prepend=0.0)
    pmf = pmf.at[:, -1].add(1.0 - cdf[:, -1])  # the tail beyond the grid maps with its last point
    lev = _rescale(jnp.arange(K, dtype=_F32)[None], lam[:, None], t[:, None], M, hp, scheme).astype(jnp.int32)
    return jax.vmap(lambda p, l: jnp.zeros((M + 1,), _F32).at[l].add(p))(pmf, lev)


def tau_labels(loss: Any, valid: Any, t: Any, *, scheme: str = "poisson", num_tau: int = 10,
               hparams: Any = None) -> jax.Array:
    """Returns float32 [B, L]: the time predictor's labels (official ``create_labels``): in each row the
    valid tokens ranked by ``loss`` [B, L] (lowest first) get the levels tau_quantile((r + 0.5) / n, t) of
    their rank r among the row's n valid tokens, so the hardest token gets the most noise; -1 where
    ``valid`` [B, L] is False."""
    loss = jnp.asarray(loss, _F32)
    valid = jnp.asarray(valid)
    if loss.ndim != 2 or valid.shape != loss.shape or valid.dtype != jnp.bool_:
        raise ValueError(f"loss must be float [B, L] and valid bool of the same shape, got {loss.shape} and "
                         f"{valid.dtype} {valid.shape}")
    B, L = loss.shape
    n = jnp.maximum(jnp.sum(valid, axis=-1, keepdims=True), 1).astype(_F32)
    ref = jnp.clip((jnp.arange(L, dtype=_F32)[None] + 0.5) / n, 0.0, 1.0)
    ref_taus = tau_quantile(ref, t, scheme=scheme, num_tau=num_tau, hparams=hparams)
    rank = jnp.argsort(jnp.argsort(jnp.where(valid, loss, jnp.inf), axis=-1), axis=-1)
    labels = jnp.take_along_axis(ref_taus, rank, axis=-1)
    return jnp.where(valid, labels, -1.0)


def noise_tokens(x0: Any, taus: Any, eps: Any, *, num_tau: int = 10, hparams: Any = None) -> jax.Array:
    """Returns float32 [B, L, D]: z = sqrt(abar(tau / M)) x0 + sqrt(1 - abar(tau / M)) sigma eps (the forward
    process) for clean embeddings ``x0`` [B, L, D], levels ``taus`` [B, L] and standard noise ``eps``."""
    M = _check_int("num_tau", num_tau, 2) - 1
    hp = _hparams(hparams, "poisson")
    x0, eps = jnp.asarray(x0, _F32), jnp.asarray(eps, _F32)
    taus = jnp.asarray(taus, _F32)
    if x0.ndim != 3 or eps.shape != x0.shape or taus.shape != x0.shape[:2]:
        raise ValueError(f"x0 and eps must be [B, L, D] and taus [B, L], got {x0.shape}, {eps.shape}, {taus.shape}")
    a = alpha_bar(taus / M, hp["shift"])[..., None]
    return jnp.sqrt(a) * x0 + jnp.sqrt(1.0 - a) * hp["noise_scale"] * eps


# -------------------------------------------------------------------------------------------- params
def neodiff_init(params: dict, cfg: ModelConfig, key: jax.Array, *, predictor_layers: int = 1) -> dict:
    """Returns ``params`` plus ``params["neodiff"]``: the per-token time embedding ``time``, the x0 read-out
    ``out`` (D -> D), and the time predictor (``pred``: ``predictor_layers`` transformer layers and a final
    norm, ``pred_time``, ``pred_out``: D -> 1). ``params`` (``init_params(cfg, key)``) is the denoiser; its
    embedding table is the diffusion space."""
    if not isinstance(cfg, ModelConfig):
        raise ValueError(f"cfg must be the denoiser's ModelConfig, got {type(cfg).__name__}")
    if not isinstance(params, dict) or "embed" not in params or "layers" not in params:
        raise ValueError("params must be a tokjax parameter dict with 'embed' and 'layers' (init_params(cfg, key))")
    _check_model(cfg)
    n = _check_int("predictor_layers", predictor_layers, 1)
    ks = jax.random.split(key, 5)
    pp = init_params(dataclasses.replace(cfg, n_layers=n), ks[0])
    D = cfg.d_model
    return {**params, NEODIFF_KEY: {
        "time": time_embed_init(ks[1], D), "out": _linear(ks[2], D, D),
        "pred": {"layers": pp["layers"], "final_norm": pp["final_norm"]},
        "pred_time": time_embed_init(ks[3], D), "pred_out": _linear(ks[4], D, 1)}}


def _check_model(cfg: ModelConfig) -> None:
    if cfg.mixer != "attention" or cfg.pos_dims != 1:
        raise ValueError(f"NeoDiff needs an attention model with 1-D positions (a bidirectional Rank mask over "
                         f"[source, target]), got mixer={cfg.mixer!r}, pos_dims={cfg.pos_dims}")


def _nd(params) -> dict:
    if not isinstance(params, dict) or NEODIFF_KEY not in params:
        raise ValueError(f"params has no {NEODIFF_KEY!r} entry: add it with "
                         "tokjax.losses.neodiff.neodiff_init(params, cfg, key)")
    nd = params[NEODIFF_KEY]
    if not isinstance(nd, dict) or not {"time", "out", "pred", "pred_time", "pred_out"} <= set(nd):
        raise ValueError(f"params[{NEODIFF_KEY!r}] must hold 'time', 'out', 'pred', 'pred_time', 'pred_out' "
                         "(neodiff_init)")
    return nd


def embed_table(params) -> jax.Array:
    """Returns float32 [V, D]: the embedding table with unit-RMS rows (the diffusion space and the rounding
    head)."""
    e = jnp.asarray(embedding_matrix(params["embed"]), _F32)
    return e * jax.lax.rsqrt(jnp.mean(jnp.square(e), axis=-1, keepdims=True) + 1e-12)


def _ranks(P: int, L: int) -> jax.Array:
    return jnp.concatenate([jnp.zeros((P,), jnp.int32), jnp.ones((L,), jnp.int32)])


def _run(params, cfg, table, src, x, cond):
    """Final hidden states of the target slots of ``[table[src], x]`` with ``cond`` [B, L, D] at the targets."""
    P, L = src.shape[1], x.shape[1]
    e_src = table[src]
    e = jnp.concatenate([e_src, x], axis=1)
    c = jnp.concatenate([jnp.zeros_like(e_src), cond], axis=1)
    out = forward(params, cfg, Inputs(embeds=e.astype(cfg.dtype)), mask=Rank(_ranks(P, L)),
                  hooks=cond_hooks(c.astype(cfg.dtype)), compute_logits=False)
    return out.hidden[:, P:].astype(_F32)


def neodiff_denoise(params, cfg: ModelConfig, src: jax.Array, z: jax.Array, taus: jax.Array, *, num_tau: int,
                    num_targets: int | None = None) -> tuple[jax.Array, jax.Array]:
    """Returns (x0_hat float32 [B, L, D], rounding logits float32 [B, L, num_targets]): the denoiser on source
    ids ``src`` [B, P] and noisy embeddings ``z`` [B, L, D] at levels ``taus`` [B, L] (module docstring)."""
    nd = _nd(params)
    M = _check_int("num_tau", num_tau, 2) - 1
    table = embed_table(params)
    Vt = table.shape[0] if num_targets is None else num_targets
    cond = time_embed(nd["time"], jnp.asarray(taus, _F32) / M)
    x0_hat = _dense(nd["out"], _run(params, cfg, table, src, jnp.asarray(z, _F32), cond))
    return x0_hat, x0_hat @ table[:Vt].T


def predict_tau(params, cfg: ModelConfig, src: jax.Array, x0_hat: jax.Array, t: Any, *, num_tau: int) -> jax.Array:
    """Returns float32 [B, L]: the time predictor's levels tau_hat (unclipped; tau / M regression times M) for
    x0_hat [B, L, D] at extrinsic times ``t`` [B]. Its inputs are stop-gradient (module docstring)."""
    nd = _nd(params)
    M = _check_int("num_tau", num_tau, 2) - 1
    layers = nd["pred"]["layers"]
    n = int(jax.tree.leaves(layers)[0].shape[0])
    pcfg = dataclasses.replace(cfg, n_layers=n)
    shared = {k: v for k, v in params.items() if k not in ("layers", "final_norm", NEODIFF_KEY)}
    pp = {**shared, "layers": layers, "final_norm": nd["pred"]["final_norm"]}
    sg = jax.lax.stop_gradient
    x = sg(jnp.asarray(x0_hat, _F32))
    t = jnp.asarray(t, _F32)
    cond = jnp.broadcast_to(time_embed(nd["pred_time"], t)[:, None, :], x.shape)
    h = _run(pp, pcfg, sg(embed_table(params)), src, x, cond)
    return M * _dense(nd["pred_out"], h)[..., 0]


# ---------------------------------------------------------------------------------------------- loss
class _Batch(NamedTuple):
    src: jax.Array
    tgt: jax.Array
    valid: jax.Array


def _check_batch(batch, cfg: ModelConfig, num_targets: int | None) -> _Batch:
    if not isinstance(batch, dict) or "src" not in batch or "tgt" not in batch:
        raise ValueError("a neodiff batch needs 'src' int [B, P] (the source prefix: a class token, a prompt) and "
                         "'tgt' int [B, L] (the target); optional 'tgt_mask' bool [B, L], 't' [B], 'noise' "
                         "[B, L, D], 'hparams'")
    src, tgt = jnp.asarray(batch["src"]), jnp.asarray(batch["tgt"])
    for name, a in (("src", src), ("tgt", tgt)):
        if a.ndim != 2 or a.shape[1] < 1 or not jnp.issubdtype(a.dtype, jnp.integer):
            raise ValueError(f"{name} must be int [batch, len >= 1], got {a.dtype} {tuple(a.shape)}")
    if src.shape[0] != tgt.shape[0]:
        raise ValueError(f"src and tgt must have the same batch size, got {src.shape[0]} and {tgt.shape[0]}")
    if src.shape[1] + tgt.shape[1] > cfg.max_len:
        raise ValueError(f"[source {src.shape[1]}, target {tgt.shape[1]}] does not fit max_len={cfg.max_len}")
    Vt = cfg.vocab_size if num_targets is None else num_targets
    if _concrete(src, tgt):
        s, g = np.asarray(src), np.asarray(tgt)
        if s.min() < 0 or s.max() >= cfg.vocab_size:
            raise ValueError(f"src ids must lie in [0, vocab_size={cfg.vocab_size}), got [{s.min()}, {s.max()}]")
        if g.min() < 0 or g.max() >= Vt:
            raise ValueError(f"tgt ids must lie in [0, num_targets={Vt}) (the ids the rounding head scores), got "
                             f"[{g.min()}, {g.max()}]")
    valid = batch.get("tgt_mask")
    valid = jnp.ones(tgt.shape, bool) if valid is None else jnp.asarray(valid)
    if valid.shape != tgt.shape or valid.dtype != jnp.bool_:
        raise ValueError(f"tgt_mask must be bool with tgt's shape {tuple(tgt.shape)}, got {valid.dtype} "
                         f"{tuple(valid.shape)}")
    return _Batch(src.astype(jnp.int32), tgt.astype(jnp.int32), valid)


def neodiff_loss(params, cfg: ModelConfig, batch: dict, rng: jax.Array, *, scheme: str = "poisson",
                 num_tau: int = 10, num_targets: int | None = None, predictor: bool = True) -> tuple[jax.Array, dict]:
    """Returns (L, metrics): the NeoDiff loss of one batch (P67; module docstring).

    ``batch``: ``src`` int [B, P] (source prefix), ``tgt`` int [B, L] (ids < ``num_targets``), optional
    ``tgt_mask`` bool [B, L] (False = padding), ``t`` [B] (extrinsic times; default U(0, 1) per row),
    ``noise`` [B, L, D] (eps; default N(0, I)) -- t and noise fixed make arms share random numbers -- and
    ``hparams`` (runtime hyperparameters, module docstring). ``predictor``: train the time predictor
    (L_tau; False drops it). Metrics: ``loss``, ``l_z``, ``l_anchor``, ``l_tau``, ``acc`` (argmax rounding
    accuracy), ``tau_mean`` (mean level / M).
    """
    scheme = _check_scheme(scheme)
    _check_model(cfg)
    M = _check_int("num_tau", num_tau, 2) - 1
    if num_targets is not None:
        num_targets = _check_int("num_targets", num_targets, 1)
        if num_targets > cfg.vocab_size:
            raise ValueError(f"num_targets={num_targets} exceeds vocab_size={cfg.vocab_size}")
    if rng is None:
        raise ValueError("the neodiff loss draws t, tau and noise: pass rng (tokjax.train passes one per step)")
    b = _check_batch(batch, cfg, num_targets)
    hp = _hparams(batch.get("hparams"), scheme)
    B, L = b.tgt.shape
    kt, ktau, ke = jax.random.split(rng, 3)
    t = jax.random.uniform(kt, (B,)) if batch.get("t") is None else _check_t(batch["t"])
    if t.shape != (B,):
        raise ValueError(f"t must be [batch={B}], got shape {t.shape}")
    taus = sample_taus(ktau, t, L, scheme=scheme, num_tau=num_tau, hparams=hp)
    table = embed_table(params)
    x0 = table[b.tgt]
    eps = jax.random.normal(ke, x0.shape, _F32) if batch.get("noise") is None else jnp.asarray(batch["noise"], _F32)
    if eps.shape != x0.shape:
        raise ValueError(f"noise must be [B, L, D]={x0.shape}, got {eps.shape}")
    z = noise_tokens(x0, taus, eps, num_tau=num_tau, hparams=hp)
    x0_hat, logits = neodiff_denoise(params, cfg, b.src, z, taus, num_tau=num_tau, num_targets=num_targets)
    m = b.valid.astype(_F32)
    count = jnp.maximum(jnp.sum(m), 1.0)
    mse = jnp.mean(jnp.square(x0_hat - x0), axis=-1)  # [B, L]
    ce = jax.nn.logsumexp(logits, -1) - jnp.take_along_axis(logits, b.tgt[..., None], -1)[..., 0]
    l_z, l_anchor = jnp.sum(mse * m) / count, jnp.sum(ce * m) / count
    if predictor:
        labels = tau_labels(jax.lax.stop_gradient(mse + ce), b.valid, t, scheme=scheme, num_tau=num_tau, hparams=hp)
        pred = predict_tau(params, cfg, b.src, x0_hat, t, num_tau=num_tau)
        l_tau = jnp.sum(jnp.square((pred - labels) / M) * m) / count
    else:
        l_tau = jnp.zeros((), _F32)
    loss = hp["w_z"] * l_z + hp["w_anchor"] * l_anchor + hp["w_tau"] * l_tau
    sg = jax.lax.stop_gradient
    acc = jnp.sum((jnp.argmax(logits, -1) == b.tgt) * m) / count
    return loss, {"loss": loss, "l_z": sg(l_z), "l_anchor": sg(l_anchor), "l_tau": sg(l_tau), "acc": sg(acc),
                  "tau_mean": sg(jnp.sum(taus * m) / count / M)}


@functools.lru_cache(maxsize=None)
def make_neodiff_loss(scheme: str = "poisson", num_tau: int = 10, num_targets: int | None = None,
                      predictor: bool = True) -> Callable:
    """Returns ``loss_fn(params, cfg, batch, rng) -> (loss, metrics)``: :func:`neodiff_loss` with these static
    options (the factory of the registered loss ``"neodiff"``; hyperparameters at run time come in
    ``batch["hparams"]``)."""
    _check_scheme(scheme)
    _check_int("num_tau", num_tau, 2)
    if num_targets is not None:
        _check_int("num_targets", num_targets, 1)
    if not isinstance(predictor, bool):
        raise ValueError(f"predictor must be True or False, got {predictor!r}")
    return functools.partial(neodiff_loss, scheme=scheme, num_tau=num_tau, num_targets=num_targets,
                             predictor=predictor)


# ------------------------------------------------------------------------------------------- decoding
@struct.dataclass
class NeoDiffDecodeState:
    """``DecodeState.extra`` of :class:`NeoDiffDecode`: ``z`` float32 [R, L, D] (the noisy target), ``taus``
    float32 [R, L] (its levels), ``tokens`` int32 [R, L] (the latest rounding), ``steps`` int32 [] (S),
    ``hp`` (runtime hyperparameters)."""

    z: jax.Array
    taus: jax.Array
    tokens: jax.Array
    steps: jax.Array
    hp: dict


@dataclasses.dataclass(frozen=True)
class NeoDiffDecode(Strategy):
    """NeoDiff's reverse process as a ``tokjax.generate`` Strategy (module docstring): each row's prompt is its
    ``src_len`` source ids; S = ``steps`` denoising steps (runtime: a new count does not recompile), one
    forward each (plus the predictor's layer with ``tau_source="predictor"``); the L target tokens are
    committed at the last step. Needs ``max_new_tokens >= max(length, steps)``, so ``src_len + max(length,
    steps) <= max_len`` (:func:`neodiff_sample` checks it).

    Static: ``length`` L, ``src_len`` P, ``scheme`` and ``num_tau`` (as trained), ``tau_source``,
    ``num_targets``, ``clamp`` (re-noise the embedding of the rounded token instead of x0_hat: the official
    ``--clamping`` trick), ``sample`` (round by drawing each token from softmax(logits) instead of the official
    argmax; every position is drawn again at every step, as the official cmlm re-predicts every position;
    with "absorbing" + "confidence" + ``clamp`` this is mask-predict with sampled tokens, which greedy
    mask-predict needs when the source leaves the target ambiguous; unlike MaskGIT, decided tokens can change
    and be re-masked). Runtime: ``steps``, ``hparams``.
    """

    length: int
    src_len: int
    scheme: str = "poisson"
    num_tau: int = 10
    tau_source: str = "predictor"
    num_targets: int | None = None
    clamp: bool = False
    sample: bool = False
    steps: Any = hparam(16)
    hparams: Any = hparam(None)

    def __post_init__(self):
        _check_int("length", self.length, 1)
        _check_int("src_len", self.src_len, 1)
        _check_scheme(self.scheme)
        _check_int("num_tau", self.num_tau, 2)
        if self.tau_source not in TAU_SOURCES:
            raise ValueError(f"tau_source must be one of {TAU_SOURCES}, got {self.tau_source!r}")
        if self.num_targets is not None:
            _check_int("num_targets", self.num_targets, 1)
        _steps(self.steps)
        _hparams(self.hparams, self.scheme)

    @property
    def max_accept(self) -> int:
        return self.length

    def validate(self, cfg: ModelConfig) -> None:
        _check_model(cfg)
        if self.src_len + self.length > cfg.max_len:
            raise ValueError(f"[source {self.src_len}, target {self.length}] does not fit max_len={cfg.max_len}")
        if self.num_targets is not None and self.num_targets > cfg.vocab_size:
            raise ValueError(f"num_targets={self.num_targets} exceeds vocab_size={cfg.vocab_size}")

    def init(self, params, cfg: ModelConfig, state: DecodeState) -> NeoDiffDecodeState:
        _nd(params)
        if _concrete(state.prompt_lengths) and np.any(np.asarray(state.prompt_lengths) != self.src_len):
            raise ValueError(f"every prompt must be exactly src_len={self.src_len} source ids, got lengths "
                             f"{np.asarray(state.prompt_lengths).tolist()}")
        R = state.tokens.shape[0]
        hp = _hparams(self.hparams, self.scheme)
        key = jax.random.fold_in(state.key, 7919)
        z = hp["noise_scale"] * jax.random.normal(key, (R, self.length, cfg.d_model), _F32)
        return NeoDiffDecodeState(z=z, taus=jnp.full((R, self.length), float(self.num_tau - 1), _F32),
                                  tokens=jnp.zeros((R, self.length), jnp.int32), steps=_steps(self.steps), hp=hp)

    def persistent_state(self, extra: NeoDiffDecodeState) -> jax.Array:
        return extra.tokens

    def step(self, params, cfg: ModelConfig, transform, state: DecodeState, eos_id=None) -> DecodeState:
        del transform  # the rounding is argmax (module docstring)
        ex = state.extra
        M = self.num_tau - 1
        R = state.tokens.shape[0]
        src = state.tokens[:, :self.src_len]
        S = ex.steps
        k = state.step
        x0_hat, logits = neodiff_denoise(params, cfg, src, ex.z, ex.taus, num_tau=self.num_tau,
                                         num_targets=self.num_targets)
        key, k_tau, k_eps, k_tok = jax.random.split(state.key, 4)
        if self.sample:
            tok = jax.random.categorical(k_tok, logits, axis=-1).astype(jnp.int32)
        else:
            tok = jnp.argmax(logits, axis=-1).astype(jnp.int32)
        t_next = jnp.maximum(S - k - 1, 0).astype(_F32) / S.astype(_F32)
        tn = jnp.full((R,), t_next)
        opts = dict(scheme=self.scheme, num_tau=self.num_tau, hparams=ex.hp)
        valid = jnp.ones(tok.shape, bool)
        if self.tau_source == "predictor":
            tau_hat = jnp.clip(predict_tau(params, cfg, src, x0_hat, tn, num_tau=self.num_tau), 0.0, M)
        elif self.tau_source == "confidence":
            conf = jnp.take_along_axis(jax.nn.log_softmax(logits, axis=-1), tok[..., None], axis=-1)[..., 0]
            tau_hat = tau_labels(-conf, valid, tn, **opts)
        else:
            tau_hat = sample_taus(k_tau, tn, self.length, **opts)
        x_base = embed_table(params)[tok] if self.clamp else x0_hat
        eps = jax.random.normal(k_eps, x0_hat.shape, _F32)
        z = noise_tokens(x_base, tau_hat, eps, num_tau=self.num_tau, hparams=ex.hp)
        last = k >= S - 1
        stats = state.stats.replace(forward_calls=state.stats.forward_calls + 1)
        state = state.replace(key=key, stats=stats, extra=ex.replace(z=z, taus=tau_hat, tokens=tok))
        V = cfg.vocab_size
        full = jnp.full(logits.shape[:2] + (V,), -jnp.inf, _F32).at[..., :logits.shape[-1]].set(logits)
        counts = jnp.where(last, self.length, 0) * jnp.ones((R,), jnp.int32)
        state = commit(state, tok, counts, eos_id, logits=full)
        return state.replace(done=state.done | last)


def _steps(steps: Any) -> jax.Array:
    s = jnp.asarray(steps)
    if s.ndim or not jnp.issubdtype(s.dtype, jnp.integer):
        raise ValueError(f"steps must be a scalar int (denoising steps), got {s.dtype} shape {s.shape}")
    if _concrete(s) and int(s) < 1:
        raise ValueError(f"steps must be >= 1 (denoising steps), got {int(s)}")
    return jnp.maximum(s.astype(jnp.int32), 1)


def neodiff_decoder(*, length: int, src_len: int, scheme: str = "poisson", num_tau: int = 10,
                    tau_source: str = "predictor", steps: Any = 16, num_targets: int | None = None,
                    hparams: Any = None, clamp: bool = False, sample: bool = False) -> NeoDiffDecode:
    """Returns the :class:`NeoDiffDecode` strategy (``scheme`` / ``num_tau`` as the model was trained)."""
    return NeoDiffDecode(length=length, src_len=src_len, scheme=scheme, num_tau=num_tau, tau_source=tau_source,
                         num_targets=num_targets, clamp=clamp, sample=sample, steps=steps, hparams=hparams)


class NeoDiffSamples(NamedTuple):
    """What :func:`neodiff_sample` returns: ``tokens`` int32 [N, L] and generate's ``stats`` (``forward_calls`` =
    denoising steps)."""

    tokens: np.ndarray
    stats: dict


def neodiff_sample(model: Model, strategy: NeoDiffDecode, src: Any, key: jax.Array) -> NeoDiffSamples:
    """Returns :class:`NeoDiffSamples`: targets decoded by ``strategy`` through :func:`tokjax.generate` for the
    source ids ``src`` [N, src_len]."""
    from tokjax.decoding import generate

    if not isinstance(model, Model):
        raise ValueError(f"model must be a tokjax Model (params + cfg), got {type(model).__name__}")
    if not isinstance(strategy, NeoDiffDecode):
        raise ValueError(f"strategy must be a NeoDiffDecode (neodiff_decoder(...)), got {type(strategy).__name__}")
    s = np.asarray(src)
    if s.ndim != 2 or s.shape[1] != strategy.src_len or not np.issubdtype(s.dtype, np.integer):
        raise ValueError(f"src must be int [N, src_len={strategy.src_len}], got {s.dtype} {s.shape}")
    S = int(_steps(strategy.steps))
    if strategy.src_len + max(strategy.length, S) > model.cfg.max_len:
        raise ValueError(f"generate runs one loop step per denoising step: src_len={strategy.src_len} + max(length="
                         f"{strategy.length}, steps={S}) must fit the model's max_len={model.cfg.max_len} (a RoPE "
                         "model may simply be configured with a larger max_len)")
    out = generate(model, s.astype(np.int32), key=key, max_new_tokens=max(strategy.length, S),
                   prompt_lengths=np.full(s.shape[0], strategy.src_len, np.int32), strategy=strategy)
    P = strategy.src_len
    if np.any(out.lengths != P + strategy.length):
        raise RuntimeError(f"neodiff rows ended early: lengths {out.lengths.tolist()}, expected {P + strategy.length}")
    return NeoDiffSamples(tokens=np.asarray(out.tokens[:, P:P + strategy.length], np.int32), stats=out.stats)


# --------------------------------------------------------------------------------------------- registry
def _register() -> None:
    from tokjax.losses.registry import register_loss

    register_loss("neodiff", make_neodiff_loss,
                  {"scheme": "poisson", "num_tau": 10, "num_targets": None, "predictor": True},
                  doc="P67 NeoDiff: non-simultaneous continuous diffusion of unit-RMS token embeddings, per-token "
                      "levels tau ~ Poisson(lambda(t)) (or continuous / absorbing / the official rescaled Poisson), "
                      "L_z + rounding CE (anchor) + loss-ranked time-predictor regression; batch needs src int "
                      "[B, P] (prefix) and tgt int [B, L]; runtime batch['hparams']; params need "
                      "params['neodiff'] (tokjax.losses.neodiff.neodiff_init)",
                  overwrite=True)


_register()
