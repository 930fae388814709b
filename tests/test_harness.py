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
    assert list(rows) == [("P3", "main"), ("P29", "main"), ("P44", "main")]  # by paper number, not id string
    assert rows[("P44", "main")].verdict == "not-reproduced" and rows[("P44", "main")].method_value == "1.1x"
    assert rows[("P3", "main")].baseline_value is None
    assert rows[("P29", "main")].figure == "experiments/figures/p29_mem.png"
    assert rows[("P29", "main")].quick is True and rows[("P29", "main")].seconds == pytest.approx(3.1)

    h.record(make_row("P29", figure="experiments/figures/p29_mem.png"), path)
    assert path.read_text() == first  # same row again: same bytes
    h.write_results([], path)
    assert path.read_text() == first  # parse -> render round trip is exact

    h.record(make_row("P29", verdict="not-reproduced"), path)
    rows = h.load_results(path)
    assert rows[("P29", "main")].verdict == "not-reproduced"  # replaced, not duplicated
    assert {pid for pid, _ in rows} == {"P3", "P29", "P44"} and len(rows) == 3
    assert [p.name for p in tmp_path.iterdir()] == ["RESULTS.md"]  # no temp files left


def test_cells_with_pipes_and_newlines_round_trip(tmp_path):
    path = tmp_path / "RESULTS.md"
    row = make_row(claim="a | b \\ c", note="line1\nline2", setting="x|y")
    h.record(row, path)
    back = h.load_results(path)[("P29", "main")]
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
    row = h.load_results(path)[("P44", "main")]
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
    assert {pid for pid, _ in stored} == {"P3", "P29", "P44", "P45"}
    assert stored[("P44", "error")].verdict == "error" and "boom" in stored[("P44", "error")].note
    out = capsys.readouterr()
    assert "[1/3] P29" in out.out and "[2/3] P44 error error" in out.out
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
    assert "| paper | claim id | claim |" in out  # the (empty) table is still printed
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


# ---------------------------------------------------------------- verdict / Rule


def test_verdict_statuses_and_direction():
    v = h.verdict([0.5, 0.6, 0.7], [0.4, 0.4, 0.4], higher_is_better=True, threshold=0.05, seeds=(0, 1, 2))
    assert v.status == "reproduced" and v.seeds == (0, 1, 2) and v.threshold == 0.05
    assert v.diffs == pytest.approx((0.1, 0.2, 0.3)) and v.mean_diff == pytest.approx(0.2)
    # lower is better: diffs are negated so + still means "method better"
    v = h.verdict([1.0, 1.1], [1.2, 1.2], higher_is_better=False, threshold=0.05, seeds=(0, 1))
    assert v.status == "reproduced" and v.diffs == pytest.approx((0.2, 0.1))
    v = h.verdict([1.3, 1.25], [1.2, 1.2], higher_is_better=False, threshold=0.0, seeds=(0, 1))
    assert v.status == "not-reproduced" and all(d < 0 for d in v.diffs)
    v = h.verdict([0.5, 0.41], [0.4, 0.4], higher_is_better=True, threshold=0.05, seeds=(3, 4))
    assert v.status == "inconclusive"  # one seed clears the margin, the other does not
    # a positive gain below the threshold is not a reproduction
    assert h.verdict([0.42], [0.4], higher_is_better=True, threshold=0.05, seeds=(0,)).status == "not-reproduced"


def test_verdict_non_inferiority_with_negative_threshold():
    # "no worse than the baseline by more than 0.05": a 0.03 loss still reproduces, a 0.08 loss does not
    rule = dict(higher_is_better=True, threshold=-0.05, seeds=(0, 1))
    assert h.verdict([0.97, 1.0], [1.0, 1.0], **rule).status == "reproduced"
    assert h.verdict([0.92, 0.9], [1.0, 1.0], **rule).status == "not-reproduced"
    assert h.verdict([0.92, 0.99], [1.0, 1.0], **rule).status == "inconclusive"
    low = dict(higher_is_better=False, threshold=-1e-5, seeds=(0,))
    assert h.verdict([3e-6], [0.0], **low).status == "reproduced"  # an equivalence check: |rel diff| < 1e-5
    assert h.verdict([3e-5], [0.0], **low).status == "not-reproduced"


