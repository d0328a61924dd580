"""The fine layer in memory: `FineLayer`, its checks and its evaluation.

See the package docstring (`lk_scatterlight.finelayer`) for what the layer
holds. Its FITS extensions are written and read in
`lk_scatterlight.finelayer.fileformat`, which the methods `FineLayer.to_hdus`,
`FineLayer.quantum` and `FineLayer.from_hdul` call.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from astropy.io import fits

from .. import interpolate
from ..ccd import N_SCIENCE, SCIENCE_COLUMNS, SCIENCE_ROWS
from . import fileformat
from .fileformat import FINE_PRECISION

__all__ = ["FineLayer"]

_SCIENCE = N_SCIENCE
_FIRST_ROW, _FIRST_COLUMN = SCIENCE_ROWS[0], SCIENCE_COLUMNS[0]


@dataclass(frozen=True)
class FineLayer:
    """Sparse fine-grid residuals of a cube (see `lk_scatterlight.finelayer`).

    Parameters
    ----------
    pixel_bin : int
        Fine bin size [px]; divides 2048.
    tile : int
        Fine bins per tile side; ``pixel_bin * tile`` divides 2048.
    tile_row, tile_col : ndarray of int, shape (nblocks,)
        0-based tile indices of each block (tile ``(i, j)`` covers science
        rows ``i * pixel_bin * tile`` onwards, 0-based).
    plane : ndarray of int, shape (nblocks,)
        Cube plane of each block.
    error : ndarray of float32, shape (nblocks,)
        Typical 1-sigma uncertainty of one fine bin of the block [e-/s].
    basis : ndarray of float32, shape (nbasis, tile, tile)
        Basis images [e-/s per pixel].
    basis_start, rank : ndarray of int, shape (nblocks,)
        Each block uses basis images ``basis_start .. basis_start + rank - 1``.
    coef : ndarray of float32, shape (ncoef,)
        Coefficients; block ``i`` has ``coef[coef_start[i] : coef_start[i] + rank[i]]``.
    coef_start : ndarray of int, shape (nblocks,), or None
        None: the coefficients follow each other in block order, ``coef_start``
        is the sum of the ranks of the blocks before.
    fill_error : ndarray of float32, shape (nblocks,), optional
        1-sigma error of the block's filled bins (its tile's holes, under
        masked stars and bleed columns) on top of ``error`` [e-/s], for a
        bin of relative fill variance 1 (see ``fill_scale``).
    hole_index : ndarray of int, shape (nblocks,), optional
        The block's hole image in ``holes``; -1: no filled bin is quoted.
    holes : ndarray of uint8, shape (nholes, tile, tile), optional
        Hole images: on the fine bins that were filled, not measured, their
        depth class (1, 2, ...: `~lk_scatterlight.builder.fine.depth_class`
        of their distance to the nearest measured bin; 1 on every filled bin
        of older files); 0 elsewhere. The three are given together or not at
        all (files without them).
    fill_scale : ndarray of float32, shape (nclasses,), optional
        The fill variance of a bin of depth class ``k`` (1-based) is
        ``fill_error**2 * fill_scale[k - 1]``. None (older files): 1 for
        every class. Only with ``holes``.
    fill_map : ndarray of float32, shape (nholes, tile, tile), optional
        Each filled bin's own fill variance relative to ``fill_error**2``
        (0 off the holes): when given, a bin of hole image ``k`` quotes
        ``fill_error**2 * fill_map[k]`` in place of ``fill_scale`` by class
        (the builder's `_fill_local`: the fill error of the measured bins
        nearest to it, about its time mean). None (older files): by class.
        Only with ``holes``.
    misfit : ndarray of float32, shape (nblocks,), optional
        The part of ``error`` that is structure the fine bins cannot follow
        (misfit varying from pixel to pixel, not noise of the bin values) [e-/s].
    misfit_corr : ndarray of float32, shape (nblocks, 2), optional
        How fast that misfit decorrelates along rows and along columns (0..1):
        the builder's covariance of pixels two apart over that of neighbours,
        ``g``. With a Gaussian correlation, pixels ``d`` apart correlate by
        ``g**(d**2 / 3)``; `evaluate_sum` adds the misfit over an aperture so
        (the rest of ``error`` as fully shared by the pixels of a bin). Given
        together with ``misfit`` or not at all (files without them: all of
        ``error`` is shared).
    long_misfit : ndarray of float32, shape (nblocks,), optional
        The part of ``error`` that is structure the fine bins miss alike over
        several pixels (a bin's value off where it cannot follow a ridge's
        profile) [e-/s]; then ``misfit`` is only the part that changes within
        a bin, and ``error**2`` holds both squared.
    long_corr : ndarray of float32, shape (nblocks, 2), optional
        Its correlation ``g`` along rows and along columns (0..1), as
        ``misfit_corr``. Given together with ``long_misfit``, and only with
        ``misfit`` (files without them: the misfit is in one part).
    """

    pixel_bin: int
    tile: int
    tile_row: np.ndarray
    tile_col: np.ndarray
    plane: np.ndarray
    error: np.ndarray
    basis: np.ndarray
    basis_start: np.ndarray
    rank: np.ndarray
    coef: np.ndarray
    coef_start: np.ndarray | None
    fill_error: np.ndarray | None = None
    hole_index: np.ndarray | None = None
    holes: np.ndarray | None = None
    misfit: np.ndarray | None = None
    misfit_corr: np.ndarray | None = None
    fill_scale: np.ndarray | None = None
    long_misfit: np.ndarray | None = None
    long_corr: np.ndarray | None = None
    fill_map: np.ndarray | None = None

    def __post_init__(self):
        if self.coef_start is None:  # coefficients in block order (files may omit COEF)
            rank = np.asarray(self.rank, dtype=np.int64)
            object.__setattr__(self, "coef_start", np.cumsum(rank) - rank)
        for name in ("tile_row", "tile_col", "plane", "basis_start", "rank", "coef_start"):
            object.__setattr__(self, name, np.asarray(getattr(self, name), dtype=np.int64))
        for name in ("error", "basis", "coef"):
            object.__setattr__(self, name, np.asarray(getattr(self, name), dtype=np.float32))
        given = [x is not None for x in (self.fill_error, self.hole_index, self.holes)]
        if any(given) and not all(given):
            msg = "fill_error, hole_index and holes go together: give all three or none."
            raise ValueError(msg)
        if all(given):
            t = self.tile
            object.__setattr__(self, "fill_error", np.asarray(self.fill_error, dtype=np.float32))
            object.__setattr__(self, "hole_index", np.asarray(self.hole_index, dtype=np.int64))
            holes = np.asarray(self.holes).astype(np.uint8).reshape(-1, t, t)
            object.__setattr__(self, "holes", holes)
        if self.fill_scale is not None:
            if self.holes is None:
                msg = "fill_scale needs holes: give fill_error, hole_index and holes too."
                raise ValueError(msg)
            scale = np.asarray(self.fill_scale, dtype=np.float32).ravel()
            object.__setattr__(self, "fill_scale", scale)
        if self.fill_map is not None:
            if self.holes is None:
                msg = "fill_map needs holes: give fill_error, hole_index and holes too."
                raise ValueError(msg)
            object.__setattr__(self, "fill_map", np.asarray(self.fill_map, dtype=np.float32))
        if (self.misfit is None) != (self.misfit_corr is None):
            msg = "misfit and misfit_corr go together: give both or neither."
            raise ValueError(msg)
        if self.misfit is not None:
            object.__setattr__(self, "misfit", np.asarray(self.misfit, dtype=np.float32))
            corr = np.asarray(self.misfit_corr, dtype=np.float32).reshape(-1, 2)
            object.__setattr__(self, "misfit_corr", corr)
        self._check_long_misfit()

    def _check_long_misfit(self):
        if (self.long_misfit is None) != (self.long_corr is None):
            msg = "long_misfit and long_corr go together: give both or neither."
            raise ValueError(msg)
        if self.long_misfit is None:
            return
        if self.misfit is None:
            msg = "long_misfit needs misfit: give misfit and misfit_corr too."
            raise ValueError(msg)
        object.__setattr__(self, "long_misfit", np.asarray(self.long_misfit, dtype=np.float32))
        corr = np.asarray(self.long_corr, dtype=np.float32).reshape(-1, 2)
        object.__setattr__(self, "long_corr", corr)

    def derived(self, name: str, compute: Callable[[FineLayer], np.ndarray]) -> np.ndarray:
        """``compute(self)``, computed on the first call for ``name`` and kept, read-only.

        For values other modules derive from the blocks at every evaluation
        (`lk_scatterlight.binsplit.noise_taken`): the layer is frozen and its
        arrays are not written after construction, so the value stays valid
        (`dataclasses.replace` makes a new layer, with nothing kept). Kept in the
        instance's ``__dict__``, as `functools.cached_property` does, not in a
        field: the fields stay the constructor's arguments.
        """
        kept = self.__dict__.setdefault("_derived", {})
        if name not in kept:
            value = np.asarray(compute(self))
            value.setflags(write=False)
            kept[name] = value
        return kept[name]

    @property
    def has_holes(self) -> bool:
        """Whether some block quotes a fill error on its holes."""
        return self.holes is not None and bool(np.any(self.hole_index >= 0))

    @classmethod
    def from_blocks(cls, pixel_bin, tile, tile_row, tile_col, plane, data, error) -> FineLayer:
        """A layer storing every block as it is (no factoring).

        Parameters
        ----------
        pixel_bin, tile, tile_row, tile_col, plane, error
            As for the class.
        data : array of float, shape (nblocks, tile, tile)
            The blocks [e-/s per pixel].
        """
        n = len(plane)
        index = np.arange(n)
        return cls(
            pixel_bin,
            tile,
            tile_row,
            tile_col,
            plane,
            error,
            basis=np.asarray(data).reshape(n, tile, tile),
            basis_start=index,
            rank=np.ones(n, dtype=int),
            coef=np.ones(n, dtype=np.float32),
            coef_start=index,
        )

    def blocks(self, index: np.ndarray | None = None) -> np.ndarray:
        """Reconstructed blocks ``index`` (default all), shape (n, tile, tile), float32."""
        index = np.arange(len(self)) if index is None else np.asarray(index, dtype=int)
        t = self.tile
        out = np.empty((index.size, t, t), dtype=np.float32)
        rank = self.rank[index]
        single = rank == 1  # raw blocks (and rank-1 tiles): one scaled image each
        i = index[single]
        out[single] = self.coef[self.coef_start[i], None, None] * self.basis[self.basis_start[i]]
        # Factored tiles: the blocks sharing a basis in one matrix product.
        multi = np.flatnonzero(~single)
        for start in np.unique(self.basis_start[index[multi]]):
            members = multi[self.basis_start[index[multi]] == start]
            k = int(self.rank[index[members[0]]])
            coef = self.coef[self.coef_start[index[members]][:, None] + np.arange(k)]
            basis = self.basis[start : start + k].reshape(k, t * t)
            out[members] = (coef @ basis).reshape(-1, t, t)
        return out

    @property
    def nbytes(self) -> int:
        """Size of the stored arrays [bytes]."""
        arrays = (self.tile_row, self.tile_col, self.plane, self.error, self.basis, self.coef)
        extra = (self.fill_error, self.hole_index, self.holes) if self.holes is not None else ()
        extra = (*extra, self.fill_scale) if self.fill_scale is not None else extra
        extra = (*extra, self.fill_map) if self.fill_map is not None else extra
        if self.misfit is not None:
            extra = (*extra, self.misfit, self.misfit_corr)
        if self.long_misfit is not None:
            extra = (*extra, self.long_misfit, self.long_corr)
        return int(sum(a.nbytes for a in (*arrays, *extra)) + 3 * 4 * len(self))

    # ------------------------------------------------------------------ geometry
    @property
    def ntiles(self) -> int:
        """Tiles per side of the CCD."""
        return _SCIENCE // (self.pixel_bin * self.tile)

    @property
    def nbins(self) -> int:
        """Fine bins per side of the CCD."""
        return _SCIENCE // self.pixel_bin

    def __len__(self) -> int:
        return int(self.plane.size)

    def centres(self, first: int) -> np.ndarray:
        """Fine bin centres in 1-based CCD pixels, for axis starting at ``first``."""
        return first + self.pixel_bin * np.arange(self.nbins) + (self.pixel_bin - 1) / 2

    def validate(self, nplanes: int) -> list[str]:
        """Problems with the layer for a cube of ``nplanes`` planes (empty if none)."""
        problems = []
        if self.pixel_bin < 1 or self.tile < 1 or _SCIENCE % (self.pixel_bin * self.tile):
            problems.append(
                f"fine layer bin {self.pixel_bin} px x tile {self.tile} must divide 2048"
            )
            return problems
        n = len(self)
        columns = (self.tile_row, self.tile_col, self.error, self.basis_start, self.rank)
        if any(c.shape != (n,) for c in (*columns, self.coef_start)):
            problems.append("fine layer index columns differ in length")
            return problems
        nb = self.basis.shape[0]
        if self.basis.shape[1:] != (self.tile, self.tile):
            problems.append(f"fine layer basis images must be {self.tile} x {self.tile}")
        if n and (
            self.rank.min() < 1
            or self.basis_start.min() < 0
            or (self.basis_start + self.rank).max() > nb
            or self.coef_start.min() < 0
            or (self.coef_start + self.rank).max() > self.coef.size
        ):
            problems.append("fine layer block index points outside its basis or coefficients")
        if n and (self.plane.min() < 0 or self.plane.max() >= nplanes):
            problems.append(f"fine layer planes must lie in 0..{nplanes - 1}")
        for name in ("tile_row", "tile_col"):
            index = getattr(self, name)
            if n and (index.min() < 0 or index.max() >= self.ntiles):
                problems.append(f"fine layer {name} must lie in 0..{self.ntiles - 1}")
        finite = (np.all(np.isfinite(a)) for a in (self.basis, self.coef, self.error))
        if not all(finite):
            problems.append("fine layer holds NaN or infinite values")
        elif n and self.error.min() < 0:
            problems.append("fine layer errors must be non-negative")
        if self.holes is not None:
            problems.extend(self._validate_holes())
        if self.misfit is not None:
            problems.extend(self._validate_misfit())
        return problems

    def _validate_misfit(self) -> list[str]:
        n = len(self)
        parts = [(self.misfit, self.misfit_corr, "misfit")]
        if self.long_misfit is not None:
            parts.append((self.long_misfit, self.long_corr, "long misfit"))
        for misfit, corr, name in parts:
            if misfit.shape != (n,) or corr.shape != (n, 2):
                return [f"fine layer {name}s and their correlations must have one value per block"]
            if not np.all(np.isfinite(misfit)) or np.any(misfit < 0):
                return [f"fine layer {name}s must be finite and non-negative"]
            if not np.all(np.isfinite(corr)) or np.any(corr < 0) or np.any(corr > 1):
                return [f"fine layer {name} correlations must lie in 0..1"]
        return []

    def _validate_holes(self) -> list[str]:
        n, nholes = len(self), self.holes.shape[0]
        if self.fill_error.shape != (n,) or self.hole_index.shape != (n,):
            return ["fine layer fill errors and hole indices must have one value per block"]
        if n and (self.hole_index.min() < -1 or self.hole_index.max() >= nholes):
            return [f"fine layer hole indices must lie in -1..{nholes - 1}"]
        if not np.all(np.isfinite(self.fill_error)) or np.any(self.fill_error < 0):
            return ["fine layer fill errors must be finite and non-negative"]
        scale = self.fill_scale
        if scale is not None and (not np.all(np.isfinite(scale)) or np.any(scale < 0)):
            return ["fine layer fill variance factors must be finite and non-negative"]
        if scale is not None and self.holes.size and self.holes.max() > scale.size:
            return [f"fine layer hole depth classes must lie in 0..{scale.size}"]
        fill_map = self.fill_map
        if fill_map is not None and fill_map.shape != self.holes.shape:
            return [f"fine layer fill map must be {self.holes.shape}; found {fill_map.shape}"]
        if fill_map is not None and (not np.all(np.isfinite(fill_map)) or np.any(fill_map < 0)):
            return ["fine layer fill map must be finite and non-negative"]
        return []

    def _fill_variance(self, hole: np.ndarray) -> np.ndarray:
        """Relative fill variance of every bin of hole images ``hole`` (-1: none), 0 elsewhere."""
        if self.fill_map is not None:
            return np.where(hole[:, None, None] >= 0, self.fill_map[hole.clip(0)], 0)
        classes = int(self.holes.max()) if self.holes.size else 0
        scale = np.ones(classes) if self.fill_scale is None else self.fill_scale
        table = np.concatenate([[0.0], scale]).astype(np.float32)
        return np.where(hole[:, None, None] >= 0, table[self.holes[hole.clip(0)]], 0)

    # ------------------------------------------------------------------ evaluation
    def _window(
        self,
        row: np.ndarray,
        column: np.ndarray,
        left: np.ndarray,
        right: np.ndarray,
        split: bool = False,
    ):
        """Blocks near the pixels in the planes ``left`` and ``right``, as a dense local grid.

        Returns None when no block is near, else ``(wr, wc, slot, data, var,
        misfit)``: spatial weights on the local fine bins, the position of each
        cube plane in ``data`` (planes without a block point at a last, zero
        plane), the local value and variance grids, and with ``split`` (and a
        layer that has them) the grids of the misfit's variance and of that
        variance times its correlation along rows and along columns (else None).
        """
        if not len(self):
            return None
        planes = np.union1d(left, right)
        wr = interpolate.spatial_weights(row, self.centres(_FIRST_ROW))
        wc = interpolate.spatial_weights(column, self.centres(_FIRST_COLUMN))
        (r0, r1), (c0, c1) = interpolate.support(wr), interpolate.support(wc)
        t = self.tile
        tr0, tr1, tc0, tc1 = r0 // t, (r1 - 1) // t, c0 // t, (c1 - 1) // t
        near = (
            (self.tile_row >= tr0)
            & (self.tile_row <= tr1)
            & (self.tile_col >= tc0)
            & (self.tile_col <= tc1)
            & np.isin(self.plane, planes)
        )
        if not near.any():
            return None
        present, where = np.unique(self.plane[near], return_inverse=True)
        slot = np.full(int(max(planes.max(), present.max())) + 1, present.size)
        slot[present] = np.arange(present.size)
        # Local grid: whole tiles tr0..tr1 x tc0..tc1, plus the zero plane.
        shape = (present.size + 1, (tr1 - tr0 + 1) * t, (tc1 - tc0 + 1) * t)
        data = np.zeros(shape, dtype=np.float32)
        var = np.zeros(shape, dtype=np.float32)
        chosen = np.flatnonzero(near)
        # Views (plane, tile row, bin row, tile column, bin column) of the local grids.
        grid = (present.size + 1, tr1 - tr0 + 1, t, tc1 - tc0 + 1, t)
        rows, cols = self.tile_row[chosen] - tr0, self.tile_col[chosen] - tc0
        data.reshape(grid)[where, rows, :, cols, :] = self.blocks(chosen)
        block_var = np.broadcast_to((self.error[chosen] ** 2)[:, None, None], (chosen.size, t, t))
        if self.has_holes:  # filled bins: plus the fill's error
            filled = self._fill_variance(self.hole_index[chosen])
            block_var = block_var + filled * (self.fill_error[chosen] ** 2)[:, None, None]
        var.reshape(grid)[where, rows, :, cols, :] = block_var
        misfit = None
        if split and self.misfit is not None:
            misfit = self._misfit_grids(chosen, shape, (grid, where, rows, cols))
        lr, lc = tr0 * t, tc0 * t
        wr = wr[:, lr : lr + shape[1]]
        wc = wc[:, lc : lc + shape[2]]
        return wr, wc, slot, data, var, misfit

    def _misfit_grids(self, chosen: np.ndarray, shape: tuple, at: tuple) -> np.ndarray:
        """The local grids (`_window`) of the misfit's variance and of it times its
        correlation along rows and along columns, shape (3, *shape); with
        ``long_misfit``, the same three of that part after them, shape (6, *shape).

        ``at``: the grids' block view and the chosen blocks' plane, tile row and
        tile column in it.
        """
        grid, where, rows, cols = at
        parts = [(self.misfit, self.misfit_corr)]
        if self.long_misfit is not None:
            parts.append((self.long_misfit, self.long_corr))
        out = np.zeros((3 * len(parts), *shape), dtype=np.float32)
        for p, (misfit, corr) in enumerate(parts):
            m2, g = misfit[chosen] ** 2, corr[chosen]
            for k, value in enumerate((m2, m2 * g[:, 0], m2 * g[:, 1]), start=3 * p):
                out[k].reshape(grid)[where, rows, :, cols, :] = value[:, None, None]
        return out

    def evaluate(
        self,
        left: np.ndarray,
        right: np.ndarray,
        w_right: np.ndarray,
        row: np.ndarray,
        column: np.ndarray,
        column_factor: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray] | None:
        """The layer at pixels and (valid) times given as cube time weights.

        Parameters
        ----------
        left, right, w_right : arrays, shape (n,)
            Plane indices and weight of ``right`` from the cube's time
            interpolation (valid times only).
        row, column : array of float
            1-based CCD pixel coordinates.
        column_factor : array of float, shape (ncol,), optional
            Response of each column (straps respond more).

        Returns
        -------
        (flux, var) : ndarrays of float32, shape (n, nrow, ncol), or None
            None when no block touches these pixels and times.
        """
        window = self._window(row, column, left, right)
        if window is None:
            return None
        wr, wc, slot, data, var, _ = window
        if column_factor is not None:
            wc = wc * np.asarray(column_factor)[:, None]
        f_sp = interpolate.apply_weights(data, wr, wc).astype(np.float32)
        v_sp = interpolate.apply_weights(var, wr**2, wc**2).astype(np.float32)
        li, ri = slot[left], slot[right]
        flux = interpolate.blend(f_sp, li, ri, w_right)
        variance = interpolate.blend(v_sp, li, ri, w_right, squared=True)
        return flux, variance

    def evaluate_sum(
        self,
        left: np.ndarray,
        right: np.ndarray,
        w_right: np.ndarray,
        row: np.ndarray,
        column: np.ndarray,
        mask: np.ndarray,
    ) -> tuple[np.ndarray, np.ndarray] | None:
        """The layer summed over ``mask`` (already times the column response).

        A bin's noise is shared by every pixel interpolated from it, so it adds
        through the summed weights, ``sum(A**2 var)`` with ``A = wr.T @ mask @
        wc``. The misfit (structure the bins cannot follow) changes from pixel to
        pixel: its standard deviation at each pixel, ``s``, is what `evaluate`
        quotes for it, and pixels ``(dy, dx)`` apart correlate by ``f_r(dy)
        f_c(dx)``, a Gaussian ``f(d) = g**(d**2 / 3)`` through the measured
        ratio ``g`` of the covariances at lags 2 and 1 (the layer's
        ``misfit_corr``, its misfit-weighted mean over the aperture): it adds as
        ``sum_pq s_p s_q f_r f_c``. A layer without misfits (older files) adds
        all of its error as shared. A layer with ``long_misfit`` adds that part
        the same way with its own correlations, and the rest of ``error`` (less
        both parts) as shared.

        Returns
        -------
        (flux, var) : ndarrays, shape (n,), or None when no block is near.
        """
        window = self._window(row, column, left, right, split=True)
        if window is None:
            return None
        wr, wc, slot, data, var, misfit = window
        weights = wr.T @ mask @ wc  # (local rows, local cols)
        f_pl = np.einsum("trc,rc->t", data, weights)
        if misfit is None:
            v_pl = np.einsum("trc,rc->t", var, weights**2)
        else:
            parts = misfit.reshape(-1, 3, *misfit.shape[1:])  # (misfit, long misfit)
            shared = np.maximum(var - parts[:, 0].sum(axis=0), 0)
            v_pl = np.einsum("trc,rc->t", shared, weights**2)
            for part in parts:
                v_pl += _correlated_sum(part, wr, wc, mask)
        li, ri, w = slot[left], slot[right], np.asarray(w_right, float)
        return (1 - w) * f_pl[li] + w * f_pl[ri], (1 - w) ** 2 * v_pl[li] + w**2 * v_pl[ri]

    # ------------------------------------------------------------------ FITS
    def quantum(self, precision: float = FINE_PRECISION) -> tuple[np.ndarray, np.ndarray]:
        """Rounding steps of the basis images and of their coefficients, for writing.

        Half of the allowed error goes to each: the step of basis image ``j`` is
        the largest that keeps the rounding error of every block using it below
        ``precision / sqrt(2 rank)`` of the block's ``error`` (RMS over the
        block), never finer than the int16 range needs (``max |basis_j| /
        32000``); the coefficients of image ``j`` are rounded to the step chosen
        the same way from the rounded image, or to the power of two below it for
        the images of raw blocks, whose coefficients are all 1 (stored exactly
        then). All of a block's images and coefficients together add at most
        ``precision * error``.

        Parameters
        ----------
        precision : float
            Allowed RMS rounding error of a block, in units of its ``error``.

        Returns
        -------
        basis_step, coef_step : ndarrays of float32, shape (nbasis,)
            Basis images are multiples of ``basis_step`` [e-/s per pixel];
            coefficients of image ``j`` multiples of ``coef_step[j]``.
        """
        return fileformat.quantum(self, precision)

    def to_hdus(self, precision: float | None = FINE_PRECISION) -> list[fits.hdu.base.ExtensionHDU]:
        """The ``FINE``, ``FINE_SCALE``, ``FINE_INDEX`` and ``FINE_COEF`` extensions.

        The basis images and coefficients are rounded to integer multiples of
        the steps of `quantum` (``FINE`` int16, ``FINE_COEF`` int32, the steps
        in ``FINE_SCALE``) and compressed losslessly (``RICE_1``); the index
        columns take the narrowest integer type that holds their values, and
        the ``COEF`` column is left out when the coefficients follow each other
        in block order (then each block's start is the sum of the ranks before it).

        Parameters
        ----------
        precision : float or None
            See `quantum`. None writes the values exactly, as float32 (the
            layout of files from before rounding: no ``FINE_SCALE``, every
            index column), 3 to 4 times larger.
        """
        return fileformat.to_hdus(self, precision)

    @classmethod
    def from_hdul(cls, hdul, path) -> FineLayer:
        """Read the layer of an open cube file.

        ``hdul``: the `~astropy.io.fits.HDUList`, or a dict of its HDUs by name.
        Raises `~lk_scatterlight.exceptions.CubeFormatError` if it is malformed.
        """
        return fileformat.from_hdul(cls, hdul, path)


def _correlated_sum(misfit: np.ndarray, wr: np.ndarray, wc: np.ndarray, mask: np.ndarray):
    """Per plane, the variance of the misfit summed over ``mask`` (see `evaluate_sum`).

    ``misfit``: grids of the misfit variance and of it times the correlation along
    rows and along columns, shape (3, nplanes, local rows, local cols).
    """
    pixel = interpolate.apply_weights(misfit, wr**2, wc**2).astype(float)  # (3, n, y, x)
    total = (pixel * mask**2).sum(axis=(2, 3))  # (3, n)
    corr = [np.clip(total[k] / np.where(total[0] > 0, total[0], 1.0), 0, 1) for k in (1, 2)]
    s = np.sqrt(np.clip(pixel[0], 0, None)) * mask  # (n, y, x)
    ny, nx = mask.shape
    dy = np.abs(np.subtract.outer(np.arange(ny), np.arange(ny)))
    dx = np.abs(np.subtract.outer(np.arange(nx), np.arange(nx)))
    dy, dx = dy**2 / 3, dx**2 / 3  # Gaussian: f(2) / f(1) = g**(4/3 - 1/3) = g
    rho_r, rho_c = corr[0][:, None, None] ** dy, corr[1][:, None, None] ** dx
    return np.sum(s * (rho_r @ s @ rho_c), axis=(1, 2))
