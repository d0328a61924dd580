"""From calibrated FFIs to a `ScatterLightCube`.

The build, for one sector/camera/CCD (`build_cube`):

1. **Frames.** Drop frames that ``bitmask`` (lightkurve's
   ``TessQualityFlags.DEFAULT_BITMASK`` by default) flags; keep frames flagged
   only as stray light.
2. **Static scene.** Read ``n_candidates`` good frames spread evenly over the
   sector, rank them by their median level and take the pixel-wise median of
   the ``n_dark`` darkest: stars plus the steady sky (plus the little scattered
   light of the darkest frames; the cube is the light *above* that level).
3. **Masks.** Stars and saturation bleeds from the static scene, the strap
   columns (TESS Instrument Handbook Table A.3) and any ``bad_columns``.
4. **One streaming pass** over the good frames: subtract the static scene,
   fit a robust local plane in every ``pixel_bin`` bin
   (`~lk_scatterlight.builder.binning.bin_plane_fit`), fill bins without enough
   pixels from their neighbours, remove the curvature bias, and accumulate the
   strap columns' response against their unmasked neighbours. With ``fine_bin``
   (4 px by default), keep the residual against that plane on a finer grid in
   the 64-px tiles where it stands out of the noise: the fine layer, for
   structure narrower than a bin (`lk_scatterlight.builder.fine`). Results go to
   memory-mapped arrays in a work folder, checkpointed every ``chunk`` frames,
   so memory does not grow with the number of frames and an interrupted build
   resumes where it stopped.
5. **Cube.** One plane per good FFI by default; with ``time_bin`` the planes
   are averaged in bins of that duration that never cross a data gap. A compact
   cube of one plane per frame is compressed straight from the memory-mapped
   work area, block by block of frames, so this stage's memory does not grow
   with the number of frames either; so is the fine layer, tile by tile
   (`~lk_scatterlight.builder.fine.assemble_fine`). The cube is written
   atomically and the work folder removed.

Each step is a function of its own, shared by the serial build and the Dask
build (`lk_scatterlight.builder.distributed`), which run the same per-frame
code and therefore give the same cube:

* `plan_build`: frame selection, output path, work folder and resume identity;
* `candidate_frames`, `frame_level`, `combine_dark` (`static_scene` serially):
  the static scene and its dark frames;
* `make_context`: masks and everything the per-frame work needs (`FrameContext`);
* `process_frame` / `process_chunk`: per-frame results (`FrameResult`,
  `ChunkResult`: binned values, errors, pixel counts, strap sums);
* `time_planes` / `bin_planes`: planes of the cube;
* `assemble`: the cube and its provenance from the work area.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import logging
import os
import shutil
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..ccd import N_SCIENCE, SCIENCE_COLUMNS, SCIENCE_ROWS, Region
from ..cube import GAP_FACTOR, ScatterLightCube, compact_cube
from ..exceptions import ScatterLightError
from ..lowrank import CHUNK_VALUES, DEFAULT_MAX_RANK, Planes, compress_planes
from ..registry import cube_filename
from ..utils import atomic_write
from . import binning, masks
from .fine import FineContext, FineFrame, assemble_fine, fine_residual, make_fine_context

if TYPE_CHECKING:  # pragma: no cover
    from .sources import FFISource, FrameInfo

__all__ = [
    "BuildConfig",
    "build_cube",
    "BuildPlan",
    "FrameContext",
    "FrameResult",
    "ChunkResult",
    "plan_build",
    "region_grid",
    "region_tag",
    "regional_margin",
    "source_region",
    "candidate_frames",
    "frame_level",
    "select_dark",
    "combine_dark",
    "static_scene",
    "make_context",
    "process_frame",
    "process_chunk",
    "time_planes",
    "bin_planes",
    "assemble",
]

log = logging.getLogger(__name__)

_SCIENCE = N_SCIENCE

#: Signature of a time-binning stage: ``(value, error, groups) -> (flux, flux_err)``.
PlaneBinner = Callable[[np.ndarray, np.ndarray, list], tuple[np.ndarray, np.ndarray]]


@dataclass
class BuildConfig:
    """Parameters of a cube build (all recorded in the cube's provenance).

    Parameters
    ----------
    pixel_bin : int
        Bin size [px]; must divide 2048.
    time_bin : float, optional
        Plane duration [d]; None for one plane per FFI.
    bitmask : int
        Quality bits that exclude a frame.
    n_candidates, n_dark : int
        Frames sampled and kept to build the static scene.
    clip : float
        Residual clipping threshold of the per-bin plane fit [sigma].
    star_nsigma : float
        Detection threshold of the static source mask [sigma].
    mask_straps : bool
        Exclude strap columns from the bins and measure their response.
    bad_columns : tuple of int
        Extra CCD columns (1-based) to exclude.
    curvature_correction : bool
        Remove the curvature bias of the plane-fit values.
    prefetch : int
        Frames read ahead concurrently (each ~35 MB in flight at most).
    chunk : int
        Frames between checkpoints (and, in a Dask build, at most this many
        frames per task).
    compact : bool
        Store the cube in the compact low-rank encoding (format v2,
        `~lk_scatterlight.ScatterLightCube.compress`); False keeps it dense.
    compact_tolerance : float
        Rank choice: residual RMS at most ``1 + compact_tolerance`` times the noise.
    fine_bin : int
        Bin size [px] of the fine layer (`~lk_scatterlight.builder.fine`), which
        keeps structure narrower than ``pixel_bin`` (glint ridges, shadow edges)
        where the frames show it; must divide ``pixel_bin``. 0 builds no fine layer.
    fine_tile : int
        Fine bins per side of a fine-layer tile (the unit that is kept or not).
    fine_threshold : float
        A tile is kept when its mean ``(residual / sigma)**2`` exceeds this
        (pure noise gives ~1).
    fine_star_nsigma : float
        Detection threshold of the fine layer's lighter source mask [sigma].
    """

    pixel_bin: int = 16
    time_bin: float | None = None
    bitmask: int = masks.DEFAULT_BITMASK
    n_candidates: int = 40
    n_dark: int = 5
    clip: float = 4.0
    star_nsigma: float = 3.0
    mask_straps: bool = True
    bad_columns: tuple[int, ...] = field(default_factory=tuple)
    curvature_correction: bool = True
    prefetch: int = 4
    chunk: int = 50
    compact: bool = True
    compact_tolerance: float = 0.01
    fine_bin: int = 4
    fine_tile: int = 16
    fine_threshold: float = 2.0
    fine_star_nsigma: float = 30.0

    def __post_init__(self):
        if self.pixel_bin < 1 or _SCIENCE % self.pixel_bin:
            raise ValueError(f"pixel_bin must divide 2048, got {self.pixel_bin}.")
        if self.time_bin is not None and self.time_bin <= 0:
            raise ValueError(f"time_bin must be positive [d], got {self.time_bin}.")
        if self.chunk < 1:
            raise ValueError(f"chunk must be at least 1 frame, got {self.chunk}.")
        self.bad_columns = tuple(int(c) for c in self.bad_columns)
        if self.fine_bin < 0 or (self.fine_bin and self.pixel_bin % self.fine_bin):
            raise ValueError(
                f"fine_bin must divide pixel_bin={self.pixel_bin} (or be 0 for no fine layer), "
                f"got {self.fine_bin}."
            )
        if self.fine_bin and (
            self.fine_bin == self.pixel_bin or _SCIENCE % (self.fine_bin * self.fine_tile)
        ):
            raise ValueError(
                f"fine_bin={self.fine_bin} must be smaller than pixel_bin={self.pixel_bin}, "
                f"and fine_bin x fine_tile={self.fine_bin * self.fine_tile} must divide 2048."
            )

    def fingerprint(self) -> dict:
        """Parameters that change the per-frame results (resume compatibility)."""
        params = asdict(self)
        for key in ("time_bin", "prefetch", "chunk", "compact", "compact_tolerance"):
            params.pop(key)
        return params


def _strap_columns() -> np.ndarray:
    from ..straps import STRAP_CCD_COLUMNS

    return np.asarray(STRAP_CCD_COLUMNS, dtype=int)


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
    strap : ndarray of float64, shape (nstraps, 2)
        Per strap column, ``sum(strap * reference)`` and ``sum(reference**2)``
        (zero for straps without references).
    fine : `~lk_scatterlight.builder.fine.FineFrame` or None
        The frame's kept fine-layer tiles (None without a fine layer).
    """

    value: np.ndarray
    error: np.ndarray
    npix: np.ndarray
    strap: np.ndarray
    fine: FineFrame | None = None


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
    strap : ndarray of float64, shape (n, nstraps, 2)
    fine : list of `~lk_scatterlight.builder.fine.FineFrame` or None
        Each frame's kept fine-layer tiles.
    """

    index: np.ndarray
    value: np.ndarray
    error: np.ndarray
    npix: np.ndarray
    strap: np.ndarray
    fine: list = field(default_factory=list)

    #: dtypes of the work-area arrays (and of a chunk's arrays).
    DTYPES = {"value": np.float32, "error": np.float32, "npix": np.int16, "strap": np.float64}

    @classmethod
    def from_frames(
        cls, indices: Sequence[int], results: Sequence[FrameResult], nbins: int, nstraps: int
    ) -> ChunkResult:
        """Stack `FrameResult` objects (cast as the work area stores them)."""
        n = len(results)
        arrays = {}
        for name, dtype in cls.DTYPES.items():
            shape = (n, nstraps, 2) if name == "strap" else (n, nbins, nbins)
            out = np.empty(shape, dtype=dtype)
            for k, result in enumerate(results):
                out[k] = getattr(result, name)
            arrays[name] = out
        fine = [r.fine for r in results]
        return cls(index=np.asarray(indices, dtype=np.int64), fine=fine, **arrays)

    def __len__(self) -> int:
        return int(self.index.size)


class _WorkArea:
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
        if fresh:
            for f in folder.glob("*.npy"):
                f.unlink()
        dtypes = ChunkResult.DTYPES
        shapes = {
            "value": ((nframes, nbins, nbins), dtypes["value"]),
            "error": ((nframes, nbins, nbins), dtypes["error"]),
            "npix": ((nframes, nbins, nbins), dtypes["npix"]),
            "strap": ((nframes, nstraps, 2), dtypes["strap"]),
            "done": ((nframes,), np.bool_),
        }
        if fine_shape is not None:  # (tiles, tile side): a sparse file, kept tiles written
            ntiles, side = fine_shape
            shapes["fine"] = ((nframes, ntiles, side, side), np.float32)
            shapes["fine_sigma"] = ((nframes, ntiles), np.float32)
            shapes["fine_kept"] = ((nframes, ntiles), np.bool_)
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
            self.arrays[name][index] = getattr(result, name)
        self._store_fine(index, result.fine)
        self.arrays["done"][index] = True

    def _store_fine(self, index: int, fine: FineFrame | None) -> None:
        if fine is None or "fine" not in self.arrays:
            return
        self.arrays["fine_kept"][index] = False
        self.arrays["fine_kept"][index, fine.tiles] = True
        self.arrays["fine_sigma"][index, fine.tiles] = fine.sigma
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

    def open_work(self) -> _WorkArea:
        """Open (or create, or start over) the work area of this build."""
        return _WorkArea(
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
        if out_path.exists() and not overwrite:
            raise FileExistsError(f"{out_path} exists; pass overwrite=True to replace it.")
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
    straps = _strap_columns() if config.mask_straps else np.zeros(0, dtype=int)
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
        row_step=int(getattr(source, "row_step", 1)),
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


# ---------------------------------------------------------------------- static scene
def candidate_frames(good: np.ndarray, n_candidates: int) -> np.ndarray:
    """Up to ``n_candidates`` good frames spread evenly over the sector (frame indices)."""
    index = np.flatnonzero(good)
    return index[np.unique(np.linspace(0, index.size - 1, n_candidates).astype(int))]


def frame_level(flux: np.ndarray) -> float:
    """Brightness rank of a frame: the median of every 16th pixel [e-/s]."""
    return float(np.nanmedian(flux[::16, ::16]))


def select_dark(candidates: Sequence[int], levels: Sequence[float], n_dark: int) -> list[int]:
    """The ``n_dark`` darkest candidates (ties: the earlier frame), sorted by index.

    NaN levels rank last.
    """
    order = np.argsort(np.asarray(levels, dtype=float), kind="stable")[:n_dark]
    return sorted(int(np.asarray(candidates)[k]) for k in order)


def combine_dark(fluxes: Sequence[np.ndarray], rows: int = 256) -> np.ndarray:
    """The static scene: pixel-wise median of the dark frames, float32 [e-/s].

    Computed ``rows`` rows at a time, so the working memory is a fraction of
    the frames' (the median of each pixel does not depend on the blocks).
    """
    shape = fluxes[0].shape
    static = np.empty(shape, dtype=np.float32)
    with warnings.catch_warnings():  # rows a sparse read skipped are NaN in every frame
        warnings.filterwarnings("ignore", "All-NaN slice encountered", RuntimeWarning)
        for start in range(0, shape[0], rows):
            block = np.stack([flux[start : start + rows] for flux in fluxes])
            static[start : start + rows] = np.nanmedian(block, axis=0)
    return static


def static_scene(
    source: FFISource, good: np.ndarray, config: BuildConfig, progress: bool
) -> tuple[np.ndarray, list[int]]:
    """Median of the darkest of ``n_candidates`` good frames spread over the sector.

    Reads each candidate once and keeps at most ``n_dark + 1`` of them in
    memory (what `select_dark` would pick from all of them).

    Returns
    -------
    static : ndarray of float32, shape (2048, 2048)
        The static scene [e-/s].
    dark : list of int
        Indices of the frames it is the median of.
    """
    from tqdm.auto import tqdm

    candidates = candidate_frames(good, config.n_candidates)
    darkest: list[tuple[float, int, np.ndarray]] = []
    reader = source.iter_read(candidates.tolist(), prefetch=config.prefetch)
    for info, flux, _ in tqdm(
        reader, total=candidates.size, desc="Static scene", disable=not progress, unit="frame"
    ):
        darkest.append((frame_level(flux), info.index, flux))
        keep = np.argsort([item[0] for item in darkest], kind="stable")[: config.n_dark]
        darkest = [darkest[k] for k in keep]  # memory stays at n_dark frames
    return combine_dark([item[2] for item in darkest]), sorted(item[1] for item in darkest)


_static_scene = static_scene  # the name benchmarks and older code use


# ---------------------------------------------------------------------- masks and context
def _strap_geometry(straps: np.ndarray):
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


def _flatten_straps(static: np.ndarray, strap_idx, ref_idx) -> np.ndarray:
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


def _strap_rows(clean, strap_idx, ref_idx) -> np.ndarray:
    """Rows where a strap and all its reference columns are free of sources, (2048, nstraps)."""
    return clean[:, ref_idx].all(axis=2) & clean[:, strap_idx]


def _strap_sums(diff, clean, strap_idx, ref_idx, rows=None):
    """Per strap: sum(strap * reference) and sum(reference**2) over rows free of sources.

    ``reference`` is the mean of the strap's neighbour columns; the ratio of the
    two sums is the least-squares slope of strap against reference. ``rows``
    (from `_strap_rows`, fixed for a build) saves recomputing the clean rows.
    """
    if strap_idx.size == 0:
        return np.zeros((0, 2))
    # One gather of the few columns involved, transposed so that every later step
    # runs along contiguous rows (2-D fancy indexing of columns is several times slower).
    columns, where = np.unique(np.r_[strap_idx, ref_idx.ravel()], return_inverse=True)
    block = np.take(diff, columns, axis=1).T.copy()  # (ncolumns, 2048)
    strap = block[where[: strap_idx.size]]  # (nstraps, 2048)
    ref_rows = where[strap_idx.size :].reshape(ref_idx.shape)
    ref = block[ref_rows[:, 0]]
    for k in range(1, ref_idx.shape[1]):
        ref += block[ref_rows[:, k]]
    ref /= np.float32(ref_idx.shape[1])  # the mean of the reference columns
    ok = _strap_rows(clean, strap_idx, ref_idx) if rows is None else rows
    ok = np.array(ok.T, order="C")  # a copy
    ok &= np.isfinite(strap) & np.isfinite(ref)
    np.copyto(strap, 0, where=~ok)
    np.copyto(ref, 0, where=~ok)
    # Products of float32 are exact in float64: only the sums round.
    sr = np.einsum("ij,ij->i", strap, ref, dtype=np.float64)
    rr = np.einsum("ij,ij->i", ref, ref, dtype=np.float64)
    return np.stack([sr, rr], axis=1)


@dataclass
class FrameContext:
    """Everything the per-frame work needs, computed once per build (`make_context`).

    About 57 MB (static scene and the two weight masks in float32, clean mask in bool): a
    Dask build sends it once to every worker.

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

    @property
    def nbins(self) -> int:
        """Bins per side of a plane."""
        return self.static.shape[0] // self.pixel_bin

    @property
    def nbytes(self) -> int:
        """Memory held by the context's arrays [bytes]."""
        arrays = (self.static, self.weights, self.clean, self.strap_idx, self.ref_idx)
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
    straps = _strap_columns() if config.mask_straps else np.zeros(0, dtype=int)
    strap_cols, ref_idx = _strap_geometry(straps)
    # Measurable straps of the region, with their references, in region array columns.
    shift = first - SCIENCE_COLUMNS[0]
    strap_idx, ref_idx = strap_cols - first, ref_idx - shift
    inside = (strap_idx >= 0) & (strap_idx < static.shape[1])
    inside &= np.all((ref_idx >= 0) & (ref_idx < static.shape[1]), axis=1)
    strap_cols, strap_idx, ref_idx = strap_cols[inside], strap_idx[inside], ref_idx[inside]
    flat = _flatten_straps(static, strap_idx, ref_idx)
    sources = masks.static_source_mask(flat, nsigma=config.star_nsigma)
    bad = masks.column_mask(static.shape, config.bad_columns, first_column=first)
    read = np.isfinite(static)  # False only for rows a sparse read skipped
    clean = ~(sources | bad)
    straps_mask = masks.column_mask(static.shape, straps, first_column=first)
    valid = clean & ~straps_mask
    weights = valid.astype(np.float32)  # converted once, not per frame
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
        )
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
        strap_rows=_strap_rows(clean, strap_idx, ref_idx),
        nstraps=int(straps.size),
        pixel_bin=config.pixel_bin,
        clip=config.clip,
        curvature_correction=config.curvature_correction,
        source_fraction=float(sources[read].mean()) if read.any() else 0.0,
        mask_sums=binning.mask_sums(weights, config.pixel_bin),
        fine=fine,
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
    )
    value, error = binning.fill_empty_bins(binned.value, binned.error)
    if context.curvature_correction:
        value = binning.curvature_correction(value, binned.moments, context.pixel_bin)
    measured = _strap_sums(
        diff, context.clean, context.strap_idx, context.ref_idx, context.strap_rows
    )
    sums = np.zeros((context.nstraps, 2))
    sums[context.strap_pos] = measured
    fine = None
    if context.fine is not None:
        fine = fine_residual(diff, value, error, binned.npix, context.fine, flux_err, measured)
    return FrameResult(value=value, error=error, npix=binned.npix, strap=sums, fine=fine)


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
    work: _WorkArea,
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
        )

    straps = plan.straps
    strap_sums = np.asarray(work["strap"])[used_index].sum(axis=0)
    measured = strap_sums[:, 1] > 0
    response = np.where(measured, strap_sums[:, 0] / np.where(measured, strap_sums[:, 1], 1), 1)
    measured &= np.isfinite(response) & (response > 0)

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
    planes = dict(
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


def regional_margin(config: BuildConfig) -> int:
    """Pixels at a region's inner edges where a regional cube is not evaluated [px].

    Cubic convolution needs one bin beyond the pair of bins around a pixel: 1.5
    bins from the outermost bin's centre, rounded up. Those outer bins also
    lack the neighbours that fill and smooth them in a whole-CCD build.
    """
    return -(-3 * config.pixel_bin // 2)


def _assemble_compact(
    plan: BuildPlan,
    config: BuildConfig,
    work: _WorkArea,
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
    lowrank = compress_planes(
        Planes(work["value"], used_index),
        Planes(work["error"], used_index),
        float(config.compact_tolerance),
        DEFAULT_MAX_RANK,
    )
    kwargs = dict(planes)
    axes = [kwargs.pop(name) for name in ("time", "time_start", "time_stop", "row", "column")]
    return compact_cube(lowrank, plan.sector, plan.camera, plan.ccd, *axes, **kwargs)


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


# ---------------------------------------------------------------------- drivers
class _SerialRunner:
    """Runs the stages in this process (the default of `build_cube`)."""

    def static_scene(
        self, source: FFISource, good: np.ndarray, config: BuildConfig, progress: bool
    ) -> tuple[np.ndarray, list[int]]:
        return static_scene(source, good, config, progress)

    def process(
        self,
        source: FFISource,
        todo: list[int],
        context: FrameContext,
        dark: Sequence[int],
        work: _WorkArea,
        config: BuildConfig,
        bar: Any,
    ) -> None:
        """One streaming pass with read-ahead; a checkpoint every ``config.chunk`` frames."""
        processed = 0
        try:
            for info, flux, flux_err in source.iter_read(todo, prefetch=config.prefetch):
                work.store(info.index, process_frame(flux, context, flux_err))
                processed += 1
                bar.update()
                if processed % config.chunk == 0:
                    work.flush()
        finally:
            work.flush()

    bin_planes = staticmethod(bin_planes)

    def close(self) -> None:
        pass


def _run_build(
    source: FFISource,
    config: BuildConfig,
    plan: BuildPlan,
    runner: Any,
    progress: bool,
) -> ScatterLightCube:
    """Run a planned build's stages with ``runner`` (serial or Dask); write the cube."""
    from tqdm.auto import tqdm

    work = plan.open_work()
    static = work.load_or_none("static")
    dark = work.load_or_none("dark")
    if static is None or dark is None:
        static, dark_list = runner.static_scene(source, plan.good, config, progress)
        dark = np.asarray(dark_list)
        work.save("static", static)
        work.save("dark", dark)
    context = make_context(static, config, plan.region)

    good = plan.good
    todo = [int(i) for i in np.flatnonzero(good & ~work["done"])]
    log.info(
        "%s: %d frames, %d good, %d left to process",
        plan.description,
        len(plan.frames),
        int(good.sum()),
        len(todo),
    )
    bar = tqdm(
        total=int(good.sum()),
        initial=int(good.sum()) - len(todo),
        desc=f"s{plan.sector:04d} {plan.camera}-{plan.ccd}",
        unit="frame",
        disable=not progress,
    )
    with bar:
        runner.process(source, todo, context, dark, work, config, bar)

    cube = assemble(plan, config, work, context, dark, binner=runner.bin_planes)
    if plan.out_path is not None:
        cube.write(plan.out_path, overwrite=plan.overwrite)
        log.info("Wrote %s", plan.out_path)
    work.remove()
    return cube


def build_cube(
    source: FFISource,
    config: BuildConfig | None = None,
    out: str | os.PathLike | None = None,
    work_dir: str | os.PathLike | None = None,
    progress: bool = True,
    overwrite: bool = False,
    client: Any = None,
) -> ScatterLightCube:
    """Build the scattered-light cube of one sector/camera/CCD from its FFIs.

    Parameters
    ----------
    source : `~lk_scatterlight.builder.sources.FFISource`
        Where the frames come from (tesscube, local files, the simulator).
    config : `BuildConfig`, optional
    out : path-like, optional
        Write the cube here (a folder gets the standard `cube_filename`).
    work_dir : path-like, optional
        Folder for checkpoints; default next to ``out`` (or the current folder).
        Re-running the same build with the same work folder resumes it.
    progress : bool
        Show progress bars.
    overwrite : bool
        Replace an existing output file.
    client : ``distributed.Client``, optional
        Run the frame work as tasks on this Dask cluster
        (`lk_scatterlight.builder.distributed.build_cube_dask` with its
        defaults); the cube is the same as without.

    Returns
    -------
    cube : `~lk_scatterlight.ScatterLightCube`

    Raises
    ------
    ScatterLightError
        If no frame is usable.
    """
    config = config or BuildConfig()
    if client is not None:
        from .distributed import build_cube_dask

        return build_cube_dask(
            source,
            config,
            client=client,
            out=out,
            work_dir=work_dir,
            progress=progress,
            overwrite=overwrite,
        )
    plan = plan_build(source, config, out, work_dir, overwrite)
    return _run_build(source, config, plan, _SerialRunner(), progress)
