"""Span corruption (T5 / mT5 pre-training) in prefix-LM form: noise masks, corrupted rows and the loss.

The pre-training objective of the bidirectional model that P76 (*Bidirectional Language Models
Are Also Few-shot Learners*, Patel et al., ICLR 2023; SAP) prompts. P76 uses mT5 as trained by
its authors; it defines no loss of its own. What is implemented here is T5's span corruption
(Raffel et al. 2020, ``t5.data.preprocessors.span_corruption``: ``random_spans_noise_mask``,
``noise_span_to_unique_sentinel``, ``nonnoise_span_to_unique_sentinel``), re-derived from that
description and written from scratch, in the *prefix-LM form* that tokjax's one decoder-only
forward runs: the corrupted input is the bidirectional prefix, the targets follow causally.

Noise mask (:func:`random_spans_noise_mask`, T5's algorithm; per row of length n)::

    n_noise = clip(round(n * noise_density), 1, n - 1)
    n_spans = clip(round(n_noise / mean_noise_span_length), 1, min(n_noise, n - n_noise))
    split the n_noise noise tokens into n_spans non-empty runs, uniformly over compositions;
    split the n - n_noise kept tokens into n_spans non-empty runs the same way;
    row = kept_0 noise_0 kept_1 noise_1 ... kept_{m-1} noise_{m-1}

so a row starts with kept tokens and always *ends with a noise span* (T5's layout; the clip of
n_spans to min(n_noise, n - n_noise) is a guard T5 does not need at its densities).

Corrupted row (:func:`span_corruption_rows`), sentinels ``s_i = sentinel_ids[i]``::

    x       = a b c d e f g h            noise: c d, g h
    input   = a b s_0 e f s_1            (each noise span -> its sentinel; bidirectional prefix)
    target  = s_0 c d s_1 g h s_2        (each span after its sentinel, then the next sentinel)
    row     = input ++ target,           Prefix(len(input)) mask, loss on the target tokens

T5 closes the target with EOS; here it is closed with the next sentinel ``s_m`` (what T5's
targets hold when the row ends in kept tokens, and what P76 reads as the end of mT5's infill,
``<extra_id_0> ... <extra_id_1>``), so a model trained here ends an infill with a sentinel.

Loss (:func:`span_corruption_loss`): ``L = -(1/N) sum_{target t} log p(row[t] | row[<t])`` under
the prefix-LM mask (input tokens see the whole input, targets see the input and earlier targets),
reduced with tokjax's :func:`~tokjax.losses._stats.reduce_loss` (token mean, optional global
normaliser). Registered as ``span_corruption`` (:func:`make_span_corruption_loss`).
"""

from __future__ import annotations

from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from tokjax.logits._base import check_range
from tokjax.losses._stats import TokenStats, reduce_loss
from tokjax.model import Inputs, ModelConfig, forward
from tokjax.model.attention import Prefix
from tokjax.model.ops import check_int_values

__all__ = ["check_sentinel_ids", "make_span_corruption_loss", "noise_span_counts", "random_spans_noise_mask",
           "span_corruption_loss", "span_corruption_rows"]

_F32 = jnp.float32
_ROW_KEYS = ("tokens", "prefix_lengths", "lengths", "target_mask", "ok")


def _concrete(x) -> bool:
    return not isinstance(x, jax.core.Tracer)


