"""Digit glyph images and videos drawn from a 5x7 bitmap font, with placement labels (no downloads).

``glyphs(n, size=16, seed=0)`` draws ``n`` digits 0-9, each from the bitmap font :data:`GLYPH_FONT`
under a random affine map (scale, rotation, shear, shift) and stroke thickness, rendered
anti-aliased by numpy. Besides the digit every image carries placement labels -- ``left`` /
``top`` (which half of the canvas holds the glyph's centre) and ``large`` (which of two size
ranges) -- so captions such as ``"7 left top small"`` are exact (:meth:`Glyphs.captions`).
``moving_glyphs`` makes short videos of one glyph moving at constant velocity.

Rendering. The font's "on" cells are joined into strokes: a segment between every two
4-adjacent on cells, and between two diagonal neighbours when neither of the two cells they
share is on (so a diagonal is drawn once, not as a filled triangle). A glyph is placed by

    p = c + M (g - g0),   M = scale * R(angle) @ [[1, shear], [0, 1]],

mapping font coordinates g = (column, row) of cell centres (g0 = (2, 3), the centre of the
5x7 box) to image coordinates p = (x, y) with x to the right, y down, and pixel (i, j) covering
[j, j+1) x [i, i+1) (its centre at (j + 0.5, i + 0.5)); c = (x, y) is the glyph centre. Each
pixel centre is mapped back to font space, d is its distance to the nearest stroke segment, and
its intensity is ``clip((thickness - d) * scale + 1/2, 0, 1)``: strokes of radius ``thickness``
font cells with a one-pixel linear edge ramp (anti-aliasing by approximate area coverage).
At scale 1, angle 0, shear 0, thickness 1/2 with cell centres on pixel centres, the image
thresholded at 1/2 is the font bitmap itself.

Randomness. Every sample's parameters are read from its own row of one ``[n, k]`` draw, so
``glyphs(n, seed=s)`` and ``glyphs(m, seed=s)`` agree on their first ``min(n, m)`` samples.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from tokjax.data._packing import check_int

__all__ = ["GLYPH_FONT", "Glyphs", "MovingGlyphs", "glyphs", "moving_glyphs", "render_glyphs"]

_FONT_ROWS = (
    (".###.", "#...#", "#...#", "#...#", "#...#", "#...#", ".###."),  # 0
    ("..#..", ".##..", "..#..", "..#..", "..#..", "..#..", ".###."),  # 1
    (".###.", "#...#", "....#", "...#.", "..#..", ".#...", "#####"),  # 2
    (".###.", "#...#", "....#", "..##.", "....#", "#...#", ".###."),  # 3
    ("...#.", "..##.", ".#.#.", "#..#.", "#####", "...#.", "...#."),  # 4
    ("#####", "#....", "####.", "....#", "....#", "#...#", ".###."),  # 5
    ("..##.", ".#...", "#....", "####.", "#...#", "#...#", ".###."),  # 6
    ("#####", "....#", "...#.", "..#..", ".#...", ".#...", ".#..."),  # 7
    (".###.", "#...#", "#...#", ".###.", "#...#", "#...#", ".###."),  # 8
    (".###.", "#...#", "#...#", ".####", "....#", "...#.", ".##.."),  # 9
)

#: bool [10, 7, 5]: the bitmap of each digit (row 0 at the top).
GLYPH_FONT = np.array([[[ch == "#" for ch in row] for row in rows] for rows in _FONT_ROWS], dtype=bool)
GLYPH_FONT.setflags(write=False)

_ROWS, _COLS = GLYPH_FONT.shape[1:]
_CENTRE = np.array([(_COLS - 1) / 2, (_ROWS - 1) / 2])  # g0 in font (x = column, y = row) coordinates

# Parameter ranges, all relative to the canvas so that every size behaves alike.
_SMALL = (0.42, 0.52)  # glyph height (7 font cells) as a fraction of the canvas side
_LARGE = (0.62, 0.72)
_MAX_ANGLE = math.radians(10.0)
_MAX_SHEAR = 0.15
_THICKNESS = (0.45, 0.70)  # stroke radius in font cells
_MARGIN = 0.03  # the glyph centre keeps this fraction of the side away from the canvas midlines


def _segments() -> tuple[np.ndarray, np.ndarray]:
    """Returns (starts, ends), float64 [10, S, 2] font-space (x, y) stroke segments, padded by repeating one."""
    per_digit = []
    for bitmap in GLYPH_FONT:
        on = {(r, c) for r in range(_ROWS) for c in range(_COLS) if bitmap[r, c]}
        segs = []
        for r, c in sorted(on):
            linked = False
            for dr, dc in ((0, 1), (1, 0), (-1, 1), (1, 1), (0, -1), (-1, 0), (1, -1), (-1, -1)):
                if (r + dr, c + dc) not in on:
                    continue
                linked = True
                if (dr, dc) not in ((0, 1), (1, 0), (-1, 1), (1, 1)):
                    continue  # each pair once
                if dr and dc and ((r + dr, c) in on or (r, c + dc) in on):
                    continue  # a diagonal already joined through a shared neighbour
                segs.append(((c, r), (c + dc, r + dr)))
            if not linked:  # an isolated cell: a dot
                segs.append(((c, r), (c, r)))
        per_digit.append(segs)
    width = max(len(s) for s in per_digit)
    starts = np.array([[s[0] for s in segs] + [segs[0][0]] * (width - len(segs)) for segs in per_digit], float)
    ends = np.array([[s[1] for s in segs] + [segs[0][1]] * (width - len(segs)) for segs in per_digit], float)
    return starts, ends


_SEG_A, _SEG_B = _segments()


def _check_size(size) -> int:
    size = check_int("size", size, 1)
    if size < 8:
        raise ValueError(f"size must be >= 8 pixels (a 5x7 glyph needs room to move), got {size}")
    return size


def _params_array(name: str, value, n: int) -> np.ndarray:
    a = np.asarray(value, dtype=np.float64)
    if a.ndim == 0:
        a = np.full((n,), float(a))
    if a.shape != (n,):
        raise ValueError(f"{name} must be a scalar or have shape [{n}] (one per digit), got shape {a.shape}")
    if not np.isfinite(a).all():
        raise ValueError(f"{name} must be finite")
    return a


def _check_digits(digits, n: int | None = None) -> np.ndarray:
    d = np.asarray(digits)
    if d.dtype.kind not in "iu" and d.size:
        raise ValueError(f"digits must be integers in [0, 9], got dtype {d.dtype}")
    d = d.astype(np.int64)
    if d.ndim != 1 or (n is not None and d.shape != (n,)):
        want = "[n]" if n is None else f"[{n}]"
        raise ValueError(f"digits must have shape {want}, got shape {d.shape}")
    if d.size and (d.min() < 0 or d.max() > 9):
        raise ValueError(f"digits must lie in [0, 9], got values in [{d.min()}, {d.max()}]")
    return d


def render_glyphs(digits, x, y, scale, angle=0.0, shear=0.0, thickness=0.55, *, size: int = 16) -> np.ndarray:
    """Returns float32 [n, size, size] in [0, 1]: each digit drawn at its placement (see the module docstring).

    ``digits`` int [n] in 0-9; ``x``, ``y`` the glyph centre in pixels (x right, y down); ``scale`` pixels
    per font cell (> 0); ``angle`` radians (positive turns +x towards +y, clockwise on screen); ``shear``
    the x-shear of the font before rotating; ``thickness`` the stroke radius in font cells (> 0). The
    placement arguments are scalars or [n] arrays. Nothing is clipped away but what leaves the canvas.
    """
    size = _check_size(size)
    d = _check_digits(digits)
    n = d.shape[0]
    x, y, scale, angle, shear, thickness = (
        _params_array(k, v, n) for k, v in
        (("x", x), ("y", y), ("scale", scale), ("angle", angle), ("shear", shear), ("thickness", thickness)))
    if (scale <= 0).any() or (thickness <= 0).any():
        raise ValueError("scale and thickness must be > 0")
    cos, sin = np.cos(angle), np.sin(angle)
    # M = scale R S; M^-1 = S^-1 R^T / scale, S^-1 = [[1, -shear], [0, 1]].
    inv = np.empty((n, 2, 2))
    inv[:, 0, 0] = cos + shear * sin
    inv[:, 0, 1] = sin - shear * cos
    inv[:, 1, 0] = -sin
    inv[:, 1, 1] = cos
    inv /= scale[:, None, None]
    centres = np.arange(size) + 0.5
    px = np.stack(np.meshgrid(centres, centres, indexing="xy"), axis=-1).reshape(-1, 2)  # [P, (x, y)]
    out = np.empty((n, size * size), np.float32)
    gx0, gy0 = px[:, 0], px[:, 1]
    chunk = max(1, 2**21 // (size * size * _SEG_A.shape[1]))
    for lo in range(0, n, chunk):
        sl = slice(lo, min(n, lo + chunk))
        rx, ry = gx0[None] - x[sl, None], gy0[None] - y[sl, None]  # [C, P] pixel centre - glyph centre
        m = inv[sl]
        gx = (m[:, 0, 0, None] * rx + m[:, 0, 1, None] * ry + _CENTRE[0])[:, :, None]  # font coordinates [C, P, 1]
        gy = (m[:, 1, 0, None] * rx + m[:, 1, 1, None] * ry + _CENTRE[1])[:, :, None]
        a, b = _SEG_A[d[sl]], _SEG_B[d[sl]]  # [C, S, 2]
        ax, ay = a[:, None, :, 0], a[:, None, :, 1]
        vx, vy = b[:, None, :, 0] - ax, b[:, None, :, 1] - ay
        vv = np.maximum(vx * vx + vy * vy, 1e-12)  # a dot has v = 0: t = 0, the distance to the point
        wx, wy = gx - ax, gy - ay  # [C, P, S]
        t = np.clip((wx * vx + wy * vy) / vv, 0.0, 1.0)
        ex, ey = wx - t * vx, wy - t * vy
        dist = np.sqrt((ex * ex + ey * ey).min(-1))  # [C, P]
        out[sl] = np.clip((thickness[sl, None] - dist) * scale[sl, None] + 0.5, 0.0, 1.0)
    return out.reshape(n, size, size)


def _half_extents(scale, angle, shear, thickness) -> tuple[np.ndarray, np.ndarray]:
    """Returns the half width and height in pixels of each glyph's bounding box (strokes included)."""
    hx = (_COLS - 1) / 2 + thickness
    hy = (_ROWS - 1) / 2 + thickness
    corners = np.stack([np.stack([sx * hx, sy * hy], -1) for sx in (-1, 1) for sy in (-1, 1)], 1)  # [n, 4, 2]
    sheared = corners.copy()
    sheared[..., 0] += shear[:, None] * corners[..., 1]
    cos, sin = np.cos(angle)[:, None], np.sin(angle)[:, None]
    px = (cos * sheared[..., 0] - sin * sheared[..., 1]) * scale[:, None]
    py = (sin * sheared[..., 0] + cos * sheared[..., 1]) * scale[:, None]
    return np.abs(px).max(1), np.abs(py).max(1)


