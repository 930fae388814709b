"""Top-k sparse autoencoders: fit :mod:`tokjax.analysis.sae` through :func:`tokjax.train.train`.

The SAE is a standalone params pytree (``model_cfg=None``); the loss is
:func:`tokjax.analysis.sae.sae_loss` (normalised MSE, decoder rows unit-norm by parametrisation)
and step s trains on the rows ``tokjax.data.batch_indices(N, batch, s, seed=seed)`` of the
activation matrix (a fresh permutation per epoch, a pure function of (seed, step), so a run is
reproducible and resumable like any other).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from tokjax.analysis.sae import _check_rows, _static_int, sae_init, sae_loss
from tokjax.data import batch_indices
from tokjax.train._config import TrainConfig
from tokjax.train._loop import train

__all__ = ["sae_loss_fn", "train_sae"]


@functools.lru_cache(maxsize=None)
def sae_loss_fn(k_max: int):
    """Returns ``sae_loss`` with ``k_max`` bound (one object per k_max, so runs of one config share compiled steps).

    The batch's ``k`` stays a runtime value in [1, k_max]: a sweep over k below ``k_max`` does not recompile.
    """
    if not _static_int(k_max) or k_max < 1:
        raise ValueError(f"k_max must be an int >= 1, got {k_max!r}")
    return functools.partial(sae_loss, k_max=int(k_max))


def train_sae(activations, d_sae: int, k: int, *, steps: int = 2000, seed: int = 0, lr: float = 1e-3,
              batch: int = 1024, warmup_steps: int | None = None, progress: bool = False, workdir=None):
    """Returns (params, history): a top-k SAE with ``d_sae`` latents fit to ``activations`` [N, d_in].

    Adam (b2 0.999, no weight decay, no clipping) with a linear warmup (default min(100, steps/10))
    and a cosine decay to lr/10; ``batch`` rows per step. ``b_dec`` starts at the data mean, the
    rest as :func:`~tokjax.analysis.sae.sae_init` (``W_enc = W_dec^T``, unit decoder rows).
    ``history["train"]`` logs ``nmse``, ``l0`` and the per-batch ``dead_frac`` 20 times; use
    :func:`~tokjax.analysis.sae.sae_metrics` for the dead fraction over the whole set. ``workdir``:
    checkpoints and bitwise resume, as :func:`tokjax.train.train`.
    """
    if not _static_int(d_sae) or d_sae < 1:
        raise ValueError(f"d_sae must be an int >= 1, got {d_sae!r}")
    if not _static_int(k) or not 1 <= k <= d_sae:
        raise ValueError(f"k must be an int in [1, d_sae={d_sae}], got {k!r}")
    for name, v in (("steps", steps), ("batch", batch)):
        if not _static_int(v) or v < 1:
            raise ValueError(f"{name} must be an int >= 1, got {v!r}")
    x = np.asarray(activations)
    if x.ndim != 2:
        raise ValueError(f"activations must be [N, d_in], got shape {x.shape}")
    x = _check_rows(x, x.shape[1], "activations")
    n, d_in = x.shape
    if batch < 2 or batch > n:
        raise ValueError(f"batch must lie in [2, N={n}] (rows per step; the loss normalises by the batch variance), "
                         f"got {batch}")
    warm = min(100, steps // 10) if warmup_steps is None else warmup_steps
    tcfg = TrainConfig(lr=lr, warmup_steps=warm, total_steps=steps, weight_decay=0.0, grad_clip=None, b1=0.9,
                       b2=0.999, min_lr_ratio=0.1, batch_size=batch, seq_len=1, seed=seed,
                       log_every=max(1, steps // 20), eval_every=0, checkpoint_every=0)
    params = sae_init(jax.random.key(seed), d_in, int(d_sae), k=int(k))
    params["b_dec"] = jnp.asarray(x.mean(0), jnp.float32)
    k_arr = np.asarray(k, np.int32)

    def batch_fn(step):
        return {"x": x[batch_indices(n, batch, step, seed=seed)], "k": k_arr}

    return train(None, tcfg, batch_fn, loss_fn=sae_loss_fn(int(k)), params=params, progress=progress,
                 workdir=workdir)
