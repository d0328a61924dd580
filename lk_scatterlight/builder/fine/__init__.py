"""The builder's fine layer: residual structure finer than the bins, per frame.

Per frame (`fine_residual`), after the coarse bins are fitted:

1. the static-subtracted frame is averaged in fine bins (2 x 2 px by default)
   of valid pixels. The fine layer has its own, lighter source mask: only
   sources above ``fine_star_nsigma`` (30 by default, against 3 for the coarse
   bins; ~3 % of the pixels instead of ~30 % in a sector-1-like field) and
   their saturation bleeds, plus straps and bad columns; regions of that mask
   too large for an unsaturated star are structure left in the static scene
   (a ridge in frames that were not dark) and are not masked
   (`~lk_scatterlight.builder.masks.drop_extended`). The coarse bins can
   afford to drop every faint star; a 4-px bin cannot, or a ridge crossing a
   faint star would lose its peak there. Faint stars subtract with the static
   scene and only add their photon noise. Strap columns whose response can be
   measured are used too, divided by the response measured *in this frame*
   (from the same strap sums the builder keeps, less the reference's noise:
   ``residual._strap_response``; limited to 0.8-1.25), so a group of straps is
   not a hole either;
2. the frame's coarse plane, interpolated with the cube's own Keys kernel and
   averaged over each fine bin's pixels, is subtracted: what is left is the
   bin mean of the structure the coarse grid cannot hold (plus noise). (Its
   value at the fine bin centres instead would leave the coarse model's own
   curvature in the bin means, ~1 % of a ridge's amplitude, which step 4 does
   not remove);
3. fine bins without enough valid pixels (under a star or bleed mask), or
   whose valid pixels lie to one side (their centroid more than `MAX_OFFSET`
   from the bin centre, at the edge of a star's halo: on a ridge's flank their
   mean is the field there, not at the centre, off by over 10 % of the
   ridge), are holes, filled in three steps: a first guess by normalised
   Gaussian convolution of their valid neighbours (widening until every hole
   is filled); then, on the total field (coarse model + residual), linear
   interpolation between the nearest valid bins along the local structure
   (the structure tensor's direction), so a ridge that crosses a star
   continues through it; and for
   holes of 4 bins or more where the residual around them is significant, a
   fit of the field's profile across the local structure from every valid bin
   in a window around the hole (`_fill_profiles`). Most tiles hold only noise
   and nothing there is kept, so the last two steps run only on the holes in
   (or next to) the tiles whose statistic (step 5) with the first guess is
   already halfway from noise to the candidates' level (step 5);
4. the bias of a bin *mean* on curved structure is removed with the fine grid's
   second differences (``mean = f(centre) + f'' (b**2 - 1) / 24`` for a bin of
   ``b`` pixels), so the stored values are point values, as the Keys kernel
   expects;
5. per tile of ``tile x tile`` fine bins, the residual's mean of
   ``(r / sigma)**2`` is compared with ``threshold``. The noise ``sigma`` of a
   fine bin is predicted from the tile's RMS pixel uncertainty (from the FFI
   uncertainty image, every 4th row, over its valid bins' pixels: a saturated
   star's masked pixels would swamp it; without one, the median over the tile of
   the coarse bins' errors scaled to one pixel) over the square root of the
   bin's valid pixels, then **calibrated on the frame itself**: the predicted
   variance is scaled by the median over tiles of that mean (most tiles hold
   only noise) when it exceeds 1, which takes in what the prediction misses
   (the static scene's own noise, faint unmasked stars). Filled bins count as
   bins of the tile's typical size. Pure noise then gives ~1 and only tiles
   above ``threshold`` are kept. Tiles above a lower level (1.2 for the
   default threshold of 2) are measured too, as candidates: a persistent
   structure (a shadow edge) is faint in the darkest frames, those the static
   scene is the median of, and the assembly keeps a candidate's block when its
   tile passes ``threshold`` in at least half the frames (`persist`). The
   layer's own errors (`misfit`) are measured on the tiles above ``threshold``
   only, and pooled at assembly over the frames where each tile passed;
6. with fine bins of 2 px, the kept tiles are smoothed along their local
   structure (`_smooth_along_structure`): a 2-px grid resolves a 12-px ridge
   or a 6-px shadow edge ~10x better than a 4-px one, but a 2-px bin holds
   4 pixels, and averaging along the ridge or edge takes its noise back down.

`assemble_fine` gathers the kept blocks of the used frames (and the candidates
of persistent tiles) into a
`~lk_scatterlight.finelayer.FineLayer` (averaging them into planes when the
build bins in time).

The package's modules, one job each (every public name is importable from
``lk_scatterlight.builder.fine``):

* ``context``: `FineContext` (masks, tiles, hole pieces) and `FineFrame`;
* ``residual``: one frame's fine residual (`fine_residual`);
* ``fill``: filling the holes (along the structure, profiles, isotropic);
* ``along``: the smoothing along the structure of one tile (step 6);
* ``misfit``: the layer's own errors (misfit within bins, fill error by depth);
* ``persist``: which candidate tiles the layer keeps (`persistent_blocks`);
* ``assemble``: the layer from every frame (`assemble_fine`).
"""

from __future__ import annotations

from .assemble import assemble_fine
from .context import (  # noqa: F401 (the builder and the tests use them from here)
    FILL_CLASSES,
    MAX_OFFSET,
    MIN_PIXELS,
    MISFIT_COLUMNS,
    MISFIT_WIDTH,
    FineContext,
    FineFrame,
    depth_class,
    make_fine_context,
)
from .residual import fine_residual

__all__ = ["FineContext", "FineFrame", "make_fine_context", "fine_residual", "assemble_fine"]
