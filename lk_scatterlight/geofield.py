"""Simulated scattered light driven by the real Earth and Moon geometry.

`GeometryField` is a drop-in for `lk_scatterlight.simulate.ScatteredLightField`
(``field(time, row, column) -> (ntime, nrow, ncol)`` [e-/s per pixel], plus
``earth_amplitude``, ``earth_peak``, ``seed`` and ``structured``), so
`~lk_scatterlight.simulate.FFISimulator`, `~lk_scatterlight.simulate.make_cube`
and `~lk_scatterlight.simulate.make_tpf` take it as they are. Each pixel's
light is a fixed function of its own geometry at that time, from
`lk_scatterlight.geometry` (the sector's WCS and a real ephemeris):

* **Earth**: ``earth_peak * s_k * (20 / d_E)**2 * L(theta_E; 55 deg, 4 deg)``,
  with ``theta_E`` the angle between the pixel's line of sight and the Earth
  [deg], ``d_E`` the Earth's distance [Earth radii], ``L(x; c, w) = 1 / (1 +
  exp((x - c) / w))`` and ``s_k`` the brightness of orbit ``k`` (the Earth's
  changing albedo and phase: one factor per orbit, drawn with ``seed`` from
  ``1 +- orbit_scatter``; orbit 0 before the sector's mid-sector downlink,
  orbit 1 after it);
* **Moon**: ``moon_peak * (60 / d_M)**2 * L(theta_M; 20 deg, 3 deg)``;
* **fine structure** (``structured=True``): a glint ridge, the Earth term's
  scale times ``0.25 * exp(-(theta_E - 62 deg)**2 / (2 sigma**2))`` with
  ``sigma = 0.03 deg`` (12 pixels FWHM), which sweeps over the CCD as the
  Earth moves.

The field itself is noiseless: the simulators add the noise, and the field is
their exact truth. The angles are computed on a grid of nodes at most
``node_step`` pixels apart and interpolated bilinearly (as direction cosines,
so azimuths do not wrap) to the requested pixels; the brightness laws are
then applied at every pixel. Interpolating over 16 pixels changes the angles
by less than 1e-4 deg (tested), a hundredth of the ridge width.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

__all__ = ["GeometryField"]

log = logging.getLogger(__name__)

#: Distances [Earth radii] at which the Earth and the Moon terms equal their peaks.
_EARTH_REFERENCE, _MOON_REFERENCE = 20.0, 60.0
#: Centre and width [deg] of the Earth and Moon angle laws, and of the ridge.
_EARTH_LAW, _MOON_LAW = (55.0, 4.0), (20.0, 3.0)
_RIDGE_ANGLE, _RIDGE_SIGMA, _RIDGE_AMPLITUDE = 62.0, 0.03, 0.25


def _logistic(x: np.ndarray, centre: float, width: float) -> np.ndarray:
    """``1 / (1 + exp((x - centre) / width))``, without overflow warnings."""
    return 0.5 * (1.0 - np.tanh((x - centre) / (2.0 * width)))


def _interpolation_matrix(nodes: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Linear interpolation weights from ``nodes`` to ``x``, shape (x.size, nodes.size)."""
    weights = np.zeros((x.size, nodes.size))
    if nodes.size == 1:
        weights[:, 0] = 1.0
        return weights
    i = np.clip(np.searchsorted(nodes, x, side="right") - 1, 0, nodes.size - 2)
    w = (x - nodes[i]) / (nodes[i + 1] - nodes[i])
    rows = np.arange(x.size)
    weights[rows, i] = 1.0 - w
    weights[rows, i + 1] = w
    return weights


def _nodes(values: np.ndarray, step: float) -> np.ndarray:
    """Evenly spaced nodes spanning ``values``, at most ``step`` apart."""
    lo, hi = float(values.min()), float(values.max())
    if hi == lo:
        return np.array([lo])
    return np.linspace(lo, hi, max(2, int(np.ceil((hi - lo) / step)) + 1))


