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
   number of pixels and the pixels' mean ``FLUX_ERR**2`` over that number.
   When the TPF's cadence is shorter than the model's time resolution, ``L``
   and ``s_L^2`` are averaged over one model interval (``window`` cadences):
   the model cannot vary faster, and the noise drops.
3. **Model error** ``s_M^2(t)``: what the data say the model's error of the
   level is, day by day (``chunk`` model intervals): the mean square of ``L``
   beyond its own noise, where that excess is significant, else zero. The
   model's quoted errors describe its error per pixel, not how much of it is
   a level common to the TPF; the data measure that directly. For the weight
   (step 4) the excess is shrunk (soft-thresholded: noise alone earns little
   weight) and constant over the day; for the errors it is the unbiased
   excess, spread over the day's cadences as the model's quoted variance at
   the background pixels runs (``model_var``), so that a cadence where the
   model quotes little is not charged the day's mean level error.
4. **Fused offset** ``w L`` with ``w = s_M^2 / (s_M^2 + s_L^2)``, added to the
   model at every pixel of the cadence. The fused level's error is
   ``w^2 s_L^2 + (1 - w)^2 s_M^2`` where the model's was ``s_M^2``: the
   corrector replaces ``s_M^2`` of the model's quoted variance by it
   (`Fusion.variance`), never going below it.

5. **A surface** where the model misses structure across the TPF (a glint
   ridge crossing it): day by day, a plane or a quadratic in row and column
   is fitted per cadence to the background pixels' residual (every pixel: a
   ridge is no outlier) and added to the model with the level, if it predicts
   held-out background pixels better than the level alone, by more than
   ``_CV_GAIN`` (10 %) of their squared error (four folds of 3 x 3-pixel
   blocks, on up to 8 cadences per day). A surface fitted to noise predicts
   held-out pixels worse, so a smooth field keeps the level alone. The
   surface's terms are orthonormal over the background pixels, so each
   coefficient's noise is the pixels' ``FLUX_ERR**2`` and its variance at any
   pixel, or over an aperture, follows directly (`Fusion.variance`).

6. **Structure the model misses** ``s_S^2(t)``: the background pixels'
   scatter about the cadence's level (or, with a surface, their
   cross-validated error: the surface is used at pixels it was not fitted to)
   beyond their noise, day by day, where significant. The fused variance is
   never below ``s_S^2`` plus the fused level's variance (`Fusion.variance`).
   Structure that changes across the TPF (a shadow edge's bright side under
   the aperture) can be larger at the aperture than the faint half shows: on
   cadences without a surface, ``s_S^2`` is at least what the background
   pixels within two pixels of the grown aperture show about the level as the
   mean product of each pixel's residual at one cadence and the next, day by
   day, where above 3 sigma of its noise. Structure the model misses changes
   slowly and stays in that product; noise, white in time, drops out however
   well ``FLUX_ERR`` describes it. Their scatter itself is not used: a small
   excess of their noise over their ``FLUX_ERR`` (a faint wing, a hot pixel)
   would pass for structure and become a floor far above the model's error.

