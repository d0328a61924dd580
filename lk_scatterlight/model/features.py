"""The model's input features: geometry per pixel, the Earth's lit fraction and face, orbits.

`geometry_features` assembles the feature matrix (columns `FEATURES`) from the
Earth and Moon geometry of `lk_scatterlight.geometry`; `segment_ids` numbers the
orbits of a time series.
"""

from __future__ import annotations

import logging

import numpy as np

__all__ = [
    "FEATURES",
    "ORBIT_GAP",
    "camera_azimuth",
    "earth_brightness",
    "earth_illuminated_fraction",
    "earth_lit_longitude",
    "geometry_features",
    "segment_ids",
]

log = logging.getLogger(__name__)

#: The model's input features, in order (angles [deg], distances [Earth radii]).
#: Azimuths are in the camera frame (`camera_azimuth`). ``earth_limb_angle`` is the
#: angle from the line of sight to the Earth's limb, ``earth_brightness`` the log10 of
#: the Earth's illuminated fraction over its squared distance (`earth_brightness`), the
#: boresight pair the Earth's angle and azimuth from the camera's boresight, and
#: ``earth_lit_longitude`` the geographic longitude of the Earth's face lit and seen by TESS
#: (`earth_lit_longitude`).
FEATURES = (
    "earth_angle",
    "earth_azimuth",
    "earth_distance",
    "moon_angle",
    "moon_azimuth",
    "moon_distance",
    "camera",
    "earth_limb_angle",
    "earth_brightness",
    "earth_boresight_angle",
    "earth_boresight_azimuth",
    "earth_lit_longitude",
)

#: Gaps longer than this split a sector into orbits (segments) [d].
ORBIT_GAP = 0.5


def camera_azimuth(azimuth, ccd: int) -> np.ndarray:
    """Azimuths of a CCD's frame turned into the camera's frame [deg].

    The azimuth frame of `lk_scatterlight.geometry` is tied to each
    CCD's rows and columns; CCDs 1 and 2 are rotated by 180 deg with respect to
    CCDs 3 and 4. The camera frame is that of CCDs 3 and 4: 180 deg is added
    for CCDs 1 and 2, so one direction has one azimuth on all four CCDs.

    Parameters
    ----------
    azimuth : array of float
        In the CCD frame [deg].
    ccd : int

    Returns
    -------
    azimuth : ndarray
        In [0, 360) [deg].
    """
    turn = 180.0 if int(ccd) in (1, 2) else 0.0
    return (np.asarray(azimuth, dtype=float) + turn) % 360.0


def earth_brightness(distance, illuminated_fraction) -> np.ndarray:
    """The Earth's glow proxy: ``log10(illuminated_fraction / distance**2 + 1e-6)``.

    Parameters
    ----------
    distance : array of float
        Earth's distance from TESS [Earth radii].
    illuminated_fraction : array of float
        Fraction of the Earth's disc lit by the Sun as seen from TESS, 0..1
        (`earth_illuminated_fraction`).

    Returns
    -------
    brightness : ndarray
        [log10 of Earth radii^-2]; -6 for an unlit Earth.
    """
    d = np.asarray(distance, dtype=float)
    return np.log10(np.asarray(illuminated_fraction, dtype=float) / d**2 + 1e-6)


def _sun_from_earth(jd: np.ndarray, step: float) -> np.ndarray:
    """The Sun's geocentric position [km], shape (n, 3), interpolated from ``step``-day samples.

    From astropy's built-in ephemeris (offline); the Sun moves 1 deg a day, so
    linear interpolation over a few hours is exact to well below 0.01 deg.
    """
    from ..geometry import _builtin_body

    grid = np.arange(np.floor(jd.min() / step) - 1, np.ceil(jd.max() / step) + 2) * step
    sun = _builtin_body("sun", grid, "builtin") - _builtin_body("earth", grid, "builtin")
    return np.stack([np.interp(jd, grid, sun[:, k]) for k in range(3)], axis=1)


def earth_illuminated_fraction(earth_vectors, jd_tdb, step: float = 0.25) -> np.ndarray:
    """Fraction of the Earth's disc lit by the Sun as seen from TESS.

    ``(1 + cos(phase)) / 2`` with ``phase`` the Sun-Earth-TESS angle. The Sun's
    geocentric direction comes from astropy's built-in ephemeris (offline),
    evaluated every ``step`` days and interpolated linearly (it moves 1 deg a
    day).

    Parameters
    ----------
    earth_vectors : array of float, shape (ntime, 3)
        TESS-to-Earth vectors, ICRF [km].
    jd_tdb : array of float, shape (ntime,)
        Julian dates, TDB [d].
    step : float
        [d].

    Returns
    -------
    fraction : ndarray, shape (ntime,)
        0 (new Earth) .. 1 (full Earth).
    """
    jd = np.atleast_1d(np.asarray(jd_tdb, dtype=float))
    sun = _sun_from_earth(jd, step)
    to_tess = -np.asarray(earth_vectors, dtype=float).reshape(-1, 3)
    cos = np.sum(sun * to_tess, axis=1) / (
        np.linalg.norm(sun, axis=1) * np.linalg.norm(to_tess, axis=1)
    )
    return 0.5 * (1.0 + np.clip(cos, -1.0, 1.0))


