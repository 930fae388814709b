"""P46 R2R (Roads to Rome): "Efficiently Navigating Divergent Reasoning Paths with Small-Large Model Token Routing".

A small model (SLM) decodes; after each SLM step a light router looks at the step and decides
whether the SLM's token would send the answer down a *divergent* path. Only then does the large
model (LLM) produce the token instead::

    z_t = SLM logits, h_t = SLM last hidden state (final-normed), y_t ~ transform(z_t)  (the SLM proposal)
    x_t = [h_t ; E_SLM[y_t] ; W_z sort_desc(topk(z_t, k)) + b_z]        (k = 100)
    p_div = sigmoid(router(x_t))
    token_t = y_t                 if p_div < theta
              LLM's token        if p_div >= theta                       (theta: runtime, per row)

Router (official code ``r2r/models/router.py``, ``HiddenStatesTokenLMHeadLogitsClassifier`` +
``ClassifierBackbone``): the top-k logits are projected to the hidden size, concatenated with
h_t and the token embedding, projected to ``dims[0]`` and through an input projection, then
residual blocks ``x -> skip(x) + Linear(GELU(Linear_{d->4d}(LayerNorm(x))))`` (``skip`` a Linear
where the width changes, else identity), then LayerNorm -> Linear -> 1 logit. Training: binary
cross-entropy on "divergent" labels; the routing threshold is the largest of
``linspace(0.01, 0.99, 100)`` whose recall of divergent tokens on a validation split is >= 0.95
(the official ``ThresholdOptimizer``: among thresholds meeting the recall, the lowest
positive rate).

What differs from the paper here (say so wherever results are quoted):

* Labels. The paper labels a token divergent when the SLM and LLM tokens differ *and* an LLM
  verifier judges that continuing from the SLM token changes the meaning of the reasoning path
  (identical-meaning differences are "neutral"). The verifier stage is skipped:
  :func:`divergence_data` labels every teacher-forced position where the SLM argmax differs
  from the LLM argmax (an upper bound on the paper's divergent set).
* The token embedding is the SLM's frozen embedding of y_t (a feature), not a trainable copy.
  Inputs are standardised with training-set statistics kept in the router (``norm``; the
  official code's ``normalize_input`` is off by default and feeds raw values).
* Compute: the two-model step is :mod:`tokjax.decoding.routing`: with ``catch_up=k > 1`` the LLM
  runs only on steps where a live row routes or lags k tokens behind, prefilling the lag in one
  chunk (R2R's lazy catch-up; ``large_calls`` in the stats); ``catch_up=1`` runs both models on
  every step, caches in lockstep (the recorded experiment's setting). Tokens are the same up to
  float rounding. ``benchmarks/routing.py`` measures tokens/s against the LLM alone.
* The paper's hysteresis variant (averaging p_div over a window while on the LLM) is not implemented.

Baselines share the step: ``kind="entropy"`` routes on the SLM's raw-logit entropy (nats)
``H(z_t) >= theta``; ``kind="random"`` routes on a uniform draw ``u_t >= theta`` (so the LLM
fraction is ``1 - theta``). ``kind`` is a runtime value, so switching routers does not recompile.
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
from tokjax.decoding._state import DecodeState, Strategy, ends_greedy
from tokjax.decoding.routing import (
    LARGE, LargeModel, check_catch_up, commit_routed, init_large, large_axes, large_logits, small_logits,
)
from tokjax.logits import LogitTransform, entropy, hparam, sample
from tokjax.model import Model, ModelConfig, embed, forward

__all__ = [
    "ROUTER_KINDS", "DivergenceData", "R2R", "R2RState", "RouterFeatures", "apply_router", "divergence_data", "init_router", "r2r",
    "recall_threshold", "router_batch", "router_features", "router_loss", "router_probs",
]

ROUTER_KINDS = ("mlp", "entropy", "random")
TRAINABLE = ("logits_proj", "combined", "input_proj", "blocks", "out_ln", "out")  # every router key but "norm"


def _concrete(*xs) -> bool:
    return not any(isinstance(x, jax.core.Tracer) for x in xs)


# ------------------------------------------------------------------------------ features
class RouterFeatures(NamedTuple):
    """The router's inputs for one SLM step (any leading shape ``...``; P46 x_t before projection).

    ``hidden`` [..., D]: the SLM's last (final-normed) hidden state h_t; ``embedding`` [..., D_e]:
    the SLM's input embedding of its token y_t; ``top_logits`` [..., k]: the k largest raw SLM
    logits z_t, in descending order.
    """

    hidden: jax.Array
    embedding: jax.Array
    top_logits: jax.Array


def router_features(params, cfg: ModelConfig, hidden, logits, tokens, *, k: int = 100) -> RouterFeatures:
    """Returns RouterFeatures of SLM steps: h_t, E_SLM[y_t] and sort_desc(topk(z_t, k)) (P46 router input).

    ``params``/``cfg``: the SLM (its ``embed`` table; the decode layout works too). ``hidden``
    [..., D] from the shared forward's ``Output.hidden``, ``logits`` [..., V] its raw logits
    (before any temperature or truncation), ``tokens`` [...] the SLM's token y_t at each step.
    ``k`` static, 1 <= k <= V.
    """
    hidden, logits, tokens = jnp.asarray(hidden), jnp.asarray(logits), jnp.asarray(tokens)
    V, D = cfg.vocab_size, cfg.d_model
    if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or not 1 <= k <= V:
        raise ValueError(f"k must be an int in [1, vocab_size={V}], got {k!r}")
    if logits.ndim < 1 or logits.shape[-1] != V:
        raise ValueError(f"logits must be [..., vocab_size={V}], got shape {logits.shape}")
    if hidden.shape != logits.shape[:-1] + (D,):
        raise ValueError(f"hidden must be [..., d_model={D}] with the logits' leading shape {logits.shape[:-1]}, "
                         f"got {hidden.shape}")
    if tokens.shape != logits.shape[:-1] or not jnp.issubdtype(tokens.dtype, jnp.integer):
        raise ValueError(f"tokens must be integer ids shaped like the logits' leading shape {logits.shape[:-1]}, "
                         f"got {tokens.dtype} {tokens.shape}")
    if _concrete(tokens):
        t = np.asarray(tokens)
        if t.size and (t.min() < 0 or t.max() >= V):
            raise ValueError(f"tokens must lie in [0, vocab_size={V}), got ids in [{t.min()}, {t.max()}]")
    top = jax.lax.top_k(logits.astype(jnp.float32), k)[0]  # descending
    emb = embed(params, cfg, tokens).astype(jnp.float32)
    return RouterFeatures(hidden.astype(jnp.float32), emb, top)


# ------------------------------------------------------------------------------ router MLP




def init_router(key, hidden_size: int, embed_size: int | None = None, top_k: int = 100, *,
                dims: Sequence[int] = (64, 128, 64), expansion: int = 4) -> dict:
    """Returns the params of a freshly initialised P46 router (a dict pytree; identity input standardisation).

    ``hidden_size``: the SLM's d_model (h_t and, by default, the token embedding: ``embed_size``);
    ``top_k``: how many sorted logits it reads; ``dims``: the residual blocks' widths (official
    default (256, 512, 256); small here for CPU); ``expansion``: the blocks' MLP width factor (4).
    """
    embed_size = hidden_size if embed_size is None else embed_size
    dims = tuple(int(d) for d in dims)
    for name, v in (("hidden_size", hidden_size), ("embed_size", embed_size), ("top_k", top_k),
                    ("expansion", expansion)):
        if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 1:
            raise ValueError(f"{name} must be an int >= 1, got {v!r}")
    if not dims or min(dims) < 1:
        raise ValueError(f"dims must be a non-empty sequence of widths >= 1, got {dims}")
    return init_classifier(key, features=hidden_size + embed_size + top_k, hidden_size=hidden_size,
                           combined_in=2 * hidden_size + embed_size, top_k=top_k, dims=dims, expansion=expansion)


def _router_sizes(router) -> tuple[int, int, int]:
    k, hidden = router["logits_proj"]["w"].shape
    e = router["combined"]["w"].shape[0] - 2 * hidden
    return hidden, e, k






def apply_router(router: dict, features: RouterFeatures, *, dropout=0.0, rng=None) -> jax.Array:
    """Returns [...]: the router's divergence logit for each step (p_div = sigmoid of it; P46 router).

    ``dropout`` (runtime; the official rate is 0.3 in training) needs ``rng``; 0 (inference) is exact.
    """
    if not isinstance(features, RouterFeatures):
        raise ValueError(f"features must be RouterFeatures (see router_features), got {type(features).__name__}")
    D, E, K = _router_sizes(router)
    h, e, z = (jnp.asarray(f, jnp.float32) for f in features)
    lead = h.shape[:-1]
    if h.shape[-1:] != (D,) or e.shape != lead + (E,) or z.shape != lead + (K,):
        raise ValueError(f"this router reads hidden [..., {D}], embedding [..., {E}], top_logits [..., {K}]; "
                         f"got {h.shape}, {e.shape}, {z.shape}")
    if rng is None and _concrete(dropout) and float(np.asarray(dropout)) != 0.0:
        raise ValueError("dropout > 0 needs rng=")
    return apply_classifier(router, (h, e, z), dropout=dropout, rng=rng)


def router_probs(router: dict, features: RouterFeatures) -> jax.Array:
    """Returns [...]: p_div = sigmoid(router(x_t)), the probability that the SLM's token is divergent."""
    return jax.nn.sigmoid(apply_router(router, features))


