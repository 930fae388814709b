"""TrainState, the optimiser (with an optional trainable subset), and the jitted pure train step.

The trainable subset (``TrainConfig.trainable``) is enforced twice, on purpose: the optimiser
gives frozen leaves ``set_to_zero`` updates and no state (no Adam moments for a frozen base
model), and the train step takes the old value of every frozen leaf instead of ``p + 0`` (which
would turn a ``-0.0`` into ``+0.0``), so frozen parameters stay bit-for-bit what they were. The
loss also sees frozen leaves through ``stop_gradient``, which lets XLA drop their weight gradients.
"""

from __future__ import annotations

import re
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct

from tokjax.model import ModelConfig, init_params
from tokjax.model.forward import layer_loop
from tokjax.model.ops import path_tokens
from tokjax.train._config import TrainConfig
from tokjax.train._loss import as_loss_fn, next_token_loss

_SEP = "/"
# The train step's layer loop (make_train_step's scan_unroll / remat when None), chosen by measurement in
# benchmarks/train_throughput.py (see its docstring for the table).
DEFAULT_SCAN_UNROLL = "auto"  # unrolled up to forward.AUTO_UNROLL_MAX_LAYERS layers, else one layer per iteration
DEFAULT_REMAT = "none"

__all__ = ["TrainState", "frozen_prefix", "init_state", "make_optimizer", "make_schedule", "make_train_step",
           "trainable_mask"]


