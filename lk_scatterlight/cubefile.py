"""The cube's FITS format: writing and reading ``docs/format.rst``, and tess-backml cubes.

`to_hdulist` turns a `~lk_scatterlight.cube.ScatterLightCube` into the FITS
layout of format version `FORMAT_VERSION` (encoding ``DENSE`` or ``LOWRANK``);
`read_fields` reads such a file (versions 1..`FORMAT_VERSION`) or a tess-backml
0.2/0.3 cube, converted to our conventions, into `CubeFields`, from which
`~lk_scatterlight.cube.ScatterLightCube.read` makes the cube. Dense arrays stay
on disk (`_FitsImage`) until they are needed. `problems` lists what is
inconsistent in a cube's fields, which the cube checks on construction.

Rows and columns are 1-based CCD pixels with columns counting the 44
collateral columns; times are BTJD [d] (TDB).
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
from astropy.io import fits
from astropy.utils.exceptions import AstropyUserWarning

from . import binsplit, fastfits
from .ccd import BTJD_OFFSET, CAMERAS, CCDS, FLUX_BUNITS, SCIENCE_COLUMNS, SCIENCE_ROWS, Region
from .exceptions import CubeFormatError
from .finelayer import FINE_EXTENSIONS, FINE_PRECISION, FineLayer
from .lowrank import PRECISION, CompressionInfo, LowRank, error_step

if TYPE_CHECKING:  # pragma: no cover
    from .cube import ScatterLightCube

__all__ = ["CubeFields", "read_fields", "to_hdulist", "FORMAT_VERSION", "ENCODINGS"]

#: Version of the FITS layout written by `ScatterLightCube.write`; `read` accepts 1..this.
FORMAT_VERSION = 2
#: Encodings of flux and uncertainty in a version 2 file (primary keyword ``SLENCODE``).
ENCODINGS = ("DENSE", "LOWRANK")
_ACCEPTED_BUNITS = FLUX_BUNITS
#: The HDUs of an open file by name (the first of each name), and the primary HDU as 0.
Hdus = dict[str | int, Any]


class CubeFields(NamedTuple):
    """What a cube file holds, as the arguments of `~lk_scatterlight.cube.ScatterLightCube`.

    Attributes
    ----------
    axes : tuple
        ``(sector, camera, ccd, time, time_start, time_stop, row, column)``: the first
        eight arguments (times BTJD [d], rows and columns 1-based CCD pixels).
    options : dict
        Keyword arguments (``npix``, ``nframes``, ``meta``, straps, ``fine``, ``region``).
    flux, flux_err : array-like or None
        Dense flux and error [e-/s per pixel], shape (ntime, nrow, ncol); None for
        a compact file.
    lowrank : `~lk_scatterlight.lowrank.LowRank` or None
        The factors of a compact (``LOWRANK``) file.
    """

    axes: tuple
    options: dict[str, Any]
    flux: Any
    flux_err: Any
    lowrank: LowRank | None


def read_fields(path: str | os.PathLike) -> CubeFields:
    """The fields of a cube file, for `~lk_scatterlight.cube.ScatterLightCube.read`.

    Accepts, checks and raises as that method documents (format versions
    1..`FORMAT_VERSION`, either encoding, or a tess-backml 0.2/0.3 cube).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No scattered-light cube at {path}.")
    # astropy only *warns* about a truncated or corrupt file (and then drops the
    # HDUs it could not read) while it reads the headers; catch that here and
    # report it as such. (The file is opened once, its compressed images as the
    # tables they are stored in: `fastfits.image` decodes them, faster than
    # astropy's CompImageHDU.)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", AstropyUserWarning)
            hdul = fits.open(
                path, memmap=False, lazy_load_hdus=True, disable_image_compression=True
            )
            try:
                # Extensions by name, looked up once: each lookup in an HDUList reads
                # the name card of every HDU before it.
                hdus = {0: hdul[0]}
                for hdu in hdul:
                    hdus.setdefault(hdu.name, hdu)
                names = [name for name in hdus if name != 0]
            except BaseException:
                hdul.close()
                raise
    except (OSError, TypeError) as err:  # astropy's errors for truncated/non-FITS files
        raise CubeFormatError(f"{path} cannot be read as a FITS file: {err}") from err
    try:
        with hdul:
            corrupt = [
                str(w.message)
                for w in caught
                if "truncated" in str(w.message) or "Error validating header" in str(w.message)
            ]
            if corrupt:
                raise CubeFormatError(f"{path} is truncated or corrupt: {corrupt[0]}")
            for w in caught:  # anything else is passed on unchanged
                warnings.warn(w.message, stacklevel=3)
            header = hdul[0].header
            if "SCATTER LIGHT CUBE" in names:
                return _read_tess_backml(hdus, path)
            if "SLFORMAT" not in header:
                raise CubeFormatError(
                    f"{path} is not a scattered-light cube: its primary header has no "
                    "SLFORMAT keyword and it has no 'SCATTER LIGHT CUBE' extension."
                )
            return _read_lk(hdus, path, names)
    except OSError as err:  # data cut short after the headers
        raise CubeFormatError(f"{path} cannot be read as a FITS file: {err}") from err


