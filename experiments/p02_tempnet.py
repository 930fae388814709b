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

Real-model arms (issue 19 item 3; full mode; 1 TempNet training seed, seed 0, declared: the CPU budget
allows one): ``tokjax.pretrained("smollm2-135m-instruct")`` (V = 49152) stays frozen; TempNets (hidden
256, dropout 0.5, the GPT-2 bounds [0.5, 5.0] as above, centred input) for each rho in ``SMOL_RHOS``
(7.5, 8.5, 9.5: target entropies log V - rho = 3.3 / 2.3 / 1.3 nats, around the official 8.0 (GPT-2) and
8.5 (LLaMA-2) whose targets are 2.8 / 1.9 nats) are trained side by side in ONE ``tokjax.train`` run:
``params["tempnet"] = {rho index: TempNet}``, ``trainable=("tempnet",)``, the loss the sum over rhos of
``tempnet_dro_loss`` on logits the frozen SmolLM2 computes once per batch (the registered ``tempnet``
loss with ``base="frozen"`` would run the 135M forward once per rho; the experiment checks on a probe
batch that each summand equals the registered loss to 1e-5, and that the LM is bit-for-bit unchanged).
The nets are independent (separate parameters; AdamW is per-parameter; ``grad_clip=None`` so a global
norm does not couple them; no weight decay). Data: the bundled ``pydocs`` corpus split by document
(``split_corpus``: 70 % train; the rest split into validation and test documents), windows of
``SMOL_WINDOW`` = 128 tokens; ``SMOL_STEPS`` = 200 steps of ``SMOL_BATCH`` = 2 windows, warm-up 10 %,
cosine, once per learning rate in ``SMOL_LRS`` (1e-2, 1e-3, 1e-4), the same initial nets each time; the
(lr, rho) pair is chosen on the validation windows' NLL. Design history: a first unrecorded run at lr 1e-2
alone (the tiny rows' value) saturated the first layer on V = 49152 inputs and gave a constant tau (1.66,
where the schedule stopped it, Spearman with entropy 0) -- hence the grid; the official GPT-2 TempNet lr is
2e-6 over far more steps than this budget allows. The lead's brief suggested 4 x 128 tokens per step; 2 x 128 keeps the
arm near 20 minutes on one loaded core (measured: 4.9 s per frozen forward of 4 x 128 tokens).

* ``smollm-nll`` (``RULE_SMOL_NLL``, non-inferiority, as the notes' check and the ``nll`` row: the paper's
  own NLL gains are for joint training, its frozen-LLM claim is AlpacaEval): held-out NLL (nats/token) of
  z / tau(z) vs z / T*, rho chosen on the validation windows' NLL, T* the validation-best global
  temperature (log grid 0.5..2.0, 61 points), on ``SMOL_TEST`` = 128 held-out windows. Reproduced when
  the NLL difference is below 0.001 nats AND the upper end of the paired-bootstrap 95 % CI of
  (TempNet - T*) over held-out windows (``N_BOOT`` resamples, rng 0) is below 0.001; a passing point
  estimate whose CI crosses the margin is reported inconclusive.
* ``smollm-word-problems`` (``RULE_SMOL_WP``, superiority, the paper's claim that TempNet decoding beats a
  fixed default temperature): ``word_problems`` level 1 (docs/data.md: the easiest level for SmolLM2),
  200 problems of draw seed ``WP_SEED``, chat template, 48 new tokens, graded by ``check_answer``;
  sampled with ``tokjax.generate(logits=tokjax.logits.tempnet(net))`` (the validation-chosen net of
  ``smollm-nll``) vs ``temperature(0.7)`` (the default the paper compares to), the same keys per batch.
  Reproduced when accuracy(tau(z)) - accuracy(0.7) > 0 AND the paired-bootstrap 95 % CI over problems
  lies above 0; a positive difference whose CI includes 0 is inconclusive.

