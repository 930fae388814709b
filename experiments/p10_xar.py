"""P10 xAR (next-X prediction with Noisy Context Learning): noisy-context cells vs clean-context cells, and xAR
vs continuous raster AR at matched forward passes.

Paper claims (arXiv 2502.20388, abstract): predicting an entity (a cell of tokens) per AR step with Noisy
Context Learning (every entity noised at its own t during training, context included) alleviates exposure
bias; xAR-B beats much larger diffusion models at 20x faster inference. Here: class-conditional 16 x 16
glyphs (``tokjax.data.glyphs``, pixels scaled to [-1, 1]) as an 8 x 8 grid of 2 x 2 patches, i.e. 64
continuous 4-dim tokens; the 2-layer d = 64 shared forward (1-D RoPE on raster positions).

Arms (same model size, data, batch, lr and steps):
* ``noisy cells``: ``tokjax.vision.xar`` with 4 x 4-token cells (K = 4 entities), context noised (paper).
* ``clean cells``: the same with teacher-forced clean context (``context="clean"``: [class, clean, noisy]).
* ``raster AR``: continuous raster AR with MAR's flow head (``tokjax.vision.flow``; width 64, depth 3, 4 t
  draws per pass), 5 Euler head steps per token.
xAR samples with 16 Euler steps per cell: 4 x 16 = 64 forward passes per image (the class token shares the first), as raster AR.
All at guidance 1 (no CFG), temperature 1.

Quality: classifier-feature Frechet distance of 500 (quick) / 1000 (full) samples to 2000 held-out real
16 x 16 glyphs (a ``train_classifier`` MLP trained on 6000 glyphs of its own seed), bootstrap SE, the
real-vs-real floor, class consistency (secondary), as the foundation's protocol (``experiments._vision``).

Rules (declared before anything runs):
* ``noisy-cells``: per seed FD(clean cells) - FD(noisy cells) > 0 (lower is better, threshold 0).
* ``matched-compute``: per seed FD(raster AR, 64 passes) - FD(noisy cells, 64 passes) > 0 (lower is better,
  threshold 0; head evaluations are reported in the note: 320 for raster AR, 1024 token-velocity evals for xAR).
Quick: seed 0, 300 steps per arm (900 in all). Full: seeds 0-2, 1000 steps per arm (9000 in all).
Not run here (open): the entity sweep over token / row, the per-entity error panel (own vs true context), CFG.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as `python experiments/p10_xar.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from experiments import _vision as V  # noqa: E402
from experiments._continuous import (  # noqa: E402
    CLASSES, GRID, PATCH, fd_with_se, glyph_set, model_config, quality, to_images, to_tokens,
)
from experiments._harness import Row, Rule, partial_seeds_run, run_cli  # noqa: E402

XAR_STEPS, HEAD_STEPS, HEAD_WIDTH = 16, 5, 64
RULE = Rule(metric="classifier FD to real glyphs (lower is better)", higher_is_better=False, threshold=0.0,
            seeds=(0, 1, 2), quick_seeds=(0,),
            reported="xAR 4x4-token cells, noisy vs clean context, 16 Euler steps per cell, guidance 1; fixed in "
                     "advance")
MATCHED_RULE = Rule(metric="classifier FD to real glyphs (lower is better)", higher_is_better=False, threshold=0.0,
                    seeds=(0, 1, 2), quick_seeds=(0,),
                    reported="xAR noisy cells (64 passes) vs continuous raster AR with flow head (64 passes, 5 head "
                             "steps), guidance 1; fixed in advance")


def init_params(cfg, seed: int, extra: str):
    import jax

    from tokjax.model.params import init_params as backbone
    from tokjax.vision.flow import continuous_init
    from tokjax.vision.xar import xar_init

    k1, k2 = jax.random.split(jax.random.key(1000 + seed))
    params = dict(backbone(cfg, k1))
    if extra == "xar":
        params[extra] = xar_init(k2, cfg, PATCH * PATCH)
    else:
        params[extra] = continuous_init(k2, cfg, PATCH * PATCH, width=HEAD_WIDTH, depth=3)
    return params


def run(quick: bool) -> list[Row]:
    import jax

    from experiments._common import memo_json
    from tokjax.vision.flow import continuous_ar, continuous_batch_fn, make_flow_loss, sample_continuous
    from tokjax.vision.xar import make_xar_loss, xar_layout, xar_sample

    steps, n = (300, 500) if quick else (1000, 1000)
    imgs, labels = glyph_set(V.TRAIN_N, V.TRAIN_SEED)
    tokens = to_tokens(imgs)
    floor = fd_with_se(glyph_set(n, V.FLOOR_SEED)[0])
    seeds = RULE.run_seeds(quick)
    cfg = model_config()
    layout = xar_layout((GRID, GRID), "cell", 4)
    want = V.sample_labels(n)
    runs = {"noisy": [], "clean": [], "raster": []}

    def one_arm(arm: str, seed: int) -> dict:
        fn = continuous_batch_fn(tokens, labels, num_classes=CLASSES, batch_size=V.BATCH,
                                 class_dropout=V.CLASS_DROPOUT, seed=seed)
        key = lambda s: jax.random.fold_in(jax.random.key(seed), s)  # noqa: E731
        if arm == "raster":
            model, t = V.train_arm(cfg, fn, steps=steps, seed=seed, params=init_params(cfg, seed, "flow"),
                                   loss_fn=make_flow_loss())
            t0 = time.perf_counter()
            strat = continuous_ar(length=GRID * GRID, steps=HEAD_STEPS)
            out = [sample_continuous(model, strat, want[s:s + 250], key(s), num_classes=CLASSES)
                   for s in range(0, n, 250)]
        else:
            model, t = V.train_arm(cfg, fn, steps=steps, seed=seed, params=init_params(cfg, seed, "xar"),
                                   loss_fn=make_xar_loss((GRID, GRID), "cell", 4, arm))
            t0 = time.perf_counter()
            out = [xar_sample(model.params, cfg, want[s:s + 250], key(s), layout=layout, num_classes=CLASSES,
                              steps=XAR_STEPS) for s in range(0, n, 250)]
        x = np.concatenate([o.tokens for o in out])
        return {**quality(to_images(x), want, out[0].stats["forward_calls"], out[0].stats["head_evals"],
                          time.perf_counter() - t0), "train_s": t}

    units = [(seed, arm) for seed in seeds for arm in runs]
    # each (seed, arm) is cached: a full run killed half-way resumes, and a `--seeds` process filling the
    # cache walks the units in reverse, so it meets the main run in the middle
    done = {}
    for seed, arm in reversed(units) if partial_seeds_run() else units:
        done[seed, arm] = memo_json("p10-arm", dict(arm=arm, seed=seed, steps=steps, n=n, cfg=cfg, version=1),
                                    lambda arm=arm, seed=seed: one_arm(arm, seed))
        print(f"seed {seed} {arm}: FD {done[seed, arm]['fd']:.3f}", flush=True)
    for seed, arm in units:
        runs[arm].append(done[seed, arm])
    figure = V.fd_vs_passes("P10", "fd_vs_passes.png",
                            {"xAR noisy cells": runs["noisy"], "xAR clean cells": runs["clean"],
                             "continuous raster AR": runs["raster"]},
                            floor, f"P10 xAR vs continuous raster AR, glyphs 16x16 (2x2 patches), {steps} steps")
    setting = (f"class-conditional glyphs 16x16 as 8x8 tokens of 2x2 patches (4-dim, [-1,1]), d=64x2 layers, batch "
               f"{V.BATCH}, {steps} steps per arm, {n} samples vs {V.REF_N} real, guidance 1, Euler")

    def summ(r):
        return (f"FD {np.mean([a['fd'] for a in r]):.3f} (SE {np.mean([a['se'] for a in r]):.3f}), consistency "
                f"{np.mean([a['consistency'] for a in r]):.2f}, {r[0]['passes']} passes, {r[0]['head_evals']} "
                f"head evals, train {np.mean([a['train_s'] for a in r]):.0f}s, sample {r[0]['seconds']:.1f}s")

    note = (f"noisy cells: {summ(runs['noisy'])}; clean cells: {summ(runs['clean'])}; raster AR: "
            f"{summ(runs['raster'])}; real-vs-real floor FD {floor[0]:.3f} (SE {floor[1]:.3f}); per-seed FD noisy "
            f"{[round(r['fd'], 3) for r in runs['noisy']]}, clean {[round(r['fd'], 3) for r in runs['clean']]}, "
            f"raster {[round(r['fd'], 3) for r in runs['raster']]}")
    fd = {k: [r["fd"] for r in v] for k, v in runs.items()}
    return [
        Row(pid="P10", claim_id="noisy-cells",
            claim="Noisy Context Learning: cells trained with noisy context beat clean (teacher-forced) context on FD",
            setting=setting, baseline_name="xAR cells, clean context",
            baseline_value=round(float(np.mean(fd["clean"])), 4),
            method_value=round(float(np.mean(fd["noisy"])), 4), metric=RULE.metric,
            verdict=RULE.verdict(fd["noisy"], fd["clean"], seeds=seeds), figure=figure, note=note),
        Row(pid="P10", claim_id="matched-compute",
            claim="xAR (cells, noisy context) beats continuous raster AR at equal forward passes (64 each)",
            setting=setting, baseline_name="continuous raster AR (flow head, 5 steps)",
            baseline_value=round(float(np.mean(fd["raster"])), 4), method_value=round(float(np.mean(fd["noisy"])), 4),
            metric=MATCHED_RULE.metric, verdict=MATCHED_RULE.verdict(fd["noisy"], fd["raster"], seeds=seeds),
            figure=figure, note=note),
    ]


if __name__ == "__main__":
    raise SystemExit(run_cli(run))
