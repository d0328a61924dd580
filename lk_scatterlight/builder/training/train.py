"""``lk-scatterlight train``: samples, fit, optional validation, one model."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from ...geometry import (
    Ephemeris,
    HorizonsEphemeris,
)
from ...model import (
    TARGET_OFFSET,
    ScatterLightModel,
)
from .fitting import DEFAULT_PARAMS, NETWORK_MEMBERS, NETWORK_PARAMS, fit_model, fit_network
from .samples import EPHEMERIS_STEP_HOURS, ephemeris_table, feature_ranges, load_samples
from .validation import validate


def train_model(
    paths: Sequence[str | os.PathLike],
    ephemeris: Ephemeris | None = None,
    seed: int = 0,
    bin_minutes: float = 30.0,
    max_dataset_samples: int = 50_000,
    params: dict | None = None,
    run_validation: bool = False,
    embed_ephemeris: bool = True,
    progress: bool = True,
    network: bool = True,
) -> ScatterLightModel:
    """Train a `~lk_scatterlight.model.ScatterLightModel` (``lk-scatterlight train``).

    Parameters
    ----------
    paths : sequence of str or path-like
        Cube training sets (``.npz``) and SPOC light curves (``.fits``), or folders.
    ephemeris : `~lk_scatterlight.geometry.Ephemeris`, optional
        Needed for light curves; a `HorizonsEphemeris` is also embedded in the
        model (`ephemeris_table`) unless ``embed_ephemeris`` is False.
    seed : int
        Seed of the sample draws and of the fit: same data and seed give the
        same model file.
    bin_minutes : float
    max_dataset_samples : int
    params : dict, optional
        Overrides of `DEFAULT_PARAMS`.
    run_validation : bool
        Run the leave-one-sector-out validation (one extra fit per sector)
        and record it in the model (``meta["validation"]``).
    embed_ephemeris : bool
    progress : bool
    network : bool
        Fit the network part too (`fit_network`), averaged with the trees.

    Returns
    -------
    model : `~lk_scatterlight.model.ScatterLightModel`
    """
    import datetime
    import time as _time

    from ... import __version__

    start = _time.perf_counter()
    samples = load_samples(
        paths, ephemeris, bin_minutes, max_dataset_samples, seed=seed, progress=progress
    )
    trees = fit_model(samples, seed, params, progress=progress)
    net = fit_network(samples, seed) if network else None
    fit_seconds = _time.perf_counter() - start
    meta: dict = {
        "creator": "lk_scatterlight",
        "version": __version__,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "library": _library_version(),
        "params": dict(DEFAULT_PARAMS, **(params or {})),
        "network_params": NETWORK_PARAMS if network else None,
        "network_members": NETWORK_MEMBERS if network else 0,
        "seed": int(seed),
        "target": f"log(scattered light + {TARGET_OFFSET:g} e-/s), per pixel",
        "bin_minutes": float(bin_minutes),
        "n_samples": len(samples),
        "training_seconds": round(fit_seconds, 1),
        "sources": [
            {k: v for k, v in s.items() if k != "raw" and not isinstance(v, np.ndarray)}
            for s in samples.sources
        ],
        "sectors": sorted({int(s["sector"]) for s in samples.sources}),
        "cameras": sorted({int(s["camera"]) for s in samples.sources}),
        "feature_ranges": feature_ranges(samples),
        "ephemeris": None if ephemeris is None else ephemeris.description,
    }
    if run_validation:
        results = validate(samples, seed, params, progress=progress, network=network)
        if results:
            meta["validation"] = {
                "method": "leave-one-sector-out, scale + offset per orbit",
                "light_curves": results,
                "median_percent": float(np.median([r["model_percent"] for r in results])),
                "relative_error": float(np.median([r["relative_error"] for r in results])),
                "median_quadratic_percent": float(
                    np.median([r["quadratic_percent"] for r in results])
                ),
            }
    table = None
    if embed_ephemeris and isinstance(ephemeris, HorizonsEphemeris):
        table = ephemeris_table(ephemeris)
        lo = float(table["ephemeris_jd0"]) - 2457000.0
        hi = lo + float(table["ephemeris_step"]) * (table["ephemeris_xyz"].shape[0] - 1)
        meta["ephemeris_table"] = {
            "btjd": [round(lo, 3), round(hi, 3)],
            "step_hours": EPHEMERIS_STEP_HOURS,
            "centre": "Earth (astropy built-in ephemeris)",
        }
    return ScatterLightModel(trees, meta, table, net)


def _library_version() -> str:
    import sklearn

    return f"scikit-learn {sklearn.__version__} HistGradientBoostingRegressor + MLPRegressor"
