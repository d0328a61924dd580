"""Tests of ScatterLightCube: construction, FITS I/O, the tess-backml reader and evaluation."""

import os

import numpy as np
import pytest
from astropy import units as u
from astropy.io import fits
from astropy.time import Time
from cube_helpers import BIN, centres, edited, make_cube, peak_memory

from lk_scatterlight import CubeFormatError, OutsideCubeError, ScatterLightCube
from lk_scatterlight.cube import FORMAT_VERSION

META = {"creator": "test", "pixel_bin": BIN}


@pytest.fixture
def cube_file(tmp_path):
    path = tmp_path / "cube.fits"
    make_cube(meta=META).write(path)
    return path


def assert_same_cube(a, b):
    assert (a.sector, a.camera, a.ccd) == (b.sector, b.camera, b.ccd)
    assert a.shape == b.shape
    for name in ("btjd", "row", "column", "npix", "nframes"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)
    for name in ("time_start", "time_stop"):
        np.testing.assert_array_equal(getattr(a, name).value, getattr(b, name).value)
    np.testing.assert_array_equal(a.flux, b.flux)
    np.testing.assert_array_equal(a.flux_err, b.flux_err)
    assert a.meta == b.meta


# ---------------------------------------------------------------------- write / read
def test_round_trip(tmp_path):
    meta = {
        "creator": "lk_scatterlight.builder",
        "version": "1.2.3",
        "ffi_count": 1234,
        "sigma_clip": 3.5,
        "strap_columns": [70, 124],
        "options": {"mask": "straps", "smooth": None, "flag": True},
    }
    rng = np.random.default_rng(1)
    cube = make_cube(
        npix=rng.integers(200, 257, (5, 4)),
        nframes=rng.integers(1, 5, 6),
        time_start=1500.0 + 0.02 * np.arange(6) - 0.009,
        time_stop=1500.0 + 0.02 * np.arange(6) + 0.008,
        meta=meta,
    )
    path = cube.write(tmp_path / "cube.fits")
    back = ScatterLightCube.read(path)
    assert_same_cube(back, cube)
    assert back.meta == meta
    assert back.flux.dtype == np.float32
    assert back.flux_err.dtype == np.float32
    assert back.flux.unit == u.electron / u.s
    assert back.time.format == "btjd"
    assert back.time.scale == "tdb"
    assert back.pixel_bin == BIN
    with fits.open(path) as hdul:
        assert hdul[0].header["SLFORMAT"] == FORMAT_VERSION
        assert hdul["FLUX"].header["BITPIX"] == -32
        assert hdul["FLUX"].header["BUNIT"] == "electron/s"


def test_round_trip_without_meta(tmp_path):
    cube = make_cube()
    back = ScatterLightCube.read(cube.write(tmp_path / "cube.fits"))
    assert_same_cube(back, cube)
    assert back.meta == {}


def test_overwrite_false_refuses_existing_file(cube_file):
    before = cube_file.read_bytes()
    with pytest.raises(FileExistsError, match="overwrite=True"):
        make_cube(seed=5).write(cube_file)
    assert cube_file.read_bytes() == before
    make_cube(seed=5).write(cube_file, overwrite=True)
    assert_same_cube(ScatterLightCube.read(cube_file), make_cube(seed=5))


def test_write_leaves_no_temporary_file(tmp_path):
    make_cube().write(tmp_path / "cube.fits")
    make_cube(seed=2).write(tmp_path / "cube.fits", overwrite=True)
    assert os.listdir(tmp_path) == ["cube.fits"]


def test_failed_write_keeps_previous_file(cube_file, monkeypatch):
    before = cube_file.read_bytes()

    def failing_writeto(self, name, *args, **kwargs):
        with open(name, "wb") as fh:  # a partial file, then the disk fills up
            fh.write(b"SIMPLE  =                    T" + b" " * 100)
        raise OSError("No space left on device")

    monkeypatch.setattr(fits.HDUList, "writeto", failing_writeto)
    with pytest.raises(OSError, match="No space left"):
        make_cube(seed=7).write(cube_file, overwrite=True)
    monkeypatch.undo()
    assert cube_file.read_bytes() == before
    assert os.listdir(cube_file.parent) == [cube_file.name]
    assert_same_cube(ScatterLightCube.read(cube_file), make_cube(meta=META))


