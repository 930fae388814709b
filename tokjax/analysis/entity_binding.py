"""P77 entity binding: positional, lexical and reflexive retrieval of bound entities, and their mixture.

Gur-Arieh, Geva, Geiger, "Mixing Mechanisms: How Language Models Retrieve Bound Entities In-Context"
(arXiv 2510.06182; official code ``yoavgur/mixing-mechs``, read for the causal model and the metric).

A binding prompt lists ``n`` entity groups, "Ann loves pie, Bob loves jam, ... Who loves jam? Answer:", and
the answer is the entity bound to the queried attribute. The paper finds three mechanisms at the query's
last-token residual stream, told apart by interchange interventions: the query residual is taken from a
counterfactual prompt in which the three cues point to *different* groups of the base prompt:

* **positional** (p): "the answer is the entity of the group at index p" (p = the counterfactual's queried
  group index);
* **lexical** (k): "the answer is the entity bound to attribute A" (A = the counterfactual's queried
  attribute, which sits in base group k);
* **reflexive** (i): "the answer is entity E" (E = the counterfactual's answer, which sits in base group i).

The mixing (causal) model of the official code predicts the distribution over the n candidate entities
(indexed by group a) as

    logits(a | p, k, i) = w_pos · exp(-(a - p)² / (2 σ(p)²)) + g_k[k] · 1{a = k} + g_i[i] · 1{a = i},
    σ(p) = s₀ + s₁ (p / n) + s₂ (p / n)²,

a noisy positional term whose width grows in the middle of the list, plus lexical and reflexive spikes with
per-index gates; it is fit by minimising the Jensen-Shannon divergence (base 2) to the model's candidate
distributions. The paper's "95% agreement" is ``1 - JS`` (the official code prints ``100 - 100 · JS``):
:func:`agreement` returns it per item.

Functions: :func:`binding_prompts` (token-level prompt batches), :func:`counterfactuals` (cf prompts whose
p, k, i are distinct), :func:`interchange` (patch the query residual per layer, via
:mod:`tokjax.analysis.patching`), :func:`classify` (which cue the patched output follows),
:func:`mixing_logits` / :func:`fit_mixing_model` / :func:`agreement` / :func:`js_divergence`.
"""

from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from tokjax.analysis.patching import _unpack, capture
from tokjax.model.forward import HOOK_SITES, Inputs, forward, unembed

__all__ = ["agreement", "binding_prompts", "classify", "counterfactuals", "fit_mixing_model", "interchange",
           "js_divergence", "mixing_logits", "init_mixing_params"]

_F32 = jnp.float32
CUES = ("positional", "lexical", "reflexive", "no_effect", "other")


def _ids(x, name: str) -> list[int]:
    a = np.asarray(x, dtype=np.int64).reshape(-1) if not isinstance(x, int) else np.asarray([x])
    if a.size and a.min() < 0:
        raise ValueError(f"{name} must hold non-negative token ids, got {a.tolist()}")
    return [int(t) for t in a]


