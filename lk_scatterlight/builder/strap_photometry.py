"""Photometry of the CCD strap columns against their unmasked neighbours.

The strap columns (`lk_scatterlight.straps`, TESS Instrument Handbook Table
A.3) respond a few percent more to diffuse light than their neighbours. The
builder measures that response: `strap_geometry` picks the measurable straps
and reference columns a few pixels away on either side, `flatten_straps`
removes the strap pattern from the static scene before stars are masked,
`strap_rows` / `strap_sums` accumulate, frame by frame, the least-squares sums
``sum(strap * ref)`` and ``sum(ref**2)`` whose ratio is each strap's response.
Columns are 1-based CCD columns (science columns 45..2092).
"""

from __future__ import annotations

import logging

import numpy as np

from ..ccd import SCIENCE_COLUMNS

__all__ = [
    "strap_columns",
    "strap_geometry",
    "flatten_straps",
    "strap_rows",
    "strap_sums",
]

log = logging.getLogger(__name__)


def strap_columns() -> np.ndarray:
    from ..straps import STRAP_CCD_COLUMNS

    return np.asarray(STRAP_CCD_COLUMNS, dtype=int)


def strap_geometry(straps: np.ndarray):
    """Measurable strap columns and the reference columns of each.

    References are the two nearest non-strap columns on each side that do not
    touch a strap column (straps come in adjacent pairs), so the reference sees
    the same light without the strap's extra response.

    Returns
    -------
    columns : ndarray of int, shape (n,)
        CCD columns (1-based) of the straps with references on both sides.
    reference : ndarray of int, shape (n, 4)
        0-based science-array indices of their reference columns.
    """
    first, last = SCIENCE_COLUMNS
    strap_set = set(straps.tolist())
    unusable = strap_set | {c + k for c in strap_set for k in (-1, 1)}
    columns, refs = [], []
    for column in straps.tolist():
        left = [c for c in range(column - 2, first - 1, -1) if c not in unusable][:2]
        right = [c for c in range(column + 2, last + 1) if c not in unusable][:2]
        if len(left) == 2 and len(right) == 2 and max(column - left[1], right[1] - column) <= 12:
            columns.append(column)
            refs.append(left + right)
    return np.asarray(columns, dtype=int), np.asarray(refs, dtype=int).reshape(-1, 4) - first


def flatten_straps(static: np.ndarray, strap_idx, ref_idx) -> np.ndarray:
    """The static scene with each strap column scaled to its references' median level.

    Straps raise the whole column's sky by a few percent; without this the source
    detection would take every strap column for a star.
    """
    if strap_idx.size == 0:
        return static
    flat = static.copy()
    strap_level = np.nanmedian(static[:, strap_idx], axis=0)
    ref_level = np.nanmedian(
        static[:, ref_idx.ravel()].reshape(static.shape[0], -1, 4), axis=(0, 2)
    )
    flat[:, strap_idx] *= ref_level / strap_level
    return flat


def strap_rows(clean, strap_idx, ref_idx) -> np.ndarray:
    """Rows where a strap and all its reference columns are free of sources, (2048, nstraps)."""
    return clean[:, ref_idx].all(axis=2) & clean[:, strap_idx]


def strap_sums(diff, clean, strap_idx, ref_idx, rows=None):
    """Per strap: sum(strap * reference) and sum(reference**2) over rows free of sources.

    ``reference`` is the mean of the strap's neighbour columns; the ratio of the
    two sums is the least-squares slope of strap against reference. ``rows``
    (from `strap_rows`, fixed for a build) saves recomputing the clean rows.
    """
    if strap_idx.size == 0:
        return np.zeros((0, 2))
    # One gather of the few columns involved, transposed so that every later step
    # runs along contiguous rows (2-D fancy indexing of columns is several times slower).
    columns, where = np.unique(np.r_[strap_idx, ref_idx.ravel()], return_inverse=True)
    block = np.take(diff, columns, axis=1).T.copy()  # (ncolumns, 2048)
    strap = block[where[: strap_idx.size]]  # (nstraps, 2048)
    ref_rows = where[strap_idx.size :].reshape(ref_idx.shape)
    ref = block[ref_rows[:, 0]]
    for k in range(1, ref_idx.shape[1]):
        ref += block[ref_rows[:, k]]
    ref /= np.float32(ref_idx.shape[1])  # the mean of the reference columns
    ok = strap_rows(clean, strap_idx, ref_idx) if rows is None else rows
    ok = np.array(ok.T, order="C")  # a copy
    ok &= np.isfinite(strap) & np.isfinite(ref)
    np.copyto(strap, 0, where=~ok)
    np.copyto(ref, 0, where=~ok)
    # Products of float32 are exact in float64: only the sums round.
    sr = np.einsum("ij,ij->i", strap, ref, dtype=np.float64)
    rr = np.einsum("ij,ij->i", ref, ref, dtype=np.float64)
    return np.stack([sr, rr], axis=1)
