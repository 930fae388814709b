"""Decode speed: tokjax.generate against transformers' generate on the same random weights, CPU, one process.

    python benchmarks/decode_vs_transformers.py            # GPT-2-small and Llama-like shapes, batch 1 and 8
    python benchmarks/decode_vs_transformers.py --quick    # small shapes, a minute

Each model is built with random weights in tokjax, written with ``tokjax.io.save_hf`` and read
back by both libraries (so both run bit-identical float32 weights). Both decode greedily,
``--prompt`` prompt tokens then ``--new`` new tokens, no early stop. transformers runs its
default ``generate`` (dynamic cache, sdpa attention) under ``torch.inference_mode`` twice: with
one thread and with torch's default thread count, because on small machines the default can be
an order of magnitude slower; the ratio is taken against the faster of the two.

Runs of the two libraries alternate and the best of ``--repeats`` is kept, so load from other
processes on a shared machine hits both alike. Reported per (model, batch): end-to-end tokens/s
(prefill + decode, what a user waits for), decode ms per step (a 1-new-token run subtracted from
the full run), tokjax compile time (first call minus the best warm call), the ratio against
the best transformers setting, and at batch 1 the achieved memory bandwidth of decoding,
(parameter bytes + mean KV-cache bytes read per step) / step time, against a jitted float32
matrix-vector product in the same process, the bandwidth bound of batch-1 decoding, and against
a chain of XLA matvecs over the model's own weight matrices (what XLA's CPU kernels reach on
these shapes, mostly on one core).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, matvec_bandwidth, timeit  # noqa: E402

FULL = dict(prompt=128, new=128, batches=(1, 8), repeats=3)
QUICK = dict(prompt=32, new=32, batches=(1, 8), repeats=2)


def shapes(quick: bool):
    """Returns {name: ModelConfig} of the benchmarked shapes."""
    from tokjax.model import ModelConfig

    if quick:
        return {
            "gpt2-mini": ModelConfig.gpt2_small(
                vocab_size=8192, d_model=256, n_layers=4, n_heads=4, d_ff=1024, max_len=128
            ),
            "llama-mini": ModelConfig.llama_like(
                vocab_size=8192, d_model=256, n_layers=4, n_heads=4, n_kv_heads=2, d_ff=704, max_len=128
            ),
        }
    return {"gpt2-small": ModelConfig.gpt2_small(), "llama-like": ModelConfig.llama_like()}


def random_model(cfg, seed=0):
    """Returns a tokjax Model with N(0, 0.02) weights and unit norms (numpy RNG: fast for 100M+ parameters)."""
    import jax
    import jax.numpy as jnp

    from tokjax.model import Model, param_specs

    rng = np.random.default_rng(seed)

    def make(spec):
        if spec.init == "ones":
            return jnp.ones(spec.shape, jnp.float32)
        if spec.init == "zeros":
            return jnp.zeros(spec.shape, jnp.float32)
        return jnp.asarray(rng.standard_normal(spec.shape, dtype=np.float32) * np.float32(0.02 * spec.scale))

    params = jax.tree.map(make, param_specs(cfg), is_leaf=lambda s: hasattr(s, "init"))
    return Model(params=params, cfg=cfg)


def read_bytes_per_step(cfg, batch: int, context: float) -> tuple[int, int]:
    """Returns (parameter bytes, KV-cache bytes) one decode step must read at mean ``context`` length."""
    import math

    from tokjax.model import param_shapes
    import jax

    shapes_ = param_shapes(cfg)
    total = sum(math.prod(s.shape) * s.dtype.itemsize for s in jax.tree.leaves(shapes_))
    emb = math.prod(shapes_["embed"].shape) * 4
    # The embedding gather reads B rows, not the table, unless the table is also the tied head.
    params = total - (0 if cfg.tied_embeddings else emb)
    if cfg.positions == "learned":
        params -= math.prod(shapes_["pos_embed"].shape) * 4
    cache = int(2 * cfg.n_layers * batch * context * cfg.kv_heads * cfg.head_size * 4)
    return params, cache


def weights_matvec_bandwidth(model, repeats: int = 5) -> float:
    """Returns bytes/s of one jitted chain of vector-matrix products over the model's own weight matrices.

    The same [1, D] @ [D, N] products a batch-1 decode step runs (fused q/k/v and gate/up, the
    head), with nothing else: what XLA's CPU matvec achieves on these shapes. Layer-sized
    matrices run on one core (the 256 MiB reference matvec uses both), so this is the
    practical ceiling of the step's matmuls.
    """
    import jax
    import jax.numpy as jnp

    from tokjax.model import lm_head, unstack_layers

    params = unstack_layers(model.params, fuse=True)
    mats = [w.reshape(w.shape[0], -1) if w.shape[0] == model.cfg.d_model else w.reshape(-1, w.shape[-1])
            for layer in params["layers"] for name, w in layer.items() if name.startswith("w")]
    mats.append(lm_head(params, model.cfg))

    @jax.jit
    def chain(mats):
        acc = jnp.zeros((), jnp.float32)
        for w in mats:  # each product's input depends on the last, so none is skipped or reordered
            x = jnp.full((1, w.shape[0]), 1e-3, jnp.float32) + acc
            acc = acc + 1e-9 * (x @ w)[0, 0]
        return acc

    chain(mats).block_until_ready()
    best = min(timeit(lambda: chain(mats).block_until_ready(), repeats))
    return sum(w.size * 4 for w in mats) / best


def tokjax_runner(model, prompts):
    """Returns run(n) -> new tokens [B, n] of tokjax.generate greedy."""
    import tokjax
    from tokjax import logits as L

    P = prompts.shape[1]

    def run(n):
        return np.asarray(tokjax.generate(model, prompts, max_new_tokens=n, logits=L.greedy()).tokens[:, P:])

    return run


def transformers_runner(hf, prompts, threads):
    """Returns run(n) -> new tokens [B, n] of transformers' greedy generate with ``threads`` torch threads."""
    import torch

    ids = torch.tensor(prompts, dtype=torch.long)
    mask = torch.ones_like(ids)

    def run(n):
        torch.set_num_threads(threads)  # process-wide, so set on every call
        with torch.inference_mode():
            out = hf.generate(
                ids, attention_mask=mask, max_new_tokens=n, min_new_tokens=n, do_sample=False, num_beams=1,
                pad_token_id=0, eos_token_id=None,
            )
        return out[:, ids.shape[1]:].numpy()

    return run


