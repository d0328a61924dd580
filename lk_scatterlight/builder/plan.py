"""The plan of a cube build and its work area on disk.

`plan_build` selects the frames (quality bitmask), the output path, the work
folder and the identity under which an interrupted build resumes (`BuildPlan`).
`WorkArea` holds the per-frame results in memory-mapped ``.npy`` arrays with a
``done`` flag per frame, so memory does not grow with the number of frames and
a rerun continues where the last one stopped. `source_region`, `region_grid`,
`region_tag` and `regional_margin` describe a regional build (part of a CCD),
`sparse_config` the settings of one that read every k-th row.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..ccd import SCIENCE_COLUMNS, SCIENCE_ROWS, Region
from ..exceptions import ScatterLightError
from ..registry import cube_filename
from ..utils import atomic_write, refuse_overwrite
from . import masks
from .config import BuildConfig
from .fine import MIN_PIXELS, MISFIT_WIDTH, FineFrame
from .framepass import ChunkResult, FrameResult, stored
from .strap_photometry import strap_columns

if TYPE_CHECKING:  # pragma: no cover
    from .sources import FFISource, FrameInfo


__all__ = [
    "BuildPlan",
    "WorkArea",
    "plan_build",
    "region_grid",
    "region_tag",
    "regional_margin",
    "source_region",
    "sparse_config",
]

log = logging.getLogger(__name__)


class WorkArea:
    """Memory-mapped per-frame results and the checkpoint state of one build."""

    def __init__(
        self,
        folder: Path,
        nframes: int,
        nbins: int,
        nstraps: int,
        state: dict,
        fine_shape: tuple[int, int] | None = None,
    ):
        self.folder = folder
        state = json.loads(json.dumps(state, sort_keys=True))  # as it reads back from disk
        self.state = state
        folder.mkdir(parents=True, exist_ok=True)
        state_file = folder / "state.json"
        fresh = True
        if state_file.exists():
            previous = json.loads(state_file.read_text())
            if previous == state:
                fresh = False
            else:
                log.warning("Work folder %s belongs to another build; starting over.", folder)
        dtypes = ChunkResult.DTYPES
        shapes = {
            name: (shape, dtypes[name])
            for name, shape in ChunkResult.shapes(nframes, nbins, nstraps).items()
        }
        shapes["done"] = ((nframes,), np.bool_)
        if fine_shape is not None:  # (tiles, tile side): a sparse file, kept tiles written
            ntiles, side = fine_shape
            shapes["fine"] = ((nframes, ntiles, side, side), np.float32)
            shapes["fine_sigma"] = ((nframes, ntiles), np.float32)
            shapes["fine_kept"] = ((nframes, ntiles), np.bool_)
            shapes["fine_chi2"] = ((nframes, ntiles), np.float32)  # tile statistic
            shapes["fine_calibration"] = ((nframes,), np.float32)
            # rows, columns, fill; rows and columns at a lag of 2 px; fill per depth class;
            # rows and columns at lags of 3 and 4 px
            shapes["fine_misfit"] = ((nframes, ntiles, MISFIT_WIDTH), np.float32)
            # the fill probe bin by bin: fill - value, the bin's noise variance
            shapes["fine_fillprobe"] = ((nframes, ntiles, 2, side, side), np.float32)
        stale = [] if fresh else _stale_arrays(folder, shapes)
        if stale:
            # A work area from an older version of the builder: the frames it finished
            # lack these arrays (or have them in another layout), so it can only be redone.
            log.warning(
                "Work folder %s lacks %s in this version's layout (made by an older "
                "lk-scatterlight); starting over.",
                folder,
                ", ".join(stale),
            )
            fresh = True
        if fresh:
            for f in folder.glob("*.npy"):
                f.unlink()
        self.arrays = {}
        for name, (shape, dtype) in shapes.items():
            path = folder / f"{name}.npy"
            mode = "r+" if path.exists() else "w+"
            if mode == "w+":
                array = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=shape)
            else:
                array = np.lib.format.open_memmap(path, mode="r+")
            self.arrays[name] = array
        if fresh:
            self.arrays["done"][:] = False
            self.flush()
            with atomic_write(state_file) as tmp:
                tmp.write_text(json.dumps(state, sort_keys=True))

    def __getitem__(self, name: str) -> np.ndarray:
        return self.arrays[name]

    def store(self, index: int, result: FrameResult) -> None:
        """Record one frame's results (its ``done`` flag last)."""
        for name in ChunkResult.DTYPES:
            self.arrays[name][index] = stored(result, name)
        self._store_fine(index, result.fine)
        self.arrays["done"][index] = True

    def _store_fine(self, index: int, fine: FineFrame | None) -> None:
        if fine is None or "fine" not in self.arrays:
            return
        self.arrays["fine_kept"][index] = False
        self.arrays["fine_kept"][index, fine.tiles] = True
        self.arrays["fine_sigma"][index, fine.tiles] = fine.sigma
        self.arrays["fine_chi2"][index] = fine.chi2.ravel()
        self.arrays["fine_calibration"][index] = fine.calibration
        if fine.misfit is not None:
            self.arrays["fine_misfit"][index, fine.tiles] = fine.misfit
        if fine.fill_probe is not None:
            self.arrays["fine_fillprobe"][index, fine.tiles] = fine.fill_probe
        self.arrays["fine"][index, fine.tiles] = fine.blocks  # only these pages are written

    def store_chunk(self, chunk: ChunkResult) -> None:
        """Record a chunk's results, then mark its frames done and flush (a checkpoint)."""
        for name in ChunkResult.DTYPES:
            self.arrays[name][chunk.index] = getattr(chunk, name)
        for index, fine in zip(chunk.index, chunk.fine or [], strict=False):
            self._store_fine(int(index), fine)
        self.flush()
        self.arrays["done"][chunk.index] = True
        self.arrays["done"].flush()

    def flush(self) -> None:
        """Write the arrays to disk and drop their pages from this process's memory.

        Pages of a file mapping that were written count in the process's
        resident memory until the kernel reclaims them; after the write-back
        they are released at once (``madvise(MADV_DONTNEED)``), so resident
        memory does not grow with the frames stored. Reading them again is
        served from the file (or the page cache).
        """
        for array in self.arrays.values():
            array.flush()
            _release_pages(array)

    def load_or_none(self, name: str) -> np.ndarray | None:
        path = self.folder / f"{name}.bin.npy"
        return np.load(path) if path.exists() else None

    def save(self, name: str, array: np.ndarray) -> None:
        with atomic_write(self.folder / f"{name}.bin.npy") as tmp:
            np.save(tmp, array)

    def remove(self) -> None:
        self.arrays.clear()
        shutil.rmtree(self.folder, ignore_errors=True)