def test_verdict_rejects_nan_and_mismatched_lengths():
    with pytest.raises(ValueError, match="NaN"):
        h.verdict([float("nan")], [1.0], higher_is_better=True, threshold=0.0, seeds=(0,))
    with pytest.raises(ValueError, match="NaN"):
        h.verdict([1.0], [float("nan")], higher_is_better=True, threshold=0.0, seeds=(0,))
    with pytest.raises(ValueError, match="one method and one baseline value per seed"):
        h.verdict([1.0, 2.0], [1.0], higher_is_better=True, threshold=0.0, seeds=(0, 1))
    with pytest.raises(ValueError, match="per seed"):
        h.verdict([1.0, 2.0], [1.0, 1.0], higher_is_better=True, threshold=0.0, seeds=(0,))
    with pytest.raises(ValueError, match="per seed"):
        h.verdict([], [], higher_is_better=True, threshold=0.0, seeds=())


def test_rule_validates_and_picks_seeds():
    rule = h.Rule(metric="acc", higher_is_better=True, threshold=0.01, seeds=(0, 1, 2), reported="x")
    assert rule.run_seeds(False) == (0, 1, 2) and rule.run_seeds(True) == (0,)
    quick = h.Rule(metric="acc", higher_is_better=True, threshold=0.01, seeds=(0, 1, 2), quick_seeds=(0, 1))
    assert quick.run_seeds(True) == (0, 1)
    v = rule.verdict([0.6, 0.6, 0.6], [0.5, 0.5, 0.5])
    assert v.status == "reproduced" and v.seeds == (0, 1, 2)
    v = quick.verdict([0.6, 0.5], [0.5, 0.5], seeds=quick.run_seeds(True))
    assert v.status == "inconclusive" and v.seeds == (0, 1)
    with pytest.raises(ValueError, match="per seed"):  # quick runs must pass the seeds they ran
        quick.verdict([0.6, 0.5], [0.5, 0.5])
    for bad in (dict(seeds=()), dict(seeds=(1, 1)), dict(threshold=float("nan")), dict(threshold="0.1")):
        with pytest.raises(ValueError):
            h.Rule(**{**dict(metric="m", higher_is_better=True, threshold=0.0, seeds=(0,)), **bad})


def test_row_takes_a_verdict_and_round_trips_its_columns(tmp_path):
    v = h.verdict([0.5, 0.7], [0.4, 0.4], higher_is_better=True, threshold=0.05, seeds=(0, 7))
    row = make_row(verdict=v, quick=False)
    assert row.verdict == "reproduced" and row.threshold == 0.05
    assert row.seeds == (0, 7) and row.diffs == pytest.approx((0.1, 0.3))
    path = tmp_path / "RESULTS.md"
    h.record(row, path)
    text = path.read_text()
    assert "| threshold | seeds | per-seed diff |" in text and "| 0.05 | 0 7 | +0.1 +0.3 |" in text
    back = h.load_results(path)[("P29", "main")]
    assert (back.verdict, back.threshold, back.seeds, back.diffs) == ("reproduced", 0.05, (0, 7), (0.1, 0.3))
    h.write_results([], path)
    assert path.read_text() == text  # exact round trip with the rule columns


def test_old_header_results_still_load_and_rerender(tmp_path):
    path = tmp_path / "RESULTS.md"
    old = "| " + " | ".join(h._OLD_COLUMNS) + " |\n|" + "---|" * len(h._OLD_COLUMNS) + "\n"
    old += "| P6 | c | s | m (higher is better) | plain | 0.988 | 0.992 | inconclusive | full | 80.1 |  | n \\| x |\n"
    path.write_text("# Experiment results\n\n" + old)
    row = h.load_results(path)[("P6", "main")]
    assert row.verdict == "inconclusive" and row.quick is False and row.note == "n | x"
    assert row.threshold is None and row.seeds == () and row.diffs == ()
    h.write_results([], path)  # re-rendered with the new columns, values kept
    text = path.read_text()
    assert "| per-seed diff |" in text
    again = h.load_results(path)[("P6", "main")]
    assert again == row


def test_quick_rows_go_to_the_quick_file_and_never_replace_full_rows(tmp_path, monkeypatch):
    full, quick = tmp_path / "RESULTS.md", tmp_path / "RESULTS-quick.md"
    monkeypatch.setattr(h, "RESULTS_PATH", full)
    monkeypatch.setattr(h, "RESULTS_QUICK_PATH", quick)
    assert h.results_file(True) == quick and h.results_file(False) == full

    def run(q):
        return make_row("P44", quick=None, seconds=0.0, verdict="reproduced" if q else "not-reproduced")

    h.run_cli(run, [])
    h.run_cli(run, ["--quick"])
    assert h.load_results(full)[("P44", "main")].verdict == "not-reproduced"  # the full row survives the quick run
    assert h.load_results(full)[("P44", "main")].quick is False
    assert h.load_results(quick)[("P44", "main")].verdict == "reproduced" and h.load_results(quick)[("P44", "main")].quick is True
    with pytest.raises(ValueError, match="--quick row"):  # even when pointed at the full file
        h.record(make_row("P44", quick=True), full)
    assert h.load_results(full)[("P44", "main")].quick is False