def _timed(run, n):
    t = time.perf_counter()
    out = run(n)
    return time.perf_counter() - t, out


def measure(runners: dict, n_new: int, repeats: int, budget_s: float) -> dict:
    """Returns {name: {e2e_s, step_s, first_s, tokens, extrapolated}} timing every runner interleaved.

    Runs alternate (a, b, a, b, ...) so load from other processes hits every runner alike, and
    the best of ``repeats`` is kept. ``e2e_s``: prompt + n_new tokens; ``step_s``: (full - 1-token
    run) / (n_new - 1); ``first_s``: the first full call (tokjax: includes compilation). A
    runner whose full run would exceed ``budget_s`` is extrapolated from 1- and 9-token runs.
    """
    res = {}
    for name, run in runners.items():
        first, _ = _timed(run, n_new if name == "tokjax" else 1)
        one = min(_timed(run, 1)[0] for _ in range(2))
        nine = min(_timed(run, 9)[0] for _ in range(2))
        step = max(nine - one, 1e-9) / 8
        res[name] = {"first_s": first, "one": [one], "full": [], "tokens": None, "extrapolated": False}
        if one + (n_new - 1) * step > budget_s:
            res[name].update(extrapolated=True, e2e_s=one + (n_new - 1) * step, step_s=step)
    live = [n for n in runners if not res[n]["extrapolated"]]
    for _ in range(repeats):
        for name in live:
            t, toks = _timed(runners[name], n_new)
            res[name]["full"].append(t)
            res[name]["tokens"] = toks
            res[name]["one"].append(_timed(runners[name], 1)[0])
    for name in live:
        r = res[name]
        r["e2e_s"] = min(r["full"])
        r["step_s"] = (r["e2e_s"] - min(r["one"])) / (n_new - 1)
    for r in res.values():
        r.pop("full"), r.pop("one")
    return res


