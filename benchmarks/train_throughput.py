"""Training throughput: tokens/s of tokjax's jitted train step, its model-FLOPs utilisation (MFU), the forward vs
backward cost, the layer-loop options of the step, and a plain ``flax.nnx`` + ``optax`` baseline of the same model.

    python benchmarks/train_throughput.py [--quick] [--presets tiny-pydocs,small,llama-like] [--json out.json]

MFU = achieved model FLOP/s / peak FLOP/s, where the peak is *measured* in this process as
the best rate of a large jitted float32 matmul (the best case for the machine's BLAS), and the
model FLOPs per trained token are the usual 6 N + 12 L d T: 6 per matmul parameter (forward 2,
backward 4; the tied/untied output head included, the embedding lookup not) plus the attention
score and value products over a context of T tokens. The step time includes the optimiser
update and the host->device copy of the batch, as in real training.

Per preset, every arm is timed in one loop that interleaves them (machine load hits all alike) and is reported as
a ratio to tokjax's default step:

* ``default``: ``make_train_step`` as ``train()`` builds it (the defaults ``DEFAULT_SCAN_UNROLL`` /
  ``DEFAULT_REMAT`` of tokjax.train._step, cut cross-entropy, the state donated);
* ``scan`` / ``unrolled``: ``scan_unroll=1`` (one compiled layer in a ``lax.scan``) / ``True`` (a straight-line
  program over the layers); ``remat=dots`` / ``remat=full``: per-layer ``jax.checkpoint`` with ``dots_saveable`` /
  ``nothing_saveable``; ``naive CE``: the loss with materialised [B*T, V] logits (``method="naive"``);
  ``no donation``: ``donate=False``;
* ``last:4 one scan`` / ``frozen prefix``: ``trainable=("last:4",)`` (the last 4 stacked layers train; fewer on a
  model of <= 4 layers) with the layers in one scan (``split_frozen=False``: the backward runs through every layer)
  / as the step builds it (the frozen layers in a scan of their own under ``stop_gradient``, so the backward never
  enters them); presets ``smollm2-135m`` (SmolLM2-135M's shape, random init, 4 x 128) and ``deep-narrow``
  (30 layers, d=64) are the cases they are for: ``--presets smollm2-135m --arms "last:4 one scan,frozen prefix"``;
* ``flax.nnx``: the same architecture written as a plain ``flax.nnx`` module (Python loop over layers,
  ``jax.nn.dot_product_attention``, materialised logits + ``optax.softmax_cross_entropy_with_integer_labels``) trained
  by the same ``optax`` AdamW chain (global-norm clipping, warmup-cosine, decay on matrices) in one ``jax.jit``.

``fwd ms`` / ``grad ms`` time the jitted loss alone and its ``value_and_grad`` (default options), so
``bwd/fwd = (grad - fwd) / fwd``. Every time is reported by the wall clock and by this process's CPU seconds;
on a loaded machine read the CPU columns (MFU cpu uses the matmul peak per CPU second).

Measured 2026-12-06 (AMD EPYC, 2 cores, other jobs paused; wall-clock step ms, ratio to the default):

    preset             default  scan         unrolled     remat=dots   remat=full   naive CE     no donation  flax.nnx
    tiny-pydocs 16x128  122     125 0.98x    117 1.04x    121 1.01x    131 0.93x    119 1.02x    117 1.04x    179 0.68x
    small 8x512        1176    1136 1.04x   1091 1.08x   1169 1.01x   1290 0.91x   1084 1.08x   1071 1.10x   2093 0.56x

(MFU 47.4% / 64.2% of ~215 GFLOP/s, bwd/fwd 2.43 / 2.09.) The default is ``scan_unroll="auto", remat="none"``
(tokjax.train._step.DEFAULT_*): stacks of up to ``tokjax.model.forward.AUTO_UNROLL_MAX_LAYERS`` layers run unrolled,
so ``default`` and ``unrolled`` are one program here and their 1.04-1.08x is run-to-run noise; in the four runs
that compared them, unrolling beat the scan by 1.04-1.22x (the scan zero-fills its stacked residual buffers).
Earlier profiles of the small gradient found the differentiated query-block attention (its [T, T] weights stored
per layer) and transposed copies feeding the weight-gradient matmuls; both are gone (the attention backward kernel
of tokjax.model.causal_kernel; 2-D projections in tokjax.model.forward).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import alternate_timings_cpu, machine, time_train_steps, timeit  # noqa: E402

ARMS = ("default", "scan", "unrolled", "remat=dots", "remat=full", "naive CE", "no donation", "flax.nnx",
        "last:4 one scan", "frozen prefix")
QUICK_ARMS = ("default", "scan", "flax.nnx")


def matmul_peak(n: int, repeats: int, clock: str = "wall") -> float:
    """Returns the best FLOP/s of a jitted float32 [n, n] @ [n, n] matmul (2 n^3 flops), by the wall clock or
    (``clock="cpu"``) by this process's CPU time."""
    import time

    import jax
    import jax.numpy as jnp

    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
    f = jax.jit(lambda a, b: a @ b)
    f(a, b).block_until_ready()
    if clock == "cpu":
        best = float("inf")
        for _ in range(repeats):
            c = time.process_time()
            f(a, b).block_until_ready()
            best = min(best, time.process_time() - c)
    else:
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


