"""Real-model (SmolLM2-135M-Instruct) prompts and interleaved A/B timing shared by the decoding-speed experiments.

Prompts: code editing (the ``make demo`` prompt and a rename), summarising bundled text (pydoc
topics) and open chat, each through the tokenizer's chat template. Timing: every method decodes
every prompt ``reps`` times, interleaved A/B/A/B so machine load hits all arms alike; medians.
"""

from __future__ import annotations

import os
import statistics
import time

__all__ = ["RENAME_CODE", "SUMMARY_TOPICS", "CHATS", "WARMUP_CODE", "WARMUP_TOPICS", "WARMUP_CHATS", "real_prompts",
           "warmup_prompts", "ab_bench", "summarize", "fmt"]

RENAME_CODE = '''def moving_average(values, window=3):
    averages = []
    total = 0.0
    for i, value in enumerate(values):
        total += value
        if i >= window:
            total -= values[i - window]
        if i >= window - 1:
            averages.append(total / window)
    return averages
'''
SUMMARY_TOPICS = ("while", "break")
CHATS = ("Why is the sky blue? Answer in two sentences.",
         "What should I pack for a weekend hiking trip in the mountains?")
# Earlier requests for hot-start draft tables (P45's adjacency matrix persists across requests):
# same three kinds of task, never one of the evaluated prompts, so a hot table has not seen the answer.
WARMUP_CODE = '''def clamp_all(values, low, high):
    result = []
    for value in values:
        if value < low:
            value = low
        elif value > high:
            value = high
        result.append(value)
    return result
'''
WARMUP_TOPICS = ("for", "if")
WARMUP_CHATS = ("How do I make a good cup of tea?",)


def real_prompts(tok, per_task: int) -> dict[str, list[list[int]]]:
    """Returns {"code", "summary", "chat": per_task chat-template prompts each} (code editing, summarising bundled text, open chat)."""
    import pydoc_data.topics

    from tokjax.demo import CODE_PROMPT

    code = [CODE_PROMPT, "Rename the variable `total` to `running_sum` in this function:\n\n```python\n"
            + RENAME_CODE + "```"]
    summary = ["Summarize the following text in two sentences.\n\n" + pydoc_data.topics.topics[k].strip()
               for k in SUMMARY_TOPICS]
    texts = {"code": code, "summary": summary, "chat": list(CHATS)}
    return {task: [tok.apply_chat_template([{"role": "user", "content": t}], add_generation_prompt=True)
                   for t in ts[:per_task]] for task, ts in texts.items()}


def warmup_prompts(tok) -> list[list[int]]:
    """Returns chat-template prompts of earlier requests (code editing, summaries, chat) that no evaluated prompt repeats.

    For hot-start draft tables: decode these first and pass the resulting ``strategy_state`` to ``ab_bench(states=)``.
    """
    import pydoc_data.topics

    texts = (["Add type hints to this function and keep its behaviour:\n\n```python\n" + WARMUP_CODE + "```"]
             + ["Summarize the following text in two sentences.\n\n" + pydoc_data.topics.topics[k].strip()
                for k in WARMUP_TOPICS]
             + list(WARMUP_CHATS))
    return [tok.apply_chat_template([{"role": "user", "content": t}], add_generation_prompt=True) for t in texts]


def ab_bench(model, tok, prompts: dict, methods: dict, new: int, reps: int, *, logits=None, key=None, rows: int = 1,
             states: dict | None = None):
    """Returns ({task: {method: {"seconds", "generated", "calls", "draft_layers", "outputs"}}}, [load averages]).

    Every prompt (padded to one width, ``rows`` copies) is decoded by every method ``reps`` times,
    interleaved A/B/A/B; ``seconds`` sums the per-prompt medians; ``calls`` counts target calls
    per row (generated / tokens per call), ``draft_layers`` the draft's layer evaluations; ``outputs``
    are the completions of the last pass. ``states``: {method: strategy_state} to start that
    method from (hot start); every pass of it starts from the same state, so repetitions agree.
    One untimed pass per method compiles first.
    """
    import jax
    import numpy as np

    import tokjax
    from tokjax import logits as L

    transform = L.greedy() if logits is None else logits
    width = -(-max(len(p) for ps in prompts.values() for p in ps) // 64) * 64
    pad = tok.pad_id or 0

    states = dict(states or {})
    unknown = sorted(set(states) - set(methods))
    if unknown:
        raise ValueError(f"ab_bench states name methods that are not benchmarked: {unknown}; methods: {sorted(methods)}")

    def gen(ids, strategy, state=None):
        buf = np.full((rows, width), pad, np.int32)
        buf[:, :len(ids)] = ids
        out = tokjax.generate(model, buf, prompt_lengths=[len(ids)] * rows, max_new_tokens=new, logits=transform,
                              key=jax.random.key(0) if key is None else key, strategy=strategy,
                              eos_id=tok.eos_id, pad_id=pad, strategy_state=state)
        jax.block_until_ready(out.tokens)
        return out

    first = next(iter(prompts.values()))[0]
    for m, strategy in methods.items():
        gen(first, strategy, states.get(m))
    loads, res = [os.getloadavg()[0]], {}
    for task, ps in prompts.items():
        r = {m: {"seconds": 0.0, "generated": 0, "calls": 0.0, "draft_layers": 0, "outputs": []} for m in methods}
        for ids in ps:
            times = {m: [] for m in methods}
            for _ in range(reps):
                for m, strategy in methods.items():
                    t0 = time.perf_counter()
                    out = gen(ids, strategy, states.get(m))
                    times[m].append(time.perf_counter() - t0)
                    if len(times[m]) == reps:
                        g = out.stats["generated_tokens"]
                        r[m]["generated"] += g
                        r[m]["calls"] += g / max(out.stats["tokens_per_call"], 1e-9)
                        r[m]["draft_layers"] += out.stats["draft_layer_evals"]
                        r[m]["outputs"].append([c.tolist() for c in out.completions()])
            for m in methods:
                r[m]["seconds"] += statistics.median(times[m])
            loads.append(os.getloadavg()[0])
        res[task] = r
    return res, loads


def summarize(res: dict, base: str = "plain") -> dict:
    """Returns {task: {method: (tokens per target call, wall-clock speed-up over base, same outputs as base)}}."""
    return {task: {m: (v["generated"] / max(v["calls"], 1e-9), r[base]["seconds"] / v["seconds"],
                       v["outputs"] == r[base]["outputs"]) for m, v in r.items()} for task, r in res.items()}


def fmt(summary: dict) -> str:
    """Returns 'task: method tpc/speed-up' text for a note."""
    return "; ".join(f"{task}: " + ", ".join(f"{m} {t:.2f} tok/call {s:.2f}x" + ("" if same else " (MISMATCH)")
                                            for m, (t, s, same) in s_.items()) for task, s_ in summary.items())
