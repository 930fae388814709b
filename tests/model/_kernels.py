"""Test helper: run a CPU kernel's tests on every machine, its untuned (no AVX-512) build included."""

import pytest


def force_kernel(env_switch: str, available):
    """Returns a module-scoped autouse fixture that sets ``$env_switch`` to "force" (tokjax then uses the kernel
    even where it would pick XLA's faster code) and clears the ``available`` cache before and after."""

    @pytest.fixture(autouse=True, scope="module")
    def _forced():
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv(env_switch, "force")
            available.cache_clear()
            yield
        available.cache_clear()

    return _forced
