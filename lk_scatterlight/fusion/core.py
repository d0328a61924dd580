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


#: Fewest cadences (with a fused level and no surface) to measure how the
#: model's error changes with its own structure (`_reach`).
_MIN_REACH_CADENCES = 8


#: Significance [standard errors] that slope must have (it is shrunk by as much).
_REACH_SIGMA = 3.0


#: Least range of the model's structure across the TPF, in units of its quoted error at
#: the background pixels, for the error's change with that structure to be measured: the
#: model must say the light changes sharply. On the structured field's TPFs (part 4 of
#: ``benchmarks/bench_fusion.py``) the shadow edge's model spans 10x its quoted error,
#: the CCD corner's 2.3x (where a slope of 4 standard errors, other structure than the
#: model's, would have cut a level that helps).
_REACH_STRUCTURE = 5.0


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
    # Where the model's structure separates the aperture from the background pixels (a
    # shadow edge), how much of their level error reaches each pixel.
    use = enough & (weight[valid] > 0) & (degree == 0)
    reach = quoted_image = None
    if residual.model is not None and use.sum() >= _MIN_REACH_CADENCES:
        # The model's median image (its mean leans to the brightest cadences) and its mean
        # quoted variance per pixel, over the sample.
        model_image = _median(residual.model[sample].astype(np.float32), axis=0)
        error = None
        if model_var is not None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # pixels without a model
                quoted_var = np.nanmean(
                    np.reshape(np.asarray(model_var)[sample], (sample.size, -1)), axis=0
                )
            quoted_image = np.sqrt(quoted_var).reshape(median.shape)
            error = float(np.sqrt(np.nanmean(quoted_var[where])))
        reach = _reach(
            model_image.reshape(median.shape), where, background, use, mean, variance, noise, error
        )
        if reach is None:
            quoted_image = None
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
        reach=reach,
        reach_quoted=quoted_image,
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


def _reach(
    model_image: np.ndarray,
    where: np.ndarray,
    background: np.ndarray,
    use: np.ndarray,
    level: np.ndarray,
    level_var: np.ndarray,
    noise: np.ndarray,
    error: float | None = None,
) -> np.ndarray | None:
    """How much of the background pixels' level error reaches each pixel, (nrow, ncol) in
    0..1, or None where all of it does (or the data cannot tell).

    The model's error at a pixel ``p`` is taken as its level error at the background
    pixels, ``a(t)``, plus a part that follows the model's own structure, ``g(t) (M_p -
    <M>)`` (``M``: the model's median image, ``<M>`` its mean over the background
    pixels): a shadow edge whose depth the model has wrong errs in opposite senses on
    its two sides. Per cadence, ``g`` is the slope of the background pixels' residual
    against ``M_p - <M>``; its regression on the level over the cadences given,
    ``beta = cov(a, g) / var(a)`` (the level's noise removed from ``var(a)``), says how
    the error changes with the model's structure along with the level: the level error
    at ``p`` is ``(1 + beta (M_p - <M>)) a``. That factor, shrunk by ``_REACH_SIGMA``
    standard errors of ``beta`` towards 1 and clipped to 0..1, is the fraction of the
    fused level carried to ``p``: never more than the level measured (no extrapolation),
    never its opposite (a pixel across the edge keeps the model alone).

    Parameters
    ----------
    model_image : ndarray, shape (nrow, ncol)
        The model's median over time [e-/s].
    where : ndarray of int
        The background pixels (flat indices).
    background : ndarray, shape (ncadence, where.size)
        Their residual about each one's level, per cadence.
    use : ndarray of bool, shape (ncadence,)
        The cadences to use (fused, without a surface).
    level, level_var, noise : ndarray, shape (ncadence,)
        The local level, its variance and the pixels' mean ``FLUX_ERR**2``.
    error : float, optional
        The model's quoted error at the background pixels (RMS) [e-/s]; default: the
        level error's RMS, from ``level``. The model's structure must reach
        ``_REACH_STRUCTURE`` times it somewhere on the TPF; else None.
    """
    structure = model_image - np.nanmean(model_image.ravel()[where])
    d = np.nan_to_num(structure.ravel()[where]).astype(np.float32)
    norm = float(d @ d)
    level, level_var, noise = level[use], level_var[use], noise[use]
    a = level - level.mean()
    spread = float(a @ a - level_var.sum())  # var(a) without the level's noise (x n)
    if not (norm > 0 and spread > 0):
        return None
    if error is None or not np.isfinite(error):
        error = np.sqrt(spread / a.size)  # the level error's RMS
    if not np.nanmax(np.abs(structure)) >= _REACH_STRUCTURE * error:
        return None  # a model (nearly) flat over the TPF
    slope = (background @ d)[use] / norm  # g per cadence
    bad = np.flatnonzero(~np.isfinite(slope))
    if bad.size:  # NaN pixels count as 0
        slope[bad] = np.nan_to_num(background[np.flatnonzero(use)[bad]]) @ d / norm
    g = slope - slope.mean()
    beta = float(a @ g) / spread
    beta_err = float(np.sqrt(np.square(a) @ (noise / norm))) / spread  # g's noise: noise / norm
    beta = np.sign(beta) * max(abs(beta) - _REACH_SIGMA * beta_err, 0.0)
    reach = np.clip(1 + beta * structure, 0.0, 1.0)
    reach[~np.isfinite(reach)] = 1.0
    return None if reach.min() >= 1.0 - 1e-3 else reach