def check_sentinel_ids(sentinel_ids, vocab_size: int | None = None, *, at_least: int = 1) -> np.ndarray:
    """Returns ``sentinel_ids`` as int32 [K] after checking them (K >= ``at_least``, distinct, in [0, vocab)).

    Raises ValueError naming what is wrong: none given, not ints, repeated ids, out of range.
    """
    if sentinel_ids is None:
        raise ValueError("sentinel_ids is missing: span corruption needs the sentinel token ids "
                         "(T5's <extra_id_0>, <extra_id_1>, ...), e.g. sentinel_ids=[V-1, V-2, ...]")
    ids = np.asarray(sentinel_ids)
    if ids.ndim != 1 or ids.size < at_least:
        raise ValueError(f"sentinel_ids must be a 1-D list of at least {at_least} token id(s), got "
                         f"{sentinel_ids!r} (shape {ids.shape})")
    if ids.dtype.kind not in "iu":
        raise ValueError(f"sentinel_ids must be int token ids, got {ids.dtype} {sentinel_ids!r}")
    if len(set(ids.tolist())) != ids.size:
        raise ValueError(f"sentinel_ids must be distinct (one id per span), got {ids.tolist()}")
    if vocab_size is not None and (ids.min() < 0 or ids.max() >= vocab_size):
        raise ValueError(f"sentinel_ids must lie in [0, vocab_size={vocab_size}), got {ids.tolist()}")
    return ids.astype(np.int32)


def _check_options(noise_density, mean_noise_span_length) -> None:
    check_range(noise_density, "noise_density (fraction of tokens corrupted)", 0.0, 1.0, lo_open=True, hi_open=True)
    check_range(mean_noise_span_length, "mean_noise_span_length", 1.0, None)


def noise_span_counts(lengths, noise_density=0.15, mean_noise_span_length=3.0) -> tuple[jax.Array, jax.Array]:
    """Returns (n_noise, n_spans), int32 like ``lengths``: T5's noise-token and noise-span counts per row.

    ``n_noise = clip(round(n * density), 1, n - 1)``, ``n_spans = clip(round(n_noise / mean), 1,
    min(n_noise, n - n_noise))``. Runtime hyperparameters (arrays allowed; no recompilation).
    """
    n = jnp.asarray(lengths, jnp.int32)
    nf = n.astype(_F32)
    n_noise = jnp.clip(jnp.round(nf * jnp.asarray(noise_density, _F32)).astype(jnp.int32), 1, n - 1)
    spans = jnp.round(n_noise.astype(_F32) / jnp.asarray(mean_noise_span_length, _F32)).astype(jnp.int32)
    return n_noise, jnp.clip(spans, 1, jnp.minimum(n_noise, n - n_noise))


def _segment_starts(key, n_items, n_segments, width: int) -> jax.Array:
    """Returns int32 [width]: the start offsets of ``n_segments`` non-empty runs splitting ``n_items`` items,
    drawn uniformly over compositions, sorted, padded with ``n_items`` (so run j = [s[j], s[j+1]))."""
    idx = jnp.arange(width, dtype=jnp.int32)
    cand = (idx >= 1) & (idx < n_items)
    score = jnp.where(cand, jax.random.uniform(key, (width,)), 2.0)
    rank = jnp.argsort(jnp.argsort(score))
    is_start = (cand & (rank < n_segments - 1)) | (idx == 0)
    starts = jnp.sort(jnp.where(is_start, idx, width + 1))
    return jnp.where(starts > width, n_items, starts).astype(jnp.int32)


def random_spans_noise_mask(key: jax.Array, lengths, width: int, noise_density=0.15,
                            mean_noise_span_length=3.0) -> jax.Array:
    """Returns bool [B, width]: T5's random-spans noise mask of each row (module docstring), False past its length.

    ``lengths`` int [B] (each >= 2 and <= ``width``); ``noise_density`` and ``mean_noise_span_length``
    are runtime values (scalars). Each row: kept run, noise run, ..., ending with a noise run.
    Pure and jit-compatible (``width`` static).
    """
    lengths = jnp.asarray(lengths)
    if lengths.ndim != 1 or not jnp.issubdtype(lengths.dtype, jnp.integer):
        raise ValueError(f"lengths must be int [B], got {lengths.dtype} {tuple(lengths.shape)}")
    if not isinstance(width, (int, np.integer)) or width < 2:
        raise ValueError(f"width must be a static int >= 2, got {width!r}")
    check_int_values(lengths, "lengths (tokens per row; span corruption needs >= 2)", 2, int(width), hi_closed=True)
    _check_options(noise_density, mean_noise_span_length)
    n = lengths.astype(jnp.int32)
    n_noise, n_spans = noise_span_counts(n, noise_density, mean_noise_span_length)
    keys = jax.random.split(key, n.shape[0])

    def row(k, n_row, noise_row, spans_row):
        k1, k2 = jax.random.split(k)
        noise_s = _segment_starts(k1, noise_row, spans_row, width)
        kept_s = _segment_starts(k2, n_row - noise_row, spans_row, width)
        j = jnp.arange(width)
        kept_next = jnp.concatenate([kept_s[1:], jnp.full((1,), n_row - noise_row, jnp.int32)])
        noise_next = jnp.concatenate([noise_s[1:], jnp.full((1,), noise_row, jnp.int32)])
        start = kept_next + noise_s  # noise run j starts after kept runs 0..j and noise runs 0..j-1
        end = kept_next + noise_next
        live = j < spans_row
        delta = jnp.zeros((width + 1,), jnp.int32)
        delta = delta.at[jnp.where(live, start, width)].add(1).at[jnp.where(live, end, width)].add(-1)
        return jnp.cumsum(delta)[:width] > 0

    return jax.vmap(row)(keys, n, n_noise, n_spans)


