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

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

__all__ = ["Fusion", "background_pixels", "fuse"]

#: Fewest background pixels a fusion needs.
MIN_PIXELS = 6
#: Cadences sampled for each pixel's median level and for the clipping scatter.
_SAMPLE = 256


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
        extra = (model_var.ndim - 1) * (None,)
        level, fused = npix**2 * self.model_err**2, npix**2 * self.offset_var
        floor = fused + npix**2 * self.shape_var
        # max(var - level, 0) + fused, at least the floor: two passes.
        out = np.add(
            model_var, (fused - level).astype(model_var.dtype)[(slice(None), *extra)], out=out
        )
        return np.maximum(out, floor.astype(model_var.dtype)[(slice(None), *extra)], out=out)


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


def fuse(
    flux: np.ndarray,
    flux_err: np.ndarray,
    model: np.ndarray,
    aperture: np.ndarray,
    window: int = 1,
    min_pixels: int = MIN_PIXELS,
    clip: float = 3.0,
    chunk: int = 48,
) -> Fusion | None:
    """Combine a model with the TPF's faint pixels by their uncertainties.

    Parameters
    ----------
    flux, flux_err : ndarray, shape (ntime, nrow, ncol)
        The TPF's flux (background still in it) and its error [e-/s].
    model : ndarray, shape (ntime, nrow, ncol)
        The scattered-light model at the same pixels [e-/s]; NaN where it is
        unavailable.
    aperture : ndarray of bool, shape (nrow, ncol)
        The target's pixels (never used).
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
    flux, model = np.asarray(flux), np.asarray(model)
    ntime = flux.shape[0]
    # Cadences the model covers (invalid ones are NaN everywhere); cadences without
    # finite flux drop out below (too few pixels).
    valid = np.flatnonzero(np.isfinite(model[:, 0, 0]))
    if valid.size < 2:
        return None
    # Each pixel's level over time, from at most _SAMPLE cadences (the medians are the cost).
    # float32 throughout: the values are e-/s levels and their noise, and sums run over at
    # most a few hundred pixels.
    sample = valid[np.linspace(0, valid.size - 1, min(valid.size, _SAMPLE)).astype(int)]
    median = _median(np.subtract(flux[sample], model[sample], dtype=np.float32), axis=0)
    pixels = background_pixels(median, aperture)
    if pixels.sum() < min_pixels:
        return None
    where = np.flatnonzero(pixels.ravel())

    def gather(cube: np.ndarray) -> np.ndarray:  # the background pixels of valid cadences
        # np.take on a contiguous array is several times faster than fancy indexing.
        out = np.take(np.ascontiguousarray(cube).reshape(ntime, -1), where, axis=1)
        return out if valid.size == ntime else out[valid]

    with np.errstate(invalid="ignore", divide="ignore"):
        d = np.subtract(gather(flux), gather(model), dtype=np.float32)
        d -= median.ravel()[where]  # (nvalid, npix): what the model missed, plus noise
        finite = np.isfinite(d)
        if finite.all():
            count = np.full(len(d), d.shape[1])
        else:
            d[~finite] = 0.0
            count = np.count_nonzero(finite, axis=1)
        # Clip across pixels around each cadence's mean, at a robust scatter of a sample.
        first = d.sum(axis=1) / np.maximum(count, 1)
        few = np.linspace(0, len(d) - 1, min(len(d), _SAMPLE)).astype(int)
        spread = (d[few] - first[few, None])[finite[few]]
        sigma = 1.4826 * np.median(np.abs(spread - np.median(spread))) if spread.size else 0.0
        distance = np.subtract(d, first[:, None].astype(d.dtype))
        keep = np.abs(distance, out=distance) <= clip * max(sigma, 1e-12)
        keep &= finite
        n = np.count_nonzero(keep, axis=1)
        clipped = ~keep
        d[clipped] = 0.0
        mean = d.sum(axis=1).astype(float) / np.maximum(n, 1)
        squares = np.einsum("ij,ij->i", d, d).astype(float)
        scatter = np.maximum(squares - n * mean**2, 0) / np.maximum(n - 1, 1)
        err = np.asarray(gather(flux_err), dtype=np.float32)
        err[clipped] = 0.0
        err2 = np.einsum("ij,ij->i", err, err).astype(float)
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
