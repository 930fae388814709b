"""P2 TempNet: a learned per-token temperature on a frozen LM, trained with the KL-DRO loss.

Paper claim (TempNet, ICML 2024; README): a small temperature network trained with the DRO loss
``tau * CE(z / tau, y) + (rho - log V) * tau`` improves LLMs, including "TempNet only" on a frozen
LLM (AlpacaEval win rates of LLaMA-2-chat). The notes' tiny check (NOTES-decoding P2 (d)) expects,
on a corpus mixing deterministic and uniform-random positions: (i) tau(z) rank-correlates
positively with the true conditional entropy; (ii) the held-out NLL of z / tau(z) is no worse than
at the best single global temperature; and the numerical check (issue 19): (iii) the trained tau
lands near the per-token minimiser tau* of the DRO loss on the frozen logits.

Planted corpus (built here: ``tokjax.data.copy_spans`` places its spans at random, so the true
entropy of a position would depend on an unobserved span start): windows of 3L = 48 tokens over
V = 32 ids, ``[A | A | C]`` with A = L ids uniform over V, its exact copy, and C = L ids uniform
over {0, 1, 2, 3}. The true conditional entropy of a target is log 32 in A, 0 in the copy and
log 4 in C (the layout is fixed, so the position tells the regime).

Procedure, per seed: a tokjax LM (d = 64, 2 layers, 4 heads) trained with the default next-token
loss on fresh windows (``tokjax.train``); then a TempNet (hidden 256, official architecture,
dropout 0.5, bounds [0.5, 5.0] of the official GPT-2 setting) trained with the registered loss
``tempnet`` (``base="frozen"``, ``TrainConfig.trainable=("tempnet",)``: the LM stays bit-for-bit
fixed) for each rho in ``RHOS``; rho reaches the loss as ``batch["hparams"]["rho"]`` (one compiled
step for the grid). rho = 1.0 is the code default; with V = 32 it targets an entropy of
log V - rho = 2.47 nats, between the official scripts' 2.8 (GPT-2) and 1.9 (LLaMA-2) nats.

Reported variants (declared before running): ``entropy`` and ``tau-star`` report rho = 1.0 (fixed in
advance); ``nll`` reports the rho with the lowest NLL of z / tau(z) on a validation split (256
windows), which gives the method its best chance on a metric the DRO loss does not target, and the
global temperature of its baseline is chosen on the same split (log grid 0.05..5, 241 points).
Everything is evaluated on 512 held-out windows.

Verdicts (``RULE_*``, declared before anything runs; 3 seeds, quick mode seed 0 only):

* ``entropy``: Spearman(tau, true entropy) over held-out targets vs 0; reproduced when > 0 on every
  seed (a constant tau has no rank correlation: counted as 0).
* ``nll``: held-out NLL (nats/token) of z / tau(z) vs z / T* with T* the validation-best global
  temperature; lower is better; non-inferiority margin 0.001 nats (threshold -0.001).
* ``tau-star``: mean |log tau - log tau*| over held-out targets, tau* = ``dro_optimal_tau`` (the
  per-token minimiser in the same bounds), vs the same error of the best constant temperature
  (exp of the median of log tau*); lower is better; reproduced when TempNet's error is below the
  constant's by more than 0.05 (log units) on every seed. Spearman(tau, tau*) is reported too.
* ``frozen-llm``: the paper's headline on LLaMA-2-chat (AlpacaEval): untested here.

What to expect (derived before running, in tokjax/losses/tempnet.py): dL/dtau = H(softmax(z/tau)) -
log V + rho does not depend on the target, so on a frozen LM the DRO loss drives every token to the
temperature that gives softmax(z/tau) the entropy log V - rho. Flat (high-entropy) rows are cooled
and peaked (deterministic) rows heated: tau should track tau* but anti-correlate with the true
entropy, and the NLL, which the DRO loss does not target, need not improve.

Design history (prototypes on seed 0's data, so seed 0 is not a fresh seed; seeds 1 and 2 were not
looked at before the rules were fixed): the LM learning rate 3e-3 left the copy segment at 0.52
nats after 600 steps, so 1e-2 (0.05 nats); the LLaMA bounds [0.01, 1.2] drove the TempNet's
sigmoid into saturation at tau_max on every token (zero gradient), so the GPT-2 bounds are used;
with rho = 3 (the validation pick for NLL) the net stayed near a constant tau within 300-400 steps
(copy and 4-way rows have similar normalised logits), so the entropy and tau-star claims report the
code default rho = 1; tau-star was first scored by Spearman(tau, tau*) > 0.5, replaced by the
magnitude-aware error above because a near-constant tau still ranked at Spearman 0.77.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as `python experiments/p02_tempnet.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from experiments._harness import Row, Rule, run_cli, train_model  # noqa: E402

SEEDS, QUICK_SEEDS = (0, 1, 2), (0,)
RULE_ENTROPY = Rule(metric="Spearman(tau, true conditional entropy) on held-out targets", higher_is_better=True,
                    threshold=0.0, seeds=SEEDS, quick_seeds=QUICK_SEEDS,
                    reported="TempNet with rho = 1.0 (the code default), bounds [0.5, 5.0], fixed in advance")
RULE_NLL = Rule(metric="held-out NLL nats/token", higher_is_better=False, threshold=-0.001, seeds=SEEDS,
                quick_seeds=QUICK_SEEDS,
                reported="TempNet with rho chosen on validation NLL vs the validation-best global temperature")
RULE_TAU_STAR = Rule(metric="mean |log tau - log tau*| on held-out targets (tau* the per-token DRO minimiser)",
                     higher_is_better=False, threshold=0.05, seeds=SEEDS, quick_seeds=QUICK_SEEDS,
                     reported="TempNet with rho = 1.0, fixed in advance, vs the best constant tau")

V, L = 32, 16  # vocabulary; segment length (windows of 3L tokens)
D_MODEL, N_LAYERS, N_HEADS = 64, 2, 4
BATCH = 32
LM_STEPS, QUICK_LM_STEPS, LM_LR = 800, 600, 1e-2
TN_STEPS, QUICK_TN_STEPS, TN_LR = 400, 300, 1e-2
RHOS, QUICK_RHOS = (0.5, 1.0, 2.0, 3.0), (1.0, 3.0)
FIXED_RHO = 1.0  # the reported variant of the entropy and tau-star claims
TAU_MIN, TAU_MAX, HIDDEN, DROPOUT = 0.5, 5.0, 256, 0.5
N_VAL, N_TEST = 256, 512
SEGMENTS = ("random", "copy", "4-way")


def windows(key: tuple, n: int):
    """Returns int32 [n, 3L] windows [A | A | C] drawn from numpy's generator seeded with ``key``."""
    import numpy as np

    rng = np.random.default_rng(key)
    a = rng.integers(0, V, (n, L))
    c = rng.integers(0, 4, (n, L))
    return np.concatenate([a, a, c], axis=1).astype(np.int32)


