"""P1 CAAD / RAD (retrieval-augmented decoding) on SmolLM2-135M-Instruct with python_facts.

Paper (CAAD, published as RAD, arXiv 2508.02184; official code manhitv/DecodeHub): a grounding store of
teacher-forced logits over as few as 10-100 truthful (question, answer) pairs, retrieved at every decode
step by the embedding of the last 8 tokens (cosine > tau, similarity-weighted mean) and added to the
model's logits (z + alpha r), improves truthfulness (+2.8 points on TruthfulQA) and the store transfers
across tasks. Here: ``tokjax.logits.caad`` (hashed-n-gram embedder; SBERT is not available offline).

Task: ``tokjax.data`` python_facts (``tokjax.data._python_facts``): short questions about
misconception-prone Python expressions, truth = Python's own eval, graded by ``check_fact`` (exact match
of the first answer-like token after removing echoes of the expression). Stored families (7):
float_equality, bankers_rounding, floor_division, negative_modulo, truthiness, int_truncation,
string_repetition; unseen families (3, never in a store): true_division, power_precedence,
bool_arithmetic. python_facts splits (disjoint by construction): split 0 = grounding stores (the first 10
and the first 100 facts of the split; the 10 are inside the 100), split 1 = validation, splits 2, 3, 4 =
the three held-out draws ("seeds" of the rules below). Decoding: the chat template (one user turn),
greedy, at most 16 new tokens, eos = the tokenizer's. The assistant's answer is opened in the prompt with
"`EXPR` evaluates to `" (``answer_prefix``), so the model writes the value next: without it SmolLM2
restated the question and ran out of tokens (greedy scored ~0 on a --quick probe). The stores
teacher-force the same prompt followed by the value and its closing backtick; the 10-shot turns use the
same format. Fixed before any full run.

Methods: ``greedy`` (plain greedy); ``caad-100`` / ``caad-10`` = ``chain(caad(store), greedy())`` with
the store of 100 / 10 facts; ``10-shot`` = greedy with the same 10 store facts as earlier chat turns
(user question, assistant answer) before the question.

Variant choice (declared in advance, made on the validation split only, never on the held-out items):
the CAAD variant (shaping, alpha, tau) with the highest validation exact match using the store of 100,
from the grid below (the paper's default linear / alpha 0.5 / tau 0.7 listed first, so it wins ties);
the chosen variant is used for caad-100 and caad-10 on every held-out draw.

Claims and rules (declared before anything runs):

* ``vs-greedy`` (``RULE_GREEDY``): held-out exact match (%) of caad-100 minus greedy, 300 facts per draw
  from the stored families, draws = splits 2, 3, 4. Reproduced if the difference is >= 2 points on every
  draw AND the paired-bootstrap 95% CI of the difference (10,000 resamples of the pooled items, rng 0)
  lies above 0; when the per-draw part holds but the CI does not, the verdict is downgraded to
  inconclusive.
* ``transfer`` (``RULE_TRANSFER``): the same store of 100 on 99 facts per draw from the 3 unseen families:
  caad-100 >= greedy (difference >= 0) on every draw.
* ``vs-few-shot`` (``RULE_FEWSHOT``): caad-10 vs 10-shot prompting with the same 10 facts, on the
  held-out draws: CAAD better (difference > 0) on every draw.

``--quick`` (CI, about 3 minutes on one core): stores of 10 and 28 facts (caad-100 then uses the 28),
16 validation facts, 2 grid variants, one held-out draw (split 2) of 16 stored-family facts and 16
unseen-family facts; verdicts from one draw only (and far too few items to mean anything).
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as `python experiments/p01_caad.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from experiments._harness import Row, Rule, decode, run_cli  # noqa: E402

RULE_GREEDY = Rule(metric="held-out exact match % (caad-100 minus greedy)", higher_is_better=True,
                   threshold=2.0 - 1e-9, seeds=(2, 3, 4), quick_seeds=(2,),
                   reported="CAAD variant chosen on the validation split (split 1) with the store of 100; "
                            "also needs the paired-bootstrap 95% CI of the difference above 0")
RULE_TRANSFER = Rule(metric="unseen-family exact match % (caad-100 minus greedy)", higher_is_better=True,
                     threshold=-1e-9, seeds=(2, 3, 4), quick_seeds=(2,),
                     reported="the validation-chosen variant; difference >= 0 counts")
RULE_FEWSHOT = Rule(metric="held-out exact match % (caad-10 minus 10-shot)", higher_is_better=True,
                    threshold=0.0, seeds=(2, 3, 4), quick_seeds=(2,),
                    reported="the validation-chosen variant with the store of the same 10 facts")

MODEL = "smollm2-135m-instruct"
STORED = ("float_equality", "bankers_rounding", "floor_division", "negative_modulo", "truthiness",
          "int_truncation", "string_repetition")
UNSEEN = ("true_division", "power_precedence", "bool_arithmetic")
STORE_SPLIT, VAL_SPLIT = 0, 1
MAX_NEW = 16
N_BOOT = 10_000
# (shaping, alpha, tau): the paper's default first (it wins ties)
GRID = (("linear", 0.5, 0.7), ("linear", 0.25, 0.7), ("linear", 1.0, 0.7), ("linear", 0.5, 0.5),
        ("linear", 0.5, 0.9), ("linear", 1.0, 0.5), ("delta", 0.5, 0.7), ("prob_interp", 0.5, 0.7))
QUICK_GRID = (("linear", 0.5, 0.7), ("linear", 1.0, 0.5))


def sizes(quick: bool) -> dict:
    if quick:
        return {"store": (10, 28), "val": 16, "held": 16, "unseen": 16, "batch": 16}
    return {"store": (10, 100), "val": 70, "held": 300, "unseen": 99, "batch": 32}


def answer_prefix(fact) -> str:
    """Returns the opening of the assistant's answer (it restates the expression, so the model writes the value next)."""
    return f"`{fact.expression}` evaluates to `"


