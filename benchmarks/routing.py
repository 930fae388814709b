"""Two-model routing speed (P46 R2R / P62 EAD): lazy catch-up vs lockstep vs the large model alone, SmolLM2-135M.

    python benchmarks/routing.py            # batch 1 and 8, LLM fractions 0.1 and 0.25, catch_up 1/4/8/16
    python benchmarks/routing.py --quick    # batch 1 and 8, fraction 0.1, catch_up 1/8, fewer tokens

Large model: SmolLM2-135M-Instruct (``tokjax.pretrained``, float32). Small model: the ``smollm2-draft``
architecture (d=256, 2 layers, SmolLM2's 49k vocabulary) at random initialisation: speed does not depend
on what the weights learned. Routing: R2R's ``kind="random"`` router (each live row's token goes to the
LLM with probability ``fraction``, its own key), so the LLM fraction is fixed in advance and every
configuration routes the same steps. Prompts: 64-token windows of the README; greedy; ``new`` new tokens.

Reported per (batch, fraction, configuration): generated tokens/s of the compiled decode (best of
``--repeats``, all configurations interleaved so machine load hits all alike), LLM forwards per step
(``large_calls / steps``) and the speed over the large model alone (``generate(large, ...)``) measured in the
same run. ``catch_up=1`` is lockstep (both models every step); k > 1 is lazy catch-up
(:mod:`tokjax.decoding.routing`). A batch shares one decision to run the LLM, so at batch 8 it runs when
any of the 8 rows routes.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _common import machine  # noqa: E402
from decode_real import MODEL, text_prompts  # noqa: E402

FULL = dict(prompt=64, new=96, batches=(1, 8), fractions=(0.1, 0.25), catch_ups=(1, 4, 8, 16), repeats=3)
QUICK = dict(prompt=64, new=48, batches=(1, 8), fractions=(0.1,), catch_ups=(1, 8), repeats=2)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json", help="also write the results to this file")
    args = ap.parse_args(argv)
    opts = QUICK if args.quick else FULL

    import jax

    import tokjax
    from tokjax import logits as L
    from tokjax.decoding.r2r import r2r

    large, tok = tokjax.pretrained(MODEL, progress=False)
    S = opts["prompt"] + opts["new"]
    small_cfg = large.cfg.replace(d_model=256, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=None, head_dim=None,
                                  max_len=max(512, S))
    small = tokjax.Model.init(small_cfg, jax.random.key(0))
    print(f"machine: {machine()}; jax {jax.__version__} ({jax.default_backend()})")
    print(f"large {MODEL} ({large.num_params() / 1e6:.1f}M params), small {small.num_params() / 1e6:.1f}M params "
          f"(random init); {opts['prompt']}-token prompts, {opts['new']} new tokens, greedy, best of {opts['repeats']}")
    header = (f"{'B':>2} {'frac':>5} {'configuration':<22} {'LLM frac':>8} {'LLM calls/step':>14} {'tok/s':>8} "
              f"{'vs large':>8} {'compile s':>9}")
    print(header)
    print("-" * len(header))
    results = []
    for B in opts["batches"]:
        prompts = text_prompts(tok, B, opts["prompt"])
        for frac in opts["fractions"]:
            runs = {"large alone": (large, None), "small alone": (small, None)}
            for k in opts["catch_ups"]:
                name = "R2R lockstep" if k == 1 else f"R2R lazy catch_up={k}"
                runs[name] = (small, r2r(large, None, theta=1.0 - frac, kind="random", top_k=100, catch_up=k))
            stats = {}
            for name, (model, strat) in runs.items():
                t0 = time.perf_counter()
                tokjax.generate(model, prompts, max_new_tokens=opts["new"], logits=L.greedy(), strategy=strat)
                stats[name] = dict(compile=time.perf_counter() - t0, best=0.0)
            for _ in range(opts["repeats"]):
                for name, (model, strat) in runs.items():
                    t0 = time.perf_counter()
                    out = tokjax.generate(model, prompts, max_new_tokens=opts["new"], logits=L.greedy(), strategy=strat)
                    dt = time.perf_counter() - t0
                    rr = stats[name]
                    rr["best"] = max(rr["best"], out.stats["generated_tokens"] / dt)
                    steps = max(out.stats["forward_calls"], 1)
                    rr["llm_frac"] = float(np.mean(out.stats["llm_fraction"])) if strat else float(model is large)
                    rr["llm_calls"] = out.stats["large_calls"] / steps if strat else float(model is large)
            base = stats["large alone"]["best"]
            for name, rr in stats.items():
                rr["compile"] -= opts["new"] * B / rr["best"]
                row = dict(batch=B, fraction=frac, configuration=name, llm_fraction=rr["llm_frac"],
                           llm_calls_per_step=rr["llm_calls"], tokens_per_s=rr["best"], vs_large=rr["best"] / base,
                           compile_s=max(rr["compile"], 0.0))
                results.append(row)
                print(f"{B:>2} {frac:>5.2f} {name:<22} {row['llm_fraction']:>8.3f} {row['llm_calls_per_step']:>14.3f} "
                      f"{row['tokens_per_s']:>8.1f} {row['vs_large']:>7.2f}x {row['compile_s']:>9.1f}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
