"""P26 ZeTT's training objective and batches, in the ``tokjax.train`` loss shape.

The trained pytree is ``{"hypernet": hypernet params, "lm": the frozen LM's params}`` (train it
with ``TrainConfig(trainable=("hypernet",))`` so the LM stays bit-for-bit frozen; the one-call
fitting function is :func:`tokjax.train.recipes.zett.train_hypernet`). Each step samples one
tokenizer of a :class:`TokenizerPool` and one batch of its windows; a batch carries the windows
(``tokens``, ``mask``) and the decompositions of ``vocab_sample`` rows of that tokenizer's
vocabulary (``vocab_*`` keys). :func:`zett_loss` is the next-token cross-entropy of the frozen LM
with those predicted tables (through ``tokjax.losses.token_stats``) plus the lexical MSE;
:func:`zett_warmup_loss` regresses the mean-of-parts embeddings (no LM run).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from tokjax.losses import token_stats
from tokjax.model import ModelConfig
from tokjax.tokenizers._bpe import BPETokenizer
from tokjax.tokenizers._vocab_transfer import (
    Decomposition,
    decompose_vocab,
    eval_windows,
    mean_of_parts,
    special_counterparts,
)
from tokjax.tokenizers._zett_hypernet import Hypernet, HypernetConfig, hypernet_embeddings

__all__ = [
    "TokenizerPool",
    "make_tokenizer_pool",
    "zett_batch_fn",
    "zett_loss",
    "zett_warmup_batch_fn",
    "zett_warmup_loss",
]

_NEG = -1e9  # finite "minus infinity" for unused vocabulary rows: keeps the softmax free of NaN
VOCAB_KEYS = ("vocab_ids", "vocab_lengths", "vocab_force", "vocab_single", "vocab_valid")


@dataclasses.dataclass(frozen=True)
class TokenizerPool:
    """Precomputed tokenizers for ZeTT training, all padded to ``v_max`` vocabulary rows.

    ``ids`` [P, V_max, L] and ``lengths`` [P, V_max]: decompositions into old ids; ``force``
    [P, V_max]: the old id a special token copies, else -1; ``single`` [P, V_max]: the old id of
    a single-token decomposition, else -1; ``valid`` bool [P, V_max]: rows that are real tokens;
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

    @property
    def seq_len(self) -> int:
        return int(self.windows[0][0].shape[1] - 1)


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


# --------------------------------------------------------------------------------- batches
def _sample_rows(rng, valid: np.ndarray, present: np.ndarray, size: int) -> np.ndarray:
    """Returns ``size`` distinct vocabulary rows: every ``present`` id, then random valid negatives."""
    present = np.asarray(present, np.int64)
    others = np.setdiff1d(np.flatnonzero(valid), present)
    need = size - present.size
    if need > others.size:  # a tiny vocabulary: pad with invalid rows (masked out of the softmax)
        extra = np.setdiff1d(np.arange(valid.size), np.concatenate([present, others]))[: need - others.size]
        return np.concatenate([present, others, extra])
    return np.concatenate([present, rng.choice(others, size=need, replace=False)])


def _vocab_rows(pool: TokenizerPool, p: int, rows: np.ndarray) -> dict[str, np.ndarray]:
    return {"vocab_ids": pool.ids[p][rows], "vocab_lengths": pool.lengths[p][rows],
            "vocab_force": pool.force[p][rows], "vocab_single": pool.single[p][rows],
            "vocab_valid": pool.valid[p][rows]}


def _check_pool(pool: Any, vocab_sample: int) -> None:
    if not isinstance(pool, TokenizerPool):
        raise ValueError(f"pool must be a TokenizerPool (see make_tokenizer_pool), got {type(pool).__name__}")
    if isinstance(vocab_sample, bool) or not isinstance(vocab_sample, int) or vocab_sample < 1:
        raise ValueError(f"vocab_sample must be a positive int, got {vocab_sample!r}")


