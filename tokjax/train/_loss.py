"""The loss interface of training, batch validation, and the loss a TrainConfig asks for.

A loss is any jit-traceable function

    loss_fn(params, cfg, batch, rng) -> (scalar_loss, metrics: dict[str, scalar])

``make_train_step`` differentiates the first output with respect to ``params``. ``batch`` is a
dict of arrays and *every* key of it reaches the loss: tokens, masks, segment ids, prompt
lengths, reference log-probs, rewards, extra inputs. The default loss is
:func:`tokjax.losses.next_token_loss` (the stats-based cut cross-entropy, P29); there is no second
next-token loss in the train package. :func:`check_batch` validates the keys whose meaning is
shared by every loss (tokens, inputs/targets, mask, weights, ...) and lets any other key through.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Protocol

import jax
import numpy as np

from tokjax.losses import next_token_loss
from tokjax.losses.registry import loss_from_spec
from tokjax.model import ModelConfig

__all__ = ["LossFn", "next_token_loss", "check_batch", "loss_fn_from_config"]


class LossFn(Protocol):
    """The train loss signature: (scalar loss, metrics dict) for ``params`` on ``batch``; ``rng`` seeds randomness."""

    def __call__(
        self, params: Any, cfg: ModelConfig | None, batch: Mapping[str, jax.Array], rng: jax.Array
    ) -> tuple[jax.Array, dict[str, jax.Array]]: ...


def _shape(batch, name) -> tuple[int, ...]:
    return tuple(getattr(batch[name], "shape", np.shape(batch[name])))


def _dtype(batch, name):
    return getattr(batch[name], "dtype", np.asarray(batch[name]).dtype)


def _int(batch, name) -> None:
    if not np.issubdtype(np.dtype(_dtype(batch, name)), np.integer):
        raise ValueError(f"batch[{name!r}] must be integers, got dtype {_dtype(batch, name)}")


def check_batch(batch: Any, cfg: ModelConfig | None = None, *, require_tokens: bool = False) -> tuple[int, int] | None:
    """Returns (B, T) of a training batch (T = predicted positions), or None when it has no token entries.

    Only the keys with a shared meaning are checked, and only their shapes and dtypes (so this is
    safe at trace time); every other key is the loss's business and passes unchecked.

    * ``tokens`` int [B, T+1] (T >= 1; T <= ``cfg.max_len`` when a ModelConfig is given), or
      ``inputs`` int [B, T] with (for a next-token loss) ``targets`` int [B, T].
    * ``mask``, ``weights``, ``segment_ids``: [B, T] (per target) or [B, T+1] (per token).
    * ``prompt_lengths``, ``lengths``: int [B]. ``ref_logp``: [B, T].

    ``require_tokens`` (the default next-token loss) makes a batch without ``tokens`` or
    ``inputs``/``targets`` an error. Raises ValueError naming the key and the expected shape.
    """
    if not isinstance(batch, Mapping):
        raise ValueError(f"a batch must be a mapping (dict) of arrays, e.g. {{'tokens': int [B, T+1]}}; "
                         f"got {type(batch).__name__}")
    if "tokens" in batch:
        shape = _shape(batch, "tokens")
        if len(shape) != 2 or shape[0] < 1 or shape[1] < 2:
            raise ValueError(f"batch['tokens'] must be [B, T+1] with B >= 1 and T+1 >= 2, got shape {shape}")
        _int(batch, "tokens")
        B, T = shape[0], shape[1] - 1
    elif "inputs" in batch or "targets" in batch:
        if "inputs" not in batch:
            raise ValueError(f"batch['targets'] needs the model inputs batch['inputs'] int [B, T], got keys "
                             f"{sorted(batch)}")
        si = _shape(batch, "inputs")
        st = _shape(batch, "targets") if "targets" in batch else si
        if len(si) != 2 or si != st or si[1] < 1:
            raise ValueError(f"batch['inputs'] (and batch['targets']) must be [B, T] with T >= 1, got {si} and {st}")
        _int(batch, "inputs")
        if "targets" in batch:
            _int(batch, "targets")
        elif require_tokens:
            raise ValueError("this loss needs batch['targets'] int [B, T] next to batch['inputs'] (or batch['tokens'] "
                             "int [B, T+1])")
        B, T = si
    else:
        if require_tokens:
            raise ValueError(f"this loss needs batch['tokens'] int [B, T+1] (or 'inputs' and 'targets' int [B, T]); "
                             f"the batch has keys {sorted(batch)}")
        return None
    if cfg is not None and T > cfg.max_len:
        raise ValueError(f"the batch has {T} input positions, more than the model's max_len={cfg.max_len}")
    for name in ("mask", "weights", "segment_ids"):
        if batch.get(name) is not None and _shape(batch, name) not in ((B, T), (B, T + 1)):
            raise ValueError(f"batch[{name!r}] must be [B, T]={B, T} (aligned with the targets) or [B, T+1]="
                             f"{B, T + 1} (per token), got {_shape(batch, name)}")
    for name in ("prompt_lengths", "lengths"):
        if batch.get(name) is not None:
            if _shape(batch, name) != (B,):
                raise ValueError(f"batch[{name!r}] must be [B]={(B,)}, got {_shape(batch, name)}")
            _int(batch, name)
    if batch.get("ref_logp") is not None and _shape(batch, "ref_logp") != (B, T):
        raise ValueError(f"batch['ref_logp'] must be [B, T]={B, T} (one per target), got {_shape(batch, 'ref_logp')}")
    return B, T


def as_loss_fn(fn: Callable) -> Callable:
    """Returns ``fn`` after checking it is callable (a clear error instead of a deep trace failure)."""
    if not callable(fn):
        raise ValueError(f"loss_fn must be a function (params, cfg, batch, rng) -> (loss, metrics), got {fn!r}")
    return fn


def loss_fn_from_config(train_cfg: Any) -> Callable:
    """Returns the loss a TrainConfig asks for: :func:`next_token_loss` when ``train_cfg.loss`` is None, else the
    registry loss built from it (:func:`tokjax.losses.registry.loss_from_spec`; equal specs give the same object,
    so runs of one config share compiled steps). Model references in the spec (``teacher: "pretrained:NAME"``) are
    resolved by the model sources registered with :func:`tokjax.losses.registry.register_model_source`
    (``tokjax.pretrained`` registers ``pretrained:``). Raises ValueError for an unknown loss or option."""
    spec = getattr(train_cfg, "loss", None)
    if spec is None:
        return next_token_loss
    return loss_from_spec(spec)
