"""Training: one loop for every loss, over token windows or dict batches, with bitwise-exact resume.

    model, history = train(model_cfg, TrainConfig(total_steps=500), dataset, workdir="runs/a")
    model, history = train(model_cfg, TrainConfig(loss={"name": "dpo", "beta": 0.1}), batch_fn)
    params, history = train(None, train_cfg, batch_fn, params=mlp_params, loss_fn=my_loss)

``data`` is token windows (a TokenDataset, ``{"train", "val"}``, an int array), a
``batch_fn(step) -> dict`` (a pure function of the step) or an iterable of dict batches; every
key of a batch reaches the loss. The loss is ``loss_fn(params, cfg, batch, rng) -> (loss,
metrics)``: by default the TrainConfig's registry loss (:mod:`tokjax.losses.registry`) or
:func:`tokjax.losses.next_token_loss`, the stats-based cut cross-entropy.

* :class:`TrainConfig`, :func:`load_config` -- hyperparameters (frozen; YAML with strict keys), including
  ``loss`` (a registry spec) and ``trainable`` (the keys the optimiser updates; the rest stay frozen).
* :func:`next_token_loss` (= :func:`tokjax.losses.next_token_loss`), :func:`check_batch`,
  :func:`loss_fn_from_config` -- the loss interface.
* :func:`make_optimizer`, :func:`make_train_step`, :class:`TrainState`, :func:`init_state`, :func:`trainable_mask`,
  :func:`frozen_prefix` (the leading frozen layers the step runs without a backward).
* :func:`evaluate`, :func:`eval_sums`, :func:`bits_per_byte` -- validation loss (from
  :func:`tokjax.losses.token_stats`), bits per token and per byte.
* :class:`Checkpointer`, :func:`save_params`, :func:`load_params` -- crash-safe orbax checkpoints.
* :func:`train` -- the loop (progress bar, periodic metrics, checkpoints, bitwise-exact resume).
"""

from tokjax.train._checkpoint import CheckpointError, Checkpointer, is_complete_checkpoint, load_params, save_params
from tokjax.train._config import (
    DataSpec, RunConfig, TokenizerSpec, TrainConfig, load_config, load_run_config, run_config_from_dict,
    train_config_from_dict,
)
from tokjax.train._eval import bits_per_byte, bits_per_token, eval_sums, evaluate, unigram_loss
from tokjax.train._loop import train, train_batch
from tokjax.train._loss import LossFn, check_batch, loss_fn_from_config, next_token_loss
from tokjax.train._step import (
    TrainState, frozen_prefix, init_state, make_optimizer, make_schedule, make_train_step, trainable_mask,
)

__all__ = [
    "loss_fn_from_config",
    "CheckpointError", "Checkpointer", "is_complete_checkpoint", "load_params", "save_params",
    "DataSpec", "RunConfig", "TokenizerSpec", "TrainConfig", "load_config", "load_run_config",
    "run_config_from_dict", "train_config_from_dict",
    "bits_per_byte", "bits_per_token", "eval_sums", "evaluate", "unigram_loss",
    "train", "train_batch",
    "LossFn", "check_batch", "next_token_loss",
    "TrainState", "frozen_prefix", "init_state", "make_optimizer", "make_schedule", "make_train_step", "trainable_mask",
]
