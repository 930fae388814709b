"""The SmolLM2 rows of the token-level preference experiments (P17 cDPO, P48 TGDPO, P51 T-REG, P60; issue 22).

Shared by the four experiments, on the task of :mod:`experiments._preference_real` (SmolLM2-135M-Instruct,
word problems level 0 "oneshot", 32 new tokens, T=1 accuracy 0.28):

* pairs (:func:`make_pairs`): per training prompt one correct (chosen) and one incorrect (rejected) sample of
  its 8-sample pool, drawn by seed; prompts without both are dropped and counted. The last ``n_val`` prompts
  of the training pool never give pairs (the lr-selection split).
* batch layout (:func:`pair_layout`): chat prompt + completion rows right-padded to one length, the B chosen
  rows then the B rejected rows (``make_dpo_loss``), loss mask on the completion only (``prompt_lengths`` /
  ``lengths``); the reference's (and TGDPO's pi_rm's) per-target log-probs are computed once over all pairs
  and travel in the batch (``ref_logp``, ``rm_logp``).
* training (:func:`train_pairs`, :func:`train_rows`): ``tokjax.train`` of a registered loss with
  ``trainable=("last:4",)``: the 26 frozen layers run once per row (:func:`layout_trunk`, shared by every arm),
  the steps train the 4-layer tail on their output (:mod:`tokjax.model.trunk`), :data:`PAIRS_PER_STEP` pairs a step,
  :data:`STEPS` steps, beta :data:`BETA`, AdamW (no weight decay, clip 1, 10 % warm-up, cosine to 0.1 lr).
* evaluation (:func:`evaluate`): on the held-out draw (``HELDOUT_SEED``) greedy accuracy and the mean accuracy
  of :data:`EVAL_SAMPLES` samples at T=1 per problem (the same sampling keys for every model); collateral drift
  (:func:`drift_kl`) = mean per-token KL(reference || model) of the next-token distributions along 64 held-out
  pydocs paragraphs (their first 64 tokens).
* the DPO arm (:func:`dpo_arm`): trained once per seed and cached on disk (its last 4 layers and its
  evaluation), the baseline of every row and TGDPO's pi_rm; the reference's evaluation is cached too.
* verdict (:func:`real_verdict`): method - DPO > max(2 points, paired-bootstrap 95 % half-width over problems)
  in both seeds -> reproduced; mean difference <= 0 -> not-reproduced; else inconclusive; inconclusive too when
  DPO does not beat the reference by that margin.

The DPO lr is chosen once, on the validation split (the last :data:`N_VAL` training prompts: DPO trained on
the other prompts' pairs at each lr of :data:`LR_GRID`, mean T=1 accuracy of 8 samples on the validation
prompts) by ``python experiments/_preference_smollm.py --select-lr``, and written into :data:`DPO_LR`; every
arm shares it. Sizes: full = 384 train / 200 held-out prompts, 150 steps, 2 seeds; ``$TOKJAX_PREF_REAL``
("n_train,n_heldout,steps[,n_seeds]", e.g. "48,64,20,1") runs a reduced size to check the plumbing.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from experiments._preference_real import (  # noqa: E402
    HELDOUT_SEED, MODEL, SETTING, TRAIN_SEED, PromptPool, problems, sample_pool,
)

BETA = 0.1              # DPO beta of every arm (issue 22)
PAIRS_PER_STEP = 8      # pairs per optimiser step
STEPS = 150             # optimiser steps of every preference arm (issue 22)
SEEDS = (0, 1)          # training seeds (pair choice, batch order)
AUX_SFT_STEPS = 100     # cDPO's positive / negative models (issue 22, item 2)
TRAINABLE = ("last:4",)  # the last 4 of 30 layers; embeddings and the tied head frozen
DPO_LR = 1e-5           # chosen by `--select-lr` (2026-12-06): validation T=1 accuracy of 8 samples on the 32
                        # held-out training prompts: reference 0.301, lr 1e-5 0.492, 3e-5 0.410, 1e-4 0.258 (seed 0,
                        # 150 steps; the grid's lowest lr won, so a lower one was not ruled out)
LR_GRID = (1e-5, 3e-5, 1e-4)
N_VAL = 32              # prompts held out of the training pool for the lr choice (reduced size: 8)
EVAL_SAMPLES = 4        # T=1 samples per held-out problem (plus one greedy decode)
EVAL_KEY = 4242         # sampling key of the evaluation: the same for every model (common random numbers)
DRIFT_DOCS, DRIFT_TOKENS = 64, 64  # held-out pydocs paragraphs (>= 64 tokens: 102 of them) of the drift KL
MARGIN_POINTS = 2.0     # the verdict's floor, accuracy points
FULL_SIZE = dict(n_train=384, n_heldout=200, steps=STEPS, seeds=SEEDS)


def sizes() -> dict:
    """Returns {n_train, n_heldout, steps, seeds, n_val, aux_steps} of the SmolLM rows: the full size, or a reduced
    one from ``$TOKJAX_PREF_REAL`` = "n_train,n_heldout,steps[,n_seeds]" (e.g. "48,64,20,1" to check the plumbing;
    its auxiliary SFT models train at most ``steps`` steps)."""
    import os

    spec = os.environ.get("TOKJAX_PREF_REAL", "").strip()
    if not spec:
        return {**FULL_SIZE, "n_val": N_VAL, "aux_steps": AUX_SFT_STEPS}
    try:
        parts = [int(x) for x in spec.split(",")]
    except ValueError:
        parts = []
    if len(parts) not in (3, 4) or min(parts) < 1 or (len(parts) == 4 and parts[3] > len(SEEDS)):
        raise ValueError(f"TOKJAX_PREF_REAL must be 'n_train,n_heldout,steps[,n_seeds <= {len(SEEDS)}]' of "
                         f"positive ints, got {spec!r}")
    n_train, n_heldout, steps = parts[:3]
    n_val = min(N_VAL, max(1, n_train // 6))
    return dict(n_train=n_train, n_heldout=n_heldout, steps=steps, seeds=SEEDS[:parts[3]] if len(parts) == 4 else SEEDS,
                n_val=n_val, aux_steps=min(AUX_SFT_STEPS, steps))


@dataclasses.dataclass(frozen=True)
class Pair:
    """One preference pair: ``prompt`` ids, a correct ``chosen`` and an incorrect ``rejected`` completion of it,
    and ``index``, the prompt's position in its pool."""

    prompt: np.ndarray
    chosen: np.ndarray
    rejected: np.ndarray
    index: int