def span_corruption_rows(tokens, lengths, noise_mask, sentinel_ids, *, width: int, pad_id: int = 0) -> dict:
    """Returns the prefix-LM rows of span corruption (module docstring) as a dict of arrays.

    ``tokens`` int [B, L] (row b's text is ``tokens[b, :lengths[b]]``), ``noise_mask`` bool [B, L],
    ``sentinel_ids`` int [K] (span i -> ``sentinel_ids[i]``; a row with m spans needs K >= m + 1).
    Output (``width`` static): ``tokens`` int32 [B, width] = input ++ target, ``pad_id`` after;
    ``prefix_lengths`` [B] (input length: the bidirectional part); ``lengths`` [B] (input + target);
    ``target_mask`` bool [B, width] (True on target tokens); ``ok`` bool [B] (False when the row does
    not fit ``width`` or has more spans than sentinels: such rows must be left out of a loss).
    A text token equal to a sentinel id is an error when the arrays are concrete.
    """
    tokens = jnp.asarray(tokens)
    lengths = jnp.asarray(lengths)
    noise_mask = jnp.asarray(noise_mask)
    if tokens.ndim != 2 or not jnp.issubdtype(tokens.dtype, jnp.integer):
        raise ValueError(f"tokens must be int token ids [B, L], got {tokens.dtype} {tuple(tokens.shape)}")
    B, L = tokens.shape
    if lengths.shape != (B,) or not jnp.issubdtype(lengths.dtype, jnp.integer):
        raise ValueError(f"lengths must be int [B]={(B,)}, got {lengths.dtype} {tuple(lengths.shape)}")
    if noise_mask.shape != (B, L) or noise_mask.dtype != jnp.bool_:
        raise ValueError(f"noise_mask must be bool [B, L]={(B, L)} (random_spans_noise_mask), got "
                         f"{noise_mask.dtype} {tuple(noise_mask.shape)}")
    if not isinstance(width, (int, np.integer)) or width < 2:
        raise ValueError(f"width must be a static int >= 2, got {width!r}")
    sent = jnp.asarray(check_sentinel_ids(sentinel_ids) if _concrete(sentinel_ids) else sentinel_ids, jnp.int32)
    K = sent.shape[0]
    check_int_values(lengths, "lengths", 0, L, hi_closed=True)
    col = jnp.arange(L)[None, :]
    valid = col < lengths[:, None]
    if _concrete(tokens) and _concrete(sent):
        clash = np.isin(np.asarray(tokens), np.asarray(sent)) & np.asarray(valid)
        if clash.any():
            b, t = np.argwhere(clash)[0]
            raise ValueError(f"tokens[{b}, {t}] = {int(np.asarray(tokens)[b, t])} is a sentinel id: the text to "
                             "corrupt must not contain sentinel tokens (they mark the corrupted spans)")
    noise = noise_mask & valid
    prev = jnp.concatenate([jnp.zeros((B, 1), bool), noise[:, :-1]], axis=1)
    start = noise & ~prev
    n_spans = start.sum(1).astype(jnp.int32)
    span_idx = jnp.cumsum(start, axis=1).astype(jnp.int32) - 1
    span_sent = sent[jnp.clip(span_idx, 0, K - 1)]

    keep = valid & (~noise | start)  # input: kept tokens, and one sentinel per noise span
    in_pos = jnp.cumsum(keep, axis=1) - 1
    in_tok = jnp.where(noise, span_sent, tokens)
    n_in = keep.sum(1).astype(jnp.int32)

    t_count = noise.astype(jnp.int32) + start.astype(jnp.int32)  # target: sentinel + token at a span start
    t_end = jnp.cumsum(t_count, axis=1)
    n_t = t_count.sum(1).astype(jnp.int32)
    tok_col = n_in[:, None] + t_end - 1
    sent_col = n_in[:, None] + t_end - 2
    close_col = n_in + n_t
    close = sent[jnp.clip(n_spans, 0, K - 1)]
    total = close_col + 1

    rows = jnp.arange(B)[:, None]
    out = jnp.full((B, width), pad_id, jnp.int32)
    out = out.at[rows, jnp.where(keep, in_pos, width)].set(in_tok.astype(jnp.int32), mode="drop")
    out = out.at[rows, jnp.where(noise, tok_col, width)].set(tokens.astype(jnp.int32), mode="drop")
    out = out.at[rows, jnp.where(start, sent_col, width)].set(span_sent, mode="drop")
    out = out.at[jnp.arange(B), jnp.where(total <= width, close_col, width)].set(close, mode="drop")
    wcol = jnp.arange(width)[None, :]
    target_mask = (wcol >= n_in[:, None]) & (wcol < total[:, None])
    ok = (total <= width) & (n_spans + 1 <= K)
    return {"tokens": out, "prefix_lengths": n_in, "lengths": total, "target_mask": target_mask, "ok": ok}


