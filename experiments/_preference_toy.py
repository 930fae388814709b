"""The toy preference task shared by the P15 (AlignDistil) and P65 (implicit token reward) experiments.

A prompt ``BOS topic`` is answered by RESP words from a topic-dependent Markov chain; a rejected
response is the same response with one word replaced by BAD at a known position.
"""

from __future__ import annotations

BOS, TOPIC0, N_TOPIC, WORD0, N_WORD, BAD = 0, 1, 4, 5, 10, 15
VOCAB, RESP, PROMPT = 16, 8, 2
SEQ = PROMPT + RESP


def make_pairs(n: int, seed: int, *, follow: float = 0.6, bad_rate: float = 1.0):
    """Returns (clean [n, SEQ] int32, with_bad [n, SEQ] int32, bad_index [n]): with_bad = clean with word
    ``bad_index`` (0..RESP-1, uniform) replaced by BAD in a ``bad_rate`` fraction of rows (-1 elsewhere)."""
    import numpy as np

    r = np.random.default_rng(seed)
    succ = np.random.default_rng(4321).integers(0, N_WORD, size=(N_TOPIC, N_WORD))
    topic = r.integers(0, N_TOPIC, size=n)
    words = np.empty((n, RESP), np.int64)
    words[:, 0] = r.integers(0, N_WORD, size=n)
    for j in range(1, RESP):
        words[:, j] = np.where(r.uniform(size=n) < follow, succ[topic, words[:, j - 1]], r.integers(0, N_WORD, size=n))
    clean = np.concatenate([np.full((n, 1), BOS), TOPIC0 + topic[:, None], WORD0 + words], axis=1).astype(np.int32)
    bad_index = r.integers(0, RESP, size=n)
    bad_index[r.uniform(size=n) >= bad_rate] = -1
    with_bad = clean.copy()
    hit = bad_index >= 0
    with_bad[np.arange(n)[hit], PROMPT + bad_index[hit]] = BAD
    return clean, with_bad, bad_index


# ------------------------------------------------------------------------------------------------
# Extended toy (issue 22): bigger vocabulary / longer responses, independent pairing, a control token.
# make_pairs above is unchanged (the P15 / P65 rows reproduce); make_toy with its defaults draws the
# same rows as make_pairs (same RNG calls), so the shared arms runner below can use either.
CTRL_NEUTRAL, CTRL_GOOD, CTRL_BAD = 0, 1, 2  # offsets after BAD when control=True


def toy_spec(n_word: int = N_WORD, resp: int = RESP, control: bool = False) -> dict:
    """Returns the token layout {word0, n_word, bad, vocab, resp, prompt, seq, ctrl (first control id or None)}."""
    if n_word < 2 or resp < 2:
        raise ValueError(f"n_word and resp must be >= 2, got {n_word} and {resp}")
    bad = WORD0 + n_word
    ctrl = bad + 1 if control else None
    prompt = PROMPT + (1 if control else 0)
    return {"word0": WORD0, "n_word": n_word, "bad": bad, "vocab": bad + 1 + (3 if control else 0), "resp": resp,
            "prompt": prompt, "seq": prompt + resp, "ctrl": ctrl}


