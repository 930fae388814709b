"""P26 Zero-Shot Tokenizer Transfer (ZeTT; Minixhofer, Ponti, Vulic; NeurIPS 2024).

A hypernetwork H predicts the embeddings of any new tokenizer's tokens for a frozen language model.
Each new token t is written as its decomposition into old tokens, T_old(t) = (s_1 .. s_n) (the
bytes of t re-tokenized by the old tokenizer, ZeTT's "surface form matrix"); the parts are embedded
with the frozen old embeddings and read by a small transformer encoder:

    x_i   = P_in(E_old[s_i]) + pos_i                     (Dense + ProjectorBlock)
    h     = Encoder(x_1 .. x_n)   (bidirectional, padding masked)
    e_in(t) = P_out(h_1)   [ e_out(t) = P_out'(h_1) for untied models ]     (pool position 0)

Training samples a fresh tokenizer per batch (here: a precomputed pool of BPE tokenizers of varying
vocabulary sizes trained on corpus samples), tokenizes the batch with it, predicts the embeddings of
its whole vocabulary, runs the frozen LM with them (``forward(..., embedding=E, head=E.T)``) and
minimises the next-token cross-entropy plus ``lexical_weight`` x MSE to the old embedding for tokens
that are a single old token (ZeTT's auxiliary loss). ``transfer`` then runs H once over a new
vocabulary and returns an ordinary model.

Deviations from the official code (bminixhofer/zett), which a CPU-sized check needs: BPE instead
of noisy UnigramLM samples; pre-LayerNorm encoder blocks instead of RoBERTa's post-LN; with
``HypernetConfig(residual=True)`` (the default) the input embedding is predicted as a correction
added to the mean of the parts' embeddings (FVT), with the last layer zero-initialised, so an
untrained hypernet equals FVT -- ZeTT instead spends its first 10k "identity steps" regressing the
source embeddings, which a few CPU minutes cannot afford (``residual=False`` is the plain ZeTT
head; its optional warm-up regresses the mean-of-parts embeddings, which equal the source
embeddings for single-token decompositions).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from tokjax.model import Model, ModelConfig, forward
from tokjax.tokenizers._vocab_transfer import (
    Decomposition,
    decompose_vocab,
    eval_windows,
    mean_of_parts,
    special_counterparts,
    with_vocab,
)

__all__ = [
    "HypernetConfig",
    "Hypernet",
    "init_hypernet",
    "hypernet_embeddings",
    "zett_loss",
    "TokenizerPool",
    "make_tokenizer_pool",
    "train_hypernet",
    "transfer",
    "save_hypernet",
    "load_hypernet",
    "pretrained_hypernet",
]

_NEG = -1e9


@dataclasses.dataclass(frozen=True)
class HypernetConfig:
    """Returns nothing; the hypernetwork's sizes. ``d_model`` is the LM's embedding width (the output)."""

    d_model: int
    hidden: int = 64
    n_layers: int = 2
    n_heads: int = 4
    d_ff: int = 128
    maxlen: int = 6
    separate_out: bool = False
    predict_bias: bool = False
    residual: bool = True

    def __post_init__(self):
        for name in ("d_model", "hidden", "n_layers", "n_heads", "d_ff", "maxlen"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"HypernetConfig.{name} must be a positive int, got {v!r}")
        if self.hidden % self.n_heads:
            raise ValueError(f"hidden={self.hidden} must be divisible by n_heads={self.n_heads}")


@struct.dataclass
class Hypernet:
    """Returns nothing; the hypernetwork's parameters with its static config."""

    params: dict
    cfg: HypernetConfig = struct.field(pytree_node=False)


def _dense(key, n_in, n_out, scale=None):
    scale = 1.0 / math.sqrt(n_in) if scale is None else scale
    return {"w": scale * jax.random.normal(key, (n_in, n_out), jnp.float32), "b": jnp.zeros((n_out,), jnp.float32)}


def _ln(n):
    return {"scale": jnp.ones((n,), jnp.float32), "bias": jnp.zeros((n,), jnp.float32)}


