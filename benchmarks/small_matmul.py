"""Benchmark: decode-sized float32 matmuls (M = 1-16 activation rows) streaming weights from memory.

A batched decode step multiplies B rows by every weight once; its speed is the rate at which the
weights stream. This times, on SmolLM2-135M's matrices (q/k/v fused 576x960, gate/up fused
576x3072, down 1536x576, the tied head 576x49152), M x K times K x N products over enough distinct
copies of each matrix that they come from DRAM, not cache (a real step reads 540 MB), for:

- XLA dot, weights [K, N] (tokjax's layout before the row layout; the default of any JAX model),
- tokjax ``row_matmul`` on output-major rows [N, K] (the FFI kernel on CPU, ``tokjax.model.row_weights``),
- XLA dot on the same rows (the path GPU/TPU and prefill take),
- torch.matmul, 1 and 2 threads (what a transformers model runs).

It prints GB/s of weights streamed and each arm's speed relative to the XLA [K, N] dot, measured
interleaved in one run.

    python benchmarks/small_matmul.py              # M in 1 2 4 8 16, ~1-2 min on 2 cores
    python benchmarks/small_matmul.py --rows 8 --copies 4
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks._common import alternate_timings, machine, positive_int  # noqa: E402

SHAPES = ("576x960", "576x3072", "1536x576", "576x49152")


def arms(k: int, n: int, copies: int, rng):
    """Returns ({name: fn(x) that blocks}, x maker) for ``copies`` distinct [K, N] weights."""
    import jax
    import jax.numpy as jnp

    from tokjax.model.row_weights import RowWeight, row_matmul

    ws = [rng.standard_normal((k, n)).astype("float32") for _ in range(copies)]
    kn = [jnp.asarray(w) for w in ws]
    rows = [jnp.asarray(w.T.copy()) for w in ws]
    plain = jax.jit(lambda x, ws: [x @ w for w in ws])
    tok = jax.jit(lambda x, rs: [row_matmul(x, RowWeight(r, (k,), (n,))) for r in rs])
    xla_rows = jax.jit(lambda x, rs: [jnp.einsum("mk,nk->mn", x, r) for r in rs])
    out = {
        "XLA dot [K,N]": lambda x: jax.block_until_ready(plain(x, kn)),
        "tokjax row_matmul": lambda x: jax.block_until_ready(tok(x, rows)),
        "XLA dot on rows": lambda x: jax.block_until_ready(xla_rows(x, rows)),
    }
    try:
        import torch

        tw = [torch.from_numpy(w) for w in ws]

        def torch_arm(threads):
            def run(x):
                torch.set_num_threads(threads)
                xt = torch.from_numpy(x)
                with torch.no_grad():
                    return [xt @ w for w in tw]
            return run

        out["torch 1 thread"] = torch_arm(1)
        out["torch 2 threads"] = torch_arm(2)
    except ImportError:
        print("# torch not installed: its arms are skipped")
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", nargs="*", default=list(SHAPES), help="KxN")
    parser.add_argument("--rows", nargs="*", type=positive_int, default=[1, 2, 4, 8, 16])
    parser.add_argument("--copies", type=positive_int, default=None,
                        help="distinct weights per shape (default: enough for 256 MiB, at least 2)")
    parser.add_argument("--repeats", type=positive_int, default=7)
    args = parser.parse_args(argv)
    import jax
    import numpy as np

    from tokjax.model.row_weights import f32_kernel_available

    print(f"# {machine()}; jax backend {jax.default_backend()}; tokjax kernel "
          f"{'built' if f32_kernel_available() else 'UNAVAILABLE (XLA fallback)'}")
    print(f"{'shape':>10} {'M':>3} {'arm':>20} {'ms':>8} {'GB/s':>6} {'vs XLA [K,N]':>12}")
    rng = np.random.default_rng(0)
    for shape in args.shapes:
        k, n = map(int, shape.split("x"))
        copies = args.copies or max(2, (256 << 20) // (4 * k * n))
        calls = arms(k, n, copies, rng)
        for m in args.rows:
            x_np = rng.standard_normal((m, k)).astype("float32")
            x = jax.numpy.asarray(x_np)
            run = {name: (lambda r, f=f, name=name: f(x_np if name.startswith("torch") else x))
                   for name, f in calls.items()}
            for f in run.values():
                f(0)  # compile / warm up
            times = {name: min(ts) for name, ts in alternate_timings(run, args.repeats).items()}
            gb = copies * k * n * 4 / 1e9
            base = times["XLA dot [K,N]"]
            for name, t in times.items():
                print(f"{shape:>10} {m:>3} {name:>20} {t * 1e3:8.3f} {gb / t:6.1f} {base / t:11.2f}x", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
