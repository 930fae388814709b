"""P44 Kangaroo: fit the early-exit adapter by soft-label distillation through :func:`tokjax.train.train`.

The adapter is a standalone params pytree (``model_cfg=None``), so the frozen base never enters
the optimiser; each step's batch holds the base's exited hidden states and full-model logits
(:func:`tokjax.decoding.kangaroo.distill_batch`) and the loss is
:func:`tokjax.decoding.kangaroo.adapter_distill_loss`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from tokjax.data import batch_indices
from tokjax.decoding.kangaroo import adapter_config, adapter_distill_loss, distill_batch, init_adapter
from tokjax.model import Model
from tokjax.train._config import TrainConfig
from tokjax.train._loop import train

__all__ = ["fit_adapter"]


def fit_adapter(
    model: Model, layer: int, windows: np.ndarray, *, steps: int = 300, batch_size: int = 16, lr: float = 3e-3,
    seed: int = 0, mlp: bool = False, warm_start: bool = True, adapter=None, progress: bool = False,
) -> tuple[dict, dict]:
    """Returns (adapter params, history) after distilling ``model`` into an early-exit adapter at ``layer``.

    ``windows`` [N, T] int token windows (e.g. ``TokenDataset.train[:, :-1]``); step s trains on
    the windows ``batch_indices(N, batch_size, s, seed=seed)`` (a pure function of the step, so a
    run is reproducible). The base is frozen: only the adapter (``adapter`` or a fresh
    :func:`~tokjax.decoding.kangaroo.init_adapter`) is optimised, with AdamW, warmup-cosine and
    gradient clipping at 1. ``history`` is :func:`tokjax.train.train`'s (``loss``, ``prob_acc``,
    ``top1`` every 25 steps under ``"train"``).
    """
    windows = np.asarray(windows)
    if windows.ndim != 2 or windows.shape[0] < 1 or windows.shape[1] < 2:
        raise ValueError(f"windows must be [N, T] token ids with N >= 1, T >= 2, got shape {windows.shape}")
    if not np.issubdtype(windows.dtype, np.integer):
        raise ValueError(f"windows must hold integer token ids, got dtype {windows.dtype}")
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an int >= 1, got {steps!r}")
    if not isinstance(batch_size, int) or not 1 <= batch_size <= windows.shape[0]:
        raise ValueError(f"batch_size must be an int in [1, N={windows.shape[0]}], got {batch_size!r}")
    if adapter is None:
        adapter = init_adapter(model, layer, jax.random.key(seed), mlp=mlp, warm_start=warm_start)
    distill_batch(model, layer, windows[:1])  # checks the layer before anything is compiled for training

    def batch_fn(step: int) -> dict:
        rows = batch_indices(len(windows), batch_size, step, seed=seed)
        return distill_batch(model, layer, jnp.asarray(windows[rows]))

    tcfg = TrainConfig(lr=lr, warmup_steps=max(1, steps // 10) if steps > 1 else 0, total_steps=steps, weight_decay=0.0,
                       grad_clip=1.0, batch_size=batch_size, seq_len=windows.shape[1], seed=seed, log_every=25,
                       eval_every=0)
    loss_fn = adapter_distill_loss(mlp, acfg=adapter_config(model.cfg, mlp=mlp))
    return train(None, tcfg, batch_fn, loss_fn=loss_fn, params=adapter, progress=progress)
