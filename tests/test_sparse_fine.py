"""The fine layer of a regional build that read every k-th row (a sparse read)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from lk_scatterlight.builder.fine import MAX_OFFSET, make_fine_context
from lk_scatterlight.builder.pipeline import BuildConfig, build_cube
from lk_scatterlight.builder.plan import plan_build, sparse_config
from lk_scatterlight.builder.sources import FFISource, SimulatedFFISource
from lk_scatterlight.ccd import Region
from lk_scatterlight.simulate import FFISimulator, ScatteredLightField, sector_times


def sparse_weights(n: int, step: int) -> tuple[np.ndarray, np.ndarray]:
    read = np.zeros(n, dtype=bool)
    read[::step] = True
    return np.where(read[:, None], 1, 0).astype(np.float32) * np.ones(n, np.float32), read


@pytest.mark.parametrize("step", [3, 4])
def test_read_rows_of_a_sparse_read_are_bins_not_holes(step):
    """One read row in a 4-px bin sits up to 1.5 px from its centre, beyond
    MAX_OFFSET; measured from the read rows' own centre, the bins are valid."""
    weights, read = sparse_weights(128, step)
    context = make_fine_context(weights, 16, 4, 16, 2.0, read_rows=read)
    assert MAX_OFFSET < 1.5
    assert context.ok.all()
    assert context.sparse is not None
    offsets = context.sparse.offset
    assert np.all(np.abs(offsets) <= 1.5)
    if step == 4:
        np.testing.assert_allclose(offsets, -1.5)  # rows 0, 4, 8, ...: first row of each bin


def test_a_full_read_has_no_sparse_rows():
    weights = np.ones((128, 128), np.float32)
    read = np.ones(128, dtype=bool)
    assert make_fine_context(weights, 16, 4, 16, 2.0, read_rows=read).sparse is None


def test_mask_between_read_rows_makes_lopsided_bins_holes():
    """A star masked on the read row below a bin, and so (as a full read would
    see it) on the unread rows between: the bin's read row is valid, but the bin
    is lopsided and stays a hole, as in a full read."""
    weights, read = sparse_weights(128, 4)
    weights[8, 40:48] = 0  # masked on read row 8: rows 5-7 of bin 1 count masked too
    context = make_fine_context(weights, 16, 4, 16, 2.0, read_rows=read)
    assert not context.ok[1, 10:12].any()
    assert context.ok[1, 9]
    assert context.ok[1, 12]


@pytest.mark.parametrize(
    ("fine_bin", "step", "expected"),
    [
        (4, 1, (4, 16)),
        (4, 4, (4, 16)),
        (4, 8, (8, 8)),
        (2, 3, (4, 8)),
        (2, 8, (8, 4)),
        (4, 12, (0,)),
    ],
)
def test_sparse_config_chooses_fine_bins_that_hold_a_read_row(fine_bin, step, expected):
    config = BuildConfig(fine_bin=fine_bin)
    got = sparse_config(config, step)
    assert (got.fine_bin, got.fine_tile)[: len(expected)] == expected
    if got.fine_bin:  # tiles keep their size in pixels: the region's grid does not change
        assert got.fine_bin * got.fine_tile == config.fine_bin * config.fine_tile
    if got.fine_bin == fine_bin:
        assert got is config


# ---------------------------------------------------------------------- end to end
#: The structured field's 6-px shadow edge runs down CCD column 1318.5; this region
#: (on the 64-px grid) straddles it, and the patch is a TPF on it.
REGION = Region(961, 1261, 128, 128)
PATCH_ROWS, PATCH_COLS = np.arange(1000, 1015), np.arange(1311, 1326)


class _Frames(FFISource):
    """A region's simulated frames, generated once and served from memory."""

    def __init__(self, sim: FFISimulator, region: Region):
        source = SimulatedFFISource(sim).crop(region)
        super().__init__(sim.sector, sim.camera, sim.ccd, source.frames, "memory")
        self.region = region
        self.pixels = [source.read(i) for i in range(len(sim))]

    def read(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        flux, err = self.pixels[self._check_index(index)]
        return flux.copy(), err.copy()


@pytest.fixture(scope="module")
def shadow_edge(tmp_path_factory):
    times = sector_times(1)
    gap = int(np.argmax(np.diff(times))) + 1  # frames after both perigees: the light varies
    sim = FFISimulator(
        ScatteredLightField(structured=True),
        time=times[np.r_[0:5, gap : gap + 4]],
        seed=3,
        n_stars=4000,
        defects={},
    )
    frames = _Frames(sim, REGION)
    config = BuildConfig(pixel_bin=16, n_candidates=8, n_dark=3, fine_bin=4)  # as sparse reads get
    cubes = {}
    for name, step, cfg in (
        ("full", 1, config),
        ("step 4", 4, sparse_config(config, 4)),
        ("no fine", 1, dataclasses.replace(config, fine_bin=0)),
    ):
        work = tmp_path_factory.mktemp("work")
        cubes[name] = build_cube(
            frames.crop(REGION, row_step=step), cfg, work_dir=work, progress=False
        )
    response = sim.column_response[PATCH_COLS - 45]
    truth = sim.field(cubes["full"].btjd, PATCH_ROWS, PATCH_COLS) * response
    return cubes, truth


def varying_rms(cube, truth) -> float:
    """RMS of model - truth after removing each pixel's time mean [e-/s]."""
    residual = cube.evaluate(cube.btjd, PATCH_ROWS, PATCH_COLS).flux.value - truth
    residual -= residual.mean(axis=0)
    return float(np.sqrt(np.mean(residual**2)))


@pytest.mark.slow
def test_sparse_read_keeps_the_fine_layer_at_a_shadow_edge(shadow_edge):
    """Read every 4th row, the cube keeps the shadow edge in its fine layer: within
    2x the full read's error there (measured 0.20 against 0.18 e-/s), where the
    16-px bins alone leave 1.7 e-/s (as did the sparse read before its bins
    counted: its layer was empty)."""
    cubes, truth = shadow_edge
    assert cubes["step 4"].fine is not None
    assert len(cubes["step 4"].fine) > 0
    full, sparse = varying_rms(cubes["full"], truth), varying_rms(cubes["step 4"], truth)
    coarse = varying_rms(cubes["no fine"], truth)
    assert coarse > 4 * full  # the edge is there and the bins miss it
    assert sparse < 2 * full, (sparse, full, coarse)


def test_plan_warns_when_fine_bins_cannot_hold_a_read_row(caplog):
    sim = FFISimulator(ScatteredLightField(), time=sector_times(1)[:6], n_stars=10)
    source = SimulatedFFISource(sim).crop(REGION, row_step=4)
    config = BuildConfig(pixel_bin=16, n_candidates=6, n_dark=3, fine_bin=2)
    with caplog.at_level("WARNING", logger="lk_scatterlight.builder.plan"):
        plan_build(source, config)
    assert "sparse_config" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="lk_scatterlight.builder.plan"):
        plan_build(source, sparse_config(config, 4))
    assert caplog.text == ""
