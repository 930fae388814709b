"""P43 magic words on SmolLM2-135M-Instruct: how often a prompt of at most k prepended tokens makes a chosen
token the model's greedy next token.

Paper claims (Bhargava, Witkowski, Shah, Thomson, "What's the Magic Word? A Control Theory of LLM Prompting",
2023; Falcon-7B/40B and Llama-7B, 5000 WikiText states x0): the true next WikiText token is reachable (some
u, |u| <= 10, gives argmax P(. | u + x0) = y*) for > 97 % of states, and the top-75 most likely next tokens are
reachable >= 85 % of the time with k <= 10 (prompts found by greedy back-generation for |u| <= 3 and GCG beyond).

Setting: ``tokjax.pretrained("smollm2-135m-instruct")`` as a plain LM (no chat template, no BOS). States x0:
16-token windows of English prose from the bundled pydocs corpus (the paragraphs of the Python documentation
topics with hard line breaks joined; no code, no lists; one window per paragraph, paragraphs and offsets drawn
with seed 0), as the paper's WikiText windows. Targets per state: the true next token of the text, and one token
of rank r ~ U{2..75} under P(. | x0) (rank 1 is excluded: it is reached by u = [] by definition). Search
(:func:`tokjax.analysis.magic_words.reachable`, every witness verified by a forward pass): greedy
back-generation for |u| = 1..K over the ``TOP_C`` gradient-preselected candidates per step (the paper scans all V
candidates), then GCG at |u| = K (``gcg_steps`` steps of ``top_c`` single-token swaps, the gradient picking
``top_c`` tokens per position) -- the official backoff order, at a CPU budget. Every candidate list starts with
y* and its ``NEIGHBOURS - 1`` nearest tokens by embedding cosine (``extra_candidates``: a copy prior; gradient
picks alone did no better than random prompts in a first --quick run, 0.38 vs 0.38). K = 4, top-c 64, 6 GCG steps
in full mode (k <= 10 is out of reach on one CPU core: ~500 forward rows per hard pair already); K = 3, top-c
32, 2 GCG steps, 6 states in --quick.

Baselines side by side (in each row's note, and in the figure): u = [] (k = 0, the base rate), and
``RANDOM`` random prompts of length K per state (uniform token ids), scored through the same forward.

Rules, declared here before anything runs (deterministic search, one run; reported variant fixed in advance):

* ``true-next`` (``RULE_TRUE``): the fraction of states whose true next token the search reaches with |u| <= K
  exceeds 0.97. Our searches give a lower bound on R_K(x0) (heuristic, K <= 4 < 10), so a fraction above the
  paper's level is ``reproduced``; a fraction below it cannot refute a k <= 10 claim and is reported
  ``inconclusive`` (an upper bound -- exhaustive search, V^k = 49152^k prompts -- is out of reach even at k = 2).
* ``top75`` (``RULE_TOP75``): the same, for the rank-2..75 targets, against 0.85.

Quick run (6 states, K = 3, CPU time ~100 s, 5 min wall at load 6 on 2 cores): true-next 0.67 reachable (k = 0 base
rate 0.17, u = [] or 32 random 3-token prompts 0.33), top75 0.17 (random 0.00): both inconclusive.

What would decide a shortfall: GCG at |u| = 5..10 with the paper's budget (batch 768, 34 iterations, ~26k forward
rows per pair and length) -- minutes per pair on an accelerator, days on this CPU.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as `python experiments/p43_magic_words.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from experiments._harness import Row, Rule, figure_path, run_cli  # noqa: E402

RULE_TRUE = Rule(metric="fraction of states whose true next token is reachable with |u| <= K", higher_is_better=True,
                 threshold=0.0, seeds=(0,),
                 reported="greedy back-generation (top-c gradient candidates) + GCG at |u| = K, fixed in advance; "
                          "below 0.97 -> inconclusive (a k <= 4 lower bound cannot refute k <= 10)")
RULE_TOP75 = Rule(metric="fraction of rank-2..75 targets reachable with |u| <= K", higher_is_better=True,
                  threshold=0.0, seeds=(0,),
                  reported="same search, one uniformly drawn rank in 2..75 per state; below 0.85 -> inconclusive")

MODEL = "smollm2-135m-instruct"
T0 = 16  # state length
FULL = {"states": 30, "K": 4, "top_c": 64, "gcg_steps": 6, "random": 64}
QUICK = {"states": 6, "K": 3, "top_c": 32, "gcg_steps": 2, "random": 32}
NEIGHBOURS = 8  # y* and its nearest embedding neighbours head every candidate list (a copy prior)
PAPER = {"true-next": 0.97, "top75": 0.85}


def prose_states(tok, n: int, seed: int = 0):
    """Returns [(x0 [T0] int list, true next token id, paragraph index)] from ``n`` distinct pydocs paragraphs."""
    import numpy as np

    from tokjax.data import load_corpus

    paras = []
    for doc in load_corpus("pydocs").documents:
        for p in doc.split("\n\n"):
            if p[:1].isspace() or p.lstrip()[:1] in "*-+|>" or ">>>" in p or "::" in p:
                continue  # code blocks, lists, tables, doctests
            text = " ".join(p.split())
            if len(text.split()) >= 30 and sum(c.isalpha() or c == " " for c in text) / len(text) > 0.85:
                paras.append(text)
    rng = np.random.default_rng(seed)
    out = []
    for i in rng.permutation(len(paras)):
        ids = tok.encode(paras[i])
        if len(ids) < T0 + 1:
            continue
        o = int(rng.integers(0, len(ids) - T0))
        out.append((ids[o:o + T0], ids[o + T0], int(i)))
        if len(out) == n:
            return out
    raise ValueError(f"only {len(out)} prose paragraphs of >= {T0 + 1} tokens in pydocs, need {n}")


def run(quick: bool) -> list[Row]:
    import dataclasses
    import time

    import jax
    import numpy as np

    import tokjax
    from tokjax.analysis.magic_words import controlled_logits, k_epsilon, reachable

    c = QUICK if quick else FULL
    K, top_c = c["K"], c["top_c"]
    model, tok = tokjax.pretrained(MODEL)
    V = model.cfg.vocab_size
    emb = np.array(model.params["embed"], np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True) + 1e-9
    states = prose_states(tok, FULL["states"])[:c["states"]]  # --quick: the first states of the full run
    rng = np.random.default_rng(1)
    ranks = rng.integers(2, 76, FULL["states"])[:c["states"]]
    method = "gcg" if c["gcg_steps"] else "greedy"
    res = {"true-next": [], "top75": []}
    rand_hit = {"true-next": [], "top75": []}
    true_rank, evals = [], []
    t0 = time.perf_counter()
    for s, (x0, y_true, _) in enumerate(states):
        lg0 = controlled_logits(model, x0, np.zeros((1, 0), np.int32))[0]
        order = np.argsort(-lg0, kind="stable")
        true_rank.append(int(np.nonzero(order == y_true)[0][0]) + 1)
        targets = {"true-next": int(y_true), "top75": int(order[ranks[s] - 1])}
        rand = np.random.default_rng(100 + s).integers(0, V, (c["random"], K))
        rand_arg = controlled_logits(model, x0, rand, batch_size=c["random"]).argmax(-1)
        for claim, y in targets.items():
            near = np.argsort(-(emb @ emb[y]), kind="stable")[:NEIGHBOURS]  # y itself first
            r = reachable(model, x0, y, K, method=method, top_c=top_c, steps=max(c["gcg_steps"], 1), batch=top_c,
                          batch_size=top_c, gcg_lengths=[K], key=jax.random.key(s), extra_candidates=near)
            res[claim].append(r)
            evals.append(r["evals"])
            rand_hit[claim].append(bool(order[0] == y or (rand_arg == y).any()))
        print(f"  state {s + 1}/{len(states)}: true-next rank {true_rank[-1]} -> length "
              f"{res['true-next'][-1]['length']}; rank {ranks[s]} -> length {res['top75'][-1]['length']} "
              f"({time.perf_counter() - t0:.0f} s)", flush=True)

    ks = list(range(K + 1))
    curves = {cl: 1 - k_epsilon([r["length"] for r in rs], ks) for cl, rs in res.items()}
    base0 = float(np.mean([rk == 1 for rk in true_rank]))
    rand_frac = {cl: float(np.mean(h)) for cl, h in rand_hit.items()}
    grads = [r["grads"] for rs in res.values() for r in rs]
    _figure(curves, base0, rand_frac, K, c["random"])

    setting = (f"SmolLM2-135M-Instruct, {len(states)} 16-token pydocs prose states x0 (seed 0), targets: true next "
               f"token and one rank in 2..75 per state; greedy search |u| <= {K}, top-c {top_c} (y* + "
               f"{NEIGHBOURS - 1} embedding neighbours first)"
               + (f", GCG at |u| = {K}: {c['gcg_steps']} steps x {top_c} swaps" if c["gcg_steps"] else "")
               + f"; mean {np.mean(evals):.0f} forward rows + {np.mean(grads):.1f} gradients per pair"
               + (f"; --quick: {c['states']} states, K = {K}" if quick else ""))
    rows = []
    for claim, rule, text in (
            ("true-next", RULE_TRUE, "The true next (WikiText) token is reachable with a prompt of k <= 10 tokens "
                                     "for > 97% of states"),
            ("top75", RULE_TOP75, "The top-75 most likely next tokens are reachable >= 85% of the time with "
                                  "k <= 10")):
        frac = float(curves[claim][-1])
        v = rule.verdict([frac], [PAPER[claim]])
        if v.status == "not-reproduced":  # a lower bound at k <= K cannot refute a k <= 10 claim
            v = dataclasses.replace(v, status="inconclusive")
        curve = ", ".join(f"k={k}: {f:.2f}" for k, f in zip(ks, curves[claim]))
        lengths = [r["length"] for r in res[claim]]
        note = (f"reachable fraction by k (search): {curve}; baselines: u = [] (k=0) "
                f"{base0 if claim == 'true-next' else 0.0:.2f}, u = [] or one of {c['random']} random {K}-token "
                f"prompts {rand_frac[claim]:.2f}; paper's level is for k <= 10 on 7B+ models, ours a lower bound at "
                f"k <= {K}")
        if claim == "true-next":
            note += f"; true next token's rank under P(.|x0): median {int(np.median(true_rank))}, max {max(true_rank)}"
        else:
            hit = [int(rk) for rk, L in zip(ranks, lengths) if L is not None]
            miss = [int(rk) for rk, L in zip(ranks, lengths) if L is None]
            note += (f"; mean drawn rank of reached targets {np.mean(hit) if hit else float('nan'):.1f}, of missed "
                     f"{np.mean(miss) if miss else float('nan'):.1f}")
        rows.append(Row(pid="P43", claim_id=claim, claim=text, setting=setting,
                        baseline_name=f"paper's level at k <= 10 ({PAPER[claim]:.2f})", baseline_value=PAPER[claim],
                        method_value=round(frac, 4),
                        metric=f"fraction reachable with |u| <= {K} (lower bound; higher is better)", verdict=v,
                        figure=str(figure_path("P43", "k_epsilon.png")), note=note))
    return rows


def _figure(curves, base0, rand_frac, K, n_random):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for (claim, cur), color in zip(curves.items(), ("C0", "C1")):
        ax.plot(range(K + 1), cur, "o-", color=color, label=f"{claim}: greedy/GCG search")
        ax.axhline(rand_frac[claim], color=color, ls=":", label=f"{claim}: u=[] or {n_random} random {K}-token prompts")
    ax.plot([0], [base0], "s", color="C0", ms=8, mfc="none", label="true-next at k=0 (base rate)")
    ax.axhline(0.97, color="gray", lw=0.8, ls="--")
    ax.axhline(0.85, color="gray", lw=0.8, ls="--")
    ax.set_xticks(range(K + 1))
    ax.set_xlabel("max prompt length k")
    ax.set_ylabel("fraction reachable (1 - eps)")
    ax.set_ylim(0, 1.02)
    ax.set_title("P43 k-eps controllability, SmolLM2-135M")
    ax.legend(fontsize=6, loc="lower right")
    fig.tight_layout()
    fig.savefig(figure_path("P43", "k_epsilon.png"), dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(run_cli(run))
