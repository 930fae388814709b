"""P7 Reinforcement Mid-Training (RMT): reason-then-predict RL on pretraining text, dynamic budget, curriculum, + NTP.

    model, history = rmt(model, windows, entropy, RMTConfig(), rl=RLConfig(steps=60, group_size=8),
                         think_id=tok.bos_id, end_id=tok.eos_id)

Paper: "Reinforcement Mid-Training" (Tian et al., arXiv 2509.24375, ICLR 2026; P7 of issue 21). On unlabeled text,
for a context x_{<t} the model writes a reasoning trace o and then predicts the next token; RL rewards a right
prediction and a reasoning length near a budget that shrinks over training. Equations (P7):

    B_k      = max(B_min, B_0 * gamma ** (k / T ** kappa))               dynamic token budget, step k of T
    r_len    = max(0, 1 - |len(o) - B_k| / B_k)                            triangular length reward, peak 1 at B_k
    r        = valid * ([y_hat == x_t] + alpha * r_len(len(o); B_k))      reward of one rollout
    p_k(t)  ~= exp(-(rho_t - c_k)^2 / (2 w^2)) on the pool, c_k = k / (T - 1)   curriculum over base entropy H_t
    L        = L_GRPO(rollouts of the sampled tokens) + lambda * L_NTP(all tokens of their windows)

* **Rollout format.** The prompt is the window's prefix x_{<=t-1} then ``think_id``; the completion is
  ``o_1 .. o_m  y_hat  end_id``: the token just before the first ``end_id`` is the prediction, the m tokens before
  it the reasoning (:func:`parse_reasoning`); with an ``answer_id`` it is ``o_1 .. o_m answer_id y_hat end_id``
  (an explicit answer marker, as the paper's boxed answer; the marker is not counted in m). A completion with no ``end_id`` (truncated) or with nothing before
  it is not valid and gets reward 0 (both terms). Rollouts stop at ``end_id`` (``rl_train``'s eos).
* **Curriculum.** Difficulty is the *base* model's entropy H_t of each next-token position (:func:`base_entropy`,
  computed once). The pool is the positions at or above the ``pool_quantile`` entropy quantile (RMT / RPT train RL
  on high-entropy tokens; the low-entropy rest reaches the model through the NTP term); ``rho_t`` is a position's
  entropy rank in the pool scaled to [0, 1]; the sampling weight is a Gaussian in rank around the centre c_k, which
  moves from the easiest (0) to the hardest (1) pool token over training (:func:`curriculum_probs`). The weights
  are a monotone-likelihood-ratio family in c_k, so the expected entropy of the sampled tokens never falls as k
  grows. ``curriculum=False`` samples the pool uniformly.
* **Dual objective.** GRPO / DAPO through :func:`tokjax.train.rl.rl_train` (its reward, advantages, clip, loss and
  optimiser, unchanged) plus lambda x the mean next-token cross-entropy over every token of the windows the step's
  contexts came from, as ``rl_train``'s ``aux`` term on the same optimiser step (:func:`make_ntp_aux`); lambda
  travels in the batch as a runtime array (``ntp_weight``), so a new lambda does not recompile.

Exact reductions (tested): ``ntp_weight = 0`` with ``gamma = 1`` (fixed budget B_0) is plain GRPO on the reward
``[y_hat == x_t] + alpha * r_len(len(o); B_0)``: :func:`rmt` then calls ``rl_train`` with no aux and no prepare,
bit for bit the GRPO loop. The budget is non-increasing in k and never below B_min.

Verified vs unverified (official code "TBD"; none found by searching code, issues and pages for "Reinforcement
Mid-Training" / "RMT" / 2509.24375): the budget schedule ``B_t = max(B_min, B_0 gamma^{t/T^kappa})`` with
``B_min >= 1``, ``gamma in (0, 1)`` and T the total steps, the *triangular* shape of r_len, entropy as the
difficulty, the easy-to-hard curriculum and the GRPO-on-selected + NTP-on-all objective are as a public summary of
the paper states them. **Unverified, documented choices**: the triangle's exact form above (peak 1 at B_k, zero at
0 and at 2 B_k, as in the curriculum-budget "Train Long, Think Short" reward RMT's schedule resembles), the weight
alpha = 1 of r_len and that it is added for wrong predictions too, reward 0 for a malformed completion, the
Gaussian-in-rank sampler and its width, the pool quantile, lambda, the NTP term's normalisation (mean over window
tokens), and the one-token prediction read before ``end_id`` (the paper's model writes ``<think>..</think>`` and a
boxed answer; a tiny model has no such format, so the caller picks two marker ids).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from tokjax.logits._base import check_range
from tokjax.model import Model
from tokjax.train.rl import RLConfig, rl_train

__all__ = ["RMTAnswer", "RMTConfig", "RMTTask", "base_entropy", "curriculum_probs", "length_reward",
           "make_ntp_aux", "parse_reasoning", "reason_then_predict", "rmt", "rmt_reward", "token_budget"]

_F32 = jnp.float32


def _concrete(x) -> bool:
    return not isinstance(x, jax.core.Tracer)


def token_budget(step, total_steps, b0, b_min=1.0, gamma=0.125, kappa=1.0) -> jax.Array:
    """Returns the float32 budget B_k = max(B_min, B_0 * gamma ** (k / T ** kappa)) of step(s) ``step`` (P7).

    ``step`` >= 0 (scalar or array), ``total_steps`` T >= 1, ``b0`` >= ``b_min`` >= 1, ``gamma`` in (0, 1]
    (1: a fixed budget B_0), ``kappa`` >= 0. All may be traced arrays (no recompilation).
    """
    check_range(step, "step", lo=0.0)
    check_range(total_steps, "total_steps", lo=1.0)
    check_range(b_min, "b_min", lo=1.0)
    check_range(b0, "b0", lo=1.0)
    check_range(gamma, "gamma", lo=0.0, hi=1.0, lo_open=True)
    check_range(kappa, "kappa", lo=0.0)
    if _concrete(b0) and _concrete(b_min) and np.any(np.asarray(b0) < np.asarray(b_min)):
        raise ValueError(f"b0 must be >= b_min (the budget starts at B_0 and decays to B_min), got b0={b0}, "
                         f"b_min={b_min}")
    k = jnp.asarray(step, _F32)
    T = jnp.asarray(total_steps, _F32)
    decayed = jnp.asarray(b0, _F32) * jnp.power(jnp.asarray(gamma, _F32), k / jnp.power(T, jnp.asarray(kappa, _F32)))
    return jnp.maximum(jnp.asarray(b_min, _F32), decayed)


def length_reward(length, budget) -> jax.Array:
    """Returns the float32 triangular length reward max(0, 1 - |length - budget| / budget) (P7; form unverified).

    1 when the reasoning length equals the budget, falling linearly to 0 at length 0 and at twice the budget.
    ``length`` [..] >= 0 (reasoning tokens), ``budget`` > 0, broadcastable.
    """
    check_range(budget, "budget", lo=0.0, lo_open=True)
    check_range(length, "length", lo=0.0)
    b = jnp.asarray(budget, _F32)
    return jnp.maximum(0.0, 1.0 - jnp.abs(jnp.asarray(length, _F32) - b) / b)


def rmt_reward(pred, target, length, budget, valid, length_weight=1.0) -> jax.Array:
    """Returns float32 rewards r = valid * ([pred == target] + length_weight * r_len(length; budget)) (P7).

    ``pred`` / ``target`` int [B] (the predicted and the true next token), ``length`` [B] reasoning tokens,
    ``budget`` scalar or [B], ``valid`` bool [B] (a well-formed completion; invalid rows get 0),
    ``length_weight`` >= 0 (alpha; may be traced).
    """
    check_range(length_weight, "length_weight", lo=0.0)
    pred, target = jnp.asarray(pred), jnp.asarray(target)
    if pred.shape != target.shape or pred.ndim != 1:
        raise ValueError(f"pred and target must be int [B] of one shape, got {tuple(pred.shape)} and "
                         f"{tuple(target.shape)}")
    length = jnp.asarray(length)
    valid = jnp.asarray(valid)
    if length.shape != pred.shape or valid.shape != pred.shape:
        raise ValueError(f"length {tuple(length.shape)} and valid {tuple(valid.shape)} must have pred's shape "
                         f"{tuple(pred.shape)}")
    match = (pred == target).astype(_F32)
    r = match + jnp.asarray(length_weight, _F32) * length_reward(jnp.maximum(length, 0), budget)
    return jnp.where(valid.astype(bool), r, 0.0)


def curriculum_probs(entropy, mask, progress, *, width=0.15, pool_quantile=0.5) -> jax.Array:
    """Returns float32 sampling probabilities [N] over positions (P7 curriculum; sampler form unverified).

    ``entropy`` [N] the base model's next-token entropy per position, ``mask`` bool [N] the candidate positions,
    ``progress`` in [0, 1] (k / (T - 1)), ``width`` > 0 (in rank units), ``pool_quantile`` in [0, 1): the pool
    is the candidates with entropy >= that quantile of the candidates' entropies. Weight on the pool
    exp(-(rho - progress)^2 / (2 width^2)) with rho the entropy rank in the pool scaled to [0, 1] (ties broken
    by position); 0 elsewhere. No candidate raises ValueError (concrete inputs).
    """
    check_range(progress, "progress", lo=0.0, hi=1.0)
    check_range(width, "width", lo=0.0, lo_open=True)
    check_range(pool_quantile, "pool_quantile", lo=0.0, hi=1.0, hi_open=True)
    h = jnp.asarray(entropy, _F32)
    m = jnp.asarray(mask)
    if h.ndim != 1 or m.shape != h.shape:
        raise ValueError(f"entropy and mask must be [N] of one shape, got {tuple(h.shape)} and {tuple(m.shape)}")
    m = m.astype(bool)
    if _concrete(h) and _concrete(m):
        if not bool(np.any(np.asarray(m))):
            raise ValueError("curriculum_probs needs at least one candidate position (mask is all False)")
        if not bool(np.all(np.isfinite(np.asarray(h)[np.asarray(m)]))):
            raise ValueError("entropy must be finite at the candidate positions")
    cut = jnp.nanquantile(jnp.where(m, h, jnp.nan), jnp.asarray(pool_quantile, _F32))
    pool = m & (h >= cut)
    key = jnp.where(pool, h, jnp.inf)
    rank = jnp.argsort(jnp.argsort(key, stable=True), stable=True).astype(_F32)  # pool first, by entropy
    n = jnp.sum(pool).astype(_F32)
    rho = rank / jnp.maximum(n - 1.0, 1.0)
    logw = -((rho - jnp.asarray(progress, _F32)) ** 2) / (2.0 * jnp.asarray(width, _F32) ** 2)
    return jax.nn.softmax(jnp.where(pool, logw, -jnp.inf))  # log space: a narrow width cannot underflow to 0/0


def parse_reasoning(completion, end_id: int, answer_id: int | None = None) -> tuple[int, int, bool]:
    """Returns (prediction, reasoning length, valid) of one completion ``o_1 .. o_m y_hat end_id ...`` (P7 format).

    The prediction is the token just before the first ``end_id``, the reasoning the m tokens before it. With
    ``answer_id`` the completion must read ``o_1 .. o_m answer_id y_hat end_id`` (the marker not counted in m).
    No ``end_id``, nothing before it, or (with ``answer_id``) no marker right before the prediction:
    (-1, 0, False).
    """
    ids = [int(t) for t in np.asarray(completion).reshape(-1)]
    if end_id not in ids:
        return -1, 0, False
    body = ids[:ids.index(end_id)]
    if answer_id is not None:
        if len(body) < 2 or body[-2] != answer_id or body[-1] == answer_id:
            return -1, 0, False
        return body[-1], len(body) - 2, True
    if not body:
        return -1, 0, False
    return body[-1], len(body) - 1, True


class RMTAnswer(NamedTuple):
    """What :meth:`RMTTask.prompts` returns per context: the true next token, the step's budget and its window."""

    target: int
    budget: float
    window: int


