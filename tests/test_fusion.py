"""Fusion of the scattered-light model with a TPF's own faint pixels."""

import warnings

import numpy as np
import pytest
from scipy import ndimage

from lk_scatterlight import ScatterLightWarning, simulate
from lk_scatterlight.fusion import background_pixels, fuse
from lk_scatterlight.fusion.local import _clipped_level, _clipped_sums
from lk_scatterlight.fusion.rows import (
    _add_per_row,
    _add_rows,
    _row_reduce,
    _runs,
    _scale_rows,
)

RNG = np.random.default_rng(4)
NT, N = 300, 15


def scene(extra_level: np.ndarray, noise: float = 1.0, rng: np.random.Generator = RNG):
    """A 15x15 TPF: static stars + sky, a model, and the light the model misses per cadence."""
    yy, xx = np.mgrid[:N, :N]
    static = 30 + 5000 * np.exp(-((yy - 7) ** 2 + (xx - 7) ** 2) / 2.0)
    light = 20 + 10 * np.sin(np.linspace(0, 3, NT))[:, None, None] + 0.2 * xx
    model = light.copy()
    flux = static + light + extra_level[:, None, None] + rng.normal(0, noise, (NT, N, N))
    aperture = (yy - 7) ** 2 + (xx - 7) ** 2 <= 4
    err = np.full(flux.shape, noise)
    return flux, err, model, aperture, light + extra_level[:, None, None]


def test_background_pixels_avoid_the_aperture_and_stars():
    yy, xx = np.mgrid[:N, :N]
    image = 30 + 1000 * ((yy == 2) & (xx == 12))  # a field star
    aperture = (yy - 7) ** 2 + (xx - 7) ** 2 <= 4
    mask = background_pixels(image, aperture)
    assert not (mask & aperture).any()
    assert not mask[2, 12]
    assert not mask[7, 10]  # next to the aperture (grown by one pixel)
    assert mask.sum() >= 0.4 * (N * N - 30)


def test_good_model_gets_no_weight():
    flux, err, model, aperture, _ = scene(np.zeros(NT))
    fusion = fuse(flux - model, err, aperture)
    assert np.median(fusion.weight) < 0.2
    assert np.sqrt(np.mean(fusion.offset**2)) < 0.05
    # Noise alone never earns a surface: it predicts held-out pixels worse than a level.
    assert not fusion.has_surface
    assert not fusion.surface_coef.any()
    assert not fusion.surface_var.any()


def test_surface_follows_structure_a_level_cannot():
    """A broad curved glow sweeping over the TPF that the model lacks: a quadratic per
    cadence takes it out; the level alone could not; the quoted error follows what is left."""
    yy, xx = np.mgrid[:N, :N] / (N - 1) * 2 - 1
    phase = np.linspace(0, 2 * np.pi, NT)[:, None, None]
    glow = 4 * np.exp(-((xx - np.cos(phase)) ** 2 + (yy - 0.5 * np.sin(phase)) ** 2) / 2)
    flux, err, model, aperture, truth = scene(np.zeros(NT))
    fusion = fuse(flux + glow - model, err, aperture)
    assert np.all(fusion.degree > 0)
    truth = truth + glow

    def rms_error(estimate):
        miss = estimate - truth
        miss -= miss.mean(axis=0)
        return np.sqrt(np.mean(miss**2))

    level_only = model + fusion.offset[:, None, None]
    fused = model + fusion.correction()
    assert rms_error(fused) < 0.5 * rms_error(level_only)
    # The aperture sum of the correction is the sum of its pixels.
    np.testing.assert_allclose(
        fusion.aperture_correction(aperture), fusion.correction()[:, aperture].sum(axis=1)
    )
    # The variance of some cadences alone (as the corrector computes it) is the same.
    full = fusion.variance(np.full((NT, N, N), 0.05**2))
    some = fusion.changed()[::3]
    np.testing.assert_allclose(
        fusion.variance(np.full((some.size, N, N), 0.05**2), rows=some), full[some]
    )
    # Quoted per pixel (a model quoting 0.05 e-/s), against what is left, within 1.5x.
    quoted = np.sqrt(np.mean(fusion.variance(np.full((NT, N, N), 0.05**2))))
    assert 1 / 1.5 < rms_error(fused) / quoted < 1.5


def test_missed_light_is_recovered_within_its_error():
    missed = 8 * np.exp(-np.linspace(0, 5, NT))  # a ramp the model does not have
    flux, err, model, aperture, truth = scene(missed)
    fusion = fuse(flux - model, err, aperture)
    fused = model + fusion.offset[:, None, None]
    before = (model - truth)[:, 0, 0]
    after = (fused - truth)[:, 0, 0]
    before -= before.mean()
    after -= after.mean()
    assert np.median(fusion.weight[:48]) > 0.9  # the first day, where the ramp is strong
    assert np.sqrt(np.mean(after**2)) < 0.1 * np.sqrt(np.mean(before**2))
    # The quoted error of the fused level is honest to 1.5x.
    ratio = np.sqrt(np.mean(after**2)) / np.sqrt(np.mean(fusion.offset_var))
    assert 1 / 1.5 < ratio < 1.5
    # A model that quoted its error honestly (the ramp, in quadrature with 0.2 e-/s of
    # shape error) ends with its shape error and the fused level's.
    quoted = (missed - missed.mean()) ** 2 + 0.2**2
    level = fusion.model_err**2
    kept = (1 - fusion.weight) ** 2  # of the level error
    noise = fusion.offset_var - kept * level  # the local noise that came in
    assert np.all(fusion.variance(quoted) >= noise)
    # The level error kept (at most what the model quoted), and the least difference
    # between the model's error and the level error its quote allows (none where it
    # quotes at least the level error), at most the fused level's error.
    gap = (np.sqrt(np.minimum(quoted, level)) - np.sqrt(level)) ** 2
    gap = np.minimum(gap, fusion.weight**2 * level)  # at most the fused level's error
    np.testing.assert_allclose(
        fusion.variance(quoted),
        np.maximum(quoted - level, gap) + noise + kept * np.minimum(quoted, level),
        atol=1e-12,
    )
    strong = fusion.weight > 0.9  # the level error is measured per day: compare the means
    assert np.mean(fusion.variance(quoted)[strong]) < 0.5 * np.mean(quoted[strong])
    # For a sum of 9 pixels the level counts 81 times; per pixel as a cube, the same per pixel.
    nine = np.ones((3, 3), dtype=bool)
    np.testing.assert_allclose(
        fusion.variance(81 * quoted, aperture=nine), 81 * fusion.variance(quoted)
    )
    cube = np.broadcast_to(quoted[:, None, None], (NT, 2, 3))
    np.testing.assert_allclose(fusion.variance(cube)[:, 1, 2], fusion.variance(quoted))


