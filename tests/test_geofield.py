"""The geometry-driven simulated field (`lk_scatterlight.geofield.GeometryField`).

The ephemeris is the real JPL Horizons table of ``../shared/data`` (sectors 1-5)
and the pointing tesswcs' sector-1 WCS of camera 4 CCD 3.
"""

import numpy as np
import pytest

from lk_scatterlight import geometry, simulate
from lk_scatterlight.geofield import GeometryField

pytest.importorskip("tesswcs", reason="tesswcs (the builder extra) provides the sector WCS")

ROWS = np.arange(1.0, 2049, 37)
COLUMNS = np.arange(45.0, 2093, 41)


@pytest.fixture(scope="module")
def field(horizons):
    return GeometryField(1, 4, 3, horizons, structured=True, seed=4)


@pytest.fixture(scope="module")
def times():
    return simulate.sector_times(1)[::60]


def _logistic(x, centre, width):
    return 1 / (1 + np.exp((x - centre) / width))


def test_angles_are_the_geometry_modules(field, times, horizons):
    """Interpolating the angles over 16-px nodes costs < 1e-4 deg (measured 3e-5)."""
    angles = field.angles(times, ROWS, COLUMNS)
    row, column = np.meshgrid(ROWS, COLUMNS, indexing="ij")
    exact = geometry.compute_geometry(times, row, column, field.pointing, horizons)
    for body in geometry.BODIES:
        assert np.abs(angles[f"{body}_angle"] - exact[body].angle).max() < 1e-4
        turn = (angles[f"{body}_azimuth"] - exact[body].azimuth + 180) % 360 - 180
        assert np.abs(turn).max() < 1e-4


def test_field_is_its_documented_law(field, times, horizons):
    """Exact truth: the field is the documented function of each pixel's geometry."""
    flux = field(times, ROWS, COLUMNS)
    row, column = np.meshgrid(ROWS, COLUMNS, indexing="ij")
    geo = geometry.compute_geometry(times, row, column, field.pointing, horizons)
    orbit = field.orbit(times)
    assert set(orbit) == {0, 1}
    scale = 300 * field.orbit_scale[orbit] * (20 / geo.earth.distance) ** 2
    scale = scale[:, None, None]
    earth = scale * _logistic(geo.earth.angle, 55, 4)
    ridge = scale * 0.25 * np.exp(-0.5 * ((geo.earth.angle - 62) / 0.03) ** 2)
    moon = 40 * (60 / geo.moon.distance[:, None, None]) ** 2 * _logistic(geo.moon.angle, 20, 3)
    expected = earth + ridge + moon
    # The angles' interpolation error (3e-5 deg) times the laws' steepest slope: at most
    # 6e-4 e-/s for the smooth terms (measured 3e-4), 6e-4 of the ridge's height for it.
    assert np.abs(flux - expected).max() < 1e-3 + 1e-3 * ridge.max()
    assert flux.max() > 100  # e-/s: the Earth is close at the start of the sector
    assert flux.min() >= 0


def test_orbit_brightness_and_ridge(horizons, times):
    """One brightness factor per orbit; the ridge adds a narrow feature that moves."""
    bright = GeometryField(1, 4, 3, horizons, moon_peak=0, seed=1)
    other = GeometryField(1, 4, 3, horizons, moon_peak=0, seed=2)
    assert not np.allclose(bright.orbit_scale, other.orbit_scale)
    assert np.all(np.abs(bright.orbit_scale - 1) <= 0.2)
    ratio = bright(times, ROWS, COLUMNS) / other(times, ROWS, COLUMNS)
    orbit = bright.orbit(times)
    for k in (0, 1):
        expected = bright.orbit_scale[k] / other.orbit_scale[k]
        assert np.nanmax(np.abs(ratio[orbit == k] / expected - 1)) < 1e-12
    # Along a full column of pixels the ridge is a peak of FWHM 2.355 * 0.03 deg divided
    # by the Earth angle's gradient along the column (it crosses the column obliquely).
    plain = GeometryField(1, 4, 3, horizons, moon_peak=0)
    ridged = GeometryField(1, 4, 3, horizons, moon_peak=0, structured=True)
    rows = np.arange(1.0, 2049)
    early = simulate.sector_times(1)[30:40]  # the ridge crosses column 1000 then
    extra = ridged(early, rows, [1000.0])[..., 0] - plain(early, rows, [1000.0])[..., 0]
    k = int(np.argmax(extra.max(axis=1)))
    peak = int(np.argmax(extra[k]))
    assert extra[k, peak] > 1  # e-/s
    angle = ridged.angles(early[k : k + 1], rows[peak - 1 : peak + 2], [1000.0])["earth_angle"]
    gradient = abs(angle[0, 2, 0] - angle[0, 0, 0]) / 2  # deg per row
    width = np.sum(extra[k] > extra[k, peak] / 2)
    assert width == pytest.approx(2.355 * 0.03 / gradient, rel=0.1, abs=2)


def test_simulators_take_it(horizons):
    """FFISimulator and make_cube use the field as the smooth one; the truth is the field."""
    field = GeometryField(1, 4, 3, horizons, seed=0)
    time = simulate.sector_times(1)[40:43]
    simulator = simulate.FFISimulator(field, sector=1, camera=4, ccd=3, time=time)
    truth = simulator.truth(1)
    assert truth.shape == (2048, 2048)
    expected = field(time[1:2], [1.0, 2048.0], [45.0, 2092.0])[0]
    response = simulator.column_response[[0, -1]]
    corners = truth[[0, -1]][:, [0, -1]]
    assert corners == pytest.approx(expected * response, rel=1e-5)
    cube = simulate.make_cube(field, 1, 4, 3, pixel_bin=512, time=time, noise=0.0)
    assert cube.flux.value == pytest.approx(field(time, cube.row, cube.column), rel=1e-6)
    tpf = simulate.make_tpf(field, 600, 900, shape=(5, 5), sector=1, camera=4, ccd=3, time=time)
    injected = tpf.hdu["SL_TRUTH"].data
    assert injected == pytest.approx(field(time, 600 + np.arange(5), 900 + np.arange(5)), rel=1e-6)
