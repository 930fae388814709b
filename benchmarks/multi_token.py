"""Multi-token objectives: train-step time and peak memory as ratios to next-token prediction (issue 23).

    python benchmarks/multi_token.py [--quick] [--json out.json]

Every arm is one jitted ``tokjax.train`` step (value_and_grad of the registered loss, AdamW update) on the
same backbone, batch and sequence length, so a ratio is what a user pays per step for switching the loss:

* ``next_token``: ``next_token_loss`` (the baseline, ratio 1);
* ``caft``: P40 CAFT, K = 4 auxiliary heads (each a causal layer) on the final hidden, alpha = 0.01;
* ``ftp``: P66 future token prediction, N = 4 future tokens, m = 4 memory slots, its own small decoder
  over the B T mini-sequences (chunked);
* ``mlm_u``: P8 MLM-U, the encoder over the visible tokens plus a decoder stack of position-only queries
  (the backbone's depth), half of every row a "path".

Peak memory is XLA's own account of the compiled step (``memory_analysis()``: arguments + outputs +
temporaries, the buffers live at once), so it needs no allocator hooks and means the same on CPU and GPU.
Step time is the median of timed steps after a warm step.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, time_train_steps  # noqa: E402

ARMS = ("next_token", "caft", "ftp", "mlm_u")


def _arm(name: str, cfg, key):
    """Returns (params, loss_fn, extra batch fields) of one arm on backbone ``cfg``."""
    from tokjax.losses import next_token_loss
    from tokjax.losses.caft import init_caft_heads, make_caft_loss
    from tokjax.losses.future_token_prediction import ftp_config, init_ftp
    from tokjax.losses.mlm_u import init_mlm_u
    from tokjax.losses.registry import make_loss
    from tokjax.model import init_params

    params = init_params(cfg, key)
    if name == "next_token":
        return params, next_token_loss
    if name == "caft":
        return init_caft_heads(params, cfg, key, 4), make_caft_loss(alpha=0.01, schedule="constant")
    if name == "ftp":
        fc = ftp_config(cfg, n_future=4, m_slots=4)
        params = init_ftp(params, cfg, key, n_future=4, m_slots=4, decoder_cfg=fc.decoder)
        return params, make_loss("ftp", decoder_cfg=fc.decoder, n_future=4, m_slots=4, decay=0.8, chunk=512)
    if name == "mlm_u":
        return init_mlm_u(params, cfg, key, n_layers=cfg.n_layers), make_loss("mlm_u")
    raise ValueError(f"unknown arm {name!r}; expected one of {ARMS}")


def _batch(name: str, cfg, batch_size: int, seq_len: int, rng: np.random.Generator) -> dict:
    tokens = rng.integers(0, cfg.vocab_size, (batch_size, seq_len + 1)).astype(np.int32)
    if name != "mlm_u":
        return {"tokens": tokens}
    path = np.zeros((batch_size, seq_len + 1), bool)
    path[:, (seq_len + 1) // 2:] = True  # the second half of every row is the path MLM-U masks
    return {"tokens": tokens, "path_mask": path}


def bench_arm(name: str, cfg, batch_size: int, seq_len: int, steps: int) -> dict:
    """Returns the compile time, median step time and compiled peak bytes of one arm."""
    import jax

    from tokjax.train import TrainConfig, init_state, make_optimizer, make_train_step

    params, loss = _arm(name, cfg, jax.random.key(0))
    opt = make_optimizer(TrainConfig(total_steps=1000, warmup_steps=10, batch_size=batch_size, seq_len=seq_len))
    state = init_state(None, opt, 0, params=params)
    step = make_train_step(cfg, opt, loss)
    rng = np.random.default_rng(0)
    batches = [_batch(name, cfg, batch_size, seq_len, rng) for _ in range(3)]
    mem = step.lower(state, batches[0]).compile().memory_analysis()
    peak = None if mem is None else int(mem.argument_size_in_bytes + mem.output_size_in_bytes
                                         + mem.temp_size_in_bytes - mem.alias_size_in_bytes)
    compile_s, step_s = time_train_steps(step, state, batches, steps)
    return {"arm": name, "params": int(sum(x.size for x in jax.tree.leaves(params))), "compile_s": compile_s,
            "step_ms": 1e3 * step_s, "peak_bytes": peak}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a smaller backbone and fewer timed steps (~1-2 min)")
    ap.add_argument("--json", help="also write the results to this JSON file")
    args = ap.parse_args(argv)

    import jax

    from tokjax.model import ModelConfig

    if args.quick:
        cfg, B, T, steps = ModelConfig(vocab_size=512, d_model=128, n_layers=2, n_heads=4, max_len=128), 8, 64, 3
    else:
        cfg, B, T, steps = ModelConfig(vocab_size=2048, d_model=256, n_layers=4, n_heads=4, max_len=256), 8, 256, 10
    rows = [bench_arm(a, cfg, B, T, steps) for a in ARMS]
    base = rows[0]
    print(f"# multi-token objectives: one train step vs next-token prediction  ({machine()}, jax {jax.__version__}, "
          f"{jax.default_backend()})")
    print(f"# backbone d={cfg.d_model} x {cfg.n_layers} layers, vocab {cfg.vocab_size}, batch {B} x {T} tokens")
    hdr = f"{'arm':<11} {'params':>10} {'compile s':>9} {'step ms':>9} {'x NTP':>6} {'peak MiB':>9} {'x NTP':>6}"
    print(hdr)
    print("-" * len(hdr))
    for r in rows:
        r["step_ratio"] = r["step_ms"] / base["step_ms"]
        r["peak_ratio"] = None if r["peak_bytes"] is None else r["peak_bytes"] / base["peak_bytes"]
        peak = "n/a" if r["peak_bytes"] is None else f"{r['peak_bytes'] / 2**20:.1f}"
        pr = "n/a" if r["peak_ratio"] is None else f"{r['peak_ratio']:.2f}"
        print(f"{r['arm']:<11} {r['params']:>10,} {r['compile_s']:>9.1f} {r['step_ms']:>9.1f} {r['step_ratio']:>6.2f} "
              f"{peak:>9} {pr:>6}")
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": machine(), "batch": B, "seq_len": T, "rows": rows},
                                              indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
