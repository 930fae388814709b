"""Benchmark: per-sentence BLEU of a token-id batch, TensorBLEU (P75, jitted) vs NLTK's sentence_bleu loop.

For B in {32, 256} sentences of L in {256, 1024} tokens (vocabulary 32k, one reference, smoothing
method1) it reports the best-of-``--repeats`` seconds of each, the ratio NLTK / TensorBLEU, and the
largest absolute score difference. TensorBLEU is timed after compilation, including the copy of the
scores to the host; NLTK gets ready-made Python int lists. The paper reports >13x on a T4 GPU and
>40x on an A100 against NLTK on the CPU; on a CPU-only machine both run on the CPU.

    python benchmarks/tensorbleu.py                 # 4 shapes, about a minute on 2 cores
    python benchmarks/tensorbleu.py --batch 64 --length 512 --repeats 5
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks._common import machine  # noqa: E402
from experiments.p75_tensorbleu import make_batch, time_nltk, time_tensorbleu  # noqa: E402


def compare(b: int, length: int, repeats: int) -> dict:
    """Returns NLTK's and TensorBLEU's best seconds on one (B, L) batch, their ratio and the largest score gap."""
    import jax
    import numpy as np

    cand, refs = make_batch(b, length)
    t_ours, ours = time_tensorbleu(cand, refs, jax.devices()[0], repeats)
    t_nltk, want = time_nltk(cand, refs, repeats)
    return dict(nltk_s=t_nltk, tensorbleu_s=t_ours, speedup=t_nltk / t_ours,
                max_abs_diff=float(np.abs(ours - want).max()))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, nargs="*", default=[32, 256])
    parser.add_argument("--length", type=int, nargs="*", default=[256, 1024])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    import jax

    print(f"# {machine()}; jax backend {jax.default_backend()}")
    print(f"{'B':>5} {'L':>6} {'NLTK s':>9} {'TensorBLEU s':>13} {'speedup':>8} {'max|diff|':>10}")
    for length in args.length:
        for b in args.batch:
            r = compare(b, length, args.repeats)
            print(f"{b:5d} {length:6d} {r['nltk_s']:9.4f} {r['tensorbleu_s']:13.4f} "
                  f"{r['speedup']:7.2f}x {r['max_abs_diff']:10.1e}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