def test_run_all_quick_writes_the_quick_file(fake_experiments, monkeypatch):
    full, quick = fake_experiments, fake_experiments.parent / "RESULTS-quick.md"
    monkeypatch.setattr(h, "RESULTS_PATH", full)
    monkeypatch.setattr(h, "RESULTS_QUICK_PATH", quick)
    ra.run_all(quick=True, progress=False)
    assert {pid for pid, _ in h.load_results(quick)} == {"P29", "P44", "P45"} and not full.exists()


# ---------------------------------------------------------------- experiment files (static checks)


EXPERIMENTS = sorted((ROOT / "experiments").glob("p[0-9]*.py"))


def _module_ast(path):
    import ast

    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


@pytest.mark.parametrize("path", EXPERIMENTS, ids=lambda p: p.stem)
def test_every_experiment_declares_a_rule_in_its_header(path):
    import ast

    rules = [node for node in _module_ast(path).body
             if isinstance(node, (ast.Assign, ast.AnnAssign)) and isinstance(node.value, ast.Call)
             and getattr(node.value.func, "id", getattr(node.value.func, "attr", None)) == "Rule"]
    assert rules, f"{path.name} declares no module-level `RULE = Rule(...)` (see experiments/_harness.py)"


@pytest.mark.parametrize("path", EXPERIMENTS, ids=lambda p: p.stem)
def test_no_experiment_imports_another_experiment(path):
    import ast
    import re

    bad = []
    for node in ast.walk(_module_ast(path)):  # function-level imports included
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            mod = node.module or ""
            names = [mod] + ([f"{mod}.{a.name}" for a in node.names] if mod == "experiments" else [])
        bad += [n for n in names if re.fullmatch(r"(experiments\.)?p\d+\w*", n)]
    assert not bad, f"{path.name} imports another experiment: {bad}; shared setup belongs in experiments/_common.py"


def test_quick_runs_write_figures_to_their_own_folder(tmp_path, monkeypatch):
    monkeypatch.setattr(h, "FIGURES_DIR", tmp_path / "figures")
    seen = []

    def run(q):
        seen.append(h.figure_path("P38", "curve.png"))
        return make_row("P38", quick=None)

    h.run_cli(run, ["--quick", "--no-record"])
    h.run_cli(run, ["--no-record"])
    assert seen == [tmp_path / "figures" / "quick" / "p38_curve.png", tmp_path / "figures" / "p38_curve.png"]
    assert h.figure_path("P38", "x.png").parent == tmp_path / "figures"  # reset after the run


# ---------------------------------------------------------------- per-claim rows


def test_a_paper_records_one_row_per_claim_and_a_rerun_replaces_the_set(tmp_path):
    path = tmp_path / "RESULTS.md"
    h.record(make_row("P3", quick=False), path)
    h.record([make_row("P45", claim_id="lossless", quick=False), make_row("P45", claim_id="speed", verdict="not-reproduced",
                                                                         quick=False)], path)
    rows = h.load_results(path)
    assert list(rows) == [("P3", "main"), ("P45", "lossless"), ("P45", "speed")]  # a paper's claims keep their order
    assert "| P45 | speed |" in path.read_text() and "3 claims of 2 papers" in path.read_text()
    h.record([make_row("P45", claim_id="speed", quick=False)], path)  # a re-run is the paper's whole set
    assert list(h.load_results(path)) == [("P3", "main"), ("P45", "speed")]


def test_an_error_keeps_the_papers_earlier_rows(tmp_path):
    path = tmp_path / "RESULTS.md"
    h.record([make_row("P45", claim_id="speed", quick=False)], path)
    h.record(make_row("P45", claim_id="error", verdict="error", quick=False), path)
    assert set(h.load_results(path)) == {("P45", "speed"), ("P45", "error")}
    h.record(make_row("P45", claim_id="speed", quick=False), path)  # a successful run clears the error
    assert set(h.load_results(path)) == {("P45", "speed")}


