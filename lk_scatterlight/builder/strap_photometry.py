"""Photometry of the CCD strap columns against their unmasked neighbours.

The strap columns (`lk_scatterlight.straps`, TESS Instrument Handbook Table
A.3) respond a few percent more to diffuse light than their neighbours. The
builder measures that response: `strap_geometry` picks the measurable straps
and reference columns a few pixels away on either side, `flatten_straps`
removes the strap pattern from the static scene before stars are masked,
`strap_rows` / `strap_sums` accumulate, frame by frame, the least-squares sums
``sum(strap * ref)`` and ``sum(ref**2)`` whose ratio is each strap's response.
Columns are 1-based CCD columns (science columns 45..2092).

The reference is the straight line through the mean of the two columns on each
side, at the strap column (`reference_weights`): the plain mean of the four
would sit up to 5 px off the strap (references sit unevenly around a group of
straps), so a gradient across the columns biased the response by up to 0.12 %
on the smooth simulated field. A line cannot follow structure that curves
between the references (a glint ridge or a shadow edge crossing the strap,
0.13 % RMS over the straps of the structured simulated field), so rows where
the four references depart from a straight line by more than
`CURVATURE_CLIP` robust standard deviations of that departure (measured per
strap and frame), and `CURVATURE_GROW` rows either side of them, are left out
of the sums; what is left of the bias is below the noise of the sums.
"""

from __future__ import annotations

import logging

import numpy as np
from scipy import ndimage

from ..ccd import SCIENCE_COLUMNS

__all__ = [
    "strap_columns",
    "strap_geometry",
    "reference_weights",
    "flatten_straps",
    "strap_rows",
    "strap_sums",
    "gather_columns",
    "curved_rows",
    "strap_response",
    "STRAP_ROW_BLOCKS",
]

log = logging.getLogger(__name__)

#: Rows whose references depart from a straight line by more than this many
#: robust standard deviations are left out of the strap sums ...
CURVATURE_CLIP = 3.0
#: ... together with this many rows on either side (the faint wings of a ridge).
CURVATURE_GROW = 6
#: Blocks of consecutive rows the builder keeps each frame's strap sums in
#: (`strap_sums`'s ``blocks``), so that `strap_response` sees the error that all
#: frames share (the static scene's noise on the strap and its references).
STRAP_ROW_BLOCKS = 8


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


def reference_weights(strap_idx, ref_idx) -> tuple[np.ndarray, np.ndarray]:
    """Weights of each strap's four reference columns (two left, then two right).

    Parameters
    ----------
    strap_idx : array of int, shape (n,)
        Strap columns (any common origin with ``ref_idx``).
    ref_idx : array of int, shape (n, 4)
        Their reference columns, as `strap_geometry` orders them.

    Returns
    -------
    line : ndarray of float32, shape (n, 4)
        The straight line through the mean of each side's two columns,
        evaluated at the strap column (exact for light that changes linearly
        across the columns).
    bend : ndarray of float32, shape (n, 4)
        The least-squares parabola through the four columns at the strap column,
        less ``line``: zero on any straight line, so it measures how much the
        light curves between the references.
    """
    pos = (np.asarray(ref_idx) - np.asarray(strap_idx)[:, None]).astype(float).reshape(-1, 4)
    left, right = pos[:, :2].mean(axis=1), pos[:, 2:].mean(axis=1)
    to_left = right / (right - left)
    line = np.repeat(np.stack([to_left, 1 - to_left], axis=1), 2, axis=1) / 2
    design = np.stack([np.ones_like(pos), pos, pos**2], axis=2)  # (n, 4, 3)
    parabola = np.linalg.pinv(design)[:, 0, :]
    return line.astype(np.float32), (parabola - line).astype(np.float32)


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