def to_hdulist(
    cube: ScatterLightCube,
    compact: bool = False,
    precision: float | None = PRECISION,
    fine_precision: float = FINE_PRECISION,
) -> fits.HDUList:
    """The FITS file of ``cube`` (format `FORMAT_VERSION`), ``LOWRANK`` if ``compact``.

    A compact encoding needs a compact cube (`ScatterLightCube.compress`).
    ``precision``: rounding of the low-rank factors, ``fine_precision`` of the
    fine layer, in units of their quoted errors
    (`~lk_scatterlight.lowrank.LowRank.quantum`,
    `~lk_scatterlight.finelayer.FineLayer.quantum`); ``precision=None`` stores
    both exactly as float32, the layout of earlier files.
    """
    from . import __version__

    if compact and cube._lowrank is None:
        msg = "call compress() before writing the compact encoding"
        raise ValueError(msg)
    primary = fits.PrimaryHDU()
    h = primary.header
    h["SLFORMAT"] = (FORMAT_VERSION, "lk_scatterlight cube format version")
    h["SLENCODE"] = ("LOWRANK" if compact else "DENSE", "encoding of flux and flux_err")
    h["CREATOR"] = (
        str(cube.meta.get("creator", "lk_scatterlight")),
        "software that built the cube",
    )
    h["PROCVER"] = (str(cube.meta.get("version", __version__)), "version of that software")
    h["WRITER"] = ("lk_scatterlight", "software that wrote this file")
    h["WRITEVER"] = (__version__, "its version")
    h["TELESCOP"] = ("TESS", "telescope")
    h["SECTOR"] = (cube.sector, "observing sector")
    h["CAMERA"] = (cube.camera, "camera number")
    h["CCD"] = (cube.ccd, "CCD number")
    h["TIMESYS"] = ("TDB", "time system of all times")
    h["BJDREFI"] = (int(BTJD_OFFSET), "integer part of BTJD reference date")
    h["BJDREFF"] = (0.0, "fraction of the day in BTJD reference date")
    h["TIMEUNIT"] = ("d", "time unit")
    h["TSTART"] = (cube._time_start[0], "[d] BTJD start of the first plane")
    h["TSTOP"] = (cube._time_stop[-1], "[d] BTJD stop of the last plane")
    h["NTIME"] = (cube.shape[0], "number of time planes")
    h["PIXBIN"] = (cube.pixel_bin, "[pixel] bin size in rows and columns")
    if not cube.region.is_full:
        for key, card in cube.region.to_header().items():
            h[key] = card
    image_header = fits.Header()
    image_header["BUNIT"] = ("electron/s", "per pixel")
    if compact:
        data_hdus = _lowrank_hdus(cube._lowrank, h, image_header, precision)
    else:
        data_hdus = [
            fits.ImageHDU(np.asarray(cube._flux, np.float32), image_header, name="FLUX"),
            fits.ImageHDU(np.asarray(cube._flux_err, np.float32), image_header, name="FLUX_ERR"),
        ]
    time = fits.BinTableHDU.from_columns(
        [
            fits.Column("TIME", "D", unit="d", array=cube._time),
            fits.Column("TSTART", "D", unit="d", array=cube._time_start),
            fits.Column("TSTOP", "D", unit="d", array=cube._time_stop),
            fits.Column("NFRAMES", "J", array=cube.nframes),
        ],
        name="TIME",
    )
    time.header["TIMESYS"] = "TDB"
    row = fits.ImageHDU(cube.row, name="ROW")
    col = fits.ImageHDU(cube.column, name="COLUMN")
    for hdu in (row, col):
        hdu.header["COMMENT"] = "bin centres, 1-based CCD pixels incl. 44 collateral columns"
    # Small integers that repeat: compressed losslessly to a fraction of their size.
    # (One compressed tile: each tile costs ~0.1 ms to read.)
    npix = fits.CompImageHDU(
        np.asarray(cube.npix, np.int32),
        name="NPIX",
        compression_type="RICE_1",
        tile_shape=np.shape(cube.npix),
    )
    keys = sorted(cube.meta)
    provenance = fits.BinTableHDU.from_columns(
        [
            fits.Column("KEY", "A64", array=np.array(keys, dtype="U64")),
            fits.Column(
                "VALUE",
                f"A{max([len(json.dumps(cube.meta[k])) for k in keys] + [1])}",
                array=np.array([json.dumps(cube.meta[k]) for k in keys]),
            ),
        ],
        name="PROVENANCE",
    )
    strap_columns = [
        fits.Column("COLUMN", "J", array=cube.strap_column),
        fits.Column("RESPONSE", "D", array=cube.strap_response),
    ]
    if np.any(cube.strap_response_err > 0):
        strap_columns.append(fits.Column("RESPONSE_ERR", "D", array=cube.strap_response_err))
    straps = fits.BinTableHDU.from_columns(strap_columns, name="STRAPS")
    straps.header["COMMENT"] = "scattered-light response of strap columns vs neighbours"
    fine = []
    if cube.fine is not None and len(cube.fine):
        fine = cube.fine.to_hdus(None if precision is None else fine_precision)
    if cube.noise_share is not None:
        fine.append(binsplit.to_hdu(cube.noise_share))
    return fits.HDUList([primary, *data_hdus, time, row, col, npix, provenance, straps, *fine])