def binding_prompts(n_groups: int, n_prompts: int, entities, attributes, *, key: jax.Array, prefix=(),
                    relation=(), separator=(), end=(), query_prefix=(), query_suffix=(),
                    query_groups=None, order: str = "entity_first") -> dict:
    """Returns a batch of ``n_prompts`` binding prompts with ``n_groups`` groups each (P77's task), as tokens.

    Layout (every piece a list of token ids; entities and attributes are single tokens, so every prompt has
    the same length and the same positions)::

        prefix  E₀ relation A₀ separator  E₁ relation A₁ separator ...  E_{n-1} relation A_{n-1} end
        query_prefix A_q query_suffix                      -> next token: E_q

    e.g. prefix "Context:", relation " loves", separator ",", end ".", query_prefix " Who loves",
    query_suffix "? Answer:". ``entities`` / ``attributes``: pools of >= n_groups distinct token ids; each
    prompt draws n distinct ones of each (``key``). ``query_groups`` [n_prompts]: the queried group per prompt
    (default ``arange(n_prompts) % n_groups``: every position queried equally often). ``order``:
    ``"entity_first"`` (the layout above) or ``"attribute_first"`` (each group is ``A relation E``: e.g.
    "Ann loves pie, ... What does Bob love? Answer:" -> " jam", with the foods as the answer "entities"
    and the names as the queried "attributes").

    Returns {"tokens" int32 [N, T], "entities" [N, n], "attributes" [N, n], "query" [N] (queried group),
    "answer" [N] (= entities[query]), "entity_pos" [n], "attribute_pos" [n], "query_pos" (position of the
    queried attribute)}.
    """
    n, N = int(n_groups), int(n_prompts)
    if order not in ("entity_first", "attribute_first"):
        raise ValueError(f"order must be 'entity_first' or 'attribute_first', got {order!r}")
    if n < 1 or N < 1:
        raise ValueError(f"n_groups and n_prompts must be >= 1, got {n_groups} and {n_prompts}")
    ent = jnp.asarray(_ids(entities, "entities"), jnp.int32)
    att = jnp.asarray(_ids(attributes, "attributes"), jnp.int32)
    for name, pool in (("entities", ent), ("attributes", att)):
        if len(set(np.asarray(pool).tolist())) != pool.shape[0]:
            raise ValueError(f"{name} pool has repeated token ids")
        if pool.shape[0] < n:
            raise ValueError(f"{name} pool has {pool.shape[0]} tokens, fewer than n_groups={n}")
    pieces = {k: _ids(v, k) for k, v in dict(prefix=prefix, relation=relation, separator=separator, end=end,
                                             query_prefix=query_prefix, query_suffix=query_suffix).items()}
    if query_groups is None:
        q = jnp.arange(N, dtype=jnp.int32) % n
    else:
        q = jnp.asarray(query_groups, jnp.int32)
        if q.shape != (N,) or int(q.min()) < 0 or int(q.max()) >= n:
            raise ValueError(f"query_groups must be [n_prompts={N}] ints in [0, {n}), got shape {q.shape}")
    ke, ka = jax.random.split(key)
    pick = jax.vmap(lambda k, m: jax.random.permutation(k, m)[:n], in_axes=(0, None))
    E = ent[pick(jax.random.split(ke, N), ent.shape[0])]
    A = att[pick(jax.random.split(ka, N), att.shape[0])]
    # token layout: one template row with placeholders, then scatter entities/attributes
    row, e_pos, a_pos = list(pieces["prefix"]), [], []
    first, second = (e_pos, a_pos) if order == "entity_first" else (a_pos, e_pos)
    for g in range(n):
        first.append(len(row))
        row += [0] + pieces["relation"]
        second.append(len(row))
        row += [0] + (pieces["separator"] if g < n - 1 else pieces["end"])
    row += pieces["query_prefix"]
    q_pos = len(row)
    row += [0] + pieces["query_suffix"]
    e_pos, a_pos = jnp.asarray(e_pos), jnp.asarray(a_pos)
    tokens = jnp.broadcast_to(jnp.asarray(row, jnp.int32), (N, len(row)))
    tokens = tokens.at[:, e_pos].set(E).at[:, a_pos].set(A)
    tokens = tokens.at[:, q_pos].set(jnp.take_along_axis(A, q[:, None], 1)[:, 0])
    return {"tokens": tokens, "entities": E, "attributes": A, "query": q,
            "answer": jnp.take_along_axis(E, q[:, None], 1)[:, 0],
            "entity_pos": e_pos, "attribute_pos": a_pos, "query_pos": q_pos}


