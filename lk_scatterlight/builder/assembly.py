"""Stage 3 of a build: the cube from the finished work area.

`time_planes` groups the good frames into planes (one per frame, or bins of
``time_bin`` days that never cross a data gap), `bin_planes` averages the
per-frame results within each plane, and `assemble` makes the
`~lk_scatterlight.cube.ScatterLightCube` with its strap response, fine layer and
provenance. A compact cube of one plane per frame is compressed straight from
the memory-mapped work area (`lk_scatterlight.lowrank.compress_planes`).
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from ..binsplit import SplitSums, covered_anywhere, fine_coverage
from ..ccd import SCIENCE_COLUMNS, SCIENCE_ROWS
from ..compactfine import carry_compression
from ..cube import GAP_FACTOR, ScatterLightCube, compact_cube
from ..lowrank import CHUNK_VALUES, DEFAULT_MAX_RANK, Planes, compress_planes
from .config import BuildConfig, PlaneBinner
from .fine import assemble_fine
from .framepass import FrameContext
from .plan import BuildPlan, WorkArea, regional_margin
from .strap_photometry import strap_response

if TYPE_CHECKING:  # pragma: no cover
    from .sources import FrameInfo


__all__ = [
    "time_planes",
    "bin_planes",
    "assemble",
]

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------- planes and cube
def time_planes(
    frames: Sequence[FrameInfo], use: np.ndarray, time_bin: float | None
) -> list[np.ndarray]:
    """Group the used frames into planes that never cross a data gap.

    Parameters
    ----------
    frames : sequence of `~lk_scatterlight.builder.sources.FrameInfo`
    use : ndarray of bool, shape (nframes,)
        Frames that enter the cube.
    time_bin : float, optional
        Plane duration [d]; None for one plane per frame.

    Returns
    -------
    groups : list of ndarray of int
        Positions among the used frames of each plane's frames.
    """
    t = np.array([f.time for f in frames])[use]
    start = np.array([f.tstart for f in frames])[use]
    positions = np.arange(t.size)
    if time_bin is None:
        return [positions[i : i + 1] for i in positions]
    from ..interpolate import time_segments

    stop = np.array([f.tstop for f in frames])[use]
    max_gap = GAP_FACTOR * float(np.median(stop - start))
    segment = time_segments(start, stop, max_gap)
    groups = []
    for seg in np.unique(segment):
        members = positions[segment == seg]
        bin_id = np.floor((t[members] - start[members[0]]) / time_bin).astype(int)
        for b in np.unique(bin_id):
            groups.append(members[bin_id == b])
    return groups


_time_planes = time_planes


def bin_planes(
    value: np.ndarray, error: np.ndarray, groups: Sequence[np.ndarray]
) -> tuple[np.ndarray, np.ndarray]:
    """Average per-frame values into planes.

    Parameters
    ----------
    value, error : ndarray, shape (n, nb, nb)
        Per-frame binned values and errors [e-/s].
    groups : sequence of ndarray of int
        Positions (along the first axis) of each plane's frames.

    Returns
    -------
    flux, flux_err : ndarray, shape (len(groups), nb, nb)
        Mean of each group and its error ``sqrt(sum(error**2)) / n``.
    """
    flux = np.stack([value[g].mean(axis=0) for g in groups])
    flux_err = np.stack([np.sqrt((error[g] ** 2).sum(axis=0)) / len(g) for g in groups])
    return flux, flux_err


def assemble(
    plan: BuildPlan,
    config: BuildConfig,
    work: WorkArea,
    context: FrameContext,
    dark: Sequence[int],
    binner: PlaneBinner = bin_planes,
) -> ScatterLightCube:
    """The cube (compressed if ``config.compact``) from the finished work area.

    Parameters
    ----------
    plan : `BuildPlan`
    config : `BuildConfig`
    work : work area
        With every used frame's results.
    context : `FrameContext`
    dark : sequence of int
        Frames of the static scene (provenance).
    binner : callable
        ``binner(value, error, groups) -> (flux, flux_err)``: the time-binning
        stage (`bin_planes`, or the Dask version); only called with ``time_bin``.

    Returns
    -------
    cube : `~lk_scatterlight.ScatterLightCube`
    """
    from .. import __version__

    frames = plan.frames
    use = plan.good & work["done"]
    groups = time_planes(frames, use, config.time_bin)
    used_index = np.flatnonzero(use)
    t = np.array([f.time for f in frames])[use]
    tstart = np.array([f.tstart for f in frames])[use]
    tstop = np.array([f.tstop for f in frames])[use]
    plane_time = np.array([t[g].mean() for g in groups])
    plane_start = np.array([tstart[g].min() for g in groups])
    plane_stop = np.array([tstop[g].max() for g in groups])
    nframes = np.array([len(g) for g in groups])
    npix = _median_over_frames(work["npix"], used_index).astype(np.int32)
    fine = None
    if context.fine is not None:
        fine = assemble_fine(
            work["fine"],
            np.asarray(work["fine_kept"][used_index]),
            np.asarray(work["fine_sigma"][used_index]),
            used_index,
            groups,
            context.fine,
            config.compact_tolerance,
            np.asarray(work["fine_calibration"][used_index]),
            np.asarray(work["fine_misfit"][used_index]),
            fill_probe=work["fine_fillprobe"],
            chi2=np.asarray(work["fine_chi2"][used_index]),
        )

    straps = plan.straps
    response, response_err, measured = strap_response(work["strap"], used_index)

    b = config.pixel_bin
    nb = plan.nbins
    centres = b * np.arange(nb) + (b - 1) / 2
    region = plan.region
    if fine is not None and not region.is_full:  # tiles numbered on the whole CCD
        tile_px = fine.pixel_bin * fine.tile
        fine = dataclasses.replace(
            fine,
            tile_row=fine.tile_row + (region.row - SCIENCE_ROWS[0]) // tile_px,
            tile_col=fine.tile_col + (region.column - SCIENCE_COLUMNS[0]) // tile_px,
        )
    dropped = {}
    for bit in range(20):
        n = int(np.sum((plan.quality & (1 << bit)) & config.bitmask != 0))
        if n:
            dropped[str(1 << bit)] = n
    meta = {
        "creator": "lk_scatterlight",
        "version": __version__,
        "built": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "source": plan.description,
        "pixel_bin": b,
        "time_bin_days": config.time_bin,
        "frames_total": len(frames),
        "frames_used": int(use.sum()),
        "frames_dropped_by_bit": dropped,
        "quality_bitmask": config.bitmask,
        "dark_frames": [frames[i].name for i in np.asarray(dark).tolist()],
        "masked_source_fraction": round(context.source_fraction, 5),
        "masked_columns_straps": int(straps.size),
        "bad_columns": list(config.bad_columns),
        "bin_statistic": f"robust local plane fit, {config.clip} sigma clip",
        "curvature_correction": config.curvature_correction,
        "error_estimator": "standard error of the plane-fit intercept from residual scatter",
        "region": (
            None
            if region.is_full
            else {
                "read": [region.row, region.column, region.nrows, region.ncols],
                "row_step": plan.row_step,
            }
        ),
        "fine_layer": (
            {
                "bin": config.fine_bin,
                "tile": config.fine_tile,
                "threshold": config.fine_threshold,
                "blocks": 0 if fine is None else len(fine),
            }
            if config.fine_bin
            else None
        ),
    }
    noise_share = None
    if fine is not None:
        noise_share = _noise_share(
            work, used_index, groups, fine, region.row + centres, region.column + centres
        )
    planes = dict(
        noise_share=noise_share,
        time=plane_time,
        time_start=plane_start,
        time_stop=plane_stop,
        row=region.row + centres,
        column=region.column + centres,
        npix=npix,
        nframes=nframes,
        meta=meta,
        strap_column=straps[measured],
        strap_response=response[measured],
        strap_response_err=response_err[measured],
        fine=fine,
        region=None if region.is_full else region.shrunk(regional_margin(config)),
    )
    if config.compact and config.time_bin is None:
        cube = _assemble_compact(plan, config, work, used_index, planes)
    else:
        value = np.asarray(work["value"])[used_index]
        error = np.asarray(work["error"])[used_index]
        if config.time_bin is not None:
            flux, flux_err = binner(value, error, groups)
        else:
            flux, flux_err = value, error
        cube = ScatterLightCube.from_arrays(
            plan.sector, plan.camera, plan.ccd, flux=flux, flux_err=flux_err, **planes
        )
        if config.compact:
            cube = cube.compress(tolerance=config.compact_tolerance)
    return cube


def _assemble_compact(
    plan: BuildPlan,
    config: BuildConfig,
    work: WorkArea,
    used_index: np.ndarray,
    planes: dict[str, Any],
) -> ScatterLightCube:
    """The compact cube of a one-plane-per-frame build, straight from the work area.

    The memory-mapped ``value`` and ``error`` arrays are compressed block by block
    of frames (`~lk_scatterlight.lowrank.compress_planes`), never loaded whole, so memory
    does not grow with the number of frames; the result is what
    ``ScatterLightCube.from_arrays(...).compress(...)`` of the loaded planes gives.

    Parameters
    ----------
    plan : `BuildPlan`
    config : `BuildConfig`
    work : work area
    used_index : ndarray of int
        Frames (positions in the work area) that are the cube's planes.
    planes : dict
        Keyword arguments of `~lk_scatterlight.ScatterLightCube.from_arrays` other
        than sector, camera, CCD, flux and flux_err (times as BTJD floats).

    Returns
    -------
    cube : `~lk_scatterlight.ScatterLightCube`
        Compact.
    """
    kwargs = dict(planes)
    axes = [kwargs.pop(name) for name in ("time", "time_start", "time_stop", "row", "column")]
    nplanes = len(axes[0])
    carried = covered_anywhere(kwargs.get("fine"), axes[3], axes[4], nplanes)
    lowrank = compress_planes(
        Planes(work["value"], used_index),
        Planes(work["error"], used_index),
        float(config.compact_tolerance),
        DEFAULT_MAX_RANK,
        carried,
    )
    if kwargs.get("fine") is not None:  # its tiles carry what the compression loses there
        kwargs["fine"] = carry_compression(
            kwargs["fine"],
            lowrank,
            work["value"],
            work["error"],
            *axes[3:],
            index=used_index,
            noise_share=kwargs.get("noise_share"),
        )
    return compact_cube(lowrank, plan.sector, plan.camera, plan.ccd, *axes, **kwargs)


def _noise_share(
    work: WorkArea,
    used_index: np.ndarray,
    groups: Sequence[np.ndarray],
    fine,
    row: np.ndarray,
    column: np.ndarray,
) -> np.ndarray | None:
    """The noise share of the bin errors where the fine layer covers them (`binsplit`).

    Read from the work area, and the coverage found, a block of frames at a time
    (a 200-s sector's coverage of every plane would take ~200 MB); None when no
    frame has a noise part (a source without uncertainty images).

    Parameters
    ----------
    work : work area
    used_index : ndarray of int
        Frames (positions in the work area) that enter the cube.
    groups : sequence of ndarray of int
        Positions among the used frames of each plane's frames.
    fine : `~lk_scatterlight.finelayer.FineLayer`
        With tiles numbered on the whole CCD.
    row, column : ndarray of float
        Bin centres, 1-based CCD pixels.
    """
    plane = np.empty(used_index.size, dtype=int)
    for k, members in enumerate(groups):
        plane[members] = k
    sums = SplitSums((row.size, column.size))
    known = False
    step = max(1, CHUNK_VALUES // (row.size * column.size))
    for start in range(0, used_index.size, step):
        index, planes = used_index[start : start + step], plane[start : start + step]
        noise = np.asarray(work["noise"][index])
        known |= bool(np.isfinite(noise).any())
        first = planes.min()
        covered = fine_coverage(fine, row, column, slice(first, planes.max() + 1))
        sums.add(work["error"][index], noise, covered[planes - first])
    return sums.share() if known else None


def _median_over_frames(array: np.ndarray, index: np.ndarray) -> np.ndarray:
    """Median over the frames ``index`` of ``array`` (frames, ...), a block of bins at a time.

    Reads about `~lk_scatterlight.lowrank.CHUNK_VALUES` values per block from a
    memory map instead of all frames at once.
    """
    flat = array.reshape(array.shape[0], -1)
    step = max(1, CHUNK_VALUES // max(len(index), 1))
    out = np.empty(flat.shape[1])
    for start in range(0, flat.shape[1], step):
        out[start : start + step] = np.median(flat[index, start : start + step], axis=0)
    return out.reshape(array.shape[1:])
