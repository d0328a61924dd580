"""Tests of the interpolation kernels in lk_scatterlight.interpolate."""

import numpy as np
import pytest
from cube_helpers import centres as grid

from lk_scatterlight import interpolate


def positions(centres, step=16.0, n=997):
    """Positions across the grid, half a bin beyond both outer centres, plus the centres."""
    x = np.linspace(centres[0] - step / 2, centres[-1] + step / 2, n)
    return np.sort(np.concatenate([x, centres]))


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 16])
def test_spatial_weights_rows_sum_to_one(n):
    centres = grid(n, 52.5)
    x = positions(centres)
    w = interpolate.spatial_weights(x, centres)
    assert w.shape == (x.size, n)
    np.testing.assert_allclose(w.sum(axis=1), 1.0, rtol=0, atol=1e-12)


@pytest.mark.parametrize("n", [3, 4, 5, 16, 128])
def test_spatial_weights_exact_for_quadratics(n):
    centres = grid(n, 8.5)
    x = positions(centres)

    def f(v):
        return 3.0 - 0.02 * v + 4e-5 * v**2

    w = interpolate.spatial_weights(x, centres)
    np.testing.assert_allclose(w @ f(centres), f(x), rtol=1e-11)


def test_spatial_weights_single_bin_is_constant():
    w = interpolate.spatial_weights(np.array([1.0, 500.0, 2048.0]), np.array([1024.5]))
    np.testing.assert_array_equal(w, np.ones((3, 1)))


def test_spatial_weights_two_bins_is_linear():
    centres = np.array([512.5, 1536.5])
    x = np.array([1.0, 512.5, 700.0, 1024.5, 1536.5, 2048.0])
    w = interpolate.spatial_weights(x, centres)
    p = (x - centres[0]) / (centres[1] - centres[0])
    np.testing.assert_allclose(w, np.column_stack([1 - p, p]), rtol=0, atol=1e-15)
    np.testing.assert_allclose(w @ (2 + 0.5 * centres), 2 + 0.5 * x, rtol=1e-14)


@pytest.mark.parametrize("n", [3, 4, 8])
def test_spatial_weights_reproduce_values_at_centres(n):
    centres = grid(n, 52.5)
    np.testing.assert_allclose(
        interpolate.spatial_weights(centres, centres), np.eye(n), rtol=0, atol=1e-15
    )


@pytest.mark.parametrize("n", [3, 4, 8])
def test_spatial_weights_continuous_at_centres(n):
    """C0: approaching every centre (outer ones included) from either side gives its value."""
    centres = grid(n, 52.5)
    values = np.random.default_rng(3).normal(size=n)
    eps = 1e-7
    for x0, f0 in zip(centres, values, strict=True):
        below, above = interpolate.spatial_weights(np.array([x0 - eps, x0 + eps]), centres)
        assert abs(below @ values - f0) < 1e-6
        assert abs(above @ values - f0) < 1e-6


def test_spatial_weights_use_four_neighbours_inside():
    centres = grid(10, 52.5)
    w = interpolate.spatial_weights(np.array([centres[4] + 5.0]), centres)
    assert set(np.flatnonzero(w[0])) == {3, 4, 5, 6}


def test_time_segments():
    start = np.array([0.0, 1.0, 2.0, 5.0, 6.0, 9.5])
    stop = start + 1.0
    np.testing.assert_array_equal(
        interpolate.time_segments(start, stop, max_gap=1.5), [0, 0, 0, 1, 1, 2]
    )
    np.testing.assert_array_equal(interpolate.time_segments(start, stop, max_gap=10), [0] * 6)


def test_time_weights_linear_hold_and_invalid():
    centre = np.array([0.0, 1.0, 2.0, 10.0, 11.0])
    start, stop = centre - 0.5, centre + 0.5
    segment = interpolate.time_segments(start, stop, max_gap=1.5)
    t = np.array([0.25, 1.0, 2.0, 2.4, 2.6, 9.4, 9.7, 11.0, 11.5, 11.6, -0.5, -0.6])
    left, right, w, valid = interpolate.time_weights(t, centre, start, stop, segment)
    np.testing.assert_array_equal(
        valid, [True, True, True, True, False, False, True, True, True, False, True, False]
    )
    f = np.array([1.0, 3.0, 5.0, 7.0, 9.0])  # a value per plane
    value = (1 - w) * f[left] + w * f[right]
    np.testing.assert_allclose(
        value[valid], [1.5, 3.0, 5.0, 5.0, 7.0, 9.0, 9.0, 1.0], rtol=0, atol=1e-14
    )
    assert np.all((w >= 0) & (w <= 1))


def test_apply_weights_matches_einsum():
    rng = np.random.default_rng(0)
    block = rng.normal(size=(5, 6, 7))
    wr, wc = rng.normal(size=(3, 6)), rng.normal(size=(4, 7))
    np.testing.assert_allclose(
        interpolate.apply_weights(block, wr, wc),
        np.einsum("tij,ri,cj->trc", block, wr, wc),
        rtol=1e-12,
    )


@pytest.mark.parametrize("squared", [False, True])
def test_blend_matches_formula(squared):
    rng = np.random.default_rng(1)
    planes = rng.normal(size=(7, 3, 4))
    left = np.array([0, 2, 5, 6, 6, 3])
    right = np.array([1, 3, 6, 6, 6, 3])  # equal indices: a held plane
    w = np.array([0.0, 0.25, 0.9, 0.0, 0.0, 1.0])
    wl, wr = ((1 - w) ** 2, w**2) if squared else (1 - w, w)
    expected = wl[:, None, None] * planes[left] + wr[:, None, None] * planes[right]
    out = interpolate.blend(planes, left, right, w, squared=squared)
    assert out.shape == (6, 3, 4)
    np.testing.assert_allclose(out, expected, rtol=1e-14, atol=1e-15)


def test_blend_empty_and_one_dimensional():
    planes = np.arange(5.0)
    assert interpolate.blend(planes, [], [], []).shape == (0,)
    np.testing.assert_allclose(interpolate.blend(planes, [1, 3], [2, 3], [0.5, 0.0]), [1.5, 3.0])


def test_fill_invalid():
    """Values of the valid times land in order; invalid times are NaN; dtype is kept."""
    values = np.arange(6, dtype=np.float32).reshape(3, 2)
    out = interpolate.fill_invalid(values, np.array([False, True, True, False, True]))
    assert out.dtype == np.float32
    assert out.shape == (5, 2)
    np.testing.assert_array_equal(out[[1, 2, 4]], values)
    assert np.isnan(out[[0, 3]]).all()
