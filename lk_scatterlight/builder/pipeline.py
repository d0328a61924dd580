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
   strap columns' response against their unmasked neighbours. Results go to
   memory-mapped arrays in a work folder, checkpointed every ``chunk`` frames,
   so memory does not grow with the number of frames and an interrupted build
   resumes where it stopped.
5. **Cube.** One plane per good FFI by default; with ``time_bin`` the planes
   are averaged in bins of that duration that never cross a data gap. The cube
   is written atomically and the work folder removed.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import logging
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..cube import GAP_FACTOR, SCIENCE_COLUMNS, SCIENCE_ROWS, ScatterLightCube
from ..exceptions import ScatterLightError
from ..registry import cube_filename
from . import binning, masks

__all__ = ["BuildConfig", "build_cube"]

log = logging.getLogger(__name__)

_SCIENCE = 2048


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
        Frames between checkpoints.
    compact : bool
        Store the cube in the compact low-rank encoding (format v2,
        `~lk_scatterlight.ScatterLightCube.compress`); False keeps it dense.
    compact_tolerance : float
        Rank choice: residual RMS at most ``1 + compact_tolerance`` times the noise.
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

    def __post_init__(self):
        if self.pixel_bin < 1 or _SCIENCE % self.pixel_bin:
            raise ValueError(f"pixel_bin must divide 2048, got {self.pixel_bin}.")
        if self.time_bin is not None and self.time_bin <= 0:
            raise ValueError(f"time_bin must be positive [d], got {self.time_bin}.")
        self.bad_columns = tuple(int(c) for c in self.bad_columns)

    def fingerprint(self) -> dict:
        """Parameters that change the per-frame results (resume compatibility)."""
        params = asdict(self)
        for key in ("time_bin", "prefetch", "chunk", "compact", "compact_tolerance"):
            params.pop(key)
        return params


def _strap_columns() -> np.ndarray:
    from .straps import STRAP_CCD_COLUMNS

    return np.asarray(STRAP_CCD_COLUMNS, dtype=int)


class _WorkArea:
    """Memory-mapped per-frame results and the checkpoint state of one build."""

    def __init__(self, folder: Path, nframes: int, nbins: int, nstraps: int, state: dict):
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
        shapes = {
            "value": ((nframes, nbins, nbins), np.float32),
            "error": ((nframes, nbins, nbins), np.float32),
            "npix": ((nframes, nbins, nbins), np.int16),
            "strap": ((nframes, nstraps, 2), np.float64),
            "done": ((nframes,), np.bool_),
        }
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
            _atomic_write_text(state_file, json.dumps(state, sort_keys=True))

    def __getitem__(self, name: str) -> np.ndarray:
        return self.arrays[name]

    def flush(self) -> None:
        for array in self.arrays.values():
            array.flush()

    def load_or_none(self, name: str) -> np.ndarray | None:
        path = self.folder / f"{name}.bin.npy"
        return np.load(path) if path.exists() else None

    def save(self, name: str, array: np.ndarray) -> None:
        tmp = self.folder / f"{name}.bin.part.npy"
        np.save(tmp, array)
        os.replace(tmp, self.folder / f"{name}.bin.npy")

    def remove(self) -> None:
        self.arrays.clear()
        shutil.rmtree(self.folder, ignore_errors=True)


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".part")
    tmp.write_text(text)
    os.replace(tmp, path)


def _static_scene(source, good: np.ndarray, config: BuildConfig, progress: bool):
    """Median of the darkest of ``n_candidates`` good frames spread over the sector."""
    from tqdm.auto import tqdm

    index = np.flatnonzero(good)
    candidates = index[np.unique(np.linspace(0, index.size - 1, config.n_candidates).astype(int))]
    darkest: list[tuple[float, int, np.ndarray]] = []
    reader = source.iter_read(candidates.tolist(), prefetch=config.prefetch)
    for info, flux, _ in tqdm(
        reader, total=candidates.size, desc="Static scene", disable=not progress, unit="frame"
    ):
        level = float(np.nanmedian(flux[::16, ::16]))
        darkest.append((level, info.index, flux))
        darkest.sort(key=lambda item: item[0])
        del darkest[config.n_dark :]  # keep memory at n_dark frames
    stack = np.stack([item[2] for item in darkest])
    static = np.nanmedian(stack, axis=0).astype(np.float32)
    return static, sorted(item[1] for item in darkest)


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