# ------------------------------------------------------------------------------ labels and training
class DivergenceData(NamedTuple):
    """Teacher-forced router data (host numpy, one row per position used): ``features`` (RouterFeatures
    [N, ...]), ``labels`` [N] bool (divergent), ``small_argmax`` / ``large_argmax`` [N] int32 (each model's
    top next token there) and ``small_entropy`` [N]."""

    features: RouterFeatures
    labels: np.ndarray
    small_argmax: np.ndarray
    large_argmax: np.ndarray
    small_entropy: np.ndarray  # [N] float32: the SLM's raw-logit entropy (nats), the entropy router's score


def divergence_data(small: Model, large: Model, tokens, *, k: int = 100, mask=None,
                    batch_size: int = 4) -> DivergenceData:
    """Returns DivergenceData (features, labels, both argmaxes, SLM entropy) from teacher-forced text, one row per position used.

    ``tokens`` [B, T] int: text both models read; position t's SLM features are taken with y_t the
    SLM's argmax, and its label is ``argmax SLM(z_t) != argmax LLM(z_t)`` (the verifier of the
    paper's label pipeline is skipped: every disagreement counts as divergent). ``mask`` [B, T]
    bool (default all True) selects the positions used. Runs the shared forward of each model on
    ``batch_size`` rows at a time (host numpy results).
    """
    if not isinstance(small, Model) or not isinstance(large, Model):
        raise ValueError("small and large must be tokjax Models (params + cfg)")
    if small.cfg.vocab_size != large.cfg.vocab_size:
        raise ValueError(f"small and large models must share a vocabulary; got vocab sizes {small.cfg.vocab_size} "
                         f"and {large.cfg.vocab_size}")
    tokens = np.asarray(tokens)
    if tokens.ndim != 2 or not np.issubdtype(tokens.dtype, np.integer) or tokens.shape[1] < 1:
        raise ValueError(f"tokens must be an integer [batch, seq] array, got {tokens.dtype} {tokens.shape}")
    if tokens.size and (tokens.min() < 0 or tokens.max() >= small.cfg.vocab_size):
        raise ValueError(f"tokens must lie in [0, vocab_size={small.cfg.vocab_size})")
    mask = np.ones(tokens.shape, bool) if mask is None else np.asarray(mask, bool)
    if mask.shape != tokens.shape:
        raise ValueError(f"mask must be shaped like tokens {tokens.shape}, got {mask.shape}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")

    @jax.jit
    def run(ps, pl, x):  # weights as arguments: closed-over constants would be folded into the program
        out_s = forward(ps, small.cfg, x)
        y = jnp.argmax(out_s.logits, -1).astype(jnp.int32)
        f = router_features(ps, small.cfg, out_s.hidden, out_s.logits, y, k=k)
        y_l = jnp.argmax(forward(pl, large.cfg, x).logits, -1).astype(jnp.int32)
        return f, y, y_l, entropy(out_s.logits)

    def one(x):
        return run(small.params, large.params, x)

    feats, ys, yls, hs = [], [], [], []
    for i in range(0, len(tokens), batch_size):
        x = tokens[i:i + batch_size]
        n = len(x)
        if n < batch_size:  # pad the last chunk: one compiled shape
            x = np.concatenate([x, np.repeat(x[-1:], batch_size - n, 0)])
        f, y, y_l, h = jax.device_get(one(jnp.asarray(x, jnp.int32)))
        m = mask[i:i + n]
        feats.append(RouterFeatures(*(a[:n][m] for a in f)))
        ys.append(y[:n][m])
        yls.append(y_l[:n][m])
        hs.append(h[:n][m])
    y, y_l = np.concatenate(ys), np.concatenate(yls)
    return DivergenceData(RouterFeatures(*(np.concatenate(x) for x in zip(*feats))), y != y_l, y, y_l,
                          np.concatenate(hs))


