"""Positions of TESS, the Earth and the Moon: the `Ephemeris` interface and its sources.

`HorizonsEphemeris` interpolates a JPL Horizons vector table (the Earth and
the Moon from astropy's built-in ephemeris), `SpiceEphemeris` reads the SPICE
kernels of lkspacecraft; `read_ephemerides` merges tables and `make_ephemeris`
picks one from a short specification.
"""

from __future__ import annotations

import abc
import csv
import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from ..ccd import BTJD_OFFSET
from ..exceptions import ScatterLightError
from ..utils import atomic_write, refuse_overwrite

__all__ = [
    "AU_KM",
    "Ephemeris",
    "HorizonsEphemeris",
    "SpiceEphemeris",
    "make_ephemeris",
    "read_ephemerides",
]

#: Astronomical unit [km] (IAU 2012).
AU_KM = 149597870.7


def _as_jd_tdb(time) -> np.ndarray:
    """Julian dates (TDB) from a `~astropy.time.Time` or BTJD floats."""
    from astropy.time import Time

    if isinstance(time, Time):
        return np.atleast_1d(time.tdb.jd).astype(float)
    return np.atleast_1d(np.asarray(time, dtype=float)) + BTJD_OFFSET


class Ephemeris(abc.ABC):
    """Positions of TESS, the Earth and the Moon.

    Subclasses implement `spacecraft_position` and `body_vectors`; all times are
    Julian dates in TDB, all positions ICRF/J2000 equatorial [km].

    Attributes
    ----------
    description : str
        Where the positions come from (recorded in datasets).
    coverage : (float, float) or None
        First and last Julian date (TDB) the ephemeris covers.
    """

    description: str = ""
    coverage: tuple[float, float] | None = None

    def _check(self, jd: np.ndarray) -> np.ndarray:
        jd = np.atleast_1d(np.asarray(jd, dtype=float))
        if self.coverage is not None and jd.size:
            lo, hi = self.coverage
            if jd.min() < lo or jd.max() > hi:
                msg = (
                    f"Times BTJD {jd.min() - BTJD_OFFSET:.4f}..{jd.max() - BTJD_OFFSET:.4f} are "
                    f"outside the ephemeris {self.description} (BTJD {lo - BTJD_OFFSET:.4f}.."
                    f"{hi - BTJD_OFFSET:.4f}); use an ephemeris that covers the sector "
                    "(a longer Horizons table, or the full SPICE kernels of lkspacecraft)."
                )
                raise ScatterLightError(msg)
        return jd

    @abc.abstractmethod
    def spacecraft_position(self, jd_tdb) -> np.ndarray:
        """Barycentric position of TESS.

        Parameters
        ----------
        jd_tdb : array of float, shape (ntime,)
            Julian dates, TDB [d].

        Returns
        -------
        position : ndarray, shape (ntime, 3)
            ICRF position relative to the solar-system barycentre [km].
        """

    @abc.abstractmethod
    def body_vectors(self, jd_tdb) -> dict[str, np.ndarray]:
        """Vectors from TESS to the centres of the Earth and the Moon.

        Parameters
        ----------
        jd_tdb : array of float, shape (ntime,)
            Julian dates, TDB [d], at the spacecraft.

        Returns
        -------
        vectors : dict
            ``{"earth": (ntime, 3), "moon": (ntime, 3)}`` ICRF vectors [km].
        """

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.description})"


def _builtin_body(body: str, jd: np.ndarray, ephemeris: str) -> np.ndarray:
    """Barycentric ICRS position of a body [km], shape (n, 3), from astropy."""
    from astropy import units as u
    from astropy.coordinates import get_body_barycentric
    from astropy.time import Time

    pos = get_body_barycentric(body, Time(jd, format="jd", scale="tdb"), ephemeris=ephemeris)
    return np.asarray(pos.xyz.to_value(u.km)).T.reshape(-1, 3)


