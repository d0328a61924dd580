"""The local estimate: a TPF's background pixels, their clipped per-cadence level
and its noise, and the day-by-day (chunk) statistics of what exceeds the noise.
"""

from __future__ import annotations

import functools
import warnings

import numpy as np
from scipy import ndimage

#: Cadences per block of the clipped per-cadence statistics (fits in a CPU cache).
_BLOCK = 1024


#: Width [px] of the ring around the grown aperture whose shared structure the errors cover.
_RING = 2


def background_pixels(
    residual_median: np.ndarray, aperture: np.ndarray, fraction: float = 0.5
) -> np.ndarray:
    """Faint pixels away from the aperture.

    Parameters
    ----------
    residual_median : ndarray, shape (nrow, ncol)
        Median over time of flux minus model [e-/s].
    aperture : ndarray of bool, shape (nrow, ncol)
    fraction : float
        Keep this faintest fraction of the pixels outside the grown aperture.

    Returns
    -------
    mask : ndarray of bool, shape (nrow, ncol)
    """
    outside = ~ndimage.binary_dilation(np.asarray(aperture, dtype=bool), iterations=1)
    outside &= np.isfinite(residual_median)
    if not outside.any():
        return outside
    limit = np.percentile(residual_median[outside], 100 * fraction)
    return outside & (residual_median <= limit)


def _ring(aperture: np.ndarray, width: int = _RING) -> np.ndarray:
    """The pixels within ``width`` of the aperture grown by one (as in
    `background_pixels`), shape (nrow, ncol), bool."""
    aperture = np.asarray(aperture, dtype=bool)
    grown = ndimage.binary_dilation(aperture, iterations=1)
    return ndimage.binary_dilation(aperture, iterations=1 + width) & ~grown


def _running_mean(values: np.ndarray, window: int) -> tuple[np.ndarray, np.ndarray]:
    """Centred running mean over ``window`` (odd) samples, NaN-aware, and the samples used."""
    finite = np.isfinite(values)
    kernel = np.ones(window)
    total = np.convolve(np.where(finite, values, 0), kernel, mode="same")
    count = np.convolve(finite.astype(float), kernel, mode="same")
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / count, np.nan), count


def _median(values: np.ndarray, axis: int, keepdims: bool = False) -> np.ndarray:
    """Median along ``axis``; numpy's fast path unless there are NaNs."""
    if np.isnan(values).any():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN pixels stay NaN
            return np.nanmedian(values, axis=axis, keepdims=keepdims)
    return np.median(values, axis=axis, keepdims=keepdims)


def _excess(
    spread: np.ndarray, noise: np.ndarray, dof: np.ndarray, chunk: int, shrink: bool = False
) -> np.ndarray:
    """Per cadence, the chunk's mean ``spread`` beyond its mean ``noise``, where significant.

    In chunks of ``chunk`` cadences (those with finite values and ``dof > 0``):
    ``mean(spread) - mean(noise)`` where ``mean(spread)`` exceeds ``mean(noise)``
    by more than 2 sigma of the noise's sampling over ``sum(dof)`` degrees of
    freedom (and the chunk has at least 4 cadences); zero elsewhere. With
    ``shrink``, what exceeds that 2-sigma limit instead (soft thresholding: an
    excess barely above the noise, as noise alone gives in a few chunks in a
    hundred, counts for little; a large one is hardly changed).
    """
    chunk_sums = functools.partial(_chunk_sums, chunk=chunk)
    ok = np.isfinite(spread) & np.isfinite(noise) & (dof > 0)
    cadences = chunk_sums(ok.astype(float))
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_spread = chunk_sums(np.where(ok, spread, 0)) / cadences
        mean_noise = chunk_sums(np.where(ok, noise, 0)) / cadences
        samples = chunk_sums(np.where(ok, dof, 0))
        limit = mean_noise * (1 + 2 * np.sqrt(2 / np.maximum(samples, 1)))
        excess = (cadences >= 4) & (mean_spread > limit)
        value = mean_spread - (limit if shrink else mean_noise)
    return np.repeat(np.where(excess, value, 0.0), chunk)[: spread.size]


