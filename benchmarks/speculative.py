"""Speculative decoding speed: plain vs prompt lookup vs a draft model vs SpecTr (and STAND / Token Recycling /
Kangaroo when their modules exist), on tiny-pydocs, CPU, one process.

    python benchmarks/speculative.py            # batch 1 and 8, temperature 0 and 1, 64 new tokens
    python benchmarks/speculative.py --quick    # fewer tokens and repeats

Task: 64-token prompts cut from CPython stdlib sources (code: repetitive) with the tiny-pydocs
target; the draft model is the 1-layer model of ``experiments/p23_spectr.py`` (trained once and
cached). Temperature 0 uses ``logits=greedy()`` and argmax verification for deterministic
drafts; temperature 1 uses the lossless rejection/tree verifiers. Reported per (method, batch,
temperature): accepted tokens per target call (mean over live rows), generated tokens/s of the
compiled decode (best of ``--repeats``; compile time reported separately), and the speedup over
plain tokjax decoding measured in the same process, runs alternating so machine load hits all
alike. A tiny model's forward costs little more than a call's fixed overhead on CPU, so
speculation (which adds draft calls and a wider verification block) often does not pay here;
the table shows where it does.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _common import machine  # noqa: E402

FULL = dict(new=64, batches=(1, 8), repeats=3)
QUICK = dict(new=32, batches=(1, 8), repeats=2)


def optional_sources(target):
    """Returns {name: (draft source or None, why skipped)} for the other helpers' modules that are importable.

    Imported lazily: a missing module is skipped silently, a failing constructor is reported.
    Kangaroo needs a trained adapter: the module's ``benchmark_draft(model)`` is used when it
    exists, else a warm-started (untrained) adapter at layer 1 (lossless, but it accepts less).
    """
    import jax

    found = {}
    for name, module in (("stand", "tokjax.decoding.stand"), ("recycling", "tokjax.decoding.token_recycling"),
                         ("kangaroo", "tokjax.decoding.kangaroo")):
        try:
            mod = importlib.import_module(module)
        except ImportError:
            continue
        try:
            if name == "stand":
                found[name] = (mod.ngram_memory(), None)
            elif name == "recycling":
                found[name] = (mod.recycling(), None)
            elif hasattr(mod, "benchmark_draft"):
                found[name] = (mod.benchmark_draft(target), None)
            else:
                adapter = mod.init_adapter(target, 1, jax.random.key(0))
                found[name + " (untrained adapter)"] = (mod.early_exit(1, adapter), None)
        except Exception as e:  # report, don't crash the benchmark
            found[name] = (None, f"{module}: {type(e).__name__}: {e}")
    return found


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json", help="also write the results to this file")
    args = ap.parse_args(argv)
    opts = QUICK if args.quick else FULL

    import jax
    import numpy as np

    import tokjax
    from experiments.p23_spectr import draft_for, prompt_sets
    from tokjax import generate
    from tokjax import logits as L
    from tokjax.decoding import drafts, verify
    from tokjax.decoding.speculative import speculative
    from tokjax.decoding.spectr import spectr

    target, tok = tokjax.pretrained("tiny-pydocs", progress=False)
    small = draft_for(target, tok)
    prompts_all = prompt_sets(tok, max(opts["batches"]), 64)["code"]
    print(f"machine: {machine()}; jax {jax.__version__} ({jax.default_backend()})")
    print(f"tiny-pydocs target ({target.num_params() / 1e6:.2f}M params, {target.cfg.n_layers} layers), draft "
          f"{small.num_params() / 1e6:.2f}M params ({small.cfg.n_layers} layer); stdlib-code prompts of 64 tokens, "
          f"{opts['new']} new tokens, best of {opts['repeats']}")

    def methods(temp0: bool):
        det = verify.greedy() if temp0 else verify.tree()
        out = {
            "plain": None,
            "prompt_lookup(2,8)": speculative(drafts.prompt_lookup(2, 8), det),
            "draft model L=4": speculative(drafts.model(small, num_draft=4), verify.greedy() if temp0 else verify.rejection()),
            "spectr k=2 L=4": speculative(drafts.model(small, num_draft=4, num_chains=2), spectr(2)),
        }
        for name, (src, why) in optional_sources(target).items():
            if src is None:
                print(f"  ({name}: skipped - {why})")
                continue
            out[name] = speculative(src, det)
        return out

    results = []
    header = f"{'method':<20} {'B':>2} {'T':>3} {'tokens/call':>11} {'tok/s':>8} {'speedup':>8} {'compile s':>9}"
    print(header)
    print("-" * len(header))
    for temp0 in (True, False):
        t = L.greedy() if temp0 else L.temperature(1.0)
        ms = methods(temp0)
        for B in opts["batches"]:
            prompts = prompts_all[:B]
            runs = {}
            for name, strat in ms.items():
                t0 = time.perf_counter()
                try:
                    generate(target, prompts, key=jax.random.key(0), max_new_tokens=opts["new"], logits=t, strategy=strat)
                except Exception as e:
                    print(f"{name:<20} {B:>2} {'0' if temp0 else '1':>3}  failed: {type(e).__name__}: {e}")
                    continue
                runs[name] = dict(compile=time.perf_counter() - t0, best=0.0, tpc=[])
            for r in range(opts["repeats"]):  # alternate methods so load hits all alike
                for name in runs:
                    t0 = time.perf_counter()
                    out = generate(target, prompts, key=jax.random.key(1 + r), max_new_tokens=opts["new"], logits=t,
                                   strategy=ms[name])
                    dt = time.perf_counter() - t0
                    runs[name]["best"] = max(runs[name]["best"], out.stats["generated_tokens"] / dt)
                    runs[name]["tpc"].append(out.stats["tokens_per_call"])
            base = runs["plain"]["best"]
            for name, rr in runs.items():
                rr["compile"] -= opts["new"] * B / rr["best"]
                row = dict(method=name, batch=B, temperature=0 if temp0 else 1, tokens_per_call=float(np.mean(rr["tpc"])),
                           tokens_per_s=rr["best"], speedup=rr["best"] / base, compile_s=max(rr["compile"], 0.0))
                results.append(row)
                print(f"{name:<20} {B:>2} {row['temperature']:>3} {row['tokens_per_call']:>11.2f} {row['tokens_per_s']:>8.1f} "
                      f"{row['speedup']:>7.2f}x {row['compile_s']:>9.1f}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
