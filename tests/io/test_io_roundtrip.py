"""save_hf -> load_hf round trips for every architecture (no torch needed): exact params, shards, dtypes, tokenizers."""

import json

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

from tokjax.io import (
    ARCHITECTURES, SafetensorsFile, architecture_for, load_hf, read_safetensors, save_hf, write_safetensors,
)
from tokjax.model import Model, ModelConfig, forward, param_shapes

CONFIGS = {
    "gpt2": ModelConfig(
        vocab_size=101, d_model=36, n_layers=2, n_heads=3, d_ff=50, norm="layer", positions="learned",
        activation="gelu", bias=True, qkv_bias=True, tied_embeddings=True, max_len=40,
    ),
    "llama": ModelConfig(
        vocab_size=97, d_model=48, n_layers=3, n_heads=6, n_kv_heads=2, d_ff=100, rope_theta=5e5,
        tied_embeddings=False, norm_eps=1e-6, max_len=64,
    ),
    "llama_tied_head_dim": ModelConfig(
        vocab_size=67, d_model=48, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=16, d_ff=72, tied_embeddings=True,
        max_len=32,
    ),
    "qwen2": ModelConfig(
        vocab_size=97, d_model=48, n_layers=2, n_heads=6, n_kv_heads=1, d_ff=100, qkv_bias=True,
        tied_embeddings=True, rope_theta=1e6, norm_eps=1e-6, max_len=64,
    ),
}
MODEL_TYPE = {"gpt2": "gpt2", "llama": "llama", "llama_tied_head_dim": "llama", "qwen2": "qwen2"}


def random_model(cfg: ModelConfig, seed: int = 0) -> Model:
    """Returns a model whose every parameter (norm scales and biases too) is random, so no mapping hides."""
    rng = np.random.default_rng(seed)  # numpy, not eager jax.random: a dozen tiny eager ops cost seconds
    shapes = param_shapes(cfg)
    params = jax.tree.map(
        lambda s: jnp.asarray((0.3 * rng.standard_normal(s.shape)).astype(np.float32), s.dtype), shapes
    )
    return Model(params=params, cfg=cfg)


def logits(model: Model, tokens) -> np.ndarray:
    return np.asarray(jax.jit(forward, static_argnums=1)(model.params, model.cfg, jnp.asarray(tokens)).logits)


def assert_same_params(a: Model, b: Model):
    fa, fb = jax.tree_util.tree_flatten_with_path(a.params)[0], jax.tree_util.tree_flatten_with_path(b.params)[0]
    assert [p for p, _ in fa] == [p for p, _ in fb]
    for (path, x), (_, y) in zip(fa, fb):
        assert x.dtype == y.dtype, path
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=str(path))


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_round_trip_is_exact(tmp_path, name):
    model = random_model(CONFIGS[name])
    save_hf(model, tmp_path)
    cfg_json = json.loads((tmp_path / "config.json").read_text())
    assert cfg_json["model_type"] == MODEL_TYPE[name]
    assert cfg_json["architectures"] == [ARCHITECTURES[MODEL_TYPE[name]].hf_class]
    back, tok = load_hf(tmp_path)
    assert tok is None
    assert back.cfg == model.cfg
    assert_same_params(back, model)
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, model.cfg.vocab_size, (2, 9)))
    np.testing.assert_array_equal(logits(back, tokens), logits(model, tokens))


def test_architecture_inference():
    for name, cfg in CONFIGS.items():
        assert architecture_for(cfg).model_type == MODEL_TYPE[name]


def test_sharded_save_and_load(tmp_path):
    model = random_model(CONFIGS["llama"])
    save_hf(model, tmp_path, max_shard_bytes=20_000)
    shards = sorted(p.name for p in tmp_path.glob("model-*.safetensors"))
    assert len(shards) > 2 and not (tmp_path / "model.safetensors").exists()
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"].values()) == set(shards)
    back, _ = load_hf(tmp_path)
    assert_same_params(back, model)
    # Saving again unsharded removes the old shards, so no stale file can shadow the new weights.
    save_hf(model, tmp_path)
    assert sorted(p.name for p in tmp_path.glob("*.safetensors")) == ["model.safetensors"]
    assert not (tmp_path / "model.safetensors.index.json").exists()