def _chunk_sums(values: np.ndarray, chunk: int) -> np.ndarray:
    """Sums of ``values`` over consecutive chunks of ``chunk`` (the last one may be short)."""
    nchunk = -(-values.size // chunk)
    padded = np.concatenate([values, np.zeros(nchunk * chunk - values.size)])
    return padded.reshape(nchunk, chunk).sum(axis=1)


def _lagged_excess(residual: np.ndarray, chunk: int) -> np.ndarray:
    """Per cadence, the chunk's mean product of ``residual`` at consecutive cadences,
    where significant.

    ``residual`` (ncadence, npix) is each pixel's residual about the cadence's level
    (NaN where unused). Structure the model misses changes slowly and survives the
    product of one cadence with the next; noise, white in time, averages to zero in
    it however well or badly ``FLUX_ERR`` describes it. Significant: above 3 sigma
    of that mean for white noise of the observed scatter, in a chunk of at least 4
    cadences; zero elsewhere.
    """
    finite = np.isfinite(residual)
    if finite.all():  # the sums over the pixels of a cadence and the next
        n = np.full(len(residual) - 1, residual.shape[1])
        squares = np.einsum("ij,ij->i", residual, residual)
        square = (squares[1:] + squares[:-1]).astype(float)
    else:  # over the pixels finite at both
        residual = np.where(finite, residual, 0.0)
        both = finite[1:] & finite[:-1]
        n = both.sum(axis=1)
        square = np.einsum("ij,ij->i", residual[1:] ** 2 + residual[:-1] ** 2, both)
    product = np.einsum("ij,ij->i", residual[1:], residual[:-1]).astype(float)
    ok = np.append(n > 0, False)
    with np.errstate(invalid="ignore", divide="ignore"):
        product, square = product / n, square / (2 * n)
        # A product of two white values of variance s2 has variance s2**2.
        noise = np.append(np.where(n > 0, square**2 / np.maximum(n, 1), 0.0), 0.0)
        cadences = _chunk_sums(ok.astype(float), chunk)
        mean = _chunk_sums(np.where(ok, np.append(product, 0.0), 0.0), chunk) / cadences
        sigma = np.sqrt(_chunk_sums(np.where(ok, noise, 0.0), chunk)) / cadences
        lagged = (cadences >= 4) & (mean > 3 * sigma)
    return np.repeat(np.where(lagged, mean, 0.0), chunk)[: len(residual)]


def _relative(values: np.ndarray, use: np.ndarray, chunk: int) -> np.ndarray:
    """Per cadence, ``values`` over their mean over the chunk's cadences ``use``.

    In chunks of ``chunk`` cadences, as `_excess`; 1 where the value is not finite or
    the mean is not finite and positive (no course to follow).
    """
    nchunk = -(-values.size // chunk)
    ok = use & np.isfinite(values) & (values >= 0)
    padded = np.zeros(nchunk * chunk)
    padded[: values.size] = np.where(ok, values, 0.0)
    count = np.zeros(nchunk * chunk)
    count[: values.size] = ok
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = padded.reshape(nchunk, chunk).sum(1) / count.reshape(nchunk, chunk).sum(1)
        ratio = values / np.repeat(mean, chunk)[: values.size]
    return np.where(ok & np.isfinite(ratio), ratio, 1.0)


def _clipped_sums(d: np.ndarray, limit: float) -> np.ndarray:
    """Per cadence (row): pixels kept, their sum and their sum of squares, clipped.

    ``d`` is each pixel's residual about its own level; pixels further than ``limit``
    from the row's mean, or not finite, are dropped (set to 0 for the sums, then given
    their values back: ``d`` comes out as it went in). Returns an array of shape
    (3, nrow) (`_clipped_level` turns it into the mean and the scatter).

    Row sums are matrix-vector products (fast), and the pixels dropped are few, so
    they are handled by index: no mask over the whole block. A row sum that is not
    finite shows a NaN in the row; only then is every value checked.
    """
    ones = np.ones(d.shape[1], dtype=d.dtype)
    total = d @ ones
    count = np.full(len(d), d.shape[1])
    finite = None
    if not np.isfinite(total).all():
        finite = np.isfinite(d)
        count = np.add.reduce(finite, axis=1, dtype=np.int32)
        total = np.where(finite, d, 0.0).astype(d.dtype, copy=False) @ ones
    with np.errstate(invalid="ignore", divide="ignore"):
        first = total / np.maximum(count, 1)
    distance = np.subtract(d, first[:, None].astype(d.dtype))
    with np.errstate(invalid="ignore"):  # NaN: not finite, dropped below
        dropped = np.abs(distance, out=distance) > limit
    if finite is not None:
        dropped |= ~finite
    drop = np.flatnonzero(dropped)
    values = d.ravel()[drop]
    np.put(d, drop, 0.0)
    n = d.shape[1] - np.bincount(drop // d.shape[1], minlength=len(d))
    sums = np.array([n, d @ ones, np.einsum("ij,ij->i", d, d)])
    np.put(d, drop, values)
    return sums


def _clipped_level(sums: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pixels kept, mean and scatter (the kept pixels' sample variance) per cadence,
    from `_clipped_sums`."""
    n, total, squares = sums
    mean = total / np.maximum(n, 1)
    scatter = np.maximum(squares - n * mean**2, 0) / np.maximum(n - 1, 1)
    return n, mean, scatter


def _mean_square(err: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Per row of ``err`` (nrow, npix), the mean of ``err**2`` with ``weights`` (float32:
    ``1 / n`` on the ``n`` pixels averaged, 0 elsewhere).

    One product over every pixel; a value that is not finite anywhere in a row makes
    the row's mean NaN (`_finite_mean_square` redoes those rows).
    """
    return (np.square(err, dtype=np.float32) @ weights).astype(float)


def _mean_of(values: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Per row of ``values`` (nrow, npix), their mean with ``weights`` (as `_mean_square`,
    of values already squared)."""
    return (values.astype(np.float32, copy=False) @ weights).astype(float)


def _finite_mean_square(err: np.ndarray, where: np.ndarray) -> np.ndarray:
    """Per row of ``err`` (nrow, npix), the mean of ``err**2`` over the pixels ``where``
    (bool) whose value is finite (NaN if none is)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN rows stay NaN
        return np.nanmean(err[:, where].astype(float) ** 2, axis=1)


class _Residual:
    """The TPF's flux minus the model, formed only at the cadences and pixels read.

    ``data`` is the residual itself, or with ``model`` the flux; both of shape
    (ntime, nrow, ncol). Values come out as float32 (the difference taken in the
    inputs' precision, then rounded).
    """

    def __init__(self, data: np.ndarray, model: np.ndarray | None = None) -> None:
        data = np.asarray(data)
        self.ntime, self.image_shape = data.shape[0], data.shape[1:]
        # Views where the pixels of a cadence are contiguous (a FITS table column is one).
        self.data = np.reshape(data, (self.ntime, -1))
        self.model = None if model is None else np.reshape(model, (self.ntime, -1))
        self._scratch = None  # a block's flux minus model, reused (stays in the CPU's cache)

    def rows(self, rows) -> np.ndarray:
        """The residual at cadences ``rows``, shape (n, npix), float32."""
        if self.model is None:
            return self.data[rows].astype(np.float32, copy=False)
        return np.subtract(self.data[rows], self.model[rows]).astype(np.float32, copy=False)

    def take(self, rows, where: np.ndarray, out: np.ndarray) -> np.ndarray:
        """The residual at cadences ``rows`` and pixels ``where`` (flat indices), into
        ``out`` (float32, shape (n, where.size)); returns ``out``."""
        data = self.data[rows]
        if self.model is not None:  # whole rows, then the pixels: faster than two takes
            if self._scratch is None or len(self._scratch) < len(data):
                dtype = np.result_type(data, self.model).newbyteorder("=")
                self._scratch = np.empty(data.shape, dtype=dtype)
            data = np.subtract(data, self.model[rows], out=self._scratch[: len(data)])
        # np.take on a contiguous array is several times faster than fancy indexing, and
        # without its bounds check ("clip": the indices are valid) faster still.
        if data.dtype == out.dtype:
            return np.take(data, where, axis=1, out=out, mode="clip")
        np.copyto(out, np.take(data, where, axis=1, mode="clip"), casting="same_kind")
        return out


def _rows(rows: np.ndarray) -> slice | np.ndarray:
    """``rows`` (sorted indices) as a slice where they are consecutive (a view, no copy)."""
    if rows.size and rows[-1] - rows[0] == rows.size - 1:
        return slice(rows[0], rows[-1] + 1)
    return rows