def make_toy(n: int, seed: int, *, n_word: int = N_WORD, resp: int = RESP, follow: float = 0.6,
             pairing: str = "edit", bad_rate: float = 1.0, p_bad: float = 0.1, control: bool = False):
    """Returns dict(chosen, rejected [n, seq] int32, bad_chosen, bad_rejected [n, resp] bool, spec).

    ``pairing="edit"``: rejected = chosen with one word (uniform position) -> BAD in a ``bad_rate``
    fraction of rows (make_pairs' rows when n_word/resp/control are the defaults). ``"independent"``:
    two responses drawn independently, each word -> BAD with prob ``p_bad``; the one with fewer BAD
    tokens is chosen (ties broken towards the first), so shared prefixes no longer cancel in DPO.
    ``control``: the prompt is ``BOS topic CTRL`` with the neutral control token (swap it with
    :func:`with_control` for the x+ / x- prompts).
    """
    import numpy as np

    if pairing not in ("edit", "independent"):
        raise ValueError(f"pairing must be 'edit' or 'independent', got {pairing!r}")
    sp = toy_spec(n_word, resp, control)
    r = np.random.default_rng(seed)
    succ = np.random.default_rng(4321).integers(0, n_word, size=(N_TOPIC, n_word))
    topic = r.integers(0, N_TOPIC, size=n)

    def chain():
        words = np.empty((n, resp), np.int64)
        words[:, 0] = r.integers(0, n_word, size=n)
        for j in range(1, resp):
            words[:, j] = np.where(r.uniform(size=n) < follow, succ[topic, words[:, j - 1]],
                                   r.integers(0, n_word, size=n))
        return WORD0 + words

    head = [np.full((n, 1), BOS), TOPIC0 + topic[:, None]]
    if control:
        head.append(np.full((n, 1), sp["ctrl"] + CTRL_NEUTRAL))
    head = np.concatenate(head, axis=1)
    a = chain()
    if pairing == "edit":
        bad_index = r.integers(0, resp, size=n)
        bad_index[r.uniform(size=n) >= bad_rate] = -1
        b = a.copy()
        hit = bad_index >= 0
        b[np.arange(n)[hit], bad_index[hit]] = sp["bad"]
        chosen, rejected = a, b
    else:
        b = chain()
        a = np.where(r.uniform(size=a.shape) < p_bad, sp["bad"], a)
        b = np.where(r.uniform(size=b.shape) < p_bad, sp["bad"], b)
        swap = (b == sp["bad"]).sum(1) < (a == sp["bad"]).sum(1)
        chosen, rejected = np.where(swap[:, None], b, a), np.where(swap[:, None], a, b)
    cat = lambda w: np.concatenate([head, w], axis=1).astype(np.int32)  # noqa: E731
    return {"chosen": cat(chosen), "rejected": cat(rejected), "bad_chosen": chosen == sp["bad"],
            "bad_rejected": rejected == sp["bad"], "spec": sp}


def with_control(tokens, spec: dict, which: int):
    """Returns a copy of ``tokens`` [n, seq] with the control token set to ``which`` (CTRL_* offset)."""
    out = tokens.copy()
    out[:, spec["prompt"] - 1] = spec["ctrl"] + which
    return out


def credit_by_position(scores, bad_mask):
    """Returns dict: mean score before / at / after the first BAD, and argmin hit rates at BAD-1, BAD, BAD+1.

    ``scores`` [n, resp] token credit (lower = blamed, e.g. beta*Delta_t), ``bad_mask`` [n, resp] bool;
    rows without BAD are skipped. A transformer conditions on BAD, so blame can spread to later tokens.
    """
    import numpy as np

    rows = np.where(bad_mask.any(1))[0]
    first = bad_mask[rows].argmax(1)
    s = scores[rows]
    pos = np.arange(s.shape[1])[None, :]
    before, at, after = pos < first[:, None], pos == first[:, None], pos > first[:, None]
    amin = s.argmin(1)
    mean = lambda m: float(s[m].mean()) if m.any() else float("nan")  # noqa: E731
    return {"before": mean(before), "at": mean(at), "after": mean(after),
            "argmin_prev": float(np.mean(amin == first - 1)), "argmin_bad": float(np.mean(amin == first)),
            "argmin_next": float(np.mean(amin == first + 1))}


# ------------------------------------------------------------------------------------------------
# Shared quick runner for the token-level DPO arms (P17 cDPO, P48 TGDPO, P51 T-REG) on the notes'
# check-2 toy: a reference SFT'd on responses with BAD in half of them (so it puts mass on BAD),
# then each arm trained from it on (clean, one-word->BAD) pairs. Hyperparameters are fixed here,
# once, for every arm (beta 0.1, Adam lr 3e-4 = the P65 experiment's DPO lr, batch 32 pairs), not tuned on
# any reported metric. (A smoke run at lr 1e-3 with evaluation every 5 steps put every arm, DPO included,
# under the target at the first evaluation; the lr was lowered and evaluation made per-step for resolution.)
TOKEN_ARMS = ("dpo", "cdpo", "tgdpo", "t_reg")
ARM_HP = {"beta": 0.1, "lr": 3e-4, "batch": 32, "sft_steps": 300, "sft_lr": 3e-3, "aux_sft_steps": 100,
          "tgdpo_alpha": 0.5, "t_reg_alpha": 0.25, "eval_every": 1, "target": 0.10}


