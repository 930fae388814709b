"""Clustered point sets on a voxel (or pixel) grid, labelled by their number of clusters (no downloads).

``point_sets(n, grid=8, seed=0)`` draws ``n`` sets of occupied voxels in a ``grid^3`` cube (or
``grid^2`` square with ``dims=2``), each made of 1-4 clusters; the label is the cluster count.

Validity. A point set is *valid* for label k when its points lie on the grid, are pairwise
distinct (a set, not a multiset) and form exactly k clusters, where a cluster is a connected
component of the occupied cells under full (Chebyshev) adjacency: two cells touch when they
differ by at most 1 in every coordinate (26 neighbours in 3-D, 8 in 2-D). Every generated
sample is valid. :func:`count_clusters` counts components of occupancy grids and
:func:`valid_point_sets` checks point lists (e.g. decoded model samples) against labels.

Generation. Cluster j starts at a random free cell at Chebyshev distance >= 2 from every cell
of clusters 0..j-1 and grows one face-neighbour at a time (uniform over the free frontier cells
that keep that distance) to a size drawn uniformly from ``cluster_size``; a cluster whose
frontier runs out stops smaller (never below one cell), and a sample with no room for its next
seed is redrawn. Each cluster is face-connected and any two are separated by an empty cell,
so every adjacency (face or full) gives the same count.
"""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np

from tokjax.data._packing import check_int

__all__ = ["PointSets", "count_clusters", "point_sets", "valid_point_sets"]

_MAX_TRIES = 100


@dataclasses.dataclass(frozen=True, eq=False)
class PointSets:
    """Clustered point sets as occupancy grids and as padded point lists.

    Attributes:
      occupancy: bool ``[n, grid, grid, grid]`` (``[n, grid, grid]`` for ``dims=2``).
      points: int32 ``[n, max_points, dims]`` cell coordinates in raster order (the index order of
        ``occupancy``), rows padded with -1 after ``num_points``.
      num_points: int32 ``[n]``.
      cluster_ids: int32 ``[n, max_points]``, the cluster (0..label-1, in the order drawn) of each point, -1 padding.
      labels: int32 ``[n]``, the number of clusters (1..max_clusters).
      grid, dims: the grid side and dimension.
    """

    occupancy: np.ndarray
    points: np.ndarray
    num_points: np.ndarray
    cluster_ids: np.ndarray
    labels: np.ndarray
    grid: int
    dims: int

    def __len__(self) -> int:
        return int(self.labels.shape[0])


def _offsets(dims: int, full: bool) -> np.ndarray:
    """Returns int [K, dims] neighbour offsets: all of {-1,0,1}^dims but 0 (full) or the 2*dims unit vectors."""
    if full:
        return np.array([o for o in itertools.product((-1, 0, 1), repeat=dims) if any(o)], np.int64)
    eye = np.eye(dims, dtype=np.int64)
    return np.concatenate([eye, -eye])


def _neighbour_table(grid: int, dims: int, full: bool) -> np.ndarray:
    """Returns int [grid**dims, K]: the flat index of each cell's neighbours, or the cell itself where off the grid."""
    shape = (grid,) * dims
    coords = np.stack(np.unravel_index(np.arange(grid**dims), shape), -1)  # [C, dims]
    nb = coords[:, None, :] + _offsets(dims, full)[None]  # [C, K, dims]
    inside = ((nb >= 0) & (nb < grid)).all(-1)
    flat = np.ravel_multi_index(tuple(np.moveaxis(np.clip(nb, 0, grid - 1), -1, 0)), shape)
    return np.where(inside, flat, np.arange(grid**dims)[:, None])


def _sample(rng: np.random.Generator, k: int, grid: int, dims: int, lo: int, hi: int,
            faces: np.ndarray, full: np.ndarray) -> np.ndarray | None:
    """Returns int8 [grid**dims] cluster ids (-1 empty), or None when cluster seeds ran out of room.

    ``faces`` / ``full`` are the :func:`_neighbour_table` of face / full adjacency.
    """
    ids = np.full(grid**dims, -1, np.int8)
    # blocked: within Chebyshev distance 1 of an earlier cluster (a new cell there would merge them).
    blocked = np.zeros(grid**dims, bool)
    for j in range(k):
        free = np.flatnonzero(~blocked & (ids < 0))
        if free.size == 0:
            return None
        cell = int(free[rng.integers(free.size)])
        cells = [cell]
        ids[cell] = j
        frontier = np.zeros(grid**dims, bool)
        target = int(rng.integers(lo, hi + 1))
        while len(cells) < target:
            frontier[faces[cell]] = True
            options = np.flatnonzero(frontier & (ids < 0) & ~blocked)
            if options.size == 0:
                break
            cell = int(options[rng.integers(options.size)])
            ids[cell] = j
            cells.append(cell)
        blocked[full[cells].reshape(-1)] = True  # the ring around this cluster, for the later ones
    return ids


