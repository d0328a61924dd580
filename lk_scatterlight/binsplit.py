"""How much of a cube's bin error is noise where the fine layer models the rest (issue 19).

A bin's error is the spread of its pixels about the fitted plane. In open sky
that spread is the pixels' noise; where a glint ridge, a shadow edge or a
bleed's wings cross the bin it is mostly that structure. Where a fine-layer
block covers the bin, the layer is the residual against the binned model: it
takes up both the structure and the bin's error from it, and quotes its own
errors. Adding the bin's whole error as well counts the structure twice, and
in an aperture sum the binned model's error is shared by every pixel of the
bin, so the double count grows with the aperture.

The builder measures, per bin, the noise's share of the bin error variance
over the planes where a block covers the bin (`SplitSums`, from
`~lk_scatterlight.builder.binning.significant_noise`: structure only where the
scatter exceeds the noise significantly). `ScatterLightCube.evaluate_sum`
then adds only that share of the covered bins' variance (`dropped_block`:
the rest, left out). Single pixels (`ScatterLightCube.evaluate`) drop it too
when the layer's bins are at most `PIXEL_MAX_BIN` pixels (`dropped_at_pixels`).
With coarser bins they keep the whole bin error: a 4-px layer does not quote
all of its own error across a ridge at a pixel, and the bin's structure part
covers it (on the structured simulation, dropping it there quotes ridge pixels
1.5x too small; see ``docs/format.rst``).

The noise part cancels too, as far as the block holds it (`noise_taken`): all
of it under a block stored as it is, a share under a factored tile. Layers of
at most `PIXEL_MAX_BIN`-px bins take that out as well (measured there only).
The cube's part in all this is `ScatterLightCube.bin_noise_variance`: the bins'
variance that a block can take over.

Files without the ``NOISE_SHARE`` extension evaluate as before.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from astropy.io import fits

from . import interpolate
from .exceptions import CubeFormatError
from .finelayer import FineLayer

if TYPE_CHECKING:
    from .cube import ScatterLightCube

__all__ = [
    "EXTNAME",
    "SplitSums",
    "PIXEL_MAX_BIN",
    "NOISE_PATTERNS",
    "covered_anywhere",
    "drops_at_pixels",
    "dropped_at_pixels",
    "dropped_block",
    "dropped_variance",
    "fine_coverage",
    "from_hdu",
    "to_hdu",
    "validate",
]

#: FITS extension of the noise share.
EXTNAME = "NOISE_SHARE"
_FIRST_ROW, _FIRST_COLUMN = 1, 45  # 1-based CCD coordinates of science pixel (0, 0)

#: Independent patterns the bins' noise makes over a fine-layer tile (`noise_taken`): the
#: noise is smooth over a 16-px bin, and a 32-px tile lies in 4 bins and is interpolated
#: from 16. On the structured simulated field (``bench_errors.py --quick``, single pixels,
#: dense cube, actual/quoted) 16 leaves the glint ridge over-quoted (0.83), 4 under-quotes it
#: (1.43); 8 gives 1.08.
NOISE_PATTERNS = 8

#: Largest fine bin [px] whose layer quotes its own error at a pixel in full, so that
#: single pixels drop the structure part of covered bins as aperture sums do.
PIXEL_MAX_BIN = 2


def drops_at_pixels(fine: FineLayer | None) -> bool:
    """Whether single pixels drop the structure part of the bins ``fine`` covers."""
    return fine is not None and fine.pixel_bin <= PIXEL_MAX_BIN


def validate(share: np.ndarray, shape2d: tuple[int, int]) -> list[str]:
    """Problems of a noise share for a cube of ``shape2d`` bins (empty list: none)."""
    if share.shape != shape2d:
        return [f"noise_share has shape {share.shape}, expected {shape2d}"]
    if not np.all((share >= 0) & (share <= 1)):
        return ["noise_share must lie in 0..1"]
    return []


def to_hdu(share: np.ndarray) -> fits.ImageHDU:
    """The ``NOISE_SHARE`` extension: float32, shape (nrow, ncol)."""
    hdu = fits.ImageHDU(np.asarray(share, dtype=np.float32), name=EXTNAME)
    hdu.header["COMMENT"] = "noise share of the bin error variance where a fine block covers"
    return hdu


def from_hdu(hdu, path) -> np.ndarray:
    """Read a ``NOISE_SHARE`` extension (its shape is checked by the cube)."""
    share = np.asarray(hdu.data, dtype=np.float32)
    if share.ndim != 2:
        msg = f"{path}: {EXTNAME} has shape {share.shape}, expected (nrow, ncol)."
        raise CubeFormatError(msg)
    return share


def noise_taken(fine: FineLayer) -> np.ndarray:
    """Per block, the share of the bins' noise variance the block takes over.

    A block is the residual of the frame against the binned model, so it holds
    the bins' noise with the opposite sign: what the block keeps of it cancels
    in the sum. A block stored as its own basis image keeps all of it. A tile
    factored to ``k`` basis images over its ``m`` blocks keeps the part in
    their span, ``f = k / m + k / n - k**2 / (m n)`` as for any noise
    (`~lk_scatterlight.builder.fine.assemble`), with ``n`` the independent
    patterns the bins' noise makes over a tile: it is smooth over a bin, so
    far fewer than the tile's fine bins (`NOISE_PATTERNS`).

    Parameters
    ----------
    fine : `~lk_scatterlight.finelayer.FineLayer`

    Returns
    -------
    taken : ndarray, shape (nblocks,)
        In 0..1; 0 for layers of bins coarser than `PIXEL_MAX_BIN` (not measured).
        Read-only: computed once per layer (`FineLayer.derived`), not at every
        evaluation.
    """
    return fine.derived("noise_taken", _noise_taken)


def _noise_taken(fine: FineLayer) -> np.ndarray:
    """`noise_taken`, computed."""
    if not drops_at_pixels(fine):
        return np.zeros(len(fine))
    m = np.bincount(fine.basis_start)[fine.basis_start].astype(float)  # blocks sharing them
    k = fine.rank.astype(float)
    n = float(NOISE_PATTERNS)
    factored = np.clip(k / m + k / n - k * k / (m * n), 0, 1)
    return np.where(m == 1, 1.0, factored)


def fine_coverage(
    fine: FineLayer,
    row: np.ndarray,
    column: np.ndarray,
    planes: slice,
    values: np.ndarray | None = None,
) -> np.ndarray:
    """Which bins a fine-layer block covers, per plane.

    Parameters
    ----------
    fine : `~lk_scatterlight.finelayer.FineLayer`
    row, column : ndarray of float, shapes (nrow,), (ncol,)
        Bin centres, 1-based CCD pixels.
    planes : slice
        Cube planes ``start:stop``.
    values : ndarray, shape (nblocks,), optional
        A value per block to place instead of True (0 where no block covers).

    Returns
    -------
    covered : ndarray of bool (float with ``values``), shape (nplanes, nrow, ncol)
        True where the bin's centre lies in a tile that has a block in the plane.
    """
    side = fine.pixel_bin * fine.tile
    tile_row = np.floor((np.asarray(row) - _FIRST_ROW) / side).astype(int)
    tile_col = np.floor((np.asarray(column) - _FIRST_COLUMN) / side).astype(int)
    p0, p1 = planes.start, planes.stop
    dtype = bool if values is None else float
    covered = np.zeros((p1 - p0, tile_row.size, tile_col.size), dtype=dtype)
    near = (fine.plane >= p0) & (fine.plane < p1)
    near &= np.isin(fine.tile_row, tile_row) & np.isin(fine.tile_col, tile_col)
    if not near.any():
        return covered
    tr0, tc0 = tile_row.min(), tile_col.min()
    present = np.zeros((p1 - p0, tile_row.max() - tr0 + 1, tile_col.max() - tc0 + 1), dtype)
    at = (fine.plane[near] - p0, fine.tile_row[near] - tr0, fine.tile_col[near] - tc0)
    present[at] = True if values is None else values[near]
    return present[:, (tile_row - tr0)[:, None], (tile_col - tc0)[None, :]]


def covered_anywhere(
    fine: FineLayer | None, row: np.ndarray, column: np.ndarray, nplanes: int
) -> np.ndarray | None:
    """Bins a block of a layer of at most `PIXEL_MAX_BIN`-px bins covers in some plane
    (None: no such layer), shape (nrow, ncol): where it carries a compact cube's
    truncation error (`~lk_scatterlight.lowrank_errors.truncation_image`)."""
    if not drops_at_pixels(fine):
        return None
    covered = np.zeros((np.size(row), np.size(column)), dtype=bool)
    step = max(1, 2**22 // max(covered.size, 1))
    for start in range(0, nplanes, step):
        planes = slice(start, min(start + step, nplanes))
        covered |= fine_coverage(fine, row, column, planes).any(axis=0)
    return covered


def dropped_variance(
    share: np.ndarray,
    covered: np.ndarray,
    variance: np.ndarray,
    taken: np.ndarray | None = None,
) -> np.ndarray:
    """What a fine layer takes over of the bins' error variances where a block covers the
    bin (else 0): the structure part, and the part of the noise the block holds.

    Parameters
    ----------
    share : ndarray, shape (nrow, ncol)
        The noise share at these bins.
    covered : ndarray of bool, shape (nplanes, nrow, ncol)
        `fine_coverage`.
    variance : ndarray, shape (nplanes, nrow, ncol)
        The bins' error variances [(e-/s)^2].
    taken : ndarray, shape (nplanes, nrow, ncol), optional
        The covering block's `noise_taken` (`fine_coverage` with its values);
        default 0.

    Returns
    -------
    dropped : ndarray, shape (nplanes, nrow, ncol)
        ``variance * (1 - share * (1 - taken))`` where covered.
    """
    kept = share if taken is None else share * (1 - taken)
    return np.where(covered, variance * (1 - kept), 0.0)


def dropped_block(
    cube: ScatterLightCube,
    planes: slice,
    rows: slice,
    columns: slice,
    bin_var: np.ndarray | None = None,
) -> np.ndarray | None:
    """What a cube's fine layer takes over of a block of its bin error variances (the
    structure part and the noise the blocks hold, `dropped_variance`; with bins of at
    most `PIXEL_MAX_BIN` px, a compact cube's truncation term too, which the layer
    carries)

    Parameters
    ----------
    cube : `~lk_scatterlight.cube.ScatterLightCube`
    planes, rows, columns : slice
        Planes and bins, ``start:stop``.
    bin_var : ndarray, shape (nplanes, nrow, ncol), optional
        The block's error variances if already read (a dense cube's); default
        `~lk_scatterlight.cube.ScatterLightCube.bin_noise_variance`.

    Returns
    -------
    dropped : ndarray, shape (nplanes, nrow, ncol), or None
        [(e-/s)^2]; None where nothing is dropped (no fine layer, no noise share, or
        no block covers these bins).
    """
    fine = cube.fine
    if cube.noise_share is None or fine is None:
        return None
    # One pass over the blocks: the covering block's index + 1 (0: none covers).
    block = fine_coverage(
        fine, cube.row[rows], cube.column[columns], planes, np.arange(1.0, len(fine) + 1)
    ).astype(np.intp)
    covered = block > 0
    if not covered.any():
        return None
    if bin_var is None:
        bin_var = cube.bin_noise_variance(planes, rows, columns)
    taken = np.concatenate([[0.0], noise_taken(fine)])[block]
    dropped = dropped_variance(cube.noise_share[rows, columns], covered, bin_var, taken)
    truncation = cube.truncation_variance(planes, rows, columns)
    if truncation is not None and drops_at_pixels(cube.fine):
        dropped += np.where(covered, truncation, 0.0)
    return dropped


def dropped_at_pixels(
    cube: ScatterLightCube,
    time_weights: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
    wr: np.ndarray,
    wc: np.ndarray,
    r0: int,
    c0: int,
) -> np.ndarray | None:
    """`dropped_block` at single pixels, for the valid times.

    Only for a fine layer that quotes its own error at a pixel in full
    (`drops_at_pixels`).

    Parameters
    ----------
    cube : `~lk_scatterlight.cube.ScatterLightCube`
    time_weights : tuple of ndarray
        ``(left, right, w_right, valid)``: the times' planes and weights
        (`~lk_scatterlight.interpolate.time_weights`).
    wr, wc : ndarray, shapes (nrow, nbinrow), (ncol, nbincol)
        The pixels' weights on the bins from ``r0``, ``c0`` (the columns' times
        their response).
    r0, c0 : int
        First bin row and column of the weights.

    Returns
    -------
    dropped : ndarray, shape (nvalid, nrow, ncol), float32, or None
        [(e-/s)^2]; None where nothing is dropped.
    """
    if not drops_at_pixels(cube.fine):
        return None
    left, right, w_right, valid = time_weights
    li, ri, w = left[valid], right[valid], w_right[valid]
    p0, p1 = li.min(), ri.max() + 1
    rows, columns = slice(r0, r0 + wr.shape[1]), slice(c0, c0 + wc.shape[1])
    dropped = dropped_block(cube, slice(p0, p1), rows, columns)
    if dropped is None:
        return None
    at_pixels = interpolate.apply_weights(dropped, wr**2, wc**2).astype(np.float32)
    return interpolate.blend(at_pixels, li - p0, ri - p0, w, squared=True)


class SplitSums:
    """Running sums over frames that make the noise share (`add`, then `share`).

    Parameters
    ----------
    shape2d : (int, int)
        Bins per row and column.
    """

    def __init__(self, shape2d: tuple[int, int]):
        self.noise = np.zeros(shape2d)  # noise variance summed over covered frames
        self.total = np.zeros(shape2d)  # bin error variance, likewise

    def add(self, error: np.ndarray, noise: np.ndarray, covered: np.ndarray) -> None:
        """Add frames.

        Parameters
        ----------
        error, noise : ndarray, shape (nframes, nrow, ncol)
            The frames' bin errors and their noise parts [e-/s] (``noise <= error``;
            NaN: unknown, taken as all noise).
        covered : ndarray of bool, shape (nframes, nrow, ncol)
            Whether a fine-layer block covers the bin in the frame's plane.
        """
        var = np.asarray(error, dtype=float) ** 2
        noise2 = np.fmin(np.asarray(noise, dtype=float) ** 2, var)  # fmin: NaN -> var
        covered = np.asarray(covered, dtype=bool)
        self.noise += np.sum(noise2, axis=0, where=covered)
        self.total += np.sum(var, axis=0, where=covered)

    def share(self) -> np.ndarray:
        """The noise share, float32, shape (nrow, ncol): a ratio of summed variances (a
        plane's variance is the sum of its frames'); 1 where no frame is covered."""
        positive = self.total > 0
        share = np.where(positive, self.noise / np.where(positive, self.total, 1), 1)
        return np.clip(share, 0, 1).astype(np.float32)
