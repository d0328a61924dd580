"""The fine layer keeps a persistent structure in the frames where it is faint
(`persistent_blocks`), and leaves noise tiles out."""

import numpy as np
import pytest

from lk_scatterlight.builder.fine import assemble_fine, fine_residual, make_fine_context
from lk_scatterlight.builder.fine.context import _bin_sums
from lk_scatterlight.builder.fine.persist import candidate_level, persistent_blocks

N, SIGMA = 2048, 2.0  # CCD side [px], per-pixel noise [e-/s]


def test_persistent_blocks_keep_candidates_of_tiles_that_pass_in_half_the_frames():
    """Tile 0 passes in 2 of 4 frames: its candidates are kept. Tile 1 passes once: its
    candidate is dropped, its passing block kept. Tile 2 never passes: dropped."""
    chi2 = np.array(
        [[3.0, 3.0, 1.3], [2.5, 1.4, 1.0], [1.3, 1.0, 1.3], [1.25, 1.5, 1.0]], np.float32
    )
    kept = chi2 > candidate_level(2.0)
    got = persistent_blocks(kept, chi2, 2.0)
    np.testing.assert_array_equal(got[:, 0], [True, True, True, True])
    np.testing.assert_array_equal(got[:, 1], [True, False, False, False])
    assert not got[:, 2].any()
    assert candidate_level(2.0) == pytest.approx(1.2)


@pytest.fixture(scope="module")
def edge_frames():
    """A fixed shadow edge (3-px wide step across the CCD, 4-px fine bins): 40 e-/s in
    four bright frames, 4 e-/s in two dark ones, where its tiles score 1.2-1.6 (the
    threshold is 2); each frame's `fine_residual` and the noise-free one's blocks."""
    context = make_fine_context(
        np.ones((N, N), np.float32), coarse_bin=16, pixel_bin=4, tile=16, threshold=2.0
    )
    r, c = np.mgrid[:N, :N].astype(np.float32)
    with np.errstate(over="ignore"):
        edge = 1 / (1 + np.exp(-(0.6 * r + 0.8 * c - 1400) / 1.5))
    rng = np.random.default_rng(5)
    err = np.full((128, 128), SIGMA / 16, np.float32)
    unc = np.full((N, N), SIGMA, np.float32)

    def residual(frame):
        plane = _bin_sums(frame, 16) / 256
        return fine_residual(frame, plane, err, np.full((128, 128), 256), context, unc)

    heights = [40.0, 40.0, 4.0, 40.0, 4.0, 40.0]
    frames = [
        residual((h * edge + rng.normal(0, SIGMA, (N, N))).astype(np.float32)) for h in heights
    ]
    bright = residual((40.0 * edge).astype(np.float32))  # noise-free, linear in the height
    return context, np.array(heights), frames, (bright.tiles, bright.blocks / 10)


def _work_area(context, frames):
    nt2, t = context.ntiles**2, context.tile
    fine = np.zeros((len(frames), nt2, t, t), np.float32)
    kept = np.zeros((len(frames), nt2), bool)
    sigma = np.zeros((len(frames), nt2), np.float32)
    chi2 = np.stack([f.chi2.ravel() for f in frames])
    for i, f in enumerate(frames):
        fine[i, f.tiles], kept[i, f.tiles], sigma[i, f.tiles] = f.blocks, True, f.sigma
    return fine, kept, sigma, chi2


def test_faint_frames_of_a_persistent_edge_keep_their_blocks(edge_frames):
    """In the dark frames most of the edge's tiles have blocks (66 % measured; the rest
    barely touch it), and the layer's RMS error over those tiles is under half the
    edge's residual (measured 0.40; no block, as before the candidates: all of it);
    tiles far from the edge, whose candidates are noise, stay out of the layer."""
    context, heights, frames, truth = edge_frames
    fine, kept, sigma, chi2 = _work_area(context, frames)
    tiles, blocks = truth  # the dark frames' blocks without noise
    edge_tiles = tiles[np.sqrt(np.mean(blocks**2, axis=(1, 2))) > 0.1]
    assert edge_tiles.size > 30
    dark = np.flatnonzero(heights < 10)
    assert np.all(chi2[np.ix_(dark, edge_tiles)] < context.threshold)  # faint: none passes
    used = np.arange(len(frames))
    layer = assemble_fine(
        fine, kept, sigma, used, [np.array([i]) for i in used], context, chi2=chi2
    )

    tile_of = layer.tile_row * context.ntiles + layer.tile_col
    assert set(tile_of.tolist()) <= set(tiles.tolist())  # no noise tile
    noise_candidates = kept[dark][:, ~np.isin(np.arange(kept.shape[1]), tiles)]
    assert noise_candidates.sum() > 5  # there were some to leave out
    truth_of = dict(zip(tiles.tolist(), blocks, strict=True))
    want = np.stack([truth_of[int(k)] for k in edge_tiles])
    for frame in dark:
        got = np.zeros_like(want)  # the layer at the edge tiles (0 without a block)
        for n, k in enumerate(edge_tiles):
            here = np.flatnonzero((tile_of == k) & (layer.plane == frame))
            if here.size:
                got[n] = layer.blocks(here)[0]
        covered = np.mean(np.abs(got).max(axis=(1, 2)) > 0)
        error = np.sqrt(np.mean((got - want) ** 2)) / np.sqrt(np.mean(want**2))
        assert covered > 0.6
        assert error < 0.5


def test_candidates_carry_no_errors_and_the_layer_pools_the_passing_frames(edge_frames):
    """A frame measures the misfit and fill probe of the tiles above the threshold only
    (the candidates' rows are 0, their probe NaN); the layer's errors of a persistent
    tile come from the frames where it passed, so whatever the candidates' rows hold
    (here 1e3), the layer is the same."""
    context, _, frames, _ = edge_frames
    passed = [f.chi2.ravel()[f.tiles] > context.threshold for f in frames]
    assert sum(p.sum() for p in passed) > 0
    assert sum((~p).sum() for p in passed) > 0
    for frame, p in zip(frames, passed, strict=True):
        assert not frame.misfit[~p].any()
        assert np.isnan(frame.fill_probe[~p]).all()
        assert np.all(np.abs(frame.misfit[p]).max(axis=1) > 0)
    fine, kept, sigma, chi2 = _work_area(context, frames)
    nt2, width = kept.shape[1], frames[0].misfit.shape[1]
    misfit = np.zeros((len(frames), nt2, width), np.float32)
    for i, f in enumerate(frames):
        misfit[i, f.tiles] = f.misfit
    used = np.arange(len(frames))
    groups = [np.array([i]) for i in used]

    def layer(rows):
        return assemble_fine(fine, kept, sigma, used, groups, context, misfit=rows, chi2=chi2)

    measured, noisy = layer(misfit), misfit.copy()
    noisy[kept & (chi2 <= context.threshold)] = 1e3
    changed = layer(noisy)
    assert measured.misfit.max() > 0  # the edge's tiles quote a misfit
    for name in ("error", "misfit", "long_misfit", "fill_error"):
        np.testing.assert_array_equal(getattr(changed, name), getattr(measured, name))
