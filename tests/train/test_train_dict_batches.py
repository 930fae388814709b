"""One training loop for every loss: dict batches from a batch_fn or an iterable, registry losses from a
TrainConfig, a trainable subset, plain-pytree training, and bitwise resume with dict batches."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import tokjax
from tokjax.losses import fourier_head_init, init_aux_head, reference_logp, token_stats
from tokjax.losses.registry import register_model_source
from tokjax.model import Model, ModelConfig
from tokjax.train import TrainConfig, load_config, train

CFG = ModelConfig(vocab_size=31, d_model=16, n_layers=1, n_heads=2, n_kv_heads=1, max_len=16)
B, T = 4, 8


def _tc(**kw):
    base = dict(lr=1e-2, warmup_steps=0, total_steps=8, batch_size=B, seq_len=T, log_every=1, eval_every=0,
                checkpoint_every=0, weight_decay=0.0)
    return TrainConfig(**{**base, **kw})


def _params(seed=0):
    return Model.init(CFG, jax.random.PRNGKey(seed)).params


def _tokens(seed=0, rows=B):
    return np.random.default_rng(seed).integers(0, CFG.vocab_size, (rows, T + 1)).astype(np.int32)


TEACHER = Model.init(CFG, jax.random.PRNGKey(7))
# A model source as a layer above the registry would register one ("pretrained:" is tokjax.pretrained's):
# it lets a TrainConfig name the teacher by a string, as a YAML file does.
register_model_source("testmodels", {"teacher": TEACHER}.__getitem__, overwrite=True)


def _moved(a, b):
    return max(float(jnp.max(jnp.abs(jnp.asarray(x, jnp.float32) - jnp.asarray(y, jnp.float32))))
               for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def _run(tc, batch_fn, params=None):
    start = _params() if params is None else params
    model, hist = train(CFG, tc, batch_fn, params=start, progress=False)
    losses = [e["loss"] for e in hist["train"]]
    assert len(losses) == tc.total_steps and all(np.isfinite(losses)), losses
    assert _moved(model.params, start) > 0
    return model, losses


# ------------------------------------------------------------------------------ registry losses via train()
@pytest.mark.slow
def test_prior_from_a_train_config_with_ref_logp_in_the_batch():
    tok = _tokens(1)
    ref = np.asarray(reference_logp(TEACHER.params, CFG, tok))
    batch = {"tokens": tok, "ref_logp": ref}
    _, losses = _run(_tc(loss={"name": "prior", "alpha": 1.0}), lambda step: batch)
    assert losses[-1] < losses[0]


@pytest.mark.slow  # default-suite time; the file's other tests keep the method covered in the default suite
def test_dpo_from_a_train_config_with_pairs_and_reference_log_probs():
    start = _params()
    rng = np.random.default_rng(2)
    prompt = rng.integers(0, 31, (2, 4))
    chosen = np.concatenate([prompt, rng.integers(0, 31, (2, T + 1 - 4))], 1)
    rejected = np.concatenate([prompt, rng.integers(0, 31, (2, T + 1 - 4))], 1)
    tok = np.concatenate([chosen, rejected]).astype(np.int32)  # [2B', T+1]: chosen rows, then rejected rows
    batch = {"tokens": tok, "prompt_lengths": np.full(4, 4, np.int32),
             "ref_logp": np.asarray(reference_logp(start, CFG, tok))}  # the reference is the starting policy
    _, losses = _run(_tc(loss={"name": "dpo", "beta": 0.5}), lambda step: batch, start)
    assert losses[0] == pytest.approx(np.log(2.0), abs=1e-4)  # policy == reference: -log sigmoid(0)
    assert losses[-1] < losses[0] - 0.01


@pytest.mark.slow  # default-suite time; the file's other tests keep the method covered in the default suite
def test_kd_from_a_train_config_naming_the_teacher():
    batch = {"tokens": _tokens(3)}
    _, losses = _run(_tc(loss={"name": "kd", "teacher": "testmodels:teacher", "ce_weight": 0.0}), lambda s: batch)
    assert losses[-1] < losses[0]


@pytest.mark.slow
def test_gld_from_a_train_config():
    batch = {"tokens": _tokens(4)}
    model, losses = _run(_tc(loss={"name": "gld", "teacher": "testmodels:teacher", "k": 4}, total_steps=4), lambda s: batch)
    assert len(losses) == 4 and model.params is not None


def test_dual_head_kd_trains_the_auxiliary_head_in_the_params():
    start = init_aux_head(_params(), CFG, jax.random.PRNGKey(1))
    batch = {"tokens": _tokens(5)}
    model, losses = _run(_tc(loss={"name": "dual_head_kd", "teacher": "testmodels:teacher"}), lambda s: batch, start)
    assert _moved(model.params["aux_head"], start["aux_head"]) > 0
    assert losses[-1] < losses[0]


def test_fourier_head_loss_with_its_head_in_the_params():
    start = {**_params(), "fourier_head": fourier_head_init(jax.random.PRNGKey(2), CFG.d_model, 4)}
    inputs = _tokens(6)[:, :T]
    batch = {"inputs": inputs, "labels": (inputs % 8).astype(np.int32)}  # the bin is a function of the token
    model, losses = _run(_tc(loss={"name": "fourier_head", "num_bins": 8, "gamma": 1e-6}, lr=3e-2), lambda s: batch,
                         start)
    assert _moved(model.params["fourier_head"], start["fourier_head"]) > 0
    assert losses[-1] < losses[0] - 0.05


def test_yaml_config_names_a_pretrained_teacher_end_to_end(tmp_path):
    # The registry never loads a model; tokjax.pretrained registers the "pretrained:" source.
    p = tmp_path / "kd.yaml"
    p.write_text("lr: 1e-2\nwarmup_steps: 0\ntotal_steps: 2\nbatch_size: 2\nseq_len: 8\nlog_every: 1\n"
                 "eval_every: 0\ncheckpoint_every: 0\nloss: {name: kd, teacher: 'pretrained:tiny-test'}\n")
    tc = load_config(p)
    teacher, tok = tokjax.pretrained("tiny-test", progress=False)
    cfg = ModelConfig(vocab_size=teacher.cfg.vocab_size, d_model=16, n_layers=1, n_heads=2, n_kv_heads=1, max_len=16)
    ids = np.asarray(tok.encode("def f(x):\n    return x + 1\n" * 3)[: 2 * 9], np.int32).reshape(2, 9)
    model, hist = train(cfg, tc, lambda step: {"tokens": ids}, workdir=tmp_path / "run", progress=False)
    assert len(hist["train"]) == 2 and np.isfinite(hist["train"][-1]["kd"])
    record = json.loads((tmp_path / "run" / "run.json").read_text())
    assert "pretrained:tiny-test" in record["loss_fn"] and record["train"]["loss"]["name"] == "kd"


# ------------------------------------------------------------------------------ trainable subset
def test_trainable_subset_leaves_the_rest_bit_identical(tmp_path):
    start = {**_params(), "bias": jnp.zeros((CFG.vocab_size,), jnp.float32)}

    def biased_loss(params, cfg, batch, rng):
        stats = token_stats(params, cfg, batch, logit_bias=params["bias"])
        loss = -jnp.mean(stats.logp)
        return loss, {"loss": loss}

    batch = {"tokens": _tokens(8), "rewards": np.ones(B, np.float32)}  # an extra key the loss ignores
    p = tmp_path / "t.yaml"
    p.write_text("lr: 1e-2\nwarmup_steps: 0\ntotal_steps: 5\nbatch_size: 4\nseq_len: 8\nweight_decay: 0.1\n"
                 "trainable: [bias, layers/wq]\n")
    tc = load_config(p)
    assert tc.trainable == ("bias", "layers/wq") and tc.to_dict()["trainable"] == ["bias", "layers/wq"]
    model, _ = train(CFG, tc, lambda s: batch, params=start, loss_fn=biased_loss, progress=False)
    got = model.params
    assert _moved(got["bias"], start["bias"]) > 0 and _moved(got["layers"]["wq"], start["layers"]["wq"]) > 0
    for key in ("embed", "final_norm"):
        assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(got[key]), jax.tree.leaves(start[key])))
    for key in ("wk", "wv", "wo", "w_up", "w_down", "w_gate", "attn_norm", "mlp_norm"):
        assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(got["layers"][key]),
                                                        jax.tree.leaves(start["layers"][key]))), key


def test_last_n_layers_train_and_every_other_row_and_leaf_stays_bit_identical():
    cfg3 = CFG.replace(n_layers=3)
    start = Model.init(cfg3, jax.random.PRNGKey(1)).params
    tc = _tc(trainable=("last:1", "final_norm"), weight_decay=0.1, total_steps=4)
    assert tc.trainable == ("last:1", "final_norm")
    model, _ = train(cfg3, tc, lambda s: {"tokens": _tokens(s)}, params=start, progress=False)
    got = model.params
    for key, leaf in got["layers"].items():
        for row in range(3):
            same = np.array_equal(np.asarray(jax.tree.leaves(leaf)[0][row]), np.asarray(jax.tree.leaves(start["layers"][key])[0][row]))
            assert same == (row < 2), (key, row)  # rows 0-1 frozen bit for bit (weight decay included), row 2 trains
    assert _moved(got["final_norm"], start["final_norm"]) > 0
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(got["embed"]), jax.tree.leaves(start["embed"])))


def test_unknown_trainable_key_is_a_clear_error():
    with pytest.raises(ValueError, match=r"\['adapter'\] match no parameter; valid top-level keys: \['embed'"):
        train(CFG, _tc(trainable=("adapter",)), lambda s: {"tokens": _tokens()}, progress=False)
    with pytest.raises(ValueError, match="trainable"):
        TrainConfig(trainable=("a//b",))
    with pytest.raises(ValueError, match="trainable"):
        TrainConfig(trainable=[])
    with pytest.raises(ValueError, match="last:N"):
        TrainConfig(trainable=("last:0",))
    with pytest.raises(ValueError, match="one 'last:N'"):
        TrainConfig(trainable=("last:1", "last:2"))
    with pytest.raises(ValueError, match="more layers than the model has"):
        train(CFG, _tc(trainable=("last:2",)), lambda s: {"tokens": _tokens()}, progress=False)


# ------------------------------------------------------------------------------ plain pytree (model_cfg=None)
def test_plain_pytree_logistic_regression_converges():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(256, 2)).astype(np.float32)
    y = (x @ np.array([2.0, -1.0]) + 0.5 > 0).astype(np.float32)
    seen = []

    def logistic(params, cfg, batch, rng):
        seen.append(cfg)
        z = batch["x"] @ params["w"] + params["b"]
        loss = jnp.mean(jnp.logaddexp(0.0, z) - batch["y"] * z)
        return loss, {"loss": loss, "accuracy": jnp.mean((z > 0) == (batch["y"] > 0))}

    def batch_fn(step):
        idx = np.random.default_rng(step).choice(256, 64, replace=False)
        return {"x": x[idx], "y": y[idx]}

    tc = TrainConfig(lr=0.1, warmup_steps=0, total_steps=150, log_every=50, grad_clip=None, weight_decay=0.0)
    params, hist = train(None, tc, batch_fn, params={"w": np.zeros(2, np.float32), "b": np.float32(0.0)},
                         loss_fn=logistic, progress=False)
    assert set(params) == {"w", "b"} and seen and all(c is None for c in seen)
    assert hist["train"][-1]["loss"] < 0.25 < hist["train"][0]["loss"]
    z = x @ np.asarray(params["w"]) + float(params["b"])
    assert np.mean((z > 0) == (y > 0)) > 0.95
    with pytest.raises(ValueError, match="loss_fn"):
        train(None, tc, batch_fn, params={"w": np.zeros(2)}, progress=False)
    with pytest.raises(ValueError, match="params="):
        train(None, tc, batch_fn, loss_fn=logistic, progress=False)


# ------------------------------------------------------------------------------ bitwise resume with dict batches
class Killed(Exception):
    pass


def _kill_at(n):
    def cb(step, state, metrics):
        if step == n:
            raise Killed

    return cb


def _dict_batch(step, salt=0):
    r = np.random.default_rng(1000 * salt + step)
    return {"tokens": r.integers(0, 31, (B, T + 1)).astype(np.int32),
            "weights": r.uniform(0.5, 1.5, (B, T)).astype(np.float32),
            "prompt_lengths": r.integers(1, 4, (B,)).astype(np.int32)}


RESUME_TC = _tc(total_steps=6, checkpoint_every=3, log_every=2, seed=3)


@pytest.fixture(scope="module")
def straight():
    return train(CFG, RESUME_TC, _dict_batch, progress=False)


def _equal(a, b):
    return all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def test_resume_with_a_batch_fn_of_dict_batches_is_bitwise_identical(tmp_path, straight):
    wd = tmp_path / "run"
    with pytest.raises(Killed):
        train(CFG, RESUME_TC, _dict_batch, workdir=wd, progress=False, callback=_kill_at(4))
    model, hist = train(CFG, RESUME_TC, _dict_batch, workdir=wd, progress=False)
    assert _equal(model.params, straight[0].params)
    # Log windows that do not straddle the restart (steps 1-2, 5-6) hold the same means.
    got, want = [(e["step"], e["loss"]) for e in hist["train"]], [(e["step"], e["loss"]) for e in straight[1]["train"]]
    assert [got[0], got[-1]] == [want[0], want[-1]] and want[-1][0] == 6
    record = json.loads((wd / "run.json").read_text())
    assert record["data"]["source"] == "batch_fn" and len(record["data"]["batch0_sha256_16"]) == 16
    # other data (its first batch differs) is refused
    with pytest.raises(ValueError, match="different settings.*batch0_sha256_16"):
        train(CFG, RESUME_TC, lambda s: _dict_batch(s, salt=1), workdir=wd, progress=False)


def test_resume_with_an_iterable_skips_the_consumed_batches(tmp_path, straight):
    wd = tmp_path / "run"
    stream = [_dict_batch(s) for s in range(RESUME_TC.total_steps)]
    with pytest.raises(Killed):
        train(CFG, RESUME_TC, iter(stream), workdir=wd, progress=False, callback=_kill_at(4))
    model, _ = train(CFG, RESUME_TC, iter(stream), workdir=wd, progress=False)
    assert _equal(model.params, straight[0].params)
    assert json.loads((wd / "run.json").read_text())["data"]["source"] == "iterable"
    with pytest.raises(ValueError, match="ran out after 2 batches"):
        train(CFG, RESUME_TC, stream[:2], progress=False)


# ------------------------------------------------------------------------------ bad input
def test_bad_batches_are_clear_errors():
    with pytest.raises(ValueError, match=r"batch_fn\(0\) is a list; a batch must be a dict"):
        train(CFG, _tc(), lambda s: [_tokens()], progress=False)
    with pytest.raises(ValueError, match=r"needs batch\['tokens'\]"):
        train(CFG, _tc(), lambda s: {"rewards": np.zeros(B)}, progress=False)
    with pytest.raises(ValueError, match="vocab_size"):
        train(CFG, _tc(), lambda s: {"tokens": _tokens() + 31}, progress=False)
    with pytest.raises(ValueError, match="'train' entry"):
        train(CFG, _tc(), {"tokens": _tokens()}, progress=False)
    with pytest.raises(ValueError, match="validation data needs a model"):
        train(None, _tc(), {"train": lambda s: {}, "val": [{}]}, params={"w": 0.0}, loss_fn=lambda *a: (0.0, {}),
              progress=False)


def test_validation_batches_may_be_dicts():
    val = [{"tokens": _tokens(20), "mask": np.ones((B, T), bool)}, {"tokens": _tokens(21)}]
    tc = _tc(total_steps=2, eval_every=1)
    _, hist = train(CFG, tc, {"train": lambda s: {"tokens": _tokens(s)}, "val": val}, progress=False)
    assert [e["step"] for e in hist["eval"]] == [1, 2] and hist["eval"][0]["tokens"] == 2 * B * T


def test_the_loop_passes_the_step_to_dict_batch_losses_without_recompiling():
    seen, traces = [], []

    def scheduled(params, cfg, batch, rng):
        traces.append(1)
        jax.debug.callback(lambda s: seen.append(int(s)), batch["step"])
        loss = jnp.sum(params["w"] ** 2) * (1.0 + batch["step"].astype(jnp.float32))
        return loss, {}

    tc = TrainConfig(lr=0.1, warmup_steps=0, total_steps=5, log_every=1, grad_clip=None, weight_decay=0.0)
    train(None, tc, lambda step: {"x": np.zeros(2, np.float32)}, params={"w": np.ones(2, np.float32)},
          loss_fn=scheduled, progress=False)
    jax.effects_barrier()
    assert seen == [0, 1, 2, 3, 4] and len(traces) == 1
    # A batch that carries its own "step" keeps it.
    seen.clear()
    train(None, tc, lambda step: {"step": np.int32(7)}, params={"w": np.ones(2, np.float32)},
          loss_fn=scheduled, progress=False)
    jax.effects_barrier()
    assert seen == [7] * 5
