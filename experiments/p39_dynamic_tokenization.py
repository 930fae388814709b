"""P39 Dynamic tokenization: batch-level BPE shortens sequences at a small cost in bits per byte.

Paper claim (Feher, Vulic, Minixhofer; ACL 2025): merging frequent subword pairs inside each batch
(within pretokens) and embedding the new tokens with a ZeTT hypernetwork gives >20% shorter
sequences with <2% performance loss (XLM-R, 14 languages); for Mistral-7B scoring, minimal
degradation up to ~17% reduction.

Small-scale check: tiny-pydocs (0.87M params, BPE-1024) scores its held-out Python-docs split in
windows of 128 tokens, 16 windows per batch. Each batch is re-tokenized by dynamic_merges to a
target length reduction r; new tokens get the mean of their parts' embeddings (FVT, input and tied
output rows) and, when a ZeTT hypernetwork for tiny-pydocs is cached (experiments/p26_zett.py
trains one), the hypernetwork's embeddings too. The model scores the dynamic token sequence with
the batch's extended vocabulary (old ids + the batch's merges), so the metric is bits per byte of
the same text (per byte, never per token).

The in-batch vocabulary is chosen from the scored text itself, so scoring with it leaks (the
softmax knows which long tokens occur); the verdict therefore uses leave-one-out scoring: each row
is tokenized with the merges computed on the other rows of its batch (``apply_merges``). Both are
reported. The verdict rule is declared below, before anything runs: leave-one-out bits per byte at
the operating point (the smallest target reaching >= 17% shorter sequences, else the largest
reduction reached; chosen on length, never on bits per byte) must stay within 0.03 bpb (2% of the
~1.52 bpb static baseline) of static tokenization -- a non-inferiority margin. The embedding
method is fixed in advance (the paper's hypernetwork when one is cached); whether the operating
point reached 17% shorter sequences is a second rule, reported in the note.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as `python experiments/p39_dynamic_tokenization.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from experiments._harness import Row, Rule, figure_path, run_cli  # noqa: E402

RULE = Rule(metric="leave-one-out bits per byte at the operating point vs static", higher_is_better=False,
            threshold=-0.03, seeds=(0,),
            reported="ZeTT hypernetwork embeddings when p26's hypernetwork is cached (the paper's method), else "
                     "mean-of-parts; fixed in advance (the other method is reported in the note)")
RULE_SHORTER = Rule(metric="sequence length reduction at the operating point", higher_is_better=True, threshold=0.17,
                    seeds=(0,))


def run(quick: bool) -> Row:
    import jax
    import jax.numpy as jnp
    import numpy as np

    import tokjax
    from tokjax.data import load_corpus, split_corpus
    from tokjax.losses import token_stats
    from tokjax.pretrained import pretrained_config
    from tokjax.tokenizers._vocab_transfer import eval_windows
    from tokjax.tokenizers.dynamic_tokenization import (
        DynamicBatch, apply_merges, dynamic_embeddings, dynamic_merges, hypernet_dynamic_embeddings, joinable_mask,
        new_token_bias,
    )

    model, tok = tokjax.pretrained("tiny-pydocs", progress=False)
    run_cfg = pretrained_config("tiny-pydocs")
    corpus = load_corpus(run_cfg.data.corpus, max_bytes=run_cfg.data.max_bytes)
    _, val_docs = split_corpus(corpus, val_fraction=run_cfg.data.val_fraction, seed=run_cfg.data.split_seed)
    seq_len, B, K = 128, 16, 768
    windows = eval_windows(tok, val_docs, seq_len)
    n_rows = (windows.tokens.shape[0] // B) * B
    if quick:
        n_rows = min(n_rows, 4 * B)
    tokens = windows.tokens[:n_rows, :]
    lengths = 1 + windows.mask[:n_rows].sum(1).astype(np.int32)  # bos + text tokens
    nbytes = sum(len(tok.id_to_bytes[i]) for r, n in zip(tokens, lengths) for i in r[1:n])
    V = tok.vocab_size
    reductions = (0.0, 0.2, 0.4) if quick else (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6)

    # the hypernet p26_zett.py caches: the fully trained one, else the --quick one, else none
    from tokjax.pretrained import cache_root
    from tokjax.train.recipes.zett import cached_hypernet

    cached = dict(cache_dir=cache_root() / "zett", name="tiny-pydocs", train_if_missing=False)
    got = cached_hypernet(model, tok, steps=600, **cached) or cached_hypernet(model, tok, steps=60, **cached)
    hypernet, hn_meta = got if got is not None else (None, {})

    source = model.params["embed"]

    methods = ["mean"] + (["hypernet"] if hypernet is not None else [])
    params, cfg, pad = model.params, model.cfg, tok.pad_id

    def tables(parts, num_new):
        out = {"mean": dynamic_embeddings(source, parts, num_new)}
        if hypernet is not None:
            out["hypernet"] = hypernet_dynamic_embeddings(hypernet, source, parts, num_new)
        return out

    def row_nll(ids, length, table, bias):
        lp = token_stats(params, cfg, {"tokens": ids[None]}, embedding=table, head=table.T, logit_bias=bias).logp[0]
        return -jnp.sum(jnp.where(jnp.arange(seq_len) < length - 1, lp, 0.0))

    @jax.jit
    def score_batch(ids, lens, join, target):
        """Returns ({mode: {method: nll}}, {mode: tokens}) for one batch at one target reduction."""
        nll, toks = {}, {}
        # in-batch: the paper's batch-level merges; the scored rows chose the softmax's new tokens
        out = dynamic_merges(ids, lens, join, vocab_size=V, max_new_tokens=K, target_reduction=target, pad_id=pad)
        bias = new_token_bias(V, K, out.num_new)
        nll["in-batch"] = {m: jnp.sum(jax.vmap(row_nll, (0, 0, None, None))(out.ids, out.lengths, t, bias))
                           for m, t in tables(out.parts, out.num_new).items()}
        toks["in-batch"] = jnp.sum(out.lengths)

        # leave-one-out: each row is tokenized with the merges of the other rows of its batch
        def one(r):
            others = dynamic_merges(ids, jnp.where(jnp.arange(B) == r, 0, lens), join, vocab_size=V,
                                    max_new_tokens=K, target_reduction=target, pad_id=pad)
            row = DynamicBatch(ids[r][None], lens[r][None], join[r][None], others.parts, jnp.int32(0))
            mine = apply_merges(row, others.parts, others.num_new, vocab_size=V, pad_id=pad)
            b = new_token_bias(V, K, others.num_new)
            return {m: row_nll(mine.ids[0], mine.lengths[0], t, b)
                    for m, t in tables(others.parts, others.num_new).items()}, mine.lengths[0]

        per_row, lengths_loo = jax.lax.map(one, jnp.arange(B))
        nll["leave-one-out"] = {m: jnp.sum(v) for m, v in per_row.items()}
        toks["leave-one-out"] = jnp.sum(lengths_loo)
        return nll, toks

    joins = [joinable_mask(tok, tokens[s : s + B], lengths[s : s + B]) for s in range(0, n_rows, B)]
    modes = ("in-batch", "leave-one-out")
    results = {}
    for r in reductions:
        total = {md: {m: 0.0 for m in methods} for md in modes}
        n_tok = {md: 0 for md in modes}
        for k, s in enumerate(range(0, n_rows, B)):
            nll, toks = score_batch(jnp.asarray(tokens[s : s + B]), jnp.asarray(lengths[s : s + B]),
                                    jnp.asarray(joins[k]), jnp.float32(r))
            for md in modes:
                n_tok[md] += int(toks[md])
                for m in methods:
                    total[md][m] += float(nll[md][m])
        results[r] = {md: {"tokens": n_tok[md], **{m: v / math.log(2) / nbytes for m, v in total[md].items()}}
                      for md in modes}

    base_tokens = results[0.0]["in-batch"]["tokens"]
    base_bpb = results[0.0]["in-batch"]["mean"]
    lines = {md: [] for md in modes}
    for r, res in results.items():
        for md in modes:
            red = 1 - res[md]["tokens"] / base_tokens
            res[md]["reduction"] = red
            lines[md].append(f"{r:.2f}: -{100 * red:.1f}% length, " + ", ".join(
                f"{m} {res[md][m]:.4f} ({100 * (res[md][m] / base_bpb - 1):+.1f}%)" for m in methods))
    # the operating point the paper quotes: about 20% shorter sequences, scored leave-one-out; when the
    # held-out rows never get that short, the largest reduction reached
    md = "leave-one-out"
    reached = [r for r in results if results[r][md]["reduction"] >= 0.17]
    at = (min(reached, key=lambda r: results[r][md]["reduction"]) if reached
          else max(results, key=lambda r: results[r][md]["reduction"]))
    chosen = methods[-1]  # the hypernet when cached (the paper's method), fixed before scoring
    red_at = results[at][md]["reduction"]
    verdict = RULE.verdict([results[at][md][chosen]], [base_bpb])
    shorter = RULE_SHORTER.verdict([red_at], [0.0])

    fig = None
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig_path = figure_path("P39", "reduction_vs_bpb.png")
        plt.figure(figsize=(5.4, 3.6))
        for mode, style in zip(modes, ("--", "-")):
            xs = [100 * results[r][mode]["reduction"] for r in results]
            for m in methods:
                plt.plot(xs, [100 * (results[r][mode][m] / base_bpb - 1) for r in results], "o" + style,
                         label=f"{m}, {mode}", ms=3)
        plt.axhline(2.0, color="grey", ls=":", lw=0.8, label="paper: <2% loss")
        plt.xlabel("sequence length reduction (%)")
        plt.ylabel("bits per byte increase (%)")
        plt.title("P39 dynamic tokenization, tiny-pydocs")
        plt.legend(fontsize=7)
        plt.tight_layout()
        plt.savefig(fig_path, dpi=120)
        plt.close()
        fig = str(fig_path)
    except Exception:  # a figure is a bonus, never a failure
        fig = None

    note = ("Leave-one-out (each row tokenized with the merges of the other rows, so the softmax does not know "
            "the scored text): " + "; ".join(lines["leave-one-out"])
            + ". In-batch (the row helped choose its own new tokens, which favours the method): "
            + "; ".join(lines["in-batch"])
            + f". Static: {base_bpb:.4f} bpb over {nbytes} bytes ({base_tokens} tokens, {n_rows} windows of "
            f"{seq_len}, batches of {B}, pretoken boundaries, <= {K} merges). "
            + (f"Hypernet: the cached ZeTT hypernetwork of p26_zett.py ({hn_meta['settings']['steps']} steps, "
               f"residual variant)." if hypernet is not None
               else "No cached ZeTT hypernetwork: only mean-of-parts embeddings were measured.")
            + " The dynamic token sequence is scored as one segmentation (no marginalisation), which favours "
              "static tokenization; the paper's <2% is with large models and downstream tasks."
            + f" Operating point reaches >= 17% shorter sequences: {shorter.status} ({100 * red_at:.1f}%).")
    return Row(
        pid="P39",
        claim=">20% shorter sequences from batch-level BPE merges cost <2% (ZeTT-embedded new tokens)",
        setting=f"tiny-pydocs (0.87M params, BPE-1024), held-out pydocs split, {n_rows} windows of {seq_len}, "
                f"batch-level merges within pretokens, leave-one-out scoring",
        baseline_name="static tokenization (bits per byte)",
        baseline_value=round(base_bpb, 4),
        method_value=round(results[at][md][chosen], 4),
        metric=f"bits per byte at {100 * red_at:.1f}% shorter sequences ({chosen} embeddings; lower is better)",
        verdict=verdict,
        figure=fig,
        note=note,
    )


if __name__ == "__main__":
    raise SystemExit(run_cli(run))
