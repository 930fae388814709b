"""Tests for experiments/_harness.py (rows, RESULTS.md) and experiments/run_all.py."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `experiments` is not installed; import it from the checkout
    sys.path.insert(0, str(ROOT))

from experiments import _harness as h  # noqa: E402
from experiments import run_all as ra  # noqa: E402
from tokjax import catalog  # noqa: E402


def make_row(pid="P29", verdict="reproduced", **kw) -> h.Row:
    fields = dict(claim="loss memory drops", setting="tiny, V=4096", baseline_name="naive CE",
                  baseline_value=512.0, method_value=1.25, metric="peak MiB (lower is better)",
                  verdict=verdict, seconds=3.14159, quick=True)
    fields.update(kw)
    return h.Row(pid=pid, **fields)


# ---------------------------------------------------------------- Row


def test_row_normalises_and_validates():
    assert make_row(pid="p29").pid == "P29" and make_row(pid=29).pid == "P29"
    with pytest.raises(ValueError):
        make_row(pid="P99")
    with pytest.raises(ValueError, match="verdict"):
        make_row(verdict="yes")
    assert make_row(figure=str(ROOT / "experiments/figures/p29_mem.png")).figure == \
        "experiments/figures/p29_mem.png"


# ---------------------------------------------------------------- record / RESULTS.md


def test_record_keeps_other_rows_and_is_idempotent(tmp_path):
    path = tmp_path / "RESULTS.md"
    h.record(make_row("P44", verdict="not-reproduced", method_value="1.1x"), path)
    h.record(make_row("P3", verdict="inconclusive", baseline_value=None), path)
    h.record(make_row("P29", figure="experiments/figures/p29_mem.png"), path)
    first = path.read_text()
    rows = h.load_results(path)
    assert list(rows) == ["P3", "P29", "P44"]  # sorted by paper number, not by id string
    assert rows["P44"].verdict == "not-reproduced" and rows["P44"].method_value == "1.1x"
    assert rows["P3"].baseline_value is None
    assert rows["P29"].figure == "experiments/figures/p29_mem.png"
    assert rows["P29"].quick is True and rows["P29"].seconds == pytest.approx(3.1)

    h.record(make_row("P29", figure="experiments/figures/p29_mem.png"), path)
    assert path.read_text() == first  # same row again: same bytes
    h.write_results([], path)
    assert path.read_text() == first  # parse -> render round trip is exact

    h.record(make_row("P29", verdict="not-reproduced"), path)
    rows = h.load_results(path)
    assert rows["P29"].verdict == "not-reproduced"  # replaced, not duplicated
    assert set(rows) == {"P3", "P29", "P44"}
    assert [p.name for p in tmp_path.iterdir()] == ["RESULTS.md"]  # no temp files left


def test_cells_with_pipes_and_newlines_round_trip(tmp_path):
    path = tmp_path / "RESULTS.md"
    row = make_row(claim="a | b \\ c", note="line1\nline2", setting="x|y")
    h.record(row, path)
    back = h.load_results(path)["P29"]
    assert back.claim == "a | b \\ c" and back.setting == "x|y" and back.note == "line1 line2"


def test_empty_results_file(tmp_path):
    path = tmp_path / "sub" / "RESULTS.md"
    assert h.write_results([], path) == {}
    assert "No results recorded yet." in path.read_text()
    assert h.load_results(path) == {} and h.load_results(tmp_path / "missing.md") == {}


def test_run_cli_prints_and_records(tmp_path, capsys):
    path = tmp_path / "RESULTS.md"
    seen = []

    def run(quick):
        seen.append(quick)
        return make_row("P44", quick=None, seconds=0.0)

    assert h.run_cli(run, ["--quick"], results_path=path) == 0
    assert seen == [True]
    assert "| P44 |" in capsys.readouterr().out
    row = h.load_results(path)["P44"]
    assert row.quick is True
    h.run_cli(run, ["--no-record"], results_path=tmp_path / "other.md")
    assert not (tmp_path / "other.md").exists()


# ---------------------------------------------------------------- run_all


FAKE_OK = """
from experiments._harness import Row
CALLS = []
def run(quick):
    CALLS.append(quick)
    return Row(pid="P29", claim="c", setting="s", baseline_name="b", baseline_value=2.0,
               method_value=1.0, metric="m", verdict="reproduced")
"""
FAKE_RAISES = """
def run(quick):
    raise RuntimeError("boom: out of memory")
"""
FAKE_WRONG_PID = """
from experiments._harness import Row
def run(quick):
    return Row(pid="P1", claim="c", setting="s", baseline_name="b", baseline_value=None,
               method_value=None, metric="m", verdict="inconclusive")
