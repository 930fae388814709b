"""The tokjax command line: demo, chat, catalog, reproduce, train, generate, bench."""

from __future__ import annotations

import argparse
import functools
import math
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# Shown before a named model is trained on first use. Measured wall times of the whole first
# use (tokenizer, data, training, saving): tiny-pydocs 230 s on a quiet 2-core CPU, 762 s while
# other jobs shared the cores; tiny-test 27 s on the shared machine.
_TRAIN_TIME = {
    "tiny-pydocs": "about 4 minutes on a quiet 2-core CPU (up to 13 on a busy one)",
    "tiny-test": "about 30 seconds",
}


def _repo_path(sub: str) -> Path:
    path = REPO / sub
    if not path.exists():
        raise SystemExit(
            f"tokjax: {path} not found; `{sub}` ships with the tokjax source tree, not the wheel. "
            "Run this command from a clone (pip install -e .)."
        )
    return path


def _resolve_config(spec: str) -> Path:
    """Returns the YAML file ``spec`` names: a path (from the current directory, then the project root)
    or a config name (``tiny-test`` -> ``<project>/configs/tiny-test.yaml``); FileNotFoundError listing where it looked.
    """
    given = Path(spec).expanduser()
    bases = [given] if given.is_absolute() else [Path.cwd() / given, REPO / given, REPO / "configs" / given]
    tried = []
    for base in bases:
        for cand in (base,) if base.suffix else (base, base.with_suffix(".yaml")):
            tried.append(cand)
            if cand.is_file():
                return cand
    known = sorted(p.stem for p in (REPO / "configs").glob("*.yaml"))
    raise FileNotFoundError(
        f"config {spec!r} not found (looked for {', '.join(str(t) for t in tried)})"
        + (f"; the project's configs: {', '.join(known)}" if known else "")
    )


def _needs_training(name: str) -> bool:
    """Returns whether ``tokjax.pretrained(name)`` would train before returning (no usable cache entry)."""
    import importlib
    import json

    from tokjax._paths import cache_root

    P = importlib.import_module("tokjax.pretrained")  # the module; `tokjax.pretrained` the attribute is the function
    if name not in P._BUILTIN:  # GGUF wheel models announce nothing (nothing is trained); drafts announce themselves
        return False
    try:
        meta = json.loads((cache_root() / name / P.METADATA_FILE).read_text())
    except (OSError, ValueError):
        return True
    # The same test tokjax.pretrained applies before it decides to (re)train.
    key = getattr(P, "_cache_key", lambda config: config)
    return not (isinstance(meta, dict) and meta.get("format") == P.FORMAT and meta.get("version") == P.FORMAT_VERSION
                and key(meta.get("config")) == key(P.pretrained_config(name).to_dict()))


def _announce_training(name: str) -> None:
    """Returns None after saying (on stderr) that ``name`` is trained now, how long that takes and where it goes."""
    if _needs_training(name):
        from tokjax._paths import cache_root

        took = _TRAIN_TIME.get(name, "a few minutes")
        print(f"tokjax: first use of {name!r}: training it now, once ({took}); later runs load it from "
              f"{cache_root() / name} in seconds", file=sys.stderr, flush=True)


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
    _announce_training("tiny-pydocs")
    model, _tok = tokjax.pretrained("tiny-pydocs", progress=True)
    from tokjax._paths import cache_root
    from tokjax.pretrained import pretrained_metadata

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

    run = load_run_config(_resolve_config(args.config))
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

    path = Path(spec).expanduser()
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
    names = tokjax.available_pretrained()
    if spec not in names:
        raise ValueError(f"--model {spec!r} is neither a pretrained name (choose from {', '.join(names)}), an "
                         "existing checkpoint directory nor a .gguf file")
    _announce_training(spec)
    return tokjax.pretrained(spec, progress=True)


def _sampling_transform(args):
    """Returns the LogitTransform the sampling flags ask for, built as transformers orders it (``hf_sampling``).

    The flags were range-checked when parsed (never clipped); ``--top-k 0`` and ``--min-p 0`` are off.
    """
    from tokjax import logits as L

    return L.hf_sampling(
        temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
        min_p=args.min_p if args.min_p > 0.0 else None, repetition_penalty=args.repetition_penalty,
        do_sample=not args.greedy,
    )


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)


