"""TESS Vectors: reading them and comparing this package's geometry with them.

TESS Vectors (HEASARC; the tessgi/tessvectors repository) tabulate, per camera
and cadence, the Earth's and the Moon's distance, angle and azimuth from the
camera's nominal boresight. `read_tessvectors` reads their CSV layouts,
`tessvectors_geometry` computes the same quantities with their definitions from
an ephemeris and a pointing (`lk_scatterlight.geometry`), and
`tessvectors_residuals` compares the two; ``docs/geometry.rst`` explains the
differences in definition.
"""

from __future__ import annotations

import csv
import lzma
import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from .ccd import BTJD_OFFSET
from .exceptions import ScatterLightError
from .geometry import (
    BODIES,
    R_EARTH_KM,
    CCDPointing,
    Ephemeris,
    _as_jd_tdb,
    compute_geometry,
    spacecraft_time,
    to_tessvectors_azimuth,
)

__all__ = ["read_tessvectors", "tessvectors_geometry", "tessvectors_residuals"]


_TESSVECTORS_NAME = re.compile(r"TessVectors_S(\d+)_C(\d)_(\w+?)(?:\.|$)")


def _read_text(path: Path) -> str:
    """The text of a file, decompressing the ``.xz`` files of the tessvectors repository."""
    if path.suffix == ".xz":
        with lzma.open(path, "rt", errors="replace") as stream:
            return stream.read()
    return path.read_text(errors="replace")


def read_tessvectors(path: str | os.PathLike, drop_invalid: bool = True):
    """Read a TESS Vectors CSV file (HEASARC / tessgi/tessvectors).

    Both layouts are read: HEASARC's CSV (``#`` comment lines, one of which
    continues on a line without ``#``, then a header line ``,Cadence,...``
    whose first, unnamed column is the row index, returned as ``index``) and
    the tessgi/tessvectors repository's ``.xz`` files (xz-compressed CSV, no
    comments, header ``Cadence,...``; sector and camera then come from the
    file name). The last cadence is zero-filled (the producing code never
    fills the last bin): such rows are dropped, or kept and flagged with
    ``valid = False``. Note that ``Moon_Spacecraft_Azimuth`` repeats
    ``Earth_Spacecraft_Azimuth`` in these files (a bug of the producing code).

    Files with a ``TimeCorr`` column (the repository's CSV files of July 2024,
    commit 66185eb) give as ``MidTime`` the BTJD of the TPF their times came
    from; the spacecraft time is ``MidTime - TimeCorr``, which is what the
    later files give as ``MidTime`` (identical to 2e-8 s for sector 1). Such
    files are returned with that spacecraft time as ``MidTime`` and their
    original value as ``MidTime_BTJD``, so every layout means the same.

    Parameters
    ----------
    path : str or path-like
        ``.csv`` or ``.xz``.
    drop_invalid : bool
        Drop rows whose geometry columns are all zero.

    Returns
    -------
    table : `~astropy.table.Table`
        One row per cadence; ``MidTime`` is the spacecraft time, TJD (TDB)
        [d]; distances in TESS Vectors' "Earth radii" (6394.6 km, see
        ``docs/geometry.rst``), angles in degrees. ``meta`` holds
        ``sector``, ``camera`` and ``cadence`` from the comment header or the
        file name.

    Raises
    ------
    ScatterLightError
        No ``Cadence`` header line, or unparseable rows.
    """
    from astropy.table import Table

    path = Path(path)
    try:
        lines = _read_text(path).splitlines()
    except (OSError, EOFError, lzma.LZMAError) as err:  # EOFError: a truncated .xz file
        msg = f"Cannot read the TESS Vectors file {path}: {err}"
        raise ScatterLightError(msg) from err
    try:
        start = next(i for i, line in enumerate(lines) if line.startswith((",Cadence", "Cadence,")))
    except StopIteration:
        msg = (
            f"{path.name}: no header line starting with ',Cadence' or 'Cadence,'; is it a "
            "TESS Vectors CSV?"
        )
        raise ScatterLightError(msg) from None
    meta: dict[str, Any] = {"file": path.name}
    match = _TESSVECTORS_NAME.search(path.name)
    if match:
        meta.update(sector=int(match.group(1)), camera=int(match.group(2)), cadence=match.group(3))
    for line in lines[:start]:
        match = re.match(r"#\s*(Sector|Camera|Cadence)\s*:\s*(\S+)", line)
        if match:
            key, value = match.group(1).lower(), match.group(2)
            meta[key] = int(value) if value.isdigit() else value
    rows = [r for r in csv.reader(lines[start:]) if r]
    names = ["index" if not n.strip() else n.strip() for n in rows[0]]
    data = rows[1:]
    columns = {}
    for j, name in enumerate(names):
        values = [r[j] if j < len(r) else "" for r in data]
        try:
            columns[name] = np.array([float(v) if v.strip() else np.nan for v in values])
        except ValueError:
            columns[name] = np.array(values)
    table = Table(columns, meta=meta)
    if "TimeCorr" in table.colnames and "MidTime" in table.colnames:
        table["MidTime_BTJD"] = table["MidTime"]
        table["MidTime"] = table["MidTime"] - table["TimeCorr"]
    geometry_columns = [n for n in names if n.startswith(("Earth_", "Moon_"))]
    if not geometry_columns:
        msg = f"{path.name}: no Earth_* or Moon_* columns."
        raise ScatterLightError(msg)
    valid = np.any([table[n] != 0 for n in geometry_columns], axis=0)
    table["valid"] = valid
    if drop_invalid:
        table = table[valid]
    return table


