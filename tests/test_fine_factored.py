"""The error a factored fine-layer tile quotes for its stored values."""

import numpy as np

from lk_scatterlight.builder.fine.assemble import _factored_noise
from lk_scatterlight.finelayer import compress_tile

M, T, SIGMA = 26, 16, 0.3


def tile(rng, extra=None):
    """M blocks of T x T bins: one image scaled per plane (a fixed shadow edge), plus noise."""
    y, x = np.mgrid[:T, :T]
    image = np.tanh((x - 7.5) / 1.5)
    truth = np.linspace(1, 4, M)[:, None, None] * image
    if extra is not None:
        truth = truth + extra
    return truth, truth + rng.normal(0, SIGMA, truth.shape)


def stored(blocks, error):
    coef, basis = compress_tile(blocks, error)
    assert coef is not None  # factored
    return coef, np.einsum("mk,kij->mij", coef, basis)


def test_a_factored_tile_quotes_the_noise_it_keeps():
    rng = np.random.default_rng(7)
    error = np.full(M, SIGMA)
    actual, quoted = [], []
    for _ in range(20):
        truth, blocks = tile(rng)
        coef, values = stored(blocks, error)
        noise, dropped = _factored_noise(blocks, coef, error, error)
        actual.append(np.mean((values - truth) ** 2))
        quoted.append(np.mean(noise + dropped))
    ratio = np.sqrt(np.mean(actual) / np.mean(quoted))
    # The raw bin noise would be quoted ~5x too large here (a rank-1 tile of 26 planes).
    assert np.sqrt(SIGMA**2 / np.mean(actual)) > 4
    assert 1 / 1.2 < ratio < 1.2


def test_structure_the_factoring_drops_is_quoted():
    """A faint second pattern in every plane, below what the rank budget keeps: the
    blocks quote it as well as the noise the factors keep."""
    rng = np.random.default_rng(8)
    y, x = np.mgrid[:T, :T]
    second = np.cos(np.pi * y / 5) * np.cos(np.pi * x / 7)  # mean square 1/4
    extra = 0.11 * rng.choice([-1, 1], M)[:, None, None] * second
    error = np.full(M, SIGMA)
    actual, noise_only, quoted = [], [], []
    for _ in range(10):
        truth, blocks = tile(rng, extra)
        coef, values = stored(blocks, error)
        assert coef.shape[1] == 1  # the pattern is dropped
        noise, dropped = _factored_noise(blocks, coef, error, error)
        actual.append(np.mean((values - truth) ** 2))
        noise_only.append(np.mean(noise))
        quoted.append(np.mean(noise + dropped))
    assert np.sqrt(np.mean(actual) / np.mean(noise_only)) > 1.25  # the noise alone: too small
    assert 1 / 1.2 < np.sqrt(np.mean(actual) / np.mean(quoted)) < 1.2
