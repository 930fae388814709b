"""P45 Token Recycling: an adjacency matrix of recycled top-k candidates drafts a static tree; ~2x speedup.

Paper claim (Luo et al., ACL 2025; official code Luowaterbi/TokenRecycling): storing the top-8
candidates of every verified tree node in a [V, 8] matrix ``A`` that persists across requests
("hot start"), drafting the 80-node "2.2.2" tree from it breadth first and verifying it in one
greedy call is lossless and gives ~2x wall-clock speedup on Spec-Bench (7B-33B, fp16, GPU, batch
1), ~30 % above prior train-free methods such as prompt lookup.

Real-model check: target = ``tokjax.pretrained("smollm2-135m-instruct")`` (SmolLM2-135M-Instruct,
fp32, 30 layers, d=576, V=49152), greedy decoding, batch 1, on CPU (2 cores shared with other jobs).

* prompts (``experiments._realmodel.real_prompts``, chat template): "code" -- code editing (the
  answer copies the prompt's code; the ``make demo`` prompt first), "summary" -- summarising
  CPython's bundled help text (``pydoc_data.topics``), both repetitive; "chat" -- open questions
  (not repetitive). Every prompt is padded to one width and stops at the end-of-turn token;
* hot start as in the official evaluation (one ``adj_matrix`` for the whole benchmark run): the
  table is first warmed by decoding ``experiments._realmodel.warmup_prompts`` (a code edit, two
  summaries, a chat -- none of them an evaluated prompt) with the 2.2.2 tree, table carried from
  request to request; every timed Token Recycling pass then starts from that same table;
* arms: plain greedy ``generate``; ``speculative(recycling(), greedy())`` with the 2.2.2 tree and
  the hot table (the reported variant); full mode adds the 14-node "small" tree (``make demo``'s
  CPU choice) from the same hot table; the core's prompt lookup ``prompt_lookup(3, 8)`` is the
  train-free baseline. Full mode also decodes the code prompts with the 2.2.2 tree from a cold
  (all-zero) table, untimed, for the hot-start effect on tokens per call;
* timing (``experiments._realmodel.ab_bench``): per prompt the arms run interleaved A/B/C/D, a
  task's speed-up is total plain time / total method time; compile is excluded (one untimed pass
  first); ``os.getloadavg()`` is reported. Tokens per target call and equality with plain greedy
  are load-independent and reported for every arm;
* size: --quick one prompt per task, 48 new tokens, arms plain / TR hot / PLD; full ``FULL_PROMPTS``
  (two code-editing prompts, one summary, one chat), ``FULL_NEW`` new tokens, ``FULL_REPS`` timed
  pass per arm and prompt -- cut down from two prompts per task, 96 tokens and two passes because
  the 2 cores were shared at a load average of ~25 when it ran.

One row per claim; every Rule is declared below before anything runs (greedy decoding is
deterministic, so one "seed"; the wall-clock numbers are single interleaved measurements):

* ``lossless`` (``RULE_LOSSLESS``): every speculative arm's completion equals plain greedy's on
  every prompt (the count of differing completions must be 0);
* ``tokens-per-call`` (``RULE_TPC``): the reported variant accepts more than 2 tokens per target
  call on code editing (threshold 1.0 over plain decoding's 1) -- the acceptance that a ~2x
  speedup needs when a tree call costs about one plain call, as on the paper's GPUs;
* ``speed`` (``RULE``): its wall-clock speed-up over plain decoding on code editing at batch 1
  exceeds 1.5x (threshold 0.5 over 1.0; issue 13's target for this prompt);
* ``vs-train-free`` (``RULE_VS_PLD``): over all prompts (total plain time / total method
  time) it is faster than prompt lookup (threshold 0: the paper reports ~30 % above prior
  train-free methods; here only the direction is required).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as `python experiments/p45_token_recycling.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from experiments._harness import Row, Rule, run_cli  # noqa: E402
from experiments._realmodel import ab_bench, fmt, real_prompts, summarize, warmup_prompts  # noqa: E402

REPORTED = ("speculative(recycling(k=8, template='2.2.2'), greedy()) from a hot table warmed on 4 other requests "
            "(the official evaluation keeps one table for the whole run), fixed in advance")
RULE_LOSSLESS = Rule(metric="speculative completions that differ from plain greedy", higher_is_better=False,
                     threshold=-0.5, seeds=(0,), reported="every speculative arm, every prompt")
RULE_TPC = Rule(metric="tokens per target call, batch 1, code editing", higher_is_better=True, threshold=1.0,
                seeds=(0,), reported=REPORTED)
RULE = Rule(metric="wall-clock speedup over plain greedy, batch 1, code editing, SmolLM2-135M", higher_is_better=True,
            threshold=0.5, seeds=(0,), reported=REPORTED)
RULE_VS_PLD = Rule(metric="wall-clock speedup over plain greedy, batch 1, all prompts (code, summary, chat)", higher_is_better=True,
                   threshold=0.0, seeds=(0,), reported=REPORTED + "; baseline prompt_lookup(max_ngram=3, num_draft=8)")

# Run size. Full mode was planned at two prompts per task, 96 new tokens and two passes per arm;
# under a load average of ~25 on the 2 shared cores that did not fit the session, so it runs this:
FULL_PROMPTS = {"code": 2, "summary": 1, "chat": 1}  # prompts per task (code editing carries the claims)
FULL_NEW, FULL_REPS = 64, 1  # new tokens per prompt, timed passes per arm (interleaved)
QUICK_PROMPTS = {"code": 1, "summary": 1, "chat": 1}

CLAIM_SPEED = ("Token Recycling (hot adjacency matrix, 80-node 2.2.2 tree, greedy verification) decodes ~2x faster "
               "than plain autoregressive decoding at batch 1")


# ---------------------------------------------------------------- the experiment
def warm_table(model, tok, strategy, new: int):
    """Returns (the Token Recycling table after decoding the warm-up requests in order, their tokens/call)."""
    import jax

    import tokjax
    from tokjax import logits as L

    table, tpc = None, []
    for ids in warmup_prompts(tok):
        out = tokjax.generate(model, [ids], max_new_tokens=new, logits=L.greedy(), key=jax.random.key(0),
                              strategy=strategy, eos_id=tok.eos_id, strategy_state=table)
        table = out.strategy_state
        tpc.append(float(out.stats["tokens_per_call"]))
    return table, tpc


def total_speed(res: dict, method: str, tasks) -> float:
    """Returns total plain seconds / total method seconds over ``tasks``."""
    return sum(res[t]["plain"]["seconds"] for t in tasks) / sum(res[t][method]["seconds"] for t in tasks)


def run(quick: bool) -> list[Row]:
    import jax

    import tokjax
    from tokjax import logits as L
    from tokjax.decoding import drafts, verify
    from tokjax.decoding.speculative import speculative
    from tokjax.decoding.token_recycling import recycling

    model, tok = tokjax.pretrained("smollm2-135m-instruct", progress=False)
    counts, NEW, reps = (QUICK_PROMPTS, 48, 1) if quick else (FULL_PROMPTS, FULL_NEW, FULL_REPS)
    prompts = {task: ps[:counts[task]] for task, ps in real_prompts(tok, max(counts.values())).items()}
    g = verify.greedy()
    tr = speculative(recycling(), g)
    methods = {"plain": None, "tr": tr}
    if not quick:
        methods["tr-small"] = speculative(recycling(template="small"), g)
    methods["pld"] = speculative(drafts.prompt_lookup(max_ngram=3, num_draft=8), g)
    load0 = os.getloadavg()[0]
    table, warm_tpc = warm_table(model, tok, tr, NEW)
    # The table is tree-independent ([V, 8]): both trees start from the one the 2.2.2 warm-up left.
    states = {m: table for m in methods if m.startswith("tr")}
    res, loads = ab_bench(model, tok, prompts, methods, NEW, reps, states=states)
    loads = [load0] + loads
    summary = summarize(res)
    print(fmt(summary), flush=True)
    cold_tpc = []
    if not quick:  # the hot-start effect: the same tree from an all-zero table (tokens per call only, untimed)
        for ids in prompts["code"]:
            out = tokjax.generate(model, [ids], max_new_tokens=NEW, logits=L.greedy(), key=jax.random.key(0),
                                  strategy=tr, eos_id=tok.eos_id)
            cold_tpc.append(float(out.stats["tokens_per_call"]))

    tpc, speed, _ = summary["code"]["tr"]
    mismatches = sum(not same for s in summary.values() for m, (_, _, same) in s.items() if m != "plain")
    n_compared = sum(len(r["plain"]["outputs"]) for r in res.values()) * (len(methods) - 1)
    all_tasks = list(res)
    n_prompts = sum(len(ps) for ps in prompts.values())
    tr_all, pld_all = total_speed(res, "tr", all_tasks), total_speed(res, "pld", all_tasks)
    load = f"load average (1 min) {min(loads):.1f}-{max(loads):.1f} on 2 cores"
    setting = (f"SmolLM2-135M-Instruct fp32 target, greedy, batch 1, chat-template prompts: code editing "
               f"{counts['code']}, summary of bundled pydoc text {counts['summary']}, open chat {counts['chat']} "
               f"({NEW} new tokens max, stop at end of turn); arms plain, TR 2.2.2 hot"
               f"{'' if quick else ', TR small hot'}, PLD; timing A/B interleaved, {reps} timed pass per arm and prompt, "
               f"compile excluded; CPU 2 cores shared ({load})")
    arms = fmt(summary)
    warm = f"hot table warmed on {len(warm_tpc)} other requests (their tokens/call {' '.join(f'{x:.2f}' for x in warm_tpc)})"
    cold = (f"; cold (all-zero) table, same tree, code prompts: tokens/call {' '.join(f'{x:.2f}' for x in cold_tpc)} "
            f"(hot, both prompts together: {tpc:.2f})" if cold_tpc else "")
    cost = ("On this CPU a target call over the 81-token tree costs several 1-token calls (the weights are re-read "
            "once per call either way, but the tree's matmuls are compute-bound on 2 cores), so tokens per call must "
            "exceed that cost ratio to pay; on the paper's GPUs a tree call costs about one plain call")
    return [
        Row(pid="P45", claim_id="lossless",
            claim="Token Recycling with greedy verification outputs exactly what plain greedy decoding outputs",
            setting=setting, baseline_name="plain greedy generate (0 differences)", baseline_value=0,
            method_value=mismatches,
            metric=f"speculative completions that differ from plain greedy, of {n_compared} compared (lower is better; "
                   "0 counts)",
            verdict=RULE_LOSSLESS.verdict([mismatches], [0]),
            note=f"arms compared: {', '.join(m for m in methods if m != 'plain')}; {arms}"),
        Row(pid="P45", claim_id="tokens-per-call",
            claim="Token Recycling's recycled candidates are accepted often: well over 1 token per target call "
                  "(what its ~2x speedup rests on)",
            setting=setting, baseline_name="plain greedy (1 token per call)", baseline_value=1.0,
            method_value=round(tpc, 3),
            metric="accepted tokens per target call, TR 2.2.2 hot, code editing (higher is better; > 2 counts)",
            verdict=RULE_TPC.verdict([tpc], [1.0]),
            note=f"{warm}{cold}; all arms: {arms}"),
        Row(pid="P45", claim_id="speed", claim=CLAIM_SPEED,
            setting=setting, baseline_name="plain greedy generate (speed-up 1)", baseline_value=1.0,
            method_value=round(speed, 3),
            metric="wall-clock speed-up at batch 1 on code editing, TR 2.2.2 hot (higher is better; > 1.5x counts)",
            verdict=RULE.verdict([speed], [1.0]),
            note=f"{arms}; {load}. {cost}"),
        Row(pid="P45", claim_id="vs-train-free",
            claim="Token Recycling is faster than prior train-free drafting such as prompt lookup (paper: ~30 % above)",
            setting=setting, baseline_name="prompt_lookup(3, 8) speculative decoding", baseline_value=round(pld_all, 3),
            method_value=round(tr_all, 3),
            metric=f"wall-clock speed-up over plain greedy, all {n_prompts} prompts, total time (higher is better; "
                   "TR > PLD counts)",
            verdict=RULE_VS_PLD.verdict([tr_all], [pld_all]),
            note=f"{arms}; {load}"),
    ]


if __name__ == "__main__":
    raise SystemExit(run_cli(run))
