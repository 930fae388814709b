"""P28 X-Omni: GRPO makes a discrete AR image model better than its SFT start, and makes guidance unnecessary.

Paper claims (Geng et al., arXiv 2507.22058; 7B unified AR model, SigLIP-VQ tokens, FLUX decoder): (1) GRPO on
decoded-image rewards largely improves the generation quality of a discrete autoregressive image model over
its SFT start; (2) after RL the model generates well without classifier-free guidance (inference at
``--cfg-scale 1.0``), where AR image models usually rely on CFG.

Setup (``experiments._vision``): class-conditional glyphs on the 8 x 8 grid at 8 levels, raster order, the
d = 64, 2-layer image LM with 1-D positions (X-Omni's 1-D RoPE; ``pos_dims = 1``), SFT by next-token
prediction through ``tokjax.train`` (class dropout 0.1, so the null class exists for CFG). RL through
``tokjax.train.rl.rl_train`` with :func:`tokjax.vision.x_omni.x_omni`: 4 class prompts x G = 8 rollouts per
step, min-p 0.03 at T = 1, no CFG, reward log p(class | image) under the *reward* classifier (a second
quality classifier: other data seed ``REWARD_SEED`` and init seed), GRPO with symmetric clip 0.2, k3 KL to the
SFT model (beta 0.04), Adam lr ``LR`` = 1e-4 (one probe before any reported run, :func:`tune_lr`: the mean
sampled reward-classifier reward of the last 10 of 40 RL steps on seed 99, at 1e-4 / 3e-4 / 1e-3; never the
evaluation classifier). Every arm is sampled with the same
keys, labels (balanced) and min-p 0.03 at T = 1:

* **SFT**: the SFT model, no CFG (g = 1); **SFT+CFG**: the SFT model with CFG at the scale chosen on a
  validation sample (other key) from ``CFG_GRID`` by the *reward* classifier's mean log p (CFG's best case
  on the RL objective, never the evaluation metrics); **RL**: the GRPO model, no CFG.
* Metrics: the *evaluation* classifier (``experiments._vision.classifier``, the one every image paper uses)
  accuracy on the samples (class consistency) and FD of its features against 2000 held-out real glyphs (with
  bootstrap SE and the real-vs-real floor in the note); the reward classifier's mean log p in the note.

Rules (declared before anything runs; per seed; seeds 0-2, ``--quick`` seed 0):

* ``rl-accuracy``: evaluation-classifier accuracy, RL - SFT > 0.
* ``rl-fd``: FD, SFT - RL > 0 (lower is better).
* ``no-cfg-accuracy``: accuracy, RL (no CFG) - SFT+CFG > -0.02 (non-inferiority).
* ``no-cfg-fd``: FD(RL, no CFG) / FD(SFT+CFG) below the bound 1.1 (lower is better, as P31's ratio rule).

Quick: 1 seed, 500 SFT steps, 40 RL steps, 500 samples per arm. Full: seeds 0-2, 1500 SFT steps, 200 RL steps
(the notes' "about 200 steps"), 1000 samples. Not run here: the paper's tokenizer, diffusion decoder, composite
rewards (HPSv2, Unified Reward, VLM alignment, OCR) and its benchmarks (DPG-Bench, GenEval, text rendering).
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as `python experiments/p28_x_omni.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from experiments import _vision as V  # noqa: E402
from experiments._harness import Row, Rule, run_cli  # noqa: E402

REWARD_SEED = 104  # data seed of the reward classifier (V uses 100-103)
LR = 1e-4  # tune_lr (seed 99, 500 SFT + 40 RL steps): last-10-step reward -2.82 / -3.31 / -6.64 at 1e-4 / 3e-4 / 1e-3
MIN_P, G, PROMPTS, BETA, EPS = 0.03, 8, 4, 0.04, 0.2
CFG_GRID = (1.5, 2.0, 3.0)
VAL_N = 200
MARGIN, BOUND = 0.02, 1.1
SEEDS = (0, 1, 2)

_REPORTED = ("GRPO (G=8, clip 0.2, k3 KL 0.04 to SFT, min-p 0.03, lr fixed by a seed-99 reward probe) "
             "vs SFT at the same sampling; CFG scale of SFT+CFG chosen on a validation sample by the reward "
             "classifier")
RULE_ACC = Rule(metric="evaluation-classifier accuracy of class-conditional samples (higher is better)",
                higher_is_better=True, threshold=0.0, seeds=SEEDS, quick_seeds=(0,), reported=_REPORTED)
RULE_FD = Rule(metric="classifier FD to held-out real glyphs (lower is better)", higher_is_better=False,
               threshold=0.0, seeds=SEEDS, quick_seeds=(0,), reported=_REPORTED)
RULE_CFG_ACC = Rule(metric="evaluation-classifier accuracy, RL without CFG vs SFT with CFG (non-inferiority)",
                    higher_is_better=True, threshold=-MARGIN, seeds=SEEDS, quick_seeds=(0,), reported=_REPORTED)
RULE_CFG_FD = Rule(metric=f"FD(RL, no CFG) / FD(SFT+CFG), bound {BOUND} (lower is better)", higher_is_better=False,
                   threshold=0.0, seeds=SEEDS, quick_seeds=(0,), reported=_REPORTED)


@functools.lru_cache(maxsize=None)
def reward_classifier():
    """Returns the reward classifier's params: the quality classifier recipe on other data and another init seed
    (cached on disk by the recipe)."""
    from tokjax.train.recipes.vision_classifier import train_classifier

    s = V.glyph_set(V.CLF_N, REWARD_SEED)
    return train_classifier(s.images, s.labels, steps=V.CLF_STEPS, seed=1, num_classes=V.CLASSES)


def model_config():
    return V.model_config(2).replace(pos_dims=1)


def train_sft(seed: int, steps: int):
    from tokjax.vision.image_lm import image_batch_fn
    from tokjax.vision.orders import raster

    data = V.glyph_set(V.TRAIN_N, V.TRAIN_SEED)
    batch_fn = image_batch_fn(data.codes, data.labels, V.vocab(), raster(V.GRID, V.GRID), batch_size=V.BATCH,
                              class_dropout=V.CLASS_DROPOUT, seed=seed, coords=False)
    return V.train_arm(model_config(), batch_fn, steps=steps, seed=seed)[0]


def setup(seed: int = 0):
    """Returns :func:`tokjax.vision.x_omni.x_omni` on the glyph pipeline (reward classifier, pixel decode)."""
    from tokjax.vision.orders import raster
    from tokjax.vision.x_omni import x_omni

    return x_omni(V.vocab(), raster(V.GRID, V.GRID), reward_classifier(), V.to_images, group_size=G, min_p=MIN_P,
                  eps=EPS, beta=BETA, seed=seed)


def train_rl(sft, seed: int, steps: int, lr: float = LR):
    """Returns (RL Model, per-step history) of GRPO from ``sft`` through ``tokjax.train.rl.rl_train``."""
    from tokjax.train.rl import RLConfig, rl_train

    xo = setup(seed)
    cfg = RLConfig(steps=steps, prompts_per_step=PROMPTS, lr=lr, seed=seed, **xo.options)
    return rl_train(sft, xo.task, cfg, strategy=xo.strategy, logits=xo.logits, reference=sft)


def sample(model, n: int, key, guidance: float = 1.0) -> dict:
    """Returns the quality of ``n`` balanced class-conditional samples (min-p 0.03, T = 1, CFG scale ``guidance``):
    ``accuracy`` (evaluation classifier), ``fd``, ``se``, ``reward`` (reward classifier's mean log p)."""
    import numpy as np

    from tokjax.logits import min_p
    from tokjax.vision.image_lm import next_token_cfg, sample_images
    from tokjax.vision.orders import raster
    from tokjax.vision.x_omni import class_reward

    labels = V.sample_labels(n)
    strategy = next_token_cfg(V.vocab(), raster(V.GRID, V.GRID), guided=guidance != 1.0)
    codes = sample_images(model, strategy, labels, key, guidance=guidance, logits=min_p(MIN_P)).codes
    images = V.to_images(codes)
    fd, se = V.fd_with_se(images)
    reward = float(np.mean(np.asarray(class_reward(reward_classifier(), codes, labels, V.to_images))))
    return {"accuracy": V.consistency(images, labels), "fd": fd, "se": se, "reward": reward}


def choose_cfg(sft, seed: int) -> tuple[float, dict]:
    """Returns (the CFG scale of CFG_GRID with the highest reward-classifier log p on a validation sample, probe)."""
    import jax

    key = jax.random.fold_in(jax.random.key(10_000 + seed), 1)
    probe = {g: sample(sft, VAL_N, key, g)["reward"] for g in CFG_GRID}
    return max(probe, key=probe.get), probe


def tune_lr(lrs=(1e-4, 3e-4, 1e-3), steps: int = 40, seed: int = 99, sft_steps: int = 500) -> dict:
    """Returns {lr: mean sampled reward of the last 10 RL steps} on seed 99 (the header's lr probe)."""
    import numpy as np

    sft = train_sft(seed, sft_steps)
    out = {}
    for lr in lrs:
        hist = train_rl(sft, seed, steps, lr)[1]
        out[lr] = float(np.mean([h["reward"] for h in hist[-10:]]))
        print(f"lr {lr:g}: reward {out[lr]:.3f} (first {hist[0]['reward']:.3f})", flush=True)
    return out


def plot(runs: list[dict]):
    """Saves the reward-per-RL-step figure (seed mean; SFT and SFT+CFG evaluation rewards as lines)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    import numpy as np

    from experiments._harness import save_figure

    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(10, 3.6))
    curve = np.mean([[h["reward"] for h in r["hist"]] for r in runs], 0)
    w = min(5, len(curve))
    sm = np.convolve(curve, np.ones(w) / w, mode="valid")
    ax.plot(np.arange(len(sm)) + w, sm, label="GRPO rollouts (min-p 0.03, no CFG)")
    for arm, c in (("sft", "gray"), ("cfg", "C1")):
        ax.axhline(np.mean([r[arm]["reward"] for r in runs]), ls="--", c=c, label="SFT" if arm == "sft" else "SFT+CFG")
    ax.set_xlabel(f"RL step ({PROMPTS} classes x G={G})")
    ax.set_ylabel("reward: log p(class) (reward classifier)")
    ax.legend(fontsize=7)
    for i, arm in enumerate(("sft", "cfg", "rl")):
        ax2.errorbar([np.mean([r[arm]["accuracy"] for r in runs])], [np.mean([r[arm]["fd"] for r in runs])],
                     yerr=[2 * max(r[arm]["se"] for r in runs)], fmt="o", c=f"C{i}",
                     label={"sft": "SFT", "cfg": "SFT+CFG", "rl": "RL (no CFG)"}[arm])
    ax2.set_xlabel("evaluation-classifier accuracy")
    ax2.set_ylabel("classifier FD (lower is better)")
    ax2.legend(fontsize=7)
    return save_figure(fig, 28, "x_omni.png")


def run(quick: bool) -> list[Row]:
    import jax

    sft_steps, rl_steps, n = (500, 40, 500) if quick else (1500, 200, 1000)
    seeds = RULE_ACC.run_seeds(quick)
    floor = V.real_floor(n)
    runs = []
    for seed in seeds:
        sft = train_sft(seed, sft_steps)
        g, probe = choose_cfg(sft, seed)
        rl, hist = train_rl(sft, seed, rl_steps)
        key = jax.random.key(20_000 + seed)  # the same evaluation key for every arm
        runs.append({"sft": sample(sft, n, key), "cfg": sample(sft, n, key, g), "rl": sample(rl, n, key),
                     "g": g, "probe": probe, "hist": hist})
    figure = plot(runs)

    def per(arm, k):
        return [r[arm][k] for r in runs]

    def fmt(arm):
        return "/".join(f"acc {r[arm]['accuracy']:.3f} FD {r[arm]['fd']:.3f}+-{r[arm]['se']:.3f} "
                        f"R {r[arm]['reward']:.2f}" for r in runs)

    setting = (f"8x8 glyphs, 8 levels, d=64 2-layer 1-D RoPE image LM, SFT {sft_steps} steps, GRPO {rl_steps} steps "
               f"x {PROMPTS} classes x G={G}, {n} samples per arm, {len(seeds)} seed(s)")
    note = (f"SFT: {fmt('sft')}; SFT+CFG (g={'/'.join(str(r['g']) for r in runs)}): {fmt('cfg')}; RL: {fmt('rl')}; "
            f"real-vs-real FD floor {floor[0]:.3f}+-{floor[1]:.3f}; CFG probe (reward) "
            + "; ".join(", ".join(f"g{k}: {v:.2f}" for k, v in r["probe"].items()) for r in runs)
            + "; RL rollout reward first/last step " + "/".join(f"{r['hist'][0]['reward']:.2f}->"
                                                               f"{r['hist'][-1]['reward']:.2f}" for r in runs)
            + "; R = reward classifier mean log p")
    mean = lambda v: float(sum(v) / len(v))  # noqa: E731
    ratio = [r["rl"]["fd"] / r["cfg"]["fd"] for r in runs]
    common = dict(pid="P28", setting=setting, figure=figure, note=note)
    return [
        Row(claim_id="rl-accuracy", claim="GRPO improves a discrete AR image model over its SFT start (accuracy)",
            baseline_name="SFT (no CFG, same sampling)", baseline_value=round(mean(per("sft", "accuracy")), 4),
            method_value=round(mean(per("rl", "accuracy")), 4), metric=RULE_ACC.metric,
            verdict=RULE_ACC.verdict(per("rl", "accuracy"), per("sft", "accuracy"), seeds=seeds), **common),
        Row(claim_id="rl-fd", claim="GRPO improves a discrete AR image model over its SFT start (FD)",
            baseline_name="SFT (no CFG, same sampling)", baseline_value=round(mean(per("sft", "fd")), 4),
            method_value=round(mean(per("rl", "fd")), 4), metric=RULE_FD.metric,
            verdict=RULE_FD.verdict(per("rl", "fd"), per("sft", "fd"), seeds=seeds), **common),
        Row(claim_id="no-cfg-accuracy", claim="after RL, no CFG is needed: RL without CFG matches SFT with CFG",
            baseline_name="SFT + CFG (scale chosen on validation)", baseline_value=round(mean(per("cfg", "accuracy")), 4),
            method_value=round(mean(per("rl", "accuracy")), 4), metric=RULE_CFG_ACC.metric,
            verdict=RULE_CFG_ACC.verdict(per("rl", "accuracy"), per("cfg", "accuracy"), seeds=seeds), **common),
        Row(claim_id="no-cfg-fd", claim="after RL, no CFG is needed: FD of RL without CFG within 10% of SFT+CFG",
            baseline_name=f"bound {BOUND} x FD(SFT+CFG)", baseline_value=BOUND, method_value=round(mean(ratio), 4),
            metric=RULE_CFG_FD.metric, verdict=RULE_CFG_FD.verdict(ratio, [BOUND] * len(ratio), seeds=seeds),
            **common),
    ]


if __name__ == "__main__":
    raise SystemExit(run_cli(run))