def cmd_generate(args) -> int:
    import jax

    import tokjax

    transform = _sampling_transform(args)
    model, tok = _load_model(args.model)
    ids = tok.encode(args.prompt)
    if not ids:
        raise ValueError("the prompt is empty; give some text with --prompt")
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
        wanted = [w.strip() for w in args.only.split(",") if w.strip()]
        unknown = sorted(set(wanted) - {p.stem for p in scripts})
        if unknown:
            raise ValueError(f"--only: no benchmark named {', '.join(unknown)}; the benchmarks: "
                             f"{', '.join(p.stem for p in scripts)}")
        scripts = [p for p in scripts if p.stem in wanted]
    failed = 0
    for script in scripts:
        print(f"== {script.name} ==", flush=True)
        cmd = [sys.executable, str(script)] + (["--quick"] if args.quick else [])
        failed += subprocess.call(cmd, cwd=str(REPO)) != 0
    return 1 if failed else 0


# ------------------------------------------------------------------------ flag types
# argparse calls these on the raw string; an ArgumentTypeError becomes "argument --x: <message>"
# and exit status 2, before any model is loaded. Values are never clipped into range.
def _number(kind, text: str):
    try:
        return kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"needs {'an integer' if kind is int else 'a number'}, got {text!r}") from None


def _int_at_least(low: int, note: str = ""):
    def parse(text: str) -> int:
        v = _number(int, text)
        if v < low:
            raise argparse.ArgumentTypeError(f"must be an integer >= {low}{note}, got {v}")
        return v

    return parse


def _float_in(ok, expect: str):
    def parse(text: str) -> float:
        v = _number(float, text)
        if not (math.isfinite(v) and ok(v)):
            raise argparse.ArgumentTypeError(f"must be {expect}, got {text}")
        return v

    return parse


def _add_sampling(p: argparse.ArgumentParser, *, max_new_tokens: int, temperature: float, top_p: float) -> None:
    p.add_argument("--max-new-tokens", type=_int_at_least(1), default=max_new_tokens, metavar="N",
                   help=f"most new tokens (>= 1; prompt + N must fit the model's context; default {max_new_tokens})")
    p.add_argument("--temperature", type=_float_in(lambda v: v > 0, "a finite number > 0 "
                   "(for greedy decoding use --greedy)"), default=temperature, metavar="T",
                   help=f"softmax temperature, > 0 (default {temperature})")
    p.add_argument("--top-k", type=_int_at_least(0, " (0 = off)"), default=0, metavar="K",
                   help="keep the K most likely tokens; 0 = off (default 0; transformers' default is 50)")
    p.add_argument("--top-p", type=_float_in(lambda v: 0 < v <= 1, "in (0, 1] (1 = off)"), default=top_p,
                   metavar="P", help=f"nucleus sampling: keep the smallest set with probability >= P, in (0, 1]; "
                   f"1 = off (default {top_p})")
    p.add_argument("--min-p", type=_float_in(lambda v: 0 <= v <= 1, "in [0, 1] (0 = off)"), default=0.0,
                   metavar="P", help="drop tokens less likely than P times the top one, in [0, 1]; 0 = off (default)")
    p.add_argument("--repetition-penalty", type=_float_in(lambda v: v > 0,
                   "a finite number > 0 (1 = off)"), default=1.0, metavar="R",
                   help="CTRL repetition penalty on tokens already in the context, > 0; 1 = off (default)")
    p.add_argument("--greedy", action="store_true",
                   help="greedy decoding (ignores --temperature, --top-k, --top-p and --min-p)")
    p.add_argument("--seed", type=_int_at_least(0), default=0, help="sampling seed, >= 0 (default 0)")


class _HelpFormatter(argparse.HelpFormatter):
    """argparse's formatter without breaking lines at hyphens, so model names (tiny-arithmetic-cot) stay whole."""

    def _split_lines(self, text, width):
        import textwrap

        return textwrap.wrap(self._whitespace_matcher.sub(" ", text).strip(), width, break_on_hyphens=False)