def chat_ids(tok, fact, shots=()) -> list[int]:
    """Returns the prompt ids: optional shots as earlier (question, prefixed answer) turns, then the question
    through the chat template, then the answer prefix."""
    msgs = []
    for f in shots:
        msgs += [{"role": "user", "content": f.question},
                 {"role": "assistant", "content": f"{answer_prefix(f)}{f.answer}`"}]
    msgs.append({"role": "user", "content": fact.question})
    return list(tok.apply_chat_template(msgs, add_generation_prompt=True)) + list(tok.encode(answer_prefix(fact)))


def build_store(model, tok, facts):
    """Returns the CAAD store of ``facts``: each prompt as :func:`chat_ids` builds it, answer = the value and its
    closing backtick (the tokens the prompted model should write)."""
    from tokjax.logits.caad import caad_store_ids

    return caad_store_ids(model, [chat_ids(tok, f) for f in facts], [tok.encode(f"{f.answer}`") for f in facts],
                          window=8)


def answer(model, tok, prompts: list[list[int]], batch: int, logits=None) -> list[str]:
    """Returns greedy completions (text) of ``prompts`` in fixed-size batches (the last padded by repetition)."""
    import tokjax

    chain = tokjax.logits.greedy() if logits is None else tokjax.logits.chain(logits, tokjax.logits.greedy())
    texts = []
    for s in range(0, len(prompts), batch):
        rows = prompts[s:s + batch]
        padded = rows + [rows[-1]] * (batch - len(rows))
        out = decode(model, padded, max_new_tokens=MAX_NEW, logits=chain, eos_id=tok.eos_id)
        texts += out.texts(tok)[:len(rows)]
    return texts


def exact(facts, texts) -> list[int]:
    from tokjax.data._python_facts import check_fact

    return [int(check_fact(t, f)) for f, t in zip(facts, texts)]