@struct.dataclass
class TrainState:
    """Everything a training run needs to continue bitwise-exactly from a step.

    ``step``: int32 scalar, optimiser steps taken. ``params``: the parameter pytree (a model's,
    possibly with extra top-level entries such as an adapter or a head, or any pytree).
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


_NO_DECAY = frozenset({"A_log", "D", "dt_bias"})  # Mamba's SSM parameters (mamba_ssm marks them _no_weight_decay)


def _decay_mask(params):
    # Weight decay on matrices only: decaying norm scales and biases pulls them towards 0,
    # which is not a prior anyone wants (standard GPT/Llama practice). Stacked layer weights carry
    # a leading layer axis, so a norm scale under "layers" is [L, D]: that axis does not count.
    def decays(path, p):
        names = path_tokens(path)
        own_dims = p.ndim - (1 if names and names[0] == "layers" else 0)
        return own_dims >= 2 and not (names and names[-1] in _NO_DECAY)

    return jax.tree_util.tree_map_with_path(decays, params)


def _path_str(path) -> str:
    return _SEP.join(path_tokens(path))


_LAST = re.compile(r"^last:(\d+)$")


def _last_n(trainable: tuple[str, ...]) -> int | None:
    """Returns N of a ``"last:N"`` entry (the last N stacked transformer layers), or None."""
    ns = [int(m.group(1)) for t in trainable if (m := _LAST.match(t))]
    return ns[0] if ns else None


def trainable_mask(params: Any, trainable: tuple[str, ...] | None) -> Any:
    """Returns a pytree like ``params``: per leaf True (optimised), False (frozen) or, for the stacked
    layer weights under ``"last:N"``, a numpy bool row mask [n_layers] (only the last N rows train).

    ``trainable`` is None (every leaf) or a tuple of top-level keys / ``"a/b"`` path prefixes
    (``TrainConfig.trainable``); a prefix matches whole path components (``"layers/w"`` does not
    match ``layers/wq``). ``"last:N"`` trains the last N of the model's stacked ``layers`` (the
    leaves under ``layers`` whose leading axis is the layer axis) and nothing else unless named.
    Raises ValueError naming the entries that match no parameter (with the valid top-level keys),
    or a ``last:N`` beyond the model's layers.
    """
    if trainable is None:
        return jax.tree.map(lambda _: True, params)
    flat, treedef = jax.tree_util.tree_flatten_with_path(params)
    paths = [_path_str(p) for p, _ in flat]
    named = tuple(t for t in trainable if not _LAST.match(t))
    last = _last_n(trainable)

    def hit(path: str, prefix: str) -> bool:
        return path == prefix or path.startswith(prefix + _SEP)

    unused = [t for t in named if not any(hit(p, t) for p in paths)]
    if unused:
        top = sorted({p.split(_SEP, 1)[0] for p in paths})
        raise ValueError(f"TrainConfig.trainable entries {unused} match no parameter; valid top-level keys: {top} "
                         "(deeper paths as 'key/sub', or 'last:N' for the last N layers)")
    out = [any(hit(p, t) for t in named) for p in paths]
    if last is not None:
        stacked = [i for i, p in enumerate(paths) if hit(p, "layers") and jnp.ndim(flat[i][1]) >= 1]
        if not stacked:
            raise ValueError("TrainConfig.trainable 'last:N' needs stacked layer weights under params['layers']; "
                             "this params tree has none")
        n_layers = int(jnp.shape(flat[stacked[0]][1])[0])
        if last > n_layers:
            raise ValueError(f"TrainConfig.trainable 'last:{last}' names more layers than the model has ({n_layers})")
        rows = np.arange(n_layers) >= n_layers - last
        for i in stacked:
            if not out[i]:  # a leaf also named in full stays fully trainable
                out[i] = rows
    return jax.tree_util.tree_unflatten(treedef, out)


def _any(t) -> bool:
    return bool(np.any(t))


def _select(t, trained, frozen):
    """Returns ``trained`` where the mask entry ``t`` trains (a bool, or a row mask over a stacked leaf), else ``frozen``."""
    if isinstance(t, (bool, np.bool_)):
        return trained if t else frozen
    rows = jnp.asarray(t).reshape((-1,) + (1,) * (jnp.ndim(trained) - 1))
    return jnp.where(rows, trained, frozen)


def make_optimizer(train_cfg: TrainConfig) -> optax.GradientTransformation:
    """Returns optax AdamW with the warmup-cosine schedule, preceded by global-norm gradient clipping.

    With ``train_cfg.trainable`` only those leaves are optimised (clipping uses their gradient norm);
    the rest get zero updates and no optimiser state. The labels are computed from the params tree at
    ``init``, so an unknown trainable key raises ValueError there.
    """
    if not isinstance(train_cfg, TrainConfig):
        raise ValueError(f"make_optimizer needs a TrainConfig, got {type(train_cfg).__name__}")
    opt = optax.adamw(
        make_schedule(train_cfg), b1=train_cfg.b1, b2=train_cfg.b2, weight_decay=train_cfg.weight_decay,
        mask=_decay_mask,
    )
    if train_cfg.grad_clip:
        opt = optax.chain(optax.clip_by_global_norm(train_cfg.grad_clip), opt)
    if train_cfg.trainable is None:
        return opt
    trainable = train_cfg.trainable

    def labels(params):
        return jax.tree.map(lambda t: "train" if _any(t) else "freeze", trainable_mask(params, trainable))

    return optax.multi_transform({"train": opt, "freeze": optax.set_to_zero()}, labels)


def init_state(
    cfg: ModelConfig | None, optimizer: optax.GradientTransformation, seed: int | jax.Array = 0, params: Any = None
) -> TrainState:
    """Returns the TrainState at step 0: params initialised from ``seed`` (unless given) and a fresh opt_state.

    ``seed`` is an int or a PRNG key; the params come from one half of its split and the
    run's ``rng`` from the other, so the two never share randomness. With ``cfg=None`` the
    params (any pytree) must be given.
    """
    if cfg is None:
        if params is None:
            raise ValueError("init_state(None, ...) trains a plain pytree: pass its starting params")
    elif not isinstance(cfg, ModelConfig):
        raise ValueError(f"init_state needs a ModelConfig (or None with params), got {type(cfg).__name__}")
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


def frozen_prefix(params: Any, mask: Any) -> int:
    """Returns k, the number of leading stacked layers of ``params["layers"]`` with no trainable leaf under the
    :func:`trainable_mask` ``mask`` (0 when there are no stacked layers or layer 0 trains; n_layers when none do).
    Leaves outside ``layers`` do not count: the split this feeds (``layer_loop(frozen_prefix=k)``) only stops the
    gradient of those layers' own weights, so a trainable embedding, soft prompt or adapter still gets its
    gradient through them."""
    if not isinstance(params, Mapping) or not isinstance(params.get("layers"), Mapping):
        return 0
    leaves = jax.tree.leaves(params["layers"])
    masks = jax.tree.leaves(mask["layers"])
    if not leaves or len(leaves) != len(masks) or any(jnp.ndim(a) < 1 for a in leaves):
        return 0
    n = int(jnp.shape(leaves[0])[0])
    k = n
    for t in masks:
        if isinstance(t, (bool, np.bool_)):
            k = min(k, 0 if t else n)
        else:
            rows = np.asarray(t, bool)
            k = min(k, int(np.argmax(rows)) if rows.any() else n)
    return k


def make_train_step(
    cfg: ModelConfig | None,
    optimizer: optax.GradientTransformation,
    loss_fn: Callable = next_token_loss,
    *,
    schedule: optax.Schedule | None = None,
    donate: bool = True,
    trainable: tuple[str, ...] | None = None,
    scan_unroll: int | bool | None = None,
    remat: str | None = None,
    split_frozen: bool = True,
) -> Callable[[TrainState, Mapping[str, jax.Array]], tuple[TrainState, dict[str, jax.Array]]]:
    """Returns the jitted pure ``train_step(state, batch) -> (state, metrics)``.

    One step: ``value_and_grad`` of ``loss_fn(params, cfg, batch, fold_in(state.rng, step))``,
    the optimiser update, ``step + 1``. A dict batch without a ``"step"`` key gets the step taken
    so far (int32 scalar) under that key. Metrics are the loss's own metrics plus ``loss``,
    ``grad_norm`` (before clipping; of the trainable leaves) and ``lr`` when a ``schedule`` is
    given. ``trainable`` (``TrainConfig.trainable``; pair it with ``make_optimizer`` of the same
    config) keeps every other leaf bit-for-bit frozen. ``cfg`` may be None for a loss over a
    plain pytree. The input state is donated (its buffers are reused for the output), so do not
    use it after the call; pass ``donate=False`` to keep it.
    ``scan_unroll`` / ``remat``: the layer-loop options of every ``forward`` the loss traces (see
    :func:`tokjax.model.forward.blocks`; None = ``DEFAULT_SCAN_UNROLL`` / ``DEFAULT_REMAT``, chosen by
    ``benchmarks/train_throughput.py``). They change the speed and memory of the backward pass, never the values
    beyond float summation order.
    ``split_frozen`` (default True): when ``trainable`` leaves the first k stacked layers frozen
    (:func:`frozen_prefix`), the loss's forward over these params runs them as a scan of their own under
    ``stop_gradient`` (``tokjax.model.forward.layer_loop(frozen_prefix=k)``), so the backward skips their weight
    gradients and, with frozen embeddings, the whole prefix. Same loss and trainable gradients (bit for bit in
    tests/train/test_train_options.py; at some shapes XLA rounds the gradient-free prefix 1 ulp differently, e.g.
    log-probs within 1e-6 at 32 x 220); False keeps the one scan over all layers (the benchmarks' baseline).
    """
    if cfg is not None and not isinstance(cfg, ModelConfig):
        raise ValueError(f"make_train_step needs a ModelConfig or None, got {type(cfg).__name__}")
    if not (hasattr(optimizer, "init") and hasattr(optimizer, "update")):
        raise ValueError(f"optimizer must be an optax GradientTransformation, got {type(optimizer).__name__}")
    loss_fn = as_loss_fn(loss_fn)
    loop = dict(scan_unroll=DEFAULT_SCAN_UNROLL if scan_unroll is None else scan_unroll,
                remat=DEFAULT_REMAT if remat is None else remat)
    with layer_loop(**loop):  # validates them now, before any trace
        pass

    def checked_loss(params, batch, rng):
        # Checked here, inside the differentiated function, so a malformed loss fails with a
        # message about the loss interface rather than an error from deep inside jax.grad.
        with layer_loop(**loop):  # trace-time defaults of blocks(): the loss's own forward calls need no argument
            out = loss_fn(params, cfg, batch, rng)
        if not (isinstance(out, tuple) and len(out) == 2 and isinstance(out[1], Mapping)):
            raise ValueError(f"loss_fn must return (scalar loss, metrics dict), got {type(out).__name__}")
        loss, metrics = out
        if jnp.ndim(loss) != 0:
            raise ValueError(f"loss_fn must return a scalar loss, got shape {jnp.shape(loss)}")
        return loss, metrics

    def train_step(state: TrainState, batch):
        rng = jax.random.fold_in(state.rng, state.step)
        if isinstance(batch, Mapping) and "step" not in batch:
            # A traced scalar, so a loss with a schedule (CAFT's, FTP's decay) never recompiles per step.
            batch = {**batch, "step": state.step}
        mask = trainable_mask(state.params, trainable)  # static: computed from the tree structure at trace time

        k = frozen_prefix(state.params, mask) if split_frozen and trainable is not None else 0

        def masked_loss(params, batch, rng):
            params = jax.tree.map(lambda p, t: _select(t, p, jax.lax.stop_gradient(p)), params, mask)
            if not k:
                return checked_loss(params, batch, rng)
            # Only this forward's own stacked weights (by identity) are split; see layer_loop.
            with layer_loop(frozen_prefix=k, frozen_layers=params["layers"]):
                return checked_loss(params, batch, rng)

        (loss, metrics), grads = jax.value_and_grad(masked_loss, has_aux=True)(state.params, batch, rng)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        # Frozen leaves keep their exact old value (p + 0 would flip -0.0 to +0.0).
        params = jax.tree.map(lambda new, old, t: _select(t, new, old), params, state.params, mask)
        metrics = dict(metrics)
        metrics["loss"] = loss
        metrics["grad_norm"] = optax.global_norm(grads)
        if schedule is not None:
            metrics["lr"] = jnp.asarray(schedule(state.step), jnp.float32)
        new = state.replace(step=state.step + 1, params=params, opt_state=opt_state)
        return new, metrics

    return jax.jit(train_step, donate_argnums=(0,) if donate else ())
