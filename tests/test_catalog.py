"""Tests for tokjax.catalog and the README table generated from it.

The catalog is the project's claim about itself, so besides shape checks these tests
verify that every non-planned entry points at code, names, a test and an experiment that
really exist, that reproduced/not-reproduced claims match experiments/RESULTS.md, and
that the README's method table is regenerated whenever the catalog changes.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `experiments` is not installed; import it from the checkout
    sys.path.insert(0, str(ROOT))

from tokjax import _readme, catalog  # noqa: E402

# ---------------------------------------------------------------- completeness and shape


def test_has_one_entry_per_paper_in_order():
    es = catalog.entries()
    assert len(es) == 78
    assert [e.pid for e in es] == [f"P{i}" for i in range(1, 79)]
    assert all(e.title.strip() and e.title == e.title.strip() for e in es)
    assert len({e.title for e in es}) == 78


def test_titles_are_the_papers_exact_titles():
    # Spot checks against papers/ABSTRACTS.md, including the ones with markdown specials.
    assert catalog.get(29).title == "Cut Your Losses in Large-Vocabulary Language Models"
    assert catalog.get(44).title == "Kangaroo: Lossless Self-Speculative Decoding via Double Early Exiting"
    assert catalog.get(65).title == "From r to Q^*: Your Language Model is Secretly a Q-Function"
    assert catalog.get(66).title.startswith("Future Token Prediction -- Causal")
    assert catalog.get(78).title == "Prioritizing Image-Related Tokens Enhances Vision-Language Pre-Training"


def test_fields_are_well_formed():
    for e in catalog.entries():
        assert e.status in catalog.STATUSES
        assert e.family in catalog.FAMILIES
        assert e.module.startswith("tokjax.") and e.names
        assert e.test.startswith("tests/") and e.test.endswith(".py")
        assert e.experiment.startswith(f"experiments/p{e.number:02d}_")
        assert e.experiment_module == e.experiment[:-3].replace("/", ".")
        assert e.module_path == e.module.replace(".", "/") + ".py"


def test_paths_already_named_in_the_issue_tracker():
    expected = {
        16: "experiments/p16_skipdecode.py", 22: "experiments/p22_stand.py",
        23: "experiments/p23_spectr.py", 44: "experiments/p44_kangaroo.py",
        45: "experiments/p45_token_recycling.py", 59: "experiments/p59_s2d.py",
        29: "experiments/p29_cut_cross_entropy.py",
    }
    for n, path in expected.items():
        assert catalog.get(n).experiment == path
    assert catalog.get(44).module == "tokjax.decoding.kangaroo"
    assert catalog.get(29).module == "tokjax.losses.cut_cross_entropy"


def test_entry_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        catalog.get(1).status = "reproduced"  # type: ignore[misc]


# ---------------------------------------------------------------- lookup


@pytest.mark.parametrize("key", ["P29", "p29", 29, "29", " P29 "])
def test_get_accepts_id_spellings(key):
    assert catalog.get(key).pid == "P29"


@pytest.mark.parametrize("key", ["P0", "P79", 0, 79, -1, "", "x", "P29a", "PP29", "P 29"])
def test_get_rejects_unknown_ids(key):
    with pytest.raises(ValueError, match="unknown paper id"):
        catalog.get(key)


@pytest.mark.parametrize("key", [True, 29.0, None, ("P29",)])
def test_get_rejects_non_ids(key):
    with pytest.raises(TypeError):
        catalog.get(key)


def test_by_status_and_summary_agree():
    counts = catalog.summary()
    assert list(counts) == list(catalog.STATUSES)
    assert sum(counts.values()) == 78
    for s in catalog.STATUSES:
        assert len(catalog.by_status(s)) == counts[s]
        assert all(e.status == s for e in catalog.by_status(s))
    with pytest.raises(ValueError):
        catalog.by_status("done")


def test_by_family_partitions_the_catalog():
    assert sum(len(catalog.by_family(f)) for f in catalog.FAMILIES) == 78
    with pytest.raises(ValueError):
        catalog.by_family("misc")


def test_format_table():
    md = catalog.format_table(catalog.entries())
    lines = md.splitlines()
    assert len(lines) == 2 + 78 and lines[0].startswith("| id | paper |")
    assert r"Q^\*" in md  # escaped so markdown renders the title literally
    plain = catalog.format_table(catalog.by_family("metrics"), markdown=False).splitlines()
    assert plain[0].split() == ["id", "paper", "family", "status", "module"]
    assert "P75" in plain[2] and "|" not in plain[2]
    assert catalog.format_table([]).count("\n") == 1


def test_validate_rejects_malformed_catalogs():
    es = list(catalog.entries())
    catalog._validate(es)
    with pytest.raises(ValueError, match="missing ids"):
        catalog._validate(es[:-1])
    with pytest.raises(ValueError, match="duplicate"):
        catalog._validate(es + [es[0]])
    with pytest.raises(ValueError, match="status"):
        catalog._validate(es[:-1] + [dataclasses.replace(es[-1], status="done")])
    with pytest.raises(ValueError, match="family"):
        catalog._validate(es[:-1] + [dataclasses.replace(es[-1], family="misc")])
    with pytest.raises(ValueError, match="experiment"):
        catalog._validate(es[:-1] + [dataclasses.replace(es[-1], experiment="experiments/p77_x.py")])


# ---------------------------------------------------------------- claims are true


def test_every_non_planned_entry_exists():
    """Every claimed method imports, exposes its names, and has its test and experiment."""
    problems = [p for e in catalog.entries() for p in catalog.verify(e, ROOT)]
    assert not problems, "catalog claims more than exists:\n" + "\n".join(problems)


def test_verify_catches_false_claims():
    real = catalog.Entry(pid="P29", title="t", family="losses", module="tokjax.catalog",
                         names=("entries", "get"), test="tests/test_catalog.py",
                         experiment="experiments/run_all.py", status="implemented")
    assert catalog.verify(real, ROOT) == []
    assert catalog.verify(dataclasses.replace(real, status="planned", module="tokjax.nope"), ROOT) == []
    bad_names = catalog.verify(dataclasses.replace(real, names=("entries", "nope")), ROOT)
    assert len(bad_names) == 1 and "nope" in bad_names[0]
    bad_module = catalog.verify(dataclasses.replace(real, module="tokjax.does_not_exist"), ROOT)
    assert len(bad_module) == 1 and "does not import" in bad_module[0]
    bad_files = catalog.verify(dataclasses.replace(
        real, test="tests/nope.py", experiment="experiments/p29_nope.py"), ROOT)
    assert len(bad_files) == 2


def test_every_claim_is_tied_to_its_full_run_row():
    """Each claim's status is the verdict of its (paper, claim id) row in RESULTS.md, and every
    full-run row is a claim of its paper's catalog entry (no orphan or stale rows)."""
    from experiments._harness import load_results

    results = load_results()
    wrong = []
    for e in catalog.entries():
        for c in e.claims:
            row = results.get((e.pid, c.id))
            if row is None:
                if c.status != "untested-here":  # an untested claim may have no row; its reason says why
                    wrong.append(f"{e.pid}/{c.id}: catalog says {c.status}, RESULTS.md has no row")
            elif row.verdict != c.status or row.quick is not False:
                wrong.append(f"{e.pid}/{c.id}: catalog says {c.status}, RESULTS.md says {row.verdict}"
                             f" ({'quick' if row.quick else 'full'} run)")
    claimed = {(e.pid, c.id) for e in catalog.entries() for c in e.claims}
    wrong += [f"{pid}/{cid}: row in RESULTS.md ({r.verdict}) but no such claim in the catalog"
              for (pid, cid), r in results.items() if (pid, cid) not in claimed and r.verdict != "error"]
    assert not wrong, "\n".join(wrong)


