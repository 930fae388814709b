"""Shared plumbing for the per-paper experiments: the result row and RESULTS.md.

Convention for an experiment ``experiments/pNN_name.py`` (the catalog entry's
``experiment`` path)::

    import sys
    from pathlib import Path

    if __package__ in (None, ""):  # run as `python experiments/pNN_name.py`
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

    from experiments._harness import Row, figure_path, run_cli

    def run(quick: bool) -> list[Row]:
        ...  # quick=True: a CPU-minutes version of the check
        return [Row(pid="P29", claim_id="memory", claim=..., setting=..., baseline_name=...,
                    baseline_value=..., method_value=..., metric=..., verdict=RULE.verdict(...)),
                Row(pid="P29", claim_id="speed", ...)]

    if __name__ == "__main__":
        raise SystemExit(run_cli(run))

One row per headline claim of the paper (``claim_id``: a short slug such as ``lossless``,
``tokens-per-call``, ``speed``; the catalog entry lists the same ids with their statuses, and
``tests/test_catalog.py`` ties the two). ``run`` may return one Row or a list of them.

``run_cli`` parses ``--quick``, times ``run``, prints the rows and calls :func:`record`,
which merges them into ``experiments/RESULTS.md`` (the paper's previous rows are replaced as a
set; rows sorted by paper number, other papers' rows kept); ``--quick`` rows go to ``experiments/RESULTS-quick.md``
(same format), so a quick run never overwrites a full run's row. ``experiments/run_all.py``
runs many experiments the same way in one process.

Every experiment declares its verdict rule in its header, before anything runs::

    RULE = Rule(metric="held-out bits per byte", higher_is_better=False, threshold=0.003,
                seeds=(0, 1, 2), reported="kd+gld[logprobs, 0.01], fixed in advance")

and returns ``Row(..., verdict=RULE.verdict(method_per_seed, baseline_per_seed))``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import inspect
import os
import re
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # so `tokjax` imports without an install, as in a fresh clone
    sys.path.insert(0, str(ROOT))

from tokjax import catalog  # noqa: E402

__all__ = [
    "FIGURES_DIR",
    "RESULTS_PATH",
    "RESULTS_QUICK_PATH",
    "ROOT",
    "Row",
    "VERDICTS",
    "as_rows",
    "figure_path",
    "format_rows",
    "load_results",
    "record",
    "render_results",
    "results_file",
    "Rule",
    "Verdict",
    "verdict",
    "train_model",
    "decode",
    "run_cli",
    "write_results",
]

RESULTS_PATH = ROOT / "experiments" / "RESULTS.md"
RESULTS_QUICK_PATH = ROOT / "experiments" / "RESULTS-quick.md"  # --quick rows: never mixed with full runs
FIGURES_DIR = ROOT / "experiments" / "figures"
# "error" is written only by the harness, when an experiment raised instead of returning.
VERDICTS: tuple[str, ...] = ("reproduced", "not-reproduced", "inconclusive", "untested-here", "error")

Value = float | int | str | None


@dataclasses.dataclass(frozen=True)
class Rule:
    """The verdict rule an experiment declares in its header, before anything runs.

    ``threshold``: the smallest per-seed improvement of the method over the baseline, in metric
    units and in the direction of ``higher_is_better``, that counts as reproducing the claim (a
    negative threshold states a non-inferiority claim: "no worse than the baseline by more than
    |threshold|"). ``seeds``: the seeds every arm runs (>= 3 where training noise matters).
    ``reported``: which variant is reported and how it was chosen (fixed in advance, or on a
    validation split; never on the evaluation metric). ``quick_seeds``: the seeds of ``--quick``.
    """

    metric: str
    higher_is_better: bool
    threshold: float
    seeds: tuple = (0,)
    reported: str = "the paper's default configuration, fixed in advance"
    quick_seeds: tuple | None = None

    def __post_init__(self) -> None:
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"Rule.seeds must be distinct seeds, at least one; got {self.seeds!r}")
        if not isinstance(self.threshold, (int, float)) or self.threshold != self.threshold:
            raise ValueError(f"Rule.threshold must be a number, got {self.threshold!r}")

    def run_seeds(self, quick: bool) -> tuple:
        """Returns the seeds to run: ``quick_seeds`` (default the first seed) with --quick, else ``seeds``."""
        if quick:
            return tuple(self.quick_seeds) if self.quick_seeds else tuple(self.seeds[:1])
        return restrict_seeds(self.seeds)

    def verdict(self, method_runs, baseline_runs, *, seeds=None) -> "Verdict":
        """Returns :func:`verdict` of the runs under this rule (``seeds`` default: all declared)."""
        return verdict(method_runs, baseline_runs, higher_is_better=self.higher_is_better,
                       threshold=self.threshold, seeds=self.seeds if seeds is None else seeds)


@dataclasses.dataclass(frozen=True)
class Verdict:
    """The harness's verdict on one claim: the status and the numbers it was computed from."""

    status: str
    threshold: float
    seeds: tuple
    diffs: tuple
    mean_diff: float


def verdict(method_runs, baseline_runs, *, higher_is_better: bool, threshold: float, seeds) -> Verdict:
    """Returns the Verdict of a claim from per-seed metric values of the method and its baseline.

    ``diff_s = (method_s - baseline_s)`` (negated when lower is better), one per seed, paired by
    position. reproduced: every seed's diff exceeds ``threshold``; not-reproduced: no seed's diff
    does; inconclusive: the seeds disagree. A single seed is allowed for deterministic measures
    (token counts, exact equality); training claims should declare >= 3.
    """
    m = [float(x) for x in method_runs]
    b = [float(x) for x in baseline_runs]
    seeds = tuple(seeds)
    if not m or len(m) != len(b) or len(m) != len(seeds):
        raise ValueError(f"verdict needs one method and one baseline value per seed; got {len(m)} method, "
                         f"{len(b)} baseline values for seeds {seeds}")
    if any(x != x for x in m + b):
        raise ValueError(f"verdict got a NaN metric value (method {m}, baseline {b}); fix the run, not the rule")
    sign = 1.0 if higher_is_better else -1.0
    diffs = tuple(sign * (x - y) for x, y in zip(m, b))
    wins = [d > threshold for d in diffs]
    status = "reproduced" if all(wins) else ("not-reproduced" if not any(wins) else "inconclusive")
    return Verdict(status=status, threshold=float(threshold), seeds=seeds, diffs=diffs,
                   mean_diff=sum(diffs) / len(diffs))



_CLAIM_ID_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,31}$")


