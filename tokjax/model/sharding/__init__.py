"""Sharding primitives: the mesh, the logical-axis rules table and the placements it derives (public as ``tokjax.parallel``)."""


from tokjax.model.sharding._mesh import MESH_AXES, make_mesh
from tokjax.model.sharding._rules import (
    DEFAULT_RULES, LOGICAL_AXES, MeshAxes, ShardingRules, logical_sharding, logical_spec,
)
from tokjax.model.sharding._shard import (
    CACHE_AXES, KV_CACHE, axes_shardings, batch_sharding, cache_shardings, opt_state_shardings, param_shardings,
    same_shardings, shard_batch, shard_cache, shard_model, shard_params, shard_train_state, state_shardings,
    train_state_shardings, tree_shardings,
)

__all__ = [
    "MESH_AXES", "make_mesh", "DEFAULT_RULES", "LOGICAL_AXES", "MeshAxes", "ShardingRules", "logical_sharding",
    "logical_spec", "CACHE_AXES", "KV_CACHE", "axes_shardings", "batch_sharding", "cache_shardings",
    "param_shardings", "same_shardings", "shard_batch", "shard_cache", "shard_model", "shard_params",
    "tree_shardings", "state_shardings", "opt_state_shardings", "shard_train_state", "train_state_shardings",
]
