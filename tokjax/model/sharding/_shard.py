"""Placement of params, batches and KV caches on a mesh, derived from logical axis names."""

from __future__ import annotations

from typing import Any

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from tokjax.model import KVCache, Model, ModelConfig
from tokjax.model.params import Params, ParamSpec, check_params, param_specs
from tokjax.model.sharding._rules import DEFAULT_RULES, ShardingRules, logical_sharding

# Logical axes of the KVCache fields (layout documented in tokjax.model.cache): k and v are
# tuples of per-layer head-major buffers, each with these axes.
CACHE_AXES = {
    "k": ("batch", "kv_heads", "seq", "head_dim"),
    "v": ("batch", "kv_heads", "seq", "head_dim"),
    "lengths": ("layers", "batch"),
}


def _put(tree: Any, shardings: Any) -> Any:
    """Returns ``tree`` copied onto ``shardings`` (a matching pytree), never sharing a buffer with the input.

    ``jax.device_put`` reuses an on-device input's buffer for the shard on that same device,
    even with ``may_alias=False`` (jax 0.10), so donating the placed value to a jitted step
    would delete part of the caller's original. The explicit per-leaf copy costs one leaf of
    transient memory and makes the result exclusively owned.
    """
    own = lambda x: jax.numpy.copy(x) if isinstance(x, jax.Array) else x  # noqa: E731
    return jax.tree.map(lambda x, s: jax.device_put(own(x), s), tree, shardings)


def param_shardings(cfg: ModelConfig, mesh: Mesh, rules: ShardingRules = DEFAULT_RULES) -> Params:
    """Returns a pytree like the params of ``cfg`` whose leaves are NamedShardings (jit in/out_shardings).

    Dimensions the mesh cannot split evenly are replicated (see ``logical_spec``).
    """
    return jax.tree.map(
        lambda s: logical_sharding(s.shape, s.axes, mesh, rules),
        param_specs(cfg),
        is_leaf=lambda x: isinstance(x, ParamSpec),
    )


def shard_params(params: Params, cfg: ModelConfig, mesh: Mesh, rules: ShardingRules = DEFAULT_RULES) -> Params:
    """Returns a copy of ``params`` placed on ``mesh`` as ``param_shardings(cfg, mesh, rules)`` says.

    Always a copy (see ``_put``): donating the sharded params to a train step must not delete
    the caller's originals.
    """
    check_params(params, cfg)  # a clear error here beats a tree-structure mismatch inside device_put
    return _put(params, param_shardings(cfg, mesh, rules))


def shard_model(model: Model, mesh: Mesh, rules: ShardingRules = DEFAULT_RULES) -> Model:
    """Returns ``model`` with its params sharded on ``mesh`` (``tokjax.generate`` and ``forward`` run on it unchanged)."""
    return model.replace(params=shard_params(model.params, model.cfg, mesh, rules))


def _data_size(mesh: Mesh, rules: ShardingRules) -> tuple[Any, int]:
    m = rules.batch
    names = () if m is None else ((m,) if isinstance(m, str) else tuple(m))
    sizes = dict(mesh.shape)
    missing = [a for a in names if a not in sizes]
    if missing:
        raise ValueError(f"rule 'batch' -> {m!r} names mesh axes {missing} that the mesh {tuple(sizes)} lacks")
    n = 1
    for a in names:
        n *= sizes[a]
    return m, n


def batch_sharding(shape, mesh: Mesh, rules: ShardingRules = DEFAULT_RULES) -> NamedSharding:
    """Returns the NamedSharding that splits the leading (batch) dimension of ``shape`` over the data axis.

    Raises ValueError when the batch size is not a multiple of the data axis: unlike a weight,
    a batch that silently fell back to replication would make every data replica redo the
    whole batch.
    """
    shape = tuple(shape)
    if not shape:
        raise ValueError("cannot shard a scalar over the data axis; batch leaves need a leading batch dimension")
    axis, n = _data_size(mesh, rules)
    if shape[0] % n:
        raise ValueError(
            f"batch size {shape[0]} is not divisible by the mesh's data axis ({axis!r}, size {n}); "
            f"use a batch size that is a multiple of {n}"
        )
    return logical_sharding(shape, ("batch",) + (None,) * (len(shape) - 1), mesh, rules)


