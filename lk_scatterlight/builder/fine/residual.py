"""One frame's fine residual (`fine_residual`).

Binned on the fine grid, calibrated, tested per tile, filled and smoothed.
"""

from __future__ import annotations

import functools

import numpy as np

from ..strap_photometry import strap_sums as _strap_sums
from .along import smooth_window
from .context import FineContext, FineFrame
from .fill import (
    _fill_along_structure,
    _fill_isotropic,
    _fill_profiles,
    _pieces_touching,
    _profile_pieces,
)
from .misfit import _bin_noise, _fill_bins, _fill_misfit, _fill_probe, _tile_misfit
from .persist import candidate_level

#: Fewest tiles with data whose median chi-square calibrates a frame's noise.
_CALIBRATION_TILES = 64


def fine_residual(
    diff: np.ndarray,
    coarse_value: np.ndarray,
    coarse_error: np.ndarray,
    coarse_npix: np.ndarray,
    context: FineContext,
    uncertainty: np.ndarray | None = None,
    strap_sums: np.ndarray | None = None,
) -> FineFrame:
    """The significant fine-grid residual tiles of one frame (see the module docstring).

    Parameters
    ----------
    diff : ndarray of float32, shape (2048, 2048)
        Static-subtracted frame [e-/s].
    coarse_value, coarse_error : ndarray, shape (nb, nb)
        The frame's coarse plane (filled, curvature-corrected) and its errors.
    coarse_npix : ndarray of int, shape (nb, nb)
        Pixels in each coarse bin.
    context : `FineContext`
    uncertainty : ndarray, shape (2048, 2048), optional
        The FFI uncertainty image [e-/s].
    strap_sums : ndarray, shape (len(context.strap_idx), 2), optional
        This frame's ``sum(strap * reference)`` and ``sum(reference**2)`` of
        those straps; their ratio is the frame's strap response (1 if absent).

    Returns
    -------
    frame : `FineFrame`
    """
    t, nt = context.tile, context.ntiles
    sums = _frame_strap_sums(diff, context, strap_sums)
    response = _strap_response(context, sums, _reference_noise(context, uncertainty))
    mean = _masked_bin_sums(diff, context, response)
    mean *= context.inv_count
    coarse = np.nan_to_num(coarse_value).astype(np.float32)
    # Dense though banded (4 coarse bins a fine bin): as scipy.sparse products it would
    # save ~1 ms of a frame's ~300 (``bench_fine_products.py``).
    model = context.to_fine @ coarse @ context.to_fine.T
    ok = context.ok
    nok = context.tile_bins
    labels, pieces = context.labels, context.pieces
    finite = np.isfinite(mean)
    if not finite.all():  # NaN pixels in this frame: those bins are holes too
        ok = ok & finite
        nok = ok.reshape(nt, t, nt, t).sum(axis=(1, 3))
        labels, pieces = _profile_pieces(~ok)
    mean -= model if context.sparse is None else context.sparse.to_fine @ coarse @ context.to_fine.T
    tile_sigma = _tile_pixel_sigma(coarse_error, coarse_npix, context, uncertainty)  # (nt, nt)
    noise = _Noise(tile_sigma, context)
    holes = context.holes if ok is context.ok else np.nonzero(~ok)
    r = mean
    r[holes] = 0
    _fill_isotropic(
        r, ok, holes, copy=False, first=context.first_fill if ok is context.ok else None
    )
    # Most tiles hold only noise, and their holes need no better fill than the first
    # guess. A hole's refill depends on valid bins only and changes only the hole
    # itself and, through the second differences below, the bins next to it: so only
    # the holes in or next to the tiles that come near the threshold are refilled.
    chi2 = _tile_chi2(r, context, tile_sigma)
    level = candidate_level(context.threshold)  # tiles above it are measured (candidates)
    near = chi2 / _calibration(chi2, nok, r, ok, noise) > 1 + _NEAR * (level - 1)
    if near.any():
        busy = ~ok & _grow_one(near.repeat(t, 0).repeat(t, 1))
        rows, cols = np.nonzero(busy)
        _fill_along_structure(r, ok, model, rows, cols)
        touch = _pieces_touching(busy, pieces)
        if touch.any():
            _fill_profiles(r, ok, model, noise.image, context.threshold, (labels, pieces[touch]))
    filled = r.copy()  # the fills, before the curvature step: `_fill_misfit` redoes them
    # Bin mean -> value at the bin centre: subtract (b**2 - 1) / 24 f'' (f'' per px**2).
    curvature = context.curvature if ok is context.ok else context.curvature * ok
    r -= _to_centres(r, curvature, context)

    chi2 = _tile_chi2(r, context, tile_sigma)
    calibration = _calibration(chi2, nok, r, ok, noise)
    chi2 = (chi2 / calibration).astype(np.float32)
    tile_sigma = tile_sigma * np.float32(np.sqrt(calibration))
    # Candidates too: the assembly keeps those of tiles that pass in enough frames.
    kept = np.flatnonzero(chi2.ravel() > level).astype(np.int32)
    along = _along_scale(context.pixel_bin)
    smoothing = _smooth_along_structure(r, model, kept, context.tile, along) if along else None
    gain = 1.0 if smoothing is None else smoothing[1]
    blocks = r.reshape(nt, t, nt, t).transpose(0, 2, 1, 3).reshape(nt * nt, t, t)[kept]
    # A fine bin's typical error in the tile: pixel sigma / sqrt(median valid pixels).
    sigma = tile_sigma.ravel()[kept] * np.sqrt(context.tile_inv_count[kept]) * gain
    # The layer's own errors are measured on the tiles that pass the threshold only: a
    # candidate's block is kept in few tiles (`persistent_blocks`), whose errors the
    # assembly pools over the frames where they passed.
    passed = chi2.ravel()[kept] > context.threshold
    full = kept[passed]
    misfit = _tile_misfit(diff, coarse_value, r, full, context, uncertainty, tile_sigma, smoothing)
    probe = _fill_probe(filled, ok, model, full, context, noise.image)
    own = 1.0  # the share of a probed bin's own noise left in its probe difference
    if smoothing is not None:
        probe, own = _smoothed_probe(probe, filled, r, model, curvature, context, along)
    fill = _fill_misfit(filled, ok, model, full, context, noise.image * own, calibration, probe)
    fill_noise = _bin_noise(uncertainty, context, *probe[:2], noise.image) * own
    measured = np.column_stack(
        [misfit[:, :2], fill[:, 0], misfit[:, 2:4], fill[:, 1:], misfit[:, 4:]]
    )
    misfit = np.zeros((kept.size, measured.shape[1]), dtype=np.float32)  # candidates: 0
    misfit[passed] = measured
    fill_probe = np.full((kept.size, 2, t, t), np.nan, dtype=np.float32)
    fill_probe[passed] = _fill_bins(probe, full, context, fill_noise)
    return FineFrame(
        kept,
        np.ascontiguousarray(blocks),
        sigma.astype(np.float32),
        chi2,
        float(calibration),
        misfit,
        fill_probe,
    )


