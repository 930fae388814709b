"""The training loop with orbax checkpoints: bitwise resume, crash-safe writes, clear errors."""

import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tokjax.model import ModelConfig
from tokjax.train import (
    CheckpointError, Checkpointer, TrainConfig, is_complete_checkpoint, load_params, save_params, train,
)

CFG = ModelConfig(vocab_size=64, d_model=32, n_layers=1, n_heads=2, n_kv_heads=1, max_len=32)
TC = TrainConfig(
    lr=1e-2, warmup_steps=1, total_steps=6, batch_size=4, seq_len=16, log_every=2, eval_every=3,
    eval_batches=2, checkpoint_every=3, seed=3,
)


def _data():
    rng = np.random.default_rng(0)
    # Fewer windows than total_steps * batch_size, so the resumed half crosses an epoch boundary.
    return {
        "train": rng.integers(0, 64, (10, 17)).astype(np.int32),
        "val": rng.integers(0, 64, (6, 17)).astype(np.int32),
        "bytes_per_token": 2.5,
    }


class Killed(Exception):
    pass


def _kill_at(n):
    def cb(step, state, metrics):
        if step == n:
            raise Killed

    return cb


def _leaves_equal(a, b):
    return all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


@pytest.fixture(scope="module")
def straight():
    return train(CFG, TC, _data(), progress=False)


def test_resume_after_kill_is_bitwise_identical(tmp_path, straight):
    model, hist = straight
    wd = tmp_path / "run"
    with pytest.raises(Killed):
        train(CFG, TC, _data(), workdir=wd, progress=False, callback=_kill_at(4))
    ck = Checkpointer(wd / "checkpoints")
    assert ck.all_steps() == [3]  # killed after step 4: the step-3 checkpoint is the newest
    ck.close()
    resumed, rhist = train(CFG, TC, _data(), workdir=wd, progress=False)
    assert jax.tree.structure(resumed.params) == jax.tree.structure(model.params)
    assert _leaves_equal(resumed.params, model.params)
    # history survives the kill (entries after the checkpoint are replayed, not duplicated)
    assert [e["step"] for e in rhist["train"]] == [e["step"] for e in hist["train"]] == [2, 4, 6]
    assert [e["step"] for e in rhist["eval"]] == [3, 6]
    assert rhist["eval"][-1]["loss"] == pytest.approx(hist["eval"][-1]["loss"], rel=0, abs=0)
    assert np.isfinite(rhist["eval"][-1]["bits_per_byte"])
    assert json.loads((wd / "history.json").read_text())["eval"][-1]["step"] == 6
    # a finished run "resumes" to itself without training
    again, _ = train(CFG, TC, _data(), workdir=wd, progress=False)
    assert _leaves_equal(again.params, model.params)


def test_resume_refuses_other_settings_and_resume_false(tmp_path, straight):
    wd = tmp_path / "run"
    with pytest.raises(Killed):
        train(CFG, TC, _data(), workdir=wd, progress=False, callback=_kill_at(3))
    with pytest.raises(ValueError, match="different settings.*lr"):
        train(CFG, TC.replace(lr=5e-3), _data(), workdir=wd, progress=False)
    other = _data()
    other["train"] = other["train"][::-1].copy()
    with pytest.raises(ValueError, match="different settings.*train_sha256"):
        train(CFG, TC, other, workdir=wd, progress=False)
    with pytest.raises(ValueError, match="resume=True"):
        train(CFG, TC, _data(), workdir=wd, resume=False, progress=False)


def _state(v):
    return {"w": jnp.full((3, 2), v, jnp.float32), "step": jnp.int32(v)}


def test_interrupted_write_leaves_previous_checkpoint_restorable(tmp_path, monkeypatch):
    from orbax.checkpoint._src.path import atomicity

    ck = Checkpointer(tmp_path, max_to_keep=5)
    ck.save(1, _state(1.0))

    async def die_before_commit(self):  # the process "dies" after writing, before the rename
        raise OSError("simulated crash")

    monkeypatch.setattr(atomicity.AtomicRenameTemporaryPath, "finalize", die_before_commit)
    with pytest.raises(OSError, match="simulated crash"):
        ck.save(2, _state(2.0))
    monkeypatch.undo()
    assert any(".orbax-checkpoint-tmp" in p.name for p in tmp_path.iterdir())  # a real half-written dir
    ck.close()

    ck2 = Checkpointer(tmp_path)
    assert ck2.all_steps() == [1]
    got = ck2.restore(_state(0.0))
    assert np.array_equal(got["w"], np.ones((3, 2))) and int(got["step"]) == 1
    ck2.save(2, _state(2.0))  # and the step can be written again afterwards
    assert ck2.all_steps() == [1, 2]
    ck2.close()


