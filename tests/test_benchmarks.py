"""The accelerator check (benchmarks/gpu/check.py) runs end to end at smoke sizes, so it does not rot
between the runs on a GPU machine."""

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_check_smoke_writes_every_section(tmp_path):
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "benchmarks" / "gpu" / "check.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = tmp_path / "report.md"
    rc = mod.main(["--smoke", "--out", str(out)])
    text = out.read_text()
    assert rc == 0, text
    for title in ("Decode", "Cut cross-entropy", "TensorBLEU", "Speculative decoding", "Train step MFU"):
        assert f"## {title}" in text
    assert "0 section(s) failed" in text and "Traceback" not in text
    # the speculative arms are lossless: greedy outputs equal plain greedy's
    spec_rows = [ln for ln in text.splitlines() if ln.startswith("| prompt lookup") or ln.startswith("| Token Recycling")]
    assert len(spec_rows) == 2 and all(ln.rstrip(" |").endswith("True") for ln in spec_rows)


def test_tensorbleu_benchmark_runs_at_a_tiny_size(capsys):
    spec = importlib.util.spec_from_file_location("bench_tensorbleu", ROOT / "benchmarks" / "tensorbleu.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.main(["--batch", "2", "--length", "8", "--repeats", "1"]) == 0
    rows = [ln.split("|")[0].split() for ln in capsys.readouterr().out.splitlines()
            if ln and not ln.startswith(("#", "    B"))]
    assert len(rows) == 1 and rows[0][:2] == ["2", "8"] and float(rows[0][-1]) < 1e-6, rows


def test_int8_matvec_benchmark_runs_at_a_tiny_size(capsys):
    spec = importlib.util.spec_from_file_location("bench_int8", ROOT / "benchmarks" / "int8_matvec.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.main(["--shapes", "8x16", "--repeats", "1"]) == 0
    rows = [ln for ln in capsys.readouterr().out.splitlines() if ln.strip().startswith("8x16")]
    assert len(rows) == 5, rows


def test_small_matmul_benchmark_runs_at_a_tiny_size(capsys):
    spec = importlib.util.spec_from_file_location("bench_small_matmul", ROOT / "benchmarks" / "small_matmul.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.main(["--shapes", "8x16", "--rows", "1", "3", "--copies", "2", "--repeats", "1"]) == 0
    rows = [ln.split() for ln in capsys.readouterr().out.splitlines() if ln.strip().startswith("8x16")]
    kernel_rows = [r for r in rows if r[2:4] == ["tokjax", "row_matmul"]]
    assert [r[1] for r in kernel_rows] == ["1", "3"], rows


def _rl_step_module():
    spec = importlib.util.spec_from_file_location("bench_rl_step", ROOT / "benchmarks" / "rl_step.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_rl_step_benchmark_task_and_trl_venv_lookup(tmp_path):
    from tokjax.tokenizers import ByteTokenizer

    mod = _rl_step_module()
    task = mod.WordProblemTask(ByteTokenizer())
    prompts, answers = task.prompts(3, 2)
    assert (prompts, answers) == task.prompts(3, 2) and len(prompts) == 2  # the same problems for every arm
    right = task.tok.encode(f"so {answers[0]}. Answer: {answers[0]}")
    rewards, fmt = task.reward([right, task.tok.encode("no idea")], answers)
    assert rewards.tolist() == [1.0, 0.0] and fmt.tolist() == [True, False]
    python, note = mod.trl_interpreter(str(tmp_path / "missing" / "python"))
    assert python is None and "setup_trl_venv.sh" in note  # no venv: a note, never a crash
    assert mod.trl_interpreter("none") == (None, None) and mod.trl_interpreter(None, tiny=True) == (None, None)


@pytest.mark.slow
def test_rl_step_benchmark_tokjax_side_runs_at_a_tiny_size_and_steps_as_rl_train(tmp_path, capsys):
    import json

    import jax
    import numpy as np

    from tokjax.train.rl import rl_train

    mod = _rl_step_module()
    out = tmp_path / "rl.json"
    assert mod.main(["--tiny", "--steps", "1", "--warmup", "1", "--prompts", "2", "--group", "2", "--new", "4",
                     "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    assert sorted(res["arms"]) == ["tokjax full", "tokjax last:1"] and res["reference"] is None
    for r in res["arms"].values():
        assert r["total"] > 0 and abs(r["rollout"] + r["trunk"] + r["update"] - r["total"]) < 1e-6
        assert r["completion_len"] <= 4
    assert "tokjax last:1" in capsys.readouterr().out
    # the benchmark's phased step is rl_train's step: the same params after one step, bit for bit
    model, tok = mod.tiny_model()

    class Varied(mod.WordProblemTask):  # a random model never solves a problem: vary the reward so grads are nonzero
        def reward(self, completions, answers):
            return np.array([sum(int(t) for t in c) % 7 / 7 for c in completions], np.float32), \
                np.ones(len(completions), bool)

    task = Varied(tok)
    opts = {"steps": 1, "warmup": 0, "prompts": 2, "group": 2, "new": 4, "lr": 1e-3}
    cfg = mod.rl_config(opts, ("last:1",), 200)
    arm = mod.TokjaxArm(model, task, cfg, eos_id=tok.eos_id)
    arm.step(0)
    want, _ = rl_train(model, task, cfg, eos_id=tok.eos_id)
    for a, b in zip(jax.tree.leaves(arm.state.params), jax.tree.leaves(want.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    wq, wq0 = np.asarray(want.params["layers"]["wq"]), np.asarray(model.params["layers"]["wq"])
    assert not np.array_equal(wq[-1], wq0[-1]) and np.array_equal(wq[0], wq0[0])  # last:1 trained, layer 0 frozen


@pytest.mark.slow  # four compiles of a train step / loss: ~10 s of one core, over the default suite's budget
def test_train_throughput_benchmark_runs_at_a_tiny_size(capsys):
    spec = importlib.util.spec_from_file_location("bench_train_throughput", ROOT / "benchmarks" / "train_throughput.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.main(["--quick", "--presets", "micro", "--arms", "default,flax.nnx", "--steps", "1"]) == 0
    out = capsys.readouterr().out
    assert "MFU" in out and "flax.nnx" in out and "micro" in out


@pytest.mark.slow  # three jitted vjps and torch: a few seconds, a smoke test of the script
def test_attention_grad_benchmark_runs_at_a_small_size(capsys):
    spec = importlib.util.spec_from_file_location("bench_attention_grad", ROOT / "benchmarks" / "attention_grad.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.main(["--quick", "--repeats", "1"]) == 0
    out = capsys.readouterr().out
    assert "tokjax ms" in out and "query blocks" in out and "2 x 256" in out
