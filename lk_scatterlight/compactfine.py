"""A compact cube's fine layer: it carries what the compression loses in its tiles.

The fine layer (`~lk_scatterlight.finelayer.FineLayer`) holds the residual of
the frames against the *dense* coarse planes. A compact cube replaces those
planes by their truncated SVD (`~lk_scatterlight.lowrank`), whose error is
largest where the fine layer is kept: next to sharp structure (a glint ridge,
a baffle shadow edge) that a few components do not follow. Left as it is, the
fine layer there corrects a coarse model that is no longer the one it is
added to.

`carry_compression` adds to the blocks of the layer the compression residual
(dense minus compact coarse planes, interpolated to the fine bin centres with
the Keys kernel the evaluator uses), tile by tile, and only its part above the
dense planes' noise (a truncated SVD over the tile's blocks, with the rank
rule of `~lk_scatterlight.finelayer.compress_tile`): where the two differ by
noise alone, the compact planes are the better estimate. Towards a tile side
with no block beyond it in the same plane the carried residual ramps down to
zero over one coarse bin, so that the model passes from the compact planes
inside the tile to the compact planes outside it without a step. Elsewhere
the compact coarse model is unchanged, and so are the layer's blocks, planes
and quoted errors.

Tiles whose blocks share a basis keep it and get the carried residual's own
images appended (nothing the builder kept is truncated a second time); blocks
stored on their own get it added to their image.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from . import interpolate
from .finelayer import FineLayer, _gram_eigen
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
    """The fine layer of a compact cube: plus the compression's loss above the noise.

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
        Allowed excess of the residual left out over the noise RMS.

    Returns
    -------
    layer : `~lk_scatterlight.finelayer.FineLayer`
        Same blocks, planes, errors, holes and misfits, with new basis images
        and coefficients; ``fine`` itself if nothing rose above the noise.
    """
    residual = _Residual(fine, lowrank, flux, flux_err, row, column, index, noise_share)
    basis, coef = [], []
    basis_start = np.empty(len(fine), dtype=np.int64)
    coef_start = np.empty(len(fine), dtype=np.int64)
    rank = np.empty(len(fine), dtype=np.int64)
    nbasis = ncoef = 0
    carried = False
    tile_id = fine.tile_row * fine.ntiles + fine.tile_col
    order = np.argsort(tile_id, kind="stable")
    _, first = np.unique(tile_id[order], return_index=True)
    for members in np.split(order, first[1:]) if order.size else []:
        m = members.size
        factors, images = _signal(*residual.blocks(members), tolerance)
        carried = carried or factors.size > 0
        k0, start = int(fine.rank[members[0]]), int(fine.basis_start[members[0]])
        shared = np.all(fine.basis_start[members] == start) and np.all(fine.rank[members] == k0)
        if shared and (m > 1 or not factors.size):  # one basis: the carried images after it
            images = np.concatenate([fine.basis[start : start + k0], images])
            old = fine.coef[fine.coef_start[members][:, None] + np.arange(k0)]
            values = np.hstack([old, factors])
            k = k0 + factors.shape[1]
            basis_start[members] = nbasis
            rank[members] = k
            coef_start[members] = ncoef + k * np.arange(m)
        else:  # blocks stored on their own: each its image plus what is carried
            images = fine.blocks(members) + np.einsum("mk,kij->mij", factors, images)
            values = np.ones(m, dtype=np.float32)
            basis_start[members] = nbasis + np.arange(m)
            rank[members] = 1
            coef_start[members] = ncoef + np.arange(m)
        basis.append(images.astype(np.float32))
        coef.append(values.ravel().astype(np.float32))
        nbasis += basis[-1].shape[0]
        ncoef += coef[-1].size
    if not carried:
        return fine
    return dataclasses.replace(
        fine,
        basis=np.concatenate(basis),
        basis_start=basis_start,
        rank=rank,
        coef=np.concatenate(coef),
        coef_start=coef_start,
    )


def _signal(residual: np.ndarray, noise: np.ndarray, tolerance: float):
    """The part of a tile's residual blocks above their noise: ``residual ~ coef @ basis``.

    A truncated SVD over the blocks, of the smallest rank (0 allowed) whose
    dropped part has an RMS of at most ``1 + tolerance`` times the noise RMS
    ``sqrt(mean(noise**2))`` (the rule of `~lk_scatterlight.finelayer.compress_tile`).

    Returns
    -------
    coef : ndarray of float32, shape (m, k)
    basis : ndarray of float32, shape (k, tile, tile)
    """
    m, t = residual.shape[0], residual.shape[1]
    x = residual.reshape(m, t * t).astype(float)
    target = (1 + tolerance) ** 2 * float(np.mean(noise**2)) * x.size
    if np.einsum("ij,ij->", x, x) <= target:  # all of it within the noise
        return np.zeros((m, 0), np.float32), np.zeros((0, t, t), np.float32)
    values, vectors = _gram_eigen(x)  # squared singular values, descending
    dropped = np.concatenate([np.cumsum(values[::-1])[::-1], [0.0]])  # after k kept
    k = int(np.argmax(dropped <= target))
    if vectors.shape[0] == m:  # left singular vectors: basis = x^T u / |x^T u|
        basis = vectors[:, :k].T @ x
        basis /= np.maximum(np.linalg.norm(basis, axis=1, keepdims=True), 1e-300)
    else:
        basis = vectors[:, :k].T
    coef = (x @ basis.T).astype(np.float32)
    return coef, basis.reshape(k, t, t).astype(np.float32)


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

    def blocks(self, members: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The ramped residual of blocks ``members`` and the RMS of its noise in each.

        The noise is the dense planes' (``flux_err**2`` times ``noise_share``),
        interpolated as the residual is (bins independent) and ramped the same way.
        """
        fine, t = self.fine, self.fine.tile
        out = np.empty((members.size, t, t), dtype=np.float32)
        noise = np.empty(members.size)
        for i, b in enumerate(members):
            plane = int(fine.plane[b])
            frame = plane if self.index is None else int(self.index[plane])
            (wr, r), (wc, c) = self.rows[fine.tile_row[b]], self.cols[fine.tile_col[b]]
            comp = np.asarray(self.lowrank.flux_comp[:, r, c], dtype=float)
            compact = np.tensordot(self.lowrank.flux_coef[plane].astype(float), comp, axes=1)
            dense = np.asarray(self.flux[frame, r, c], dtype=float)
            var = np.asarray(self.flux_err[frame, r, c], dtype=float) ** 2
            var = var if self.share is None else var * self.share[r, c]
            ramp = self._taper(b)
            out[i] = ramp * (wr @ (dense - compact) @ wc.T)
            noise[i] = np.sqrt(np.mean(ramp**2 * ((wr**2) @ var @ (wc**2).T)))
        return out, noise

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
