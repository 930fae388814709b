"""Next-token feature attribution baselines and the soft faithfulness metrics Soft-NS / Soft-NC (P18's evaluation).

Every attribution returns importance float32 [T] for one prompt ``tokens`` [T] and a ``target`` token
(the greedy next token by default), normalised by a softmax over positions as the official ReAGent
evaluation does for every method (``casszhao/ReAGent``, ``importance_score_evaluator/{grad,attention}.py``):

* :func:`random_importance` softmax(U(0, 1)) (the official random baseline);
* :func:`attention_importance` the last query's attention, mean over heads, in the last layer
  (``kind="last"``) or averaged over layers (``"all"``), read from the forward's ``attn_probs`` tap;
* :func:`gradient_norm` ||d log p(y) / d e_i||; :func:`input_x_gradient` sum_j e_ij d log p(y)/d e_ij;
* :func:`integrated_gradients` IG from the zero embedding, ``steps`` Riemann midpoints;
* :func:`leave_one_out` p(y | x) - p(y | x with e_i zeroed).

Soft-NS / Soft-NC, as the official evaluators compute them (``src/evaluation/evaluator/soft_norm_*.py``,
``base_masking.py``): q = the model's next-token distribution on x; a *soft-masked* input keeps each
embedding feature of token i independently with probability a_i (zero otherwise);
d(p, q) = sum_v (sqrt p_v - sqrt q_v)^2 / sqrt 2.

    S(a)     = 1 - d(p(x kept with a), q)          C(a) = d(p(x kept with 1 - a), q)
    S0       = 1 - d(p(all embeddings zero), q)    (the official SufficiencyEvaluator with rationale ratio 0)
    Soft-NS  = max(0, S(a) - S0) / (1 - S0)        Soft-NC = C(a) / (1 - S0)

Higher is better for both. The official code draws one mask per prompt; ``samples`` averages several.
"""

from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from tokjax.model.forward import Inputs, Model, Taps, embed, forward, unembed

__all__ = [
    "ATTRIBUTIONS", "attention_importance", "attribute", "gradient_norm", "hellinger_sq", "input_x_gradient",
    "integrated_gradients", "last_logits_fn", "leave_one_out", "model_apply", "random_importance", "soft_metrics",
    "soft_nc", "soft_ns",
]

_F32 = jnp.float32
ATTRIBUTIONS = ("random", "attention", "gradient_norm", "input_x_gradient", "integrated_gradients", "leave_one_out")


# ------------------------------------------------------------------------------ model access
@functools.lru_cache(maxsize=None)
def _cfg_apply(cfg):
    def apply(params, batch):
        h = forward(params, cfg, Inputs(tokens=batch), compute_logits=False).hidden[:, -1:]
        return unembed(params, cfg, h)[:, 0]
    return apply


@functools.lru_cache(maxsize=None)
def _fn_apply(fn):
    def apply(_params, batch):
        return fn(batch)
    return apply


def model_apply(model) -> tuple[Callable, object, int]:
    """Returns (apply(params, tokens [C, T]) -> next-token logits [C, V], params, V) for a tokjax Model, a
    (params, cfg) pair, or a plain function tokens [C, T] -> logits [C, V] (params None). ``apply`` is
    cached per config / function, so jitted callers compile once per model shape."""
    if isinstance(model, Model):
        return _cfg_apply(model.cfg), model.params, model.cfg.vocab_size
    if isinstance(model, (tuple, list)) and len(model) == 2 and not callable(model[0]):
        params, cfg = model
        return _cfg_apply(cfg), params, cfg.vocab_size
    if callable(model):
        out = model(jnp.zeros((1, 1), jnp.int32))
        if jnp.ndim(out) != 2:
            raise ValueError(f"a model function must map tokens [C, T] to next-token logits [C, V], got shape "
                             f"{jnp.shape(out)}")
        return _fn_apply(model), None, int(out.shape[-1])
    raise ValueError(f"model must be a tokjax Model, a (params, cfg) pair or a function tokens -> logits, got "
                     f"{type(model).__name__}")


def last_logits_fn(model) -> tuple[Callable, int]:
    """Returns (fn(tokens [C, T]) -> next-token logits [C, V], V) with the model's params bound."""
    apply, params, V = model_apply(model)
    return (lambda batch: apply(params, batch)), V


def _tokjax(model, who: str):
    if isinstance(model, Model):
        return model.params, model.cfg
    if isinstance(model, (tuple, list)) and len(model) == 2 and not callable(model[0]):
        return model[0], model[1]
    raise ValueError(f"{who} needs a tokjax Model or (params, cfg) pair (it reads embeddings), got "
                     f"{type(model).__name__}")


