"""A frozen trunk computed once, a trainable tail trained many times.

Training only the last ``n - k`` layers of an ``n``-layer model (``trainable=("last:N",)``) still runs the
frozen first ``k`` layers on every step's batch. When the same sequences come back epoch after epoch
(preference pairs, SFT rows), their residual stream after layer ``k`` does not change: compute it once with
:func:`trunk_states`, train the :func:`tail` model on it (the ``input_hidden`` batch key of
:func:`tokjax.losses.token_stats`), and put the trained layers back with :func:`with_tail`. The tail reads
the same values the whole model computes at layer ``k`` (same positions: RoPE's default 0..T-1 or the learned
table, already added in the trunk), so its log-probs equal the whole model's (tested to float32 rounding).
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np

from tokjax.model.forward import Inputs, Model, forward


def _check_split(model: Model, k) -> int:
    if not isinstance(model, Model):
        raise ValueError(f"model must be a tokjax Model, got {type(model).__name__}")
    n = model.cfg.n_layers
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 0 < int(k) < n:
        raise ValueError(f"the trunk's layer count k must be an int with 0 < k < n_layers={n}, got {k!r}")
    if not all(x.shape[0] == n for x in jax.tree.leaves(model.params["layers"])):
        raise ValueError("model.params['layers'] must be stacked [n_layers, ...] (see tokjax.model.stack_layers)")
    return int(k)


def tail(model: Model, k: int) -> Model:
    """Returns the model of layers ``k .. n-1`` of ``model`` (``cfg.n_layers = n - k``; embedding, final norm
    and head shared): it reads the residual stream entering layer ``k`` as ``Inputs(hidden=...)`` or a loss
    batch's ``input_hidden``."""
    k = _check_split(model, k)
    cfg = dataclasses.replace(model.cfg, n_layers=model.cfg.n_layers - k)
    layers = jax.tree.map(lambda x: x[k:], model.params["layers"])
    return Model({**model.params, "layers": layers}, cfg)


def with_tail(model: Model, tail_model: Model) -> Model:
    """Returns ``model`` with its last ``tail_model.cfg.n_layers`` layers (and the rest of its parameters:
    embedding, final norm, head) taken from ``tail_model`` (the inverse of :func:`tail` after training)."""
    n_tail = tail_model.cfg.n_layers if isinstance(tail_model, Model) else None
    if n_tail is None:
        raise ValueError(f"tail_model must be a tokjax Model, got {type(tail_model).__name__}")
    k = _check_split(model, model.cfg.n_layers - n_tail)
    if dataclasses.replace(model.cfg, n_layers=n_tail) != tail_model.cfg:
        raise ValueError("tail_model's config differs from model's in more than n_layers: not a tail of this model")
    same = jax.tree.structure(model.params["layers"]) == jax.tree.structure(tail_model.params["layers"])
    if not same:
        raise ValueError("tail_model's layer parameters have another structure than model's")
    layers = jax.tree.map(lambda full, t: full.at[k:].set(t.astype(full.dtype)), model.params["layers"],
                          tail_model.params["layers"])
    return Model({**tail_model.params, "layers": layers}, model.cfg)


_TRUNK_JIT: dict = {}


def trunk_states(model: Model, k: int, tokens, *, segment_ids=None, chunk: int = 16) -> np.ndarray:
    """Returns float32 [N, T, D] (numpy, on the host): the residual stream entering layer ``k`` at every
    position of ``tokens`` [N, T] (positions 0..T-1; ``segment_ids`` [N, T] for packed rows), computed
    ``chunk`` rows per forward. For a loss batch ``{"tokens": t}`` [N, T+1] pass ``t[:, :-1]``: those are the
    inputs that predict the targets."""
    k = _check_split(model, k)
    tokens = np.asarray(tokens)
    if tokens.ndim != 2 or not np.issubdtype(tokens.dtype, np.integer) or not len(tokens):
        raise ValueError(f"tokens must be a non-empty int [N, T] array, got {tokens.dtype} {tokens.shape}")
    if segment_ids is not None and np.shape(segment_ids) != tokens.shape:
        raise ValueError(f"segment_ids must be [N, T]={tokens.shape}, got {np.shape(segment_ids)}")
    if not isinstance(chunk, int) or chunk < 1:
        raise ValueError(f"chunk must be an int >= 1, got {chunk!r}")
    key = (model.cfg, k)
    fn = _TRUNK_JIT.get(key)
    if fn is None:
        fn = _TRUNK_JIT[key] = jax.jit(lambda p, t, s: forward(
            p, model.cfg, Inputs(tokens=t, segment_ids=s), layers=(0, k), compute_logits=False).hidden)
    out = []
    for i in range(0, len(tokens), chunk):
        t = tokens[i:i + chunk]
        s = None if segment_ids is None else np.asarray(segment_ids)[i:i + chunk]
        m = len(t)
        if m < chunk:  # one compiled shape: pad the last chunk with copies of its last row
            t = np.concatenate([t, np.repeat(t[-1:], chunk - m, 0)])
            s = None if s is None else np.concatenate([s, np.repeat(s[-1:], chunk - m, 0)])
        out.append(np.asarray(fn(model.params, t, s), np.float32)[:m])
    return np.concatenate(out)
