"""The model on a target pixel file: its position, and its calibration (`ModelBackground`).

`tpf_position` reads the sector, camera and CCD of a target pixel file;
`ModelBackground` calibrates the model on the file's own background pixels.
"""

from __future__ import annotations

import logging
import warnings

import numpy as np

from ..ccd import check_camera_ccd, check_sector
from ..exceptions import ScatterLightError, ScatterLightWarning
from .calibration import CalibratedBackground, background_pixels, fit_calibration
from .core import ScatterLightModel

__all__ = ["sector_from_time", "tpf_position", "ModelBackground"]

log = logging.getLogger(__name__)


def sector_from_time(time) -> int:
    """The sector whose pointing (tesswcs) covers the median of ``time`` [BTJD].

    Raises
    ------
    ScatterLightError
        tesswcs is missing or no sector covers the time.
    """
    try:
        import tesswcs
    except ImportError as err:
        msg = "Telling the sector from the time needs tesswcs: pip install tesswcs."
        raise ScatterLightError(msg) from err
    t = float(np.nanmedian(np.asarray(time, dtype=float))) + 2457000.0
    table = tesswcs.pointings
    inside = (np.asarray(table["Start"]) <= t) & (t < np.asarray(table["End"]))
    sectors = np.asarray(table["Sector"])[inside]
    sectors = sectors[sectors <= 1000]  # drop engineering entries
    if sectors.size != 1:
        msg = f"No single TESS sector covers BTJD {t - 2457000.0:.2f}; set the SECTOR keyword."
        raise ScatterLightError(msg)
    return int(sectors[0])


def tpf_position(tpf) -> tuple[int, int, int]:
    """Sector, camera and CCD of a TPF.

    A missing SECTOR keyword (early TESSCut files) is taken from the times,
    with a `ScatterLightWarning`.

    Raises
    ------
    ScatterLightError
        No CAMERA or CCD keyword (the pointing cannot be known), or no sector.
    """
    header = tpf.get_header()
    camera, ccd = header.get("CAMERA"), header.get("CCD")
    if not isinstance(camera, int | np.integer) or not isinstance(ccd, int | np.integer):
        msg = (
            f"The TPF has no CAMERA/CCD keywords (CAMERA={camera!r}, CCD={ccd!r}), so its "
            "pointing is unknown; the model needs the sector, camera and CCD."
        )
        raise ScatterLightError(msg)
    sector = header.get("SECTOR")
    if not isinstance(sector, int | np.integer):
        sector = sector_from_time(tpf.time.value)
        warnings.warn(
            f"The TPF has no SECTOR keyword; its times are in sector {sector}.",
            ScatterLightWarning,
            stacklevel=3,
        )
    camera, ccd = check_camera_ccd(camera, ccd)
    return check_sector(sector), camera, ccd


def _position_shift(tpf, pointing) -> tuple[float, float]:
    """What to add to ``tpf.row``/``tpf.column`` to get the TPF's true CCD pixels.

    Zero when the TPF's position keywords lie in the science area. Otherwise
    (early TESSCut files have rows like -856) the target's RA_OBJ/DEC_OBJ is
    placed on the CCD through the sector's WCS, with a `ScatterLightWarning`.

    Raises
    ------
    ScatterLightError
        Neither valid position keywords nor target coordinates on the CCD.
    """
    from ..ccd import SCIENCE_COLUMNS, SCIENCE_ROWS

    nrow, ncol = tpf.shape[1:]
    row, column = tpf.row, tpf.column
    inside = (
        SCIENCE_ROWS[0] <= row
        and row + nrow - 1 <= SCIENCE_ROWS[1]
        and SCIENCE_COLUMNS[0] <= column
        and column + ncol - 1 <= SCIENCE_COLUMNS[1]
    )
    if inside:
        return 0.0, 0.0
    ra, dec = getattr(tpf, "ra", None), getattr(tpf, "dec", None)
    try:
        ra, dec = float(ra), float(dec)
    except (TypeError, ValueError):
        ra = dec = np.nan
    if not (np.isfinite(ra) and np.isfinite(dec)):
        msg = (
            f"The TPF's pixel position (row {row}, column {column}) is outside the CCD's science "
            "area and it has no target coordinates (RA_OBJ/DEC_OBJ): its pixels cannot be "
            "placed on the CCD. Fix the 1CRV4P/2CRV4P keywords."
        )
        raise ScatterLightError(msg)
    ra_r, dec_r = np.deg2rad(ra), np.deg2rad(dec)
    vector = np.array([np.cos(dec_r) * np.cos(ra_r), np.cos(dec_r) * np.sin(ra_r), np.sin(dec_r)])
    centre_row, centre_column = pointing.pixel(vector)
    if not (
        SCIENCE_ROWS[0] - 0.5 <= centre_row <= SCIENCE_ROWS[1] + 0.5
        and SCIENCE_COLUMNS[0] - 0.5 <= centre_column <= SCIENCE_COLUMNS[1] + 0.5
    ):
        msg = (
            f"The TPF's position keywords (row {row}, column {column}) are outside the science "
            f"area, and its target (RA {ra:.4f}, Dec {dec:.4f}) falls at row "
            f"{centre_row:.0f}, column {centre_column:.0f}, off sector {pointing.sector} "
            f"camera {pointing.camera} CCD {pointing.ccd}."
        )
        raise ScatterLightError(msg)
    shift = (
        round(centre_row - (nrow - 1) / 2) - row,
        round(centre_column - (ncol - 1) / 2) - column,
    )
    warnings.warn(
        f"The TPF's position keywords (row {row}, column {column}) are outside the science "
        f"area; placing it by its target's RA/Dec at row {row + shift[0]}, column "
        f"{column + shift[1]}.",
        ScatterLightWarning,
        stacklevel=4,
    )
    return float(shift[0]), float(shift[1])


