"""TrainState, the optimiser, and the jitted pure train step."""

from __future__ import annotations

from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import optax
from flax import struct

from tokjax.model import ModelConfig, init_params
from tokjax.train._config import TrainConfig
from tokjax.train._loss import as_loss_fn, next_token_loss

__all__ = ["TrainState", "init_state", "make_optimizer", "make_schedule", "make_train_step"]


@struct.dataclass
class TrainState:
    """Returns nothing; everything a training run needs to continue bitwise-exactly from a step.

    ``step``: int32 scalar, optimiser steps taken. ``params``: the model's parameter pytree.
    ``opt_state``: the optax state. ``rng``: the run's base PRNG key (raw uint32 [2] key data,
    so checkpoints can store it); the loss at step s gets ``fold_in(rng, s)``, which makes the
    randomness a pure function of (seed, step), like the data order.
    """

    step: jax.Array
    params: Any
    opt_state: Any
    rng: jax.Array


# Module-level so the compiled initialiser is reused by every run of the same config.
_init_params_jit = jax.jit(init_params, static_argnums=0)


def _jit_init(optimizer):
    # One jitted init per optimizer object (jit caches compiled code per function object).
    fn = _OPT_INIT.get(id(optimizer))
    if fn is None or fn[0] is not optimizer:
        if len(_OPT_INIT) >= 16:
            _OPT_INIT.pop(next(iter(_OPT_INIT)))
        fn = (optimizer, jax.jit(optimizer.init))
        _OPT_INIT[id(optimizer)] = fn
    return fn[1]


_OPT_INIT: dict = {}


def make_schedule(train_cfg: TrainConfig) -> optax.Schedule:
    """Returns the learning-rate schedule: linear warmup 0 -> lr, then cosine decay to lr * min_lr_ratio."""
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=train_cfg.lr,
        warmup_steps=train_cfg.warmup_steps,
        decay_steps=train_cfg.total_steps,
        end_value=train_cfg.lr * train_cfg.min_lr_ratio,
    )


def _decay_mask(params):
    # Weight decay on matrices only: decaying norm scales and biases pulls them towards 0,
    # which is not a prior anyone wants (standard GPT/Llama practice).
    return jax.tree.map(lambda p: p.ndim >= 2, params)


def make_optimizer(train_cfg: TrainConfig) -> optax.GradientTransformation:
    """Returns optax AdamW with the warmup-cosine schedule, preceded by global-norm gradient clipping."""
    if not isinstance(train_cfg, TrainConfig):
        raise ValueError(f"make_optimizer needs a TrainConfig, got {type(train_cfg).__name__}")
    adamw = optax.adamw(
        make_schedule(train_cfg), b1=train_cfg.b1, b2=train_cfg.b2, weight_decay=train_cfg.weight_decay,
        mask=_decay_mask,
    )
    if train_cfg.grad_clip:
        return optax.chain(optax.clip_by_global_norm(train_cfg.grad_clip), adamw)
    return adamw


def init_state(
    cfg: ModelConfig, optimizer: optax.GradientTransformation, seed: int | jax.Array = 0, params: Any = None
) -> TrainState:
    """Returns the TrainState at step 0: params initialised from ``seed`` (unless given) and a fresh opt_state.

    ``seed`` is an int or a PRNG key; the params come from one half of its split and the
    run's ``rng`` from the other, so the two never share randomness.
    """
    if not isinstance(cfg, ModelConfig):
        raise ValueError(f"init_state needs a ModelConfig, got {type(cfg).__name__}")
    if isinstance(seed, (int,)) and not isinstance(seed, bool):
        key = jax.random.PRNGKey(seed)
    else:
        key = jnp.asarray(seed)
        if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
            key = jax.random.key_data(key)
        if key.shape != (2,) or key.dtype != jnp.uint32:
            raise ValueError(f"seed must be an int or a PRNG key, got {seed!r}")
    # One compiled program instead of dozens of eagerly dispatched ops (each compiled on first use).
    init_key, rng = jax.random.split(key)
    if params is None:
        params = _init_params_jit(cfg, init_key)
    opt_state = _jit_init(optimizer)(params)
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=opt_state, rng=rng)


def make_train_step(
    cfg: ModelConfig,
    optimizer: optax.GradientTransformation,
    loss_fn: Callable = next_token_loss,
    *,
    schedule: optax.Schedule | None = None,
    donate: bool = True,
) -> Callable[[TrainState, Mapping[str, jax.Array]], tuple[TrainState, dict[str, jax.Array]]]:
    """Returns the jitted pure ``train_step(state, batch) -> (state, metrics)``.

    One step: ``value_and_grad`` of ``loss_fn(params, cfg, batch, fold_in(state.rng, step))``,
    the optimiser update, ``step + 1``. Metrics are the loss's own metrics plus ``loss``,
    ``grad_norm`` (before clipping) and ``lr`` when a ``schedule`` is given. The input state is
    donated (its buffers are reused for the output), so do not use it after the call; pass
    ``donate=False`` to keep it.
    """
    if not isinstance(cfg, ModelConfig):
        raise ValueError(f"make_train_step needs a ModelConfig, got {type(cfg).__name__}")
    if not (hasattr(optimizer, "init") and hasattr(optimizer, "update")):
        raise ValueError(f"optimizer must be an optax GradientTransformation, got {type(optimizer).__name__}")
    loss_fn = as_loss_fn(loss_fn)

    def checked_loss(params, batch, rng):
        # Checked here, inside the differentiated function, so a malformed loss fails with a
        # message about the loss interface rather than an error from deep inside jax.grad.
        out = loss_fn(params, cfg, batch, rng)
        if not (isinstance(out, tuple) and len(out) == 2 and isinstance(out[1], Mapping)):
            raise ValueError(f"loss_fn must return (scalar loss, metrics dict), got {type(out).__name__}")
        loss, metrics = out
        if jnp.ndim(loss) != 0:
            raise ValueError(f"loss_fn must return a scalar loss, got shape {jnp.shape(loss)}")
        return loss, metrics

    def train_step(state: TrainState, batch):
        rng = jax.random.fold_in(state.rng, state.step)
        (loss, metrics), grads = jax.value_and_grad(checked_loss, has_aux=True)(state.params, batch, rng)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = dict(metrics)
        metrics["loss"] = loss
        metrics["grad_norm"] = optax.global_norm(grads)
        if schedule is not None:
            metrics["lr"] = jnp.asarray(schedule(state.step), jnp.float32)
        new = state.replace(step=state.step + 1, params=params, opt_state=opt_state)
        return new, metrics

    return jax.jit(train_step, donate_argnums=(0,) if donate else ())
