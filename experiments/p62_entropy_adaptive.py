"""P62 Entropy Adaptive Decoding: quality vs large-model token fraction, EAD threshold sweep vs random switching.

Paper claim (EAD, abstract): switching per token between a small and a large model on the
rolling entropy of the active model's logits keeps most of the large model's quality while the
large model emits only a fraction of the tokens (MATH: 96.7 % of 11B's score at 43 % of tokens).
The notes' tiny check: the EAD quality-vs-fraction curve should dominate random switching at
matched large-model fractions.

Small-scale check: M_L = the cached ``tiny-pydocs`` model (4 layers, d=128); M_S = a 1-layer
d=32 model with the same tokenizer trained by tokjax on the same pydocs split (cached under the
TOKJAX cache). Greedy continuations of held-out pydocs prompts with ``entropy_adaptive_generate``
over a tau sweep (w = 5, the paper's value, and w = 1; taus at quantiles of both models' entropies).
Quality: bits per token of the generated continuation scored by M_L (lower is better; M_L's own
greedy text is the reference point). Baseline: per-token random switching (each token from M_L
with probability f, both models fed every token; EAD's strategy with its entropy rule replaced by a
coin flip, through ``generate``) at the realised EAD fractions, over seeds.
(A first attempt on char-level 3-digit addition was dropped: neither tiny model learned the
task in a CPU-affordable number of steps, so accuracy was ~1 % for both.)

Verdict (``RULE``, declared before anything runs): the reported numbers are the mean bits/token
over the interior sweep points (0 < f < 1) of w = 5 (the paper's window, fixed in advance), EAD
(deterministic, greedy) vs random switching at the same fractions, one value per random-switching
seed. ``reproduced`` when EAD is better than random switching (threshold 0 bits/token) for every
seed, ``not-reproduced`` for none, ``inconclusive`` otherwise.
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as `python experiments/p62_entropy_adaptive.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from experiments._common import cached, load_setup, load_tree, make_prompts, save_tree  # noqa: E402
from experiments._harness import Row, Rule, decode, figure_path, run_cli, train_model  # noqa: E402

RULE = Rule(metric="bits/token of the continuation under M_L, mean over interior sweep points (w=5)",
            higher_is_better=False, threshold=0.0, seeds=(0, 1, 2, 3, 4), quick_seeds=(0, 1, 2),
            reported="EAD with window 5 over the fixed entropy-quantile tau sweep, interior points (0 < f < 1)")

PROMPT, NEW = 16, 24


def small_model(model, dataset, steps: int):
    """Returns a 1-layer d=32 model on the same tokenizer and data as ``model``, trained ``steps`` steps (cached)."""
    import dataclasses

    import jax

    import tokjax

    cfg = dataclasses.replace(model.cfg, d_model=32, n_layers=1, n_heads=2, n_kv_heads=1)
    path = cached(f"p62_small_1x32_s{steps}.npz")
    if path.is_file():
        return tokjax.Model(params=load_tree(path, tokjax.Model.init(cfg, jax.random.PRNGKey(0)).params), cfg=cfg)
    small, _ = train_model(cfg, steps=steps, batch_fn=dataset.train, batch_size=16, lr=1e-2,
                           warmup_steps=max(1, steps // 10), weight_decay=0.0, log_every=50)
    save_tree(path, small.params)
    return small


@functools.cache
def _random_switching():
    """Returns the random-switching baseline's Strategy class (built on first use: tokjax is imported lazily)."""
    import jax
    import jax.numpy as jnp

    from tokjax.decoding.entropy_adaptive import EntropyAdaptive

    class RandomSwitching(EntropyAdaptive):
        """EAD's two-model step with the entropy rule replaced by a coin flip: M_L emits with probability ``tau``.

        Both models read every token, as in EAD. The probability lives in EAD's per-row threshold
        slot; each step sets EAD's choice (``use_large``, and a +-inf threshold for the first step,
        where EAD decides from M_S's entropy) before running EAD's step, then restores it.
        """

        def step(self, params, cfg, transform, s, eos_id=None):
            fraction = s.extra.tau
            key, sub = jax.random.split(s.key)
            use = jax.random.uniform(sub, fraction.shape) < fraction
            s = s.replace(key=key, extra=s.extra.replace(use_large=use, tau=jnp.where(use, -jnp.inf, jnp.inf)))
            s = super().step(params, cfg, transform, s, eos_id)
            return s.replace(extra=s.extra.replace(tau=fraction))

    return RandomSwitching


