"""ScatterLightCorrector on synthetic TPFs with known injected scattered light, and real files."""

import warnings
from pathlib import Path

import lightkurve as lk
import numpy as np
import pytest
from astropy import units as u
from astropy.io import fits

from lk_scatterlight import (
    CubeNotFoundError,
    DownloadError,
    OutsideCubeError,
    ScatterLightCorrector,
    ScatterLightCube,
    ScatterLightError,
    ScatterLightWarning,
    simulate,
)
from lk_scatterlight.corrector import QUALITY_NO_MODEL, detect_background_in_flux
from lk_scatterlight.fusion import fuse

SHARED = Path(__file__).parents[1].parent / "shared" / "data"


def shared_file(name):
    path = SHARED / name
    if not path.exists():
        pytest.skip(f"reference file {path} is absent (../shared/data is not available)")
    return path


@pytest.fixture
def read_shared():
    """Read a TPF from ../shared/data and close its file at the end of the test."""
    opened = []

    def read(name):
        tpf = lk.read(shared_file(name))
        opened.append(tpf)
        return tpf

    yield read
    for tpf in opened:
        tpf.hdu.close()


@pytest.fixture(scope="module")
def field():
    return simulate.ScatteredLightField(seed=3)


@pytest.fixture(scope="module")
def cube(field):
    return simulate.make_cube(field, sector=1, camera=1, ccd=1, pixel_bin=64, seed=3)


@pytest.fixture(scope="module")
def tpf(field):
    return simulate.make_tpf(field, row=700, column=1200, shape=(11, 11), seed=3)


def test_injected_scattered_light_is_removed(tpf, cube):
    """Residual model error below 0.5% of the injected range; light curve flat to 2%."""
    truth = tpf.hdu["SL_TRUTH"].data.astype(float)
    injected_range = np.ptp(np.percentile(truth, [1, 99]))
    corrector = tpf.to_corrector("scatterlight", cube=cube)
    assert isinstance(corrector, ScatterLightCorrector)
    lc = corrector.correct()

    model_rms = np.sqrt(np.mean((corrector.model.flux.value - truth) ** 2))
    assert model_rms < 0.005 * injected_range

    # The aperture light curve of a constant star: its scatter about the star's
    # true flux must drop below 2% of the injected aperture scattered light.
    aperture = corrector.aperture_mask
    true_star = np.median(corrector.original_lc.flux.value - truth[:, aperture].sum(axis=1))
    injected_lc_range = np.ptp(truth[:, aperture].sum(axis=1))
    residual = lc.flux.value - true_star
    assert np.sqrt(np.mean(residual**2)) < 0.02 * injected_lc_range
    assert np.sqrt(np.mean((corrector.original_lc.flux.value - true_star) ** 2)) > (
        0.1 * injected_lc_range
    )

    # State kept as lightkurve correctors do.
    assert type(lc) is type(corrector.original_lc)
    assert lc.flux.unit == u.electron / u.s
    assert corrector.corrected_lc is lc
    assert corrector.model_lc.flux.shape == lc.flux.shape
    assert corrector.cadence_mask.all()
    # Errors: original and exact aperture-sum model error in quadrature.
    expected = np.hypot(corrector.original_lc.flux_err, corrector.model_lc.flux_err)
    np.testing.assert_allclose(lc.flux_err.value, expected.value, rtol=1e-6)
    assert np.all(corrector.model_lc.flux_err > 0)


def test_aperture_model_error_accounts_for_shared_bins(tpf, cube):
    """Pixels interpolated from the same bins have correlated errors: the sum's error
    exceeds the quadrature sum of per-pixel errors, and is at most their linear sum."""
    corrector = ScatterLightCorrector(tpf, cube=cube, aperture_mask="all", fuse=False)
    corrector.correct()
    per_pixel = corrector.model.flux_err.value.reshape(len(tpf), -1)
    quadrature = np.sqrt((per_pixel**2).sum(axis=1))
    linear = per_pixel.sum(axis=1)
    err = corrector.model_lc.flux_err.value
    assert np.all(err > 1.5 * quadrature)
    assert np.all(err <= linear * (1 + 1e-9))


