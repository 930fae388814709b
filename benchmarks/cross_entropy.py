"""Benchmark: loss + gradient of the LM cross-entropy, cut (P29) vs naive vs optax, on CPU.

For each vocabulary size V and variant it reports

* ``temp MiB``: XLA's compiled temporary buffers for ``value_and_grad`` w.r.t. (hidden, head),
  from ``jax.jit(f).lower(...).compile().memory_analysis()`` (inputs and outputs excluded);
* ``peak RSS MiB`` of a fresh subprocess running only that variant (``ru_maxrss``), and
  ``RSS delta MiB``: that peak minus the process's RSS after allocating the inputs and compiling
  (i.e. what the computation itself added);
* ``wall s`` and ``cpu s`` (process CPU time, less sensitive to other load on the machine) of one
  loss+gradient call, the minimum over ``--repeats`` after one warm-up call.

Variants: ``cce`` = :func:`tokjax.losses.cut_cross_entropy` (vocabulary streaming, custom VJP);
``naive`` = :func:`tokjax.losses.cross_entropy` (materialised float32 logits);
``optax`` = ``optax.softmax_cross_entropy_with_integer_labels(h @ W, y).mean()``.

    python benchmarks/cross_entropy.py            # N=8192, D=512, V in {32768, 131072} (several minutes)
    python benchmarks/cross_entropy.py --quick    # N=2048, D=256, V in {8192, 32768}
    python benchmarks/cross_entropy.py --sweep 512,1024,2048,4096   # block-size sweep (cce only)
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

VARIANTS = ("cce", "naive", "optax")


def _loss_fn(variant: str, block_size: int):
    import optax

    from tokjax.losses import cross_entropy, cut_cross_entropy

    if variant == "cce":
        return lambda h, w, y: cut_cross_entropy(h, w, y, block_size=block_size)
    if variant == "naive":
        return lambda h, w, y: cross_entropy(h, w, y)
    if variant == "optax":
        return lambda h, w, y: optax.softmax_cross_entropy_with_integer_labels(h @ w, y).mean()
    raise ValueError(f"unknown variant {variant!r}; expected one of {VARIANTS}")


def _grad_fn(variant: str, block_size: int):
    import jax

    return jax.jit(jax.value_and_grad(_loss_fn(variant, block_size), argnums=(0, 1)))


def compiled_memory(variant: str, N: int, D: int, V: int, block_size: int) -> dict:
    """Returns XLA's memory analysis (MiB) of the compiled loss+grad; nothing is allocated."""
    import jax
    import jax.numpy as jnp

    args = (jax.ShapeDtypeStruct((N, D), jnp.float32), jax.ShapeDtypeStruct((D, V), jnp.float32),
            jax.ShapeDtypeStruct((N,), jnp.int32))
    m = _grad_fn(variant, block_size).lower(*args).compile().memory_analysis()
    mib = 2.0 ** 20
    return {"temp_mib": m.temp_size_in_bytes / mib, "arg_mib": m.argument_size_in_bytes / mib,
            "out_mib": m.output_size_in_bytes / mib}


def _rss_now_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def worker(variant: str, N: int, D: int, V: int, block_size: int, repeats: int) -> dict:
    """Returns timings and RSS of one variant, run in this (fresh) process."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    r = np.random.default_rng(0)
    h = jnp.asarray(r.normal(size=(N, D)), jnp.float32)
    w = jnp.asarray(r.normal(size=(D, V)) / np.sqrt(D), jnp.float32)
    y = jnp.asarray(r.integers(0, V, size=N), jnp.int32)
    f = _grad_fn(variant, block_size).lower(h, w, y).compile()
    jax.block_until_ready((h, w, y))
    base = _rss_now_mib()
    loss, _ = jax.block_until_ready(f(h, w, y))  # warm-up
    walls, cpus = [], []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        jax.block_until_ready(f(h, w, y))
        walls.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux
    return {"variant": variant, "N": N, "D": D, "V": V, "block_size": block_size, "loss": float(loss),
            "wall_s": min(walls), "cpu_s": min(cpus), "peak_rss_mib": peak, "base_rss_mib": base,
            "rss_delta_mib": peak - base}


def run_in_subprocess(variant, N, D, V, block_size, repeats) -> dict:
    """Returns the worker's result from a fresh Python process (so its peak RSS is its own)."""
    cmd = [sys.executable, __file__, "--worker", variant, str(N), str(D), str(V), str(block_size), str(repeats)]
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])