def router_batch(features: RouterFeatures, labels, *, pos_weight=1.0, dropout=0.0) -> dict:
    """Returns a train batch dict of :func:`router_loss`: the three feature arrays, ``labels`` [N] in [0, 1],
    ``pos_weight`` (weight of divergent examples in the BCE) and ``dropout`` (runtime scalars)."""
    if not isinstance(features, RouterFeatures):
        raise ValueError(f"features must be RouterFeatures, got {type(features).__name__}")
    labels = jnp.asarray(labels, jnp.float32)
    n = labels.shape[0] if labels.ndim == 1 else -1
    if labels.ndim != 1 or any(f.ndim != 2 or f.shape[0] != n for f in features):
        raise ValueError(f"need features [N, .] and labels [N]; got {[f.shape for f in features]} and {labels.shape}")
    if _concrete(labels) and not ((np.asarray(labels) >= 0) & (np.asarray(labels) <= 1)).all():
        raise ValueError("labels must lie in [0, 1]")
    if not 0.0 <= float(dropout) < 1.0 or not float(pos_weight) > 0:
        raise ValueError(f"need 0 <= dropout < 1 and pos_weight > 0, got {dropout}, {pos_weight}")
    return {"hidden": jnp.asarray(features.hidden, jnp.float32), "embedding": jnp.asarray(features.embedding, jnp.float32),
            "top_logits": jnp.asarray(features.top_logits, jnp.float32), "labels": labels,
            "pos_weight": jnp.float32(pos_weight), "dropout": jnp.float32(dropout)}


