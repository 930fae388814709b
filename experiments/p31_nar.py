"""P31 NAR (Neighboring Autoregressive modeling): 15 instead of 64 forward passes at near-NTP quality.

Paper claims (arXiv 2503.10696, abstract): decoding one anti-diagonal per pass with two dimension-oriented
heads (right and below) gives 2.4x the throughput of the previous parallel AR model on ImageNet 256 at
better FID. Here: class-conditional glyphs on the canonical 8 x 8 grid at 8 levels
(``experiments._vision``), NAR (2 layers + head B's one extra layer, ``tokjax.vision.nar``) against raster
NTP with one more layer (3 layers: the notes' parameter match for head B), same steps, batch, lr and data.
Both are decoded through ``tokjax.generate`` at guidance 1 (the conditional distribution) and
temperature 1; NAR takes H + W - 1 = 15 passes, NTP 64.

Rules (declared before anything runs):
* ``passes``: forward passes per image, lower is better, threshold 0 (deterministic, one seed).
* ``fd``: per seed, the ratio FD(NAR) / FD(NTP) of classifier-feature Frechet distances to 2000 held-out
  real glyphs, against the claim's bound 1.1 (lower is better, threshold 0: reproduced when the ratio is
  below 1.1 on every seed, not-reproduced when on none). The note reports each FD's bootstrap SE and the
  real-vs-real floor; a ratio within 2 SE of 1.1 is flagged in the note.
Quick: 1 seed, 500 steps per arm (1000 in all), 500 samples. Full: seeds 0-2, 1500 steps per arm, 1000
samples.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as `python experiments/p31_nar.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from experiments import _vision as V  # noqa: E402
from experiments._harness import Row, Rule, run_cli  # noqa: E402

PASSES_RULE = Rule(metric="forward passes per image (lower is better)", higher_is_better=False, threshold=0.0,
                   seeds=(0,), reported="8x8 grid: NAR H+W-1 anti-diagonal passes vs raster NTP, fixed in advance")
RULE = Rule(metric="FD(NAR) / FD(NTP+1 layer), bound 1.1 (lower is better)", higher_is_better=False, threshold=0.0,
            seeds=(0, 1, 2), quick_seeds=(0,),
            reported="NAR with 1 extra layer for head B vs 3-layer raster NTP, guidance 1, temperature 1, "
                     "fixed in advance")
BOUND = 1.1


def run(quick: bool) -> list[Row]:
    import jax

    from tokjax.vision.image_lm import image_batch_fn, next_token_cfg
    from tokjax.vision.nar import make_nar_loss, nar_decoder, nar_init
    from tokjax.vision.orders import raster

    steps, n = (500, 500) if quick else (1500, 1000)
    vocab, order = V.vocab(), raster(V.GRID, V.GRID)
    data = V.glyph_set(V.TRAIN_N, V.TRAIN_SEED)
    floor = V.real_floor(n)
    seeds = RULE.run_seeds(quick)
    ntp_runs, nar_runs = [], []
    for seed in seeds:
        batch_fn = image_batch_fn(data.codes, data.labels, vocab, order, batch_size=V.BATCH,
                                  class_dropout=V.CLASS_DROPOUT, seed=seed)
        ntp, t_ntp = V.train_arm(V.model_config(3), batch_fn, steps=steps, seed=seed)
        cfg = V.model_config(2)
        nar, t_nar = V.train_arm(cfg, batch_fn, steps=steps, seed=seed, loss_fn=make_nar_loss(order.shape),
                                 params=nar_init(cfg, jax.random.key(seed), extra_layers=1))
        ntp_runs.append({**V.evaluate(ntp, next_token_cfg(vocab, order, guided=False), n=n, seed=seed),
                         "train_s": t_ntp})
        nar_runs.append({**V.evaluate(nar, nar_decoder(vocab, V.GRID, V.GRID, guided=False), n=n, seed=seed),
                         "train_s": t_nar})
    figure = V.fd_vs_passes("P31", "fd_vs_passes.png", {"raster NTP (3 layers)": ntp_runs,
                                                        "NAR (2 + 1 layers)": nar_runs}, floor,
                            f"P31 NAR vs NTP, glyphs 8x8x8 levels, {steps} steps")
    setting = (f"class-conditional glyphs 8x8 at 8 levels, d=64, batch {V.BATCH}, {steps} steps per arm, {n} samples "
               f"vs {V.REF_N} real, guidance 1")
    ratios = [a["fd"] / b["fd"] for a, b in zip(nar_runs, ntp_runs)]
    near = [abs(BOUND * b["fd"] - a["fd"]) < 2 * (a["se"] ** 2 + (BOUND * b["se"]) ** 2) ** 0.5
            for a, b in zip(nar_runs, ntp_runs)]
    note = (f"NTP: {V.summary(ntp_runs)}; NAR: {V.summary(nar_runs)}; real-vs-real floor FD {floor[0]:.3f} "
            f"(SE {floor[1]:.3f}); per-seed ratio {', '.join(f'{r:.3f}' for r in ratios)}"
            + ("; within 2 SE of the bound on seeds " + str([s for s, f in zip(seeds, near) if f]) if any(near) else "")
            + f"; sampling s NTP {ntp_runs[0]['seconds']:.1f} vs NAR {nar_runs[0]['seconds']:.1f} (NAR cache-free)")
    p_ntp, p_nar = ntp_runs[0]["passes"], nar_runs[0]["passes"]
    return [
        Row(pid="P31", claim_id="passes", claim="NAR decodes an HxW grid in H+W-1 passes (15 vs 64 for 8x8)",
            setting=setting, baseline_name="raster NTP", baseline_value=p_ntp, method_value=p_nar,
            metric=PASSES_RULE.metric, verdict=PASSES_RULE.verdict([p_nar], [p_ntp]), figure=figure,
            note=f"{p_ntp / p_nar:.2f}x fewer passes"),
        Row(pid="P31", claim_id="fd", claim="NAR matches NTP quality: FD <= 1.1x raster NTP (same steps)",
            setting=setting, baseline_name="bound 1.1 x FD(NTP+1 layer)", baseline_value=BOUND,
            method_value=round(sum(ratios) / len(ratios), 4), metric=RULE.metric,
            verdict=RULE.verdict(ratios, [BOUND] * len(ratios), seeds=seeds), figure=figure, note=note),
    ]


if __name__ == "__main__":
    raise SystemExit(run_cli(run))
