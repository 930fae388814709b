"""Token orders over an image grid (H x W) or a video grid (T x H x W), with exact inverses.

An :class:`Order` says in which sequence the cells of a grid are generated. For a grid of N cells,
flattened row-major (``frame * H * W + row * W + col``):

    perm     int32 [N]      sequence index i -> flat grid index perm[i]
    inverse  int32 [N]      flat grid index g -> sequence index inverse[g]   (inverse[perm] = arange(N))
    coords   int32 [N, D]   the grid coordinates of sequence index i: (row, col), or (frame, row, col)
                            for video (D = 2 or 3); what ``Inputs.positions`` of a ``pos_dims = D``
                            model reads (NOTES-visual V2: positions stay the *spatial* coordinates)
    groups   int32 [N]      the block each sequence index belongs to, 0, 1, 2, ... nondecreasing along
                            the sequence: the generation rank of a block-parallel decoder (NOTES-visual
                            V1 rank masks; one block per pass)

    to_sequence(grid [..., (T,) H, W], order) -> [..., N]     x_seq[..., i] = x_grid.flat[..., perm[i]]
    to_grid(seq [..., N], order) -> [..., (T,) H, W]           the exact inverse

The orders (``frames=T`` gives the video variant of each, frame-major unless said otherwise):

* :func:`raster` -- row-major. Groups: rows (``frame * H + row``), NBP's row blocks (P13).
* :func:`diagonal` -- anti-diagonals ``row + col`` (``frame + row + col`` for video) ascending,
  row-major (lexicographic) within one. Groups: the anti-diagonal index, NAR's rank (P31: the
  tokens of one anti-diagonal are generated in one pass, H + W - 1 passes in all).
* :func:`window_raster` -- the grid cut into s x s windows, windows in raster order, raster inside
  each window (Token-Shuffle's window-raster permutation, P64; also xAR's k x k "cell" entity,
  P10). Groups: the window index. ValueError when s does not divide H and W.
* :func:`cell` -- recursive 2 x 2 cells (Z-order / Morton order): the leaf order of the complete
  quadtree over the grid (octree over T x H x W for video), so every aligned 2^k x 2^k cell is one
  contiguous run of the sequence. This is the "cell" order of issue 24: Uni-3DAR's within-level
  order (P53: octree levels coarse to fine, Morton order inside a level) and the order that keeps
  each Hi-MAR pivot cell (P5: 2 x 2 average-pooled pivots) contiguous. Within a cell the children go
  (top-left, top-right, bottom-left, bottom-right), i.e. the Morton key interleaves the bits of
  (frame, row, col) with col least significant; the axis priority of Uni-3DAR's official z-order is
  unverified (any choice is a valid order). Grids that are not powers of two are allowed: the cells
  are ordered by the Morton key of the complete power-of-two grid, restricted to the cells present.
  Groups: the 2 x 2 (2 x 2 x 2) cell index.

Orders are host-side numpy constants (built once, read-only); :func:`to_sequence` / :func:`to_grid`
accept numpy arrays (numpy out) or jax arrays (jax out, jit-compatible: the permutation is a
constant of the traced program).
"""

from __future__ import annotations

import dataclasses
import operator
from typing import Any

import jax.numpy as jnp
import numpy as np

__all__ = ["ORDERS", "Order", "cell", "diagonal", "make_order", "raster", "to_grid", "to_sequence", "window_raster"]


def _check_int(name: str, value: Any, lo: int) -> int:
    if isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{name} must be an int >= {lo}, got {value!r}")
    try:
        v = operator.index(value)
    except TypeError:
        raise ValueError(f"{name} must be an int >= {lo}, got {value!r}") from None
    if v < lo:
        raise ValueError(f"{name} must be an int >= {lo}, got {v}")
    return int(v)


def _grid_shape(h, w, frames) -> tuple[int, ...]:
    h, w = _check_int("h", h, 1), _check_int("w", w, 1)
    if frames is None:
        return (h, w)
    return (_check_int("frames", frames, 1), h, w)


def _readonly(a: np.ndarray) -> np.ndarray:
    a = np.ascontiguousarray(a, dtype=np.int32)
    a.setflags(write=False)
    return a


