"""P22 STAND: a shared stochastic n-gram memory of target distributions + Gumbel-top-k tree drafts.

Paper claim (Song et al., EMNLP 2025; no official code): model-free speculative sampling from
n-gram tables that store the target's top-k probabilities (shared by all trajectories of
best-of-N) keeps the output distribution (lossless), accepts more tokens per target call than
deterministic n-gram drafting at temperature > 0, and cuts latency by 48-58 % for a single
trajectory and 60-65 % under test-time scaling (reasoning models on GPU), with +14-28 %
throughput over state-of-the-art speculative decoding.

Real-model check: target = ``tokjax.pretrained("smollm2-135m-instruct")`` (SmolLM2-135M-Instruct,
fp32, 30 layers, d=576, V=49152), batch 1 unless stated, on CPU (2 cores shared with other jobs).

* prompts (``experiments._realmodel.real_prompts``, chat template): code editing (the ``make demo``
  prompt first) and summarising CPython's bundled help text (repetitive), open chat (not);
* greedy: plain ``generate`` vs ``speculative(ngram_memory(..., prime_prompt=True), greedy())``
  (orders 4-1; the 80-node tree in full mode, the 14-node one with --quick), on all tasks; full
  mode adds the 14-node tree (greedy prompt lookup on the same prompts is P45's baseline arm);
* sampling (the paper's setting): the code prompts at temperature 0.8 with ``tree()``
  verification (multi-candidate rejection sampling), STAND vs prompt lookup ``prompt_lookup(3, 8)``
  (deterministic n-gram drafting) vs plain sampling at batch 1, and best-of-4 -- four trajectories
  of the first code prompt as batch rows sharing the memory;
* timing (``experiments._realmodel.ab_bench``): per prompt the arms run interleaved A/B/C, a
  speed-up is total plain time / total method time; compile excluded; ``os.getloadavg()`` reported;
* size: --quick one prompt per task, 48 new tokens, one timed pass; full ``FULL_PROMPTS`` (two
  code-editing prompts, one summary, one chat), ``FULL_NEW`` new tokens, ``FULL_REPS`` timed pass
  per arm and prompt -- cut down from two prompts per task, 96 tokens and two passes because the 2
  cores were shared at a load average of ~25 when it ran.

One row per claim; every Rule is declared below before anything runs (one decoding key per mode,
so one "seed"; the wall-clock numbers are single interleaved measurements):

* ``lossless`` (``RULE_LOSSLESS``): every greedy speculative completion equals plain greedy's
  (count of differing completions must be 0). Sampling-mode exactness (the law of the output under
  ``tree()`` verification) cannot be read off a handful of samples; it is checked by
  ``tests/decoding/test_stand.py::test_sampling_with_tree_verifier_is_lossless_chi_square`` (chi-square
  on 3000 two-token continuations of a tiny model), not in this run;
* ``tokens-per-call`` (``RULE_TPC``): at T=0.8, batch 1, code editing, STAND accepts more tokens per
  target call than prompt lookup by more than 0.25 (the paper's stochastic-vs-deterministic
  n-gram drafting comparison);
* ``speed`` (``RULE``): greedy code editing at batch 1, STAND's wall-clock speed-up over plain
  ``generate`` exceeds 1.5x (threshold 0.5 over 1.0; issue 13's target for this prompt);
* ``speed-sampling`` (``RULE_SAMPLING``): the same at T=0.8 (the paper's single-trajectory claim);
* ``test-time-scaling`` (``RULE_TTS``): best-of-4 at T=0.8, speed-up over plain best-of-4 sampling
  exceeds 1.5x (the paper: -60-65 % latency);
* ``vs-sota-sd``: +14-28 % throughput over trained-draft speculative decoding is ``untested-here``
  (needs a reasoning model with trained EAGLE-style drafts on a GPU).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as `python experiments/p22_stand.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from experiments._harness import Row, Rule, run_cli  # noqa: E402
from experiments._realmodel import ab_bench, fmt, real_prompts, summarize  # noqa: E402

REPORTED = ("speculative(ngram_memory(tree, prime_prompt=True, orders=(4, 3, 2, 1)), verifier) with the 80-node tree "
            "(14-node with --quick), fixed in advance; other trees and PLD are reported only")
RULE_LOSSLESS = Rule(metric="greedy speculative completions that differ from plain greedy", higher_is_better=False,
                     threshold=-0.5, seeds=(0,), reported="every greedy speculative arm, every prompt")
RULE_TPC = Rule(metric="tokens per target call, T=0.8, tree() verifier, batch 1, code editing", higher_is_better=True,
                threshold=0.25, seeds=(0,), reported=REPORTED + "; baseline prompt_lookup(max_ngram=3, num_draft=8)")
# Baseline 1.0 = plain decoding against itself: "diff > 0.5" means "more than 1.5x faster".
RULE = Rule(metric="wall-clock speedup over plain generate, batch 1, greedy code editing, SmolLM2-135M",
            higher_is_better=True, threshold=0.5, seeds=(0,), reported=REPORTED)
RULE_SAMPLING = Rule(metric="wall-clock speedup over plain sampling, T=0.8, batch 1, code editing",
                     higher_is_better=True, threshold=0.5, seeds=(0,), reported=REPORTED + ", tree() verifier")
RULE_TTS = Rule(metric="wall-clock speedup over plain sampling, T=0.8, best-of-4 (4 rows, one prompt), code editing",
                higher_is_better=True, threshold=0.5, seeds=(0,), reported=REPORTED + ", tree() verifier, shared memory")

# Run size. Full mode was planned at two prompts per task, 96 new tokens and two timed passes per
# arm; under a load average of ~25 on the 2 shared cores that did not fit the session, so it runs this:
FULL_PROMPTS = {"code": 2, "summary": 1, "chat": 1}  # prompts per task (code editing carries the claims)
FULL_NEW, FULL_REPS = 64, 1  # new tokens per prompt, timed passes per arm (interleaved)
QUICK_PROMPTS = {"code": 1, "summary": 1, "chat": 1}
ORDERS = (4, 3, 2, 1)


# ---------------------------------------------------------------- the experiment
def sampled(summary: dict) -> str:
    """Returns 'code: method tpc/speed-up' text for sampled arms (their samples differ from plain's by design, so no
    MISMATCH flag as ``fmt`` gives greedy arms)."""
    return "code: " + ", ".join(f"{m} {t:.2f} tok/call {x:.2f}x" for m, (t, x, _) in summary.items())


def run(quick: bool) -> list[Row]:
    import jax

    import tokjax
    from tokjax import logits as L
    from tokjax.decoding import drafts, verify
    from tokjax.decoding.speculative import speculative
    from tokjax.decoding.stand import ngram_memory

    model, tok = tokjax.pretrained("smollm2-135m-instruct", progress=False)
    counts, NEW, reps = (QUICK_PROMPTS, 48, 1) if quick else (FULL_PROMPTS, FULL_NEW, FULL_REPS)
    prompts = {task: ps[:counts[task]] for task, ps in real_prompts(tok, max(counts.values())).items()}
    tree = "small" if quick else "2.2.2"
    nodes = "14" if quick else "80"
    g = verify.greedy()
    methods = {"plain": None, "stand": speculative(ngram_memory(tree, prime_prompt=True, orders=ORDERS), g)}
    if not quick:  # greedy prompt lookup on these prompts is P45's baseline arm; not repeated here
        methods["stand-small"] = speculative(ngram_memory("small", prime_prompt=True, orders=ORDERS), g)
    loads = [os.getloadavg()[0]]
    res, l1 = ab_bench(model, tok, prompts, methods, NEW, reps)
    loads += l1
    summary = summarize(res)
    print("greedy", fmt(summary), flush=True)

    # Sampling at T=0.8 (the paper's setting): tree() verification keeps the target's law; outputs are samples.
    t = L.temperature(0.8)
    tr = verify.tree()
    samp = {"plain": None, "stand": speculative(ngram_memory(tree, prime_prompt=True, orders=ORDERS), tr),
            "pld": speculative(drafts.prompt_lookup(max_ngram=3, num_draft=8), tr)}
    s_res, l3 = ab_bench(model, tok, {"code": prompts["code"]}, samp, NEW, reps, logits=t, key=jax.random.key(1))
    b_res, l4 = ab_bench(model, tok, {"code": prompts["code"][:1]}, samp, NEW, reps, logits=t, key=jax.random.key(2),
                         rows=4)
    loads += l3 + l4
    s1, s4 = summarize(s_res)["code"], summarize(b_res)["code"]
    print("sampling b=1", sampled(s1), "| best-of-4", sampled(s4), flush=True)

    tpc_g, speed, _ = summary["code"]["stand"]
    tpc_s, speed_s, _ = s1["stand"]
    tpc_pld = s1["pld"][0]
    speed_b4 = s4["stand"][1]
    mismatches = sum(not same for s in summary.values() for m, (_, _, same) in s.items() if m != "plain")
    n_compared = sum(len(r["plain"]["outputs"]) for r in res.values()) * (len(methods) - 1)
    load = f"load average (1 min) {min(loads):.1f}-{max(loads):.1f} on 2 cores"
    setting = (f"SmolLM2-135M-Instruct fp32 target, chat-template prompts: code editing {counts['code']}, summary "
               f"of bundled pydoc text {counts['summary']}, open chat {counts['chat']} ({NEW} new tokens max); greedy "
               f"on all, T=0.8 (tree() verifier) on code at batch 1 and best-of-4 (first code prompt); STAND "
               f"{nodes}-node tree, orders 4-1, prompt-primed; timing A/B interleaved, {reps} timed pass per arm and "
               f"prompt, compile excluded; CPU 2 cores shared ({load})")
    greedy_txt = "greedy " + fmt(summary)
    samp_txt = f"T=0.8 b=1 {sampled(s1)}; T=0.8 best-of-4 {sampled(s4)}"
    cost = ("Per call STAND at V=49152 scatters [nodes, V] draft probabilities and runs a vocabulary-wide n-gram "
            "update, and a tree verification call costs several 1-token calls on this CPU (compute-bound on 2 cores)")
    return [
        Row(pid="P22", claim_id="lossless",
            claim="STAND speculative decoding is lossless: greedy output equals plain greedy decoding (sampling keeps "
                  "the target's distribution)",
            setting=setting, baseline_name="plain greedy generate (0 differences)", baseline_value=0,
            method_value=mismatches,
            metric=f"greedy speculative completions that differ from plain greedy, of {n_compared} compared (lower "
                   "is better; 0 counts)",
            verdict=RULE_LOSSLESS.verdict([mismatches], [0]),
            note=(f"arms compared: {', '.join(m for m in methods if m != 'plain')}; {greedy_txt}. Sampling mode: not "
                  "compared here (samples); its law is checked by tests/decoding/test_stand.py::"
                  "test_sampling_with_tree_verifier_is_lossless_chi_square (tiny model, chi-square on 3000 draws)")),
        Row(pid="P22", claim_id="tokens-per-call",
            claim="STAND's stochastic n-gram drafts accept more tokens per target call than deterministic n-gram "
                  "drafting (prompt lookup) at temperature > 0",
            setting=setting, baseline_name="prompt_lookup(3, 8), same tree() verifier", baseline_value=round(tpc_pld, 3),
            method_value=round(tpc_s, 3),
            metric="accepted tokens per target call, T=0.8, batch 1, code editing (higher is better; > PLD + 0.25 "
                   "counts)",
            verdict=RULE_TPC.verdict([tpc_s], [tpc_pld]),
            note=f"greedy code editing: STAND {tpc_g:.2f} tokens/call; {samp_txt}"),
        Row(pid="P22", claim_id="speed",
            claim="STAND cuts single-trajectory decoding latency ~2x (paper: -48-58 %); here greedy code editing at "
                  "batch 1",
            setting=setting, baseline_name="plain greedy generate (speed-up 1)", baseline_value=1.0,
            method_value=round(speed, 3),
            metric="wall-clock speed-up at batch 1 on greedy code editing (higher is better; > 1.5x counts)",
            verdict=RULE.verdict([speed], [1.0]),
            note=f"{greedy_txt}; {load}. {cost}"),
        Row(pid="P22", claim_id="speed-sampling",
            claim="STAND cuts single-trajectory sampling latency ~2x (paper: -48-58 % at T > 0)",
            setting=setting, baseline_name="plain sampling T=0.8 (speed-up 1)", baseline_value=1.0,
            method_value=round(speed_s, 3),
            metric="wall-clock speed-up at batch 1, T=0.8, code editing (higher is better; > 1.5x counts)",
            verdict=RULE_SAMPLING.verdict([speed_s], [1.0]),
            note=f"{samp_txt}; {load}. {cost}"),
        Row(pid="P22", claim_id="test-time-scaling",
            claim="Under test-time scaling (best-of-N sharing one memory) STAND cuts latency further (paper: "
                  "-60-65 %)",
            setting=setting, baseline_name="plain sampling T=0.8, best-of-4 (speed-up 1)", baseline_value=1.0,
            method_value=round(speed_b4, 3),
            metric="wall-clock speed-up, best-of-4 (4 rows of one prompt), T=0.8, code editing (higher is better; "
                   "> 1.5x counts)",
            verdict=RULE_TTS.verdict([speed_b4], [1.0]),
            note=f"T=0.8 best-of-4 {sampled(s4)}; {load}. {cost}"),
        Row(pid="P22", claim_id="vs-sota-sd",
            claim="STAND gives +14-28 % throughput over state-of-the-art (trained-draft) speculative decoding",
            setting="not run: the paper's comparison is on reasoning models (AIME, GPQA, LiveCodeBench) with trained "
                    "EAGLE-style drafts on a GPU",
            baseline_name="trained-draft speculative decoding", baseline_value=None, method_value=None,
            metric="throughput ratio (higher is better)", verdict="untested-here",
            note="needs a reasoning LLM with trained EAGLE-style draft heads and a GPU; none is available here"),
    ]


if __name__ == "__main__":
    raise SystemExit(run_cli(run))
