"""Where a CCD looks: its WCS, its camera's boresight and the spacecraft axes (`CCDPointing`).

Also the focal-plane geometry that places each camera's optical axis on its
CCDs (`optical_axis_pixel`), the spacecraft and nominal camera frames of the
TESS Vectors (`spacecraft_axes`, `nominal_camera_frame`) and the conversion of
azimuths to their convention (`to_tessvectors_azimuth`).
"""

from __future__ import annotations

import logging
import os
import re
import warnings
from pathlib import Path

import numpy as np

from ..ccd import CCDS
from ..exceptions import ScatterLightError

__all__ = [
    "FOCAL_PLANE_GEOMETRY",
    "NOMINAL_CAMERA_TILT",
    "CCDPointing",
    "optical_axis_pixel",
    "spacecraft_axes",
    "nominal_camera_frame",
    "to_tessvectors_azimuth",
]

log = logging.getLogger(__name__)

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
