"""Low-rank (truncated SVD) compression of a cube's flux and uncertainty.

A cube's planes, as a matrix of ``ntime`` planes by ``nrow * ncol`` bins, are
close to low rank. `compress_planes` streams the planes (`Planes`, blocks of about
`CHUNK_VALUES` values, from memory or from a memory-mapped work area) through a
randomised SVD and returns the factors (`LowRank`) with `CompressionInfo`
describing the achieved accuracy. `Factored` evaluates ``coef @ comp`` by section
and `evaluate_factors` interpolates the factors to times and pixels without
rebuilding the planes. The rank rule and the error model are described in
`lk_scatterlight.cube.ScatterLightCube.compress`, the error model's parts in
`lk_scatterlight.lowrank_errors`; the ``LOWRANK`` file encoding in
``docs/format.rst`` (written and read by `lk_scatterlight.cubefile`).

This module knows nothing of `~lk_scatterlight.cube.ScatterLightCube`: it works on
arrays, so the cube, the file format and the builder can all use it.
"""

from __future__ import annotations

import logging
import mmap
from collections.abc import Iterator
from typing import NamedTuple

import numpy as np

from . import interpolate
from .exceptions import CubeFormatError
from .fastfits import ScaledImage
from .lowrank_errors import noise_projection, rank1_error_model, truncation_image

__all__ = [
    "CompressionInfo",
    "LowRank",
    "Factored",
    "Planes",
    "compress_planes",
    "evaluate_factors",
    "is_file_map",
    "check_values",
    "raise_value_problems",
    "CHUNK_VALUES",
    "DEFAULT_TOLERANCE",
    "DEFAULT_MAX_RANK",
    "PRECISION",
    "error_step",
]

log = logging.getLogger(__name__)

#: Default tolerance of `ScatterLightCube.compress`: allowed excess of the residual RMS
#: over the noise RMS.
DEFAULT_TOLERANCE = 0.01
#: Default cap on the number of components of `ScatterLightCube.compress`.
DEFAULT_MAX_RANK = 64
#: Default rounding of the factors on writing: expected RMS rounding error of the flux
#: at most this fraction of its quoted ``flux_err``, at every bin and plane
#: (`LowRank.quantum`).
PRECISION = 0.05
#: Largest stored |integer| of a rounded factor (int32 holds 2**31 - 1); a finer step than
#: ``peak / 2**30`` would only resolve float32 rounding.
_INT32_SPAN = 2.0**30
#: Errors and error factors are stored as multiples of a power of two at most 2**-this
#: of their smallest positive value (`error_step`): they change by less than 0.2 %.
ERROR_BITS = 8
#: Values per chunk when a whole cube is streamed through memory (16 MB of float32).
CHUNK_VALUES = 2**22
#: Oversampling and power iterations of the randomised SVD (Halko et al. 2011).
OVERSAMPLE, POWER_ITERATIONS = 16, 2


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


class Factored:
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


class _Stacked:
    """``concatenate([mean[None], components])`` without decoding ``components`` (a
    `~lk_scatterlight.fastfits.ScaledImage`) beyond the bins asked for: indexing with
    ``[:, rows, columns]`` (slices or integers) decodes only those bins."""

    def __init__(self, mean: np.ndarray, components: ScaledImage):
        self.mean, self.components = mean, components
        self.shape = (components.shape[0] + 1, *mean.shape)
        self.ndim, self.dtype = 3, np.dtype(np.float32)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key) -> np.ndarray:
        key = key if isinstance(key, tuple) else (key,)
        if len(key) == 3 and isinstance(key[0], slice) and key[0] == slice(None):
            space = key[1:]
            return np.concatenate([self.mean[None][(slice(None), *space)], self.components[key]])
        return np.asarray(self)[key]

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        return np.concatenate([self.mean[None], np.asarray(self.components)]).astype(
            dtype or np.float32, copy=False
        )


