"""Tests of the synthetic full-frame images (lk_scatterlight.simulate.FFISimulator).

One full-size frame is written to disk (twice, to test overwriting); the rest
are generated in memory. Tolerances are stated next to each assertion.
"""

import copyreg
import csv
import pickle
from datetime import datetime

import numpy as np
import pytest
from astropy.io import fits
from scipy import ndimage

from lk_scatterlight.ccd import Region
from lk_scatterlight.simulate import (
    FFI_SHAPE,
    SATURATION,
    FFISimulator,
    ScatteredLightField,
    _bleed,
    btjd_to_utc,
    ffi_filename,
)
from lk_scatterlight.straps import (
    STRAP_CCD_COLUMNS,
    STRAP_SCIENCE_COLUMNS,
    STRAP_TABLE,
    strap_groups,
    strap_mask,
)

REAL_FFI = "tess2018206192942-s0001-1-4-0120-s_ffic_corner128x173.fits"
STRAPS_CSV = "straps_handbook_tableA3.csv"
SCIENCE = (slice(0, 2048), slice(44, 2092))
ROWS = np.arange(1, 2049, dtype=float)
COLUMNS = np.arange(45, 2093, dtype=float)


@pytest.fixture(scope="module")
def sim():
    """Six frames over sector 1; default defects: 1 desat, 3 coarse, 4 glint."""
    field = ScatteredLightField(structured=True, seed=3)
    return FFISimulator(field, n_frames=6, seed=7, n_stars=20000)


@pytest.fixture(scope="module")
def frame0(sim):
    return sim.frame(0)


# ---------------------------------------------------------------------- straps
def test_strap_table_matches_handbook_csv(shared_data):
    with open(shared_data(STRAPS_CSV), newline="") as f:
        lines = [line for line in f if line.strip() and not line.startswith("#")]
    rows = list(csv.DictReader(lines))
    assert [(int(r["Column"]), r["Signal"], r["Layer"]) for r in rows] == list(STRAP_TABLE)
    assert list(STRAP_SCIENCE_COLUMNS) == [int(r["Column"]) for r in rows]
    assert list(STRAP_CCD_COLUMNS) == [int(r["Column"]) + 44 for r in rows]


def test_strap_groups_and_mask():
    groups = strap_groups()
    assert len(groups) == 58
    assert all(len(g) == 2 and g[1] == g[0] + 1 for g in groups)
    assert sorted(c for g in groups for c in g) == sorted(STRAP_CCD_COLUMNS)
    mask = strap_mask()
    assert mask.shape == (2048,)
    assert mask.sum() == 116
    assert mask[77 - 1]  # science column 77 = CCD column 121 = array column 120
    assert not mask[79 - 1]


def test_strap_response_truth(sim):
    assert set(sim.strap_response) == set(STRAP_CCD_COLUMNS)
    factors = np.array(list(sim.strap_response.values()))
    assert np.all((factors >= 1.03) & (factors <= 1.05))
    for a, b in strap_groups():  # one factor per physical strap
        assert sim.strap_response[a] == sim.strap_response[b]
    response = sim.column_response
    np.testing.assert_array_equal(response[~strap_mask()], 1.0)
    np.testing.assert_allclose(
        response[np.array(STRAP_CCD_COLUMNS) - 45],
        [sim.strap_response[c] for c in STRAP_CCD_COLUMNS],
    )


@pytest.mark.slow
def test_truth_is_the_exact_field_times_strap_response(sim):
    for index in (0, 4):
        with np.errstate(over="ignore"):
            field = sim.field(sim.time[index : index + 1], ROWS, COLUMNS)[0]
        truth = sim.truth(index)
        assert truth.shape == (2048, 2048)
        assert truth.dtype == np.float32
        np.testing.assert_allclose(truth, field * sim.column_response, rtol=1e-6)


def test_strap_columns_brighter_in_the_sky(sim):
    static = sim.static_scene()
    mask = strap_mask()
    strap = np.array(STRAP_SCIENCE_COLUMNS) - 1
    left, right = strap - 1, strap + 1
    while np.any(mask[left]) or np.any(mask[right]):  # nearest non-strap neighbours
        left[mask[left]] -= 1
        right[mask[right]] += 1
    med = np.median(static, axis=0)
    ratio = med[strap] / (0.5 * (med[left] + med[right]))
    expected = sim.column_response[strap]
    # Star light in the column medians is small: the mean ratio within 0.3 %.
    assert abs(np.mean(ratio - expected)) < 3e-3


