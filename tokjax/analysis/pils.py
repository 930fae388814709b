"""PILS (P4): prompt inversion from the log-prob vectors of a model's greedy generation steps.

Paper: *Better Language Model Inversion by Compactly Representing Next-Token Distributions* (Nazir,
Finlayson, Morris, Ren, Swayamdipta; P4). Official code: ``github.com/dill-lab/PILS``
(``pils/embedders/embeddings.py``, ``*RandomKALREmbedder``; ``pils/models/inversion_from_hidden_states.py``);
the parts below tagged [official code] were checked there.

The attacker sees, for a hidden prompt x, the full next-token log-prob vectors of T greedy steps::

    greedily generate T tokens (min_new_tokens = T: no early eos), keep l_t in R^V    t = 1..T
    S = randperm(V, seed 666)[: D + extra + 1]   (D = the target's hidden size, extra = 100)   [official code]
    a_t = l_t[S_1..S_{K-1}] - l_t[S_0]           (additive log-ratio, ALR: the log-normaliser cancels)  [official code]

Because ``l_t = W h_t - logsumexp(W h_t)`` with ``h_t`` the final-normed hidden state and ``W`` the
unembedding, ``a_t = (W[S_1:] - W[S_0]) h_t`` is a *linear* image of ``h_t``: with K - 1 >= D
generic rows the map is injective, so ``h_t`` (and hence the whole distribution ``l_t``) is recovered
from ``a_t`` by least squares (:func:`fit_alr_map` learns the map from (a, h) pairs without the
weights; :func:`alr_head_matrix` / :func:`recover_hidden` use the weights). With K - 1 < D it is not.

The inverter [official code: ``embedding_transform`` then T5 encoder-decoder] projects every step's
features, ``u_t = W2 GELU(Dropout(W1 norm(a_t) + b1)) + b2``, and a sequence model decodes the
prompt from (u_1..u_T). Here the T5 encoder-decoder is a tokjax prefix LM: the T projected vectors
enter as ``Inputs(embeds=...)`` under ``Prefix(T)`` (bidirectional among themselves, like an
encoder), then ``[bos] x_1 .. x_n [eos]`` is written causally after them. Loss (registered ``pils``):
``-sum_i log p(x_i | u_1..u_T, x_<i)``. Greedy inversion runs through ``tokjax.generate`` with
:class:`FeaturePrefixLM`, the prefix-LM strategy of :mod:`tokjax.decoding.sap` whose prefix is the
projected feature vectors instead of tokens. ``norm`` is a per-feature standardisation with frozen
training-set statistics (not in the paper, which feeds the raw ALR; added because the ALR values
of a real LM span tens of nats).

The log-probs come from ONE teacher-forced forward over prompt ++ completion (the shared
``tokjax.model.forward`` and ``unembed`` at the T positions that predict the completion), which
equals the per-step distributions of step-by-step decoding (tested against ``tokjax.generate``'s
log-probs). They are the model's raw distributions: the official code reads Hugging Face's
processed scores, where ``min_new_tokens`` sets the eos logit to -inf during the T steps.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from tokjax.decoding.sap import PrefixLM, PrefixLMState
from tokjax.logits import greedy, hparam
from tokjax.losses._stats import TokenStats, reduce_loss
from tokjax.model import Inputs, KVCache, Model, ModelConfig, Taps, embed, forward, unembed
from tokjax.model.attention import Bidirectional, Prefix
from tokjax.model.forward import head_matrix
from tokjax.model.ops import check_int_values

__all__ = [
    "EXTRA", "SUBSET_SEED", "TRAINABLE", "FeaturePrefixLM", "alr_features", "alr_head_matrix",
    "alr_relative_residual", "fit_alr_map", "greedy_completions", "init_inverter", "invert",
    "logprob_sequence", "logprob_sequences", "make_pils_loss", "pils_loss", "project_features",
    "recover_hidden", "teacher_forced_exact", "vocab_subset",
]

_F32 = jnp.float32
#: the extra vocabulary entries beyond D + 1 (PILS README: 100), so K = D + 101
EXTRA = 100
#: the seed of the official random subset (``torch.Generator().manual_seed(666)``); here a numpy draw
SUBSET_SEED = 666
#: the parameter groups the inverter trains ("norm" holds frozen feature statistics)
TRAINABLE = ("lm", "proj")


def _is_int(x) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, bool)


def _check_model(model) -> ModelConfig:
    if not (hasattr(model, "params") and isinstance(getattr(model, "cfg", None), ModelConfig)):
        raise ValueError(f"model must be a tokjax Model (params + cfg), got {type(model).__name__}")
    return model.cfg


# ------------------------------------------------------------------------------------- log-probs
def _ids(x, name: str, V: int) -> np.ndarray:
    a = np.asarray(x)
    if a.ndim != 1 or a.size == 0 or a.dtype.kind not in "iu":
        raise ValueError(f"{name} must be a non-empty 1-D sequence of int token ids, got {a.dtype} shape {a.shape}")
    if a.min() < 0 or a.max() >= V:
        raise ValueError(f"{name} has token ids outside [0, vocab_size={V}): range [{a.min()}, {a.max()}]")
    return a.astype(np.int32)


@functools.partial(jax.jit, static_argnames=("cfg", "T"))
def _teacher_forced(params, cfg: ModelConfig, tokens, prompt_lengths, *, T: int):
    """Returns (log-probs [B, T, V] float32, final-normed hidden [B, T, D]) at the T positions predicting the
    completion of each right-padded row ``prompt ++ completion`` (one forward)."""
    out = forward(params, cfg, Inputs(tokens=tokens), compute_logits=False)
    idx = prompt_lengths[:, None] - 1 + jnp.arange(T)[None, :]
    h = jnp.take_along_axis(out.hidden, idx[..., None], axis=1)
    return jax.nn.log_softmax(unembed(params, cfg, h).astype(_F32), axis=-1), h


def logprob_sequences(model, prompts: Sequence[Sequence[int]], completions, *, hidden: bool = False):
    """Returns float32 [B, T, V]: row b's next-token log-prob vectors at the T steps of ``completions[b]``.

    ``l[b, t] = log_softmax(logits at prompt_b ++ completion_b[:t])``: the distribution the model drew
    completion token t from, for all t from ONE teacher-forced forward per batch (rows right-padded,
    width bucketed to a multiple of 16 so new prompt lengths rarely recompile). ``prompts``: B
    non-empty token-id lists; ``completions`` int [B, T] (T >= 1). With ``hidden``, returns
    (log-probs, final-normed hidden states [B, T, D] at the same positions).

    Raises ValueError: not a Model, empty or out-of-vocabulary ids, B mismatch, too long for max_len.
    """
    cfg = _check_model(model)
    V = cfg.vocab_size
    if isinstance(prompts, (np.ndarray, jax.Array)) and np.ndim(prompts) == 2:
        prompts = [row for row in np.asarray(prompts)]
    if not isinstance(prompts, (list, tuple)) or not prompts:
        raise ValueError(f"prompts must be a non-empty list of token-id lists, got {type(prompts).__name__}")
    rows = [_ids(p, f"prompts[{i}]", V) for i, p in enumerate(prompts)]
    comp = np.asarray(completions)
    if comp.ndim != 2 or comp.shape[0] != len(rows) or comp.shape[1] < 1 or comp.dtype.kind not in "iu":
        raise ValueError(f"completions must be int [B={len(rows)}, T>=1], got {comp.dtype} shape {comp.shape}")
    if comp.min() < 0 or comp.max() >= V:
        raise ValueError(f"completions has token ids outside [0, vocab_size={V}): range [{comp.min()}, {comp.max()}]")
    B, T = comp.shape
    lens = np.asarray([len(p) for p in rows], np.int32)
    need = int(lens.max()) + T - 1
    if need > cfg.max_len:
        raise ValueError(f"the longest prompt ({int(lens.max())} tokens) + T-1={T - 1} completion tokens needs {need} "
                         f"positions, more than the model's max_len={cfg.max_len}")
    width = min(-(-need // 16) * 16, cfg.max_len)
    buf = np.zeros((B, width), np.int32)
    for b, p in enumerate(rows):
        buf[b, :len(p)] = p
        buf[b, len(p):len(p) + T - 1] = comp[b, :T - 1]
    lp, h = _teacher_forced(model.params, cfg, jnp.asarray(buf), jnp.asarray(lens), T=T)
    return (lp, h) if hidden else lp


def logprob_sequence(model, prompt_ids: Sequence[int], completion_ids: Sequence[int], *, hidden: bool = False):
    """Returns float32 [T, V]: the next-token log-prob vectors of the T completion steps (one forward).

    ``l[t] = log p(. | prompt ++ completion[:t])``, t = 0..T-1: what PILS reads from T greedy steps
    (pass the greedy completion, :func:`greedy_completions`). With ``hidden``, also the final-normed
    hidden states [T, D]. Single-row form of :func:`logprob_sequences`.
    """
    V = _check_model(model).vocab_size
    comp = _ids(completion_ids, "completion_ids", V)
    out = logprob_sequences(model, [_ids(prompt_ids, "prompt_ids", V)], comp[None, :], hidden=hidden)
    return (out[0][0], out[1][0]) if hidden else out[0]


def greedy_completions(model, prompts: Sequence[Sequence[int]], T: int, *, eos_id=None, batch_size: int = 32,
                       pad_id: int = 0) -> np.ndarray:
    """Returns int32 [B, T]: each prompt's T greedy tokens through ``tokjax.generate``.

    PILS generates with ``min_new_tokens = T`` [official code]: ``eos_id`` (an id or list) is banned for
    the T steps, so every row has exactly T tokens. Batches of ``batch_size`` rows (the last one padded
    with repeats: one compiled loop).
    """
    from tokjax.decoding.driver import generate

    cfg = _check_model(model)
    if not _is_int(T) or T < 1:
        raise ValueError(f"T (greedy steps) must be an int >= 1, got {T!r}")
    if not _is_int(batch_size) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
    rows = [_ids(p, f"prompts[{i}]", cfg.vocab_size) for i, p in enumerate(prompts)]
    if not rows:
        raise ValueError("prompts must be a non-empty list of token-id lists")
    out = np.zeros((len(rows), T), np.int32)
    for i in range(0, len(rows), batch_size):
        chunk = rows[i:i + batch_size]
        n = len(chunk)
        chunk = chunk + [chunk[-1]] * (min(batch_size, len(rows)) - n)
        g = generate(model, [r.tolist() for r in chunk], max_new_tokens=T, logits=greedy(), eos_id=eos_id,
                     min_new_tokens=T if eos_id is not None else 0, pad_id=pad_id)
        out[i:i + n] = np.stack([c[:T] for c in g.completions()[:n]])
    return out


# ------------------------------------------------------------------------------------- ALR features
def vocab_subset(vocab_size: int, hidden_size: int, *, extra: int = EXTRA, seed: int = SUBSET_SEED) -> np.ndarray:
    """Returns int32 [hidden_size + extra + 1]: PILS's fixed random vocabulary subset (first entry = the ALR base).

    A seeded numpy permutation (the official code's is torch's ``randperm`` with seed 666; the ids
    differ, the construction is the same). Raises ValueError when the subset does not fit the vocabulary.
    """
    for name, v, lo in (("vocab_size", vocab_size, 2), ("hidden_size", hidden_size, 1), ("extra", extra, 0)):
        if not _is_int(v) or v < lo:
            raise ValueError(f"{name} must be an int >= {lo}, got {v!r}")
    K = hidden_size + extra + 1
    if K > vocab_size:
        raise ValueError(f"the subset needs hidden_size + extra + 1 = {K} distinct ids, more than vocab_size="
                         f"{vocab_size}")
    return np.random.default_rng(seed).permutation(vocab_size)[:K].astype(np.int32)


def _check_subset(subset, V: int | None, hidden_size: int | None) -> jax.Array:
    if isinstance(subset, jax.core.Tracer):
        return subset
    s = np.asarray(subset)
    if s.ndim != 1 or s.dtype.kind not in "iu":
        raise ValueError(f"subset must be a 1-D array of int vocabulary ids, got {s.dtype} shape {s.shape}")
    if s.size < 2:
        raise ValueError(f"subset must hold at least 2 ids (a base id and one ratio), got {s.size}")
    if hidden_size is not None and s.size < hidden_size + 1:
        raise ValueError(f"subset has {s.size} ids: recovering a hidden state of size D={hidden_size} needs at least "
                         f"D + 1 = {hidden_size + 1} (PILS uses D + {EXTRA + 1}; vocab_subset builds one)")
    if len(np.unique(s)) != s.size:
        raise ValueError("subset ids must be distinct (a repeated id gives a zero or duplicated log-ratio)")
    if V is not None and (s.min() < 0 or s.max() >= V):
        raise ValueError(f"subset ids must lie in [0, vocab_size={V}), got range [{s.min()}, {s.max()}]")
    return jnp.asarray(s, jnp.int32)


def alr_features(logprobs, subset, *, hidden_size: int | None = None) -> jax.Array:
    """Returns float32 [..., K-1]: PILS's additive log-ratios ``l[..., S_1:] - l[..., S_0]`` (K = len(subset)).

    ``logprobs`` [..., V] log-probabilities (or logits: the log-normaliser cancels). ``subset`` int [K]
    distinct ids (:func:`vocab_subset`). ``hidden_size`` D, when given, requires K >= D + 1 (what
    exact recovery of the hidden state needs). Raises ValueError for a bad subset or a scalar input.
    Jit-compatible (a traced subset is not checked).
    """
    logprobs = jnp.asarray(logprobs)
    if logprobs.ndim < 1:
        raise ValueError(f"logprobs must have a vocabulary axis [..., V], got shape {logprobs.shape}")
    if not jnp.issubdtype(logprobs.dtype, jnp.floating):
        raise ValueError(f"logprobs must be float log-probabilities, got {logprobs.dtype}")
    s = _check_subset(subset, logprobs.shape[-1], hidden_size)
    sel = jnp.take(logprobs.astype(_F32), s, axis=-1)
    return sel[..., 1:] - sel[..., :1]


def alr_head_matrix(model, subset) -> jax.Array:
    """Returns float32 [D, K-1]: ``A = W[:, S_1:] - W[:, S_0]`` with ``a_t = h_t A`` for every step (white-box).

    ``W`` [D, V] is the model's unembedding (logits = h W); models with a logit bias or soft-capping would
    break the linearity, tokjax's ``unembed`` has neither unless asked.
    """
    cfg = _check_model(model)
    s = np.asarray(_check_subset(subset, cfg.vocab_size, None))
    w, layout = head_matrix(model.params, cfg)
    cols = jnp.take(w, jnp.asarray(s), axis=0).T if layout == "vd" else jnp.take(w, jnp.asarray(s), axis=1)
    cols = cols.astype(_F32)
    return cols[:, 1:] - cols[:, :1]


def _check_pairs(features, hidden):
    f, h = jnp.asarray(features), jnp.asarray(hidden)
    if f.ndim != 2 or h.ndim != 2 or f.shape[0] != h.shape[0]:
        raise ValueError(f"features and hidden must be [N, F] and [N, D] with the same N, got {f.shape} and {h.shape}")
    if not (jnp.issubdtype(f.dtype, jnp.floating) and jnp.issubdtype(h.dtype, jnp.floating)):
        raise ValueError(f"features and hidden must be float arrays, got {f.dtype} and {h.dtype}")
    return f, h


def fit_alr_map(features, hidden) -> jax.Array:
    """Returns M [F, D]: the least-squares linear map ``hidden ~ features @ M`` from N (a_t, h_t) pairs.

    Black-box check of PILS's premise (P4): the ALR features are a linear image of the final-normed hidden
    state, so a linear map fitted on some steps recovers the hidden state of any other step exactly when
    F = K-1 >= D (:func:`alr_relative_residual` on held-out pairs). Computed in the inputs' dtype
    (float64 inputs under ``jax.enable_x64(True)`` avoid float32 round-off on ill-conditioned
    hidden states). Raises ValueError for mismatched shapes or N < F.
    """
    f, h = _check_pairs(features, hidden)
    if f.shape[0] < f.shape[1]:
        raise ValueError(f"fit_alr_map needs at least as many (feature, hidden) pairs as features: N={f.shape[0]} < "
                         f"F={f.shape[1]}")
    dt = jnp.result_type(f.dtype, h.dtype)
    return jnp.linalg.lstsq(f.astype(dt), h.astype(dt))[0]


def alr_relative_residual(features, hidden, linear_map) -> jax.Array:
    """Returns the scalar ``||features @ M - hidden||_F / ||hidden||_F`` (0 = exact linear recovery)."""
    f, h = _check_pairs(features, hidden)
    m = jnp.asarray(linear_map)
    if m.shape != (f.shape[1], h.shape[1]):
        raise ValueError(f"linear_map must be [F, D]={(f.shape[1], h.shape[1])}, got {m.shape}")
    dt = jnp.result_type(f.dtype, h.dtype, m.dtype)
    err = f.astype(dt) @ m.astype(dt) - h.astype(dt)
    return jnp.linalg.norm(err) / jnp.maximum(jnp.linalg.norm(h.astype(dt)), jnp.finfo(dt).tiny)


def recover_hidden(features, alr_matrix) -> jax.Array:
    """Returns [N, D]: the least-squares hidden states ``argmin_h ||h A - a||`` of features [N, K-1] given
    ``A`` [D, K-1] (:func:`alr_head_matrix`); exact when A has rank D (K-1 >= D generic ids)."""
    f = jnp.asarray(features)
    a = jnp.asarray(alr_matrix)
    if f.ndim != 2 or a.ndim != 2 or a.shape[1] != f.shape[1]:
        raise ValueError(f"features [N, K-1] and alr_matrix [D, K-1] must share K-1, got {f.shape} and {a.shape}")
    dt = jnp.result_type(f.dtype, a.dtype)
    return jnp.linalg.lstsq(a.T.astype(dt), f.T.astype(dt))[0].T


# ------------------------------------------------------------------------------------- inverter
def init_inverter(cfg: ModelConfig, key: jax.Array, feature_dim: int, *, bottleneck: int | None = None,
                  feature_mean=None, feature_std=None) -> dict:
    """Returns the inverter's params ``{"lm", "proj", "norm"}``: a tokjax prefix LM and PILS's feature projection.

    ``proj``: ``u = W2 GELU(Dropout(W1 x + b1)) + b2``, W1 [F, bottleneck], W2 [bottleneck, d_model]
    [official code: ``embedding_transform``; bottleneck default d_model]. ``norm``: frozen per-feature
    ``mean`` / ``std`` (default 0 / 1; pass training-set statistics) applied before W1. Train
    ``TRAINABLE`` only.
    """
    if not isinstance(cfg, ModelConfig):
        raise ValueError(f"cfg must be a ModelConfig, got {type(cfg).__name__}")
    if not _is_int(feature_dim) or feature_dim < 1:
        raise ValueError(f"feature_dim must be an int >= 1, got {feature_dim!r}")
    bn = cfg.d_model if bottleneck is None else bottleneck
    if not _is_int(bn) or bn < 1:
        raise ValueError(f"bottleneck must be an int >= 1, got {bottleneck!r}")
    k_lm, k1, k2 = jax.random.split(key, 3)
    from tokjax.model import init_params

    def dense(k, n_in, n_out):
        return jax.random.normal(k, (n_in, n_out), _F32) * (1.0 / np.sqrt(n_in))

    mean = jnp.zeros((feature_dim,), _F32) if feature_mean is None else jnp.asarray(feature_mean, _F32)
    std = jnp.ones((feature_dim,), _F32) if feature_std is None else jnp.asarray(feature_std, _F32)
    if mean.shape != (feature_dim,) or std.shape != (feature_dim,):
        raise ValueError(f"feature_mean / feature_std must be [{feature_dim}], got {mean.shape} / {std.shape}")
    if not bool(jnp.all(std > 0)):
        raise ValueError("feature_std must be > 0 everywhere (add a floor to constant features)")
    return {
        "lm": init_params(cfg, k_lm),
        "proj": {"w1": dense(k1, feature_dim, bn), "b1": jnp.zeros((bn,), _F32),
                 "w2": dense(k2, bn, cfg.d_model), "b2": jnp.zeros((cfg.d_model,), _F32)},
        "norm": {"mean": mean, "std": std},
    }


def _check_inverter(params) -> None:
    if not (isinstance(params, dict) and {"lm", "proj", "norm"} <= set(params)):
        got = sorted(params) if isinstance(params, dict) else type(params).__name__
        raise ValueError(f"inverter params must be init_inverter's dict with 'lm', 'proj', 'norm', got {got}")


def project_features(params, features, *, rng: jax.Array | None = None, dropout=0.0) -> jax.Array:
    """Returns float32 [B, T, d_model]: the inverter's input vectors ``u_t`` of features [B, T, F].

    ``u = W2 GELU(Dropout(W1 ((a - mean) / std) + b1)) + b2``; dropout (a runtime value in [0, 1)) is
    applied only when ``rng`` is given (training).
    """
    _check_inverter(params)
    f = jnp.asarray(features)
    F = params["proj"]["w1"].shape[0]
    if f.ndim != 3 or f.shape[-1] != F:
        raise ValueError(f"features must be float [B, T, F={F}], got shape {f.shape}")
    x = (f.astype(_F32) - params["norm"]["mean"]) / params["norm"]["std"]
    z = x @ params["proj"]["w1"] + params["proj"]["b1"]
    if rng is not None:
        p = jnp.asarray(dropout, _F32)
        keep = jax.random.uniform(rng, z.shape) >= p
        z = jnp.where(keep, z / jnp.maximum(1.0 - p, 1e-6), 0.0)
    return jax.nn.gelu(z) @ params["proj"]["w2"] + params["proj"]["b2"]


def _check_batch(batch, cfg: ModelConfig):
    if not isinstance(batch, dict) or not {"features", "tokens"} <= set(batch):
        got = sorted(batch) if isinstance(batch, dict) else type(batch).__name__
        raise ValueError(f"the pils loss needs a dict batch with 'features' float [B, T, F] and 'tokens' int [B, L] "
                         f"([bos] prompt [eos] pad...), optionally 'lengths' [B]; got {got}")
    f = jnp.asarray(batch["features"])
    tokens = jnp.asarray(batch["tokens"])
    if f.ndim != 3 or tokens.ndim != 2 or f.shape[0] != tokens.shape[0] or tokens.shape[1] < 2:
        raise ValueError(f"features must be [B, T, F] and tokens [B, L>=2] with the same B, got {f.shape} and "
                         f"{tokens.shape}")
    if not jnp.issubdtype(tokens.dtype, jnp.integer):
        raise ValueError(f"tokens must be int token ids, got {tokens.dtype}")
    B, L = tokens.shape
    T = f.shape[1]
    if T + L - 1 > cfg.max_len:
        raise ValueError(f"T={T} feature positions + {L - 1} token positions exceed the inverter's "
                         f"max_len={cfg.max_len}")
    check_int_values(tokens, "tokens", 0, cfg.vocab_size)
    lengths = jnp.asarray(batch.get("lengths", jnp.full((B,), L, jnp.int32)))
    if lengths.shape != (B,):
        raise ValueError(f"lengths must be int [B={B}], got shape {lengths.shape}")
    check_int_values(lengths, "lengths (bos + prompt + eos tokens per row)", 2, L, hi_closed=True)
    return f, tokens, lengths


def _inverter_logits(params, cfg, features, tokens, *, rng=None, dropout=0.0):
    """Returns float32 logits [B, L-1, V]: position j predicts tokens[:, j+1] given the T feature vectors."""
    u = project_features(params, features, rng=rng, dropout=dropout).astype(cfg.dtype)
    x = jnp.concatenate([u, embed(params["lm"], cfg, tokens[:, :-1])], axis=1)
    B, T = u.shape[:2]
    out = forward(params["lm"], cfg, Inputs(embeds=x), mask=Prefix(jnp.full((B,), T, jnp.int32)))
    return out.logits[:, T:].astype(_F32)


def pils_loss(params, cfg: ModelConfig, batch: dict, rng: jax.Array | None = None, *, dropout=0.0,
              reduction: str = "token_mean") -> tuple[jax.Array, dict]:
    """Returns (loss, metrics): the inverter's NLL of the hidden prompts given their log-prob features (P4).

    ``loss = reduce(-log p(x_i | u_1..u_T, x_<i))`` over ``tokens[:, 1:]`` before each row's ``lengths``
    (``tokens`` = [bos] prompt [eos] pad...; default length L), one forward of ``params["lm"]`` on
    ``Inputs(embeds=[u_1..u_T, embed(tokens[:, :-1])])`` under ``Prefix(T)``. ``dropout`` (runtime;
    ``batch["pils_dropout"]`` overrides it) acts in the projection when ``rng`` is given. Metrics:
    ``nll``, ``accuracy`` (argmax == target), ``exact`` (share of rows whose every target is the argmax:
    greedy decoding would reproduce the prompt exactly), ``target_tokens``.
    """
    _check_inverter(params)
    f, tokens, lengths = _check_batch(batch, cfg)
    p = batch.get("pils_dropout", dropout)
    logits = _inverter_logits(params, cfg, f, tokens, rng=rng, dropout=p)
    labels = tokens[:, 1:]
    logp = jnp.take_along_axis(jax.nn.log_softmax(logits, -1), labels[..., None], axis=-1)[..., 0]
    mask = jnp.arange(labels.shape[1])[None, :] + 1 < lengths[:, None]
    stats = TokenStats.create(logp, mask)
    loss = reduce_loss(stats, reduction, normalizer=batch.get("normalizer"))
    hit = jnp.argmax(logits, -1) == labels
    n = jnp.maximum(mask.sum(), 1).astype(_F32)
    metrics = {
        "nll": jax.lax.stop_gradient(-jnp.sum(jnp.where(mask, logp, 0.0)) / n),
        "accuracy": jnp.sum(mask & hit) / n,
        "exact": jnp.mean(jnp.all(hit | ~mask, axis=1).astype(_F32)),
        "target_tokens": mask.sum().astype(_F32),
    }
    return loss, metrics


def make_pils_loss(*, dropout: float = 0.1, reduction: str = "token_mean"):
    """Returns the train loss ``(params, cfg, batch, rng) -> (loss, metrics)`` registered as ``pils``.

    ``dropout`` in [0, 1) (T5's rate, 0.1, in the official projection); ``rng`` is the train loop's key.
    """
    if not isinstance(dropout, (int, float)) or isinstance(dropout, bool) or not 0.0 <= float(dropout) < 1.0:
        raise ValueError(f"dropout must be a number in [0, 1), got {dropout!r}")

    def loss_fn(params, cfg, batch, rng=None):
        """PILS inverter NLL (P4): the hidden prompt given its log-prob feature vectors."""
        return pils_loss(params, cfg, batch, rng, dropout=float(dropout), reduction=reduction)

    return loss_fn


@functools.partial(jax.jit, static_argnames=("cfg",))
def _exact_rows(params, cfg, features, tokens, lengths):
    logits = _inverter_logits(params, cfg, features, tokens)
    labels = tokens[:, 1:]
    mask = jnp.arange(labels.shape[1])[None, :] + 1 < lengths[:, None]
    return jnp.all((jnp.argmax(logits, -1) == labels) | ~mask, axis=1)


def teacher_forced_exact(params, cfg: ModelConfig, batch: dict) -> np.ndarray:
    """Returns bool [B]: whether greedy inversion would write each row's prompt exactly (one forward).

    Greedy decoding reproduces ``[bos] x [eos]`` iff every target is the argmax given the true prefix,
    so this equals :func:`invert`'s exact match (tested) at the cost of one teacher-forced forward.
    Assumes no logit ties (argmax picks the lowest id, as greedy decoding does).
    """
    _check_inverter(params)
    f, tokens, lengths = _check_batch(batch, cfg)
    return np.asarray(_exact_rows(params, cfg, f, tokens.astype(jnp.int32), lengths.astype(jnp.int32)))


@dataclasses.dataclass(frozen=True)
class FeaturePrefixLM(PrefixLM):
    """Prefix-LM decoding whose bidirectional prefix is given vectors (``embeds`` [B, T, D]), not tokens.

    The generate prompt of row b is T placeholder ids followed by the start token (prompt length
    T + 1, ``causal_tail=1``). ``init`` encodes ``embeds`` under a bidirectional mask (= ``Prefix(T)``
    restricted to the prefix) into the strategy's KV cache and drops the driver's causal prefill;
    ``step`` is :class:`~tokjax.decoding.sap.PrefixLM`'s: the start token and every generated token
    attend to the whole prefix and causally to each other, exactly as :func:`pils_loss` trains.
    ``embeds`` is a runtime field (not part of the jit identity: new features do not recompile).
    """

    embeds: Any = hparam(None)

    def init(self, params, cfg: ModelConfig, state) -> PrefixLMState:
        if self.embeds is None:
            raise ValueError("FeaturePrefixLM needs embeds= [B, T, d_model] (project_features of the features)")
        u = jnp.asarray(self.embeds)
        B, S = state.tokens.shape
        if u.ndim != 3 or u.shape[0] != B or u.shape[2] != cfg.d_model:
            raise ValueError(f"embeds must be [B={B}, T, d_model={cfg.d_model}], got {u.shape}")
        T = u.shape[1]
        pl = np.asarray(state.prompt_lengths)
        if np.any(pl != T + self.causal_tail):
            raise ValueError(f"each generate prompt must be T={T} placeholders + {self.causal_tail} start token(s) "
                             f"(length {T + self.causal_tail}), got lengths {sorted(set(pl.tolist()))}")
        if self.causal_tail != 1:
            raise ValueError("FeaturePrefixLM supports causal_tail=1 (one start token) only")
        capacity = state.cache.k[0].shape[2]
        out = forward(params, cfg, Inputs(embeds=u.astype(cfg.dtype)), compute_logits=False,
                      taps=Taps(layers="all", sites=("keys", "values")), mask=Bidirectional())
        empty = KVCache.init(cfg, B, capacity)

        def lay(new, buf):  # [B, T, KV, hd] -> head-major [B, KV, capacity, hd]
            return jax.lax.dynamic_update_slice(buf, jnp.swapaxes(new, 1, 2).astype(buf.dtype), (0, 0, 0, 0))

        cache = empty.replace(k=tuple(lay(out.taps["keys"][i], b) for i, b in enumerate(empty.k)),
                              v=tuple(lay(out.taps["values"][i], b) for i, b in enumerate(empty.v)))
        return PrefixLMState(cache=cache.set_lengths(jnp.full((B,), T, jnp.int32)))


def invert(params, cfg: ModelConfig, features, *, bos_id: int, eos_id: int, max_new_tokens: int,
           pad_id: int = 0) -> list[np.ndarray]:
    """Returns each row's greedily decoded prompt (int32 ids, without bos and the closing eos).

    One ``tokjax.generate`` call with :class:`FeaturePrefixLM`: the projected features [B, T, F] are
    the bidirectional prefix, ``bos_id`` the start token, decoding stops at ``eos_id`` or after
    ``max_new_tokens``. Raises ValueError for bad ids, shapes or a budget beyond ``cfg.max_len``.
    """
    from tokjax.decoding.driver import generate

    _check_inverter(params)
    if not isinstance(cfg, ModelConfig):
        raise ValueError(f"cfg must be a ModelConfig, got {type(cfg).__name__}")
    for name, v in (("bos_id", bos_id), ("eos_id", eos_id)):
        if not _is_int(v) or not 0 <= v < cfg.vocab_size:
            raise ValueError(f"{name} must be a token id in [0, {cfg.vocab_size}), got {v!r}")
    if not _is_int(max_new_tokens) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be an int >= 1, got {max_new_tokens!r}")
    u = project_features(params, features)
    B, T = u.shape[:2]
    if T + 1 + max_new_tokens > cfg.max_len:
        raise ValueError(f"T={T} features + start token + max_new_tokens={max_new_tokens} exceed the inverter's "
                         f"max_len={cfg.max_len}")
    prompts = np.full((B, T + 1), int(bos_id), np.int32)
    g = generate(Model(params["lm"], cfg), prompts, max_new_tokens=int(max_new_tokens), logits=greedy(),
                 strategy=FeaturePrefixLM(causal_tail=1, embeds=u), eos_id=int(eos_id), pad_id=pad_id)
    outs = []
    for c in g.completions():
        c = np.asarray(c, np.int32)
        hit = np.flatnonzero(c == eos_id)
        outs.append(c[:hit[0]] if hit.size else c)
    return outs


def _factory(dropout, reduction):
    return make_pils_loss(dropout=float(dropout), reduction=reduction)


def _register() -> None:
    from tokjax.losses.registry import register_loss

    register_loss("pils", _factory, {"dropout": 0.1, "reduction": "token_mean"},
                  doc="PILS inverter (P4): NLL of a hidden prompt given its log-prob (ALR) feature vectors, read as "
                      "Inputs(embeds=...) under Prefix(T) by a tokjax prefix LM; params from init_inverter",
                  overwrite=True)


_register()
