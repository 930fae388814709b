"""generate_sharded: tokjax.generate with the decode state split over the mesh, not replicated.

``tokjax.generate`` already runs on a model whose params are sharded (jit propagates their
shardings), but the prompt, the KV cache and the rest of the decode state then start on one
device and the compiler replicates them: every device holds the whole cache and decodes every
row. Here the state is placed batch-on-"data" and the cache's kv_heads on "model" before the
loop, so data replicas decode different rows and the cache memory is split.
"""

from __future__ import annotations

import importlib
from typing import Any, Sequence

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from tokjax.model import KVCache, Model
from tokjax.parallel._rules import DEFAULT_RULES, ShardingRules, logical_sharding
from tokjax.parallel._shard import cache_shardings, shard_model

# The module, not the function that tokjax.decoding re-exports under the same name.
_gen = importlib.import_module("tokjax.decoding.generate")


def state_shardings(state: Any, batch: int, mesh: Mesh, rules: ShardingRules = DEFAULT_RULES) -> Any:
    """Returns a pytree like ``state`` of NamedShardings: KV caches per ``cache_shardings``, leaves with a
    leading dimension of size ``batch`` split over "data" (replicated when not divisible), the rest replicated.
    """

    def one(x):
        if isinstance(x, KVCache):
            return cache_shardings(x, mesh, rules)
        shape = jax.numpy.shape(x)
        if len(shape) >= 1 and shape[0] == batch:
            return logical_sharding(shape, ("batch",) + (None,) * (len(shape) - 1), mesh, rules)
        return NamedSharding(mesh, PartitionSpec())

    return jax.tree.map(one, state, is_leaf=lambda x: isinstance(x, KVCache))


def _on_mesh(params, mesh: Mesh) -> bool:
    return all(isinstance(x.sharding, NamedSharding) and x.sharding.mesh == mesh for x in jax.tree.leaves(params))


def generate_sharded(
    model: Model,
    prompt: Any,
    mesh: Mesh,
    *,
    rules: ShardingRules = DEFAULT_RULES,
    key: jax.Array | None = None,
    max_new_tokens: int,
    prompt_lengths: Sequence[int] | None = None,
    logits=None,
    strategy=None,
    eos_id: int | None = None,
    pad_id: int = 0,
):
    """Returns the same GenerateOutput as ``tokjax.generate`` with the decode loop sharded over ``mesh``.

    Params already on ``mesh`` (e.g. from ``shard_model``) are used as they are; otherwise they
    are sharded with ``rules``. Other arguments are those of ``tokjax.generate``. A batch that
    the data axis does not divide is replicated over it (decoding still works, without data
    parallelism). Single process: the result is copied to the host with ``np.asarray``, which
    a multi-host run would have to replace with ``process_allgather``.
    """
    if not isinstance(model, Model):
        raise ValueError(f"generate_sharded expects a tokjax Model (params + cfg), got {type(model).__name__}")
    if not _on_mesh(model.params, mesh):
        model = shard_model(model, mesh, rules)
    cfg, transform, strategy, eos, state, params = _gen._setup(
        model, prompt, key=key, max_new_tokens=max_new_tokens, prompt_lengths=prompt_lengths,
        logits=logits, strategy=strategy, eos_id=eos_id, pad_id=pad_id,
    )
    state = jax.device_put(state, state_shardings(state, state.tokens.shape[0], mesh, rules))
    # unfused: fusing q/k/v would concatenate head-sharded weights and force a reshard
    state = _gen._loop_jit(
        params, state, cfg=cfg, strategy=strategy, transform=transform, max_steps=max_new_tokens, eos_id=eos
    )
    return _gen._output(state, pad_id)
