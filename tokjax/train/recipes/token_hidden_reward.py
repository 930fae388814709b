"""P69 THR-reweighted GRPO as :func:`tokjax.train.rl.rl_train` plug-ins (the loss pieces live in
:mod:`tokjax.losses.token_hidden_reward`; this driver needs the rollout batch of the RL loop, so it sits here)."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from tokjax.losses.token_hidden_reward import (
    METHODS, THR_KEY, THR_P_KEY, THRWeights, check_p, model_token_hidden_reward,
)
from tokjax.train.rl import rollout_batch

__all__ = ["TokenHiddenReward"]

_F32 = jnp.float32


class TokenHiddenReward:
    """THR-reweighted GRPO as :func:`tokjax.train.rl.rl_train` plug-ins (P69).

        thr = TokenHiddenReward(model, p=0.5)
        rl_train(model, task, config, select=thr.select, transforms=(thr.transform(),), callback=thr.callback)

    ``select`` computes THR of each step's rollouts under the current policy (every row kept) and hands it to
    the loss with p; ``callback`` keeps the policy's parameters current after each update (call it from your
    own callback when you have one). Correct rollouts are those with reward > ``correct_above``.
    """

    def __init__(self, model, p: float = 0.5, *, correct_above: float = 0.0, method: str = "factored",
                 block_size: int = 4096, mask_truncated: bool = False):
        check_p(p)
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {method!r}")
        self.p, self.correct_above, self.method, self.block_size = float(p), float(correct_above), method, block_size
        self.mask_truncated = bool(mask_truncated)
        self.cfg, self.params = model.cfg, model.params
        self.last = {}

    def callback(self, step, model, row) -> None:
        """rl_train's ``callback``: track the updated policy (the next step's rollouts come from it)."""
        self.params = model.params

    def select(self, rollouts, advantages, step) -> dict:
        """Returns {"keep": all rows, THR_KEY: THR [B, T], THR_P_KEY: p}: rl_train's ``select`` plug point."""
        if rollouts.rewards is None:
            raise ValueError("TokenHiddenReward.select needs scored rollouts (rollouts.rewards)")
        adv = np.asarray(advantages, np.float32)
        if not np.all(np.isfinite(adv)):
            raise ValueError("advantages must be finite (got NaN or inf)")
        batch = rollout_batch(rollouts, mask_truncated=self.mask_truncated)
        correct = np.asarray(rollouts.rewards) > self.correct_above
        thr = _model_thr(self.params, self.cfg, batch, jnp.asarray(adv), jnp.asarray(correct),
                         rollouts.group_size, self.method, self.block_size)
        t = np.asarray(thr)
        nonzero = max(int(np.sum(t != 0)), 1)
        self.last = {"thr_positive_fraction": float(np.sum(t > 0)) / nonzero, "thr_nonzero": float(np.mean(t != 0))}
        return {"keep": np.ones(len(rollouts.tokens), bool), THR_KEY: thr, THR_P_KEY: jnp.asarray(self.p, _F32)}

    def transform(self) -> THRWeights:
        """Returns the LossTransform applying the weights (p comes from ``select`` each step)."""
        return THRWeights(p=self.p)



@functools.partial(jax.jit, static_argnums=(1, 5, 6, 7))
def _model_thr(params, cfg, batch, advantages, correct, group_size, method, block_size):
    return model_token_hidden_reward(params, cfg, batch, advantages, correct, group_size, method=method,
                                     block_size=block_size)
