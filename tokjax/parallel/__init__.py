"""Sharding on a ("data", "model") mesh: a logical-axis rules table and the placements it derives.

    mesh = make_mesh(model=4)                     # data = n_devices // 4
    model = shard_model(model, mesh)              # params split as ShardingRules() says
    out = tokjax.generate(model, prompt, ...)     # jit propagates the param shardings
    out = tokjax.generate(model, prompt, mesh=mesh, ...)  # ... and splits the decode state too
    batch = shard_batch(batch, mesh)              # leading dim on "data"

Plain ``jax.jit`` with ``NamedSharding`` (GSPMD); see docs/sharding.md. The implementation lives
in ``tokjax.model.sharding`` (the bottom of the layering, next to the logical axis names it maps),
so the decode driver and the train step use it without importing upward; ``tokjax.parallel`` is
the public name users import.
"""

from tokjax.model.sharding import *  # noqa: F401,F403  (the public name of the same objects)
from tokjax.model.sharding import __all__  # noqa: F401