def span_corruption_loss(params, cfg: ModelConfig, rows: dict, *, reduction: str = "token_mean",
                         normalizer=None) -> tuple[jax.Array, dict]:
    """Returns (loss, metrics): the prefix-LM span-corruption NLL of built rows (:func:`span_corruption_rows`).

    ``loss = reduce(-log p(row[t] | row[<t]))`` over target tokens t of rows with ``ok``, one forward
    under ``Prefix(prefix_lengths)``. Metrics: ``nll`` (token mean), ``accuracy`` (argmax == target),
    ``target_tokens``, ``dropped_rows`` (rows left out: too wide or too few sentinels).
    """
    if not isinstance(rows, dict) or any(k not in rows for k in _ROW_KEYS):
        got = sorted(rows) if isinstance(rows, dict) else type(rows).__name__
        raise ValueError(f"span_corruption_loss needs rows from span_corruption_rows with keys {list(_ROW_KEYS)}, "
                         f"got {got}")
    tokens = jnp.asarray(rows["tokens"], jnp.int32)
    B, W = tokens.shape
    if W > cfg.max_len:
        raise ValueError(f"the span-corruption rows are {W} columns wide, more than the model's max_len={cfg.max_len}")
    check_int_values(tokens, "rows['tokens']", 0, cfg.vocab_size)
    out = forward(params, cfg, Inputs(tokens=tokens), mask=Prefix(jnp.asarray(rows["prefix_lengths"], jnp.int32)))
    logits = out.logits[:, :-1].astype(_F32)
    labels = tokens[:, 1:]
    logp_all = jax.nn.log_softmax(logits, axis=-1)
    logp = jnp.take_along_axis(logp_all, labels[..., None], axis=-1)[..., 0]
    mask = jnp.asarray(rows["target_mask"], bool)[:, 1:] & jnp.asarray(rows["ok"], bool)[:, None]
    stats = TokenStats.create(logp, mask)
    loss = reduce_loss(stats, reduction, normalizer=normalizer)
    n = jnp.maximum(mask.sum(), 1).astype(_F32)
    metrics = {
        "nll": -jnp.sum(jnp.where(mask, logp, 0.0)) / n,
        "accuracy": jnp.sum(mask & (jnp.argmax(logits, -1) == labels)) / n,
        "target_tokens": mask.sum().astype(_F32),
        "dropped_rows": jnp.sum(~jnp.asarray(rows["ok"], bool)).astype(_F32),
    }
    return loss, metrics


