"""Per-row array kernels of the fusion, and the one-BLAS-thread guard.

Fusion adds, scales and reduces (ntime, nrow, ncol) arrays one value per
cadence (row); these kernels do it with BLAS or on long axes, where numpy's
broadcasting over short rows is slow.
"""

from __future__ import annotations

import functools

import numpy as np


@functools.cache
def _blas_controller():
    """threadpoolctl's view of the loaded BLAS libraries (made once: ~13 ms)."""
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController()


def _one_blas_thread(func):
    """Run ``func`` with BLAS limited to one thread.

    Fusion's matrix products are small (a block of cadences by ~100 pixels):
    BLAS's default threads do not speed them up, and on a busy machine their
    waiting threads made fusion cost 3-5x more CPU (`correct_tpf` of a 15 x 15
    TPF x 12,000 cadences, fused / model alone: 1.88 with default threads, 1.18
    with one; ``benchmarks/bench_fusion.py``).
    """

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        with _blas_controller().limit(limits=1, user_api="blas"):
            return func(*args, **kwargs)

    return wrapper


def _rows_at_most(
    flat: np.ndarray, rows: np.ndarray, limit: np.ndarray, sums: np.ndarray
) -> np.ndarray:
    """Whether each of ``flat``'s rows ``rows`` is at most ``limit`` (one per row) at
    every pixel, given their ``sums`` over the pixels (NaN where unknown).

    The values are variances (not negative), so a row's sum bounds its largest value
    (also as rounded: adding a value that is not negative never lowers a sum); only the
    rows whose sum is above the limit, or unknown, are searched for their maximum.
    """
    with np.errstate(invalid="ignore"):
        at_most = sums <= limit
    search = np.flatnonzero(~at_most)
    if search.size:
        at_most[search] = _row_reduce(np.maximum, flat, rows[search]) <= limit[search]
    return at_most


#: Fewest rows per run, on average, for the per-row kernels to handle runs of consecutive
#: rows as views one by one (a numpy call each); shorter runs are gathered by index.
_RUN_ROWS = 16


def _runs(rows: np.ndarray) -> list[tuple[int, int]] | None:
    """``rows`` (sorted indices) as ``(start, stop)`` runs of consecutive rows, or None
    when the runs are short (fewer than `_RUN_ROWS` rows on average)."""
    breaks = np.flatnonzero(np.diff(rows) != 1) + 1
    if (breaks.size + 1) * _RUN_ROWS > max(rows.size, _RUN_ROWS):
        return None
    starts = rows[np.r_[0, breaks]] if rows.size else rows
    stops = rows[np.r_[breaks - 1, rows.size - 1]] + 1 if rows.size else rows
    return list(zip(starts.tolist(), stops.tolist(), strict=True))


def _row_reduce(ufunc: np.ufunc, flat: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """``ufunc`` reduced over each of ``flat``'s rows ``rows`` (over all rows, then
    taken, where they are most; else run by run: no copy)."""
    if 2 * rows.size > len(flat):
        return ufunc.reduce(flat, axis=1)[rows]
    runs = _runs(rows)
    if runs is None:
        return ufunc.reduce(flat[rows], axis=1)
    return np.concatenate([ufunc.reduce(flat[a:b], axis=1) for a, b in runs] or [flat[:0, 0]])


def _scale_rows(array: np.ndarray, factors: np.ndarray, rows: np.ndarray) -> None:
    """``array[rows] *= factors[rows]`` (one factor per row), in place; one pass over
    every row where ``rows`` are most, else run by run."""
    if 2 * rows.size > len(array):
        every = np.ones(len(array), dtype=array.dtype)
        every[rows] = factors[rows]
        _per_row(np.multiply, array, every, array)
        return
    runs = _runs(rows)
    if runs is None:
        array[rows] *= factors[rows].astype(array.dtype).reshape((-1,) + (1,) * (array.ndim - 1))
        return
    factors = np.asarray(factors).astype(array.dtype)
    for a, b in runs:
        _per_row(np.multiply, array[a:b], factors[a:b], array[a:b])


def _add_rows(array: np.ndarray, values: np.ndarray) -> None:
    """``array += values`` with one value per row, in place, where the value is not 0:
    one pass over every row where those are most (`_add_per_row`), else run by run (the
    rows with a 0 are not touched)."""
    rows = np.flatnonzero(values)
    if 2 * rows.size > len(array):
        _add_per_row(array, values)
        return
    runs = _runs(rows)
    if runs is None:
        array[rows] += values[rows].astype(array.dtype).reshape((-1,) + (1,) * (array.ndim - 1))
        return
    for start, stop in runs:
        _add_per_row(array[start:stop], values[start:stop])


def _add_per_row(array: np.ndarray, values: np.ndarray) -> np.ndarray:
    """``array += values`` with one value per row (first axis), in place.

    A C-contiguous float array gets a rank-one update from BLAS (``ger``: ``array``
    plus ``values`` times a row of ones), the same sums several times faster than
    numpy's broadcasting over short rows (`_per_row`).
    """
    values = np.asarray(values, dtype=array.dtype)
    native = array.dtype in (np.float32, np.float64)  # not big-endian, not float16
    if array.ndim < 2 or not array.flags.c_contiguous or not native:
        return _per_row(np.add, array, values, array)
    from scipy.linalg import get_blas_funcs  # lightkurve imports scipy.linalg already

    flat = array.reshape(len(array), -1)
    ger = get_blas_funcs("ger", (flat,))
    # BLAS is column-major: the transposed view is a (npix, nrow) matrix, updated in place.
    updated = ger(1.0, np.ones(flat.shape[1], dtype=flat.dtype), values, a=flat.T, overwrite_a=True)
    if not np.shares_memory(updated, flat):  # a copy was made (never for these arrays)
        flat[...] = updated.T
    return array


def _per_row(ufunc: np.ufunc, array: np.ndarray, values: np.ndarray, out: np.ndarray) -> np.ndarray:
    """``ufunc(array, values)`` with one value per row (first axis), into ``out``.

    On (nrow, -1) views when both arrays are C-contiguous: numpy broadcasts a
    per-row value over one long axis several times faster than over two short ones.
    """
    if array.flags.c_contiguous and out.flags.c_contiguous:
        ufunc(array.reshape(len(array), -1), values[:, None], out=out.reshape(len(out), -1))
    else:
        ufunc(array, values[(slice(None),) + (array.ndim - 1) * (None,)], out=out)
    return out
