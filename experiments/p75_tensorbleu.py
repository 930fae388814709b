"""P75 TensorBLEU: vectorized per-sentence BLEU on token ids gives the standard scores, much faster.

Paper claim (Filipek 2025, arXiv 2510.05485): per-sentence BLEU on batches of token ids, computed
on the accelerator with a compact batch-specific n-gram dictionary (``torch.unique``), gives the
BLEU of NLTK's ``sentence_bleu`` and is over 13x faster than NLTK's loop on the CPU with a
consumer GPU (T4) and over 40x with an A100.

Three claims, three rows (each Rule declared below, before anything runs):

* ``exact``: :func:`tokjax.metrics.tensorbleu.tensor_sentence_bleu` / ``tensor_corpus_bleu``
  equal NLTK's ``sentence_bleu`` / ``corpus_bleu`` for all four smoothings (NLTK method0-3 =
  "none", "floor", "add-k", "exp") and sacrebleu's ``BLEU(tokenize="none")`` sentence and corpus
  scores (where sacrebleu is installed; it is the ``bench`` extra). Per data seed, three regimes:
  small vocabulary (3-8 ids) with variable lengths (0..T) and 1-3 references with absent slots;
  vocabulary 32k with noisy copies of the first reference; the same with candidates of >= 4
  tokens, 1-3 references all present, compared with sacrebleu too (sacrebleu's effective order
  and NLTK differ on shorter sentences, a convention, not an error). ``RULE_EXACT``: the largest
  |TensorBLEU - reference| over every sentence, smoothing and reference must stay below 1e-6 on
  every seed.
* ``cpu-speed``: TensorBLEU jitted by XLA on the CPU against the NLTK loop on the CPU: random
  "model outputs" (vocabulary 32k; each candidate its reference with ~30% of the tokens replaced,
  so every n-gram order matches somewhere), one reference, smoothing method1 ("floor"); best of 3
  timings after compilation, including the device->host copy of the scores; NLTK gets the lists of
  Python ints ready-made (conversion not timed, which favours NLTK). ``RULE_CPU``: NLTK seconds /
  TensorBLEU seconds at the largest B x L run must exceed 1 on every data seed. The paper makes no
  CPU claim; this row says whether the method pays off without an accelerator.
* ``gpu-speed`` (the paper's headline): the same timing with TensorBLEU on a GPU. Measured only when
  JAX sees a GPU when the experiment runs (``RULE_GPU``: speed-up over NLTK-on-CPU above 13x at the
  largest B x L on every data seed); otherwise the row is ``untested-here``.
"""

from __future__ import annotations

import os
import sys
import time
import warnings
from pathlib import Path

if __package__ in (None, ""):  # run as `python experiments/p75_tensorbleu.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from experiments._harness import Row, Rule, run_cli  # noqa: E402

RULE_EXACT = Rule(metric="max |TensorBLEU - NLTK/sacrebleu| over all sentences, smoothings and regimes",
                  higher_is_better=False, threshold=-1e-6, seeds=(0, 1, 2), quick_seeds=(0,),
                  reported="tensor_sentence_bleu and tensor_corpus_bleu, all four smoothings, fixed in advance")
RULE_CPU = Rule(metric="speed-up of jitted TensorBLEU (XLA CPU) over the NLTK sentence_bleu loop at the largest B x L",
                higher_is_better=True, threshold=0.0, seeds=(0, 1, 2), quick_seeds=(0,),
                reported="jitted tensor_sentence_bleu, smoothing 'floor' (NLTK method1), fixed in advance")
RULE_GPU = Rule(metric="speed-up of jitted TensorBLEU (GPU) over the NLTK sentence_bleu loop (CPU) at the largest B x L",
                higher_is_better=True, threshold=12.0, seeds=(0, 1, 2), quick_seeds=(0,),
                reported="jitted tensor_sentence_bleu, smoothing 'floor'; the paper's >13x (T4)")

