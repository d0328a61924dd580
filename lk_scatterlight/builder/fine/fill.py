"""Filling the fine layer's holes: along the local structure, with profiles, isotropically."""

from __future__ import annotations

import functools

import numpy as np
from scipy import linalg, ndimage


def _hole_ring(ok: np.ndarray) -> np.ndarray:
    """The valid bins around each hole, within half its depth (the largest distance of
    its bins from a valid one, at least 1 bin) of it.

    A hole's bins lie 1 to ``depth`` bins from a valid bin; the ring's, once hidden,
    1 to ``depth / 2`` from the valid bins beyond it, with only one side to fill
    from. On a simulated ridge crossing a 3-bin bleed column and a 20 x 20-bin star
    halo, the ring's fill error is 0.7-1.1x and 0.4-1.0x the holes' own (variance).
    """
    inside, nearest = ndimage.distance_transform_edt(~ok, return_indices=True)
    labels, _ = ndimage.label(~ok)
    depth = ndimage.maximum(inside, labels, np.arange(labels.max() + 1))
    depth[0] = 0
    outside, (nr, nc) = ndimage.distance_transform_edt(ok, return_indices=True)
    return ok & (outside <= np.maximum(1, np.round(depth[labels[nr, nc]] / 2)))


def _fill_holes(r: np.ndarray, ok: np.ndarray, model: np.ndarray | None = None) -> np.ndarray:
    """Fill ``r`` where not ``ok``: isotropic first guess, then along local structure.

    With ``model`` (the coarse model that ``r`` is the residual of), the
    directional step works on the total ``model + r``: along a ridge the total
    is nearly constant while the coarse model under a large hole need not be.
    """
    if ok.all():
        return r
    out = _fill_isotropic(r, ok)
    rows, cols = np.nonzero(~ok)
    _fill_along_structure(out, ok, model, rows, cols)
    return out


def _fill_along_structure(r, ok, model, rows, cols) -> None:
    """Refill the holes at ``rows, cols`` of ``r`` in place along the local structure.

    The structure is that of the total ``model + r`` (of ``r`` without ``model``);
    holes without a clear direction keep their value.
    """
    if rows.size == 0:
        return
    # Only a box around the holes: the windows reach _STRUCTURE + 1 and _REACH + 1 bins.
    margin = _STRUCTURE + _REACH + 2
    nr, nc = r.shape
    r0, r1 = max(int(rows.min()) - margin, 0), min(int(rows.max()) + margin + 1, nr)
    c0, c1 = max(int(cols.min()) - margin, 0), min(int(cols.max()) + margin + 1, nc)
    box = (slice(r0, r1), slice(c0, c1))
    total = r[box] if model is None else r[box] + model[box]
    inner = (rows - r0, cols - c0)
    along = _structure_direction(total, ok[box], *inner)
    _fill_along(total, ok[box], *inner, along)
    if model is not None:
        r[rows, cols] = total[inner] - model[rows, cols]


#: Holes of at least this many fine bins are refitted by `_fill_profiles`, in pieces of
#: at most this side [fine bins], each with a window of this margin [fine bins] around
#: it; knot spacing [fine bins] of the profile.
_PROFILE_MIN, _PROFILE_PIECE, _PROFILE_MARGIN, _PROFILE_KNOTS = 4, 8, 6, 0.75


def _fill_profiles(r, ok, model, noise, threshold, holes=None) -> None:
    """Refit large holes (>= 4 bins) where the residual around them is significant.

    Near a narrow ridge or an edge the field varies along one direction only.
    Around each such hole, a window of valid bins gives the direction (structure
    tensor of the total field ``model + r``) and a profile across it: the total
    as a piecewise-linear function of the across coordinate ``s`` (knots every
    0.75 bins, second-difference regularised) plus a linear trend along the
    structure. The hole takes the profile's values: every valid bin along the
    ridge on both sides informs it, and the ridge is followed whatever its
    angle. Holes where the window's residual is only noise (mean
    ``r**2 / noise`` below ``threshold``) or without a clear direction keep
    their first fill.

    ``holes`` is ``(labels, pieces)`` from `_profile_pieces` of ``~ok`` (or a
    subset of its pieces); by default all the holes of ``~ok``. A piece whose
    window holds fewer valid bins than hole bins (deep inside a large hole)
    keeps its first fill: the profile would be extrapolated, not fitted.
    """
    labels, pieces = _profile_pieces(~ok) if holes is None else holes
    n = r.shape[0]
    for k, r0, r1, c0, c1 in pieces.tolist():
        piece = (slice(r0, r1), slice(c0, c1))
        _fit_profile(r, ok, model, noise, threshold, labels[piece] == k, piece, n)


