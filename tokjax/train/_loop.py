"""The training loop: batches, jitted steps, periodic logs/evals/checkpoints, and bitwise-exact resume.

Resume is exact because everything a step depends on is either in the checkpoint (params,
optimiser state, step, base PRNG key) or a pure function of (seed, step): the batch of step s
is ``tokjax.data.batch_indices(num_windows, batch_size, s, seed=seed)`` (a fresh seeded
permutation per epoch) for token windows, or ``batch_fn(s)`` for a batch function, and the
loss's key is ``fold_in(rng, s)``. A run killed after its checkpoint at step N and resumed
therefore replays exactly the computation of an uninterrupted run from step N on. An iterable
of batches is replayed by skipping the first N batches, which is exact when it yields the same
stream again.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import time
from pathlib import Path
import itertools
from typing import Any, Callable, Iterable, Iterator, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from tokjax.model import Model, ModelConfig
from tokjax.train._checkpoint import Checkpointer
from tokjax.train._config import TrainConfig
from tokjax.train._eval import evaluate
from tokjax.train._loss import check_batch, loss_fn_from_config, next_token_loss
from tokjax.train._step import (
    TrainState, init_state, make_optimizer, make_schedule, make_train_step, trainable_mask,
)

__all__ = ["train", "train_batch"]

RUN_FILE = "run.json"
HISTORY_FILE = "history.json"
CHECKPOINT_DIR = "checkpoints"


def _is_array(x: Any) -> bool:
    return isinstance(x, np.ndarray) or (hasattr(x, "shape") and hasattr(x, "dtype"))


def _check_windows(name: str, arr: Any, model_cfg: ModelConfig | None, train_cfg: TrainConfig) -> np.ndarray | None:
    """Returns int32 windows [N, seq_len + 1] (None when empty) after checking shape, dtype and token ids."""
    width = train_cfg.seq_len + 1
    arr = np.asarray(arr)
    if arr.ndim != 2 or arr.shape[1] != width:
        raise ValueError(
            f"{name} windows must be [N, seq_len + 1] = [N, {width}] for TrainConfig.seq_len={train_cfg.seq_len}, "
            f"got shape {arr.shape}"
        )
    if arr.dtype.kind not in "iu":
        raise ValueError(f"{name} windows must hold integer token ids, got dtype {arr.dtype}")
    if model_cfg is not None and arr.size and (arr.min() < 0 or arr.max() >= model_cfg.vocab_size):
        raise ValueError(
            f"{name} token ids must lie in [0, {model_cfg.vocab_size}) (the model's vocab_size), "
            f"got values in [{arr.min()}, {arr.max()}]"
        )
    return arr.astype(np.int32, copy=False) if arr.shape[0] else None


def _batch_digest(batch: Mapping) -> str:
    """Returns 16 hex digits of sha256 over a batch's keys, dtypes, shapes and bytes (nested dicts too)."""
    h = hashlib.sha256()
    leaves, _ = jax.tree_util.tree_flatten_with_path(jax.device_get(dict(batch)))
    for path, leaf in leaves:
        a = np.ascontiguousarray(np.asarray(leaf))
        h.update(f"{jax.tree_util.keystr(path)}|{a.dtype.str}|{a.shape}|".encode())
        h.update(a.tobytes())
    return h.hexdigest()[:16]


@dataclasses.dataclass
class _Source:
    """Where the batch of each step comes from: token windows, a batch_fn(step) or an iterable of batches."""

    kind: str  # "windows" | "batch_fn" | "iterable"
    windows: np.ndarray | None = None
    fn: Callable | None = None
    iterator: Iterator | None = None
    val: Any = None  # windows [N, seq_len + 1] or a list of dict batches
    bytes_per_token: float | None = None
    _first: Any = None  # the first batch of an iterable (read to fingerprint it, then replayed)

    def fingerprint(self) -> dict:
        """Returns what identifies the training data in run.json (a resume with other data is refused)."""
        if self.kind == "windows":
            digest = hashlib.sha256(np.ascontiguousarray(self.windows).tobytes()).hexdigest()[:16]
            return {"train_windows": int(self.windows.shape[0]), "train_sha256_16": digest}
        # A function or a stream cannot be hashed as a whole: its first batch stands for it.
        first = self.fn(0) if self.kind == "batch_fn" else self._peek()
        return {"source": self.kind, "batch0_sha256_16": _batch_digest(_as_batch(first, 0, self.kind))}

    def _peek(self):
        if self._first is None:
            try:
                self._first = next(self.iterator)
            except StopIteration:
                raise ValueError("the iterable of training batches is empty") from None
            self.iterator = itertools.chain([self._first], self.iterator)
        return self._first

    def batches(self, start: int, train_cfg: TrainConfig) -> Iterator[dict]:
        """Yields the batch of every step from ``start`` on (an iterable first skips ``start`` batches)."""
        if self.kind == "windows":
            for s in itertools.count(start):
                yield train_batch(self.windows, train_cfg.batch_size, s, train_cfg.seed)
        elif self.kind == "batch_fn":
            for s in itertools.count(start):
                yield _as_batch(self.fn(s), s, self.kind)
        else:
            # Resuming a stream: the batches the checkpointed steps consumed are read and dropped,
            # so step s still sees the s-th batch (exact when the iterable replays the same stream).
            for s in range(start):
                if next(self.iterator, None) is None:
                    raise ValueError(f"the iterable of training batches ran out after {s} batches while skipping "
                                     f"the {start} that the checkpoint had already consumed")
            for s in itertools.count(start):
                b = next(self.iterator, None)
                if b is None:
                    raise ValueError(f"the iterable of training batches ran out after {s} batches; "
                                     f"TrainConfig.total_steps={train_cfg.total_steps} needs one per step")
                yield _as_batch(b, s, self.kind)


