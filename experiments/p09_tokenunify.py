"""P9 TokenUnify: does mixing random-token, next-token and next-all pre-training give better features than one objective?

Paper claims (arXiv 2405.16847, abstract / README): pre-training with the TokenUnify mixture improves downstream EM
neuron segmentation by 44% over training from scratch and 25% over MAE, and its advantage grows with model size (up to
1B parameters). Here, in spirit and at toy scale: unconditional pre-training on the discrete glyph codes of
``experiments._vision`` (8 x 8 grid, 8 levels, the null class token in front of every image), then a frozen linear probe
of the digit class as the downstream task, plus the held-out next-token NLL.

Arms (same model, data, batch 64, lr 3e-3, steps; ``tokjax.vision.tokenunify`` through ``tokjax.train``):

* ``scratch``: the randomly initialised model (no pre-training);
* ``ntp``: weights (0, 1, 0), i.e. plain next-token prediction (exactly ``next_token_loss``);
* ``mim``: weights (1, 0, 0), random-token prediction ([MASK] at ratio 0.4, the official MAE ratio; bidirectional);
* ``mixture``: weights (1, 1, 1): per batch one of random-token / next-token / next-all (k ~ U{1..63}, noise fill,
  suffix predicted), the issue's sampler (the official code runs MAE first, then next-all + NTP summed).

Downstream probe (fixed in advance): features = the final-normed hidden states mean-pooled over the 64 image
positions of the model reading the whole (unmasked) image; ridge regression onto one-hot labels (standardised
features, lambda 1), fit on 2000 glyphs of the classifier seed, validated on 1000 more, tested on 2000 glyphs of the
reference seed. Each model's attention for the probe (causal or bidirectional) is chosen on the validation split.
NTP NLL: token-mean next-token NLL of the 2000 test glyphs (null class).

Rules (declared before anything runs; the reported arm is ``mixture`` with weights (1, 1, 1), fixed in advance):
* ``vs-mae``: probe test accuracy, mixture minus mim, higher is better, threshold 0, every seed.
* ``vs-scratch``: probe test accuracy, mixture minus scratch, threshold 0.
* ``vs-ntp``: probe test accuracy, mixture minus ntp, threshold 0 (the note gives each arm's NTP NLL).
* ``scaling``: the gain of mixture over mim at the larger model (d=64 x 2 layers) minus that gain at the smaller
  (d=32 x 1 layer), threshold 0 (the paper: the mixture's benefit grows with size). Full mode only; untested-here in
  quick (a second size doubles the cost beyond the quick budget).
Quick: seed 0, d=64 x 2 layers, 300 steps per arm. Full: seeds 0-2, both sizes, 1500 steps per arm
(estimated 25-35 min on one core).
Not run here: EM volumes, the SegMamba backbone, MSE heads on voxels, fine-tuning for segmentation, 1B-scale scaling.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as `python experiments/p09_tokenunify.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from experiments import _vision as V  # noqa: E402
from experiments._harness import Row, Rule, run_cli  # noqa: E402

SEEDS, QUICK_SEEDS = (0, 1, 2), (0,)
_REPORTED = "mixture weights (1, 1, 1), mask ratio 0.4, noise fill, suffix targets; fixed in advance"
_PROBE = "held-out digit accuracy of a ridge probe on mean-pooled frozen features (higher is better)"
RULE_MAE = Rule(metric=_PROBE, higher_is_better=True, threshold=0.0, seeds=SEEDS, quick_seeds=QUICK_SEEDS,
                reported=_REPORTED)
RULE_SCRATCH = Rule(metric=_PROBE, higher_is_better=True, threshold=0.0, seeds=SEEDS, quick_seeds=QUICK_SEEDS,
                    reported=_REPORTED)
RULE_NTP = Rule(metric=_PROBE, higher_is_better=True, threshold=0.0, seeds=SEEDS, quick_seeds=QUICK_SEEDS,
                reported=_REPORTED)
RULE_SCALING = Rule(metric="probe-accuracy gain of mixture over mim: d=64x2 minus d=32x1 (higher is better)",
                    higher_is_better=True, threshold=0.0, seeds=SEEDS, quick_seeds=QUICK_SEEDS, reported=_REPORTED)
ARMS = {"ntp": (0.0, 1.0, 0.0), "mim": (1.0, 0.0, 0.0), "mixture": (1.0, 1.0, 1.0)}
SIZES = {"small": (32, 1), "base": (64, 2)}
PROBE_FIT, PROBE_VAL, PROBE_TEST = 2000, 1000, 2000
RIDGE = 1.0


def _cfg(size: str):
    from tokjax.model import ModelConfig

    d, layers = SIZES[size]
    return ModelConfig(vocab_size=V.vocab().size, d_model=d, n_layers=layers, n_heads=4, max_len=80, pos_dims=2)


def _eval_batch(codes):
    """Returns the unconditional image batch of ``codes`` (null class token, then the codes in raster order)."""
    import jax
    import numpy as np

    from tokjax.vision.image_lm import image_batch
    from tokjax.vision.orders import raster

    return image_batch(codes, np.zeros(len(codes), np.int32), V.vocab(), raster(V.GRID, V.GRID), class_dropout=1.0,
                       key=jax.random.key(0))


def _features(params, cfg, codes, causal: bool):
    """Returns float64 [N, D]: final-normed hidden states mean-pooled over the image positions."""
    import jax
    import numpy as np

    from tokjax.model import Inputs, forward, masked_mean
    from tokjax.model.attention import Bidirectional, Causal

    @jax.jit
    def fn(p, tokens, pos, mask):
        h = forward(p, cfg, Inputs(tokens=tokens, positions=pos), mask=Causal() if causal else Bidirectional(),
                    compute_logits=False).hidden
        return masked_mean(h, mask)

    out = []
    for s in range(0, len(codes), 500):
        b = _eval_batch(codes[s:s + 500])
        out.append(np.asarray(fn(params, b["tokens"], b["positions"], b["mask"])))
    return np.concatenate(out).astype(np.float64)


def _ridge_accuracy(f_fit, y_fit, f_eval, y_eval) -> float:
    """Returns the accuracy on (f_eval, y_eval) of ridge regression onto one-hot labels fit on (f_fit, y_fit)."""
    import numpy as np

    mu, sd = f_fit.mean(0), f_fit.std(0) + 1e-6
    a, b = (f_fit - mu) / sd, (f_eval - mu) / sd
    a = np.concatenate([a, np.ones((len(a), 1))], 1)
    b = np.concatenate([b, np.ones((len(b), 1))], 1)
    onehot = np.eye(V.CLASSES)[y_fit]
    w = np.linalg.solve(a.T @ a + RIDGE * np.eye(a.shape[1]), a.T @ onehot)
    return float(np.mean(np.argmax(b @ w, 1) == y_eval))


def _probe(params, cfg) -> dict:
    """Returns the probe's test accuracy with the attention chosen on the validation split, and both choices."""
    fit = V.glyph_set(PROBE_FIT + PROBE_VAL, V.CLF_SEED)
    test = V.glyph_set(PROBE_TEST, V.REF_SEED)
    res = {}
    for name, causal in (("causal", True), ("bidir", False)):
        f = _features(params, cfg, fit.codes, causal)
        ft = _features(params, cfg, test.codes, causal)
        val = _ridge_accuracy(f[:PROBE_FIT], fit.labels[:PROBE_FIT], f[PROBE_FIT:], fit.labels[PROBE_FIT:])
        res[name] = (val, _ridge_accuracy(f[:PROBE_FIT], fit.labels[:PROBE_FIT], ft, test.labels))
    pick = max(res, key=lambda k: res[k][0])
    return {"acc": res[pick][1], "attn": pick, "val": res[pick][0]}


