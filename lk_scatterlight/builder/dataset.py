"""Machine-learning training sets: a scattered-light cube with its Earth and Moon geometry.

One file per sector, camera and CCD (`dataset_filename`): a numpy ``.npz``
archive holding the scattered-light cube, its times and cadence numbers, the
Earth and Moon geometry of the camera boresight (one value per time) and the
same geometry for every bin centre of the cube (one map per time), computed
exactly by `lk_scatterlight.geometry`. The keys users of tess-backml
know (``scatter_cube``, ``time``, ``cadenceno``, ``earth_alt``, ``earth_az``,
``earth_dist``, ``moon_*`` and the ``*_map`` variants) are kept, with the
definitions of `DATASET_KEYS` (some differ from tess-backml's; see
``docs/geometry.rst``). Everything in the file is a plain numeric or string
array: ``numpy.load(path)`` reads it without ``allow_pickle``.

`make_dataset` assembles the arrays, `write_dataset` writes them atomically
(temporary file in the target folder, then a rename), `read_dataset` reads
and checks them. ``lk-scatterlight dataset`` builds the cube and the dataset in
one go.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..exceptions import ScatterLightError
from ..geometry import BODIES, CCDPointing, Ephemeris, cube_geometry, to_tessvectors_azimuth
from ..utils import atomic_write, refuse_overwrite

__all__ = [
    "DATASET_VERSION",
    "DATASET_KEYS",
    "make_dataset",
    "write_dataset",
    "read_dataset",
    "dataset_filename",
    "cadence_numbers",
]

log = logging.getLogger(__name__)

#: Version of the dataset layout (key ``format_version``).
DATASET_VERSION = 1

_T, _MAP = "(ntime,)", "(ntime, nrow, ncol)"

#: Every key of a dataset: key -> (shape, unit, description).
DATASET_KEYS: dict[str, tuple[str, str, str]] = {
    "scatter_cube": (_MAP, "e-/s", "scattered light per pixel (the cube's flux), float32"),
    "scatter_cube_err": (_MAP, "e-/s", "1-sigma uncertainty of scatter_cube, float32"),
    "time": (_T, "d", "plane centres, BTJD (TDB); tess-backml stored JD"),
    "time_start": (_T, "d", "plane starts, BTJD"),
    "time_stop": (_T, "d", "plane stops, BTJD"),
    "spacecraft_time": (_T, "d", "plane centres at the spacecraft, TJD (TDB)"),
    "cadenceno": (_T, "", "FFI cadence number nearest each plane centre; -1 if unknown"),
    "nframes": (_T, "", "number of FFIs averaged in each plane"),
    "row": ("(nrow,)", "pixel", "bin-centre rows, 1-based CCD pixels"),
    "column": ("(ncol,)", "pixel", "bin-centre columns, 1-based CCD pixels (collateral counted)"),
    "sector": ("()", "", "TESS sector"),
    "camera": ("()", "", "camera 1-4"),
    "ccd": ("()", "", "CCD 1-4"),
    "earth_alt": (_T, "deg", "angle between camera boresight and Earth centre (0..180)"),
    "earth_az": (_T, "deg", "Earth azimuth around the boresight, CCD frame (0..360)"),
    "earth_dist": (_T, "Earth radii", "distance TESS - Earth centre (6378.137 km radii)"),
    "earth_size": (_T, "deg", "angular size of the Earth, 2 atan(R/d)"),
    "earth_az_tessvectors": (_T, "deg", "earth_az in the TESS Vectors convention"),
    "moon_alt": (_T, "deg", "angle between camera boresight and Moon centre (0..180)"),
    "moon_az": (_T, "deg", "Moon azimuth around the boresight, CCD frame (0..360)"),
    "moon_dist": (_T, "Earth radii", "distance TESS - Moon centre"),
    "moon_size": (_T, "deg", "angular size of the Moon, 2 atan(R/d), R = 1737.4 km"),
    "moon_az_tessvectors": (_T, "deg", "moon_az in the TESS Vectors convention"),
    "earth_alt_map": (_MAP, "deg", "angle between each bin centre's line of sight and the Earth"),
    "earth_az_map": (_MAP, "deg", "Earth azimuth around each line of sight, CCD frame"),
    "earth_dist_map": (_MAP, "Earth radii", "earth_dist repeated over the CCD (same everywhere)"),
    "moon_alt_map": (_MAP, "deg", "angle between each bin centre's line of sight and the Moon"),
    "moon_az_map": (_MAP, "deg", "Moon azimuth around each line of sight, CCD frame"),
    "moon_dist_map": (_MAP, "Earth radii", "moon_dist repeated over the CCD (same everywhere)"),
    "boresight_radec": ("(2,)", "deg", "RA, Dec of the camera boresight (ICRS)"),
    "boresight_pixel": ("(2,)", "pixel", "(row, column) of the boresight on this CCD's grid"),
    "format_version": ("()", "", f"dataset layout version ({DATASET_VERSION})"),
    "meta": ("()", "", "JSON string: provenance, units, conventions"),
}

_FLOAT32 = {k for k, (shape, _, _) in DATASET_KEYS.items() if shape == _MAP}


def dataset_filename(sector: int, camera: int, ccd: int, pixel_bin: float) -> str:
    """Standard file name of a dataset.

    Parameters
    ----------
    sector, camera, ccd : int
    pixel_bin : float
        Bin size of the cube [pixel].

    Returns
    -------
    name : str
        For example ``"lk-scatterlight_dataset_s0001_4-3_bin16.npz"``.
    """
    return (
        f"lk-scatterlight_dataset_s{int(sector):04d}_{int(camera)}-{int(ccd)}_bin{pixel_bin:g}.npz"
    )


def cadence_numbers(cube, frames: Sequence) -> np.ndarray:
    """Cadence number of the frame nearest each plane centre.

    Parameters
    ----------
    cube : `~lk_scatterlight.ScatterLightCube`
    frames : sequence of `~lk_scatterlight.builder.sources.FrameInfo`
        The frames the cube was built from (``time`` BTJD, ``cadenceno``).

    Returns
    -------
    cadenceno : ndarray of int64, shape (ntime,)
        -1 where the nearest frame has no cadence number (SPOC FFI files carry
        none) or no frame lies within the plane.
    """
    if len(frames) == 0:
        return np.full(cube.shape[0], -1, dtype=np.int64)
    t = np.array([f.time for f in frames], dtype=float)
    number = np.array([f.cadenceno for f in frames], dtype=np.int64)
    order = np.argsort(t)
    t, number = t[order], number[order]
    centre = cube.btjd
    j = np.searchsorted(t, centre)
    lo, hi = np.clip(j - 1, 0, t.size - 1), np.clip(j, 0, t.size - 1)
    i = np.where(np.abs(centre - t[lo]) <= np.abs(centre - t[hi]), lo, hi)
    inside = (t[i] >= cube.time_start.value - 1e-9) & (t[i] <= cube.time_stop.value + 1e-9)
    return np.where(inside, number[i], -1).astype(np.int64)


def make_dataset(
    cube,
    ephemeris: Ephemeris,
    pointing: CCDPointing | None = None,
    cadenceno=None,
) -> dict[str, np.ndarray]:
    """The training-set arrays of one cube (keys and units in `DATASET_KEYS`).

    Parameters
    ----------
    cube : `~lk_scatterlight.ScatterLightCube`
    ephemeris : `~lk_scatterlight.geometry.Ephemeris`
    pointing : `~lk_scatterlight.geometry.CCDPointing`, optional
        Default ``CCDPointing.from_sector`` of the cube (tesswcs).
    cadenceno : array of int, shape (ntime,), optional
        Cadence numbers of the planes (see `cadence_numbers`); default -1.

    Returns
    -------
    data : dict of str to ndarray

    Raises
    ------
    ScatterLightError
        ``cadenceno`` has the wrong length, or the ephemeris does not cover
        the cube.
    """
    from .. import __version__

    nt = cube.shape[0]
    if cadenceno is None:
        cadenceno = np.full(nt, -1, dtype=np.int64)
    cadenceno = np.asarray(cadenceno, dtype=np.int64)
    if cadenceno.shape != (nt,):
        msg = f"cadenceno must have shape ({nt},), got {cadenceno.shape}."
        raise ScatterLightError(msg)
    geometry = cube_geometry(cube, ephemeris, pointing, dtype=np.float32)
    pointing = geometry.pointing
    data: dict[str, np.ndarray] = {
        "scatter_cube": np.asarray(cube.flux.value, dtype=np.float32),
        "scatter_cube_err": np.asarray(cube.flux_err.value, dtype=np.float32),
        "time": np.asarray(cube.btjd, dtype=float),
        "time_start": np.asarray(cube.time_start.value, dtype=float),
        "time_stop": np.asarray(cube.time_stop.value, dtype=float),
        "spacecraft_time": geometry.spacecraft_time,
        "cadenceno": cadenceno,
        "nframes": np.asarray(cube.nframes, dtype=np.int32),
        "row": np.asarray(cube.row, dtype=float),
        "column": np.asarray(cube.column, dtype=float),
        "sector": np.array(cube.sector),
        "camera": np.array(cube.camera),
        "ccd": np.array(cube.ccd),
    }
    tessvectors = pointing.axes is not None
    for body in BODIES:
        g = geometry[body]
        data[f"{body}_alt"] = g.boresight_angle
        data[f"{body}_az"] = g.boresight_azimuth
        data[f"{body}_dist"] = g.distance
        data[f"{body}_size"] = g.size
        if tessvectors:
            data[f"{body}_az_tessvectors"] = to_tessvectors_azimuth(g.boresight_azimuth, pointing)
        else:
            data[f"{body}_az_tessvectors"] = np.full(nt, np.nan)
        data[f"{body}_alt_map"] = g.angle
        data[f"{body}_az_map"] = g.azimuth
        data[f"{body}_dist_map"] = np.broadcast_to(
            g.distance.astype(np.float32)[:, None, None], g.angle.shape
        ).copy()
    data["boresight_radec"] = np.array(pointing.boresight_radec)
    data["boresight_pixel"] = np.array(pointing.boresight_pixel)
    data["format_version"] = np.array(DATASET_VERSION)
    meta = {
        "creator": "lk_scatterlight",
        "version": __version__,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "ephemeris": ephemeris.description,
        "pointing": pointing.description,
        "cube": {k: v for k, v in cube.meta.items() if _jsonable(v)},
        "pixel_bin": cube.pixel_bin,
        "units": {k: unit for k, (_, unit, _) in DATASET_KEYS.items()},
        "conventions": (
            "*_alt: angle between line of sight and body centre [deg] (0 = on the line of "
            "sight; elevation above the plane perpendicular to it is 90 - alt). *_az: azimuth "
            "around the line of sight from the +column axis towards +row of this CCD [deg]. "
            "*_dist: Earth radii of 6378.137 km. See lk_scatterlight docs, geometry page."
        ),
    }
    data["meta"] = np.array(json.dumps(meta))
    return data


def _jsonable(value) -> bool:
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return False
    return True


def _check(data: dict, where: str) -> None:
    missing = [k for k in DATASET_KEYS if k not in data]
    if missing:
        msg = f"{where}: missing dataset keys {missing}."
        raise ScatterLightError(msg)
    nt, nrow, ncol = np.shape(data["scatter_cube"])
    sizes = {"ntime": nt, "nrow": nrow, "ncol": ncol}
    for key, (shape, _, _) in DATASET_KEYS.items():
        expected = tuple(
            sizes[p.strip()] if p.strip() in sizes else int(p)
            for p in shape.strip("()").split(",")
            if p.strip()
        )
        if np.shape(data[key]) != expected:
            msg = f"{where}: {key} has shape {np.shape(data[key])}, expected {expected} {shape}."
            raise ScatterLightError(msg)


def write_dataset(
    data: dict[str, np.ndarray],
    path: str | os.PathLike,
    overwrite: bool = False,
    compress: bool = True,
) -> Path:
    """Write a dataset to an ``.npz`` file, atomically.

    The arrays go to a temporary file in the target folder, which is renamed
    to ``path`` only once complete: an interrupted write leaves no partial file.

    Parameters
    ----------
    data : dict of str to ndarray
        From `make_dataset` (all `DATASET_KEYS`; extra keys are written too).
    path : str or path-like
        A ``.npz`` file, or a folder (the file gets `dataset_filename`).
    overwrite : bool
        Replace an existing file.
    compress : bool
        Deflate the arrays (the constant ``*_dist_map`` arrays shrink to
        almost nothing; the others by 10-30 %).

    Returns
    -------
    path : `~pathlib.Path`

    Raises
    ------
    FileExistsError
        ``path`` exists and ``overwrite`` is False.
    ScatterLightError
        Keys are missing or have inconsistent shapes.
    """
    path = Path(path)
    if path.is_dir():
        pixel_bin = json.loads(str(data["meta"])).get("pixel_bin", 0)
        path = path / dataset_filename(data["sector"], data["camera"], data["ccd"], pixel_bin)
    refuse_overwrite(path, overwrite)
    _check(data, "write_dataset")
    arrays = {k: np.asarray(v, dtype=np.float32) if k in _FLOAT32 else v for k, v in data.items()}
    save = np.savez_compressed if compress else np.savez
    with atomic_write(path) as tmp, open(tmp, "wb") as f:
        save(f, **arrays)
    log.info("Wrote %s", path)
    return path


def read_dataset(path: str | os.PathLike) -> dict:
    """Read a dataset written by `write_dataset`.

    Parameters
    ----------
    path : str or path-like

    Returns
    -------
    data : dict
        Every array; ``meta`` is decoded into a dict.

    Raises
    ------
    FileNotFoundError
        No file at ``path``.
    ScatterLightError
        Not a dataset, missing keys, or an unsupported ``format_version``.
    """
    path = Path(path)
    if not path.is_file():
        msg = f"No dataset at {path}."
        raise FileNotFoundError(msg)
    try:
        with np.load(path, allow_pickle=False) as npz:
            data = {k: npz[k] for k in npz.files}
    except (OSError, ValueError) as err:
        msg = f"{path} is not a readable .npz dataset: {err}"
        raise ScatterLightError(msg) from err
    version = int(data["format_version"]) if "format_version" in data else None
    if version != DATASET_VERSION:
        msg = (
            f"{path}: dataset format version {version}, this lk_scatterlight reads version "
            f"{DATASET_VERSION}; rebuild it with `lk-scatterlight dataset`."
        )
        raise ScatterLightError(msg)
    _check(data, str(path))
    data["meta"] = json.loads(str(data["meta"]))
    return data