# ---------------------------------------------------------------------- frames
def test_frame_shapes_noise_and_error(sim, frame0):
    flux, flux_err = frame0
    assert flux.shape == flux_err.shape == FFI_SHAPE
    assert flux.dtype == flux_err.dtype == np.float32
    assert np.all(np.isfinite(flux))
    assert np.all(flux_err > 0)
    model = sim.static_scene() + sim.truth(0)
    good = ~sim.saturated_mask()
    z = ((flux[SCIENCE] - model) / flux_err[SCIENCE])[good]
    # ~4e6 unit-Gaussian deviates: mean within 0.005 and std within 0.5 %.
    assert abs(z.mean()) < 5e-3
    assert abs(z.std() - 1) < 5e-3
    # Frame 0 is flagged Straylight (2048) only: its image is fine.
    assert sim.quality[0] == 2048


def test_collateral_pixels_hold_small_levels_not_the_scattered_light(sim, frame0):
    flux, flux_err = frame0
    level = sim.collateral_level
    for region in (
        flux[:, :44],  # leading (serial register) columns
        flux[:, 2092:],  # trailing virtual columns
        flux[2048:2058, 44:2092],  # buffer rows
        flux[2068:2078, 44:2092],  # virtual rows
    ):
        assert abs(np.median(region) - level) < 0.05
    smear = np.median(flux[2058:2068, 44:2092], axis=0) - level
    expected = (sim.static_scene() + sim.truth(0)).mean(axis=0) * 0.02 / 1.98
    np.testing.assert_allclose(np.median(smear), np.median(expected), rtol=0.05)
    assert np.median(sim.truth(0)) > 20 * np.median(smear)
    # Collateral errors are read noise: sqrt(720 reads) * ~7-10 e- / 1425.6 s.
    assert 0.1 < np.median(flux_err[:, :44]) < 0.2


def test_saturation_and_bleed_columns(sim, frame0):
    flux, flux_err = frame0
    mask = sim.saturated_mask()
    assert mask.sum() > 20
    labels, n = ndimage.label(mask)
    assert n == 3  # the three bright stars (Tmag 2.5-4.5)
    for region in ndimage.find_objects(labels):
        height = region[0].stop - region[0].start
        width = region[1].stop - region[1].start
        assert height > width  # charge bleeds along columns
    science = flux[SCIENCE]
    # Saturated pixels sit at the full-well level, plus noise (6 sigma).
    assert np.all(np.abs(science[mask] - SATURATION) < 6 * flux_err[SCIENCE][mask])
    assert sim.static_scene().max() == pytest.approx(SATURATION)


def test_bleed_conserves_charge():
    rows = np.arange(200, dtype=float)
    image = np.zeros((200, 3))
    image[:, 1] = 5e5 * np.exp(-0.5 * ((rows - 120) / 2.0) ** 2)
    before = image.sum()
    saturated = _bleed(image, 1e5)
    assert image.max() == 1e5
    assert image.sum() == pytest.approx(before, rel=1e-12)
    trail = np.sort(saturated[0])
    assert np.all(np.diff(trail) == 1)  # one contiguous trail
    assert trail.size > 10
    assert abs(np.mean(trail) - 120) <= 1  # spread equally up and down


def _bright_star(sim):
    """Row/column (0-based science array) of the brightest unsaturated, isolated star."""
    stars = sim.stars
    r, c = stars["row"] - 1, stars["column"] - 45
    sat_r, sat_c = np.nonzero(sim.saturated_mask())
    ok = (stars["tmag"] > 6) & (r > 50) & (r < 1998) & (c > 50) & (c < 1998)
    for k in np.argsort(stars["tmag"]):
        if ok[k] and np.min(np.hypot(sat_r - r[k], sat_c - c[k])) > 60:
            return r[k], c[k]
    raise AssertionError("no isolated bright star")


def _centroid_and_peak(image, row, col, half=5):
    r0, c0 = int(round(row)), int(round(col))
    box = image[r0 - half : r0 + half + 1, c0 - half : c0 + half + 1]
    box = box - np.median(image[r0 - 20 : r0 + 21, c0 - 20 : c0 + 21])
    yy, xx = np.mgrid[-half : half + 1, -half : half + 1]
    w = np.clip(box, 0, None)
    return (r0 + (w * yy).sum() / w.sum(), c0 + (w * xx).sum() / w.sum()), box.max()


@pytest.mark.slow
def test_pointing_defects_smear_and_shift_stars(sim, frame0):
    assert sim.defects == {1: "desat", 3: "coarse", 4: "glint"}
    row, col = _bright_star(sim)
    (r_ok, c_ok), peak_ok = _centroid_and_peak(frame0[0][SCIENCE] - sim.truth(0), row, col)
    assert np.hypot(r_ok - row, c_ok - col) < 0.2  # [px]
    desat = sim.frame(1)[0][SCIENCE] - sim.truth(1)
    (r_d, c_d), peak_d = _centroid_and_peak(desat, row, col)
    assert peak_d < 0.85 * peak_ok  # a ~2 px smear lowers the peak by > 15 %
    assert np.hypot(r_d - row, c_d - col) < 0.3  # symmetric smear: centroid stays
    coarse = sim.frame(3)[0][SCIENCE] - sim.truth(3)
    (r_c, c_c), _ = _centroid_and_peak(coarse, row, col)
    assert np.hypot(r_c - row, c_c - col) > 1.0  # ~1.5 px pointing offset