def test_correct_tpf(tpf, cube):
    corrector = tpf.to_corrector("scatterlight", cube=cube, fuse=False)
    corrected = corrector.correct_tpf()
    model = corrector._evaluate()
    np.testing.assert_allclose(
        corrected.flux.value, tpf.flux.value - model.flux.value, rtol=1e-5, atol=1e-3
    )
    np.testing.assert_allclose(
        corrected.flux_bkg.value, tpf.flux_bkg.value + model.flux.value, rtol=1e-5, atol=1e-3
    )
    expected_err = np.hypot(tpf.flux_err.value, model.flux_err.value)
    np.testing.assert_allclose(corrected.flux_err.value, expected_err, rtol=1e-5)
    header = corrected.get_header()
    assert header["SLCORR"] is True
    assert corrected.row == tpf.row
    assert corrected.column == tpf.column
    assert (corrected.sector, corrected.camera, corrected.ccd) == (1, 1, 1)
    # Input untouched.
    assert np.all(tpf.hdu[1].data["FLUX_BKG"] == 0)
    # A corrected TPF is never corrected twice.
    assert detect_background_in_flux(corrected)[0] is False
    with pytest.warns(ScatterLightWarning, match="already corrected"):
        again = corrected.to_corrector("scatterlight", cube=cube).correct()
    np.testing.assert_array_equal(again.flux.value, corrected.to_lightcurve().flux.value)
    with pytest.raises(ScatterLightError, match="already corrected"):
        ScatterLightCorrector(corrected, cube=cube, background_in_flux=True)


def test_correct_tpf_from_file_fused(field, cube, tmp_path):
    """A TPF read from disk (big-endian columns) with a NaN time and NaN background
    entries: every column of the fused correction, as the corrector documents it."""
    tpf = simulate.make_tpf(field, row=700, column=1200, shape=(11, 11), seed=5)
    data = tpf.hdu[1].data
    data["TIME"][3] = np.nan
    data["FLUX_BKG"][:, 0, 0] = np.nan
    data["FLUX_BKG_ERR"][:, 0, 0] = np.nan
    path = tmp_path / "tpf.fits"
    tpf.hdu.writeto(path)
    tpf = lk.read(path)
    assert tpf.hdu[1].data["FLUX"].dtype.byteorder == ">"
    corrector = ScatterLightCorrector(tpf, cube=cube, aperture_mask="default")
    corrected = corrector.correct_tpf()
    fusion = corrector.fusion_tpf
    assert fusion is not None
    old, new = tpf.hdu[1].data, corrected.hdu[1].data
    ok = np.isfinite(old["TIME"])
    model = cube.evaluate(old["TIME"][ok], corrector.rows, corrector.columns)
    fused = model.flux.value + fusion.correction()
    variance = fusion.variance(model.flux_err.value**2)
    np.testing.assert_allclose(new["FLUX"][ok], old["FLUX"][ok] - fused, rtol=1e-5, atol=1e-3)
    assert np.all(np.isnan(new["FLUX"][~ok]))
    assert np.all(new["QUALITY"][~ok] & QUALITY_NO_MODEL)
    np.testing.assert_allclose(
        new["FLUX_ERR"][ok] ** 2, old["FLUX_ERR"][ok] ** 2 + variance, rtol=1e-4
    )
    bkg = np.nan_to_num(old["FLUX_BKG"][ok]) + fused  # a NaN background counts as none
    np.testing.assert_allclose(new["FLUX_BKG"][ok], bkg, rtol=1e-5, atol=1e-3)
    bkg_var = np.nan_to_num(old["FLUX_BKG_ERR"][ok]) ** 2 + variance
    np.testing.assert_allclose(new["FLUX_BKG_ERR"][ok] ** 2, bkg_var, rtol=1e-4)
    tpf.hdu.close()


def _cards(hdulist) -> list[str]:
    """Every header card of every HDU, less the two that ``to_fits()`` stamps with the time."""
    return [
        str(card)
        for hdu in hdulist
        for card in hdu.header.cards
        if card.keyword not in ("CHECKSUM", "DATASUM")
    ]


def _columns(hdu) -> list[tuple]:
    """What a user sees of each column: its definition (repr: every attribute) and dtype."""
    return [(repr(column), hdu.data[column.name].dtype) for column in hdu.columns]


