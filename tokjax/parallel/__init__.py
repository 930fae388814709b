"""Sharding on a ("data", "model") mesh: a logical-axis rules table and the placements it derives.

    mesh = make_mesh(model=4)                     # data = n_devices // 4
    model = shard_model(model, mesh)              # params split as ShardingRules() says
    out = tokjax.generate(model, prompt, ...)     # jit propagates the param shardings
    out = generate_sharded(model, prompt, mesh, ...)  # ... and splits the decode state too
    batch = shard_batch(batch, mesh)              # leading dim on "data"

Plain ``jax.jit`` with ``NamedSharding`` (GSPMD); see docs/sharding.md.
"""

from tokjax.parallel._generate import generate_sharded, state_shardings
from tokjax.parallel._mesh import MESH_AXES, make_mesh
from tokjax.parallel._rules import (
    DEFAULT_RULES, LOGICAL_AXES, MeshAxes, ShardingRules, logical_sharding, logical_spec,
)
from tokjax.parallel._shard import (
    CACHE_AXES, batch_sharding, cache_shardings, param_shardings, same_shardings, shard_batch, shard_cache,
    opt_state_shardings, shard_model, shard_params, shard_train_state, train_state_shardings, tree_shardings,
)

__all__ = [
    "MESH_AXES", "make_mesh", "DEFAULT_RULES", "LOGICAL_AXES", "MeshAxes", "ShardingRules", "logical_sharding",
    "logical_spec", "CACHE_AXES", "batch_sharding", "cache_shardings", "param_shardings", "same_shardings",
    "shard_batch", "shard_cache", "shard_model", "shard_params", "tree_shardings", "generate_sharded",
    "state_shardings", "opt_state_shardings", "shard_train_state", "train_state_shardings",
]
