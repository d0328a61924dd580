"""The fine layer's cheaper steps give what the whole-grid computations they replace gave:
the probe's depth classes (`depth_class_at`), the wide isotropic fill on boxes around
the deep holes, the structure direction from the padded gradient images, and the
misfit's calibration rows from cached weights."""

import numpy as np
import pytest
from scipy import linalg, ndimage

from lk_scatterlight import interpolate
from lk_scatterlight.builder.fine.context import depth_class, depth_class_at
from lk_scatterlight.builder.fine.fill import (
    _fill_isotropic,
    _least_squares,
    _pieces_touching,
    _profile_pieces,
    _structure_direction,
)
from lk_scatterlight.builder.fine.misfit import (
    _MISFIT_ROWS,
    _calibration_plane,
    _calibration_weights,
)


def holes_mask(seed: int, n: int = 96) -> np.ndarray:
    """Measured bins (True) of an ``n x n`` grid: scattered holes, a bleed column and two
    deep discs, one touching the grid's edge."""
    rng = np.random.default_rng(seed)
    ok = rng.random((n, n)) > 0.15
    ok[:, n // 3 : n // 3 + 3] = False
    rows, cols = np.mgrid[:n, :n]
    ok &= np.hypot(rows - n / 2, cols - 2 * n / 3) > 14
    ok &= np.hypot(rows - 3, cols - 10) > 9
    return ok


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_depth_class_at_matches_the_distance_transform(seed):
    ok = holes_mask(seed)
    ok[40:80, 5:60] = False  # deeper than the last class's bound (16 bins) in its middle
    rows, cols = np.nonzero(~ok)
    expected = depth_class(ndimage.distance_transform_edt(~ok)[rows, cols])
    assert expected.max() == 6  # the test reaches the last class
    np.testing.assert_array_equal(depth_class_at(ok, rows, cols), expected)


def whole_grid_fill(r, ok):
    """`_fill_isotropic` with the wide widths' filters on the whole grid (as it was)."""
    out = r.copy()
    rows, cols = np.nonzero(~ok)
    n = r.shape[0]
    offsets = np.arange(-3, 4)
    dr, dc = np.meshgrid(offsets, offsets, indexing="ij")
    rr = np.clip(rows[:, None] + dr.ravel(), 0, n - 1)
    cc = np.clip(cols[:, None] + dc.ravel(), 0, n - 1)
    w = np.exp(-(dr**2 + dc**2) / 2.0).ravel() * ok[rr, cc]
    total = w.sum(axis=1)
    near = total > 1e-3
    out[rows[near], cols[near]] = (w * r[rr, cc]).sum(axis=1)[near] / total[near]
    missing = ~ok
    missing[rows[near], cols[near]] = False
    valid = (~missing).astype(np.float32)
    for width in (4, 8, 32):
        num = ndimage.gaussian_filter(out * valid, width, mode="nearest")
        den = ndimage.gaussian_filter(valid, width, mode="nearest")
        fill = missing & (den > 1e-3)
        out[fill] = num[fill] / den[fill]
        valid[fill] = 1
        missing &= ~fill
    out[missing] = 0
    return out


@pytest.mark.parametrize("n", [96, 400])
def test_wide_fill_on_boxes_matches_the_whole_grid(n):
    """96 bins: the boxes would cover the grid (whole-grid path); 400: boxes."""
    ok = holes_mask(3, n)
    rng = np.random.default_rng(4)
    rows, cols = np.mgrid[:n, :n]
    r = (np.sin(rows / 7.0) * np.cos(cols / 11.0) + rng.normal(0, 0.1, (n, n))).astype(np.float32)
    r[~ok] = 0
    expected = whole_grid_fill(r, ok)
    assert np.count_nonzero(expected[~ok]) > 0.9 * np.count_nonzero(~ok)
    np.testing.assert_array_equal(_fill_isotropic(r, ok), expected)


def test_structure_direction_matches_per_hole_gradients():
    """Directions from the padded gradient images equal those from each window's own
    gradients (clipped at the grid's edges), bin for bin."""
    n, s = 80, 6
    ok = holes_mask(5, n)
    rows, cols = np.mgrid[:n, :n]
    image = np.exp(-0.5 * ((rows - 0.6 * cols - 10) / 3.0) ** 2).astype(np.float32)
    image += np.random.default_rng(6).normal(0, 0.02, (n, n)).astype(np.float32)
    hr, hc = np.nonzero(~ok)
    got = _structure_direction(image, ok, hr, hc)

    offsets = np.arange(-s, s + 1)
    dr, dc = np.meshgrid(offsets, offsets, indexing="ij")
    weight = np.exp(-(dr**2 + dc**2) / (2 * (s / 2) ** 2)).ravel()
    g_row, g_col = (g.astype(float) for g in np.gradient(image))  # float32 differences
    measured = ok.copy()
    measured[1:-1] &= ok[:-2] & ok[2:]
    measured[:, 1:-1] &= ok[:, :-2] & ok[:, 2:]
    rr = np.clip(hr[:, None] + dr.ravel(), 0, n - 1)
    cc = np.clip(hc[:, None] + dc.ravel(), 0, n - 1)
    gr, gc, w = g_row[rr, cc], g_col[rr, cc], weight * measured[rr, cc]
    a, b, c = (w * gr * gr).sum(1), (w * gr * gc).sum(1), (w * gc * gc).sum(1)
    theta = 0.5 * np.arctan2(2 * b, a - c)
    coherence = np.sqrt((a - c) ** 2 + 4 * b**2) / np.maximum(a + c, 1e-30)
    expected = np.column_stack([-np.sin(theta), np.cos(theta)])
    expected[coherence < 0.5] = np.nan
    # Near the ridge the holes get a direction, in the flat noise around it not: both kinds.
    assert 0.2 < np.isfinite(expected[:, 0]).mean() < 0.8
    np.testing.assert_array_equal(got, expected)


def test_pieces_touching_matches_each_box():
    ok = holes_mask(7)
    _, pieces = _profile_pieces(~ok)
    mask = np.zeros_like(ok)
    mask[::9, ::13] = True  # a sparse grid of marks: some boxes hold one, some none
    expected = [mask[r0:r1, c0:c1].any() for _, r0, r1, c0, c1 in pieces.tolist()]
    assert 0 < sum(expected) < len(expected)
    np.testing.assert_array_equal(_pieces_touching(mask, pieces), expected)
    assert _pieces_touching(mask, pieces[:0]).shape == (0,)


def test_least_squares_is_scipy_cholesky_or_lstsq():
    """The direct LAPACK calls give cho_factor / cho_solve's numbers, and lstsq's on
    singular systems."""
    rng = np.random.default_rng(8)
    for k in range(40):
        lhs = rng.normal(size=(int(rng.integers(20, 200)), int(rng.integers(3, 25))))
        rhs = rng.normal(size=lhs.shape[0])
        if k % 4 == 0:
            lhs[:, 1] = lhs[:, 0]  # singular: the SVD path
        normal = lhs.T @ lhs
        try:
            factor = linalg.cho_factor(normal, check_finite=False)
            diagonal = np.diag(factor[0])
            singular = diagonal.min() <= 1e-6 * diagonal.max()
        except linalg.LinAlgError:
            singular = True
        if singular:
            expected = np.linalg.lstsq(lhs, rhs, rcond=None)[0]
        else:
            expected = linalg.cho_solve(factor, lhs.T @ rhs, check_finite=False)
        np.testing.assert_array_equal(_least_squares(lhs, rhs), expected)


def test_calibration_plane_is_the_keys_interpolation_at_its_rows():
    """The misfit's calibration rows (every `_MISFIT_ROWS`-th) from cached, trimmed weights
    are the Keys interpolation of the whole weight matrices; the cache is read-only."""
    spacing, n = 16, 2048
    grid = np.random.default_rng(5).normal(100, 10, (n // spacing, n // spacing))
    centres = spacing * np.arange(n // spacing) + (spacing - 1) / 2
    rows = np.arange(_MISFIT_ROWS // 2, n, _MISFIT_ROWS)
    expected = (
        interpolate.spatial_weights(rows, centres)
        @ grid
        @ interpolate.spatial_weights(np.arange(n), centres).T
    )
    np.testing.assert_allclose(_calibration_plane(grid, spacing), expected, rtol=1e-12)
    (row_weights, _), _ = _calibration_weights(n, spacing)
    assert not row_weights.flags.writeable
