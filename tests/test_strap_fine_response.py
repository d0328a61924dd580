"""The fine layer's per-frame strap response on a frame the static scene is made from."""

import numpy as np

from lk_scatterlight.builder.fine import fine_residual, make_fine_context
from lk_scatterlight.builder.fine.context import _bin_sums
from lk_scatterlight.builder.fine.residual import _frame_strap_sums, _reference_noise
from lk_scatterlight.builder.strap_photometry import (
    gather_columns,
    reference_weights,
    strap_rows,
    strap_sums,
)

N = 2048
SIGMA, RESPONSE, SKY = 0.25, 1.04, 30.0
STRAPS = np.arange(672, 676)  # one 4-px fine bin
REFS = np.tile([670, 669, 677, 678], (STRAPS.size, 1))


def _dark_frames():
    """Three dark frames (sky, straps RESPONSE x brighter), the static scene (their
    pixel-wise median) and the first frame's difference from it, with the first frame's
    light above its sky. The other two sit 1 e-/s below and above the first, which is
    the median (its difference exactly zero) except where it dips 6 e-/s."""
    rng = np.random.default_rng(3)
    r = np.arange(N, dtype=np.float32)[:, None]
    dip = -6.0 * np.exp(-0.5 * ((r - 1300) / 250) ** 2) * np.ones(N, np.float32)
    column = np.ones(N, np.float32)
    column[STRAPS] = RESPONSE
    frames = []
    for light in (SKY + dip, SKY - 1.0, SKY + 1.0):
        noise = rng.normal(0, SIGMA, (N, N)).astype(np.float32)
        frames.append((light * column + noise).astype(np.float32))
    static = np.median(frames, axis=0).astype(np.float32)
    return frames[0] - static, static, dip


def _context(static):
    context = make_fine_context(
        np.ones((N, N), np.float32), 16, pixel_bin=4, tile=8, threshold=2.0, strap_idx=STRAPS
    )
    rows = strap_rows(np.ones((N, N), bool), STRAPS, REFS)
    context.strap_noise = (REFS, reference_weights(STRAPS, REFS)[0], rows)
    context.strap_static = gather_columns(static, STRAPS, REFS)
    return context


def test_frame_strap_sums_measure_the_response_on_a_static_frame():
    """On the difference nothing is measured: it is zero on most rows, so the clip of
    curved rows (robust spread zero) leaves almost none. The whole frame measures it."""
    diff, static, _ = _dark_frames()
    context = _context(static)
    noise = _reference_noise(context, np.full((N, N), SIGMA, np.float32))
    on_diff = strap_sums(diff, np.ones((N, N), bool), STRAPS, REFS)
    assert np.all(np.abs(on_diff[:, 0] / on_diff[:, 1] - RESPONSE) > 0.5)  # or 0 / 0
    whole = _frame_strap_sums(diff, context, on_diff)
    np.testing.assert_allclose(whole[:, 0] / (whole[:, 1] - noise), RESPONSE, atol=0.002)
    context.strap_static = None
    assert _frame_strap_sums(diff, context, on_diff) is on_diff  # no static scene


def test_fine_residual_no_strap_block_on_a_static_frame():
    """Where the frame dips, the strap's fine bins match their neighbours: the strap is
    divided by its response (by 1 from the difference's sums: a 0.2 e-/s block)."""
    diff, static, _ = _dark_frames()
    context = _context(static)
    unc = np.full((N, N), SIGMA, np.float32)
    sums = strap_sums(diff, np.ones((N, N), bool), STRAPS, REFS)
    coarse = _bin_sums(diff / np.where(np.isin(np.arange(N), STRAPS), RESPONSE, 1), 16) / 256
    err = np.full((128, 128), SIGMA / 16, np.float32)
    frame = fine_residual(diff, coarse, err, np.full((128, 128), 256), context, unc, sums)
    column = STRAPS[0] // 32  # the strap's tile column; the strap is its first bin column
    dip = [k for k, t in enumerate(frame.tiles.tolist()) if t % 64 == column and 36 <= t // 64 < 46]
    assert len(dip) >= 5  # of the dip's strongest part (rows 1152-1471): measured 9
    blocks = frame.blocks[dip]
    step = blocks[:, :, 0].mean() - blocks[:, :, 1:3].mean()
    assert abs(step) < 0.03  # measured -0.003; divided by 1: -0.205
