"""P26 ZeTT: fit the hypernetwork through :func:`tokjax.train.train`, and keep it as an orbax checkpoint.

The trained pytree is ``{"hypernet": ..., "lm": the frozen LM's params}`` with
``TrainConfig(trainable=("hypernet",))``, so the LM never changes; the loss and the step batches
are :func:`tokjax.tokenizers.zett.zett_loss` / :func:`~tokjax.tokenizers.zett.zett_batch_fn`
(and the optional warm-up's ``zett_warmup_loss`` / ``zett_warmup_batch_fn``).

* :func:`train_hypernet` -- the one-call fit.
* :func:`save_hypernet` / :func:`load_hypernet` -- a directory holding the params (orbax, via
  :func:`tokjax.train.save_params`) and ``hypernet.json`` (config and metadata).
* :func:`cached_hypernet` -- train once on a tokenizer pool built from ``docs`` and cache the
  result under ``cache_dir`` keyed by the settings (what the P26 and P39 experiments share).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax

from tokjax.model import Model
from tokjax.tokenizers.zett import (
    Hypernet,
    HypernetConfig,
    TokenizerPool,
    init_hypernet,
    make_tokenizer_pool,
    zett_batch_fn,
    zett_loss,
    zett_warmup_batch_fn,
    zett_warmup_loss,
)
from tokjax.train._checkpoint import load_params, save_params
from tokjax.train._config import TrainConfig
from tokjax.train._loop import train

__all__ = ["cached_hypernet", "load_hypernet", "save_hypernet", "train_hypernet"]

_META_FILE = "hypernet.json"
_PARAMS_DIR = "params"
_FORMAT = 2  # 1 was the private .npz format of the first ZeTT version


def _train_config(steps: int, lr: float, batch_size: int, seq_len: int, seed: int, log_every: int) -> TrainConfig:
    # Adam (no weight decay), clipping at 1 and warmup-cosine to lr/10: the official ZeTT recipe, scaled down.
    return TrainConfig(lr=lr, warmup_steps=max(1, min(20, steps // 10)) if steps > 1 else 0, total_steps=steps,
                       weight_decay=0.0, grad_clip=1.0, b2=0.999, min_lr_ratio=0.1, batch_size=batch_size,
                       seq_len=seq_len, seed=seed, log_every=log_every, eval_every=0, trainable=("hypernet",))


def train_hypernet(
    model: Model,
    pool: TokenizerPool,
    hcfg: HypernetConfig | None = None,
    *,
    steps: int = 300,
    warmup_steps: int = 100,
    batch_size: int = 8,
    lr: float = 1e-3,
    lexical_weight: float = 0.5,
    vocab_sample: int = 512,
    seed: int = 0,
    hypernet: Hypernet | None = None,
    progress: bool = False,
    log_every: int = 25,
    workdir: str | os.PathLike | None = None,
) -> tuple[Hypernet, dict]:
    """Returns (trained Hypernet, history) for the frozen ``model`` on a tokenizer ``pool``.

    ``warmup_steps`` first regress the mean-of-parts embeddings of pool tokens
    (:func:`~tokjax.tokenizers.zett.zett_warmup_loss`, no LM run); the ``steps`` after that
    minimise :func:`~tokjax.tokenizers.zett.zett_loss` on :func:`~tokjax.tokenizers.zett.zett_batch_fn`
    batches. Each phase is one :func:`tokjax.train.train` run (Adam, clipping, warmup-cosine; the
    LM is frozen by ``trainable``); with ``workdir`` they checkpoint and resume under
    ``workdir/warmup`` and ``workdir/train``. ``history``: ``{"warmup": [...], "train": [...]}``
    (train's logged rows: ``step``, ``loss``, ``ce``, ``lexical_mse``, ...) and ``seconds``.
    """
    if not isinstance(model, Model):
        raise ValueError(f"model must be a tokjax Model, got {type(model).__name__}")
    if not isinstance(pool, TokenizerPool):
        raise ValueError(f"pool must be a TokenizerPool (see make_tokenizer_pool), got {type(pool).__name__}")
    for name, v, low in (("steps", steps, 1), ("warmup_steps", warmup_steps, 0), ("batch_size", batch_size, 1),
                         ("log_every", log_every, 1)):
        if isinstance(v, bool) or not isinstance(v, int) or v < low:
            raise ValueError(f"{name} must be an int >= {low}, got {v!r}")
    if hypernet is not None:
        hcfg = hypernet.cfg
    elif hcfg is None:
        hcfg = HypernetConfig(d_model=model.cfg.d_model, maxlen=pool.ids.shape[2])
    if hcfg.maxlen != pool.ids.shape[2]:
        raise ValueError(f"hypernet maxlen {hcfg.maxlen} differs from the pool's {pool.ids.shape[2]}")
    if hcfg.d_model != model.cfg.d_model:
        raise ValueError(f"hypernet predicts d_model={hcfg.d_model}, the model has {model.cfg.d_model}")
    hn = hypernet if hypernet is not None else init_hypernet(hcfg, jax.random.key(seed))
    train_fn = zett_batch_fn(pool, batch_size=batch_size, vocab_sample=vocab_sample, seed=seed)  # checks sizes first
    wd = None if workdir is None else Path(workdir)
    params = {"hypernet": hn.params, "lm": model.params}
    history: dict[str, Any] = {"warmup": [], "train": []}
    t0 = time.perf_counter()
    if warmup_steps:
        tc = _train_config(warmup_steps, lr, batch_size, pool.seq_len, seed, min(log_every, warmup_steps))
        loss = functools.partial(zett_warmup_loss, hypernet_cfg=hcfg, lm_cfg=model.cfg)
        params, hist = train(None, tc, zett_warmup_batch_fn(pool, vocab_sample=vocab_sample, seed=seed), loss_fn=loss,
                             params=params, progress=progress, workdir=None if wd is None else wd / "warmup")
        history["warmup"] = hist["train"]
    tc = _train_config(steps, lr, batch_size, pool.seq_len, seed, min(log_every, steps))
    loss = functools.partial(zett_loss, hypernet_cfg=hcfg, lm_cfg=model.cfg, lexical_weight=float(lexical_weight))
    params, hist = train(None, tc, train_fn, loss_fn=loss, params=params, progress=progress,
                         workdir=None if wd is None else wd / "train")
    history["train"] = hist["train"]
    history["seconds"] = time.perf_counter() - t0
    return Hypernet(params=params["hypernet"], cfg=hcfg), history


# ----------------------------------------------------------------------------- save / load
def save_hypernet(path: str | os.PathLike, hypernet: Hypernet, meta: dict | None = None) -> Path:
    """Returns ``path`` after writing ``hypernet`` there: a directory with the params (orbax) and
    ``hypernet.json`` (config and the JSON-serialisable ``meta``). Written to a temporary sibling
    and renamed, so a crash never leaves a half-written hypernet; ValueError if ``path`` exists."""
    if not isinstance(hypernet, Hypernet):
        raise ValueError(f"hypernet must be a zett.Hypernet, got {type(hypernet).__name__}")
    path = Path(path).expanduser().absolute()
    if path.exists():
        raise ValueError(f"{path} already exists; hypernet checkpoints are never overwritten in place")
    header = json.dumps({"format": _FORMAT, "cfg": dataclasses.asdict(hypernet.cfg), "meta": meta or {}})
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    save_params(tmp / _PARAMS_DIR, hypernet.params)
    (tmp / _META_FILE).write_text(header)
    tmp.rename(path)
    return path


def load_hypernet(path: str | os.PathLike) -> tuple[Hypernet, dict]:
    """Returns (Hypernet, meta) saved by :func:`save_hypernet`; ValueError for a missing or foreign path."""
    path = Path(path).expanduser().absolute()
    meta_file = path / _META_FILE
    if not meta_file.is_file():
        raise ValueError(f"no hypernet at {path} (expected a directory written by save_hypernet)")
    try:
        header = json.loads(meta_file.read_text())
        cfg = HypernetConfig(**header["cfg"])
    except (ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{meta_file} is not a tokjax hypernet header: {err}") from None
    if header.get("format") != _FORMAT:
        raise ValueError(f"{path} holds hypernet format {header.get('format')!r}, this tokjax reads {_FORMAT}")
    template = jax.eval_shape(lambda: init_hypernet(cfg, jax.random.key(0)).params)
    try:
        params = load_params(path / _PARAMS_DIR, template)
    except FileNotFoundError as err:
        raise ValueError(f"no hypernet params at {path}: {err}") from None
    return Hypernet(params=params, cfg=cfg), header.get("meta", {})


def _config_key(payload: dict) -> str:
    """Returns a short stable hash of a JSON-serialisable training configuration (cache names)."""
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:12]


def cached_hypernet(
    model: Model,
    old_tok: Any,
    docs: Sequence[str] | None = None,
    *,
    cache_dir: str | os.PathLike,
    name: str,
    pool_vocab_sizes: Sequence[int] = (512, 768, 1024, 1536, 2048, 3072),
    steps: int = 600,
    lr: float = 3e-3,
    seed: int = 0,
    hcfg: HypernetConfig | None = None,
    progress: bool = False,
    train_if_missing: bool = True,
) -> tuple[Hypernet, dict] | None:
    """Returns (Hypernet, meta) for ``model`` (tokenizer ``old_tok``), trained once and cached.

    The cache entry ``<cache_dir>/<name>-<hash of the settings>`` makes later calls load in a
    second; ``name`` identifies the model (e.g. the pretrained name). A missing entry is trained
    on a :func:`~tokjax.tokenizers.zett.make_tokenizer_pool` over ``docs`` (the model's training
    text) and saved; with ``train_if_missing=False`` it returns None instead. ``meta`` holds the
    settings, the last training rows and the wall time.
    """
    hcfg = hcfg or HypernetConfig(d_model=model.cfg.d_model)
    settings = {"name": name, "pool": [int(v) for v in pool_vocab_sizes], "steps": steps, "lr": lr, "seed": seed,
                "hcfg": dataclasses.asdict(hcfg), "version": _FORMAT}
    path = Path(cache_dir).expanduser().absolute() / f"{name}-{_config_key(settings)}"
    if (path / _META_FILE).is_file():
        return load_hypernet(path)
    if not train_if_missing:
        return None
    if not docs:
        raise ValueError(f"no cached hypernet at {path}: pass the training docs to train one")
    pool = make_tokenizer_pool(old_tok, docs, pool_vocab_sizes, maxlen=hcfg.maxlen, seed=seed)
    hn, history = train_hypernet(model, pool, hcfg, steps=steps, warmup_steps=0 if hcfg.residual else 100,
                                 lr=lr, seed=seed, progress=progress)
    meta = {"settings": settings, "seconds": history["seconds"], "train": history["train"][-4:]}
    try:
        save_hypernet(path, hn, meta)
    except ValueError:  # another process cached the same settings meanwhile: theirs is as good
        pass
    return hn, meta
