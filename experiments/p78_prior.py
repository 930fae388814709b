"""P78 PRIOR: up-weighting tokens a text-only reference finds hard speeds up learning the image-related ones.

Paper claim (Chen et al., arXiv 2505.08971): weighting each caption token's NTP loss by
``(1 - P_ref(t_i | t_<i))^alpha`` (P_ref: a text-only LM trained on the captions, weights
normalised per caption) prioritises the image-related tokens and beats plain NTP (+19% / +8%
average relative on VL benchmarks).

Small-scale check (NOTES-losses P78 (d), NOTES-visual P78 (d)): a synthetic caption task.

* "Image": 8 tokens; each is, with probability 0.5, one of 4 signature tokens of the image's
  class c (10 classes), else a uniform noise token.
* Caption: ``BOS`` + 10 filler words from a Markov chain (each word has one likely successor,
  p = 0.7; independent of the image) with ``MARK digit_c`` inserted at a random place. Only the
  digit word depends on the image.
* A text-only reference LM is trained on the captions alone; an image-prefix LM (the same tiny
  tokjax transformer reading ``image + caption``) is trained with plain next-token loss or with
  PRIOR (``transforms=[prior(alpha)]``, reference log-probs aligned to the caption targets).
* Metric: held-out accuracy of the digit word (teacher-forced argmax at its position), averaged
  over evaluation checkpoints (area under the learning curve) and seeds; also the final value and
  the filler-token NLL (PRIOR is expected to fit the image-independent filler a little worse).

Verdict (``RULE``, declared before anything runs): PRIOR with alpha = 1 (fixed in advance; full
runs also report alpha 0.5 and 2 in the note, never selected) must beat NTP's curve-mean digit
accuracy by more than 0.01 on every seed for ``reproduced``, on none for ``not-reproduced``.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as `python experiments/p78_prior.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from experiments._common import adam, sample_rows  # noqa: E402
from experiments._harness import Row, Rule, run_cli, train_model  # noqa: E402

RULE = Rule(metric="held-out digit-word accuracy averaged over the learning curve", higher_is_better=True,
            threshold=0.01, seeds=(0, 1, 2), quick_seeds=(0, 1),
            reported="PRIOR with alpha 1.0 and per-caption normalisation, fixed in advance")
REPORTED = "prior1"

# Vocabulary layout of the synthetic task.
PAD, BOS, MARK = 0, 1, 2
N_CLASS, N_FILLER, N_SIG = 10, 24, 4
DIGIT0 = 3
FILLER0 = DIGIT0 + N_CLASS
IMAGE0 = FILLER0 + N_FILLER
N_IMAGE = N_CLASS * N_SIG
VOCAB = IMAGE0 + N_IMAGE
IMG_LEN, FILL_LEN = 8, 10
CAP_LEN = 1 + FILL_LEN + 2  # BOS + filler + MARK + digit
SEQ = IMG_LEN + CAP_LEN


def make_data(n: int, seed: int, *, signal: float = 0.5, follow: float = 0.7):
    """Returns (full [n, SEQ], captions [n, CAP_LEN], digit_pos [n] index in full, classes [n]) as NumPy."""
    import numpy as np

    r = np.random.default_rng(seed)
    succ = np.random.default_rng(1234).permutation(N_FILLER)  # the fixed likely successor of each filler word
    cls = r.integers(0, N_CLASS, size=n)
    sig = IMAGE0 + cls[:, None] * N_SIG + r.integers(0, N_SIG, size=(n, IMG_LEN))
    noise = IMAGE0 + r.integers(0, N_IMAGE, size=(n, IMG_LEN))
    image = np.where(r.uniform(size=(n, IMG_LEN)) < signal, sig, noise)
    filler = np.empty((n, FILL_LEN), np.int64)
    filler[:, 0] = r.integers(0, N_FILLER, size=n)
    for j in range(1, FILL_LEN):
        rand = r.integers(0, N_FILLER, size=n)
        filler[:, j] = np.where(r.uniform(size=n) < follow, succ[filler[:, j - 1]], rand)
    filler += FILLER0
    ins = r.integers(0, FILL_LEN + 1, size=n)  # MARK digit inserted before filler word `ins`
    cap = np.empty((n, CAP_LEN), np.int64)
    cap[:, 0] = BOS
    for i in range(n):
        k = ins[i]
        cap[i, 1:] = np.concatenate([filler[i, :k], [MARK, DIGIT0 + cls[i]], filler[i, k:]])
    full = np.concatenate([image, cap], axis=1).astype(np.int32)
    digit_pos = IMG_LEN + 1 + ins + 1  # index in `full` of the digit word
    return full, cap.astype(np.int32), digit_pos, cls


def run(quick: bool) -> Row:
    import jax
    import jax.numpy as jnp
    import numpy as np

    import tokjax
    from tokjax.losses import next_token_loss, prior, reference_logp, token_stats

    steps = 200 if quick else 600
    ref_steps = 150 if quick else 400
    eval_every = 25 if quick else 50
    seeds = RULE.run_seeds(quick)
    alphas = (1.0,) if quick else (0.5, 1.0, 2.0)
    B, lr = 64, 3e-3
    cfg = tokjax.ModelConfig(vocab_size=VOCAB, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, max_len=SEQ)
    ref_cfg = cfg.replace(max_len=CAP_LEN)
    prompt = IMG_LEN + 1  # targets start at the first caption word (BOS is trivially predictable)

    train_full, train_cap, train_digit, _ = make_data(8000, seed=100)
    test_full, _, test_digit, test_cls = make_data(1000, seed=200)
    test_full_j = jnp.asarray(test_full)

    def init(seed, c):
        return jax.jit(lambda k: tokjax.Model.init(c, k).params)(jax.random.key(seed))

    # --- the text-only reference LM on captions alone -------------------------------------
    ref_model, ref_hist = train_model(ref_cfg, steps=ref_steps, batch_fn=sample_rows({"tokens": train_cap}, B, 7),
                                      params=init(99, ref_cfg), seed=99, **adam(lr))
    rp, ref_loss = ref_model.params, ref_hist["train"][-1]["loss"]

    @jax.jit
    def aligned_ref_logp(caps):
        """Returns [B, SEQ-1] reference log-probs aligned to the full sequence's targets (0 on the image)."""
        lp = reference_logp(rp, ref_cfg, caps)  # [B, CAP_LEN-1]: caption word j+1 given caption[:j+1]
        return jnp.zeros((caps.shape[0], SEQ - 1), jnp.float32).at[:, IMG_LEN:].set(lp)

    # The reference is fixed: its aligned log-probs for the whole training set are computed once.
    train_ref = np.concatenate([np.asarray(aligned_ref_logp(jnp.asarray(train_cap[i:i + 2000])))
                                for i in range(0, len(train_cap), 2000)])
    # what the reference assigns to the digit vs the filler words (sanity: the digit is hard without the image)
    probe = train_ref[:512]
    probe_digit = train_digit[:512]
    rows = np.arange(512)
    p_digit = float(np.exp(np.asarray(probe)[rows, probe_digit - 1]).mean())
    mask_f = np.zeros((512, SEQ - 1), bool)
    mask_f[:, prompt:] = True
    mask_f[rows, probe_digit - 1] = False
    mask_f[rows, probe_digit - 2] = False
    p_filler = float(np.exp(np.asarray(probe)[mask_f]).mean())

    # --- the image-prefix LM: plain NTP vs PRIOR ------------------------------------------
    def make_loss(transforms):
        def loss_fn(p, cfg, batch, rng):
            state = {"alpha": batch["alpha"]} if transforms else None
            fields = {k: batch[k] for k in ("tokens", "prompt_lengths", "ref_logp")}
            return next_token_loss(p, cfg, fields, None, transforms=transforms, transform_state=state)
        return loss_fn

    def batches(seed, alpha):  # the same batches for every method
        def batch_fn(step):
            idx = np.random.default_rng((1000 + seed, step)).integers(0, len(train_full), size=B)
            return {"tokens": train_full[idx], "prompt_lengths": np.full((B,), prompt, np.int32),
                    "ref_logp": train_ref[idx], "alpha": np.float32(alpha)}
        return batch_fn

    @jax.jit
    def evaluate(p):
        logits = tokjax.forward(p, cfg, test_full_j[:, :-1]).logits
        rows = jnp.arange(test_full_j.shape[0])
        dl = logits[rows, jnp.asarray(test_digit) - 1]
        acc = jnp.mean(jnp.argmax(dl, -1) == DIGIT0 + jnp.asarray(test_cls))
        lp = token_stats(p, cfg, {"tokens": test_full_j}).logp
        fmask = jnp.zeros(lp.shape, bool).at[:, prompt:].set(True)
        fmask = fmask.at[rows, jnp.asarray(test_digit) - 1].set(False).at[rows, jnp.asarray(test_digit) - 2].set(False)
        filler_nll = -jnp.sum(jnp.where(fmask, lp, 0.0)) / jnp.sum(fmask)
        return acc, filler_nll

    methods = {"ntp": (make_loss(()), 0.0)}
    prior_loss = make_loss([prior()])
    for a in alphas:
        methods[f"prior{a:g}"] = (prior_loss, a)

    curves = {m: [] for m in methods}
    finals = {m: [] for m in methods}
    for seed in seeds:
        for m, (loss_fn, alpha) in methods.items():
            evals = []

            def checkpoint(step, state, metrics, evals=evals):
                if step % eval_every == 0:
                    evals.append(tuple(float(v) for v in evaluate(state.params)))

            train_model(cfg, steps=steps, batch_fn=batches(seed, alpha), loss_fn=loss_fn, params=init(seed, cfg),
                        seed=seed, callback=checkpoint, **adam(lr))
            curves[m].append(np.mean([a for a, _ in evals]))
            finals[m].append(evals[-1])

    auc = {m: float(np.mean(v)) for m, v in curves.items()}
    best = REPORTED
    verdict = RULE.verdict(curves[best], curves["ntp"], seeds=seeds)
    fin = {m: (float(np.mean([a for a, _ in v])), float(np.mean([f for _, f in v]))) for m, v in finals.items()}
    detail = "; ".join(f"{m}: curve-mean acc {auc[m]:.3f}, final acc {fin[m][0]:.3f}, filler NLL {fin[m][1]:.3f}"
                       for m in methods)
    note = (f"{detail}. Reference (text-only, {ref_steps} "
            f"steps, final NLL {float(ref_loss):.3f}) gives the digit word mean P_ref {p_digit:.3f} vs filler "
            f"{p_filler:.3f}. {steps} Adam steps (lr {lr}, tokjax.train), batch {B}, eval every {eval_every} on 1000 held-out "
            f"captions; alpha and per-caption normalisation from a secondary source (paper code unreleased).")
    return Row(
        pid="P78",
        claim="PRIOR token weights (1-P_ref)^alpha learn the image-related caption tokens faster than plain NTP",
        setting=f"synthetic image-token + caption task (10 classes, 8 noisy image tokens, 12-word captions with one "
                f"image-dependent word), tiny tokjax transformer d=64 x2 layers, {len(seeds)} seeds",
        baseline_name="plain next-token loss",
        baseline_value=round(auc["ntp"], 4),
        method_value=round(auc[best], 4),
        metric=f"held-out digit-word accuracy averaged over the learning curve ({best}; higher is better)",
        verdict=verdict,
        note=note,
    )


if __name__ == "__main__":
    raise SystemExit(run_cli(run))