def test_read_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.fits"):
        ScatterLightCube.read(tmp_path / "nope.fits")


# ---------------------------------------------------------------------- malformed files
def _del_npix(h):
    del h["NPIX"]


def _short_flux_err(h):
    h["FLUX_ERR"].data = h["FLUX_ERR"].data[:-1]


def _flat_flux(h):
    h["FLUX"].data = h["FLUX"].data[0]


def _unsorted_times(h):
    h["TIME"].data["TIME"][[2, 3]] = h["TIME"].data["TIME"][[3, 2]]


def _bunit(h):
    h["FLUX"].header["BUNIT"] = "adu"


def _err_bunit(h):
    del h["FLUX_ERR"].header["BUNIT"]


def _time_unit(h):
    h["TIME"].columns["TIME"].unit = "s"


def _no_sector(h):
    del h[0].header["SECTOR"]


def _future_version(h):
    h[0].header["SLFORMAT"] = FORMAT_VERSION + 1


def _not_a_cube(h):
    del h[0].header["SLFORMAT"]


def _nan_flux(h):
    h["FLUX"].data[3, 2, 1] = np.nan


def _negative_err(h):
    h["FLUX_ERR"].data[0, 0, 0] = -1


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (_del_npix, r"missing extension\(s\) NPIX"),
        (_short_flux_err, r"FLUX has shape \(6, 5, 4\) and FLUX_ERR \(5, 5, 4\)"),
        (_flat_flux, r"FLUX has shape \(5, 4\) and FLUX_ERR \(6, 5, 4\)"),
        (_unsorted_times, "times are not strictly increasing"),
        (_bunit, "FLUX has BUNIT 'adu'"),
        (_err_bunit, "FLUX_ERR has BUNIT ''"),
        (_time_unit, "TIME column unit is 's'"),
        (_no_sector, "no SECTOR keyword"),
        (_future_version, f"format version {FORMAT_VERSION + 1}.*Upgrade"),
        (_not_a_cube, "not a scattered-light cube.*SLFORMAT"),
        (_nan_flux, "flux has 1 NaN"),
        (_negative_err, "flux_err must be finite and non-negative"),
    ],
)
def test_malformed_file(cube_file, edit, message):
    bad = edited(cube_file, cube_file.with_name("bad.fits"), edit)
    with pytest.raises(CubeFormatError, match=message):
        ScatterLightCube.read(bad)


def test_not_fits(tmp_path):
    path = tmp_path / "cube.fits"
    path.write_text("<html>404 Not Found</html>\n" * 200)
    with pytest.raises(CubeFormatError, match="cannot be read as a FITS file"):
        ScatterLightCube.read(path)


def test_a_bug_in_reading_is_not_called_a_bad_file(cube_file, monkeypatch):
    """A TypeError raised after astropy has read the headers is a programming error of
    ours: it surfaces as itself, not as "cannot be read as a FITS file"."""
    from lk_scatterlight import cubefile

    def broken(*args):
        raise TypeError("unsupported operand")

    monkeypatch.setattr(cubefile, "_read_lk", broken)
    with pytest.raises(TypeError, match="unsupported operand"):
        ScatterLightCube.read(cube_file)


@pytest.mark.parametrize("fraction", [0.05, 0.3, 0.5, 0.8])
def test_truncated_file(cube_file, fraction):
    data = cube_file.read_bytes()
    bad = cube_file.with_name("truncated.fits")
    bad.write_bytes(data[: int(len(data) * fraction)])
    with pytest.raises(CubeFormatError, match="truncated|cannot be read as a FITS file"):
        ScatterLightCube.read(bad)


