"""Tests of compact (low-rank) cubes: compression, rank rule, error model, FITS encoding,
evaluation."""

import logging

import numpy as np
import pytest
from astropy.io import fits
from cube_helpers import copy_of, edited, make_cube, peak_memory

from lk_scatterlight import CubeFormatError, ScatterLightCorrector, ScatterLightCube, simulate
from lk_scatterlight.cli import main
from lk_scatterlight.cube import FORMAT_VERSION, CompressionInfo
from lk_scatterlight.lowrank import ERROR_BITS, PRECISION

ROWS = 1000 + np.arange(25)  # a 25 x 25 TPF grid, 1-based CCD pixels
COLS = 1000 + np.arange(25)


def low_rank_cube(rank, nt=200, nrow=20, ncol=20, noise=0.0, seed=0, err=None):
    """mean + sum of ``rank`` products of a random series and a random image, every
    component with an RMS of at least 2 e-/s per bin, plus Gaussian noise ``noise``."""
    rng = np.random.default_rng(seed)
    mean = rng.uniform(50, 100, (nrow, ncol))
    series = rng.normal(size=(nt, rank))
    images = rng.normal(size=(rank, nrow, ncol))
    amplitude = np.linspace(20, 2, rank) if rank else np.zeros(0)
    flux = mean + np.einsum("ti,i,irc->trc", series, amplitude, images)
    flux += rng.normal(0, noise, flux.shape) if noise else 0
    flux_err = np.full(flux.shape, noise) if err is None else err
    return make_cube(nt, nrow, ncol, flux=flux.astype(np.float32), flux_err=flux_err)


@pytest.fixture(scope="module")
def dense(field):
    """A simulated sector (1,267 planes of 30 min, 32 x 32 bins of 64 px), with two straps."""
    cube = simulate.make_cube(field, sector=1, pixel_bin=64, noise=0.05, seed=3)
    return copy_of(
        cube,
        npix=cube.npix,
        meta=cube.meta,
        strap_column=[1003, 1010],
        strap_response=[1.04, 1.02],
    )


@pytest.fixture(scope="module")
def compact(dense):
    return dense.compress()


@pytest.fixture(scope="module")
def compact_file(compact, tmp_path_factory):
    return compact.write(tmp_path_factory.mktemp("compact") / "compact.fits")


def same_info(a, b):
    """Equal up to the ~16 significant digits of a FITS header card."""
    return tuple(a) == pytest.approx(tuple(b), rel=1e-14, abs=0)


def rms(x):
    return float(np.sqrt(np.mean(np.square(x))))


# ---------------------------------------------------------------------- compression
def test_compress_reports_rank_and_accuracy(dense, compact):
    info = compact.compression
    assert isinstance(info, CompressionInfo)
    assert compact.is_compact
    assert not dense.is_compact
    assert dense.rank is None
    assert dense.compression is None
    assert compact.rank == info.rank
    assert 1 <= info.rank <= 64
    assert (info.tolerance, info.max_rank) == (0.01, 64)
    assert info.noise_rms == pytest.approx(0.05, rel=1e-6)
    # The rank rule, and the residual it reports, hold for the stored factors.
    residual = compact.flux.value - dense.flux.value
    assert info.residual_rms <= 1.01 * info.noise_rms
    assert rms(residual) == pytest.approx(info.residual_rms, rel=1e-4)
    assert np.abs(residual).max() == pytest.approx(info.residual_max, rel=1e-4)
    assert info.truncation_rms < 0.3 * info.noise_rms
    assert info.err_model_max < 1e-5  # flux_err is uniform: rank 1 is exact
    # Sharing everything but the flux.
    for name in ("btjd", "row", "column", "npix", "nframes", "strap_column", "strap_response"):
        np.testing.assert_array_equal(getattr(compact, name), getattr(dense, name))
    assert compact.meta == dense.meta
    assert compact.compress() is compact


