"""P46 R2R: fit the token router through :func:`tokjax.train.train`.

The router is a standalone params pytree (``model_cfg=None``) from
:func:`tokjax.decoding.r2r.init_router`; the loss is :func:`tokjax.decoding.r2r.router_loss`
(class-weighted binary cross-entropy on divergence labels) and the input standardisation is frozen
through ``TrainConfig.trainable``.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from tokjax.decoding.r2r import TRAINABLE, RouterFeatures, init_router, router_batch, router_loss
from tokjax.train._config import TrainConfig
from tokjax.train._loop import train

__all__ = ["train_router"]


def train_router(features: RouterFeatures, labels, *, key, steps: int = 400, batch_size: int = 256,
                 learning_rate: float = 1e-3, weight_decay: float = 1e-2, dims: Sequence[int] = (64, 128, 64),
                 expansion: int = 4, dropout: float = 0.1, pos_weight: float | None = None,
                 progress: bool = False) -> dict:
    """Returns router params fit by minibatch AdamW (``tokjax.train.train``) on BCE to divergence ``labels``.

    The input standardisation (``norm``) is set from ``features`` and frozen (TrainConfig.trainable);
    ``pos_weight`` None balances the classes (#negative / #positive). Minibatches are a pure
    function of the step (drawn from ``key``), so a run is reproducible.
    """
    labels = np.asarray(labels, np.float32)
    batch_all = router_batch(features, labels)
    n = int(labels.shape[0])
    if n < 2 or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"need >= 2 examples and steps >= 1, got {n} examples, steps={steps!r}")
    pos = float(labels.mean())
    if pos_weight is None:
        pos_weight = (1 - pos) / pos if 0 < pos < 1 else 1.0
    k_init, k_data = jax.random.split(key)
    D, E, K = batch_all["hidden"].shape[1], batch_all["embedding"].shape[1], batch_all["top_logits"].shape[1]
    router = init_router(k_init, D, E, K, dims=dims, expansion=expansion)
    x = np.concatenate([np.asarray(batch_all[f]) for f in ("hidden", "embedding", "top_logits")], 1)
    router["norm"] = {"mean": jnp.asarray(x.mean(0)), "std": jnp.asarray(x.std(0) + 1e-4)}
    B = min(int(batch_size), n)
    seed = int(jax.random.randint(k_data, (), 0, 2**31 - 1))
    host = {f: np.asarray(batch_all[f]) for f in ("hidden", "embedding", "top_logits", "labels")}

    def batch_fn(step):
        idx = np.random.default_rng((seed, int(step))).integers(0, n, B)
        return {**{f: v[idx] for f, v in host.items()}, "pos_weight": np.float32(pos_weight),
                "dropout": np.float32(dropout)}

    tcfg = TrainConfig(lr=learning_rate, warmup_steps=min(steps // 10, 50), total_steps=steps,
                       weight_decay=weight_decay, grad_clip=1.0, b2=0.999, min_lr_ratio=0.1, batch_size=B, seq_len=1,
                       log_every=max(1, steps // 10), eval_every=0, checkpoint_every=0, trainable=TRAINABLE,
                       seed=seed % 1000003)
    params, _ = train(None, tcfg, batch_fn, loss_fn=router_loss, params=router, progress=progress)
    return params
