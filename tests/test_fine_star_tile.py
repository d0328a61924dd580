"""A saturated star's tile (issue 19): its fine-bin noise comes from the sky pixels around
the star, not from the star's masked pixels, so structure there passes the tile test as it
does in the neighbouring tiles."""

import numpy as np
import pytest

from lk_scatterlight.builder.fine import fine_residual, make_fine_context
from lk_scatterlight.builder.fine.residual import _tile_pixel_sigma

SIDE = 512
PB, TILE = 4, 16
STAR = (slice(260, 300), slice(340, 380))  # masked pixels, inside tile (4, 5)


@pytest.fixture(scope="module")
def star_context():
    weights = np.ones((SIDE, SIDE), np.float32)
    weights[STAR] = 0
    return make_fine_context(weights, coarse_bin=16, pixel_bin=PB, tile=TILE, threshold=2.0)


def star_uncertainty(sky: float = 1.0, star: float = 300.0) -> np.ndarray:
    """Pixel uncertainty [e-/s]: ``sky`` everywhere, ``star`` on the masked star."""
    uncertainty = np.full((SIDE, SIDE), sky, np.float32)
    uncertainty[STAR] = star
    return uncertainty


def test_star_tile_noise_is_the_sky_noise(star_context):
    sigma = _tile_pixel_sigma(None, None, star_context, star_uncertainty())
    assert sigma[4, 5] == pytest.approx(1.0, rel=1e-6)
    assert np.allclose(sigma, 1.0)


def test_tile_without_valid_bins_keeps_all_its_pixels():
    weights = np.ones((SIDE, SIDE), np.float32)
    weights[:64, :64] = 0  # tile (0, 0) wholly masked
    context = make_fine_context(weights, coarse_bin=16, pixel_bin=PB, tile=TILE, threshold=2.0)
    uncertainty = np.ones((SIDE, SIDE), np.float32)
    uncertainty[:64, :64] = 3.0
    sigma = _tile_pixel_sigma(None, None, context, uncertainty)
    assert sigma[0, 0] == pytest.approx(3.0, rel=1e-6)
    assert sigma[0, 1] == pytest.approx(1.0, rel=1e-6)


def test_structure_beside_a_star_passes_the_tile_test(star_context):
    """A bump beside the star, 3 e-/s against a pixel noise of 1 (the FFI's, averaged in
    4 x 4-px bins), is kept; with the star's pixels in the tile's noise it was not."""
    rng = np.random.default_rng(3)
    y, x = np.mgrid[:SIDE, :SIDE].astype(float)
    bump = 3.0 * np.exp(-0.5 * ((y - 280) ** 2 + (x - 330) ** 2) / 6.0**2)
    diff = (bump + rng.normal(0, 1.0, (SIDE, SIDE))).astype(np.float32)
    nb = SIDE // 16
    coarse = np.zeros((nb, nb), np.float32)
    npix = np.full((nb, nb), 256)
    error = np.full((nb, nb), 1 / 16, np.float32)
    frame = fine_residual(diff, coarse, error, npix, star_context, star_uncertainty())
    star_tile = 4 * (SIDE // (PB * TILE)) + 5
    assert frame.chi2[4, 5] > 2.0
    assert star_tile in frame.tiles