def router_loss(params, cfg, batch, rng=None):
    """Returns (loss, metrics): the P46 router's binary cross-entropy on a :func:`router_batch`.

    The train-loss signature of ``tokjax.train.train`` (``cfg`` unused: None, the router is no
    transformer): loss = mean_i w_i BCE(router(x_i), label_i), w_i = pos_weight for divergent
    examples, 1 otherwise. Metrics: ``loss``, ``accuracy`` (p_div >= 0.5 vs label), ``positive_rate``.
    """
    del cfg
    feats = RouterFeatures(batch["hidden"], batch["embedding"], batch["top_logits"])
    dropout = batch.get("dropout", 0.0)
    logits = apply_router(params, feats, dropout=dropout, rng=rng) if rng is not None else apply_router(params, feats)
    labels = batch["labels"]
    w = jnp.where(labels > 0.5, batch.get("pos_weight", 1.0), 1.0)
    loss = jnp.mean(w * optax.sigmoid_binary_cross_entropy(logits, labels))
    return loss, {"loss": loss, "accuracy": jnp.mean((logits >= 0) == (labels > 0.5)),
                  "positive_rate": jnp.mean(logits >= 0)}


def recall_threshold(probs, labels, recall: float = 0.95, grid=None) -> float:
    """Returns the routing threshold: the largest grid value whose recall of divergent tokens is >= ``recall``.

    As the official ThresholdOptimizer (grid ``linspace(0.01, 0.99, 100)``, route iff p >= theta;
    among thresholds meeting the recall the lowest positive rate, i.e. the largest). 0.0 (route
    every token, recall 1) when no grid value reaches the recall or there is no divergent label.
    """
    p, y = np.asarray(probs, np.float64).ravel(), np.asarray(labels).astype(bool).ravel()
    if p.shape != y.shape or not p.size:
        raise ValueError(f"probs and labels must be non-empty and the same size, got {p.shape} and {y.shape}")
    if not 0.0 < recall <= 1.0:
        raise ValueError(f"recall must lie in (0, 1], got {recall}")
    grid = np.linspace(0.01, 0.99, 100) if grid is None else np.sort(np.asarray(grid, np.float64))
    if not y.any():
        return 0.0
    ok = [t for t in grid if (p[y] >= t).mean() >= recall]
    return float(max(ok)) if ok else 0.0