def test_claim_rows_are_validated():
    for bad in ("Speed", "", "a b", "x" * 40, 3):
        with pytest.raises(ValueError, match="claim_id"):
            make_row(claim_id=bad)
    with pytest.raises(ValueError, match="same"):
        h.write_results([make_row(claim_id="a"), make_row(claim_id="a")], "/nonexistent/never-written.md")
    with pytest.raises(ValueError, match="one paper"):
        h.as_rows([make_row("P3"), make_row("P4")])
    with pytest.raises(TypeError, match="non-empty"):
        h.as_rows([])


def test_run_cli_records_a_list_of_claim_rows(tmp_path):
    path = tmp_path / "RESULTS.md"
    h.run_cli(lambda q: [make_row("P22", claim_id="lossless", quick=None), make_row("P22", claim_id="speed", quick=None)],
              [], results_path=path)
    rows = h.load_results(path)
    assert set(rows) == {("P22", "lossless"), ("P22", "speed")} and all(r.quick is False for r in rows.values())


def test_per_paper_header_loads_as_claim_main(tmp_path):
    path = tmp_path / "RESULTS.md"
    cols = h._PER_PAPER_COLUMNS
    path.write_text("| " + " | ".join(cols) + " |\n|" + "---|" * len(cols) + "\n"
                    + "| P6 | c | s | m | b | 1 | 2 | reproduced | 0.1 | 0 | +1 | full | 1.0 |  | n |\n")
    assert list(h.load_results(path)) == [("P6", "main")]


def test_run_cli_only_reruns_some_claims_and_keeps_the_others(tmp_path):
    path = tmp_path / "RESULTS.md"
    h.run_cli(lambda q: [make_row("P59", claim_id="lossless", quick=None, method_value=0.0),
                         make_row("P59", claim_id="speed", quick=None, method_value=0.5)], [], results_path=path)

    def run(quick, only=None):
        return [make_row("P59", claim_id=c, quick=None, method_value=2.0) for c in sorted(only)]

    h.run_cli(run, ["--only", "speed,multi-target"], results_path=path)
    rows = h.load_results(path)
    assert set(rows) == {("P59", "lossless"), ("P59", "speed"), ("P59", "multi-target")}
    assert float(rows[("P59", "lossless")].method_value) == 0.0 and float(rows[("P59", "speed")].method_value) == 2.0
    with pytest.raises(SystemExit):  # a run() without only= cannot re-run single claims
        h.run_cli(lambda q: make_row("P59", claim_id="speed"), ["--only", "speed"], results_path=path)
    with pytest.raises(ValueError, match="returned claims"):
        h.run_cli(lambda q, only=None: make_row("P59", claim_id="lossless"), ["--only", "speed"], results_path=path)


def test_memo_run_computes_once_and_reads_back(tmp_path, monkeypatch):
    import numpy as np

    from experiments._common import memo_run

    monkeypatch.setenv("TOKJAX_CACHE", str(tmp_path))
    calls = []

    def compute():
        calls.append(1)
        return {"nll": 1.25, "labels": np.array(["pos", "neg"])}

    a = memo_run("t", {"seed": 0}, compute)
    b = memo_run("t", {"seed": 0}, compute)
    c = memo_run("t", {"seed": 1}, compute)
    assert len(calls) == 2 and float(b["nll"]) == 1.25 and list(b["labels"]) == ["pos", "neg"]
    assert float(a["nll"]) == float(c["nll"])
    with pytest.raises(ValueError, match="dict"):
        memo_run("t", {"seed": 2}, lambda: [1.0])


def test_run_cli_seeds_runs_a_subset_and_records_nothing(tmp_path, capsys):
    rule = h.Rule(metric="m", higher_is_better=True, threshold=0.0, seeds=(0, 1, 2))
    seen = []

    def run(quick):
        seen.append((rule.run_seeds(quick), h.figure_path("P18", "x.png").parent.name, h.partial_seeds_run(),
                     h.restrict_seeds((0, 1))))  # seeds declared outside a Rule (the SmolLM preference rows)
        return make_row("P18", quick=None)

    path = tmp_path / "RESULTS.md"
    h.run_cli(run, ["--seeds", "2,1"], results_path=path)
    assert seen[-1] == ((1, 2), "tokjax-seeds-run-figures", True, (1,))  # declared order; figures off the record
    assert not path.exists() and "not recorded" in capsys.readouterr().out
    h.run_cli(run, [], results_path=path)  # the restriction ends with the run
    assert seen[-1][0] == (0, 1, 2) and not seen[-1][2] and seen[-1][3] == (0, 1) and path.exists()
    for bad in (["--seeds", "x"], ["--seeds", ","], ["--seeds", "1", "--quick"]):
        with pytest.raises(SystemExit):
            h.run_cli(run, bad, results_path=path)
