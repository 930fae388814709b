"""The decode layout of a model's params, built once per param set and shared by everything that runs
cached forwards outside training (``tokjax.generate``, byte-level generation, scoring)."""

from __future__ import annotations

import collections
import weakref

import jax

from tokjax.model.forward import unstack_layers
from tokjax.model.row_weights import f32_kernel_available, row_layout

__all__ = ["decode_layout"]


# The decode layout of recently used params (unstacked, q/k/v and gate/up fused): building it
# copies every weight (82 ms of a 250 ms one-token generate on SmolLM2-135M), so a model's
# repeated generate calls reuse it. Each slot holds a second copy of one model's weights, so few.
_LAYOUT_SLOTS = 2
_LAYOUTS: collections.OrderedDict = collections.OrderedDict()


def decode_layout(params, *, fuse: bool, cfg=None):
    """Returns ``unstack_layers(params, fuse=fuse)``, reused while the same param arrays are alive; with
    ``cfg`` and on CPU with its float32 kernel, float32 projections and the head in the row layout
    (``tokjax.model.row_weights``: batched decode steps stream each weight once at up to 16 rows).

    Keyed by the identity of every parameter array (a weak reference confirms it is the same
    object, not a new one at a recycled address); an entry is dropped when its params are freed.
    Traced or non-referenceable leaves are not cached.
    """
    rows = cfg is not None and fuse and jax.default_backend() == "cpu" and f32_kernel_available()

    def build():
        out = unstack_layers(params, fuse=fuse)
        return row_layout(out, cfg) if rows else out

    leaves = jax.tree.leaves(params)
    if not leaves or any(isinstance(x, jax.core.Tracer) for x in leaves):
        return build()
    key = (fuse, rows, tuple(id(x) for x in leaves))
    hit = _LAYOUTS.get(key)
    if hit is not None and all(r() is x for r, x in zip(hit[0], leaves)):
        _LAYOUTS.move_to_end(key)
        return hit[1]
    out = build()
    try:
        refs = tuple(weakref.ref(x) for x in leaves)
    except TypeError:
        return out
    _LAYOUTS[key] = (refs, out)
    weakref.finalize(leaves[0], _LAYOUTS.pop, key, None)
    while len(_LAYOUTS) > _LAYOUT_SLOTS:
        _LAYOUTS.popitem(last=False)
    return out
