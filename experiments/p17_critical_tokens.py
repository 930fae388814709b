"""P17 Critical Tokens / cDPO: token-weighted DPO with contrastive-estimation weights reaches the target faster.

Paper claim (Lin et al., ICML 2025, arXiv 2411.19943): weighting each rejected token by 1 - s_t, with
s_t = softmax(2 z_pos - z_neg)[y_t] from a positive (correct-answer SFT) and a negative (incorrect-answer
SFT) model, improves over sequence DPO (GSM8K / MATH500 accuracy with Llama-3 and DeepSeek-math).

Quick check (this file, ``--quick``; the notes' section 4 check 2 toy): the shared toy of
experiments._preference_toy (topic Markov chain, 8-word responses, V=16) with a tiny tokjax transformer
(d=32, 2 layers) whose reference is SFT on responses with BAD in half of them (P(BAD in a response)
about 0.4). Pairs: a clean response vs the same one with a word -> BAD. The positive / negative models
are the reference SFT'd 100 steps on the chosen / rejected responses. DPO and cDPO share every
hyperparameter (experiments._preference_toy.ARM_HP: beta 0.1, Adam lr 3e-4, batch 32 pairs). Metrics
(the notes' check 2): steps until P(BAD in a held-out response) < 0.10 (evaluated every step,
teacher-forced along clean held-out responses), P(BAD) at step 50, collateral KL on non-BAD
transitions at the end; the notes' bigram numbers are cDPO 26 vs DPO 32 steps (their lr 0.05 on a
table, so only the direction carries over). Verdict: reproduced when cDPO needs fewer steps than DPO in
every seed.

SmolLM2 rows (full mode only; ``--only smollm-sampled,smollm-greedy`` runs just them): the shared setting of
experiments/_preference_smollm.py (SmolLM2-135M-Instruct on word problems level 0, pairs = one correct and
one incorrect of a prompt's 8 T=1 samples, last 4 of 30 layers trained, 150 steps x 8 pairs, beta 0.1, DPO's
lr, 2 seeds; DPO arm cached and shared). The positive / negative models are the reference SFT'd (next-token
MLE, last 4 layers, 100 steps of 16 rows, lr 1e-4, fixed in advance) on all correct / all incorrect samples
of the training prompts; the rejected tokens' weights 1 - s_t (beta_c = 1) are computed once over the pairs.
Metrics and verdict as in p48_tgdpo.py (held-out accuracy, mean of 4 T=1 samples and greedy; method - DPO >
max(2 points, paired-bootstrap 95 % half-width) in both seeds, inconclusive when DPO does not beat the
reference). The positive / negative models of each seed are cached on disk (their last 4 layers, keyed by the
sizes that determine them, the aux settings and the reference's fingerprint: :func:`aux_models`) and shared by
the cDPO arm and the critical-token test.

Critical-token test (full mode only, claim ``smollm-critical-ban``; ``--only smollm-critical-ban``; issue 22):
the paper's rollout check that replacing a critical token of an incorrect trajectory turns it correct, with
the contrastive estimate as the detector. Sources: the reference's T=1 samples on the held-out problems
(``reference_result(ctx)["eval"]["sample_ids"]``, 4 per problem), regraded with ``check_answer`` on their
decoded text; the first 100 incorrect ones in problem-major order (fewer at reduced sizes). Candidate positions:
every completion token but a terminal eos -- the official ``rollout_sampling_for_critical_tokens.py`` replaces
every token of the decoded rejected response (which has no eos), answer tokens included, so no "before the
answer" cut. Critical position t = argmin s_t over the candidates (s_t = softmax(2 z_pos - z_neg)[y_t], seed-0
positive / negative models); baseline: a uniform position, ``default_rng((17, source index))``. At t: prompt +
completion[:t], the original token y_t banned at that position only (an ``allowed_tokens`` mask on the first
new token, sampled at T=1 from the rest: the official code's replacement, which zeroes y_t's probability and
samples), then T=1 to the same total budget of 32 new tokens (completion[:t] + replacement + continuation); 4
continuations per source, key 1717 for both arms. Metric: per source the fraction of its 4 continuations that
``check_answer`` grades correct; the row reports the means (points). Verdict (declared before running):
reproduced when critical - random > max(2 points, paired-bootstrap 95 % half-width over sources) (``beats``);
not-reproduced when the mean difference <= 0; else inconclusive. Deviations from the paper: its rollout test
finds critical tokens by rollout (64 samples per prefix) and reports pass@k of 64 replacements at them, while
this test scores the contrastive estimate against a random position with 4 samples each; the official code
draws the replacement token and the continuation from the base model with the few-shot math prompt, here the
chat-template word-problem prompt of the reference; positive / negative models are full-rank SFT of the last 4
layers (the paper: LoRA).
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as `python experiments/p17_critical_tokens.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from experiments._harness import Row, Rule, run_cli  # noqa: E402

RULE = Rule(metric="DPO steps until P(BAD in a held-out response) < 0.10 (toy, lower is better)",
            higher_is_better=False, threshold=0.0, seeds=(0, 1, 2), quick_seeds=(0, 1),
            reported="cDPO with beta_c = 1 (official value), only_neg weights, shared DPO hyperparameters, fixed "
                     "in advance")


REAL_CLAIMS = ("smollm-sampled", "smollm-greedy", "smollm-critical-ban")
BETA_C = 1.0  # official value
AUX_SEEDS = (50, 60)  # sft seeds of the positive / negative models (+ the arm's seed)
AUX_CACHE_VERSION = 1
CRITICAL_SOURCES = 100   # held-out incorrect reference samples of the critical-token test (issue 22)
CRITICAL_SAMPLES = 4     # T=1 continuations per banned position
CRITICAL_KEY = 1717      # sampling key of the test: the same for the critical and the random arm
RANDOM_POSITION_SEED = 17  # the random arm's position draw: default_rng((seed, source index))


def run(quick: bool, only: frozenset | None = None) -> list[Row]:
    from experiments._preference_smollm import run_rows

    return run_rows(quick, only, lambda q: [toy_row(q)], lambda: real_rows(only), REAL_CLAIMS)


def real_rows(only: frozenset | None = None) -> list[Row]:
    """Returns the SmolLM rows that ``only`` asks for (all by default): the cDPO-vs-DPO rows and the
    critical-token ban test."""
    rows = []
    if only is None or {"smollm-sampled", "smollm-greedy"} & set(only):
        rows += cdpo_rows()
    if only is None or "smollm-critical-ban" in only:
        rows.append(critical_ban_row())
    return rows


# ---------------------------------------------------------------------------- positive / negative models
def _aux_path(ctx, seed: int):
    import hashlib
    import json

    from experiments._common import cached
    from experiments._preference_real import MODEL, SETTING, _fingerprint
    from experiments._preference_smollm import CACHE_VERSION, SFT_LR, SFT_ROWS, TAIL

    sz = ctx.size
    key = dict(what="p17-aux", seed=seed, sft_seeds=[AUX_SEEDS[0] + seed, AUX_SEEDS[1] + seed],
               size={k: sz[k] for k in ("n_train", "n_val", "aux_steps")}, aux_sft=[sz["aux_steps"], SFT_LR, SFT_ROWS],
               setting=SETTING, model=MODEL, params=ctx._memo.setdefault("fp", _fingerprint(ctx.model)), tail=TAIL,
               version=[CACHE_VERSION, AUX_CACHE_VERSION])
    text = json.dumps(key, sort_keys=True, default=str)
    return cached(f"p17-aux-{hashlib.sha256(text.encode()).hexdigest()[:16]}.npz"), text


def aux_models(ctx, seed: int):
    """Returns (positive, negative) Models of ``seed``: the reference SFT'd (next-token MLE, ``ctx.size["aux_steps"]``
    steps, SFT_LR, SFT_ROWS rows a step, sft seeds 50 + seed / 60 + seed) on every correct / incorrect sample of
    the training prompts. Cached in ``ctx`` and on disk (their last TAIL layers, as ``arm_result``'s
    ``keep_params``), keyed by the sizes that determine them, the aux settings, the reference's fingerprint and
    the training code's version; shared by the cDPO arm and the critical-token test."""
    import os

    import jax
    import numpy as np

    from experiments._preference_smollm import TAIL, completion_rows, sft, with_layers

    if ("p17-aux", seed) in ctx._memo:
        return ctx._memo[("p17-aux", seed)]
    path, key = _aux_path(ctx, seed)
    like = ctx.model.params["layers"]
    n_leaves = len(jax.tree.leaves(like))
    models = None
    if path.exists():
        with np.load(path) as f:
            if str(f["key"]) == key:
                models = tuple(with_layers(ctx.model, jax.tree.unflatten(
                    jax.tree.structure(like), [f[f"{w}_{i}"] for i in range(n_leaves)])) for w in ("pos", "neg"))
    if models is None:
        pad = ctx.tok.pad_id or 0
        models = tuple(sft(ctx.model, *completion_rows(ctx.train_pools, which), steps=ctx.size["aux_steps"],
                           seed=base + seed, pad_id=pad)[0]
                       for which, base in (("correct", AUX_SEEDS[0]), ("incorrect", AUX_SEEDS[1])))
        arrays = {"key": np.array(key)}
        for w, m in zip(("pos", "neg"), models):
            arrays.update({f"{w}_{i}": np.asarray(x[-TAIL:]) for i, x in enumerate(jax.tree.leaves(m.params["layers"]))})
        tmp = path.with_name(path.name + f".{os.getpid()}.tmp.npz")
        np.savez(tmp, **arrays)
        os.replace(tmp, path)
    ctx._memo[("p17-aux", seed)] = models
    return models


