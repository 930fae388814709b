"""P73 vocabulary keys and In-Context Navigation (ICN) on SmolLM2-135M-Instruct.

Paper ("Correlation and Navigation in the Vocabulary Key Representation Space of Language Models",
ICLR 2025; no official code): next-token prediction is a query h(x) against fixed keys W_U[v]; the middle
ranks of a distribution are crowded by tokens whose keys resemble the top-1 key (a spurious correlation),
so answers read off one distribution beyond its top-1 are often wrong; In-Context Navigation (list the
answers already given, ask for a different one, decode greedily) reaches new correct answers instead.

Setting: ``tokjax.pretrained("smollm2-135m-instruct")`` (tied embeddings: the keys are the embedding rows).

Claims, rules declared below before anything runs (one deterministic model; "seed" 0 = the fixed context
sample, the fixed probe split and sampling key 0):

* ``key-correlation`` (``RULE_CORR``): 500 contexts of 64 tokens from the bundled pydocs corpus (64 with
  --quick), cut at random offsets (seed 0). Per context, rho = Spearman(-rank, cos(W_U[v], W_U[top1])) over
  the tokens ranked 2..100 (:func:`tokjax.analysis.vocab_keys.key_rank_correlation`). Baseline: the same
  with the key matrix's rows permuted at random (shuffled-key control, expected 0). Reproduced if mean rho
  exceeds the control's mean by > 0.1 AND rho > 0 on >= 80% of contexts (when the first part holds and
  the second does not, the verdict is downgraded to inconclusive).
* ``icn-vs-top-n`` (``RULE_TOPN``) and ``icn-vs-sampling`` (``RULE_SAMPLE``): the 12 ``open_sets`` probes
  (multi-answer questions with truth from the Python standard library), N = 5 answers per probe (3 with
  --quick). Metric: distinct correct answers among the N, divided by N (a repeated or wrong answer scores
  nothing), averaged over the test probes. Methods: ICN (N greedy rounds), top-N (the N most likely first
  tokens of ICN's round-1 prompt, each forced and completed greedily), sampling (N samples at T = 1 of the
  same prompt, key 0). Split: even-indexed probes are the dev half, odd-indexed the test half; each method
  picks its prompt template on the dev half (highest dev metric, first listed on ties), the verdict uses
  the test half only. Reproduced if ICN's test metric exceeds the baseline's (threshold 0).

Templates (all through the chat template; the answer is opened with a backtick so the model names a thing
instead of writing a sentence; a plain prompt without it made SmolLM2 start almost every answer with "The"):
``tick`` (the notes' wording "... Already given: a, b. Give a different one:"), ``tick-quoted`` (the same,
answers listed in backticks), ``tick-explicit`` ("These were already given: ... Name a different one that is
not in this list."; full mode only). Expected: a 135M model follows "give a different one" weakly (a probe
on the dev half before the rules were fixed: it mostly repeated its first answer), so ICN may lose here;
the paper's models are 7B-8B.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as `python experiments/p73_vocab_navigation.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from experiments._harness import Row, Rule, run_cli  # noqa: E402

RULE_CORR = Rule(metric="mean Spearman(-rank, key cosine to top-1) over ranks 2..100", higher_is_better=True,
                 threshold=0.1, seeds=(0,),
                 reported="window 2..100 fixed in advance; baseline = shuffled-key control; also needs rho > 0 on "
                          ">= 80% of contexts (else at most inconclusive)")
RULE_TOPN = Rule(metric="distinct correct answers / N on the test probes", higher_is_better=True, threshold=0.0,
                 seeds=(0,), reported="each method's template chosen on the dev probes (even indices); test = odd")
RULE_SAMPLE = Rule(metric="distinct correct answers / N on the test probes", higher_is_better=True, threshold=0.0,
                   seeds=(0,), reported="each method's template chosen on the dev probes (even indices); test = odd; "
                                        "sampling T=1, key 0")

MODEL = "smollm2-135m-instruct"
WINDOW = (2, 100)
CONTEXT_LEN = 64
MIN_POSITIVE = 0.8
MAX_NEW = 12


def templates(quick: bool) -> dict:
    from tokjax.decoding.navigation import NavigationTemplate

    t = {"tick": NavigationTemplate(answer_prefix="`"),
         "tick-quoted": NavigationTemplate(more="{question} Already given: `{given}`. Give a different one:",
                                           answer_prefix="`", separator="`, `")}
    if not quick:
        t["tick-explicit"] = NavigationTemplate(
            first="{question}", answer_prefix="`",
            more="{question} These were already given: {given}. Name a different one that is not in this list.")
    return t


def contexts(tok, n: int, seed: int = 0):
    """Returns int32 [n, CONTEXT_LEN] windows of the pydocs corpus at random offsets."""
    import numpy as np

    from tokjax.data import load_corpus

    ids = np.asarray(tok.encode(load_corpus("pydocs").text), np.int32)
    starts = np.random.default_rng(seed).choice(len(ids) - CONTEXT_LEN, n, replace=False)
    return np.stack([ids[s:s + CONTEXT_LEN] for s in starts])


def run(quick: bool) -> list[Row]:
    import time

    import jax
    import numpy as np

    import tokjax
    from tokjax.analysis.vocab_keys import key_neighbours, key_rank_correlation, unembedding_keys
    from tokjax.data._open_sets import distinct_correct, open_sets
    from tokjax.decoding.navigation import in_context_navigation, sample_answers, top_n_first_tokens

    t0 = time.time()
    model, tok = tokjax.pretrained(MODEL)
    cfg = model.cfg

    # --- (i) rank vs key-similarity correlation ------------------------------------------------------
    n_ctx = 64 if quick else 500
    ctx = contexts(tok, n_ctx)
    res = key_rank_correlation(model.params, cfg, ctx, window=WINDOW, batch_size=32)
    keys = unembedding_keys(model.params, cfg)
    perm = np.random.default_rng(0).permutation(cfg.vocab_size)
    ctrl = key_rank_correlation(model.params, cfg, ctx, window=WINDOW, batch_size=32, keys=keys[perm])
    rho, rho_c = np.asarray(res.rho, np.float64), np.asarray(ctrl.rho, np.float64)
    share = float(np.mean(rho > 0))
    p_id = tok.encode(" P")
    nbr_txt = ""
    if len(p_id) == 1:
        nb, cs = key_neighbours(model.params, cfg, p_id, k=8)
        nbr_txt = "; nearest keys to ' P': " + ", ".join(f"{tok.decode([int(i)])!r} {float(c):.2f}"
                                                        for i, c in zip(nb[0], cs[0]))
    print(f"correlation ({time.time() - t0:.0f}s): mean rho {rho.mean():.3f} (control {rho_c.mean():.3f}), "
          f"positive on {share:.2f} of {n_ctx} contexts{nbr_txt}", flush=True)
    v_corr = RULE_CORR.verdict([rho.mean()], [rho_c.mean()])
    if v_corr.status == "reproduced" and share < MIN_POSITIVE:
        import dataclasses

        v_corr = dataclasses.replace(v_corr, status="inconclusive")

    # --- (ii) navigation on open-set probes ----------------------------------------------------------
    N = 3 if quick else 5
    probes = open_sets()
    halves = {"dev": probes[0::2], "test": probes[1::2]}
    temps = templates(quick)

    def answers(method, template, ps):
        qs, cl = [p.question for p in ps], [p.normalize for p in ps]
        kw = dict(template=template, max_new_tokens=MAX_NEW, clean=cl)
        if method == "icn":
            return in_context_navigation(model, tok, qs, N, **kw)
        if method == "top-n":
            return top_n_first_tokens(model, tok, qs, N, **kw)
        return sample_answers(model, tok, qs, N, key=jax.random.key(0), temp=1.0, **kw)

    def score(ps, nav):
        return float(np.mean([distinct_correct(p, a) / N for p, a in zip(ps, nav.answers)]))

    methods = ("icn", "top-n", "sampling")
    dev = {m: {} for m in methods}
    for m in methods:
        for name, t in temps.items():
            dev[m][name] = score(halves["dev"], answers(m, t, halves["dev"]))
        print(f"dev {m} ({time.time() - t0:.0f}s): {dev[m]}", flush=True)
    chosen = {m: max(temps, key=lambda name, m=m: dev[m][name]) for m in methods}  # first listed wins ties
    test, shown = {}, {}
    for m in methods:
        nav = answers(m, temps[chosen[m]], halves["test"])
        test[m] = score(halves["test"], nav)
        shown[m] = {p.name: a for p, a in zip(halves["test"], nav.answers)}
        print(f"test {m} [{chosen[m]}] ({time.time() - t0:.0f}s): {test[m]:.3f} {shown[m]}", flush=True)

    setting_nav = (f"SmolLM2-135M-Instruct, chat template, {len(probes)} open_sets probes (6 dev / 6 test), N={N} "
                   f"answers, greedy, <= {MAX_NEW} new tokens" + (" (--quick)" if quick else ""))
    dev_txt = "; ".join(f"{m}: " + ", ".join(f"{k} {v:.3f}" for k, v in dev[m].items()) for m in methods)

    def answers_txt(m):
        return "; ".join(f"{k}: {' / '.join(a or '-' for a in v)}" for k, v in shown[m].items())

    return [
        Row(pid="P73", claim_id="key-correlation",
            claim="Middle-ranked next tokens are ranked by their key's similarity to the top-1 key "
                  "(Spearman(rank, key cosine) > 0)",
            setting=f"SmolLM2-135M-Instruct, {n_ctx} pydocs contexts of {CONTEXT_LEN} tokens, ranks "
                    f"{WINDOW[0]}..{WINDOW[1]}, tied keys" + (" (--quick)" if quick else ""),
            baseline_name="shuffled-key control", baseline_value=round(float(rho_c.mean()), 4),
            method_value=round(float(rho.mean()), 4),
            metric="mean Spearman(-rank, cos to top-1 key) (higher = stronger key correlation)",
            verdict=v_corr,
            note=f"rho > 0 on {share:.2f} of contexts (needed {MIN_POSITIVE}); median {np.median(rho):.3f}, "
                 f"10th percentile {np.percentile(rho, 10):.3f}; control sd {rho_c.std():.3f}{nbr_txt}"),
        Row(pid="P73", claim_id="icn-vs-top-n",
            claim="In-context navigation finds more distinct correct answers than the top-N of a single distribution",
            setting=setting_nav, baseline_name=f"top-{N} first tokens completed greedily [{chosen['top-n']}]",
            baseline_value=round(test["top-n"], 4), method_value=round(test["icn"], 4),
            metric=f"distinct correct answers / {N}, test probes (higher is better)",
            verdict=RULE_TOPN.verdict([test["icn"]], [test["top-n"]]),
            note=f"ICN template {chosen['icn']}; dev scores {dev_txt}; ICN test answers {answers_txt('icn')}; "
                 f"top-N test answers {answers_txt('top-n')}"),
        Row(pid="P73", claim_id="icn-vs-sampling",
            claim="In-context navigation finds more distinct correct answers than temperature sampling",
            setting=setting_nav, baseline_name=f"{N} samples at T=1 [{chosen['sampling']}]",
            baseline_value=round(test["sampling"], 4), method_value=round(test["icn"], 4),
            metric=f"distinct correct answers / {N}, test probes (higher is better)",
            verdict=RULE_SAMPLE.verdict([test["icn"]], [test["sampling"]]),
            note=f"ICN template {chosen['icn']}; sampling test answers {answers_txt('sampling')}"),
    ]


if __name__ == "__main__":
    raise SystemExit(run_cli(run))