class LowRank:
    """The factors of a compact cube (see ``docs/format.rst``, encoding ``LOWRANK``).

    flux[t, r, c] = mean[r, c] + sum_i coefficients[t, i] components[i, r, c]

    With the noise projection (``err_time`` and ``err_space``, format version 3),

    flux_err[t, r, c]**2 = err_time[t, 0] err_image[r, c]**2
    + err_time[t, 1] err_space[r, c]**2 + truncation_rms**2

    (see `~lk_scatterlight.lowrank_errors.noise_projection`); without it (version 2 files),
    flux_err[t, r, c]**2 = (err_scale[t] err_image[r, c])**2 + truncation_rms**2,
    the dense cube's noise, which overstates the reconstruction's.
    """

    def __init__(
        self,
        mean: np.ndarray,
        components: np.ndarray,
        coefficients: np.ndarray,
        err_scale: np.ndarray,
        err_image: np.ndarray,
        info: CompressionInfo,
        err_time: np.ndarray | None = None,
        err_space: np.ndarray | None = None,
        err_trunc: np.ndarray | None = None,
    ):
        self.mean = np.asarray(mean, dtype=np.float32)
        # A file's components may come as a `~lk_scatterlight.fastfits.ScaledImage`,
        # decoded by region as evaluation needs them (`components` decodes them all).
        lazy = isinstance(components, ScaledImage)
        self._components = components if lazy else np.asarray(components, dtype=np.float32)
        self.coefficients = np.asarray(coefficients, dtype=np.float32)
        self.err_scale = np.asarray(err_scale, dtype=np.float32)
        self.err_image = np.asarray(err_image, dtype=np.float32)
        self.err_time = None if err_time is None else np.asarray(err_time, dtype=np.float32)
        self.err_space = None if err_space is None else np.asarray(err_space, dtype=np.float32)
        self.err_trunc = None if err_trunc is None else np.asarray(err_trunc, dtype=np.float32)
        self.info = info
        self._check()
        nt = self.coefficients.shape[0]
        # The mean is one more component with coefficient 1; the variance is a sum of
        # products (time series) x (image), evaluated like flux. Per term, ``var_smooth``
        # says whether its errors are fully correlated between neighbouring planes (time)
        # and bins (space), and so combine linearly in the standard deviation, or are
        # independent, and combine in quadrature (see `evaluate_factors`).
        self.flux_coef = np.hstack([np.ones((nt, 1), np.float32), self.coefficients])
        self.flux_comp = (
            _Stacked(self.mean, self._components)
            if lazy
            else np.concatenate([self.mean[None], self._components])
        )
        if self.err_trunc is None:  # one level everywhere (files without ERR_TRUNC)
            truncation = np.full(self.mean.shape, float(info.truncation_rms) ** 2)
        else:
            truncation = self.err_trunc.astype(float) ** 2
        image2 = self.err_image.astype(float) ** 2
        if self.err_time is None:  # the dense cube's noise, and the dropped signal
            self.var_coef = np.column_stack([self.err_scale.astype(float) ** 2, np.ones(nt)])
            self.var_comp = np.stack([image2, truncation])
            self.var_smooth = np.array([[False, False], [True, True]])
        else:  # the noise the temporal and the spatial components keep, the dropped signal
            self.var_coef = np.column_stack([self.err_time.astype(float), np.ones(nt)])
            self.var_comp = np.stack([image2, self.err_space.astype(float) ** 2, truncation])
            self.var_smooth = np.array([[True, False], [False, True], [True, True]])

    @property
    def rank(self) -> int:
        return self._components.shape[0]

    @property
    def components(self) -> np.ndarray:
        """The spatial components, shape (rank, nrow, ncol), float32."""
        if not isinstance(self._components, np.ndarray):
            self._components = np.asarray(self._components, dtype=np.float32)
        return self._components

    def noise_variance(self, planes: slice, rows: slice, columns: slice) -> np.ndarray:
        """The noise terms of the variance (all but the truncation, the last term),
        shape (nplanes, nrow, ncol) [(e-/s)^2], for planes and bins ``start:stop``."""
        return np.tensordot(self.var_coef[planes, :-1], self.var_comp[:-1, rows, columns], axes=1)

    def truncation_variance(self, planes: slice, rows: slice, columns: slice) -> np.ndarray:
        """The truncation term of the variance (the signal the components dropped), shape
        (nplanes, nrow, ncol) [(e-/s)^2], for planes and bins ``start:stop``."""
        return np.multiply.outer(self.var_coef[planes, -1], self.var_comp[-1, rows, columns])

    def quantum(self, precision: float = PRECISION) -> tuple[np.ndarray, np.ndarray]:
        """Rounding steps of the components and of their coefficients, for writing.

        Rounding component ``i`` to a step ``q_i`` and its coefficients to
        ``c_i`` adds to the flux at plane ``t`` and bin ``b`` an error of
        expected variance ``sum_i (coef[t, i]**2 q_i**2 + comp[i, b]**2 c_i**2) / 12``.
        Half of ``(precision * flux_err)**2`` goes to each sum, with ``flux_err``
        bounded from below per plane (its smallest value over bins) and per bin
        (over planes); within a sum, the step of each component is inversely
        proportional to the largest value it multiplies, ``max |coef[:, i]|``
        (``max |comp[i]|``), so every component adds the same worst-case error.
        No step is finer than ``max |values| / 2**30`` (int32 range; far below
        float32 resolution). Files keep the rounding's RMS below ``precision``
        times the quoted error at every bin and plane: with the default 0.05,
        it adds at most 0.13 % to the error in quadrature.

        Parameters
        ----------
        precision : float
            Allowed RMS rounding error, in units of the quoted ``flux_err``.

        Returns
        -------
        comp_step, coef_step : ndarrays of float64, shape (rank,)
            Components are multiples of ``comp_step`` (dimensionless);
            coefficients ``coefficients[:, i]`` multiples of ``coef_step[i]`` [e-/s].
        """
        k = self.rank
        comp = self.components.reshape(k, -1).astype(np.float64)
        coef = self.coefficients.astype(np.float64)
        var_comp = self.var_comp.reshape(len(self.var_comp), -1)
        low_time = self.var_coef @ var_comp.min(axis=1)  # (ntime,): min over bins
        low_bin = self.var_coef.min(axis=0) @ var_comp  # (npix,): min over planes
        peak_coef = np.abs(coef).max(axis=0, initial=0.0)
        peak_comp = np.abs(comp).max(axis=1, initial=0.0)

        def scale(values, peak, low, axis):
            """Common numerator of the steps: their RMS sum meets half the budget."""
            with np.errstate(divide="ignore", invalid="ignore"):
                load = np.sum(np.where(peak > 0, values / peak, 0.0) ** 2, axis=axis)
                ratio = np.where(load > 0, low / load, np.inf)
            return precision * np.sqrt(6.0 * ratio.min(initial=np.inf))

        def steps(numerator, peak, values_peak):
            with np.errstate(divide="ignore", invalid="ignore"):
                step = np.where(peak > 0, numerator / peak, np.inf)
            step = np.maximum(np.nan_to_num(step, posinf=np.inf), values_peak / _INT32_SPAN)
            return np.where(np.isfinite(step) & (step > 0), step, 1.0)

        a = scale(coef, peak_coef[None], low_time, 1)
        b = scale(comp, peak_comp[:, None], low_bin, 0)
        return steps(a, peak_coef, peak_comp), steps(b, peak_comp, peak_coef)

    def _check(self) -> None:
        problems = []
        shape2d = self.mean.shape
        if self.mean.ndim != 2:
            problems.append(f"the mean image has shape {shape2d}, expected (nrow, ncol)")
        elif self._components.ndim != 3 or self._components.shape[1:] != shape2d:
            problems.append(
                f"the components have shape {self._components.shape}, expected (k, *{shape2d})"
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
        elif (self.err_time is None) != (self.err_space is None):
            problems.append("the noise projection needs both its time factors and its image")
        elif self.err_time is not None and self.err_time.shape != (len(self.err_scale), 2):
            problems.append(
                f"the noise projection's time factors have shape {self.err_time.shape}, "
                f"expected ({len(self.err_scale)}, 2)"
            )
        elif self.err_space is not None and self.err_space.shape != shape2d:
            problems.append(
                f"the noise projection's image has shape {self.err_space.shape}, expected {shape2d}"
            )
        elif self.err_trunc is not None and self.err_trunc.shape != shape2d:
            problems.append(
                f"the truncation image has shape {self.err_trunc.shape}, expected {shape2d}"
            )
        if not problems:
            names = ["mean", "coefficients", "err_scale", "err_image"]
            if isinstance(self._components, np.ndarray):  # else integers times steps
                names.append("components")
            errors = [self.err_scale, self.err_image]
            if self.err_time is not None:
                names += ["err_time", "err_space"]
                errors += [self.err_time, self.err_space]
            if self.err_trunc is not None:
                names.append("err_trunc")
                errors.append(self.err_trunc)
            for name in names:
                if not np.all(np.isfinite(getattr(self, name))):
                    problems.append(f"{name} has NaN or infinite values")
            if any(np.any(e < 0) for e in errors):
                problems.append("the error factors must be non-negative")
            trunc = float(self.info.truncation_rms)
            if not (np.isfinite(trunc) and trunc >= 0):
                problems.append(f"the truncation RMS must be finite and >= 0, found {trunc!r}")
        if problems:
            raise CubeFormatError("Invalid compact cube: " + "; ".join(problems) + ".")


def error_step(values: np.ndarray) -> float:
    """The step non-negative errors ``values`` are rounded to on writing [their unit].

    A power of two at most ``2**-ERROR_BITS`` of the smallest positive value (so
    every value changes by less than 0.2 %), and no finer than the int32 range needs.
    """
    values = np.asarray(values, dtype=np.float64)
    positive = values[values > 0]
    finest = positive.min() * 2.0**-ERROR_BITS if positive.size else 1.0
    return float(2.0 ** np.floor(np.log2(max(finest, values.max(initial=0.0) / _INT32_SPAN))))


def check_values(flux: np.ndarray, flux_err: np.ndarray) -> None:
    """Raise `CubeFormatError` if ``flux`` is not finite or ``flux_err`` not finite and >= 0."""
    bad_err = not np.all(np.isfinite(flux_err)) or bool(np.any(flux_err < 0))
    raise_value_problems(int(np.sum(~np.isfinite(flux))), bad_err)


def raise_value_problems(bad_flux: int, bad_err: bool) -> None:
    """Raise for ``bad_flux`` NaN or infinite flux bins, or for invalid errors."""
    if bad_flux:
        raise CubeFormatError(
            f"Invalid scattered-light cube: flux has {bad_flux} NaN or infinite bins; a cube "
            "must be filled (the builder fills empty bins from their neighbours)."
        )
    if bad_err:
        msg = "Invalid scattered-light cube: flux_err must be finite and non-negative."
        raise CubeFormatError(msg)


def evaluate_factors(
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
    smooth: np.ndarray | None = None,
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
        Propagate variances: ``coef`` and ``comp`` are variance factors, combined
        with squared weights (independent errors).
    smooth : array of bool, shape (m, 2), optional
        With ``squared``, per term: whether its errors are fully correlated
        between neighbouring planes (column 0) and bins (column 1). Correlated
        in time, the variance is interpolated with linear weights (an upper
        bound of the exact ``((1 - w) s1 + w s2)**2``); in space, the standard
        deviations ``sqrt(comp)`` are interpolated and squared.

    Returns
    -------
    ndarray of float32, shape (n, nrow, ncol)
    """
    rb, cb = row_weights.shape[1], col_weights.shape[1]
    block = np.asarray(comp[:, r0 : r0 + rb, c0 : c0 + cb], dtype=float)
    coef = np.asarray(coef, dtype=float)
    if squared:
        smooth = np.zeros((len(block), 2), bool) if smooth is None else np.asarray(smooth)
        images = interpolate.apply_weights(block, row_weights**2, col_weights**2)
        if smooth[:, 1].any():
            deviation = np.sqrt(block[smooth[:, 1]])
            images[smooth[:, 1]] = (
                interpolate.apply_weights(deviation, row_weights, col_weights) ** 2
            )
        series = interpolate.blend(coef, left, right, w_right, squared=True)
        if smooth[:, 0].any():
            series[:, smooth[:, 0]] = interpolate.blend(coef[:, smooth[:, 0]], left, right, w_right)
    else:
        images = interpolate.apply_weights(block, row_weights, col_weights)  # (m, nrow, ncol)
        series = interpolate.blend(coef, left, right, w_right)
    # float32, like the dense path: (n, m) @ (m, nrow * ncol) is a single sgemm.
    out = series.astype(np.float32) @ images.reshape(images.shape[0], -1).astype(np.float32)
    out[~valid] = np.nan
    return out.reshape((left.size,) + images.shape[1:])


class Planes:
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
        Planes per block; default about `CHUNK_VALUES` values.
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
        self.chunk = max(1, CHUNK_VALUES // per_plane) if chunk is None else max(1, int(chunk))

    def __getitem__(self, part: slice) -> np.ndarray:
        """Planes ``part`` (positions among the used planes), float32, shape (n, npix)."""
        rows = np.arange(self.ntime)[part] if self.index is None else self.index[part]
        if is_file_map(self.array):
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


def is_file_map(array) -> bool:
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


def _plane_stats(flux: Planes, flux_err: Planes) -> _PlaneStats:
    """Mean, variance and noise of each bin in one pass; checks the values as `check_values`.

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
    raise_value_problems(bad_flux, bad_err)
    offset = s1 / nt  # mean - shift
    mean = shift + offset
    centred_bin = np.clip(s2 / nt - offset**2, 0, None)
    flux_ms = float(np.mean(centred_bin + mean**2))
    return _PlaneStats(mean, flux_ms, centred_bin, noise)


def _centred_blocks(flux: Planes, mean: np.ndarray) -> Iterator[tuple[slice, np.ndarray]]:
    """Blocks of ``flux - mean`` in float64."""
    for part, x in flux.blocks():
        yield part, x.astype(float) - mean


def _times(flux: Planes, mean: np.ndarray, right: np.ndarray) -> np.ndarray:
    """``(flux - mean) @ right``, shape (ntime, m), one pass over the planes."""
    out = np.empty((flux.ntime, right.shape[1]))
    for part, x in _centred_blocks(flux, mean):
        out[part] = x @ right
    return out


def _transpose_times(flux: Planes, mean: np.ndarray, left: np.ndarray) -> np.ndarray:
    """``(flux - mean).T @ left``, shape (npix, m), one pass over the planes."""
    out = np.zeros((flux.npix, left.shape[1]))
    for part, x in _centred_blocks(flux, mean):
        out += x.T @ left[part]
    return out


def _top_svd(flux: Planes, mean: np.ndarray, k: int, seed: int = 0):
    """Leading ``k`` singular triplets of ``flux - mean`` (float64), as (u, s, vt).

    Exact (LAPACK) for small matrices, which are loaded whole; otherwise a
    randomised SVD: a Gaussian sketch of ``k + OVERSAMPLE`` columns refined by
    `POWER_ITERATIONS` subspace iterations, then an exact SVD of the projected
    matrix (Halko, Martinsson & Tropp 2011, algorithms 4.4 and 5.1). Each product
    with the matrix is one pass over the planes (`Planes.blocks`), so only
    ``ntime x (k + OVERSAMPLE)`` and ``npix x (k + OVERSAMPLE)`` factors are held.
    The returned values are exact for the subspace found, so
    ``|x|**2 - cumsum(s**2)`` is the true residual of each truncation.
    """
    nt, npix = flux.ntime, flux.npix
    if k == 0:
        return np.zeros((nt, 0)), np.zeros(0), np.zeros((0, npix))
    sketch = k + OVERSAMPLE
    if sketch >= min(nt, npix) or nt * npix <= 2**20:  # small: at most (k + 16) x npix
        x = np.concatenate([block for _, block in _centred_blocks(flux, mean)])
        u, s, vt = np.linalg.svd(x, full_matrices=False)
        return u[:, :k], s[:k], vt[:k]
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(_times(flux, mean, rng.standard_normal((npix, sketch))))
    for _ in range(POWER_ITERATIONS):
        z, _ = np.linalg.qr(_transpose_times(flux, mean, q))
        q, _ = np.linalg.qr(_times(flux, mean, z))
    ub, s, vt = np.linalg.svd(_transpose_times(flux, mean, q).T, full_matrices=False)
    return q @ ub[:, :k], s[:k], vt[:k]


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
    flux: Planes, mean32: np.ndarray, coefficients: np.ndarray, components: np.ndarray
) -> tuple[float, float, np.ndarray]:
    """RMS and largest absolute value of the stored factors minus the dense flux, and
    that difference's mean square over the planes per bin, shape (npix,)."""
    per_bin, worst = 0.0, 0.0
    for part, x in flux.blocks():
        diff = (coefficients[part] @ components + mean32).astype(float) - x
        per_bin = per_bin + np.einsum("ij,ij->j", diff, diff)
        worst = max(worst, np.abs(diff).max())
    per_bin = per_bin / flux.ntime
    return float(np.sqrt(np.mean(per_bin))), float(worst), per_bin


def compress_planes(
    flux: Planes,
    flux_err: Planes,
    tolerance: float,
    max_rank: int,
    exclude: np.ndarray | None = None,
) -> LowRank:
    """Truncated-SVD factors of a cube read plane block by plane block.

    See `ScatterLightCube.compress` for the rank rule and the error model. The
    planes are streamed (`Planes`): one pass for the statistics, 2 + 2
    `POWER_ITERATIONS` for the SVD, one for the achieved residual and a few for
    the error model, so memory does not grow with the number of planes beyond
    factors of ``ntime x (max_rank + OVERSAMPLE)`` values.

    ``exclude`` (bool, ``(nrow, ncol)``): bins a fine layer covers in some plane, which
    takes over most of their bin error (their error model is the leading pair's,
    `~lk_scatterlight.lowrank_errors.rank1_error_model`). Their truncation is
    measured as every other bin's (`~lk_scatterlight.lowrank_errors.truncation_image`):
    evaluation drops it where a block covers the bin in that plane
    (`~lk_scatterlight.binsplit.dropped_block`), and the layer carries the loss only
    where it exceeds the noise (`~lk_scatterlight.compactfine.carry_compression`).
    Left out of the truncation image, a CCD corner whose edge bins a block covers in a
    few planes quoted none (smooth simulated field, ``bench_errors.py --quick``, compact
    corner 3 x 3 sums: actual/quoted 1.27; 1.13 with them).

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
    temporal = u[:, :k]
    spatial = vt[:k]
    del u, vt
    # Achieved error of what is stored (float32 factors) against the dense cube.
    residual_rms, worst, residual_bin = _achieved_residual(flux, mean32, coefficients, components)
    # Noise left in the residual of a rank-k fit with a mean: (nt - 1 - k)(npix - k) of the
    # nt npix degrees of freedom; the rest of the residual is signal the truncation dropped.
    noise_ms = float(stats.noise_bin.mean())
    kept = max(0, nt - 1 - k) * max(0, npix - k) / (nt * npix)
    truncation = float(np.sqrt(max(0.0, residual_rms**2 - noise_ms * kept)))
    exact = None if exclude is None else ~np.asarray(exclude, bool)
    scale, image, err_rms, err_max = rank1_error_model(flux_err, exact)
    err_time, err_space = noise_projection(temporal, spatial, scale, image)
    err_trunc = truncation_image(
        residual_bin, stats.noise_bin, err_time, image, err_space, (nr, nc), nt
    )
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
    return LowRank(
        mean32.reshape(nr, nc),
        components.reshape(k, nr, nc),
        coefficients,
        scale,
        image.reshape(nr, nc),
        info,
        err_time,
        err_space.reshape(nr, nc),
        err_trunc,
    )