def test_paper_status_summarises_its_claims():
    c = catalog.Claim
    rep, nrep = c("a", "t", "reproduced"), c("b", "t", "not-reproduced", "r")
    inc, unt = c("c", "t", "inconclusive", "r"), c("d", "t", "untested-here", "no GPU")
    assert catalog.paper_status([rep]) == "reproduced"
    assert catalog.paper_status([rep, unt]) == "partial" and catalog.paper_status([rep, nrep]) == "partial"
    assert catalog.paper_status([nrep, inc, unt]) == "not-reproduced"
    assert catalog.paper_status([inc, unt]) == "inconclusive" and catalog.paper_status([unt]) == "untested-here"
    with pytest.raises(ValueError):
        catalog.paper_status([])
    for e in catalog.entries():
        assert (e.status == catalog.paper_status(e.claims)) if e.claims else e.status in ("planned", "implemented")


def test_bad_claims_are_rejected():
    es = list(catalog.entries())
    base = next(e for e in es if e.claims)
    i = es.index(base)
    cases = {
        "needs a reason": [catalog.Claim("x", "t", "not-reproduced")],
        "duplicate claim ids": [catalog.Claim("x", "t", "reproduced"), catalog.Claim("x", "u", "reproduced")],
        "claim status": [catalog.Claim("x", "t", "maybe", "r")],
        "slug": [catalog.Claim("Speed Up", "t", "reproduced")],
    }
    for match, claims in cases.items():
        bad = dataclasses.replace(base, claims=tuple(claims), status="reproduced")
        with pytest.raises(ValueError, match=match):
            catalog._validate(es[:i] + [bad] + es[i + 1:])
    with pytest.raises(ValueError, match="summarise"):
        catalog._validate(es[:i] + [dataclasses.replace(base, claims=(catalog.Claim("x", "t", "reproduced"),),
                                                        status="not-reproduced")] + es[i + 1:])
    with pytest.raises(ValueError, match="needs claims"):
        catalog._validate(es[:i] + [dataclasses.replace(base, claims=())] + es[i + 1:])


# ---------------------------------------------------------------- README table