#: Gaussian sigma [px] of the smoothing along the local structure in kept tiles, and the
#: largest fine bin [px] it is used with (see `_smooth_along_structure`). 16 px: on the
#: structured field (27 frames, compact cube) the ridge went from 3.2x to 3.0x the noise
#: floor (8 px before), the smooth field a little better; with 24 px the shadow edge went
#: from 4.8x to 7.8x.
_ALONG_PX, _ALONG_MAX_BIN = 16.0, 2


def _along_scale(pixel_bin: int) -> float:
    """Sigma [fine bins] of the smoothing along the structure; 0: none for this bin size."""
    return _ALONG_PX / pixel_bin if pixel_bin <= _ALONG_MAX_BIN else 0.0


def _along_weights(scale: float) -> np.ndarray:
    """The normalised Gaussian weights (sigma ``scale`` bins, to 2.5 sigma) of the smoothing."""
    reach = int(np.ceil(2.5 * scale))
    weights = np.exp(-0.5 * (np.arange(-reach, reach + 1) / scale) ** 2)
    return weights / weights.sum()


def _noise_spread(pixel_bin: int) -> float:
    """How many fine bins share one bin's noise after `_smooth_along_structure` (1: none).

    The sum over the bins along the structure of the squared correlation of
    their smoothed noise with one bin's: the weights' autocorrelation, squared
    and summed over the lags (~20 for sigma 8 bins). The factoring of a tile's
    blocks (`~lk_scatterlight.finelayer.compress_tile`) needs it to know how far
    noise alone scatters a block's residual.
    """
    scale = _along_scale(pixel_bin)
    if not scale:
        return 1.0
    weights = _along_weights(scale)
    rho = np.correlate(weights, weights, "full") / np.sum(weights**2)
    return float(np.sum(rho**2))