@dataclasses.dataclass(frozen=True)
class RMTConfig:
    """RMT's own hyperparameters (frozen); RL ones (steps, G, lr, clip, max_new_tokens) are an RLConfig.

    Budget ``b0``, ``b_min``, ``gamma``, ``kappa`` (:func:`token_budget`; ``gamma = 1`` a fixed budget),
    ``length_weight`` alpha, ``ntp_weight`` lambda (0: no NTP term), ``curriculum`` (False: uniform over the
    pool), ``width`` / ``pool_quantile`` (:func:`curriculum_probs`), ``min_context`` (shortest prefix a
    context may have, tokens). Defaults are this module's documented choices (paper values unverified).
    """

    b0: float = 8.0
    b_min: float = 1.0
    gamma: float = 0.125
    kappa: float = 1.0
    length_weight: float = 1.0
    ntp_weight: float = 1.0
    curriculum: bool = True
    width: float = 0.15
    pool_quantile: float = 0.5
    min_context: int = 8

    def __post_init__(self):
        token_budget(0, 1, self.b0, self.b_min, self.gamma, self.kappa)  # validates the budget options
        check_range(self.length_weight, "RMTConfig.length_weight", lo=0.0)
        check_range(self.ntp_weight, "RMTConfig.ntp_weight", lo=0.0)
        check_range(self.width, "RMTConfig.width", lo=0.0, lo_open=True)
        check_range(self.pool_quantile, "RMTConfig.pool_quantile", lo=0.0, hi=1.0, hi_open=True)
        if not isinstance(self.curriculum, bool):
            raise ValueError(f"RMTConfig.curriculum must be a bool, got {self.curriculum!r}")
        if not isinstance(self.min_context, int) or isinstance(self.min_context, bool) or self.min_context < 1:
            raise ValueError(f"RMTConfig.min_context must be an int >= 1, got {self.min_context!r}")

    def budget(self, step, total_steps) -> float:
        """Returns B_k of ``step`` of ``total_steps`` as a Python float."""
        return float(token_budget(step, total_steps, self.b0, self.b_min, self.gamma, self.kappa))


