"""P58 Think-at-Hard: the two official training steps through :func:`tokjax.train.train`.

Step 1 (:func:`train_tah`): the base model and a LoRA adapter learn next-token prediction on the final logits of
:func:`tokjax.decoding.think_at_hard.tah_logits` (iteration 1 where the batch's ``iterate`` says: oracle labels
for TaH, every completion position for the always-2-iteration baseline, none for plain fine-tuning); the
official ``base_grad`` default trains the base too (``train_base=False`` trains the adapter alone).
Step 2 (:func:`train_decider`): base and LoRA frozen, the MLP decider learns the labels by BCE (pos_weight 5.4).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import numpy as np

from tokjax.decoding.think_at_hard import (
    DECIDER_TRAINABLE, DeciderFeatures, decider_batch, decider_loss, init_decider, make_tah_loss,
)
from tokjax.model import Model
from tokjax.model.lora import init_lora
from tokjax.train._config import TrainConfig
from tokjax.train._loop import train
from tokjax.train.recipes._classifier import fit_classifier

__all__ = ["train_decider", "train_tah"]


def train_tah(model: Model, batch_fn: Callable[[int], dict], *, key, steps: int, seq_len: int, batch_size: int,
              learning_rate: float = 1e-3, rank: int = 8, alpha: float = 16.0, train_base: bool = True,
              top_k: int = 100, weight_decay: float = 0.0, progress: bool = False) -> tuple[Model, dict]:
    """Returns (fine-tuned Model, trained LoRA adapter) after ``steps`` AdamW steps of the "tah" loss.

    ``batch_fn(step) -> {"tokens" [B, T+1], "iterate" bool [B, T], "mask" [B, T]}`` (a pure function of the
    step); ``seq_len`` = T and ``batch_size`` = B describe it. The adapter (rank, alpha, all-linear) starts
    with B = 0; its ``scale`` stays fixed; ``train_base`` False freezes the base bit for bit.
    """
    if not isinstance(model, Model):
        raise ValueError(f"model must be a tokjax Model, got {type(model).__name__}")
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an int >= 1, got {steps!r}")
    k_lora, k_seed = jax.random.split(key)
    lora = init_lora(model.cfg, k_lora, rank=rank, alpha=alpha)
    params = {**model.params, "lora": lora}
    trainable = (tuple(model.params) if train_base else ()) + ("lora/layers",)
    seed = int(jax.random.randint(k_seed, (), 0, 2**31 - 1)) % 1000003
    tcfg = TrainConfig(lr=learning_rate, warmup_steps=min(steps // 10, 50), total_steps=steps,
                       weight_decay=weight_decay, grad_clip=1.0, b2=0.95, min_lr_ratio=0.1, batch_size=batch_size,
                       seq_len=seq_len, log_every=max(1, steps // 10), eval_every=0, checkpoint_every=0,
                       trainable=trainable, seed=seed)
    out, _ = train(model.cfg, tcfg, batch_fn, loss_fn=make_tah_loss(top_k), params=params, progress=progress)
    p = dict(out.params)
    lora = p.pop("lora")
    return Model(p, model.cfg), lora


def train_decider(features: DeciderFeatures, labels, *, d_model: int, key, steps: int = 400, batch_size: int = 256,
                  learning_rate: float = 1e-3, weight_decay: float = 1e-2, dims: Sequence[int] = (64, 128, 64),
                  expansion: int = 4, dropout: float = 0.1, pos_weight: float = 5.4, progress: bool = False) -> dict:
    """Returns decider params fit by minibatch AdamW on BCE (pos_weight, official 5.4) to ``labels`` [N].

    ``features``: DeciderFeatures [N, .] of iteration 0 of the step-1 model (``hidden`` holds n tapped layers of
    ``d_model`` each). The input standardisation (``norm``) is set from ``features`` and frozen; minibatches are
    a pure function of the step.
    """
    y = np.asarray(labels, np.float32)
    batch_all = decider_batch(features, y, pos_weight=pos_weight, dropout=dropout)
    n = int(y.shape[0])
    if n < 2 or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"need >= 2 examples and steps >= 1, got {n} examples, steps={steps!r}")
    H, K = int(batch_all["hidden"].shape[1]), int(batch_all["top_logits"].shape[1])
    if H % d_model:
        raise ValueError(f"features.hidden has width {H}, not a multiple of d_model={d_model}")
    k_init, k_data = jax.random.split(key)
    dec = init_decider(k_init, d_model, H // d_model, K, dims=dims, expansion=expansion)
    return fit_classifier(dec, batch_all, ("hidden", "top_logits"), loss_fn=decider_loss,
                          trainable=DECIDER_TRAINABLE, key=k_data, steps=steps, batch_size=batch_size,
                          learning_rate=learning_rate, weight_decay=weight_decay, dropout=dropout,
                          pos_weight=pos_weight, progress=progress)
