"""load_hf / save_hf: Hugging Face checkpoint directories <-> tokjax Model (+ BPETokenizer).

A checkpoint directory holds ``config.json``, the weights as ``model.safetensors`` or as shards
listed in ``model.safetensors.index.json``, and optionally ``tokenizer.json``. Nothing here
imports torch or transformers: the tensors are read and written by the numpy-only
:mod:`tokjax.io._safetensors`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import jax.numpy as jnp
import numpy as np

from tokjax.io._arch import ARCHITECTURES, Architecture, _spec_shapes, architecture_for, from_hf, hf_shape, to_hf
from tokjax.io._safetensors import FLOAT_TAGS, CheckpointError, SafetensorsFile, write_safetensors
from tokjax.model import Model, ModelConfig
from tokjax.model.params import check_params

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"

_TAG_TO_NAME = {"F32": "float32", "BF16": "bfloat16", "F16": "float16", "F64": "float32"}
_DTYPE_NAMES = {"float32": "float32", "bfloat16": "bfloat16", "float16": "float16"}


def _dtype_name(dtype: Any) -> str:
    """Returns "float32" / "bfloat16" / "float16" for a dtype given as a string, numpy or jax dtype."""
    try:
        name = jnp.dtype(dtype).name
    except TypeError:
        name = str(dtype)
    if name not in _DTYPE_NAMES:
        raise ValueError(f"dtype must be float32, bfloat16 or float16, got {dtype!r}")
    return name


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{path}: not valid JSON ({err})") from None


# --------------------------------------------------------------------------------- reading
class _Weights:
    """A name -> (file, tensor) lookup over a single safetensors file or an index of shards."""

    def __init__(self, root: Path):
        self.files: dict[str, SafetensorsFile] = {}
        self.where: dict[str, str] = {}  # tensor name -> file name
        single, index = root / WEIGHTS_FILE, root / INDEX_FILE
        if single.is_file():
            self._add(single)
        elif index.is_file():
            spec = _read_json(index)
            wmap = spec.get("weight_map") if isinstance(spec, dict) else None
            if not isinstance(wmap, dict) or not wmap:
                raise CheckpointError(f"{index}: no 'weight_map' object")
            for shard in sorted(set(wmap.values())):
                if not (root / shard).is_file():
                    missing = sorted(n for n, f in wmap.items() if f == shard)
                    raise CheckpointError(
                        f"{root / shard}: shard listed in {INDEX_FILE} is missing (it holds {len(missing)} "
                        f"tensors, e.g. {missing[0]!r})"
                    )
                self._add(root / shard)
            for name, shard in wmap.items():
                if self.where.get(name) != shard:
                    raise CheckpointError(
                        f"{root / shard}: {INDEX_FILE} says tensor {name!r} is in this shard but it is not"
                    )
        else:
            found = sorted(p.name for p in root.iterdir() if p.suffix in (".safetensors", ".bin", ".pt", ".pth"))
            extra = (
                f"; found {found} (only safetensors is read: convert .bin weights with transformers' "
                "save_pretrained(..., safe_serialization=True))" if found else ""
            )
            raise CheckpointError(f"{root}: no {WEIGHTS_FILE} or {INDEX_FILE}{extra}")

    def _add(self, path: Path) -> None:
        f = SafetensorsFile(path)
        self.files[path.name] = f
        for name in f.keys():
            if name in self.where:
                raise CheckpointError(f"{path}: tensor {name!r} is also in {self.where[name]}")
            self.where[name] = path.name

    def file_of(self, name: str) -> SafetensorsFile:
        return self.files[self.where[name]]


def _stored_dtype(weights: _Weights, name: str) -> str:
    """Returns the dtype tensor ``name`` is stored in; load_hf uses the embedding's (some exports keep norms in f32)."""
    return _TAG_TO_NAME.get(weights.file_of(name).dtype_tag(name), "float32")


def _convert(arr: np.ndarray, dtype: str) -> np.ndarray:
    # Values beyond the target range become inf; check_finite reports that by tensor name, so
    # numpy's anonymous overflow warning would only repeat it.
    with np.errstate(over="ignore"):
        return np.asarray(arr).astype(jnp.dtype(dtype), copy=False)