@dataclass
class GeometryField:
    """Scattered light of one CCD as a function of each pixel's Earth and Moon geometry.

    Parameters
    ----------
    sector, camera, ccd : int
    ephemeris : `~lk_scatterlight.geometry.Ephemeris`
        Must cover the times the field is evaluated at.
    pointing : `~lk_scatterlight.geometry.CCDPointing`, optional
        Default ``CCDPointing.from_sector(sector, camera, ccd)`` (tesswcs).
    earth_peak : float
        Earth term at 20 Earth radii, looking at the Earth [e-/s].
    moon_peak : float
        Moon term at 60 Earth radii, looking at the Moon [e-/s].
    orbit_scatter : float
        The orbit brightness factors are drawn uniformly from
        ``1 +- orbit_scatter``.
    structured : bool
        Add the glint ridge.
    seed : int
        Draws the orbit factors.
    node_step : float
        Largest spacing [pixels] of the nodes where the geometry is computed.

    Attributes
    ----------
    orbit_scale : ndarray, shape (2,)
        The brightness factor of each orbit.

    Examples
    --------
    >>> from lk_scatterlight import simulate
    >>> from lk_scatterlight.geometry import HorizonsEphemeris
    >>> from lk_scatterlight.geofield import GeometryField
    >>> eph = HorizonsEphemeris.read("horizons_tess.csv")  # doctest: +SKIP
    >>> field = GeometryField(1, 4, 3, eph, structured=True)  # doctest: +SKIP
    >>> sim = simulate.FFISimulator(field, sector=1, camera=4, ccd=3)  # doctest: +SKIP
    """

    sector: int
    camera: int
    ccd: int
    ephemeris: object
    pointing: object = None
    earth_peak: float = 300.0
    moon_peak: float = 40.0
    orbit_scatter: float = 0.2
    structured: bool = False
    seed: int = 0
    node_step: float = 16.0
    orbit_scale: np.ndarray = field(init=False, repr=False)

    def __post_init__(self):
        from .geometry import CCDPointing
        from .simulate import sector_times

        if self.pointing is None:
            self.pointing = CCDPointing.from_sector(self.sector, self.camera, self.ccd)
        rng = np.random.default_rng(self.seed)
        self.orbit_scale = rng.uniform(1 - self.orbit_scatter, 1 + self.orbit_scatter, 2)
        times = sector_times(self.sector)
        gap = int(np.argmax(np.diff(times)))
        self._split = 0.5 * (times[gap] + times[gap + 1])  # middle of the downlink gap
        self._grid_key = None

    def orbit(self, time) -> np.ndarray:
        """Orbit index (0 or 1) of BTJD times."""
        return (np.asarray(time, dtype=float) >= self._split).astype(int)

    # -------------------------------------------------------------- geometry
    def _body_units(self, time: np.ndarray) -> tuple[dict, dict]:
        """Unit vectors and distances [Earth radii] of the bodies at BTJD times."""
        from .geometry import BTJD_OFFSET, R_EARTH_KM, spacecraft_time

        tjd = spacecraft_time(time, self.pointing, self.ephemeris)
        vectors = self.ephemeris.body_vectors(tjd + BTJD_OFFSET)
        units, distances = {}, {}
        for body, v in vectors.items():
            d = np.linalg.norm(v, axis=1)
            units[body], distances[body] = v / d[:, None], d / R_EARTH_KM
        return units, distances

    def _grid(self, row: np.ndarray, column: np.ndarray):
        """Node frames and interpolation matrices for a pixel grid (cached for the last grid)."""
        key = (row.tobytes(), column.tobytes())
        if self._grid_key != key:
            nodes_r, nodes_c = _nodes(row, self.node_step), _nodes(column, self.node_step)
            rr, cc = np.meshgrid(nodes_r, nodes_c, indexing="ij")
            frame = np.stack(self.pointing.frame(rr, cc))  # (3, nr, nc, 3): los, e_x, e_y
            self._cache = (
                frame,
                _interpolation_matrix(nodes_r, row),
                _interpolation_matrix(nodes_c, column),
            )
            self._grid_key = key
        return self._cache

    def angles(self, time, row, column) -> dict[str, np.ndarray]:
        """Earth and Moon angle and azimuth [deg] of every pixel, interpolated from the nodes.

        Takes the arguments of `__call__`; returns a dict of arrays of shape
        (ntime, nrow, ncol): ``earth_angle``, ``earth_azimuth``, ``moon_angle``,
        ``moon_azimuth`` (definitions of `lk_scatterlight.geometry`).
        """
        out, _ = self._geometry(time, row, column)
        return out

    def _geometry(self, time, row, column):
        time = np.atleast_1d(np.asarray(time, dtype=float))
        row = np.atleast_1d(np.asarray(row, dtype=float))
        column = np.atleast_1d(np.asarray(column, dtype=float))
        frame, wr, wc = self._grid(row, column)
        units, distances = self._body_units(time)
        out = {}
        for body, u in units.items():
            # Direction cosines along the line of sight, e_x and e_y at the nodes, to pixels.
            z, x, y = (
                wr @ np.einsum("tk,ijk->tij", u, f) @ wc.T for f in frame
            )  # each (ntime, nrow, ncol)
            out[f"{body}_angle"] = np.rad2deg(np.arctan2(np.hypot(x, y), z))
            out[f"{body}_azimuth"] = np.rad2deg(np.arctan2(y, x)) % 360.0
        return out, distances

    # -------------------------------------------------------------- brightness
    def _earth_scale(self, time: np.ndarray, distance: np.ndarray) -> np.ndarray:
        return (
            self.earth_peak
            * self.orbit_scale[self.orbit(time)]
            * (_EARTH_REFERENCE / distance) ** 2
        )

    def earth_amplitude(self, time) -> np.ndarray:
        """The Earth term at the camera boresight [e-/s], shape (ntime,).

        Parameters
        ----------
        time : array of float
            BTJD [d].
        """
        time = np.atleast_1d(np.asarray(time, dtype=float))
        units, distances = self._body_units(time)
        angle = np.rad2deg(np.arccos(np.clip(units["earth"] @ self.pointing.boresight, -1, 1)))
        return self._earth_scale(time, distances["earth"]) * _logistic(angle, *_EARTH_LAW)

    def __call__(self, time, row, column) -> np.ndarray:
        """The scattered light [e-/s per pixel] on the grid ``row`` x ``column`` at ``time``.

        ``time``: BTJD [d], shape (ntime,); ``row``, ``column``: 1-based CCD
        pixel coordinates, shapes (nrow,) and (ncol,). Returns an array of
        shape (ntime, nrow, ncol), as `~lk_scatterlight.simulate.ScatteredLightField`.
        """
        time = np.atleast_1d(np.asarray(time, dtype=float))
        geo, distances = self._geometry(time, row, column)
        scale = self._earth_scale(time, distances["earth"])[:, None, None]
        earth = geo["earth_angle"]
        flux = scale * _logistic(earth, *_EARTH_LAW)
        moon_scale = self.moon_peak * (_MOON_REFERENCE / distances["moon"]) ** 2
        flux += moon_scale[:, None, None] * _logistic(geo["moon_angle"], *_MOON_LAW)
        if self.structured:
            ridge = np.exp(-0.5 * ((earth - _RIDGE_ANGLE) / _RIDGE_SIGMA) ** 2)
            flux += scale * _RIDGE_AMPLITUDE * ridge
        return flux