_SCORE_JIT: dict = {}


def score_rows(pos, neg, tokens, chunk: int = 8):
    """Returns float32 [N, L-1] P17 contrastive scores s_t (beta_c = BETA_C) of ``tokens`` [N, L] under the
    positive / negative Models, ``chunk`` rows per call (one compiled shape per L)."""
    import jax
    import numpy as np

    from experiments._preference_smollm import _pad_rows
    from tokjax.losses.critical_tokens import contrastive_token_scores

    pc, nc = pos.cfg, neg.cfg
    fn = _SCORE_JIT.get((pc, nc))  # params as arguments: a jit closing over them would compile them in as constants
    if fn is None:
        fn = _SCORE_JIT[(pc, nc)] = jax.jit(lambda pp, npar, t: contrastive_token_scores((pp, pc), (npar, nc), t,
                                                                                         beta_c=BETA_C))
    tokens = np.asarray(tokens)
    return np.concatenate([np.asarray(fn(pos.params, neg.params, _pad_rows(tokens[i:i + chunk], chunk)))[:len(tokens[i:i + chunk])]
                           for i in range(0, len(tokens), chunk)])


def cdpo_rows() -> list[Row]:
    import numpy as np

    from experiments._preference_smollm import SFT_LR, SFT_ROWS, method_arm, preference_rows
    from tokjax.losses.critical_tokens import cdpo_weights

    def arm(ctx, seed, dpo):
        def extra(pairs, layout):
            pos, neg = aux_models(ctx, seed)
            s = score_rows(pos, neg, layout["tokens"][len(pairs):])
            return {"weights": np.asarray(cdpo_weights(s))}

        return method_arm(ctx, "cdpo", seed, {"beta_c": BETA_C}, extra,
                          key_extra={"aux_sft": [ctx.size["aux_steps"], SFT_LR, SFT_ROWS]})

    return preference_rows("P17", "cdpo", "cDPO",
                           "cDPO's contrastive-estimation token weights beat sequence DPO on held-out word problems",
                           arm, reported=f"cDPO beta_c {BETA_C} (official), only_neg weights, positive / negative "
                                         f"models SFT'd {100} steps, DPO's lr and steps, fixed in advance")


