"""Fitting the trees and the networks of the learned model, exported to plain arrays.

scikit-learn is needed here only (``pip install 'lk_scatterlight[train]'``).
"""

from __future__ import annotations

import numpy as np

from ...exceptions import ScatterLightError
from ...model import (
    FEATURES,
    TARGET_OFFSET,
    Network,
    TreeEnsemble,
)
from .samples import Samples

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

    from ...model import network_inputs, stack_networks

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