Where the model is good (``s_M`` small) the weight goes to zero and the
local noise is not added; where it misses structure the local level and
surface take over. The aperture never enters the estimate, so the target's
own signal (transits, variability) is not touched.
"""

from __future__ import annotations

import functools
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
#: Terms of the surface fitted to what the model missed, by degree: level, plane, quadratic.
_TERMS = (1, 3, 6)
#: Cadences sampled per chunk, and at most in all, for the cross-validation that picks
#: the surface's degree.
_CV_PER_CHUNK, _CV_SAMPLE = 8, 2048
#: Relative drop of the cross-validated error that a higher degree must bring.
_CV_GAIN = 0.1
#: Width [px] of the ring around the grown aperture whose shared structure the errors cover.
_RING = 2


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


@dataclass
class Fusion:
    """Per-cadence result of `fuse` [e-/s per pixel].

    Attributes
    ----------
    offset : ndarray, shape (ntime,)
        ``w * local``: the level added to the model at every pixel.
    offset_var : ndarray, shape (ntime,)
        Variance of the fused level, ``w**2 local_err**2 + (1 - w)**2
        model_err**2`` (the local noise that came in and the model's measured
        level error that remains).
    local, local_err : ndarray, shape (ntime,)
        The local estimate ``L`` and its 1-sigma error.
    model_err : ndarray, shape (ntime,)
        The model's error of the level at this TPF, measured from the data per
        chunk and spread over its cadences as the model's quoted error runs; the
        fusion replaces ``model_err**2`` of the model's variance by ``offset_var``.
    shape_var : ndarray, shape (ntime,)
        The model's error variance across the TPF beyond the level (and beyond
        the surface, where one was fitted), per pixel, measured from the data (0
        where it is not significant): structure the model misses (a glint ridge,
        a shadow edge), over the background pixels, or if larger, from one cadence to
        the next over those next to the aperture. The fused variance is never below
        it (`variance`).
    weight : ndarray, shape (ntime,)
        ``w``: 0 where the model drove the cadence, 1 where the local estimate did.
    pixels : ndarray of bool, shape (nrow, ncol)
        The background pixels used.
    degree : ndarray of int, shape (ntime,)
        Degree of the surface fitted to what the model missed across the TPF: 0
        (a level only), 1 (a plane) or 2 (a quadratic), chosen day by day by
        cross-validation over the background pixels.
    surface_coef : ndarray, shape (ntime, 5)
        Coefficients of the surface's non-constant terms (0 beyond ``degree``).
    surface_basis : ndarray, shape (5, nrow, ncol)
        The surface's terms (plane, then quadratic), orthonormal over the
        background pixels and orthogonal to a level there.
    surface_var : ndarray, shape (ntime,)
        Noise variance of each coefficient (the pixels' mean ``FLUX_ERR**2``).
    """

    offset: np.ndarray
    offset_var: np.ndarray
    local: np.ndarray
    local_err: np.ndarray
    model_err: np.ndarray
    shape_var: np.ndarray
    weight: np.ndarray
    pixels: np.ndarray
    degree: np.ndarray
    surface_coef: np.ndarray
    surface_basis: np.ndarray
    surface_var: np.ndarray

    @property
    def has_surface(self) -> bool:
        """Whether a plane or quadratic was fitted on any cadence."""
        return bool(self.degree.any())

    def correction(self, dtype=np.float64) -> np.ndarray:
        """What the fusion adds to the model, per cadence and pixel [e-/s].

        Returns
        -------
        ndarray, shape (ntime, nrow, ncol)
        """
        out = np.zeros((len(self.offset),) + self.pixels.shape, dtype=dtype)
        return self.add_to(out)

    @_one_blas_thread
    def add_to(self, array: np.ndarray, sign: float = 1.0) -> np.ndarray:
        """Add ``sign`` times the fusion's correction to ``array`` in place, and return it.

        Parameters
        ----------
        array : ndarray, shape (ntime, nrow, ncol)
        sign : float
            1 to add (the fused model), -1 to subtract (the corrected flux).
        """
        offset = (sign * self.offset).astype(array.dtype)
        rows = np.flatnonzero(offset)
        if rows.size > len(offset) // 2:  # most cadences: one pass over the array
            _add_per_row(array, offset)
        elif rows.size:  # the days the local level took over
            array[rows] += offset[rows].reshape((-1,) + (1,) * (array.ndim - 1))
        rows = np.flatnonzero(self._with_surface())
        if rows.size:  # the surface, on the cadences that have one
            nterm = len(self.surface_basis)
            surface = self.surface_coef[rows] @ self.surface_basis.reshape(nterm, -1)
            array[rows] += (sign * surface).reshape((-1,) + array.shape[1:]).astype(array.dtype)
        return array

    def aperture_correction(self, aperture: np.ndarray) -> np.ndarray:
        """What the fusion adds to the model summed over ``aperture``, per cadence [e-/s]."""
        aperture = np.asarray(aperture, dtype=bool)
        summed = self.surface_basis[:, aperture].sum(axis=1)
        return aperture.sum() * self.offset + self.surface_coef @ summed

    def changed(self) -> np.ndarray:
        """Indices of the cadences whose model or variance the fusion changes."""
        return np.flatnonzero(
            (self.offset != 0)
            | (self.offset_var > 0)
            | (self.model_err > 0)
            | (self.shape_var > 0)
            | (self.surface_var > 0)
            | self._with_surface()
        )

    def _with_surface(self) -> np.ndarray:
        """Whether each cadence has a surface (a coefficient not 0), shape (ntime,)."""
        # Column by column: numpy reduces a long axis much faster than many short rows.
        return np.logical_or.reduce([column != 0 for column in self.surface_coef.T])

    @_one_blas_thread
    def variance(
        self,
        model_var,
        aperture: np.ndarray | None = None,
        out: np.ndarray | None = None,
        rows: np.ndarray | None = None,
    ) -> np.ndarray:
        """The fused background's variance, from the model's quoted variance.

        The model's level error the data measured, ``model_err**2`` (at most
        what the model quotes at that cadence and pixel), is replaced by the
        fused level's: the local noise that came in, ``weight**2 local_err**2``,
        and the part ``(1 - weight)**2`` of the level error that is kept (so
        ``offset_var`` where the model quotes at least ``model_err**2``); the
        surface's noise is added. A level is common to all pixels, so for a sum
        over an aperture of ``n`` pixels it counts ``n**2`` times. The result is
        never below ``shape_var`` plus the fused level's variance (plus the
        surface's noise): what the data say is left of the model's error after
        fusion (the structure it misses is taken as correlated over an
        aperture, ``n**2`` times as well).

        Parameters
        ----------
        model_var : ndarray, shape (ntime, nrow, ncol), or (ntime,) with ``aperture``
            The model's quoted variance per pixel (or of the sum over
            ``aperture``) [(e-/s)**2].
        aperture : ndarray of bool, shape (nrow, ncol), optional
            The pixels summed in ``model_var``.
        out : ndarray, optional
            Where to write the result (may be ``model_var`` itself).
        rows : ndarray of int, optional
            The cadences ``model_var`` holds (e.g. `changed`); default all.

        Returns
        -------
        ndarray, the shape of ``model_var``
        """
        model_var = np.asarray(model_var)
        take = slice(None) if rows is None else np.asarray(rows)
        scale = 1.0 if aperture is None else float(np.sum(aperture)) ** 2
        if out is None:
            out = model_var.copy()
        elif out is not model_var:
            np.copyto(out, model_var)
        level = scale * self.model_err[take] ** 2
        kept = (1 - self.weight[take]) ** 2
        shape = scale * self.shape_var[take]
        # The fused level's variance: the local noise that came in, and what is kept of
        # the model's level error, no more than the model quoted (var) at that cadence:
        # max(var - level, shape) + kept min(var, level) + noise.
        noise = np.maximum(scale * self.offset_var[take] - kept * level, 0)
        # Per cadence, a line in var where var is at most the level error at every pixel
        # (kept var + shape + noise), or at least the level error plus the structure
        # (var - level + kept level + noise; so var + noise where both are 0: a variance
        # is not negative); the formula itself on the cadences between.
        flat = out.reshape(len(out), -1)
        check = np.flatnonzero((level > 0) | (shape > 0))
        below = np.zeros(len(flat), dtype=bool)
        below[check] = _row_reduce(np.maximum, flat, check) <= level[check]
        rest = check[~below[check]]
        mixed = rest[_row_reduce(np.minimum, flat, rest) - level[rest] < shape[rest]]
        fixed = _capped(flat[mixed], level[mixed], kept[mixed], shape[mixed], noise[mixed])
        _scale_rows(out, kept, np.flatnonzero(below & (kept != 1)))
        _add_per_row(out, np.where(below, shape + noise, noise - (1 - kept) * level))
        out[mixed] = fixed.reshape((-1,) + out.shape[1:])
        local = np.flatnonzero(self.surface_var[take])
        if local.size:  # the surface's noise, on the cadences that have one
            extra = self._surface_variance(local if rows is None else take[local], aperture)
            if out.ndim == 1 and aperture is None:
                extra = extra.mean(axis=1)  # a typical pixel
            out[local] += extra.reshape((-1,) + out.shape[1:]).astype(out.dtype)
        return out

    def _surface_variance(self, rows: np.ndarray, aperture: np.ndarray | None) -> np.ndarray:
        """Variance the surface adds at cadences ``rows``, per pixel (or of the aperture sum)."""
        basis = self.surface_basis.reshape(len(self.surface_basis), -1)
        if aperture is not None:
            basis = basis[:, np.asarray(aperture, dtype=bool).ravel()].sum(axis=1, keepdims=True)
        # Per degree, the sum of the squared terms it uses (the plane's 2, all 5); from the
        # coefficients, as a window's smoothing spreads them next to a surface's day.
        used = np.cumsum(basis**2, axis=0)[[0, 1, 4]]
        used[0] = 0.0
        degree = np.where(np.any(self.surface_coef[rows, 2:], axis=1), 2, 1)
        return self.surface_var[rows, None] * used[degree]


def _row_reduce(ufunc: np.ufunc, flat: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """``ufunc`` reduced over each of ``flat``'s rows ``rows`` (over all rows, then
    taken, where they are most: no copy)."""
    if 2 * rows.size > len(flat):
        return ufunc.reduce(flat, axis=1)[rows]
    return ufunc.reduce(flat[rows], axis=1)


def _scale_rows(array: np.ndarray, factors: np.ndarray, rows: np.ndarray) -> None:
    """``array[rows] *= factors[rows]`` (one factor per row), in place; one pass over
    every row where ``rows`` are most."""
    if 2 * rows.size > len(array):
        every = np.ones(len(array), dtype=array.dtype)
        every[rows] = factors[rows]
        _per_row(np.multiply, array, every, array)
    elif rows.size:
        array[rows] *= factors[rows].astype(array.dtype).reshape((-1,) + (1,) * (array.ndim - 1))


def _capped(
    var: np.ndarray, level: np.ndarray, kept: np.ndarray, shape: np.ndarray, noise: np.ndarray
) -> np.ndarray:
    """``max(var - level, shape) + kept min(var, level) + noise`` with one ``level``,
    ``kept``, ``shape`` and ``noise`` per row of ``var`` (nrow, npix), in its dtype."""
    added = noise + kept * level
    level, kept, shape, added = (a.astype(var.dtype)[:, None] for a in (level, kept, shape, added))
    d = var - level
    below = np.minimum(d, 0)
    np.maximum(d, shape, out=d)
    d += np.multiply(kept, below, out=below)
    d += added
    return d


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
    from the row's mean, or not finite, are dropped (set to 0: ``d`` is overwritten).
    Returns an array of shape (3, nrow) (`_clipped_level` turns it into the mean and
    the scatter).

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
        d[~finite] = 0.0
        count = np.add.reduce(finite, axis=1, dtype=np.int32)
        total = d @ ones
    with np.errstate(invalid="ignore", divide="ignore"):
        first = total / np.maximum(count, 1)
    distance = np.subtract(d, first[:, None].astype(d.dtype))
    dropped = np.abs(distance, out=distance) > limit
    if finite is not None:
        dropped |= ~finite
    drop = np.flatnonzero(dropped)
    np.put(d, drop, 0.0)
    n = d.shape[1] - np.bincount(drop // d.shape[1], minlength=len(d))
    return np.array([n, d @ ones, np.einsum("ij,ij->i", d, d)])


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


def _finite_mean_square(err: np.ndarray, where: np.ndarray) -> np.ndarray:
    """Per row of ``err`` (nrow, npix), the mean of ``err**2`` over the pixels ``where``
    (bool) whose value is finite (NaN if none is)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN rows stay NaN
        return np.nanmean(err[:, where].astype(float) ** 2, axis=1)