@pytest.mark.parametrize("logical", [False, True], ids=["raw-values", "logical-column"])
def test_correct_tpf_keeps_every_card_and_column_attribute(field, cube, tmp_path, logical):
    """``correct_tpf()`` copies the table itself (not with ``hdu.copy()``): every header card
    of every HDU but its own SL* cards, every column's attributes (TUNIT, TNULL, TDISP, TDIM,
    coordinate and time keywords), dtype and byte order come out as they went in, in
    memory and in the file ``to_fits()`` writes. A logical column (values unlike its
    stored bytes) takes ``hdu.copy()``: the same result."""
    tpf = simulate.make_tpf(field, row=700, column=1200, shape=(11, 11), seed=5)
    table = tpf.hdu[1]
    table.columns["TIME"].disp = "D14.7"
    table.columns["TIME"].time_ref_pos = "TOPOCENTER"
    table.columns["CADENCENO"].null = -1
    table.columns["FLUX"].disp = "E14.7"
    table.columns["FLUX"].coord_type = "RA---TAN"
    table.columns["FLUX"].coord_unit = "deg"
    if logical:
        flags = fits.Column(name="FLAGGED", format="L", array=np.arange(len(table.data)) % 3 == 0)
        table = fits.BinTableHDU.from_columns(
            table.columns + fits.ColDefs([flags]), header=table.header
        )
        tpf.hdu[1] = table
    path = tmp_path / "tpf.fits"
    tpf.hdu.writeto(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ScatterLightWarning)
        original = lk.read(path)
        before = _cards(original.hdu), _columns(original.hdu[1])
        corrected = ScatterLightCorrector(original, cube=cube).correct_tpf()
    assert (_cards(original.hdu), _columns(original.hdu[1])) == before  # the input as it was
    assert corrected.hdu[1].data["FLUX"].dtype.byteorder == ">"  # as read from the file
    added = ("SLCORR", "SLVER", "SLFUSED", "SLREPL", "SLCUBE")
    expected = _cards(original.hdu)
    assert [c for c in _cards(corrected.hdu) if c[:8].strip() not in added] == expected
    assert _columns(corrected.hdu[1]) == _columns(original.hdu[1])
    assert repr(corrected.hdu[1].columns) == repr(original.hdu[1].columns)
    assert corrected.flux.unit == original.flux.unit == u.electron / u.s
    written = tmp_path / "corrected.fits"
    corrected.to_fits(output_fn=written)
    back = lk.read(written)
    assert _cards(back.hdu) == _cards(corrected.hdu)
    assert _columns(back.hdu[1]) == _columns(corrected.hdu[1])
    for name in corrected.hdu[1].columns.names:
        np.testing.assert_array_equal(back.hdu[1].data[name], corrected.hdu[1].data[name])
    for hdulist in (original.hdu, back.hdu):
        hdulist.close()


def test_correct_fuses_the_good_cadences_of_a_file(field, cube, tmp_path):
    """``correct()`` reads FLUX and FLUX_ERR straight from a file's table (big-endian,
    some cadences flagged): its fusion is the one of lightkurve's ``tpf.flux`` and
    ``tpf.flux_err`` at the good-quality cadences."""
    tpf = simulate.make_tpf(field, row=700, column=1200, shape=(11, 11), seed=6)
    tpf.hdu[1].data["QUALITY"][10:40] = 1  # bit 1 (attitude tweak): in the default bitmask
    path = tmp_path / "tpf.fits"
    tpf.hdu.writeto(path)
    tpf = lk.read(path)
    assert tpf.quality_mask.sum() == len(tpf.hdu[1].data) - 30
    corrector = ScatterLightCorrector(tpf, cube=cube, aperture_mask="default")
    corrector.correct()
    model = cube.evaluate(tpf.time, corrector.rows, corrector.columns, bounds="nan")
    residual = np.subtract(tpf.flux.value, model.flux.value, dtype=np.float32)
    expected = fuse(residual, tpf.flux_err.value, corrector.aperture_mask, valid=model.valid)
    for name in ("offset", "offset_var", "local", "weight", "shape_var", "surface_coef"):
        np.testing.assert_array_equal(getattr(corrector.fusion, name), getattr(expected, name))
    tpf.hdu.close()


