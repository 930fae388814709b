"""Token-level RL on the shared pieces: rollouts through ``tokjax.generate``, the GRPO loss, one train step.

    model, history = rl_train(model, task, RLConfig(steps=48, group_size=8), transforms=(mask,))

One RL step (GRPO / DAPO, issue 21):

1. ``task.prompts(step, n)`` gives n prompts (token-id lists) and their answers;
2. :func:`rollout` samples ``group_size`` completions of each through :func:`tokjax.generate`
   (``n=group_size``: one prefill per prompt, forked caches; temperature ``RLConfig.temperature``;
   eos / stop sequences end a row; rows that hit ``max_new_tokens`` are flagged truncated);
3. ``task.reward(completions, answers)`` scores them (rewards [B] and a format-valid flag [B]);
   :func:`tokjax.losses.grpo.group_advantages` turns rewards into advantages, or a ``shape``
   plug-in makes [B, T] token advantages;
4. the sampling policy's log-probs (``old_logp``) and, with a reference, ``ref_logp`` come from
   :func:`tokjax.losses.token_stats` on the rollout tokens (exact, whatever logit transform drew
   them), then ``inner_steps`` optimiser steps of the registered ``grpo`` loss run through
   :func:`tokjax.train.make_train_step` (so ``trainable`` freezes the rest bit for bit). With
   ``inner_steps == 1`` the step starts from the sampling parameters, so ``old_logp`` is the
   stop-gradient of the loss's own forward (no separate forward, as TRL's ``num_iterations=1``), and the
   head scores each row's ``max_new_tokens`` completion window only, not the prompt positions
   (:func:`scoring` says which plug-ins keep the separate forward / the full width; same loss and
   gradient up to float rounding).

Plug points (the papers of issue 21 are each one of these): ``transforms`` (LossTransforms: token
masks / weights, e.g. P63's entropy mask), ``shape(rollouts, stats) -> advantages [B, T]``,
``select(rollouts, advantages, step) -> keep [B]`` (rows kept for the update; or a dict with
``"keep"`` and runtime arrays added to the loss batch, e.g. a scheduled token ratio),
``prepare(rollouts, batch) -> batch`` (adds runtime arrays to every loss batch before any log-prob is
computed, and may write tokens *after* a row's last token, e.g. P47 LaSeR's appended z_c: the
completion tokens' log-probs cannot change, so old_logp / GRPO terms are untouched; the ``shape``
stats are computed on the prepared batch) and ``aux(params, cfg, batch, stats) -> (loss, metrics)``
(a differentiable term added to the GRPO loss in every inner step, e.g. LaSeR's self-reward MSE;
``stats`` is the same forward's TokenStats before the transforms; ``aux.requires`` may name extra
TokenStats fields, ``"hidden"`` / ``"entropy"``). ``aux=None`` and ``prepare=None`` run the plain loop
bit for bit (with an ``aux`` / ``prepare`` the head scores every position, equal to float rounding). A method
whose rollouts are not plain token samples (P37's soft chains of thought) swaps the
objective whole: ``strategy`` (the ``tokjax.generate`` Strategy that draws the rollouts) with
``arrays(out, width) -> dict`` (per-row arrays it recorded, added to every loss batch), ``loss`` (the
registered loss that replaces GRPO's) and ``logp(params, cfg, batch) -> [B, W-1]`` (the log-likelihood
``old_logp`` / ``ref_logp`` come from; default the token log-probs). ``RLConfig.rloo`` centres each
rollout on the other rollouts of its group. ``RLConfig`` holds
the hyperparameters; every array the loss reads is a runtime value, so steps do not recompile
(rollout widths are padded to ``max_prompt_len + max_new_tokens``).
"""

from __future__ import annotations

import dataclasses
import functools
import time
from typing import Any, Callable, Protocol, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from tokjax.decoding import generate
from tokjax.logits import chain as chain_logits
from tokjax.logits import temperature as temperature_transform
from tokjax.losses import token_stats
from tokjax.losses._stats import chain
from tokjax.losses.grpo import (
    ADVANTAGE_SCALES, DENOMINATORS, GRPO_REDUCTIONS, group_advantages, grpo_loss, make_grpo_loss,
)
from tokjax.model import Model
from tokjax.train._config import TrainConfig
from tokjax.train._step import init_state, make_optimizer, make_train_step