def strap_sums(diff, clean, strap_idx, ref_idx, rows=None, static_columns=None, blocks=None):
    """Per strap: sum(strap * reference) and sum(reference**2) over rows free of sources.

    ``reference`` is the neighbour columns' straight line at the strap
    (`reference_weights`); the ratio of the two sums is the least-squares slope
    of strap against reference. Rows where the references curve (`curved_rows`)
    are left out. ``rows`` (from `strap_rows`, fixed for a build) saves
    recomputing the clean rows. ``static_columns``, when given, is a static scene
    on the columns read (`gather_columns`, once per build), added to ``diff``
    there: the sums of the whole frame. ``blocks`` (an int, e.g.
    `STRAP_ROW_BLOCKS`), when given, splits the sums into that many blocks of
    consecutive rows: shape (nstraps, blocks, 2) instead of (nstraps, 2), whose
    sum over the blocks is the plain sums (`strap_response` measures the error
    the frames share from them).
    """
    if strap_idx.size == 0:
        return np.zeros((0, 2) if blocks is None else (0, blocks, 2))
    # One gather of the few columns involved, transposed so that every later step
    # runs along contiguous rows (2-D fancy indexing of columns is several times slower).
    columns, where = _columns(strap_idx, ref_idx)
    block = np.take(diff, columns, axis=1).T.copy()  # (ncolumns, 2048)
    if static_columns is not None:
        block += static_columns
    strap = block[where[: strap_idx.size]]  # (nstraps, 2048)
    ref_rows = where[strap_idx.size :].reshape(ref_idx.shape)
    line, bend = reference_weights(strap_idx, ref_idx)
    ref = line[:, :1] * block[ref_rows[:, 0]]
    curve = bend[:, :1] * block[ref_rows[:, 0]]
    for k in range(1, ref_idx.shape[1]):
        ref += line[:, k : k + 1] * block[ref_rows[:, k]]
        curve += bend[:, k : k + 1] * block[ref_rows[:, k]]
    ok = strap_rows(clean, strap_idx, ref_idx) if rows is None else rows
    ok = np.array(ok.T, order="C")  # a copy
    ok &= np.isfinite(strap) & np.isfinite(ref)
    ok &= ~curved_rows(curve, ok)
    np.copyto(strap, 0, where=~ok)
    np.copyto(ref, 0, where=~ok)
    if blocks is not None:
        return _block_sums(strap, ref, blocks)
    # Products of float32 are exact in float64: only the sums round.
    sr = np.einsum("ij,ij->i", strap, ref, dtype=np.float64)
    rr = np.einsum("ij,ij->i", ref, ref, dtype=np.float64)
    return np.stack([sr, rr], axis=1)


def _block_sums(strap: np.ndarray, ref: np.ndarray, blocks: int) -> np.ndarray:
    """``sum(strap * ref)`` and ``sum(ref**2)`` per block of consecutive rows,
    shape (nstraps, blocks, 2); rows left out are zero in both."""
    edges = np.linspace(0, strap.shape[1], blocks + 1).round().astype(int)
    products = np.stack([strap * ref.astype(np.float64), ref * ref.astype(np.float64)], -1)
    cumulative = np.zeros((strap.shape[0], strap.shape[1] + 1, 2))
    np.cumsum(products, axis=1, out=cumulative[:, 1:])
    return np.diff(cumulative[:, edges], axis=1)


def gather_columns(image: np.ndarray, strap_idx: np.ndarray, ref_idx: np.ndarray) -> np.ndarray:
    """``image`` on the columns `strap_sums` reads, one row per column.

    Parameters
    ----------
    image : ndarray, shape (nrows, ncols)
        E.g. the static scene, 0-based science columns.
    strap_idx, ref_idx : ndarray of int, shapes (nstraps,) and (nstraps, 4)
        The straps and their reference columns, as for `strap_sums`.

    Returns
    -------
    columns : ndarray, shape (ncolumns, nrows), C-contiguous
        The distinct columns in increasing order: `strap_sums`'s ``static_columns``.
    """
    return np.take(image, _columns(strap_idx, ref_idx)[0], axis=1).T.copy()