def shard_batch(batch: Any, mesh: Mesh, rules: ShardingRules = DEFAULT_RULES) -> Any:
    """Returns a copy of ``batch`` (an array or pytree of arrays) with every leaf's leading dimension split over "data".

    Single-process placement (``jax.device_put``); multi-host input pipelines should build
    global arrays with ``jax.make_array_from_process_local_data(batch_sharding(...), local)``.
    """
    return _put(batch, jax.tree.map(lambda x: batch_sharding(jax.numpy.shape(x), mesh, rules), batch))


def cache_shardings(cache: KVCache, mesh: Mesh, rules: ShardingRules = DEFAULT_RULES) -> KVCache:
    """Returns a KVCache whose fields are NamedShardings: batch on "data", kv_heads on "model" when divisible."""
    if not isinstance(cache, KVCache):
        raise ValueError(f"cache_shardings expects a KVCache, got {type(cache).__name__}")
    per_layer = lambda name: tuple(  # noqa: E731
        logical_sharding(b.shape, CACHE_AXES[name], mesh, rules) for b in getattr(cache, name)
    )
    return KVCache(
        k=per_layer("k"), v=per_layer("v"),
        lengths=logical_sharding(cache.lengths.shape, CACHE_AXES["lengths"], mesh, rules),
    )


def shard_cache(cache: KVCache, mesh: Mesh, rules: ShardingRules = DEFAULT_RULES) -> KVCache:
    """Returns a copy of ``cache`` placed on ``mesh`` as ``cache_shardings`` says (a copy, see ``_put``)."""
    return _put(cache, cache_shardings(cache, mesh, rules))


def tree_shardings(tree: Any) -> Any:
    """Returns a pytree like ``tree`` of each array leaf's ``.sharding`` (to compare placements before and after a step)."""
    return jax.tree.map(lambda x: x.sharding, tree)


def same_shardings(a: Any, b: Any) -> bool:
    """Returns whether two pytrees of arrays are laid out the same way, leaf by leaf.

    Compares with ``Sharding.is_equivalent_to``, because a compiled function may return
    ``P('data', None)`` where the input said ``P('data')``: the same layout, a different spec.
    """
    la, ta = jax.tree.flatten(a)
    lb, tb = jax.tree.flatten(b)
    if ta != tb:
        return False
    return all(x.sharding.is_equivalent_to(y.sharding, x.ndim) and x.shape == y.shape for x, y in zip(la, lb))


def opt_state_shardings(optimizer: Any, cfg: ModelConfig, mesh: Mesh, rules: ShardingRules = DEFAULT_RULES) -> Any:
    """Returns a pytree like ``optimizer.init(params)`` of NamedShardings: param-shaped parts (adam's mu, nu)
    as ``param_shardings`` says, everything else (step counts) replicated.

    Use it as ``jax.jit(optimizer.init, out_shardings=...)``: a plain jitted init returns its
    zeros on one device, since nothing ties them to the params' layout.
    """
    import optax  # optional here: only the training path needs it

    from tokjax.model.params import param_shapes

    abstract = jax.eval_shape(optimizer.init, param_shapes(cfg))
    replicated = NamedSharding(mesh, PartitionSpec())
    return optax.tree_map_params(
        optimizer, lambda _, s: s, abstract, param_shardings(cfg, mesh, rules),
        transform_non_params=lambda _: replicated,
    )


