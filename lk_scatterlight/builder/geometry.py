"""Earth and Moon geometry; moved to the core modules `lk_scatterlight.geometry` and
`lk_scatterlight.tessvectors`.

The learned model and the geometry-driven simulator need it as well as the
builder, and the core never imports the builder. Every public name is
re-exported here so existing imports keep working.
"""

from __future__ import annotations

from ..geometry import (
    BARYCENTRIC_REFERENCE_PIXEL,
    BODIES,
    FOCAL_PLANE_GEOMETRY,
    NOMINAL_CAMERA_TILT,
    R_EARTH_KM,
    R_MOON_KM,
    BodyGeometry,
    CCDPointing,
    Ephemeris,
    Geometry,
    HorizonsEphemeris,
    SpiceEphemeris,
    compute_geometry,
    cube_geometry,
    make_ephemeris,
    nominal_camera_frame,
    optical_axis_pixel,
    read_ephemerides,
    spacecraft_axes,
    spacecraft_time,
    to_tessvectors_azimuth,
)
from ..tessvectors import read_tessvectors, tessvectors_geometry, tessvectors_residuals

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
    "read_tessvectors",
    "tessvectors_geometry",
    "tessvectors_residuals",
]
