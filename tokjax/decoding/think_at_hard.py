"""P58 Think-at-Hard (TaH): "Selective Latent Iterations to Improve Reasoning Language Models".

Official code thu-nics/TaH (``tah/model/tah_model.py``, ``iter_decider.py``, ``input_updater.py``,
``adapter.py``, recipes ``script/recipes/qwen3_1.7/``). Every token gets one ordinary pass (iteration 0,
LoRA off); a light decider reads that pass and sends only the "hard" tokens through a second, latent
iteration (LoRA on) whose logits are added to the first::

    z0 = Base(E[x_p])                                   (iteration 0; hidden states of the tapped layers kept)
    d_p = sigmoid(decider(concat[h_l1 .. h_l4, W top100(z0)]))        (MLPIterDecider)
    if d_p > theta:                                    (theta 0.9 at evaluation; max_iter 2)
        e_p = sum_{j in top100(z0)} softmax(top100 values)_j E[j]     (TrivialUpdater, topk 100)
        dz  = Base_LoRA(e_p)  at position p, under duo-causal attention:
              slot (p, i) sees slot (p', i') iff p' <= p and i' <= i  (and slot (p', i') exists)
        z1 = z0 + dz                                    (AdditiveLogitsUpdater)
    emitted logits = z1 if iterated else z0

Training (official two steps): (1) oracle iteration labels -- position p is hard where the reference
model's argmax differs from the target token (``iter_count_strategy: mismatch``) -- decide the iterations
while the base and the LoRA adapter (r 32, alpha 64, all-linear; ``base_grad`` defaults to True, so the
base trains too) learn next-token prediction on the final logits (:func:`tah_loss`, registered "tah");
(2) base and LoRA frozen, the MLP decider learns the labels by BCE with pos_weight 5.4
(:func:`decider_loss`, registered "tah_decider").

Here: :func:`duo_causal_mask` (the [N, N] slot mask), :func:`tah_logits` (the training forward: one plain
pass, then one pass over 2T slots -- iteration-0 tokens and iteration-1 soft inputs at repeated positions --
with ``Explicit(duo_causal_mask)`` and the LoRA gate on the iteration-1 slots), :func:`oracle_labels`,
the decider (:func:`init_decider`, :func:`apply_decider`, :func:`decider_features`), and the decode strategy
:func:`think_at_hard` for ``tokjax.generate``, whose KV cache is keyed by iteration (slot p = iteration 0 of
position p, slot S + p = iteration 1; an iteration-1 slot is visible only where that position iterated).
The second pass runs under ``lax.cond`` only when some live row iterates. ``theta`` > 1 never iterates
(score <= 1): the strategy then emits the base model's tokens.

Deviations / unverified (say so wherever results are quoted):

* max_iter is 1 or 2 (the paper's default 2; the official code allows more).
* Prompt tokens are not iterated, except the last (it predicts the first generated token): the prefill
  runs iteration 0 only. Whether the official prefill runs the decider on prompt tokens is unverified.
* The decider reads the residual stream after each tapped layer (``resid_post``, not final-normed);
  the official reads HF ``hidden_states`` at indices (16, 20, 24, 28) of Qwen3-1.7B (the last of them final-normed).
  Default taps here: all layers when the model has <= 4, else 4 evenly spaced in its second half.
  Inputs are standardised by training-set statistics stored in the decider (``norm``; official
  ``normalize_input`` False).
* Gradient flows through the soft input into iteration 0 in :func:`tah_loss` (no detach; unverified).
* The decide rule is ``score > theta`` (official ``decision_scores > thr``); the oracle mode of the strategy
  iterates where iteration 0's argmax differs from a given reference continuation.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct

from tokjax.decoding._classifier_mlp import apply_classifier, init_classifier
from tokjax.decoding._state import DecodeState, Strategy, commit, ends_greedy
from tokjax.logits import LogitTransform, hparam, sample
from tokjax.model import Inputs, KVCache, ModelConfig, embed, forward
from tokjax.model.attention import Explicit
from tokjax.model.forward import Taps
from tokjax.model.lora import _check_lora, lora_forward

__all__ = ["DECIDER_TRAINABLE", "MODES", "DeciderFeatures", "TaHState", "ThinkAtHard", "apply_decider",
           "decider_batch", "decider_features", "decider_layers", "decider_loss", "decider_probs", "duo_causal_mask",
           "init_decider", "make_decider_loss", "make_tah_loss", "oracle_labels", "soft_input", "tah_data", "tah_logits", "tah_loss", "think_at_hard"]

MODES = ("decider", "always", "never", "oracle")
DECIDER_TRAINABLE = ("logits_proj", "combined", "input_proj", "blocks", "out_ln", "out")  # every key but "norm"


def _concrete(*xs) -> bool:
    return not any(isinstance(x, jax.core.Tracer) for x in xs)


def _check_k(k, V: int) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= V:
        raise ValueError(f"top_k must be an int in [1, vocab_size={V}], got {k!r}")
    return int(k)


# ----------------------------------------------------------------------------- pieces
def decider_layers(cfg: ModelConfig, n: int = 4) -> tuple[int, ...]:
    """Returns the default tapped layers of the decider: all when ``cfg.n_layers`` <= n, else n evenly spaced
    layers of the second half ending at the last (P58 taps 4 layers; official (16, 20, 24, 28) of 28)."""
    L = cfg.n_layers
    if L <= n:
        return tuple(range(L))
    return tuple(int(x) for x in np.unique(np.round(np.linspace(L // 2, L - 1, n)).astype(int)))


def soft_input(params, cfg: ModelConfig, logits: jax.Array, top_k: int = 100) -> jax.Array:
    """Returns the iteration-1 input e = sum_{j in top-k(z)} softmax(top-k values)_j E[j] as [..., D] (compute
    dtype; P58 TrivialUpdater with topk=100): a convex combination of k embedding rows."""
    V = cfg.vocab_size
    if logits.shape[-1] != V:
        raise ValueError(f"logits must be [..., vocab_size={V}], got {logits.shape}")
    k = _check_k(top_k, V)
    vals, ids = jax.lax.top_k(logits.astype(jnp.float32), k)
    w = jax.nn.softmax(vals, axis=-1)
    e = embed(params, cfg, ids).astype(jnp.float32)  # [..., k, D]
    return jnp.einsum("...k,...kd->...d", w, e).astype(cfg.dtype)


def duo_causal_mask(positions, iterations, valid=None) -> jax.Array:
    """Returns bool [B, N, N]: query slot q sees key slot s iff pos[s] <= pos[q], iter[s] <= iter[q] and valid[s].

    P58's duo-causal attention over (position, iteration) slots. ``positions``, ``iterations``: int [B, N]
    or [N]; ``valid`` bool [B, N] / [N] (default all): slots that exist (an iteration-1 slot of a token that
    did not iterate is invalid and seen by nobody). A query always sees its own slot when it is valid.
    """
    pos, it = jnp.asarray(positions), jnp.asarray(iterations)
    if pos.shape != it.shape or pos.ndim not in (1, 2):
        raise ValueError(f"positions and iterations must both be [B, N] or [N], got {pos.shape} and {it.shape}")
    if pos.ndim == 1:
        pos, it = pos[None], it[None]
    v = jnp.ones(pos.shape, bool) if valid is None else jnp.broadcast_to(jnp.asarray(valid, bool), pos.shape)
    return (pos[:, None, :] <= pos[:, :, None]) & (it[:, None, :] <= it[:, :, None]) & v[:, None, :]


def oracle_labels(base_logits, targets, mask=None) -> jax.Array:
    """Returns bool [B, T]: P58 oracle "hard" tokens, where the reference model's argmax differs from the target
    (``mask`` False positions are never hard). ``base_logits`` [B, T, V], ``targets`` int [B, T]."""
    z, y = jnp.asarray(base_logits), jnp.asarray(targets)
    if z.ndim != 3 or y.shape != z.shape[:2]:
        raise ValueError(f"need base_logits [B, T, V] and targets [B, T], got {z.shape} and {y.shape}")
    hard = jnp.argmax(z, -1) != y
    return hard if mask is None else hard & jnp.asarray(mask, bool)


def _duo_forward(params, cfg, lora, tokens, soft, iterate):
    """Returns logits [B, 2T, V] of the 2T-slot pass: iteration-0 tokens then iteration-1 soft inputs, repeated
    positions 0..T-1, duo-causal mask, LoRA gate on the iteration-1 slots (valid where ``iterate``)."""
    B, T = tokens.shape
    x = jnp.concatenate([embed(params, cfg, tokens), soft.astype(cfg.dtype)], axis=1)
    pos = jnp.tile(jnp.arange(T, dtype=jnp.int32), 2)
    its = jnp.repeat(jnp.arange(2, dtype=jnp.int32), T)
    valid = jnp.concatenate([jnp.ones((B, T), bool), jnp.asarray(iterate, bool)], axis=1)
    mask = Explicit(duo_causal_mask(jnp.broadcast_to(pos, (B, 2 * T)), jnp.broadcast_to(its, (B, 2 * T)), valid))
    gate = jnp.broadcast_to(its == 1, (B, 2 * T))
    return lora_forward(params, cfg, lora, Inputs(embeds=x, positions=jnp.broadcast_to(pos, (B, 2 * T))), gate,
                        mask=mask).logits


def tah_logits(params, cfg: ModelConfig, lora: dict, tokens, iterate, *, top_k: int = 100, soft=None):
    """Returns (final logits [B, T, V], z0, dz): P58's training forward of ``tokens`` [B, T] with the iterated
    positions ``iterate`` [B, T] bool (oracle labels in step 1, decider decisions otherwise).

    z0: a plain pass (LoRA off). dz: the iteration-1 pass -- one forward over 2T slots (the T tokens at
    iteration 0, then the soft inputs :func:`soft_input` (z0) at iteration 1, positions 0..T-1 repeated) under
    ``Explicit(duo_causal_mask)`` with the LoRA gate on the iteration-1 slots, read at those slots. Final =
    z0 + dz where iterated, else z0. ``soft`` [B, T, D] overrides the iteration-1 inputs (for tests).
    """
    tokens = jnp.asarray(tokens)
    if tokens.ndim != 2:
        raise ValueError(f"tokens must be [batch, seq], got shape {tokens.shape}")
    it = jnp.asarray(iterate)
    if it.shape != tokens.shape:
        raise ValueError(f"iterate must be bool [batch, seq] like tokens {tokens.shape}, got {it.shape}")
    T = tokens.shape[1]
    z0 = forward(params, cfg, Inputs(tokens=tokens)).logits
    if soft is None:
        soft = soft_input(params, cfg, z0, top_k)
    elif jnp.shape(soft) != tokens.shape + (cfg.d_model,):
        raise ValueError(f"soft must be [batch, seq, d_model={cfg.d_model}], got {jnp.shape(soft)}")
    dz = _duo_forward(params, cfg, lora, tokens, soft, it)[:, T:]
    return jnp.where(it.astype(bool)[..., None], z0 + dz, z0), z0, dz


def tah_loss(params, cfg, batch, rng=None, *, top_k: int = 100):
    """Returns (loss, metrics): P58 step-1 loss, the mean next-token cross-entropy of :func:`tah_logits`' final
    logits. ``params``: the model's params plus ``params["lora"]`` (tokjax.model.lora.init_lora); batch:
    ``tokens`` int [B, T+1], ``iterate`` bool [B, T] (iterated input positions: oracle labels, all True for
    the always-2-iteration baseline, all False for plain fine-tuning), optional ``mask`` [B, T] (targets in the
    loss); ``top_k`` (static) of the soft input, capped at the vocabulary. Metrics: loss, accuracy, iterated (fraction of masked)."""
    del rng
    if "lora" not in params:
        raise ValueError("tah_loss needs params['lora'] (an adapter from tokjax.model.lora.init_lora) next to the "
                         "model's params")
    toks = jnp.asarray(batch["tokens"])
    x, y = toks[:, :-1], toks[:, 1:]
    it = jnp.asarray(batch["iterate"], bool)
    m = jnp.asarray(batch.get("mask", jnp.ones(y.shape)), jnp.float32)
    if it.shape != y.shape or m.shape != y.shape:
        raise ValueError(f"batch['iterate'] and batch['mask'] must be [B, T] = {y.shape} (tokens are [B, T+1]), "
                         f"got {it.shape} and {m.shape}")
    z, _, _ = tah_logits(params, cfg, params["lora"], x, it, top_k=min(int(top_k), cfg.vocab_size))
    logp = jax.nn.log_softmax(z, -1)
    nll = -jnp.take_along_axis(logp, y[..., None], -1)[..., 0]
    n = jnp.maximum(m.sum(), 1.0)
    loss = (nll * m).sum() / n
    acc = ((jnp.argmax(z, -1) == y) * m).sum() / n
    return loss, {"loss": loss, "accuracy": acc, "iterated": (it * m).sum() / n}


# ----------------------------------------------------------------------------- decider
class DeciderFeatures(NamedTuple):
    """The decider's inputs for positions [...]: ``hidden`` [..., n_layers * D] (iteration 0's residual stream
    after each tapped layer, concatenated) and ``top_logits`` [..., k] (the k largest z0, descending)."""

    hidden: jax.Array
    top_logits: jax.Array


def decider_features(tapped, logits, *, top_k: int = 100) -> DeciderFeatures:
    """Returns DeciderFeatures from ``tapped`` [n, ..., D] (``Output.taps["resid_post"]`` of the tapped layers)
    and iteration 0's raw ``logits`` [..., V]."""
    tapped, logits = jnp.asarray(tapped), jnp.asarray(logits)
    if tapped.ndim < 2 or tapped.shape[1:-1] != logits.shape[:-1]:
        raise ValueError(f"tapped must be [n_layers, ..., D] with the logits' leading shape {logits.shape[:-1]}, "
                         f"got {tapped.shape}")
    k = _check_k(top_k, logits.shape[-1])
    h = jnp.moveaxis(tapped.astype(jnp.float32), 0, -2)
    h = h.reshape(h.shape[:-2] + (h.shape[-2] * h.shape[-1],))
    return DeciderFeatures(h, jax.lax.top_k(logits.astype(jnp.float32), k)[0])








