"""Benchmark: does weight-only int8 speed up a decode-sized matvec under XLA on this platform?

Batch-1 decoding streams every weight once per token, so int8 weights (4x fewer bytes than f32)
could be up to 4x faster, *if* the dequantisation (convert, scale) fuses into the dot. This
times, on SmolLM2-135M's largest matrix (576 x 49152, the tied head) and one MLP matrix
(576 x 1536), a jitted f32 matvec against the same product with int8 weights and per-column
scales through tokjax's kernel (``tokjax.model.quant``, an XLA FFI call on CPU) and through plain
XLA (`(x @ w.astype(f32)) * scale`), an int8 x int8 dot with f32 accumulation, and bf16 weights. It reports milliseconds and the ratio to f32.

    python benchmarks/int8_matvec.py            # ~20 s on 2 cores
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks._common import machine, timeit  # noqa: E402


def variants():
    """Returns {name: fn(x, w_f32, w_int8, scale)} of the matvec variants compared."""
    import jax
    import jax.numpy as jnp

    def int8_dot(x, w, q, s):
        xq = jnp.round(x / jnp.max(jnp.abs(x)) * 127).astype(jnp.int8)
        acc = jax.lax.dot_general(xq, q, (((1,), (0,)), ((), ())), preferred_element_type=jnp.int32)
        return acc.astype(jnp.float32) * s * (jnp.max(jnp.abs(x)) / 127)

    from tokjax.model.quant import Int8Weight, int8_matmul

    def kernel(x, w, q, s):  # tokjax's path (the FFI kernel on CPU); its [N, K] layout is made once, outside
        return int8_matmul(x, Int8Weight(q, s, (x.shape[1],), (q.shape[0],)))

    return {
        "f32 weights": lambda x, w, q, s: x @ w,
        "int8 weights, tokjax kernel": kernel,
        "int8 weights, dequantised": lambda x, w, q, s: (x @ q.astype(jnp.float32)) * s,
        "int8 x int8, int32 accumulate": int8_dot,
        "bf16 weights": lambda x, w, q, s: jnp.dot(x.astype(jnp.bfloat16), w.astype(jnp.bfloat16),
                                                  preferred_element_type=jnp.float32),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", nargs="*", default=["576x49152", "576x1536"])
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args(argv)
    import jax
    import jax.numpy as jnp
    import numpy as np

    print(f"# {machine()}; jax backend {jax.default_backend()}")
    print(f"{'shape':>10} {'variant':>30} {'ms':>8} {'vs f32':>7}")
    rng = np.random.default_rng(0)
    for shape in args.shapes:
        k, n = map(int, shape.split("x"))
        x = jnp.asarray(rng.standard_normal((1, k)), jnp.float32)
        w = jnp.asarray(rng.standard_normal((k, n)), jnp.float32)
        scale = jnp.max(jnp.abs(w), axis=0) / 127
        q = jnp.round(w / scale).astype(jnp.int8)
        q_rows = jnp.asarray(q.T)  # output-major, as tokjax.model.quant stores it
        base = None
        for name, fn in variants().items():
            f = jax.jit(fn)
            b = w.astype(jnp.bfloat16) if name.startswith("bf16") else w
            qq, ss = (q_rows, scale[:, None]) if "kernel" in name else (q, scale)
            jax.block_until_ready(f(x, b, qq, ss))
            ms = 1e3 * float(np.median(timeit(lambda: jax.block_until_ready(f(x, b, qq, ss)), args.repeats)))
            base = ms if base is None else base
            print(f"{shape:>10} {name:>30} {ms:8.3f} {ms / base:6.2f}x", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