def _check_prompt(tokens, V: int) -> jax.Array:
    t = jnp.asarray(tokens)
    if t.ndim == 2 and t.shape[0] == 1:
        t = t[0]
    if t.ndim != 1 or t.shape[0] < 1 or not jnp.issubdtype(t.dtype, jnp.integer):
        raise ValueError(f"tokens must be one int sequence [T] (or [1, T]) with T >= 1, got shape {t.shape}")
    a = np.asarray(t)
    if a.min() < 0 or a.max() >= V:
        raise ValueError(f"token ids must lie in [0, {V}), got [{a.min()}, {a.max()}]")
    return t.astype(jnp.int32)


@functools.lru_cache(maxsize=None)
def _embeds_fns(cfg):
    def probs(params, e):  # e [C, T, D] -> next-token probs [C, V]
        h = forward(params, cfg, Inputs(embeds=e), compute_logits=False).hidden[:, -1:]
        return jax.nn.softmax(unembed(params, cfg, h)[:, 0].astype(_F32), axis=-1)

    def logp_target(params, e, target):  # e [T, D] -> log p(target)
        h = forward(params, cfg, Inputs(embeds=e[None]), compute_logits=False).hidden[:, -1:]
        return jax.nn.log_softmax(unembed(params, cfg, h)[0, 0].astype(_F32))[target]

    return jax.jit(probs), jax.jit(jax.grad(logp_target, argnums=1)), jax.jit(logp_target)


def _setup(model, tokens, target, who):
    params, cfg = _tokjax(model, who)
    tokens = _check_prompt(tokens, cfg.vocab_size)
    probs, grad, _ = _embeds_fns(cfg)
    e = embed(params, cfg, tokens[None])[0]
    if target is None:
        target = jnp.argmax(probs(params, e[None])[0])
    return params, cfg, tokens, jnp.asarray(target, jnp.int32), e, probs, grad


# ---------------------------------------------------------------------------------- baselines
def random_importance(T: int, key) -> jax.Array:
    """Returns softmax(U(0, 1)) [T] (the official random baseline)."""
    return jax.nn.softmax(jax.random.uniform(key, (T,), _F32))


def attention_importance(model, tokens, target=None, *, kind: str = "last") -> jax.Array:
    """Returns softmax of the last query's attention (mean over heads) [T]: last layer or mean over layers."""
    params, cfg = _tokjax(model, "attention_importance")
    tokens = _check_prompt(tokens, cfg.vocab_size)
    if kind not in ("last", "all"):
        raise ValueError(f"kind must be 'last' or 'all', got {kind!r}")
    layers = (cfg.n_layers - 1,) if kind == "last" else "all"
    p = forward(params, cfg, Inputs(tokens=tokens[None]), compute_logits=False,
                taps=Taps(layers=layers, sites=("attn_probs",))).taps["attn_probs"]  # [L, 1, H, T, T]
    return jax.nn.softmax(jnp.mean(p[:, 0, :, -1, :], axis=(0, 1)))


def gradient_norm(model, tokens, target=None) -> jax.Array:
    """Returns softmax_i ||d log p(target) / d e_i||_2 [T]."""
    params, _, _, target, e, _, grad = _setup(model, tokens, target, "gradient_norm")
    return jax.nn.softmax(jnp.linalg.norm(grad(params, e, target).astype(_F32), axis=-1))


def input_x_gradient(model, tokens, target=None) -> jax.Array:
    """Returns softmax_i sum_j e_ij d log p(target) / d e_ij [T] (the official "signed" gradient)."""
    params, _, _, target, e, _, grad = _setup(model, tokens, target, "input_x_gradient")
    return jax.nn.softmax(jnp.sum(grad(params, e, target) * e, axis=-1).astype(_F32))


def integrated_gradients(model, tokens, target=None, *, steps: int = 16) -> jax.Array:
    """Returns softmax_i sum_j e_ij * mean_k d log p / d e_ij at (k + 1/2)/steps * e (zero baseline) [T]."""
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an int >= 1, got {steps!r}")
    params, _, _, target, e, _, grad = _setup(model, tokens, target, "integrated_gradients")
    total = jnp.zeros_like(e, _F32)
    for k in range(steps):
        total = total + grad(params, e * ((k + 0.5) / steps), target).astype(_F32)
    return jax.nn.softmax(jnp.sum(e * total / steps, axis=-1))


