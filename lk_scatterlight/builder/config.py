"""Parameters of a cube build (`BuildConfig`), one frozen set per build.

`BuildConfig.fingerprint` names the parameters that change the per-frame
results, so that an interrupted build resumes only with the same ones.
`PlaneBinner` is the signature of a time-binning stage (serial or Dask).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np

from ..ccd import N_SCIENCE
from . import masks

__all__ = [
    "BuildConfig",
    "DEFAULT_FINE_BIN",
    "PlaneBinner",
]

log = logging.getLogger(__name__)

#: The fine layer's bin size [px] unless a build asks for another: 2-px bins follow a 6-px
#: shadow edge or a 12-px glint ridge to a few times the noise floor, 4-px bins to 15-20x
#: (docs/building.rst, "The fine layer").
DEFAULT_FINE_BIN = 2

#: Signature of a time-binning stage: ``(value, error, groups) -> (flux, flux_err)``.
PlaneBinner = Callable[[np.ndarray, np.ndarray, list], tuple[np.ndarray, np.ndarray]]


@dataclass
class BuildConfig:
    """Parameters of a cube build (all recorded in the cube's provenance).

    Parameters
    ----------
    pixel_bin : int
        Bin size [px]; must divide 2048.
    time_bin : float, optional
        Plane duration [d]; None for one plane per FFI.
    bitmask : int
        Quality bits that exclude a frame.
    n_candidates, n_dark : int
        Frames sampled and kept to build the static scene.
    clip : float
        Residual clipping threshold of the per-bin plane fit [sigma].
    star_nsigma : float
        Detection threshold of the static source mask [sigma].
    mask_straps : bool
        Exclude strap columns from the bins and measure their response.
    bad_columns : tuple of int
        Extra CCD columns (1-based) to exclude.
    curvature_correction : bool
        Remove the curvature bias of the plane-fit values.
    prefetch : int
        Frames read ahead concurrently (each ~35 MB in flight at most).
    chunk : int
        Frames between checkpoints (and, in a Dask build, at most this many
        frames per task).
    compact : bool
        Store the cube in the compact low-rank encoding (format v2,
        `~lk_scatterlight.ScatterLightCube.compress`); False keeps it dense.
    compact_tolerance : float
        Rank choice: residual RMS at most ``1 + compact_tolerance`` times the noise.
    fine_bin : int, optional
        Bin size [px] of the fine layer (`~lk_scatterlight.builder.fine`), which
        keeps structure narrower than ``pixel_bin`` (glint ridges, shadow edges)
        where the frames show it; must divide ``pixel_bin``. 0 builds no fine layer.
        None (the default) chooses `DEFAULT_FINE_BIN` (2 px), or no fine layer
        when ``pixel_bin`` is not larger than that.
    fine_tile : int
        Fine bins per side of a fine-layer tile (the unit that is kept or not).
    fine_threshold : float
        A tile is kept when its mean ``(residual / sigma)**2`` exceeds this
        (pure noise gives ~1).
    fine_star_nsigma : float
        Detection threshold of the fine layer's lighter source mask [sigma].
    """

    pixel_bin: int = 16
    time_bin: float | None = None
    bitmask: int = masks.DEFAULT_BITMASK
    n_candidates: int = 40
    n_dark: int = 5
    clip: float = 4.0
    star_nsigma: float = 3.0
    mask_straps: bool = True
    bad_columns: tuple[int, ...] = field(default_factory=tuple)
    curvature_correction: bool = True
    prefetch: int = 4
    chunk: int = 50
    compact: bool = True
    compact_tolerance: float = 0.01
    fine_bin: int | None = None
    fine_tile: int = 16
    fine_threshold: float = 2.0
    fine_star_nsigma: float = 30.0

    def __post_init__(self):
        if self.pixel_bin < 1 or N_SCIENCE % self.pixel_bin:
            raise ValueError(f"pixel_bin must divide 2048, got {self.pixel_bin}.")
        if self.time_bin is not None and self.time_bin <= 0:
            raise ValueError(f"time_bin must be positive [d], got {self.time_bin}.")
        if self.chunk < 1:
            raise ValueError(f"chunk must be at least 1 frame, got {self.chunk}.")
        self.bad_columns = tuple(int(c) for c in self.bad_columns)
        if self.fine_bin is None:
            self.fine_bin = DEFAULT_FINE_BIN if self.pixel_bin > DEFAULT_FINE_BIN else 0
        if self.fine_bin < 0 or (self.fine_bin and self.pixel_bin % self.fine_bin):
            raise ValueError(
                f"fine_bin must divide pixel_bin={self.pixel_bin} (or be 0 for no fine layer), "
                f"got {self.fine_bin}."
            )
        if self.fine_bin and (
            self.fine_bin == self.pixel_bin or N_SCIENCE % (self.fine_bin * self.fine_tile)
        ):
            raise ValueError(
                f"fine_bin={self.fine_bin} must be smaller than pixel_bin={self.pixel_bin}, "
                f"and fine_bin x fine_tile={self.fine_bin * self.fine_tile} must divide 2048."
            )

    def fingerprint(self) -> dict:
        """Parameters that change the per-frame results (resume compatibility)."""
        params = asdict(self)
        for key in ("time_bin", "prefetch", "chunk", "compact", "compact_tolerance"):
            params.pop(key)
        return params
