"""Where the Earth and the Moon are, seen from every pixel of a TESS CCD.

For each time and each line of sight (a CCD pixel, or the camera boresight)
this module computes, exactly on the sphere (no flat-focal-plane
approximation):

* the **angle** between the line of sight and the direction from TESS to the
  centre of the body [deg];
* the **azimuth** of the body around the line of sight [deg], in a frame tied
  to the CCD axes (see *Azimuth frame* below);
* the **distance** from TESS to the centre of the body [Earth radii] and its
  **angular size** ``2 * arctan(R / d)`` [deg]. Both are properties of the
  spacecraft position, so they are the same for every pixel.

Ingredients
-----------
Pointing (`CCDPointing`)
    The sector's WCS of the CCD (`tesswcs.WCS.from_sector`, or the WCS of a
    SPOC FFI header) maps pixels to ICRS directions. WCS pixel coordinates are
    0-based indices of the full FFI array, collateral columns included: the
    1-based CCD pixel (``row``, ``column``) of lightkurve's ``tpf.row`` /
    ``tpf.column`` is WCS pixel ``(x, y) = (column - 1, row - 1)``. (Checked:
    tesswcs' sector-1 camera-1 CCD-4 WCS and the SPOC FFI header agree within
    4 arcsec with this convention, and the FFI's barycentric correction is
    reproduced to 1 ms at its reference pixel, ``BTC_PIX1 = 1068``,
    ``BTC_PIX2 = 1024``.)
Camera boresight
    The camera's optical axis: the origin of the focal-plane model of
    tess-point (Burke et al. 2020; the camera/CCD geometry of its
    ``rfpg5_c1kb`` solution, `FOCAL_PLANE_GEOMETRY`) gives the pixel position
    of the optical axis in each CCD's pixel grid (some 60-70 pixels beyond the
    inner corner of the science area). Each CCD's WCS maps that position to the
    sky; the boresight is the normalised mean of the four directions. The four
    estimates agree to about 0.002 deg. TESS Vectors use the camera's
    *nominal* boresight instead (spacecraft +Z tilted by -36, -12, +12,
    +36 deg towards +X, `nominal_camera_frame`), 0.012-0.069 deg from the
    optical axis in sector 1;
    `lk_scatterlight.tessvectors.tessvectors_geometry` reproduces their values.
Ephemeris (`Ephemeris`)
    The spacecraft position from SPICE (`SpiceEphemeris`, through
    lkspacecraft) or from a JPL Horizons vector table (`HorizonsEphemeris`,
    interpolated with a cubic spline in time). Earth and Moon come from the
    same SPICE kernels, or, for a Horizons table, from astropy's built-in
    ephemeris (`astropy.coordinates.get_body_barycentric`, works offline).
    Directions are geometric (no light time, no aberration: both below
    0.01 deg here).
Time
    Cube and FFI times are BTJD: barycentric, corrected by SPOC for the
    light travel time towards the CCD's reference pixel (column 1068, row
    1024). The geometry needs the time at the spacecraft, so BTJD is converted
    back by subtracting the Roemer delay ``r_TESS . n / c`` towards that pixel
    (``time_frame="btjd"``); pass ``time_frame="spacecraft"`` for times that
    are already spacecraft TJD (TDB), such as the TESS Vectors' ``MidTime``.

Azimuth frame
-------------
At a line of sight ``u`` (pixel or boresight) the frame is
``e_x`` = unit tangent of increasing CCD column, ``e_y`` = unit tangent
orthogonal to ``e_x`` on the side of increasing row (Gram-Schmidt; the
pixel axes are up to ~1.5 deg from orthogonal on the sky because of the
optical distortion). The azimuth is ``atan2(b . e_y, b . e_x)`` for the body
direction ``b``, in [0, 360): 0 deg means the body lies towards increasing
column, 90 deg towards increasing row, as on an image shown with
``origin="lower"``. The boresight uses the same frame, evaluated at the
boresight's (extrapolated) pixel position on the CCD, so a pixel map
evaluated at that position equals the boresight value. CCDs 1-2 and 3-4 of a
camera are rotated by 180 deg with respect to each other, so their
azimuths differ by about 180 deg (within 0.2 deg) for the same direction.

The TESS Vectors (taken from the TESS EMI engineering files) measure the azimuth
around the nominal camera boresight, from the direction away from the
spacecraft boresight towards spacecraft +Y (cameras 3-4) or -Y (cameras 1-2),
see `nominal_camera_frame`; `to_tessvectors_azimuth` converts.

References
----------
1. Burke, C. J., Levine, A., Fausnaugh, M., et al. 2020, "TESS-Point: High
   precision TESS pointing tool", Astrophysics Source Code Library,
   ascl:2003.001 (focal-plane geometry).
2. TESS Vectors, https://heasarc.gsfc.nasa.gov/docs/tess/data-products.html
   and https://github.com/tessgi/tessvectors.
"""

from __future__ import annotations

import abc
import csv
import logging
import os
import re
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .ccd import BTJD_OFFSET, CCDS
from .exceptions import ScatterLightError
from .utils import atomic_write, refuse_overwrite

__all__ = [
    "R_EARTH_KM",
    "R_MOON_KM",
    "BODIES",
    "BARYCENTRIC_REFERENCE_PIXEL",
    "FOCAL_PLANE_GEOMETRY",
    "Ephemeris",
    "HorizonsEphemeris",
    "SpiceEphemeris",
    "make_ephemeris",
    "read_ephemerides",
    "CCDPointing",
    "optical_axis_pixel",
    "spacecraft_axes",
    "NOMINAL_CAMERA_TILT",
    "nominal_camera_frame",
    "BodyGeometry",
    "Geometry",
    "compute_geometry",
    "cube_geometry",
    "spacecraft_time",
    "to_tessvectors_azimuth",
]

log = logging.getLogger(__name__)

