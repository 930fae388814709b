"""TrainConfig and the YAML loaders: strict keys, clear errors, and the shipped configs."""

import dataclasses

import pytest

from tokjax.train import TrainConfig, load_config, load_run_config, run_config_from_dict, train_config_from_dict


def test_defaults_are_valid_and_hashable():
    tc = TrainConfig()
    assert hash(tc) == hash(TrainConfig())
    assert tc.tokens_per_step == tc.batch_size * tc.seq_len
    assert TrainConfig(**tc.to_dict()) == tc


@pytest.mark.parametrize(
    "kw, msg",
    [
        ({"lr": 0.0}, "lr"),
        ({"lr": float("nan")}, "lr"),
        ({"total_steps": 0}, "total_steps"),
        ({"warmup_steps": 10, "total_steps": 10}, "warmup_steps"),
        ({"batch_size": 2.5}, "batch_size must be int"),
        ({"seed": True}, "seed must be int"),
        ({"grad_clip": -1.0}, "grad_clip"),
        ({"b2": 1.0}, "b2"),
        ({"eval_batches": 0}, "eval_batches"),
        ({"min_lr_ratio": 2.0}, "min_lr_ratio"),
        ({"lr": "fast"}, "lr must be float"),
    ],
)
def test_train_config_rejects_bad_values(kw, msg):
    with pytest.raises(ValueError, match=msg):
        TrainConfig(**kw)


def test_ints_become_floats_and_yaml_exponents_parse():
    tc = train_config_from_dict({"lr": 1, "grad_clip": 2, "weight_decay": "1e-2"})
    assert isinstance(tc.lr, float) and tc.lr == 1.0 and isinstance(tc.grad_clip, float)
    assert tc.weight_decay == pytest.approx(0.01)


def test_load_flat_yaml(tmp_path):
    p = tmp_path / "t.yaml"
    p.write_text("lr: 3e-4\ntotal_steps: 50\nwarmup_steps: 5\ngrad_clip: null\n")
    tc = load_config(p)
    assert tc.lr == pytest.approx(3e-4) and tc.total_steps == 50 and tc.grad_clip is None


@pytest.mark.parametrize(
    "text, msg",
    [
        ("lr: [1, 2\n", "malformed YAML"),
        ("", "empty"),
        ("- 1\n- 2\n", "mapping"),
        ("lr: 0.1\nwarmup_step: 3\n", r"unknown key\(s\) \['warmup_step'\]"),
        ("batch_size: many\n", "batch_size must be int"),
        ("total_steps: 10\nwarmup_steps: 20\n", "warmup_steps"),
        ("train:\n  lr: 0.1\n", "missing required key 'name'"),
        ("name: x\nmodel: {d_model: 8, n_layers: 1, n_heads: 2}\ntrain: {bogus: 1}\n", r"train: unknown key"),
        ("name: x\nmodel: {d_model: 8, n_layers: 1, n_heads: 3}\ntrain: {}\n", "model: ModelConfig.n_heads"),
        ("name: x\nmodel: {vocab_size: 8, d_model: 8, n_layers: 1, n_heads: 2}\ntrain: {}\n", "vocab_size comes"),
        ("name: x\nmodel: {d_model: 8, n_layers: 1, n_heads: 2}\ntrain: {}\nextra: 1\n", "top-level key"),
        ("name: x\nmodel: {d_model: 8, n_layers: 1, n_heads: 2}\ntokenizer: {vocab_size: 10}\ntrain: {}\n",
         "tokenizer.vocab_size"),
        ("name: x\nmodel: {d_model: 8, n_layers: 1, n_heads: 2, max_len: 16}\ntrain: {seq_len: 32}\n", "max_len"),
    ],
)
def test_malformed_yaml_raises_value_error_naming_file_and_key(tmp_path, text, msg):
    p = tmp_path / "bad.yaml"
    p.write_text(text)
    with pytest.raises(ValueError, match=msg) as ei:
        load_config(p)
    assert str(p) in str(ei.value)


def test_missing_config_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        load_config(tmp_path / "nope.yaml")


def test_shipped_configs_load_and_match_the_embedded_copies():
    import importlib

    # The module, not the function that tokjax/__init__.py may export under the same name.
    pt = importlib.import_module("tokjax.pretrained")
    names = pt.available_pretrained()
    assert {"tiny-pydocs", "tiny-test"} <= set(names)
    for name in pt._BUILTIN:  # trained models; the GGUF ones (smollm2-135m-instruct) have no run config
        path = pt.config_dir() / f"{name}.yaml"
        assert path.is_file(), path
        from_yaml = load_run_config(path)
        embedded = run_config_from_dict(pt._BUILTIN[name], name)
        assert from_yaml == embedded, f"configs/{name}.yaml and the copy in tokjax/pretrained.py differ"
        assert load_config(path) == from_yaml.train
        assert pt.pretrained_config(name) == from_yaml
    run = pt.pretrained_config("tiny-pydocs")
    cfg = run.model_config(run.tokenizer.vocab_size)
    assert 5e5 <= cfg.num_params() <= 3e6
    assert run.train.seq_len == 128 and run.tokenizer.vocab_size == 1024
    assert dataclasses.asdict(cfg)["vocab_size"] == 1024
