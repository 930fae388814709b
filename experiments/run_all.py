"""Runs every paper experiment that exists and writes experiments/RESULTS.md (RESULTS-quick.md with --quick).

Which experiments run comes from the catalog: every entry whose status is not
``planned`` (or the ids given with ``--only``). Each one is imported and run in this
process, timed, and recorded as soon as it finishes (full runs in RESULTS.md, ``--quick``
runs in RESULTS-quick.md, so a quick run never replaces a full result); an experiment that
raises becomes a row with verdict ``error`` and the rest still run.

    python experiments/run_all.py --quick
    python experiments/run_all.py --only P29,P44
    python -m experiments.run_all --dry-run          # show what would run

From Python (repository root as cwd): ``from experiments.run_all import run_all``.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import importlib
import sys
import time
import traceback
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

if __package__ in (None, ""):  # run as `python experiments/run_all.py`: make the repo importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from experiments._harness import (  # noqa: E402
    RESULTS_PATH, ROOT, Row, _run_mode, as_rows, format_rows, results_file, write_results,
)
from tokjax import catalog  # noqa: E402

__all__ = ["Experiment", "discover", "main", "parse_only", "run_all"]

Setup = Callable[[bool], object]


@dataclasses.dataclass(frozen=True)
class Experiment:
    """One experiment to run: its paper id and importable module name."""

    pid: str
    module: str  # dotted name, e.g. "experiments.p29_cut_cross_entropy"


def parse_only(only: str | int | Iterable[str | int] | None) -> tuple[str, ...] | None:
    """Returns canonical ids ("P29", ...) from "P29,P44" or a list; None if `only` is None.

    Raises ValueError naming every unknown id, so a typo never silently runs nothing.
    """
    if only is None:
        return None
    if isinstance(only, (str, int)):
        items = [only] if isinstance(only, int) else [s for s in only.split(",")]
    else:
        items = list(only)
    items = [s.strip() if isinstance(s, str) else s for s in items]
    items = [s for s in items if s != ""]
    if not items:
        raise ValueError("--only needs at least one paper id, e.g. --only P29,P44")
    ids, bad = [], []
    for s in items:
        try:
            pid = catalog.canonical_id(s)
        except (ValueError, TypeError):
            bad.append(str(s))
            continue
        if pid not in ids:
            ids.append(pid)
    if bad:
        raise ValueError(f"unknown paper id(s): {', '.join(bad)} (valid: P1..P{catalog.N_PAPERS})")
    return tuple(sorted(ids, key=lambda p: int(p[1:])))


def discover(only: Sequence[str] | None = None) -> list[Experiment]:
    """Returns the experiments to run, ordered by paper number.

    With `only` None: every catalog entry whose status is not planned. With explicit ids
    (already canonical): those entries, including planned ones whose experiment file
    already exists (useful while developing); a requested id with no experiment file is a
    ValueError.
    """
    if only is None:
        chosen = [e for e in catalog.entries() if e.status != "planned"]
    else:
        chosen = [catalog.get(pid) for pid in only]
        missing = [e for e in chosen if not (ROOT / e.experiment).is_file()]
        if missing:
            raise ValueError("no experiment yet for: " + "; ".join(
                f"{e.pid} ({e.status}; {e.experiment} does not exist)" for e in missing))
    return [Experiment(e.pid, e.experiment_module) for e in sorted(chosen, key=lambda e: e.number)]


def _error_row(pid: str, exc: BaseException, seconds: float, quick: bool) -> Row:
    """Returns a verdict-"error" row carrying the exception's type and message."""
    message = f"{type(exc).__name__}: {exc}".strip()
    if len(message) > 300:  # a table cell, not a log; the traceback went to stderr
        message = message[:297] + "..."
    return Row(pid=pid, claim_id="error", claim="", setting="", baseline_name="", baseline_value=None,
               method_value=None, metric="", verdict="error", seconds=seconds, quick=quick,
               note=message)


def _as_row(row):
    if not isinstance(row, Row) and type(row).__name__ == "Row" and dataclasses.is_dataclass(row):
        # Same class loaded twice (`import _harness` vs `experiments._harness`): convert.
        return Row(**dataclasses.asdict(row))
    return row


def _run_one(exp: Experiment, quick: bool) -> list[Row]:
    """Returns the experiment's rows (timed), or one error row if importing or running it raised."""
    t0 = time.perf_counter()
    try:
        module = importlib.import_module(exp.module)
        with _run_mode(quick):  # figures of a --quick run go to experiments/figures/quick/
            result = module.run(quick)
        result = [_as_row(r) for r in result] if isinstance(result, (list, tuple)) else _as_row(result)
        rows = as_rows(result)
        if rows[0].pid != exp.pid:
            raise ValueError(f"{exp.module}.run() returned rows for {rows[0].pid}, expected {exp.pid}")
    except Exception as exc:  # one broken experiment must not stop the others
        traceback.print_exc(file=sys.stderr)
        return [_error_row(exp.pid, exc, time.perf_counter() - t0, quick)]
    seconds = time.perf_counter() - t0
    return [dataclasses.replace(r, seconds=seconds, quick=quick) for r in rows]


