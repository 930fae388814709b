"""The loss interface of training, and the default next-token cross-entropy.

A loss is any function

    loss_fn(params, cfg, batch, rng) -> (scalar_loss, metrics: dict[str, scalar])

that is jit-traceable; ``make_train_step`` differentiates the first output with respect to
``params``. Later loss transforms (token weighting, distillation, preference losses) drop in
here. Normalisation is explicit: losses report ``nll_sum`` and ``token_count`` as well as the
mean, so metrics over several batches (evaluation) are exact token-weighted means rather than
means of batch means.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Protocol

import jax
import jax.numpy as jnp

from tokjax.model import Inputs, ModelConfig, forward

__all__ = ["LossFn", "next_token_loss", "next_token_sums", "check_batch", "loss_fn_from_config"]


class LossFn(Protocol):
    """Returns (scalar loss, metrics dict) for ``params`` on ``batch``; ``rng`` seeds any randomness."""

    def __call__(
        self, params: Any, cfg: ModelConfig, batch: Mapping[str, jax.Array], rng: jax.Array
    ) -> tuple[jax.Array, dict[str, jax.Array]]: ...


def check_batch(batch: Mapping[str, Any], cfg: ModelConfig) -> tuple[int, int]:
    """Returns (B, T) of a training batch (T = predicted positions); raises ValueError on a malformed batch.

    ``tokens`` must be int [B, T + 1] with T >= 1 and T <= cfg.max_len; the optional ``mask``
    (bool/0-1) and ``weights`` (float) are [B, T], aligned with the *targets* ``tokens[:, 1:]``.
    Only shapes and dtypes are checked, so this is safe at trace time under jit.
    """
    if not isinstance(batch, Mapping) or "tokens" not in batch:
        got = list(batch) if isinstance(batch, Mapping) else type(batch).__name__
        raise ValueError(f"a batch must be a mapping with a 'tokens' entry [B, T+1], got {got}")
    tok = batch["tokens"]
    shape = tuple(getattr(tok, "shape", ()))
    if len(shape) != 2 or shape[1] < 2 or shape[0] < 1:
        raise ValueError(f"batch['tokens'] must be [B, T+1] with B >= 1 and T+1 >= 2, got shape {shape}")
    if not jnp.issubdtype(tok.dtype, jnp.integer):
        raise ValueError(f"batch['tokens'] must be integers, got dtype {tok.dtype}")
    B, T = shape[0], shape[1] - 1
    if T > cfg.max_len:
        raise ValueError(f"batch['tokens'] has {T} input positions, more than the model's max_len={cfg.max_len}")
    for name in ("mask", "weights"):
        if name in batch and batch[name] is not None:
            s = tuple(getattr(batch[name], "shape", ()))
            if s != (B, T):
                raise ValueError(
                    f"batch[{name!r}] must be [B, T] = {(B, T)} (aligned with the targets tokens[:, 1:]), got {s}"
                )
    unknown = [k for k in batch if k not in ("tokens", "mask", "weights")]
    if unknown:
        raise ValueError(f"unknown batch entries {unknown}; a batch holds 'tokens' and optionally 'mask', 'weights'")
    return B, T


def next_token_sums(params: Any, cfg: ModelConfig, batch: Mapping[str, jax.Array]) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Returns (nll_sum, token_count, correct) of predicting ``tokens[:, 1:]`` from ``tokens[:, :-1]``.

    ``nll_sum`` = sum_i w_i m_i (-log p(y_i)), ``token_count`` = sum_i w_i m_i (float32), and
    ``correct`` = weighted count of positions whose argmax is the target. Log-softmax runs in
    float32 whatever the compute dtype.
    """
    check_batch(batch, cfg)
    tokens = batch["tokens"].astype(jnp.int32)
    x, y = tokens[:, :-1], tokens[:, 1:]
    logits = forward(params, cfg, Inputs(tokens=x)).logits.astype(jnp.float32)
    logp = jax.nn.log_softmax(logits, axis=-1)
    nll = -jnp.take_along_axis(logp, y[..., None], axis=-1)[..., 0]
    w = jnp.ones(y.shape, jnp.float32)
    if batch.get("mask") is not None:
        w = w * batch["mask"].astype(jnp.float32)
    if batch.get("weights") is not None:
        w = w * batch["weights"].astype(jnp.float32)
    hit = (jnp.argmax(logits, axis=-1) == y).astype(jnp.float32)
    return jnp.sum(w * nll), jnp.sum(w), jnp.sum(w * hit)


def next_token_loss(
    params: Any, cfg: ModelConfig, batch: Mapping[str, jax.Array], rng: jax.Array | None = None
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Returns (mean next-token cross-entropy in nats, metrics) over the (masked, weighted) targets.

    The mean is ``nll_sum / max(token_count, 1e-9)`` (0, not NaN, when every token is masked).
    Metrics: ``loss``, ``nll_sum``, ``token_count``, ``accuracy``. ``rng`` is unused (the
    default loss is deterministic) but is part of the interface.
    """
    del rng
    nll_sum, count, correct = next_token_sums(params, cfg, batch)
    denom = jnp.maximum(count, 1e-9)
    loss = nll_sum / denom
    return loss, {"loss": loss, "nll_sum": nll_sum, "token_count": count, "accuracy": correct / denom}


def as_loss_fn(fn: Callable) -> Callable:
    """Returns ``fn`` after checking it is callable (a clear error instead of a deep trace failure)."""
    if not callable(fn):
        raise ValueError(f"loss_fn must be a function (params, cfg, batch, rng) -> (loss, metrics), got {fn!r}")
    return fn


def loss_fn_from_config(train_cfg: Any) -> Callable:
    """Returns the loss a TrainConfig asks for: :func:`next_token_loss` when ``train_cfg.loss`` is None, else the
    registry loss built from it (:func:`tokjax.losses.registry.loss_from_spec`; equal specs give the same object,
    so runs of one config share compiled steps). Raises ValueError for an unknown loss or option."""
    spec = getattr(train_cfg, "loss", None)
    if spec is None:
        return next_token_loss
    from tokjax.losses.registry import loss_from_spec

    return loss_from_spec(spec)