def _shape_params(u: np.ndarray, large: np.ndarray, size: int):
    """Returns (scale, angle, shear, thickness) from uniforms u [n, 4] and the size class."""
    lo = np.where(large, _LARGE[0], _SMALL[0])
    hi = np.where(large, _LARGE[1], _SMALL[1])
    scale = (lo + (hi - lo) * u[:, 0]) * size / _ROWS
    angle = (2 * u[:, 1] - 1) * _MAX_ANGLE
    shear = (2 * u[:, 2] - 1) * _MAX_SHEAR
    thickness = _THICKNESS[0] + (_THICKNESS[1] - _THICKNESS[0]) * u[:, 3]
    return scale, angle, shear, thickness


def _check_n(n) -> int:
    return check_int("n", n, 0)


@dataclasses.dataclass(frozen=True, eq=False)
class Glyphs:
    """Digit images with their labels and the placement each was drawn with.

    Attributes:
      images: float32 ``[n, size, size]`` in [0, 1] (ink = 1, background = 0).
      labels: int32 ``[n]``, the digit 0-9.
      left, top: bool ``[n]``, the glyph centre lies in the left / top half of the canvas (at least
        3% of the side away from the midline).
      large: bool ``[n]``, the glyph is 62-72% of the canvas high (else small: 42-52%).
      x, y: float32 ``[n]``, the glyph centre in pixels (x right, y down).
      scale, angle, shear, thickness: float32 ``[n]``, the rest of the placement (see
        :func:`render_glyphs`, which redraws ``images`` from these).
    """

    images: np.ndarray
    labels: np.ndarray
    left: np.ndarray
    top: np.ndarray
    large: np.ndarray
    x: np.ndarray
    y: np.ndarray
    scale: np.ndarray
    angle: np.ndarray
    shear: np.ndarray
    thickness: np.ndarray

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def captions(self) -> list[str]:
        """Returns one caption per image: ``"<digit> left|right top|bottom small|large"``."""
        return [f"{d} {'left' if lf else 'right'} {'top' if tp else 'bottom'} {'large' if lg else 'small'}"
                for d, lf, tp, lg in zip(self.labels.tolist(), self.left.tolist(), self.top.tolist(),
                                         self.large.tolist())]


