"""Stage 2 of a build: the streaming pass over the frames.

`make_context` computes, once per build, everything the per-frame work needs
(`FrameContext`: static scene, star/bleed/strap/bad-column masks, bin weights,
strap geometry, fine-layer context). `process_frame` turns one calibrated FFI
into its binned values, errors, pixel counts, strap sums and fine residuals
(`FrameResult`); `process_chunk` does a list of frames (`ChunkResult`), the
unit of work of the Dask build. Images are the science pixels of the build's
region (rows 1..2048, columns 45..2092 for a whole CCD).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from ..ccd import SCIENCE_COLUMNS, Region
from ..exceptions import ScatterLightError
from . import binning, masks
from .config import BuildConfig
from .fine import FineContext, FineFrame, fine_residual, make_fine_context
from .strap_photometry import (
    STRAP_ROW_BLOCKS,
    flatten_straps,
    gather_columns,
    reference_weights,
    strap_columns,
    strap_geometry,
    strap_rows,
    strap_sums,
)

if TYPE_CHECKING:  # pragma: no cover
    from .sources import FFISource


__all__ = [
    "FrameResult",
    "ChunkResult",
    "FrameContext",
    "make_context",
    "process_frame",
    "process_chunk",
]

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------- per-frame results
@dataclass
class FrameResult:
    """What the per-frame work keeps of one frame (`process_frame`).

    Attributes
    ----------
    value, error : ndarray, shape (nb, nb)
        Binned scattered light and its 1-sigma error [e-/s].
    npix : ndarray of int, shape (nb, nb)
        Pixels used in each bin.
    strap : ndarray of float64, shape (nstraps, STRAP_ROW_BLOCKS, 2)
        Per strap column and block of rows, ``sum(strap * reference)`` and
        ``sum(reference**2)`` (zero for straps without references).
    fine : `~lk_scatterlight.builder.fine.FineFrame` or None
        The frame's kept fine-layer tiles (None without a fine layer).
    noise : ndarray, shape (nb, nb), or None
        The noise part of ``error`` (`~lk_scatterlight.builder.binning.significant_noise`;
        ``error`` where a bin holds no significant structure or was filled) [e-/s];
        None without the FFI's uncertainty image.
    """

    value: np.ndarray
    error: np.ndarray
    npix: np.ndarray
    strap: np.ndarray
    fine: FineFrame | None = None
    noise: np.ndarray | None = None


@dataclass
class ChunkResult:
    """Per-frame results of several frames, in the dtypes of the work area.

    A chunk of 50 frames at 16-px bins is about 8 MB: what a Dask worker sends
    back instead of the ~1.7 GB of frames it read.

    Attributes
    ----------
    index : ndarray of int, shape (n,)
        Frame indices (positions in the source's frame list).
    value, error : ndarray of float32, shape (n, nb, nb)
    npix : ndarray of int16, shape (n, nb, nb)
    strap : ndarray of float64, shape (n, nstraps, STRAP_ROW_BLOCKS, 2)
    noise : ndarray of float32, shape (n, nb, nb)
        NaN for frames without a noise part.
    fine : list of `~lk_scatterlight.builder.fine.FineFrame` or None
        Each frame's kept fine-layer tiles.
    """

    index: np.ndarray
    value: np.ndarray
    error: np.ndarray
    npix: np.ndarray
    strap: np.ndarray
    noise: np.ndarray
    fine: list = field(default_factory=list)

    #: dtypes of the work-area arrays (and of a chunk's arrays).
    DTYPES = {
        "value": np.float32,
        "error": np.float32,
        "npix": np.int16,
        "strap": np.float64,
        "noise": np.float32,
    }

    @staticmethod
    def shapes(n: int, nbins: int, nstraps: int) -> dict[str, tuple[int, ...]]:
        """Shapes of the arrays of ``n`` frames (of the work area: all frames)."""
        planes = (n, nbins, nbins)
        return {
            "value": planes,
            "error": planes,
            "npix": planes,
            "strap": (n, nstraps, STRAP_ROW_BLOCKS, 2),
            "noise": planes,
        }

    @classmethod
    def from_frames(
        cls, indices: Sequence[int], results: Sequence[FrameResult], nbins: int, nstraps: int
    ) -> ChunkResult:
        """Stack `FrameResult` objects (cast as the work area stores them)."""
        shapes = cls.shapes(len(results), nbins, nstraps)
        arrays = {}
        for name, dtype in cls.DTYPES.items():
            out = np.empty(shapes[name], dtype=dtype)
            for k, result in enumerate(results):
                out[k] = stored(result, name)
            arrays[name] = out
        fine = [r.fine for r in results]
        return cls(index=np.asarray(indices, dtype=np.int64), fine=fine, **arrays)

    def __len__(self) -> int:
        return int(self.index.size)


def stored(result: FrameResult, name: str):
    """What the work area stores of ``result``'s ``name`` (NaN for an unknown noise part)."""
    value = getattr(result, name)
    return np.nan if value is None else value


@dataclass
class FrameContext:
    """Everything the per-frame work needs, computed once per build (`make_context`).

    About 74 MB (static scene, its residual and the two weight masks in float32, clean
    mask in bool): a Dask build sends it once to every worker.

    Attributes
    ----------
    static : ndarray of float32, shape (2048, 2048)
        Static scene subtracted from every frame [e-/s].
    weights : ndarray of float32, shape (2048, 2048)
        1 where a pixel may enter the bins, 0 for sources, straps and bad columns.
    clean : ndarray of bool, shape (2048, 2048)
        Pixels free of sources and bad columns (straps included), for the
        strap sums.
    strap_idx : ndarray of int
        0-based science columns of the measurable straps.
    ref_idx : ndarray of int, shape (len(strap_idx), 4)
        Their reference columns.
    strap_pos : ndarray of int
        Position of each measurable strap among all masked straps.
    strap_rows : ndarray of bool, shape (2048, len(strap_idx))
        Rows where each strap and its references are free of sources.
    nstraps : int
        Number of masked strap columns.
    pixel_bin : int
    clip : float
    curvature_correction : bool
    source_fraction : float
        Fraction of the pixels masked as sources (provenance).
    mask_sums : `~lk_scatterlight.builder.binning.MaskSums`, optional
        Sums of ``weights`` per bin that every frame's plane fit reuses (about
        1.3 MB for 16 px bins); None to recompute them per frame.
    fine : `~lk_scatterlight.builder.fine.FineContext` or None
        Constants of the fine layer (None without one).
    unread_rows : ndarray of int or None
        Rows a sparse read skipped (all NaN); None when every row was read.
    nearest_read_row : ndarray of int or None
        For every row, the nearest row that was read (to stand in for the
        skipped rows' FFI uncertainties).
    min_fraction : float
        Fewest valid pixels of a bin, as a fraction of its pixels (0.2, scaled
        by the fraction of rows read).
    static_residual : ndarray of float32, shape (2048, 2048), optional
        `~lk_scatterlight.builder.binning.static_residual` of ``static``: the bin
        errors leave out the static scene's own noise (the same in every frame).
        None: they include it.
    """

    static: np.ndarray
    weights: np.ndarray
    clean: np.ndarray
    strap_idx: np.ndarray
    ref_idx: np.ndarray
    strap_pos: np.ndarray
    strap_rows: np.ndarray
    nstraps: int
    pixel_bin: int
    clip: float
    curvature_correction: bool
    source_fraction: float
    mask_sums: binning.MaskSums | None = None
    fine: FineContext | None = None
    unread_rows: np.ndarray | None = None
    nearest_read_row: np.ndarray | None = None
    min_fraction: float = 0.2
    static_residual: np.ndarray | None = None

    @property
    def nbins(self) -> int:
        """Bins per side of a plane."""
        return self.static.shape[0] // self.pixel_bin

    @property
    def nbytes(self) -> int:
        """Memory held by the context's arrays [bytes]."""
        arrays = (self.static, self.weights, self.clean, self.strap_idx, self.ref_idx)
        if self.static_residual is not None:
            arrays += (self.static_residual,)
        sums = 0 if self.mask_sums is None else self.mask_sums.nbytes
        if self.fine is not None:
            arrays += (self.fine.weights, self.fine.inv_count, self.fine.to_fine)
        return int(sum(a.nbytes for a in arrays) + sums)


def make_context(
    static: np.ndarray, config: BuildConfig, region: Region | None = None
) -> FrameContext:
    """Masks (stars, bleeds, straps, bad columns) and the per-frame context of a build.

    Parameters
    ----------
    static : ndarray of float32, shape (n, n)
        The static scene (`static_scene`) of the region.
    config : `BuildConfig`
    region : `~lk_scatterlight.ccd.Region`, optional
        The CCD pixels ``static`` covers; default the whole science area.
        Pixels never read (NaN in ``static``: a sparse regional read) are masked.

    Returns
    -------
    context : `FrameContext`
    """
    region = region or Region.full()
    first = region.column
    straps = strap_columns() if config.mask_straps else np.zeros(0, dtype=int)
    strap_cols, ref_idx = strap_geometry(straps)
    # Measurable straps of the region, with their references, in region array columns.
    shift = first - SCIENCE_COLUMNS[0]
    strap_idx, ref_idx = strap_cols - first, ref_idx - shift
    inside = (strap_idx >= 0) & (strap_idx < static.shape[1])
    inside &= np.all((ref_idx >= 0) & (ref_idx < static.shape[1]), axis=1)
    strap_cols, strap_idx, ref_idx = strap_cols[inside], strap_idx[inside], ref_idx[inside]
    flat = flatten_straps(static, strap_idx, ref_idx)
    sources = masks.static_source_mask(flat, nsigma=config.star_nsigma)
    bad = masks.column_mask(static.shape, config.bad_columns, first_column=first)
    read = np.isfinite(static)  # False only for rows a sparse read skipped
    clean = ~(sources | bad)
    straps_mask = masks.column_mask(static.shape, straps, first_column=first)
    valid = clean & ~straps_mask
    weights = valid.astype(np.float32)  # converted once, not per frame
    sums = binning.mask_sums(weights, config.pixel_bin)
    fine = None
    if config.fine_bin:
        bright = masks.static_source_mask(flat, nsigma=config.fine_star_nsigma, grow=0)
        # A ridge in the static scene is structure, not a star; rows a sparse read
        # skipped stay masked but must not join sources into one large region.
        bright = masks.drop_extended(bright & read, static) | ~read
        fine_valid = ~(bright | bad | straps_mask)
        fine_valid[:, strap_idx] = ~(bright[:, strap_idx] | bad[:, strap_idx])  # measurable
        fine = make_fine_context(
            fine_valid.astype(np.float32),
            config.pixel_bin,
            config.fine_bin,
            config.fine_tile,
            config.fine_threshold,
            strap_idx=strap_idx,
            read_rows=read.any(axis=1),
        )
        line = reference_weights(strap_idx, ref_idx)[0]
        fine.strap_noise = (ref_idx, line, strap_rows(clean, strap_idx, ref_idx))
        # The static scene on the strap sums' columns: gathered once, not per frame.
        fine.strap_static = gather_columns(np.asarray(static, np.float32), strap_idx, ref_idx)
    unread = np.flatnonzero(~read.any(axis=1))
    nearest = None
    if unread.size:
        read_rows = np.flatnonzero(read.any(axis=1))
        if read_rows.size == 0:
            msg = "the static scene has no finite pixel: nothing was read."
            raise ScatterLightError(msg)
        rows = np.arange(read.shape[0])
        nearest = read_rows[np.abs(rows[:, None] - read_rows[None, :]).argmin(axis=1)]
    return FrameContext(
        min_fraction=0.2 * (1 - unread.size / read.shape[0]),
        unread_rows=unread if unread.size else None,
        nearest_read_row=nearest,
        static=np.asarray(static, dtype=np.float32),
        weights=weights,
        clean=clean,
        strap_idx=strap_idx,
        ref_idx=ref_idx,
        strap_pos=np.searchsorted(straps, strap_cols),
        strap_rows=strap_rows(clean, strap_idx, ref_idx),
        nstraps=int(straps.size),
        pixel_bin=config.pixel_bin,
        clip=config.clip,
        curvature_correction=config.curvature_correction,
        source_fraction=float(sources[read].mean()) if read.any() else 0.0,
        mask_sums=sums,
        fine=fine,
        static_residual=binning.static_residual(static, weights, config.pixel_bin, sums),
    )


# ---------------------------------------------------------------------- per-frame work
def process_frame(
    flux: np.ndarray, context: FrameContext, flux_err: np.ndarray | None = None
) -> FrameResult:
    """Static-subtract, mask and bin one frame; measure its strap sums.

    Parameters
    ----------
    flux : ndarray of float32, shape (2048, 2048)
        Science pixels of the frame [e-/s].
    context : `FrameContext`
    flux_err : ndarray of float32, shape (2048, 2048), optional
        The FFI's uncertainty image [e-/s]: a floor for the bin errors (a dark
        frame that is the static scene's median has no residual scatter).

    Returns
    -------
    result : `FrameResult`
    """
    diff = flux - context.static
    if context.unread_rows is not None:  # a sparse read: rows that hold no data
        diff[context.unread_rows] = 0  # masked everywhere; 0 keeps the sums finite
        if flux_err is not None:
            flux_err = flux_err[context.nearest_read_row]
    binned = binning.bin_plane_fit(
        diff,
        context.weights,
        context.pixel_bin,
        clip=context.clip,
        uncertainty=flux_err,
        sums=context.mask_sums,
        min_fraction=context.min_fraction,
        static=context.static_residual,
    )
    value, filled_error = binning.fill_empty_bins(binned.value, binned.error)
    error = filled_error
    noise = None
    if binned.noise is not None:
        noise = binning.significant_noise(binned)
        noise = np.where(np.isnan(noise), filled_error, noise)  # filled bins: all noise
    if context.curvature_correction:
        value = binning.curvature_correction(value, binned.moments, context.pixel_bin)
        error = binning.curvature_error(error, binned.moments, context.pixel_bin)
        if noise is not None:  # propagated alike (variances add linearly): still <= error
            noise = np.minimum(
                binning.curvature_error(noise, binned.moments, context.pixel_bin), error
            )
    blocks = strap_sums(
        diff,
        context.clean,
        context.strap_idx,
        context.ref_idx,
        context.strap_rows,
        blocks=STRAP_ROW_BLOCKS,
    )
    measured = blocks.sum(axis=1)
    sums = np.zeros((context.nstraps, STRAP_ROW_BLOCKS, 2))
    sums[context.strap_pos] = blocks
    fine = None
    if context.fine is not None:
        # The fine layer wants the pixels' noise, as the plane fits measured it.
        fine = fine_residual(
            diff, value, filled_error, binned.npix, context.fine, flux_err, measured
        )
    return FrameResult(
        value=value,
        error=error,
        npix=binned.npix,
        strap=sums,
        fine=fine,
        noise=noise,
    )


def process_chunk(
    source: FFISource, indices: Sequence[int], context: FrameContext, prefetch: int = 1
) -> ChunkResult:
    """Read and process several frames; return only their small per-frame results.

    Frames are read in order with ``prefetch`` frames in flight
    (`~lk_scatterlight.builder.sources.FFISource.iter_read`), so memory is
    about ``(prefetch + 1) x 35 MB`` plus the context, whatever the chunk length.

    Parameters
    ----------
    source : `~lk_scatterlight.builder.sources.FFISource`
    indices : sequence of int
        Frames to process.
    context : `FrameContext`
    prefetch : int
        Frames read ahead.

    Returns
    -------
    chunk : `ChunkResult`
    """
    done, results = [], []
    for info, flux, flux_err in source.iter_read(list(indices), prefetch=prefetch):
        results.append(process_frame(flux, context, flux_err))
        done.append(info.index)
        del flux
    return ChunkResult.from_frames(done, results, context.nbins, context.nstraps)