"""


@pytest.fixture
def fake_experiments(tmp_path, monkeypatch):
    """Returns the results path; discovery is patched to three throwaway modules."""
    mods = tmp_path / "mods"
    mods.mkdir()
    for name, src in [("tj_fake_ok", FAKE_OK), ("tj_fake_raises", FAKE_RAISES),
                      ("tj_fake_wrong_pid", FAKE_WRONG_PID)]:
        (mods / f"{name}.py").write_text(textwrap.dedent(src))
    monkeypatch.syspath_prepend(str(mods))
    for name in ("tj_fake_ok", "tj_fake_raises", "tj_fake_wrong_pid"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    found = [ra.Experiment("P29", "tj_fake_ok"), ra.Experiment("P44", "tj_fake_raises"),
             ra.Experiment("P45", "tj_fake_wrong_pid")]
    monkeypatch.setattr(ra, "discover", lambda only=None: found)
    return tmp_path / "RESULTS.md"


def test_run_all_records_successes_and_failures(fake_experiments, capsys):
    path = fake_experiments
    h.record(make_row("P3", verdict="inconclusive"), path)  # an earlier result must survive
    setup_calls = []

    rows = ra.run_all(quick=True, setup=lambda quick: setup_calls.append(quick), results_path=path)

    assert setup_calls == [True]
    assert [(r.pid, r.verdict) for r in rows] == [
        ("P29", "reproduced"), ("P44", "error"), ("P45", "error")]
    assert "RuntimeError: boom: out of memory" in rows[1].note
    assert "expected P45" in rows[2].note
    assert all(r.quick is True and r.seconds >= 0 for r in rows)
    import tj_fake_ok
    assert tj_fake_ok.CALLS == [True]

    stored = h.load_results(path)
    assert set(stored) == {"P3", "P29", "P44", "P45"}
    assert stored["P44"].verdict == "error" and "boom" in stored["P44"].note
    out = capsys.readouterr()
    assert "[1/3] P29" in out.out and "[2/3] P44 error" in out.out
    assert "| P29 |" in out.out  # the final table
    assert "RuntimeError" in out.err  # traceback goes to stderr


def test_main_exit_code_reflects_errors(fake_experiments):
    assert ra.main(["--quick", "-q", "--results", str(fake_experiments)]) == 1


def test_setup_sequence_runs_in_order_even_with_nothing_to_run(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(ra, "discover", lambda only=None: [])
    calls = []
    rows = ra.run_all(quick=False, setup=[lambda q: calls.append(("a", q)),
                                          lambda q: calls.append(("b", q))],
                      results_path=tmp_path / "R.md")
    assert rows == [] and calls == [("a", False), ("b", False)]


def test_no_implemented_methods_prints_message_and_exits_0(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(ra, "discover", lambda only=None: [])
    path = tmp_path / "RESULTS.md"
    assert ra.main(["--quick", "--results", str(path)]) == 0
    out = capsys.readouterr().out
    planned = catalog.summary()["planned"]
    assert f"no implemented methods yet; {planned} planned" in out
    assert "| paper | claim |" in out  # the (empty) table is still printed
    assert path.is_file()


def test_real_discovery_matches_catalog():
    expected = [e.pid for e in catalog.entries() if e.status != "planned"]
    assert [x.pid for x in ra.discover()] == expected


# ---------------------------------------------------------------- --only


def test_parse_only():
    assert ra.parse_only(None) is None
    assert ra.parse_only("p44, P29,29") == ("P29", "P44")
    assert ra.parse_only(["P3", 1]) == ("P1", "P3")
    for bad in ("P29,P999", "foo", ["P0"], ",", ""):
        with pytest.raises(ValueError):
            ra.parse_only(bad)


def test_bad_only_ids_error_before_anything_runs(tmp_path):
    calls = []
    with pytest.raises(ValueError, match="P999"):
        ra.run_all(only="P29,P999", setup=lambda q: calls.append(q), results_path=tmp_path / "R.md")
    assert calls == [] and not (tmp_path / "R.md").exists()
    with pytest.raises(SystemExit) as exc:
        ra.main(["--only", "P29,bogus", "--results", str(tmp_path / "R.md")])
    assert exc.value.code == 2


def test_only_a_paper_without_experiment_is_a_clear_error():
    missing = [e for e in catalog.entries() if not (ROOT / e.experiment).is_file()]
    if not missing:
        pytest.skip("every paper has an experiment file")
    with pytest.raises(ValueError, match="no experiment yet"):
        ra.discover((missing[0].pid,))


# ---------------------------------------------------------------- script mode


def _script(*args, cwd):
    env = dict(os.environ, PYTHONPATH="")  # the script must find the repo by itself
    return subprocess.run([sys.executable, str(ROOT / "experiments" / "run_all.py"), *args],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=60)


def test_script_runs_from_any_cwd(tmp_path):
    res = _script("--dry-run", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    n_ready = sum(e.status != "planned" for e in catalog.entries())
    if n_ready == 0:
        assert "no implemented methods yet" in res.stdout


def test_script_rejects_bad_ids(tmp_path):
    res = _script("--only", "P29,P999", "--dry-run", cwd=tmp_path)
    assert res.returncode == 2
    assert "unknown paper id(s): P999" in res.stderr
