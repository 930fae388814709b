"""Continuous-token decoding speed: MAR constant T vs DiSA (P19), xAR cells (P10) vs continuous raster AR, and
raster AR with DiSA; images/s and head evaluations per image, as ratios to each pair's baseline.

    python benchmarks/continuous_decoding.py            # batch 1 and 64, median of 3, every arm
    python benchmarks/continuous_decoding.py --quick    # batch 1 and 16, median of 2
    python benchmarks/continuous_decoding.py --arms xar --json out.json
    python benchmarks/continuous_decoding.py --cfg both # guidance off and on (classifier-free guidance)

Setting: the 16 x 16 glyph setting of ``experiments/_continuous.py`` (``p10_xar``, ``p19_disa``): 64 continuous
4-dim tokens (an 8 x 8 grid of 2 x 2 patches), 10 classes, the 2-layer d = 64, 4-head backbone, flow heads of width
64 and depth 3. Speed does not depend on the weights, so every model is random-init (no training), each through
its decoder's own init (``tokjax.model.params.init_params`` for the backbone plus ``mar_init`` / ``continuous_init``
/ ``xar_init``). The arms, in three pairs (the first of each pair is its baseline); all are ``tokjax.generate``
Strategies whose ``steps`` is a runtime per-step schedule T(s):

* MAR (``tokjax.vision.mar``, 16 AR steps, cosine fill, random order): constant T = 50 vs DiSA linear 50 -> 5
  (``tokjax.vision.disa.disa_steps(16)``), the same 16 forward passes;
* continuous raster AR (``tokjax.vision.flow.continuous_ar``, 64 passes) with T = 5 head steps per token (P10's
  matched arm) vs xAR (``tokjax.vision.xar``) with 4 x 4-token cells, K = 4 entities, T = 16 flow steps per
  entity (P10: K T = 64 network passes, each one over the 16 tokens of a cell);
* continuous raster AR with constant T = 50 vs DiSA linear 50 -> 5 (``disa_steps(64)``).

Classifier-free guidance (``--cfg``, as ``benchmarks/image_decoding.py``): off by default (guidance 1, conditional
rows only, as the P10 / P19 experiments sample; the default's numbers are unchanged); on = each decoder's guided
Strategy at guidance 1.5 (``mar(..., guidance=)``, ``continuous_ar(..., guidance=)``, ``xar_sample(guidance=)``: a
null-class row per image in every pass, velocities v_u + g (v_c - v_u); MAR's official linear ramp over AR steps,
xAR's over entities, raster AR constant), so each pass and each head evaluation runs on two rows; ``both`` times
both. Temperature 1, Euler. Per (arm, batch, cfg): forward passes per image (``stats["forward_calls"]``: each pass
serves the whole batch), head evaluations per image (``stats["head_evals"]`` = sum_s T(s) |fill_s|, per image, not
doubled by guidance; for xAR a head evaluation is one token's velocity read-out, T per token, so L T; checked
against the schedules before the row is reported), images/s = batch / the median wall-clock seconds of
``--repeats`` calls (end to end: ``sample_mar`` / ``sample_continuous`` / ``xar_sample``, the compiled decode loop
and the copy of the tokens back), and the images/s and head-eval ratios to the pair's baseline at the same batch
and cfg. Every arm is called once first (compile, excluded and reported as ``compile s``: the first call's time
minus the median); the timed calls alternate arms so machine load hits all alike.
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

GRID, PATCH, CLASSES = 8, 2, 10
L, TOKEN_DIM = GRID * GRID, PATCH * PATCH
D_MODEL, N_LAYERS, N_HEADS, HEAD_WIDTH, HEAD_DEPTH = 64, 2, 4, 64, 3
MAR_ITERS, T_UP, T_LOW, RASTER_T, XAR_T, XAR_CELL = 16, 50, 5, 5, 16, 4
GUIDANCE = 1.5  # --cfg on: any value != 1 costs the same (the guided Strategy); 1.5 makes it really guide
CFG_MODES = {"on": (True,), "off": (False,), "both": (False, True)}
FULL = dict(batches=(1, 64), repeats=3)
QUICK = dict(batches=(1, 16), repeats=2)
# arm -> (pair, label); the first arm of each pair is its baseline
ARMS = {
    "mar50": ("mar", f"MAR T={T_UP}"),
    "mar_disa": ("mar", f"MAR DiSA {T_UP}->{T_LOW}"),
    "raster5": ("xar", f"raster AR T={RASTER_T}"),
    "xar": ("xar", f"xAR 4x4 cells T={XAR_T}"),
    "raster50": ("disa", f"raster AR T={T_UP}"),
    "raster_disa": ("disa", f"raster DiSA {T_UP}->{T_LOW}"),
}
PAIRS = {"mar": "mar50", "xar": "raster5", "disa": "raster50"}  # pair -> baseline arm
LABELS = {k: v[1] for k, v in ARMS.items()}


def model_config():
    """Returns the 16 x 16 glyph setting's ModelConfig (as ``experiments._continuous.model_config``)."""
    from tokjax.model import ModelConfig

    return ModelConfig(vocab_size=CLASSES + 1, d_model=D_MODEL, n_layers=N_LAYERS, n_heads=N_HEADS, max_len=1 + L)


