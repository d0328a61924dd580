"""Fuse a global scattered-light model with a TPF's own faint pixels.

A cube (or any model) gives the scattered light's shape across a TPF and a
quoted uncertainty; the TPF's faint pixels away from the target give a
per-cadence level of what the model missed, with an uncertainty of its own.
`fuse` combines the two by their variances, cadence by cadence:

1. **Background pixels** (`background_pixels`): outside the aperture grown by
   one pixel, and the faint half of what is left (the median image of flux
   minus model); at least ``min_pixels`` of them, else no fusion.
2. **Local estimate** ``L(t)``: the residual ``flux - model`` of those pixels,
   each pixel's median over time removed (stars and the static sky stay
   constant in time; the median of up to 256 cadences spread over the
   series), clipped across pixels at 3 robust standard deviations around the
   cadence's mean, and averaged per cadence.
   Its variance ``s_L^2(t)`` is the larger of the clipped scatter over the
   number of pixels and the mean ``FLUX_ERR**2`` over the number of pixels.
   When the TPF's cadence is shorter than the model's time resolution, ``L``
   and ``s_L^2`` are averaged over one model interval (``window`` cadences):
   the model cannot vary faster, and the noise drops.
3. **Model error** ``s_M^2(t)``: what the data say the model's error of the
   level is, day by day (``chunk`` model intervals): the mean square of ``L``
   beyond its own noise, where that excess is significant, else zero. The
   model's quoted errors describe its error per pixel, not how much of it is
   a level common to the TPF; the data measure that directly.
4. **Fused offset** ``w L`` with ``w = s_M^2 / (s_M^2 + s_L^2)``, added to the
   model at every pixel of the cadence. The fused level's error is
   ``w^2 s_L^2 + (1 - w)^2 s_M^2 = w s_L^2`` where the model's was ``s_M^2``:
   the corrector replaces ``s_M^2`` of the model's quoted variance by
   ``w s_L^2`` (`Fusion.variance`), never going below ``w s_L^2``.

5. **Structure the model misses** ``s_S^2(t)``: the background pixels'
   scatter about the cadence's level beyond their noise, day by day, where
   significant. A level cannot remove it; the fused variance is never below
   ``s_S^2 + w s_L^2`` (`Fusion.variance`).

Where the model is good (``s_M`` small) the weight goes to zero and the
local noise is not added; where it misses structure the local level takes
over. The aperture never enters the estimate, so the target's own signal
(transits, variability) is not touched.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

__all__ = ["Fusion", "background_pixels", "fuse"]

#: Fewest background pixels a fusion needs.
MIN_PIXELS = 6
#: Cadences sampled for each pixel's median level and for the clipping scatter.
_SAMPLE = 256
#: Cadences per block of the clipped per-cadence statistics (fits in a CPU cache).
_BLOCK = 1024


@dataclass
class Fusion:
    """Per-cadence result of `fuse` [e-/s per pixel].

    Attributes
    ----------
    offset : ndarray, shape (ntime,)
        ``w * local``: what is added to the model at every pixel.
    offset_var : ndarray, shape (ntime,)
        Variance of the fused level, ``w * local_err**2`` (the model's measured
        level error that remains and the local noise that came in).
    local, local_err : ndarray, shape (ntime,)
        The local estimate ``L`` and its 1-sigma error.
    model_err : ndarray, shape (ntime,)
        The model's error of the level at this TPF, measured from the data; the
        fusion removes the part ``weight * model_err**2`` of the model's variance.
    shape_var : ndarray, shape (ntime,)
        The model's error variance across the TPF beyond a level, per pixel,
        measured from the data (0 where it is not significant): structure the
        model misses (a glint ridge, a shadow edge). The fused variance is never
        below it (`variance`).
    weight : ndarray, shape (ntime,)
        ``w``: 0 where the model drove the cadence, 1 where the local estimate did.
    pixels : ndarray of bool, shape (nrow, ncol)
        The background pixels used.
    """

    offset: np.ndarray
    offset_var: np.ndarray
    local: np.ndarray
    local_err: np.ndarray
    model_err: np.ndarray
    shape_var: np.ndarray
    weight: np.ndarray
    pixels: np.ndarray

    def variance(self, model_var, npix: float = 1.0, out: np.ndarray | None = None) -> np.ndarray:
        """The fused background's variance, from the model's quoted variance.

        The model's level error the data measured, ``model_err**2``, is replaced
        by the fused level's, ``offset_var``; a level is common to all pixels,
        so for a sum of ``npix`` pixels both count ``npix**2`` times. The result
        is never below ``shape_var + offset_var``: what the data say is left of
        the model's error after fusion (the structure it misses is taken as
        correlated over an aperture, ``npix**2`` times as well).

        Parameters
        ----------
        model_var : ndarray, shape (ntime,) or (ntime, nrow, ncol)
            The model's quoted variance per pixel (or of the sum of ``npix``
            pixels) [(e-/s)**2].
        npix : float
            Number of pixels summed in ``model_var``.
        out : ndarray, optional
            Where to write the result (may be ``model_var`` itself).

        Returns
        -------
        ndarray, the shape of ``model_var``
        """
        model_var = np.asarray(model_var)
        level, fused = npix**2 * self.model_err**2, npix**2 * self.offset_var
        floor = fused + npix**2 * self.shape_var
        if out is None:
            out = np.empty(model_var.shape, dtype=model_var.dtype)
        # max(var - level, 0) + fused, at least the floor: two passes.
        per_row(np.add, model_var, (fused - level).astype(out.dtype), out)
        per_row(np.maximum, out, floor.astype(out.dtype), out)
        return out


def per_row(ufunc: np.ufunc, array: np.ndarray, values: np.ndarray, out: np.ndarray) -> np.ndarray:
    """``ufunc(array, values)`` with one value per row (first axis), into ``out``.

    On (nrow, -1) views when both arrays are C-contiguous: numpy broadcasts a
    per-row value over one long axis several times faster than over two short ones.
    """
    if array.flags.c_contiguous and out.flags.c_contiguous:
        ufunc(array.reshape(len(array), -1), values[:, None], out=out.reshape(len(out), -1))
    else:
        ufunc(array, values[(slice(None),) + (array.ndim - 1) * (None,)], out=out)
    return out


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
        return np.nanmedian(values, axis=axis, keepdims=keepdims)
    return np.median(values, axis=axis, keepdims=keepdims)


def _excess(spread: np.ndarray, noise: np.ndarray, dof: np.ndarray, chunk: int) -> np.ndarray:
    """Per cadence, the chunk's mean ``spread`` beyond its mean ``noise``, where significant.

    In chunks of ``chunk`` cadences (those with finite values and ``dof > 0``):
    ``mean(spread) - mean(noise)`` where ``mean(spread)`` exceeds ``mean(noise)``
    by more than 2 sigma of the noise's sampling over ``sum(dof)`` degrees of
    freedom (and the chunk has at least 4 cadences); zero elsewhere.
    """
    nchunk = -(-spread.size // chunk)
    pad = nchunk * chunk - spread.size

    def chunk_sums(values: np.ndarray) -> np.ndarray:
        return np.concatenate([values, np.zeros(pad)]).reshape(nchunk, chunk).sum(axis=1)

    ok = np.isfinite(spread) & np.isfinite(noise) & (dof > 0)
    cadences = chunk_sums(ok.astype(float))
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_spread = chunk_sums(np.where(ok, spread, 0)) / cadences
        mean_noise = chunk_sums(np.where(ok, noise, 0)) / cadences
        samples = chunk_sums(np.where(ok, dof, 0))
        significant = mean_spread > mean_noise * (1 + 2 * np.sqrt(2 / np.maximum(samples, 1)))
        excess = (cadences >= 4) & significant
    return np.repeat(np.where(excess, mean_spread - mean_noise, 0.0), chunk)[: spread.size]


def _clipped_level(d: np.ndarray, err: np.ndarray, limit: float) -> np.ndarray:
    """Per cadence (row): pixels kept, mean, scatter and sum of squared errors, clipped.

    ``d`` is each pixel's residual about its own level; pixels further than ``limit``
    from the row's mean, or not finite, are dropped. ``d`` and ``err`` are overwritten.
    Returns an array of shape (4, nrow): ``n``, ``mean``, ``scatter`` (the sample
    variance of the kept pixels) and ``sum(err**2)`` over the kept pixels.
    """
    finite = np.isfinite(d)
    if finite.all():
        count = np.full(len(d), d.shape[1])
    else:
        d[~finite] = 0.0
        count = np.add.reduce(finite, axis=1, dtype=np.int32)
    ones = np.ones(d.shape[1], dtype=d.dtype)  # row sums as a matrix-vector product: fast
    with np.errstate(invalid="ignore", divide="ignore"):
        first = (d @ ones) / np.maximum(count, 1)
        distance = np.subtract(d, first[:, None].astype(d.dtype))
        keep = np.abs(distance, out=distance) <= limit
        keep &= finite
        n = np.add.reduce(keep, axis=1, dtype=np.int32)  # faster than count_nonzero
        clipped = ~keep
        d[clipped] = 0.0
        err[clipped] = 0.0
        mean = (d @ ones).astype(float) / np.maximum(n, 1)
        squares = np.einsum("ij,ij->i", d, d).astype(float)
        scatter = np.maximum(squares - n * mean**2, 0) / np.maximum(n - 1, 1)
        err2 = np.einsum("ij,ij->i", err, err).astype(float)
    return np.array([n, mean, scatter, err2])


def fuse(
    residual: np.ndarray,
    flux_err: np.ndarray,
    aperture: np.ndarray,
    valid: np.ndarray | None = None,
    window: int = 1,
    min_pixels: int = MIN_PIXELS,
    clip: float = 3.0,
    chunk: int = 48,
) -> Fusion | None:
    """Combine a model with the TPF's faint pixels by their uncertainties.

    Parameters
    ----------
    residual : ndarray, shape (ntime, nrow, ncol)
        The TPF's flux (background still in it) minus the scattered-light
        model [e-/s]; NaN where either is unavailable.
    flux_err : ndarray, shape (ntime, nrow, ncol)
        The flux's error [e-/s].
    aperture : ndarray of bool, shape (nrow, ncol)
        The target's pixels (never used).
    valid : ndarray of bool, shape (ntime,), optional
        Cadences the model covers. Default: those with any finite residual.
    window : int
        Cadences per model interval (see the module docstring).
    min_pixels : int
        Fewest background pixels; with fewer, None is returned.
    clip : float
        Sigma clipping across pixels, in robust standard deviations.
    chunk : int
        Model intervals per chunk in which the model's error is measured
        (48: a day of 30-min FFIs).

    Returns
    -------
    fusion : `Fusion` or None
        None when the TPF has too few background pixels.
    """
    residual = np.asarray(residual)
    ntime = residual.shape[0]
    # Cadences the model covers; cadences without finite flux drop out below (too few
    # pixels).
    if valid is None:
        valid = np.isfinite(residual).any(axis=(1, 2))
    valid = np.flatnonzero(valid)
    if valid.size < 2:
        return None
    # Each pixel's level over time, from at most _SAMPLE cadences (the medians are the cost).
    # float32 throughout: the values are e-/s levels and their noise, and sums run over at
    # most a few hundred pixels.
    sample = valid[np.linspace(0, valid.size - 1, min(valid.size, _SAMPLE)).astype(int)]
    sampled = residual[sample].astype(np.float32, copy=False)
    median = _median(sampled, axis=0)
    pixels = background_pixels(median, aperture)
    if pixels.sum() < min_pixels:
        return None
    where = np.flatnonzero(pixels.ravel())
    level = median.ravel()[where]
    # The clipping scale: a robust scatter across pixels about each cadence's mean, from
    # a quarter of the sample.
    spread = sampled[::4].reshape(-1, median.size)[:, where] - level
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN cadences
        spread = (spread - np.nanmean(spread, axis=1, keepdims=True)).ravel()
    spread = spread[np.isfinite(spread)]
    sigma = 1.4826 * np.median(np.abs(spread - np.median(spread))) if spread.size else 0.0
    # Blocks of cadences small enough to stay in the CPU's cache through the passes.
    stats = np.empty((4, valid.size))
    flat, flat_err = (np.ascontiguousarray(a).reshape(ntime, -1) for a in (residual, flux_err))
    for first in range(0, valid.size, _BLOCK):
        rows = valid[first : first + _BLOCK]
        rows = slice(rows[0], rows[-1] + 1) if rows[-1] - rows[0] == rows.size - 1 else rows
        # np.take on a contiguous array is several times faster than fancy indexing.
        d = np.subtract(np.take(flat[rows], where, axis=1), level, dtype=np.float32)
        err = np.take(flat_err[rows], where, axis=1).astype(np.float32, copy=False)
        stats[:, first : first + _BLOCK] = _clipped_level(d, err, clip * max(sigma, 1e-12))
    n, mean, scatter, err2 = stats
    with np.errstate(invalid="ignore", divide="ignore"):
        variance = np.maximum(scatter, err2 / np.maximum(n, 1)) / np.maximum(n, 1)
        enough = n >= min_pixels
        local = np.full(ntime, np.nan)
        local_var = np.full(ntime, np.nan)
        local[valid[enough]] = mean[enough]
        local_var[valid[enough]] = variance[enough]
        shape = np.zeros(ntime)
        shape[valid] = _excess(  # the pixels' scatter about the level beyond their noise
            np.where(enough, scatter, np.nan),
            err2 / np.maximum(n, 1),
            np.where(enough, n - 1, 0),
            chunk * max(window, 1),
        )
        if window > 1:
            window |= 1  # odd: centred
            local, count = _running_mean(local, window)
            summed, _ = _running_mean(local_var, window)
            local_var = summed / np.maximum(count, 1)
        # The model's level error: the local estimate's mean square (about the whole
        # series' level) beyond its own noise, one degree of freedom per cadence.
        model_var = _excess(local**2, local_var, np.ones(ntime), chunk * max(window, 1))
        good = np.isfinite(local) & np.isfinite(local_var)
        weight = np.where(good, model_var / (model_var + local_var), 0.0)
        weight = np.where(np.isfinite(weight), weight, 0.0)
        offset = np.where(good, weight * local, 0.0)
        # The fused level's error: what is left of the model's plus the local noise
        # that came in, w**2 s_L**2 + (1 - w)**2 s_M**2 = w s_L**2.
        added = np.where(good, weight * local_var, 0.0)
    return Fusion(
        offset=offset,
        offset_var=added,
        local=local,
        local_err=np.sqrt(local_var),
        model_err=np.sqrt(model_var),
        shape_var=shape,
        weight=weight,
        pixels=pixels,
    )
