"""Factoring one tile's fine-layer blocks over time (`compress_tile`).

The builder stores the blocks of each kept tile as a few basis images and their
coefficients per plane (`~lk_scatterlight.finelayer.FineLayer`); this module
chooses the rank.
"""

from __future__ import annotations

import numpy as np

__all__ = ["compress_tile"]

_NOISE_SCATTER = 4.0
"""Standard deviations of a pure-noise block's residual (chi-square over its bins) that
`compress_tile` allows above its budget, so that noise alone does not raise the rank."""

_BIN_FALSE_ALARM = 1e-3
"""Chance that a tile of pure noise has a bin whose residual summed over its blocks
exceeds `compress_tile`'s per-bin budget (a chi-square bound at this level over the
tile's bins)."""


def compress_tile(
    blocks: np.ndarray, error: np.ndarray, tolerance: float = 0.01, spread: float = 1.0
) -> tuple[np.ndarray | None, np.ndarray]:
    """Factor one tile's blocks over time: ``blocks ~ coef @ basis``.

    The rank is the smallest that meets two budgets: the residual RMS over
    all blocks is at most ``1 + tolerance`` times the blocks' noise RMS
    (``sqrt(mean(error**2))``), as for the coarse cube
    (`~lk_scatterlight.ScatterLightCube.compress`); and every block's own
    residual RMS is at most ``1 + tolerance`` times its own ``error``, up to
    the scatter noise alone gives a block's residual (`_NOISE_SCATTER`
    standard deviations of a chi-square over its bins: 1.17 times its
    ``error`` for 16 x 16 bins and independent bins; noise shared by ``spread``
    bins scatters ``sqrt(spread)`` times more). The second budget keeps structure that only
    one block holds (a ridge entering a tile's corner in one frame), which the
    pooled budget alone lets the other blocks' shapes absorb. A third budget
    does the same across the blocks: every bin's residual summed over the
    blocks stays below the chi-square bound that noise alone exceeds in one
    tile in `_BIN_FALSE_ALARM` (structure that varies in time in a few bins
    only, such as a slow drift at the edge of a star's hole, is far below the
    pooled budget: a Tmag 3.2 star's TPF on the structured field lost 0.2 % of
    the range to it, issue 21). When no rank that saves space meets all three,
    the blocks are returned as their own basis.

    Parameters
    ----------
    blocks : ndarray, shape (m, tile, tile)
        The tile's blocks, one per plane [e-/s].
    error : ndarray, shape (m,)
        1-sigma error of one fine bin of each block [e-/s].
    tolerance : float
    spread : float
        How many bins share one bin's noise: the sum over the tile's bins of the
        squared correlation of their noise with it (1: independent bins). The
        builder's smoothing along the structure with 2-px bins makes it ~20
        (`~lk_scatterlight.builder.fine.residual._noise_spread`); counted as
        independent, their noise alone broke the per-block budget and raised
        the rank, so that the basis kept the noise (a shadow-edge tile of the
        structured field: rank 15 of 26 planes, 6 with the spread).

    Returns
    -------
    coef : ndarray of float32, shape (m, k), or None
        None when the blocks are kept as they are (then ``basis`` is ``blocks``).
    basis : ndarray of float32, shape (k, tile, tile)
    """
    m, t = blocks.shape[0], blocks.shape[1]
    x = blocks.reshape(m, t * t).astype(np.float64)
    max_rank = (m * t * t - 1) // (m + t * t)  # largest rank whose factors are smaller
    if max_rank < 1 or m < 3:  # too few blocks for factoring to pay
        return None, blocks.astype(np.float32)
    values, vectors = _gram_eigen(x)
    # Directions the Gram matrix resolves only to rounding would give a spurious basis.
    max_rank = min(max_rank, max(int(np.sum(values > 1e-12 * values[0])), 1))
    if vectors.shape[0] == m:  # left singular vectors: basis = x^T u / |x^T u|
        basis = vectors[:, :max_rank].T @ x
        basis /= np.maximum(np.linalg.norm(basis, axis=1, keepdims=True), 1e-300)
    else:
        basis = vectors[:, :max_rank].T
    coef = x @ basis.T
    # Orthonormal basis: a block's residual after rank k is |x|^2 - sum of its first k coef^2.
    residual = np.sum(x**2, axis=1)[:, None] - np.cumsum(coef**2, axis=1)
    noise2 = np.asarray(error, dtype=np.float64) ** 2
    n = t * t
    pooled = np.sum(residual, axis=0) <= (1 + tolerance) ** 2 * n * np.sum(noise2)
    own = (1 + tolerance) ** 2 * n + _NOISE_SCATTER * np.sqrt(2 * n * max(spread, 1.0))
    meets = pooled & np.all(residual <= own * noise2[:, None], axis=0)
    # Per bin: coef's columns are orthogonal (x's singular vectors), so a bin's residual
    # summed over the blocks after rank k is sum x**2 - sum_{i<=k} |coef_i|**2 basis_i**2.
    from scipy import special  # here, not at import: reading a cube needs no scipy.special

    per_bin = np.sum(x**2, axis=0) - np.cumsum(np.sum(coef**2, axis=0)[:, None] * basis**2, axis=0)
    bound = special.chdtri(m, _BIN_FALSE_ALARM / n) / m * np.sum(noise2)
    meets &= np.max(per_bin, axis=1) <= bound
    if not meets.any():
        return None, blocks.astype(np.float32)
    k = int(np.argmax(meets)) + 1
    return coef[:, :k].astype(np.float32), basis[:k].reshape(k, t, t).astype(np.float32)


def _gram_eigen(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues (descending, >= 0) and eigenvectors of the smaller Gram matrix of ``x``.

    ``x x^T`` (blocks x blocks) when there are fewer blocks than pixels, else
    ``x^T x``: both have the same non-zero eigenvalues (the squared singular
    values of ``x``), and the small one costs a fraction of the other's
    decomposition while a tile is kept in few planes.
    """
    gram = x @ x.T if x.shape[0] < x.shape[1] else x.T @ x
    values, vectors = np.linalg.eigh(gram)
    return np.clip(values[::-1], 0, None), vectors[:, ::-1]
