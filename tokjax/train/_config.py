"""TrainConfig and the YAML loaders: training hyperparameters, and whole "run" configs (tokenizer, data, model, train).

A TrainConfig is frozen and hashable like ModelConfig, so it can be closed over by jitted
functions without retracing surprises. Every loader rejects unknown keys and wrong types with a
ValueError that names the file and the key, because a typo in a config (``warmup_step:``) that
is silently ignored costs a whole training run.
"""

from __future__ import annotations

import dataclasses
import math
import os
import types
import typing
from pathlib import Path
from typing import Any, Mapping

from tokjax.model import ModelConfig

__all__ = ["TrainConfig", "RunConfig", "load_config", "load_run_config", "train_config_from_dict"]


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """The frozen hyperparameters of one training run (hashable, so jitted code can close over it).

    Optimiser: AdamW (``b1``, ``b2``, ``weight_decay`` on matrices only) with global-norm
    gradient clipping at ``grad_clip`` (``None`` or 0 turns it off) and a learning rate that
    warms up linearly from 0 to ``lr`` over ``warmup_steps`` and then decays by a cosine to
    ``lr * min_lr_ratio`` at ``total_steps``. Data: ``batch_size`` windows of ``seq_len + 1``
    tokens per step, in an order that is a pure function of (``seed``, step). Every
    ``log_every`` steps the mean training metrics are recorded, every ``eval_every`` steps the
    validation loss (over at most ``eval_batches`` batches; ``None`` = all), and every
    ``checkpoint_every`` steps a checkpoint is written (keeping ``keep_checkpoints``).
    ``eval_every``/``checkpoint_every`` of 0 disable periodic evaluation/checkpoints (the
    final step is always evaluated and, with a workdir, checkpointed). ``loss`` picks a named
    training loss from :mod:`tokjax.losses.registry` (``{"name": "prior", "alpha": 0.5}`` or just
    ``"prior"``; stored as sorted (key, value) pairs so the config stays hashable); ``None`` keeps
    the default next-token loss. :func:`tokjax.train.loss_fn_from_config` builds it.
    ``trainable`` (None = every parameter) lists the parameters the optimiser updates, as top-level
    keys (``"adapter"``), ``"a/b"`` path prefixes of the params tree (``"layers/wq"``) or
    ``"last:N"`` (the last N stacked transformer layers, e.g. ``("last:4", "final_norm")``); every other
    leaf stays bit-for-bit frozen and gets no optimiser state. ``batch_size`` and ``seq_len`` shape
    the batches cut from token windows; a ``batch_fn`` or an iterable of batches brings its own.
    ``scan_unroll`` / ``remat`` (None = the train step's defaults) set the layer loop of the train step
    (:func:`tokjax.train.make_train_step`): layers per scan iteration and the per-layer ``jax.checkpoint`` policy
    ("none", "full", "dots", "dots_no_batch"); same values up to float summation order, different speed/memory.
    """

    lr: float = 3e-3
    warmup_steps: int = 100
    total_steps: int = 1000
    weight_decay: float = 0.1
    grad_clip: float | None = 1.0
    batch_size: int = 32
    seq_len: int = 128
    seed: int = 0
    b1: float = 0.9
    b2: float = 0.95
    min_lr_ratio: float = 0.1
    log_every: int = 10
    eval_every: int = 200
    eval_batches: int | None = 16
    checkpoint_every: int = 200
    keep_checkpoints: int = 2
    loss: Any = None  # None: the default next-token loss; else a registry loss {name: ..., <options>} (or a name)
    trainable: tuple[str, ...] | None = None  # None: all params; else top-level keys / "a/b" path prefixes
    scan_unroll: int | bool | str | None = None  # None: the step's default ('auto'); else layers per iteration
    remat: typing.Literal["none", "full", "dots", "dots_no_batch"] | None = None  # None: the measured default

    def __post_init__(self):
        _check_types(self, "TrainConfig")
        if self.loss is not None:
            object.__setattr__(self, "loss", _normalise_loss(self.loss))
        if self.trainable is not None:
            object.__setattr__(self, "trainable", _normalise_trainable(self.trainable))
        u = self.scan_unroll
        if u is not None and u != "auto" and u is not True and (isinstance(u, bool) or not isinstance(u, int) or u < 1):
            raise ValueError(f"TrainConfig.scan_unroll must be an int >= 1 (layers per scan iteration), True (all), "
                             f"'auto' or None (the train step's default, 'auto'), got {u!r}")
        pos = ("total_steps", "batch_size", "seq_len", "log_every", "keep_checkpoints")
        for name in pos:
            if getattr(self, name) < 1:
                raise ValueError(f"TrainConfig.{name} must be >= 1, got {getattr(self, name)!r}")
        for name in ("warmup_steps", "seed", "eval_every", "checkpoint_every"):
            if getattr(self, name) < 0:
                raise ValueError(f"TrainConfig.{name} must be >= 0, got {getattr(self, name)!r}")
        if self.eval_batches is not None and self.eval_batches < 1:
            raise ValueError(f"TrainConfig.eval_batches must be >= 1 or None, got {self.eval_batches!r}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"TrainConfig.lr must be a finite number > 0, got {self.lr!r}")
        if self.warmup_steps >= self.total_steps:
            raise ValueError(
                f"TrainConfig.warmup_steps={self.warmup_steps} must be smaller than total_steps={self.total_steps}"
            )
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise ValueError(f"TrainConfig.weight_decay must be >= 0, got {self.weight_decay!r}")
        if self.grad_clip is not None and not (math.isfinite(self.grad_clip) and self.grad_clip >= 0):
            raise ValueError(f"TrainConfig.grad_clip must be >= 0 or None, got {self.grad_clip!r}")
        for name in ("b1", "b2"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"TrainConfig.{name} must lie in [0, 1), got {getattr(self, name)!r}")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ValueError(f"TrainConfig.min_lr_ratio must lie in [0, 1], got {self.min_lr_ratio!r}")

    def replace(self, **changes) -> "TrainConfig":
        """Returns a copy with the given fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Returns the config as a plain dict (YAML/JSON serialisable); ``loss`` only when one was chosen."""
        out = dataclasses.asdict(self)
        # Left out when None, so the dicts of existing configs (pretrained cache keys, run.json of
        # resumable runs) are unchanged by the loss field's existence.
        if self.loss is None:
            del out["loss"]
        else:
            out["loss"] = _loss_dict(self.loss)
        if self.trainable is None:  # same reason: absent unless chosen
            del out["trainable"]
        else:
            out["trainable"] = list(self.trainable)
        for name in ("scan_unroll", "remat"):  # same reason: absent unless chosen
            if getattr(self, name) is None:
                del out[name]
        return out

    @property
    def tokens_per_step(self) -> int:
        """Returns the number of predicted tokens per optimiser step (batch_size * seq_len)."""
        return self.batch_size * self.seq_len


# ---------------------------------------------------------------------------- trainable subset
def _normalise_trainable(spec: Any) -> tuple[str, ...]:
    """Returns ``spec`` (a path prefix or a list of them) as a tuple of "a/b" prefixes without empty parts."""
    items = (spec,) if isinstance(spec, str) else spec
    if not isinstance(items, (list, tuple)) or not items:
        raise ValueError(f"TrainConfig.trainable must be None or a non-empty list of parameter keys / 'a/b' path "
                         f"prefixes, got {spec!r}")
    out = []
    for item in items:
        if isinstance(item, str) and item.startswith("last:"):
            n = item[len("last:"):]
            if not n.isdigit() or int(n) < 1:
                raise ValueError(f"TrainConfig.trainable 'last:N' needs an integer N >= 1 (the last N layers), got {item!r}")
            out.append(f"last:{int(n)}")
            continue
        parts = item.strip("/").split("/") if isinstance(item, str) else []
        if not parts or any(not p.strip() for p in parts):
            raise ValueError(f"TrainConfig.trainable entries must be non-empty 'key' or 'a/b' path strings, "
                             f"got {item!r}")
        out.append("/".join(parts))
    if len(set(out)) != len(out):
        raise ValueError(f"TrainConfig.trainable lists a path twice: {out}")
    if sum(t.startswith("last:") for t in out) > 1:
        raise ValueError(f"TrainConfig.trainable may hold one 'last:N' entry, got {out}")
    return tuple(out)


# ---------------------------------------------------------------------------- loss choice
def _normalise_loss(spec: Any) -> tuple:
    """Returns the hashable form of a loss spec after checking its name and option names against the registry."""
    from tokjax.losses.registry import _freeze, loss_names, loss_options

    if isinstance(spec, str):
        spec = {"name": spec}
    elif isinstance(spec, tuple) and all(isinstance(p, tuple) and len(p) == 2 for p in spec):
        spec = dict(spec)
    if not isinstance(spec, Mapping) or "name" not in spec:
        raise ValueError(f"TrainConfig.loss must be a loss name or a mapping with a 'name' key (valid losses: "
                         f"{list(loss_names())}), got {spec!r}")
    name = spec["name"]
    if not isinstance(name, str) or name not in loss_names():
        raise ValueError(f"TrainConfig.loss: unknown loss {name!r}; valid losses: {list(loss_names())}")
    valid = list(loss_options(name))
    unknown = sorted(str(k) for k in spec if k != "name" and k not in valid)
    if unknown:
        raise ValueError(f"TrainConfig.loss: unknown option(s) {unknown} for loss {name!r}; valid options: {valid}")
    frozen = _freeze(dict(spec))
    try:
        hash(frozen)
    except TypeError:
        raise ValueError(f"TrainConfig.loss options must be plain values (numbers, strings, lists; a model as a "
                         f"'SOURCE:NAME' string such as 'pretrained:tiny-pydocs'), got {spec!r}; to use a model "
                         "object pass loss_fn=tokjax.losses.make_loss(name, teacher=model) to train()") from None
    return frozen


def _loss_dict(loss: tuple | None) -> dict[str, Any] | None:
    """Returns the stored loss spec as a plain ``{"name": ..., <options>}`` dict (None stays None)."""
    if loss is None:
        return None
    from tokjax.losses.registry import _thaw

    return {k: _thaw(v) for k, v in loss}


# ---------------------------------------------------------------------------- validation
def _type_ok(value: Any, tp: Any) -> bool:
    """Returns True when ``value`` is acceptable for the annotation ``tp`` (int is not bool; int is a float)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return any(_type_ok(value, a) for a in typing.get_args(tp))
    if tp is type(None):
        return value is None
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is str:
        return isinstance(value, str)
    if origin is typing.Literal:
        return value in typing.get_args(tp)
    return True


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if typing.get_args(tp):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    return "None" if tp is type(None) else getattr(tp, "__name__", str(tp))


def _check_types(obj, what: str) -> None:
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if not _type_ok(value, hints[f.name]):
            raise ValueError(f"{what}.{f.name} must be {_type_name(hints[f.name])}, got {value!r}")
        # Store floats as floats so to_dict() / equality do not depend on how the YAML spelled them.
        if float in (typing.get_args(hints[f.name]) or (hints[f.name],)) and type(value) is int:
            object.__setattr__(obj, f.name, float(value))


def _coerce_float_strings(cls, data: dict[str, Any]) -> dict[str, Any]:
    """Returns ``data`` with numeric strings in float fields parsed.

    PyYAML reads ``3e-3`` (no dot) as the *string* "3e-3" (YAML 1.1), a trap common enough
    that a config loader should accept it; any other string in a number field stays an error.
    """
    hints = typing.get_type_hints(cls)
    out = dict(data)
    for k, v in data.items():
        if isinstance(v, str) and k in hints and float in (typing.get_args(hints[k]) or (hints[k],)):
            try:
                out[k] = float(v)
            except ValueError:
                pass
    return out


def _from_mapping(cls, data: Any, source: str, *, exclude: tuple[str, ...] = ()):
    """Returns ``cls(**data)`` after checking that ``data`` is a mapping with only known keys."""
    if not isinstance(data, Mapping):
        raise ValueError(f"{source}: expected a mapping of {cls.__name__} fields, got {type(data).__name__}")
    names = [f.name for f in dataclasses.fields(cls) if f.name not in exclude]
    unknown = [k for k in data if k not in names]
    if unknown:
        raise ValueError(f"{source}: unknown key(s) {unknown} for {cls.__name__}; valid keys: {names}")
    data = _coerce_float_strings(cls, dict(data))
    try:
        return cls(**data)
    except ValueError as e:
        raise ValueError(f"{source}: {e}") from None
    except TypeError as e:  # e.g. a missing required field
        raise ValueError(f"{source}: {e}") from None


def train_config_from_dict(data: Mapping[str, Any], source: str = "train config") -> TrainConfig:
    """Returns a TrainConfig from a mapping; ValueError names ``source`` and the bad key."""
    return _from_mapping(TrainConfig, data, source)


def _read_yaml(path: str | os.PathLike) -> Any:
    import yaml

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"config file not found: {p}")
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"{p}: cannot read config file: {e}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ValueError(f"{p}: malformed YAML: {e}") from None
    if data is None:
        raise ValueError(f"{p}: the config file is empty")
    if not isinstance(data, dict):
        raise ValueError(f"{p}: the top level of a config must be a mapping, got {type(data).__name__}")
    bad = [k for k in data if not isinstance(k, str)]
    if bad:
        raise ValueError(f"{p}: config keys must be strings, got {bad}")
    return data


# ------------------------------------------------------------------------------ run configs
RUN_SECTIONS = ("name", "description", "tokenizer", "data", "model", "train")


@dataclasses.dataclass(frozen=True)
class TokenizerSpec:
    """How a run's tokenizer is built: byte-level BPE with ``vocab_size`` ids at most."""

    kind: typing.Literal["bpe"] = "bpe"
    vocab_size: int = 1024
    min_frequency: int = 2
    digits: typing.Literal["none", "single", "l2r3", "r2l3"] = "none"

    def __post_init__(self):
        _check_types(self, "tokenizer")
        if self.vocab_size < 260:
            raise ValueError(f"tokenizer.vocab_size must be >= 260 (256 bytes + specials), got {self.vocab_size}")
        if self.min_frequency < 0:
            raise ValueError(f"tokenizer.min_frequency must be >= 0, got {self.min_frequency}")


@dataclasses.dataclass(frozen=True)
class DataSpec:
    """Which bundled corpus a run trains on and how it is split."""

    corpus: str = "pydocs"
    val_fraction: float = 0.05
    split_seed: int = 0
    max_bytes: int | None = None

    def __post_init__(self):
        _check_types(self, "data")
        if not 0 < self.val_fraction < 1:
            raise ValueError(f"data.val_fraction must lie in (0, 1), got {self.val_fraction}")
        if self.max_bytes is not None and self.max_bytes < 1:
            raise ValueError(f"data.max_bytes must be >= 1 or null, got {self.max_bytes}")


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """A whole named run: tokenizer, data, model (without vocab_size) and training config.

    ``model`` holds ModelConfig keyword arguments; ``vocab_size`` comes from the trained
    tokenizer, so :meth:`model_config` needs it.
    """

    name: str
    tokenizer: TokenizerSpec
    data: DataSpec
    model: tuple[tuple[str, Any], ...]  # sorted (key, value) pairs: hashable
    train: TrainConfig
    description: str = ""

    def model_config(self, vocab_size: int) -> ModelConfig:
        """Returns the ModelConfig of this run for a tokenizer of ``vocab_size`` ids."""
        return ModelConfig(vocab_size=vocab_size, **dict(self.model))

    def to_dict(self) -> dict[str, Any]:
        """Returns the run config as a plain nested dict (the same shape as its YAML file)."""
        return {
            "name": self.name,
            "description": self.description,
            "tokenizer": dataclasses.asdict(self.tokenizer),
            "data": dataclasses.asdict(self.data),
            "model": dict(self.model),
            "train": self.train.to_dict(),
        }


def run_config_from_dict(data: Mapping[str, Any], source: str = "run config") -> RunConfig:
    """Returns a RunConfig from a nested mapping (sections name, description, tokenizer, data, model, train)."""
    if not isinstance(data, Mapping):
        raise ValueError(f"{source}: expected a mapping, got {type(data).__name__}")
    unknown = [k for k in data if k not in RUN_SECTIONS]
    if unknown:
        raise ValueError(f"{source}: unknown top-level key(s) {unknown}; valid keys: {list(RUN_SECTIONS)}")
    for sec in ("name", "model", "train"):
        if sec not in data:
            raise ValueError(f"{source}: missing required key {sec!r}")
    name = data["name"]
    if not isinstance(name, str) or not name:
        raise ValueError(f"{source}: 'name' must be a non-empty string, got {name!r}")
    description = data.get("description", "") or ""
    if not isinstance(description, str):
        raise ValueError(f"{source}: 'description' must be a string, got {description!r}")
    tok = _from_mapping(TokenizerSpec, data.get("tokenizer") or {}, f"{source}: tokenizer")
    dat = _from_mapping(DataSpec, data.get("data") or {}, f"{source}: data")
    model = data["model"]
    mfields = [f.name for f in dataclasses.fields(ModelConfig) if f.name != "vocab_size"]
    if not isinstance(model, Mapping):
        raise ValueError(f"{source}: model: expected a mapping of ModelConfig fields, got {type(model).__name__}")
    unknown = [k for k in model if k not in mfields]
    if unknown:
        raise ValueError(f"{source}: model: unknown key(s) {unknown}; valid keys: {mfields} (vocab_size comes "
                         "from the tokenizer)")
    hints = typing.get_type_hints(ModelConfig)
    for k, v in model.items():
        if not _type_ok(v, hints[k]):
            raise ValueError(f"{source}: model.{k} must be {_type_name(hints[k])}, got {v!r}")
    try:  # validate the model section now rather than after tokenizer training
        ModelConfig(vocab_size=tok.vocab_size, **model)
    except (ValueError, TypeError) as e:
        raise ValueError(f"{source}: model: {e}") from None
    train = _from_mapping(TrainConfig, data["train"], f"{source}: train")
    if train.seq_len > model.get("max_len", ModelConfig.__dataclass_fields__["max_len"].default):
        raise ValueError(f"{source}: train.seq_len={train.seq_len} exceeds model.max_len")
    return RunConfig(
        name=name, tokenizer=tok, data=dat, model=tuple(sorted(model.items())), train=train, description=description
    )


def load_config(path: str | os.PathLike) -> TrainConfig:
    """Returns the TrainConfig in the YAML file ``path``.

    The file is either a flat mapping of TrainConfig fields, or a run config whose ``train:``
    section is read (its other sections are validated too). Raises FileNotFoundError for a
    missing file and ValueError naming the file and key for malformed YAML, unknown keys or
    wrong types.
    """
    data = _read_yaml(path)
    if "train" in data or "model" in data:  # a run config: validate all of it, return its train section
        return run_config_from_dict(data, str(path)).train
    return train_config_from_dict(data, str(path))


def load_run_config(path: str | os.PathLike) -> RunConfig:
    """Returns the RunConfig (tokenizer, data, model, train sections) in the YAML file ``path``."""
    return run_config_from_dict(_read_yaml(path), str(path))
