"""Training samples: cube training sets and SPOC light curves read into one table.

The TESS position table a model file embeds (`ephemeris_table`) is made here too.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ...ccd import BTJD_OFFSET, check_camera_ccd, check_sector
from ...exceptions import ScatterLightError
from ...geometry import (
    CCDPointing,
    Ephemeris,
    HorizonsEphemeris,
    _builtin_body,
    compute_geometry,
)
from ...model import (
    FEATURES,
    camera_azimuth,
    earth_illuminated_fraction,
    earth_lit_longitude,
    geometry_features,
    segment_ids,
)

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
    from ..dataset import read_dataset

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


def feature_ranges(samples: Samples) -> dict[str, list[float]]:
    """Range of each feature over the training samples (recorded in the model)."""
    return {
        name: [float(np.nanmin(samples.X[:, k])), float(np.nanmax(samples.X[:, k]))]
        for k, name in enumerate(FEATURES)
    }
