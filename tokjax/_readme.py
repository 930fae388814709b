"""Generates the README's method table from the catalog.

The README holds the table between two markers::

    <!-- catalog:start -->
    ...generated, do not edit...
    <!-- catalog:end -->

``python -m tokjax._readme`` rewrites that region; ``python -m tokjax._readme --check``
exits 1 if it is stale (``tests/test_catalog.py`` runs the same check). Code and
experiment links appear only for entries that are not ``planned``, so the README never
links to a file that does not exist.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from tokjax import catalog

__all__ = ["START", "END", "render_method_table", "update_readme", "main"]

START = "<!-- catalog:start -->"
END = "<!-- catalog:end -->"
_ROOT = Path(__file__).resolve().parents[1]
_GENERATED_NOTE = "<!-- generated from tokjax/catalog.py by `python -m tokjax._readme`; do not edit -->"


def _status_line(counts: dict[str, int]) -> str:
    """Returns one sentence summarising how many papers are at each status."""
    total = sum(counts.values())
    parts = [f"{counts[s]} {s}" for s in catalog.STATUSES]
    return f"{total} papers: " + ", ".join(parts) + "."


def render_method_table() -> str:
    """Returns the README's method table (markdown, preceded by a status summary line).

    Columns: id, paper, family, status (the summary of the paper's claims), its claims with
    their verdicts (linked to their rows in experiments/RESULTS.md), and links to the module and
    experiment. Links are given only for entries that are not planned; planned entries show a dash.
    """
    items = catalog.entries()
    counts = {s: sum(e.status == s for e in items) for s in catalog.STATUSES}
    lines = [
        _GENERATED_NOTE,
        "",
        _status_line(counts),
        "",
        "| id | paper | family | status | claims ([rows](experiments/RESULTS.md)) | code |",
        "|---|---|---|---|---|---|",
    ]
    for e in items:
        if e.status == "planned":
            code = "—"
        else:
            code = f"[`{e.module}`]({e.module_path}) · [experiment]({e.experiment})"
        claims = "; ".join(f"{c.id}: {c.status}" for c in e.claims) or "—"
        lines.append(f"| {e.pid} | {catalog._md_escape(e.title)} | {e.family} | {e.status} | {claims} | {code} |")
    return "\n".join(lines)


def _split(text: str, path: Path) -> tuple[str, str, str]:
    """Returns (before, inside, after) around the catalog markers; ValueError if absent."""
    start = text.find(START)
    end = text.find(END)
    if start < 0 or end < 0 or end < start:
        raise ValueError(f"{path} has no '{START}' ... '{END}' markers (in that order); "
                         "add them where the method table should go")
    if text.find(START, start + 1) >= 0 or text.find(END, end + 1) >= 0:
        raise ValueError(f"{path} has more than one pair of catalog markers")
    inside_from = start + len(START)
    return text[:inside_from], text[inside_from:end], text[end:]


def has_markers(path: str | os.PathLike | None = None) -> bool:
    """Returns whether the README exists and contains both catalog markers."""
    path = _ROOT / "README.md" if path is None else Path(path)
    if not path.is_file():
        return False
    text = path.read_text(encoding="utf-8")
    return START in text and END in text


def update_readme(path: str | os.PathLike | None = None, check: bool = False) -> bool:
    """Returns whether the README's method table was already up to date.

    `path` defaults to the repository's README.md. With ``check=True`` nothing is written;
    otherwise a stale table is replaced (atomically) between the markers. Raises
    ValueError if the markers are missing and FileNotFoundError if the file is.
    """
    path = _ROOT / "README.md" if path is None else Path(path)
    text = path.read_text(encoding="utf-8")
    before, inside, after = _split(text, path)
    # Blank lines around the table keep markdown from gluing it to the marker comments.
    wanted = "\n" + render_method_table() + "\n"
    if inside == wanted:
        return True
    if not check:
        _atomic_write(path, before + wanted + after)
    return False


def _atomic_write(path: Path, text: str) -> None:
    """Returns None after replacing `path` with `text` via a temp file + os.replace."""
    # A crash mid-write must never leave a truncated README behind.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            f.write(text)
        if path.exists():
            os.chmod(tmp, path.stat().st_mode & 0o777)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def main(argv: list[str] | None = None) -> int:
    """Returns an exit code: 0 if the README is (now) up to date, 1 if --check found it stale."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m tokjax._readme",
                                     description="Regenerate the README method table from the catalog.")
    parser.add_argument("path", nargs="?", default=None, help="README path (default: repo README.md)")
    parser.add_argument("--check", action="store_true", help="only report whether it is stale")
    args = parser.parse_args(argv)
    try:
        fresh = update_readme(args.path, check=args.check)
    except (ValueError, FileNotFoundError) as exc:
        parser.exit(2, f"error: {exc}\n")
    target = args.path or str(_ROOT / "README.md")
    if fresh:
        print(f"{target}: method table up to date")
        return 0
    if args.check:
        print(f"{target}: method table is stale; run `python -m tokjax._readme`")
        return 1
    print(f"{target}: method table rewritten")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