def build_parser() -> argparse.ArgumentParser:
    from tokjax._paths import CACHE_ENV, DEFAULT_CACHE
    from tokjax.catalog import FAMILIES, STATUSES
    from tokjax.pretrained import available_pretrained

    names = available_pretrained()
    model_help = (f"NAME, HF-DIR or FILE.gguf; NAME is one of {', '.join(names)} (the ones tokjax trains itself "
                  "are trained on first use, then cached)")
    p = argparse.ArgumentParser(
        prog="tokjax",
        formatter_class=_HelpFormatter,
        description="The tokjax command line: demo, chat, catalog, reproduce, train, generate, bench.",
        epilog=f"Models trained on first use are cached in ${CACHE_ENV} (default {DEFAULT_CACHE}).",
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND",
                           parser_class=functools.partial(argparse.ArgumentParser, formatter_class=_HelpFormatter))

    c = sub.add_parser("catalog", help="print the paper catalog with statuses")
    c.add_argument("--status", choices=STATUSES, help="only papers with this status")
    c.add_argument("--family", choices=FAMILIES, help="only papers of this family")
    c.add_argument("--markdown", action="store_true", help="print a markdown table")
    c.set_defaults(fn=cmd_catalog)

    r = sub.add_parser("reproduce", help="train the tiny model and run every implemented method's experiment")
    r.add_argument("--quick", action="store_true",
                   help="CPU-sized versions (what make reproduce runs), recorded in experiments/RESULTS-quick.md")
    r.add_argument("--only", metavar="IDS", help="comma-separated paper ids, e.g. P29,P44")
    r.add_argument("--no-train", action="store_true", help="skip the tiny-model setup step")
    r.set_defaults(fn=cmd_reproduce)

    t = sub.add_parser("train", help="train a model from a YAML config (configs/*.yaml)")
    t.add_argument("config", help="a YAML file (relative to the current directory or the project root) or a "
                   "config name such as tiny-test")
    t.add_argument("--workdir", help="checkpoint directory (default runs/<name>; an existing run resumes)")
    t.add_argument("--steps", type=_int_at_least(1), metavar="N", help="override train.total_steps (>= 1)")
    t.set_defaults(fn=cmd_train)

    g = sub.add_parser("generate", help="continue a prompt with a pretrained model, a HF checkpoint or a GGUF file")
    g.add_argument("--model", default="tiny-pydocs", metavar="MODEL", help=model_help + " (default tiny-pydocs)")
    g.add_argument("--prompt", required=True, help="the text to continue")
    _add_sampling(g, max_new_tokens=64, temperature=0.8, top_p=1.0)
    g.set_defaults(fn=cmd_generate)

    ch = sub.add_parser("chat", help="multi-turn chat on stdin, replies streamed as they are generated")
    ch.add_argument("--model", default="smollm2-135m-instruct", metavar="MODEL",
                    help=model_help + "; its tokenizer needs a chat template (default smollm2-135m-instruct)")
    ch.add_argument("--system", help="system message (default: the chat template's own)")
    _add_sampling(ch, max_new_tokens=256, temperature=0.7, top_p=0.9)
    ch.set_defaults(fn=cmd_chat)

    d = sub.add_parser("demo", help="the five-minute tour on SmolLM2-135M-Instruct (what make demo runs)")
    d.add_argument("--quick", action="store_true", help="fewer new tokens per section (for tests)")
    d.set_defaults(fn=cmd_demo)

    b = sub.add_parser("bench", help="run the benchmarks (side by side with the usual alternative)")
    b.add_argument("--quick", action="store_true", help="small versions")
    b.add_argument("--only", metavar="NAMES", help="comma-separated benchmark names, e.g. train_throughput")
    b.set_defaults(fn=cmd_bench)
    return p


def _silence_stdout() -> None:
    """Returns None after pointing stdout at /dev/null, so the interpreter's final flush cannot fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # stdout replaced by an object without a file descriptor
        pass


def main(argv=None) -> int:
    """Returns the exit status: 0 on success (and for --help), 2 for a usage error or a bad input."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # argparse has printed the help or the usage error; callers get a status, not an exit
        return e.code if isinstance(e.code, int) else 2
    try:
        code = args.fn(args)
        sys.stdout.flush()  # a closed pipe shows up here rather than at interpreter exit
        return code
    except BrokenPipeError:
        # The reader stopped reading (`tokjax catalog | head -1`): it has what it wanted; leave
        # quietly, as cat or grep do, without a traceback.
        _silence_stdout()
        return 0
    except (ValueError, FileNotFoundError) as e:  # user errors: one clear line, no traceback from deep inside jax
        print(f"tokjax {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
