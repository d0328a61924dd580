"""Fuse a global scattered-light model with a TPF's own faint pixels.

A cube (or any model) gives the scattered light's shape across a TPF and a
quoted uncertainty; the TPF's faint pixels away from the target give a
per-cadence level of what the model missed, with an uncertainty of its own.
`fuse` combines the two by their variances, cadence by cadence:

1. **Background pixels** (`background_pixels`): outside the aperture grown by
   one pixel, and the faint half of what is left (the median image of flux
   minus model); at least ``min_pixels`` of them, else no fusion.
2. **Local estimate** ``L(t)``: the residual ``flux - model`` of those pixels,
   each pixel's median over time removed (stars and the static sky stay
   constant in time; the median of up to 256 cadences spread over the
   series), clipped across pixels at 3 robust standard deviations around the
   cadence's mean, and averaged per cadence.
   Its variance ``s_L^2(t)`` is the larger of the clipped scatter over the
   number of pixels and the pixels' mean ``FLUX_ERR**2`` over that number.
   When the TPF's cadence is shorter than the model's time resolution, ``L``
   and ``s_L^2`` are averaged over one model interval (``window`` cadences):
   the model cannot vary faster, and the noise drops.
3. **Model error** ``s_M^2(t)``: what the data say the model's error of the
   level is, day by day (``chunk`` model intervals): the mean square of ``L``
   beyond its own noise, where that excess is significant, else zero. The
   model's quoted errors describe its error per pixel, not how much of it is
   a level common to the TPF; the data measure that directly. For the weight
   (step 4) the excess is shrunk (soft-thresholded: noise alone earns little
   weight) and constant over the day; for the errors it is the unbiased
   excess, spread over the day's cadences as the model's quoted variance at
   the background pixels runs (``model_var``), so that a cadence where the
   model quotes little is not charged the day's mean level error.
4. **Fused offset** ``w L`` with ``w = s_M^2 / (s_M^2 + s_L^2)``, added to the
   model at every pixel of the cadence. The fused level's error is
   ``w^2 s_L^2 + (1 - w)^2 s_M^2`` where the model's was ``s_M^2``: the
   corrector replaces ``s_M^2`` of the model's quoted variance by it
   (`Fusion.variance`), never going below it. The fused level is subtracted
   at every pixel, so where the model quotes less than at the background
   pixels (a shadow edge's other side, whose error the faint side's level does
   not share), the difference between the two errors that the quotes imply
   stays in the variance, up to the fused level's own error ``w^2 s_M^2``.

5. **A surface** where the model misses structure across the TPF (a glint
   ridge crossing it): day by day, a plane or a quadratic in row and column
   is fitted per cadence to the background pixels' residual (every pixel: a
   ridge is no outlier) and added to the model with the level, if it predicts
   held-out background pixels better than the level alone, by more than
   ``_CV_GAIN`` (10 %) of their squared error (four folds of 3 x 3-pixel
   blocks, on up to 8 cadences per day). A surface fitted to noise predicts
   held-out pixels worse, so a smooth field keeps the level alone. A surface
   is not extrapolated: where the background pixels lie on one side of the
   TPF (the faint side of a shadow edge), the degrees whose leverage
   somewhere on the TPF exceeds four times their largest at a background
   pixel are not tried (cross-validation tests only pixels among them). The
   surface's terms are orthonormal over the background pixels, so each
   coefficient's noise is the pixels' ``FLUX_ERR**2`` and its variance at any
   pixel, or over an aperture, follows directly (`Fusion.variance`).

6. **Structure the model misses** ``s_S^2(t)``: the background pixels'
   scatter about the cadence's level (or, with a surface, their
   cross-validated error: the surface is used at pixels it was not fitted to)
   beyond their noise, day by day, where significant. The fused variance is
   never below ``s_S^2`` plus the fused level's variance (`Fusion.variance`).
   Structure that changes across the TPF (a shadow edge's bright side under
   the aperture) can be larger at the aperture than the faint half shows: on
   cadences without a surface, ``s_S^2`` is at least what the background
   pixels within two pixels of the grown aperture show about the level as the
   mean product of each pixel's residual at one cadence and the next, day by
   day, where above 3 sigma of its noise. Structure the model misses changes
   slowly and stays in that product; noise, white in time, drops out however
   well ``FLUX_ERR`` describes it. Their scatter itself is not used: a small
   excess of their noise over their ``FLUX_ERR`` (a faint wing, a hot pixel)
   would pass for structure and become a floor far above the model's error.

7. **Reach across the model's structure** (`Fusion.reach`): the model's error
   may change with its own structure (a shadow edge whose depth it has wrong
   errs in opposite senses on its two sides), so the level measured at the
   background pixels is not everywhere the level error. Per cadence, the
   background pixels' residual is regressed on the model's median image about
   its mean over them, ``M_p - <M>``; that slope's regression on the level over
   the fused cadences without a surface, ``beta`` (shrunk by 3 standard
   errors), gives the level error at pixel ``p`` as ``1 + beta (M_p - <M>)``
   times theirs. Clipped to 0..1, it is the fraction of the fused level added
   at ``p``, and the fused variance there moves as far towards the model's own
   quote. Only where the model's structure reaches 5 times its quoted error at
   the background pixels (the model says the light changes sharply); needs
   ``model``.

Where the model is good (``s_M`` small) the weight goes to zero and the
local noise is not added; where it misses structure the local level and
surface take over. The aperture never enters the estimate, so the target's
own signal (transits, variability) is not touched.
"""