def test_compact_is_closer_to_truth_than_dense(field, dense, compact):
    """Truncation removes noise: the compact cube is nearer the noiseless field."""
    truth = field(dense.btjd, dense.row, dense.column)
    assert rms(compact.flux.value - truth) < 0.5 * rms(dense.flux.value - truth)


def test_compact_errors_are_honest(field, dense, compact):
    """The compact flux_err is the error the reconstruction has against the noiseless field:
    the truncation keeps only a small part of the dense cube's noise, and says so."""
    truth = field(dense.btjd, dense.row, dense.column)
    actual = compact.flux.value - truth
    assert 0.85 < rms(actual) / rms(compact.flux_err.value) < 1.2
    # Far below the dense cube's noise, which the dense errors describe.
    assert rms(compact.flux_err.value) < 0.3 * rms(dense.flux_err.value)
    assert 0.85 < rms(dense.flux.value - truth) / rms(dense.flux_err.value) < 1.15
    # Evaluated at TPF pixels between planes (time interpolation included) and summed over an
    # aperture, against the same evaluation of the noiseless cube, pooled over 12 TPFs (one
    # TPF sees few independent errors: the kept noise is smooth in time).
    noiseless = copy_of(dense, flux=truth.astype(np.float32))
    t = np.linspace(dense.btjd[0], dense.btjd[-1], 1000)
    rng = np.random.default_rng(0)
    mask = np.zeros((15, 15), bool)
    mask[6:9, 6:9] = True
    pixel, total = [], []
    for row, column in zip(rng.integers(40, 1990, 12), rng.integers(90, 2030, 12), strict=True):
        rows, columns = row + np.arange(15), column + np.arange(15)
        got = compact.evaluate(t, rows, columns, bounds="nan")
        want = noiseless.evaluate(t, rows, columns, bounds="nan")
        ok = got.valid
        pixel.append(((got.flux - want.flux).value[ok], got.flux_err.value[ok]))
        got = compact.evaluate_sum(t, rows, columns, mask, bounds="nan")
        want = noiseless.evaluate_sum(t, rows, columns, mask, bounds="nan")
        total.append(((got.flux - want.flux).value[ok], got.flux_err.value[ok]))
    for pairs in (pixel, total):
        actual, quoted = (np.concatenate([p[i].ravel() for p in pairs]) for i in (0, 1))
        assert 0.8 < rms(actual) / rms(quoted) < 1.25


@pytest.mark.parametrize("shape", [(200, 20, 20), (300, 64, 64), (1000, 6, 6), (50, 30, 30)])
def test_noise_projection_of_varying_errors(shape):
    """Errors err = s(t) e(r, c) on a rank-3 cube: the compact errors match the actual ones,
    overall, on the planes the components weigh most and in the bins they weigh most."""
    nt, nrow, ncol = shape
    rng = np.random.default_rng(sum(shape))
    s, e = rng.uniform(0.5, 2, nt), rng.uniform(0.1, 0.3, (nrow, ncol))
    err = s[:, None, None] * e[None]
    truth = low_rank_cube(3, nt, nrow, ncol, seed=sum(shape)).flux.value.astype(float)
    flux = truth + err * rng.normal(size=truth.shape)
    compact = make_cube(nt, nrow, ncol, flux=flux.astype(np.float32), flux_err=err).compress()
    assert compact.rank == 3
    actual, quoted = compact.flux.value - truth, compact.flux_err.value
    assert 0.85 < rms(actual) / rms(quoted) < 1.15
    lowrank = compact._lowrank
    leverage = lowrank.err_time[:, 0] / s**2  # the planes the temporal components weigh most
    top = leverage >= np.percentile(leverage, 80)
    assert 0.75 < rms(actual[top]) / rms(quoted[top]) < 1.3
    spatial = lowrank.err_space**2 / lowrank.err_image**2
    top = spatial >= np.percentile(spatial, 80)
    assert 0.75 < rms(actual[:, top]) / rms(quoted[:, top]) < 1.3