def test_uncommitted_step_directories_are_skipped(tmp_path):
    ck = Checkpointer(tmp_path)
    ck.save(1, _state(1.0))
    ck.close()
    # A fake half-written orbax tmp dir and a final-named dir without commit marker.
    (tmp_path / "5.orbax-checkpoint-tmp-123" / "default").mkdir(parents=True)
    (tmp_path / "5.orbax-checkpoint-tmp-123" / "default" / "junk").write_text("x")
    (tmp_path / "7" / "default").mkdir(parents=True)
    assert not is_complete_checkpoint(tmp_path / "7")
    ro = Checkpointer(tmp_path, create=False)  # a reader skips it and changes nothing
    assert ro.all_steps() == [1] and ro.latest_step() == 1
    assert int(ro.restore(_state(0.0))["step"]) == 1
    assert (tmp_path / "7").exists()
    with pytest.raises(FileNotFoundError, match="step 7"):
        ro.restore(_state(0.0), step=7)
    ro.close()
    with pytest.warns(UserWarning, match="never committed"):
        rw = Checkpointer(tmp_path)  # a writer moves it aside so orbax never trips over it
    assert not (tmp_path / "7").exists()
    assert any(p.name.startswith("7.incomplete-") for p in tmp_path.iterdir())
    rw.save(7, _state(7.0))
    assert rw.all_steps() == [1, 7]
    rw.close()


def test_missing_and_corrupt_checkpoints_raise_clear_errors(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(FileNotFoundError, match=str(missing)):
        Checkpointer(missing, create=False)
    empty = Checkpointer(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="no committed checkpoint in .*empty"):
        empty.restore(_state(0.0))
    empty.close()

    ck = Checkpointer(tmp_path / "c")
    ck.save(1, _state(1.0))
    # wrong target shapes (a different model config)
    with pytest.raises(CheckpointError, match=str(tmp_path / "c" / "1")):
        ck.restore({"w": jnp.zeros((4, 2)), "step": jnp.int32(0)})
    # corrupt: the array data is gone
    step_dir = tmp_path / "c" / "1"
    for p in step_dir.rglob("*"):
        if p.is_dir() and p.name.startswith("ocdbt"):
            shutil.rmtree(p)
        elif p.is_file() and p.name not in ("commit_success.txt", "_CHECKPOINT_METADATA"):
            p.write_bytes(b"garbage")
    with pytest.raises(ValueError, match="corrupt") as ei:
        ck.restore(_state(0.0))
    assert str(step_dir) in str(ei.value)
    assert ei.value.__cause__ is None and ei.value.__context__ is None  # no deep orbax traceback
    ck.close()

    (tmp_path / "afile").write_text("x")
    with pytest.raises(ValueError, match="not a directory"):
        Checkpointer(tmp_path / "afile")


def test_params_checkpoint_roundtrip_and_errors(tmp_path):
    p = {"a": jnp.arange(6.0).reshape(2, 3), "b": {"c": jnp.ones(4)}}
    save_params(tmp_path / "p", p)
    got = load_params(tmp_path / "p", jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), p))
    assert _leaves_equal(got, p)
    with pytest.raises(ValueError, match="already exists"):
        save_params(tmp_path / "p", p)
    with pytest.raises(FileNotFoundError, match="missing"):
        load_params(tmp_path / "missing", p)
    with pytest.raises(CheckpointError, match=str(tmp_path / "p")):
        load_params(tmp_path / "p", {"a": jnp.zeros((3, 3)), "b": {"c": jnp.ones(4)}})


def test_train_validates_its_inputs(tmp_path):
    with pytest.raises(ValueError, match=r"\[N, 17\]"):
        train(CFG, TC, np.zeros((10, 9), np.int32), progress=False)
    with pytest.raises(ValueError, match="vocab_size"):
        train(CFG, TC, np.full((10, 17), 64, np.int32), progress=False)
    with pytest.raises(ValueError, match="fewer than batch_size"):
        train(CFG, TC, np.zeros((3, 17), np.int32), progress=False)
    with pytest.raises(ValueError, match="max_len"):
        train(CFG, TC.replace(seq_len=40), np.zeros((10, 41), np.int32), progress=False)
    with pytest.raises(ValueError, match="TrainConfig"):
        train(CFG, {"lr": 1}, np.zeros((10, 17), np.int32), progress=False)
    with pytest.raises(ValueError, match="dataset"):
        train(CFG, TC, "corpus", progress=False)
    (tmp_path / "f").write_text("")
    with pytest.raises(ValueError, match="not a directory"):
        train(CFG, TC, _data(), workdir=tmp_path / "f", progress=False)
