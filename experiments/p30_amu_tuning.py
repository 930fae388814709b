"""P30 AMU-Tuning: an auxiliary-feature logit bias with multi-branch training and uncertainty fusion.

Paper claim (Tang et al., CVPR 2024): a logit bias from auxiliary features (MoCo v3), computed by a
class-mean-initialised linear classifier trained with multi-branch training (lambda CE(fused) +
(1 - lambda) CE(aux)) and fused with CLIP's zero-shot logits z_0 through an uncertainty gate
kappa(z_0) = (kurt(softmax z_0) / 250)^-power (the kurtosis "moment" gate of the official
``clip/amu.py``), beats CLIP few-shot baselines (70.02% ImageNet 16-shot, RN50). The paper's
ablations credit each part: multi-branch training and the uncertainty fusion each add accuracy.

Why this setting (issue 15): the first version used 10 classes and features whose 100-cos logits
were ~20 nats apart, so softmax(z_0) was one-hot on every row and the kurtosis gate was the
constant 4.29 (a one-spike vector over C classes has kurtosis (C^2-3C+3)/C * (C-1)/C, whatever
its height). "AMU" was then the single-branch bias with a 4.3x larger weight, and the baseline's
weight was never tuned. This version fixes both:

* **A gate that varies.** 100 classes in 20 super-classes of 5 (confusions concentrate inside a
  super-class, as ImageNet's dog breeds do), and a 2048-d "CLIP" space where image and text
  embeddings share only a small signal, so 100 cos(f, t_c) has a CLIP-like spread (a few nats
  across classes) at CLIP's fixed scale 100. The zero-shot classifier is then roughly calibrated
  (its expected calibration error is reported) instead of one-hot, and kappa ranges over
  [1.47, ~5.9] (1.47 is the one-spike floor at C = 100). Per-sample signal strengths are drawn
  uniformly, so some rows are easy and some hard in each view. Its spread (5th/50th/95th
  percentile on the test set) is reported per seed, and the figure sets it against the old
  setting's spike.
* **Tuned baselines at the same budget.** Every arm trains 24 configurations and picks one by
  accuracy on a validation split (drawn like the test set, disjoint from it, never the test
  set): the single-branch bias (lambda = 1, kappa = 1) tunes alpha over 24 log-spaced values;
  AMU and the constant-gate multi-branch arm tune alpha over 12 log-spaced values (same range) x
  lambda in {0.35 (the paper's), 0.7}. power = 0.4 and the constant 250 stay the official values.
  The 24 configurations (x 4 checkpoints) are trained as one stacked parameter [24, D, C] whose loss is the sum of
  the per-configuration losses: with AdamW (elementwise) and no global-norm clipping this is
  exactly 24 independent trainings, compiled once.

Stand-in, stated plainly: no CLIP, no MoCo, no images (synthetic features; the auxiliary view is
independent of the zero-shot view given the class, as complementary features are meant to be, and
carries a low-rank nuisance so that training the probe beats its class-mean initialisation, as
with real features). Training: full-batch AdamW (lr 1e-3, weight decay 0.01, b2 0.999, cosine
decay to 0 over 160 steps, no warm-up) through ``tokjax.train``; validation accuracy is read at
steps 20/40/80/160 and the selection covers the checkpoint too, as the official run keeps its best
epoch (there chosen on the test set; here on validation, the same rule for every arm). The
official run uses batch 8 for 50 epochs and AdamW eps 1e-4 (TrainConfig has no eps; optax's 1e-8).

Claims (one Row each; rules declared below before anything runs; 5 seeds, data and shots redrawn
per seed; headline at 4 shots, 1 and 16 shots reported in the note under the same rule):

* ``vs-tuned-baseline``: AMU beats the single-branch logit bias, both tuned on validation.
* ``gate``: the kurtosis gate beats a constant gate (same multi-branch training, same grid).
* ``multi-branch``: multi-branch training (constant gate) beats single-branch training.
* ``imagenet``: the paper's CLIP + MoCo v3 ImageNet numbers (untested here).
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as `python experiments/p30_amu_tuning.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from experiments._harness import Row, Rule, run_cli, save_figure, train_model  # noqa: E402

_SEEDS, _QUICK_SEEDS = (0, 1, 2, 3, 4), (0, 1)
_REPORTED = ("each arm's configuration chosen on a validation split (24 configurations per arm: single-branch "
             "alpha x24; AMU and constant-gate alpha x12 by lambda {0.35, 0.7}; power 0.4 fixed)")
RULE_VS_BASELINE = Rule(metric="test top-1 accuracy at 4 shots", higher_is_better=True, threshold=0.002,
                        seeds=_SEEDS, quick_seeds=_QUICK_SEEDS, reported=_REPORTED)
RULE_GATE = Rule(metric="test top-1 accuracy at 4 shots", higher_is_better=True, threshold=0.002,
                 seeds=_SEEDS, quick_seeds=_QUICK_SEEDS, reported=_REPORTED)
RULE_MULTI_BRANCH = Rule(metric="test top-1 accuracy at 4 shots", higher_is_better=True, threshold=0.002,
                         seeds=_SEEDS, quick_seeds=_QUICK_SEEDS, reported=_REPORTED)

HEAD_SHOTS = 4
C, N_SUPER, D_ZS, D_AUX = 100, 20, 2048, 256
SIGNAL_ZS, SIGNAL_AUX = (0.02, 0.15), (0.15, 0.50)  # per-sample signal strength ranges (noise has norm ~1)
# low-rank nuisance in the aux view (as real features have), so a trained probe beats the class-mean init;
# with isotropic noise the class mean is already near-optimal and training could only overfit
AUX_NUISANCE_RANK, AUX_NUISANCE = 16, 0.18
SUB_WEIGHT, TEXT_NOISE = 0.8, 0.6  # class = super-class direction + 0.8 own direction; text = class + noise
N_VAL, N_TEST = 2000, 4000
STEPS, LR = 160, 1e-3
CHECKPOINTS = (20, 40, 80, 160)  # validation picks the step too, as the official run keeps its best epoch
ALPHA_RANGE = (0.05, 20.0)
LAMBDAS = (0.35, 0.7)
POWER = 0.4


def make_task(seed: int, shots: int, n_val: int = N_VAL, n_test: int = N_TEST) -> dict:
    """Returns dict of NumPy arrays: frozen zero-shot logits z0 = 100 cos(f, t_c), aux features and labels for the
    K-shot train set (``z0, f, y``), the validation split (``*_val``) and the test set (``*_test``)."""
    import numpy as np

    r = np.random.default_rng(seed)
    sup = r.normal(size=(N_SUPER, D_ZS))
    cls = sup[np.arange(C) % N_SUPER] + SUB_WEIGHT * r.normal(size=(C, D_ZS))
    cls /= np.linalg.norm(cls, axis=1, keepdims=True)
    text = cls + TEXT_NOISE * r.normal(size=(C, D_ZS)) / np.sqrt(D_ZS)  # imperfect "text embeddings"
    text /= np.linalg.norm(text, axis=1, keepdims=True)
    proto_aux = r.normal(size=(C, D_AUX))
    proto_aux /= np.linalg.norm(proto_aux, axis=1, keepdims=True)
    nuisance = r.normal(size=(AUX_NUISANCE_RANK, D_AUX)) / np.sqrt(D_AUX)

    def draw(y):
        n = len(y)
        f_zs = r.uniform(*SIGNAL_ZS, size=(n, 1)) * cls[y] + r.normal(size=(n, D_ZS)) / np.sqrt(D_ZS)
        f_zs /= np.linalg.norm(f_zs, axis=1, keepdims=True)
        f_aux = (r.uniform(*SIGNAL_AUX, size=(n, 1)) * proto_aux[y] + r.normal(size=(n, D_AUX)) / np.sqrt(D_AUX)
                 + AUX_NUISANCE * r.normal(size=(n, AUX_NUISANCE_RANK)) @ nuisance)
        return (100.0 * f_zs @ text.T).astype(np.float32), f_aux.astype(np.float32), y.astype(np.int32)

    out = {}
    for suffix, y in (("", np.repeat(np.arange(C), shots)), ("_val", r.integers(0, C, n_val)),
                      ("_test", r.integers(0, C, n_test))):
        out["z0" + suffix], out["f" + suffix], out["y" + suffix] = draw(y)
    return out


def legacy_zero_shot_logits(seed: int, n: int = 3000):
    """Returns zero-shot logits [n, 10] with the first version's geometry (10 classes, 32-d, noise 2.0, text noise
    0.9, 100 cos): the one-hot regime where the kurtosis gate is constant."""
    import numpy as np

    r = np.random.default_rng(seed)
    proto = r.normal(size=(10, 32))
    text = proto + 0.9 * r.normal(size=(10, 32))
    text /= np.linalg.norm(text, axis=1, keepdims=True)
    y = r.integers(0, 10, n)
    f = proto[y] + 2.0 * r.normal(size=(n, 32))
    f /= np.linalg.norm(f, axis=1, keepdims=True)
    return (100.0 * f @ text.T).astype(np.float32)


def expected_calibration_error(z, y, bins: int = 15) -> float:
    """Returns the 15-bin expected calibration error of softmax(z) (top-1 confidence vs accuracy)."""
    import numpy as np

    p = np.exp(z - z.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    conf, correct = p.max(-1), p.argmax(-1) == y
    edges = np.linspace(0.0, 1.0, bins + 1)
    err = 0.0
    for lo, hi in zip(edges[:-1], edges[1:]):
        m = (conf > lo) & (conf <= hi)
        if m.any():
            err += m.mean() * abs(conf[m].mean() - correct[m].mean())
    return float(err)


def arm_grids():
    """Returns {arm: (kind, alphas [G], lams [G])}: the 24 configurations each arm tunes over (fixed in advance)."""
    import numpy as np

    a24 = np.geomspace(*ALPHA_RANGE, 24)
    a12 = np.geomspace(*ALPHA_RANGE, 12)
    multi_a, multi_l = np.repeat(a12, len(LAMBDAS)), np.tile(np.asarray(LAMBDAS), len(a12))
    return {
        "single_branch": ("none", a24, np.ones_like(a24)),
        "const_gate": ("none", multi_a, multi_l),
        "amu": ("moment", multi_a, multi_l),
        "amu_default": ("moment", np.array([0.5]), np.array([0.35])),  # the official run.sh values, untuned
    }


def run(quick: bool) -> list[Row]:
    import jax
    import jax.numpy as jnp
    import numpy as np

    from tokjax.logits.amu_tuning import amu_fuse, amu_init, amu_logits, amu_loss, uncertainty_factor

    seeds = RULE_VS_BASELINE.run_seeds(quick)
    shot_list = (HEAD_SHOTS,) if quick else (1, HEAD_SHOTS, 16)
    grids = arm_grids()

    def make_loss(kind):
        # one stacked [G, D, C] parameter, summed per-configuration losses: each slice's gradient is its own
        # loss's, AdamW is elementwise and clipping is off, so this is G independent trainings
        def loss_fn(w, cfg, batch, rng):
            per = jax.vmap(lambda wg, a, lam: amu_loss(wg, batch["z0"], batch["f"], batch["y"], alpha=a, lam=lam,
                                                       kind=kind, power=POWER)[0])(w, batch["alpha"], batch["lam"])
            return jnp.sum(per), {"mean_loss": jnp.mean(per)}
        return loss_fn

    losses = {kind: make_loss(kind) for kind in ("none", "moment")}

    def accuracy_fn(kind):
        @jax.jit
        def acc(w, alphas, z0, f, y):  # [G] fused accuracies and [G] aux-branch accuracies
            def one(wg, a):
                za = amu_logits(wg, f)
                fused = amu_fuse(z0, za, a, kind=kind, power=POWER)
                return jnp.mean(jnp.argmax(fused, -1) == y), jnp.mean(jnp.argmax(za, -1) == y)
            return jax.vmap(one)(w, alphas)
        return acc

    accuracies = {kind: accuracy_fn(kind) for kind in ("none", "moment")}
    arms = tuple(grids)
    table = {s: {k: [] for k in (*arms, "zero_shot", "aux_init", "aux_amu", "ece")} for s in shot_list}
    chosen = {s: {a: [] for a in arms} for s in shot_list}
    gate_pct, val_curves = {}, {}
    for shots in shot_list:
        for seed in seeds:
            t = make_task(seed, shots)
            ev = {split: tuple(jnp.asarray(t[k + split]) for k in ("z0", "f", "y")) for split in ("_val", "_test")}
            table[shots]["zero_shot"].append(float(np.mean(np.argmax(t["z0_test"], -1) == t["y_test"])))
            table[shots]["ece"].append(expected_calibration_error(t["z0_test"], t["y_test"]))
            if shots == HEAD_SHOTS:
                gate_pct[seed] = np.percentile(np.asarray(uncertainty_factor(ev["_test"][0], "moment", POWER)),
                                               (5, 50, 95))
            w0 = amu_init(jnp.asarray(t["f"]), jnp.asarray(t["y"]), C)
            table[shots]["aux_init"].append(float(np.mean(np.argmax(amu_logits(w0, t["f_test"]), -1) == t["y_test"])))
            for arm, (kind, alphas, lams) in grids.items():
                G = len(alphas)
                a = jnp.asarray(alphas, jnp.float32)
                batch = {"z0": jnp.asarray(t["z0"]), "f": jnp.asarray(t["f"]), "y": jnp.asarray(t["y"]),
                         "alpha": a, "lam": jnp.asarray(lams, jnp.float32)}
                evals = {}  # step -> (val fused [G], test fused [G], test aux [G])

                def at_checkpoint(step, state, metrics, kind=kind, a=a, evals=evals):
                    if step in CHECKPOINTS:
                        evals[step] = (np.asarray(accuracies[kind](state.params, a, *ev["_val"])[0]),
                                       *(np.asarray(x) for x in accuracies[kind](state.params, a, *ev["_test"])))

                # full-batch AdamW, cosine decay to 0 (the official CosineAnnealingLR), no warm-up, no clipping
                train_model(None, steps=STEPS, batch_fn=lambda step, batch=batch: batch, loss_fn=losses[kind],
                            params=jnp.broadcast_to(w0, (G, *w0.shape)), lr=LR, warmup_steps=0, weight_decay=0.01,
                            grad_clip=None, b2=0.999, min_lr_ratio=0.0, seed=seed, callback=at_checkpoint)
                # selection on the validation split only: configuration and checkpoint, ties to the earliest
                val = np.stack([evals[c][0] for c in CHECKPOINTS])  # [checkpoints, G]
                ci, gi = np.unravel_index(int(np.argmax(val)), val.shape)
                _, test_acc, test_aux = evals[CHECKPOINTS[ci]]
                table[shots][arm].append(float(test_acc[gi]))
                chosen[shots][arm].append((float(alphas[gi]), float(lams[gi]), CHECKPOINTS[ci]))
                if arm == "amu":
                    table[shots]["aux_amu"].append(float(test_aux[gi]))
                if shots == HEAD_SHOTS and seed == seeds[0]:
                    val_curves[arm] = (alphas, lams, val.max(0))

    h = table[HEAD_SHOTS]
    v_base = RULE_VS_BASELINE.verdict(h["amu"], h["single_branch"], seeds=seeds)
    v_gate = RULE_GATE.verdict(h["amu"], h["const_gate"], seeds=seeds)
    v_multi = RULE_MULTI_BRANCH.verdict(h["const_gate"], h["single_branch"], seeds=seeds)

    legacy = np.concatenate([np.asarray(uncertainty_factor(legacy_zero_shot_logits(s), "moment", POWER))[:, 0]
                             for s in seeds])
    new_gate = np.asarray(uncertainty_factor(jnp.asarray(make_task(seeds[0], HEAD_SHOTS)["z0_test"]), "moment",
                                             POWER))[:, 0]
    figure = _gate_figure(legacy, new_gate, val_curves)

    def mean(x):
        return float(np.mean(x))

    def fmt_choice(arm, shots=HEAD_SHOTS):
        return ", ".join(f"a={a:.2g}/l={l:.2g}/step {k}" for a, l, k in chosen[shots][arm])

    spread = "; ".join(f"seed {s}: {p[0]:.2f}/{p[1]:.2f}/{p[2]:.2f}" for s, p in gate_pct.items())
    legacy_pct = np.percentile(legacy, (5, 50, 95))
    context = (f"zero-shot {mean(h['zero_shot']):.3f} (ECE {mean(h['ece']):.3f}), aux class-mean init "
               f"{mean(h['aux_init']):.3f}, AMU's aux branch {mean(h['aux_amu']):.3f}, AMU at the official "
               f"alpha 0.5/lambda 0.35 untuned {mean(h['amu_default']):.3f}")
    gate_text = (f"kurtosis gate kappa 5th/50th/95th percentile on the test set: {spread} (old 10-class setting: "
                 f"{legacy_pct[0]:.2f}/{legacy_pct[1]:.2f}/{legacy_pct[2]:.2f})")
    others = []
    for shots in shot_list:
        if shots == HEAD_SHOTS:
            continue
        t_ = table[shots]
        others.append(
            f"{shots}-shot: single-branch {mean(t_['single_branch']):.3f}, constant gate {mean(t_['const_gate']):.3f}, "
            f"AMU {mean(t_['amu']):.3f}, zero-shot {mean(t_['zero_shot']):.3f} (same rules: vs-baseline "
            f"{RULE_VS_BASELINE.verdict(t_['amu'], t_['single_branch'], seeds=seeds).status}, gate "
            f"{RULE_GATE.verdict(t_['amu'], t_['const_gate'], seeds=seeds).status}, multi-branch "
            f"{RULE_MULTI_BRANCH.verdict(t_['const_gate'], t_['single_branch'], seeds=seeds).status})")
    other_text = ("; ".join(others) + ". ") if others else ""
    common = (f"Chosen on validation (alpha/lambda/checkpoint per seed): single-branch {fmt_choice('single_branch')}; "
              f"constant gate {fmt_choice('const_gate')}; AMU {fmt_choice('amu')}. {other_text}"
              f"{STEPS} full-batch AdamW steps (cosine to 0) through tokjax.train, checkpoints "
              f"{'/'.join(map(str, CHECKPOINTS))}; synthetic two-view features stand "
              f"in for CLIP/MoCo; validation {N_VAL}, test {N_TEST} samples per seed.")
    setting = (f"synthetic {C}-class (20 super-classes) two-view features: frozen 100 cos 'zero-shot' classifier in "
               f"{D_ZS}-d, aux linear classifier on a {D_AUX}-d view, {HEAD_SHOTS} shots (also "
               f"{'/'.join(str(s) for s in shot_list if s != HEAD_SHOTS) or 'none in quick'}), {len(seeds)} seeds, "
               f"24 configurations per arm tuned on a validation split")
    metric = f"test top-1 accuracy at {HEAD_SHOTS} shots (higher is better)"
    rows = [
        Row(pid="P30", claim_id="vs-tuned-baseline",
            claim="AMU (multi-branch training + kurtosis-gated fusion of an aux-feature logit bias) beats a "
                  "single-branch logit bias whose weight alpha is tuned on validation with the same budget",
            setting=setting, baseline_name="single-branch logit bias (lambda=1, no gate), alpha tuned",
            baseline_value=round(mean(h["single_branch"]), 4), method_value=round(mean(h["amu"]), 4),
            metric=metric, verdict=v_base, figure=figure,
            note=f"{context}. {gate_text}. {common}"),
        Row(pid="P30", claim_id="gate",
            claim="the uncertainty (kurtosis) gate kappa(z_0) beats a constant gate with the same multi-branch "
                  "training and the same tuning grid",
            setting=setting, baseline_name="multi-branch, constant gate (kappa=1), alpha and lambda tuned",
            baseline_value=round(mean(h["const_gate"]), 4), method_value=round(mean(h["amu"]), 4),
            metric=metric, verdict=v_gate, figure=figure,
            note=f"{gate_text}. A constant gate with alpha tuned is any constant kappa, so this isolates the "
                 f"gate's variation across rows. {common}"),
        Row(pid="P30", claim_id="multi-branch",
            claim="multi-branch training (lambda CE(fused) + (1-lambda) CE(aux)) beats single-branch training of the "
                  "logit bias (both with a constant gate, tuned on validation)",
            setting=setting, baseline_name="single-branch logit bias (lambda=1), alpha tuned",
            baseline_value=round(mean(h["single_branch"]), 4), method_value=round(mean(h["const_gate"]), 4),
            metric=metric, verdict=v_multi, note=common),
        Row(pid="P30", claim_id="imagenet",
            claim="AMU-Tuning with CLIP RN50 + MoCo v3 reaches 70.02% ImageNet 16-shot top-1 and beats CLIP "
                  "few-shot baselines (Tip-Adapter-F and others) on 11 datasets",
            setting="not run", baseline_name="CLIP few-shot baselines", baseline_value=None, method_value=None,
            metric="ImageNet top-1 accuracy", verdict="untested-here",
            note="needs CLIP and MoCo v3 weights and ImageNet images (none available offline here); the synthetic "
                 "rows test the method's mechanism only"),
    ]
    return rows


def _gate_figure(legacy, new_gate, val_curves):
    """Writes experiments/figures/p30_gate_spread.png; returns its path (None without matplotlib)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    import numpy as np

    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(11, 3.8))
    bins = np.linspace(min(legacy.min(), new_gate.min()) - 0.1, max(legacy.max(), new_gate.max()) + 0.1, 60)
    ax0.hist(legacy, bins=bins, alpha=0.6, density=True, label="old: 10 classes (one-hot softmax)")
    ax0.hist(new_gate, bins=bins, alpha=0.6, density=True, label=f"new: {C} classes, CLIP-like spread")
    ax0.set_xlabel("kurtosis gate kappa(z_0) on test rows")
    ax0.set_ylabel("density")
    ax0.set_title("P30 gate spread")
    ax0.legend(fontsize=8)
    for arm, style in (("single_branch", "-"), ("const_gate", "--"), ("amu", "-")):
        if arm not in val_curves:
            continue
        alphas, lams, acc = val_curves[arm]
        for lam in sorted(set(lams.tolist())):
            m = lams == lam
            label = arm if arm == "single_branch" else f"{arm} lambda={lam:g}"
            ax1.plot(alphas[m], acc[m], style, marker=".", label=label)
    ax1.set_xscale("log")
    ax1.set_xlabel("alpha")
    ax1.set_ylabel(f"val accuracy, best checkpoint ({HEAD_SHOTS} shots, seed 0)")
    ax1.set_title("tuning curves (same budget per arm)")
    ax1.legend(fontsize=7)
    path = save_figure(fig, 30, "gate_spread.png")
    return str(path)


if __name__ == "__main__":
    raise SystemExit(run_cli(run))
