"""A scattered-light cube on demand for the region around a TPF.

Until cubes are published for every sector, camera and CCD, a TPF can still be
corrected: `regional_cube` builds a cube for the TPF's neighbourhood from
MAST's SPOC FFI cube on S3, which is stored pixel-major so that a block of
rows x columns over all frames is one byte range per row (a few hundred MB
instead of a CCD's ~20-70 GB of FFIs), and keeps it in the package's cache.

The region rule: the TPF's science pixels, grown by 1.5 bins
(`~lk_scatterlight.builder.pipeline.regional_margin`, 24 px for 16-px bins) on
every side, snapped outwards to the CCD's grid of the whole-CCD cube's bins and
fine-layer tiles (`~lk_scatterlight.builder.pipeline.region_grid`, 32 px by
default), made square (the builder works on square regions) and at least
`MIN_REGION` px wide. The cube may be evaluated inside
the region less those 1.5 bins at its inner edges, so interpolation at the TPF
never uses the region's outermost bins. When the region over all frames would
exceed ``max_bytes``, only every k-th row is read (`choose_row_step`), and
the fine layer's bins grow to hold a read row
(`~lk_scatterlight.builder.plan.sparse_config`; the cube records the size used).

Cached cubes live in ``<cache>/regional/`` (the registry's cache folder, see
`lk_scatterlight.registry.get_cache_dir`), named after sector, camera, CCD,
region, row step and a digest of the build settings; any cached cube with the
same settings whose region covers a TPF is reused. A lock file makes two
corrections of TPFs on the same CCD at once wait for each other instead of
downloading twice.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .ccd import (
    SCIENCE_COLUMNS,
    SCIENCE_ROWS,
    Region,
    check_camera_ccd,
    check_sector,
    ffi_cadence_seconds,
)
from .exceptions import DownloadError, FFISourceError, ScatterLightError

__all__ = [
    "DEFAULT_MAX_BYTES",
    "TPFLocation",
    "cached_regional_cube",
    "choose_row_step",
    "locate_tpf",
    "regional_cube",
    "tpf_build_region",
]

log = logging.getLogger(__name__)

#: Default budget of a regional download [bytes].
DEFAULT_MAX_BYTES = 200e6
#: Smallest side of a regional build [px]: enough sky around a small TPF for the
#: static scene, the masks and the fine layer's tiles.
MIN_REGION = 128
_SECTOR_IN_NAME = re.compile(r"tess-s(\d{4})-(\d)-(\d)")
#: Typical FFIs per sector by cadence, for estimates made before the cube is read.
_TYPICAL_DAYS = 27.0


@dataclass(frozen=True)
class TPFLocation:
    """Where a TPF's pixels are.

    Attributes
    ----------
    sector, camera, ccd : int
    region : `~lk_scatterlight.ccd.Region`
        The TPF's science pixels (1-based CCD rows and columns).
    how : str
        How the position was found (for messages).
    """

    sector: int
    camera: int
    ccd: int
    region: Region
    how: str


def _header_int(header, key: str) -> int | None:
    value = header.get(key)
    return (
        int(value) if isinstance(value, int | np.integer) and not isinstance(value, bool) else None
    )


def locate_tpf(tpf) -> TPFLocation:
    """Sector, camera, CCD and science-pixel region of a TESS TPF.

    The sector is the header's ``SECTOR`` or, where that is empty (early
    TESSCut files), the ``tess-sSSSS-C-D`` of the file name. The position is
    the TPF's ``tpf.row``/``tpf.column`` when those put it on the CCD's science
    pixels; otherwise (some TESSCut files carry wrong physical-pixel keywords)
    the target's RA/Dec is placed on the CCD with the archival WCS of tesswcs.

    Parameters
    ----------
    tpf : `lightkurve.TessTargetPixelFile`

    Returns
    -------
    location : `TPFLocation`

    Raises
    ------
    ScatterLightError
        If the sector or the position cannot be found.
    """
    header = tpf.get_header()
    path = str(getattr(tpf, "path", "") or "")
    named = _SECTOR_IN_NAME.search(Path(path).name) if path else None
    sector = _header_int(header, "SECTOR")
    how = "header"
    if sector is None:
        if named is None:
            msg = (
                "The TPF has no SECTOR keyword and its file name does not say the sector "
                "(tess-sSSSS-C-D...); pass cube=path, or set tpf.hdu[0].header['SECTOR']."
            )
            raise ScatterLightError(msg)
        sector, how = int(named.group(1)), "file name"
    sector = check_sector(sector)
    camera, ccd = check_camera_ccd(header.get("CAMERA"), header.get("CCD"))
    nrows, ncols = tpf.shape[1:]
    region = _clip_to_science(int(tpf.row), int(tpf.column), nrows, ncols)
    if region is None:
        region = _region_from_wcs(tpf, header, sector, camera, ccd, nrows, ncols)
        how += ", position from RA/Dec and tesswcs"
    return TPFLocation(sector, camera, ccd, region, f"sector from the {how}")


def _clip_to_science(row: int, column: int, nrows: int, ncols: int) -> Region | None:
    """The science pixels of a pixel rectangle, or None if it has none."""
    r0, r1 = max(row, SCIENCE_ROWS[0]), min(row + nrows - 1, SCIENCE_ROWS[1])
    c0, c1 = max(column, SCIENCE_COLUMNS[0]), min(column + ncols - 1, SCIENCE_COLUMNS[1])
    if r1 < r0 or c1 < c0:
        return None
    return Region(r0, c0, r1 - r0 + 1, c1 - c0 + 1)


def _region_from_wcs(tpf, header, sector, camera, ccd, nrows, ncols) -> Region:
    ra, dec = header.get("RA_OBJ"), header.get("DEC_OBJ")
    where = f"row {tpf.row}, column {tpf.column}"
    if not isinstance(ra, float | int) or not isinstance(dec, float | int):
        msg = (
            f"The TPF's pixel position ({where}) is not on the CCD's science pixels and it has "
            "no RA_OBJ/DEC_OBJ to place it; pass cube=path to a cube."
        )
        raise ScatterLightError(msg)
    try:
        import tesswcs
        from astropy.coordinates import SkyCoord

        wcs = tesswcs.WCS.from_sector(sector, camera, ccd)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # a diverging solution is an answer to refuse
            x, y = wcs.world_to_pixel(SkyCoord(ra, dec, unit="deg"))
    except (UserWarning, ValueError) as err:
        msg = f"RA {ra}, Dec {dec} cannot be placed on sector {sector} camera {camera} CCD {ccd}."
        raise ScatterLightError(msg) from err
    except ImportError as err:
        msg = (
            f"The TPF's pixel keywords ({where}) are not on the science pixels; placing it by "
            "RA/Dec needs tesswcs: pip install 'lk_scatterlight[builder]'."
        )
        raise ScatterLightError(msg) from err
    # tesswcs pixels are 0-based FFI pixels (collateral columns included).
    row = int(round(float(y) + 1 - (nrows - 1) / 2))
    column = int(round(float(x) + 1 - (ncols - 1) / 2))
    region = _clip_to_science(row, column, nrows, ncols)
    if region is None:
        msg = f"RA {ra}, Dec {dec} falls off sector {sector} camera {camera} CCD {ccd}."
        raise ScatterLightError(msg)
    return region


def _config(config=None):
    from .builder.pipeline import BuildConfig

    return config or BuildConfig()


def tpf_build_region(location_region: Region, config=None) -> Region:
    """The region a regional cube for these pixels is built from (see the module docstring)."""
    from .builder.pipeline import region_grid, regional_margin

    config = _config(config)
    grid = region_grid(config)
    return location_region.around(
        regional_margin(config), grid, square=True, min_size=max(MIN_REGION, grid)
    )


def choose_row_step(region: Region, nframes: int, max_bytes: float) -> int:
    """The smallest row step whose download of ``region`` fits in ``max_bytes``.

    Raises
    ------
    ScatterLightError
        If even one row in 16 would not fit.
    """
    from .builder.ffi_cube import region_bytes

    for step in (1, 2, 3, 4, 6, 8, 12, 16):
        if region_bytes(nframes, region, step) <= max_bytes:
            return step
    msg = (
        f"{region} over {nframes} frames needs {region_bytes(nframes, region, 16) / 1e6:.0f} MB "
        f"even reading one row in 16; raise max_bytes (now {max_bytes / 1e6:.0f} MB)."
    )
    raise ScatterLightError(msg)


def _settings_digest(config) -> str:
    return hashlib.sha256(json.dumps(config.fingerprint(), sort_keys=True).encode()).hexdigest()[:8]


def _regional_dir(cache_dir=None) -> Path:
    from .registry import get_cache_dir

    return get_cache_dir(cache_dir) / "regional"


def _cube_name(sector, camera, ccd, region: Region, row_step: int, config) -> str:
    return (
        f"lk-scatterlight_s{sector:04d}_{camera}-{ccd}_r{region.row}c{region.column}"
        f"n{region.nrows}_step{row_step}_bin{config.pixel_bin}_{_settings_digest(config)}.fits"
    )


def cached_regional_cube(location: TPFLocation, config=None, cache_dir=None):
    """A cached regional cube of the same settings that covers the TPF, or None.

    Unreadable cached files are removed (and so rebuilt).
    """
    from astropy.io import fits

    from .cube import ScatterLightCube
    from .exceptions import CubeFormatError

    config = _config(config)
    folder = _regional_dir(cache_dir)
    pattern = (
        f"lk-scatterlight_s{location.sector:04d}_{location.camera}-{location.ccd}_*"
        f"_bin{config.pixel_bin}_{_settings_digest(config)}.fits"
    )
    for path in sorted(folder.glob(pattern)):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error")  # a damaged header warns: treat it as damaged
                with open(path, "rb") as handle, fits.open(handle) as hdul:
                    region = Region.from_header(hdul[0].header)
            if region is not None and region.covers(location.region):
                return ScatterLightCube.read(path)
        except (OSError, ValueError, Warning, CubeFormatError) as err:
            log.warning(
                "Removing the unreadable cached cube %s (%s); it will be rebuilt.", path, err
            )
            path.unlink(missing_ok=True)
    return None


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive lock on ``path`` between processes (POSIX; a no-op elsewhere)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows
            yield
            return
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _estimate(location: TPFLocation, region: Region, config) -> str:
    frames = int(_TYPICAL_DAYS * 86400 / ffi_cadence_seconds(location.sector))
    from .builder.ffi_cube import region_bytes

    step = 1
    with contextlib.suppress(ScatterLightError):
        step = choose_row_step(region, frames, DEFAULT_MAX_BYTES)
    return f"~{region_bytes(frames, region, step) / 1e6:.0f} MB ({region} of ~{frames} FFIs)"


def regional_cube(
    tpf_or_location,
    config=None,
    max_bytes: float = DEFAULT_MAX_BYTES,
    cache_dir: str | os.PathLike | None = None,
    progress: bool = True,
    concurrency: int = 8,
):
    """The scattered-light cube of the region around a TPF, built once and cached.

    Parameters
    ----------
    tpf_or_location : `lightkurve.TessTargetPixelFile` or `TPFLocation`
    config : `~lk_scatterlight.builder.pipeline.BuildConfig`, optional
        Build settings (part of the cache key).
    max_bytes : float
        Download budget [bytes]; above it only every k-th row is read, with fine
        bins that hold a read row (`~lk_scatterlight.builder.plan.sparse_config`).
    cache_dir : path-like, optional
        Cache folder (default: the registry's).
    progress : bool
        Progress bars for the download and the build.
    concurrency : int
        Requests in flight.

    Returns
    -------
    cube : `~lk_scatterlight.ScatterLightCube`
        Its `~lk_scatterlight.ScatterLightCube.region` covers the TPF.

    Raises
    ------
    DownloadError
        If MAST's FFI cube cannot be reached (the message says what would be
        downloaded); rerunning after a dropped connection resumes the download.
    CubeNotFoundError
        If MAST has no FFI cube for the sector, camera and CCD.
    """
    from .builder.ffi_cube import FFICube, TessCubeRegionSource, download_region, region_bytes
    from .builder.pipeline import build_cube
    from .builder.plan import sparse_config
    from .exceptions import CubeNotFoundError

    location = (
        tpf_or_location if isinstance(tpf_or_location, TPFLocation) else locate_tpf(tpf_or_location)
    )
    config = _config(config)
    cached = cached_regional_cube(location, config, cache_dir)
    if cached is not None:
        return cached
    region = tpf_build_region(location.region, config)
    folder = _regional_dir(cache_dir)
    tag = f"s{location.sector:04d}_{location.camera}-{location.ccd}"
    with _locked(folder / f".{tag}.lock"):
        cached = cached_regional_cube(location, config, cache_dir)  # built while we waited
        if cached is not None:
            return cached
        what = f"sector {location.sector} camera {location.camera} CCD {location.ccd}"
        try:
            cube = FFICube(location.sector, location.camera, location.ccd)
        except FFISourceError as err:
            if "does not exist" in str(err):
                raise CubeNotFoundError(f"No FFI cube on MAST for {what}: {err}") from err
            raise DownloadError(
                f"Building a scattered-light cube for the TPF ({what}) needs "
                f"{_estimate(location, region, config)} from MAST's FFI cube on AWS, which "
                f"could not be reached: {err}"
            ) from err
        row_step = choose_row_step(region, cube.nframes, max_bytes)
        nbytes = region_bytes(cube.nframes, region, row_step)
        log.warning(
            "lk_scatterlight: no published cube for %s; building one for %s from MAST's FFI "
            "cube: %.0f MB to download (%d frames%s), cached in %s",
            what,
            region,
            nbytes / 1e6,
            cube.nframes,
            f", every {row_step} rows" if row_step > 1 else "",
            folder,
        )
        name = _cube_name(location.sector, location.camera, location.ccd, region, row_step, config)
        download = folder / "downloads" / Path(name).stem
        try:
            download_region(
                cube,
                region,
                download,
                row_step=row_step,
                concurrency=concurrency,
                progress=progress,
            )
        except FFISourceError as err:
            raise DownloadError(
                f"{err} What was downloaded is kept in {download}: run the correction again "
                "to resume."
            ) from err
        source = TessCubeRegionSource(download, location.sector, location.camera, location.ccd)
        built = build_cube(
            source,
            sparse_config(config, row_step),  # the cache name keeps the settings asked for
            out=folder / name,
            work_dir=folder / "work" / Path(name).stem,
            progress=progress,
            overwrite=True,
        )
        shutil.rmtree(download, ignore_errors=True)
        return built
