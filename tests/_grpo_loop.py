"""A hand-written GRPO loop (rollout -> group advantages -> one grpo step per batch): the reference that
``rl_train``'s plug-point reductions (RMT, aux/prepare) are checked against bit for bit."""

from __future__ import annotations

import jax
import numpy as np

from tokjax.losses.grpo import group_advantages, make_grpo_loss
from tokjax.model import Model
from tokjax.train._step import init_state, make_optimizer, make_train_step
from tokjax.train.rl import _logp, rollout, rollout_batch, scoring


def run_reference(model: Model, rl, prompts, rewards, *, eos_id: int):
    """Returns (final TrainState, [(step, rewards [B], metrics)]) of ``rl.steps`` plain GRPO steps.

    ``prompts(step, n)`` -> (prompt lists, answers); ``rewards(rollout)`` -> per-completion rewards [B].
    """
    cfg = model.cfg
    opt = make_optimizer(rl.train_config())
    state = init_state(cfg, opt, rl.seed, params=model.params)
    on_policy, span = scoring(rl)  # rl_train's scoring of a plain run (no separate old-logp forward at inner_steps 1)
    step = make_train_step(cfg, opt, make_grpo_loss(on_policy=on_policy, span=span), donate=False)
    key = jax.random.key(rl.seed)
    steps = []
    for s in range(rl.steps):
        p, answers = prompts(s, rl.prompts_per_step)
        r = rollout(Model(state.params, cfg), p, answers, key=jax.random.fold_in(key, s), group_size=rl.group_size,
                    max_new_tokens=rl.max_new_tokens, eos_id=eos_id, width=rl.max_prompt_len + rl.max_new_tokens)
        rw = np.asarray(rewards(r), np.float32)
        batch = rollout_batch(r)
        if not on_policy:
            batch["old_logp"] = _logp(state.params, cfg, batch, span=span)  # the loop's own old-log-prob program
        batch["advantages"] = group_advantages(rw, rl.group_size)
        state, metrics = step(state, batch)
        steps.append((s, rw, metrics))
    return state, steps