def tessvectors_geometry(
    time, pointing: CCDPointing, ephemeris: Ephemeris, time_frame: str = "spacecraft"
) -> dict[str, np.ndarray]:
    """Earth and Moon camera angles, azimuths and distances as TESS Vectors define them.

    Around the camera's nominal boresight, in its nominal frame
    (`nominal_camera_frame`), rather than around the optical axis that
    `compute_geometry` uses. The TESS Vectors themselves also lag by about
    a minute and use a distance unit 0.26 % larger than 6378.137 km; neither
    is applied here (see ``docs/geometry.rst``).

    Parameters
    ----------
    time : array of float or `~astropy.time.Time`, shape (ntime,)
        Spacecraft TJD [d] (``time_frame="spacecraft"``, TESS Vectors'
        ``MidTime``) or BTJD [d] of ``pointing``'s CCD (``time_frame="btjd"``).
    pointing : `CCDPointing`
        Any CCD of the camera, with spacecraft axes.
    ephemeris : `Ephemeris`
    time_frame : {"spacecraft", "btjd"}

    Returns
    -------
    values : dict of ndarray, each shape (ntime,)
        ``earth_angle``, ``earth_azimuth``, ``moon_angle``, ``moon_azimuth``
        [deg] (azimuths in [0, 360)); ``earth_distance``, ``moon_distance``
        [Earth radii of 6378.137 km].

    Raises
    ------
    ScatterLightError
        No spacecraft axes, an ephemeris that does not cover the times, or an
        unknown ``time_frame``.
    """
    if time_frame not in ("btjd", "spacecraft"):
        msg = f"time_frame must be 'btjd' or 'spacecraft', got {time_frame!r}."
        raise ScatterLightError(msg)
    frame = pointing.nominal_frame
    tjd = _as_jd_tdb(time) - BTJD_OFFSET
    if time_frame == "btjd":
        tjd = spacecraft_time(tjd, pointing, ephemeris)
    vectors = ephemeris.body_vectors(tjd + BTJD_OFFSET)
    out = {}
    for body in BODIES:
        v = np.asarray(vectors[body], dtype=float).reshape(-1, 3)
        distance = np.linalg.norm(v, axis=1)
        x, y, z = ((v / distance[:, None]) @ frame.T).T
        out[f"{body}_angle"] = np.rad2deg(np.arctan2(np.hypot(x, y), z))
        out[f"{body}_azimuth"] = np.rad2deg(np.arctan2(y, x)) % 360.0
        out[f"{body}_distance"] = distance / R_EARTH_KM
    return out


def tessvectors_residuals(
    vectors,
    ephemeris: Ephemeris,
    pointing: CCDPointing,
    lag: float = 0.0,
    boresight: str = "nominal",
) -> dict[str, np.ndarray]:
    """Differences between this module's boresight geometry and TESS Vectors.

    Parameters
    ----------
    vectors : `~astropy.table.Table`
        From `read_tessvectors`, of ``pointing``'s sector and camera.
    ephemeris : `Ephemeris`
    pointing : `CCDPointing`
        Any CCD of the camera, with spacecraft axes.
    lag : float
        Evaluate this module at ``MidTime - lag`` [s] (the TESS Vectors values
        lag by about 57 s; see ``docs/geometry.rst``).
    boresight : {"nominal", "optical"}
        Compare TESS Vectors' own definition (`tessvectors_geometry`), or this
        module's camera optical axis (`compute_geometry`, azimuths converted
        with `to_tessvectors_azimuth`).

    Returns
    -------
    residuals : dict of ndarray, each shape (ncadence,)
        ``earth_angle``, ``moon_angle``, ``earth_azimuth``, ``moon_azimuth``
        (wrapped to -180..180) [deg]; ``earth_distance``, ``moon_distance``
        [Earth radii]; all "this module minus TESS Vectors"; and
        ``spacecraft_time`` [TJD].

    Raises
    ------
    ScatterLightError
        Sector or camera differ from the pointing's, or ``boresight`` is unknown.
    """
    sector, camera = vectors.meta.get("sector"), vectors.meta.get("camera")
    if (sector, camera) not in ((pointing.sector, pointing.camera), (None, None)):
        msg = (
            f"The TESS Vectors are sector {sector} camera {camera}, the pointing sector "
            f"{pointing.sector} camera {pointing.camera}."
        )
        raise ScatterLightError(msg)
    tjd = np.asarray(vectors["MidTime"], dtype=float) - lag / 86400.0
    if boresight == "nominal":
        ours = tessvectors_geometry(tjd, pointing, ephemeris)
    elif boresight == "optical":
        row, column = pointing.boresight_pixel
        geo = compute_geometry(tjd, row, column, pointing, ephemeris, time_frame="spacecraft")
        ours = {}
        for body in BODIES:
            g = geo[body]
            ours[f"{body}_angle"] = g.boresight_angle
            ours[f"{body}_azimuth"] = to_tessvectors_azimuth(g.boresight_azimuth, pointing)
            ours[f"{body}_distance"] = g.distance
    else:
        msg = f"boresight must be 'nominal' or 'optical', got {boresight!r}."
        raise ScatterLightError(msg)
    out = {"spacecraft_time": tjd}
    for body in BODIES:
        name = body.capitalize()
        out[f"{body}_angle"] = ours[f"{body}_angle"] - np.asarray(vectors[f"{name}_Camera_Angle"])
        out[f"{body}_azimuth"] = (
            ours[f"{body}_azimuth"] - np.asarray(vectors[f"{name}_Camera_Azimuth"]) + 180.0
        ) % 360.0 - 180.0
        out[f"{body}_distance"] = ours[f"{body}_distance"] - np.asarray(vectors[f"{name}_Distance"])
    return out