def test_spoc_tpf_is_not_double_corrected(field, cube):
    spoc = simulate.make_tpf(field, row=700, column=1200, kind="spoc", seed=3)
    assert detect_background_in_flux(spoc)[0] is False
    corrector = spoc.to_corrector("scatterlight", cube=cube)
    with pytest.warns(ScatterLightWarning, match="already subtracted"):
        lc = corrector.correct()
    np.testing.assert_array_equal(lc.flux.value, corrector.original_lc.flux.value)
    assert corrector.model_lc is not None  # the model is still there to compare with FLUX_BKG
    with pytest.raises(ScatterLightError, match="Nothing to subtract"):
        corrector.correct_tpf()
    # The caller may override the detection.
    forced = ScatterLightCorrector(spoc, cube=cube, background_in_flux=True).correct()
    assert np.all(forced.flux < lc.flux)


def test_spoc_background_replaced(field, cube):
    """replace_background on a SPOC TPF gives the cutout's correction, up to SPOC's level."""
    kwargs = {"row": 700, "column": 1200, "shape": (11, 11), "seed": 3}
    spoc = simulate.make_tpf(field, kind="spoc", **kwargs)
    cutout = simulate.make_tpf(field, **kwargs)  # the same pixels, background in FLUX
    replaced = spoc.to_corrector("scatterlight", cube=cube, replace_background=True)
    subtracted = cutout.to_corrector("scatterlight", cube=cube)
    lc, reference = replaced.correct(), subtracted.correct()
    assert replaced.fusion is not None  # fused on the observed pixels (FLUX + FLUX_BKG)
    np.testing.assert_allclose(replaced.fusion.offset, subtracted.fusion.offset, atol=1e-4)
    difference = lc.flux.value - reference.flux.value
    assert np.std(difference) < 1e-3 * np.std(reference.flux.value)  # a constant: SPOC's level
    assert lc.meta["SLCORR"]
    tpf = replaced.correct_tpf()
    assert tpf.get_header()["SLREPL"]
    assert tpf.get_header()["SLCORR"]
    # The observed pixels are untouched: only the split into flux and background changes.
    before = spoc.hdu[1].data["FLUX"] + spoc.hdu[1].data["FLUX_BKG"]
    after = tpf.hdu[1].data["FLUX"] + tpf.hdu[1].data["FLUX_BKG"]
    np.testing.assert_allclose(after, before, rtol=1e-5, atol=1e-3)
    # The background is the fused model's variation on SPOC's level per pixel.
    change = tpf.hdu[1].data["FLUX"] - subtracted.correct_tpf().hdu[1].data["FLUX"]
    assert np.max(np.std(change, axis=0)) < 1e-3
    np.testing.assert_allclose(  # the model's error, as the cutout's FLUX_BKG_ERR gets
        tpf.hdu[1].data["FLUX_BKG_ERR"],
        subtracted.correct_tpf().hdu[1].data["FLUX_BKG_ERR"],
        rtol=1e-4,  # float32 sums of FLUX + FLUX_BKG
    )
    # Never twice: the result says it was corrected.
    assert detect_background_in_flux(tpf)[0] is False
    with pytest.raises(ScatterLightError, match="has none to replace"):
        ScatterLightCorrector(tpf, cube=cube, replace_background=True)
    with pytest.raises(ScatterLightError, match="has none to replace"):
        ScatterLightCorrector(cutout, cube=cube, replace_background=True)