@dataclasses.dataclass(frozen=True, eq=False)
class Order:
    """A generation order over a grid of ``shape`` = (H, W) or (T, H, W) (see the module docstring).

    ``perm`` [N]: sequence index -> flat row-major grid index; ``inverse`` [N]: its inverse;
    ``coords`` [N, len(shape)]: grid coordinates per sequence index; ``groups`` [N]: nondecreasing
    block ids from 0. Compared and hashed by identity (the arrays are read-only numpy constants).
    """

    name: str
    shape: tuple[int, ...]
    perm: np.ndarray
    inverse: np.ndarray
    coords: np.ndarray
    groups: np.ndarray

    @property
    def size(self) -> int:
        """N, the number of grid cells (= sequence length)."""
        return int(self.perm.shape[0])

    @property
    def ndim(self) -> int:
        """2 for an image grid, 3 for a video grid (the width of ``coords``)."""
        return len(self.shape)

    @property
    def num_groups(self) -> int:
        """The number of blocks (passes of a decoder that fills one block per pass)."""
        return int(self.groups[-1]) + 1

    def __repr__(self) -> str:
        return f"Order({self.name!r}, shape={self.shape}, groups={self.num_groups})"


def _build(name: str, shape: tuple[int, ...], perm: np.ndarray, groups: np.ndarray) -> Order:
    perm = np.asarray(perm, np.int64)
    n = int(np.prod(shape))
    if perm.shape != (n,) or not np.array_equal(np.sort(perm), np.arange(n)):  # guards the constructors below
        raise RuntimeError(f"order {name!r} is not a permutation of the {n} grid cells")
    inverse = np.empty(n, np.int64)
    inverse[perm] = np.arange(n)
    coords = np.stack(np.unravel_index(perm, shape), axis=-1)
    _, groups = np.unique(np.asarray(groups, np.int64), return_inverse=True)  # 0, 1, 2, ... in sequence order
    if np.any(np.diff(groups) < 0):
        raise RuntimeError(f"order {name!r} has decreasing groups")
    return Order(name=name, shape=shape, perm=_readonly(perm), inverse=_readonly(inverse), coords=_readonly(coords),
                 groups=_readonly(groups.reshape(-1)))


def _grid_coords(shape: tuple[int, ...]) -> list[np.ndarray]:
    """Returns one flat [N] coordinate array per axis, row-major."""
    return [c.reshape(-1) for c in np.meshgrid(*[np.arange(s) for s in shape], indexing="ij")]


