"""`ScatterLightModel`: loading, saving and predicting the scattered light of any pixel."""

from __future__ import annotations

import json
import logging
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from ..ccd import BTJD_OFFSET, check_camera_ccd, check_sector
from ..exceptions import ModelNotFoundError, ScatterLightError, ScatterLightWarning
from ..utils import atomic_write, refuse_overwrite
from .ensemble import Network, TreeEnsemble, blend
from .ephemeris import TableEphemeris
from .features import (
    FEATURES,
    camera_azimuth,
    earth_illuminated_fraction,
    earth_lit_longitude,
    geometry_features,
)
from .fileformat import (
    DEFAULT_MODEL,
    EPHEMERIS_KEYS,
    MODEL_KIND,
    MODEL_VERSION,
    ModelFormatError,
    check_keys,
    default_model_path,
)

__all__ = ["GRID_STEP", "ScatterLightModel", "ModelField"]

log = logging.getLogger(__name__)

#: Pixel grid step for spatial interpolation of predictions [px] (see `ScatterLightModel.predict`).
GRID_STEP = 64.0


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
            from ..registry import fetch_model, is_model_name

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
        check_keys(data, str(path))
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
        from .. import geometry

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
            from ..geometry import CCDPointing

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
        from ..geometry import compute_geometry

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