from __future__ import annotations

from ..utils import moved_names
from .core import MIN_PIXELS as MIN_PIXELS
from .core import fuse
from .local import background_pixels
from .result import Fusion

# ``MIN_PIXELS`` (aliased above) is a name of the module before its split, outside `__all__`.
__all__ = ["Fusion", "background_pixels", "fuse"]

#: Private names that moved with the split of this module into a package: old -> new home.
__getattr__ = moved_names(
    __name__,
    {
        "_BLOCK": "lk_scatterlight.fusion.local._BLOCK",
        "_CV_GAIN": "lk_scatterlight.fusion.surface._CV_GAIN",
        "_CV_PER_CHUNK": "lk_scatterlight.fusion.surface._CV_PER_CHUNK",
        "_CV_SAMPLE": "lk_scatterlight.fusion.surface._CV_SAMPLE",
        "_RING": "lk_scatterlight.fusion.local._RING",
        "_Residual": "lk_scatterlight.fusion.local._Residual",
        "_SAMPLE": "lk_scatterlight.fusion.core._SAMPLE",
        "_TERMS": "lk_scatterlight.fusion.surface._TERMS",
        "_add_per_row": "lk_scatterlight.fusion.rows._add_per_row",
        "_blas_controller": "lk_scatterlight.fusion.rows._blas_controller",
        "_capped": "lk_scatterlight.fusion.result._capped",
        "_choose_degree": "lk_scatterlight.fusion.surface._choose_degree",
        "_chunk_sums": "lk_scatterlight.fusion.local._chunk_sums",
        "_clipped_level": "lk_scatterlight.fusion.local._clipped_level",
        "_clipped_sums": "lk_scatterlight.fusion.local._clipped_sums",
        "_cross_validate": "lk_scatterlight.fusion.surface._cross_validate",
        "_excess": "lk_scatterlight.fusion.local._excess",
        "_finite_mean_square": "lk_scatterlight.fusion.local._finite_mean_square",
        "_fit_surface": "lk_scatterlight.fusion.surface._fit_surface",
        "_lagged_excess": "lk_scatterlight.fusion.local._lagged_excess",
        "_mean_square": "lk_scatterlight.fusion.local._mean_square",
        "_median": "lk_scatterlight.fusion.local._median",
        "_one_blas_thread": "lk_scatterlight.fusion.rows._one_blas_thread",
        "_per_row": "lk_scatterlight.fusion.rows._per_row",
        "_relative": "lk_scatterlight.fusion.local._relative",
        "_ring": "lk_scatterlight.fusion.local._ring",
        "_row_reduce": "lk_scatterlight.fusion.rows._row_reduce",
        "_rows": "lk_scatterlight.fusion.local._rows",
        "_running_mean": "lk_scatterlight.fusion.local._running_mean",
        "_scale_rows": "lk_scatterlight.fusion.rows._scale_rows",
        "_surface_basis": "lk_scatterlight.fusion.surface._surface_basis",
        "_surface_design": "lk_scatterlight.fusion.surface._surface_design",
        "_top_degree": "lk_scatterlight.fusion.surface._top_degree",
    },
)
