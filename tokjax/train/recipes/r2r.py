"""P46 R2R: fit the token router through :func:`tokjax.train.train`.

The router is a standalone params pytree (``model_cfg=None``) from
:func:`tokjax.decoding.r2r.init_router`; the loss is :func:`tokjax.decoding.r2r.router_loss`
(class-weighted binary cross-entropy on divergence labels) and the input standardisation is frozen
through ``TrainConfig.trainable``.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import numpy as np

from tokjax.decoding.r2r import TRAINABLE, RouterFeatures, init_router, router_batch, router_loss
from tokjax.train.recipes._classifier import fit_classifier

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
    return fit_classifier(router, batch_all, ("hidden", "embedding", "top_logits"), loss_fn=router_loss,
                          trainable=TRAINABLE, key=k_data, steps=steps, batch_size=batch_size,
                          learning_rate=learning_rate, weight_decay=weight_decay, dropout=dropout,
                          pos_weight=pos_weight, progress=progress)
