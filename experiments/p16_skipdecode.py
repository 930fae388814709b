"""P16 SkipDecode on SmolLM2-135M-Instruct: a shared, non-increasing per-position layer budget (lower-middle
layers skipped) speeds up decoding with negligible regression.

Paper claim (Del Corro et al., arXiv 2307.02628): skipping lower-middle layers with one exit point
per sequence position, monotonically decreasing (so batching and the KV cache keep working),
after fine-tuning with the same schedule, gives 2-5x speedups with negligible regression (OPT
1.3B/6.7B).

Setting: the real model, ``tokjax.pretrained("smollm2-135m-instruct")`` (30 layers, d=576, fp32,
CPU). Schedule fixed in advance: linear from 30 to 15 active layers over the first 32 generated
tokens, then 15 (warm-up layer 0 always runs, then the top layers), i.e. a 2x layer budget at the
tail.

* Fine-tuning with the schedule (``skipdecode_loss`` through ``tokjax.train.train``), cut to the
  CPU budget: the paper fine-tunes the whole model; here a trainable subset (the RMSNorm gains and
  the two projections that write into the residual stream, ``wo`` and ``w_down``, of every layer:
  36M of 135M parameters) for ``STEPS`` (40) AdamW steps of 2 windows x 64 tokens of the bundled pydocs +
  stdlib training documents (16-token prefix at full depth, the schedule over the next 48
  positions). Cached under the TOKJAX cache; ``--quick`` reuses it, or fine-tunes 5 steps when
  it is missing.
* Quality: next-token loss (nats/token) and top-1 agreement with the unskipped original model on
  held-out windows (the same prefix/schedule layout), for the original model under the schedule
  and the fine-tuned one under the schedule.
* Speed: layers evaluated per generated token, and wall-clock of ``generate`` with the SkipDecode
  strategy vs plain tokjax greedy decoding on chat-template prompts (code edit, summarise, open
  chat; batch 1; fixed number of new tokens), arms interleaved A/B/A/B, median per prompt, with
  the load average of the shared machine.

One row per claim, every Rule declared below before anything runs (greedy decoding is
deterministic and the fine-tune is one fixed run: one "seed"):

* ``quality`` (``RULE_QUALITY``): the schedule-fine-tuned model under the schedule keeps its
  held-out loss within 5% of the original model at full depth (the paper's "negligible regression");
* ``speed`` (``RULE``): ``generate`` with the SkipDecode strategy is more than 1.2x faster than plain
  greedy decoding, mean over the prompts. The strategy running all 30 layers is timed too (its own
  overhead, apart from the layers it skips).
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as `python experiments/p16_skipdecode.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from experiments._common import cached, load_tree, save_tree  # noqa: E402
from experiments._harness import Row, Rule, run_cli  # noqa: E402

# Baseline 1.0 = plain decoding against itself: "diff > 0.2" means more than 1.2x faster.
RULE = Rule(metric="mean wall-clock speedup of generate with SkipDecode over plain greedy (batch 1)",
            higher_is_better=True, threshold=0.2, seeds=(0,),
            reported="the schedule-fine-tuned model, linear 30->15 layers over 32 tokens, warm-up 1, fixed in advance")
# Non-inferiority on the ratio to the original full-depth loss (baseline 1.0): "diff > -0.05" = within 5%.
RULE_QUALITY = Rule(metric="held-out loss, fine-tuned under the schedule / original at full depth",
                    higher_is_better=False, threshold=-0.05, seeds=(0,),
                    reported="the schedule-fine-tuned model under the same schedule, fixed in advance")

MODEL = "smollm2-135m-instruct"
MIN_LAYERS, MAX_LAYERS, HORIZON, WARMUP = 15, 30, 32, 1
PREFIX, WINDOW = 16, 64  # training/eval windows: 16 tokens at full depth, the schedule over the next 48
STEPS, BATCH, LR = 40, 2, 2e-4
TRAINABLE = ("layers/attn_norm", "layers/mlp_norm", "layers/wo", "layers/w_down", "final_norm")
WIDTH = 384  # prompts are right-padded to this width so every prompt reuses one compiled decode
CHAT = ("What are some good ways to stay focused while studying?", "Write a short poem about the sea.",
        "Explain how a bicycle stays upright when it moves.")


def schedule():
    from tokjax.decoding.skipdecode import skipdecode

    return skipdecode(min_layers=MIN_LAYERS, max_layers=MAX_LAYERS, horizon=HORIZON, warmup=WARMUP)


def corpus_windows(tok):
    """Returns (train windows, held-out windows), int32 [N, WINDOW + 1] of pydocs + stdlib (fixed document split)."""
    import numpy as np

    from tokjax.data import load_corpus, pack_sequences, split_corpus

    splits = [split_corpus(load_corpus("pydocs"), val_fraction=0.1, seed=0),
              split_corpus(load_corpus("stdlib", max_bytes=600_000).documents, val_fraction=0.2, seed=0)]
    out = []
    for part in (0, 1):
        out.append(np.concatenate([pack_sequences([tok.encode(d) for d in s[part]], WINDOW) for s in splits]))
    return out[0].astype(np.int32), out[1].astype(np.int32), splits


def get_finetuned(model, windows, steps: int):
    """Returns (model fine-tuned with the skip schedule for ``steps`` on the TRAINABLE subset, how); cached."""
    from tokjax.decoding.skipdecode import skipdecode_loss
    from tokjax.model import Model
    from tokjax.train import TrainConfig, train

    tag = f"n{MIN_LAYERS}-{MAX_LAYERS}_h{HORIZON}_w{WARMUP}_p{PREFIX}_t{WINDOW}_b{BATCH}_lr{LR:g}_norms-wo-wdown"
    path = cached(f"p16_smollm2_skipft_{tag}_s{steps}.npz")
    if path.is_file():
        return Model(params=load_tree(path, model.params), cfg=model.cfg), f"{steps} steps (cached)"
    t0 = time.perf_counter()
    tcfg = TrainConfig(lr=LR, warmup_steps=max(1, steps // 10), total_steps=steps, weight_decay=0.0, grad_clip=1.0,
                       batch_size=BATCH, seq_len=WINDOW, log_every=max(1, steps // 6), eval_every=0,
                       checkpoint_every=0, trainable=TRAINABLE)
    tuned, _ = train(model.cfg, tcfg, {"train": windows}, loss_fn=skipdecode_loss(schedule(), prompt_length=PREFIX),
                     params=model.params, progress=False)
    save_tree(path, tuned.params)
    secs = time.perf_counter() - t0
    print(f"p16: fine-tuned with the schedule ({steps} steps) in {secs:.0f} s", flush=True)
    return tuned, f"{steps} steps (trained now, {secs:.0f} s)"


def evaluate(cfg, arms: dict, windows, batch: int = 8) -> dict:
    """Returns {arm: {"nll", "agree"}} on positions >= PREFIX - 1 of ``windows``; ``arms`` = {name: (params, strategy)}.

    ``agree``: top-1 agreement with the first arm (the reference, run at full depth).
    """
    import jax
    import jax.numpy as jnp
    import numpy as np

    from tokjax.decoding.skipdecode import layer_mask, skip_hooks
    from tokjax.logits import target_logprobs
    from tokjax.model import Inputs, forward

    @jax.jit
    def fwd(params, counts, warmup, x):
        B, T = x.shape
        mask = layer_mask(counts, warmup, cfg.n_layers, T, jnp.full((B,), PREFIX, jnp.int32))
        return forward(params, cfg, Inputs(tokens=x), hooks=skip_hooks(mask)).logits

    sums = {a: np.zeros(3) for a in arms}
    for i in range(0, len(windows), batch):
        toks = jnp.asarray(windows[i:i + batch])
        x, y = toks[:, :-1], toks[:, 1:]
        keep = np.arange(x.shape[1]) >= PREFIX - 1
        ref = None
        for a, (params, strat) in arms.items():
            logits = fwd(params, strat.counts(cfg, x.shape[1]), jnp.asarray(strat.warmup, jnp.int32), x)
            top = np.asarray(jnp.argmax(logits, -1))
            ref = top if ref is None else ref
            nll = np.asarray(-target_logprobs(logits, y))
            sums[a] += [nll[:, keep].sum(), (top == ref)[:, keep].sum(), keep.sum() * x.shape[0]]
    return {a: {"nll": s[0] / s[2], "agree": s[1] / s[2]} for a, s in sums.items()}


def chat_prompts(tok, splits, n: int, seed: int = 0) -> dict:
    """Returns {kind: [prompt ids]}: ``n`` chat-template prompts each of code editing, summarisation, open chat."""
    import re
    import textwrap

    import numpy as np

    rng = np.random.default_rng(seed)
    funcs = []
    for d in splits[1][1]:
        lines = d.splitlines()
        for i, line in enumerate(lines):
            m = re.match(r"( *)def \w+\(", line)
            if m:
                j = i + 1
                while j < len(lines) and (not lines[j].strip() or len(lines[j]) - len(lines[j].lstrip()) > len(m.group(1))):
                    j += 1
                if 8 <= j - i <= 30:
                    funcs.append(textwrap.dedent("\n".join(lines[i:j]).rstrip()))
    paras = [p for d in splits[0][1] for p in d.split("\n\n") if 500 <= len(p) <= 1400]
    texts = {"code": [f"Add type hints and a short docstring to this Python function. Keep the rest of the code "
                      f"unchanged.\n\n```python\n{funcs[i]}\n```" for i in rng.permutation(len(funcs))],
             "summarise": [f"Summarise the following text in two or three sentences.\n\n{paras[i]}"
                           for i in rng.permutation(len(paras))],
             "chat": list(CHAT)}
    out = {}
    for kind, cands in texts.items():
        ids = (tok.apply_chat_template([{"role": "user", "content": t}], add_generation_prompt=True) for t in cands)
        out[kind] = [[int(i) for i in x] for x in ids if len(x) <= WIDTH][:n]
    return out


def run(quick: bool) -> list[Row]:
    import numpy as np

    import tokjax
    from tokjax import logits as Lg
    from tokjax.decoding.skipdecode import mean_active_layers, skipdecode

    model, tok = tokjax.pretrained(MODEL)
    L = model.cfg.n_layers
    new = 64 if quick else 128
    reps = 2 if quick else 3
    train_w, val_w, splits = corpus_windows(tok)
    val_w = val_w[:: max(1, len(val_w) // (8 if quick else 24))][: 8 if quick else 24]
    have_full = cached("x").parent.joinpath(f"p16_smollm2_skipft_n{MIN_LAYERS}-{MAX_LAYERS}_h{HORIZON}_w{WARMUP}_p{PREFIX}"
                                           f"_t{WINDOW}_b{BATCH}_lr{LR:g}_norms-wo-wdown_s{STEPS}.npz").is_file()
    tuned, how = get_finetuned(model, train_w, STEPS if (not quick or have_full) else 5)

    strat, full = schedule(), skipdecode()  # full: every layer at every position
    q = evaluate(model.cfg, {"full": (model.params, full), "skip": (model.params, strat),
                             "tuned_skip": (tuned.params, strat)}, val_w)
    layers = mean_active_layers(strat, model.cfg, new)

    prompts = chat_prompts(tok, splits, 1 if quick else 2)

    def go(m, ids, strategy):
        buf = np.zeros((1, WIDTH), np.int32)
        buf[0, :len(ids)] = ids
        return tokjax.generate(m, buf, prompt_lengths=[len(ids)], max_new_tokens=new, logits=Lg.greedy(),
                               strategy=strategy)  # no eos: every arm decodes the same number of tokens

    # the strategy at full depth: its own overhead, apart from the layers it skips
    arms = {"plain": (model, None), "skipdecode": (tuned, strat), "skipdecode-all-layers": (model, full)}
    first = next(iter(prompts.values()))[0]
    for m, s in arms.values():  # compile, untimed
        go(m, first, s)
    load0 = os.getloadavg()
    speeds, match, overhead, same_full = {}, [], [], []
    for kind, ps in prompts.items():
        for ids in ps:
            times, outs = {a: [] for a in arms}, {}
            for _ in range(reps):
                for a, (m, s) in arms.items():
                    t0 = time.perf_counter()
                    outs[a] = go(m, ids, s)
                    times[a].append(time.perf_counter() - t0)
            speeds.setdefault(kind, []).append(statistics.median(times["plain"]) / statistics.median(times["skipdecode"]))
            overhead.append(statistics.median(times["plain"]) / statistics.median(times["skipdecode-all-layers"]))
            a, b = outs["plain"].completions()[0], outs["skipdecode"].completions()[0]
            match.append(float(np.mean(a == b)))
            same_full.append(outs["skipdecode-all-layers"].completions()[0].tolist() == a.tolist())
    load1 = os.getloadavg()
    wall = float(np.mean([s for v in speeds.values() for s in v]))

    ratio = q["tuned_skip"]["nll"] / q["full"]["nll"]
    load = (f"load average before/after timing {load0[0]:.2f}/{load1[0]:.2f} (1 min), {load0[1]:.2f}/{load1[1]:.2f} "
            "(5 min) on 2 shared cores")
    setting = (f"SmolLM2-135M-Instruct (30 layers, d=576, fp32) on 2 CPU cores, linear {MAX_LAYERS}->{MIN_LAYERS} "
               f"active layers over {HORIZON} tokens, warm-up {WARMUP}, schedule fine-tuning of a trainable subset "
               f"({how})")
    schedule_note = (
        f"Schedule n(s) = max({MIN_LAYERS}, {MAX_LAYERS} - floor({MAX_LAYERS - MIN_LAYERS} s / {HORIZON})), warm-up "
        f"layer 0, then the top n-1 layers: {layers:.2f} of {L} layers per token over {new} generated tokens "
        f"({L / layers:.2f}x fewer layer evaluations)")
    finetune_note = (
        f"Fine-tuning actually run (the paper fine-tunes the whole model; this is what fits 2 shared CPU cores): "
        f"{how} of tokjax.train with skipdecode_loss, trainable subset {', '.join(TRAINABLE)} (36M of 135M "
        f"parameters), AdamW lr {LR:g} warmup-cosine, batch {BATCH} x {WINDOW} tokens of pydocs+stdlib training "
        f"windows, first {PREFIX} tokens at full depth")
    return [
        Row(pid="P16", claim_id="quality",
            claim="Skipping lower-middle layers with a non-increasing per-position schedule, after fine-tuning with "
                  "the same schedule, costs negligible quality",
            setting=setting, baseline_name="original model at full depth (ratio 1.0)", baseline_value=1.0,
            method_value=round(ratio, 4),
            metric="held-out loss of the fine-tuned model under the schedule / original at full depth (lower is "
                   "better; within 5% counts)",
            verdict=RULE_QUALITY.verdict([ratio], [1.0]),
            note=(f"{schedule_note}. {finetune_note}. Held-out loss (nats/token, {len(val_w)} windows, positions >= "
                  f"{PREFIX - 1}): original full depth {q['full']['nll']:.3f}; original under the schedule "
                  f"{q['skip']['nll']:.3f} (top-1 agreement with the unskipped model {q['skip']['agree']:.2f}); "
                  f"fine-tuned under the schedule {q['tuned_skip']['nll']:.3f} (agreement "
                  f"{q['tuned_skip']['agree']:.2f}). Generated tokens equal to plain greedy's, by position: "
                  f"{np.mean(match):.0%}.")),
        Row(pid="P16", claim_id="speed",
            claim="SkipDecode (batch- and KV-cache-compatible layer skipping) speeds up decoding (2-5x on OPT "
                  "1.3B/6.7B at the paper's budgets)",
            setting=setting, baseline_name="plain tokjax greedy decoding (wall-clock 1.0x)", baseline_value=1.0,
            method_value=round(wall, 3),
            metric=f"mean wall-clock speedup of generate with SkipDecode over plain greedy (higher is better; > 1.2 "
                   f"counts) at {layers:.2f}/{L} layers per token",
            verdict=RULE.verdict([wall], [1.0]),
            note=(f"{schedule_note}. Wall-clock speedup ({new} new tokens, batch 1, median of {reps} interleaved "
                  f"repeats per prompt): " + ", ".join(f"{k} {np.mean(v):.2f}x" for k, v in speeds.items())
                  + f"; mean {wall:.2f}x. The SkipDecode strategy running all {L} layers: {np.mean(overhead):.2f}x "
                  f"plain (its own overhead; outputs equal to plain greedy on {sum(same_full)} of {len(same_full)} "
                  f"prompts). {load}.")),
    ]


if __name__ == "__main__":
    raise SystemExit(run_cli(run))
