"""The ``tokjax`` command line: demo, chat, catalog, reproduce, train, generate, bench."""

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


def _load_model(spec: str):
    """Returns (Model, tokenizer) for a pretrained name, a Hugging Face checkpoint directory or a .gguf file."""
    import tokjax

    path = Path(spec)
    if spec.endswith(".gguf"):
        if not path.is_file():
            raise ValueError(f"GGUF file {spec} not found")
        from tokjax.io import load_gguf

        return load_gguf(path)
    if path.is_dir():
        from tokjax.io import load_hf

        model, tok = load_hf(path, dtype="float32")
        if tok is None:
            raise ValueError(f"{spec} has no tokenizer.json; tokjax needs the checkpoint's tokenizer to generate text")
        return model, tok
    if "/" in spec or spec.startswith("."):
        raise ValueError(f"--model {spec!r} is neither a pretrained name, a checkpoint directory nor a .gguf file")
    return tokjax.pretrained(spec, progress=True)


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)


def _sampling_transform(args):
    """Returns the LogitTransform the sampling flags ask for; ValueError for a flag out of range (never clipped)."""
    import math

    from tokjax import logits as L

    _check(args.max_new_tokens >= 1, f"--max-new-tokens must be >= 1, got {args.max_new_tokens}")
    _check(math.isfinite(args.temperature) and args.temperature > 0,
           f"--temperature must be a finite number > 0, got {args.temperature} (use --greedy for greedy decoding)")
    _check(0.0 < args.top_p <= 1.0, f"--top-p must be in (0, 1], got {args.top_p}")
    top_k = getattr(args, "top_k", 0)
    min_p = getattr(args, "min_p", 0.0)
    penalty = getattr(args, "repetition_penalty", 1.0)
    _check(top_k >= 0, f"--top-k must be >= 0 (0 = off), got {top_k}")
    _check(0.0 <= min_p <= 1.0, f"--min-p must be in [0, 1], got {min_p}")
    _check(math.isfinite(penalty) and penalty > 0, f"--repetition-penalty must be a finite number > 0, got {penalty}")
    if args.greedy:
        return L.greedy() if penalty == 1.0 else L.chain(L.repetition_penalty(penalty), L.greedy())
    parts = []
    if penalty != 1.0:
        parts.append(L.repetition_penalty(penalty))
    # Temperature first, then the truncations (the order transformers uses), so --top-p keeps
    # the nucleus of the distribution that is actually sampled.
    parts.append(L.temperature(args.temperature))
    if top_k:
        parts.append(L.top_k(top_k))
    if args.top_p < 1.0:
        parts.append(L.top_p(args.top_p))
    if min_p > 0.0:
        parts.append(L.min_p(min_p))
    return L.chain(*parts)


def cmd_generate(args) -> int:
    import jax

    import tokjax

    transform = _sampling_transform(args)
    model, tok = _load_model(args.model)
    ids = tok.encode(args.prompt)
    if not ids:
        raise SystemExit("tokjax generate: the prompt is empty; give some text with --prompt")
    _check(len(ids) + args.max_new_tokens <= model.cfg.max_len,
           f"the prompt ({len(ids)} tokens) + --max-new-tokens {args.max_new_tokens} exceeds the model's context of "
           f"{model.cfg.max_len} tokens; lower --max-new-tokens to at most {max(model.cfg.max_len - len(ids), 0)}")
    out = tokjax.generate(
        model, [ids], key=jax.random.key(args.seed), max_new_tokens=args.max_new_tokens,
        logits=transform, eos_id=tok.eos_id,
    )
    print(args.prompt + tok.decode(out.completions()[0].tolist()))
    return 0


def cmd_chat(args) -> int:
    import jax

    from tokjax.demo import ChatSession

    transform = _sampling_transform(args)  # bad flags fail before the model loads
    model, tok = _load_model(args.model)
    session = ChatSession(model, tok, logits=transform, max_new_tokens=args.max_new_tokens, system=args.system,
                          key=jax.random.key(args.seed))
    interactive = sys.stdin.isatty()
    if interactive:
        print(f"chatting with {args.model}; an empty line or Ctrl-D ends the chat", file=sys.stderr)
    while True:
        if interactive:
            print("> ", end="", file=sys.stderr, flush=True)
        line = sys.stdin.readline()
        if not line.strip():  # EOF ("") or an empty line: leave quietly
            return 0
        try:
            for piece in session.reply(line.rstrip("\n")):
                print(piece, end="", flush=True)
        except ValueError as e:  # e.g. a message longer than the context: say so, keep the chat going
            print(f"tokjax chat: {e}", file=sys.stderr)
        print(flush=True)


def cmd_demo(args) -> int:
    from tokjax.demo import run_tour

    run_tour(quick=args.quick)
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
    r.add_argument("--quick", action="store_true",
                   help="CPU-sized versions (what `make reproduce` runs), recorded in experiments/RESULTS-quick.md")
    r.add_argument("--only", help="comma-separated paper ids, e.g. P29,P44")
    r.add_argument("--no-train", action="store_true", help="skip the tiny-model setup step")
    r.set_defaults(fn=cmd_reproduce)

    t = sub.add_parser("train", help="train a model from a YAML config (configs/*.yaml)")
    t.add_argument("config")
    t.add_argument("--workdir", help="checkpoint directory (default runs/<name>; an existing run resumes)")
    t.add_argument("--steps", type=int)
    t.set_defaults(fn=cmd_train)

    g = sub.add_parser("generate", help="continue a prompt with a pretrained model, a HF checkpoint or a GGUF file")
    g.add_argument("--model", default="tiny-pydocs", help="NAME (tokjax.pretrained), HF-DIR or FILE.gguf")
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

    ch = sub.add_parser("chat", help="multi-turn chat on stdin, replies streamed as they are generated")
    ch.add_argument("--model", default="smollm2-135m-instruct",
                    help="NAME, HF-DIR or FILE.gguf of a model whose tokenizer has a chat template")
    ch.add_argument("--system", help="system message (default: the chat template's own)")
    ch.add_argument("--max-new-tokens", type=int, default=256, help="most tokens per reply")
    ch.add_argument("--temperature", type=float, default=0.7)
    ch.add_argument("--top-p", type=float, default=0.9)
    ch.add_argument("--greedy", action="store_true", help="greedy decoding (ignores --temperature and --top-p)")
    ch.add_argument("--seed", type=int, default=0)
    ch.set_defaults(fn=cmd_chat)

    d = sub.add_parser("demo", help="the five-minute tour on SmolLM2-135M-Instruct (what `make demo` runs)")
    d.add_argument("--quick", action="store_true", help="fewer new tokens per section (for tests)")
    d.set_defaults(fn=cmd_demo)

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
