"""Image decoding speed: raster NTP vs NAR (P31) vs NBP (P13) vs Token-Shuffle (P64), images/s as ratios to NTP.

    python benchmarks/image_decoding.py            # batch 1 and 64, CFG on, median of 3, every decoder (~3-4 min)
    python benchmarks/image_decoding.py --quick    # batch 1 and 16, median of 2
    python benchmarks/image_decoding.py --cfg both --json out.json
    python benchmarks/image_decoding.py --cfg both --uncached   # also the cache-free canvas decoders

Setting: the glyph setting of ``experiments/p13_nbp.py``, ``p31_nar.py`` and ``p64_token_shuffle.py``
(``experiments._vision``): an 8 x 8 code grid at 8 levels, 10 classes, d = 64, 4 heads, 2 layers, 2-D
axial RoPE. Speed does not depend on the weights, so every model is random-init (no training), each
through its decoder's own init: ``tokjax.model.init_params`` for raster NTP and NBP, ``nar_init(cfg, key,
extra_layers=1)`` for NAR (2 layers + head B's extra block) and ``token_shuffle_init(cfg, key, s)`` for
Token-Shuffle. Decoders, all run by ``tokjax.vision.image_lm.sample_images`` (through ``tokjax.generate``):

* raster NTP (2 layers): ``next_token_cfg``, one token per pass with the KV cache, 64 passes -- the baseline;
* raster NTP (3 layers): the same with one more layer (P31 compares NAR against this parameter match);
* NAR: ``nar_decoder``, one anti-diagonal per pass, H + W - 1 = 15 passes;
* NBP k=8 / k=16: ``nbp_decoder``, one row / two rows per pass, 8 / 4 passes;
* Token-Shuffle s=2 / s=4: ``token_shuffle_decoder``, one s x s window per pass, 16 / 4 passes.

The canvas decoders (NAR, NBP, Token-Shuffle) run KV-cached (their default ``cached=True``: each pass appends
the block the previous pass filled to the cache). ``--uncached`` adds each of them a second time with
``cached=False`` (one forward of the whole canvas per pass; rows "... no cache"), timed in the same
alternating rounds, so old and new paths are compared on one machine state.

Classifier-free guidance is on by default (``guided=True``, guidance 1.5: a doubled batch of conditional and
null-class rows per pass, as a deployed class-conditional sampler runs); ``--cfg off`` times the
conditional rows only (``guided=False``, guidance 1, what the P13/P31/P64 experiments sample for their FD),
``--cfg both`` both. Temperature 1. Per (decoder, batch, cfg): forward passes per image
(``stats["forward_calls"]``: each pass serves the whole batch), images/s = batch / the median wall-clock
seconds of ``--repeats`` ``sample_images`` calls (end to end: host prompt building, the compiled decode
loop, the copy of the codes back), and the ratio to raster NTP (2 layers) at the same batch and cfg. Every
decoder is called once first (compile, excluded and reported as ``compile s``: the first call's time
minus the median); the timed calls alternate decoders so machine load hits all alike.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks._common import alternate_timings, batch_sizes, machine, positive_int  # noqa: E402

GRID, LEVELS, CLASSES = 8, 8, 10
D_MODEL, N_LAYERS, N_HEADS = 64, 2, 4
GUIDANCE = 1.5  # any value > 1 with guided=True costs the same; 1.5 makes the guided arm really guide
FULL = dict(batches=(1, 64), repeats=3)
QUICK = dict(batches=(1, 16), repeats=2)
BASELINE = "ntp"
DECODERS = ("ntp", "ntp3", "nar", "nbp8", "nbp16", "ts2", "ts4")
CANVAS = ("nar", "nbp8", "nbp16", "ts2", "ts4")  # CanvasStrategy decoders: cached by default, "<name>_nc" without
NO_CACHE = "_nc"
LABELS = {"ntp": "raster NTP", "ntp3": "raster NTP 3 layers", "nar": "NAR (2+1 layers)", "nbp8": "NBP k=8",
          "nbp16": "NBP k=16", "ts2": "Token-Shuffle s=2", "ts4": "Token-Shuffle s=4"}
LABELS.update({name + NO_CACHE: LABELS[name] + " no cache" for name in CANVAS})


def model_config(n_layers: int = N_LAYERS):
    """Returns the glyph setting's ModelConfig (as ``experiments._vision.model_config``)."""
    from tokjax.model import ModelConfig
    from tokjax.vision.image_lm import ImageVocab

    return ModelConfig(vocab_size=ImageVocab(LEVELS, CLASSES).size, d_model=D_MODEL, n_layers=n_layers,
                       n_heads=N_HEADS, max_len=80, pos_dims=2)


