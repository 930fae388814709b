"""The ``tokjax`` command line: catalog, reproduce, train, generate, bench."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _repo_path(sub: str) -> Path:
    path = REPO / sub
    if not path.exists():
        raise SystemExit(
            f"tokjax: {path} not found; `{sub}` ships with the tokjax source tree, not the wheel. "
            "Run this command from a clone (pip install -e .)."
        )
    return path


def cmd_catalog(args) -> int:
    from tokjax import catalog

    items = catalog.entries()
    if args.status:
        items = tuple(e for e in items if e.status == args.status)
    if args.family:
        items = tuple(e for e in items if e.family == args.family)
    print(catalog.format_table(items, markdown=args.markdown))
    counts = catalog.summary()
    print("\n" + ", ".join(f"{n} {s}" for s, n in counts.items()))
    return 0


def _train_tiny_model(quick: bool) -> None:
    """Trains (or loads from the cache) the shared tiny model every experiment uses."""
    import tokjax

    print("== tokjax: tiny model `tiny-pydocs` (trained once, then cached) ==", flush=True)
    model, _tok = tokjax.pretrained("tiny-pydocs", progress=True)
    from tokjax.pretrained import cache_root, pretrained_metadata

    metrics = pretrained_metadata("tiny-pydocs").get("metrics", {})
    bpb = metrics.get("val_bits_per_byte", metrics.get("bits_per_byte"))
    print(f"   {model.num_params():,} parameters; validation bits/byte: {bpb}; cache: {cache_root()}", flush=True)


def cmd_reproduce(args) -> int:
    sys.path.insert(0, str(_repo_path("experiments").parent))
    from experiments.run_all import main as run_all_main

    argv = []
    if args.quick:
        argv.append("--quick")
    if args.only:
        argv += ["--only", args.only]
    setup = [] if args.no_train else [_train_tiny_model]
    return int(run_all_main(argv, setup=setup) or 0)


def cmd_train(args) -> int:
    import dataclasses
    from pathlib import Path as _P

    from tokjax.pretrained import _build
    from tokjax.train import load_run_config

    run = load_run_config(args.config)
    if args.steps is not None:
        run = dataclasses.replace(run, train=run.train.replace(total_steps=args.steps))
    workdir = _P(args.workdir or f"runs/{run.name}")
    _model, _tok, metrics = _build(run, workdir, progress=True)
    shown = {k: v for k, v in metrics.items() if k != "history_eval"}
    print({k: (round(v, 4) if isinstance(v, float) else v) for k, v in shown.items()})
    print(f"checkpoints and tokenizer in {workdir}")
    return 0


def cmd_generate(args) -> int:
    import jax

    import tokjax
    from tokjax import logits as L

    model, tok = tokjax.pretrained(args.model, progress=True)
    parts = []
    if args.repetition_penalty != 1.0:
        parts.append(L.repetition_penalty(args.repetition_penalty))
    if args.top_k:
        parts.append(L.top_k(args.top_k))
    if args.top_p < 1.0:
        parts.append(L.top_p(args.top_p))
    if args.min_p > 0.0:
        parts.append(L.min_p(args.min_p))
    parts.append(L.greedy() if args.greedy else L.temperature(args.temperature))
    ids = tok.encode(args.prompt)
    if not ids:
        raise SystemExit("tokjax generate: the prompt is empty; give some text with --prompt")
    budget = model.cfg.max_len - len(ids)
    out = tokjax.generate(
        model, [ids], key=jax.random.key(args.seed), max_new_tokens=max(1, min(args.max_new_tokens, budget)),
        logits=L.chain(*parts), eos_id=tok.eos_id,
    )
    print(args.prompt + tok.decode(out.completions()[0].tolist()))
    return 0


def cmd_bench(args) -> int:
    bench_dir = _repo_path("benchmarks")
    scripts = sorted(p for p in bench_dir.glob("*.py") if not p.name.startswith("_"))
    if args.only:
        scripts = [p for p in scripts if p.stem in args.only.split(",")]
    failed = 0
    for script in scripts:
        print(f"== {script.name} ==", flush=True)
        cmd = [sys.executable, str(script)] + (["--quick"] if args.quick else [])
        failed += subprocess.call(cmd, cwd=str(REPO)) != 0
    return 1 if failed else 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tokjax", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    c = sub.add_parser("catalog", help="print the paper catalog with statuses")
    c.add_argument("--status", choices=["planned", "implemented", "reproduced", "not-reproduced"])
    c.add_argument("--family")
    c.add_argument("--markdown", action="store_true")
    c.set_defaults(fn=cmd_catalog)

    r = sub.add_parser("reproduce", help="train the tiny model and run every implemented method's experiment")
    r.add_argument("--quick", action="store_true", help="CPU-sized versions (what `make demo` runs)")
    r.add_argument("--only", help="comma-separated paper ids, e.g. P29,P44")
    r.add_argument("--no-train", action="store_true", help="skip the tiny-model setup step")
    r.set_defaults(fn=cmd_reproduce)

    t = sub.add_parser("train", help="train a model from a YAML config (configs/*.yaml)")
    t.add_argument("config")
    t.add_argument("--workdir", help="checkpoint directory (default runs/<name>; an existing run resumes)")
    t.add_argument("--steps", type=int)
    t.set_defaults(fn=cmd_train)

    g = sub.add_parser("generate", help="generate text from a named pretrained tiny model")
    g.add_argument("--model", default="tiny-pydocs")
    g.add_argument("--prompt", required=True)
    g.add_argument("--max-new-tokens", type=int, default=64)
    g.add_argument("--temperature", type=float, default=0.8)
    g.add_argument("--top-k", type=int, default=0)
    g.add_argument("--top-p", type=float, default=1.0)
    g.add_argument("--min-p", type=float, default=0.0)
    g.add_argument("--repetition-penalty", type=float, default=1.0)
    g.add_argument("--greedy", action="store_true")
    g.add_argument("--seed", type=int, default=0)
    g.set_defaults(fn=cmd_generate)

    b = sub.add_parser("bench", help="run the benchmarks (side by side with the usual alternative)")
    b.add_argument("--quick", action="store_true")
    b.add_argument("--only", help="comma-separated benchmark names, e.g. train_throughput")
    b.set_defaults(fn=cmd_bench)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except (ValueError, FileNotFoundError) as e:  # user errors: one clear line, no traceback from deep inside jax
        print(f"tokjax {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
