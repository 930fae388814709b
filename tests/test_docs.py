"""Every python code block of README.md and docs/*.md runs as written (issue 14).

Blocks are read with pytest-markdown-docs' fence syntax, so ``pytest --markdown-docs README.md
docs/`` selects the same blocks (``test_same_blocks_as_pytest_markdown_docs`` checks it):

* ```` ```python ```` starts an example; ```` ```python continuation ```` continues the example
  before it (same names);
* ```` ```python notest signature ```` is a call signature, not a program, and is not run. A
  ``notest`` block must give one of ``NOTEST_REASONS``, so ``notest`` cannot hide a broken example;
  shell commands, YAML and diagrams use ``bash`` / ``yaml`` / ``text`` fences instead;
* ``slow`` on any block of an example marks the example ``slow`` (run by ``make test-all``);
* ``requires:MODULE`` on any block skips the example where MODULE is not installed (transformers,
  which CI lacks);
* ``devices:N`` on an example's first block runs it in a subprocess with N simulated CPU devices:
  the flag must be set before jax starts, and this process's jax already runs on one device.

This runner is used instead of the plugin's own collection, which would import every ``.py`` file
under ``tests/`` for docstring examples (the ``make_*_fixtures.py`` scripts import torch, which CI
lacks) and re-executes every earlier block of an example for each continuation. One test per
example: its blocks run in order in one fresh module namespace, with a new temporary directory as
the working directory (files an example writes land there) and the repository root importable,
as when a reader runs them from the repository root. A failure's traceback names the markdown
file and line.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import os
import subprocess
import sys
import traceback
import types
from pathlib import Path

import pytest
from markdown_it import MarkdownIt

ROOT = Path(__file__).resolve().parents[1]
PYTHON_LANGS = ("py", "python", "python3")  # what pytest-markdown-docs runs
NOTEST_REASONS = ("signature",)


@dataclasses.dataclass(frozen=True)
class Block:
    path: Path
    line: int  # 1-based line of the block's first code line
    source: str
    options: frozenset[str]


def doc_files() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def python_fences(path: Path) -> list[Block]:
    """Returns every python fence of ``path``, notest ones included, in file order."""
    out = []
    for tok in MarkdownIt("commonmark").parse(path.read_text("utf8")):
        if tok.type != "fence" or not tok.map:
            continue
        info = tok.info.split()
        if info and info[0] in PYTHON_LANGS:
            out.append(Block(path, tok.map[0] + 2, tok.content, frozenset(info[1:])))
    return out


def examples(path: Path) -> list[list[Block]]:
    """Returns the runnable examples of ``path``: lists of blocks joined by ``continuation``."""
    out: list[list[Block]] = []
    for b in python_fences(path):
        if "notest" in b.options:
            continue
        if "continuation" in b.options and out:
            out[-1].append(b)
        else:
            out.append([b])
    return out


def _rel(b: Block) -> str:
    return f"{b.path.relative_to(ROOT)}:{b.line}"


def _devices(example: list[Block]) -> int | None:
    found = [o for o in example[0].options if o.startswith("devices:")]
    return int(found[0].split(":", 1)[1]) if found else None


def _run(example: list[Block], namespace: dict) -> int:
    """Runs the example's blocks in order in ``namespace``; returns how many ran (fails the test on an error)."""
    ran = 0
    for b in example:
        # Pad with newlines so the code's line numbers are the markdown file's.
        code = compile("\n" * (b.line - 1) + b.source, str(b.path), "exec")
        try:
            exec(code, namespace)
        except Exception as e:  # pytest's own report would print the whole page above the failing line
            tb = "".join(traceback.format_exception(e))
        else:
            ran += 1
            continue
        pytest.fail(f"{_rel(example[0])}: the block at line {b.line} raised\n{tb}", pytrace=False)
    return ran


_CHILD = """
import json, sys, types
spec = json.load(sys.stdin)
ns = types.ModuleType("docs_example").__dict__
for path, line, source in spec:
    exec(compile("\\n" * (line - 1) + source, path, "exec"), ns)
"""


