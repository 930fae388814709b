"""P55 SETRec: order-agnostic set identifiers vs a token-sequence identifier for generative recommendation.

Paper claim (Lin et al., SIGIR 2025): representing each item by a set of continuous tokens (1
CF + n semantic) under a sparse "unordered within item" mask, decoded by query slots in ONE
forward pass, matches or beats token-sequence identifiers (TIGER-style codes decoded
autoregressively) in recall while being much faster (8-18x in the paper).

Small-scale check on a synthetic catalogue: 120 items = 12 categories x 10 styles; features =
category and style prototypes + noise; CF embeddings = SVD of the training item-transition
matrix. A user prefers one category (80% of their items) and styles advance by one each step, so
the next item is predictable from the history. Both methods use the same tiny tokjax backbone
(d=64, 2 layers) and the same Adam steps:

* SETRec (``tokjax.tokenizers.setrec``): 3 tokens per item, catalogue scoring from 3 query slots.
* Baseline: each item gets a 2-token code (k-means cluster of its features, index in the
  cluster); the model reads the code sequence and is trained to emit the target's code; items
  are ranked by the exact code probability p(c1) p(c2 | c1) (exhaustive beam over the first code,
  2 sequential forward calls).

Metric: held-out recall@10; also sequential forward passes per recommendation (1 vs 2 by
construction). Verdict (``RULE``, declared before anything runs; a non-inferiority claim, 3 seeds
of model initialisation and batch order on the same catalogue and users; --quick: 1 seed):
``reproduced`` when SETRec's recall@10 is no more than 0.02 below the baseline's on every seed,
``not-reproduced`` when on none.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as `python experiments/p55_setrec.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from experiments._common import adam, sample_rows  # noqa: E402
from experiments._harness import Row, Rule, run_cli, train_model  # noqa: E402

RULE = Rule(metric="held-out recall@10", higher_is_better=True, threshold=-0.02, seeds=(0, 1, 2), quick_seeds=(0,),
            reported="SETRec with 1 CF + 2 semantic tokens, AE weight 0.1, fixed in advance")

N_CAT, N_STYLE, HIST = 12, 10, 6
N_ITEMS = N_CAT * N_STYLE


def make_data(n_users, seed):
    """Returns (history [n, HIST], target [n]) item ids."""
    import numpy as np

    r = np.random.default_rng(seed)
    seqs = np.empty((n_users, HIST + 1), np.int64)
    pref = r.integers(0, N_CAT, n_users)
    style = r.integers(0, N_STYLE, n_users)
    for t in range(HIST + 1):
        cat = np.where(r.uniform(size=n_users) < 0.8, pref, r.integers(0, N_CAT, n_users))
        seqs[:, t] = cat * N_STYLE + (style + t) % N_STYLE
    return seqs[:, :-1], seqs[:, -1]


def run(quick: bool) -> Row:
    import jax
    import jax.numpy as jnp
    import numpy as np

    import tokjax
    from tokjax.tokenizers.setrec import init_setrec, item_tokens, setrec_loss, setrec_query_states, setrec_scores

    steps = 400 if quick else 1500
    B, D = 64, 64
    r = np.random.default_rng(0)
    cats, styles = np.arange(N_ITEMS) // N_STYLE, np.arange(N_ITEMS) % N_STYLE
    feats = r.normal(size=(N_CAT, 16))[cats] + r.normal(size=(N_STYLE, 16))[styles] + 0.3 * r.normal(size=(N_ITEMS, 16))
    tr_h, tr_y = make_data(6000, 1)
    te_h, te_y = make_data(1000, 2)
    trans = np.zeros((N_ITEMS, N_ITEMS))
    np.add.at(trans, (tr_h[:, :-1].reshape(-1), tr_h[:, 1:].reshape(-1)), 1.0)
    u, s, _ = np.linalg.svd(np.log1p(trans))
    cf = u[:, :16] * np.sqrt(s[:16])
    feats_j, cf_j = jnp.asarray(feats, jnp.float32), jnp.asarray(cf, jnp.float32)

    def recall10(scores, y):
        top = np.argsort(-scores, axis=1)[:, :10]
        return float(np.mean([yy in t for yy, t in zip(y, top)]))

    # ---------------------------------------------------------------- SETRec
    cfg = tokjax.ModelConfig(vocab_size=4, d_model=D, n_layers=2, n_heads=4, max_len=32)
    opt = adam(3e-3, warmup=30, end_lr=3e-4)

    def set_loss(b, _cfg, batch, rng):
        return setrec_loss(b[0], cfg, b[1], cf_j, feats_j, batch["history"], batch["target"], 0.1)

    @jax.jit
    def set_scores(both, h):
        cat_tokens, _ = item_tokens(both[1], cf_j, feats_j)
        return setrec_scores(setrec_query_states(both[0], cfg, both[1], cat_tokens[h]), cat_tokens)[0]

    def setrec_run(seed):
        both = (tokjax.Model.init(cfg, jax.random.PRNGKey(2 * seed)).params,
                init_setrec(jax.random.PRNGKey(2 * seed + 1), d_cf=16, d_feat=16, d_model=D, n_sem=2))
        both, _ = train_model(None, steps=steps, batch_fn=sample_rows({"history": tr_h, "target": tr_y}, B, 3 + seed),
                              loss_fn=set_loss, params=both, **opt)
        set_scores(both, jnp.asarray(te_h[:8])).block_until_ready()
        t0 = time.perf_counter()
        s_set = np.asarray(set_scores(both, jnp.asarray(te_h)))
        return recall10(s_set, te_y), time.perf_counter() - t0

    # ---------------------------------------------------------------- token-sequence identifiers
    K = N_CAT
    cent = feats[r.choice(N_ITEMS, K, replace=False)]
    for _ in range(20):  # k-means on the semantic features
        c1 = np.argmin(((feats[:, None] - cent[None]) ** 2).sum(-1), 1)
        cent = np.stack([feats[c1 == k].mean(0) if np.any(c1 == k) else cent[k] for k in range(K)])
    c2 = np.zeros(N_ITEMS, np.int64)
    for k in range(K):
        c2[c1 == k] = np.arange(np.sum(c1 == k))
    M = int(c2.max()) + 1
    codes = np.stack([c1, K + c2], 1)  # token ids: first code in [0, K), second in [K, K + M)
    code_to_item = {tuple(c): i for i, c in enumerate(codes)}
    V = K + M
    seq_cfg = tokjax.ModelConfig(vocab_size=V, d_model=D, n_layers=2, n_heads=4, max_len=2 * (HIST + 1))

    def seqs(h, y):
        return np.concatenate([codes[h].reshape(len(h), -1), codes[y]], 1).astype(np.int32)

    tr_seq = seqs(tr_h, tr_y)
    mask = np.zeros(tr_seq[:, 1:].shape, bool)
    mask[:, -2:] = True  # the loss covers the target item's 2 code tokens

    @jax.jit
    def first(p, x):  # sequential call 1: distribution of the first code
        return jax.nn.log_softmax(tokjax.forward(p, seq_cfg, x).logits[:, -1, :K], -1)

    @jax.jit
    def second(p, x):  # sequential call 2: every first code appended (exhaustive beam of width K)
        n = x.shape[0]
        ext = jnp.concatenate([jnp.repeat(x, K, 0), jnp.tile(jnp.arange(K, dtype=x.dtype), n)[:, None]], 1)
        lp = jax.nn.log_softmax(tokjax.forward(p, seq_cfg, ext).logits[:, -1, K:], -1)
        return lp.reshape(n, K, M)

    hist_codes = jnp.asarray(codes[te_h].reshape(len(te_h), -1).astype(np.int32))

    def sequence_run(seed):
        seq_model, _ = train_model(seq_cfg, steps=steps, batch_fn=sample_rows({"tokens": tr_seq, "mask": mask}, B, 3 + seed),
                                   params=tokjax.Model.init(seq_cfg, jax.random.PRNGKey(2 * seed)).params, **opt)
        params = seq_model.params
        first(params, hist_codes[:8]).block_until_ready()
        second(params, hist_codes[:8]).block_until_ready()
        t0 = time.perf_counter()
        lp1 = np.asarray(first(params, hist_codes))
        lp2 = np.asarray(second(params, hist_codes))
        t_seq = time.perf_counter() - t0
        s_seq = lp1[:, codes[:, 0]] + lp2[:, codes[:, 0], codes[:, 1] - K]
        return recall10(s_seq, te_y), t_seq

    seeds = RULE.run_seeds(quick)
    runs = [(setrec_run(s), sequence_run(s)) for s in seeds]
    recs_set = [a[0] for a, _ in runs]
    recs_seq = [b[0] for _, b in runs]
    rec_set, rec_seq = float(np.mean(recs_set)), float(np.mean(recs_seq))
    t_set, t_seq = runs[-1][0][1], runs[-1][1][1]
    verdict = RULE.verdict(recs_set, recs_seq, seeds=seeds)
    per_seed = ", ".join(f"seed {s}: {a:.3f} vs {b:.3f}" for s, a, b in zip(seeds, recs_set, recs_seq))
    note = (f"recall@10 SETRec {rec_set:.3f} vs token-sequence ids {rec_seq:.3f} (mean of {len(seeds)} seeds; "
            f"{per_seed}) on {len(te_y)} held-out users "
            f"({N_ITEMS} items; chance 10/{N_ITEMS} = {10 / N_ITEMS:.3f}). Sequential forward passes per "
            f"recommendation: SETRec 1 (3 query slots decoded together) vs 2 (code length; the second over "
            f"{K} prefixes per user). Scoring wall time for all test users (shared CPU): SETRec {t_set * 1e3:.1f} ms "
            f"vs {t_seq * 1e3:.1f} ms. {steps} Adam steps, batch {B}, same d=64 x2 backbone; SETRec: 1 CF + 2 "
            f"semantic tokens, AE weight alpha 0.1, beta = 1. Baseline codes: k-means ({K} clusters) + index in "
            f"cluster, ranked by the exact code probability (an exhaustive beam, the baseline's best case). "
            f"Both trained by tokjax.train (Adam, warmup 30, cosine 3e-3 -> 3e-4). "
            f"{len(code_to_item)} unique codes.")
    return Row(
        pid="P55",
        claim="set identifiers decoded in one pass (SETRec) match token-sequence identifiers in recall with fewer passes",
        setting=f"synthetic catalogue ({N_ITEMS} items, 12 categories x 10 styles), histories of {HIST} items, "
                f"tiny tokjax transformer d=64 x2 for both methods, {len(seeds)} seed(s)",
        baseline_name="token-sequence identifiers (2-token codes, exact autoregressive scoring)",
        baseline_value=round(rec_seq, 4),
        method_value=round(rec_set, 4),
        metric="held-out recall@10 (higher is better); passes 1 vs 2",
        verdict=verdict,
        note=note,
    )


if __name__ == "__main__":
    raise SystemExit(run_cli(run))
