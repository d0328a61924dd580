"""The fine layer's own errors, measured per frame and pooled.

The misfit of structure within a bin, and the error of filled holes by depth.
"""

from __future__ import annotations

import functools

import numpy as np
from scipy import ndimage

from ... import interpolate
from .context import FILL_CLASSES, FineContext, depth_class, depth_class_at
from .fill import (
    _fill_along_structure,
    _fill_isotropic,
    _fill_profiles,
    _hole_ring,
    _pieces_touching,
    _profile_pieces,
    _profiled,
)


def _tile_misfit(
    diff: np.ndarray,
    coarse_value: np.ndarray,
    r: np.ndarray,
    kept: np.ndarray,
    context: FineContext,
    uncertainty: np.ndarray | None,
    tile_sigma: np.ndarray,
    smoothing: tuple[float, float] | None = None,
) -> np.ndarray:
    """Per kept tile, the structure the model misses at its pixels, along rows and columns.

    The model a cube evaluates, the coarse plane plus the kept tiles of ``r``
    (Keys kernel on the bin centres), is subtracted from the static-subtracted
    frame at the tile's valid pixels (strap columns left out: their response is
    measured apart). What the fine bins cannot hold stays in that residual: an
    edge sharper than a bin, a ridge's profile between bin centres, a fill
    across a hole seen from the pixels next to it. The noise stays in it too,
    the frame's and the static scene's, whose level the uncertainty image does
    not give; but it is independent from pixel to pixel, so the covariance of
    neighbouring pixels' residuals less the part of the noise the model shares
    between them (`_lag_covariance`) measures the missed structure alone. That
    part is predicted with the pixels' variance: the FFI uncertainty (or the
    tile's ``tile_sigma``) times ``k``, the median over the tiles without a
    block of their mean squared residual against the coarse plane over the
    uncertainty's prediction, on every `_MISFIT_ROWS`-th row. Returns, per kept
    tile, the estimates from row neighbours and from column neighbours, then
    the same from pixels 2, 3 and 4 apart (how fast the missed structure
    decorrelates: an aperture sum adds it with that correlation; see
    `_misfit_parts`) [(e-/s)**2 per pixel], each unbiased. ``smoothing``: the
    ``(own, gain)`` of `_smooth_along_structure` when the kept tiles were
    smoothed (a bin keeps ``own`` of its mean, and its value's variance is
    ``gain**2`` of the mean's).

    The tiles are measured in batches of up to `_MISFIT_BATCH` that share the
    shapes of their Keys weights (all interior tiles do; `_tile_groups`).
    """
    out = np.zeros((kept.size, 2 * len(MISFIT_LAGS)), dtype=np.float32)
    if not kept.size:
        return out
    fb, t, nt = context.pixel_bin, context.tile, context.ntiles
    n, side = diff.shape[0], fb * t
    cb = context.coarse_bin
    coarse = np.nan_to_num(coarse_value).astype(float)
    open_columns = np.ones(n, dtype=bool)
    open_columns[context.strap_idx] = False

    # The pixel-level calibration, from the tiles without a block (coarse model only).
    is_kept = np.zeros(nt * nt, dtype=bool)
    is_kept[kept] = True
    rows = np.arange(_MISFIT_ROWS // 2, n, _MISFIT_ROWS)
    res = diff[rows].astype(float) - _calibration_plane(coarse, cb)
    use = (context.weights[rows] > 0) & open_columns & np.isfinite(res)
    if uncertainty is None:
        pred = tile_sigma.repeat(side, 0).repeat(side, 1)[rows].astype(float) ** 2
    else:
        pred = np.nan_to_num(np.square(uncertainty[rows], dtype=float))
    pred[~use] = 0
    got = np.where(use, res, 0.0) ** 2
    per_row = rows.size // nt
    sums = [x.reshape(nt, per_row, nt, side).sum(axis=(1, 3)).ravel() for x in (got, pred)]
    free = ~is_kept & (sums[1] > 0)
    k = float(np.median(sums[0][free] / sums[1][free])) if free.any() else 1.0

    kept_bins = is_kept.reshape(nt, nt).repeat(t, 0).repeat(t, 1)
    layer = np.where(kept_bins, r, 0).astype(float)
    # A bin's own weight after the curvature correction (1 + 4c times its mean) and the
    # variance of its value (the neighbours' share c**2 each; covariances neglected).
    curvature = context.curvature.astype(float)
    own = (1 + 4 * curvature) * context.inv_count
    spread = np.where(kept_bins, ((1 + 4 * curvature) ** 2 + 4 * curvature**2), 0.0)
    spread *= context.inv_count
    if smoothing is not None:
        own, spread = own * smoothing[0], spread * smoothing[1] ** 2
    for at, coarse_w, fine_w, lag_weights in _tile_groups(kept, nt, side, cb, fb, n):
        i, j = np.divmod(kept[at], nt)
        (ar, r0c), (ac, c0c) = coarse_w
        (wr, r0), (wc, c0) = fine_w
        pixels = _blocks(diff, i, j, side).astype(float)
        use = _blocks(context.weights, i, j, side) > 0
        use &= open_columns.reshape(nt, side)[j][:, None, :] & np.isfinite(pixels)
        window = _windows(coarse, r0c, c0c, ar.shape[2], ac.shape[2])
        model = ar @ window @ ac.transpose(0, 2, 1)
        model += wr @ _windows(layer, r0, c0, wr.shape[2], wc.shape[2]) @ wc.transpose(0, 2, 1)
        if uncertainty is None:
            var = np.broadcast_to(
                (k * tile_sigma[i, j].astype(float) ** 2)[:, None, None], use.shape
            )
        else:
            var = k * np.nan_to_num(np.square(_blocks(uncertainty, i, j, side), dtype=float))
        o = _blocks(own, i, j, t).repeat(fb, axis=1).repeat(fb, axis=2)
        shared = _windows(spread, r0, c0, wr.shape[2], wc.shape[2])
        out[at] = _lag_covariance(pixels - model, use, var, (wr, wc), lag_weights, o, shared)
    return out


def _blocks(image: np.ndarray, i: np.ndarray, j: np.ndarray, side: int) -> np.ndarray:
    """The ``side x side`` blocks ``(i, j)`` of a square ``image``, shape (len(i), side, side)."""
    nb = image.shape[0] // side
    return image.reshape(nb, side, nb, side)[i, :, j, :]


def _windows(grid: np.ndarray, r0: np.ndarray, c0: np.ndarray, nr: int, nc: int) -> np.ndarray:
    """The ``nr x nc`` windows of ``grid`` from ``(r0, c0)`` on, shape (len(r0), nr, nc)."""
    rows, cols = r0[:, None] + np.arange(nr), c0[:, None] + np.arange(nc)
    return grid[rows[:, :, None], cols[:, None, :]]


def _tile_groups(kept: np.ndarray, nt: int, side: int, cb: int, fb: int, n: int):
    """The kept tiles in batches (of `_MISFIT_BATCH` at most) that share the shapes of
    their Keys weights.

    Yields, per batch, the positions in ``kept``, the stacked `_tile_weights` and
    first bins of the tiles' rows and columns on the coarse grid, the same on the
    fine grid, and their `_tile_lag_weights` on the fine grid (rows, columns).
    """
    groups: dict[tuple, list[int]] = {}
    axes = {}
    for m, tile in enumerate(kept.tolist()):
        for x in divmod(tile, nt):
            if x not in axes:
                key = (x * side, side)
                axes[x] = (_tile_weights(*key, cb, n), _tile_weights(*key, fb, n))
        i, j = divmod(tile, nt)
        shapes = tuple(w.shape for x in (i, j) for w, _ in axes[x])
        groups.setdefault(shapes, []).append(m)

    def stacked(x, part):
        w = [axes[y][part] for y in x]
        return np.stack([a for a, _ in w]), np.array([first for _, first in w])

    def lagged(x):
        w = [_tile_lag_weights(y * side, side, fb, n) for y in x]
        return np.stack([a for a, _ in w]), np.stack([b for _, b in w])

    batches = [
        g[k : k + _MISFIT_BATCH] for g in groups.values() for k in range(0, len(g), _MISFIT_BATCH)
    ]
    for at in batches:
        i, j = (x.tolist() for x in np.divmod(kept[at], nt))
        coarse, fine = (stacked(i, 0), stacked(j, 0)), (stacked(i, 1), stacked(j, 1))
        yield np.array(at), coarse, fine, (lagged(i), lagged(j))


def _lag_covariance(res, use, var, weights, lag_weights, own, spread) -> np.ndarray:
    """Covariance of the residuals of neighbouring pixels, less that of their noise.

    Missed structure is smooth over a few pixels and the noise (the frame's and
    the static scene's) independent from pixel to pixel, so the products of
    neighbours' residuals keep the structure's variance and only the part of
    the noise the model shares between them: pixel ``p``'s noise enters
    ``q``'s model through ``p``'s bin mean (weight ``wr[q, bin(p)] wc[q,
    bin(p)] own[bin(p)]``) and both models share every bin mean. Returns the
    estimates from row neighbours and from column neighbours: the one along
    an edge or a ridge keeps its misfit. Across a ridge, and for the part of
    an interpolation error that repeats with the bins' period, neighbours
    differ, so the estimate is a lower bound there. Then the same two at each
    further lag of `MISFIT_LAGS` (2, 3 and 4 px: how the misfit's correlation
    falls with distance).

    A batch of ``m`` tiles: ``res``, ``use``, ``var`` and ``own`` (the own weight
    of each pixel's bin) of shape (m, side, side); the tiles' fine-grid Keys
    weights ``(wr, wc)``, each of shape (m, side, K), and their two
    `_tile_lag_weights` arrays stacked over the tiles (for the rows, then the
    columns); ``spread`` on the weights' bins, shape (m, Kr, Kc). Returns shape
    (m, 2 * len(`MISFIT_LAGS`)): each tile's mean over its pairs of valid pixels,
    0 for a tile without one.
    """
    u = use.astype(float)
    count = u.sum(axis=(1, 2))
    mean_var = np.einsum("myx,myx->m", var, u) / np.maximum(count, 1)
    masked = np.where(use, res, 0.0)
    noise = u * var * own
    along = _row_lags(masked, u, noise, weights, lag_weights, spread, mean_var)
    flip = [np.ascontiguousarray(x.transpose(0, 2, 1)) for x in (masked, u, noise, spread)]
    across = _row_lags(*flip[:3], weights[::-1], lag_weights[::-1], flip[3], mean_var)
    return np.stack([along, across], axis=2).reshape(res.shape[0], -1)


def _row_lags(masked, u, noise, weights, lag_weights, spread, mean_var) -> np.ndarray:
    """`_lag_covariance` between pixels ``lag`` rows apart, for each lag of `MISFIT_LAGS`.

    ``masked`` and ``noise`` (``var * own``) are 0 at the invalid pixels, ``u`` 1
    at the valid ones, so that the sums over the pairs of valid pixels are plain
    sums of products. Returns shape (m, len(`MISFIT_LAGS`)).
    """
    (_, wc), ((d_r, g_r), (d_c, _)) = weights, lag_weights
    noise = noise * d_c[:, :1, :]  # the column's weight on its own bin
    m, side = masked.shape[:2]
    # Each bin's shared variance, through the columns' weights; then (last) 1, which
    # counts the pairs.
    h = np.ones((m, side, spread.shape[1] + 1))
    h[:, :, :-1] = (spread @ (wc**2).transpose(0, 2, 1)).transpose(0, 2, 1)
    total = np.zeros((m, len(MISFIT_LAGS)))
    pair = np.zeros((m, len(MISFIT_LAGS), side, side))
    for n, lag in enumerate(MISFIT_LAGS):
        into_q, into_p = d_r[:, 1 + 2 * n, : side - lag], d_r[:, 2 + 2 * n, : side - lag]
        total[:, n] = np.einsum("myx,myx->m", masked[:, :-lag], masked[:, lag:])
        q_rows = np.einsum("myx,myx->my", noise[:, :-lag], u[:, lag:])
        p_rows = np.einsum("myx,myx->my", u[:, :-lag], noise[:, lag:])
        total[:, n] += np.einsum("my,my->m", q_rows, into_q) + np.einsum("my,my->m", p_rows, into_p)
        np.multiply(u[:, :-lag], u[:, lag:], out=pair[:, n, : side - lag])
    rows = (pair.reshape(m, -1, side) @ h).reshape(*pair.shape[:3], -1)
    total -= mean_var[:, None] * np.einsum("mnyk,mnyk->mn", rows, g_r)
    pairs = rows[..., -1].sum(axis=2)
    return np.divide(total, pairs, out=np.zeros_like(total), where=pairs > 0)


@functools.lru_cache(maxsize=512)
def _tile_lag_weights(start: int, side: int, spacing: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """The weights of `_tile_weights` that carry a pixel's noise into its own model and
    into that of the pixel ``lag`` rows after it, for each lag of `MISFIT_LAGS`; and
    the products of the weights of those two pixels.

    First array, shape (1 + 2 * len(`MISFIT_LAGS`), side): row 0, pixel ``y``'s
    weight on its own bin; then per lag, pixel ``y + lag``'s weight on ``y``'s bin
    and ``y``'s weight on the bin of ``y + lag``. Second, shape
    (len(`MISFIT_LAGS`), side, K + 1): ``w[y] * w[y + lag]`` on each bin, and a
    last column of 0. Both 0 past the tile's last pair; cached and read-only, as
    `_tile_weights`.
    """
    weights, lo = _tile_weights(start, side, spacing, n)
    bins = (start + np.arange(side)) // spacing - lo
    one = np.zeros((1 + 2 * len(MISFIT_LAGS), side))
    two = np.zeros((len(MISFIT_LAGS), side, weights.shape[1] + 1))
    one[0] = weights[np.arange(side), bins]
    for k, lag in enumerate(MISFIT_LAGS):
        y = np.arange(side - lag)
        one[1 + 2 * k, : side - lag] = weights[y + lag, bins[y]]
        one[2 + 2 * k, : side - lag] = weights[y, bins[y + lag]]
        two[k, : side - lag, :-1] = weights[:-lag] * weights[lag:]
    one.flags.writeable = two.flags.writeable = False
    return one, two


def _fill_probe(filled, ok, model, kept, context: FineContext, noise):
    """Hide the valid bins next to the holes of the kept tiles and fill them again.

    The probe of `_fill_misfit` and `_fill_bins`: the ring bins (`_hole_ring`) of
    the kept tiles are filled from the remaining valid bins with the holes' own
    steps (isotropic first guess, along the structure, profiles across it).
    Returns their rows, columns and ``fill - value`` [e-/s] (empty when no kept
    tile has a ring bin), and the valid bins left measured (``hidden``'s
    complement among the measured bins: ``ok`` less the ring bins probed).
    """
    t, nt = context.tile, context.ntiles
    is_kept = np.zeros(nt * nt, dtype=bool)
    is_kept[kept] = True
    in_kept = is_kept.reshape(nt, nt).repeat(t, 0).repeat(t, 1)
    static = ok is context.ok and context.ring is not None  # no NaN holes in this frame
    ring = context.ring if static else _hole_ring(ok)
    probe = ring & in_kept
    rows, cols = np.nonzero(probe)
    hidden = ok & ~probe
    if not rows.size:
        return rows, cols, np.zeros(0), hidden
    trial = filled.copy()
    _fill_isotropic(trial, hidden, (rows, cols), copy=False)
    _fill_along_structure(trial, hidden, model, rows, cols)
    labels, pieces = context.ring_holes if static else _profile_pieces(~(ok & ~ring))
    profiled = context.ring_profiled if static else _profiled(labels, _profile_pieces(~ok)[0])
    touch = profiled[pieces[:, 0]] & _pieces_touching(probe, pieces)
    if touch.any():
        _fill_profiles(trial, hidden, model, noise, context.threshold, (labels, pieces[touch]))
    return rows, cols, (trial[rows, cols] - filled[rows, cols]).astype(float), hidden


def _fill_misfit(
    filled, ok, model, kept, context: FineContext, noise, calibration, probe=None
) -> np.ndarray:
    """Per kept tile, the error of its filled bins, measured by filling known bins.

    The valid bins next to the holes of the kept tiles (those one bin up, down,
    left or right of a hole) are hidden and filled from the remaining valid
    bins, with the same steps as the holes (`_fill_probe`): they are the hole's
    edge, one bin deeper, so their fill sees structure crossing the hole as the
    hole's own fill does.
    Per kept tile, the mean over those bins of ``(fill - value)**2``
    less the value's noise variance (``noise`` times ``calibration``: the frame's
    variance of each bin) estimates a filled bin's squared error [(e-/s)**2],
    unbiased (0 for the other tiles; the fill's own noise stays in it). The
    ring and its holes' pieces are the context's (`make_fine_context`) unless
    the frame has holes of its own (NaN pixels).

    The error grows with a bin's depth in its hole (on a ridge crossing a star
    halo, ~20x in variance from the bins next to a measured one to those 5-8
    bins in), so the hidden bins' squared errors are also summed per
    `depth_class` of their depth once hidden (distance to the nearest bin
    still measured), with the number of bins summed.

    ``filled``: the frame's residual with its holes filled (before the curvature
    step); ``ok``: its measured bins; ``model``: the coarse model's bin means;
    ``noise``: the predicted variance of each bin (`_Noise.image`); ``probe``:
    `_fill_probe` of the same arguments, if already made.

    Returns
    -------
    fill : ndarray of float32, shape (len(kept), 1 + 2 * FILL_CLASSES)
        Per kept tile, the mean, the sums per depth class and the bins per class.
    """
    out = np.zeros((kept.size, 1 + 2 * FILL_CLASSES), dtype=np.float32)
    t, nt = context.tile, context.ntiles
    rows, cols, difference, hidden = probe or _fill_probe(filled, ok, model, kept, context, noise)
    if not rows.size:
        return out
    excess = difference**2 - calibration * noise[rows, cols]
    tile = (rows // t) * nt + cols // t
    sums = np.bincount(tile, excess, minlength=nt * nt)[kept]
    count = np.bincount(tile, minlength=nt * nt)[kept]
    out[count > 0, 0] = sums[count > 0] / count[count > 0]
    depth = depth_class_at(hidden, rows, cols)
    at = (tile * FILL_CLASSES + depth - 1, nt * nt * FILL_CLASSES)
    by_class = np.bincount(at[0], excess, minlength=at[1]).reshape(nt * nt, -1)
    out[:, 1 : 1 + FILL_CLASSES] = by_class[kept]
    out[:, 1 + FILL_CLASSES :] = np.bincount(at[0], minlength=at[1]).reshape(nt * nt, -1)[kept]
    return out


def _bin_noise(uncertainty, context: FineContext, rows, cols, fallback) -> np.ndarray:
    """The frame's own noise variance of the fine bins ``rows, cols`` [(e-/s)**2].

    From the FFI uncertainty of each bin's own valid pixels, ``sum(sigma**2) /
    count**2``: beside a saturated star the tile's RMS pixel uncertainty, which
    the detection uses, is ~30x a bin's own. Without an uncertainty image,
    ``fallback`` (the tile's predicted variance of each bin) at those bins.
    """
    if uncertainty is None:
        return np.asarray(fallback, dtype=float)[rows, cols]
    fb = context.pixel_bin
    within = np.arange(fb)
    pr = (rows[:, None] * fb + within)[:, :, None]
    pc = (cols[:, None] * fb + within)[:, None, :]
    variance = np.nan_to_num(np.square(uncertainty[pr, pc], dtype=float), posinf=0.0)
    total = np.sum(variance * context.weights[pr, pc], axis=(1, 2))
    count = np.maximum(context.count[rows, cols].astype(float), 1.0)
    return total / count**2


def _fill_bins(probe, kept, context: FineContext, bin_noise) -> np.ndarray:
    """Per kept tile, its probe bins' ``fill - value`` and their own noise variance.

    ``probe``: `_fill_probe`'s result; ``bin_noise``: `_bin_noise` at its bins.
    Returns an array of float32, shape (len(kept), 2, tile, tile): NaN on the
    bins not probed (`FineFrame.fill_probe`).
    """
    t, nt = context.tile, context.ntiles
    out = np.full((kept.size, 2, t, t), np.nan, dtype=np.float32)
    rows, cols, difference = probe[:3]
    if not rows.size:
        return out
    slot = np.full(nt * nt, -1)
    slot[kept] = np.arange(kept.size)
    at = slot[(rows // t) * nt + cols // t]
    out[at, 0, rows % t, cols % t] = difference
    out[at, 1, rows % t, cols % t] = bin_noise
    return out


def _fill_local(probe, kept, used_index, context: FineContext, scale) -> np.ndarray:
    """Each hole bin's fill variance from its nearest probe bins [(e-/s)**2], NaN: none.

    ``probe``: the work area's `FineFrame.fill_probe` blocks, shape (nframes,
    ntiles**2, 2, tile, tile), by frame index; ``kept`` (the blocks whose frame
    probed them, shape (len(used_index), ntiles**2)) and ``used_index`` as
    for `assemble_fine`; ``scale``: `_fill_scale` (None: 1 for every class).
    Per probe bin, over the frames whose tile was kept, the variance of ``fill -
    value`` about its time mean (a bin's error constant in time is left out, as
    a light curve's shape does not see it) less the mean of the bin's own noise
    variance, over the scale of its depth class once hidden. A hole bin of a
    kept tile takes the mean of that over the probe bins at most one bin farther
    than the nearest (within `_FILL_REACH` bins), times the scale of its own
    class: the fill error changes by orders of magnitude within a tile (beside a
    ridge crossing a star halo, next to flat sky). Unbiased, so negative about
    as often as positive where the fill misses nothing (`_fill_map` floors it).
    """
    nf, t, nt = context.ok.shape[0], context.tile, context.ntiles
    sums = np.zeros((4, nf, nf))  # frames, sum, sum of squares, noise
    tiles = np.flatnonzero(kept.any(axis=0))
    for tile in tiles:
        pos = np.flatnonzero(kept[:, tile])
        data = np.asarray(probe[used_index[pos], tile], dtype=float)
        seen = np.isfinite(data[:, 0])
        d, noise = np.where(seen, data[:, 0], 0.0), np.where(seen, data[:, 1], 0.0)
        i, j = divmod(int(tile), nt)
        at = (slice(None), slice(i * t, (i + 1) * t), slice(j * t, (j + 1) * t))
        sums[at] += [seen.sum(axis=0), d.sum(axis=0), (d**2).sum(axis=0), noise.sum(axis=0)]
    frames, total, squares, noise = sums
    measured = frames >= 2
    m = np.where(measured, frames, 2.0)
    spread = (squares - total**2 / m) / (m - 1) - noise / m
    table = np.concatenate([[1.0], np.ones(FILL_CLASSES) if scale is None else scale])
    table = np.where(table > 0, table, 1.0)
    hidden = context.ok & ~context.ring
    ring_class = depth_class(ndimage.distance_transform_edt(~hidden))
    spread = np.where(measured, spread / table[ring_class], np.nan)
    out = np.full((nf, nf), np.nan)
    for tile in tiles:
        i, j = divmod(int(tile), nt)
        hole_rows, hole_cols = np.nonzero(~context.ok[i * t : (i + 1) * t, j * t : (j + 1) * t])
        if not hole_rows.size:
            continue
        r0, c0 = max(i * t - _FILL_REACH, 0), max(j * t - _FILL_REACH, 0)
        window = spread[r0 : (i + 1) * t + _FILL_REACH, c0 : (j + 1) * t + _FILL_REACH]
        near_rows, near_cols = np.nonzero(np.isfinite(window))
        if not near_rows.size:
            continue
        hole_rows, hole_cols = hole_rows + i * t, hole_cols + j * t
        distance = np.hypot(
            (hole_rows - r0)[:, None] - near_rows, (hole_cols - c0)[:, None] - near_cols
        )
        nearest = distance <= distance.min(axis=1, keepdims=True) + 1
        values = window[near_rows, near_cols]
        local = (nearest * values).sum(axis=1) / nearest.sum(axis=1)
        within = distance.min(axis=1) <= _FILL_REACH
        own = table[context.hole_class[hole_rows, hole_cols]]
        out[hole_rows[within], hole_cols[within]] = local[within] * own[within]
    return out


#: Farthest probe bin [fine bins] whose fill error a hole bin takes (`_fill_local`).
_FILL_REACH = 16


#: Every this many rows, the pixels that calibrate `_tile_misfit`'s noise on a frame.
_MISFIT_ROWS = 8


#: Most tiles `_tile_misfit` measures at once. Its ~20 arrays of 32 KB per tile (float64,
#: 64 x 64 px) then stay in the CPU's cache: 8 or 16 tiles are ~2x faster than 140.
_MISFIT_BATCH = 16


#: Pixel distances at which `_lag_covariance` measures the misfit's covariance.
MISFIT_LAGS = (1, 2, 3, 4)


@functools.lru_cache(maxsize=512)
def _tile_weights(start: int, side: int, spacing: int, n: int) -> tuple[np.ndarray, int]:
    """Keys weights of the pixels ``start .. start + side - 1`` (0-based) on the centres
    of ``spacing``-px bins of an ``n``-px axis, on their support, and its first bin.
    Cached (every frame asks for the same tiles): the array is read-only."""
    centres = spacing * np.arange(n // spacing) + (spacing - 1) / 2
    weights = interpolate.spatial_weights(np.arange(start, start + side, dtype=float), centres)
    lo, hi = interpolate.support(weights)
    weights = np.ascontiguousarray(weights[:, lo:hi])
    weights.flags.writeable = False
    return weights, lo


def _calibration_plane(grid: np.ndarray, spacing: int) -> np.ndarray:
    """The coarse plane ``grid`` (``spacing``-px bins) interpolated with the Keys kernel
    to the pixels of every `_MISFIT_ROWS`-th row, shape (n // `_MISFIT_ROWS`, n).

    The weights are the same for every frame (`_calibration_weights`; made each
    frame, they took 2 of its 5 ms). The product is dense: each pixel takes 4
    bins per axis, but as banded products (``scipy.sparse``) it would save ~2 ms
    of a frame's ~300 in the fine layer (``bench_fine_products.py``).
    """
    (wr, r0), (wc, c0) = _calibration_weights(grid.shape[0] * spacing, spacing)
    return wr @ grid[r0 : r0 + wr.shape[1], c0 : c0 + wc.shape[1]] @ wc.T


@functools.lru_cache(maxsize=8)
def _calibration_weights(n: int, spacing: int) -> tuple[tuple[np.ndarray, int], ...]:
    """Keys weights of `_calibration_plane`'s rows and of every column of an ``n``-px
    CCD on the centres of ``spacing``-px bins, each on its support with its first
    bin (read-only, as `_tile_weights`)."""
    centres = spacing * np.arange(n // spacing) + (spacing - 1) / 2
    out = []
    for pixels in (np.arange(_MISFIT_ROWS // 2, n, _MISFIT_ROWS), np.arange(n)):
        weights = interpolate.spatial_weights(pixels, centres)
        lo, hi = interpolate.support(weights)
        weights = np.ascontiguousarray(weights[:, lo:hi])
        weights.flags.writeable = False
        out.append((weights, lo))
    return tuple(out)


#: Fewest probe bins (summed over tiles and frames) that measure the growth of the fill
#: error from one depth class to the next.
_FILL_MIN_BINS = 32


#: Largest growth of the fill error's variance from one depth class to the next (depth
#: doubled): measured (a bias growing with the square of the depth) ...
_FILL_MAX_GROWTH = 16.0


#: ... and where it is extrapolated past the probe's depth (an error growing linearly).
_FILL_MAX_EXTRAPOLATED = 4.0


def _fill_scale(by_class: np.ndarray) -> np.ndarray | None:
    """The fill error's variance per depth class, relative to its mean over the probe bins.

    ``by_class``: rows of `_fill_misfit`'s per-class sums and bin counts, one per
    tile and frame. The growth from class ``k - 1`` to ``k`` is the ratio of the
    two classes' mean squared errors over the rows that probe both (the same
    holes: a bleed column's ring holds only class 1, a star halo's several, and
    their errors differ), within 1 (a bin farther from the data is filled no
    better; below 1 is the fill's own noise, averaged over more bins, or the
    probe's) and `_FILL_MAX_GROWTH`. With fewer than `_FILL_MIN_BINS` bins of
    either class the previous growth continues (at most `_FILL_MAX_EXTRAPOLATED`,
    1 if none was measured): the probe reaches half as deep as the holes, so the
    deepest classes are extrapolated. None when the pooled error is not
    positive (nothing to quote).
    """
    by_class = np.asarray(by_class, dtype=float).reshape(-1, 2 * FILL_CLASSES)
    sums, count = by_class[:, :FILL_CLASSES], by_class[:, FILL_CLASSES:]
    if count.sum() == 0 or sums.sum() <= 0:
        return None
    scale, growth = np.ones(FILL_CLASSES), 1.0
    for k in range(1, FILL_CLASSES):
        both = (count[:, k - 1] > 0) & (count[:, k] > 0)
        shallow, deep = count[both, k - 1].sum(), count[both, k].sum()
        if min(shallow, deep) >= _FILL_MIN_BINS:
            before = sums[both, k - 1].sum() / shallow
            after = sums[both, k].sum() / deep
            ratio = after / before if before > 0 else 1.0
            scale[k] = scale[k - 1] * np.clip(ratio, 1.0, _FILL_MAX_GROWTH)
            growth = min(float(np.clip(ratio, 1.0, _FILL_MAX_GROWTH)), _FILL_MAX_EXTRAPOLATED)
        else:
            scale[k] = scale[k - 1] * growth
    total = count.sum(axis=0)
    return (scale * total.sum() / (total @ scale)).astype(np.float32)


def _fill_amplitude(by_class: np.ndarray, scale: np.ndarray) -> float:
    """A tile's pooled fill variance at relative scale 1 (`_fill_scale`) [(e-/s)**2].

    The squared errors summed over its probe bins and frames, floored at 0, over the
    sum of the scales of those bins' classes: their mean, had every bin the scale 1.
    """
    by_class = np.asarray(by_class, dtype=float).reshape(-1, 2 * FILL_CLASSES)
    total = max(0.0, float(by_class[:, :FILL_CLASSES].sum()))
    weight = float(by_class[:, FILL_CLASSES:].sum(axis=0) @ scale)
    return total / weight if weight > 0 else 0.0


def _misfit_correlation(lag1: np.ndarray, lag2: np.ndarray) -> np.ndarray:
    """How fast the missed structure decorrelates, along rows and along columns.

    The covariance of pixels two apart over that of neighbours, from pooled
    estimates ``lag1`` and ``lag2`` (shape (2,): between row neighbours, between
    column neighbours), within 0..1; 0 where the first is not positive. For a
    Gaussian correlation ``rho(d) = g**(d**2 / 3)`` this ratio is ``g`` itself,
    and `~lk_scatterlight.finelayer.FineLayer.evaluate_sum` correlates the
    misfits of an aperture's pixels so.
    """
    lag1, lag2 = np.asarray(lag1, dtype=float), np.asarray(lag2, dtype=float)
    ratio = np.divide(lag2, lag1, out=np.zeros(2), where=lag1 > 0)
    return np.clip(ratio, 0.0, 1.0)


def _misfit_parts(lags: np.ndarray) -> tuple[float, np.ndarray, float, np.ndarray]:
    """The missed structure in two parts: one shared over many pixels, one within a bin.

    ``lags``: pooled `_lag_covariance` estimates, shape (len(`MISFIT_LAGS`), 2):
    at each lag, between row neighbours and between column neighbours. A
    fine bin's value is off by an amount its pixels share (the bin cannot
    follow a ridge's profile, and its neighbours are off alike): that part's
    covariance stays high for several pixels. What changes within a bin
    falls off within a pixel or two. So along each direction, a Gaussian
    ``V g**(d**2 / 3)`` is fitted (`_gaussian_tail`) through the covariances
    at lags 2 and beyond, where the short part has died out, if they are all
    positive: the **long** part, its variance ``V`` at lag 0 and correlation
    ``g`` per direction. Across a ridge or an edge the covariances change
    sign (the profile's misfit does, from bin to bin) and no Gaussian fits:
    there the long part correlates as the whole misfit does between lags 1
    and 2 (`_misfit_correlation`). Its lag-1 covariance is at most the
    measured one. The **short** part is what the lag-1 covariance holds
    beyond the long part's, with the correlation of what is left at lags 1
    and 2 (`_misfit_correlation`). The variances are those of the direction
    whose lag-1 covariance is larger (the one along the structure, where the
    misfit is not cut short by neighbours that differ).

    Returns
    -------
    short, short_corr, long, long_corr : float, ndarray (2,), float, ndarray (2,)
        The two parts' variances (>= 0, in the units of ``lags``) and their
        correlations ``g`` along rows and along columns (0..1).
    """
    lags = np.asarray(lags, dtype=float).reshape(len(MISFIT_LAGS), 2)
    d2 = np.square(MISFIT_LAGS, dtype=float) / 3
    fits = [_gaussian_tail(lags[1:, axis], d2[1:]) for axis in (0, 1)]
    axis = int(np.argmax(lags[0]))
    first = max(0.0, float(lags[0, axis]))
    variance, g = fits[axis]
    long = min(variance, first / g ** d2[0]) if g > 0 else 0.0
    long = float(long)
    long_corr = np.zeros(2)
    if long > 0:
        tails = np.array([g for _, g in fits])
        long_corr = np.where(tails > 0, tails, _misfit_correlation(lags[0], lags[1]))
    # The long part's covariance at lags 1 and 2 in each direction, and what is left.
    shared = long * long_corr[None, :] ** d2[:2, None]
    rest = lags[:2] - shared
    short = max(0.0, first - float(shared[0, axis]))
    return short, _misfit_correlation(rest[0], rest[1]), long, long_corr


def _gaussian_tail(cov: np.ndarray, d2: np.ndarray) -> tuple[float, float]:
    """``(V, g)`` of ``V g**d2`` fitted to ``cov`` (least squares on the logarithm; g
    within 0..1) from its last rise on (a covariance below the next one still holds
    a part that changes sign within a bin); (0, 0) unless every ``cov`` is positive
    (a part that has died out by the last lag is not shared over an aperture)."""
    if not np.all(cov > 0):
        return 0.0, 0.0
    rises = np.flatnonzero(cov[:-1] < cov[1:])
    start = min(int(rises[-1]) + 1, cov.size - 2) if rises.size else 0
    slope, intercept = np.polyfit(d2[start:], np.log(cov[start:]), 1)
    if slope >= 0:  # flat: the mean is the fit
        return float(np.exp(np.mean(np.log(cov[start:])))), 1.0
    return float(np.exp(intercept)), float(np.exp(slope))
