"""Vectorised interpolation kernels for scattered-light cubes.

Every interpolant here is linear in the data, so it is written as weights: an
interpolated value is ``sum_k w_k f_k`` and, for independent inputs, its
variance is ``sum_k w_k**2 var_k``. The weights are built once per call and
applied to whole blocks of the cube with matrix products; there is no Python
loop over cadences or pixels.

Space
    Keys (1981) cubic convolution with ``a = -1/2`` on the uniform grid of bin
    centres: C1-continuous, four-point support (so only the bins next to a
    target pixel are read) and exact for polynomials up to second order. The
    ghost points beyond the outermost centres follow Keys' boundary condition
    ``f(-1) = 3 f(0) - 3 f(1) + f(2)``, which keeps quadratic exactness. Between
    the outermost centre and the edge of the science area (half a bin) the
    quadratic through the three outermost centres is used, which is continuous
    with the interior and exact for quadratics too.

Time
    Linear interpolation between plane centres, which never overshoots. Planes
    are grouped into segments separated by gaps (see `time_segments`);
    interpolation never crosses a gap. Between a segment's first (last) plane
    centre and that plane's start (stop) time the plane value is held constant.
    Times in a gap or outside the cube are reported as invalid.

References
----------
Keys, R. (1981), "Cubic convolution interpolation for digital image processing",
IEEE Trans. Acoustics, Speech and Signal Processing 29, 1153.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "spatial_weights",
    "support",
    "time_segments",
    "time_weights",
    "apply_weights",
    "blend",
    "fill_invalid",
]


def _keys_kernel(s: np.ndarray) -> np.ndarray:
    """Keys cubic convolution kernel with a = -1/2."""
    s = np.abs(s)
    out = np.zeros_like(s)
    inner = s <= 1
    outer = (s > 1) & (s < 2)
    si, so = s[inner], s[outer]
    out[inner] = 1.5 * si**3 - 2.5 * si**2 + 1
    out[outer] = -0.5 * so**3 + 2.5 * so**2 - 4 * so + 2
    return out


def spatial_weights(x: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """Weights that interpolate values at uniform grid ``centres`` to positions ``x``.

    Parameters
    ----------
    x : array of float, shape (nx,)
        Positions to evaluate, in the same coordinates as ``centres``. Callers
        check that they lie inside the area the grid may represent; positions
        beyond the outermost centres are extrapolated with a quadratic.
    centres : array of float, shape (n,)
        Uniformly spaced, increasing grid positions.

    Returns
    -------
    weights : ndarray, shape (nx, n)
        ``f(x) = weights @ f(centres)``. Each row sums to one.
    """
    x = np.asarray(x, dtype=float)
    centres = np.asarray(centres, dtype=float)
    n = centres.size
    weights = np.zeros((x.size, n))
    if n == 1:
        weights[:, 0] = 1.0
        return weights
    p = (x - centres[0]) / (centres[1] - centres[0])  # position in grid-index units
    if n == 2:
        p = p[:, None]
        weights[:] = np.hstack([1 - p, p])
        return weights

    rows = np.arange(x.size)
    # Interior: four-point Keys kernel on an index space padded with one ghost
    # point at each end (-1 and n), folded back onto the real points below.
    inside = (p >= 0) & (p <= n - 1)
    pi, ri = p[inside], rows[inside]
    base = np.clip(np.floor(pi).astype(int), 0, n - 2)
    padded = np.zeros((x.size, n + 2))
    for offset in (-1, 0, 1, 2):
        k = base + offset
        padded[ri, k + 1] += _keys_kernel(pi - k)
    weights[:] = padded[:, 1:-1]
    # Ghost point -1 = 3 f0 - 3 f1 + f2, ghost point n = 3 f(n-1) - 3 f(n-2) + f(n-3).
    weights[:, :3] += padded[:, [0]] * np.array([3.0, -3.0, 1.0])
    weights[:, -3:] += padded[:, [-1]] * np.array([1.0, -3.0, 3.0])

    # Beyond the outermost centres: Lagrange quadratic through three end points.
    low = p < 0
    if low.any():
        q = p[low]
        weights[low, :3] = np.column_stack([(q - 1) * (q - 2) / 2, -q * (q - 2), q * (q - 1) / 2])
    high = p > n - 1
    if high.any():
        q = (n - 1) - p[high]  # distance beyond the last centre, mirrored
        weights[high, -3:] = np.column_stack([q * (q - 1) / 2, -q * (q - 2), (q - 1) * (q - 2) / 2])
    return weights


def support(weights: np.ndarray) -> tuple[int, int]:
    """First and one-past-last grid index that holds a non-zero weight.

    Parameters
    ----------
    weights : ndarray, shape (nx, n)
        Interpolation weights, e.g. from `spatial_weights`.

    Returns
    -------
    (start, stop) : tuple of int
        ``weights[:, start:stop]`` holds every non-zero weight.
    """
    used = np.flatnonzero(np.any(weights != 0, axis=0))
    return int(used[0]), int(used[-1]) + 1


def time_segments(start: np.ndarray, stop: np.ndarray, max_gap: float) -> np.ndarray:
    """Label each time plane with the index of its contiguous segment.

    A new segment starts wherever the start of a plane is more than ``max_gap``
    days after the stop of the previous one (orbit gaps, downlinks).

    Parameters
    ----------
    start, stop : array of float, shape (nt,)
        Start and stop of each plane, BTJD [d], sorted.
    max_gap : float
        Longest hole [d] that interpolation may bridge.

    Returns
    -------
    segment : ndarray of int, shape (nt,)
    """
    holes = np.asarray(start)[1:] - np.asarray(stop)[:-1]
    return np.concatenate([[0], np.cumsum(holes > max_gap)])


def time_weights(
    t: np.ndarray,
    centre: np.ndarray,
    start: np.ndarray,
    stop: np.ndarray,
    segment: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Two-point linear interpolation weights in time, never across a gap.

    Parameters
    ----------
    t : array of float, shape (m,)
        Times to evaluate, BTJD [d].
    centre, start, stop : array of float, shape (nt,)
        Plane centres and extents, BTJD [d], sorted.
    segment : array of int, shape (nt,)
        Segment labels from `time_segments`.

    Returns
    -------
    left, right : ndarray of int, shape (m,)
        Plane indices to combine (equal where a single plane is used).
    w_right : ndarray of float, shape (m,)
        Weight of ``right``; the weight of ``left`` is ``1 - w_right``.
    valid : ndarray of bool, shape (m,)
        False where ``t`` is outside the cube or inside a gap; indices and
        weights there point at plane 0 and must not be used.
    """
    t = np.asarray(t, dtype=float)
    nt = centre.size
    right = np.searchsorted(centre, t, side="right").clip(0, nt)  # first centre > t
    left = (right - 1).clip(0, nt - 1)
    right_c = right.clip(0, nt - 1)

    between = (right > 0) & (right < nt) & (segment[left] == segment[right_c])
    span = np.where(between, centre[right_c] - centre[left], 1.0)
    w_right = np.where(between, (t - centre[left]) / span, 0.0)

    # Outside a pair of centres: hold the nearest plane within its own extent.
    before = ~between & (right < nt) & (t >= start[right_c])
    after = ~between & (right > 0) & (t <= stop[left])
    hold = np.where(before, right_c, left)
    left = np.where(between, left, hold)
    right_out = np.where(between, right_c, hold)
    valid = between | before | after
    left = np.where(valid, left, 0)
    right_out = np.where(valid, right_out, 0)
    w_right = np.where(valid, w_right, 0.0)
    return left, right_out, w_right, valid