def _stale_arrays(folder: Path, shapes: dict) -> list[str]:
    """The work arrays missing from ``folder`` or stored there with another shape or dtype."""
    stale = []
    for name, (shape, dtype) in shapes.items():
        path = folder / f"{name}.npy"
        if not path.exists():
            stale.append(name)
            continue
        stored = np.load(path, mmap_mode="r")
        if stored.shape != shape or stored.dtype != np.dtype(dtype):
            stale.append(name)
        del stored
    return sorted(stale)


def _release_pages(array: np.ndarray) -> None:
    """``madvise(MADV_DONTNEED)`` on a flushed memory map (no-op where unsupported)."""
    import mmap

    buffer = getattr(array, "_mmap", None)
    advice = getattr(mmap, "MADV_DONTNEED", None)
    if buffer is None or advice is None or not hasattr(buffer, "madvise"):
        return
    try:
        buffer.madvise(advice)
    except (OSError, ValueError):  # closed map or unsupported: memory is only a hint here
        pass


# ---------------------------------------------------------------------- plan
@dataclass
class BuildPlan:
    """What a build will do, decided before any frame is read (`plan_build`).

    Attributes
    ----------
    sector, camera, ccd : int
    description : str
        The source's description (provenance).
    frames : list of `~lk_scatterlight.builder.sources.FrameInfo`
    quality : ndarray of int64, shape (nframes,)
    good : ndarray of bool, shape (nframes,)
        Frames that pass the quality bitmask.
    out_path : `~pathlib.Path` or None
        Output file.
    work_dir : `~pathlib.Path`
        Checkpoint folder.
    state : dict
        Identity of the build (sector, camera, CCD, frames, per-frame
        parameters); a work folder with another state is started over.
    straps : ndarray of int
        Masked strap columns (1-based CCD columns).
    nbins : int
        Bins per side of a plane.
    overwrite : bool
        Replace an existing output file.
    fine_shape : (int, int) or None
        Tiles per plane and fine bins per tile side of the fine layer.
    region : `~lk_scatterlight.ccd.Region`
        The square of science pixels the source delivers (the whole CCD by default).
    row_step : int
        The source read every ``row_step``-th row of the region (sparse reading).
    """

    sector: int
    camera: int
    ccd: int
    description: str
    frames: list[FrameInfo]
    quality: np.ndarray
    good: np.ndarray
    out_path: Path | None
    work_dir: Path
    state: dict
    straps: np.ndarray
    nbins: int
    overwrite: bool = False
    fine_shape: tuple[int, int] | None = None
    region: Region = field(default_factory=Region.full)
    row_step: int = 1

    def open_work(self) -> WorkArea:
        """Open (or create, or start over) the work area of this build."""
        return WorkArea(
            Path(self.work_dir),
            len(self.frames),
            self.nbins,
            self.straps.size,
            self.state,
            fine_shape=self.fine_shape,
        )