def true_entropy():
    """Returns float64 [3L - 1] the true conditional entropy (nats) of each target position."""
    import numpy as np

    return np.concatenate([np.full(L - 1, np.log(V)), np.zeros(L), np.full(L, np.log(4.0))])


def segment_of():
    """Returns int [3L - 1]: 0 random, 1 copy, 2 4-way, per target position."""
    import numpy as np

    return np.concatenate([np.zeros(L - 1, int), np.ones(L, int), np.full(L, 2)])


def spearman(a, b) -> float:
    """Returns Spearman's rank correlation of two flat arrays (average ranks for ties); 0 when one is constant."""
    import numpy as np
    from scipy.stats import rankdata

    ra, rb = rankdata(np.ravel(a)), rankdata(np.ravel(b))
    if ra.std() == 0 or rb.std() == 0:
        return 0.0
    return float(np.corrcoef(ra, rb)[0, 1])


def nll(z, y, tau) -> float:
    """Returns the mean -log softmax(z / tau)[y] (nats); ``tau`` scalar or per token."""
    import jax
    import numpy as np

    t = np.asarray(tau, np.float32)
    lp = jax.nn.log_softmax(z / (t[..., None] if t.ndim else t), axis=-1)
    return float(-np.mean(np.take_along_axis(np.asarray(lp), y[..., None], axis=-1)))