Quick mode: ``smollm-nll`` is a smoke of the same code path (2 steps of 1 x 32 tokens, 2 validation and
4 test windows of 32 tokens; its verdict means nothing); ``smollm-word-problems`` is not run (the row
says so). What is not run here: the paper's LLaMA-2-chat models, AlpacaEval and its GPT-4 judge.

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
RULE_SMOL_NLL = Rule(metric="held-out NLL nats/token, frozen SmolLM2-135M-Instruct on pydocs windows",
                     higher_is_better=False, threshold=-0.001, seeds=(0,), quick_seeds=(0,),
                     reported="TempNet with rho chosen on validation NLL vs the validation-best global temperature; "
                              "1 training seed; reproduced also needs the paired-bootstrap 95% CI of "
                              "(TempNet - T*) below 0.001")
RULE_SMOL_WP = Rule(metric="word-problem accuracy (level 1, 200 problems, 48 new tokens)", higher_is_better=True,
                    threshold=0.0, seeds=(0,), quick_seeds=(0,),
                    reported="the smollm-nll row's validation-chosen TempNet vs temperature 0.7, same keys; "
                             "reproduced also needs the paired-bootstrap 95% CI of the difference above 0")

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

# Real-model arms (frozen SmolLM2-135M-Instruct)
SMOL_MODEL = "smollm2-135m-instruct"
SMOL_RHOS = (7.5, 8.5, 9.5)
SMOL_LRS, SMOL_SEED = (1e-2, 1e-3, 1e-4), 0
SMOL_FULL = dict(window=128, batch=2, steps=200, val=32, test=128, eval_rows=4)
SMOL_QUICK = dict(window=32, batch=1, steps=2, val=2, test=4, eval_rows=2)
T_GRID = (0.5, 2.0, 61)  # log grid of global temperatures (lo, hi, points)
N_BOOT = 10_000
WP_LEVEL, WP_N, WP_NEW, WP_BATCH, WP_SEED, WP_T = 1, 200, 48, 50, 1902, 0.7


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