@dataclasses.dataclass(frozen=True)
class Row:
    """One experiment's outcome for one claim of a paper: the claim, both numbers, and a verdict."""

    pid: str  # paper id; normalised to "P29"
    claim: str  # the paper's claim being checked, in one line
    setting: str  # what was run (model, data, size)
    baseline_name: str  # what the method is compared against
    baseline_value: Value
    method_value: Value
    metric: str  # name and direction, e.g. "peak loss memory MiB (lower is better)"
    verdict: str  # one of VERDICTS
    figure: str | None = None  # path relative to the repository root, or None
    seconds: float = 0.0  # wall time; filled in by the harness
    quick: bool | None = None  # whether --quick was used; filled in by the harness
    note: str = ""  # free text; for verdict "error", the exception message
    threshold: float | None = None  # the declared margin (see Rule); filled from a Verdict
    seeds: tuple = ()  # the declared seeds
    diffs: tuple = ()  # per-seed improvement of the method over the baseline (metric units, + = better)
    claim_id: str = "main"  # which of the paper's claims (the catalog entry's Claim.id)

    def __post_init__(self) -> None:
        object.__setattr__(self, "pid", catalog.canonical_id(self.pid))
        if not isinstance(self.claim_id, str) or not _CLAIM_ID_RE.match(self.claim_id):
            raise ValueError(f"{self.pid}: claim_id must be a short lowercase slug like 'speed' or "
                             f"'tokens-per-call', got {self.claim_id!r}")
        if isinstance(self.verdict, Verdict):
            v = self.verdict
            object.__setattr__(self, "verdict", v.status)
            object.__setattr__(self, "threshold", v.threshold)
            object.__setattr__(self, "seeds", tuple(v.seeds))
            object.__setattr__(self, "diffs", tuple(v.diffs))
        if self.verdict not in VERDICTS:
            raise ValueError(f"{self.pid}: verdict {self.verdict!r} not in {VERDICTS}")
        if self.figure is not None:
            object.__setattr__(self, "figure", _repo_relative(self.figure))

    @property
    def number(self) -> int:
        """Returns the paper number (29 for "P29")."""
        return int(self.pid[1:])

    @property
    def key(self) -> tuple[str, str]:
        """Returns (pid, claim_id), the row's key in RESULTS.md."""
        return (self.pid, self.claim_id)