def random_switching(small, large, prompts, fraction: float, seed: int, new: int):
    """Returns [N, new] ids generated greedily with per-token random switching (M_L with probability ``fraction``)."""
    import jax
    import numpy as np

    from tokjax import logits as L

    strategy = _random_switching()(large_cfg=large.cfg, window=1, large_params=large.params, tau=fraction)
    out = decode(small, prompts, max_new_tokens=new, key=jax.random.key(seed), logits=L.greedy(), strategy=strategy)
    return np.stack(out.completions())


def run(quick: bool) -> Row:
    import math

    import jax
    import jax.numpy as jnp
    import numpy as np

    from tokjax import logits as L
    from tokjax.decoding.entropy_adaptive import entropy_adaptive_generate, relative_cost
    from tokjax.losses import token_stats

    large, tok, ds = load_setup()
    steps = 300 if quick else 1000
    n_prompts = 48 if quick else 128
    seeds = RULE.run_seeds(quick)
    small = small_model(large, ds, steps)
    n_s = sum(int(np.prod(a.shape)) for a in jax.tree.leaves(small.params))
    n_l = sum(int(np.prod(a.shape)) for a in jax.tree.leaves(large.params))
    prompts = make_prompts(tok, "prose", n_prompts, seed=62, length=PROMPT)
    width = PROMPT + NEW
    lens = np.array([len(p) for p in prompts])
    rows = np.arange(len(prompts))
    score_logp = jax.jit(lambda x: token_stats(large.params, large.cfg, {"tokens": x}).logp)

    def score(gen):
        """Returns mean bits/token of the generated ids [N, NEW] under M_L."""
        x = np.zeros((len(prompts), width), np.int32)
        for i, p in enumerate(prompts):
            x[i, : len(p)] = p
            x[i, len(p): len(p) + NEW] = gen[i]
        logp = np.asarray(score_logp(jnp.asarray(x)))  # [N, width - 1]: log p(x[t + 1] | x[:t + 1])
        pos = lens[:, None] + np.arange(NEW)[None, :]
        return float(-logp[rows[:, None], pos - 1].mean() / math.log(2))

    def ead(tau, window):
        out = entropy_adaptive_generate(small, large, prompts, tau=tau, window=window, max_new_tokens=NEW,
                                        logits=L.greedy())
        gen = np.stack(out.completions())
        return score(gen), float(out.large_fraction.mean()), out

    q_s, _, probe = ead(np.inf, 5)
    q_l, _, probe_l = ead(-np.inf, 5)
    # M_L's entropies are far lower than M_S's, so taus spread over both reach high fractions too
    both = np.concatenate([probe.entropy.ravel(), probe_l.entropy.ravel()])
    taus = np.unique(np.round(np.quantile(both, [0.1, 0.3, 0.5, 0.65, 0.8, 0.9]), 3))
    curves = {}
    for window in (5, 1):
        pts = []
        for tau in taus:
            q, frac, _ = ead(float(tau), window)
            rnd = [score(random_switching(small, large, prompts, frac, s, NEW)) for s in seeds]
            pts.append((float(tau), frac, q, float(np.mean(rnd)), float(np.std(rnd, ddof=1) / np.sqrt(len(seeds))),
                        rnd))
        curves[window] = pts

    pts = [p for p in curves[5] if 0 < p[1] < 1]
    if not pts:
        raise RuntimeError("P62: no interior sweep point (0 < f < 1) at w=5; the tau sweep is broken")
    ead_bits = float(np.mean([p[2] for p in pts]))
    rnd_bits = [float(np.mean([p[5][i] for p in pts])) for i in range(len(seeds))]  # per random-switching seed
    verdict = RULE.verdict([ead_bits] * len(seeds), rnd_bits, seeds=seeds)
    se = float(np.mean([p[4] for p in pts]))
    mean_gain = float(np.mean(rnd_bits)) - ead_bits

    figure = None
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(5, 3.5))
        for w, style in ((5, "o-"), (1, "s--")):
            c = np.array([p[:5] for p in curves[w]])
            ax.plot(c[:, 1], c[:, 2], style, label=f"EAD w={w}")
            ax.errorbar(c[:, 1], c[:, 3], yerr=c[:, 4], fmt="x:", label=f"random (matched to w={w})")
        ax.plot([0, 1], [q_s, q_l], "k*", ms=10, label="M_S / M_L alone")
        ax.set_xlabel("large-model token fraction")
        ax.set_ylabel("bits/token under M_L (lower better)")
        ax.legend(fontsize=7)
        fig.tight_layout()
        figure = figure_path("P62", "quality_vs_fraction.png")
        fig.savefig(figure, dpi=120)
        plt.close(fig)
    except ImportError:
        pass

    mid = min(pts, key=lambda p: abs(p[1] - 0.4))
    fmt = lambda c: "; ".join(f"tau={t:.2f}: f={f:.2f} EAD {a:.3f} vs random {r:.3f}" for t, f, a, r, *_ in c)  # noqa: E731
    note = (f"Bits/token of {NEW}-token greedy continuations of {n_prompts} pydocs val prompts, scored by M_L: "
            f"M_S alone {q_s:.3f}, M_L alone {q_l:.3f} ({n_s} vs {n_l} params). w=5: {fmt(curves[5])}. "
            f"w=1: {fmt(curves[1])}. Share of the M_S-to-M_L quality gap closed at f={mid[1]:.2f}: EAD "
            f"{(q_s - mid[2]) / (q_s - q_l):.0%}, random {(q_s - mid[3]) / (q_s - q_l):.0%}. Mean EAD advantage over random at matched f (w=5, interior points): "
            f"{mean_gain:+.3f} bits/token (2 SE of random = {2 * se:.3f}); at f={mid[1]:.2f}: EAD {mid[2]:.3f} vs "
            f"random {mid[3]:.3f}. Compute a real implementation would spend "
            f"at f={mid[1]:.2f}: {float(relative_cost(mid[1], n_s, n_l)):.2f} of always-M_L (params as FLOP proxy); "
            "this implementation runs both models every step. Quality is judged by M_L itself (its own greedy text "
            "scores best by construction), not by a task metric. The paper's switching stability condition is not "
            "implemented.")
    return Row(
        pid="P62",
        claim="EAD: rolling-entropy switching between a small and a large model keeps most of the large model's "
              "quality at a fraction of its tokens; its quality-vs-fraction curve dominates random switching",
        setting=f"M_L tiny-pydocs (4x128) vs M_S 1x32 trained {steps} steps on the same data, greedy {NEW} tokens, "
                f"{n_prompts} prompts, tau at quantiles of both models' entropies, w=5 (and w=1), random baseline {len(seeds)} seeds",
        baseline_name="random switching at matched large-token fractions (w=5 interior sweep points)",
        baseline_value=round(float(np.mean(rnd_bits)), 4),
        method_value=round(ead_bits, 4),
        metric="bits/token of the continuation under M_L, mean over the interior sweep points (lower is better)",
        verdict=verdict,
        figure=None if figure is None else str(figure),
        note=note,
    )


if __name__ == "__main__":
    raise SystemExit(run_cli(run))