def init_decider(key, hidden_size: int, n_layers: int, top_k: int = 100, *, dims: Sequence[int] = (64, 128, 64),
                 expansion: int = 4) -> dict:
    """Returns fresh P58 MLPIterDecider params: logits_proj (k -> D), combined ((n*D + D) -> dims[0]), input_proj,
    residual blocks ``skip(x) + Linear(GELU(Linear_{d->4d}(LN(x))))``, LN, Linear -> 1 logit, and identity input
    standardisation ``norm`` (official hidden dims (256, 512, 256); small defaults here for CPU)."""
    for name, v in (("hidden_size", hidden_size), ("n_layers", n_layers), ("top_k", top_k), ("expansion", expansion)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise ValueError(f"{name} must be an int >= 1, got {v!r}")
    dims = tuple(int(d) for d in dims)
    if not dims or min(dims) < 1:
        raise ValueError(f"dims must be a non-empty sequence of widths >= 1, got {dims}")
    return init_classifier(key, features=n_layers * hidden_size + top_k, hidden_size=hidden_size,
                           combined_in=(n_layers + 1) * hidden_size, top_k=top_k, dims=dims, expansion=expansion)


def _decider_sizes(dec) -> tuple[int, int]:
    """Returns (hidden features n*D, top_k) the decider reads."""
    k, D = dec["logits_proj"]["w"].shape
    return dec["combined"]["w"].shape[0] - D, k


def apply_decider(dec: dict, features: DeciderFeatures, *, dropout=0.0, rng=None) -> jax.Array:
    """Returns [...]: the decider's logit (P58 iterate probability = sigmoid of it). ``dropout`` needs ``rng``."""
    if not isinstance(features, DeciderFeatures):
        raise ValueError(f"features must be DeciderFeatures (see decider_features), got {type(features).__name__}")
    H, K = _decider_sizes(dec)
    h, z = (jnp.asarray(f, jnp.float32) for f in features)
    if h.shape[-1] != H or z.shape != h.shape[:-1] + (K,):
        raise ValueError(f"this decider reads hidden [..., {H}] and top_logits [..., {K}]; got {h.shape}, {z.shape}")
    if rng is None and _concrete(dropout) and float(np.asarray(dropout)) != 0.0:
        raise ValueError("dropout > 0 needs rng=")
    return apply_classifier(dec, (h, z), dropout=dropout, rng=rng)


def decider_probs(dec: dict, features: DeciderFeatures) -> jax.Array:
    """Returns [...]: sigmoid(decider(features)), the probability that the token should iterate."""
    return jax.nn.sigmoid(apply_decider(dec, features))


def decider_batch(features: DeciderFeatures, labels, *, pos_weight=5.4, dropout=0.0) -> dict:
    """Returns a :func:`decider_loss` batch dict (features [N, .], labels [N] in {0, 1}, runtime pos_weight, dropout)."""
    if not isinstance(features, DeciderFeatures):
        raise ValueError(f"features must be DeciderFeatures, got {type(features).__name__}")
    y = jnp.asarray(labels, jnp.float32)
    if y.ndim != 1 or any(f.ndim != 2 or f.shape[0] != y.shape[0] for f in features):
        raise ValueError(f"need features [N, .] and labels [N]; got {[f.shape for f in features]} and {y.shape}")
    if not float(pos_weight) > 0 or not 0.0 <= float(dropout) < 1.0:
        raise ValueError(f"need pos_weight > 0 and 0 <= dropout < 1, got {pos_weight}, {dropout}")
    return {"hidden": jnp.asarray(features.hidden, jnp.float32), "top_logits": jnp.asarray(features.top_logits, jnp.float32),
            "labels": y, "pos_weight": jnp.float32(pos_weight), "dropout": jnp.float32(dropout)}


def decider_loss(params, cfg, batch, rng=None):
    """Returns (loss, metrics): P58 step 2, mean_i w_i BCE(decider(x_i), label_i) with w_i = pos_weight (official
    5.4) for hard tokens, 1 otherwise. The train-loss signature (``cfg`` unused: the decider is no transformer)."""
    del cfg
    feats = DeciderFeatures(batch["hidden"], batch["top_logits"])
    drop = batch.get("dropout", 0.0)
    logits = apply_decider(params, feats, dropout=drop, rng=rng) if rng is not None else apply_decider(params, feats)
    y = batch["labels"]
    w = jnp.where(y > 0.5, batch.get("pos_weight", 5.4), 1.0)
    loss = jnp.mean(w * optax.sigmoid_binary_cross_entropy(logits, y))
    return loss, {"loss": loss, "accuracy": jnp.mean((logits >= 0) == (y > 0.5)), "positive_rate": jnp.mean(logits >= 0)}


def tah_data(params, cfg: ModelConfig, tokens, *, layers: Sequence[int] | None = None, top_k: int = 100,
             batch_size: int = 32) -> tuple[DeciderFeatures, np.ndarray]:
    """Returns (DeciderFeatures [B, T, .], iteration-0 argmax [B, T]) of ``tokens`` [B, T] (host numpy): what the
    decider sees at every position (iteration 0 = the plain model, LoRA off), computed in chunks of ``batch_size``."""
    tokens = np.asarray(tokens)
    if tokens.ndim != 2 or tokens.dtype.kind not in "iu":
        raise ValueError(f"tokens must be an integer [batch, seq] array, got {tokens.dtype} {tokens.shape}")
    layers = decider_layers(cfg) if layers is None else tuple(int(i) for i in layers)
    k = _check_k(top_k, cfg.vocab_size)

    @jax.jit
    def run(p, x):
        out = forward(p, cfg, Inputs(tokens=x), taps=Taps(layers=layers, sites=("resid_post",)))
        f = decider_features(out.taps["resid_post"], out.logits, top_k=k)
        return f, jnp.argmax(out.logits, -1)

    fs, ys = [], []
    for i in range(0, len(tokens), batch_size):
        x = tokens[i:i + batch_size]
        n = len(x)
        if n < batch_size:
            x = np.concatenate([x, np.repeat(x[-1:], batch_size - n, 0)])
        f, y = jax.device_get(run(params, jnp.asarray(x, jnp.int32)))
        fs.append(DeciderFeatures(*(a[:n] for a in f)))
        ys.append(y[:n])
    return DeciderFeatures(*(np.concatenate(a) for a in zip(*fs))), np.concatenate(ys)


# ----------------------------------------------------------------------------- decode strategy
@struct.dataclass
class TaHState:
    """TaH's decode state: the iteration-keyed cache and the record of iterated positions."""

    cache: KVCache  # capacity 2S: slot p = iteration 0 of position p, slot S + p = iteration 1
    iterated: jax.Array  # [B, S] bool: position p ran iteration 1 (its slot S + p is valid)
    score: jax.Array  # [B, S] float32: decider probability at each decoded position
    lora: Any
    decider: Any
    theta: jax.Array  # [B]
    mode: jax.Array  # int32 scalar: index into MODES
    reference: jax.Array  # [B, S] int32 reference tokens (oracle mode; -1 = none)


@dataclasses.dataclass(frozen=True)
class ThinkAtHard(Strategy):
    """P58 Think-at-Hard as a decode strategy; build it with :func:`think_at_hard`.

    Static: ``top_k`` (decider logits and soft input), ``layers`` (tapped), ``max_iter`` (1 or 2). Runtime (no
    recompile): ``lora``, ``decider`` (params; their shapes are static), ``theta``, ``mode``, ``reference``.
    """

    top_k: int = 100
    layers: tuple = ()
    max_iter: int = 2
    lora: Any = dataclasses.field(default=None, compare=False, hash=False, repr=False)
    decider: Any = dataclasses.field(default=None, compare=False, hash=False, repr=False)
    theta: Any = hparam(0.9)
    mode: Any = hparam(0)
    reference: Any = dataclasses.field(default=None, compare=False, hash=False, repr=False)

    def validate(self, cfg: ModelConfig) -> None:
        _check_k(self.top_k, cfg.vocab_size)
        if cfg.mixer == "mamba":
            raise ValueError("think_at_hard needs an attention model (duo-causal attention over an iteration-keyed "
                             "KV cache); mixer='mamba' has none")
        bad = [i for i in self.layers if not 0 <= i < cfg.n_layers]
        if bad or not self.layers:
            raise ValueError(f"decider layers must be a non-empty subset of [0, {cfg.n_layers}), got {self.layers}")
        H, K = _decider_sizes(self.decider)
        if (H, K) != (len(self.layers) * cfg.d_model, self.top_k):
            raise ValueError(f"the decider reads hidden [{H}] and top-{K} logits; this model and layers {self.layers} "
                             f"give hidden [{len(self.layers) * cfg.d_model}] and top_k={self.top_k}")
        _check_lora(cfg, self.lora)

    def init(self, params, cfg: ModelConfig, state: DecodeState) -> TaHState:
        c = state.cache
        B, S = c.batch, c.capacity
        zeros = lambda b: jnp.concatenate([b, jnp.zeros_like(b)], axis=2)  # noqa: E731
        cache = c.replace(k=tuple(zeros(b) for b in c.k), v=tuple(zeros(b) for b in c.v), lengths=jnp.copy(c.lengths))
        ref = np.full((B, S), -1, np.int32)
        if self.reference is not None:
            r = np.asarray(self.reference)
            if r.ndim != 2 or r.shape[0] != B or r.dtype.kind not in "iu":
                raise ValueError(f"reference must be int [batch={B}, width] (the reference sequences, prompt "
                                 f"included; -1 = none), got {r.dtype} {r.shape}")
            w = min(S, r.shape[1])
            ref[:, :w] = r[:, :w]
        t = np.asarray(self.theta, np.float32)
        if np.isnan(t).any() or t.ndim > 1 or (t.ndim == 1 and t.shape[0] != B):
            raise ValueError(f"theta must be a scalar or one value per row ({B}), not NaN; got {self.theta!r}")
        return TaHState(cache=cache, iterated=jnp.zeros((B, S), bool), score=jnp.zeros((B, S), jnp.float32),
                        lora=jax.tree.map(jnp.copy, self.lora), decider=jax.tree.map(jnp.copy, self.decider),
                        theta=jnp.asarray(np.broadcast_to(t, (B,)).copy()),
                        mode=jnp.int32(self.mode), reference=jnp.asarray(ref))

    def persistent_state(self, extra: TaHState) -> None:
        return None  # the cache belongs to this request

    def resume(self, extra: TaHState, saved) -> TaHState:
        raise ValueError("think_at_hard keeps no state across requests; pass strategy_state=None")

    def step(self, params, cfg: ModelConfig, transform: LogitTransform, state: DecodeState, eos_id=None):
        ex: TaHState = state.extra
        B, S = ex.iterated.shape
        rows = jnp.arange(B)
        p = state.lengths - 1  # the pending token's position
        pending = state.tokens[rows, p]
        out0 = forward(params, cfg, Inputs(tokens=pending[:, None], positions=p[:, None]),
                       cache=ex.cache.set_lengths(p), taps=Taps(layers=self.layers, sites=("resid_post",)))
        z0 = out0.logits[:, 0]
        score = decider_probs(ex.decider, decider_features(out0.taps["resid_post"][:, :, 0], z0, top_k=self.top_k))
        ref = ex.reference[rows, jnp.minimum(p + 1, S - 1)]
        oracle = (jnp.argmax(z0, -1) != ref) & (ref >= 0)
        cont = jnp.select([ex.mode == 0, ex.mode == 1, ex.mode == 2], [score > ex.theta, jnp.ones((B,), bool),
                                                                        jnp.zeros((B,), bool)], oracle)
        cont = cont & ~state.done & (self.max_iter >= 2)
        iterated = ex.iterated.at[rows, p].set(cont)

        def second(cache):
            e = soft_input(params, cfg, z0, self.top_k)[:, None, :]
            slot = jnp.arange(2 * S)[None, :]
            own = jnp.clip(slot - S, 0, S - 1)
            vis = ((slot < S) & (slot <= p[:, None])) | (
                (slot >= S) & (slot - S <= p[:, None]) & jnp.take_along_axis(iterated, own, axis=1))
            out1 = lora_forward(params, cfg, ex.lora, Inputs(embeds=e, positions=p[:, None]), jnp.ones((B, 1), bool),
                                cache=cache.set_lengths(S + p), mask=Explicit(vis[:, None, :]))
            return out1.logits[:, 0], out1.cache

        dz, cache = jax.lax.cond(cont.any(), second, lambda c: (jnp.zeros_like(z0), c), out0.cache)
        z = jnp.where(cont[:, None], z0 + dz, z0)

        ctx = state.context()
        zt, logit_state = transform.apply(z, state.logit_state, ctx)
        key, sub = jax.random.split(state.key)
        tok, sstats = sample(sub, zt, greedy=ends_greedy(transform))
        masked = sstats.all_masked & ~state.done
        calls = 1 + cont.any().astype(jnp.int32)
        stats = state.stats.replace(forward_calls=state.stats.forward_calls + calls,
                                    masked_rows=state.stats.masked_rows | masked)
        extra = ex.replace(cache=cache, iterated=iterated, score=ex.score.at[rows, p].set(score))
        state = state.replace(logit_state=logit_state, key=key, stats=stats, extra=extra)
        state = commit(state, tok[:, None], jnp.where(masked, 0, 1).astype(jnp.int32), eos_id, logits=zt[:, None])
        return state.replace(done=state.done | masked)

    def finalize(self, state: DecodeState) -> dict:
        """Returns ``iterated`` / ``decider_score`` [B, S] (by position; True/score at each position whose next token
        was decoded), ``iterated_fraction`` [B] (iterated decoded positions / decoded tokens) and ``iterated_tokens``."""
        ex: TaHState = state.extra
        it = np.asarray(ex.iterated)
        S = it.shape[1]
        pos = np.arange(S)[None, :]
        lo, hi = np.asarray(state.prompt_lengths)[:, None] - 1, np.asarray(state.lengths)[:, None] - 1
        decoded = (pos >= lo) & (pos < hi)
        n = decoded.sum(1)
        k = (it & decoded).sum(1)
        return {"iterated": it & decoded, "decider_score": np.where(decoded, np.asarray(ex.score), 0.0),
                "iterated_fraction": k / np.maximum(n, 1), "iterated_tokens": int(k.sum()),
                "decoded_tokens": int(n.sum())}


def think_at_hard(cfg: ModelConfig, lora: dict, decider: dict | None = None, *, theta=0.9, mode: str = "decider",
                  max_iter: int = 2, layers: Sequence[int] | None = None, top_k: int | None = None,
                  reference=None) -> ThinkAtHard:
    """Returns the P58 TaH strategy: ``tokjax.generate(model, prompts, strategy=think_at_hard(model.cfg, lora, decider))``.

    ``cfg``: the model's config (or the Model). ``lora``: the iteration-1 adapter (tokjax.model.lora.init_lora,
    trained by :func:`tah_loss`); ``decider``: params from :func:`init_decider` (trained by :func:`decider_loss`;
    its sizes fix ``top_k``). ``layers``: the tapped layers (default :func:`decider_layers`). ``mode``:
    ``"decider"`` (iterate iff score > ``theta``, runtime, scalar or per row; theta > 1 never iterates: the base
    model's tokens), ``"always"`` / ``"never"`` (fixed 2 / 1 iterations), or ``"oracle"`` (iterate where
    iteration 0's argmax differs from ``reference`` int [B, width], the reference sequences with the prompt,
    -1 = none; a placeholder decider is built when none is given). ``max_iter`` 1 (plain model) or 2.
    Stats: ``iterated`` [B, S], ``iterated_fraction`` [B], ``decider_score`` [B, S].
    """
    cfg = getattr(cfg, "cfg", cfg)
    if not isinstance(cfg, ModelConfig):
        raise ValueError(f"cfg must be the model's ModelConfig (or the Model), got {type(cfg).__name__}")
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if isinstance(max_iter, bool) or max_iter not in (1, 2):
        raise ValueError(f"max_iter must be 1 or 2 (iteration 0 plus at most one latent iteration; the paper's "
                         f"default 2), got {max_iter!r}")
    if not isinstance(lora, dict) or "layers" not in lora:
        raise ValueError(f"lora must be an adapter dict from tokjax.model.lora.init_lora, got {type(lora).__name__}")
    if mode == "oracle" and reference is None:
        raise ValueError("mode='oracle' needs reference= (int [batch, width] reference sequences, -1 = none)")
    t = np.asarray(theta, np.float32)
    if np.isnan(t).any() or t.ndim > 1:
        raise ValueError(f"theta must be a scalar or one value per prompt row, not NaN; got {theta!r}")
    layers = decider_layers(cfg) if layers is None else tuple(int(i) for i in layers)
    if decider is None:
        if mode == "decider":
            raise ValueError("mode='decider' needs a decider (init_decider / a trained one)")
        k = min(100, cfg.vocab_size) if top_k is None else top_k
        _check_k(k, cfg.vocab_size)
        decider = init_decider(jax.random.key(0), cfg.d_model, len(layers), int(k), dims=(8,), expansion=1)
    elif not isinstance(decider, dict) or "logits_proj" not in decider:
        raise ValueError(f"decider must be decider params (a dict from init_decider), got {type(decider).__name__}")
    _, K = _decider_sizes(decider)
    if top_k is not None and top_k != K:
        raise ValueError(f"top_k={top_k} but the decider reads the top {K} logits")
    strategy = ThinkAtHard(top_k=int(K), layers=layers, max_iter=int(max_iter), lora=lora, decider=decider,
                           theta=theta, mode=MODES.index(mode), reference=reference)
    strategy.validate(cfg)
    return strategy


def make_tah_loss(top_k: int = 100):
    """Returns :func:`tah_loss` with the soft input's ``top_k`` fixed (the registered loss "tah")."""
    if isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)) or top_k < 1:
        raise ValueError(f"top_k must be an int >= 1, got {top_k!r}")

    def loss_fn(params, cfg, batch, rng=None):
        return tah_loss(params, cfg, batch, rng, top_k=int(top_k))

    return loss_fn


def make_decider_loss():
    """Returns :func:`decider_loss` (the registered loss "tah_decider"; pos_weight and dropout ride in the batch)."""
    return decider_loss


def _register() -> None:
    from tokjax.losses.registry import register_loss

    register_loss("tah", lambda **o: make_tah_loss(**o), {"top_k": 100},
                  doc="P58 Think-at-Hard step 1: next-token CE of z0 + dz at iterated positions (batch 'iterate'), "
                      "z0 elsewhere; params need params['lora'] (tokjax.model.lora.init_lora)", overwrite=True)
    register_loss("tah_decider", lambda **o: make_decider_loss(**o), {},
                  doc="P58 Think-at-Hard step 2: the MLP decider's BCE (batch 'pos_weight', official 5.4)",
                  overwrite=True)


_register()