def raster(h: int, w: int, *, frames: int | None = None) -> Order:
    """Returns the row-major order of an h x w grid (frame-major for ``frames`` T); groups = rows.

    Raises ValueError unless h, w (and frames) are ints >= 1.
    """
    shape = _grid_shape(h, w, frames)
    perm = np.arange(int(np.prod(shape)))
    return _build("raster", shape, perm, perm // shape[-1])


def diagonal(h: int, w: int, *, frames: int | None = None) -> Order:
    """Returns the anti-diagonal order: ``row + col`` (``frame + row + col``) ascending, row-major within
    one anti-diagonal; groups = the anti-diagonal index (NAR, P31: H + W - 1 groups for an image).

    Raises ValueError unless h, w (and frames) are ints >= 1.
    """
    shape = _grid_shape(h, w, frames)
    axes = _grid_coords(shape)
    s = sum(axes)
    perm = np.lexsort(tuple(reversed(axes)) + (s,))  # last key primary: sum, then frame, row, col
    return _build("diagonal", shape, perm, s[perm])


def window_raster(h: int, w: int, s: int, *, frames: int | None = None) -> Order:
    """Returns the window-raster order: s x s windows in raster order, raster inside each window (per frame,
    frames first, for video); groups = the window index (Token-Shuffle P64; xAR's cell entity P10).

    Raises ValueError unless h, w (and frames) are ints >= 1 and s is an int >= 1 dividing both h and w.
    """
    shape = _grid_shape(h, w, frames)
    s = _check_int("s", s, 1)
    H, W = shape[-2:]
    if H % s or W % s:
        raise ValueError(f"window size s={s} must divide the grid, got h={H}, w={W}")
    axes = _grid_coords(shape)
    f = axes[0] if len(shape) == 3 else np.zeros_like(axes[0])
    r, c = axes[-2:]
    window = (f * (H // s) + r // s) * (W // s) + c // s
    inner = (r % s) * s + c % s
    perm = np.lexsort((inner, window))
    return _build("window_raster", shape, perm, window[perm])


def _morton(axes: list[np.ndarray]) -> np.ndarray:
    """Returns the Morton key of each cell: the bits of the axes interleaved, the last axis least significant."""
    bits = max(int(a.max()).bit_length() for a in axes)
    d = len(axes)
    key = np.zeros_like(axes[0], dtype=np.int64)
    for b in range(bits):
        for k, a in enumerate(axes):
            key |= ((a >> b) & 1).astype(np.int64) << (b * d + (d - 1 - k))
    return key


def cell(h: int, w: int, *, frames: int | None = None) -> Order:
    """Returns the recursive 2 x 2 cell (Z-order / Morton) order; groups = the 2 x 2 (x 2) cell index.

    Every aligned 2^k x 2^k cell of the grid is one contiguous run of the sequence (the leaf order of
    the complete quadtree, octree for video); children in the order top-left, top-right, bottom-left,
    bottom-right. Any h, w work (see the module docstring). Raises ValueError unless h, w (and frames)
    are ints >= 1.
    """
    shape = _grid_shape(h, w, frames)
    axes = _grid_coords(shape)
    key = _morton(axes)
    perm = np.argsort(key, kind="stable")
    parent = _morton([a >> 1 for a in axes])
    return _build("cell", shape, perm, parent[perm])


ORDERS = {"raster": raster, "diagonal": diagonal, "window_raster": window_raster, "cell": cell}


def make_order(name: str, h: int, w: int, *, frames: int | None = None, s: int | None = None) -> Order:
    """Returns the order called ``name`` (a key of :data:`ORDERS`); ``s`` is the window of ``window_raster``
    (and must be None for the others). Raises ValueError for an unknown name or a misplaced ``s``."""
    if name not in ORDERS:
        raise ValueError(f"unknown order {name!r}; expected one of {sorted(ORDERS)}")
    if name == "window_raster":
        if s is None:
            raise ValueError("window_raster needs the window size s")
        return window_raster(h, w, s, frames=frames)
    if s is not None:
        raise ValueError(f"s (a window size) applies to window_raster only, not to {name!r}")
    return ORDERS[name](h, w, frames=frames)


def _check_order(order: Any) -> Order:
    if not isinstance(order, Order):
        raise ValueError(f"order must be a tokjax.vision.orders.Order (raster(h, w), ...), got {type(order).__name__}")
    return order


def _as_array(x: Any):
    return x if isinstance(x, np.ndarray) else jnp.asarray(x)


def to_sequence(grid_tokens: Any, order: Order):
    """Returns ``grid_tokens`` [..., *order.shape] as sequences [..., N] in ``order``.

    Any leading (batch) dimensions; numpy in gives numpy out, anything else a jax array (jit-compatible).
    Raises ValueError when the trailing dimensions are not the order's grid.
    """
    order = _check_order(order)
    x = _as_array(grid_tokens)
    k = order.ndim
    if x.ndim < k or tuple(x.shape[-k:]) != order.shape:
        grid = ", ".join(map(str, order.shape))
        raise ValueError(f"grid tokens must end in the order's grid {order.shape} ([..., {grid}]), got shape "
                         f"{tuple(x.shape)}")
    flat = x.reshape(tuple(x.shape[:-k]) + (order.size,))
    xp = np if isinstance(x, np.ndarray) else jnp
    return xp.take(flat, order.perm, axis=-1)


def to_grid(seq_tokens: Any, order: Order):
    """Returns sequences ``seq_tokens`` [..., N] (in ``order``) as grids [..., *order.shape]: the exact
    inverse of :func:`to_sequence`. Raises ValueError when the last dimension is not N."""
    order = _check_order(order)
    x = _as_array(seq_tokens)
    if x.ndim < 1 or x.shape[-1] != order.size:
        raise ValueError(f"sequence tokens must be [..., N={order.size}] for the order's grid {order.shape}, got "
                         f"shape {tuple(x.shape)}")
    xp = np if isinstance(x, np.ndarray) else jnp
    return xp.take(x, order.inverse, axis=-1).reshape(tuple(x.shape[:-1]) + order.shape)