def make_pairs(pools: list[PromptPool], seed: int) -> tuple[list[Pair], int]:
    """Returns (pairs, dropped): per prompt one correct (chosen) and one incorrect (rejected) sample, each drawn
    uniformly among that prompt's by ``default_rng((seed, prompt index))`` (so a prompt's pair does not depend on
    the other prompts); ``dropped`` counts the prompts with no correct or no incorrect sample."""
    import numpy as np

    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed must be an int >= 0, got {seed!r}")
    pairs, dropped = [], 0
    for i, p in enumerate(pools):
        good, bad = np.flatnonzero(p.correct), np.flatnonzero(~np.asarray(p.correct, bool))
        if len(p.correct) != len(p.completions):
            raise ValueError(f"pool {i}: {len(p.correct)} grades for {len(p.completions)} completions")
        if not len(good) or not len(bad):
            dropped += 1
            continue
        r = np.random.default_rng((seed, i))
        pairs.append(Pair(p.prompt, p.completions[int(r.choice(good))], p.completions[int(r.choice(bad))], i))
    return pairs, dropped


def row_layout(prompts, completions, pad_id: int, length: int | None = None) -> dict:
    """Returns the padded batch of (prompt, completion) rows: ``tokens`` int32 [N, L] (right-padded with
    ``pad_id``), ``prompt_lengths`` / ``lengths`` int32 [N], so the loss mask (``shifted_completion_mask``) holds
    exactly the completion tokens. ``length`` L (default: the longest row, rounded up to a multiple of 8)."""
    import numpy as np

    if len(prompts) != len(completions) or not len(prompts):
        raise ValueError(f"need as many prompts as completions, at least one; got {len(prompts)} and {len(completions)}")
    pl = np.array([len(p) for p in prompts], np.int32)
    ln = pl + np.array([len(c) for c in completions], np.int32)
    if (pl < 1).any() or (ln <= pl).any():
        raise ValueError("every row needs a non-empty prompt and a non-empty completion")
    L = int(-(-ln.max() // 8) * 8) if length is None else int(length)
    if L < ln.max():
        raise ValueError(f"length {L} is shorter than the longest row ({int(ln.max())} tokens)")
    tokens = np.full((len(prompts), L), pad_id, np.int32)
    for r, (p, c) in enumerate(zip(prompts, completions)):
        tokens[r, :ln[r]] = np.concatenate([np.asarray(p), np.asarray(c)])
    return {"tokens": tokens, "prompt_lengths": pl, "lengths": ln}


def pair_layout(pairs: list[Pair], pad_id: int, length: int | None = None) -> dict:
    """Returns :func:`row_layout` of all pairs in the ``make_dpo_loss`` order: the N chosen rows, then the N
    rejected rows (row n and N + n are one pair)."""
    if not pairs:
        raise ValueError("no pairs (every prompt lacked a correct or an incorrect sample)")
    return row_layout([p.prompt for p in pairs] * 2, [p.chosen for p in pairs] + [p.rejected for p in pairs],
                      pad_id, length)


def pair_batch_rows(step: int, n_pairs: int, batch: int, seed: int):
    """Returns the row indices [2 * batch] of step ``step`` into a :func:`pair_layout`: ``batch`` pairs from a
    per-epoch permutation (``default_rng((seed, epoch))``, epochs of ``n_pairs // batch`` steps), their chosen
    rows first; a pure function of (step, seed)."""
    import numpy as np

    if n_pairs < batch:
        raise ValueError(f"need at least batch={batch} pairs, got {n_pairs}")
    per_epoch = n_pairs // batch
    epoch, k = divmod(int(step), per_epoch)
    idx = np.random.default_rng((seed, epoch)).permutation(n_pairs)[k * batch:(k + 1) * batch]
    return np.concatenate([idx, n_pairs + idx])


def completion_cols(layout: dict, rows, T: int):
    """Returns int32 [len(rows), S] target columns covering each row's completion targets (from
    ``prompt_lengths - 1``; S = the layout's longest completion rounded up to 8, at most T): the ``target_cols``
    of a batch cut to T targets, so the head runs on the completions only."""
    import numpy as np

    pl, ln = np.asarray(layout["prompt_lengths"]), np.asarray(layout["lengths"])
    S = min(int(-(-(ln - pl).max() // 8) * 8), T)
    first = np.clip(pl[rows] - 1, 0, T - S)
    if np.any(first + S < ln[rows] - 1):
        raise ValueError("a completion does not fit its scored window (rows cut shorter than their length?)")
    return (first[:, None] + np.arange(S)[None, :]).astype(np.int32)


def row_logp(params, cfg, layout: dict, chunk: int = 16, trunk=None):
    """Returns float32 [N, L-1] log-probs of every row's completion targets under (params, cfg) (``token_stats``
    with :func:`completion_cols`, no grad; 0 at the prompt's targets). ``trunk``: the layout's :func:`layout_trunk` (the residual stream entering the last :data:`TAIL` layers,
    which every arm shares with the reference): then only (params, cfg)'s last :data:`TAIL` layers run."""
    import jax
    import numpy as np

    import tokjax
    from tokjax.losses import token_stats
    from tokjax.model.trunk import tail

    toks = layout["tokens"]
    cols = completion_cols(layout, np.arange(len(toks)), toks.shape[1] - 1)
    if trunk is None:
        fn = _JIT.get(("logp", cfg))
        if fn is None:
            fn = _JIT[("logp", cfg)] = jax.jit(lambda p, t, c: token_stats(p, cfg, {"tokens": t, "target_cols": c}).logp)
        call = lambda i: fn(params, *(_pad_rows(x[i:i + chunk], chunk) for x in (toks, cols)))  # noqa: E731
    else:
        t = tail(tokjax.Model(params, cfg), cfg.n_layers - TAIL)
        fn = _JIT.get(("logp-tail", t.cfg))
        if fn is None:
            fn = _JIT[("logp-tail", t.cfg)] = jax.jit(lambda p, tk, c, h: token_stats(
                p, t.cfg, {"tokens": tk, "target_cols": c, "input_hidden": h}).logp)
        call = lambda i: fn(t.params, *(_pad_rows(x[i:i + chunk], chunk) for x in (toks, cols, trunk)))  # noqa: E731
    out = [np.asarray(call(i))[:len(toks[i:i + chunk])] for i in range(0, len(toks), chunk)]
    return np.concatenate(out)


def layout_trunk(model, layout: dict, rows=None, chunk: int = 16):
    """Returns float32 [N, L-1, D]: the reference ``model``'s residual stream entering its last :data:`TAIL`
    layers at every input position of the layout's rows (``rows``: only those, in that order). The frozen
    first n - TAIL layers are the same in every arm, so training and scoring read it instead of rerunning them."""
    from tokjax.model.trunk import trunk_states

    toks = layout["tokens"] if rows is None else layout["tokens"][rows]
    return trunk_states(model, model.cfg.n_layers - TAIL, toks[:, :-1], chunk=chunk)


_JIT: dict = {}  # jitted helpers per model config (compiled once per process)


def _pad_rows(x, n):
    import numpy as np

    return x if len(x) == n else np.concatenate([x, np.repeat(x[-1:], n - len(x), 0)])


def train_rows(model, loss: dict, layout: dict, batch_fn_rows, *, steps: int, lr: float, seed: int,
               extra: dict | None = None, trunk=None, progress: bool = False):
    """Returns (trained Model, history): ``tokjax.train`` of ``loss`` (a registry spec) from ``model`` with
    ``TRAINABLE`` (the last :data:`TAIL` layers), AdamW without weight decay, clip 1, ``steps // 10`` warm-up
    steps and cosine decay; step s trains on rows ``batch_fn_rows(s)`` of ``layout`` and of every ``extra``
    per-row array ([N, L-1], e.g. ref_logp, rm_logp).

    The frozen first n - TAIL layers run once per row, not once per step: their output (``trunk``, the
    layout's :func:`layout_trunk`; computed here for the rows the steps visit when None) feeds the tail model
    (:mod:`tokjax.model.trunk`, the ``input_hidden`` batch key), whose trained layers go back into ``model``.
    Each step's rows are cut to their longest row (rounded up to 32 positions): right padding of a causal
    model changes nothing before it, so the values are those of the full-length batch; and the head runs on
    the completion targets only (:func:`completion_cols`, the loss mask's support)."""
    import numpy as np

    from tokjax.model.trunk import tail, with_tail
    from tokjax.train import TrainConfig, train

    extra = dict(extra or {})
    n = len(layout["tokens"])
    for k, v in extra.items():
        if len(v) != n:
            raise ValueError(f"extra[{k!r}] has {len(v)} rows, the layout {n}")
    k_trunk = model.cfg.n_layers - TAIL
    if trunk is None:  # only the rows some step reads
        used = np.unique(np.concatenate([np.asarray(batch_fn_rows(s)) for s in range(steps)]))
        where = np.full(n, -1, np.int64)
        where[used] = np.arange(len(used))
        states = layout_trunk(model, layout, used)
    else:
        if trunk.shape[:2] != (n, layout["tokens"].shape[1] - 1):
            raise ValueError(f"trunk must be [N, L-1, D] of the layout ({n}, {layout['tokens'].shape[1] - 1}), "
                             f"got {trunk.shape}")
        where, states = np.arange(n), trunk
    lengths = np.asarray(layout["lengths"])

    def batch_fn(step):
        rows = np.asarray(batch_fn_rows(step))
        cut = min(int(-(-lengths[rows].max() // 32) * 32), layout["tokens"].shape[1])  # tokens kept per row
        batch = {k: (v[rows][:, :cut] if k == "tokens" else v[rows]) for k, v in layout.items()}
        batch.update({k: v[rows][:, :cut - 1] for k, v in extra.items()})
        batch["input_hidden"] = states[where[rows], :cut - 1]
        batch["target_cols"] = completion_cols(layout, rows, cut - 1)  # the head on the completions only
        return batch

    tc = TrainConfig(lr=float(lr), total_steps=int(steps), warmup_steps=max(1, steps // 10) if steps > 1 else 0,
                     weight_decay=0.0, grad_clip=1.0, seed=int(seed), log_every=max(1, steps // 10), eval_every=0,
                     checkpoint_every=0, loss=loss, trainable=TRAINABLE)
    t = tail(model, k_trunk)
    trained, hist = train(t.cfg, tc, batch_fn, params=t.params, progress=progress)
    return with_tail(model, trained), hist


def train_pairs(model, loss_name: str, pairs: list[Pair], *, steps: int, lr: float, seed: int, extra: dict | None = None,
                loss_options: dict | None = None, pad_id: int = 0, ref_logp=None, trunk=None, progress: bool = False):
    """Returns (trained Model, history) of the registered preference loss ``loss_name`` (beta :data:`BETA`, reference
    log-probs in the batch) on ``pairs``, :data:`PAIRS_PER_STEP` pairs a step (:func:`pair_batch_rows`).
    ``extra``: per-row arrays of the :func:`pair_layout` (rm_logp, weights, token_rewards, ...); ``ref_logp`` /
    ``trunk``: the reference's :func:`row_logp` / :func:`layout_trunk` of that layout when already computed."""
    layout = pair_layout(pairs, pad_id)
    if trunk is None:
        trunk = layout_trunk(model, layout)
    if ref_logp is None:
        ref_logp = row_logp(model.params, model.cfg, layout, trunk=trunk)
    loss = {"name": loss_name, "beta": BETA, **(loss_options or {})}
    return train_rows(model, loss, layout, lambda s: pair_batch_rows(s, len(pairs), PAIRS_PER_STEP, seed), steps=steps,
                      lr=lr, seed=seed, extra={"ref_logp": ref_logp, **(extra or {})}, trunk=trunk, progress=progress)


SFT_LR, SFT_ROWS = 1e-4, 16  # the auxiliary SFT models (cDPO's positive / negative): fixed in advance, not tuned


def completion_rows(pools, which: str) -> tuple[list, list]:
    """Returns (prompts, completions) of every ``which`` ("correct" or "incorrect") sample of ``pools``."""
    if which not in ("correct", "incorrect"):
        raise ValueError(f"which must be 'correct' or 'incorrect', got {which!r}")
    rows = [(p.prompt, c) for p in pools for c, g in zip(p.completions, p.correct) if bool(g) == (which == "correct")]
    if not rows:
        raise ValueError(f"no {which} samples in the pools")
    return [r[0] for r in rows], [r[1] for r in rows]


def sft(model, prompts, completions, *, steps: int, lr: float = SFT_LR, seed: int, loss: dict | None = None,
        rows: int = SFT_ROWS, pad_id: int = 0, progress: bool = False):
    """Returns (trained Model, history): ``loss`` (default next-token MLE on the completion tokens) over the
    (prompt, completion) rows, ``rows`` a step from per-epoch permutations, through :func:`train_rows`."""
    import numpy as np

    layout = row_layout(prompts, completions, pad_id)
    n = len(prompts)
    b = min(rows, n)

    def batch_rows(step):
        epoch, k = divmod(int(step), n // b)
        return np.random.default_rng((seed, epoch)).permutation(n)[k * b:(k + 1) * b]

    return train_rows(model, loss or {"name": "next_token"}, layout, batch_rows, steps=steps, lr=lr, seed=seed,
                      progress=progress)


def with_layers(model, layers_tail):
    """Returns ``model`` with its last ``len`` stacked layers replaced by ``layers_tail`` (what :func:`save_arm` kept)."""
    import jax

    import tokjax

    n = jax.tree.leaves(layers_tail)[0].shape[0]
    layers = jax.tree.map(lambda full, tail: full.at[-n:].set(tail.astype(full.dtype)), model.params["layers"],
                          layers_tail)
    return tokjax.Model({**model.params, "layers": layers}, model.cfg)


# ---------------------------------------------------------------------------- evaluation
def evaluate(model, tok, probs, *, samples: int = EVAL_SAMPLES, setting: dict | None = None, chunk: int = 16) -> dict:
    """Returns {"greedy" [n] float 0/1, "sampled" [n] (mean correct of ``samples`` T=1 samples), "sample_ids"
    (per problem a list of ``samples`` id arrays)} of the word problems ``probs`` (``check_answer``); the T=1 key
    is :data:`EVAL_KEY` folded with the call index, the same for every model."""
    import jax
    import numpy as np

    import tokjax
    from tokjax import logits as L
    from tokjax.data import check_answer

    setting = dict(SETTING if setting is None else setting)
    prompts = [tok.apply_chat_template(p.messages(setting["style"]), add_generation_prompt=True) for p in probs]
    greedy, sampled, ids = [], [], []
    gen = dict(max_new_tokens=setting["new_tokens"], eos_id=tok.eos_id, pad_id=tok.pad_id or 0)
    for call, i in enumerate(range(0, len(prompts), chunk)):
        ps, answers = prompts[i:i + chunk], [p.answer for p in probs[i:i + chunk]]
        g = tokjax.generate(model, ps, logits=L.greedy(), **gen).texts(tok)
        out = tokjax.generate(model, ps, key=jax.random.fold_in(jax.random.key(EVAL_KEY), call), n=samples,
                              logits=L.temperature(1.0), **gen)
        texts, comps = out.texts(tok), out.completions()
        for j, a in enumerate(answers):
            greedy.append(float(check_answer(g[j], a)[0]))
            rows = range(j * samples, (j + 1) * samples)
            sampled.append(float(np.mean([check_answer(texts[r], a)[0] for r in rows])))
            ids.append([np.asarray(comps[r], np.int32) for r in rows])
    return {"greedy": np.array(greedy), "sampled": np.array(sampled), "sample_ids": ids}


def drift_docs(tok, n: int = DRIFT_DOCS, tokens: int = DRIFT_TOKENS):
    """Returns int32 [n, tokens] windows: the first ``tokens`` tokens of the first ``n`` held-out pydocs paragraphs
    (``split_corpus(pydocs, 0.1, seed 0)`` validation documents split at blank lines) that are at least that long."""
    import numpy as np

    from tokjax.data import load_corpus, split_corpus

    _, val = split_corpus(load_corpus("pydocs"), val_fraction=0.1, seed=0)
    out = []
    for doc in val:
        for para in doc.split("\n\n"):
            ids = tok.encode(para)
            if len(ids) >= tokens:
                out.append(ids[:tokens])
            if len(out) == n:
                return np.asarray(out, np.int32)
    raise ValueError(f"only {len(out)} held-out pydocs paragraphs of >= {tokens} tokens, {n} needed")


def drift_kl(model, ref, docs, chunk: int = 4) -> float:
    """Returns the mean per-token KL(ref || model) over the next-token distributions along ``docs`` [n, T]."""
    import jax
    import numpy as np

    import tokjax
    from tokjax.losses._distill import kl_from_logits

    kl = _JIT.get(("kl", model.cfg, ref.cfg))
    if kl is None:
        kl = _JIT[("kl", model.cfg, ref.cfg)] = jax.jit(lambda p, q, t: kl_from_logits(
            tokjax.forward(q, ref.cfg, t).logits, tokjax.forward(p, model.cfg, t).logits))

    vals = [np.asarray(kl(model.params, ref.params, docs[i:i + chunk])) for i in range(0, len(docs), chunk)]
    return float(np.concatenate(vals).mean())


def self_bleu(sample_ids, max_n: int = 2) -> "np.ndarray":
    """Returns per-problem self-BLEU-``max_n`` [n]: the mean over a problem's samples of the sample's sentence BLEU
    (``tokjax.metrics.tensor_sentence_bleu``, uniform weights, "floor" smoothing) against its other samples."""
    import numpy as np

    from tokjax.metrics import tensor_sentence_bleu

    k = len(sample_ids[0])
    if k < 2 or any(len(s) != k for s in sample_ids):
        raise ValueError(f"self-BLEU needs the same number (>= 2) of samples per problem, got {k}")
    T = max(1, max(len(c) for cs in sample_ids for c in cs))
    cand = np.zeros((len(sample_ids) * k, T), np.int32)
    clen = np.zeros(len(cand), np.int32)
    refs = np.zeros((len(cand), k - 1, T), np.int32)
    rlen = np.zeros((len(cand), k - 1), np.int32)
    for i, cs in enumerate(sample_ids):
        for j in range(k):
            r = i * k + j
            cand[r, :len(cs[j])], clen[r] = cs[j], len(cs[j])
            for m, o in enumerate([c for q, c in enumerate(cs) if q != j]):
                refs[r, m, :len(o)], rlen[r, m] = o, len(o)
    b = tensor_sentence_bleu(cand, refs, candidate_lengths=clen, reference_lengths=rlen, max_n=max_n,
                             smoothing="floor")
    return np.asarray(b, float).reshape(len(sample_ids), k).mean(1)


# ---------------------------------------------------------------------------- verdict
def bootstrap_halfwidth(diff, n_boot: int = 2000, seed: int = 0) -> float:
    """Returns the half-width of the paired-bootstrap 95 % interval of mean(``diff``) (per-problem differences;
    problems resampled with replacement)."""
    import numpy as np

    d = np.asarray(diff, float)
    if d.ndim != 1 or len(d) < 2:
        raise ValueError(f"diff must be 1-D with >= 2 problems, got shape {d.shape}")
    means = d[np.random.default_rng(seed).integers(0, len(d), (n_boot, len(d)))].mean(1)
    lo, hi = np.percentile(means, [2.5, 97.5])
    return float((hi - lo) / 2)


def beats(method, baseline, floor: float = MARGIN_POINTS) -> tuple[bool, float, float]:
    """Returns (win, diff, margin) in accuracy points of per-problem scores in [0, 1]: diff = 100 * mean(method -
    baseline), margin = max(``floor``, bootstrap 95 % half-width), win = diff > margin."""
    import numpy as np

    m, b = np.asarray(method, float), np.asarray(baseline, float)
    if m.shape != b.shape:
        raise ValueError(f"method and baseline scores must be paired per problem, got {m.shape} and {b.shape}")
    d = 100.0 * (m - b)
    margin = max(floor, bootstrap_halfwidth(d))
    return bool(d.mean() > margin), float(d.mean()), margin


def real_verdict(method_runs, dpo_runs, ref_scores, seeds):
    """Returns (Verdict, note) of a SmolLM row (issue 22): per seed, method - DPO > max(2 points, paired-bootstrap
    95 % half-width over problems) in every seed -> reproduced; mean difference <= 0 -> not-reproduced; else
    inconclusive; inconclusive too when DPO does not beat the reference by that margin in every seed."""
    from experiments._harness import Verdict

    seeds = tuple(seeds)
    if not (len(method_runs) == len(dpo_runs) == len(seeds) > 0):
        raise ValueError(f"need one method and one DPO run per seed, got {len(method_runs)}, {len(dpo_runs)} for {seeds}")
    wins, diffs, margins = zip(*(beats(m, d) for m, d in zip(method_runs, dpo_runs)))
    dpo_wins, dpo_diffs, dpo_margins = zip(*(beats(d, ref_scores) for d in dpo_runs))
    mean = sum(diffs) / len(diffs)
    status = "reproduced" if all(wins) else ("not-reproduced" if mean <= 0 else "inconclusive")
    if not all(dpo_wins):
        status = "inconclusive"
    f = lambda xs: ", ".join(f"{x:+.1f}" for x in xs)  # noqa: E731
    note = (f"method - DPO per seed {f(diffs)} points (margins {f(margins)}); DPO - reference {f(dpo_diffs)} "
            f"(margins {f(dpo_margins)}{'' if all(dpo_wins) else '; DPO did not beat the reference: inconclusive'})")
    return Verdict(status=status, threshold=MARGIN_POINTS, seeds=seeds, diffs=tuple(diffs), mean_diff=mean), note


# ---------------------------------------------------------------------------- shared context and caches
TAIL = 4  # the trained layers (TRAINABLE = last:4): what an arm's cache keeps of its parameters
CACHE_VERSION = 2  # 2: trunk-cached training (float rounding differs from 1)


@dataclasses.dataclass
class Context:
    """What every SmolLM row shares: the reference ``model`` / ``tok``, ``size`` (:func:`sizes`), the training
    ``pools`` (the last ``n_val`` are the validation split), the ``heldout`` problems, the drift ``docs``."""

    model: object
    tok: object
    size: dict
    pools: list
    heldout: list
    docs: object
    _memo: dict = dataclasses.field(default_factory=dict)

    @property
    def train_pools(self) -> list:
        return self.pools[:len(self.pools) - self.size["n_val"]]

    def pairs(self, seed: int):
        """Returns (pairs, dropped, layout, ref_logp) of the training prompts for ``seed`` (memoised)."""
        if seed not in self._memo:
            pairs, dropped = make_pairs(self.train_pools, seed)
            layout = pair_layout(pairs, self.tok.pad_id or 0)
            trunk = self._memo[("trunk", seed)] = layout_trunk(self.model, layout)
            self._memo[seed] = (pairs, dropped, layout, row_logp(self.model.params, self.model.cfg, layout, trunk=trunk))
        return self._memo[seed]

    def trunk(self, seed: int):
        """Returns the :func:`layout_trunk` of :meth:`pairs`'s layout for ``seed`` (memoised with it)."""
        self.pairs(seed)
        return self._memo[("trunk", seed)]


def load(progress: bool = True) -> Context:
    """Returns the :class:`Context` at :func:`sizes` (samples and caches the training pool on first use); a
    ``--seeds`` run keeps only its seeds."""
    import tokjax
    from experiments._harness import restrict_seeds

    size = sizes()
    if size != {**FULL_SIZE, "n_val": N_VAL, "aux_steps": AUX_SFT_STEPS} and sys.argv[0].endswith(".py") and "--no-record" not in sys.argv:
        raise ValueError(f"$TOKJAX_PREF_REAL={size} is a reduced size (a plumbing check): run it with --no-record")
    size["seeds"] = restrict_seeds(size["seeds"])  # a --seeds run fills only its seeds' caches (keys omit seeds)
    model, tok = tokjax.pretrained(MODEL, progress=progress)
    pools = sample_pool(model, tok, size["n_train"], TRAIN_SEED, progress=progress)
    return Context(model, tok, size, pools, problems(size["n_heldout"], HELDOUT_SEED), drift_docs(tok))


def _arm_path(ctx: Context, arm: str, seed: int, options: dict):
    import hashlib
    import json

    from experiments._common import cached
    from experiments._preference_real import _fingerprint

    key = dict(arm=arm, seed=seed, options=options, size={k: v for k, v in ctx.size.items() if k != "seeds"},
               setting=SETTING, model=MODEL, params=ctx._memo.setdefault("fp", _fingerprint(ctx.model)),
               beta=BETA, pairs_per_step=PAIRS_PER_STEP, eval_samples=EVAL_SAMPLES, eval_key=EVAL_KEY,
               drift=[DRIFT_DOCS, DRIFT_TOKENS], version=CACHE_VERSION)
    text = json.dumps(key, sort_keys=True, default=str)
    return cached(f"preference-smollm-{hashlib.sha256(text.encode()).hexdigest()[:16]}.npz"), text


def arm_result(ctx: Context, arm: str, seed: int, options: dict, build, *, keep_params: bool = False) -> dict:
    """Returns {"eval" (:func:`evaluate`), "drift", "info", "model" (when ``keep_params``)} of one arm, from the
    disk cache when present; else ``build() -> (Model, info dict)`` trains it (None: the reference itself), then
    it is evaluated on the held-out problems and cached (with its last :data:`TAIL` layers if ``keep_params``)."""
    import json
    import os

    import jax
    import numpy as np

    path, key = _arm_path(ctx, arm, seed, options)
    if path.exists():
        with np.load(path) as f:
            if str(f["key"]) == key:
                ids = np.split(f["ids"], np.cumsum(f["id_lengths"])[:-1])
                s = EVAL_SAMPLES
                out = {"eval": {"greedy": f["greedy"], "sampled": f["sampled"],
                                "sample_ids": [ids[i * s:(i + 1) * s] for i in range(len(f["greedy"]))]},
                       "drift": float(f["drift"]), "info": json.loads(str(f["info"]))}
                if keep_params:
                    tail = [f[f"layer_{i}"] for i in range(len([k for k in f.files if k.startswith("layer_")]))]
                    like = ctx.model.params["layers"]
                    out["model"] = with_layers(ctx.model, jax.tree.unflatten(jax.tree.structure(like), tail))
                return out
    import time

    t0 = time.perf_counter()
    built = build()
    model, info = (ctx.model, {}) if built is None else built
    if "train" in info:  # a tokjax.train history
        info = _history_info(info)
    t1 = time.perf_counter()
    ev = evaluate(model, ctx.tok, ctx.heldout)
    t2 = time.perf_counter()
    drift = 0.0 if built is None else drift_kl(model, ctx.model, ctx.docs)
    info = {**info, "seconds": {"train": t1 - t0, "eval": t2 - t1, "drift": time.perf_counter() - t2}}
    sps = info.get("steps_per_s", [])
    print(f"  {arm} seed {seed}: train {t1 - t0:.0f} s (steady {1 / sps[-1] if sps else float('nan'):.1f} s/step), eval {t2 - t1:.0f} s, drift {info['seconds']['drift']:.0f} s; "
          f"T=1 accuracy {ev['sampled'].mean():.3f}, greedy {ev['greedy'].mean():.3f}", flush=True)
    flat = [c for cs in ev["sample_ids"] for c in cs]
    arrays = dict(key=np.array(key), greedy=ev["greedy"], sampled=ev["sampled"], drift=np.array(drift),
                  ids=np.concatenate(flat), id_lengths=np.array([len(c) for c in flat]),
                  info=np.array(json.dumps(info, default=float)))
    if keep_params:
        arrays.update({f"layer_{i}": np.asarray(x[-TAIL:]) for i, x in enumerate(jax.tree.leaves(model.params["layers"]))})
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, path)
    out = {"eval": ev, "drift": drift, "info": info}
    if keep_params:
        out["model"] = model
    return out


def _history_info(hist) -> dict:
    tr = hist["train"]
    keys = ("loss", "reward_margin", "reward_accuracy", "weight_spread", "steps_per_s", "elapsed_s")
    return {k: [float(h[k]) for h in tr if k in h] for k in keys if any(k in h for h in tr)}


def reference_result(ctx: Context) -> dict:
    """Returns :func:`arm_result` of the untrained reference (cached)."""
    return arm_result(ctx, "reference", 0, {}, lambda: None)


def dpo_arm(ctx: Context, seed: int, lr: float = DPO_LR, *, progress: bool = False) -> dict:
    """Returns :func:`arm_result` (with ``model``) of sequence DPO for ``seed``, cached: the baseline of every
    SmolLM row and TGDPO's pi_rm."""
    def build():
        pairs, dropped, layout, ref_logp = ctx.pairs(seed)
        model, hist = train_pairs(ctx.model, "dpo", pairs, steps=ctx.size["steps"], lr=lr, seed=seed,
                                  ref_logp=ref_logp, trunk=ctx.trunk(seed), pad_id=ctx.tok.pad_id or 0,
                                  progress=progress)
        return model, {"pairs": len(pairs), "dropped": dropped, **_history_info(hist)}

    return arm_result(ctx, "dpo", seed, {"lr": lr, "steps": ctx.size["steps"]}, build, keep_params=True)


def method_arm(ctx: Context, name: str, seed: int, options: dict, extra_fn, *, lr: float = DPO_LR,
               key_extra: dict | None = None, progress: bool = False) -> dict:
    """Returns :func:`arm_result` of the registered loss ``name`` with ``options`` for ``seed`` (DPO's lr and
    steps); ``extra_fn(pairs, layout) -> {key: per-row array}`` adds its batch entries (rm_logp, weights, ...);
    ``key_extra``: what else its cache entry depends on (prompts, auxiliary-model settings)."""
    def build():
        pairs, dropped, layout, ref_logp = ctx.pairs(seed)
        model, hist = train_pairs(ctx.model, name, pairs, steps=ctx.size["steps"], lr=lr, seed=seed,
                                  ref_logp=ref_logp, extra=extra_fn(pairs, layout), loss_options=options,
                                  trunk=ctx.trunk(seed), pad_id=ctx.tok.pad_id or 0, progress=progress)
        return model, {"pairs": len(pairs), "dropped": dropped, **_history_info(hist)}

    return arm_result(ctx, name, seed, {"lr": lr, "steps": ctx.size["steps"], **options, **(key_extra or {})}, build)


def preference_rows(pid: str, name: str, label: str, claim: str, run_arm, *, reported: str) -> list:
    """Returns the two SmolLM Rows (``smollm-sampled``: mean T=1 accuracy of 4 samples per held-out problem;
    ``smollm-greedy``) of method ``label`` vs the cached DPO arm, ``run_arm(ctx, seed, dpo) -> arm_result``."""
    import numpy as np

    from experiments._harness import Row

    ctx = load()
    seeds = ctx.size["seeds"]
    ref = reference_result(ctx)
    dpo = [dpo_arm(ctx, s) for s in seeds]
    meth = [run_arm(ctx, s, d) for s, d in zip(seeds, dpo)]
    sz = ctx.size
    setting = (f"SmolLM2-135M-Instruct, word problems level 0 'oneshot', last 4 of 30 layers trained, {sz['steps']} "
               f"steps x {PAIRS_PER_STEP} pairs, beta {BETA}, lr {DPO_LR:g}; {sz['n_train'] - sz['n_val']} train "
               f"prompts ({dpo[0]['info'].get('pairs')} pairs, seed {seeds[0]}) / {len(ctx.heldout)} held-out "
               f"problems; seeds {list(seeds)}")
    pct = lambda xs: ", ".join(f"{100 * float(np.mean(x)):.1f}" for x in xs)  # noqa: E731
    spread = lambda r: r["info"].get("weight_spread", [])  # noqa: E731
    r4 = lambda xs: ", ".join(f"{x:.4f}" for x in xs)  # noqa: E731
    spreads = [f"{np.mean(spread(m)):.4f}" if spread(m) else "n/a" for m in meth]
    racc = [d["info"].get("reward_accuracy", [float("nan")])[-1] for d in dpo]
    common = (f"reference: greedy {100 * ref['eval']['greedy'].mean():.1f}, T=1 {100 * ref['eval']['sampled'].mean():.1f}; "
              f"collateral drift KL(ref||model) per token on {DRIFT_DOCS} held-out pydocs paragraphs: DPO "
              f"{r4([d['drift'] for d in dpo])}, {label} {r4([m['drift'] for m in meth])}; {label} mean|w-1| "
              f"{', '.join(spreads)}; final-step DPO reward accuracy {', '.join(f'{a:.2f}' for a in racc)}")
    rows = []
    for metric, cid, what in (("sampled", "smollm-sampled", "mean T=1 accuracy of 4 samples per problem"),
                              ("greedy", "smollm-greedy", "greedy accuracy")):
        v, vnote = real_verdict([m["eval"][metric] for m in meth], [d["eval"][metric] for d in dpo],
                                ref["eval"][metric], seeds)
        rows.append(Row(pid=pid, claim_id=cid, claim=f"{claim} ({what})", setting=setting, baseline_name="sequence DPO",
                        baseline_value=round(100 * float(np.mean([d["eval"][metric].mean() for d in dpo])), 2),
                        method_value=round(100 * float(np.mean([m["eval"][metric].mean() for m in meth])), 2),
                        metric=f"held-out {what}, points (higher is better)", verdict=v,
                        note=f"{what}: DPO {pct([d['eval'][metric] for d in dpo])}, {label} "
                             f"{pct([m['eval'][metric] for m in meth])}; {vnote}; {common}. Reported: {reported}."))
    return rows


def run_rows(quick: bool, only, toy_rows, real_rows, real_claims) -> list:
    """Returns an experiment's rows: its toy rows (``toy_rows(quick)``, filtered by ``only``), plus in full mode
    the SmolLM rows ``real_rows()`` whose claim ids (``real_claims``) ``only`` asks for (all by default)."""
    if quick and only and set(only) & set(real_claims):
        raise ValueError(f"the SmolLM rows {real_claims} run in full mode only")
    rows = [r for r in toy_rows(quick) if not only or r.claim_id in only] \
        if not only or set(only) - set(real_claims) else []
    if not quick and (only is None or set(only) & set(real_claims)):
        rows += [r for r in real_rows() if only is None or r.claim_id in only]
    return rows


# ---------------------------------------------------------------------------- lr selection (run once)
def select_lr(grid=LR_GRID, seed: int = 0, samples: int = 8) -> dict:
    """Returns {lr: mean T=1 accuracy of ``samples`` samples on the validation prompts} of DPO trained (seed
    ``seed``, the full step count) on the training pairs at each lr of ``grid``; the reference under key None."""
    import numpy as np

    ctx = load()
    val = problems(ctx.size["n_train"], TRAIN_SEED)[len(ctx.train_pools):]
    pairs, _, _, ref_logp = ctx.pairs(seed)
    out = {None: float(evaluate(ctx.model, ctx.tok, val, samples=samples)["sampled"].mean())}
    for lr in grid:
        model, _ = train_pairs(ctx.model, "dpo", pairs, steps=ctx.size["steps"], lr=lr, seed=seed, ref_logp=ref_logp,
                               trunk=ctx.trunk(seed), pad_id=ctx.tok.pad_id or 0)
        out[lr] = float(np.mean(evaluate(model, ctx.tok, val, samples=samples)["sampled"]))
        print(f"  lr {lr:g}: validation T=1 accuracy {out[lr]:.3f} (reference {out[None]:.3f})", flush=True)
    return out


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description="SmolLM rows of issue 22: choose the DPO lr on the validation split")
    ap.add_argument("--select-lr", action="store_true")
    if ap.parse_args().select_lr:
        res = select_lr()
        best = max((k for k in res if k is not None), key=lambda k: res[k])
        print(f"validation T=1 accuracy: {res}; best lr {best:g} -> set DPO_LR in {__file__}")