def _run_in_subprocess(example: list[Block], devices: int, cwd: Path) -> None:
    # The suite's compile flags (conftest) plus the device count, which must be set before jax starts.
    flags = [f for f in os.environ.get("XLA_FLAGS", "").split() if "xla_force_host_platform_device_count" not in f]
    env = {**os.environ, "XLA_FLAGS": " ".join([*flags, f"--xla_force_host_platform_device_count={devices}"]),
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    spec = json.dumps([[str(b.path), b.line, b.source] for b in example])
    proc = subprocess.run([sys.executable, "-c", _CHILD], input=spec, capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=900)
    if proc.returncode != 0:
        pytest.fail(f"{_rel(example[0])} on {devices} simulated devices exited {proc.returncode}:\n"
                    f"{proc.stderr[-6000:]}", pytrace=False)


ALL = [ex for path in doc_files() for ex in examples(path)]


PARAMS = [pytest.param(ex, id=_rel(ex[0]), marks=[pytest.mark.slow] if any("slow" in b.options for b in ex) else [])
          for ex in ALL]


_LOADED: dict = {}  # name -> (model, tokenizer), for this module's examples only (SmolLM2: ~0.5 GB)


def _shared_pretrained(name, **kw):
    """``tokjax.pretrained`` for the examples: a plain call (no options) loads each model once per test session.

    Loading SmolLM2 from its GGUF file takes ~5 s and 26 examples call it; loading itself is tested in
    tests/io, and models are immutable pytrees, so an example cannot change what the next one gets.
    """
    load = sys.modules["tokjax.pretrained"].pretrained  # the package attribute is this function while patched
    if kw:
        return load(name, **kw)
    if name not in _LOADED:
        _LOADED[name] = load(name)
    return _LOADED[name]


@pytest.fixture(scope="module", autouse=True)
def _free_shared_models():
    yield
    _LOADED.clear()


@pytest.mark.parametrize("example", PARAMS)
def test_example_runs(example, tmp_path, monkeypatch):
    for b in example:
        for option in b.options:
            if option.startswith("requires:"):
                pytest.importorskip(option.split(":", 1)[1])
    import tokjax

    monkeypatch.setattr(tokjax, "pretrained", _shared_pretrained)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(ROOT))
    devices = _devices(example)
    if devices is not None:
        _run_in_subprocess(example, devices, tmp_path)
        return
    module = types.ModuleType("docs_example")
    try:
        assert _run(example, module.__dict__) == len(example)
    finally:
        module.__dict__.clear()  # a loaded model is ~0.5 GB; free it before the next test
        gc.collect()


def test_fence_options():
    """Every python fence is run, or not run for a stated reason; continuations have something to continue."""
    problems = []
    for path in doc_files():
        fences = python_fences(path)
        for i, b in enumerate(fences):
            if "notest" in b.options and not b.options & set(NOTEST_REASONS):
                problems.append(f"{_rel(b)}: notest without a reason (one of {NOTEST_REASONS})")
            if "continuation" in b.options and not any("notest" not in f.options for f in fences[:i]):
                problems.append(f"{_rel(b)}: continuation of nothing")
            if any(o.startswith("devices:") for o in b.options) and "continuation" in b.options:
                problems.append(f"{_rel(b)}: devices: belongs on the example's first block")
    assert not problems, "\n".join(problems)


def test_same_blocks_as_pytest_markdown_docs():
    """The plugin would run exactly these blocks, each after the same earlier blocks of its example."""
    from pytest_markdown_docs.plugin import extract_fence_tests

    def lines(source: str) -> list[str]:
        return [line for line in source.splitlines() if line.strip()]

    for path in doc_files():
        theirs = [(t.start_line + 1, lines(t.source)) for t in extract_fence_tests(
            MarkdownIt("commonmark"), path.read_text("utf8"), 0, source_path=path)]
        ours = [(b.line, [line for c in ex[:i + 1] for line in lines(c.source)])
                for ex in examples(path) for i, b in enumerate(ex)]
        assert ours == theirs, path


def test_docs_are_collected():
    """The pages issue 14 names have examples here, the README quick start among them."""
    with_python = {ex[0].path.relative_to(ROOT).as_posix() for ex in ALL}
    assert {"README.md", "docs/hf_checkpoints.md", "docs/sharding.md", "docs/catalog.md"} <= with_python