def build(name: str, guided: bool, seed: int = 0):
    """Returns (Model, strategy) of decoder ``name`` (one of DECODERS, or a CANVAS name + "_nc": the same decoder
    cache-free), random-init by the decoder's own init."""
    import jax

    from tokjax.model import Model, init_params
    from tokjax.vision.image_lm import ImageVocab, next_token_cfg
    from tokjax.vision.nar import nar_decoder, nar_init
    from tokjax.vision.nbp import nbp_decoder
    from tokjax.vision.orders import raster
    from tokjax.vision.token_shuffle import token_shuffle_decoder, token_shuffle_init

    vocab, order, key = ImageVocab(LEVELS, CLASSES), raster(GRID, GRID), jax.random.key(seed)
    cached = not (name.endswith(NO_CACHE) and name[:-len(NO_CACHE)] in CANVAS)
    name = name if cached else name[:-len(NO_CACHE)]
    if name in ("ntp", "ntp3"):
        cfg = model_config(3 if name == "ntp3" else N_LAYERS)
        return Model(init_params(cfg, key), cfg), next_token_cfg(vocab, order, guided=guided)
    cfg = model_config()
    if name == "nar":
        return (Model(nar_init(cfg, key, extra_layers=1), cfg),
                nar_decoder(vocab, GRID, GRID, guided=guided, cached=cached))
    if name in ("nbp8", "nbp16"):
        return Model(init_params(cfg, key), cfg), nbp_decoder(vocab, order, int(name[3:]), guided=guided, cached=cached)
    if name in ("ts2", "ts4"):
        s = int(name[2:])
        return (Model(token_shuffle_init(cfg, key, s), cfg),
                token_shuffle_decoder(vocab, GRID, GRID, s, guided=guided, cached=cached))
    raise ValueError(f"unknown decoder {name!r}; the decoders: {', '.join(DECODERS)}")


def _decoders(text: str | None) -> list[str]:
    if not text:
        return list(DECODERS)
    names = [w.strip() for w in text.split(",") if w.strip()]
    unknown = sorted(set(names) - set(DECODERS))
    if unknown:
        raise argparse.ArgumentTypeError(f"no decoder named {', '.join(unknown)}; the decoders: {', '.join(DECODERS)}")
    return ([BASELINE] if BASELINE not in names else []) + names  # ratios need the baseline


