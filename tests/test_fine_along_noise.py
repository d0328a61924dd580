"""The factoring of a tile's blocks with the noise the 2-px smoothing along the structure
leaves (#19): shared along the structure by ~10 bins, it must not raise the rank."""

import numpy as np
import pytest
from scipy import ndimage

from lk_scatterlight.builder.fine.residual import _along_scale, _along_weights, _noise_spread
from lk_scatterlight.finelayer import compress_tile

TILE = 32


def _smoothed_edge_series(m: int, noise: float, seed: int) -> tuple[np.ndarray, np.ndarray, float]:
    """A fixed vertical edge times a varying light, plus white noise smoothed along the edge
    with the builder's 2-px weights; returns (noisy blocks, clean blocks, smoothed noise)."""
    rng = np.random.default_rng(seed)
    x = np.arange(TILE)
    image = np.broadcast_to(0.15 / (1 + np.exp(-(x - 20.5) / 0.7)) - 0.05, (TILE, TILE))
    light = 60 + 50 * np.sin(np.arange(m) / 4)
    clean = light[:, None, None] * image
    weights = _along_weights(_along_scale(2))
    white = rng.normal(0, noise, (m, TILE, TILE))
    smoothed = ndimage.convolve1d(white, weights, axis=1, mode="wrap")
    return clean + smoothed, clean, noise * float(np.sqrt(np.sum(weights**2)))


def test_noise_spread_of_the_smoothing():
    """~sigma sqrt(2 pi) bins for the 4-bin Gaussian of 2-px bins; 1 (no smoothing) at 4 px."""
    assert _noise_spread(2) == pytest.approx(4 * np.sqrt(2 * np.pi), rel=0.02)
    assert _noise_spread(4) == 1.0


def test_compress_tile_smoothed_noise_keeps_a_fixed_edge_at_rank_one():
    """Counted as independent bins, the smoothed noise of a block often exceeds the
    per-block budget and the rank rises (the noise then stays in the basis); with the
    spread the edge is one image in every series, reconstructed well within the noise."""
    m, seeds = 26, range(20)
    old, new = [], []
    for seed in seeds:
        blocks, clean, sigma = _smoothed_edge_series(m, 0.3, seed)
        error = np.full(m, sigma)
        coef, _ = compress_tile(blocks, error)  # bins taken as independent
        old.append(m if coef is None else coef.shape[1])
        coef, basis = compress_tile(blocks, error, spread=_noise_spread(2))
        new.append(m if coef is None else coef.shape[1])
        if coef is not None:
            residual = np.einsum("mk,kij->mij", coef, basis) - clean
            assert np.sqrt(np.mean(residual**2)) < 0.4 * sigma
    assert np.mean(np.array(old) > 1) >= 0.3
    assert new == [1] * len(seeds)


def test_compress_tile_spread_one_is_the_default():
    """``spread=1`` (independent bins, 4-px layers) factors exactly as before."""
    blocks, _, sigma = _smoothed_edge_series(12, 0.3, seed=4)
    a = compress_tile(blocks, np.full(12, sigma))
    b = compress_tile(blocks, np.full(12, sigma), spread=1.0)
    assert (a[0] is None) == (b[0] is None)
    np.testing.assert_array_equal(a[1], b[1])