#: Equatorial radius of the Earth [km] (IAU 2015 nominal); distances are in these units.
R_EARTH_KM = 6378.137
#: Mean radius of the Moon [km].
R_MOON_KM = 1737.4
#: Astronomical unit [km] (IAU 2012).
AU_KM = 149597870.7
#: Speed of light [km/s].
C_KM_S = 299792.458
#: Bodies whose geometry is computed.
BODIES = ("earth", "moon")
_RADIUS_KM = {"earth": R_EARTH_KM, "moon": R_MOON_KM}
#: 1-based CCD (row, column) of the pixel towards which SPOC computes the barycentric
#: correction of FFI times (header keywords BTC_PIX2, BTC_PIX1).
BARYCENTRIC_REFERENCE_PIXEL = (1024.0, 1068.0)
_PIXEL_MM = 0.015

#: tess-point's focal-plane geometry (``rfpg5_c1kb``; Burke et al. 2020): for each
#: camera and CCD, the focal-plane position [mm] of the CCD's science-pixel origin
#: and the CCD's rotation [deg] about the optical axis. Only the location of the
#: optical axis in each CCD's pixel grid is used (`optical_axis_pixel`).
FOCAL_PLANE_GEOMETRY: dict[int, dict[int, tuple[float, float, float]]] = {
    1: {
        1: (31.573417, 31.551637, 179.980833),
        2: (-0.906060, 31.536148, 180.0),
        3: (-31.652818, -31.438350, -0.024851),
        4: (0.833161, -31.458180, 0.001488),
    },
    2: {
        1: (31.653635, 31.470291, 180.010890),
        2: (-0.827405, 31.491388, 180.0),
        3: (-31.543794, -31.550699, -0.006624),
        4: (0.922834, -31.557268, -0.015464),
    },
    3: {
        1: (31.615486, 31.413644, 179.993948),
        2: (-0.832993, 31.426621, 180.0),
        3: (-31.548296, -31.606976, 0.000298),
        4: (0.896018, -31.569542, -0.006464),
    },
    4: {
        1: (31.575820, 31.316510, 179.968217),
        2: (-0.890877, 31.363511, 180.0),
        3: (-31.630470, -31.716942, -0.024359),
        4: (0.824159, -31.728751, -0.024280),
    },
}


#: Nominal tilt [deg] of each camera's boresight from the spacecraft +Z axis
#: towards +X (the cameras' design mounting, 24 deg apart). TESS Vectors (the
#: TESS EMI engineering files) use these nominal boresights (`nominal_camera_frame`).
NOMINAL_CAMERA_TILT = {1: -36.0, 2: -12.0, 3: 12.0, 4: 36.0}


# ---------------------------------------------------------------------- vectors
def _unit_vector(ra_deg, dec_deg) -> np.ndarray:
    """ICRS unit vectors, shape (..., 3), from RA and Dec [deg]."""
    ra, dec = np.deg2rad(ra_deg), np.deg2rad(dec_deg)
    cos_dec = np.cos(dec)
    return np.stack([cos_dec * np.cos(ra), cos_dec * np.sin(ra), np.sin(dec)], axis=-1)


def _radec(vector) -> tuple[np.ndarray, np.ndarray]:
    """RA in [0, 360) and Dec [deg] of vectors, shape (..., 3)."""
    v = np.asarray(vector, dtype=float)
    ra = np.rad2deg(np.arctan2(v[..., 1], v[..., 0])) % 360.0
    dec = np.rad2deg(np.arctan2(v[..., 2], np.hypot(v[..., 0], v[..., 1])))
    return ra, dec