def test_structure_the_model_misses_sets_the_error_floor():
    """A ridge sweeping across the TPF that the model lacks: not a level, so the fusion cannot
    remove it, but its size is measured and the fused errors are not below it."""
    yy, xx = np.mgrid[:N, :N]
    centre = np.linspace(-5, 20, NT)[:, None, None]
    ridge = 6 * np.exp(-0.5 * ((xx[None] - centre) / 1.5) ** 2)  # 6 e-/s, 3.5 px wide
    flux, err, model, aperture, truth = scene(np.zeros(NT))
    fusion = fuse(flux + ridge - model, err, aperture)
    good = fuse(flux - model, err, aperture)
    assert np.all(good.shape_var == 0)
    assert fusion.shape_var.max() > 1
    # The model quotes 0.05 e-/s per pixel; after fusion the quoted error follows what is
    # left: the ridge minus the fused level and surface, per pixel, within 1.5x over the series.
    quoted = np.sqrt(fusion.variance(np.full((NT, N, N), 0.05**2)))
    left = ridge - fusion.correction()
    left -= left.mean(axis=0)
    ratio = np.sqrt(np.mean(left**2)) / np.sqrt(np.mean(quoted**2))
    assert 1 / 1.5 < ratio < 1.5
    assert np.median(np.sqrt(good.variance(np.full(NT, 0.05**2)))) == pytest.approx(0.05)


def test_level_error_follows_the_models_quoted_error():
    """A model whose level error is large on the first cadences of each day (as after a
    perigee) and quotes it so: the day's measured level error is spread over its cadences
    as the quote runs, so the fused errors stay honest on the noisy and the quiet cadences
    alike; the weight (the fused values) does not depend on it."""
    rng = np.random.default_rng(11)
    noisy = np.arange(NT) % 48 < 8
    missed = rng.normal(0, 1, NT) * np.where(noisy, 0.5, 0.05)
    flux, err, model, aperture, truth = scene(missed, rng=rng)
    quoted = np.broadcast_to(np.abs(missed)[:, None, None], flux.shape)  # honest per cadence
    fusion = fuse(flux - model, err, aperture, model_var=quoted**2)
    flat = fuse(flux - model, err, aperture)
    np.testing.assert_array_equal(fusion.offset, flat.offset)
    left = (model + fusion.correction() - truth)[:, 7, 7]
    left -= left.mean()
    variance = fusion.variance(missed**2)
    for cadences in (noisy, ~noisy):
        ratio = np.sqrt(np.mean(left[cadences] ** 2) / np.mean(variance[cadences]))
        assert 1 / 1.5 < ratio < 1.5
    # A day's mean level error taken off every cadence over-quotes the noisy ones ~3x.
    ratio = np.sqrt(np.mean(left[noisy] ** 2) / np.mean(flat.variance(missed**2)[noisy]))
    assert ratio < 0.5


def test_level_error_the_aperture_lacks_is_brought_in_and_quoted():
    """The background pixels show a level error the model does not have at the aperture
    (a strap the aperture is not on): the fused level, subtracted at every pixel, brings
    it to the aperture, and the fused variance quotes it (the model's quote there is
    small: taking the level error off it would leave only the local noise, 3x low)."""
    missed = np.random.default_rng(12).normal(0, 0.3, NT)
    flux, err, model, aperture, truth = scene(np.zeros(NT), rng=np.random.default_rng(13))
    away = ~ndimage.binary_dilation(aperture, iterations=3)
    flux[:, away] += missed[:, None]
    fusion = fuse(flux - model, err, aperture)
    assert 0.2 < np.median(fusion.weight) < 0.95
    n = aperture.sum()
    quoted = np.full(NT, (n * 0.01) ** 2)  # honest: the model is right at the aperture
    left = fusion.aperture_correction(aperture)
    left -= left.mean()
    ratio = np.sqrt(np.mean(left**2) / np.mean(fusion.variance(quoted, aperture=aperture)))
    assert 1 / 1.5 < ratio < 1.5