#: TT - UTC [s]; UT1 is within 0.9 s of UTC, so UT1 = TDB - this is good to 0.004 deg of spin.
_TT_MINUS_UT1 = 69.184


def earth_lit_longitude(earth_vectors, jd_tdb, step: float = 0.25) -> np.ndarray:
    """East longitude on the Earth of the centre of its face both lit and seen by TESS [deg].

    The Earth's glow brightens and dims once a day as land and ocean turn
    through the sunlit face TESS sees (bright deserts and vegetation, dark
    seas, in TESS's red band). That face is centred, roughly, halfway between
    the sub-solar and the sub-TESS points: this is the geographic longitude
    of the direction halfway between the Sun and TESS seen from the Earth's
    centre. The Earth's rotation angle (IAU 2000) uses UT1 = TDB - 69.184 s.

    Parameters
    ----------
    earth_vectors : array of float, shape (ntime, 3)
        TESS-to-Earth vectors, ICRF [km].
    jd_tdb : array of float, shape (ntime,)
        Julian dates, TDB [d].
    step : float
        Sampling of the Sun's position [d] (`earth_illuminated_fraction`).

    Returns
    -------
    longitude : ndarray, shape (ntime,)
        In [0, 360) [deg].
    """
    jd = np.atleast_1d(np.asarray(jd_tdb, dtype=float))
    sun = _sun_from_earth(jd, step)
    to_tess = -np.asarray(earth_vectors, dtype=float).reshape(-1, 3)
    middle = sun / np.linalg.norm(sun, axis=1)[:, None]
    middle = middle + to_tess / np.linalg.norm(to_tess, axis=1)[:, None]
    ut1 = jd - _TT_MINUS_UT1 / 86400.0 - 2451545.0
    rotation = 360.0 * (0.7790572732640 + 1.00273781191135448 * ut1)
    return (np.rad2deg(np.arctan2(middle[:, 1], middle[:, 0])) - rotation) % 360.0


def geometry_features(
    earth_angle,
    earth_azimuth,
    earth_distance,
    moon_angle,
    moon_azimuth,
    moon_distance,
    camera,
    earth_boresight_angle,
    earth_boresight_azimuth,
    earth_fraction,
    earth_longitude,
) -> np.ndarray:
    """The feature matrix of the model (columns in the order of `FEATURES`).

    Parameters
    ----------
    earth_angle, moon_angle : array of float
        Angle between the line of sight and the body's centre [deg].
    earth_azimuth, moon_azimuth : array of float
        Azimuth of the body around the line of sight, camera frame [deg].
    earth_distance, moon_distance : array of float
        Distance from TESS [Earth radii].
    camera : int or array of int
    earth_boresight_angle, earth_boresight_azimuth : array of float
        The Earth's angle and azimuth (camera frame) from the camera's boresight [deg].
    earth_fraction : array of float
        Illuminated fraction of the Earth seen from TESS, 0..1
        (`earth_illuminated_fraction`).
    earth_longitude : array of float
        Longitude of the Earth's face lit and seen by TESS [deg]
        (`earth_lit_longitude`).

    Returns
    -------
    X : ndarray, shape (n, len(FEATURES)), float64
        The arguments broadcast together and flattened; the Earth's limb angle
        (``earth_angle - arcsin(1 / earth_distance)`` [deg]) and
        `earth_brightness` are derived here.
    """
    sight = (earth_angle, earth_azimuth, earth_distance, moon_angle, moon_azimuth, moon_distance)
    camera_level = (
        camera,
        earth_boresight_angle,
        earth_boresight_azimuth,
        earth_fraction,
        earth_longitude,
    )
    arrays = np.broadcast_arrays(*(np.asarray(a, dtype=float) for a in (*sight, *camera_level)))
    cols = [a.reshape(-1) for a in arrays]
    angle, distance, fraction = cols[0], cols[2], cols[9]
    limb = angle - np.rad2deg(np.arcsin(np.clip(1.0 / distance, 0.0, 1.0)))
    bright = earth_brightness(distance, fraction)
    return np.stack([*cols[:7], limb, bright, *cols[7:9], cols[10]], axis=1)


def segment_ids(time, gap: float = ORBIT_GAP) -> np.ndarray:
    """Segment (orbit) number of each time: segments split where sorted times jump by > ``gap``.

    Parameters
    ----------
    time : array of float, shape (n,)
        BTJD [d]; NaN times get segment -1.
    gap : float
        [d].

    Returns
    -------
    segment : ndarray of int, shape (n,)
    """
    time = np.asarray(time, dtype=float)
    out = np.full(time.shape, -1, dtype=int)
    finite = np.flatnonzero(np.isfinite(time))
    if finite.size == 0:
        return out
    order = finite[np.argsort(time[finite], kind="stable")]
    jumps = np.r_[0, np.cumsum(np.diff(time[order]) > gap)]
    out[order] = jumps
    return out
