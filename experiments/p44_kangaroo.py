"""P44 Kangaroo on SmolLM2-135M-Instruct: a shallow early-exit self-draft + adapter speeds up lossless greedy decoding.

Paper claim (Liu et al., arXiv 2404.18911): drafting with the target's first layers plus a small
attention adapter (double early exit: stop drafting once the draft's confidence drops below
eta) gives up to 1.68x wall-clock speedup on Spec-Bench (Vicuna-7B, exit after layer 2 of 32),
losslessly.

Setting: the real model as target, ``tokjax.pretrained("smollm2-135m-instruct")`` (30 layers,
d=576, fp32, CPU). The exit layer is the paper's 2 (its Vicuna-7B has 32 layers, SmolLM2 30). The
adapter (one attention block, no MLP, own final RMSNorm, the target's LM head) is distilled from
SmolLM2's own exited hidden states and full-model logits (soft-label CE, the official loss) on
training windows of the bundled pydocs and stdlib corpora, through ``tokjax.train.train``
(``tokjax.train.recipes.kangaroo.fit_adapter``), and cached under the TOKJAX cache, so a rerun
does not retrain (``--quick`` reuses the full run's adapter when cached, else trains a 10-step one).

Prompts (chat template of the model, batch 1): code editing of held-out stdlib functions and
summarisation of held-out pydocs passages (the answer repeats the prompt) and open chat questions
(it does not). Arms: plain greedy (``tokjax.generate``), Kangaroo, and prompt lookup for
reference; the arms run interleaved A/B/C/A/B/C and each prompt's time is the median of the
repeats; every Kangaroo and prompt-lookup output is compared with plain greedy token for token.
The load average of the shared machine is reported with the row.

Verdict (``RULE`` and ``RULE_LOSSLESS``, declared before anything runs): the claim holds only if
both do: Kangaroo's mean wall-clock speedup over plain greedy (mean over the prompts of all three
kinds) exceeds 1.3x (threshold 0.3 over 1.0x), and no output differs from plain greedy. The row
shows the first rule that fails (speed first), or the speed rule when both pass.
"""

from __future__ import annotations

