"""Regional builds that read every k-th row: which rows are read, the dark-frame ranking
of such a read, and what centring the read rows in their runs gains."""

from __future__ import annotations

import numpy as np
import pytest

from lk_scatterlight.builder.ffi_cube import region_bytes
from lk_scatterlight.builder.pipeline import BuildConfig, build_cube
from lk_scatterlight.builder.plan import sparse_config
from lk_scatterlight.builder.scene import frame_level, static_scene
from lk_scatterlight.builder.sources import FFISource, FrameInfo, sparse_read_rows
from lk_scatterlight.ccd import Region
from lk_scatterlight.simulate import FFISimulator, ScatteredLightField, sector_times

REGION = Region(865, 1613, 128, 128)  # open sky of the smooth field, on the 32-px grid
PATCH_ROWS, PATCH_COLS = np.arange(921, 936), np.arange(1669, 1684)


class _Frames(FFISource):
    """Frames of ``REGION`` served from memory; ``read_rows`` (if given) are the rows
    kept, as a sparse read that starts elsewhere than `sparse_read_rows` would."""

    def __init__(self, frames, pixels, read_rows=None, row_step=1):
        super().__init__(1, 1, 1, frames, "memory")
        self.region, self.pixels, self.row_step = REGION, pixels, row_step
        self.read_rows = read_rows

    def read(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        out = []
        for array in self.pixels[self._check_index(index)]:
            array = array.copy()
            if self.read_rows is not None:
                skipped = np.ones(array.shape[0], dtype=bool)
                skipped[self.read_rows] = False
                array[skipped] = np.nan
            out.append(array)
        return out[0], out[1]


def _frame_infos(n: int) -> list[FrameInfo]:
    return [FrameInfo(i, 1325.0 + i / 48, 0, 0, 0, i, f"frame{i}") for i in range(n)]


@pytest.mark.parametrize("step", [2, 3, 4, 6, 8, 16])
def test_read_rows_are_the_middle_rows_of_their_runs(step):
    rows = sparse_read_rows(128, step)
    assert rows[0] == (step - 1) // 2
    np.testing.assert_array_equal(np.diff(rows), step)
    assert rows[-1] >= 128 - step
    region = Region(1, 45, 128, 128)
    assert region_bytes(10, region, step) == rows.size * 128 * 10 * 8
    # Every bin whose side is a multiple of the step has its read rows centred
    # within 0.5 px (the first row of each run would sit (step - 1) / 2 px above).
    for side in (b for b in (4, 8, 16) if b % step == 0):
        bins = rows // side
        centroid = np.bincount(bins, rows % side) / np.bincount(bins)
        assert np.all(np.abs(centroid - (side - 1) / 2) <= 0.5)


def test_crop_keeps_the_read_rows_only():
    rng = np.random.default_rng(0)
    pixels = [(rng.normal(50, 1, (128, 128)).astype(np.float32),) * 2]
    frames = _Frames(_frame_infos(1), pixels)
    flux, err = frames.crop(REGION, row_step=8).read(0)
    read = np.flatnonzero(np.isfinite(flux).all(axis=1))
    np.testing.assert_array_equal(read, sparse_read_rows(128, 8))
    assert np.isnan(flux[np.setdiff1d(np.arange(128), read)]).all()
    np.testing.assert_array_equal(flux[read], pixels[0][0][read])
    np.testing.assert_array_equal(np.isfinite(err), np.isfinite(flux))


def test_frame_level_of_a_full_read_is_every_16th_pixel():
    flux = np.random.default_rng(1).normal(50, 5, (256, 256))
    assert frame_level(flux) == np.median(flux[::16, ::16])


@pytest.mark.parametrize("step", [3, 8])
def test_sparse_frames_are_ranked_by_their_read_rows(step):
    """Read every 8th row from row 3, a frame has no pixel on rows 0, 16, ...: its
    level must come from the rows it holds, or every frame ranks alike (NaN) and the
    static scene is the median of the first frames instead of the darkest."""
    rng = np.random.default_rng(2)
    levels = np.array([90.0, 80.0, 70.0, 60.0, 50.0, 40.0])  # the last frames are darkest
    pixels = []
    for level in levels:
        flux = rng.normal(level, 1, (128, 128)).astype(np.float32)
        pixels.append((flux, np.ones_like(flux)))
    rows = np.arange((step - 1) // 2, 128, step)  # rows 3, 11, ... at step 8
    frames = _Frames(_frame_infos(levels.size), pixels, rows, row_step=step)
    flux = frames.read(0)[0]
    assert np.isnan(flux[::16]).all() or step == 3  # step 8: no read row on the 16-px grid
    assert frame_level(flux) == pytest.approx(90, abs=1)
    config = BuildConfig(n_candidates=6, n_dark=3)
    static, dark = static_scene(frames, np.ones(levels.size, bool), config, progress=False)
    assert dark == [3, 4, 5]
    assert np.nanmedian(static) == pytest.approx(50, abs=1)


@pytest.fixture(scope="module")
def smooth_sky():
    """A region of open sky of the smooth field, simulated once (frames after both
    perigees, so the light varies), and the truth on a TPF-sized patch in it."""
    times = sector_times(1)
    gap = int(np.argmax(np.diff(times))) + 1
    sim = FFISimulator(
        ScatteredLightField(seed=2),
        time=times[np.r_[0:8, gap : gap + 4]],
        seed=0,
        n_stars=4000,
        defects={},
    )
    from lk_scatterlight.builder.sources import SimulatedFFISource

    source = SimulatedFFISource(sim).crop(REGION)
    pixels = [source.read(i) for i in range(len(sim))]
    return sim, source.frames, pixels


def _varying_rms(cube, sim) -> float:
    """RMS of model - truth on the patch after removing each pixel's time mean [e-/s]."""
    truth = sim.field(cube.btjd, PATCH_ROWS, PATCH_COLS) * sim.column_response[PATCH_COLS - 45]
    residual = cube.evaluate(cube.btjd, PATCH_ROWS, PATCH_COLS).flux.value - truth
    residual -= residual.mean(axis=0)
    return float(np.sqrt(np.mean(residual**2)))


@pytest.mark.slow
def test_centred_read_rows_keep_a_step_8_cube_near_the_full_read(smooth_sky, tmp_path):
    """Every 8th row read, the 16-px bins and 8-px fine bins hold their read rows
    around their centres (rows 3, 11, ...): on open sky the cube's error is 2.4x the
    full read's (0.029 against 0.012 e-/s); reading each run's first row (0, 8, ...)
    puts them 3.5 px above the centres, and the error is 1.6x that (0.046 e-/s)."""
    sim, infos, pixels = smooth_sky
    config = BuildConfig()
    step_config = sparse_config(config, 8)
    errors = {}
    for name, source, cfg in (
        ("full", _Frames(infos, pixels), config),
        ("centred", _Frames(infos, pixels).crop(REGION, row_step=8), step_config),
        ("first rows", _Frames(infos, pixels, np.arange(0, 128, 8), row_step=8), step_config),
    ):
        cube = build_cube(source, cfg, work_dir=tmp_path / name, progress=False)
        errors[name] = _varying_rms(cube, sim)
    assert errors["centred"] < 3 * errors["full"], errors
    assert errors["first rows"] > 1.3 * errors["centred"], errors