def counterfactuals(prompts: dict, *, key: jax.Array) -> dict:
    """Returns counterfactual prompts for ``prompts`` (from :func:`binding_prompts`) whose cues point apart.

    Per base prompt (groups Eₐ, Aₐ, query q), three distinct base groups p, k, i are drawn (all != q when
    n >= 4; n = 3 forces q into {p, k, i}). The counterfactual uses the same entities and attributes, with
    group p holding (E_i, A_k) and the query asking about A_k (answer E_i); the other entities and attributes
    fill the other groups in random order. Patching its query residual into the base prompt, the positional
    cue points to base group p, the lexical cue (attribute A_k) to k, the reflexive cue (entity E_i) to i.

    Returns the counterfactual batch (same keys as ``prompts``) plus "p", "k", "i", "q" int32 [N] (base group
    indices; q = the base query).
    """
    E, A, q = prompts["entities"], prompts["attributes"], prompts["query"]
    N, n = E.shape
    if n < 3:
        raise ValueError(f"counterfactuals need n_groups >= 3 (p, k, i distinct), got {n}")
    ar = jnp.arange(n)

    def one(key, e, a, qq):
        k1, k2, k3 = jax.random.split(key, 3)
        u = jax.random.uniform(k1, (n,))
        u = jnp.where((ar == qq) & (n >= 4), 2.0, u)  # keep q out of {p, k, i} when possible
        p, k, i = jnp.argsort(u)[:3]
        rest_e = e[jnp.argsort(jnp.where(ar == i, 2.0, jax.random.uniform(k2, (n,))))[:n - 1]]
        rest_a = a[jnp.argsort(jnp.where(ar == k, 2.0, jax.random.uniform(k3, (n,))))[:n - 1]]
        slots = jnp.argsort(ar == p, stable=True)[:n - 1]  # group indices != p, in order
        ce = e.at[slots].set(rest_e).at[p].set(e[i])
        ca = a.at[slots].set(rest_a).at[p].set(a[k])
        return ce, ca, p, k, i

    ce, ca, p, k, i = jax.vmap(one)(jax.random.split(key, N), E, A, q)
    tokens = prompts["tokens"].at[:, prompts["entity_pos"]].set(ce).at[:, prompts["attribute_pos"]].set(ca)
    tokens = tokens.at[:, prompts["query_pos"]].set(jnp.take_along_axis(ca, p[:, None], 1)[:, 0])
    i32 = lambda x: x.astype(jnp.int32)  # noqa: E731
    return {**prompts, "tokens": tokens, "entities": ce, "attributes": ca, "query": i32(p),
            "answer": jnp.take_along_axis(ce, p[:, None], 1)[:, 0], "p": i32(p), "k": i32(k), "i": i32(i),
            "q": i32(q)}


@functools.partial(jax.jit, static_argnames=("cfg", "site"))
def _patched_candidate_logits(params, cfg, base, cf_acts, pos, layer, candidates, site):
    def hook(x, lyr):
        return jnp.where(lyr == layer, x.at[:, pos].set(cf_acts[lyr].astype(x.dtype)), x)

    out = forward(params, cfg, Inputs(tokens=base), hooks={f"layer.*.{site}": hook}, compute_logits=False)
    logits = unembed(params, cfg, out.hidden[:, -1:])[:, 0]
    return jnp.take_along_axis(logits, candidates, axis=1)


def interchange(model, base_tokens, cf_tokens, candidates, *, layers: Sequence[int] | None = None,
                site: str = "resid_pre", position: int = -1, batch_size: int = 64) -> jax.Array:
    """Returns the candidate logits [len(layers), N, C] of ``base_tokens`` [N, T] with the activation at
    ``site`` of layer l, token ``position``, taken from ``cf_tokens`` [N, T] (P77's interchange intervention;
    the official code patches ``resid_pre`` at the last token).

    ``candidates`` int [N, C]: the token ids to read (the base prompt's entities, in group order).
    ``layers`` default: every layer. The counterfactual activations come from
    :func:`tokjax.analysis.patching.capture`; the patched runs are one compiled forward with the layer a
    runtime index (equal to :func:`tokjax.analysis.patching.patch`, tested).
    """
    params, cfg = _unpack(model)
    base, cf, cand = jnp.asarray(base_tokens), jnp.asarray(cf_tokens), jnp.asarray(candidates)
    if base.ndim != 2 or cf.shape != base.shape:
        raise ValueError(f"base_tokens and cf_tokens must be [N, T] of one shape, got {base.shape} and {cf.shape}")
    if cand.ndim != 2 or cand.shape[0] != base.shape[0] or not jnp.issubdtype(cand.dtype, jnp.integer):
        raise ValueError(f"candidates must be int [N={base.shape[0]}, C], got {cand.shape} {cand.dtype}")
    if site not in HOOK_SITES:
        raise ValueError(f"unknown site {site!r}; expected one of {HOOK_SITES}")
    T = base.shape[1]
    pos = position + T if position < 0 else position
    if not 0 <= pos < T:
        raise ValueError(f"position {position} out of range for T={T}")
    layers = list(range(cfg.n_layers)) if layers is None else [int(l) for l in layers]
    if not layers or min(layers) < 0 or max(layers) >= cfg.n_layers:
        raise ValueError(f"layers must be a non-empty list in [0, {cfg.n_layers}), got {layers}")
    out = []
    for s in range(0, base.shape[0], batch_size):
        b, c, cd = base[s:s + batch_size], cf[s:s + batch_size], cand[s:s + batch_size]
        acts = capture((params, cfg), c, f"layer.*.{site}")[f"layer.*.{site}"][:, :, pos]  # [L, B, D]
        out.append(jnp.stack([_patched_candidate_logits(params, cfg, b, acts, pos, jnp.int32(l), cd, site)
                              for l in layers]))
    return jnp.concatenate(out, axis=1)


