"""Tests of lk_scatterlight.builder.sources: FFI sources on disk and simulated.

Five full-size synthetic FFIs are written once per module (about 180 MB in a
temporary folder); the inconsistent sets reuse them through symlinks and a
single modified copy each.
"""

import random
import shutil
import threading
import time

import numpy as np
import pytest
from astropy.io import fits

from lk_scatterlight.builder.sources import (
    FFISource,
    FrameInfo,
    LocalFFISource,
    SimulatedFFISource,
    read_ffi_header,
)
from lk_scatterlight.ccd import Region
from lk_scatterlight.exceptions import FFISourceError, ScatterLightError
from lk_scatterlight.simulate import FFISimulator, ScatteredLightField

REAL_FFI = "tess2018206192942-s0001-1-4-0120-s_ffic_corner128x173.fits"
SCIENCE = (slice(0, 2048), slice(44, 2092))


@pytest.fixture(scope="module")
def sim():
    """Five frames over sector 1 (both orbits) with the default defects."""
    return FFISimulator(ScatteredLightField(seed=2), n_frames=5, seed=11, n_stars=5000)


@pytest.fixture(scope="module")
def ffi_paths(sim, tmp_path_factory):
    """The five frames as SPOC-like files; the last with a science-only uncertainty image."""
    folder = tmp_path_factory.mktemp("ffis")
    paths = sim.write_ffis(folder, [0, 1, 2, 3])
    paths += sim.write_ffis(folder, [4], science_only_err=True)
    return paths


def _linked_set(folder, paths):
    """Symlink ``paths`` into ``folder`` (cheap stand-ins for copies)."""
    folder.mkdir()
    for p in paths:
        (folder / p.name).symlink_to(p)
    return folder


# ---------------------------------------------------------------------- LocalFFISource
@pytest.mark.slow
def test_local_source_reads_back_simulator(sim, ffi_paths):
    source = LocalFFISource(ffi_paths[0].parent)
    assert (source.sector, source.camera, source.ccd) == (1, 1, 1)
    assert len(source) == 5
    assert "5 SPOC FFIs" in source.description
    np.testing.assert_allclose(source.time, sim.time, rtol=0, atol=1e-9)
    np.testing.assert_array_equal(source.quality, sim.quality)
    assert [f.name for f in source.frames] == [sim.filename(i) for i in range(5)]
    for frame, flux, flux_err in source.iter_read(prefetch=2):
        full_flux, full_err = sim.frame(frame.index)
        assert flux.shape == flux_err.shape == (2048, 2048)
        assert flux.dtype == flux_err.dtype == np.float32
        assert flux.flags.c_contiguous
        assert flux.flags.writeable
        assert flux.dtype.isnative
        # float32 written and read back: exact.
        np.testing.assert_array_equal(flux, full_flux[SCIENCE])
        np.testing.assert_array_equal(flux_err, full_err[SCIENCE])
        assert frame.cadenceno == -1
        assert frame.tstart < frame.time < frame.tstop


def test_local_source_frames_are_time_sorted_whatever_the_input_order(ffi_paths):
    shuffled = list(ffi_paths)
    random.Random(4).shuffle(shuffled)
    expected = [p.name for p in ffi_paths]  # written in time order
    for spec in (
        list(reversed(ffi_paths)),
        shuffled,
        [str(p) for p in shuffled],
        str(ffi_paths[0].parent / "*-s0001-1-1-*ffic.fits"),
        ffi_paths[0].parent,
    ):
        source = LocalFFISource(spec)
        assert [f.name for f in source.frames] == expected
        assert [f.index for f in source.frames] == list(range(5))
        assert np.all(np.diff(source.time) > 0)
    single = LocalFFISource(ffi_paths[2])
    assert len(single) == 1
    assert single.frames[0].name == ffi_paths[2].name


def test_local_source_handles_both_uncertainty_layouts(ffi_paths):
    full = read_ffi_header(ffi_paths[0])
    science_only = read_ffi_header(ffi_paths[4])
    assert full.err_shape == (2078, 2136)
    assert science_only.err_shape == (2048, 2048)
    source = LocalFFISource(ffi_paths)
    for index in (0, 4):
        flux, flux_err = source.read(index)
        assert flux_err.shape == (2048, 2048)
        assert np.all(flux_err > 0)