@functools.lru_cache(maxsize=8)
def _surface_design(shape: tuple[int, int]) -> np.ndarray:
    """Terms of a quadratic surface over a (nrow, ncol) image: 1, y, x, y**2, x**2, x*y.

    Coordinates run from -1 to 1 across the image. Returns shape (nrow * ncol, 6),
    read-only (cached per shape).
    """
    y, x = (np.linspace(-1, 1, size) for size in shape)
    y, x = (a.ravel() for a in np.meshgrid(y, x, indexing="ij"))
    design = np.column_stack([np.ones_like(y), y, x, y**2, x**2, x * y])
    design.flags.writeable = False
    return design


def _surface_basis(design: np.ndarray, where: np.ndarray) -> tuple[np.ndarray, int]:
    """The design's terms made orthonormal over the pixels ``where``, and the top degree.

    Gram-Schmidt in the design's order (a QR of its rows ``where``), so the first
    1, 3 and 6 columns span the level, the plane and the quadratic. The top degree
    is the highest whose terms the pixels constrain (2 unless they are few or lie
    on a line). Returns the basis at every pixel, shape (npix, 6).
    """
    r = np.linalg.qr(design[where], mode="r")
    top = _top_degree(r)
    basis = np.zeros_like(design)
    p = _TERMS[top]
    basis[:, :p] = design[:, :p] @ np.linalg.inv(r[:p, :p])
    if where.size < 2 * _TERMS[top] + 4:  # too few pixels to tell a surface from noise
        top = 0
    return basis, top