__all__ = ["RLConfig", "RLTask", "Rollouts", "make_aux_loss", "rl_train", "rollout", "rollout_batch", "scoring"]


class RLTask(Protocol):
    """What :func:`rl_train` needs from a task (verifiable rewards)."""

    def prompts(self, step: int, n: int) -> tuple[list[list[int]], list[Any]]:
        """Returns n prompts (token-id lists) and their answers for RL step ``step`` (a pure function of it)."""

    def reward(self, completions: list[np.ndarray], answers: list[Any]) -> tuple[np.ndarray, np.ndarray]:
        """Returns (float rewards [B], bool format-valid [B]) of completions (token ids, eos/stop included)."""


@dataclasses.dataclass(frozen=True)
class RLConfig:
    """Hyperparameters of :func:`rl_train` (frozen). Optimiser as :class:`tokjax.train.TrainConfig`
    (AdamW, constant ``lr`` after ``warmup_steps``); loss options as :func:`tokjax.losses.grpo.grpo_loss`."""

    steps: int = 48
    prompts_per_step: int = 4
    group_size: int = 8
    max_new_tokens: int = 48
    max_prompt_len: int = 256
    temperature: float = 1.0
    inner_steps: int = 1
    lr: float = 1e-5
    warmup_steps: int = 0
    weight_decay: float = 0.0
    grad_clip: float | None = 1.0
    eps_low: float = 0.2
    eps_high: float = 0.28
    beta: float = 0.0
    reduction: str = "token_mean"
    denominator: str = "valid"
    scale: str = "group"
    rloo: bool = False
    mask_truncated: bool = False
    trainable: tuple[str, ...] | None = None
    seed: int = 0

    def __post_init__(self):
        for name in ("steps", "prompts_per_step", "max_new_tokens", "max_prompt_len", "inner_steps"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"RLConfig.{name} must be an int >= 1, got {v!r}")
        if not isinstance(self.group_size, int) or self.group_size < 2:
            raise ValueError(f"RLConfig.group_size must be an int >= 2 (GRPO compares rollouts of a prompt), "
                             f"got {self.group_size!r}")
        if not self.temperature > 0:
            raise ValueError(f"RLConfig.temperature must be > 0, got {self.temperature!r}")
        if not 0 <= self.eps_low < 1 or not self.eps_high >= 0:
            raise ValueError(f"RLConfig needs 0 <= eps_low < 1 and eps_high >= 0, got {self.eps_low}, {self.eps_high}")
        if self.beta < 0:
            raise ValueError(f"RLConfig.beta must be >= 0, got {self.beta!r}")
        for name, allowed in (("reduction", GRPO_REDUCTIONS), ("denominator", DENOMINATORS),
                              ("scale", ADVANTAGE_SCALES)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"RLConfig.{name} must be one of {allowed}, got {getattr(self, name)!r}")

    def train_config(self) -> TrainConfig:
        """Returns the TrainConfig of the optimiser (constant lr after warm-up, as TRL's GRPO default)."""
        return TrainConfig(lr=self.lr, warmup_steps=self.warmup_steps,
                           total_steps=max(self.steps * self.inner_steps, self.warmup_steps + 1),
                           weight_decay=self.weight_decay, grad_clip=self.grad_clip, min_lr_ratio=1.0,
                           b2=0.999, seed=self.seed, trainable=self.trainable)


@dataclasses.dataclass
class Rollouts:
    """Sampled completions, ``group_size`` consecutive rows per prompt (host numpy arrays).

    ``tokens`` [B, W] (prompt then completion, padded), ``prompt_lengths`` / ``lengths`` [B],
    ``truncated`` [B] (the row hit ``max_new_tokens`` without an eos), ``completions`` (each row's
    completion ids), ``answers`` (one per row), ``rewards`` / ``format_ok`` once scored, ``arrays``
    (per-row arrays a custom rollout strategy recorded, e.g. the fed embeddings; None for plain sampling).
    """

    tokens: np.ndarray
    prompt_lengths: np.ndarray
    lengths: np.ndarray
    truncated: np.ndarray
    completions: list
    answers: list
    group_size: int
    rewards: np.ndarray | None = None
    format_ok: np.ndarray | None = None
    arrays: dict | None = None


