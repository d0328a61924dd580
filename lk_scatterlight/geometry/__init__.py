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
    ``rfpg5_c1kb`` solution,
    `~lk_scatterlight.geometry.pointing.FOCAL_PLANE_GEOMETRY`) gives the pixel position
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

Modules
-------
`lk_scatterlight.geometry.ephemeris` (where TESS, the Earth and the Moon
are), `lk_scatterlight.geometry.pointing` (where a CCD looks) and
`lk_scatterlight.geometry.angles` (the angles at each line of sight); their
public names are re-exported here.

References
----------
1. Burke, C. J., Levine, A., Fausnaugh, M., et al. 2020, "TESS-Point: High
   precision TESS pointing tool", Astrophysics Source Code Library,
   ascl:2003.001 (focal-plane geometry).
2. TESS Vectors, https://heasarc.gsfc.nasa.gov/docs/tess/data-products.html
   and https://github.com/tessgi/tessvectors.
"""

from __future__ import annotations

from ..ccd import BTJD_OFFSET as BTJD_OFFSET
from ..utils import moved_names
from .angles import _RADIUS_KM as _RADIUS_KM
from .angles import (
    BARYCENTRIC_REFERENCE_PIXEL,
    BODIES,
    R_EARTH_KM,
    R_MOON_KM,
    BodyGeometry,
    Geometry,
    compute_geometry,
    cube_geometry,
    spacecraft_time,
)
from .angles import C_KM_S as C_KM_S
from .ephemeris import AU_KM as AU_KM
from .ephemeris import (
    Ephemeris,
    HorizonsEphemeris,
    SpiceEphemeris,
    make_ephemeris,
    read_ephemerides,
)
from .ephemeris import _as_jd_tdb as _as_jd_tdb
from .ephemeris import _builtin_body as _builtin_body
from .pointing import (
    FOCAL_PLANE_GEOMETRY,
    NOMINAL_CAMERA_TILT,
    CCDPointing,
    nominal_camera_frame,
    optical_axis_pixel,
    spacecraft_axes,
    to_tessvectors_azimuth,
)
from .pointing import _unit_vector as _unit_vector

# The aliased imports above (``X as X``) are names of the module before its split
# that other modules and tests still import from here, outside `__all__`.

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

#: Private names that moved with the split of this module into a package, and
#: names it only imported: old -> new home.
__getattr__ = moved_names(
    __name__,
    {
        "_angles": "lk_scatterlight.geometry.angles._angles",
        "_PIXEL_MM": "lk_scatterlight.geometry.pointing._PIXEL_MM",
        "_normalise": "lk_scatterlight.geometry.pointing._normalise",
        "_radec": "lk_scatterlight.geometry.pointing._radec",
        "_rotation": "lk_scatterlight.geometry.pointing._rotation",
        "_wcs_los": "lk_scatterlight.geometry.pointing._wcs_los",
        "CCDS": "lk_scatterlight.ccd.CCDS",
        "ScatterLightError": "lk_scatterlight.exceptions.ScatterLightError",
        "atomic_write": "lk_scatterlight.utils.atomic_write",
        "refuse_overwrite": "lk_scatterlight.utils.refuse_overwrite",
    },
)
