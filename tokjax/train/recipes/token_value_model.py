"""P50 token-supervised value models: label sampled paths with the prefix trie and train the value head.

    paths = sample_paths(model, tokenizer_prompts, answers, task, key=key, n=16, max_new_tokens=60)
    labels = path_labels(paths, "tvm")                        # or "orm": every token = the path's outcome
    vm, history = train_value_model(model, paths, labels, steps=300, trainable=("last:1", "final_norm"))
    values = score_paths(vm, test_paths)                      # [B, W]; rerank with rerank_best_of_n

The loss pieces (labels, head, BCE, reranking) live in :mod:`tokjax.losses.token_value_model`; this
driver ties them to :func:`tokjax.train.rl.rollout` (N completions per prompt through
``tokjax.generate``) and :func:`tokjax.train.train` (the registered ``"tvm"`` loss on dict batches,
``TrainConfig.trainable`` freezing the rest of the model bit for bit).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from tokjax.losses.token_value_model import (
    VALUE_KEY, outcome_labels, trie_value_labels, value_head, value_head_init,
)
from tokjax.model import Model
from tokjax.train._config import TrainConfig
from tokjax.train.rl import Rollouts, rollout

__all__ = ["LABELINGS", "completion_mask", "path_labels", "sample_paths", "score_paths", "train_value_model"]

LABELINGS = ("tvm", "orm")


def sample_paths(model: Model, prompts, answers, task, *, key, n: int, max_new_tokens: int,
                 temperature: float = 1.0, eos_id=None, width: int | None = None, chunk: int = 128) -> Rollouts:
    """Returns scored :class:`tokjax.train.rl.Rollouts`: ``n`` sampled completions of every prompt (prompt-major),
    ``rewards`` / ``format_ok`` from ``task.reward``. Prompts run in chunks of ``chunk`` (one compiled program)."""
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be an int >= 1 (paths per problem), got {n!r}")
    if len(prompts) != len(answers) or not prompts:
        raise ValueError(f"need one answer per prompt and at least one prompt, got {len(prompts)} and {len(answers)}")
    parts = []
    for i in range(0, len(prompts), chunk):
        r = rollout(model, prompts[i:i + chunk], answers[i:i + chunk], key=jax.random.fold_in(key, i), group_size=n,
                    max_new_tokens=max_new_tokens, temperature=temperature, eos_id=eos_id, width=width)
        parts.append(r)
    W = max(p.tokens.shape[1] for p in parts)
    r = Rollouts(tokens=np.concatenate([np.pad(p.tokens, ((0, 0), (0, W - p.tokens.shape[1]))) for p in parts]),
                 prompt_lengths=np.concatenate([p.prompt_lengths for p in parts]),
                 lengths=np.concatenate([p.lengths for p in parts]),
                 truncated=np.concatenate([p.truncated for p in parts]),
                 completions=[c for p in parts for c in p.completions], answers=[a for p in parts for a in p.answers],
                 group_size=n)
    rewards, fmt = task.reward(r.completions, r.answers)
    r.rewards, r.format_ok = np.asarray(rewards, np.float32), np.asarray(fmt, bool)
    return r


def completion_mask(paths: Rollouts) -> np.ndarray:
    """Returns bool [B, W]: the completion tokens of each row (eos included), the positions that get a value."""
    pos = np.arange(paths.tokens.shape[1])[None, :]
    return (pos >= paths.prompt_lengths[:, None]) & (pos < paths.lengths[:, None])


def path_labels(paths: Rollouts, labeling: str = "tvm") -> np.ndarray:
    """Returns float32 [B, W] value labels of scored rollouts: ``"tvm"`` = trie labels over each problem's
    ``group_size`` paths (:func:`trie_value_labels`), ``"orm"`` = the path's outcome on every completion token."""
    if labeling not in LABELINGS:
        raise ValueError(f"labeling must be one of {LABELINGS}, got {labeling!r}")
    if paths.rewards is None:
        raise ValueError("path_labels needs scored rollouts (paths.rewards); use sample_paths")
    correct = (np.asarray(paths.rewards) > 0).astype(np.float32)
    mask = completion_mask(paths)
    if labeling == "orm":
        return np.asarray(outcome_labels(correct, mask))
    B, W = paths.tokens.shape
    n = paths.group_size
    v = _trie(jnp.asarray(paths.tokens.reshape(B // n, n, W)), jnp.asarray(correct.reshape(B // n, n)),
              jnp.asarray(mask.reshape(B // n, n, W)))
    return np.asarray(v).reshape(B, W)


@jax.jit
def _trie(tokens, correct, mask):
    return trie_value_labels(tokens, correct, mask)


def train_value_model(model: Model, paths: Rollouts, labels, *, steps: int, batch_size: int = 64, lr: float = 1e-3,
                      trainable=("last:1", "final_norm"), kind: str = "bce", seed: int = 0,
                      weight_decay: float = 0.0, key: str = VALUE_KEY) -> tuple[Model, dict]:
    """Returns (Model whose params hold ``params[key]``, the value head, train history) after ``steps`` steps of
    the registered ``"tvm"`` loss on (``paths.tokens``, ``labels``, completion mask) batches.

    ``trainable``: what trains besides the head (e.g. ``("last:1", "final_norm")``; ``()`` = the head only on
    the frozen trunk; None = every parameter). The head starts at the logit of the mean label (the base rate). Batches are seeded
    draws of ``batch_size`` rows (a pure function of the step). Adam with a constant ``lr`` after 10 warm-up
    steps.
    """
    from tokjax.train import train

    labels = np.asarray(labels, np.float32)
    mask = completion_mask(paths)
    if labels.shape != paths.tokens.shape:
        raise ValueError(f"labels must be [B, W] = {paths.tokens.shape} like paths.tokens, got {labels.shape}")
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an int >= 1, got {steps!r}")
    base = float(np.clip(labels[mask].mean(), 1e-3, 1 - 1e-3))
    params = {**model.params, key: value_head_init(jax.random.key(seed), model.cfg.d_model,
                                                   bias=float(np.log(base / (1 - base))))}
    tokens = paths.tokens.astype(np.int32)
    B = len(tokens)
    bs = min(batch_size, B)

    def batch_fn(step):
        idx = np.random.default_rng((seed, step)).choice(B, bs, replace=False)
        return {"tokens": tokens[idx], "labels": labels[idx], "mask": mask[idx]}

    tc = TrainConfig(lr=lr, warmup_steps=min(10, steps - 1), total_steps=steps, weight_decay=weight_decay,
                     grad_clip=1.0, min_lr_ratio=1.0, batch_size=bs, seq_len=tokens.shape[1] - 1, seed=seed,
                     log_every=max(1, steps // 10), eval_every=0, checkpoint_every=0,
                     trainable=None if trainable is None else (key, *tuple(trainable)), loss={"name": "tvm", "kind": kind, "key": key})
    trained, hist = train(model.cfg, tc, batch_fn, params=params, progress=False)
    return trained, hist


@functools.partial(jax.jit, static_argnums=(1, 3))
def _values(params, cfg, tokens, key):
    from tokjax.model.forward import Inputs, forward

    hidden = forward(params, cfg, Inputs(tokens=tokens), compute_logits=False).hidden
    return jax.nn.sigmoid(value_head(params[key], hidden))


def score_paths(model: Model, paths: Rollouts, *, key: str = VALUE_KEY, chunk: int = 512) -> np.ndarray:
    """Returns float32 [B, W] values sigmoid(V_phi(h_t)) of every position of ``paths.tokens`` (mask them with
    :func:`completion_mask`), in row chunks of ``chunk``."""
    if key not in model.params:
        raise ValueError(f"the model's params have no {key!r} value head (train one with train_value_model)")
    toks = jnp.asarray(paths.tokens, jnp.int32)
    return np.concatenate([np.asarray(_values(model.params, model.cfg, toks[i:i + chunk], key))
                           for i in range(0, len(toks), chunk)])