def rollout(model: Model, prompts: Sequence[Sequence[int]], answers: Sequence[Any], *, key, group_size: int,
            max_new_tokens: int, temperature: float = 1.0, eos_id=None, stop=None, tokenizer=None,
            width: int | None = None, strategy=None, arrays: Callable | None = None, logits=None) -> Rollouts:
    """Returns ``group_size`` sampled completions of every prompt (prompt-major), from :func:`tokjax.generate`.

    ``width`` pads the token array to a fixed [B, width] (so the train step compiles once); it must
    hold the longest prompt plus ``max_new_tokens``. ``strategy``: the generate Strategy that draws them
    (default plain sampling); ``arrays(out, width) -> dict`` reads the per-row arrays it recorded into
    ``Rollouts.arrays``. ``logits``: a LogitTransform applied after the temperature (e.g. ``min_p``; None: the
    temperature alone, bit for bit).
    """
    if len(prompts) != len(answers):
        raise ValueError(f"got {len(prompts)} prompts but {len(answers)} answers")
    transform = temperature_transform(temperature)
    if logits is not None:
        transform = chain_logits(transform, logits)
    out = generate(model, [list(p) for p in prompts], key=key, n=group_size, max_new_tokens=max_new_tokens,
                   logits=transform, eos_id=eos_id, stop=stop, tokenizer=tokenizer,
                   strategy=strategy)
    tokens = np.asarray(out.tokens)
    if width is not None:
        if tokens.shape[1] > width:
            raise ValueError(f"rollouts need {tokens.shape[1]} token slots (longest prompt + max_new_tokens) but "
                             f"width is {width}; raise RLConfig.max_prompt_len or shorten the prompts")
        tokens = np.pad(tokens, ((0, 0), (0, width - tokens.shape[1])))
    completions = out.completions()
    eos = set(np.atleast_1d(eos_id).tolist()) if eos_id is not None else set()
    new = np.asarray(out.lengths) - np.asarray(out.prompt_lengths)
    truncated = np.array([n >= max_new_tokens and (len(c) == 0 or int(c[-1]) not in eos)
                          for n, c in zip(new, completions)], bool)
    return Rollouts(tokens=tokens, prompt_lengths=np.asarray(out.prompt_lengths), lengths=np.asarray(out.lengths),
                    truncated=truncated, completions=completions,
                    answers=[a for a in answers for _ in range(group_size)], group_size=group_size,
                    arrays=None if arrays is None else _rollout_arrays(arrays, out, width, len(tokens)))


def _rollout_arrays(arrays: Callable, out, width, rows: int) -> dict:
    got = arrays(out, width)
    if not isinstance(got, dict) or any(k in got for k in ("tokens", "prompt_lengths", "lengths", "mask")):
        raise ValueError("arrays(out, width) must return a dict of extra batch arrays (not tokens, prompt_lengths, "
                         f"lengths or mask), got {type(got).__name__} {sorted(got) if isinstance(got, dict) else ''}")
    for k, v in got.items():
        if np.ndim(v) and np.shape(v)[0] != rows:
            raise ValueError(f"arrays()[{k!r}] has {np.shape(v)[0]} rows, the rollouts {rows}")
    return {k: jnp.asarray(v) for k, v in got.items()}


def rollout_batch(r: Rollouts, *, mask_truncated: bool = False, keep: np.ndarray | None = None) -> dict:
    """Returns the token_stats batch of the rollouts: ``tokens``, ``prompt_lengths``, ``lengths`` and a
    per-target ``mask`` [B, W-1] that drops truncated rows (``mask_truncated``) and rows not in ``keep``."""
    rows = np.ones(len(r.tokens), bool)
    if mask_truncated:
        rows &= ~r.truncated
    if keep is not None:
        rows &= np.asarray(keep, bool)
    W = r.tokens.shape[1]
    return {"tokens": jnp.asarray(r.tokens, jnp.int32), "prompt_lengths": jnp.asarray(r.prompt_lengths, jnp.int32),
            "lengths": jnp.asarray(r.lengths, jnp.int32), "mask": jnp.asarray(np.repeat(rows[:, None], W - 1, 1)),
            **(r.arrays or {})}


@functools.partial(jax.jit, static_argnums=1)
def _stats(params, cfg, batch):  # what a ``shape`` plug-in reads: one compiled program for every step
    return jax.lax.stop_gradient(token_stats(params, cfg, batch))


@functools.partial(jax.jit, static_argnums=1, static_argnames=("span",))
def _logp(params, cfg, batch, span=None):  # old_logp / ref_logp: token log-probs (``span``: of the completion window)
    return jax.lax.stop_gradient(token_stats(params, cfg, batch, span=span).logp)


