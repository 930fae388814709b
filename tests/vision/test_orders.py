"""Tests of tokjax.vision.orders: permutations and exact inverses, numpy oracles for each order, groups,
video grids, and bad-input errors."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tokjax.vision.orders import (
    ORDERS, Order, cell, diagonal, make_order, raster, to_grid, to_sequence, window_raster,
)


def _check_order(o: Order):
    n = int(np.prod(o.shape))
    assert o.size == n and o.perm.dtype == np.int32
    np.testing.assert_array_equal(np.sort(o.perm), np.arange(n))
    np.testing.assert_array_equal(o.inverse[o.perm], np.arange(n))
    np.testing.assert_array_equal(o.perm[o.inverse], np.arange(n))
    np.testing.assert_array_equal(np.ravel_multi_index(tuple(o.coords.T), o.shape), o.perm)
    assert o.groups[0] == 0 and np.all(np.diff(o.groups) >= 0) and np.all(np.diff(o.groups) <= 1)
    assert not o.perm.flags.writeable


def _round_trip(o: Order, seed: int):
    x = np.random.default_rng(seed).integers(0, 100, size=(3, 2) + o.shape)
    seq = to_sequence(x, o)
    assert isinstance(seq, np.ndarray) and seq.shape == (3, 2, o.size)
    np.testing.assert_array_equal(to_grid(seq, o), x)
    y = np.random.default_rng(seed + 1).integers(0, 100, size=(4, o.size))
    np.testing.assert_array_equal(to_sequence(to_grid(y, o), o), y)
    # sequence index i holds the grid value at coords[i]
    np.testing.assert_array_equal(seq[1, 0], x[(1, 0) + tuple(o.coords.T)])


@given(h=st.integers(1, 9), w=st.integers(1, 9), s=st.integers(1, 4), seed=st.integers(0, 1000))
def test_every_order_is_a_permutation_with_exact_inverse(h, w, s, seed):
    orders = [raster(h, w), diagonal(h, w), cell(h, w)]
    if h % s == 0 and w % s == 0:
        orders.append(window_raster(h, w, s))
    for o in orders:
        _check_order(o)
        _round_trip(o, seed)


@given(t=st.integers(1, 3), h=st.integers(1, 5), w=st.integers(1, 5), seed=st.integers(0, 1000))
def test_video_orders_round_trip(t, h, w, seed):
    for o in [raster(h, w, frames=t), diagonal(h, w, frames=t), cell(h, w, frames=t)]:
        assert o.shape == (t, h, w) and o.coords.shape == (t * h * w, 3)
        _check_order(o)
        _round_trip(o, seed)


def test_to_sequence_and_to_grid_under_jit():
    o = diagonal(3, 4)
    x = jnp.arange(2 * 12).reshape(2, 3, 4)
    seq = jax.jit(lambda a: to_sequence(a, o))(x)
    assert isinstance(seq, jax.Array)
    np.testing.assert_array_equal(seq, to_sequence(np.asarray(x), o))
    np.testing.assert_array_equal(jax.jit(lambda a: to_grid(a, o))(seq), x)


@given(h=st.integers(1, 8), w=st.integers(1, 8))
def test_diagonal_ranks_match_numpy_oracle(h, w):
    o = diagonal(h, w)
    cells = sorted(itertools.product(range(h), range(w)), key=lambda rc: (rc[0] + rc[1], rc[0]))
    np.testing.assert_array_equal(o.coords, np.array(cells).reshape(-1, 2))
    # rank of each grid cell (its sequence index) and its group = anti-diagonal
    rank = np.empty((h, w), int)
    for i, (r, c) in enumerate(cells):
        rank[r, c] = i
    np.testing.assert_array_equal(o.inverse.reshape(h, w), rank)
    np.testing.assert_array_equal(o.groups, o.coords.sum(1))
    assert o.num_groups == h + w - 1


def test_diagonal_video_is_frame_row_col_within_sum():
    o = diagonal(2, 2, frames=2)
    cells = sorted(itertools.product(range(2), range(2), range(2)), key=lambda c: (sum(c), c))
    np.testing.assert_array_equal(o.coords, np.array(cells))
    np.testing.assert_array_equal(o.groups, o.coords.sum(1))


@given(a=st.integers(1, 4), b=st.integers(1, 4), s=st.integers(1, 3))
def test_window_raster_matches_nested_loop_oracle(a, b, s):
    h, w = a * s, b * s
    want = [(wr * s + i, wc * s + j) for wr in range(a) for wc in range(b) for i in range(s) for j in range(s)]
    o = window_raster(h, w, s)
    np.testing.assert_array_equal(o.coords, np.array(want))
    np.testing.assert_array_equal(o.groups, np.repeat(np.arange(a * b), s * s))
    if s == 1:
        np.testing.assert_array_equal(o.perm, raster(h, w).perm)
    if a == 1 and b == 1:
        np.testing.assert_array_equal(o.perm, raster(h, w).perm)


def _quadtree(r0, c0, size):
    """Yields the cells of a size x size block (size a power of two) in recursive TL, TR, BL, BR order."""
    if size == 1:
        yield (r0, c0)
        return
    half = size // 2
    for dr, dc in ((0, 0), (0, 1), (1, 0), (1, 1)):
        yield from _quadtree(r0 + dr * half, c0 + dc * half, half)


@given(h=st.integers(1, 9), w=st.integers(1, 9))
def test_cell_order_is_the_quadtree_leaf_order(h, w):
    side = 1 << max(h - 1, w - 1, 0).bit_length()
    want = [(r, c) for r, c in _quadtree(0, 0, side) if r < h and c < w]
    o = cell(h, w)
    np.testing.assert_array_equal(o.coords, np.array(want).reshape(-1, 2))
    # groups: the 2x2 parent cell, numbered in order of appearance
    parents = [(r // 2, c // 2) for r, c in want]
    ids = {p: i for i, p in enumerate(dict.fromkeys(parents))}
    np.testing.assert_array_equal(o.groups, [ids[p] for p in parents])


def test_cell_keeps_every_aligned_block_contiguous():
    o = cell(8, 8)
    for k in (2, 4, 8):
        block = (o.coords[:, 0] // k) * (8 // k) + o.coords[:, 1] // k
        runs = np.flatnonzero(np.diff(block)) + 1
        assert len(runs) == (8 // k) ** 2 - 1  # each block appears as one run
        assert np.all(np.diff(runs) == k * k)
    np.testing.assert_array_equal(cell(4, 4).perm, window_raster(4, 4, 2).perm)  # one level of recursion
    assert cell(8, 8, frames=2).num_groups == 4 * 4 * 1  # 2x2x2 octree cells


def test_raster_groups_are_rows():
    o = raster(3, 4, frames=2)
    np.testing.assert_array_equal(o.perm, np.arange(24))
    np.testing.assert_array_equal(o.groups, np.arange(24) // 4)


def test_make_order():
    assert make_order("window_raster", 4, 4, s=2).name == "window_raster"
    np.testing.assert_array_equal(make_order("diagonal", 3, 3).perm, diagonal(3, 3).perm)
    assert set(ORDERS) == {"raster", "diagonal", "window_raster", "cell"}
    with pytest.raises(ValueError, match="unknown order"):
        make_order("spiral", 3, 3)
    with pytest.raises(ValueError, match="needs the window size"):
        make_order("window_raster", 4, 4)
    with pytest.raises(ValueError, match="window_raster only"):
        make_order("raster", 4, 4, s=2)


@pytest.mark.parametrize("h,w,s", [(4, 6, 4), (6, 4, 4), (5, 5, 2), (4, 4, 3)])
def test_window_raster_rejects_a_window_that_does_not_divide(h, w, s):
    with pytest.raises(ValueError, match="must divide the grid"):
        window_raster(h, w, s)


@pytest.mark.parametrize("bad", [0, -1, 2.5, True, "3", None])
def test_bad_grid_sizes(bad):
    for fn in (raster, diagonal, cell):
        with pytest.raises(ValueError, match="h must be an int"):
            fn(bad, 3)
        with pytest.raises(ValueError, match="w must be an int"):
            fn(3, bad)
    with pytest.raises(ValueError, match="s must be an int"):
        window_raster(4, 4, bad)
    if bad is not None:
        with pytest.raises(ValueError, match="frames must be an int"):
            raster(3, 3, frames=bad)


def test_to_sequence_and_to_grid_reject_shape_mismatch():
    o = raster(3, 4)
    with pytest.raises(ValueError, match="must end in the order's grid"):
        to_sequence(np.zeros((2, 4, 3)), o)
    with pytest.raises(ValueError, match="must end in the order's grid"):
        to_sequence(np.zeros((4,)), o)
    with pytest.raises(ValueError, match="must be \\[..., N=12\\]"):
        to_grid(np.zeros((2, 11)), o)
    with pytest.raises(ValueError, match="must be a tokjax.vision.orders.Order"):
        to_grid(np.zeros((2, 12)), "raster")