def _free_memory() -> None:
    """Returns None after dropping caches the previous experiment left behind."""
    # Compiled programs and arrays from one experiment would otherwise pile up over 78.
    jax = sys.modules.get("jax")
    if jax is not None and hasattr(jax, "clear_caches"):
        jax.clear_caches()
    gc.collect()


def run_all(quick: bool = True, only: str | Iterable[str | int] | None = None,
            progress: bool = True, *, setup: Setup | Sequence[Setup] | None = None,
            results_path: str | Path | None = None) -> list[Row]:
    """Returns the rows of the experiments run (in paper order), after recording them.

    `setup` is one callable or a sequence of callables, each called as ``step(quick)``
    before any experiment (e.g. training the shared tiny model); they always run, and an
    exception in one propagates, since every experiment after it would fail anyway.
    Each experiment's row is written to `results_path` (default: RESULTS.md, or
    RESULTS-quick.md when `quick`) as soon as it finishes, keeping rows of papers not
    run now; an experiment that raises gives a verdict-"error" row. Unknown ids in `only` raise ValueError before anything runs.
    """
    ids = parse_only(only)
    experiments = discover(ids)
    results_path = results_file(quick) if results_path is None else Path(results_path)
    say = print if progress else (lambda *a, **k: None)

    steps = [] if setup is None else ([setup] if callable(setup) else list(setup))
    for step in steps:
        name = getattr(step, "__name__", repr(step))
        say(f"[setup] {name} ...", flush=True)
        t0 = time.perf_counter()
        step(quick)
        say(f"[setup] {name} done ({time.perf_counter() - t0:.1f} s)", flush=True)

    if not experiments:
        n_planned = catalog.summary()["planned"]
        say(f"no implemented methods yet; {n_planned} planned" if ids is None
            else "nothing selected to run")

    rows: list[Row] = []
    for i, exp in enumerate(experiments, 1):
        say(f"[{i}/{len(experiments)}] {exp.pid} {exp.module} ...", flush=True)
        got = _run_one(exp, quick)
        rows += got
        write_results(got, results_path)  # recorded now, so a later crash loses nothing
        extra = f": {got[0].note}" if got[0].verdict == "error" else ""
        verdicts = ", ".join(f"{r.claim_id} {r.verdict}" for r in got)
        say(f"[{i}/{len(experiments)}] {exp.pid} {verdicts} ({got[0].seconds:.1f} s){extra}", flush=True)
        _free_memory()

    write_results([], results_path)  # creates/normalises the file even when nothing ran
    say("")
    say(format_rows(rows, results_path.parent))
    say(f"\nresults written to {results_path}")
    return rows


def main(argv: list[str] | None = None, *, setup: Setup | Sequence[Setup] | None = None) -> int:
    """Returns the exit code: 0 if every experiment ran (whatever its verdict), 1 if any errored."""
    parser = argparse.ArgumentParser(prog="python experiments/run_all.py",
                                     description="Run the tokjax paper experiments and write RESULTS.md.")
    parser.add_argument("--quick", action="store_true", help="small CPU versions (minutes each)")
    parser.add_argument("--only", metavar="IDS", help="comma-separated paper ids, e.g. P29,P44")
    parser.add_argument("--results", metavar="PATH", default=None,
                        help=f"results file (default: {RESULTS_PATH.relative_to(ROOT)}, "
                             f"{results_file(True).relative_to(ROOT)} with --quick)")
    parser.add_argument("--dry-run", action="store_true", help="list what would run, run nothing")
    parser.add_argument("-q", "--no-progress", action="store_true", help="no per-experiment lines")
    args = parser.parse_args(argv)
    try:  # validate the selection here so a bad id is a usage error, not a traceback
        ids = parse_only(args.only)
        experiments = discover(ids)
    except ValueError as exc:
        parser.error(str(exc))  # exits 2 with the message
    if args.dry_run:
        if not experiments:
            print(f"no implemented methods yet; {catalog.summary()['planned']} planned"
                  if ids is None else "nothing selected to run")
        for exp in experiments:
            print(f"{exp.pid} {exp.module}")
        return 0
    rows = run_all(quick=args.quick, only=ids, progress=not args.no_progress,
                   setup=setup, results_path=args.results)
    if args.no_progress:
        if not experiments:
            print(f"no implemented methods yet; {catalog.summary()['planned']} planned")
        print(format_rows(rows))
    return 1 if any(r.verdict == "error" for r in rows) else 0


if __name__ == "__main__":
    raise SystemExit(main())
