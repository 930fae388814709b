"""TempNet (P2): a small network that predicts a per-token temperature tau(z) from the LM's logits.

Paper: *To Cool or not to Cool? Temperature Network Meets Large Foundation Models via DRO* (Qiu,
Guo, Xu, Yang, Yang, Jiang; ICML 2024). Official code ``github.com/zhqiu/TempNet``, read for this
module: ``tempnet.py`` (``TempNet``, ``LLaMA_TempNet``), ``megatron/model/tempnet.py`` (GPT-2),
``LLaMA-2/megatron/model/tempnet.py`` and ``LLaMA-2/megatron/core/tensor_parallel/cross_entropy.py``
(``vocab_parallel_cross_entropy_temp``). The network, with hidden size H (256 in every script):

    x   = z' / ||z'||_2                       z' = z - max_k z_k (see "input" below)
    h   = W2 dropout(sigmoid(W1 x + b1)) + b2                  (Linear V->H, sigmoid, dropout 0.5, Linear H->H)
    a   = softmax(h / exp(s))                                  (s a learned scalar, initialised to log 1 = 0)
    u   = w . ((a - 1/H) * h) + b                              (Linear H->1 with w initialised to 1, b to 0)
    tau = (tau_max - tau_min) * sigmoid(u) + tau_min                                       (P2, TempNet)

and generation samples from ``softmax(z / tau(z))``. Bounds in the official code: LLaMA
inference class ``tau_min = 0.01, tau_max = 1.2`` (the defaults here); LLaMA-2 training
``tau_max = 2.0``; GPT-2 ``tau_min = 0.5, tau_max = 5.0``. W1, b1, W2, b2 are drawn as torch's
``nn.Linear`` default (uniform in +-1/sqrt(fan_in)); at initialisation u >= 0 (a softmax-weighted
mean of h is at least its plain mean), so tau starts in the upper half of its range.

Input normalisation (checked in the code): the LLaMA-2 training loss and the LLaMA inference
class both feed the *centred* logits ``z - max z`` (detached); the GPT-2 trainer and the LLaMA
class's training branch feed the raw logits. The L2 normalisation is not shift-invariant, so the
two are different features; tokjax uses one featurisation for training and decoding, centred by
default (``center=True``), raw with ``center=False``. Masked (``-inf``) logits, which a decode-time
chain may produce, are read as the row's smallest finite logit (a row with none gives x = 0), so
tau is never NaN. The dropout is the training-time one (inverted scaling, as torch); decoding runs
without it.

Everything is a pure function over a plain params dict (:func:`tempnet_init` /
:func:`tempnet_apply`); the bounds live in the params as float32 scalars (runtime values: a new
bound does not recompile) and carry no gradient. :func:`tempnet` / :class:`TempNetTemperature` is
the LogitTransform for ``tokjax.generate``; the DRO training loss is
:mod:`tokjax.losses.tempnet`.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp

from tokjax.logits._base import LogitTransform, check_int_option, check_range, hparam

__all__ = ["PARAM_KEYS", "TAU_MAX", "TAU_MIN", "TempNetTemperature", "check_tempnet_params", "constant_tempnet",
           "tempnet", "tempnet_apply", "tempnet_features", "tempnet_init"]

TAU_MIN, TAU_MAX = 0.01, 1.2  # official LLaMA inference class (tempnet.py)
PARAM_KEYS = ("w1", "b1", "w2", "b2", "log_scale", "w_out", "b_out", "tau_min", "tau_max")
_F32 = jnp.float32
_EPS = 1e-12  # torch F.normalize's eps


def _concrete(x) -> bool:
    return not isinstance(x, jax.core.Tracer)


def _check_bounds(tau_min, tau_max) -> None:
    """Returns None; raises ValueError for concrete bounds that are not 0 < tau_min < tau_max (finite)."""
    check_range(tau_min, "tau_min", lo=0.0, lo_open=True)
    check_range(tau_max, "tau_max", lo=0.0, lo_open=True)
    if _concrete(tau_min) and _concrete(tau_max):
        import numpy as np

        if np.any(np.asarray(tau_min, np.float64) >= np.asarray(tau_max, np.float64)):
            raise ValueError(f"tau_min must be smaller than tau_max, got tau_min={tau_min!r}, tau_max={tau_max!r}")


def tempnet_init(key: jax.Array, vocab: int, hidden: int = 256, tau_min: float = TAU_MIN,
                 tau_max: float = TAU_MAX) -> dict:
    """Returns the P2 TempNet params: a dict of float32 arrays (a pytree to train or store).

    ``w1`` [V, H], ``b1`` [H], ``w2`` [H, H], ``b2`` [H] (torch ``nn.Linear`` default init),
    ``log_scale`` [] = 0 (the softmax scale s), ``w_out`` [H] = 1, ``b_out`` [] = 0, and the bounds
    ``tau_min`` [], ``tau_max`` [] (0 < tau_min < tau_max; no gradient flows into them).
    Raises ValueError for vocab < 2, hidden < 1 or bad bounds.
    """
    vocab = check_int_option(vocab, "vocab", lo=2)
    hidden = check_int_option(hidden, "hidden", lo=1)
    _check_bounds(tau_min, tau_max)
    k1, k2, k3, k4 = jax.random.split(key, 4)
    a1, a2 = 1.0 / math.sqrt(vocab), 1.0 / math.sqrt(hidden)
    u = lambda k, shape, a: jax.random.uniform(k, shape, _F32, -a, a)  # noqa: E731
    return {
        "w1": u(k1, (vocab, hidden), a1), "b1": u(k2, (hidden,), a1),
        "w2": u(k3, (hidden, hidden), a2), "b2": u(k4, (hidden,), a2),
        "log_scale": jnp.zeros((), _F32), "w_out": jnp.ones((hidden,), _F32), "b_out": jnp.zeros((), _F32),
        "tau_min": jnp.asarray(tau_min, _F32), "tau_max": jnp.asarray(tau_max, _F32),
    }


def constant_tempnet(vocab: int, tau, hidden: int = 4, tau_min: float = 0.5, tau_max: float = 1.5) -> dict:
    """Returns TempNet params whose tau(z) is the constant ``tau`` (up to float32 rounding) for every input:
    ``w_out = 0`` and ``b_out = logit((tau - tau_min) / (tau_max - tau_min))``. For tests and baselines;
    ``tau`` must lie strictly inside (tau_min, tau_max)."""
    check_range(tau, "tau", lo=tau_min, hi=tau_max, lo_open=True, hi_open=True)
    p = tempnet_init(jax.random.PRNGKey(0), vocab, hidden, tau_min, tau_max)
    frac = (float(tau) - tau_min) / (tau_max - tau_min)
    return {**p, "w_out": jnp.zeros_like(p["w_out"]), "b_out": jnp.asarray(math.log(frac / (1.0 - frac)), _F32)}


def check_tempnet_params(params) -> tuple[int, int]:
    """Returns (vocab V, hidden H) of TempNet ``params``; raises ValueError naming what is missing or mis-shaped."""
    if not isinstance(params, dict) or any(k not in params for k in PARAM_KEYS):
        have = sorted(params) if isinstance(params, dict) else type(params).__name__
        raise ValueError(f"TempNet params must be the dict of tempnet_init (keys {list(PARAM_KEYS)}), got {have}")
    w1 = params["w1"]
    if jnp.ndim(w1) != 2:
        raise ValueError(f"TempNet params['w1'] must be [vocab, hidden], got shape {jnp.shape(w1)}")
    V, H = jnp.shape(w1)
    want = {"b1": (H,), "w2": (H, H), "b2": (H,), "log_scale": (), "w_out": (H,), "b_out": (), "tau_min": (),
            "tau_max": ()}
    for k, shape in want.items():
        if tuple(jnp.shape(params[k])) != shape:
            raise ValueError(f"TempNet params[{k!r}] must have shape {shape} (hidden={H}), got {jnp.shape(params[k])}")
    return int(V), int(H)


def tempnet_features(logits: jax.Array, *, center: bool = True) -> jax.Array:
    """Returns float32 [..., V] the TempNet input ``z' / max(||z'||_2, 1e-12)`` with ``z' = z - max z`` (``center``)
    or ``z' = z``; non-finite logits are replaced by the row's smallest finite one (0 when the row has none)."""
    z = jnp.asarray(logits).astype(_F32)
    finite = jnp.isfinite(z)
    lo = jnp.min(jnp.where(finite, z, jnp.inf), axis=-1, keepdims=True)
    lo = jnp.where(jnp.isfinite(lo), lo, 0.0)
    z = jnp.where(finite, z, lo)
    if center:
        z = z - jnp.max(z, axis=-1, keepdims=True)
    norm = jnp.sqrt(jnp.sum(z * z, axis=-1, keepdims=True))
    return z / jnp.maximum(norm, _EPS)


def tempnet_apply(params: dict, logits: jax.Array, *, tau_min=None, tau_max=None, center: bool = True,
                  dropout: float = 0.0, key: jax.Array | None = None) -> jax.Array:
    """Returns float32 tau [...] in [tau_min, tau_max]: the P2 TempNet temperature of each logit row [..., V].

    ``tau_min`` / ``tau_max`` (runtime scalars or arrays broadcasting to [...]) override the bounds
    stored in ``params``. ``center``: feed ``z - max z`` (default; see the module doc). ``dropout``
    (a static rate in [0, 1)) with a PRNG ``key`` applies the training-time dropout after the
    sigmoid; without a key the net runs in evaluation mode. Raises ValueError when the logits' last
    axis is not the net's vocabulary, or for bad bounds.
    """
    V, H = check_tempnet_params(params)
    z = jnp.asarray(logits)
    if z.ndim < 1 or z.shape[-1] != V:
        raise ValueError(f"logits must be [..., vocab={V}] (the TempNet's vocabulary), got shape {tuple(z.shape)}")
    if not jnp.issubdtype(z.dtype, jnp.floating):
        raise ValueError(f"logits must be floating point, got dtype {z.dtype}")
    if not 0.0 <= float(dropout) < 1.0:
        raise ValueError(f"dropout must lie in [0, 1), got {dropout!r}")
    sg = jax.lax.stop_gradient
    lo = sg(params["tau_min"]) if tau_min is None else jnp.asarray(tau_min, _F32)
    hi = sg(params["tau_max"]) if tau_max is None else jnp.asarray(tau_max, _F32)
    _check_bounds(lo, hi)
    p = jax.tree.map(lambda x: jnp.asarray(x, _F32), params)
    x = tempnet_features(z, center=center)
    h = jax.nn.sigmoid(x @ p["w1"] + p["b1"])
    if dropout > 0.0 and key is not None:
        keep = jax.random.bernoulli(key, 1.0 - dropout, h.shape)
        h = jnp.where(keep, h / (1.0 - dropout), 0.0)
    h = h @ p["w2"] + p["b2"]
    a = jax.nn.softmax(h / jnp.exp(p["log_scale"]), axis=-1)
    u = ((a - 1.0 / H) * h) @ p["w_out"] + p["b_out"]
    tau = (hi - lo) * jax.nn.sigmoid(u) + lo
    return jnp.clip(tau, lo, hi)  # the affine map may round one ulp past a bound


@dataclasses.dataclass(frozen=True)
class TempNetTemperature(LogitTransform):
    """The P2 logit transform: ``logits / tau(logits)`` per row, tau from a TempNet (``tempnet_apply``).

    ``params`` (the TempNet's) is a runtime value held in the state, like every hyperparameter of a
    logit transform: transforms with other params are equal static arguments, so a new TempNet
    does not recompile ``generate``. ``center`` is static. The state is ``{"net": params with a
    leading axis of size 1 on each leaf, "tau": float32 [B] the last step's temperatures}``; the
    size-1 axis keeps the decode loop's row operations (forks, row selection) from mistaking a
    weight whose leading dimension equals the batch for per-row state.
    """

    params: object = hparam(None)
    center: bool = True

    def __post_init__(self):
        if self.params is None:
            raise ValueError("TempNetTemperature needs TempNet params (tokjax.logits.tempnet.tempnet_init)")
        check_tempnet_params(self.params)
        _check_bounds(self.params["tau_min"], self.params["tau_max"])

    def init(self, batch):
        net = jax.tree.map(lambda x: jnp.asarray(x, _F32)[None], dict(self.params))
        return {"net": net, "tau": jnp.ones((batch,), _F32)}

    def apply(self, logits, state, ctx):
        net = jax.tree.map(lambda x: x[0], state["net"])
        tau = tempnet_apply(net, logits, center=self.center)
        # -inf / tau stays -inf: masked tokens stay masked.
        return logits / tau[:, None].astype(logits.dtype), {"net": state["net"], "tau": tau}


def tempnet(params: dict, *, center: bool = True) -> TempNetTemperature:
    """Returns the TempNet logit transform (P2): divides each row's logits by the TempNet's tau(z)."""
    return TempNetTemperature(params=params, center=center)
