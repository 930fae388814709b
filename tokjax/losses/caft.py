"""Concept-aware fine-tuning (CAFT, P40): K extra layer-heads predict x_{t+2..t+1+K} during fine-tuning.

Paper: *Improving large language models with concept-aware fine-tuning* (Chen et al.; P40; official code
michaelchen-lab/caft-llm, ``caft/core.py``, ``scripts/train.py``, ``scripts/train_aux_heads.py``). Next-token
fine-tuning gives no signal about the tokens after the next one, so a multi-token "concept" (an identifier,
a word split into pieces) is learned one piece at a time. CAFT adds K auxiliary heads: head k (k = 1..K)
is one causal transformer layer (initialised as a copy of decoder layer L-2) followed by the model's
**shared** output matrix W, and predicts x_{t+1+k} from position t. The fine-tuning loss is

    L = CE_0 + alpha * s(step) * sum_{k=1..K} gamma^k * CE_k                                   (P40)

    CE_0 = mean_t -log p(x_{t+1} | x_<=t)                    (the model's own next-token loss)
    CE_k = mean_t -log softmax(W^T head_k(h)_t)[x_{t+1+k}]   (over positions whose target is in the window)
    s(step) = sin((S - step) / S * pi / 2)                   ("rsine": 1 at step 0, 0 at step S)

with the official defaults K=4, alpha=0.01 (``--caft-heads-coefficient``), gamma=0.8
(``--caft-decay-coefficient``), schedule "rsine" (``--caft-scheduler``; "sine", "linear" and "constant" are
the official alternatives), S = the run's total steps. Each CE_k is a mean over its own valid targets
(HF ``CrossEntropyLoss`` per head, as in ``add_caft_loss``). Before fine-tuning the heads are
**pretrained** (:func:`caft_pretrain_heads`): base model frozen, loss ``sum_k gamma^k CE_k`` (alpha = 1,
constant schedule, CE_0 left out), official lr 1e-4, one epoch. During fine-tuning the official default
keeps the heads frozen (``--finetune-heads`` is off); only the trunk learns from the auxiliary loss. Here
that is the caller's ``TrainConfig.trainable`` choice (leave ``"caft"`` out of it to match).

Quirks of the official code, and how this module resolves them:

* **Which hidden state the heads read.** Head pretraining (``caft_only_heads=True``) feeds the heads
  ``outputs.hidden_states[-2]``, the raw residual stream entering the last decoder layer, while
  fine-tuning feeds them ``outputs[0]``, the final-normed hidden state: the pretrained heads are used on
  a distribution they never saw. Here both stages read the same input, chosen by the static option
  ``head_input``: ``"final"`` (default: the final-normed h, the fine-tuning path whose loss is the
  method) or ``"pre_last"`` (the residual entering layer L-1, the official pretraining path).
* **No norm before W.** The official head output goes to ``lm_head`` without the final norm. Kept as
  the default (``head_norm=False``); ``head_norm=True`` applies the model's final norm first. With a
  copied layer the official wiring starts far off scale: on SmolLM2-135M (copies of layer 28, 4 stdlib
  windows) the heads' CE at initialisation is ~1500 nats/token (final-normed input, no norm), ~620
  (pre-last input, no norm), ~20.6 (final-normed input + norm) and ~12.3 (pre-last input + norm); the
  official recipe relies on a full epoch of head pretraining to repair it. ``experiments/p40_caft.py``
  therefore uses ``head_input="pre_last", head_norm=True`` (a declared deviation).
* **Causality.** The official head calls ``LlamaDecoderLayer`` with no attention mask, so it is causal
  only because HF's sdpa path sets ``is_causal`` when the mask is None (the eager path would attend to
  the future). Here every head runs the shared ``blocks`` with an explicit ``Causal()`` mask (tested:
  changing x_{>t} leaves every head's output at t unchanged).
* Head positions: RoPE at 0..T-1, as the trunk (official ``get_position_embeddings(input_ids)``).
* The official model takes ``auxiliary_head[i](...)[0]``: right while ``LlamaDecoderLayer`` returns a tuple
  (older transformers); where it returns a tensor, ``[0]`` would pick batch row 0. Here a head returns its
  [B, T, D] output directly (one layer per head, the official ``caft_num_layers=1``).

The schedule needs the step: the loss reads ``batch["step"]`` (an int scalar array, so the compiled
step is reused) and ``total_steps`` (S) from its options. ``batch["hparams"]`` may override
``alpha`` / ``gamma`` at run time. CPU budget option ``frozen_layers`` (static): the bottom layers run
under ``stop_gradient`` (no backward through them); ``batch["frozen_hidden"]`` [B, T, D], the residual
stream entering layer ``frozen_layers`` (precomputed once), skips them altogether.
"""