def _cross_validate(
    d: np.ndarray, design: np.ndarray, where: np.ndarray, ncol: int, top: int
) -> np.ndarray:
    """Squared error predicting held-out background pixels, per degree and cadence.

    The background pixels are split into four folds of 3 x 3-pixel blocks spread
    over the TPF (so the test pixels are not the training pixels' neighbours);
    each fold is predicted from the others by a fit of each degree. ``d``
    (ncadence, npix) is the residual at the pixels ``where`` (NaN counts as 0).
    Returns shape (3, ncadence); degrees above ``top`` are infinite.
    """
    d = np.nan_to_num(d)
    row, col = np.divmod(where, ncol)
    fold = ((row // 3) * 2 + (col // 3) * 3) % 4
    tests = [fold == k for k in range(4) if np.any(fold == k)]
    fits = [np.linalg.qr(design[where[~test]]) for test in tests]
    top = min([top] + [_top_degree(r) for _, r in fits])
    error = np.full((len(_TERMS), len(d)), np.inf)
    error[: top + 1] = 0.0
    p = _TERMS[top]
    for test, (q, r) in zip(tests, fits, strict=True):
        q, r = q[:, :p], r[:p, :p]
        coef = d[:, ~test] @ q
        g = design[where[test], :p] @ np.linalg.inv(r)
        for deg in range(top + 1):
            m = _TERMS[deg]
            miss = d[:, test] - coef[:, :m] @ g[:, :m].T
            error[deg] += np.einsum("ij,ij->i", miss, miss)
    return error


def _choose_degree(cv: np.ndarray, chunk_of: np.ndarray, size: int, span: int) -> np.ndarray:
    """Per cadence, the surface degree its chunk's cross-validation chose.

    A higher degree is taken only where it lowers the chunk's summed
    cross-validated error by more than ``_CV_GAIN`` relative to the degree below
    it chose, and where the chunk has at least 4 sampled cadences (a short last
    chunk takes the degree of the one before).
    """
    nchunk = -(-size // span)
    sums = np.array([np.bincount(chunk_of, weights=e, minlength=nchunk) for e in cv])
    best = np.zeros(nchunk, dtype=np.int8)
    for deg in range(1, len(_TERMS)):
        with np.errstate(invalid="ignore"):
            better = sums[deg] < (1 - _CV_GAIN) * sums[best, np.arange(nchunk)]
        best[better] = deg
    sampled = np.bincount(chunk_of, minlength=nchunk)
    few = sampled < 4
    best[few] = 0
    if nchunk > 1 and few[-1] and sampled[-1]:  # a short last chunk: as the one before
        best[-1] = best[-2]
    return np.repeat(best, span)[:size]


def _top_degree(r: np.ndarray) -> int:
    """Highest degree whose terms a design's QR factor ``r`` constrains."""
    diagonal = np.abs(np.diag(r))
    constrained = diagonal > 1e-6 * diagonal[0]
    return max(d for d, p in enumerate(_TERMS) if p <= diagonal.size and constrained[:p].all())


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


def _fit_surface(
    background: np.ndarray,
    where: np.ndarray,
    level: np.ndarray,
    shape: tuple[int, int],
    structured: np.ndarray,
    span: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The surface's degree and coefficients per cadence (see `fuse`).

    Parameters
    ----------
    background : ndarray, shape (ncadence, where.size)
        The residual at the background pixels, on the cadences used.
    where : ndarray of int
        The background pixels (flat indices).
    level : ndarray, shape (where.size,)
        Each background pixel's median residual.
    shape : (int, int)
        The TPF's image shape.
    structured : ndarray of bool, shape (ncadence,)
        Cadences whose day shows structure beyond a level; only those may get a surface.
    span : int
        Cadences per day (chunk).

    Returns
    -------
    degree : ndarray of int8, shape (ncadence,)
    coef : ndarray, shape (ncadence, 6)
        The coefficients of the orthonormal terms (0 beyond the degree).
    cv_spread : ndarray, shape (ncadence,)
        Cross-validated squared error per pixel at the sampled cadences, NaN elsewhere.
    basis : ndarray, shape (nrow * ncol, 6)
    """
    design = _surface_design(shape)
    basis, top = _surface_basis(design, where)
    ncadence = len(background)
    degree = np.zeros(ncadence, dtype=np.int8)
    coef = np.zeros((ncadence, _TERMS[-1]))
    cv_spread = np.full(ncadence, np.nan)
    if top == 0 or not structured.any():
        return degree, coef, cv_spread, basis
    step = max(span // _CV_PER_CHUNK, -(-int(structured.sum()) // _CV_SAMPLE), 1)
    candidates = np.flatnonzero(structured)
    picked = candidates[(candidates % step) == 0]
    if picked.size == 0:
        return degree, coef, cv_spread, basis
    cv = _cross_validate(background[picked] - level, design, where, shape[1], top)
    degree = _choose_degree(cv, picked // span, ncadence, span)
    cv_spread[picked] = cv[degree[picked], np.arange(picked.size)] / where.size
    fitted = np.flatnonzero(degree)
    for first in range(0, fitted.size, _BLOCK):  # from every pixel: a ridge is no outlier
        block = fitted[first : first + _BLOCK]
        d = np.subtract(background[_rows(block)], level)
        coef[block] = np.nan_to_num(d) @ basis[where]
    coef[degree == 1, _TERMS[1] :] = 0.0  # a plane's days keep the plane's terms only
    return degree, coef, cv_spread, basis


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
    span = chunk * max(window, 1)
    # Blocks of cadences small enough to stay in the CPU's cache through the passes.
    sums, noise = np.empty((3, valid.size)), np.empty(valid.size)
    quoted = None if model_var is None else np.full(ntime, np.nan)
    flat_model = None if model_var is None else np.reshape(model_var, (ntime, -1))
    weights = pixels.ravel().astype(np.float32) / where.size
    # The residual at the background pixels, kept for the surface's fits.
    background = np.empty((valid.size, where.size), dtype=np.float32)
    for first in range(0, valid.size, _BLOCK):
        rows = _rows(valid[first : first + _BLOCK])
        block = residual.take(rows, where, out=background[first : first + _BLOCK])
        d = np.subtract(block, level, dtype=np.float32)
        sums[:, first : first + _BLOCK] = _clipped_sums(d, clip * max(sigma, 1e-12))
        noise[first : first + _BLOCK] = _mean_square(flat_err[rows], weights)
        if quoted is not None:
            block = flat_model[rows].astype(np.float32, copy=False)
            quoted[valid[first : first + _BLOCK]] = (block @ weights).astype(float)
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
    degree, coef, cv_spread, basis = _fit_surface(
        background, where, level, median.shape, structured, span
    )
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
            near = np.take(background, ring, axis=1, mode="clip") - level[ring]
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
        if quoted is not None:
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
    )
