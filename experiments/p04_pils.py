"""P4 PILS on SmolLM2-135M-Instruct: recovering a hidden prompt from the log-prob vectors of T greedy steps.

Paper claims (Nazir et al., *Better Language Model Inversion by Compactly Representing Next-Token
Distributions*): the next-token log-prob vectors lie in a D-dimensional subspace, so D + 1 additive
log-ratios (ALR) represent each one losslessly; an inverter reading the ALR features of 16 greedy steps
recovers hidden prompts exactly 2-3.5x more often than earlier logit- or text-based inverters, and an
inverter trained on 16 steps does better when given 32 at test time.

Setting (fixed before anything runs):

* Target: ``tokjax.pretrained("smollm2-135m-instruct")`` (D = 576, V = 49152). Hidden prompt = one user
  message through the chat template, from the template ``"{verb} the Python topic '{topic}' {style}"``:
  ``VERBS`` x the first ``n_topics`` single-word pydoc topics (``pydoc_data.topics``, sorted) x ``STYLES``
  (full: 6 x 24 x 6 = 864 prompts; --quick: 4 x 12 x 4 = 192). Split over the (verb, topic, style)
  combinations with seed 0: 20% test, 10% validation, the rest training; every verb, topic and style of
  a held-out combination occurs in training (asserted): the test prompts are unseen combinations.
* SmolLM2 answers every prompt greedily for ``T_MAX`` tokens (eos banned for those steps, PILS's
  ``min_new_tokens``), batched through ``tokjax.generate``
  (:func:`tokjax.analysis.pils.greedy_completions`); log-prob vectors from one teacher-forced forward per
  batch (:func:`~tokjax.analysis.pils.logprob_sequences`), ALR features on ``vocab_subset(V, 576)``
  (K = D + 101, seed 666). Features, completions and hidden states are cached under
  ``$TOKJAX_CACHE/experiments``.
* Inverters (one recipe for every arm): a tokjax prefix LM (d 128, 3 layers, 4 heads, vocabulary = the
  prompt tokens + pad/bos/eos) reading the projected per-step vectors as ``Inputs(embeds=...)`` under
  ``Prefix(T)`` (:func:`~tokjax.analysis.pils.init_inverter`, registered loss ``pils``, dropout 0.1,
  frozen train-split feature standardisation), AdamW lr 1e-3, weight decay 0.01, batch 32, ``steps``
  steps, ``trainable=TRAINABLE``. Arms: ``pils-16`` (ALR features of steps 1..16), ``pils-1`` (step 1
  only), ``text-16`` (reads the generated text only: SmolLM2's input embeddings of the 16 generated
  tokens, an output2prompt-style baseline with the same inverter). Greedy inversion through
  ``tokjax.generate`` (:func:`~tokjax.analysis.pils.invert`).
* Reported variant: every arm keeps the checkpoint (of ``N_CHECKS`` evenly spaced ones) with the best
  validation exact recovery (teacher-forced, :func:`~tokjax.analysis.pils.teacher_forced_exact`); test
  numbers are of that checkpoint only.
* Metric: exact recovery (%): the decoded prompt's token ids equal the hidden prompt's.

Verdicts (declared here, computed by the harness):

* ``alr-exact`` (``RULE_ALR``): the least-squares linear map from ALR features to the final-normed hidden
  state, fitted on the training prompts' steps (float64 solve), has relative residual
  ``||a M - h||_F / ||h||_F`` < 1e-3 on the test prompts' steps (baseline value = the 1e-3 bound; one
  deterministic measurement).
* ``vs-one-step`` (``RULE_T1``): exact recovery of pils-16 minus pils-1 > 10 points on every seed (0, 1, 2).
* ``vs-text`` (``RULE_TEXT``): pils-16 minus text-16 > 10 points on every seed.
* ``longer-test`` (``RULE_LONGER``, full mode only; needs T_MAX = 32): the pils-16 inverter given the 32-step
  features at test time minus the same inverter given 16 steps > 0 points on every seed.

Quick mode: seed 0, the smaller grid, fewer steps, T_MAX 16 (``longer-test`` untested-here); a smoke test.
"""

from __future__ import annotations