def classify(pred, p, k, i, q) -> jax.Array:
    """Returns int [N]: which cue the predicted group ``pred`` follows, an index into :data:`CUES`
    (0 positional (= p), 1 lexical (= k), 2 reflexive (= i), 3 no effect (= base answer q), 4 other;
    checked in that order)."""
    pred, p, k, i, q = map(jnp.asarray, (pred, p, k, i, q))
    return jnp.select([pred == p, pred == k, pred == i, pred == q], [0, 1, 2, 3], 4)


# ----------------------------------------------------------------------------- mixing (causal) model

def init_mixing_params(n_candidates: int) -> dict:
    """Returns the official initialisation: w_pos 1, σ ≡ 3 (s = [3, 0, 0]), zero gates [n]."""
    n = int(n_candidates)
    if n < 1:
        raise ValueError(f"n_candidates must be >= 1, got {n_candidates}")
    return {"w_pos": jnp.asarray(1.0, _F32), "sigma": jnp.asarray([3.0, 0.0, 0.0], _F32),
            "gate_k": jnp.zeros((n,), _F32), "gate_i": jnp.zeros((n,), _F32)}


def mixing_logits(params: dict, p, k, i, terms=(1.0, 1.0, 1.0)) -> jax.Array:
    """Returns the mixing model's logits [N, n] over candidate groups (P77 causal model, official form):

        logits(a) = t₀·w_pos·exp(-(a - p)² / (2σ(p)² + 1e-6)) + t₁·g_k[k]·1{a=k} + t₂·g_i[i]·1{a=i},
        σ(p) = s₀ + s₁·(p/n) + s₂·(p/n)².

    ``terms`` (runtime [3]): multipliers of the positional, lexical, reflexive terms ((1, 0, 0) is the
    positional-only model).
    """
    n = params["gate_k"].shape[0]
    p, k, i = (jnp.asarray(x, jnp.int32) for x in (p, k, i))
    t = jnp.asarray(terms, _F32)
    a = jnp.arange(n)[None, :]
    x = p.astype(_F32) / n
    s = params["sigma"]
    sig = s[0] + s[1] * x + s[2] * x * x
    gauss = jnp.exp(-((a - p[:, None]) ** 2) / (2.0 * sig[:, None] ** 2 + 1e-6))
    return (t[0] * params["w_pos"] * gauss + t[1] * params["gate_k"][k][:, None] * (a == k[:, None])
            + t[2] * params["gate_i"][i][:, None] * (a == i[:, None]))


def js_divergence(pred_probs, target_probs) -> jax.Array:
    """Returns the Jensen-Shannon divergence in bits [N] between rows of [N, n] distributions (in [0, 1])."""
    P, Q = jnp.asarray(pred_probs, _F32), jnp.asarray(target_probs, _F32)
    M = 0.5 * (P + Q)
    kl = lambda X: jnp.sum(jax.scipy.special.xlogy(X, X) - jax.scipy.special.xlogy(X, M), -1)  # noqa: E731
    return jnp.maximum(0.5 * (kl(P) + kl(Q)) / jnp.log(2.0), 0.0)