def test_truncated_inside_flux_data(cube_file):
    """Cut at a FITS block boundary inside the FLUX data: astropy only warns about this."""
    with fits.open(cube_file) as hdul:
        end_of_flux = hdul.fileinfo(1)["datLoc"] + 2880
    bad = cube_file.with_name("truncated.fits")
    bad.write_bytes(cube_file.read_bytes()[: end_of_flux - 2880])
    with pytest.raises(CubeFormatError, match="truncated"):
        ScatterLightCube.read(bad)


# ---------------------------------------------------------------------- from_arrays
@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"camera": 5}, "camera must be 1-4, found 5"),
        ({"ccd": 0}, "ccd must be 1-4, found 0"),
        ({"sector": 0}, "sector must be >= 1"),
        ({"row": centres(129, 8.5)}, r"row centres 8.5..2056.5 leave the science area 1..2048"),
        ({"column": centres(4, 20.5)}, r"column centres 20.5..68.5 leave the science area"),
        ({"column": np.array([52.5, 68.5, 84.5, 110.5])}, "column centres must be uniformly"),
        ({"row": centres(5, 8.5)[::-1]}, "row centres must be uniformly spaced and increasing"),
        ({"time": 1500 + np.array([0, 0.02, 0.01, 0.03])}, "not strictly increasing"),
        ({"flux": np.ones((4, 4, 3))}, r"flux has shape \(4, 4, 3\), expected \(4, 5, 4\)"),
        ({"flux": np.full((4, 5, 4), np.nan)}, "flux has 80 NaN or infinite bins"),
        ({"flux": np.ones((4, 5, 4)) * u.adu}, "flux must be in electron/s, found adu"),
        ({"flux_err": -np.ones((4, 5, 4))}, "flux_err must be finite and non-negative"),
    ],
)
def test_from_arrays_validation(change, message):
    args = {
        "sector": 2,
        "camera": 1,
        "ccd": 1,
        "time": 1500 + 0.02 * np.arange(4),
        "row": centres(5, 8.5),
        "column": centres(4, 52.5),
        "flux": np.ones((4, 5, 4)),
        "flux_err": np.ones((4, 5, 4)),
    }
    args.update(change)
    with pytest.raises(CubeFormatError, match=message):
        ScatterLightCube.from_arrays(**args)


def test_from_arrays_accepts_time_and_quantity():
    t = Time(2458500.0 + 0.02 * np.arange(4), format="jd", scale="tdb")
    flux = np.ones((4, 5, 4)) * 3 * u.electron / u.s
    cube = ScatterLightCube.from_arrays(
        2, 1, 1, t, centres(5, 8.5), centres(4, 52.5), flux, flux / 10
    )
    np.testing.assert_allclose(cube.btjd, 1500.0 + 0.02 * np.arange(4), rtol=0, atol=1e-9)
    np.testing.assert_array_equal(cube.flux.value, 3.0)


# ---------------------------------------------------------------------- real tess-backml cube
@pytest.fixture(scope="module")
def backml(backml_cube_path):
    return ScatterLightCube.read(backml_cube_path)


def test_backml_cube_loads(backml, backml_cube_path):
    assert (backml.sector, backml.camera, backml.ccd) == (2, 1, 1)
    assert backml.shape == (20, 16, 16)
    np.testing.assert_array_equal(backml.row, 64.5 + 128 * np.arange(16))
    np.testing.assert_array_equal(backml.column, 109.5 + 128 * np.arange(16))
    with fits.open(backml_cube_path) as hdul:
        jd = np.array(hdul["TIME"].data["time"])
        data = np.array(hdul["SCATTER LIGHT CUBE"].data)
    np.testing.assert_array_equal(backml.btjd, jd - 2457000)
    np.testing.assert_array_equal(backml.flux.value, data.T[0])
    np.testing.assert_array_equal(backml.flux_err.value, data.T[1])
    # 2-hour planes, each extending one hour either side of its centre
    np.testing.assert_allclose(backml.time_stop.value - backml.time_start.value, 2 / 24, rtol=1e-6)
    assert backml.meta["source_format"] == "tess-backml"
    assert backml.pixel_bin == 128


