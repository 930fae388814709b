"""P59 S2D: sorted fine-tuning (SoFT) of a nested draft model through :func:`tokjax.train.train`.

The loss is :func:`tokjax.decoding.s2d.sorted_loss` (the weighted sum of every exit's
cross-entropy through the shared head) on plain token windows.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from tokjax.decoding.s2d import check_exits, sorted_loss
from tokjax.model import Model
from tokjax.train._config import TrainConfig
from tokjax.train._loop import train

__all__ = ["sorted_finetune"]


def sorted_finetune(draft: Model, exits: Sequence[int], windows: np.ndarray, *, steps: int = 300, batch_size: int = 16,
                    lr: float = 1e-3, seed: int = 0, weights: Sequence[float] | None = None,
                    progress: bool = False) -> tuple[Model, dict]:
    """Returns (Model, history) after SoFT fine-tuning ``draft`` on token ``windows`` [N, T+1] with losses at ``exits``.

    ``weights`` (default 1 per exit) weight the exits' cross-entropies; AdamW with warmup-cosine,
    no weight decay. ``history`` is :func:`tokjax.train.train`'s (``loss``, ``ce_k<k>``,
    ``acc_k<k>`` every 25 steps).
    """
    check_exits(exits, draft.cfg.n_layers)
    windows = np.asarray(windows)
    if windows.ndim != 2 or windows.shape[0] < 1 or windows.shape[1] < 2:
        raise ValueError(f"windows must be [N, T+1] token ids with N >= 1, T+1 >= 2, got shape {windows.shape}")
    tcfg = TrainConfig(lr=lr, warmup_steps=max(1, steps // 10) if steps > 1 else 0, total_steps=steps,
                       weight_decay=0.0, batch_size=batch_size, seq_len=windows.shape[1] - 1, seed=seed, log_every=25,
                       eval_every=0)
    return train(draft.cfg, tcfg, {"train": windows}, loss_fn=sorted_loss(exits, weights), params=draft.params,
                 progress=progress)