@functools.lru_cache(maxsize=16)
def _jit_logp(logp: Callable) -> Callable:
    return jax.jit(lambda params, cfg, batch: jax.lax.stop_gradient(logp(params, cfg, batch)), static_argnums=1)


_AUX_FIELDS = ("hidden", "entropy")


def make_aux_loss(aux: Callable, *, eps_low=0.2, eps_high=0.28, beta=0.0, reduction: str = "token_mean",
                  denominator: str = "valid", transforms=(), on_policy: bool = False) -> Callable:
    """Returns ``loss_fn(params, cfg, batch, rng) -> (loss, metrics)``: the GRPO loss of
    :func:`tokjax.losses.grpo.make_grpo_loss` plus ``aux(params, cfg, batch, stats)`` on one forward.

    ``stats`` is the batch's TokenStats before ``transforms`` (with ``hidden`` / ``entropy`` when
    ``aux.requires`` names them); the GRPO term sees the transformed stats exactly as
    ``make_grpo_loss`` does. ``on_policy``: as ``make_grpo_loss``'s, ``old_logp`` is the stop-gradient of
    this forward's log-probs (and that is the ``batch["old_logp"]`` the transforms and ``aux`` see).
    Metrics: GRPO's (``loss`` = the total), ``grpo_loss`` and the aux's own metrics (an aux metric may
    not reuse a GRPO metric's name).
    """
    if not callable(aux):
        raise ValueError(f"aux must be callable (params, cfg, batch, stats) -> (loss, metrics), got "
                         f"{type(aux).__name__}")
    requires = tuple(getattr(aux, "requires", ()))
    if set(requires) - set(_AUX_FIELDS):
        raise ValueError(f"aux.requires may name {_AUX_FIELDS}, got {requires}")
    make_grpo_loss(eps_low=eps_low, eps_high=eps_high, beta=beta, reduction=reduction,
                   denominator=denominator)  # validates the options
    transform = chain(*transforms) if isinstance(transforms, (tuple, list)) else transforms
    want_entropy = "entropy" in requires or "entropy" in transform.requires
    needs = ("advantages",) if on_policy else ("old_logp", "advantages")

    def loss_fn(params, cfg, batch, rng=None):
        del rng
        for key in needs:
            if not isinstance(batch, dict) or key not in batch:
                raise ValueError(f"a GRPO batch needs '{key}' (and the rollout tokens); got keys "
                                 f"{sorted(batch) if isinstance(batch, dict) else type(batch).__name__}")
        raw = token_stats(params, cfg, batch, entropy=want_entropy, hidden="hidden" in requires)
        if on_policy:
            batch = {**batch, "old_logp": jax.lax.stop_gradient(raw.logp)}
        stats, _ = transform.apply(raw, transform.init(), batch)
        loss, metrics = grpo_loss(stats, batch["old_logp"], batch["advantages"], eps_low=eps_low, eps_high=eps_high,
                                  beta=beta, reduction=reduction, denominator=denominator,
                                  normalizer=batch.get("normalizer"))
        out = aux(params, cfg, batch, raw)
        if not (isinstance(out, tuple) and len(out) == 2 and isinstance(out[1], dict)):
            raise ValueError(f"aux must return (scalar loss, metrics dict), got {type(out).__name__}")
        aux_loss, aux_metrics = out
        if jnp.ndim(aux_loss) != 0:
            raise ValueError(f"aux must return a scalar loss, got shape {jnp.shape(aux_loss)}")
        clash = (set(aux_metrics) & set(metrics)) | ({"grpo_loss"} & set(aux_metrics))
        if clash:
            raise ValueError(f"aux metric name(s) {sorted(clash)} clash with the GRPO metrics; rename them")
        total = loss + jnp.asarray(aux_loss, jnp.float32)
        return total, {**metrics, "loss": total, "grpo_loss": loss, **aux_metrics}

    return loss_fn