VOCAB = 32_000
QUICK_SHAPES = ((32, 256), (128, 256))
FULL_SHAPES = ((32, 256), (256, 256), (32, 1024), (256, 1024))
SMOOTHINGS = ("none", "floor", "add-k", "exp")


# ---------------------------------------------------------------- exactness
def _nltk():
    from nltk.translate.bleu_score import SmoothingFunction, corpus_bleu, sentence_bleu

    sf = SmoothingFunction()
    methods = {"none": sf.method0, "floor": sf.method1, "add-k": sf.method2, "exp": sf.method3}
    return sentence_bleu, corpus_bleu, methods


def exact_batch(seed: int, regime: str, b: int = 48):
    """Returns (cand [B, T], refs [B, R, T'], cand_len [B], ref_len [B, R]) int32 for one exactness regime.

    "small": vocabulary 3-8, lengths 0..T, 1-3 references with absent (length-0) slots;
    "large": vocabulary 32k, candidates noisy copies of the first reference, lengths 0..T;
    "sacre": like "large" but candidates of >= 4 tokens and every reference present.
    """
    import numpy as np

    rng = np.random.default_rng(1000 * seed + {"small": 0, "large": 1, "sacre": 2}[regime])
    r = int(rng.integers(1, 4))
    t, t_ref = (24, 28) if regime == "small" else (64, 72)
    vocab = int(rng.integers(3, 9)) if regime == "small" else VOCAB
    refs = rng.integers(1, vocab + 1, (b, r, t_ref)).astype(np.int32)
    cand = rng.integers(1, vocab + 1, (b, t)).astype(np.int32)
    if regime != "small":
        cand = np.where(rng.random((b, t)) < 0.25, cand, refs[:, 0, :t])
    low = 4 if regime == "sacre" else 0
    cand_len = rng.integers(low, t + 1, b).astype(np.int32)
    ref_len = rng.integers(0 if regime != "sacre" else 1, t_ref + 1, (b, r)).astype(np.int32)
    ref_len[:, 0] = np.maximum(ref_len[:, 0], 1)  # every sentence has at least one reference
    return cand, refs, cand_len, ref_len


def exact_diffs(seed: int) -> tuple[dict[str, float], dict[str, float]]:
    """Returns ({"<reference> <level> <regime>": max |TensorBLEU - reference|} over the four smoothings,
    {regime: mean NLTK "floor" sentence BLEU}, which shows the comparison is not between zeros)."""
    import jax
    import numpy as np

    from tokjax.metrics.tensorbleu import tensor_corpus_bleu, tensor_sentence_bleu

    sentence_bleu, corpus_bleu, methods = _nltk()
    try:
        from sacrebleu.metrics import BLEU
    except ImportError:  # the bench extra; the NLTK comparison still runs
        BLEU = None
    sent = jax.jit(tensor_sentence_bleu, static_argnames=("smoothing",))
    corp = jax.jit(tensor_corpus_bleu, static_argnames=("smoothing",))
    out: dict[str, float] = {}
    level: dict[str, float] = {}
    for regime in ("small", "large", "sacre"):
        cand, refs, cand_len, ref_len = exact_batch(seed, regime)
        hyps = [cand[i, :cand_len[i]].tolist() for i in range(len(cand))]
        references = [[refs[i, j, :ref_len[i, j]].tolist() for j in range(refs.shape[1]) if ref_len[i, j] > 0]
                      for i in range(len(cand))]
        kw = dict(candidate_lengths=cand_len, reference_lengths=ref_len)
        for smoothing in SMOOTHINGS:
            ours = np.asarray(sent(cand, refs, smoothing=smoothing, **kw), np.float64)
            ours_corpus = float(corp(cand, refs, smoothing=smoothing, **kw))
            with warnings.catch_warnings():  # NLTK warns on zero counts, which the regimes contain on purpose
                warnings.simplefilter("ignore")
                want = np.array([sentence_bleu(rs, h, smoothing_function=methods[smoothing])
                                 for rs, h in zip(references, hyps)])
                want_corpus = corpus_bleu(references, hyps, smoothing_function=methods[smoothing])
            if smoothing == "floor":
                level[regime] = float(want.mean())
            key = f"NLTK sentence {regime}"
            out[key] = max(out.get(key, 0.0), float(np.abs(ours - want).max()))
            key = f"NLTK corpus {regime}"
            out[key] = max(out.get(key, 0.0), abs(ours_corpus - want_corpus))
            if regime == "sacre" and BLEU is not None:
                words = lambda ids: " ".join(map(str, ids))  # noqa: E731 -- sacrebleu scores whitespace-split words
                sb = BLEU(tokenize="none", smooth_method=smoothing, effective_order=True)
                want_sb = np.array([sb.sentence_score(words(h), [words(x) for x in rs]).score / 100
                                    for rs, h in zip(references, hyps)])
                streams = [[words(rs[j]) for rs in references] for j in range(refs.shape[1])]
                want_sb_corpus = BLEU(tokenize="none", smooth_method=smoothing).corpus_score(
                    [words(h) for h in hyps], streams).score / 100
                key = "sacrebleu sentence"
                out[key] = max(out.get(key, 0.0), float(np.abs(ours - want_sb).max()))
                key = "sacrebleu corpus"
                out[key] = max(out.get(key, 0.0), abs(ours_corpus - want_sb_corpus))
    return out, level