def config_from_hf(hf_config: dict, *, source: str = CONFIG_FILE) -> tuple[ModelConfig, Architecture]:
    """Returns (ModelConfig, Architecture) for a parsed HF ``config.json``; ValueError names any unsupported option."""
    if not isinstance(hf_config, dict):
        raise ValueError(f"{source}: expected a JSON object")
    mt = hf_config.get("model_type")
    if mt not in ARCHITECTURES:
        raise ValueError(
            f"{source}: unsupported model_type {mt!r}; tokjax.io supports {sorted(ARCHITECTURES)}"
        )
    arch = ARCHITECTURES[mt]
    try:
        cfg = arch.config_from_hf(hf_config, source)
    except (TypeError, ValueError) as err:
        if isinstance(err, ValueError) and str(err).startswith(source):
            raise
        raise ValueError(f"{source}: invalid {mt} config: {err}") from None
    return cfg, arch


def _non_finite(arr: np.ndarray) -> int:
    """Returns how many entries of ``arr`` are NaN or inf."""
    finite = np.isfinite(arr)
    return int(finite.size - np.count_nonzero(finite))


def load_hf(path: str | os.PathLike[str], dtype: Any = None, *, tokenizer: bool = True, check_finite: bool = True):
    """Returns (Model, BPETokenizer or None) read from a Hugging Face checkpoint directory.

    Supports model_type gpt2, llama and qwen2 with weights in ``model.safetensors`` or in shards
    listed by ``model.safetensors.index.json``. ``dtype`` (float32 / bfloat16 / float16) sets
    the parameter and compute dtype; default: the dtype the checkpoint stores. The tokenizer is
    ``tokenizer.json`` when present (bos/eos/pad from a tokjax sidecar, ``tokenizer_config.json``
    or ``config.json``), a :class:`~tokjax.io.ChatBPETokenizer` when the directory has a chat
    template (``chat_template`` in ``tokenizer_config.json``, or ``chat_template.jinja``). ``~`` in
    ``path`` is expanded. ``check_finite`` (default on) rejects a tensor holding NaN or inf, as
    stored (a corrupt or diverged checkpoint) or after the cast to ``dtype`` (a float32 value
    beyond float16's range); it costs one pass over the weights. Raises ValueError
    (CheckpointError for file problems) naming the file and tensor: missing files, unsupported
    model types or options, shape or dtype mismatches, truncated or corrupt safetensors,
    unexpected tensors, non-finite values.
    """
    root = Path(path).expanduser()
    if not root.is_dir():
        raise CheckpointError(f"{root}: not a directory (expected a Hugging Face checkpoint directory)")
    cfg_path = root / CONFIG_FILE
    if not cfg_path.is_file():
        raise CheckpointError(f"{cfg_path}: missing (a checkpoint directory needs config.json)")
    hf_config = _read_json(cfg_path)
    cfg, arch = config_from_hf(hf_config, source=str(cfg_path))
    weights = _Weights(root)
    names = {arch.canonical(n): n for n in weights.where}  # canonical name -> name in the file

    rules = arch.applicable(cfg)
    first = rules[0].hf.format(i=0)
    if first not in names:
        raise CheckpointError(f"{root}: tensor {first!r} not found in the {arch.model_type} checkpoint")
    dname = _dtype_name(dtype) if dtype is not None else _stored_dtype(weights, names[first])
    cfg = cfg.replace(param_dtype=dname, compute_dtype=dname)
    shapes = _spec_shapes(cfg)

    flat: dict[str, np.ndarray] = {}
    used: set[str] = set()
    for rule in rules:
        layers = range(cfg.n_layers) if rule.per_layer else [None]
        per_layer_shapes = [shapes[o][1:] if rule.per_layer else shapes[o] for o in rule.ours]
        stacks: list[list[np.ndarray]] = [[] for _ in rule.ours]
        for i in layers:
            canon = rule.hf.format(i=i)
            if canon not in names:
                raise CheckpointError(
                    f"{root}: tensor {canon!r} (tokjax {', '.join(rule.ours)}) is missing from the checkpoint "
                    f"(files: {sorted(weights.files)})"
                )
            name = names[canon]
            f = weights.file_of(name)
            want = hf_shape(rule, per_layer_shapes)
            if f.shape(name) != want:
                raise CheckpointError(
                    f"{f.path}: tensor {name!r} has shape {list(f.shape(name))}, but {CONFIG_FILE} implies "
                    f"{list(want)}"
                )
            tag = f.dtype_tag(name)
            if tag not in FLOAT_TAGS:
                raise CheckpointError(
                    f"{f.path}: tensor {name!r} has dtype {tag}; weights must be floating point "
                    f"({', '.join(FLOAT_TAGS)})"
                )
            raw = f.get(name)
            if check_finite and (bad := _non_finite(raw)):
                raise CheckpointError(
                    f"{f.path}: tensor {name!r} ({tag}) holds {bad} non-finite values (NaN/inf; a corrupt or "
                    "diverged checkpoint?); pass check_finite=False to load it anyway"
                )
            parts = from_hf(rule, raw, per_layer_shapes)
            for k, part in enumerate(parts):
                part = _convert(part, dname)
                if check_finite and (bad := _non_finite(part)):
                    raise CheckpointError(
                        f"{f.path}: tensor {name!r} ({tag}) has {bad} values beyond the {dname} range (inf after "
                        f"the cast); load it with dtype='float32' or 'bfloat16', or pass check_finite=False"
                    )
                stacks[k].append(part)
            used.add(name)
        for o, stack in zip(rule.ours, stacks):
            flat[o] = np.stack(stack) if rule.per_layer else stack[0]

    unexpected = sorted(n for n in weights.where if n not in used and not arch.is_ignored(arch.canonical(n), cfg))
    if unexpected:
        f = weights.file_of(unexpected[0])
        raise CheckpointError(
            f"{f.path}: unexpected tensor {unexpected[0]!r} ({len(unexpected)} unexpected in all) for a "
            f"{arch.model_type} model with this config.json; the checkpoint uses an option tokjax does not map"
        )

    params: dict[str, Any] = {}
    for dotted, arr in flat.items():
        node = params
        *head, leaf = dotted.split(".")
        for k in head:
            node = node.setdefault(k, {})
        node[leaf] = jnp.asarray(arr)
    check_params(params, cfg)
    tok = _load_tokenizer(root, hf_config) if tokenizer else None
    if tok is not None:  # a chat_template in tokenizer_config.json (or chat_template.jinja) -> ChatBPETokenizer
        from tokjax.io._chat import with_chat_template

        tok = with_chat_template(root, tok)
    return Model(params=params, cfg=cfg), tok