def paired_bootstrap(diffs, n_boot: int = N_BOOT, seed: int = 0) -> tuple[float, float]:
    """Returns the 95% percentile CI (points) of the mean of per-item differences (resampling items)."""
    import numpy as np

    d = np.asarray(diffs, np.float64)
    idx = np.random.default_rng(seed).integers(0, len(d), (n_boot, len(d)))
    means = 100.0 * d[idx].mean(1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def run(quick: bool) -> list[Row]:
    import dataclasses
    import time

    import numpy as np

    import tokjax
    from tokjax.data._python_facts import python_facts
    from tokjax.logits.caad import caad

    t0 = time.time()
    sz = sizes(quick)
    grid = QUICK_GRID if quick else GRID
    model, tok = tokjax.pretrained(MODEL)
    B = sz["batch"]

    def log(msg):
        print(f"[{time.time() - t0:5.0f}s] {msg}", flush=True)

    small_n, big_n = sz["store"]
    store_facts = python_facts(big_n, STORE_SPLIT, STORED)
    assert store_facts[:small_n] == python_facts(small_n, STORE_SPLIT, STORED)
    store_big = build_store(model, tok, store_facts)
    store_small = build_store(model, tok, store_facts[:small_n])
    log(f"stores: {len(store_small)} / {len(store_big)} entries from {small_n} / {big_n} facts")

    def em(facts, texts):
        return 100.0 * float(np.mean(exact(facts, texts)))

    # --- variant choice on the validation split (store of big_n) ----------------------------------------
    val = python_facts(sz["val"], VAL_SPLIT, STORED)
    val_prompts = [chat_ids(tok, f) for f in val]
    val_scores = {}
    for shaping, a, tau in grid:
        texts = answer(model, tok, val_prompts, B, caad(store_big, alpha=a, tau=tau, shaping=shaping))
        val_scores[(shaping, a, tau)] = em(val, texts)
    val_greedy = em(val, answer(model, tok, val_prompts, B))
    best = max(grid, key=lambda g: val_scores[g])  # first listed wins ties
    log(f"validation EM greedy {val_greedy:.1f}; " + ", ".join(f"{g}: {v:.1f}" for g, v in val_scores.items())
        + f" -> {best}")
    shaping, alpha, tau = best

    def transform(store):
        return caad(store, alpha=alpha, tau=tau, shaping=shaping)

    # --- held-out draws ------------------------------------------------------------------------------------
    seeds = RULE_GREEDY.run_seeds(quick)
    per = {k: [] for k in ("greedy", "caad-100", "caad-10", "10-shot", "u-greedy", "u-caad-100")}
    items = {k: [] for k in per}
    examples = []
    for seed in seeds:
        held = python_facts(sz["held"], seed, STORED)
        unseen = python_facts(sz["unseen"], seed, UNSEEN)
        hp = [chat_ids(tok, f) for f in held]
        up = [chat_ids(tok, f) for f in unseen]
        fs = [chat_ids(tok, f, shots=store_facts[:small_n]) for f in held]
        runs = {"greedy": (held, answer(model, tok, hp, B)),
                "caad-100": (held, answer(model, tok, hp, B, transform(store_big))),
                "caad-10": (held, answer(model, tok, hp, B, transform(store_small))),
                "10-shot": (held, answer(model, tok, fs, B)),
                "u-greedy": (unseen, answer(model, tok, up, B)),
                "u-caad-100": (unseen, answer(model, tok, up, B, transform(store_big)))}
        for k, (facts, texts) in runs.items():
            e = exact(facts, texts)
            items[k] += e
            per[k].append(100.0 * float(np.mean(e)))
        examples += [(f.expression, f.answer, runs["greedy"][1][i].strip()[:12], runs["caad-100"][1][i].strip()[:12])
                     for i, f in enumerate(held[:4])]
        log(f"split {seed}: " + ", ".join(f"{k} {v[-1]:.1f}" for k, v in per.items()))

    diff = np.asarray(items["caad-100"]) - np.asarray(items["greedy"])
    lo, hi = paired_bootstrap(diff)
    v_greedy = RULE_GREEDY.verdict(per["caad-100"], per["greedy"], seeds=seeds)
    if v_greedy.status == "reproduced" and lo <= 0.0:
        v_greedy = dataclasses.replace(v_greedy, status="inconclusive")
    u_lo, u_hi = paired_bootstrap(np.asarray(items["u-caad-100"]) - np.asarray(items["u-greedy"]))
    f_lo, f_hi = paired_bootstrap(np.asarray(items["caad-10"]) - np.asarray(items["10-shot"]))
    c10_lo, c10_hi = paired_bootstrap(np.asarray(items["caad-10"]) - np.asarray(items["greedy"]))

    def mean(k):
        return round(float(np.mean(per[k])), 2)

    q = " (--quick)" if quick else ""
    setting = (f"SmolLM2-135M-Instruct, chat template + answer prefix, greedy <= {MAX_NEW} new tokens; python_facts: stores of "
               f"{small_n}/{big_n} facts (split 0, {len(store_small)}/{len(store_big)} entries), {sz['held']} held-out "
               f"facts x {len(seeds)} draw(s) from 7 stored families, {sz['unseen']} from 3 unseen families; "
               f"hashed uni/bigram embedder over 8 tokens" + q)
    choice = (f"variant chosen on {sz['val']} validation facts (split 1): {shaping} alpha={alpha} tau={tau}; validation "
              f"EM greedy {val_greedy:.1f}, " + "; ".join(f"{s}/{a}/{t} {v:.1f}" for (s, a, t), v in val_scores.items()))
    shown = "; ".join(f"{e} = {a}: greedy {g!r}, caad {c!r}" for e, a, g, c in examples[:4])
    return [
        Row(pid="P1", claim_id="vs-greedy",
            claim="Retrieval-augmented decoding with a small grounding store raises truthfulness over greedy "
                  "(+2.8 points TruthfulQA)",
            setting=setting, baseline_name="greedy", baseline_value=mean("greedy"), method_value=mean("caad-100"),
            metric="held-out exact match % (higher is better)", verdict=v_greedy,
            note=f"paired-bootstrap 95% CI of caad-100 - greedy: [{lo:.2f}, {hi:.2f}] points over {len(diff)} items; "
                 f"caad-10 {mean('caad-10')} (CI vs greedy [{c10_lo:.2f}, {c10_hi:.2f}]); {choice}; e.g. {shown}"),
        Row(pid="P1", claim_id="transfer",
            claim="The grounding store transfers to other tasks (no loss vs greedy on families not in the store)",
            setting=setting, baseline_name="greedy (unseen families)", baseline_value=mean("u-greedy"),
            method_value=mean("u-caad-100"), metric="unseen-family exact match % (higher is better)",
            verdict=RULE_TRANSFER.verdict(per["u-caad-100"], per["u-greedy"], seeds=seeds),
            note=f"paired-bootstrap 95% CI of the difference [{u_lo:.2f}, {u_hi:.2f}] points; {choice}"),
        Row(pid="P1", claim_id="vs-few-shot",
            claim="RAD beats in-context use of the same grounding examples (kNN-ICL-style prompting)",
            setting=setting, baseline_name=f"{small_n}-shot prompt (same {small_n} facts)",
            baseline_value=mean("10-shot"), method_value=mean("caad-10"),
            metric="held-out exact match % (higher is better)",
            verdict=RULE_FEWSHOT.verdict(per["caad-10"], per["10-shot"], seeds=seeds),
            note=f"paired-bootstrap 95% CI of caad-10 - 10-shot [{f_lo:.2f}, {f_hi:.2f}] points; {choice}"),
    ]


if __name__ == "__main__":
    raise SystemExit(run_cli(run))
