"""P24 TokenAdapt: the local + global hybrid heuristic initialises a new vocabulary better than baselines.

Paper claim (Sharthak et al., arXiv 2505.09738): initialising the unique tokens of a new tokenizer
with a hybrid of a local estimate (the old-tokenizer parts, weighted by similarity to the whole
token and by relative length) and a global estimate (the nearest old tokens in an auxiliary
embedding space) gives lower zero-shot perplexity than simpler initialisations (ReTok,
TransTokenizer, mean of subtokens, random).

Small-scale check: tiny-pydocs (0.87M params, BPE-1024, tied embeddings) is frozen and moved to a
BPE tokenizer with 2048 ids trained on the pydocs training split (full mode adds one with 1536 ids
trained on the Python standard library sources). The auxiliary embedding space is the model's own
mean-pooled final hidden state (no external text-embedding model offline). Defaults of the official
code: temperature 0.3, top-k 10, global weight 0.3, similarity threshold 0.6. Metric: bits per byte
of the held-out pydocs split (per byte, because the tokenizers differ). Baselines: FVT (mean of the
subtoken embeddings) and random Normal(mean, std) rows; the original tokenizer is the reference.

The verdict rule is declared below, before anything runs: the hybrid must beat FVT by more than
0.02 bits per byte (1% of FVT's ~2 bpb) on pydocs-2048; the other targets get the same rule in
the note. Deterministic given the cached model, so one seed.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as `python experiments/p24_tokenadapt.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from experiments._harness import Row, Rule, run_cli  # noqa: E402

RULE = Rule(metric="zero-shot bits per byte on pydocs-2048", higher_is_better=False, threshold=0.02, seeds=(0,),
            reported="'hybrid' (official defaults: temperature 0.3, top-k 10, global weight 0.3), fixed in "
                     "advance; the other variants are ablations")


def run(quick: bool) -> Row:
    import jax

    import tokjax
    from tokjax.data import load_corpus, split_corpus
    from tokjax.pretrained import pretrained_config
    from tokjax.tokenizers import BPETokenizer
    from tokjax.tokenizers._vocab_transfer import bits_per_byte, decompose_vocab, eval_windows, mean_of_parts, random_embeddings
    from tokjax.tokenizers.tokenadapt import tokenadapt_transfer

    model, tok = tokjax.pretrained("tiny-pydocs", progress=False)
    run_cfg = pretrained_config("tiny-pydocs")
    corpus = load_corpus(run_cfg.data.corpus, max_bytes=run_cfg.data.max_bytes)
    train_docs, val_docs = split_corpus(corpus, val_fraction=run_cfg.data.val_fraction, seed=run_cfg.data.split_seed)
    seq_len = 128
    targets = {"pydocs-2048": BPETokenizer.train(train_docs, 2048),
               # supertokens: the same vocabulary size, merges allowed across up to 2 words
               "pydocs-2048-supertokens": BPETokenizer.train(train_docs, 2048, max_words=2)}
    if not quick:
        stdlib = load_corpus("stdlib", max_bytes=2_000_000)
        targets["stdlib-1536"] = BPETokenizer.train(stdlib.documents, 1536)
    # name -> (global_weight, auxiliary space, temperature)
    variants = {"hybrid": (0.3, "hidden", 0.3)}
    if not quick:
        variants |= {"local only": (0.0, "hidden", 0.3), "global only": (1.0, "hidden", 0.3),
                     "hybrid, embedding aux": (0.3, "embedding", 0.3),
                     "hybrid, embedding aux, temperature 1": (0.3, "embedding", 1.0)}

    base = bits_per_byte(model.params, model.cfg, eval_windows(tok, val_docs, seq_len))
    res = {}
    for name, new in targets.items():
        w = eval_windows(new, val_docs, seq_len)
        d = decompose_vocab(new, tok, 16)
        fvt = mean_of_parts(model.params["embed"], d.ids, d.lengths)
        rnd = random_embeddings(jax.random.key(0), model.params["embed"], new.vocab_size)
        r = {
            "fvt": bits_per_byte(model.params, model.cfg, w, embedding=fvt),
            "random": bits_per_byte(model.params, model.cfg, w, embedding=rnd),
            "unique": int((d.exact < 0).sum()),
            "bytes_per_token": sum(len(t.encode()) for t in val_docs) / sum(len(new.encode(t)) for t in val_docs),
        }
        for v, (lam, aux, tau) in variants.items():
            tm = tokenadapt_transfer(model, tok, new, global_weight=lam, aux=aux, temperature=tau)
            r[v] = bits_per_byte(tm.params, tm.cfg, w)
        res[name] = r
    gains = {n: 1 - r["hybrid"] / r["fvt"] for n, r in res.items()}
    verdicts = {n: RULE.verdict([r["hybrid"]], [r["fvt"]]) for n, r in res.items()}
    first = next(iter(res))
    detail = "; ".join(
        f"{n} ({r['unique']} unique tokens, {r['bytes_per_token']:.2f} bytes/token): " + ", ".join(f"{v} {r[v]:.4f}" for v in variants)
        + f", FVT {r['fvt']:.4f}, random {r['random']:.4f} bpb (hybrid vs FVT {100 * gains[n]:+.1f}%)"
        for n, r in res.items())
    note = (f"{detail}. Original tokenizer: {base:.4f} bpb. Verdict on 'hybrid' (official defaults; auxiliary space "
            f"= the model's own mean-pooled final hidden states, a stand-in for the paper's external embedding model); "
            f"the other variants are ablations (temperature 1 was picked after seeing this evaluation set, so it is "
            f"not evidence). Supertokens: BPE trained with max_words=2 pre-tokenization (multi-word tokens), initialised by the "
            f"same TokenAdapt heuristic.")
    return Row(
        pid="P24",
        claim="TokenAdapt's local+global hybrid init gives lower zero-shot loss on a new tokenizer than simpler inits",
        setting=f"tiny-pydocs frozen (0.87M params, BPE-1024) -> {', '.join(targets)}; held-out pydocs split, "
                f"windows of {seq_len}",
        baseline_name="FVT mean-of-subtoken init",
        baseline_value=round(res[first]["fvt"], 4),
        method_value=round(res[first]["hybrid"], 4),
        metric=f"zero-shot bits per byte on {first} (lower is better)",
        verdict=verdicts[first],
        note=note + " Same rule per target: " + ", ".join(f"{n} {v.status}" for n, v in verdicts.items()) + ".",
    )


if __name__ == "__main__":
    raise SystemExit(run_cli(run))
