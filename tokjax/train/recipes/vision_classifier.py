"""Fit the image-quality classifier of :mod:`tokjax.vision.quality` through :func:`tokjax.train.train`, cached on disk.

The classifier is a standalone params pytree (``model_cfg=None``); step s trains on the batch
:func:`tokjax.vision.quality.classifier_batch_fn` gives (a per-epoch permutation of the images)
with :func:`tokjax.vision.quality.classifier_loss` (softmax cross-entropy) by AdamW.

Cache. With ``cache=True`` the trained params are kept in
``<cache_root>/vision_classifier/<key>.npz`` (``cache_root``: ``cache_dir``, else ``$TOKJAX_CACHE``,
else ``~/.cache/tokjax``), where ``key`` is the SHA-256 of a format version, the images (as
float32: dtype, shape and bytes), the labels (as int32) and every hyperparameter. Any change of
data (another tokenizer round trip, another split) or of a setting is another key, so a stale
classifier is never reused; a file that does not load as the expected params is retrained and
replaced. Files are written to a temporary sibling and renamed, so a crash never leaves half a file.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from tokjax._paths import cache_root
from tokjax.train._config import TrainConfig
from tokjax.train._loop import train
from tokjax.vision.quality import classifier_batch_fn, classifier_init, classifier_loss

__all__ = ["CACHE_SUBDIR", "FORMAT_VERSION", "classifier_cache_path", "train_classifier"]

#: bump when the classifier, its loss or the training recipe changes what a key would produce
FORMAT_VERSION = 1
CACHE_SUBDIR = "vision_classifier"


def _positive_int(name: str, v) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
        raise ValueError(f"{name} must be an int >= 1, got {v!r}")
    return int(v)


def _prepare(images, labels, num_classes):
    """Returns (images float32, labels int32, num_classes) after checking them."""
    x = np.asarray(images)
    if x.dtype.kind not in "fiu":
        raise ValueError(f"images must be numeric pixels in [0, 1], got dtype {x.dtype}")
    x = x.astype(np.float32)
    if x.ndim not in (3, 4) or x.shape[0] < 2:
        raise ValueError(f"images must be [N, H, W] or [N, H, W, C] with N >= 2, got shape {x.shape}")
    if not np.isfinite(x).all() or x.min() < 0 or x.max() > 1:
        raise ValueError("images must be finite pixels in [0, 1]")
    y = np.asarray(labels)
    if y.shape != (x.shape[0],) or y.dtype.kind not in "iu":
        raise ValueError(f"labels must be integer class ids of shape [{x.shape[0]}], got {y.dtype} {y.shape}")
    if y.min() < 0:
        raise ValueError(f"labels must be >= 0, got {y.min()}")
    k = int(y.max()) + 1 if num_classes is None else _positive_int("num_classes", num_classes)
    if k < 2:
        raise ValueError(f"a classifier needs num_classes >= 2, got {k}")
    if y.max() >= k:
        raise ValueError(f"labels must lie in [0, num_classes={k}), got a label {y.max()}")
    return x, y.astype(np.int32), k


def _key(x: np.ndarray, y: np.ndarray, settings: dict) -> str:
    h = hashlib.sha256()
    h.update(json.dumps({"format": FORMAT_VERSION, **settings}, sort_keys=True).encode())
    for a in (x, y):
        a = np.ascontiguousarray(a)
        h.update(f"|{a.dtype.str}|{a.shape}|".encode())
        h.update(a.tobytes())
    return h.hexdigest()[:32]


def classifier_cache_path(images, labels, *, steps: int, seed: int = 0, num_classes: int | None = None,
                          hidden: int = 256, batch_size: int = 128, lr: float = 3e-3, weight_decay: float = 1e-4,
                          cache_dir: str | os.PathLike | None = None) -> Path:
    """Returns the cache file :func:`train_classifier` with these arguments reads and writes (it may not exist)."""
    x, y, k = _prepare(images, labels, num_classes)
    settings = _settings(x, k, steps, seed, hidden, batch_size, lr, weight_decay)
    return cache_root(cache_dir) / CACHE_SUBDIR / f"{_key(x, y, settings)}.npz"


def _settings(x, k, steps, seed, hidden, batch_size, lr, weight_decay) -> dict:
    lr, weight_decay = float(lr), float(weight_decay)
    if not (math.isfinite(lr) and lr > 0):
        raise ValueError(f"lr must be a finite number > 0, got {lr!r}")
    if not (math.isfinite(weight_decay) and weight_decay >= 0):
        raise ValueError(f"weight_decay must be >= 0, got {weight_decay!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be an int >= 0, got {seed!r}")
    batch_size = _positive_int("batch_size", batch_size)
    if batch_size > x.shape[0]:
        raise ValueError(f"batch_size={batch_size} exceeds the number of images ({x.shape[0]})")
    return {"image_shape": list(x.shape[1:]), "num_classes": k, "steps": _positive_int("steps", steps),
            "seed": int(seed), "hidden": _positive_int("hidden", hidden), "batch_size": batch_size, "lr": lr,
            "weight_decay": weight_decay}


def _load(path: Path, template: dict) -> dict | None:
    """Returns the cached params shaped like ``template``, or None when the file is missing or unusable."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            params = {k: np.asarray(z[k]) for k in template}
    except (OSError, ValueError, KeyError):
        return None
    for k, t in template.items():
        if params[k].shape != t.shape or params[k].dtype != t.dtype or not np.isfinite(params[k]).all():
            return None
    return {k: jnp.asarray(v) for k, v in params.items()}