def _check_windows(windows, entropy, vocab_size: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    w = np.asarray(windows)
    if w.ndim != 2 or w.shape[1] < 2 or not np.issubdtype(w.dtype, np.integer):
        raise ValueError(f"windows must be int [N, S+1] token windows (S >= 1), got {w.dtype} {w.shape}")
    h = np.asarray(entropy, np.float32)
    if h.shape != (w.shape[0], w.shape[1] - 1):
        raise ValueError(f"entropy must be [N, S] = {(w.shape[0], w.shape[1] - 1)} (one per next-token position "
                         f"of the windows, from base_entropy), got {h.shape}")
    if vocab_size is not None and (w.min() < 0 or w.max() >= vocab_size):
        raise ValueError(f"windows hold token ids outside [0, {vocab_size}) (min {w.min()}, max {w.max()})")
    return w.astype(np.int32), h


def base_entropy(model: Model, windows, *, batch_size: int = 64) -> np.ndarray:
    """Returns float32 [N, S]: the model's next-token entropy (nats) at every position of int ``windows`` [N, S+1].

    Position j is the entropy of predicting ``windows[:, j + 1]`` from ``windows[:, :j + 1]`` (streaming, no
    [B, T, V] logits): RMT's per-token difficulty, computed once with the base model.
    """
    from tokjax.losses import token_stats

    w = np.asarray(windows)
    if w.ndim != 2 or w.shape[1] < 2:
        raise ValueError(f"windows must be int [N, S+1] (S >= 1), got shape {w.shape}")
    if w.min() < 0 or w.max() >= model.cfg.vocab_size:
        raise ValueError(f"windows hold token ids outside [0, {model.cfg.vocab_size})")
    fn = jax.jit(lambda p, t: token_stats(p, model.cfg, {"tokens": t}, entropy=True).entropy)
    out = [np.asarray(fn(model.params, jnp.asarray(w[i:i + batch_size], jnp.int32)))
           for i in range(0, len(w), batch_size)]
    return np.concatenate(out).astype(np.float32)


class RMTTask:
    """An :class:`tokjax.train.rl.RLTask`: next-token contexts sampled by the curriculum, RMT reward (P7).

    ``windows`` int [N, S+1] (pretraining text), ``entropy`` [N, S] (:func:`base_entropy` of the base model),
    ``config`` (:class:`RMTConfig`), ``total_steps`` (T of the budget and the curriculum), ``think_id`` /
    ``end_id`` (the markers of the format in the module docstring), ``prompt_seed``.
    ``prompts(step, n)`` draws n (window, position) pairs without replacement from the step's sampling
    probabilities (a pure function of ``step``); the prompt is ``windows[w, :j + 1] + [think_id]``, the answer
    :class:`RMTAnswer` (``windows[w, j + 1]``, B_step, w). ``reward`` is :func:`rmt_reward` of
    :func:`parse_reasoning` (format-valid flag = parsed).
    """

    def __init__(self, windows, entropy, config: RMTConfig, *, total_steps: int, think_id: int, end_id: int,
                 answer_id: int | None = None, prompt_seed: int = 0):
        if not isinstance(config, RMTConfig):
            raise ValueError(f"config must be an RMTConfig, got {type(config).__name__}")
        self.windows, self.entropy = _check_windows(windows, entropy)
        if not isinstance(total_steps, int) or total_steps < 1:
            raise ValueError(f"total_steps must be an int >= 1, got {total_steps!r}")
        for name, v in (("think_id", think_id), ("end_id", end_id)):
            if not isinstance(v, (int, np.integer)) or v < 0:
                raise ValueError(f"{name} must be a token id >= 0, got {v!r}")
        if think_id == end_id:
            raise ValueError("think_id and end_id must differ (one opens the reasoning, the other ends the answer)")
        if answer_id is not None and (not isinstance(answer_id, (int, np.integer)) or answer_id < 0
                                      or answer_id in (think_id, end_id)):
            raise ValueError(f"answer_id must be None or a token id >= 0 other than think_id / end_id, got "
                             f"{answer_id!r}")
        self.answer_id = None if answer_id is None else int(answer_id)
        S = self.windows.shape[1] - 1
        if config.min_context > S:
            raise ValueError(f"RMTConfig.min_context={config.min_context} exceeds the windows' {S} positions")
        self.config, self.total_steps = config, total_steps
        self.think_id, self.end_id, self.prompt_seed = int(think_id), int(end_id), int(prompt_seed)
        cand = np.zeros(self.entropy.shape, bool)
        cand[:, config.min_context - 1:] = True  # position j has a prefix of j + 1 >= min_context tokens
        self.candidates = cand.reshape(-1)
        self._flat_h = self.entropy.reshape(-1)
        self._uniform = np.asarray(curriculum_probs(self._flat_h, self.candidates, 0.0, width=1e6,
                                                    pool_quantile=config.pool_quantile))

    @property
    def max_prompt_len(self) -> int:
        """Returns the longest prompt (a full window prefix plus ``think_id``)."""
        return self.windows.shape[1]

    def probs(self, step: int) -> np.ndarray:
        """Returns the sampling probabilities [N * S] of ``step`` (flattened window-major)."""
        if not self.config.curriculum:
            return self._uniform
        progress = min(step / max(self.total_steps - 1, 1), 1.0)
        return np.asarray(curriculum_probs(self._flat_h, self.candidates, progress, width=self.config.width,
                                           pool_quantile=self.config.pool_quantile), np.float64)

    def prompts(self, step: int, n: int) -> tuple[list[list[int]], list[RMTAnswer]]:
        """Returns n prompts (window prefix + think_id) and their :class:`RMTAnswer` for RL step ``step``."""
        p = self.probs(step)
        p = p / p.sum()
        if not isinstance(n, int) or n < 1 or n > int(np.count_nonzero(p)):
            raise ValueError(f"n must be an int in [1, {int(np.count_nonzero(p))}] (pool positions), got {n!r}")
        idx = np.random.default_rng((self.prompt_seed, int(step))).choice(p.size, n, replace=False, p=p)
        S = self.entropy.shape[1]
        budget = self.config.budget(step, self.total_steps)
        prompts, answers = [], []
        for i in idx:
            w, j = divmod(int(i), S)
            prompts.append(self.windows[w, :j + 1].tolist() + [self.think_id])
            answers.append(RMTAnswer(int(self.windows[w, j + 1]), budget, w))
        return prompts, answers

    def reward(self, completions: Sequence, answers: Sequence) -> tuple[np.ndarray, np.ndarray]:
        """Returns (float32 rewards [B] of :func:`rmt_reward`, bool well-formed [B])."""
        if len(completions) != len(answers):
            raise ValueError(f"got {len(completions)} completions but {len(answers)} answers")
        parsed = [parse_reasoning(c, self.end_id, self.answer_id) for c in completions]
        pred = np.array([p[0] for p in parsed], np.int32)
        length = np.array([p[1] for p in parsed], np.int32)
        valid = np.array([p[2] for p in parsed], bool)
        target = np.array([a.target for a in answers], np.int32)
        budget = np.array([a.budget for a in answers], np.float32)
        r = rmt_reward(pred, target, length, budget, valid, self.config.length_weight)
        return np.asarray(r, np.float32), valid


def make_ntp_aux() -> Callable:
    """Returns ``aux(params, cfg, batch, stats) -> (loss, metrics)``: lambda x mean next-token CE of the windows.

    Reads ``batch["ntp_tokens"]`` int [M, S+1] (every token of the step's windows) and ``batch["ntp_weight"]``
    (lambda, a runtime float32 scalar); metrics ``ntp_loss`` (the unweighted CE). For ``rl_train``'s ``aux``.
    """
    from tokjax.losses import token_stats

    def aux(params, cfg, batch, stats):
        del stats
        for key in ("ntp_tokens", "ntp_weight"):
            if key not in batch:
                raise ValueError(f"the RMT NTP term needs batch[{key!r}] (added by rmt's prepare); got keys "
                                 f"{sorted(batch)}")
        st = token_stats(params, cfg, {"tokens": batch["ntp_tokens"]})
        ce = jnp.sum(jnp.where(st.mask, -st.logp, 0.0)) / jnp.maximum(jnp.sum(st.mask), 1).astype(_F32)
        return jnp.asarray(batch["ntp_weight"], _F32) * ce, {"ntp_loss": ce}

    return aux


def rmt(model: Model, windows, entropy, config: RMTConfig = RMTConfig(), *, rl: RLConfig = RLConfig(),
        think_id: int, end_id: int, answer_id: int | None = None, prompt_seed: int | None = None,
        callback: Callable | None = None, progress: bool = False) -> tuple[Model, list[dict]]:
    """Returns (the trained Model, per-step history) of Reinforcement Mid-Training (P7) on ``windows``.

    ``windows`` int [N, S+1] pretraining text, ``entropy`` [N, S] (:func:`base_entropy` of the base model),
    ``config`` RMT's options, ``rl`` the RL loop's (steps = T, prompts per step, G, lr, clip; its
    ``max_new_tokens`` must hold 2 B_0 reasoning tokens + answer + end, its ``max_prompt_len`` a full window).
    One step: :class:`RMTTask` samples contexts by the curriculum, :func:`tokjax.train.rl.rl_train` rolls out,
    scores with the budget-k reward and takes the GRPO step plus ``ntp_weight`` x the windows' NTP loss
    (:func:`make_ntp_aux`). ``ntp_weight = 0`` runs ``rl_train`` with no aux (plain GRPO, bit for bit).
    History rows: ``rl_train``'s plus ``budget`` and ``reasoning_length`` (mean over valid rollouts).
    ``callback(step, model, row)`` as in ``rl_train``.
    """
    if not isinstance(config, RMTConfig):
        raise ValueError(f"config must be an RMTConfig, got {type(config).__name__}")
    if not isinstance(rl, RLConfig):
        raise ValueError(f"rl must be an RLConfig, got {type(rl).__name__}")
    _check_windows(windows, entropy, model.cfg.vocab_size)
    for name, v in (("think_id", think_id), ("end_id", end_id)):
        if not isinstance(v, (int, np.integer)) or not 0 <= v < model.cfg.vocab_size:
            raise ValueError(f"{name} must be a token id in [0, {model.cfg.vocab_size}), got {v!r}")
    need = 2 * math.ceil(config.b0) + 2 + (answer_id is not None)
    if rl.max_new_tokens < need:
        raise ValueError(f"RLConfig.max_new_tokens={rl.max_new_tokens} cannot hold 2 x b0 = {2 * math.ceil(config.b0)}"
                         f" reasoning tokens + [answer_id +] prediction + end_id ({need}); raise it or lower b0")
    task = RMTTask(windows, entropy, config, total_steps=rl.steps, think_id=think_id, end_id=end_id,
                   answer_id=answer_id, prompt_seed=rl.seed if prompt_seed is None else prompt_seed)
    if rl.max_prompt_len < task.max_prompt_len:
        raise ValueError(f"RLConfig.max_prompt_len={rl.max_prompt_len} is shorter than a full window prefix + "
                         f"think_id ({task.max_prompt_len})")
    lengths: list[float] = []

    class _Scored:  # the task, also recording the mean reasoning length of each step's valid rollouts
        prompts = staticmethod(task.prompts)

        @staticmethod
        def reward(completions, answers):
            r, ok = task.reward(completions, answers)
            lens = [parse_reasoning(c, end_id, answer_id)[1] for c, v in zip(completions, ok) if v]
            lengths.append(float(np.mean(lens)) if lens else float("nan"))
            return r, ok

    plugins: dict[str, Any] = {}
    if config.ntp_weight != 0:
        lam = jnp.asarray(config.ntp_weight, _F32)

        def prepare(r, batch):
            rows = [a.window for a in r.answers[::r.group_size]]
            return {**batch, "ntp_tokens": jnp.asarray(task.windows[rows]), "ntp_weight": lam}

        plugins = {"aux": make_ntp_aux(), "prepare": prepare}

    def on_step(step, m, row):
        row["budget"] = config.budget(step, rl.steps)
        row["reasoning_length"] = lengths[step]
        if callback is not None:
            callback(step, m, row)

    trained, history = rl_train(model, _Scored(), rl, eos_id=end_id, callback=on_step, progress=progress,
                                **plugins)
    return trained, history


def reason_then_predict(model: Model, prompts: Sequence[Sequence[int]], *, end_id: int, max_new_tokens: int,
                        answer_id: int | None = None, key=None, temperature: float | None = None,
                        batch_size: int = 256) -> dict:
    """Returns {"pred" int [N] (-1 when invalid), "length" int [N], "valid" bool [N]}: each prompt's reasoning
    and prediction under the P7 format, greedy (``key=None``) or sampled at ``temperature`` through
    :func:`tokjax.generate`, stopping at ``end_id``."""
    from tokjax.decoding import generate
    from tokjax.logits import greedy, temperature as temperature_transform

    if not prompts:
        raise ValueError("reason_then_predict needs at least one prompt")
    if (key is None) != (temperature is None):
        raise ValueError("give both key and temperature (sampling) or neither (greedy)")
    logits = greedy() if key is None else temperature_transform(temperature)
    preds, lens, valid = [], [], []
    for i in range(0, len(prompts), batch_size):
        chunk = [list(p) for p in prompts[i:i + batch_size]]
        k = None if key is None else jax.random.fold_in(key, i)
        out = generate(model, chunk, key=k, logits=logits, max_new_tokens=max_new_tokens, eos_id=end_id)
        for c in out.completions():
            p, n, ok = parse_reasoning(c, end_id, answer_id)
            preds.append(p)
            lens.append(n)
            valid.append(ok)
    return {"pred": np.array(preds, np.int32), "length": np.array(lens, np.int32), "valid": np.array(valid, bool)}
