"""P19 DiSA (diffusion step annealing): annealed inner flow steps vs constant steps on MAR and on continuous raster
AR, classifier FD against head evaluations.

Paper claims (arXiv 2505.20297, abstract): annealing the per-token diffusion steps over the AR steps (many early,
few late; training-free) keeps quality at 5-10x fewer head evaluations for MAR and Harmon and 1.4-2.5x for
FlowAR and xAR. Here: class-conditional 16 x 16 glyphs (``tokjax.data.glyphs``, [-1, 1]) as an 8 x 8 grid of 2 x 2
patches (64 continuous 4-dim tokens, as ``p10_xar``), the 2-layer d = 64 shared forward with MAR's flow head
(width 64, depth 3, 4 t draws per backbone pass):

* MAR (``tokjax.vision.mar``): bidirectional, random order, official cosine fill schedule over n = 16 AR steps
  (DiSA's MAR setting: 64 steps for 256 tokens, i.e. L / 4).
* continuous raster AR (``tokjax.vision.flow.continuous_ar``): 64 AR steps, one token each.

Each model is trained once per seed (the same data, batch, lr and steps) and decoded with constant T in
{2, 5, 10, 25, 50} Euler steps per token and with DiSA linear / cosine / two-stage 50 -> 5
(``tokjax.vision.disa.disa_steps``, the official arithmetic). Head evaluations per image = sum_s T(s) |fill_s|
(deterministic; computed from the schedules before anything runs):

* MAR (fills 1 .. 6 tokens per step, few early, many late): constant T: 64 T (T = 50: 3200); linear 1361 (2.35x
  fewer than T = 50), cosine 1256 (2.55x), two-stage 1175 (2.72x). (At the paper's 256 tokens / 64 steps the
  factors are the same, 2.4-2.8x; its 5-10x is against MAR's default of 100 diffusion steps, not run here.)
* raster AR (one token per step): constant T: 64 T; linear 1733 (1.85x fewer than T = 50), cosine 1729 (1.85x),
  two-stage 1760 (1.82x).

Quality: classifier-feature Frechet distance of 250 (quick) / 1000 (full) samples to 2000 held-out real glyphs,
bootstrap SE, the real-vs-real floor, class consistency (secondary): the foundation's protocol (``p10_xar``'s
helpers, guidance 1, temperature 1).

Rules (declared before anything runs; reported variant: DiSA linear 50 -> 5, the paper's default for both MAR
and xAR, fixed in advance; cosine and two-stage are in the notes and the figure):
* ``pareto-mar`` / ``pareto-raster`` ("below the constant-T Pareto curve"): the constant-T curve at DiSA's head
  evaluations e = the FD interpolated linearly in log2(head evals) between the two constant-T arms whose head
  evaluations bracket e; per seed curve(e) - FD(DiSA linear) > 0 (FD, lower is better, threshold 0).
* ``speedup-mar`` / ``speedup-raster`` (the headline: quality kept at fewer head evaluations, at the deterministic
  factors above): per seed
  (FD(T = 50) - FD(DiSA linear)) / sqrt(SE_50^2 + SE_DiSA^2) > -1, i.e. DiSA's FD within one combined
  bootstrap SE of constant T = 50 (non-inferiority, threshold -1). Alone this is weak when FD is flat in T
  (then T = 5 passes too), hence the Pareto rule.
Quick: seed 0, 250 training steps per model (500 in all; a smoke run, too short to decide). Full: seeds 0-2, 1500 steps per model (9000 in all).
Not run here (open): Euler-Maruyama, xAR cells with DiSA, the sample-variance / path-straightness panel.
"""

from __future__ import annotations