def test_shadow_edge_across_the_aperture_is_quoted_honestly():
    """A sharp edge down the TPF through the aperture; the model misses part of the
    bright side's static light, so the background pixels lie on the faint side. The
    model's level error there (1 e-/s, slow) is not the aperture's: its bright side's
    is smaller (0.3 e-/s) or none, each independent. The model quotes each side
    honestly; the fused level (the faint side's) taken off the aperture's quote left
    1.7x (bright side 0.3) to 3x (none) less than the aperture sum's actual error. Now
    the level is not carried to the bright side (the background pixels on it show
    that its error does not follow theirs), and the aperture's error drops 2-8x;
    where the bright side's model is exact, the faint pixels' quote beyond the level
    error measured day by day stays in the variance (5x the actual error here)."""
    rng = np.random.default_rng(5)
    nt = 480
    yy, xx = np.mgrid[:N, :N]
    static = 30 + 5000 * np.exp(-((yy - 7) ** 2 + (xx - 7) ** 2) / 2.0)
    aperture = (yy - 7) ** 2 + (xx - 7) ** 2 <= 2
    bright = xx >= 7
    light = 20 + 10 * np.sin(np.linspace(0, 3, nt))[:, None, None] + 300 * bright
    model = light - 50 * bright

    def slow(size):
        walk = np.convolve(np.cumsum(rng.normal(0, 1, nt)), np.ones(9) / 9, "same")
        walk -= walk.mean()
        return size * walk / walk.std()

    faint_miss = slow(1.0)
    for bright_size in (0.3, 0.0):
        bright_miss = slow(bright_size)
        truth = light + np.where(bright, bright_miss[:, None, None], faint_miss[:, None, None])
        flux = static + truth + rng.normal(0, 1.0, (nt, N, N))
        model_var = np.where(bright, bright_miss.var(), faint_miss.var()) * np.ones((nt, 1, 1))
        fusion = fuse(flux, np.ones_like(flux), aperture, model=model, model_var=model_var)
        assert not (fusion.pixels & bright).any() or (fusion.pixels & bright).sum() < 10
        faint, lit = (aperture & ~bright).sum(), (aperture & bright).sum()
        quoted = np.full(nt, faint**2 * faint_miss.var() + lit**2 * bright_miss.var())
        left = (model + fusion.correction() - truth)[:, aperture].sum(axis=1)
        left -= left.mean()
        alone = (model - truth)[:, aperture].sum(axis=1)
        alone -= alone.mean()
        # The faint side's level is not carried across the edge (`Fusion.reach`): the
        # aperture's bright pixels keep the model's (smaller) error.
        assert fusion.reach is not None
        assert fusion.reach[bright].max() < 0.5
        assert np.std(left) < 0.5 * np.std(alone)
        ratio = np.sqrt(np.mean(left**2) / np.mean(fusion.variance(quoted, aperture=aperture)))
        if bright_size > 0:
            assert 1 / 1.5 < ratio < 1.5, (bright_size, ratio)
        else:  # never under-quoted; the faint pixels' quote beyond the level error is kept
            assert 1 / 6 < ratio < 1.5, (bright_size, ratio)


def test_noisier_pixels_next_to_the_aperture_are_not_structure():
    """The model is right; the faint pixels around the aperture scatter 1.3x more than
    their FLUX_ERR says (a faint wing, a noise model a little off): an excess variance of
    0.69 there. That is no error of the model. The structure floor, measured over all
    the background pixels, takes their share of it (~0.1), not all of it (a floor from
    the scatter of the pixels next to the aperture alone did: 0.6-0.8 here, 45x the
    model's variance on a simulated CCD-edge TPF); white in time, it drops out of their
    product from one cadence to the next."""
    rng = np.random.default_rng(21)
    yy, xx = np.mgrid[:N, :N]
    flux, err, model, aperture, _ = scene(np.zeros(NT), rng=rng)
    flux -= 5000 * np.exp(-((yy - 7) ** 2 + (xx - 7) ** 2) / 2.0)  # a faint target
    grown = ndimage.binary_dilation(aperture, iterations=1)
    near = ndimage.binary_dilation(aperture, iterations=3) & ~grown
    flux[:, near] += rng.normal(0, np.sqrt(1.3**2 - 1), (NT, near.sum()))
    fusion = fuse(flux - model, err, aperture)
    assert fusion.shape_var.max() < 0.3


def test_slow_structure_next_to_the_aperture_is_covered():
    """The model misses structure around the aperture that changes slowly (a shadow edge's
    bright side): the pixels next to it rise and fall by 0.8 e-/s over tens of cadences,
    some up, some down (no level), a variance of 0.32. Among all the background pixels
    its share is ~0.05; the pixels next to the aperture, from one cadence to the next,
    show all of it, and the structure floor covers it."""
    rng = np.random.default_rng(22)
    yy, xx = np.mgrid[:N, :N]
    flux, err, model, aperture, _ = scene(np.zeros(NT), rng=rng)
    flux -= 5000 * np.exp(-((yy - 7) ** 2 + (xx - 7) ** 2) / 2.0)  # a faint target
    grown = ndimage.binary_dilation(aperture, iterations=1)
    near = ndimage.binary_dilation(aperture, iterations=3) & ~grown
    sign = rng.choice([-1.0, 1.0], near.sum())
    flux[:, near] += 0.8 * np.sin(2 * np.pi * np.arange(NT) / 60)[:, None] * sign
    fusion = fuse(flux - model, err, aperture)
    assert 0.2 < np.median(fusion.shape_var) < 0.45


def test_too_few_background_pixels():
    flux, err, model, _, _ = scene(np.zeros(NT))
    assert fuse(flux - model, err, np.ones((N, N), dtype=bool)) is None


def test_window_averages_fast_cadences():
    missed = np.zeros(NT)
    flux, err, model, aperture, _ = scene(missed)
    one = fuse(flux - model, err, aperture)
    five = fuse(flux - model, err, aperture, window=5)
    assert np.median(five.local_err) < 0.6 * np.median(one.local_err)


@pytest.fixture(scope="module")
def field():
    return simulate.ScatteredLightField(seed=3)


