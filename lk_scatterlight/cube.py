"""The scattered-light cube: data model, FITS format and evaluation.

A `ScatterLightCube` holds the time-variable background of one TESS
sector/camera/CCD, downsampled in space: flux [e-/s per pixel] on a grid of
time planes x row bins x column bins, with its uncertainty. The file format is
specified in ``docs/format.rst``; `FORMAT_VERSION` is its version.

Coordinates follow lightkurve's ``tpf.row`` / ``tpf.column``: 1-based CCD
pixel numbers that include the 44 leading collateral columns, so science
pixels are rows 1..2048 and columns 45..2092. Times are BTJD (BJD - 2457000,
TDB) in days.

A cube is held either **dense** (every value stored, as float32 arrays) or
**compact** (`ScatterLightCube.compress`): a mean image plus ``k`` spatial
components and ``k`` temporal coefficient series from a truncated SVD, with a
rank-1 model of the uncertainty. Compact cubes are evaluated directly from their
factors, and written as the ``LOWRANK`` encoding of format version 2.
"""

from __future__ import annotations

import json
import logging
import mmap
import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from astropy import units as u
from astropy.io import fits
from astropy.time import Time
from astropy.utils.exceptions import AstropyUserWarning

from . import interpolate
from .ccd import BTJD_OFFSET, SCIENCE_COLUMNS, SCIENCE_ROWS, Region, btjd_time, to_btjd
from .exceptions import CubeFormatError, OutsideCubeError
from .finelayer import FINE_EXTENSIONS, FineLayer
from .utils import atomic_write

__all__ = [
    "ScatterLightCube",
    "CubeEvaluation",
    "CompressionInfo",
    "FORMAT_VERSION",
    "ENCODINGS",
    "SCIENCE_ROWS",
    "SCIENCE_COLUMNS",
]

log = logging.getLogger(__name__)

#: Version of the FITS layout written by `ScatterLightCube.write`; `read` accepts 1..this.
FORMAT_VERSION = 2
#: Encodings of flux and uncertainty in a version 2 file (primary keyword ``SLENCODE``).
ENCODINGS = ("DENSE", "LOWRANK")
#: Default tolerance of `ScatterLightCube.compress`: allowed excess of the residual RMS
#: over the noise RMS.
DEFAULT_TOLERANCE = 0.01
#: Default cap on the number of components of `ScatterLightCube.compress`.
DEFAULT_MAX_RANK = 64
#: Default longest hole interpolation may bridge, in units of the median plane width.
GAP_FACTOR = 3.0
_FLUX_UNIT = u.electron / u.s
_ACCEPTED_BUNITS = ("electron/s", "electron / s", "e-/s", "e/s")


class CubeEvaluation(NamedTuple):
    """The cube model evaluated on a grid of times, rows and columns.

    Attributes
    ----------
    flux : `~astropy.units.Quantity`, shape (ntime, nrow, ncol)
        Scattered-light model [e-/s per pixel]; NaN where ``valid`` is False.
    flux_err : `~astropy.units.Quantity`, shape (ntime, nrow, ncol)
        1-sigma uncertainty of ``flux`` [e-/s per pixel].
    valid : ndarray of bool, shape (ntime,)
        False for times in a data gap or outside the cube.
    """

    flux: u.Quantity
    flux_err: u.Quantity
    valid: np.ndarray


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


class CompressionInfo(NamedTuple):
    """How a compact cube was made and how closely it reproduces the dense cube.

    See `ScatterLightCube.compress` for the rank rule and the error model.

    Attributes
    ----------
    rank : int
        Number ``k`` of spatial components besides the mean image.
    tolerance : float
        Rank rule: the smallest ``k`` with ``residual_rms <= (1 + tolerance) * noise_rms``.
    max_rank : int
        Cap on ``k``.
    noise_rms : float
        RMS of the dense cube's ``flux_err``, ``sqrt(mean(flux_err**2))`` [e-/s per pixel].
    residual_rms, residual_max : float
        RMS and largest absolute value of compact minus dense flux over all bins and
        planes [e-/s per pixel]. They include the noise the truncation removes, so
        ``residual_rms`` is close to ``noise_rms`` by design.
    truncation_rms : float
        Estimated RMS of the signal the truncation dropped [e-/s per pixel]:
        ``residual_rms**2`` minus the noise variance expected in the residual,
        ``noise_rms**2 (ntime - 1 - k) (npix - k) / (ntime npix)``, floored at 0. It is
        added in quadrature to the compact ``flux_err``.
    err_model_rms, err_model_max : float
        RMS and largest relative deviation of the rank-1 error model
        ``scale[t] * image[r, c]`` from the dense ``flux_err`` (bins with non-zero
        error; 0.01 = 1 %).
    """

    rank: int
    tolerance: float
    max_rank: int
    noise_rms: float
    residual_rms: float
    residual_max: float
    truncation_rms: float
    err_model_rms: float
    err_model_max: float


class _Factored:
    """A (ntime, nrow, ncol) array stored as ``coef @ comp`` (optionally its square root),
    computed by section on indexing: ``coef`` has shape (ntime, m), ``comp`` (m, nrow, ncol)."""

    def __init__(self, coef: np.ndarray, comp: np.ndarray, sqrt: bool = False):
        self.coef, self.comp, self.sqrt = coef, comp, sqrt
        self.shape = (coef.shape[0],) + comp.shape[1:]

    def __getitem__(self, index) -> np.ndarray:
        index = index if isinstance(index, tuple) else (index,)
        if len(index) == 1 and index[0] is Ellipsis:
            index = ()
        simple = all(isinstance(i, slice | int | np.integer) for i in index)
        if not simple or len(index) > 3:  # anything fancier: via the whole array
            return self[...][index]
        index = index + (slice(None),) * (3 - len(index))
        values = np.tensordot(self.coef[index[0]], self.comp[:, index[1], index[2]], axes=1)
        if self.sqrt:
            values = np.sqrt(np.clip(values, 0, None))
        return np.asarray(values, dtype=np.float32)

    def __array__(self, dtype=None, copy=None):
        return np.asarray(self[...], dtype=dtype)


class _LowRank:
    """The factors of a compact cube (see ``docs/format.rst``, encoding ``LOWRANK``).

    flux[t, r, c] = mean[r, c] + sum_i coefficients[t, i] components[i, r, c]
    flux_err[t, r, c]**2 = (err_scale[t] err_image[r, c])**2 + truncation_rms**2
    """

    def __init__(
        self,
        mean: np.ndarray,
        components: np.ndarray,
        coefficients: np.ndarray,
        err_scale: np.ndarray,
        err_image: np.ndarray,
        info: CompressionInfo,
    ):
        self.mean = np.asarray(mean, dtype=np.float32)
        self.components = np.asarray(components, dtype=np.float32)
        self.coefficients = np.asarray(coefficients, dtype=np.float32)
        self.err_scale = np.asarray(err_scale, dtype=np.float32)
        self.err_image = np.asarray(err_image, dtype=np.float32)
        self.info = info
        self._check()
        nt = self.coefficients.shape[0]
        # The mean is one more component with coefficient 1; the variance is the rank-2
        # product [scale**2, 1] x [image**2, truncation**2]. Both are evaluated like flux.
        self.flux_coef = np.hstack([np.ones((nt, 1), np.float32), self.coefficients])
        self.flux_comp = np.concatenate([self.mean[None], self.components])
        self.var_coef = np.column_stack([self.err_scale.astype(float) ** 2, np.ones(nt)])
        self.var_comp = np.stack(
            [
                self.err_image.astype(float) ** 2,
                np.full(self.mean.shape, float(info.truncation_rms) ** 2),
            ]
        )

    @property
    def rank(self) -> int:
        return self.components.shape[0]

    def _check(self) -> None:
        problems = []
        shape2d = self.mean.shape
        if self.mean.ndim != 2:
            problems.append(f"the mean image has shape {shape2d}, expected (nrow, ncol)")
        elif self.components.ndim != 3 or self.components.shape[1:] != shape2d:
            problems.append(
                f"the components have shape {self.components.shape}, expected (k, *{shape2d})"
            )
        elif self.coefficients.ndim != 2 or self.coefficients.shape[1] != self.rank:
            problems.append(
                f"the coefficients have shape {self.coefficients.shape}, expected "
                f"(ntime, {self.rank})"
            )
        elif self.err_scale.shape != self.coefficients.shape[:1]:
            problems.append(
                f"the error scale has shape {self.err_scale.shape}, expected "
                f"({self.coefficients.shape[0]},)"
            )
        elif self.err_image.shape != shape2d:
            problems.append(f"the error image has shape {self.err_image.shape}, expected {shape2d}")
        elif self.info.rank != self.rank:
            problems.append(
                f"the rank is recorded as {self.info.rank} but there are {self.rank} components"
            )
        if not problems:
            for name in ("mean", "components", "coefficients", "err_scale", "err_image"):
                if not np.all(np.isfinite(getattr(self, name))):
                    problems.append(f"{name} has NaN or infinite values")
            if np.any(self.err_scale < 0) or np.any(self.err_image < 0):
                problems.append("the error scale and image must be non-negative")
            trunc = float(self.info.truncation_rms)
            if not (np.isfinite(trunc) and trunc >= 0):
                problems.append(f"the truncation RMS must be finite and >= 0, found {trunc!r}")
        if problems:
            raise CubeFormatError("Invalid compact cube: " + "; ".join(problems) + ".")