# ------------------------------------------------------------------------------ decode strategy
@struct.dataclass
class R2RState:
    """R2R's decode state: the LLM (weights, KV cache; :mod:`tokjax.decoding.routing`), the router and the routing record."""

    large: LargeModel  # the LLM's weights, KV cache (lazy catch-up) and call count
    router: Any  # router params (runtime)
    kind: jax.Array  # int32 scalar: index into ROUTER_KINDS (runtime)
    theta: jax.Array  # [B] float32 (runtime)
    route_key: jax.Array  # PRNG key of the random router (its own stream: the sampling key is untouched)
    llm_tokens: jax.Array  # [B] int32 tokens emitted by the LLM
    routed: jax.Array  # [B, S] bool per generated position
    score: jax.Array  # [B, S] float32 router score per generated position


def _theta(theta, batch: int) -> np.ndarray:
    t = np.asarray(theta, np.float32)
    if t.ndim > 1 or (t.ndim == 1 and t.shape[0] != batch):
        raise ValueError(f"theta must be a scalar or one value per prompt row ({batch}), got shape {t.shape}")
    if np.isnan(t).any():
        raise ValueError("theta must not be NaN (0 routes every token to the LLM; a value > 1 none, for kind "
                         "'mlp' or 'random')")
    return np.broadcast_to(t, (batch,)).copy()