def _strap_sums(diff, clean, strap_idx, ref_idx):
    """Per strap: sum(strap * reference) and sum(reference**2) over rows free of sources.

    ``reference`` is the mean of the strap's neighbour columns; the ratio of the
    two sums is the least-squares slope of strap against reference.
    """
    if strap_idx.size == 0:
        return np.zeros((0, 2))
    strap = diff[:, strap_idx]  # (2048, nstraps)
    ref = diff[:, ref_idx].mean(axis=2)  # (2048, nstraps)
    ok = clean[:, ref_idx].all(axis=2) & clean[:, strap_idx]
    ok &= np.isfinite(strap) & np.isfinite(ref)
    s = np.where(ok, strap, 0).astype(np.float64)
    r = np.where(ok, ref, 0).astype(np.float64)
    return np.stack([(s * r).sum(axis=0), (r * r).sum(axis=0)], axis=1)


def _time_planes(frames, use: np.ndarray, time_bin: float | None):
    """Group used frames into planes: list of index arrays plus gap threshold."""
    t = np.array([f.time for f in frames])[use]
    start = np.array([f.tstart for f in frames])[use]
    stop = np.array([f.tstop for f in frames])[use]
    max_gap = GAP_FACTOR * float(np.median(stop - start))
    positions = np.arange(t.size)
    if time_bin is None:
        return [positions[i : i + 1] for i in positions]
    from ..interpolate import time_segments

    segment = time_segments(start, stop, max_gap)
    groups = []
    for seg in np.unique(segment):
        members = positions[segment == seg]
        bin_id = np.floor((t[members] - start[members[0]]) / time_bin).astype(int)
        for b in np.unique(bin_id):
            groups.append(members[bin_id == b])
    return groups