def _as_batch(b: Any, step: int, kind: str) -> dict:
    if not isinstance(b, Mapping):
        what = f"batch_fn({step})" if kind == "batch_fn" else f"batch {step} of the iterable"
        raise ValueError(f"{what} is a {type(b).__name__}; a batch must be a dict of arrays "
                         "(e.g. {'tokens': int [B, T+1], 'mask': ..., <any key the loss reads>})")
    return dict(b)


def _as_source(data: Any, model_cfg: ModelConfig | None, train_cfg: TrainConfig) -> _Source:
    """Returns the data source of a run after checking what can be checked before the first step."""
    val = bpt = None
    if isinstance(data, Mapping):
        if "train" not in data:
            raise ValueError(
                f"a dataset mapping needs a 'train' entry (windows, a batch_fn or an iterable of batches), got keys "
                f"{list(data)}; to train on one fixed batch pass a batch_fn: lambda step: batch"
            )
        part, val, bpt = data["train"], data.get("val"), data.get("bytes_per_token")
    elif hasattr(data, "train") and not callable(data):
        part, val, bpt = data.train, getattr(data, "val", None), getattr(data, "bytes_per_token", None)
    else:
        part = data
    if _is_array(part):
        windows = _check_windows("train", part, model_cfg, train_cfg)
        if windows is None or windows.shape[0] < train_cfg.batch_size:
            n = 0 if windows is None else windows.shape[0]
            raise ValueError(f"the training set has {n} windows, fewer than batch_size={train_cfg.batch_size}")
        if model_cfg is not None and train_cfg.seq_len > model_cfg.max_len:
            raise ValueError(f"TrainConfig.seq_len={train_cfg.seq_len} exceeds ModelConfig.max_len={model_cfg.max_len}")
        src = _Source("windows", windows=windows)
    elif callable(part):
        src = _Source("batch_fn", fn=part)
    elif isinstance(part, Iterable) and not isinstance(part, (str, bytes)):
        src = _Source("iterable", iterator=iter(part))
    else:
        raise ValueError(
            "data (the dataset) must be a TokenDataset (with .train/.val windows), a mapping {'train', 'val'?, "
            "'bytes_per_token'?}, an int array of windows [N, seq_len + 1], a batch_fn(step) -> dict, or an "
            f"iterable of dict batches; got {type(part).__name__}"
        )
    if val is not None:
        if model_cfg is None:
            raise ValueError("validation data needs a model to evaluate (model_cfg); with model_cfg=None leave 'val' "
                             "out and evaluate in the callback")
        if _is_array(val):
            val = _check_windows("val", val, model_cfg, train_cfg)
        elif isinstance(val, (list, tuple)) and all(isinstance(b, Mapping) for b in val):
            val = [dict(b) for b in val] or None
        else:
            raise ValueError(f"'val' must be int windows [N, seq_len + 1] or a list of dict batches, "
                             f"got {type(val).__name__}")
    if bpt is not None:
        bpt = float(bpt)
        if not (math.isfinite(bpt) and bpt > 0):
            bpt = None
    src.val, src.bytes_per_token = val, bpt
    return src


def _check_first_batch(batch: dict, model_cfg: ModelConfig | None, require_tokens: bool) -> None:
    """Returns None; raises ValueError for a first batch with bad shapes or token ids outside the vocabulary."""
    check_batch(batch, model_cfg, require_tokens=require_tokens)
    if model_cfg is None:
        return
    for name in ("tokens", "inputs", "targets"):
        if name in batch:
            ids = np.asarray(jax.device_get(batch[name]))
            if ids.size and (ids.min() < 0 or ids.max() >= model_cfg.vocab_size):
                raise ValueError(f"batch[{name!r}] ids must lie in [0, {model_cfg.vocab_size}) (the model's "
                                 f"vocab_size), got values in [{ids.min()}, {ids.max()}]")