def test_backml_cube_at_its_bin_centres(backml):
    ev = backml.evaluate(backml.btjd, backml.row, backml.column)
    assert ev.valid.all()
    assert np.all(np.isfinite(ev.flux))
    np.testing.assert_allclose(ev.flux.value, backml.flux.value, rtol=1e-12, atol=0)
    np.testing.assert_allclose(ev.flux_err.value, backml.flux_err.value, rtol=1e-12, atol=0)


def test_backml_cube_on_a_tpf_grid(backml):
    rows, columns = 1000 + np.arange(11), 600 + np.arange(11)
    t = np.linspace(backml.time_start.value[0], backml.time_stop.value[-1], 241)
    ev = backml.evaluate(t, rows, columns)
    assert ev.flux.shape == (241, 11, 11)
    assert ev.valid.all()
    flux = ev.flux.to_value(u.electron / u.s)
    assert np.all(np.isfinite(flux))
    assert np.all(np.isfinite(ev.flux_err))
    stored = backml.flux.value
    spread = stored.max() - stored.min()  # -0.9..4.8 e-/s
    assert flux.min() > stored.min() - 0.25 * spread
    assert flux.max() < stored.max() + 0.25 * spread
    # BTJD floats and astropy Time agree (to the ~0.1 us resolution of a JD float)
    ev_time = backml.evaluate(Time(t + 2457000, format="jd", scale="tdb"), rows, columns)
    np.testing.assert_allclose(ev_time.flux, ev.flux, rtol=1e-6)  # float32 output


# ---------------------------------------------------------------------- exactness
def test_evaluate_exact_for_smooth_field():
    """A field quadratic in row and column, times linear in time, is reproduced exactly.

    The only error is the float32 storage of the cube: 2**-24 ~ 6e-8 relative per
    bin. At the science-area edges the quadratic extrapolation has weights whose
    absolute values sum to ~3.3 per axis (~11 in 2-D), and the field varies by less
    than +-15% around its mean, so the relative error stays below ~1e-6 (the
    tolerance used here); between centres it is several times smaller.
    """
    nrow = ncol = 128
    row_c, col_c = centres(nrow, 8.5), centres(ncol, 52.5)
    t_c = 1500.0 + np.array([0.0, 0.1, 0.2, 0.35, 0.45])

    def field(t, r, c):
        x = (r[:, None] - 1024.5) / 1024  # -1..1 over the CCD
        y = (c[None, :] - 1068.5) / 1024
        space = 100 * (1 + 0.04 * x - 0.03 * y + 0.03 * x**2 - 0.02 * x * y + 0.02 * y**2)
        return space[None] * (1 + 0.5 * (t[:, None, None] - 1500.0))

    cube = make_cube(
        nrow=nrow,
        ncol=ncol,
        time=t_c,
        flux=field(t_c, row_c, col_c),
        flux_err=np.ones((5, nrow, ncol)),
    )
    rows = np.concatenate([[1, 1.5, 2, 8.5, 9], np.linspace(8.5, 2040.5, 50), [2047, 2048]])
    cols = np.concatenate([[45, 46, 52.5, 60], np.linspace(52.5, 2084.5, 50), [2091, 2092]])
    t = np.concatenate([t_c, np.linspace(t_c[0], t_c[-1], 23)])
    ev = cube.evaluate(t, rows, cols)
    np.testing.assert_allclose(ev.flux.value, field(t, rows, cols), rtol=1e-6, atol=0)


# ---------------------------------------------------------------------- time interpolation
def test_no_overshoot_in_time():
    cube = make_cube(nt=8, seed=3)
    rows, cols = np.array([5.0, 20.0, 37.3]), np.array([45.0, 61.7, 90.0])
    planes = cube.evaluate(cube.btjd, rows, cols).flux.value
    for i in range(cube.shape[0] - 1):
        w = np.linspace(0, 1, 11)
        t = cube.btjd[i] + w * (cube.btjd[i + 1] - cube.btjd[i])
        between = cube.evaluate(t, rows, cols).flux.value
        lo = np.minimum(planes[i], planes[i + 1])
        hi = np.maximum(planes[i], planes[i + 1])
        assert np.all(between >= lo - 1e-5 * np.abs(hi))
        assert np.all(between <= hi + 1e-5 * np.abs(hi))
        linear = (1 - w[:, None, None]) * planes[i] + w[:, None, None] * planes[i + 1]
        np.testing.assert_allclose(
            between, linear, rtol=1e-6, atol=1e-6 * np.abs(planes).max()
        )  # float32


