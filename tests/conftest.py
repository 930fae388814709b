"""Shared pytest setup: a deterministic hypothesis profile and small model fixtures."""

import os

os.environ.setdefault("XLA_FLAGS", "")
# The suite's tiny models spend most of their CPU time compiling, not running: LLVM at -O0 cuts the
# suite's CPU time by ~20% (measured on four decoding modules: 167 s vs 208 s). XLA's HLO passes run
# as before, but float32 results may differ in the last bits from an optimised build (multiply-adds are
# contracted differently), so a test that compares two different programs needs a float tolerance.
# XLA's MLIR fusion emitters build an MLIR context and pass pipeline for every fusion (perf: ~20% of a
# tiny decode program's compile in FusionCompiler, dialect loading included); the elemental IR emitter
# they replace compiles the same fusions in about half the time (test_routing.py: 48 -> 20 s of XLA
# compile, test_forward.py: 31 -> 16 s). Same HLO passes, so the same float tolerance note applies.
# At the default optimization level the elemental emitter compiles slower (SmolLM2's first generate: 24 vs 16 s,
# steps equally fast), so this is a setting for the suite's compile-bound tiny programs, not for tokjax.
# A caller's own value of either flag wins.
_TEST_XLA_FLAGS = {"--xla_backend_optimization_level": "0", "--xla_cpu_use_fusion_emitters": "false"}
for _flag, _value in _TEST_XLA_FLAGS.items():
    if _flag not in os.environ["XLA_FLAGS"]:
        os.environ["XLA_FLAGS"] = (os.environ["XLA_FLAGS"] + f" {_flag}={_value}").strip()
os.environ.setdefault("TOKJAX_CACHE", os.path.join(os.path.dirname(os.path.dirname(__file__)), ".cache", "tokjax"))

from hypothesis import HealthCheck, settings  # noqa: E402

settings.register_profile(
    "tokjax", derandomize=True, deadline=None, max_examples=40, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
settings.load_profile("tokjax")


import gc  # noqa: E402

import pytest  # noqa: E402


@pytest.fixture(autouse=True, scope="session")
def _full_float32_matmuls_on_accelerators():
    """Parity tests compare float32 against numpy/torch oracles at ~1e-5; GPUs default float32 matmuls
    to TF32 (a 10-bit mantissa), a different computation rather than a bug, so tests ask for full float32
    there. (A fixture, not import-time code: the backend must not start before test modules set XLA_FLAGS.)"""
    import jax

    if jax.default_backend() != "cpu":
        jax.config.update("jax_default_matmul_precision", "highest")
    yield


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_programs():
    """Drops every jit cache after each test module.

    Each compiled XLA CPU program holds memory mappings of its own; a pytest worker that runs
    hundreds of modules otherwise reaches the kernel's vm.max_map_count (65530) and LLVM
    segfaults inside the next compile (seen at ~62k mappings in one worker of `make test`).
    """
    yield
    import jax

    jax.clear_caches()
    gc.collect()


# Single parametrisations moved out of the default suite (`make test-all` runs them): each test keeps its
# other parametrisations in the default run, so every method still has fast exact tests there.
_SLOW_PARAMS = {
    "tests/decoding/test_speculative.py::test_rejection_sampling_preserves_the_joint_law_of_three_tokens[t1.0]",
    "tests/decoding/test_speculative.py::test_a_biased_verifier_fails_the_same_test[scale]",
    "tests/decoding/test_speculative.py::test_greedy_speculative_equals_plain_greedy_on_100_ragged_prompts[model-greedy]",
    "tests/model/test_forward.py::test_cached_incremental_equals_full_forward[float32-gpt2]",
    "tests/model/test_forward.py::test_unstacked_and_fused_decode_weights_compute_the_same_forward[True-gpt2]",
    "tests/tokenizers/test_kronos.py::test_decoded_logprobs_equal_teacher_forced[dual]",
    "tests/decoding/test_stand.py::test_greedy_speculative_equals_plain_greedy_batched_ragged[greedy-False]",
    "tests/decoding/test_sap.py::test_sap_loop_equals_list_oracle[3]",
    "tests/decoding/test_bucketing.py::test_bucketed_equals_unbucketed_for_strategies[prompt_lookup]",
    "tests/vision/test_xar.py::test_cached_decode_equals_full_forward_reference[token]",
    "tests/decoding/test_kangaroo.py::test_greedy_kangaroo_equals_plain_greedy[3-5-0.0-kangaroo]",
    "tests/decoding/test_generate_outputs.py::test_logprobs_equal_log_softmax_of_a_full_forward_under_the_transform"
    "[self_draft_rejection]",
    "tests/train/test_rl_fast_paths.py::test_on_policy_loss_equals_the_separate_old_logp_forward[0.1]",
}


@pytest.hookimpl(tryfirst=True)  # before `-m 'not slow'` deselects by marker
def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.nodeid in _SLOW_PARAMS:
            item.add_marker(pytest.mark.slow)
