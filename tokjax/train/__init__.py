"""Training: TrainState, the loss interface, a jitted train step, evaluation, orbax checkpoints and the loop.

    model, history = train(model_cfg, TrainConfig(total_steps=500), dataset, workdir="runs/a")

* :class:`TrainConfig`, :func:`load_config` -- hyperparameters (frozen; YAML with strict keys).
* :func:`next_token_loss` -- the default ``loss_fn(params, cfg, batch, rng) -> (loss, metrics)``.
* :func:`make_optimizer`, :func:`make_train_step`, :class:`TrainState`, :func:`init_state`.
* :func:`evaluate`, :func:`bits_per_byte` -- validation loss, bits per token and per byte.
* :class:`Checkpointer`, :func:`save_params`, :func:`load_params` -- crash-safe orbax checkpoints.
* :func:`train` -- the loop (progress bar, periodic metrics, checkpoints, bitwise-exact resume).
"""

from tokjax.train._checkpoint import CheckpointError, Checkpointer, is_complete_checkpoint, load_params, save_params
from tokjax.train._config import (
    DataSpec, RunConfig, TokenizerSpec, TrainConfig, load_config, load_run_config, run_config_from_dict,
    train_config_from_dict,
)
from tokjax.train._eval import bits_per_byte, bits_per_token, evaluate, unigram_loss
from tokjax.train._loop import train, train_batch
from tokjax.train._loss import LossFn, check_batch, loss_fn_from_config, next_token_loss, next_token_sums
from tokjax.train._step import TrainState, init_state, make_optimizer, make_schedule, make_train_step

__all__ = [
    "loss_fn_from_config",
    "CheckpointError", "Checkpointer", "is_complete_checkpoint", "load_params", "save_params",
    "DataSpec", "RunConfig", "TokenizerSpec", "TrainConfig", "load_config", "load_run_config",
    "run_config_from_dict", "train_config_from_dict",
    "bits_per_byte", "bits_per_token", "evaluate", "unigram_loss",
    "train", "train_batch",
    "LossFn", "check_batch", "next_token_loss", "next_token_sums",
    "TrainState", "init_state", "make_optimizer", "make_schedule", "make_train_step",
]
