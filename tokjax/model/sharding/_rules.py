"""ShardingRules: the table from logical axis names to mesh axes, and the specs it yields.

Every parameter, cache and batch dimension carries a logical name (``tokjax.model.params``);
one table says which mesh axis each name is split over, so the same model code runs on one
device or on a (data, model) mesh. A dimension whose size the mesh axis does not divide
(kv_heads=2 on model=4) is replicated instead of erroring, so a rule never makes a small
model unrunnable.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence, Union

from jax.sharding import Mesh, NamedSharding, PartitionSpec

# A rule's value: one mesh axis, several (the dimension is split over their product), or None.
MeshAxes = Union[str, tuple[str, ...], None]

LOGICAL_AXES = ("batch", "seq", "embed", "heads", "kv_heads", "head_dim", "mlp", "vocab", "layers")


def _as_tuple(m: MeshAxes) -> tuple[str, ...]:
    return () if m is None else ((m,) if isinstance(m, str) else tuple(m))


@dataclasses.dataclass(frozen=True)
class ShardingRules:
    """A frozen table mapping each logical axis to a mesh axis (or None: replicated).

    The defaults are Megatron-style tensor parallelism on ``model`` (heads, kv_heads, mlp and
    vocab split; each layer then needs one all-reduce after attention and one after the MLP)
    with data parallelism on ``data``. Change a rule with ``rules.replace(embed="model", mlp=None)``.
    Frozen and hashable, so it can be a static jit argument.
    """

    batch: MeshAxes = "data"
    seq: MeshAxes = None
    embed: MeshAxes = None
    heads: MeshAxes = "model"
    kv_heads: MeshAxes = "model"
    head_dim: MeshAxes = None
    mlp: MeshAxes = "model"
    vocab: MeshAxes = "model"
    layers: MeshAxes = None

    def __post_init__(self):
        for name in LOGICAL_AXES:
            value = getattr(self, name)
            if isinstance(value, list):
                value = tuple(value)
                object.__setattr__(self, name, value)
            ok = value is None or isinstance(value, str) or (
                isinstance(value, tuple) and value and all(isinstance(a, str) for a in value)
            )
            if not ok:
                raise ValueError(
                    f"ShardingRules.{name} must be a mesh axis name, a tuple of names or None, got {value!r}"
                )
            if len(set(_as_tuple(value))) != len(_as_tuple(value)):
                raise ValueError(f"ShardingRules.{name} names a mesh axis twice: {value!r}")

    @classmethod
    def replicated(cls) -> "ShardingRules":
        """Returns rules that replicate everything (every rule None)."""
        return cls(**{name: None for name in LOGICAL_AXES})

    def replace(self, **changes) -> "ShardingRules":
        """Returns a copy with the given rules changed."""
        unknown = sorted(set(changes) - set(LOGICAL_AXES))
        if unknown:
            raise ValueError(f"unknown logical axes {unknown}; ShardingRules knows {LOGICAL_AXES}")
        return dataclasses.replace(self, **changes)

    def mesh_axes(self, logical: str | None) -> MeshAxes:
        """Returns the mesh axis (or axes, or None) that logical axis ``logical`` is split over."""
        if logical is None:
            return None
        if logical not in LOGICAL_AXES:
            raise ValueError(f"unknown logical axis {logical!r}; ShardingRules knows {LOGICAL_AXES}")
        return getattr(self, logical)

    def spec(self, axes: Sequence[str | None]) -> PartitionSpec:
        """Returns the PartitionSpec for a value with logical ``axes``; raises if a mesh axis is used twice.

        A mesh axis can split only one dimension of an array, so two logical axes mapped onto the
        same mesh axis in one spec (say embed and mlp both on "model" for ``w_up``) is a broken
        table, reported whatever the sizes are.
        """
        parts = [self.mesh_axes(a) for a in axes]
        owner: dict[str, str] = {}
        for logical, m in zip(axes, parts):
            for mesh_axis in _as_tuple(m):
                if mesh_axis in owner:
                    raise ValueError(
                        f"sharding rules map both {owner[mesh_axis]!r} and {logical!r} onto mesh axis "
                        f"{mesh_axis!r} in one array with axes {tuple(axes)}; a mesh axis can split only one dimension"
                    )
                owner[mesh_axis] = logical
        return PartitionSpec(*parts)


DEFAULT_RULES = ShardingRules()


def logical_spec(
    shape: Sequence[int], axes: Sequence[str | None], mesh: Mesh, rules: ShardingRules = DEFAULT_RULES
) -> PartitionSpec:
    """Returns ``rules.spec(axes)`` with every dimension the mesh cannot split evenly replicated.

    Mesh axes of size 1 and trailing Nones are left out (the same layout, in jit's output
    form). ``mesh`` may be a ``Mesh`` or an ``AbstractMesh`` (only its axis sizes are read).
    """
    shape, axes = tuple(shape), tuple(axes)
    if len(shape) != len(axes):
        raise ValueError(f"shape {shape} has {len(shape)} dimensions but {len(axes)} logical axes {axes}")
    spec = rules.spec(axes)
    sizes = dict(mesh.shape)
    parts = []
    for dim, logical, m in zip(shape, axes, spec):
        names = _as_tuple(m)
        missing = [a for a in names if a not in sizes]
        if missing:
            raise ValueError(
                f"rule {logical!r} -> {m!r} names mesh axes {missing} that the mesh {tuple(sizes)} lacks"
            )
        # Size-1 mesh axes split nothing; dropping them (and trailing Nones below) gives the
        # spec the form jit gives its outputs. jit's cache compares specs by form, so
        # P('data', None) in and P('data') out would compile a train step twice.
        names = tuple(a for a in names if sizes[a] > 1)
        split = math.prod(sizes[a] for a in names)
        # Uneven splits would need padding; replicating a small dimension costs memory, not correctness.
        if not names or dim % split:
            parts.append(None)
        else:
            parts.append(names[0] if len(names) == 1 else names)
    while parts and parts[-1] is None:
        parts.pop()
    return PartitionSpec(*parts)


def logical_sharding(
    shape: Sequence[int], axes: Sequence[str | None], mesh: Mesh, rules: ShardingRules = DEFAULT_RULES
) -> NamedSharding:
    """Returns the NamedSharding on ``mesh`` of a value with ``shape`` and logical ``axes`` (see logical_spec)."""
    return NamedSharding(mesh, logical_spec(shape, axes, mesh, rules))