# ---------------------------------------------------------------- speed
def make_batch(b: int, length: int, seed: int = 0):
    """Returns (candidates [B, L], references [B, 1, L]) int32 numpy arrays, candidates noisy copies."""
    import numpy as np

    rng = np.random.default_rng([seed, b, length])
    refs = rng.integers(1, VOCAB, (b, 1, length), dtype=np.int32)
    noise = rng.integers(1, VOCAB, (b, length), dtype=np.int32)
    cand = np.where(rng.random((b, length)) < 0.3, noise, refs[:, 0])
    return cand, refs


def time_tensorbleu(cand, refs, device, repeats: int = 3) -> tuple[float, "object"]:
    """Returns (best seconds of `repeats` after compiling, scores) of jitted TensorBLEU on `device`."""
    import jax
    import numpy as np

    from tokjax.metrics.tensorbleu import tensor_sentence_bleu

    b, length = cand.shape
    lengths, ref_lengths = np.full((b,), length, np.int32), np.full((b, 1), length, np.int32)
    f = jax.jit(lambda c, r, cl, rl: tensor_sentence_bleu(
        c, r, candidate_lengths=cl, reference_lengths=rl, smoothing="floor"))
    args = [jax.device_put(x, device) for x in (cand, refs, lengths, ref_lengths)]
    scores = np.asarray(f(*args))  # compiles
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        np.asarray(f(*args))  # the device->host copy is part of the cost a training loop pays
        times.append(time.perf_counter() - t)
    return min(times), scores


def time_nltk(cand, refs, repeats: int = 3) -> tuple[float, "object"]:
    """Returns (best seconds of `repeats`, scores) of NLTK's sentence_bleu loop (method1) over Python int lists."""
    import numpy as np

    sentence_bleu, _, methods = _nltk()
    hyps, references = cand.tolist(), [[r] for r in refs[:, 0].tolist()]
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            want = [sentence_bleu(rs, h, smoothing_function=methods["floor"]) for rs, h in zip(references, hyps)]
        times.append(time.perf_counter() - t)
    return min(times), np.asarray(want)


