"""P30 AMU-Tuning: an auxiliary-feature logit bias with multi-branch training and uncertainty fusion.

Paper claim (Tang et al., CVPR 2024): a logit bias from auxiliary features (MoCo v3), computed by a
class-mean-initialised linear classifier trained with multi-branch training (lambda CE(fused) +
(1 - lambda) CE(aux)) and fused with CLIP's zero-shot logits through an uncertainty gate, beats
CLIP few-shot baselines (70.02% ImageNet 16-shot, RN50).

Stand-in, stated plainly: no CLIP, no MoCo, no images. scikit-learn's digits are not installed in
this environment, so the features are synthetic: 10 classes with random prototypes; the
"zero-shot" branch is a frozen cosine classifier (logits 100 cos, as CLIP) whose class vectors
("text embeddings") are noisy copies of the prototypes of a *weak* 32-d feature view; the
auxiliary branch sees a second, 64-d feature view and has K labelled shots per class. The
comparison is the paper's ablation axis on this stand-in:

* zero-shot alone; the auxiliary linear probe alone (trained);
* single-branch logit bias (lambda = 1, no gate: CE on z_0 + alpha z_aux) — the baseline;
* AMU (lambda = 0.35, kurtosis gate "moment", power 0.4, alpha 0.5 — the repository defaults).

AdamW (lr 1e-3, weight decay 0.01, constant rate) on the K-shot set, full batch, as the official
adapter training, through ``tokjax.train`` (a params pytree and a loss, no model config); accuracy
on 3000 held-out samples, several seeds (data and shots redrawn per seed). The verdict rule is
declared below: AMU must beat the single-branch bias by more than 0.2 accuracy points on every
seed at 4 shots (the other shot counts are reported in the note with the same rule).
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as `python experiments/p30_amu_tuning.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from experiments._harness import Row, Rule, run_cli, train_model  # noqa: E402

RULE = Rule(metric="held-out top-1 accuracy at 4 shots", higher_is_better=True, threshold=0.002,
            seeds=tuple(range(10)), quick_seeds=tuple(range(5)),
            reported="AMU with the repository defaults (lambda 0.35, kurtosis gate, alpha 0.5), fixed in advance")
HEAD_SHOTS = 4
C, D_ZS, D_AUX = 10, 32, 64


def make_task(seed: int, shots: int, n_test: int = 3000):
    """Returns dict of NumPy arrays: zero-shot logits and aux features for the K-shot train set and the test set."""
    import numpy as np

    r = np.random.default_rng(seed)
    proto_zs = r.normal(size=(C, D_ZS))
    proto_aux = r.normal(size=(C, D_AUX))
    text = proto_zs + 0.9 * r.normal(size=(C, D_ZS))  # imperfect "text embeddings"
    text /= np.linalg.norm(text, axis=1, keepdims=True)

    def draw(n, classes=None):
        y = r.integers(0, C, n) if classes is None else classes
        f_zs = proto_zs[y] + 2.0 * r.normal(size=(n, D_ZS))
        f_aux = proto_aux[y] + 2.6 * r.normal(size=(n, D_AUX))
        f_zs /= np.linalg.norm(f_zs, axis=1, keepdims=True)
        return (100.0 * f_zs @ text.T).astype(np.float32), f_aux.astype(np.float32), y.astype(np.int32)

    train = draw(C * shots, np.repeat(np.arange(C), shots))
    test = draw(n_test)
    return {"z0": train[0], "f": train[1], "y": train[2], "z0_test": test[0], "f_test": test[1], "y_test": test[2]}


def run(quick: bool) -> Row:
    import jax
    import jax.numpy as jnp
    import numpy as np

    from tokjax.logits.amu_tuning import amu_fuse, amu_init, amu_logits, amu_loss

    seeds = RULE.run_seeds(quick)
    shot_list = (HEAD_SHOTS,) if quick else (2, HEAD_SHOTS, 8)
    steps = 300
    variants = {  # name: (lam, kind)
        "aux_only": (0.0, "none"),
        "single_branch": (1.0, "none"),
        "multi_branch": (0.35, "none"),  # ablation: multi-branch training without the gate
        "amu": (0.35, "moment"),
    }

    def make_loss(lam, kind):  # one function per variant, so tokjax.train compiles each once
        def loss_fn(w, cfg, batch, rng):
            loss = amu_loss(w, batch["z0"], batch["f"], batch["y"], alpha=0.5, lam=lam, kind=kind)[0]
            return loss, {}
        return loss_fn

    losses = {name: make_loss(*v) for name, v in variants.items()}

    @jax.jit
    def accuracies(w, z0, f, y):
        za = amu_logits(w, f)
        out = {"aux": jnp.mean(jnp.argmax(za, -1) == y)}
        for kind in ("none", "moment"):
            out[kind] = jnp.mean(jnp.argmax(amu_fuse(z0, za, 0.5, kind=kind), -1) == y)
        return out

    table = {shots: {m: [] for m in ("zero_shot", "aux_init", *variants)} for shots in shot_list}
    for shots in shot_list:
        for seed in seeds:
            t = make_task(seed, shots)
            z0t, ft, yt = (jnp.asarray(t[k]) for k in ("z0_test", "f_test", "y_test"))
            table[shots]["zero_shot"].append(float(np.mean(np.argmax(t["z0_test"], -1) == t["y_test"])))
            w0 = amu_init(jnp.asarray(t["f"]), jnp.asarray(t["y"]), C)
            table[shots]["aux_init"].append(float(accuracies(w0, z0t, ft, yt)["aux"]))
            full_batch = {k: jnp.asarray(t[k]) for k in ("z0", "f", "y")}
            for name, (lam, kind) in variants.items():
                # full-batch AdamW at a constant rate (the official adapter training): no warm-up, no decay
                w, _ = train_model(None, steps=steps, batch_fn=lambda step: full_batch, loss_fn=losses[name],
                                   params=w0, lr=1e-3, warmup_steps=0, weight_decay=0.01, grad_clip=None,
                                   b2=0.999, min_lr_ratio=1.0, seed=seed)
                acc = accuracies(w, z0t, ft, yt)
                table[shots][name].append(float(acc["aux"] if name == "aux_only" else acc[kind]))
    verdicts = {shots: RULE.verdict(table[shots]["amu"], table[shots]["single_branch"], seeds=seeds)
                for shots in shot_list}
    head = verdicts[HEAD_SHOTS]
    parts = []
    for shots in shot_list:
        m = {k: float(np.mean(v)) for k, v in table[shots].items()}
        parts.append(f"{shots}-shot: zero-shot {m['zero_shot']:.3f}, aux init {m['aux_init']:.3f}, aux trained "
                     f"{m['aux_only']:.3f}, single-branch {m['single_branch']:.3f}, multi-branch without gate "
                     f"{m['multi_branch']:.3f}, AMU {m['amu']:.3f} (same rule: {verdicts[shots].status})")
    note = ("; ".join(parts) + ". Synthetic two-view features stand in for CLIP/MoCo (sklearn digits not "
            "installed); alpha 0.5, lambda 0.35, power 0.4 from the official run.sh/defaults; "
            f"{steps} full-batch AdamW steps through tokjax.train.")
    return Row(
        pid="P30",
        claim="AMU (multi-branch training + uncertainty-gated fusion of an aux-feature logit bias) beats a "
              "single-branch logit bias on frozen zero-shot logits",
        setting=f"synthetic 10-class two-view features: frozen cosine 'zero-shot' classifier on a weak 32-d view, "
                f"aux linear classifier on a 64-d view, {'/'.join(map(str, shot_list))} shots, {len(seeds)} seeds",
        baseline_name="single-branch logit bias (lambda=1, no gate)",
        baseline_value=round(float(np.mean(table[HEAD_SHOTS]["single_branch"])), 4),
        method_value=round(float(np.mean(table[HEAD_SHOTS]["amu"])), 4),
        metric=f"held-out top-1 accuracy at {HEAD_SHOTS} shots (higher is better)",
        verdict=head,
        note=note,
    )


if __name__ == "__main__":
    raise SystemExit(run_cli(run))
