"""The model file format: its keys, version and checks, and where the shipped model is.

The format is specified in ``docs/model.rst``; `MODEL_VERSION` is its version.
"""

from __future__ import annotations

import logging
from importlib import resources
from pathlib import Path

import numpy as np

from ..exceptions import ScatterLightError
from .features import FEATURES

__all__ = [
    "MODEL_VERSION",
    "MODEL_KIND",
    "DEFAULT_MODEL",
    "MODEL_KEYS",
    "NETWORK_KEYS",
    "EPHEMERIS_KEYS",
    "ModelFormatError",
    "check_keys",
    "default_model_path",
]

log = logging.getLogger(__name__)

#: Version of the model file layout (key ``format_version``).
MODEL_VERSION = 1
#: Value of a model file's ``kind`` key.
MODEL_KIND = "lk_scatterlight scattered-light model"
#: Name of the model shipped in ``lk_scatterlight/data``.
DEFAULT_MODEL = "default"
_DEFAULT_FILE = "scatterlight_model_v1.npz"


class ModelFormatError(ScatterLightError, ValueError):
    """A model file is malformed, of an unknown kind or of an unsupported version."""


#: Every key of a model file: key -> (dtype kind, number of dimensions or None).
MODEL_KEYS: dict[str, tuple[str, int | None]] = {
    "kind": ("U", 0),
    "format_version": ("i", 0),
    "features": ("U", 1),
    "meta": ("U", 0),
    "tree_feature": ("i", 1),
    "tree_threshold": ("f", 1),
    "tree_left": ("i", 1),
    "tree_right": ("i", 1),
    "tree_value": ("f", 1),
    "tree_nan_left": ("b", 1),
    "tree_offsets": ("i", 1),
    "tree_baseline": ("f", 0),
    "tree_log_target": ("b", 0),
}
#: Optional keys: the network part (`Network`), all or none.
NETWORK_KEYS: dict[str, tuple[str, int | None]] = {
    "net_sizes": ("i", 1),
    "net_params": ("f", 1),
    "net_mean": ("f", 1),
    "net_scale": ("f", 1),
    "net_offset": ("f", 0),
}
#: Optional keys: the embedded TESS position table.
EPHEMERIS_KEYS: dict[str, tuple[str, int | None]] = {
    "ephemeris_jd0": ("f", 0),
    "ephemeris_step": ("f", 0),
    "ephemeris_xyz": ("f", 2),
}


def check_keys(data: dict, where: str) -> None:
    """Check a model file's arrays against the format; raise `ModelFormatError` if they fail.

    Parameters
    ----------
    data : dict of str to ndarray
        The arrays of the ``.npz`` file.
    where : str
        The file's name, to start the error message with.
    """
    missing = [k for k in MODEL_KEYS if k not in data]
    if missing:
        msg = f"{where}: not a model file, keys {missing} missing (see docs/model.rst)."
        raise ModelFormatError(msg)
    if str(data["kind"]) != MODEL_KIND:
        msg = f"{where}: kind is {str(data['kind'])!r}, expected {MODEL_KIND!r}."
        raise ModelFormatError(msg)
    version = int(data["format_version"])
    if version != MODEL_VERSION:
        msg = (
            f"{where}: model format version {version}; this lk_scatterlight reads version "
            f"{MODEL_VERSION}. Update lk_scatterlight or retrain with `lk-scatterlight train`."
        )
        raise ModelFormatError(msg)
    present = {}
    for label, keys in (("ephemeris table", EPHEMERIS_KEYS), ("network", NETWORK_KEYS)):
        part = {k: v for k, v in keys.items() if k in data}
        if part and len(part) != len(keys):
            msg = f"{where}: partial {label} ({sorted(part)}); need all of {sorted(keys)}."
            raise ModelFormatError(msg)
        present.update(part)
    for key, (kind, ndim) in {**MODEL_KEYS, **present}.items():
        array = np.asarray(data[key])
        if array.dtype.kind != kind and not (kind == "f" and array.dtype.kind == "i"):
            msg = f"{where}: {key} has dtype {array.dtype}, expected kind {kind!r}."
            raise ModelFormatError(msg)
        if ndim is not None and array.ndim != ndim:
            msg = f"{where}: {key} has {array.ndim} dimensions, expected {ndim}."
            raise ModelFormatError(msg)
    if tuple(str(f) for f in data["features"]) != FEATURES:
        msg = (
            f"{where}: features {list(data['features'])}, this lk_scatterlight computes "
            f"{list(FEATURES)}."
        )
        raise ModelFormatError(msg)
    if "ephemeris_xyz" in present:
        xyz = np.asarray(data["ephemeris_xyz"])
        if xyz.shape[1] != 3 or xyz.shape[0] < 4 or not np.all(np.isfinite(xyz)):
            msg = f"{where}: ephemeris_xyz must be (n >= 4, 3) finite positions."
            raise ModelFormatError(msg)
        if not float(data["ephemeris_step"]) > 0:
            msg = f"{where}: ephemeris_step must be positive."
            raise ModelFormatError(msg)


def default_model_path() -> Path:
    """Path of the model shipped with the package (`DEFAULT_MODEL`)."""
    return Path(str(resources.files("lk_scatterlight") / "data" / _DEFAULT_FILE))
