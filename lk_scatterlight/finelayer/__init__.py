"""Scattered-light structure finer than a cube's bins, stored only where it is.

Real FFIs show features narrower than a 16-px bin: glint ridges ~12 px wide
that sweep across the CCD as the Earth moves, and baffle shadow edges ~6 px
wide. No grid of 16-px bins can hold them (sampling the exact field on that
grid already leaves errors of several percent of the scattered-light range
there), and a finer grid everywhere would multiply the cube's size by 16 for
structure that covers a small part of the CCD at any one time.

A `FineLayer` holds the residual of the frames against the coarse cube on a
finer grid (2-px bins by default) in **blocks**: one tile of ``tile x tile``
fine bins (32 x 32 pixels by default) in one time plane, kept only where the
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

The package's modules: ``finelayer.core`` holds `FineLayer` (the layer in
memory, its checks and its evaluation), ``finelayer.fileformat`` its FITS
extensions (writing, rounding, reading) and ``finelayer.compress``
`compress_tile` (factoring a tile's blocks). Every name is importable from
``lk_scatterlight.finelayer``.
"""

from __future__ import annotations

from ..utils import moved_names
from .compress import compress_tile
from .core import FineLayer
from .fileformat import FINE_EXTENSIONS, FINE_PRECISION

__all__ = ["FineLayer", "FINE_EXTENSIONS", "FINE_PRECISION", "compress_tile"]

#: Private names that moved with the split of this module into a package: old -> new home.
__getattr__ = moved_names(
    __name__,
    {
        "_COMPRESSION_IMAGES": "lk_scatterlight.finelayer.fileformat._COMPRESSION_IMAGES",
        "_COMPRESSION_VALUES": "lk_scatterlight.finelayer.fileformat._COMPRESSION_VALUES",
        "_CORR_UNIT": "lk_scatterlight.finelayer.fileformat._CORR_UNIT",
        "_FIRST_COLUMN": "lk_scatterlight.finelayer.core._FIRST_COLUMN",
        "_FIRST_ROW": "lk_scatterlight.finelayer.core._FIRST_ROW",
        "_INT16_SPAN": "lk_scatterlight.finelayer.fileformat._INT16_SPAN",
        "_NOISE_SCATTER": "lk_scatterlight.finelayer.compress._NOISE_SCATTER",
        "_SCIENCE": "lk_scatterlight.finelayer.core._SCIENCE",
        "_block_order": "lk_scatterlight.finelayer.fileformat._block_order",
        "_correlated_sum": "lk_scatterlight.finelayer.core._correlated_sum",
        "_gram_eigen": "lk_scatterlight.finelayer.compress._gram_eigen",
        "_holes": "lk_scatterlight.finelayer.fileformat._holes",
        "_index_columns": "lk_scatterlight.finelayer.fileformat._index_columns",
        "_integer_column": "lk_scatterlight.finelayer.fileformat._integer_column",
        "_misfit": "lk_scatterlight.finelayer.fileformat._misfit",
        "_scaled": "lk_scatterlight.finelayer.fileformat._scaled",
    },
)
