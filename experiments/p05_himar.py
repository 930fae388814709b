"""P5 Hi-MAR (hierarchical masked AR on low-resolution token pivots) vs one-phase masked-set AR at matched compute.

Paper claims (arXiv 2505.20288, abstract / README): predicting a few low-resolution pivot tokens first and
conditioning the dense masked-AR phase on them beats the single-scale MAR baseline (ImageNet 256 FID 1.93 for
Hi-MAR-B vs MAR) "while requiring fewer computational costs". Here: class-conditional glyphs on the canonical
8 x 8 grid at 8 levels (``experiments._vision``); pivots = the round-tripped glyph average-pooled 2 x 2 and
re-encoded by the same 8-level quantizer (4 x 4 = 16 pivots, the notes' small-scale check). Both arms are the
same backbone (d = 64, 2 layers, 4 heads, 2-D axial RoPE) with categorical heads (the documented deviation from
the diffusion heads):

* MaskGIT / discrete MAR (``tokjax.vision.masked_set``): ``[class, 64 codes]``, cosine mask ratio, one phase;
* Hi-MAR (``tokjax.vision.himar``): phase 1 on ``[class, 16 pivots]`` (truncnorm 0.7), phase 2 on
  ``[class, 16 pivot slots, 64 codes]`` reading the phase-1 hidden states (cosine ratio, pivot dropout 0.5 after
  a warm-up over the first quarter of training, the official model default), loss 2.0 CE_1 + 0.75 CE_2.

Training compute is matched: a Hi-MAR step runs 17 + 81 = 98 slots per example, a MaskGIT step 65, so MaskGIT
trains 1.5x the steps (same batch, lr, data). Both decode through ``tokjax.generate`` with the official fill rule
(the next codes of a random order per image; MAR's cosine schedule), guidance 1, temperature 1. Decode compute
is counted in slot-passes per image (sum over forward passes of the slots each reads; cache-free): MaskGIT K
steps = 65 K; Hi-MAR 4 pivot steps + K dense steps = 17 * 4 + 81 K. Matched budgets, fixed in advance:
Hi-MAR 4+4 (392) vs MaskGIT 6 (390) and Hi-MAR 4+8 (716) vs MaskGIT 11 (715). In full mode MaskGIT 4 and 8 are also
decoded for the steps/time trade-off (note and figure only).

Rules (declared before anything runs):
* ``fd-matched-4``: per seed, classifier FD (to 2000 held-out real glyphs, lower is better) of Hi-MAR 4+4 vs
  MaskGIT 6; threshold 0: reproduced when Hi-MAR is lower on every seed, not-reproduced when on none.
* ``fd-matched-8``: the same for Hi-MAR 4+8 vs MaskGIT 11.
The note reports each FD's bootstrap SE, class consistency, the real-vs-real floor and the sampling seconds.
Quick: seed 0, Hi-MAR 400 / MaskGIT 600 steps, 500 samples per arm, the four matched arms only (at this length
both models are far from trained: class consistency near chance, so a quick verdict says little). Full: seeds 0-2, 1600 / 2400 steps, 1000
samples. Not run here: the ImageNet scale, the diffusion / DiT heads, guidance > 1 (the official ``cfg`` /
``re_cfg``), text-to-image.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as `python experiments/p05_himar.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from experiments import _vision as V  # noqa: E402
from experiments._harness import Row, Rule, run_cli  # noqa: E402

RULE = Rule(metric="classifier FD at matched decode slot-passes (lower is better)", higher_is_better=False,
            threshold=0.0, seeds=(0, 1, 2), quick_seeds=(0,),
            reported="Hi-MAR 4 pivot + K dense steps vs MaskGIT at equal slot-passes (K = 4 vs 6, K = 8 vs 11), "
                     "random-order fill, guidance 1, fixed in advance")
PIVOT_GRID, PIVOT_STEPS = (4, 4), 4
MATCHED = ((4, 6), (8, 11))  # (Hi-MAR dense steps, MaskGIT steps) at equal slot-passes
EXTRA_MASKGIT = (4, 8)


def pivot_codes(images) -> np.ndarray:
    """Returns int32 [N, 4, 4]: the 2 x 2 average-pooled images encoded by the same 8-level quantizer."""
    from tokjax.vision.himar import pool_images

    return np.asarray(V.quantizer().encode(pool_images(images, 2)), np.int32)


def slot_passes(kind: str, k: int) -> int:
    L, P = V.GRID * V.GRID, PIVOT_GRID[0] * PIVOT_GRID[1]
    return (1 + L) * k if kind == "maskgit" else (1 + P) * PIVOT_STEPS + (1 + P + L) * k


def _figure(arms: dict, floor, title: str):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    from experiments._harness import figure_path

    fig, ax = plt.subplots(figsize=(5.2, 3.6))
    for kind, marker in (("maskgit", "o"), ("himar", "s")):
        pts = sorted((k, runs) for (kk, k), runs in arms.items() if kk == kind)
        x = [slot_passes(kind, k) for k, _ in pts]
        y = [np.mean([r["fd"] for r in runs]) for _, runs in pts]
        e = [max(np.std([r["fd"] for r in runs], ddof=1) if len(runs) > 1 else 0.0,
                 2 * max(r["se"] for r in runs)) for _, runs in pts]
        label = "MaskGIT (K steps)" if kind == "maskgit" else f"Hi-MAR ({PIVOT_STEPS} pivot + K steps)"
        ax.errorbar(x, y, yerr=e, fmt=marker + "-", capsize=3, label=label)
        for (k, _), xi, yi in zip(pts, x, y):
            ax.annotate(f"K={k}", (xi, yi), textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.axhline(floor[0], ls="--", c="gray", lw=1, label="real vs real floor")
    ax.set_xlabel("decode slot-passes per image (sum of slots over forward passes)")
    ax.set_ylabel("classifier FD (lower is better)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    path = figure_path("P5", "fd_vs_compute.png")
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def run(quick: bool) -> list[Row]:
    import jax

    from experiments._common import memo_run
    from tokjax.model import init_params
    from tokjax.vision.himar import himar, himar_batch_fn, himar_init, make_himar_loss
    from tokjax.vision.image_lm import image_batch_fn
    from tokjax.vision.masked_set import make_masked_set_loss, maskgit
    from tokjax.vision.orders import raster

    steps, n = (400, 500) if quick else (1600, 1000)
    base_steps = steps * 3 // 2
    vocab, order, grid = V.vocab(), raster(V.GRID, V.GRID), (V.GRID, V.GRID)
    data = V.glyph_set(V.TRAIN_N, V.TRAIN_SEED)
    piv = pivot_codes(data.images)
    floor = V.real_floor(n)
    seeds = RULE.run_seeds(quick)
    cfg = V.model_config(2, max_len=96)
    arms: dict = {}
    ks = sorted({b for _, b in MATCHED} | (set() if quick else set(EXTRA_MASKGIT)))

    def one_seed(seed):  # both arms of one seed, trained and evaluated: {"kind|K|field": value}
        bf = image_batch_fn(data.codes, data.labels, vocab, order, batch_size=V.BATCH, class_dropout=V.CLASS_DROPOUT,
                            seed=seed)
        base, t_base = V.train_arm(cfg, bf, steps=base_steps, seed=seed,
                                   loss_fn=make_masked_set_loss(order, vocab, ratio="cosine"))
        hf = himar_batch_fn(data.codes, piv, data.labels, vocab, grid, PIVOT_GRID, batch_size=V.BATCH,
                            class_dropout=V.CLASS_DROPOUT, pivot_dropout=0.5, warmup_steps=steps // 4, seed=seed)
        params = {**init_params(cfg, jax.random.key(seed)),
                  "himar": himar_init(cfg, jax.random.fold_in(jax.random.key(seed), 1), PIVOT_GRID)}
        hi, t_hi = V.train_arm(cfg, hf, steps=steps, seed=seed, params=params,
                               loss_fn=make_himar_loss(grid, PIVOT_GRID, vocab, dense_ratio="cosine"))
        out = {}
        for k in ks:
            ev = V.evaluate(base, maskgit(vocab, V.GRID, V.GRID, iters=k, choice="random"), n=n, seed=seed)
            out.update({f"maskgit|{k}|{f}": v for f, v in {**ev, "train_s": t_base}.items()})
        for k, _ in MATCHED:
            ev = V.evaluate(hi, himar(vocab, grid, PIVOT_GRID, iters=k, pivot_iters=PIVOT_STEPS, choice="random"),
                            n=n, seed=seed)
            out.update({f"himar|{k}|{f}": v for f, v in {**ev, "train_s": t_hi}.items()})
        return out

    for seed in seeds:  # each finished seed is cached: a full run killed half-way resumes
        flat = memo_run("p05-seed", dict(seed=seed, steps=steps, base_steps=base_steps, n=n, ks=ks, matched=MATCHED,
                                         cfg=cfg, batch=V.BATCH, dropout=V.CLASS_DROPOUT, train=[V.TRAIN_N, V.TRAIN_SEED],
                                         pivot=[PIVOT_GRID, PIVOT_STEPS], version=1), lambda seed=seed: one_seed(seed))
        per_arm: dict = {}
        for name, v in flat.items():
            kind, k, field = name.split("|")
            per_arm.setdefault((kind, int(k)), {})[field] = v.item()
        for arm, rec in per_arm.items():
            arms.setdefault(arm, []).append(rec)
    figure = _figure(arms, floor, f"P5 Hi-MAR vs MaskGIT, glyphs 8x8x8, {steps}/{base_steps} steps")
    setting = (f"class-conditional glyphs 8x8 at 8 levels, 4x4 pooled pivots, d=64x2 layers, batch {V.BATCH}, "
               f"Hi-MAR {steps} / MaskGIT {base_steps} steps (matched training slots), {n} samples vs {V.REF_N} "
               f"real, random-order fill, guidance 1")
    trade = "; ".join(f"{kind} K={k}: {V.summary(runs)}, {slot_passes(kind, k)} slot-passes, sampling "
                      f"{np.mean([r['seconds'] for r in runs]):.1f}s"
                      for (kind, k), runs in sorted(arms.items()))
    rows = []
    for hk, bk in MATCHED:
        h_fd = [r["fd"] for r in arms[("himar", hk)]]
        b_fd = [r["fd"] for r in arms[("maskgit", bk)]]
        rows.append(Row(
            pid="P5", claim_id=f"fd-matched-{hk}",
            claim=f"Hi-MAR ({PIVOT_STEPS} pivot + {hk} dense steps) beats one-phase masked AR at equal decode compute",
            setting=setting, baseline_name=f"MaskGIT {bk} steps ({slot_passes('maskgit', bk)} slot-passes)",
            baseline_value=round(float(np.mean(b_fd)), 4), method_value=round(float(np.mean(h_fd)), 4),
            metric=RULE.metric, verdict=RULE.verdict(h_fd, b_fd, seeds=seeds), figure=figure,
            note=f"Hi-MAR {slot_passes('himar', hk)} slot-passes; real-vs-real floor FD {floor[0]:.3f} (SE "
                 f"{floor[1]:.3f}); train s MaskGIT {np.mean([r['train_s'] for r in arms[('maskgit', bk)]]):.0f} vs "
                 f"Hi-MAR {np.mean([r['train_s'] for r in arms[('himar', hk)]]):.0f}; {trade}"))
    return rows


if __name__ == "__main__":
    raise SystemExit(run_cli(run))