def leave_one_out(model, tokens, target=None) -> jax.Array:
    """Returns softmax_i [p(target | x) - p(target | x with e_i zeroed)] [T]."""
    params, _, tokens, target, e, probs, _ = _setup(model, tokens, target, "leave_one_out")
    T = e.shape[0]
    p0 = probs(params, e[None])[0, target]
    masked = e[None] * (1.0 - jnp.eye(T, dtype=e.dtype))[:, :, None]  # row i: token i zeroed
    return jax.nn.softmax(p0 - probs(params, masked)[:, target])


def attribute(model, tokens, method: str, target=None, *, key=None) -> jax.Array:
    """Returns the importance [T] of one of :data:`ATTRIBUTIONS` (``reagent`` lives in tokjax.analysis.reagent)."""
    if method == "random":
        T = _check_prompt(tokens, _tokjax(model, "attribute")[1].vocab_size).shape[0]
        return random_importance(T, jax.random.key(0) if key is None else key)
    fns = {"attention": attention_importance, "gradient_norm": gradient_norm, "input_x_gradient": input_x_gradient,
           "integrated_gradients": integrated_gradients, "leave_one_out": leave_one_out}
    if method not in fns:
        raise ValueError(f"method must be one of {ATTRIBUTIONS}, got {method!r}")
    return fns[method](model, tokens, target)


# ------------------------------------------------------------------------------ soft metrics
def hellinger_sq(p: jax.Array, q: jax.Array) -> jax.Array:
    """Returns sum_v (sqrt p_v - sqrt q_v)^2 / sqrt 2 over the last axis (the official evaluators' distance)."""
    return jnp.sum(jnp.square(jnp.sqrt(p) - jnp.sqrt(q)), axis=-1) / jnp.sqrt(2.0)


def soft_metrics(model, tokens, importance, *, key=None, samples: int = 1) -> dict:
    """Returns {"soft_ns", "soft_nc", "s0"} of ``importance`` [T] in [0, 1] for ``tokens`` [T] (see module doc).

    Each of ``samples`` draws keeps feature j of token i with probability importance[i] (Soft-S) and
    1 - importance[i] (Soft-C); the metrics average over the draws.
    """
    params, cfg = _tokjax(model, "soft_metrics")
    tokens = _check_prompt(tokens, cfg.vocab_size)
    a = jnp.asarray(importance, _F32)
    if a.shape != tokens.shape:
        raise ValueError(f"importance must be [T={tokens.shape[0]}] (one score per input token), got {a.shape}")
    if not bool(jnp.all(jnp.isfinite(a))) or bool(jnp.any((a < 0) | (a > 1))):
        raise ValueError("importance must be finite and lie in [0, 1] (keep probabilities per token)")
    if not isinstance(samples, int) or samples < 1:
        raise ValueError(f"samples must be an int >= 1, got {samples!r}")
    probs, _, _ = _embeds_fns(cfg)
    key = jax.random.key(0) if key is None else key
    e = embed(params, cfg, tokens[None])[0]
    q = probs(params, e[None])[0]
    u = jax.random.uniform(key, (2, samples) + e.shape)
    keep_s = (u[0] < a[:, None]).astype(e.dtype)
    keep_c = (u[1] < (1.0 - a)[:, None]).astype(e.dtype)
    batch = jnp.concatenate([e[None] * keep_s, e[None] * keep_c, jnp.zeros_like(e)[None]], axis=0)
    p = probs(params, batch)
    d = hellinger_sq(p, q[None])
    suff = 1.0 - d[:samples]
    comp = d[samples:2 * samples]
    s0 = 1.0 - d[-1]
    den = jnp.maximum(1.0 - s0, 1e-12)
    return {"soft_ns": jnp.mean(jnp.maximum(0.0, suff - s0) / den), "soft_nc": jnp.mean(comp / den), "s0": s0}


def soft_ns(model, tokens, importance, *, key=None, samples: int = 1) -> jax.Array:
    """Returns Soft-NS (soft normalised sufficiency) of ``importance`` [T] (see :func:`soft_metrics`)."""
    return soft_metrics(model, tokens, importance, key=key, samples=samples)["soft_ns"]


def soft_nc(model, tokens, importance, *, key=None, samples: int = 1) -> jax.Array:
    """Returns Soft-NC (soft normalised comprehensiveness) of ``importance`` [T] (see :func:`soft_metrics`)."""
    return soft_metrics(model, tokens, importance, key=key, samples=samples)["soft_nc"]
