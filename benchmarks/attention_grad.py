"""Causal attention forward + backward on CPU (the training path): tokjax's kernels vs XLA and torch.

    python benchmarks/attention_grad.py            # the small preset's shape and SmolLM2-135M's at 1024-2048 tokens
    python benchmarks/attention_grad.py --quick    # one small shape

Times one float32 ``vjp`` of causal self-attention (output and the cotangent's dq, dk, dv), grouped-query heads,
for: tokjax's ``causal_attend`` (on CPU the fused forward kernel and the backward kernel of
``tokjax.model.causal_kernel``); tokjax's pure-JAX query blocks (what ran before the kernels, and what
``TOKJAX_ATTENTION_KERNEL=0`` selects); ``jax.nn.dot_product_attention(is_causal=True)`` (XLA's implementation);
and torch's ``scaled_dot_product_attention(is_causal=True, enable_gqa=True)`` with ``backward`` (1 and 2 torch
threads, the faster kept). Best of ``--repeats`` after a warm-up; ratios are the other's time / tokjax's.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, timeit  # noqa: E402

FULL = [(8, 511, 8, 4, 32), (1, 1024, 9, 3, 64), (1, 2048, 9, 3, 64), (4, 512, 9, 3, 64)]
QUICK = [(2, 256, 4, 2, 32)]


def jax_arms(B: int, T: int, H: int, KV: int, D: int, repeats: int) -> dict:
    """Returns {arm: best seconds} of the JAX arms at one shape."""
    import jax
    import jax.numpy as jnp

    from tokjax.model import attention as A

    ks = jax.random.split(jax.random.key(0), 4)
    q, do = (jax.random.normal(k, (B, T, H, D), jnp.float32) for k in (ks[0], ks[3]))
    k, v = (jax.random.normal(kk, (B, T, KV, D), jnp.float32) for kk in (ks[1], ks[2]))

    def vjp_of(fn):
        def run(q, k, v, do):
            out, back = jax.vjp(fn, q, k, v)
            return out, back(do)
        return jax.jit(run)

    arms = {"tokjax": A.causal_attend, "query blocks": lambda q, k, v: A._causal_blocks(q, k, v),
            "jax.nn.dot_product_attention": lambda q, k, v: jax.nn.dot_product_attention(q, k, v, is_causal=True)}
    out = {}
    for name, fn in arms.items():
        f = vjp_of(fn)
        jax.block_until_ready(f(q, k, v, do))
        out[name] = min(timeit(lambda: jax.block_until_ready(f(q, k, v, do)), repeats))
    return out


def torch_arm(B: int, T: int, H: int, KV: int, D: int, repeats: int) -> float | None:
    """Best seconds of torch SDPA forward + backward (1 or 2 threads), or None without torch."""
    try:
        import torch
        import torch.nn.functional as F
    except ImportError:
        return None
    g = torch.Generator().manual_seed(0)
    q = torch.randn(B, H, T, D, generator=g, requires_grad=True)
    k = torch.randn(B, KV, T, D, generator=g, requires_grad=True)
    v = torch.randn(B, KV, T, D, generator=g, requires_grad=True)
    do = torch.randn(B, H, T, D, generator=g)

    def run():
        q.grad = k.grad = v.grad = None
        F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True).backward(do)

    best = float("inf")
    for threads in (1, 2):
        torch.set_num_threads(threads)
        run()
        best = min(best, min(timeit(run, repeats)))
    return best


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    shapes = QUICK if args.quick else FULL
    print(f"# causal attention forward + backward, float32  ({machine()})")
    print("# best of", args.repeats, "after a warm-up; x = that arm's time / tokjax's")
    print(f"{'B x T, H/KV heads x D':24s} {'tokjax ms':>10s} {'query blocks':>16s} {'jax.nn.dpa':>16s} {'torch SDPA':>16s}")
    rows = []
    for B, T, H, KV, D in shapes:
        t = jax_arms(B, T, H, KV, D, args.repeats)
        t["torch SDPA"] = torch_arm(B, T, H, KV, D, args.repeats)
        base = t["tokjax"]
        cells = [f"{1e3 * t[a]:7.1f} {t[a] / base:5.2f}x" if t[a] else f"{'-':>16s}"
                 for a in ("query blocks", "jax.nn.dot_product_attention", "torch SDPA")]
        print(f"{f'{B} x {T}, {H}/{KV} x {D}':24s} {1e3 * base:10.1f} " + " ".join(f"{c:>16s}" for c in cells))
        rows.append({"shape": [B, T, H, KV, D], "seconds": t})
    if args.json:
        args.json.write_text(json.dumps({"machine": machine(), "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