def test_real_spoc_tpf_background_replaced(read_shared):
    """The real SPOC TPF (FLUX_BKG_ERR non-zero): errors swap SPOC's background error for
    the model's, and FLUX + FLUX_BKG is conserved."""
    tpf = read_shared("spoc_tpf_s0015_2-3_100cad.fits")
    time = np.asarray(tpf.hdu[1].data["TIME"], dtype=float)
    time = time[np.isfinite(time)]
    planes = np.arange(time[0] - 0.02, time[-1] + 0.03, 1 / 48)
    cube = simulate.make_cube(
        simulate.ScatteredLightField(seed=1),
        sector=15,
        camera=2,
        ccd=3,
        pixel_bin=64,
        time=planes,
        seed=1,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ScatterLightWarning)  # too few background pixels, maybe
        corrector = tpf.to_corrector("scatterlight", cube=cube, replace_background=True)
        lc = corrector.correct()
        out = corrector.correct_tpf()
    assert np.isfinite(lc.flux.value).all()
    old, new = tpf.hdu[1].data, out.hdu[1].data
    ok = np.isfinite(old["TIME"])
    np.testing.assert_allclose(
        (new["FLUX"] + new["FLUX_BKG"])[ok], (old["FLUX"] + old["FLUX_BKG"])[ok], rtol=1e-5
    )
    raw_var = np.clip(old["FLUX_ERR"] ** 2 - old["FLUX_BKG_ERR"] ** 2, 0, None)
    np.testing.assert_allclose(
        new["FLUX_ERR"][ok] ** 2, (raw_var + new["FLUX_BKG_ERR"] ** 2)[ok], rtol=1e-4
    )


def test_cadences_outside_cube_are_flagged_and_nan(field, cube):
    time = np.concatenate([cube.btjd[:20], cube.btjd[-1] + [1.0, 2.0]])  # 2 beyond the end
    tpf = simulate.make_tpf(field, row=700, column=1200, time=time, seed=1)
    corrector = tpf.to_corrector("scatterlight", cube=cube, fuse=False)
    with pytest.warns(ScatterLightWarning, match="2 of 22 cadences"):
        lc = corrector.correct()
    assert np.all(np.isnan(lc.flux[-2:]))
    assert np.all(np.isfinite(lc.flux[:-2]))
    assert np.all(lc.quality[-2:] & QUALITY_NO_MODEL)
    assert not np.any(lc.quality[:-2] & QUALITY_NO_MODEL)
    assert corrector.cadence_mask.sum() == 20
    tpf.hdu[1].data["FLUX_BKG"][-1, 0, 0] = np.nan
    corrected_tpf = corrector.correct_tpf()
    assert np.all(np.isnan(corrected_tpf.flux.value[-2:]))
    assert np.all(corrected_tpf.quality[-2:] & QUALITY_NO_MODEL)
    # The cadences the model does not cover keep their errors and background as they were
    # (a NaN too); the others have the model subtracted.
    old, new = tpf.hdu[1].data, corrected_tpf.hdu[1].data
    for name in ("FLUX_ERR", "FLUX_BKG", "FLUX_BKG_ERR"):
        np.testing.assert_array_equal(new[name][-2:], old[name][-2:])
    model = cube.evaluate(time[:-2], corrector.rows, corrector.columns).flux.value
    np.testing.assert_allclose(new["FLUX"][:-2], old["FLUX"][:-2] - model, rtol=1e-5, atol=1e-3)
    np.testing.assert_allclose(new["FLUX_BKG"][:-2], old["FLUX_BKG"][:-2] + model, atol=1e-3)


def test_cadences_in_orbit_gap_are_not_interpolated(field, cube):
    gap_start = cube.btjd[np.argmax(np.diff(cube.btjd))] + 0.3
    time = np.concatenate([cube.btjd[:5], [gap_start]])
    tpf = simulate.make_tpf(field, row=700, column=1200, time=time, seed=1)
    with pytest.warns(ScatterLightWarning, match="1 of 6"):
        lc = tpf.to_corrector("scatterlight", cube=cube, fuse=False).correct()
    assert np.isnan(lc.flux[-1])


