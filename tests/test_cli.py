"""The tokjax command line: catalog, train on a config, generate, and clear errors."""

import pytest

from tokjax import cli


def test_catalog_prints_every_paper(capsys):
    assert cli.main(["catalog"]) == 0
    out = capsys.readouterr().out
    assert "P1" in out and "P78" in out and "planned" in out


def test_train_from_yaml_and_bad_config(tmp_path, capsys):
    assert cli.main(["train", "configs/tiny-test.yaml", "--steps", "8", "--workdir", str(tmp_path / "run")]) == 0
    assert "val_loss" in capsys.readouterr().out
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: {lr: [1, 2]\n")
    assert cli.main(["train", str(bad)]) == 2
    assert "error" in capsys.readouterr().err
    assert cli.main(["train", str(tmp_path / "missing.yaml")]) == 2


def test_generate_and_unknown_model(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("TOKJAX_CACHE", str(tmp_path))
    assert cli.main(["generate", "--model", "tiny-test", "--prompt", "The ", "--max-new-tokens", "5", "--greedy"]) == 0
    assert "\nThe " in "\n" + capsys.readouterr().out
    assert cli.main(["generate", "--model", "nope", "--prompt", "x"]) == 2
    assert "tiny-pydocs" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["generate", "--model", "tiny-test", "--prompt", "", "--max-new-tokens", "2"])
