"""DiSA: diffusion step annealing (P19; Zhao et al. 2025, "DiSA: Diffusion Step Annealing in Autoregressive Image
Generation", arXiv 2505.20297, code Qinyu-Allen-Zhao/DiSA ``MAR_DiSA/models/diffloss.py``, ``xAR_DiSA/models/xar.py``).

DiSA is training-free: AR step s in {0, ..., n-1} of a model with a per-token diffusion / flow head samples with
T(s) inner steps that fall from ``t_up`` to ``t_low`` as generation proceeds (later tokens are more constrained
by their context, so fewer steps suffice). With u = n - 1 and R = t_up - t_low, the official MAR arithmetic
(``DiffLoss.sample``: one respaced sampler per T in range(t_low, t_up + 1), picked by an index) is::

    linear:    T(s) = t_low + int((u - s) / u * R)
    cosine:    T(s) = t_low + int((cos(pi s / u) + 1) / 2 * R)
    two_stage: T(s) = t_up if s < u / 2 else t_low
    constant:  T(s) = t_low                                   (MAR's schedule_id = 0)

and the official xAR arithmetic (``sample_tokens``, linear only, ``arithmetic="xar"``)::

    linear:    T(s) = int((u - s) / u * R + t_low)

All in Python floats (IEEE double) with ``int`` truncation, exactly as the official code, so the values at the
integer boundaries match it (float32 would change some of them). n = 1 is a division by zero in the official
code; here the single step counts as the first one (T = t_up for linear, cosine and two_stage).

In tokjax the schedule is a host-side table: :func:`disa_steps` returns int32 [n], passed as the ``steps`` of
:class:`tokjax.vision.mar.MAR` or of :func:`tokjax.vision.flow.continuous_ar` (length n = L). Both keep it as a
runtime array in the decode state and their flow sampler loops over a traced count
(:func:`tokjax.vision.flow.flow_sample`), so a new schedule, or new t_low / t_up, never recompiles the decode
loop. Head evaluations per image are sum_s T(s) |fill_s| (``DecodeStats`` ``head_evals``; :func:`head_evals`).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

__all__ = ["ARITHMETIC", "SCHEDULES", "disa_steps", "head_evals", "inner_steps"]

SCHEDULES = ("constant", "linear", "cosine", "two_stage")
ARITHMETIC = ("mar", "xar")


def _int(name: str, value: Any, lo: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or int(value) < lo:
        raise ValueError(f"{name} must be an int >= {lo}, got {value!r}")
    return int(value)


def _check(n: Any, schedule: str, t_low: Any, t_up: Any, arithmetic: str) -> tuple[int, int, int]:
    n = _int("n (the number of AR steps)", n, 1)
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
    if arithmetic not in ARITHMETIC:
        raise ValueError(f"arithmetic must be one of {ARITHMETIC}, got {arithmetic!r}")
    if arithmetic == "xar" and schedule != "linear":
        raise ValueError(f"the official xAR arithmetic exists for schedule='linear' only, got {schedule!r} (use "
                         "arithmetic='mar')")
    t_low = _int("t_low (steps >= 1)", t_low, 1)
    t_up = _int("t_up (steps >= 1)", t_up, 1)
    if t_low > t_up:
        raise ValueError(f"t_low must be <= t_up (steps anneal from t_up down to t_low), got t_low={t_low}, "
                         f"t_up={t_up}")
    return n, t_low, t_up


def _one(s: int, n: int, schedule: str, t_low: int, t_up: int, arithmetic: str) -> int:
    """T(s) for one AR step, in the official float arithmetic (module docstring)."""
    u = n - 1
    span = t_up - t_low  # = len(gen_diffusion) - 1 in MAR_DiSA
    if schedule == "constant":
        return t_low
    if u == 0:  # n = 1: undefined (division by zero) in the official code; the first step gets t_up
        return t_up
    if arithmetic == "xar":
        return int((u - s) / u * (t_up - t_low) + t_low)
    if schedule == "linear":
        idx = int((u - s) / u * span)
    elif schedule == "cosine":
        idx = int((math.cos(math.pi * s / u) + 1) / 2 * span)
    else:  # two_stage
        idx = span if s < u / 2 else 0
    return t_low + idx


def inner_steps(s: Any, n: int, *, schedule: str = "linear", t_low: int = 5, t_up: int = 50,
                arithmetic: str = "mar") -> Any:
    """Returns T(s) >= 1, the inner flow / diffusion steps of AR step ``s`` out of ``n`` under a DiSA schedule
    (module docstring; P19): an int for an int ``s``, int32 of ``s``'s shape for an array of steps.

    ``schedule``: "linear", "cosine", "two_stage" or "constant" (= t_low at every step); ``t_low`` <= ``t_up``:
    the final and initial step counts (>= 1); ``arithmetic``: "mar" (``diffloss.py``) or "xar" (``xar.py``,
    linear only). Host-side (Python floats, as the official code): build the per-step table once with
    :func:`disa_steps` and pass it to the decode loop as a runtime array.

    Raises ValueError for n < 1, steps < 1 (t_low or t_up), t_low > t_up, s outside [0, n), an unknown schedule
    or arithmetic.
    """
    n, t_low, t_up = _check(n, schedule, t_low, t_up, arithmetic)
    arr = np.asarray(s)
    if arr.dtype == bool or not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"s must be an int AR step (or an int array of them), got {s!r}")
    if arr.size and (int(arr.min()) < 0 or int(arr.max()) >= n):
        raise ValueError(f"s must lie in [0, n={n}), got {arr.tolist()}")
    if arr.ndim == 0:
        return _one(int(arr), n, schedule, t_low, t_up, arithmetic)
    flat = [_one(int(v), n, schedule, t_low, t_up, arithmetic) for v in arr.reshape(-1)]
    return np.asarray(flat, np.int32).reshape(arr.shape)


def disa_steps(n: int, *, schedule: str = "linear", t_low: int = 5, t_up: int = 50,
               arithmetic: str = "mar") -> np.ndarray:
    """Returns int32 [n]: T(0), ..., T(n-1) of :func:`inner_steps`, the ``steps`` schedule of a flow Strategy
    (``tokjax.vision.mar.MAR`` with n = its AR iterations, ``tokjax.vision.flow.continuous_ar`` with n = length)."""
    n, _, _ = _check(n, schedule, t_low, t_up, arithmetic)
    return inner_steps(np.arange(n), n, schedule=schedule, t_low=t_low, t_up=t_up, arithmetic=arithmetic)


def head_evals(steps: Any, fills: Any) -> int:
    """Returns sum_s T(s) |fill_s|: the head evaluations per image of a schedule ``steps`` [n] (or a scalar T)
    and the tokens filled per AR step ``fills`` [n] (continuous raster AR: all ones). Raises ValueError for
    mismatched lengths, steps < 1 or negative fills."""
    f = np.asarray(fills)
    t = np.broadcast_to(np.asarray(steps), f.shape) if np.ndim(steps) == 0 else np.asarray(steps)
    if t.shape != f.shape or f.ndim != 1:
        raise ValueError(f"steps and fills must be [n] (one entry per AR step), got {t.shape} and {f.shape}")
    if not (np.issubdtype(t.dtype, np.integer) and np.issubdtype(f.dtype, np.integer)):
        raise ValueError(f"steps and fills must be ints, got {t.dtype} and {f.dtype}")
    if t.size and int(t.min()) < 1:
        raise ValueError(f"steps must be >= 1, got {t.tolist()}")
    if f.size and int(f.min()) < 0:
        raise ValueError(f"fills must be >= 0, got {f.tolist()}")
    return int(np.sum(t.astype(np.int64) * f.astype(np.int64)))