def schedule(name: str):
    """Returns (steps: int or int32 [n], fills: int32 [n]) of arm ``name``: T(s) and |fill_s| per AR step (for xAR:
    per entity, |fill_s| = the cell's 16 tokens), so head evals per image = sum_s T(s) |fill_s|."""
    import numpy as np

    from tokjax.vision.disa import disa_steps
    from tokjax.vision.mar import mar_fill_counts

    if name in ("mar50", "mar_disa"):
        fills = mar_fill_counts(L, MAR_ITERS)
        return (T_UP if name == "mar50" else disa_steps(MAR_ITERS, t_low=T_LOW, t_up=T_UP)), fills
    if name in ("raster5", "raster50", "raster_disa"):
        steps = {"raster5": RASTER_T, "raster50": T_UP}.get(name)
        return (disa_steps(L, t_low=T_LOW, t_up=T_UP) if steps is None else steps), np.ones(L, np.int32)
    if name == "xar":
        k = (GRID // XAR_CELL) ** 2
        return XAR_T, np.full(k, XAR_CELL * XAR_CELL, np.int32)
    raise ValueError(f"unknown arm {name!r}; the arms: {', '.join(ARMS)}")


def build(name: str, seed: int = 0, guided: bool = False):
    """Returns sample(labels int32 [N], key) -> (tokens float32 [N, L, c], stats) of arm ``name`` (one of ARMS), on a
    random-init model built by the decoder's own init; ``guided``: classifier-free guidance at ``GUIDANCE`` (a
    null-class row per image), else guidance 1 (conditional rows only)."""
    import functools

    import jax

    from tokjax.model import Model
    from tokjax.model.params import init_params
    from tokjax.vision.flow import continuous_ar, continuous_init, sample_continuous
    from tokjax.vision.mar import mar, mar_init, sample_mar
    from tokjax.vision.xar import xar_init, xar_layout, xar_sample

    steps, _ = schedule(name)  # raises for an unknown arm
    g = GUIDANCE if guided else 1.0
    cfg = model_config()
    k1, k2 = jax.random.split(jax.random.key(seed))
    params = dict(init_params(cfg, k1))
    if name.startswith("mar"):
        params["mar"] = mar_init(k2, cfg, TOKEN_DIM, width=HEAD_WIDTH, depth=HEAD_DEPTH)
        strategy = mar(length=L, iters=MAR_ITERS, steps=steps, guidance=g, guided=guided)
        return functools.partial(sample_mar, Model(params, cfg), strategy, num_classes=CLASSES)
    if name.startswith("raster"):
        params["flow"] = continuous_init(k2, cfg, TOKEN_DIM, width=HEAD_WIDTH, depth=HEAD_DEPTH)
        strategy = continuous_ar(length=L, steps=steps, guidance=g, guided=guided)
        return functools.partial(sample_continuous, Model(params, cfg), strategy, num_classes=CLASSES)
    params["xar"] = xar_init(k2, cfg, TOKEN_DIM)
    return functools.partial(xar_sample, params, cfg, layout=xar_layout((GRID, GRID), "cell", XAR_CELL),
                             num_classes=CLASSES, steps=steps, guidance=g)


def _arms(text: str | None) -> list[str]:
    """Comma-separated arms or pair names (mar, xar, disa); each pair's baseline is added (ratios need it)."""
    if not text:
        return list(ARMS)
    names = [w.strip() for w in text.split(",") if w.strip()]
    unknown = sorted(set(names) - set(ARMS) - set(PAIRS))
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"no arm named {', '.join(unknown) or repr(text)}; the arms: "
                                         f"{', '.join(ARMS)} (or the pairs {', '.join(PAIRS)})")
    want = {a for n in names for a in ([k for k, v in ARMS.items() if v[0] == n] if n in PAIRS else [n])}
    want |= {PAIRS[ARMS[a][0]] for a in want}
    return [a for a in ARMS if a in want]


