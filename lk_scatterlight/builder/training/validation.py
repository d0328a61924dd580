"""Leave-one-sector-out validation of the learned model on the light-curve sources."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ...model import (
    blend,
    fit_calibration,
    segment_ids,
)
from .fitting import fit_model, fit_network
from .samples import Samples


def calibrated_rms(time, observed, prediction) -> tuple[float, float]:
    """Residual of a prediction calibrated per orbit (scale and offset), as in the docs.

    Parameters
    ----------
    time, observed, prediction : array, shape (n,)
        BTJD [d], observed background and model [e-/s per pixel].

    Returns
    -------
    percent : float
        RMS of ``observed - (scale * prediction + offset)`` in % of the
        observed range (99th minus 1st percentile).
    relative : float
        The same RMS over the RMS of the calibrated scattered light above its
        minimum (the model's relative error).
    """
    observed = np.asarray(observed, dtype=float)
    cal = fit_calibration(prediction, observed, time, clip=np.inf)
    fitted = cal.apply(np.asarray(prediction, dtype=float), time)
    resid = observed - fitted.background
    rms = float(np.sqrt(np.mean(resid**2)))
    span = float(np.percentile(observed, 99) - np.percentile(observed, 1))
    signal = fitted.scattered - np.min(fitted.scattered)
    level = float(np.sqrt(np.mean(signal**2)))
    return 100.0 * rms / span, rms / level if level > 0 else np.inf


def _baseline_rms(time, observed, degree: int) -> float:
    """RMS of a per-orbit polynomial in time, % of the observed range."""
    seg = segment_ids(time)
    resid = np.empty_like(observed)
    for s in np.unique(seg):
        m = seg == s
        A = np.vander(time[m] - time[m].mean(), degree + 1)
        coef, *_ = np.linalg.lstsq(A, observed[m], rcond=None)
        resid[m] = observed[m] - A @ coef
    span = np.percentile(observed, 99) - np.percentile(observed, 1)
    return float(100.0 * np.sqrt(np.mean(resid**2)) / span)


def validate(
    samples: Samples,
    seed: int = 0,
    params: dict | None = None,
    log_target: bool = True,
    progress: bool = True,
    sectors: Sequence[int] | None = None,
    network: bool = True,
) -> list[dict]:
    """Leave-one-sector-out validation on the light-curve sources.

    For each sector, a model is trained on every other sector's samples and
    scored on that sector's light curves (`calibrated_rms`); the per-orbit
    quadratic and constant in time are scored beside it. ``sectors`` limits
    the sectors held out (default: every sector with a light curve);
    ``network`` adds the network part (`fit_network`) to the trees, as
    `train_model` does.

    Returns
    -------
    results : list of dict
        One per light curve: ``name``, ``sector``, ``camera``, ``ccd``,
        ``model_percent``, ``relative_error``, ``quadratic_percent``,
        ``constant_percent``.
    """
    from tqdm.auto import tqdm

    sector = samples.sector
    lc_groups = [k for k, s in enumerate(samples.sources) if s["kind"] == "lightcurve"]
    if sectors is None:
        sectors = sorted({samples.sources[k]["sector"] for k in lc_groups})
    results = []
    for held in tqdm(sectors, desc="leave-one-sector-out", unit="sector", disable=not progress):
        train = samples.subset(sector != held)
        trees = fit_model(train, seed, params, log_target, progress=False)
        net = fit_network(train, seed) if network else None
        for k in lc_groups:
            source = samples.sources[k]
            if source["sector"] != held:
                continue
            m = samples.group == k
            t, obs = samples.time[m], np.asarray(source["raw"], dtype=float)
            percent, relative = calibrated_rms(t, obs, blend(trees, net, samples.X[m]))
            results.append(
                {
                    "name": source["name"],
                    "sector": int(source["sector"]),
                    "camera": int(source["camera"]),
                    "ccd": int(source["ccd"]),
                    "model_percent": round(percent, 3),
                    "relative_error": round(relative, 4),
                    "quadratic_percent": round(_baseline_rms(t, obs, 2), 3),
                    "constant_percent": round(_baseline_rms(t, obs, 0), 3),
                }
            )
    return results
