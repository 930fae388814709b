"""The continuous-decoding benchmark (benchmarks/continuous_decoding.py) runs end to end at smoke sizes, so it does
not rot between full runs: one row per arm, positive images/s ratios, each pair's baseline at ratio exactly 1, and
head evaluations per image equal to sum_s T(s) |fill_s| of each arm's schedule (computed here from the MAR fill
counts and the DiSA table, and against P19's / P10's hand counts); bad flags are refused before any model is
built."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


def _bench():
    spec = importlib.util.spec_from_file_location("bench_continuous_decoding",
                                                  ROOT / "benchmarks" / "continuous_decoding.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _expected_evals() -> dict:
    """sum_s T(s) |fill_s| per arm, from the library's schedules, written out step by step."""
    from tokjax.vision.disa import disa_steps
    from tokjax.vision.mar import mar_fill_counts

    fills = mar_fill_counts(64, 16)
    mar_disa = disa_steps(16, schedule="linear", t_low=5, t_up=50)
    raster_disa = disa_steps(64, schedule="linear", t_low=5, t_up=50)
    return {"mar50": int(sum(50 * int(f) for f in fills)),
            "mar_disa": int(sum(int(t) * int(f) for t, f in zip(mar_disa, fills))),
            "raster5": 64 * 5, "xar": 4 * 16 * 16, "raster50": 64 * 50,
            "raster_disa": int(sum(int(t) for t in raster_disa))}


def test_expected_head_evals_match_the_experiments_hand_counts():
    # p19_disa's docstring: MAR T=50 3200, linear 1361; raster linear 1733; p10_xar's: raster T=5 320, xAR 1024
    assert _expected_evals() == {"mar50": 3200, "mar_disa": 1361, "raster5": 320, "xar": 1024, "raster50": 3200,
                                 "raster_disa": 1733}


def _check(rows: list[dict], batches: tuple, keys: list[str], bench) -> None:
    want = _expected_evals()
    assert [(r["batch"], r["key"]) for r in rows] == [(b, k) for b in batches for k in keys]
    for r in rows:
        base = next(x for x in rows if x["batch"] == r["batch"] and x["key"] == bench.PAIRS[r["pair"]])
        assert r["head_evals"] == want[r["key"]], r
        assert r["images_per_s"] > 0 and r["ratio"] > 0 and r["cfg"] == "off", r
        assert r["ratio"] == pytest.approx(r["images_per_s"] / base["images_per_s"])
        assert r["evals_ratio"] == pytest.approx(r["head_evals"] / base["head_evals"])
        assert r["images_per_s"] == pytest.approx(r["batch"] / r["seconds"])
        if r["key"] == base["key"]:
            assert r["ratio"] == 1.0 and r["evals_ratio"] == 1.0
    passes = {r["key"]: r["passes"] for r in rows}
    assert passes == {k: {"mar50": 16, "mar_disa": 16}.get(k, 64) for k in keys}, passes


@pytest.mark.slow
def test_continuous_decoding_benchmark_runs_at_a_tiny_size(capsys, tmp_path):
    bench = _bench()
    out = tmp_path / "rows.json"
    # the pairs' baselines (MAR T=50, raster AR T=5) are added when --arms names only the methods; "disa" is a pair
    assert bench.main(["--batches", "2", "--repeats", "1", "--arms", "mar_disa,xar,disa", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    keys = list(bench.ARMS)
    for k in keys:
        assert any(line.startswith(bench.LABELS[k] + " ") for line in text.splitlines()), (k, text)
    _check(json.loads(out.read_text())["rows"], (2,), keys, bench)


@pytest.mark.slow
def test_every_arm_runs_at_two_batch_sizes(tmp_path):
    bench = _bench()
    out = tmp_path / "rows.json"
    assert bench.main(["--batches", "1,3", "--repeats", "1", "--json", str(out)]) == 0
    _check(json.loads(out.read_text())["rows"], (1, 3), list(bench.ARMS), bench)


def test_schedules_are_the_declared_ones():
    bench = _bench()
    steps, fills = bench.schedule("raster_disa")
    assert steps.shape == (64,) and steps[0] == 50 and steps[-1] == 5 and np.all(np.diff(steps) <= 0)
    assert np.all(fills == 1)
    steps, fills = bench.schedule("mar_disa")
    assert steps.shape == (16,) and fills.sum() == 64
    with pytest.raises(ValueError, match="unknown arm 'flowar'"):
        bench.build("flowar")


def test_cfg_on_builds_every_arm_guided_and_off_unguided(capsys):
    # --cfg on times each decoder's guided Strategy (a null-class row per image, guidance 1.5); off is unchanged
    bench = _bench()
    for name in ("mar_disa", "raster5", "xar"):  # one arm per decoder (build's three branches)
        for guided in (False, True):
            sample = bench.build(name, guided=guided)
            if name.startswith("xar"):
                assert sample.keywords["guidance"] == (bench.GUIDANCE if guided else 1.0), name
            else:
                strategy = sample.args[1]
                assert strategy.guided is guided and float(strategy.guidance) == (bench.GUIDANCE if guided else 1.0)
    assert bench.GUIDANCE != 1.0 and bench.CFG_MODES == {"on": (True,), "off": (False,), "both": (False, True)}
    with pytest.raises(SystemExit) as e:
        bench.main(["--cfg", "maybe"])
    assert e.value.code == 2 and "invalid choice" in capsys.readouterr().err


@pytest.mark.parametrize("argv, msg", [
    (["--arms", "mar,maskgit"], "no arm named maskgit"),
    (["--batches", "0"], "batch sizes >= 1"),
    (["--batches", "a"], "comma-separated integers"),
    (["--repeats", "0"], ">= 1"),
])
def test_bad_flags_are_refused_before_any_model_is_built(argv, msg, capsys):
    bench = _bench()
    with pytest.raises(SystemExit) as e:
        bench.main(argv)
    assert e.value.code == 2 and msg in capsys.readouterr().err