@pytest.mark.parametrize("rank", [1, 3, 6])
@pytest.mark.parametrize("shape", [(200, 20, 20), (300, 64, 64)], ids=["exact", "randomised"])
def test_rank_of_noisy_low_rank_cube(rank, shape):
    nt, nrow, ncol = shape
    cube = low_rank_cube(rank, nt, nrow, ncol, noise=0.5, seed=rank)
    assert cube.compress().rank == rank


@pytest.mark.parametrize("rank", [0, 2, 5])
@pytest.mark.parametrize("shape", [(200, 20, 20), (300, 64, 64)], ids=["exact", "randomised"])
def test_noiseless_low_rank_cube_is_exact(rank, shape):
    cube = low_rank_cube(rank, *shape)
    compact = cube.compress()
    assert compact.rank == rank
    flux = cube.flux.value
    scale = np.abs(flux).max()
    np.testing.assert_allclose(compact.flux.value, flux, rtol=0, atol=4e-7 * scale)  # float32
    assert compact.compression.residual_rms < 1e-7 * scale
    assert compact.compression.truncation_rms < 1e-7 * scale
    assert compact.flux_err.value.max() < 1e-7 * scale  # the float32 round-off


def test_rank_cap(caplog):
    cube = low_rank_cube(6, noise=0.5)
    with caplog.at_level(logging.WARNING, logger="lk_scatterlight.cube"):
        compact = cube.compress(max_rank=3)
    assert compact.rank == 3
    assert "above the target" in caplog.text
    info = compact.compression
    assert info.residual_rms > 1.01 * info.noise_rms
    # the dropped signal is accounted for in the errors
    assert info.truncation_rms > 0.5 * np.sqrt(info.residual_rms**2 - info.noise_rms**2)


def test_error_model_of_varying_errors():
    """err = s(t) e(r, c) exactly, then with 1% scatter: the model's accuracy is reported."""
    rng = np.random.default_rng(5)
    s, e = rng.uniform(0.5, 2, 200), rng.uniform(0.1, 0.3, (20, 20))
    err = s[:, None, None] * e[None]
    lowrank = low_rank_cube(2, noise=0.2, err=err).compress()._lowrank
    dense_model = lowrank.err_scale[:, None, None] * lowrank.err_image[None]
    np.testing.assert_allclose(dense_model, err, rtol=1e-5)
    scatter = err * rng.uniform(0.99, 1.01, err.shape)
    info = low_rank_cube(2, noise=0.2, err=scatter).compress().compression
    assert 0.003 < info.err_model_rms < 0.01
    assert 0.005 < info.err_model_max < 0.03


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"tolerance": -0.1}, "tolerance must be >= 0"), ({"max_rank": 2.5}, "max_rank must be")],
)
def test_compress_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        low_rank_cube(1).compress(**kwargs)


# ---------------------------------------------------------------------- evaluation
def tpf_times(cube, n=3000):
    """Times across the whole cube, including its orbit gap and a little outside it."""
    return np.linspace(cube.time_start.value[0] - 0.05, cube.time_stop.value[-1] + 0.05, n)


def test_evaluate_equals_evaluating_the_reconstruction(compact):
    """The factorised evaluation is the evaluation of the reconstructed cube."""
    reconstructed = copy_of(compact)
    t = tpf_times(compact)
    got = compact.evaluate(t, ROWS, COLS, bounds="nan")
    want = reconstructed.evaluate(t, ROWS, COLS, bounds="nan")
    np.testing.assert_array_equal(got.valid, want.valid)
    assert not got.valid.all()
    assert got.valid.any()
    assert got.flux.dtype == np.float32
    assert got.flux_err.dtype == np.float32
    assert np.all(np.isnan(got.flux[~got.valid]))
    assert np.all(np.isnan(got.flux_err[~got.valid]))
    scale = np.nanmax(np.abs(want.flux.value))
    np.testing.assert_allclose(got.flux.value, want.flux.value, rtol=0, atol=2e-6 * scale)
    # A dense cube's errors are independent between planes and bins; the compact cube's
    # kept noise and dropped signal are correlated in time or space and add linearly there
    # (`evaluate_factors`): never smaller, at most twice as large with bilinear weights.
    ratio = got.flux_err.value[got.valid] / want.flux_err.value[got.valid]
    assert ratio.min() >= 1 - 2e-5
    assert ratio.max() <= 2
    mask = np.zeros((25, 25), bool)
    mask[8:15, 2:9] = True  # includes the strap columns 1003 and 1010 (responses != 1)
    got = compact.evaluate_sum(t, ROWS, COLS, mask, bounds="nan")
    want = reconstructed.evaluate_sum(t, ROWS, COLS, mask, bounds="nan")
    np.testing.assert_array_equal(got.valid, want.valid)
    # float64 factors vs the float32 reconstruction
    np.testing.assert_allclose(got.flux.value, want.flux.value, rtol=2e-6)
    assert np.all(got.flux_err.value[got.valid] >= want.flux_err.value[got.valid] * (1 - 2e-6))