def _batches(cfg, batch_size: int, seq_len: int, n: int = 4) -> list[dict]:
    rng = np.random.default_rng(0)
    return [{"tokens": rng.integers(0, cfg.vocab_size, (batch_size, seq_len + 1)).astype(np.int32)} for _ in range(n)]


def _train_config(batch_size: int, seq_len: int):
    from tokjax.train import TrainConfig

    return TrainConfig(total_steps=1000, warmup_steps=10, batch_size=batch_size, seq_len=seq_len)


def bench_model(name: str, cfg, batch_size: int, seq_len: int, steps: int, **step_options) -> dict:
    """Returns timing and FLOP figures of ``steps`` jitted train steps of ``cfg`` (``step_options``: keywords of
    ``make_train_step``, e.g. ``scan_unroll``, ``remat``, ``donate``)."""
    from tokjax.train import init_state, make_optimizer, make_train_step

    tc = _train_config(batch_size, seq_len)
    opt = make_optimizer(tc)
    state = init_state(cfg, opt, 0)
    step = make_train_step(cfg, opt, **step_options)
    compile_s, step_s = time_train_steps(step, state, _batches(cfg, batch_size, seq_len), steps)
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


# ------------------------------------------------------------------------------------------ the flax.nnx baseline
def nnx_baseline(cfg, train_cfg, seed: int = 0):
    """Returns (params, opt_state, jitted step(params, opt_state, tokens) -> (params, opt_state, loss)) of the same
    llama/GPT-style architecture as ``cfg`` written as a plain flax.nnx module, trained by the same optax chain.

    Only what the timing needs is matched: the shapes of every matmul, RMS/LayerNorm, RoPE or learned positions,
    SwiGLU or GELU, grouped-query causal attention, the tied or untied head. Not a numerical twin of tokjax's model.
    """
    import jax
    import jax.numpy as jnp
    import optax
    from flax import nnx

    D, H, KV, hd, F, V = cfg.d_model, cfg.n_heads, cfg.kv_heads, cfg.head_size, cfg.ff_size, cfg.vocab_size
    init = nnx.initializers.normal(cfg.init_scale)

    def dense(i, o, rngs, bias=False):
        return nnx.Linear(i, o, use_bias=bias, kernel_init=init, rngs=rngs)

    def norm(rngs):
        return nnx.RMSNorm(D, epsilon=cfg.norm_eps, rngs=rngs) if cfg.norm == "rms" else nnx.LayerNorm(
            D, epsilon=cfg.norm_eps, rngs=rngs)

    def rope(x, theta):  # x [B, T, h, hd]
        T, half = x.shape[1], x.shape[-1] // 2
        freq = theta ** (-jnp.arange(half, dtype=jnp.float32) / half)
        ang = jnp.arange(T, dtype=jnp.float32)[:, None] * freq[None]
        cos, sin = jnp.cos(ang)[None, :, None], jnp.sin(ang)[None, :, None]
        x1, x2 = x[..., :half], x[..., half:]
        return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)

    class Block(nnx.Module):
        def __init__(self, rngs):
            self.n1, self.n2 = norm(rngs), norm(rngs)
            self.q, self.k, self.v = dense(D, H * hd, rngs, cfg.qkv_bias), dense(D, KV * hd, rngs, cfg.qkv_bias), \
                dense(D, KV * hd, rngs, cfg.qkv_bias)
            self.o = dense(H * hd, D, rngs, cfg.bias)
            self.up = dense(D, F, rngs, cfg.bias)
            self.gate = dense(D, F, rngs) if cfg.activation == "swiglu" else None
            self.down = dense(F, D, rngs, cfg.bias)

        def __call__(self, x):
            B, T, _ = x.shape
            h = self.n1(x)
            q, k, v = (self.q(h).reshape(B, T, H, hd), self.k(h).reshape(B, T, KV, hd),
                       self.v(h).reshape(B, T, KV, hd))
            if cfg.positions == "rope":
                q, k = rope(q, cfg.rope_theta), rope(k, cfg.rope_theta)
            a = jax.nn.dot_product_attention(q, k, v, is_causal=True).reshape(B, T, H * hd)
            x = x + self.o(a)
            h = self.n2(x)
            act = jax.nn.silu(self.gate(h)) * self.up(h) if self.gate is not None else jax.nn.gelu(self.up(h))
            return x + self.down(act)

    class LM(nnx.Module):
        def __init__(self, rngs):
            self.embed = nnx.Embed(V, D, embedding_init=init, rngs=rngs)
            self.pos = nnx.Embed(cfg.max_len, D, embedding_init=init, rngs=rngs) if cfg.positions == "learned" else None
            self.blocks = nnx.List([Block(rngs) for _ in range(cfg.n_layers)])
            self.norm = norm(rngs)
            self.head = None if cfg.tied_embeddings else dense(D, V, rngs)

        def __call__(self, tokens):
            x = self.embed(tokens)
            if self.pos is not None:
                x = x + self.pos(jnp.arange(tokens.shape[1]))[None]
            for blk in self.blocks:
                x = blk(x)
            x = self.norm(x)
            return self.embed.attend(x) if self.head is None else self.head(x)

    from tokjax.train import make_schedule

    tx = optax.adamw(make_schedule(train_cfg), b1=train_cfg.b1, b2=train_cfg.b2, weight_decay=train_cfg.weight_decay,
                     mask=lambda p: jax.tree.map(lambda a: a.ndim >= 2, p))
    if train_cfg.grad_clip:
        tx = optax.chain(optax.clip_by_global_norm(train_cfg.grad_clip), tx)
    graphdef, params = nnx.split(LM(nnx.Rngs(seed)), nnx.Param)
    opt_state = tx.init(params)

    def step(params, opt_state, tokens):
        def loss_fn(p):
            logits = nnx.merge(graphdef, p)(tokens[:, :-1])
            return optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), tokens[:, 1:]).mean()

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    return params, opt_state, jax.jit(step, donate_argnums=(0, 1))


