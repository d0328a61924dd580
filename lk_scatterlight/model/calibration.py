"""Calibrating a prediction on an observed background: a scale and an offset per orbit."""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass

import numpy as np

from ..exceptions import ScatterLightError, ScatterLightWarning
from .features import ORBIT_GAP, segment_ids

__all__ = [
    "MIN_ORBIT",
    "Calibration",
    "CalibratedBackground",
    "fit_calibration",
    "calibrate",
    "background_pixels",
]

log = logging.getLogger(__name__)

#: Shortest stretch of time [d] the calibration fits a scale and an offset to; shorter
#: stretches between gaps join a neighbour.
MIN_ORBIT = 2.0


@dataclass
class Calibration:
    """Per-orbit scale and offset that map a model prediction onto an observed background.

    Attributes
    ----------
    scale, offset : ndarray, shape (nsegment,)
        ``background = scale * prediction + offset`` in each orbit [-, e-/s].
    covariance : ndarray, shape (nsegment, 2, 2)
        Covariance of (scale, offset) from the least-squares fit.
    rms : ndarray, shape (nsegment,)
        RMS of the fit residual [e-/s].
    start, stop : ndarray, shape (nsegment,)
        First and last fitted time of each orbit, BTJD [d].
    relative_error : float
        The model's own relative error, added in quadrature by `apply`.
    """

    scale: np.ndarray
    offset: np.ndarray
    covariance: np.ndarray
    rms: np.ndarray
    start: np.ndarray
    stop: np.ndarray
    relative_error: float

    def segment_of(self, time) -> np.ndarray:
        """Index of the orbit of each time: the one containing it, else the nearest."""
        time = np.asarray(time, dtype=float)
        distance = np.maximum(self.start[None, :] - time[:, None], 0) + np.maximum(
            time[:, None] - self.stop[None, :], 0
        )
        return np.argmin(distance, axis=1)

    def apply(self, prediction, time) -> CalibratedBackground:
        """The calibrated background of a prediction.

        Parameters
        ----------
        prediction : array, shape (ntime, ...)
            Model scattered light [e-/s per pixel].
        time : array, shape (ntime,)
            BTJD [d]; each time takes the scale and offset of its orbit.

        Returns
        -------
        result : `CalibratedBackground`
        """
        prediction = np.asarray(prediction, dtype=float)
        time = np.asarray(time, dtype=float).reshape(-1)
        nt = time.size
        if prediction.shape[:1] != (nt,):
            msg = f"prediction has shape {prediction.shape}; its first axis must be time ({nt})."
            raise ScatterLightError(msg)
        k = self.segment_of(time)
        extra = (1,) * (prediction.ndim - 1)

        def per_time(values):
            return values[k].reshape(nt, *extra)

        scattered = per_time(self.scale) * prediction
        fit_var = (
            per_time(self.covariance[:, 0, 0]) * prediction**2
            + 2 * per_time(self.covariance[:, 0, 1]) * prediction
            + per_time(self.covariance[:, 1, 1])
        )
        error = np.sqrt(np.clip(fit_var, 0, None) + (self.relative_error * scattered) ** 2)
        return CalibratedBackground(scattered + per_time(self.offset), error, scattered, self)


@dataclass
class CalibratedBackground:
    """A calibrated model background (`calibrate`, `Calibration.apply`).

    Attributes
    ----------
    background : ndarray
        ``scale * prediction + offset`` [e-/s per pixel].
    background_err : ndarray
        Its 1-sigma uncertainty: the fit's parameter uncertainty and the
        model's own error (``relative_error * scale * prediction``) in
        quadrature [e-/s per pixel].
    scattered : ndarray
        ``scale * prediction``, the scattered light alone (what the corrector
        subtracts; the offset is the static sky and faint sources) [e-/s].
    calibration : `Calibration`
    """

    background: np.ndarray
    background_err: np.ndarray
    scattered: np.ndarray
    calibration: Calibration


