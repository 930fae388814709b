"""The tokjax command line: catalog, train on a config, generate, validated flags, pipes, help text, first use."""

import logging
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import tokjax
from tokjax import cli
from tokjax.catalog import FAMILIES
from tokjax.logits import LogitContext

REPO = cli.REPO


def test_catalog_prints_every_paper(capsys):
    assert cli.main(["catalog"]) == 0
    out = capsys.readouterr().out
    assert "P1" in out and "P78" in out and "planned" in out


def test_catalog_family_choices(capsys):
    assert cli.main(["catalog", "--family", "decoding", "--markdown"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| P")]
    assert rows and all("decoding" in r for r in rows)
    assert cli.main(["catalog", "--family", "nope"]) == 2  # an unknown family is an error, not an empty table
    err = capsys.readouterr().err
    assert "invalid choice: 'nope'" in err and all(f in err for f in FAMILIES)


def test_train_from_yaml_and_bad_config(tmp_path, capsys, caplog):
    assert cli.main(["train", "configs/tiny-test.yaml", "--steps", "8", "--workdir", str(tmp_path / "run")]) == 0
    assert "val_loss" in capsys.readouterr().out
    # Resuming the finished run restores its checkpoint without orbax's "could not be restored" warning.
    with caplog.at_level(logging.WARNING):
        assert cli.main(["train", "configs/tiny-test.yaml", "--steps", "8", "--workdir", str(tmp_path / "run")]) == 0
    captured = capsys.readouterr()
    assert "val_loss" in captured.out
    assert "could not be restored" not in caplog.text + captured.err
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: {lr: [1, 2]\n")
    assert cli.main(["train", str(bad)]) == 2
    assert "error" in capsys.readouterr().err
    assert cli.main(["train", str(tmp_path / "missing.yaml")]) == 2
    assert "missing.yaml" in capsys.readouterr().err
    assert cli.main(["train", "configs/tiny-test.yaml", "--steps", "0"]) == 2
    assert "argument --steps" in capsys.readouterr().err


def test_config_paths_resolve_from_any_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    want = REPO / "configs" / "tiny-test.yaml"
    assert cli._resolve_config("configs/tiny-test.yaml") == want  # relative to the project root
    assert cli._resolve_config("tiny-test") == want  # a config name
    assert cli._resolve_config("tiny-test.yaml") == want
    assert cli._resolve_config(str(want)) == want
    local = tmp_path / "configs" / "tiny-test.yaml"
    local.parent.mkdir()
    local.write_text("name: mine\n")
    assert cli._resolve_config("configs/tiny-test.yaml") == local  # the current directory comes first
    with pytest.raises(FileNotFoundError, match=r"config 'nope' not found .*tiny-pydocs, tiny-test"):
        cli._resolve_config("nope")


@pytest.mark.slow  # default-suite time; the file's other tests keep the method covered in the default suite
def test_generate_announces_first_training_and_unknown_model(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("TOKJAX_CACHE", str(tmp_path))
    assert cli.main(["generate", "--model", "tiny-test", "--prompt", "The ", "--max-new-tokens", "5", "--greedy"]) == 0
    captured = capsys.readouterr()
    assert "\nThe " in "\n" + captured.out
    # The notice comes first, says how long, and names the cache entry; pretrained's own progress follows.
    notice = captured.err.index("first use of 'tiny-test'")
    assert notice < captured.err.index("training tiny-test")
    assert "about 30 seconds" in captured.err and str(tmp_path / "tiny-test") in captured.err
    assert cli.main(["generate", "--model", "tiny-test", "--prompt", "The ", "--max-new-tokens", "2"]) == 0
    assert "first use" not in capsys.readouterr().err  # cached now: no notice
    assert cli.main(["generate", "--model", "nope", "--prompt", "x"]) == 2
    err = capsys.readouterr().err
    assert all(name in err for name in tokjax.available_pretrained())
    assert cli.main(["generate", "--model", "tiny-test", "--prompt", "", "--max-new-tokens", "2"]) != 0


@pytest.mark.parametrize("flag, value", [
    ("--top-p", "1.5"), ("--top-p", "0"), ("--top-p", "-0.1"), ("--top-p", "nan"),
    ("--temperature", "0"), ("--temperature", "-1"), ("--temperature", "inf"), ("--temperature", "hot"),
    ("--max-new-tokens", "0"), ("--max-new-tokens", "-3"), ("--max-new-tokens", "2.5"),
    ("--top-k", "-1"), ("--min-p", "1.5"), ("--repetition-penalty", "0"), ("--seed", "-1"),
])
def test_sampling_flags_are_rejected_not_clipped(flag, value, capsys):
    # Rejected while parsing: the model name is never looked at, nothing is loaded.
    assert cli.main(["generate", "--model", "never-loaded", "--prompt", "x", flag, value]) == 2
    err = capsys.readouterr().err
    assert f"argument {flag}:" in err and value in err


def _reference(logits, context, *, temperature, top_k, top_p, min_p, penalty, greedy):
    """Returns the kept logits of one row, transformers' LogitsProcessorList order, in plain numpy."""
    x = np.array(logits, np.float64)
    seen = np.unique(context)
    x[seen] = np.where(x[seen] > 0, x[seen] / penalty, x[seen] * penalty)
    if greedy:
        return np.where(np.arange(x.size) == np.argmax(x), x, -np.inf)
    x = x / temperature
    if top_k:
        x = np.where(x < np.sort(x)[-top_k], -np.inf, x)
    if top_p < 1:
        order = np.argsort(x)
        p = np.exp(x[order] - x.max())
        remove = np.cumsum(p / p.sum()) <= 1 - top_p
        remove[-1] = False
        x[order[remove]] = -np.inf
    if min_p > 0:
        p = np.exp(x - x.max())
        x = np.where(p < min_p, -np.inf, x)
    return x


@pytest.mark.parametrize("flags", [
    dict(temperature=0.7, top_k=0, top_p=0.9, min_p=0.0, penalty=1.0, greedy=False),
    dict(temperature=1.3, top_k=20, top_p=0.8, min_p=0.05, penalty=1.3, greedy=False),
    dict(temperature=0.5, top_k=0, top_p=1.0, min_p=0.0, penalty=1.0, greedy=False),
    dict(temperature=0.8, top_k=0, top_p=1.0, min_p=0.0, penalty=2.0, greedy=True),
])
def test_sampling_flags_build_transformers_order(flags):
    argv = ["generate", "--prompt", "x", "--temperature", str(flags["temperature"]), "--top-k", str(flags["top_k"]),
            "--top-p", str(flags["top_p"]), "--min-p", str(flags["min_p"]),
            "--repetition-penalty", str(flags["penalty"])] + (["--greedy"] if flags["greedy"] else [])
    transform = cli._sampling_transform(cli.build_parser().parse_args(argv))
    rng = np.random.default_rng(0)
    V = 64
    logits = (rng.standard_normal((1, V)) * 3).astype(np.float32)
    context = rng.integers(0, V, (1, 6))
    ctx = LogitContext(tokens=jnp.asarray(context), lengths=jnp.array([6]), step=jnp.int32(0))
    got, _ = transform(jnp.asarray(logits), None, ctx)
    want = _reference(logits[0], context[0], **flags)
    got = np.asarray(got[0], np.float64)
    assert np.array_equal(np.isfinite(got), np.isfinite(want))  # the same kept set
    if flags["greedy"]:
        assert np.argmax(got) == np.argmax(want)
    else:  # kept logits equal up to a per-row shift (transforms may renormalise)
        keep = np.isfinite(want)
        np.testing.assert_allclose(got[keep] - got[keep].max(), want[keep] - want[keep].max(), atol=1e-4)


def _help(argv, capsys):
    assert cli.main(argv) == 0
    return capsys.readouterr().out


def test_help_is_plain_text_and_lists_choices(capsys):
    texts = {" ".join(a): _help(a, capsys) for a in (["--help"], *([c, "--help"] for c in (
        "catalog", "reproduce", "train", "generate", "chat", "demo", "bench")))}
    for argv, text in texts.items():
        assert "`" not in text and ":func:" not in text and "**" not in text, (argv, text)
    flat = " ".join(texts["generate --help"].split())
    assert all(name in flat for name in tokjax.available_pretrained())
    assert all(f in texts["catalog --help"] for f in FAMILIES)
    assert "TOKJAX_CACHE" in texts["--help"] and "~/.cache/tokjax" in texts["--help"]


def test_closed_pipe_exits_quietly(monkeypatch):
    def write_into_closed_pipe(args):
        raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr(cli, "cmd_catalog", write_into_closed_pipe)
    monkeypatch.setattr(cli, "_silence_stdout", lambda: None)  # pytest's captured stdout has no descriptor to move
    assert cli.main(["catalog"]) == 0


def test_closed_pipe_subprocess_has_no_traceback():
    """``tokjax catalog | head -0``: the reader is gone before the first write; no traceback, status 0."""
    r, w = os.pipe()
    os.close(r)
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
    try:
        proc = subprocess.run([sys.executable, "-m", "tokjax.cli", "catalog"], stdout=w, stderr=subprocess.PIPE,
                              cwd=REPO, env=env, timeout=300, text=True)
    finally:
        os.close(w)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr and "BrokenPipe" not in proc.stderr, proc.stderr


def test_greedy_generate_matches_library(capsys):
    """The CLI's --greedy output is tokjax.generate's greedy continuation, decoded (no hidden clipping)."""
    from tokjax import logits as L

    model, tok = tokjax.pretrained("tiny-test", progress=False)
    assert cli.main(["generate", "--model", "tiny-test", "--prompt", "def ", "--max-new-tokens", "6", "--greedy"]) == 0
    out = capsys.readouterr().out.rstrip("\n")
    ids = tok.encode("def ")
    ref = tokjax.generate(model, [ids], key=jax.random.key(0), max_new_tokens=6, logits=L.greedy(), eos_id=tok.eos_id)
    assert out == "def " + tok.decode(ref.completions()[0].tolist())


def test_one_cache_location(tmp_path, monkeypatch):
    """$TOKJAX_CACHE, else ~/.cache/tokjax, computed by tokjax._paths.cache_root and nowhere else."""
    import re

    from tokjax._paths import cache_root
    from tokjax.pretrained import cache_root as pretrained_cache_root

    monkeypatch.setenv("TOKJAX_CACHE", str(tmp_path / "c"))
    assert cache_root() == pretrained_cache_root() == tmp_path / "c"
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("TOKJAX_CACHE", "~/elsewhere")
    assert cache_root() == tmp_path / "elsewhere"
    for unset in ("", None):
        if unset is None:
            monkeypatch.delenv("TOKJAX_CACHE")
        else:
            monkeypatch.setenv("TOKJAX_CACHE", unset)
        assert cache_root() == pretrained_cache_root() == tmp_path / ".cache" / "tokjax"
    assert cache_root(tmp_path / "x") == tmp_path / "x"
    # No other source file reads the variable or spells the default directory.
    pattern = re.compile(r"TOKJAX_CACHE|[\"']\.cache[\"']|\.cache/tokjax")
    offenders = []
    for folder in ("tokjax", "experiments", "benchmarks"):
        for path in sorted((REPO / folder).rglob("*.py")):
            if path == REPO / "tokjax" / "_paths.py":
                continue
            code = [ln for ln in path.read_text().splitlines() if not ln.lstrip().startswith("#")]
            code = [ln for ln in code if pattern.search(ln) and "``" not in ln and "`" not in ln]
            offenders += [f"{path.relative_to(REPO)}: {ln.strip()}" for ln in code]
    assert not offenders, "cache paths computed outside tokjax/_paths.py:\n" + "\n".join(offenders)
