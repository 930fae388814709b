"""P44 Kangaroo: a shallow early-exit self-draft + adapter speeds up lossless greedy decoding.

Paper claim (Liu et al., arXiv 2404.18911): drafting with the target's first layers plus a small
attention adapter (double early exit: stop drafting once the draft's confidence drops below
eta) gives up to 1.68x wall-clock speedup on Spec-Bench, losslessly.

Small-scale check: the cached ``tiny-pydocs`` model (4 layers, d=128). The adapter (one
attention block, no MLP, shared head) is distilled from the frozen model on the pydocs training
windows (soft-label CE, the official loss) and cached under the TOKJAX cache. Greedy decoding of
prose prompts (pydocs validation text) and code prompts (CPython stdlib sources): plain decoding
vs Kangaroo vs the core's prompt-lookup draft, all through ``generate`` (batch 1 and a batch of
4 ragged prompts), checking that every speculative output equals plain greedy token for token.
Metrics: tokens per target call and wall-clock speedup (min over interleaved repeats; the shared
CPU is noisy).

Verdict (``RULE``, declared before anything runs): Kangaroo with the adapter at layer 1 (fixed in
advance; layer 2 is reported in the note of full runs) must beat plain decoding's 1.0x by more
than 0.3 (>= 1.3x, the issue's target) in mean wall-clock speedup; losslessness (every output
equal to plain greedy) is ``RULE_LOSSLESS``, its verdict in the note.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as `python experiments/p44_kangaroo.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from experiments._common import PROMPT_LEN, cached, compare_speed, load_setup, load_tree, make_prompts, same_tokens, save_tree  # noqa: E402
from experiments._harness import Row, Rule, run_cli  # noqa: E402

RULE = Rule(metric="mean wall-clock speedup over plain greedy decoding", higher_is_better=True, threshold=0.3,
            seeds=(0,), reported="kangaroo-l1 (adapter after layer 1), num_draft 6, eta 0.6, fixed in advance")
RULE_LOSSLESS = Rule(metric="speculative outputs that differ from plain greedy", higher_is_better=False,
                     threshold=-0.5, seeds=(0,), reported="every Kangaroo and prompt-lookup output")


def get_adapter(model, dataset, layer: int, steps: int, *, progress: bool = True):
    """Returns (adapter params, metrics before/after) trained once and cached."""
    import jax

    from tokjax.decoding.kangaroo import distill_metrics, init_adapter
    from tokjax.train.recipes.kangaroo import fit_adapter

    path = cached(f"p44_adapter_l{layer}_s{steps}.npz")
    like = init_adapter(model, layer, jax.random.key(0))
    val = dataset.val[:64, :-1]
    if path.is_file():
        adapter = load_tree(path, like)
    else:
        t0 = time.perf_counter()
        adapter, _ = fit_adapter(model, layer, dataset.train[:, :-1], steps=steps, batch_size=16, lr=3e-3,
                                 adapter=like)
        save_tree(path, adapter)
        if progress:
            print(f"p44: trained the layer-{layer} adapter in {time.perf_counter() - t0:.0f} s", flush=True)
    return adapter, distill_metrics(model, like, layer, val), distill_metrics(model, adapter, layer, val)


def run(quick: bool) -> Row:
    import numpy as np

    from tokjax.decoding import drafts, verify
    from tokjax.decoding.kangaroo import early_exit
    from tokjax.decoding.speculative import speculative

    model, tok, ds = load_setup()
    layers = (1,) if quick else (1, 2)
    steps = 300 if quick else 1200
    new = 48 if quick else 96
    reps = 3 if quick else 5
    batches = (1,) if quick else (1, 4, 8)
    L = model.cfg.n_layers
    num_draft, eta = 6, 0.6  # official defaults (6 draft steps, threshold 0.6)

    adapters, fit = {}, {}
    for layer in layers:
        adapters[layer], fit[layer + 0.0], fit[layer + 0.5] = get_adapter(model, ds, layer, steps)

    results = []  # (kind, batch, name, speedup, tokens/call, same)
    for kind in ("prose", "code"):
        for B in batches:
            prompts = make_prompts(tok, kind, B, seed=B)
            strategies = {"plain": None,
                          "pld": speculative(drafts.prompt_lookup(max_ngram=2, num_draft=num_draft), verify.greedy())}
            for layer in layers:
                strategies[f"kangaroo-l{layer}"] = speculative(early_exit(layer, adapters[layer], num_draft, eta),
                                                               verify.greedy())
            res = compare_speed(model, prompts, strategies, new, reps)
            t_plain, ref = res["plain"]
            for name, (t, out) in res.items():
                if name != "plain":
                    tpc = out.stats["tokens_per_call"]
                    evals = out.stats["draft_layer_evals"] / max(out.stats["forward_calls"], 1)  # per row and call
                    # cost model of the memory-bound regime: a target call costs L layer reads whatever the block size
                    model_speed = tpc * L / (L + evals)
                    results.append((kind, B, name, t_plain / t, tpc, same_tokens(out, ref), model_speed))

    kname = "kangaroo-l1"
    k_speed = float(np.mean([r[3] for r in results if r[2] == kname]))
    pld_speed = float(np.mean([r[3] for r in results if r[2] == "pld"]))
    lossless = all(r[5] for r in results)
    verdict = RULE.verdict([k_speed], [1.0])
    v_lossless = RULE_LOSSLESS.verdict([sum(not r[5] for r in results)], [0])
    detail = "; ".join(f"{kind} B={B} {name}: {sp:.2f}x, {tpc:.2f} tok/call, layer-cost model {ms:.2f}x"
                       for kind, B, name, sp, tpc, _, ms in results)
    k_model = float(np.mean([r[6] for r in results if r[2] == kname]))
    fit_s = "; ".join(
        f"layer {l}: distill CE {fit[l + 0.0]['loss']:.2f}->{fit[l + 0.5]['loss']:.2f}, prob_acc "
        f"{fit[l + 0.0]['prob_acc']:.2f}->{fit[l + 0.5]['prob_acc']:.2f}, top-1 agreement {fit[l + 0.5]['top1']:.2f}"
        for l in layers)
    note = (f"Greedy, {new} new tokens, {PROMPT_LEN}-token prompts, num_draft {num_draft}, eta {eta}; all speculative "
            f"outputs identical to plain greedy: {lossless} (lossless verdict: {v_lossless.status}). Adapter ({steps} AdamW steps on pydocs train windows, "
            f"held-out val): {fit_s}. Speedup (min wall-clock over {reps} interleaved repeats) per setting: {detail}. "
            f"Mean over settings: {kname} {k_speed:.2f}x wall-clock ({k_model:.2f}x under the layer-cost model: a "
            f"target call = {L} layer reads, a draft step = layer + 1 adapter layer), prompt lookup {pld_speed:.2f}x. A 4-layer d=128 target "
            f"costs ~0.3 ms per call on CPU, mostly fixed per-call overhead rather than layer compute, so each of "
            f"Kangaroo's sequential draft steps costs a sizeable fraction of a target call; the verification pass also "
            f"recomputes the shallow layers (KV reuse not implemented).")
    return Row(
        pid="P44",
        claim="Kangaroo double early exiting (shallow layers + adapter draft) speeds up lossless decoding (up to 1.68x)",
        setting=f"tiny-pydocs (4 layers, d=128) on CPU, adapter at layer(s) {layers}, greedy, prose and code prompts, "
                f"batches {batches}",
        baseline_name="plain greedy decoding (wall-clock 1.0x)",
        baseline_value=1.0,
        method_value=round(k_speed, 3),
        metric=f"mean wall-clock speedup of {kname} over plain decoding (higher is better)",
        verdict=verdict,
        note=note,
    )


if __name__ == "__main__":
    raise SystemExit(run_cli(run))