def _columns(strap_idx: np.ndarray, ref_idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The distinct columns of the straps and references, and where each one is among them."""
    return np.unique(np.r_[strap_idx, ref_idx.ravel()], return_inverse=True)


def curved_rows(curve: np.ndarray, ok: np.ndarray) -> np.ndarray:
    """Rows where the references curve more than their noise explains, per strap.

    Parameters
    ----------
    curve : ndarray of float32, shape (nstraps, nrows)
        The references' departure from a straight line (``bend`` of
        `reference_weights` applied to them).
    ok : ndarray of bool, shape (nstraps, nrows)
        The rows that count (sources masked).

    Returns
    -------
    curved : ndarray of bool, shape (nstraps, nrows)
        ``ok`` rows whose departure from its median over the ``ok`` rows exceeds
        `CURVATURE_CLIP` times its robust standard deviation (1.4826 times the
        median absolute deviation), grown by `CURVATURE_GROW` rows either side.
    """
    curved = np.zeros(curve.shape, dtype=bool)
    for k in np.flatnonzero(ok.any(axis=1)):
        values = curve[k, ok[k]]
        centre = np.median(values)
        spread = 1.4826 * np.median(np.abs(values - centre))
        curved[k] = ok[k] & (np.abs(curve[k] - centre) > CURVATURE_CLIP * spread)
    width = 2 * CURVATURE_GROW + 1
    return ndimage.maximum_filter1d(curved.view(np.uint8), width, axis=1).view(bool)


def strap_response(
    sums: np.ndarray, frames: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each strap's response and its 1-sigma error from per-frame sums.

    The response is the least-squares slope of strap against reference over
    all frames, ``sum(strap * ref) / sum(ref**2)``. Its error is a sandwich
    (clustered) estimate: a cluster ``c`` of the sums moves the slope by its
    score ``s_c = sum_c(strap * ref) - response * sum_c(ref**2)``, so with the
    frames as clusters the variance is ``n / (n - 1) * sum(s_f**2) /
    sum(ref**2)**2`` over the ``n`` frames that measured the strap. That holds
    the frames' noise and any change of the response from frame to frame, not
    what all frames share: the noise of the static scene subtracted from each
    frame, on the strap and its references, and any structure the reference
    line misses row by row. On the structured simulated field (30 frames) that
    left the responses 3.5x (RMS) further from their truth than quoted. Given
    the sums per block of rows (`strap_sums`'s ``blocks``), the blocks are
    clusters too, and the variance is the two-way clustered one (Cameron,
    Gelbach & Miller 2011, J. Bus. Econ. Stat. 29, 238): frames' plus blocks'
    less that of the (frame, block) cells, which both count, and no less than
    either of the two.

    Parameters
    ----------
    sums : ndarray, shape (nframes, nstraps, 2) or (nframes, nstraps, nblocks, 2)
        `strap_sums` of each frame, optionally per block of rows; may be a
        memory map (read in chunks of frames).
    frames : array of int, optional
        The frames of ``sums`` to use (default all).

    Returns
    -------
    response, error : ndarray of float, shape (nstraps,)
        1 and 0 where unmeasured.
    measured : ndarray of bool, shape (nstraps,)
        Straps with a positive, finite response.
    """
    frames = np.arange(len(sums)) if frames is None else np.asarray(frames)
    per_frame, per_block, cells = _cluster_sums(sums, frames)
    sr, rr = per_frame[..., 0], per_frame[..., 1]
    total = rr.sum(axis=0)
    measured = total > 0
    safe = np.where(measured, total, 1)
    response = np.where(measured, sr.sum(axis=0) / safe, 1)
    measured &= np.isfinite(response) & (response > 0)
    response = np.where(measured, response, 1)
    nframes = (rr > 0).sum(axis=0)
    variance = _clustered(sr - response * rr, nframes)
    if per_block is not None:
        nblocks = (per_block[..., 1] > 0).sum(axis=0)
        by_block = _clustered(per_block[..., 0] - response * per_block[..., 1], nblocks)
        # sum over cells of (sr - R rr)**2, from the accumulated products
        by_cell = cells[0] - 2 * response * cells[1] + response**2 * cells[2]
        by_cell = by_cell * _small_sample(cells[3])
        variance = np.maximum(np.maximum(variance, by_block), variance + by_block - by_cell)
    error = np.sqrt(variance) / safe
    error = np.where(measured & (nframes > 1), error, 0)
    return response, error, measured


#: Frames of the sums read at a time by `strap_response` (a few MB).
_CHUNK = 256


def _cluster_sums(sums, frames: np.ndarray):
    """Per-frame sums (nframes, nstraps, 2); with blocks, also the sums per block over the
    frames (nblocks, nstraps, 2) and, per strap, the cells' ``sum(sr**2)``,
    ``sum(sr * rr)``, ``sum(rr**2)`` and count of cells with ``rr > 0``."""
    if np.ndim(sums) == 3 or len(frames) == 0:
        per_frame = np.asarray(sums, dtype=float)[frames]
        if per_frame.ndim == 4:
            per_frame = per_frame.sum(axis=2)
        return per_frame, None, None
    nstraps, nblocks = sums.shape[1], sums.shape[2]
    per_frame = np.empty((len(frames), nstraps, 2))
    per_block = np.zeros((nstraps, nblocks, 2))
    cells = np.zeros((4, nstraps))
    for start in range(0, len(frames), _CHUNK):
        chunk = np.asarray(sums[frames[start : start + _CHUNK]], dtype=float)
        per_frame[start : start + _CHUNK] = chunk.sum(axis=2)
        per_block += chunk.sum(axis=0)
        sr, rr = chunk[..., 0], chunk[..., 1]
        cells += [
            (sr * sr).sum(axis=(0, 2)),
            (sr * rr).sum(axis=(0, 2)),
            (rr * rr).sum(axis=(0, 2)),
            (rr > 0).sum(axis=(0, 2)),
        ]
    return per_frame, per_block.transpose(1, 0, 2), cells


def _small_sample(count: np.ndarray) -> np.ndarray:
    """The clustered variance's small-sample factor ``n / (n - 1)`` (1 for n <= 1)."""
    return count / np.maximum(count - 1, 1)


def _clustered(scores: np.ndarray, count: np.ndarray) -> np.ndarray:
    """``n / (n - 1) * sum(scores**2)`` over the first axis (the clusters)."""
    return _small_sample(count) * np.sum(scores**2, axis=0)
