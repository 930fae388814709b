"""The residual-MLP token classifier shared by R2R's router (P46) and Think-at-Hard's decider (P58).

Both official repositories (thu-nics R2R ``router.py``, TaH ``MLPIterDecider``) use one design: the
per-token features (hidden states, optionally the token embedding, then the top-k logits) are
standardised, the top-k logits are projected to the hidden width and concatenated back,
``combined`` and ``input_proj`` map to the first block width, residual blocks
``skip(x) + Linear(GELU(Linear_{d -> expansion*d}(LN(x))))`` follow, then LayerNorm and one output
logit. Initialisation: Kaiming normal (fan in, gain sqrt 2), zero biases (official ``_init_weights``).
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["apply_classifier", "init_classifier"]


def _linear(key, n_in: int, n_out: int) -> dict:
    return {"w": jax.random.normal(key, (n_in, n_out), jnp.float32) * np.sqrt(2.0 / n_in),
            "b": jnp.zeros((n_out,), jnp.float32)}


def _layer_norm_params(n: int) -> dict:
    return {"scale": jnp.ones((n,), jnp.float32), "bias": jnp.zeros((n,), jnp.float32)}


def _ln(x, p, eps: float = 1e-5):
    mu = x.mean(-1, keepdims=True)
    var = jnp.square(x - mu).mean(-1, keepdims=True)
    return (x - mu) * jax.lax.rsqrt(var + eps) * p["scale"] + p["bias"]


def _dense(x, p):
    return x @ p["w"] + p["b"]


def init_classifier(key, *, features: int, hidden_size: int, combined_in: int, top_k: int, dims: Sequence[int],
                    expansion: int) -> dict:
    """Returns fresh classifier params (a dict pytree) with identity input standardisation ``norm``.

    ``features``: width of the concatenated raw features (the standardisation's size); ``combined_in``:
    width after the top-k logits are projected to ``hidden_size``; ``dims``: the blocks' widths
    (callers have checked ``dims`` and the sizes). Key order: each block's up, down, skip, then
    logits_proj, combined, input_proj, out (so a seed gives the same weights as before this module).
    """
    dims = tuple(int(d) for d in dims)
    keys = iter(jax.random.split(key, 4 + 3 * len(dims)))
    block_dims = dims + (dims[-1],)
    blocks = []
    for i in range(len(dims)):
        d_in, d_out = block_dims[i], block_dims[i + 1]
        b = {"ln": _layer_norm_params(d_in), "up": _linear(next(keys), d_in, d_in * expansion),
             "down": _linear(next(keys), d_in * expansion, d_out)}
        skip_key = next(keys)
        if d_in != d_out:
            b["skip"] = _linear(skip_key, d_in, d_out)
        blocks.append(b)
    return {
        "norm": {"mean": jnp.zeros((features,), jnp.float32), "std": jnp.ones((features,), jnp.float32)},
        "logits_proj": _linear(next(keys), top_k, hidden_size),
        "combined": _linear(next(keys), combined_in, dims[0]),
        "input_proj": _linear(next(keys), dims[0], dims[0]),
        "blocks": tuple(blocks),
        "out_ln": _layer_norm_params(dims[-1]),
        "out": _linear(next(keys), dims[-1], 1),
    }


def apply_classifier(params: dict, parts: Sequence[jax.Array], *, dropout=0.0, rng=None) -> jax.Array:
    """Returns [...]: the classifier's logit for feature groups ``parts`` (each [..., width]; the last is the
    top-k logits). Dropout (rate ``dropout``, inverted scaling) on the blocks' two linear outputs runs only
    when ``rng`` is given."""
    widths = [p.shape[-1] for p in parts]
    x = (jnp.concatenate(parts, -1) - params["norm"]["mean"]) / params["norm"]["std"]
    split = np.cumsum(widths)[:-1]
    parts = jnp.split(x, split, axis=-1)
    x = _dense(jnp.concatenate([*parts[:-1], _dense(parts[-1], params["logits_proj"])], -1), params["combined"])
    x = _dense(x, params["input_proj"])
    keys = None if rng is None else iter(jax.random.split(rng, 2 * len(params["blocks"])))

    def drop(y):
        if keys is None:
            return y
        keep = jax.random.uniform(next(keys), y.shape) >= dropout
        return jnp.where(keep, y / jnp.maximum(1.0 - dropout, 1e-6), 0.0)

    for b in params["blocks"]:
        y = drop(jax.nn.gelu(_dense(_ln(x, b["ln"]), b["up"]), approximate=False))
        y = drop(_dense(y, b["down"]))
        x = (_dense(x, b["skip"]) if "skip" in b else x) + y
    return _dense(_ln(x, params["out_ln"]), params["out"])[..., 0]
