"""tokjax.pretrained: trained on first use, cached, loaded from the cache afterwards."""

import json
import time

import numpy as np
import pytest

from tokjax.pretrained import available_pretrained, pretrained, pretrained_metadata


def test_pretrained_trains_then_loads_from_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TOKJAX_CACHE", str(tmp_path))
    model, tok = pretrained("tiny-test", progress=False)
    entry = tmp_path / "tiny-test"
    assert (entry / "tokenizer.json").is_file() and (entry / "params").is_dir()
    meta = json.loads((entry / "metadata.json").read_text())
    assert meta["format"] == "tokjax.pretrained" and meta["version"] >= 1
    assert meta["model"]["vocab_size"] == tok.vocab_size == model.cfg.vocab_size
    m = meta["metrics"]
    assert np.isfinite(m["val_loss"]) and np.isfinite(m["val_bits_per_byte"]) and m["bytes_per_token"] > 1
    assert m["val_loss"] < np.log(tok.vocab_size)  # it learned something
    assert not (tmp_path / ".work" / "tiny-test").exists()  # the run's scratch space is gone
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]

    t = time.perf_counter()
    model2, tok2 = pretrained("tiny-test", progress=False)
    assert time.perf_counter() - t < 10
    assert model2.cfg == model.cfg
    for a, b in zip(np.asarray(model.params["embed"]), np.asarray(model2.params["embed"])):
        assert np.array_equal(a, b)
    text = "def f(x):\n    return x"
    assert tok2.decode(tok2.encode(text)) == text and tok2.encode(text) == tok.encode(text)
    assert pretrained_metadata("tiny-test")["metrics"] == m

    # a corrupt cache entry is reported with its path, not silently used
    (entry / "metadata.json").write_text("{not json")
    with pytest.raises(ValueError, match=str(entry / "metadata.json")):
        pretrained("tiny-test", progress=False)


def test_explicit_cache_dir_and_stale_entries(tmp_path):
    # A cache entry from another config (here: another format version) is retrained, not loaded.
    entry = tmp_path / "tiny-test"
    entry.mkdir()
    (entry / "metadata.json").write_text(json.dumps({"format": "tokjax.pretrained", "version": 0}))
    model, tok = pretrained("tiny-test", cache_dir=tmp_path, progress=False)
    assert json.loads((entry / "metadata.json").read_text())["version"] >= 1
    assert model.cfg.vocab_size == tok.vocab_size


def test_unknown_name_lists_valid_ones():
    with pytest.raises(ValueError, match="tiny-pydocs") as ei:
        pretrained("gpt-17", progress=False)
    assert "gpt-17" in str(ei.value) and "tiny-test" in str(ei.value)
    assert "tiny-pydocs" in available_pretrained()
    with pytest.raises(ValueError, match="unknown pretrained"):
        pretrained_metadata("nope")