# ---------------------------------------------------------------------------- critical-token ban test
def candidate_count(completion, eos_ids) -> int:
    """Returns how many leading positions of ``completion`` (ids) may be banned: all of them but a terminal eos
    (the official rollout replaces every token of the decoded response, which holds no eos)."""
    import numpy as np

    c = np.asarray(completion).reshape(-1)
    eos = {int(e) for e in np.atleast_1d(np.asarray(eos_ids if eos_ids is not None else [], np.int64))}
    return int(len(c) - (len(c) > 0 and int(c[-1]) in eos))


def critical_position(scores, n: int) -> int:
    """Returns argmin of the contrastive scores ``scores[:n]`` (the first lowest s_t): the critical token's position."""
    import numpy as np

    s = np.asarray(scores, float).reshape(-1)
    if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or not 1 <= n <= len(s):
        raise ValueError(f"n must be an int in [1, {len(s)}] (candidate positions among the scores), got {n!r}")
    if not np.isfinite(s[:n]).all():
        raise ValueError(f"scores must be finite, got {s[:n].tolist()}")
    return int(np.argmin(s[:n]))


def random_position(n: int, index: int, seed: int = RANDOM_POSITION_SEED) -> int:
    """Returns a uniform position in [0, n) from ``default_rng((seed, index))`` (the random arm's ban position of
    source ``index``; independent of the other sources)."""
    import numpy as np

    if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n < 1:
        raise ValueError(f"n must be an int >= 1 (candidate positions), got {n!r}")
    return int(np.random.default_rng((seed, int(index))).integers(n))


