"""X-Omni (P28): GRPO on a discrete autoregressive image model, rewarded by a frozen scorer of the decoded image.

Paper: Geng et al., "X-Omni: Reinforcement Learning Makes Discrete Autoregressive Image Generative Models Great
Again" (arXiv 2507.22058). After next-token pretraining and SFT, the image-token LM is trained with GRPO: for
each prompt a group of G images is sampled, decoded to pixels and scored by external (non-differentiable)
rewards; group-normalised advantages drive the clipped policy-gradient surrogate. Here the prompt is a class
token and the reward the log-probability of the class under a frozen image classifier (the "second"
classifier, distinct from the one any evaluation uses)::

    prompt  c                      (class token of ImageVocab)
    x_1..G ~ pi_old( . | c)        G rollouts of order.size codes, T = 1, min-p 0.03, no CFG
    R_i     = log p_phi(c | D(x_i))                     D: codes -> pixels (the tokenizer's decoder)
    A_i     = (R_i - mean_g R) / (std_g R + eps)        (tokjax.losses.grpo.group_advantages)
    L       = mean_t [ -min(r A, clip(r, 1 - e, 1 + e) A) + beta * KL3(pi_theta || pi_SFT) ]
    r       = pi_theta(x_t | .) / pi_old(x_t | .),  KL3 = exp(ref - logp) - (ref - logp) - 1

The loss is the registered ``grpo`` loss (:func:`tokjax.losses.grpo.grpo_loss`, symmetric clip e = 0.2) and the
loop is :func:`tokjax.train.rl.rl_train`; this module supplies the task and the plug-ins::

    xo = x_omni(vocab, order, reward_params, decode)          # XOmni(task, strategy, logits, options)
    policy, hist = rl_train(sft, xo.task, RLConfig(steps=100, lr=3e-4, **xo.options),
                            strategy=xo.strategy, logits=xo.logits, reference=sft)

* :class:`XOmniTask` is an ``RLTask``: ``prompts`` are one-token class prompts (a pure function of the step),
  ``reward`` decodes the completions and scores them with :func:`class_reward`.
* ``strategy`` is :class:`tokjax.vision.image_lm.NextTokenCFG` without guidance (``guided=False``: X-Omni
  samples, and is evaluated, at ``--cfg-scale 1.0``), which restricts sampling to code ids; ``logits`` is
  ``tokjax.logits.min_p(0.03)``, applied after the temperature.
* The policy must read sequence positions (``pos_dims = 1``: X-Omni's 1-D RoPE); ``generate``'s prefill cannot
  feed 2-D coordinates, and its strategy says so.

Verified against the official code (``X-Omni-Team/X-Omni``, ``generate.py`` / README, inference only): sampling
at temperature 1.0, min-p 0.03, top-p 1.0 and ``cfg_scale`` 1.0. The repository has no training or RL code and
the paper's RL hyperparameters could not be read here, so these remain documented choices, not the paper's
verified values: G = 8 rollouts per prompt, symmetric clip eps = 0.2 (GRPO / DeepSeekMath), the k3 KL estimator
to the SFT model with beta = 0.04 (DeepSeekMath's value), token-mean reduction (images have a fixed length, so
it equals GRPO's sequence mean), one optimiser step per rollout batch, and the same min-p 0.03 for rollouts as
for inference. The paper's reward is a mix of HPSv2, Unified Reward, a VLM alignment score and OCR accuracy;
here it is one classifier's log-probability of the class. ``old_logp`` / ``ref_logp`` are the models' own token
log-probabilities (not the min-p-truncated sampling distribution), as in TRL.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from tokjax.logits import LogitTransform, min_p as min_p_transform
from tokjax.vision.image_lm import ImageVocab, NextTokenCFG, next_token_cfg
from tokjax.vision.orders import Order, _check_order, to_grid
from tokjax.vision.quality import class_logprob

__all__ = ["XOmni", "XOmniTask", "class_reward", "x_omni"]

_F32 = jnp.float32


def class_reward(params, codes, labels, decode: Callable) -> jax.Array:
    """Returns float32 [N]: R = log p(labels | decode(codes)) under the classifier ``params`` (P28's reward).

    ``codes`` int [N, *grid] image codes; ``labels`` int [N]; ``decode(codes) -> images`` [N, H, W(, C)] in
    [0, 1] (the tokenizer's decoder, e.g. ``PixelQuantizer.decode``). Jit-compatible when ``decode`` is; on
    concrete inputs the classifier checks pixels and labels and raises ValueError.
    """
    if not callable(decode):
        raise ValueError(f"decode must be callable codes -> images in [0, 1], got {type(decode).__name__}")
    return class_logprob(params, decode(codes), labels).astype(_F32)


@dataclasses.dataclass(frozen=True)
class XOmniTask:
    """The class-conditional image RLTask of P28 (module docstring): class prompts, classifier log-prob rewards.

    ``vocab`` / ``order``: the image LM's vocabulary and token order; ``reward_params``: the reward classifier's
    params (:mod:`tokjax.vision.quality`); ``decode``: codes [N, *grid] -> images in [0, 1]; ``classes``: the
    classes prompted (default all), cycled through in an order fixed by ``seed``; ``invalid_reward``: the
    (finite) reward of a completion that is not exactly ``order.size`` code ids (format_ok False; the
    code-restricted strategy never produces one).
    """

    vocab: ImageVocab
    order: Order
    reward_params: Any
    decode: Callable
    classes: tuple | None = None
    seed: int = 0
    invalid_reward: float = -30.0

    def __post_init__(self):
        if not isinstance(self.vocab, ImageVocab):
            raise ValueError(f"vocab must be an ImageVocab, got {type(self.vocab).__name__}")
        _check_order(self.order)
        if not callable(self.decode):
            raise ValueError(f"decode must be callable codes -> images in [0, 1], got {type(self.decode).__name__}")
        classes = tuple(range(self.vocab.num_classes)) if self.classes is None else tuple(self.classes)
        if not classes or any(isinstance(c, bool) or not isinstance(c, (int, np.integer)) for c in classes):
            raise ValueError(f"classes must be a non-empty sequence of class ids, got {self.classes!r}")
        if min(classes) < 0 or max(classes) >= self.vocab.num_classes:
            raise ValueError(f"classes must lie in [0, {self.vocab.num_classes}), got {classes}")
        object.__setattr__(self, "classes", tuple(int(c) for c in classes))
        if not np.isfinite(self.invalid_reward):
            raise ValueError(f"invalid_reward must be finite, got {self.invalid_reward!r}")

    def labels(self, step: int, n: int) -> np.ndarray:
        """Returns int32 [n]: the classes of step ``step`` (consecutive slices of a ``seed``-fixed permutation of
        ``classes``, repeated: every class equally often over ceil(n * steps / |classes|) prompts)."""
        if isinstance(step, bool) or not isinstance(step, (int, np.integer)) or step < 0:
            raise ValueError(f"step must be an int >= 0, got {step!r}")
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
            raise ValueError(f"n must be an int >= 1, got {n!r}")
        perm = np.random.default_rng(self.seed).permutation(np.asarray(self.classes))
        return perm[(step * n + np.arange(n)) % len(perm)].astype(np.int32)

    def prompts(self, step: int, n: int) -> tuple[list[list[int]], list[int]]:
        """Returns n one-token prompts ``[[class token]]`` and their class labels (answers)."""
        labels = self.labels(step, n)
        tokens = np.asarray(self.vocab.class_tokens(labels))
        return [[int(t)] for t in tokens], [int(c) for c in labels]

    def reward(self, completions, answers) -> tuple[np.ndarray, np.ndarray]:
        """Returns (rewards float32 [B] = log p(class | decoded image), format_ok bool [B])."""
        if len(completions) != len(answers):
            raise ValueError(f"got {len(completions)} completions but {len(answers)} answers")
        L = self.order.size
        ok = np.array([len(c) == L and bool(np.all((np.asarray(c) >= 0) & (np.asarray(c) < self.vocab.num_codes)))
                       for c in completions], bool)
        rewards = np.full(len(completions), self.invalid_reward, np.float32)
        if ok.any():
            seq = np.stack([np.asarray(c, np.int32) for c, k in zip(completions, ok) if k])
            codes = np.asarray(to_grid(seq, self.order))
            labels = np.asarray(answers, np.int32)[ok]
            rewards[ok] = np.asarray(class_reward(self.reward_params, codes, labels, self.decode))
        return rewards, ok


class XOmni(NamedTuple):
    """What :func:`x_omni` returns: the RL task, the rollout strategy and logit transform, and the RLConfig
    options (``RLConfig(steps=..., lr=..., **options)``)."""

    task: XOmniTask
    strategy: NextTokenCFG
    logits: LogitTransform
    options: dict


def x_omni(vocab: ImageVocab, order: Order, reward_params: Any, decode: Callable, *, group_size: int = 8,
           min_p: float = 0.03, temperature: float = 1.0, eps: float = 0.2, beta: float = 0.04,
           classes=None, seed: int = 0) -> XOmni:
    """Returns :class:`XOmni`: P28's GRPO set-up for a class-conditional image LM (module docstring).

    ``group_size`` G >= 2 rollouts per class prompt; ``min_p`` in [0, 1] and ``temperature`` > 0 (rollout
    sampling); ``eps``: the symmetric clip (``eps_low = eps_high``); ``beta`` >= 0: the k3 KL weight to the
    reference (``rl_train(..., reference=sft)``; 0 needs none). Raises ValueError on values out of range.
    """
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 2:
        raise ValueError(f"group_size must be an int >= 2 (rollouts per class prompt), got {group_size!r}")
    if not 0.0 <= float(min_p) <= 1.0:
        raise ValueError(f"min_p must lie in [0, 1], got {min_p!r}")
    if not float(temperature) > 0:
        raise ValueError(f"temperature must be > 0, got {temperature!r}")
    if not 0.0 <= float(eps) < 1.0:
        raise ValueError(f"eps (the clip range) must lie in [0, 1), got {eps!r}")
    if not float(beta) >= 0.0:
        raise ValueError(f"beta (the KL weight) must be >= 0, got {beta!r}")
    task = XOmniTask(vocab=vocab, order=order, reward_params=reward_params, decode=decode, classes=classes, seed=seed)
    options = dict(group_size=group_size, temperature=float(temperature), eps_low=float(eps), eps_high=float(eps),
                   beta=float(beta), max_new_tokens=order.size, max_prompt_len=1, scale="group",
                   reduction="token_mean")
    return XOmni(task=task, strategy=next_token_cfg(vocab, order, guided=False), logits=min_p_transform(min_p),
                 options=options)