def apply_weights(
    block: np.ndarray, row_weights: np.ndarray, col_weights: np.ndarray
) -> np.ndarray:
    """Apply separable spatial weights to every plane of a block.

    Parameters
    ----------
    block : ndarray, shape (nt, nrow_bins, ncol_bins)
    row_weights : ndarray, shape (nrow, nrow_bins)
    col_weights : ndarray, shape (ncol, ncol_bins)

    Returns
    -------
    ndarray, shape (nt, nrow, ncol)
    """
    # (nt, rb, cb) @ (cb, ncol) -> (nt, rb, ncol); then rows: (nrow, rb) @ -> (nt, nrow, ncol)
    tmp = block @ col_weights.T
    return np.matmul(row_weights[None, :, :], tmp)


def blend(
    planes: np.ndarray,
    left: np.ndarray,
    right: np.ndarray,
    w_right: np.ndarray,
    squared: bool = False,
) -> np.ndarray:
    """Combine planes in time: ``(1 - w) planes[left] + w planes[right]``.

    Parameters
    ----------
    planes : ndarray, shape (nplanes, ...)
    left, right : array of int, shape (m,)
    w_right : array of float, shape (m,)
    squared : bool
        Use squared weights, to combine variances.

    Returns
    -------
    ndarray, shape (m, ...)
        Written in a single pass, without temporaries of that size.
    """
    # Imported here: scipy.sparse costs ~0.3 s (scipy's array-API layer), which
    # reading a cube (`lk-scatterlight info`) does not need.
    from scipy import sparse

    # A sparse (m, nplanes) matrix with two weights per row: its product with the
    # planes writes the output once (numpy fancy indexing would make two copies of
    # the output size and then combine them: ~3-4x slower for large outputs).
    w = np.asarray(w_right, dtype=float)
    m, nplanes = w.size, planes.shape[0]
    weights = np.column_stack([(1 - w) ** 2, w**2] if squared else [1 - w, w]).ravel()
    # Keep float32 planes float32.
    weights = weights.astype(np.result_type(planes.dtype, np.float32))
    index = np.column_stack([np.asarray(left), np.asarray(right)]).ravel()
    matrix = sparse.csr_array((weights, index, np.arange(0, 2 * m + 1, 2)), shape=(m, nplanes))
    return (matrix @ planes.reshape(nplanes, -1)).reshape((m,) + planes.shape[1:])


def fill_invalid(values: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Values at the valid times (`time_weights`) placed in a NaN array covering all times.

    Parameters
    ----------
    values : ndarray, shape (nvalid, ...)
    valid : array of bool, shape (ntime,)

    Returns
    -------
    ndarray, shape (ntime, ...)
        Of the dtype of ``values``; NaN where ``valid`` is False.
    """
    out = np.full((valid.size,) + values.shape[1:], np.nan, dtype=values.dtype)
    out[valid] = values
    return out