def test_bfloat16_checkpoint(tmp_path):
    model = random_model(CONFIGS["qwen2"].replace(param_dtype="bfloat16", compute_dtype="bfloat16"))
    save_hf(model, tmp_path)
    f = SafetensorsFile(tmp_path / "model.safetensors")
    assert {f.dtype_tag(n) for n in f.keys()} == {"BF16"}
    assert json.loads((tmp_path / "config.json").read_text())["torch_dtype"] == "bfloat16"
    back, _ = load_hf(tmp_path)  # default: the stored dtype
    assert back.cfg.param_dtype == back.cfg.compute_dtype == "bfloat16"
    assert_same_params(back, model)
    up, _ = load_hf(tmp_path, dtype="float32")
    assert up.cfg.param_dtype == "float32"
    for x, y in zip(jax.tree.leaves(up.params), jax.tree.leaves(model.params)):
        assert x.dtype == jnp.float32
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y).astype(np.float32))
    half, _ = load_hf(tmp_path, dtype=jnp.float16)
    assert half.cfg.param_dtype == "float16"
    with pytest.raises(ValueError, match="dtype must be float32, bfloat16 or float16"):
        load_hf(tmp_path, dtype="int8")


def test_mixed_dtypes_take_the_embedding_dtype(tmp_path):
    model = random_model(CONFIGS["llama"].replace(param_dtype="bfloat16", compute_dtype="bfloat16"))
    save_hf(model, tmp_path)
    t = {k: np.asarray(v) for k, v in read_safetensors(tmp_path / "model.safetensors").items()}
    t["model.norm.weight"] = t["model.norm.weight"].astype(np.float32)  # as some exports keep norms in f32
    write_safetensors(tmp_path / "model.safetensors", t, {"format": "pt"})
    back, _ = load_hf(tmp_path)
    assert back.cfg.param_dtype == "bfloat16"
    assert back.params["final_norm"]["scale"].dtype == jnp.bfloat16


def test_gpt2_original_hub_names(tmp_path):
    """The original GPT-2 files lack the ``transformer.`` prefix and carry causal-mask buffers."""
    model = random_model(CONFIGS["gpt2"])
    save_hf(model, tmp_path)
    stored = read_safetensors(tmp_path / "model.safetensors")
    t = {k.removeprefix("transformer."): np.asarray(v) for k, v in stored.items()}
    for i in range(model.cfg.n_layers):
        t[f"h.{i}.attn.bias"] = np.tril(np.ones((1, 1, 40, 40), np.float32))
        t[f"h.{i}.attn.masked_bias"] = np.array(-1e4, np.float32)
    write_safetensors(tmp_path / "model.safetensors", t)
    back, _ = load_hf(tmp_path)
    assert_same_params(back, model)


def test_tied_checkpoint_may_carry_lm_head(tmp_path):
    model = random_model(CONFIGS["qwen2"])
    save_hf(model, tmp_path)
    t = {k: np.asarray(v) for k, v in read_safetensors(tmp_path / "model.safetensors").items()}
    t["lm_head.weight"] = t["model.embed_tokens.weight"].copy()
    write_safetensors(tmp_path / "model.safetensors", t)
    back, _ = load_hf(tmp_path)
    assert_same_params(back, model)


def test_save_refuses_configs_no_architecture_expresses(tmp_path):
    odd = CONFIGS["llama"].replace(norm="layer")
    with pytest.raises(ValueError, match=r"no Hugging Face architecture.*llama: norm='layer'"):
        save_hf(random_model(odd), tmp_path)
    with pytest.raises(ValueError, match=r"cannot be saved as gpt2: norm='rms'"):
        save_hf(random_model(CONFIGS["llama"]), tmp_path, model_type="gpt2")
    gqa = CONFIGS["gpt2"].replace(n_kv_heads=1)
    with pytest.raises(ValueError, match="GPT-2 has no grouped-query attention"):
        save_hf(random_model(gqa), tmp_path)
    with pytest.raises(ValueError, match="unsupported model_type 'mistral'"):
        save_hf(random_model(CONFIGS["llama"]), tmp_path, model_type="mistral")
    with pytest.raises(ValueError, match="expects a tokjax Model"):
        save_hf({"embed": 0}, tmp_path)


