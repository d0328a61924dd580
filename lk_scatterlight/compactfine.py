"""A compact cube's fine layer: it carries what the compression loses in its tiles.

The fine layer (`~lk_scatterlight.finelayer.FineLayer`) holds the residual of
the frames against the *dense* coarse planes. A compact cube replaces those
planes by their truncated SVD (`~lk_scatterlight.lowrank`), whose error is
largest where the fine layer is kept: next to sharp structure (a glint ridge,
a baffle shadow edge) that a few components do not follow. Left as it is, the
fine layer there corrects a coarse model that is no longer the one it is
added to.

`carry_compression` makes the layer the builder would have made against the
compact planes, keeping its basis: per tile, the compression's loss there
(dense minus compact planes, interpolated to the fine bin centres with the
Keys kernel the evaluator uses) is added to the blocks. A tile factored over
time (its blocks share basis images) takes the loss's least-squares share in
its own images, a change of its coefficients only: what the builder judged
noise and dropped stays dropped, and the layer takes no more space. Blocks
stored on their own take all of it (the builder kept all of theirs), ramped
to zero over one coarse bin towards a tile side with no block beyond it in the
same plane, so that the model has no step there. A tile whose loss is within
the dense planes' noise is left as it is. The blocks, planes and quoted errors
do not change, and neither does the model away from the layer's tiles.

On the structured field of ``benchmarks/bench_fine.py`` (27 frames, 2-px fine
bins) the compact cube's error on the shadow edge went from 7.9 to 4.7 times
the noise floor (dense cube: 4.9) and on the ridge from 4.8 to 3.8 (4.1);
with 4-px bins, whose tiles' images hold little of the loss, 15.8 and 19.8
stayed as they were.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from . import interpolate
from .finelayer import FineLayer
from .lowrank import LowRank

__all__ = ["carry_compression"]

_FIRST_ROW, _FIRST_COLUMN = 1, 45


def carry_compression(
    fine: FineLayer,
    lowrank: LowRank,
    flux,
    flux_err,
    row: np.ndarray,
    column: np.ndarray,
    index: np.ndarray | None = None,
    noise_share: np.ndarray | None = None,
    tolerance: float = 0.01,
) -> FineLayer:
    """The fine layer of a compact cube: the dense cube's plus the compression's loss.

    See the module docstring for what is carried where.

    Parameters
    ----------
    fine : `~lk_scatterlight.finelayer.FineLayer`
        The layer built against the dense planes.
    lowrank : `~lk_scatterlight.lowrank.LowRank`
        The compression of those planes.
    flux, flux_err : array-like, shape (nframes, nrow, ncol)
        The dense planes and their errors [e-/s per pixel]: arrays or memory
        maps, of which only the bins near blocks are read.
    row, column : array of float, shapes (nrow,), (ncol,)
        Bin centres of the planes, 1-based CCD pixels.
    index : array of int, shape (ntime,), optional
        Position in ``flux`` of each cube plane (default: the plane itself).
    noise_share : array of float, shape (nrow, ncol), optional
        The noise's share of each bin's error variance where blocks cover it
        (the cube's ``noise_share``); default 1 (all of ``flux_err`` is noise).
    tolerance : float
        A tile's loss is carried if its RMS exceeds ``1 + tolerance`` times that
        of the dense planes' noise interpolated the same way.

    Returns
    -------
    layer : `~lk_scatterlight.finelayer.FineLayer`
        Same blocks, planes, errors, holes, misfits and storage layout, with
        new basis images and coefficients; ``fine`` itself if no tile's loss
        rose above the noise.

    Raises
    ------
    ValueError
        If a block stored on its own (rank 1, in a tile that is not factored)
        shares its basis image with another block.
    """
    residual = _Residual(fine, lowrank, flux, flux_err, row, column, index, noise_share)
    coef, basis = fine.coef.astype(float), fine.basis.astype(float)
    t, carried = fine.tile, False
    users = np.bincount(fine.basis_start, minlength=fine.basis.shape[0])  # blocks per image
    tile_id = fine.tile_row * fine.ntiles + fine.tile_col
    order = np.argsort(tile_id, kind="stable")
    _, first = np.unique(tile_id[order], return_index=True)
    for members in np.split(order, first[1:]) if order.size else []:
        k, start = int(fine.rank[members[0]]), int(fine.basis_start[members[0]])
        shared = np.all(fine.basis_start[members] == start) and np.all(fine.rank[members] == k)
        shared = bool(shared and (members.size > 1 or k > 1))
        lost, noise = residual.blocks(members, taper=not shared)
        target = (1 + tolerance) ** 2 * float(np.mean(noise**2)) * lost.size
        if np.einsum("ijk,ijk->", lost, lost, dtype=float) <= target:
            continue  # within the dense planes' noise: the compact planes are the better guess
        carried = True
        if shared:  # factored tile: the loss's share in its basis
            images = basis[start : start + k].reshape(k, t * t)
            flat = lost.reshape(members.size, t * t).astype(float)
            share = np.linalg.lstsq(images.T, flat.T, rcond=None)[0].T
            coef[fine.coef_start[members][:, None] + np.arange(k)] += share
            continue
        for block, values in zip(members, lost, strict=True):  # blocks stored as they are
            image, weight = fine.basis_start[block], coef[fine.coef_start[block]]
            if fine.rank[block] != 1 or weight == 0 or users[image] > 1:
                msg = "a block stored on its own must have its own basis image"
                raise ValueError(msg)
            basis[image] += values / weight
    if not carried:
        return fine
    return dataclasses.replace(fine, basis=basis.astype(np.float32), coef=coef.astype(np.float32))


class _Residual:
    """Dense minus compact planes at the fine bin centres of blocks, ramped at free sides."""

    def __init__(self, fine, lowrank, flux, flux_err, row, column, index, noise_share):
        self.fine, self.lowrank, self.flux, self.flux_err = fine, lowrank, flux, flux_err
        self.index, self.share = index, noise_share
        self.rows = _tile_weights(fine, _FIRST_ROW, row)
        self.cols = _tile_weights(fine, _FIRST_COLUMN, column)
        spacing = float(row[1] - row[0]) if len(row) > 1 else float(fine.pixel_bin * fine.tile)
        width = int(np.clip(round(spacing / fine.pixel_bin), 1, fine.tile // 2))
        self.ramp = (np.arange(width) + 0.5) / width
        n = fine.ntiles
        self.key = (fine.plane * n + fine.tile_row) * n + fine.tile_col
        self.present = set(self.key.tolist())

    def blocks(self, members: np.ndarray, taper: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """The ramped residual of blocks ``members`` (of one tile) and its noise RMS in each.

        The noise is the dense planes' (``flux_err**2`` times ``noise_share``),
        interpolated as the residual is (bins independent) and ramped the same way.
        """
        fine, t = self.fine, self.fine.tile
        b = members[0]  # one tile: the same bins for every block
        (wr, r), (wc, c) = self.rows[fine.tile_row[b]], self.cols[fine.tile_col[b]]
        planes = fine.plane[members]
        frames = planes if self.index is None else np.asarray(self.index)[planes]
        comp = np.asarray(self.lowrank.flux_comp[:, r, c], dtype=float)
        compact = np.tensordot(self.lowrank.flux_coef[planes].astype(float), comp, axes=1)
        dense = np.stack([np.asarray(self.flux[f, r, c], dtype=float) for f in frames])
        var = np.stack([np.asarray(self.flux_err[f, r, c], dtype=float) for f in frames]) ** 2
        var = var if self.share is None else var * self.share[r, c]
        ramp = np.stack([self._taper(i) if taper else np.ones((t, t)) for i in members])
        out = ramp * (wr @ (dense - compact) @ wc.T)
        noise = (wr**2) @ var @ (wc**2).T
        noise = np.sqrt(np.mean(ramp**2 * noise, axis=(1, 2)))
        return out.astype(np.float32), noise

    def _taper(self, b: int) -> np.ndarray:
        """1, ramping to 0 over one coarse bin towards each side without a block beyond."""
        fine, n, w = self.fine, self.fine.ntiles, self.ramp.size
        r, c, key = int(fine.tile_row[b]), int(fine.tile_col[b]), int(self.key[b])
        sides = []
        for at_edge, step in ((r == 0, -n), (r == n - 1, n), (c == 0, -1), (c == n - 1, 1)):
            sides.append(at_edge or key + step not in self.present)
        rows, cols = np.ones(fine.tile), np.ones(fine.tile)
        for axis, (low, high) in ((rows, sides[:2]), (cols, sides[2:])):
            if low:
                axis[:w] = self.ramp
            if high:
                axis[-w:] = np.minimum(axis[-w:], self.ramp[::-1])
        return np.outer(rows, cols)


def _tile_weights(fine: FineLayer, first: int, centres: np.ndarray) -> list:
    """Per tile along one axis: Keys weights of its fine bin centres on the bins they use.

    Returns a list of ``(weights, bins)``: weights of shape (tile, nbins) and the
    slice of the coarse bins they apply to.
    """
    weights = interpolate.spatial_weights(fine.centres(first), np.asarray(centres, float))
    out = []
    for i in range(fine.ntiles):
        w = weights[i * fine.tile : (i + 1) * fine.tile]
        lo, hi = interpolate.support(w)
        out.append((w[:, lo:hi], slice(lo, hi)))
    return out
