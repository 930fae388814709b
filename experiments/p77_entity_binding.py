"""P77 entity binding on SmolLM2-135M-Instruct: positional retrieval mid-list, and the mixing model's agreement.

Paper claims (Gur-Arieh, Geva, Geiger, arXiv 2510.06182; official code yoavgur/mixing-mechs): LMs retrieve a
bound entity ("Ann loves pie, Bob loves jam, ... Who loves jam?") with a mixture of a positional, a lexical and
a reflexive mechanism; the positional one becomes unreliable for groups in the middle of the list as the number
of groups n grows; a causal model mixing the three (noisy positional Gaussian + lexical and reflexive spikes)
predicts the LM's next-token distribution over the candidates with 95% agreement (1 - Jensen-Shannon, bits).

Setting: ``tokjax.pretrained("smollm2-135m-instruct")``, raw prompts (no chat template)
"Favorite foods: Ann: pie, Bob: jam, ..., Tim: tea. So Bob:" -> " jam" (the name is queried, the food is the
retrieved entity; ``order="attribute_first"``); single-token names and foods drawn at random per prompt; the
distribution is the softmax of the n candidate foods' logits at the last position (as the official code reads
them). Format chosen on a probe before the claims were run: SmolLM2-135M is near chance on the paper's
"Pete loves jam ... Who loves jam?" form (n=2: 0.54, n=4: 0.25) and on "What does Bob love?" (0.42, 0.31);
the colon list was the best of 7 probed forms (n=2: 0.50, n=4: 0.50, n=8: 0.28). The paper's models are
2B-70B; a 135M model that binds this weakly makes both claims weak evidence either way (said in the notes).

Claims, rules declared below before anything runs (one deterministic model, fixed prompt seed 0):

* ``mid-list`` (``RULE_MID``): accuracy by queried position for n = 2..8. Metric: edge accuracy (first and
  last group) minus middle accuracy (groups 2..n-3) at n = 8, compared with the same gap at n = 4 (groups 0, 3
  vs 1, 2); reproduced if the n = 8 gap exceeds the n = 4 gap by > 0.05 (the mid-list drop grows with n).
* ``mixing`` (``RULE_MIX``): n = 4 groups, 40 base prompts each with a counterfactual whose positional,
  lexical and reflexive cues point to three different base groups (none the base answer); the last-token
  ``resid_pre`` of every layer is patched from the counterfactual (``interchange``). The layer is chosen on
  the fit half only: the one where the most patched argmaxes follow one of the three cues. The mixing model is
  fit (JS, as the official code) on the first 20 prompts' distributions at that layer and evaluated on the
  other 20: mean agreement = 1 - JS (bits). Reproduced if it exceeds max(0.9, the positional-only model's
  agreement) (threshold 0; paper: 95%).
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as `python experiments/p77_entity_binding.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from experiments._harness import Row, Rule, run_cli  # noqa: E402

RULE_MID = Rule(metric="edge minus middle accuracy at n=8, minus the same gap at n=4", higher_is_better=True,
                threshold=0.05, seeds=(0,), reported="argmax over the n candidate names; prompt seed 0")
RULE_MIX = Rule(metric="held-out agreement (1 - JS bits) of the mixing model", higher_is_better=True,
                threshold=0.0, seeds=(0,),
                reported="full mixing model (positional+lexical+reflexive) fit on 20 prompts, tested on 20; "
                         "layer chosen on the fit half; baseline max(0.9, positional-only model)")

MODEL = "smollm2-135m-instruct"
NAMES = ("Ann Bob Tom Sam Joe Max Dan Ben Tim Jim Kate Mary Paul John Mark Anna Lisa Jack Alex Tony Eve Amy "
         "Ian Leo Ray Ted Kim Ron Lee").split()
FOODS = ("pie jam tea cake rice soup bread milk fish beer wine corn salad pasta pizza cheese eggs coffee juice "
         "candy honey meat nuts apple").split()
ACC_NS = (2, 3, 4, 5, 6, 7, 8)
PER_POSITION = 20  # prompts per (n, queried position)
MIX_N = 4
MIX_PROMPTS = 40


def pieces(tok) -> dict:
    enc = tok.encode
    return dict(prefix=enc("Favorite foods:"), relation=enc(":"), separator=enc(","), end=enc("."),
                query_prefix=enc(" So"), query_suffix=enc(":"), order="attribute_first")


def single_tokens(tok, words) -> list[int]:
    ids = [tok.encode(" " + w) for w in words]
    bad = [w for w, i in zip(words, ids) if len(i) != 1]
    if bad:
        raise ValueError(f"{bad} are not single SmolLM2 tokens")
    return [i[0] for i in ids]


def run(quick: bool) -> list[Row]:
    import time

    import jax
    import jax.numpy as jnp
    import numpy as np

    import tokjax
    from tokjax.analysis.entity_binding import (
        CUES, agreement, binding_prompts, classify, counterfactuals, fit_mixing_model, interchange, mixing_logits,
    )
    from tokjax.model.forward import Inputs, forward, unembed

    t0 = time.time()
    model, tok = tokjax.pretrained(MODEL)
    cfg = model.cfg
    ents, atts, pc = single_tokens(tok, FOODS), single_tokens(tok, NAMES), pieces(tok)  # answers = foods
    ns = (2, 4, 6, 8) if quick else ACC_NS
    per_pos = 12 if quick else PER_POSITION

    @jax.jit
    def last_logits(params, tokens):
        out = forward(params, cfg, Inputs(tokens=tokens), compute_logits=False)
        return unembed(params, cfg, out.hidden[:, -1:])[:, 0]

    def cand_logits(tokens, cands, bs=64):
        return jnp.concatenate([jnp.take_along_axis(last_logits(model.params, tokens[s:s + bs]), cands[s:s + bs], 1)
                                for s in range(0, tokens.shape[0], bs)])

    # --- accuracy by queried position ---------------------------------------------------------------
    acc = {}
    for j, n in enumerate(ns):
        b = binding_prompts(n, n * per_pos, ents, atts, key=jax.random.key(100 + n), **pc)
        pred = np.asarray(jnp.argmax(cand_logits(b["tokens"], b["entities"]), -1))
        q = np.asarray(b["query"])
        acc[n] = [float(np.mean(pred[q == g] == g)) for g in range(n)]
    print(f"accuracy by position ({time.time() - t0:.0f}s):", {n: [round(a, 2) for a in v] for n, v in acc.items()},
          flush=True)

    def gap(n):
        a = acc[n]
        return float(np.mean([a[0], a[-1]]) - np.mean(a[1:-1] if n <= 4 else a[2:n - 2]))

    gap8, gap4 = gap(8), gap(4)

    # --- interchange at the query residual, mixing model ------------------------------------------
    N = 24 if quick else MIX_PROMPTS
    layers = list(range(0, cfg.n_layers, 3)) if quick else list(range(cfg.n_layers))
    b = binding_prompts(MIX_N, N, ents, atts, key=jax.random.key(0), **pc)
    c = counterfactuals(b, key=jax.random.key(1))
    base_acc = float(np.mean(np.asarray(jnp.argmax(cand_logits(b["tokens"], b["entities"]), -1)) == np.asarray(b["query"])))
    cf_acc = float(np.mean(np.asarray(jnp.argmax(cand_logits(c["tokens"], c["entities"]), -1)) == np.asarray(c["query"])))
    logits = interchange(model, b["tokens"], c["tokens"], b["entities"], layers=layers, batch_size=N)  # [L, N, n]
    probs = jax.nn.softmax(logits, -1)
    cues = np.stack([np.asarray(classify(jnp.argmax(logits[j], -1), c["p"], c["k"], c["i"], c["q"]))
                     for j in range(len(layers))])  # [L, N]
    frac = np.stack([(cues == m).mean(1) for m in range(len(CUES))], 1)  # [L, 5]
    print(f"interchange ({time.time() - t0:.0f}s):", flush=True)
    for j, l in enumerate(layers):
        print(f"  layer {l:2d}: " + " ".join(f"{CUES[m]} {frac[j, m]:.2f}" for m in range(len(CUES))), flush=True)
    half = N // 2
    tr, te = slice(0, half), slice(half, N)
    effect = (cues[:, tr] <= 2).mean(1)
    jbest = int(np.argmax(effect))
    Lstar = layers[jbest]
    p, k, i = c["p"], c["k"], c["i"]
    Y = probs[jbest]
    full, _ = fit_mixing_model(p[tr], k[tr], i[tr], Y[tr])
    pos_only, _ = fit_mixing_model(p[tr], k[tr], i[tr], Y[tr], terms=(1.0, 0.0, 0.0))
    ag_full = float(agreement(jax.nn.softmax(mixing_logits(full, p[te], k[te], i[te]), -1), Y[te]).mean())
    ag_pos = float(agreement(jax.nn.softmax(mixing_logits(pos_only, p[te], k[te], i[te], (1.0, 0.0, 0.0)), -1),
                             Y[te]).mean())
    ag_fit = float(agreement(jax.nn.softmax(mixing_logits(full, p[tr], k[tr], i[tr]), -1), Y[tr]).mean())
    ag_unif = float(agreement(jnp.full_like(Y[te], 1.0 / MIX_N), Y[te]).mean())
    x = np.arange(MIX_N) / MIX_N
    s = np.asarray(full["sigma"])
    sig = np.abs(s[0] + s[1] * x + s[2] * x * x)
    print(f"mixing at layer {Lstar}: test agreement {ag_full:.3f} (fit {ag_fit:.3f}), positional-only {ag_pos:.3f}, "
          f"uniform {ag_unif:.3f}; w_pos {float(full['w_pos']):.2f} sigma(p) {np.round(sig, 2)} "
          f"gate_k {np.round(np.asarray(full['gate_k']), 2)} gate_i {np.round(np.asarray(full['gate_i']), 2)}",
          flush=True)

    setting = (f"SmolLM2-135M-Instruct, raw 'Favorite foods: X: y, ... So X:' prompts, "
               f"{len(atts)} names x {len(ents)} foods" + (" (--quick)" if quick else ""))
    acc_txt = "; ".join(f"n={n}: " + " ".join(f"{a:.2f}" for a in acc[n]) for n in ns)
    mix_base = max(0.9, ag_pos)
    lay_txt = ", ".join(f"L{l}: pos {frac[j, 0]:.2f} lex {frac[j, 1]:.2f} ref {frac[j, 2]:.2f} none {frac[j, 3]:.2f}"
                        for j, l in enumerate(layers))
    return [
        Row(pid="P77", claim_id="mid-list",
            claim="Positional retrieval of bound entities fails for middle groups as the number of groups grows",
            setting=setting + f"; n in {list(ns)}, {per_pos} prompts per queried position",
            baseline_name="edge - middle accuracy gap at n=4", baseline_value=round(gap4, 3),
            method_value=round(gap8, 3), metric="edge - middle accuracy gap at n=8 (higher = stronger mid-list drop)",
            verdict=RULE_MID.verdict([gap8], [gap4]),
            note="accuracy by queried group: " + acc_txt),
        Row(pid="P77", claim_id="mixing",
            claim="A causal model mixing positional, lexical and reflexive mechanisms predicts the LM's distribution "
                  "over bound entities with 95% agreement",
            setting=setting + f"; n={MIX_N}, {N} base/counterfactual pairs (unpatched accuracy {base_acc:.2f} / "
                              f"{cf_acc:.2f}), last-token resid_pre patched at layers {layers[0]}..{layers[-1]}"
                              f" (step {layers[1] - layers[0]}), fit on {half}, tested on {N - half}",
            baseline_name=f"max(0.9, positional-only model {ag_pos:.3f})", baseline_value=round(mix_base, 4),
            method_value=round(ag_full, 4), metric="held-out agreement 1 - JS (bits; higher is better)",
            verdict=RULE_MIX.verdict([ag_full], [mix_base]),
            note=f"layer {Lstar} (most patched argmaxes follow a cue on the fit half: {effect[jbest]:.2f}); "
                 f"fit agreement {ag_fit:.3f}; uniform predictor {ag_unif:.3f}; fitted w_pos "
                 f"{float(full['w_pos']):.2f}, sigma(p) {np.round(sig, 2).tolist()}, gate_k "
                 f"{np.round(np.asarray(full['gate_k']), 2).tolist()}, gate_i "
                 f"{np.round(np.asarray(full['gate_i']), 2).tolist()}; patched argmax by layer: {lay_txt}"),
    ]


if __name__ == "__main__":
    raise SystemExit(run_cli(run))
