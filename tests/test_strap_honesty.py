"""Honesty of the strap responses' quoted errors on a simulated build (#19): the
responses scatter about the simulator's truth as much as their errors say."""

import numpy as np
import pytest

from lk_scatterlight import simulate
from lk_scatterlight.builder import assembly, strap_photometry
from lk_scatterlight.builder.pipeline import BuildConfig, build_cube
from lk_scatterlight.builder.sources import SimulatedFFISource

# 8 frames at the start of orbit 1 and 8 after the orbit gap, as in test_pipeline.
TIMES = simulate.sector_times(1)
GAP = int(np.argmax(np.diff(TIMES))) + 1
FRAMES = np.r_[0:8, GAP : GAP + 8]


@pytest.fixture(scope="module")
def build(tmp_path_factory):
    """A coarse build (no fine layer: the straps' photometry does not depend on it) of
    the structured field, its simulator and the strap sums of the frames it used."""
    field = simulate.ScatteredLightField(structured=True, seed=11)
    sim = simulate.FFISimulator(field, time=TIMES[FRAMES], seed=11, n_stars=8000)
    work = tmp_path_factory.mktemp("straps")
    config = BuildConfig(pixel_bin=16, n_candidates=16, n_dark=4, fine_bin=0)
    seen = []

    def keep(sums, frames):
        seen.append(np.array(sums[frames]))
        return strap_photometry.strap_response(sums, frames)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(assembly, "strap_response", keep)
        cube = build_cube(SimulatedFFISource(sim), config, work_dir=work, progress=False)
    return cube, sim, seen[0]


def _pulls(response, error, columns, sim):
    truth = sim.column_response[columns - 45]
    return (response - truth) / error


@pytest.mark.slow
def test_the_responses_scatter_as_quoted(build):
    """RMS of (response - truth) / quoted error over the 116 straps: 1 if honest; the
    tolerance catches errors quoted 2x too small or too large."""
    cube, sim, _ = build
    assert cube.strap_column.size == 116
    assert np.all(cube.strap_response_err > 0)
    pulls = _pulls(cube.strap_response, cube.strap_response_err, cube.strap_column, sim)
    rms = np.sqrt(np.mean(pulls**2))
    assert 1 / 1.6 < rms < 1.6


@pytest.mark.slow
def test_frames_alone_would_quote_too_little(build):
    """The same sums clustered by frame only (the error before the row blocks) miss
    the static scene's noise that every frame shares: over 2x too small here."""
    cube, sim, sums = build
    assert sums.shape[2] == strap_photometry.STRAP_ROW_BLOCKS
    response, error, ok = strap_photometry.strap_response(sums.sum(axis=2))
    np.testing.assert_allclose(response[ok], cube.strap_response, rtol=1e-12)
    pulls = _pulls(response[ok], error[ok], cube.strap_column, sim)
    assert np.sqrt(np.mean(pulls**2)) > 2
