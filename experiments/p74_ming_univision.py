"""P74 Ming-UniVision / MingTok: one continuous tokenizer whose semantic features serve both understanding and
generation, against an LM that reads the tokenizer's low-level latents.

Paper claims (arXiv 2510.06590, abstract and README): MingTok's three stages (low-level encoder -> continuous
latents; causal semantic decoder -> features aligned with a pretrained vision encoder; pixel decoder) give one
continuous representation on which an AR LM does both image understanding and generation (state-of-the-art level on
both), and joint training on the unified representation converges 3.5x faster. Here (``tokjax.vision.ming_univision``):
16 x 16 glyphs (``experiments._continuous``: data, the FD classifier and its protocol) cut into 16 patches of
4 x 4 pixels -> 16 latents of 4 dims; every tokenizer stage is a d = 64 x 2 shared forward (encoder and pixel
decoder bidirectional, semantic decoder causal). Semantic teacher: a *second* glyph classifier (the same recipe as
the FD classifier, its own data seed 104 and init seed 1, so FD is never judged by the teacher); token i's target is
the teacher's penultimate feature of the prefix image (patches > i blanked), centred. Tokenizer loss: pixel MSE +
1.0 x (1 - cos) alignment, latent noise 0.1 (fixed in advance), batch 64, lr 3e-3; then the latent normalisation
(mean, std) is set from the training set and the tokenizer is frozen.

Arms (same LM: d = 64 x 2, 4 heads, flow head width 64 x 3, same data, steps, batch 64, lr 3e-3, class dropout 0.1,
loss = flow + 1.0 x class-word CE, one backbone):
* ``unified`` (Ming-UniVision): the LM reads E(s_i), the semantic features, for understanding
  ([<und>, E(s_1..16)] -> class word) and for generation ([class, E(s_1..15)] -> flow head on u_i); generation runs
  the causal semantic decoder on its own KV cache, one latent per AR step (``ming_univision`` strategy).
* ``separate`` (baseline, low-level inputs): the same LM reading P u_i, the normalised latents, for both tasks
  (plain continuous raster AR for generation, ``tokjax.vision.flow.continuous_ar``).
Both decode pixels through the same frozen tokenizer (semantic then pixel decoder), 10 Euler head steps,
temperature 1, guidance 1.

Metrics: class-word accuracy (argmax over the 10 class words after [<und>, image]) on 500 held-out glyphs (the
floor set, seed 103); generation FD of 500 class-balanced samples to 2000 real glyphs in the FD classifier's
features (bootstrap SE; real-vs-real floor reported); convergence: validation accuracy (500 glyphs of seed 105)
every 25 LM steps, steps to first reach TARGET_ACC = 0.8.

Rules (declared before anything runs):
* ``understanding``: per seed, acc(unified) - acc(separate) > 0.02.
* ``generation`` (non-inferiority): per seed, z = (FD_separate - FD_unified) / sqrt(SE_s^2 + SE_u^2) > -2.
* ``convergence``: per seed, speedup = steps_to_target(separate) / steps_to_target(unified) > 1.5 (the paper's
  3.5x, at a declared lower bar); an arm that never reaches the target counts total steps + 25 (so a baseline that
  never gets there gives a lower bound on the speedup).
* Validity (all rows): the frozen tokenizer must reconstruct the held-out glyphs with FD-classifier accuracy >= 0.5,
  and (convergence row) the unified arm must reach the target; otherwise the row is inconclusive.
Quick: seed 0, 300 tokenizer steps + 400 LM steps per arm (1100 in all). Full: seeds 0-2, 1200 tokenizer steps +
1500 LM steps per arm (12600 in all).
Not run here: multi-round editing, joint tokenizer + LM fine-tuning, the official L1 pixel loss and SwiGLU flow head.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as `python experiments/p74_ming_univision.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from experiments import _vision as V  # noqa: E402
from experiments._common import memo_json  # noqa: E402
from experiments._continuous import CLASSES, fd_with_se, glyph_set  # noqa: E402
from experiments._harness import Row, Rule, run_cli, save_figure, train_model  # noqa: E402

UND_RULE = Rule(metric="class-word accuracy on 500 held-out glyphs (higher is better)", higher_is_better=True,
                threshold=0.02, seeds=(0, 1, 2), quick_seeds=(0,),
                reported="unified (semantic-feature inputs) vs separate (low-level latent inputs), same LM, steps and "
                         "data; fixed in advance")
GEN_RULE = Rule(metric="generation FD z-score, (FD_separate - FD_unified) / combined bootstrap SE (higher is better)",
                higher_is_better=True, threshold=-2.0, seeds=(0, 1, 2), quick_seeds=(0,),
                reported="10 Euler head steps, temperature 1, guidance 1, 500 samples; fixed in advance")
CONV_RULE = Rule(metric="speedup in LM steps to validation class-word accuracy 0.8, separate / unified (higher is "
                        "better)", higher_is_better=True, threshold=0.5, seeds=(0, 1, 2), quick_seeds=(0,),
                 reported="evaluated every 25 steps on 500 validation glyphs (seed 105); fixed in advance")
PATCH, TOKENS, TOKEN_DIM = 4, 16, 4
TEACHER_SEED, VAL_SEED = 104, 105
EVAL_N, GEN_N, VAL_N, HEAD_STEPS, EVAL_EVERY, TARGET_ACC = 500, 500, 500, 10, 25, 0.8
BATCH, LR, ALIGN_WEIGHT, LATENT_NOISE, UND_WEIGHT = 64, 3e-3, 1.0, 0.1, 1.0


def _tok_config():
    from tokjax.model import ModelConfig

    return ModelConfig(vocab_size=4, d_model=64, n_layers=2, n_heads=4, max_len=TOKENS)


def _lm_config():
    from tokjax.model import ModelConfig

    return ModelConfig(vocab_size=CLASSES + 2, d_model=64, n_layers=2, n_heads=4, max_len=TOKENS + 1)


def _patches(images) -> np.ndarray:
    from tokjax.vision.flextok import image_tokens

    return image_tokens(images, PATCH)


def _images(patches) -> np.ndarray:
    from tokjax.vision.flextok import token_images

    return token_images(np.asarray(patches), PATCH)


def _teacher():
    from tokjax.train.recipes.vision_classifier import train_classifier

    x, y = glyph_set(V.CLF_N, TEACHER_SEED)
    return train_classifier(x, y, steps=V.CLF_STEPS, seed=1, num_classes=CLASSES)


def _teacher_targets(teacher, images, centre=None):
    """Returns (float32 [N, 16, 256] centred prefix-image features of the teacher, the centre)."""
    from tokjax.vision.ming_univision import prefix_images
    from tokjax.vision.quality import classifier_features

    pre = prefix_images(images, PATCH)  # [N, 16, 16, 16]
    n = pre.shape[0]
    f = np.concatenate([np.asarray(classifier_features(teacher, pre[s:s + 500].reshape(-1, 16, 16)))
                        for s in range(0, n, 500)]).reshape(n, TOKENS, -1)
    centre = f.reshape(-1, f.shape[-1]).mean(0) if centre is None else centre
    return (f - centre).astype(np.float32), centre


def _train_tokenizer(cfg, x, targets, steps: int, seed: int):
    import jax

    from tokjax.data import batch_indices
    from tokjax.vision.ming_univision import make_mingtok_loss, mingtok_init, mingtok_set_norm

    def batch_fn(step):
        idx = batch_indices(x.shape[0], BATCH, step, seed=seed)
        return {"x": x[idx], "teacher": targets[idx]}

    model, hist = train_model(cfg, steps=steps, batch_fn=batch_fn,
                              loss_fn=make_mingtok_loss(align_weight=ALIGN_WEIGHT, latent_noise=LATENT_NOISE),
                              params=mingtok_init(cfg, jax.random.key(seed), patch_dim=PATCH * PATCH,
                                                  token_dim=TOKEN_DIM, teacher_dim=targets.shape[-1]),
                              lr=LR, seed=seed, weight_decay=0.0)
    return mingtok_set_norm(model.params, cfg, x), hist


def _encode(tok, cfg, x):
    """Returns (normalised latents, semantic features) of patches x."""
    import jax

    from tokjax.vision.ming_univision import mingtok_encode, semantic_decode

    enc = jax.jit(lambda p, v: (lambda u: (u, semantic_decode(p, cfg, u)))(mingtok_encode(p, cfg, v)))
    outs = [enc(tok, x[s:s + 1000]) for s in range(0, x.shape[0], 1000)]
    return np.concatenate([np.asarray(o[0]) for o in outs]), np.concatenate([np.asarray(o[1]) for o in outs])


def _train_lm(lm_cfg, u, inputs, labels, val_inputs, val_labels, steps: int, seed: int):
    """Returns (Model, [(step, val acc)], seconds)."""
    import jax

    from tokjax.model import init_params
    from tokjax.vision.ming_univision import make_ming_lm_loss, ming_lm_batch_fn, ming_lm_init, ming_understand

    k1, k2 = jax.random.split(jax.random.key(1000 + seed))
    params = {**init_params(lm_cfg, k1), "flow": ming_lm_init(k2, lm_cfg, TOKEN_DIM, inputs.shape[-1], width=64,
                                                              depth=3)}
    understand = jax.jit(lambda p, f: ming_understand(p, lm_cfg, f, num_classes=CLASSES))
    curve = []

    def callback(step, state, metrics):
        if step % EVAL_EVERY == 0:
            pred = np.argmax(np.asarray(understand(state.params, val_inputs)), -1)
            curve.append((step, float(np.mean(pred == val_labels))))

    t0 = time.perf_counter()
    model, _ = train_model(lm_cfg, steps=steps, batch_fn=ming_lm_batch_fn(u, inputs, labels, num_classes=CLASSES,
                                                                          batch_size=BATCH,
                                                                          class_dropout=V.CLASS_DROPOUT, seed=seed),
                           loss_fn=make_ming_lm_loss(num_classes=CLASSES, und_weight=UND_WEIGHT), params=params,
                           lr=LR, seed=seed, weight_decay=0.0, callback=callback)
    return model, curve, time.perf_counter() - t0


def _steps_to_target(curve, total: int) -> int:
    return next((s for s, a in curve if a >= TARGET_ACC), total + EVAL_EVERY)


def _z(a, sa, b, sb) -> float:
    return (a - b) / max((sa ** 2 + sb ** 2) ** 0.5, 1e-12)


def _curves_figure(curves: dict, steps: int):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, ax = plt.subplots(figsize=(5.2, 3.6))
    for arm, runs in curves.items():
        for i, c in enumerate(runs):
            ax.plot([s for s, _ in c], [a for _, a in c], "-" if arm == "unified" else "--",
                    color="C0" if arm == "unified" else "C1", alpha=0.8, label=arm if i == 0 else None)
    ax.axhline(TARGET_ACC, ls=":", c="gray", lw=1, label=f"target {TARGET_ACC}")
    ax.set_xlabel("LM training steps")
    ax.set_ylabel("validation class-word accuracy")
    ax.set_title(f"P74 unified semantic vs low-level latent inputs, glyphs 16x16, {steps} steps", fontsize=9)
    ax.legend(fontsize=7)
    return save_figure(fig, "P74", "convergence.png")


def run(quick: bool) -> list[Row]:
    import jax

    from tokjax.vision.ming_univision import ming_generate, ming_understand, mingtok_decode
    from tokjax.vision.quality import class_consistency

    from experiments._continuous import classifier

    tok_steps, lm_steps = (300, 400) if quick else (1200, 1500)
    seeds = UND_RULE.run_seeds(quick)
    imgs, labels = glyph_set(V.TRAIN_N, V.TRAIN_SEED)
    ev_imgs, ev_labels = glyph_set(EVAL_N, V.FLOOR_SEED)
    val_imgs, val_labels = glyph_set(VAL_N, VAL_SEED)
    x, x_ev, x_val = _patches(imgs), _patches(ev_imgs), _patches(val_imgs)
    teacher = _teacher()
    targets, _ = _teacher_targets(teacher, imgs)
    cfg, lm_cfg = _tok_config(), _lm_config()
    floor = fd_with_se(glyph_set(GEN_N, V.FLOOR_SEED)[0])
    want = V.sample_labels(GEN_N)
    res = {"unified": [], "separate": []}
    curves = {"unified": [], "separate": []}
    toks = []

    def one_seed(seed):
        out_ = {"curves": {}}
        t0 = time.perf_counter()
        tok, hist = _train_tokenizer(cfg, x, targets, tok_steps, seed)
        tok_s = time.perf_counter() - t0
        u, feats = _encode(tok, cfg, x)
        u_ev, f_ev = _encode(tok, cfg, x_ev)
        u_val, f_val = _encode(tok, cfg, x_val)
        rec = _images(jax.jit(mingtok_decode, static_argnames="cfg")(tok, cfg, u_ev))
        rfd, rse = fd_with_se(rec)
        last = hist["train"][-1] if hist.get("train") else {}
        out_["tok"] = {"acc": float(class_consistency(classifier(), rec, ev_labels)), "fd": rfd, "se": rse,
                       "mse": float(np.mean((rec - ev_imgs) ** 2)), "seconds": tok_s,
                       "align_cos": float(last.get("align_cos", float("nan")))}
        for arm, (tr, ev, va) in (("unified", (feats, f_ev, f_val)), ("separate", (u, u_ev, u_val))):
            model, curve, secs = _train_lm(lm_cfg, u, tr, labels, va, val_labels, lm_steps, seed)
            out_["curves"][arm] = curve
            pred = np.argmax(np.asarray(jax.jit(lambda p, f: ming_understand(p, lm_cfg, f, num_classes=CLASSES))(
                model.params, ev)), -1)
            t1 = time.perf_counter()
            out = [ming_generate(model, tok, cfg, want[s:s + 250], jax.random.fold_in(jax.random.key(seed), s),
                                 length=TOKENS, num_classes=CLASSES, semantic=arm == "unified", steps=HEAD_STEPS)
                   for s in range(0, GEN_N, 250)]
            gen = _images(np.concatenate([o.patches for o in out]))
            fd, se = fd_with_se(gen)
            out_[arm] = {"acc": float(np.mean(pred == ev_labels)), "fd": fd, "se": se,
                         "consistency": float(class_consistency(classifier(), gen, want)),
                         "steps_to_target": _steps_to_target(curve, lm_steps), "train_s": secs,
                         "sample_s": time.perf_counter() - t1}
        return out_

    for seed in seeds:  # each seed's tokenizer, both LMs and their evaluations cached: a killed full run resumes
        r = memo_json("p74-seed", dict(seed=seed, tok_steps=tok_steps, lm_steps=lm_steps, eval_n=EVAL_N, val_n=VAL_N,
                                       gen_n=GEN_N, tokens=TOKENS, head_steps=HEAD_STEPS), lambda: one_seed(seed))
        toks.append(r["tok"])
        for arm in res:
            res[arm].append(r[arm])
            curves[arm].append(r["curves"][arm])

    mean = lambda xs: float(np.mean(xs))  # noqa: E731
    valid = all(t["acc"] >= 0.5 for t in toks)
    reached = all(r["steps_to_target"] <= lm_steps for r in res["unified"])
    acc_u, acc_s = [r["acc"] for r in res["unified"]], [r["acc"] for r in res["separate"]]
    z_gen = [_z(s["fd"], s["se"], u_["fd"], u_["se"]) for u_, s in zip(res["unified"], res["separate"])]
    speed = [s["steps_to_target"] / u_["steps_to_target"] for u_, s in zip(res["unified"], res["separate"])]
    figure = _curves_figure(curves, lm_steps)

    def judged(v, ok=True):
        return v if (valid and ok) else dataclasses.replace(v, status="inconclusive")

    tok_note = ("" if valid else "INVALID (declared validity rule: the tokenizer does not reconstruct glyphs the "
                "classifier recognises); ") + (
        f"tokenizer ({tok_steps} steps): recon accuracy {mean([t['acc'] for t in toks]):.3f}, recon FD "
        f"{mean([t['fd'] for t in toks]):.3f} (SE {mean([t['se'] for t in toks]):.3f}), pixel MSE "
        f"{mean([t['mse'] for t in toks]):.4f}, final align cos {mean([t['align_cos'] for t in toks]):.3f}, "
        f"{mean([t['seconds'] for t in toks]):.0f}s")

    def summ(arm):
        r = res[arm]
        return (f"{arm}: acc {mean([a['acc'] for a in r]):.3f}, FD {mean([a['fd'] for a in r]):.3f} (SE "
                f"{mean([a['se'] for a in r]):.3f}), consistency {mean([a['consistency'] for a in r]):.3f}, steps to "
                f"acc {TARGET_ACC}: {[a['steps_to_target'] for a in r]}, train {mean([a['train_s'] for a in r]):.0f}s, "
                f"sample {mean([a['sample_s'] for a in r]):.0f}s")

    note = f"{tok_note}; {summ('unified')}; {summ('separate')}; real-vs-real floor FD {floor[0]:.3f} (SE {floor[1]:.3f})"
    setting = (f"glyphs 16x16 as 16 patches of 4x4 -> 16 latents x 4 dims; MingTok d=64x2 per stage (causal semantic "
               f"decoder aligned to a second classifier's prefix-image features), {tok_steps} steps; LM d=64x2 + flow "
               f"head 64x3, {lm_steps} steps per arm, batch {BATCH}, lr {LR}; flow + class-word CE; {GEN_N} samples, "
               f"{HEAD_STEPS} Euler steps, guidance 1")
    return [
        Row(pid="P74", claim_id="understanding",
            claim="an AR LM reading the unified tokenizer's semantic features understands images (class words) "
                  "better than one reading the low-level latents",
            setting=setting, baseline_name="separate: LM reads low-level latents", baseline_value=round(mean(acc_s), 4),
            method_value=round(mean(acc_u), 4), metric=UND_RULE.metric,
            verdict=judged(UND_RULE.verdict(acc_u, acc_s, seeds=seeds)), figure=figure, note=note),
        Row(pid="P74", claim_id="generation",
            claim="the same unified model also generates: FD no worse than low-level-latent AR by > 2 SE",
            setting=setting, baseline_name="separate: continuous raster AR on latent inputs (FD)",
            baseline_value=round(mean([r["fd"] for r in res["separate"]]), 4),
            method_value=round(mean([r["fd"] for r in res["unified"]]), 4), metric=GEN_RULE.metric,
            verdict=judged(GEN_RULE.verdict(z_gen, [0.0] * len(seeds), seeds=seeds)), figure=figure,
            note=f"per-seed z {[round(z, 2) for z in z_gen]}; {note}"),
        Row(pid="P74", claim_id="convergence",
            claim="joint training on the unified representation converges faster (paper: 3.5x; bar here 1.5x)",
            setting=setting, baseline_name="separate (speedup 1.0 by definition)", baseline_value=1.0,
            method_value=round(mean(speed), 3), metric=CONV_RULE.metric,
            verdict=judged(CONV_RULE.verdict(speed, [1.0] * len(seeds), seeds=seeds), ok=reached), figure=figure,
            note=("" if reached else "INVALID (the unified arm did not reach the target accuracy); ")
            + f"per-seed speedup {[round(s, 2) for s in speed]}; curves (step, acc): unified "
              f"{curves['unified'][0][:8]}, separate {curves['separate'][0][:8]}"),
    ]


if __name__ == "__main__":
    raise SystemExit(run_cli(run))