def test_corrector_fuses_and_keeps_the_transit(field):
    """A cube that misses a ramp at the TPF; a 1% transit and a 10% variation in the aperture."""
    time = simulate.sector_times(1)[:400]
    cube = simulate.make_cube(field, pixel_bin=64, time=time)
    missed = 15 * np.exp(-(time - time[0]) / 1.5)

    def true_light(t, rows, cols):
        return field(t, rows, cols) + np.interp(t, time, missed)[:, None, None]

    quiet = simulate.make_tpf(true_light, 700, 1200, shape=(15, 15), time=time, seed=2)
    tpf = simulate.make_tpf(true_light, 700, 1200, shape=(15, 15), time=time, seed=2)
    aperture = np.zeros((15, 15), dtype=bool)
    aperture[5:10, 5:10] = True
    signal = 1 + 0.1 * np.sin(2 * np.pi * (time - time[0]) / 3.0)
    transit = (time > time[200]) & (time < time[200] + 0.2)
    signal[transit] -= 0.01
    star = 15000.0 / aperture.sum()  # spread evenly: what matters is where, not the shape
    tpf.hdu[1].data["FLUX"][:, aperture] += (star * (signal - 1))[:, None]

    fused = tpf.to_corrector("scatterlight", cube=cube, aperture_mask=aperture)
    lc = fused.correct()
    lc_quiet = quiet.to_corrector("scatterlight", cube=cube, aperture_mask=aperture).correct()
    plain = tpf.to_corrector("scatterlight", cube=cube, aperture_mask=aperture, fuse=False)
    plain.correct()
    assert fused.fusion is not None
    assert plain.fusion is None
    assert not (fused.fusion.pixels & aperture).any()
    # The target's signal passes through untouched: depth and amplitude exactly.
    recovered = (lc.flux.value - lc_quiet.flux.value) / 15000.0 + 1
    np.testing.assert_allclose(recovered, signal, atol=1e-5)
    # The fused background removes most of the ramp the cube missed.
    rows, cols = tpf.row + np.arange(15), tpf.column + np.arange(15)
    truth = true_light(time, rows, cols)[:, aperture].sum(axis=1)
    errors = []
    for corrector in (fused, plain):
        error = corrector.model_lc.flux.value - truth
        errors.append(np.std(error - error.mean()))
    assert errors[0] < 0.2 * errors[1]
    # Its quoted error is honest to 1.5x.
    quoted = np.sqrt(np.mean(fused.model_lc.flux_err.value**2))
    assert 1 / 1.5 < errors[0] / quoted < 1.5
    fused.diagnose()


def test_corrector_spreads_the_level_error_as_the_cube_quotes_it(field, monkeypatch):
    """``correct()`` and ``correct_tpf()`` give `fuse` the cube's quoted per-pixel variance, so
    the fusion's level error follows it over each day."""
    import lk_scatterlight.corrector as corrector_module

    time = simulate.sector_times(1)[:100]
    cube = simulate.make_cube(field, pixel_bin=64, time=time)
    tpf = simulate.make_tpf(field, 700, 1200, shape=(15, 15), time=time, seed=2)
    given = []

    def spy(*args, **kwargs):
        given.append(np.array(kwargs["model_var"]))  # as given (correct_tpf reuses it)
        return fuse(*args, **kwargs)

    monkeypatch.setattr(corrector_module, "fuse_model", spy)
    corrector = tpf.to_corrector("scatterlight", cube=cube, aperture_mask="threshold")
    corrector.correct()
    corrector.correct_tpf()
    model = cube.evaluate(time, corrector.rows, corrector.columns)
    assert len(given) == 2
    for model_var in given:
        np.testing.assert_allclose(model_var, model.flux_err.value**2, rtol=1e-6)


def test_flux_and_model_fuse_as_their_residual():
    """``fuse(flux, ..., model=model)`` forms flux minus model only where it reads it: the
    same result, to the bit, as ``fuse(flux - model, ...)``, also with NaN pixels and
    cadences, cadences outside the model, a surface on some days and a model in float64;
    and so does ``flux_var`` (``FLUX_ERR**2`` given instead of squared again)."""
    yy, xx = np.mgrid[:N, :N] / (N - 1) * 2 - 1
    glow = 4 * np.exp(-((xx - np.linspace(-1, 1, NT)[:, None, None]) ** 2 + yy**2) / 2)
    flux, err, model, aperture, _ = scene(np.zeros(NT))
    flux = (flux + glow).astype(np.float32)
    flux[:, 3, 0] = np.nan
    flux[50:60] = np.nan
    err = err.astype(np.float32)
    valid = np.ones(NT, dtype=bool)
    valid[100:130] = False
    quoted = np.full(flux.shape, 0.04, dtype=np.float32)
    for model_dtype in (np.float32, np.float64):
        m = model.astype(model_dtype)
        for given in (valid, None):
            expected = fuse(np.subtract(flux, m), err, aperture, given, 2, model_var=quoted)
            fusion = fuse(flux, err, aperture, given, 2, model_var=quoted, model=m)
            # FLUX_ERR**2 given (as correct_tpf passes it): the same, to the bit.
            squared = fuse(
                flux, err, aperture, given, 2, model_var=quoted, model=m, flux_var=np.square(err)
            )
            assert fusion.has_surface
            # How far the level reaches across the model's structure needs the model.
            assert expected.reach is None
            for name, value in vars(expected).items():
                if name in ("reach", "reach_quoted"):
                    value = getattr(squared, name)
                np.testing.assert_array_equal(getattr(fusion, name), value, err_msg=name)
                np.testing.assert_array_equal(getattr(squared, name), value, err_msg=name)


def test_tiny_tpf_uses_the_model_alone(field):
    time = simulate.sector_times(1)[:50]
    cube = simulate.make_cube(field, pixel_bin=64, time=time)
    tpf = simulate.make_tpf(field, 700, 1200, shape=(3, 3), time=time, seed=2)
    corrector = tpf.to_corrector("scatterlight", cube=cube, aperture_mask="all")
    with pytest.warns(ScatterLightWarning, match="too few background pixels"):
        corrector.correct()
    assert corrector.fusion is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        corrector.correct()  # said once