class ModelBackground:
    """A model calibrated on one TPF, with the evaluation interface the corrector uses.

    Fits ``scale * prediction + offset`` per orbit to the median of the TPF's
    background pixels (`fit_calibration`) and evaluates ``scale *
    prediction`` (the scattered light; the offset, static sky and faint
    sources, is left in) with its uncertainty, like
    `~lk_scatterlight.ScatterLightCube.evaluate`.

    Parameters
    ----------
    model : `ScatterLightModel`, str or path-like
    tpf : `lightkurve.TessTargetPixelFile`
        Whose FLUX still contains the background (a cutout).
    background_mask : array of bool, shape (nrow, ncol), optional
        Default `background_pixels` (the dimmest third by median flux).
    ephemeris : optional
        See `ScatterLightModel.predict`.

    Raises
    ------
    ScatterLightError
        The TPF lacks camera/CCD, its times are outside the ephemeris, or an
        orbit has too few cadences.
    """

    pixel_bin = 1

    def __init__(self, model, tpf, background_mask=None, ephemeris=None) -> None:
        self.model = ScatterLightModel.load(model)
        self.sector, self.camera, self.ccd = tpf_position(tpf)
        self.ephemeris = ephemeris
        nrow, ncol = tpf.shape[1:]
        self.shift = _position_shift(tpf, self.model.pointing(self.sector, self.camera, self.ccd))
        time = np.asarray(tpf.time.value, dtype=float)
        flux = np.asarray(tpf.flux.value, dtype=float)
        good = np.isfinite(time)
        time, flux = time[good], flux[good]
        if background_mask is None:
            mask = background_pixels(flux)
        else:
            mask = np.asarray(background_mask, dtype=bool)
        if mask.shape != (nrow, ncol) or not mask.any():
            msg = f"background_mask must be a ({nrow}, {ncol}) boolean array with a True pixel."
            raise ScatterLightError(msg)
        rows, cols = np.nonzero(mask)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            observed = np.nanmedian(flux[:, mask], axis=1)
        row0, column0 = tpf.row + self.shift[0], tpf.column + self.shift[1]
        driver = self._predict(time, row0 + rows, column0 + cols).mean(axis=1)
        self.background_mask = mask
        self.btjd = time
        self.calibration = fit_calibration(driver, observed, time, self.model.relative_error)

    def __repr__(self) -> str:
        return (
            f"ModelBackground({self.model!r} calibrated on sector {self.sector} camera "
            f"{self.camera} CCD {self.ccd})"
        )

    def _predict(self, time, row, column) -> np.ndarray:
        return self.model.predict(
            self.sector, self.camera, self.ccd, row, column, time, self.ephemeris
        )

    def _result(self, time, row, column) -> tuple[np.ndarray, CalibratedBackground]:
        time = np.asarray(getattr(time, "value", time), dtype=float).reshape(-1)
        # 1-based CCD pixels: the corrector already placed a TPF whose position
        # keywords are off the CCD (``shift`` only serves the calibration's fit).
        row = np.asarray(row, dtype=float).reshape(-1)
        column = np.asarray(column, dtype=float).reshape(-1)
        pred = self._predict(time, row[:, None], column[None, :])
        return time, self.calibration.apply(pred, time)

    def evaluate(self, time, row, column, bounds: str = "nan"):
        """Calibrated scattered light on a grid of times, rows and columns.

        Parameters
        ----------
        time : array of float or `~astropy.time.Time`, shape (ntime,)
            BTJD [d].
        row, column : array of float, shapes (nrow,), (ncol,)
        bounds : str
            Accepted for compatibility; the model covers every time its
            ephemeris does (others raise).

        Returns
        -------
        evaluation : `~lk_scatterlight.cube.CubeEvaluation`
        """
        from astropy import units as u

        from ..cube import CubeEvaluation

        time, result = self._result(time, row, column)
        unit = u.electron / u.s
        return CubeEvaluation(
            result.scattered * unit, result.background_err * unit, np.ones(time.size, bool)
        )

    def evaluate_sum(self, time, row, column, mask=None, bounds: str = "nan"):
        """The calibrated scattered light summed over an aperture [e-/s].

        The model error is fully correlated between neighbouring pixels, so
        the pixel uncertainties are added linearly (conservative).

        Returns
        -------
        evaluation : `~lk_scatterlight.cube.CubeEvaluation`
            ``flux`` and ``flux_err`` of shape (ntime,).
        """
        from astropy import units as u

        from ..cube import CubeEvaluation

        time, result = self._result(time, row, column)
        weight = np.ones(result.scattered.shape[1:]) if mask is None else np.asarray(mask, float)
        unit = u.electron / u.s
        return CubeEvaluation(
            np.einsum("tij,ij->t", result.scattered, weight) * unit,
            np.einsum("tij,ij->t", result.background_err, weight) * unit,
            np.ones(time.size, bool),
        )
