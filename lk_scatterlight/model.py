"""A learned model of TESS scattered light from where the Earth and the Moon are.

`ScatterLightModel` predicts the scattered light [e-/s] of any pixel of any
CCD at any time from geometry alone: for each pixel's line of sight, the angle,
azimuth and distance of the Earth and of the Moon, the angle to the Earth's
limb, the Earth's lit fraction over its squared distance, the Earth's
position seen from the camera's boresight and the longitude of the Earth's
lit face TESS sees (`FEATURES`). The model is an ensemble of regression trees
(gradient boosting) averaged with a small neural network, both fitted with
scikit-learn by ``lk-scatterlight train`` and stored as plain arrays, so
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
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from .ccd import BTJD_OFFSET, check_camera_ccd, check_sector
from .exceptions import ModelNotFoundError, ScatterLightError, ScatterLightWarning
from .utils import atomic_write, refuse_overwrite

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
]

log = logging.getLogger(__name__)

#: The model's input features, in order (angles [deg], distances [Earth radii]).
#: Azimuths are in the camera frame (`camera_azimuth`). ``earth_limb_angle`` is the
#: angle from the line of sight to the Earth's limb, ``earth_brightness`` the log10 of
#: the Earth's illuminated fraction over its squared distance (`earth_brightness`), the
#: boresight pair the Earth's angle and azimuth from the camera's boresight, and
#: ``earth_lit_longitude`` the geographic longitude of the Earth's face lit and seen by TESS
#: (`earth_lit_longitude`).
FEATURES = (
    "earth_angle",
    "earth_azimuth",
    "earth_distance",
    "moon_angle",
    "moon_azimuth",
    "moon_distance",
    "camera",
    "earth_limb_angle",
    "earth_brightness",
    "earth_boresight_angle",
    "earth_boresight_azimuth",
    "earth_lit_longitude",
)
#: Version of the model file layout (key ``format_version``).
MODEL_VERSION = 1
#: Value of a model file's ``kind`` key.
MODEL_KIND = "lk_scatterlight scattered-light model"
#: Name of the model shipped in ``lk_scatterlight/data``.
DEFAULT_MODEL = "default"
_DEFAULT_FILE = "scatterlight_model_v1.npz"
#: Trees fitted to ``log(y + TARGET_OFFSET)`` predict ``exp(f) - TARGET_OFFSET`` [e-/s].
TARGET_OFFSET = 10.0
#: Gaps longer than this split a sector into orbits (segments) [d].
ORBIT_GAP = 0.5
#: Shortest stretch of time [d] the calibration fits a scale and an offset to; shorter
#: stretches between gaps join a neighbour.
MIN_ORBIT = 2.0
#: Pixel grid step for spatial interpolation of predictions [px] (see `ScatterLightModel.predict`).
GRID_STEP = 64.0


class ModelFormatError(ScatterLightError, ValueError):
    """A model file is malformed, of an unknown kind or of an unsupported version."""


# ---------------------------------------------------------------------- features
def camera_azimuth(azimuth, ccd: int) -> np.ndarray:
    """Azimuths of a CCD's frame turned into the camera's frame [deg].

    The azimuth frame of `lk_scatterlight.geometry` is tied to each
    CCD's rows and columns; CCDs 1 and 2 are rotated by 180 deg with respect to
    CCDs 3 and 4. The camera frame is that of CCDs 3 and 4: 180 deg is added
    for CCDs 1 and 2, so one direction has one azimuth on all four CCDs.

    Parameters
    ----------
    azimuth : array of float
        In the CCD frame [deg].
    ccd : int

    Returns
    -------
    azimuth : ndarray
        In [0, 360) [deg].
    """
    turn = 180.0 if int(ccd) in (1, 2) else 0.0
    return (np.asarray(azimuth, dtype=float) + turn) % 360.0


def earth_brightness(distance, illuminated_fraction) -> np.ndarray:
    """The Earth's glow proxy: ``log10(illuminated_fraction / distance**2 + 1e-6)``.

    Parameters
    ----------
    distance : array of float
        Earth's distance from TESS [Earth radii].
    illuminated_fraction : array of float
        Fraction of the Earth's disc lit by the Sun as seen from TESS, 0..1
        (`earth_illuminated_fraction`).

    Returns
    -------
    brightness : ndarray
        [log10 of Earth radii^-2]; -6 for an unlit Earth.
    """
    d = np.asarray(distance, dtype=float)
    return np.log10(np.asarray(illuminated_fraction, dtype=float) / d**2 + 1e-6)


def _sun_from_earth(jd: np.ndarray, step: float) -> np.ndarray:
    """The Sun's geocentric position [km], shape (n, 3), interpolated from ``step``-day samples.

    From astropy's built-in ephemeris (offline); the Sun moves 1 deg a day, so
    linear interpolation over a few hours is exact to well below 0.01 deg.
    """
    from .geometry import _builtin_body

    grid = np.arange(np.floor(jd.min() / step) - 1, np.ceil(jd.max() / step) + 2) * step
    sun = _builtin_body("sun", grid, "builtin") - _builtin_body("earth", grid, "builtin")
    return np.stack([np.interp(jd, grid, sun[:, k]) for k in range(3)], axis=1)


def earth_illuminated_fraction(earth_vectors, jd_tdb, step: float = 0.25) -> np.ndarray:
    """Fraction of the Earth's disc lit by the Sun as seen from TESS.

    ``(1 + cos(phase)) / 2`` with ``phase`` the Sun-Earth-TESS angle. The Sun's
    geocentric direction comes from astropy's built-in ephemeris (offline),
    evaluated every ``step`` days and interpolated linearly (it moves 1 deg a
    day).

    Parameters
    ----------
    earth_vectors : array of float, shape (ntime, 3)
        TESS-to-Earth vectors, ICRF [km].
    jd_tdb : array of float, shape (ntime,)
        Julian dates, TDB [d].
    step : float
        [d].

    Returns
    -------
    fraction : ndarray, shape (ntime,)
        0 (new Earth) .. 1 (full Earth).
    """
    jd = np.atleast_1d(np.asarray(jd_tdb, dtype=float))
    sun = _sun_from_earth(jd, step)
    to_tess = -np.asarray(earth_vectors, dtype=float).reshape(-1, 3)
    cos = np.sum(sun * to_tess, axis=1) / (
        np.linalg.norm(sun, axis=1) * np.linalg.norm(to_tess, axis=1)
    )
    return 0.5 * (1.0 + np.clip(cos, -1.0, 1.0))


#: TT - UTC [s]; UT1 is within 0.9 s of UTC, so UT1 = TDB - this is good to 0.004 deg of spin.
_TT_MINUS_UT1 = 69.184


def earth_lit_longitude(earth_vectors, jd_tdb, step: float = 0.25) -> np.ndarray:
    """East longitude on the Earth of the centre of its face both lit and seen by TESS [deg].

    The Earth's glow brightens and dims once a day as land and ocean turn
    through the sunlit face TESS sees (bright deserts and vegetation, dark
    seas, in TESS's red band). That face is centred, roughly, halfway between
    the sub-solar and the sub-TESS points: this is the geographic longitude
    of the direction halfway between the Sun and TESS seen from the Earth's
    centre. The Earth's rotation angle (IAU 2000) uses UT1 = TDB - 69.184 s.

    Parameters
    ----------
    earth_vectors : array of float, shape (ntime, 3)
        TESS-to-Earth vectors, ICRF [km].
    jd_tdb : array of float, shape (ntime,)
        Julian dates, TDB [d].
    step : float
        Sampling of the Sun's position [d] (`earth_illuminated_fraction`).

    Returns
    -------
    longitude : ndarray, shape (ntime,)
        In [0, 360) [deg].
    """
    jd = np.atleast_1d(np.asarray(jd_tdb, dtype=float))
    sun = _sun_from_earth(jd, step)
    to_tess = -np.asarray(earth_vectors, dtype=float).reshape(-1, 3)
    middle = sun / np.linalg.norm(sun, axis=1)[:, None]
    middle = middle + to_tess / np.linalg.norm(to_tess, axis=1)[:, None]
    ut1 = jd - _TT_MINUS_UT1 / 86400.0 - 2451545.0
    rotation = 360.0 * (0.7790572732640 + 1.00273781191135448 * ut1)
    return (np.rad2deg(np.arctan2(middle[:, 1], middle[:, 0])) - rotation) % 360.0


def geometry_features(
    earth_angle,
    earth_azimuth,
    earth_distance,
    moon_angle,
    moon_azimuth,
    moon_distance,
    camera,
    earth_boresight_angle,
    earth_boresight_azimuth,
    earth_fraction,
    earth_longitude,
) -> np.ndarray:
    """The feature matrix of the model (columns in the order of `FEATURES`).

    Parameters
    ----------
    earth_angle, moon_angle : array of float
        Angle between the line of sight and the body's centre [deg].
    earth_azimuth, moon_azimuth : array of float
        Azimuth of the body around the line of sight, camera frame [deg].
    earth_distance, moon_distance : array of float
        Distance from TESS [Earth radii].
    camera : int or array of int
    earth_boresight_angle, earth_boresight_azimuth : array of float
        The Earth's angle and azimuth (camera frame) from the camera's boresight [deg].
    earth_fraction : array of float
        Illuminated fraction of the Earth seen from TESS, 0..1
        (`earth_illuminated_fraction`).
    earth_longitude : array of float
        Longitude of the Earth's face lit and seen by TESS [deg]
        (`earth_lit_longitude`).

    Returns
    -------
    X : ndarray, shape (n, len(FEATURES)), float64
        The arguments broadcast together and flattened; the Earth's limb angle
        (``earth_angle - arcsin(1 / earth_distance)`` [deg]) and
        `earth_brightness` are derived here.
    """
    sight = (earth_angle, earth_azimuth, earth_distance, moon_angle, moon_azimuth, moon_distance)
    camera_level = (
        camera,
        earth_boresight_angle,
        earth_boresight_azimuth,
        earth_fraction,
        earth_longitude,
    )
    arrays = np.broadcast_arrays(*(np.asarray(a, dtype=float) for a in (*sight, *camera_level)))
    cols = [a.reshape(-1) for a in arrays]
    angle, distance, fraction = cols[0], cols[2], cols[9]
    limb = angle - np.rad2deg(np.arcsin(np.clip(1.0 / distance, 0.0, 1.0)))
    bright = earth_brightness(distance, fraction)
    return np.stack([*cols[:7], limb, bright, *cols[7:9], cols[10]], axis=1)


def segment_ids(time, gap: float = ORBIT_GAP) -> np.ndarray:
    """Segment (orbit) number of each time: segments split where sorted times jump by > ``gap``.

    Parameters
    ----------
    time : array of float, shape (n,)
        BTJD [d]; NaN times get segment -1.
    gap : float
        [d].

    Returns
    -------
    segment : ndarray of int, shape (n,)
    """
    time = np.asarray(time, dtype=float)
    out = np.full(time.shape, -1, dtype=int)
    finite = np.flatnonzero(np.isfinite(time))
    if finite.size == 0:
        return out
    order = finite[np.argsort(time[finite], kind="stable")]
    jumps = np.r_[0, np.cumsum(np.diff(time[order]) > gap)]
    out[order] = jumps
    return out


# ---------------------------------------------------------------------- trees
@dataclass
class TreeEnsemble:
    """Regression trees stored as flat arrays, evaluated with numpy.

    Node ``i`` of the concatenated trees is a split when ``feature[i] >= 0``:
    a sample goes to node ``offsets[t] + left[i]`` if its feature value is
    ``<= threshold[i]`` (or NaN and ``nan_left[i]``), else to
    ``offsets[t] + right[i]``; otherwise it is a leaf adding ``value[i]``.
    Tree ``t`` holds nodes ``offsets[t]:offsets[t + 1]``, its root first. The
    raw prediction is ``baseline`` plus one leaf value per tree; with
    ``log_target`` the model is ``exp(raw) - TARGET_OFFSET``.
    """

    feature: np.ndarray
    threshold: np.ndarray
    left: np.ndarray
    right: np.ndarray
    value: np.ndarray
    nan_left: np.ndarray
    offsets: np.ndarray
    baseline: float
    log_target: bool
    _complete_cache: Any = field(default=None, init=False, repr=False, compare=False)
    _thresholds: Any = field(default=None, init=False, repr=False, compare=False)

    @property
    def n_trees(self) -> int:
        """Number of trees."""
        return int(self.offsets.size - 1)

    def validate(self, n_features: int) -> None:
        """Check the arrays describe well-formed trees; raise `ModelFormatError` if not."""
        n = self.feature.size
        arrays = (self.threshold, self.left, self.right, self.value, self.nan_left)
        if any(np.shape(a) != (n,) for a in arrays):
            msg = (
                "the tree arrays (feature, threshold, left, right, value, nan_left) differ in size"
            )
            raise ModelFormatError(msg)
        off = self.offsets
        if off.ndim != 1 or off.size < 2 or off[0] != 0 or off[-1] != n or np.any(np.diff(off) < 1):
            msg = "tree offsets must rise from 0 to the number of nodes"
            raise ModelFormatError(msg)
        split = self.feature >= 0
        if np.any(self.feature >= n_features) or np.any(self.feature < -1):
            msg = f"tree features must be -1 (leaf) or 0..{n_features - 1}"
            raise ModelFormatError(msg)
        sizes = np.repeat(np.diff(off), np.diff(off))
        local = np.arange(n) - np.repeat(off[:-1], np.diff(off))
        for child in (self.left, self.right):
            # children lie after their parent within the same tree: evaluation terminates
            bad = split & ((child <= local) | (child >= sizes))
            if np.any(bad):
                msg = "a tree's child index points outside its tree or backwards"
                raise ModelFormatError(msg)
        if not np.all(np.isfinite(self.value)) or not np.isfinite(self.baseline):
            msg = "leaf values must be finite"
            raise ModelFormatError(msg)

    def depth(self) -> int:
        """Depth of the deepest tree (a lone leaf has depth 0)."""
        depth = np.zeros(self.feature.size, dtype=np.int64)
        for t in range(self.n_trees):
            start, stop = int(self.offsets[t]), int(self.offsets[t + 1])
            for i in range(start, stop):  # children follow their parent
                if self.feature[i] >= 0:
                    for child in (self.left[i], self.right[i]):
                        depth[start + child] = depth[i] + 1
        return int(depth.max()) if depth.size else 0

    def _complete(self):
        """The trees padded to complete binary trees of equal depth (cached).

        A leaf above the bottom becomes a chain of splits that always go left
        (threshold +inf) down to the bottom, where its value is repeated. Node
        ``i`` of a complete tree has children ``2i + 1`` and ``2i + 2``.
        """
        if getattr(self, "_complete_cache", None) is None:
            depth = self.depth()
            n_inner, n_leaf = 2**depth - 1, 2**depth
            feature = np.zeros((self.n_trees, max(n_inner, 1)), dtype=np.int64)
            threshold = np.full((self.n_trees, max(n_inner, 1)), np.inf)
            nan_left = np.ones((self.n_trees, max(n_inner, 1)), dtype=bool)
            value = np.zeros((self.n_trees, n_leaf))
            for t in range(self.n_trees):
                start = int(self.offsets[t])
                stack = [(start, 0, 0)]  # (node in the flat arrays, complete index, level)
                while stack:
                    node, index, level = stack.pop()
                    if self.feature[node] < 0:
                        # fill every bottom slot below this leaf
                        first = (index + 1) * 2 ** (depth - level) - 1 - n_inner
                        value[t, first : first + 2 ** (depth - level)] = self.value[node]
                        continue
                    feature[t, index] = self.feature[node]
                    threshold[t, index] = self.threshold[node]
                    nan_left[t, index] = self.nan_left[node]
                    stack.append((start + int(self.left[node]), 2 * index + 1, level + 1))
                    stack.append((start + int(self.right[node]), 2 * index + 2, level + 1))
            self._complete_cache = (depth, feature, threshold, nan_left, value)
        return self._complete_cache

    def _threshold_key(self, X: np.ndarray) -> np.ndarray | None:
        """One integer per row: for every feature, how many of its split thresholds lie below.

        None when the codes do not fit in 63 bits.
        """
        if getattr(self, "_thresholds", None) is None:
            split = self.feature >= 0
            self._thresholds = [
                np.unique(self.threshold[split & (self.feature == k)]) for k in range(X.shape[1])
            ]
        bits = [max(1, int(np.ceil(np.log2(t.size + 1)))) for t in self._thresholds]
        if sum(bits) > 63:
            return None
        key = np.zeros(X.shape[0], dtype=np.int64)
        for k, (thresholds, nbits) in enumerate(zip(self._thresholds, bits, strict=True)):
            if thresholds.size:
                key = (key << nbits) | np.searchsorted(thresholds, X[:, k], side="left")
        return key

    def raw(self, X: np.ndarray) -> np.ndarray:
        """Baseline plus the leaf value of every tree for each row of ``X``.

        Parameters
        ----------
        X : ndarray, shape (n, n_features)

        Returns
        -------
        raw : ndarray, shape (n,)
        """
        X = np.ascontiguousarray(X, dtype=float)
        n, nf = X.shape
        out = np.full(n, self.baseline)
        if n == 0:
            return out
        if n > 256 and not np.isnan(X).any():
            # The trees only see on which side of each threshold a feature lies: rows with
            # the same sides give the same result. Neighbouring cadences and pixels mostly
            # do, so the trees run once per distinct combination (exact, ~10x fewer rows).
            key = self._threshold_key(X)
            if key is not None:
                unique, first, inverse = np.unique(key, return_index=True, return_inverse=True)
                if unique.size < 0.5 * n:
                    return self.raw(X[first])[inverse.reshape(-1)]
        depth, feature, threshold, nan_left, value = self._complete()
        flat = X.ravel()
        base = np.arange(n) * nf
        n_inner = 2**depth - 1
        has_nan = bool(np.isnan(flat).any())
        for t in range(self.n_trees):
            f_t, thr_t, nl_t = feature[t], threshold[t], nan_left[t]
            index = np.zeros(n, dtype=np.int64)
            for _ in range(depth):
                x = flat[base + f_t[index]]
                right = x > thr_t[index]
                if has_nan:
                    right |= np.isnan(x) & ~nl_t[index]
                index = 2 * index + 1 + right
            out += value[t][index - n_inner]
        return out

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Scattered light [e-/s] for each row of ``X`` (never negative)."""
        raw = self.raw(X)
        if self.log_target:
            raw = np.exp(raw) - TARGET_OFFSET
        return np.clip(raw, 0.0, None)

    def to_arrays(self) -> dict[str, np.ndarray]:
        """The arrays written to a model file (keys ``tree_*``)."""
        return {
            "tree_feature": self.feature.astype(np.int16),
            "tree_threshold": self.threshold.astype(np.float64),
            "tree_left": self.left.astype(np.int32),
            "tree_right": self.right.astype(np.int32),
            "tree_value": self.value.astype(np.float64),
            "tree_nan_left": self.nan_left.astype(bool),
            "tree_offsets": self.offsets.astype(np.int64),
            "tree_baseline": np.array(float(self.baseline)),
            "tree_log_target": np.array(bool(self.log_target)),
        }

    @classmethod
    def from_arrays(cls, data: dict) -> TreeEnsemble:
        """The trees of a model file's arrays (see `to_arrays`)."""
        return cls(
            feature=np.asarray(data["tree_feature"]).astype(np.int64),
            threshold=np.asarray(data["tree_threshold"], dtype=float),
            left=np.asarray(data["tree_left"]).astype(np.int64),
            right=np.asarray(data["tree_right"]).astype(np.int64),
            value=np.asarray(data["tree_value"], dtype=float),
            nan_left=np.asarray(data["tree_nan_left"]).astype(bool),
            offsets=np.asarray(data["tree_offsets"]).astype(np.int64),
            baseline=float(data["tree_baseline"]),
            log_target=bool(data["tree_log_target"]),
        )


# ---------------------------------------------------------------------- network
def network_inputs(X) -> np.ndarray:
    """The inputs of the network part, from the feature matrix (`FEATURES` columns).

    The angles, the limb angle and the brightness as they are; azimuths and the
    lit longitude as their cosine and sine (they wrap at 360 deg); distances as
    their natural log; the camera as four 0/1 columns.

    Parameters
    ----------
    X : array, shape (n, len(FEATURES))

    Returns
    -------
    Z : ndarray, shape (n, `NETWORK_INPUTS`)
    """
    X = np.asarray(X, dtype=float)
    col = {name: X[:, k] for k, name in enumerate(FEATURES)}
    cols = []
    for name in FEATURES:
        v = col[name]
        if name.endswith(("azimuth", "longitude")):
            cols += [np.cos(np.deg2rad(v)), np.sin(np.deg2rad(v))]
        elif name.endswith("distance"):
            cols.append(np.log(v))
        elif name == "camera":
            cols += [(v == c).astype(float) for c in (1, 2, 3, 4)]
        else:
            cols.append(v)
    return np.stack(cols, axis=1)


#: Number of columns of `network_inputs`.
NETWORK_INPUTS = len(FEATURES) + 3 + sum(f.endswith(("azimuth", "longitude")) for f in FEATURES)


@dataclass
class Network:
    """A small fully connected network (ReLU hidden layers), evaluated with numpy.

    ``raw(X)`` is ``offset`` plus the network's output for the standardised
    inputs ``(network_inputs(X) - mean) / scale``; layer ``i`` maps ``sizes[i]``
    values to ``sizes[i + 1]`` with a weight matrix and a bias stored one after
    the other, row-major, in ``params``.
    """

    sizes: np.ndarray
    params: np.ndarray
    mean: np.ndarray
    scale: np.ndarray
    offset: float

    def layers(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """(weights (n_in, n_out), bias (n_out,)) of every layer."""
        out, start = [], 0
        for n_in, n_out in zip(self.sizes[:-1], self.sizes[1:], strict=True):
            w = self.params[start : start + n_in * n_out].reshape(n_in, n_out)
            start += n_in * n_out
            out.append((w, self.params[start : start + n_out]))
            start += n_out
        return out

    def validate(self) -> None:
        """Check the arrays describe a network on `network_inputs`; raise `ModelFormatError`."""
        sizes = self.sizes
        if sizes.ndim != 1 or sizes.size < 2 or sizes[0] != NETWORK_INPUTS or sizes[-1] != 1:
            msg = f"net_sizes must run from {NETWORK_INPUTS} inputs to 1 output, not {sizes}"
            raise ModelFormatError(msg)
        if np.any(sizes < 1):
            msg = "net_sizes must be positive"
            raise ModelFormatError(msg)
        expected = int(np.sum(sizes[:-1] * sizes[1:] + sizes[1:]))
        if self.params.shape != (expected,):
            msg = f"net_params holds {self.params.size} values; net_sizes {sizes} need {expected}"
            raise ModelFormatError(msg)
        if self.mean.shape != (NETWORK_INPUTS,) or self.scale.shape != (NETWORK_INPUTS,):
            msg = f"net_mean and net_scale must have {NETWORK_INPUTS} values"
            raise ModelFormatError(msg)
        values = (self.params, self.mean, self.scale, self.offset)
        if not all(np.all(np.isfinite(v)) for v in values) or np.any(self.scale <= 0):
            msg = "network values must be finite, its scales positive"
            raise ModelFormatError(msg)

    def raw(self, X: np.ndarray) -> np.ndarray:
        """The network's output for each row of ``X`` (shape (n, len(FEATURES))) -> (n,)."""
        z = (network_inputs(X) - self.mean) / self.scale
        layers = self.layers()
        for w, b in layers[:-1]:
            z = np.maximum(z @ w + b, 0.0)
        w, b = layers[-1]
        return (z @ w + b)[:, 0] + self.offset

    def to_arrays(self) -> dict[str, np.ndarray]:
        """The arrays written to a model file (keys ``net_*``)."""
        return {
            "net_sizes": self.sizes.astype(np.int64),
            "net_params": self.params.astype(np.float64),
            "net_mean": self.mean.astype(np.float64),
            "net_scale": self.scale.astype(np.float64),
            "net_offset": np.array(float(self.offset)),
        }

    @classmethod
    def from_arrays(cls, data: dict) -> Network:
        """The network of a model file's arrays (see `to_arrays`)."""
        return cls(
            sizes=np.asarray(data["net_sizes"]).astype(np.int64),
            params=np.asarray(data["net_params"], dtype=float),
            mean=np.asarray(data["net_mean"], dtype=float),
            scale=np.asarray(data["net_scale"], dtype=float),
            offset=float(data["net_offset"]),
        )


def blend(trees: TreeEnsemble, network: Network | None, X: np.ndarray) -> np.ndarray:
    """Scattered light [e-/s] of trees and an optional network for each row of ``X``.

    With a network, the two log-target predictions are averaged (equal
    weights) before ``exp(raw) - TARGET_OFFSET``; never negative.
    """
    if network is None:
        return trees.predict(X)
    if not trees.log_target:
        msg = "a network is only blended with trees fitted to the log target"
        raise ModelFormatError(msg)
    raw = 0.5 * (trees.raw(X) + network.raw(X))
    return np.clip(np.exp(raw) - TARGET_OFFSET, 0.0, None)


# ---------------------------------------------------------------------- file format
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


def _check_keys(data: dict, where: str) -> None:
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
            from .geometry import _builtin_body

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


# ---------------------------------------------------------------------- the model
class ScatterLightModel:
    """A learned scattered-light model: trees, a network, the training domain, TESS's positions.

    Load one with `ScatterLightModel.load` (``"default"`` is the model shipped
    with the package); make one with ``lk-scatterlight train`` or
    `lk_scatterlight.builder.training.fit_model`.

    Parameters
    ----------
    trees : `TreeEnsemble`
    meta : dict
        Provenance, training domain (``feature_ranges``, ``cameras``,
        ``sectors``) and validation (``relative_error``); JSON-serialisable.
    ephemeris_table : dict, optional
        ``ephemeris_jd0``, ``ephemeris_step``, ``ephemeris_xyz`` (see
        `lk_scatterlight.builder.training.ephemeris_table`).
    network : `Network`, optional
        Averaged with the trees in log space (`blend`).

    Examples
    --------
    >>> from lk_scatterlight.model import ScatterLightModel
    >>> model = ScatterLightModel.load("default")  # doctest: +SKIP
    >>> model.predict(1, 4, 3, row=[100, 200], column=500, time=[1330.0, 1331.0])  # doctest: +SKIP
    """

    def __init__(
        self,
        trees: TreeEnsemble,
        meta: dict[str, Any] | None = None,
        ephemeris_table: dict[str, np.ndarray] | None = None,
        network: Network | None = None,
    ) -> None:
        trees.validate(len(FEATURES))
        if network is not None:
            network.validate()
        self.trees = trees
        self.network = network
        self.meta = dict(meta or {})
        self.ephemeris_table = ephemeris_table
        self.path: Path | None = None
        self._pointings: dict[tuple[int, int, int], Any] = {}
        self._ephemeris = None

    def __repr__(self) -> str:
        where = f", {self.path.name}" if self.path else ""
        sectors = self.meta.get("sectors")
        trained = f", trained on sectors {_ranges(sectors)}" if sectors else ""
        net = "" if self.network is None else " + a network"
        return f"ScatterLightModel({self.trees.n_trees} trees{net}{trained}{where})"

    # -------------------------------------------------------------- files
    @classmethod
    def load(
        cls,
        path_or_name: str | os.PathLike = DEFAULT_MODEL,
        *,
        cache_dir: str | os.PathLike | None = None,
        progressbar: bool = True,
    ) -> ScatterLightModel:
        """Read a model file, the shipped model, or a published model by name.

        In this order: ``"default"`` is the model shipped in
        ``lk_scatterlight/data``; an existing file is read; any other string
        that can name a model (lower-case letters and digits joined by single
        hyphens, e.g. ``"s1-25"``) is a published model, fetched through the
        registry like a cube (`lk_scatterlight.registry.fetch_model`:
        hash-checked, cached, no network once cached). Files are read with
        ``allow_pickle=False``.

        Parameters
        ----------
        path_or_name : str or path-like
            ``"default"``, a path, or a published model's name
            (`lk_scatterlight.registry.available_models`).
        cache_dir : str or path-like, optional
            Cache folder for a published model (see
            `lk_scatterlight.registry.get_cache_dir`).
        progressbar : bool, optional
            Show a download progress bar on stderr.

        Returns
        -------
        model : `ScatterLightModel`

        Raises
        ------
        ModelNotFoundError
            No file there and no published model of that name (the message
            lists the published ones); a `FileNotFoundError`.
        DownloadError
            A published model could not be downloaded, or the download does
            not match its registry hash.
        ModelFormatError
            Not a model file, or malformed, or of another format version.
        """
        if isinstance(path_or_name, ScatterLightModel):
            return path_or_name
        path = default_model_path() if str(path_or_name) == DEFAULT_MODEL else Path(path_or_name)
        if not path.is_file() and isinstance(path_or_name, str):
            from .registry import fetch_model, is_model_name

            if is_model_name(path_or_name):
                path = fetch_model(
                    path_or_name,
                    max_version=MODEL_VERSION,
                    cache_dir=cache_dir,
                    progressbar=progressbar,
                )
        if not path.is_file():
            msg = (
                f"No model file at {path}; give a path, 'default', or the name of a published "
                "model (lk_scatterlight.registry.available_models())."
            )
            raise ModelNotFoundError(msg)
        try:
            with np.load(path, allow_pickle=False) as npz:
                data = {k: npz[k] for k in npz.files}
        except (OSError, ValueError, EOFError) as err:
            msg = f"{path} is not a readable .npz model file: {err}"
            raise ModelFormatError(msg) from err
        _check_keys(data, str(path))
        try:
            meta = json.loads(str(data["meta"]))
        except json.JSONDecodeError as err:
            msg = f"{path}: meta is not JSON ({err})."
            raise ModelFormatError(msg) from err
        trees = TreeEnsemble.from_arrays(data)
        table = {k: data[k] for k in EPHEMERIS_KEYS if k in data} or None
        network = Network.from_arrays(data) if "net_params" in data else None
        try:
            model = cls(trees, meta, table, network)
        except ModelFormatError as err:
            raise ModelFormatError(f"{path}: {err}") from err
        model.path = path
        return model

    def save(self, path: str | os.PathLike, overwrite: bool = False) -> Path:
        """Write the model to an ``.npz`` file, atomically (see ``docs/model.rst``).

        Parameters
        ----------
        path : str or path-like
        overwrite : bool
            Replace an existing file.

        Returns
        -------
        path : `~pathlib.Path`

        Raises
        ------
        FileExistsError
            ``path`` exists and ``overwrite`` is False.
        """
        path = Path(path)
        refuse_overwrite(path, overwrite)
        arrays = {
            "kind": np.array(MODEL_KIND),
            "format_version": np.array(MODEL_VERSION),
            "features": np.array(FEATURES),
            "meta": np.array(json.dumps(self.meta, sort_keys=True)),
            **self.trees.to_arrays(),
            **({} if self.network is None else self.network.to_arrays()),
        }
        if self.ephemeris_table is not None:
            arrays["ephemeris_jd0"] = np.array(float(self.ephemeris_table["ephemeris_jd0"]))
            arrays["ephemeris_step"] = np.array(float(self.ephemeris_table["ephemeris_step"]))
            arrays["ephemeris_xyz"] = np.asarray(
                self.ephemeris_table["ephemeris_xyz"], dtype=np.float32
            )
        with atomic_write(path) as tmp, open(tmp, "wb") as f:
            np.savez_compressed(f, **arrays)
        return path

    # -------------------------------------------------------------- geometry
    @property
    def relative_error(self) -> float:
        """The model's own error as a fraction of the calibrated scattered light.

        Measured in the leave-one-sector-out validation of the training
        (``meta["validation"]["relative_error"]``); 0.2 when unknown.
        """
        return float(self.meta.get("validation", {}).get("relative_error", 0.2))

    def embedded_ephemeris(self):
        """The TESS positions embedded in the file, as a Horizons-like ephemeris.

        Returns
        -------
        ephemeris : `TableEphemeris`

        Raises
        ------
        ScatterLightError
            The file carries no position table.
        """
        if self._ephemeris is None:
            if self.ephemeris_table is None:
                msg = (
                    "This model file carries no TESS position table; pass ephemeris= (a JPL "
                    "Horizons table of TESS, or 'spice' for lkspacecraft's kernels)."
                )
                raise ScatterLightError(msg)
            table = self.ephemeris_table
            self._ephemeris = TableEphemeris(
                float(table["ephemeris_jd0"]),
                float(table["ephemeris_step"]),
                np.asarray(table["ephemeris_xyz"], dtype=float),
            )
        return self._ephemeris

    def _resolve_ephemeris(self, ephemeris):
        if ephemeris is None:
            return self.embedded_ephemeris()
        from . import geometry

        if isinstance(ephemeris, geometry.Ephemeris | TableEphemeris):
            return ephemeris
        if isinstance(ephemeris, str) and ephemeris.lower() == "spice":
            return geometry.SpiceEphemeris()
        if isinstance(ephemeris, str | os.PathLike | list | tuple):
            paths = [ephemeris] if isinstance(ephemeris, str | os.PathLike) else ephemeris
            return geometry.read_ephemerides(paths)
        msg = (
            "ephemeris must be None (the model's table), 'spice', a Horizons table path (or "
            f"list of paths) or an Ephemeris, not {type(ephemeris).__name__}."
        )
        raise TypeError(msg)

    def pointing(self, sector: int, camera: int, ccd: int):
        """The CCD's pointing from tesswcs' archival WCS (cached).

        Raises
        ------
        ScatterLightError
            tesswcs is missing or does not know the sector.
        """
        key = (check_sector(sector), *check_camera_ccd(camera, ccd))
        if key not in self._pointings:
            from .geometry import CCDPointing

            self._pointings[key] = CCDPointing.from_sector(*key)
        return self._pointings[key]

    def features(
        self, sector, camera, ccd, row, column, time, ephemeris=None, pointing=None
    ) -> np.ndarray:
        """The feature matrix at pixels and times.

        Parameters are those of `predict`; ``pointing`` a
        `~lk_scatterlight.geometry.CCDPointing` (default from tesswcs).

        Returns
        -------
        X : ndarray, shape (ntime * npix, len(FEATURES))
            Time-major: row ``i * npix + j`` is time ``i``, pixel ``j`` (pixels
            flattened in C order).
        """
        from .geometry import compute_geometry

        camera, ccd = check_camera_ccd(camera, ccd)
        if pointing is None:
            pointing = self.pointing(sector, camera, ccd)
        row, column = np.broadcast_arrays(
            np.asarray(row, dtype=float).reshape(-1), np.asarray(column, dtype=float).reshape(-1)
        )
        time = np.atleast_1d(np.asarray(time, dtype=float)).reshape(-1)
        ephemeris = self._resolve_ephemeris(ephemeris)
        geo = compute_geometry(time, row, column, pointing, ephemeris)
        jd = geo.spacecraft_time + BTJD_OFFSET
        earth = ephemeris.body_vectors(jd)["earth"]
        return geometry_features(
            geo.earth.angle,
            camera_azimuth(geo.earth.azimuth, ccd),
            geo.earth.distance[:, None],
            geo.moon.angle,
            camera_azimuth(geo.moon.azimuth, ccd),
            geo.moon.distance[:, None],
            camera,
            geo.earth.boresight_angle[:, None],
            camera_azimuth(geo.earth.boresight_azimuth, ccd)[:, None],
            earth_illuminated_fraction(earth, jd)[:, None],
            earth_lit_longitude(earth, jd)[:, None],
        )

    def check_domain(self, X: np.ndarray, camera: int | None = None) -> list[str]:
        """Where features fall outside the training data; warns `ScatterLightWarning` if any.

        Returns
        -------
        problems : list of str
            One sentence per feature outside its trained range (with 2 % slack),
            or camera never seen in training.
        """
        problems = []
        ranges = self.meta.get("feature_ranges", {})
        for k, name in enumerate(FEATURES):
            if name not in ranges or name == "camera" or not X.size:
                continue
            lo, hi = ranges[name]
            slack = 0.02 * (hi - lo)
            v = X[:, k]
            if np.nanmin(v) < lo - slack or np.nanmax(v) > hi + slack:
                problems.append(
                    f"{name} {np.nanmin(v):.4g}..{np.nanmax(v):.4g} (trained on {lo:.4g}..{hi:.4g})"
                )
        cameras = self.meta.get("cameras")
        if camera is not None and cameras and int(camera) not in cameras:
            problems.append(f"camera {camera} (trained on cameras {cameras})")
        if problems:
            warnings.warn(
                "The scattered-light model is used outside its training data: "
                + "; ".join(problems)
                + ". Its prediction there is an extrapolation (constant beyond the last "
                "split); check it against the TPF's background.",
                ScatterLightWarning,
                stacklevel=3,
            )
        return problems

    def predict_features(self, X: np.ndarray) -> np.ndarray:
        """Scattered light [e-/s] for each row of a feature matrix (`features`), >= 0."""
        return blend(self.trees, self.network, X)

    def predict(
        self,
        sector: int,
        camera: int,
        ccd: int,
        row,
        column,
        time,
        ephemeris=None,
        *,
        pointing=None,
        grid_step: float | None = GRID_STEP,
    ) -> np.ndarray:
        """Predicted scattered light at pixels and times [e-/s per pixel].

        Parameters
        ----------
        sector, camera, ccd : int
        row, column : array of float, broadcastable to a pixel shape ``P``
            1-based CCD pixels (columns counting the 44 collateral columns),
            e.g. ``tpf.row + arange(nrow)[:, None]`` and
            ``tpf.column + arange(ncol)``.
        time : float or array of float, shape ``T``
            BTJD [d] (TDB), as ``tpf.time.value``.
        ephemeris : None, 'spice', path(s) or `~lk_scatterlight.geometry.Ephemeris`
            TESS's position: None uses the table in the model file (offline);
            ``"spice"`` lkspacecraft's kernels (downloaded once); paths are JPL
            Horizons vector tables.
        pointing : `~lk_scatterlight.geometry.CCDPointing`, optional
            Default: tesswcs' archival WCS of the sector, camera and CCD.
        grid_step : float or None
            The model is evaluated on a grid of at most this spacing [px]
            spanning the pixels and interpolated bilinearly to them when that
            grid has fewer points than the pixels (the geometry changes by
            ~0.01 deg per pixel); None evaluates every pixel.

        Returns
        -------
        flux : ndarray, shape ``T + P``
            Scattered light [e-/s per pixel], >= 0.

        Raises
        ------
        ScatterLightError
            The times are outside the ephemeris, or the sector's pointing is
            unknown.
        ValueError
            Bad sector, camera or CCD numbers.

        Warns
        -----
        ScatterLightWarning
            The geometry lies outside the training data (`check_domain`).
        """
        sector = check_sector(sector)
        camera, ccd = check_camera_ccd(camera, ccd)
        row, column = np.broadcast_arrays(np.asarray(row, float), np.asarray(column, float))
        shape_p = row.shape
        time = np.asarray(time, dtype=float)
        shape_t = time.shape
        t = time.reshape(-1)
        if not np.all(np.isfinite(t)):
            msg = "time has NaN or infinite values; drop them (e.g. tpf.time[finite])."
            raise ScatterLightError(msg)
        if not (np.all(np.isfinite(row)) and np.all(np.isfinite(column))):
            msg = "row and column must be finite pixel coordinates."
            raise ScatterLightError(msg)
        r, c = row.reshape(-1), column.reshape(-1)
        nodes_r, nodes_c = _grid(r, grid_step), _grid(c, grid_step)
        use_grid = grid_step is not None and nodes_r.size * nodes_c.size < r.size
        if use_grid:
            gr, gc = np.meshgrid(nodes_r, nodes_c, indexing="ij")
            X = self.features(sector, camera, ccd, gr, gc, t, ephemeris, pointing)
        else:
            X = self.features(sector, camera, ccd, r, c, t, ephemeris, pointing)
        self.check_domain(X, camera)
        values = self.predict_features(X)
        if use_grid:
            values = _bilinear(
                values.reshape(t.size, nodes_r.size, nodes_c.size), nodes_r, nodes_c, r, c
            )
        return values.reshape(shape_t + shape_p)

    def field(self, sector: int, camera: int, ccd: int, ephemeris=None) -> ModelField:
        """This model as a scattered-light field of one CCD, for the simulator.

        The geometry-driven simulator mode: ``lk_scatterlight.simulate.make_tpf(
        model.field(1, 4, 3), row=..., column=..., sector=1, camera=4, ccd=3)``
        makes a synthetic TPF whose scattered light follows the real Earth and
        Moon of that sector (the model's prediction), instead of the analytic
        `~lk_scatterlight.simulate.ScatteredLightField`.

        Returns
        -------
        field : `ModelField`
        """
        return ModelField(self, sector, camera, ccd, ephemeris)


class ModelField:
    """A model's prediction on one CCD as ``field(time, rows, columns) -> (ntime, nrow, ncol)``.

    See `ScatterLightModel.field`.
    """

    def __init__(self, model: ScatterLightModel, sector, camera, ccd, ephemeris=None) -> None:
        self.model = model
        self.sector = check_sector(sector)
        self.camera, self.ccd = check_camera_ccd(camera, ccd)
        self.ephemeris = ephemeris

    def __repr__(self) -> str:
        return (
            f"ModelField({self.model!r}, sector {self.sector} camera {self.camera} CCD {self.ccd})"
        )

    def __call__(self, time, rows, columns) -> np.ndarray:
        """Scattered light [e-/s] at times (ntime,) on the grid rows (nrow,) x columns (ncol,)."""
        rows = np.asarray(rows, dtype=float).reshape(-1, 1)
        columns = np.asarray(columns, dtype=float).reshape(1, -1)
        time = np.asarray(time, dtype=float).reshape(-1)
        return self.model.predict(
            self.sector, self.camera, self.ccd, rows, columns, time, self.ephemeris
        )


def _ranges(values) -> str:
    values = sorted(set(int(v) for v in values))
    parts, start = [], values[0]
    for a, b in zip(values, values[1:] + [None], strict=True):
        if b != a + 1:
            parts.append(f"{start}" if start == a else f"{start}-{a}")
            start = b
    return ",".join(parts)


def _grid(values: np.ndarray, step: float | None) -> np.ndarray:
    """Evenly spaced nodes spanning ``values`` with spacing at most ``step``."""
    lo, hi = float(values.min()), float(values.max())
    if step is None or hi == lo:
        return np.array([lo])
    n = int(np.ceil((hi - lo) / step)) + 1
    return np.linspace(lo, hi, max(n, 2))


def _bilinear(grid_values, nodes_r, nodes_c, r, c) -> np.ndarray:
    """Bilinear interpolation of (ntime, nr, nc) node values to pixels (r, c) -> (ntime, npix)."""

    def weights(nodes, x):
        if nodes.size == 1:
            z = np.zeros(x.size, dtype=int)
            return z, z, np.zeros(x.size)
        i = np.clip(np.searchsorted(nodes, x, side="right") - 1, 0, nodes.size - 2)
        w = (x - nodes[i]) / (nodes[i + 1] - nodes[i])
        return i, i + 1, w

    r0, r1, wr = weights(nodes_r, r)
    c0, c1, wc = weights(nodes_c, c)
    flat = grid_values.reshape(grid_values.shape[0], -1)
    nc = nodes_c.size
    # a (nodes x pixels) weight matrix: one matrix product does every time at once
    matrix = np.zeros((flat.shape[1], r.size))
    pix = np.arange(r.size)
    for rows, cols, w in (
        (r0, c0, (1 - wr) * (1 - wc)),
        (r0, c1, (1 - wr) * wc),
        (r1, c0, wr * (1 - wc)),
        (r1, c1, wr * wc),
    ):
        np.add.at(matrix, (rows * nc + cols, pix), w)
    return flat @ matrix


# ---------------------------------------------------------------------- calibration
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
    from .ccd import SCIENCE_COLUMNS, SCIENCE_ROWS

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

        from .cube import CubeEvaluation

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

        from .cube import CubeEvaluation

        time, result = self._result(time, row, column)
        weight = np.ones(result.scattered.shape[1:]) if mask is None else np.asarray(mask, float)
        unit = u.electron / u.s
        return CubeEvaluation(
            np.einsum("tij,ij->t", result.scattered, weight) * unit,
            np.einsum("tij,ij->t", result.background_err, weight) * unit,
            np.ones(time.size, bool),
        )
