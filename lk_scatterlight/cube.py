"""The scattered-light cube: data model and evaluation.

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
factors, and written as the ``LOWRANK`` encoding of the cube format.

The FITS format lives in `lk_scatterlight.cubefile` and the compression in
`lk_scatterlight.lowrank`; both work on arrays, so this module is the only one
that makes `ScatterLightCube` objects from them.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from astropy import units as u
from astropy.time import Time

from . import binsplit, cubefile, interpolate
from .ccd import SCIENCE_COLUMNS, SCIENCE_ROWS, Region, btjd_time, check_pixels, to_btjd
from .compactfine import carry_compression
from .cubefile import ENCODINGS, FORMAT_VERSION, default_extents, read_fields, to_hdulist
from .exceptions import CubeFormatError, OutsideCubeError
from .finelayer import FineLayer
from .lowrank import (
    DEFAULT_MAX_RANK,
    DEFAULT_TOLERANCE,
    CompressionInfo,
    Factored,
    LowRank,
    Planes,
    check_values,
    compress_planes,
    evaluate_factors,
)
from .utils import atomic_write, moved_names, refuse_overwrite

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

#: Default longest hole interpolation may bridge, in units of the median plane width.
GAP_FACTOR = 3.0
_FLUX_UNIT = u.electron / u.s


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
    strap_response_err : array of float, optional
        1-sigma statistical error of each ``strap_response`` (default 0);
        `evaluate` adds ``strap_response_err / strap_response`` times the
        model there to the error in quadrature.
    fine : `~lk_scatterlight.finelayer.FineLayer`, optional
        Structure finer than the bins (glint ridges, shadow edges) on a finer
        grid, stored only in the tiles and planes where the builder found it;
        `evaluate` and `evaluate_sum` add it to the binned model.
    region : `~lk_scatterlight.ccd.Region`, optional
        Where the cube may be evaluated (1-based CCD pixels). Default: the whole
        science area. A regional cube, built from part of a CCD, covers only
        the pixels whose interpolation never reaches the edge of what it was
        built from; evaluating outside raises `OutsideCubeError`.
    noise_share : array of float, shape (nrow, ncol), optional
        The noise's share of each bin's error variance in the planes where a
        fine-layer block covers the bin (`lk_scatterlight.binsplit`): there
        `evaluate_sum` adds only that share of the bin's variance, the fine
        layer modelling the structure inside the bin. Without it (older files)
        the whole bin error is added.
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
        noise_share: np.ndarray | None = None,
        strap_response_err: np.ndarray | None = None,
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
        self._lowrank: LowRank | None = None
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
        self.strap_response_err = (
            np.zeros(self.strap_response.shape)
            if strap_response_err is None
            else np.asarray(strap_response_err, dtype=float)
        )
        self.fine = fine
        self.noise_share = None if noise_share is None else np.asarray(noise_share, np.float32)
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
        noise_share: np.ndarray | None = None,
        strap_response_err=None,
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
        npix, nframes, meta, strap_column, strap_response, fine, region, noise_share
        strap_response_err
            See the class docstring.

        Returns
        -------
        cube : `ScatterLightCube`
        """
        btjd = _to_btjd(time)
        if time_start is None or time_stop is None:
            start, stop = default_extents(btjd)
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
            noise_share=noise_share,
            strap_response_err=strap_response_err,
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
        fields = read_fields(path)
        if fields.lowrank is not None:
            return compact_cube(fields.lowrank, *fields.axes, **fields.options)
        return ScatterLightCube(*fields.axes, fields.flux, fields.flux_err, **fields.options)

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
        refuse_overwrite(path, overwrite)
        compact = self.is_compact if compact is None else bool(compact)
        source = self.compress() if compact and not self.is_compact else self
        hdul = to_hdulist(source, compact)
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
    def plane_width(self) -> float:
        """Median width of the planes [d] (the cube's time resolution)."""
        return float(np.median(self._time_stop - self._time_start))

    @property
    def max_gap(self) -> float:
        """Default longest hole [d] between planes that evaluation interpolates across.

        `GAP_FACTOR` times the median plane width: a dropped frame or two is
        bridged, an orbit gap or downlink is not.
        """
        return GAP_FACTOR * self.plane_width

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

        **Error model.** ``flux_err`` is the error of the reconstruction, not of
        the dense cube: a truncated SVD keeps only the part of the noise that
        lies in its components (`~lk_scatterlight.lowrank_errors.noise_projection`).
        With the dense errors modelled as ``scale[t] * image[r, c]`` (their
        leading singular pair, each bin no fine block covers keeping its mean
        square; its accuracy is recorded),
        ``flux_err**2 = G[t] image**2 + G'[t] H[r, c] + T[r, c]**2``:
        the noise the temporal components keep (smooth in time), the noise the
        spatial components keep of the rest (smooth in space) and the signal
        the truncation dropped, per bin where it is significant
        (`~lk_scatterlight.lowrank_errors.truncation_image`; the whole cube's estimate is
        `CompressionInfo`'s ``truncation_rms``). On
        simulated sectors this is 5 to 10 times below the dense errors and
        within 10 % of the actual error against the noiseless truth.
        Evaluation combines each term as it is correlated (see
        `~lk_scatterlight.lowrank.evaluate_factors`).

        **Fine layer.** A fine layer holds the residual against the dense
        planes. The compact copy's layer is the one the builder would have made
        against the compact planes with the same basis images: in its tiles it
        also holds what the compression lost there
        (`~lk_scatterlight.compactfine.carry_compression`). Its blocks, quoted
        errors and size are unchanged.

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
        flux = np.asarray(self._flux, dtype=np.float32)
        flux_err = np.asarray(self._flux_err, dtype=np.float32)
        carried = binsplit.covered_anywhere(self.fine, self.row, self.column, len(flux))
        lowrank = compress_planes(
            Planes(flux), Planes(flux_err), float(tolerance), int(max_rank), carried
        )
        fine = self.fine
        if fine is not None:  # its tiles carry what the compression loses there
            fine = carry_compression(
                fine, lowrank, flux, flux_err, self.row, self.column, noise_share=self.noise_share
            )
        return compact_cube(
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
            fine=fine,
            region=self.region,
            noise_share=self.noise_share,
            strap_response_err=self.strap_response_err,
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
        row, column = check_pixels(row, column, self.region)
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
            flux = evaluate_factors(lr.flux_coef, lr.flux_comp, *tw, wr, wc, r0, c0)
            var = evaluate_factors(
                lr.var_coef, lr.var_comp, *tw, wr, wc, r0, c0, squared=True, smooth=lr.var_smooth
            )
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
                flux, var = (
                    interpolate.fill_invalid(flux, valid),
                    interpolate.fill_invalid(var, valid),
                )
        dropped = binsplit.dropped_at_pixels(self, (left, right, w_right, valid), wr, wc, r0, c0)
        if dropped is not None:  # the structure part of covered bins: the fine layer's
            var[valid] = np.maximum(var[valid] - dropped, 0)
        if self.fine is not None:
            fine = self.fine.evaluate(
                left[valid], right[valid], w_right[valid], row, column, factor
            )
            if fine is not None:
                flux[valid] += fine[0]
                var[valid] += fine[1]
        relative = self._strap_relative_error(column)
        if relative.any():  # the light times the response's error, on strap columns
            var += (flux * relative.astype(np.float32)) ** 2
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
        Where a fine-layer block covers a bin, only the noise share of the bin's
        variance is added (``noise_share``, in files that have it): the layer
        models the structure inside the bin and quotes its own error.
        The fine layer's error adds the same way, except the part that is
        structure it cannot follow (``FineLayer.misfit``, in files that have
        it): that changes sign within a few pixels, so it adds with the
        correlation between pixels the builder measured
        (`~lk_scatterlight.finelayer.FineLayer.evaluate_sum`).

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
        row, column = check_pixels(row, column, self.region)
        mask = np.ones((row.size, column.size)) if mask is None else np.asarray(mask, float)
        if mask.shape != (row.size, column.size):
            raise ValueError(f"mask has shape {mask.shape}, expected {(row.size, column.size)}.")
        aperture, mask = mask, mask * self.column_response(column)  # straps respond more
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
                # Per variance term (`evaluate_factors`): correlated between bins, the
                # standard deviations add; correlated between planes, the variances do.
                in_space = np.einsum("mrc,rc->m", comp, weights**2)
                correlated = lr.var_smooth[:, 1]
                in_space[correlated] = (
                    np.einsum("mrc,rc->m", np.sqrt(comp[correlated]), weights) ** 2
                )
                terms = lr.var_coef[p0:p1] * in_space
                smooth = terms[:, lr.var_smooth[:, 0]].sum(axis=1)
                v_pl = terms[:, ~lr.var_smooth[:, 0]].sum(axis=1)
                bin_var = None  # `dropped_block` takes the noise terms from the factors
            else:
                block = self._block(self._flux, p0, p1, r0, r1, c0, c1)
                f_pl = np.einsum("trc,rc->t", block, weights)
                bin_var = self._block(self._flux_err, p0, p1, r0, r1, c0, c1) ** 2
                v_pl = np.einsum("trc,rc->t", bin_var, weights**2)
            dropped = binsplit.dropped_block(
                self, slice(p0, p1), slice(r0, r1), slice(c0, c1), bin_var
            )
            if dropped is not None:  # the structure part of covered bins: the fine layer's
                v_pl = v_pl - np.einsum("trc,rc->t", dropped, weights**2)
            li, ri, w = left[valid] - p0, right[valid] - p0, w_right[valid]
            flux[valid] = (1 - w) * f_pl[li] + w * f_pl[ri]
            var[valid] = (1 - w) ** 2 * v_pl[li] + w**2 * v_pl[ri]
            if self._lowrank is not None:
                var[valid] += (1 - w) * smooth[li] + w * smooth[ri]
            var[valid] = np.maximum(var[valid], 0)
            fine = None
            if self.fine is not None:
                fine = self.fine.evaluate_sum(
                    left[valid], right[valid], w_right[valid], row, column, mask
                )
            if fine is not None:
                flux[valid] += fine[0]
                var[valid] += fine[1]
            var[valid] += self._strap_sum_variance(t[valid], row, column, aperture, max_gap)
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
        return self._strap_lookup(column, self.strap_response, 1.0)

    def _strap_lookup(self, column, values: np.ndarray, default: float) -> np.ndarray:
        """``values`` (one per strap column) at each column, ``default`` elsewhere."""
        column = np.atleast_1d(np.asarray(column, dtype=float))
        out = np.full(column.size, default)
        if self.strap_column.size:
            lookup = dict(zip(self.strap_column.tolist(), np.asarray(values).tolist(), strict=True))
            for i, c in enumerate(column):
                if c == int(c) and int(c) in lookup:
                    out[i] = lookup[int(c)]
        return out

    def _strap_relative_error(self, column) -> np.ndarray:
        """``strap_response_err / strap_response`` of each column (0 off the straps)."""
        if not np.any(self.strap_response_err > 0):
            return np.zeros(np.size(column))
        return self._strap_lookup(column, self.strap_response_err / self.strap_response, 0.0)

    def _strap_sum_variance(self, btjd, row, column, mask, max_gap) -> np.ndarray:
        """Variance of an aperture sum from the straps' response errors, shape (ntime,).

        A strap's response error scales the whole column alike, so it adds
        coherently over the column's pixels and independently between columns.
        """
        relative = self._strap_relative_error(column)
        use = np.flatnonzero(relative * mask.any(axis=0))
        if use.size == 0:
            return np.zeros(np.size(btjd))
        flux = self.evaluate(btjd, row, column[use], bounds="nan", max_gap=max_gap).flux.value
        light = np.einsum("trc,rc->tc", flux.astype(float), mask[:, use]) * relative[use]
        return np.sum(light**2, axis=1)

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

    def bin_noise_variance(self, planes: slice, rows: slice, columns: slice) -> np.ndarray:
        """The bins' error variance without the compact cube's truncation term.

        The part of a bin's error that a fine-layer block can take over
        (`lk_scatterlight.binsplit.dropped_block`): a dense cube's whole
        ``flux_err**2``, a compact cube's noise terms
        (`~lk_scatterlight.lowrank.LowRank.noise_variance`: the low-rank
        truncation is not the fine layer's).

        Parameters
        ----------
        planes, rows, columns : slice
            Planes and bins, ``start:stop``.

        Returns
        -------
        variance : ndarray, shape (nplanes, nrow, ncol)
            [(e-/s)^2].
        """
        if self._lowrank is not None:
            return self._lowrank.noise_variance(planes, rows, columns)
        p, r, c = planes, rows, columns
        return self._block(self._flux_err, p.start, p.stop, r.start, r.stop, c.start, c.stop) ** 2

    def truncation_variance(self, planes: slice, rows: slice, columns: slice) -> np.ndarray | None:
        """A compact cube's truncation term for a block of planes and bins (None: dense),
        `~lk_scatterlight.lowrank.LowRank.truncation_variance`.

        Where a fine-layer block covers a bin the layer carries the compression's
        loss (`~lk_scatterlight.compactfine.carry_compression`), so
        `lk_scatterlight.binsplit.dropped_block` takes this term out there.

        Returns
        -------
        variance : ndarray, shape (nplanes, nrow, ncol), or None
            [(e-/s)^2].
        """
        if self._lowrank is None:
            return None
        return self._lowrank.truncation_variance(planes, rows, columns)

    @staticmethod
    def _block(array, p0, p1, r0, r1, c0, c1) -> np.ndarray:
        # Whole rows first: from a file (`_FitsImage`) that is one contiguous read per
        # plane instead of one per plane and row (5x faster for a 330-plane cube).
        return np.asarray(array[p0:p1, r0:r1, :][:, :, c0:c1], dtype=float)

    # ------------------------------------------------------------------ validation / I/O
    def _validate(self) -> None:
        problems = cubefile.problems(self)
        if problems:
            raise CubeFormatError("Invalid scattered-light cube: " + "; ".join(problems) + ".")
        if isinstance(self._flux, np.ndarray):  # in-memory arrays are cheap to check fully
            check_values(self._flux, self._flux_err)


# ---------------------------------------------------------------------- helpers
_to_btjd = to_btjd


def _to_flux_array(value, name: str) -> np.ndarray:
    if isinstance(value, u.Quantity):
        try:
            value = value.to_value(_FLUX_UNIT)
        except u.UnitConversionError as err:
            raise CubeFormatError(f"{name} must be in electron/s, found {value.unit}.") from err
    return np.asarray(value, dtype=np.float32)


def compact_cube(lowrank: LowRank, *args, **kwargs) -> ScatterLightCube:
    """A cube with the axes ``args[:8]`` of `ScatterLightCube` whose flux is ``lowrank``."""
    cube = ScatterLightCube(
        *args,
        Factored(lowrank.flux_coef, lowrank.flux_comp),
        Factored(lowrank.var_coef, lowrank.var_comp, sqrt=True),
        **kwargs,
    )
    cube._lowrank = lowrank
    return cube


#: Private names that moved (the builder imported them from here): old -> new.
__getattr__ = moved_names(
    __name__,
    {
        "_CHUNK_VALUES": "lk_scatterlight.lowrank.CHUNK_VALUES",
        "_compress": "lk_scatterlight.lowrank.compress_planes",
        "_Planes": "lk_scatterlight.lowrank.Planes",
        "_LowRank": "lk_scatterlight.lowrank.LowRank",
        "_Factored": "lk_scatterlight.lowrank.Factored",
        "_is_file_map": "lk_scatterlight.lowrank.is_file_map",
        "_compact_cube": "lk_scatterlight.cube.compact_cube",
    },
)