def _repo_relative(path: str | os.PathLike) -> str:
    """Returns `path` as a POSIX path relative to the repository root when it lies inside it."""
    p = Path(path)
    if p.is_absolute():
        with contextlib.suppress(ValueError):
            p = p.resolve().relative_to(ROOT)
    return p.as_posix()


_QUICK_RUN = False  # set by run_cli / run_all while a --quick run is in progress
# Set by run_cli --seeds: a full run restricted to these seeds, to fill an experiment's memo caches in a
# second process (or machine); it never records a row, and its figures go to a scratch folder.
_SEEDS_RUN: frozenset | None = None


@contextlib.contextmanager
def _run_mode(quick: bool, seeds: frozenset | None = None) -> Iterator[None]:
    """Yields with figure_path pointing at the quick figures while a --quick run is in progress (and the
    seed restriction of a --seeds run in place)."""
    global _QUICK_RUN, _SEEDS_RUN
    before = (_QUICK_RUN, _SEEDS_RUN)
    _QUICK_RUN, _SEEDS_RUN = bool(quick), seeds
    try:
        yield
    finally:
        _QUICK_RUN, _SEEDS_RUN = before


def restrict_seeds(seeds) -> tuple:
    """Returns ``seeds`` (full-mode seeds of an experiment that does not declare them through a :class:`Rule`),
    kept to those of a ``--seeds`` run while one is in progress."""
    if _SEEDS_RUN is not None and not _QUICK_RUN:
        return tuple(s for s in seeds if s in _SEEDS_RUN)
    return tuple(seeds)


def partial_seeds_run() -> bool:
    """Returns whether a ``--seeds`` run (filling memo caches beside a main run) is in progress: an experiment
    with cached units may then walk them in reverse, so the two processes meet in the middle."""
    return _SEEDS_RUN is not None and not _QUICK_RUN


def figure_path(pid: str | int, name: str) -> Path:
    """Returns experiments/figures/pNN_<name> (absolute), creating the folder; under
    experiments/figures/quick/ during a --quick run, so a quick run never replaces a full run's figure."""
    number = int(catalog.canonical_id(pid)[1:])
    folder = FIGURES_DIR / "quick" if _QUICK_RUN else FIGURES_DIR
    if _SEEDS_RUN is not None and not _QUICK_RUN:
        folder = Path(tempfile.gettempdir()) / "tokjax-seeds-run-figures"
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"p{number:02d}_{name}"