# ------------------------------------------------------------------------------------------------- one preset
def _arm_options(arm: str, n_layers: int = 2) -> dict:
    last = ("last:%d" % max(1, min(4, n_layers - 1)),)  # the last 4 layers (fewer on a shallow model)
    return {"default": {}, "scan": {"scan_unroll": 1}, "unrolled": {"scan_unroll": True},
            "remat=dots": {"remat": "dots"}, "remat=full": {"remat": "full"}, "no donation": {"donate": False},
            "last:4 one scan": {"trainable": last, "split_frozen": False},
            "frozen prefix": {"trainable": last}}.get(arm, {})


def _runner(arm: str, cfg, batch_size: int, seq_len: int, batches: list):
    """Returns (compile seconds, ``fn(r)`` running one more step of ``arm`` and blocking)."""
    import time

    import jax

    tc = _train_config(batch_size, seq_len)
    if arm == "flax.nnx":
        params, opt_state, step = nnx_baseline(cfg, tc)
        box = [params, opt_state]

        def run(r):
            box[0], box[1], loss = step(box[0], box[1], batches[r % len(batches)]["tokens"])
            jax.block_until_ready(loss)
    else:
        from tokjax.losses import make_next_token_loss
        from tokjax.train import init_state, make_optimizer, make_train_step

        options = _arm_options(arm, cfg.n_layers)
        if "trainable" in options:
            tc = tc.replace(trainable=options["trainable"])
        opt = make_optimizer(tc)
        loss = make_next_token_loss(method="naive") if arm == "naive CE" else make_next_token_loss()
        step = make_train_step(cfg, opt, loss, **options)
        box = [init_state(cfg, opt, 0)]

        def run(r):
            box[0], m = step(box[0], batches[r % len(batches)])
            jax.block_until_ready(m)

    t = time.perf_counter()
    run(0)
    compile_s = time.perf_counter() - t
    run(1)  # one warm step outside the timing
    return compile_s, run