def paired_bootstrap(diffs, n_boot: int = N_BOOT, seed: int = 0) -> tuple[float, float]:
    """Returns the 95% percentile CI of the mean of per-item differences (items resampled with replacement)."""
    import numpy as np

    d = np.asarray(diffs, np.float64)
    means = d[np.random.default_rng(seed).integers(0, len(d), (n_boot, len(d)))].mean(1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def smol_windows(tok, c: dict) -> tuple:
    """Returns int32 (train [N, W+1], validation [val, W+1], test [test, W+1]) pydocs windows, split by document."""
    import numpy as np

    from tokjax.data import load_corpus, pack_sequences, split_corpus

    train_docs, rest = split_corpus(load_corpus("pydocs"), val_fraction=0.3, seed=0)
    test_docs, val_docs = split_corpus(rest, val_fraction=1 / 3, seed=1)
    rng = np.random.default_rng(0)

    def win(docs, n=None):
        w = pack_sequences([tok.encode(d) for d in docs], c["window"]).astype(np.int32)
        if n is not None:
            if len(w) < n:
                raise ValueError(f"pydocs split holds {len(w)} windows of {c['window']} tokens, {n} needed")
            w = w[np.sort(rng.choice(len(w), n, replace=False))]
        return w

    return win(train_docs), win(val_docs, c["val"]), win(test_docs, c["test"])


def multi_rho_loss(rhos, dropout: float = DROPOUT):
    """Returns a train loss: the sum over ``rhos`` of the P2 DRO loss of ``params["tempnet"][str(i)]`` on the frozen
    LM's logits, computed once per batch (each summand is the registered ``tempnet`` loss with base="frozen")."""
    import jax
    import jax.numpy as jnp

    import tokjax
    from tokjax.logits.tempnet import tempnet_apply
    from tokjax.losses.tempnet import TEMPNET_KEY, tempnet_dro_loss

    def loss_fn(params, cfg, batch, rng=None):
        lm = jax.lax.stop_gradient({k: v for k, v in params.items() if k != TEMPNET_KEY})
        tokens = batch["tokens"]
        z = jax.lax.stop_gradient(tokjax.forward(lm, cfg, tokens[:, :-1]).logits.astype(jnp.float32))
        total, metrics = 0.0, {}
        for i, rho in enumerate(rhos):
            key = None if rng is None else jax.random.fold_in(rng, i)
            tau = tempnet_apply(params[TEMPNET_KEY][str(i)], z, dropout=dropout, key=key)
            loss = tempnet_dro_loss(z, tokens[:, 1:], tau, rho=rho)
            total = total + loss
            metrics[f"loss_{i}"], metrics[f"tau_mean_{i}"] = loss, jnp.mean(jax.lax.stop_gradient(tau))
        return total, metrics

    return loss_fn


def smollm_nll_arm(model, tok, quick: bool) -> dict:
    """Returns the smollm-nll measurements and the validation-chosen TempNet (``net``)."""
    import time

    import jax
    import jax.numpy as jnp
    import numpy as np

    import tokjax
    from tokjax.logits.tempnet import tempnet_apply
    from tokjax.losses.registry import make_loss
    from tokjax.losses.tempnet import TEMPNET_KEY, init_tempnet

    c = SMOL_QUICK if quick else SMOL_FULL
    t0 = time.perf_counter()
    cfg, lm = model.cfg, model.params
    train_w, val_w, test_w = smol_windows(tok, c)
    keys = jax.random.split(jax.random.PRNGKey(2000 + SMOL_SEED), len(SMOL_RHOS))
    nets = {str(i): init_tempnet(lm, cfg, k, hidden=HIDDEN, tau_min=TAU_MIN, tau_max=TAU_MAX)[TEMPNET_KEY]
            for i, k in enumerate(keys)}  # the same initial nets for every learning rate
    loss_fn = multi_rho_loss(SMOL_RHOS)
    probe = {"tokens": jnp.asarray(train_w[:1, :17])}  # each summand == the registered loss (no dropout)
    _, m = loss_fn({**lm, TEMPNET_KEY: nets}, cfg, probe, None)
    for i, rho in enumerate(SMOL_RHOS):
        ref, _ = make_loss("tempnet", base="frozen", rho=rho)({**lm, TEMPNET_KEY: nets[str(i)]}, cfg, probe, None)
        if abs(float(ref) - float(m[f"loss_{i}"])) > 1e-5 * max(1.0, abs(float(ref))):
            raise RuntimeError(f"rho {rho}: summand {float(m[f'loss_{i}'])} != registered tempnet loss {float(ref)}")
    B = c["batch"]
    order = np.random.default_rng(SMOL_SEED).permutation(len(train_w))

    def batch_fn(s):
        return {"tokens": train_w[order[(np.arange(s * B, (s + 1) * B)) % len(order)]]}

    cands = []  # (lr, rho, net): every candidate, chosen among on the validation windows
    for lr in SMOL_LRS[:1] if quick else SMOL_LRS:  # --quick: a smoke of the code path, one lr
        trained, _ = train_model(cfg, steps=c["steps"], batch_fn=batch_fn, loss_fn=loss_fn,
                                 params={**lm, TEMPNET_KEY: nets}, trainable=(TEMPNET_KEY,), lr=lr, grad_clip=None,
                                 seed=SMOL_SEED)
        for k in lm:  # the frozen base must not have moved
            if not all(bool(jnp.array_equal(a, b)) for a, b in zip(jax.tree.leaves(trained.params[k]),
                                                                   jax.tree.leaves(lm[k]))):
                raise RuntimeError(f"SmolLM2's {k!r} changed while training the TempNets")
        cands += [(lr, rho, trained.params[TEMPNET_KEY][str(i)]) for i, rho in enumerate(SMOL_RHOS)]
    names = [f"lr {lr:g} rho {rho}" for lr, rho, _ in cands]
    nets = tuple(net for _, _, net in cands)
    t_train = time.perf_counter() - t0
    grid = jnp.asarray(np.exp(np.linspace(np.log(T_GRID[0]), np.log(T_GRID[1]), T_GRID[2])), jnp.float32)

    def window_nll(z, y, t):  # per-window mean NLL of z / t, t scalar or [B, T]
        t = jnp.asarray(t, jnp.float32)
        lp = jax.nn.log_softmax(z / (t[..., None] if t.ndim else t), -1)
        return -jnp.mean(jnp.take_along_axis(lp, y[..., None], -1)[..., 0], -1)

    @jax.jit
    def stats(params, nets, tokens, t_star, grid):
        z = tokjax.forward(params, cfg, tokens[:, :-1]).logits.astype(jnp.float32)
        y = tokens[:, 1:]
        taus = jnp.stack([tempnet_apply(net, z) for net in nets])  # [candidates, B, T]
        lp = jax.nn.log_softmax(z, -1)
        return {"grid": jax.lax.map(lambda t: window_nll(z, y, t), grid),  # [G, B]
                "nets": jnp.stack([window_nll(z, y, t) for t in taus]),  # [R, B]
                "t_star": window_nll(z, y, t_star), "t1": window_nll(z, y, 1.0), "tau": taus,
                "entropy": -jnp.sum(jnp.exp(lp) * lp, -1)}

    def collect(windows, t_star, grid):
        parts = [jax.device_get(stats(lm, nets, jnp.asarray(windows[i:i + c["eval_rows"]]), t_star, grid))
                 for i in range(0, len(windows), c["eval_rows"])]
        return {k: np.concatenate([p[k] for p in parts], axis=-1 if k in ("grid", "nets") else
                                  (1 if k == "tau" else 0)) for k in parts[0]}

    val = collect(val_w, 1.0, grid)
    val_nets = val["nets"].mean(1)
    chosen = int(np.argmin(val_nets))
    t_star = float(grid[int(np.argmin(val["grid"].mean(1)))])
    test = collect(test_w, t_star, grid[:1])  # the grid is not needed on the test windows
    tau = test["tau"][chosen]
    d = test["nets"][chosen] - test["t_star"]  # per held-out window, TempNet - T* (nats/token)
    lo, hi = paired_bootstrap(d)
    return {
        "net": nets[chosen], "rho": cands[chosen][1], "lr": cands[chosen][0], "t_star": t_star,
        "val_nll": {n: float(v) for n, v in zip(names, val_nets)}, "val_global": float(val["grid"].mean(1).min()),
        "nll_tempnet": float(test["nets"][chosen].mean()), "nll_global": float(test["t_star"].mean()),
        "nll_t1": float(test["t1"].mean()), "nll_rhos": {n: float(v) for n, v in zip(names, test["nets"].mean(1))},
        "ci": (lo, hi), "tau_mean": float(tau.mean()), "tau_q": [float(q) for q in np.quantile(tau, (0.1, 0.5, 0.9))],
        "spearman_entropy": spearman(tau, test["entropy"]), "entropy_mean": float(test["entropy"].mean()),
        "n_train": len(train_w), "n_val": len(val_w), "n_test": len(test_w), "train_s": t_train,
        "seconds": time.perf_counter() - t0, "c": c,
    }


def word_problem_arm(model, tok, net) -> dict:
    """Returns the smollm-word-problems measurements: per-problem correctness at tau(z) and at T = WP_T."""
    import time

    import jax
    import numpy as np

    import tokjax
    from tokjax import logits as Lg
    from tokjax.data import check_answer, word_problems

    t0 = time.perf_counter()
    probs = word_problems(WP_N, WP_LEVEL, WP_SEED)
    prompts = [tok.apply_chat_template([{"role": "user", "content": p.prompt()}], add_generation_prompt=True)
               for p in probs]
    arms = {"tempnet": Lg.tempnet(net), "fixed": Lg.temperature(WP_T)}
    ok, fmt_ok = {a: [] for a in arms}, {a: [] for a in arms}
    for i in range(0, len(prompts), WP_BATCH):
        key = jax.random.fold_in(jax.random.key(WP_SEED), i)  # the same key for both arms
        for a, transform in arms.items():
            out = tokjax.generate(model, prompts[i:i + WP_BATCH], key=key, max_new_tokens=WP_NEW, logits=transform,
                                  eos_id=tok.eos_id)
            for text, p in zip(out.texts(tok), probs[i:i + WP_BATCH]):
                correct, stated = check_answer(text, p.answer)
                ok[a].append(float(correct))
                fmt_ok[a].append(float(stated))
        print(f"p02 word problems {i + WP_BATCH}/{WP_N}: tempnet {np.mean(ok['tempnet']):.3f} T={WP_T} "
              f"{np.mean(ok['fixed']):.3f} ({time.perf_counter() - t0:.0f} s)", flush=True)
    d = np.asarray(ok["tempnet"]) - np.asarray(ok["fixed"])
    return {"acc": {a: float(np.mean(v)) for a, v in ok.items()}, "fmt": {a: float(np.mean(v)) for a, v in fmt_ok.items()},
            "ci": paired_bootstrap(d), "seconds": time.perf_counter() - t0}


def smollm_rows(quick: bool) -> list[Row]:
    """Returns the smollm-nll and smollm-word-problems rows (real model)."""
    import dataclasses

    import tokjax

    model, tok = tokjax.pretrained(SMOL_MODEL, progress=False)
    r = smollm_nll_arm(model, tok, quick)
    c = r["c"]
    print(f"p02 smollm-nll: lr {r['lr']:g} rho {r['rho']} TempNet {r['nll_tempnet']:.4f} vs T*={r['t_star']:.3f} "
          f"{r['nll_global']:.4f} (CI {r['ci'][0]:.4f}..{r['ci'][1]:.4f}); {r['seconds']:.0f} s", flush=True)
    v = RULE_SMOL_NLL.verdict([r["nll_tempnet"]], [r["nll_global"]], seeds=(SMOL_SEED,))
    if v.status == "reproduced" and r["ci"][1] >= -RULE_SMOL_NLL.threshold:
        v = dataclasses.replace(v, status="inconclusive")
    q = " (--quick smoke: 2 steps; the verdict means nothing)" if quick else ""
    setting = (f"frozen SmolLM2-135M-Instruct, pydocs split by document; TempNets (hidden {HIDDEN}, dropout {DROPOUT}, "
               f"tau in [{TAU_MIN}, {TAU_MAX}]) for rho in {SMOL_RHOS} trained side by side, {c['steps']} steps x "
               f"{c['batch']} x {c['window']} tokens, once per lr in {SMOL_LRS}; 1 training seed ({SMOL_SEED}); {r['n_test']} held-out "
               f"windows ({r['n_val']} validation, {r['n_train']} train)" + q)
    rows = [Row(
        pid="P2", claim_id="smollm-nll",
        claim="on a frozen real LM, held-out NLL of z / tau(z) is no worse than at the best single global temperature",
        setting=setting, baseline_name="z / T*, T* chosen on validation", baseline_value=round(r["nll_global"], 4),
        method_value=round(r["nll_tempnet"], 4), metric="held-out NLL nats/token (lower is better)", verdict=v,
        note=(f"lr {r['lr']:g}, rho {r['rho']} chosen on validation NLL ("
              + ", ".join(f"{k}: {x:.4f}" for k, x in r["val_nll"].items())
              + f"; validation T* {r['val_global']:.4f}); T* = {r['t_star']:.3f}, T=1 {r['nll_t1']:.4f}; held-out NLL "
              "per candidate " + ", ".join(f"{k}: {x:.4f}" for k, x in r["nll_rhos"].items())
              + f"; paired-bootstrap 95% CI of TempNet - T* over windows [{r['ci'][0]:.4f}, {r['ci'][1]:.4f}]; "
              f"chosen tau mean {r['tau_mean']:.3f}, 10/50/90% {'/'.join(f'{x:.2f}' for x in r['tau_q'])}; "
              f"Spearman(tau, entropy at T=1) {r['spearman_entropy']:.3f} (mean entropy {r['entropy_mean']:.2f} "
              f"nats); train {r['train_s']:.0f} s, arm {r['seconds']:.0f} s; verdict {v.status} by the rule "
              "(non-inferiority margin 0.001 plus the CI)"))]
    wp_setting = (f"frozen SmolLM2-135M-Instruct, word_problems level {WP_LEVEL}, {WP_N} problems (draw seed {WP_SEED}), "
                  f"chat template, {WP_NEW} new tokens, tokjax.generate with logits=tempnet(net) (the smollm-nll "
                  f"row's lr {r['lr']:g} rho {r['rho']} net) vs temperature({WP_T}), same keys")
    if quick:
        rows.append(Row(pid="P2", claim_id="smollm-word-problems",
                        claim="sampling at TempNet's tau(z) beats a fixed default temperature (0.7) on a real LM",
                        setting=wp_setting + " (not run with --quick)", baseline_name=f"temperature {WP_T}",
                        baseline_value=None, method_value=None, metric=RULE_SMOL_WP.metric, verdict="untested-here",
                        note="full mode only: 200 problems x 2 arms x 48 tokens of SmolLM2 decoding exceed the "
                             "--quick budget"))
        return rows
    w = word_problem_arm(model, tok, r["net"])
    v = RULE_SMOL_WP.verdict([w["acc"]["tempnet"]], [w["acc"]["fixed"]], seeds=(SMOL_SEED,))
    if v.status == "reproduced" and w["ci"][0] <= 0.0:
        v = dataclasses.replace(v, status="inconclusive")
    rows.append(Row(
        pid="P2", claim_id="smollm-word-problems",
        claim="sampling at TempNet's tau(z) beats a fixed default temperature (0.7) on a real LM",
        setting=wp_setting, baseline_name=f"temperature {WP_T}", baseline_value=round(w["acc"]["fixed"], 4),
        method_value=round(w["acc"]["tempnet"], 4), metric=RULE_SMOL_WP.metric + " (higher is better)", verdict=v,
        note=(f"paired-bootstrap 95% CI of the difference [{w['ci'][0]:.3f}, {w['ci'][1]:.3f}] over {WP_N} problems; "
              f"'Answer: N' stated: tempnet {w['fmt']['tempnet']:.3f}, T={WP_T} {w['fmt']['fixed']:.3f}; "
              f"{w['seconds']:.0f} s; verdict {v.status} by the rule (difference > 0 plus the CI)")))
    return rows


SMOL_CLAIMS = frozenset({"smollm-nll", "smollm-word-problems"})


def run(quick: bool, only: frozenset | None = None) -> list[Row]:
    import numpy as np

    if only is not None:  # the real-model rows run together (the word-problem arm samples with smollm-nll's net)
        if only != SMOL_CLAIMS:
            raise ValueError(f"--only supports exactly {','.join(sorted(SMOL_CLAIMS))} (the tiny-LM claims share "
                             f"one run per seed), got {','.join(sorted(only))}")
        return smollm_rows(quick)
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
                 "mechanism on a tiny LM and a frozen SmolLM2 (smollm-* rows)"),
    ] + smollm_rows(quick)


if __name__ == "__main__":
    raise SystemExit(run_cli(run))
