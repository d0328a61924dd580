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
"""

from __future__ import annotations

import glob
import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..ccd import BTJD_OFFSET, check_camera_ccd, check_sector
from ..exceptions import ScatterLightError
from ..geometry import (
    CCDPointing,
    Ephemeris,
    HorizonsEphemeris,
    _builtin_body,
    compute_geometry,
    read_ephemerides,
)
from ..model import (
    FEATURES,
    TARGET_OFFSET,
    Network,
    ScatterLightModel,
    TreeEnsemble,
    blend,
    camera_azimuth,
    earth_illuminated_fraction,
    earth_lit_longitude,
    fit_calibration,
    geometry_features,
    segment_ids,
)

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

log = logging.getLogger(__name__)

#: Step of the TESS position table embedded in a model file [h]: a cubic spline
#: through 3-hourly geocentric positions is within 15 km (0.012 deg seen from
#: perigee) of the 1-hourly Horizons tables.
EPHEMERIS_STEP_HOURS = 3.0


@dataclass
class Samples:
    """Training samples: features, target and where each sample came from.

    Attributes
    ----------
    X : ndarray, shape (n, len(FEATURES)), float32
        Geometry features (`lk_scatterlight.model.geometry_features`).
    y : ndarray, shape (n,)
        Scattered light per pixel [e-/s].
    weight : ndarray, shape (n,)
        Sample weights (each source sums to the same total weight).
    group : ndarray of int, shape (n,)
        Index of the source in ``sources``.
    time : ndarray, shape (n,)
        BTJD of each sample [d].
    sources : list of dict
        One per file: ``name``, ``kind`` (``"lightcurve"`` or ``"dataset"``),
        ``sector``, ``camera``, ``ccd``, ``row``, ``column`` (light curves),
        ``npix``.
    """

    X: np.ndarray
    y: np.ndarray
    weight: np.ndarray
    group: np.ndarray
    time: np.ndarray
    sources: list[dict] = field(default_factory=list)

    def __len__(self) -> int:
        return int(self.y.size)

    @property
    def sector(self) -> np.ndarray:
        """Sector of each sample."""
        return np.array([s["sector"] for s in self.sources], dtype=int)[self.group]

    def subset(self, mask) -> Samples:
        """The samples where ``mask`` is True (sources kept as they are)."""
        mask = np.asarray(mask, dtype=bool)
        return Samples(
            self.X[mask],
            self.y[mask],
            self.weight[mask],
            self.group[mask],
            self.time[mask],
            self.sources,
        )

    @classmethod
    def concatenate(cls, parts: Sequence[Samples]) -> Samples:
        """One table of several sample tables (groups renumbered)."""
        if not parts:
            msg = "No training samples: give at least one dataset or light curve."
            raise ScatterLightError(msg)
        sources, groups, offset = [], [], 0
        for part in parts:
            sources += part.sources
            groups.append(part.group + offset)
            offset += len(part.sources)
        return cls(
            np.concatenate([p.X for p in parts]),
            np.concatenate([p.y for p in parts]),
            np.concatenate([p.weight for p in parts]),
            np.concatenate(groups),
            np.concatenate([p.time for p in parts]),
            sources,
        )


# ---------------------------------------------------------------------- ephemerides
def ephemeris_table(
    ephemeris: HorizonsEphemeris, step_hours: float = EPHEMERIS_STEP_HOURS
) -> dict[str, np.ndarray]:
    """The compact geocentric TESS position table embedded in a model file.

    Parameters
    ----------
    ephemeris : `~lk_scatterlight.geometry.HorizonsEphemeris`
    step_hours : float
        Sample step [h].

    Returns
    -------
    table : dict
        ``ephemeris_jd0`` (first Julian date, TDB), ``ephemeris_step`` [d] and
        ``ephemeris_xyz`` (n, 3) float32: TESS relative to the Earth's centre,
        ICRF equatorial [km], the Earth from astropy's built-in ephemeris.
    """
    lo, hi = ephemeris.coverage
    step = step_hours / 24.0
    jd = lo + step * np.arange(int(np.floor((hi - lo) / step)) + 1)
    position = ephemeris._position(jd)
    if ephemeris.center == "ssb":
        position = position - _builtin_body("earth", jd, "builtin")
    return {
        "ephemeris_jd0": np.array(float(jd[0])),
        "ephemeris_step": np.array(step),
        "ephemeris_xyz": position.astype(np.float32),
    }


# ---------------------------------------------------------------------- samples
def floor_per_orbit(time, values, percentile: float = 2.0) -> np.ndarray:
    """``values`` minus their ``percentile`` within each orbit (segments split at gaps > 0.5 d)."""
    time = np.asarray(time, dtype=float)
    values = np.asarray(values, dtype=float)
    out = np.empty_like(values)
    seg = segment_ids(time)
    for s in np.unique(seg):
        m = seg == s
        out[m] = values[m] - np.nanpercentile(values[m], percentile)
    return out


def _bin(time, values, minutes: float) -> tuple[np.ndarray, np.ndarray]:
    """Median of ``values`` in bins of ``minutes`` (empty bins dropped)."""
    width = minutes / 1440.0
    index = np.floor((time - time[0]) / width).astype(np.int64)
    order = np.argsort(index, kind="stable")
    index, time, values = index[order], time[order], values[order]
    starts = np.flatnonzero(np.r_[True, np.diff(index) > 0])
    ends = np.r_[starts[1:], index.size]
    t = np.array([np.median(time[a:b]) for a, b in zip(starts, ends, strict=True)])
    v = np.array([np.median(values[a:b]) for a, b in zip(starts, ends, strict=True)])
    return t, v


def read_lightcurve(path: str | os.PathLike, bin_minutes: float = 30.0) -> dict:
    """SPOC's per-pixel background of a light curve file, binned in time.

    Parameters
    ----------
    path : str or path-like
        A SPOC (or TESS-SPOC) light curve with ``SAP_BKG`` and an ``APERTURE``
        extension.
    bin_minutes : float
        Time bin [min]; 0 keeps every cadence.

    Returns
    -------
    lc : dict
        ``time`` (BTJD), ``background`` [e-/s per pixel], ``sector``,
        ``camera``, ``ccd``, ``row``, ``column`` (aperture centre, 1-based CCD
        pixels), ``npix`` (aperture pixels), ``name``.

    Raises
    ------
    ScatterLightError
        The file lacks SAP_BKG, the aperture or its position keywords.
    """
    from astropy.io import fits

    path = Path(path)
    try:
        with fits.open(path) as hdul:
            primary = hdul[0].header
            table = hdul[1].data
            names = hdul[1].columns.names
            aperture = np.asarray(hdul["APERTURE"].data)
            aheader = hdul["APERTURE"].header
            if "SAP_BKG" not in names:
                msg = f"{path.name}: no SAP_BKG column; is it a SPOC light curve?"
                raise ScatterLightError(msg)
            time = np.asarray(table["TIME"], dtype=float)
            bkg = np.asarray(table["SAP_BKG"], dtype=float)
            quality = np.asarray(table["QUALITY"], dtype=np.int64)
    except (OSError, KeyError) as err:
        msg = f"{path}: not a readable SPOC light curve with an APERTURE extension ({err})."
        raise ScatterLightError(msg) from err
    try:
        sector = check_sector(primary["SECTOR"])
        camera, ccd = check_camera_ccd(primary["CAMERA"], primary["CCD"])
        column0, row0 = float(aheader["CRVAL1P"]), float(aheader["CRVAL2P"])
    except KeyError as err:
        msg = f"{path.name}: missing header keyword {err} (SECTOR, CAMERA, CCD, CRVAL1P/2P)."
        raise ScatterLightError(msg) from err
    inside = (aperture & 2) > 0
    if not inside.any():
        msg = f"{path.name}: the APERTURE extension marks no pixel as in the aperture (bit 2)."
        raise ScatterLightError(msg)
    rows, cols = np.nonzero(inside)
    npix = int(inside.sum())
    # Hard quality flags (attitude tweak, safe mode, coarse point, desaturation, manual
    # exclude, impulsive outlier): the SPOC background is unreliable there.
    bad = quality & (1 | 2 | 4 | 8 | 32 | 128 | 1024) != 0
    ok = np.isfinite(time) & np.isfinite(bkg) & ~bad
    time, bkg = time[ok], bkg[ok] / npix
    if bin_minutes > 0:
        time, bkg = _bin(time, bkg, bin_minutes)
    return {
        "time": time,
        "background": bkg,
        "sector": sector,
        "camera": camera,
        "ccd": ccd,
        "row": row0 + rows.mean(),
        "column": column0 + cols.mean(),
        "npix": npix,
        "name": path.name,
    }


def lightcurve_samples(
    path: str | os.PathLike,
    ephemeris: Ephemeris,
    bin_minutes: float = 30.0,
    pointing: CCDPointing | None = None,
) -> Samples:
    """Training samples from a SPOC light curve's background (see the module docstring).

    Parameters
    ----------
    path : str or path-like
    ephemeris : `~lk_scatterlight.geometry.Ephemeris`
        Covering the sector.
    bin_minutes : float
    pointing : `~lk_scatterlight.geometry.CCDPointing`, optional
        Default: tesswcs' archival WCS of the sector, camera and CCD.

    Returns
    -------
    samples : `Samples`
    """
    lc = read_lightcurve(path, bin_minutes)
    if pointing is None:
        pointing = CCDPointing.from_sector(lc["sector"], lc["camera"], lc["ccd"])
    geo = compute_geometry(lc["time"], lc["row"], lc["column"], pointing, ephemeris)
    jd = geo.spacecraft_time + BTJD_OFFSET
    earth = ephemeris.body_vectors(jd)["earth"]
    X = geometry_features(
        geo.earth.angle,
        camera_azimuth(geo.earth.azimuth, lc["ccd"]),
        geo.earth.distance,
        geo.moon.angle,
        camera_azimuth(geo.moon.azimuth, lc["ccd"]),
        geo.moon.distance,
        lc["camera"],
        geo.earth.boresight_angle,
        camera_azimuth(geo.earth.boresight_azimuth, lc["ccd"]),
        earth_illuminated_fraction(earth, jd),
        earth_lit_longitude(earth, jd),
    )
    y = floor_per_orbit(lc["time"], lc["background"])
    n = y.size
    source = {k: lc[k] for k in ("name", "sector", "camera", "ccd", "row", "column", "npix")}
    source.update(kind="lightcurve", bin_minutes=bin_minutes, raw=lc["background"])
    return Samples(X, y, np.full(n, 1.0 / n), np.zeros(n, dtype=int), lc["time"], [source])


def dataset_samples(
    path: str | os.PathLike,
    max_samples: int = 50_000,
    rng: np.random.Generator | None = None,
    ephemeris: Ephemeris | None = None,
) -> Samples:
    """Training samples from a cube training set (``lk-scatterlight dataset``).

    Parameters
    ----------
    path : str or path-like
        ``.npz`` written by `~lk_scatterlight.builder.dataset.write_dataset`.
    max_samples : int
        Draw at most this many (time, bin) samples at random.
    rng : `numpy.random.Generator`, optional
        For the draw (default seed 0).
    ephemeris : `~lk_scatterlight.geometry.Ephemeris`
        Covering the cube's times: the Earth's lit fraction needs TESS's
        position (the other features come from the file's ``*_map`` arrays).

    Returns
    -------
    samples : `Samples`

    Raises
    ------
    ScatterLightError
        No ephemeris, or the cube has no finite value.
    """
    from .dataset import read_dataset

    if ephemeris is None:
        msg = (
            f"{Path(path).name}: the Earth's lit fraction (a model feature) needs an "
            "ephemeris (--ephemeris horizons FILE... or spice)."
        )
        raise ScatterLightError(msg)
    data = read_dataset(path)
    rng = np.random.default_rng(0) if rng is None else rng
    cube = np.asarray(data["scatter_cube"], dtype=float)
    finite = np.flatnonzero(np.isfinite(cube).ravel())
    if finite.size == 0:
        msg = f"{path}: the cube has no finite value."
        raise ScatterLightError(msg)
    pick = np.sort(rng.choice(finite, size=min(max_samples, finite.size), replace=False))
    it, ir, ic = np.unravel_index(pick, cube.shape)
    camera, ccd = int(data["camera"]), int(data["ccd"])

    def take(key):
        return np.asarray(data[key], dtype=float).reshape(-1)[pick]

    time = np.asarray(data["time"], dtype=float)
    plane_time = np.unique(it)
    jd = time[plane_time] + BTJD_OFFSET  # BTJD, within minutes of the spacecraft's time
    fraction, longitude = np.zeros(time.size), np.zeros(time.size)
    earth = ephemeris.body_vectors(jd)["earth"]
    fraction[plane_time] = earth_illuminated_fraction(earth, jd)
    longitude[plane_time] = earth_lit_longitude(earth, jd)
    X = geometry_features(
        take("earth_alt_map"),
        camera_azimuth(take("earth_az_map"), ccd),
        take("earth_dist_map"),
        take("moon_alt_map"),
        camera_azimuth(take("moon_az_map"), ccd),
        take("moon_dist_map"),
        camera,
        np.asarray(data["earth_alt"], dtype=float)[it],
        camera_azimuth(np.asarray(data["earth_az"], dtype=float)[it], ccd),
        fraction[it],
        longitude[it],
    )
    n = pick.size
    source = {
        "name": Path(path).name,
        "kind": "dataset",
        "sector": int(data["sector"]),
        "camera": camera,
        "ccd": ccd,
        "npix": int(cube.shape[1] * cube.shape[2]),
    }
    return Samples(
        X,
        cube.reshape(-1)[pick],
        np.full(n, 1.0 / n),
        np.zeros(n, dtype=int),
        time[it],
        [source],
    )


def expand_paths(paths: Iterable[str | os.PathLike]) -> list[Path]:
    """Files named, globbed or inside the folders given (``*.npz``, ``*.fits``)."""
    out: list[Path] = []
    for item in paths:
        path = Path(item)
        if path.is_dir():
            out += sorted(p for p in path.iterdir() if p.suffix in (".npz", ".fits", ".gz"))
        elif any(ch in str(item) for ch in "*?["):
            out += [Path(p) for p in sorted(glob.glob(str(item)))]
        elif path.is_file():
            out.append(path)
        else:
            msg = f"No training file or folder at {path}."
            raise FileNotFoundError(msg)
    return out


def load_samples(
    paths: Iterable[str | os.PathLike],
    ephemeris: Ephemeris | None = None,
    bin_minutes: float = 30.0,
    max_dataset_samples: int = 50_000,
    seed: int = 0,
    progress: bool = True,
) -> Samples:
    """Read every training file into one `Samples` table.

    Parameters
    ----------
    paths : iterable of str or path-like
        ``.npz`` cube training sets and SPOC light curve ``.fits`` files, or
        folders of them.
    ephemeris : `~lk_scatterlight.geometry.Ephemeris`, optional
        Needed for light curves.
    bin_minutes : float
        Time bin of light curves [min].
    max_dataset_samples : int
        Samples drawn from each cube training set.
    seed : int
        Seed of the draws.
    progress : bool
        Show a tqdm progress bar.

    Returns
    -------
    samples : `Samples`
    """
    from tqdm.auto import tqdm

    files = expand_paths(paths)
    rng = np.random.default_rng(seed)
    parts = []
    for path in tqdm(files, desc="reading training data", unit="file", disable=not progress):
        if ephemeris is None:
            kind = "cube training set" if path.suffix == ".npz" else "light curve"
            msg = (
                f"{path.name} is a {kind}: its geometry needs an ephemeris "
                "(--ephemeris horizons FILE... or spice)."
            )
            raise ScatterLightError(msg)
        if path.suffix == ".npz":
            parts.append(dataset_samples(path, max_dataset_samples, rng, ephemeris))
        else:
            parts.append(lightcurve_samples(path, ephemeris, bin_minutes))
    return Samples.concatenate(parts)


# ---------------------------------------------------------------------- fitting
#: Features each tree may combine (`FEATURES` names): the Earth's with the camera, the
#: Moon's with the camera, the Earth's brightness with its lit longitude. The log target is
#: then a sum of an Earth term, a Moon term and a rotation term: the light is their product.
INTERACTIONS = (
    (
        "earth_angle",
        "earth_azimuth",
        "earth_distance",
        "camera",
        "earth_limb_angle",
        "earth_brightness",
        "earth_boresight_angle",
        "earth_boresight_azimuth",
    ),
    ("moon_angle", "moon_azimuth", "moon_distance", "camera"),
    ("earth_brightness", "earth_lit_longitude"),
)

#: The error when scikit-learn, which training needs, is not installed.
_NO_SKLEARN = "Training needs scikit-learn: pip install 'lk_scatterlight[train]'."

#: Default hyper-parameters of the gradient boosting.
DEFAULT_PARAMS = {
    "max_iter": 100,
    "learning_rate": 0.15,
    "max_leaf_nodes": 15,
    "max_depth": 6,
    "min_samples_leaf": 40,
    "l2_regularization": 1.0,
    "interaction_cst": [[FEATURES.index(f) for f in group] for group in INTERACTIONS],
}


def fit_model(
    samples: Samples,
    seed: int = 0,
    params: dict | None = None,
    log_target: bool = True,
    progress: bool = True,
    threads: int = 1,
) -> TreeEnsemble:
    """Fit histogram gradient boosting to samples and export the trees.

    Parameters
    ----------
    samples : `Samples`
    seed : int
        Random state of the fit (deterministic: same data and seed, same trees).
    params : dict, optional
        Overrides of `DEFAULT_PARAMS` (scikit-learn's
        ``HistGradientBoostingRegressor`` arguments).
    log_target : bool
        Fit ``log(y + TARGET_OFFSET)`` rather than ``y``: the scattered light
        spans three decades, and relative errors matter at every level.
    progress : bool
        Show a progress bar (updated when the fit ends).
    threads : int
        OpenMP threads of scikit-learn (default 1).

    Returns
    -------
    trees : `~lk_scatterlight.model.TreeEnsemble`

    Raises
    ------
    ScatterLightError
        scikit-learn is not installed.
    """
    try:
        from sklearn.ensemble import HistGradientBoostingRegressor
    except ImportError as err:
        raise ScatterLightError(_NO_SKLEARN) from err
    from threadpoolctl import threadpool_limits
    from tqdm.auto import tqdm

    settings = dict(DEFAULT_PARAMS, **(params or {}))
    n_iter = int(settings["max_iter"])
    y = np.asarray(samples.y, dtype=float)
    target = np.log(np.clip(y, 0.0, None) + TARGET_OFFSET) if log_target else y
    estimator = HistGradientBoostingRegressor(early_stopping=False, random_state=seed, **settings)
    # One fit (growing the ensemble in warm-started steps to show progress costs 7x more);
    # reading the files and the validation folds have their own progress bars.
    bar = tqdm(total=n_iter, desc="boosting", unit="tree", disable=not progress)
    # one thread: deterministic and polite on shared machines (the data are small)
    with bar, threadpool_limits(limits=threads):
        estimator.fit(samples.X, target, sample_weight=samples.weight)
        bar.update(n_iter)
    return export_trees(estimator, log_target=log_target)


#: Default settings of the network part (scikit-learn's ``MLPRegressor`` arguments).
NETWORK_PARAMS = {
    "hidden_layer_sizes": (32, 32),
    "alpha": 1e-3,
    "batch_size": 256,
    "learning_rate_init": 1e-3,
    "max_iter": 300,
    "tol": 1e-6,
    "n_iter_no_change": 30,
}
#: Networks averaged by `fit_network` (seeds ``seed``, ``seed + 1``, ...). One network's
#: held-out error depends on its seed (by up to 3 % of a light curve's range in the
#: leave-one-sector-out validation); their mean does less (docs/model.rst, "Validation").
NETWORK_MEMBERS = 3


def fit_network(
    samples: Samples,
    seed: int = 0,
    params: dict | None = None,
    threads: int = 1,
    members: int | None = None,
) -> Network:
    """Fit small neural networks to ``log(y + TARGET_OFFSET)`` and export their mean.

    The smooth counterpart of the trees (`fit_model`): it extrapolates the
    ramps of close approaches and perigees where the trees stay constant, and
    the two are averaged (`lk_scatterlight.model.blend`). ``members``
    networks are fitted with the seeds ``seed``, ``seed + 1``, ... and
    averaged (`lk_scatterlight.model.stack_networks`): what one network
    predicts for an unseen sector depends on its seed.

    Parameters
    ----------
    samples : `Samples`
    seed : int
        Random state of the initial weights and of the batches (deterministic).
    params : dict, optional
        Overrides of `NETWORK_PARAMS`.
    threads : int
        BLAS threads (default 1).
    members : int, optional
        Number of networks averaged; default `NETWORK_MEMBERS`.

    Returns
    -------
    network : `~lk_scatterlight.model.Network`

    Raises
    ------
    ScatterLightError
        scikit-learn is not installed.
    """
    try:
        from sklearn.neural_network import MLPRegressor
    except ImportError as err:
        raise ScatterLightError(_NO_SKLEARN) from err
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from threadpoolctl import threadpool_limits

    from ..model import network_inputs, stack_networks

    members = NETWORK_MEMBERS if members is None else int(members)
    if members < 1:
        msg = f"members must be at least 1, not {members}."
        raise ValueError(msg)
    Z = network_inputs(samples.X)
    mean, scale = Z.mean(axis=0), Z.std(axis=0)
    scale[scale == 0] = 1.0  # a camera never seen: its column stays 0
    target = np.log(np.clip(np.asarray(samples.y, dtype=float), 0.0, None) + TARGET_OFFSET)
    offset = float(np.average(target, weights=samples.weight))
    settings = dict(NETWORK_PARAMS, **(params or {}))
    # weights rescaled to mean 1: the L2 penalty keeps its meaning whatever the sample count
    weight = samples.weight * (samples.weight.size / samples.weight.sum())
    networks = []
    for member in range(members):
        net = MLPRegressor(random_state=seed + member, early_stopping=False, **settings)
        with threadpool_limits(limits=threads), warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)  # a fixed budget of epochs
            net.fit((Z - mean) / scale, target - offset, sample_weight=weight)
        sizes = [Z.shape[1], *[w.shape[1] for w in net.coefs_]]
        params_flat = np.concatenate(
            [np.r_[w.ravel(), b] for w, b in zip(net.coefs_, net.intercepts_, strict=True)]
        )
        networks.append(Network(np.asarray(sizes), params_flat, mean, scale, offset))
    return stack_networks(networks)


def export_trees(estimator, log_target: bool) -> TreeEnsemble:
    """Plain arrays of a fitted ``HistGradientBoostingRegressor`` (numerical features only).

    Parameters
    ----------
    estimator : `sklearn.ensemble.HistGradientBoostingRegressor`
    log_target : bool
        Whether it was fitted to ``log(y + TARGET_OFFSET)``.

    Returns
    -------
    trees : `~lk_scatterlight.model.TreeEnsemble`
    """
    feature, threshold, left, right, value, nan_left, offsets = [], [], [], [], [], [], [0]
    for (predictor,) in estimator._predictors:
        nodes = predictor.nodes
        if np.any(nodes["is_categorical"]):
            msg = "Categorical splits cannot be exported; use numerical features."
            raise ScatterLightError(msg)
        leaf = nodes["is_leaf"].astype(bool)
        feature.append(np.where(leaf, -1, nodes["feature_idx"]).astype(np.int16))
        threshold.append(nodes["num_threshold"].astype(np.float64))
        left.append(np.where(leaf, -1, nodes["left"]).astype(np.int32))
        right.append(np.where(leaf, -1, nodes["right"]).astype(np.int32))
        value.append(np.where(leaf, nodes["value"], 0.0).astype(np.float64))
        nan_left.append(nodes["missing_go_to_left"].astype(bool))
        offsets.append(offsets[-1] + nodes.size)
    return TreeEnsemble(
        feature=np.concatenate(feature),
        threshold=np.concatenate(threshold),
        left=np.concatenate(left),
        right=np.concatenate(right),
        value=np.concatenate(value),
        nan_left=np.concatenate(nan_left),
        offsets=np.asarray(offsets, dtype=np.int64),
        baseline=float(np.ravel(estimator._baseline_prediction)[0]),
        log_target=log_target,
    )


def feature_ranges(samples: Samples) -> dict[str, list[float]]:
    """Range of each feature over the training samples (recorded in the model)."""
    return {
        name: [float(np.nanmin(samples.X[:, k])), float(np.nanmax(samples.X[:, k]))]
        for k, name in enumerate(FEATURES)
    }


# ---------------------------------------------------------------------- validation
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


# ---------------------------------------------------------------------- the command
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

    from .. import __version__

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
