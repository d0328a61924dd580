"""`fuse`: combine a model with a TPF's faint pixels by their uncertainties (the
method is described in `lk_scatterlight.fusion`).
"""

from __future__ import annotations

import warnings

import numpy as np

from .local import (
    _BLOCK,
    _clipped_level,
    _clipped_sums,
    _excess,
    _finite_mean_square,
    _lagged_excess,
    _mean_of,
    _mean_square,
    _median,
    _relative,
    _Residual,
    _ring,
    _rows,
    _running_mean,
    background_pixels,
)
from .result import Fusion
from .rows import _one_blas_thread
from .surface import _TERMS, _fit_surface

#: Fewest background pixels a fusion needs.
MIN_PIXELS = 6


#: Cadences sampled for each pixel's median level and for the clipping scatter.
_SAMPLE = 256


@_one_blas_thread
def fuse(
    residual: np.ndarray,
    flux_err: np.ndarray,
    aperture: np.ndarray,
    valid: np.ndarray | None = None,
    window: int = 1,
    min_pixels: int = MIN_PIXELS,
    clip: float = 3.0,
    chunk: int = 48,
    model_var: np.ndarray | None = None,
    model: np.ndarray | None = None,
    flux_var: np.ndarray | None = None,
) -> Fusion | None:
    """Combine a model with the TPF's faint pixels by their uncertainties.

    Parameters
    ----------
    residual : ndarray, shape (ntime, nrow, ncol)
        The TPF's flux (background still in it) minus the scattered-light
        model [e-/s]; NaN where either is unavailable. With ``model``: the
        flux itself.
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
    model_var : ndarray, shape (ntime, nrow, ncol), optional
        The model's quoted variance per pixel [(e-/s)**2]. Its mean over the
        background pixels gives the level error's course within a chunk (the
        data give its size); without it the level error is constant over a chunk.
    model : ndarray, shape (ntime, nrow, ncol), optional
        The scattered-light model [e-/s]. Given, the first argument is the flux
        and flux minus model is formed only where the fusion reads it (the
        background pixels, a sample of cadences): no full residual is made.
    flux_var : ndarray, shape (ntime, nrow, ncol), optional
        ``flux_err**2``, where the caller has it already (`correct_tpf
        <lk_scatterlight.ScatterLightCorrector.correct_tpf>` does): spares squaring
        every cadence's errors once more.

    Returns
    -------
    fusion : `Fusion` or None
        None when the TPF has too few background pixels.
    """
    residual = _Residual(residual, model)
    ntime = residual.ntime
    # Cadences the model covers; cadences without finite flux drop out below (too few
    # pixels).
    if valid is None:
        valid = np.isfinite(residual.rows(slice(None))).any(axis=1)
    valid = np.flatnonzero(valid)
    if valid.size < 2:
        return None
    # Each pixel's level over time, from at most _SAMPLE cadences (the medians are the cost).
    # float32 throughout: the values are e-/s levels and their noise, and sums run over at
    # most a few hundred pixels.
    sample = valid[np.linspace(0, valid.size - 1, min(valid.size, _SAMPLE)).astype(int)]
    sampled = residual.rows(sample)
    median = _median(sampled, axis=0).reshape(residual.image_shape)
    pixels = background_pixels(median, aperture)
    if pixels.sum() < min_pixels:
        return None
    where = np.flatnonzero(pixels.ravel())
    level = median.ravel()[where]
    # The clipping scale: a robust scatter across pixels about each cadence's mean, from
    # a quarter of the sample.
    spread = sampled[::4][:, where] - level
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN cadences
        spread = (spread - np.nanmean(spread, axis=1, keepdims=True)).ravel()
    spread = spread[np.isfinite(spread)]
    sigma = 1.4826 * np.median(np.abs(spread - np.median(spread))) if spread.size else 0.0
    # Views where the pixels of a cadence are contiguous (a FITS table column is one).
    flat_err = np.reshape(flux_err, (ntime, -1))
    flat_var = None if flux_var is None else np.reshape(flux_var, (ntime, -1))
    span = chunk * max(window, 1)
    # Blocks of cadences small enough to stay in the CPU's cache through the passes.
    sums, noise = np.empty((3, valid.size)), np.empty(valid.size)
    weights = pixels.ravel().astype(np.float32) / where.size
    # The residual at the background pixels about each one's level, kept for the surface.
    background = np.empty((valid.size, where.size), dtype=np.float32)
    for first in range(0, valid.size, _BLOCK):
        rows = _rows(valid[first : first + _BLOCK])
        d = residual.take(rows, where, out=background[first : first + _BLOCK])
        np.subtract(d, level, out=d)
        sums[:, first : first + _BLOCK] = _clipped_sums(d, clip * max(sigma, 1e-12))
        if flat_var is None:
            noise[first : first + _BLOCK] = _mean_square(flat_err[rows], weights)
        else:
            noise[first : first + _BLOCK] = _mean_of(flat_var[rows], weights)
    bad = np.flatnonzero(~np.isfinite(noise))
    if bad.size:  # a FLUX_ERR that is not finite: the mean over the finite ones
        noise[bad] = _finite_mean_square(flat_err[valid[bad]], pixels.ravel())
    with np.errstate(invalid="ignore", divide="ignore"):
        n, mean, scatter = _clipped_level(sums)
        enough = n >= min_pixels
        # The pixels' scatter about the level beyond their noise, day by day: a surface
        # is tried only where there is some.
        dof = np.where(enough, n - 1, 0)
        structured = _excess(np.where(enough, scatter, np.nan), noise, dof, span) > 0
    degree, coef, cv_spread, basis = _fit_surface(background, where, median.shape, structured, span)
    terms = np.asarray(_TERMS)[degree]
    with np.errstate(invalid="ignore", divide="ignore"):
        variance = np.maximum(scatter, noise) / np.maximum(n, 1)
        local = np.full(ntime, np.nan)
        local_var = np.full(ntime, np.nan)
        local[valid[enough]] = mean[enough]
        local_var[valid[enough]] = variance[enough]
        # The pixels' scatter about the level beyond their noise; about the surface, as
        # cross-validated (out of sample: the surface is used where it was not fitted).
        spread = np.where(degree > 0, cv_spread, scatter)
        shape = np.zeros(ntime)
        shape[valid] = _excess(
            np.where(enough, spread, np.nan), noise, np.where(enough, n - terms, 0), span
        )
        # Structure next to the aperture that the faint half's scatter misses (a shadow
        # edge's bright side): the background pixels around the aperture, about the
        # level, from one cadence to the next (white noise, however mis-quoted, drops
        # out). Not where a surface was fitted: there the structure is its
        # cross-validated error, which tests pixels all over the TPF.
        ring = np.flatnonzero(_ring(aperture).ravel()[where])
        if ring.size >= min_pixels and not degree.all():
            near = np.take(background, ring, axis=1, mode="clip")
            near -= mean[:, None].astype(np.float32)
            near[~enough] = np.nan
            near = _lagged_excess(near, span)
            shape[valid] = np.where(degree > 0, shape[valid], np.maximum(shape[valid], near))
        surface_coef = np.zeros((ntime, _TERMS[-1] - 1))
        surface_coef[valid] = coef[:, 1:]
        surface_var = np.zeros(ntime)
        surface_var[valid] = np.where(degree > 0, noise, 0.0)
        degrees = np.zeros(ntime, dtype=np.int8)
        degrees[valid] = degree
        if window > 1:
            window |= 1  # odd: centred
            local, count = _running_mean(local, window)
            summed, _ = _running_mean(local_var, window)
            local_var = summed / np.maximum(count, 1)
            if degree.any():
                for k in range(surface_coef.shape[1]):
                    surface_coef[:, k] = _running_mean(surface_coef[:, k], window)[0]
                surface_var = _running_mean(surface_var, window)[0] / np.maximum(count, 1)
        # The model's level error: the local estimate's mean square (about the whole
        # series' level) beyond its own noise, one degree of freedom per cadence.
        level_var = _excess(local**2, local_var, np.ones(ntime), span, True)
        good = np.isfinite(local) & np.isfinite(local_var)
        weight = np.where(good, level_var / (level_var + local_var), 0.0)
        weight = np.where(np.isfinite(weight), weight, 0.0)
        offset = np.where(good, weight * local, 0.0)
        # The level error per cadence: the chunk's, spread as the model's quoted error
        # runs (its sum over the chunk is what the data measured). Not in the weight:
        # how the error runs within a chunk is the model's guess, not a measurement.
        level_var = _excess(local**2, local_var, np.ones(ntime), span)
        quoted = quoted_sum = None
        if model_var is not None:  # only on the days with a level error: elsewhere it is 0
            need = valid[level_var[valid] > 0]
            quoted, quoted_sum = np.full((2, ntime), np.nan)
            quoted[need], quoted_sum[need] = _quoted(model_var, need, weights)
            level_var = level_var * _relative(quoted, good, span)
        # The fused level's error: what is left of the model's plus the local noise
        # that came in, w**2 s_L**2 + (1 - w)**2 s_M**2 (= w s_L**2 where s_M is constant).
        added = np.where(good, weight**2 * local_var + (1 - weight) ** 2 * level_var, 0.0)
    surface_coef[~np.isfinite(surface_coef)] = 0.0
    return Fusion(
        offset=offset,
        offset_var=added,
        local=local,
        local_err=np.sqrt(local_var),
        model_err=np.sqrt(level_var),
        shape_var=shape,
        weight=weight,
        pixels=pixels,
        degree=degrees,
        surface_coef=surface_coef,
        surface_basis=basis[:, 1:].T.reshape((-1,) + median.shape),
        surface_var=np.nan_to_num(surface_var),
        quoted_sum=quoted_sum,
        quoted_level=quoted,
    )


def _quoted(model_var: np.ndarray, cadences: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """The model's quoted variance at ``cadences`` (sorted indices): its mean over the
    background pixels (``weights``: ``1 / n`` on them) and its sum over every pixel.

    Returns
    -------
    ndarray, shape (2, cadences.size)
    """
    flat = np.reshape(model_var, (len(model_var), -1))
    both = np.column_stack([weights, np.ones_like(weights)])  # one pass over the rows
    out = np.empty((2, cadences.size))
    for first in range(0, cadences.size, _BLOCK):
        block = flat[_rows(cadences[first : first + _BLOCK])].astype(np.float32, copy=False)
        out[:, first : first + _BLOCK] = (block @ both).T
    return out