@dataclasses.dataclass(frozen=True)
class R2R(Strategy):
    """P46 R2R: the SLM (the driver's target) proposes each token; the LLM emits it where the router's score >= theta.

    Build it with :func:`r2r`. Static: ``large_cfg``, ``top_k``, ``catch_up``. Runtime (not part of the jit key):
    ``large_params``, ``router`` (params; its shapes are), ``kind`` (index into ROUTER_KINDS),
    ``theta`` (scalar or per row) and ``seed`` (the random router's stream).
    """

    large_cfg: ModelConfig
    top_k: int = 100
    large_params: Any = dataclasses.field(default=None, compare=False, hash=False, repr=False)
    router: Any = dataclasses.field(default=None, compare=False, hash=False, repr=False)
    kind: Any = hparam(0)
    theta: Any = hparam(0.5)
    seed: Any = hparam(0)
    catch_up: int = 1

    def validate(self, cfg: ModelConfig) -> None:
        if cfg.vocab_size != self.large_cfg.vocab_size:
            raise ValueError(f"small and large models must share a vocabulary; got vocab sizes {cfg.vocab_size} and "
                             f"{self.large_cfg.vocab_size}")
        check_catch_up(self.catch_up, self.large_cfg)
        if self.router is None:
            return  # entropy / random routing: init builds a placeholder router for this model
        D, E, K = _router_sizes(self.router)
        if (D, E, K) != (cfg.d_model, cfg.d_model, self.top_k):
            raise ValueError(f"the router reads hidden {D}, embedding {E}, top-{K} logits; the small model needs "
                             f"d_model={cfg.d_model} for both and top_k={self.top_k}")

    def init(self, params, cfg: ModelConfig, state: DecodeState) -> R2RState:
        B, S = state.tokens.shape
        return R2RState(
            large=init_large(self.large_cfg, state),
            router=jax.tree.map(lambda a: jnp.array(a, copy=True), self._router(cfg)),  # a copy: the state is donated
            kind=jnp.asarray(self.kind, jnp.int32),
            theta=jnp.asarray(_theta(self.theta, B)),
            route_key=jax.random.key(int(self.seed)),
            llm_tokens=jnp.zeros((B,), jnp.int32),
            routed=jnp.zeros((B, S), bool),
            score=jnp.zeros((B, S), jnp.float32),
        )

    def _router(self, cfg: ModelConfig) -> dict:
        if self.router is not None:
            return self.router
        # kind "entropy" / "random" without a router: a width-8 placeholder (computed, never used)
        return init_router(jax.random.key(0), cfg.d_model, cfg.d_model, self.top_k, dims=(8,))

    def models(self) -> dict:
        return {LARGE: Model(params=self.large_params, cfg=self.large_cfg)}

    def state_axes(self, extra: R2RState) -> R2RState:
        row, rows2 = ("batch",), ("batch", None)
        return R2RState(
            large=large_axes(),
            router=jax.tree.map(lambda _: None, extra.router), kind=None, theta=row, route_key=None,
            llm_tokens=row, routed=rows2, score=rows2,
        )

    def step(self, params, cfg: ModelConfig, transform: LogitTransform, s: DecodeState, eos_id=None) -> DecodeState:
        ex: R2RState = s.extra
        out_s, raw_s = small_logits(params, cfg, s)
        ctx = s.context()
        greedy = ends_greedy(transform)
        key, sub = jax.random.split(s.key)
        # The SLM's proposal y_t (the step's sampling key; a row kept on the SLM draws the same token below).
        logits_s, _ = transform.apply(raw_s, s.logit_state, ctx)
        y, _ = sample(sub, logits_s, greedy=greedy)
        feats = router_features(params, cfg, out_s.hidden[:, 0], raw_s, y, k=self.top_k)
        route_key, rsub = jax.random.split(ex.route_key)
        scores = jnp.stack([jax.nn.sigmoid(apply_router(ex.router, feats)), entropy(raw_s),
                            jax.random.uniform(rsub, y.shape)])
        score = scores[jnp.clip(ex.kind, 0, len(ROUTER_KINDS) - 1)]
        use = score >= ex.theta
        large, raw_l = large_logits(ex.large, self.large_cfg, s, use, self.catch_up)

        logits, logit_state = transform.apply(jnp.where(use[:, None], raw_l, raw_s), s.logit_state, ctx)
        tok, sst = sample(sub, logits, greedy=greedy)
        tok = jnp.where(use, tok, y)
        all_masked = sst.all_masked

        live = ~s.done
        B = tok.shape[0]
        pos = jnp.clip(s.lengths - s.prompt_lengths, 0, ex.routed.shape[1] - 1)
        rows = jnp.arange(B)
        extra = ex.replace(
            large=large, route_key=route_key,
            routed=ex.routed.at[rows, pos].set(jnp.where(live, use, ex.routed[rows, pos])),
            score=ex.score.at[rows, pos].set(jnp.where(live, score, ex.score[rows, pos])),
            llm_tokens=ex.llm_tokens + (live & use & ~all_masked).astype(jnp.int32),
        )
        return commit_routed(s, out_s.cache, logit_state, key, extra, tok, logits, live, all_masked, eos_id)

    def persistent_state(self, extra: R2RState) -> None:
        return None  # the caches belong to this prompt

    def resume(self, extra: R2RState, saved) -> R2RState:
        raise ValueError("R2R keeps no state across requests; pass strategy_state=None")

    def finalize(self, state: DecodeState) -> dict:
        """Returns ``llm_fraction`` [B], ``routed`` / ``router_score`` [B, max_new_tokens] (numpy), ``llm_tokens`` and
        ``large_calls`` (LLM forwards run)."""
        ex: R2RState = state.extra
        prompt = np.asarray(state.prompt_lengths)
        new = int(np.asarray(state.max_lengths)[0] - prompt[0])
        gen = np.asarray(state.lengths) - prompt
        llm = np.asarray(ex.llm_tokens)
        return {"llm_fraction": llm / np.maximum(gen, 1), "routed": np.asarray(ex.routed)[:, :new],
                "router_score": np.asarray(ex.score)[:, :new], "llm_tokens": int(llm.sum()),
                "large_calls": int(np.asarray(ex.large.calls))}


