"""Fitting a standalone token classifier (R2R's router, Think-at-Hard's decider) through ``tokjax.train``.

The input standardisation ``norm`` is set from the training features and frozen (``trainable``);
minibatches are a pure function of the step (drawn from ``key``), so a run is reproducible.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from tokjax.train._config import TrainConfig
from tokjax.train._loop import train

__all__ = ["fit_classifier"]


def fit_classifier(params: dict, batch_all: dict, feature_fields: Sequence[str], *, loss_fn: Callable,
                   trainable: tuple[str, ...], key, steps: int, batch_size: int, learning_rate: float,
                   weight_decay: float, dropout: float, pos_weight: float, progress: bool) -> dict:
    """Returns ``params`` fit by minibatch AdamW on ``loss_fn`` over ``batch_all`` (the feature fields and
    ``labels``, [N, ...] each), with ``norm`` set to the features' mean and std."""
    n = int(np.asarray(batch_all["labels"]).shape[0])
    x = np.concatenate([np.asarray(batch_all[f]) for f in feature_fields], 1)
    params = dict(params, norm={"mean": jnp.asarray(x.mean(0)), "std": jnp.asarray(x.std(0) + 1e-4)})
    B = min(int(batch_size), n)
    seed = int(jax.random.randint(key, (), 0, 2**31 - 1))
    host = {f: np.asarray(batch_all[f]) for f in (*feature_fields, "labels")}

    def batch_fn(step):
        idx = np.random.default_rng((seed, int(step))).integers(0, n, B)
        return {**{f: v[idx] for f, v in host.items()}, "pos_weight": np.float32(pos_weight),
                "dropout": np.float32(dropout)}

    tcfg = TrainConfig(lr=learning_rate, warmup_steps=min(steps // 10, 50), total_steps=steps,
                       weight_decay=weight_decay, grad_clip=1.0, b2=0.999, min_lr_ratio=0.1, batch_size=B, seq_len=1,
                       log_every=max(1, steps // 10), eval_every=0, checkpoint_every=0, trainable=trainable,
                       seed=seed % 1000003)
    fitted, _ = train(None, tcfg, batch_fn, loss_fn=loss_fn, params=params, progress=progress)
    return fitted