def zett_batch_fn(pool: TokenizerPool, *, batch_size: int = 8, vocab_sample: int = 512,
                  seed: int = 0) -> Callable[[int], dict[str, np.ndarray]]:
    """Returns ``batch_fn(step) -> batch`` for :func:`zett_loss`, a pure function of (``seed``, step).

    Each step draws one pool tokenizer and ``batch_size`` of its windows. As in ZeTT
    (``n_token_subsample``), only ``vocab_sample`` vocabulary rows are predicted -- every token of
    the batch plus random negatives -- and the batch's token ids are remapped to those rows, so
    the softmax runs over them. Keys: ``tokens`` [B, T+1], ``mask`` [B, T], ``vocab_ids``
    [S, L], ``vocab_lengths``/``vocab_force``/``vocab_single`` [S], ``vocab_valid`` bool [S].
    """
    _check_pool(pool, vocab_sample)
    width = pool.windows[0][0].shape[1]
    if batch_size * width > vocab_sample:
        raise ValueError(f"vocab_sample={vocab_sample} must be at least batch_size x (seq_len + 1) = "
                         f"{batch_size * width} so every token of a batch has a row")

    def batch_fn(step: int) -> dict[str, np.ndarray]:
        rng = np.random.default_rng((seed, int(step)))  # a pure function of the step: resume replays it
        p = int(rng.integers(len(pool)))
        tokens, mask = pool.windows[p]
        pick = rng.integers(0, tokens.shape[0], size=batch_size)
        toks = tokens[pick]
        rows = _sample_rows(rng, pool.valid[p], np.unique(toks), vocab_sample)
        lut = np.zeros((pool.valid.shape[1],), np.int32)
        lut[rows] = np.arange(rows.size, dtype=np.int32)
        return {"tokens": lut[toks], "mask": mask[pick].astype(np.float32), **_vocab_rows(pool, p, rows)}

    return batch_fn


def zett_warmup_batch_fn(pool: TokenizerPool, *, vocab_sample: int = 512,
                         seed: int = 0) -> Callable[[int], dict[str, np.ndarray]]:
    """Returns ``batch_fn(step) -> {"vocab_ids", "vocab_lengths", ...}``: ``vocab_sample`` random
    valid rows of one random pool tokenizer per step, for :func:`zett_warmup_loss`."""
    _check_pool(pool, vocab_sample)

    def batch_fn(step: int) -> dict[str, np.ndarray]:
        rng = np.random.default_rng((seed, int(step), 1))
        p = int(rng.integers(len(pool)))
        rows = _sample_rows(rng, pool.valid[p], np.zeros((0,), np.int64), vocab_sample)
        return _vocab_rows(pool, p, rows)

    return batch_fn


# ---------------------------------------------------------------------------------- losses
def vocab_tables(hypernet: Hypernet, source: jax.Array, ids, lengths, force, valid):
    """Returns (embedding [V, D], head [D, V] or None, logit_bias [V]) for a vocabulary's decompositions.

    Rows with ``force`` >= 0 copy that source row (special tokens); rows not ``valid`` get a
    logit bias of -1e9 so they never take probability mass.
    """
    e_in, e_out, bias = hypernet_embeddings(hypernet, source, ids, lengths)
    src = jnp.take(source.astype(jnp.float32), jnp.maximum(force, 0), axis=0)
    forced = (force >= 0)[:, None]
    e_in = jnp.where(forced, src, e_in)
    head = None if e_out is None else jnp.where(forced, src, e_out).T
    logit_bias = jnp.where(valid, 0.0, _NEG)
    if bias is not None:
        logit_bias = logit_bias + jnp.where(force >= 0, 0.0, bias)
    return e_in, head, logit_bias