def test_local_source_time_gap_and_quality(sim, ffi_paths):
    source = LocalFFISource(ffi_paths)
    # Five frames spread over the sector: both orbits, none in the orbit gap
    # (sector 1 synthetic gap: BTJD 1338.5-1339.5).
    middle = 1325.30 + 27.4 / 2
    assert np.all(np.abs(source.time - middle) > 0.5)
    assert np.any(source.time < middle)
    assert np.any(source.time > middle)
    assert any(f.quality & 32 for f in source.frames)  # momentum dump
    for frame in source.frames:
        assert frame.quality == sim.quality[frame.index]


def test_no_files_found(tmp_path):
    with pytest.raises(FFISourceError, match="No SPOC FFI files found in directory"):
        LocalFFISource(tmp_path)
    with pytest.raises(FFISourceError, match="No SPOC FFI files found in pattern"):
        LocalFFISource(str(tmp_path / "*ffic.fits"))
    with pytest.raises(FFISourceError, match="neither a directory"):
        LocalFFISource(tmp_path / "nothing-here.fits")
    with pytest.raises(FFISourceError, match="does not exist"):
        LocalFFISource([tmp_path / "missing-s0001-1-1-0120-s_ffic.fits"])
    with pytest.raises(FFISourceError, match="No SPOC FFI files found"):
        LocalFFISource([])


def test_rejects_mixed_cameras_naming_the_odd_file(ffi_paths, tmp_path):
    folder = _linked_set(tmp_path / "set", ffi_paths[:3])
    odd = folder / ffi_paths[3].name
    shutil.copy(ffi_paths[3], odd)
    fits.setval(odd, "CAMERA", value=2, ext=1)
    with pytest.raises(FFISourceError, match=f"{odd.name} is sector 1 camera 2 CCD 1") as info:
        LocalFFISource(folder)
    assert "3 of the 4 files are sector 1 camera 1 CCD 1" in str(info.value)
    assert isinstance(info.value, ScatterLightError)


def test_rejects_mixed_sectors_naming_the_odd_file(ffi_paths, tmp_path):
    folder = _linked_set(tmp_path / "set", ffi_paths[:3])
    odd = folder / ffi_paths[3].name.replace("-s0001-", "-s0002-")
    odd.symlink_to(ffi_paths[3])
    with pytest.raises(FFISourceError, match=f"{odd.name} is sector 2 camera 1 CCD 1"):
        LocalFFISource(folder)


def test_rejects_duplicate_times_naming_both_files(ffi_paths, tmp_path):
    folder = _linked_set(tmp_path / "set", ffi_paths[:2])
    twin = folder / "tess2099001000000-s0001-1-1-0120-s_ffic.fits"
    twin.symlink_to(ffi_paths[1])
    with pytest.raises(FFISourceError, match="same time") as info:
        LocalFFISource(folder)
    assert ffi_paths[1].name in str(info.value)
    assert twin.name in str(info.value)


def test_rejects_missing_keyword_naming_the_file(ffi_paths, tmp_path):
    folder = _linked_set(tmp_path / "set", ffi_paths[:1])
    odd = folder / ffi_paths[1].name
    shutil.copy(ffi_paths[1], odd)
    fits.delval(odd, "DQUALITY", ext=1)
    with pytest.raises(FFISourceError, match=f"{odd.name}: no DQUALITY keyword"):
        LocalFFISource(folder)


def test_rejects_wrong_shapes(tmp_path):
    header = fits.Header({"TSTART": 1325.3, "TSTOP": 1325.32, "DQUALITY": 0, "CAMERA": 1, "CCD": 1})
    bad_image = tmp_path / "tess2018206190238-s0001-1-1-0120-s_ffic.fits"
    fits.HDUList(
        [
            fits.PrimaryHDU(),
            fits.ImageHDU(np.zeros((2048, 2048), np.float32), header=header),
            fits.ImageHDU(np.zeros((2048, 2048), np.float32), header=header),
        ]
    ).writeto(bad_image)
    with pytest.raises(FFISourceError, match=f"{bad_image.name}: calibrated image is 2048 x 2048"):
        LocalFFISource(bad_image)
    no_err = tmp_path / "tess2018206193238-s0001-1-1-0120-s_ffic.fits"
    full = np.zeros((2078, 2136), np.float32)
    fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(full, header=header)]).writeto(no_err)
    with pytest.raises(FFISourceError, match="uncertainty image \\(extension 2\\) is missing"):
        LocalFFISource(no_err)


def test_rejects_real_cropped_ffi_with_a_shape_message(shared_data):
    path = shared_data(REAL_FFI)
    with pytest.raises(FFISourceError, match="calibrated image is 128 x 173") as info:
        LocalFFISource(path)
    assert "expected a full SPOC FFI of 2078 x 2136" in str(info.value)
    assert path.name in str(info.value)