def save_figure(fig, pid: str | int, name: str, *, dpi: int = 120) -> Path:
    """Lays out, saves and closes a matplotlib figure at :func:`figure_path` ``(pid, name)``; returns the path."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    path = figure_path(pid, name)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path


def results_file(quick: bool) -> Path:
    """Returns the results file a run records into: RESULTS-quick.md for --quick, else RESULTS.md."""
    return RESULTS_QUICK_PATH if quick else RESULTS_PATH



# ---------------------------------------------------------------------------------------
# Training and decoding helpers: every experiment trains through tokjax.train and decodes
# through tokjax.generate (no private optimiser loops, no uncached decode loops).

def train_model(model_cfg, *, steps: int, batch_fn, loss_fn=None, params=None, lr: float = 3e-3,
                warmup_steps: int | None = None, weight_decay: float = 0.0, grad_clip: float | None = 1.0,
                seed: int = 0, trainable=None, batch_size: int | None = None, seq_len: int | None = None,
                workdir=None, callback=None, **train_options):
    """Returns what ``tokjax.train.train`` returns ((Model, history), or (params, history) with
    ``model_cfg=None``) after ``steps`` optimiser steps.

    ``batch_fn``: ``batch_fn(step) -> dict`` of arrays (a pure function of the step), or int token
    windows [N, T+1], from which ``train`` draws ``batch_size`` windows per step in an order fixed
    by ``seed``. ``loss_fn``: a train loss ``(params, cfg, batch, rng) -> (loss, metrics)``
    (default: the stats-based next-token loss). With a ``batch_fn``, ``batch_size``/``seq_len``
    only label throughput. ``callback(step, state, metrics)`` runs after every step (evaluation
    curves). Other TrainConfig fields (``b2``, ``min_lr_ratio``, ``log_every``, ...) pass through
    ``train_options``.
    """
    import numpy as np

    from tokjax.train import TrainConfig, train

    warmup = min(steps // 10, 100) if warmup_steps is None else warmup_steps
    if callable(batch_fn):
        probe = batch_fn(0)
        if not isinstance(probe, dict):
            raise TypeError(f"batch_fn(step) must return a dict of arrays, got {type(probe).__name__}")
        first = next(iter(probe.values()))
        B = batch_size or int(first.shape[0])
        T = seq_len or (int(first.shape[1]) - 1 if getattr(first, "ndim", 0) == 2 and first.shape[1] > 1 else 1)
    else:
        batch_fn = np.asarray(batch_fn)
        if batch_fn.ndim != 2 or batch_fn.shape[1] < 2 or not np.issubdtype(batch_fn.dtype, np.integer):
            raise ValueError(f"batch_fn must be a function of the step or int windows [N, T+1], got "
                             f"{batch_fn.dtype} {batch_fn.shape}")
        if batch_size is None:
            raise ValueError("training on token windows needs batch_size")
        B, T = batch_size, batch_fn.shape[1] - 1
    options = dict(lr=lr, warmup_steps=warmup, total_steps=steps, weight_decay=weight_decay, grad_clip=grad_clip,
                   batch_size=B, seq_len=T, seed=seed, eval_every=0, checkpoint_every=0, log_every=max(steps // 10, 1))
    if trainable is not None:
        options["trainable"] = tuple(trainable)
    options.update(train_options)
    return train(model_cfg, TrainConfig(**options), batch_fn, loss_fn=loss_fn, params=params,
                 workdir=workdir, progress=False, callback=callback)


def decode(model, prompts, *, max_new_tokens: int, key=None, logits=None, strategy=None, eos_id=None, **kwargs):
    """Returns ``tokjax.generate``'s GenerateOutput (greedy when neither ``key`` nor ``logits`` is given)."""
    import tokjax

    if key is None and logits is None:
        logits = tokjax.logits.greedy()
    return tokjax.generate(model, prompts, key=key, max_new_tokens=max_new_tokens, logits=logits,
                           strategy=strategy, eos_id=eos_id, **kwargs)

# ---------------------------------------------------------------------------------------
# RESULTS.md: a markdown table that is also the storage format (parsed back by
# load_results), so a result is never lost when another experiment records its own.

_COLUMNS = ("paper", "claim id", "claim", "setting", "metric", "baseline", "baseline value",
            "method value", "verdict", "threshold", "seeds", "per-seed diff", "mode", "seconds", "figure", "note")
# Headers written before the rule columns and before per-claim rows still load (claim id "main").
_PER_PAPER_COLUMNS = tuple(c for c in _COLUMNS if c != "claim id")
_OLD_COLUMNS = tuple(c for c in _PER_PAPER_COLUMNS if c not in ("threshold", "seeds", "per-seed diff"))
_HEADER = (
    "# Experiment results\n"
    "\n"
    "<!-- generated by experiments/_harness.py (record / run_all.py); do not edit by hand -->\n"
    "\n"
    "One row per headline claim of a paper (`claim id`, the id its catalog entry uses): the latest\n"
    "run of `experiments/pNN_*.py`. `mode` says whether it was the\n"
    "`--quick` CPU version. `verdict` is computed by the harness from the rule each experiment\n"
    "declares in its header before running: `threshold` (the smallest per-seed improvement over\n"
    "the baseline, in metric units, that counts; negative = a non-inferiority margin), `seeds`, and\n"
    "`per-seed diff` (method minus baseline, signed so + is better): reproduced when every seed\n"
    "clears the threshold, not-reproduced when none does, inconclusive when they disagree. Rows\n"
    "with empty rule columns predate the declared rules. Full runs are recorded in RESULTS.md,\n"
    "`--quick` runs in RESULTS-quick.md (same format). Regenerate with\n"
    "`python experiments/run_all.py [--quick]`.\n"
)


