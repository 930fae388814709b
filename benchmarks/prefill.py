"""Long-prompt prefill on CPU: tokjax (fused causal-attention kernel, and without it) vs transformers.

    python benchmarks/prefill.py            # 1024, 2048, 4096 tokens; SmolLM2-135M-Instruct and the Llama-like shape
    python benchmarks/prefill.py --quick    # 256 and 512 tokens, SmolLM2 only

Prefill = prompt in, first token out at batch 1: ``tokjax.generate(max_new_tokens=1)`` (greedy)
against transformers' ``generate(max_new_tokens=1)`` with 1 and 2 torch threads (the faster is
compared against), float32 weights in both: SmolLM2-135M-Instruct from the shipped GGUF
(``tokjax.pretrained`` / transformers' GGUF loader) and the ~110M Llama-like shape with random
weights written by ``save_hf`` and read by both. tokjax runs twice: as shipped (causal attention
through ``tokjax.model.causal_kernel`` on CPU) and in a child process with
``TOKJAX_ATTENTION_KERNEL=0`` (XLA's query-block attention), so the kernel's share is measured on
the same machine in the same run. Each time is the best of ``--repeats`` runs after one warm-up
(tokjax's warm-up is also its compile). Ratios are the other engine's time / tokjax's.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, timeit  # noqa: E402
from decode_vs_transformers import random_model, tokjax_runner, transformers_runner  # noqa: E402

FULL = dict(lengths=(1024, 2048, 4096), models=("smollm2", "llama-like"), repeats=2)
QUICK = dict(lengths=(256, 512), models=("smollm2",), repeats=2)


def load(name: str, max_len: int, workdir: Path, with_hf: bool = True):
    """Returns (tokjax Model, transformers model or None, note) of a benchmarked model."""
    import tokjax
    from tokjax.io import load_hf, save_hf
    from tokjax.model import ModelConfig

    if name == "smollm2":
        from tokjax.pretrained import gguf_model_path

        model, _ = tokjax.pretrained("smollm2-135m-instruct")
        src = gguf_model_path("smollm2-135m-instruct")
        hf_load = dict(pretrained_model_name_or_path=str(src.parent), gguf_file=src.name)
    else:
        model = random_model(ModelConfig.llama_like(max_len=max_len))
        d = workdir / name
        save_hf(model, d)
        model, _ = load_hf(d)
        hf_load = dict(pretrained_model_name_or_path=str(d))
    if not with_hf:
        return model, None, ""
    try:
        import torch
        import transformers

        hf = transformers.AutoModelForCausalLM.from_pretrained(**hf_load, dtype=torch.float32).eval()
        return model, hf, f"transformers {transformers.__version__} (torch {torch.__version__})"
    except Exception as e:  # noqa: BLE001 - a missing peer is skipped with a note, never a failure
        return model, None, f"transformers skipped ({type(e).__name__}: {e})"


def prompts_of(vocab: int, T: int) -> np.ndarray:
    return np.random.default_rng(T).integers(3, vocab, size=(1, T), dtype=np.int64)


def tokjax_times(name: str, lengths, repeats: int, workdir: Path) -> dict:
    model, _, _ = load(name, max(lengths) + 8, workdir, with_hf=False)
    out = {}
    for T in lengths:
        run = tokjax_runner(model, prompts_of(model.cfg.vocab_size, T))
        run(1)
        out[T] = min(timeit(lambda: run(1), repeats))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="256 and 512 tokens, SmolLM2 only")
    ap.add_argument("--repeats", type=int)
    ap.add_argument("--lengths", help="comma-separated prompt lengths (default 1024,2048,4096; quick 256,512)")
    ap.add_argument("--models", help="comma-separated: smollm2, llama-like")
    ap.add_argument("--json", help="also write the results to this file")
    ap.add_argument("--tokjax-only", help=argparse.SUPPRESS)  # child process: model name; prints JSON times
    args = ap.parse_args(argv)
    opts = dict(QUICK if args.quick else FULL)
    if args.repeats:
        opts["repeats"] = args.repeats
    if args.lengths:
        opts["lengths"] = tuple(int(x) for x in args.lengths.split(","))
    if args.models:
        opts["models"] = tuple(args.models.split(","))
    work = tempfile.TemporaryDirectory()
    if args.tokjax_only:
        print(json.dumps(tokjax_times(args.tokjax_only, opts["lengths"], opts["repeats"], Path(work.name))))
        return 0

    import jax

    from tokjax.model.causal_kernel import causal_kernel_available
    from tokjax.pretrained import gguf_model_path

    print(f"machine: {machine()}; jax {jax.__version__} ({jax.default_backend()}); attention kernel "
          f"{'available' if causal_kernel_available() else 'unavailable'}")
    results = {"machine": machine(), "rows": []}
    for name in opts["models"]:
        if name == "smollm2":
            try:
                gguf_model_path("smollm2-135m-instruct")
            except ValueError as e:
                print(f"note: {e}; SmolLM2 skipped")
                continue
        model, hf, note = load(name, max(opts["lengths"]) + 8, Path(work.name))
        print(f"\n{name} ({model.cfg.n_layers} layers, d={model.cfg.d_model}, {model.cfg.n_heads}/{model.cfg.kv_heads} "
              f"heads), {note}; best of {opts['repeats']}")
        env = {**os.environ, "TOKJAX_ATTENTION_KERNEL": "0"}
        cmd = [sys.executable, __file__, "--tokjax-only", name, "--repeats", str(opts["repeats"]),
               "--lengths", ",".join(map(str, opts["lengths"]))]
        child = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if child.returncode != 0:
            print(f"note: the kernel-off child failed: {child.stderr[-400:]}")
        off = json.loads(child.stdout.strip().splitlines()[-1]) if child.returncode == 0 else {}
        print(f"{'tokens':>6} {'tokjax ms':>10} {'no kernel ms':>13} {'kernel x':>9} {'transformers ms':>16} "
              f"{'threads':>8} {'tokjax x':>9}")
        for T in opts["lengths"]:
            prompts = prompts_of(model.cfg.vocab_size, T)
            run = tokjax_runner(model, prompts)
            run(1)
            tj = min(timeit(lambda: run(1), opts["repeats"]))
            row = {"model": name, "tokens": T, "tokjax_s": tj, "no_kernel_s": off.get(str(T))}
            if hf is not None:
                hf_t = {}
                for threads in (1, 2):
                    r = transformers_runner(hf, prompts, threads)
                    r(1)
                    hf_t[threads] = min(timeit(lambda: r(1), opts["repeats"]))
                best = min(hf_t, key=hf_t.get)
                row.update(transformers_s=hf_t[best], transformers_threads=best, ratio=hf_t[best] / tj)
            nk = row["no_kernel_s"]
            cells = [f"{T:>6}", f"{1e3 * tj:>10.0f}", f"{'' if nk is None else f'{1e3 * nk:.0f}':>13}",
                     f"{'' if nk is None else f'{nk / tj:.2f}x':>9}"]
            if hf is not None:
                cells += [f"{1e3 * row['transformers_s']:>16.0f}", f"{best:>8}", f"{row['ratio']:>8.2f}x"]
            print(" ".join(cells), flush=True)
            results["rows"].append(row)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
