"""TESS detector and time facts, defined once for the whole package.

Pixel coordinates are lightkurve's: 1-based CCD rows and columns, columns
counting the 44 leading collateral (virtual) columns, as ``tpf.row`` and
``tpf.column``. A calibrated SPOC FFI image is 2078 rows x 2136 columns; its
science pixels are rows 1..2048 and columns 45..2092, i.e. the 0-based array
slice ``data[0:2048, 44:2092]`` (`SCIENCE_SLICE`). Times are BTJD, the
barycentric TESS Julian Date ``BJD - 2457000`` in the TDB scale, as
``tpf.time.value``.

`Region` is a rectangle of science pixels in those coordinates: what a
regional cube was built from and where it may be evaluated.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from .exceptions import OutsideCubeError

if TYPE_CHECKING:  # pragma: no cover
    from astropy.time import Time

__all__ = [
    "BTJD_OFFSET",
    "CAMERAS",
    "CCDS",
    "COLLATERAL_COLUMNS",
    "FFI_SHAPE",
    "FLUX_BUNITS",
    "LATEST_SECTOR",
    "N_SCIENCE",
    "SCIENCE_COLUMNS",
    "SCIENCE_ROWS",
    "SCIENCE_SLICE",
    "Region",
    "btjd_time",
    "check_camera_ccd",
    "check_pixels",
    "check_sector",
    "ffi_cadence_seconds",
    "to_btjd",
]

#: Shape (rows, columns) of a calibrated SPOC FFI image, collateral pixels included.
FFI_SHAPE = (2078, 2136)
#: Science pixels per side of a CCD.
N_SCIENCE = 2048
#: Leading collateral columns before the first science column.
COLLATERAL_COLUMNS = 44
#: First and last science row (1-based, inclusive).
SCIENCE_ROWS = (1, N_SCIENCE)
#: First and last science column (1-based, counting the collateral columns, inclusive).
SCIENCE_COLUMNS = (COLLATERAL_COLUMNS + 1, COLLATERAL_COLUMNS + N_SCIENCE)
#: The science region of a 0-based FFI array.
SCIENCE_SLICE = (slice(0, N_SCIENCE), slice(COLLATERAL_COLUMNS, COLLATERAL_COLUMNS + N_SCIENCE))
#: BTJD = BJD - BTJD_OFFSET (TDB).
BTJD_OFFSET = 2457000.0
#: Camera and CCD numbers.
CAMERAS = CCDS = (1, 2, 3, 4)
#: Spellings of e-/s in the BUNIT card of calibrated SPOC images and of cube files.
FLUX_BUNITS = ("electrons/s", "electron/s", "electron / s", "e-/s", "e/s")
#: The last sector whose pointing is known: the archival pointings shipped with
#: tesswcs 1.x cover sectors 1-108 (TESS's second extended mission, to late 2026).
#: Raise it when a later tesswcs lists more sectors.
LATEST_SECTOR = 108


def ffi_cadence_seconds(sector: int) -> float:
    """FFI cadence of a sector [s]: 1800 (sectors 1-26), 600 (27-55), 200 (56 on)."""
    return 1800.0 if sector <= 26 else 600.0 if sector <= 55 else 200.0


def to_btjd(time) -> np.ndarray:
    """Times as BTJD floats [d].

    Parameters
    ----------
    time : `~astropy.time.Time`, `~astropy.units.Quantity` or array-like
        A `~astropy.time.Time` (any format and scale) is converted to TDB;
        anything else is taken to be BTJD already (a Quantity's value in days).

    Returns
    -------
    btjd : ndarray of float
    """
    from astropy.time import Time

    if isinstance(time, Time):
        return np.asarray(time.tdb.jd - BTJD_OFFSET, dtype=float)
    return np.asarray(getattr(time, "value", time), dtype=float)


def btjd_time(btjd) -> Time:
    """BTJD floats as a `~astropy.time.Time` in lightkurve's ``"btjd"`` format (TDB).

    The format is lightkurve's; when lightkurve is not imported yet, the same
    definition is registered here (lightkurve's own replaces it on import), so
    reading a cube does not import lightkurve.
    """
    from astropy.time import TIME_FORMATS, Time

    if "btjd" not in TIME_FORMATS:
        _register_btjd()
    return Time(np.asarray(btjd, dtype=float), format="btjd", scale="tdb")


def _register_btjd() -> None:
    """Define the ``"btjd"`` time format: days since BJD 2457000 (TDB), as lightkurve does."""
    from astropy.time.formats import TimeFromEpoch

    class TimeBTJD(TimeFromEpoch):  # noqa: F841  (defining the class registers the format)
        """Barycentric TESS Julian Date, BJD - 2457000 (TDB)."""

        name = "btjd"
        unit = 1.0
        epoch_val = 2457000
        epoch_val2 = None
        epoch_scale = "tdb"
        epoch_format = "jd"


def _whole(name: str, value) -> int:
    """``value`` as an int, or a ValueError naming ``name``."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if not math.isfinite(number) or number != int(number):
        raise ValueError(f"{name} must be a whole number, got {value!r}.")
    return int(number)


def check_sector(sector) -> int:
    """Validate a TESS sector number.

    Parameters
    ----------
    sector : int

    Returns
    -------
    sector : int

    Raises
    ------
    ValueError
        If it is not a whole number in 1..`LATEST_SECTOR`.
    """
    sector = _whole("sector", sector)
    if not 1 <= sector <= LATEST_SECTOR:
        raise ValueError(
            f"sector must be 1..{LATEST_SECTOR} (the sectors whose pointing tesswcs knows), "
            f"got {sector}."
        )
    return sector


def check_camera_ccd(camera, ccd) -> tuple[int, int]:
    """Validate a camera and CCD number (each 1-4).

    Returns
    -------
    camera, ccd : int

    Raises
    ------
    ValueError
        If either is not a whole number in 1..4.
    """
    camera, ccd = _whole("camera", camera), _whole("ccd", ccd)
    if camera not in CAMERAS or ccd not in CCDS:
        raise ValueError(f"camera and ccd must each be 1-4, got camera {camera} CCD {ccd}.")
    return camera, ccd


@dataclass(frozen=True)
class Region:
    """A rectangle of science pixels of one CCD.

    Parameters
    ----------
    row, column : int
        First (lowest) row and column, 1-based CCD pixels (columns count the
        44 collateral columns: science columns are 45..2092).
    nrows, ncols : int
        Size [px].

    Raises
    ------
    ValueError
        If the rectangle is empty or leaves the science area.

    Examples
    --------
    >>> from lk_scatterlight.ccd import Region
    >>> region = Region(row=129, column=173, nrows=128, ncols=128)
    >>> region.row_stop, region.column_stop
    (256, 300)
    >>> region.contains([130, 140], [200, 210])
    True
    """

    row: int
    column: int
    nrows: int
    ncols: int

    def __post_init__(self):
        for name in ("row", "column", "nrows", "ncols"):
            object.__setattr__(self, name, _whole(name, getattr(self, name)))
        if self.nrows < 1 or self.ncols < 1:
            raise ValueError(f"a region needs at least one pixel, got {self.nrows} x {self.ncols}.")
        (r0, r1), (c0, c1) = SCIENCE_ROWS, SCIENCE_COLUMNS
        if self.row < r0 or self.row_stop > r1 or self.column < c0 or self.column_stop > c1:
            raise ValueError(
                f"region rows {self.row}..{self.row_stop}, columns {self.column}.."
                f"{self.column_stop} leaves the science area (rows {r0}..{r1}, columns "
                f"{c0}..{c1}; 1-based CCD pixels, columns counting the 44 collateral columns)."
            )

    @classmethod
    def full(cls) -> Region:
        """The whole science area of a CCD."""
        return cls(SCIENCE_ROWS[0], SCIENCE_COLUMNS[0], N_SCIENCE, N_SCIENCE)

    @property
    def row_stop(self) -> int:
        """Last row (inclusive)."""
        return self.row + self.nrows - 1

    @property
    def column_stop(self) -> int:
        """Last column (inclusive)."""
        return self.column + self.ncols - 1

    @property
    def is_full(self) -> bool:
        """Whether this is the whole science area."""
        return self == Region.full()

    @property
    def science_slice(self) -> tuple[slice, slice]:
        """This region's slice of a (2048, 2048) science array."""
        r = self.row - SCIENCE_ROWS[0]
        c = self.column - SCIENCE_COLUMNS[0]
        return slice(r, r + self.nrows), slice(c, c + self.ncols)

    @property
    def ffi_slice(self) -> tuple[slice, slice]:
        """This region's slice of a full (2078, 2136) 0-based FFI array."""
        return slice(self.row - 1, self.row_stop), slice(self.column - 1, self.column_stop)

    def contains(self, row, column) -> bool:
        """Whether every pixel coordinate lies inside (half a pixel of slack at the edges).

        Parameters
        ----------
        row, column : array-like of float
            1-based CCD pixel coordinates (centres).
        """
        row = np.asarray(row, dtype=float)
        column = np.asarray(column, dtype=float)
        return bool(
            np.all(row >= self.row - 0.5)
            and np.all(row <= self.row_stop + 0.5)
            and np.all(column >= self.column - 0.5)
            and np.all(column <= self.column_stop + 0.5)
        )

    def covers(self, other: Region) -> bool:
        """Whether ``other`` lies wholly inside this region."""
        return (
            self.row <= other.row
            and self.row_stop >= other.row_stop
            and self.column <= other.column
            and self.column_stop >= other.column_stop
        )

    def __str__(self) -> str:
        return (
            f"rows {self.row}..{self.row_stop}, columns {self.column}..{self.column_stop} "
            f"({self.nrows} x {self.ncols} px)"
        )

    def to_header(self) -> dict[str, tuple[int, str]]:
        """FITS cards describing the region (``REGROW1`` ... ``REGCOL2``)."""
        return {
            "REGROW1": (self.row, "first row of the region (1-based CCD)"),
            "REGROW2": (self.row_stop, "last row of the region"),
            "REGCOL1": (self.column, "first column of the region (1-based CCD)"),
            "REGCOL2": (self.column_stop, "last column of the region"),
        }

    @classmethod
    def from_header(cls, header) -> Region | None:
        """The region in a FITS header's ``REGROW1`` ... cards, or None if there are none."""
        keys = ("REGROW1", "REGROW2", "REGCOL1", "REGCOL2")
        if not any(key in header for key in keys):
            return None
        missing = [key for key in keys if key not in header]
        if missing:
            raise ValueError(f"the header has a partial region: {', '.join(missing)} missing.")
        r1, r2, c1, c2 = (header[key] for key in keys)
        return cls(r1, c1, _whole("REGROW2", r2) - r1 + 1, _whole("REGCOL2", c2) - c1 + 1)

    def around(self, margin: int, grid: int = 1, square: bool = False, min_size: int = 1) -> Region:
        """A larger region: this one grown by ``margin`` px and snapped outwards to a grid.

        The grid is the CCD's global grid of ``grid``-px cells starting at the
        first science pixel, so that the bins of a regional cube are the bins of
        the whole-CCD cube. At the CCD's edges the region is clipped (no margin
        is needed there: the whole-CCD cube stops there too); a square region is
        grown on its shorter side, inwards where it meets an edge.

        Parameters
        ----------
        margin : int
            Pixels to add on every side [px].
        grid : int
            Cell size the region's edges are snapped to [px]; divides 2048.
        square : bool
            Make the result square.
        min_size : int
            Grow each side to at least this many pixels (a multiple of ``grid``).

        Returns
        -------
        region : `Region`
        """
        if grid < 1 or N_SCIENCE % grid:
            raise ValueError(f"grid must divide {N_SCIENCE}, got {grid}.")
        r0 = self.row - SCIENCE_ROWS[0] - margin
        r1 = self.row_stop - SCIENCE_ROWS[0] + margin + 1
        c0 = self.column - SCIENCE_COLUMNS[0] - margin
        c1 = self.column_stop - SCIENCE_COLUMNS[0] + margin + 1
        lo = [max(0, (v // grid) * grid) for v in (r0, c0)]
        hi = [min(N_SCIENCE, -(-v // grid) * grid) for v in (r1, c1)]
        sides = [max(h - lo_, min_size) for lo_, h in zip(lo, hi, strict=True)]
        if square:
            sides = [max(sides)] * 2
        for k, side in enumerate(sides):
            grow = side - (hi[k] - lo[k])
            low_part = min(lo[k], grow // 2 // grid * grid)
            lo[k] -= low_part
            hi[k] += grow - low_part
            if hi[k] > N_SCIENCE:
                lo[k] -= hi[k] - N_SCIENCE
                hi[k] = N_SCIENCE
        return Region(
            lo[0] + SCIENCE_ROWS[0], lo[1] + SCIENCE_COLUMNS[0], hi[0] - lo[0], hi[1] - lo[1]
        )

    def shrunk(self, margin: int) -> Region:
        """This region less ``margin`` px on every side that is not an edge of the CCD.

        Where a regional cube may be evaluated: its outermost bins have no
        neighbours beyond them, which the whole-CCD cube lacks only at the CCD's
        edges.
        """
        (r0, r1), (c0, c1) = SCIENCE_ROWS, SCIENCE_COLUMNS
        top = self.row if self.row == r0 else self.row + margin
        bottom = self.row_stop if self.row_stop == r1 else self.row_stop - margin
        left = self.column if self.column == c0 else self.column + margin
        right = self.column_stop if self.column_stop == c1 else self.column_stop - margin
        if bottom < top or right < left:
            raise ValueError(f"{self} is too small for a margin of {margin} px.")
        return Region(top, left, bottom - top + 1, right - left + 1)


def check_pixels(row, column, region: Region | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Pixel coordinates as 1-D float arrays, checked against the science area and ``region``.

    Parameters
    ----------
    row, column : array-like of float
        1-based CCD pixel coordinates (columns count the 44 collateral columns).
    region : `Region`, optional
        Where a regional cube may be evaluated; default the whole science area.

    Returns
    -------
    row, column : ndarray of float, shapes (nrow,), (ncol,)

    Raises
    ------
    OutsideCubeError
        If a pixel lies outside the science area or outside ``region`` (half a
        pixel of slack at the edges).
    """
    row = np.atleast_1d(np.asarray(row, dtype=float))
    column = np.atleast_1d(np.asarray(column, dtype=float))
    for name, values, (lo, hi) in (
        ("row", row, SCIENCE_ROWS),
        ("column", column, SCIENCE_COLUMNS),
    ):
        bad = (values < lo - 0.5) | (values > hi + 0.5) | ~np.isfinite(values)
        if bad.any():
            raise OutsideCubeError(
                f"{name}s {values[bad].min():g}..{values[bad].max():g} are outside the science "
                f"area ({name}s {lo}..{hi}, 1-based CCD pixels with columns counting the 44 "
                "collateral columns); scattered light is only modelled on science pixels."
            )
    if region is not None and not region.contains(row, column):
        raise OutsideCubeError(
            f"pixels rows {row.min():g}..{row.max():g}, columns {column.min():g}..{column.max():g} "
            f"are outside this regional cube, which covers {region}. Use a cube built for "
            "these pixels (lk-scatterlight build --for-tpf FILE, or tpf.to_corrector("
            '"scatterlight", cube="build")) or a whole-CCD cube.'
        )
    return row, column
