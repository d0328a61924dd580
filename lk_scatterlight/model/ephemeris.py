"""TESS's position from a model file's table (`TableEphemeris`), offline."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from ..ccd import BTJD_OFFSET
from ..exceptions import ScatterLightError

__all__ = ["TableEphemeris"]

log = logging.getLogger(__name__)


class TableEphemeris:
    """TESS's positions from a model file's table; the Earth and the Moon from astropy.

    Implements the interface of `lk_scatterlight.geometry.Ephemeris`.
    TESS's geocentric position is a cubic spline through the table (3-hour
    steps: within 15 km of JPL Horizons). The Earth (barycentric) and the
    Moon come from astropy's built-in ephemeris (offline), evaluated every
    `BODY_STEP` days over the times asked for and spline-interpolated (within
    a few km), which is 100 times faster than evaluating it at every cadence.

    Parameters
    ----------
    jd0 : float
        Julian date (TDB) of the first sample.
    step : float
        Sample step [d].
    xyz : array, shape (n, 3)
        TESS relative to the Earth's centre, ICRF equatorial [km].
    description : str
    """

    #: Step of the astropy evaluations of the Earth and the Moon [d].
    BODY_STEP = 0.25

    def __init__(
        self, jd0: float, step: float, xyz, description: str = "the model's TESS position table"
    ) -> None:
        from scipy.interpolate import CubicSpline

        xyz = np.asarray(xyz, dtype=float)
        self.jd0, self.step = float(jd0), float(step)
        self.coverage = (self.jd0, self.jd0 + self.step * (xyz.shape[0] - 1))
        self.description = (
            f"{description} (BTJD {self.coverage[0] - BTJD_OFFSET:.2f}.."
            f"{self.coverage[1] - BTJD_OFFSET:.2f})"
        )
        self._spline = CubicSpline(self.step * np.arange(xyz.shape[0]), xyz, axis=0)
        self._bodies_cache: tuple[tuple[float, float], Any, Any] | None = None

    def __repr__(self) -> str:
        return f"TableEphemeris({self.description})"

    def _check(self, jd) -> np.ndarray:
        jd = np.atleast_1d(np.asarray(jd, dtype=float))
        lo, hi = self.coverage
        if jd.size and (jd.min() < lo or jd.max() > hi):
            msg = (
                f"Times BTJD {jd.min() - 2457000.0:.4f}..{jd.max() - 2457000.0:.4f} are outside "
                f"{self.description}; pass ephemeris= (a JPL Horizons table of TESS covering "
                "them, or 'spice' for lkspacecraft's kernels)."
            )
            raise ScatterLightError(msg)
        return jd

    def _geocentric(self, jd) -> np.ndarray:
        return self._spline(self._check(jd) - self.jd0)

    def _bodies(self, jd: np.ndarray):
        """Splines of the Earth's barycentric and the Moon's geocentric positions [km]."""
        from scipy.interpolate import CubicSpline

        lo = np.floor(jd.min() / self.BODY_STEP) * self.BODY_STEP - 2 * self.BODY_STEP
        hi = np.ceil(jd.max() / self.BODY_STEP) * self.BODY_STEP + 2 * self.BODY_STEP
        cache = self._bodies_cache
        if cache is None or cache[0][0] > lo or cache[0][1] < hi:
            from ..geometry import _builtin_body

            grid = np.arange(lo, hi + self.BODY_STEP / 2, self.BODY_STEP)
            earth = _builtin_body("earth", grid, "builtin")
            moon = _builtin_body("moon", grid, "builtin") - earth
            cache = ((lo, hi), CubicSpline(grid, earth, axis=0), CubicSpline(grid, moon, axis=0))
            self._bodies_cache = cache
        return cache[1], cache[2]

    def spacecraft_position(self, jd_tdb) -> np.ndarray:
        """Barycentric position of TESS [km], shape (ntime, 3)."""
        jd = self._check(jd_tdb)
        earth, _ = self._bodies(jd)
        return self._geocentric(jd) + earth(jd)

    def body_vectors(self, jd_tdb) -> dict[str, np.ndarray]:
        """TESS-to-Earth and TESS-to-Moon vectors [km], each (ntime, 3)."""
        jd = self._check(jd_tdb)
        _, moon = self._bodies(jd)
        tess = self._geocentric(jd)
        return {"earth": -tess, "moon": moon(jd) - tess}