import hashlib
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as `python experiments/p04_pils.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from experiments._harness import Row, Rule, run_cli, train_model  # noqa: E402

SEEDS, QUICK_SEEDS = (0, 1, 2), (0,)
ALR_BOUND = 1e-3
REPORTED = ("each arm's checkpoint with the best validation exact recovery (teacher-forced) of N_CHECKS evenly "
            "spaced ones; same inverter recipe for every arm")
METRIC = "exact prompt recovery % on held-out (verb, topic, style) combinations (higher is better)"
RULE_ALR = Rule(metric="relative residual of the ALR -> final hidden least-squares map on test steps (lower is "
                       "better; claim: below 1e-3)", higher_is_better=False, threshold=0.0, seeds=(0,),
                reported="map fitted on the training prompts' steps (float64 lstsq), evaluated on the test prompts' "
                         "steps, K = D + 101 ids")
RULE_T1 = Rule(metric=METRIC, higher_is_better=True, threshold=10.0, seeds=SEEDS, quick_seeds=QUICK_SEEDS,
               reported="pils-16 vs pils-1; " + REPORTED)
RULE_TEXT = Rule(metric=METRIC, higher_is_better=True, threshold=10.0, seeds=SEEDS, quick_seeds=QUICK_SEEDS,
                 reported="pils-16 vs text-16 (generated-token embeddings); " + REPORTED)
RULE_LONGER = Rule(metric=METRIC, higher_is_better=True, threshold=0.0, seeds=SEEDS, quick_seeds=QUICK_SEEDS,
                   reported="the pils-16 inverter (checkpoint chosen on 16-step validation) tested on 32 vs 16 steps")

MODEL = "smollm2-135m-instruct"
VERBS = ("Explain", "Summarize", "Describe", "Give an example of", "List common mistakes with",
         "Write a question about")
STYLES = ("in one sentence.", "for a beginner.", "in simple words.", "with a code example.", "as a short poem.",
          "in three bullet points.")
FULL = {"verbs": 6, "topics": 24, "styles": 6, "t_max": 32, "steps": 3000}
QUICK = {"verbs": 4, "topics": 12, "styles": 4, "t_max": 16, "steps": 800}
T_TRAIN = 16
N_CHECKS = 5
GEN_BATCH, FEAT_BATCH = 32, 16
INV = {"d_model": 128, "n_layers": 3, "n_heads": 4}
BATCH, LR, DROPOUT = 32, 1e-3, 0.1
PAD, BOS, EOS = 0, 1, 2


def _topics(n: int) -> list[str]:
    import re

    from pydoc_data.topics import topics

    names = [t for t in sorted(topics) if re.fullmatch(r"[a-z]+", t)]
    if len(names) < n:
        raise ValueError(f"only {len(names)} single-word pydoc topics, {n} needed")
    return names[:n]


def prompts_and_split(run: dict):
    """Returns (texts, combos [(v, t, s)], split {"train", "val", "test": index arrays}) of the template grid."""
    import itertools

    import numpy as np

    topics = _topics(run["topics"])
    combos = list(itertools.product(range(run["verbs"]), range(run["topics"]), range(run["styles"])))
    texts = [f"{VERBS[v]} the Python topic '{topics[t]}' {STYLES[s]}" for v, t, s in combos]
    order = np.random.default_rng(0).permutation(len(combos))
    n_test, n_val = int(0.2 * len(combos)), int(0.1 * len(combos))
    split = {"test": np.sort(order[:n_test]), "val": np.sort(order[n_test:n_test + n_val]),
             "train": np.sort(order[n_test + n_val:])}
    train = [combos[i] for i in split["train"]]
    for axis in range(3):
        seen = {c[axis] for c in train}
        assert all(combos[i][axis] in seen for i in split["test"]), "a held-out component never occurs in training"
    return texts, combos, split


def _cache_dir() -> Path:
    from tokjax._paths import cache_root

    d = cache_root() / "experiments"
    d.mkdir(parents=True, exist_ok=True)
    return d


def target_data(model, tok, texts: list[str], t_max: int) -> dict:
    """Returns {"alr" [N, T, K-1], "text" [N, T, D], "hidden" [N, T, D], "completions" [N, T]} (cached)."""
    import numpy as np

    from tokjax.analysis.pils import alr_features, greedy_completions, logprob_sequences, vocab_subset

    chats = [tok.apply_chat_template([{"role": "user", "content": t}], add_generation_prompt=True) for t in texts]
    h = hashlib.sha256(("\n".join(texts) + f"|{MODEL}|{t_max}|greedy|v1").encode()).hexdigest()[:16]
    path = _cache_dir() / f"p04-target-{h}.npz"
    if path.is_file():
        with np.load(path) as z:
            return {k: z[k] for k in z.files}
    comp = greedy_completions(model, chats, t_max, eos_id=tok.eos_id, batch_size=GEN_BATCH)
    cfg = model.cfg
    subset = vocab_subset(cfg.vocab_size, cfg.d_model)
    emb = np.asarray(model.params["embed"], np.float32)
    alr, hid = [], []
    for i in range(0, len(chats), FEAT_BATCH):
        rows = chats[i:i + FEAT_BATCH]
        c = comp[i:i + FEAT_BATCH]
        n = len(rows)
        if n < FEAT_BATCH:  # one shape per batch: one compilation
            rows = rows + [rows[-1]] * (FEAT_BATCH - n)
            c = np.concatenate([c, np.repeat(c[-1:], FEAT_BATCH - n, axis=0)])
        lp, hh = logprob_sequences(model, rows, c, hidden=True)
        alr.append(np.asarray(alr_features(lp, subset, hidden_size=cfg.d_model))[:n])
        hid.append(np.asarray(hh, np.float32)[:n])
    out = {"alr": np.concatenate(alr), "hidden": np.concatenate(hid), "completions": comp,
           "text": emb[comp], "subset": subset}
    np.savez(path, **out)
    return out


def alr_residual(model, data: dict, split: dict) -> tuple[float, float]:
    """Returns (black-box residual of the map fitted on training steps, on test steps; white-box residual of
    least squares through the unembedding, on test steps)."""
    import jax
    import numpy as np

    from tokjax.analysis.pils import alr_head_matrix, alr_relative_residual, fit_alr_map, recover_hidden

    def flat(x, idx):
        return np.asarray(x[idx], np.float64).reshape(-1, x.shape[-1])

    a_te, h_te = flat(data["alr"], split["test"]), flat(data["hidden"], split["test"])
    A = np.asarray(alr_head_matrix(model, data["subset"]), np.float64)
    with jax.enable_x64(True):
        M = fit_alr_map(flat(data["alr"], split["train"]), flat(data["hidden"], split["train"]))
        black = float(alr_relative_residual(a_te, h_te, M))
        rec = np.asarray(recover_hidden(a_te, A))
    return black, float(np.linalg.norm(rec - h_te) / np.linalg.norm(h_te))


def inverter_vocab(tok, texts: list[str]):
    """Returns (token rows [N, L] = bos prompt eos pad..., lengths [N], local -> SmolLM2 id table)."""
    import numpy as np

    ids = [tok.encode(t) for t in texts]
    table = np.asarray(sorted({i for row in ids for i in row}), np.int32)
    local = {int(v): k + 3 for k, v in enumerate(table)}
    L = max(len(r) for r in ids) + 2
    rows = np.full((len(ids), L), PAD, np.int32)
    for n, r in enumerate(ids):
        rows[n, :len(r) + 2] = [BOS, *[local[i] for i in r], EOS]
    return rows, np.asarray([len(r) + 2 for r in ids], np.int32), table


def train_arm(feats, rows, lengths, split, *, steps: int, seed: int, max_len: int, vocab: int):
    """Returns (params of the best validation checkpoint, its step, validation exact % per checkpoint)."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    import tokjax
    from tokjax.analysis.pils import TRAINABLE, init_inverter, teacher_forced_exact
    from tokjax.data import batch_indices
    from tokjax.losses.registry import make_loss

    cfg = tokjax.ModelConfig(vocab_size=vocab, max_len=max_len, **INV)
    tr = split["train"]
    f_tr = feats[tr].reshape(-1, feats.shape[-1])
    params = init_inverter(cfg, jax.random.key(seed), feats.shape[-1], feature_mean=f_tr.mean(0),
                           feature_std=np.maximum(f_tr.std(0), 1e-3))
    loss = make_loss("pils", dropout=DROPOUT)

    def loss_fn(p, _cfg, batch, rng):  # train(None, ...) passes cfg=None: the inverter's config is fixed here
        return loss(p, cfg, batch, rng)

    def batch_fn(step):
        idx = tr[batch_indices(len(tr), BATCH, step, seed=seed)]
        return {"features": feats[idx], "tokens": rows[idx], "lengths": lengths[idx]}

    val = {"features": feats[split["val"]], "tokens": rows[split["val"]], "lengths": lengths[split["val"]]}
    every = steps // N_CHECKS
    best = {"exact": -1.0, "params": None, "step": 0, "curve": []}

    def keep_best(step, state, metrics):
        if (step + 1) % every == 0:
            ex = 100.0 * float(np.mean(teacher_forced_exact(state.params, cfg, val)))
            best["curve"].append(round(ex, 1))
            if ex > best["exact"]:
                best.update(exact=ex, params=jax.tree.map(np.array, state.params), step=step + 1)

    train_model(None, steps=steps, batch_fn=batch_fn, loss_fn=loss_fn, params=jax.tree.map(jnp.asarray, params),
                lr=LR, weight_decay=0.01, seed=seed, trainable=TRAINABLE, batch_size=BATCH, seq_len=rows.shape[1],
                callback=keep_best)
    return jax.tree.map(jnp.asarray, best["params"]), cfg, best


def exact_recovery(params, cfg, feats, rows, lengths, idx) -> tuple[float, float]:
    """Returns (exact % of greedy inversion through tokjax.generate, exact % teacher-forced) on rows ``idx``."""
    import numpy as np

    from tokjax.analysis.pils import invert, teacher_forced_exact

    outs = invert(params, cfg, feats[idx], bos_id=BOS, eos_id=EOS, max_new_tokens=int(rows.shape[1]))
    hits = [o.tolist() == rows[i, 1:lengths[i] - 1].tolist() for o, i in zip(outs, idx)]
    tf = teacher_forced_exact(params, cfg, {"features": feats[idx], "tokens": rows[idx], "lengths": lengths[idx]})
    return 100.0 * float(np.mean(hits)), 100.0 * float(np.mean(tf))


def run(quick: bool) -> list[Row]:
    import numpy as np

    import tokjax
    from experiments._common import memo_json

    t0 = time.time()
    run_cfg = QUICK if quick else FULL
    seeds = RULE_T1.run_seeds(quick)
    model, tok = tokjax.pretrained(MODEL)
    texts, combos, split = prompts_and_split(run_cfg)
    data = target_data(model, tok, texts, run_cfg["t_max"])
    t_data = time.time() - t0
    res_bb, res_wb = alr_residual(model, data, split)
    rows, lengths, table = inverter_vocab(tok, texts)
    max_len = run_cfg["t_max"] + rows.shape[1] + 1
    vocab = len(table) + 3
    arms = {"pils-16": data["alr"][:, :T_TRAIN], "pils-1": data["alr"][:, :1], "text-16": data["text"][:, :T_TRAIN]}
    test = split["test"]
    ex = {a: [] for a in arms}
    ex_tf = {a: [] for a in arms}
    longer, info = [], []
    def one_arm(arm: str, seed: int) -> dict:
        feats = arms[arm]
        params, cfg, best = train_arm(feats, rows, lengths, split, steps=run_cfg["steps"], seed=seed,
                                      max_len=max_len, vocab=vocab)
        e, etf = exact_recovery(params, cfg, feats, rows, lengths, test)
        out = {"exact": e, "exact_tf": etf, "info": f"step {best['step']} (val {best['curve']})"}
        if arm == "pils-16" and run_cfg["t_max"] >= 32:
            out["longer"] = exact_recovery(params, cfg, data["alr"][:, :32], rows, lengths, test)[0]
        return out

    for seed in seeds:  # each (seed, arm) is cached: a full run killed half-way resumes
        for arm in arms:
            u = memo_json("p04-arm", dict(arm=arm, seed=seed, run=run_cfg, inverter=INV, t_train=T_TRAIN,
                                          version=1), lambda arm=arm, seed=seed: one_arm(arm, seed))
            ex[arm].append(u["exact"])
            ex_tf[arm].append(u["exact_tf"])
            info.append(f"s{seed} {arm}: {u['info']}")
            if "longer" in u:
                longer.append(u["longer"])
            print(f"[p04] seed {seed} {arm}: test exact {u['exact']:.1f}% (teacher-forced {u['exact_tf']:.1f}%), "
                  f"{info[-1]}", flush=True)
    elapsed = time.time() - t0

    def ps(x):
        return "/".join(f"{v:.1f}" for v in x)

    n_tr, n_va, n_te = (len(split[k]) for k in ("train", "val", "test"))
    setting = (f"SmolLM2-135M-Instruct, {len(texts)} template prompts ({run_cfg['verbs']} verbs x {run_cfg['topics']} "
               f"pydoc topics x {run_cfg['styles']} styles; {n_tr} train / {n_va} val / {n_te} held-out test "
               f"combinations), T_MAX {run_cfg['t_max']}, inverter d{INV['d_model']}x{INV['n_layers']} prefix LM, "
               f"{run_cfg['steps']} steps, seeds {seeds}")
    note = (f"exact % per seed: pils-16 {ps(ex['pils-16'])}, pils-1 {ps(ex['pils-1'])}, text-16 {ps(ex['text-16'])}; "
            f"teacher-forced exact (must match) pils-16 {ps(ex_tf['pils-16'])}, pils-1 {ps(ex_tf['pils-1'])}, "
            f"text-16 {ps(ex_tf['text-16'])}. Chosen checkpoints: {'; '.join(info)}. Target data "
            f"{t_data:.0f} s (cached after the first run), total {elapsed:.0f} s.")
    if quick:
        note += " Quick mode: one seed, small grid, few steps: a smoke test."
    mean = lambda x: round(float(np.mean(x)), 2)  # noqa: E731
    out = [
        Row(pid="P4", claim_id="alr-exact",
            claim="ALR features on D+1 (here D+101) vocabulary ids are a lossless linear image of the final hidden "
                  "state: least squares recovers it (relative residual < 1e-3)",
            setting=f"SmolLM2-135M-Instruct greedy steps of the template prompts "
                    f"({len(split['train']) * run_cfg['t_max']} fitting / {len(test) * run_cfg['t_max']} test steps), "
                    f"K = {data['subset'].size}",
            baseline_name="the claimed bound 1e-3", baseline_value=ALR_BOUND, method_value=float(f"{res_bb:.3g}"),
            metric="relative residual ||a M - h|| / ||h|| on test steps (lower is better)",
            verdict=RULE_ALR.verdict([res_bb], [ALR_BOUND]),
            note=f"map fitted without the model's weights (black-box), float64 solve of float32 log-probs; white-box "
                 f"least squares through the unembedding: {res_wb:.3g}"),
        Row(pid="P4", claim_id="vs-one-step",
            claim="PILS reading 16 steps of log-prob vectors recovers hidden prompts exactly >= 10 points more often "
                  "than reading one step", setting=setting, baseline_name="pils-1 (step 1 only, same inverter)",
            baseline_value=mean(ex["pils-1"]), method_value=mean(ex["pils-16"]), metric=METRIC,
            verdict=RULE_T1.verdict(ex["pils-16"], ex["pils-1"], seeds=seeds), note=note),
        Row(pid="P4", claim_id="vs-text",
            claim="PILS (16 steps of log-probs) beats a text-only inverter reading the same 16 generated tokens by >= "
                  "10 points of exact recovery", setting=setting,
            baseline_name="text-16 (SmolLM2 embeddings of the generated tokens, same inverter)",
            baseline_value=mean(ex["text-16"]), method_value=mean(ex["pils-16"]), metric=METRIC,
            verdict=RULE_TEXT.verdict(ex["pils-16"], ex["text-16"], seeds=seeds), note=note),
    ]
    if longer:
        out.append(Row(pid="P4", claim_id="longer-test",
                       claim="An inverter trained on 16 steps recovers more prompts when given 32 steps at test time",
                       setting=setting, baseline_name="the same pils-16 inverter given 16 steps",
                       baseline_value=mean(ex["pils-16"]), method_value=mean(longer), metric=METRIC,
                       verdict=RULE_LONGER.verdict(longer, ex["pils-16"], seeds=seeds),
                       note=f"exact % with 32 test steps per seed {ps(longer)}"))
    else:
        out.append(Row(pid="P4", claim_id="longer-test",
                       claim="An inverter trained on 16 steps recovers more prompts when given 32 steps at test time",
                       setting=setting, baseline_name="the same pils-16 inverter given 16 steps",
                       baseline_value=None, method_value=None, metric=METRIC, verdict="untested-here",
                       note="--quick generates 16 steps only (T_MAX 16); the full run tests 32"))
    return out


if __name__ == "__main__":
    raise SystemExit(run_cli(run))