def measure(names: list[str], batch: int, guided: bool, repeats: int) -> list[dict]:
    """Returns one row per decoder in ``names``: passes per image, images/s (median), compile s, ratio to NTP."""
    import jax
    import numpy as np

    from tokjax.vision.image_lm import sample_images

    g = GUIDANCE if guided else 1.0
    labels = (np.arange(batch) % CLASSES).astype(np.int32)
    arms = {}
    for name in names:
        model, strategy = build(name, guided)
        t0 = time.perf_counter()
        out = sample_images(model, strategy, labels, jax.random.key(0), guidance=g)
        first = time.perf_counter() - t0
        if out.codes.shape != (batch, GRID, GRID) or out.codes.min() < 0 or out.codes.max() >= LEVELS:
            raise RuntimeError(f"{name}: decoded codes of shape {out.codes.shape} in [{out.codes.min()}, "
                               f"{out.codes.max()}], expected ({batch}, {GRID}, {GRID}) in [0, {LEVELS})")
        arms[name] = dict(model=model, strategy=strategy, first=first, passes=int(out.stats["forward_calls"]), times=[])
    times = alternate_timings({name: (lambda r, a=a: np.asarray(sample_images(
        a["model"], a["strategy"], labels, jax.random.key(1 + r), guidance=g).codes)) for name, a in arms.items()},
        repeats)
    for name, a in arms.items():
        a["times"] = times[name]
    base = batch / float(np.median(arms[BASELINE]["times"]))
    rows = []
    for name, a in arms.items():
        med = float(np.median(a["times"]))
        rows.append(dict(decoder=LABELS[name], key=name, batch=batch, cfg="on" if guided else "off",
                         cached=not name.endswith(NO_CACHE), passes=a["passes"], images_per_s=batch / med,
                         seconds=med, ratio=batch / med / base, compile_s=max(a["first"] - med, 0.0)))
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true",
                    help=f"batches {QUICK['batches']}, median of {QUICK['repeats']} (full: {FULL['batches']}, "
                         f"median of {FULL['repeats']})")
    ap.add_argument("--batches", type=batch_sizes, default=None, help="comma-separated batch sizes (default 1,64)")
    ap.add_argument("--repeats", type=positive_int, default=None, help="timed calls per decoder (median reported)")
    ap.add_argument("--cfg", choices=("on", "off", "both"), default="on",
                    help="classifier-free guidance: on (guided, the default), off (conditional rows only), both")
    ap.add_argument("--decoders", type=_decoders, default=None,
                    help=f"comma-separated subset of {','.join(DECODERS)} (raster NTP always runs: the baseline)")
    ap.add_argument("--uncached", action="store_true",
                    help="also time each selected canvas decoder (NAR, NBP, Token-Shuffle) cache-free (cached=False)")
    ap.add_argument("--json", help="also write the results to this file")
    args = ap.parse_args(argv)
    opts = dict(QUICK if args.quick else FULL)
    if args.batches:
        opts["batches"] = args.batches
    if args.repeats:
        opts["repeats"] = args.repeats
    names = args.decoders or list(DECODERS)
    if args.uncached:
        names = names + [n + NO_CACHE for n in names if n in CANVAS]
    modes = {"on": (True,), "off": (False,), "both": (True, False)}[args.cfg]

    import jax

    print(f"machine: {machine()}; jax {jax.__version__} ({jax.default_backend()})")
    print(f"glyph setting: {GRID}x{GRID} codes at {LEVELS} levels, {CLASSES} classes, d={D_MODEL} x {N_LAYERS} layers, "
          f"{N_HEADS} heads, 2-D RoPE, random init; temperature 1, CFG on = guided (guidance {GUIDANCE}), "
          f"off = conditional rows only; median of {opts['repeats']}, compile excluded")
    header = (f"{'decoder':<31} {'B':>3} {'cfg':>3} {'passes':>6} {'images/s':>9} {'vs NTP':>7} {'ms/batch':>9} "
              f"{'compile s':>9}")
    print(header)
    print("-" * len(header), flush=True)
    results = []
    t_all = time.perf_counter()
    for guided in modes:
        for batch in opts["batches"]:
            for row in measure(names, batch, guided, opts["repeats"]):
                results.append(row)
                print(f"{row['decoder']:<31} {row['batch']:>3} {row['cfg']:>3} {row['passes']:>6} "
                      f"{row['images_per_s']:>9.1f} {row['ratio']:>6.2f}x {1e3 * row['seconds']:>9.1f} "
                      f"{row['compile_s']:>9.1f}", flush=True)
    print(f"wall time {time.perf_counter() - t_all:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": machine(), "rows": results}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