import functools
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as `python experiments/p19_disa.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from experiments import _vision as V  # noqa: E402
from experiments import _continuous as G  # noqa: E402  (the 16 x 16 glyph protocol: data, classifier, FD)
from experiments._harness import Row, Rule, run_cli  # noqa: E402

CONSTANT_T = (2, 5, 10, 25, 50)
SCHEDULES = ("linear", "cosine", "two_stage")
T_UP, T_LOW, MAR_ITERS, HEAD_WIDTH = 50, 5, 16, 64
L = G.GRID * G.GRID
PARETO_RULE = Rule(metric="classifier FD to real glyphs (lower is better)", higher_is_better=False, threshold=0.0,
                   seeds=(0, 1, 2), quick_seeds=(0,),
                   reported="DiSA linear 50->5 vs the constant-T curve (T in 2,5,10,25,50) interpolated in log head "
                            "evals at DiSA's head evals, Euler, guidance 1; fixed in advance")
SPEEDUP_RULE = Rule(metric="FD advantage over constant T=50 in combined bootstrap SEs (higher is better)",
                    higher_is_better=True, threshold=-1.0, seeds=(0, 1, 2), quick_seeds=(0,),
                    reported="DiSA linear 50->5 vs constant T=50, Euler, guidance 1; fixed in advance")


def arms() -> dict:
    """{arm name: steps schedule factory (iters -> int32 [iters] or an int)}."""
    from tokjax.vision.disa import disa_steps

    out = {f"T={t}": (lambda n, t=t: t) for t in CONSTANT_T}
    for s in SCHEDULES:
        out[f"DiSA {s}"] = functools.partial(lambda n, s: disa_steps(n, schedule=s, t_low=T_LOW, t_up=T_UP), s=s)
    return out


def init_params(cfg, seed: int, kind: str):
    import jax

    from tokjax.model.params import init_params as backbone
    from tokjax.vision.flow import continuous_init
    from tokjax.vision.mar import mar_init

    k1, k2 = jax.random.split(jax.random.key(1900 + seed))
    params = dict(backbone(cfg, k1))
    if kind == "mar":
        params["mar"] = mar_init(k2, cfg, G.PATCH * G.PATCH, width=HEAD_WIDTH, depth=3)
    else:
        params["flow"] = continuous_init(k2, cfg, G.PATCH * G.PATCH, width=HEAD_WIDTH, depth=3)
    return params


def decode(model, kind: str, steps, want, seed: int) -> tuple[np.ndarray, int, int]:
    """Returns (tokens [n, L, 4], head evals per image, forward passes per image)."""
    import jax

    from tokjax.vision.flow import continuous_ar, sample_continuous
    from tokjax.vision.mar import mar, sample_mar

    if kind == "mar":
        strat = mar(length=L, iters=MAR_ITERS, steps=steps)
        sample = functools.partial(sample_mar, model, strat)
    else:
        strat = continuous_ar(length=L, steps=steps)
        sample = functools.partial(sample_continuous, model, strat)
    out = [sample(want[s:s + 250], jax.random.fold_in(jax.random.key(seed), s), num_classes=G.CLASSES)
           for s in range(0, want.size, 250)]
    return (np.concatenate([o.tokens for o in out]), int(out[0].stats["head_evals"]),
            int(out[0].stats["forward_calls"]))


def curve_at(runs: dict, e: float) -> float:
    """FD of the constant-T curve at head evals ``e``: linear in log2(head evals) between the bracketing arms."""
    pts = sorted((r["head_evals"], r["fd"]) for k, r in runs.items() if k.startswith("T="))
    xs = np.log2([p[0] for p in pts])
    return float(np.interp(np.log2(e), xs, [p[1] for p in pts]))


def figure(results: dict, floor, title: str):
    """FD vs head evaluations per image, one panel per model (seed mean; error bar 2 bootstrap SE)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    from experiments._harness import save_figure

    fig, axes = plt.subplots(1, len(results), figsize=(5.0 * len(results), 3.8), squeeze=False)
    for ax, (kind, per_seed) in zip(axes[0], results.items()):
        names = list(per_seed[0])
        mean = {k: float(np.mean([r[k]["fd"] for r in per_seed])) for k in names}
        se = {k: float(np.mean([r[k]["se"] for r in per_seed])) for k in names}
        ev = {k: per_seed[0][k]["head_evals"] for k in names}
        const = [k for k in names if k.startswith("T=")]
        ax.errorbar([ev[k] for k in const], [mean[k] for k in const], yerr=[2 * se[k] for k in const], fmt="o-",
                    c="k", capsize=3, label="constant T")
        for k in const:
            ax.annotate(k, (ev[k], mean[k]), textcoords="offset points", xytext=(4, 4), fontsize=7)
        for k in names:
            if not k.startswith("T="):
                ax.errorbar([ev[k]], [mean[k]], yerr=[2 * se[k]], fmt="s", capsize=3, label=f"{k} {T_UP}->{T_LOW}")
        ax.axhline(floor[0], ls="--", c="gray", lw=1, label="real vs real floor")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("head evaluations per image")
        ax.set_ylabel("classifier FD (lower is better)")
        ax.set_title({"mar": f"MAR ({MAR_ITERS} AR steps)", "raster": "continuous raster AR (64 AR steps)"}[kind],
                     fontsize=9)
        ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    path = save_figure(fig, "P19", "fd_vs_head_evals.png")
    return path


def run(quick: bool) -> list[Row]:
    from tokjax.vision.flow import continuous_batch_fn, make_flow_loss
    from tokjax.vision.mar import make_mar_loss

    steps, n = (250, 250) if quick else (1500, 1000)
    imgs, labels = G.glyph_set(V.TRAIN_N, V.TRAIN_SEED)
    tokens = G.to_tokens(imgs)
    floor = G.fd_with_se(G.glyph_set(n, V.FLOOR_SEED)[0])
    seeds = PARETO_RULE.run_seeds(quick)
    cfg = G.model_config()
    want = V.sample_labels(n)
    results = {"mar": [], "raster": []}
    train_s = {"mar": [], "raster": []}
    for seed in seeds:
        fn = continuous_batch_fn(tokens, labels, num_classes=G.CLASSES, batch_size=V.BATCH,
                                 class_dropout=V.CLASS_DROPOUT, seed=seed)
        for kind, loss in (("mar", make_mar_loss()), ("raster", make_flow_loss())):
            model, t = V.train_arm(cfg, fn, steps=steps, seed=seed, params=init_params(cfg, seed, kind), loss_fn=loss)
            train_s[kind].append(t)
            print(f"[p19] seed {seed} {kind}: trained {steps} steps in {t:.0f}s", file=sys.stderr, flush=True)
            per = {}
            for name, sched in arms().items():
                t0 = time.perf_counter()
                x, evals, passes = decode(model, kind, sched(MAR_ITERS if kind == "mar" else L), want, seed)
                per[name] = G.quality(G.to_images(x), want, passes, evals, time.perf_counter() - t0)
                print(f"[p19] seed {seed} {kind} {name}: FD {per[name]['fd']:.3f} (SE {per[name]['se']:.3f}), "
                      f"{evals} head evals, {per[name]['seconds']:.0f}s", file=sys.stderr, flush=True)
            results[kind].append(per)
    fig = figure(results, floor, f"P19 DiSA, glyphs 16x16 (2x2 patches), {steps} steps per model, Euler, "
                                 f"{len(seeds)} seed(s)")
    setting = (f"class-conditional glyphs 16x16 as 8x8 tokens of 2x2 patches (4-dim, [-1,1]), d=64x2 layers, flow "
               f"head width {HEAD_WIDTH}, batch {V.BATCH}, {steps} steps per model, {n} samples vs {V.REF_N} real, "
               f"Euler, guidance 1; MAR {MAR_ITERS} AR steps (cosine fill), raster AR 64")
    rows = []
    for kind, label in (("mar", "MAR"), ("raster", "continuous raster AR")):
        per_seed = results[kind]
        lin = [r["DiSA linear"] for r in per_seed]
        curve = [curve_at(r, r["DiSA linear"]["head_evals"]) for r in per_seed]
        z = [(r["T=50"]["fd"] - r["DiSA linear"]["fd"]) / np.hypot(r["T=50"]["se"], r["DiSA linear"]["se"])
             for r in per_seed]
        note = "; ".join(
            f"{k}: FD {np.mean([r[k]['fd'] for r in per_seed]):.3f} "
            f"(SE {np.mean([r[k]['se'] for r in per_seed]):.3f}), "
            f"cons {np.mean([r[k]['consistency'] for r in per_seed]):.2f}, {per_seed[0][k]['head_evals']} evals, "
            f"{per_seed[0][k]['seconds']:.1f}s" for k in per_seed[0])
        note += (f"; curve at DiSA linear's evals: {[round(c, 3) for c in curve]}; "
                 f"z vs T=50: {[round(float(v), 2) for v in z]}"
                 f"; floor FD {floor[0]:.3f} (SE {floor[1]:.3f}); train {np.mean(train_s[kind]):.0f}s")
        e_lin, e_50 = lin[0]["head_evals"], per_seed[0]["T=50"]["head_evals"]
        rows.append(Row(
            pid="P19", claim_id=f"pareto-{kind}",
            claim=f"DiSA (linear 50->5) lies below the constant-T FD-vs-head-evals curve on {label}",
            setting=setting, baseline_name=f"constant-T curve at {e_lin} head evals",
            baseline_value=round(float(np.mean(curve)), 4),
            method_value=round(float(np.mean([r["fd"] for r in lin])), 4),
            metric=PARETO_RULE.metric, verdict=PARETO_RULE.verdict([r["fd"] for r in lin], curve, seeds=seeds),
            figure=fig, note=note))
        rows.append(Row(
            pid="P19", claim_id=f"speedup-{kind}",
            claim=f"DiSA keeps constant T=50's FD (within 1 SE) at {e_50 / e_lin:.1f}x fewer head evals on {label} "
                  f"(paper: 5-10x MAR, 1.4-2.5x xAR/FlowAR)",
            setting=setting, baseline_name="constant T=50 (z = 0)", baseline_value=0.0,
            method_value=round(float(np.mean(z)), 3), metric=SPEEDUP_RULE.metric,
            verdict=SPEEDUP_RULE.verdict(z, [0.0] * len(z), seeds=seeds), figure=fig, note=note))
    return rows


if __name__ == "__main__":
    raise SystemExit(run_cli(run))
