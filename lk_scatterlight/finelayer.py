"""Scattered-light structure finer than a cube's bins, stored only where it is.

Real FFIs show features narrower than a 16-px bin: glint ridges ~12 px wide
that sweep across the CCD as the Earth moves, and baffle shadow edges ~6 px
wide. No grid of 16-px bins can hold them (sampling the exact field on that
grid already leaves errors of several percent of the scattered-light range
there), and a finer grid everywhere would multiply the cube's size by 16 for
structure that covers a small part of the CCD at any one time.

A `FineLayer` holds the residual of the frames against the coarse cube on a
finer grid (4-px bins by default) in **blocks**: one tile of ``tile x tile``
fine bins (64 x 64 pixels by default) in one time plane, kept only where the
builder found the residual significant (its mean of ``(residual / sigma)**2``
over the tile above a threshold). Everywhere else the fine layer is zero and
the coarse cube alone is the model.

The blocks of one tile are stored **factored**: ``block = sum_j coef_j
basis_j`` over a few basis images of that tile (from an SVD of the tile's
blocks over time; see `compress_tile`). A fixed shadow edge needs one basis
image for every plane; a ridge sweeping through a tile needs several. Blocks
that do not compress are stored as they are (one basis image each, with
coefficient 1).

Evaluation adds the layer to the coarse model: Keys cubic convolution on the
fine bin centres in space (the same kernel as the cube), and the cube's own
linear interpolation in time (the layer has the cube's planes). A plane
without a block at some tile contributes zero there. The block values are
point values at the fine bin centres: the builder removes the bias of a bin
mean on curved structure before storing them.

On disk (`FineLayer.to_hdus`) the basis images and coefficients are rounded
to steps tied to each block's quoted error (`FineLayer.quantum`: RMS rounding
at most `FINE_PRECISION` = 10 % of it) and stored as tile-compressed
integers, 3 to 5 times smaller than float32; files from before that store
float32 and still read.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
from astropy.io import fits

from . import fastfits, interpolate
from .exceptions import CubeFormatError
from .lowrank import PRECISION, error_step

__all__ = ["FineLayer", "FINE_EXTENSIONS", "FINE_PRECISION"]

#: Rounding of the fine layer on writing (`FineLayer.quantum`), in units of each
#: block's quoted error: twice the low-rank factors' `PRECISION`. It adds at most
#: 0.5 % to a block's error in quadrature; on the structured field of
#: ``benchmarks/bench_size_fine.py`` it changes the RMS error against the truth by
#: < 0.15 % in every patch class (as 0.05 did) for 10 % less space.
FINE_PRECISION = 2 * PRECISION


#: FITS extensions of a fine layer: the blocks and their index table (all required).
FINE_EXTENSIONS = ("FINE", "FINE_INDEX", "FINE_COEF")
_INT16_SPAN = 32000.0  # largest stored |integer| (int16 holds 32767)
_COMPRESSION_IMAGES = 256  # basis images per compressed FITS tile
_COMPRESSION_VALUES = 2**16  # values per compressed FITS tile of 1-D series
_SCIENCE = 2048
_CORR_UNIT = 1000  # the misfit correlations are stored in thousandths
_FIRST_ROW, _FIRST_COLUMN = 1, 45


@dataclass(frozen=True)
class FineLayer:
    """Sparse fine-grid residuals of a cube (see the module docstring).

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
    def _pairs(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every (block, basis image, coefficient) triple of the layer, as index arrays."""
        block = np.repeat(np.arange(len(self)), self.rank)
        within = np.arange(block.size) - np.repeat(np.cumsum(self.rank) - self.rank, self.rank)
        return block, self.basis_start[block] + within, self.coef_start[block] + within

    def _image_order(self, pairs=None) -> np.ndarray:
        """Positions in ``coef`` of the coefficients ordered by basis image, then block.

        A factored tile's coefficients of one image are then a series over its
        planes, smooth in time, which the compression codes as small differences.
        ``pairs``: `_pairs`, if already computed.
        """
        _, image, position = pairs or self._pairs()  # in block order: sort stably by image
        if self.basis.shape[0] <= 2**16:  # 16-bit keys: numpy's radix sort, 5x faster
            image = image.astype(np.uint16)
        return position[np.argsort(image, kind="stable")]

    def _coef_image(self, pairs=None) -> np.ndarray:
        """The basis image each coefficient multiplies (-1 where no block uses it).

        ``pairs``: `_pairs`, if already computed."""
        _, image, position = pairs or self._pairs()
        out = np.full(self.coef.size, -1)
        out[position] = image
        return out

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
        nb = self.basis.shape[0]
        block, image, position = self._pairs()
        share = precision * np.sqrt(12.0 / 2) * self.error[block] / np.sqrt(self.rank[block])

        def largest(allowed, floor):
            bound = np.full(nb, np.inf)
            np.minimum.at(bound, image, allowed)
            return np.where(np.isfinite(bound), np.maximum(bound, floor), floor)

        flat = self.basis.reshape(nb, -1).astype(np.float64)
        peak = np.abs(flat).max(axis=1, initial=0.0)
        coef = np.abs(self.coef[position].astype(np.float64))
        with np.errstate(divide="ignore", invalid="ignore"):
            step = largest(share / coef, peak / _INT16_SPAN)
            step = np.where(step > 0, step, 1.0).astype(np.float32)
            rounded = np.rint(flat / step[:, None]) * step[:, None]
            rms = np.sqrt(np.mean(rounded**2, axis=1))
            top = np.zeros(nb)
            np.maximum.at(top, image, coef)
            coef_step = largest(share / rms[image], top / 2.0**30)
            coef_step = np.where(coef_step > 0, coef_step, 1.0)
        raw = np.ones(nb, dtype=bool)  # images whose coefficients are all 1
        np.logical_and.at(raw, image, self.coef[position] == 1)
        coef_step[raw] = 2.0 ** np.floor(np.log2(coef_step[raw]))
        return step, coef_step.astype(np.float32)

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
        nb, t = self.basis.shape[0], self.tile
        implied = np.array_equal(self.coef_start, np.cumsum(self.rank) - self.rank)
        if precision is None:
            columns = [
                _integer_column("TILE_ROW", self.tile_row),
                _integer_column("TILE_COL", self.tile_col),
                _integer_column("PLANE", self.plane),
                fits.Column("ERROR", "E", unit="electron/s", array=self.error),
                _integer_column("BASIS", self.basis_start),
                _integer_column("RANK", self.rank),
                _integer_column("COEF", self.coef_start),
            ]
            if self.has_holes:
                columns += [
                    fits.Column("FILLERR", "E", unit="electron/s", array=self.fill_error),
                    _integer_column("HOLES", self.hole_index),
                ]
            if self.misfit is not None:
                columns += [
                    fits.Column("MISFIT", "E", unit="electron/s", array=self.misfit),
                    fits.Column("CORR_ROW", "E", array=self.misfit_corr[:, 0]),
                    fits.Column("CORR_COL", "E", array=self.misfit_corr[:, 1]),
                ]
            if self.long_misfit is not None:
                columns += [
                    fits.Column("LMISFIT", "E", unit="electron/s", array=self.long_misfit),
                    fits.Column("LCORR_ROW", "E", array=self.long_corr[:, 0]),
                    fits.Column("LCORR_COL", "E", array=self.long_corr[:, 1]),
                ]
            index = fits.BinTableHDU.from_columns(columns, name="FINE_INDEX")
        else:
            index = self._index_image(implied)
        if precision is None:
            image = fits.ImageHDU(self.basis, name="FINE")
            coef = fits.ImageHDU(self.coef, name="FINE_COEF")
            scale = None
        else:
            step, coef_step = self.quantum(precision)
            image = fits.CompImageHDU(
                np.rint(self.basis / step[:, None, None]).astype(np.int16),
                name="FINE",
                compression_type="RICE_1",
                tile_shape=(max(1, min(nb, _COMPRESSION_IMAGES)), t, t),
            )
            image.header["FINEPREC"] = (precision, "rounding RMS <= FINEPREC * ERROR per block")
            scale = fits.BinTableHDU.from_columns(
                [
                    fits.Column("FINE", "E", unit="electron/s", array=step),
                    fits.Column("COEF", "E", array=coef_step),
                ],
                name="FINE_SCALE",
            )
            scale.header["COMMENT"] = "row i: steps of basis image i and of its coefficients"
            owner = self._coef_image()
            per_coef = np.where(owner >= 0, coef_step[owner.clip(0)], 1.0)
            stored = np.rint(self.coef / per_coef).astype(np.int32)
            if implied:  # by basis image, so that RICE codes each series' small steps
                stored = stored[self._image_order()]
            coef = fits.CompImageHDU(
                stored,
                name="FINE_COEF",
                compression_type="RICE_1",
                tile_shape=(max(1, min(self.coef.size, _COMPRESSION_VALUES)),),
            )
            if implied:
                coef.header["COEFORD"] = ("IMAGE", "ordered by basis image, then block")
        image.header["BUNIT"] = (
            "electron/s",
            "per pixel" + (", times FINE_SCALE" if scale else ""),
        )
        image.header["FINEBIN"] = (self.pixel_bin, "[pixel] fine bin size")
        image.header["FINETILE"] = (self.tile, "fine bins per tile side")
        image.header["COMMENT"] = "basis images of the residual vs the coarse cube, per tile"
        coef.header["COMMENT"] = "coefficients of the basis images, per block"
        hdus = [image, index, coef] if scale is None else [image, scale, index, coef]
        if self.has_holes:
            holes = fits.CompImageHDU(
                self.holes.astype(np.uint8),
                name="FINE_HOLES",
                compression_type="RICE_1",
                tile_shape=(max(1, min(len(self.holes), _COMPRESSION_IMAGES)), t, t),
            )
            holes.header["COMMENT"] = "depth class (1, 2, ...) of the fine bins that were filled"
            for k, value in enumerate(() if self.fill_scale is None else self.fill_scale, 1):
                holes.header[f"FILLVAR{k}"] = (float(value), f"fill variance of depth class {k}")
            hdus.append(holes)
            if self.fill_map is not None:
                hdus.append(self._fill_map_hdu())
        return hdus

    def _fill_map_hdu(self) -> fits.CompImageHDU:
        """``FINE_FILLMAP``: `fill_map`, float32, compressed losslessly (``GZIP_2``)."""
        hdu = fits.CompImageHDU(
            self.fill_map.astype(np.float32),
            name="FINE_FILLMAP",
            compression_type="GZIP_2",
            quantize_level=0.0,
            tile_shape=(max(1, min(len(self.fill_map), _COMPRESSION_IMAGES)), self.tile, self.tile),
        )
        hdu.header["COMMENT"] = "fill variance of each filled fine bin, in units of FILLERR**2"
        return hdu

    def _index_image(self, implied: bool) -> fits.CompImageHDU:
        """``FINE_INDEX`` as a tile-compressed int32 image, one row per index column.

        Within a tile the columns are constant or step by one plane, so each row,
        compressed as one series of differences (``RICE_1``), takes a few bits per
        block. ``ERROR`` (and ``FILLERR``, ``MISFIT``, ``LMISFIT``) is stored as a
        multiple of ``ERRSTEP`` (`~lk_scatterlight.lowrank.error_step`: the quoted
        errors change by less than 0.2 %), the correlations (``CORR_ROW``,
        ``CORR_COL``, ``LCORR_ROW``, ``LCORR_COL``) in thousandths.
        """
        errors = [self.error]
        errors += [self.fill_error] if self.has_holes else []
        errors += [self.misfit] if self.misfit is not None else []
        errors += [self.long_misfit] if self.long_misfit is not None else []
        step = error_step(np.concatenate(errors))
        rows = {
            "TILE_ROW": self.tile_row,
            "TILE_COL": self.tile_col,
            "PLANE": self.plane,
            "BASIS": self.basis_start,
            "RANK": self.rank,
            "ERROR": np.rint(self.error / step),
        }
        if not implied:
            rows["COEF"] = self.coef_start
        if self.has_holes:
            rows["FILLERR"] = np.rint(self.fill_error / step)
            rows["HOLES"] = self.hole_index
        if self.misfit is not None:
            rows["MISFIT"] = np.rint(self.misfit / step)
            rows["CORR_ROW"] = np.rint(self.misfit_corr[:, 0] * _CORR_UNIT)
            rows["CORR_COL"] = np.rint(self.misfit_corr[:, 1] * _CORR_UNIT)
        if self.long_misfit is not None:
            rows["LMISFIT"] = np.rint(self.long_misfit / step)
            rows["LCORR_ROW"] = np.rint(self.long_corr[:, 0] * _CORR_UNIT)
            rows["LCORR_COL"] = np.rint(self.long_corr[:, 1] * _CORR_UNIT)
        n = len(self)
        index = fits.CompImageHDU(
            np.array(list(rows.values()), dtype=np.int32),
            name="FINE_INDEX",
            compression_type="RICE_1",
            tile_shape=(1, max(1, min(n, _COMPRESSION_VALUES))),
        )
        for i, name in enumerate(rows, start=1):  # RNAMEi: 8 characters up to row 999
            index.header[f"RNAME{i}"] = (name, f"row {i}: the block index column {name}")
        index.header["ERRSTEP"] = (step, "[electron/s] ERROR = ERROR row * ERRSTEP")
        return index

    @classmethod
    def from_hdul(cls, hdul, path) -> FineLayer:
        """Read the layer of an open cube file; raise `CubeFormatError` if malformed.

        ``hdul``: the `~astropy.io.fits.HDUList`, or a dict of its HDUs by name.
        """
        fine = fastfits.image(hdul, "FINE")
        header = fine.header
        for key in ("FINEBIN", "FINETILE"):
            if key not in header:
                raise CubeFormatError(f"{path}: FINE extension has no {key} keyword.")
        table = _index_columns(fastfits.image(hdul, "FINE_INDEX"), path)
        wanted = ("TILE_ROW", "TILE_COL", "PLANE", "ERROR", "BASIS", "RANK")
        missing = [c for c in wanted if c not in table]
        if missing:
            raise CubeFormatError(f"{path}: FINE_INDEX has no column(s) {', '.join(missing)}.")
        tile = int(header["FINETILE"])
        basis = fine.data
        basis = np.zeros((0, tile, tile), np.float32) if basis is None else np.array(basis)
        coef_hdu = fastfits.image(hdul, "FINE_COEF")
        coef = coef_hdu.data
        coef = np.zeros(0) if coef is None else np.array(coef).ravel()
        layer = cls(
            pixel_bin=int(header["FINEBIN"]),
            tile=tile,
            tile_row=np.array(table["TILE_ROW"]),
            tile_col=np.array(table["TILE_COL"]),
            plane=np.array(table["PLANE"]),
            error=np.array(table["ERROR"]),
            basis=basis,
            basis_start=np.array(table["BASIS"]),
            rank=np.array(table["RANK"]),
            coef=coef,
            coef_start=np.array(table["COEF"]) if "COEF" in table else None,
            **_holes(hdul, table, tile, path),
            **_misfit(table, path),
        )
        order = coef_hdu.header.get("COEFORD", "BLOCK")
        if order not in ("BLOCK", "IMAGE") or order == "IMAGE" and "COEF" in table:
            raise CubeFormatError(
                f"{path}: FINE_COEF has COEFORD = {order!r}; expected 'IMAGE' (without a "
                "COEF index column) or 'BLOCK'. The file is damaged or from a newer "
                "lk_scatterlight (pip install -U lk_scatterlight)."
            )
        if order == "IMAGE" or "FINE_SCALE" in hdul:
            # The order and the steps are looked up through the index: check it first.
            problems = layer.validate(int(layer.plane.max(initial=0)) + 1)
            if problems:
                raise CubeFormatError(f"{path}: {problems[0]}.")
            pairs = layer._pairs()
        if order == "IMAGE":
            coef = _block_order(layer, coef, path, pairs)
        if "FINE_SCALE" in hdul:
            return _scaled(layer, coef, fastfits.table(hdul, "FINE_SCALE"), path, pairs)
        if not np.issubdtype(np.asarray(basis).dtype, np.floating):
            raise CubeFormatError(
                f"{path}: FINE holds integers but the file has no FINE_SCALE extension "
                "to scale them; the file is damaged."
            )
        return layer if order == "BLOCK" else dataclasses.replace(layer, coef=coef)


def _index_columns(hdu, path) -> dict[str, np.ndarray]:
    """The columns of ``FINE_INDEX``: a binary table, or an integer image (one row each,
    named by ``RNAMEi``, or ``ROWNAMEi`` in files written before there could be ten
    rows; ``ERROR`` in units of ``ERRSTEP``)."""
    if isinstance(hdu, fits.BinTableHDU):
        table = hdu.data
        names = table.columns.names if table is not None else []
        return {name: np.array(table[name]) for name in names}
    data = hdu.data
    header = hdu.header
    if data is None or data.ndim != 2 or data.dtype.kind not in "iu" or "ERRSTEP" not in header:
        raise CubeFormatError(
            f"{path}: FINE_INDEX must be a table or a 2-D integer image with an ERRSTEP "
            "keyword; the file is damaged."
        )
    names = [
        header.get(f"RNAME{i}", header.get(f"ROWNAME{i}")) for i in range(1, data.shape[0] + 1)
    ]
    columns = {str(name): np.array(row) for name, row in zip(names, data, strict=True) if name}
    for name in ("ERROR", "FILLERR", "MISFIT", "LMISFIT"):
        if name in columns:
            columns[name] = (columns[name] * float(header["ERRSTEP"])).astype(np.float32)
    for name in ("CORR_ROW", "CORR_COL", "LCORR_ROW", "LCORR_COL"):
        if name in columns:
            columns[name] = (columns[name] / _CORR_UNIT).astype(np.float32)
    return columns


def _misfit(table: dict, path) -> dict:
    """``misfit`` and ``misfit_corr`` of a file that has them (else none): the
    ``MISFIT``, ``CORR_ROW`` and ``CORR_COL`` index columns; and ``long_misfit`` and
    ``long_corr`` from ``LMISFIT``, ``LCORR_ROW`` and ``LCORR_COL`` if present."""
    short, long = ("MISFIT", "CORR_ROW", "CORR_COL"), ("LMISFIT", "LCORR_ROW", "LCORR_COL")
    has = {name: name in table for name in (*short, *long)}
    if not any(has.values()):
        return {}
    need = short + long if any(has[name] for name in long) else short
    if not all(has[name] for name in need):
        raise CubeFormatError(
            f"{path}: a fine layer with misfits needs the {', '.join(need)} index columns "
            "together; the file is damaged."
        )
    out = {"misfit": table["MISFIT"]}
    out["misfit_corr"] = np.column_stack([table["CORR_ROW"], table["CORR_COL"]])
    if len(need) > len(short):
        out["long_misfit"] = table["LMISFIT"]
        out["long_corr"] = np.column_stack([table["LCORR_ROW"], table["LCORR_COL"]])
    return out


def _holes(hdul, table: dict, tile: int, path) -> dict:
    """``fill_error``, ``hole_index`` and ``holes`` of a file that has them (else none):
    the ``FINE_HOLES`` extension and the ``FILLERR`` and ``HOLES`` index columns."""
    present = ["FINE_HOLES" in hdul, "FILLERR" in table, "HOLES" in table]
    if not any(present):
        return {}
    if not all(present):
        raise CubeFormatError(
            f"{path}: a fine layer with filled bins needs the FINE_HOLES extension and the "
            "FILLERR and HOLES index columns together; the file is damaged."
        )
    hdu = fastfits.image(hdul, "FINE_HOLES")
    data = hdu.data
    holes = np.zeros((0, tile, tile), np.uint8) if data is None else np.asarray(data)
    if holes.ndim != 3 or holes.shape[1:] != (tile, tile):
        raise CubeFormatError(
            f"{path}: FINE_HOLES must be (nholes, {tile}, {tile}); found {holes.shape}."
        )
    scale = []
    while f"FILLVAR{len(scale) + 1}" in hdu.header:
        scale.append(hdu.header[f"FILLVAR{len(scale) + 1}"])
    try:
        scale = np.array(scale, dtype=np.float32) if scale else None
    except (TypeError, ValueError):
        msg = f"{path}: the FILLVARn keywords of FINE_HOLES must be numbers; the file is damaged."
        raise CubeFormatError(msg) from None
    fill_map = None
    if "FINE_FILLMAP" in hdul:
        fill_map = np.asarray(fastfits.image(hdul, "FINE_FILLMAP").data, dtype=np.float32)
        if fill_map.shape != holes.shape:
            raise CubeFormatError(
                f"{path}: FINE_FILLMAP must have the shape of FINE_HOLES, {holes.shape}; "
                f"found {fill_map.shape}. The file is damaged."
            )
    return {
        "fill_error": table["FILLERR"],
        "hole_index": table["HOLES"],
        "holes": holes,
        "fill_scale": scale,
        "fill_map": fill_map,
    }


def _block_order(layer: FineLayer, coef: np.ndarray, path, pairs) -> np.ndarray:
    """The stored coefficients ``coef`` of ``layer`` (a valid index, whose `_pairs` are
    ``pairs``), read in basis-image order (``COEFORD = 'IMAGE'``), put back in block order."""
    if int(layer.rank.sum()) != coef.size:
        raise CubeFormatError(
            f"{path}: FINE_COEF holds {coef.size} coefficients but the blocks' RANK add up "
            f"to {int(layer.rank.sum())}; the file is damaged."
        )
    out = np.empty_like(coef)
    out[layer._image_order(pairs)] = coef
    return out


def _scaled(layer: FineLayer, coef: np.ndarray, table: fastfits.Table, path, pairs) -> FineLayer:
    """``layer`` (a valid index, whose `_pairs` are ``pairs``) read as stored integers,
    times the steps of the ``FINE_SCALE`` table.

    ``coef`` holds the stored coefficients as read, in block order (int32:
    ``layer.coef`` is float32 and may have rounded them).
    """
    nb = layer.basis.shape[0]
    if any(c not in table.names for c in ("FINE", "COEF")) or len(table) != nb:
        raise CubeFormatError(
            f"{path}: FINE_SCALE must be a table with columns FINE and COEF and one row "
            f"per basis image in FINE ({nb}); the file is damaged."
        )
    step = np.asarray(table["FINE"], dtype=np.float32)
    owner = layer._coef_image(pairs)
    coef_step = np.asarray(table["COEF"], dtype=np.float64)
    per_coef = np.where(owner >= 0, coef_step[owner.clip(0)] if nb else 1.0, 1.0)
    return dataclasses.replace(layer, basis=layer.basis * step[:, None, None], coef=coef * per_coef)


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


def _integer_column(name: str, values: np.ndarray) -> fits.Column:
    """A FITS table column of ``values`` in the narrowest integer type that holds them."""
    values = np.asarray(values)
    low, high = (int(values.min()), int(values.max())) if values.size else (0, 0)
    for code, dtype in (("B", np.uint8), ("I", np.int16), ("J", np.int32), ("K", np.int64)):
        info = np.iinfo(dtype)
        if code == "K" or info.min <= low and high <= info.max:
            return fits.Column(name, code, array=values.astype(dtype))
    raise AssertionError  # pragma: no cover  (int64 holds every index)


_NOISE_SCATTER = 4.0
"""Standard deviations of a pure-noise block's residual (chi-square over its bins) that
`compress_tile` allows above its budget, so that noise alone does not raise the rank."""

_BIN_FALSE_ALARM = 1e-3
"""Chance that a tile of pure noise has a bin whose residual summed over its blocks
exceeds `compress_tile`'s per-bin budget (a chi-square bound at this level over the
tile's bins)."""


def compress_tile(
    blocks: np.ndarray, error: np.ndarray, tolerance: float = 0.01
) -> tuple[np.ndarray | None, np.ndarray]:
    """Factor one tile's blocks over time: ``blocks ~ coef @ basis``.

    The rank is the smallest that meets two budgets: the residual RMS over
    all blocks is at most ``1 + tolerance`` times the blocks' noise RMS
    (``sqrt(mean(error**2))``), as for the coarse cube
    (`~lk_scatterlight.ScatterLightCube.compress`); and every block's own
    residual RMS is at most ``1 + tolerance`` times its own ``error``, up to
    the scatter noise alone gives a block's residual (`_NOISE_SCATTER`
    standard deviations of a chi-square over its bins: 1.17 times its
    ``error`` for 16 x 16 bins). The second budget keeps structure that only
    one block holds (a ridge entering a tile's corner in one frame), which the
    pooled budget alone lets the other blocks' shapes absorb. A third budget
    does the same across the blocks: every bin's residual summed over the
    blocks stays below the chi-square bound that noise alone exceeds in one
    tile in `_BIN_FALSE_ALARM` (structure that varies in time in a few bins
    only, such as a slow drift at the edge of a star's hole, is far below the
    pooled budget: a Tmag 3.2 star's TPF on the structured field lost 0.2 % of
    the range to it, issue 21). When no rank that saves space meets all three,
    the blocks are returned as their own basis.

    Parameters
    ----------
    blocks : ndarray, shape (m, tile, tile)
        The tile's blocks, one per plane [e-/s].
    error : ndarray, shape (m,)
        1-sigma error of one fine bin of each block [e-/s].
    tolerance : float

    Returns
    -------
    coef : ndarray of float32, shape (m, k), or None
        None when the blocks are kept as they are (then ``basis`` is ``blocks``).
    basis : ndarray of float32, shape (k, tile, tile)
    """
    m, t = blocks.shape[0], blocks.shape[1]
    x = blocks.reshape(m, t * t).astype(np.float64)
    max_rank = (m * t * t - 1) // (m + t * t)  # largest rank whose factors are smaller
    if max_rank < 1 or m < 3:  # too few blocks for factoring to pay
        return None, blocks.astype(np.float32)
    values, vectors = _gram_eigen(x)
    # Directions the Gram matrix resolves only to rounding would give a spurious basis.
    max_rank = min(max_rank, max(int(np.sum(values > 1e-12 * values[0])), 1))
    if vectors.shape[0] == m:  # left singular vectors: basis = x^T u / |x^T u|
        basis = vectors[:, :max_rank].T @ x
        basis /= np.maximum(np.linalg.norm(basis, axis=1, keepdims=True), 1e-300)
    else:
        basis = vectors[:, :max_rank].T
    coef = x @ basis.T
    # Orthonormal basis: a block's residual after rank k is |x|^2 - sum of its first k coef^2.
    residual = np.sum(x**2, axis=1)[:, None] - np.cumsum(coef**2, axis=1)
    noise2 = np.asarray(error, dtype=np.float64) ** 2
    n = t * t
    pooled = np.sum(residual, axis=0) <= (1 + tolerance) ** 2 * n * np.sum(noise2)
    own = (1 + tolerance) ** 2 * n + _NOISE_SCATTER * np.sqrt(2 * n)
    meets = pooled & np.all(residual <= own * noise2[:, None], axis=0)
    # Per bin: coef's columns are orthogonal (x's singular vectors), so a bin's residual
    # summed over the blocks after rank k is sum x**2 - sum_{i<=k} |coef_i|**2 basis_i**2.
    from scipy import special  # here, not at import: reading a cube needs no scipy.special

    per_bin = np.sum(x**2, axis=0) - np.cumsum(np.sum(coef**2, axis=0)[:, None] * basis**2, axis=0)
    bound = special.chdtri(m, _BIN_FALSE_ALARM / n) / m * np.sum(noise2)
    meets &= np.max(per_bin, axis=1) <= bound
    if not meets.any():
        return None, blocks.astype(np.float32)
    k = int(np.argmax(meets)) + 1
    return coef[:, :k].astype(np.float32), basis[:k].reshape(k, t, t).astype(np.float32)


def _gram_eigen(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues (descending, >= 0) and eigenvectors of the smaller Gram matrix of ``x``.

    ``x x^T`` (blocks x blocks) when there are fewer blocks than pixels, else
    ``x^T x``: both have the same non-zero eigenvalues (the squared singular
    values of ``x``), and the small one costs a fraction of the other's
    decomposition while a tile is kept in few planes.
    """
    gram = x @ x.T if x.shape[0] < x.shape[1] else x.T @ x
    values, vectors = np.linalg.eigh(gram)
    return np.clip(values[::-1], 0, None), vectors[:, ::-1]