def test_evaluate_compact_vs_dense(dense, compact):
    """Compact and dense evaluations differ by less than the noise the truncation removed,
    and the compact errors are smaller than the dense ones (it removed most of the noise)."""
    info = compact.compression
    t = tpf_times(dense)
    a = dense.evaluate(t, ROWS, COLS, bounds="nan")
    b = compact.evaluate(t, ROWS, COLS, bounds="nan")
    np.testing.assert_array_equal(a.valid, b.valid)
    diff = (b.flux - a.flux).value[a.valid]
    assert rms(diff) < (1 + info.tolerance) * info.noise_rms
    ratio = (b.flux_err / a.flux_err).value[a.valid]
    assert np.all(ratio < 0.6)
    floor = compact._lowrank.err_trunc.min()  # the truncation term, per bin
    assert np.all(b.flux_err.value[b.valid] >= floor * (1 - 1e-5))
    sa = dense.evaluate_sum(t, ROWS, COLS, bounds="nan")
    sb = compact.evaluate_sum(t, ROWS, COLS, bounds="nan")
    np.testing.assert_array_equal(sa.valid, sb.valid)
    # The aperture sums differ by about their propagated (noise) error.
    assert rms((sb.flux - sa.flux).value[sa.valid]) < 1.5 * np.nanmedian(sa.flux_err.value)
    assert np.all(sb.flux_err.value[sb.valid] < 0.6 * sa.flux_err.value[sa.valid])


def test_evaluate_does_not_reconstruct_the_cube(compact_file):
    cube = ScatterLightCube.read(compact_file)
    t = np.linspace(cube.btjd[0], cube.btjd[300], 20_000)
    ev, peak = peak_memory(lambda: cube.evaluate(t, ROWS, COLS))
    output = ev.flux.nbytes + ev.flux_err.nbytes  # 2 x 50 MB
    assert peak < 1.1 * output
    assert type(cube._flux).__name__ == "Factored"
    assert type(cube._flux_err).__name__ == "Factored"


# ---------------------------------------------------------------------- files
def test_compact_file_round_trip(dense, compact, compact_file, tmp_path):
    """The file keeps the error model within its rounding (`error_step`: < 0.2 %) and
    the flux within the rounding of its factors (`LowRank.quantum`: RMS <= 5 % of the
    quoted error at every bin)."""
    back = ScatterLightCube.read(compact_file)
    assert back.is_compact
    assert same_info(back.compression, compact.compression)
    np.testing.assert_allclose(back.flux_err, compact.flux_err, rtol=2.0**-ERROR_BITS)
    assert np.any(back.flux_err != compact.flux_err)  # really rounded
    ratio = (back.flux - compact.flux).value / compact.flux_err.value
    assert rms(ratio) <= PRECISION
    assert np.sqrt(np.mean(ratio**2, axis=0)).max() <= 1.5 * PRECISION
    assert rms(ratio) > 0  # really rounded
    for name in ("btjd", "row", "column", "npix", "nframes", "strap_column", "strap_response"):
        np.testing.assert_array_equal(getattr(back, name), getattr(dense, name))
    assert back.meta == dense.meta
    with fits.open(compact_file) as hdul:
        h = hdul[0].header
        assert (h["SLFORMAT"], h["SLENCODE"]) == (FORMAT_VERSION, "LOWRANK")
        assert h["SLRANK"] == compact.rank
        assert h["SLTOL"] == 0.01
        assert h["SLRESRMS"] == compact.compression.residual_rms
        assert "FLUX" not in hdul
        assert "FLUX_ERR" not in hdul
        assert hdul["FLUX_COMP"].shape == (compact.rank, 32, 32)
        assert hdul["FLUX_COEF"].shape == (1267, compact.rank)
        assert hdul["FLUX_COMP"].data.dtype == hdul["FLUX_COEF"].data.dtype == np.int32
        assert len(hdul["FLUX_SCALE"].data) == compact.rank
    dense_file = dense.write(tmp_path / "dense.fits")
    assert compact_file.stat().st_size < 0.1 * dense_file.stat().st_size


