"""The strap response's error counts what all frames share (two-way clustered sums, #19)."""

import numpy as np
import pytest

from lk_scatterlight.builder import strap_photometry

STRAPS = np.array([20, 21, 100])
REFS = np.array([[18, 17, 24, 25], [18, 17, 24, 25], [97, 96, 103, 104]])


def test_block_sums_add_up_to_the_plain_sums():
    rng = np.random.default_rng(4)
    diff = rng.normal(10, 3, (203, 130)).astype(np.float32)  # rows not a multiple of 8
    diff[7, 20] = np.nan
    clean = rng.random(diff.shape) > 0.1
    plain = strap_photometry.strap_sums(diff, clean, STRAPS, REFS)
    blocks = strap_photometry.strap_sums(diff, clean, STRAPS, REFS, blocks=8)
    assert blocks.shape == (3, 8, 2)
    np.testing.assert_allclose(blocks.sum(axis=1), plain, rtol=1e-10)
    # Each block holds its own rows only: the first block, from the first 25 rows alone.
    head = blocks[:, 0, 1]
    assert np.all(head > 0)
    assert np.all(head < 0.3 * plain[:, 1])
    empty = strap_photometry.strap_sums(diff, clean, STRAPS[:0], REFS[:0], blocks=8)
    assert empty.shape == (0, 8, 2)


def _block_sums(rng, nframes, response, static, noise, blocks=8, rows=400):
    """Per-frame, per-block sums of a strap seeing ``response[f]`` times its reference,
    plus noise of its own each frame and ``static`` noise the same in every frame (the
    static scene's, subtracted from all frames), shape (nframes, 1, blocks, 2)."""
    shared = static * rng.standard_normal(rows)
    edges = np.linspace(0, rows, blocks + 1).astype(int)
    out = np.empty((nframes, 1, blocks, 2))
    for f in range(nframes):
        ref = (5 + 3 * f) * (1 + 0.2 * rng.standard_normal(rows))
        strap = response[f] * ref + shared + noise * rng.standard_normal(rows)
        for b in range(blocks):
            r = slice(edges[b], edges[b + 1])
            out[f, 0, b] = strap[r] @ ref[r], ref[r] @ ref[r]
    return out


def _honesty(static, drift, with_blocks, repeats=300):
    """RMS quoted error over the RMS scatter of the response about its truth."""
    rng = np.random.default_rng(2)
    nframes = 12
    errors, quoted = [], []
    for _ in range(repeats):
        truth = 1.04 + drift * rng.standard_normal(nframes)
        sums = _block_sums(rng, nframes, truth, static, 2.0)
        if not with_blocks:
            sums = sums.sum(axis=2)
        response, error, ok = strap_photometry.strap_response(sums)
        assert ok.all()
        errors.append(response[0] - 1.04)
        quoted.append(error[0])
    actual = np.sqrt(np.mean(np.square(errors)))
    return np.sqrt(np.mean(np.square(quoted))) / actual


@pytest.mark.parametrize(("static", "drift"), [(0.0, 0.0), (0.0, 0.01), (2.0, 0.0), (2.0, 0.01)])
def test_the_quoted_error_matches_the_scatter_of_the_response(static, drift):
    """Frame noise, a response changing from frame to frame, a static scene's noise
    shared by all frames, and both: quoted within 25 % of the actual scatter."""
    assert _honesty(static, drift, with_blocks=True) == pytest.approx(1, rel=0.25)


def test_without_blocks_the_shared_noise_is_missed():
    """The frame-clustered error alone quotes the shared noise ~3x too small here: the
    case the blocks are for (and what the test above would catch)."""
    assert _honesty(2.0, 0.0, with_blocks=False) < 0.5


def test_a_memory_map_and_a_choice_of_frames(tmp_path):
    rng = np.random.default_rng(5)
    sums = _block_sums(rng, 600, np.full(600, 1.03), 1.0, 2.0)  # over two chunks
    path = tmp_path / "strap.npy"
    np.save(path, sums)
    mapped = np.load(path, mmap_mode="r")
    frames = np.arange(0, 600, 2)
    got = strap_photometry.strap_response(mapped, frames)
    expected = strap_photometry.strap_response(sums[frames])
    for a, b in zip(got, expected, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-10)
    plain = strap_photometry.strap_response(sums[frames].sum(axis=2))
    np.testing.assert_allclose(got[0], plain[0], rtol=1e-12)  # same response
    assert got[1][0] > plain[1][0]  # a larger error: the shared noise