@dataclasses.dataclass(frozen=True, eq=False)
class MovingGlyphs:
    """Videos of one glyph moving at constant velocity.

    Attributes:
      videos: float32 ``[n, frames, size, size]`` in [0, 1].
      labels: int32 ``[n]``, the digit 0-9.
      large: bool ``[n]``, the size class (as in :class:`Glyphs`).
      x, y: float32 ``[n, frames]``, the glyph centre in each frame; ``x[:, t] = x[:, 0] + t * velocity[:, 0]``.
      velocity: float32 ``[n, 2]``, pixels per frame (dx, dy).
      scale, angle, shear, thickness: float32 ``[n]``, the glyph's fixed shape (see :func:`render_glyphs`).
    """

    videos: np.ndarray
    labels: np.ndarray
    large: np.ndarray
    x: np.ndarray
    y: np.ndarray
    velocity: np.ndarray
    scale: np.ndarray
    angle: np.ndarray
    shear: np.ndarray
    thickness: np.ndarray

    def __len__(self) -> int:
        return int(self.labels.shape[0])


def _draws(seed, n: int, k: int, noise_shape: tuple[int, ...] | None):
    """Returns (uniforms [n, k], noise or None): two independent streams, each one row-major draw (prefix-stable)."""
    s_params, s_noise = np.random.SeedSequence(seed).spawn(2)
    u = np.random.default_rng(s_params).random((n, k))
    noise = None if noise_shape is None else np.random.default_rng(s_noise).standard_normal(noise_shape)
    return u, noise


