"""The smoothing along the local structure of one tile's window (`smooth_window`).

The method is described by `.residual._smooth_along_structure`, which smooths the
kept tiles with it; `.residual._smoothed_probe` asks for a few bins only.
"""

from __future__ import annotations

import functools

import numpy as np
from scipy import ndimage


@functools.lru_cache(maxsize=512)
def _gaussian_rows(length: int, start: int, count: int, scale: float) -> np.ndarray:
    """Rows ``start:start + count`` of the matrix of a Gaussian filter on ``length`` values.

    The filter is ``ndimage.gaussian_filter1d`` (sigma ``scale``, mode "nearest"),
    so ``matrix @ x`` is its output at those rows: the structure tensor is needed
    only inside the tile, not over the whole window around it.
    """
    matrix = ndimage.gaussian_filter1d(np.eye(length), scale, axis=0, mode="nearest")
    rows = np.ascontiguousarray(matrix[start : start + count])
    rows.flags.writeable = False
    return rows


def _gradient(window: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``np.gradient(window)`` (central differences, one-sided at the edges), cheaper."""
    g_row, g_col = np.empty_like(window), np.empty_like(window)
    np.subtract(window[2:], window[:-2], out=g_row[1:-1])
    g_row[1:-1] *= 0.5
    g_row[0], g_row[-1] = window[1] - window[0], window[-1] - window[-2]
    np.subtract(window[:, 2:], window[:, :-2], out=g_col[:, 1:-1])
    g_col[:, 1:-1] *= 0.5
    g_col[:, 0], g_col[:, -1] = window[:, 1] - window[:, 0], window[:, -1] - window[:, -2]
    return g_row, g_col


def smooth_window(
    window: np.ndarray,
    inner: tuple[slice, slice],
    weights: np.ndarray,
    scale: float,
    at: tuple[np.ndarray, np.ndarray] | None = None,
) -> np.ndarray:
    """The Gaussian average of ``window`` along its local structure inside ``inner``.

    Parameters
    ----------
    window : ndarray of float, shape (h, w)
        The total field (model + residual) around a tile, in fine bins.
    inner : (slice, slice)
        The tile within the window.
    weights : ndarray, shape (2 * reach + 1,)
        The normalised weights of the samples, one bin apart along the structure.
    scale : float
        Sigma [bins] of the Gaussian window of the structure tensor.
    at : (ndarray of int, ndarray of int), optional
        Rows and columns within the tile of the only bins wanted (default: all).

    Returns
    -------
    smoothed : ndarray of float
        Shape (tile rows, tile columns), or that of ``at[0]``.
    """
    rows, cols = inner
    left = _gaussian_rows(window.shape[0], rows.start, rows.stop - rows.start, scale)
    right = _gaussian_rows(window.shape[1], cols.start, cols.stop - cols.start, scale)
    g_row, g_col = _gradient(window)
    products = np.stack([g_row * g_row, g_row * g_col, g_col * g_col])
    if at is None:
        row = np.arange(rows.start, rows.stop)[:, None]
        col = np.arange(cols.start, cols.stop)[None, :]
        a, b, c = left @ products @ right.T
    else:
        row, col = at[0] + rows.start, at[1] + cols.start
        a, b, c = np.sum((left[at[0]] @ products) * right[at[1]], axis=-1)
    theta = 0.5 * np.arctan2(2 * b, a - c)  # across the structure
    steps = np.arange(weights.size) - weights.size // 2
    steps = steps.reshape((-1,) + (1,) * row.ndim)
    samples = ndimage.map_coordinates(
        window,
        [row + steps * -np.sin(theta), col + steps * np.cos(theta)],
        order=3,
        mode="nearest",
    )
    return np.tensordot(weights, samples, axes=1)
