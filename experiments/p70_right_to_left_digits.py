"""P70 Tokenization counts: right-to-left digit grouping vs left-to-right on multi-digit addition.

Paper claim (Singh & Strouse 2024): cutting numbers into <=3-digit tokens from the right
(1|234|567) instead of from the left (123|456|7, GPT-3.5/4) largely improves addition accuracy;
L2R errors concentrate where the answer is longer than the operands.

Small-scale check of the DIRECTION effect at group size 2. The first version (3-digit groups,
1-5 digit operands, d=64) was inconclusive: no policy learned addition (< 1% exact match), since a
tiny model cannot learn a 1000-way group-addition table on CPU. Group size 2 keeps what the
paper's claim is about (groups aligned by place value from the right vs cut from the left, so that
operand and answer groups are misaligned whenever lengths differ) with a 100-way table:

* ONE byte-level BPE vocabulary (trained with the l2r3 policy on addition text; it holds every
  1-3 digit string as one token, checked below) viewed through ``right_to_left_digits(tok, policy)``
  with ``r2l2`` (``1234+567=1801 -> 12|34 + 5|67 = 18|01``) and ``l2r2`` (``12|34 + 56|7 = 18|01``).
* ``a+b=c`` with 1-4 digit operands, loss on the completion only; a tokjax transformer (d=128,
  2 layers) trained from scratch under each policy with the same steps, data and seed.
* Metric: held-out exact match, computed as "every completion token (and eos) is the argmax
  under teacher forcing", which equals greedy decoding's exact match for a deterministic
  tokenization. Also reported: accuracy on the length-mismatch problems (answer longer than both
  operands), where the paper locates L2R's errors.
* Budget: chosen before the evaluation runs on a validation split (1000 problems drawn with
  seed 3, disjoint from training) with probe seeds (98, 99) that are not evaluation seeds, r2l2
  only: seed 99 gave 0.17 exact match at 2000 steps, 0.51 at 6000, 0.77 at 16000 and 0.92 at
  32000; seed 98 gave 0.76 at 32000. A full run at 8000 steps left the better policy below the
  learned gate on two of three evaluation seeds (0.36, 0.34, 0.53) and one at 16000 steps on one
  (0.63, 0.51, 0.47: both inconclusive), so ``STEPS`` = 32000, the probed budget at which both
  probe seeds clear the gate with a margin; the evaluation split is not used to choose it. lr 1e-2
  did not learn (0.003 at 4000 steps), so lr stays 3e-3. The "single"-digit policy of the first
  version is dropped (CPU time).

Verdict (``RULE``, declared before anything runs): per seed, R2L's exact match minus L2R's must
exceed 0.02 (2 points) on every seed for ``reproduced``, on none for ``not-reproduced``. The
comparison only means something on a model that learns addition: ``RULE_LEARNED`` (the better of
the two policies reaches more than ``LEARNED_ACC`` = 0.5 exact match) is checked first, and the
row is ``inconclusive`` unless it holds on every seed.

The paper's own setting (3-digit groups on a frontier LLM, enforced by commas at inference,
:func:`group_digits`) is not tested here: group size 3 needs a model that learns a 1000-way table
(~10M parameters, ~1e5 steps, GPU) or a pretrained LLM with 3-digit number tokens.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as `python experiments/p70_right_to_left_digits.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from experiments._common import pad_to, train_completion_model  # noqa: E402
from experiments._harness import Row, Rule, run_cli  # noqa: E402

RULE = Rule(metric="held-out exact-match accuracy", higher_is_better=True, threshold=0.02, seeds=(0, 1, 2),
            quick_seeds=(0,), reported="r2l2 vs l2r2 (2-digit groups), fixed in advance")
LEARNED_ACC = 0.5  # exact match a policy must reach for the model to count as one that learns addition
RULE_LEARNED = Rule(metric="held-out exact-match accuracy", higher_is_better=True, threshold=LEARNED_ACC,
                    seeds=(0, 1, 2), quick_seeds=(0,), reported="the better policy vs 0 (did any model learn addition)")
POLICIES = ("l2r2", "r2l2")
DIGITS = (1, 4)
STEPS, QUICK_STEPS = 32000, 1500  # STEPS from the validation probe (module docstring)
D_MODEL, LR = 128, 3e-3
WORKERS = 3  # (policy, seed) runs in parallel processes: the 2-core machine is shared, one run alone gets a sliver


def exact_match(params, cfg, enc):
    """Returns bool [N]: every masked target is the argmax (teacher forcing) = greedy exact match."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    import tokjax

    @jax.jit
    def ok(toks, mask):
        logits = tokjax.forward(params, cfg, toks[:, :-1]).logits
        hit = jnp.argmax(logits, -1) == toks[:, 1:]
        return jnp.all(hit | ~mask, axis=1)

    out = []
    for i in range(0, len(enc["tokens"]), 500):
        out.append(np.asarray(ok(jnp.asarray(enc["tokens"][i:i + 500]), jnp.asarray(enc["mask"][i:i + 500]))))
    return np.concatenate(out)


def train_and_score(job):
    """Returns (policy, seed, bool [N] test exact match, final train loss) of one (policy, seed) run.

    Each finished run is kept under ``$TOKJAX_CACHE/experiments`` (keyed by policy, seed, steps, model size, lr and
    a digest of the train and test tokens), so a full run killed part-way, or split across sessions or machines,
    resumes with the runs it still lacks: one run is ~40 CPU-minutes here.
    """
    import hashlib
    import os

    import numpy as np

    from experiments._common import cached

    policy, seed, tr, te, vocab_size, steps = job
    digest = hashlib.sha256(np.ascontiguousarray(tr["tokens"]).tobytes() + np.ascontiguousarray(te["tokens"]).tobytes()
                            + np.ascontiguousarray(te["mask"]).tobytes()).hexdigest()[:12]
    path = cached(f"p70-{policy}-seed{seed}-{steps}steps-d{D_MODEL}-lr{LR:g}-{digest}.npz")
    if path.exists():
        with np.load(path) as f:
            return policy, seed, f["hits"], float(f["loss"])
    params, cfg, loss = train_completion_model(tr, vocab_size, steps=steps, seed=seed, d_model=D_MODEL, lr=LR)
    hits = exact_match(params, cfg, te)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, hits=hits, loss=np.float64(loss))
    os.replace(tmp, path)  # atomic: a killed run never leaves a half-written result
    return policy, seed, hits, float(loss)