@pytest.fixture(scope="module")
def gap_cube():
    """Planes every 0.02 d: 30 of them, a 1-day orbit gap, 30 more (default extents)."""
    t = np.concatenate([1500 + 0.02 * np.arange(30), 1501.58 + 0.02 * np.arange(30)])
    flux = np.random.default_rng(4).uniform(10, 20, (60, 5, 4))
    return make_cube(time=t, flux=flux, flux_err=np.full(flux.shape, 0.3))


ROWS, COLS = np.array([3.0, 30.0]), np.array([50.0, 71.0])


@pytest.mark.parametrize(
    "t",
    [1500.6, 1501.0, 1501.56, 1499.989, 1500.0 - 1, 1502.171, 1503.0],
    ids=["gap-start", "gap-middle", "gap-end", "before-start", "day-before", "after-stop", "later"],
)
def test_times_outside_coverage(gap_cube, t):
    with pytest.raises(OutsideCubeError, match="bounds='nan'"):
        gap_cube.evaluate([1500.1, t], ROWS, COLS)
    ev = gap_cube.evaluate([1500.1, t, 1502.0], ROWS, COLS, bounds="nan")
    np.testing.assert_array_equal(ev.valid, [True, False, True])
    assert np.all(np.isnan(ev.flux[1]))
    assert np.all(np.isnan(ev.flux_err[1]))
    assert np.all(np.isfinite(ev.flux[[0, 2]]))
    assert np.all(np.isfinite(ev.flux_err[[0, 2]]))


@pytest.mark.parametrize(
    ("t", "plane"),
    [(1499.991, 0), (1500.589, 29), (1501.571, 30), (1502.169, 59), (1500.58, 29)],
)
def test_segment_edges_hold_edge_plane(gap_cube, t, plane):
    """Within half a plane outside a segment's first/last centre the edge plane is held."""
    ev = gap_cube.evaluate([t], ROWS, COLS)
    assert ev.valid.all()
    at_plane = gap_cube.evaluate([gap_cube.btjd[plane]], ROWS, COLS)
    np.testing.assert_allclose(ev.flux, at_plane.flux, rtol=1e-12)
    np.testing.assert_allclose(ev.flux_err, at_plane.flux_err, rtol=1e-12)


def test_max_gap_argument_bridges_gap(gap_cube):
    ev = gap_cube.evaluate([1501.0], ROWS, COLS, max_gap=2.0)
    assert ev.valid.all()


def test_single_dropped_plane_is_bridged():
    t = np.delete(1500 + 0.02 * np.arange(20), 10)  # plane at 1500.20 missing
    rng = np.random.default_rng(6)
    cube = make_cube(
        time=t, flux=rng.uniform(10, 20, (19, 5, 4)), flux_err=np.full((19, 5, 4), 0.3)
    )
    ev = cube.evaluate([1500.19, 1500.20, 1500.21], ROWS, COLS)
    assert ev.valid.all()
    neighbours = cube.evaluate([1500.18, 1500.22], ROWS, COLS).flux
    np.testing.assert_allclose(ev.flux[1], neighbours.mean(axis=0), rtol=1e-12)


# ---------------------------------------------------------------------- pixels, bounds
@pytest.mark.parametrize(
    ("rows", "cols", "message"),
    [
        ([0, 1, 2], [100], "rows 0..0 are outside the science area"),
        ([2047, 2048, 2049], [100], "rows 2049..2049 are outside"),
        ([10], [44, 45], "columns 44..44 are outside"),
        ([10], [2092, 2093], "columns 2093..2093 are outside"),
        ([np.nan], [100], "rows nan..nan are outside"),
    ],
)
def test_pixels_outside_science_area(rows, cols, message):
    cube = make_cube(nrow=128, ncol=128, nt=2)
    with pytest.raises(OutsideCubeError, match=message):
        cube.evaluate([1500.01], rows, cols)


