"""P72 Soft Thinking vs chain-of-thought sampling on SmolLM2-135M-Instruct word problems.

Paper ("Soft Thinking: Unlocking the Reasoning Potential of LLMs in Continuous Concept Space"; official code
eric-ai-lab/Soft-Thinking): thinking with concept tokens (probability-weighted embedding mixtures) instead of
sampled tokens gives up to +2.48 pass@1 while using up to 22.4 % fewer tokens than standard CoT, on 32B-70B
reasoning models; its README warns that models of 7-14B and below gain little.

Setting: ``tokjax.pretrained("smollm2-135m-instruct")``, ``tokjax.data.word_problems`` level 1 (the easiest
level; greedy accuracy 0.125 on the calibration seed, docs/data.md), chat template with the problem and the
instruction "Solve the problem step by step, then end with 'Answer: N'", graded by ``check_answer`` (the stated
N, else the last integer). SmolLM2 has no ``</think>`` marker: thinking ends when the shown token is one that
starts "Answer" (both the bare and the space-prefixed token), after which decoding is greedy. Budget 96
new tokens per answer (64 with --quick); generated tokens are counted up to and including the end-of-turn token.

Methods (every hyperparameter the official README default, fixed in advance; nothing tuned):

* ``cot``: standard CoT sampling, T 0.6, top-p 0.95, top-k 30, 2 samples per problem; pass@1 = the mean
  accuracy over the samples.
* ``soft``: ``soft_thinking`` with max_topk 10, T 0.6, top-p 0.95, top-k 30, min-p 0.001, Cold Stop 0.01
  nats / 256 steps (longer than the budget: it cannot fire here), then greedy. A row that never shows an
  "Answer" token thinks until the budget ends; it is graded like the others (the last integer it shows).
* ``greedy``: plain greedy decoding (reported in the note; not a claim's baseline).

Claims, rules declared before anything runs. "Seeds" are three disjoint draws of problems (word_problems
seeds 7200, 7201, 7202; sampling key = the draw index), 67 problems each (one draw of 24 with --quick):

* ``accuracy`` (``RULE_ACC``): pass@1 of soft above CoT's in every draw (threshold 0).
* ``fewer-tokens`` (``RULE_TOK``): soft's mean generated tokens / CoT's below 0.9 in every draw (metric:
  the ratio, baseline 1.0, lower is better, threshold 0.1).

Expected: the README's own warning says a 135M model should not gain; this is a fair test of the mechanism at
our scale, not of the paper's models.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as `python experiments/p72_soft_thinking.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from experiments._harness import Row, Rule, run_cli  # noqa: E402

RULE_ACC = Rule(metric="pass@1 (word problems, level 1)", higher_is_better=True, threshold=0.0, seeds=(0, 1, 2),
                reported="official README defaults for both methods, fixed in advance; 3 disjoint problem draws")
RULE_TOK = Rule(metric="mean generated tokens relative to CoT", higher_is_better=False, threshold=0.1,
                seeds=(0, 1, 2), reported="official README defaults, fixed in advance; 3 disjoint problem draws")

MODEL = "smollm2-135m-instruct"
LEVEL = 1
DRAW_SEEDS = (7200, 7201, 7202)


def sizes(quick: bool) -> dict:
    # full: 3 x 67 = 201 problems; CoT 2 samples (the CPU budget: ~800 rows of 96 tokens on SmolLM2)
    return dict(n=24, new=64, samples=2, batch=24) if quick else dict(n=67, new=96, samples=2, batch=67)


def end_ids(tok) -> tuple:
    """Returns the ids of the tokens that start "Answer" (with and without a leading space)."""
    ids = []
    for text in ("Answer", " Answer"):
        enc = tok.encode(text)
        if enc:
            ids.append(int(enc[0]))
    return tuple(dict.fromkeys(ids))


def decode(model, tok, prompts, *, strategy=None, logits, key, new, batch):
    """Returns (texts, generated token counts, rows whose thinking ended (soft thinking; else all True))."""
    import jax
    import numpy as np

    import tokjax

    texts, counts, ended = [], [], []
    for i in range(0, len(prompts), batch):
        out = tokjax.generate(model, prompts[i:i + batch], key=jax.random.fold_in(key, i), max_new_tokens=new,
                              logits=logits, strategy=strategy, eos_id=tok.eos_id)
        texts += out.texts(tok)
        counts += (np.asarray(out.lengths) - np.asarray(out.prompt_lengths)).tolist()
        ended += (~np.asarray(out.stats.get("still_thinking", np.zeros(len(out.lengths), bool)))).tolist()
    return texts, counts, ended


def run(quick: bool):
    import time

    import jax
    import numpy as np

    import tokjax
    from tokjax import logits as L
    from tokjax.data import check_answer, word_problems
    from tokjax.decoding.soft_thinking import soft_thinking

    sz = sizes(quick)
    model, tok = tokjax.pretrained(MODEL, progress=False)
    ends = end_ids(tok)
    cot = L.chain(L.top_k(30), L.top_p(0.95), L.temperature(0.6))
    soft = soft_thinking(ends, max_topk=10, temperature=0.6, top_k=30, top_p=0.95, min_p=0.001,
                         cold_stop_entropy=0.01, cold_stop_steps=256)
    seeds = RULE_ACC.run_seeds(quick)
    acc = {m: [] for m in ("cot", "soft", "greedy")}
    toks = {m: [] for m in ("cot", "soft", "greedy")}
    ended = []
    t0 = time.perf_counter()
    for s in seeds:
        probs = word_problems(sz["n"], LEVEL, DRAW_SEEDS[s])
        prompts = [tok.apply_chat_template([{"role": "user", "content": p.prompt()}], add_generation_prompt=True)
                   for p in probs]
        answers = [p.answer for p in probs]
        key = jax.random.key(s)
        grade = lambda texts, ans: [check_answer(t, a)[0] for t, a in zip(texts, ans)]  # noqa: E731
        texts, n, done = decode(model, tok, prompts * sz["samples"], logits=cot, key=key, new=sz["new"], batch=sz["batch"])
        acc["cot"].append(float(np.mean(grade(texts, answers * sz["samples"]))))
        toks["cot"].append(float(np.mean(n)))
        texts, n, done = decode(model, tok, prompts, logits=L.greedy(), key=key, new=sz["new"], batch=sz["batch"])
        acc["greedy"].append(float(np.mean(grade(texts, answers))))
        toks["greedy"].append(float(np.mean(n)))
        texts, n, done = decode(model, tok, prompts, strategy=soft, logits=L.greedy(), key=key, new=sz["new"],
                          batch=sz["batch"])
        acc["soft"].append(float(np.mean(grade(texts, answers))))
        toks["soft"].append(float(np.mean(n)))
        ended.append(float(np.mean(done)))
        print(f"draw {s}: pass@1 cot {acc['cot'][-1]:.3f} soft {acc['soft'][-1]:.3f} greedy {acc['greedy'][-1]:.3f}; "
              f"tokens cot {toks['cot'][-1]:.1f} soft {toks['soft'][-1]:.1f} greedy {toks['greedy'][-1]:.1f} "
              f"({time.perf_counter() - t0:.0f} s)", flush=True)

    mean = lambda xs: round(float(np.mean(xs)), 4)  # noqa: E731
    ratio = [a / b for a, b in zip(toks["soft"], toks["cot"])]
    setting = (f"SmolLM2-135M-Instruct, word_problems level {LEVEL}, {len(seeds)} draw(s) x {sz['n']} problems, "
               f"{sz['new']} new tokens, chat template; CoT {sz['samples']} samples at T 0.6/top-p 0.95/top-k 30; "
               "soft: max_topk 10, same filters, min-p 0.001, ends at an 'Answer' token, then greedy")
    note = (f"greedy pass@1 {mean(acc['greedy'])} at {mean(toks['greedy'])} tokens; per draw pass@1 soft "
            f"{[round(x, 3) for x in acc['soft']]} vs CoT {[round(x, 3) for x in acc['cot']]}; soft rows whose thinking "
            f"ended within the budget {mean(ended)}; the README warns small models do not gain")
    return [
        Row(pid="P72", claim_id="accuracy", claim="soft thinking raises pass@1 over standard CoT sampling",
            setting=setting, baseline_name="CoT sampling (pass@1 over samples)", baseline_value=mean(acc["cot"]),
            method_value=mean(acc["soft"]), metric="pass@1 (higher is better)",
            verdict=RULE_ACC.verdict(acc["soft"], acc["cot"], seeds=seeds), note=note),
        Row(pid="P72", claim_id="fewer-tokens", claim="soft thinking uses fewer generated tokens than standard CoT",
            setting=setting, baseline_name="CoT sampling (ratio 1.0)", baseline_value=mean(toks["cot"]),
            method_value=mean(toks["soft"]), metric="mean generated tokens; verdict on soft/CoT ratio (lower is better)",
            verdict=RULE_TOK.verdict(ratio, [1.0] * len(ratio), seeds=seeds),
            note=f"soft/CoT token ratio per draw {[round(r, 3) for r in ratio]}"),
    ]


if __name__ == "__main__":
    raise SystemExit(run_cli(run))
