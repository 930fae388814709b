"""Training throughput: tokens/s of tokjax's jitted train step and its model-FLOPs utilisation (MFU).

    python benchmarks/train_throughput.py [--quick] [--json out.json]

MFU = achieved model FLOP/s / peak FLOP/s, where the peak is *measured* in this process as
the best rate of a large jitted float32 matmul (the best case for the machine's BLAS), and the
model FLOPs per trained token are the usual 6 N + 12 L d T: 6 per matmul parameter (forward 2,
backward 4; the tied/untied output head included, the embedding lookup not) plus the attention
score and value products over a context of T tokens. The step time includes the optimiser
update and the host->device copy of the batch, as in real training.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, time_train_steps, timeit  # noqa: E402


def matmul_peak(n: int, repeats: int) -> float:
    """Returns the best FLOP/s of a jitted float32 [n, n] @ [n, n] matmul (2 n^3 flops)."""
    import jax
    import jax.numpy as jnp

    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
    f = jax.jit(lambda a, b: a @ b)
    f(a, b).block_until_ready()
    best = min(timeit(lambda: f(a, b).block_until_ready(), repeats))
    return 2.0 * n**3 / best


def model_flops_per_token(cfg, seq_len: int) -> float:
    """Returns the training FLOPs per token: 6 * matmul params + 12 * layers * attention width * seq_len."""
    import math

    import jax

    from tokjax.model import param_shapes

    shapes = param_shapes(cfg)
    layer_mats = sum(math.prod(s.shape) for s in jax.tree.leaves(shapes["layers"]) if len(s.shape) >= 3)
    head = cfg.d_model * cfg.vocab_size  # the output projection, tied or not; the embedding lookup is free
    n_matmul = layer_mats + head
    attn = 12 * cfg.n_layers * cfg.n_heads * cfg.head_size * seq_len
    return 6.0 * n_matmul + attn


def bench_model(name: str, cfg, batch_size: int, seq_len: int, steps: int) -> dict:
    """Returns timing and FLOP figures of ``steps`` jitted train steps of ``cfg``."""
    from tokjax.train import TrainConfig, init_state, make_optimizer, make_train_step

    tc = TrainConfig(total_steps=1000, warmup_steps=10, batch_size=batch_size, seq_len=seq_len)
    opt = make_optimizer(tc)
    state = init_state(cfg, opt, 0)
    step = make_train_step(cfg, opt)
    rng = np.random.default_rng(0)
    batches = [
        {"tokens": rng.integers(0, cfg.vocab_size, (batch_size, seq_len + 1)).astype(np.int32)} for _ in range(4)
    ]
    compile_s, step_s = time_train_steps(step, state, batches, steps)
    tokens = batch_size * seq_len
    fpt = model_flops_per_token(cfg, seq_len)
    return {
        "model": name,
        "params": cfg.num_params(),
        "batch": batch_size,
        "seq_len": seq_len,
        "compile_s": compile_s,
        "step_ms": 1e3 * step_s,
        "tokens_per_s": tokens / step_s,
        "model_flops_per_token": fpt,
        "model_flops_per_s": fpt * tokens / step_s,
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer timed steps, smaller peak matmul (~1 min)")
    ap.add_argument("--json", help="also write the results to this JSON file")
    args = ap.parse_args(argv)

    import jax

    from tokjax.model import ModelConfig
    from tokjax.pretrained import pretrained_config

    steps = 3 if args.quick else 10
    n = 1024 if args.quick else 2048
    peak = matmul_peak(n, 5 if args.quick else 10)
    rows = []
    for name in ("tiny-test", "tiny-pydocs"):
        run = pretrained_config(name)
        cfg = run.model_config(run.tokenizer.vocab_size)
        rows.append(bench_model(name, cfg, run.train.batch_size, run.train.seq_len, steps))
    if not args.quick:
        rows.append(bench_model("ModelConfig.small", ModelConfig.small(vocab_size=2048), 16, 256, steps))
    for r in rows:
        r["mfu"] = r["model_flops_per_s"] / peak

    print(f"# train step throughput  ({machine()}, jax {jax.__version__}, {jax.default_backend()})")
    print(f"# peak: {peak / 1e9:.1f} GFLOP/s (best jitted f32 {n}x{n} matmul in this process)")
    hdr = f"{'model':<18} {'params':>10} {'batch x seq':>12} {'compile s':>9} {'step ms':>9} {'tokens/s':>10} {'GFLOP/s':>9} {'MFU':>6}"
    print(hdr)
    print("-" * len(hdr))
    for r in rows:
        print(
            f"{r['model']:<18} {r['params']:>10,} {str(r['batch']) + ' x ' + str(r['seq_len']):>12} "
            f"{r['compile_s']:>9.1f} {r['step_ms']:>9.1f} {r['tokens_per_s']:>10,.0f} "
            f"{r['model_flops_per_s'] / 1e9:>9.2f} {100 * r['mfu']:>5.1f}%"
        )
    if args.json:
        Path(args.json).write_text(json.dumps({"peak_flops": peak, "machine": machine(), "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