from __future__ import annotations

import math
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from tokjax.losses._stats import (
    TokenStats, check_token_ids, per_token_nll, reduce_loss, shifted_completion_mask, token_count,
)
from tokjax.losses.cut_cross_entropy import DEFAULT_BLOCK_SIZE, head_stats
from tokjax.model import Causal, Inputs, ModelConfig, Taps, forward, init_params
from tokjax.model.forward import blocks, final_norm, head_matrix

__all__ = [
    "CAFT_KEY", "HEAD_INPUTS", "SCHEDULES", "caft_head_hidden", "caft_loss", "caft_per_head", "caft_pretrain_heads",
    "caft_schedule", "caft_trunk", "caft_weights", "init_caft_heads", "make_caft_loss", "make_caft_pretrain_loss",
]

CAFT_KEY = "caft"
SCHEDULES = ("rsine", "sine", "linear", "constant")
HEAD_INPUTS = ("final", "pre_last")
_F32 = jnp.float32


# ---------------------------------------------------------------------------------------- heads
def _check_k(num_heads) -> int:
    if isinstance(num_heads, bool) or not isinstance(num_heads, (int, np.integer)) or num_heads < 1:
        raise ValueError(f"num_heads must be an int K >= 1 (the number of auxiliary heads), got {num_heads!r}")
    return int(num_heads)


def init_caft_heads(params: dict, cfg: ModelConfig, key: jax.Array, num_heads: int = 4, *,
                    init: str = "copy") -> dict:
    """Returns ``params`` plus ``params["caft"] = {"layers": ...}``: K head layers stacked on a leading axis (P40).

    ``init="copy"`` (official ``caft_only_heads``): every head is an exact copy of decoder layer L-2
    (layer 0 for a 1-layer model); ``key`` is unused. ``init="random"``: fresh layers from ``key``
    (``init_params`` of a K-layer copy of ``cfg``). The heads share W with the model; the forward
    ignores the extra entry. ValueError for K < 1, a non-attention model or an unknown ``init``.
    """
    if not isinstance(params, dict) or "layers" not in params:
        raise ValueError("params must be the model's parameter dict (with stacked 'layers'), got "
                         f"{type(params).__name__}")
    if not isinstance(cfg, ModelConfig):
        raise ValueError(f"cfg must be a ModelConfig, got {type(cfg).__name__}")
    K = _check_k(num_heads)
    if cfg.mixer != "attention":
        raise ValueError(f"CAFT heads are transformer layers: the model must have mixer='attention', got {cfg.mixer!r}")
    if isinstance(params["layers"], (tuple, list)):
        raise ValueError("params['layers'] must be stacked (one array per weight, layers on axis 0); restack "
                         "unstacked weights with tokjax.model.forward.stack_layers")
    if init == "copy":
        src = max(cfg.n_layers - 2, 0)
        layers = jax.tree.map(lambda a: jnp.repeat(a[src:src + 1], K, axis=0), params["layers"])
    elif init == "random":
        import dataclasses

        layers = init_params(dataclasses.replace(cfg, n_layers=K), key)["layers"]
    else:
        raise ValueError(f"init must be 'copy' (layer L-2, official) or 'random', got {init!r}")
    return {**params, CAFT_KEY: {"layers": layers}}


def _heads(params) -> dict:
    if not isinstance(params, dict) or CAFT_KEY not in params:
        raise ValueError(f"params has no {CAFT_KEY!r} entry: add the heads with init_caft_heads(params, cfg, key)")
    return params[CAFT_KEY]


def _num_heads(heads, cfg) -> int:
    lead = {int(jnp.shape(a)[0]) for a in jax.tree.leaves(heads["layers"])}
    if len(lead) != 1:
        raise ValueError(f"params['caft']['layers'] leaves disagree on the number of heads: {sorted(lead)}")
    return lead.pop()


