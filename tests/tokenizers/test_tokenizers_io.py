"""BPETokenizer save/load, merges formats, sidecar, from_hf, pickling."""

import json
import pickle
import pydoc_data.topics

import pytest
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, pre_tokenizers

from tokjax.tokenizers import BPETokenizer, Tokenizer, TokenizerFileNotFoundError

SAMPLES = [
    "",
    "def f(x):\n    return x ** 2  # 12345",
    "x1234567y and 3.14159",
    "emoji 👍🏽, CJK 中文, combining e\u0301, nul \x00",
    "<|bos|> spelled out",
]


def corpus():
    topics = pydoc_data.topics.topics
    return [topics[k] for k in sorted(topics)][:12] + [" ".join(["1234567 x12345y"] * 200)]


@pytest.fixture(scope="module")
def tok():
    return BPETokenizer.train(corpus(), 400, digits="r2l3")


def encodings(t):
    return [t.encode(s) for s in SAMPLES]


def test_save_writes_standard_tokenizer_json(tok, tmp_path):
    path = tok.save(tmp_path / "tok")
    assert path == tmp_path / "tok" / "tokenizer.json"
    assert (tmp_path / "tok" / "tokenizer.tokjax.json").is_file()
    # Plain HF reads it and applies the digit policy itself.
    hf = HFTokenizer.from_file(str(path))
    assert [hf.encode(s, add_special_tokens=False).ids for s in SAMPLES[:4]] == encodings(tok)[:4]
    assert [tok.id_to_bytes[i] for i in hf.encode("1234567").ids] == [b"1", b"234", b"567"]


@pytest.mark.parametrize("as_dir", [True, False])
def test_save_load_round_trip(tok, tmp_path, as_dir):
    path = tok.save(tmp_path if as_dir else tmp_path / "custom.json")
    loaded = BPETokenizer.load(tmp_path if as_dir else path)
    assert isinstance(loaded, Tokenizer)
    assert loaded.digits == "r2l3"
    assert (loaded.vocab_size, loaded.bos_id, loaded.eos_id, loaded.pad_id) == (400, 0, 1, 2)
    assert loaded.id_to_bytes == tok.id_to_bytes
    assert encodings(loaded) == encodings(tok)
    assert [loaded.decode(ids) for ids in encodings(loaded)] == SAMPLES


def _rewrite_merges(src, dst, fmt):
    spec = json.loads(src.read_text(encoding="utf-8"))
    pairs = [m.split(" ") if isinstance(m, str) else m for m in spec["model"]["merges"]]
    spec["model"]["merges"] = [" ".join(p) for p in pairs] if fmt == "old" else [list(p) for p in pairs]
    dst.write_text(json.dumps(spec), encoding="utf-8")
    return spec


def test_both_merges_formats_load_identically(tok, tmp_path):
    src = tok.save(tmp_path / "orig")
    old = _rewrite_merges(src, tmp_path / "old.json", "old")
    new = _rewrite_merges(src, tmp_path / "new.json", "new")
    assert isinstance(old["model"]["merges"][0], str) and " " in old["model"]["merges"][0]
    assert isinstance(new["model"]["merges"][0], list) and len(new["model"]["merges"][0]) == 2
    a = BPETokenizer.load(tmp_path / "old.json")
    b = BPETokenizer.load(tmp_path / "new.json")
    # No sidecar next to these files: digits come from the pre-tokenizer, roles from names.
    assert a.digits == b.digits == "r2l3"
    assert (a.bos_id, a.eos_id, a.pad_id) == (0, 1, 2)
    assert encodings(a) == encodings(b) == encodings(tok)


def test_empty_merges_is_value_error(tok, tmp_path):
    spec = json.loads(tok.save(tmp_path / "t").read_text(encoding="utf-8"))
    spec["model"]["merges"] = []
    bad = tmp_path / "empty.json"
    bad.write_text(json.dumps(spec), encoding="utf-8")
    with pytest.raises(ValueError, match="empty merges"):
        BPETokenizer.load(bad)
    del spec["model"]["merges"]
    bad.write_text(json.dumps(spec), encoding="utf-8")
    with pytest.raises(ValueError, match="empty merges"):
        BPETokenizer.load(bad)


def test_bad_merge_entry_is_value_error(tok, tmp_path):
    spec = json.loads(tok.save(tmp_path / "t").read_text(encoding="utf-8"))
    spec["model"]["merges"][3] = "a b c"
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(spec), encoding="utf-8")
    with pytest.raises(ValueError, match=r"merges\[3\]"):
        BPETokenizer.load(bad)


def test_missing_file_names_path(tmp_path):
    missing = tmp_path / "nope" / "tokenizer.json"
    with pytest.raises(ValueError, match="nope") as info:
        BPETokenizer.load(missing)
    assert isinstance(info.value, FileNotFoundError)
    assert isinstance(info.value, TokenizerFileNotFoundError)
    assert str(missing) in str(info.value)
    # A directory without tokenizer.json names the file it looked for.
    with pytest.raises(ValueError) as info:
        BPETokenizer.load(tmp_path)
    assert str(tmp_path / "tokenizer.json") in str(info.value)


