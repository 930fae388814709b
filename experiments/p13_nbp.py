"""P13 NBP (next-block prediction): 8 or 4 forward passes instead of 64 at near-NTP quality.

Paper claims (arXiv 2502.07737, abstract): generating a block of tokens per step (one row of a token
frame), bidirectional inside the block, makes video generation 11x faster than NTP at better FVD. Here:
class-conditional glyphs on the canonical 8 x 8 grid at 8 levels (``experiments._vision``), NBP
(``tokjax.vision.nbp``) with k = 8 (one row per block, 8 passes) and k = 16 (two rows, 4 passes) against
raster NTP (64 passes); all three the same 2-layer d = 64 model, steps, batch, lr and data, decoded
through ``tokjax.generate`` at guidance 1 and temperature 1. The issue's video arm (frame blocks, 4 vs
256 passes) is not run here.

Rules (declared before anything runs):
* ``passes``: forward passes per image of NBP k = 8 vs NTP, lower is better, threshold 0 (deterministic;
  k = 16's passes in the note).
* ``fd-k8``: per seed, the ratio FD(NBP k=8) / FD(NTP) of classifier-feature Frechet distances to 2000
  held-out real glyphs, against the claim's bound 1.1 (lower is better, threshold 0). The note reports
  k = 16, bootstrap SEs, the real-vs-real floor, and flags ratios within 2 SE of the bound.
Quick: 1 seed, 333 steps per arm (999 in all), 500 samples. Full: seeds 0-2, 1000 steps per arm (9000 in
all), 1000 samples.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as `python experiments/p13_nbp.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from experiments import _vision as V  # noqa: E402
from experiments._harness import Row, Rule, run_cli  # noqa: E402

PASSES_RULE = Rule(metric="forward passes per image (lower is better)", higher_is_better=False, threshold=0.0,
                   seeds=(0,), reported="8x8 grid: NBP with one-row blocks (k=8) vs raster NTP, fixed in advance")
RULE = Rule(metric="FD(NBP k=8) / FD(NTP), bound 1.1 (lower is better)", higher_is_better=False, threshold=0.0,
            seeds=(0, 1, 2), quick_seeds=(0,),
            reported="NBP k=8 (one row per block) vs raster NTP, same model, guidance 1, temperature 1, "
                     "fixed in advance")
BOUND = 1.1
BLOCKS = (8, 16)


def run(quick: bool) -> list[Row]:
    from tokjax.vision.image_lm import image_batch_fn, next_token_cfg
    from tokjax.vision.nbp import nbp_batch_fn, nbp_decoder, nbp_loss
    from tokjax.vision.orders import raster

    steps, n = (333, 500) if quick else (1000, 1000)
    vocab, order = V.vocab(), raster(V.GRID, V.GRID)
    data = V.glyph_set(V.TRAIN_N, V.TRAIN_SEED)
    floor = V.real_floor(n)
    seeds = RULE.run_seeds(quick)
    runs = {"ntp": [], **{k: [] for k in BLOCKS}}
    for seed in seeds:
        cfg = V.model_config(2)
        fn = image_batch_fn(data.codes, data.labels, vocab, order, batch_size=V.BATCH,
                            class_dropout=V.CLASS_DROPOUT, seed=seed)
        ntp, t = V.train_arm(cfg, fn, steps=steps, seed=seed)
        runs["ntp"].append({**V.evaluate(ntp, next_token_cfg(vocab, order, guided=False), n=n, seed=seed),
                            "train_s": t})
        for k in BLOCKS:
            fn = nbp_batch_fn(data.codes, data.labels, vocab, order, k, batch_size=V.BATCH,
                              class_dropout=V.CLASS_DROPOUT, seed=seed)
            model, t = V.train_arm(cfg, fn, steps=steps, seed=seed, loss_fn=nbp_loss)
            runs[k].append({**V.evaluate(model, nbp_decoder(vocab, order, k, guided=False), n=n, seed=seed),
                            "train_s": t})
    figure = V.fd_vs_passes("P13", "fd_vs_passes.png",
                            {"raster NTP": runs["ntp"], "NBP k=8 (rows)": runs[8], "NBP k=16 (2 rows)": runs[16]},
                            floor, f"P13 NBP vs NTP, glyphs 8x8x8 levels, {steps} steps")
    setting = (f"class-conditional glyphs 8x8 at 8 levels, d=64x2 layers, batch {V.BATCH}, {steps} steps per arm, "
               f"{n} samples vs {V.REF_N} real, guidance 1")
    ratios = {k: [a["fd"] / b["fd"] for a, b in zip(runs[k], runs["ntp"])] for k in BLOCKS}
    near = [abs(BOUND * b["fd"] - a["fd"]) < 2 * (a["se"] ** 2 + (BOUND * b["se"]) ** 2) ** 0.5
            for a, b in zip(runs[8], runs["ntp"])]
    note = (f"NTP: {V.summary(runs['ntp'])}; NBP k=8: {V.summary(runs[8])}; NBP k=16: {V.summary(runs[16])}; "
            f"real-vs-real floor FD {floor[0]:.3f} (SE {floor[1]:.3f}); per-seed ratio k=8 "
            f"{', '.join(f'{r:.3f}' for r in ratios[8])}, k=16 {', '.join(f'{r:.3f}' for r in ratios[16])}"
            + ("; k=8 within 2 SE of the bound on seeds " + str([s for s, f in zip(seeds, near) if f])
               if any(near) else "")
            + f"; sampling s NTP {runs['ntp'][0]['seconds']:.1f}, k=8 {runs[8][0]['seconds']:.1f}, "
            f"k=16 {runs[16][0]['seconds']:.1f} (NBP cache-free)")
    p_ntp, p8, p16 = runs["ntp"][0]["passes"], runs[8][0]["passes"], runs[16][0]["passes"]
    return [
        Row(pid="P13", claim_id="passes", claim="NBP decodes a block per pass: k=8 in 8 passes, k=16 in 4 (NTP 64)",
            setting=setting, baseline_name="raster NTP", baseline_value=p_ntp, method_value=p8,
            metric=PASSES_RULE.metric, verdict=PASSES_RULE.verdict([p8], [p_ntp]), figure=figure,
            note=f"k=8: {p8} passes ({p_ntp / p8:.0f}x fewer); k=16: {p16} passes ({p_ntp / p16:.0f}x fewer)"),
        Row(pid="P13", claim_id="fd-k8", claim="NBP k=8 matches NTP quality: FD <= 1.1x raster NTP (same steps)",
            setting=setting, baseline_name="bound 1.1 x FD(NTP)", baseline_value=BOUND,
            method_value=round(sum(ratios[8]) / len(ratios[8]), 4), metric=RULE.metric,
            verdict=RULE.verdict(ratios[8], [BOUND] * len(ratios[8]), seeds=seeds), figure=figure, note=note),
    ]


if __name__ == "__main__":
    raise SystemExit(run_cli(run))
