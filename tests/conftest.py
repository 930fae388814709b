"""Shared pytest setup: a deterministic hypothesis profile and small model fixtures."""

import os

os.environ.setdefault("XLA_FLAGS", "")
os.environ.setdefault("TOKJAX_CACHE", os.path.join(os.path.dirname(os.path.dirname(__file__)), ".cache", "tokjax"))

from hypothesis import HealthCheck, settings  # noqa: E402

settings.register_profile(
    "tokjax", derandomize=True, deadline=None, max_examples=40, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
settings.load_profile("tokjax")
