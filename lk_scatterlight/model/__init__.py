"""A learned model of TESS scattered light from where the Earth and the Moon are.

`ScatterLightModel` predicts the scattered light [e-/s] of any pixel of any
CCD at any time from geometry alone: for each pixel's line of sight, the angle,
azimuth and distance of the Earth and of the Moon, the angle to the Earth's
limb, the Earth's lit fraction over its squared distance, the Earth's
position seen from the camera's boresight and the longitude of the Earth's
lit face TESS sees (`FEATURES`). The model is an ensemble of regression trees
(gradient boosting) averaged with a small neural network (itself the mean
of networks fitted with several seeds), both fitted with scikit-learn by
``lk-scatterlight train`` and stored as plain arrays, so
predicting needs numpy only; the geometry needs the CCD's pointing (tesswcs'
archival WCS, offline) and TESS's position, which the model file carries as
a compact table (TESS relative to the Earth every 3 hours over the sectors of
the training ephemeris) unless ``ephemeris=`` is given.

The model predicts the *shape* of the scattered light; its level and scale
in one target pixel file are fitted to that file's own background pixels,
per orbit (`calibrate`, `ModelBackground`). ``tpf.to_corrector("scatterlight",
model="default")`` does both and subtracts the result.

The file format (``.npz``, no pickled objects) is specified in
``docs/model.rst``; `MODEL_VERSION` is its version.

Pixel coordinates are 1-based CCD rows and columns counting the 44 collateral
columns (``tpf.row``, ``tpf.column``); times are BTJD (TDB); fluxes e-/s per
pixel.

The package's modules, one job each (every name is importable from
``lk_scatterlight.model``):

* ``features``: the feature matrix (`FEATURES`) from the Earth and Moon
  geometry, the Earth's lit fraction and lit face, orbit numbers;
* ``ensemble``: the trees and the network as plain arrays, evaluated with numpy;
* ``fileformat``: the model file's keys, version and checks;
* ``ephemeris``: TESS's position from the table in a model file;
* ``core``: `ScatterLightModel` (load, save, predict) and `ModelField`;
* ``calibration``: the scale and offset per orbit (`calibrate`);
* ``tpf``: the model on a target pixel file (`ModelBackground`).
"""

from __future__ import annotations

from ..exceptions import ModelNotFoundError
from ..utils import moved_names
from .calibration import (
    MIN_ORBIT,
    CalibratedBackground,
    Calibration,
    background_pixels,
    calibrate,
    fit_calibration,
)
from .core import GRID_STEP, ModelField, ScatterLightModel
from .ensemble import (
    NETWORK_INPUTS,
    TARGET_OFFSET,
    Network,
    TreeEnsemble,
    blend,
    network_inputs,
    stack_networks,
)
from .ephemeris import TableEphemeris
from .features import (
    FEATURES,
    ORBIT_GAP,
    camera_azimuth,
    earth_brightness,
    earth_illuminated_fraction,
    earth_lit_longitude,
    geometry_features,
    segment_ids,
)
from .fileformat import (
    DEFAULT_MODEL,
    EPHEMERIS_KEYS,
    MODEL_KEYS,
    MODEL_KIND,
    MODEL_VERSION,
    NETWORK_KEYS,
    ModelFormatError,
    default_model_path,
)
from .tpf import ModelBackground, sector_from_time, tpf_position

__all__ = [
    "FEATURES",
    "MODEL_VERSION",
    "MODEL_KIND",
    "DEFAULT_MODEL",
    "TARGET_OFFSET",
    "ORBIT_GAP",
    "ModelFormatError",
    "ModelNotFoundError",
    "TreeEnsemble",
    "Network",
    "network_inputs",
    "stack_networks",
    "ScatterLightModel",
    "ModelField",
    "TableEphemeris",
    "Calibration",
    "CalibratedBackground",
    "ModelBackground",
    "calibrate",
    "fit_calibration",
    "background_pixels",
    "sector_from_time",
    "tpf_position",
    "camera_azimuth",
    "geometry_features",
    "earth_brightness",
    "earth_illuminated_fraction",
    "earth_lit_longitude",
    "segment_ids",
    # also public, though not listed before the split
    "MIN_ORBIT",
    "GRID_STEP",
    "NETWORK_INPUTS",
    "MODEL_KEYS",
    "NETWORK_KEYS",
    "EPHEMERIS_KEYS",
    "blend",
    "default_model_path",
]

#: Private names of the single-module ``model.py``, now in the package's modules.
__getattr__ = moved_names(
    __name__,
    {
        "_DEFAULT_FILE": "lk_scatterlight.model.fileformat._DEFAULT_FILE",
        "_check_keys": "lk_scatterlight.model.fileformat.check_keys",
        "_sun_from_earth": "lk_scatterlight.model.features._sun_from_earth",
        "_TT_MINUS_UT1": "lk_scatterlight.model.features._TT_MINUS_UT1",
        "_ranges": "lk_scatterlight.model.core._ranges",
        "_grid": "lk_scatterlight.model.core._grid",
        "_bilinear": "lk_scatterlight.model.core._bilinear",
        "_merge_short_segments": "lk_scatterlight.model.calibration._merge_short_segments",
        "_lstsq": "lk_scatterlight.model.calibration._lstsq",
        "_position_shift": "lk_scatterlight.model.tpf._position_shift",
    },
)