def _prepared(prepare, r: Rollouts, batch: dict) -> dict:
    """Returns ``prepare(r, batch)`` after checking that it kept every token of the rows (< lengths)."""
    out = prepare(r, dict(batch))
    if not isinstance(out, dict) or "tokens" not in out:
        raise ValueError(f"prepare must return the batch dict (with 'tokens'), got {type(out).__name__}")
    before, after = np.asarray(batch["tokens"]), np.asarray(out["tokens"])
    if after.shape != before.shape:
        raise ValueError(f"prepare changed the token array's shape {before.shape} -> {after.shape}")
    inside = np.arange(before.shape[1])[None, :] < np.asarray(r.lengths)[:, None]
    if not np.array_equal(np.where(inside, before, 0), np.where(inside, after, 0)):
        raise ValueError("prepare changed a prompt or completion token; it may only write after a row's last "
                         "token (position >= lengths)")
    for k in ("prompt_lengths", "lengths", "mask"):
        if k in out and not np.array_equal(np.asarray(out[k]), np.asarray(batch[k])):
            raise ValueError(f"prepare changed batch[{k!r}]; it may only add arrays and write after the rows")
    return out


def scoring(config: RLConfig, *, loss=None, logp=None, aux=None, prepare=None) -> tuple[bool, int | None]:
    """Returns (on_policy, span): how :func:`rl_train` scores the rollouts under ``config`` and its plug-ins.

    ``on_policy`` (``inner_steps == 1`` and the GRPO loss on token log-probs, i.e. no ``loss`` / ``logp``
    plug-in): the one optimiser step starts from the sampling parameters, so ``old_logp`` is the
    stop-gradient of the loss's own forward (``make_grpo_loss(on_policy=True)``, as TRL with
    ``num_iterations=1``) and the separate old-logp forward is skipped; the loss value and gradient are
    the separate forward's up to float rounding (the ratio is exactly 1 instead of 1 +- 1e-7).
    ``span`` (``max_new_tokens`` unless a ``loss`` / ``logp`` / ``aux`` / ``prepare`` plug-in may read other
    positions, e.g. LaSeR's token after the row): the head runs on each row's completion window only
    (``token_stats(span=)``), not on its prompt positions, whose targets the loss masks anyway.
    """
    plain = loss is None and logp is None
    span = config.max_new_tokens if plain and aux is None and prepare is None else None
    return plain and config.inner_steps == 1, span


