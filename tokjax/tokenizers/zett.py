"""P26 Zero-Shot Tokenizer Transfer (ZeTT; Minixhofer, Ponti, Vulic; NeurIPS 2024).

A hypernetwork H predicts the embeddings of any new tokenizer's tokens for a frozen language model.
Each new token t is written as its decomposition into old tokens, T_old(t) = (s_1 .. s_n) (the
bytes of t re-tokenized by the old tokenizer, ZeTT's "surface form matrix"); the parts are embedded
with the frozen old embeddings and read by a small bidirectional transformer encoder -- the shared
``tokjax.forward`` under ``Bidirectional()`` with ``Inputs(embeds=...)``:

    x_i   = P_in(E_old[s_i])                             (Dense + ProjectorBlock)
    h     = Encoder(x_1 .. x_n)   (bidirectional, padding in its own segment)
    e_in(t) = P_out(h_1)   [ e_out(t) = P_out'(h_1) for untied models ]     (pool position 0)

Training samples a fresh tokenizer per batch (here: a precomputed pool of BPE tokenizers of varying
vocabulary sizes trained on corpus samples), tokenizes the batch with it, predicts the embeddings of
its vocabulary, runs the frozen LM with them (``token_stats(..., embedding=E, head=E.T)``) and
minimises the next-token cross-entropy plus ``lexical_weight`` x MSE to the old embedding for tokens
that are a single old token (ZeTT's auxiliary loss). :func:`transfer` then runs H once over a new
vocabulary and returns an ordinary model.

Where things live: the hypernetwork (:class:`HypernetConfig`, :func:`init_hypernet`,
:func:`hypernet_embeddings`) in ``_zett_hypernet``; the pure losses and step batches
(:func:`zett_loss`, :func:`zett_batch_fn`, :func:`make_tokenizer_pool`) in ``_zett_objective``;
fitting through ``tokjax.train`` and orbax checkpoints in :mod:`tokjax.train.recipes.zett`
(``train_hypernet``, ``save_hypernet``, ``load_hypernet``, ``cached_hypernet``).

Deviations from the official code (bminixhofer/zett), which a CPU-sized check needs: BPE instead
of noisy UnigramLM samples; pre-LayerNorm encoder blocks with tanh-approximated GELU (the shared
forward's GPT-2 block, the same computation as the private encoder of the first tokjax version)
instead of RoBERTa's post-LN with exact GELU; with
``HypernetConfig(residual=True)`` (the default) the input embedding is predicted as a correction
added to the mean of the parts' embeddings (FVT), with the last layer zero-initialised, so an
untrained hypernet equals FVT -- ZeTT instead spends its first 10k "identity steps" regressing the
source embeddings, which a few CPU minutes cannot afford.

The paper's plain head is ``HypernetConfig(residual=False)`` -- e_in(t) = P_out(h_1), nothing added,
as ``Hypernet.__call__`` in the official ``zett/model/__init__.py`` -- and its identity steps are
:func:`identity_pool` + ``zett_warmup_loss``: every source token is its own one-part decomposition,
and the hypernet regresses its source embedding (ZeTT's ``identity_train_step`` with
``hn_surface_maxlen=1``; the mean of a one-part decomposition is that part's embedding). Not
mirrored: ZeTT's optional ``Rescaler`` (affine layers matching the predicted embeddings' statistics
to the source table's at init) and its UnigramLM tokenizer sampler (here: a fixed BPE pool).
``recipes.zett.cached_hypernet`` warms a plain head up on the pool's mean-of-parts embeddings
instead (an FVT-shaped start); experiments/p26_zett.py runs the identity steps.

:func:`vocab_overlap` measures how unseen a target tokenizer is: the share of its tokens that any
training-pool tokenizer also has (P26's "unseen tokenizer" claim is only tested where it is low).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from tokjax.model import Model
from tokjax.tokenizers._vocab_transfer import (
    check_byte_tables,
    decompose_vocab,
    special_counterparts,
    with_vocab,
)
from tokjax.tokenizers._zett_hypernet import Hypernet, HypernetConfig, hypernet_embeddings, init_hypernet
from tokjax.tokenizers._zett_objective import (
    TokenizerPool,
    make_tokenizer_pool,
    vocab_tables,
    zett_batch_fn,
    zett_loss,
    zett_warmup_batch_fn,
    zett_warmup_loss,
)

__all__ = [
    "HypernetConfig",
    "Hypernet",
    "init_hypernet",
    "hypernet_embeddings",
    "vocab_tables",
    "zett_loss",
    "zett_warmup_loss",
    "zett_batch_fn",
    "zett_warmup_batch_fn",
    "TokenizerPool",
    "make_tokenizer_pool",
    "identity_pool",
    "vocab_overlap",
    "transfer",
]


def identity_pool(old_tok: Any, maxlen: int) -> TokenizerPool:
    """Returns a one-tokenizer :class:`TokenizerPool` of the source vocabulary for ZeTT's identity steps.

    Row i is old token i as its own decomposition (ids [i, -1, ..], length 1), so
    ``zett_warmup_loss`` over ``zett_warmup_batch_fn(identity_pool(...))`` is ZeTT's identity-step
    objective, || H([i]) - E_old[i] ||^2 averaged over sampled source tokens (P26, official
    ``train.py``: ``identity_steps`` with ``hn_surface_maxlen=1``). Special tokens are forced to
    themselves; ids with no bytes (unused) are not ``valid``. The pool holds no text windows (the
    identity steps never run the LM), so it is for the warm-up batches only. ValueError when
    ``old_tok`` lacks byte tables or ``maxlen`` < 1.
    """
    if isinstance(maxlen, bool) or not isinstance(maxlen, (int, np.integer)) or maxlen < 1:
        raise ValueError(f"maxlen must be a positive int, got {maxlen!r}")
    table = check_byte_tables(old_tok, "old tokenizer")
    V = len(table)
    specials = np.zeros((V,), bool)
    specials[[i for i in old_tok.special_ids if 0 <= i < V]] = True
    valid = np.array([bool(b) for b in table]) | specials
    ids = np.full((1, V, int(maxlen)), -1, np.int32)
    ids[0, :, 0] = np.arange(V, dtype=np.int32)
    lengths = valid.astype(np.int32)[None]
    force = np.where(specials, np.arange(V), -1).astype(np.int32)[None]
    single = np.where(valid & ~specials, np.arange(V), -1).astype(np.int32)[None]
    ids[0, ~valid, 0] = -1
    no_windows = (np.zeros((0, 2), np.int32), np.zeros((0, 1), np.float32))
    return TokenizerPool(ids, lengths, force, single, valid[None], [no_windows], [V])


def vocab_overlap(target_tok: Any, pool_toks: Iterable[Any]) -> float:
    """Returns the share of ``target_tok``'s tokens (non-empty byte strings) that some tokenizer of
    ``pool_toks`` also has -- 1.0 means the hypernet saw every target token in training.

    Special tokens and unused ids (no bytes) are not counted; the 256 single bytes are, as every
    byte-level vocabulary shares them. ValueError for an empty pool or a tokenizer without byte tables.
    """
    def tokens(tok: Any, what: str) -> list[bytes]:
        special = getattr(tok, "special_ids", frozenset())
        return [b for i, b in enumerate(check_byte_tables(tok, what)) if b and i not in special]

    seen: set[bytes] = set()
    n_pool = 0
    for tok in pool_toks:
        seen.update(tokens(tok, "pool tokenizer"))
        n_pool += 1
    if not n_pool:
        raise ValueError("pool_toks must hold at least one tokenizer")
    target = tokens(target_tok, "target tokenizer")
    if not target:
        raise ValueError("the target tokenizer has no tokens with bytes")
    return sum(b in seen for b in target) / len(target)


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
    for s in range(0, V, chunk):  # fixed-size chunks: one compiled shape for any vocabulary size
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
