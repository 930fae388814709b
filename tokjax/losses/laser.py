"""P47 LaSeR: reinforcement learning with last-token self-rewarding.

After a rollout ``y`` of prompt ``x`` ends (its eos included), a fixed *non-eos* token ``z_c`` is
appended; the policy's log-probability of it is the self-reward (Zhang et al., "LaSeR: Reinforcement
Learning with Last-Token Self-Rewarding"; code RUCBM/LaSeR on verl):

    r_s   = beta_v * (tau * log pi_theta(z_c | x, y) - c_ref)                       (self-reward)
    L     = L_GRPO + lam * mean_i  w_i * m_i * (r_s,i - r_v,i)^2                     (aux MSE)
    A     = (1 - alpha) * A_v + alpha * A_self                                        (mixing)
    A_self,i = (s_i - mean_g s) / std_g s,  s_i = m_i * clip(r_s,i, 0, 1)  (group z-score, std ddof 1)
             = A_v,i  for the whole group when std_g s <= filter_std                 (no self-signal)

``r_v`` is the verifier reward (0/1), ``m_i`` = 1 for rollouts that finished (not truncated) and got
``z_c`` appended, the mean runs over all rows of the batch (as the released ``.mean()``), ``w_i`` the
optional class-balanced weights ``n / (2 n_correct)`` / ``n / (2 n_wrong)`` over the finished rows
(``self_reward_loss_balanced=True`` in the released scripts). ``c_ref`` replaces the reference model's
log-prob of ``z_c`` by a constant (the code's ``ref_model_log_ratio_constant``: -23 for Qwen2.5-7B);
here it is measured on the *initial* policy (:func:`reference_constant`: the mean of
``tau * log pi_0(z_c | x, y)`` over its rollouts), so r_s starts near 0. At the MSE optimum r_s ->
E[r_v | x, y]: a calibrated self-verification score, thresholded at 0.5 for the F1 the code reports,
and a weight for r_s-weighted majority voting (:func:`weighted_vote`).

Checked against the released code (``verl/workers/actor/dp_actor.py``, ``verl/trainer/ppo/ray_trainer.py``,
``examples/grpo_trainer/run_qwen2_5_7b.sh``): z_c is written one slot after the eos (so it reads x, y
and the eos) for finished rows only; ``tau`` multiplies the log-prob because verl divides the logits by
the rollout temperature (``logits.div_(temperature)``) before the log-softmax; beta_v
(``self_reward_kl_coef``) = lam (``self_reward_loss_coef``) = alpha
(``self_rewarding_advantages_integration_coef``) = 0.1, filter_std (``..._filtering_threshold``) = 0.1;
the loss is ``((r_s - r_v)^2 * finished * reweighting).mean()``; A_self clips r_s to [0, 1] before the
group z-score and falls back to A_v below the filter. Not reproduced here: the released warm-ups
(the aux loss from step 200, the mixing from step 400), and the released A_self reads ``old_log_probs``
computed on the un-appended tokens (this module uses log pi_old(z_c) as the equations say).

tokjax's RL loop (``tokjax.train.rl``) scores the *untempered* policy (old_logp and the GRPO ratio
use T = 1 logits), so ``temperature=1`` is the faithful setting there; ``temperature`` is the tau of
the equation for callers whose log-probs are tempered. All hyperparameters reach the jitted loss as
float32 arrays in the batch (a new value does not recompile).

Use with :func:`tokjax.train.rl.rl_train` (``laser = LaSeR(z_c, eos_id, c_ref)``)::

    rl_train(model, task, cfg, eos_id=eos, prepare=laser.prepare, shape=laser.shape, aux=laser.aux)

``lam = 0`` and ``alpha = 0`` give GRPO exactly (loss and gradients).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from tokjax.logits._base import check_range
from tokjax.losses._next_token import token_stats
from tokjax.losses.grpo import ADVANTAGE_SCALES, group_advantages

__all__ = ["LaSeR", "append_token", "last_token_logp", "mix_advantages", "reference_constant",
           "self_advantages", "self_reward", "self_reward_loss", "self_verification_f1", "weighted_vote",
           "z_c_logp"]

_F32 = jnp.float32


def _concrete(x) -> bool:
    return not isinstance(x, jax.core.Tracer)


def _check_zc(z_c, eos_id, vocab_size=None) -> None:
    if not isinstance(z_c, (int, np.integer)) or isinstance(z_c, bool) or z_c < 0:
        raise ValueError(f"z_c must be a non-negative int token id, got {z_c!r}")
    eos = set() if eos_id is None else {int(e) for e in np.atleast_1d(eos_id)}
    if int(z_c) in eos:
        raise ValueError(f"z_c must not be an eos id (got z_c={z_c}, eos {sorted(eos)}): LaSeR appends z_c after "
                         "the eos, and an eos z_c would be the policy's own stop token; pick an unused token")
    if vocab_size is not None and int(z_c) >= vocab_size:
        raise ValueError(f"z_c={z_c} is outside the vocabulary (size {vocab_size})")


def append_token(tokens, lengths, z_c: int, valid=None) -> tuple[jax.Array, jax.Array]:
    """Returns (tokens with ``z_c`` written at position ``lengths[b]`` of every valid row, bool [B]
    rows that got it). ``tokens`` [B, W]; a row with ``lengths == W`` has no slot and is not valid.
    Positions < lengths are untouched (so every completion log-prob is unchanged, causal attention)."""
    tokens = jnp.asarray(tokens)
    if tokens.ndim != 2:
        raise ValueError(f"tokens must be [B, W], got shape {tuple(tokens.shape)}")
    B, W = tokens.shape
    lengths = jnp.asarray(lengths, jnp.int32)
    if lengths.shape != (B,):
        raise ValueError(f"lengths must be [B]={B}, got {tuple(lengths.shape)}")
    ok = lengths < W
    if valid is not None:
        ok &= jnp.asarray(valid).astype(bool)
    hit = (jnp.arange(W)[None, :] == lengths[:, None]) & ok[:, None]
    return jnp.where(hit, jnp.asarray(z_c, tokens.dtype), tokens), ok


def last_token_logp(logp, lengths) -> jax.Array:
    """Returns float32 [B] ``logp[b, lengths[b] - 1]``: the log-prob of the token at position ``lengths``
    (the appended z_c) from per-target log-probs [B, T] (target t = token t+1). Rows with lengths - 1
    outside [0, T) read a clamped position (mask them)."""
    logp = jnp.asarray(logp, _F32)
    if logp.ndim != 2:
        raise ValueError(f"logp must be [B, T], got shape {tuple(logp.shape)}")
    idx = jnp.clip(jnp.asarray(lengths, jnp.int32) - 1, 0, logp.shape[1] - 1)
    return jnp.take_along_axis(logp, idx[:, None], axis=1)[:, 0]


def self_reward(logp_zc, *, c_ref, beta_v=0.1, temperature=1.0) -> jax.Array:
    """Returns r_s = beta_v * (tau * log pi(z_c | x, y) - c_ref), float32 (P47's self-reward)."""
    check_range(beta_v, "beta_v", lo=0.0, lo_open=True)
    check_range(temperature, "temperature", lo=0.0, lo_open=True)
    return jnp.asarray(beta_v, _F32) * (jnp.asarray(temperature, _F32) * jnp.asarray(logp_zc, _F32)
                                        - jnp.asarray(c_ref, _F32))


def self_reward_loss(r_s, r_v, valid, *, coef=0.1, balanced: bool = True) -> tuple[jax.Array, jax.Array]:
    """Returns (coef * mean_i w_i m_i (r_s,i - r_v,i)^2, per-row weights w_i m_i [B]) (P47's aux MSE).

    The mean divides by all B rows (finished or not, as the released code); ``balanced`` weights the
    finished rows by n / (2 n_correct) and n / (2 n_wrong) (correct: r_v >= 0.5); a class with no rows
    gets weight 0. The gradient reaches the policy only through r_s (r_v and the weights are constants).
    """
    check_range(coef, "coef", lo=0.0)
    r_s, r_v = jnp.asarray(r_s, _F32), jax.lax.stop_gradient(jnp.asarray(r_v, _F32))
    m = jnp.asarray(valid).astype(bool)
    if r_s.ndim != 1 or r_v.shape != r_s.shape or m.shape != r_s.shape:
        raise ValueError(f"r_s, r_v and valid must all be [B]; got {r_s.shape}, {r_v.shape}, {m.shape}")
    if _concrete(r_v) and not bool(np.all(np.isfinite(np.asarray(r_v)))):
        raise ValueError("verifier rewards r_v must be finite (got NaN or inf)")
    w = m.astype(_F32)
    if balanced:
        right = r_v >= 0.5
        n_c = jnp.sum(m & right).astype(_F32)
        n_w = jnp.sum(m & ~right).astype(_F32)
        n = n_c + n_w
        w = w * jnp.where(right, jnp.where(n_c > 0, n / (2 * jnp.maximum(n_c, 1.0)), 0.0),
                          jnp.where(n_w > 0, n / (2 * jnp.maximum(n_w, 1.0)), 0.0))
    diff = jnp.where(m, r_s - r_v, 0.0)  # finite stand-in: a truncated row's clamped read cannot leak a NaN
    return jnp.asarray(coef, _F32) * jnp.sum(w * diff ** 2) / r_s.shape[0], jax.lax.stop_gradient(w)


def self_advantages(r_s, valid, group_size: int, *, filter_std=0.1) -> tuple[jax.Array, jax.Array]:
    """Returns (A_self [B], informative [B] bool): the group z-score of s = valid * clip(r_s, 0, 1)
    (std ddof 1, as torch.std); ``informative`` is False (and A_self 0) in groups whose std <= filter_std."""
    check_range(filter_std, "filter_std", lo=0.0)
    r_s = jax.lax.stop_gradient(jnp.asarray(r_s, _F32))
    if r_s.ndim != 1 or r_s.shape[0] % group_size or group_size < 2:
        raise ValueError(f"r_s must be [B] with B a multiple of group_size >= 2, got {r_s.shape}, {group_size}")
    s = jnp.where(jnp.asarray(valid).astype(bool), jnp.clip(r_s, 0.0, 1.0), 0.0).reshape(-1, group_size)
    sd = jnp.std(s, axis=1, ddof=1, keepdims=True)
    info = sd > jnp.asarray(filter_std, _F32)
    a = jnp.where(info, (s - jnp.mean(s, axis=1, keepdims=True)) / jnp.where(info, sd, 1.0), 0.0)
    return a.reshape(-1), jnp.broadcast_to(info, s.shape).reshape(-1)


def mix_advantages(a_v, a_self, informative, alpha=0.1) -> jax.Array:
    """Returns A = (1 - alpha) A_v + alpha A_self where ``informative``, else A_v (float32 [B])."""
    check_range(alpha, "alpha", lo=0.0, hi=1.0)
    a_v, a_self = jnp.asarray(a_v, _F32), jnp.asarray(a_self, _F32)
    al = jnp.asarray(alpha, _F32)
    return jnp.where(jnp.asarray(informative).astype(bool), (1.0 - al) * a_v + al * a_self, a_v)


def z_c_logp(params, cfg, batch: dict, z_c: int, *, valid=None) -> tuple[jax.Array, jax.Array]:
    """Returns (log pi(z_c | x, y) [B], rows that got z_c [B]) of a rollout batch (``tokens`` [B, W],
    ``lengths``): z_c is appended at ``lengths`` and :func:`tokjax.losses.token_stats` reads its log-prob
    at the last position (one forward, no [B, T, V] logits). ``valid``: rows to score (e.g. finished)."""
    if not isinstance(batch, dict) or "tokens" not in batch or "lengths" not in batch:
        raise ValueError("batch must be a dict with 'tokens' [B, W] and 'lengths' [B]")
    _check_zc(z_c, None, cfg.vocab_size)
    tokens, ok = append_token(batch["tokens"], batch["lengths"], z_c, valid)
    stats = token_stats(params, cfg, {**batch, "tokens": tokens})
    return last_token_logp(stats.logp, batch["lengths"]), ok


def reference_constant(logp_zc, valid, *, temperature=1.0) -> float:
    """Returns c_ref = mean over valid rows of tau * log pi_0(z_c | x, y) (the initial policy's; host float)."""
    lp, m = np.asarray(logp_zc, np.float64), np.asarray(valid, bool)
    if not m.any():
        raise ValueError("reference_constant needs at least one valid (finished) rollout")
    return float(temperature * lp[m].mean())


def self_verification_f1(r_s, correct, *, threshold: float = 0.5) -> dict:
    """Returns {"f1", "precision", "recall", "accuracy", "positive_rate"} of predicting ``correct`` by
    r_s > threshold (0.5 as the released evaluation), and the F1 of the constant "always correct"
    predictor (``f1_constant`` = 2p / (1 + p), p the positive rate)."""
    r, y = np.asarray(r_s, float), np.asarray(correct, bool)
    if r.shape != y.shape or r.ndim != 1 or len(r) == 0:
        raise ValueError(f"r_s and correct must be equal-length non-empty [N], got {r.shape}, {y.shape}")
    pred = r > threshold
    tp, fp, fn = int(np.sum(pred & y)), int(np.sum(pred & ~y)), int(np.sum(~pred & y))
    prec = tp / (tp + fp) if tp + fp else 0.0
    rec = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * prec * rec / (prec + rec) if prec + rec else 0.0
    p = float(y.mean())
    return {"f1": f1, "precision": prec, "recall": rec, "accuracy": float(np.mean(pred == y)),
            "positive_rate": p, "f1_constant": 2 * p / (1 + p) if p > 0 else 0.0}


def weighted_vote(answers: Sequence[Any], scores=None) -> Any:
    """Returns the answer with the largest total weight over samples (``None`` answers are abstentions).

    ``scores`` None: plain majority vote (weight 1 each); else each sample votes with weight
    clip(r_s, 0, 1) (the range A_self uses), and when every weight is 0 the plain vote decides. Ties go
    to the answer seen first."""
    answers = list(answers)
    w = np.ones(len(answers)) if scores is None else np.clip(np.asarray(scores, float), 0.0, 1.0)
    if w.shape != (len(answers),):
        raise ValueError(f"scores must have one value per answer ({len(answers)}), got shape {w.shape}")
    if scores is not None and not np.all(np.isfinite(w)):
        raise ValueError("scores must be finite")
    votes: dict = {}
    for a, x in zip(answers, w):
        if a is not None:
            votes[a] = votes.get(a, 0.0) + float(x)
    if not votes:
        return None
    if scores is not None and max(votes.values()) <= 0.0:
        return weighted_vote(answers)
    return max(votes, key=votes.get)  # dict order = first seen, max keeps the first of equal totals


@dataclasses.dataclass(frozen=True)
class LaSeR:
    """P47 LaSeR plug-ins for :func:`tokjax.train.rl.rl_train` (``prepare``, ``shape``, ``aux``).

    ``z_c``: the appended self-reward token (not an eos id); ``eos_id``: the task's eos id(s);
    ``c_ref``: the constant reference (:func:`reference_constant` on the initial policy);
    ``beta_v`` = ``lam`` = ``alpha`` = 0.1 (self-reward scale, aux MSE weight, advantage mixing);
    ``temperature`` tau; ``balanced`` class-balanced MSE weights; ``filter_std`` A_self's group-std
    filter; ``scale``: A_v's :func:`tokjax.losses.grpo.group_advantages` scale (match RLConfig.scale);
    ``vocab_size`` (optional) checks z_c. Equations in the module docstring.
    """

    z_c: int
    eos_id: Any
    c_ref: float
    beta_v: float = 0.1
    lam: float = 0.1
    alpha: float = 0.1
    temperature: float = 1.0
    balanced: bool = True
    filter_std: float = 0.1
    scale: str = "group"
    vocab_size: int | None = None

    def __post_init__(self):
        _check_zc(self.z_c, self.eos_id, self.vocab_size)
        if self.eos_id is None:
            raise ValueError("LaSeR needs the task's eos_id (z_c is appended after the eos; it must differ)")
        check_range(self.beta_v, "beta_v", lo=0.0, lo_open=True)
        check_range(self.lam, "lam", lo=0.0)
        check_range(self.alpha, "alpha", lo=0.0, hi=1.0)
        check_range(self.temperature, "temperature", lo=0.0, lo_open=True)
        check_range(self.filter_std, "filter_std", lo=0.0)
        if not np.isfinite(self.c_ref):
            raise ValueError(f"c_ref must be finite, got {self.c_ref!r}")
        if self.scale not in ADVANTAGE_SCALES:
            raise ValueError(f"scale must be one of {ADVANTAGE_SCALES}, got {self.scale!r}")

    def prepare(self, rollouts, batch: dict) -> dict:
        """rl_train ``prepare``: appends z_c after every finished row and adds the runtime arrays
        ``laser_rewards``, ``laser_valid`` [B] and the hyperparameters (float32 scalars)."""
        if rollouts.rewards is None:
            raise ValueError("LaSeR.prepare needs scored rollouts (rollouts.rewards)")
        tokens, ok = append_token(batch["tokens"], batch["lengths"], self.z_c, ~np.asarray(rollouts.truncated))
        f = lambda v: jnp.asarray(v, _F32)  # noqa: E731
        return {**batch, "tokens": tokens, "laser_valid": ok, "laser_rewards": f(rollouts.rewards),
                "laser_beta_v": f(self.beta_v), "laser_lam": f(self.lam), "laser_c_ref": f(self.c_ref),
                "laser_temperature": f(self.temperature)}

    def self_rewards(self, logp, batch: dict) -> tuple[jax.Array, jax.Array]:
        """Returns (r_s [B], valid [B]) from per-target log-probs [B, T] of a prepared batch."""
        lp = last_token_logp(logp, batch["lengths"])
        valid = jnp.asarray(batch["laser_valid"]).astype(bool)
        if batch.get("mask") is not None:  # rows dropped by select / mask_truncated do not count
            valid &= jnp.any(jnp.asarray(batch["mask"]).astype(bool), axis=1)
        lp = jnp.where(valid, lp, 0.0)
        return (batch["laser_beta_v"] * (batch["laser_temperature"] * lp - batch["laser_c_ref"])), valid

    def aux(self, params, cfg, batch: dict, stats) -> tuple[jax.Array, dict]:
        """rl_train ``aux``: lam * mean (r_s - r_v)^2 on the loss's own forward (log pi_theta(z_c))."""
        del params, cfg
        if "laser_valid" not in batch:
            raise ValueError("LaSeR.aux needs a batch from LaSeR.prepare (rl_train(..., prepare=laser.prepare))")
        r_s, valid = self.self_rewards(stats.logp, batch)
        r_v = batch["laser_rewards"]
        loss, _ = self_reward_loss(r_s, r_v, valid, coef=batch["laser_lam"], balanced=self.balanced)
        n = jnp.maximum(jnp.sum(valid), 1).astype(_F32)
        sg = jax.lax.stop_gradient(r_s)
        pred = sg > 0.5
        right = r_v >= 0.5
        return loss, {"laser_loss": loss, "laser_r_s": jnp.sum(jnp.where(valid, sg, 0.0)) / n,
                      "laser_mse": jnp.sum(jnp.where(valid, (sg - r_v) ** 2, 0.0)) / n,
                      "laser_acc": jnp.sum(valid & (pred == right)) / n}

    def shape(self, rollouts, stats) -> jax.Array:
        """rl_train ``shape``: A = (1 - alpha) A_v + alpha A_self from the sampling policy's r_s (``stats`` of
        the prepared batch; its ``logp`` at the appended position is log pi_old(z_c | x, y))."""
        G = rollouts.group_size
        a_v = group_advantages(rollouts.rewards, G, scale=self.scale)
        lengths = jnp.asarray(rollouts.lengths, jnp.int32)
        tokens_w = stats.logp.shape[1] + 1
        valid = (~jnp.asarray(rollouts.truncated)) & (lengths < tokens_w) & jnp.any(stats.mask, axis=1)
        lp = jnp.where(valid, last_token_logp(stats.logp, lengths), 0.0)
        r_s = self_reward(lp, c_ref=self.c_ref, beta_v=self.beta_v, temperature=self.temperature)
        a_self, info = self_advantages(r_s, valid, G, filter_std=self.filter_std)
        return mix_advantages(a_v, a_self, info, self.alpha)