def agreement(pred_probs, target_probs) -> jax.Array:
    """Returns P77's agreement per item [N]: 1 - JS(pred, target) in bits (the official code reports
    ``100 - 100·JS``, the paper's "95% agreement"). 1 = identical distributions, 0 = disjoint supports."""
    P, Q = jnp.asarray(pred_probs), jnp.asarray(target_probs)
    if P.shape != Q.shape or P.ndim != 2:
        raise ValueError(f"pred and target must be [N, n] of one shape, got {P.shape} and {Q.shape}")
    return 1.0 - js_divergence(P, Q)


@functools.partial(jax.jit, static_argnames=("steps",))
def _fit(params, p, k, i, target, weights, terms, lr, steps):
    opt = optax.scale_by_adam()

    def loss_fn(prm):
        pred = jax.nn.softmax(mixing_logits(prm, p, k, i, terms), -1)
        return jnp.sum(weights * js_divergence(pred, target)) / jnp.sum(weights)

    def step(carry, t):
        prm, st = carry
        loss, g = jax.value_and_grad(loss_fn)(prm)
        upd, st = opt.update(g, st, prm)
        rate = lr * 0.5 * (1.0 + jnp.cos(jnp.pi * t / steps))  # cosine decay to 0
        prm = jax.tree.map(lambda w, u: w - rate * u, prm, upd)
        return (prm, st), loss

    (params, _), losses = jax.lax.scan(step, (params, opt.init(params)), jnp.arange(steps, dtype=_F32))
    return params, losses


def fit_mixing_model(p, k, i, target_probs, *, terms=(1.0, 1.0, 1.0), weights=None, lr: float = 0.05,
                     steps: int = 3000, init: dict | None = None) -> tuple[dict, jax.Array]:
    """Fits the P77 mixing model (:func:`mixing_logits`) to candidate distributions by minimising the mean
    Jensen-Shannon divergence (bits), as the official code does (Adam; here full-batch with a cosine-decayed
    learning rate ``lr`` for ``steps`` steps, no early stopping).

    ``p``, ``k``, ``i`` int [N]: the groups the positional, lexical and reflexive cues point to;
    ``target_probs`` [N, n]: the distribution over the n candidates (rows sum to 1). ``terms``: which terms
    are on (runtime [3]; (1, 0, 0) fits the positional-only model). ``weights`` [N]: per-item weights.
    Returns (params, loss curve [steps]).
    """
    Y = jnp.asarray(target_probs, _F32)
    if Y.ndim != 2 or Y.shape[0] == 0:
        raise ValueError(f"target_probs must be [N, n] with N >= 1, got {Y.shape}")
    N, n = Y.shape
    if not bool(jnp.all(jnp.isfinite(Y))) or bool(jnp.any(Y < 0)) or \
            not bool(jnp.allclose(Y.sum(-1), 1.0, atol=1e-3)):
        raise ValueError("target_probs rows must be finite, non-negative and sum to 1")
    idx = []
    for name, v in (("p", p), ("k", k), ("i", i)):
        v = jnp.asarray(v)
        if v.shape != (N,) or not jnp.issubdtype(v.dtype, jnp.integer):
            raise ValueError(f"{name} must be int [N={N}], got shape {v.shape} dtype {v.dtype}")
        if int(v.min()) < 0 or int(v.max()) >= n:
            raise ValueError(f"{name} must index the n={n} candidates, got values in [{int(v.min())}, {int(v.max())}]")
        idx.append(v.astype(jnp.int32))
    w = jnp.ones((N,), _F32) if weights is None else jnp.asarray(weights, _F32)
    if w.shape != (N,) or bool(jnp.any(w < 0)) or float(w.sum()) <= 0:
        raise ValueError(f"weights must be [N={N}], non-negative, not all zero")
    if int(steps) < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    params = init_mixing_params(n) if init is None else init
    return _fit(params, *idx, Y, w, jnp.asarray(terms, _F32), jnp.asarray(lr, _F32), int(steps))