def test_bad_bounds():
    with pytest.raises(ValueError, match="bounds must be 'raise' or 'nan'"):
        make_cube().evaluate([1500.01], [10], [60], bounds="clip")


# ---------------------------------------------------------------------- uncertainties
@pytest.mark.slow
def test_flux_err_matches_monte_carlo():
    """Propagated errors equal the scatter of evaluations of noisy cube realisations.

    4000 realisations: the empirical standard deviation is good to ~1.1%; the
    tolerance is 5%.
    """
    rng = np.random.default_rng(42)
    shape = (3, 6, 6)
    t = 1500 + 0.02 * np.arange(3)
    row_c, col_c = centres(6, 8.5), centres(6, 52.5)
    mean = rng.uniform(10, 20, shape)
    err = rng.uniform(0.5, 2.0, shape).astype(np.float32)
    times = [1500.006, 1500.03]  # weights 0.3/0.7 and 0.5/0.5 in time
    rows = np.array([1.0, 20.0, 40.5])  # science edge, between centres, at a centre
    cols = np.array([45.0, 61.0, 80.0])
    expected = ScatterLightCube.from_arrays(2, 1, 1, t, row_c, col_c, mean, err).evaluate(
        times, rows, cols
    )
    draws = np.array(
        [
            ScatterLightCube.from_arrays(
                2, 1, 1, t, row_c, col_c, mean + err * rng.standard_normal(shape), err
            )
            .evaluate(times, rows, cols)
            .flux.value
            for _ in range(4000)
        ]
    )
    np.testing.assert_allclose(draws.std(axis=0, ddof=1), expected.flux_err.value, rtol=0.05)
    np.testing.assert_allclose(draws.mean(axis=0), expected.flux.value, rtol=5e-3)


# ---------------------------------------------------------------------- lazy reading
@pytest.fixture(scope="module")
def big_cube(tmp_path_factory):
    """300 planes x 128 x 128 bins (4.9 M float32 values), in memory and on disk."""
    nt = 300
    t = 1500 + 2 / 24 * np.arange(nt)
    rng = np.random.default_rng(8)
    x = np.linspace(-1, 1, 128)
    space = 50 + 10 * x[:, None] ** 2 + 5 * x[None, :]
    flux = (space[None] * (1 + 0.3 * np.sin(t / 3))[:, None, None]).astype(np.float32)
    flux += rng.normal(0, 0.1, flux.shape).astype(np.float32)
    cube = make_cube(
        nrow=128, ncol=128, time=t, flux=flux, flux_err=np.full(flux.shape, 0.2, np.float32)
    )
    path = cube.write(tmp_path_factory.mktemp("big") / "big.fits")
    return cube, path


def test_large_file_is_read_lazily(big_cube):
    cube, path = big_cube
    lazy = ScatterLightCube.read(path)
    assert type(lazy._flux).__name__ == "_FitsImage"
    assert type(lazy._flux_err).__name__ == "_FitsImage"
    t = np.linspace(1500.0, 1500 + 299 * 2 / 24, 100)
    rows, cols = 1000 + np.arange(25), 1000 + np.arange(25)

    ev, peak = peak_memory(lambda: lazy.evaluate(t, rows, cols))

    expected = cube.evaluate(t, rows, cols)
    np.testing.assert_array_equal(ev.flux, expected.flux)
    np.testing.assert_array_equal(ev.flux_err, expected.flux_err)
    assert type(lazy._flux).__name__ == "_FitsImage"  # evaluate did not load the cube
    # Loading flux and flux_err would take 2 x 19.7 MB; evaluate needs ~4 MB here: its two
    # 0.5 MB outputs, the interpolated planes (2 x 1.5 MB) and the few rows it reads.
    assert peak < 0.25 * 2 * 4 * np.prod(cube.shape)
    np.testing.assert_array_equal(lazy.flux, cube.flux)  # loads on access
