"""Sharded results equal single-device results on 8 simulated CPU devices (meshes 2x4 and 8x1).

jax fixes its device count when the backend first starts, and other test modules in this
process have already started it with one device, so the checks run once in a subprocess
(``_sharded_checks.py``, env ``XLA_FLAGS=--xla_force_host_platform_device_count=8``) and these
tests assert on the JSON it writes. Under pytest-xdist the workers share one run of it.
"""

import fcntl
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

# One 8-device subprocess runs every sharded check (~45 s); the default suite keeps the rule/spec tests
# (test_parallel_rules.py) and docs/sharding.md's example, which runs on a simulated mesh.
pytestmark = pytest.mark.slow

SCRIPT = Path(__file__).with_name("_sharded_checks.py")
ROOT = Path(__file__).resolve().parents[2]
MESHES = ["2x4", "8x1"]
TOL = 1e-5


def _run_checks(out: Path) -> None:
    env = dict(os.environ)
    flags = [f for f in env.get("XLA_FLAGS", "").split() if "xla_force_host_platform_device_count" not in f]
    env["XLA_FLAGS"] = " ".join(flags + ["--xla_force_host_platform_device_count=8"])
    env["JAX_PLATFORMS"] = "cpu"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), str(out)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
    )
    if proc.returncode != 0 or not out.exists():
        pytest.fail(f"_sharded_checks.py failed (rc={proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-8000:]}")


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    # xdist workers share the base temp dir's parent; a lock makes the first one run the script.
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent
    out = root / "tokjax_sharded_checks.json"
    with open(root / "tokjax_sharded_checks.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not out.exists():
            _run_checks(out)
    res = json.loads(out.read_text())
    if "references" in res:
        pytest.fail("single-device references failed:\n" + res["references"]["error"])
    return res


def check(results, mesh, name) -> dict:
    r = results[mesh][name]
    if "error" in r:
        pytest.fail(f"{name} on mesh {mesh} raised:\n{r['error']}")
    return r


def test_checks_ran_on_8_devices(results):
    assert results["device_count"] == 8


def test_param_sharding_is_what_the_rules_say(results):
    r = check(results, "2x4", "placement")
    assert r["specs"]["wq"] == [None, None, "model"]
    assert r["specs"]["wo"] == [None, "model"]
    assert r["specs"]["w_up"] == r["specs"]["w_gate"] == [None, None, "model"]
    assert r["specs"]["w_down"] == [None, "model"]
    assert r["specs"]["embed"] == ["model"]
    assert r["specs"]["final_norm.scale"] == []
    assert r["shard_shapes"]["wq"] == [2, 64, 1, 16]  # 4 heads over model=4
    assert r["shard_shapes"]["embed"] == [16, 64]  # vocab 64 over model=4
    assert r["original_alive"]
    r = check(results, "8x1", "placement")
    assert r["specs"]["wq"] == r["specs"]["wk"] == []  # model axis of size 1 splits nothing
    assert r["shard_shapes"]["wq"] == [2, 64, 4, 16]


def test_non_divisible_kv_heads_are_replicated(results):
    r = check(results, "2x4", "placement")
    assert r["specs"]["wk"] == r["specs"]["wv"] == []  # kv_heads=2 on model=4
    assert r["shard_shapes"]["wk"] == [2, 64, 2, 16]


@pytest.mark.parametrize("mesh, rows", [("2x4", 4), ("8x1", 1)])
def test_shard_batch_splits_leading_dim_over_data(results, mesh, rows):
    r = check(results, mesh, "placement")
    assert r["tokens_spec"] == ["data"]
    assert r["tokens_shard_shape"] == [rows, 16]


@pytest.mark.parametrize("mesh", MESHES)
def test_sharded_forward_equals_single_device(results, mesh):
    r = check(results, mesh, "forward")
    # f32 logits of scale ~10: tolerance relative to that scale (different summation orders).
    assert r["max_diff"] <= TOL * max(1.0, r["scale"]), r
    assert r["logits_spec"][0] == "data"
    if mesh == "2x4":
        assert r["logits_spec"] == ["data", None, "model"]  # vocab-parallel head, never gathered


@pytest.mark.parametrize("mesh", MESHES)
def test_sharded_greedy_generate_equals_single_device(results, mesh):
    r = check(results, mesh, "generate")
    assert r["sharded_equal"]
    if mesh == "2x4":
        assert r["plain_equal"]  # tokjax.generate without mesh=, params sharded


@pytest.mark.parametrize("mesh", MESHES)
def test_sharded_generate_shards_unplaced_params_itself(results, mesh):
    assert check(results, mesh, "generate")["sharded_unplaced_equal"]


@pytest.mark.parametrize("mesh", MESHES)
@pytest.mark.parametrize("strategy", ["draft_model", "recycling", "lazy_routing"])
def test_sharded_speculative_generate_equals_single_device(results, mesh, strategy):
    """generate(..., mesh=) with a speculative or routing strategy: same tokens and target calls as one device."""
    r = check(results, mesh, "speculative_generate")[strategy]
    assert r["equal"] and r["calls_equal"]
    if strategy == "lazy_routing":
        assert r["large_calls_equal"] and r["lazy_skipped_steps"]  # the large model's lax.cond really skipped steps
    else:
        assert r["multi_token_steps"]  # drafts were accepted, so verification really ran on the mesh


@pytest.mark.parametrize("mesh", MESHES)
def test_strategy_state_is_placed_as_declared(results, mesh):
    r = check(results, mesh, "speculative_generate")
    assert r["tokens_spec"] == ["data"]
    assert r["draft_cache_spec"][0] == "data"  # ModelDraft declares its cache a KV cache
    assert r["pending_spec"] == ["data"]  # Recycling's per-row roots follow the batch
    assert r["table_spec"] == []  # ... and its table, shared by all rows, is replicated


def assert_train_matches(r):
    assert r["loss"]["max_diff"] <= TOL * max(1.0, r["loss"]["scale"]), r["loss"]
    assert r["opt_state"]["max_diff"] <= TOL * max(1.0, r["opt_state"]["scale"]), r["opt_state"]
    assert r["params_well_conditioned"] <= TOL, r
    # Params whose gradient is within 100x of the rounding-level gradient difference get adam's
    # ~lr-sized step with an arbitrary sign on either side (see _sharded_checks.compare_train).
    assert r["params_at_grad_floor"] <= 2.5 * r["lr"], r
    assert r["n_at_grad_floor"] < 0.15 * r["n_params"], r


def optax_step(results, mesh):
    if "train" not in results[mesh]:
        pytest.skip("tokjax.train is importable: its train step is checked instead of the local optax step")
    return check(results, mesh, "train")


@pytest.mark.parametrize("mesh", MESHES)
def test_sharded_optax_step_equals_single_device(results, mesh):
    """Fallback when tokjax.train is missing: a local optax.adamw step, opt state placed by opt_state_shardings."""
    assert_train_matches(optax_step(results, mesh))


@pytest.mark.parametrize("mesh", MESHES)
def test_optax_step_keeps_state_sharding(results, mesh):
    r = optax_step(results, mesh)
    assert r["same_shardings"]
    assert not r["recompiled"]  # the second step reuses the first step's executable


def train_module(results, mesh):
    r = check(results, mesh, "train_module")
    if "skipped" in r:
        pytest.skip(r["skipped"])
    return r


@pytest.mark.parametrize("mesh", MESHES)
def test_sharded_train_step_equals_single_device(results, mesh):
    """tokjax.train.make_train_step on a state placed by shard_train_state."""
    assert_train_matches(train_module(results, mesh))


@pytest.mark.parametrize("mesh", MESHES)
def test_train_step_keeps_state_sharding(results, mesh):
    r = train_module(results, mesh)
    assert r["same_shardings"]
    assert not r["recompiled"]
