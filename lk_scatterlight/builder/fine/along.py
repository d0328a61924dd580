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
    coords = _samples_inside(steps, row, col, theta, window.shape)
    samples = ndimage.map_coordinates(window, coords, order=3, mode="nearest")
    return np.tensordot(weights, samples, axes=1)


#: How far [bins] across the structure a sample beyond the CCD may be moved to the
#: nearest bin inside it; farther, it is taken where its line leaves the CCD. On a
#: 2-px ridge crossing a corner tile (4 noisy frames, `tests/test_fine_corner.py`'s)
#: the tile's RMS miss was 0.33 with 1 bin, 0.46 with 2, 0.80 with 3 (1.93 with the
#: nearest bin always); the bins of an edge tile with an edge-parallel ramp got 0.06
#: with 1 or 2, 0.07 with 0.5 and 0.10 always taking the line's exit (0.05-0.06 always
#: the nearest bin).
_ACROSS_LIMIT = 1.0


def _samples_inside(
    steps: np.ndarray,
    row: np.ndarray,
    col: np.ndarray,
    theta: np.ndarray,
    shape: tuple[int, int],
) -> list[np.ndarray]:
    """Where the samples along the structure are read, all inside the window.

    Only the CCD's edge matters: elsewhere the window reaches past the weights.
    A sample beyond it is read at the nearest bin inside it (the edge repeated),
    unless that moves it more than `_ACROSS_LIMIT` bins across the structure:
    then it is read where its line along the structure leaves the window. The
    nearest bin alone bends a ridge that leaves the CCD obliquely (by up to a
    quarter of its height over a corner tile: `bench_build.py`'s structured
    corner at row 1, column 2092, 0.020 % -> 0.079 % of the range with the 2-px
    default); the line's exit alone puts up to half the weight on the bin
    itself where the structure runs along the edge, and the smooth field's CCD
    edges got noisier (`bench_fine.py --smooth`: 1.1x -> 1.3x the floor).

    Parameters
    ----------
    steps : ndarray of int, shape (nweights, 1, ...)
        Steps [bins] along the structure.
    row, col : ndarray of int
        The bins within the window.
    theta : ndarray of float
        The direction across the structure at those bins [rad].
    shape : (int, int)
        The window's shape.

    Returns
    -------
    rows, cols : ndarray of float
        The samples' positions, shape of ``steps`` broadcast against ``row``.
    """
    d_row, d_col = -np.sin(theta), np.cos(theta)  # along the structure
    raw_row, raw_col = row + steps * d_row, col + steps * d_col
    near_row = np.clip(raw_row, 0, shape[0] - 1)
    near_col = np.clip(raw_col, 0, shape[1] - 1)
    across = np.abs((near_row - raw_row) * np.cos(theta) + (near_col - raw_col) * np.sin(theta))
    far = across > _ACROSS_LIMIT
    if not far.any():
        return [near_row, near_col]
    exit_steps = _line_exit(steps, row, col, d_row, d_col, shape)
    near_row[far] = (row + exit_steps * d_row)[far]
    near_col[far] = (col + exit_steps * d_col)[far]
    return [near_row, near_col]


def _line_exit(
    steps: np.ndarray,
    row: np.ndarray,
    col: np.ndarray,
    d_row: np.ndarray,
    d_col: np.ndarray,
    shape: tuple[int, int],
) -> np.ndarray:
    """``steps`` stopped where the line along the structure leaves the window."""
    upper = np.full(np.broadcast(row, col, d_row).shape, np.inf)
    lower = -upper
    for start, step, size in ((row, d_row, shape[0]), (col, d_col, shape[1])):
        moving = step != 0
        safe = np.where(moving, step, 1.0)
        to_high = np.where(moving, (size - 1 - start) / safe, np.inf)  # step of the far edge
        to_low = np.where(moving, -start / safe, -np.inf)  # and of the near one
        upper = np.minimum(upper, np.where(step < 0, to_low, to_high))
        lower = np.maximum(lower, np.where(step < 0, to_high, to_low))
    return np.clip(steps, lower, upper)