def _profile_pieces(holes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Label the connected ``holes`` and cut those of `_PROFILE_MIN` bins or more in pieces.

    Returns
    -------
    labels : ndarray of int32, shape of ``holes``
        Connected holes numbered from 1.
    pieces : ndarray of int, shape (npieces, 5)
        Label, first and one-past-last row, first and one-past-last column of
        each piece: long holes (bleed columns, unmeasured straps) are refitted
        in pieces of at most `_PROFILE_PIECE` bins a side, as the profile is local.
    """
    labels, _ = ndimage.label(holes)
    labels = labels.astype(np.int32)
    pieces = []
    for k, (rs, cs) in enumerate(ndimage.find_objects(labels)):
        if np.count_nonzero(labels[rs, cs] == k + 1) < _PROFILE_MIN:
            continue
        for r_lo in range(rs.start, rs.stop, _PROFILE_PIECE):
            for c_lo in range(cs.start, cs.stop, _PROFILE_PIECE):
                r_hi = min(r_lo + _PROFILE_PIECE, rs.stop)
                pieces.append((k + 1, r_lo, r_hi, c_lo, min(c_lo + _PROFILE_PIECE, cs.stop)))
    return labels, np.array(pieces, dtype=np.int64).reshape(-1, 5)


def _profiled(labels: np.ndarray, hole_labels: np.ndarray) -> np.ndarray:
    """Per hole of ``labels`` (the holes with the ring hidden), whether it holds a hole
    of ``hole_labels`` (the frame's own) of `_PROFILE_MIN` bins or more.

    Only those holes are refitted with profiles (`_fill_profiles`): a smaller
    hole keeps its first fill and the fill along the structure, and so must its
    ring in the probe. On the structured simulated field, holes of 1-3 bins
    (stars below the halo size) hold 93 % of the fill error in kept tiles,
    which a probe refitting their ring with profiles quoted 4.7x too small.
    """
    sizes = np.bincount(hole_labels.ravel())
    sizes[0] = 0
    inside = hole_labels > 0
    out = np.zeros(int(labels.max()) + 1, dtype=bool)
    out[labels[inside][sizes[hole_labels[inside]] >= _PROFILE_MIN]] = True
    return out


def _pieces_touching(mask: np.ndarray, pieces: np.ndarray) -> np.ndarray:
    """Per piece of `_profile_pieces`, whether ``mask`` holds a True bin in its box
    (the sums of ``mask`` over the boxes, from its summed-area table)."""
    table = np.zeros((mask.shape[0] + 1, mask.shape[1] + 1), dtype=np.int32)
    np.cumsum(mask, axis=0, dtype=np.int32, out=table[1:, 1:])
    np.cumsum(table[1:, 1:], axis=1, out=table[1:, 1:])
    _, r0, r1, c0, c1 = pieces.T
    return table[r1, c1] - table[r0, c1] - table[r1, c0] + table[r0, c0] > 0


def _fit_profile(r, ok, model, noise, threshold, component, piece, n) -> None:
    """Fill one piece of a hole (``component``: its bins within ``piece``), see `_fill_profiles`."""
    m = _PROFILE_MARGIN
    r0, r1 = max(piece[0].start - m, 0), min(piece[0].stop + m, n)
    c0, c1 = max(piece[1].start - m, 0), min(piece[1].stop + m, n)
    hole = np.zeros((r1 - r0, c1 - c0), dtype=bool)
    inner = (
        slice(piece[0].start - r0, piece[0].stop - r0),
        slice(piece[1].start - c0, piece[1].stop - c0),
    )
    hole[inner] = component
    if not hole.any():
        return
    valid = ok[r0:r1, c0:c1]
    if np.count_nonzero(valid) < np.count_nonzero(hole):  # mostly extrapolation: keep it
        return
    res = r[r0:r1, c0:c1]
    if np.mean(res[valid] ** 2 / noise[r0:r1, c0:c1][valid]) <= threshold:
        return
    total = res + model[r0:r1, c0:c1]
    g_row, g_col, measured = _gradients(total, valid, total.dtype)
    a, b, c = (
        (g_row * g_row)[measured].sum(),
        (g_row * g_col)[measured].sum(),
        (g_col * g_col)[measured].sum(),
    )
    if np.hypot(a - c, 2 * b) < 0.5 * (a + c):  # no dominant direction
        return
    theta = 0.5 * np.arctan2(2 * b, a - c)  # across the structure
    rr = np.arange(r0, r1)[:, None] - (r0 + r1) / 2
    cc = np.arange(c0, c1)[None, :] - (c0 + c1) / 2
    across = rr * np.cos(theta) + cc * np.sin(theta)
    along = -rr * np.sin(theta) + cc * np.cos(theta)
    knots = np.arange(across.min(), across.max() + _PROFILE_KNOTS, _PROFILE_KNOTS)
    hats = np.clip(1 - np.abs(across[..., None] - knots) / _PROFILE_KNOTS, 0, None)
    design = np.concatenate([hats, along[..., None]], axis=-1)
    penalty = _profile_penalty(knots.size)
    lhs = np.vstack([design[valid], penalty])
    rhs = np.concatenate([total[valid], np.zeros(penalty.shape[0])])
    coef = _least_squares(lhs, rhs)
    res[hole] = design[hole] @ coef - model[r0:r1, c0:c1][hole]


@functools.lru_cache(maxsize=64)
def _profile_penalty(nknots: int) -> np.ndarray:
    """The rows that regularise a profile of ``nknots`` knots (its second differences,
    times 0.3; 0 on the trend along the structure). Cached: read-only."""
    smooth = np.diff(np.eye(nknots), 2, axis=0)
    penalty = np.hstack([smooth, np.zeros((smooth.shape[0], 1))]) * 0.3
    penalty.flags.writeable = False
    return penalty


def _least_squares(lhs: np.ndarray, rhs: np.ndarray) -> np.ndarray:
    """``lstsq(lhs, rhs)`` through the normal equations (Cholesky), ~10x faster for the
    profiles' tall, well-conditioned systems; SVD (`numpy.linalg.lstsq`) when they are
    singular or badly conditioned.

    LAPACK's ``potrf`` and ``potrs`` are called directly, as `scipy.linalg.cho_factor`
    and `~scipy.linalg.cho_solve` call them (the same numbers) without their checks:
    thousands of small systems per frame."""
    normal = lhs.T @ lhs
    potrf, potrs = _cholesky_routines(normal.dtype)
    factor, info = potrf(normal, lower=False, overwrite_a=False, clean=False)
    if info != 0:  # > 0: not positive definite
        return np.linalg.lstsq(lhs, rhs, rcond=None)[0]
    diagonal = np.diag(factor)
    if diagonal.min() <= 1e-6 * diagonal.max():  # condition number over ~1e12
        return np.linalg.lstsq(lhs, rhs, rcond=None)[0]
    return potrs(factor, lhs.T @ rhs, lower=False, overwrite_b=False)[0]


@functools.lru_cache(maxsize=4)
def _cholesky_routines(dtype: np.dtype):
    """LAPACK's Cholesky factorisation and solve (``potrf``, ``potrs``) for ``dtype``."""
    probe = np.zeros((1, 1), dtype=dtype)
    return linalg.get_lapack_funcs(("potrf", "potrs"), (probe,))


def _fill_isotropic(
    r: np.ndarray, ok: np.ndarray, holes=None, copy: bool = True, first=None
) -> np.ndarray:
    """Normalised Gaussian convolution of the valid bins, widening until all is filled.

    The first width (1 bin) is computed at the holes only, from their 7 x 7
    neighbourhoods; the rare holes with no valid bin there use filters of
    widths 4, 8 and 32 bins, computed on boxes around them (`_wide_fill`).
    ``holes`` is ``np.nonzero(~ok)`` if known, ``first`` its `_first_fill`
    if known (the same for every frame of a build); with ``copy=False``
    ``r`` itself is filled.
    """
    out = r.copy() if copy else r
    rows, cols = np.nonzero(~ok) if holes is None else holes
    at, w, total = _first_fill(ok, rows, cols) if first is None else first
    near = total > 1e-3
    out[rows[near], cols[near]] = (w * np.take(r, at)).sum(axis=1)[near] / total[near]
    if near.all():
        return out
    missing = ~ok
    missing[rows[near], cols[near]] = False
    valid = (~missing).astype(np.float32)
    for width in (4, 8, 32):
        fill = _wide_fill(out, valid, missing, width)
        valid[fill] = 1
        missing &= ~fill
        if not missing.any():
            break
    out[missing] = 0
    return out


def _first_fill(ok: np.ndarray, rows: np.ndarray, cols: np.ndarray):
    """The first width of `_fill_isotropic` at the holes ``rows, cols`` of ``ok``: per
    hole, the flat indices of its 7 x 7 neighbourhood (clipped at the edges), their
    Gaussian weights (0 on holes) and the weights' sum."""
    n = ok.shape[0]
    offsets = np.arange(-_WINDOW, _WINDOW + 1)
    dr, dc = np.meshgrid(offsets, offsets, indexing="ij")
    rr = np.clip(rows[:, None] + dr.ravel(), 0, n - 1)
    cc = np.clip(cols[:, None] + dc.ravel(), 0, n - 1)
    w = np.exp(-(dr**2 + dc**2) / 2.0).ravel() * ok[rr, cc]
    return rr * n + cc, w, w.sum(axis=1)


def _wide_fill(out, valid, missing, width) -> np.ndarray:
    """One width of `_fill_isotropic`'s wide fill: the ``missing`` bins where the
    normalised Gaussian convolution (sigma ``width`` bins) of ``out`` over the
    ``valid`` bins is defined take its value; returns those bins.

    Each group of missing bins is convolved on its bounding box grown by the
    filter's reach (4 sigma), which gives the same values at the group as the
    whole image's filter (``mode="nearest"`` at the image's edges, which the
    boxes keep); the whole image at once when the boxes would cover more.
    """
    n = out.shape[0]
    reach = int(4.0 * width + 0.5)  # gaussian_filter's radius (truncate=4)
    labels, _ = ndimage.label(missing)
    objects = ndimage.find_objects(labels)
    boxes = [
        tuple(slice(max(s.start - reach, 0), min(s.stop + reach, n)) for s in core)
        for core in objects
    ]
    if sum((b[0].stop - b[0].start) * (b[1].stop - b[1].start) for b in boxes) >= out.size:
        boxes, objects = [(slice(0, n), slice(0, n))], [None]
    fill = np.zeros_like(missing)
    for k, (box, core) in enumerate(zip(boxes, objects, strict=True)):
        num = ndimage.gaussian_filter(out[box] * valid[box], width, mode="nearest")
        den = ndimage.gaussian_filter(valid[box], width, mode="nearest")
        mine = missing[box] if core is None else labels[box] == k + 1
        here = mine & (den > 1e-3)
        out[box][here] = num[here] / den[here]
        fill[box] |= here
    return fill


#: Half-width [fine bins] of the first fill's window, of the structure tensor's window
#: around a hole, and the longest step along the structure to a valid bin.
_WINDOW, _STRUCTURE, _REACH = 3, 6, 12


def _structure_direction(image, ok, rows, cols) -> np.ndarray:
    """Unit vector along the local structure at each hole; NaN where there is none.

    The eigenvector of the smallest eigenvalue of the structure tensor (the
    Gaussian-weighted sum of ``grad grad^T`` over a 13 x 13 window, using only
    gradients whose central differences involve valid bins alone) points along
    a ridge or an edge. Where the tensor is nearly isotropic (coherence < 0.5:
    noise, smooth sky), NaN: the isotropic fill stays.
    """
    nr, nc = image.shape
    offsets = np.arange(-_STRUCTURE, _STRUCTURE + 1)
    dr, dc = np.meshgrid(offsets, offsets, indexing="ij")
    weight = np.exp(-(dr**2 + dc**2) / (2 * (_STRUCTURE / 2) ** 2)).ravel()
    # The gradients of the whole image, padded with their edge values: a window's bin
    # beyond an edge reads the nearest edge bin's, as if its position were clipped.
    pad = _STRUCTURE
    images = [np.pad(x, pad, mode="edge").ravel() for x in _gradients(image, ok)]
    width = nc + 2 * pad
    at = ((rows + pad) * width + cols + pad)[:, None] + (dr * width + dc).ravel()
    gr, gc, measured = (np.take(x, at) for x in images)
    w = weight * measured
    a, b, c = (w * gr * gr).sum(1), (w * gr * gc).sum(1), (w * gc * gc).sum(1)
    theta = 0.5 * np.arctan2(2 * b, a - c)  # direction of the strongest gradient
    coherence = np.sqrt((a - c) ** 2 + 4 * b**2) / np.maximum(a + c, 1e-30)
    along = np.column_stack([-np.sin(theta), np.cos(theta)])
    along[coherence < 0.5] = np.nan
    return along


def _gradients(image, ok, dtype=float):
    """``np.gradient(image)`` as ``dtype`` (one-sided differences at the edges; the
    differences in ``image``'s precision), and where its central differences involve
    valid bins alone."""
    g_row, g_col = np.empty(image.shape, dtype), np.empty(image.shape, dtype)
    two, one = np.float64(2), np.float64(1)  # float64 quotients, as of an index difference
    np.divide(image[2:] - image[:-2], two, out=g_row[1:-1])
    np.divide(image[1:2] - image[:1], one, out=g_row[:1])
    np.divide(image[-1:] - image[-2:-1], one, out=g_row[-1:])
    np.divide(image[:, 2:] - image[:, :-2], two, out=g_col[:, 1:-1])
    np.divide(image[:, 1:2] - image[:, :1], one, out=g_col[:, :1])
    np.divide(image[:, -1:] - image[:, -2:-1], one, out=g_col[:, -1:])
    measured = ok.copy()
    measured[1:-1] &= ok[:-2] & ok[2:]
    measured[:, 1:-1] &= ok[:, :-2] & ok[:, 2:]
    return g_row, g_col, measured


def _fill_along(out, ok, rows, cols, along) -> None:
    """Interpolate holes linearly between the nearest valid bins along ``along``."""
    use = np.isfinite(along[:, 0])
    if not use.any():
        return
    rows, cols, along = rows[use], cols[use], along[use]
    nr, nc = out.shape
    valid = ok.astype(out.dtype)
    weighted = out * valid
    steps = np.arange(1, _REACH + 1)
    found = []
    for sign in (1, -1):
        pr = rows[:, None] + sign * steps * along[:, [0]]
        pc = cols[:, None] + sign * steps * along[:, [1]]
        inside = (pr >= 0) & (pr <= nr - 1) & (pc >= 0) & (pc <= nc - 1)
        near = ok[
            np.clip(np.rint(pr), 0, nr - 1).astype(int),
            np.clip(np.rint(pc), 0, nc - 1).astype(int),
        ]
        good = inside & near
        first = np.argmax(good, axis=1)
        hit = good[np.arange(first.size), first]
        coords = np.vstack([pr[np.arange(first.size), first], pc[np.arange(first.size), first]])
        # Bilinear over valid bins only (holes still hold the isotropic guess).
        num = ndimage.map_coordinates(weighted, coords, order=1, mode="nearest")
        den = ndimage.map_coordinates(valid, coords, order=1, mode="nearest")
        found.append((hit & (den > 0.25), steps[first], num / np.maximum(den, 0.25)))
    (hit1, d1, v1), (hit2, d2, v2) = found
    both = hit1 & hit2
    out[rows[both], cols[both]] = (v1 * d2 + v2 * d1)[both] / (d1 + d2)[both]
