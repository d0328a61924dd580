"""Regional builds that read every k-th row: which rows are read, the dark-frame ranking
of such a read, and what centring the read rows in their runs gains."""

from __future__ import annotations

import numpy as np
import pytest

from lk_scatterlight.builder.pipeline import BuildConfig
from lk_scatterlight.builder.scene import frame_level, static_scene
from lk_scatterlight.builder.sources import FFISource, FrameInfo
from lk_scatterlight.ccd import Region

REGION = Region(865, 1613, 128, 128)  # open sky of the smooth field, on the 32-px grid


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
