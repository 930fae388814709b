"""The accelerator check (benchmarks/gpu/check.py) runs end to end at smoke sizes, so it does not rot
between the runs on a GPU machine."""

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_check_smoke_writes_every_section(tmp_path):
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "benchmarks" / "gpu" / "check.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = tmp_path / "report.md"
    rc = mod.main(["--smoke", "--out", str(out)])
    text = out.read_text()
    assert rc == 0, text
    for title in ("Decode", "Cut cross-entropy", "TensorBLEU", "Speculative decoding", "Train step MFU"):
        assert f"## {title}" in text
    assert "0 section(s) failed" in text and "Traceback" not in text
    # the speculative arms are lossless: greedy outputs equal plain greedy's
    spec_rows = [ln for ln in text.splitlines() if ln.startswith("| prompt lookup") or ln.startswith("| Token Recycling")]
    assert len(spec_rows) == 2 and all(ln.rstrip(" |").endswith("True") for ln in spec_rows)


def test_tensorbleu_benchmark_runs_at_a_tiny_size(capsys):
    spec = importlib.util.spec_from_file_location("bench_tensorbleu", ROOT / "benchmarks" / "tensorbleu.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.main(["--batch", "2", "--length", "8", "--repeats", "1"]) == 0
    rows = [ln.split("|")[0].split() for ln in capsys.readouterr().out.splitlines()
            if ln and not ln.startswith(("#", "    B"))]
    assert len(rows) == 1 and rows[0][:2] == ["2", "8"] and float(rows[0][-1]) < 1e-6, rows


def test_int8_matvec_benchmark_runs_at_a_tiny_size(capsys):
    spec = importlib.util.spec_from_file_location("bench_int8", ROOT / "benchmarks" / "int8_matvec.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.main(["--shapes", "8x16", "--repeats", "1"]) == 0
    rows = [ln for ln in capsys.readouterr().out.splitlines() if ln.strip().startswith("8x16")]
    assert len(rows) == 5, rows