def _smooth_along_structure(
    r: np.ndarray, model: np.ndarray, kept: np.ndarray, tile: int, scale: float
) -> tuple[float, float]:
    """Smooth the kept tiles of the residual ``r`` in place along their local structure.

    A ridge or an edge varies across its direction and barely along it, so a
    Gaussian average (sigma ``scale`` bins) of samples taken along that
    direction keeps its profile and averages the bins' noise. That holds for
    the total field ``model + r`` (``model``: the coarse model's bin means), not
    for the residual alone: the coarse grid renders a ridge differently where
    it crosses a bin centre and between two, so the residual of a straight
    ridge is modulated along it with the coarse bins' period. The total is
    smoothed and the model subtracted again. The direction is the structure
    tensor's (gradients of the total weighted over a Gaussian window of
    ``scale`` bins); samples between bin centres come from a cubic spline,
    which keeps a profile a few bins wide (a linear one would flatten a
    ridge's peak by a few %). Where nothing stands out the direction is
    arbitrary and the average is an ordinary smoothing of noise on a smooth
    field (its change over the average is near linear, which the average
    keeps). A sample beyond the CCD's edge repeats the edge's nearest value
    unless that moves it more than a bin across the structure; then it is read
    where its line leaves the CCD (`.along._samples_inside`): the nearest value
    alone bent a ridge leaving the CCD by up to a quarter of its height over a
    corner tile, and leaving those samples out, or the same reach on the other
    side, made the smooth field's CCD edges worse (``bench_fine.py``
    ``--smooth``: 1.2x -> 1.4x and 1.3x the noise floor).

    Only worth it where the bins resolve the structure: with 4-px bins the
    grid's own error on a 12-px ridge (~0.4 % of its height, `bench_fine.py`'s
    ``grid``) exceeds the noise the smoothing removes; with 2-px bins it is ~10x
    smaller and the noise of a 2-px bin dominates.

    Returns
    -------
    own, gain : float
        The weight a bin's own mean keeps in its smoothed value, and the factor
        on a bin's noise (``sqrt(sum(w**2)) / sum(w)`` of the weights): the
        smoothed bins' typical error over the unsmoothed ones'. (1, 1) if
        nothing is kept.
    """
    if kept.size == 0:
        return 1.0, 1.0
    weights = _along_weights(scale)
    source = r.copy()
    for tile_index in kept.tolist():
        block, window, inner = _tile_window(tile_index, r.shape[0], tile, weights.size)
        total = source[window] + model[window].astype(float)
        r[block] = smooth_window(total, inner, weights, scale) - model[block]
    return float(weights[weights.size // 2]), float(np.sqrt(np.sum(weights**2)))


def _tile_window(tile_index: int, n: int, tile: int, nweights: int):
    """Tile ``tile_index``'s bins, the window around it that its smoothing reads, and the
    tile within that window (slices on an (n, n) grid of ``tile`` x ``tile`` tiles)."""
    i, j = divmod(tile_index, n // tile)
    margin = nweights // 2 + 2
    r0, r1 = max(i * tile - margin, 0), min((i + 1) * tile + margin, n)
    c0, c1 = max(j * tile - margin, 0), min((j + 1) * tile + margin, n)
    block = (slice(i * tile, (i + 1) * tile), slice(j * tile, (j + 1) * tile))
    inner = (slice(i * tile - r0, (i + 1) * tile - r0), slice(j * tile - c0, (j + 1) * tile - c0))
    return block, (slice(r0, r1), slice(c0, c1)), inner


def _smoothed_probe(probe, filled, r, model, curvature, context: FineContext, scale: float):
    """The fill probe (`_fill_probe`) of the kept tiles as they are stored: smoothed.

    `_smooth_along_structure` averages a filled bin with the bins along the
    structure, most of them measured, which takes out most of a fill's error
    (on the structured simulated field, 2-px bins, the filled bins beside a
    bleed column and under stars on the glint ridge 3-4x in RMS). So the probe
    bins' fills are put in the frame's residual before the curvature step
    (``filled``), the curvature step is redone (`_to_centres`, as `fine_residual`
    does it: a sparse read's too) and the probe bins smoothed
    (each as its tile's smoothing would, from the same window; the rest of the
    tile is not needed); their difference from the smoothed residual ``r`` is
    the probe's. A probe bin's own measured value is in the smoothed
    residual with the weight the smoothing keeps for a bin's own mean
    (`_smooth_along_structure`'s ``own``): the second value returned, the share
    of its noise variance left in the difference (its probed neighbours along
    the structure add a little more, a small over-quote of the fill).
    """
    rows, cols, difference, hidden = probe
    if not rows.size:
        return probe, 1.0
    t, nt = context.tile, context.ntiles
    trial = filled.copy()
    trial[rows, cols] += difference.astype(trial.dtype)
    trial -= _to_centres(trial, curvature, context)
    weights = _along_weights(scale)
    tiles = (rows // t) * nt + cols // t
    smoothed = np.empty(rows.size, dtype=trial.dtype)
    for tile_index in np.unique(tiles).tolist():
        block, window, inner = _tile_window(tile_index, trial.shape[0], t, weights.size)
        bins = np.flatnonzero(tiles == tile_index)
        at_probe = rows[bins], cols[bins]
        at = (rows[bins] - block[0].start, cols[bins] - block[1].start)
        total = trial[window] + model[window].astype(float)
        smoothed[bins] = smooth_window(total, inner, weights, scale, at) - model[at_probe]
    smoothed = (smoothed - r[rows, cols]).astype(float)
    return (rows, cols, smoothed, hidden), float(weights[weights.size // 2]) ** 2


#: A tile whose statistic with the first fill of its holes is this fraction of the way
#: from pure noise (1) to the candidates' level (`candidate_level`) gets the fills along
#: the structure (and the holes next to it). Noise alone scatters by ~sqrt(2 / tile**2)
#: around 1 (0.09 for 16 x 16 bins): halfway to 1.2 (the default threshold's) is about
#: one of those, so ~15 % of the pure-noise tiles are refilled (on a 2-px grid with holes
#: every 40 px, a ridge across it: 0.1 s CPU more per frame than halfway to 2).
_NEAR = 0.5


def _grow_one(mask: np.ndarray) -> np.ndarray:
    """``mask`` grown by one bin up, down, left and right."""
    out = mask.copy()
    out[1:] |= mask[:-1]
    out[:-1] |= mask[1:]
    out[:, 1:] |= mask[:, :-1]
    out[:, :-1] |= mask[:, 1:]
    return out


def _to_centres(r: np.ndarray, curvature: np.ndarray, context: FineContext) -> np.ndarray:
    """What to subtract from the bin means ``r`` for values at the bin centres (step 4 of
    the package docstring): ``curvature`` times the second differences, or for a sparse
    read (``context.sparse``) `_sparse_to_centres`."""
    if context.sparse is None:
        return _second_differences(r) * curvature
    return _sparse_to_centres(r, curvature, context)


def _second_differences(r: np.ndarray) -> np.ndarray:
    """Sum of the second differences of ``r`` along rows and columns (interior only)."""
    d2 = np.zeros_like(r)
    np.add(r[:-2], r[2:], out=d2[1:-1])
    d2[1:-1] -= 2 * r[1:-1]
    d2[:, 1:-1] += r[:, :-2]
    d2[:, 1:-1] += r[:, 2:]
    d2[:, 1:-1] -= 2 * r[:, 1:-1]
    return d2


def _sparse_to_centres(r: np.ndarray, curvature: np.ndarray, context: FineContext) -> np.ndarray:
    """What to subtract from the bin means ``r`` of a sparse read for values at the centres.

    A bin of a sparse read averages its read rows, at a mean offset ``d`` from
    its centre (mean square ``s``): ``mean = f + d f_r + s f_rr / 2 + (b**2 - 1)
    f_cc / 24`` for bins ``b`` px wide, with the derivatives from the fine grid's
    first and second differences (interior bins; ``curvature`` is the
    columns' factor, 0 on holes).
    """
    b = float(context.pixel_bin)
    offset = context.sparse.offset[1:-1, None] / (2 * b)
    spread = context.sparse.spread[1:-1, None] / (2 * b * b)
    out = np.zeros_like(r)
    out[1:-1] = spread * (r[2:] + r[:-2] - 2 * r[1:-1])
    out *= curvature > 0
    out[1:-1] += offset * (r[2:] - r[:-2])
    out[:, 1:-1] += curvature[:, 1:-1] * (r[:, 2:] + r[:, :-2] - 2 * r[:, 1:-1])
    return out


def _strap_response(
    context: FineContext, strap_sums: np.ndarray | None, noise: np.ndarray | None = None
) -> np.ndarray:
    """This frame's response of the straps in ``context.strap_idx`` (1 if unmeasured).

    ``strap_sums`` holds ``sum(strap * ref)`` and ``sum(ref**2)``. The noise in
    the reference inflates the second sum by its variance summed over the rows
    (``noise``, `_reference_noise`), which drags the ratio towards 0: by
    nothing that matters on a bright frame, by 5-40 % on a frame about as dark
    as the static scene (little light left after subtracting it; on the smooth
    simulated field, 96 frames, the straps' responses on frames with ``noise``
    over 10 % of ``sum(ref**2)`` were 0.17 low on average). That variance is
    taken out of ``sum(ref**2)`` (the errors-in-variables slope: 0.03 low
    there); a strap whose reference holds no light above its noise is not
    corrected (response 1). These are the sums of a difference from the static
    scene, whose noise the FFI's uncertainty leaves out (a little of the pull
    remains); `fine_residual` passes the whole frame's (`_frame_strap_sums`)
    when it has the static scene, where the pull is negligible and the
    uncertainty is the frame's own noise.
    """
    response = np.ones(context.strap_idx.size, dtype=np.float32)
    if strap_sums is not None and context.strap_idx.size:
        num, den = np.asarray(strap_sums, dtype=float).T
        if noise is not None:
            den = den - noise
        ratio = np.divide(num, den, out=np.ones_like(num), where=den > 0)
        response[:] = np.clip(ratio, 0.8, 1.25)
    return response


def _frame_strap_sums(
    diff: np.ndarray, context: FineContext, strap_sums: np.ndarray | None
) -> np.ndarray | None:
    """The strap sums of the whole frame (``diff`` plus the static scene, whose strap and
    reference columns ``context.strap_static`` holds).

    The straps respond alike to the static sky and to the scattered light, so
    the whole frame measures the response as well on a dark frame as on a
    bright one, where the difference from the static scene holds little light.
    On such a difference the response is poor: on the smooth simulated field,
    60 frames, a frame among those the static scene is the median of measured
    1.08-1.14 for straps of 1.037-1.049 (the difference is zero on the rows where
    the frame is the median, and the rest is not the frame's own noise), which
    divided a 0.5 e-/s strap block into the fine layer where the frame is 6
    e-/s darker than the static scene. The whole frame's noise is the FFI
    uncertainty, which is what `_reference_noise` takes out. Without the static
    scene (or the straps' geometry) the frame pass's ``strap_sums`` of the
    difference are used.
    """
    if context.strap_static is None or context.strap_noise is None or strap_sums is None:
        return strap_sums
    ref_idx, _, rows = context.strap_noise
    static = context.strap_static
    return _strap_sums(diff, None, context.strap_idx, ref_idx, rows, static_columns=static)


def _reference_noise(context: FineContext, uncertainty: np.ndarray | None) -> np.ndarray | None:
    """Per strap, the variance of its reference summed over the rows of its strap sums.

    None without an uncertainty image or the straps' geometry
    (``context.strap_noise``). Rows that `strap_sums` leaves out because the
    references curve are counted too (a slight overestimate there).
    """
    if uncertainty is None or context.strap_noise is None or not context.strap_idx.size:
        return None
    ref_idx, line, rows = context.strap_noise
    # Neighbouring straps share reference columns: each distinct column is read once.
    columns, where = np.unique(ref_idx.ravel(), return_inverse=True)
    variance = np.square(np.take(uncertainty, columns, axis=1), dtype=np.float64)
    variance = np.take(np.nan_to_num(variance, copy=False), where, axis=1)
    variance = variance.reshape(-1, *ref_idx.shape)  # (rows, nstraps, 4)
    per_row = np.einsum("rsk,sk->rs", variance, np.square(line, dtype=np.float64))
    return np.where(rows, per_row, 0).sum(axis=0)


#: Image rows per strip of `_masked_bin_sums` (the temporaries stay in cache).
_STRIP_ROWS = 64


def _masked_bin_sums(diff: np.ndarray, context: FineContext, response: np.ndarray) -> np.ndarray:
    """Fine-bin sums of ``diff * weights``, strap columns divided by their ``response``.

    A strip of rows at a time: weight, sum the rows of each bin row (whole image
    rows at once), divide the straps (on a ``pixel_bin`` times smaller array),
    then sum the columns of each bin.
    """
    fb = context.pixel_bin
    n, m = diff.shape
    scale = np.ones(m, dtype=np.float32)
    scale[context.strap_idx] = 1 / response
    out = np.empty((n // fb, m // fb), dtype=np.float32)
    height = fb * max(1, _STRIP_ROWS // fb)
    buffer = np.empty((height, m), dtype=np.float32)
    for top in range(0, n, height):
        rows = min(height, n - top)
        band = slice(top, top + rows)
        strip = np.multiply(diff[band], context.weights[band], out=buffer[:rows])
        strip = strip.reshape(rows // fb, fb, m)
        row_sums = strip[:, 0].copy()
        for k in range(1, fb):
            row_sums += strip[:, k]
        if context.strap_idx.size:
            row_sums *= scale
        columns = row_sums.reshape(rows // fb, m // fb, fb)
        sums = out[top // fb : (top + rows) // fb]
        np.copyto(sums, columns[..., 0])
        for k in range(1, fb):
            sums += columns[..., k]
    return out


def _tile_chi2(r: np.ndarray, context: FineContext, tile_sigma: np.ndarray) -> np.ndarray:
    """Mean over each tile's bins of ``r**2 / var``, ``var = sigma_pixel**2 / count``.

    Filled bins count too, as bins of the tile's typical size: a hole whose fill
    departs from the coarse model (a ridge through a star) makes the tile matter.
    """
    t, nt = context.tile, context.ntiles
    weighted = r * r
    weighted *= context.chi_weight
    chi2 = weighted.reshape(nt, t, nt, t).sum(axis=(1, 3)) / np.maximum(tile_sigma**2, 1e-30)
    return chi2 / (t * t)


class _Noise:
    """Predicted variance of each fine bin's residual, made when first asked for."""

    def __init__(self, tile_sigma: np.ndarray, context: FineContext):
        self.tile_sigma, self.context = tile_sigma, context

    @functools.cached_property
    def image(self) -> np.ndarray:
        t = self.context.tile
        variance = self.tile_sigma.repeat(t, 0).repeat(t, 1) ** 2
        return variance / np.maximum(self.context.chi_weight, 1)


def _calibration(chi2, nok, r, ok, noise: _Noise) -> float:
    """The factor (>= 1) by which a frame's predicted noise variance is too small.

    Never below 1: a dark frame that entered the static scene's median has almost
    no residual, and scaling the noise down there keeps noise tiles. On a whole
    CCD the typical tile is noise, and the median of the tile statistic calibrates
    the prediction. A regional build has a few tiles that structure may fill
    entirely (a shadow edge across the region): there the robust spread of the
    bins' normalised residuals calibrates it, which structure in a minority of
    bins does not move.
    """
    measured = chi2[nok > 0]
    if measured.size >= _CALIBRATION_TILES:
        return max(float(np.median(measured)), 1.0)
    z = r[ok] / np.sqrt(np.maximum(noise.image[ok], 1e-30))
    spread = 1.4826 * np.median(np.abs(z - np.median(z))) if z.size else 1.0
    return max(float(spread) ** 2, 1.0)


def _tile_pixel_sigma(coarse_error, coarse_npix, context: FineContext, uncertainty):
    """Per tile, the 1-sigma noise of one pixel [e-/s] (see the module docstring).

    From the uncertainty image, the RMS is taken over the pixels of the tile's
    valid bins only (all its pixels where it has none): a saturated star's
    masked pixels are hundreds of times noisier than the sky around them, and
    counted in they made its tile's statistic ~0.01 in quiet frames, so its
    block was dropped even where the neighbouring tiles' passed by 100x
    (structured simulated field, ``bench_fusion.py --parts 4``: the star TPF's
    aperture-sum error 0.94 -> 0.33 e-/s, act/quoted 2.33 -> 1.10).
    """
    nt = context.ntiles
    if uncertainty is not None:
        side = context.pixel_bin * context.tile
        sample = np.asarray(uncertainty, dtype=np.float32)[::4]  # every 4th row
        square = np.nan_to_num(np.square(sample))  # NaN or inf: as nan_to_num makes them
        ok = context.sampled_ok
        var = np.where(ok, square, 0).reshape(nt, side // 4, nt, side).sum(axis=(1, 3))
        count = ok.reshape(nt, side // 4, nt, side).sum(axis=(1, 3))
        whole = square.reshape(nt, side // 4, nt, side).sum(axis=(1, 3))
        var = np.where(count > 0, var / np.maximum(count, 1), whole / (side // 4 * side))
        return np.sqrt(var).astype(np.float32)
    per_pixel = np.nan_to_num(coarse_error * np.sqrt(np.maximum(coarse_npix, 1)))
    k = coarse_error.shape[0] // nt  # coarse bins per tile side
    return np.median(per_pixel.reshape(nt, k, nt, k), axis=(1, 3)).astype(np.float32)