class ScatterLightCube:
    """Scattered-light model of one TESS sector, camera and CCD.

    Use `from_arrays` to make one in memory and `read` to open a file; both
    validate their input. Dense files are read lazily: `evaluate` loads only the
    bins and planes it needs, and the full ``flux`` array is read the first time
    the attribute is accessed.

    `compress` gives a compact copy (a truncated SVD: mean image, ``rank``
    spatial components and their coefficient series) that `evaluate`,
    `evaluate_sum` and `write` use directly; ``flux`` and ``flux_err`` of a
    compact cube are reconstructed (and kept) when first accessed.

    Parameters
    ----------
    sector, camera, ccd : int
        Where the cube belongs.
    time : array of float, shape (ntime,)
        Plane centres, BTJD [d] (TDB).
    time_start, time_stop : array of float, shape (ntime,)
        Extent of each plane, BTJD [d].
    row, column : array of float, shape (nrow,), (ncol,)
        Bin centres in 1-based CCD pixel coordinates, uniformly spaced.
    flux, flux_err : array of float, shape (ntime, nrow, ncol)
        Scattered light and its 1-sigma uncertainty [e-/s per pixel].
    npix : array of int, shape (nrow, ncol), optional
        Number of pixels that went into each bin.
    nframes : array of int, shape (ntime,), optional
        Number of FFIs combined in each plane (1 at full time resolution).
    meta : dict, optional
        Provenance: creator, version, build parameters. Values must be JSON
        serialisable to be written.
    strap_column : array of int, optional
        CCD columns (1-based) of the straps whose response was measured.
    strap_response : array of float, optional
        Scattered-light response of each strap column relative to its
        neighbours (e.g. 1.04); `evaluate` multiplies the model by it there.
    fine : `~lk_scatterlight.finelayer.FineLayer`, optional
        Structure finer than the bins (glint ridges, shadow edges) on a finer
        grid, stored only in the tiles and planes where the builder found it;
        `evaluate` and `evaluate_sum` add it to the binned model.
    region : `~lk_scatterlight.ccd.Region`, optional
        Where the cube may be evaluated (1-based CCD pixels). Default: the whole
        science area. A regional cube, built from part of a CCD, covers only
        the pixels whose interpolation never reaches the edge of what it was
        built from; evaluating outside raises `OutsideCubeError`.
    """

    def __init__(
        self,
        sector: int,
        camera: int,
        ccd: int,
        time: np.ndarray,
        time_start: np.ndarray,
        time_stop: np.ndarray,
        row: np.ndarray,
        column: np.ndarray,
        flux,
        flux_err,
        npix: np.ndarray | None = None,
        nframes: np.ndarray | None = None,
        meta: dict[str, Any] | None = None,
        strap_column: np.ndarray | None = None,
        strap_response: np.ndarray | None = None,
        fine: FineLayer | None = None,
        region: Region | None = None,
    ):
        self.sector, self.camera, self.ccd = int(sector), int(camera), int(ccd)
        self.region = Region.full() if region is None else region
        self._time = np.asarray(time, dtype=float)
        self._time_start = np.asarray(time_start, dtype=float)
        self._time_stop = np.asarray(time_stop, dtype=float)
        self.row = np.asarray(row, dtype=float)
        self.column = np.asarray(column, dtype=float)
        self._flux = flux
        self._flux_err = flux_err
        self._lowrank: _LowRank | None = None
        shape2d = (self.row.size, self.column.size)
        self.npix = (
            np.full(shape2d, -1, dtype=np.int32) if npix is None else np.asarray(npix, np.int32)
        )
        self.nframes = (
            np.ones(self._time.size, dtype=np.int32)
            if nframes is None
            else np.asarray(nframes, dtype=np.int32)
        )
        self.meta = dict(meta or {})
        self.strap_column = np.asarray([] if strap_column is None else strap_column, dtype=int)
        self.strap_response = np.asarray(
            [] if strap_response is None else strap_response, dtype=float
        )
        self.fine = fine
        self._validate()

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_arrays(
        cls,
        sector: int,
        camera: int,
        ccd: int,
        time,
        row,
        column,
        flux,
        flux_err,
        time_start=None,
        time_stop=None,
        npix=None,
        nframes=None,
        meta: dict[str, Any] | None = None,
        strap_column=None,
        strap_response=None,
        fine: FineLayer | None = None,
        region: Region | None = None,
    ) -> ScatterLightCube:
        """Make a cube from arrays, validating them.

        Parameters
        ----------
        sector, camera, ccd : int
        time : array of float or `~astropy.time.Time`, shape (ntime,)
            Plane centres; floats are BTJD [d] (TDB).
        row, column : array of float
            Bin centres, 1-based CCD pixel coordinates (columns count the 44
            collateral columns: science columns are 45..2092).
        flux, flux_err : array or `~astropy.units.Quantity`, shape (ntime, nrow, ncol)
            [e-/s per pixel].
        time_start, time_stop : array of float or `~astropy.time.Time`, optional
            Plane extents. By default each plane reaches halfway to its
            neighbours but never further than half the median plane spacing, so
            the planes next to an orbit gap (and the outer planes) extend by half
            a typical plane and the gap stays a gap.
        npix, nframes, meta, strap_column, strap_response, fine, region
            See the class docstring.

        Returns
        -------
        cube : `ScatterLightCube`
        """
        btjd = _to_btjd(time)
        if time_start is None or time_stop is None:
            start, stop = _default_extents(btjd)
            time_start = start if time_start is None else time_start
            time_stop = stop if time_stop is None else time_stop
        flux = _to_flux_array(flux, "flux")
        flux_err = _to_flux_array(flux_err, "flux_err")
        return cls(
            sector,
            camera,
            ccd,
            btjd,
            _to_btjd(time_start),
            _to_btjd(time_stop),
            row,
            column,
            flux,
            flux_err,
            npix=npix,
            nframes=nframes,
            meta=meta,
            strap_column=strap_column,
            strap_response=strap_response,
            fine=fine,
            region=region,
        )

    @classmethod
    def read(cls, path: str | os.PathLike) -> ScatterLightCube:
        """Open a cube file written by lk_scatterlight or by tess-backml 0.2/0.3.

        Reads format versions 1 and 2 (dense or compact encoding). Dense flux and
        error arrays stay on disk until needed; the factors of a compact file are
        small and read at once.

        Parameters
        ----------
        path : str or path-like

        Returns
        -------
        cube : `ScatterLightCube`

        Raises
        ------
        FileNotFoundError
            If ``path`` does not exist.
        CubeFormatError
            If the file is not a valid cube; the message names the problem.
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"No scattered-light cube at {path}.")
        try:
            # astropy only *warns* about a truncated or corrupt file (and then drops the
            # HDUs it could not read); catch that here and report it as such.
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", AstropyUserWarning)
                with fits.open(path, memmap=False, lazy_load_hdus=True) as hdul:
                    names = [h.name for h in hdul]
            corrupt = [
                str(w.message)
                for w in caught
                if "truncated" in str(w.message) or "Error validating header" in str(w.message)
            ]
            if corrupt:
                raise CubeFormatError(f"{path} is truncated or corrupt: {corrupt[0]}")
            for w in caught:  # anything else is passed on unchanged
                warnings.warn(w.message, stacklevel=2)
            with fits.open(path, memmap=False, lazy_load_hdus=True) as hdul:
                header = hdul[0].header
                if "SCATTER LIGHT CUBE" in names:
                    return _read_tess_backml(hdul, path)
                if "SLFORMAT" not in header:
                    raise CubeFormatError(
                        f"{path} is not a scattered-light cube: its primary header has no "
                        "SLFORMAT keyword and it has no 'SCATTER LIGHT CUBE' extension."
                    )
                return _read_lk(hdul, path, names)
        except (OSError, TypeError) as err:  # astropy's errors for truncated/non-FITS files
            raise CubeFormatError(f"{path} cannot be read as a FITS file: {err}") from err

    def write(
        self, path: str | os.PathLike, overwrite: bool = False, compact: bool | None = None
    ) -> Path:
        """Write the cube to a FITS file (format `FORMAT_VERSION`).

        The file is written to a temporary name in the same folder and renamed
        at the end, so an interrupted write never leaves a partial file.

        Parameters
        ----------
        path : str or path-like
        overwrite : bool
            Replace an existing file.
        compact : bool, optional
            Encoding: True writes the compact ``LOWRANK`` encoding (a dense cube
            is first compressed with `compress` defaults), False the ``DENSE``
            float32 arrays (a compact cube's reconstruction). Default: as the cube
            is held, `is_compact`.

        Returns
        -------
        path : `~pathlib.Path`

        Raises
        ------
        FileExistsError
            If ``path`` exists and ``overwrite`` is False.

        Examples
        --------
        Store a cube built at full time resolution in a few megabytes:

        >>> cube.compress().write("cube.fits")  # doctest: +SKIP
        """
        path = Path(path)
        if path.exists() and not overwrite:
            raise FileExistsError(f"{path} exists; pass overwrite=True to replace it.")
        compact = self.is_compact if compact is None else bool(compact)
        source = self.compress() if compact and not self.is_compact else self
        hdul = source._to_hdulist(compact)
        with atomic_write(path) as tmp:
            hdul.writeto(tmp, overwrite=True, checksum=True)
        return path

    # ------------------------------------------------------------------ properties
    @property
    def shape(self) -> tuple[int, int, int]:
        """(ntime, nrow, ncol)."""
        return (self._time.size, self.row.size, self.column.size)

    @property
    def time(self) -> Time:
        """Plane centres as `~astropy.time.Time` (BTJD, TDB)."""
        return btjd_time(self._time)

    @property
    def time_start(self) -> Time:
        """Start of each plane (BTJD, TDB)."""
        return btjd_time(self._time_start)

    @property
    def time_stop(self) -> Time:
        """Stop of each plane (BTJD, TDB)."""
        return btjd_time(self._time_stop)

    @property
    def btjd(self) -> np.ndarray:
        """Plane centres as plain floats, BTJD [d]."""
        return self._time

    @property
    def flux(self) -> u.Quantity:
        """Scattered light, shape (ntime, nrow, ncol) [e-/s per pixel].

        Loads the array, or for a compact cube reconstructs it from its factors;
        either way it is kept in memory afterwards.
        """
        self._flux = np.asarray(self._flux)
        return self._flux * _FLUX_UNIT

    @property
    def flux_err(self) -> u.Quantity:
        """1-sigma uncertainty of `flux` [e-/s per pixel]. Loads (or reconstructs) the array.

        For a compact cube this is the error model described in `compress`.
        """
        self._flux_err = np.asarray(self._flux_err)
        return self._flux_err * _FLUX_UNIT

    @property
    def is_compact(self) -> bool:
        """True if the cube is held as low-rank factors (see `compress`)."""
        return self._lowrank is not None

    @property
    def rank(self) -> int | None:
        """Number of spatial components of a compact cube besides its mean; None if dense."""
        return None if self._lowrank is None else self._lowrank.rank

    @property
    def compression(self) -> CompressionInfo | None:
        """How the compact cube was made and its achieved accuracy; None if dense."""
        return None if self._lowrank is None else self._lowrank.info

    @property
    def pixel_bin(self) -> float:
        """Bin size in pixels: the spacing of the row grid (of the column grid if one row)."""
        for axis in (self.row, self.column):
            if axis.size > 1:
                return float(axis[1] - axis[0])
        return float(self.meta.get("pixel_bin", 0))

    @property
    def max_gap(self) -> float:
        """Default longest hole [d] between planes that evaluation interpolates across.

        `GAP_FACTOR` times the median plane width: a dropped frame or two is
        bridged, an orbit gap or downlink is not.
        """
        return GAP_FACTOR * float(np.median(self._time_stop - self._time_start))

    def __repr__(self) -> str:
        nt, nr, nc = self.shape
        return (
            f"ScatterLightCube(sector={self.sector}, camera={self.camera}, ccd={self.ccd}, "
            f"shape=({nt}, {nr}, {nc}), bin={self.pixel_bin:g} px, "
            f"BTJD {self._time_start[0]:.3f}..{self._time_stop[-1]:.3f}"
            + ("" if self._lowrank is None else f", compact rank {self.rank}")
            + ")"
        )

    # ------------------------------------------------------------------ compression
    def compress(
        self, tolerance: float = DEFAULT_TOLERANCE, max_rank: int = DEFAULT_MAX_RANK
    ) -> ScatterLightCube:
        """A compact copy of the cube: mean image + ``k`` spatial components x ``k`` series.

        Scattered light is smooth in space and time, so the cube, as a matrix of
        ``ntime`` planes by ``nrow * ncol`` bins, is close to low rank. With ``m``
        the temporal mean of each bin, the flux is stored as
        ``flux[t] ~ m + sum_i a[t, i] V[i]`` where ``a = U_k S_k`` and ``V = V_k``
        come from a truncated SVD of ``flux - m`` (exact SVD for small cubes,
        otherwise a randomised SVD with two power iterations, Halko, Martinsson &
        Tropp 2011, in float64). The planes are streamed in blocks of ~4 M values,
        so the working memory is ~0.2 GB beyond the cube itself whatever the number of
        planes (12,000 planes x 128 x 128 bins: ~30 s on two cores); the builder
        compresses straight from its memory-mapped work area the same way.

        **Rank rule.** Truncating a noisy cube also removes noise, so its residual
        against the stored cube cannot fall below the noise. ``k`` is the smallest
        rank whose residual RMS is consistent with the noise,
        ``residual_rms(k) <= (1 + tolerance) * noise_rms`` with
        ``noise_rms = sqrt(mean(flux_err**2))``, capped at ``max_rank`` (a warning
        is logged if the cap is reached first), and such that no single bin is left
        with signal: each bin's residual RMS over time is at most
        ``1 + max(0.5, 5 / sqrt(2 ntime))`` times its own noise RMS (corner bins
        otherwise keep several times their noise while the overall RMS is fine).
        For a noiseless cube the target is ``2**-20`` times the RMS flux (float32
        round-off).

        **Error model.** ``flux_err`` is stored as a rank-1 product
        ``scale[t] * image[r, c]`` (leading singular pair of ``flux_err``; its
        relative accuracy is recorded), and the estimated RMS of the signal the
        truncation dropped, ``truncation_rms`` (see `CompressionInfo`), is added in
        quadrature: ``flux_err**2 = (scale image)**2 + truncation_rms**2``. As in a
        dense cube, the errors are 1-sigma per bin and plane and are treated as
        independent. The reconstruction carries less noise than the dense cube
        (the truncation averages it down), so for noise the stored error is
        conservative; the truncation term is an RMS, while the dropped signal is
        smooth and correlated across bins and planes.

        Parameters
        ----------
        tolerance : float
            Allowed excess of the residual RMS over the noise RMS (0.01 = 1 %).
        max_rank : int
            Largest number of components.

        Returns
        -------
        cube : `ScatterLightCube`
            Compact (`is_compact`), sharing times, bins and metadata with this
            cube; `compression` reports the rank and the achieved accuracy. A cube
            that is already compact is returned unchanged.

        Raises
        ------
        ValueError
            If ``tolerance`` is negative or ``max_rank`` < 0.

        Examples
        --------
        >>> small = cube.compress(tolerance=0.01, max_rank=64)  # doctest: +SKIP
        >>> small.rank, small.compression.residual_rms  # doctest: +SKIP
        (9, 0.0499)
        """
        if self.is_compact:
            return self
        if not (np.isfinite(tolerance) and tolerance >= 0):
            raise ValueError(f"tolerance must be >= 0, found {tolerance!r}.")
        if int(max_rank) != max_rank or max_rank < 0:
            raise ValueError(f"max_rank must be a non-negative integer, found {max_rank!r}.")
        lowrank = _compress(
            _Planes(np.asarray(self._flux, dtype=np.float32)),
            _Planes(np.asarray(self._flux_err, dtype=np.float32)),
            float(tolerance),
            int(max_rank),
        )
        return _compact_cube(
            lowrank,
            self.sector,
            self.camera,
            self.ccd,
            self._time,
            self._time_start,
            self._time_stop,
            self.row,
            self.column,
            npix=self.npix,
            nframes=self.nframes,
            meta=self.meta,
            strap_column=self.strap_column,
            strap_response=self.strap_response,
            fine=self.fine,
            region=self.region,
        )

    # ------------------------------------------------------------------ evaluation
    def evaluate(
        self,
        time,
        row,
        column,
        bounds: str = "raise",
        max_gap: float | None = None,
    ) -> CubeEvaluation:
        """Interpolate the model to a grid of times and pixels.

        Space uses cubic convolution on the bin centres and time uses linear
        interpolation between planes that never crosses a data gap (see
        `lk_scatterlight.interpolate`). Variances are propagated through the
        weights as ``sum(w**2 * var)``, treating bins and planes as independent.

        A compact cube is evaluated from its factors without reconstructing
        planes: the spatial weights are applied to its ``rank + 1`` component
        images, its coefficient series are interpolated to the requested times,
        and one small matrix product combines them (likewise for the variance).

        Parameters
        ----------
        time : array of float or `~astropy.time.Time`, shape (ntime,)
            Times to evaluate; floats are BTJD [d] (TDB), as ``tpf.time.value``.
        row, column : array of float, shapes (nrow,), (ncol,)
            1-based CCD pixel coordinates, as ``tpf.row + arange(n)``; must lie in
            the science area (rows 1..2048, columns 45..2092).
        bounds : {"raise", "nan"}
            What to do with times in a data gap or outside the cube: raise
            `OutsideCubeError`, or return NaN there with ``valid`` False.
        max_gap : float, optional
            Longest hole between planes [d] to interpolate across; default
            `max_gap`.

        Returns
        -------
        evaluation : `CubeEvaluation`
            ``(flux, flux_err, valid)``; flux arrays have shape (ntime, nrow, ncol).
        """
        t, left, right, w_right, valid = self._time_weights(time, bounds, max_gap)
        row, column = _pixel_axes(row, column, self.region)
        wr = interpolate.spatial_weights(row, self.row)
        wc = interpolate.spatial_weights(column, self.column)
        out_shape = (t.size, row.size, column.size)
        if not valid.any():
            nan = np.full(out_shape, np.nan, dtype=np.float32)
            return CubeEvaluation(nan << _FLUX_UNIT, nan.copy() << _FLUX_UNIT, valid)
        (r0, r1), (c0, c1) = interpolate.support(wr), interpolate.support(wc)
        factor = self.column_response(column)  # strap columns respond more
        wr, wc = wr[:, r0:r1], wc[:, c0:c1] * factor[:, None]
        if self._lowrank is not None:
            # All times at once (invalid ones get NaN rows): no expanded copies.
            lr, tw = self._lowrank, (left, right, w_right, valid)
            flux = _evaluate_factors(lr.flux_coef, lr.flux_comp, *tw, wr, wc, r0, c0)
            var = _evaluate_factors(lr.var_coef, lr.var_comp, *tw, wr, wc, r0, c0, squared=True)
        else:
            li, ri, w = left[valid], right[valid], w_right[valid]
            p0, p1 = li.min(), ri.max() + 1
            block = self._block(self._flux, p0, p1, r0, r1, c0, c1)
            block_err = self._block(self._flux_err, p0, p1, r0, r1, c0, c1)
            f_sp = interpolate.apply_weights(block, wr, wc)
            v_sp = interpolate.apply_weights(block_err**2, wr**2, wc**2)
            # The output is float32, the precision of the stored cube: half the memory
            # traffic of float64 for large outputs (12,000 cadences x a 25x25 TPF).
            flux = interpolate.blend(f_sp.astype(np.float32), li - p0, ri - p0, w)
            var = interpolate.blend(v_sp.astype(np.float32), li - p0, ri - p0, w, squared=True)
            if not valid.all():
                flux, var = _expand(flux, valid), _expand(var, valid)
        if self.fine is not None:
            fine = self.fine.evaluate(
                left[valid], right[valid], w_right[valid], row, column, factor
            )
            if fine is not None:
                flux[valid] += fine[0]
                var[valid] += fine[1]
        np.sqrt(var, out=var)
        return CubeEvaluation(flux << _FLUX_UNIT, var << _FLUX_UNIT, valid)

    def evaluate_sum(
        self,
        time,
        row,
        column,
        mask: np.ndarray | None = None,
        bounds: str = "raise",
        max_gap: float | None = None,
    ) -> CubeEvaluation:
        """The model summed over a set of pixels (an aperture), with its exact uncertainty.

        Neighbouring pixels are interpolated from the same bins, so their model
        errors are correlated: summing per-pixel errors in quadrature would
        underestimate the error of the sum. Here the sum is written as one set
        of weights on the bins, ``A = Wr.T @ mask @ Wc``, and its variance is
        ``sum(A**2 * var)`` per plane, then combined in time as in `evaluate`.

        Parameters
        ----------
        time, row, column, bounds, max_gap
            As in `evaluate`.
        mask : array of bool, shape (nrow, ncol), optional
            Pixels to sum; default all.

        Returns
        -------
        evaluation : `CubeEvaluation`
            ``flux`` and ``flux_err`` have shape (ntime,) [e-/s].
        """
        t, left, right, w_right, valid = self._time_weights(time, bounds, max_gap)
        row, column = _pixel_axes(row, column, self.region)
        mask = np.ones((row.size, column.size)) if mask is None else np.asarray(mask, float)
        if mask.shape != (row.size, column.size):
            raise ValueError(f"mask has shape {mask.shape}, expected {(row.size, column.size)}.")
        mask = mask * self.column_response(column)  # strap columns respond more
        weights = interpolate.spatial_weights(row, self.row).T @ mask
        weights = weights @ interpolate.spatial_weights(column, self.column)
        flux = np.full(t.size, np.nan)
        var = np.full(t.size, np.nan)
        if valid.any() and mask.any():
            (r0, r1), (c0, c1) = interpolate.support(weights.T), interpolate.support(weights)
            weights = weights[r0:r1, c0:c1]
            p0, p1 = left[valid].min(), right[valid].max() + 1
            if self._lowrank is not None:  # weights on the factors, then the series
                lr = self._lowrank
                comp = lr.flux_comp[:, r0:r1, c0:c1].astype(float)
                f_pl = lr.flux_coef[p0:p1].astype(float) @ np.einsum("mrc,rc->m", comp, weights)
                comp = lr.var_comp[:, r0:r1, c0:c1]
                v_pl = lr.var_coef[p0:p1] @ np.einsum("mrc,rc->m", comp, weights**2)
            else:
                block = self._block(self._flux, p0, p1, r0, r1, c0, c1)
                f_pl = np.einsum("trc,rc->t", block, weights)
                err = self._block(self._flux_err, p0, p1, r0, r1, c0, c1)
                v_pl = np.einsum("trc,rc->t", err**2, weights**2)
            li, ri, w = left[valid] - p0, right[valid] - p0, w_right[valid]
            flux[valid] = (1 - w) * f_pl[li] + w * f_pl[ri]
            var[valid] = (1 - w) ** 2 * v_pl[li] + w**2 * v_pl[ri]
            fine = None
            if self.fine is not None:
                fine = self.fine.evaluate_sum(
                    left[valid], right[valid], w_right[valid], row, column, mask
                )
            if fine is not None:
                flux[valid] += fine[0]
                var[valid] += fine[1]
        elif valid.any():
            flux[valid], var[valid] = 0.0, 0.0
        return CubeEvaluation(flux * _FLUX_UNIT, np.sqrt(var) * _FLUX_UNIT, valid)

    def column_response(self, column) -> np.ndarray:
        """Relative scattered-light response of each column (1 except on measured straps).

        Parameters
        ----------
        column : array of float, shape (ncol,)
            1-based CCD columns.

        Returns
        -------
        factor : ndarray, shape (ncol,)
        """
        column = np.atleast_1d(np.asarray(column, dtype=float))
        factor = np.ones(column.size)
        if self.strap_column.size:
            lookup = dict(
                zip(self.strap_column.tolist(), self.strap_response.tolist(), strict=True)
            )
            for i, c in enumerate(column):
                if c == int(c) and int(c) in lookup:
                    factor[i] = lookup[int(c)]
        return factor

    def _time_weights(self, time, bounds: str, max_gap: float | None):
        """Times as BTJD floats, their plane indices and weights; raises per ``bounds``."""
        if bounds not in ("raise", "nan"):
            raise ValueError(f"bounds must be 'raise' or 'nan', not {bounds!r}.")
        t = np.atleast_1d(_to_btjd(time)).astype(float)
        segment = interpolate.time_segments(
            self._time_start, self._time_stop, self.max_gap if max_gap is None else max_gap
        )
        left, right, w_right, valid = interpolate.time_weights(
            t, self._time, self._time_start, self._time_stop, segment
        )
        if bounds == "raise" and not valid.all():
            bad = t[~valid]
            raise OutsideCubeError(
                f"{bad.size} of {t.size} times (first BTJD {bad[0]:.5f}) fall in a data gap "
                f"or outside the cube's coverage, BTJD {self._time_start[0]:.5f}.."
                f"{self._time_stop[-1]:.5f} ({self!r}). Pass bounds='nan' to get NaN there "
                "instead, or use a cube covering these times."
            )
        return t, left, right, w_right, valid

    @staticmethod
    def _block(array, p0, p1, r0, r1, c0, c1) -> np.ndarray:
        # Whole rows first: from a file (`_FitsImage`) that is one contiguous read per
        # plane instead of one per plane and row (5x faster for a 330-plane cube).
        return np.asarray(array[p0:p1, r0:r1, :][:, :, c0:c1], dtype=float)

    # ------------------------------------------------------------------ validation / I/O
    def _validate(self) -> None:
        problems = []
        if not 1 <= self.camera <= 4:
            problems.append(f"camera must be 1-4, found {self.camera}")
        if not 1 <= self.ccd <= 4:
            problems.append(f"ccd must be 1-4, found {self.ccd}")
        if self.sector < 1:
            problems.append(f"sector must be >= 1, found {self.sector}")
        nt = self._time.size
        if nt == 0:
            problems.append("the cube has no time planes")
        for name in ("time_start", "time_stop"):
            if getattr(self, "_" + name).shape != (nt,):
                problems.append(
                    f"{name} has shape {getattr(self, '_' + name).shape}, expected ({nt},)"
                )
        if not problems:
            if not np.all(np.isfinite(self._time)):
                problems.append("times contain NaN or infinity")
            elif np.any(np.diff(self._time) <= 0):
                i = int(np.argmax(np.diff(self._time) <= 0))
                problems.append(
                    f"times are not strictly increasing (plane {i + 1}: {self._time[i + 1]!r} "
                    f"after {self._time[i]!r})"
                )
            elif np.any(self._time_start > self._time) or np.any(self._time_stop < self._time):
                problems.append("some plane centres lie outside their time_start..time_stop")
        for name, axis, (lo, hi) in (
            ("row", self.row, SCIENCE_ROWS),
            ("column", self.column, SCIENCE_COLUMNS),
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
        if not problems and not self.region.is_full:
            # The pixels the bins cover: a bin centred on c spans c -/+ (bin - 1) / 2.
            half = (self.pixel_bin - 1) / 2
            first = (self.row[0] - half, self.column[0] - half)
            last = (self.row[-1] + half, self.column[-1] + half)
            region = self.region
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
        expected = self.shape
        for name in ("_flux", "_flux_err"):
            shape = tuple(np.shape(getattr(self, name)))
            if shape != expected:
                problems.append(
                    f"{name[1:]} has shape {shape}, expected {expected} (time, row, column)"
                )
        if self.npix.shape != expected[1:]:
            problems.append(f"npix has shape {self.npix.shape}, expected {expected[1:]}")
        if self.strap_column.shape != self.strap_response.shape or self.strap_column.ndim != 1:
            problems.append("strap_column and strap_response must be 1-D arrays of equal length")
        elif np.any(~np.isfinite(self.strap_response)) or np.any(self.strap_response <= 0):
            problems.append("strap_response must be finite and positive")
        if self.nframes.shape != (nt,):
            problems.append(f"nframes has shape {self.nframes.shape}, expected ({nt},)")
        if self.fine is not None:
            problems.extend(self.fine.validate(nt))
        if problems:
            raise CubeFormatError("Invalid scattered-light cube: " + "; ".join(problems) + ".")
        if isinstance(self._flux, np.ndarray):  # in-memory arrays are cheap to check fully
            _check_values(self._flux, self._flux_err)

    def _to_hdulist(self, compact: bool = False) -> fits.HDUList:
        from . import __version__

        if compact and self._lowrank is None:
            msg = "call compress() before writing the compact encoding"
            raise ValueError(msg)
        primary = fits.PrimaryHDU()
        h = primary.header
        h["SLFORMAT"] = (FORMAT_VERSION, "lk_scatterlight cube format version")
        h["SLENCODE"] = ("LOWRANK" if compact else "DENSE", "encoding of flux and flux_err")
        h["CREATOR"] = (
            str(self.meta.get("creator", "lk_scatterlight")),
            "software that built the cube",
        )
        h["PROCVER"] = (str(self.meta.get("version", __version__)), "version of that software")
        h["WRITER"] = ("lk_scatterlight", "software that wrote this file")
        h["WRITEVER"] = (__version__, "its version")
        h["TELESCOP"] = ("TESS", "telescope")
        h["SECTOR"] = (self.sector, "observing sector")
        h["CAMERA"] = (self.camera, "camera number")
        h["CCD"] = (self.ccd, "CCD number")
        h["TIMESYS"] = ("TDB", "time system of all times")
        h["BJDREFI"] = (2457000, "integer part of BTJD reference date")
        h["BJDREFF"] = (0.0, "fraction of the day in BTJD reference date")
        h["TIMEUNIT"] = ("d", "time unit")
        h["TSTART"] = (self._time_start[0], "[d] BTJD start of the first plane")
        h["TSTOP"] = (self._time_stop[-1], "[d] BTJD stop of the last plane")
        h["NTIME"] = (self.shape[0], "number of time planes")
        h["PIXBIN"] = (self.pixel_bin, "[pixel] bin size in rows and columns")
        if not self.region.is_full:
            for key, card in self.region.to_header().items():
                h[key] = card
        image_header = fits.Header()
        image_header["BUNIT"] = ("electron/s", "per pixel")
        if compact:
            data_hdus = _lowrank_hdus(self._lowrank, h, image_header)
        else:
            data_hdus = [
                fits.ImageHDU(np.asarray(self._flux, np.float32), image_header, name="FLUX"),
                fits.ImageHDU(
                    np.asarray(self._flux_err, np.float32), image_header, name="FLUX_ERR"
                ),
            ]
        time = fits.BinTableHDU.from_columns(
            [
                fits.Column("TIME", "D", unit="d", array=self._time),
                fits.Column("TSTART", "D", unit="d", array=self._time_start),
                fits.Column("TSTOP", "D", unit="d", array=self._time_stop),
                fits.Column("NFRAMES", "J", array=self.nframes),
            ],
            name="TIME",
        )
        time.header["TIMESYS"] = "TDB"
        row = fits.ImageHDU(self.row, name="ROW")
        col = fits.ImageHDU(self.column, name="COLUMN")
        for hdu in (row, col):
            hdu.header["COMMENT"] = "bin centres, 1-based CCD pixels incl. 44 collateral columns"
        npix = fits.ImageHDU(self.npix, name="NPIX")
        keys = sorted(self.meta)
        provenance = fits.BinTableHDU.from_columns(
            [
                fits.Column("KEY", "A64", array=np.array(keys, dtype="U64")),
                fits.Column(
                    "VALUE",
                    f"A{max([len(json.dumps(self.meta[k])) for k in keys] + [1])}",
                    array=np.array([json.dumps(self.meta[k]) for k in keys]),
                ),
            ],
            name="PROVENANCE",
        )
        straps = fits.BinTableHDU.from_columns(
            [
                fits.Column("COLUMN", "J", array=self.strap_column),
                fits.Column("RESPONSE", "D", array=self.strap_response),
            ],
            name="STRAPS",
        )
        straps.header["COMMENT"] = "scattered-light response of strap columns vs neighbours"
        fine = self.fine.to_hdus() if self.fine is not None and len(self.fine) else []
        return fits.HDUList([primary, *data_hdus, time, row, col, npix, provenance, straps, *fine])


# ---------------------------------------------------------------------- helpers
_to_btjd = to_btjd


def _default_extents(btjd: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
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


def _to_flux_array(value, name: str) -> np.ndarray:
    if isinstance(value, u.Quantity):
        try:
            value = value.to_value(_FLUX_UNIT)
        except u.UnitConversionError as err:
            raise CubeFormatError(f"{name} must be in electron/s, found {value.unit}.") from err
    return np.asarray(value, dtype=np.float32)


def _check_values(flux: np.ndarray, flux_err: np.ndarray) -> None:
    bad_err = not np.all(np.isfinite(flux_err)) or bool(np.any(flux_err < 0))
    _raise_value_problems(int(np.sum(~np.isfinite(flux))), bad_err)


def _raise_value_problems(bad_flux: int, bad_err: bool) -> None:
    """Raise for ``bad_flux`` NaN or infinite flux bins, or for invalid errors."""
    if bad_flux:
        raise CubeFormatError(
            f"Invalid scattered-light cube: flux has {bad_flux} NaN or infinite bins; a cube "
            "must be filled (the builder fills empty bins from their neighbours)."
        )
    if bad_err:
        msg = "Invalid scattered-light cube: flux_err must be finite and non-negative."
        raise CubeFormatError(msg)


def _pixel_axes(row, column, region: Region) -> tuple[np.ndarray, np.ndarray]:
    """Row and column coordinates as 1-D float arrays, checked against the cube's region."""
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
    if not region.contains(row, column):
        raise OutsideCubeError(
            f"pixels rows {row.min():g}..{row.max():g}, columns {column.min():g}..{column.max():g} "
            f"are outside this regional cube, which covers {region}. Use a cube built for "
            "these pixels (lk-scatterlight build --for-tpf FILE, or tpf.to_corrector("
            '"scatterlight", cube="build")) or a whole-CCD cube.'
        )
    return row, column


def _expand(values: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Values of the valid times placed in a NaN array covering all times."""
    out = np.full((valid.size,) + values.shape[1:], np.nan, dtype=values.dtype)
    out[valid] = values
    return out


def _header_unit_ok(header: fits.Header, extname: str) -> None:
    bunit = str(header.get("BUNIT", "")).strip()
    if bunit not in _ACCEPTED_BUNITS:
        raise CubeFormatError(
            f"Extension {extname} has BUNIT {bunit!r}; expected 'electron/s' (e-/s per pixel)."
        )


def _read_lk(hdul: fits.HDUList, path: Path, names: list[str]) -> ScatterLightCube:
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
            _header_unit_ok(hdul[ext].header, ext)
    table = hdul["TIME"].data
    for colname in ("TIME", "TSTART", "TSTOP", "NFRAMES"):
        if colname not in table.columns.names:
            raise CubeFormatError(f"{path}: TIME table has no {colname} column.")
    unit = str(hdul["TIME"].columns["TIME"].unit or "").strip()
    if unit != "d":
        raise CubeFormatError(f"{path}: TIME column unit is {unit!r}, expected 'd' (BTJD days).")
    meta = {}
    if "PROVENANCE" in names:
        prov = hdul["PROVENANCE"].data
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
        np.array(table["TIME"], dtype=float),
        np.array(table["TSTART"], dtype=float),
        np.array(table["TSTOP"], dtype=float),
        np.array(hdul["ROW"].data, dtype=float),
        np.array(hdul["COLUMN"].data, dtype=float),
    )
    try:
        region = Region.from_header(header)
    except ValueError as err:
        raise CubeFormatError(f"{path}: {err}") from err
    kwargs = {
        "region": region,
        "npix": np.array(hdul["NPIX"].data),
        "nframes": np.array(table["NFRAMES"]),
        "meta": meta,
        **_read_straps(hdul, names),
    }
    if any(n in names for n in FINE_EXTENSIONS):
        missing = [n for n in FINE_EXTENSIONS if n not in names]
        if missing:
            raise CubeFormatError(f"{path} has a fine layer without extension {missing[0]}.")
        kwargs["fine"] = FineLayer.from_hdul(hdul, path)
    if encoding == "LOWRANK":
        return _compact_cube(_read_lowrank(hdul, path), *args, **kwargs)
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
    return ScatterLightCube(*args, flux, flux_err, **kwargs)


def _read_lowrank(hdul: fits.HDUList, path: Path) -> _LowRank:
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
        hdu = hdul[name]
        shape = tuple(hdu.shape)
        if len(shape) != ndim:
            raise CubeFormatError(
                f"{path}: extension {name} has shape {shape}; the LOWRANK encoding needs "
                f"{ndim} axes."
            )
        # A rank-0 cube has empty component and coefficient arrays.
        arrays[name] = np.zeros(shape, np.float32) if 0 in shape else np.array(hdu.data)
    try:
        return _LowRank(
            arrays["FLUX_MEAN"],
            arrays["FLUX_COMP"],
            arrays["FLUX_COEF"],
            arrays["ERR_SCALE"],
            arrays["ERR_IMAGE"],
            CompressionInfo(**values),
        )
    except CubeFormatError as err:
        raise CubeFormatError(f"{path}: {err}") from err


def _read_straps(hdul: fits.HDUList, names: list[str]) -> dict[str, np.ndarray]:
    """The optional STRAPS table as keyword arguments of `ScatterLightCube`."""
    if "STRAPS" not in names:
        return {}
    table = hdul["STRAPS"].data
    return {
        "strap_column": np.array(table["COLUMN"], dtype=int),
        "strap_response": np.array(table["RESPONSE"], dtype=float),
    }


def _read_tess_backml(hdul: fits.HDUList, path: Path) -> ScatterLightCube:
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
    if "TIME" not in [h.name for h in hdul]:
        raise CubeFormatError(f"{path}: tess-backml cube has no TIME extension.")
    data = np.asarray(hdul["SCATTER LIGHT CUBE"].data, dtype=np.float32)
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
        start, stop = _default_extents(btjd)
    b = int(header["PIXBIN"])
    ny, nx = flux.shape[1:]
    row = b * np.arange(ny) + (b + 1) / 2
    column = 45 + b * np.arange(nx) + (b + 1) / 2
    npix = np.asarray(hdul["PIXEL COUNTS"].data) if "PIXEL COUNTS" in hdul else None
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
    return ScatterLightCube(
        header["SECTOR"],
        header["CAMERA"],
        header["CCD"],
        btjd,
        start,
        stop,
        row,
        column,
        flux,
        flux_err,
        npix=npix,
        nframes=nframes,
        meta=meta,
    )


# ---------------------------------------------------------------------- low-rank encoding
#: Extensions of the LOWRANK encoding and their number of axes.
_LOWRANK_EXTENSIONS = {
    "FLUX_MEAN": 2,
    "FLUX_COMP": 3,
    "FLUX_COEF": 2,
    "ERR_IMAGE": 2,
    "ERR_SCALE": 1,
}
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
#: Values per chunk when a whole cube is streamed through memory (16 MB of float32).
_CHUNK_VALUES = 2**22
#: Oversampling and power iterations of the randomised SVD (Halko et al. 2011).
_OVERSAMPLE, _POWER_ITERATIONS = 16, 2


def _lowrank_hdus(
    lowrank: _LowRank, primary: fits.Header, image_header: fits.Header
) -> list[fits.ImageHDU]:
    """The data extensions of a LOWRANK file; adds the compression cards to ``primary``."""
    for key, field, comment in _COMPRESSION_CARDS:
        value = getattr(lowrank.info, field)
        primary[key] = (int(value) if field in ("rank", "max_rank") else float(value), comment)
    hdus = [
        fits.ImageHDU(lowrank.mean, image_header, name="FLUX_MEAN"),
        fits.ImageHDU(lowrank.components, name="FLUX_COMP"),
        fits.ImageHDU(lowrank.coefficients, image_header, name="FLUX_COEF"),
        fits.ImageHDU(lowrank.err_image, image_header, name="ERR_IMAGE"),
        fits.ImageHDU(lowrank.err_scale, name="ERR_SCALE"),
    ]
    comments = (
        "temporal mean of FLUX, (nrow, ncol)",
        "spatial components, orthonormal, (k, nrow, ncol)",
        "temporal coefficients, (ntime, k)",
        "FLUX_ERR = hypot(ERR_SCALE[t] ERR_IMAGE, SLTRUNC)",
        "dimensionless, RMS 1, (ntime,)",
    )
    for hdu, comment in zip(hdus, comments, strict=True):
        hdu.header["COMMENT"] = comment
    hdus[0].header["COMMENT"] = "FLUX[t] = FLUX_MEAN + sum_i FLUX_COEF[t, i] FLUX_COMP[i]"
    return hdus


def _compact_cube(lowrank: _LowRank, *args, **kwargs) -> ScatterLightCube:
    """A cube with the axes ``args[:8]`` of `ScatterLightCube` whose flux is ``lowrank``."""
    cube = ScatterLightCube(
        *args,
        _Factored(lowrank.flux_coef, lowrank.flux_comp),
        _Factored(lowrank.var_coef, lowrank.var_comp, sqrt=True),
        **kwargs,
    )
    cube._lowrank = lowrank
    return cube


def _evaluate_factors(
    coef: np.ndarray,
    comp: np.ndarray,
    left: np.ndarray,
    right: np.ndarray,
    w_right: np.ndarray,
    valid: np.ndarray,
    row_weights: np.ndarray,
    col_weights: np.ndarray,
    r0: int,
    c0: int,
    squared: bool = False,
) -> np.ndarray:
    """``coef @ comp`` interpolated to times and pixels without reconstructing planes.

    Parameters
    ----------
    coef : ndarray, shape (ntime, m)
    comp : ndarray, shape (m, nrow_bins, ncol_bins)
    left, right, w_right, valid : arrays, shape (n,)
        Time weights (absolute plane indices) from `interpolate.time_weights`;
        rows where ``valid`` is False are NaN.
    row_weights, col_weights : ndarray, shapes (nrow, rb), (ncol, cb)
        Spatial weights on the bins ``r0:r0 + rb``, ``c0:c0 + cb``.
    squared : bool
        Square all weights, to propagate variances.

    Returns
    -------
    ndarray of float32, shape (n, nrow, ncol)
    """
    rb, cb = row_weights.shape[1], col_weights.shape[1]
    if squared:
        row_weights, col_weights = row_weights**2, col_weights**2
    block = np.asarray(comp[:, r0 : r0 + rb, c0 : c0 + cb], dtype=float)
    images = interpolate.apply_weights(block, row_weights, col_weights)  # (m, nrow, ncol)
    series = interpolate.blend(np.asarray(coef, dtype=float), left, right, w_right, squared)
    # float32, like the dense path: (n, m) @ (m, nrow * ncol) is a single sgemm.
    out = series.astype(np.float32) @ images.reshape(images.shape[0], -1).astype(np.float32)
    out[~valid] = np.nan
    return out.reshape((left.size,) + images.shape[1:])


class _Planes:
    """Planes of a (ntime, nrow, ncol) array, read in blocks of whole planes.

    The compression streams its input through these blocks, so its working memory
    is a few blocks plus factors of ``ntime x rank`` values, whatever ``ntime``:
    the array can be a `numpy.memmap` (the builder's work area) as well as an
    in-memory array.

    Parameters
    ----------
    array : array-like, shape (m, nrow, ncol)
        Supports basic and integer indexing along the first axis.
    index : array of int, optional
        Positions along the first axis of the planes to use, in order (default: all).
    chunk : int, optional
        Planes per block; default about `_CHUNK_VALUES` values.
    """

    def __init__(self, array, index: np.ndarray | None = None, chunk: int | None = None):
        self.array = array
        self.index = None if index is None else np.asarray(index, dtype=np.intp)
        m, nrow, ncol = np.shape(array)
        self.ntime = m if self.index is None else int(self.index.size)
        if self.index is not None and np.any((self.index < 0) | (self.index >= m)):
            msg = f"plane index out of range for {m} planes."
            raise IndexError(msg)
        self.image_shape = (int(nrow), int(ncol))
        self.npix = int(nrow) * int(ncol)
        per_plane = max(self.npix, 1)
        self.chunk = max(1, _CHUNK_VALUES // per_plane) if chunk is None else max(1, int(chunk))

    def __getitem__(self, part: slice) -> np.ndarray:
        """Planes ``part`` (positions among the used planes), float32, shape (n, npix)."""
        rows = np.arange(self.ntime)[part] if self.index is None else self.index[part]
        if _is_file_map(self.array):
            planes = _read_rows(self.array, rows)
        else:
            planes = self.array[part] if self.index is None else self.array[rows]
        return np.asarray(planes, dtype=np.float32).reshape(-1, self.npix)

    def parts(self) -> Iterator[slice]:
        """Slices of ``chunk`` planes covering all used planes."""
        for start in range(0, self.ntime, self.chunk):
            yield slice(start, min(start + self.chunk, self.ntime))

    def blocks(self) -> Iterator[tuple[slice, np.ndarray]]:
        """``(part, self[part])`` for every block."""
        for part in self.parts():
            yield part, self[part]


def _is_file_map(array) -> bool:
    """Whether ``array`` is a C-ordered `numpy.memmap` of a whole file section."""
    return (
        isinstance(array, np.memmap)
        and getattr(array, "filename", None) is not None
        and array.flags.c_contiguous
        and array.base is not None
        and isinstance(array.base, mmap.mmap)
    )


def _read_rows(array: np.memmap, rows: np.ndarray) -> np.ndarray:
    """``array[rows]`` read from its file rather than through the mapping.

    Pages touched through a mapping count in the process's resident memory until
    the kernel reclaims them, so reading a whole memory-mapped cube block by block
    would still raise the peak RSS in proportion to its size; file reads leave the
    data in the page cache only. Consecutive rows are read at once.
    """
    out = np.empty((rows.size,) + array.shape[1:], dtype=array.dtype)
    row_bytes = out[:1].nbytes
    buffer = memoryview(out.reshape(-1).view(np.uint8))
    starts = np.flatnonzero(np.diff(rows, prepend=-2) != 1)
    ends = np.append(starts[1:], rows.size)
    with open(array.filename, "rb", buffering=0) as f:
        for a, b in zip(starts, ends, strict=True):
            f.seek(array.offset + int(rows[a]) * row_bytes)
            view, done = buffer[a * row_bytes : b * row_bytes], 0
            while done < len(view):
                got = f.readinto(view[done:])
                if not got:
                    raise EOFError(f"{array.filename} is shorter than its array.")
                done += got
    return out


class _PlaneStats(NamedTuple):
    """Per-bin statistics of a cube, from one pass over its planes (`_plane_stats`)."""

    mean: np.ndarray  # temporal mean of each bin, float64 (npix,)
    flux_ms: float  # mean square flux
    centred_bin: np.ndarray  # mean squared deviation from the mean of each bin, (npix,)
    noise_bin: np.ndarray  # mean squared error of each bin, (npix,)


def _plane_stats(flux: _Planes, flux_err: _Planes) -> _PlaneStats:
    """Mean, variance and noise of each bin in one pass; checks the values as `_check_values`.

    The variances are accumulated about a shift (the first block's mean), which is
    close to the mean, so they do not suffer the cancellation of ``E[x**2] - E[x]**2``.
    """
    nt = flux.ntime
    shift = None
    s1 = s2 = noise = 0.0
    bad_flux, bad_err = 0, False
    for (_, x), (_, e) in zip(flux.blocks(), flux_err.blocks(), strict=True):
        bad_flux += int(np.count_nonzero(~np.isfinite(x)))
        bad_err = bad_err or not bool(np.all(e >= 0) and np.all(np.isfinite(e)))
        d = x.astype(float)
        if shift is None:
            shift = d.mean(axis=0)
        d -= shift
        s1 = s1 + d.sum(axis=0)
        s2 = s2 + np.einsum("ij,ij->j", d, d)
        e = e.astype(float)
        noise = noise + np.einsum("ij,ij->j", e, e) / nt
    _raise_value_problems(bad_flux, bad_err)
    offset = s1 / nt  # mean - shift
    mean = shift + offset
    centred_bin = np.clip(s2 / nt - offset**2, 0, None)
    flux_ms = float(np.mean(centred_bin + mean**2))
    return _PlaneStats(mean, flux_ms, centred_bin, noise)


def _centred_blocks(flux: _Planes, mean: np.ndarray) -> Iterator[tuple[slice, np.ndarray]]:
    """Blocks of ``flux - mean`` in float64."""
    for part, x in flux.blocks():
        yield part, x.astype(float) - mean


def _times(flux: _Planes, mean: np.ndarray, right: np.ndarray) -> np.ndarray:
    """``(flux - mean) @ right``, shape (ntime, m), one pass over the planes."""
    out = np.empty((flux.ntime, right.shape[1]))
    for part, x in _centred_blocks(flux, mean):
        out[part] = x @ right
    return out


def _transpose_times(flux: _Planes, mean: np.ndarray, left: np.ndarray) -> np.ndarray:
    """``(flux - mean).T @ left``, shape (npix, m), one pass over the planes."""
    out = np.zeros((flux.npix, left.shape[1]))
    for part, x in _centred_blocks(flux, mean):
        out += x.T @ left[part]
    return out


def _top_svd(flux: _Planes, mean: np.ndarray, k: int, seed: int = 0):
    """Leading ``k`` singular triplets of ``flux - mean`` (float64), as (u, s, vt).

    Exact (LAPACK) for small matrices, which are loaded whole; otherwise a
    randomised SVD: a Gaussian sketch of ``k + _OVERSAMPLE`` columns refined by
    `_POWER_ITERATIONS` subspace iterations, then an exact SVD of the projected
    matrix (Halko, Martinsson & Tropp 2011, algorithms 4.4 and 5.1). Each product
    with the matrix is one pass over the planes (`_Planes.blocks`), so only
    ``ntime x (k + _OVERSAMPLE)`` and ``npix x (k + _OVERSAMPLE)`` factors are held.
    The returned values are exact for the subspace found, so
    ``|x|**2 - cumsum(s**2)`` is the true residual of each truncation.
    """
    nt, npix = flux.ntime, flux.npix
    if k == 0:
        return np.zeros((nt, 0)), np.zeros(0), np.zeros((0, npix))
    sketch = k + _OVERSAMPLE
    if sketch >= min(nt, npix) or nt * npix <= 2**20:  # small: at most (k + 16) x npix
        x = np.concatenate([block for _, block in _centred_blocks(flux, mean)])
        u, s, vt = np.linalg.svd(x, full_matrices=False)
        return u[:, :k], s[:k], vt[:k]
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(_times(flux, mean, rng.standard_normal((npix, sketch))))
    for _ in range(_POWER_ITERATIONS):
        z, _ = np.linalg.qr(_transpose_times(flux, mean, q))
        q, _ = np.linalg.qr(_times(flux, mean, z))
    ub, s, vt = np.linalg.svd(_transpose_times(flux, mean, q).T, full_matrices=False)
    return q @ ub[:, :k], s[:k], vt[:k]


def _rank1_error_model(err: _Planes):
    """``err (ntime, npix) ~ scale[t] image[p]``: the leading singular pair (power iteration).

    Each iteration is one pass over the planes: ``scale = err @ image / |image|**2``
    block by block, accumulating ``scale @ err``. Returns scale (RMS 1), image
    [e-/s], and the RMS and largest relative deviation over the entries with
    non-zero error.
    """
    nt, npix = err.ntime, err.npix
    image = np.zeros(npix)
    for _, e in err.blocks():
        image += e.sum(axis=0, dtype=float) / nt
    if not np.any(image):
        return np.zeros(nt), np.zeros(npix), 0.0, 0.0
    for _ in range(30):  # a non-negative, nearly rank-1 matrix: a few steps suffice
        image32, norm2 = image.astype(np.float32), image @ image
        new, scale2 = np.zeros(npix), 0.0
        for _, e in err.blocks():
            scale = (e @ image32).astype(float) / norm2
            new += (scale.astype(np.float32) @ e).astype(float)
            scale2 += scale @ scale
        new /= scale2
        done = np.allclose(new, image, rtol=1e-6, atol=0)
        image = new
        if done:
            break
    # The final scale and the deviations of scale x image (a product that does not
    # depend on how the pair is normalised) in one more pass.
    image32, norm2 = image.astype(np.float32), image @ image
    scale = np.empty(nt)
    sum2, count, worst = 0.0, 0, 0.0
    for part, e in err.blocks():
        scale[part] = (e @ image32).astype(float) / norm2
        e = e.astype(float)
        use = e > 0
        rel = np.abs(scale[part, None] * image[None] - e)[use] / e[use]
        if rel.size:
            sum2, count, worst = sum2 + rel @ rel, count + rel.size, max(worst, rel.max())
    norm = np.sqrt(np.mean(scale**2))
    return scale / norm, image * norm, float(np.sqrt(sum2 / max(count, 1))), float(worst)


def _choose_rank(
    stats: _PlaneStats, s: np.ndarray, vt: np.ndarray, nt: int, tolerance: float
) -> tuple[int, bool, np.ndarray, float]:
    """The rank rule of `ScatterLightCube.compress`.

    Returns the rank (the largest available if none satisfies the rule), whether
    one satisfies it, the residual RMS of each truncation ``k = 0..len(s)`` and
    the target RMS.
    """
    npix = stats.mean.size
    noise_ms = float(stats.noise_bin.mean())
    # Residual RMS of each truncation k = 0..top (exact for the subspace found).
    kept = np.concatenate([[0], np.cumsum(s**2)]) / (nt * npix)
    residual = np.sqrt(np.clip(float(stats.centred_bin.mean()) - kept, 0, None))
    target = max((1 + tolerance) * np.sqrt(noise_ms), 2**-20 * np.sqrt(stats.flux_ms))
    # Per bin too: the overall RMS can reach the noise while a few bins (corners,
    # edges) still hold signal. Each bin's residual must stay within what its own
    # noise allows, with room for the chi-square scatter of the noisiest of npix bins.
    kept_bin = np.cumsum((s[:, None] * vt) ** 2, axis=0) / nt  # (top, npix)
    residual_bin = np.clip(stats.centred_bin - np.vstack([np.zeros(npix), kept_bin]), 0, None)
    floor = (2**-20) ** 2 * stats.flux_ms
    allowed = (1 + max(0.5, 5 / np.sqrt(2 * nt))) ** 2 * np.maximum(stats.noise_bin, floor)
    bins_ok = np.all(residual_bin <= allowed, axis=1)
    enough = np.flatnonzero((residual <= target) & bins_ok)
    k = int(enough[0]) if enough.size else s.size
    return k, bool(enough.size), residual, target


def _achieved_residual(
    flux: _Planes, mean32: np.ndarray, coefficients: np.ndarray, components: np.ndarray
) -> tuple[float, float]:
    """RMS and largest absolute value of the stored factors minus the dense flux."""
    sum2, worst = 0.0, 0.0
    for part, x in flux.blocks():
        diff = (coefficients[part] @ components + mean32).astype(float) - x
        sum2, worst = sum2 + np.einsum("ij,ij->", diff, diff), max(worst, np.abs(diff).max())
    return float(np.sqrt(sum2 / (flux.ntime * flux.npix))), float(worst)


def _compress(flux: _Planes, flux_err: _Planes, tolerance: float, max_rank: int) -> _LowRank:
    """Truncated-SVD factors of a cube read plane block by plane block.

    See `ScatterLightCube.compress` for the rank rule and the error model. The
    planes are streamed (`_Planes`): one pass for the statistics, 2 + 2
    `_POWER_ITERATIONS` for the SVD, one for the achieved residual and a few for
    the error model, so memory does not grow with the number of planes beyond
    factors of ``ntime x (max_rank + _OVERSAMPLE)`` values.

    Raises
    ------
    CubeFormatError
        If the flux has NaN or infinite values or the errors are negative or not finite.
    """
    nt, npix = flux.ntime, flux.npix
    nr, nc = flux.image_shape
    if flux_err.ntime != nt or flux_err.image_shape != flux.image_shape:
        msg = "flux and flux_err must hold the same planes and bins."
        raise ValueError(msg)
    stats = _plane_stats(flux, flux_err)
    top = min(max_rank, nt - 1, npix)
    u, s, vt = _top_svd(flux, stats.mean, top)
    k, found, residual, target = _choose_rank(stats, s, vt, nt, tolerance)
    if not found:
        log.warning(
            "compress: %d components leave a residual RMS of %.4g e-/s, above the target "
            "%.4g e-/s ((1 + tolerance) x noise RMS); keeping %d (raise max_rank for more). "
            "The excess is added to flux_err.",
            top,
            residual[top],
            target,
            top,
        )
    mean32 = stats.mean.astype(np.float32)
    coefficients = (u[:, :k] * s[:k]).astype(np.float32)
    components = vt[:k].astype(np.float32)
    del u, vt
    # Achieved error of what is stored (float32 factors) against the dense cube.
    residual_rms, worst = _achieved_residual(flux, mean32, coefficients, components)
    # Noise left in the residual of a rank-k fit with a mean: (nt - 1 - k)(npix - k) of the
    # nt npix degrees of freedom; the rest of the residual is signal the truncation dropped.
    noise_ms = float(stats.noise_bin.mean())
    kept = max(0, nt - 1 - k) * max(0, npix - k) / (nt * npix)
    truncation = float(np.sqrt(max(0.0, residual_rms**2 - noise_ms * kept)))
    scale, image, err_rms, err_max = _rank1_error_model(flux_err)
    info = CompressionInfo(
        rank=k,
        tolerance=tolerance,
        max_rank=max_rank,
        noise_rms=float(np.sqrt(noise_ms)),
        residual_rms=residual_rms,
        residual_max=worst,
        truncation_rms=truncation,
        err_model_rms=err_rms,
        err_model_max=err_max,
    )
    log.info(
        "compressed a %d x %d x %d cube to rank %d: residual RMS %.4g e-/s (noise RMS %.4g), "
        "truncation RMS %.4g e-/s",
        nt,
        nr,
        nc,
        k,
        residual_rms,
        info.noise_rms,
        truncation,
    )
    return _LowRank(
        mean32.reshape(nr, nc),
        components.reshape(k, nr, nc),
        coefficients,
        scale,
        image.reshape(nr, nc),
        info,
    )