def _role_candidates(root: Path, hf_config: dict, role: str) -> list[Any]:
    """Returns the tokens (strings or ids) that may play ``role``, most authoritative first."""
    out: list[Any] = []
    tc_path = root / TOKENIZER_CONFIG_FILE
    if tc_path.is_file():
        try:
            tc = json.loads(tc_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            tc = {}
        v = tc.get(f"{role}_token") if isinstance(tc, dict) else None
        if isinstance(v, dict):
            v = v.get("content")
        if isinstance(v, str):
            out.append(v)
    v = hf_config.get(f"{role}_token_id")
    if isinstance(v, list) and v:
        v = v[0]  # Llama 3 lists several stop ids; the first is the end-of-text token
    if isinstance(v, int) and not isinstance(v, bool):
        out.append(v)
    return out


def _load_tokenizer(root: Path, hf_config: dict):
    """Returns the checkpoint's BPETokenizer, or None when the directory has no tokenizer.json."""
    from tokjax.tokenizers import BPETokenizer
    from tokjax.tokenizers._base import INFER
    from tokjax.tokenizers._bpe import sidecar_path

    path = root / TOKENIZER_FILE
    if not path.is_file():
        return None
    if sidecar_path(path).is_file():
        return BPETokenizer.load(path)
    import tokenizers as hf_tokenizers

    try:
        hf = hf_tokenizers.Tokenizer.from_file(str(path))
    except Exception as err:  # the Rust side raises plain Exception subclasses
        raise CheckpointError(f"{path}: tokenizers could not load it: {err}") from None
    added = hf.get_added_tokens_decoder()
    specials = {tok.content: int(i) for i, tok in added.items() if tok.special}
    roles = {}
    for role in ("bos", "eos", "pad"):
        pick = INFER
        for c in _role_candidates(root, hf_config, role):
            if (isinstance(c, str) and c in specials) or (isinstance(c, int) and c in specials.values()):
                pick = c
                break
        roles[f"{role}_token"] = pick
    return BPETokenizer.from_hf(hf, **roles)


# --------------------------------------------------------------------------------- writing
def params_to_hf(model: Model, arch: Architecture | None = None) -> dict[str, np.ndarray]:
    """Returns the HF tensor dict (name -> numpy array, the model's dtype) for ``model``."""
    cfg = model.cfg
    arch = architecture_for(cfg) if arch is None else arch
    check_params(model.params, cfg)

    def get(dotted: str) -> np.ndarray:
        node = model.params
        for k in dotted.split("."):
            node = node[k]
        return np.asarray(node)  # one device-to-host copy per parameter

    out: dict[str, np.ndarray] = {}
    for rule in arch.applicable(cfg):
        arrays = [get(o) for o in rule.ours]
        if rule.per_layer:
            for i in range(cfg.n_layers):
                out[rule.hf.format(i=i)] = to_hf(rule, [a[i] for a in arrays])
        else:
            out[rule.hf] = to_hf(rule, arrays)
    return out


def _shards(tensors: dict[str, np.ndarray], max_bytes: int | None) -> list[dict[str, np.ndarray]]:
    if max_bytes is None:
        return [tensors]
    shards: list[dict[str, np.ndarray]] = [{}]
    size = 0
    for name in sorted(tensors):
        n = tensors[name].nbytes
        if shards[-1] and size + n > max_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = tensors[name]
        size += n
    return shards


def save_hf(
    model: Model,
    path: str | os.PathLike[str],
    tokenizer=None,
    *,
    model_type: str | None = None,
    max_shard_bytes: int | None = None,
) -> Path:
    """Returns the directory written: a checkpoint transformers' ``from_pretrained`` loads.

    ``model_type`` (gpt2 / llama / qwen2) defaults to the one architecture whose fixed choices
    match ``model.cfg`` (ValueError lists why none does). ``max_shard_bytes`` splits the weights
    into ``model-0000k-of-0000n.safetensors`` shards with an index, as transformers does for
    large models. A BPETokenizer is written as ``tokenizer.json`` (+ tokjax sidecar) with a
    ``tokenizer_config.json`` so ``AutoTokenizer`` loads it. Weight files from an earlier save
    in the same directory are removed first so no stale shard survives.
    """
    if not isinstance(model, Model):
        raise ValueError(f"save_hf expects a tokjax Model, got {type(model).__name__}")
    cfg = model.cfg
    if model_type is None:
        arch = architecture_for(cfg)
    else:
        if model_type not in ARCHITECTURES:
            raise ValueError(f"unsupported model_type {model_type!r}; tokjax.io supports {sorted(ARCHITECTURES)}")
        arch = ARCHITECTURES[model_type]
        bad = arch.mismatches(cfg)
        if bad:
            raise ValueError(f"ModelConfig cannot be saved as {model_type}: {', '.join(bad)}")
    if max_shard_bytes is not None and max_shard_bytes < 1:
        raise ValueError(f"max_shard_bytes must be >= 1, got {max_shard_bytes}")
    if tokenizer is not None:
        from tokjax.tokenizers import BPETokenizer

        if not isinstance(tokenizer, BPETokenizer):
            raise ValueError(f"save_hf writes a BPETokenizer (tokenizer.json), got {type(tokenizer).__name__}")
        if tokenizer.vocab_size > cfg.vocab_size:
            raise ValueError(
                f"tokenizer has {tokenizer.vocab_size} ids but the model's vocab_size is {cfg.vocab_size}"
            )
    tensors = params_to_hf(model, arch)

    root = Path(path)
    root.mkdir(parents=True, exist_ok=True)
    for old in list(root.glob("model*.safetensors")) + [root / INDEX_FILE]:
        if old.is_file():
            old.unlink()
    meta = {"format": "pt"}  # transformers refuses safetensors files without a known format tag
    shards = _shards(tensors, max_shard_bytes)
    if len(shards) == 1:
        write_safetensors(root / WEIGHTS_FILE, shards[0], meta)
    else:
        weight_map = {}
        for k, shard in enumerate(shards):
            fname = f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors"
            write_safetensors(root / fname, shard, meta)
            weight_map.update({n: fname for n in shard})
        index = {"metadata": {"total_size": sum(t.nbytes for t in tensors.values())}, "weight_map": weight_map}
        (root / INDEX_FILE).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n", encoding="utf-8")

    hf_config = {"architectures": [arch.hf_class], "model_type": arch.model_type, **arch.config_to_hf(cfg)}
    hf_config["torch_dtype"] = cfg.param_dtype
    ids = {"bos": None, "eos": None, "pad": None}
    if tokenizer is not None:
        ids = {"bos": tokenizer.bos_id, "eos": tokenizer.eos_id, "pad": tokenizer.pad_id}
    for role, i in ids.items():
        hf_config[f"{role}_token_id"] = i
    (root / CONFIG_FILE).write_text(json.dumps(hf_config, indent=2) + "\n", encoding="utf-8")

    if tokenizer is not None:
        tokenizer.save(root)
        tc = {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": cfg.max_len}
        for role in ("bos", "eos", "pad"):
            i = getattr(tokenizer, f"{role}_id")
            if i is not None:
                tc[f"{role}_token"] = tokenizer.hf.id_to_token(i)
        (root / TOKENIZER_CONFIG_FILE).write_text(json.dumps(tc, indent=2) + "\n", encoding="utf-8")
    return root