def make_span_corruption_loss(*, sentinel_ids: Sequence[int], noise_density: float = 0.15,
                              mean_noise_span_length: float = 3.0, width: int | None = None,
                              pad_id: int = 0) -> Callable:
    """Returns the train loss ``(params, cfg, batch, rng) -> (loss, metrics)`` registered as ``span_corruption``.

    ``batch``: ``tokens`` int [B, L] (raw text rows), optionally ``lengths`` [B] (default L) and
    ``noise_mask`` bool [B, L] (a fixed mask; without it T5's random-spans mask is drawn from ``rng``,
    the train loop's per-step key). ``batch["sc_noise_density"]`` / ``batch["sc_mean_noise_span_length"]``
    override the options per step (runtime values). Rows are built ``width`` wide (default the model's
    ``max_len``); a row that does not fit is left out and counted in ``dropped_rows``.
    """
    sent = check_sentinel_ids(sentinel_ids, at_least=2)
    _check_options(noise_density, mean_noise_span_length)
    if width is not None and (not isinstance(width, (int, np.integer)) or width < 2):
        raise ValueError(f"width must be None (the model's max_len) or an int >= 2, got {width!r}")
    if not isinstance(pad_id, (int, np.integer)) or isinstance(pad_id, bool):
        raise ValueError(f"pad_id must be an int token id, got {pad_id!r}")

    def loss_fn(params, cfg, batch, rng=None):
        """Span corruption (T5) in prefix-LM form: NLL of sentinel-delimited spans given the corrupted text."""
        if not isinstance(batch, dict) or "tokens" not in batch:
            raise ValueError("the span_corruption loss needs a dict batch with 'tokens' [B, L] (and optionally "
                             f"'lengths', 'noise_mask'), got {sorted(batch) if isinstance(batch, dict) else batch!r}")
        if int(sent.max()) >= cfg.vocab_size:
            raise ValueError(f"sentinel_ids {sent.tolist()} must lie in [0, vocab_size={cfg.vocab_size})")
        tokens = jnp.asarray(batch["tokens"])
        B, L = tokens.shape
        lengths = jnp.asarray(batch.get("lengths", jnp.full((B,), L, jnp.int32)))
        if "noise_mask" in batch:
            noise = jnp.asarray(batch["noise_mask"])
        else:
            if rng is None:
                raise ValueError("the span_corruption loss draws its noise from rng: pass a PRNG key (the train loop "
                                 "does) or batch['noise_mask']")
            noise = random_spans_noise_mask(rng, lengths, L, batch.get("sc_noise_density", noise_density),
                                            batch.get("sc_mean_noise_span_length", mean_noise_span_length))
        rows = span_corruption_rows(tokens, lengths, noise, sent, width=width or cfg.max_len, pad_id=pad_id)
        return span_corruption_loss(params, cfg, rows, normalizer=batch.get("normalizer"))

    return loss_fn


def _factory(sentinel_ids, noise_density, mean_noise_span_length, width, pad_id):
    return make_span_corruption_loss(sentinel_ids=sentinel_ids, noise_density=float(noise_density),
                                     mean_noise_span_length=float(mean_noise_span_length),
                                     width=None if width is None else int(width), pad_id=int(pad_id))


def _register() -> None:
    from tokjax.losses.registry import register_loss

    register_loss("span_corruption", _factory,
                  {"sentinel_ids": None, "noise_density": 0.15, "mean_noise_span_length": 3.0, "width": None,
                   "pad_id": 0},
                  doc="T5 span corruption in prefix-LM form (P76 SAP's model): corrupted text as a bidirectional "
                      "prefix, sentinel-delimited spans as causal targets; needs sentinel_ids", overwrite=True)


_register()
