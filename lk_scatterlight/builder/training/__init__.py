"""Training the learned scattered-light model (`lk_scatterlight.model.ScatterLightModel`).

Two kinds of training data are read into one table of samples (`Samples`):

* **cube training sets** (``.npz`` from ``lk-scatterlight dataset``): every
  bin centre and plane of the cube is a sample; its geometry comes from the
  file's ``*_map`` arrays, its target from ``scatter_cube`` (the scattered
  light above the darkest frames) [e-/s per pixel];
* **SPOC light curves** (``*_lc.fits`` with ``SAP_BKG``): SPOC's background
  summed over the aperture, divided by the number of aperture pixels, binned
  to ``bin_minutes`` and placed at the aperture's centre pixel. SPOC's level
  is biased in early sectors, so the target is the background above its 2nd
  percentile in each orbit (`floor_per_orbit`): the model learns the shape,
  `~lk_scatterlight.model.calibrate` fits level and scale per orbit.

`fit_model` fits scikit-learn's histogram gradient boosting to the features of
`lk_scatterlight.model.geometry_features` and exports the trees to plain
arrays (`export_trees`); `fit_network` fits a small neural network to the same
target and exports its weights. The model averages the two, and its file is
evaluated with numpy alone.

scikit-learn is needed here only (``pip install 'lk_scatterlight[train]'``).

The package's modules, one job each (every name is importable from
``lk_scatterlight.builder.training``):

* ``samples``: reading light curves and cube training sets into `Samples`;
  the TESS position table of a model file (`ephemeris_table`);
* ``fitting``: the trees (`fit_model`) and the networks (`fit_network`);
* ``validation``: the leave-one-sector-out scores (`validate`);
* ``train``: the whole command (`train_model`).
"""

from __future__ import annotations

from ...geometry import read_ephemerides
from .fitting import (
    DEFAULT_PARAMS,
    INTERACTIONS,
    NETWORK_MEMBERS,
    NETWORK_PARAMS,
    export_trees,
    fit_model,
    fit_network,
)
from .samples import (
    EPHEMERIS_STEP_HOURS,
    Samples,
    dataset_samples,
    ephemeris_table,
    expand_paths,
    feature_ranges,
    floor_per_orbit,
    lightcurve_samples,
    load_samples,
    read_lightcurve,
)
from .train import train_model
from .validation import calibrated_rms, validate

__all__ = [
    "Samples",
    "read_ephemerides",
    "lightcurve_samples",
    "dataset_samples",
    "load_samples",
    "floor_per_orbit",
    "fit_model",
    "fit_network",
    "export_trees",
    "NETWORK_PARAMS",
    "NETWORK_MEMBERS",
    "INTERACTIONS",
    "ephemeris_table",
    "EPHEMERIS_STEP_HOURS",
    "DEFAULT_PARAMS",
    "expand_paths",
    "feature_ranges",
    "read_lightcurve",
    "calibrated_rms",
    "validate",
    "train_model",
]