@pytest.mark.parametrize("precision", [0.05, 0.2])
def test_rounding_bound(compact, precision):
    """Factors rounded to the steps of ``quantum`` change the flux by less than
    ``precision`` times the quoted error (RMS over planes, every bin; the bound is
    on the expected RMS, which one rounding scatters a little)."""
    lowrank = compact._lowrank
    comp_step, coef_step = lowrank.quantum(precision)
    comp = np.rint(lowrank.components / comp_step[:, None, None]) * comp_step[:, None, None]
    coef = np.rint(lowrank.coefficients / coef_step) * coef_step
    k = lowrank.rank
    exact = lowrank.coefficients.astype(float) @ lowrank.components.reshape(k, -1)
    diff = (coef @ comp.reshape(k, -1) - exact).reshape(compact.shape)
    ratio = np.sqrt(np.mean((diff / compact.flux_err.value) ** 2, axis=0))
    assert ratio.max() <= 1.5 * precision
    assert ratio.max() >= 0.2 * precision  # the steps use the budget, not far finer


def test_float_factors_still_read(compact, compact_file, tmp_path):
    """Files from before the rounded factors (float32 FLUX_COMP, FLUX_COEF, ERR_IMAGE,
    ERR_SPACE and ERR_TRUNC, no FLUX_SCALE) read exactly."""
    lowrank = compact._lowrank

    def to_float(hdul):
        del hdul["FLUX_SCALE"]
        for name in ("ERR_IMAGE", "ERR_SPACE", "ERR_TRUNC"):
            image = fits.ImageHDU(getattr(lowrank, name.lower()), name=name)
            image.header["BUNIT"] = "electron/s"
            hdul[name] = image
        hdul["FLUX_COMP"] = fits.ImageHDU(lowrank.components, name="FLUX_COMP")
        coef = fits.ImageHDU(lowrank.coefficients, name="FLUX_COEF")
        coef.header["BUNIT"] = "electron/s"
        hdul["FLUX_COEF"] = coef

    back = ScatterLightCube.read(edited(compact_file, tmp_path / "float.fits", to_float))
    np.testing.assert_array_equal(back.flux, compact.flux)
    np.testing.assert_array_equal(back.flux_err, compact.flux_err)


def test_truncated_compact_file(compact_file, tmp_path):
    """A file cut inside its compressed factors: a format error, not a misread."""
    with fits.open(compact_file) as hdul:
        cut = hdul.fileinfo(hdul.index_of("FLUX_COMP"))["datLoc"] + 2000
    bad = tmp_path / "cut.fits"
    bad.write_bytes(compact_file.read_bytes()[:cut])
    with pytest.raises(CubeFormatError, match="truncated or corrupt|cannot be read"):
        ScatterLightCube.read(bad)