def run_arms(arms, *, quick: bool, seeds, control: bool = False, dpo_steps: int | None = None):
    """Returns {arm: [per-seed dict]} with steps to P(BAD) < target, P(BAD)@50, collateral KL, credit stats.

    P(BAD) = mean over held-out clean prompts+responses of 1 - prod_t (1 - pi(BAD | s_t)) along the
    clean response (teacher-forced); collateral KL = mean over those positions of KL(ref || pi) after
    renormalising both without BAD; credit = :func:`credit_by_position` of beta*Delta_t on held-out
    rejected responses. 'tgdpo' uses the same seed's final 'dpo' model as pi_rm (so 'dpo' runs first);
    'cdpo' SFTs a positive (clean chosen) and a negative (rejected) model from the reference
    (aux_sft_steps each); 't_reg' needs ``control`` (x+/x- = the good/bad control token, scored by the reference).
    """
    import jax
    import jax.numpy as jnp
    import numpy as np

    import tokjax
    from experiments._common import adam, sample_rows
    from experiments._harness import train_model
    from tokjax.losses import token_stats
    from tokjax.losses.critical_tokens import cdpo_weights, contrastive_token_scores, make_cdpo_loss
    from tokjax.losses.dpo import make_dpo_loss
    from tokjax.losses.t_reg import make_t_reg_loss, normalised_token_rewards
    from tokjax.losses.tgdpo import make_tgdpo_loss

    hp = ARM_HP
    steps = dpo_steps or (100 if quick else 300)
    sp = toy_spec(control=control)
    P, S, V, BADT = sp["prompt"], sp["seq"], sp["vocab"], sp["bad"]
    cfg = tokjax.ModelConfig(vocab_size=V, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, max_len=S)
    sft_data = make_toy(20000, 1, bad_rate=0.5, control=control)["rejected"]  # BAD in half of the responses
    if control:  # label half of the SFT rows with their true control token, the rest stay neutral
        lab = np.random.default_rng(7).uniform(size=len(sft_data)) < 0.5
        has_bad = (sft_data[:, P:] == BADT).any(1)
        sft_data[lab, P - 1] = sp["ctrl"] + np.where(has_bad[lab], CTRL_BAD, CTRL_GOOD)
    pairs = make_toy(20000, 2, control=control)
    ev = make_toy(512, 3, control=control)
    ev_clean, ev_rej, ev_bad = jnp.asarray(ev["chosen"]), jnp.asarray(ev["rejected"]), ev["bad_rejected"]
    B = hp["batch"]
    pl = np.full((2 * B,), P, np.int32)

    @jax.jit
    def logp_all(p, toks):
        return token_stats(p, cfg, {"tokens": toks}).logp

    @jax.jit
    def dist(p):  # log-softmax over the clean held-out responses' positions
        z = tokjax.forward(p, cfg, ev_clean[:, :-1]).logits[:, P - 1:]
        return jax.nn.log_softmax(z, -1)

    def sft_loss(p, cfg_, batch, rng):
        st = token_stats(p, cfg_, batch)
        loss = -jnp.mean(jnp.sum(jnp.where(st.mask, st.logp, 0.0), -1))
        return loss, {"loss": loss}

    def sft(data, steps_, seed, init):
        fn = sample_rows({"tokens": data, "prompt_lengths": np.full(len(data), P, np.int32)}, 64, seed)
        return train_model(cfg, steps=steps_, batch_fn=fn, loss_fn=sft_loss, seed=seed, params=init,
                           **adam(hp["sft_lr"]))[0].params

    def p_bad_kl(p, ref_lsm):
        lsm = dist(p)
        pb = jnp.exp(lsm[..., BADT])
        p_any = float(jnp.mean(1 - jnp.prod(1 - pb, axis=-1)))
        keep = jnp.arange(V) != BADT
        a = jax.nn.log_softmax(jnp.where(keep, ref_lsm, -jnp.inf), -1)
        b = jax.nn.log_softmax(jnp.where(keep, lsm, -jnp.inf), -1)
        kl = jnp.sum(jnp.where(keep, jnp.exp(a) * (a - b), 0.0), -1)
        return p_any, float(jnp.mean(kl))

    out = {a: [] for a in arms}
    for seed in seeds:
        ref = sft(sft_data, hp["sft_steps"], seed, tokjax.Model.init(cfg, jax.random.key(seed)).params)
        ref_lsm = dist(ref)
        p0, _ = p_bad_kl(ref, ref_lsm)
        ctx = {}
        for arm in arms:
            extra = lambda toks: {}  # noqa: E731
            if arm == "dpo":
                loss = make_dpo_loss(beta=hp["beta"], method="naive")
            elif arm == "cdpo":
                pos = sft(pairs["chosen"], hp["aux_sft_steps"], 50 + seed, ref)
                neg = sft(pairs["rejected"], hp["aux_sft_steps"], 60 + seed, ref)
                score = jax.jit(lambda t: contrastive_token_scores((pos, cfg), (neg, cfg), t))
                extra = lambda toks, score=score: {"weights": np.asarray(cdpo_weights(score(toks[B:])))}  # noqa: E731
                loss = make_cdpo_loss(beta=hp["beta"], method="naive")
            elif arm == "tgdpo":
                rm = ctx["dpo_params"]
                extra = lambda toks, rm=rm: {"rm_logp": np.asarray(logp_all(rm, jnp.asarray(toks)))}  # noqa: E731
                loss = make_tgdpo_loss(beta=hp["beta"], alpha=hp["tgdpo_alpha"], method="naive")
            elif arm == "t_reg":
                if not control:
                    raise ValueError("the t_reg arm needs control=True (x+/x- prompts)")

                def extra(toks, ref=ref):
                    good = logp_all(ref, jnp.asarray(with_control(toks, sp, CTRL_GOOD)))
                    badp = logp_all(ref, jnp.asarray(with_control(toks, sp, CTRL_BAD)))
                    m = np.arange(S - 1)[None, :] >= P - 1
                    return {"token_rewards": np.asarray(normalised_token_rewards(good, badp,
                                                                                 np.broadcast_to(m, good.shape)))}
                loss = make_t_reg_loss(beta=hp["beta"], alpha=hp["t_reg_alpha"], method="naive")
            else:
                raise ValueError(f"unknown arm {arm!r}; valid: {TOKEN_ARMS}")

            def batch_fn(step, ref=ref, extra=extra):
                idx = np.random.default_rng((100 + seed, step)).integers(0, len(pairs["chosen"]), B)
                toks = np.concatenate([pairs["chosen"][idx], pairs["rejected"][idx]])
                return {"tokens": toks, "prompt_lengths": pl, "ref_logp": np.asarray(logp_all(ref, jnp.asarray(toks))),
                        **extra(toks)}

            curve = {0: p0}

            def cb(step, state, metrics, curve=curve):
                if step % hp["eval_every"] == 0:
                    curve[step] = p_bad_kl(state.params, ref_lsm)[0]

            model, hist = train_model(cfg, steps=steps, batch_fn=batch_fn, loss_fn=loss, params=ref, seed=seed,
                                      callback=cb, **adam(hp["lr"]))
            q = model.params
            if arm == "dpo":
                ctx["dpo_params"] = q
            hit = [t for t in sorted(curve) if curve[t] < hp["target"]]
            p_end, kl_end = p_bad_kl(q, ref_lsm)
            rew = hp["beta"] * np.asarray(logp_all(q, ev_rej) - logp_all(ref, ev_rej))[:, P - 1:]
            spread = [h.get("weight_spread", 0.0) for h in hist["train"]]
            out[arm].append({"steps_to_target": hit[0] if hit else steps + hp["eval_every"], "reached": bool(hit),
                             "p_bad_0": p0, "p_bad_50": curve.get(50, float("nan")), "p_bad_end": p_end,
                             "kl_end": kl_end, "credit": credit_by_position(rew, ev_bad),
                             "weight_spread": float(np.mean(spread)) if spread else 0.0})
    return out, {"dpo_steps": steps, **hp}