def fit_calibration(
    driver,
    observed,
    time,
    relative_error: float = 0.2,
    gap: float = ORBIT_GAP,
    clip: float = 4.0,
) -> Calibration:
    """Fit ``observed = scale * driver + offset`` by least squares in each orbit.

    Parameters
    ----------
    driver : array, shape (ntime,)
        Model scattered light [e-/s] (e.g. its mean over the background pixels).
    observed : array, shape (ntime,)
        Observed background [e-/s]; NaN cadences are ignored.
    time : array, shape (ntime,)
        BTJD [d]; orbits are split at gaps longer than ``gap`` [d]; a stretch
        shorter than `MIN_ORBIT` between gaps joins the neighbour across the
        shorter gap.
    relative_error : float
        The model's own relative error, kept for `Calibration.apply` and used
        by the clipping.
    gap : float
    clip : float
        Cadences more than ``clip`` sigmas off the fit (flares, asteroids,
        momentum dumps) are dropped; up to three passes. Sigma combines the
        residuals' robust scatter (MAD) with the model's own error,
        ``relative_error * scale * (driver - its minimum in the orbit)``, so
        that where the light is strong the model's expected misfit is not
        taken for outliers.

    Returns
    -------
    calibration : `Calibration`

    Raises
    ------
    ScatterLightError
        Shapes differ, or an orbit has fewer than 3 usable cadences.
    """
    driver = np.asarray(driver, dtype=float)
    observed = np.asarray(observed, dtype=float)
    time = np.asarray(time, dtype=float)
    if not driver.shape == observed.shape == time.shape or driver.ndim != 1:
        msg = (
            f"driver {driver.shape}, observed {observed.shape} and time {time.shape} must be "
            "1-D arrays of the same length."
        )
        raise ScatterLightError(msg)
    segment = _merge_short_segments(segment_ids(time, gap), time, MIN_ORBIT)
    ids = np.unique(segment[segment >= 0])
    if ids.size == 0:
        msg = "No finite time to calibrate on."
        raise ScatterLightError(msg)
    n = ids.size
    scale, offset, rms = np.zeros(n), np.zeros(n), np.zeros(n)
    covariance = np.zeros((n, 2, 2))
    start, stop = np.zeros(n), np.zeros(n)
    for k, s in enumerate(ids):
        use = (segment == s) & np.isfinite(observed) & np.isfinite(driver)
        start[k], stop[k] = time[segment == s].min(), time[segment == s].max()
        if use.sum() < 3:
            msg = (
                f"Orbit {k + 1} (BTJD {start[k]:.2f}..{stop[k]:.2f}) has {use.sum()} usable "
                "cadences; the calibration needs at least 3 per orbit."
            )
            raise ScatterLightError(msg)
        keep = use
        rise = np.where(use, driver - driver[use].min(), 0.0)  # the model's light in this orbit
        for _ in range(3):
            coef = _lstsq(driver[keep], observed[keep])[0]
            resid = observed - (coef[0] * driver + coef[1])
            mad = np.median(np.abs(resid[keep] - np.median(resid[keep])))
            # The model's own error grows with the light: a misfit there is expected, not an
            # outlier (clipping it dropped whole perigees and skewed the scale).
            sigma = np.hypot(max(1.4826 * mad, 1e-9), relative_error * abs(coef[0]) * rise)
            new = use & (np.abs(resid) <= clip * sigma)
            if new.sum() < 3 or np.array_equal(new, keep):
                break
            keep = new
        coef, cov, s2 = _lstsq(driver[keep], observed[keep])
        if coef[0] < 0:  # scattered light cannot be negative: the model misses this orbit
            warnings.warn(
                f"Orbit {k + 1} (BTJD {start[k]:.2f}..{stop[k]:.2f}): the observed background "
                f"falls where the model rises (fitted scale {coef[0]:.3g}); the model does not "
                "describe this orbit, so its scale is set to 0 (nothing subtracted).",
                ScatterLightWarning,
                stacklevel=2,
            )
            coef, cov, s2 = _lstsq(np.zeros(keep.sum()), observed[keep])
        scale[k], offset[k] = coef
        covariance[k], rms[k] = cov, np.sqrt(s2)
    return Calibration(scale, offset, covariance, rms, start, stop, float(relative_error))