def _check_dims(dims) -> int:
    dims = check_int("dims", dims, 1)
    if dims not in (2, 3):
        raise ValueError(f"dims must be 2 or 3, got {dims}")
    return dims


def point_sets(n: int, grid: int = 8, seed: int = 0, *, dims: int = 3, max_clusters: int = 4,
               cluster_size: tuple[int, int] = (2, 8)) -> PointSets:
    """Returns :class:`PointSets`: ``n`` seeded point sets of 1..``max_clusters`` clusters, label = cluster count.

    The count is uniform over 1..``max_clusters``; each cluster's size is uniform over the inclusive
    range ``cluster_size`` (a cluster boxed in by the grid or by earlier clusters may stop smaller).
    See the module docstring for the generation and for what makes a sample valid (every sample
    returned is). Deterministic in ``seed``.

    Raises:
      ValueError: ``n`` < 0, ``grid`` < 3, ``dims`` not 2 or 3, ``max_clusters`` < 1, ``cluster_size`` not
        ``(lo, hi)`` with 1 <= lo <= hi, or a grid too small to place the clusters.
    """
    n = check_int("n", n, 0)
    grid = check_int("grid", grid, 1)
    if grid < 3:
        raise ValueError(f"grid must be >= 3 (two clusters need an empty cell between them), got {grid}")
    dims = _check_dims(dims)
    max_clusters = check_int("max_clusters", max_clusters, 1)
    if not isinstance(cluster_size, (tuple, list)) or len(cluster_size) != 2:
        raise ValueError(f"cluster_size must be (lo, hi) ints, got {cluster_size!r}")
    lo, hi = (check_int("cluster_size", v, 1) for v in cluster_size)
    if lo > hi:
        raise ValueError(f"cluster_size must be (lo, hi) with lo <= hi, got {cluster_size!r}")
    rng = np.random.default_rng(seed)
    labels = rng.integers(1, max_clusters + 1, size=n)
    faces, full = _neighbour_table(grid, dims, False), _neighbour_table(grid, dims, True)
    grids = []
    for k in labels.tolist():
        for _ in range(_MAX_TRIES):
            ids = _sample(rng, k, grid, dims, lo, hi, faces, full)
            if ids is not None:
                break
        else:
            raise ValueError(f"a {grid}^{dims} grid has no room for {k} separated clusters of {lo}-{hi} cells; "
                             "use a larger grid or fewer / smaller clusters")
        grids.append(ids.reshape((grid,) * dims))
    ids = np.stack(grids) if grids else np.full((0,) + (grid,) * dims, -1, np.int8)
    occupancy = ids >= 0
    flat_occ = occupancy.reshape(n, -1)
    num_points = flat_occ.sum(1).astype(np.int32)
    width = int(num_points.max()) if n else 0
    points = np.full((n, width, dims), -1, np.int32)
    cluster_ids = np.full((n, width), -1, np.int32)
    for i in range(n):
        idx = np.flatnonzero(flat_occ[i])  # raster order
        points[i, : idx.size] = np.stack(np.unravel_index(idx, (grid,) * dims), -1)
        cluster_ids[i, : idx.size] = ids[i].reshape(-1)[idx]
    return PointSets(occupancy=occupancy, points=points, num_points=num_points, cluster_ids=cluster_ids,
                     labels=labels.astype(np.int32), grid=grid, dims=dims)