def _ntp_nll(params, cfg) -> float:
    import jax

    from tokjax.losses import next_token_loss

    test = V.glyph_set(PROBE_TEST, V.REF_SEED)
    fn = jax.jit(lambda p, b: next_token_loss(p, cfg, b)[1]["nll_sum"])
    total = 0.0
    for s in range(0, PROBE_TEST, 500):
        b = _eval_batch(test.codes[s:s + 500])
        total += float(fn(params, {"tokens": b["tokens"], "positions": b["positions"], "mask": b["mask"]}))
    return total / (PROBE_TEST * V.GRID * V.GRID)


def _run_size(size: str, seed: int, steps: int) -> dict:
    import jax

    from tokjax.model import init_params
    from tokjax.vision.image_lm import image_batch_fn
    from tokjax.vision.orders import raster
    from tokjax.vision.tokenunify import tokenunify

    cfg = _cfg(size)
    vocab = V.vocab()
    data = V.glyph_set(V.TRAIN_N, V.TRAIN_SEED)
    fn = image_batch_fn(data.codes, data.labels, vocab, raster(V.GRID, V.GRID), batch_size=V.BATCH,
                        class_dropout=1.0, seed=seed)
    from experiments._common import memo_run

    def memo(arm, compute):  # each finished arm is kept: a full run (27 trainings) killed half-way resumes
        key = dict(size=size, cfg=cfg, seed=seed, steps=steps, arm=arm, weights=ARMS.get(arm), batch=V.BATCH,
                   train=[V.TRAIN_N, V.TRAIN_SEED], probe=[PROBE_FIT, PROBE_VAL, PROBE_TEST], version=1)
        return {k: v.item() for k, v in memo_run("p09-arm", key, compute).items()}

    out = {}
    scratch = init_params(cfg, jax.random.key(seed))
    out["scratch"] = memo("scratch", lambda: {**_probe(scratch, cfg), "nll": _ntp_nll(scratch, cfg), "train_s": 0.0})
    for arm, weights in ARMS.items():
        def train_and_probe(weights=weights):
            loss = tokenunify(weights=list(weights), num_codes=vocab.num_codes)
            model, t = V.train_arm(cfg, fn, steps=steps, seed=seed, loss_fn=loss, params=scratch)
            return {**_probe(model.params, cfg), "nll": _ntp_nll(model.params, cfg), "train_s": t}

        out[arm] = memo(arm, train_and_probe)
    return out