def _save(path: Path, params: dict, settings: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}.npz")
    arrays = {k: np.asarray(v) for k, v in params.items()}
    np.savez(tmp, **arrays, settings=np.array(json.dumps({"format": FORMAT_VERSION, **settings})))
    os.replace(tmp, path)


def train_classifier(images, labels, *, steps: int = 1500, seed: int = 0, num_classes: int | None = None,
                     hidden: int = 256, batch_size: int = 128, lr: float = 3e-3, weight_decay: float = 1e-4,
                     cache: bool = True, cache_dir: str | os.PathLike | None = None,
                     progress: bool = False) -> dict:
    """Returns classifier params (:func:`tokjax.vision.quality.classifier_init` layout) fit to ``(images, labels)``.

    ``images`` [N, H, W] or [N, H, W, C] in [0, 1] -- pass them through the same tokenizer round
    trip as the samples to be judged, so the classifier sees what generated images look like --
    and integer ``labels`` [N] in [0, ``num_classes``) (default: max label + 1). Training:
    ``steps`` AdamW steps on batches of ``batch_size`` (a fresh permutation per epoch, seeded by
    ``seed``, which also seeds the init), learning rate ``lr`` with a linear warm-up over
    min(100, steps // 10) steps and a cosine decay to lr / 10, ``weight_decay`` on the matrices,
    gradient clipping at global norm 1. With ``cache`` the result is read from / written to the
    cache file :func:`classifier_cache_path` names (module docstring), keyed by the data and
    every setting; ``cache=False`` always trains and writes nothing.

    Raises:
      ValueError: malformed images or labels, labels out of range, fewer than 2 classes or images, or
        invalid hyperparameters.
    """
    x, y, k = _prepare(images, labels, num_classes)
    settings = _settings(x, k, steps, seed, hidden, batch_size, lr, weight_decay)
    init = classifier_init(jax.random.key(settings["seed"]), x.shape[1:], k, settings["hidden"])
    path = cache_root(cache_dir) / CACHE_SUBDIR / f"{_key(x, y, settings)}.npz"
    if cache:
        cached = _load(path, init)
        if cached is not None:
            return cached
    steps = settings["steps"]
    tcfg = TrainConfig(lr=settings["lr"], warmup_steps=min(100, steps // 10), total_steps=steps,
                       weight_decay=settings["weight_decay"], grad_clip=1.0, batch_size=settings["batch_size"],
                       seq_len=1, seed=settings["seed"], log_every=max(1, steps // 10), eval_every=0,
                       checkpoint_every=0)
    batch_fn = classifier_batch_fn(x, y, batch_size=settings["batch_size"], seed=settings["seed"])
    params, _ = train(None, tcfg, batch_fn, loss_fn=classifier_loss, params=init, progress=progress)
    params = {kk: jnp.asarray(v) for kk, v in params.items()}
    if cache:
        _save(path, params, settings)
    return params