def plan_build(
    source: FFISource,
    config: BuildConfig,
    out: str | os.PathLike | None = None,
    work_dir: str | os.PathLike | None = None,
    overwrite: bool = False,
) -> BuildPlan:
    """Select the frames and decide the output file and the work folder of a build.

    Parameters
    ----------
    source : `~lk_scatterlight.builder.sources.FFISource`
    config : `BuildConfig`
    out, work_dir, overwrite
        As for `build_cube`.

    Returns
    -------
    plan : `BuildPlan`

    Raises
    ------
    ScatterLightError
        If fewer than ``n_dark`` frames pass the quality bitmask.
    FileExistsError
        If the output exists and ``overwrite`` is False.
    """
    region = source_region(source, config)
    row_step = int(getattr(source, "row_step", 1))
    if config.fine_bin and not _holds_read_rows(config.fine_bin, row_step):
        log.warning(
            "%s: fine bins of %d px hold too few pixels of a read every %d rows; its fine "
            "layer will be mostly holes (sparse_config(config, %d) chooses bins that fit).",
            source.description,
            config.fine_bin,
            row_step,
            row_step,
        )
    frames = list(source.frames)
    quality = np.array([f.quality for f in frames], dtype=np.int64)
    good = masks.good_frames(quality, config.bitmask)
    if good.sum() < max(config.n_dark, 1):
        raise ScatterLightError(
            f"Only {good.sum()} of {len(frames)} frames of {source.description} pass the quality "
            f"bitmask {config.bitmask}; at least {config.n_dark} are needed."
        )
    out_path = None
    if out is not None:
        out_path = Path(out)
        if out_path.is_dir():
            out_path = out_path / cube_filename(
                source.sector, source.camera, source.ccd, config.pixel_bin
            )
            if not region.is_full:
                out_path = out_path.with_name(out_path.stem + region_tag(region) + ".fits")
        refuse_overwrite(out_path, overwrite)
    identity = hashlib.sha256(
        json.dumps([(f.name, round(f.time, 8), f.quality) for f in frames]).encode()
    ).hexdigest()[:16]
    state = {
        "sector": source.sector,
        "camera": source.camera,
        "ccd": source.ccd,
        "frames": identity,
        "config": config.fingerprint(),
    }
    if not region.is_full:
        state["region"] = [region.row, region.column, region.nrows, region.ncols]
    if work_dir is None:
        base = out_path.parent if out_path is not None else Path.cwd()
        work_dir = base / (
            f".lk-scatterlight-work_s{source.sector:04d}_{source.camera}-{source.ccd}"
            f"_bin{config.pixel_bin}{'' if region.is_full else region_tag(region)}"
        )
    straps = strap_columns() if config.mask_straps else np.zeros(0, dtype=int)
    return BuildPlan(
        sector=source.sector,
        camera=source.camera,
        ccd=source.ccd,
        description=source.description,
        frames=frames,
        quality=quality,
        good=good,
        out_path=out_path,
        work_dir=Path(work_dir),
        state=state,
        straps=straps,
        nbins=region.nrows // config.pixel_bin,
        overwrite=overwrite,
        fine_shape=(
            ((region.nrows // (config.fine_bin * config.fine_tile)) ** 2, config.fine_tile)
            if config.fine_bin
            else None
        ),
        region=region,
        row_step=row_step,
    )


def region_grid(config: BuildConfig) -> int:
    """Cell size [px] of the CCD grid a regional build's edges must lie on.

    The bins (and the fine layer's tiles) of a regional cube are those of the
    whole-CCD cube: the region starts and ends on their common grid.
    """
    grid = config.pixel_bin
    if config.fine_bin:
        grid = int(np.lcm(grid, config.fine_bin * config.fine_tile))
    return grid


def region_tag(region: Region) -> str:
    """File-name tag of a regional build, e.g. ``"_r129c173n128"``."""
    return f"_r{region.row}c{region.column}n{region.nrows}"


def source_region(source: FFISource, config: BuildConfig) -> Region:
    """The region a source delivers, checked against what the pipeline needs.

    Raises
    ------
    ValueError
        If the region is not square or not on the grid of `region_grid`.
    """
    region = getattr(source, "region", None) or Region.full()
    grid = region_grid(config)
    offsets = (region.row - SCIENCE_ROWS[0], region.column - SCIENCE_COLUMNS[0])
    if region.nrows != region.ncols or region.nrows % grid or any(o % grid for o in offsets):
        raise ValueError(
            f"a build needs a square region whose edges lie on the CCD's {grid}-px grid "
            f"(first row 1, 1 + {grid}, ...; first column 45, 45 + {grid}, ...), got {region}; "
            "Region.around(margin, grid, square=True) makes one."
        )
    return region


def regional_margin(config: BuildConfig) -> int:
    """Pixels at a region's inner edges where a regional cube is not evaluated [px].

    Cubic convolution needs one bin beyond the pair of bins around a pixel: 1.5
    bins from the outermost bin's centre, rounded up. Those outer bins also
    lack the neighbours that fill and smooth them in a whole-CCD build.
    """
    return -(-3 * config.pixel_bin // 2)


def _holds_read_rows(fine_bin: int, row_step: int) -> bool:
    """Whether every fine bin of a read every ``row_step`` rows holds a read row of
    at least `MIN_PIXELS` pixels in all."""
    return fine_bin >= row_step and fine_bin * (fine_bin // row_step) >= MIN_PIXELS


def sparse_config(config: BuildConfig, row_step: int) -> BuildConfig:
    """The build settings for a source that read every ``row_step``-th row.

    A fine bin measures the field only if it holds read pixels: its read rows
    must have at least `~lk_scatterlight.builder.fine.MIN_PIXELS` pixels, so 2-px
    bins need every row and 4-px bins one row in 4. The fine bins become the
    smallest size that does (a divisor of ``pixel_bin`` smaller than it), with
    tiles of the same size in pixels, so the region's grid (`region_grid`) does
    not change; when no size does (one row in 12 or fewer with 16-px bins), the
    build has no fine layer. ``config`` itself is returned when its fine bins
    already hold read rows.

    Parameters
    ----------
    config : `BuildConfig`
    row_step : int
        The source holds every ``row_step``-th row.

    Returns
    -------
    config : `BuildConfig`
        The settings to build with (its ``fine_bin`` and ``fine_tile`` are recorded
        in the cube, as for any build).
    """
    if not config.fine_bin or _holds_read_rows(config.fine_bin, row_step):
        return config
    tile_px = config.fine_bin * config.fine_tile
    for size in range(config.fine_bin + 1, config.pixel_bin):
        if config.pixel_bin % size or tile_px % size or not _holds_read_rows(size, row_step):
            continue
        log.info(
            "Reading every %d rows: fine bins of %d px (tiles of %d) instead of %d px.",
            row_step,
            size,
            tile_px // size,
            config.fine_bin,
        )
        return dataclasses.replace(config, fine_bin=size, fine_tile=tile_px // size)
    log.info("Reading every %d rows: no fine-bin size holds a read row; no fine layer.", row_step)
    return dataclasses.replace(config, fine_bin=0)
