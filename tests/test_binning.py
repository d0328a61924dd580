"""Bin statistics and masks of the cube builder."""

import lightkurve as lk
import numpy as np
import pytest
from cube_helpers import centres

from lk_scatterlight.builder import binning, masks


def quadratic(n=256):
    y, x = np.mgrid[0:n, 0:n].astype(float)
    return 50 + 0.03 * x - 0.02 * y + 2e-4 * (x - 100) ** 2 + 1e-4 * (y - 80) ** 2


def test_plane_fit_is_unbiased_by_one_sided_masks():
    """A steep gradient with half of every bin masked: the plane fit still returns the
    value at the nominal centre, where a plain mean is off by the gradient x offset."""
    n, b = 128, 16
    y, x = np.mgrid[0:n, 0:n].astype(float)
    image = 10 + 0.5 * x + 0.2 * y
    valid = (x % b) < b / 2  # left half of every bin only
    fit = binning.bin_plane_fit(image, valid, b)
    c = centres(n // b, (b - 1) / 2, b)  # 0-based bin centres
    truth = 10 + 0.5 * c[None, :] + 0.2 * c[:, None]
    np.testing.assert_allclose(fit.value, truth, atol=1e-4)
    mean = np.nanmean(np.where(valid, image, np.nan).reshape(n // b, b, n // b, b), axis=(1, 3))
    np.testing.assert_allclose(mean - truth, -2.0)  # a plain mean: 4 px x 0.5 e-/s/px low


def test_curvature_correction_removes_quadratic_bias():
    image = quadratic()
    b = 16
    fit = binning.bin_plane_fit(image, np.ones(image.shape, bool), b)
    c = centres(256 // b, (b - 1) / 2, b)
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
    assert error[0, 0] == pytest.approx(np.sqrt(2) / 2)  # the mean of two measured bins
    assert error[1, 1] == pytest.approx(np.sqrt(7) / 7)  # seven measured, one empty
    assert error[2, 2] == 1.0
    with pytest.raises(ValueError, match="every bin is empty"):
        binning.fill_empty_bins(np.full((2, 2), np.nan), np.full((2, 2), np.nan))


def test_filled_bin_errors_match_their_scatter():
    """A hole three bins wide: the first ring is the mean of independent measured bins,
    the centre the mean of filled bins that share their sources."""
    rng = np.random.default_rng(4)
    value = rng.normal(0, 1, (2000, 7, 7))
    value[:, 2:5, 2:5] = np.nan
    filled = [binning.fill_empty_bins(v, np.ones((7, 7))) for v in value]
    scatter = np.std([f[0] for f in filled], axis=0)
    error = filled[0][1]
    np.testing.assert_allclose(scatter[2:5, 2:5], error[2:5, 2:5], rtol=0.1)
    ring = np.ones((3, 3), bool)
    ring[1, 1] = False
    independent = np.sqrt(np.sum(error[2:5, 2:5][ring] ** 2)) / 8
    assert error[3, 3] > 1.3 * independent  # its neighbours share their sources


def test_curvature_error_matches_scatter():
    """The correction's second differences mix neighbouring bins' noise: interior bins
    get ~17 % more, corner bins (one-sided stencils) less."""
    rng = np.random.default_rng(5)
    moments = np.full((2, 6, 6), (16**2 - 1) / 12)  # full 16-px bins
    moments[1, :, 2] = 10.0  # a column of bins with fewer pixels off centre
    error = np.full((6, 6), 2.0)
    error[3, 3] = 4.0
    noise = rng.normal(0, 1, (4000, 6, 6)) * error
    corrected = [binning.curvature_correction(v, moments, 16) for v in noise]
    scatter = np.std(corrected, axis=0)
    quoted = binning.curvature_error(error, moments, 16)
    np.testing.assert_allclose(scatter, quoted, rtol=0.05)
    assert quoted[2, 1] / error[2, 1] > 1.15
    assert quoted[0, 0] / error[0, 0] < 1.0  # a corner: one-sided stencils on both axes


def realisations(n_real, static_frames=0, masked=False, seed=7):
    """Quoted bin errors and values of ``n_real`` noisy frames of one plane.

    Pixel noise 2 e-/s, 10 % of the pixels at 6 e-/s (faint stars left in the bins);
    ``masked``: random star masks (35 % of the pixels; one column of bins keeps 6 of its
    16 columns, on one side);
    ``static_frames``: subtract a static scene made as the builder does, the median of
    that many noisy frames (fixed over the realisations, as over a sector).
    """
    rng = np.random.default_rng(seed)
    n, b = 64, 16
    y, x = np.mgrid[0:n, 0:n].astype(float)
    plane = 20 + 0.3 * x - 0.2 * y
    sigma = np.where(rng.random((n, n)) < 0.1, 6.0, 2.0).astype(np.float32)
    valid = np.ones((n, n), bool)
    if masked:
        valid = rng.random((n, n)) > 0.35
        valid[:, 16:26] = False
    static = np.zeros((n, n), np.float32)
    residual = None
    if static_frames:
        stack = 5 + sigma * rng.normal(0, 1, (static_frames, n, n))
        static = np.median(stack, axis=0).astype(np.float32)
        residual = binning.static_residual(static, valid, b)
    values, errors = [], []
    for _ in range(n_real):
        frame = 5 + plane + sigma * rng.normal(0, 1, (n, n))
        fit = binning.bin_plane_fit(
            (frame - static).astype(np.float32), valid, b, uncertainty=sigma, static=residual
        )
        values.append(fit.value)
        errors.append(fit.error)
    values, errors = np.array(values), np.array(errors)
    return np.sqrt(np.mean(np.var(values, axis=0)) / np.mean(errors**2))


@pytest.mark.parametrize("masked", [False, True])
def test_bin_error_matches_scatter_over_realisations(masked):
    """The quoted error of a bin's value is the scatter of that value over noise
    realisations, with uneven pixel noise and with masked stars."""
    assert 0.9 < realisations(400, masked=masked) < 1.1


@pytest.mark.parametrize("masked", [False, True])
def test_bin_error_leaves_out_the_static_noise(masked):
    """The static scene's noise is in every frame's residuals but constant in time: with
    its residual image the error is the frame-to-frame scatter; without it, 1.1-1.4x
    too large (a median of five frames)."""
    assert 0.9 < realisations(400, static_frames=5, masked=masked) < 1.1
    rng = np.random.default_rng(8)
    n = 64
    sigma = np.full((n, n), 2.0, np.float32)
    static = np.median(rng.normal(0, 2, (5, n, n)), axis=0).astype(np.float32)
    values, plain, corrected = [], [], []
    residual = binning.static_residual(static, np.ones((n, n), bool), 16)
    for _ in range(300):
        image = (rng.normal(0, 2, (n, n)) - static).astype(np.float32)
        fit = binning.bin_plane_fit(image, np.ones((n, n), bool), 16, uncertainty=sigma)
        values.append(fit.value)
        plain.append(fit.error)
        corrected.append(
            binning.bin_plane_fit(
                image, np.ones((n, n), bool), 16, uncertainty=sigma, static=residual
            ).error
        )
    scatter = np.sqrt(np.mean(np.var(values, axis=0)))
    assert scatter / np.sqrt(np.mean(np.square(plain))) < 0.9
    assert 0.9 < scatter / np.sqrt(np.mean(np.square(corrected))) < 1.1


def test_static_residual():
    """The static scene less its plane per bin: zero on masked and NaN pixels, orthogonal
    to the plane on the rest."""
    rng = np.random.default_rng(9)
    static = (30 + 0.1 * np.arange(64)[None, :] + rng.normal(0, 1, (64, 64))).astype(np.float32)
    static[5, 5] = np.nan
    valid = rng.random((64, 64)) > 0.3
    residual = binning.static_residual(static, valid, 16)
    assert residual.dtype == np.float32
    assert np.all(residual[~valid] == 0)
    assert residual[5, 5] == 0
    d = np.arange(16) - 7.5
    blocks = residual.reshape(4, 16, 4, 16)
    for power in (np.ones((16, 16)), d[None, :] + 0 * d[:, None], d[:, None] + 0 * d[None, :]):
        sums = (blocks * power[None, :, None, :]).sum(axis=(1, 3))
        np.testing.assert_allclose(sums, 0, atol=1e-2)  # float32 rounding of a 30 e-/s plane
    assert 0.8 < residual[valid].std() < 1.2
    with pytest.raises(ValueError, match="static_residual"):
        binning.bin_plane_fit(static, valid, 16, static=residual[:32])


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


def reference_plane_fit(image, valid, b, clip=4.0, min_fraction=0.2, uncertainty=None):
    """The plane fit written plainly: per-bin normal equations in float64, two passes."""
    n = image.shape[0]
    nb = n // b
    finite = np.isfinite(image)
    weight = valid.astype(float) * finite
    v = np.where(finite, image, 0).astype(float).reshape(nb, b, nb, b)
    w = weight.reshape(nb, b, nb, b)
    d = np.arange(b) - (b - 1) / 2
    dy, dx = d[None, :, None, None], d[None, None, None, :]

    def fit(w):
        def s(x):
            return (x * w).sum(axis=(1, 3))

        n_, sx, sy, sxx, syy, sxy = s(1), s(dx), s(dy), s(dx * dx), s(dy * dy), s(dx * dy)
        sv, svx, svy = s(v), s(v * dx), s(v * dy)
        safe = np.maximum(n_, 1)
        mx, my, mv = sx / safe, sy / safe, sv / safe
        cxx, cyy, cxy = sxx / safe - mx**2, syy / safe - my**2, sxy / safe - mx * my
        det = cxx * cyy - cxy**2
        plane = (n_ >= 3) & (cxx >= 0.5) & (cyy >= 0.5) & (det >= 1e-3 * cxx * cyy)
        det = np.where(plane, det, 1)
        cxv, cyv = svx / safe - mx * mv, svy / safe - my * mv
        gx = np.where(plane, (cyy * cxv - cxy * cyv) / det, 0)
        gy = np.where(plane, (cxx * cyv - cxy * cxv) / det, 0)
        a = mv - gx * mx - gy * my
        quad = np.where(plane, (cyy * mx**2 - 2 * cxy * mx * my + cxx * my**2) / det, 0)
        return a, gx, gy, (1 + quad) / safe, n_, np.stack([syy, sxx]) / safe

    a, gx, gy, _, count, _ = fit(w)
    model = a[:, None, :, None] + gx[:, None, :, None] * dx + gy[:, None, :, None] * dy
    residual = v - model
    sigma = np.sqrt((residual**2 * w).sum(axis=(1, 3)) / np.maximum(count - 3, 1))
    threshold = clip * sigma + 1e-5 * (np.abs(a) + 1)
    w = w * (np.abs(residual) <= threshold[:, None, :, None])
    a, gx, gy, inverse00, count, moments = fit(w)
    model = a[:, None, :, None] + gx[:, None, :, None] * dx + gy[:, None, :, None] * dy
    sigma2 = ((v - model) ** 2 * w).sum(axis=(1, 3)) / np.maximum(count - 3, 1)
    if uncertainty is not None:
        var = np.nan_to_num(uncertainty.astype(float) ** 2).reshape(nb, b, nb, b) * w
        sigma2 = np.maximum(
            sigma2, var[:, ::4].sum(axis=(1, 3)) / np.maximum(w[:, ::4].sum(axis=(1, 3)), 1)
        )
    enough = count >= max(10, min_fraction * b * b)
    return (
        np.where(enough, a, np.nan),
        np.where(enough, np.sqrt(sigma2 * inverse00), np.nan),
        count,
        moments,
    )


def realistic_frame(n=256, seed=5):
    """A smooth curved field with noise, cosmic rays, masked stars, NaN pixels."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:n, 0:n]
    image = 300 + 0.8 * x - 0.5 * y + 4e-3 * (x - 90.0) ** 2 + rng.normal(0, 3, (n, n))
    image[rng.random((n, n)) < 0.003] += rng.uniform(50, 5000)  # cosmic rays, star wings
    valid = rng.random((n, n)) > 0.35  # stars and straps
    valid[:, 40:42] = False
    valid[:16, :16] = False  # an empty bin
    image[rng.random((n, n)) < 1e-3] = np.nan
    sigma = np.full((n, n), 3.0)
    sigma[rng.random((n, n)) < 1e-3] = np.nan
    return image.astype(np.float32), valid, sigma.astype(np.float32)


@pytest.mark.parametrize("strip_pixels", [16 * 256 * 3, 1 << 19])
@pytest.mark.parametrize("with_sums", [True, False])
def test_fast_plane_fit_equals_reference(monkeypatch, strip_pixels, with_sums):
    """Cached mask sums, clipped-pixel updates and strips change nothing but rounding."""
    monkeypatch.setattr(binning, "_STRIP_PIXELS", strip_pixels)  # 3 bin rows: uneven strips
    image, valid, sigma = realistic_frame()
    weights = valid.astype(np.float32)
    sums = binning.mask_sums(weights, 16) if with_sums else None
    fit = binning.bin_plane_fit(image, weights, 16, uncertainty=sigma, sums=sums)
    value, error, count, moments = reference_plane_fit(image, valid, 16, uncertainty=sigma)
    assert np.isnan(fit.value[0, 0])
    assert np.isnan(value[0, 0])
    np.testing.assert_array_equal(fit.npix, count)
    np.testing.assert_allclose(fit.value, value, rtol=1e-6, atol=1e-5)
    np.testing.assert_allclose(fit.error, error, rtol=1e-5)
    np.testing.assert_allclose(fit.moments, moments, rtol=1e-12)
    # Clipping mattered: without it the values would be off.
    plain = reference_plane_fit(image, valid, 16, clip=1e9)[0]
    assert np.nanmax(np.abs(plain - value)) > 0.1


def test_mask_sums_must_fit():
    sums = binning.mask_sums(np.ones((64, 64), np.float32), 16)
    assert sums.sums.shape == (4, 4, 3, 3)
    assert sums.binary
    np.testing.assert_array_equal(sums.sums[..., 0, 0], 256)
    with pytest.raises(ValueError, match="do not fit"):
        binning.bin_plane_fit(np.zeros((64, 64)), np.ones((64, 64), bool), 8, sums=sums)


def test_noise_part_of_bin_errors():
    """Issue 19: a bin's error splits into the uncertainty image's share and the structure
    inside the bin. Left half: white noise only; right half: the same noise on a narrow
    ridge (Gaussian, 1.5 px wide, across every bin)."""
    n, b, sigma = 128, 16, 0.5
    rng = np.random.default_rng(3)
    y, x = np.mgrid[0:n, 0:n].astype(float)
    ridge = 20 * np.exp(-0.5 * ((y % b - 7.5) / 1.5) ** 2) * (x >= n / 2)
    image = ridge + rng.normal(0, sigma, (n, n))
    fit = binning.bin_plane_fit(image, np.ones((n, n), bool), b, uncertainty=np.full((n, n), sigma))
    quiet, ridged = (slice(None), slice(0, n // b // 2)), (slice(None), slice(n // b // 2, None))
    expected = sigma / np.sqrt(b * b)  # a plane's intercept at the centre: sigma / sqrt(npix)
    np.testing.assert_allclose(fit.noise, expected, rtol=0.02)  # the structure is not noise
    np.testing.assert_allclose(fit.error[quiet], expected, rtol=0.25)  # noise only: the same
    assert np.all(fit.error[ridged] > 5 * fit.noise[ridged])  # mostly structure
    assert binning.bin_plane_fit(image, np.ones((n, n), bool), b).noise is None