def ban_resample(model, prefixes, banned, budgets, *, key, samples: int = CRITICAL_SAMPLES, eos_id=None,
                 pad_id: int = 0, chunk: int = 16) -> list:
    """Returns per prefix ``samples`` id arrays: T=1 continuations of ``prefixes[i]`` (prompt + completion[:t])
    whose first token is drawn with ``banned[i]`` masked out (``tokjax.logits.allowed_tokens``, that position
    only), then up to ``budgets[i] - 1`` more tokens at T=1 without any ban (a second ``tokjax.generate`` call
    from prefix + first token, every row of the chunk, to the chunk's largest budget; rows cut to their own
    budget, the eos kept when one ended the row). The last chunk is padded with copies of its last prefix.

    Keys: chunk c of ``chunk`` prefixes draws its first tokens with ``split(fold_in(key, c))[0]`` and its
    continuations with ``[1]``, so two calls with the same key and chunking share their random numbers."""
    import jax
    import numpy as np

    import tokjax
    from tokjax import logits as L

    prefixes = [np.asarray(p, np.int32).reshape(-1) for p in prefixes]
    banned, budgets = [int(b) for b in banned], [int(b) for b in budgets]
    V = model.cfg.vocab_size
    if not prefixes or not (len(prefixes) == len(banned) == len(budgets)):
        raise ValueError(f"need as many prefixes, banned ids and budgets, at least one; got {len(prefixes)}, "
                         f"{len(banned)}, {len(budgets)}")
    if min(len(p) for p in prefixes) < 1:
        raise ValueError("every prefix needs at least one token (the prompt)")
    if min(banned) < 0 or max(banned) >= V:
        raise ValueError(f"banned ids must lie in [0, {V}), got {[b for b in banned if not 0 <= b < V]}")
    if min(budgets) < 1:
        raise ValueError(f"budgets (new tokens, the replaced one included) must be >= 1, got {min(budgets)}")
    if not isinstance(samples, int) or isinstance(samples, bool) or samples < 1:
        raise ValueError(f"samples must be an int >= 1, got {samples!r}")
    if not isinstance(chunk, int) or isinstance(chunk, bool) or chunk < 1:
        raise ValueError(f"chunk must be an int >= 1 (prefixes per generate call), got {chunk!r}")
    eos = set() if eos_id is None else {int(e) for e in np.atleast_1d(eos_id)}
    gen = dict(eos_id=eos_id, pad_id=pad_id)
    chunk = min(int(chunk), len(prefixes))
    out = []
    for c, i in enumerate(range(0, len(prefixes), chunk)):
        k1, k2 = jax.random.split(jax.random.fold_in(key, c))
        m = min(chunk, len(prefixes) - i)
        idx = list(range(i, i + m)) + [i + m - 1] * (chunk - m)  # the last chunk padded: one compiled batch shape
        ps, bud = [prefixes[j] for j in idx], np.repeat([budgets[j] for j in idx], samples)
        mask = np.ones((chunk, V), bool)
        mask[np.arange(chunk), [banned[j] for j in idx]] = False
        first = tokjax.generate(model, [p.tolist() for p in ps], key=k1, n=samples, max_new_tokens=1,
                                logits=L.chain(L.allowed_tokens(np.repeat(mask, samples, 0)), L.temperature(1.0)),
                                **gen).completions()
        # every row continues (a fixed row count); a row whose first token is an eos or whose budget is 1 keeps
        # only that token
        rows = [np.concatenate([ps[r // samples], f[:1]]).tolist() for r, f in enumerate(first)]
        cont = tokjax.generate(model, rows, key=k2, max_new_tokens=max(1, int(bud.max()) - 1),
                               logits=L.temperature(1.0), **gen).completions()
        new = [np.concatenate([f[:1], d[:bud[r] - 1] if int(f[0]) not in eos else d[:0]]).astype(np.int32)
               for r, (f, d) in enumerate(zip(first, cont))]
        out += [new[j * samples:(j + 1) * samples] for j in range(m)]
    return out


def success_rate(tok, answer: int, prefix, continuations) -> float:
    """Returns the fraction of ``continuations`` whose decoded completion (``prefix`` ids + continuation)
    ``check_answer`` grades correct for the integer ``answer``."""
    import numpy as np

    from tokjax.data import check_answer

    if not len(continuations):
        raise ValueError("need at least one continuation")
    head = [int(x) for x in np.asarray(prefix).reshape(-1)]
    return float(np.mean([check_answer(tok.decode(head + [int(x) for x in np.asarray(c).reshape(-1)]), answer)[0]
                          for c in continuations]))


def incorrect_sources(tok, probs, sample_ids) -> tuple[list, int]:
    """Returns ([(problem index, sample index, ids)], n_samples): every sample of ``sample_ids`` (per problem a list
    of id arrays, problem-major order kept) that ``check_answer`` grades incorrect on its decoded text, and the
    number of samples looked at."""
    from tokjax.data import check_answer

    if len(probs) != len(sample_ids):
        raise ValueError(f"need one list of samples per problem, got {len(sample_ids)} for {len(probs)} problems")
    out, seen = [], 0
    for i, (p, ids) in enumerate(zip(probs, sample_ids)):
        for j, c in enumerate(ids):
            seen += 1
            if not check_answer(tok.decode([int(x) for x in c]), p.answer)[0]:
                out.append((i, j, c))
    return out, seen


def critical_ban_row() -> Row:
    """Returns the ``smollm-critical-ban`` Row (full mode): the critical-token test of issue 22 (module docstring)."""
    import time
    from collections import Counter

    import jax
    import numpy as np

    from experiments._harness import Verdict
    from experiments._preference_real import SETTING
    from experiments._preference_smollm import MARGIN_POINTS, beats, load, reference_result, row_layout

    ctx = load()
    tok, model, k = ctx.tok, ctx.model, CRITICAL_SAMPLES
    t0 = time.perf_counter()
    found, seen = incorrect_sources(tok, ctx.heldout, reference_result(ctx)["eval"]["sample_ids"])
    usable = [(src, candidate_count(src[2], tok.eos_id)) for src in found]
    skipped = sum(n == 0 for _, n in usable)
    usable = [(src, n) for src, n in usable if n > 0][:CRITICAL_SOURCES]
    if len(usable) < 2:
        raise ValueError(f"only {len(usable)} usable incorrect held-out samples (of {seen}); the test needs >= 2")
    sources, n_cand = [u[0] for u in usable], [u[1] for u in usable]
    comps = [c for _, _, c in sources]
    pos, neg = aux_models(ctx, 0)
    t1 = time.perf_counter()
    prompts = [np.asarray(tok.apply_chat_template(ctx.heldout[i].messages(SETTING["style"]), add_generation_prompt=True),
                          np.int32) for i, _, _ in sources]
    lay = row_layout(prompts, comps, tok.pad_id or 0)
    s = score_rows(pos, neg, lay["tokens"])
    s = [s[r, p - 1:p - 1 + n] for r, (p, n) in enumerate(zip(lay["prompt_lengths"], n_cand))]  # s_t of the candidates
    where = {"critical": [critical_position(x, n) for x, n in zip(s, n_cand)],
             "random": [random_position(n, r) for r, n in enumerate(n_cand)]}
    t2 = time.perf_counter()
    new_tokens, rates = SETTING["new_tokens"], {}
    for name, ts in where.items():
        conts = ban_resample(model, [np.concatenate([p, c[:t]]) for p, c, t in zip(prompts, comps, ts)],
                             [int(c[t]) for c, t in zip(comps, ts)], [new_tokens - t for t in ts],
                             key=jax.random.key(CRITICAL_KEY), samples=k, eos_id=tok.eos_id, pad_id=tok.pad_id or 0)
        rates[name] = np.array([success_rate(tok, ctx.heldout[i].answer, c[:t], cs)
                                for (i, _, c), t, cs in zip(sources, ts, conts)])
    t3 = time.perf_counter()
    cr, rr = rates["critical"], rates["random"]
    win, diff, margin = beats(cr, rr)
    status = "reproduced" if win else ("not-reproduced" if diff <= 0 else "inconclusive")
    verdict = Verdict(status=status, threshold=MARGIN_POINTS, seeds=(0,), diffs=(diff,), mean_diff=diff)
    crit, rand = where["critical"], where["random"]
    rel = lambda ts: float(np.mean([t / n for t, n in zip(ts, n_cand)]))  # noqa: E731
    count = lambda r: f"{int(round(r.sum() * k))}/{k * len(r)} (sources with >= 1: {int((r > 0).sum())})"  # noqa: E731
    top = Counter(tok.decode([int(c[t])]) for c, t in zip(comps, crit)).most_common(5)
    note = (f"{len(sources)} incorrect reference T=1 samples (the first of {len(found)} incorrect among {seen} "
            f"held-out samples, problem-major; {skipped} skipped: nothing but the eos); correct continuations: "
            f"critical ban {count(cr)}, random ban {count(rr)}; critical - random {diff:+.1f} points, margin "
            f"{margin:.1f} (max({MARGIN_POINTS:g}, paired-bootstrap 95 % half-width)); mean relative position "
            f"critical {rel(crit):.2f}, random {rel(rand):.2f}, same position in "
            f"{int(sum(a == b for a, b in zip(crit, rand)))}; most frequent critical tokens "
            f"{', '.join(f'{t!r} x{m}' for t, m in top)}; mean s_t at the critical token "
            f"{np.mean([x[t] for x, t in zip(s, crit)]):.3g} (all candidates {np.mean(np.concatenate(s)):.3g}). "
            f"Seconds: reference + aux models {t1 - t0:.0f}, scores {t2 - t1:.0f}, resampling {t3 - t2:.0f}.")
    sz = ctx.size
    return Row(pid="P17", claim_id="smollm-critical-ban",
               claim="banning the critical token (lowest contrastive score s_t) of an incorrect answer and resampling "
                     "turns more answers correct than banning a random token",
               setting=f"SmolLM2-135M-Instruct, word problems level 0 'oneshot'; {len(sources)} incorrect held-out T=1 "
                       f"samples of the reference; s_t (beta_c {BETA_C:g}) from the seed-0 positive / negative models "
                       f"(SFT {sz['aux_steps']} steps, last 4 layers, {sz['n_train'] - sz['n_val']} train prompts); "
                       f"one banned position, {k} T=1 continuations within {new_tokens} new tokens in all",
               baseline_name="ban a uniformly random token", baseline_value=round(100 * float(rr.mean()), 2),
               method_value=round(100 * float(cr.mean()), 2),
               metric=f"mean fraction of the {k} continuations graded correct, points (higher is better)",
               verdict=verdict, note=note)


def toy_row(quick: bool) -> Row:
    import numpy as np

    from experiments._preference_toy import run_arms

    seeds = RULE.run_seeds(quick)
    out, hp = run_arms(("dpo", "cdpo"), quick=quick, seeds=seeds)
    d, c = out["dpo"], out["cdpo"]
    f = lambda runs, k: ", ".join(f"{r[k]:.3g}" for r in runs)  # noqa: E731
    verdict = RULE.verdict([r["steps_to_target"] for r in c], [r["steps_to_target"] for r in d], seeds=seeds)
    cred = lambda runs, k: float(np.mean([r["credit"][k] for r in runs]))  # noqa: E731
    note = (f"steps to P(BAD)<0.10: DPO {f(d, 'steps_to_target')}, cDPO {f(c, 'steps_to_target')} (notes' bigram: DPO "
            f"33/31/33, cDPO 26/26/27); P(BAD)@50: DPO {f(d, 'p_bad_50')}, cDPO {f(c, 'p_bad_50')} (notes 0.041 vs "
            f"0.029); collateral KL at step {hp['dpo_steps']}: DPO {f(d, 'kl_end')}, cDPO {f(c, 'kl_end')} (notes "
            f"@400: 0.137 vs 0.099); reference P(BAD) {f(d, 'p_bad_0')}; cDPO mean |w-1| {f(c, 'weight_spread')}. "
            f"Token credit beta*Delta_t on held-out rejected responses (mean before / at / after BAD; argmin at "
            f"BAD, BAD+1): DPO {cred(d, 'before'):+.3f} / {cred(d, 'at'):+.3f} / {cred(d, 'after'):+.3f}, "
            f"{cred(d, 'argmin_bad'):.2f}, {cred(d, 'argmin_next'):.2f}; cDPO {cred(c, 'before'):+.3f} / "
            f"{cred(c, 'at'):+.3f} / {cred(c, 'after'):+.3f}, {cred(c, 'argmin_bad'):.2f}, "
            f"{cred(c, 'argmin_next'):.2f}. Setting: {hp}.")
    return Row(pid="P17", claim_id="toy-speed",
               claim="token-weighted DPO with contrastive-estimation weights (cDPO) suppresses the bad token in "
                     "fewer steps than sequence DPO",
               setting=f"notes' check-2 toy (8-word responses, V=16, tiny transformer d=32x2), {len(seeds)} seeds, "
                       f"{hp['dpo_steps']} DPO steps",
               baseline_name="sequence DPO", baseline_value=round(float(np.mean([r['steps_to_target'] for r in d])), 2),
               method_value=round(float(np.mean([r["steps_to_target"] for r in c])), 2),
               metric=RULE.metric, verdict=verdict, note=note)


if __name__ == "__main__":
    raise SystemExit(run_cli(run))