def r2r(large: Model, router: dict | None = None, *, theta, kind: str = "mlp", top_k: int | None = None,
        seed: int = 0, catch_up: int = 1) -> R2R:
    """Returns the P46 R2R strategy for ``tokjax.generate(small, prompts, strategy=r2r(large, router, theta=...))``.

    ``router``: params from :func:`train_router` / :func:`init_router` (its top-k size sets
    ``top_k``); None is allowed for ``kind="entropy"``/``"random"`` (a width-8 placeholder is
    built; pass the trained router anyway to share one compiled program across kinds).
    Routing rule: LLM token iff score >= ``theta`` (runtime; scalar or per row), with score =
    p_div (``"mlp"``), the SLM's raw-logit entropy in nats (``"entropy"``) or a fresh uniform
    draw (``"random"``: LLM fraction 1 - theta; ``seed`` picks its stream). The output's
    ``stats`` hold ``llm_fraction`` [B], ``routed`` and ``router_score`` [B, new] and ``large_calls``.
    ``catch_up``: 1 runs the LLM on every step (caches in lockstep); k > 1 only on steps where a
    live row routes or lags k tokens behind (lazy catch-up, :mod:`tokjax.decoding.routing`).
    """
    if not isinstance(large, Model):
        raise ValueError(f"large must be a tokjax Model (params + cfg), got {type(large).__name__}")
    if kind not in ROUTER_KINDS:
        raise ValueError(f"kind must be one of {ROUTER_KINDS}, got {kind!r}")
    if router is None:
        if kind == "mlp":
            raise ValueError("kind='mlp' needs a router (train_router or init_router)")
        K = 100 if top_k is None else top_k
        if not isinstance(K, (int, np.integer)) or isinstance(K, bool) or K < 1:
            raise ValueError(f"top_k must be an int >= 1, got {top_k!r}")
    else:
        if not isinstance(router, dict) or "logits_proj" not in router:
            raise ValueError(f"router must be router params (a dict from init_router / train_router), got "
                             f"{type(router).__name__}")
        _, _, K = _router_sizes(router)
        if top_k is not None and top_k != K:
            raise ValueError(f"top_k={top_k} but the router reads the top {K} logits")
    t = np.asarray(theta, np.float32)
    if np.isnan(t).any() or t.ndim > 1:
        raise ValueError(f"theta must be a scalar or one value per prompt row, not NaN; got shape {t.shape}")
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool):
        raise ValueError(f"seed must be an int, got {seed!r}")
    return R2R(large_cfg=large.cfg, top_k=int(K), large_params=large.params, router=router,
               kind=ROUTER_KINDS.index(kind), theta=theta, seed=int(seed), catch_up=check_catch_up(catch_up, large.cfg))