def test_method_table_links_only_what_exists(monkeypatch):
    table = _readme.render_method_table()
    rows = [line for line in table.splitlines() if line.startswith("| P")]
    assert len(rows) == 78
    planned = [r for r in rows if "| planned |" in r]
    assert all(r.endswith("| — |") for r in planned)

    es = list(catalog.entries())
    es[28] = dataclasses.replace(es[28], status="implemented")
    monkeypatch.setattr(catalog, "entries", lambda: tuple(es))
    table = _readme.render_method_table()
    p29 = next(line for line in table.splitlines() if line.startswith("| P29 |"))
    assert "(tokjax/losses/cut_cross_entropy.py)" in p29
    assert "(experiments/p29_cut_cross_entropy.py)" in p29
    n_planned = sum(e.status == "planned" for e in es)
    n_impl = sum(e.status == "implemented" for e in es)
    assert f"{n_planned} planned, {n_impl} implemented" in table


def test_update_readme_rewrites_only_between_markers(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\nintro\n\n{_readme.START}\nold table\n{_readme.END}\n\nrest\n")
    assert _readme.update_readme(readme, check=True) is False
    assert "old table" in readme.read_text()  # check mode never writes
    assert _readme.update_readme(readme) is False
    text = readme.read_text()
    assert text.startswith("# x\n\nintro\n\n") and text.endswith(f"{_readme.END}\n\nrest\n")
    assert "old table" not in text and "| P78 |" in text
    assert _readme.update_readme(readme, check=True) is True
    assert _readme.update_readme(readme) is True and readme.read_text() == text
    assert _readme.main([str(readme), "--check"]) == 0

    readme.write_text("# no markers\n")
    with pytest.raises(ValueError, match="markers"):
        _readme.update_readme(readme, check=True)


def test_readme_method_table_is_up_to_date():
    readme = ROOT / "README.md"
    if not _readme.has_markers(readme):
        pytest.skip(f"{readme} has no '{_readme.START}' ... '{_readme.END}' markers yet; "
                    "add them to enable the README staleness check")
    assert _readme.update_readme(readme, check=True), (
        "README.md method table is stale; run `python -m tokjax._readme`")


# ---------------------------------------------------------------- notes quote recorded numbers

_DECIMAL = __import__("re").compile(r"(?<![\w.])\d+\.\d+")


def _recorded(number: str, recorded: list[str]) -> bool:
    """Returns whether `number` (as written in a note) is a recorded value or one rounded to its decimals."""
    places = len(number.split(".")[1])
    return any(r == number or f"{float(r):.{places}f}" == number for r in recorded)


def test_catalog_notes_quote_only_recorded_numbers():
    """Every decimal number in a catalog note or claim reason appears (possibly rounded) in that
    paper's rows of RESULTS.md or RESULTS-quick.md, so the catalog never cites a run nobody recorded."""
    from experiments._harness import RESULTS_PATH, RESULTS_QUICK_PATH, load_results

    rows = list(load_results(RESULTS_PATH).values()) + list(load_results(RESULTS_QUICK_PATH).values())
    wrong = []
    for e in catalog.entries():
        if e.status == "planned":
            continue
        mine = [r for r in rows if r.pid == e.pid]
        text = " ".join(str(x) for r in mine for x in (r.claim, r.setting, r.metric, r.baseline_name, r.baseline_value,
                                                        r.method_value, r.threshold, " ".join(map(str, r.diffs)), r.note))
        recorded = _DECIMAL.findall(text)
        for field in [e.note] + [c.reason for c in e.claims]:
            wrong += [f"{e.pid}: {n} (in {field[:60]!r}...)" for n in _DECIMAL.findall(field) if not _recorded(n, recorded)]
    assert not wrong, "catalog numbers absent from the recorded rows:\n" + "\n".join(wrong)


def test_recorded_number_matching_is_strict():
    assert _recorded("2.1", ["2.095"]) and _recorded("0.54", ["0.542"]) and _recorded("0.003", ["0.003"])
    assert not _recorded("0.265", ["0.992", "0.988"]) and not _recorded("2.2", ["2.095"])


def test_docs_before_after_table_matches_the_catalog():
    """docs/catalog.md's before/after table lists every claim (or claimless implemented paper) with
    the catalog's current status in its `after` column, and states the current counts."""
    import re

    text = (ROOT / "docs" / "catalog.md").read_text(encoding="utf-8")
    table = text[text.index("<!-- before-after:start -->"):text.index("<!-- before-after:end -->")]
    rows = {}
    for line in table.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 5 and re.fullmatch(r"P\d+", cells[0]):
            rows[(cells[0], cells[1])] = cells[3]
    want = {}
    for e in catalog.entries():
        if e.claims:
            want.update({(e.pid, c.id): c.status for c in e.claims})
        elif e.status != "planned":
            want[(e.pid, "—")] = e.status
    assert rows == want
    after = ", ".join(f"{sum(e.status == s for e in catalog.entries())} {s}" for s in catalog.STATUSES if s != "planned")
    assert f"Paper statuses after (per-claim verdicts, full runs only): {after}." in table
