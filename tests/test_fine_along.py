"""The fine layer's smoothing along the local structure of kept tiles (issue 19, item 3)."""

import numpy as np
import pytest

from lk_scatterlight import interpolate
from lk_scatterlight.builder.fine import (
    fine_residual,
    make_fine_context,
)
from lk_scatterlight.builder.fine.fill import (
    _least_squares,
)
from lk_scatterlight.builder.fine.residual import (
    _along_scale,
    _smooth_along_structure,
)

TILE = 32  # 2-px bins: a 64-px tile
N = 4 * TILE
ROWS, COLS = np.mgrid[:N, :N].astype(float)


def ridge(offset: float = 0.0) -> np.ndarray:
    """A diagonal ridge of 12 px FWHM and height 1 on a 2-px grid (6 bins FWHM), through
    the centre of tile 5 (rows and columns 32-63)."""
    across = 0.6 * (ROWS - 47.5) + 0.8 * (COLS - 47.5) - offset
    return np.exp(-0.5 * (across / (6 / 2.355)) ** 2)


def smoothed(image: np.ndarray, kept=(5,), model=None) -> tuple[np.ndarray, float]:
    """``image`` (a residual against ``model``, 0 by default) smoothed in the ``kept`` tiles."""
    out = image.copy()
    model = np.zeros_like(image) if model is None else model
    _, gain = _smooth_along_structure(out, model, np.array(kept), TILE, _along_scale(2))
    return out, gain


