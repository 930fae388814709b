"""P65 From r to Q*: after sequence DPO, the implicit token reward beta*log(pi/pi_ref) points at the bad token.

Paper claim (Rafailov et al., arXiv 2404.12358): under the token-level MDP, DPO's per-token
log-ratio ``r_t = beta (log pi - log pi_ref)(y_t | s_t)`` is an implicit token reward and sequence
DPO is Bradley-Terry on ``sum_t r_t``; so a model trained with *sequence-level* preferences still
does credit assignment -- the lowest r_t of a bad response sits at (or right after) its error.

Small-scale check (notes' check (d)): a toy preference task with a tiny tokjax transformer (d=32,
2 layers, V=16). A prompt ``BOS topic`` is answered by 8 words from a topic-dependent Markov
chain. The reference is SFT on clean responses only. Preference pairs: a clean response (chosen)
and the same response with one word, at a uniformly random known position, replaced by a BAD
token (rejected). Sequence DPO (``tokjax.losses.dpo.make_dpo_loss``, TRL sigmoid, beta = 0.1 as a
runtime hparam) then trains the policy from the reference. On 512 held-out rejected responses we
compute ``implicit_token_rewards`` over the 8 response targets and report how often argmin_t lands
on BAD, on BAD+1, or on either; and the mean reward at BAD / BAD+1 / elsewhere.

Baselines, side by side: a random position (P(BAD or BAD+1) = (2*7+1)/(8*8) = 0.234, BAD alone
1/8) and the argmin of the *reference* model's own per-token log-prob. Verdict ``reproduced`` when
the DPO implicit reward's BAD-or-BAD+1 hit rate at the last DPO step is >= 0.9 in every seed for
both references (clean-SFT, as specified, and the notes' toy whose SFT data has BAD in half of the
responses), ``not-reproduced`` when the mean rate is below 0.5 for both, else ``inconclusive``.
The note also gives the hit rate along DPO training (steps 25..300): it depends strongly on how
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

from experiments._harness import Row, run_cli

from experiments._preference_toy import BAD, PROMPT, RESP, SEQ, VOCAB, make_pairs  # noqa: E402


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
    import optax

    import tokjax
    from tokjax.losses.dpo import implicit_token_rewards, make_dpo_loss

    seeds = (0, 1) if quick else (0, 1, 2)
    sft_steps, dpo_steps = (300, 100) if quick else (600, 300)
    B, beta, lr, sft_lr = 64, 0.1, 3e-4, 3e-3
    checkpoints = {t for t in (25, 50, 100, 200, 300) if t <= dpo_steps}
    cfg = tokjax.ModelConfig(vocab_size=VOCAB, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, max_len=SEQ)
    sft_opt, opt = optax.adam(sft_lr), optax.adam(lr)

    clean_sft, _, _ = make_data(20000, 1)
    _, mixed_sft, _ = make_data(20000, 1, bad_rate=0.5)
    sft_sets = {"clean": clean_sft, "mixed": mixed_sft}  # the brief's reference, and the notes' toy (BAD in half)
    chosen, rejected, _ = make_data(20000, 2)
    _, test_rej, test_bad = make_data(512, 3)
    test_j = jnp.asarray(test_rej)
    prompt_lengths = jnp.full((2 * B,), PROMPT, jnp.int32)

    def token_logp(p, toks):  # [n, RESP] log p of the response tokens
        lp = jax.nn.log_softmax(tokjax.forward(p, cfg, toks[:, :-1]).logits, -1)
        return jnp.take_along_axis(lp, toks[:, 1:, None], -1)[:, PROMPT - 1:, 0]

    @jax.jit
    def sft_step(p, s, toks):
        g = jax.grad(lambda p: -jnp.mean(jnp.sum(token_logp(p, toks), -1)))(p)
        u, s = sft_opt.update(g, s, p)
        return optax.apply_updates(p, u), s

    @jax.jit
    def eval_rewards(p, ref, b):
        pl, rl = token_logp(p, test_j), token_logp(ref, test_j)
        return implicit_token_rewards(pl, rl, jnp.ones(pl.shape, bool), b), rl

    per_seed = {k: [] for k in sft_sets}
    margin_acc = []
    for (variant, sft_data), seed in ((v, sd) for v in sft_sets.items() for sd in seeds):
        rng = np.random.default_rng(seed)
        p = jax.jit(lambda k: tokjax.Model.init(cfg, k).params)(jax.random.key(seed))
        s = sft_opt.init(p)
        for _ in range(sft_steps):
            p, s = sft_step(p, s, jnp.asarray(sft_data[rng.integers(0, len(sft_data), B)]))
        ref = p
        loss_fn = make_dpo_loss(beta=beta, ref=(ref, cfg), method="naive")

        @jax.jit
        def dpo_step(q, st, toks, b):
            batch = {"tokens": toks, "prompt_lengths": prompt_lengths, "hparams": {"beta": b}}
            (val, m), g = jax.value_and_grad(lambda q: loss_fn(q, cfg, batch), has_aux=True)(q)
            u, st = opt.update(g, st, q)
            return optax.apply_updates(q, u), st, m

        q, st = ref, opt.init(ref)
        g = np.random.default_rng(100 + seed)
        curve = {}
        for t in range(1, dpo_steps + 1):
            idx = g.integers(0, len(chosen), B)
            q, st, m = dpo_step(q, st, jnp.asarray(np.concatenate([chosen[idx], rejected[idx]])), jnp.float32(beta))
            if t in checkpoints:
                curve[t] = credit_stats(np.asarray(eval_rewards(q, ref, jnp.float32(beta))[0]), test_bad)["either"]
        margin_acc.append(float(m["reward_accuracy"]))
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

    rand_either = (2 * (RESP - 1) + 1) / RESP**2

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
    ok = lambda e: min(e) >= 0.9 and min(e) > rand_either  # noqa: E731
    verdict = ("reproduced" if ok(clean_either) and ok(mixed_either) else
               "not-reproduced" if max(np.mean(clean_either), np.mean(mixed_either)) < 0.5 else "inconclusive")
    note = (f"{clean_text}. {mixed_text}. Notes' numbers: either ~1.0 (BAD 0.06-0.19, BAD+1 0.81-0.94), r_t -0.3..-2.5 "
            f"there vs ~-0.01 elsewhere. Random position: BAD {1 / RESP:.3f}, either {rand_either:.3f}. A reference "
            f"that saw little or no BAD already flags it by its own log-prob; the point is that sequence-level DPO "
            f"learns token credit. Final-batch DPO reward accuracy {np.mean(margin_acc):.3f}. SFT {sft_steps} steps "
            f"(lr {sft_lr}) on clean responses or on responses with BAD in half ('mixed', the notes' toy); DPO "
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


def main(argv=None) -> int:
    return run_cli(run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