def _normalise(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def _rotation(axis: int, angle: float) -> np.ndarray:
    """Passive rotation matrix about a coordinate axis (0, 1, 2) by ``angle`` [rad]."""
    c, s = np.cos(angle), np.sin(angle)
    i, j = (axis + 1) % 3, (axis + 2) % 3
    m = np.eye(3)
    m[i, i] = m[j, j] = c
    m[i, j], m[j, i] = s, -s
    return m


def spacecraft_axes(ra: float, dec: float, roll: float) -> np.ndarray:
    """Spacecraft X, Y, Z axes in ICRS from the pointing (tess-point convention).

    Parameters
    ----------
    ra, dec : float
        Spacecraft boresight (+Z) [deg].
    roll : float
        Roll angle [deg], as in tesswcs' ``WCS.roll``, tess-point's pointing
        table or the FFI header's ``ROLL_NOM``.

    Returns
    -------
    axes : ndarray, shape (3, 3)
        Rows are the unit vectors of the spacecraft +X, +Y and +Z axes.
    """
    angles = np.deg2rad([ra, 90.0 - dec, roll + 180.0])
    return _rotation(2, angles[2]) @ _rotation(1, angles[1]) @ _rotation(2, angles[0])


def nominal_camera_frame(axes, camera: int) -> np.ndarray:
    """The nominal frame of a camera, in which TESS Vectors measure angles.

    The nominal boresight of camera ``c`` is the spacecraft +Z axis tilted
    towards +X by `NOMINAL_CAMERA_TILT` (-36, -12, +12, +36 deg). The azimuth
    zero point is the direction away from the spacecraft boresight (the tilt
    direction) and azimuth 90 deg lies towards spacecraft +Y for cameras 3-4
    and towards -Y for cameras 1-2 (their frame is turned by 180 deg). Found
    by fitting the TESS Vectors of sector 1, all four cameras, to 0.01 deg
    (``docs/geometry.rst``).

    Parameters
    ----------
    axes : array of float, shape (3, 3)
        Spacecraft +X, +Y, +Z unit vectors (rows), from `spacecraft_axes`.
    camera : int
        1-4.

    Returns
    -------
    frame : ndarray, shape (3, 3)
        Rows: azimuth zero point, azimuth 90 deg, nominal boresight (ICRS unit
        vectors, a right-handed orthonormal frame).

    Raises
    ------
    ScatterLightError
        ``camera`` is not 1-4.
    """
    try:
        tilt = np.deg2rad(NOMINAL_CAMERA_TILT[int(camera)])
    except KeyError as err:
        msg = f"camera must be 1-4, got {camera}."
        raise ScatterLightError(msg) from err
    x_axis, y_axis, z_axis = np.asarray(axes, dtype=float).reshape(3, 3)
    side = np.sign(tilt)
    boresight = np.cos(tilt) * z_axis + np.sin(tilt) * x_axis
    outward = side * (np.cos(tilt) * x_axis - np.sin(tilt) * z_axis)
    return np.stack([outward, side * y_axis, boresight])


# ---------------------------------------------------------------------- ephemerides
def _as_jd_tdb(time) -> np.ndarray:
    """Julian dates (TDB) from a `~astropy.time.Time` or BTJD floats."""
    from astropy.time import Time

    if isinstance(time, Time):
        return np.atleast_1d(time.tdb.jd).astype(float)
    return np.atleast_1d(np.asarray(time, dtype=float)) + BTJD_OFFSET


class Ephemeris(abc.ABC):
    """Positions of TESS, the Earth and the Moon.

    Subclasses implement `spacecraft_position` and `body_vectors`; all times are
    Julian dates in TDB, all positions ICRF/J2000 equatorial [km].

    Attributes
    ----------
    description : str
        Where the positions come from (recorded in datasets).
    coverage : (float, float) or None
        First and last Julian date (TDB) the ephemeris covers.
    """

    description: str = ""
    coverage: tuple[float, float] | None = None

    def _check(self, jd: np.ndarray) -> np.ndarray:
        jd = np.atleast_1d(np.asarray(jd, dtype=float))
        if self.coverage is not None and jd.size:
            lo, hi = self.coverage
            if jd.min() < lo or jd.max() > hi:
                msg = (
                    f"Times BTJD {jd.min() - BTJD_OFFSET:.4f}..{jd.max() - BTJD_OFFSET:.4f} are "
                    f"outside the ephemeris {self.description} (BTJD {lo - BTJD_OFFSET:.4f}.."
                    f"{hi - BTJD_OFFSET:.4f}); use an ephemeris that covers the sector "
                    "(a longer Horizons table, or the full SPICE kernels of lkspacecraft)."
                )
                raise ScatterLightError(msg)
        return jd

    @abc.abstractmethod
    def spacecraft_position(self, jd_tdb) -> np.ndarray:
        """Barycentric position of TESS.

        Parameters
        ----------
        jd_tdb : array of float, shape (ntime,)
            Julian dates, TDB [d].

        Returns
        -------
        position : ndarray, shape (ntime, 3)
            ICRF position relative to the solar-system barycentre [km].
        """

    @abc.abstractmethod
    def body_vectors(self, jd_tdb) -> dict[str, np.ndarray]:
        """Vectors from TESS to the centres of the Earth and the Moon.

        Parameters
        ----------
        jd_tdb : array of float, shape (ntime,)
            Julian dates, TDB [d], at the spacecraft.

        Returns
        -------
        vectors : dict
            ``{"earth": (ntime, 3), "moon": (ntime, 3)}`` ICRF vectors [km].
        """

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.description})"


def _builtin_body(body: str, jd: np.ndarray, ephemeris: str) -> np.ndarray:
    """Barycentric ICRS position of a body [km], shape (n, 3), from astropy."""
    from astropy import units as u
    from astropy.coordinates import get_body_barycentric
    from astropy.time import Time

    pos = get_body_barycentric(body, Time(jd, format="jd", scale="tdb"), ephemeris=ephemeris)
    return np.asarray(pos.xyz.to_value(u.km)).T.reshape(-1, 3)