def test_errors(field, cube, tpf):
    other = simulate.make_tpf(field, row=700, column=1200, camera=2, time=cube.btjd[:5])
    with pytest.raises(ScatterLightError, match="camera 2 CCD 1 but the cube is for sector 1"):
        other.to_corrector("scatterlight", cube=cube)
    outside = simulate.make_tpf(field, row=700, column=30, time=cube.btjd[:5])
    with pytest.raises(OutsideCubeError, match="science area"):
        outside.to_corrector("scatterlight", cube=cube).correct()
    late = simulate.make_tpf(field, row=700, column=1200, time=cube.btjd[-1] + np.arange(1, 4.0))
    with pytest.raises(OutsideCubeError, match="None of the TPF's 3 cadences"):
        late.to_corrector("scatterlight", cube=cube).correct()
    with pytest.raises(TypeError, match="cube must be"):
        tpf.to_corrector("scatterlight", cube=42)
    with pytest.raises(FileNotFoundError):
        tpf.to_corrector("scatterlight", cube="/nonexistent/cube.fits")
    corrector = tpf.to_corrector("scatterlight", cube=cube)
    with pytest.raises(ScatterLightError, match=r"Call `correct\(\)` before `diagnose\(\)`"):
        corrector.diagnose()
    with pytest.raises(ScatterLightError, match="model TESS only"):
        ScatterLightCorrector(lk.KeplerTargetPixelFile.__new__(lk.KeplerTargetPixelFile), cube)


def test_cube_none_without_published_cube(tpf, tmp_path, monkeypatch):
    """With no cube given and none published, the error says how to get one."""
    monkeypatch.setenv("LK_SCATTERLIGHT_CACHE", str(tmp_path))
    registry = tmp_path / "registry.txt"
    registry.write_text("# empty\n")
    monkeypatch.setenv("LK_SCATTERLIGHT_REGISTRY", str(registry))
    with pytest.raises(CubeNotFoundError, match="lk-scatterlight build"):
        tpf.to_corrector("scatterlight", cube="published")


def test_cube_none_offline_says_what_it_would_download(tpf, tmp_path, monkeypatch):
    """Nothing published and no network: the error names the region and the bytes."""
    monkeypatch.setenv("LK_SCATTERLIGHT_CACHE", str(tmp_path))
    registry = tmp_path / "registry.txt"
    registry.write_text("# empty\n")
    monkeypatch.setenv("LK_SCATTERLIGHT_REGISTRY", str(registry))
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    with pytest.raises(DownloadError, match=r"needs ~\d+ MB \(rows \d+\.\.\d+, columns") as err:
        tpf.to_corrector("scatterlight")
    assert "sector 1 camera 1 CCD 1" in str(err.value)
    with pytest.raises(DownloadError, match="could not be reached"):
        tpf.scatterlight.correct(cube="build")


def test_cube_from_path(tpf, cube, tmp_path):
    path = cube.write(tmp_path / "cube.fits")
    lc_path = tpf.to_corrector("scatterlight", cube=path).correct()
    lc_obj = tpf.to_corrector("scatterlight", cube=cube).correct()
    np.testing.assert_allclose(lc_path.flux.value, lc_obj.flux.value, rtol=1e-6)
    lc_str = tpf.to_corrector("scatterlight", cube=str(path)).correct()
    np.testing.assert_allclose(lc_str.flux.value, lc_obj.flux.value, rtol=1e-6)


# lightkurve's overfit metric draws unseeded noise and sometimes takes sqrt of a
# negative periodogram difference, which numpy reports as a RuntimeWarning.
@pytest.mark.filterwarnings("ignore:invalid value encountered in sqrt:RuntimeWarning")
def test_metrics_and_diagnostics(tpf, cube):
    corrector = tpf.to_corrector("scatterlight", cube=cube)
    corrector.correct()
    overfit = corrector.compute_overfit_metric()
    assert 0 <= overfit <= 1
    axes = corrector.diagnose()
    assert len(axes) == 3  # light curves, model, fusion
    labels = [t.get_text() for t in axes[0].get_legend().get_texts()]
    assert labels == ["original", "scattered light removed"]
    images = corrector.diagnose_model(frame=3)
    assert len(images) == 3
    assert images[1].get_images()[0].get_array().shape == (11, 11)


def test_real_tesscut_cutout(field, read_shared):
    """A real TESSCut file (astrocut 0.10, sector 1 camera 4 CCD 2) with a synthetic cube."""
    tpf = read_shared("tess-s0001-4-2_84.291190_-80.469170_6x6_astrocut.fits")
    assert detect_background_in_flux(tpf)[0] is True
    cube = simulate.make_cube(field, sector=1, camera=4, ccd=2, pixel_bin=128)
    corrector = tpf.to_corrector("scatterlight", cube=cube, fuse=False)
    lc = corrector.correct()
    model = cube.evaluate(tpf.time, tpf.row + np.arange(6), tpf.column + np.arange(6))
    expected = corrector.original_lc.flux.value - model.flux.value[:, corrector.aperture_mask].sum(
        1
    )
    np.testing.assert_allclose(lc.flux.value, expected, rtol=1e-6)