def test_surface_with_nan_pixels_and_gaps():
    """A dead column, NaN cadences and cadences the model does not cover: no warning, and
    finite corrections and errors wherever the model is."""
    yy, xx = np.mgrid[:N, :N] / (N - 1) * 2 - 1
    glow = 4 * np.exp(-((xx - np.linspace(-1, 1, NT)[:, None, None]) ** 2 + yy**2) / 2)
    flux, err, model, aperture, _ = scene(np.zeros(NT))
    residual = flux + glow - model
    residual[:, :, 0] = np.nan
    residual[50:60] = np.nan
    valid = np.ones(NT, dtype=bool)
    valid[100:130] = False
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fusion = fuse(residual, err, aperture, valid=valid)
    assert np.all(fusion.degree[~valid] == 0)
    assert fusion.has_surface
    assert np.all(np.isfinite(fusion.correction()))
    assert np.all(np.isfinite(fusion.variance(np.full((NT, N, N), 0.01))))
    # Too few background pixels for a surface (two rows, the rest is aperture): a level only.
    aperture = np.ones((N, N), dtype=bool)
    aperture[:2] = False
    assert not fuse(flux + glow - model, err, aperture).has_surface


def test_corrector_fits_a_surface_the_cube_misses(field):
    """A gradient across the TPF that grows and fades, missing from the cube: the corrector
    fits a plane per cadence, subtracts it from every pixel (correct_tpf) and from the
    aperture sum (correct), and diagnose() draws it."""
    time = simulate.sector_times(1)[:300]
    cube = simulate.make_cube(field, pixel_bin=64, time=time)
    strength = 3 * np.sin(np.linspace(0, np.pi, time.size)) ** 2  # e-/s per 7 px

    def true_light(t, rows, cols):
        tilt = np.interp(t, time, strength)[:, None, None] * (cols[None, None, :] - 1207) / 7
        return field(t, rows, cols) + tilt

    tpf = simulate.make_tpf(true_light, 700, 1200, shape=(15, 15), time=time, seed=4)
    aperture = np.zeros((15, 15), dtype=bool)
    aperture[6:9, 6:9] = True
    corrector = tpf.to_corrector("scatterlight", cube=cube, aperture_mask=aperture)
    corrected = corrector.correct_tpf()
    fusion = corrector.fusion_tpf
    assert fusion.has_surface
    assert np.mean(fusion.degree > 0) > 0.5
    # Every pixel: what was removed is the cube's model plus the fusion's correction.
    model = cube.evaluate(time, tpf.row + np.arange(15), tpf.column + np.arange(15)).flux.value
    removed = tpf.hdu[1].data["FLUX"] - corrected.hdu[1].data["FLUX"]
    np.testing.assert_allclose(removed, model + fusion.correction(), rtol=1e-4, atol=1e-3)
    # The gradient is gone from the background: the left-right difference follows the truth.
    rows, cols = tpf.row + np.arange(15), tpf.column + np.arange(15)
    truth = true_light(time, rows, cols)
    fused = model + fusion.correction()
    assert np.std((fused - truth)[:, :, -1] - (fused - truth)[:, :, 0]) < 0.2 * np.std(
        (model - truth)[:, :, -1] - (model - truth)[:, :, 0]
    )
    # The light curve's correction is the aperture sum of the same thing.
    corrector.correct()
    np.testing.assert_allclose(
        corrector.model_lc.flux.value,
        model[:, aperture].sum(axis=1) + corrector.fusion.aperture_correction(aperture),
        rtol=1e-4,
    )
    axes = corrector.diagnose()
    labels = [line.get_label() for line in axes[2].get_lines()]
    assert any("with the surface" in label for label in labels)


def test_noise_ignores_non_finite_errors():
    """A NaN FLUX_ERR in the aperture, or in one background pixel, leaves the local
    estimate's error as it was (the mean FLUX_ERR**2 of the finite background pixels)."""
    flux, err, model, aperture, _ = scene(np.zeros(NT))
    reference = fuse(flux - model, err, aperture)
    row, col = np.argwhere(reference.pixels)[0]
    broken = err.copy()
    broken[:, 7, 7] = np.nan  # the target
    broken[::2, row, col] = np.nan  # a background pixel, every other cadence
    fusion = fuse(flux - model, broken, aperture)
    np.testing.assert_allclose(fusion.local_err, reference.local_err, rtol=1e-6)