class HorizonsEphemeris(Ephemeris):
    """TESS positions from a JPL Horizons vector table, cubic-spline interpolated.

    Horizons serves the TESS trajectory (target ``-95``) as a table of state
    vectors (web interface: *Ephemeris Type* "Vector Table", *Coordinate
    Center* "Solar System Barycenter [500@0]" or "Geocentric [500@399]",
    *Reference frame* ICRF, *Reference plane* "x-y axes of reference frame"
    (equatorial), CSV output), or through astroquery (`from_astroquery`). The
    positions are interpolated with a cubic spline in time (error about 1 km
    at perigee with 30-minute steps, i.e. below 0.001 deg; 17 km with 1-hour
    steps). The Earth and the Moon come from astropy's
    ``body_ephemeris`` (``"builtin"`` works offline; a JPL kernel such as
    ``"de432s"`` is more precise but must be downloaded once).

    Parameters
    ----------
    jd_tdb : array of float, shape (n,)
        Sample times, Julian dates (TDB) [d], increasing.
    position_km : array of float, shape (n, 3)
        TESS position relative to ``center``, ICRF equatorial [km].
    center : {"ssb", "earth"}
        Solar-system barycentre or the Earth's centre.
    description : str
    body_ephemeris : str
        astropy solar-system ephemeris for the Earth and the Moon.

    Examples
    --------
    >>> from lk_scatterlight.geometry import HorizonsEphemeris
    >>> eph = HorizonsEphemeris.read("horizons_tess.csv")  # doctest: +SKIP
    >>> eph.body_vectors([2458326.0])["earth"]  # doctest: +SKIP
    """

    def __init__(
        self,
        jd_tdb,
        position_km,
        center: str = "ssb",
        description: str = "JPL Horizons table",
        body_ephemeris: str = "builtin",
    ):
        from scipy.interpolate import CubicSpline

        jd = np.asarray(jd_tdb, dtype=float)
        pos = np.asarray(position_km, dtype=float)
        if jd.ndim != 1 or pos.shape != (jd.size, 3) or jd.size < 4:
            msg = (
                f"A Horizons table needs at least 4 samples of (x, y, z); got times of shape "
                f"{jd.shape} and positions of shape {pos.shape}."
            )
            raise ScatterLightError(msg)
        if np.any(np.diff(jd) <= 0):
            msg = "Horizons sample times must be strictly increasing."
            raise ScatterLightError(msg)
        if center not in ("ssb", "earth"):
            msg = f"center must be 'ssb' or 'earth', got {center!r}."
            raise ScatterLightError(msg)
        self.jd, self.position, self.center = jd, pos, center
        self.body_ephemeris = body_ephemeris
        self.description = description
        self.coverage = (float(jd[0]), float(jd[-1]))
        self._jd0 = float(jd[0])
        self._spline = CubicSpline(jd - self._jd0, pos, axis=0)

    # -------------------------------------------------------------- reading
    @classmethod
    def read(cls, path: str | os.PathLike, body_ephemeris: str = "builtin") -> HorizonsEphemeris:
        """Read a Horizons vector table saved as CSV.

        Accepts Horizons' CSV layout (header, ``$$SOE``, one row per time,
        ``$$EOE``), also with the header lines commented out with ``#``. The
        columns must include ``JDTDB`` and ``X``, ``Y``, ``Z``; the units (au or
        km), the centre (solar-system barycentre or Earth) and the reference
        frame are read from the header.

        Parameters
        ----------
        path : str or path-like
        body_ephemeris : str
            See the class docstring.

        Returns
        -------
        ephemeris : `HorizonsEphemeris`

        Raises
        ------
        ScatterLightError
            The file is not a Horizons vector table of TESS in ICRF equatorial
            coordinates centred on the barycentre or the Earth.
        """
        path = Path(path)
        try:
            lines = path.read_text(errors="replace").splitlines()
        except OSError as err:
            msg = f"Cannot read the Horizons table {path}: {err}"
            raise ScatterLightError(msg) from err
        marks = [i for i, line in enumerate(lines) if line.lstrip("# ").startswith("$$SOE")]
        ends = [i for i, line in enumerate(lines) if line.lstrip("# ").startswith("$$EOE")]
        if not marks or not ends or ends[0] <= marks[0]:
            msg = (
                f"{path.name} is not a JPL Horizons table: no $$SOE ... $$EOE block. Save the "
                "vector table of TESS (-95) as CSV (see HorizonsEphemeris)."
            )
            raise ScatterLightError(msg)
        soe, eoe = marks[0], ends[0]
        header = {}
        for line in lines[:soe]:
            key, colon, value = line.lstrip("#").strip().partition(":")
            if colon:
                header.setdefault(key.strip().lower(), value.strip())
        names = None
        body = lines[soe + 1 : eoe]
        if body and "JDTDB" in body[0].upper():
            names, body = body[0], body[1:]
        else:
            for line in reversed(lines[:soe]):
                if "JDTDB" in line.upper():
                    names = line
                    break
        if names is None:
            msg = f"{path.name}: no column header with JDTDB; export the vector table as CSV."
            raise ScatterLightError(msg)
        columns = [c.strip().upper() for c in names.lstrip("#").split(",")]
        try:
            ix = [columns.index(k) for k in ("JDTDB", "X", "Y", "Z")]
        except ValueError as err:
            msg = f"{path.name}: columns {columns} lack JDTDB, X, Y or Z."
            raise ScatterLightError(msg) from err
        rows = [r for r in csv.reader(body) if r and r[0].strip()]
        try:
            data = np.array([[float(r[i]) for i in ix] for r in rows])
        except (ValueError, IndexError) as err:
            msg = f"{path.name}: cannot parse the rows between $$SOE and $$EOE ({err})."
            raise ScatterLightError(msg) from err
        target = header.get("target body name", "")
        if target and "-95" not in target and "TESS" not in target.upper():
            msg = f"{path.name} is a table of {target!r}, not of TESS (-95)."
            raise ScatterLightError(msg)
        center_text = header.get("center body name", "").lower()
        if "barycenter" in center_text and "solar" in center_text:
            center = "ssb"
        elif center_text.startswith("earth") or "(399)" in center_text:
            center = "earth"
        else:
            msg = (
                f"{path.name}: centre {center_text or 'unknown'!r}; use the solar-system "
                "barycentre (500@0) or the geocentre (500@399)."
            )
            raise ScatterLightError(msg)
        system = (header.get("reference frame", "") + header.get("coordinate systm", "")).lower()
        if "ecliptic" in system:
            msg = (
                f"{path.name} is in ecliptic coordinates; request the reference plane "
                "'x-y axes of reference frame' (equatorial ICRF)."
            )
            raise ScatterLightError(msg)
        units = header.get("output units", "au").lower()
        scale = 1.0 if units.startswith("km") else AU_KM
        description = (
            f"JPL Horizons table {path.name} (TESS -95 w.r.t. "
            f"{'solar-system barycentre' if center == 'ssb' else 'Earth'})"
        )
        return cls(data[:, 0], data[:, 1:] * scale, center, description, body_ephemeris)

    @classmethod
    def from_astroquery(
        cls, start, stop, step: str = "30m", body_ephemeris: str = "builtin"
    ) -> HorizonsEphemeris:  # pragma: no cover - needs the network
        """Query JPL Horizons for TESS' barycentric vectors with astroquery.

        Parameters
        ----------
        start, stop : float or `~astropy.time.Time`
            Range to cover; floats are BTJD [d]. Half a day is added on each side.
        step : str
            Horizons step size, e.g. ``"30m"``.
        body_ephemeris : str

        Returns
        -------
        ephemeris : `HorizonsEphemeris`

        Raises
        ------
        ScatterLightError
            astroquery is missing or Horizons cannot be reached.
        """
        from astropy.time import Time

        try:
            from astroquery.jplhorizons import Horizons
        except ImportError as err:
            msg = "Querying JPL Horizons needs astroquery: pip install astroquery."
            raise ScatterLightError(msg) from err
        jd0 = float(_as_jd_tdb(start)[0]) - 0.5
        jd1 = float(_as_jd_tdb(stop)[-1]) + 0.5
        epochs = {
            "start": Time(jd0, format="jd", scale="tdb").iso,
            "stop": Time(jd1, format="jd", scale="tdb").iso,
            "step": step,
        }
        try:
            table = Horizons(id="-95", location="@0", epochs=epochs).vectors(refplane="earth")
        except (OSError, ValueError) as err:  # requests' errors are OSErrors
            msg = f"JPL Horizons query for TESS failed ({err}); download the table by hand."
            raise ScatterLightError(msg) from err
        xyz = np.stack([np.asarray(table[k], dtype=float) for k in "xyz"], axis=1) * AU_KM
        jd = np.asarray(table["datetime_jd"], dtype=float)
        return cls(
            jd, xyz, "ssb", "JPL Horizons query (astroquery), TESS w.r.t. SSB", body_ephemeris
        )

    def write(self, path: str | os.PathLike, overwrite: bool = False) -> Path:
        """Save the table in Horizons' CSV layout (readable by `read`), atomically.

        Parameters
        ----------
        path : str or path-like
        overwrite : bool

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
        center = "Solar System Barycenter (0)" if self.center == "ssb" else "Earth (399)"
        lines = [
            "Target body name: TESS (spacecraft) (-95)  {written by lk_scatterlight}",
            f"Center body name: {center}",
            "Output units    : KM-S",
            "Reference frame : ICRF",
            "Coordinate systm: Earth Mean Equator and Equinox of Reference Epoch",
            "JDTDB, Calendar Date (TDB), X, Y, Z,",
            "$$SOE",
        ]
        for jd, (x, y, z) in zip(self.jd, self.position, strict=True):
            lines.append(f"{jd:.9f}, , {x:.6f}, {y:.6f}, {z:.6f},")
        lines.append("$$EOE")
        with atomic_write(path) as tmp:
            tmp.write_text("\n".join(lines) + "\n")
        return path

    # -------------------------------------------------------------- positions
    def _position(self, jd: np.ndarray) -> np.ndarray:
        return self._spline(self._check(jd) - self._jd0)

    def spacecraft_position(self, jd_tdb) -> np.ndarray:
        """Barycentric position of TESS [km], shape (ntime, 3) (see `Ephemeris`)."""
        jd = np.atleast_1d(np.asarray(jd_tdb, dtype=float))
        pos = self._position(jd)
        if self.center == "earth":
            pos = pos + _builtin_body("earth", jd, self.body_ephemeris)
        return pos

    def body_vectors(self, jd_tdb) -> dict[str, np.ndarray]:
        """TESS-to-Earth and TESS-to-Moon vectors [km] (see `Ephemeris`)."""
        jd = np.atleast_1d(np.asarray(jd_tdb, dtype=float))
        pos = self._position(jd)
        earth = _builtin_body("earth", jd, self.body_ephemeris)
        moon = _builtin_body("moon", jd, self.body_ephemeris)
        if self.center == "earth":
            return {"earth": -pos, "moon": moon - earth - pos}
        return {"earth": earth - pos, "moon": moon - pos}


def read_ephemerides(paths: Iterable[str | os.PathLike]) -> HorizonsEphemeris:
    """One Horizons ephemeris from several (possibly overlapping) vector tables.

    Parameters
    ----------
    paths : iterable of str or path-like
        JPL Horizons vector tables of TESS (CSV, see
        `~lk_scatterlight.geometry.HorizonsEphemeris.read`); folders
        are searched for ``*.csv``.

    Returns
    -------
    ephemeris : `~lk_scatterlight.geometry.HorizonsEphemeris`
        Barycentric; where tables overlap the later file's samples are kept.

    Raises
    ------
    ScatterLightError
        No table found, or tables with different centres.
    """
    files: list[Path] = []
    for path in paths:
        path = Path(path)
        files += sorted(path.glob("*.csv")) if path.is_dir() else [path]
    if not files:
        msg = "No Horizons tables found; give CSV files or a folder holding them."
        raise ScatterLightError(msg)
    tables = [HorizonsEphemeris.read(f) for f in files]
    tables.sort(key=lambda e: e.coverage[0])
    centres = {e.center for e in tables}
    if len(centres) > 1:
        msg = f"The Horizons tables mix centres {sorted(centres)}; use one centre."
        raise ScatterLightError(msg)
    jd, pos = [], []
    for k, eph in enumerate(tables):
        keep = np.ones(eph.jd.size, dtype=bool)
        if k + 1 < len(tables):
            keep = eph.jd < tables[k + 1].coverage[0]
        jd.append(eph.jd[keep])
        pos.append(eph.position[keep])
    names = ", ".join(f.name for f in files)
    return HorizonsEphemeris(
        np.concatenate(jd),
        np.concatenate(pos),
        centres.pop(),
        description=f"JPL Horizons tables {names}",
    )


class SpiceEphemeris(Ephemeris):
    """TESS, Earth and Moon positions from SPICE kernels, through lkspacecraft.

    lkspacecraft downloads and caches the TESS and planetary (DE440) kernels
    on first use. With ``lkspacecraft.enable_test_mode()`` it loads the
    truncated kernels it ships instead (sector 4 only, 2018-10-09 to
    2018-11-17), which needs no network. SPICE keeps its kernels in global
    state: the most recently created `SpiceEphemeris` (or lkspacecraft
    ``Spacecraft``) decides which kernels are loaded.

    Parameters
    ----------
    spacecraft : `lkspacecraft.TESSSpacecraft`, optional
        An existing spacecraft object; default a new one.

    Raises
    ------
    ScatterLightError
        lkspacecraft is not installed.
    """

    def __init__(self, spacecraft=None):
        if spacecraft is None:
            try:
                from lkspacecraft import TESSSpacecraft
            except ImportError as err:
                msg = (
                    "The SPICE ephemeris needs lkspacecraft: pip install lkspacecraft "
                    "(or pip install 'lk_scatterlight[builder]')."
                )
                raise ScatterLightError(msg) from err
            try:
                spacecraft = TESSSpacecraft()
            except OSError as err:  # urllib's errors when the kernels cannot be downloaded
                msg = (
                    f"Cannot load TESS SPICE kernels through lkspacecraft ({err}). They are "
                    "downloaded on first use; without network use a JPL Horizons table "
                    "(HorizonsEphemeris, --ephemeris horizons FILE)."
                )
                raise ScatterLightError(msg) from err
        self._spacecraft = spacecraft
        start, end = spacecraft.start_time, spacecraft.end_time
        self.coverage = (float(start.tdb.jd), float(end.tdb.jd))
        self.description = (
            f"SPICE kernels via lkspacecraft (BTJD {self.coverage[0] - BTJD_OFFSET:.2f}.."
            f"{self.coverage[1] - BTJD_OFFSET:.2f})"
        )

    def _relative(self, jd: np.ndarray, observer: str) -> np.ndarray:
        from astropy.time import Time

        try:
            from lkspacecraft.spacecraft import BadEphemeris
        except ImportError:  # pragma: no cover - a custom spacecraft object
            BadEphemeris = ValueError  # noqa: N806
        jd = self._check(jd)
        try:
            position = self._spacecraft.get_spacecraft_position(
                Time(jd, format="jd", scale="tdb"), observer=observer
            )
        except BadEphemeris as err:
            msg = f"SPICE has no TESS position for these times: {err}"
            raise ScatterLightError(msg) from err
        return np.asarray(position, dtype=float).reshape(-1, 3)

    def spacecraft_position(self, jd_tdb) -> np.ndarray:
        """Barycentric position of TESS [km], shape (ntime, 3) (see `Ephemeris`)."""
        return self._relative(np.atleast_1d(jd_tdb), "SOLAR SYSTEM BARYCENTER")

    def body_vectors(self, jd_tdb) -> dict[str, np.ndarray]:
        """TESS-to-Earth and TESS-to-Moon vectors [km] (see `Ephemeris`)."""
        jd = np.atleast_1d(jd_tdb)
        return {"earth": -self._relative(jd, "EARTH"), "moon": -self._relative(jd, "MOON")}


def make_ephemeris(spec: str | list[str] | tuple[str, ...], time_range=None) -> Ephemeris:
    """An ephemeris from a short specification (as on the command line).

    Parameters
    ----------
    spec : str or list of str
        ``"spice"``; ``["horizons", PATH]`` for a saved Horizons table;
        ``"horizons"`` alone queries JPL Horizons with astroquery (network).
    time_range : (float, float), optional
        BTJD range [d] to query when no Horizons file is given.

    Returns
    -------
    ephemeris : `Ephemeris`

    Raises
    ------
    ScatterLightError
        Unknown kind, or a query without ``time_range``.
    """
    parts = [spec] if isinstance(spec, str) else list(spec)
    kind, args = parts[0].lower(), parts[1:]
    if kind == "spice" and not args:
        return SpiceEphemeris()
    if kind == "horizons" and len(args) == 1:
        return HorizonsEphemeris.read(args[0])
    if kind == "horizons" and not args:  # pragma: no cover - needs the network
        if time_range is None:
            msg = "Querying Horizons needs the time range to cover."
            raise ScatterLightError(msg)
        return HorizonsEphemeris.from_astroquery(*time_range)
    msg = f"Unknown ephemeris {' '.join(parts)!r}: use 'spice', 'horizons FILE' or 'horizons'."
    raise ScatterLightError(msg)
