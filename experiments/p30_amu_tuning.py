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

AdamW (lr 1e-3, weight decay 0.01) on the K-shot set, full batch, as the official adapter
training; accuracy on 3000 held-out samples, several seeds (data and shots redrawn per seed).
Verdict ``reproduced`` when AMU beats the single-branch baseline by more than the seed spread,
``not-reproduced`` when worse by that margin, else ``inconclusive``.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as `python experiments/p30_amu_tuning.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from experiments._harness import Row, run_cli  # noqa: E402

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
    import optax

    from tokjax.logits.amu_tuning import amu_fuse, amu_init, amu_logits, amu_loss

    seeds = tuple(range(5)) if quick else tuple(range(10))
    shot_list = (4,) if quick else (2, 4, 8)
    steps = 300
    opt = optax.adamw(1e-3, weight_decay=0.01, eps=1e-4)
    variants = {  # name: (lam, kind)
        "aux_only": (0.0, "none"),
        "single_branch": (1.0, "none"),
        "multi_branch": (0.35, "none"),  # ablation: multi-branch training without the gate
        "amu": (0.35, "moment"),
    }

    def make_train(kind):
        @jax.jit
        def train(w, z0, f, y, lam):
            s = opt.init(w)

            def body(carry, _):
                w, s = carry
                g = jax.grad(lambda w: amu_loss(w, z0, f, y, alpha=0.5, lam=lam, kind=kind)[0])(w)
                u, s = opt.update(g, s, w)
                return (optax.apply_updates(w, u), s), None

            (w, _), _ = jax.lax.scan(body, (w, s), None, length=steps)
            return w
        return train

    trainers = {k: make_train(k) for k in ("none", "moment")}

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
            for name, (lam, kind) in variants.items():
                w = trainers[kind](w0, jnp.asarray(t["z0"]), jnp.asarray(t["f"]), jnp.asarray(t["y"]),
                                   jnp.float32(lam))
                acc = accuracies(w, z0t, ft, yt)
                table[shots][name].append(float(acc["aux"] if name == "aux_only" else acc[kind]))
    head = shot_list[len(shot_list) // 2]
    diffs = np.asarray(table[head]["amu"]) - np.asarray(table[head]["single_branch"])
    margin = max(float(np.std(diffs)), 0.002)
    gain = float(np.mean(diffs))
    verdict = "reproduced" if gain > margin else ("not-reproduced" if gain < -margin else "inconclusive")
    parts = []
    for shots in shot_list:
        m = {k: float(np.mean(v)) for k, v in table[shots].items()}
        parts.append(f"{shots}-shot: zero-shot {m['zero_shot']:.3f}, aux init {m['aux_init']:.3f}, aux trained "
                     f"{m['aux_only']:.3f}, single-branch {m['single_branch']:.3f}, multi-branch without gate "
                     f"{m['multi_branch']:.3f}, AMU {m['amu']:.3f}")
    note = ("; ".join(parts) + f". Per-seed AMU - single-branch at {head} shots: "
            f"{', '.join(f'{d:+.3f}' for d in diffs)} (margin {margin:.3f}). Synthetic two-view features stand in "
            "for CLIP/MoCo (sklearn digits not installed); alpha 0.5, lambda 0.35, power 0.4 from the official "
            f"run.sh/defaults; {steps} AdamW steps.")
    return Row(
        pid="P30",
        claim="AMU (multi-branch training + uncertainty-gated fusion of an aux-feature logit bias) beats a "
              "single-branch logit bias on frozen zero-shot logits",
        setting=f"synthetic 10-class two-view features: frozen cosine 'zero-shot' classifier on a weak 32-d view, "
                f"aux linear classifier on a 64-d view, {'/'.join(map(str, shot_list))} shots, {len(seeds)} seeds",
        baseline_name="single-branch logit bias (lambda=1, no gate)",
        baseline_value=round(float(np.mean(table[head]["single_branch"])), 4),
        method_value=round(float(np.mean(table[head]["amu"])), 4),
        metric=f"held-out top-1 accuracy at {head} shots (higher is better)",
        verdict=verdict,
        note=note,
    )


def main(argv=None) -> int:
    return run_cli(run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
