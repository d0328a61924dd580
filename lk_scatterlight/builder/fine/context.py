"""What a build's fine layer needs for every frame, and what each frame gives.

`FineContext` holds the masks, tiles and hole pieces; `FineFrame` one frame's result.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from ... import interpolate
from .fill import _first_fill, _hole_ring, _profile_pieces, _profiled

#: Fine bins with fewer valid pixels than this are left to the coarse model.
MIN_PIXELS = 4


#: Fine bins whose valid pixels' centroid lies farther than this from the bin centre [px]
#: are holes too: their mean is the field there, not at the centre (see `make_fine_context`).
MAX_OFFSET = 0.5


#: Depth classes of filled bins (`depth_class`): 1, <= 2, <= 4, <= 8, <= 16 and > 16 bins.
FILL_CLASSES = 6


#: Columns of `FineFrame.misfit`: rows, columns, fill, rows and columns at a lag of 2 px,
#: then the fill's squared error summed per depth class and the bins it was summed over.
MISFIT_COLUMNS = 5 + 2 * FILL_CLASSES


#: ... then rows and columns at lags of 3 and 4 px: `FineFrame.misfit`'s width.
MISFIT_WIDTH = MISFIT_COLUMNS + 4


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
    strap_noise : tuple of ndarray, optional
        For the noise in each frame's strap sums: the straps' reference columns
        (shape (nstraps, 4)), their weights at the strap (the reference's
        straight line, same shape) and the rows the sums use (shape
        (2048, nstraps)). None: the per-frame response is taken as measured.
    strap_static : ndarray of float32, shape (ncolumns, nrows), optional
        The static scene the frames are differences from, on the columns the
        strap sums read, one array row per image column
        (`~lk_scatterlight.builder.strap_photometry.gather_columns`
        with ``strap_idx`` and the reference columns of ``strap_noise``; gathered
        once per build): the per-frame strap response is measured on the whole
        frame (difference plus static scene, `_frame_strap_sums`), not on the
        difference alone. None: on the difference (the sums the frame pass
        passes in).
    sparse : `SparseRows`, optional
        Where the rows of a sparse read (every k-th row) sit in the fine bins;
        None when every row was read.
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
    strap_noise: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
    strap_static: np.ndarray | None = None
    sparse: SparseRows | None = None

    @property
    def ntiles(self) -> int:
        return self.inv_count.shape[0] // self.tile

    @functools.cached_property
    def first_fill(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """`_fill_isotropic`'s first width at ``holes`` (`_first_fill`), made when
        first asked for: the same for every frame without holes of its own."""
        return _first_fill(self.ok, *self.holes)

    @functools.cached_property
    def ring_profiled(self) -> np.ndarray:
        """Per hole of ``ring_holes``, whether `_fill_probe` refits it with profiles
        (`_profiled`), made when first asked for."""
        return _profiled(self.ring_holes[0], self.labels)

    @functools.cached_property
    def sampled_ok(self) -> np.ndarray:
        """``ok`` at the pixels of every 4th row (the rows `fine_residual` samples the
        uncertainty image on), made when first asked for."""
        b = self.pixel_bin
        return np.repeat(np.repeat(self.ok, b, axis=0)[::4], b, axis=1)

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        for cache in ("first_fill", "ring_profiled", "sampled_ok"):  # remade where used
            state.pop(cache, None)
        return state


@dataclass
class SparseRows:
    """The read rows of a sparse read (every k-th row) in the fine bins (`sparse_rows`).

    A fine bin then holds one or a few rows: its mean is the field along those
    rows, not over the bin, and the coarse model subtracted from it and the step
    from bin means to values at the bin centres must say so.

    Attributes
    ----------
    to_fine : ndarray of float32, shape (nfine, ncoarse)
        Keys weights from the coarse bin centres to the mean over each fine
        bin's read rows (rows only; the columns use `FineContext.to_fine`).
    offset : ndarray of float32, shape (nfine,)
        Mean offset [px] of each fine bin row's read rows from its centre.
    spread : ndarray of float32, shape (nfine,)
        Mean squared offset [px**2] of those rows.
    """

    to_fine: np.ndarray
    offset: np.ndarray
    spread: np.ndarray


@dataclass
class FineFrame:
    """The fine layer of one frame: its significant tiles.

    Attributes
    ----------
    tiles : ndarray of int32, shape (nkept,)
        Flat tile indices (``tile_row * ntiles + tile_col``) of the kept tiles:
        those whose statistic passes the threshold, and the candidates above
        `~lk_scatterlight.builder.fine.persist.candidate_level` (the assembly
        keeps these only in persistent tiles).
    blocks : ndarray of float32, shape (nkept, tile, tile)
        Their residuals [e-/s].
    sigma : ndarray of float32, shape (nkept,)
        Typical 1-sigma error of one fine bin in each kept tile [e-/s], as the
        detection calibrated it on the frame (static scene's noise included).
    chi2 : ndarray of float32, shape (ntiles, ntiles)
        Every tile's mean ``(r / sigma)**2`` (which candidates pass, and diagnostics).
    calibration : float
        The factor (>= 1) by which the frame's calibration scaled the predicted
        noise variance: ``sigma**2 / calibration`` is the frame's own noise, what
        the stored layer quotes (the static scene's noise is the same in every
        frame, a constant per bin, and no error of the light's variation).
    misfit : ndarray of float32, shape (nkept, MISFIT_WIDTH), optional
        Per kept tile, the structure the model (coarse plane plus kept tiles)
        misses at the tile's pixels, measured along rows and along columns
        [(e-/s)**2 per pixel] (`_tile_misfit`), the error of filling its
        holes [(e-/s)**2 per fine bin] (`_fill_misfit`), and the first two
        measured between pixels two apart; then (`MISFIT_COLUMNS` in all) the
        fill's squared error summed per depth class and the bins summed; then
        (`MISFIT_WIDTH` in all) the first two at lags of 3 and 4 px.
        Unbiased estimates, so they are negative as often as positive where the
        model misses nothing; 0 for the candidates (tiles below the threshold),
        whose errors are not measured. None: not measured.
    fill_probe : ndarray of float32, shape (nkept, 2, tile, tile), optional
        Per kept tile, `_fill_misfit`'s probe bin by bin: ``fill - value`` of
        each hidden valid bin [e-/s] and the frame's own noise variance of that
        bin [(e-/s)**2]; NaN on the bins not probed (all of a candidate's). None:
        not measured.
    """

    tiles: np.ndarray
    blocks: np.ndarray
    sigma: np.ndarray
    chi2: np.ndarray
    calibration: float = 1.0
    misfit: np.ndarray | None = None
    fill_probe: np.ndarray | None = None


def make_fine_context(
    weights: np.ndarray,
    coarse_bin: int,
    pixel_bin: int,
    tile: int,
    threshold: float,
    strap_idx: np.ndarray | None = None,
    read_rows: np.ndarray | None = None,
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
    read_rows : ndarray of bool, shape (2048,), optional
        The rows a sparse read holds (the others are masked in ``weights``);
        a bin's centroid is then measured from its read rows' (`SparseRows`).

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
    coarse_centres = coarse_bin * np.arange(n // coarse_bin) + (coarse_bin - 1) / 2
    # Keys weights of every pixel row (and column) from the coarse bin centres.
    pixels = interpolate.spatial_weights(np.arange(n, dtype=float), coarse_centres)
    sparse = None
    if read_rows is not None and not np.all(read_rows):
        sparse = sparse_rows(read_rows, pixel_bin, pixels)
    row_centre = None if sparse is None else sparse.offset
    offset = _centroid_offset(weights, pixel_bin, count, row_centre)
    enough = (count >= MIN_PIXELS) & (offset <= MAX_OFFSET)
    if sparse is not None:
        # The mask's shape between the read rows, as a full read would see it: a bin
        # whose read row lies just outside a star's mask is lopsided all the same.
        whole = _between_read_rows(weights, read_rows)
        whole_count = _bin_sums(whole, pixel_bin)
        enough &= (whole_count >= MIN_PIXELS) & (
            _centroid_offset(whole, pixel_bin, whole_count) <= MAX_OFFSET
        )
    inv_count = np.where(enough, 1 / np.maximum(count, 1), 0).astype(np.float32)
    count = np.where(enough, count, 0).astype(np.float32)
    tile_bins = enough.reshape(nt, tile, nt, tile).sum(axis=(1, 3))
    tile_inv_count = np.median(inv_count.reshape(nt, tile, nt, tile), axis=(1, 3)).ravel()
    tile_inv_count = np.maximum(tile_inv_count, 1 / pixel_bin**2).astype(np.float32)
    typical = (1 / tile_inv_count).reshape(nt, nt).repeat(tile, 0).repeat(tile, 1)
    chi_weight = np.where(enough, count, typical).astype(np.float32)
    # Mean of the Keys weights over each fine bin's pixels: the coarse model's bin means.
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
        sparse=sparse,
    )


def sparse_rows(read_rows: np.ndarray, pixel_bin: int, pixels: np.ndarray) -> SparseRows:
    """Where the read rows sit in each fine bin row (see `SparseRows`).

    ``pixels``: the Keys weights of every pixel row from the coarse bin centres.
    Fine bin rows without a read row get the bin's own weights and no offset
    (their bins are holes).
    """
    nf = read_rows.size // pixel_bin
    read = np.asarray(read_rows, dtype=float).reshape(nf, pixel_bin)
    nread = read.sum(axis=1)
    inv = np.where(nread > 0, 1 / np.maximum(nread, 1), 0)[:, None]
    offset = np.arange(pixel_bin) - (pixel_bin - 1) / 2
    full = pixels.reshape(nf, pixel_bin, -1)
    weights = np.where(nread[:, None] > 0, read * inv, 1 / pixel_bin)
    return SparseRows(
        to_fine=np.einsum("ik,ikc->ic", weights, full).astype(np.float32),
        offset=(read @ offset * inv[:, 0]).astype(np.float32),
        spread=(read @ offset**2 * inv[:, 0]).astype(np.float32),
    )


def depth_class(depth: np.ndarray) -> np.ndarray:
    """Class of a filled bin's depth (distance [fine bins] to the nearest measured bin).

    1 for a bin next to a measured one (depth 1), then ``1 + ceil(log2(depth))``:
    2 up to 2 bins, 3 up to 4, 4 up to 8, 5 up to 16, and `FILL_CLASSES` (6) beyond.
    """
    depth = np.maximum(np.asarray(depth, dtype=float), 1.0)
    return np.minimum(1 + np.ceil(np.log2(depth) - 1e-9).astype(int), FILL_CLASSES)


#: Farthest distance [fine bins] `depth_class_at` searches: past it a bin is in the last class.
_DEEPEST = 2 ** (FILL_CLASSES - 2)


def depth_class_at(measured: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """`depth_class` of the bins ``rows, cols`` (not ``measured``) of a square grid.

    The same as ``depth_class(distance_transform_edt(~measured)[rows, cols])``
    without the transform of the whole grid: the neighbours of the bins are
    looked at shell by shell, nearest first, until each has met a measured bin
    (at ``sqrt(d2)``, the transform's own distance); a bin with none within
    `_DEEPEST` bins is deeper than the last class's bound. The bins of a probe
    lie a bin or two from a measured one, so a few shells do.
    """
    n = measured.shape[0]
    reach = np.arange(-_DEEPEST, _DEEPEST + 1)
    dr, dc = (x.ravel() for x in np.meshgrid(reach, reach, indexing="ij"))
    d2 = dr**2 + dc**2
    order = np.argsort(d2, kind="stable")
    dr, dc, d2 = dr[order], dc[order], d2[order]
    shells = np.flatnonzero(np.diff(d2)) + 1
    depth = np.full(rows.size, _DEEPEST + 1.0)
    left = np.arange(rows.size)
    for lo, hi in zip(shells[:-1], shells[1:], strict=True):
        if d2[lo] > _DEEPEST**2 or not left.size:
            break
        r = rows[left, None] + dr[lo:hi]
        c = cols[left, None] + dc[lo:hi]
        inside = (r >= 0) & (r < n) & (c >= 0) & (c < n)
        hit = (inside & measured[np.clip(r, 0, n - 1), np.clip(c, 0, n - 1)]).any(axis=1)
        depth[left[hit]] = np.sqrt(float(d2[lo]))
        left = left[~hit]
    return depth_class(depth)


def _between_read_rows(weights: np.ndarray, read_rows: np.ndarray) -> np.ndarray:
    """``weights`` on every row: an unread row is valid where the read rows on both
    sides of it are (the nearer one alone at the image's edges)."""
    read = np.flatnonzero(read_rows)
    rows = np.arange(read_rows.size)
    after = read[np.minimum(np.searchsorted(read, rows), read.size - 1)]
    before = read[np.maximum(np.searchsorted(read, rows, side="right") - 1, 0)]
    return weights[before] * weights[after]


def _centroid_offset(
    weights: np.ndarray, pixel_bin: int, count: np.ndarray, row_centre: np.ndarray | None = None
) -> np.ndarray:
    """Distance [px] from each fine bin's centre to the centroid of its valid pixels.

    ``row_centre``: per fine bin row, the row offset [px] taken as its centre
    instead (a sparse read's rows, `SparseRows.offset`).
    """
    n = weights.shape[0]
    offset = np.tile(np.arange(pixel_bin, dtype=np.float32) - (pixel_bin - 1) / 2, n // pixel_bin)
    d_row = _bin_sums(weights * offset[:, None], pixel_bin)
    if row_centre is not None:
        d_row -= row_centre[:, None] * count
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
