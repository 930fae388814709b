"""Shared pytest setup: a deterministic hypothesis profile and small model fixtures."""

import os

os.environ.setdefault("XLA_FLAGS", "")
# The suite's tiny models spend most of their CPU time compiling, not running: LLVM at -O0 cuts the
# suite's CPU time by ~20% (measured on four decoding modules: 167 s vs 208 s). XLA's HLO passes run
# as before, but float32 results may differ in the last bits from an optimised build (multiply-adds are
# contracted differently), so a test that compares two different programs needs a float tolerance.
# A caller's own optimization-level flag wins.
if "--xla_backend_optimization_level" not in os.environ["XLA_FLAGS"]:
    os.environ["XLA_FLAGS"] = (os.environ["XLA_FLAGS"] + " --xla_backend_optimization_level=0").strip()
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