def run(quick: bool) -> list[Row]:
    import concurrent.futures as cf
    import dataclasses
    import multiprocessing as mp

    import numpy as np

    from tokjax.data import arithmetic
    from tokjax.tokenizers import BPETokenizer
    from tokjax.tokenizers.right_to_left_digits import encode_arithmetic, right_to_left_digits

    steps = QUICK_STEPS if quick else STEPS
    seeds = RULE.run_seeds(quick)
    train_ex = arithmetic(50000, digits=DIGITS, seed=1)
    test_ex = arithmetic(1000, digits=DIGITS, seed=2)
    seen = {e.prompt for e in train_ex}
    test_ex = [e for e in test_ex if e.prompt not in seen]
    mismatch = np.array([len(e.answer) > max(len(str(e.a)), len(str(e.b))) for e in test_ex])
    base = BPETokenizer.train([e.text for e in arithmetic(30000, digits=(1, 6), seed=0)], vocab_size=1400,
                              digits="l2r3", min_frequency=1)
    missing = [s for s in [str(i) for i in range(10)] + [f"{i:02d}" for i in range(100)] if len(base.encode(s)) != 1]
    if missing:  # a group split over two tokens would make the policies differ in more than the cut direction
        raise RuntimeError(f"the base vocabulary lacks single tokens for digit groups {missing[:10]}")

    jobs = []
    for policy in POLICIES:
        tok = right_to_left_digits(base, policy)
        tr, te = encode_arithmetic(tok, train_ex), encode_arithmetic(tok, test_ex)
        W = max(tr["tokens"].shape[1], te["tokens"].shape[1])
        tr, te = pad_to(tr, W, tok.pad_id), pad_to(te, W, tok.pad_id)
        jobs += [(policy, seed, tr, te, base.vocab_size, steps) for seed in seeds]
    # spawn, not fork: JAX's runtime threads do not survive a fork.
    with cf.ProcessPoolExecutor(max_workers=min(WORKERS, len(jobs)), mp_context=mp.get_context("spawn")) as pool:
        results = list(pool.map(train_and_score, jobs))
    hits = {p: np.stack([h for q, s, h, _ in results if q == p]) for p in POLICIES}  # [seeds, N], seed order kept
    final_loss = {p: [loss for q, s, _, loss in results if q == p] for p in POLICIES}
    acc = {p: hits[p].mean(axis=1) for p in POLICIES}
    acc_mis = {p: hits[p][:, mismatch].mean(axis=1) for p in POLICIES}

    verdict = RULE.verdict(acc["r2l2"], acc["l2r2"], seeds=seeds)
    best = np.maximum(acc["r2l2"], acc["l2r2"])
    learned = RULE_LEARNED.verdict(best, [0.0] * len(seeds), seeds=seeds)
    if learned.status != "reproduced":  # some model never learned addition: the grouping comparison says nothing
        verdict = dataclasses.replace(verdict, status="inconclusive")

    def per_seed(v):
        return "/".join(f"{x:.3f}" for x in v)

    note = "; ".join(
        f"{p}: exact {float(np.mean(acc[p])):.3f} (per seed {per_seed(acc[p])}; length-mismatch {per_seed(acc_mis[p])}, "
        f"final train loss {per_seed(final_loss[p])})" for p in POLICIES
    ) + (f". A model learned addition (better policy > {LEARNED_ACC} exact match on every seed): {learned.status}. "
         f"Same BPE vocabulary ({base.vocab_size} ids, every 1-2 digit group one token) for both policies; "
         f"{steps} AdamW steps (tokjax.train, lr {LR}), batch 64, d={D_MODEL} x2 layers, {len(train_ex)} train / "
         f"{len(test_ex)} unseen test problems, {int(mismatch.sum())} with a longer answer. Models trained from "
         f"scratch with 2-digit groups, unlike the paper's 3-digit groups on GPT-3.5/4 (comma trick at inference): "
         f"the 3-digit claim on a frontier LLM is not tested here.")
    if verdict.status == "inconclusive":
        note += (" What would decide it: every seed's better policy above the learned gate (more steps or a larger "
                 "model), then the per-seed r2l2 - l2r2 difference.")
    return [Row(
        pid="P70", claim_id="grouping",
        claim="right-to-left digit grouping beats left-to-right grouping on multi-digit addition (tested with "
              "2-digit groups on models trained from scratch; the paper uses 3-digit groups on frontier LLMs)",
        setting=f"a+b=c, {DIGITS[0]}-{DIGITS[1]} digit operands, tokjax transformer d={D_MODEL} x2 trained from "
                f"scratch, {steps} steps, {len(seeds)} seed(s), same vocabulary, policies via right_to_left_digits",
        baseline_name="left-to-right <=2-digit groups (l2r2)",
        baseline_value=round(float(np.mean(acc["l2r2"])), 4),
        method_value=round(float(np.mean(acc["r2l2"])), 4),
        metric="held-out exact-match accuracy (higher is better)",
        verdict=verdict,
        note=note,
    )]


if __name__ == "__main__":
    raise SystemExit(run_cli(run))