def test_read_ffi_header_of_real_spoc_ffi(shared_data):
    header = read_ffi_header(shared_data(REAL_FFI))
    assert (header.sector, header.camera, header.ccd) == (1, 1, 4)
    assert header.tstart == pytest.approx(1325.318778691997, abs=1e-12)
    assert header.tstop == pytest.approx(1325.339612017777, abs=1e-12)
    assert header.time == pytest.approx(0.5 * (1325.318778691997 + 1325.339612017777))
    assert header.quality == 0
    assert header.shape == (128, 173)
    assert header.err_shape == (128, 128)
    assert header.bunit == "electrons/s"


def _tiny_ffi(path, primary=None, **image_cards):
    cards = {"TSTART": 1325.3, "TSTOP": 1325.32, "DQUALITY": 4, "CAMERA": 3, "CCD": 2}
    cards.update(image_cards)
    image = fits.Header({k: v for k, v in cards.items() if v is not None})
    data = np.zeros((2, 2), np.float32)
    fits.HDUList([fits.PrimaryHDU(header=primary), fits.ImageHDU(data, header=image)]).writeto(path)
    return path


def test_read_ffi_header_sector_sources_and_errors(tmp_path):
    named = _tiny_ffi(tmp_path / "tess2020001000000-s0020-3-2-0120-s_ffic.fits")
    header = read_ffi_header(named)
    assert (header.sector, header.camera, header.ccd, header.quality) == (20, 3, 2, 4)
    assert header.err_shape is None
    keyword = _tiny_ffi(tmp_path / "renamed.fits", primary=fits.Header({"SECTOR": 7}))
    assert read_ffi_header(keyword).sector == 7
    with pytest.raises(FFISourceError, match="anonymous.fits: cannot tell the sector"):
        read_ffi_header(_tiny_ffi(tmp_path / "anonymous.fits"))
    with pytest.raises(FFISourceError, match="no TSTART keyword"):
        read_ffi_header(_tiny_ffi(tmp_path / "x-s0001-.fits", TSTART=None))
    camera_in_primary = _tiny_ffi(
        tmp_path / "y-s0001-.fits", primary=fits.Header({"CAMERA": 4}), CAMERA=None
    )
    assert read_ffi_header(camera_in_primary).camera == 4
    not_fits = tmp_path / "z-s0001-.fits"
    not_fits.write_text("not a FITS file")
    with pytest.raises(FFISourceError, match="cannot read it as a FITS file"):
        read_ffi_header(not_fits)


def test_read_errors(ffi_paths, tmp_path):
    folder = _linked_set(tmp_path / "set", ffi_paths[:1])
    copy = folder / ffi_paths[1].name
    shutil.copy(ffi_paths[1], copy)
    source = LocalFFISource(folder)
    with pytest.raises(FFISourceError, match="outside 0..1"):
        source.read(2)
    with pytest.raises(FFISourceError, match="must be an int"):
        source.read(0.5)
    with open(copy, "r+b") as f:
        f.truncate(20_000_000)
    with pytest.raises(FFISourceError, match="size changed"):
        source.read(1)
    with pytest.raises(FFISourceError, match="truncated"):
        LocalFFISource(folder)
    copy.unlink()
    with pytest.raises(FFISourceError, match="moved or deleted"):
        source.read(1)


# ---------------------------------------------------------------------- SimulatedFFISource
def test_simulated_source_matches_simulator_and_files(sim, ffi_paths):
    source = SimulatedFFISource(sim)
    local = LocalFFISource(ffi_paths)
    assert (source.sector, source.camera, source.ccd) == (1, 1, 1)
    assert [f.name for f in source.frames] == [f.name for f in local.frames]
    np.testing.assert_allclose(source.time, local.time, rtol=0, atol=1e-9)
    np.testing.assert_array_equal(source.quality, local.quality)
    np.testing.assert_array_equal([f.cadenceno for f in source.frames], sim.cadenceno)
    assert "simulated" in source.description
    flux, flux_err = source.read(2)
    assert flux.shape == (2048, 2048)
    assert flux.flags.c_contiguous
    local_flux, local_err = local.read(2)
    np.testing.assert_array_equal(flux, local_flux)
    np.testing.assert_array_equal(flux_err, local_err)


def test_simulated_source_region_generates_only_the_region(sim):
    region = Region(129, 173, 128, 128)
    source = SimulatedFFISource(sim, region)
    assert source.region == region
    assert str(region) in source.description
    flux, flux_err = source.read(1)
    assert flux.shape == flux_err.shape == (128, 128)
    np.testing.assert_array_equal((flux, flux_err), sim.science(1, region))
    assert SimulatedFFISource(sim, Region.full()).region.is_full