def _fmt_value(v: Value) -> str:
    """Returns a table cell for a number or string; 4 significant digits for floats."""
    if v is None:
        return ""
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _escape(text: str) -> str:
    # Backslash-escape the table delimiter (and backslash itself) so cells parse back
    # exactly; newlines would end the row, so they become spaces.
    text = " ".join(str(text).splitlines())
    return text.replace("\\", "\\\\").replace("|", "\\|")


def _split_cells(line: str) -> list[str]:
    """Returns the unescaped cells of one markdown table line."""
    body = line.strip()
    if not (body.startswith("|") and body.endswith("|") and len(body) >= 2):
        raise ValueError(f"not a table row: {line!r}")
    cells, cur, i = [], [], 1
    while i < len(body):
        ch = body[i]
        if ch == "\\" and i + 1 < len(body):
            cur.append(body[i + 1])
            i += 2
            continue
        if ch == "|":
            cells.append("".join(cur).strip())
            cur = []
        else:
            cur.append(ch)
        i += 1
    return cells


def _figure_cell(figure: str | None, results_dir: Path) -> str:
    """Returns a markdown link to the figure, relative to the folder RESULTS.md is in."""
    if not figure:
        return ""
    rel = os.path.relpath(ROOT / figure, results_dir)
    return f"[{_escape(Path(figure).name)}]({Path(rel).as_posix()})"


def _parse_figure(cell: str, results_dir: Path) -> str | None:
    """Returns the repo-relative figure path encoded by _figure_cell, or None."""
    if not cell:
        return None
    if "](" in cell and cell.endswith(")"):
        target = cell[cell.index("](") + 2: -1]
        return _repo_relative((results_dir / target).resolve())
    return cell