def inner(image: np.ndarray, tile: int = 5) -> np.ndarray:
    i, j = divmod(tile, N // TILE)
    return image[i * TILE : (i + 1) * TILE, j * TILE : (j + 1) * TILE]


def test_only_two_pixel_bins_are_smoothed():
    """4-px bins do not resolve a 12-px ridge well enough for it to pay: no smoothing."""
    assert _along_scale(4) == 0
    assert _along_scale(2) == pytest.approx(8.0)


@pytest.mark.parametrize("offset", [0.0, 0.37, 1.5])
def test_a_noiseless_ridge_keeps_its_profile(offset):
    """Averaging along the ridge changes a noiseless ridge by < 0.5 % of its height,
    wherever it lies between the bin centres."""
    truth = ridge(offset)
    out, _ = smoothed(truth)
    assert np.max(np.abs(inner(out) - inner(truth))) < 0.005
    assert inner(out).max() == pytest.approx(inner(truth).max(), abs=0.005)


def test_noise_on_a_ridge_is_averaged_down():
    """On a noisy ridge the error of the kept tile falls by more than 2x, and as the
    returned gain says (within 30 %); tiles not kept are left as they were."""
    rng = np.random.default_rng(3)
    truth = ridge(0.7)
    noisy = truth + 0.05 * rng.standard_normal(truth.shape)
    out, gain = smoothed(noisy)
    before = np.sqrt(np.mean((inner(noisy) - inner(truth)) ** 2))
    after = np.sqrt(np.mean((inner(out) - inner(truth)) ** 2))
    assert after < before / 2
    assert after / before == pytest.approx(gain, rel=0.3)
    np.testing.assert_array_equal(inner(out, 0), inner(noisy, 0))
    np.testing.assert_array_equal(inner(out, 6), inner(noisy, 6))


def test_an_edge_keeps_its_step():
    """A sharp tilted edge (shadow-like, 10-90 % over 3 bins) is not blurred across."""
    across = 0.95 * (COLS - 79.8) + 0.31 * (ROWS - 47.5)  # through tile 6 (columns 64-95)
    truth = 1 / (1 + np.exp(-across / 0.7))
    out, _ = smoothed(truth, kept=(6,))
    assert np.max(np.abs(inner(out, 6) - inner(truth, 6))) < 0.005


def test_nothing_kept_changes_nothing():
    image = np.random.default_rng(1).standard_normal((N, N))
    out, gain = smoothed(image, kept=())
    np.testing.assert_array_equal(out, image)
    assert gain == 1.0


def test_a_residual_modulated_along_the_ridge_is_kept():
    """The coarse grid renders a ridge differently along it (crossing bin centres and
    between them), so its residual varies along the ridge; it is the total field that
    is smoothed, and the residual comes back unchanged within 0.5 % of the ridge."""
    truth = ridge(0.2)
    along = -0.8 * ROWS + 0.6 * COLS
    model = truth * (0.7 + 0.3 * np.cos(2 * np.pi * along / 8))  # 16-px period
    out, _ = smoothed(truth - model, model=model)
    np.testing.assert_allclose(inner(out), inner(truth - model), atol=0.005)


def test_profile_least_squares_match_lstsq():
    """The profiles' normal-equation solve gives lstsq's answer, on a regularised tall
    system and on a singular one (two equal columns: lstsq's minimum-norm answer)."""
    rng = np.random.default_rng(4)
    lhs = np.vstack([rng.normal(size=(300, 30)), 0.3 * np.diff(np.eye(30), 2, axis=0)])
    rhs = rng.normal(size=lhs.shape[0])
    expected = np.linalg.lstsq(lhs, rhs, rcond=None)[0]
    np.testing.assert_allclose(_least_squares(lhs, rhs), expected, rtol=1e-8, atol=1e-10)
    singular = np.hstack([lhs[:, :1], lhs])
    expected = np.linalg.lstsq(singular, rhs, rcond=None)[0]
    np.testing.assert_allclose(_least_squares(singular, rhs), expected, rtol=1e-6, atol=1e-8)


def test_fine_residual_smooths_a_noisy_ridge_at_two_pixels():
    """A whole frame with a 12-px ridge (20x the pixel noise) at 2-px fine bins: the kept
    blocks equal the ridge minus the coarse model at the bin centres within the errors
    they quote, and those errors are under half a plain 2-px bin's (sigma / 2); the four
    tiles on the CCD's edge where the ridge leaves it too, each within 1.5x (measured
    1.02-1.33x; 1.0-7.3x when the samples beyond the CCD always repeated its nearest
    bins)."""
    n, sigma = 2048, 2.0
    context = make_fine_context(
        np.ones((n, n), np.float32), coarse_bin=16, pixel_bin=2, tile=32, threshold=2.0
    )
    r, c = np.mgrid[:n, :n].astype(np.float32)
    width = 12 / 2.355
    frame = 20 * sigma * np.exp(-0.5 * ((0.6 * r + 0.8 * c - 1400) / width) ** 2)
    frame += np.random.default_rng(9).normal(0, sigma, (n, n)).astype(np.float32)
    plane = frame.reshape(128, 16, 128, 16).mean(axis=(1, 3))
    got = fine_residual(
        frame,
        plane,
        np.full((128, 128), sigma / 16, np.float32),
        np.full((128, 128), 256),
        context,
        uncertainty=np.full((n, n), sigma, np.float32),
    )
    centres = 2 * np.arange(1024) + 0.5
    distance = 0.6 * centres[:, None] + 0.8 * centres[None, :] - 1400
    truth = 20 * sigma * np.exp(-0.5 * (distance / width) ** 2)
    point = interpolate.spatial_weights(centres, 16 * np.arange(128) + 7.5)
    truth -= point @ plane @ point.T
    truth = truth.reshape(32, 32, 32, 32).transpose(0, 2, 1, 3).reshape(1024, 32, 32)
    assert got.tiles.size > 40
    miss = got.blocks - truth[got.tiles]
    assert np.sqrt(np.mean(miss**2)) < 0.5 * sigma / 2
    z = miss / got.sigma[:, None, None]
    assert 0.7 < np.sqrt(np.mean(z**2)) < 1.3
    row, col = np.divmod(got.tiles, 32)
    edge = (row == 0) | (row == 31) | (col == 0) | (col == 31)
    assert edge.sum() == 4
    assert np.all(np.sqrt(np.mean(z[edge] ** 2, axis=(1, 2))) < 1.5)
