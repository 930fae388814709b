"""The training loop: batches, jitted steps, periodic logs/evals/checkpoints, and bitwise-exact resume.

Resume is exact because everything a step depends on is either in the checkpoint (params,
optimiser state, step, base PRNG key) or a pure function of (seed, step): the batch of step s
is ``tokjax.data.batch_indices(num_windows, batch_size, s, seed=seed)`` (a fresh seeded
permutation per epoch) and the loss's key is ``fold_in(rng, s)``. A run killed after its
checkpoint at step N and resumed therefore replays exactly the computation of an
uninterrupted run from step N on.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import time
from pathlib import Path
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from tokjax.model import Model, ModelConfig
from tokjax.train._checkpoint import Checkpointer
from tokjax.train._config import TrainConfig
from tokjax.train._eval import evaluate
from tokjax.train._loss import next_token_loss
from tokjax.train._step import TrainState, init_state, make_optimizer, make_schedule, make_train_step

__all__ = ["train", "train_batch"]

RUN_FILE = "run.json"
HISTORY_FILE = "history.json"
CHECKPOINT_DIR = "checkpoints"


@dataclasses.dataclass
class _Data:
    train: np.ndarray
    val: np.ndarray | None
    bytes_per_token: float | None


def _as_data(dataset: Any, model_cfg: ModelConfig, train_cfg: TrainConfig) -> _Data:
    """Returns the train/val windows of ``dataset`` after checking shapes and token ids."""
    if isinstance(dataset, np.ndarray) or (hasattr(dataset, "shape") and hasattr(dataset, "dtype")):
        tr, va, bpt = dataset, None, None
    elif isinstance(dataset, Mapping):
        if "train" not in dataset:
            raise ValueError(f"a dataset mapping needs a 'train' entry, got keys {list(dataset)}")
        tr, va, bpt = dataset["train"], dataset.get("val"), dataset.get("bytes_per_token")
    elif hasattr(dataset, "train"):
        tr, va, bpt = dataset.train, getattr(dataset, "val", None), getattr(dataset, "bytes_per_token", None)
    else:
        raise ValueError(
            "dataset must be a TokenDataset (with .train/.val windows), a mapping {'train', 'val'?, "
            f"'bytes_per_token'?}} or an int array [N, seq_len + 1]; got {type(dataset).__name__}"
        )
    width = train_cfg.seq_len + 1
    out = []
    for name, arr in (("train", tr), ("val", va)):
        if arr is None:
            out.append(None)
            continue
        arr = np.asarray(arr)
        if arr.ndim != 2 or arr.shape[1] != width:
            raise ValueError(
                f"{name} windows must be [N, seq_len + 1] = [N, {width}] for TrainConfig.seq_len={train_cfg.seq_len}, "
                f"got shape {arr.shape}"
            )
        if arr.dtype.kind not in "iu":
            raise ValueError(f"{name} windows must hold integer token ids, got dtype {arr.dtype}")
        if arr.size and (arr.min() < 0 or arr.max() >= model_cfg.vocab_size):
            raise ValueError(
                f"{name} token ids must lie in [0, {model_cfg.vocab_size}) (the model's vocab_size), "
                f"got values in [{arr.min()}, {arr.max()}]"
            )
        out.append(arr.astype(np.int32, copy=False) if arr.shape[0] else None)
    train_w, val_w = out
    if train_w is None or train_w.shape[0] < train_cfg.batch_size:
        n = 0 if train_w is None else train_w.shape[0]
        raise ValueError(f"the training set has {n} windows, fewer than batch_size={train_cfg.batch_size}")
    if train_cfg.seq_len > model_cfg.max_len:
        raise ValueError(f"TrainConfig.seq_len={train_cfg.seq_len} exceeds ModelConfig.max_len={model_cfg.max_len}")
    if bpt is not None:
        bpt = float(bpt)
        if not (math.isfinite(bpt) and bpt > 0):
            bpt = None
    return _Data(train_w, val_w, bpt)


def _run_record(model_cfg: ModelConfig, train_cfg: TrainConfig, data: _Data, loss_fn: Callable) -> dict:
    """Returns what must not change between a run and its resumption (configs, loss, data fingerprint)."""
    digest = hashlib.sha256(np.ascontiguousarray(data.train).tobytes()).hexdigest()[:16]
    return {
        "model": dataclasses.asdict(model_cfg),
        "train": train_cfg.to_dict(),
        "loss_fn": f"{getattr(loss_fn, '__module__', '?')}.{getattr(loss_fn, '__qualname__', repr(loss_fn))}",
        "data": {"train_windows": int(data.train.shape[0]), "train_sha256_16": digest},
    }


def _write_json_atomic(path: Path, obj: Any) -> None:
    # A crash mid-write must leave the previous file intact: write a sibling, then rename.
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, path)


def _diff(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            out += _diff(a.get(k), b.get(k), f"{prefix}{k}.")
        return out
    return [] if a == b else [f"{prefix[:-1]}: {a!r} -> {b!r}"]


def _val_batches(val: np.ndarray, batch_size: int, max_batches: int | None):
    # Every batch has the same shape (the last one padded, its padding masked out), so the
    # jitted evaluation compiles once instead of once more for the ragged tail.
    n = val.shape[0] if max_batches is None else min(val.shape[0], max_batches * batch_size)
    T = val.shape[1] - 1
    for i in range(0, n, batch_size):
        tokens = val[i : min(i + batch_size, n)]
        mask = np.ones((batch_size, T), np.float32)
        if tokens.shape[0] < batch_size:
            mask[tokens.shape[0] :] = 0.0
            pad = np.zeros((batch_size - tokens.shape[0], T + 1), tokens.dtype)
            tokens = np.concatenate([tokens, pad])
        yield {"tokens": tokens, "mask": mask}


_RUN_CACHE: dict = {}


def _run_fns(model_cfg: ModelConfig, tc: TrainConfig, loss_fn: Callable):
    """Returns (optimizer, schedule, jitted train step) for a run, reused across runs of the same settings.

    Compiling a train step (and the optimiser's init) costs seconds on a CPU; runs with the
    same (model, train config, loss) -- a resumed run, repeated experiments -- share them. The
    optimiser and schedule are pure functions of the TrainConfig, so the key is complete.
    """
    key = (model_cfg, tc, loss_fn)
    try:
        hash(key)
    except TypeError:  # an unhashable loss callable: no caching
        key = None
    if key is None or key not in _RUN_CACHE:
        optimizer, schedule = make_optimizer(tc), make_schedule(tc)
        fns = (optimizer, schedule, make_train_step(model_cfg, optimizer, loss_fn, schedule=schedule))
        if key is None:
            return fns
        if len(_RUN_CACHE) >= 8:
            _RUN_CACHE.pop(next(iter(_RUN_CACHE)))
        _RUN_CACHE[key] = fns
    return _RUN_CACHE[key]


def train_batch(windows: np.ndarray, batch_size: int, step: int, seed: int) -> dict[str, np.ndarray]:
    """Returns the batch ``{"tokens": [batch_size, seq_len + 1]}`` of global ``step``: a pure function of its arguments."""
    from tokjax.data import batch_indices

    return {"tokens": windows[batch_indices(windows.shape[0], batch_size, step, seed=seed)]}


def train(
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    dataset: Any,
    *,
    workdir: str | os.PathLike | None = None,
    resume: bool = True,
    progress: bool = True,
    loss_fn: Callable = next_token_loss,
    params: Any = None,
    callback: Callable[[int, TrainState, dict], None] | None = None,
) -> tuple[Model, dict[str, list[dict[str, float]]]]:
    """Returns (trained Model, history) after ``train_cfg.total_steps`` optimiser steps.

    ``dataset``: a :class:`tokjax.data.TokenDataset`, a mapping ``{"train", "val"?,
    "bytes_per_token"?}`` of int windows [N, seq_len + 1], or just the train windows.
    ``history`` = ``{"train": [{"step", "loss", "grad_norm", "lr", "tokens_per_s", ...}],
    "eval": [{"step", "loss", "bits_per_token", "bits_per_byte", ...}]}`` (eval needs val windows).

    With ``workdir``, a checkpoint (params, optimiser state, step, rng) is written to
    ``workdir/checkpoints`` every ``checkpoint_every`` steps and at the end, with the history
    (``history.json``) and the run's configs (``run.json``). With ``resume`` (default) an
    existing run there continues from its newest committed checkpoint and ends with bitwise
    the parameters of an uninterrupted run; resuming with other configs, loss or data raises
    ValueError, as does ``resume=False`` on a workdir that already holds checkpoints.
    ``params`` starts from given parameters instead of a fresh init (they are copied, not
    donated). ``callback(step, state, metrics)`` runs after every step (``metrics`` are device
    arrays); the state is donated to the next step, so do not keep it.
    """
    from tqdm.auto import tqdm

    if not isinstance(model_cfg, ModelConfig):
        raise ValueError(f"train needs a ModelConfig, got {type(model_cfg).__name__}")
    if not isinstance(train_cfg, TrainConfig):
        raise ValueError(f"train needs a TrainConfig, got {type(train_cfg).__name__}")
    if not callable(loss_fn):
        raise ValueError(f"loss_fn must be a function (params, cfg, batch, rng) -> (loss, metrics), got {loss_fn!r}")
    if loss_fn is next_token_loss and getattr(train_cfg, "loss", None) is not None:
        from tokjax.train._loss import loss_fn_from_config  # the config's named loss, unless one was passed

        loss_fn = loss_fn_from_config(train_cfg)
    data = _as_data(dataset, model_cfg, train_cfg)
    tc = train_cfg
    optimizer, schedule, step_fn = _run_fns(model_cfg, tc, loss_fn)
    if params is not None:
        from tokjax.model import check_params

        check_params(params, model_cfg)
        params = jax.tree.map(lambda x: jnp.array(x, copy=True), params)  # our copy: the step donates it
    state = init_state(model_cfg, optimizer, tc.seed, params)
    fresh_placement = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)
    history: dict[str, list] = {"train": [], "eval": []}

    ckpt = None
    wd = None
    if workdir is not None:
        wd = Path(workdir).expanduser().absolute()
        if wd.exists() and not wd.is_dir():
            raise ValueError(f"workdir {wd} exists and is not a directory")
        wd.mkdir(parents=True, exist_ok=True)
        record = _run_record(model_cfg, tc, data, loss_fn)
        ckpt = Checkpointer(wd / CHECKPOINT_DIR, max_to_keep=tc.keep_checkpoints)
        latest = ckpt.latest_step()
        if latest is not None:
            if not resume:
                ckpt.close()
                raise ValueError(
                    f"workdir {wd} already holds checkpoints (latest step {latest}); pass resume=True to continue "
                    "that run or use an empty directory"
                )
            run_file = wd / RUN_FILE
            if run_file.is_file():
                try:
                    old = json.loads(run_file.read_text())
                except ValueError:
                    old = None
                changed = _diff(old, record) if isinstance(old, dict) else ["run.json is unreadable"]
                if changed:
                    ckpt.close()
                    raise ValueError(
                        f"cannot resume the run in {wd}: it was started with different settings: " + "; ".join(changed)
                    )
            try:
                state = ckpt.restore(state, latest)
            except BaseException:
                ckpt.close()
                raise
            hist_file = wd / HISTORY_FILE
            if hist_file.is_file():
                try:
                    old_hist = json.loads(hist_file.read_text())
                    history = {k: [e for e in old_hist.get(k, []) if e["step"] <= latest] for k in ("train", "eval")}
                except (ValueError, KeyError, TypeError, AttributeError):
                    pass  # the history is a convenience; the checkpoint is the truth
        _write_json_atomic(wd / RUN_FILE, record)

    # Restored arrays come back "committed" to a device while a fresh state's are not, and jit
    # compiles separately for the two; committing every state the same way lets a resumed run
    # reuse the compiled step (and compute exactly what the straight run computed).
    state = jax.tree.map(lambda x, f: jax.device_put(x, f.sharding), state, fresh_placement)
    start = int(state.step)
    total = tc.total_steps
    bar = tqdm(total=total, initial=start, desc="train", disable=not progress, dynamic_ncols=True, unit="step")
    pending: list[dict] = []
    t_last = time.perf_counter()
    t_start = t_last
    steps_since = 0
    try:
        for s in range(start, total):
            batch = train_batch(data.train, tc.batch_size, s, tc.seed)
            state, metrics = step_fn(state, batch)
            done = s + 1
            pending.append(metrics)
            steps_since += 1
            if done % tc.log_every == 0 or done == total:
                host = jax.device_get(pending)  # the only host sync between logs
                now = time.perf_counter()
                entry = {"step": done}
                for k in host[0]:
                    entry[k] = float(np.mean([float(h[k]) for h in host]))
                entry["tokens_per_s"] = steps_since * tc.tokens_per_step / max(now - t_last, 1e-9)
                entry["elapsed_s"] = now - t_start
                history["train"].append(entry)
                bar.set_postfix(loss=f"{entry['loss']:.3f}", lr=f"{entry.get('lr', float('nan')):.2e}")
                pending, t_last, steps_since = [], now, 0
            if data.val is not None and ((tc.eval_every and done % tc.eval_every == 0) or done == total):
                ev = evaluate(
                    state.params, model_cfg, _val_batches(data.val, tc.batch_size, tc.eval_batches),
                    bytes_per_token=data.bytes_per_token,
                )
                history["eval"].append({"step": done, **ev})
                if progress:
                    bar.write(
                        f"step {done}: val loss {ev['loss']:.4f} nats, {ev['bits_per_token']:.3f} bits/token"
                        + ("" if data.bytes_per_token is None else f", {ev['bits_per_byte']:.3f} bits/byte")
                    )
                t_last = time.perf_counter()  # evaluation time is not training throughput
            if ckpt is not None and ((tc.checkpoint_every and done % tc.checkpoint_every == 0) or done == total):
                ckpt.save(done, state)
                _write_json_atomic(wd / HISTORY_FILE, history)
                t_last = time.perf_counter()
            bar.update(1)
            if callback is not None:
                callback(done, state, metrics)
    finally:
        bar.close()
        if ckpt is not None:
            ckpt.close()
    return Model(params=state.params, cfg=model_cfg), history
