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
    out = dict(nltk_s=t_nltk, tensorbleu_s=t_ours, speedup=t_nltk / t_ours,
               max_abs_diff=float(np.abs(ours - want).max()))
    out.update(compare_corpus(cand, refs, repeats))
    return out


def compare_corpus(cand, refs, repeats: int) -> dict:
    """Returns corpus BLEU seconds of sacrebleu (tokenize none, floor smoothing, prebuilt strings) and of
    jitted ``tensor_corpus_bleu`` on the same ids, their ratio and the score gap; {} without sacrebleu."""
    import time

    import jax
    import numpy as np

    from tokjax.metrics.tensorbleu import tensor_corpus_bleu

    try:
        from sacrebleu.metrics import BLEU
    except ImportError:  # the bench extra
        return {}
    hyps = [" ".join(map(str, row)) for row in cand.tolist()]
    streams = [[" ".join(map(str, row)) for row in refs[:, 0].tolist()]]
    metric = BLEU(tokenize="none", smooth_method="floor")
    b, length = cand.shape
    lengths, ref_lengths = np.full((b,), length, np.int32), np.full((b, 1), length, np.int32)
    f = jax.jit(lambda c, r, cl, rl: tensor_corpus_bleu(c, r, candidate_lengths=cl, reference_lengths=rl,
                                                        smoothing="floor"))
    ours = float(f(cand, refs, lengths, ref_lengths))
    t_ours, t_sacre = [], []
    for _ in range(repeats):
        t = time.perf_counter()
        float(f(cand, refs, lengths, ref_lengths))
        t_ours.append(time.perf_counter() - t)
        t = time.perf_counter()
        want = metric.corpus_score(hyps, streams).score / 100
        t_sacre.append(time.perf_counter() - t)
    return dict(sacre_s=min(t_sacre), corpus_s=min(t_ours), corpus_speedup=min(t_sacre) / min(t_ours),
                corpus_diff=abs(ours - want))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, nargs="*", default=[32, 256])
    parser.add_argument("--length", type=int, nargs="*", default=[256, 1024])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    import jax

    print(f"# {machine()}; jax backend {jax.default_backend()}")
    print(f"{'B':>5} {'L':>6} {'NLTK s':>9} {'TensorBLEU s':>13} {'speedup':>8} {'max|diff|':>10}"
          f" | {'sacrebleu corpus s':>18} {'TensorBLEU corpus s':>19} {'speedup':>8} {'|diff|':>8}")
    for length in args.length:
        for b in args.batch:
            r = compare(b, length, args.repeats)
            print(f"{b:5d} {length:6d} {r['nltk_s']:9.4f} {r['tensorbleu_s']:13.4f} "
                  f"{r['speedup']:7.2f}x {r['max_abs_diff']:10.1e}" + (
                      f" | {r['sacre_s']:18.4f} {r['corpus_s']:19.4f} {r['corpus_speedup']:7.2f}x "
                      f"{r['corpus_diff']:8.1e}" if "sacre_s" in r else " | sacrebleu not installed"), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
