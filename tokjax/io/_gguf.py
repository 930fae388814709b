"""load_gguf: llama.cpp GGUF files (llama architecture) -> tokjax Model + chat-capable tokenizer.

A GGUF file holds metadata (architecture hyperparameters under ``llama.*``, the tokenizer under
``tokenizer.*``) and tensors named the llama.cpp way (``blk.3.attn_q.weight``), each stored in one
GGML type. Loading goes through the Hugging Face layout so that the one llama tensor map in
:mod:`tokjax.io._arch` serves both formats: metadata -> an HF ``config.json`` dict ->
:func:`config_from_hf`; GGUF tensor names -> HF names; dequantised tensors -> tokjax params by the
same :class:`Rule` table ``load_hf`` uses.

Two GGUF conventions are undone on the way:

* Shapes list the row length first (``[in, out]``), so the numpy array of a linear weight is HF's
  ``[out, in]`` after reversing the dims.
* llama.cpp's converter permutes the rows of q and k inside each head from HF's half-split RoPE
  layout (pairs ``j, j + hd/2``) to interleaved pairs ``2j, 2j+1`` (its ``permute()``); we apply
  the inverse, exactly as transformers' ``LlamaTensorProcessor._reverse_permute_weights`` does.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any

import jax.numpy as jnp
import numpy as np

from tokjax.io._arch import _spec_shapes, from_hf, hf_shape
from tokjax.io._gguf_quants import GGML_TYPES, SUPPORTED, dequantize, nbytes, type_name
from tokjax.io._hf import _convert, _dtype_name, config_from_hf
from tokjax.model import Model
from tokjax.model.params import check_params

# llama.cpp tensor name (after "blk.{i}.") -> HF llama name (after "model.layers.{i}.").
_LAYER_NAMES = {
    "attn_norm.weight": "input_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_output.weight": "self_attn.o_proj.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}
_GLOBAL_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
ARCHITECTURES = ("llama",)


@functools.lru_cache(maxsize=1)
def _reader_class():
    """Returns a GGUFReader subclass that names the tensor when the file is truncated or a type is unknown."""
    import gguf

    class _Reader(gguf.GGUFReader):
        def _get(self, offset, dtype, count=1, override_order=None):
            # The stock _get slices the np.memmap, whose per-slice bookkeeping makes reading the
            # ~100k vocabulary strings take seconds; a plain ndarray view of the same mapping
            # reads the same bytes about 10x faster.
            plain = self.__dict__.get("_plain")
            if plain is None:
                plain = self._plain = self.data.view(np.ndarray)
            count = int(count)
            itemsize = np.dtype(dtype).itemsize
            arr = plain[offset : offset + itemsize * count].view(dtype=dtype)[:count]
            return arr.view(arr.dtype.newbyteorder(self.byte_order if override_order is None else override_order))

        def _build_tensors(self, start_offs, fields):
            # The stock reader would fail with a reshape or enum error; check every tensor first.
            size = len(self.data)
            for field in fields:
                _, name_data, _, dims, raw_dtype, offset = field.parts
                name = bytes(name_data).decode("utf-8", "replace")
                tid = int(raw_dtype[0])
                try:
                    block, tsize = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType(tid)]
                except (ValueError, KeyError):
                    raise _GGUFError(f"tensor {name!r} has unknown GGML type id {tid}") from None
                n = int(np.prod(dims, dtype=np.int64))
                begin = int(start_offs + offset[0])
                end = begin + n * tsize // block
                if end > size:
                    raise _GGUFError(
                        f"file is truncated: tensor {name!r} ({type_name(tid)}, shape "
                        f"{[int(d) for d in dims]}) needs bytes {begin}..{end} but the file has {size} bytes"
                    )
            super()._build_tensors(start_offs, fields)

    return _Reader


class _GGUFError(ValueError):
    """A problem found inside the GGUF reader, re-raised with the file name by :func:`_open`."""


def _open(path: Path):
    """Returns a GGUFReader for ``path``; ValueError naming the file for a missing, truncated or corrupt one."""
    if not path.is_file():
        raise ValueError(f"{path}: no such GGUF file")
    try:
        return _reader_class()(path)
    except _GGUFError as err:
        raise ValueError(f"{path}: {err}") from None
    except (ValueError, IndexError, KeyError, OverflowError, UnicodeDecodeError) as err:
        # Header fields past the end read as short arrays, which surface as these errors.
        size = path.stat().st_size
        raise ValueError(f"{path}: not a readable GGUF file ({size} bytes; truncated or corrupt?): {err}") from None


def _value(field) -> Any:
    """Returns a metadata field as a Python value (str, int, float, bool, or a list of them)."""
    import gguf

    types = field.types
    if types[0] == gguf.GGUFValueType.ARRAY:
        if types[-1] == gguf.GGUFValueType.STRING:
            return [bytes(field.parts[i]).decode("utf-8") for i in field.data]
        return [field.parts[i].tolist()[0] for i in field.data]
    part = field.parts[field.data[0]]
    if types[0] == gguf.GGUFValueType.STRING:
        return bytes(part).decode("utf-8")
    v = part.tolist()[0]
    return bool(v) if types[0] == gguf.GGUFValueType.BOOL else v


class GGUFFile:
    """An opened GGUF file: its metadata as Python values and its tensors by name (read lazily)."""

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path).expanduser()
        self.reader = _open(self.path)
        self.tensors = {t.name: t for t in self.reader.tensors}
        self._meta: dict[str, Any] = {}

    def meta(self, key: str, default: Any = None) -> Any:
        """Returns metadata ``key`` (``default`` when absent); ValueError naming the file for a malformed one."""
        if key not in self._meta:
            field = self.reader.fields.get(key)
            if field is None:
                return default
            try:
                self._meta[key] = _value(field)
            except (IndexError, UnicodeDecodeError) as err:
                raise ValueError(f"{self.path}: metadata {key!r} is malformed: {err}") from None
        return self._meta[key]

    def require(self, key: str) -> Any:
        v = self.meta(key)
        if v is None:
            raise ValueError(f"{self.path}: required metadata key {key!r} is missing")
        return v

    def shape(self, name: str) -> tuple[int, ...]:
        """Returns a tensor's shape in numpy order (row length last)."""
        return tuple(int(d) for d in reversed(self.tensors[name].shape.tolist()))

    def array(self, name: str, *, check_finite: bool = True) -> np.ndarray:
        """Returns tensor ``name`` dequantised to float32 (numpy order); ValueError naming file, tensor and type."""
        t = self.tensors[name]
        tid = int(t.tensor_type)
        if tid not in GGML_TYPES:
            raise ValueError(
                f"{self.path}: tensor {name!r} has GGML type {type_name(tid)}, which tokjax cannot dequantise "
                f"(supported: {', '.join(SUPPORTED)}); re-quantise the file to one of those"
            )
        shape = self.shape(name)
        want = nbytes(tid, int(np.prod(shape, dtype=np.int64)))
        if t.data.nbytes != want:
            raise ValueError(
                f"{self.path}: tensor {name!r} ({type_name(tid)}, shape {list(shape)}) has {t.data.nbytes} "
                f"bytes, expected {want} (truncated file?)"
            )
        try:
            out = dequantize(t.data, tid, shape)
        except ValueError as err:
            raise ValueError(f"{self.path}: tensor {name!r}: {err}") from None
        if check_finite and not np.isfinite(out).all():
            bad = int(np.size(out) - np.isfinite(out).sum())
            raise ValueError(
                f"{self.path}: tensor {name!r} ({type_name(tid)}) holds {bad} non-finite values (corrupt file?); "
                "pass check_finite=False to load it anyway"
            )
        return out


