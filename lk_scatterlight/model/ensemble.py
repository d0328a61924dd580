"""The model's learners as plain arrays evaluated with numpy: regression trees and a network.

`TreeEnsemble` and `Network` convert to and from a model file's arrays; `blend`
averages them in log space.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .features import FEATURES
from .fileformat import ModelFormatError

__all__ = [
    "TARGET_OFFSET",
    "TreeEnsemble",
    "NETWORK_INPUTS",
    "Network",
    "network_inputs",
    "stack_networks",
    "blend",
]

log = logging.getLogger(__name__)

#: Trees fitted to ``log(y + TARGET_OFFSET)`` predict ``exp(f) - TARGET_OFFSET`` [e-/s].
TARGET_OFFSET = 10.0


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


def stack_networks(networks: Sequence[Network]) -> Network:
    """The mean of several networks' outputs, as one network with block-diagonal weights.

    The networks must share their depth and input standardisation (fitted on
    the same samples with different seeds, say). Layer by layer, the members'
    hidden units are placed side by side, with zero weights between members;
    the output layer carries each member's weights over their number. The
    result equals the members' mean exactly, is stored like any network (no
    change to the model file).

    Parameters
    ----------
    networks : sequence of `Network`

    Returns
    -------
    network : `Network`

    Raises
    ------
    ValueError
        The networks differ in depth or input standardisation.
    """
    first = networks[0]
    if len(networks) == 1:
        return first
    for net in networks[1:]:
        same = net.sizes.size == first.sizes.size and net.sizes[0] == first.sizes[0]
        if not same or not (
            np.array_equal(net.mean, first.mean) and np.array_equal(net.scale, first.scale)
        ):
            msg = "Only networks of the same depth and input standardisation can be stacked."
            raise ValueError(msg)
    n = len(networks)
    per_layer = list(zip(*(net.layers() for net in networks), strict=True))
    last = len(per_layer) - 1
    params = []
    for k, members in enumerate(per_layer):
        weights, biases = [w for w, _ in members], [b for _, b in members]
        if k == last:  # the output: the mean of the members'
            w = np.mean(weights, axis=0) if k == 0 else np.concatenate(weights, axis=0) / n
            params += [w.ravel(), np.mean(biases, axis=0)]
        else:  # hidden units side by side, no weight between members
            w = np.concatenate(weights, axis=1) if k == 0 else _block_diagonal(weights)
            params += [w.ravel(), np.concatenate(biases)]
    sizes = np.array([first.sizes[0], *(sum(w.shape[1] for w, _ in m) for m in per_layer[:-1]), 1])
    offset = float(np.mean([net.offset for net in networks]))
    return Network(sizes, np.concatenate(params), first.mean.copy(), first.scale.copy(), offset)


def _block_diagonal(blocks: Sequence[np.ndarray]) -> np.ndarray:
    out = np.zeros((sum(b.shape[0] for b in blocks), sum(b.shape[1] for b in blocks)))
    r = c = 0
    for block in blocks:
        out[r : r + block.shape[0], c : c + block.shape[1]] = block
        r, c = r + block.shape[0], c + block.shape[1]
    return out


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