def build_cube(
    source,
    config: BuildConfig | None = None,
    out: str | os.PathLike | None = None,
    work_dir: str | os.PathLike | None = None,
    progress: bool = True,
    overwrite: bool = False,
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

    Returns
    -------
    cube : `~lk_scatterlight.ScatterLightCube`

    Raises
    ------
    ScatterLightError
        If no frame is usable.
    """
    from tqdm.auto import tqdm

    from .. import __version__

    config = config or BuildConfig()
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
    if work_dir is None:
        base = out_path.parent if out_path is not None else Path.cwd()
        work_dir = base / (
            f".lk-scatterlight-work_s{source.sector:04d}_{source.camera}-{source.ccd}"
            f"_bin{config.pixel_bin}"
        )
    straps = _strap_columns() if config.mask_straps else np.zeros(0, dtype=int)
    nb = _SCIENCE // config.pixel_bin

    # The strap geometry needs the mask, the mask needs the static scene: the work
    # area is sized by the number of straps, known before the mask.
    work = _WorkArea(Path(work_dir), len(frames), nb, straps.size, state)
    static = work.load_or_none("static")
    dark = work.load_or_none("dark")
    if static is None:
        static, dark_list = _static_scene(source, good, config, progress)
        dark = np.asarray(dark_list)
        work.save("static", static)
        work.save("dark", dark)
    strap_cols, ref_idx = _strap_geometry(straps)
    strap_idx = strap_cols - SCIENCE_COLUMNS[0]
    sources = masks.static_source_mask(
        _flatten_straps(static, strap_idx, ref_idx), nsigma=config.star_nsigma
    )
    bad = masks.column_mask(static.shape, config.bad_columns)
    clean = ~(sources | bad)
    valid = clean & ~masks.column_mask(static.shape, straps)
    strap_pos = np.searchsorted(straps, strap_cols)
    weights = valid.astype(np.float32)  # converted once, not per frame

    todo = [int(i) for i in np.flatnonzero(good & ~work["done"])]
    log.info(
        "%s: %d frames, %d good, %d left to process",
        source.description,
        len(frames),
        int(good.sum()),
        len(todo),
    )
    bar = tqdm(
        total=int(good.sum()),
        initial=int(good.sum()) - len(todo),
        desc=f"s{source.sector:04d} {source.camera}-{source.ccd}",
        unit="frame",
        disable=not progress,
    )
    processed = 0
    with bar:
        for info, flux, _ in source.iter_read(todo, prefetch=config.prefetch):
            diff = flux - static
            binned = binning.bin_plane_fit(diff, weights, config.pixel_bin, clip=config.clip)
            value, error = binning.fill_empty_bins(binned.value, binned.error)
            if config.curvature_correction:
                value = binning.curvature_correction(value, binned.moments, config.pixel_bin)
            i = info.index
            work["value"][i] = value
            work["error"][i] = error
            work["npix"][i] = binned.npix
            sums = np.zeros((straps.size, 2))
            sums[strap_pos] = _strap_sums(diff, clean, strap_idx, ref_idx)
            work["strap"][i] = sums
            work["done"][i] = True
            processed += 1
            bar.update()
            if processed % config.chunk == 0:
                work.flush()
    work.flush()

    use = good & work["done"]
    groups = _time_planes(frames, use, config.time_bin)
    used_index = np.flatnonzero(use)
    t = np.array([f.time for f in frames])[use]
    tstart = np.array([f.tstart for f in frames])[use]
    tstop = np.array([f.tstop for f in frames])[use]
    value = np.asarray(work["value"])[used_index]
    error = np.asarray(work["error"])[used_index]
    if config.time_bin is not None:
        flux = np.stack([value[g].mean(axis=0) for g in groups])
        flux_err = np.stack([np.sqrt((error[g] ** 2).sum(axis=0)) / len(g) for g in groups])
    else:
        flux, flux_err = value, error
    plane_time = np.array([t[g].mean() for g in groups])
    plane_start = np.array([tstart[g].min() for g in groups])
    plane_stop = np.array([tstop[g].max() for g in groups])
    nframes = np.array([len(g) for g in groups])
    npix = np.median(np.asarray(work["npix"])[used_index], axis=0).astype(np.int32)

    strap_sums = np.asarray(work["strap"])[used_index].sum(axis=0)
    measured = strap_sums[:, 1] > 0
    response = np.where(measured, strap_sums[:, 0] / np.where(measured, strap_sums[:, 1], 1), 1)
    measured &= np.isfinite(response) & (response > 0)

    b = config.pixel_bin
    centres = b * np.arange(nb) + (b - 1) / 2
    dropped = {}
    for bit in range(20):
        n = int(np.sum((quality & (1 << bit)) & config.bitmask != 0))
        if n:
            dropped[str(1 << bit)] = n
    meta = {
        "creator": "lk_scatterlight",
        "version": __version__,
        "built": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "source": source.description,
        "pixel_bin": b,
        "time_bin_days": config.time_bin,
        "frames_total": len(frames),
        "frames_used": int(use.sum()),
        "frames_dropped_by_bit": dropped,
        "quality_bitmask": config.bitmask,
        "dark_frames": [frames[i].name for i in np.asarray(dark).tolist()],
        "masked_source_fraction": round(float(sources.mean()), 5),
        "masked_columns_straps": int(straps.size),
        "bad_columns": list(config.bad_columns),
        "bin_statistic": f"robust local plane fit, {config.clip} sigma clip",
        "curvature_correction": config.curvature_correction,
        "error_estimator": "standard error of the plane-fit intercept from residual scatter",
    }
    cube = ScatterLightCube.from_arrays(
        source.sector,
        source.camera,
        source.ccd,
        plane_time,
        SCIENCE_ROWS[0] + centres,
        SCIENCE_COLUMNS[0] + centres,
        flux,
        flux_err,
        time_start=plane_start,
        time_stop=plane_stop,
        npix=npix,
        nframes=nframes,
        meta=meta,
        strap_column=straps[measured],
        strap_response=response[measured],
    )
    if config.compact:
        cube = cube.compress(tolerance=config.compact_tolerance)
    if out_path is not None:
        cube.write(out_path, overwrite=overwrite)
        log.info("Wrote %s", out_path)
    work.remove()
    return cube