def run_seed(seed: int, quick: bool) -> dict:
    """Returns the per-seed measurements: chosen rho, global T*, NLLs, Spearmans and per-segment means."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    import tokjax
    from tokjax.logits.tempnet import tempnet_apply
    from tokjax.losses.registry import make_loss
    from tokjax.losses.tempnet import TEMPNET_KEY, dro_optimal_tau, init_tempnet

    cfg = tokjax.ModelConfig(vocab_size=V, d_model=D_MODEL, n_layers=N_LAYERS, n_heads=N_HEADS, max_len=64)
    lm_steps = QUICK_LM_STEPS if quick else LM_STEPS
    tn_steps = QUICK_TN_STEPS if quick else TN_STEPS
    rhos = QUICK_RHOS if quick else RHOS
    lm, _ = train_model(cfg, steps=lm_steps, batch_fn=lambda s: {"tokens": windows((seed, 1, s), BATCH)}, lr=LM_LR,
                        seed=seed)
    logits = jax.jit(lambda p, x: tokjax.forward(p, cfg, x[:, :-1]).logits)
    val, test = windows((seed, 3), N_VAL), windows((seed, 4), N_TEST)
    z_val, z_test = logits(lm.params, jnp.asarray(val)), logits(lm.params, jnp.asarray(test))
    y_val, y_test = val[:, 1:], test[:, 1:]

    loss_fn = make_loss("tempnet", base="frozen", dropout=DROPOUT)  # rho comes with each batch (runtime)
    nets, val_nll = {}, {}
    for rho in rhos:
        start = init_tempnet(lm.params, cfg, jax.random.PRNGKey(1000 + seed), hidden=HIDDEN, tau_min=TAU_MIN,
                             tau_max=TAU_MAX)

        def batch_fn(s, rho=rho):
            return {"tokens": windows((seed, 2, s), BATCH), "hparams": {"rho": np.float32(rho)}}

        trained, _ = train_model(cfg, steps=tn_steps, batch_fn=batch_fn, loss_fn=loss_fn, params=start,
                                 trainable=(TEMPNET_KEY,), lr=TN_LR, seed=seed)
        for k in lm.params:  # the frozen base must not have moved
            if not all(bool(jnp.array_equal(a, b)) for a, b in zip(jax.tree.leaves(trained.params[k]),
                                                                   jax.tree.leaves(lm.params[k]))):
                raise RuntimeError(f"the frozen LM's {k!r} changed while training the TempNet")
        nets[rho] = trained.params[TEMPNET_KEY]
        val_nll[rho] = nll(z_val, y_val, tempnet_apply(nets[rho], z_val))
    rho = min(rhos, key=lambda r: val_nll[r])
    grid = np.exp(np.linspace(np.log(0.05), np.log(5.0), 241))
    t_star = float(grid[int(np.argmin([nll(z_val, y_val, t) for t in grid]))])
    lp = np.asarray(jax.nn.log_softmax(z_test, -1))
    tok_nll = -np.take_along_axis(lp, y_test[..., None], -1)[..., 0]
    seg = np.broadcast_to(segment_of(), tok_nll.shape)
    H = np.broadcast_to(true_entropy(), tok_nll.shape)

    tau_c = np.asarray(tempnet_apply(nets[rho], z_test))  # the NLL claim's variant (rho chosen on validation)
    tau = np.asarray(tempnet_apply(nets[FIXED_RHO], z_test))  # the entropy / tau-star claims' variant
    ts = np.asarray(dro_optimal_tau(z_test, FIXED_RHO, TAU_MIN, TAU_MAX))
    return {
        "rho": rho, "val_nll": val_nll, "t_star": t_star,
        "nll_tempnet": nll(z_test, y_test, tau_c), "nll_global": nll(z_test, y_test, t_star),
        "nll_t1": nll(z_test, y_test, 1.0), "tau_c_seg": [float(tau_c[seg == i].mean()) for i in range(3)],
        "rho_entropy": spearman(tau, H), "rho_tau_star": spearman(tau, ts),
        "err_tau_star": float(np.mean(np.abs(np.log(tau) - np.log(ts)))),
        "err_const": float(np.mean(np.abs(np.median(np.log(ts)) - np.log(ts)))),
        "tau_seg": [float(tau[seg == i].mean()) for i in range(3)],
        "tau_star_seg": [float(ts[seg == i].mean()) for i in range(3)],
        "lm_nll_seg": [float(tok_nll[seg == i].mean()) for i in range(3)],
    }


def run(quick: bool) -> list[Row]:
    import numpy as np

    seeds = RULE_NLL.run_seeds(quick)
    res = [run_seed(s, quick) for s in seeds]

    def col(k):
        return [r[k] for r in res]

    def fmt(v):
        return "/".join(f"{x:.3f}" for x in v)

    setting = (f"planted [A|copy A|4-way] windows of {3 * L} tokens, V={V}; tokjax LM d={D_MODEL} x{N_LAYERS} trained "
               f"{QUICK_LM_STEPS if quick else LM_STEPS} steps; TempNet (hidden {HIDDEN}, dropout {DROPOUT}, tau in "
               f"[{TAU_MIN}, {TAU_MAX}]) on the frozen LM with the registered 'tempnet' loss, "
               f"{QUICK_TN_STEPS if quick else TN_STEPS} steps per rho in {QUICK_RHOS if quick else RHOS}; "
               f"{len(seeds)} seed(s), {N_TEST} held-out windows")
    seg_txt = "; ".join(
        f"seed {s}: mean tau at rho {FIXED_RHO} (random/copy/4-way) {fmt(r['tau_seg'])}, "
        f"tau* {fmt(r['tau_star_seg'])}, LM NLL {fmt(r['lm_nll_seg'])}" for s, r in zip(seeds, res))
    common = (f"{seg_txt}. Expected from dL/dtau = H(softmax(z/tau)) - log V + rho (independent of the target): the "
              f"DRO loss sets every token's tempered entropy to log V - rho, cooling flat rows and heating peaked ones")
    v_ent = RULE_ENTROPY.verdict(col("rho_entropy"), [0.0] * len(seeds), seeds=seeds)
    v_nll = RULE_NLL.verdict(col("nll_tempnet"), col("nll_global"), seeds=seeds)
    v_ts = RULE_TAU_STAR.verdict(col("err_tau_star"), col("err_const"), seeds=seeds)
    return [
        Row(pid="P2", claim_id="entropy",
            claim="TempNet's tau rises with the true conditional entropy of the next token (notes' tiny check: "
                  "Spearman > 0 on a planted copy / uniform-random corpus)",
            setting=f"{setting}; rho {FIXED_RHO}", baseline_name="no association (Spearman 0)", baseline_value=0.0,
            method_value=round(float(np.mean(col("rho_entropy"))), 4),
            metric="Spearman(tau, true entropy), held-out targets (higher is better)", verdict=v_ent,
            note=f"per seed {fmt(col('rho_entropy'))}. {common}"),
        Row(pid="P2", claim_id="nll",
            claim="held-out NLL of z / tau(z) is no worse than at the best single global temperature "
                  "(notes' tiny check)",
            setting=f"{setting}; rho chosen on validation NLL", baseline_name="z / T*, T* chosen on validation",
            baseline_value=round(float(np.mean(col("nll_global"))), 4),
            method_value=round(float(np.mean(col("nll_tempnet"))), 4),
            metric="held-out NLL nats/token (lower is better)", verdict=v_nll,
            note=f"TempNet {fmt(col('nll_tempnet'))} vs global T* {fmt(col('nll_global'))} (T* per seed "
                 f"{fmt(col('t_star'))}; T=1 {fmt(col('nll_t1'))}); chosen rho per seed {col('rho')}, its mean tau "
                 f"(random/copy/4-way) " + "; ".join(fmt(r['tau_c_seg']) for r in res) + "; validation NLL per rho: "
                 + "; ".join(f"seed {s}: " + ", ".join(f"{k}: {v:.3f}" for k, v in r['val_nll'].items())
                             for s, r in zip(seeds, res)) + f". {common}"),
        Row(pid="P2", claim_id="tau-star",
            claim="the trained TempNet's tau lands near the per-token minimiser tau* of the DRO loss on the frozen "
                  "logits (issue 19's numerical check)",
            setting=f"{setting}; rho {FIXED_RHO}", baseline_name="the best constant tau (exp median log tau*)",
            baseline_value=round(float(np.mean(col("err_const"))), 4),
            method_value=round(float(np.mean(col("err_tau_star"))), 4),
            metric="mean |log tau - log tau*| on held-out targets (lower is better)", verdict=v_ts,
            note=f"TempNet {fmt(col('err_tau_star'))} vs constant {fmt(col('err_const'))}; Spearman(tau, tau*) "
                 f"{fmt(col('rho_tau_star'))}; tau* = dro_optimal_tau (bisection on dL/dtau) in the same bounds. "
                 f"{common}"),
        Row(pid="P2", claim_id="frozen-llm",
            claim="TempNet trained on a frozen LLaMA-2-chat (7B/13B/70B) raises its AlpacaEval win rate",
            setting="not run", baseline_name="the frozen LLM with its default generation temperature",
            baseline_value=None, method_value=None, metric="AlpacaEval win rate", verdict="untested-here",
            note="needs a 7B+ chat LLM and a GPT-4 judge (neither available offline); the rows above test the "
                 "mechanism on a tiny LM"),
    ]


if __name__ == "__main__":
    raise SystemExit(run_cli(run))