class _FitsImage:
    """A FITS image extension read on demand: only the requested section is loaded."""

    def __init__(self, path: Path, extname: str, shape: tuple[int, ...]):
        self.path, self.extname, self.shape = path, extname, shape

    def __getitem__(self, index) -> np.ndarray:
        # A memory map touches only the pages of the requested block; the copy
        # detaches it from the file, which is closed again.
        with fits.open(self.path, memmap=True, lazy_load_hdus=True) as hdul:
            return np.array(hdul[self.extname].data[index], dtype=np.float32)

    def __array__(self, dtype=None, copy=None):
        return np.asarray(self[...], dtype=dtype)


def problems(cube: ScatterLightCube) -> list[str]:
    """What is inconsistent in a cube's fields, one phrase each (empty: nothing).

    Checks the sector, camera and CCD, the time planes (finite, strictly
    increasing, inside their start..stop), the bin centres (uniform, inside the
    science area, covering the cube's region), the shapes of every array, the
    strap responses, and the fine layer's and noise share's own checks.
    `~lk_scatterlight.cube.ScatterLightCube` raises `CubeFormatError` with them.
    """
    problems = []
    if cube.camera not in CAMERAS:
        problems.append(f"camera must be 1-4, found {cube.camera}")
    if cube.ccd not in CCDS:
        problems.append(f"ccd must be 1-4, found {cube.ccd}")
    if cube.sector < 1:
        problems.append(f"sector must be >= 1, found {cube.sector}")
    nt = cube._time.size
    if nt == 0:
        problems.append("the cube has no time planes")
    for name in ("time_start", "time_stop"):
        if getattr(cube, "_" + name).shape != (nt,):
            problems.append(f"{name} has shape {getattr(cube, '_' + name).shape}, expected ({nt},)")
    if not problems:
        if not np.all(np.isfinite(cube._time)):
            problems.append("times contain NaN or infinity")
        elif np.any(np.diff(cube._time) <= 0):
            i = int(np.argmax(np.diff(cube._time) <= 0))
            problems.append(
                f"times are not strictly increasing (plane {i + 1}: {cube._time[i + 1]!r} "
                f"after {cube._time[i]!r})"
            )
        elif np.any(cube._time_start > cube._time) or np.any(cube._time_stop < cube._time):
            problems.append("some plane centres lie outside their time_start..time_stop")
    for name, axis, (lo, hi) in (
        ("row", cube.row, SCIENCE_ROWS),
        ("column", cube.column, SCIENCE_COLUMNS),
    ):
        if axis.ndim != 1 or axis.size == 0:
            problems.append(f"{name} centres must be a non-empty 1-D array")
            continue
        step = np.diff(axis)
        if axis.size > 1 and (np.any(step <= 0) or not np.allclose(step, step[0])):
            problems.append(f"{name} centres must be uniformly spaced and increasing")
        if axis[0] < lo - 0.5 or axis[-1] > hi + 0.5:
            problems.append(
                f"{name} centres {axis[0]:g}..{axis[-1]:g} leave the science area "
                f"{lo}..{hi} (1-based CCD pixels)"
            )
    if not problems and not cube.region.is_full:
        # The pixels the bins cover: a bin centred on c spans c -/+ (bin - 1) / 2.
        half = (cube.pixel_bin - 1) / 2
        first = (cube.row[0] - half, cube.column[0] - half)
        last = (cube.row[-1] + half, cube.column[-1] + half)
        region = cube.region
        if (
            region.row < first[0]
            or region.column < first[1]
            or region.row_stop > last[0]
            or region.column_stop > last[1]
        ):
            problems.append(
                f"the region ({region}) reaches beyond the pixels of the bins, rows "
                f"{first[0]:g}..{last[0]:g}, columns {first[1]:g}..{last[1]:g}"
            )
    expected = cube.shape
    for name in ("_flux", "_flux_err"):
        shape = tuple(np.shape(getattr(cube, name)))
        if shape != expected:
            problems.append(
                f"{name[1:]} has shape {shape}, expected {expected} (time, row, column)"
            )
    if cube.npix.shape != expected[1:]:
        problems.append(f"npix has shape {cube.npix.shape}, expected {expected[1:]}")
    if cube.strap_column.shape != cube.strap_response.shape or cube.strap_column.ndim != 1:
        problems.append("strap_column and strap_response must be 1-D arrays of equal length")
    elif np.any(~np.isfinite(cube.strap_response)) or np.any(cube.strap_response <= 0):
        problems.append("strap_response must be finite and positive")
    elif cube.strap_response_err.shape != cube.strap_response.shape:
        problems.append("strap_response_err must have one value per strap_response")
    elif not np.all(np.isfinite(cube.strap_response_err) & (cube.strap_response_err >= 0)):
        problems.append("strap_response_err must be finite and non-negative")
    if cube.nframes.shape != (nt,):
        problems.append(f"nframes has shape {cube.nframes.shape}, expected ({nt},)")
    if cube.fine is not None:
        problems.extend(cube.fine.validate(nt))
    if cube.noise_share is not None:
        problems.extend(binsplit.validate(cube.noise_share, expected[1:]))
    return problems