def fwd_bwd_ms(cfg, batch: dict, repeats: int) -> dict:
    """Returns the median wall and CPU ms of the jitted default loss (forward) and of its value_and_grad:
    ``{"fwd_wall_ms", "grad_wall_ms", "fwd_cpu_ms", "grad_cpu_ms"}``."""
    import jax

    from tokjax.losses import next_token_loss
    from tokjax.model import init_params
    from tokjax.model.forward import layer_loop
    from tokjax.train._step import DEFAULT_REMAT, DEFAULT_SCAN_UNROLL

    def loss(p, b):
        with layer_loop(scan_unroll=DEFAULT_SCAN_UNROLL, remat=DEFAULT_REMAT):
            return next_token_loss(p, cfg, b)[0]

    params = jax.jit(init_params, static_argnums=0)(cfg, jax.random.key(0))
    fwd, grad = jax.jit(loss), jax.jit(jax.value_and_grad(loss))
    calls = {"fwd": lambda r: fwd(params, batch).block_until_ready(),
             "grad": lambda r: jax.block_until_ready(grad(params, batch))}
    for f in calls.values():
        f(0)
    wall, cpu = alternate_timings_cpu(calls, repeats)
    return {f"{n}_{clock}_ms": 1e3 * float(np.median(t[n]))
            for clock, t in (("wall", wall), ("cpu", cpu)) for n in ("fwd", "grad")}