def _check_noise(noise) -> float:
    try:
        noise = float(noise)
    except (TypeError, ValueError):
        raise ValueError(f"noise must be a number >= 0, got {noise!r}") from None
    if not (math.isfinite(noise) and noise >= 0):
        raise ValueError(f"noise must be a finite number >= 0 (pixel noise std), got {noise!r}")
    return noise


def _add_noise(images: np.ndarray, noise: float, z: np.ndarray | None) -> np.ndarray:
    if z is None:
        return images
    return np.clip(images + noise * z.astype(np.float32), 0.0, 1.0).astype(np.float32)


def glyphs(n: int, size: int = 16, seed: int = 0, *, digits=None, noise: float = 0.0) -> Glyphs:
    """Returns :class:`Glyphs`: ``n`` seeded digit images ``[n, size, size]`` with digit and placement labels.

    Each sample draws its digit (uniform over 0-9 unless ``digits`` [n] fixes them), ``left``,
    ``top`` and ``large`` (fair coins), the glyph height (42-52% of ``size`` when small, 62-72%
    when large), rotation (|angle| <= 10 degrees), shear (|shear| <= 0.15), stroke radius
    (0.45-0.70 font cells), and a centre uniform over the positions on its side of both midlines
    (at least 3% of ``size`` away from them) at which the whole stroked glyph stays on the canvas.
    ``noise`` > 0 adds Gaussian pixel noise of that std (then clips to [0, 1]). Deterministic in
    ``seed``; the first k samples do not depend on ``n``.

    Raises:
      ValueError: ``n`` < 0 or not an int, ``size`` < 8, ``digits`` not ints in 0-9 of shape [n], ``noise`` < 0.
    """
    n, size, noise = _check_n(n), _check_size(size), _check_noise(noise)
    u, z = _draws(seed, n, 10, (n, size, size) if noise > 0 else None)
    labels = np.floor(u[:, 0] * 10).astype(np.int64) if digits is None else _check_digits(digits, n)
    left, top, large = u[:, 1] < 0.5, u[:, 2] < 0.5, u[:, 3] < 0.5
    scale, angle, shear, thickness = _shape_params(u[:, 4:8], large, size)
    hx, hy = _half_extents(scale, angle, shear, thickness)
    mid, gap = size / 2, _MARGIN * size
    pos = []
    for half, first_half, uu in ((hx, left, u[:, 8]), (hy, top, u[:, 9])):
        lo = np.where(first_half, half, mid + gap)
        hi = np.where(first_half, mid - gap, size - half)
        if (hi < lo).any():  # cannot happen for the ranges above; kept as a guard on edits
            raise RuntimeError("a glyph does not fit on its half of the canvas; the placement ranges are wrong")
        pos.append(lo + (hi - lo) * uu)
    x, y = pos
    images = render_glyphs(labels, x, y, scale, angle, shear, thickness, size=size)
    f32 = lambda a: a.astype(np.float32)  # noqa: E731
    return Glyphs(images=_add_noise(images, noise, z), labels=labels.astype(np.int32), left=left, top=top,
                  large=large, x=f32(x), y=f32(y), scale=f32(scale), angle=f32(angle), shear=f32(shear),
                  thickness=f32(thickness))


