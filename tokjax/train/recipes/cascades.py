"""P42 cascades: fit the post-hoc deferral MLP through :func:`tokjax.train.train`.

The MLP is a standalone params pytree (``model_cfg=None``); every step sees the full batch of
:func:`tokjax.decoding.cascades.deferral_batch` and the loss is
:func:`tokjax.decoding.cascades.deferral_mlp_loss` (binary cross-entropy).
"""

from __future__ import annotations

from tokjax.decoding.cascades import DeferralMLP, deferral_batch, deferral_mlp_loss, init_deferral_mlp
from tokjax.train._config import TrainConfig
from tokjax.train._loop import train

__all__ = ["train_deferral_mlp"]


def train_deferral_mlp(features, targets, *, key, steps: int = 500, learning_rate: float = 1e-2,
                       hidden: int = 32, weight_decay: float = 1e-3, progress: bool = False) -> DeferralMLP:
    """Returns a DeferralMLP fit by full-batch AdamW (constant learning rate) on binary cross-entropy to ``targets``.

    ``features`` [N, F] (e.g. :func:`~tokjax.decoding.cascades.posthoc_features`), ``targets`` [N]
    in [0, 1]: P42's 1[quality(M_l) > quality(M_s)] (soft targets are allowed). The features are
    standardised with their own mean and std, which the returned rule keeps.
    """
    batch = deferral_batch(features, targets)
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an int >= 1, got {steps!r}")
    n, f = batch["features"].shape
    mlp = init_deferral_mlp(key, f, hidden)
    params = {"w1": mlp.w1, "b1": mlp.b1, "w2": mlp.w2, "b2": mlp.b2}
    # a constant rate (no warmup, min_lr_ratio 1), no clipping and optax's default b2: plain full-batch AdamW
    tcfg = TrainConfig(lr=learning_rate, warmup_steps=0, total_steps=steps, weight_decay=weight_decay, grad_clip=None,
                       b2=0.999, min_lr_ratio=1.0, batch_size=n, seq_len=1, log_every=max(1, steps // 10),
                       eval_every=0)
    params, _ = train(None, tcfg, lambda step: batch, loss_fn=deferral_mlp_loss, params=params, progress=progress)
    return DeferralMLP(batch["mean"], batch["std"], params["w1"], params["b1"], params["w2"], params["b2"])
