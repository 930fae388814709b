"""P36 StochasTok vs deterministic tokenization on multi-digit addition.

Paper claim (Sims et al. 2025): training on StochasTok-expanded token sequences (random splits of
tokens into pairs of vocabulary tokens, text unchanged) lets models learn the internal structure
of tokens; e.g. a model "groks" multi-digit addition that deterministic BPE tokenization blocks.

Small-scale check, the paper's addition setting scaled down: a byte-level BPE (no digit
policy, 1400 ids) trained on addition text tokenizes most numbers as whole multi-digit tokens, so
addition of 1-3 digit operands becomes a lookup table over opaque tokens. Answers are written
reversed (as in the paper). A tiny tokjax transformer is trained with the same steps on

* deterministic BPE encodings (baseline), or
* StochasTok encodings, ``stochastok(tok, p=1.0)`` (the paper's p for addition), drawn afresh
  for 3 copies of the training set;

and evaluated on unseen problems with deterministic prompts and *greedy generation*, the
decoded answer string compared with the true one (a StochasTok model may emit any tokenization).
The verdict rule is declared below, before anything runs: StochasTok's exact match must beat the
deterministic baseline by more than 2 points with every training seed. Greedy answers come from
``tokjax.generate`` (KV-cached), the models from ``experiments/_common.py``'s completion trainer.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as `python experiments/p36_stochastok.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from experiments._common import pad_to, train_completion_model  # noqa: E402
from experiments._harness import Row, Rule, decode, run_cli  # noqa: E402

RULE = Rule(metric="held-out exact-match accuracy of greedy answers", higher_is_better=True, threshold=0.02,
            seeds=(0, 1), quick_seeds=(0,), reported="StochasTok p=1.0 (the paper's p for addition), 3 copies of the "
            "training set, fixed in advance")


def greedy_answers(params, cfg, tok, prompts, max_new):
    """Returns the greedy completions (decoded text, up to eos) of ``prompts``, through ``tokjax.generate``."""
    import tokjax

    out = decode(tokjax.Model(params=params, cfg=cfg), [tok.encode(p) for p in prompts], max_new_tokens=max_new,
                 eos_id=tok.eos_id, pad_id=tok.pad_id)
    answers = []
    for c in out.completions():
        c = c[:-1] if len(c) and c[-1] == tok.eos_id else c  # the answer ends before eos
        answers.append(tok.decode(c))
    return answers


def run(quick: bool) -> Row:
    import numpy as np

    from tokjax.data import arithmetic
    from tokjax.tokenizers import BPETokenizer
    from tokjax.tokenizers.right_to_left_digits import encode_arithmetic
    from tokjax.tokenizers.stochastok import stochastok

    steps = 600 if quick else 3000
    seeds = RULE.run_seeds(quick)
    digits = (1, 3)

    def reversed_answers(exs):
        return [dataclasses.replace(e, completion=e.answer[::-1]) for e in exs]

    train_ex = reversed_answers(arithmetic(8000 if quick else 20000, digits=digits, seed=1))
    seen = {e.prompt for e in train_ex}
    test_ex = [e for e in reversed_answers(arithmetic(600, digits=digits, seed=2)) if e.prompt not in seen]
    tok = BPETokenizer.train([e.text for e in reversed_answers(arithmetic(30000, digits=(1, 4), seed=0))],
                             vocab_size=1400, digits="none", min_frequency=2)
    det = encode_arithmetic(tok, train_ex)
    st_tok = stochastok(tok, 1.0, seed=0)
    copies = [encode_arithmetic(st_tok, train_ex) for _ in range(3)]
    W = max(e["tokens"].shape[1] for e in copies + [det])
    sto = {k: np.concatenate([pad_to(c, W, tok.pad_id)[k] for c in copies]) for k in ("tokens", "mask")}
    det = pad_to(det, W, tok.pad_id)
    ratio = float(sto["mask"].sum() / (3 * det["mask"].sum()))

    acc = {"deterministic": [], "stochastok": []}
    for seed in seeds:
        for name, data in (("deterministic", det), ("stochastok", sto)):
            params, cfg, _ = train_completion_model(data, tok.vocab_size, steps=steps, seed=seed)
            outs = greedy_answers(params, cfg, tok, [e.prompt for e in test_ex], max_new=8)
            acc[name].append(float(np.mean([o == e.completion for o, e in zip(outs, test_ex)])))

    verdict = RULE.verdict(acc["stochastok"], acc["deterministic"], seeds=seeds)
    single = sum(1 for e in test_ex if len(tok.encode(str(e.a))) == 1 and len(tok.encode(str(e.b))) == 1)
    note = (f"exact match (greedy, answer string): deterministic {', '.join(f'{a:.3f}' for a in acc['deterministic'])}; "
            f"StochasTok p=1.0 {', '.join(f'{a:.3f}' for a in acc['stochastok'])} per seed. "
            f"BPE {tok.vocab_size} ids, digits='none': {single}/{len(test_ex)} test problems have both operands as "
            f"single tokens. StochasTok completions are {ratio:.2f}x longer in tokens. {steps} AdamW steps, batch 64, "
            f"{len(train_ex)} train problems (StochasTok: 3 random tokenizations of each), {len(test_ex)} unseen test "
            f"problems, answers reversed as in the paper; deterministic prompts at test time.")
    return Row(
        pid="P36",
        claim="StochasTok-expanded training lets a model learn multi-digit addition that deterministic BPE blocks",
        setting=f"a+b=reversed(c), {digits[0]}-{digits[1]} digit operands, byte-level BPE without digit policy, "
                f"tiny tokjax transformer d=64 x2, {len(seeds)} seed(s)",
        baseline_name="deterministic BPE tokenization",
        baseline_value=round(float(np.mean(acc["deterministic"])), 4),
        method_value=round(float(np.mean(acc["stochastok"])), 4),
        metric="held-out exact-match accuracy of greedy answers (higher is better)",
        verdict=verdict,
        note=note,
    )


if __name__ == "__main__":
    raise SystemExit(run_cli(run))