def rl_train(model: Model, task: RLTask, config: RLConfig = RLConfig(), *, transforms: Sequence = (),
             reference: Model | None = None, shape: Callable | None = None, select: Callable | None = None,
             aux: Callable | None = None, prepare: Callable | None = None,
             strategy=None, arrays: Callable | None = None, loss: Callable | None = None,
             logp: Callable | None = None, logits=None,
             eos_id=None, stop=None, tokenizer=None, progress: bool = False,
             callback: Callable | None = None) -> tuple[Model, list[dict]]:
    """Returns (the trained Model, per-step history) of GRPO/DAPO on ``task`` (steps in the module docstring).

    ``reference``: the model for ``ref_logp`` (needed when ``config.beta`` > 0). History rows:
    ``step``, ``reward`` (mean), ``accuracy`` (fraction with reward > 0), ``format_ok``,
    ``truncated``, ``zero_adv_groups``, the loss metrics of the last inner step, ``seconds``.
    ``callback(step, model, row)`` runs after every step with the updated Model (e.g. a held-out
    evaluation; whatever it returns is ignored and its time is not in ``seconds``).
    ``prepare`` / ``aux`` / ``strategy``, ``arrays``, ``loss``, ``logp``: see the module docstring (None: the
    plain GRPO loop, bit for bit). ``logits``: a LogitTransform the rollouts are sampled with after the
    temperature (e.g. P28's ``min_p(0.03)``); ``old_logp`` stays the policy's own token log-probs.
    """
    if not isinstance(config, RLConfig):
        raise ValueError(f"config must be an RLConfig, got {type(config).__name__}")
    if config.beta > 0 and reference is None:
        raise ValueError("RLConfig.beta > 0 needs a reference model (rl_train(..., reference=model))")
    if reference is not None and reference.cfg.vocab_size != model.cfg.vocab_size:
        raise ValueError(f"the reference's vocabulary ({reference.cfg.vocab_size}) differs from the policy's "
                         f"({model.cfg.vocab_size})")
    cfg = model.cfg
    tc = config.train_config()
    optimizer = make_optimizer(tc)
    state = init_state(cfg, optimizer, config.seed, params=model.params)
    options = dict(eps_low=config.eps_low, eps_high=config.eps_high, beta=config.beta, reduction=config.reduction,
                   denominator=config.denominator, transforms=tuple(transforms))
    if loss is not None and (aux is not None or transforms):
        raise ValueError("loss= replaces the GRPO objective whole; give aux / transforms to the GRPO loss, not with it")
    for name, fn in (("loss", loss), ("logp", logp), ("arrays", arrays)):
        if fn is not None and not callable(fn):
            raise ValueError(f"{name} must be callable, got {type(fn).__name__}")
    on_policy, span = scoring(config, loss=loss, logp=logp, aux=aux, prepare=prepare)
    if loss is None:
        loss_fn = make_grpo_loss(**options, on_policy=on_policy, span=span) if aux is None else \
            make_aux_loss(aux, **options, on_policy=on_policy)
    else:
        loss_fn = loss
    old_logp = functools.partial(_logp, span=span) if logp is None else _jit_logp(logp)
    if prepare is not None and not callable(prepare):
        raise ValueError(f"prepare must be callable (rollouts, batch) -> batch, got {type(prepare).__name__}")
    step_fn = make_train_step(cfg, optimizer, loss_fn, trainable=tc.trainable, donate=False)
    key = jax.random.key(config.seed)
    width = config.max_prompt_len + config.max_new_tokens
    G = config.group_size
    history = []
    for step in range(config.steps):
        t0 = time.perf_counter()
        prompts, answers = task.prompts(step, config.prompts_per_step)
        if any(len(p) > config.max_prompt_len for p in prompts):
            raise ValueError(f"a prompt is longer than RLConfig.max_prompt_len={config.max_prompt_len}")
        r = rollout(Model(params=state.params, cfg=cfg), prompts, answers, key=jax.random.fold_in(key, step),
                    group_size=G, max_new_tokens=config.max_new_tokens, temperature=config.temperature,
                    eos_id=eos_id, stop=stop, tokenizer=tokenizer, width=width, strategy=strategy, arrays=arrays,
                    logits=logits)
        rewards, fmt = task.reward(r.completions, r.answers)
        r.rewards, r.format_ok = np.asarray(rewards, np.float32), np.asarray(fmt, bool)
        if r.rewards.shape != (len(r.tokens),):
            raise ValueError(f"task.reward must return one reward per rollout ({len(r.tokens)}), got shape "
                             f"{r.rewards.shape}")
        batch = rollout_batch(r, mask_truncated=config.mask_truncated)
        if prepare is not None:
            batch = _prepared(prepare, r, batch)
        if not on_policy:
            batch["old_logp"] = old_logp(state.params, cfg, batch)
        if reference is not None:
            batch["ref_logp"] = old_logp(reference.params, reference.cfg, batch)
        adv = group_advantages(r.rewards, G, scale=config.scale, rloo=config.rloo)
        if shape is not None:
            adv = jnp.asarray(shape(r, _stats(state.params, cfg, batch)), jnp.float32)
        if select is not None:
            keep, extra = select(r, adv, step), {}
            if isinstance(keep, dict):  # {"keep": [B], **runtime arrays for the loss, e.g. a scheduled ratio}
                if "keep" not in keep:
                    raise ValueError(f"select returned a dict without 'keep' (keys {sorted(keep)})")
                extra = {k: jnp.asarray(v) for k, v in keep.items() if k != "keep"}
                keep = keep["keep"]
            kept = rollout_batch(r, mask_truncated=config.mask_truncated, keep=keep)
            if prepare is not None:
                kept = _prepared(prepare, r, kept)
            batch = kept | {k: batch[k] for k in ("old_logp", "ref_logp") if k in batch} | extra
        batch["advantages"] = adv
        for _ in range(config.inner_steps):
            state, metrics = step_fn(state, batch)
        g = r.rewards.reshape(-1, G)
        row = {"step": step, "reward": float(r.rewards.mean()), "accuracy": float((r.rewards > 0).mean()),
               "format_ok": float(r.format_ok.mean()), "truncated": float(r.truncated.mean()),
               "zero_adv_groups": float(np.mean(np.all(g == g[:, :1], axis=1))),
               **{k: float(v) for k, v in metrics.items()}, "seconds": time.perf_counter() - t0}
        history.append(row)
        if callback is not None:
            callback(step, Model(params=state.params, cfg=cfg), row)
        if progress:
            print(f"rl step {step}: reward {row['reward']:.3f} loss {row['loss']:.4f} ({row['seconds']:.1f} s)",
                  flush=True)
    return Model(params=state.params, cfg=cfg), history
