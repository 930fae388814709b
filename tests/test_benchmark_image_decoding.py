"""The image-decoding benchmark (benchmarks/image_decoding.py) runs end to end at smoke sizes, so it does not rot
between full runs: the table has one row per decoder, the pass counts are the decoders' schedules, raster NTP's
ratio to itself is exactly 1, and bad flags are refused before any model is built."""

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _bench():
    spec = importlib.util.spec_from_file_location("bench_image_decoding", ROOT / "benchmarks" / "image_decoding.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _table(text: str, bench) -> dict:
    """Returns {decoder label: [B, cfg, passes, images/s, ratio]} from the printed table."""
    rows = {}
    for line in text.splitlines():
        for label in bench.LABELS.values():
            if line.startswith(label + " ") and line[len(label):].split()[0].isdigit():
                f = line[len(label):].split()
                rows[label] = [int(f[0]), f[1], int(f[2]), float(f[3]), float(f[4].rstrip("x"))]
    return rows


@pytest.mark.slow
def test_image_decoding_benchmark_runs_at_a_tiny_size(capsys, tmp_path):
    bench = _bench()
    out = tmp_path / "rows.json"
    # raster NTP is added as the baseline when --decoders leaves it out
    assert bench.main(["--batches", "2", "--repeats", "1", "--decoders", "ts4", "--json", str(out)]) == 0
    rows = _table(capsys.readouterr().out, bench)
    assert set(rows) == {"raster NTP", "Token-Shuffle s=4"}, rows
    assert {k: r[2] for k, r in rows.items()} == {"raster NTP": 64, "Token-Shuffle s=4": 4}
    assert all(r[0] == 2 and r[1] == "on" and r[3] > 0 for r in rows.values()), rows
    assert rows["raster NTP"][4] == 1.0
    saved = json.loads(out.read_text())["rows"]
    assert [r["key"] for r in saved] == ["ntp", "ts4"]
    ntp = saved[0]
    for r in saved:  # the ratio is images/s over NTP's at the same batch and cfg
        assert r["ratio"] == pytest.approx(r["images_per_s"] / ntp["images_per_s"])
        assert r["images_per_s"] == pytest.approx(r["batch"] / r["seconds"])


@pytest.mark.slow
def test_every_decoder_runs_with_and_without_guidance(tmp_path):
    bench = _bench()
    out = tmp_path / "rows.json"
    assert bench.main(["--batches", "1", "--repeats", "1", "--cfg", "both", "--json", str(out)]) == 0
    passes = {"ntp": 64, "ntp3": 64, "nar": 15, "nbp8": 8, "nbp16": 4, "ts2": 16, "ts4": 4}
    rows = json.loads(out.read_text())["rows"]
    for cfg in ("on", "off"):
        got = {r["key"]: r["passes"] for r in rows if r["cfg"] == cfg}
        assert got == passes, (cfg, got)
        assert next(r["ratio"] for r in rows if r["cfg"] == cfg and r["key"] == "ntp") == 1.0


@pytest.mark.slow
def test_uncached_adds_the_cache_free_canvas_decoders(tmp_path):
    bench = _bench()
    out = tmp_path / "rows.json"
    assert bench.main(["--batches", "2", "--repeats", "1", "--decoders", "ts4", "--uncached", "--cfg", "off",
                       "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [(r["key"], r["cached"], r["passes"]) for r in rows] == [("ntp", True, 64), ("ts4", True, 4),
                                                                     ("ts4_nc", False, 4)]
    assert rows[2]["decoder"] == "Token-Shuffle s=4 no cache"


@pytest.mark.parametrize("argv, msg", [
    (["--decoders", "ntp,maskgit"], "no decoder named maskgit"),
    (["--batches", "0"], "batch sizes >= 1"),
    (["--batches", "a"], "comma-separated integers"),
    (["--repeats", "0"], ">= 1"),
    (["--cfg", "maybe"], "invalid choice"),
])
def test_bad_flags_are_refused_before_any_model_is_built(argv, msg, capsys):
    bench = _bench()
    with pytest.raises(SystemExit) as e:
        bench.main(argv)
    assert e.value.code == 2 and msg in capsys.readouterr().err


def test_build_refuses_an_unknown_decoder():
    with pytest.raises(ValueError, match="unknown decoder 'ar'"):
        _bench().build("ar", guided=True)