def _bpe():
    from tokjax.tokenizers import BPETokenizer

    text = ["the cat sat on the mat", "a dog ate the hat", "hello world, hello tokens"] * 20
    return BPETokenizer.train(text, vocab_size=300, special_tokens=("<|bos|>", "<|eos|>", "<|pad|>"))


def test_tokenizer_round_trip(tmp_path):
    tok = _bpe()
    model = random_model(CONFIGS["llama"].replace(vocab_size=tok.vocab_size))
    save_hf(model, tmp_path, tokenizer=tok)
    cfg_json = json.loads((tmp_path / "config.json").read_text())
    assert (cfg_json["bos_token_id"], cfg_json["eos_token_id"], cfg_json["pad_token_id"]) == (
        tok.bos_id, tok.eos_id, tok.pad_id
    )
    tc = json.loads((tmp_path / "tokenizer_config.json").read_text())
    assert tc["eos_token"] == "<|eos|>"
    _, back = load_hf(tmp_path)
    assert (back.bos_id, back.eos_id, back.pad_id) == (tok.bos_id, tok.eos_id, tok.pad_id)
    assert back.encode("the cat ate a hat") == tok.encode("the cat ate a hat")
    _, none = load_hf(tmp_path, tokenizer=False)
    assert none is None


def test_tokenizer_roles_from_checkpoint_files(tmp_path):
    """Without a tokjax sidecar the roles come from tokenizer_config.json, then config.json ids."""
    from tokjax.tokenizers._bpe import sidecar_path

    tok = _bpe()
    model = random_model(CONFIGS["llama"].replace(vocab_size=tok.vocab_size))
    save_hf(model, tmp_path, tokenizer=tok)
    sidecar_path(tmp_path / "tokenizer.json").unlink()
    # tokenizer_config.json names <|pad|> as eos; it wins over config.json's id.
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"eos_token": {"content": "<|pad|>"}}))
    _, back = load_hf(tmp_path)
    assert back.eos_id == tok.pad_id
    assert back.bos_id == tok.bos_id  # from config.json's bos_token_id
    (tmp_path / "tokenizer_config.json").unlink()
    c = json.loads((tmp_path / "config.json").read_text())
    c["eos_token_id"] = [tok.bos_id, tok.eos_id]  # Llama-3 style list: the first id is taken
    (tmp_path / "config.json").write_text(json.dumps(c))
    _, back = load_hf(tmp_path)
    assert back.eos_id == tok.bos_id


def test_tokenizer_must_fit_the_vocab(tmp_path):
    tok = _bpe()
    with pytest.raises(ValueError, match="tokenizer has .* ids but the model's vocab_size is 97"):
        save_hf(random_model(CONFIGS["llama"]), tmp_path, tokenizer=tok)


def test_generate_after_load(tmp_path):
    import tokjax
    from tokjax import logits as L

    model = random_model(CONFIGS["qwen2"])
    save_hf(model, tmp_path)
    back, _ = load_hf(tmp_path)
    a = tokjax.generate(model, [[1, 2, 3], [4, 5]], max_new_tokens=5, logits=L.greedy())
    b = tokjax.generate(back, [[1, 2, 3], [4, 5]], max_new_tokens=5, logits=L.greedy())
    np.testing.assert_array_equal(a.tokens, b.tokens)


def test_bf16_reader_matches_ml_dtypes(tmp_path):
    arr = np.linspace(-3, 3, 12, dtype=np.float32).astype(ml_dtypes.bfloat16).reshape(3, 4)
    write_safetensors(tmp_path / "x.safetensors", {"x": arr})
    back = read_safetensors(tmp_path / "x.safetensors")["x"]
    np.testing.assert_array_equal(back.astype(np.float32), arr.astype(np.float32))
