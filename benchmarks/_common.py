"""Helpers shared by the benchmarks: wall-clock timing and the machine's measured memory bandwidth."""

from __future__ import annotations

import os
import platform
import time
from typing import Any, Callable

import numpy as np


def timeit(fn: Callable[[], Any], repeats: int) -> list[float]:
    """Returns the wall-clock seconds of ``repeats`` calls of ``fn`` (which must block until done)."""
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def matvec_bandwidth(mib: int = 256, repeats: int = 10) -> float:
    """Returns the best memory bandwidth (bytes/s) of a jitted float32 matrix-vector product over ``mib`` MiB.

    A matvec reads every matrix element once and does 2 flops per 4 bytes, so its speed is the
    bandwidth bound of batch-1 decoding, which is also a sequence of matvecs over the weights.
    """
    import jax
    import jax.numpy as jnp

    n = int(np.sqrt(mib * 2**20 / 4))
    w = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    x = jnp.ones((n,), jnp.float32)
    f = jax.jit(lambda w, x: w @ x)
    f(w, x).block_until_ready()
    best = min(timeit(lambda: f(w, x).block_until_ready(), repeats))
    return n * n * 4 / best


def machine() -> str:
    """Returns a one-line description of the CPU this process runs on."""
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{name}, {os.cpu_count()} cores"


def time_train_steps(step: Callable, state: Any, batches: list, steps: int) -> tuple[float, float]:
    """Returns (compile seconds, median seconds per step) of a jitted ``step(state, batch) -> (state, metrics)``:
    the first call (compile + run), one warm step outside the timing, then ``steps`` timed steps cycling through
    ``batches``."""
    import jax

    t = time.perf_counter()
    state, m = step(state, batches[0])
    jax.block_until_ready(m)
    compile_s = time.perf_counter() - t
    state, m = step(state, batches[1 % len(batches)])
    jax.block_until_ready(m)
    times = []
    for i in range(steps):
        t = time.perf_counter()
        state, m = step(state, batches[i % len(batches)])
        jax.block_until_ready(m)
        times.append(time.perf_counter() - t)
    return compile_s, float(np.median(times))


def batch_sizes(text: str) -> tuple[int, ...]:
    """argparse type: comma-separated batch sizes >= 1."""
    import argparse

    try:
        out = tuple(int(w) for w in text.split(",") if w.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"needs comma-separated integers, got {text!r}") from None
    if not out or min(out) < 1:
        raise argparse.ArgumentTypeError(f"needs batch sizes >= 1, got {text!r}")
    return out


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    import argparse

    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"needs an integer, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {v}")
    return v


def alternate_timings(calls: dict, repeats: int) -> dict:
    """Returns {name: [seconds of each of ``repeats`` calls]} of ``calls`` (name -> ``fn(r)`` that blocks until
    done; ``r`` = the repeat index, e.g. for a fresh PRNG key), interleaving the names so that machine load hits
    them all alike."""
    times = {name: [] for name in calls}
    for r in range(repeats):
        for name, fn in calls.items():
            t = time.perf_counter()
            fn(r)
            times[name].append(time.perf_counter() - t)
    return times


def alternate_timings_cpu(calls: dict, repeats: int) -> tuple[dict, dict]:
    """Returns ({name: wall seconds}, {name: process CPU seconds}) of ``repeats`` interleaved calls of each of
    ``calls`` (as :func:`alternate_timings`). The CPU seconds (all threads of this process) are the core-seconds a
    call used: on a machine other processes load, they are closer to the unloaded time than the wall clock."""
    wall = {name: [] for name in calls}
    cpu = {name: [] for name in calls}
    for r in range(repeats):
        for name, fn in calls.items():
            c, t = time.process_time(), time.perf_counter()
            fn(r)
            wall[name].append(time.perf_counter() - t)
            cpu[name].append(time.process_time() - c)
    return wall, cpu
