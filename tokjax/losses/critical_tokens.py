"""Critical tokens and cDPO: token-weighted DPO from contrastive estimation (P17: *Critical Tokens Matter:
Token-Level Contrastive Estimation Enhances LLM's Reasoning Capability*, Lin et al., ICML 2025).

A *positive* model (the reference fine-tuned on its own correct answers) and a *negative* model
(fine-tuned on its incorrect ones) score each token of a rejected response by a contrastive
softmax over the whole vocabulary::

    s_t = softmax((1 + beta_c) z^+_t - beta_c z^-_t)[y_t]        beta_c = 1: softmax(2 z^+ - z^-)[y_t]   (P17)

A low ``s_t`` marks a *critical* token (the negative model likes it much more than the positive one).
cDPO then runs token-weighted DPO (:func:`tokjax.losses.dpo.dpo_per_pair`) with weight ``1 - s_t`` on
each rejected token and 1 on every chosen token (``only_neg=True``)::

    L = -log sigmoid( beta [ sum_t Delta^w_t - sum_t (1 - s_t) Delta^l_t ] )                          (P17 cDPO)

Checked against the official code (chenzhiling9954/Critical-Tokens-Matter): ``src/pipeline.py``
``calculate_ce_score`` computes ``cd_logits = (1 + 1) * pos_logits - 1 * neg_logits``, a plain softmax
over the vocabulary and the target's probability, with no further normalisation; ``src/train/
train_cdpo.py`` multiplies the rejected per-token log-ratios by ``1 - ce_prob`` and, with
``only_neg``, leaves the chosen ones unweighted; loss TRL sigmoid with ``beta`` (0.1 in its config).

The scores never materialise [N, V] logits: the positions are processed in chunks of ``chunk``
tokens (a [chunk, V] block of each model's logits at a time), as a lax.map.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from tokjax.logits._base import check_range

__all__ = ["cdpo_weights", "contrastive_scores_from_hidden", "contrastive_token_scores", "make_cdpo_loss"]

_F32 = jnp.float32
DEFAULT_CHUNK = 256


def contrastive_scores_from_hidden(h_pos, head_pos, h_neg, head_neg, labels, *, beta_c=1.0,
                                   chunk: int = DEFAULT_CHUNK, layout_pos: str = "dv",
                                   layout_neg: str = "dv") -> jax.Array:
    """Returns float32 [N] ``softmax((1 + beta_c) h_pos W_pos - beta_c h_neg W_neg)[labels]`` (P17), no gradient.

    ``h_pos`` / ``h_neg`` [N, D+] / [N, D-] final-normed hidden states, ``head_*`` the output matrix
    ([D, V] for layout "dv", the tied [V, D] embedding for "vd"); both heads must have the same V.
    Rows are processed ``chunk`` at a time, so at most [chunk, V] logits exist at once.
    """
    check_range(beta_c, "beta_c", lo=0.0)
    if not isinstance(chunk, int) or isinstance(chunk, bool) or chunk < 1:
        raise ValueError(f"chunk must be an int >= 1 (token positions per block), got {chunk!r}")
    for lay in (layout_pos, layout_neg):
        if lay not in ("dv", "vd"):
            raise ValueError(f"layout must be 'dv' ([D, V]) or 'vd' ([V, D]), got {lay!r}")
    wp = head_pos if layout_pos == "dv" else head_pos.T
    wn = head_neg if layout_neg == "dv" else head_neg.T
    if wp.shape[1] != wn.shape[1]:
        raise ValueError(f"the positive and negative models must share the vocabulary, got V={wp.shape[1]} and "
                         f"V={wn.shape[1]}")
    labels = jnp.asarray(labels)
    N = labels.shape[0]
    if h_pos.shape != (N, wp.shape[0]) or h_neg.shape != (N, wn.shape[0]):
        raise ValueError(f"hidden states must be [N={N}, D] matching their heads, got {tuple(h_pos.shape)} and "
                         f"{tuple(h_neg.shape)}")
    bc = jnp.asarray(beta_c, _F32)
    nb = -(-N // chunk)
    pad = nb * chunk - N
    hp = jnp.pad(jax.lax.stop_gradient(h_pos).astype(_F32), ((0, pad), (0, 0))).reshape(nb, chunk, -1)
    hn = jnp.pad(jax.lax.stop_gradient(h_neg).astype(_F32), ((0, pad), (0, 0))).reshape(nb, chunk, -1)
    lb = jnp.pad(labels, (0, pad)).reshape(nb, chunk)
    wp32, wn32 = jax.lax.stop_gradient(wp).astype(_F32), jax.lax.stop_gradient(wn).astype(_F32)

    def block(args):
        a, b, y = args
        c = (1.0 + bc) * (a @ wp32) - bc * (b @ wn32)  # [chunk, V]
        cy = jnp.take_along_axis(c, y[:, None], axis=-1)[:, 0]
        return jnp.exp(cy - jax.nn.logsumexp(c, axis=-1))

    return jax.lax.map(block, (hp, hn, lb)).reshape(-1)[:N]


def _hidden(params, cfg, tokens):
    from tokjax.model.forward import Inputs, forward, head_matrix

    out = forward(jax.lax.stop_gradient(params), cfg, Inputs(tokens=tokens[:, :-1]), compute_logits=False)
    w, layout = head_matrix(params, cfg)
    return out.hidden, jax.lax.stop_gradient(w), layout


def contrastive_token_scores(positive, negative, tokens, *, beta_c=1.0, chunk: int = DEFAULT_CHUNK) -> jax.Array:
    """Returns float32 [B, T] P17 contrastive scores ``s_t`` of ``tokens[:, t+1]`` given ``tokens[:, :t+1]``.

    ``positive`` / ``negative``: (params, cfg) pairs (or Models) with the same vocabulary; ``tokens``
    int [B, T+1]. No gradient flows into either model. Score the response positions you need (e.g.
    the rejected response's targets); the others are computed too and can be ignored.
    """
    from tokjax.losses._distill import check_model_pair

    (pp, pc), (npar, nc) = check_model_pair(positive, "positive"), check_model_pair(negative, "negative")
    if pc.vocab_size != nc.vocab_size:
        raise ValueError(f"the positive and negative models must share the vocabulary, got vocab_size "
                         f"{pc.vocab_size} and {nc.vocab_size}")
    tokens = jnp.asarray(tokens)
    if tokens.ndim != 2 or tokens.shape[1] < 2:
        raise ValueError(f"tokens must be int [batch, seq+1] with seq+1 >= 2, got shape {tuple(tokens.shape)}")
    B, T = tokens.shape[0], tokens.shape[1] - 1
    hp, wp, lp = _hidden(pp, pc, tokens)
    hn, wn, ln = _hidden(npar, nc, tokens)
    s = contrastive_scores_from_hidden(hp.reshape(B * T, -1), wp, hn.reshape(B * T, -1), wn,
                                       tokens[:, 1:].reshape(-1), beta_c=beta_c, chunk=chunk, layout_pos=lp,
                                       layout_neg=ln)
    return s.reshape(B, T)


def cdpo_weights(scores, n_pairs: int | None = None) -> jax.Array:
    """Returns float32 [2B, T] cDPO weights: 1 on the B chosen rows, ``1 - s_t`` on the B rejected rows (P17,
    ``only_neg``), under stop-gradient. ``scores`` [2B, T] (chosen rows first; their scores are unused)
    or [B, T] scores of the rejected rows only (then ``n_pairs`` may be omitted)."""
    s = jnp.asarray(scores)
    if s.ndim != 2:
        raise ValueError(f"scores must be [2B, T] (chosen rows then rejected rows) or [B, T], got {tuple(s.shape)}")
    if not isinstance(s, jax.core.Tracer):
        import numpy as np

        a = np.asarray(s, np.float64)
        if np.any(~np.isfinite(a)) or np.any(a < 0) or np.any(a > 1):
            raise ValueError("scores must be probabilities in [0, 1] (contrastive_token_scores)")
    s = jax.lax.stop_gradient(s.astype(_F32))
    if n_pairs is None or s.shape[0] == n_pairs:
        rej = s
    elif s.shape[0] == 2 * n_pairs:
        rej = s[n_pairs:]
    else:
        raise ValueError(f"scores must have B={n_pairs} or 2B={2 * n_pairs} rows, got {s.shape[0]}")
    return jnp.concatenate([jnp.ones_like(rej), 1.0 - rej], axis=0)


def make_cdpo_loss(*, beta: float = 0.1, ref: tuple | None = None, positive: tuple | None = None,
                   negative: tuple | None = None, beta_c: float = 1.0, chunk: int = DEFAULT_CHUNK,
                   method: str = "cut", block_size: int | None = None) -> Callable:
    """Returns the cDPO train loss ``(params, cfg, batch, rng) -> (loss, metrics)`` (P17).

    With ``positive`` and ``negative`` models the scores are computed in the loss (two extra no-grad
    forwards per step, chunked full-vocabulary softmax); with both None the batch carries the
    precomputed weights ``batch["weights"]`` [2B, T] (1 on chosen rows, ``1 - s_t`` on rejected;
    :func:`cdpo_weights`), which is how a fixed preference set should be trained (score once).
    Batch layout and metrics as :func:`tokjax.losses.dpo.make_dpo_loss`.
    """
    from tokjax.losses.cut_cross_entropy import DEFAULT_BLOCK_SIZE
    from tokjax.losses.dpo import make_dpo_loss

    if (positive is None) != (negative is None):
        raise ValueError("give both positive and negative models (or neither: batch['weights'] then holds the "
                         "cDPO weights)")
    check_range(beta_c, "beta_c", lo=0.0)
    token_weights = None
    if positive is not None:
        from tokjax.losses._distill import check_model_pair

        pc, nc = check_model_pair(positive, "positive")[1], check_model_pair(negative, "negative")[1]
        if pc.vocab_size != nc.vocab_size:
            raise ValueError(f"the positive and negative models must share the vocabulary, got vocab_size "
                             f"{pc.vocab_size} and {nc.vocab_size}")

        def token_weights(params, cfg, batch, stats):
            if cfg.vocab_size != pc.vocab_size:
                raise ValueError(f"the positive / negative models must share the policy's vocabulary, got vocab_size "
                                 f"{pc.vocab_size} and {cfg.vocab_size}")
            n = stats.logp.shape[0]
            if stats.logp.shape[1] + 1 != jnp.shape(batch["tokens"])[1]:
                raise ValueError("cDPO with in-loss scores needs batch['tokens'] [2B, T+1]")
            s = contrastive_token_scores(positive, negative, jnp.asarray(batch["tokens"])[n // 2:], beta_c=beta_c,
                                         chunk=chunk)
            return cdpo_weights(s)

    return make_dpo_loss(beta=beta, ref=ref, method=method,
                         block_size=DEFAULT_BLOCK_SIZE if block_size is None else block_size,
                         token_weights=token_weights)
