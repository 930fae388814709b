"""P35 Position auctions in AI-generated content: exact MNL mechanisms, truthfulness, LM insertion scores.

Paper (Balseiro et al. 2025, arXiv 2506.03309; theory, no code): with one CTR estimate per (position, creative)
pair, welfare and revenue under the MNL user model can be optimised exactly and efficiently (optimal truthful
mechanisms); under the cascade model approximately. Module: :mod:`tokjax.analysis.position_auctions`.

Claims, rules declared below before anything runs (deterministic: one run, seed 0):

* ``optimal-mnl`` (``RULE_OPT``): Dinkelbach + assignment (:func:`mnl_allocation`) equals brute force over every
  matching on ``N_INST`` random instances (``--quick``: ``N_QUICK``) of size <= 4 x 4 (theta ~ Exp(1) with 10%
  zeros, bids ~ U[0,1], every 5th instance with signed virtual values, random caps K): reproduced iff the max
  absolute welfare gap <= 1e-9. The note also reports the exact cascade DP vs brute force and the worst
  ratio of the (reconstructed, unverified) cascade approximation to the exact cascade optimum.
* ``truthful`` (``RULE_TRUTH``): under VCG payments (MNL and cascade, exact allocations) no bidder gains by any
  misreport on the grid ``[0, 2.5] x value`` (26 points) on ``N_TRUTH`` random instances (``--quick``: fewer):
  reproduced iff the max utility gain <= 1e-9. Control in the note: the same grid finds a profitable misreport
  under pay-your-bid (first-price) payments, so the check can fail.
* ``lm-placement`` (``RULE_LM``): SmolLM2-135M-Instruct insertion scores (``insertion_scores``, mean creative
  log-prob after each sentence, row-softmax normalised) on a text whose sentences are the first sentences of
  ``N_TOPICS`` pydoc topics (``--quick``: ``N_TOPICS_QUICK``), with one handwritten one-sentence ad per topic:
  the top-1 rate (fraction of creatives whose highest-scoring position is their own topic's sentence) beats
  chance 1/num_sentences (threshold 0). The note reports the MNL welfare of allocating with the per-pair theta vs
  with its separable rank-1 fit ``a_i b_j`` (both evaluated under the per-pair theta, mean over
  ``N_BIDS`` random bid vectors ~ U[0,1]).
* ``cascade``: untested here (the paper's cascade model and its approximation could not be read; the module's
  cascade solver and approximation are reconstructions).
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as `python experiments/p35_position_auctions.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from experiments._harness import Row, Rule, run_cli  # noqa: E402

RULE_OPT = Rule(metric="max |Dinkelbach welfare - brute-force welfare| (lower is better)", higher_is_better=False,
                threshold=-1e-9, seeds=(0,), reported="all instances, fixed in advance")
RULE_TRUTH = Rule(metric="max utility gain of a misreport under VCG (lower is better)", higher_is_better=False,
                  threshold=-1e-9, seeds=(0,), reported="grid [0, 2.5] x value, 26 points, fixed in advance")
RULE_LM = Rule(metric="top-1 rate: creative scored highest at its own topic's sentence (higher is better)",
               higher_is_better=True, threshold=0.0, seeds=(0,),
               reported="row-softmax normalised mean log-prob, fixed in advance")
MODEL = "smollm2-135m-instruct"
N_INST, N_QUICK = 500, 100
N_TRUTH, N_TRUTH_QUICK = 12, 4
N_BIDS = 200
ADS = {
    "assert": "AssertPro checks your debugging assertions and catches broken assumptions early.",
    "for": "LoopLab makes iterating over the elements of any list or sequence twice as fast.",
    "import": "ModuleHub finds and imports the right package for every module you need.",
    "lambda": "LambdaKit lets you write small anonymous functions in a single line.",
    "try": "ExceptGuard handles your exceptions and cleanup code so errors never crash your program.",
    "while": "RepeatRunner keeps your loop executing for as long as its condition stays true.",
    "with": "ContextPro manages your context managers and closes every file for you.",
    "del": "DeleteIt removes unwanted names and list items in one clean step.",
    "if": "BranchBoost picks the right branch of every conditional statement for you.",
    "return": "ReturnRight sends the correct value back from every function call.",
}
N_TOPICS, N_TOPICS_QUICK = 10, 5


def _instance(rng, *, cascade=False, signed=False):
    m, n = (int(x) for x in rng.integers(1, 5, 2))
    theta = rng.uniform(0, 1, (m, n)) if cascade else rng.exponential(1.0, (m, n))
    theta[rng.random((m, n)) < 0.1] = 0.0
    w = rng.uniform(-1, 1, n) if signed else rng.uniform(0, 1, n)
    k = int(rng.integers(0, min(m, n) + 1)) if rng.random() < 0.5 else None
    return theta, w, k


def _first_sentence(topic: str) -> str:
    import pydoc_data.topics

    lines = pydoc_data.topics.topics[topic].splitlines()[2:]  # drop the title and its underline
    prose = " ".join(ln.strip() for ln in lines if ln.strip() and not ln.startswith(" ") and "::=" not in ln)
    s = re.split(r"(?<=[.:])\s", prose)[0].strip()
    return s[:-1] + "." if s.endswith(":") else s


def _grid_gain(run, theta, values, grid, *, first_price=False):
    """Returns the largest utility gain of a single-bidder misreport on ``grid x value`` (VCG or pay-your-bid)."""

    def utility(bids, j):
        out = run(theta, bids)
        pay = out.clicks[j] * bids[j] if first_price else out.payments[j]
        return values[j] * out.clicks[j] - pay

    worst = -float("inf")
    for j in range(len(values)):
        u0 = utility(values, j)
        for b in grid * max(values[j], 1e-3):
            bids = values.copy()
            bids[j] = b
            worst = max(worst, utility(bids, j) - u0)
    return worst


def run(quick: bool) -> list[Row]:
    import numpy as np

    import tokjax
    from tokjax.analysis.position_auctions import (
        brute_force_allocation, cascade_allocation, cascade_allocation_approx, insertion_scores, mnl_allocation,
        mnl_click_probs, separable_fit, vcg_auction,
    )

    rng = np.random.default_rng(0)
    n_inst = N_QUICK if quick else N_INST
    gap, cgap, ratio = 0.0, 0.0, 1.0
    for r in range(n_inst):
        theta, w, k = _instance(rng, signed=r % 5 == 0)
        gap = max(gap, abs(mnl_allocation(theta, w, k)[1] - brute_force_allocation(theta, w, k)[1]))
        theta, w, k = _instance(rng, cascade=True)
        order = rng.permutation(theta.shape[0])
        v = cascade_allocation(theta, w, k, order=order)[1]
        cgap = max(cgap, abs(v - brute_force_allocation(theta, w, k, model="cascade", order=order)[1]))
        if v > 0:
            ratio = min(ratio, cascade_allocation_approx(theta, w, k, order=order)[1] / v)

    grid = np.linspace(0.0, 2.5, 26)
    gain, fp_gain = -np.inf, -np.inf
    n_truth = N_TRUTH_QUICK if quick else N_TRUTH
    for r in range(n_truth):
        model = "mnl" if r % 2 == 0 else "cascade"
        theta, v, k = _instance(rng, cascade=model == "cascade")
        run_ = lambda t, b: vcg_auction(t, b, k, model=model)  # noqa: E731
        gain = max(gain, _grid_gain(run_, theta, v, grid))
        fp_gain = max(fp_gain, _grid_gain(run_, theta, v, grid, first_price=True))

    lm, tok = tokjax.pretrained(MODEL)
    topics = list(ADS)[: N_TOPICS_QUICK if quick else N_TOPICS]
    sentences = [tok.encode((" " if i else "") + _first_sentence(t)) for i, t in enumerate(topics)]
    creatives = [tok.encode(" " + ADS[t]) for t in topics]
    theta = insertion_scores(lm, sentences, creatives)
    m = len(topics)
    top1 = float(np.mean(np.argmax(theta, axis=0) == np.arange(m)))
    diag_rank = float(np.mean([(theta[:, j] > theta[j, j]).sum() + 1 for j in range(m)]))
    sep = separable_fit(theta)
    w_pair, w_sep = [], []
    brng = np.random.default_rng(1)
    for _ in range(N_BIDS):
        b = brng.uniform(0, 1, m)
        w_pair.append(mnl_allocation(theta, b)[1])
        w_sep.append(float(b @ mnl_click_probs(theta, mnl_allocation(sep, b)[0])))
    wp, ws = float(np.mean(w_pair)), float(np.mean(w_sep))

    q = " (--quick)" if quick else ""
    return [
        Row(pid="P35", claim_id="optimal-mnl",
            claim="Welfare/revenue-optimal MNL allocation is computed exactly and efficiently (Dinkelbach + assignment)",
            setting=f"{n_inst} random instances <= 4x4 (random caps K, 1 in 5 with signed virtual values){q}",
            baseline_name="brute force over all matchings", baseline_value=0.0, method_value=float(gap),
            metric=RULE_OPT.metric, verdict=RULE_OPT.verdict([gap], [0.0]),
            note=(f"cascade exact DP vs brute force max gap {cgap:.2e} on {n_inst} instances (random rendering "
                  f"order); reconstructed cascade approximation / exact optimum: worst {ratio:.4f}")),
        Row(pid="P35", claim_id="truthful",
            claim="The optimal mechanisms with VCG payments are truthful (no profitable misreport)",
            setting=f"{n_truth} random instances <= 4x4, MNL and cascade alternately, 26-point misreport grid{q}",
            baseline_name="truthful bid (gain 0)", baseline_value=0.0, method_value=float(gain),
            metric=RULE_TRUTH.metric, verdict=RULE_TRUTH.verdict([gain], [0.0]),
            note=f"control: pay-your-bid payments on the same allocations give a max misreport gain of {fp_gain:.4f}"),
        Row(pid="P35", claim_id="lm-placement",
            claim="LM insertion scores place each topical creative best after its own topic's sentence",
            setting=(f"SmolLM2-135M-Instruct, {m} pydoc-topic sentences ({', '.join(topics)}) x {m} one-sentence "
                     f"ads, mean creative log-prob after each sentence, row-softmax{q}"),
            baseline_name=f"chance 1/{m}", baseline_value=round(1.0 / m, 4), method_value=round(top1, 4),
            metric=RULE_LM.metric, verdict=RULE_LM.verdict([top1], [1.0 / m]),
            note=(f"mean rank of the own-topic sentence {diag_rank:.2f} of {m}; MNL welfare (mean over {N_BIDS} "
                  f"U[0,1] bid vectors): per-pair theta {wp:.4f} vs separable rank-1 fit {ws:.4f} "
                  f"(ratio {ws / wp:.4f})")),
        Row(pid="P35", claim_id="cascade",
            claim="Under the order-sensitive cascade model, the paper's mechanism is approximately optimal",
            setting="not run: the paper's cascade model and approximation algorithm could not be read",
            baseline_name="exact cascade optimum", baseline_value=None, method_value=None,
            metric="approximation ratio", verdict="untested-here",
            note=("only the abstract and a secondary summary were available; tokjax's cascade model (click with "
                  "probability theta, stop after a click, fixed rendering order) and its approximation are "
                  f"reconstructions (worst ratio to the exact optimum {ratio:.4f} in the optimal-mnl row's instances), "
                  "not the paper's; the paper text would decide it")),
    ]


if __name__ == "__main__":
    raise SystemExit(run_cli(run))