def test_write_encoding_choice(dense, compact, tmp_path):
    """compact=None keeps the cube's form; True compresses a dense cube; False reconstructs."""
    path = dense.write(tmp_path / "a.fits")
    with fits.open(path) as hdul:
        assert hdul[0].header["SLENCODE"] == "DENSE"
    back = ScatterLightCube.read(path)
    assert not back.is_compact
    np.testing.assert_array_equal(back.flux, dense.flux)

    back = ScatterLightCube.read(dense.write(tmp_path / "b.fits", compact=True))
    assert back.is_compact
    assert same_info(back.compression, compact.compression)

    back = ScatterLightCube.read(compact.write(tmp_path / "c.fits", compact=False))
    assert not back.is_compact
    np.testing.assert_array_equal(back.flux, compact.flux)
    np.testing.assert_array_equal(back.flux_err, compact.flux_err)


def test_rank_zero_file(tmp_path):
    cube = low_rank_cube(0).compress()
    back = ScatterLightCube.read(cube.write(tmp_path / "flat.fits"))
    assert back.rank == 0
    np.testing.assert_array_equal(back.flux, cube.flux)


def test_v1_file_still_reads(tmp_path):
    cube = low_rank_cube(2, noise=0.1)

    def to_v1(hdul):
        hdul[0].header["SLFORMAT"] = 1
        del hdul[0].header["SLENCODE"]

    v1 = edited(cube.write(tmp_path / "v2.fits"), tmp_path / "v1.fits", to_v1)
    back = ScatterLightCube.read(v1)
    assert not back.is_compact
    np.testing.assert_array_equal(back.flux, cube.flux)
    assert back.compress().rank == 2


def test_tess_backml_file_still_reads(backml_cube_path, tmp_path):
    cube = ScatterLightCube.read(backml_cube_path)
    assert not cube.is_compact
    assert cube.rank is None
    compact = cube.compress()
    assert compact.compression.residual_rms <= 1.01 * compact.compression.noise_rms
    back = ScatterLightCube.read(compact.write(tmp_path / "backml.fits"))
    ev = back.evaluate(cube.btjd, cube.row, cube.column)
    # Within the rounding of the stored factors (5 % of the quoted error, RMS).
    ratio = (ev.flux.value - compact.flux.value) / compact.flux_err.value
    assert rms(ratio) <= PRECISION
    np.testing.assert_allclose(ev.flux_err.value, compact.flux_err.value, rtol=2.0**-ERROR_BITS)


def _set(key, value):
    def edit(h):
        h[0].header[key] = value

    return edit


def _delete_card(key):
    def edit(h):
        del h[0].header[key]

    return edit


def _delete_hdu(name):
    def edit(h):
        del h[name]

    return edit


def _nan_component(h):
    h["FLUX_SCALE"].data["COMP"][0] = np.nan


def _error_without_step(h):
    del h["ERR_SPACE"].header["ERRSTEP"]


def _integer_without_scale(h):
    del h["FLUX_SCALE"]


def _short_scale(h):
    h["FLUX_SCALE"] = fits.BinTableHDU.from_columns(
        [fits.Column("COMP", "D", array=[1.0]), fits.Column("COEF", "D", array=[1.0])],
        name="FLUX_SCALE",
    )


def _negative_error(h):
    h["ERR_SCALE"].data[3] = -1


def _short_coefficients(h):
    h["FLUX_COEF"].data = h["FLUX_COEF"].data[:-1]


def _flat_mean(h):
    h["FLUX_MEAN"].data = h["FLUX_MEAN"].data.ravel()