def count_clusters(occupancy, *, connectivity: str = "full") -> np.ndarray:
    """Returns int32 ``[n]``: the number of connected components of each occupancy grid.

    ``occupancy`` is bool ``[n, g1, ..., gd]`` (d = 2 or 3; a 0/1 integer array is accepted).
    ``connectivity="full"`` joins cells that differ by at most 1 in every coordinate (8 / 26
    neighbours), ``"face"`` only those that differ by 1 in one coordinate (4 / 6). Computed by
    min-label propagation over all grids at once, with pointer jumping, until nothing changes.

    Raises:
      ValueError: not a 3-D or 4-D array, values other than 0/1, or an unknown ``connectivity``.
    """
    occ = np.asarray(occupancy)
    if occ.ndim not in (3, 4):
        raise ValueError(f"occupancy must be [n, g, g] or [n, g, g, g], got shape {occ.shape}")
    if occ.dtype != bool:
        if occ.dtype.kind not in "iuf" or not np.isin(occ, (0, 1)).all():
            raise ValueError("occupancy must be boolean (or 0/1 values)")
        occ = occ.astype(bool)
    if connectivity not in ("full", "face"):
        raise ValueError(f"connectivity must be 'full' or 'face', got {connectivity!r}")
    n, shape = occ.shape[0], occ.shape[1:]
    dims = len(shape)
    size = int(np.prod(shape))
    big = np.int64(n * size)
    label = np.where(occ.reshape(n, -1), np.arange(n * size).reshape(n, size), big).reshape(occ.shape)
    offsets = _offsets(dims, connectivity == "full")
    pad = [(0, 0)] + [(1, 1)] * dims
    while True:
        padded = np.pad(label, pad, constant_values=big)
        best = label
        for o in offsets:
            sl = (slice(None),) + tuple(slice(1 + d, 1 + d + g) for d, g in zip(o, shape))
            best = np.minimum(best, padded[sl])
        best = np.where(occ, best, big)
        flat = best.reshape(-1)
        # pointer jumping: a cell takes the label of the cell its label names, until stable
        while True:
            hop = np.where(flat < big, flat[np.minimum(flat, big - 1)], big)
            if np.array_equal(hop, flat):
                break
            flat = hop
        best = flat.reshape(occ.shape)
        if np.array_equal(best, label):
            break
        label = best
    flat_idx = np.arange(n * size).reshape(occ.shape)
    roots = occ & (label == flat_idx)
    return roots.reshape(n, -1).sum(1).astype(np.int32)


def valid_point_sets(points, num_points, labels, grid: int, *, connectivity: str = "full") -> np.ndarray:
    """Returns bool ``[n]``: each point set is valid for its label (module docstring).

    ``points`` int ``[n, P, dims]`` (rows beyond ``num_points[i]`` are ignored), ``num_points`` int
    ``[n]``, ``labels`` int ``[n]`` the wanted cluster counts. A row is valid when its points are on
    the ``grid`` (every coordinate in [0, grid)), pairwise distinct, and form exactly ``labels[i]``
    clusters (:func:`count_clusters`). An empty set has 0 clusters.

    Raises:
      ValueError: malformed shapes, non-integer coordinates, ``num_points`` outside [0, P] or ``grid`` < 1.
    """
    pts = np.asarray(points)
    grid = check_int("grid", grid, 1)
    if pts.ndim != 3 or pts.shape[2] not in (2, 3):
        raise ValueError(f"points must be [n, P, 2 or 3], got shape {pts.shape}")
    if pts.dtype.kind not in "iu" and pts.size:
        raise ValueError(f"points must hold integer cell coordinates, got dtype {pts.dtype}")
    n, width, dims = pts.shape
    counts, wanted = np.asarray(num_points), np.asarray(labels)
    if counts.shape != (n,) or wanted.shape != (n,):
        raise ValueError(f"num_points and labels must have shape [{n}], got {counts.shape} and {wanted.shape}")
    if counts.size and (counts.dtype.kind not in "iu" or counts.min() < 0 or counts.max() > width):
        raise ValueError(f"num_points must be integers in [0, {width}]")
    live = np.arange(width)[None] < counts[:, None]  # [n, P]
    on_grid = ((pts >= 0) & (pts < grid)).all(-1) | ~live
    ok = on_grid.all(1)
    safe = np.where(live[..., None] & on_grid[..., None], pts, 0).astype(np.int64)
    flat = np.ravel_multi_index(tuple(np.moveaxis(safe, -1, 0)), (grid,) * dims)  # [n, P]
    occ = np.zeros((n, grid**dims), np.int64)
    np.add.at(occ, (np.repeat(np.arange(n), width)[live.reshape(-1)], flat[live]), 1)
    distinct = (occ <= 1).all(1)
    clusters = count_clusters(occ.reshape((n,) + (grid,) * dims) > 0, connectivity=connectivity)
    return ok & distinct & (clusters == wanted)