def test_clipped_level_matches_a_plain_masked_computation():
    """The per-cadence clipped statistics (outliers and NaNs dropped by index) equal
    those of an explicit mask: rows with NaNs, with outliers, with every pixel dropped."""
    d = RNG.normal(0, 0.3, (40, 30)).astype(np.float32)
    d[3, 5] = 50.0  # an outlier
    d[7, :2] = -40.0  # two
    d[11, 2] = np.nan  # a NaN: the slow path for the block
    d[12] = np.nan  # no pixel left
    limit = 3.0
    finite = np.isfinite(d)
    first = np.where(finite, d, 0).sum(axis=1) / np.maximum(finite.sum(axis=1), 1)
    with np.errstate(invalid="ignore"):
        keep = finite & (np.abs(d - first[:, None]) <= limit)
    kept = np.where(keep, d, 0).astype(float)
    n = keep.sum(axis=1)
    mean = kept.sum(axis=1) / np.maximum(n, 1)
    scatter = np.maximum((kept**2).sum(axis=1) - n * mean**2, 0) / np.maximum(n - 1, 1)
    given = d.copy()
    got = np.array(_clipped_level(_clipped_sums(given, limit)))
    np.testing.assert_array_equal(given, d)  # the dropped pixels get their values back
    np.testing.assert_array_equal(got[0], n)
    assert list(n[[3, 11, 12]]) == [29, 29, 0]
    np.testing.assert_allclose(got[1], mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got[2], scatter, rtol=1e-4, atol=1e-6)
    # Without the NaNs (the fast path), the same rows give the same numbers (to float32
    # rounding: BLAS sums the last rows of a block in another order).
    clean = np.array(_clipped_level(_clipped_sums(np.delete(d, [11, 12], axis=0), limit)))
    np.testing.assert_array_equal(clean[0], np.delete(n, [11, 12]))
    np.testing.assert_allclose(clean, np.delete(got, [11, 12], axis=1), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize(
    ("shape", "dtype", "contiguous"),
    [((50, 4, 5), np.float32, True), ((50, 7), np.float64, True), ((50, 4, 5), np.float32, False)],
)
def test_add_per_row_equals_numpy_broadcasting(shape, dtype, contiguous):
    """BLAS's rank-one update gives exactly numpy's per-row sums, NaN included, in place."""
    array = RNG.normal(0, 100, shape).astype(dtype)
    array[3, 0] = np.nan
    if not contiguous:
        array = np.swapaxes(array, 1, 2)
    values = RNG.normal(0, 1, shape[0])
    values[5] = 0.0
    expected = array + values.astype(dtype).reshape((-1,) + (1,) * (array.ndim - 1))
    result = _add_per_row(array, values)
    assert result is array
    np.testing.assert_array_equal(array, expected)


@pytest.mark.parametrize(
    "rows",
    [
        np.r_[40:90, 130:170, 299],  # a few long runs: handled as views, run by run
        np.arange(0, 300, 7),  # short runs: gathered by index
        np.arange(0, 300)[::3][:90],  # short runs, most of a third of the rows
        np.arange(20, 250),  # most rows: one pass over every row
        np.empty(0, dtype=int),
    ],
)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_row_kernels_equal_indexing(rows, dtype):
    """The per-row kernels give exactly what numpy's indexing gives, whether they take
    the rows run by run, by index or in one pass over every row, and leave the other
    rows as they were (bit for bit)."""
    array = RNG.normal(0, 100, (300, 4, 5)).astype(dtype)
    array[rows[:1], 0] = np.nan
    values = RNG.normal(0, 1, 300)
    shape = (-1, 1, 1)
    expected = array.copy()
    expected[rows] *= values[rows].astype(dtype).reshape(shape)
    got = array.copy()
    _scale_rows(got, values, rows)
    np.testing.assert_array_equal(got, expected)
    added = np.zeros(300)
    added[rows] = values[rows]  # the rows with a value not 0
    expected = array.copy()
    expected[rows] += values[rows].astype(dtype).reshape(shape)
    got = array.copy()
    _add_rows(got, added)
    np.testing.assert_array_equal(got, expected)
    flat = array.reshape(300, -1)
    for ufunc in (np.maximum, np.minimum):
        np.testing.assert_array_equal(_row_reduce(ufunc, flat, rows), ufunc.reduce(flat[rows], 1))
    runs = _runs(rows)
    if runs is not None:  # the runs cover exactly the rows
        np.testing.assert_array_equal(
            np.concatenate([np.arange(0)] + [np.arange(*r) for r in runs]), rows
        )


def test_variance_in_place_leaves_unchanged_cadences_alone():
    """On a TPF the model fits on most days, ``variance`` in place over every cadence
    changes only `changed` cadences and gives them what it gives on those alone."""
    extra = np.zeros(NT)
    extra[100:160] = 3 * np.sin(np.linspace(0, 6, 60))  # one stretch the model misses
    flux, err, model, aperture, _ = scene(extra)
    fusion = fuse(flux - model, err, aperture, chunk=20)
    changed = fusion.changed()
    assert 0 < changed.size < NT // 2
    model_var = RNG.uniform(0.5, 2, (NT, N, N)).astype(np.float32)
    expected = model_var.copy()
    expected[changed] = fusion.variance(model_var[changed], rows=changed)
    assert not np.array_equal(expected[changed], model_var[changed])
    got = model_var.copy()
    assert fusion.variance(got, out=got) is got
    np.testing.assert_array_equal(got, expected)


def test_variance_and_correction_in_place_or_not():
    """``variance`` gives the same values into a fresh array, in place, into another
    buffer and on the changed cadences alone; the model's variance is left alone unless
    it is ``out``. ``add_to`` in place equals ``correction()`` added, level and surface
    (float32 arrays, as the corrector's)."""
    yy, xx = np.mgrid[:N, :N] / (N - 1) * 2 - 1
    glow = 4 * np.exp(-((xx - np.linspace(-1, 1, NT)[:, None, None]) ** 2 + yy**2) / 2)
    flux, err, model, aperture, _ = scene(3 * np.sin(np.linspace(0, 9, NT)))
    fusion = fuse(flux + glow - model, err, aperture)
    assert fusion.has_surface
    assert np.mean(fusion.weight > 0) > 0.5
    model_var = RNG.uniform(0.5, 2, (NT, N, N)).astype(np.float32)
    kept = model_var.copy()
    expected = fusion.variance(model_var)
    np.testing.assert_array_equal(model_var, kept)
    buffer = np.empty_like(model_var)
    np.testing.assert_array_equal(fusion.variance(model_var, out=buffer), expected)
    np.testing.assert_array_equal(model_var, kept)
    changed = fusion.changed()
    part = fusion.variance(model_var[changed], rows=changed)
    np.testing.assert_array_equal(part, expected[changed])
    assert fusion.variance(model_var, out=model_var) is model_var
    np.testing.assert_array_equal(model_var, expected)
    # The level's error was replaced by the fused one: not just the quoted variance again.
    assert not np.allclose(expected, kept)
    fused = model.astype(np.float32)
    np.testing.assert_allclose(
        fusion.add_to(fused), model + fusion.correction(), rtol=1e-6, atol=1e-4
    )


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_variance_per_pixel_keeps_the_formula_on_every_kind_of_cadence(dtype):
    """Per pixel, the fused variance is ``max(var - level, shape, gap) + kept min(var,
    level) + noise``, ``gap = min((sqrt(var) - sqrt(level))**2, weight**2 level)`` where ``var <
    level`` (without the model's variance given to `fuse`, the level error is the
    reference), whether the
    model quotes less than the level error at every pixel of a cadence, more at every
    pixel, or both, and with a few or most cadences of one kind."""
    rng = np.random.default_rng(2)  # its own draws (this one has gaps left out)
    flux, err, model, aperture, _ = scene(np.random.default_rng(14).normal(0, 0.3, NT), rng=rng)
    fusion = fuse(flux - model, err, aperture)
    level = fusion.model_err**2
    assert np.mean(fusion.weight > 0) > 0.5
    assert np.mean(level > 0) > 0.5
    fusion.shape_var[::3] = 0.5 * np.median(level[level > 0])
    kept = (1 - fusion.weight) ** 2
    noise = np.maximum(fusion.offset_var - kept * level, 0)
    typical = np.median(level[level > 0])
    for lowest, highest in ((0.0, 0.2), (5.0, 9.0), (0.0, 9.0)):  # below, above, across
        for share in (0.1, 0.9):  # the cadences whose quote spans that range
            quoted = rng.uniform(0.5, 1.5, (NT, N, N)) * typical
            some = rng.random(NT) < share
            quoted[some] = rng.uniform(lowest, highest, (some.sum(), N, N)) * typical
            quoted = quoted.astype(dtype)
            lv, kp, sh, ns = (a[:, None, None] for a in (level, kept, fusion.shape_var, noise))
            gap = (np.sqrt(np.minimum(quoted, lv)) - np.sqrt(lv)) ** 2
            gap = np.minimum(gap, (1 - np.sqrt(kp)) ** 2 * lv)  # weight**2 level
            expected = (
                np.maximum(np.maximum(quoted - lv, sh), gap) + kp * np.minimum(quoted, lv) + ns
            )
            rtol = 1e-5 if dtype == np.float32 else 1e-12
            slack = rtol * (np.abs(expected) + typical)
            short = expected - fusion.variance(quoted)  # what the result leaves out
            # A cadence's gap within 1 % (`_GAP_TOLERANCE`) of the fused variance's floor may be
            # left out (never more); every other value is the formula's.
            assert np.all(short >= -slack)
            assert np.all(short <= 0.01 * (sh + ns) + slack)
            largest = np.max(gap, axis=(1, 2))
            floor = (sh + 0.01 * (sh + ns))[:, 0, 0]
            exact = (largest == 0) | (largest > floor)
            assert np.mean(exact) > 0.5
            assert np.all(np.abs(short[exact]) <= slack[exact])


def test_variance_with_row_sums_is_the_same():
    """``quoted_sum`` is the model's quoted variance summed over each cadence's pixels on
    the days with a level error; given to `Fusion.variance` as ``row_sums`` (where a
    cadence's sum is at most the level error, so is each pixel) it changes nothing, with
    the bound deciding most cadences, few, or none (unknown sums), all cadences or some."""
    missed = np.random.default_rng(15).normal(0, 0.5, NT) * (np.arange(NT) // 48 % 2 == 0)
    flux, err, model, aperture, _ = scene(missed)  # a level error on every other day
    quoted = RNG.uniform(0.5, 1.5, (NT, N, N)).astype(np.float32) * 1e-4
    fusion = fuse(flux, err, aperture, model=model, model_var=quoted)
    level = fusion.model_err**2
    assert 0.3 < np.mean(level > 0) < 1  # days with and without a level error
    sums = fusion.quoted_sum
    np.testing.assert_array_equal(np.isfinite(sums), level > 0)
    known = np.isfinite(sums)
    np.testing.assert_allclose(sums[known], quoted[known].sum(axis=(1, 2)), rtol=1e-5)
    typical = np.median(level[level > 0])
    for highest in (1e-3, 1e-2, 9.0):  # sums below the level error, around it, above
        var = RNG.uniform(0, highest, (NT, N, N)).astype(np.float32) * typical
        row_sums = var.sum(axis=(1, 2))
        row_sums[::7] = np.nan  # unknown: searched
        expected = fusion.variance(var)
        np.testing.assert_array_equal(fusion.variance(var, row_sums=row_sums), expected)
        some = fusion.changed()[::3]
        np.testing.assert_array_equal(
            fusion.variance(var[some], rows=some, row_sums=row_sums), expected[some]
        )


def test_fusion_runs_with_one_blas_thread(monkeypatch):
    """fuse(), add_to() and variance() limit BLAS to one thread (its default threads
    made fusion 3-5x more expensive on a busy machine) and restore it afterwards."""
    from threadpoolctl import threadpool_info, threadpool_limits

    import lk_scatterlight.fusion.core as fusion_module

    def blas_threads():
        return {lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"}

    seen = []
    original = fusion_module._clipped_sums

    def spy(*args, **kwargs):
        seen.append(blas_threads())
        return original(*args, **kwargs)

    monkeypatch.setattr(fusion_module, "_clipped_sums", spy)
    flux, err, model, aperture, _ = scene(3 * np.sin(np.linspace(0, 9, NT)))
    with threadpool_limits(limits=2, user_api="blas"):  # as on a 2-core machine
        assert blas_threads() == {2}
        fusion = fuse(flux - model, err, aperture)
        assert blas_threads() == {2}
    assert seen
    assert all(threads == {1} for threads in seen)
    assert fusion is not None


def test_surface_is_not_extrapolated_beyond_its_pixels():
    """A shadow edge down the TPF's middle: its bright static side leaves the background
    pixels on the faint side only. What the model misses there rises towards the edge
    like a plane; carried across to the bright side, that plane would be far off."""
    yy, xx = np.mgrid[:N, :N]
    bright = xx >= 8
    ramp = np.where(bright, 0.0, xx / 7)  # what the model misses: rising towards the edge
    missed = 4 * np.sin(np.linspace(0, np.pi, NT))[:, None, None] * ramp
    flux, err, model, aperture, truth = scene(np.zeros(NT))
    flux = flux + 300 * bright + missed
    fusion = fuse(flux - model, err, aperture)
    assert fusion.pixels[:, :8].sum() > 5 * fusion.pixels[:, 8:].sum()  # one-sided
    assert not fusion.has_surface
    # The plane the background pixels ask for, per cadence, and where it would take the
    # bright side.
    where = fusion.pixels
    design = np.column_stack([np.ones(where.sum()), yy[where], xx[where]])
    residual = (flux - model - 300 * bright)[:, where]
    residual -= np.median(residual, axis=0)
    coef = np.linalg.lstsq(design, residual.T, rcond=None)[0]
    plane = coef[0][:, None, None] + coef[1][:, None, None] * yy + coef[2][:, None, None] * xx

    def rms_bright(correction):
        miss = model + correction - (truth + missed)
        miss -= miss.mean(axis=0)
        return np.sqrt(np.mean(miss[:, bright] ** 2))

    assert rms_bright(fusion.correction()) < 0.5 * rms_bright(plane)


def edge_scene(rng: np.random.Generator, nt: int = 480):
    """A 15x15 TPF crossed by a sharp shadow edge (columns 0-6 faint, 7-14 bright) whose
    depth the model has wrong by a slow ``delta(t)`` (1 e-/s RMS), as a smooth model
    does: it errs by ``+delta / 2`` on the faint side and ``-delta / 2`` on the bright
    side, where the target's aperture is; and it lacks some of the bright side's static
    light, so every background pixel is on the faint side.

    Returns the flux, the model, its honest quoted variance, the aperture and the truth.
    """
    yy, xx = np.mgrid[:N, :N]
    edge = 1 / (1 + np.exp(-(xx - 6.5) / 0.5))  # 0 on the faint side, 1 on the bright
    walk = np.convolve(np.cumsum(rng.normal(0, 1, nt)), np.ones(15) / 15, "same")
    delta = (walk - walk.mean()) / walk.std()
    depth = 40 + 10 * np.sin(np.linspace(0, 3, nt))
    truth = 20 + depth[:, None, None] * edge
    # It also misses a quarter of the edge's static depth (as the cube does): the faint
    # half of flux - model, where the background pixels are, is the faint side.
    miss = delta[:, None, None] * (0.5 - edge) - 10 * edge
    model = truth + miss
    static = 30 + 5000 * np.exp(-((yy - 7) ** 2 + (xx - 10) ** 2) / 2.0)
    flux = static + truth + rng.normal(0, 1.0, (nt, N, N))
    aperture = (np.abs(yy - 7) <= 1) & (np.abs(xx - 10) <= 1)
    model_var = np.broadcast_to(np.square(0.5 - edge) * delta.var(), flux.shape)
    return flux, model, model_var, aperture, truth


def test_level_is_not_carried_across_a_sharp_edge():
    """The background pixels' level error is the opposite of the aperture's (issue 21's
    shadow-edge TPF: correlation -0.95). Fusing their level at full weight doubled the
    aperture's error (the level added to it); the fusion finds that the model's error
    changes sign with the model's own structure, carries the level to the faint side
    only, and the aperture keeps the model's error (and its quoted variance)."""
    flux, model, model_var, aperture, truth = edge_scene(np.random.default_rng(31))
    fusion = fuse(flux, np.ones_like(flux), aperture, model=model, model_var=model_var)
    assert not (fusion.pixels & (np.mgrid[:N, :N][1] >= 7)).any()  # all on the faint side
    assert np.median(fusion.weight) > 0.5  # the faint side's level is fused

    def aperture_error(estimate):
        left = (estimate - truth)[:, aperture].sum(axis=1)
        return left - left.mean()

    alone = aperture_error(model)
    fused = aperture_error(model + fusion.correction())
    assert np.std(fused) <= 1.05 * np.std(alone)
    # The faint side gains: what the model missed there is taken out.
    faint = fusion.pixels
    miss = (model + fusion.correction() - truth)[:, faint]
    miss_alone = (model - truth)[:, faint]
    assert np.std(miss - miss.mean(0)) < 0.5 * np.std(miss_alone - miss_alone.mean(0))
    # Honest: the aperture sum's quoted error (the model's, fully correlated over it).
    quoted = np.sqrt(model_var[:, aperture]).sum(axis=1) ** 2
    ratio = np.std(fused) / np.sqrt(np.mean(fusion.variance(quoted, aperture=aperture)))
    assert 1 / 1.5 < ratio < 1.5
    # Per pixel, as correct_tpf() quotes it: the aperture's pixels too.
    per_pixel = fusion.variance(np.array(model_var))[:, aperture]
    left = (model + fusion.correction() - truth)[:, aperture]
    left -= left.mean(axis=0)
    ratio = np.sqrt(np.mean(left**2) / np.mean(per_pixel))
    assert 1 / 1.5 < ratio < 1.5