def bench_preset(name: str, cfg, batch_size: int, seq_len: int, steps: int, arms, peak: float,
                 peak_cpu: float | None = None) -> dict:
    """Returns the figures of every arm of one preset, timed interleaved, and the forward/backward split."""
    batches = _batches(cfg, batch_size, seq_len)
    compile_s, calls = {}, {}
    for arm in arms:
        compile_s[arm], calls[arm] = _runner(arm, cfg, batch_size, seq_len, batches)
    wall, cpu = alternate_timings_cpu(calls, steps)
    split = fwd_bwd_ms(cfg, {"tokens": batches[0]["tokens"]}, max(2, steps // 2))
    tokens = batch_size * seq_len
    fpt = model_flops_per_token(cfg, seq_len)
    rows = []
    for arm in arms:
        s, c = float(np.median(wall[arm])), float(np.median(cpu[arm]))
        rows.append({"arm": arm, "compile_s": compile_s[arm], "step_ms": 1e3 * s, "cpu_ms": 1e3 * c,
                     "tokens_per_s": tokens / s, "mfu": fpt * tokens / s / peak, "mfu_cpu": fpt * tokens / c / (peak_cpu or peak)})
    base, base_cpu = rows[0]["step_ms"], rows[0]["cpu_ms"]
    for r in rows:
        r["speed_vs_default"], r["cpu_speed_vs_default"] = base / r["step_ms"], base_cpu / r["cpu_ms"]
    return {"model": name, "params": cfg.num_params(), "batch": batch_size, "seq_len": seq_len,
            "model_flops_per_token": fpt, **split,
            "bwd_over_fwd": (split["grad_wall_ms"] - split["fwd_wall_ms"]) / split["fwd_wall_ms"],
            "bwd_over_fwd_cpu": (split["grad_cpu_ms"] - split["fwd_cpu_ms"]) / split["fwd_cpu_ms"], "arms": rows}


def presets(names):
    """Returns [(name, ModelConfig, batch, seq_len)] of the named presets."""
    from tokjax.model import ModelConfig

    out = []
    for name in names:
        if name == "micro":  # for the smoke test: compiles in seconds
            out.append((name, ModelConfig.tiny(vocab_size=256, d_model=32, n_layers=2, n_heads=2, n_kv_heads=1,
                                               max_len=32), 2, 16))
        elif name in ("tiny-test", "tiny-pydocs"):
            from tokjax.pretrained import pretrained_config

            run = pretrained_config(name)
            out.append((name, run.model_config(run.tokenizer.vocab_size), run.train.batch_size, run.train.seq_len))
        elif name == "small":
            out.append((name, ModelConfig.small(vocab_size=2048), 8, 512))
        elif name == "llama-like":
            out.append((name, ModelConfig.llama_like(vocab_size=32000, max_len=512), 2, 512))
        elif name == "smollm2-135m":  # SmolLM2-135M's shape (30 layers), random init: the RL step's model
            out.append((name, ModelConfig(vocab_size=49152, d_model=576, n_layers=30, n_heads=9, n_kv_heads=3,
                                          d_ff=1536, rope_theta=100000.0, max_len=2048), 4, 128))
        elif name == "deep-narrow":  # 30 layers at a small width: the frozen-prefix arms in seconds
            out.append((name, ModelConfig(vocab_size=2048, d_model=64, n_layers=30, n_heads=4, n_kv_heads=2,
                                          max_len=256), 4, 128))
        else:
            raise SystemExit(f"unknown preset {name!r}; choose from micro, tiny-test, tiny-pydocs, small, llama-like, "
                             "smollm2-135m, deep-narrow")
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny-pydocs only, 3 arms, fewer steps (~1-2 min)")
    ap.add_argument("--presets", help="comma-separated: micro, tiny-test, tiny-pydocs, small, llama-like, "
                                      "smollm2-135m, deep-narrow "
                                      "(default tiny-pydocs,small,llama-like; --quick: tiny-pydocs)")
    ap.add_argument("--arms", help=f"comma-separated arms (default all: {','.join(ARMS)}; --quick: "
                                   f"{','.join(QUICK_ARMS)}); the first is the ratios' reference")
    ap.add_argument("--steps", type=int, help="timed steps per arm (default 8; --quick 3)")
    ap.add_argument("--json", help="also write the results to this JSON file")
    args = ap.parse_args(argv)

    import jax

    names = (args.presets or ("tiny-pydocs" if args.quick else "tiny-pydocs,small,llama-like")).split(",")
    arms = tuple(args.arms.split(",")) if args.arms else (QUICK_ARMS if args.quick else ARMS)
    bad = [a for a in arms if a not in ARMS]
    if bad:
        raise SystemExit(f"unknown arm(s) {bad}; choose from {list(ARMS)}")
    steps = args.steps or (3 if args.quick else 8)
    n = 512 if args.quick else 2048
    peak = matmul_peak(n, 5 if args.quick else 10)
    peak_cpu = matmul_peak(n, 5 if args.quick else 10, clock="cpu")
    results = [bench_preset(name, cfg, b, t, steps, arms, peak, peak_cpu) for name, cfg, b, t in presets(names)]

    print(f"# train step throughput  ({machine()}, jax {jax.__version__}, {jax.default_backend()})")
    print(f"# peak: {peak / 1e9:.1f} GFLOP/s wall, {peak_cpu / 1e9:.1f} GFLOP/s per CPU second (best jitted f32 "
          f"{n}x{n} matmul in this process); arms interleaved, "
          f"median of {steps} steps; x = speed relative to the first arm")
    print("# wall = wall clock; cpu = this process's CPU seconds (closer to the unloaded time on a loaded machine); "
          "bwd/fwd = (value_and_grad - loss) / loss of the default options")
    hdr = (f"{'model':<12} {'params':>11} {'B x T':>8} {'fwd ms':>8} {'bwd/fwd':>11}  {'arm':<12} {'compile s':>9} "
           f"{'step ms':>9} {'cpu ms':>9} {'tokens/s':>9} {'MFU':>6} {'MFU cpu':>7} {'x':>6} {'x cpu':>6}")
    print(hdr)
    print("-" * len(hdr))
    for res in results:
        for i, r in enumerate(res["arms"]):
            head = (f"{res['model']:<12} {res['params']:>11,} {str(res['batch']) + 'x' + str(res['seq_len']):>8} "
                    f"{res['fwd_wall_ms']:>8.1f} {res['bwd_over_fwd']:>5.2f}/{res['bwd_over_fwd_cpu']:<5.2f}"
                    if i == 0 else " " * 53)
            print(f"{head}  {r['arm']:<12} {r['compile_s']:>9.1f} {r['step_ms']:>9.1f} {r['cpu_ms']:>9.1f} "
                  f"{r['tokens_per_s']:>9,.0f} {100 * r['mfu']:>5.1f}% {100 * r['mfu_cpu']:>6.1f}% "
                  f"{r['speed_vs_default']:>5.2f}x {r['cpu_speed_vs_default']:>5.2f}x")
    if args.json:
        Path(args.json).write_text(json.dumps({"peak_flops": peak, "peak_flops_cpu": peak_cpu, "machine": machine(), "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
