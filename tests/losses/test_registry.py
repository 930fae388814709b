"""The loss registry and TrainConfig.loss: a YAML config picks the training loss by name."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import tokjax
import tokjax.losses
from tokjax.losses.registry import (
    RegisteredLoss, loss_from_spec, loss_names, loss_options, make_loss, model_sources, register_loss,
    register_model_source,
)
from tokjax.train import TrainConfig, init_state, load_config, make_optimizer, make_train_step, train
from tokjax.train._loss import loss_fn_from_config, next_token_loss

CFG = tokjax.ModelConfig(vocab_size=31, d_model=16, n_layers=1, n_heads=2, n_kv_heads=1, max_len=16)


def test_builtins_and_errors_list_the_valid_choices():
    assert {"next_token", "prior", "text2token", "scheduled_sampling"} <= set(loss_names())
    with pytest.raises(ValueError, match=r"unknown loss 'focal'; valid losses: \[.*'prior'"):
        make_loss("focal")
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['alph'\] for loss 'prior'; valid options: \['alpha'"):
        make_loss("prior", alph=1.0)
    with pytest.raises(ValueError, match="loss 'next_token': method must be one of"):
        make_loss("next_token", method="fast")
    with pytest.raises(ValueError, match="reference must be"):
        make_loss("prior", reference="teacher")
    with pytest.raises(ValueError, match="'name' key"):
        loss_from_spec({"alpha": 1.0})
    assert loss_options("prior")["alpha"] == 1.0


def test_equal_specs_share_one_object_and_round_trip():
    a = make_loss("prior", alpha=0.5)
    assert a is make_loss("prior", alpha=0.5) and a is loss_from_spec({"name": "prior", "alpha": 0.5})
    assert a != make_loss("prior", alpha=0.25) and hash(a) == hash(RegisteredLoss("prior", (("alpha", 0.5),), None))
    assert a.spec() == {"name": "prior", "alpha": 0.5}
    assert a.__qualname__ == "RegisteredLoss[prior](alpha=0.5)"
    t = make_loss("text2token", stop_ids=[1, 2])
    assert t is loss_from_spec(t.spec())


def test_register_a_new_loss():
    calls = []

    def factory(scale):
        def fn(params, cfg, batch, rng):
            calls.append(scale)
            return jnp.float32(scale), {}
        return fn

    register_loss("_test_const", factory, {"scale": 1.0}, overwrite=True)
    assert float(make_loss("_test_const", scale=2.0)(None, CFG, {}, None)[0]) == 2.0
    with pytest.raises(ValueError, match="already registered"):
        register_loss("_test_const", factory, {"scale": 1.0})
    with pytest.raises(ValueError, match="reserved"):
        register_loss("_test_bad", factory, {"name": 1})


def test_train_config_loss_field(tmp_path):
    assert "loss" not in TrainConfig().to_dict()  # existing configs (pretrained cache keys) are unchanged
    tc = TrainConfig(loss={"name": "prior", "alpha": 0.5})
    assert tc.loss == (("alpha", 0.5), ("name", "prior")) and hash(tc) == hash(TrainConfig(loss="prior").replace(
        loss={"alpha": 0.5, "name": "prior"}))
    assert tc.to_dict()["loss"] == {"name": "prior", "alpha": 0.5} and TrainConfig(**tc.to_dict()) == tc
    assert TrainConfig(loss="next_token").loss == (("name", "next_token"),)
    assert loss_fn_from_config(TrainConfig()) is next_token_loss
    for bad, msg in [({"name": "nope"}, "valid losses"), ({"name": "prior", "beta": 1}, "valid options"),
                     ({"alpha": 1}, "'name' key"), (3, "'name' key")]:
        with pytest.raises(ValueError, match=msg):
            TrainConfig(loss=bad)
    p = tmp_path / "bad.yaml"
    p.write_text("lr: 1e-3\nloss: {name: focal}\n")
    with pytest.raises(ValueError, match="valid losses") as ei:
        load_config(p)
    assert str(p) in str(ei.value)


def test_yaml_config_choosing_prior_trains_one_step(tmp_path):
    p = tmp_path / "prior.yaml"
    p.write_text("lr: 1e-2\nwarmup_steps: 0\ntotal_steps: 5\nbatch_size: 2\nseq_len: 8\n"
                 "loss: {name: prior, alpha: 2, method: naive}\n")
    tc = load_config(p)
    loss_fn = loss_fn_from_config(tc)
    assert loss_fn is make_loss("prior", alpha=2, method="naive")
    opt = make_optimizer(tc)
    state = init_state(CFG, opt, 0)
    step = make_train_step(CFG, opt, loss_fn, donate=False)
    r = np.random.default_rng(0)
    batch = {"tokens": r.integers(0, 31, (2, 9)).astype(np.int32),
             "ref_logp": np.log(r.uniform(0.05, 0.95, (2, 8))).astype(np.float32)}
    new, m = step(state, batch)
    assert int(new.step) == 1 and np.isfinite(float(m["loss"]))
    assert float(m["weight_mean"]) == pytest.approx(1.0, rel=1e-5)  # PRIOR weights sum to the token count
    assert float(m["loss"]) != pytest.approx(float(m["nll"]), rel=1e-4)  # the weights changed the loss
    moved = jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b))), new.params, state.params)
    assert max(jax.tree.leaves(moved)) > 0


def test_train_loop_uses_the_configured_loss(tmp_path):
    tc = TrainConfig(lr=1e-2, warmup_steps=0, total_steps=2, batch_size=2, seq_len=8, log_every=1, eval_every=0,
                     checkpoint_every=0, loss={"name": "scheduled_sampling", "prob": 0.5, "method": "naive"})
    windows = np.random.default_rng(1).integers(0, 31, (6, 9)).astype(np.int32)
    _, hist = train(CFG, tc, windows, workdir=tmp_path / "run", progress=False)
    assert len(hist["train"]) == 2 and "replaced_frac" in hist["train"][0]
    record = json.loads((tmp_path / "run" / "run.json").read_text())
    assert "scheduled_sampling" in record["loss_fn"] and record["train"]["loss"]["prob"] == 0.5


# ------------------------------------------------------------------------------ models as loss options
def test_registry_imports_nothing_above_the_losses():
    # A loss needing a reference or teacher takes a model (or ref_logp in the batch); only layers
    # above (tokjax.pretrained) turn a name into a model, by registering a model source.
    import ast
    from pathlib import Path

    import tokjax.losses.registry as reg

    tree = ast.parse(Path(reg.__file__).read_text())
    imported = set()
    for node in ast.walk(tree):  # function-level imports included
        if isinstance(node, ast.Import):
            imported |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported.add(node.module or "")
    upward = sorted(m for m in imported if m == "tokjax" or m.split(".")[:2] in (
        ["tokjax", "pretrained"], ["tokjax", "train"], ["tokjax", "catalog"], ["tokjax", "cli"]))
    assert not upward, upward


def test_model_options_take_models_and_registered_sources():
    teacher = tokjax.Model.init(CFG, jax.random.PRNGKey(3))
    kd = make_loss("kd", teacher=teacher, temperature=2.0)
    assert kd == make_loss("kd", temperature=2.0, teacher=teacher) and hash(kd) == hash(make_loss("kd", teacher=teacher,
                                                                                                   temperature=2.0))
    twin = tokjax.Model(params=jax.tree.map(jnp.array, teacher.params), cfg=CFG)
    assert make_loss("kd", teacher=twin, temperature=2.0) != kd  # another object: its own loss
    # ... but the same description, so a resumed run (a new process, a reloaded teacher) is accepted
    assert make_loss("kd", teacher=twin, temperature=2.0).__qualname__ == kd.__qualname__
    assert "sha256:" in kd.__qualname__ and loss_from_spec(kd.spec()) == kd
    pair = make_loss("prior", reference=(teacher.params, CFG))
    batch = {"tokens": np.random.default_rng(0).integers(0, 31, (2, 9)).astype(np.int32)}
    loss, _ = jax.jit(pair, static_argnums=1)(teacher.params, CFG, batch, None)  # ref_logp from the model
    assert np.isfinite(float(loss))
    with pytest.raises(ValueError, match="no model source 'nosuch' is registered"):
        make_loss("kd", teacher="nosuch:x")
    with pytest.raises(ValueError, match="teacher must be a Model or \\(params, cfg\\) pair"):
        make_loss("gld", teacher="batch")
    with pytest.raises(ValueError, match="loss_fn="):
        TrainConfig(loss={"name": "kd", "teacher": teacher})
    register_model_source("_test_src", {"t": teacher}.__getitem__, overwrite=True)
    named = make_loss("kd", teacher="_test_src:t")
    assert named is loss_from_spec({"name": "kd", "teacher": "_test_src:t"})
    assert "pretrained" in model_sources()  # import tokjax registers tokjax.pretrained's source


def test_fourier_head_is_registered():
    assert "fourier_head" in loss_names() and loss_options("fourier_head")["gamma"] == 0.0
    with pytest.raises(ValueError, match="num_bins must be an int"):
        make_loss("fourier_head")
    fh = make_loss("fourier_head", num_bins=5)
    with pytest.raises(ValueError, match="params has no 'fourier_head' entry"):
        fh({}, CFG, {"labels": np.zeros((1, 2), np.int32), "inputs": np.zeros((1, 2), np.int32)}, None)
    head = tokjax.losses.fourier_head_init(jax.random.PRNGKey(0), 4, 2)
    loss, m = fh({"fourier_head": head}, None, {"features": np.ones((3, 4), np.float32),
                                                  "labels": np.array([0, 2, 4], np.int32)}, None)
    assert float(loss) == pytest.approx(float(m["nll"]))  # gamma 0