# ---------------------------------------------------------------------- iter_read
class SlowSource(FFISource):
    """A fake source whose reads take ``delay`` seconds and record concurrency."""

    def __init__(self, n=12, delay=0.02, fail_at=None):
        frames = [
            FrameInfo(i, 1400.0 + i, 1400.0 + i - 0.01, 1400.0 + i + 0.01, 0, i, f"f{i}")
            for i in range(n)
        ]
        super().__init__(5, 2, 3, frames, "slow fake")
        self.delay, self.fail_at = delay, fail_at
        self.lock = threading.Lock()
        self.active = self.max_active = self.started = 0

    def read(self, index):
        with self.lock:
            self.active += 1
            self.started += 1
            self.max_active = max(self.max_active, self.active)
        try:
            time.sleep(self.delay)
            if index == self.fail_at:
                raise FFISourceError(f"frame {index} is broken")
            return np.full((2, 2), index, np.float32), np.ones((2, 2), np.float32)
        finally:
            with self.lock:
                self.active -= 1


@pytest.mark.parametrize("prefetch", [1, 3])
def test_iter_read_order_and_bounded_prefetch(prefetch):
    source = SlowSource()
    order = [3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5]
    seen, started_when_yielded = [], []
    for frame, flux, flux_err in source.iter_read(order, prefetch=prefetch):
        started_when_yielded.append(source.started)
        seen.append(frame.index)
        assert flux[0, 0] == frame.index
        assert flux_err.shape == (2, 2)
        time.sleep(0.03)  # a slow consumer: reads must not run away
    assert seen == order
    assert source.max_active <= prefetch
    if prefetch > 1:
        assert source.max_active > 1  # reads really overlap
    for k, started in enumerate(started_when_yielded):
        assert started <= k + 1 + prefetch


def test_iter_read_defaults_and_validation():
    source = SlowSource(n=4, delay=0.0)
    assert [f.index for f, _, _ in source.iter_read()] == [0, 1, 2, 3]
    assert list(source.iter_read([])) == []
    with pytest.raises(FFISourceError, match="outside 0..3"):
        list(source.iter_read([0, 7]))
    assert source.started == 4  # the bad index was caught before reading anything
    for bad in (0, -1, 1.5, True):
        with pytest.raises(FFISourceError, match="prefetch must be an int >= 1"):
            list(source.iter_read(prefetch=bad))


def test_iter_read_propagates_errors_and_stops_cleanly():
    source = SlowSource(n=10, fail_at=4)
    reader = source.iter_read(prefetch=3)
    got = [next(reader)[0].index for _ in range(4)]
    assert got == [0, 1, 2, 3]
    with pytest.raises(FFISourceError, match="frame 4 is broken"):
        next(reader)
    source = SlowSource(n=50)
    reader = source.iter_read(prefetch=4)
    next(reader)
    reader.close()  # early stop: pending reads are cancelled or finished
    started = source.started
    time.sleep(0.1)
    assert source.started == started <= 6
    assert source.active == 0


def test_ffisource_rejects_unsorted_frames():
    frames = [FrameInfo(0, 2.0, 1.9, 2.1, 0, -1, "a"), FrameInfo(1, 1.0, 0.9, 1.1, 0, -1, "b")]

    class Unsorted(FFISource):
        def read(self, index):
            raise NotImplementedError

    with pytest.raises(FFISourceError, match="sorted by time"):
        Unsorted(1, 1, 1, frames, "bad")


def test_source_factory_kinds_and_errors():
    from lk_scatterlight.builder.source_factory import SOURCE_KINDS, SourceSpecError, make_source
    from lk_scatterlight.exceptions import ScatterLightError

    assert sorted(SOURCE_KINDS) == ["local", "simulate", "tesscube"]
    source = make_source(["simulate", "3"], 1, 2, 3)
    assert (source.sector, source.camera, source.ccd, len(source.frames)) == (1, 2, 3, 3)
    with pytest.raises(SourceSpecError, match="NFRAMES must be a whole number >= 1"):
        make_source(["simulate", "0"], 1, 2, 3)
    with pytest.raises(SourceSpecError, match="takes one NFRAMES at most"):
        make_source(["simulate", "1", "2"], 1, 2, 3)
    with pytest.raises(ScatterLightError, match="Unknown --source 'mast'"):
        make_source(["mast"], 1, 2, 3)
    with pytest.raises(ScatterLightError, match="needs one PATH"):
        make_source(["local"], 1, 2, 3)