def measure(names: list[str], batch: int, repeats: int, guided: bool = False) -> list[dict]:
    """Returns one row per arm in ``names``: passes and head evals per image, images/s (median), compile s, and the
    images/s and head-eval ratios to the pair's baseline (``guided``: every arm with classifier-free guidance).
    Raises RuntimeError when a decoder's output shape or its head-eval count disagrees with its schedule."""
    import jax
    import numpy as np

    from tokjax.vision.disa import head_evals

    labels = (np.arange(batch) % CLASSES).astype(np.int32)
    arms = {}
    for name in names:
        sample = build(name, guided=guided)
        t0 = time.perf_counter()
        tokens, stats = sample(labels, jax.random.key(0))
        first = time.perf_counter() - t0
        want = head_evals(*schedule(name))
        if tokens.shape != (batch, L, TOKEN_DIM) or not np.all(np.isfinite(tokens)):
            raise RuntimeError(f"{name}: decoded tokens of shape {tokens.shape} (finite: "
                               f"{bool(np.all(np.isfinite(tokens)))}), expected finite ({batch}, {L}, {TOKEN_DIM})")
        if int(stats["head_evals"]) != want:
            raise RuntimeError(f"{name}: {stats['head_evals']} head evals per image, its schedule gives "
                               f"sum_s T(s) |fill_s| = {want}")
        arms[name] = dict(sample=sample, first=first, passes=int(stats["forward_calls"]), evals=want, times=[])
    times = alternate_timings({name: (lambda r, a=a: np.asarray(a["sample"](labels, jax.random.key(1 + r))[0]))
                               for name, a in arms.items()}, repeats)
    for name, a in arms.items():
        a["times"] = times[name]
    rows = []
    for name, a in arms.items():
        pair = ARMS[name][0]
        base = arms[PAIRS[pair]]
        med, base_med = float(np.median(a["times"])), float(np.median(base["times"]))
        rows.append(dict(arm=LABELS[name], key=name, pair=pair, baseline=PAIRS[pair], batch=batch,
                         cfg="on" if guided else "off",
                         passes=a["passes"], head_evals=a["evals"], images_per_s=batch / med, seconds=med,
                         ratio=base_med / med, evals_ratio=a["evals"] / base["evals"],
                         compile_s=max(a["first"] - med, 0.0)))
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true",
                    help=f"batches {QUICK['batches']}, median of {QUICK['repeats']} (full: {FULL['batches']}, "
                         f"median of {FULL['repeats']})")
    ap.add_argument("--batches", type=batch_sizes, default=None, help="comma-separated batch sizes (default 1,64)")
    ap.add_argument("--repeats", type=positive_int, default=None, help="timed calls per arm (median reported)")
    ap.add_argument("--arms", type=_arms, default=None,
                    help=f"comma-separated subset of {','.join(ARMS)} or the pairs {','.join(PAIRS)} (each pair's "
                         "baseline always runs)")
    ap.add_argument("--cfg", choices=tuple(CFG_MODES), default="off",
                    help=f"classifier-free guidance: off (guidance 1, conditional rows only; the default), on (guided, "
                         f"guidance {GUIDANCE}: a null-class row per image), both")
    ap.add_argument("--json", help="also write the results to this file")
    args = ap.parse_args(argv)
    opts = dict(QUICK if args.quick else FULL)
    if args.batches:
        opts["batches"] = args.batches
    if args.repeats:
        opts["repeats"] = args.repeats
    names = args.arms or list(ARMS)
    modes = CFG_MODES[args.cfg]

    import jax

    print(f"machine: {machine()}; jax {jax.__version__} ({jax.default_backend()})")
    print(f"16x16 glyph setting: {L} continuous tokens of dim {TOKEN_DIM} ({GRID}x{GRID} grid of {PATCH}x{PATCH} "
          f"patches), {CLASSES} classes, d={D_MODEL} x {N_LAYERS} layers, {N_HEADS} heads, flow head width "
          f"{HEAD_WIDTH} depth {HEAD_DEPTH}, random init; cfg off = guidance 1 (conditional rows), on = "
          f"guided at {GUIDANCE} (null-class rows too); temperature 1, Euler; MAR {MAR_ITERS} AR steps (cosine fill); "
          f"median of {opts['repeats']}, compile excluded; ratios to the pair's baseline (first row) at the same cfg")
    header = (f"{'arm':<24} {'B':>3} {'cfg':>3} {'passes':>6} {'head ev':>7} {'ev ratio':>8} {'images/s':>9} "
              f"{'vs base':>7} {'ms/batch':>9} {'compile s':>9}")
    print(header)
    print("-" * len(header), flush=True)
    results = []
    t_all = time.perf_counter()
    for guided in modes:
        for batch in opts["batches"]:
            for row in measure(names, batch, opts["repeats"], guided):
                results.append(row)
                print(f"{row['arm']:<24} {row['batch']:>3} {row['cfg']:>3} {row['passes']:>6} {row['head_evals']:>7} "
                      f"{row['evals_ratio']:>8.3f} {row['images_per_s']:>9.1f} {row['ratio']:>6.2f}x "
                      f"{1e3 * row['seconds']:>9.1f} {row['compile_s']:>9.1f}", flush=True)
    print(f"wall time {time.perf_counter() - t_all:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": machine(), "rows": results}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
