"""Prefill memory vs sequence length: the fused CPU kernel, causal attention by query blocks, the full [T, T] mask.

    python benchmarks/prefill_memory.py [--lengths 256,512,1024,2048,4096] [--figure docs/figures/prefill_memory.png]

For the SmolLM2-135M shape (30 layers, d=576, 9 heads / 3 KV heads, V=49152) and batch 1, it
compiles ``tokjax.model.prefill`` (the cache-free forward with keys/values taps) three times per
length T: with the default causal mask, which on CPU runs the fused kernel of
``tokjax.model.causal_kernel`` (its scores live in a per-thread buffer of 6 x T floats, outside XLA's temporaries);
the same with that kernel switched off, which runs :func:`tokjax.model.attention.causal_attend`'s
query blocks of ``CAUSAL_BLOCK`` (what GPU/TPU without a fused kernel and differentiation run); and
with the same causal visibility given as an ``Explicit`` [T, T] mask, which runs the full-mask path. It reports XLA's
compiled temporary memory of each (``memory_analysis().temp_size_in_bytes``: no run, no weights;
the compile uses abstract shapes), so the figure is deterministic and independent of machine load.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def temp_mib(cfg, T: int, path: str) -> float:
    """Returns the compiled temporary MiB of a batch-1 forward over T tokens (no logits, keys/values tapped)
    with causal attention by ``path``: "kernel", "blocks" or "full"."""
    from unittest import mock

    import jax
    import jax.numpy as jnp

    from tokjax.model import Explicit, Inputs, Taps, attention, forward, param_shapes

    mask = Explicit(jnp.tril(jnp.ones((T, T), bool))) if path == "full" else None
    applies = attention.causal_kernel_applies if path == "kernel" else (lambda *a: False)

    def f(params, tokens):
        out = forward(params, cfg, Inputs(tokens=tokens), compute_logits=False, mask=mask,
                      taps=Taps(layers="all", sites=("keys", "values")))
        return out.taps["keys"], out.taps["values"]

    shapes = param_shapes(cfg)
    tokens = jax.ShapeDtypeStruct((1, T), jnp.int32)
    with mock.patch.object(attention, "causal_kernel_applies", applies):  # a fresh trace per call
        mem = jax.jit(f).lower(shapes, tokens).compile().memory_analysis()
    return mem.temp_size_in_bytes / 2**20


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lengths", default="256,512,1024,2048,4096")
    ap.add_argument("--quick", action="store_true", help="lengths 256, 512, 1024 only")
    ap.add_argument("--figure", help="also save a plot here (needs matplotlib)")
    args = ap.parse_args(argv)

    from tokjax.model import ModelConfig
    from tokjax.model.attention import CAUSAL_BLOCK

    cfg = ModelConfig(vocab_size=49152, d_model=576, n_layers=30, n_heads=9, n_kv_heads=3, d_ff=1536,
                      rope_theta=1e5, tied_embeddings=True, max_len=8192)
    lengths = [256, 512, 1024] if args.quick else [int(x) for x in args.lengths.split(",")]
    rows = [(T, temp_mib(cfg, T, "kernel"), temp_mib(cfg, T, "blocks"), temp_mib(cfg, T, "full")) for T in lengths]
    print(f"# prefill compiled temporary memory, SmolLM2-135M shape, batch 1, f32 (query block {CAUSAL_BLOCK})")
    print(f"{'T':>6} {'kernel MiB':>11} {'blocked MiB':>12} {'full-mask MiB':>14}")
    for T, k, b, f in rows:
        print(f"{T:>6} {k:>11.1f} {b:>12.1f} {f:>14.1f}")
    if args.figure:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(5, 3.2))
        ax.plot(lengths, [k for _, k, _, _ in rows], "^-", label="fused CPU kernel (default on CPU)")
        ax.plot(lengths, [b for _, _, b, _ in rows], "o-", label=f"query blocks of {CAUSAL_BLOCK}")
        ax.plot(lengths, [f for _, _, _, f in rows], "s--", label="full [T, T] mask")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log", base=2)
        ax.set_xlabel("prompt tokens T")
        ax.set_ylabel("compiled temporary MiB")
        ax.set_title("SmolLM2-135M prefill memory (batch 1, f32)")
        ax.legend(fontsize=8)
        fig.tight_layout()
        Path(args.figure).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(args.figure, dpi=120)
        print(f"figure: {args.figure}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