# ---------------------------------------------------------------------------------------- trunk
def _check_options(head_input, frozen_layers, cfg):
    if head_input not in HEAD_INPUTS:
        raise ValueError(f"head_input must be one of {HEAD_INPUTS} ('final': final-normed h, 'pre_last': the "
                         f"residual entering the last layer), got {head_input!r}")
    if isinstance(frozen_layers, bool) or not isinstance(frozen_layers, (int, np.integer)) or \
            not 0 <= frozen_layers < cfg.n_layers:
        raise ValueError(f"frozen_layers must be an int in [0, n_layers={cfg.n_layers}) (bottom layers run without "
                         f"gradient; at least the last layer trains), got {frozen_layers!r}")


def caft_trunk(params: dict, cfg: ModelConfig, tokens: jax.Array, *, head_input: str = "final",
               frozen_layers: int = 0, frozen_hidden: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    """Returns (final-normed h [B, T, D], the heads' input [B, T, D]) of the model reading ``tokens`` [B, T].

    ``head_input``: "final" (the heads read h) or "pre_last" (the residual entering layer L-1).
    ``frozen_layers`` = k > 0: layers 0..k-1 run under ``stop_gradient``; ``frozen_hidden`` [B, T, D]
    (the residual entering layer k, e.g. precomputed once) replaces them.
    """
    _check_options(head_input, frozen_layers, cfg)
    L, k = cfg.n_layers, int(frozen_layers)
    taps = Taps(layers=(L - 1,), sites=("resid_pre",)) if head_input == "pre_last" else None
    if frozen_hidden is not None:
        fh = jnp.asarray(frozen_hidden)
        if fh.shape != tokens.shape + (cfg.d_model,):
            raise ValueError(f"frozen_hidden must be [B, T, D]={tokens.shape + (cfg.d_model,)} (the residual entering "
                             f"layer frozen_layers={k}), got {tuple(fh.shape)}")
        x = jax.lax.stop_gradient(fh)
    elif k > 0:
        x = jax.lax.stop_gradient(forward(params, cfg, Inputs(tokens=tokens), layers=(0, k),
                                          compute_logits=False).hidden)
    else:
        x = None
    if x is None:
        out = forward(params, cfg, Inputs(tokens=tokens), compute_logits=False, taps=taps)
    else:
        out = forward(params, cfg, Inputs(hidden=x), layers=(k, L), compute_logits=False, taps=taps)
    h_in = out.hidden if head_input == "final" else out.taps["resid_pre"][0]
    return out.hidden, h_in


def caft_head_hidden(params: dict, cfg: ModelConfig, h_in: jax.Array, *, head_norm: bool = False) -> jax.Array:
    """Returns [K, B, T, D]: every head layer (causal, RoPE at 0..T-1) applied to the heads' input ``h_in`` [B, T, D],
    then the final norm when ``head_norm`` (official: none). W^T of row k gives head k's logits of x_{t+1+k}."""
    heads = _heads(params)
    B, T, _ = h_in.shape
    positions = jnp.broadcast_to(jnp.arange(T, dtype=jnp.int32), (B, T))

    def one(layer):  # layer: one head's weights with a leading axis of 1
        y, _, _ = blocks({"layers": layer}, cfg, h_in.astype(cfg.dtype), positions, mask=Causal(), start=0, end=1)
        return final_norm(params, cfg, y) if head_norm else y

    return jax.vmap(one)(jax.tree.map(lambda a: a[:, None], heads["layers"]))


# -------------------------------------------------------------------------------------- weights
def caft_weights(num_heads: int, gamma=0.8) -> jax.Array:
    """Returns float32 [K]: gamma^k for k = 1..K (P40 decay), gamma in (0, 1] (checked when concrete; may be traced)."""
    K = _check_k(num_heads)
    g = jnp.asarray(gamma, _F32)
    if g.shape != ():
        raise ValueError(f"gamma must be a scalar, got shape {tuple(g.shape)}")
    if not isinstance(g, jax.core.Tracer):
        v = float(g)
        if not (0.0 < v <= 1.0):
            raise ValueError(f"gamma must lie in (0, 1] (head k is weighted gamma^k), got {v!r}")
    return g ** jnp.arange(1, K + 1, dtype=_F32)


def caft_schedule(step, total_steps, schedule: str = "rsine") -> jax.Array:
    """Returns float32 s(step) of the official schedules: rsine sin((S-step)/S*pi/2), sine sin(step/S*pi/2),
    linear step/S, constant 1 (step clipped to [0, S]; ``step`` may be traced, ``total_steps`` S >= 1)."""
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
    if schedule == "constant":
        return jnp.ones((), _F32)
    if isinstance(total_steps, bool) or not isinstance(total_steps, (int, np.integer)) or total_steps < 1:
        raise ValueError(f"the {schedule!r} schedule needs total_steps, an int S >= 1, got {total_steps!r}")
    st = jnp.asarray(step)
    if st.shape != () or not (jnp.issubdtype(st.dtype, jnp.integer) or jnp.issubdtype(st.dtype, jnp.floating)):
        raise ValueError(f"step must be a scalar number (batch['step']), got {st.dtype} {tuple(st.shape)}")
    S = float(total_steps)
    frac = jnp.clip(st.astype(_F32), 0.0, S) / S
    if schedule == "rsine":
        return jnp.sin((1.0 - frac) * (math.pi / 2))
    if schedule == "sine":
        return jnp.sin(frac * (math.pi / 2))
    return frac


# ----------------------------------------------------------------------------------------- loss
def _base_mask(batch: dict, B: int, T: int) -> jax.Array:
    tokens = batch["tokens"]
    mask = shifted_completion_mask(tokens, batch.get("prompt_lengths"), batch.get("lengths"))
    if batch.get("mask") is not None:
        m = jnp.asarray(batch["mask"])
        if m.shape == (B, T + 1):
            m = m[:, 1:]
        elif m.shape != (B, T):
            raise ValueError(f"batch['mask'] must be [B, T+1]={B, T + 1} (per token) or [B, T]={B, T} (per target), "
                             f"got {tuple(m.shape)}")
        mask = mask & m.astype(bool)
    return mask


def _nll(hidden, w, layout, labels, block_size):
    core = head_stats(hidden.reshape(-1, hidden.shape[-1]), w, labels.reshape(-1), block_size=block_size,
                      head_layout=layout)
    return (core["zy"] - core["lse"]).reshape(labels.shape)


def caft_per_head(params: dict, cfg: ModelConfig, batch: dict, *, head_input: str = "final", head_norm: bool = False,
                  frozen_layers: int = 0, block_size: int = DEFAULT_BLOCK_SIZE) -> tuple[jax.Array, jax.Array]:
    """Returns (CE [K+1], counts [K+1]): entry 0 the next-token CE (exactly ``next_token_loss``'s token mean), entry
    k the mean CE of head k on x_{t+1+k} over its valid targets (0 when none), and the targets counted (P40).

    ``batch["tokens"]`` [B, T+1]; optional ``mask`` ([B, T] per target or [B, T+1] per token),
    ``prompt_lengths`` / ``lengths`` [B] (as ``next_token_loss``) and ``frozen_hidden``. Head k at
    position t counts iff t + 1 + k <= T and target x_{t+1+k} is masked in.
    """
    if not isinstance(batch, dict) or "tokens" not in batch:
        raise ValueError("the caft loss needs batch['tokens'] int [B, T+1]")
    tokens = check_token_ids(batch["tokens"], "batch['tokens']", next_token=True)
    if not isinstance(cfg, ModelConfig):
        raise ValueError(f"cfg must be a ModelConfig, got {type(cfg).__name__}")
    K = _num_heads(_heads(params), cfg)
    B, T = tokens.shape[0], tokens.shape[1] - 1
    x, y = tokens[:, :-1], tokens[:, 1:]
    mask = _base_mask(batch, B, T)
    h, h_in = caft_trunk(params, cfg, x, head_input=head_input, frozen_layers=frozen_layers,
                         frozen_hidden=batch.get("frozen_hidden"))
    w, layout = head_matrix(params, cfg)
    w = w.astype(cfg.dtype)
    # CE_0: the same TokenStats -> token-mean reduction as next_token_loss (bit-for-bit at alpha = 0)
    stats = TokenStats.create(_nll(h, w, layout, y, block_size), mask, None)
    ce0 = reduce_loss(stats, "token_mean", per_token=per_token_nll(stats))
    hk = caft_head_hidden(params, cfg, h_in, head_norm=head_norm)  # [K, B, T, D]
    ks = jnp.arange(1, K + 1)
    idx = jnp.arange(T)[None, :] + ks[:, None]  # head k at t: target index t + k (x_{t+1+k})
    ok = idx < T
    labels = jnp.take(y, jnp.minimum(idx, T - 1), axis=1).transpose(1, 0, 2)  # [K, B, T]
    valid = ok[:, None, :] & jnp.take(mask, jnp.minimum(idx, T - 1), axis=1).transpose(1, 0, 2)
    logp = _nll(hk, w, layout, labels, block_size)
    counts = jnp.sum(valid.astype(_F32), axis=(1, 2))
    sums = jnp.sum(jnp.where(valid, -logp, 0.0), axis=(1, 2))
    ce = jnp.where(counts > 0, sums / jnp.maximum(counts, 1.0), 0.0)
    return jnp.concatenate([ce0[None], ce]), jnp.concatenate([token_count(mask)[None], counts])


def _hp(batch, name, default):
    hp = batch.get("hparams") if isinstance(batch, dict) else None
    return hp[name] if isinstance(hp, dict) and name in hp else default


def _check_alpha(alpha):
    a = jnp.asarray(alpha, _F32)
    if a.shape != ():
        raise ValueError(f"alpha must be a scalar, got shape {tuple(a.shape)}")
    if not isinstance(a, jax.core.Tracer) and not (np.isfinite(float(a)) and float(a) >= 0):
        raise ValueError(f"alpha (the auxiliary heads' coefficient) must be finite and >= 0, got {float(a)!r}")
    return a


def caft_loss(params: dict, cfg: ModelConfig, batch: dict, rng=None, *, alpha=0.01, gamma=0.8, schedule: str = "rsine",
              total_steps: int | None = None, head_input: str = "final", head_norm: bool = False,
              frozen_layers: int = 0, block_size: int = DEFAULT_BLOCK_SIZE) -> tuple[jax.Array, dict]:
    """Returns (L, metrics), ``L = CE_0 + alpha * s(step) * sum_k gamma^k CE_k`` (P40; module docstring).

    ``s`` is :func:`caft_schedule` at ``batch["step"]`` with S = ``total_steps`` (both required unless
    ``schedule="constant"``). ``alpha`` / ``gamma`` may be traced; ``batch["hparams"]`` overrides them.
    Metrics: ``loss``, ``nll`` (CE_0), ``ce_1`` .. ``ce_K``, ``aux`` (sum_k gamma^k CE_k), ``sched``,
    ``token_count``.
    """
    del rng
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
    if schedule != "constant":
        if not isinstance(batch, dict) or "step" not in batch:
            raise ValueError(f"the {schedule!r} schedule needs the optimiser step: put batch['step'] (an int scalar "
                             "array, so the compiled step is reused) or use schedule='constant'")
        s = caft_schedule(batch["step"], total_steps, schedule)
    else:
        s = jnp.ones((), _F32)
    a = _check_alpha(_hp(batch, "alpha", alpha))
    ce, counts = caft_per_head(params, cfg, batch, head_input=head_input, head_norm=head_norm,
                               frozen_layers=frozen_layers, block_size=block_size)
    wk = caft_weights(ce.shape[0] - 1, _hp(batch, "gamma", gamma))
    aux = jnp.sum(wk * ce[1:])
    loss = ce[0] + a * s * aux
    sg = jax.lax.stop_gradient
    metrics = {"loss": loss, "nll": sg(ce[0]), "aux": sg(aux), "sched": sg(s), "token_count": counts[0]}
    metrics.update({f"ce_{k}": sg(ce[k]) for k in range(1, ce.shape[0])})
    return loss, metrics


def caft_pretrain_heads(params: dict, cfg: ModelConfig, batch: dict, rng=None, *, gamma=0.8, head_input: str = "final",
                        head_norm: bool = False, frozen_layers: int = 0,
                        block_size: int = DEFAULT_BLOCK_SIZE) -> tuple[jax.Array, dict]:
    """Returns (L, metrics) of the heads-only stage, ``L = sum_k gamma^k CE_k`` (P40 head pretraining: alpha = 1,
    constant schedule, CE_0 left out). Everything but ``params["caft"]`` is under ``stop_gradient`` (the base
    model and the shared W stay frozen, as the official stage), so only the heads receive gradients."""
    del rng
    base = jax.lax.stop_gradient({k: v for k, v in params.items() if k != CAFT_KEY})
    frozen = {**base, CAFT_KEY: _heads(params)}
    ce, counts = caft_per_head(frozen, cfg, batch, head_input=head_input, head_norm=head_norm,
                               frozen_layers=frozen_layers, block_size=block_size)
    aux = jnp.sum(caft_weights(ce.shape[0] - 1, _hp(batch, "gamma", gamma)) * ce[1:])
    sg = jax.lax.stop_gradient
    metrics = {"loss": aux, "nll": sg(ce[0]), "token_count": counts[0]}
    metrics.update({f"ce_{k}": sg(ce[k]) for k in range(1, ce.shape[0])})
    return aux, metrics


# ------------------------------------------------------------------------------------- factories
def _check_static(head_input, head_norm, frozen_layers, block_size):
    if head_input not in HEAD_INPUTS:
        raise ValueError(f"head_input must be one of {HEAD_INPUTS}, got {head_input!r}")
    if not isinstance(head_norm, bool):
        raise ValueError(f"head_norm must be a bool, got {head_norm!r}")
    if isinstance(frozen_layers, bool) or not isinstance(frozen_layers, (int, np.integer)) or frozen_layers < 0:
        raise ValueError(f"frozen_layers must be an int >= 0, got {frozen_layers!r}")
    if isinstance(block_size, bool) or not isinstance(block_size, (int, np.integer)) or block_size < 1:
        raise ValueError(f"block_size must be a positive int, got {block_size!r}")


def make_caft_loss(*, alpha: float = 0.01, gamma: float = 0.8, schedule: str = "rsine", total_steps: int | None = None,
                   head_input: str = "final", head_norm: bool = False, frozen_layers: int = 0,
                   block_size: int = DEFAULT_BLOCK_SIZE) -> Callable:
    """Returns ``loss_fn(params, cfg, batch, rng) -> (loss, metrics)``: :func:`caft_loss` with these options, for
    ``tokjax.train`` (the batch carries ``step``; see :func:`caft_loss`). Options are checked here (ValueError)."""
    _check_alpha(alpha)
    caft_weights(1, gamma)
    caft_schedule(0, total_steps if schedule != "constant" else 1, schedule)
    _check_static(head_input, head_norm, frozen_layers, block_size)
    opts = dict(alpha=float(alpha), gamma=float(gamma), schedule=schedule,
                total_steps=None if total_steps is None else int(total_steps), head_input=head_input,
                head_norm=head_norm, frozen_layers=int(frozen_layers), block_size=int(block_size))

    def loss_fn(params, cfg, batch, rng=None):
        return caft_loss(params, cfg, batch, rng, **opts)

    return loss_fn


def make_caft_pretrain_loss(*, gamma: float = 0.8, head_input: str = "final", head_norm: bool = False,
                            frozen_layers: int = 0, block_size: int = DEFAULT_BLOCK_SIZE) -> Callable:
    """Returns ``loss_fn(params, cfg, batch, rng)``: :func:`caft_pretrain_heads` with these options (train with
    ``TrainConfig(trainable=("caft",))``; the loss already stops every other gradient)."""
    caft_weights(1, gamma)
    _check_static(head_input, head_norm, frozen_layers, block_size)
    opts = dict(gamma=float(gamma), head_input=head_input, head_norm=head_norm, frozen_layers=int(frozen_layers),
                block_size=int(block_size))

    def loss_fn(params, cfg, batch, rng=None):
        return caft_pretrain_heads(params, cfg, batch, rng, **opts)

    return loss_fn


def _register() -> None:
    from tokjax.losses.registry import register_loss

    register_loss("caft", lambda **o: make_caft_loss(**o),
                  {"alpha": 0.01, "gamma": 0.8, "schedule": "rsine", "total_steps": None, "head_input": "final",
                   "head_norm": False, "frozen_layers": 0, "block_size": DEFAULT_BLOCK_SIZE},
                  doc="P40 CAFT: CE_0 + alpha*s(step)*sum_k gamma^k CE_k of K layer-heads sharing W (head k predicts "
                      "x_{t+1+k}); params need params['caft'] (tokjax.losses.caft.init_caft_heads), the batch 'step'",
                  overwrite=True)
    register_loss("caft_pretrain_heads", lambda **o: make_caft_pretrain_loss(**o),
                  {"gamma": 0.8, "head_input": "final", "head_norm": False, "frozen_layers": 0,
                   "block_size": DEFAULT_BLOCK_SIZE},
                  doc="P40 CAFT head pretraining: sum_k gamma^k CE_k with the base model and W frozen",
                  overwrite=True)


_register()
