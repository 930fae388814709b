"""Logit parity with Hugging Face transformers, both directions (levanter's round-trip test shape).

Random-weight transformers models (every weight random, norms and biases included) are saved with
``save_pretrained``, loaded by ``tokjax.io.load_hf`` and compared on a right-padded batch
(valid positions only); then tokjax saves them and transformers reloads and compares again.
Needs the hf extra (torch CPU + transformers); skipped otherwise.
"""

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="HF parity tests need the hf extra: pip install -e '.[hf]'")
transformers = pytest.importorskip("transformers", reason="HF parity tests need the hf extra: pip install -e '.[hf]'")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from tokjax.io import load_hf, save_hf  # noqa: E402
from tokjax.model import Model, ModelConfig, forward, param_shapes  # noqa: E402

from tests.io.make_hf_fixtures import random_hf_model  # noqa: E402

torch.set_num_threads(1)
TOL = 1e-4

CASES = {
    # odd sizes everywhere: vocab, width, heads, MLP
    "gpt2": (
        "GPT2Config", "GPT2LMHeadModel",
        dict(vocab_size=101, n_embd=36, n_layer=2, n_head=3, n_inner=50, n_positions=40),
    ),
    "llama_gqa_untied": (
        "LlamaConfig", "LlamaForCausalLM",
        dict(vocab_size=97, hidden_size=48, num_hidden_layers=3, num_attention_heads=6, num_key_value_heads=2,
             intermediate_size=100, rope_theta=5e5, max_position_embeddings=64, tie_word_embeddings=False),
    ),
    "llama_tied_head_dim": (
        "LlamaConfig", "LlamaForCausalLM",
        dict(vocab_size=67, hidden_size=40, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
             head_dim=14, intermediate_size=72, rms_norm_eps=1e-5, max_position_embeddings=32,
             tie_word_embeddings=True),
    ),
    "qwen2_mqa_tied": (
        "Qwen2Config", "Qwen2ForCausalLM",
        dict(vocab_size=97, hidden_size=48, num_hidden_layers=2, num_attention_heads=6, num_key_value_heads=1,
             intermediate_size=100, rope_theta=1e6, max_position_embeddings=64, tie_word_embeddings=True),
    ),
    "qwen2_gqa_untied": (
        "Qwen2Config", "Qwen2ForCausalLM",
        dict(vocab_size=89, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
             intermediate_size=96, max_position_embeddings=64, tie_word_embeddings=False),
    ),
}


def hf_model(case: str, seed: int = 0, dtype=None):
    """Returns a transformers model of ``case`` with every parameter random (norms near 1)."""
    return random_hf_model(*CASES[case], seed=seed, dtype=dtype)


def batch(vocab: int, seed: int = 0):
    """Returns (right-padded ids [3, 11], validity mask): rows of 11, 7 and 2 tokens."""
    rng = np.random.default_rng(seed)
    lens = np.array([11, 7, 2])
    mask = np.arange(11)[None, :] < lens[:, None]
    ids = np.where(mask, rng.integers(0, vocab, (3, 11)), 0)
    return ids, mask


def hf_logits(model, ids, mask) -> np.ndarray:
    with torch.no_grad():
        out = model(torch.tensor(ids), attention_mask=torch.tensor(mask.astype(np.int64)))
    return out.logits.float().numpy()


def tj_logits(model, ids) -> np.ndarray:
    return np.asarray(jax.jit(forward, static_argnums=1)(model.params, model.cfg, jnp.asarray(ids, jnp.int32)).logits)


def max_diff(a, b, mask) -> float:
    return float(np.abs(a - b)[mask].max())


@pytest.mark.parametrize("case", sorted(CASES))
def test_logits_match_both_directions(tmp_path, case):
    ref_model = hf_model(case)
    ref_model.save_pretrained(tmp_path / "hf")
    model, tok = load_hf(tmp_path / "hf")
    assert tok is None
    ids, mask = batch(model.cfg.vocab_size)
    ref = hf_logits(ref_model, ids, mask)
    assert np.abs(ref).max() > 1.0  # the comparison is not vacuous
    assert max_diff(tj_logits(model, ids), ref, mask) <= TOL

    save_hf(model, tmp_path / "tj")
    back = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "tj").eval()
    assert type(back) is type(ref_model)
    assert max_diff(hf_logits(back, ids, mask), ref, mask) <= TOL


def test_sharded_checkpoints_both_directions(tmp_path):
    ref_model = hf_model("llama_gqa_untied", seed=3)
    ref_model.save_pretrained(tmp_path / "hf", max_shard_size="40KB")
    assert (tmp_path / "hf" / "model.safetensors.index.json").exists()
    model, _ = load_hf(tmp_path / "hf")
    ids, mask = batch(model.cfg.vocab_size, seed=1)
    ref = hf_logits(ref_model, ids, mask)
    assert max_diff(tj_logits(model, ids), ref, mask) <= TOL
    save_hf(model, tmp_path / "tj", max_shard_bytes=30_000)
    back = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "tj").eval()
    assert max_diff(hf_logits(back, ids, mask), ref, mask) <= TOL


def test_bfloat16_checkpoint(tmp_path):
    """A bf16 checkpoint (the common case) read in float32 matches transformers reading it in float32."""
    hf_model("qwen2_gqa_untied", seed=5, dtype=torch.bfloat16).save_pretrained(tmp_path / "hf")
    assert json.loads((tmp_path / "hf" / "config.json").read_text()).get("dtype", "bfloat16") == "bfloat16"
    # transformers 5 renamed from_pretrained's torch_dtype= to dtype=
    kw = {"dtype" if int(transformers.__version__.split(".")[0]) >= 5 else "torch_dtype": torch.float32}
    ref_model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf", **kw).eval()
    model, _ = load_hf(tmp_path / "hf", dtype="float32")
    ids, mask = batch(model.cfg.vocab_size, seed=2)
    assert max_diff(tj_logits(model, ids), hf_logits(ref_model, ids, mask), mask) <= TOL
    native, _ = load_hf(tmp_path / "hf")
    assert native.cfg.param_dtype == "bfloat16"
    save_hf(native, tmp_path / "tj")  # bf16 out, bf16 back in transformers: bitwise the same weights
    back = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "tj")
    assert back.dtype == torch.bfloat16
    orig = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf")
    for (n, a), (_, b) in zip(sorted(orig.state_dict().items()), sorted(back.state_dict().items())):
        assert torch.equal(a, b), n


def test_tokenizer_loads_in_transformers(tmp_path):
    from tokjax.tokenizers import BPETokenizer

    texts = ["the cat sat on the mat", "a dog ate the hat", "hello world, hello tokens"] * 20
    tok = BPETokenizer.train(texts, vocab_size=300, special_tokens=("<|bos|>", "<|eos|>", "<|pad|>"))
    cfg = ModelConfig(vocab_size=tok.vocab_size, d_model=32, n_layers=1, n_heads=4, d_ff=40, max_len=64)
    model = Model(params=jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), param_shapes(cfg)), cfg=cfg)
    save_hf(model, tmp_path, tokenizer=tok)
    hf_tok = transformers.AutoTokenizer.from_pretrained(tmp_path)
    text = "the hat sat on a dog"
    assert hf_tok(text, add_special_tokens=False)["input_ids"] == tok.encode(text)
    assert hf_tok.eos_token_id == tok.eos_id and hf_tok.pad_token_id == tok.pad_id
    assert transformers.AutoModelForCausalLM.from_pretrained(tmp_path).config.eos_token_id == tok.eos_id