def test_malformed_json_names_path(tmp_path):
    bad = tmp_path / "broken.json"
    bad.write_text('{"model": {"type": "BPE", ', encoding="utf-8")
    with pytest.raises(ValueError, match="malformed JSON") as info:
        BPETokenizer.load(bad)
    assert str(bad) in str(info.value)
    bad.write_bytes(b"\xff\xfe not utf8")
    with pytest.raises(ValueError, match="malformed JSON"):
        BPETokenizer.load(bad)
    bad.write_text("[1, 2, 3]", encoding="utf-8")
    with pytest.raises(ValueError, match="not a tokenizers JSON"):
        BPETokenizer.load(bad)


def test_unloadable_spec_is_value_error(tok, tmp_path):
    spec = json.loads(tok.save(tmp_path / "t").read_text(encoding="utf-8"))
    spec["model"]["merges"][0] = ["notatoken", "neither"]
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(spec), encoding="utf-8")
    with pytest.raises(ValueError, match="could not load") as info:
        BPETokenizer.load(bad)
    assert str(bad) in str(info.value)


def test_sidecar_roles_and_digit_cross_check(tmp_path):
    t = BPETokenizer.train(corpus(), 400, special_tokens=("[X]", "[Y]"), eos_token="[Y]", pad_token="[X]")
    path = t.save(tmp_path)
    loaded = BPETokenizer.load(tmp_path)
    assert (loaded.bos_id, loaded.eos_id, loaded.pad_id) == (None, 1, 0)
    side = tmp_path / "tokenizer.tokjax.json"
    meta = json.loads(side.read_text(encoding="utf-8"))
    meta["digits"] = "l2r3"
    side.write_text(json.dumps(meta), encoding="utf-8")
    with pytest.raises(ValueError, match="digits"):
        BPETokenizer.load(path)
    side.write_text("{not json", encoding="utf-8")
    with pytest.raises(ValueError, match="malformed JSON") as info:
        BPETokenizer.load(path)
    assert str(side) in str(info.value)


def test_from_hf_wraps_without_mutating(tok):
    original = HFTokenizer.from_str(tok.hf.to_str())
    original.enable_truncation(4)
    wrapped = BPETokenizer.from_hf(original)
    assert original.encode_special_tokens is False
    assert original.truncation is not None
    assert encodings(wrapped) == encodings(tok)  # truncation does not leak into encode
    assert wrapped.digits == "r2l3" and wrapped.bos_id == 0
    with pytest.raises(ValueError, match="tokenizers.Tokenizer"):
        BPETokenizer.from_hf("not a tokenizer")


def test_from_hf_gpt2_style_roles():
    # GPT-2 style: a single <|endoftext|> special token that ends documents.
    hf = HFTokenizer.from_str(BPETokenizer.train(corpus(), 400, special_tokens=("<|endoftext|>",)).hf.to_str())
    t = BPETokenizer.from_hf(hf)
    assert (t.bos_id, t.eos_id, t.pad_id) == (None, 0, None)
    t = BPETokenizer.from_hf(hf, bos_token="<|endoftext|>", pad_token=0)
    assert (t.bos_id, t.eos_id, t.pad_id) == (0, 0, 0)
    assert t.encode("<|endoftext|>") != [0]


def test_from_hf_sentencepiece_style_byte_table():
    # Llama/Gemma style: Metaspace + byte fallback tokens <0xXX>.
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    vocab.update({f"<0x{b:02X}>": 3 + b for b in range(256)})
    for piece in ["▁", "a", "b", "▁a", "▁ab"]:
        vocab[piece] = len(vocab)
    merges = [("▁", "a"), ("▁a", "b")]
    hf = HFTokenizer(models.BPE(vocab, merges, unk_token="<unk>", byte_fallback=True))
    hf.pre_tokenizer = pre_tokenizers.Metaspace()
    hf.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)])
    hf.add_special_tokens(["<unk>", "<s>", "</s>"])
    t = BPETokenizer.from_hf(hf)
    assert (t.bos_id, t.eos_id) == (1, 2)
    assert t.token_bytes(vocab["▁ab"]) == b" ab"
    assert t.token_bytes(vocab["<0x0A>"]) == b"\n"
    ids = t.encode("ab é")
    assert b"".join(t.id_to_bytes[i] for i in ids) == " ab é".encode()  # Metaspace's prefix space
    assert t.decode(ids) == "ab é"


def test_pickle_keeps_literal_specials(tok):
    clone = pickle.loads(pickle.dumps(tok))
    assert encodings(clone) == encodings(tok)
    assert clone.hf.encode_special_tokens is True
    assert (clone.bos_id, clone.eos_id, clone.pad_id, clone.digits) == (0, 1, 2, "r2l3")