def test_argabrightening_glint_is_extra_light_not_truth(sim):
    assert sim.glint(0) is None
    glint = sim.glint(4)
    assert glint.shape == (2048, 2048)
    assert 0.5 * sim.glint_amplitude < glint.max() <= 1.05 * sim.glint_amplitude
    flux, flux_err = sim.frame(4)
    model = sim.static_scene() + sim.truth(4) + glint
    z = ((flux[SCIENCE] - model) / flux_err[SCIENCE])[~sim.saturated_mask()]
    assert abs(z.mean()) < 5e-3  # [sigma]
    assert abs(z.std() - 1) < 5e-3


@pytest.mark.parametrize("index", [0, 1, 3, 4])  # plain, desat, coarse, glint
def test_science_region_is_the_frame_but_for_the_noise(sim, index):
    """A region's flux error (a function of the noise-free scene) equals the full
    frame's, so stars, smears, glints and saturation match; only the noise is new."""
    sat_rows, sat_cols = np.nonzero(sim.saturated_mask())
    regions = [
        Region(1, 45, 64, 64),  # the CCD's corner: smears and stars cut at the edge
        Region(int(sat_rows[0]) - 31, int(sat_cols[0]) + 45 - 31, 64, 96),  # a saturated star
    ]
    flux_full, err_full = sim.frame(index)
    for region in regions:
        flux, err = sim.science(index, region)
        assert flux.shape == err.shape == (region.nrows, region.ncols)
        assert flux.dtype == np.float32
        np.testing.assert_array_equal(err, err_full[region.ffi_slice])
        assert not np.array_equal(flux, flux_full[region.ffi_slice])  # its own noise
        scene = flux_full[region.ffi_slice]  # frame = scene + err * noise_1
        z = (flux - scene) / err  # noise_2 - noise_1: unit-variance each
        assert abs(z.std() - np.sqrt(2)) < 0.1
    assert sim.science(index, regions[1])[0].max() > 0.99 * SATURATION  # the star is in
    whole, _ = sim.science(index)
    assert whole.shape == (2048, 2048)


def test_quality_flags(sim):
    for index, bit in ((1, 32), (3, 4), (4, 16)):
        assert sim.quality[index] & bit
    full = FFISimulator(sector=1, seed=0)  # lazy: nothing is rendered
    quality = full.quality
    for bit in (4, 16, 32, 2048):
        assert np.any(quality & bit)
    assert np.sum((quality & 32) > 0) == 8  # a dump every 3.125 d over 27.4 d
    earth = full.field.earth_amplitude(full.time)
    np.testing.assert_array_equal((quality & 2048) > 0, earth > 0.5 * full.field.earth_peak)
    assert FFISimulator(n_frames=6, defects={}).quality[1:5].tolist() == [0, 0, 0, 0]


def test_simulator_pickles_itself_without_its_scene(sim):
    """`FFISimulator.__reduce__`: no copyreg registration, no rendered scene sent, new lock."""
    assert FFISimulator not in copyreg.dispatch_table
    sim.frame(0)  # renders and caches the scene
    assert sim._static is not None
    copy = pickle.loads(pickle.dumps(sim))
    assert copy._static is None
    assert copy._scene_lock is not sim._scene_lock
    assert copy._scene_lock.acquire(blocking=False)
    copy._scene_lock.release()
    np.testing.assert_array_equal(copy.frame(1)[0], sim.frame(1)[0])


def test_times_and_orbit_gap():
    full = FFISimulator(sector=1)
    steps = np.diff(full.time)
    gaps = np.nonzero(steps > 0.5)[0]
    assert gaps.size == 1
    assert steps[gaps[0]] > 0.9  # [d] synthetic 1-day gap
    assert abs(full.time[gaps[0]] - (1325.30 + 13.7)) < 1.0
    np.testing.assert_allclose(full.tstop - full.tstart, 1800 / 86400)
    assert full.cadenceno[0] == 0
    assert np.all(np.diff(full.cadenceno) >= 1)
    later = FFISimulator(sector=30, n_frames=3)
    assert later.cadence == 600
    assert later.num_frames == 300
    assert later.exposure == pytest.approx(475.2)
    custom = FFISimulator(time=[1400.0, 1400.5], sector=4, defects={})
    np.testing.assert_array_equal(custom.time, [1400.0, 1400.5])