def _projector(key, dim, inner):
    k1, k2 = jax.random.split(key)
    return {"dense1": _dense(k1, dim, inner), "dense2": _dense(k2, inner, dim), "ln": _ln(dim)}


def init_hypernet(cfg: HypernetConfig, key: jax.Array) -> Hypernet:
    """Returns a freshly initialised hypernetwork for ``cfg``."""
    if not isinstance(cfg, HypernetConfig):
        raise ValueError(f"init_hypernet needs a HypernetConfig, got {type(cfg).__name__}")
    ks = iter(jax.random.split(key, 8 + 4 * cfg.n_layers))
    H, F = cfg.hidden, cfg.d_ff
    layers = []
    for _ in range(cfg.n_layers):
        layers.append({
            "ln1": _ln(H), "qkv": _dense(next(ks), H, 3 * H), "out": _dense(next(ks), H, H),
            "ln2": _ln(H), "up": _dense(next(ks), H, F), "down": _dense(next(ks), F, H),
        })
    params = {
        "in_dense": _dense(next(ks), cfg.d_model, H),
        "in_block": _projector(next(ks), H, F),
        "pos": 0.02 * jax.random.normal(next(ks), (cfg.maxlen, H), jnp.float32),
        "layers": layers,
        "final_ln": _ln(H),
        "out_block": _projector(next(ks), H, F),
        "out_dense": _dense(next(ks), H, cfg.d_model, scale=0.0 if cfg.residual else None),
    }
    if cfg.separate_out:
        params["out_block2"] = _projector(next(ks), H, F)
        params["out_dense2"] = _dense(next(ks), H, cfg.d_model)
    if cfg.predict_bias:
        params["bias_dense"] = _dense(next(ks), H, 1)
    return Hypernet(params=params, cfg=cfg)


def _apply_dense(p, x):
    return x @ p["w"] + p["b"]


def _layer_norm(p, x, eps=1e-5):
    mu = jnp.mean(x, -1, keepdims=True)
    var = jnp.mean(jnp.square(x - mu), -1, keepdims=True)
    return (x - mu) * jax.lax.rsqrt(var + eps) * p["scale"] + p["bias"]


def _apply_projector(p, x):
    h = jax.nn.gelu(_apply_dense(p["dense2"], jax.nn.gelu(_apply_dense(p["dense1"], x))))
    return _layer_norm(p["ln"], h + x)