def _short(x: float) -> float:
    """Returns a float32 metadata value as the shortest decimal that rounds to it (1e-05, not 9.9999997e-06)."""
    return float(str(np.float32(x)))


def _hf_config(f: GGUFFile) -> dict:
    """Returns the HF llama ``config.json`` dict the file's metadata describes; ValueError for what tokjax lacks."""
    arch = f.require("general.architecture")
    if arch not in ARCHITECTURES:
        raise ValueError(
            f"{f.path}: unsupported GGUF architecture {arch!r}; tokjax.io.load_gguf reads {list(ARCHITECTURES)} "
            "(Llama-family models such as SmolLM2, TinyLlama, Llama 2)"
        )
    p = arch + "."
    heads = f.require(p + "attention.head_count")
    kv = f.meta(p + "attention.head_count_kv", heads)
    for key, v in (("attention.head_count", heads), ("attention.head_count_kv", kv)):
        if isinstance(v, list):
            raise ValueError(f"{f.path}: per-layer {p + key} is not supported (every layer must be alike)")
    d = int(f.require(p + "embedding_length"))
    head_dim = f.meta(p + "attention.key_length", d // int(heads))
    if f.meta(p + "attention.value_length", head_dim) != head_dim:
        raise ValueError(f"{f.path}: {p}attention.value_length differs from key_length; not supported")
    rot = f.meta(p + "rope.dimension_count", head_dim)
    if rot != head_dim:
        raise ValueError(
            f"{f.path}: {p}rope.dimension_count={rot} but head size {head_dim}: partial RoPE is not supported"
        )
    scaling = f.meta(p + "rope.scaling.type", "none")
    if scaling not in ("none", None) or "rope_freqs.weight" in f.tensors:
        raise ValueError(f"{f.path}: RoPE scaling ({scaling}, rope_freqs) is not supported; only plain RoPE loads")
    vocab = f.meta(p + "vocab_size")
    if vocab is None and "token_embd.weight" in f.tensors:  # older files: the embedding's row count
        vocab = f.shape("token_embd.weight")[0]
    if vocab is None:
        raise ValueError(f"{f.path}: cannot tell the vocabulary size (no {p}vocab_size or token_embd.weight)")
    return {
        "model_type": "llama",
        "vocab_size": int(vocab),
        "hidden_size": d,
        "num_hidden_layers": int(f.require(p + "block_count")),
        "num_attention_heads": int(heads),
        "num_key_value_heads": int(kv),
        "head_dim": int(head_dim),
        "intermediate_size": int(f.require(p + "feed_forward_length")),
        "rms_norm_eps": _short(f.meta(p + "attention.layer_norm_rms_epsilon", 1e-5)),
        "rope_theta": _short(f.meta(p + "rope.freq_base", 10000.0)),
        "max_position_embeddings": int(f.meta(p + "context_length", 2048)),
        # llama.cpp writes no output.weight when the head is the embedding.
        "tie_word_embeddings": "output.weight" not in f.tensors,
    }


def _hf_name(name: str) -> str | None:
    """Returns the HF llama name of a GGUF tensor name, or None when llama has no such tensor."""
    if name in _GLOBAL_NAMES:
        return _GLOBAL_NAMES[name]
    parts = name.split(".", 2)
    if len(parts) == 3 and parts[0] == "blk" and parts[1].isdigit() and parts[2] in _LAYER_NAMES:
        return f"model.layers.{int(parts[1])}.{_LAYER_NAMES[parts[2]]}"
    return None


def unpermute_qk(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Returns q/k rows ``[n_heads * hd, ...]`` moved from llama.cpp's interleaved RoPE order back to HF's.

    llama.cpp's ``permute`` reshapes rows as ``[H, 2, hd/2]`` and swaps the last two axes; this
    is its inverse (reshape as ``[H, hd/2, 2]`` and swap back).
    """
    rows = w.shape[0]
    if rows % (2 * n_heads):
        raise ValueError(f"cannot undo the RoPE permutation: {rows} rows is not a multiple of 2 * {n_heads} heads")
    return w.reshape(n_heads, rows // n_heads // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def load_gguf(
    path: str | os.PathLike[str], *, dtype: Any = "float32", check_finite: bool = True, tokenizer: bool = True
):
    """Returns (Model, ChatBPETokenizer or None) read from a llama-architecture GGUF file.

    Tensors stored as F32, F16, BF16, Q8_0, Q4_0 or Q4_1 are dequantised to float32 (then cast to
    ``dtype``: float32, bfloat16 or float16). The tokenizer is rebuilt from the file's metadata as
    a byte-level BPE with its special tokens, bos/eos/pad ids and Jinja chat template (see
    :func:`tokenizer_from_gguf`). ``check_finite`` rejects tensors holding NaN/inf; ``~`` in
    ``path`` is expanded. Raises ValueError naming the file (and the tensor and its type where
    one is at fault) for a missing, truncated or corrupt file, an architecture other than llama,
    an unsupported GGML type or option, or a tensor whose shape disagrees with the metadata.
    """
    f = GGUFFile(path)
    hf_config = _hf_config(f)
    cfg, arch = config_from_hf(hf_config, source=str(f.path))
    cfg = cfg.replace(param_dtype=_dtype_name(dtype), compute_dtype=_dtype_name(dtype))
    by_hf: dict[str, str] = {}
    for name in f.tensors:
        hf = _hf_name(name)
        if hf is None:
            raise ValueError(
                f"{f.path}: unexpected tensor {name!r} ({type_name(int(f.tensors[name].tensor_type))}) for a llama "
                "model; the file uses an option tokjax does not map"
            )
        by_hf[hf] = name

    def get(hf: str, want: tuple[int, ...]) -> np.ndarray:
        name = by_hf.get(hf)
        if name is None:
            raise ValueError(f"{f.path}: tensor for {hf!r} is missing from the file")
        if f.shape(name) != want:
            raise ValueError(
                f"{f.path}: tensor {name!r} has shape {list(f.shape(name))} (numpy order), but the metadata "
                f"implies {list(want)}"
            )
        w = f.array(name, check_finite=check_finite)
        if name.endswith("attn_q.weight"):
            w = unpermute_qk(w, cfg.n_heads)
        elif name.endswith("attn_k.weight"):
            w = unpermute_qk(w, cfg.kv_heads)
        return w

    shapes = _spec_shapes(cfg)
    params: dict[str, Any] = {}
    for rule in arch.applicable(cfg):
        per = [shapes[o][1:] if rule.per_layer else shapes[o] for o in rule.ours]
        stacks: list[list[np.ndarray]] = [[] for _ in rule.ours]
        for i in range(cfg.n_layers) if rule.per_layer else [None]:
            parts = from_hf(rule, get(rule.hf.format(i=i), hf_shape(rule, per)), per)
            for k, part in enumerate(parts):
                stacks[k].append(_convert(part, cfg.param_dtype))
        for o, stack in zip(rule.ours, stacks):
            node = params
            *head, leaf = o.split(".")
            for k in head:
                node = node.setdefault(k, {})
            node[leaf] = jnp.asarray(np.stack(stack) if rule.per_layer else stack[0])
    check_params(params, cfg)
    tok = None
    if tokenizer:
        from tokjax.io._gguf_tokenizer import tokenizer_from_gguf

        tok = tokenizer_from_gguf(f)
    return Model(params=params, cfg=cfg), tok
