"""Bin statistics and masks of the cube builder."""

import lightkurve as lk
import numpy as np
import pytest

from lk_scatterlight.builder import binning, masks


def quadratic(n=256):
    y, x = np.mgrid[0:n, 0:n].astype(float)
    return 50 + 0.03 * x - 0.02 * y + 2e-4 * (x - 100) ** 2 + 1e-4 * (y - 80) ** 2


def centres(n, b):
    return b * np.arange(n // b) + (b - 1) / 2


def test_plane_fit_is_unbiased_by_one_sided_masks():
    """A steep gradient with half of every bin masked: the plane fit still returns the
    value at the nominal centre, where a plain mean is off by the gradient x offset."""
    n, b = 128, 16
    y, x = np.mgrid[0:n, 0:n].astype(float)
    image = 10 + 0.5 * x + 0.2 * y
    valid = (x % b) < b / 2  # left half of every bin only
    fit = binning.bin_plane_fit(image, valid, b)
    c = centres(n, b)
    truth = 10 + 0.5 * c[None, :] + 0.2 * c[:, None]
    np.testing.assert_allclose(fit.value, truth, atol=1e-4)
    mean = np.nanmean(np.where(valid, image, np.nan).reshape(n // b, b, n // b, b), axis=(1, 3))
    np.testing.assert_allclose(mean - truth, -2.0)  # a plain mean: 4 px x 0.5 e-/s/px low


def test_curvature_correction_removes_quadratic_bias():
    image = quadratic()
    b = 16
    fit = binning.bin_plane_fit(image, np.ones(image.shape, bool), b)
    c = centres(256, b)
    truth = 50 + 0.03 * c[None] - 0.02 * c[:, None] + 2e-4 * (c[None] - 100) ** 2
    truth = truth + 1e-4 * (c[:, None] - 80) ** 2
    raw_bias = np.abs(fit.value - truth).max()
    corrected = binning.curvature_correction(fit.value, fit.moments, b)
    assert raw_bias > 0.005
    np.testing.assert_allclose(corrected, truth, atol=1e-4 * raw_bias / 0.005)


def test_clipping_rejects_outliers_and_error_is_honest():
    rng = np.random.default_rng(1)
    n, b, sigma = 512, 16, 2.0
    image = 100 + rng.normal(0, sigma, (n, n))
    hits = rng.random((n, n)) < 0.005
    image[hits] += 5000  # cosmic rays / residual stars
    fit = binning.bin_plane_fit(image, np.ones((n, n), bool), b)
    # The fitted intercept scatters by its stated error, and is not pulled by the hits.
    pulls = (fit.value - 100) / fit.error
    assert abs(np.mean(pulls)) < 0.1
    assert 0.85 < np.std(pulls) < 1.15
    np.testing.assert_allclose(np.median(fit.error), sigma / b, rtol=0.1)


def test_empty_bins_are_nan_then_filled():
    image = np.full((64, 64), 7.0)
    valid = np.ones((64, 64), bool)
    valid[:16, :16] = False  # one bin fully masked
    valid[16:32, 16:32] = np.random.default_rng(0).random((16, 16)) < 0.05  # too few pixels
    fit = binning.bin_plane_fit(image, valid, 16)
    assert np.isnan(fit.value[0, 0])
    assert np.isnan(fit.value[1, 1])
    value, error = binning.fill_empty_bins(fit.value, np.where(np.isnan(fit.value), np.nan, 1.0))
    np.testing.assert_allclose(value, 7.0)
    assert error[0, 0] == 2.0
    assert error[2, 2] == 1.0
    with pytest.raises(ValueError, match="every bin is empty"):
        binning.fill_empty_bins(np.full((2, 2), np.nan), np.full((2, 2), np.nan))


def test_bin_plane_fit_checks_shapes():
    with pytest.raises(ValueError, match="divisible by pixel_bin=16"):
        binning.bin_plane_fit(np.zeros((40, 40)), np.ones((40, 40), bool), 16)


def test_default_bitmask_matches_lightkurve():
    assert masks.DEFAULT_BITMASK == lk.utils.TessQualityFlags.DEFAULT_BITMASK
    quality = np.array([0, 2048, 4096, 32, 4, 16, 2048 | 32, 8192])
    np.testing.assert_array_equal(
        masks.good_frames(quality), [True, True, True, False, False, False, False, True]
    )


def test_static_source_mask_finds_stars_and_bleeds():
    rng = np.random.default_rng(3)
    static = 30 + rng.normal(0, 1, (256, 256))
    static[100:103, 50:53] += 500  # a star
    static[150, 200] = 3e5  # saturated core
    static[120:180, 200] += 2e5  # its bleed column
    mask = masks.static_source_mask(static)
    assert mask[101, 51]
    assert mask[99, 49]
    assert mask[120:180, 197:204].all()  # bleed grown sideways
    assert mask.mean() < 0.05


def test_column_mask():
    mask = masks.column_mask((4, 2048), [45, 46, 2092, 3000])
    assert mask[:, [0, 1, 2047]].all()
    assert mask.sum() == 12


def test_error_floor_from_pixel_variance():
    """A frame equal to the static scene has zero residual scatter; the FFI's own
    uncertainties keep its error honest."""
    image = np.zeros((64, 64), dtype=np.float32)
    valid = np.ones((64, 64), bool)
    assert np.all(binning.bin_plane_fit(image, valid, 16).error == 0)
    floored = binning.bin_plane_fit(image, valid, 16, uncertainty=np.full((64, 64), 2.0))
    np.testing.assert_allclose(floored.error, 2.0 / 16, rtol=1e-6)  # sigma / sqrt(n)
    noisy = np.random.default_rng(2).normal(0, 3.0, (64, 64)).astype(np.float32)
    kept = binning.bin_plane_fit(noisy, valid, 16, uncertainty=np.full((64, 64), 1e-3))
    np.testing.assert_allclose(kept.error, binning.bin_plane_fit(noisy, valid, 16).error)