def _fmt(runs: list[dict], arm: str) -> str:
    import numpy as np

    acc = np.mean([r[arm]["acc"] for r in runs])
    nll = np.mean([r[arm]["nll"] for r in runs])
    attn = "/".join(sorted({r[arm]["attn"] for r in runs}))
    return f"{arm} acc {acc:.3f} ({attn}), NTP NLL {nll:.3f}"


def run(quick: bool) -> list[Row]:
    import numpy as np

    steps = 300 if quick else 1500
    seeds = RULE_MAE.run_seeds(quick)
    sizes = ("base",) if quick else ("small", "base")
    t0 = time.perf_counter()
    runs = {s: [_run_size(s, seed, steps) for seed in seeds] for s in sizes}
    base = runs["base"]
    acc = {arm: [r[arm]["acc"] for r in base] for arm in ("scratch", *ARMS)}
    setting = (f"unconditional glyph codes 8x8 at 8 levels, d=64x2 layers, batch {V.BATCH}, {steps} steps per arm, "
               f"seeds {list(seeds)}; ridge probe {PROBE_FIT} fit / {PROBE_VAL} val / {PROBE_TEST} test")
    note = "; ".join(_fmt(base, arm) for arm in ("scratch", *ARMS)) + (
        f"; train s/arm ~{np.mean([r['mixture']['train_s'] for r in base]):.0f}, total {time.perf_counter() - t0:.0f}s")
    mean = lambda xs: round(float(np.mean(xs)), 4)  # noqa: E731
    rows = [
        Row(pid="P9", claim_id="vs-mae", claim="TokenUnify pre-training beats MAE (random-token only) downstream "
            "(+25% on EM segmentation)", setting=setting, baseline_name="random-token (MIM) only",
            baseline_value=mean(acc["mim"]), method_value=mean(acc["mixture"]), metric=RULE_MAE.metric,
            verdict=RULE_MAE.verdict(acc["mixture"], acc["mim"], seeds=seeds), note=note),
        Row(pid="P9", claim_id="vs-scratch", claim="TokenUnify pre-training beats training from scratch (+44%)",
            setting=setting, baseline_name="random init (frozen)", baseline_value=mean(acc["scratch"]),
            method_value=mean(acc["mixture"]), metric=RULE_SCRATCH.metric,
            verdict=RULE_SCRATCH.verdict(acc["mixture"], acc["scratch"], seeds=seeds), note=note),
        Row(pid="P9", claim_id="vs-ntp", claim="the mixture beats plain autoregressive (next-token) pre-training",
            setting=setting, baseline_name="next-token only", baseline_value=mean(acc["ntp"]),
            method_value=mean(acc["mixture"]), metric=RULE_NTP.metric,
            verdict=RULE_NTP.verdict(acc["mixture"], acc["ntp"], seeds=seeds), note=note),
    ]
    if quick:
        rows.append(Row(pid="P9", claim_id="scaling", claim="the mixture's benefit grows with model size",
                        setting=setting, baseline_name="gain at d=32x1", baseline_value=None, method_value=None,
                        metric=RULE_SCALING.metric, verdict="untested-here",
                        note="quick mode trains one size (a second size doubles the cost); run the full mode"))
    else:
        gain = {s: [r["mixture"]["acc"] - r["mim"]["acc"] for r in runs[s]] for s in sizes}
        rows.append(Row(pid="P9", claim_id="scaling", claim="the mixture's benefit grows with model size",
                        setting=setting + "; sizes d=32x1 and d=64x2", baseline_name="gain over mim at d=32x1",
                        baseline_value=mean(gain["small"]), method_value=mean(gain["base"]),
                        metric=RULE_SCALING.metric, verdict=RULE_SCALING.verdict(gain["base"], gain["small"]),
                        note="small: " + "; ".join(_fmt(runs["small"], arm) for arm in ("scratch", *ARMS))))
    return rows


if __name__ == "__main__":
    raise SystemExit(run_cli(run))