def default_extents(btjd: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Plane start and stop halfway to the neighbouring centres, capped at half the
    median spacing: the outer planes and the planes next to a gap extend by that much,
    so a gap between planes remains a hole that `interpolate.time_segments` sees."""
    if btjd.size == 1:
        return btjd.copy(), btjd.copy()
    gaps = np.diff(btjd)
    half = np.full(btjd.size, np.median(gaps) / 2)
    start = btjd - np.minimum(half, np.concatenate([[np.inf], gaps / 2]))
    stop = btjd + np.minimum(half, np.concatenate([gaps / 2, [np.inf]]))
    return start, stop


def _header_unit_ok(header: fits.Header, extname: str) -> None:
    bunit = str(header.get("BUNIT", "")).strip()
    if bunit not in _ACCEPTED_BUNITS:
        raise CubeFormatError(
            f"Extension {extname} has BUNIT {bunit!r}; expected 'electron/s' (e-/s per pixel)."
        )


def _read_lk(hdul: Hdus, path: Path, names: list[str]) -> CubeFields:
    """Read an lk_scatterlight cube file, format version 1 or 2 (either encoding)."""
    header = hdul[0].header
    version = header["SLFORMAT"]
    if not isinstance(version, int) or not 1 <= version <= FORMAT_VERSION:
        raise CubeFormatError(
            f"{path} has cube format version {version!r}; this lk_scatterlight reads versions "
            f"1..{FORMAT_VERSION}. Upgrade lk_scatterlight (pip install -U lk_scatterlight)."
        )
    encoding = "DENSE" if version == 1 else header.get("SLENCODE")
    if encoding not in ENCODINGS:
        raise CubeFormatError(
            f"{path} has cube encoding SLENCODE = {encoding!r}; format version {version} "
            f"defines {', '.join(ENCODINGS)}. The file may come from a newer lk_scatterlight "
            "(pip install -U lk_scatterlight) or be damaged."
        )
    data = ["FLUX", "FLUX_ERR"] if encoding == "DENSE" else list(_LOWRANK_EXTENSIONS)
    required = data + ["TIME", "ROW", "COLUMN", "NPIX"]
    missing = [n for n in required if n not in names]
    if missing:
        raise CubeFormatError(
            f"{path} ({encoding} encoding) is missing extension(s) {', '.join(missing)}."
        )
    for key in ("SECTOR", "CAMERA", "CCD"):
        if key not in header:
            raise CubeFormatError(f"{path}: primary header has no {key} keyword.")
    for ext in data:
        if ext not in ("FLUX_COMP", "ERR_SCALE"):  # those two are dimensionless
            _header_unit_ok(fastfits.image(hdul, ext).header, ext)
    times = fastfits.table(hdul, "TIME")
    for colname in ("TIME", "TSTART", "TSTOP", "NFRAMES"):
        if colname not in times.names:
            raise CubeFormatError(f"{path}: TIME table has no {colname} column.")
    unit = times.units["TIME"].strip()
    if unit != "d":
        raise CubeFormatError(f"{path}: TIME column unit is {unit!r}, expected 'd' (BTJD days).")
    meta = {}
    if "PROVENANCE" in names:
        prov = fastfits.table(hdul, "PROVENANCE")
        try:
            meta = {
                str(k).strip(): json.loads(v)
                for k, v in zip(prov["KEY"], prov["VALUE"], strict=True)
            }
        except json.JSONDecodeError as err:
            raise CubeFormatError(
                f"{path}: PROVENANCE holds a value that is not JSON: {err}"
            ) from err
    args = (
        header["SECTOR"],
        header["CAMERA"],
        header["CCD"],
        np.array(times["TIME"], dtype=float),
        np.array(times["TSTART"], dtype=float),
        np.array(times["TSTOP"], dtype=float),
        np.array(hdul["ROW"].data, dtype=float),
        np.array(hdul["COLUMN"].data, dtype=float),
    )
    try:
        region = Region.from_header(header)
    except ValueError as err:
        raise CubeFormatError(f"{path}: {err}") from err
    kwargs = {
        "region": region,
        "npix": np.array(fastfits.image(hdul, "NPIX").data),
        "nframes": np.array(times["NFRAMES"]),
        "meta": meta,
        **_read_straps(hdul, names),
    }
    if any(n in names for n in FINE_EXTENSIONS):
        missing = [n for n in FINE_EXTENSIONS if n not in names]
        if missing:
            raise CubeFormatError(f"{path} has a fine layer without extension {missing[0]}.")
        kwargs["fine"] = FineLayer.from_hdul(hdul, path)
    if binsplit.EXTNAME in names:
        kwargs["noise_share"] = binsplit.from_hdu(hdul[binsplit.EXTNAME], path)
    if encoding == "LOWRANK":
        return CubeFields(args, kwargs, None, None, _read_lowrank(hdul, path))
    shape, shape_err = tuple(hdul["FLUX"].shape), tuple(hdul["FLUX_ERR"].shape)  # from headers
    if len(shape) != 3 or shape_err != shape:
        raise CubeFormatError(
            f"{path}: FLUX has shape {shape} and FLUX_ERR {shape_err}; both must be "
            "(time, row, column)."
        )
    small = np.prod(shape) <= 2**22  # up to 16 MB of float32: check every value now
    flux = _FitsImage(path, "FLUX", shape)
    flux_err = _FitsImage(path, "FLUX_ERR", shape)
    if small:
        flux, flux_err = np.asarray(flux), np.asarray(flux_err)
    return CubeFields(args, kwargs, flux, flux_err, None)


def _read_lowrank(hdul: Hdus, path: Path) -> LowRank:
    """The factors and compression keywords of a ``LOWRANK`` file."""
    header = hdul[0].header
    values = {}
    for key, field, _ in _COMPRESSION_CARDS:
        value = header.get(key)
        integer = field in ("rank", "max_rank")
        if isinstance(value, bool) or not isinstance(value, int if integer else int | float):
            raise CubeFormatError(
                f"{path}: the LOWRANK encoding needs the primary keyword {key} "
                f"({'an integer' if integer else 'a number'}), found {value!r}."
            )
        values[field] = value
    arrays = {}
    for name, ndim in _LOWRANK_EXTENSIONS.items():
        hdu = fastfits.image(hdul, name)
        shape = tuple(hdu.shape)
        if len(shape) != ndim:
            raise CubeFormatError(
                f"{path}: extension {name} has shape {shape}; the LOWRANK encoding needs "
                f"{ndim} axes."
            )
        if 0 in shape:  # a rank-0 cube has empty component and coefficient arrays
            arrays[name] = np.zeros(shape, np.float32)
        elif name == "FLUX_COMP" and isinstance(hdu, fastfits.TiledImage) and hdu.simple:
            arrays[name] = hdu  # decoded by region as evaluation needs it (_unscale_factors)
        else:
            read = _read_error_image if name == "ERR_IMAGE" else lambda h, _: np.array(h.data)
            arrays[name] = read(hdu, path)
    # The noise projection (version 3): both extensions or neither.
    present = [name for name in _PROJECTION_EXTENSIONS if name in hdul]
    if len(present) == 1:
        raise CubeFormatError(
            f"{path}: the LOWRANK encoding has {present[0]} without "
            f"{(set(_PROJECTION_EXTENSIONS) - set(present)).pop()}; the file is damaged."
        )
    projection = [
        _read_error_image(fastfits.image(hdul, name), path)
        for name in _PROJECTION_EXTENSIONS
        if present
    ]
    if _TRUNCATION_EXTENSION in hdul and not present:
        raise CubeFormatError(
            f"{path}: the LOWRANK encoding has {_TRUNCATION_EXTENSION} without the noise "
            "projection (ERR_TIME, ERR_SPACE); the file is damaged."
        )
    truncation = None
    if _TRUNCATION_EXTENSION in hdul:
        truncation = _read_error_image(fastfits.image(hdul, _TRUNCATION_EXTENSION), path)
    _unscale_factors(arrays, hdul, path)
    try:
        return LowRank(
            arrays["FLUX_MEAN"],
            arrays["FLUX_COMP"],
            arrays["FLUX_COEF"],
            arrays["ERR_SCALE"],
            arrays["ERR_IMAGE"],
            CompressionInfo(**values),
            *projection,
            err_trunc=truncation,
        )
    except CubeFormatError as err:
        raise CubeFormatError(f"{path}: {err}") from err


def _unscale_factors(arrays: dict[str, np.ndarray], hdul: Hdus, path: Path) -> None:
    """Rounded ``FLUX_COMP`` and ``FLUX_COEF`` (integers) times their ``FLUX_SCALE`` steps."""
    lazy = isinstance(arrays["FLUX_COMP"], fastfits.TiledImage)  # integers, still coded
    integer = [
        n
        for n in ("FLUX_COMP", "FLUX_COEF")
        if n == "FLUX_COMP" and lazy or arrays[n].dtype.kind in "iu"
    ]
    if "FLUX_SCALE" not in hdul:
        if integer:
            raise CubeFormatError(
                f"{path}: {integer[0]} holds integers but the file has no FLUX_SCALE "
                "extension to scale them; the file is damaged."
            )
        return
    steps = fastfits.table(hdul, "FLUX_SCALE")
    k = arrays["FLUX_COMP"].shape[0]
    if any(c not in steps.names for c in ("COMP", "COEF")) or len(steps) != k:
        raise CubeFormatError(
            f"{path}: FLUX_SCALE must be a table with columns COMP and COEF and one row "
            f"per component in FLUX_COMP ({k}); the file is damaged."
        )
    # In float32, as the factors are held: a float64 product would double the read time.
    comp_step = np.asarray(steps["COMP"], dtype=np.float32)[:, None, None]
    coef_step = np.asarray(steps["COEF"], dtype=np.float32)
    if lazy:  # LowRank cannot look for NaN in components it does not decode: check here
        if not np.all(np.isfinite(comp_step)):
            raise CubeFormatError(
                f"{path}: the components have NaN or infinite values (a FLUX_SCALE step)."
            )
        arrays["FLUX_COMP"] = fastfits.ScaledImage(arrays["FLUX_COMP"], comp_step[:, 0, 0])
    else:
        arrays["FLUX_COMP"] = np.multiply(arrays["FLUX_COMP"], comp_step, dtype=np.float32)
    arrays["FLUX_COEF"] = np.multiply(arrays["FLUX_COEF"], coef_step, dtype=np.float32)


def _read_straps(hdul: Hdus, names: list[str]) -> dict[str, np.ndarray]:
    """The optional STRAPS table as keyword arguments of `ScatterLightCube`."""
    if "STRAPS" not in names:
        return {}
    straps = fastfits.table(hdul, "STRAPS")
    kwargs = {
        "strap_column": np.array(straps["COLUMN"], dtype=int),
        "strap_response": np.array(straps["RESPONSE"], dtype=float),
    }
    if "RESPONSE_ERR" in straps.names:
        kwargs["strap_response_err"] = np.array(straps["RESPONSE_ERR"], dtype=float)
    return kwargs


def _read_tess_backml(hdul: Hdus, path: Path) -> CubeFields:
    """Convert a tess-backml 0.2/0.3 cube to our conventions.

    Conversions (see docs/format.rst):

    * data: the FITS array (2, T, Y, X) is read by numpy as (X, Y, T, 2);
      ``data.T[0]`` is flux (T, Y, X) and ``data.T[1]`` its error.
    * time: the TIME table holds JD (TDB); BTJD = JD - 2457000. Plane extents
      are the TIMBINS width around each centre, cut halfway to a closer
      neighbour (the last bin of an orbit is shorter).
    * rows: tess-backml binned the 0-based array rows ``0:2048``; bin ``i``
      covers 1-based rows ``1 + b i .. b (i + 1)``, centre ``b i + (b + 1) / 2``.
    * columns: it binned the 0-based array columns ``45:2093``, one column to
      the right of the science area ``44:2092``; bin ``j`` covers 1-based
      columns ``46 + b j .. 45 + b (j + 1)``, centre ``45 + b j + (b + 1) / 2``.
      Its own centres (``start + b/2``) are half a pixel low and, for columns,
      0-based.
    """
    header = hdul[0].header
    for key in ("SECTOR", "CAMERA", "CCD", "PIXBIN"):
        if key not in header:
            raise CubeFormatError(f"{path}: tess-backml cube has no {key} keyword.")
    if "TIME" not in hdul:
        raise CubeFormatError(f"{path}: tess-backml cube has no TIME extension.")
    data = np.asarray(fastfits.image(hdul, "SCATTER LIGHT CUBE").data, dtype=np.float32)
    if data.ndim != 4 or data.shape[-1] != 2:
        raise CubeFormatError(
            f"{path}: 'SCATTER LIGHT CUBE' has numpy shape {data.shape}; tess-backml writes "
            "(X, Y, T, 2)."
        )
    flux, flux_err = data.T[0], data.T[1]
    jd = np.array(hdul["TIME"].data["time"], dtype=float)
    btjd = jd - BTJD_OFFSET
    width = float(header.get("TIMBINS", 0)) / 24.0
    if width > 0:
        half = np.full(btjd.size, width / 2)
        gaps = np.diff(btjd)
        start = btjd - np.minimum(half, np.concatenate([[np.inf], gaps / 2]))
        stop = btjd + np.minimum(half, np.concatenate([gaps / 2, [np.inf]]))
    else:  # not binned in time: one plane per FFI, edges halfway between centres
        start, stop = default_extents(btjd)
    b = int(header["PIXBIN"])
    ny, nx = flux.shape[1:]
    row = b * np.arange(ny) + (b + 1) / 2
    column = 45 + b * np.arange(nx) + (b + 1) / 2
    npix = np.asarray(fastfits.image(hdul, "PIXEL COUNTS").data) if "PIXEL COUNTS" in hdul else None
    # Frames per plane are not recorded: 1 when unbinned, 0 ("unknown") when binned.
    nframes = np.full(btjd.size, 0 if width > 0 else 1)
    meta = {
        "creator": str(header.get("CREATOR", "tess-backml")),
        "version": str(header.get("PROCVER", "")),
        "source_format": "tess-backml",
        "pixel_bin": b,
        "pixel_bin_method": str(header.get("PIXBINM", "")),
        "time_bin_hours": float(header.get("TIMBINS", 0)),
        "time_bin_method": str(header.get("TIMBINM", "")),
    }
    axes = (header["SECTOR"], header["CAMERA"], header["CCD"], btjd, start, stop, row, column)
    options = {"npix": npix, "nframes": nframes, "meta": meta}
    return CubeFields(axes, options, flux, flux_err, None)


# ---------------------------------------------------------------------- low-rank encoding
#: Extensions of the LOWRANK encoding and their number of axes.
_LOWRANK_EXTENSIONS = {
    "FLUX_MEAN": 2,
    "FLUX_COMP": 3,
    "FLUX_COEF": 2,
    "ERR_IMAGE": 2,
    "ERR_SCALE": 1,
}
#: Bins per side of a ``FLUX_COMP`` tile (all components in each): a TPF's evaluation
#: decodes the few tiles around it (`fastfits.ScaledImage`), and RICE codes these
#: tiles as compactly as whole component images.
COMPONENT_TILE = 16
#: Optional extensions (version 3): how much of the noise the factors keep.
_PROJECTION_EXTENSIONS = ("ERR_TIME", "ERR_SPACE")
#: Optional extension: the truncation's error per bin, in place of ``SLTRUNC`` everywhere.
_TRUNCATION_EXTENSION = "ERR_TRUNC"
#: Primary-header cards of a LOWRANK file: keyword, `CompressionInfo` field, comment.
_COMPRESSION_CARDS = (
    ("SLRANK", "rank", "spatial components besides the mean"),
    ("SLMAXRNK", "max_rank", "cap on the number of components"),
    ("SLTOL", "tolerance", "rank rule: resid RMS <= (1+SLTOL) noise RMS"),
    ("SLNOISE", "noise_rms", "[electron/s] RMS of the dense FLUX_ERR"),
    ("SLRESRMS", "residual_rms", "[electron/s] RMS of compact - dense flux"),
    ("SLRESMAX", "residual_max", "[electron/s] max |compact - dense flux|"),
    ("SLTRUNC", "truncation_rms", "[electron/s] dropped signal RMS, in errors"),
    ("SLERRRMS", "err_model_rms", "RMS relative error of the error model"),
    ("SLERRMAX", "err_model_max", "max relative error of the error model"),
)


def _lowrank_hdus(
    lowrank: LowRank,
    primary: fits.Header,
    image_header: fits.Header,
    precision: float | None = PRECISION,
) -> list[fits.hdu.base.ExtensionHDU]:
    """The data extensions of a LOWRANK file; adds the compression cards to ``primary``.

    ``precision``: rounding of the factors (`LowRank.quantum`); None writes them as
    float32 (the layout of earlier files).
    """
    for key, field, comment in _COMPRESSION_CARDS:
        value = getattr(lowrank.info, field)
        primary[key] = (int(value) if field in ("rank", "max_rank") else float(value), comment)
    comp, coef, scale = _rounded_factors(lowrank, precision)
    hdus = [
        fits.ImageHDU(lowrank.mean, image_header, name="FLUX_MEAN"),
        comp,
        coef,
        _error_image(lowrank.err_image, "ERR_IMAGE", precision),
        fits.ImageHDU(lowrank.err_scale, name="ERR_SCALE"),
    ]
    comments = [
        "temporal mean of FLUX, (nrow, ncol)",
        "spatial components, orthonormal, (k, nrow, ncol)",
        "temporal coefficients, (ntime, k)",
        "dense FLUX_ERR ~ ERR_SCALE[t] ERR_IMAGE",
        "dimensionless, RMS 1, (ntime,)",
    ]
    if lowrank.err_time is not None:
        hdus += [
            fits.ImageHDU(lowrank.err_time, name="ERR_TIME"),
            _error_image(lowrank.err_space, "ERR_SPACE", precision),
        ]
        comments += [
            "noise kept, dimensionless, (ntime, 2); see docs",
            "FLUX_ERR**2 = T0 ERR_IMAGE**2 + T1 ERR_SPACE**2 + SLTRUNC**2",
        ]
        if lowrank.err_trunc is not None:
            hdus.append(_error_image(lowrank.err_trunc, _TRUNCATION_EXTENSION, precision))
            comments[-1] = "FLUX_ERR**2 = T0 ERR_IMAGE**2 + T1 ERR_SPACE**2 + ERR_TRUNC**2"
            comments.append("[electron/s] truncation error per bin, (nrow, ncol)")
    else:
        comments[3] = "FLUX_ERR = hypot(ERR_SCALE[t] ERR_IMAGE, SLTRUNC)"
    for hdu, comment in zip(hdus, comments, strict=True):
        hdu.header["COMMENT"] = comment
    hdus[0].header["COMMENT"] = "FLUX[t] = FLUX_MEAN + sum_i FLUX_COEF[t, i] FLUX_COMP[i]"
    return hdus if scale is None else [*hdus, scale]


def _error_image(values: np.ndarray, name: str, precision: float | None):
    """An error factor image [e-/s]: int32 multiples of ``ERRSTEP`` (`error_step`),
    RICE-compressed; float32 when ``precision`` is None."""
    header = fits.Header([("BUNIT", "electron/s", "per pixel")])
    if precision is None:
        return fits.ImageHDU(values, header, name=name)
    step = error_step(values)
    header["BUNIT"] = ("electron/s", "per pixel, times ERRSTEP")
    header["ERRSTEP"] = (step, "[electron/s] value = stored integer * ERRSTEP")
    return fits.CompImageHDU(
        np.rint(values / step).astype(np.int32),
        header,
        name=name,
        compression_type="RICE_1",
        tile_shape=values.shape,  # one tile: each costs ~0.1 ms to read
    )


def _read_error_image(hdu, path: Path) -> np.ndarray:
    """An error factor image as written by `_error_image` (or float32)."""
    data = np.array(hdu.data)
    if data.dtype.kind not in "iu":
        return data
    step = hdu.header.get("ERRSTEP")
    if isinstance(step, bool) or not isinstance(step, int | float) or not step > 0:
        raise CubeFormatError(
            f"{path}: {hdu.name} holds integers but no positive ERRSTEP keyword to scale "
            f"them (found {step!r}); the file is damaged."
        )
    return data * float(step)


def _rounded_factors(lowrank: LowRank, precision: float | None):
    """``FLUX_COMP``, ``FLUX_COEF`` and ``FLUX_SCALE`` (None when not rounded).

    Rounded (`LowRank.quantum`), the factors are int32 multiples of per-component
    steps, tile-compressed (``RICE_1``, which codes differences of neighbouring
    values): the components in tiles of `COMPONENT_TILE` x `COMPONENT_TILE` bins
    (all components in each), each component's coefficients, a series smooth in
    time, in a tile of its own. ``precision=None`` or rank 0 write float32.
    """
    header = fits.Header([("BUNIT", "electron/s", "per pixel")])
    if precision is None or lowrank.rank == 0:
        return (
            fits.ImageHDU(lowrank.components, name="FLUX_COMP"),
            fits.ImageHDU(lowrank.coefficients, header, name="FLUX_COEF"),
            None,
        )
    comp_step, coef_step = lowrank.quantum(precision)
    comp = fits.CompImageHDU(
        np.rint(lowrank.components / comp_step[:, None, None]).astype(np.int32),
        name="FLUX_COMP",
        compression_type="RICE_1",
        tile_shape=(lowrank.rank, *np.minimum(lowrank.mean.shape, COMPONENT_TILE)),
    )
    header["BUNIT"] = ("electron/s", "per pixel, times FLUX_SCALE.COEF")
    coef = fits.CompImageHDU(
        np.rint(lowrank.coefficients / coef_step).astype(np.int32),
        header,
        name="FLUX_COEF",
        compression_type="RICE_1",
        tile_shape=(lowrank.coefficients.shape[0], 1),
    )
    scale = fits.BinTableHDU.from_columns(
        [
            fits.Column("COMP", "D", array=comp_step),
            fits.Column("COEF", "D", unit="electron/s", array=coef_step),
        ],
        name="FLUX_SCALE",
    )
    scale.header["FLUXPREC"] = (precision, "rounding RMS <= FLUXPREC * FLUX_ERR")
    scale.header["COMMENT"] = "row i: steps of FLUX_COMP[i] and of FLUX_COEF[:, i]"
    return comp, coef, scale
