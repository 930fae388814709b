"""Self-generated tokens in training (P49): batch-scheduled sampling (BASH) and reference-answer-based correction (RAC).

Paper: *Bridging the Training-Inference Gap in LLMs by Leveraging Self-Generated Tokens* (Cen, Liu,
Zeng, Chaudhari, Rangwala, Karypis, Fakoor; TMLR 2025, arXiv 2410.14655; no official code found).

**Batch-scheduled sampling.** Teacher forcing conditions on the ground truth y_<t, inference on
the model's own tokens. BASH mixes the two *offline*: one no-gradient teacher-forced pass gives the
model's own token at every position, yhat_{t+1} = argmax (or a sample of) p_theta(. | y_<=t); each
completion input token is then replaced by yhat with probability rho_k (scheduled over batches k),
and the usual cross-entropy of the ground truth is trained on the mixed context:

    xtilde_t = yhat_t with probability rho_k, else y_t     (completion positions only)
    L = - sum_t log p_theta(y_{t+1} | xtilde_<=t)                                        (P49, BASH)

One extra forward pass per step, no sequential decoding, jit-compatible; rho is a runtime array.

**Reference-answer-based correction.** The model's own answer yhat to a prompt x is followed by a
correction marker and the reference answer y*, and the loss covers only what follows yhat:
``[x, yhat, marker, y*]`` with targets ``marker, y*`` — the model learns to correct its own
output without an external oracle.

[unverified — check the paper] The abstract fixes the two ideas; the paper body was not
available to this implementation, so the rho schedule (here a linear ramp, :func:`scheduled_probability`),
the greedy default for yhat, and the RAC layout (marker tokens, loss on marker + reference) are
our reading, matching the project notes (NOTES-losses P49).
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from tokjax.logits._base import check_range
from tokjax.losses._next_token import METHODS, token_stats
from tokjax.losses._stats import check_token_ids, reduce_loss, shifted_completion_mask, token_count
from tokjax.losses.cut_cross_entropy import DEFAULT_BLOCK_SIZE
from tokjax.model.forward import Inputs, forward
from tokjax.model.ops import check_int_values

__all__ = [
    "SCHEDULES", "make_scheduled_sampling_loss", "mix_self_generated", "reference_answer_correction",
    "scheduled_probability", "scheduled_sampling_loss", "self_generated_tokens",
]

SCHEDULES = ("linear", "constant")
_F32 = jnp.float32


def scheduled_probability(step, *, max_prob=0.25, total_steps: int = 1000, warmup_steps: int = 0,
                          kind: str = "linear") -> jax.Array:
    """Returns float32 rho_k: 0 before ``warmup_steps``, then a linear ramp reaching ``max_prob`` at ``total_steps``
    (``kind="linear"``), or ``max_prob`` throughout (``"constant"``). ``step`` may be a traced int."""
    if kind not in SCHEDULES:
        raise ValueError(f"kind must be one of {SCHEDULES}, got {kind!r}")
    check_range(max_prob, "max_prob", lo=0.0, hi=1.0)
    if not (isinstance(total_steps, int) and isinstance(warmup_steps, int) and 0 <= warmup_steps < total_steps):
        raise ValueError(f"need ints 0 <= warmup_steps < total_steps, got warmup_steps={warmup_steps!r}, "
                         f"total_steps={total_steps!r}")
    max_prob = jnp.asarray(max_prob, _F32)
    if kind == "constant":
        return max_prob
    frac = (jnp.asarray(step, _F32) - warmup_steps) / float(total_steps - warmup_steps)
    return max_prob * jnp.clip(frac, 0.0, 1.0)


def _segments(segment_ids, shape) -> jax.Array | None:
    if segment_ids is None:
        return None
    seg = jnp.asarray(segment_ids)
    if seg.shape != shape:
        raise ValueError(f"segment_ids must be [B, T+1]={shape} like tokens, got {tuple(seg.shape)}")
    return seg


def _replaceable(tokens, prompt_lengths, lengths, segment_ids) -> jax.Array:
    """Returns bool [B, S]: the input positions BASH may replace, i.e. those whose token is a counted target
    (completion, not padding, and not the first token of a packed document: its "own token" would be
    predicted across the document boundary). Position 0 is never one."""
    mask = shifted_completion_mask(tokens, prompt_lengths, lengths)
    if segment_ids is not None:
        mask &= segment_ids[:, 1:] == segment_ids[:, :-1]
    return jnp.concatenate([jnp.zeros((tokens.shape[0], 1), bool), mask], axis=1)


def self_generated_tokens(params, cfg, tokens: jax.Array, *, rng: jax.Array | None = None, sample: bool = False,
                          temperature=1.0, segment_ids: jax.Array | None = None) -> jax.Array:
    """Returns int32 [B, S] the model's own tokens under teacher forcing (no gradient): position 0 copies
    ``tokens[:, 0]`` and position t+1 is argmax p(. | tokens[:, :t+1]) (or a sample at ``temperature``, a runtime
    scalar > 0, when ``sample``; needs ``rng``). ``segment_ids`` [B, S] keeps attention within packed documents."""
    tokens = check_token_ids(tokens, next_token=True)
    seg = _segments(segment_ids, tokens.shape)
    if sample:
        if rng is None:
            raise ValueError("sample=True needs an rng key")
        check_range(temperature, "temperature", lo=0.0, lo_open=True)
    p = jax.lax.stop_gradient(params)
    logits = forward(p, cfg, Inputs(tokens=tokens[:, :-1], segment_ids=None if seg is None else seg[:, :-1])
                     ).logits.astype(_F32)
    if sample:
        nxt = jax.random.categorical(rng, logits / jnp.asarray(temperature, _F32), axis=-1)
    else:
        nxt = jnp.argmax(logits, axis=-1)
    return jnp.concatenate([tokens[:, :1], nxt.astype(tokens.dtype)], axis=1).astype(jnp.int32)


def mix_self_generated(tokens: jax.Array, generated: jax.Array, prob, rng: jax.Array, *,
                       prompt_lengths: jax.Array | None = None, lengths: jax.Array | None = None,
                       segment_ids: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    """Returns (mixed int32 [B, S], replaced bool [B, S]): each completion token of ``tokens`` (position p with
    ``max(prompt_lengths, 1) <= p < lengths``) is swapped for ``generated`` with probability ``prob`` (a runtime
    scalar or [B] array in [0, 1]); prompt, padding, position 0 and, with ``segment_ids`` [B, S], the first token
    of each packed document are never replaced (P49, BASH)."""
    tokens = check_token_ids(tokens, next_token=True)
    seg = _segments(segment_ids, tokens.shape)
    generated = jnp.asarray(generated)
    if generated.shape != tokens.shape:
        raise ValueError(f"generated shape {tuple(generated.shape)} must equal tokens shape {tuple(tokens.shape)}")
    check_range(prob, "prob", lo=0.0, hi=1.0)
    B, S = tokens.shape
    prob = jnp.asarray(prob, _F32)
    if prob.ndim not in (0, 1) or (prob.ndim == 1 and prob.shape != (B,)):
        raise ValueError(f"prob must be a scalar or [B={B}], got shape {tuple(prob.shape)}")
    eligible = _replaceable(tokens, prompt_lengths, lengths, seg)
    p = prob if prob.ndim == 0 else prob[:, None]
    replaced = eligible & (jax.random.uniform(rng, (B, S)) < p)
    return jnp.where(replaced, generated.astype(tokens.dtype), tokens).astype(jnp.int32), replaced


def scheduled_sampling_loss(
    params, cfg, batch: dict, rng: jax.Array | None = None, *, prob=None, sample: bool = False, temperature=1.0,
    method: str = "cut", block_size: int = DEFAULT_BLOCK_SIZE, reduction: str = "token_mean",
) -> tuple[jax.Array, dict]:
    """Returns (loss, metrics) of P49 batch-scheduled sampling: the ground-truth next-token NLL given inputs whose
    completion tokens were replaced, with probability ``prob`` (else ``batch["ss_prob"]``; a runtime scalar or
    [B]), by the model's own teacher-forced tokens.

    ``batch`` as :func:`tokjax.losses.next_token_loss` (``tokens`` [B, T+1], optional ``prompt_lengths``,
    ``lengths``, ``mask``, ``weights``, ``segment_ids`` [B, T+1] for packed documents, ``normalizer``); the
    model reads the mixed inputs and is scored on the ground-truth targets through
    :func:`tokjax.losses.token_stats` (``inputs``/``targets`` form). ``rng`` draws the replacements
    (required). ``prob = 0`` is exactly the plain next-token loss. Metrics: ``loss``, ``nll``,
    ``token_count``, ``replaced_frac`` (of counted targets whose input was replaced), ``gen_match``
    (fraction of replaceable positions where the model's own token equals the ground truth).
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if not isinstance(batch, dict) or "tokens" not in batch:
        raise ValueError("batch must be a dict with 'tokens' int [B, T+1]")
    if rng is None:
        raise ValueError("scheduled_sampling_loss needs an rng key to draw which inputs are replaced")
    if prob is None:
        if batch.get("ss_prob") is None:
            raise ValueError("pass prob= or put the schedule probability in batch['ss_prob']")
        prob = batch["ss_prob"]
    tokens = check_token_ids(batch["tokens"], "batch['tokens']", next_token=True)
    seg = _segments(batch.get("segment_ids"), tokens.shape)
    pl, lengths = batch.get("prompt_lengths"), batch.get("lengths")
    k_gen, k_mix = jax.random.split(rng)
    gen = self_generated_tokens(params, cfg, tokens, rng=k_gen, sample=sample, temperature=temperature,
                                segment_ids=seg)
    mixed, replaced = mix_self_generated(tokens, gen, prob, k_mix, prompt_lengths=pl, lengths=lengths,
                                         segment_ids=seg)
    # The model reads the mixed row but is scored on the ground truth: token_stats' inputs/targets form.
    # Masks (prompt, padding, per-token mask, document boundaries) and weights are token_stats' own.
    scored = {"inputs": mixed[:, :-1], "targets": tokens[:, 1:]}
    scored.update({k: batch[k] for k in ("prompt_lengths", "lengths", "mask", "weights", "segment_ids")
                   if batch.get(k) is not None})
    stats = token_stats(params, cfg, scored, method=method, block_size=block_size)
    loss = reduce_loss(stats, reduction, normalizer=batch.get("normalizer"))
    mask = stats.mask
    n = token_count(mask)
    safe = jnp.maximum(n, 1.0)
    elig = _replaceable(tokens, pl, lengths, seg)
    metrics = {
        "loss": loss,
        "nll": jax.lax.stop_gradient(jnp.sum(jnp.where(mask, -stats.logp, 0.0)) / safe),
        "token_count": n,
        "replaced_frac": jnp.sum(replaced[:, :-1] & mask) / safe,  # input t is what target t reads
        "gen_match": jnp.sum(elig & (gen == tokens)) / jnp.maximum(jnp.sum(elig), 1.0),
    }
    return loss, metrics


def make_scheduled_sampling_loss(**options) -> Callable:
    """Returns ``loss_fn(params, cfg, batch, rng) -> (loss, metrics)``: :func:`scheduled_sampling_loss` with
    ``options`` fixed (``prob`` then acts as the default when the batch has no ``ss_prob``)."""
    bad = set(options) - {"prob", "sample", "temperature", "method", "block_size", "reduction"}
    if bad:
        raise ValueError(f"unknown scheduled_sampling_loss options {sorted(bad)}")
    if options.get("method", "cut") not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {options['method']!r}")
    if "prob" in options:
        check_range(options["prob"], "prob", lo=0.0, hi=1.0)
    default_prob = options.pop("prob", None)

    def loss_fn(params, cfg, batch, rng=None):
        prob = batch.get("ss_prob", default_prob) if isinstance(batch, dict) else default_prob
        return scheduled_sampling_loss(params, cfg, batch, rng, prob=prob, **options)

    return loss_fn


# ------------------------------------------------------------------------------------ RAC
def _lengths(arr, B: int, W: int, name: str) -> jax.Array:
    a = jnp.asarray(arr)
    if a.shape != (B,) or not jnp.issubdtype(a.dtype, jnp.integer):
        raise ValueError(f"{name} must be int [B={B}], got shape {tuple(a.shape)} dtype {a.dtype}")
    check_int_values(arr, name, 0, W, hi_closed=True)
    return a.astype(jnp.int32)


def reference_answer_correction(
    prompt: jax.Array, prompt_lengths: jax.Array, generated: jax.Array, generated_lengths: jax.Array,
    reference: jax.Array, reference_lengths: jax.Array, marker, *, pad_id: int = 0, train_marker: bool = True,
) -> dict:
    """Returns the RAC training batch (P49) ``{"tokens", "prompt_lengths", "lengths"}`` for ``next_token_loss``.

    Row b is ``prompt[b, :P_b] + generated[b, :G_b] + marker + reference[b, :R_b]`` left-aligned in
    ``[B, P + G + M + R]`` and padded with ``pad_id``; its ``prompt_lengths`` = P_b + G_b (the loss
    covers the marker and the reference; with ``train_marker=False`` only the reference). All inputs
    are padded int arrays [B, width] with their per-row lengths; ``marker`` is a 1-D int sequence
    (may be empty). Pure and jit-compatible.
    """
    prompt, generated, reference = (jnp.asarray(x) for x in (prompt, generated, reference))
    for name, x in (("prompt", prompt), ("generated", generated), ("reference", reference)):
        if x.ndim != 2 or not jnp.issubdtype(x.dtype, jnp.integer):
            raise ValueError(f"{name} must be int [B, width], got shape {tuple(x.shape)} dtype {x.dtype}")
    B = prompt.shape[0]
    if generated.shape[0] != B or reference.shape[0] != B:
        raise ValueError(f"prompt, generated and reference need the same batch size, got {prompt.shape[0]}, "
                         f"{generated.shape[0]}, {reference.shape[0]}")
    marker = jnp.asarray(marker, jnp.int32).reshape(-1)
    M = marker.shape[0]
    pl = _lengths(prompt_lengths, B, prompt.shape[1], "prompt_lengths")
    gl = _lengths(generated_lengths, B, generated.shape[1], "generated_lengths")
    rl = _lengths(reference_lengths, B, reference.shape[1], "reference_lengths")
    width = prompt.shape[1] + generated.shape[1] + M + reference.shape[1]
    out = jnp.full((B, width), pad_id, jnp.int32)
    rows = jnp.arange(B)[:, None]

    def place(out, src, n, offset):
        j = jnp.arange(src.shape[1])[None, :]
        dst = jnp.where(j < n[:, None], offset[:, None] + j, width)  # width = out of range: dropped
        return out.at[rows, dst].set(src.astype(jnp.int32), mode="drop")

    out = place(out, prompt, pl, jnp.zeros((B,), jnp.int32))
    out = place(out, generated, gl, pl)
    out = place(out, jnp.broadcast_to(marker[None, :], (B, M)), jnp.full((B,), M, jnp.int32), pl + gl)
    out = place(out, reference, rl, pl + gl + M)
    start = pl + gl + (0 if train_marker else M)
    return {"tokens": out, "prompt_lengths": start, "lengths": pl + gl + M + rl}
