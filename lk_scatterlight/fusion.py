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
   constant in time), sigma-clipped across pixels and averaged per cadence.
   Its variance ``s_L^2(t)`` is the larger of the clipped scatter over the
   number of pixels and the mean ``FLUX_ERR**2`` over the number of pixels.
   When the TPF's cadence is shorter than the model's time resolution, ``L``
   and ``s_L^2`` are averaged over one model interval (``window`` cadences):
   the model cannot vary faster, and the noise drops.
3. **Model error** ``s_M^2(t)``: the larger of the model's quoted variance
   (mean over the background pixels) and what the data say it is:
   ``var_t(L) - mean_t(s_L^2)`` (the scatter of ``L`` beyond its noise is the
   model's own error at this TPF).
4. **Fused offset** ``w L`` with ``w = s_M^2 / (s_M^2 + s_L^2)``, added to the
   model at every pixel of the cadence, and its variance
   ``s_M^2 s_L^2 / (s_M^2 + s_L^2)``, which replaces the model's variance of the
   level (fully correlated over the TPF's pixels).

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


@dataclass
class Fusion:
    """Per-cadence result of `fuse` [e-/s per pixel].

    Attributes
    ----------
    offset : ndarray, shape (ntime,)
        ``w * local``: what is added to the model at every pixel.
    offset_var : ndarray, shape (ntime,)
        Variance of the fused level, to replace the model's.
    local, local_err : ndarray, shape (ntime,)
        The local estimate ``L`` and its 1-sigma error.
    model_err : ndarray, shape (ntime,)
        The model's error of the level at this TPF (quoted or from the data).
    quoted : ndarray, shape (ntime,)
        The model's quoted variance of the level (mean over the background pixels).
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
    quoted: np.ndarray
    weight: np.ndarray
    pixels: np.ndarray


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


def _running_mean(values: np.ndarray, window: int) -> np.ndarray:
    """Centred running mean over ``window`` samples, NaN-aware, same length."""
    if window <= 1:
        return values
    finite = np.isfinite(values)
    kernel = np.ones(window)
    total = np.convolve(np.where(finite, values, 0), kernel, mode="same")
    count = np.convolve(finite.astype(float), kernel, mode="same")
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / count, np.nan)


def fuse(
    flux: np.ndarray,
    flux_err: np.ndarray,
    model: np.ndarray,
    model_err: np.ndarray,
    aperture: np.ndarray,
    window: int = 1,
    min_pixels: int = MIN_PIXELS,
    clip: float = 3.0,
) -> Fusion | None:
    """Combine a model with the TPF's faint pixels by their uncertainties.

    Parameters
    ----------
    flux, flux_err : ndarray, shape (ntime, nrow, ncol)
        The TPF's flux (background still in it) and its error [e-/s].
    model, model_err : ndarray, shape (ntime, nrow, ncol)
        The scattered-light model and its error at the same pixels [e-/s];
        NaN where the model is unavailable.
    aperture : ndarray of bool, shape (nrow, ncol)
        The target's pixels (never used).
    window : int
        Cadences per model interval (see the module docstring).
    min_pixels : int
        Fewest background pixels; with fewer, None is returned.
    clip : float
        Sigma clipping across pixels, in robust standard deviations.

    Returns
    -------
    fusion : `Fusion` or None
        None when the TPF has too few background pixels.
    """
    with warnings.catch_warnings(), np.errstate(invalid="ignore", divide="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)  # cadences the model does not cover
        residual = np.asarray(flux, dtype=float) - np.asarray(model, dtype=float)
        median = np.nanmedian(residual, axis=0)
        pixels = background_pixels(median, aperture)
        if pixels.sum() < min_pixels:
            return None
        d = residual[:, pixels] - median[pixels]  # (ntime, npix)
        centre = np.nanmedian(d, axis=1, keepdims=True)
        mad = 1.4826 * np.nanmedian(np.abs(d - centre), axis=1, keepdims=True)
        keep = (np.abs(d - centre) <= clip * np.maximum(mad, 1e-12)) & np.isfinite(d)
        n = keep.sum(axis=1)
        local = np.where(keep, d, 0).sum(axis=1) / np.maximum(n, 1)
        scatter = np.where(keep, (d - local[:, None]) ** 2, 0).sum(axis=1) / np.maximum(n - 1, 1)
        err2 = np.where(keep, np.asarray(flux_err, dtype=float)[:, pixels] ** 2, 0).sum(axis=1)
        local_var = np.maximum(scatter, err2 / np.maximum(n, 1)) / np.maximum(n, 1)
        local[n < min_pixels] = np.nan
        local_var[n < min_pixels] = np.nan
        if window > 1:
            local = _running_mean(local, window)
            local_var = _running_mean(local_var, window) / window
        quoted = np.nanmean(np.asarray(model_err, dtype=float)[:, pixels] ** 2, axis=1)
        good = np.isfinite(local) & np.isfinite(local_var) & np.isfinite(quoted)
        excess = 0.0
        if good.sum() > 2:
            spread = np.var(local[good] - np.median(local[good]))
            excess = max(float(spread - np.mean(local_var[good])), 0.0)
        model_var = np.maximum(quoted, excess)
        weight = np.where(good, model_var / (model_var + local_var), 0.0)
        offset = np.where(good, weight * local, 0.0)
        offset_var = np.where(good, model_var * local_var / (model_var + local_var), quoted)
    return Fusion(
        offset=offset,
        offset_var=offset_var,
        local=local,
        local_err=np.sqrt(local_var),
        model_err=np.sqrt(model_var),
        quoted=quoted,
        weight=weight,
        pixels=pixels,
    )
