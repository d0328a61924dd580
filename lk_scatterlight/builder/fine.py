"""The builder's fine layer: residual structure finer than the bins, per frame.

Per frame (`fine_residual`), after the coarse bins are fitted:

1. the static-subtracted frame is averaged in fine bins (4 x 4 px by default)
   of valid pixels. The fine layer has its own, lighter source mask: only
   sources above ``fine_star_nsigma`` (30 by default, against 3 for the coarse
   bins; ~3 % of the pixels instead of ~30 % in a sector-1-like field) and
   their saturation bleeds, plus straps and bad columns; regions of that mask
   too large for an unsaturated star are structure left in the static scene
   (a ridge in frames that were not dark) and are not masked
   (`~lk_scatterlight.builder.masks.drop_extended`). The coarse bins can
   afford to drop every faint star; a 4-px bin cannot, or a ridge crossing a
   faint star would lose its peak there. Faint stars subtract with the static
   scene and only add their photon noise. Strap columns whose response can be
   measured are used too, divided by the response measured *in this frame*
   (from the same strap sums the builder keeps; limited to 0.8-1.25), so a
   group of straps is not a hole either;
2. the frame's coarse plane, interpolated with the cube's own Keys kernel and
   averaged over each fine bin's pixels, is subtracted: what is left is the
   bin mean of the structure the coarse grid cannot hold (plus noise). (Its
   value at the fine bin centres instead would leave the coarse model's own
   curvature in the bin means, ~1 % of a ridge's amplitude, which step 4 does
   not remove);
3. fine bins without enough valid pixels (under a star or bleed mask), or
   whose valid pixels lie to one side (their centroid more than `MAX_OFFSET`
   from the bin centre, at the edge of a star's halo: on a ridge's flank their
   mean is the field there, not at the centre, off by over 10 % of the
   ridge), are holes, filled in three steps: a first guess by normalised
   Gaussian convolution of their valid neighbours (widening until every hole
   is filled); then, on the total field (coarse model + residual), linear
   interpolation between the nearest valid bins along the local structure
   (the structure tensor's direction), so a ridge that crosses a star
   continues through it; and for
   holes of 4 bins or more where the residual around them is significant, a
   fit of the field's profile across the local structure from every valid bin
   in a window around the hole (`_fill_profiles`). Most tiles hold only noise
   and nothing there is kept, so the last two steps run only on the holes in
   (or next to) the tiles whose statistic (step 5) with the first guess is
   already halfway from noise to ``threshold``;
4. the bias of a bin *mean* on curved structure is removed with the fine grid's
   second differences (``mean = f(centre) + f'' (b**2 - 1) / 24`` for a bin of
   ``b`` pixels), so the stored values are point values, as the Keys kernel
   expects;
5. per tile of ``tile x tile`` fine bins, the residual's mean of
   ``(r / sigma)**2`` is compared with ``threshold``. The noise ``sigma`` of a
   fine bin is predicted from the tile's RMS pixel uncertainty (from the FFI
   uncertainty image, every 4th row; without one, the median over the tile of
   the coarse bins' errors scaled to one pixel) over the square root of the
   bin's valid pixels, then **calibrated on the frame itself**: the predicted
   variance is scaled by the median over tiles of that mean (most tiles hold
   only noise) when it exceeds 1, which takes in what the prediction misses
   (the static scene's own noise, faint unmasked stars). Filled bins count as
   bins of the tile's typical size. Pure noise then gives ~1 and only tiles
   above ``threshold`` are kept;
6. with fine bins of 2 px, the kept tiles are smoothed along their local
   structure (`_smooth_along_structure`): a 2-px grid resolves a 12-px ridge
   or a 6-px shadow edge ~10x better than a 4-px one, but a 2-px bin holds
   4 pixels, and averaging along the ridge or edge takes its noise back down.

`assemble_fine` gathers the kept blocks of the used frames into a
`~lk_scatterlight.finelayer.FineLayer` (averaging them into planes when the
build bins in time).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import linalg, ndimage

from .. import interpolate
from ..finelayer import FineLayer, compress_tile

__all__ = ["FineContext", "FineFrame", "make_fine_context", "fine_residual", "assemble_fine"]

#: Fine bins with fewer valid pixels than this are left to the coarse model.
MIN_PIXELS = 4
#: Fine bins whose valid pixels' centroid lies farther than this from the bin centre [px]
#: are holes too: their mean is the field there, not at the centre (see `make_fine_context`).
MAX_OFFSET = 0.5
#: Fewest tiles with data whose median chi-square calibrates a frame's noise.
_CALIBRATION_TILES = 64
#: Depth classes of filled bins (`depth_class`): 1, <= 2, <= 4, <= 8, <= 16 and > 16 bins.
FILL_CLASSES = 6
#: Columns of `FineFrame.misfit`: rows, columns, fill, rows and columns at a lag of 2 px,
#: then the fill's squared error summed per depth class and the bins it was summed over.
MISFIT_COLUMNS = 5 + 2 * FILL_CLASSES


@dataclass
class FineContext:
    """Per-build constants of the fine layer (`make_fine_context`).

    Attributes
    ----------
    pixel_bin, tile : int
        Fine bin size [px] and fine bins per tile side.
    coarse_bin : int
        The cube's bin size [px].
    threshold : float
        Tile significance threshold on the mean of ``(r / sigma)**2``.
    weights : ndarray of float32, shape (2048, 2048)
        1 for pixels that enter the fine bins, 0 for masked ones.
    strap_idx : ndarray of int
        0-based science columns of the straps used (divided by their response).
    to_fine : ndarray of float32, shape (nfine, ncoarse)
        Keys weights from the coarse bin centres to the mean over each fine bin
        (rows and columns alike): ``to_fine @ plane @ to_fine.T`` is the coarse
        model's bin means.
    inv_count : ndarray of float32, shape (nfine, nfine)
        1 / valid pixels per fine bin; 0 on holes (fewer than `MIN_PIXELS`, or
        their centroid farther than `MAX_OFFSET` from the bin centre).
    count : ndarray of float32, shape (nfine, nfine)
        Valid pixels per fine bin; 0 on holes.
    tile_bins : ndarray of int, shape (ntiles, ntiles)
        Fine bins with enough pixels per tile.
    tile_inv_count : ndarray of float32, shape (ntiles * ntiles,)
        Median of ``inv_count`` over each tile (a typical bin's 1 / pixels).
    chi_weight : ndarray of float32, shape (nfine, nfine)
        Weight of each bin's ``r**2`` in the tile statistic: its valid pixels,
        or the tile's typical count for a bin that is filled.
    ok : ndarray of bool, shape (nfine, nfine)
        ``count > 0``: the bins measured (the others are holes).
    holes : tuple of two ndarray of int
        ``np.nonzero(~ok)``.
    curvature : ndarray of float32, shape (nfine, nfine)
        ``(b**2 - 1) / (24 b**2)`` on measured bins, 0 on holes: the factor of
        the second differences that turns a bin mean into a value at its centre.
    labels : ndarray of int32, shape (nfine, nfine)
        Connected holes (bins with ``count == 0``), numbered from 1.
    pieces : ndarray of int, shape (npieces, 5)
        The pieces of the holes that `_fill_profiles` refits: label, first and
        one-past-last fine bin row, first and one-past-last column.
    ring : ndarray of bool, shape (nfine, nfine)
        The measured bins `_fill_misfit` hides around the holes (`_hole_ring`).
    ring_holes : tuple of two ndarray
        ``(labels, pieces)`` of `_profile_pieces` for the holes with the ring hidden.
    hole_class : ndarray of uint8, shape (nfine, nfine)
        `depth_class` of each hole's bins (their distance to the nearest measured
        bin), 0 on measured bins.
    """

    pixel_bin: int
    tile: int
    coarse_bin: int
    threshold: float
    weights: np.ndarray
    strap_idx: np.ndarray
    to_fine: np.ndarray
    inv_count: np.ndarray
    count: np.ndarray
    tile_bins: np.ndarray
    tile_inv_count: np.ndarray
    chi_weight: np.ndarray
    ok: np.ndarray
    holes: tuple[np.ndarray, np.ndarray]
    curvature: np.ndarray
    labels: np.ndarray
    pieces: np.ndarray
    ring: np.ndarray | None = None
    ring_holes: tuple[np.ndarray, np.ndarray] | None = None
    hole_class: np.ndarray | None = None

    @property
    def ntiles(self) -> int:
        return self.inv_count.shape[0] // self.tile


@dataclass
class FineFrame:
    """The fine layer of one frame: its significant tiles.

    Attributes
    ----------
    tiles : ndarray of int32, shape (nkept,)
        Flat tile indices (``tile_row * ntiles + tile_col``) of the kept tiles.
    blocks : ndarray of float32, shape (nkept, tile, tile)
        Their residuals [e-/s].
    sigma : ndarray of float32, shape (nkept,)
        Typical 1-sigma error of one fine bin in each kept tile [e-/s], as the
        detection calibrated it on the frame (static scene's noise included).
    chi2 : ndarray of float32, shape (ntiles, ntiles)
        Every tile's mean ``(r / sigma)**2`` (diagnostics).
    calibration : float
        The factor (>= 1) by which the frame's calibration scaled the predicted
        noise variance: ``sigma**2 / calibration`` is the frame's own noise, what
        the stored layer quotes (the static scene's noise is the same in every
        frame, a constant per bin, and no error of the light's variation).
    misfit : ndarray of float32, shape (nkept, MISFIT_COLUMNS), optional
        Per kept tile, the structure the model (coarse plane plus kept tiles)
        misses at the tile's pixels, measured along rows and along columns
        [(e-/s)**2 per pixel] (`_tile_misfit`), the error of filling its
        holes [(e-/s)**2 per fine bin] (`_fill_misfit`), and the first two
        measured between pixels two apart; then (`MISFIT_COLUMNS` in all) the
        fill's squared error summed per depth class and the bins summed.
        Unbiased estimates, so they are negative as often as positive where the
        model misses nothing. None: not measured.
    """

    tiles: np.ndarray
    blocks: np.ndarray
    sigma: np.ndarray
    chi2: np.ndarray
    calibration: float = 1.0
    misfit: np.ndarray | None = None


def make_fine_context(
    weights: np.ndarray,
    coarse_bin: int,
    pixel_bin: int,
    tile: int,
    threshold: float,
    strap_idx: np.ndarray | None = None,
) -> FineContext:
    """Constants of the fine layer for a build's pixel mask.

    Parameters
    ----------
    weights : ndarray of float32, shape (2048, 2048)
        1 for pixels that enter the fine bins, 0 for masked ones.
    coarse_bin, pixel_bin : int
        Coarse and fine bin sizes [px]; ``pixel_bin`` divides ``coarse_bin``.
    tile : int
        Fine bins per tile side; ``pixel_bin * tile`` divides 2048.
    threshold : float
    strap_idx : ndarray of int, optional
        Strap columns (0-based science) included in ``weights`` whose pixels
        are divided by their per-frame response.

    Returns
    -------
    context : `FineContext`
    """
    n = weights.shape[0]
    if coarse_bin % pixel_bin or n % (pixel_bin * tile):
        raise ValueError(
            f"fine_bin={pixel_bin} must divide pixel_bin={coarse_bin}, and fine_bin x "
            f"fine_tile={pixel_bin * tile} must divide {n}."
        )
    nf, nt = n // pixel_bin, n // (pixel_bin * tile)
    count = _bin_sums(weights, pixel_bin)
    enough = (count >= MIN_PIXELS) & (_centroid_offset(weights, pixel_bin, count) <= MAX_OFFSET)
    inv_count = np.where(enough, 1 / np.maximum(count, 1), 0).astype(np.float32)
    count = np.where(enough, count, 0).astype(np.float32)
    tile_bins = enough.reshape(nt, tile, nt, tile).sum(axis=(1, 3))
    tile_inv_count = np.median(inv_count.reshape(nt, tile, nt, tile), axis=(1, 3)).ravel()
    tile_inv_count = np.maximum(tile_inv_count, 1 / pixel_bin**2).astype(np.float32)
    typical = (1 / tile_inv_count).reshape(nt, nt).repeat(tile, 0).repeat(tile, 1)
    chi_weight = np.where(enough, count, typical).astype(np.float32)
    coarse_centres = coarse_bin * np.arange(n // coarse_bin) + (coarse_bin - 1) / 2
    # Mean of the Keys weights over each fine bin's pixels: the coarse model's bin means.
    pixels = interpolate.spatial_weights(np.arange(n, dtype=float), coarse_centres)
    to_fine = pixels.reshape(nf, pixel_bin, -1).mean(axis=1).astype(np.float32)
    straps = np.zeros(0, int) if strap_idx is None else np.asarray(strap_idx, int)
    labels, pieces = _profile_pieces(~enough)
    ring = _hole_ring(enough)
    return FineContext(
        pixel_bin,
        tile,
        coarse_bin,
        float(threshold),
        weights,
        straps,
        to_fine,
        inv_count,
        count,
        tile_bins,
        tile_inv_count,
        chi_weight,
        enough,
        np.nonzero(~enough),
        np.where(enough, (pixel_bin**2 - 1) / (24 * pixel_bin**2), 0).astype(np.float32),
        labels,
        pieces,
        ring,
        _profile_pieces(~(enough & ~ring)),
        np.where(enough, 0, depth_class(ndimage.distance_transform_edt(~enough))).astype(np.uint8),
    )


def depth_class(depth: np.ndarray) -> np.ndarray:
    """Class of a filled bin's depth (distance [fine bins] to the nearest measured bin).

    1 for a bin next to a measured one (depth 1), then ``1 + ceil(log2(depth))``:
    2 up to 2 bins, 3 up to 4, 4 up to 8, 5 up to 16, and `FILL_CLASSES` (6) beyond.
    """
    depth = np.maximum(np.asarray(depth, dtype=float), 1.0)
    return np.minimum(1 + np.ceil(np.log2(depth) - 1e-9).astype(int), FILL_CLASSES)


def _centroid_offset(weights: np.ndarray, pixel_bin: int, count: np.ndarray) -> np.ndarray:
    """Distance [px] from each fine bin's centre to the centroid of its valid pixels."""
    n = weights.shape[0]
    offset = np.tile(np.arange(pixel_bin, dtype=np.float32) - (pixel_bin - 1) / 2, n // pixel_bin)
    d_row = _bin_sums(weights * offset[:, None], pixel_bin)
    d_col = _bin_sums(weights * offset[None, :], pixel_bin)
    return np.hypot(d_row, d_col) / np.maximum(count, 1)


def _bin_sums(image: np.ndarray, pixel_bin: int) -> np.ndarray:
    """Sums of ``pixel_bin x pixel_bin`` blocks (float32; strided adds, ~10x a 4-D sum)."""
    n = image.shape[0]
    nb = n // pixel_bin
    rows = image.reshape(n, nb, pixel_bin)
    sums = rows[:, :, 0].astype(np.float32)
    for k in range(1, pixel_bin):
        sums += rows[:, :, k]
    blocks = sums.reshape(nb, pixel_bin, nb)
    out = blocks[:, 0].copy()
    for k in range(1, pixel_bin):
        out += blocks[:, k]
    return out


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
    mean = _masked_bin_sums(diff, context, _strap_response(context, strap_sums))
    mean *= context.inv_count
    model = context.to_fine @ np.nan_to_num(coarse_value).astype(np.float32) @ context.to_fine.T
    ok = context.ok
    nok = context.tile_bins
    labels, pieces = context.labels, context.pieces
    finite = np.isfinite(mean)
    if not finite.all():  # NaN pixels in this frame: those bins are holes too
        ok = ok & finite
        nok = ok.reshape(nt, t, nt, t).sum(axis=(1, 3))
        labels, pieces = _profile_pieces(~ok)
    mean -= model
    tile_sigma = _tile_pixel_sigma(coarse_error, coarse_npix, context, uncertainty)  # (nt, nt)
    noise = _Noise(tile_sigma, context)
    holes = context.holes if ok is context.ok else np.nonzero(~ok)
    r = mean
    r[holes] = 0
    _fill_isotropic(r, ok, holes, copy=False)
    # Most tiles hold only noise, and their holes need no better fill than the first
    # guess. A hole's refill depends on valid bins only and changes only the hole
    # itself and, through the second differences below, the bins next to it: so only
    # the holes in or next to the tiles that come near the threshold are refilled.
    chi2 = _tile_chi2(r, context, tile_sigma)
    near = chi2 / _calibration(chi2, nok, r, ok, noise) > 1 + _NEAR * (context.threshold - 1)
    if near.any():
        busy = ~ok & _grow_one(near.repeat(t, 0).repeat(t, 1))
        rows, cols = np.nonzero(busy)
        _fill_along_structure(r, ok, model, rows, cols)
        touch = [busy[r0:r1, c0:c1].any() for _, r0, r1, c0, c1 in pieces.tolist()]
        if any(touch):
            _fill_profiles(r, ok, model, noise.image, context.threshold, (labels, pieces[touch]))
    filled = r.copy()  # the fills, before the curvature step: `_fill_misfit` redoes them
    # Bin mean -> value at the bin centre: subtract (b**2 - 1) / 24 f'' (f'' per px**2).
    curvature = context.curvature if ok is context.ok else context.curvature * ok
    r -= _second_differences(r) * curvature

    chi2 = _tile_chi2(r, context, tile_sigma)
    calibration = _calibration(chi2, nok, r, ok, noise)
    chi2 = (chi2 / calibration).astype(np.float32)
    tile_sigma = tile_sigma * np.float32(np.sqrt(calibration))
    kept = np.flatnonzero(chi2.ravel() > context.threshold).astype(np.int32)
    along = _along_scale(context.pixel_bin)
    smoothing = _smooth_along_structure(r, model, kept, context.tile, along) if along else None
    gain = 1.0 if smoothing is None else smoothing[1]
    blocks = r.reshape(nt, t, nt, t).transpose(0, 2, 1, 3).reshape(nt * nt, t, t)[kept]
    # A fine bin's typical error in the tile: pixel sigma / sqrt(median valid pixels).
    sigma = tile_sigma.ravel()[kept] * np.sqrt(context.tile_inv_count[kept]) * gain
    misfit = _tile_misfit(diff, coarse_value, r, kept, context, uncertainty, tile_sigma, smoothing)
    fill = _fill_misfit(filled, ok, model, kept, context, noise.image, calibration)
    misfit = np.column_stack([misfit[:, :2], fill[:, 0], misfit[:, 2:], fill[:, 1:]])
    misfit = misfit.astype(np.float32)
    return FineFrame(
        kept,
        np.ascontiguousarray(blocks),
        sigma.astype(np.float32),
        chi2,
        float(calibration),
        misfit,
    )


#: Gaussian sigma [px] of the smoothing along the local structure in kept tiles, and the
#: largest fine bin [px] it is used with (see `_smooth_along_structure`).
_ALONG_PX, _ALONG_MAX_BIN = 8.0, 2


def _along_scale(pixel_bin: int) -> float:
    """Sigma [fine bins] of the smoothing along the structure; 0: none for this bin size."""
    return _ALONG_PX / pixel_bin if pixel_bin <= _ALONG_MAX_BIN else 0.0


def _smooth_along_structure(
    r: np.ndarray, model: np.ndarray, kept: np.ndarray, tile: int, scale: float
) -> float:
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
    keeps).

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
    n = r.shape[0]
    reach = int(np.ceil(2.5 * scale))
    steps = np.arange(-reach, reach + 1)
    weights = np.exp(-0.5 * (steps / scale) ** 2)
    weights /= weights.sum()
    margin = reach + 2
    source = r.copy()
    nt = n // tile
    for tile_index in kept.tolist():
        i, j = divmod(tile_index, nt)
        r0, r1 = max(i * tile - margin, 0), min((i + 1) * tile + margin, n)
        c0, c1 = max(j * tile - margin, 0), min((j + 1) * tile + margin, n)
        window = source[r0:r1, c0:c1] + model[r0:r1, c0:c1].astype(float)
        g_row, g_col = np.gradient(window)
        a = ndimage.gaussian_filter(g_row * g_row, scale, mode="nearest")
        b = ndimage.gaussian_filter(g_row * g_col, scale, mode="nearest")
        c = ndimage.gaussian_filter(g_col * g_col, scale, mode="nearest")
        theta = 0.5 * np.arctan2(2 * b, a - c)  # across the structure
        inner = (
            slice(i * tile - r0, (i + 1) * tile - r0),
            slice(j * tile - c0, (j + 1) * tile - c0),
        )
        u_row, u_col = -np.sin(theta[inner]), np.cos(theta[inner])
        rows, cols = np.mgrid[inner]
        at = [rows + steps[:, None, None] * u_row, cols + steps[:, None, None] * u_col]
        samples = ndimage.map_coordinates(window, at, order=3, mode="nearest")
        block = (slice(i * tile, (i + 1) * tile), slice(j * tile, (j + 1) * tile))
        r[block] = np.tensordot(weights, samples, axes=1) - model[block]
    return float(weights[reach]), float(np.sqrt(np.sum(weights**2)))


#: A tile whose statistic with the first fill of its holes is this fraction of the way
#: from pure noise (1) to the threshold gets the fills along the structure (and the
#: holes next to it). Noise alone scatters by ~sqrt(2 / tile**2) around 1 (0.09 for 16 x 16
#: bins): halfway to the default threshold of 2 is 5-6 of those.
_NEAR = 0.5


def _grow_one(mask: np.ndarray) -> np.ndarray:
    """``mask`` grown by one bin up, down, left and right."""
    out = mask.copy()
    out[1:] |= mask[:-1]
    out[:-1] |= mask[1:]
    out[:, 1:] |= mask[:, :-1]
    out[:, :-1] |= mask[:, 1:]
    return out


def _second_differences(r: np.ndarray) -> np.ndarray:
    """Sum of the second differences of ``r`` along rows and columns (interior only)."""
    d2 = np.zeros_like(r)
    np.add(r[:-2], r[2:], out=d2[1:-1])
    d2[1:-1] -= 2 * r[1:-1]
    d2[:, 1:-1] += r[:, :-2]
    d2[:, 1:-1] += r[:, 2:]
    d2[:, 1:-1] -= 2 * r[:, 1:-1]
    return d2


def _strap_response(context: FineContext, strap_sums: np.ndarray | None) -> np.ndarray:
    """This frame's response of the straps in ``context.strap_idx`` (1 if unmeasured)."""
    response = np.ones(context.strap_idx.size, dtype=np.float32)
    if strap_sums is not None and context.strap_idx.size:
        num, den = np.asarray(strap_sums, dtype=float).T
        ratio = np.divide(num, den, out=np.ones_like(num), where=den > 0)
        response[:] = np.clip(ratio, 0.8, 1.25)
    return response


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
    the same from pixels two apart (how fast the missed structure decorrelates:
    an aperture sum adds it with that correlation) [(e-/s)**2 per pixel], each
    unbiased. ``smoothing``: the ``(own, gain)`` of `_smooth_along_structure` when
    the kept tiles were smoothed (a bin keeps ``own`` of its mean, and its
    value's variance is ``gain**2`` of the mean's).
    """
    out = np.zeros((kept.size, 4), dtype=np.float32)
    if not kept.size:
        return out
    fb, t, nt = context.pixel_bin, context.tile, context.ntiles
    n, side = diff.shape[0], fb * t
    cb = context.coarse_bin
    coarse = np.nan_to_num(coarse_value).astype(float)
    coarse_centres = cb * np.arange(n // cb) + (cb - 1) / 2
    usable = context.weights > 0
    if context.strap_idx.size:
        usable = usable.copy()
        usable[:, context.strap_idx] = False

    def variance(rows, cols):
        if uncertainty is None:
            return np.full((rows.stop - rows.start, cols.stop - cols.start), 1.0)
        return np.nan_to_num(np.square(uncertainty[rows, cols], dtype=float))

    # The pixel-level calibration, from the tiles without a block (coarse model only).
    is_kept = np.zeros(nt * nt, dtype=bool)
    is_kept[kept] = True
    rows = np.arange(_MISFIT_ROWS // 2, n, _MISFIT_ROWS)
    res = diff[rows].astype(float) - _keys_product(rows, np.arange(n), coarse_centres, coarse)
    use = usable[rows] & np.isfinite(res)
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
    within = np.arange(side)
    for m, tile in enumerate(kept.tolist()):
        i, j = divmod(tile, nt)
        rows, cols = slice(i * side, (i + 1) * side), slice(j * side, (j + 1) * side)
        pixels = diff[rows, cols].astype(float)
        use = usable[rows, cols] & np.isfinite(pixels)
        if not use.any():
            continue
        (ar, r0c), (ac, c0c) = (_tile_weights(x * side, side, cb, n) for x in (i, j))
        model = ar @ coarse[r0c : r0c + ar.shape[1], c0c : c0c + ac.shape[1]] @ ac.T
        (wr, r0), (wc, c0) = (_tile_weights(x * side, side, fb, n) for x in (i, j))
        model += wr @ layer[r0 : r0 + wr.shape[1], c0 : c0 + wc.shape[1]] @ wc.T
        var = k * variance(rows, cols)
        if uncertainty is None:
            var *= float(tile_sigma[i, j]) ** 2
        res = pixels - model
        window = (slice(r0, r0 + wr.shape[1]), slice(c0, c0 + wc.shape[1]))
        bins = ((i * side + within) // fb - r0, (j * side + within) // fb - c0)
        out[m] = _lag_covariance(res, use, var, (wr, wc), bins, own[window], spread[window])
    return out


def _lag_covariance(res, use, var, weights, bins, own, spread) -> np.ndarray:
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
    differ, so the estimate is a lower bound there. Then the same two at a lag
    of two pixels (their ratio to the first two is the misfit's correlation
    between neighbours).
    """
    (wr, wc), (bin_row, bin_col) = weights, bins
    mean_var = float(var[use].mean())
    o = own[np.ix_(bin_row, bin_col)]
    a_r, a_c = wr[:, bin_row], wc[:, bin_col]  # a_r[y', y]: row y' on the bin of row y
    d_r, d_c = np.diagonal(a_r), np.diagonal(a_c)
    estimates = np.zeros(4)
    for lag in (1, 2):
        for axis in (0, 1):
            if axis == 0:  # p = (y, x), q = (y + lag, x)
                pair = use[:-lag] & use[lag:]
                shared = (wr[:-lag] * wr[lag:]) @ spread @ (wc**2).T
                into_q = np.diagonal(a_r, -lag)[:, None] * d_c[None, :]  # p's bin at q
                into_p = np.diagonal(a_r, lag)[:, None] * d_c[None, :]  # q's bin at p
                prod = res[:-lag] * res[lag:]
                noise = -var[:-lag] * into_q * o[:-lag] - var[lag:] * into_p * o[lag:]
            else:
                pair = use[:, :-lag] & use[:, lag:]
                shared = (wr**2) @ spread @ (wc[:-lag] * wc[lag:]).T
                into_q = d_r[:, None] * np.diagonal(a_c, -lag)[None, :]
                into_p = d_r[:, None] * np.diagonal(a_c, lag)[None, :]
                prod = res[:, :-lag] * res[:, lag:]
                noise = -var[:, :-lag] * into_q * o[:, :-lag] - var[:, lag:] * into_p * o[:, lag:]
            if pair.any():
                estimate = np.mean((prod - noise - shared * mean_var)[pair])
                estimates[2 * (lag - 1) + axis] = float(estimate)
    return estimates


def _fill_misfit(filled, ok, model, kept, context: FineContext, noise, calibration) -> np.ndarray:
    """Per kept tile, the error of its filled bins, measured by filling known bins.

    The valid bins next to the holes of the kept tiles (those one bin up, down,
    left or right of a hole) are hidden and filled from the remaining valid
    bins, with the same steps as the holes (isotropic first guess, along the
    structure, profiles across it): they are the hole's edge, one bin deeper,
    so their fill sees structure crossing the hole as the hole's own fill does.
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
    ``noise``: the predicted variance of each bin (`_Noise.image`).

    Returns
    -------
    fill : ndarray of float32, shape (len(kept), 1 + 2 * FILL_CLASSES)
        Per kept tile, the mean, the sums per depth class and the bins per class.
    """
    out = np.zeros((kept.size, 1 + 2 * FILL_CLASSES), dtype=np.float32)
    t, nt = context.tile, context.ntiles
    is_kept = np.zeros(nt * nt, dtype=bool)
    is_kept[kept] = True
    in_kept = is_kept.reshape(nt, nt).repeat(t, 0).repeat(t, 1)
    static = ok is context.ok and context.ring is not None  # no NaN holes in this frame
    ring = context.ring if static else _hole_ring(ok)
    probe = ring & in_kept
    if not probe.any():
        return out
    hidden = ok & ~probe
    trial = filled.copy()
    rows, cols = np.nonzero(probe)
    _fill_isotropic(trial, hidden, (rows, cols), copy=False)
    _fill_along_structure(trial, hidden, model, rows, cols)
    labels, pieces = context.ring_holes if static else _profile_pieces(~(ok & ~ring))
    touch = [probe[r0:r1, c0:c1].any() for _, r0, r1, c0, c1 in pieces.tolist()]
    if any(touch):
        _fill_profiles(trial, hidden, model, noise, context.threshold, (labels, pieces[touch]))
    excess = (trial[rows, cols] - filled[rows, cols]).astype(float) ** 2
    excess -= calibration * noise[rows, cols]
    tile = (rows // t) * nt + cols // t
    sums = np.bincount(tile, excess, minlength=nt * nt)[kept]
    count = np.bincount(tile, minlength=nt * nt)[kept]
    out[count > 0, 0] = sums[count > 0] / count[count > 0]
    depth = depth_class(ndimage.distance_transform_edt(~hidden)[rows, cols])
    at = (tile * FILL_CLASSES + depth - 1, nt * nt * FILL_CLASSES)
    by_class = np.bincount(at[0], excess, minlength=at[1]).reshape(nt * nt, -1)
    out[:, 1 : 1 + FILL_CLASSES] = by_class[kept]
    out[:, 1 + FILL_CLASSES :] = np.bincount(at[0], minlength=at[1]).reshape(nt * nt, -1)[kept]
    return out


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


#: Every this many rows, the pixels that calibrate `_tile_misfit`'s noise on a frame.
_MISFIT_ROWS = 8


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


def _keys_product(rows, cols, centres, grid):
    """``grid`` (values at ``centres`` in both axes) interpolated to pixels ``rows x cols``
    with the Keys kernel."""
    wr = interpolate.spatial_weights(rows, centres)
    wc = interpolate.spatial_weights(cols, centres)
    (r0, r1), (c0, c1) = interpolate.support(wr), interpolate.support(wc)
    return wr[:, r0:r1] @ grid[r0:r1, c0:c1] @ wc[:, c0:c1].T


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
    g_row, g_col = np.gradient(total)
    measured = valid.copy()
    measured[1:-1] &= valid[:-2] & valid[2:]
    measured[:, 1:-1] &= valid[:, :-2] & valid[:, 2:]
    a, b, c = (
        (g_row * g_row)[measured].sum(),
        (g_row * g_col)[measured].sum(),
        (g_col * g_col)[measured].sum(),
    )
    if np.hypot(a - c, 2 * b) < 0.5 * (a + c):  # no dominant direction
        return
    theta = 0.5 * np.arctan2(2 * b, a - c)  # across the structure
    rr, cc = np.mgrid[r0:r1, c0:c1]
    rr, cc = rr - (r0 + r1) / 2, cc - (c0 + c1) / 2
    across = rr * np.cos(theta) + cc * np.sin(theta)
    along = -rr * np.sin(theta) + cc * np.cos(theta)
    knots = np.arange(across.min(), across.max() + _PROFILE_KNOTS, _PROFILE_KNOTS)
    hats = np.clip(1 - np.abs(across[..., None] - knots) / _PROFILE_KNOTS, 0, None)
    design = np.concatenate([hats, along[..., None]], axis=-1)
    smooth = np.diff(np.eye(knots.size), 2, axis=0)  # second differences of the profile
    penalty = np.hstack([smooth, np.zeros((smooth.shape[0], 1))]) * 0.3
    lhs = np.vstack([design[valid], penalty])
    rhs = np.concatenate([total[valid], np.zeros(penalty.shape[0])])
    coef = _least_squares(lhs, rhs)
    res[hole] = design[hole] @ coef - model[r0:r1, c0:c1][hole]


def _least_squares(lhs: np.ndarray, rhs: np.ndarray) -> np.ndarray:
    """``lstsq(lhs, rhs)`` through the normal equations (Cholesky), ~10x faster for the
    profiles' tall, well-conditioned systems; SVD (`numpy.linalg.lstsq`) when they are
    singular or badly conditioned."""
    normal = lhs.T @ lhs
    try:
        factor = linalg.cho_factor(normal, check_finite=False)
    except linalg.LinAlgError:
        return np.linalg.lstsq(lhs, rhs, rcond=None)[0]
    diagonal = np.diag(factor[0])
    if diagonal.min() <= 1e-6 * diagonal.max():  # condition number over ~1e12
        return np.linalg.lstsq(lhs, rhs, rcond=None)[0]
    return linalg.cho_solve(factor, lhs.T @ rhs, check_finite=False)


def _fill_isotropic(r: np.ndarray, ok: np.ndarray, holes=None, copy: bool = True) -> np.ndarray:
    """Normalised Gaussian convolution of the valid bins, widening until all is filled.

    The first width (1 bin) is computed at the holes only, from their 7 x 7
    neighbourhoods; the rare holes with no valid bin there use whole-image
    filters of widths 4, 8 and 32 bins. ``holes`` is ``np.nonzero(~ok)`` if
    known; with ``copy=False`` ``r`` itself is filled.
    """
    out = r.copy() if copy else r
    rows, cols = np.nonzero(~ok) if holes is None else holes
    n = r.shape[0]
    offsets = np.arange(-_WINDOW, _WINDOW + 1)
    dr, dc = np.meshgrid(offsets, offsets, indexing="ij")
    rr = np.clip(rows[:, None] + dr.ravel(), 0, n - 1)
    cc = np.clip(cols[:, None] + dc.ravel(), 0, n - 1)
    w = np.exp(-(dr**2 + dc**2) / 2.0).ravel() * ok[rr, cc]
    total = w.sum(axis=1)
    near = total > 1e-3
    out[rows[near], cols[near]] = (w * r[rr, cc]).sum(axis=1)[near] / total[near]
    if near.all():
        return out
    missing = ~ok
    missing[rows[near], cols[near]] = False
    valid = (~missing).astype(np.float32)
    for width in (4, 8, 32):
        num = ndimage.gaussian_filter(out * valid, width, mode="nearest")
        den = ndimage.gaussian_filter(valid, width, mode="nearest")
        fill = missing & (den > 1e-3)
        out[fill] = num[fill] / den[fill]
        valid[fill] = 1
        missing &= ~fill
        if not missing.any():
            break
    out[missing] = 0
    return out


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
    rr = np.clip(rows[:, None] + dr.ravel(), 0, nr - 1)
    cc = np.clip(cols[:, None] + dc.ravel(), 0, nc - 1)
    gr, gc, measured = _gradients_at(image, ok, rr, cc)
    w = weight * measured
    a, b, c = (w * gr * gr).sum(1), (w * gr * gc).sum(1), (w * gc * gc).sum(1)
    theta = 0.5 * np.arctan2(2 * b, a - c)  # direction of the strongest gradient
    coherence = np.sqrt((a - c) ** 2 + 4 * b**2) / np.maximum(a + c, 1e-30)
    along = np.column_stack([-np.sin(theta), np.cos(theta)])
    along[coherence < 0.5] = np.nan
    return along


def _gradients_at(image, ok, rr, cc):
    """``np.gradient(image)`` at the bins ``rr, cc`` only, and where its central
    differences involve valid bins alone (one-sided differences at the edges)."""
    nr, nc = image.shape
    up, down = np.maximum(rr - 1, 0), np.minimum(rr + 1, nr - 1)
    left, right = np.maximum(cc - 1, 0), np.minimum(cc + 1, nc - 1)
    g_row = (image[down, cc] - image[up, cc]) / (down - up)
    g_col = (image[rr, right] - image[rr, left]) / (right - left)
    measured = ok[rr, cc]
    measured &= (rr == 0) | (rr == nr - 1) | (ok[up, cc] & ok[down, cc])
    measured &= (cc == 0) | (cc == nc - 1) | (ok[rr, left] & ok[rr, right])
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


def _tile_pixel_sigma(coarse_error, coarse_npix, context: FineContext, uncertainty):
    """Per tile, the 1-sigma noise of one pixel [e-/s] (see the module docstring)."""
    nt = context.ntiles
    if uncertainty is not None:
        side = context.pixel_bin * context.tile
        sample = np.asarray(uncertainty, dtype=np.float32)[::4]  # every 4th row
        square = np.square(sample)
        var = square.reshape(nt, side // 4, -1).sum(axis=1).reshape(nt, nt, side).sum(axis=2)
        if not np.isfinite(var).all():  # NaN or inf uncertainties: as nan_to_num makes them
            var = np.nan_to_num(square).reshape(nt, side // 4, nt, side).sum(axis=(1, 3))
        return np.sqrt(var / (side // 4 * side)).astype(np.float32)
    per_pixel = np.nan_to_num(coarse_error * np.sqrt(np.maximum(coarse_npix, 1)))
    k = coarse_error.shape[0] // nt  # coarse bins per tile side
    return np.median(per_pixel.reshape(nt, k, nt, k), axis=(1, 3)).astype(np.float32)


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
    misfit : ndarray, shape (len(used_index), ntiles**2, 3, 5 or MISFIT_COLUMNS), optional
        Each used frame's `FineFrame.misfit` of its kept tiles (the structure
        the model misses, per pixel, along rows and columns, the error of
        a filled bin, the first two at a lag of 2 px, and the fill's error
        per depth class). Per tile, each
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
        lag-2 estimates), for aperture sums.

    Returns
    -------
    layer : `~lk_scatterlight.finelayer.FineLayer` or None
        None if no frame kept a tile.
    """
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
    by_depth = misfit is not None and misfit.shape[-1] >= MISFIT_COLUMNS
    fill_scale = _fill_scale(misfit[..., 5:MISFIT_COLUMNS][kept]) if by_depth else None
    holes, fill_error, hole_index = [], [], []
    misfit_error, misfit_corr = [], []
    for tile in np.flatnonzero(kept.any(axis=0)):
        pos = np.flatnonzero(kept[:, tile])
        blocks = np.asarray(fine[used_index[pos], tile], dtype=np.float32)
        gamma = fill = 0.0
        corr = np.zeros(2)
        if misfit is not None:  # pooled over frames, then the direction that keeps most
            power = float(np.sum(np.mean(np.square(blocks, dtype=float), axis=(1, 2))))
            pooled = np.sum(misfit[pos, tile, :2], axis=0, dtype=float)
            gamma = max(0.0, pooled.max()) / power if power > 0 else 0.0
            if fill_scale is not None and power > 0:  # a bin of relative scale 1, per frame
                amplitude = _fill_amplitude(misfit[pos, tile, 5:MISFIT_COLUMNS], fill_scale)
                fill = amplitude * pos.size / power  # summed over the frames, as power is
            elif misfit.shape[-1] > 2 and power > 0:
                fill = max(0.0, float(np.sum(misfit[pos, tile, 2], dtype=float))) / power
            if misfit.shape[-1] > 3:
                corr = _misfit_correlation(pooled, np.sum(misfit[pos, tile, 3:5], axis=0))
        i, j = divmod(int(tile), nt)
        hole = ~context.ok[i * t : (i + 1) * t, j * t : (j + 1) * t]
        if fill > 0 and hole.any():  # the tile's holes (their depth classes), quoted
            depth = context.hole_class[i * t : (i + 1) * t, j * t : (j + 1) * t]
            holes.append(depth if fill_scale is not None else hole)
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
        quoted = np.sqrt(quoted**2 + gamma * power)
        misfit_error.append(np.sqrt(gamma * power))
        misfit_corr.append(np.broadcast_to(corr, (planes.size, 2)))
        has_fill = fill > 0 and hole.any()
        fill_error.append(np.sqrt(fill * power) if has_fill else np.zeros(planes.size))
        hole_index.append(np.full(planes.size, len(holes) - 1 if has_fill else -1))
        factors, images = compress_tile(blocks, error, tolerance)
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
        misfit=np.concatenate(misfit_error) if misfit is not None else None,
        misfit_corr=np.concatenate(misfit_corr) if misfit is not None else None,
    )


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
