"""Quick looks at a build: the dark frame with its masks, and a sparse preview.

The dark frame
    `dark_frame` is the build's static scene: the pixel-wise median of the
    darkest frames (`~lk_scatterlight.builder.pipeline.static_scene`), re-read
    from the frames a cube names in its provenance. `scene_masks` splits the
    pixels the build leaves out of the bins into stars, saturation bleeds and
    masked columns (straps and bad columns), with the build's own
    `~lk_scatterlight.builder.pipeline.make_context`.

The sparse preview
    `sparse_preview` measures the scattered light in ``npix`` bins spread over
    the CCD at every good frame, with the build's estimator (static scene
    subtracted, same masks, the same robust plane fit per bin), but only for
    those bins, and computes the Earth and Moon geometry only at their
    centres. Like tess-backml's ``--downsize sparse`` it gives a training
    sample of the whole sector at a fraction of the cost of a dense training
    set; unlike it, each value is the bin's robust estimate rather than one
    raw pixel. Each value equals the dense cube's value of that bin, built
    with ``curvature_correction=False`` (the correction uses the neighbouring
    bins, which a sparse preview does not measure) and without the fine
    layer. Frames are still read whole: the saving is in the per-frame work
    and in the size of the geometry arrays.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..ccd import SCIENCE_COLUMNS, SCIENCE_ROWS
from ..exceptions import ScatterLightError
from ..geometry import BODIES, CCDPointing, Ephemeris, compute_geometry
from ..utils import atomic_write, refuse_overwrite
from . import masks
from .binning import bin_plane_fit

__all__ = [
    "dark_frame",
    "scene_masks",
    "sparse_bins",
    "sparse_preview",
    "write_preview",
    "preview_filename",
    "figure_paths",
    "write_figures",
    "MAX_ANIMATION_FRAMES",
]

log = logging.getLogger(__name__)

#: Science area size [pixels].
_SIZE = 2048


def dark_frame(source, config, names: Sequence[str] | None = None, progress: bool = False):
    """The static scene of a build: median of its darkest frames [e-/s].

    Parameters
    ----------
    source : `~lk_scatterlight.builder.sources.FFISource`
    config : `~lk_scatterlight.builder.pipeline.BuildConfig`
    names : sequence of str, optional
        Frame names of the dark frames (a cube's ``meta["dark_frames"]``);
        default: find them as the build does (reads ``n_candidates`` frames).
    progress : bool

    Returns
    -------
    static : ndarray of float32, shape (2048, 2048)
        Science pixels (row 1 and column 45 first) [e-/s].
    dark : list of int
        Indices of the frames in ``source``.

    Raises
    ------
    ScatterLightError
        A named frame is not in ``source``.
    """
    from .pipeline import combine_dark, static_scene

    if names is None:
        good = masks.good_frames(source.quality, config.bitmask)
        return static_scene(source, good, config, progress)
    by_name = {info.name: info.index for info in source.frames}
    missing = [name for name in names if name not in by_name]
    if missing:
        msg = f"Dark frames {missing} are not in {source.description}; is it the cube's source?"
        raise ScatterLightError(msg)
    dark = sorted(by_name[name] for name in names)
    fluxes = [flux for _, flux, _ in source.iter_read(dark, prefetch=1)]
    return combine_dark(fluxes), dark


def scene_masks(static: np.ndarray, config) -> dict[str, np.ndarray]:
    """The pixels a build leaves out of its bins, by cause.

    Parameters
    ----------
    static : ndarray, shape (2048, 2048)
        The static scene (`dark_frame`) [e-/s].
    config : `~lk_scatterlight.builder.pipeline.BuildConfig`

    Returns
    -------
    masks : dict of str to ndarray of bool, each shape (2048, 2048)
        ``stars`` (sources above the local sky), ``bleeds`` (saturated pixels
        and their bleed trails, grown) and ``columns`` (strap columns and
        ``config.bad_columns``). Together they are exactly the pixels the
        build gives zero weight.
    """
    from .pipeline import make_context

    context = make_context(static, dataclasses.replace(config, fine_bin=0))
    unused = context.weights == 0
    # With an infinite threshold only the saturation part of the source mask remains.
    saturated = masks.static_source_mask(static, nsigma=np.inf) & ~context.clean
    bad = masks.column_mask(static.shape, config.bad_columns, first_column=SCIENCE_COLUMNS[0])
    stars = ~context.clean & ~saturated & ~bad
    return {"stars": stars, "bleeds": saturated, "columns": unused & ~stars & ~saturated}


def sparse_bins(npix: int, pixel_bin: int, seed: int = 0) -> np.ndarray:
    """``npix`` distinct bins of the science area, drawn evenly at random.

    Parameters
    ----------
    npix : int
        Number of bins, 1 to ``(2048 / pixel_bin)**2``.
    pixel_bin : int
        Bin size [pixels], divides 2048.
    seed : int
        Random seed (the same seed gives the same bins).

    Returns
    -------
    bins : ndarray of int, shape (npix, 2)
        0-based (bin row, bin column), sorted.

    Raises
    ------
    ScatterLightError
        ``npix`` out of range, or ``pixel_bin`` not dividing 2048.
    """
    if pixel_bin <= 0 or _SIZE % pixel_bin:
        msg = f"pixel_bin must divide {_SIZE}, got {pixel_bin}."
        raise ScatterLightError(msg)
    nbins = _SIZE // pixel_bin
    if not 1 <= npix <= nbins**2:
        msg = f"npix (--sparse) must be 1-{nbins**2} for {pixel_bin}-pixel bins, got {npix}."
        raise ScatterLightError(msg)
    chosen = np.sort(np.random.default_rng(seed).choice(nbins**2, size=npix, replace=False))
    return np.stack(np.divmod(chosen, nbins), axis=1)


def _mosaic(image: np.ndarray, bins: np.ndarray, b: int, side: int, fill) -> np.ndarray:
    """The bins' ``b`` x ``b`` blocks of ``image`` side by side on a ``side`` x ``side`` grid."""
    out = np.full((side * b, side * b), fill, dtype=np.float32)
    for k, (i, j) in enumerate(bins):
        r, c = divmod(k, side)
        out[r * b : (r + 1) * b, c * b : (c + 1) * b] = image[
            i * b : (i + 1) * b, j * b : (j + 1) * b
        ]
    return out


def sparse_preview(
    source,
    config,
    npix: int,
    ephemeris: Ephemeris | None = None,
    pointing: CCDPointing | None = None,
    seed: int = 0,
    progress: bool = False,
) -> dict[str, np.ndarray]:
    """The scattered light of ``npix`` bins at every good frame, and their geometry.

    Parameters
    ----------
    source : `~lk_scatterlight.builder.sources.FFISource`
    config : `~lk_scatterlight.builder.pipeline.BuildConfig`
        ``pixel_bin``, ``clip``, the masks and the dark-frame selection are
        used; ``time_bin`` must be None (one value per frame).
    npix : int
        Number of bins (`sparse_bins`).
    ephemeris : `~lk_scatterlight.geometry.Ephemeris`, optional
        With ``pointing``: add the Earth and Moon geometry at the bin centres.
    pointing : `~lk_scatterlight.geometry.CCDPointing`, optional
    seed : int
        Which bins (`sparse_bins`).
    progress : bool

    Returns
    -------
    preview : dict of str to ndarray
        ``scatter`` and ``scatter_err``, shape (ntime, npix) [e-/s];
        ``time`` (BTJD [d]) and ``cadenceno``, shape (ntime,); ``row`` and
        ``column`` of the bin centres (1-based CCD pixels) and ``bins``
        (0-based bin row and column), shape (npix,) and (npix, 2);
        ``sector``, ``camera``, ``ccd``, ``pixel_bin``; with an ephemeris
        ``earth_alt``, ``earth_az``, ``moon_alt``, ``moon_az`` (ntime, npix)
        [deg] and ``earth_dist``, ``moon_dist`` (ntime,) [Earth radii], as
        defined for datasets (``docs/geometry.rst``); ``meta`` (JSON).

    Raises
    ------
    ScatterLightError
        Bad ``npix``, a ``time_bin``, a source of part of the CCD, or no good frame.
    """
    from tqdm.auto import tqdm

    from .. import __version__
    from .pipeline import make_context

    if config.time_bin is not None:
        msg = "A sparse preview has one value per frame: drop --time-bin (or time_bin)."
        raise ScatterLightError(msg)
    if not source.region.is_full or source.row_step != 1:
        msg = (
            f"A sparse preview reads whole frames; {source.description} is a region or sparse read."
        )
        raise ScatterLightError(msg)
    b = config.pixel_bin
    bins = sparse_bins(npix, b, seed)
    good = np.flatnonzero(masks.good_frames(source.quality, config.bitmask))
    if good.size == 0:
        msg = f"No frame of {source.description} passes the quality bitmask {config.bitmask}."
        raise ScatterLightError(msg)
    static, dark = dark_frame(source, config, progress=progress)
    context = make_context(static, dataclasses.replace(config, fine_bin=0))
    side = int(np.ceil(np.sqrt(npix)))
    static_m = _mosaic(static, bins, b, side, np.nan)
    weights_m = _mosaic(context.weights, bins, b, side, 0.0)
    residual_m = _mosaic(context.static_residual, bins, b, side, 0.0)  # per bin: exact
    cells = np.divmod(np.arange(npix), side)
    value = np.empty((good.size, npix), dtype=np.float32)
    error = np.empty_like(value)
    reader = source.iter_read(good.tolist(), prefetch=config.prefetch)
    bar = tqdm(reader, total=good.size, desc="Sparse preview", disable=not progress, unit="frame")
    for k, (_, flux, flux_err) in enumerate(bar):
        diff = _mosaic(flux, bins, b, side, np.nan) - static_m
        err = _mosaic(flux_err, bins, b, side, np.nan)
        fit = bin_plane_fit(
            diff,
            weights_m,
            b,
            clip=config.clip,
            uncertainty=err,
            min_fraction=context.min_fraction,
            static=residual_m,
        )
        value[k], error[k] = fit.value[cells], fit.error[cells]
    frames = [source.frames[i] for i in good]
    row = bins[:, 0] * b + SCIENCE_ROWS[0] + (b - 1) / 2
    column = bins[:, 1] * b + SCIENCE_COLUMNS[0] + (b - 1) / 2
    preview = {
        "scatter": value,
        "scatter_err": error,
        "time": np.array([f.time for f in frames]),
        "cadenceno": np.array([f.cadenceno for f in frames], dtype=np.int64),
        "row": row,
        "column": column,
        "bins": bins,
        "sector": np.array(source.sector),
        "camera": np.array(source.camera),
        "ccd": np.array(source.ccd),
        "pixel_bin": np.array(b),
    }
    meta = {
        "creator": "lk_scatterlight",
        "version": __version__,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "source": source.description,
        "seed": seed,
        "dark_frames": [source.frames[i].name for i in dark],
        "estimator": f"robust local plane fit per bin, {config.clip} sigma clip, no curvature "
        "correction, no fine layer (equals a dense cube built with curvature_correction=False)",
    }
    if ephemeris is not None and pointing is not None:
        geo = compute_geometry(preview["time"], row, column, pointing, ephemeris, dtype=np.float32)
        for body in BODIES:
            preview[f"{body}_alt"] = geo[body].angle
            preview[f"{body}_az"] = geo[body].azimuth
            preview[f"{body}_dist"] = geo[body].distance
        meta["ephemeris"] = ephemeris.description
        meta["pointing"] = pointing.description
    preview["meta"] = np.array(json.dumps(meta))
    return preview


def preview_filename(sector: int, camera: int, ccd: int, pixel_bin: int, npix: int) -> str:
    """``lk-scatterlight_preview_s0001_4-3_bin16_n500.npz``."""
    return (
        f"lk-scatterlight_preview_s{int(sector):04d}_{int(camera)}-{int(ccd)}"
        f"_bin{int(pixel_bin)}_n{int(npix)}.npz"
    )


def write_preview(
    preview: dict[str, np.ndarray], path: str | os.PathLike, overwrite: bool = False
) -> Path:
    """Write a sparse preview to a compressed ``.npz`` file, atomically.

    Parameters
    ----------
    preview : dict of str to ndarray
        From `sparse_preview`.
    path : str or path-like
        A ``.npz`` file, or a folder (the file gets `preview_filename`).
    overwrite : bool

    Returns
    -------
    path : `~pathlib.Path`

    Raises
    ------
    FileExistsError
        ``path`` exists and ``overwrite`` is False.
    """
    path = Path(path)
    if path.is_dir():
        keys = ("sector", "camera", "ccd", "pixel_bin")
        path = path / preview_filename(*(preview[k] for k in keys), preview["row"].size)
    refuse_overwrite(path, overwrite)
    with atomic_write(path) as tmp, open(tmp, "wb") as f:
        np.savez_compressed(f, **preview)
    log.info("Wrote %s", path)
    return path


def figure_paths(path: str | os.PathLike, dense: bool = True) -> dict[str, Path]:
    """Where ``lk-scatterlight dataset --plot`` writes its figures, next to ``path``.

    Parameters
    ----------
    path : str or path-like
        The dataset (or preview) file.
    dense : bool
        A dense dataset (dark frame, cube and angle animations) or a sparse
        preview (dark frame only).

    Returns
    -------
    paths : dict of str to `~pathlib.Path`
        ``dark`` (PNG), and for a dense dataset ``cube`` and ``angles`` (GIF).
    """
    path = Path(path)
    stem = path.parent / path.stem
    paths = {"dark": Path(f"{stem}_dark.png")}
    if dense:
        paths.update(cube=Path(f"{stem}_cube.gif"), angles=Path(f"{stem}_angles.gif"))
    return paths


#: Most frames in an animation of ``write_figures`` when no step is given.
MAX_ANIMATION_FRAMES = 100


def write_figures(
    paths: dict[str, Path],
    static: np.ndarray,
    scene: dict[str, np.ndarray],
    data: dict | None = None,
    step: int | None = None,
) -> list[Path]:
    """Write the figures of `figure_paths`, each atomically.

    Parameters
    ----------
    paths : dict of str to `~pathlib.Path`
        From `figure_paths`.
    static : ndarray, shape (2048, 2048)
        The dark frame (`dark_frame`) [e-/s].
    scene : dict of str to ndarray of bool
        Its masks (`scene_masks`).
    data : dict, optional
        The dense dataset (`~lk_scatterlight.builder.dataset.make_dataset`),
        needed for ``cube`` and ``angles``.
    step : int, optional
        Show every ``step``-th plane; default so that an animation has at most
        `MAX_ANIMATION_FRAMES` frames. GIFs are written with matplotlib's
        Pillow writer (no ffmpeg needed).

    Returns
    -------
    written : list of `~pathlib.Path`
    """
    import matplotlib.pyplot as plt

    from .. import plotting

    def new_axes(ncols: int, size: tuple[float, float]):
        fig, ax = plt.subplots(1, ncols, figsize=size, squeeze=False, layout="constrained")
        return fig, ax.ravel()

    written = []
    fig, ax = new_axes(2, (12, 5.6))
    plotting.plot_dark_frame(static, scene, ax=ax)
    with atomic_write(paths["dark"]) as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)
    written.append(paths["dark"])
    if data is None:
        return written
    ntime = np.shape(data["scatter_cube"])[0]
    if step is None:
        step = max(1, int(np.ceil(ntime / MAX_ANIMATION_FRAMES)))
    angle_keys = ("earth_alt_map", "moon_alt_map", "earth_az_map", "moon_az_map")
    for name, keys in (("cube", ("scatter_cube",)), ("angles", angle_keys)):
        fig, ax = new_axes(len(keys), (3.8 * len(keys), 3.6))
        with atomic_write(paths[name]) as tmp:
            plotting.animate_maps(data, keys, step=step, path=tmp, ax=ax)
        plt.close(fig)
        written.append(paths[name])
    return written
