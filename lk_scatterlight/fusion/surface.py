"""The surface fitted to what the model missed across a TPF: a plane or a
quadratic in row and column, its degree chosen day by day by cross-validation
over the background pixels (see `lk_scatterlight.fusion`, step 5).
"""

from __future__ import annotations

import functools

import numpy as np

from .local import _BLOCK, _rows

#: Terms of the surface fitted to what the model missed, by degree: level, plane, quadratic.
_TERMS = (1, 3, 6)


#: Cadences sampled per chunk, and at most in all, for the cross-validation that picks
#: the surface's degree.
_CV_PER_CHUNK, _CV_SAMPLE = 8, 2048


#: Relative drop of the cross-validated error that a higher degree must bring.
_CV_GAIN = 0.1


#: Largest leverage of a surface at any pixel of the TPF, in units of its largest at a
#: background pixel: 4 lets the surface's noise at any pixel reach twice (in standard
#: deviation) its worst at the pixels it was fitted to, not more (no far extrapolation).
_MAX_LEVERAGE = 4.0


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
    on a line) and that does not extrapolate: its leverage (the sum of its squared
    orthonormal terms, which scales the surface's noise) is nowhere on the TPF above
    ``_MAX_LEVERAGE`` times its largest at the pixels ``where``. Background pixels
    on one side of a TPF (the faint side of a shadow edge) would otherwise carry a
    plane fitted to what the model missed near the edge across to the other side.
    Returns the basis at every pixel, shape (npix, 6).
    """
    r = np.linalg.qr(design[where], mode="r")
    top = _top_degree(r)
    basis = np.zeros_like(design)
    p = _TERMS[top]
    basis[:, :p] = design[:, :p] @ np.linalg.inv(r[:p, :p])
    if where.size < 2 * _TERMS[top] + 4:  # too few pixels to tell a surface from noise
        top = 0
    while top > 0:
        leverage = np.square(basis[:, : _TERMS[top]]).sum(axis=1)
        if leverage.max() <= _MAX_LEVERAGE * leverage[where].max():
            break
        top -= 1
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


def _fit_surface(
    background: np.ndarray,
    where: np.ndarray,
    shape: tuple[int, int],
    structured: np.ndarray,
    span: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The surface's degree and coefficients per cadence (see `fuse`).

    Parameters
    ----------
    background : ndarray, shape (ncadence, where.size)
        The residual at the background pixels about each one's median, on the
        cadences used.
    where : ndarray of int
        The background pixels (flat indices).
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
    cv = _cross_validate(background[picked], design, where, shape[1], top)
    degree = _choose_degree(cv, picked // span, ncadence, span)
    cv_spread[picked] = cv[degree[picked], np.arange(picked.size)] / where.size
    fitted = np.flatnonzero(degree)
    for first in range(0, fitted.size, _BLOCK):  # from every pixel: a ridge is no outlier
        block = fitted[first : first + _BLOCK]
        coef[block] = np.nan_to_num(background[_rows(block)]) @ basis[where]
    coef[degree == 1, _TERMS[1] :] = 0.0  # a plane's days keep the plane's terms only
    return degree, coef, cv_spread, basis
