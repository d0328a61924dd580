"""The smoothing along the structure computed where it is needed only (#19): the structure
tensor inside the tile, and the fill probe at its probe bins, give what smoothing every
bin of the window gave."""

import types

import numpy as np
import pytest
from scipy import ndimage

from lk_scatterlight.builder.fine.along import smooth_window
from lk_scatterlight.builder.fine.context import SparseRows
from lk_scatterlight.builder.fine.residual import (
    _along_scale,
    _along_weights,
    _smooth_along_structure,
    _smoothed_probe,
    _tile_window,
    _to_centres,
)

TILE, N = 16, 96  # 2-px bins: 32-px tiles, 6 x 6 tiles
SCALE = _along_scale(2)
WEIGHTS = _along_weights(SCALE)


def field(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A noisy diagonal ridge (6 bins FWHM) as the residual, on a sloped model."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[:N, :N].astype(float)
    ridge = np.exp(-0.5 * ((0.6 * rows + 0.8 * cols - 60) / 2.55) ** 2)
    residual = (ridge + rng.normal(0, 0.05, (N, N))).astype(np.float32)
    model = (0.3 * np.sin(cols / 20) + 0.004 * rows).astype(np.float32)
    return residual, model


def _inside(total: np.ndarray, row: float, col: float) -> bool:
    return 0 <= row <= total.shape[0] - 1 and 0 <= col <= total.shape[1] - 1


def _sample(total: np.ndarray, row: int, col: int, theta: float, s: int) -> tuple[float, float]:
    """Where step ``s`` along the structure from a bin is read: the point itself if inside
    the window; else the nearest bin inside if that moves it at most one bin across the
    structure; else where the line leaves the window (bisection)."""
    d = (-np.sin(theta), np.cos(theta))
    point = (row + s * d[0], col + s * d[1])
    if _inside(total, *point):
        return point
    near = (min(max(point[0], 0), total.shape[0] - 1), min(max(point[1], 0), total.shape[1] - 1))
    across = abs((near[0] - point[0]) * np.cos(theta) + (near[1] - point[1]) * np.sin(theta))
    if across <= 1:
        return near
    lo, hi = 0.0, float(s)
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if _inside(total, row + mid * d[0], col + mid * d[1]) else (lo, mid)
    return row + lo * d[0], col + lo * d[1]


def reference(total: np.ndarray, inner: tuple[slice, slice]) -> np.ndarray:
    """The smoothing written out over the whole window: Gaussian-filtered structure tensor
    everywhere, cubic-spline samples along its direction at the tile's bins, those
    beyond the window read where `_sample` says."""
    g_row, g_col = np.gradient(total)
    a, b, c = (
        ndimage.gaussian_filter(g, SCALE, mode="nearest")[inner]
        for g in (g_row * g_row, g_row * g_col, g_col * g_col)
    )
    theta = 0.5 * np.arctan2(2 * b, a - c)
    rows, cols = np.mgrid[inner]
    reach = WEIGHTS.size // 2
    at = np.empty((2, WEIGHTS.size) + rows.shape)
    for idx in np.ndindex(rows.shape):
        for k, s in enumerate(range(-reach, reach + 1)):
            at[(slice(None), k) + idx] = _sample(total, rows[idx], cols[idx], theta[idx], s)
    samples = ndimage.map_coordinates(total, at, order=3, mode="nearest")
    return np.tensordot(WEIGHTS, samples, axes=1)


@pytest.mark.parametrize("tile_index", [0, 7, 14, 35])  # corner, inner, ridge, corner
def test_smooth_window_matches_the_whole_window_filter(tile_index):
    residual, model = field()
    _, window, inner = _tile_window(tile_index, N, TILE, WEIGHTS.size)
    total = residual[window] + model[window].astype(float)
    expected = reference(total, inner)
    np.testing.assert_allclose(smooth_window(total, inner, WEIGHTS, SCALE), expected, atol=1e-12)
    picks = (np.array([0, 3, 15, 8]), np.array([0, 9, 15, 2]))
    at_bins = smooth_window(total, inner, WEIGHTS, SCALE, at=picks)
    np.testing.assert_allclose(at_bins, expected[picks], atol=1e-12)


def sparse_rows() -> SparseRows:
    """Fine-bin rows of a sparse read: each bin's read rows off its centre by up to 0.5 px."""
    offset = np.tile(np.float32([-0.5, 0.0, 0.5]), N // 3 + 1)[:N]
    return SparseRows(to_fine=np.zeros((N, 1), np.float32), offset=offset, spread=offset**2)


@pytest.mark.parametrize("sparse", [None, sparse_rows()], ids=["every row", "sparse read"])
def test_probe_smooths_its_bins_as_the_whole_tiles_would(sparse):
    """The probe's smoothed difference at its bins equals smoothing the whole tiles of the
    trial residual (the fills put in, the curvature step redone as `fine_residual` does it,
    for a sparse read too) and reading them there."""
    residual, model = field(seed=3)
    rng = np.random.default_rng(4)
    curvature = np.full((N, N), 0.125, dtype=np.float32)
    context = types.SimpleNamespace(tile=TILE, ntiles=N // TILE, pixel_bin=2, sparse=sparse)
    r = residual - _to_centres(residual, curvature, context)
    kept = np.array([0, 8, 14, 21], dtype=np.int32)
    _smooth_along_structure(r, model, kept, TILE, SCALE)
    nt = N // TILE
    tiles = rng.choice(kept, 20)
    rows = (tiles // nt) * TILE + rng.integers(0, TILE, 20)
    cols = (tiles % nt) * TILE + rng.integers(0, TILE, 20)
    difference = rng.normal(0, 0.2, 20).astype(np.float32)
    probe = (rows, cols, difference, np.zeros(20, bool))
    (_, _, smoothed, _), own = _smoothed_probe(probe, residual, r, model, curvature, context, SCALE)
    trial = residual.copy()
    trial[rows, cols] += difference
    trial -= _to_centres(trial, curvature, context)
    _smooth_along_structure(trial, model, np.unique(tiles), TILE, SCALE)
    np.testing.assert_allclose(smoothed, trial[rows, cols] - r[rows, cols], atol=1e-6)
    assert np.abs(smoothed).max() > 1e-3  # the fills do show through the smoothing
    assert own == pytest.approx(WEIGHTS[WEIGHTS.size // 2] ** 2)