def _check_params(params: Any, hypernet_cfg: HypernetConfig, lm_cfg: ModelConfig) -> None:
    if not isinstance(params, dict) or set(params) != {"hypernet", "lm"}:
        raise ValueError("ZeTT losses train params {'hypernet': hypernet params, 'lm': the frozen LM's params}, got "
                         f"{sorted(params) if isinstance(params, dict) else type(params).__name__}")
    if not isinstance(hypernet_cfg, HypernetConfig) or not isinstance(lm_cfg, ModelConfig):
        raise ValueError("hypernet_cfg must be a HypernetConfig and lm_cfg a ModelConfig")
    if not lm_cfg.tied_embeddings and not hypernet_cfg.separate_out:
        raise ValueError("the LM has an untied lm_head: use a HypernetConfig(separate_out=True)")


def zett_loss(
    params: dict, cfg: Any, batch: dict, rng: jax.Array | None = None, *,
    hypernet_cfg: HypernetConfig, lm_cfg: ModelConfig, lexical_weight: float = 0.5,
) -> tuple[jax.Array, dict]:
    """Returns (loss, metrics) of ZeTT's objective for one batch under one sampled tokenizer.

    loss = CE(frozen LM with E = H(decompositions)) + lexical_weight * MSE(E[t], E_old[s]) over tokens t
    that are a single old token s. ``params`` = ``{"hypernet", "lm"}``; ``cfg`` and ``rng`` are
    unused (the train signature; bind the static configs with ``functools.partial``). ``batch``
    as built by :func:`zett_batch_fn`. Metrics: ``ce``, ``lexical_mse``.
    """
    del cfg, rng
    _check_params(params, hypernet_cfg, lm_cfg)
    hn = Hypernet(params=params["hypernet"], cfg=hypernet_cfg)
    lm = params["lm"]
    source = lm["embed"]
    force = batch["vocab_force"]
    emb, head, bias = vocab_tables(hn, source, batch["vocab_ids"], batch["vocab_lengths"], force, batch["vocab_valid"])
    head = emb.T if head is None else head
    # only the window keys: the vocab_* rows must not be read as sequence lengths or masks
    stats = token_stats(lm, lm_cfg, {"tokens": batch["tokens"], "mask": batch["mask"]},
                        embedding=emb, head=head, logit_bias=bias)
    mask = stats.mask.astype(jnp.float32)
    ce = -jnp.sum(stats.logp * mask) / jnp.maximum(jnp.sum(mask), 1.0)
    single = batch["vocab_single"]
    target = jnp.take(source.astype(jnp.float32), jnp.maximum(single, 0), axis=0)
    w = ((single >= 0) & (force < 0)).astype(jnp.float32)
    mse = jnp.sum(w[:, None] * jnp.square(emb - target)) / jnp.maximum(jnp.sum(w) * emb.shape[1], 1.0)
    return ce + lexical_weight * mse, {"ce": ce, "lexical_mse": mse}


def zett_warmup_loss(
    params: dict, cfg: Any, batch: dict, rng: jax.Array | None = None, *,
    hypernet_cfg: HypernetConfig, lm_cfg: ModelConfig,
) -> tuple[jax.Array, dict]:
    """Returns (MSE, metrics) between the hypernet's input embeddings and the mean of the parts' embeddings.

    The warm-up of a non-residual hypernet (ZeTT's "identity steps" regress the source
    embeddings; the mean of the parts equals them for single-token decompositions). No LM run.
    """
    del cfg, rng
    _check_params(params, hypernet_cfg, lm_cfg)
    source = params["lm"]["embed"]
    ids, lengths = batch["vocab_ids"], batch["vocab_lengths"]
    target = jax.lax.stop_gradient(mean_of_parts(source, ids, lengths)).astype(jnp.float32)
    e, _, _ = hypernet_embeddings(Hypernet(params=params["hypernet"], cfg=hypernet_cfg), source, ids, lengths)
    w = (lengths > 0).astype(jnp.float32)[:, None]
    mse = jnp.sum(w * jnp.square(e - target)) / jnp.maximum(jnp.sum(w) * e.shape[1], 1.0)
    return mse, {"mse": mse}