def train_state_shardings(state: Any, cfg: ModelConfig, mesh: Mesh, rules: ShardingRules = DEFAULT_RULES) -> Any:
    """Returns a pytree like ``state`` of NamedShardings: every subtree shaped like the params of ``cfg`` (the
    params themselves, adam's mu and nu) as ``param_shardings`` says, every other leaf (step, rng) replicated.

    Works on any container (a TrainState, a tuple, an optax state) and on abstract values
    (``jax.eval_shape``), because subtrees are recognised by their tree structure and shapes.
    """
    from tokjax.model.params import param_shapes

    shapes = param_shapes(cfg)
    treedef = jax.tree.structure(shapes)
    want = [s.shape for s in jax.tree.leaves(shapes)]
    by_params = param_shardings(cfg, mesh, rules)
    replicated = NamedSharding(mesh, PartitionSpec())

    def params_like(x) -> bool:
        return jax.tree.structure(x) == treedef and [jax.numpy.shape(a) for a in jax.tree.leaves(x)] == want

    return jax.tree.map(lambda x: by_params if params_like(x) else replicated, state, is_leaf=params_like)


def shard_train_state(state: Any, cfg: ModelConfig, mesh: Mesh, rules: ShardingRules = DEFAULT_RULES) -> Any:
    """Returns a copy of ``state`` placed as ``train_state_shardings`` says (param-shaped parts split, the rest replicated).

    Placing every leaf, step counters and keys included, on the mesh is what keeps a jitted
    step's output layout equal to its input layout, so the second step reuses the first's executable.
    """
    return _put(state, train_state_shardings(state, cfg, mesh, rules))


# In a logical-axes declaration (``axes_shardings``, ``Strategy.state_axes``): "this subtree is a KVCache".
KV_CACHE = "kv_cache"


def _is_axes(x: Any) -> bool:
    return x is None or x == KV_CACHE or (isinstance(x, tuple) and all(a is None or isinstance(a, str) for a in x))


def axes_shardings(tree: Any, axes: Any, mesh: Mesh, rules: ShardingRules = DEFAULT_RULES) -> Any:
    """Returns a pytree like ``tree`` of NamedShardings from a declaration ``axes`` of its logical axes.

    ``axes`` is a prefix of ``tree`` whose leaves are: a tuple of logical axis names, one per
    dimension of the array at that place (``("batch", None)``); :data:`KV_CACHE` at a KVCache
    (placed by ``cache_shardings``); or None, which replicates the whole subtree there (``axes``
    = None replicates everything). Dimensions the mesh cannot split evenly are replicated.
    """
    replicated = NamedSharding(mesh, PartitionSpec())

    def place(ax, sub):
        if ax is None:
            return jax.tree.map(lambda _: replicated, sub)
        if ax == KV_CACHE:
            if not isinstance(sub, KVCache):
                raise ValueError(f"axes declare a KVCache ({KV_CACHE!r}) where the state holds {type(sub).__name__}")
            return cache_shardings(sub, mesh, rules)
        shape = jax.numpy.shape(sub)
        if len(shape) != len(ax):
            raise ValueError(f"logical axes {ax} declared for an array of shape {shape}: one name (or None) per dimension")
        return logical_sharding(shape, ax, mesh, rules)

    try:
        return jax.tree.map(place, axes, tree, is_leaf=_is_axes)
    except ValueError as e:
        if "axes declare" in str(e) or "logical axes" in str(e):
            raise
        raise ValueError(f"the axes declaration does not match the state's tree structure: {e}") from None


def state_shardings(state: Any, batch: int, mesh: Mesh, rules: ShardingRules = DEFAULT_RULES) -> Any:
    """Returns a pytree like ``state`` of NamedShardings: KV caches per ``cache_shardings``, leaves with a
    leading dimension of size ``batch`` split over "data" (replicated when not divisible), the rest replicated.

    A guess from shapes, for state whose layout nobody declared (logit-transform state); decode
    strategies declare theirs (``Strategy.state_axes``, placed by ``axes_shardings``).
    """

    def one(x):
        if isinstance(x, KVCache):
            return cache_shardings(x, mesh, rules)
        shape = jax.numpy.shape(x)
        if len(shape) >= 1 and shape[0] == batch:
            return logical_sharding(shape, ("batch",) + (None,) * (len(shape) - 1), mesh, rules)
        return NamedSharding(mesh, PartitionSpec())

    return jax.tree.map(one, state, is_leaf=lambda x: isinstance(x, KVCache))
