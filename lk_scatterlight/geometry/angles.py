"""Earth and Moon angles, azimuths, distances and sizes at lines of sight (`compute_geometry`).

Combines a `~lk_scatterlight.geometry.CCDPointing` with an
`~lk_scatterlight.geometry.Ephemeris` at the time at the spacecraft
(`spacecraft_time` undoes SPOC's barycentric correction of BTJD).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..ccd import BTJD_OFFSET
from ..exceptions import ScatterLightError
from .ephemeris import Ephemeris, _as_jd_tdb
from .pointing import CCDPointing

__all__ = [
    "R_EARTH_KM",
    "R_MOON_KM",
    "C_KM_S",
    "BODIES",
    "BARYCENTRIC_REFERENCE_PIXEL",
    "BodyGeometry",
    "Geometry",
    "compute_geometry",
    "cube_geometry",
    "spacecraft_time",
]

#: Equatorial radius of the Earth [km] (IAU 2015 nominal); distances are in these units.
R_EARTH_KM = 6378.137
#: Mean radius of the Moon [km].
R_MOON_KM = 1737.4
#: Speed of light [km/s].
C_KM_S = 299792.458
#: Bodies whose geometry is computed.
BODIES = ("earth", "moon")
_RADIUS_KM = {"earth": R_EARTH_KM, "moon": R_MOON_KM}
#: 1-based CCD (row, column) of the pixel towards which SPOC computes the barycentric
#: correction of FFI times (header keywords BTC_PIX2, BTC_PIX1).
BARYCENTRIC_REFERENCE_PIXEL = (1024.0, 1068.0)


@dataclass
class BodyGeometry:
    """Geometry of one body (the Earth or the Moon) seen from TESS.

    Attributes
    ----------
    angle : ndarray, shape (ntime, \\*shape)
        Angle between each line of sight and the direction to the body's
        centre [deg], 0..180.
    azimuth : ndarray, shape (ntime, \\*shape)
        Azimuth of the body around each line of sight in the CCD frame [deg],
        0..360.
    distance : ndarray, shape (ntime,)
        Distance from TESS to the body's centre [Earth radii, 6378.137 km].
    size : ndarray, shape (ntime,)
        Angular size ``2 * arctan(R / d)`` [deg] (R = 6378.137 km for the
        Earth, 1737.4 km for the Moon).
    boresight_angle, boresight_azimuth : ndarray, shape (ntime,)
        The same for the camera boresight [deg].
    """

    angle: np.ndarray
    azimuth: np.ndarray
    distance: np.ndarray
    size: np.ndarray
    boresight_angle: np.ndarray
    boresight_azimuth: np.ndarray


@dataclass
class Geometry:
    """Earth and Moon geometry for a set of times and lines of sight.

    Attributes
    ----------
    time : ndarray, shape (ntime,)
        The times given, BTJD [d] (or spacecraft TJD for ``time_frame="spacecraft"``).
    spacecraft_time : ndarray, shape (ntime,)
        Time at the spacecraft, TJD (JD - 2457000, TDB) [d].
    row, column : ndarray, shape (\\*shape)
        1-based CCD pixel coordinates of the lines of sight.
    earth, moon : `BodyGeometry`
    pointing : `CCDPointing`
    ephemeris : str
        Description of the ephemeris.
    """

    time: np.ndarray
    spacecraft_time: np.ndarray
    row: np.ndarray
    column: np.ndarray
    earth: BodyGeometry
    moon: BodyGeometry
    pointing: CCDPointing
    ephemeris: str

    def __getitem__(self, body: str) -> BodyGeometry:
        if body not in BODIES:
            raise KeyError(f"body must be one of {BODIES}, got {body!r}")
        return getattr(self, body)


def spacecraft_time(btjd, pointing: CCDPointing, ephemeris: Ephemeris) -> np.ndarray:
    """Convert SPOC BTJD times of a CCD to the time at the spacecraft.

    SPOC adds the Roemer delay ``r_TESS . n / c`` towards the CCD's reference
    pixel (`BARYCENTRIC_REFERENCE_PIXEL`) to the spacecraft clock time; this
    subtracts it again (three fixed-point iterations, converged to < 1 us).

    Parameters
    ----------
    btjd : array of float or `~astropy.time.Time`, shape (ntime,)
        BTJD [d] (TDB).
    pointing : `CCDPointing`
    ephemeris : `Ephemeris`

    Returns
    -------
    tjd : ndarray, shape (ntime,)
        Spacecraft time, JD - 2457000 (TDB) [d].
    """
    jd = _as_jd_tdb(btjd)
    n = pointing.line_of_sight(*BARYCENTRIC_REFERENCE_PIXEL)
    t = jd.copy()
    for _ in range(3):
        t = jd - ephemeris.spacecraft_position(t) @ n / C_KM_S / 86400.0
    return t - BTJD_OFFSET


def _angles(b: np.ndarray, los, ex, ey, dtype) -> tuple[np.ndarray, np.ndarray]:
    """Angle and azimuth [deg] of unit vectors ``b`` (nt, 3) at lines of sight (npix, 3)."""
    cos = b @ los.T
    x = b @ ex.T
    y = b @ ey.T
    angle = np.rad2deg(np.arctan2(np.hypot(x, y), cos)).astype(dtype, copy=False)
    azimuth = (np.rad2deg(np.arctan2(y, x)) % 360.0).astype(dtype, copy=False)
    return angle, azimuth


def compute_geometry(
    time,
    row,
    column,
    pointing: CCDPointing,
    ephemeris: Ephemeris,
    time_frame: str = "btjd",
    dtype=np.float64,
    chunk_size: int = 2_000_000,
) -> Geometry:
    """Earth and Moon angles, azimuths, distances and sizes for lines of sight.

    Parameters
    ----------
    time : array of float or `~astropy.time.Time`, shape (ntime,)
        BTJD [d] (TDB) of the cube or FFIs (``time_frame="btjd"``), or
        spacecraft TJD [d] (``time_frame="spacecraft"``).
    row, column : array of float, broadcastable to a common ``shape``
        1-based CCD pixel coordinates (bin centres for a cube). May lie outside
        the science area (the WCS is extrapolated).
    pointing : `CCDPointing`
    ephemeris : `Ephemeris`
    time_frame : {"btjd", "spacecraft"}
    dtype : numpy dtype
        Of the per-pixel arrays (float32 halves the memory).
    chunk_size : int
        Maximum time x pixel elements computed at once (bounds the temporaries).

    Returns
    -------
    geometry : `Geometry`
        Per-pixel arrays have shape ``(ntime, *shape)``.

    Raises
    ------
    ScatterLightError
        The ephemeris does not cover the times, or ``time_frame`` is unknown.
    """
    if time_frame not in ("btjd", "spacecraft"):
        msg = f"time_frame must be 'btjd' or 'spacecraft', got {time_frame!r}."
        raise ScatterLightError(msg)
    given = _as_jd_tdb(time) - BTJD_OFFSET
    if time_frame == "btjd":
        tjd = spacecraft_time(given, pointing, ephemeris)
    else:
        tjd = given.copy()
    row, column = np.broadcast_arrays(np.asarray(row, float), np.asarray(column, float))
    shape = row.shape
    los, ex, ey = (a.reshape(-1, 3) for a in pointing.frame(row, column))
    b_los, b_ex, b_ey = (a.reshape(1, 3) for a in pointing.frame(*pointing.boresight_pixel))
    vectors = ephemeris.body_vectors(tjd + BTJD_OFFSET)
    nt, npix = tjd.size, los.shape[0]
    step = max(1, int(chunk_size) // max(npix, 1))
    bodies = {}
    for body in BODIES:
        v = np.asarray(vectors[body], dtype=float).reshape(nt, 3)
        distance_km = np.linalg.norm(v, axis=1)
        unit = v / distance_km[:, None]
        angle = np.empty((nt, npix), dtype=dtype)
        azimuth = np.empty((nt, npix), dtype=dtype)
        for start in range(0, nt, step):
            sl = slice(start, start + step)
            angle[sl], azimuth[sl] = _angles(unit[sl], los, ex, ey, dtype)
        bangle, bazimuth = _angles(unit, b_los, b_ex, b_ey, np.float64)
        bodies[body] = BodyGeometry(
            angle=angle.reshape(nt, *shape),
            azimuth=azimuth.reshape(nt, *shape),
            distance=distance_km / R_EARTH_KM,
            size=np.rad2deg(2.0 * np.arctan(_RADIUS_KM[body] / distance_km)),
            boresight_angle=bangle[:, 0],
            boresight_azimuth=bazimuth[:, 0],
        )
    return Geometry(
        time=given,
        spacecraft_time=tjd,
        row=row,
        column=column,
        earth=bodies["earth"],
        moon=bodies["moon"],
        pointing=pointing,
        ephemeris=ephemeris.description,
    )


def cube_geometry(
    cube, ephemeris: Ephemeris, pointing: CCDPointing | None = None, dtype=np.float64
) -> Geometry:
    """The geometry at every plane time and bin centre of a `~lk_scatterlight.ScatterLightCube`.

    Parameters
    ----------
    cube : `~lk_scatterlight.ScatterLightCube`
        Its times are BTJD; its bin centres 1-based CCD pixels.
    ephemeris : `Ephemeris`
    pointing : `CCDPointing`, optional
        Default ``CCDPointing.from_sector(cube.sector, cube.camera, cube.ccd)``.
    dtype : numpy dtype

    Returns
    -------
    geometry : `Geometry`
        Per-pixel arrays of shape ``(ntime, nrow, ncol)``, like the cube.
    """
    if pointing is None:
        pointing = CCDPointing.from_sector(cube.sector, cube.camera, cube.ccd)
    elif (pointing.sector, pointing.camera, pointing.ccd) != (cube.sector, cube.camera, cube.ccd):
        msg = (
            f"The pointing is sector {pointing.sector} camera {pointing.camera} CCD "
            f"{pointing.ccd}, the cube sector {cube.sector} camera {cube.camera} CCD {cube.ccd}."
        )
        raise ScatterLightError(msg)
    row, column = np.meshgrid(cube.row, cube.column, indexing="ij")
    return compute_geometry(cube.btjd, row, column, pointing, ephemeris, dtype=dtype)
