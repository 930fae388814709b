"""P33 D-AR: token groups aligned with the flow decoder's steps give plain-NTP generation and streaming previews.

Paper claims (arXiv 2505.23660, abstract): a tokenizer whose token groups condition successive diffusion steps
(coarse-to-fine, aligned with denoising) lets an unchanged next-token-prediction model generate images (gFID 2.09,
775M Llama, 256 tokens); once the AR model has emitted a group, that diffusion step runs, giving *consistent
streaming previews* that sharpen as tokens arrive. Here (``tokjax.vision.d_ar``, built on P32's parts): 8 x 8
glyphs at 8 levels (``experiments/_vision.py``), 16 patches of 2 x 2 pixels + 16 queries in 8 groups of 2, query
encoder = the shared forward under Prefix(16), FSQ [5, 5, 5] (125 codes), a causal condition transformer, and an
8-step flow decoder whose step g reads the 2 conditions of group g (the official decoder; time shift 2 as the
official config); d = 64 x 2, 4 heads, for encoder, condition transformer and decoder each; FlexTok's FSQ
``drop_quant_p`` = 0.5 and P32's fixed pre-FSQ multiplier ``fsq_scale`` = 0.1 in both arms (fixed in advance
from P32's probes: without the multiplier every query collapses onto one code within ~100 steps). Arms, same steps, batch 64, lr 3e-3, data: **d-ar** (visible="group") and **full**
(visible="full": every step reads all 16 conditions -- the non-aligned, FlexTok-style decoder, which cannot
preview before the last token). Stage 2 per arm: a class-conditional NTP LM (d = 64 x 2) over that tokenizer's
query ids of the training set; ``tokjax.generate`` samples 16 ids, the decoder renders them (8 Euler steps,
temperature 1). Quality: the foundation's classifier FD (bootstrap SE) and class consistency of the samples; the
real-vs-real floor is reported. Previews: for every d-ar sample, the preview after group g (x0 estimate of step
g) against the final sample, MSE per pixel, g = 0 .. 7 (tokens generated 2, 4, .., 16); the streaming path
(``d_ar_generate(callback=...)``, ids from ``tokjax.stream``) is checked against the batch path on 20 labels.

Rules (declared before anything runs; z = a difference divided by its standard error):
* ``gen-quality``: per seed z = (FD_full - FD_dar) / sqrt(SE_full^2 + SE_dar^2), threshold -2 (non-inferiority:
  the group-aligned decoder generates no worse than the full-visibility decoder by more than 2 SE).
* ``previews``: per seed min over g = 0 .. 6 of z_g = mean_i(m_g,i - m_{g+1},i) / SE_i, with m_g,i the preview-g
  MSE of sample i to its final sample (paired over samples), threshold 2 (every further group lowers the preview
  error by > 2 SE); and the last preview must equal the final sample exactly in every sample (else the row is
  not-reproduced whatever z is).
* Validity (both rows): in every seed the d-ar tokenizer must have learned -- >= 2 distinct ids per query on
  average over the held-out glyphs and classifier accuracy >= 0.5 on its reconstructions; otherwise both rows are
  inconclusive (a collapsed tokenizer makes the LM unconditional and the previews trivial).
Quick: 1 seed, 500 steps per tokenizer + 200 LM steps, 300 samples per arm, 300 held-out glyphs. Full: seeds
0-2, 1500 steps per tokenizer + 800 LM steps, 1000 samples, 500 held-out glyphs. Not run here: the paper's
ImageNet scale, the VQ codebook (16,384 codes), the Adams sampler, zero-shot layout control.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as `python experiments/p33_d_ar.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from experiments._harness import Row, Rule, run_cli, save_figure, train_model  # noqa: E402
from experiments._continuous import register_lm_config, register_pixels, register_tok_config, z_score  # noqa: E402

GEN_RULE = Rule(metric="generation FD z-score, (FD full - FD d-ar) / combined bootstrap SE (higher is better)",
                higher_is_better=True, threshold=-2.0, seeds=(0, 1, 2), quick_seeds=(0,),
                reported="d-ar = the official group-g-only decoder (visible='group'), fixed in advance; 8 Euler "
                         "steps, time shift 2, temperature 1")
PREVIEW_RULE = Rule(metric="min over groups g < 7 of the paired z-score of the drop in preview MSE to the final "
                           "sample from group g to g+1 (higher is better)", higher_is_better=True, threshold=2.0,
                    seeds=(0, 1, 2), quick_seeds=(0,), reported="d-ar samples of the gen-quality row")
GROUPS, QUERIES, STEPS_FLOW = 8, 16, 8
BATCH, LR, DROP_QUANT, TIME_SHIFT = 64, 3e-3, 0.5, 2.0
FSQ_SCALE = 0.1  # fixed pre-FSQ multiplier (d_ar_init(fsq_scale=...)); without it every query collapses
ARMS = (("d-ar", "group"), ("full", "full"))


def _train_tok(cfg, x_train, visible: str, steps: int, seed: int):
    import jax

    from tokjax.vision.d_ar import d_ar_init, make_d_ar_loss
    from tokjax.vision.flextok import tokenizer_batch_fn

    model, _ = train_model(cfg, steps=steps, batch_fn=tokenizer_batch_fn(x_train, batch_size=BATCH, seed=seed),
                           loss_fn=make_d_ar_loss(visible=visible, time_shift=TIME_SHIFT, drop_quant=DROP_QUANT),
                           params=d_ar_init(cfg, jax.random.key(seed), fsq_scale=FSQ_SCALE), lr=LR, seed=seed,
                           weight_decay=0.0)
    return model.params


def _evaluate_tokenizer(params, cfg, visible: str, seed: int, n: int) -> dict:
    """Returns {"usage", "mse", "acc"} of reconstructions of n held-out glyphs (all 16 ids, 8 Euler steps)."""
    import jax
    import numpy as np

    from experiments import _vision as V
    from tokjax.vision.d_ar import d_ar_decode, d_ar_encode
    from tokjax.vision.flextok import image_tokens

    ev = V.glyph_set(n, V.FLOOR_SEED)
    _, ids = jax.jit(d_ar_encode, static_argnames=("cfg",))(params, cfg, image_tokens(ev.images))
    ids = np.asarray(ids)
    rec = d_ar_decode(params, cfg, ids, jax.random.key(1000 + seed), steps=STEPS_FLOW, time_shift=TIME_SHIFT,
                      visible=visible)
    img, img_q = register_pixels(np.asarray(rec.x))
    return {"usage": float(np.mean([len(np.unique(ids[:, j])) for j in range(ids.shape[1])])),
            "mse": float(((img - ev.images) ** 2).mean()), "acc": V.consistency(img_q, ev.labels), "ids": ids}


def _preview_stats(previews, x) -> dict:
    """Returns per-group preview MSE to the final sample (mean, and the paired z of each drop g -> g + 1)."""
    import numpy as np

    from tokjax.vision.flextok import token_images

    final = token_images(x)
    m = np.stack([((token_images(p) - final) ** 2).mean(axis=(1, 2)) for p in previews])  # [G, N]
    d = m[:-1] - m[1:]
    z = d.mean(axis=1) / np.maximum(d.std(axis=1, ddof=1) / np.sqrt(d.shape[1]), 1e-12)
    return {"mse": m.mean(axis=1), "z": z, "exact_last": bool(np.array_equal(previews[-1], x)),
            "last_max_abs": float(np.abs(previews[-1] - x).max())}


def _generate(lm, params, cfg, visible, labels, key, callback=None):
    from tokjax.vision.d_ar import d_ar_generate

    return d_ar_generate(lm, params, cfg, labels, key, steps=STEPS_FLOW, time_shift=TIME_SHIFT, visible=visible,
                         callback=callback)


def preview_figure(curves: list, strip, steps: int):
    """Writes preview MSE to the final sample against tokens generated (one line per seed) and one sample's
    previews; returns the path or None without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    import numpy as np

    from tokjax.vision.flextok import token_images

    fig = plt.figure(figsize=(10, 3.4))
    ax = fig.add_subplot(1, 2, 1)
    tokens = np.arange(1, GROUPS + 1) * (QUERIES // GROUPS)
    for s, c in enumerate(curves):
        ax.plot(tokens[:-1], c[:-1], "o-", label=f"seed {s}")
    ax.set_yscale("log")
    ax.set_xlabel("tokens generated (2 per group)")
    ax.set_ylabel("preview MSE to final sample / pixel")
    ax.set_title(f"D-AR streaming previews (at {tokens[-1]} tokens the preview is the final sample: MSE 0)",
                 fontsize=8)
    ax.legend(fontsize=7)
    imgs = token_images(np.asarray(strip))  # [G, 8, 8]
    for g in range(GROUPS):
        a = fig.add_subplot(2, 8, (g // 4) * 8 + 5 + g % 4)
        a.imshow(imgs[g], cmap="gray", vmin=0, vmax=1)
        a.set_axis_off()
        a.set_title(f"{2 * (g + 1)}", fontsize=7)
    fig.suptitle(f"P33 D-AR, 8x8 glyphs, 16 queries in 8 groups of 2, 8-step flow decoder, {steps} tokenizer steps",
                 fontsize=9)
    return save_figure(fig, "P33", "previews.png")


def run(quick: bool) -> list[Row]:
    import jax
    import numpy as np

    from experiments import _vision as V
    from experiments._common import memo_json
    from tokjax.vision.d_ar import d_ar_encode
    from tokjax.vision.flextok import image_tokens, register_batch_fn

    tok_steps, lm_steps, gen_n, eval_n = (500, 200, 300, 300) if quick else (1500, 800, 1000, 500)
    seeds = GEN_RULE.run_seeds(quick)
    train = V.glyph_set(V.TRAIN_N, V.TRAIN_SEED)
    x_train = image_tokens(train.images)
    cfg, lm_cfg = register_tok_config(), register_lm_config()
    floor = V.real_floor(gen_n)
    labels = V.sample_labels(gen_n)
    res = {arm: [] for arm, _ in ARMS}
    prev, stream_ok, strip = [], [], None
    secs = {"tok": 0.0, "lm": 0.0, "gen": 0.0}
    def one_arm(arm: str, visible: str, seed: int) -> dict:
        t0 = time.perf_counter()
        params = _train_tok(cfg, x_train, visible, tok_steps, seed)
        t_tok = time.perf_counter() - t0
        tok = _evaluate_tokenizer(params, cfg, visible, seed, eval_n)
        _, ids = jax.jit(d_ar_encode, static_argnames=("cfg",))(params, cfg, x_train)
        t0 = time.perf_counter()
        lm, _ = train_model(lm_cfg, steps=lm_steps, batch_fn=register_batch_fn(np.asarray(ids), train.labels,
                                                                               batch_size=BATCH, seed=seed),
                            lr=LR, seed=seed, weight_decay=0.0)
        t_lm = time.perf_counter() - t0
        t0 = time.perf_counter()
        key = jax.random.key(2000 + seed)
        out = _generate(lm, params, cfg, visible, labels, key)
        t_gen = time.perf_counter() - t0
        _, img_q = register_pixels(out.x)
        fd, se = V.fd_with_se(img_q)
        r = {"fd": fd, "se": se, "consistency": V.consistency(img_q, labels), "usage": tok["usage"],
             "recon_mse": tok["mse"], "recon_acc": tok["acc"], "previews": _preview_stats(out.previews, out.x),
             "secs": {"tok": t_tok, "lm": t_lm, "gen": t_gen}}
        if arm == "d-ar":
            r["strip"] = np.asarray(out.previews[:, 0])
            few = labels[:20]
            seen = []
            streamed = _generate(lm, params, cfg, visible, few, key, callback=lambda g, p: seen.append(g))
            batch = _generate(lm, params, cfg, visible, few, key)
            r["stream_ok"] = bool(seen == list(range(GROUPS)) and np.array_equal(streamed.ids, batch.ids)
                                  and float(np.abs(streamed.previews - batch.previews).max()) <= 1e-5)
        return r

    for seed in seeds:  # each (seed, arm) is cached: a full run killed half-way resumes
        for arm, visible in ARMS:
            r = memo_json("p33-arm", dict(arm=arm, seed=seed, tok_steps=tok_steps, lm_steps=lm_steps, gen_n=gen_n,
                                          eval_n=eval_n, cfg=cfg, lm_cfg=lm_cfg, version=1),
                          lambda arm=arm, visible=visible, seed=seed: one_arm(arm, visible, seed))
            r["previews"] |= {k: np.asarray(r["previews"][k]) for k in ("mse", "z")}
            for k, v in r.pop("secs").items():
                secs[k] += v
            res[arm].append(r)
            if arm == "d-ar":
                prev.append(r["previews"])
                stream_ok.append(r["stream_ok"])
                if strip is None:
                    strip = np.asarray(r["strip"])
            print(f"seed {seed} {arm}: FD {r['fd']:.3f}", flush=True)

    mean = lambda xs: float(np.mean(xs))  # noqa: E731
    dar, full = res["d-ar"], res["full"]
    z_gen = [z_score(f["fd"], f["se"], d["fd"], d["se"]) for f, d in zip(full, dar)]
    z_prev = [float(p["z"].min()) for p in prev]
    exact = all(p["exact_last"] for p in prev)
    valid = all(r["usage"] >= 2 and r["recon_acc"] >= 0.5 for r in dar)
    figure = preview_figure([p["mse"] for p in prev], strip, tok_steps)

    def judged(rule, zs, force_fail=False):
        v = rule.verdict(zs, [0.0] * len(seeds), seeds=seeds)
        if force_fail:
            v = dataclasses.replace(v, status="not-reproduced")
        return v if valid else dataclasses.replace(v, status="inconclusive")

    validity = ("" if valid else "INVALID (declared validity rule: the d-ar tokenizer did not learn, so the verdict "
                "is inconclusive); ")
    setting = (f"8x8 glyphs (8 levels), 16 2x2 patches + 16 queries in 8 groups of 2, Prefix(16) encoder, FSQ [5,5,5], "
               f"causal condition transformer, flow decoder (group g at step g, t at resid_pre), d=64x2 each, time "
               f"shift {TIME_SHIFT}, drop_quant {DROP_QUANT}, fsq_scale {FSQ_SCALE}; {tok_steps} steps per tokenizer, "
               f"batch {BATCH}, lr {LR}; "
               f"stage-2 NTP LM d=64x2, {lm_steps} steps; {gen_n} samples, {STEPS_FLOW} Euler steps")
    arms = "; ".join(f"{arm}: FD {mean([r['fd'] for r in rs]):.3f} (SE {mean([r['se'] for r in rs]):.3f}), cons "
                     f"{mean([r['consistency'] for r in rs]):.3f}, ids/query {mean([r['usage'] for r in rs]):.1f}, "
                     f"recon MSE {mean([r['recon_mse'] for r in rs]):.4f} acc {mean([r['recon_acc'] for r in rs]):.3f}"
                     for arm, rs in res.items())
    curve = ", ".join(f"{2 * (g + 1)}: {mean([p['mse'][g] for p in prev]):.4f}" for g in range(GROUPS))
    full_curve = ", ".join(f"{mean([r['previews']['mse'][g] for r in full]):.4f}" for g in range(GROUPS))
    timing = f"train s: tokenizers {secs['tok']:.0f}, LMs {secs['lm']:.0f}; generation s {secs['gen']:.0f}"
    fmt_z = lambda zs: ", ".join(f"{z:+.1f}" for z in zs)  # noqa: E731
    return [
        Row(pid="P33", claim_id="gen-quality", claim="plain NTP over group-aligned tokens (decoder step g reads group "
            "g) generates as well as over tokens a decoder reads at every step (paper: gFID 2.09, ImageNet 256)",
            setting=setting, baseline_name="full-visibility decoder (every step reads all 16 tokens), FD",
            baseline_value=round(mean([r["fd"] for r in full]), 3), method_value=round(mean([r["fd"] for r in dar]), 3),
            metric=GEN_RULE.metric, verdict=judged(GEN_RULE, z_gen), figure=figure,
            note=f"{validity}per-seed z {fmt_z(z_gen)}; {arms}; floor FD {floor[0]:.3f} (SE {floor[1]:.3f}); "
                 f"{timing}"),
        Row(pid="P33", claim_id="previews", claim="streaming previews: the x0 preview after each generated group gets "
            "closer to the final sample, and the last preview is the final sample", setting=setting,
            baseline_name="preview MSE after the first group (2 tokens)", baseline_value=round(mean(
                [p["mse"][0] for p in prev]), 5), method_value=round(mean([p["mse"][-2] for p in prev]), 5),
            metric=PREVIEW_RULE.metric, verdict=judged(PREVIEW_RULE, z_prev, force_fail=not exact), figure=figure,
            note=f"{validity}per-seed min z {fmt_z(z_prev)}; last preview == final exactly: {exact} (max |diff| "
                 f"{max(p['last_max_abs'] for p in prev):.1e}); stream (tokjax.stream + callback) == batch on 20 "
                 f"labels: {all(stream_ok)}; d-ar preview MSE by tokens generated: {curve}; full-visibility x0 "
                 f"estimates by step (not streamable, all tokens known): {full_curve}"),
    ]


if __name__ == "__main__":
    raise SystemExit(run_cli(run))