def _n_tokens(batch: dict) -> int:
    """Returns the predicted positions of a batch (0 when it has no token entries), from shapes only."""
    if "tokens" in batch and len(np.shape(batch["tokens"])) == 2:
        B, S = np.shape(batch["tokens"])
        return B * (S - 1)
    if "targets" in batch:
        return int(np.prod(np.shape(batch["targets"])))
    return 0


def _run_record(model_cfg: ModelConfig | None, train_cfg: TrainConfig, source: _Source, loss_fn: Callable) -> dict:
    """Returns what must not change between a run and its resumption (configs, loss, data fingerprint)."""
    return {
        "model": None if model_cfg is None else dataclasses.asdict(model_cfg),
        "train": train_cfg.to_dict(),
        "loss_fn": f"{getattr(loss_fn, '__module__', '?')}.{getattr(loss_fn, '__qualname__', repr(loss_fn))}",
        "data": source.fingerprint(),
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


def _run_fns(model_cfg: ModelConfig | None, tc: TrainConfig, loss_fn: Callable):
    """Returns (optimizer, schedule, jitted train step) for a run, reused across runs of the same settings.

    Compiling a train step (and the optimiser's init) costs seconds on a CPU; runs with the
    same (model, train config, loss) -- a resumed run, repeated experiments -- share them. The
    optimiser, schedule and trainable subset are pure functions of the TrainConfig, so the key is
    complete.
    """
    key = (model_cfg, tc, loss_fn)
    try:
        hash(key)
    except TypeError:  # an unhashable loss callable: no caching
        key = None
    if key is None or key not in _RUN_CACHE:
        optimizer, schedule = make_optimizer(tc), make_schedule(tc)
        step = make_train_step(model_cfg, optimizer, loss_fn, schedule=schedule, trainable=tc.trainable,
                               scan_unroll=tc.scan_unroll, remat=tc.remat)
        fns = (optimizer, schedule, step)
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


def _start_params(model_cfg: ModelConfig | None, params: Any) -> Any:
    """Returns our own copy of the starting params (the step donates them) after checking them against the model."""
    if params is None:
        if model_cfg is None:
            raise ValueError("train(None, ...) trains a plain pytree: pass its starting params=")
        return None
    if model_cfg is not None:
        from tokjax.model import check_params, param_shapes

        own = param_shapes(model_cfg)
        if isinstance(params, Mapping) and set(own) <= set(params):
            # Extra top-level entries (an adapter, an auxiliary head) train alongside the model's own.
            check_params({k: params[k] for k in own}, model_cfg)
        else:
            check_params(params, model_cfg)
    return jax.tree.map(lambda x: jnp.array(x, copy=True), params)


def train(
    model_cfg: ModelConfig | None,
    train_cfg: TrainConfig,
    data: Any,
    *,
    workdir: str | os.PathLike | None = None,
    resume: bool = True,
    progress: bool = True,
    loss_fn: Callable | None = None,
    params: Any = None,
    callback: Callable[[int, TrainState, dict], None] | None = None,
) -> tuple[Any, dict[str, list[dict[str, float]]]]:
    """Returns (trained Model, history) after ``train_cfg.total_steps`` optimiser steps; (params, history) when
    ``model_cfg`` is None.

    ``data`` is one of

    * token windows: a :class:`tokjax.data.TokenDataset`, a mapping ``{"train", "val"?,
      "bytes_per_token"?}`` of int windows [N, seq_len + 1], or just the train windows; step s
      trains on ``train_batch(windows, batch_size, s, seed)`` = ``{"tokens": [batch_size, seq_len + 1]}``;
    * a ``batch_fn(step) -> dict`` of arrays, which must be a pure function of ``step`` (then a
      resumed run is bitwise the uninterrupted one);
    * an iterable of dict batches, one per step; a resumed run reads and drops the batches the
      checkpointed steps consumed, so it is exact only when the iterable replays the same stream.

    ``batch_fn`` and iterables may also sit under a mapping's ``"train"`` with ``"val"`` windows
    or a list of dict batches. Every key of a batch reaches the loss (tokens, mask, weights,
    segment_ids, prompt_lengths, lengths, ref_logp, rewards, inputs/targets, embeds, ...); the keys
    with a shared meaning are checked by :func:`check_batch` and the first batch's token ids
    against the vocabulary. ``loss_fn(params, cfg, batch, rng) -> (loss, metrics)``: None = the
    registry loss of ``train_cfg.loss`` when set, else :func:`tokjax.losses.next_token_loss`.
    ``params`` starts from given parameters instead of a fresh init (copied, not donated); a dict
    may carry extra top-level entries next to the model's (an adapter, a head) that train too.
    ``train_cfg.trainable`` restricts the optimiser to some keys / path prefixes and keeps the rest
    bit-for-bit frozen. With ``model_cfg=None``, ``params`` is any pytree, a loss is required (it
    gets ``cfg=None``) and there is no validation set.

    ``history`` = ``{"train": [{"step", "loss", "grad_norm", "lr", "tokens_per_s", ...}],
    "eval": [{"step", "loss", "bits_per_token", "bits_per_byte", ...}]}`` (eval needs val data).

    With ``workdir``, a checkpoint (params, optimiser state, step, rng) is written to
    ``workdir/checkpoints`` every ``checkpoint_every`` steps and at the end, with the history
    (``history.json``) and the run's configs (``run.json``: configs, loss and a data fingerprint,
    for a batch_fn or iterable the hash of its first batch). With ``resume`` (default) an existing
    run there continues from its newest committed checkpoint and ends with bitwise the parameters
    of an uninterrupted run; resuming with other configs, loss or data raises ValueError, as does
    ``resume=False`` on a workdir that already holds checkpoints. ``callback(step, state,
    metrics)`` runs after every step (``metrics`` are device arrays); the state is donated to the
    next step, so do not keep it.
    """
    from tqdm.auto import tqdm

    if model_cfg is not None and not isinstance(model_cfg, ModelConfig):
        raise ValueError(f"train needs a ModelConfig (or None to train a plain pytree), got {type(model_cfg).__name__}")
    if not isinstance(train_cfg, TrainConfig):
        raise ValueError(f"train needs a TrainConfig, got {type(train_cfg).__name__}")
    tc = train_cfg
    if loss_fn is None:
        loss_fn = loss_fn_from_config(tc)  # the config's registry loss, else the default next-token loss
    if not callable(loss_fn):
        raise ValueError(f"loss_fn must be a function (params, cfg, batch, rng) -> (loss, metrics), got {loss_fn!r}")
    default_loss = loss_fn is next_token_loss
    if model_cfg is None and default_loss:
        raise ValueError("train(None, ...) trains a plain pytree: give a loss_fn(params, None, batch, rng) or "
                         "TrainConfig.loss (the default next-token loss needs a model)")
    source = _as_source(data, model_cfg, tc)
    params = _start_params(model_cfg, params)
    if tc.trainable is not None:  # unknown keys fail here, before any compile
        from tokjax.model import param_shapes

        trainable_mask(param_shapes(model_cfg) if params is None else params, tc.trainable)
    optimizer, schedule, step_fn = _run_fns(model_cfg, tc, loss_fn)
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
        record = _run_record(model_cfg, tc, source, loss_fn)
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
    steps_since = tokens_since = 0
    batches = source.batches(start, tc) if start < total else iter(())
    try:
        for s in range(start, total):
            batch = next(batches)
            if s == start:
                _check_first_batch(batch, model_cfg, default_loss)
            else:
                check_batch(batch, model_cfg, require_tokens=default_loss)
            state, metrics = step_fn(state, batch)
            done = s + 1
            pending.append(metrics)
            steps_since += 1
            tokens_since += _n_tokens(batch)
            if done % tc.log_every == 0 or done == total:
                host = jax.device_get(pending)  # the only host sync between logs
                now = time.perf_counter()
                entry = {"step": done}
                for k in host[0]:
                    entry[k] = float(np.mean([np.mean(h[k]) for h in host]))
                if tokens_since:
                    entry["tokens_per_s"] = tokens_since / max(now - t_last, 1e-9)
                entry["steps_per_s"] = steps_since / max(now - t_last, 1e-9)
                entry["elapsed_s"] = now - t_start
                history["train"].append(entry)
                bar.set_postfix(loss=f"{entry['loss']:.3f}", lr=f"{entry.get('lr', float('nan')):.2e}")
                pending, t_last, steps_since, tokens_since = [], now, 0, 0
            if source.val is not None and ((tc.eval_every and done % tc.eval_every == 0) or done == total):
                if isinstance(source.val, list):
                    val_batches = source.val[: tc.eval_batches]  # None: all
                else:
                    val_batches = _val_batches(source.val, tc.batch_size, tc.eval_batches)
                ev = evaluate(state.params, model_cfg, val_batches, bytes_per_token=source.bytes_per_token)
                history["eval"].append({"step": done, **ev})
                if progress:
                    bar.write(
                        f"step {done}: val loss {ev['loss']:.4f} nats, {ev['bits_per_token']:.3f} bits/token"
                        + ("" if source.bytes_per_token is None else f", {ev['bits_per_byte']:.3f} bits/byte")
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
    if model_cfg is None:
        return state.params, history
    return Model(params=state.params, cfg=model_cfg), history