def table(rows: list[dict]) -> str:
    """Returns the results as a markdown table with ratios against naive."""
    lines = ["| V | variant | block | temp MiB | peak RSS MiB | RSS delta MiB | wall s | cpu s | "
             "temp vs naive | RSS delta vs naive | wall vs naive | cpu vs naive | loss |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    naive = {r["V"]: r for r in rows if r["variant"] == "naive"}
    for r in rows:
        n = naive.get(r["V"])
        ratio = lambda k, inv=False: (  # noqa: E731
            "" if n is None or n is r or not r.get(k) or not n.get(k) else
            (f"{n[k] / r[k]:.1f}x less" if inv else f"{r[k] / n[k]:.2f}x"))
        block = r["block_size"] if r["variant"] == "cce" else ""
        lines.append(
            f"| {r['V']} | {r['variant']} | {block} | {r['temp_mib']:.0f} | {r.get('peak_rss_mib', float('nan')):.0f} | "
            f"{r.get('rss_delta_mib', float('nan')):.0f} | {r.get('wall_s', float('nan')):.2f} | "
            f"{r.get('cpu_s', float('nan')):.2f} | {ratio('temp_mib', True)} | {ratio('rss_delta_mib', True)} | "
            f"{ratio('wall_s')} | {ratio('cpu_s')} | {r.get('loss', float('nan')):.4f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="N=2048, D=256, V in {8192, 32768}")
    p.add_argument("--n", type=int, default=None)
    p.add_argument("--d", type=int, default=None)
    p.add_argument("--vocab", type=str, default=None, help="comma-separated vocabulary sizes")
    p.add_argument("--block-size", type=int, default=None, help="cce block size (default: tokjax's default)")
    p.add_argument("--variants", type=str, default=",".join(VARIANTS))
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--sweep", type=str, default=None, help="comma-separated cce block sizes to compare")
    p.add_argument("--memory-only", action="store_true", help="compiled memory analysis only (no runs)")
    p.add_argument("--json", type=str, default=None, help="also write the rows to this JSON file")
    p.add_argument("--worker", nargs=6, help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.worker:
        v, N, D, V, bs, rep = args.worker
        print(json.dumps(worker(v, int(N), int(D), int(V), int(bs), int(rep))))
        return 0

    from tokjax.losses import DEFAULT_BLOCK_SIZE

    N = args.n or (2048 if args.quick else 8192)
    D = args.d or (256 if args.quick else 512)
    vocabs = [int(v) for v in (args.vocab or ("8192,32768" if args.quick else "32768,131072")).split(",")]
    bs = args.block_size or DEFAULT_BLOCK_SIZE
    variants = [v for v in args.variants.split(",") if v]
    jobs = [(v, V, bs) for V in vocabs for v in variants]
    if args.sweep:
        jobs = [("cce", V, int(b)) for V in vocabs for b in args.sweep.split(",")] + \
               [(v, V, bs) for V in vocabs for v in variants if v != "cce"]
    try:
        load = os.getloadavg()[0]
    except OSError:
        load = float("nan")
    print(f"# cross-entropy loss+grad, float32, CPU ({os.cpu_count()} cores), N={N}, D={D}; "
          f"load average at start {load:.1f}", flush=True)
    rows = []
    for variant, V, b in jobs:
        row = {"variant": variant, "V": V, "N": N, "D": D, "block_size": b}
        row.update(compiled_memory(variant, N, D, V, b))
        if not args.memory_only:
            row.update(run_in_subprocess(variant, N, D, V, b, args.repeats))
        rows.append(row)
        print(f"  {variant:6s} V={V:7d} block={b:5d}: temp {row['temp_mib']:.0f} MiB"
              + ("" if args.memory_only else
                 f", peak RSS {row['peak_rss_mib']:.0f} MiB (+{row['rss_delta_mib']:.0f}), "
                 f"wall {row['wall_s']:.2f} s, cpu {row['cpu_s']:.2f} s"), flush=True)
    print()
    print(table(rows))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
