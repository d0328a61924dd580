"""Rendering the synthetic FFIs' stars: the two-Gaussian PSF, saturation bleed, smear."""

from __future__ import annotations

import numpy as np

__all__ = ["PSF_CORE_SIGMA", "PSF_WING_SIGMA", "PSF_WING_FRACTION"]

#: PSF: a pixel-integrated sum of two circular Gaussians [px] and the wing's flux fraction.
PSF_CORE_SIGMA, PSF_WING_SIGMA, PSF_WING_FRACTION = 0.9, 3.0, 0.2
_STAMP_RADII = (4, 8, 16, 32, 64)  # [px] stamp half-widths used to render stars
_PSF_FLOOR = 0.01  # [e-/s] stamps reach where the PSF wing falls below this
_STAR_MARGIN = 8  # [px] stars are placed up to this far outside the science area


def _pixel_gauss(offset: np.ndarray, sigma: float) -> np.ndarray:
    """A unit 1-D Gaussian integrated over pixels whose centres are ``offset`` [px] away."""
    from scipy.special import erf

    s = np.sqrt(2.0) * sigma
    return 0.5 * (erf((offset + 0.5) / s) - erf((offset - 0.5) / s))


def _render_stars(row: np.ndarray, column: np.ndarray, flux: np.ndarray, shape) -> np.ndarray:
    """Render stars with the two-Gaussian PSF.

    Parameters
    ----------
    row, column : ndarray of float, shape (nstar,)
        0-based array coordinates of the star centres (pixel ``i`` spans i-0.5..i+0.5).
    flux : ndarray of float, shape (nstar,)
        Total flux [e-/s].
    shape : (int, int)

    Returns
    -------
    image : ndarray of float64, shape ``shape`` [e-/s per pixel]
    """
    pad = _STAMP_RADII[-1] + _STAR_MARGIN + 1
    nr, nc = shape[0] + 2 * pad, shape[1] + 2 * pad
    canvas = np.zeros(nr * nc)
    # Stamp size: out to where the wing drops below _PSF_FLOOR (at least 3 core sigmas).
    wing_peak = flux * PSF_WING_FRACTION / (2 * np.pi * PSF_WING_SIGMA**2)
    need = PSF_WING_SIGMA * np.sqrt(2 * np.log(np.maximum(wing_peak / _PSF_FLOOR, 1.0)))
    need = np.maximum(need, 3 * PSF_CORE_SIGMA)
    size_class = np.minimum(np.searchsorted(_STAMP_RADII, need), len(_STAMP_RADII) - 1)
    for k, radius in enumerate(_STAMP_RADII):
        members = np.nonzero(size_class == k)[0]
        offsets = np.arange(-radius, radius + 1)
        chunk = max(1, 4_000_000 // offsets.size**2)
        for start in range(0, members.size, chunk):
            sel = members[start : start + chunk]
            r0, c0 = np.rint(row[sel]).astype(np.int64), np.rint(column[sel]).astype(np.int64)
            pr, pc = r0[:, None] + offsets, c0[:, None] + offsets  # (n, m) pixel indices
            dr, dc = pr - row[sel, None], pc - column[sel, None]
            core = np.einsum(
                "ni,nj->nij", _pixel_gauss(dr, PSF_CORE_SIGMA), _pixel_gauss(dc, PSF_CORE_SIGMA)
            )
            wing = np.einsum(
                "ni,nj->nij", _pixel_gauss(dr, PSF_WING_SIGMA), _pixel_gauss(dc, PSF_WING_SIGMA)
            )
            stamp = flux[sel, None, None] * (
                (1 - PSF_WING_FRACTION) * core + PSF_WING_FRACTION * wing
            )
            flat = (pr + pad)[:, :, None] * nc + (pc + pad)[:, None, :]
            canvas += np.bincount(flat.ravel(), weights=stamp.ravel(), minlength=canvas.size)
    return canvas.reshape(nr, nc)[pad:-pad, pad:-pad]


def _spill(column: np.ndarray, start: int, step: int, charge: float, level: float) -> float:
    """Move ``charge`` into pixels from ``start`` in direction ``step``, filling each to
    ``level``; return what fell off the end of the column."""
    k = start
    while charge > 0 and 0 <= k < column.size:
        room = level - column[k]
        if room > 0:
            if room <= charge:
                column[k] = level
                charge -= room
            else:
                column[k] += charge
                charge = 0.0
        k += step
    return charge


def _bleed(image: np.ndarray, level: float) -> np.ndarray:
    """Clip ``image`` at ``level`` and spread the excess charge up and down each column.

    Charge-conserving (except what bleeds off the edge of the array): the excess
    of each contiguous saturated run is split equally between the pixels above
    and below it, each filled to ``level`` in turn. Modifies ``image`` in place.

    Returns
    -------
    saturated : tuple of ndarray
        ``np.nonzero`` indices (rows, columns) of the pixels at ``level``.
    """
    for c in np.nonzero((image > level).any(axis=0))[0]:
        col = image[:, c].astype(np.float64)
        over = np.nonzero(col > level)[0]
        for run in np.split(over, np.nonzero(np.diff(over) > 1)[0] + 1):
            excess = float((col[run] - level).sum())
            col[run] = level
            left = _spill(col, run[0] - 1, -1, excess / 2, level)
            left = _spill(col, run[-1] + 1, +1, excess / 2 + left, level)
            _spill(col, run[0] - 1, -1, left, level)
        image[:, c] = col
    return np.nonzero(image >= level)


def _smear_shift(image: np.ndarray, start, stop, nstep: int) -> np.ndarray:
    """Average of ``image`` shifted along the line from ``start`` to ``stop`` [px (row, col)]."""
    from scipy import ndimage

    out = np.zeros_like(image)
    for f in np.linspace(0.0, 1.0, nstep):
        shift = (1 - f) * np.asarray(start, float) + f * np.asarray(stop, float)
        out += ndimage.shift(image, shift, order=1, mode="constant", cval=0.0)
    out /= nstep
    return out