class HorizonsEphemeris(Ephemeris):
    """TESS positions from a JPL Horizons vector table, cubic-spline interpolated.

    Horizons serves the TESS trajectory (target ``-95``) as a table of state
    vectors (web interface: *Ephemeris Type* "Vector Table", *Coordinate
    Center* "Solar System Barycenter [500@0]" or "Geocentric [500@399]",
    *Reference frame* ICRF, *Reference plane* "x-y axes of reference frame"
    (equatorial), CSV output), or through astroquery (`from_astroquery`). The
    positions are interpolated with a cubic spline in time (error about 1 km
    at perigee with 30-minute steps, i.e. below 0.001 deg; 17 km with 1-hour
    steps). The Earth and the Moon come from astropy's
    ``body_ephemeris`` (``"builtin"`` works offline; a JPL kernel such as
    ``"de432s"`` is more precise but must be downloaded once).

    Parameters
    ----------
    jd_tdb : array of float, shape (n,)
        Sample times, Julian dates (TDB) [d], increasing.
    position_km : array of float, shape (n, 3)
        TESS position relative to ``center``, ICRF equatorial [km].
    center : {"ssb", "earth"}
        Solar-system barycentre or the Earth's centre.
    description : str
    body_ephemeris : str
        astropy solar-system ephemeris for the Earth and the Moon.

    Examples
    --------
    >>> from lk_scatterlight.geometry import HorizonsEphemeris
    >>> eph = HorizonsEphemeris.read("horizons_tess.csv")  # doctest: +SKIP
    >>> eph.body_vectors([2458326.0])["earth"]  # doctest: +SKIP
    """

    def __init__(
        self,
        jd_tdb,
        position_km,
        center: str = "ssb",
        description: str = "JPL Horizons table",
        body_ephemeris: str = "builtin",
    ):
        from scipy.interpolate import CubicSpline

        jd = np.asarray(jd_tdb, dtype=float)
        pos = np.asarray(position_km, dtype=float)
        if jd.ndim != 1 or pos.shape != (jd.size, 3) or jd.size < 4:
            msg = (
                f"A Horizons table needs at least 4 samples of (x, y, z); got times of shape "
                f"{jd.shape} and positions of shape {pos.shape}."
            )
            raise ScatterLightError(msg)
        if np.any(np.diff(jd) <= 0):
            msg = "Horizons sample times must be strictly increasing."
            raise ScatterLightError(msg)
        if center not in ("ssb", "earth"):
            msg = f"center must be 'ssb' or 'earth', got {center!r}."
            raise ScatterLightError(msg)
        self.jd, self.position, self.center = jd, pos, center
        self.body_ephemeris = body_ephemeris
        self.description = description
        self.coverage = (float(jd[0]), float(jd[-1]))
        self._jd0 = float(jd[0])
        self._spline = CubicSpline(jd - self._jd0, pos, axis=0)

    # -------------------------------------------------------------- reading
    @classmethod
    def read(cls, path: str | os.PathLike, body_ephemeris: str = "builtin") -> HorizonsEphemeris:
        """Read a Horizons vector table saved as CSV.

        Accepts Horizons' CSV layout (header, ``$$SOE``, one row per time,
        ``$$EOE``), also with the header lines commented out with ``#``. The
        columns must include ``JDTDB`` and ``X``, ``Y``, ``Z``; the units (au or
        km), the centre (solar-system barycentre or Earth) and the reference
        frame are read from the header.

        Parameters
        ----------
        path : str or path-like
        body_ephemeris : str
            See the class docstring.

        Returns
        -------
        ephemeris : `HorizonsEphemeris`

        Raises
        ------
        ScatterLightError
            The file is not a Horizons vector table of TESS in ICRF equatorial
            coordinates centred on the barycentre or the Earth.
        """
        path = Path(path)
        try:
            lines = path.read_text(errors="replace").splitlines()
        except OSError as err:
            msg = f"Cannot read the Horizons table {path}: {err}"
            raise ScatterLightError(msg) from err
        marks = [i for i, line in enumerate(lines) if line.lstrip("# ").startswith("$$SOE")]
        ends = [i for i, line in enumerate(lines) if line.lstrip("# ").startswith("$$EOE")]
        if not marks or not ends or ends[0] <= marks[0]:
            msg = (
                f"{path.name} is not a JPL Horizons table: no $$SOE ... $$EOE block. Save the "
                "vector table of TESS (-95) as CSV (see HorizonsEphemeris)."
            )
            raise ScatterLightError(msg)
        soe, eoe = marks[0], ends[0]
        header = {}
        for line in lines[:soe]:
            key, colon, value = line.lstrip("#").strip().partition(":")
            if colon:
                header.setdefault(key.strip().lower(), value.strip())
        names = None
        body = lines[soe + 1 : eoe]
        if body and "JDTDB" in body[0].upper():
            names, body = body[0], body[1:]
        else:
            for line in reversed(lines[:soe]):
                if "JDTDB" in line.upper():
                    names = line
                    break
        if names is None:
            msg = f"{path.name}: no column header with JDTDB; export the vector table as CSV."
            raise ScatterLightError(msg)
        columns = [c.strip().upper() for c in names.lstrip("#").split(",")]
        try:
            ix = [columns.index(k) for k in ("JDTDB", "X", "Y", "Z")]
        except ValueError as err:
            msg = f"{path.name}: columns {columns} lack JDTDB, X, Y or Z."
            raise ScatterLightError(msg) from err
        rows = [r for r in csv.reader(body) if r and r[0].strip()]
        try:
            data = np.array([[float(r[i]) for i in ix] for r in rows])
        except (ValueError, IndexError) as err:
            msg = f"{path.name}: cannot parse the rows between $$SOE and $$EOE ({err})."
            raise ScatterLightError(msg) from err
        target = header.get("target body name", "")
        if target and "-95" not in target and "TESS" not in target.upper():
            msg = f"{path.name} is a table of {target!r}, not of TESS (-95)."
            raise ScatterLightError(msg)
        center_text = header.get("center body name", "").lower()
        if "barycenter" in center_text and "solar" in center_text:
            center = "ssb"
        elif center_text.startswith("earth") or "(399)" in center_text:
            center = "earth"
        else:
            msg = (
                f"{path.name}: centre {center_text or 'unknown'!r}; use the solar-system "
                "barycentre (500@0) or the geocentre (500@399)."
            )
            raise ScatterLightError(msg)
        system = (header.get("reference frame", "") + header.get("coordinate systm", "")).lower()
        if "ecliptic" in system:
            msg = (
                f"{path.name} is in ecliptic coordinates; request the reference plane "
                "'x-y axes of reference frame' (equatorial ICRF)."
            )
            raise ScatterLightError(msg)
        units = header.get("output units", "au").lower()
        scale = 1.0 if units.startswith("km") else AU_KM
        description = (
            f"JPL Horizons table {path.name} (TESS -95 w.r.t. "
            f"{'solar-system barycentre' if center == 'ssb' else 'Earth'})"
        )
        return cls(data[:, 0], data[:, 1:] * scale, center, description, body_ephemeris)

    @classmethod
    def from_astroquery(
        cls, start, stop, step: str = "30m", body_ephemeris: str = "builtin"
    ) -> HorizonsEphemeris:  # pragma: no cover - needs the network
        """Query JPL Horizons for TESS' barycentric vectors with astroquery.

        Parameters
        ----------
        start, stop : float or `~astropy.time.Time`
            Range to cover; floats are BTJD [d]. Half a day is added on each side.
        step : str
            Horizons step size, e.g. ``"30m"``.
        body_ephemeris : str

        Returns
        -------
        ephemeris : `HorizonsEphemeris`

        Raises
        ------
        ScatterLightError
            astroquery is missing or Horizons cannot be reached.
        """
        from astropy.time import Time

        try:
            from astroquery.jplhorizons import Horizons
        except ImportError as err:
            msg = "Querying JPL Horizons needs astroquery: pip install astroquery."
            raise ScatterLightError(msg) from err
        jd0 = float(_as_jd_tdb(start)[0]) - 0.5
        jd1 = float(_as_jd_tdb(stop)[-1]) + 0.5
        epochs = {
            "start": Time(jd0, format="jd", scale="tdb").iso,
            "stop": Time(jd1, format="jd", scale="tdb").iso,
            "step": step,
        }
        try:
            table = Horizons(id="-95", location="@0", epochs=epochs).vectors(refplane="earth")
        except (OSError, ValueError) as err:  # requests' errors are OSErrors
            msg = f"JPL Horizons query for TESS failed ({err}); download the table by hand."
            raise ScatterLightError(msg) from err
        xyz = np.stack([np.asarray(table[k], dtype=float) for k in "xyz"], axis=1) * AU_KM
        jd = np.asarray(table["datetime_jd"], dtype=float)
        return cls(
            jd, xyz, "ssb", "JPL Horizons query (astroquery), TESS w.r.t. SSB", body_ephemeris
        )

    def write(self, path: str | os.PathLike, overwrite: bool = False) -> Path:
        """Save the table in Horizons' CSV layout (readable by `read`), atomically.

        Parameters
        ----------
        path : str or path-like
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
        refuse_overwrite(path, overwrite)
        center = "Solar System Barycenter (0)" if self.center == "ssb" else "Earth (399)"
        lines = [
            "Target body name: TESS (spacecraft) (-95)  {written by lk_scatterlight}",
            f"Center body name: {center}",
            "Output units    : KM-S",
            "Reference frame : ICRF",
            "Coordinate systm: Earth Mean Equator and Equinox of Reference Epoch",
            "JDTDB, Calendar Date (TDB), X, Y, Z,",
            "$$SOE",
        ]
        for jd, (x, y, z) in zip(self.jd, self.position, strict=True):
            lines.append(f"{jd:.9f}, , {x:.6f}, {y:.6f}, {z:.6f},")
        lines.append("$$EOE")
        with atomic_write(path) as tmp:
            tmp.write_text("\n".join(lines) + "\n")
        return path

    # -------------------------------------------------------------- positions
    def _position(self, jd: np.ndarray) -> np.ndarray:
        return self._spline(self._check(jd) - self._jd0)

    def spacecraft_position(self, jd_tdb) -> np.ndarray:
        """Barycentric position of TESS [km], shape (ntime, 3) (see `Ephemeris`)."""
        jd = np.atleast_1d(np.asarray(jd_tdb, dtype=float))
        pos = self._position(jd)
        if self.center == "earth":
            pos = pos + _builtin_body("earth", jd, self.body_ephemeris)
        return pos

    def body_vectors(self, jd_tdb) -> dict[str, np.ndarray]:
        """TESS-to-Earth and TESS-to-Moon vectors [km] (see `Ephemeris`)."""
        jd = np.atleast_1d(np.asarray(jd_tdb, dtype=float))
        pos = self._position(jd)
        earth = _builtin_body("earth", jd, self.body_ephemeris)
        moon = _builtin_body("moon", jd, self.body_ephemeris)
        if self.center == "earth":
            return {"earth": -pos, "moon": moon - earth - pos}
        return {"earth": earth - pos, "moon": moon - pos}


def read_ephemerides(paths: Iterable[str | os.PathLike]) -> HorizonsEphemeris:
    """One Horizons ephemeris from several (possibly overlapping) vector tables.

    Parameters
    ----------
    paths : iterable of str or path-like
        JPL Horizons vector tables of TESS (CSV, see
        `~lk_scatterlight.geometry.HorizonsEphemeris.read`); folders
        are searched for ``*.csv``.

    Returns
    -------
    ephemeris : `~lk_scatterlight.geometry.HorizonsEphemeris`
        Barycentric; where tables overlap the later file's samples are kept.

    Raises
    ------
    ScatterLightError
        No table found, or tables with different centres.
    """
    files: list[Path] = []
    for path in paths:
        path = Path(path)
        files += sorted(path.glob("*.csv")) if path.is_dir() else [path]
    if not files:
        msg = "No Horizons tables found; give CSV files or a folder holding them."
        raise ScatterLightError(msg)
    tables = [HorizonsEphemeris.read(f) for f in files]
    tables.sort(key=lambda e: e.coverage[0])
    centres = {e.center for e in tables}
    if len(centres) > 1:
        msg = f"The Horizons tables mix centres {sorted(centres)}; use one centre."
        raise ScatterLightError(msg)
    jd, pos = [], []
    for k, eph in enumerate(tables):
        keep = np.ones(eph.jd.size, dtype=bool)
        if k + 1 < len(tables):
            keep = eph.jd < tables[k + 1].coverage[0]
        jd.append(eph.jd[keep])
        pos.append(eph.position[keep])
    names = ", ".join(f.name for f in files)
    return HorizonsEphemeris(
        np.concatenate(jd),
        np.concatenate(pos),
        centres.pop(),
        description=f"JPL Horizons tables {names}",
    )


class SpiceEphemeris(Ephemeris):
    """TESS, Earth and Moon positions from SPICE kernels, through lkspacecraft.

    lkspacecraft downloads and caches the TESS and planetary (DE440) kernels
    on first use. With ``lkspacecraft.enable_test_mode()`` it loads the
    truncated kernels it ships instead (sector 4 only, 2018-10-09 to
    2018-11-17), which needs no network. SPICE keeps its kernels in global
    state: the most recently created `SpiceEphemeris` (or lkspacecraft
    ``Spacecraft``) decides which kernels are loaded.

    Parameters
    ----------
    spacecraft : `lkspacecraft.TESSSpacecraft`, optional
        An existing spacecraft object; default a new one.

    Raises
    ------
    ScatterLightError
        lkspacecraft is not installed.
    """

    def __init__(self, spacecraft=None):
        if spacecraft is None:
            try:
                from lkspacecraft import TESSSpacecraft
            except ImportError as err:
                msg = (
                    "The SPICE ephemeris needs lkspacecraft: pip install lkspacecraft "
                    "(or pip install 'lk_scatterlight[builder]')."
                )
                raise ScatterLightError(msg) from err
            try:
                spacecraft = TESSSpacecraft()
            except OSError as err:  # urllib's errors when the kernels cannot be downloaded
                msg = (
                    f"Cannot load TESS SPICE kernels through lkspacecraft ({err}). They are "
                    "downloaded on first use; without network use a JPL Horizons table "
                    "(HorizonsEphemeris, --ephemeris horizons FILE)."
                )
                raise ScatterLightError(msg) from err
        self._spacecraft = spacecraft
        start, end = spacecraft.start_time, spacecraft.end_time
        self.coverage = (float(start.tdb.jd), float(end.tdb.jd))
        self.description = (
            f"SPICE kernels via lkspacecraft (BTJD {self.coverage[0] - BTJD_OFFSET:.2f}.."
            f"{self.coverage[1] - BTJD_OFFSET:.2f})"
        )

    def _relative(self, jd: np.ndarray, observer: str) -> np.ndarray:
        from astropy.time import Time

        try:
            from lkspacecraft.spacecraft import BadEphemeris
        except ImportError:  # pragma: no cover - a custom spacecraft object
            BadEphemeris = ValueError  # noqa: N806
        jd = self._check(jd)
        try:
            position = self._spacecraft.get_spacecraft_position(
                Time(jd, format="jd", scale="tdb"), observer=observer
            )
        except BadEphemeris as err:
            msg = f"SPICE has no TESS position for these times: {err}"
            raise ScatterLightError(msg) from err
        return np.asarray(position, dtype=float).reshape(-1, 3)

    def spacecraft_position(self, jd_tdb) -> np.ndarray:
        """Barycentric position of TESS [km], shape (ntime, 3) (see `Ephemeris`)."""
        return self._relative(np.atleast_1d(jd_tdb), "SOLAR SYSTEM BARYCENTER")

    def body_vectors(self, jd_tdb) -> dict[str, np.ndarray]:
        """TESS-to-Earth and TESS-to-Moon vectors [km] (see `Ephemeris`)."""
        jd = np.atleast_1d(jd_tdb)
        return {"earth": -self._relative(jd, "EARTH"), "moon": -self._relative(jd, "MOON")}


def make_ephemeris(spec: str | list[str] | tuple[str, ...], time_range=None) -> Ephemeris:
    """An ephemeris from a short specification (as on the command line).

    Parameters
    ----------
    spec : str or list of str
        ``"spice"``; ``["horizons", PATH]`` for a saved Horizons table;
        ``"horizons"`` alone queries JPL Horizons with astroquery (network).
    time_range : (float, float), optional
        BTJD range [d] to query when no Horizons file is given.

    Returns
    -------
    ephemeris : `Ephemeris`

    Raises
    ------
    ScatterLightError
        Unknown kind, or a query without ``time_range``.
    """
    parts = [spec] if isinstance(spec, str) else list(spec)
    kind, args = parts[0].lower(), parts[1:]
    if kind == "spice" and not args:
        return SpiceEphemeris()
    if kind == "horizons" and len(args) == 1:
        return HorizonsEphemeris.read(args[0])
    if kind == "horizons" and not args:  # pragma: no cover - needs the network
        if time_range is None:
            msg = "Querying Horizons needs the time range to cover."
            raise ScatterLightError(msg)
        return HorizonsEphemeris.from_astroquery(*time_range)
    msg = f"Unknown ephemeris {' '.join(parts)!r}: use 'spice', 'horizons FILE' or 'horizons'."
    raise ScatterLightError(msg)


# ---------------------------------------------------------------------- pointing
def optical_axis_pixel(camera: int, ccd: int) -> tuple[float, float]:
    """Where the camera's optical axis falls in a CCD's pixel grid.

    From tess-point's focal-plane geometry (`FOCAL_PLANE_GEOMETRY`): the axis
    is the focal-plane origin; 15-micron pixels; CCD-local pixel ``p`` maps to
    1-based CCD column ``p_x + 45`` and row ``p_y + 1`` (tess-point's
    convention, pixel centres at integers).

    Parameters
    ----------
    camera, ccd : int
        1-4.

    Returns
    -------
    row, column : float
        1-based CCD pixel coordinates (collateral columns counted); outside
        the science area, beyond its corner nearest the camera centre.
    """
    try:
        x0, y0, angle = FOCAL_PLANE_GEOMETRY[int(camera)][int(ccd)]
    except KeyError as err:
        msg = f"camera and ccd must be 1-4, got camera {camera} CCD {ccd}."
        raise ScatterLightError(msg) from err
    a = np.deg2rad(angle)
    dx, dy = -x0, -y0
    x = np.cos(a) * dx + np.sin(a) * dy
    y = -np.sin(a) * dx + np.cos(a) * dy
    return float(y / _PIXEL_MM + 0.5), float(x / _PIXEL_MM + 44.5)


def _wcs_los(wcs, row, column) -> np.ndarray:
    """ICRS unit vectors of 1-based CCD pixels through ``wcs``, shape (..., 3)."""
    row, column = np.broadcast_arrays(np.asarray(row, float), np.asarray(column, float))
    ra, dec = wcs.all_pix2world(column.ravel() - 1.0, row.ravel() - 1.0, 0)
    return _unit_vector(ra, dec).reshape(*row.shape, 3)


class CCDPointing:
    """Sky geometry of one CCD in one sector: WCS, camera boresight, spacecraft axes.

    Parameters
    ----------
    wcs : `astropy.wcs.WCS`
        Celestial WCS of the full FFI pixel grid (0-based pixel ``(x, y)`` is
        1-based CCD ``(column, row) = (x + 1, y + 1)``, collateral columns
        included), with its SIP distortion.
    sector, camera, ccd : int
    boresight : array of float, shape (3,)
        ICRS unit vector of the camera's optical axis.
    axes : array of float, shape (3, 3), optional
        Spacecraft +X, +Y, +Z unit vectors (rows); needed only to convert
        azimuths to the TESS Vectors convention (`to_tessvectors_azimuth`).
    description : str
        Where the WCS comes from.
    boresight_spread : float, optional
        Largest angle between the per-CCD estimates of the boresight and their
        mean [deg].

    Examples
    --------
    >>> from lk_scatterlight.geometry import CCDPointing
    >>> pointing = CCDPointing.from_sector(1, 4, 3)  # doctest: +SKIP
    >>> pointing.boresight_radec  # doctest: +SKIP
    """

    def __init__(
        self,
        wcs,
        sector: int,
        camera: int,
        ccd: int,
        boresight,
        axes=None,
        description: str = "",
        boresight_spread: float | None = None,
    ):
        self.wcs = wcs
        self.sector, self.camera, self.ccd = int(sector), int(camera), int(ccd)
        self.boresight = _normalise(np.asarray(boresight, dtype=float).reshape(3))
        self.axes = None if axes is None else np.asarray(axes, dtype=float).reshape(3, 3)
        self.description = description
        self.boresight_spread = boresight_spread
        self._boresight_pixel: tuple[float, float] | None = None

    def __repr__(self) -> str:
        ra, dec = self.boresight_radec
        return (
            f"CCDPointing(sector={self.sector}, camera={self.camera}, ccd={self.ccd}, "
            f"boresight=({ra:.4f}, {dec:.4f}) deg, {self.description})"
        )

    # -------------------------------------------------------------- constructors
    @classmethod
    def from_sector(cls, sector: int, camera: int, ccd: int) -> CCDPointing:
        """The archival WCS of tesswcs and the boresight from the camera's four CCDs.

        Parameters
        ----------
        sector, camera, ccd : int

        Returns
        -------
        pointing : `CCDPointing`

        Raises
        ------
        ScatterLightError
            tesswcs is missing or has no WCS for the sector.
        """
        try:
            import tesswcs
        except ImportError as err:
            msg = "CCDPointing.from_sector needs tesswcs: pip install tesswcs."
            raise ScatterLightError(msg) from err
        try:
            wcss = {k: tesswcs.WCS.from_sector(int(sector), int(camera), k) for k in CCDS}
        except (ValueError, KeyError) as err:
            msg = f"tesswcs has no WCS for sector {sector} camera {camera}: {err}"
            raise ScatterLightError(msg) from err
        estimates = np.array([_wcs_los(w, *optical_axis_pixel(camera, k)) for k, w in wcss.items()])
        boresight = _normalise(estimates.mean(axis=0))
        spread = float(np.rad2deg(np.arccos(np.clip(estimates @ boresight, -1, 1))).max())
        log.debug("sector %s camera %s boresight spread %.4f deg", sector, camera, spread)
        wcs = wcss[int(ccd)]
        axes = spacecraft_axes(float(wcs.ra), float(wcs.dec), float(wcs.roll))
        description = f"tesswcs {tesswcs.__version__} WCS.from_sector({sector}, {camera}, {ccd})"
        return cls(wcs, sector, camera, ccd, boresight, axes, description, spread)

    @classmethod
    def from_wcs(
        cls,
        wcs,
        sector: int,
        camera: int,
        ccd: int,
        pointing: tuple[float, float, float] | None = None,
        description: str = "custom WCS",
    ) -> CCDPointing:
        """A pointing from one CCD's WCS; the boresight is estimated from that CCD alone.

        Parameters
        ----------
        wcs : `astropy.wcs.WCS`
            Of the full FFI pixel grid (see the class docstring).
        sector, camera, ccd : int
        pointing : (float, float, float), optional
            Spacecraft RA, Dec and roll [deg] (e.g. ``RA_NOM``, ``DEC_NOM``,
            ``ROLL_NOM``), for the spacecraft axes.
        description : str

        Returns
        -------
        pointing : `CCDPointing`
        """
        boresight = _wcs_los(wcs, *optical_axis_pixel(camera, ccd))
        axes = None if pointing is None else spacecraft_axes(*pointing)
        return cls(wcs, sector, camera, ccd, boresight, axes, description, None)

    @classmethod
    def from_ffi(cls, path: str | os.PathLike, sector: int | None = None) -> CCDPointing:
        """The WCS in a SPOC FFI's image header (extension 1).

        The header must describe the full-frame pixel grid (a full FFI, or a
        crop that starts at its first row and column).

        Parameters
        ----------
        path : str or path-like
            SPOC calibrated FFI.
        sector : int, optional
            Default: from the SPOC file name (``-s0001-``) or a SECTOR keyword.

        Returns
        -------
        pointing : `CCDPointing`

        Raises
        ------
        ScatterLightError
            No WCS, camera, CCD or sector in the file.
        """
        from astropy.io import fits
        from astropy.wcs import WCS, FITSFixedWarning

        path = Path(path)
        try:
            with fits.open(path) as hdul:
                primary, header = hdul[0].header.copy(), hdul[1].header.copy()
        except (OSError, IndexError) as err:
            msg = f"Cannot read the image header of {path}: {err}"
            raise ScatterLightError(msg) from err
        if sector is None:
            match = re.search(r"-s(\d{4})-", path.name)
            sector = int(match.group(1)) if match else primary.get("SECTOR", header.get("SECTOR"))
        try:
            camera, ccd = int(header["CAMERA"]), int(header["CCD"])
            sector = int(sector)
        except (KeyError, TypeError, ValueError) as err:
            msg = f"{path.name}: cannot tell the sector, camera and CCD ({err})."
            raise ScatterLightError(msg) from err
        with warnings.catch_warnings():
            # SPOC headers have DATE-OBS without MJD-OBS: astropy "fixes" and warns.
            warnings.simplefilter("ignore", FITSFixedWarning)
            wcs = WCS(header)
        if not wcs.has_celestial:
            msg = f"{path.name}: extension 1 has no celestial WCS."
            raise ScatterLightError(msg)
        pointing = None
        if all(k in header for k in ("RA_NOM", "DEC_NOM", "ROLL_NOM")):
            pointing = (header["RA_NOM"], header["DEC_NOM"], header["ROLL_NOM"])
        return cls.from_wcs(wcs, sector, camera, ccd, pointing, f"WCS of {path.name}")

    # -------------------------------------------------------------- geometry
    @property
    def boresight_radec(self) -> tuple[float, float]:
        """RA and Dec of the camera boresight [deg]."""
        ra, dec = _radec(self.boresight)
        return float(ra), float(dec)

    @property
    def boresight_pixel(self) -> tuple[float, float]:
        """1-based CCD (row, column) of the boresight, extrapolating the WCS."""
        if self._boresight_pixel is None:
            self._boresight_pixel = self.pixel(self.boresight)
        return self._boresight_pixel

    def pixel(self, vector) -> tuple[float, float]:
        """1-based CCD (row, column) of one ICRS direction (iterative SIP inverse).

        Parameters
        ----------
        vector : array of float, shape (3,)

        Returns
        -------
        row, column : float
        """
        ra, dec = _radec(np.asarray(vector, dtype=float))
        x, y = self.wcs.all_world2pix(
            np.atleast_1d(ra), np.atleast_1d(dec), 0, tolerance=1e-9, maxiter=200
        )
        return float(y[0] + 1.0), float(x[0] + 1.0)

    def line_of_sight(self, row, column) -> np.ndarray:
        """ICRS unit vectors of pixels.

        Parameters
        ----------
        row, column : array of float, broadcastable
            1-based CCD pixel coordinates.

        Returns
        -------
        los : ndarray, shape (..., 3)
        """
        return _wcs_los(self.wcs, row, column)

    def frame(self, row, column) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Line of sight and azimuth frame at pixels (see the module docstring).

        Parameters
        ----------
        row, column : array of float, broadcastable
            1-based CCD pixel coordinates.

        Returns
        -------
        los, e_x, e_y : ndarray, each shape (..., 3)
            Line of sight; unit tangent of increasing column; unit tangent
            orthogonal to it on the side of increasing row.
        """
        row, column = np.broadcast_arrays(np.asarray(row, float), np.asarray(column, float))
        los = self.line_of_sight(row, column)
        h = 0.5
        ex = self.line_of_sight(row, column + h) - self.line_of_sight(row, column - h)
        ey = self.line_of_sight(row + h, column) - self.line_of_sight(row - h, column)
        ex = _normalise(ex - np.sum(ex * los, -1, keepdims=True) * los)
        ey = ey - np.sum(ey * los, -1, keepdims=True) * los
        ey = _normalise(ey - np.sum(ey * ex, -1, keepdims=True) * ex)
        return los, ex, ey

    @property
    def nominal_frame(self) -> np.ndarray:
        """The camera's nominal frame, in which TESS Vectors give their angles.

        Returns
        -------
        frame : ndarray, shape (3, 3)
            Rows: azimuth zero point, azimuth 90 deg, nominal boresight (ICRS
            unit vectors); see `nominal_camera_frame`.

        Raises
        ------
        ScatterLightError
            The pointing has no spacecraft axes.
        """
        if self.axes is None:
            msg = "This pointing has no spacecraft axes (give the pointing RA, Dec and roll)."
            raise ScatterLightError(msg)
        return nominal_camera_frame(self.axes, self.camera)

    def tessvectors_frame(self) -> tuple[float, int]:
        """How the TESS Vectors azimuth relates to this CCD's azimuth frame at the boresight.

        Returns
        -------
        offset : float
            Azimuth [deg], in this CCD's frame, of the TESS Vectors' azimuth
            zero point (`nominal_frame` row 0) projected perpendicular to the
            boresight.
        sense : int
            +1 if TESS Vectors' azimuth 90 deg lies at ``offset + 90`` deg,
            -1 if at ``offset - 90`` deg.

        Raises
        ------
        ScatterLightError
            The pointing has no spacecraft axes.
        """
        reference = self.nominal_frame[:2]
        _, ex, ey = self.frame(*self.boresight_pixel)
        az = np.rad2deg(np.arctan2(reference @ ey, reference @ ex))
        sense = 1 if np.sin(np.deg2rad(az[1] - az[0])) > 0 else -1
        return float(az[0]), sense


def to_tessvectors_azimuth(azimuth, pointing: CCDPointing) -> np.ndarray:
    """Convert camera-boresight azimuths of this module to the TESS Vectors convention.

    TESS Vectors' ``*_Camera_Azimuth`` is measured around the camera's
    nominal boresight in its nominal frame (`nominal_camera_frame`). This
    converts an azimuth around this module's boresight (the optical axis,
    0.01-0.07 deg away from the nominal one) by a rotation, so it matches
    TESS Vectors to about ``offset / tan(angle)``: 0.1 deg for a body 35 deg
    from the boresight of camera 1 (see ``docs/geometry.rst``);
    `tessvectors_geometry` computes the TESS Vectors values exactly.

    Parameters
    ----------
    azimuth : array of float
        Azimuths around the camera boresight in ``pointing``'s CCD frame [deg].
    pointing : `CCDPointing`
        With spacecraft axes.

    Returns
    -------
    azimuth : ndarray
        In the TESS Vectors convention, in [0, 360) [deg].
    """
    offset, sense = pointing.tessvectors_frame()
    return (sense * (np.asarray(azimuth, dtype=float) - offset)) % 360.0


# ---------------------------------------------------------------------- geometry
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
