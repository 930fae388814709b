"""P45 Token Recycling: an adjacency matrix of recycled top-k candidates drafts a static tree; ~2x speedup.

Paper claim (Luo et al., ACL 2025): storing the top-8 candidates of every decoded position in a
[V, 8] matrix, drafting an 80-node static tree from it by BFS and verifying in one call gives
~2x wall-clock speedup (Spec-Bench, 7B-33B, greedy, GPU), above prompt-lookup style drafts.

Real-model check: target = ``tokjax.pretrained("smollm2-135m-instruct")`` (SmolLM2-135M-Instruct,
fp32, 30 layers, d=576, V=49152), greedy decoding, batch 1, on CPU.

* prompts (``tok.apply_chat_template``): "code" -- code editing (the answer copies the prompt's
  code; the ``make demo`` prompt first), "summary" -- summarising CPython's bundled help text
  (``pydoc_data.topics``), both repetitive; "chat" -- open questions (not repetitive). --quick:
  one prompt per task, 48 new tokens; full: two per task, 96 new tokens. Every prompt is padded to
  one width (one compiled loop per method) and stops at the chat template's end-of-turn token;
* methods: plain greedy ``generate``; ``speculative(recycling(), greedy())`` with the paper's
  "2.2.2" 80-node tree (cold table per request); full mode adds the 14-node "small" tree (the
  ``make demo`` choice for CPU) and the core's prompt lookup ``prompt_lookup(3, 8)`` as the
  train-free baseline, plus the hot-start effect (table carried from request to request);
* timing: per prompt the arms run interleaved A/B/A/B (other jobs share the 2 cores), each arm's
  median counts, a task's speed-up is total plain time / total method time; compile is excluded
  (one untimed pass first); ``os.getloadavg()`` is reported with the row. Tokens per target call
  (load-independent) and identical tokens to plain greedy are reported for every arm.

Verdict (``RULE``, declared before anything runs): Token Recycling with the paper's "2.2.2" tree
(fixed in advance) must beat plain decoding's 1.0x wall-clock on code editing at batch 1 by more
than 0.5 (>= 1.5x, the issue's target). ``RULE_TPC``: more than 2 tokens per target call on code
editing (1.0 above plain's 1); ``RULE_LOSSLESS``: every output equal to plain greedy; their
verdicts are in the note.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as `python experiments/p45_token_recycling.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from experiments._harness import Row, Rule, run_cli  # noqa: E402
from experiments._realmodel import ab_bench, fmt, real_prompts, summarize  # noqa: E402

RULE = Rule(metric="wall-clock speedup over plain greedy, batch 1, code editing, SmolLM2-135M", higher_is_better=True,
            threshold=0.5, seeds=(0,),
            reported="speculative(recycling(), greedy) with the paper's 2.2.2 tree, cold table, fixed in advance")
RULE_TPC = Rule(metric="tokens per target call, batch 1, code editing", higher_is_better=True, threshold=1.0,
                seeds=(0,), reported="the 2.2.2 tree vs plain decoding's 1 token per call")
RULE_LOSSLESS = Rule(metric="outputs that differ from plain greedy", higher_is_better=False, threshold=-0.5,
                     seeds=(0,), reported="every speculative arm")

# ---------------------------------------------------------------- the experiment
def run(quick: bool) -> Row:
    import jax

    import tokjax
    from tokjax import logits as L
    from tokjax.decoding import drafts, verify
    from tokjax.decoding.speculative import speculative
    from tokjax.decoding.token_recycling import recycling

    model, tok = tokjax.pretrained("smollm2-135m-instruct", progress=False)
    per_task, NEW, reps = (1, 48, 2) if quick else (2, 96, 2)
    prompts = real_prompts(tok, per_task)
    g = verify.greedy()
    methods = {"plain": None, "tr-2.2.2": speculative(recycling(), g)}
    if not quick:
        methods["tr-small"] = speculative(recycling(template="small"), g)
        methods["pld"] = speculative(drafts.prompt_lookup(max_ngram=3, num_draft=8), g)
    res, loads = ab_bench(model, tok, prompts, methods, NEW, reps)
    summary = summarize(res)
    print(fmt(summary), flush=True)

    hot = ""
    if not quick:  # hot start: the table left by earlier requests drafts the next one (tokens/call only)
        order = [ids for ps in prompts.values() for ids in ps]
        strat, table, cold, warm = methods["tr-2.2.2"], None, [], []
        for ids in order:
            kw = dict(max_new_tokens=NEW, logits=L.greedy(), key=jax.random.key(0), strategy=strat, eos_id=tok.eos_id)
            c = tokjax.generate(model, [ids], **kw)
            w = tokjax.generate(model, [ids], strategy_state=table, **kw)
            table = w.strategy_state
            cold.append(c.stats["tokens_per_call"])
            warm.append(w.stats["tokens_per_call"])
        hot = (f"; hot start (2.2.2, table carried over the {len(order)} prompts in order code, summary, chat): "
               f"tokens/call cold {' '.join(f'{x:.2f}' for x in cold)} -> warm {' '.join(f'{x:.2f}' for x in warm)}")

    tpc, speed, _ = summary["code"]["tr-2.2.2"]
    mismatches = sum(not same for s in summary.values() for m, (_, _, same) in s.items() if m != "plain")
    v_tpc = RULE_TPC.verdict([tpc], [1.0])
    v_loss = RULE_LOSSLESS.verdict([mismatches], [0])
    load = f"load average (1 min) {min(loads):.1f}-{max(loads):.1f} on 2 cores"
    note = (f"TR 2.2.2 code editing: {tpc:.2f} tokens/call ({RULE_TPC.metric} > 2: {v_tpc.status}), {speed:.2f}x "
            f"wall-clock; lossless ({mismatches} outputs differ from plain greedy): {v_loss.status}; {fmt(summary)}{hot}; "
            f"{load}; arms interleaved A/B x{reps} per prompt, medians, compile excluded. On this CPU a target call "
            "over an 81-token tree costs several 1-token calls (weights are re-read once per call but the tree's "
            "matmuls are compute-bound on 2 cores), so tokens per call must exceed that ratio to pay")
    return Row(
        pid="P45",
        claim="Token Recycling (adjacency-matrix tree drafts) gives ~2x decoding speedup, lossless (greedy)",
        setting=(f"SmolLM2-135M-Instruct fp32 target, greedy, batch 1, chat-template prompts: code editing, summary of "
                 f"bundled pydoc text, open chat ({per_task} each, {NEW} new tokens max, stop at end of turn); "
                 f"2.2.2 tree (80 nodes), cold table; CPU 2 cores shared ({load})"),
        baseline_name="plain greedy generate",
        baseline_value=1.0,
        method_value=round(speed, 3),
        metric="wall-clock speedup at batch 1 on code editing (higher is better); tokens/call in note",
        verdict=RULE.verdict([speed], [1.0]),
        note=note,
    )


if __name__ == "__main__":
    raise SystemExit(run_cli(run))
