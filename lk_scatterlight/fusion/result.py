"""`Fusion`: the per-cadence result of `~lk_scatterlight.fusion.fuse`, and how it
changes the model and its variance.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from .rows import _add_rows, _one_blas_thread, _row_reduce, _rows_at_most, _scale_rows

#: A gap (`Fusion.variance`) no larger than this fraction of the fused variance's floor
#: (structure plus local noise) is left out.
_GAP_TOLERANCE = 0.01


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
    quoted_sum : ndarray, shape (ntime,), or None
        The model's quoted variance given to `fuse` summed over the TPF's pixels,
        on the cadences with a level error (NaN elsewhere; None without it): pass
        it to `variance` with that variance, to spare searching each cadence for
        its largest value.
    quoted_level : ndarray, shape (ntime,), or None
        The model's quoted variance given to `fuse`, mean over the background pixels,
        on the cadences with a level error (NaN elsewhere; None without it). A pixel
        (or aperture) where the model quotes less shares that much less of the level
        error measured there (`variance`).
    reach : ndarray, shape (nrow, ncol), or None
        The fraction (0..1) of the fused level carried to each pixel, where the
        model's error was found to change with its own structure (a shadow edge whose
        other side errs in the opposite sense: 0 there); None: 1 everywhere. Where it
        is below 1 the variance moves by as much towards the model's own (`variance`).
    reach_quoted : ndarray, shape (nrow, ncol), or None
        With ``reach``: the model's quoted error per pixel (median over time), which
        shares an aperture's quoted variance between its reached and unreached pixels.
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
    quoted_sum: np.ndarray | None = None
    quoted_level: np.ndarray | None = None
    reach: np.ndarray | None = None
    reach_quoted: np.ndarray | None = None

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
        if self.reach is None:
            # Most cadences: one pass over the array; else the days the local level took over.
            _add_rows(array, offset)
        else:  # the level as far as it reaches each pixel
            rows = np.flatnonzero(offset)
            array[rows] += offset[rows, None, None] * self.reach.astype(array.dtype)
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
        reached = aperture.sum() if self.reach is None else self.reach[aperture].sum()
        return reached * self.offset + self.surface_coef @ summed

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
        row_sums: np.ndarray | None = None,
    ) -> np.ndarray:
        """The fused background's variance, from the model's quoted variance.

        The model's error is taken to share the level error the data measured,
        ``model_err**2``, as far as it quotes it (``min(var, model_err**2)``),
        plus a difference the fused level does not remove: at least what the
        model quotes beyond the level error, ``shape_var`` (what the data say is
        left: the structure it misses), and, where the model quotes less than at
        the background pixels (``quoted_level``; without it, than the level
        error), the least difference between the two errors its quotes allow, up
        to the fused level's own error ``weight**2 model_err**2`` (a pixel the
        background pixels' level error does not reach, such as a shadow edge's
        other side, gets it from the fused level). To that come the part ``(1 -
        weight)**2`` of the shared level error that is kept, the local noise that
        came in, ``weight**2 local_err**2`` (so ``offset_var``, where the model
        quotes at least ``model_err**2``),
        and the surface's noise. A level is common to all pixels, so for a sum
        over an aperture of ``n`` pixels it counts ``n**2`` times (the structure
        too: it is taken as correlated over an aperture).

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
        row_sums : ndarray, shape (ntime,), optional
            Per pixel ``model_var`` (not negative) summed over each cadence's pixels,
            NaN where unknown (`quoted_sum`, when ``model_var`` is what `fuse` was
            given): where the sum is at most the level error, so is every pixel.
            Not used with ``aperture``.

        Returns
        -------
        ndarray, the shape of ``model_var``
        """
        model_var = np.asarray(model_var)
        if self.reach is not None and aperture is not None:
            return self._split_variance(model_var, aperture, out, rows)
        take = slice(None) if rows is None else np.asarray(rows)
        scale = 1.0 if aperture is None else float(np.sum(aperture)) ** 2
        # Where the level does not reach every pixel: the model's own quote, in part.
        reach = None if self.reach is None else self._reach_for(model_var)
        if reach is not None:
            blend = np.flatnonzero((self.weight[take] > 0) | (self.shape_var[take] > 0))
            own = np.array(model_var[blend], dtype=float)
        if out is None:
            out = model_var.copy()
        elif out is not model_var:
            np.copyto(out, model_var)
        level = scale * self.model_err[take] ** 2
        weight = self.weight[take]
        kept = (1 - weight) ** 2
        shape = scale * self.shape_var[take]
        # The local noise that came in with the fused level.
        noise = np.maximum(scale * self.offset_var[take] - kept * level, 0)
        # What the model quotes where the level error was measured (else the level error).
        reference = level.copy()
        if self.quoted_level is not None:
            quoted = scale * self.quoted_level[take]
            reference = np.where(np.isfinite(quoted) & (quoted > 0), quoted, level)
        # Per cadence, a line in var where the model quotes at least that and the level
        # error plus the structure at every pixel: var - level + kept level + noise (so
        # var + noise where both are 0: a variance is not negative), or where it quotes
        # at most the level error at every pixel and the gap nowhere exceeds the
        # structure: kept var + shape + noise; the formula (`_fused`) on the others.
        flat = out.reshape(len(out), -1)
        check = np.flatnonzero((level > 0) | (shape > 0))
        least = np.zeros(len(flat))
        least[check] = _row_reduce(np.minimum, flat, check)
        below = np.zeros(len(flat), dtype=bool)
        if row_sums is None or aperture is not None:
            below[check] = _row_reduce(np.maximum, flat, check) <= level[check]
        else:
            below[check] = _rows_at_most(flat, check, level[check], row_sums[take][check])
        # The largest gap of each cadence (at its smallest quote); one within
        # `_GAP_TOLERANCE` of the fused variance's floor is left out (it would change
        # the result by less than that), which spares the formula on most cadences.
        gap = np.square(np.minimum(np.sqrt(least) - np.sqrt(reference), 0))
        small = np.minimum(gap, weight**2 * level) <= shape + _GAP_TOLERANCE * (shape + noise)
        below &= small
        line = np.ones(len(flat), dtype=bool)  # and the cadences with neither: + noise
        line[check] = small[check] & (least[check] - level[check] >= shape[check])
        line &= ~below
        mixed = check[~(below[check] | line[check])]
        fixed = _fused(
            flat[mixed], level[mixed], reference[mixed], weight[mixed], shape[mixed], noise[mixed]
        )
        _scale_rows(out, kept, np.flatnonzero(below & (kept != 1)))
        _add_rows(
            out, np.where(below, shape + noise, np.where(line, noise - (1 - kept) * level, 0))
        )
        out[mixed] = fixed.reshape((-1,) + out.shape[1:])
        if reach is not None:
            out[blend] = self._reached(out[blend], own, reach)
        local = np.flatnonzero(self.surface_var[take])
        if local.size:  # the surface's noise, on the cadences that have one
            extra = self._surface_variance(local if rows is None else take[local], aperture)
            if out.ndim == 1 and aperture is None:
                extra = extra.mean(axis=1)  # a typical pixel
            out[local] += extra.reshape((-1,) + out.shape[1:]).astype(out.dtype)
        return out

    def _reached(self, fused, own, reach) -> np.ndarray:
        """The variance where the fused level reaches a fraction ``reach`` of a pixel:
        between ``fused`` (all of it) and the
        model's own quote ``own`` (the structure the background pixels show is theirs:
        where their level does not reach, neither does it); one error in part
        corrected, so their standard deviations mix."""
        alone = np.sqrt(np.maximum(own, 0))
        return np.square(reach * np.sqrt(np.asarray(fused, dtype=float)) + (1 - reach) * alone)

    def _reach_for(self, model_var: np.ndarray) -> np.ndarray:
        """`reach` as `variance` applies it to ``model_var`` per pixel: the map, or its
        mean over the TPF for one value per cadence (a typical pixel)."""
        if model_var.ndim == 1:
            return np.float64(self.reach.mean())
        return self.reach

    def _split_variance(self, model_var, aperture, out, rows) -> np.ndarray:
        """`variance` of an aperture sum part of which the fused level does not reach.

        The aperture's pixels reached by at least half the level and the others are
        taken as two independent parts, each fully correlated within, sharing the
        aperture's quoted variance as the model's quoted error per pixel
        (``reach_quoted``) does: the reached part gets the fused variance as an aperture
        of its own, the other the model's own quote.
        """
        aperture = np.asarray(aperture, dtype=bool)
        reached = aperture & (self.reach >= 0.5)
        rest = aperture & ~reached
        plain = dataclasses.replace(self, reach=None, reach_quoted=None)
        if not rest.any():
            return plain.variance(model_var, aperture, out, rows)
        error = np.ones(aperture.shape) if self.reach_quoted is None else self.reach_quoted
        error = np.nan_to_num(error)
        total = error[aperture].sum()
        part = error[reached].sum() / total if total > 0 else reached.sum() / aperture.sum()
        own = np.asarray(model_var, dtype=float)
        result = (1 - part) ** 2 * own
        if reached.any():
            result += plain.variance(part**2 * own, reached, rows=rows)
        if out is None:
            return result.astype(own.dtype if own.dtype.kind == "f" else float)
        out[...] = result
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


def _fused(
    var: np.ndarray,
    level: np.ndarray,
    reference: np.ndarray,
    weight: np.ndarray,
    shape: np.ndarray,
    noise: np.ndarray,
) -> np.ndarray:
    """The fused variance where the model quotes ``var`` (nrow, npix), with one
    ``level``, ``reference``, ``weight``, ``shape`` and ``noise`` per row, in ``var``'s
    dtype: ``max(var - level, shape, min(gap, weight**2 level)) + (1 - weight)**2
    min(var, level) + noise``.

    The model's error at a pixel shares the level error as far as its quote allows
    (``min(var, level)``, of which ``(1 - weight)**2`` is kept), plus a difference the
    fused level does not remove. That difference is at least the structure (``shape``)
    and what the model quotes beyond the level error; and where the model quotes less
    than where the level error was measured (``reference``), ``gap = (sqrt(var) -
    sqrt(reference))**2``, the least difference between the two errors its quotes
    allow: a pixel or aperture the background pixels' level error does not reach
    (a shadow edge's other side) gets that error from the fused level instead, up to
    all of it, ``weight**2 level``.
    """
    kept = (1 - weight) ** 2
    brought = weight**2 * level
    level, reference, brought, shape, kept, noise = (
        a.astype(var.dtype)[:, None] for a in (level, reference, brought, shape, kept, noise)
    )
    gap = np.sqrt(var) - np.sqrt(reference)
    np.minimum(gap, 0, out=gap)
    np.square(gap, out=gap)
    np.minimum(gap, brought, out=gap)
    d = var - level
    np.maximum(d, shape, out=d)
    np.maximum(d, gap, out=d)
    d += kept * np.minimum(var, level)
    d += noise
    return d