def _merge_short_segments(segment: np.ndarray, time: np.ndarray, min_span: float) -> np.ndarray:
    """Join every segment shorter than ``min_span`` [d] to a neighbour, renumbered 0, 1, ...

    A stretch of a few hours between two data gaps (a mid-orbit anomaly, dropped
    frames) holds too few cadences for a scale and an offset of its own: it joins
    the neighbour across the shorter gap, the shortest segment first.
    """
    segment = segment.copy()
    while True:
        ids = np.unique(segment[segment >= 0])
        if ids.size < 2:
            break
        first = np.array([time[segment == s].min() for s in ids])
        last = np.array([time[segment == s].max() for s in ids])
        span = last - first
        k = int(np.argmin(span))
        if span[k] >= min_span:
            break
        before = first[k] - last[k - 1] if k > 0 else np.inf
        after = first[k + 1] - last[k] if k + 1 < ids.size else np.inf
        segment[segment == ids[k]] = ids[k - 1] if before <= after else ids[k + 1]
    keep = segment >= 0
    segment[keep] = np.unique(segment[keep], return_inverse=True)[1]
    return segment


def _lstsq(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """Straight-line fit ``y = a x + b``: coefficients, their covariance, residual variance."""
    A = np.stack([x, np.ones_like(x)], axis=1)
    coef, *_ = np.linalg.lstsq(A, y, rcond=None)
    resid = y - A @ coef
    s2 = float(resid @ resid) / max(y.size - 2, 1)
    normal = A.T @ A
    if np.linalg.cond(normal) > 1e12:  # a flat prediction: only the offset is determined
        coef = np.array([0.0, float(np.mean(y))])
        resid = y - coef[1]
        s2 = float(resid @ resid) / max(y.size - 1, 1)
        return coef, np.diag([0.0, s2 / y.size]), s2
    return coef, s2 * np.linalg.inv(normal), s2


def calibrate(
    prediction, observed, time, relative_error: float = 0.2, gap: float = ORBIT_GAP
) -> CalibratedBackground:
    """Fit a prediction to an observed background (scale and offset per orbit) and apply it.

    Parameters
    ----------
    prediction : array, shape (ntime, ...)
        Model scattered light at the pixels of interest [e-/s per pixel]; the
        fit uses its mean over the pixels at each time.
    observed : array, shape (ntime,)
        Observed background per pixel [e-/s], e.g. the median of a TPF's
        background pixels.
    time : array, shape (ntime,)
        BTJD [d].
    relative_error : float
        The model's own relative error (`ScatterLightModel.relative_error`).
    gap : float
        Orbits are split at gaps longer than this [d].

    Returns
    -------
    result : `CalibratedBackground`
        Calibrated background and uncertainty, shaped like ``prediction``.
    """
    prediction = np.asarray(prediction, dtype=float)
    nt = np.size(time)
    driver = prediction.reshape(nt, -1).mean(axis=1) if prediction.size else prediction
    calibration = fit_calibration(driver, observed, time, relative_error, gap)
    return calibration.apply(prediction, time)


def background_pixels(flux, fraction: float = 1 / 3) -> np.ndarray:
    """The dimmest pixels of a TPF, as a background mask.

    Parameters
    ----------
    flux : array, shape (ntime, nrow, ncol)
    fraction : float
        Share of the pixels kept, by median flux (at least one).

    Returns
    -------
    mask : ndarray of bool, shape (nrow, ncol)
    """
    flux = np.asarray(flux, dtype=float)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN pixels
        median = np.nanmedian(flux, axis=0)
    finite = np.isfinite(median)
    if not finite.any():
        msg = "The TPF has no finite pixel; cannot choose background pixels."
        raise ScatterLightError(msg)
    n = max(1, int(round(fraction * finite.sum())))
    limit = np.sort(median[finite])[n - 1]
    return finite & (median <= limit)
