"""Weight-only int8 decoding on SmolLM2-135M-Instruct: tokjax int8 vs tokjax float32 vs llama.cpp Q8_0 / F32.

    python benchmarks/int8_decode.py            # 128 prompt + 128 new at batch 1 and 8; 1024-token agreement
    python benchmarks/int8_decode.py --quick    # 32 + 32, batch 1, 256-token agreement

tokjax int8 is ``tokjax.model.quant.quantize_int8`` of the float32 model (per-output-channel symmetric
int8 weights, float32 activations; on CPU the projections run the FFI kernel of ``tokjax/model/_kernels``).
llama.cpp (``llama-cpp-python``, optional, 2 threads, batch 1) runs a Q8_0 and an F32 GGUF written from the
shipped Q4_1 file by ``llama_model_quantize``, so all engines start from the same dequantised weights.

Quality, int8 against float32 on README text (bundled with the repository): next-token argmax agreement
and perplexity teacher-forced over ``--agree`` tokens, and greedy continuations compared token by token.
Speed: decode ms per step and end-to-end tokens/s, all runners interleaved, best of ``--repeats``
(``decode_vs_transformers.measure``); ratios are tokjax int8's speed over each other engine's.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine  # noqa: E402
from decode_real import MODEL, llama_eval_fails, text_prompts  # noqa: E402
from decode_vs_transformers import first_divergence, measure, tokjax_runner  # noqa: E402

FULL = dict(prompt=128, new=128, batches=(1, 8), agree=1024, repeats=3)
QUICK = dict(prompt=32, new=32, batches=(1,), agree=256, repeats=2)


def llama_engines(src: Path, workdir: Path, n_ctx: int) -> dict:
    """{label: llama_cpp.Llama} for Q8_0 and F32 copies of the shipped file; {} when llama-cpp-python is absent."""
    try:
        import llama_cpp
    except ImportError:
        print("note: llama-cpp-python is not installed; llama.cpp skipped")
        return {}
    engines = {}
    for label, ftype in (("llama.cpp Q8_0", llama_cpp.LLAMA_FTYPE_MOSTLY_Q8_0), ("llama.cpp F32", llama_cpp.LLAMA_FTYPE_ALL_F32)):
        out = workdir / f"{label.split()[1]}.gguf"
        p = llama_cpp.llama_model_quantize_default_params()
        p.ftype, p.allow_requantize, p.nthread = ftype, True, 2
        try:
            rc = llama_cpp.llama_model_quantize(str(src).encode(), str(out).encode(), ctypes.byref(p))
            if rc != 0:
                raise RuntimeError(f"rc {rc}")
            why = llama_eval_fails(out)
            if why:
                raise RuntimeError(why)
            engines[label] = llama_cpp.Llama(str(out), n_ctx=n_ctx, n_batch=512, n_ubatch=512, n_threads=2,
                                             n_threads_batch=2, verbose=False)
        except Exception as e:  # noqa: BLE001 - an optional peer never fails the benchmark
            print(f"note: llama.cpp {label} unavailable ({e}); skipped")
    return engines


def agreement(model, qmodel, tok, n_tokens: int) -> dict:
    """Teacher-forced next-token agreement and perplexities of int8 vs float32 over windows of README text."""
    import jax
    import jax.numpy as jnp

    window = 256
    rows = text_prompts(tok, max(1, n_tokens // window), window + 1)
    x = jnp.asarray(rows[:, :-1], jnp.int32)
    y = np.asarray(rows[:, 1:])
    out = {}
    for name, m in (("f32", model), ("int8", qmodel)):
        logits = np.asarray(jax.jit(lambda p, t, m=m: m.replace(params=p)(t).logits)(m.params, x), np.float64)
        lse = np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1)) + logits.max(-1)
        nll = lse - np.take_along_axis(logits, y[..., None], -1)[..., 0]
        out[name] = dict(argmax=logits.argmax(-1), ppl=float(np.exp(nll.mean())))
    return {"tokens": int(y.size), "argmax_agreement": float(np.mean(out["f32"]["argmax"] == out["int8"]["argmax"])),
            "ppl_f32": out["f32"]["ppl"], "ppl_int8": out["int8"]["ppl"]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="32 + 32 at batch 1, 256-token agreement")
    ap.add_argument("--repeats", type=int, help="timed runs per setting (best reported)")
    ap.add_argument("--json", help="also write the results to this file")
    args = ap.parse_args(argv)
    opts = dict(QUICK if args.quick else FULL)
    if args.repeats:
        opts["repeats"] = args.repeats

    import jax

    import tokjax
    from tokjax.model.quant import int8_kernel_available, quantize_int8
    from tokjax.pretrained import gguf_model_path

    try:
        src = gguf_model_path(MODEL)
    except ValueError as e:
        print(f"note: {e}; benchmark skipped")
        return 0
    model, tok = tokjax.pretrained(MODEL)
    t = time.perf_counter()
    qmodel = quantize_int8(model)
    jax.block_until_ready(jax.tree.leaves(qmodel.params))
    print(f"machine: {machine()}; jax {jax.__version__} ({jax.default_backend()}); int8 CPU kernel "
          f"{'built' if int8_kernel_available() else 'UNAVAILABLE (XLA fallback)'}; quantized in {time.perf_counter() - t:.1f} s")
    tmp = tempfile.TemporaryDirectory()
    engines = llama_engines(src, Path(tmp.name), n_ctx=opts["prompt"] + opts["new"] + 8)
    results = {"machine": machine(), "opts": {k: list(v) if isinstance(v, tuple) else v for k, v in opts.items()}}

    q = agreement(model, qmodel, tok, opts["agree"])
    results["agreement"] = q
    print(f"teacher-forced over {q['tokens']} README tokens: int8 argmax = f32 argmax at "
          f"{100 * q['argmax_agreement']:.1f}%; perplexity f32 {q['ppl_f32']:.3f}, int8 {q['ppl_int8']:.3f} "
          f"({100 * (q['ppl_int8'] / q['ppl_f32'] - 1):+.2f}%)\n")

    header = f"{'B':>2}  {'engine':<16} {'decode ms/step':>15} {'decode tok/s':>13} {'end-to-end tok/s':>17} {'int8 speed-up':>14}"
    print(header + "\n" + "-" * len(header))
    results["decode"] = []
    for B in opts["batches"]:
        prompts = text_prompts(tok, B, opts["prompt"])
        runners = {"tokjax": tokjax_runner(qmodel, prompts), "tokjax f32": tokjax_runner(model, prompts)}
        runners["tokjax f32"](opts["new"])  # compile outside the timed runs (measure compiles only "tokjax")
        if B == 1:
            from decode_real import llama_runner

            runners.update({k: llama_runner(llm, prompts) for k, llm in engines.items()})
        res = measure(runners, opts["new"], opts["repeats"], budget_s=1e9)
        base = res["tokjax"]
        row = {"batch": B}
        for k, r in res.items():
            label = "tokjax int8" if k == "tokjax" else k
            ratio = "" if k == "tokjax" else f"{r['step_s'] / base['step_s']:.2f}x"
            print(f"{B:>2}  {label:<16} {1e3 * r['step_s']:>15.1f} {B / r['step_s']:>13.1f} "
                  f"{B * opts['new'] / r['e2e_s']:>17.1f} {ratio:>14}", flush=True)
            row[label] = {"step_s": r["step_s"], "e2e_s": r["e2e_s"]}
        div = first_divergence(base["tokens"], res["tokjax f32"]["tokens"])
        same = float(np.mean(base["tokens"] == res["tokjax f32"]["tokens"]))
        row.update(greedy_first_divergence=div, greedy_same_fraction=same)
        print(f"    greedy int8 vs f32 over {opts['new']} new tokens x {B}: "
              + ("identical" if div is None else f"first differ at step {div}, {100 * same:.0f}% of positions equal"))
        results["decode"].append(row)
    print("\nint8 speed-up = that engine's decode time per step / tokjax int8's (above 1: int8 is faster)")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=float) + "\n")
    tmp.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
