"""The strap response's statistical error: measured by the builder, stored in STRAPS,
added to the error of strap-column pixels and of aperture sums over them."""

import numpy as np
import pytest
from cube_helpers import make_cube

from lk_scatterlight import ScatterLightCube
from lk_scatterlight.builder import strap_photometry

ROWS = np.arange(20, 31)
COLS = np.arange(55, 71)
STRAPS = [60, 61]
RESPONSE = np.array([1.04, 1.02])
RESPONSE_ERR = np.array([0.02, 0.01])  # large, to stand out of the bins' noise


@pytest.fixture(scope="module")
def cubes():
    """The same cube without and with the responses' errors."""
    plain = make_cube(strap_column=STRAPS, strap_response=RESPONSE)
    quoted = make_cube(
        strap_column=STRAPS, strap_response=RESPONSE, strap_response_err=RESPONSE_ERR
    )
    return plain, quoted


def test_strap_pixels_add_the_light_times_the_response_error(cubes):
    plain, quoted = cubes
    before = plain.evaluate(plain.btjd, ROWS, COLS)
    after = quoted.evaluate(quoted.btjd, ROWS, COLS)
    np.testing.assert_array_equal(after.flux.value, before.flux.value)
    off = ~np.isin(COLS, STRAPS)
    np.testing.assert_array_equal(after.flux_err.value[..., off], before.flux_err.value[..., off])
    for k, column in enumerate(STRAPS):
        j = int(np.flatnonzero(COLS == column)[0])
        light = before.flux.value[..., j] / RESPONSE[k]
        expected = np.hypot(before.flux_err.value[..., j], light * RESPONSE_ERR[k])
        np.testing.assert_allclose(after.flux_err.value[..., j], expected, rtol=1e-5)


def test_an_aperture_sum_adds_it_along_each_column(cubes):
    """Shared by all rows of a column (coherent), independent between columns."""
    plain, quoted = cubes
    mask = np.zeros((ROWS.size, COLS.size), bool)
    mask[2:9, 3:9] = True  # columns 58..63: both straps
    before = plain.evaluate_sum(plain.btjd, ROWS, COLS, mask=mask)
    after = quoted.evaluate_sum(quoted.btjd, ROWS, COLS, mask=mask)
    pixels = plain.evaluate(plain.btjd, ROWS, COLS).flux.value
    extra = 0
    for k, column in enumerate(STRAPS):
        j = int(np.flatnonzero(COLS == column)[0])
        extra = extra + (pixels[:, mask[:, j], j].sum(axis=1) * RESPONSE_ERR[k] / RESPONSE[k]) ** 2
    expected = np.sqrt(before.flux_err.value**2 + extra)
    np.testing.assert_allclose(after.flux_err.value, expected, rtol=1e-5)
    assert np.all(after.flux_err.value > 1.01 * before.flux_err.value)  # not a rounding
    np.testing.assert_allclose(after.flux.value, before.flux.value)
    mask[:, 5:7] = False  # no strap column: nothing added
    np.testing.assert_array_equal(
        quoted.evaluate_sum(quoted.btjd, ROWS, COLS, mask=mask).flux_err.value,
        plain.evaluate_sum(plain.btjd, ROWS, COLS, mask=mask).flux_err.value,
    )


def test_the_error_round_trips_and_old_files_read_without_it(cubes, tmp_path):
    plain, quoted = cubes
    again = ScatterLightCube.read(quoted.write(tmp_path / "quoted.fits"))
    np.testing.assert_array_equal(again.strap_response_err, RESPONSE_ERR)
    old = ScatterLightCube.read(plain.write(tmp_path / "plain.fits"))
    np.testing.assert_array_equal(old.strap_response_err, [0, 0])
    assert again.compress().strap_response_err.tolist() == RESPONSE_ERR.tolist()


@pytest.mark.parametrize("value", [[0.001], [-0.001, 0.0], [np.nan, 0.0]])
def test_a_bad_error_is_refused(value):
    with pytest.raises(ValueError, match="strap_response_err"):
        make_cube(strap_column=STRAPS, strap_response=RESPONSE, strap_response_err=value)


def _sums(rng, nframes, response, noise, rows=400):
    """Per-frame sums of a strap seeing ``response`` times its reference, plus noise."""
    out = np.empty((nframes, 1, 2))
    for f in range(nframes):
        ref = (5 + 3 * f) * (1 + 0.2 * rng.standard_normal(rows))
        strap = response[f] * ref + noise * rng.standard_normal(rows)
        out[f, 0] = strap @ ref, ref @ ref
    return out


@pytest.mark.parametrize("drift", [0.0, 0.01])
def test_the_builder_error_matches_the_scatter_of_the_response(drift):
    """Over repeated noisy measurements (and a response that changes from frame to
    frame), the quoted error is the RMS of the response about its truth within 25 %."""
    rng = np.random.default_rng(1)
    nframes = 12
    wiggle = drift * rng.standard_normal(nframes)
    measured, quoted = [], []
    for _ in range(300):
        response, error, ok = strap_photometry.strap_response(
            _sums(rng, nframes, 1.04 + wiggle + drift * rng.standard_normal(nframes), 2.0)
        )
        assert ok.all()
        measured.append(response[0])
        quoted.append(error[0])
    actual = np.sqrt(np.mean((np.asarray(measured) - np.mean(measured)) ** 2))
    assert np.sqrt(np.mean(np.square(quoted))) == pytest.approx(actual, rel=0.25)


def test_unmeasured_straps_quote_nothing():
    sums = np.zeros((4, 2, 2))
    sums[:, 1] = [[2.0, 1.0], [4.0, 2.0], [2.0, 1.0], [2.0, 1.0]]
    response, error, ok = strap_photometry.strap_response(sums)
    assert ok.tolist() == [False, True]
    assert response.tolist() == [1.0, 2.0]
    assert error.tolist() == [0.0, 0.0]