def _encoder_layer(p, x, key_mask, n_heads):
    N, L, H = x.shape
    h = _layer_norm(p["ln1"], x)
    q, k, v = jnp.split(_apply_dense(p["qkv"], h), 3, axis=-1)
    split = lambda t: t.reshape(N, L, n_heads, H // n_heads)
    q, k, v = split(q), split(k), split(v)
    scores = jnp.einsum("nqhd,nkhd->nhqk", q, k) / math.sqrt(H // n_heads)
    scores = jnp.where(key_mask[:, None, None, :], scores, _NEG)
    a = jnp.einsum("nhqk,nkhd->nqhd", jax.nn.softmax(scores, axis=-1), v).reshape(N, L, H)
    x = x + _apply_dense(p["out"], a)
    h = _layer_norm(p["ln2"], x)
    return x + _apply_dense(p["down"], jax.nn.gelu(_apply_dense(p["up"], h)))


def hypernet_embeddings(
    hypernet: Hypernet, source_embeddings: jax.Array, ids: jax.Array, lengths: jax.Array
) -> tuple[jax.Array, jax.Array | None, jax.Array | None]:
    """Returns (e_in [N, D], e_out [N, D] or None, bias [N] or None) predicted from decompositions ``ids`` [N, L].

    ``ids`` are old token ids (-1 = padding past ``lengths``); ``source_embeddings`` [V_old, D] is
    the frozen old embedding table. Rows of length 0 read a single position (their output is
    meaningless; :func:`transfer` replaces them). Pure and jit-compatible.
    """
    p, cfg = hypernet.params, hypernet.cfg
    if ids.ndim != 2 or ids.shape[1] != cfg.maxlen:
        raise ValueError(f"ids must be [N, maxlen={cfg.maxlen}], got {ids.shape}")
    if source_embeddings.ndim != 2 or source_embeddings.shape[1] != cfg.d_model:
        raise ValueError(f"source_embeddings must be [V_old, d_model={cfg.d_model}], got {source_embeddings.shape}")
    slot = jnp.arange(cfg.maxlen)[None, :]
    key_mask = slot < jnp.maximum(lengths, 1)[:, None]
    src = jnp.take(source_embeddings.astype(jnp.float32), jnp.clip(ids, 0, source_embeddings.shape[0] - 1), axis=0)
    x = _apply_projector(p["in_block"], _apply_dense(p["in_dense"], src)) + p["pos"][None]
    for layer in p["layers"]:
        x = _encoder_layer(layer, x, key_mask, cfg.n_heads)
    pooled = _layer_norm(p["final_ln"], x)[:, 0]
    e_in = _apply_dense(p["out_dense"], _apply_projector(p["out_block"], pooled))
    if cfg.residual:  # tokjax deviation: predict a correction to the mean of the parts (FVT)
        e_in = e_in + mean_of_parts(source_embeddings, ids, lengths).astype(jnp.float32)
    e_out = _apply_dense(p["out_dense2"], _apply_projector(p["out_block2"], pooled)) if cfg.separate_out else None
    bias = _apply_dense(p["bias_dense"], pooled)[:, 0] if cfg.predict_bias else None
    return e_in, e_out, bias


# ------------------------------------------------------------------------------- training
def _vocab_tables(hypernet, source, ids, lengths, force, valid):
    """Returns (embedding, head, logit_bias) for a whole vocabulary; ``force`` >= 0 rows copy the source."""
    e_in, e_out, bias = hypernet_embeddings(hypernet, source, ids, lengths)
    src = jnp.take(source.astype(jnp.float32), jnp.maximum(force, 0), axis=0)
    forced = (force >= 0)[:, None]
    e_in = jnp.where(forced, src, e_in)
    head = None if e_out is None else jnp.where(forced, src, e_out).T
    logit_bias = jnp.where(valid, 0.0, _NEG)
    if bias is not None:
        logit_bias = logit_bias + jnp.where(force >= 0, 0.0, bias)
    return e_in, head, logit_bias


def zett_loss(
    hparams: dict,
    hypernet: Hypernet,
    lm_params: Any,
    lm_cfg: ModelConfig,
    batch: dict,
    lexical_weight: jax.Array,
) -> tuple[jax.Array, dict]:
    """Returns (loss, metrics) of ZeTT's objective for one batch under one sampled tokenizer.

    loss = CE(frozen LM with E = H(decompositions)) + lexical_weight * MSE(E[t], E_old[s]) over tokens t
    that are a single old token s. ``batch``: ``tokens`` [B, T+1], ``mask`` [B, T], ``ids``/``lengths``
    (decompositions of the sampled vocabulary, padded to a fixed V_max), ``force`` [V_max] (old id
    to copy for special tokens, else -1), ``valid`` [V_max] bool, ``single`` [V_max] (old id for
    single-token decompositions, else -1). ``hparams`` replaces ``hypernet.params`` (the argument
    that is differentiated).
    """
    hn = hypernet.replace(params=hparams)
    source = lm_params["embed"]
    emb, head, bias = _vocab_tables(hn, source, batch["ids"], batch["lengths"], batch["force"], batch["valid"])
    if head is None:
        head = emb.T
    if not lm_cfg.tied_embeddings and not hn.cfg.separate_out:
        raise ValueError("the LM has an untied lm_head: use a HypernetConfig(separate_out=True)")
    tokens = batch["tokens"]
    logits = forward(lm_params, lm_cfg, tokens[:, :-1], embedding=emb, head=head, logit_bias=bias).logits
    logp = jax.nn.log_softmax(logits, axis=-1)
    nll = -jnp.take_along_axis(logp, tokens[:, 1:, None], axis=-1)[..., 0]
    mask = batch["mask"]
    ce = jnp.sum(nll * mask) / jnp.maximum(jnp.sum(mask), 1.0)
    single = batch["single"]
    target = jnp.take(source.astype(jnp.float32), jnp.maximum(single, 0), axis=0)
    w = ((single >= 0) & (batch["force"] < 0)).astype(jnp.float32)
    mse = jnp.sum(w[:, None] * jnp.square(emb - target)) / jnp.maximum(jnp.sum(w) * emb.shape[1], 1.0)
    return ce + lexical_weight * mse, {"ce": ce, "lexical_mse": mse}


@dataclasses.dataclass(frozen=True)
class TokenizerPool:
    """Returns nothing; precomputed tokenizers for ZeTT training, all padded to ``v_max`` rows.

    ``ids`` [P, V_max, L], ``lengths``/``force``/``single`` [P, V_max], ``valid`` bool [P, V_max],
    ``windows``: per tokenizer (tokens [N, T+1], mask [N, T]); ``vocab_sizes``.
    """

    ids: np.ndarray
    lengths: np.ndarray
    force: np.ndarray
    single: np.ndarray
    valid: np.ndarray
    windows: list
    vocab_sizes: list

    def __len__(self) -> int:
        return len(self.vocab_sizes)


def _decomp_rows(new_tok, old_tok, maxlen: int, v_max: int):
    d: Decomposition = decompose_vocab(new_tok, old_tok, maxlen)
    V = d.ids.shape[0]
    if V > v_max:
        raise ValueError(f"tokenizer has {V} ids, more than v_max={v_max}")
    specials = special_counterparts(new_tok, old_tok)
    force = np.full((v_max,), -1, np.int32)
    for n, o in specials.items():
        force[n] = o
    ids = np.full((v_max, maxlen), -1, np.int32)
    ids[:V] = d.ids
    lengths = np.zeros((v_max,), np.int32)
    lengths[:V] = d.lengths
    single = np.full((v_max,), -1, np.int32)
    one = (d.lengths == 1) & ~d.truncated
    single[:V] = np.where(one, d.ids[:, 0], -1)
    valid = np.zeros((v_max,), bool)
    used = np.array([bool(b) for b in new_tok.id_to_bytes]) | np.isin(np.arange(V), list(specials))
    valid[:V] = used
    return ids, lengths, force, single, valid


def make_tokenizer_pool(
    old_tok: Any,
    docs: Sequence[str],
    vocab_sizes: Sequence[int],
    *,
    maxlen: int = 6,
    seq_len: int = 63,
    sample_fraction: float = 0.5,
    seed: int = 0,
) -> TokenizerPool:
    """Returns a pool of BPE tokenizers, one per entry of ``vocab_sizes``, each trained on a random
    ``sample_fraction`` of ``docs``, with their decompositions and tokenized training windows."""
    from tokjax.tokenizers import BPETokenizer

    if not vocab_sizes:
        raise ValueError("vocab_sizes must not be empty")
    if not 0 < sample_fraction <= 1:
        raise ValueError(f"sample_fraction must be in (0, 1], got {sample_fraction}")
    rng = np.random.default_rng(seed)
    v_max = int(max(vocab_sizes))
    rows, windows, sizes = [], [], []
    for v in vocab_sizes:
        pick = rng.random(len(docs)) < sample_fraction
        sample = [d for d, p in zip(docs, pick) if p] or list(docs)
        tok = BPETokenizer.train(sample, int(v))
        rows.append(_decomp_rows(tok, old_tok, maxlen, v_max))
        w = eval_windows(tok, docs, seq_len)
        windows.append((w.tokens, w.mask))
        sizes.append(tok.vocab_size)
    ids, lengths, force, single, valid = (np.stack(x) for x in zip(*rows))
    return TokenizerPool(ids, lengths, force, single, valid, windows, sizes)


def train_hypernet(
    model: Model,
    pool: TokenizerPool,
    hcfg: HypernetConfig | None = None,
    *,
    steps: int = 300,
    warmup_steps: int = 100,
    batch_size: int = 8,
    lr: float = 1e-3,
    lexical_weight: float = 0.5,
    vocab_sample: int = 512,
    seed: int = 0,
    hypernet: Hypernet | None = None,
    progress: bool = False,
) -> tuple[Hypernet, dict]:
    """Returns (trained Hypernet, history) for the frozen ``model`` on a tokenizer ``pool``.

    ``warmup_steps`` regress the mean-of-parts embeddings of pool tokens (MSE, no LM run); the
    ``steps`` after that sample one pool tokenizer and one batch of its windows per step and
    minimise :func:`zett_loss`. As in ZeTT (``n_token_subsample``), each step predicts only
    ``vocab_sample`` rows -- the tokens present in the batch plus random negatives -- and the
    softmax runs over those rows. Adam with a cosine schedule; the LM's parameters never change.
    """
    if batch_size * pool.windows[0][0].shape[1] > vocab_sample:
        raise ValueError(
            f"vocab_sample={vocab_sample} must be at least batch_size x (seq_len + 1) = "
            f"{batch_size * pool.windows[0][0].shape[1]} so every token of a batch has a row"
        )
    import optax

    if hcfg is None:
        hcfg = HypernetConfig(d_model=model.cfg.d_model, maxlen=pool.ids.shape[2])
    if hcfg.maxlen != pool.ids.shape[2]:
        raise ValueError(f"hypernet maxlen {hcfg.maxlen} differs from the pool's {pool.ids.shape[2]}")
    hn = hypernet if hypernet is not None else init_hypernet(hcfg, jax.random.key(seed))
    total = warmup_steps + steps
    sched = optax.warmup_cosine_decay_schedule(0.0, lr, max(1, min(20, total // 10)), max(total, 2), lr * 0.1)
    opt = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(sched))
    state = opt.init(hn.params)
    lm_params, lm_cfg = model.params, model.cfg
    source = lm_params["embed"]

    @jax.jit
    def warm_step(hparams, state, ids, lengths):
        target = jax.lax.stop_gradient(mean_of_parts(source, ids, lengths))

        def loss_fn(hp):
            e, _, _ = hypernet_embeddings(hn.replace(params=hp), source, ids, lengths)
            w = (lengths > 0).astype(jnp.float32)[:, None]
            return jnp.sum(w * jnp.square(e - target)) / jnp.maximum(jnp.sum(w) * e.shape[1], 1.0)

        loss, g = jax.value_and_grad(loss_fn)(hparams)
        u, state = opt.update(g, state, hparams)
        return optax.apply_updates(hparams, u), state, loss

    @jax.jit
    def step(hparams, state, batch, lw):
        (loss, m), g = jax.value_and_grad(
            lambda hp: zett_loss(hp, hn, lm_params, lm_cfg, batch, lw), has_aux=True)(hparams)
        u, state = opt.update(g, state, hparams)
        return optax.apply_updates(hparams, u), state, loss, m

    rng = np.random.default_rng(seed)
    hparams = hn.params
    history = {"warmup": [], "train": []}
    t0 = time.perf_counter()
    for s in range(warmup_steps):
        p = int(rng.integers(len(pool)))
        rows = _sample_rows(rng, pool.valid[p], np.zeros((0,), np.int64), vocab_sample)
        hparams, state, loss = warm_step(hparams, state, jnp.asarray(pool.ids[p][rows]),
                                         jnp.asarray(pool.lengths[p][rows]))
        if s % 25 == 0 or s == warmup_steps - 1:
            history["warmup"].append((s, float(loss)))
    for s in range(steps):
        p = int(rng.integers(len(pool)))
        tokens, mask = pool.windows[p]
        pick = rng.integers(0, tokens.shape[0], size=batch_size)
        toks = tokens[pick]
        rows = _sample_rows(rng, pool.valid[p], np.unique(toks), vocab_sample)
        lut = np.zeros((pool.valid.shape[1],), np.int32)
        lut[rows] = np.arange(rows.size, dtype=np.int32)
        batch = {
            "tokens": jnp.asarray(lut[toks]), "mask": jnp.asarray(mask[pick]),
            "ids": jnp.asarray(pool.ids[p][rows]), "lengths": jnp.asarray(pool.lengths[p][rows]),
            "force": jnp.asarray(pool.force[p][rows]), "single": jnp.asarray(pool.single[p][rows]),
            "valid": jnp.asarray(pool.valid[p][rows]),
        }
        hparams, state, loss, m = step(hparams, state, batch, jnp.float32(lexical_weight))
        if s % 25 == 0 or s == steps - 1:
            history["train"].append((s, float(loss), float(m["ce"]), float(m["lexical_mse"])))
            if progress:
                print(f"zett step {s}: loss {float(loss):.3f} ce {float(m['ce']):.3f} "
                      f"({time.perf_counter() - t0:.0f} s)", flush=True)
    history["seconds"] = time.perf_counter() - t0
    return hn.replace(params=hparams), history


def _sample_rows(rng, valid: np.ndarray, present: np.ndarray, size: int) -> np.ndarray:
    """Returns ``size`` distinct vocabulary rows: every ``present`` id, then random valid negatives."""
    present = np.asarray(present, np.int64)
    others = np.setdiff1d(np.flatnonzero(valid), present)
    need = size - present.size
    if need > others.size:  # a tiny vocabulary: pad with invalid rows (masked out of the softmax)
        extra = np.setdiff1d(np.arange(valid.size), np.concatenate([present, others]))[: need - others.size]
        return np.concatenate([present, others, extra])
    return np.concatenate([present, rng.choice(others, size=need, replace=False)])


# ------------------------------------------------------------------------------- transfer
def transfer(model: Model, old_tok: Any, new_tok: Any, hypernet: Hypernet, *, chunk: int = 1024) -> Model:
    """Returns ``model`` with the vocabulary of ``new_tok``: embeddings predicted by ``hypernet`` in one call.

    Special tokens copy the old special token of the same role/name; ids with nothing to decompose
    (unused ids, unmatched specials) get the mean old embedding. Raises ValueError when either
    tokenizer lacks byte tables or loses bytes, or when the hypernet does not fit the model.
    """
    if not isinstance(hypernet, Hypernet):
        raise ValueError(f"hypernet must be a zett.Hypernet, got {type(hypernet).__name__}")
    if hypernet.cfg.d_model != model.cfg.d_model:
        raise ValueError(f"hypernet predicts d_model={hypernet.cfg.d_model}, the model has {model.cfg.d_model}")
    if not model.cfg.tied_embeddings and not hypernet.cfg.separate_out:
        raise ValueError("the model has an untied lm_head: the hypernet must have separate_out=True")
    d = decompose_vocab(new_tok, old_tok, hypernet.cfg.maxlen)
    specials = special_counterparts(new_tok, old_tok)
    force = np.full((d.ids.shape[0],), -1, np.int32)
    for n, o in specials.items():
        force[n] = o
    source = model.params["embed"]
    fn = jax.jit(lambda i, l: hypernet_embeddings(hypernet, source, i, l))
    e_in, e_out = [], []
    V = d.ids.shape[0]
    for s in range(0, V, chunk):
        ids, lens = d.ids[s : s + chunk], d.lengths[s : s + chunk]
        n = ids.shape[0]
        if n < chunk:
            ids = np.concatenate([ids, np.full((chunk - n, ids.shape[1]), -1, np.int32)])
            lens = np.concatenate([lens, np.zeros((chunk - n,), np.int32)])
        a, b, _ = fn(jnp.asarray(ids), jnp.asarray(lens))
        e_in.append(a[:n])
        if b is not None:
            e_out.append(b[:n])
    mean = jnp.mean(source.astype(jnp.float32), axis=0)
    src = jnp.take(source.astype(jnp.float32), jnp.maximum(jnp.asarray(force), 0), axis=0)
    forced = jnp.asarray(force >= 0)[:, None]
    empty = jnp.asarray(d.lengths == 0)[:, None]

    def finish(e):
        return jnp.where(forced, src, jnp.where(empty, mean, jnp.concatenate(e)))

    emb = finish(e_in)
    head = None
    if not model.cfg.tied_embeddings:
        head_src = model.params["lm_head"].T.astype(jnp.float32)
        src_out = jnp.take(head_src, jnp.maximum(jnp.asarray(force), 0), axis=0)
        head = jnp.where(forced, src_out, jnp.where(empty, jnp.mean(head_src, 0), jnp.concatenate(e_out))).T
    return with_vocab(model, emb, head)


# ----------------------------------------------------------------------------- save / load
def save_hypernet(path: str | Path, hypernet: Hypernet, meta: dict | None = None) -> Path:
    """Returns the path of the ``.npz`` written with the hypernet's parameters, config and ``meta``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    flat = {"/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in kp): np.asarray(v)
            for kp, v in jax.tree_util.tree_flatten_with_path(hypernet.params)[0]}
    header = json.dumps({"cfg": dataclasses.asdict(hypernet.cfg), "meta": meta or {}})
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, __header__=np.array(header), **flat)
    tmp.replace(path)
    return path


def load_hypernet(path: str | Path) -> tuple[Hypernet, dict]:
    """Returns (Hypernet, meta) saved by :func:`save_hypernet`; ValueError for a missing or foreign file."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"no hypernet file at {path}")
    with np.load(path) as z:
        try:
            header = json.loads(str(z["__header__"]))
        except KeyError:
            raise ValueError(f"{path} is not a tokjax hypernet file") from None
        cfg = HypernetConfig(**header["cfg"])
        template = init_hypernet(cfg, jax.random.key(0)).params
        leaves_with_path, treedef = jax.tree_util.tree_flatten_with_path(template)
        leaves = []
        for kp, leaf in leaves_with_path:
            name = "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in kp)
            if name not in z or z[name].shape != leaf.shape:
                raise ValueError(f"{path}: parameter {name} missing or of the wrong shape")
            leaves.append(jnp.asarray(z[name]))
    return Hypernet(params=jax.tree_util.tree_unflatten(treedef, leaves), cfg=cfg), header["meta"]


def config_key(payload: dict) -> str:
    """Returns a short stable hash of a JSON-serialisable training configuration (cache file names)."""
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:12]


def pretrained_hypernet(
    name: str = "tiny-pydocs",
    *,
    pool_vocab_sizes: Sequence[int] = (512, 768, 1024, 1536, 2048, 3072),
    steps: int = 600,
    lr: float = 3e-3,
    seed: int = 0,
    hcfg: HypernetConfig | None = None,
    cache_dir: str | Path | None = None,
    progress: bool = False,
    train_if_missing: bool = True,
) -> tuple[Hypernet, dict] | None:
    """Returns (Hypernet, meta) for the named pretrained model, trained on its training split and cached.

    The cache file ``<cache_root>/zett/<name>-<hash of the settings>.npz`` makes later calls load in
    a second; ``meta`` holds the settings, the training history summary and the wall time. With
    ``train_if_missing=False`` a missing cache entry returns None instead of training.
    """
    from tokjax.data import load_corpus, split_corpus
    from tokjax.pretrained import cache_root, pretrained, pretrained_config

    model, tok = pretrained(name, cache_dir=cache_dir, progress=progress)
    hcfg = hcfg or HypernetConfig(d_model=model.cfg.d_model)
    run = pretrained_config(name)
    settings = {"name": name, "pool": list(pool_vocab_sizes), "steps": steps, "lr": lr, "seed": seed,
                "hcfg": dataclasses.asdict(hcfg), "version": 1}
    path = cache_root(cache_dir) / "zett" / f"{name}-{config_key(settings)}.npz"
    if path.is_file():
        return load_hypernet(path)
    if not train_if_missing:
        return None
    corpus = load_corpus(run.data.corpus, max_bytes=run.data.max_bytes)
    train_docs, _ = split_corpus(corpus, val_fraction=run.data.val_fraction, seed=run.data.split_seed)
    pool = make_tokenizer_pool(tok, train_docs, pool_vocab_sizes, maxlen=hcfg.maxlen, seed=seed)
    hn, history = train_hypernet(model, pool, hcfg, steps=steps, warmup_steps=0 if hcfg.residual else 100,
                                 lr=lr, seed=seed, progress=progress)
    meta = {"settings": settings, "seconds": history["seconds"], "train": history["train"][-4:]}
    save_hypernet(path, hn, meta)
    return hn, meta
