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

    The filter is ``ndimage.gaussian_filter1d`` (sigma ``scale``) with the weights
    beyond the ends left out and the rest renormalised, so ``matrix @ x`` is its
    output at those rows: the structure tensor is needed only inside the tile, not
    over the whole window around it. Near the CCD's edge, repeating the edge
    ("nearest") gave its one-sided, twice as noisy gradients up to half the
    weight, and the direction of a ridge leaving the CCD was measured worse.
    """
    matrix = ndimage.gaussian_filter1d(np.eye(length), scale, axis=0, mode="constant")
    matrix /= matrix.sum(axis=1, keepdims=True)
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
    d_row, d_col = -np.sin(theta), np.cos(theta)  # along it
    steps = np.arange(weights.size) - weights.size // 2
    steps = steps.reshape((-1,) + (1,) * row.ndim)
    steps = _steps_inside(steps, row, col, d_row, d_col, window.shape)
    samples = ndimage.map_coordinates(
        window, [row + steps * d_row, col + steps * d_col], order=3, mode="nearest"
    )
    return np.tensordot(weights, samples, axes=1)


def _steps_inside(
    steps: np.ndarray,
    row: np.ndarray,
    col: np.ndarray,
    d_row: np.ndarray,
    d_col: np.ndarray,
    shape: tuple[int, int],
) -> np.ndarray:
    """The steps along the structure, with those beyond the window taken on the other side.

    Only the CCD's edge matters: elsewhere the window reaches past the weights.
    A step whose sample lies beyond it is replaced by the opposite step
    (``-s``), along the same line through the bin, where the structure has the
    same value to first order (along it the field barely changes); if that one
    is beyond it too, by the step where the line leaves the window. Before,
    such samples repeated the edge bin nearest to them, which lies across the
    structure from the sample when the structure leaves the CCD obliquely: a
    ridge through a corner tile was bent by up to a quarter of its height
    (`bench_build.py`'s structured corner at row 1, column 2092). Repeating
    the point where the line leaves instead of mirroring puts up to half the
    weight on one bin and leaves edge bins noisier.

    Parameters
    ----------
    steps : ndarray of int, shape (nweights, 1, ...)
        Steps [bins] along the structure.
    row, col : ndarray of int
        The bins within the window.
    d_row, d_col : ndarray of float
        The unit direction along the structure at those bins.
    shape : (int, int)
        The window's shape.

    Returns
    -------
    steps : ndarray of float
        Broadcast against ``row``; every sample they give lies inside the window.
    """
    upper = np.full(np.broadcast(row, col, d_row).shape, np.inf)
    lower = -upper
    for start, step, size in ((row, d_row, shape[0]), (col, d_col, shape[1])):
        moving = step != 0
        safe = np.where(moving, step, 1.0)
        to_high = np.where(moving, (size - 1 - start) / safe, np.inf)  # step of the far edge
        to_low = np.where(moving, -start / safe, -np.inf)  # and of the near one
        upper = np.minimum(upper, np.where(step < 0, to_low, to_high))
        lower = np.maximum(lower, np.where(step < 0, to_high, to_low))
    inside = (steps >= lower) & (steps <= upper)
    return np.clip(np.where(inside, steps, -steps), lower, upper)
