"""P19 DiSA (diffusion step annealing): annealed inner flow steps vs constant steps on MAR, continuous raster AR and
xAR cells, with the Euler and the Euler-Maruyama sampler; classifier FD against head evaluations.

Paper claims (arXiv 2505.20297, abstract): annealing the per-token diffusion steps over the AR steps (many early,
few late; training-free) keeps quality at 5-10x fewer head evaluations for MAR and Harmon and 1.4-2.5x for
FlowAR and xAR. Here: class-conditional 16 x 16 glyphs (``tokjax.data.glyphs``, [-1, 1]) as an 8 x 8 grid of 2 x 2
patches (64 continuous 4-dim tokens, as ``p10_xar``), the 2-layer d = 64 shared forward (``experiments._continuous``)
as three base models:

* MAR (``tokjax.vision.mar``): bidirectional, random order, MAR's flow head (width 64, depth 3, 4 t draws per
  backbone pass), official cosine fill schedule over n = 16 AR steps (DiSA's MAR setting: 64 steps for 256
  tokens, i.e. L / 4).
* continuous raster AR (``tokjax.vision.flow.continuous_ar``): the same flow head, 64 AR steps, one token each.
* xAR (``tokjax.vision.xar``), trained as ``p10_xar``'s reported arm: 4 x 4-token cells (K = 4 entities of 16
  tokens), Noisy Context Learning, the whole network is the velocity model (one flow step = one forward over the
  cell's 16 tokens, clean previous cell cached); n = K = 4 AR steps.

Each model is trained once per seed (the same data, batch, lr and steps) and decoded with constant T in
{2, 5, 10, 25, 50} flow steps per token and with DiSA linear / cosine / two-stage 50 -> 5
(``tokjax.vision.disa.disa_steps``, the official arithmetic; xAR linear with ``arithmetic="xar"``, the official
``xar.py`` formula, which gives the same table here), each with the Euler sampler and with Euler-Maruyama
(``tokjax.vision.flow.flow_update``: the reverse SDE with g(t)^2 = t, noise-free last step; the sampler xAR's
official code uses). Head evaluations per image = sum_s T(s) |fill_s| (deterministic; computed from the schedules
before anything runs; the same for both samplers):

* MAR (fills 1 .. 6 tokens per step, few early, many late): constant T: 64 T (T = 50: 3200); linear 1361 (2.35x
  fewer than T = 50), cosine 1256 (2.55x), two-stage 1175 (2.72x). (At the paper's 256 tokens / 64 steps the
  factors are the same, 2.4-2.8x; its 5-10x is against MAR's default of 100 diffusion steps, not run here.)
* raster AR (one token per step): constant T: 64 T; linear 1733 (1.85x fewer than T = 50), cosine 1729 (1.85x),
  two-stage 1760 (1.82x).
* xAR (16 tokens per step; a head evaluation is one token's velocity, so 16 per network pass): constant T: 64 T
  (4 T passes); linear T(s) = 50, 35, 20, 5: 1760 (110 passes, 1.82x fewer than T = 50), cosine 50, 38, 16, 5:
  1744 (1.83x), two-stage 50, 50, 5, 5: 1760 (1.82x). (The paper's 1.4-2.5x for xAR uses 50 -> 10 or 15 over
  its 4 cells.)

Quality: classifier-feature Frechet distance of 128 (quick) / 1000 (full) samples to 2000 held-out real glyphs,
bootstrap SE, the real-vs-real floor, class consistency (secondary): the foundation's protocol (``p10_xar``'s
helpers, guidance 1, temperature 1).

Rules (declared before anything runs; reported variant: DiSA linear 50 -> 5, the paper's default for both MAR
and xAR, fixed in advance; cosine and two-stage are in the notes and the figure). One pair of rows per (base
model, sampler); claim ids ``pareto-<model>`` / ``speedup-<model>`` for Euler (mar, raster, xar) and
``pareto-<model>-em`` / ``speedup-<model>-em`` for Euler-Maruyama, all under the same two rules:
* ``pareto-*`` ("below the constant-T Pareto curve"): the constant-T curve (same model, same sampler) at DiSA's
  head evaluations e = the FD interpolated linearly in log2(head evals) between the two constant-T arms whose head
  evaluations bracket e; per seed curve(e) - FD(DiSA linear) > 0 (FD, lower is better, threshold 0).
* ``speedup-*`` (the headline: quality kept at fewer head evaluations, at the deterministic factors above): per
  seed (FD(T = 50) - FD(DiSA linear)) / sqrt(SE_50^2 + SE_DiSA^2) > -1, i.e. DiSA's FD within one combined
  bootstrap SE of constant T = 50 with the same sampler (non-inferiority, threshold -1). Alone this is weak when
  FD is flat in T (then T = 5 passes too), hence the Pareto rule.
Quick: seed 0, 100 training steps per model (300 in all; a smoke run, too short to decide: at 250 steps class
consistency was still at chance), 128 samples; Euler runs every constant T and DiSA linear (cosine and two-stage
in full mode only), Euler-Maruyama only the arms the rules read (T in {10, 25, 50} and DiSA linear; the curve's
bracketing arms of every model are among them). Full: seeds 0-2, 1200 steps for MAR, 1100 for raster AR, 1000 for
xAR (``p10_xar``'s full count; 9900 in all, within the issue's 10k guide), every arm with both samplers.

Motivation panel (the abstract's evidence: later tokens have lower sample variance and closer-to-straight denoising
paths). After each seed's T = 50 Euler decode of MAR and raster AR, the first 32 (quick) / 128 (full) generations
are replayed: each token's condition z (raster AR: the causal hidden states, exactly the decode's; MAR: a fresh
seeded random order with the same cosine fill, the tokens of AR step s reading the forward in which the tokens of
steps < s are known; the decode's own order is not returned) is sampled K = 8 times by the trained head with
T = 50 Euler steps, temperature 1 (``tokjax.vision.flow.flow_path_stats``): variance = per-dim variance across
the 8 draws (ddof 1) averaged over the 4 dims; straightness = ||x_0 - x_1|| / sum_j ||x_{j+1} - x_j|| of the
discrete Euler path, averaged over the draws (1 = straight; the definition of NOTES-visual.md P19 -- the paper's
exact measure, and its variance estimator, are not in the official code as stored and remain unverified).
Both are bucketed by the fraction of the image generated before the token (10 equal-width buckets) into the
figure ``variance_straightness_vs_fraction.png`` (raster AR's fraction is its raster position, so its curve
mixes context with position: the first and last rows of a glyph are mostly background). Rows (MAR, whose
random order decouples the two; declared before running; raster AR in the note):
* ``motivation-variance``: per seed, mean variance of the tokens generated after >= 80% of the image below that
  of the tokens generated before 20% (lower is better, threshold 0).
* ``motivation-straight``: per seed, mean straightness late above early (higher is better, threshold 0).
Not run here (open): the panel for xAR (its velocity is the whole network over a cell, not a per-token head) and
for the Euler-Maruyama paths (rough by construction), the paper's MLP-predictability evidence, xAR with the
official 50 -> 10 / 15 and its shifted time grid, guidance.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as `python experiments/p19_disa.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from experiments import _vision as V  # noqa: E402
from experiments import _continuous as G  # noqa: E402  (the 16 x 16 glyph protocol: data, classifier, FD)
from experiments._harness import Row, Rule, partial_seeds_run, run_cli  # noqa: E402

CONSTANT_T = (2, 5, 10, 25, 50)
SCHEDULES = ("linear", "cosine", "two_stage")
T_UP, T_LOW, MAR_ITERS, HEAD_WIDTH = 50, 5, 16, 64
L = G.GRID * G.GRID
KINDS = ("mar", "raster", "xar")
SAMPLERS = ("euler", "euler_maruyama")
# quick: Euler runs every constant T and DiSA linear (cosine / two-stage in full mode only); Euler-Maruyama only the
# arms the rules read (the curve's bracketing arms of every model are T = 10 / 25 / 50)
QUICK_ARMS = {"euler": ("T=2", "T=5", "T=10", "T=25", "T=50", "DiSA linear"),
              "euler_maruyama": ("T=10", "T=25", "T=50", "DiSA linear")}
QUICK_STEPS, QUICK_N = 100, 128
FULL_STEPS, FULL_N = {"mar": 1200, "raster": 1100, "xar": 1000}, 1000
LABEL = {"mar": "MAR", "raster": "continuous raster AR", "xar": "xAR 4x4 cells"}
SAMPLER_LABEL = {"euler": "Euler", "euler_maruyama": "Euler-Maruyama"}
PARETO_RULE = Rule(metric="classifier FD to real glyphs (lower is better)", higher_is_better=False, threshold=0.0,
                   seeds=(0, 1, 2), quick_seeds=(0,),
                   reported="DiSA linear 50->5 vs the constant-T curve (T in 2,5,10,25,50) interpolated in log head "
                            "evals at DiSA's head evals, Euler, guidance 1; fixed in advance")
SPEEDUP_RULE = Rule(metric="FD advantage over constant T=50 in combined bootstrap SEs (higher is better)",
                    higher_is_better=True, threshold=-1.0, seeds=(0, 1, 2), quick_seeds=(0,),
                    reported="DiSA linear 50->5 vs constant T=50, Euler, guidance 1; fixed in advance")
# the motivation panel: per-token head sample variance and path straightness vs generated fraction
PANEL_KINDS, PANEL_K, PANEL_T, BUCKETS, EARLY, LATE = ("mar", "raster"), 8, T_UP, 10, 0.2, 0.8
QUICK_PANEL_N, FULL_PANEL_N = 32, 128
PANEL_REPORTED = (f"MAR (random order, cosine fill, 16 AR steps), T={PANEL_T} Euler, temperature 1, {PANEL_K} draws "
                  f"per token; tokens generated after >= {LATE:.0%} of the image vs before {EARLY:.0%}; fixed in "
                  "advance")
VARIANCE_RULE = Rule(metric=f"head sample variance across {PANEL_K} draws, mean over dims and tokens (lower is "
                            "better)", higher_is_better=False, threshold=0.0, seeds=(0, 1, 2), quick_seeds=(0,),
                     reported=PANEL_REPORTED)
STRAIGHT_RULE = Rule(metric="flow path straightness ||x_0 - x_1|| / path length, mean over draws and tokens (higher "
                            "is better)", higher_is_better=True, threshold=0.0, seeds=(0, 1, 2), quick_seeds=(0,),
                     reported=PANEL_REPORTED)


def _rules(kind: str, sampler: str) -> tuple[Rule, Rule]:
    """The (pareto, speedup) rules of one (base model, sampler): PARETO_RULE / SPEEDUP_RULE with the model and
    sampler named in ``reported`` (MAR and raster AR with Euler: the rules themselves, unchanged)."""
    if sampler == "euler" and kind != "xar":
        return PARETO_RULE, SPEEDUP_RULE
    what = f"{LABEL[kind]}, {SAMPLER_LABEL[sampler]}"
    return (dataclasses.replace(PARETO_RULE, reported=PARETO_RULE.reported.replace("Euler", what)),
            dataclasses.replace(SPEEDUP_RULE, reported=SPEEDUP_RULE.reported.replace("Euler", what)))


RULES = {(k, s): _rules(k, s) for k in KINDS for s in SAMPLERS}  # declared before anything runs


def claim_suffix(kind: str, sampler: str) -> str:
    """``mar`` / ``raster`` / ``xar`` for Euler, ``<model>-em`` for Euler-Maruyama (the claim-id suffix)."""
    return kind + ("-em" if sampler == "euler_maruyama" else "")


def ar_steps(kind: str) -> int:
    """n: the AR steps a DiSA schedule spans (MAR iterations, raster tokens, xAR entities)."""
    return {"mar": MAR_ITERS, "raster": L, "xar": G.xar_cells().count}[kind]


def arms(kind: str) -> dict:
    """{arm name: steps (an int T, or the DiSA table int32 [n] of ``kind``'s n AR steps)}."""
    from tokjax.vision.disa import disa_steps

    out = {f"T={t}": t for t in CONSTANT_T}
    for s in SCHEDULES:
        arith = "xar" if kind == "xar" and s == "linear" else "mar"  # xAR's official arithmetic is linear only
        out[f"DiSA {s}"] = disa_steps(ar_steps(kind), schedule=s, t_low=T_LOW, t_up=T_UP, arithmetic=arith)
    return out


def init_params(cfg, seed: int, kind: str):
    import jax

    return G.continuous_params(cfg, jax.random.key(1900 + seed), {"raster": "flow"}.get(kind, kind),
                               head_width=HEAD_WIDTH, head_depth=3)


def train_loss(kind: str):
    from tokjax.vision.flow import make_flow_loss
    from tokjax.vision.mar import make_mar_loss
    from tokjax.vision.xar import make_xar_loss

    if kind == "xar":  # p10_xar's reported arm: 4 x 4-token cells, noisy context
        return make_xar_loss((G.GRID, G.GRID), "cell", G.XAR_CELL, "noisy")
    return make_mar_loss() if kind == "mar" else make_flow_loss()


def decode(model, kind: str, steps, want, seed: int, sampler: str = "euler") -> tuple[np.ndarray, int, int]:
    """Returns (tokens [n, L, 4] raster order, head evals per image, forward passes per image)."""
    import jax

    from tokjax.vision.flow import continuous_ar, sample_continuous
    from tokjax.vision.mar import mar, sample_mar
    from tokjax.vision.xar import xar_sample

    def sample(labels, key):
        if kind == "mar":
            return sample_mar(model, mar(length=L, iters=MAR_ITERS, steps=steps, sampler=sampler), labels, key,
                              num_classes=G.CLASSES)
        if kind == "raster":
            return sample_continuous(model, continuous_ar(length=L, steps=steps, sampler=sampler), labels, key,
                                     num_classes=G.CLASSES)
        return xar_sample(model.params, model.cfg, labels, key, layout=G.xar_cells(), num_classes=G.CLASSES,
                          steps=steps, sampler=sampler)

    out = [sample(want[s:s + 250], jax.random.fold_in(jax.random.key(seed), s)) for s in range(0, want.size, 250)]
    return (np.concatenate([o.tokens for o in out]), int(out[0].stats["head_evals"]),
            int(out[0].stats["forward_calls"]))


def curve_at(runs: dict, e: float) -> float:
    """FD of the constant-T curve at head evals ``e``: linear in log2(head evals) between the bracketing arms."""
    pts = sorted((r["head_evals"], r["fd"]) for k, r in runs.items() if k.startswith("T="))
    xs = np.log2([p[0] for p in pts])
    return float(np.interp(np.log2(e), xs, [p[1] for p in pts]))


def figure(results: dict, floor, title: str):
    """FD vs head evaluations per image, one panel per (model, sampler) (seed mean; error bar 2 bootstrap SE)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    from experiments._harness import save_figure

    kinds = [k for k in KINDS if any(kk == k for kk, _ in results)]
    fig, axes = plt.subplots(len(kinds), len(SAMPLERS), figsize=(5.0 * len(SAMPLERS), 3.6 * len(kinds)),
                             squeeze=False)
    for row, kind in zip(axes, kinds):
        for ax, sampler in zip(row, SAMPLERS):
            per_seed = results.get((kind, sampler))
            if not per_seed:
                ax.set_visible(False)
                continue
            names = list(per_seed[0])
            mean = {k: float(np.mean([r[k]["fd"] for r in per_seed])) for k in names}
            se = {k: float(np.mean([r[k]["se"] for r in per_seed])) for k in names}
            ev = {k: per_seed[0][k]["head_evals"] for k in names}
            const = [k for k in names if k.startswith("T=")]
            ax.errorbar([ev[k] for k in const], [mean[k] for k in const], yerr=[2 * se[k] for k in const],
                        fmt="o-", c="k", capsize=3, label="constant T")
            for k in const:
                ax.annotate(k, (ev[k], mean[k]), textcoords="offset points", xytext=(4, 4), fontsize=7)
            for k in names:
                if not k.startswith("T="):
                    ax.errorbar([ev[k]], [mean[k]], yerr=[2 * se[k]], fmt="s", capsize=3,
                                label=f"{k} {T_UP}->{T_LOW}")
            ax.axhline(floor[0], ls="--", c="gray", lw=1, label="real vs real floor")
            ax.set_xscale("log", base=2)
            ax.set_xlabel("head evaluations per image")
            ax.set_ylabel("classifier FD (lower is better)")
            steps = {"mar": f"{MAR_ITERS} AR steps", "raster": "64 AR steps", "xar": "4 entities"}[kind]
            ax.set_title(f"{LABEL[kind]} ({steps}), {SAMPLER_LABEL[sampler]}", fontsize=9)
            ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    return save_figure(fig, "P19", "fd_vs_head_evals.png")


def token_conditions(model, kind: str, x, labels, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Returns (z float32 [N, L, D], fraction [N, L]): the condition each token of the generations ``x`` [N, L, 4]
    (token order) is sampled from, and the fraction of the image generated before it. Raster AR: the causal hidden
    states of ``[class, P x_0 .. P x_{L-2}]`` (exactly the decode's conditions), fraction i / L. MAR: a fresh random
    order per image (seeded; the decode's own order is not returned) with MAR's cosine fill; the tokens of AR step s
    read the forward in which the tokens of steps < s are known, fraction = (tokens of steps < s) / L."""
    import jax

    from tokjax.vision.flow import continuous_hidden
    from tokjax.vision.mar import mar_fill_counts, mar_hidden

    x, cls = np.asarray(x, np.float32), np.asarray(labels, np.int32)
    n, length = x.shape[:2]
    if kind == "raster":
        z = jax.jit(lambda p, xx: continuous_hidden(p, model.cfg, xx, cls))(model.params, x)
        return np.asarray(z), np.broadcast_to(np.arange(length) / length, (n, length))
    fills = mar_fill_counts(length, MAR_ITERS)
    starts = np.cumsum(np.concatenate([[0], fills[:-1]]))
    order = np.argsort(np.random.default_rng(1919 + seed).random((n, length)), axis=1)
    rank = np.argsort(order, axis=1)  # rank[b, i]: position of token i in image b's order
    step_of = np.searchsorted(starts, rank, side="right") - 1  # the AR step that fills token i
    hidden = jax.jit(lambda p, known: mar_hidden(p, model.cfg, x, known, cls))
    z = np.zeros(x.shape[:2] + (model.cfg.d_model,), np.float32)
    for s in range(MAR_ITERS):
        zs = np.asarray(hidden(model.params, rank < starts[s]))
        z = np.where((step_of == s)[..., None], zs, z)
    return z, starts[step_of] / length


def path_panel(model, kind: str, x, labels, seed: int) -> dict:
    """Returns {"fraction", "variance", "straightness"} (each [N * L], per token): the spread and the straightness
    of the flow head's sampling of each token of the generations ``x`` (:func:`tokjax.vision.flow.flow_path_stats`,
    ``PANEL_K`` draws of ``PANEL_T`` Euler steps from the token's condition, :func:`token_conditions`)."""
    import jax

    from tokjax.vision.flow import flow_path_stats

    z, frac = token_conditions(model, kind, x, labels, seed)
    head = model.params["mar" if kind == "mar" else "flow"]["head"]
    st = jax.jit(lambda h, zz, T: flow_path_stats(h, zz, jax.random.key(1919 + seed), samples=PANEL_K, steps=T))(
        head, z, PANEL_T)
    return {"fraction": np.asarray(frac).ravel(), "variance": np.asarray(st.variance).ravel(),
            "straightness": np.asarray(st.straightness).ravel()}


def bucket_means(panel: dict, key: str) -> np.ndarray:
    """Mean of ``panel[key]`` per generated-fraction bucket [BUCKETS] (equal width on [0, 1); NaN if empty)."""
    b = np.minimum((panel["fraction"] * BUCKETS).astype(int), BUCKETS - 1)
    return np.array([panel[key][b == i].mean() if np.any(b == i) else np.nan for i in range(BUCKETS)])


def early_late(panel: dict, key: str) -> tuple[float, float]:
    """(mean of ``panel[key]`` over tokens generated before EARLY, over tokens generated after >= LATE)."""
    f = panel["fraction"]
    return float(panel[key][f < EARLY].mean()), float(panel[key][f >= LATE].mean())


def panel_figure(panels: dict, title: str):
    """Sample variance and path straightness vs generated fraction (bucket means; seed mean, thin lines: seeds)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    from experiments._harness import save_figure

    centers = (np.arange(BUCKETS) + 0.5) / BUCKETS
    fig, axes = plt.subplots(1, 2, figsize=(10.0, 3.6))
    for ax, key, ylabel in zip(axes, ("variance", "straightness"),
                               (f"sample variance across {PANEL_K} draws", "path straightness |x0-x1| / length")):
        for kind, color in zip(PANEL_KINDS, ("C0", "C1")):
            per_seed = [bucket_means(p, key) for p in panels.get(kind, [])]
            if not per_seed:
                continue
            for m in per_seed:
                ax.plot(centers, m, c=color, lw=0.6, alpha=0.4)
            ax.plot(centers, np.nanmean(per_seed, axis=0), "o-", c=color, label=LABEL[kind])
        ax.set_xlabel("fraction of the image generated before the token")
        ax.set_ylabel(ylabel)
        ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    return save_figure(fig, "P19", "variance_straightness_vs_fraction.png")


def run(quick: bool) -> list[Row]:
    from experiments._common import memo_json
    from tokjax.vision.flow import continuous_batch_fn

    steps = {k: QUICK_STEPS for k in KINDS} if quick else FULL_STEPS
    n = QUICK_N if quick else FULL_N
    imgs, labels = G.glyph_set(V.TRAIN_N, V.TRAIN_SEED)
    tokens = G.to_tokens(imgs)
    floor = G.fd_with_se(G.glyph_set(n, V.FLOOR_SEED)[0])
    seeds = PARETO_RULE.run_seeds(quick)
    cfg = G.model_config()
    want = V.sample_labels(n)
    results = {(k, s): [] for k in KINDS for s in SAMPLERS}
    train_s = {k: [] for k in KINDS}
    panels = {k: [] for k in PANEL_KINDS}
    panel_n = QUICK_PANEL_N if quick else FULL_PANEL_N
    def one_kind(kind: str, seed: int) -> dict:
        fn = continuous_batch_fn(tokens, labels, num_classes=G.CLASSES, batch_size=V.BATCH,
                                 class_dropout=V.CLASS_DROPOUT, seed=seed)
        model, t = V.train_arm(cfg, fn, steps=steps[kind], seed=seed, params=init_params(cfg, seed, kind),
                               loss_fn=train_loss(kind))
        print(f"[p19] seed {seed} {kind}: trained {steps[kind]} steps in {t:.0f}s", file=sys.stderr, flush=True)
        out = {"train_s": t, "per": {}, "panel": None}
        for sampler in SAMPLERS:
            per = {}
            for name, sched in arms(kind).items():
                if quick and name not in QUICK_ARMS[sampler]:
                    continue
                t0 = time.perf_counter()
                x, evals, passes = decode(model, kind, sched, want, seed, sampler)
                per[name] = G.quality(G.to_images(x), want, passes, evals, time.perf_counter() - t0)
                if kind in PANEL_KINDS and sampler == "euler" and name == f"T={PANEL_T}":
                    t0 = time.perf_counter()
                    out["panel"] = path_panel(model, kind, x[:panel_n], want[:panel_n], seed)
                    print(f"[p19] seed {seed} {kind} panel ({panel_n} images, {PANEL_K} draws, T={PANEL_T}): "
                          f"{time.perf_counter() - t0:.0f}s", file=sys.stderr, flush=True)
                print(f"[p19] seed {seed} {kind} {sampler} {name}: FD {per[name]['fd']:.3f} (SE "
                      f"{per[name]['se']:.3f}), {evals} head evals, {passes} passes, {per[name]['seconds']:.0f}s",
                      file=sys.stderr, flush=True)
            out["per"][sampler] = per
        return out

    # each (seed, model kind) is cached: a full run killed half-way resumes, and a `--seeds` process filling the
    # cache walks the units in reverse, so it meets the main run in the middle
    units = [(seed, kind) for seed in seeds for kind in KINDS]
    done = {}
    for seed, kind in reversed(units) if partial_seeds_run() else units:
        done[seed, kind] = memo_json("p19-kind", dict(kind=kind, seed=seed, steps=steps[kind], n=n, quick=quick,
                                                      panel_n=panel_n, cfg=cfg, version=1),
                                     lambda kind=kind, seed=seed: one_kind(kind, seed))
    for seed, kind in units:
        r = done[seed, kind]
        train_s[kind].append(r["train_s"])
        for sampler in SAMPLERS:
            results[(kind, sampler)].append(r["per"][sampler])
        if r["panel"] is not None:
            panels[kind].append({k: np.asarray(v) for k, v in r["panel"].items()})
    fig = figure(results, floor, f"P19 DiSA, glyphs 16x16 (2x2 patches), {steps['mar']} / {steps['raster']} / "
                                 f"{steps['xar']} steps (MAR / raster / xAR), {len(seeds)} seed(s)")
    rows = []
    for kind in KINDS:
        for sampler in SAMPLERS:
            rows += claim_rows(kind, sampler, results[(kind, sampler)], seeds, floor, train_s[kind], steps[kind], n,
                               fig)
    pfig = panel_figure(panels, f"P19 DiSA motivation: per-token flow-head sampling ({PANEL_K} draws, T={PANEL_T} "
                                f"Euler) vs generated fraction; {panel_n} generations, {len(seeds)} seed(s)")
    return rows + panel_rows(panels, seeds, steps["mar"], panel_n, pfig)


def panel_rows(panels: dict, seeds, steps: int, panel_n: int, fig) -> list[Row]:
    """The motivation rows (MAR, under VARIANCE_RULE / STRAIGHT_RULE); raster AR and the buckets in the note."""
    setting = (f"MAR of the run (16 AR steps, cosine fill, {steps} training steps), {panel_n} generations (T=50 "
               f"Euler, guidance 1), each token's condition replayed (fresh random order, the same fill) and sampled "
               f"{PANEL_K} times with T={PANEL_T} Euler steps, temperature 1")
    note = "; ".join(
        f"{LABEL[k]} {key} per fraction decile (seed mean): "
        f"{[round(float(v), 4) for v in np.nanmean([bucket_means(p, key) for p in panels[k]], axis=0)]}"
        for k in PANEL_KINDS for key in ("variance", "straightness"))
    rows = []
    for key, rule, cid, what in (("variance", VARIANCE_RULE, "motivation-variance", "lower sample variance"),
                                 ("straightness", STRAIGHT_RULE, "motivation-straight", "straighter flow paths")):
        early, late = zip(*[early_late(p, key) for p in panels["mar"]])
        ras = [early_late(p, key) for p in panels["raster"]]
        rows.append(Row(
            pid="P19", claim_id=cid,
            claim=f"tokens generated late (after >= {LATE:.0%} of the image) have {what} than early ones (before "
                  f"{EARLY:.0%}) on MAR (the paper's motivation for annealing)",
            setting=setting, baseline_name=f"tokens generated before {EARLY:.0%}",
            baseline_value=round(float(np.mean(early)), 4), method_value=round(float(np.mean(late)), 4),
            metric=rule.metric, verdict=rule.verdict(late, early, seeds=seeds), figure=fig,
            note=f"per seed early -> late: {[(round(a, 4), round(b, 4)) for a, b in zip(early, late)]}; raster AR "
                 f"early -> late: {[(round(a, 4), round(b, 4)) for a, b in ras]}; {note}"))
    return rows


def claim_rows(kind: str, sampler: str, per_seed: list, seeds, floor, train_s, steps: int, n: int, fig) -> list[Row]:
    """The pareto and speedup rows of one (base model, sampler), under ``RULES[(kind, sampler)]``."""
    pareto_rule, speedup_rule = RULES[(kind, sampler)]
    label, suffix, sname = LABEL[kind], claim_suffix(kind, sampler), SAMPLER_LABEL[sampler]
    model = {"mar": f"MAR {MAR_ITERS} AR steps (cosine fill), flow head width {HEAD_WIDTH}",
             "raster": f"raster AR 64 AR steps, flow head width {HEAD_WIDTH}",
             "xar": "xAR 4x4-token cells (4 entities), noisy context, velocity read-out"}[kind]
    setting = (f"class-conditional glyphs 16x16 as 8x8 tokens of 2x2 patches (4-dim, [-1,1]), d=64x2 layers, "
               f"batch {V.BATCH}, {steps} steps, {n} samples vs {V.REF_N} real, {sname}, guidance 1; {model}")
    lin = [r["DiSA linear"] for r in per_seed]
    curve = [curve_at(r, r["DiSA linear"]["head_evals"]) for r in per_seed]
    z = [(r["T=50"]["fd"] - r["DiSA linear"]["fd"]) / np.hypot(r["T=50"]["se"], r["DiSA linear"]["se"])
         for r in per_seed]
    note = "; ".join(
        f"{k}: FD {np.mean([r[k]['fd'] for r in per_seed]):.3f} "
        f"(SE {np.mean([r[k]['se'] for r in per_seed]):.3f}), "
        f"cons {np.mean([r[k]['consistency'] for r in per_seed]):.2f}, {per_seed[0][k]['head_evals']} evals, "
        f"{per_seed[0][k]['passes']} passes, {per_seed[0][k]['seconds']:.1f}s" for k in per_seed[0])
    note += (f"; curve at DiSA linear's evals: {[round(c, 3) for c in curve]}; "
             f"z vs T=50: {[round(float(v), 2) for v in z]}"
             f"; floor FD {floor[0]:.3f} (SE {floor[1]:.3f}); train {np.mean(train_s):.0f}s")
    e_lin, e_50 = lin[0]["head_evals"], per_seed[0]["T=50"]["head_evals"]
    paper = "5-10x MAR, 1.4-2.5x xAR/FlowAR"
    em = "" if sampler == "euler" else f" ({sname})"
    return [
        Row(pid="P19", claim_id=f"pareto-{suffix}",
            claim=f"DiSA (linear 50->5) lies below the constant-T FD-vs-head-evals curve on {label}{em}",
            setting=setting, baseline_name=f"constant-T curve at {e_lin} head evals",
            baseline_value=round(float(np.mean(curve)), 4),
            method_value=round(float(np.mean([r["fd"] for r in lin])), 4),
            metric=pareto_rule.metric, verdict=pareto_rule.verdict([r["fd"] for r in lin], curve, seeds=seeds),
            figure=fig, note=note),
        Row(pid="P19", claim_id=f"speedup-{suffix}",
            claim=f"DiSA keeps constant T=50's FD (within 1 SE) at {e_50 / e_lin:.1f}x fewer head evals on {label}"
                  f"{em} (paper: {paper})",
            setting=setting, baseline_name="constant T=50 (z = 0)", baseline_value=0.0,
            method_value=round(float(np.mean(z)), 3), metric=speedup_rule.metric,
            verdict=speedup_rule.verdict(z, [0.0] * len(z), seeds=seeds), figure=fig, note=note),
    ]


if __name__ == "__main__":
    raise SystemExit(run_cli(run))