def moving_glyphs(n: int, frames: int = 4, size: int = 16, seed: int = 0, *, digits=None,
                  noise: float = 0.0) -> MovingGlyphs:
    """Returns :class:`MovingGlyphs`: ``n`` videos ``[n, frames, size, size]`` of a digit moving at constant velocity.

    The glyph's shape is drawn as in :func:`glyphs` (digit, size class, rotation, shear, stroke);
    its start and end centres are uniform over the positions where the whole glyph is on the
    canvas, and frame t shows it at ``start + t * (end - start) / (frames - 1)`` (a single frame
    shows it at ``start``), so every frame keeps it whole. ``noise`` adds independent Gaussian
    pixel noise per frame. Deterministic in ``seed``; the first k videos do not depend on ``n``.

    Raises:
      ValueError: ``n`` < 0, ``frames`` < 1, ``size`` < 8, bad ``digits`` or ``noise`` (as in :func:`glyphs`).
    """
    n, size, noise = _check_n(n), _check_size(size), _check_noise(noise)
    frames = check_int("frames", frames, 1)
    u, z = _draws(seed, n, 10, (n, frames, size, size) if noise > 0 else None)
    labels = np.floor(u[:, 0] * 10).astype(np.int64) if digits is None else _check_digits(digits, n)
    large = u[:, 1] < 0.5
    scale, angle, shear, thickness = _shape_params(u[:, 2:6], large, size)
    hx, hy = _half_extents(scale, angle, shear, thickness)
    x0, x1 = (hx + (size - 2 * hx) * u[:, 6 + i] for i in (0, 1))
    y0, y1 = (hy + (size - 2 * hy) * u[:, 8 + i] for i in (0, 1))
    velocity = np.stack([x1 - x0, y1 - y0], -1) / max(frames - 1, 1)
    t = np.arange(frames)
    x = x0[:, None] + t * velocity[:, :1]
    y = y0[:, None] + t * velocity[:, 1:]
    rep = lambda a: np.repeat(a, frames)  # noqa: E731
    videos = render_glyphs(rep(labels), x.reshape(-1), y.reshape(-1), rep(scale), rep(angle), rep(shear),
                           rep(thickness), size=size).reshape(n, frames, size, size)
    f32 = lambda a: a.astype(np.float32)  # noqa: E731
    return MovingGlyphs(videos=_add_noise(videos, noise, z), labels=labels.astype(np.int32), large=large,
                        x=f32(x), y=f32(y), velocity=f32(velocity), scale=f32(scale), angle=f32(angle),
                        shear=f32(shear), thickness=f32(thickness))