import os
import re
import statistics
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as `python experiments/p44_kangaroo.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from experiments._common import cached, load_tree, save_tree  # noqa: E402
from experiments._harness import Row, Rule, run_cli  # noqa: E402

RULE = Rule(metric="mean wall-clock speedup of Kangaroo over plain greedy decoding (batch 1)", higher_is_better=True,
            threshold=0.3, seeds=(0,),
            reported="adapter after layer 2 (the paper's exit), num_draft 6, eta 0.6 (official defaults), fixed in "
                     "advance; mean over code-edit, summarise and chat prompts")
RULE_LOSSLESS = Rule(metric="speculative outputs that differ from plain greedy", higher_is_better=False,
                     threshold=-0.5, seeds=(0,), reported="every Kangaroo and prompt-lookup output")

MODEL = "smollm2-135m-instruct"
LAYER, NUM_DRAFT, ETA = 2, 6, 0.6
STEPS, BATCH = 80, 2  # distillation budget that fits 2 shared CPU cores (a teacher forward per step)
WINDOW = 64  # distillation window (tokens)
WIDTH = 384  # prompts are right-padded to this width so every prompt reuses one compiled decode
CHAT = (
    "What are some good ways to stay focused while studying?",
    "Write a short poem about the sea.",
    "Explain how a bicycle stays upright when it moves.",
    "What should I pack for a weekend camping trip?",
    "Give me three ideas for a birthday party for a ten-year-old.",
    "Why do cats purr?",
)


def corpus_splits():
    """Returns {"pydocs": (train docs, val docs), "stdlib": (train docs, val docs)} (fixed hash split)."""
    from tokjax.data import load_corpus, split_corpus

    return {"pydocs": split_corpus(load_corpus("pydocs"), val_fraction=0.1, seed=0),
            "stdlib": split_corpus(load_corpus("stdlib", max_bytes=600_000).documents, val_fraction=0.2, seed=0)}


def chat_prompts(tok, n: int, splits, seed: int = 0) -> dict:
    """Returns {kind: [chat-template prompt ids]} with ``n`` prompts of each kind: code / summarise / chat.

    Code: a held-out stdlib function (8-30 lines) to edit; summarise: a held-out pydocs passage;
    chat: an open question. Every prompt fits in WIDTH tokens.
    """
    import numpy as np

    rng = np.random.default_rng(seed)
    funcs = [f for d in splits["stdlib"][1] for f in _functions(d) if 8 <= f.count("\n") <= 30]
    paras = [p for d in splits["pydocs"][1] for p in d.split("\n\n") if 500 <= len(p) <= 1400]
    out = {"code": [], "summarise": [], "chat": []}

    def add(kind, text):
        ids = tok.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True)
        if len(ids) <= WIDTH:
            out[kind].append([int(i) for i in ids])

    for i in rng.permutation(len(funcs)):
        if len(out["code"]) == n:
            break
        add("code", "Add type hints and a short docstring to this Python function. Keep the rest of the code "
                    "unchanged.\n\n```python\n" + funcs[i].rstrip() + "\n```")
    for i in rng.permutation(len(paras)):
        if len(out["summarise"]) == n:
            break
        add("summarise", "Summarise the following text in two or three sentences.\n\n" + paras[i])
    for q in CHAT[:n]:
        add("chat", q)
    return out


def _functions(source: str) -> list[str]:
    """Returns the def blocks of ``source`` (top-level functions and methods), dedented."""
    import textwrap

    lines, out = source.splitlines(), []
    for i, line in enumerate(lines):
        m = re.match(r"( *)def \w+\(", line)
        if not m:
            continue
        indent, j = len(m.group(1)), i + 1
        while j < len(lines) and (not lines[j].strip() or len(lines[j]) - len(lines[j].lstrip()) > indent):
            j += 1
        out.append(textwrap.dedent("\n".join(lines[i:j]).rstrip() + "\n"))
    return out


def distill_windows(tok, splits, split: int):
    """Returns int32 [N, WINDOW] token windows of pydocs + stdlib (``split`` 0: train docs, 1: held-out docs)."""
    import numpy as np

    from tokjax.data import pack_sequences

    rows = []
    for name in ("pydocs", "stdlib"):
        ids = [tok.encode(d) for d in splits[name][split]]
        rows.append(np.asarray(pack_sequences(ids, WINDOW - 1), np.int32))
    return np.concatenate(rows)


def get_adapter(model, windows, steps: int, *, batch_size: int = BATCH, lr: float = 1e-3):
    """Returns (adapter params, how it was obtained) for the exit after LAYER, distilled once and cached."""
    import jax

    from tokjax.decoding.kangaroo import init_adapter
    from tokjax.train.recipes.kangaroo import fit_adapter

    like = init_adapter(model, LAYER, jax.random.key(0))
    path = cached(f"p44_smollm2_adapter_l{LAYER}_w{WINDOW}_b{batch_size}_s{steps}.npz")
    if path.is_file():
        return load_tree(path, like), f"{steps} steps (cached)"
    t0 = time.perf_counter()
    adapter, _ = fit_adapter(model, LAYER, windows, steps=steps, batch_size=batch_size, lr=lr, adapter=like)
    save_tree(path, adapter)
    secs = time.perf_counter() - t0
    print(f"p44: distilled the layer-{LAYER} adapter ({steps} steps) in {secs:.0f} s", flush=True)
    return adapter, f"{steps} steps (trained now, {secs:.0f} s)"


def timed_arms(model, prompts, arms: dict, new: int, reps: int, eos_id):
    """Returns {arm: [(median seconds, GenerateOutput) per prompt]}: arms interleaved A/B/.. per repeat."""
    import numpy as np

    import tokjax
    from tokjax import logits as L

    def go(ids, strategy):
        buf = np.zeros((1, WIDTH), np.int32)
        buf[0, :len(ids)] = ids
        out = tokjax.generate(model, buf, prompt_lengths=[len(ids)], max_new_tokens=new, logits=L.greedy(),
                              strategy=strategy, eos_id=eos_id)
        return out

    res = {a: [] for a in arms}
    for a, s in arms.items():  # compile every arm once, untimed
        go(prompts[0], s)
    for ids in prompts:
        times = {a: [] for a in arms}
        outs = {}
        for _ in range(reps):
            for a, s in arms.items():
                t0 = time.perf_counter()
                outs[a] = go(ids, s)
                times[a].append(time.perf_counter() - t0)
        for a in arms:
            res[a].append((statistics.median(times[a]), outs[a]))
    return res


def run(quick: bool) -> Row:
    import numpy as np

    import tokjax
    from tokjax.decoding import drafts, verify
    from tokjax.decoding.kangaroo import distill_metrics, early_exit, init_adapter
    from tokjax.decoding.speculative import speculative

    import jax

    model, tok = tokjax.pretrained(MODEL)
    L = model.cfg.n_layers
    steps = STEPS
    n_prompts = 1 if quick else 2
    new = 48 if quick else 128
    reps = 2 if quick else 3
    splits = corpus_splits()

    train_w = distill_windows(tok, splits, 0)
    val_w = distill_windows(tok, splits, 1)[:: 7][: 8 if quick else 16]
    path_full = cached(f"p44_smollm2_adapter_l{LAYER}_w{WINDOW}_b{BATCH}_s{steps}.npz")
    adapter, how = get_adapter(model, train_w, steps if (not quick or path_full.is_file()) else 10)
    fit0 = distill_metrics(model, init_adapter(model, LAYER, jax.random.key(0)), LAYER, val_w, batch_size=8)
    fit1 = distill_metrics(model, adapter, LAYER, val_w, batch_size=8)

    arms = {"plain": None,
            "kangaroo": speculative(early_exit(LAYER, adapter, NUM_DRAFT, ETA), verify.greedy()),
            "pld": speculative(drafts.prompt_lookup(max_ngram=2, num_draft=NUM_DRAFT), verify.greedy())}
    prompts = chat_prompts(tok, n_prompts, splits)
    load0 = os.getloadavg()
    rows = []  # (kind, arm, speedup, tokens/call, same, generated, draft layer evals per call)
    for kind, ps in prompts.items():
        res = timed_arms(model, ps, arms, new, reps, tok.eos_id)
        for i in range(len(ps)):
            t_plain, ref = res["plain"][i]
            for a in ("kangaroo", "pld"):
                t, out = res[a][i]
                same = [c.tolist() for c in out.completions()] == [c.tolist() for c in ref.completions()]
                st = out.stats
                rows.append((kind, a, t_plain / t, st["tokens_per_call"], same, st["generated_tokens"],
                             st["draft_layer_evals"] / max(st["forward_calls"], 1)))
    load1 = os.getloadavg()

    def mean(arm, kind=None, col=2):
        return float(np.mean([r[col] for r in rows if r[1] == arm and (kind is None or r[0] == kind)]))

    k_speed = mean("kangaroo")
    mismatches = sum(not r[4] for r in rows)
    v_speed = RULE.verdict([k_speed], [1.0])
    v_lossless = RULE_LOSSLESS.verdict([mismatches], [0])
    verdict = v_speed if v_speed.status != "reproduced" or v_lossless.status == "reproduced" else v_lossless
    per_kind = "; ".join(
        f"{kind}: kangaroo {mean('kangaroo', kind):.2f}x at {mean('kangaroo', kind, 3):.2f} tok/call "
        f"({mean('kangaroo', kind, 6):.1f} draft layer-evals/call), prompt lookup {mean('pld', kind):.2f}x at "
        f"{mean('pld', kind, 3):.2f} tok/call" for kind in prompts)
    tpc = mean("kangaroo", col=3)
    evals = mean("kangaroo", col=6)
    # Memory-bound cost model: a target call streams all L layers + the head (H layer-equivalents),
    # a draft step streams LAYER layers + the adapter (~0.25 of a layer) + the head.
    head = model.cfg.vocab_size * model.cfg.d_model / _layer_params(model.cfg)
    draft_steps = evals / (LAYER + 1)
    model_speed = tpc * (L + head) / (L + head + draft_steps * (LAYER + 0.25 + head))
    note = (
        f"Greedy, up to {new} new tokens (stop at eos), batch 1, {n_prompts} prompt(s) per kind, prompts padded to "
        f"{WIDTH}; num_draft {NUM_DRAFT}, eta {ETA}, exit after layer {LAYER} of {L}. Adapter: {how} of "
        f"fit_adapter (tokjax.train, AdamW lr 1e-3, batch {BATCH} x {WINDOW} tokens of pydocs+stdlib train windows); "
        f"held-out distillation CE {fit0['loss']:.2f} -> {fit1['loss']:.2f}, prob_acc {fit0['prob_acc']:.2f} -> "
        f"{fit1['prob_acc']:.2f}, top-1 agreement with the full model {fit0['top1']:.2f} -> {fit1['top1']:.2f}. "
        f"Wall-clock speedup = median plain time / median method time per prompt over {reps} interleaved repeats, "
        f"then mean over prompts. {per_kind}. Mean: kangaroo {k_speed:.2f}x ({tpc:.2f} tok/call), prompt lookup "
        f"{mean('pld'):.2f}x. Outputs differing from plain greedy: {mismatches} of {len(rows)} (lossless verdict: "
        f"{v_lossless.status}). Memory-bound cost model (a draft step streams {LAYER} layers + adapter + the "
        f"49152x576 head, {head:.1f} layer-equivalents): {model_speed:.2f}x expected. Verification recomputes the "
        f"{LAYER} shallow layers for the drafted block (shallow-KV reuse not implemented in "
        f"tokjax.decoding.kangaroo; at most {LAYER}/{L} of a verify call). Load average before/after timing: "
        f"{load0[0]:.2f}/{load1[0]:.2f} (1 min), {load0[1]:.2f}/{load1[1]:.2f} (5 min) on 2 shared cores."
    )
    return Row(
        pid="P44",
        claim="Kangaroo double early exiting (shallow layers + adapter draft) speeds up lossless decoding (up to 1.68x)",
        setting=f"SmolLM2-135M-Instruct (30 layers, d=576, fp32) on 2 CPU cores, adapter after layer {LAYER} distilled "
                f"on bundled text, greedy batch 1, chat-template prompts: code edit, summarise, open chat",
        baseline_name="plain tokjax greedy decoding (wall-clock 1.0x)",
        baseline_value=1.0,
        method_value=round(k_speed, 3),
        metric="mean wall-clock speedup of Kangaroo over plain greedy (higher is better); "
               f"{tpc:.2f} tokens per target call",
        verdict=verdict,
        note=note,
    )


def _layer_params(cfg) -> float:
    """Returns the weights of one transformer layer (attention + gated MLP), the unit of the cost model."""
    d, hd = cfg.d_model, cfg.d_model // cfg.n_heads
    kv = (cfg.n_kv_heads or cfg.n_heads) * hd
    return 2 * d * d + 2 * d * kv + 3 * d * cfg.d_ff


if __name__ == "__main__":
    raise SystemExit(run_cli(run))