def format_rows(rows: Iterable[Row], results_dir: Path | None = None) -> str:
    """Returns the rows as a markdown table (header only when there are none)."""
    results_dir = RESULTS_PATH.parent if results_dir is None else results_dir
    lines = ["| " + " | ".join(_COLUMNS) + " |", "|" + "---|" * len(_COLUMNS)]
    for r in sorted(rows, key=lambda r: r.number):  # stable: a paper's claims keep their order
        mode = "" if r.quick is None else ("quick" if r.quick else "full")
        cells = [r.pid, r.claim_id, _escape(r.claim), _escape(r.setting), _escape(r.metric),
                 _escape(r.baseline_name), _escape(_fmt_value(r.baseline_value)),
                 _escape(_fmt_value(r.method_value)), r.verdict, _fmt_value(r.threshold),
                 " ".join(str(x) for x in r.seeds), " ".join(f"{d:+.4g}" for d in r.diffs), mode, f"{r.seconds:.1f}",
                 _figure_cell(r.figure, results_dir), _escape(r.note)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def render_results(rows: Iterable[Row], results_dir: Path | None = None) -> str:
    """Returns the full text of RESULTS.md for these rows (one per claim)."""
    rows = list(rows)
    counts = {v: sum(r.verdict == v for r in rows) for v in VERDICTS}
    tally = ", ".join(f"{n} {v}" for v, n in counts.items())
    papers = len({r.pid for r in rows})
    body = (f"{len(rows)} claims of {papers} papers with results: {tally}.\n" if rows
            else "No results recorded yet.\n")
    return _HEADER + "\n" + body + "\n" + format_rows(rows, results_dir) + "\n"


def load_results(path: str | os.PathLike | None = None) -> dict[tuple[str, str], Row]:
    """Returns {(pid, claim_id): Row} parsed from RESULTS.md ({} if the file does not exist).

    Values come back as the strings shown in the table (floats were rounded when written),
    which is all that is needed to re-render them unchanged.
    """
    path = RESULTS_PATH if path is None else Path(path)
    if not path.is_file():
        return {}
    rows: dict[tuple[str, str], Row] = {}
    header_seen = False
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.lstrip().startswith("|"):
            continue
        cells = _split_cells(line)
        if not header_seen:
            if tuple(cells) not in (_COLUMNS, _PER_PAPER_COLUMNS, _OLD_COLUMNS):
                raise ValueError(f"{path}: unexpected table header {cells}; expected {list(_COLUMNS)}")
            columns = tuple(cells)  # rows written before the verdict columns existed still load
            header_seen = True
            continue
        if all(set(c) <= set("-: ") for c in cells):
            continue  # the |---| separator line
        if len(cells) != len(columns):
            raise ValueError(f"{path}: row has {len(cells)} cells, expected {len(columns)}: {line!r}")
        c = dict(zip(columns, cells))
        row = Row(
            pid=c["paper"], claim=c["claim"], setting=c["setting"], metric=c["metric"],
            baseline_name=c["baseline"], baseline_value=c["baseline value"] or None,
            method_value=c["method value"] or None, verdict=c["verdict"],
            quick={"quick": True, "full": False}.get(c["mode"]),
            seconds=float(c["seconds"]) if c["seconds"] else 0.0,
            figure=_parse_figure(c["figure"], path.parent), note=c["note"],
            threshold=float(c["threshold"]) if c.get("threshold") else None,
            seeds=tuple(int(x) for x in c.get("seeds", "").split()),
            diffs=tuple(float(x) for x in c.get("per-seed diff", "").split()),
            claim_id=c.get("claim id", "main"),
        )
        if row.key in rows:
            raise ValueError(f"{path}: two rows for {row.pid} claim {row.claim_id!r}")
        rows[row.key] = row
    return rows


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    """Yields while holding an exclusive lock on `directory` (no-op where flock is missing)."""
    # Read-merge-write must be serialised or two experiments finishing together lose a row.
    # The file itself cannot carry the lock (os.replace swaps its inode), so lock the folder.
    try:
        import fcntl
    except ImportError:  # Windows: no lock; runs there are sequential in practice
        yield
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def _atomic_write(path: Path, text: str) -> None:
    """Returns None after replacing `path` with `text` via a temp file + os.replace."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_results(rows: Iterable[Row] = (), path: str | os.PathLike | None = None, *,
                  claims_only: bool = False) -> dict[tuple[str, str], Row]:
    """Returns the merged {(pid, claim_id): Row} after writing RESULTS.md with `rows` in it.

    The given rows replace every row of their papers (an experiment's run is the paper's whole
    set of claims, so a claim id it no longer reports disappears); with ``claims_only`` (a run of
    some claims, ``--only``) they replace just the rows with their own (paper, claim id). A run that raised
    (only verdict-"error" rows) keeps the paper's earlier rows next to its error row; rows of other papers already
    in the file are kept. With no rows the file is just (re)normalised, or created empty.
    Idempotent: the same rows give the same bytes.
    """
    path = RESULTS_PATH if path is None else Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = list(rows)
    keys = [r.key for r in rows]
    if len(set(keys)) != len(keys):
        raise ValueError(f"two rows with the same (paper, claim id): {sorted(k for k in keys if keys.count(k) > 1)}")
    with _locked(path.parent):
        merged = load_results(path)
        pids = {r.pid for r in rows}
        for pid in pids:
            if any(r.quick for r in rows if r.pid == pid) and any(
                    old.quick is False for old in merged.values() if old.pid == pid):
                # A CPU-minutes run must never erase a full run's result; quick rows have their own file.
                raise ValueError(f"{path}: refusing to replace the full-run rows of {pid} with --quick rows; "
                                 f"record quick runs in {RESULTS_QUICK_PATH.name} (results_file(quick=True))")
        # A run that raised replaces nothing: its error row joins the paper's last results.
        replaced = {pid for pid in pids if any(r.verdict != "error" for r in rows if r.pid == pid)}
        if not claims_only:
            merged = {k: r for k, r in merged.items() if r.pid not in replaced}
        for r in rows:
            merged[r.key] = r
        text = render_results(merged.values(), path.parent)
        if not path.is_file() or path.read_text(encoding="utf-8") != text:
            _atomic_write(path, text)
    return merged


def as_rows(result) -> list[Row]:
    """Returns an experiment's result (one Row or a non-empty list of Rows of one paper) as a list."""
    rows = [result] if isinstance(result, Row) else list(result) if isinstance(result, (list, tuple)) else None
    if not rows or not all(isinstance(r, Row) for r in rows):
        raise TypeError(f"an experiment returns a Row or a non-empty list of Rows, got {result!r:.200}")
    if len({r.pid for r in rows}) != 1:
        raise ValueError(f"an experiment's rows must all be of one paper, got {sorted({r.pid for r in rows})}")
    return rows


def record(rows: Row | list[Row], path: str | os.PathLike | None = None, *, claims_only: bool = False) -> None:
    """Returns None after merging one paper's rows into RESULTS.md (keeping every other paper's rows;
    with ``claims_only`` also the paper's rows for other claims)."""
    write_results(as_rows(rows), path, claims_only=claims_only)


def run_cli(run: Callable[[bool], Row], argv: list[str] | None = None, *,
            results_path: str | os.PathLike | None = None) -> int:
    """Returns 0 after running one experiment from the command line and recording its row.

    Parses ``--quick`` (and ``--no-record`` to only print), times ``run(quick)``, fills in
    ``seconds`` and ``quick``, prints the row as a table and records it in RESULTS.md (full
    runs) or RESULTS-quick.md (``--quick``), unless ``results_path`` names the file.
    ``--seeds 1,2`` runs full mode over only those declared seeds and records nothing (to fill
    memo caches in parallel processes). ``--only a,b`` re-runs some claims: ``run`` must take ``only=`` (a frozenset of claim ids) and
    return rows of exactly those claims, which replace just those rows (the paper's other claims
    keep their recorded rows).
    """
    parser = argparse.ArgumentParser(description="Run one tokjax paper experiment.")
    parser.add_argument("--quick", action="store_true", help="small CPU version (minutes)")
    parser.add_argument("--no-record", action="store_true", help="print only; leave the results files alone")
    parser.add_argument("--only", metavar="CLAIMS", help="comma-separated claim ids to re-run (the others keep their rows)")
    parser.add_argument("--seeds", metavar="SEEDS",
                        help="full mode, only these of the declared seeds (e.g. 1,2), to fill the memo caches in a "
                             "second process; never recorded: a later run over all seeds reads the caches")
    args = parser.parse_args(argv)
    seeds_run = None
    if args.seeds is not None:
        if args.quick:
            parser.error("--seeds restricts a full run; --quick runs its declared quick seeds")
        try:
            seeds_run = frozenset(int(x) for x in args.seeds.split(",") if x.strip())
        except ValueError:
            parser.error(f"--seeds takes comma-separated integers, got {args.seeds!r}")
        if not seeds_run:
            parser.error("--seeds needs at least one seed")
        args.no_record = True
    only = None
    if args.only is not None:
        only = frozenset(c.strip() for c in args.only.split(",") if c.strip())
        if not only:
            parser.error("--only needs at least one claim id, e.g. --only speed,lossless")
        if "only" not in inspect.signature(run).parameters:
            parser.error("this experiment cannot re-run single claims (its run() takes no `only=`)")
    t0 = time.perf_counter()
    with _run_mode(args.quick, seeds_run):
        rows = as_rows(run(args.quick) if only is None else run(args.quick, only=only))
    if only is not None and {r.claim_id for r in rows} != only:
        raise ValueError(f"--only {','.join(sorted(only))}: the run returned claims "
                         f"{sorted(r.claim_id for r in rows)}")
    seconds = time.perf_counter() - t0
    rows = [dataclasses.replace(r, seconds=seconds, quick=args.quick) for r in rows]
    print(format_rows(rows))
    if seeds_run is not None:
        print(f"not recorded: a --seeds run (seeds {sorted(seeds_run)}) only fills the memo caches")
    if not args.no_record:
        path = results_file(args.quick) if results_path is None else Path(results_path)
        record(rows, path, claims_only=only is not None)
        print(f"recorded {rows[0].pid} ({', '.join(r.claim_id for r in rows)}) in {path}")
    return 0
