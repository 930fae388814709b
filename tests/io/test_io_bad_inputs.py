"""load_hf on bad checkpoints: every failure is a ValueError naming the file, the tensor or the option."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tokjax.io import CheckpointError, config_from_hf, load_hf, read_safetensors, save_hf, write_safetensors
from tokjax.model import Model, ModelConfig, param_shapes

LLAMA = ModelConfig(
    vocab_size=61, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=40, tied_embeddings=False, max_len=32
)
GPT2 = ModelConfig(
    vocab_size=61, d_model=32, n_layers=2, n_heads=4, d_ff=64, norm="layer", positions="learned", activation="gelu",
    bias=True, qkv_bias=True, tied_embeddings=True, max_len=32,
)


def _model(cfg):
    rng = np.random.default_rng(0)
    params = jax.tree.map(lambda s: jnp.asarray(rng.standard_normal(s.shape), s.dtype), param_shapes(cfg))
    return Model(params=params, cfg=cfg)


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    return save_hf(_model(LLAMA), tmp_path_factory.mktemp("llama"))


def _copy(src, dst):
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    return dst


def _edit_config(d, **changes):
    c = json.loads((d / "config.json").read_text())
    for k, v in changes.items():
        if v is _DROP:
            c.pop(k, None)
        else:
            c[k] = v
    (d / "config.json").write_text(json.dumps(c))


_DROP = object()


def _edit_tensors(d, fn):
    t = {k: np.asarray(v) for k, v in read_safetensors(d / "model.safetensors").items()}
    fn(t)
    write_safetensors(d / "model.safetensors", t, {"format": "pt"})


def test_not_a_directory(tmp_path):
    with pytest.raises(CheckpointError, match="not a directory"):
        load_hf(tmp_path / "missing")


def test_missing_config(tmp_path):
    with pytest.raises(CheckpointError, match=r"config\.json: missing"):
        load_hf(tmp_path)


def test_config_not_json(tmp_path, llama_dir):
    d = _copy(llama_dir, tmp_path)
    (d / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match=r"config\.json: not valid JSON"):
        load_hf(d)


def test_missing_weights_lists_what_is_there(tmp_path, llama_dir):
    d = _copy(llama_dir, tmp_path)
    (d / "model.safetensors").unlink()
    (d / "pytorch_model.bin").write_bytes(b"")
    msg = r"no model\.safetensors or model\.safetensors\.index\.json.*pytorch_model\.bin"
    with pytest.raises(CheckpointError, match=msg):
        load_hf(d)


@pytest.mark.parametrize("model_type", ["bert", "mistral", None])
def test_unsupported_model_type(tmp_path, llama_dir, model_type):
    d = _copy(llama_dir, tmp_path)
    _edit_config(d, model_type=model_type if model_type else _DROP)
    msg = rf"config\.json: unsupported model_type {model_type!r}.*'gpt2', 'llama', 'qwen2'"
    with pytest.raises(ValueError, match=msg):
        load_hf(d)


LLAMA_CFG = {
    "model_type": "llama", "vocab_size": 61, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
    "num_key_value_heads": 2, "intermediate_size": 40,
}
GPT2_CFG = {"model_type": "gpt2", "vocab_size": 61, "n_embd": 32, "n_layer": 2, "n_head": 4}


@pytest.mark.parametrize(
    "base, change, option",
    [
        (LLAMA_CFG, {"rope_scaling": {"rope_type": "llama3", "factor": 8.0}}, "rope_scaling"),
        (LLAMA_CFG, {"rope_scaling": {"type": "linear", "factor": 2.0}}, "rope_scaling"),
        (LLAMA_CFG, {"rope_parameters": {"rope_type": "yarn", "rope_theta": 1e4}}, "rope_parameters.rope_type"),
        (
            LLAMA_CFG, {"rope_parameters": {"rope_type": "default", "partial_rotary_factor": 0.5}},
            "rope_parameters.partial_rotary_factor",
        ),
        (LLAMA_CFG, {"partial_rotary_factor": 0.25}, "partial_rotary_factor"),
        (LLAMA_CFG, {"attention_bias": True}, "attention_bias"),
        (LLAMA_CFG, {"mlp_bias": True}, "mlp_bias"),
        (LLAMA_CFG, {"hidden_act": "gelu"}, "hidden_act"),
        (
            {**LLAMA_CFG, "model_type": "qwen2"}, {"use_sliding_window": True, "sliding_window": 16},
            "use_sliding_window",
        ),
        ({**LLAMA_CFG, "model_type": "qwen2"}, {"layer_types": ["full_attention", "sliding_attention"]}, "layer_types"),
        (GPT2_CFG, {"activation_function": "gelu"}, "activation_function"),
        (GPT2_CFG, {"scale_attn_by_inverse_layer_idx": True}, "scale_attn_by_inverse_layer_idx"),
        (GPT2_CFG, {"scale_attn_weights": False}, "scale_attn_weights"),
        (GPT2_CFG, {"add_cross_attention": True}, "add_cross_attention"),
        (GPT2_CFG, {"tie_word_embeddings": False}, "tie_word_embeddings"),
    ],
)
def test_unsupported_options_are_named(base, change, option):
    with pytest.raises(ValueError, match=rf"unsupported option {option}="):
        config_from_hf({**base, **change})


def test_supported_rope_forms():
    """rope_theta arrives top-level (transformers 4) or inside rope_parameters (transformers 5)."""
    assert config_from_hf({**LLAMA_CFG, "rope_theta": 5e5, "rope_scaling": None})[0].rope_theta == 5e5
    new = {**LLAMA_CFG, "rope_parameters": {"rope_type": "default", "rope_theta": 1e6}}
    assert config_from_hf(new)[0].rope_theta == 1e6
    assert config_from_hf({**LLAMA_CFG, "rope_scaling": {"rope_type": "default"}})[0].rope_theta == 1e4
    qwen = {
        **LLAMA_CFG, "model_type": "qwen2", "use_sliding_window": False, "sliding_window": 4096,
        "max_window_layers": 1,
    }
    assert config_from_hf(qwen)[0].qkv_bias


def test_missing_and_invalid_config_keys():
    cfg = dict(LLAMA_CFG)
    del cfg["hidden_size"]
    with pytest.raises(ValueError, match="missing required key 'hidden_size'"):
        config_from_hf(cfg)
    with pytest.raises(ValueError, match=r"invalid llama config: .*n_kv_heads=3 must divide n_heads=4"):
        config_from_hf({**LLAMA_CFG, "num_key_value_heads": 3})


def test_shape_mismatch_names_file_and_tensor(tmp_path, llama_dir):
    d = _copy(llama_dir, tmp_path)
    _edit_config(d, intermediate_size=48)
    msg = (
        r"model\.safetensors: tensor 'model\.layers\.0\.mlp\.gate_proj\.weight' has shape \[40, 32\], "
        r"but config\.json implies \[48, 32\]"
    )
    with pytest.raises(CheckpointError, match=msg):
        load_hf(d)


def test_wrong_dtype_names_file_and_tensor(tmp_path, llama_dir):
    d = _copy(llama_dir, tmp_path)
    name = "model.layers.1.self_attn.k_proj.weight"
    _edit_tensors(d, lambda t: t.__setitem__(name, t[name].astype(np.int32)))
    with pytest.raises(CheckpointError, match=rf"model\.safetensors: tensor '{name}' has dtype I32"):
        load_hf(d)


def test_truncated_weights_name_file_and_tensor(tmp_path, llama_dir):
    d = _copy(llama_dir, tmp_path)
    raw = (d / "model.safetensors").read_bytes()
    (d / "model.safetensors").write_bytes(raw[: len(raw) - 100])
    # Tensors are stored in sorted-name order, so the last one is the truncated one.
    msg = r"model\.safetensors: truncated safetensors file: tensor 'model\.norm\.weight'"
    with pytest.raises(CheckpointError, match=msg):
        load_hf(d)


def test_missing_tensor_is_named(tmp_path, llama_dir):
    d = _copy(llama_dir, tmp_path)
    _edit_tensors(d, lambda t: t.pop("model.layers.1.mlp.down_proj.weight"))
    msg = r"tensor 'model\.layers\.1\.mlp\.down_proj\.weight' \(tokjax layers\.w_down\) is missing"
    with pytest.raises(CheckpointError, match=msg):
        load_hf(d)


def test_untied_head_missing(tmp_path, llama_dir):
    d = _copy(llama_dir, tmp_path)
    _edit_tensors(d, lambda t: t.pop("lm_head.weight"))
    with pytest.raises(CheckpointError, match=r"'lm_head\.weight' \(tokjax lm_head\) is missing"):
        load_hf(d)


def test_unexpected_tensor_is_named(tmp_path, llama_dir):
    d = _copy(llama_dir, tmp_path)
    _edit_tensors(d, lambda t: t.__setitem__("model.layers.0.self_attn.o_proj.bias", np.zeros(32, np.float32)))
    with pytest.raises(CheckpointError, match=r"unexpected tensor 'model\.layers\.0\.self_attn\.o_proj\.bias'"):
        load_hf(d)


def test_first_tensor_missing(tmp_path):
    d = save_hf(_model(GPT2), tmp_path)
    _edit_tensors(d, lambda t: t.pop("transformer.wte.weight"))
    with pytest.raises(CheckpointError, match=r"tensor 'transformer\.wte\.weight' not found"):
        load_hf(d)


@pytest.fixture()
def sharded(tmp_path):
    return save_hf(_model(LLAMA), tmp_path, max_shard_bytes=8_000)


def test_missing_shard_is_named(sharded):
    shard = sorted(sharded.glob("model-*.safetensors"))[1]
    shard.unlink()
    msg = rf"{shard.name}: shard listed in model\.safetensors\.index\.json is missing"
    with pytest.raises(CheckpointError, match=msg):
        load_hf(sharded)


def test_index_disagreeing_with_shards(sharded):
    idx_path = sharded / "model.safetensors.index.json"
    idx = json.loads(idx_path.read_text())
    shards = sorted(set(idx["weight_map"].values()))
    name = next(n for n, f in idx["weight_map"].items() if f == shards[0])
    idx["weight_map"][name] = shards[1]
    idx_path.write_text(json.dumps(idx))
    with pytest.raises(CheckpointError, match=rf"{shards[1]}: model\.safetensors\.index\.json says tensor '{name}'"):
        load_hf(sharded)


def test_index_without_weight_map(sharded):
    (sharded / "model.safetensors.index.json").write_text("{}")
    with pytest.raises(CheckpointError, match="no 'weight_map'"):
        load_hf(sharded)


def test_tensor_in_two_shards(sharded):
    shards = sorted(sharded.glob("model-*.safetensors"))
    t0 = {k: np.asarray(v) for k, v in read_safetensors(shards[0]).items()}
    t1 = {k: np.asarray(v) for k, v in read_safetensors(shards[1]).items()}
    dup = next(iter(t0))
    t1[dup] = t0[dup]
    write_safetensors(shards[1], t1)
    with pytest.raises(CheckpointError, match=rf"tensor '{dup}' is also in {shards[0].name}"):
        load_hf(sharded)


def test_bad_tokenizer_file_is_named(tmp_path, llama_dir):
    d = _copy(llama_dir, tmp_path)
    (d / "tokenizer.json").write_text('{"model": 3}')
    with pytest.raises(CheckpointError, match=r"tokenizer\.json: tokenizers could not load it"):
        load_hf(d)
    load_hf(d, tokenizer=False)  # the weights still load on their own


# ------------------------------------------------------------------ non-finite weights, ~ in paths
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_tensor_is_named(tmp_path, llama_dir, bad):
    # Before: NaN/inf weights loaded silently and every forward produced NaN logits.
    d = _copy(llama_dir, tmp_path)
    name = "model.layers.1.mlp.up_proj.weight"

    def poison(t):
        t[name] = t[name].copy()
        t[name][2, 5] = bad

    _edit_tensors(d, poison)
    msg = rf"model\.safetensors: tensor '{name}' \(F32\) holds 1 non-finite values.*check_finite=False"
    with pytest.raises(CheckpointError, match=msg):
        load_hf(d)
    model, _ = load_hf(d, check_finite=False)  # the opt-out loads it as stored
    up = np.asarray(model.params["layers"]["w_up"][1])
    assert np.sum(~np.isfinite(up)) == 1


def test_cast_overflow_is_named(tmp_path, llama_dir):
    d = _copy(llama_dir, tmp_path)
    name = "model.layers.0.self_attn.o_proj.weight"
    _edit_tensors(d, lambda t: t.__setitem__(name, np.full_like(t[name], 1e6)))
    with pytest.raises(CheckpointError, match=rf"tensor '{name}' \(F32\) has \d+ values beyond the float16 range"):
        load_hf(d, dtype="float16")
    model, _ = load_hf(d, dtype="bfloat16")  # bfloat16 has float32's range
    assert np.isfinite(np.asarray(model.params["layers"]["wo"], np.float32)).all()


def test_load_hf_expands_home(tmp_path, monkeypatch, llama_dir):
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "ckpt").mkdir()
    _copy(llama_dir, tmp_path / "ckpt")
    model, _ = load_hf("~/ckpt", tokenizer=False)
    assert model.cfg.vocab_size == LLAMA.vocab_size
    with pytest.raises(CheckpointError, match=str(tmp_path / "nowhere")):
        load_hf("~/nowhere")


def test_load_gguf_expands_home(tmp_path, monkeypatch):
    pytest.importorskip("gguf")
    from tests.io.test_gguf_files import make_model, write_gguf
    from tokjax.io import load_gguf

    model = make_model(64, tied=True)
    write_gguf(tmp_path / "m.gguf", model, None)
    monkeypatch.setenv("HOME", str(tmp_path))
    loaded, tok = load_gguf("~/m.gguf", tokenizer=False)
    assert tok is None
    np.testing.assert_array_equal(np.asarray(loaded.params["final_norm"]["scale"]),
                                  np.asarray(model.params["final_norm"]["scale"]))
    with pytest.raises(ValueError, match=str(tmp_path / "nowhere.gguf")):
        load_gguf("~/nowhere.gguf")