@pytest.mark.slow
def test_determinism(sim):
    again = FFISimulator(
        ScatteredLightField(structured=True, seed=3), n_frames=6, seed=7, n_stars=20000
    )
    late_first = again.frame(4)[0]  # generation order does not matter
    np.testing.assert_array_equal(again.frame(2)[0], sim.frame(2)[0])
    np.testing.assert_array_equal(late_first, sim.frame(4)[0])
    assert again.strap_response == sim.strap_response
    other = FFISimulator(n_frames=6, seed=8, n_stars=20000)
    assert other.strap_response != sim.strap_response
    assert not np.array_equal(other.stars["row"], sim.stars["row"])


def test_input_errors():
    with pytest.raises(ValueError, match="at most one of n_frames and time"):
        FFISimulator(n_frames=3, time=[1.0, 2.0])
    with pytest.raises(ValueError, match="strictly increasing"):
        FFISimulator(time=[2.0, 1.0])
    with pytest.raises(ValueError, match="n_frames must be 1..1267"):
        FFISimulator(n_frames=0)
    with pytest.raises(ValueError, match="Unknown defect 'cosmic'"):
        FFISimulator(n_frames=3, defects={0: "cosmic"})
    with pytest.raises(ValueError, match="outside 0..2"):
        FFISimulator(n_frames=3, defects={5: "desat"})
    with pytest.raises(IndexError, match="outside 0..2"):
        FFISimulator(n_frames=3).truth(3)


# ---------------------------------------------------------------------- files and headers
def test_filename_and_dates_match_a_real_spoc_ffi(shared_data):
    with fits.open(shared_data(REAL_FFI)) as hdul:
        primary, image = hdul[0].header, hdul[1].header
    # The primary TSTART is the spacecraft clock (ext-1 TSTART minus BARYCORR).
    assert primary["TSTART"] == pytest.approx(image["TSTART"] - image["BARYCORR"], abs=1e-6)
    start = btjd_to_utc(primary["TSTART"])
    assert start.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z" == primary["DATE-OBS"]
    name = ffi_filename(start, 1, image["CAMERA"], image["CCD"])
    assert name == "tess2018206192942-s0001-1-4-0120-s_ffic.fits"
    assert REAL_FFI.startswith(name.removesuffix(".fits"))
    # Extension DATE-OBS is the barycentric TSTART as a UTC date; TDB - TT is
    # neglected, so agree within 2 ms.
    spoc = datetime.strptime(image["DATE-OBS"], "%Y-%m-%dT%H:%M:%S.%fZ")
    assert abs((btjd_to_utc(image["TSTART"]) - spoc).total_seconds()) < 2e-3


@pytest.mark.slow
def test_write_ffis_spoc_like_file(sim, tmp_path):
    (path,) = sim.write_ffis(tmp_path, [4])
    assert path.name == sim.filename(4)
    assert path.name.startswith("tess2018")
    assert path.name.endswith("-s0001-1-1-0120-s_ffic.fits")
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]  # no temporary left
    flux, flux_err = sim.frame(4)
    with fits.open(path, checksum=True) as hdul:  # a bad checksum would warn (= error)
        assert [h.name for h in hdul] == ["PRIMARY", "CAMERA.CCD 1.1 CAL", "CAMERA.CCD 1.1 UNCERT"]
        primary, image = hdul[0].header, hdul[1].header
        assert primary["SIMDATA"] is True
        assert primary["SIMDEFCT"] == "glint"
        assert primary["CREATOR"].startswith("lk_scatterlight")
        assert image["IMAGTYPE"] == "cal"
        assert hdul[2].header["IMAGTYPE"] == "uncert"
        assert image["DQUALITY"] == sim.quality[4]
        assert image["DQUALITY"] & 16
        assert (image["CAMERA"], image["CCD"]) == (1, 1)
        assert image["TSTART"] == sim.tstart[4]
        assert image["TSTOP"] == sim.tstop[4]
        assert image["BUNIT"] == "electrons/s"
        assert image["NUM_FRM"] == 900
        assert image["DEADC"] == pytest.approx(0.792)
        assert image["EXPOSURE"] * 86400 == pytest.approx(1425.6)
        assert primary["TSTART"] == pytest.approx(image["TSTART"] - image["BARYCORR"])
        assert (image["SCCSA"], image["SCCED"], image["SMROWS"]) == (45, 2092, 2059)
        np.testing.assert_array_equal(hdul[1].data, flux)
        np.testing.assert_array_equal(hdul[2].data, flux_err)
    with pytest.raises(FileExistsError, match="overwrite=True"):
        sim.write_ffis(tmp_path, [4])
    (again,) = sim.write_ffis(tmp_path, [4], overwrite=True, science_only_err=True)
    assert fits.getdata(again, 2).shape == (2048, 2048)