def first_divergence(a: np.ndarray, b: np.ndarray) -> int | None:
    """Returns the first decode step where any row's greedy tokens differ, or None when all agree."""
    diff = np.flatnonzero((a != b).any(axis=0))
    return int(diff[0]) if diff.size else None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="small shapes and lengths (a minute)")
    ap.add_argument("--models", help="comma-separated subset of the model names")
    ap.add_argument("--batches", help="comma-separated batch sizes (default 1,8)")
    ap.add_argument("--prompt", type=int, help="prompt tokens (default 128, quick 32)")
    ap.add_argument("--new", type=int, help="new tokens (default 128, quick 32)")
    ap.add_argument("--repeats", type=int, help="timed runs per setting (best reported)")
    ap.add_argument("--budget", type=float, default=90.0,
                    help="seconds a full run may take before it is extrapolated instead (default 90)")
    ap.add_argument("--torch-threads", help="comma-separated torch thread counts (default: 1 and torch's default)")
    ap.add_argument("--json", help="also write the results to this file")
    args = ap.parse_args(argv)
    opts = dict(QUICK if args.quick else FULL)
    for k in ("prompt", "new", "repeats"):
        if getattr(args, k) is not None:
            opts[k] = getattr(args, k)
    if args.batches:
        opts["batches"] = tuple(int(b) for b in args.batches.split(","))

    import jax

    from tokjax.io import load_hf, save_hf

    try:
        import torch
        import transformers
    except ImportError:
        print("transformers/torch not installed (pip install -e '.[hf]'): nothing to compare against; skipped")
        return 0
    default_threads = torch.get_num_threads()
    threads = (
        [int(t) for t in args.torch_threads.split(",")] if args.torch_threads
        else sorted({1, default_threads})
    )

    print(f"machine: {machine()}; jax {jax.__version__} ({jax.default_backend()}), torch {torch.__version__} "
          f"(default threads {default_threads}), transformers {transformers.__version__}")
    bw = matvec_bandwidth()
    print(f"measured bandwidth (jitted f32 matvec, 256 MiB): {bw / 1e9:.1f} GB/s")
    print(f"greedy, {opts['prompt']} prompt + {opts['new']} new tokens, float32, best of {opts['repeats']} "
          "interleaved runs\n")

    models = shapes(args.quick)
    if args.models:
        models = {k: v for k, v in models.items() if k in args.models.split(",")}
    results = {
        "machine": machine(), "bandwidth_GBps": [bw / 1e9], "runs": [],
        "opts": {k: list(v) if isinstance(v, tuple) else v for k, v in opts.items()},
    }
    header = f"{'model':<11} {'B':>2}  {'implementation':<33} {'tokens/s':>9} {'decode ms/step':>15} {'compile s':>10}"
    print(header)
    print("-" * len(header))
    rng = np.random.default_rng(0)
    for name, cfg in models.items():
        model = random_model(cfg)
        with tempfile.TemporaryDirectory() as d:
            save_hf(model, d)
            model, _ = load_hf(d)  # the same bytes feed both libraries
            hf = transformers.AutoModelForCausalLM.from_pretrained(d).eval()
        for B in opts["batches"]:
            prompts = rng.integers(0, cfg.vocab_size, (B, opts["prompt"]))
            n_tok = B * opts["new"]
            runners = {"tokjax": tokjax_runner(model, prompts)}
            runners.update({f"transformers_{t}": transformers_runner(hf, prompts, t) for t in threads})
            res = measure(runners, opts["new"], opts["repeats"], args.budget)
            tj = res["tokjax"]
            tj["compile_s"] = tj["first_s"] - tj["e2e_s"]
            row = {"model": name, "batch": B}
            for k, r in res.items():
                row[k] = {f: v for f, v in r.items() if f != "tokens"}
                if k == "tokjax":
                    label, comp = "tokjax", f"{tj['compile_s']:.1f}"
                else:
                    t = int(k.split("_")[1])
                    label = f"transformers {t} thread{'s' if t > 1 else ''}" + (" *" if r["extrapolated"] else "")
                    label += " (default)" if t == default_threads else ""
                    comp = ""
                print(f"{name if k == 'tokjax' else '':<11} {B if k == 'tokjax' else '':>2}  {label:<33} "
                      f"{n_tok / r['e2e_s']:>9.1f} {1e3 * r['step_s']:>15.1f} {comp:>10}", flush=True)
            best_k = min((k for k in res if k != "tokjax"), key=lambda k: res[k]["e2e_s"])
            hb = res[best_k]
            ref = next((res[k]["tokens"] for k in res if k != "tokjax" and res[k]["tokens"] is not None), None)
            div = first_divergence(tj["tokens"], ref) if ref is not None else -1
            t_best = int(best_k.split("_")[1])
            row.update(
                best_threads=t_best, ratio_e2e=hb["e2e_s"] / tj["e2e_s"], ratio_decode=hb["step_s"] / tj["step_s"],
                greedy_first_divergence=div,
            )
            line = (f"{'':<15}tokjax / best transformers ({t_best} thread{'s' if t_best > 1 else ''}): "
                    f"{row['ratio_e2e']:.2f}x end-to-end, {row['ratio_decode']:.2f}x per decode step; greedy tokens "
                    + ("identical" if div is None else "not compared" if div == -1 else
                       f"first differ at step {div} (a near tie of random logits)"))
            if B == 1:
                bw = max(bw, matvec_bandwidth(repeats=5))  # the machine's best, as other processes come and go
                results["bandwidth_GBps"].append(bw / 1e9)
                pb, cb = read_bytes_per_step(cfg, B, opts["prompt"] + opts["new"] / 2)
                ach, ach_hf = (pb + cb) / tj["step_s"], (pb + cb) / hb["step_s"]
                wbw = weights_matvec_bandwidth(model)
                row.update(weights_matvec_GBps=wbw / 1e9, achieved_fraction_of_weights_matvec=ach / wbw)
                row.update(bytes_per_step=pb + cb, achieved_GBps=ach / 1e9, achieved_fraction=ach / bw,
                           transformers_achieved_GBps=ach_hf / 1e9, bandwidth_GBps=bw / 1e9)
                line += (f"\n{'':<15}bandwidth: {(pb + cb) / 1e6:.0f} MB read per step -> tokjax {ach / 1e9:.1f} GB/s "
                         f"({100 * ach / bw:.0f}% of the measured {bw / 1e9:.1f} GB/s), transformers "
                         f"{ach_hf / 1e9:.1f} GB/s ({100 * ach_hf / bw:.0f}%); XLA's own matvecs over these weight "
                         f"matrices alone: {wbw / 1e9:.1f} GB/s (tokjax at {100 * ach / wbw:.0f}% of that)")
            print(line, flush=True)
            results["runs"].append(row)
        del hf
    print(f"\n* extrapolated from runs of 1 and 9 new tokens (a full run would take over {args.budget:.0f} s)")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