def _mean_unit(h):
    h["FLUX_MEAN"].header["BUNIT"] = "adu"


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (_set("SLENCODE", "WAVELET"), "encoding SLENCODE = 'WAVELET'.*DENSE, LOWRANK"),
        (_delete_card("SLENCODE"), "encoding SLENCODE = None"),
        (_set("SLFORMAT", FORMAT_VERSION + 1), "format version 3.*reads versions 1..2"),
        (_delete_hdu("FLUX_COEF"), r"LOWRANK encoding\) is missing extension\(s\) FLUX_COEF"),
        (_delete_hdu("ERR_SCALE"), r"missing extension\(s\) ERR_SCALE"),
        (_delete_card("SLTRUNC"), "needs the primary keyword SLTRUNC"),
        (_set("SLRANK", 1.5), "needs the primary keyword SLRANK \\(an integer\\)"),
        (_set("SLRANK", 99), "the rank is recorded as 99 but there are 2 components"),
        (_nan_component, "components (has|have) NaN"),
        (_integer_without_scale, "FLUX_COMP holds integers but the file has no FLUX_SCALE"),
        (_error_without_step, "ERR_SPACE holds integers but no positive ERRSTEP"),
        (_short_scale, "FLUX_SCALE must be a table .* one row per component in FLUX_COMP \\(2\\)"),
        (_negative_error, "error factors must be non-negative"),
        (_delete_hdu("ERR_SPACE"), "has ERR_TIME without ERR_SPACE; the file is damaged"),
        (_short_coefficients, r"error scale has shape \(200,\), expected \(199,\)"),
        (_flat_mean, "FLUX_MEAN has shape \\(400,\\); the LOWRANK encoding needs 2 axes"),
        (_mean_unit, "FLUX_MEAN has BUNIT 'adu'"),
    ],
)
def test_malformed_compact_file(tmp_path, edit, message):
    path = low_rank_cube(2, noise=0.1).compress().write(tmp_path / "good.fits")
    bad = edited(path, tmp_path / "bad.fits", edit)
    with pytest.raises(CubeFormatError, match=message):
        ScatterLightCube.read(bad)


def test_dense_v2_file_needs_flux(tmp_path):
    path = low_rank_cube(1).write(tmp_path / "dense.fits")
    bad = edited(path, tmp_path / "bad.fits", _delete_hdu("FLUX_ERR"))
    with pytest.raises(
        CubeFormatError, match=r"DENSE encoding\) is missing extension\(s\) FLUX_ERR"
    ):
        ScatterLightCube.read(bad)


# ---------------------------------------------------------------------- corrector, CLI
def test_corrector_with_compact_cube(field, dense, compact):
    tpf = simulate.make_tpf(field, row=1000, column=1000, shape=(11, 11), seed=3)
    truth = tpf.hdu["SL_TRUTH"].data.astype(float)
    results = {}
    for name, cube in (("dense", dense), ("compact", compact)):
        corrector = ScatterLightCorrector(tpf, cube=cube, fuse=False)
        lc = corrector.correct()
        results[name] = (corrector, lc)
    corrector, lc = results["compact"]
    dense_corrector, dense_lc = results["dense"]
    assert corrector.cube is compact
    aperture = corrector.aperture_mask
    model_truth = truth[:, aperture].sum(axis=1)
    compact_error = rms(corrector.model_lc.flux.value - model_truth)
    dense_error = rms(dense_corrector.model_lc.flux.value - model_truth)
    assert compact_error < 1.05 * dense_error  # no worse than the dense cube
    np.testing.assert_allclose(lc.flux.value, dense_lc.flux.value, rtol=0, atol=3 * dense_error)
    # Its smaller error is the smaller error of the model's light curve.
    model_err = corrector.model_lc.flux_err.value
    assert np.all(model_err < dense_corrector.model_lc.flux_err.value)


def test_cli_info_compact(compact_file, capsys):
    assert main(["info", str(compact_file)]) == 0
    lines = capsys.readouterr().out.splitlines()
    info = {k.strip(): v.strip() for k, v in (line.split(":", 1) for line in lines)}
    cube = ScatterLightCube.read(compact_file)
    assert info["encoding"].startswith(f"compact (LOWRANK), rank {cube.rank} ")
    assert info["tolerance"].startswith("0.01")
    assert info["file size"].endswith("MB")
    assert info["error"].startswith(f"RMS {cube.compression.residual_rms:.3g} e-/s")


def test_cli_info_dense(tmp_path, capsys):
    path = low_rank_cube(1).write(tmp_path / "dense.fits")
    assert main(["info", str(path)]) == 0
    out = capsys.readouterr().out
    assert "encoding:" in out
    assert "dense" in out
    assert "rank:" not in out