def run(quick: bool) -> list[Row]:
    import jax
    import numpy as np

    shapes = QUICK_SHAPES if quick else FULL_SHAPES
    largest = max(shapes, key=lambda s: s[0] * s[1])
    cpu = jax.devices("cpu")[0]
    gpus = [d for d in jax.devices() if d.platform in ("gpu", "cuda", "rocm")]

    # ---- exact
    seeds = RULE_EXACT.run_seeds(quick)
    both = {s: exact_diffs(s) for s in seeds}
    per_seed = {s: d for s, (d, _) in both.items()}
    level = {r: sum(lv[r] for _, lv in both.values()) / len(seeds) for r in next(iter(both.values()))[1]}
    worst = [max(d.values()) for d in per_seed.values()]
    by_ref = {k: max(d[k] for d in per_seed.values()) for k in next(iter(per_seed.values()))}
    have_sacre = any(k.startswith("sacrebleu") for k in by_ref)
    print("exact: " + ", ".join(f"{k} {v:.1e}" for k, v in by_ref.items()), flush=True)
    exact = Row(
        pid="P75", claim_id="exact",
        claim="TensorBLEU's per-sentence (and corpus) BLEU on token ids equals the standard implementation's "
              "(NLTK sentence_bleu / corpus_bleu; sacrebleu)",
        setting=f"{jax.default_backend()} float32; smoothings {list(SMOOTHINGS)} (NLTK method0-3); per seed 3 regimes "
                f"of 48 sentences: vocab 3-8 with lengths 0..24 and 1-3 refs with absent slots, vocab 32k noisy copies "
                f"lengths 0..64, vocab 32k lengths >= 4 all refs present" + (" (also vs sacrebleu)" if have_sacre else ""),
        baseline_name="exact agreement (difference 0)",
        baseline_value=0.0,
        method_value=float(f"{max(worst):.3g}"),
        metric="max |TensorBLEU - reference BLEU| over all sentences, smoothings, regimes (lower is better; < 1e-6 counts)",
        verdict=RULE_EXACT.verdict(worst, [0.0] * len(seeds), seeds=seeds),
        note="max |diff| per reference: " + ", ".join(f"{k} {v:.1e}" for k, v in by_ref.items())
             + ("" if have_sacre else "; sacrebleu not installed (pip install sacrebleu, the bench extra): NLTK only")
             + "; sacrebleu compared on candidates of >= 4 tokens only (its effective order differs from NLTK below); "
             + "mean NLTK method1 sentence BLEU per regime (the scores compared are not all 0): "
             + ", ".join(f"{r} {v:.3f}" for r, v in level.items()),
    )

    # ---- speed: every shape once (data seed 0), the largest shape on every declared seed
    seeds = RULE_CPU.run_seeds(quick)
    loads, timings = [], {}
    for shape in shapes:
        for s in (seeds if shape == largest else seeds[:1]):
            cand, refs = make_batch(*shape, seed=s)
            loads.append(os.getloadavg()[0])
            t_nltk, want = time_nltk(cand, refs)
            t_cpu, got = time_tensorbleu(cand, refs, cpu)
            entry = {"nltk": t_nltk, "cpu": t_cpu, "diff": float(np.abs(got - want).max())}
            if gpus:
                entry["gpu"], got_gpu = time_tensorbleu(cand, refs, gpus[0])
                entry["diff"] = max(entry["diff"], float(np.abs(got_gpu - want).max()))
            timings[shape, s] = entry
            print(f"B={shape[0]:4d} L={shape[1]:5d} seed {s}: NLTK {t_nltk:.4f}s  TensorBLEU cpu {t_cpu:.4f}s "
                  f"({t_nltk / t_cpu:.2f}x)" + (f", gpu {entry['gpu']:.4f}s ({t_nltk / entry['gpu']:.1f}x)" if gpus else "")
                  + f"  max|diff| {entry['diff']:.1e}  load {loads[-1]:.1f}", flush=True)
    load = f"load average (1 min) {min(loads):.1f}-{max(loads):.1f} on 2 cores shared with other jobs"
    shape_txt = f"{largest[0]}x{largest[1]}"
    big = [timings[largest, s] for s in seeds]
    cpu_ratio = [e["nltk"] / e["cpu"] for e in big]
    ratios = ", ".join(f"{b}x{length}: {timings[(b, length), seeds[0]]['nltk'] / timings[(b, length), seeds[0]]['cpu']:.2f}x"
                       for b, length in shapes)
    common = (f"vocab 32k, 1 ref, method1 ('floor'), candidates = reference with 30% of tokens replaced; B x L in "
              f"{list(shapes)} (data seed {seeds[0]}), the largest on seeds {list(seeds)}; best of 3, compile excluded")
    speed_diff = max(e["diff"] for e in timings.values())
    cpu_row = Row(
        pid="P75", claim_id="cpu-speed",
        claim="Vectorised TensorBLEU is faster than NLTK's per-sentence loop on the CPU alone (XLA on CPU vs NLTK; "
              "the paper's speed claim is GPU vs CPU)",
        setting=f"XLA CPU vs NLTK on CPU; {common}; {load}",
        baseline_name="NLTK sentence_bleu loop (speed-up 1)",
        baseline_value=1.0,
        method_value=round(float(np.mean(cpu_ratio)), 3),
        metric=f"NLTK seconds / TensorBLEU seconds at B x L = {shape_txt}, mean over seeds (higher is better)",
        verdict=RULE_CPU.verdict(cpu_ratio, [1.0] * len(seeds), seeds=seeds),
        note=(f"speed-ups per shape (seed {seeds[0]}): {ratios}; at {shape_txt} per seed: "
              + ", ".join(f"NLTK {e['nltk']:.3f}s vs TensorBLEU {e['cpu']:.3f}s" for e in big)
              + f"; max |TensorBLEU - NLTK| in the timed batches {speed_diff:.1e}; {load}"),
    )

    if gpus:
        gpu_ratio = [e["nltk"] / e["gpu"] for e in big]
        gpu_row = Row(
            pid="P75", claim_id="gpu-speed",
            claim="TensorBLEU on a GPU is over 13x faster than NLTK's sentence_bleu loop on the CPU (T4; over 40x on A100)",
            setting=f"{gpus[0].device_kind} vs NLTK on CPU; {common}; {load}",
            baseline_name="NLTK sentence_bleu loop on the CPU (speed-up 1)",
            baseline_value=1.0,
            method_value=round(float(np.mean(gpu_ratio)), 2),
            metric=f"NLTK seconds / TensorBLEU-on-GPU seconds at B x L = {shape_txt} (higher is better; > 13 counts)",
            verdict=RULE_GPU.verdict(gpu_ratio, [1.0] * len(seeds), seeds=seeds),
            note="speed-ups per shape: " + ", ".join(
                f"{b}x{length}: {timings[(b, length), seeds[0]]['nltk'] / timings[(b, length), seeds[0]]['gpu']:.1f}x"
                for b, length in shapes) + f"; {load}",
        )
    else:
        gpu_row = Row(
            pid="P75", claim_id="gpu-speed",
            claim="TensorBLEU on a GPU is over 13x faster than NLTK's sentence_bleu loop on the CPU (T4; over 40x on A100)",
            setting=f"no GPU visible to JAX (backend {jax.default_backend()}); the experiment measures this row "
                    "whenever one is",
            baseline_name="NLTK sentence_bleu loop on the CPU",
            baseline_value=None,
            method_value=None,
            metric=f"NLTK seconds / TensorBLEU-on-GPU seconds at B x L = {shape_txt} (higher is better; > 13 counts)",
            verdict="untested-here",
            note="needs a GPU (the paper: T4 and A100); none was available when this run was made. On the CPU the "
                 "same code runs at the cpu-speed row's speed-up, which says nothing about the GPU's",
        )
    return [exact, cpu_row, gpu_row]


if __name__ == "__main__":
    raise SystemExit(run_cli(run))
