"""The analytic scattered-light field of one CCD, its sector times, and cubes sampled from it."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..ccd import N_SCIENCE, SCIENCE_COLUMNS, SCIENCE_ROWS, ffi_cadence_seconds
from ..cube import ScatterLightCube

__all__ = ["ORBIT_DAYS", "ScatteredLightField", "sector_times", "make_cube"]

ORBIT_DAYS = 13.7
#: Approximate start of sector 1 [BTJD] and mean sector length [d], for synthetic times.
_SECTOR1_START, _SECTOR_DAYS = 1325.30, 27.4


def sector_times(sector: int, cadence: float | None = None, gap_days: float = 1.0):
    """Synthetic FFI mid-times of a sector with an orbit gap in the middle.

    Parameters
    ----------
    sector : int
    cadence : float, optional
        Cadence [s]; default the FFI cadence of the sector's era.
    gap_days : float
        Length of the orbit gap (downlink) [d].

    Returns
    -------
    time : ndarray, BTJD [d]
        Frame mid-times; frames abut (``TSTOP`` of one is ``TSTART`` of the next).
    """
    step = (cadence or ffi_cadence_seconds(sector)) / 86400.0
    start = _SECTOR1_START + (sector - 1) * _SECTOR_DAYS
    t = start + step * (np.arange(int(_SECTOR_DAYS / step)) + 0.5)
    middle = start + _SECTOR_DAYS / 2
    return t[np.abs(t - middle) > gap_days / 2]


@dataclass
class ScatteredLightField:
    """Analytic scattered light of one CCD over a sector [e-/s per pixel].

    Parameters
    ----------
    t0 : float
        Perigee time [BTJD] at the start of the first orbit.
    earth_peak : float
        Earth-glow amplitude at perigee [e-/s].
    moon_peak : float
        Moon-glow amplitude [e-/s].
    structured : bool
        Add a narrow glint ridge and a sharp baffle shadow edge.
    seed : int
        Varies the geometry (directions, Moon track) deterministically.
    """

    t0: float = _SECTOR1_START - 0.2
    earth_peak: float = 300.0
    moon_peak: float = 40.0
    structured: bool = False
    seed: int = 0

    def __post_init__(self):
        rng = np.random.default_rng(self.seed)
        self._angle0 = rng.uniform(0, 2 * np.pi)
        self._moon_start = rng.uniform([200, 200], [1800, 1800])
        self._moon_velocity = rng.uniform(-120, 120, size=2)  # [px/d]

    def earth_amplitude(self, time: np.ndarray) -> np.ndarray:
        """Earth glow amplitude [e-/s]: rises towards perigee, decays after it, daily ripple."""
        phase = np.mod(np.asarray(time) - self.t0, ORBIT_DAYS)
        decay = np.exp(-phase / 1.2) + np.exp(-(ORBIT_DAYS - phase) / 1.5)
        ripple = 1 + 0.15 * np.sin(2 * np.pi * (np.asarray(time) - self.t0))
        return self.earth_peak * decay * ripple

    def __call__(self, time, row, column) -> np.ndarray:
        """Evaluate on a grid.

        Parameters
        ----------
        time : array of float, shape (nt,)
            BTJD [d].
        row, column : array of float, shapes (nrow,), (ncol,)
            1-based CCD pixel coordinates.

        Returns
        -------
        flux : ndarray, shape (nt, nrow, ncol) [e-/s per pixel]
        """
        t = np.asarray(time, dtype=float)[:, None, None]
        r = (np.asarray(row, dtype=float)[None, :, None] - 1024.5) / 1024
        c = (np.asarray(column, dtype=float)[None, None, :] - 1068.5) / 1024
        phase = np.mod(t - self.t0, ORBIT_DAYS) / ORBIT_DAYS
        # Earth: a glow from a slowly turning direction whose front sweeps the CCD.
        # Periodic in the orbit phase, so the field is continuous through perigee.
        sweep = 0.5 - 0.5 * np.cos(2 * np.pi * phase)
        angle = self._angle0 + 0.8 * sweep
        u = r * np.cos(angle) + c * np.sin(angle)
        front = -1.2 + 2.8 * sweep
        glow = np.exp(0.9 * u) / (1 + np.exp((u - front) / 0.35))
        earth = self.earth_amplitude(t) * (0.35 + glow) * (1 + 0.1 * r - 0.05 * c**2)
        # Moon: a broad blob drifting across the CCD.
        days = t - self.t0
        mr = (self._moon_start[0] + self._moon_velocity[0] * days - 1024.5) / 1024
        mc = (self._moon_start[1] + self._moon_velocity[1] * days - 1068.5) / 1024
        moon_amp = self.moon_peak * (0.6 + 0.4 * np.cos(2 * np.pi * days / 27.3))
        moon = moon_amp * np.exp(-((r - mr) ** 2 + (c - mc) ** 2) / (2 * 0.6**2))
        flux = earth + moon
        if self.structured:
            rr, cc = r * 1024, c * 1024  # pixels from the CCD centre
            ridge_pos = 0.6 * rr + 0.8 * cc - 300 + 400 * sweep
            ridge = 0.25 * np.exp(-0.5 * (ridge_pos / (12 / 2.355)) ** 2)
            shadow = 0.85 + 0.15 / (1 + np.exp(-(cc - 250) / (6 / 4.4)))
            flux = flux * shadow + self.earth_amplitude(t) * ridge
        return flux


def make_cube(
    field: ScatteredLightField,
    sector: int = 1,
    camera: int = 1,
    ccd: int = 1,
    pixel_bin: int = 64,
    time: np.ndarray | None = None,
    noise: float = 0.05,
    seed: int = 0,
) -> ScatterLightCube:
    """Sample a field on a bin grid covering the science area, one plane per FFI.

    Parameters
    ----------
    field : `ScatteredLightField`
    sector, camera, ccd : int
    pixel_bin : int
        Bin size [px]; must divide 2048.
    time : array of float, optional
        Plane centres [BTJD]; default `sector_times` of the sector.
    noise : float
        Gaussian noise added to every bin, also stored as ``flux_err`` [e-/s].
    seed : int

    Returns
    -------
    cube : `ScatterLightCube`
    """
    if N_SCIENCE % pixel_bin:
        raise ValueError(f"pixel_bin must divide {N_SCIENCE}, got {pixel_bin}.")
    time = sector_times(sector) if time is None else np.asarray(time, dtype=float)
    row = SCIENCE_ROWS[0] + pixel_bin * np.arange(N_SCIENCE // pixel_bin) + (pixel_bin - 1) / 2
    column = (
        SCIENCE_COLUMNS[0] + pixel_bin * np.arange(N_SCIENCE // pixel_bin) + (pixel_bin - 1) / 2
    )
    flux = field(time, row, column)
    rng = np.random.default_rng(seed)
    flux += rng.normal(0, noise, flux.shape)
    half = np.median(np.diff(time)) / 2
    return ScatterLightCube.from_arrays(
        sector,
        camera,
        ccd,
        time,
        row,
        column,
        flux,
        np.full(flux.shape, noise),
        time_start=time - half,
        time_stop=time + half,
        npix=np.full((row.size, column.size), pixel_bin**2),
        meta={"creator": "lk_scatterlight.simulate", "pixel_bin": pixel_bin, "seed": seed},
    )