def test_real_tesscut_with_bad_position_keywords(field, read_shared):
    """The sector-1 5x5 cutout has an empty SECTOR and a row of -856: it is placed by RA/Dec."""
    pytest.importorskip("tesswcs")
    tpf = read_shared("tess-s0001-4-3_107.27_-70.0_5x5_astrocut.fits")
    cube = simulate.make_cube(field, sector=1, camera=4, ccd=3, pixel_bin=256)
    with pytest.warns(ScatterLightWarning, match="no SECTOR keyword"):
        corrector = tpf.to_corrector("scatterlight", cube=cube)
    assert corrector.location.sector == 1
    # tesswcs places RA 107.27, Dec -70.0 near column 930, row 1904 of camera 4 CCD 3.
    assert 1899 <= corrector.rows[0] <= 1905
    assert 924 <= corrector.columns[0] <= 930
    model = cube.evaluate(cube.btjd[:3], corrector.rows, corrector.columns)
    assert np.isfinite(model.flux.value).all()


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("tess-s0001-4-3_107.27_-70.0_5x5_astrocut.fits", (1, 4, 3)),
        ("tess-s0001-4-2_84.291190_-80.469170_6x6_astrocut.fits", (1, 4, 2)),
        ("tess-s0019-1-3_65.489205_28.443210_10x10_astrocut.fits", (19, 1, 3)),
    ],
)
def test_real_tesscut_located(read_shared, name, expected):
    """Sector, CCD and pixels of the real cutouts, as the on-demand cube needs them."""
    pytest.importorskip("tesswcs")
    from lk_scatterlight.ondemand import locate_tpf, tpf_build_region

    tpf = read_shared(name)
    location = locate_tpf(tpf)
    assert (location.sector, location.camera, location.ccd) == expected
    region = location.region
    assert (region.nrows, region.ncols) == tpf.shape[1:]
    if tpf.row > 0:  # sane keywords: the TPF's own position
        assert (region.row, region.column) == (tpf.row, tpf.column)
    from lk_scatterlight.builder.pipeline import BuildConfig, region_grid

    build = tpf_build_region(region)
    assert build.covers(region)
    assert build.nrows == build.ncols
    grid = region_grid(BuildConfig())  # the whole-CCD cube's bins and fine tiles line up
    assert (build.row - 1) % grid == 0
    assert (build.column - 45) % grid == 0


def test_real_spoc_tpf_detected(read_shared):
    tpf = read_shared("spoc_tpf_s0015_2-3_100cad.fits")
    in_flux, reason = detect_background_in_flux(tpf)
    assert in_flux is False
    assert "SPOC" in reason


def test_real_tess_backml_cube_on_its_ccd():
    """A TPF placed on sector 2 camera 1 CCD 1 inside the real cube's time span."""
    cube = ScatterLightCube.read(shared_file("tess-backml_sl_cube_s0002_1-1_bin128_test.fits"))
    # Two-minute cadences inside the cube's 2-hour planes.
    time = np.arange(cube.btjd[0], cube.btjd[-1], 2 / 1440)

    def real_light(t, rows, cols):
        return cube.evaluate(t, rows, cols).flux.value

    tpf = simulate.make_tpf(
        real_light, row=1000, column=500, sector=2, camera=1, ccd=1, time=time, sky=20, seed=2
    )
    truth = tpf.hdu["SL_TRUTH"].data
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        corrector = tpf.to_corrector("scatterlight", cube=cube)
        lc = corrector.correct()
    np.testing.assert_allclose(corrector.model.flux.value, truth, atol=1e-4)
    assert np.all(np.isfinite(lc.flux))
    # What is left is the star + sky + noise: flat within the photon noise.
    aperture = corrector.aperture_mask
    star = corrector.original_lc.flux.value - truth[:, aperture].sum(axis=1)
    np.testing.assert_allclose(lc.flux.value, star, atol=1e-2 * np.abs(star).max())
