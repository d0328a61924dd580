"""The fine layer from every frame's residual (`assemble_fine`).

The kept blocks are compressed over time and stored with their errors.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ... import interpolate
from ...finelayer import FineLayer, compress_tile
from .context import FILL_CLASSES, MISFIT_COLUMNS, MISFIT_WIDTH, FineContext
from .misfit import (
    _fill_amplitude,
    _fill_local,
    _fill_scale,
    _misfit_correlation,
    _misfit_parts,
)
from .persist import persistent_blocks
from .residual import _noise_spread


def _mean_squared_weight(pixel_bin: int) -> float:
    """Mean over a bin's pixels of the sum of their squared Keys weights on the bins
    (2-D): the factor from a bin's variance to the variance it gives a pixel."""
    centres = pixel_bin * np.arange(16) + (pixel_bin - 1) / 2
    pixels = np.arange(6 * pixel_bin, 7 * pixel_bin, dtype=float)
    weights = interpolate.spatial_weights(pixels, centres)
    return float(np.mean(np.sum(weights**2, axis=1)) ** 2)


def assemble_fine(
    fine: np.ndarray,
    kept: np.ndarray,
    sigma: np.ndarray,
    used_index: np.ndarray,
    groups: Sequence[np.ndarray],
    context: FineContext,
    tolerance: float = 0.01,
    calibration: np.ndarray | None = None,
    misfit: np.ndarray | None = None,
    fill_probe: np.ndarray | None = None,
    chi2: np.ndarray | None = None,
) -> FineLayer | None:
    """Gather the kept tiles of the used frames into a factored `FineLayer`, tile by tile.

    Each tile's blocks (over the planes where it was kept) are read from the
    work area and factored (`~lk_scatterlight.finelayer.compress_tile`), so
    memory holds one tile's blocks at a time.

    Parameters
    ----------
    fine : ndarray, shape (nframes, ntiles**2, tile, tile)
        Work-area blocks (memory map), by frame index; only kept ones are read.
    kept : ndarray of bool, shape (len(used_index), ntiles**2)
        Which tiles each used frame kept.
    sigma : ndarray of float32, shape (len(used_index), ntiles**2)
        Their fine-bin errors.
    used_index : ndarray of int
        Frame index of each used frame, in cube order.
    groups : sequence of ndarray of int
        Positions among the used frames of each plane's frames. A tile kept
        in any frame of a plane is averaged over the plane's frames (zero
        where a frame did not keep it).
    context : `FineContext`
    tolerance : float
        Factoring tolerance (see `~lk_scatterlight.finelayer.compress_tile`).
    calibration : ndarray, shape (len(used_index),), optional
        Each used frame's `FineFrame.calibration` (0 or absent: 1). The factoring
        uses ``sigma`` (the noise the blocks hold); the layer quotes
        ``sigma / sqrt(calibration)`` (the noise that varies from frame to frame).
    misfit : ndarray, shape (len(used_index), ntiles**2, ncolumns), optional
        Each used frame's `FineFrame.misfit` of its kept tiles, ``ncolumns``
        `MISFIT_WIDTH` (3, 5 or `MISFIT_COLUMNS`: fewer measures) (the structure
        the model misses, per pixel, along rows and columns, the error of
        a filled bin, the first two at a lag of 2 px, the fill's error
        per depth class, the first two at lags of 3 and 4 px). Per tile, each
        direction's estimates are summed over the frames that kept the tile
        (so their noise averages out before the larger is taken) and the
        larger, floored at 0, is divided by the blocks' summed mean square:
        each block quotes that fraction ``gamma`` of its own mean square as
        more variance (the missed structure grows with the structure it
        holds), divided by the mean over a bin of the squared interpolation
        weights so that the evaluated variance of a pixel gets it. The fill
        errors are pooled the same way (summed over the frames, floored at 0,
        over the blocks' power) into each block's ``fill_error``, quoted on the
        tile's holes (the bins `make_fine_context` marks as holes) on
        top of ``error``: a fill's error is smooth over the hole, so it too is
        divided by that mean squared weight. With the per-class columns, the
        layer's ``fill_scale`` (`_fill_scale`, pooled over every kept tile and
        frame) says how the error grows with a bin's depth in its hole, a
        tile's pooled error is taken per unit of that scale (`_fill_amplitude`),
        and the hole images hold each bin's `depth_class`. The layer keeps the missed
        structure's share of each block's error apart (``misfit``) with its
        correlation ratios (`_misfit_correlation` of the pooled lag-1 and
        lag-2 estimates), for aperture sums. With the lags of 3 and 4 px
        (`MISFIT_WIDTH` columns), that share is split in two (`_misfit_parts`
        of the pooled estimates): the layer's ``misfit`` keeps the part that
        changes within a bin, ``long_misfit`` the part shared over several
        pixels, each with its own correlations.
    fill_probe : ndarray, shape (nframes, ntiles**2, 2, tile, tile), optional
        Work-area `FineFrame.fill_probe` blocks (memory map), by frame index;
        with the per-class columns of ``misfit``. Each hole bin then quotes its
        own fill variance (`_fill_local`: from the probe bins nearest to it, the
        time mean removed) and not its tile's pooled one (`_fill_map`).
    chi2 : ndarray, shape (len(used_index), ntiles**2), optional
        Each used frame's tile statistic (`FineFrame.chi2`). ``kept`` then holds
        the frames' candidates, and a block below the threshold is kept only
        where its tile passes it in enough frames (`persistent_blocks`); the
        frames measured the errors (``misfit``, ``fill_probe``) only of the
        blocks above it, and a tile's pooled errors are those frames' (a share
        of their blocks' power, quoted on every block of the tile as above).

    Returns
    -------
    layer : `~lk_scatterlight.finelayer.FineLayer` or None
        None if no frame kept a tile.
    """
    measured = kept  # the blocks whose frame measured their errors (misfit, fill)
    if chi2 is not None:
        measured = kept & (chi2 > context.threshold)
        kept = persistent_blocks(kept, chi2, context.threshold)
    nt, t = context.ntiles, context.tile
    plane_of = np.empty(len(used_index), dtype=np.int64)
    size = np.empty(len(groups))
    for p, members in enumerate(groups):
        plane_of[members] = p
        size[p] = len(members)
    binned = bool(size.max() > 1) if size.size else False
    index = {name: [] for name in ("tile_row", "tile_col", "plane", "error", "rank")}
    basis, coef, nbasis, ncoef = [], [], 0, 0
    scale = np.ones(len(used_index))
    if calibration is not None:
        calibration = np.asarray(calibration, dtype=float)
        scale = 1 / np.sqrt(np.where(calibration > 0, calibration, 1.0))
    per_pixel = _mean_squared_weight(context.pixel_bin)
    spread = _noise_spread(context.pixel_bin)  # bins that share a bin's (smoothed) noise
    by_depth = misfit is not None and misfit.shape[-1] >= MISFIT_COLUMNS
    fill_scale = _fill_scale(misfit[..., 5:MISFIT_COLUMNS][measured]) if by_depth else None
    holes, fill_error, hole_index, fill_map = [], [], [], []
    local = None
    if fill_probe is not None and by_depth:
        local = _fill_local(fill_probe, measured, used_index, context, fill_scale)
        by_class_scale = np.ones(FILL_CLASSES) if fill_scale is None else fill_scale
    misfit_error, misfit_corr, long_error, long_corr = [], [], [], []
    two_part = misfit is not None and misfit.shape[-1] >= MISFIT_WIDTH
    for tile in np.flatnonzero(kept.any(axis=0)):
        pos = np.flatnonzero(kept[:, tile])
        blocks = np.asarray(fine[used_index[pos], tile], dtype=np.float32)
        gamma = fill = wide = 0.0
        corr = wide_corr = np.zeros(2)
        if misfit is not None:  # pooled over frames, then the direction that keeps most
            # ... over the frames that measured them: a share of the blocks' power.
            at = measured[pos, tile]
            pos_measured = pos[at]
            power = float(np.sum(np.mean(np.square(blocks[at], dtype=float), axis=(1, 2))))
            rows = _significant_lags(misfit[pos_measured, tile], _LAG_SHRINK if spread > 1 else 0.0)
            pooled = np.sum(rows[:, :2], axis=0, dtype=float)
            gamma = max(0.0, pooled.max()) / power if power > 0 else 0.0
            if two_part and power > 0:
                gamma, corr, wide, wide_corr = _misfit_split(rows, power)
            if fill_scale is not None and power > 0:  # a bin of relative scale 1, per frame
                by_class = misfit[pos_measured, tile, 5:MISFIT_COLUMNS]
                amplitude = _fill_amplitude(by_class, fill_scale)
                fill = amplitude * pos_measured.size / power  # summed over frames, as power
            elif misfit.shape[-1] > 2 and power > 0:
                fill = max(0.0, float(np.sum(misfit[pos_measured, tile, 2], dtype=float))) / power
            if misfit.shape[-1] > 3 and not two_part:
                corr = _misfit_correlation(pooled, np.sum(rows[:, 3:5], axis=0))
        i, j = divmod(int(tile), nt)
        hole = ~context.ok[i * t : (i + 1) * t, j * t : (j + 1) * t]
        depth = context.hole_class[i * t : (i + 1) * t, j * t : (j + 1) * t]
        relative = None
        if local is not None and hole.any() and power > 0:  # each bin its own fill error
            bins = local[i * t : (i + 1) * t, j * t : (j + 1) * t]
            amplitude, relative = _fill_map(bins, hole)
            fill = amplitude * pos_measured.size / power if relative is not None else fill
        if fill > 0 and hole.any():  # the tile's holes (their depth classes), quoted
            holes.append(depth if fill_scale is not None else hole)
            if local is not None:  # without a probe bin near: the tile's, by class
                by_class = np.concatenate([[0.0], by_class_scale])[depth]
                fill_map.append(by_class if relative is None else relative)
        planes, where = np.unique(plane_of[pos], return_inverse=True)
        frame_error = sigma[pos, tile].astype(float)
        if binned:  # time bins: average over each plane's frames (0 where not kept)
            total = np.zeros((planes.size, t, t), dtype=np.float32)
            var, quoted = np.zeros(planes.size), np.zeros(planes.size)
            np.add.at(total, where, blocks)
            np.add.at(var, where, frame_error**2)
            np.add.at(quoted, where, (frame_error * scale[pos]) ** 2)
            blocks = total / size[planes][:, None, None].astype(np.float32)
            error, quoted = np.sqrt(var) / size[planes], np.sqrt(quoted) / size[planes]
        else:
            error, quoted = frame_error, frame_error * scale[pos]
        power = np.mean(np.square(blocks, dtype=float), axis=(1, 2)) / per_pixel
        misfit_error.append(np.sqrt(gamma * power))
        misfit_corr.append(np.broadcast_to(corr, (planes.size, 2)))
        long_error.append(np.sqrt(wide * power))
        long_corr.append(np.broadcast_to(wide_corr, (planes.size, 2)))
        has_fill = fill > 0 and hole.any()
        fill_error.append(np.sqrt(fill * power) if has_fill else np.zeros(planes.size))
        hole_index.append(np.full(planes.size, len(holes) - 1 if has_fill else -1))
        factors, images = compress_tile(blocks, error, tolerance, spread)
        noise, dropped = quoted**2, 0.0
        if factors is not None:  # the noise the factors keep, and structure they drop
            noise, dropped = _factored_noise(blocks, factors, error, quoted)
        quoted = np.sqrt(noise + (gamma + wide) * power + dropped / per_pixel)
        m = planes.size
        index["tile_row"].append(np.full(m, tile // nt))
        index["tile_col"].append(np.full(m, tile % nt))
        index["plane"].append(planes)
        index["error"].append(quoted)
        if factors is None:  # each block its own basis image, coefficient 1
            index["rank"].append(np.ones(m, dtype=int))
            coef.append(np.ones(m, dtype=np.float32))
            starts = (nbasis + np.arange(m), ncoef + np.arange(m))
        else:
            k = factors.shape[1]
            index["rank"].append(np.full(m, k))
            coef.append(factors.ravel())
            starts = (np.full(m, nbasis), ncoef + k * np.arange(m))
        index.setdefault("basis_start", []).append(starts[0])
        index.setdefault("coef_start", []).append(starts[1])
        basis.append(images)
        nbasis += images.shape[0]
        ncoef += coef[-1].size
    if not basis:
        return None
    return FineLayer(
        pixel_bin=context.pixel_bin,
        tile=t,
        basis=np.concatenate(basis),
        coef=np.concatenate(coef),
        **{name: np.concatenate(values) for name, values in index.items()},
        fill_error=np.concatenate(fill_error),
        hole_index=np.concatenate(hole_index),
        holes=np.array(holes, dtype=np.uint8).reshape(-1, t, t),
        fill_scale=fill_scale if holes else None,
        fill_map=np.array(fill_map, np.float32).reshape(-1, t, t) if fill_map else None,
        misfit=np.concatenate(misfit_error) if misfit is not None else None,
        misfit_corr=np.concatenate(misfit_corr) if misfit is not None else None,
        long_misfit=np.concatenate(long_error) if two_part else None,
        long_corr=np.concatenate(long_corr) if two_part else None,
    )


def _factored_noise(
    blocks: np.ndarray, coef: np.ndarray, held: np.ndarray, quoted: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Per block, the noise variance of a fine bin's stored value once its tile is
    factored, and the variance of the structure the factoring dropped.

    Factoring a tile's ``m`` blocks of ``n`` bins to rank ``k`` keeps the noise
    that falls in the kept basis images and coefficients, on average a fraction
    ``f = k / m + k / n - k**2 / (m n)`` of each bin's noise variance (0.04 for
    one image over 26 planes of 16 x 16 bins): the rest is dropped with the
    residual. What the factoring drops beyond that noise is structure it did not
    keep: a block's residual mean square less ``(1 - f)`` of its noise variance,
    pooled over the tile's blocks (so one block's noise does not pass for
    structure) and floored at 0, or the block's own where it stands out (by more
    than 4 standard deviations of a noise residual's mean square over ``n``
    bins; `compress_tile` lets a block's residual reach that). That structure is
    smooth over neighbouring bins, as the missed structure is, so the caller
    quotes it as the misfit (over the mean squared interpolation weight).

    Parameters
    ----------
    blocks : ndarray, shape (m, tile, tile)
        The tile's blocks [e-/s].
    coef : ndarray, shape (m, k)
        Their coefficients on `compress_tile`'s orthonormal basis images.
    held : ndarray, shape (m,)
        1-sigma noise of one fine bin of each block, all it holds [e-/s].
    quoted : ndarray, shape (m,)
        The part of it the layer quotes (what varies from frame to frame) [e-/s].

    Returns
    -------
    noise, dropped : ndarray, shape (m,)
        Per bin of each block [(e-/s)**2].
    """
    m, k = coef.shape
    n = blocks[0].size
    kept = k / m + k / n - k * k / (m * n)
    total = np.sum(np.square(blocks, dtype=float), axis=(1, 2))
    residual = (total - np.sum(np.square(coef, dtype=float), axis=1)) / n
    held2 = np.square(held, dtype=float)
    excess = residual - (1 - kept) * held2
    pooled = max(float(np.mean(excess)), 0.0)
    own = np.where(excess > 4 * np.sqrt(2 / n) * held2, excess, 0.0)
    return kept * np.square(quoted, dtype=float), np.maximum(own, pooled)


#: How many standard errors of a tile's pooled lag covariance `_significant_lags` takes
#: off it. On the structured simulated field (12 frames, 2-px bins; actual/quoted of
#: single pixels, ridge compact | shadow edge dense): none 0.51 | 1.42, 1.0: 0.61 | 1.54,
#: 1.25: 0.65 | 1.57, 1.5: 0.69 | 1.60 (the shadow edge's actual error is mostly in
#: dark frames without a block, which no misfit covers).
_LAG_SHRINK = 1.25


def _significant_lags(rows: np.ndarray, shrink: float = _LAG_SHRINK) -> np.ndarray:
    """A tile's `FineFrame.misfit` rows with each lag covariance column shrunk towards 0.

    A frame's lag covariance over a tile's ~1000 pixel pairs scatters by about the
    pixels' noise variance over 30, and with 2-px bins that is several times the
    missed structure (on the structured simulated field, ridge tiles: 0.005-0.01
    per frame against 0.001-0.003 (e-/s)**2 measured against the truth). Pooled
    over the frames that kept the tile, and the larger direction taken, that
    noise passes for misfit, which is then quoted in proportion to each block's
    power. So each lag column's sum over the frames is moved towards 0 by
    ``shrink`` times its standard error (from the frames' scatter, which the
    structure's change with the light only makes larger): what stands out of
    the noise stays, the rest goes (the shrunk sum is spread evenly over the
    frames: the callers only sum them). With fewer than 3 frames
    the scatter is not measured and the rows are returned as they are, as
    with ``shrink`` 0: `assemble_fine` shrinks only layers smoothed along the
    structure (2-px bins). With 4-px bins the misfit stands further out of
    the noise, and shrinking it there moved other ratios the wrong way
    (``bench_errors.py --quick``, structured field, compact cube: open sky
    pixels 1.03 -> 1.12, straps 1.00 -> 1.08).
    """
    m, width = rows.shape
    if m < 3 or shrink <= 0:
        return rows
    rows = np.asarray(rows, dtype=float)
    lags = [0, 1, 3, 4, *range(MISFIT_COLUMNS, width)]
    lags = [c for c in lags if c < width]
    total = rows[:, lags].sum(axis=0)
    error = np.sqrt(m * rows[:, lags].var(axis=0, ddof=1))
    shrunk = np.sign(total) * np.maximum(np.abs(total) - shrink * error, 0.0)
    out = rows.copy()
    out[:, lags] = shrunk / m
    return out


def _misfit_split(rows: np.ndarray, power: float) -> tuple[float, np.ndarray, float, np.ndarray]:
    """A tile's misfit shares (`_misfit_parts`) per unit of its blocks' summed power.

    ``rows``: the tile's `FineFrame.misfit` rows (`MISFIT_WIDTH` columns), one per
    frame that kept it; their lag covariances are summed over the frames, as
    ``power`` is. Returns the within-bin part's share and correlations, then the
    shared part's.
    """
    pooled = np.sum(rows, axis=0, dtype=float)
    lags = np.stack([pooled[:2], pooled[3:5], *pooled[MISFIT_COLUMNS:].reshape(-1, 2)])
    short, short_corr, wide, wide_corr = _misfit_parts(lags)
    return short / power, short_corr, wide / power, wide_corr


def _fill_map(bins: np.ndarray, hole: np.ndarray) -> tuple[float, np.ndarray | None]:
    """A tile's fill amplitude and each of its hole bins' fill variance relative to it.

    ``bins``: the tile's `_fill_local` [(e-/s)**2], unbiased estimates (NaN: no
    probe bin near); ``hole``: its hole bins. The amplitude is their mean (those
    without a probe bin near taking the mean of the others), floored at 0 as a
    whole and not bin by bin (each bin floored would add the probe's noise
    where the fill misses nothing); each bin's share of it follows its estimate
    floored at 0; 0 off the holes. ``(0, None)`` when no hole bin has a probe
    bin near (the tile keeps its pooled error, by class).
    """
    values = bins[hole]
    known = np.isfinite(values)
    relative = np.zeros(hole.shape, dtype=np.float32)
    if not known.any():
        return 0.0, None
    values = np.where(known, values, values[known].mean())
    amplitude, positive = float(values.mean()), np.maximum(values, 0.0)
    if amplitude <= 0:
        return 0.0, relative
    relative[hole] = positive / positive.mean()
    return amplitude, relative
