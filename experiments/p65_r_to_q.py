"""P65 From r to Q*: after sequence DPO, the implicit token reward beta*log(pi/pi_ref) points at the bad token.

Paper claim (Rafailov et al., arXiv 2404.12358): under the token-level MDP, DPO's per-token
log-ratio ``r_t = beta (log pi - log pi_ref)(y_t | s_t)`` is an implicit token reward and sequence
DPO is Bradley-Terry on ``sum_t r_t``; so a model trained with *sequence-level* preferences still
does credit assignment -- the lowest r_t of a bad response sits at (or right after) its error.

Small-scale check (notes' check (d)): a toy preference task with a tiny tokjax transformer (d=32,
2 layers, V=16). A prompt ``BOS topic`` is answered by 8 words from a topic-dependent Markov
chain. The reference is SFT on clean responses only. Preference pairs: a clean response (chosen)
and the same response with one word, at a uniformly random known position, replaced by a BAD
token (rejected). Sequence DPO (``tokjax.losses.dpo.make_dpo_loss``, TRL sigmoid, beta = 0.1, reference
log-probs in the batch) then trains the policy from the reference. On 512 held-out rejected responses we
compute ``implicit_token_rewards`` over the 8 response targets and report how often argmin_t lands
on BAD, on BAD+1, or on either; and the mean reward at BAD / BAD+1 / elsewhere.

Baselines, side by side: a random position (P(BAD or BAD+1) = (2*7+1)/(8*8) = 0.234, BAD alone
1/8) and the argmin of the *reference* model's own per-token log-prob. Verdict (``RULE``, declared
before anything runs): per seed, the DPO implicit reward's BAD-or-BAD+1 hit rate at the last DPO
step minus the random position's 0.234 must exceed 0.9 - 0.234 (a hit rate above 0.9) on every
seed for ``reproduced``, on none for ``not-reproduced``. The row reports the clean-SFT reference
(as specified); the notes' toy whose SFT data has BAD in half of the responses gets the same rule,
its verdict in the note. The note also gives the hit rate along DPO training (steps 25..300): it depends strongly on how
long DPO runs, because DPO constrains only the *sum* of token rewards and keeps lowering every
token that follows BAD in a rejected response (tokens before BAD are shared with the chosen
response, so their gradients cancel). The reference baseline is
reported for context: a reference that never saw BAD already finds it by its own log-prob, so the
point here is that sequence-level DPO *learns* token credit, not that it beats that detector.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as `python experiments/p65_r_to_q.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from experiments._common import adam, sample_rows  # noqa: E402
from experiments._harness import Row, Rule, run_cli, train_model  # noqa: E402
from experiments._preference_toy import BAD, PROMPT, RESP, SEQ, VOCAB, make_pairs  # noqa: E402

RAND_EITHER = (2 * (RESP - 1) + 1) / RESP**2  # P(a uniform position is BAD or BAD+1)
RULE = Rule(metric="fraction of held-out rejected responses whose argmin_t r_t is at BAD or BAD+1",
            higher_is_better=True, threshold=0.9 - RAND_EITHER, seeds=(0, 1, 2), quick_seeds=(0, 1),
            reported="clean-SFT reference, the last DPO step (fixed in advance; not the best step of the curve)")


def make_data(n: int, seed: int, follow: float = 0.6, bad_rate: float = 1.0):
    """Returns (clean, rejected, bad_index) of the shared toy (see experiments._preference_toy.make_pairs)."""
    return make_pairs(n, seed, follow=follow, bad_rate=bad_rate)


def credit_stats(scores, bad_index):
    """Returns dict of argmin hit rates (BAD, BAD+1, either) of ``scores`` [n, RESP] (lower = blamed)."""
    import numpy as np

    amin = np.argmin(scores, axis=-1)
    at_bad = amin == bad_index
    at_next = amin == bad_index + 1
    return {"bad": float(np.mean(at_bad)), "next": float(np.mean(at_next)), "either": float(np.mean(at_bad | at_next))}


def run(quick: bool) -> Row:
    import jax
    import jax.numpy as jnp
    import numpy as np

    import tokjax
    from tokjax.losses import token_stats
    from tokjax.losses.dpo import implicit_token_rewards, make_dpo_loss

    seeds = RULE.run_seeds(quick)
    sft_steps, dpo_steps = (300, 100) if quick else (600, 300)
    B, beta, lr, sft_lr = 64, 0.1, 3e-4, 3e-3
    checkpoints = {t for t in (25, 50, 100, 200, 300) if t <= dpo_steps}
    cfg = tokjax.ModelConfig(vocab_size=VOCAB, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, max_len=SEQ)

    clean_sft, _, _ = make_data(20000, 1)
    _, mixed_sft, _ = make_data(20000, 1, bad_rate=0.5)
    sft_sets = {"clean": clean_sft, "mixed": mixed_sft}  # the brief's reference, and the notes' toy (BAD in half)
    chosen, rejected, _ = make_data(20000, 2)
    _, test_rej, test_bad = make_data(512, 3)
    test_j = jnp.asarray(test_rej)
    prompt_lengths = np.full((2 * B,), PROMPT, np.int32)

    @jax.jit
    def token_logp(p, toks):  # [n, RESP] log p of the response tokens
        return token_stats(p, cfg, {"tokens": toks}).logp[:, PROMPT - 1:]

    def sft_loss(p, cfg, batch, rng):  # summed response log-likelihood per sequence, as the reference SFT
        st = token_stats(p, cfg, batch)
        loss = -jnp.mean(jnp.sum(jnp.where(st.mask, st.logp, 0.0), -1))
        return loss, {"loss": loss}

    @jax.jit
    def eval_rewards(p, ref, b):
        pl, rl = token_logp(p, test_j), token_logp(ref, test_j)
        return implicit_token_rewards(pl, rl, jnp.ones(pl.shape, bool), b), rl

    dpo_loss = make_dpo_loss(beta=beta, method="naive")  # reference log-probs come in the batch

    def dpo_batches(ref, seed):
        def batch_fn(step):
            idx = np.random.default_rng((100 + seed, step)).integers(0, len(chosen), B)
            toks = np.concatenate([chosen[idx], rejected[idx]])
            ref_logp = np.zeros((2 * B, SEQ - 1), np.float32)
            ref_logp[:, PROMPT - 1:] = np.asarray(token_logp(ref, jnp.asarray(toks)))
            return {"tokens": toks, "prompt_lengths": prompt_lengths, "ref_logp": ref_logp}
        return batch_fn

    per_seed = {k: [] for k in sft_sets}
    margin_acc = []
    for (variant, sft_data), seed in ((v, sd) for v in sft_sets.items() for sd in seeds):
        sft_batches = sample_rows({"tokens": sft_data, "prompt_lengths": np.full(len(sft_data), PROMPT, np.int32)},
                                  B, seed)
        ref = train_model(cfg, steps=sft_steps, batch_fn=sft_batches, loss_fn=sft_loss, seed=seed,
                          params=tokjax.Model.init(cfg, jax.random.key(seed)).params, **adam(sft_lr))[0].params
        curve = {}

        def checkpoint(step, state, metrics, ref=ref, curve=curve):
            if step in checkpoints:
                rew = eval_rewards(state.params, ref, jnp.float32(beta))[0]
                curve[step] = credit_stats(np.asarray(rew), test_bad)["either"]

        model, hist = train_model(cfg, steps=dpo_steps, batch_fn=dpo_batches(ref, seed), loss_fn=dpo_loss, params=ref,
                                  seed=seed, callback=checkpoint, **adam(lr))
        q = model.params
        margin_acc.append(hist["train"][-1]["reward_accuracy"])
        rew, ref_lp = (np.asarray(x) for x in eval_rewards(q, ref, jnp.float32(beta)))
        rows = np.arange(len(test_bad))
        nxt = test_bad < RESP - 1
        else_mask = np.ones_like(rew, bool)
        else_mask[rows, test_bad] = False
        else_mask[rows[nxt], test_bad[nxt] + 1] = False
        per_seed[variant].append({
            "dpo": credit_stats(rew, test_bad), "ref": credit_stats(ref_lp, test_bad),
            "r_bad": float(np.mean(rew[rows, test_bad])), "r_next": float(np.mean(rew[rows[nxt], test_bad[nxt] + 1])),
            "r_else": float(np.mean(rew[else_mask])), "curve": curve,
        })

    rand_either = RAND_EITHER

    def summary(variant):
        ds = per_seed[variant]
        avg = lambda f: float(np.mean([f(d) for d in ds]))  # noqa: E731
        either = [d["dpo"]["either"] for d in ds]
        text = (f"[{variant}-SFT reference] argmin_t r_t: BAD {avg(lambda d: d['dpo']['bad']):.3f}, BAD+1 "
                f"{avg(lambda d: d['dpo']['next']):.3f}, either {np.mean(either):.3f} (per seed "
                f"{', '.join(f'{x:.3f}' for x in either)}); mean r_t at BAD {avg(lambda d: d['r_bad']):+.3f}, BAD+1 "
                f"{avg(lambda d: d['r_next']):+.3f}, elsewhere {avg(lambda d: d['r_else']):+.4f}; reference log-prob "
                f"argmin: BAD {avg(lambda d: d['ref']['bad']):.3f}, BAD+1 {avg(lambda d: d['ref']['next']):.3f}, "
                f"either {avg(lambda d: d['ref']['either']):.3f}; either-rate vs DPO step: "
                + ", ".join(f"{t}: {avg(lambda d: d['curve'][t]):.3f}" for t in sorted(checkpoints)))
        return either, text

    clean_either, clean_text = summary("clean")
    mixed_either, mixed_text = summary("mixed")
    verdict = RULE.verdict(clean_either, [rand_either] * len(seeds), seeds=seeds)
    v_mixed = RULE.verdict(mixed_either, [rand_either] * len(seeds), seeds=seeds)
    note = (f"{clean_text}. {mixed_text} (verdict under RULE: {v_mixed.status}). Notes' numbers: either ~1.0 (BAD 0.06-0.19, BAD+1 0.81-0.94), r_t -0.3..-2.5 "
            f"there vs ~-0.01 elsewhere. Random position: BAD {1 / RESP:.3f}, either {rand_either:.3f}. A reference "
            f"that saw little or no BAD already flags it by its own log-prob; the point is that sequence-level DPO "
            f"learns token credit. DPO reward accuracy over the last tenth of the steps {np.mean(margin_acc):.3f}. "
            f"Trained by tokjax.train (Adam): SFT {sft_steps} steps (lr {sft_lr}) on clean responses or on responses with BAD in half ('mixed', the notes' toy); DPO "
            f"{dpo_steps} Adam steps (lr {lr}, batch {B} pairs, beta {beta}); 512 held-out rejected responses.")
    return Row(
        pid="P65",
        claim="after sequence DPO, argmin_t of the implicit token reward beta*log(pi/pi_ref) lands on the bad token "
              "or the one right after it",
        setting=(f"toy preference task (8-word topic Markov responses, rejected = one word -> BAD at a known "
                 f"position), tiny tokjax transformer d=32x2, V=16, {len(seeds)} seeds"),
        baseline_name="random position",
        baseline_value=round(rand_either, 3),
        method_value=round(float(np.mean(clean_either)), 3),
        metric=("fraction of held-out rejected responses whose argmin_t r_t is at BAD or BAD+1, clean-SFT reference "
                "(higher is better; mixed-SFT reference in the note)"),
        verdict=verdict,
        note=note,
    )


if __name__ == "__main__":
    raise SystemExit(run_cli(run))
